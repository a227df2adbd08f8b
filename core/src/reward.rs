//! The reward and the evaluation scores.
//!
//! Episodes of protocol version 2 (every new run) are scored by
//! [`score_episode`]: DeepResearcher's turn rules, then its own
//! `compute_score` ([`deepresearcher`]), whose normalisation turns only
//! ASCII punctuation into spaces. Version 1 (older logs, and `fathom score`
//! unless asked otherwise) scores with the rules below.
//!
//! Version 1 normalisation: lowercase, every punctuation character (ASCII and the
//! common Unicode quotes, dashes and marks) becomes a space, whitespace is
//! collapsed. F1 compares **sets** of words (not multisets) and articles are
//! kept. EM is equality of the normalised strings. The training reward is
//! −1 for a format failure (any malformed model turn, or no answer at all)
//! and otherwise the best F1 over the ground truths; evaluation scores a
//! format failure as 0.

use std::collections::BTreeSet;

use crate::protocol::{self, Action, Protocol};

pub mod deepresearcher;

/// Separates alternative ground truths in verl data.
pub const ANSWER_SPLIT: &str = "<|answer_split|>";

/// Whether `c` counts as punctuation for normalisation.
fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(
            c,
            '‘' | '’'
                | '‚'
                | '‛'
                | '“'
                | '”'
                | '„'
                | '‟'
                | '«'
                | '»'
                | '‹'
                | '›'
                | '–'
                | '—'
                | '―'
                | '‐'
                | '‑'
                | '…'
                | '·'
                | '•'
                | '¡'
                | '¿'
                | '§'
                | '¶'
                | '†'
                | '‡'
                | '′'
                | '″'
                | '、'
                | '。'
                | '，'
                | '：'
                | '；'
                | '！'
                | '？'
                | '（'
                | '）'
                | '【'
                | '】'
                | '「'
                | '」'
        )
}

/// Lowercases, turns punctuation into spaces and collapses whitespace.
pub fn normalize(text: &str) -> String {
    // One pass (detectors normalise whole tool responses, so this is hot):
    // the same result as lowercasing, mapping punctuation to spaces, then
    // joining the whitespace-separated words with single spaces.
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    let mut push = |c: char, out: &mut String| {
        if c.is_whitespace() || is_punctuation(c) {
            space = !out.is_empty();
        } else {
            if space {
                out.push(' ');
                space = false;
            }
            out.push(c);
        }
    };
    for c in text.chars() {
        if c.is_ascii() {
            push(c.to_ascii_lowercase(), &mut out);
        } else {
            for l in c.to_lowercase() {
                push(l, &mut out);
            }
        }
    }
    out
}

