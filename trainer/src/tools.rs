//! Executing the agent's tool calls: `web_search` through the gateway, and
//! `browse_webpage` through the browsing agent.
//!
//! The browsing agent (DeepResearcher's reader) fetches each URL, cuts the
//! page into segments, and lets a [`Reader`] go through them one by one
//! with the question, the sub-question (the query that found the URL) and
//! its notes so far. It stops when the reader says so, at the last segment,
//! or at a per-page cap (the original looped forever when the reader kept
//! saying "yes" on the last page). Only information the policy has not been
//! given before goes back to it, and the whole response is capped in length
//! (the original had no cap and overflowed the context).

use std::collections::{HashMap, HashSet};

use fathom_core::protocol::ToolCall;
use fathom_replay::{Context, Gateway, html, render};

/// Limits on what one tool call may cost and return.
#[derive(Debug, Clone)]
pub struct ToolLimits {
    /// Characters per reader segment.
    pub segment_chars: usize,
    /// Segments read per page at most.
    pub max_segments_per_page: u32,
    /// URLs browsed per call at most.
    pub max_urls: usize,
    /// Characters of one tool response at most.
    pub max_response_chars: usize,
}

impl Default for ToolLimits {
    fn default() -> Self {
        ToolLimits {
            segment_chars: html::SEGMENT_CHARS,
            max_segments_per_page: 5,
            max_urls: 3,
            max_response_chars: 8_000,
        }
    }
}

/// What the reader is shown for one segment.
#[derive(Debug, Clone, Copy)]
pub struct ReadRequest<'a> {
    /// The question of the episode.
    pub question: &'a str,
    /// The query whose results held this URL.
    pub sub_question: &'a str,
    /// Notes taken on this page so far.
    pub notes: &'a str,
    /// The segment's text.
    pub segment: &'a str,
    /// Segment index, from 0.
    pub index: u32,
    /// Segments in the page.
    pub total: u32,
}

/// What the reader took from a segment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadResult {
    /// New information, as notes.
    pub notes: String,
    /// Whether to read the next segment.
    pub read_next: bool,
    /// Tokens the reader generated (0 for heuristic readers).
    pub n_tokens: u32,
}

/// Reads page segments for the browsing agent: a model, or a heuristic.
pub trait Reader: Send {
    /// Reads one segment.
    fn read(&mut self, request: ReadRequest<'_>) -> ReadResult;
}

fn content_words(text: &str) -> HashSet<String> {
    const STOP: &[&str] = &[
        "the", "a", "an", "of", "in", "on", "at", "to", "and", "or", "is", "was", "were", "be", "by", "for", "with",
        "which", "what", "who", "whom", "when", "where", "how", "did", "does", "do", "that", "this", "it", "its", "as",
        "from", "year", "born",
    ];
    fathom_core::reward::word_set(text)
        .into_iter()
        .filter(|w| w.len() > 1 && !STOP.contains(&w.as_str()))
        .collect()
}

/// A deterministic reader: keeps the sentences that share a content word
/// with the question or sub-question, and asks for the next segment only
/// while it has found nothing.
#[derive(Debug, Clone, Default)]
pub struct HeuristicReader;

impl Reader for HeuristicReader {
    fn read(&mut self, r: ReadRequest<'_>) -> ReadResult {
        let mut wanted = content_words(r.question);
        wanted.extend(content_words(r.sub_question));
        // A sentence right after a kept one that starts with a pronoun
        // ("It was published by …") is about the same thing: keep it too.
        const FOLLOW_ON: &[&str] = &[
            "It ",
            "Its ",
            "The company ",
            "He ",
            "She ",
            "They ",
            "Their ",
            "His ",
            "Her ",
        ];
        let mut kept: Vec<&str> = Vec::new();
        let mut previous_kept = false;
        for s in split_sentences(r.segment) {
            let relevant = content_words(s).intersection(&wanted).next().is_some()
                || (previous_kept && FOLLOW_ON.iter().any(|p| s.starts_with(p)));
            previous_kept = relevant;
            if relevant && !s.starts_with('#') && !r.notes.contains(s) && !kept.contains(&s) {
                kept.push(s);
            }
        }
        ReadResult {
            read_next: kept.is_empty(),
            // One sentence per line keeps sentence boundaries for the caller.
            notes: kept.join("\n"),
            n_tokens: 0,
        }
    }
}

/// Sentences of a text: split after `.`, `!`, `?` and at line ends.
pub fn split_sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let end_of_sentence =
            matches!(b, b'.' | b'!' | b'?') && bytes.get(i + 1).is_none_or(|n| n.is_ascii_whitespace());
        if end_of_sentence || b == b'\n' {
            let s = text[start..=i].trim();
            if !s.is_empty() && s.chars().any(char::is_alphanumeric) {
                out.push(s);
            }
            start = i + 1;
        }
    }
    let s = text[start..].trim();
    if !s.is_empty() && s.chars().any(char::is_alphanumeric) {
        out.push(s);
    }
    out
}

