//! Emergent-behaviour detectors (DESIGN section 6; `docs/BEHAVIOURS.md`).
//!
//! Deterministic rules over a finished episode: each detection names the
//! turn and the byte span of the evidence in that turn's text, so it can be
//! counted in SQL and highlighted in the dashboard. The rules are simple on
//! purpose: a tag must be explainable by pointing at the text.

use std::collections::BTreeSet;

use crate::event::Behaviour;
use crate::protocol::{self, Action, ToolCall};
use crate::reward;

/// Version of these rules, recorded with every tag.
pub const DETECTOR_VERSION: u32 = 1;

/// One model turn and what the environment answered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Step {
    /// The model's turn, exactly as generated.
    pub text: String,
    /// The tool response the model saw after it (without the
    /// `<tool_response>` wrapper), if the turn called a tool.
    pub tool_response: Option<String>,
}

/// A finished episode, as the detectors see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Trajectory {
    /// The steps in order.
    pub steps: Vec<Step>,
    /// The accepted answers.
    pub ground_truths: Vec<String>,
}

/// A behaviour found, with its evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// Which behaviour.
    pub behaviour: Behaviour,
    /// The turn holding the evidence.
    pub turn: u32,
    /// Byte offset of the evidence in that turn's text.
    pub span_start: u32,
    /// Byte offset just past it.
    pub span_end: u32,
    /// The evidence text.
    pub evidence: String,
}

impl Detection {
    fn new(behaviour: Behaviour, turn: usize, text: &str, start: usize, end: usize) -> Detection {
        Detection {
            behaviour,
            turn: turn as u32,
            span_start: start as u32,
            span_end: end as u32,
            evidence: text[start..end].to_string(),
        }
    }
}

/// Runs every detector.
pub fn detect(t: &Trajectory) -> Vec<Detection> {
    [planning(t), cross_validation(t), self_reflection(t), honesty(t)]
        .into_iter()
        .flatten()
        .collect()
}

/// Byte range of the first think block's content in `text`.
fn think_range(text: &str) -> Option<(usize, usize)> {
    let start = text.find("<think>")? + "<think>".len();
    let end = text[start..].find("</think>")? + start;
    Some((start, end))
}

/// Finds any of `phrases` (lowercase) in `text` as whole words; returns the
/// byte range of the earliest match.
fn find_phrase(text: &str, phrases: &[&str]) -> Option<(usize, usize)> {
    let lower = text.to_lowercase();
    // Lowercasing can change byte lengths for some scripts; only trust
    // offsets when it did not.
    if lower.len() != text.len() {
        return None;
    }
    let bytes = lower.as_bytes();
    let word_char = |i: usize| bytes.get(i).is_some_and(|b| b.is_ascii_alphanumeric());
    phrases
        .iter()
        .filter_map(|p| {
            lower
                .match_indices(p)
                .find(|(i, _)| (*i == 0 || !word_char(i - 1)) && !word_char(i + p.len()))
                .map(|(i, _)| (i, i + p.len()))
        })
        .min()
}

/// Planning: the think before the first tool call lays out two or more
/// steps: two numbered items, two bullet lines, or an opening marker
/// ("first", "step 1", "to begin") followed later by a continuation marker
/// ("then", "next", "after that", "second", "finally", "step 2").
pub fn planning(t: &Trajectory) -> Option<Detection> {
    let first = t.steps.first()?;
    let turn = protocol::parse_turn(&first.text).ok()?;
    if !matches!(turn.action, Action::ToolCall(_)) {
        return None;
    }
    let (ts, te) = think_range(&first.text)?;
    let think = &first.text[ts..te];
    // Numbered items and bullets, one per line.
    let mut numbered = Vec::new();
    let mut bullets = Vec::new();
    let mut offset = 0;
    for line in think.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let lead = line.len() - trimmed.len();
        let digits = trimmed.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && matches!(trimmed.as_bytes().get(digits), Some(b'.') | Some(b')')) {
            numbered.push((offset + lead, offset + line.trim_end().len()));
        } else if trimmed.starts_with("- ") || trimmed.starts_with("* ") || trimmed.starts_with("• ") {
            bullets.push((offset + lead, offset + line.trim_end().len()));
        }
        offset += line.len();
    }
    for items in [&numbered, &bullets] {
        if items.len() >= 2 {
            let (s, e) = (items[0].0, items[items.len() - 1].1);
            return Some(Detection::new(Behaviour::Planning, 0, &first.text, ts + s, ts + e));
        }
    }
    let (os, oe) = find_phrase(think, &["first", "firstly", "step 1", "to begin", "to start"])?;
    let rest = &think[oe..];
    let (_, ce) = find_phrase(
        rest,
        &["then", "next", "after that", "second", "secondly", "finally", "step 2"],
    )?;
    // The evidence runs from the opener to the end of the continuation's sentence.
    let tail = &rest[ce..];
    let sentence_end = tail.find(['.', '\n', ';']).map_or(tail.len(), |i| i + 1);
    Some(Detection::new(
        Behaviour::Planning,
        0,
        &first.text,
        ts + os,
        ts + oe + ce + sentence_end,
    ))
}

/// The domain of each result entry (blank-line separated) in a tool
/// response that mentions `answer` (normalised words, contiguous).
fn domains_mentioning(response: &str, answer_norm: &str) -> BTreeSet<String> {
    response
        .split("\n\n")
        .filter(|entry| {
            let n = reward::normalize(entry);
            format!(" {n} ").contains(&format!(" {answer_norm} "))
        })
        .filter_map(|entry| {
            let at = entry.find("http://").or_else(|| entry.find("https://"))?;
            let url = &entry[at..];
            let host = url.split("://").nth(1)?.split(['/', ' ', '\n', '?', '#']).next()?;
            Some(host.trim_start_matches("www.").to_lowercase())
        })
        .collect()
}

