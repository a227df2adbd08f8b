//! Whole episodes of the scripted researcher on the sandbox, recorded.

use std::collections::BTreeMap;
use std::sync::Arc;

use fathom_core::event::EndReason;
use fathom_core::{EventKind, Payload, QuestionId, RunId, SystemClock};
use fathom_replay::{Gateway, GatewayConfig};
use fathom_sandbox::faults::FaultSpec;
use fathom_sandbox::{Sandbox, SandboxWeb, ServeConfig};
use fathom_store::{Options, Store};
use fathom_trainer::rollout::{EpisodeSpec, Rollout, RolloutConfig};
use fathom_trainer::scripted::ScriptedPolicy;
use fathom_trainer::tools::HeuristicReader;

async fn run_questions(
    faults: &str,
    count: usize,
    protocol: fathom_core::protocol::Protocol,
) -> (tempfile::TempDir, Arc<Store>, BTreeMap<u32, Vec<f64>>, usize) {
    let web = Arc::new(SandboxWeb::generate(21, 400).unwrap());
    let sb = Sandbox::start(
        web.clone(),
        ServeConfig {
            faults: FaultSpec::parse(faults).unwrap(),
            ..ServeConfig::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), Options::default()).unwrap());
    let addrs = sb.addresses();
    let mut config = GatewayConfig::sandbox(sb.search_url(), addrs);
    config.timeout = std::time::Duration::from_secs(2);
    config.backoff = std::time::Duration::from_millis(5);
    let gateway = Arc::new(Gateway::record(config, store.clone(), Arc::new(SystemClock)).unwrap());
    let rollout = Rollout::new(
        store.clone(),
        gateway,
        Arc::new(SystemClock),
        RunId(1),
        RolloutConfig {
            protocol,
            ..RolloutConfig::default()
        },
    );
    let questions = fathom_sandbox::questions::generate(&web.world, 5, count, 1..=4);
    let mut f1_by_hops: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    let mut errors = 0;
    for (i, q) in questions.iter().enumerate() {
        let spec = EpisodeSpec {
            question_id: QuestionId(q.id.clone()),
            question: q.text.clone(),
            ground_truths: q.answers.clone(),
            step: 0,
            group_id: i as u32,
            group_index: 0,
            seed: i as u64,
            replay_of: None,
        };
        let out = rollout
            .episode(&mut ScriptedPolicy::new(), &mut HeuristicReader, &spec)
            .await
            .unwrap();
        if out.ended_by == EndReason::Error {
            errors += 1;
        }
        f1_by_hops.entry(q.hops).or_default().push(out.score.eval_f1());
    }
    drop(sb);
    (dir, store, f1_by_hops, errors)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scripted_researcher_answers_sandbox_questions_and_every_step_is_an_event() {
    let (_dir, store, by_hops, errors) = run_questions("none", 200, fathom_core::protocol::Protocol::V2).await;
    assert_eq!(errors, 0);
    let one_hop = mean(&by_hops[&1]);
    assert!(one_hop >= 0.8, "1-hop F1 {one_hop}: {by_hops:?}");
    for h in 2..=4 {
        assert!(
            mean(&by_hops[&h]) >= 0.5,
            "{h}-hop F1 {}: {by_hops:?}",
            mean(&by_hops[&h])
        );
    }
    let records: Vec<_> = store.iter().map(Result::unwrap).collect();
    let count = |k: EventKind| records.iter().filter(|r| r.event.kind() == k).count();
    assert_eq!(count(EventKind::EpisodeStarted), 200);
    assert_eq!(count(EventKind::EpisodeFinished), 200);
    assert!(count(EventKind::TurnGenerated) >= 200 * 3);
    assert_eq!(count(EventKind::ToolCalled), count(EventKind::ToolResult));
    assert!(count(EventKind::WebExchange) >= count(EventKind::ToolCalled));
    assert!(count(EventKind::PageSegmentRead) > 0);
    // Multi-hop plans are announced in the first think and tagged.
    let plans = records
        .iter()
        .filter(|r| matches!(&r.event.payload, Payload::BehaviourTagged(b) if b.behaviour == fathom_core::event::Behaviour::Planning))
        .count();
    assert!(plans >= 100, "{plans} planning tags");
    // One episode reads back whole through the episode index.
    let first = records.iter().find_map(|r| match &r.event.payload {
        Payload::EpisodeStarted(e) => Some(e.episode_id),
        _ => None,
    });
    let episode: Vec<_> = store.episode_events(first.unwrap()).map(Result::unwrap).collect();
    assert_eq!(episode.first().unwrap().event.kind(), EventKind::EpisodeStarted);
    assert_eq!(episode.last().unwrap().event.kind(), EventKind::EpisodeFinished);

    // Logs recorded under protocol 1 ran the same researcher under the old
    // rules, which still hold.
    let (_dir, store, by_hops, errors) = run_questions("none", 40, fathom_core::protocol::Protocol::V1).await;
    assert_eq!(errors, 0);
    assert!(mean(&by_hops[&1]) >= 0.8, "{by_hops:?}");
    let records: Vec<_> = store.iter().map(Result::unwrap).collect();
    let count = |k: EventKind| records.iter().filter(|r| r.event.kind() == k).count();
    assert!(count(EventKind::TurnGenerated) >= 40 * 3);
    assert!(count(EventKind::PageSegmentRead) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_at_ten_percent_cause_no_crash() {
    let (_dir, store, by_hops, errors) = run_questions(
        "latency=0.02:20ms,404=0.02,429=0.02:1s,500=0.02,truncate=0.01,non_utf8=0.01",
        24,
        fathom_core::protocol::Protocol::CURRENT,
    )
    .await;
    assert_eq!(errors, 0);
    assert_eq!(by_hops.values().map(Vec::len).sum::<usize>(), 24);
    assert!(store.verify(&mut |_, _, _| {}).unwrap().is_ok());
}
