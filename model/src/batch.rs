//! Batched generation: many sequences' turns decoded together, one pass of
//! the weights per token step for all of them ([`Decoder::forward_batch`]),
//! each sequence keeping its key/value cache from one turn to the next.
//!
//! A [`Batcher`] owns a decoder and a thread. Callers submit a [`Job`] (the
//! ids its cache does not hold yet, the sampling settings, a reply
//! callback) from any thread; the thread admits new jobs between token
//! steps (continuous batching), runs every active sequence's pending ids
//! in one pass, samples each sequence's next id from its own seeded
//! stream, and replies when a sequence stops. A sequence's ids and
//! log-probs are exactly those [`crate::generate::generate`] gives on the
//! same weights, prompt and seed: the decoder computes each token the same
//! way whatever shares its pass, and the sampling stream is the
//! sequence's own.

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::thread::JoinHandle;

use fathom_core::SeededRng;

use crate::decode::{Cache, Decoder};
use crate::generate::{Finish, Output, stops};
use crate::sample::{Sampling, pick, pick_unsorted};
use crate::{ChatTokenizer, ModelError};

/// What a finished job gives back.
#[derive(Debug)]
pub struct Turn {
    /// The sampled ids, their log-probs, the text, why it stopped.
    pub output: Output,
    /// The sequence's cache: every id before `pending`.
    pub cache: Cache,
    /// Ids of the sequence the cache does not hold yet (the last sampled
    /// id; or the job's ids when nothing was sampled). The next turn
    /// feeds them first.
    pub pending: Vec<u32>,
}

/// Where a job's result goes.
pub type Reply = Box<dyn FnOnce(Result<Turn, ModelError>) + Send>;

/// One turn to generate.
pub struct Job {
    /// What the sequence has run so far (a fresh one from
    /// [`Batcher::new_cache`] for a new sequence).
    pub cache: Cache,
    /// Ids after the cache's, to run before sampling (the prompt, or the
    /// last turn's pending ids and the tool response).
    pub feed: Vec<u32>,
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// Greedy or sampled.
    pub sampling: Sampling,
    /// Seed of the turn's sampling stream.
    pub seed: u64,
    /// Text that ends the turn once the output ends with it (kept).
    pub stop: Vec<String>,
    /// Called once with the result.
    pub reply: Reply,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("cached", &self.cache.len())
            .field("feed", &self.feed.len())
            .field("max_new_tokens", &self.max_new_tokens)
            .finish_non_exhaustive()
    }
}

/// Counters of a batcher's work, for benchmarks and timings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Forward passes run.
    pub passes: u64,
    /// Tokens run through them (prompt and sampled).
    pub tokens: u64,
    /// Tokens sampled.
    pub sampled: u64,
    /// The most sequences one pass held.
    pub widest: usize,
}

/// A decoding thread shared by many sequences (see the module's
/// documentation). Dropping it lets the thread finish the jobs it holds,
/// then stop.
pub struct Batcher {
    tx: Mutex<Option<Sender<Job>>>,
    thread: Option<JoinHandle<BatchStats>>,
    new_cache: Cache,
    limit: usize,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

struct Active {
    job: Job,
    rng: SeededRng,
    max_new: usize,
    ids: Vec<u32>,
    logprobs: Vec<f32>,
    pending: Vec<u32>,
}

impl Batcher {
    /// Starts the thread with `decoder`'s weights; `limit` is the model's
    /// positions (a sequence may not reach it, nor the decoder's own).
    pub fn start(decoder: Decoder, tokenizer: ChatTokenizer, limit: usize) -> Batcher {
        let (tx, rx) = channel();
        let new_cache = decoder.new_cache();
        let limit = limit.min(decoder.max_positions());
        let thread = std::thread::Builder::new()
            .name("fathom-batcher".into())
            .spawn(move || run(&decoder, &tokenizer, limit, &rx))
            .expect("spawning the batch decoder thread");
        Batcher {
            tx: Mutex::new(Some(tx)),
            thread: Some(thread),
            new_cache,
            limit,
        }
    }

    /// An empty cache for a new sequence.
    pub fn new_cache(&self) -> Cache {
        self.new_cache.clone()
    }

    /// Queues `job`; its reply comes from the batcher's thread.
    pub fn submit(&self, job: Job) {
        let tx = self.tx.lock().expect("batcher lock").clone();
        match tx {
            Some(tx) => {
                if let Err(e) = tx.send(job) {
                    (e.0.reply)(Err(ModelError::Invalid("the batch decoder stopped".into())));
                }
            }
            None => (job.reply)(Err(ModelError::Invalid("the batch decoder is shut down".into()))),
        }
    }

