//! The DeepResearcher turn protocol: the system prompt, the tool schemas,
//! the Qwen2.5 chat rendering, and the parser of a model turn.
//!
//! A model turn is `<think>…</think>` followed by exactly one of
//! `<answer>…</answer>` (the episode ends) or one
//! `<tool_call>{"name": …, "arguments": …}</tool_call>`. Tool results go back
//! to the model as a user turn wrapped in `<tool_response>…</tool_response>`.
//!
//! Two bugs of the original implementation are fixed here by construction:
//! only the model's own turns are ever parsed (tags inside web text cannot
//! unbalance anything, and [`tool_response`] neutralises them anyway), and
//! each turn is judged on its own, so an empty `<think></think>` in one turn
//! does not poison the turns after it.

use std::fmt;

mod rules;
pub use rules::{Protocol, unrecorded};

/// At most this many queries of one `web_search` call are run.
pub const MAX_SEARCH_QUERIES: usize = 3;
/// Results returned per search query.
pub const RESULTS_PER_QUERY: usize = 10;
/// Default turn budget of an episode (so at most 9 tool calls and an answer).
pub const MAX_TURNS: u32 = 10;
/// Default budget of generated tokens per turn.
pub const MAX_TURN_TOKENS: u32 = 2000;

/// The tags of the protocol, in the order they are checked for balance.
pub const TAGS: [&str; 4] = ["think", "answer", "tool_call", "tool_response"];

/// The name of the search tool.
pub const WEB_SEARCH: &str = "web_search";
/// The name of the browsing tool.
pub const BROWSE_WEBPAGE: &str = "browse_webpage";

/// The system prompt, with today's date (from the injected clock, so that
/// replays see the same prompt).
pub fn system_prompt(today: &str) -> String {
    format!(
        "## Background\n\
         * Today's date: {today}.\n\
         * You are a deep research assistant. The questions you receive need real research: \
         one search rarely settles them, so look for evidence, follow leads across pages and \
         check what you find before you answer.\n\
         \n\
         ## Tools\n\
         * `{WEB_SEARCH}` runs web searches and returns titles, links and snippets.\n\
         * `{BROWSE_WEBPAGE}` reads pages found by your most recent search and reports what \
         they say about the question.\n\
         \n\
         ## How to reply\n\
         Begin every reply by thinking about what you know and what to do next: a research \
         plan, or the next search. Then write exactly one of these two forms:\n\
         \n\
         <think> your reasoning </think>\n\
         <tool_call> one tool call in the required JSON format </tool_call>\n\
         \n\
         or, once the evidence is enough:\n\
         \n\
         <think> your reasoning </think>\n\
         <answer> the final answer </answer>\n\
         \n\
         Never use any other form. Put only the answer itself inside <answer></answer>: a name, \
         a number, a date or a short phrase, with no explanation. Answer a yes-or-no question \
         with yes or no only."
    )
}

/// The two tools in the JSON-schema form Qwen2.5's chat template lists.
pub fn tool_schemas() -> Vec<serde_json::Value> {
    vec![
        serde_json::json!({
            "type": "function",
            "function": {
                "name": WEB_SEARCH,
                "description": "Search the web. Runs up to three queries and returns ten results for each: title, url and snippet.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "query": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "One to three search queries."
                        }
                    },
                    "required": ["query"]
                }
            }
        }),
        serde_json::json!({
            "type": "function",
            "function": {
                "name": BROWSE_WEBPAGE,
                "description": "Read web pages from the most recent search results and report the information they hold that bears on the question.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "url_list": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "URLs taken from the most recent search results."
                        }
                    },
                    "required": ["url_list"]
                }
            }
        }),
    ]
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "role", content = "content", rename_all = "snake_case")]
pub enum Message {
    /// The system turn's whole text ([`system_text`]).
    System(String),
    /// The question.
    User(String),
    /// A model turn, exactly as generated.
    Assistant(String),
    /// A tool's result, already wrapped by [`tool_response`].
    Tool(String),
}

/// The full text of the system turn: the prompt, then the tool schemas as
/// Qwen2.5's template lists them. An OpenAI-compatible client sends this as
/// its system message, so a server rendering plain Qwen2.5 chat builds
/// exactly the prompt [`render_chat`] builds.
pub fn system_content(prompt: &str) -> String {
    let mut out = String::from(prompt);
    out.push_str(
        "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for schema in tool_schemas() {
        out.push('\n');
        out.push_str(&schema.to_string());
    }
    out.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    out
}

