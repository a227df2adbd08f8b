//! The log: append, read, indexes, tail, ids, blobs, recovery, locking.

use std::time::Duration;

use fathom_core::event::{RunFinished, RunStatus, fixtures};
use fathom_core::{EpisodeId, Event, EventKind, IdKind, Payload, RunId, Seq, Timestamp};
use fathom_store::workload::{self, Workload, WorkloadSpec};
use fathom_store::{Durability, Error, Options, Store};

use crate::{events_without_blobs, temp_store};

pub(crate) fn finished(run: u64, n: u64) -> Event {
    Event::new(
        RunId(run),
        Timestamp(n as i64),
        RunFinished {
            status: RunStatus::Completed,
            steps_completed: n,
            message: format!("event {n}"),
        },
    )
}

#[test]
fn appends_get_dense_sequence_numbers_and_read_back() {
    let (_dir, store) = temp_store();
    assert_eq!(store.last_seq(), Seq(0));
    assert_eq!(store.append(&[]).unwrap(), None);
    let r1 = store.append(&fixtures::events()).unwrap().unwrap();
    assert_eq!((r1.first, r1.last), (Seq(1), Seq(15)));
    let r2 = store.append(&[finished(8, 1)]).unwrap().unwrap();
    assert_eq!((r2.first, r2.last), (Seq(16), Seq(16)));
    assert_eq!(store.last_seq(), Seq(16));

    let all: Vec<_> = store.iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(all.len(), 16);
    assert!(all.iter().enumerate().all(|(i, r)| r.seq == Seq(i as u64 + 1)));
    assert_eq!(
        all[..15].iter().map(|r| r.event.clone()).collect::<Vec<_>>(),
        fixtures::events()
    );

    let middle: Vec<_> = store.range(Seq(5)..=Seq(7)).map(|r| r.unwrap().seq).collect();
    assert_eq!(middle, vec![Seq(5), Seq(6), Seq(7)]);
    assert_eq!(store.get(Seq(16)).unwrap().unwrap().event, finished(8, 1));
    assert_eq!(store.get(Seq(17)).unwrap(), None);
}

#[test]
fn an_event_too_large_for_the_log_is_refused_with_the_real_limit_and_nothing_is_written() {
    let (_dir, store) = temp_store();
    store.append(&[finished(1, 1)]).unwrap();
    let mut huge = finished(1, 2);
    if let Payload::RunFinished(p) = &mut huge.payload {
        p.message = "x".repeat(17 << 20);
    }
    let err = store.append(&[finished(1, 3), huge]).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, Error::TooLarge { limit, .. } if limit == fathom_store::MAX_EVENT_BYTES),
        "{text}"
    );
    assert!(
        text.contains("is larger than the") && text.contains("must be shortened") && !text.contains("4 GiB"),
        "{text}"
    );
    // The whole batch was refused: the event before it was not written.
    assert_eq!(store.last_seq(), Seq(1));
}

#[test]
fn run_and_episode_indexes_find_their_events() {
    let (_dir, store) = temp_store();
    store.append(&fixtures::events()).unwrap();
    store.append(&[finished(3, 1), finished(9, 2), finished(3, 3)]).unwrap();
    assert_eq!(store.runs().unwrap(), vec![RunId(3), fixtures::RUN, RunId(9)]);
    let run3: Vec<u64> = store.run_events(RunId(3)).map(|r| r.unwrap().seq.0).collect();
    assert_eq!(run3, vec![16, 18]);
    assert_eq!(store.run_events(fixtures::RUN).count(), 15);
    let episode: Vec<_> = store.episode_events(EpisodeId(42)).map(Result::unwrap).collect();
    assert_eq!(episode.len(), 8);
    assert!(
        episode
            .iter()
            .all(|r| r.event.payload.episode_id() == Some(EpisodeId(42)))
    );
    assert_eq!(episode[0].event.kind(), EventKind::EpisodeStarted);
    assert_eq!(store.episode_events(EpisodeId(43)).count(), 0);
}