fn contains_words(haystack: &str, needle_norm: &str) -> bool {
    !needle_norm.is_empty() && format!(" {} ", reward::normalize(haystack)).contains(&format!(" {needle_norm} "))
}

/// Cross-validation: after a tool response that already contained the
/// final answer, the model made at least one more tool call, and result
/// entries from two or more distinct domains mention the answer.
pub fn cross_validation(t: &Trajectory) -> Option<Detection> {
    let last = t.steps.last()?;
    let Action::Answer(answer) = protocol::parse_turn(&last.text).ok()?.action else {
        return None;
    };
    let answer_norm = reward::normalize(&answer);
    if answer_norm.is_empty() {
        return None;
    }
    let seen_at = t.steps.iter().position(|s| {
        s.tool_response
            .as_deref()
            .is_some_and(|r| contains_words(r, &answer_norm))
    })?;
    // A further tool call after the answer was in view.
    let (turn, step) = t
        .steps
        .iter()
        .enumerate()
        .skip(seen_at + 1)
        .find(|(_, s)| matches!(protocol::parse_turn(&s.text).map(|p| p.action), Ok(Action::ToolCall(_))))?;
    let domains: BTreeSet<String> = t
        .steps
        .iter()
        .filter_map(|s| s.tool_response.as_deref())
        .flat_map(|r| domains_mentioning(r, &answer_norm))
        .collect();
    if domains.len() < 2 {
        return None;
    }
    let start = step.text.find("<tool_call>")?;
    let end = step.text.find("</tool_call>")? + "</tool_call>".len();
    Some(Detection::new(Behaviour::CrossValidation, turn, &step.text, start, end))
}

/// Phrases with which a model says its results missed.
const OFF_TARGET: &[&str] = &[
    "not relevant",
    "irrelevant",
    "unrelated",
    "off-target",
    "off target",
    "doesn't mention",
    "does not mention",
    "don't mention",
    "do not mention",
    "didn't find",
    "did not find",
    "couldn't find",
    "could not find",
    "no useful",
    "not helpful",
    "no information",
    "not what i",
    "seem to be about",
    "seems to be about",
    "wrong",
    "not about",
];

fn query_words(call: &ToolCall) -> BTreeSet<String> {
    match call {
        ToolCall::WebSearch { query } => query.iter().flat_map(|q| reward::word_set(q)).collect(),
        ToolCall::BrowseWebpage { .. } => BTreeSet::new(),
    }
}

/// Self-reflection: after a search's results, the next turn's think says
/// they missed (an [`OFF_TARGET`] phrase) and that turn searches again with
/// a reformulated query (word-set Jaccard overlap with the previous query
/// below 0.5).
pub fn self_reflection(t: &Trajectory) -> Option<Detection> {
    for (i, pair) in t.steps.windows(2).enumerate() {
        let (prev, next) = (&pair[0], &pair[1]);
        if prev.tool_response.is_none() {
            continue;
        }
        let Ok(Action::ToolCall(prev_call @ ToolCall::WebSearch { .. })) =
            protocol::parse_turn(&prev.text).map(|p| p.action)
        else {
            continue;
        };
        let Ok(Action::ToolCall(next_call @ ToolCall::WebSearch { .. })) =
            protocol::parse_turn(&next.text).map(|p| p.action)
        else {
            continue;
        };
        let Some((ts, te)) = think_range(&next.text) else {
            continue;
        };
        let Some((ps, pe)) = find_phrase(&next.text[ts..te], OFF_TARGET) else {
            continue;
        };
        let (a, b) = (query_words(&prev_call), query_words(&next_call));
        let union = a.union(&b).count();
        let overlap = if union == 0 {
            1.0
        } else {
            a.intersection(&b).count() as f64 / union as f64
        };
        if overlap < 0.5 {
            return Some(Detection::new(
                Behaviour::SelfReflection,
                i + 1,
                &next.text,
                ts + ps,
                ts + pe,
            ));
        }
    }
    None
}

/// Phrases with which an answer abstains or hedges.
const ABSTAIN: &[&str] = &[
    "cannot find",
    "can't find",
    "could not find",
    "couldn't find",
    "unknown",
    "not available",
    "unable to",
    "no information",
    "insufficient",
    "i don't know",
    "i do not know",
    "not sure",
    "cannot determine",
    "can't determine",
    "not enough",
    "no answer",
    "not found",
];

/// Honesty: the answer abstains or hedges, and no tool response contained
/// any ground truth (the evidence really was not there).
pub fn honesty(t: &Trajectory) -> Option<Detection> {
    let turn = t.steps.len().checked_sub(1)?;
    let last = &t.steps[turn];
    let Action::Answer(_) = protocol::parse_turn(&last.text).ok()?.action else {
        return None;
    };
    let start = last.text.find("<answer>")? + "<answer>".len();
    let end = last.text[start..].find("</answer>")? + start;
    let (hs, he) = find_phrase(&last.text[start..end], ABSTAIN)?;
    let evidence_seen = t
        .steps
        .iter()
        .filter_map(|s| s.tool_response.as_deref())
        .any(|r| t.ground_truths.iter().any(|g| contains_words(r, &reward::normalize(g))));
    if evidence_seen {
        return None;
    }
    Some(Detection::new(
        Behaviour::Honesty,
        turn,
        &last.text,
        start + hs,
        start + he,
    ))
}

#[cfg(test)]
mod tests;
