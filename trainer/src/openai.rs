//! OpenAI-compatible chat completions, both ways.
//!
//! - [`OpenAiPolicy`]: a policy backed by any `/v1/chat/completions`
//!   endpoint (vLLM, SGLang, llama.cpp, Ollama, or `fathom serve-model`).
//!   It sends the conversation with the system turn's whole text (the
//!   paper's prompt carries the tool schemas, see
//!   [`protocol::system_content`]) and tool responses as user turns, and
//!   records the text it got back (behind the protocol's turn prefix when
//!   the reply does not begin with it), and the log-probs when the server
//!   returns them.
//! - [`router`]: serves any [`Policy`]-like generator (fathom's candle
//!   model) as such an endpoint, so models fathom trains plug into other
//!   tools; it renders plain Qwen2.5 chat and ends the prompt with the
//!   turn prefix it serves with (`<think>` for models trained under
//!   protocol version 2), which for fathom's messages is exactly the
//!   prompt the candle policy builds itself; the reply carries the prefix.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fathom_core::derive_seed;
use fathom_core::event::FinishReason;
use fathom_core::protocol::{self, Message, Protocol};
use fathom_model::generate::{Finish, Request, generate};
use fathom_model::sample::Sampling;
use serde::{Deserialize, Serialize};

use crate::candle_policy::CandleModel;
use crate::policy::{Generation, Policy, PolicyError, PolicyInput};

/// Where an OpenAI-compatible endpoint is and how to talk to it.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Base URL up to and including `/v1` (`http://127.0.0.1:8000/v1`).
    pub base_url: String,
    /// The model name to ask for; empty asks the server for its first.
    pub model: String,
    /// Bearer token, if the server wants one.
    pub api_key: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retries of a failed request (connection errors, 429, 5xx), with
    /// exponential backoff from `backoff`.
    pub retries: u32,
    /// The first retry's wait (doubling after each).
    pub backoff: Duration,
    /// Sampling temperature (0: greedy).
    pub temperature: f64,
    /// Nucleus mass.
    pub top_p: f64,
}

impl OpenAiConfig {
    /// A configuration for `base_url` (a trailing `/v1` is added when
    /// missing), other fields from their defaults.
    pub fn new(base_url: &str) -> OpenAiConfig {
        let mut url = base_url.trim_end_matches('/').to_string();
        if !url.ends_with("/v1") {
            url.push_str("/v1");
        }
        OpenAiConfig {
            base_url: url,
            model: String::new(),
            api_key: None,
            timeout: Duration::from_secs(120),
            retries: 3,
            backoff: Duration::from_millis(500),
            temperature: 0.0,
            top_p: 1.0,
        }
    }
}

/// A chat message on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireMessage {
    /// `system`, `user`, `assistant` (or `tool`, rendered as a user turn).
    pub role: String,
    /// The text.
    #[serde(default)]
    pub content: String,
}

