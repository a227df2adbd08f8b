//! Protocol versions: the turn rules an episode runs under, recorded with
//! every run so that an episode replays under the rules it was recorded
//! with.
//!
//! - **Version 1** (logs recorded before versions were recorded): the
//!   generation prompt is the plain open assistant turn; a turn may omit
//!   its think block; see [`super::parse_turn`].
//! - **Version 2** (DeepResearcher's rules, `parse_response(..., think=True)`
//!   in its `scrl/llm_agent/generation.py`): every generation prompt ends
//!   with `<think>`, so each turn continues a think block that it must
//!   close. The recorded turn text starts with that `<think>` (it is part of
//!   the turn as the conversation holds it), while its sampled token ids
//!   are only the ids after it: the prefix is prompt, and carries no loss.
//!   A turn is malformed when it never writes `</think>`, when its
//!   `<think>`, `<answer>` or `<tool_call>` tags do not pair up in order
//!   (DeepResearcher's `check_tags_balance`), when anything but whitespace
//!   follows the closing tag of its action, or when its tool call is not
//!   what `parse_response` accepts. The episode's reward is DeepResearcher's
//!   own `compute_score` over the model's turns
//!   ([`crate::reward::deepresearcher`]).

use super::{Action, FormatError, ToolCall, Turn, first_block, string_list};
use crate::reward::deepresearcher::tags_balanced;

/// The turn rules an episode runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(into = "u32", try_from = "u32")]
pub enum Protocol {
    /// fathom's first rules (no think prefix, a think block optional).
    V1,
    /// DeepResearcher's rules: the prompt ends with `<think>`, which the
    /// turn must close.
    V2,
}

impl Protocol {
    /// The rules new runs use.
    pub const CURRENT: Protocol = Protocol::V2;
    /// The rules of a log that recorded no version.
    pub const UNRECORDED: Protocol = Protocol::V1;

    /// The version number.
    pub fn number(self) -> u32 {
        match self {
            Protocol::V1 => 1,
            Protocol::V2 => 2,
        }
    }

    /// The text every turn begins with, written by the environment at the
    /// end of the generation prompt (`<think>` from version 2).
    pub fn turn_prefix(self) -> &'static str {
        match self {
            Protocol::V1 => "",
            Protocol::V2 => "<think>",
        }
    }

    /// Parses one whole model turn (its prefix included) under these rules.
    pub fn parse_turn(self, text: &str) -> Result<Turn, FormatError> {
        match self {
            Protocol::V1 => super::parse_turn(text),
            Protocol::V2 => parse_turn_v2(text),
        }
    }
}

impl From<Protocol> for u32 {
    fn from(p: Protocol) -> u32 {
        p.number()
    }
}

impl TryFrom<u32> for Protocol {
    type Error = String;

    fn try_from(n: u32) -> Result<Protocol, String> {
        match n {
            1 => Ok(Protocol::V1),
            2 => Ok(Protocol::V2),
            other => Err(format!(
                "protocol version {other} is not known to this fathom (it knows 1 and 2); a newer fathom recorded it"
            )),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.number())
    }
}

/// The serde default of a recorded protocol field: a log that recorded none
/// ran under version 1.
pub fn unrecorded() -> Protocol {
    Protocol::UNRECORDED
}

/// Version 2's parser (see the module's documentation).
fn parse_turn_v2(text: &str) -> Result<Turn, FormatError> {
    if !text.contains("</think>") {
        return Err(FormatError::UnclosedThink);
    }
    if !tags_balanced(text) {
        // Name the first tag that does not pair up.
        for tag in ["tool_call", "think", "answer"] {
            let opens = text.matches(&format!("<{tag}>")).count();
            let closes = text.matches(&format!("</{tag}>")).count();
            if opens != closes {
                let tag = super::TAGS.iter().find(|t| **t == tag).copied().unwrap_or("think");
                return Err(FormatError::Unbalanced { tag, opens, closes });
            }
        }
        return Err(FormatError::OutOfOrder);
    }
    let think = first_block(text, "think").map(|t| t.trim().to_string());
    // As in `parse_response`: a turn holding `<answer>` is an answer turn.
    if text.contains("<answer>") {
        let answer = first_block(text, "answer").ok_or(FormatError::NoAction)?;
        trailing_after(text, block_end(text, "answer"), "answer")?;
        return Ok(Turn {
            think,
            action: Action::Answer(answer.trim().to_string()),
        });
    }
    if !text.contains("<tool_call>") {
        return Err(FormatError::NoAction);
    }
    let call = first_block(text, "tool_call").ok_or(FormatError::NoAction)?;
    trailing_after(text, block_end(text, "tool_call"), "tool_call")?;
    let value: serde_json::Value =
        serde_json::from_str(call.trim()).map_err(|e| FormatError::BadJson(e.to_string()))?;
    let object = value.as_object().ok_or(FormatError::MissingName)?;
    let name = object
        .get("name")
        .and_then(|n| n.as_str())
        .ok_or(FormatError::MissingName)?;
    let args = object.get("arguments").ok_or(FormatError::BadArguments {
        tool: if name == super::BROWSE_WEBPAGE {
            super::BROWSE_WEBPAGE
        } else {
            super::WEB_SEARCH
        },
        problem: "the call has no \"arguments\"",
    })?;
    let action = match name {
        // DeepResearcher accepts an empty query list (the search then finds
        // nothing) but requires at least one URL to browse.
        super::WEB_SEARCH => ToolCall::WebSearch {
            query: string_list(Some(args), super::WEB_SEARCH, "query", false)?,
        },
        super::BROWSE_WEBPAGE => ToolCall::BrowseWebpage {
            url_list: string_list(Some(args), super::BROWSE_WEBPAGE, "url_list", true)?,
        },
        other => return Err(FormatError::UnknownTool(other.to_string())),
    };
    Ok(Turn {
        think,
        action: Action::ToolCall(action),
    })
}

/// The byte just past the first `</tag>` after the first `<tag>`.
fn block_end(text: &str, tag: &str) -> usize {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let start = text.find(&open).map_or(0, |i| i + open.len());
    text[start..]
        .find(&close)
        .map_or(text.len(), |i| start + i + close.len())
}

fn trailing_after(text: &str, end: usize, after: &'static str) -> Result<(), FormatError> {
    let rest = &text[end..];
    if rest.trim().is_empty() {
        Ok(())
    } else {
        Err(FormatError::TrailingText {
            after,
            text: rest.chars().take(40).collect(),
        })
    }
}