#[test]
fn reopening_continues_the_sequence_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), Options::default()).unwrap();
        store.append(&fixtures::events()).unwrap();
        assert_eq!(store.next_id(IdKind::Episode).unwrap(), 1);
        assert_eq!(store.next_id(IdKind::Episode).unwrap(), 2);
        assert_eq!(store.new_run_id().unwrap(), RunId(1));
        store.close().unwrap();
    }
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert!(store.recovery().cut.is_empty());
    assert_eq!(store.recovery().last_seq, Seq(15));
    let r = store.append(&[finished(1, 1)]).unwrap().unwrap();
    assert_eq!(r.first, Seq(16));
    assert_eq!(
        store.next_id(IdKind::Episode).unwrap(),
        3,
        "ids are never handed out twice"
    );
    assert_eq!(store.iter().count(), 16);
}

#[test]
fn a_second_opener_is_told_who_holds_the_directory() {
    let (dir, _store) = temp_store();
    let err = Store::open(dir.path(), Options::default()).unwrap_err();
    assert!(matches!(err, Error::InUse { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    assert!(msg.contains(&format!("pid {}", std::process::id())), "{msg}");
    assert!(msg.contains("--data"), "{msg}");
}

#[test]
fn blobs_are_stored_once_and_verified_on_read() {
    let (_dir, store) = temp_store();
    let page = "<p>The same page, fetched by every rollout of a group.</p>".repeat(500);
    let a = store.put_blob(page.as_bytes()).unwrap();
    let b = store.put_blob(page.as_bytes()).unwrap();
    assert_eq!(a, b);
    let many = store.put_blobs(&[page.as_bytes(), b"other", page.as_bytes()]).unwrap();
    assert_eq!(many[0], a);
    assert_eq!(many[2], a);
    assert_eq!(store.get_blob(&a.digest).unwrap().unwrap(), page.as_bytes());
    assert!(store.has_blob(&many[1].digest).unwrap());
    let stats = store.stats().unwrap();
    assert_eq!(stats.blobs, 2);
    assert!(stats.blob_stored_bytes < stats.blob_raw_bytes / 10, "{stats:?}");

    // A corrupted blob is reported on read, with its digest.
    let mut raw = store.raw_blob(&a.digest).unwrap().unwrap();
    let at = raw.len() - 3;
    raw[at] ^= 0xff;
    store.inject_raw_blob(&a.digest, &raw).unwrap();
    let err = store.get_blob(&a.digest).unwrap_err();
    assert!(err.to_string().contains(&a.digest.to_hex()), "{err}");
    assert_eq!(store.get_blob(&many[1].digest).unwrap().unwrap(), b"other");
}

#[test]
fn relaxed_appends_are_visible_at_once_and_durable_after_flush() {
    let dir = tempfile::tempdir().unwrap();
    {
        let opts = Options {
            durability: Durability::Relaxed,
            ..Options::default()
        };
        let store = Store::open(dir.path(), opts).unwrap();
        for n in 1..=100 {
            store.append(&[finished(1, n)]).unwrap();
        }
        assert_eq!(store.last_seq(), Seq(100));
        store.close().unwrap();
    }
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(store.last_seq(), Seq(100));
}

#[test]
fn a_reader_in_another_thread_sees_an_append_immediately() {
    let (_dir, store) = temp_store();
    let store = std::sync::Arc::new(store);
    let reader = {
        let store = store.clone();
        std::thread::spawn(move || {
            let last = store.wait_after(Seq(0), Duration::from_secs(30));
            store.get(last).unwrap().unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(20));
    store.append(&[finished(5, 1)]).unwrap();
    let seen = reader.join().unwrap();
    assert_eq!(seen.seq, Seq(1));
    assert_eq!(seen.event, finished(5, 1));
    // With nothing new, the wait times out and reports where the log is.
    assert_eq!(store.wait_after(Seq(1), Duration::from_millis(10)), Seq(1));
}

#[tokio::test]
async fn an_async_subscriber_is_woken_by_an_append() {
    let (_dir, store) = temp_store();
    let store = std::sync::Arc::new(store);
    let mut rx = store.subscribe();
    let writer = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.append(&[finished(1, 1), finished(1, 2)]).unwrap())
    };
    tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|s| *s >= Seq(2)))
        .await
        .expect("subscriber woken")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(store.get(Seq(2)).unwrap().unwrap().event, finished(1, 2));
}

#[test]
fn a_corrupt_tail_is_cut_and_quarantined_at_open_and_middle_damage_is_left_for_verify() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), Options::default()).unwrap();
        store.append(&events_without_blobs()).unwrap();
        for seq in [Seq(14), Seq(15), Seq(3)] {
            let mut raw = store.raw_event(seq).unwrap().unwrap();
            let at = raw.len() / 2;
            raw[at] ^= 0x55;
            store.inject_raw_event(seq, &raw).unwrap();
        }
        store.close().unwrap();
    }
    let store = Store::open(dir.path(), Options::default()).unwrap();
    let cut: Vec<Seq> = store.recovery().cut.iter().map(|(s, _)| *s).collect();
    assert_eq!(cut, vec![Seq(15), Seq(14)]);
    assert!(store.recovery().cut[0].1.contains("checksum mismatch"));
    assert_eq!(store.last_seq(), Seq(13));
    // Reading the run meets the damaged event 3 and says so, by number,
    // and reads the rest; the cut events are gone from the index.
    let run: Vec<_> = store.run_events(fixtures::RUN).collect();
    assert_eq!(run.len(), 13);
    let err = run[2].as_ref().unwrap_err();
    assert!(err.to_string().starts_with("event 3 is corrupt"), "{err}");
    // Episode 42 lives in events 4..=11: untouched, fully readable.
    let episode: Vec<_> = store.episode_events(EpisodeId(42)).filter_map(Result::ok).collect();
    assert_eq!(episode.len(), 8);
    // The next append continues after the last good event.
    assert_eq!(store.append(&[finished(1, 1)]).unwrap().unwrap().first, Seq(14));
    // Damage in the middle is not cut: it is reported, and the rest reads.
    let report = store.verify(&mut |_, _, _| {}).unwrap();
    assert_eq!(report.first_bad_seq(), Some(Seq(3)));
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let readable = store.iter().filter(Result::is_ok).count();
    assert_eq!(readable, 13);
}