/// One segment read, for the PageSegmentRead event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRead {
    /// The page.
    pub url: String,
    /// The recorded fetch that produced it, when the gateway records.
    pub request_id: Option<fathom_core::RequestId>,
    /// Segment index.
    pub segment: u32,
    /// Segments in the page.
    pub n_segments: u32,
    /// What the reader noted (after removing what the policy already had).
    pub notes: String,
    /// Whether the reader asked for more.
    pub read_next: bool,
    /// Reader tokens.
    pub n_tokens: u32,
}

/// What a tool call produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutcome {
    /// The tool response text the policy sees (before wrapping).
    pub text: String,
    /// Results (search) or pages with new information (browse).
    pub n_results: u32,
    /// Whether the call did anything useful.
    pub ok: bool,
    /// What went wrong, if the whole call failed.
    pub error: Option<String>,
    /// Whether `text` was cut at the response cap.
    pub truncated: bool,
    /// Every segment the reader went through.
    pub reads: Vec<SegmentRead>,
}

/// Runs one episode's tool calls, remembering what the policy has seen.
pub struct ToolRunner {
    limits: ToolLimits,
    /// URL → the query whose results listed it, from the latest search only.
    latest: HashMap<String, String>,
    /// Sentences already returned to the policy in this episode.
    returned: HashSet<String>,
}

impl std::fmt::Debug for ToolRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolRunner")
            .field("latest", &self.latest.len())
            .finish_non_exhaustive()
    }
}

fn cap(text: String, max: usize) -> (String, bool) {
    match text.char_indices().nth(max) {
        None => (text, false),
        Some((at, _)) => (format!("{}\n[… cut at {max} characters]", &text[..at]), true),
    }
}

impl ToolRunner {
    /// A runner for one episode.
    pub fn new(limits: ToolLimits) -> Self {
        ToolRunner {
            limits,
            latest: HashMap::new(),
            returned: HashSet::new(),
        }
    }

    /// Executes one tool call.
    pub async fn run(
        &mut self,
        gateway: &Gateway,
        reader: &mut dyn Reader,
        ctx: Context,
        question: &str,
        call: &ToolCall,
    ) -> ToolOutcome {
        match call {
            ToolCall::WebSearch { query } => self.search(gateway, ctx, query).await,
            ToolCall::BrowseWebpage { url_list } => self.browse(gateway, reader, ctx, question, url_list).await,
        }
    }

    async fn search(&mut self, gateway: &Gateway, ctx: Context, queries: &[String]) -> ToolOutcome {
        let results = gateway.search(ctx, queries).await;
        self.latest.clear();
        let mut n = 0u32;
        for (q, r) in &results {
            if let Ok(hits) = r {
                for h in hits {
                    n += 1;
                    self.latest.entry(h.url.clone()).or_insert_with(|| q.clone());
                }
            }
        }
        let all_failed = results.iter().all(|(_, r)| r.is_err());
        let (text, truncated) = cap(render::search_results(&results), self.limits.max_response_chars);
        ToolOutcome {
            text,
            n_results: n,
            ok: !all_failed,
            error: all_failed.then(|| "every search failed".to_string()),
            truncated,
            reads: Vec::new(),
        }
    }

    /// The URLs of the latest search, for policies that browse them.
    pub fn latest_results(&self) -> impl Iterator<Item = (&str, &str)> {
        self.latest.iter().map(|(u, q)| (u.as_str(), q.as_str()))
    }

