//! Batched generation gives every sequence exactly the ids and log-probs of
//! decoding it alone, across turns, whatever shares its passes.

use std::sync::mpsc::channel;

use candle_core::{DType, Device};
use fathom_model::Kernels;
use fathom_model::batch::{Batcher, Job, Turn};
use fathom_model::decode::Decoder;
use fathom_model::generate::{Output, Request, generate};
use fathom_model::sample::Sampling;

/// Runs `jobs` (cache, feed, sampling, seed) through `batcher` at once and
/// returns the turns in order.
fn run_all(batcher: &Batcher, jobs: Vec<(fathom_model::decode::Cache, Vec<u32>, Sampling, u64)>) -> Vec<Turn> {
    let (tx, rx) = channel();
    let n = jobs.len();
    for (i, (cache, feed, sampling, seed)) in jobs.into_iter().enumerate() {
        let tx = tx.clone();
        batcher.submit(Job {
            cache,
            feed,
            max_new_tokens: 14,
            sampling,
            seed,
            stop: vec!["</answer>".into()],
            reply: Box::new(move |r| tx.send((i, r.unwrap())).unwrap()),
        });
    }
    let mut out: Vec<Option<Turn>> = (0..n).map(|_| None).collect();
    for _ in 0..n {
        let (i, t) = rx.recv().unwrap();
        out[i] = Some(t);
    }
    out.into_iter().map(Option::unwrap).collect()
}

#[test]
fn batched_turns_equal_one_at_a_time_generation_token_for_token() {
    let dir = tempfile::tempdir().unwrap();
    crate::model::tiny(dir.path());
    let mut m = fathom_model::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
    m.model.set_kernels(Kernels::Fused);
    let limit = m.model.config().max_position_embeddings;
    let hot = Sampling {
        temperature: 1.0,
        top_p: 1.0,
    };
    let nucleus = Sampling {
        temperature: 0.8,
        top_p: 0.9,
    };
    let greedy = Sampling {
        temperature: 0.0,
        top_p: 1.0,
    };
    // Six sequences of different lengths and sampling settings.
    let prompts: Vec<Vec<u32>> = (0..6u32)
        .map(|s| (0..(5 + 7 * s)).map(|i| 3 + (i * 13 + s * 29) % 500).collect())
        .collect();
    let sampling = |s: usize| [hot, nucleus, greedy][s % 3];
    let tool = |s: usize| -> Vec<u32> { (0..(4 + s as u32)).map(|i| 40 + i * 3 + s as u32).collect() };

    // Alone: each turn decoded from the whole context.
    let alone: Vec<(Output, Output)> = prompts
        .iter()
        .enumerate()
        .map(|(s, prompt)| {
            let stop = vec!["</answer>".to_string()];
            let one = |context: &[u32], seed: u64| {
                generate(
                    &m.model,
                    &m.tokenizer,
                    &Request {
                        prompt: context,
                        max_new_tokens: 14,
                        sampling: sampling(s),
                        seed,
                        stop: &stop,
                    },
                )
                .unwrap()
            };
            let first = one(prompt, 100 + s as u64);
            let mut context = prompt.clone();
            context.extend(&first.ids);
            context.extend(tool(s));
            let second = one(&context, 200 + s as u64);
            (first, second)
        })
        .collect();

    // Together: all six in one batcher, the second turn fed from the first
    // turn's cache (only the pending id and the tool response run again).
    let batcher = Batcher::start(Decoder::of(&m.model).unwrap(), m.tokenizer.clone(), limit);
    let first = run_all(
        &batcher,
        prompts
            .iter()
            .enumerate()
            .map(|(s, p)| (batcher.new_cache(), p.clone(), sampling(s), 100 + s as u64))
            .collect(),
    );
    let second = run_all(
        &batcher,
        first
            .iter()
            .enumerate()
            .map(|(s, t)| {
                let mut feed = t.pending.clone();
                feed.extend(tool(s));
                (t.cache.clone(), feed, sampling(s), 200 + s as u64)
            })
            .collect(),
    );
    for s in 0..prompts.len() {
        assert_eq!(first[s].output, alone[s].0, "sequence {s}, turn 1");
        assert_eq!(second[s].output, alone[s].1, "sequence {s}, turn 2");
        assert_eq!(first[s].pending, vec![*first[s].output.ids.last().unwrap()]);
        assert_eq!(first[s].cache.len() + 1, prompts[s].len() + first[s].output.ids.len());
    }
    let stats = batcher.finish();
    assert!(stats.widest > 1, "the sequences shared passes: {stats:?}");
    assert_eq!(
        stats.sampled,
        first
            .iter()
            .chain(&second)
            .map(|t| t.output.ids.len() as u64)
            .sum::<u64>()
    );
}

#[test]
fn bad_jobs_get_errors_and_the_batcher_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    crate::model::tiny(dir.path());
    let mut m = fathom_model::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
    m.model.set_kernels(Kernels::Fused);
    let batcher = Batcher::start(Decoder::of(&m.model).unwrap(), m.tokenizer.clone(), 64);
    let (tx, rx) = channel();
    for feed in [vec![], vec![5u32; 64], vec![5u32, 6, 7], vec![5u32, 1_000_000]] {
        let tx = tx.clone();
        batcher.submit(Job {
            cache: batcher.new_cache(),
            feed,
            max_new_tokens: 3,
            sampling: Sampling {
                temperature: 0.0,
                top_p: 1.0,
            },
            seed: 1,
            stop: Vec::new(),
            reply: Box::new(move |r| {
                tx.send(r.map(|t| t.output.ids.len()).map_err(|e| e.to_string()))
                    .unwrap()
            }),
        });
    }
    let results: Vec<Result<usize, String>> = (0..4).map(|_| rx.recv().unwrap()).collect();
    assert!(
        results
            .iter()
            .any(|r| r.as_ref().is_err_and(|e| e.contains("empty prompt"))),
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .any(|r| r.as_ref().is_err_and(|e| e.contains("64 positions"))),
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .any(|r| r.as_ref().is_err_and(|e| e.contains("vocabulary"))),
        "{results:?}"
    );
    assert!(results.contains(&Ok(3)), "{results:?}");
}
