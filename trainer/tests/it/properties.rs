//! Property tests of what the trainer parses from users and clients:
//! training configurations, and `/v1/chat/completions` requests to the
//! model server.

use std::sync::Arc;

use fathom_core::protocol::Protocol;
use fathom_trainer::config::TrainConfig;
use fathom_trainer::openai::{Served, router};
use proptest::prelude::*;

/// The numeric settings of the tiny example, which a typo can make absurd.
const FIELDS: &[&str] = &[
    "steps = 16",
    "sandbox_questions = 3000",
    "questions_per_step = 8",
    "group_size = 8",
    "max_turns = 4",
    "max_turn_tokens = 64",
    "temperature = 1.0\n",
    "concurrency = 64",
    "lr = 1e-3",
    "scripted_episodes = 5600",
    "limit = 64",
];

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        any::<u32>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        Just("inf".to_string()),
        Just("nan".to_string()),
        Just("-0.0".to_string()),
        Just("1e308".to_string()),
        Just("\"8\"".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A configuration with any numeric setting changed to any value loads
    /// only when every size and rate is within its bound; otherwise it is
    /// refused with a message (never a panic, never a run that would
    /// allocate without end).
    #[test]
    fn a_config_with_any_number_changed_is_bounded_or_refused(
        field in 0..FIELDS.len(),
        v in value(),
    ) {
        let base = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/tiny-cpu.toml")).unwrap();
        let line = FIELDS[field];
        prop_assume!(base.contains(line));
        let (name, _) = line.split_once(" = ").unwrap();
        let changed = base.replacen(line, &format!("{name} = {v}{}", if line.ends_with('\n') { "\n" } else { "" }), 1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, changed).unwrap();
        match TrainConfig::load(&path) {
            Ok(c) => {
                prop_assert!((1..=10_000_000).contains(&c.steps));
                prop_assert!(c.data.group_size <= 256 && c.data.questions_per_step <= 16_384);
                prop_assert!(c.data.sandbox_questions <= 1_000_000);
                prop_assert!(c.rollout.max_turn_tokens <= 32_768 && c.rollout.max_turns <= 64);
                prop_assert!(c.rollout.concurrency <= 4096);
                prop_assert!(c.grpo.lr > 0.0 && c.grpo.lr <= 1.0);
                prop_assert!(c.rollout.temperature > 0.0 && c.rollout.temperature <= 2.0);
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}

/// A chat request's JSON: known fields with values of any type, and
/// unknown ones.
fn request() -> impl Strategy<Value = serde_json::Value> {
    let any_json = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        any::<String>().prop_map(serde_json::Value::from),
        Just(serde_json::json!(["a", 1])),
        Just(serde_json::json!(4294967295u64)),
    ];
    let message = prop_oneof![
        Just(serde_json::json!({"role": "user", "content": "Who founded it?"})),
        Just(serde_json::json!({"role": "assistant", "content": "<think>x</think>"})),
        Just(serde_json::json!({"role": "wizard", "content": "x"})),
        Just(serde_json::json!({"role": "user"})),
        any::<String>().prop_map(|c| serde_json::json!({"role": "tool", "content": c})),
    ];
    (
        proptest::collection::vec(message, 0..3),
        proptest::collection::vec(
            (
                prop_oneof![
                    Just("temperature"),
                    Just("top_p"),
                    Just("max_tokens"),
                    Just("seed"),
                    Just("stop"),
                    Just("logprobs"),
                    Just("n"),
                    Just("stream"),
                    Just("unknown"),
                ],
                any_json,
            ),
            0..5,
        ),
    )
        .prop_map(|(messages, fields)| {
            let mut o = serde_json::Map::new();
            o.insert("messages".into(), messages.into());
            o.insert("max_tokens".into(), 2.into());
            for (k, v) in fields {
                o.insert(k.into(), v);
            }
            serde_json::Value::Object(o)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Whatever a client sends, the server answers 200 or 4xx with a
    /// message; never a 5xx, never a panic, never a generation longer
    /// than the model's context.
    #[test]
    fn any_chat_request_gets_an_answer_or_a_client_error(body in request()) {
        let (_dir, model) = crate::candle::tiny_model_in("f32");
        let app = router(Arc::new(Served {
            model,
            name: "tiny".into(),
            default_max_tokens: 4,
            protocol: Protocol::CURRENT,
        }));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let status = runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            let text = body.to_string();
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(format!(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            ).as_bytes()).await.unwrap();
            let mut reply = String::new();
            s.read_to_string(&mut reply).await.unwrap();
            reply.split_whitespace().nth(1).unwrap_or_default().parse::<u16>().unwrap_or(0)
        });
        prop_assert!(status == 200 || (400..500).contains(&status), "status {}", status);
    }
}