    async fn browse(
        &mut self,
        gateway: &Gateway,
        reader: &mut dyn Reader,
        ctx: Context,
        question: &str,
        urls: &[String],
    ) -> ToolOutcome {
        let mut sections = Vec::new();
        let mut reads = Vec::new();
        let mut useful = 0u32;
        for url in urls.iter().take(self.limits.max_urls) {
            let Some(sub_question) = self.latest.get(url).cloned() else {
                sections.push(format!(
                    "## {url}\nNot browsed: only URLs from the most recent search results can be browsed."
                ));
                continue;
            };
            let page = match gateway.fetch(ctx, url).await {
                Ok(p) => p,
                Err(e) => {
                    sections.push(format!("## {url}\nThe page could not be read: {e}"));
                    continue;
                }
            };
            let segments = html::segment(&page.text, self.limits.segment_chars);
            let total = segments.len() as u32;
            let mut notes = String::new();
            for (i, seg) in segments
                .iter()
                .enumerate()
                .take(self.limits.max_segments_per_page as usize)
            {
                let r = reader.read(ReadRequest {
                    question,
                    sub_question: &sub_question,
                    notes: &notes,
                    segment: seg,
                    index: i as u32,
                    total,
                });
                // Keep only sentences the policy has not been given before.
                let fresh: Vec<&str> = split_sentences(&r.notes)
                    .into_iter()
                    .filter(|s| self.returned.insert(s.to_string()))
                    .collect();
                let fresh = fresh.join(" ");
                if !fresh.is_empty() {
                    if !notes.is_empty() {
                        notes.push(' ');
                    }
                    notes.push_str(&fresh);
                }
                reads.push(SegmentRead {
                    url: url.clone(),
                    request_id: page.request_id,
                    segment: i as u32,
                    n_segments: total,
                    notes: fresh,
                    read_next: r.read_next,
                    n_tokens: r.n_tokens,
                });
                if !r.read_next {
                    break;
                }
            }
            if notes.is_empty() {
                sections.push(format!("## {url}\nNo new information on this page."));
            } else {
                useful += 1;
                sections.push(format!("## {url}\n{notes}"));
            }
        }
        if urls.len() > self.limits.max_urls {
            sections.push(format!("(Only the first {} URLs were browsed.)", self.limits.max_urls));
        }
        let (text, truncated) = cap(sections.join("\n\n"), self.limits.max_response_chars);
        ToolOutcome {
            text,
            n_results: useful,
            ok: useful > 0,
            error: None,
            truncated,
            reads,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_on_stops_and_lines() {
        assert_eq!(
            split_sentences("Ada Lind founded it in 2011. It grew!\nSee also: phones\n\n3.5 is a number."),
            vec![
                "Ada Lind founded it in 2011.",
                "It grew!",
                "See also: phones",
                "3.5 is a number."
            ]
        );
    }

    #[test]
    fn the_heuristic_reader_keeps_relevant_sentences_and_moves_on_when_it_finds_none() {
        let mut r = HeuristicReader;
        let req = |segment| ReadRequest {
            question: "Who founded Zest Mobile?",
            sub_question: "Zest Mobile founder",
            notes: "",
            segment,
            index: 0,
            total: 2,
        };
        let hit = r.read(req(
            "Menu. Zest Mobile was founded by Ada Lind in 2011. Weather is fine.",
        ));
        assert_eq!(hit.notes, "Zest Mobile was founded by Ada Lind in 2011.");
        let follow = r.read(ReadRequest {
            question: "Who published The Last Tide?",
            sub_question: "The Last Tide",
            notes: "",
            segment: "The Last Tide is a novel by Bo Dag. It was published by Tide Press. Rain fell. It rained.",
            index: 0,
            total: 1,
        });
        assert_eq!(
            follow.notes, "The Last Tide is a novel by Bo Dag.\nIt was published by Tide Press.",
            "a pronoun sentence right after a kept one is kept; one after a dropped one is not"
        );
        assert!(!hit.read_next);
        let miss = r.read(req("Cookies and privacy. Log in."));
        assert_eq!(miss.notes, "");
        assert!(miss.read_next);
    }

    #[test]
    fn responses_are_capped() {
        let (t, cut) = cap("x".repeat(20), 10);
        assert!(cut && t.starts_with("xxxxxxxxxx\n[… cut at 10 characters]"));
        assert_eq!(cap("short".into(), 10), ("short".to_string(), false));
    }
}