    /// Stops accepting jobs, waits for those held, and returns the counters.
    pub fn finish(mut self) -> BatchStats {
        self.shutdown()
    }

    fn shutdown(&mut self) -> BatchStats {
        self.tx.lock().expect("batcher lock").take();
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }

    /// The model's positions.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Takes `job` into the batch, or replies at once when it cannot run (so
/// that one bad job never fails the others' pass).
fn admit(job: Job, limit: usize, vocab: usize, active: &mut Vec<Active>) {
    let length = job.cache.len() + job.feed.len();
    if job.feed.is_empty() {
        return (job.reply)(Err(ModelError::Invalid("cannot generate from an empty prompt".into())));
    }
    if let Some(id) = job.feed.iter().find(|&&id| id as usize >= vocab) {
        return (job.reply)(Err(ModelError::Invalid(format!(
            "token id {id} is outside the model's vocabulary of {vocab}"
        ))));
    }
    if length >= limit {
        return (job.reply)(Err(ModelError::Invalid(format!(
            "the prompt has {length} tokens, at or over the model's {limit} positions"
        ))));
    }
    let max_new = job.max_new_tokens.min(limit - length);
    if max_new == 0 {
        let pending = job.feed;
        return (job.reply)(Ok(Turn {
            output: Output {
                ids: Vec::new(),
                logprobs: Vec::new(),
                text: String::new(),
                finish: Finish::Length,
            },
            cache: job.cache,
            pending,
        }));
    }
    active.push(Active {
        rng: SeededRng::new(job.seed),
        max_new,
        ids: Vec::new(),
        logprobs: Vec::new(),
        pending: job.feed.clone(),
        job,
    });
}

fn run(decoder: &Decoder, tokenizer: &ChatTokenizer, limit: usize, rx: &Receiver<Job>) -> BatchStats {
    let mut stats = BatchStats::default();
    let mut active: Vec<Active> = Vec::new();
    let mut open = true;
    loop {
        if active.is_empty() {
            if !open {
                return stats;
            }
            match rx.recv() {
                Ok(job) => admit(job, limit, decoder.vocab(), &mut active),
                Err(_) => return stats,
            }
        }
        while open {
            match rx.try_recv() {
                Ok(job) => admit(job, limit, decoder.vocab(), &mut active),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        if active.is_empty() {
            continue;
        }
        let mut seqs: Vec<(&mut Cache, &[u32])> = active
            .iter_mut()
            .map(|a| (&mut a.job.cache, a.pending.as_slice()))
            .collect();
        stats.passes += 1;
        stats.tokens += seqs.iter().map(|(_, t)| t.len() as u64).sum::<u64>();
        stats.widest = stats.widest.max(seqs.len());
        let result = decoder.forward_batch(&mut seqs);
        drop(seqs);
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                for a in active.drain(..) {
                    (a.job.reply)(Err(ModelError::Candle(candle_core::Error::Msg(e.to_string()))));
                }
                continue;
            }
        };
        let mut still = Vec::with_capacity(active.len());
        for (mut a, row) in active.drain(..).zip(logits) {
            let s = a.job.sampling;
            let (id, lp) = if !s.is_greedy() && s.top_p >= 1.0 {
                pick_unsorted(&row, s.temperature, &mut a.rng)
            } else {
                pick(&row, s, &mut a.rng)
            };
            stats.sampled += 1;
            a.ids.push(id);
            a.logprobs.push(lp);
            a.pending = vec![id];
            let finish = match stops(tokenizer, &a.ids, &a.job.stop) {
                Err(e) => {
                    (a.job.reply)(Err(e));
                    continue;
                }
                Ok(true) => Some(Finish::Stop),
                Ok(false) if a.ids.len() >= a.max_new => Some(Finish::Length),
                Ok(false) => None,
            };
            match finish {
                None => still.push(a),
                Some(finish) => {
                    let result = tokenizer.decode(&a.ids).map(|text| Turn {
                        output: Output {
                            ids: a.ids,
                            logprobs: a.logprobs,
                            text,
                            finish,
                        },
                        cache: a.job.cache,
                        pending: a.pending,
                    });
                    (a.job.reply)(result);
                }
            }
        }
        active = still;
    }
}
