//! A whole episode's events, as a rollout would write them, go through the
//! store and come back by run and by episode, with their blobs.

use fathom_core::event::{
    EndReason, EpisodeFinished, EpisodeStarted, FinishReason, TurnGenerated, WebExchange, WebKind, WebSource,
};
use fathom_core::{Clock, Event, ManualClock, Payload, QuestionId, RequestId, Timestamp};
use fathom_store::{Options, Store};

#[test]
fn an_episode_round_trips_through_the_log_with_its_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    let clock = ManualClock::new(Timestamp::from_secs(1_800_000_000));
    let run = store.new_run_id().unwrap();
    let episode = store.new_episode_id().unwrap();
    let page = "<html><body><p>Ada Lind founded Zest Mobile in 2011.</p></body></html>".repeat(50);
    let token_ids: Vec<u8> = (0u32..40).flat_map(u32::to_le_bytes).collect();
    let refs = store.put_blobs(&[page.as_bytes(), &token_ids]).unwrap();

    let mut events = vec![Event::new(
        run,
        clock.now(),
        EpisodeStarted {
            episode_id: episode,
            step: 0,
            group_id: 0,
            group_index: 0,
            question_id: QuestionId::from("q1"),
            policy_version: 0,
            seed: 5,
            replay_of: None,
            n_prompt_tokens: 100,
        },
    )];
    clock.advance(1_000_000);
    events.push(Event::new(
        run,
        clock.now(),
        TurnGenerated {
            episode_id: episode,
            turn: 0,
            text: "<think>search</think><tool_call>{}</tool_call>".into(),
            token_ids: Some(refs[1]),
            logprobs: None,
            n_context_tokens: 100,
            n_tokens: 40,
            latency_ns: 1_000_000,
            finish: FinishReason::Stop,
        },
    ));
    clock.advance(1_000_000);
    events.push(Event::new(
        run,
        clock.now(),
        WebExchange {
            request_id: RequestId(store.next_id(fathom_core::IdKind::Request).unwrap()),
            episode_id: Some(episode),
            turn: Some(0),
            request_kind: WebKind::Fetch,
            target: "http://127.0.0.1:1/zest".into(),
            canonical: "GET http://127.0.0.1:1/zest".into(),
            backend: "sandbox".into(),
            status: 200,
            headers: vec![],
            body: Some(refs[0]),
            body_truncated: false,
            latency_ns: 2_000_000,
            source: WebSource::Sandbox,
            attempt: 1,
            error: None,
        },
    ));
    clock.advance(1_000_000);
    events.push(Event::new(
        run,
        clock.now(),
        EpisodeFinished {
            episode_id: episode,
            answer: Some("Ada Lind".into()),
            reward: 1.0,
            f1: 1.0,
            em: 1.0,
            format_ok: true,
            format_error: None,
            n_turns: 2,
            n_tool_calls: 1,
            n_searches: 0,
            n_browses: 1,
            n_tokens: 60,
            ended_by: EndReason::Answer,
            duration_ns: 3_000_000,
        },
    ));
    store.append(&events).unwrap();
    // An unrelated run's event in between must not show up in the episode.
    let other = store.new_run_id().unwrap();
    store
        .append(&[Event::new(
            other,
            clock.now(),
            fathom_core::event::RunFinished {
                status: fathom_core::event::RunStatus::Failed,
                steps_completed: 0,
                message: "other".into(),
            },
        )])
        .unwrap();

    let back: Vec<Event> = store.episode_events(episode).map(|r| r.unwrap().event).collect();
    assert_eq!(back, events);
    assert_eq!(store.run_events(run).count(), 4);
    assert!(back.windows(2).all(|w| w[0].ts < w[1].ts), "clock readings are kept");
    let body = back.iter().find_map(|e| match &e.payload {
        Payload::WebExchange(w) => w.body,
        _ => None,
    });
    assert_eq!(store.get_blob(&body.unwrap().digest).unwrap().unwrap(), page.as_bytes());
    assert!(store.verify(&mut |_, _, _| {}).unwrap().is_ok());
}
