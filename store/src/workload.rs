//! A seeded, realistic synthetic workload: what a rollout writes.
//!
//! Used by the append benchmark and by `fathom log load`, so both measure the
//! same thing: model turns of about 2 KB of text (with their token ids as a
//! blob), and web exchanges whose HTML bodies are 20 to 200 KB and go to the
//! blob tree. Text is drawn from an English-like vocabulary with page
//! boilerplate, so it compresses about as real pages do rather than as
//! random bytes (incompressible) or repeated strings (unrealistically small).

use fathom_core::event::{FinishReason, Header, TurnGenerated, WebExchange, WebKind, WebSource};
use fathom_core::{BlobRef, EpisodeId, Event, RequestId, RunId, SeededRng, Seq, Timestamp};

use crate::{Durability, Result, SeqRange, Store, frame};

/// Shape of the workload.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    /// Approximate bytes of text per model turn.
    pub turn_bytes: usize,
    /// Smallest page body.
    pub body_min: usize,
    /// Largest page body.
    pub body_max: usize,
    /// Model turns per web exchange.
    pub turns_per_exchange: u32,
    /// Fraction of fetches that return a page fetched before (GRPO groups
    /// fetch the same pages); 0 makes every body unique.
    pub repeat_fraction: f64,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        WorkloadSpec {
            turn_bytes: 2048,
            body_min: 20_000,
            body_max: 200_000,
            turns_per_exchange: 2,
            repeat_fraction: 0.0,
        }
    }
}

/// One thing to append.
#[derive(Debug, Clone)]
pub enum Item {
    /// A model turn, with its token ids to store as a blob.
    Turn {
        /// The event; its `token_ids` is filled in at append.
        event: Event,
        /// Little-endian u32 token ids.
        token_ids: Vec<u8>,
    },
    /// A web exchange, with its body to store as a blob.
    Exchange {
        /// The event; its `body` is filled in at append.
        event: Event,
        /// The page body.
        body: Vec<u8>,
    },
}

impl Item {
    /// The blob bytes of the item, mutable so benchmarks can make a reused
    /// item unique (blobs are deduplicated by content).
    pub fn blob_bytes_mut(&mut self) -> &mut Vec<u8> {
        match self {
            Item::Turn { token_ids, .. } => token_ids,
            Item::Exchange { body, .. } => body,
        }
    }

    /// The blob bytes of the item.
    pub fn blob_bytes(&self) -> &[u8] {
        match self {
            Item::Turn { token_ids, .. } => token_ids,
            Item::Exchange { body, .. } => body,
        }
    }

    /// The event with its blob reference set.
    pub fn event_with(&self, blob: BlobRef) -> Event {
        match self {
            Item::Turn { event, .. } => {
                let mut e = event.clone();
                if let fathom_core::Payload::TurnGenerated(t) = &mut e.payload {
                    t.token_ids = Some(blob);
                }
                e
            }
            Item::Exchange { event, .. } => {
                let mut e = event.clone();
                if let fathom_core::Payload::WebExchange(w) = &mut e.payload {
                    w.body = Some(blob);
                }
                e
            }
        }
    }

    /// The bytes a plain log would write for this item: the event's frame
    /// plus the raw blob. Baselines write exactly these.
    pub fn plain_bytes(&self) -> Vec<u8> {
        let blob = BlobRef {
            digest: crate::blob::digest(self.blob_bytes()),
            len: self.blob_bytes().len() as u64,
        };
        let mut out = frame::encode(Seq(0), &self.event_with(blob)).expect("synthetic events fit a frame");
        out.extend_from_slice(self.blob_bytes());
        out
    }
}

