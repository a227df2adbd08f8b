//! A small fixed log: a synthetic training run of 3 steps (12 episodes) and
//! a hand-written evaluation run with the corner cases (an aborted episode,
//! a web request outside an episode, hostile text, a failed run, a
//! checkpoint and evaluation figures).

use fathom_core::event::{
    CheckpointSaved, EndReason, EpisodeFinished, EpisodeStarted, EvalResult, FinishReason, QuestionSampled,
    RunFinished, RunKind, RunStarted, RunStatus, TurnGenerated, WebExchange, WebKind, WebSource,
};
use fathom_core::{CheckpointId, Digest, EpisodeId, Event, QuestionId, RequestId, RunId, Timestamp};
use fathom_store::synthetic::{TrainingLoad, TrainingSpec, page_pool};
use fathom_store::{Durability, Options, Store};

fn t(ms: i64) -> Timestamp {
    Timestamp(1_800_000_000_000_000_000 + ms * 1_000_000)
}

fn run_started(name: &str, kind: RunKind, seed: u64) -> RunStarted {
    RunStarted {
        name: name.into(),
        run_kind: kind,
        config_json: format!("{{\"name\":\"{name}\"}}"),
        seed,
        policy: "synthetic".into(),
        model: String::new(),
        code_version: "fathom test".into(),
        attempt: 0,
    }
}

/// The fixture's events, in log order. Blob references point into the
/// page pool, which [`write`] stores.
pub fn events(store: &Store) -> Vec<Event> {
    let pool = page_pool(7);
    let refs = store
        .put_blobs(&pool.iter().map(Vec::as_slice).collect::<Vec<_>>())
        .expect("blobs");
    let train = RunId(1);
    let mut out = vec![Event::new(train, t(0), run_started("fixture-train", RunKind::Train, 7))];
    let spec = TrainingSpec {
        questions_per_step: 2,
        group_size: 2,
        horizon_steps: 3,
    };
    let mut load = TrainingLoad::new(7, train, spec, refs, (0, 0));
    for _ in 0..3 {
        out.extend(load.step());
    }
    out.push(Event::new(
        train,
        t(900_000_000),
        RunFinished {
            status: RunStatus::Completed,
            steps_completed: 3,
            message: "3 steps".into(),
        },
    ));

    let eval = RunId(2);
    let e1 = EpisodeId(101);
    let e2 = EpisodeId(102);
    let q = |id: &str, text: &str, truth: &str, hops| QuestionSampled {
        step: 0,
        question_id: QuestionId(id.into()),
        data_source: "sandbox".into(),
        question: text.into(),
        ground_truths: vec![truth.into()],
        hops: Some(hops),
        data_cursor: 0,
    };
    let started = |e: EpisodeId, qid: &str| EpisodeStarted {
        episode_id: e,
        step: 0,
        group_id: e.0 as u32,
        group_index: 0,
        question_id: QuestionId(qid.into()),
        policy_version: 0,
        seed: 42,
        replay_of: None,
        n_prompt_tokens: 300,
    };
    let finished = |e: EpisodeId, answer: Option<&str>, f1: f64, ended_by| EpisodeFinished {
        episode_id: e,
        answer: answer.map(str::to_string),
        reward: f1,
        f1,
        em: f1.floor(),
        format_ok: answer.is_some(),
        format_error: None,
        n_turns: 1,
        n_tool_calls: 0,
        n_searches: 0,
        n_browses: 0,
        n_tokens: 12,
        ended_by,
        duration_ns: 2_500_000,
    };
    out.extend([
        Event::new(eval, t(1_000_000_000), run_started("fixture-eval", RunKind::Eval, 9)),
        Event::new(
            eval,
            t(1_000_000_001),
            q("q-a", "Who wrote <script>alert(1)</script>?", "Ada", 1),
        ),
        Event::new(
            eval,
            t(1_000_000_002),
            q("q-b", "Where is Mount Example?", "Nowhere", 2),
        ),
        Event::new(eval, t(1_000_000_003), started(e1, "q-a")),
        Event::new(
            eval,
            t(1_000_000_004),
            TurnGenerated {
                episode_id: e1,
                turn: 0,
                text: "<think>easy</think>\n<answer><img src=x onerror=alert(1)>Ada</answer>".into(),
                token_ids: None,
                logprobs: None,
                n_context_tokens: 300,
                n_tokens: 12,
                latency_ns: 1_500_000,
                finish: FinishReason::Stop,
            },
        ),
        Event::new(
            eval,
            t(1_000_000_005),
            finished(e1, Some("<img src=x onerror=alert(1)>Ada"), 0.5, EndReason::Answer),
        ),
        Event::new(eval, t(1_000_000_006), started(e2, "q-b")),
        Event::new(eval, t(1_000_000_007), finished(e2, None, 0.0, EndReason::Aborted)),
        Event::new(
            eval,
            t(1_000_000_008),
            WebExchange {
                request_id: RequestId(9001),
                episode_id: None,
                turn: None,
                request_kind: WebKind::Search,
                target: "javascript:alert(1)".into(),
                canonical: "search serper javascript:alert(1)".into(),
                backend: "serper".into(),
                status: 429,
                headers: Vec::new(),
                body: None,
                body_truncated: false,
                latency_ns: 4_000_000,
                source: WebSource::Live,
                attempt: 2,
                error: Some("rate limited".into()),
            },
        ),
        Event::new(
            eval,
            t(1_000_000_009),
            EvalResult {
                step: 0,
                benchmark: "fixture".into(),
                data_source: "sandbox".into(),
                metric: "f1".into(),
                value: 0.5,
                n: 1,
            },
        ),
        Event::new(
            eval,
            t(1_000_000_010),
            CheckpointSaved {
                checkpoint_id: CheckpointId(3),
                step: 0,
                policy_version: 0,
                path: "checkpoints/r-2/step-000000".into(),
                weights_digest: Digest([1; 32]),
                optimizer_digest: Digest([2; 32]),
                rng_state: vec![1, 2, 3],
                data_cursor: 2,
                bytes: 1024,
                metric: None,
            },
        ),
        Event::new(
            eval,
            t(1_000_000_011),
            RunFinished {
                status: RunStatus::Failed,
                steps_completed: 0,
                message: "stopped by the fixture".into(),
            },
        ),
    ]);
    out
}

/// Opens a fresh store in `dir` and appends `events`.
pub fn append(store: &Store, events: &[Event]) {
    store.append_with(events, Durability::Durable).expect("append");
}

/// A store in `dir`.
pub fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, Options::default()).expect("open store")
}