/// Which system prompt an episode opens with (recorded with each run's
/// rollout settings; absent in older logs, which used the paper's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptStyle {
    /// The paper's prompt with the date and the tool schemas as Qwen2.5's
    /// template lists them ([`system_prompt`], [`system_content`]): the
    /// default, and what a real model should see.
    #[default]
    Paper,
    /// A few lines naming the two tools and the two reply forms
    /// ([`COMPACT_PROMPT`]), for tiny models trained from scratch, whose
    /// contexts (and so every forward pass) it shortens by several hundred
    /// tokens.
    Compact,
}

impl PromptStyle {
    /// `paper` or `compact`.
    pub fn name(self) -> &'static str {
        match self {
            PromptStyle::Paper => "paper",
            PromptStyle::Compact => "compact",
        }
    }
}

/// The compact system prompt (see [`PromptStyle::Compact`]).
pub const COMPACT_PROMPT: &str = "Research the question with the tools, then answer it.\n\
     Tools: web_search {\"query\": [queries]}, browse_webpage {\"url_list\": [urls from the last search]}.\n\
     Reply <think>reasoning</think> then either <tool_call>{\"name\": tool, \"arguments\": {...}}</tool_call> \
     or <answer>only the answer</answer>.";

/// The whole text of the system turn in `style`.
pub fn system_text(style: PromptStyle, today: &str) -> String {
    match style {
        PromptStyle::Paper => system_content(&system_prompt(today)),
        PromptStyle::Compact => COMPACT_PROMPT.to_string(),
    }
}

/// The messages an episode opens with: the system turn and the question.
pub fn opening(style: PromptStyle, today: &str, question: &str) -> Vec<Message> {
    vec![
        Message::System(system_text(style, today)),
        Message::User(question.to_string()),
    ]
}

/// The role of a message in OpenAI's chat format (tool responses go back
/// as user turns, as DeepResearcher does).
pub fn openai_role(m: &Message) -> &'static str {
    match m {
        Message::System(_) => "system",
        Message::User(_) | Message::Tool(_) => "user",
        Message::Assistant(_) => "assistant",
    }
}

/// Renders a conversation in the Qwen2.5 chat format, ending with an open
/// assistant turn when `generation_prompt` is set.
pub fn render_chat(messages: &[Message], generation_prompt: bool) -> String {
    let mut out = String::new();
    for m in messages {
        match m {
            Message::System(text) => {
                out.push_str("<|im_start|>system\n");
                out.push_str(text);
                out.push_str("<|im_end|>\n");
            }
            Message::User(text) | Message::Tool(text) => {
                out.push_str("<|im_start|>user\n");
                out.push_str(text);
                out.push_str("<|im_end|>\n");
            }
            Message::Assistant(text) => {
                out.push_str("<|im_start|>assistant\n");
                out.push_str(text);
                out.push_str("<|im_end|>\n");
            }
        }
    }
    if generation_prompt {
        out.push_str("<|im_start|>assistant\n");
    }
    out
}

/// The text a policy continues for its next turn under `protocol`: the
/// conversation, the open assistant turn, and the protocol's turn prefix
/// (`<think>` from version 2).
pub fn render_prompt(messages: &[Message], protocol: Protocol) -> String {
    let mut out = render_chat(messages, true);
    out.push_str(protocol.turn_prefix());
    out
}

/// Wraps a tool's output for the model. Protocol tags and chat markers
/// inside the (untrusted) text are defused by replacing their `<` with `‹`,
/// so web content can neither close the response early nor fake a turn.
pub fn tool_response(text: &str) -> String {
    format!("<tool_response>\n{}\n</tool_response>", defuse(text))
}

fn defuse(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('<') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let after_slash = after.strip_prefix('/').unwrap_or(after);
        let is_tag = TAGS
            .iter()
            .any(|t| after_slash.starts_with(t) && after_slash[t.len()..].starts_with('>'))
            || after.starts_with("|im_");
        out.push(if is_tag { '‹' } else { '<' });
        rest = after;
    }
    out.push_str(rest);
    out
}

/// A tool call as the model wrote it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "name", content = "arguments", rename_all = "snake_case")]
pub enum ToolCall {
    /// `web_search` with its queries (all of them; the gateway runs the first three).
    WebSearch {
        /// The queries.
        query: Vec<String>,
    },
    /// `browse_webpage` with its URLs.
    BrowseWebpage {
        /// The URLs.
        url_list: Vec<String>,
    },
}

