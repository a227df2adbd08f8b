//! `fathom log …` and `fathom verify` from the outside.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use fathom_core::{Payload, Seq};
use fathom_store::{Options, Store};

use crate::{fathom, run, stderr, stdout};

#[test]
fn help_lists_the_commands_and_the_data_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["--help"]);
    assert!(out.status.success());
    let text = stdout(&out);
    for word in ["log", "verify", "--data", "FATHOM_DATA"] {
        assert!(text.contains(word), "help lacks {word}: {text}");
    }
    let out = run(dir.path(), &["log", "--help"]);
    for word in ["stats", "tail", "load"] {
        assert!(stdout(&out).contains(word));
    }
}

#[test]
fn commands_on_a_directory_without_a_log_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    for args in [&["log", "stats"][..], &["log", "tail"], &["verify"]] {
        let out = run(&missing, args);
        assert!(!out.status.success(), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains("holds no fathom log"), "{args:?}: {err}");
        assert!(err.contains("--data"), "{args:?}: {err}");
    }
    assert!(!missing.exists(), "a read command must not create the directory");
    let out = run(dir.path(), &["log", "tail", "--kind", "nope"]);
    assert!(stderr(&out).contains("unknown event kind 'nope'"), "{}", stderr(&out));
    let out = run(dir.path(), &["log", "tail", "--run", "e-1"]);
    assert!(stderr(&out).contains("not a valid run id"), "{}", stderr(&out));
    // An operating-system error is said once, not once per layer.
    let out = run(dir.path(), &["model", "info", missing.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("No such file or directory"),
        "{err}"
    );
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

#[test]
fn load_then_stats_tail_and_verify_agree() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let out = run(
        data,
        // No snapshots, so the counts are the load's own events.
        &[
            "--snapshot-every",
            "off",
            "log",
            "load",
            "--events",
            "300",
            "--batch",
            "64",
            "--body-max",
            "40000",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("appended 300 events"), "{}", stdout(&out));
    assert!(stdout(&out).contains("verify ok: 302 events"), "{}", stdout(&out));

    let out = run(data, &["log", "stats", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["events"], 302);
    assert_eq!(stats["by_kind"]["turn_generated"]["events"], 200);
    assert_eq!(stats["by_kind"]["web_exchange"]["events"], 100);
    assert_eq!(stats["by_run"]["r-1"]["events"], 302);
    assert!(stats["dedupe_ratio"].as_f64().unwrap() >= 1.0);
    let text = stdout(&run(data, &["log", "stats"]));
    assert!(text.contains("dedupe ratio"), "{text}");

    let out = run(data, &["log", "tail", "-n", "3"]);
    let lines: Vec<serde_json::Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["seq"], 302);
    assert_eq!(lines[2]["kind"], "run_finished");
    let out = run(data, &["log", "tail", "--kind", "run_started", "--run", "r-1"]);
    let lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("\"seq\":1,"));

    let out = run(data, &["verify"]);
    assert!(out.status.success());
    assert!(stdout(&out).starts_with("ok: 302 events"), "{}", stdout(&out));
}

#[test]
fn a_second_process_is_told_which_process_holds_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let mut writer = fathom(data)
        .args(["log", "load", "--events", "0", "--print-acks", "--body-max", "20000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(writer.stdout.take().unwrap()).lines();
    assert!(lines.next().unwrap().unwrap().starts_with("ack "));
    let out = run(data, &["log", "stats"]);
    // Only its owner may read who holds the directory (and how).
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(data.join("LOCK")).unwrap().permissions());
    writer.kill().unwrap();
    writer.wait().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("is in use by another fathom process"), "{err}");
    assert!(err.contains(&format!("pid {}", writer.id())), "{err}");
    assert!(err.contains("log load"), "the holder's command is named: {err}");
    assert_eq!(mode & 0o777, 0o600, "LOCK mode {mode:o}");
}

#[test]
fn verify_names_a_flipped_frame_and_blob_while_other_events_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let out = run(
        data,
        &[
            "--snapshot-every",
            "off",
            "log",
            "load",
            "--events",
            "120",
            "--batch",
            "16",
            "--body-max",
            "30000",
            "--repeat",
            "0",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // Flip one byte inside a stored frame and one inside a stored blob.
    let (bad_seq, bad_blob) = {
        let store = Store::open(data, Options::default()).unwrap();
        let bad_seq = Seq(57);
        let mut frame = store.raw_event(bad_seq).unwrap().unwrap();
        let at = frame.len() - 10;
        frame[at] ^= 0x01;
        store.inject_raw_event(bad_seq, &frame).unwrap();
        let blob = store
            .iter()
            .filter_map(Result::ok)
            .find_map(|r| match r.event.payload {
                Payload::WebExchange(w) if r.seq.0 > 80 => w.body,
                _ => None,
            })
            .unwrap();
        let mut raw = store.raw_blob(&blob.digest).unwrap().unwrap();
        let at = raw.len() / 2;
        raw[at] ^= 0x80;
        store.inject_raw_blob(&blob.digest, &raw).unwrap();
        store.close().unwrap();
        (bad_seq, blob.digest)
    };

    let out = run(data, &["verify"]);
    assert_eq!(out.status.code(), Some(1), "verify must fail");
    let report = stdout(&out);
    assert!(report.contains("first bad sequence number: 57"), "{report}");
    assert!(
        report.contains(&format!("event {bad_seq} is corrupt: checksum mismatch")),
        "{report}"
    );
    assert!(
        report.contains(&format!("blob {} is corrupt", bad_blob.to_hex())),
        "{report}"
    );
    assert!(report.contains("FAILED: 2 problem(s)"), "{report}");

    // Every other event is still readable.
    let out = run(data, &["log", "tail", "--from", "1"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out).lines().count(), 121, "122 events less the corrupt one");
    assert!(stderr(&out).contains("event 57 is corrupt"), "{}", stderr(&out));
}

#[test]
fn a_reader_that_stops_early_ends_the_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    crate::snapshot::load(dir.path(), "32");
    // Far more output than a pipe holds; the reader takes one line and
    // goes, as `| head -1` does.
    for args in [
        &["log", "tail", "-n", "100000"][..],
        &["sql", "--format", "csv", "SELECT * FROM events"][..],
    ] {
        let mut child = fathom(dir.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(!first.is_empty(), "{args:?}");
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(141), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "{args:?}: no panic, no error");
    }
}

#[test]
fn verify_repair_rebuilds_a_lost_index_from_the_segments() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let out = run(
        data,
        &[
            "--snapshot-every",
            "off",
            "log",
            "load",
            "--events",
            "64",
            "--batch",
            "16",
            "--no-verify",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let before = stdout(&run(data, &["log", "tail", "--from", "1"]));
    assert_eq!(before.lines().count(), 66, "{before}");
    // sled's files are lost: the log cannot be opened without them.
    std::fs::remove_dir_all(data.join("log")).unwrap();
    let out = run(data, &["verify", "--repair"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let report = stdout(&out);
    assert!(
        report.contains("repaired: rebuilt the index from the segments"),
        "{report}"
    );
    assert!(report.contains("the log ends at event 66"), "{report}");
    assert!(report.contains("ok: 66 events"), "{report}");
    assert_eq!(stdout(&run(data, &["log", "tail", "--from", "1"])), before);
}