#[test]
fn verify_passes_on_a_healthy_store_and_stats_count_kinds_runs_and_dedupe() {
    let (_dir, store) = temp_store();
    let spec = WorkloadSpec {
        body_min: 2_000,
        body_max: 8_000,
        repeat_fraction: 0.5,
        ..WorkloadSpec::default()
    };
    let mut load = Workload::new(1, RunId(4), spec);
    for _ in 0..10 {
        workload::append(&store, &load.batch(30), Durability::Durable).unwrap();
    }
    store.append(&events_without_blobs()).unwrap();
    let report = store.verify(&mut |_, _, _| {}).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.events, 315);
    let stats = store.stats().unwrap();
    assert_eq!(stats.events, 315);
    assert_eq!(stats.by_run[&RunId(4)].events, 300);
    assert_eq!(stats.by_kind[&EventKind::WebExchange].events, 101);
    assert_eq!(stats.by_kind[&EventKind::TurnGenerated].events, 201);
    assert!(
        stats.dedupe_ratio() > 1.2,
        "repeated pages are stored once: {}",
        stats.dedupe_ratio()
    );
    assert!(stats.compression_ratio() > 1.5, "{}", stats.compression_ratio());
    let web = store.iter().map(Result::unwrap).find_map(|r| match r.event.payload {
        Payload::WebExchange(w) => w.body,
        _ => None,
    });
    let body = store.get_blob(&web.unwrap().digest).unwrap().unwrap();
    assert!(body.starts_with(b"<!DOCTYPE html>"));
}

#[test]
fn verify_names_blobs_that_events_refer_to_but_the_store_lacks() {
    let (_dir, store) = temp_store();
    // The fixtures refer to made-up blobs that were never put.
    store.append(&fixtures::events()).unwrap();
    let report = store.verify(&mut |_, _, _| {}).unwrap();
    let missing: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    assert_eq!(missing.len(), 3, "{missing:?}");
    assert!(missing[0].starts_with("event 5 refers to blob 1111"), "{missing:?}");
    assert_eq!(report.first_bad_seq(), Some(Seq(5)));
}

#[test]
fn blobs_are_read_through_the_writers_endpoint_or_from_the_log() {
    use fathom_store::tail::{TailServer, fetch_blob, read_blob};
    let dir = tempfile::tempdir().unwrap();
    let page = b"<html>a recorded page</html>".repeat(50);
    let digest = {
        let store =
            std::sync::Arc::new(fathom_store::Store::open(dir.path(), fathom_store::Options::default()).unwrap());
        let r = store.put_blob(&page).unwrap();
        store.flush().unwrap();
        // While the writer holds the log, its endpoint serves the blob.
        let _server = TailServer::start(store.clone()).unwrap();
        assert_eq!(fetch_blob(dir.path(), &r.digest).unwrap(), Some(Some(page.clone())));
        let missing = fathom_core::Digest([7; 32]);
        assert_eq!(fetch_blob(dir.path(), &missing).unwrap(), Some(None));
        assert_eq!(read_blob(dir.path(), &r.digest).unwrap(), Some(page.clone()));
        r.digest
    };
    // With no writer, no endpoint: the log is opened to read it.
    assert_eq!(fetch_blob(dir.path(), &digest).unwrap(), None);
    assert_eq!(read_blob(dir.path(), &digest).unwrap(), Some(page));
}