impl ToolCall {
    /// The tool's name.
    pub fn name(&self) -> &'static str {
        match self {
            ToolCall::WebSearch { .. } => WEB_SEARCH,
            ToolCall::BrowseWebpage { .. } => BROWSE_WEBPAGE,
        }
    }

    /// The call as a model writes it: `<tool_call>{"name": …, "arguments": …}</tool_call>`.
    pub fn to_tag(&self) -> String {
        format!(
            "<tool_call>{{\"name\": \"{}\", \"arguments\": {}}}</tool_call>",
            self.name(),
            self.arguments_json()
        )
    }

    /// The arguments as JSON, as recorded in ToolCalled events.
    pub fn arguments_json(&self) -> String {
        match self {
            ToolCall::WebSearch { query } => serde_json::json!({ "query": query }).to_string(),
            ToolCall::BrowseWebpage { url_list } => serde_json::json!({ "url_list": url_list }).to_string(),
        }
    }
}

/// What a turn asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The final answer (trimmed).
    Answer(String),
    /// A tool call.
    ToolCall(ToolCall),
}

/// A well-formed turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// The first think block's text (trimmed), if there is one.
    pub think: Option<String>,
    /// What the turn does.
    pub action: Action,
}

/// Why a turn is malformed. Any of these makes the episode a format failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Opening and closing tags do not pair up.
    #[error("unbalanced <{tag}> tags ({opens} opening, {closes} closing)")]
    Unbalanced {
        /// The tag name.
        tag: &'static str,
        /// Opening tags seen.
        opens: usize,
        /// Closing tags seen.
        closes: usize,
    },
    /// A model turn contains `<tool_response>`: only the environment writes those.
    #[error("the model wrote a <tool_response> block")]
    ForgedToolResponse,
    /// Neither an answer nor a tool call.
    #[error("the turn has neither <answer> nor <tool_call>")]
    NoAction,
    /// The turn never closes the think block its prompt opened (version 2).
    #[error("the turn never closes its <think> block")]
    UnclosedThink,
    /// A closing tag comes before its opening tag (version 2).
    #[error("the turn's tags are out of order (a closing tag before its opening tag)")]
    OutOfOrder,
    /// Text follows the action's closing tag (version 2).
    #[error("text after </{after}>: {text:?}")]
    TrailingText {
        /// The action's tag.
        after: &'static str,
        /// The start of the text.
        text: String,
    },
    /// The tool call is not a JSON object.
    #[error("tool call is not valid JSON: {0}")]
    BadJson(String),
    /// The tool call has no string `name`.
    #[error("tool call has no \"name\"")]
    MissingName,
    /// The tool is not one of the two.
    #[error("unknown tool \"{0}\" (the tools are web_search and browse_webpage)")]
    UnknownTool(String),
    /// An argument has the wrong shape.
    #[error("{tool}: {problem}")]
    BadArguments {
        /// The tool.
        tool: &'static str,
        /// What is wrong.
        problem: &'static str,
    },
}

/// Counts opening and closing forms of `tag`.
fn tag_counts(text: &str, tag: &str) -> (usize, usize) {
    (
        text.matches(&format!("<{tag}>")).count(),
        text.matches(&format!("</{tag}>")).count(),
    )
}

/// The text between the first `<tag>` and the next `</tag>` after it.
fn first_block<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&close)? + start;
    Some(&text[start..end])
}

/// The list of strings at `arguments[key]` of a tool call, trimmed; an
/// empty list is refused when `non_empty`.
fn string_list(
    args: Option<&serde_json::Value>,
    tool: &'static str,
    key: &str,
    non_empty: bool,
) -> Result<Vec<String>, FormatError> {
    let items = args
        .and_then(|a| a.get(key))
        .and_then(|v| v.as_array())
        .ok_or(FormatError::BadArguments {
            tool,
            problem: if key == "query" {
                "\"query\" must be a list of strings"
            } else {
                "\"url_list\" must be a list of strings"
            },
        })?;
    if non_empty && items.is_empty() {
        return Err(FormatError::BadArguments {
            tool,
            problem: "the list is empty",
        });
    }
    items
        .iter()
        .map(|i| i.as_str().map(|s| s.trim().to_string()))
        .collect::<Option<Vec<_>>>()
        .ok_or(FormatError::BadArguments {
            tool,
            problem: "every item must be a string",
        })
}

