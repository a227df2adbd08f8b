//! One fixed, realistic example of every event kind.
//!
//! The store's golden tests encode these and pin the bytes; the docs render
//! them; tests elsewhere use them as ready-made events. Change a value here
//! and the golden snapshots change with it, which is the point: the bytes of a
//! shipped layout must only change on purpose.

use super::*;
use crate::clock::Timestamp;
use crate::id::{CheckpointId, EpisodeId, QuestionId, RequestId, RunId, Seq, SnapshotId};

/// The run every fixture belongs to.
pub const RUN: RunId = RunId(7);

/// The fixture timestamp: 2026-11-21T12:00:00Z.
pub const TS: Timestamp = Timestamp(1_795_262_400_000_000_000);

fn digest(byte: u8) -> Digest {
    Digest([byte; 32])
}

/// One payload of every kind, in kind-code order.
pub fn payloads() -> Vec<Payload> {
    let episode = EpisodeId(42);
    vec![
        RunStarted {
            name: "grpo-tiny".into(),
            run_kind: RunKind::Train,
            config_json: r#"{"steps":2,"group_size":4}"#.into(),
            seed: 1234,
            policy: "candle".into(),
            model: "models/tiny".into(),
            code_version: "fathom 0.1.0".into(),
            attempt: 0,
        }
        .into(),
        RunFinished {
            status: RunStatus::Completed,
            steps_completed: 2,
            message: "done".into(),
        }
        .into(),
        QuestionSampled {
            step: 1,
            question_id: QuestionId::from("musique_2hop__1"),
            data_source: "musique".into(),
            question: "Who founded the company that makes the Zest phone?".into(),
            ground_truths: vec!["Ada Lind".into(), "A. Lind".into()],
            hops: Some(2),
            data_cursor: 3,
        }
        .into(),
        EpisodeStarted {
            episode_id: episode,
            step: 1,
            group_id: 0,
            group_index: 3,
            question_id: QuestionId::from("musique_2hop__1"),
            policy_version: 1,
            seed: 99,
            replay_of: None,
            n_prompt_tokens: 312,
        }
        .into(),
        TurnGenerated {
            episode_id: episode,
            turn: 0,
            text: "<think>First find the maker, then its founder.</think>\n<tool_call>{\"name\": \"web_search\", \"arguments\": {\"query\": [\"Zest phone maker\"]}}</tool_call>".into(),
            token_ids: Some(BlobRef { digest: digest(0x11), len: 160 }),
            logprobs: Some(BlobRef { digest: digest(0x12), len: 160 }),
            n_context_tokens: 312,
            n_tokens: 40,
            latency_ns: 81_000_000,
            finish: FinishReason::Stop,
        }
        .into(),
        ToolCalled {
            episode_id: episode,
            turn: 0,
            tool: "web_search".into(),
            arguments_json: r#"{"query":["Zest phone maker"]}"#.into(),
        }
        .into(),
        WebExchange {
            request_id: RequestId(5),
            episode_id: Some(episode),
            turn: Some(1),
            request_kind: WebKind::Fetch,
            target: "http://127.0.0.1:8931/wiki/Zest_Mobile".into(),
            canonical: "GET http://127.0.0.1:8931/wiki/Zest_Mobile".into(),
            backend: "sandbox".into(),
            status: 200,
            headers: vec![Header {
                name: "content-type".into(),
                value: "text/html; charset=utf-8".into(),
            }],
            body: Some(BlobRef { digest: digest(0x21), len: 48_213 }),
            body_truncated: false,
            latency_ns: 3_400_000,
            source: WebSource::Sandbox,
            attempt: 1,
            error: None,
        }
        .into(),
        PageSegmentRead {
            episode_id: episode,
            turn: 1,
            request_id: RequestId(5),
            url: "http://127.0.0.1:8931/wiki/Zest_Mobile".into(),
            segment: 0,
            n_segments: 2,
            notes: "Zest Mobile was founded by Ada Lind in 2011.".into(),
            read_next: false,
            n_tokens: 22,
        }
        .into(),
        ToolResult {
            episode_id: episode,
            turn: 1,
            tool: "browse_webpage".into(),
            text: "Zest Mobile was founded by Ada Lind in 2011.".into(),
            n_results: 1,
            ok: true,
            error: None,
            truncated: false,
            n_tokens: 14,
        }
        .into(),
        EpisodeFinished {
            episode_id: episode,
            answer: Some("Ada Lind".into()),
            reward: 1.0,
            f1: 1.0,
            em: 1.0,
            format_ok: true,
            format_error: None,
            n_turns: 3,
            n_tool_calls: 2,
            n_searches: 1,
            n_browses: 1,
            n_tokens: 118,
            ended_by: EndReason::Answer,
            duration_ns: 950_000_000,
        }
        .into(),
        BehaviourTagged {
            episode_id: episode,
            behaviour: Behaviour::Planning,
            turn: 0,
            span_start: 7,
            span_end: 46,
            evidence: "First find the maker, then its founder.".into(),
            detector_version: 1,
        }
        .into(),
        GradientUpdate {
            step: 1,
            policy_version: 2,
            loss: 0.125,
            pg_loss: 0.12,
            kl: 0.004,
            entropy: 1.75,
            clip_frac: 0.03125,
            grad_norm: 0.5,
            lr: 1e-6,
            tokens: 4096,
            episodes: 16,
            micro_batches: 4,
            duration_ns: 2_000_000_000,
        }
        .into(),
        CheckpointSaved {
            checkpoint_id: CheckpointId(2),
            step: 1,
            policy_version: 2,
            path: "checkpoints/r-7/step-000001".into(),
            weights_digest: digest(0x31),
            optimizer_digest: digest(0x32),
            rng_state: vec![1, 2, 3, 4],
            data_cursor: 4,
            bytes: 1_048_576,
            metric: Some(0.5),
        }
        .into(),
        EvalResult {
            step: 1,
            benchmark: "deepresearcher-dev".into(),
            data_source: "nq".into(),
            metric: "f1".into(),
            value: 0.396,
            n: 125,
        }
        .into(),
        SnapshotCommitted {
            snapshot_id: SnapshotId(3),
            table: "episodes".into(),
            path: "episodes/r-7/00000003.parquet".into(),
            rows: 64,
            bytes: 8192,
            first_seq: Seq(1),
            last_seq: Seq(900),
            digest: digest(0x41),
        }
        .into(),
    ]
}

/// [`payloads`] wrapped as events of run [`RUN`] at [`TS`] plus a second per event.
pub fn events() -> Vec<Event> {
    payloads()
        .into_iter()
        .enumerate()
        .map(|(i, p)| Event::new(RUN, Timestamp(TS.0 + i as i64 * 1_000_000_000), p))
        .collect()
}