/// A `/v1/chat/completions` request (the fields fathom uses or honours).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model.
    #[serde(default)]
    pub model: String,
    /// The conversation.
    pub messages: Vec<WireMessage>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus mass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Tokens to generate at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Newer name of `max_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// Sampling seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Stop strings: one or a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<serde_json::Value>,
    /// Ask for the sampled tokens' log-probs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    /// Streaming is not supported by `fathom serve-model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Completions per request; only 1 is supported by `fathom serve-model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
}

/// The log-prob of one sampled token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token's text.
    pub token: String,
    /// Its log-prob.
    pub logprob: f64,
    /// Its bytes.
    #[serde(default)]
    pub bytes: Option<Vec<u8>>,
    /// Alternatives (always empty here).
    #[serde(default)]
    pub top_logprobs: Vec<serde_json::Value>,
}

/// Log-probs of a choice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChoiceLogprobs {
    /// One entry per sampled token.
    #[serde(default)]
    pub content: Option<Vec<TokenLogprob>>,
}

/// One completion.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Choice {
    /// 0.
    pub index: u32,
    /// The assistant message.
    pub message: WireMessage,
    /// `stop` or `length`.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Log-probs, when asked for and available.
    #[serde(default)]
    pub logprobs: Option<ChoiceLogprobs>,
}

/// Token counts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Generated tokens.
    pub completion_tokens: u64,
    /// Both.
    pub total_tokens: u64,
}

/// A `/v1/chat/completions` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatResponse {
    /// Response id.
    pub id: String,
    /// `chat.completion`.
    pub object: String,
    /// Unix seconds (0 from fathom: responses carry no wall-clock time).
    pub created: u64,
    /// The model.
    pub model: String,
    /// The completions.
    pub choices: Vec<Choice>,
    /// Token counts.
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// Stop strings of the protocol (the end of a tool call or an answer).
pub const PROTOCOL_STOP: &[&str] = &["</tool_call>", "</answer>"];

/// A policy behind an OpenAI-compatible endpoint.
#[derive(Debug, Clone)]
pub struct OpenAiPolicy {
    config: OpenAiConfig,
    client: reqwest::Client,
}

impl OpenAiPolicy {
    /// A policy for `config`.
    pub fn new(config: OpenAiConfig) -> Result<OpenAiPolicy, PolicyError> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| PolicyError {
                policy: "openai".into(),
                message: format!("building the HTTP client: {e}"),
            })?;
        Ok(OpenAiPolicy { config, client })
    }

    /// Its configuration.
    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }

    /// The request for a turn.
    pub fn request(&self, input: &PolicyInput<'_>) -> ChatRequest {
        let messages = input
            .messages
            .iter()
            .map(|m| WireMessage {
                role: protocol::openai_role(m).into(),
                content: match m {
                    Message::System(t) | Message::User(t) | Message::Assistant(t) | Message::Tool(t) => t.clone(),
                },
            })
            .collect();
        ChatRequest {
            model: self.config.model.clone(),
            messages,
            temperature: Some(self.config.temperature),
            top_p: Some(self.config.top_p),
            max_tokens: Some(input.max_tokens),
            max_completion_tokens: None,
            seed: Some(derive_seed(input.seed, "turn", u64::from(input.turn))),
            stop: Some(serde_json::json!(PROTOCOL_STOP)),
            logprobs: Some(true),
            stream: None,
            n: None,
        }
    }

    async fn call(&self, body: &ChatRequest) -> Result<ChatResponse, String> {
        let url = format!("{}/chat/completions", self.config.base_url);
        let mut last = String::new();
        for attempt in 0..=self.config.retries {
            if attempt > 0 {
                tokio::time::sleep(self.config.backoff * (1u32 << (attempt - 1).min(6))).await;
            }
            let mut req = self.client.post(&url).json(body);
            if let Some(key) = &self.config.api_key {
                req = req.bearer_auth(key);
            }
            match req.send().await {
                Err(e) => last = format!("POST {url}: {e}"),
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    if status.is_success() {
                        return serde_json::from_str(&text).map_err(|e| {
                            format!(
                                "{url} answered with something that is not a chat completion ({e}): {}",
                                snippet(&text)
                            )
                        });
                    }
                    last = format!("{url} answered {status}: {}", snippet(&text));
                    if !(status.as_u16() == 429 || status.is_server_error()) {
                        break;
                    }
                }
            }
        }
        Err(last)
    }
}

fn snippet(text: &str) -> String {
    text.chars().take(300).collect()
}

impl Policy for OpenAiPolicy {
    fn name(&self) -> &str {
        "openai"
    }

    fn generate(&mut self, input: PolicyInput<'_>) -> Result<Generation, PolicyError> {
        let body = self.request(&input);
        let err = |message: String| PolicyError {
            policy: format!("openai:{}", self.config.base_url),
            message,
        };
        // The rollout engine calls policies synchronously from async code:
        // run the request on this runtime without blocking its other tasks.
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| err("the openai policy must run inside fathom's async runtime".into()))?;
        let resp = tokio::task::block_in_place(|| handle.block_on(self.call(&body))).map_err(err)?;
        let choice = resp
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| err("the response has no choices".into()))?;
        let logprobs: Option<Vec<f32>> = choice
            .logprobs
            .and_then(|l| l.content)
            .map(|c| c.iter().map(|t| t.logprob as f32).collect());
        let n_tokens = resp
            .usage
            .map(|u| u.completion_tokens as u32)
            .or(logprobs.as_ref().map(|l| l.len() as u32))
            .unwrap_or((choice.message.content.len() / 4) as u32);
        // A chat endpoint cannot be handed a half-written assistant turn,
        // so the turn prefix cannot end its prompt: a reply that does not
        // begin with the prefix (`<think>` from protocol version 2) is taken
        // to continue it, as DeepResearcher's prompt would have made it.
        let prefix = input.protocol.turn_prefix();
        let content = choice.message.content;
        let text = if content.starts_with(prefix) {
            content
        } else {
            format!("{prefix}{content}")
        };
        Ok(Generation {
            text,
            token_ids: None,
            logprobs,
            n_tokens,
            finish: match choice.finish_reason.as_deref() {
                Some("length") => FinishReason::Length,
                _ => FinishReason::Stop,
            },
        })
    }
}

// ---------------------------------------------------------------------------
// The server

/// What `fathom serve-model` serves.
pub struct Served {
    /// The model.
    pub model: Arc<CandleModel>,
    /// The name `/v1/models` lists and responses carry.
    pub name: String,
    /// Generated tokens per request when the request does not say.
    pub default_max_tokens: u32,
    /// The turn rules the model was trained under: the prompt ends with
    /// their turn prefix, and the reply begins with it.
    pub protocol: Protocol,
}

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"message": self.1, "type": "invalid_request_error"}});
        (self.0, Json(body)).into_response()
    }
}

/// The endpoint's routes: `GET /v1/models`, `POST /v1/chat/completions`.
pub fn router(served: Arc<Served>) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .with_state(served)
}

async fn models(State(s): State<Arc<Served>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "object": "list",
        "data": [{"id": s.name, "object": "model", "created": 0, "owned_by": "fathom"}],
    }))
}

/// Renders messages as plain Qwen2.5 chat, ending with an open assistant
/// turn and `prefix`.
pub fn render_wire(messages: &[WireMessage], prefix: &str) -> String {
    let mut out = String::new();
    for m in messages {
        let role = if m.role == "tool" { "user" } else { m.role.as_str() };
        out.push_str("<|im_start|>");
        out.push_str(role);
        out.push('\n');
        out.push_str(&m.content);
        out.push_str("<|im_end|>\n");
    }
    out.push_str("<|im_start|>assistant\n");
    out.push_str(prefix);
    out
}

async fn chat(State(s): State<Arc<Served>>, Json(req): Json<ChatRequest>) -> Result<Json<ChatResponse>, ApiError> {
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    if req.stream == Some(true) {
        return Err(bad("stream=true is not supported; send stream=false".into()));
    }
    if req.n.unwrap_or(1) != 1 {
        return Err(bad("only n=1 is supported".into()));
    }
    if req.messages.is_empty() {
        return Err(bad("messages is empty".into()));
    }
    if let Some(role) = req
        .messages
        .iter()
        .map(|m| m.role.as_str())
        .find(|r| !matches!(*r, "system" | "user" | "assistant" | "tool"))
    {
        return Err(bad(format!("unknown role '{role}'")));
    }
    let temperature = req.temperature.unwrap_or(1.0);
    let top_p = req.top_p.unwrap_or(1.0);
    if !((0.0..=2.0).contains(&temperature) && top_p > 0.0 && top_p <= 1.0) {
        return Err(bad("temperature must be in [0, 2] and top_p in (0, 1]".into()));
    }
    let stop: Vec<String> = match &req.stop {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        Some(other) => return Err(bad(format!("stop must be a string or a list of strings, not {other}"))),
    };
    let asked = req.max_completion_tokens.or(req.max_tokens);
    let max_tokens = asked.unwrap_or(s.default_max_tokens);
    let seed = req.seed.unwrap_or(0);
    let want_logprobs = req.logprobs.unwrap_or(false);
    let served = s.clone();
    let prefix = s.protocol.turn_prefix();
    let prompt_text = render_wire(&req.messages, prefix);
    let result = tokio::task::spawn_blocking(move || {
        let m = served.model.loaded();
        let prompt = m.tokenizer.encode(&prompt_text)?;
        // Generation is bounded by the model's context: a request for more
        // is refused rather than left to run for minutes.
        let room = m.config.max_position_embeddings.saturating_sub(prompt.len());
        if asked.is_some_and(|n| n as usize > room) {
            return Err(fathom_model::ModelError::Invalid(format!(
                "max_tokens {max_tokens} is more than the model's context of {} tokens leaves after the prompt's {}; ask for at most {room}",
                m.config.max_position_embeddings,
                prompt.len()
            )));
        }
        let out = generate(
            &m.model,
            &m.tokenizer,
            &Request {
                prompt: &prompt,
                max_new_tokens: max_tokens as usize,
                sampling: Sampling { temperature, top_p },
                seed,
                stop: &stop,
            },
        )?;
        let tokens: Vec<String> = out
            .ids
            .iter()
            .map(|id| m.tokenizer.decode(&[*id]).unwrap_or_default())
            .collect();
        Ok::<_, fathom_model::ModelError>((prompt.len(), out, tokens))
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("generation panicked: {e}")))?
    .map_err(|e| bad(e.to_string()))?;
    let (prompt_tokens, out, tokens) = result;
    let completion_tokens = out.ids.len() as u64;
    let logprobs = want_logprobs.then(|| ChoiceLogprobs {
        content: Some(
            tokens
                .into_iter()
                .zip(&out.logprobs)
                .map(|(token, lp)| TokenLogprob {
                    bytes: Some(token.as_bytes().to_vec()),
                    token,
                    logprob: f64::from(*lp),
                    top_logprobs: Vec::new(),
                })
                .collect(),
        ),
    });
    Ok(Json(ChatResponse {
        id: format!("chatcmpl-fathom-{seed:x}-{completion_tokens}"),
        object: "chat.completion".into(),
        created: 0,
        model: s.name.clone(),
        choices: vec![Choice {
            index: 0,
            message: WireMessage {
                role: "assistant".into(),
                content: format!("{prefix}{}", out.text),
            },
            finish_reason: Some(
                match out.finish {
                    Finish::Stop => "stop",
                    Finish::Length => "length",
                }
                .into(),
            ),
            logprobs,
        }],
        usage: Some(Usage {
            prompt_tokens: prompt_tokens as u64,
            completion_tokens,
            total_tokens: prompt_tokens as u64 + completion_tokens,
        }),
    }))
}