/// Parses one model turn (never web text).
///
/// Rules: every protocol tag is balanced; a `<tool_response>` written by the
/// model is forged; an `<answer>` wins over a tool call; otherwise the first
/// `<tool_call>` is the call, a JSON object whose `name` is `web_search`
/// (with `arguments.query` a non-empty list of strings) or `browse_webpage`
/// (with `arguments.url_list` a non-empty list of strings).
pub fn parse_turn(text: &str) -> Result<Turn, FormatError> {
    for tag in TAGS {
        let (opens, closes) = tag_counts(text, tag);
        if opens != closes {
            return Err(FormatError::Unbalanced { tag, opens, closes });
        }
    }
    if text.contains("<tool_response>") {
        return Err(FormatError::ForgedToolResponse);
    }
    let think = first_block(text, "think").map(|t| t.trim().to_string());
    if let Some(answer) = first_block(text, "answer") {
        return Ok(Turn {
            think,
            action: Action::Answer(answer.trim().to_string()),
        });
    }
    let Some(call) = first_block(text, "tool_call") else {
        return Err(FormatError::NoAction);
    };
    let value: serde_json::Value =
        serde_json::from_str(call.trim()).map_err(|e| FormatError::BadJson(e.to_string()))?;
    let name = value
        .get("name")
        .and_then(|n| n.as_str())
        .ok_or(FormatError::MissingName)?;
    let args = value.get("arguments");
    let action = match name {
        WEB_SEARCH => ToolCall::WebSearch {
            query: string_list(args, WEB_SEARCH, "query", true)?,
        },
        BROWSE_WEBPAGE => ToolCall::BrowseWebpage {
            url_list: string_list(args, BROWSE_WEBPAGE, "url_list", true)?,
        },
        other => return Err(FormatError::UnknownTool(other.to_string())),
    };
    Ok(Turn {
        think,
        action: Action::ToolCall(action),
    })
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Answer(a) => write!(f, "answer: {a}"),
            Action::ToolCall(c) => write!(f, "{} {}", c.name(), c.arguments_json()),
        }
    }
}

/// Splits a whole response, as verl stores it (model turns with tool
/// responses in between, with or without chat markers), into the model's
/// own turns. Tool responses and user turns are dropped, so their text can
/// never count against the format.
pub fn model_turns(response: &str) -> Vec<String> {
    if response.contains("<|im_start|>") {
        // Chat-formatted: the assistant segments are exactly the model's text.
        let mut turns = Vec::new();
        let first = response.split("<|im_start|>").next().unwrap_or_default();
        if !first.trim().is_empty() {
            // Text before the first marker is the open generation.
            turns.push(first.split("<|im_end|>").next().unwrap_or_default().to_string());
        }
        for seg in response.split("<|im_start|>").skip(1) {
            if let Some(body) = seg
                .strip_prefix("assistant\n")
                .or_else(|| seg.strip_prefix("assistant"))
            {
                turns.push(body.split("<|im_end|>").next().unwrap_or_default().to_string());
            }
        }
        return turns;
    }
    // Plain: model text, then `<tool_response>…</tool_response>`, repeated.
    // A tool response runs to the last closing tag before the next model
    // text begins, so a stray closing tag inside web text cannot end it early.
    let mut turns = Vec::new();
    let mut rest = response;
    loop {
        match rest.find("<tool_response>") {
            None => {
                turns.push(rest.to_string());
                break;
            }
            Some(i) => {
                turns.push(rest[..i].to_string());
                let after = &rest[i..];
                // The response ends at the closing tag that is followed by
                // the model's next turn (a <think>, a <tool_call> or an
                // <answer>) or by the end of the text.
                let mut end = None;
                let mut from = 0;
                while let Some(j) = after[from..].find("</tool_response>") {
                    let close_end = from + j + "</tool_response>".len();
                    let next = after[close_end..].trim_start();
                    if next.is_empty()
                        || ["<think>", "<tool_call>", "<answer>"]
                            .iter()
                            .any(|t| next.starts_with(t))
                    {
                        end = Some(close_end);
                        break;
                    }
                    from = close_end;
                }
                match end {
                    Some(e) => rest = &after[e..],
                    None => break,
                }
            }
        }
    }
    turns.retain(|t| !t.trim().is_empty());
    turns
}

#[cfg(test)]
mod tests;