#[test]
fn an_episodes_events_are_read_through_the_writers_endpoint() {
    use fathom_core::event::{EpisodeStarted, TurnGenerated};
    use fathom_core::{EpisodeId, Event, QuestionId, RunId, Timestamp};
    use fathom_store::tail::{TailServer, fetch_episode};
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(fathom_store::Store::open(dir.path(), fathom_store::Options::default()).unwrap());
    let mut events = Vec::new();
    for e in 1..=3u64 {
        events.push(Event::new(
            RunId(1),
            Timestamp::from_secs(1),
            EpisodeStarted {
                episode_id: EpisodeId(e),
                step: 1,
                group_id: 0,
                group_index: e as u32,
                question_id: QuestionId("q".into()),
                policy_version: 0,
                seed: e,
                replay_of: None,
                n_prompt_tokens: 10,
            },
        ));
    }
    for turn in 0..4u32 {
        for e in 1..=3u64 {
            events.push(Event::new(
                RunId(1),
                Timestamp::from_secs(2),
                TurnGenerated {
                    episode_id: EpisodeId(e),
                    turn,
                    text: format!("episode {e} turn {turn}"),
                    token_ids: None,
                    logprobs: None,
                    n_context_tokens: 0,
                    n_tokens: 3,
                    latency_ns: 1,
                    finish: fathom_core::event::FinishReason::Stop,
                },
            ));
        }
    }
    store.append(&events).unwrap();
    assert_eq!(
        fetch_episode(dir.path(), EpisodeId(2)).unwrap(),
        None,
        "no endpoint yet"
    );
    let _server = TailServer::start(store.clone()).unwrap();
    let got = fetch_episode(dir.path(), EpisodeId(2)).unwrap().unwrap();
    assert_eq!(got.len(), 5, "its start and its four turns, nothing of the others");
    let expected: Vec<_> = store.episode_events(EpisodeId(2)).map(Result::unwrap).collect();
    assert_eq!(got, expected);
    assert!(got.windows(2).all(|w| w[0].seq < w[1].seq), "in log order");
    assert!(fetch_episode(dir.path(), EpisodeId(99)).unwrap().unwrap().is_empty());

    // A run's events of some kinds, and the same through the LogRead of
    // the endpoint and of the store.
    use fathom_core::EventKind;
    use fathom_store::LogRead;
    let starts = fathom_store::tail::fetch_run(dir.path(), RunId(1), &[EventKind::EpisodeStarted])
        .unwrap()
        .unwrap();
    assert_eq!(starts.len(), 3, "the three starts, none of the twelve turns");
    assert!(
        starts
            .iter()
            .all(|r| r.event.payload.kind() == EventKind::EpisodeStarted)
    );
    let endpoint = fathom_store::tail::Endpoint::connect(dir.path()).expect("the endpoint answers");
    let kinds = [EventKind::EpisodeStarted, EventKind::TurnGenerated];
    assert_eq!(
        endpoint.run_records(RunId(1), &kinds).unwrap(),
        store.run_records(RunId(1), &kinds).unwrap()
    );
    assert_eq!(endpoint.run_records(RunId(1), &kinds).unwrap().len(), 15);
    assert!(endpoint.run_records(RunId(7), &kinds).unwrap().is_empty());
    assert_eq!(
        endpoint.episode_records(EpisodeId(3)).unwrap(),
        store.episode_records(EpisodeId(3)).unwrap()
    );
    drop(_server);
    assert!(
        fathom_store::tail::Endpoint::connect(dir.path()).is_none(),
        "no endpoint once the writer stops"
    );
    let gone = endpoint.episode_records(EpisodeId(3)).unwrap_err().to_string();
    assert!(gone.contains("stopped serving its read endpoint"), "{gone}");
}