/// The set of normalised words.
pub fn word_set(text: &str) -> BTreeSet<String> {
    normalize(text)
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Set-based word F1 between a prediction and one ground truth.
pub fn f1(prediction: &str, truth: &str) -> f64 {
    let p = word_set(prediction);
    let t = word_set(truth);
    let common = p.intersection(&t).count();
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / p.len() as f64;
    let recall = common as f64 / t.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// Exact match after normalisation.
pub fn exact_match(prediction: &str, truth: &str) -> bool {
    normalize(prediction) == normalize(truth)
}

/// Splits verl's joined ground truths, dropping empty alternatives.
pub fn split_ground_truths(joined: &str) -> Vec<String> {
    joined
        .split(ANSWER_SPLIT)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The verdict on one episode.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Score {
    /// Every model turn well formed, and an answer given.
    pub format_ok: bool,
    /// What was wrong, when not.
    pub format_error: Option<String>,
    /// The final answer, when there is one.
    pub answer: Option<String>,
    /// Training reward: −1 on format failure, else `f1`.
    pub reward: f64,
    /// Best F1 over the ground truths (0 on format failure).
    pub f1: f64,
    /// Best exact match over the ground truths, 0 or 1 (0 on format failure).
    pub em: f64,
}

impl Score {
    /// A format failure.
    pub fn failure(error: impl Into<String>, answer: Option<String>) -> Score {
        Score {
            format_ok: false,
            format_error: Some(error.into()),
            answer,
            reward: -1.0,
            f1: 0.0,
            em: 0.0,
        }
    }

    /// Scores a well-formed answer.
    pub fn answered(answer: &str, truths: &[String]) -> Score {
        let f1 = truths.iter().map(|t| f1(answer, t)).fold(0.0, f64::max);
        let em = if truths.iter().any(|t| exact_match(answer, t)) {
            1.0
        } else {
            0.0
        };
        Score {
            format_ok: true,
            format_error: None,
            answer: Some(answer.to_string()),
            reward: f1,
            f1,
            em,
        }
    }
}

/// Scores an episode from the model's own turns, in order. Every turn must
/// parse; the episode must end with an answer (a turn after the answer is
/// a format failure, as is running out of turns without one).
pub fn score_turns<S: AsRef<str>>(turns: &[S], truths: &[String]) -> Score {
    if turns.is_empty() {
        return Score::failure("no model turns", None);
    }
    let mut answer: Option<String> = None;
    for (i, text) in turns.iter().enumerate() {
        match protocol::parse_turn(text.as_ref()) {
            Err(e) => return Score::failure(format!("turn {i}: {e}"), answer),
            Ok(turn) => match turn.action {
                Action::Answer(a) => {
                    if i + 1 != turns.len() {
                        return Score::failure(format!("turn {i} answered but the episode went on"), Some(a));
                    }
                    answer = Some(a);
                }
                Action::ToolCall(_) => {}
            },
        }
    }
    match answer {
        Some(a) => Score::answered(&a, truths),
        None => Score::failure("no <answer>: the episode ended on a tool call", None),
    }
}

/// Scores an episode from the model's own turns (each whole, its turn
/// prefix included) under `protocol`'s rules: version 1 by
/// [`score_turns`]; version 2 by DeepResearcher's turn rules
/// ([`Protocol::parse_turn`]) and then its own `compute_score` over the
/// model's turns in order ([`deepresearcher::compute_score`]), so the
/// reward is exactly the paper's, computed on the model's text only (never
/// on web text).
pub fn score_episode<S: AsRef<str>>(protocol: Protocol, turns: &[S], truths: &[String]) -> Score {
    if protocol == Protocol::V1 {
        return score_turns(turns, truths);
    }
    if turns.is_empty() {
        return Score::failure("no model turns", None);
    }
    let mut answer: Option<String> = None;
    for (i, text) in turns.iter().enumerate() {
        match protocol.parse_turn(text.as_ref()) {
            Err(e) => return Score::failure(format!("turn {i}: {e}"), answer),
            Ok(turn) => {
                if let Action::Answer(a) = turn.action {
                    if i + 1 != turns.len() {
                        return Score::failure(format!("turn {i} answered but the episode went on"), Some(a));
                    }
                    answer = Some(a);
                }
            }
        }
    }
    let Some(answer) = answer else {
        return Score::failure("no <answer>: the episode ended on a tool call", None);
    };
    let solution: String = turns.iter().map(AsRef::as_ref).collect();
    let joined = truths.join(ANSWER_SPLIT);
    let f1 = deepresearcher::compute_score(&solution, &joined, deepresearcher::Metric::F1);
    if f1 < 0.0 {
        // The per-turn parse is case-sensitive, as `parse_response` is; the
        // score lowercases first, so tags in another case can still fail it.
        return Score::failure(
            "the lowercased turns fail DeepResearcher's tag check (tags written in capitals)",
            Some(answer),
        );
    }
    let em = deepresearcher::compute_score(&solution, &joined, deepresearcher::Metric::Em);
    Score {
        format_ok: true,
        format_error: None,
        answer: Some(answer),
        reward: f1,
        f1,
        em,
    }
}

impl Score {
    /// The F1 evaluation reports: a format failure counts as 0, not −1.
    pub fn eval_f1(&self) -> f64 {
        if self.format_ok { self.f1 } else { 0.0 }
    }
}

/// Scores a whole response as verl stores it (see [`protocol::model_turns`]).
pub fn score_response(response: &str, truths: &[String]) -> Score {
    score_turns(&protocol::model_turns(response), truths)
}

#[cfg(test)]
mod tests;