const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "a",
    "is",
    "was",
    "for",
    "on",
    "as",
    "with",
    "by",
    "that",
    "from",
    "at",
    "his",
    "her",
    "it",
    "an",
    "were",
    "which",
    "are",
    "this",
    "also",
    "be",
    "has",
    "had",
    "first",
    "one",
    "their",
    "its",
    "after",
    "new",
    "who",
    "they",
    "two",
    "she",
    "he",
    "been",
    "other",
    "when",
    "there",
    "all",
    "during",
    "into",
    "school",
    "time",
    "may",
    "years",
    "more",
    "most",
    "only",
    "over",
    "city",
    "some",
    "world",
    "would",
    "where",
    "later",
    "up",
    "such",
    "used",
    "many",
    "can",
    "state",
    "about",
    "national",
    "out",
    "known",
    "university",
    "united",
    "then",
    "made",
    "between",
    "several",
    "team",
    "born",
    "river",
    "album",
    "series",
    "film",
    "company",
    "founded",
    "population",
    "county",
    "season",
    "government",
    "century",
    "released",
    "village",
    "district",
    "church",
    "league",
    "football",
    "station",
    "record",
    "history",
    "published",
    "award",
    "war",
    "music",
    "game",
    "family",
    "island",
    "named",
    "party",
    "since",
    "members",
    "early",
    "became",
    "north",
    "south",
    "located",
    "region",
    "election",
    "under",
    "built",
    "career",
    "served",
    "species",
    "novel",
    "director",
    "television",
    "research",
    "question",
    "answer",
    "evidence",
    "search",
    "result",
    "source",
    "article",
    "according",
    "report",
];

fn prose(rng: &mut SeededRng, bytes: usize, out: &mut String) {
    let start = out.len();
    let mut sentence = 0;
    while out.len() - start < bytes {
        let w = rng.choose(WORDS);
        if sentence == 0 {
            let mut c = w.chars();
            if let Some(f) = c.next() {
                out.extend(f.to_uppercase());
                out.push_str(c.as_str());
            }
        } else {
            out.push_str(w);
        }
        sentence += 1;
        if sentence > 8 && rng.below(6) == 0 {
            out.push_str(". ");
            sentence = 0;
        } else if rng.below(40) == 0 {
            out.push_str(&format!(" {} ", 1800 + rng.below(230)));
        } else {
            out.push(' ');
        }
    }
}

fn page(rng: &mut SeededRng, bytes: usize) -> Vec<u8> {
    let mut s = String::with_capacity(bytes + 512);
    s.push_str("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>");
    prose(rng, 40, &mut s);
    s.push_str("</title><style>body{font-family:sans-serif}nav a{margin:0 4px}</style></head><body><nav>");
    for _ in 0..12 {
        s.push_str("<a href=\"/wiki/");
        s.push_str(rng.pick(WORDS));
        s.push_str("\">");
        s.push_str(rng.pick(WORDS));
        s.push_str("</a>");
    }
    s.push_str("</nav><main><h1>");
    prose(rng, 30, &mut s);
    s.push_str("</h1>");
    while s.len() < bytes.saturating_sub(200) {
        if rng.below(5) == 0 {
            s.push_str("<h2>");
            prose(rng, 25, &mut s);
            s.push_str("</h2>");
        }
        s.push_str("<p>");
        let len = 300 + rng.below(900) as usize;
        prose(rng, len, &mut s);
        s.push_str("</p>\n");
    }
    s.push_str("</main><footer>Text is available under a licence; additional terms may apply.</footer></body></html>");
    s.into_bytes()
}

/// The generator.
#[derive(Debug)]
pub struct Workload {
    rng: SeededRng,
    spec: WorkloadSpec,
    run: RunId,
    items: u64,
    pages: Vec<Vec<u8>>,
    /// Timestamp of the first item; each next one is 1 ms later.
    start: Timestamp,
    /// Episode and request ids are numbered after these.
    ids_after: (u64, u64),
}

impl Workload {
    /// A workload for `run` whose every byte is fixed by `seed`.
    pub fn new(seed: u64, run: RunId, spec: WorkloadSpec) -> Self {
        Workload {
            rng: SeededRng::new(seed),
            spec,
            run,
            items: 0,
            pages: Vec::new(),
            start: Timestamp(1_795_262_400_000_000_000),
            ids_after: (0, 0),
        }
    }

    /// Numbers episodes after `episodes` and requests after `requests`
    /// (the ids a log has already given out) instead of from 1.
    pub fn ids_after(mut self, episodes: u64, requests: u64) -> Self {
        self.ids_after = (episodes, requests);
        self
    }

    /// The highest episode and request ids of the items generated so far
    /// (upper bounds), for the log's id counters.
    pub fn last_ids(&self) -> (u64, u64) {
        let n = self.items;
        (
            self.ids_after.0 + n.saturating_sub(1) / 10 + u64::from(n > 0),
            self.ids_after.1 + n,
        )
    }

    /// Stamps items from `start` on instead of a fixed date.
    pub fn starting_at(mut self, start: Timestamp) -> Self {
        self.start = start;
        self
    }

