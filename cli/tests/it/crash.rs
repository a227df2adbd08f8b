//! Crash safety: a writer killed with SIGKILL at random moments loses nothing
//! it acknowledged.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use fathom_core::{SeededRng, Seq};
use fathom_store::{Options, Store};

use crate::{fathom, run, stdout};

/// Starts `fathom log load` appending forever in durable mode, kills it with
/// SIGKILL, and returns the acknowledged ranges. With `after_first_ack` the
/// delay counts from the first acknowledged batch (a kill mid-append);
/// otherwise from the spawn (a kill that may land during open and recovery).
fn append_until_killed(data: &std::path::Path, batch: u64, after_first_ack: bool, delay: Duration) -> Vec<(u64, u64)> {
    append_until_killed_with(data, batch, after_first_ack, delay, &[])
}

fn append_until_killed_with(
    data: &std::path::Path,
    batch: u64,
    after_first_ack: bool,
    delay: Duration,
    extra: &[&str],
) -> Vec<(u64, u64)> {
    let mut child = fathom(data)
        .args(["log", "load", "--events", "0", "--print-acks", "--no-verify"])
        .args(extra)
        .args([
            "--batch",
            &batch.to_string(),
            "--body-min",
            "1000",
            "--body-max",
            "30000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("fathom starts");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let mut parts = line.strip_prefix("ack ").unwrap_or_default().split(' ');
            if let (Some(Ok(a)), Some(Ok(b))) = (parts.next().map(str::parse), parts.next().map(str::parse)) {
                let _ = tx.send((a, b));
            }
        }
    });
    let mut acks: Vec<(u64, u64)> = Vec::new();
    if after_first_ack {
        acks.push(
            rx.recv_timeout(Duration::from_secs(60))
                .expect("the writer acknowledges a batch"),
        );
    }
    std::thread::sleep(delay);
    child.kill().expect("SIGKILL delivered"); // Child::kill sends SIGKILL on Unix.
    child.wait().unwrap();
    reader.join().unwrap();
    acks.extend(rx.try_iter());
    acks
}

#[test]
fn sigkilled_writers_never_lose_or_duplicate_acknowledged_events() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let mut rng = SeededRng::new(2026);
    let mut acked_max = 0u64;
    let mut kills_with_acks = 0;
    for round in 0..30 {
        let batch = *rng.choose(&[1u64, 7, 64]);
        // Every sixth kill is blind: it may land while the writer is still
        // opening and recovering the log.
        let blind = round % 6 == 5;
        let delay = Duration::from_millis(rng.range_inclusive(0, 300));
        let acks = append_until_killed(data, batch, !blind, delay);
        if !acks.is_empty() {
            kills_with_acks += 1;
        }
        for &(first, last) in &acks {
            assert!(
                first > acked_max,
                "round {round}: ack {first}..{last} repeats numbers already acknowledged"
            );
            assert!(last >= first);
            acked_max = last;
        }

        // Reopen: everything acknowledged is present and intact, with no gap
        // and no duplicate.
        let store = Store::open(data, Options::default()).expect("reopens after SIGKILL");
        assert!(store.recovery().cut.is_empty(), "round {round}: {:?}", store.recovery());
        let last = store.last_seq();
        assert!(
            last.0 >= acked_max,
            "round {round}: acknowledged up to {acked_max} but the log ends at {last}"
        );
        let mut seen = BTreeSet::new();
        for record in store.iter() {
            let record = record.unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert!(seen.insert(record.seq), "round {round}: {} twice", record.seq);
        }
        assert_eq!(seen.len() as u64, last.0, "round {round}: gap in 1..={last}");
        assert_eq!(seen.first().copied(), Some(Seq(1)));
        // Later rounds must continue after whatever became durable, acked or not.
        acked_max = last.0;
        store.close().unwrap();

        let verify = run(data, &["verify"]);
        assert!(verify.status.success(), "round {round}: {}", stdout(&verify));
    }
    assert!(
        kills_with_acks >= 20,
        "only {kills_with_acks} kills happened mid-append"
    );
}

#[test]
fn sigkilled_relaxed_writers_leave_a_dense_prefix() {
    // Relaxed appends may lose the last ~200 ms of acknowledged events, but
    // what survives is always a prefix: no gap, no torn event, and numbers
    // continue after whatever survived.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let mut rng = SeededRng::new(7);
    let mut survived = 0u64;
    for round in 0..8 {
        let delay = Duration::from_millis(rng.range_inclusive(0, 500));
        let acks = append_until_killed_with(data, 16, true, delay, &["--relaxed"]);
        assert!(!acks.is_empty());
        assert!(
            acks[0].0 > survived,
            "round {round}: numbers restart after what survived"
        );
        let store = Store::open(data, Options::default()).expect("reopens after SIGKILL");
        let last = store.last_seq();
        assert!(last.0 >= survived, "round {round}: durable events were lost");
        for (expected, record) in (1..).zip(store.iter()) {
            let record = record.unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(record.seq, Seq(expected), "round {round}: not a dense prefix");
        }
        survived = last.0;
        store.close().unwrap();
        assert!(run(data, &["verify"]).status.success(), "round {round}");
    }
    assert!(survived > 0);
}
