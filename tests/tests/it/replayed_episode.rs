//! An episode recorded against the sandbox re-runs offline, from the log
//! alone, to the same trajectory: the basis of `fathom replay --check`.

use std::sync::Arc;

use fathom_core::{EpisodeId, Payload, QuestionId, Record, RunId, SystemClock};
use fathom_replay::{Gateway, GatewayConfig, Recording, SearchBackend};
use fathom_sandbox::{Sandbox, SandboxWeb, ServeConfig};
use fathom_store::{Options, Store};
use fathom_trainer::rollout::{EpisodeSpec, Rollout, RolloutConfig};
use fathom_trainer::scripted::ScriptedPolicy;
use fathom_trainer::tools::HeuristicReader;

fn turns_of(records: &[Record], episode: EpisodeId) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| match &r.event.payload {
            Payload::TurnGenerated(t) if t.episode_id == episode => Some(t.text.clone()),
            _ => None,
        })
        .collect()
}

fn tool_texts(records: &[Record], episode: EpisodeId) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| match &r.event.payload {
            Payload::ToolResult(t) if t.episode_id == episode => Some(t.text.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_episode_replays_identically_with_the_web_gone() {
    let web = Arc::new(SandboxWeb::generate(31, 300).unwrap());
    let question = fathom_sandbox::questions::generate(&web.world, 31, 4, 4..=4).remove(0);
    let spec = EpisodeSpec {
        question_id: QuestionId(question.id.clone()),
        question: question.text.clone(),
        ground_truths: question.answers.clone(),
        step: 0,
        group_id: 0,
        group_index: 0,
        seed: 1,
        replay_of: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), Options::default()).unwrap());
    let clock = Arc::new(SystemClock);

    // Record: the live sandbox, every exchange into the log.
    let original = {
        let sb = Sandbox::start(web.clone(), ServeConfig::default()).await.unwrap();
        let gateway = Gateway::record(
            GatewayConfig::sandbox(sb.search_url(), sb.addresses()),
            store.clone(),
            clock.clone(),
        )
        .unwrap();
        let rollout = Rollout::new(
            store.clone(),
            Arc::new(gateway),
            clock.clone(),
            RunId(1),
            RolloutConfig::default(),
        );
        rollout
            .episode(&mut ScriptedPolicy::new(), &mut HeuristicReader, &spec)
            .await
            .unwrap()
    }; // The sandbox stops here: nothing is listening any more.
    assert_eq!(
        original.score.f1, 1.0,
        "a 4-hop question answered: {:?}",
        original.score
    );

    // Replay: the same episode from the log only, into a second run.
    let recorded: Vec<Record> = store.episode_events(original.episode_id).map(Result::unwrap).collect();
    let recording = Recording::from_records(&store, &recorded).unwrap();
    assert!(
        recording.remaining() >= 8,
        "four hops of search and browse were recorded"
    );
    let offline = Gateway::replay(
        GatewayConfig::new(SearchBackend::Serper {
            url: "http://127.0.0.1:9/search".into(),
            key: None,
        }),
        recording,
        clock.clone(),
    );
    let rollout = Rollout::new(
        store.clone(),
        Arc::new(offline),
        clock,
        RunId(2),
        RolloutConfig::default(),
    );
    let replayed = rollout
        .episode(&mut ScriptedPolicy::new(), &mut HeuristicReader, &spec)
        .await
        .unwrap();

    let all: Vec<Record> = store.iter().map(Result::unwrap).collect();
    assert_eq!(
        turns_of(&all, replayed.episode_id),
        turns_of(&all, original.episode_id),
        "token-identical turns"
    );
    assert_eq!(
        tool_texts(&all, replayed.episode_id),
        tool_texts(&all, original.episode_id),
        "the same web, byte for byte"
    );
    assert_eq!(replayed.score, original.score);
    assert_eq!(replayed.ended_by, original.ended_by);
}