    /// The next item: `turns_per_exchange` model turns, then a web exchange.
    pub fn next_item(&mut self) -> Item {
        let per_cycle = u64::from(self.spec.turns_per_exchange) + 1;
        if self.items % per_cycle != per_cycle - 1 {
            self.next_turn()
        } else {
            self.next_exchange()
        }
    }

    /// Position-derived fields shared by both item kinds.
    fn advance(&mut self) -> (u64, EpisodeId, u32, Timestamp) {
        let n = self.items;
        self.items += 1;
        // About ten items per episode, as in a DeepResearcher rollout.
        let episode = EpisodeId(self.ids_after.0 + n / 10 + 1);
        let turn = ((n % 10) / 2) as u32;
        let ts = Timestamp(self.start.0 + n as i64 * 1_000_000);
        (n, episode, turn, ts)
    }

    /// A model turn of about `turn_bytes` of text.
    pub fn next_turn(&mut self) -> Item {
        let (_, episode, turn, ts) = self.advance();
        let mut text = String::with_capacity(self.spec.turn_bytes + 128);
        text.push_str("<think>");
        prose(&mut self.rng, self.spec.turn_bytes.saturating_sub(120), &mut text);
        text.push_str("</think>\n<tool_call>{\"name\": \"web_search\", \"arguments\": {\"query\": [\"");
        prose(&mut self.rng, 30, &mut text);
        text.push_str("\"]}}</tool_call>");
        let n_tokens = (text.len() / 4) as u32;
        let token_ids: Vec<u8> = (0..n_tokens)
            .flat_map(|_| (self.rng.below(151_000) as u32).to_le_bytes())
            .collect();
        let event = Event::new(
            self.run,
            ts,
            TurnGenerated {
                episode_id: episode,
                turn,
                text,
                token_ids: None,
                logprobs: None,
                n_context_tokens: 300 + turn * 900,
                n_tokens,
                latency_ns: 50_000_000 + self.rng.below(100_000_000),
                finish: FinishReason::Stop,
            },
        );
        Item::Turn { event, token_ids }
    }

    /// A page fetch with a body of `body_min..=body_max` bytes.
    pub fn next_exchange(&mut self) -> Item {
        let (n, episode, turn, ts) = self.advance();
        let repeat = !self.pages.is_empty() && self.rng.next_f64() < self.spec.repeat_fraction;
        let body = if repeat {
            self.rng.choose(&self.pages).clone()
        } else {
            let len = self
                .rng
                .range_inclusive(self.spec.body_min as u64, self.spec.body_max as u64);
            let p = page(&mut self.rng, len as usize);
            if self.spec.repeat_fraction > 0.0 {
                self.pages.push(p.clone());
                if self.pages.len() > 64 {
                    self.pages.remove(0);
                }
            }
            p
        };
        let url = format!("http://127.0.0.1:8931/wiki/{}_{}", self.rng.pick(WORDS), n);
        let event = Event::new(
            self.run,
            ts,
            WebExchange {
                request_id: RequestId(self.ids_after.1 + n + 1),
                episode_id: Some(episode),
                turn: Some(turn),
                request_kind: WebKind::Fetch,
                target: url.clone(),
                canonical: format!("GET {url}"),
                backend: "sandbox".into(),
                status: 200,
                headers: vec![Header {
                    name: "content-type".into(),
                    value: "text/html; charset=utf-8".into(),
                }],
                body: None,
                body_truncated: false,
                latency_ns: 2_000_000 + self.rng.below(50_000_000),
                source: WebSource::Sandbox,
                attempt: 1,
                error: None,
            },
        );
        Item::Exchange { event, body }
    }

    /// The next `n` items.
    pub fn batch(&mut self, n: usize) -> Vec<Item> {
        (0..n).map(|_| self.next_item()).collect()
    }
}

/// Appends items the way a rollout does: blobs first, then the events that
/// refer to them, in one batch.
pub fn append(store: &Store, items: &[Item], durability: Durability) -> Result<Option<SeqRange>> {
    let bodies: Vec<&[u8]> = items.iter().map(Item::blob_bytes).collect();
    let refs = store.put_blobs(&bodies)?;
    let events: Vec<Event> = items.iter().zip(refs).map(|(item, r)| item.event_with(r)).collect();
    store.append_with(&events, durability)
}
