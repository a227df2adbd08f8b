//! The openai policy's retries and errors, against a scripted endpoint on
//! loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::routing::post;
use fathom_core::protocol::{PromptStyle, Protocol, opening, system_prompt};
use fathom_trainer::openai::{OpenAiConfig, OpenAiPolicy};
use fathom_trainer::policy::{Policy, PolicyInput};

/// An endpoint that fails `failures` times with `status`, then answers.
async fn endpoint(failures: u32, status: StatusCode) -> (String, Arc<AtomicU32>) {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |Json(body): Json<serde_json::Value>| {
            let seen = seen.clone();
            async move {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                if n < failures {
                    return Err((status, "try later".to_string()));
                }
                // Echo what the policy sent, so the test can check it.
                let system = body["messages"][0]["content"].as_str().unwrap_or_default().to_string();
                Ok(Json(serde_json::json!({
                    "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": format!("<think>{}</think><answer>ok</answer>", system.len())},
                        "logprobs": {"content": [{"token": "ok", "logprob": -0.25, "top_logprobs": []}]}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17},
                })))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), calls)
}

fn turn(policy: OpenAiPolicy) -> Result<fathom_trainer::policy::Generation, fathom_trainer::policy::PolicyError> {
    let mut policy = policy;
    let messages = opening(PromptStyle::Paper, "2026-01-01", "Who?");
    policy.generate(PolicyInput {
        question: "Who?",
        messages: &messages,
        turn: 0,
        seed: 1,
        max_tokens: 50,
        protocol: Protocol::V2,
    })
}

fn config(url: &str) -> OpenAiConfig {
    let mut c = OpenAiConfig::new(url);
    c.backoff = Duration::from_millis(5);
    c.model = "m".into();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_and_the_text_and_logprobs_recorded() {
    let (url, calls) = endpoint(2, StatusCode::SERVICE_UNAVAILABLE).await;
    let policy = OpenAiPolicy::new(config(&url)).unwrap();
    let g = tokio::task::spawn(async move { turn(policy) }).await.unwrap().unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3, "two failures, then the answer");
    let expected_system = fathom_core::protocol::system_content(&system_prompt("2026-01-01")).len();
    // The reply began with `<think>` itself, so the turn is kept as sent.
    assert_eq!(
        g.text,
        format!("<think>{expected_system}</think><answer>ok</answer>"),
        "the tools ride in the system message"
    );
    assert_eq!(g.logprobs, Some(vec![-0.25]));
    assert_eq!(g.n_tokens, 7);
    assert_eq!(g.token_ids, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_not_retried_and_say_what_the_server_said() {
    let (url, calls) = endpoint(100, StatusCode::BAD_REQUEST).await;
    let policy = OpenAiPolicy::new(config(&url)).unwrap();
    let err = tokio::task::spawn(async move { turn(policy) })
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(
        err.to_string().contains("400") && err.to_string().contains("try later"),
        "{err}"
    );

    let (url, calls) = endpoint(100, StatusCode::TOO_MANY_REQUESTS).await;
    let policy = OpenAiPolicy::new(config(&url)).unwrap();
    let err = tokio::task::spawn(async move { turn(policy) })
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 4, "429 is retried, three times");
    assert!(err.to_string().contains("429"), "{err}");
}
