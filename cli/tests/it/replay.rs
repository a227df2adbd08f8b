//! `fathom replay`: recorded runs (scripted and candle) re-run identically
//! from the log with no web at all; tampering with a response body, a web
//! exchange or a checkpoint is caught at the right turn with the right
//! cause; a counterfactual re-run is recorded, linked and diffed.

use std::path::Path;

use fathom_core::event::WebKind;
use fathom_core::{Event, IdKind, Payload};
use fathom_store::{Options, Store};

use crate::train::{config, free_ports, tiny_model};
use crate::{run, stderr, stdout};

/// Copies the log of `from` into a new data directory `to`, event by event
/// with their blobs, through `edit` (which may change an event, or drop it
/// by returning `false`): the only way to tamper with an append-only log.
pub(crate) fn copy_log(from: &Path, to: &Path, mut edit: impl FnMut(&Store, &mut Event) -> bool) {
    let src = Store::open(from, Options::default()).unwrap();
    let dst = Store::open(to, Options::default()).unwrap();
    for record in src.iter() {
        let mut event = record.unwrap().event;
        let mut blobs = Vec::new();
        match &event.payload {
            Payload::WebExchange(w) => blobs.extend(w.body),
            Payload::TurnGenerated(t) => blobs.extend(t.token_ids.iter().chain(&t.logprobs).copied()),
            _ => {}
        }
        for b in blobs {
            dst.put_blob(&src.get_blob(&b.digest).unwrap().unwrap()).unwrap();
        }
        if edit(&dst, &mut event) {
            dst.append(&[event]).unwrap();
        }
    }
    // New ids (of re-runs) continue after the copied ones, as in the original.
    for kind in [IdKind::Run, IdKind::Episode, IdKind::Request] {
        dst.reserve_ids(kind, 1_000).unwrap();
    }
    dst.close().unwrap();
}

/// A scripted evaluation over an in-process sandbox that is gone once the
/// command ends.
pub(crate) fn scripted_run(data: &Path) {
    let out = run(
        data,
        &[
            "eval",
            "--limit",
            "6",
            "--sandbox-entities",
            "300",
            "--snapshot-every",
            "off",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

fn replay(data: &Path, args: &[&str]) -> (bool, String) {
    let mut all = vec!["replay", "--snapshot-every", "off"];
    all.extend_from_slice(args);
    let out = run(data, &all);
    let text = format!("{}{}", stdout(&out), stderr(&out));
    (out.status.success(), text)
}

/// The first browse (fetch with a body) of the log: its episode, turn and request id.
fn first_fetch(data: &Path) -> (String, u32, String) {
    let store = Store::open(data, Options::default()).unwrap();
    for record in store.iter() {
        if let Payload::WebExchange(w) = record.unwrap().event.payload
            && w.request_kind == WebKind::Fetch
            && w.status == 200
        {
            return (
                w.episode_id.unwrap().to_string(),
                w.turn.unwrap(),
                w.request_id.to_string(),
            );
        }
    }
    panic!("the scripted researcher browsed no page");
}

#[test]
fn a_scripted_run_replays_identically_and_tampered_web_records_are_caught_at_their_turn() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    scripted_run(&data);

    // Every episode, with the sandbox gone.
    let (ok, text) = replay(&data, &["--run", "r-1", "--check", "--jobs", "3"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("6 episode(s) re-run") && text.contains("identical   6"),
        "{text}"
    );
    assert!(text.contains("diverged    0"), "{text}");
    let (episode, turn, request) = first_fetch(&data);
    let (ok, text) = replay(&data, &["--episode", &episode, "--check"]);
    assert!(ok && text.contains(": identical:"), "{text}");

    // While another process writes the log, checks read it through that
    // writer's endpoint; a re-run, which would write, is refused.
    let mut writer = crate::hold_log(&data);
    let (ok, text) = replay(&data, &["--episode", &episode, "--check"]);
    let (run_ok, run_text) = replay(&data, &["--run", "r-1", "--check", "--jobs", "2"]);
    let (rerun_ok, rerun_text) = replay(&data, &["--episode", &episode, "--policy", "scripted"]);
    writer.kill().unwrap();
    writer.wait().unwrap();
    assert!(ok && text.contains(": identical:"), "{text}");
    assert!(
        text.contains("reading it through that process's read endpoint"),
        "{text}"
    );
    assert!(run_ok && run_text.contains("identical   6"), "{run_text}");
    assert!(
        !rerun_ok && rerun_text.contains("writes a new run into the log, which another fathom process holds"),
        "{rerun_text}"
    );

    // A recorded response body replaced by another page.
    let altered = dir.path().join("altered");
    copy_log(&data, &altered, |dst, e| {
        if let Payload::WebExchange(w) = &mut e.payload
            && w.request_id.to_string() == request
        {
            w.body = Some(
                dst.put_blob(b"<html><body><p>Nothing about anything here.</p></body></html>")
                    .unwrap(),
            );
        }
        true
    });
    let (ok, text) = replay(&altered, &["--episode", &episode, "--check"]);
    assert!(!ok, "a changed body must not replay identically: {text}");
    assert!(text.contains(&format!("DIVERGES at turn {turn}")), "{text}");
    assert!(
        text.contains("now gives another tool response") && text.contains(&request),
        "the cause names the recorded request: {text}"
    );

    // A web exchange removed.
    let removed = dir.path().join("removed");
    copy_log(
        &data,
        &removed,
        |_, e| !matches!(&e.payload, Payload::WebExchange(w) if w.request_id.to_string() == request),
    );
    let (ok, text) = replay(&removed, &["--episode", &episode, "--check"]);
    assert!(!ok, "{text}");
    assert!(text.contains(&format!("DIVERGES at turn {turn}")), "{text}");
    assert!(
        text.contains("a web request that was never recorded: GET http://"),
        "{text}"
    );
    // The other episodes of the run still replay.
    let (ok, text) = replay(&removed, &["--run", "r-1", "--check"]);
    assert!(
        !ok && text.contains("identical   5") && text.contains("diverged    1"),
        "{text}"
    );

    // A counterfactual re-run on a log missing a search: with the default
    // `--on-miss fail` the researcher sees an error; with `sandbox`, a
    // sandbox of the same world answers and the question is solved again.
    let (searched, search) = {
        let store = Store::open(data.as_path(), Options::default()).unwrap();
        store
            .iter()
            .find_map(|r| match r.unwrap().event.payload {
                Payload::WebExchange(w) if w.request_kind == WebKind::Search => {
                    Some((w.episode_id.unwrap().to_string(), w.request_id))
                }
                _ => None,
            })
            .unwrap()
    };
    let no_search = dir.path().join("no-search");
    copy_log(
        &data,
        &no_search,
        |_, e| !matches!(&e.payload, Payload::WebExchange(w) if w.request_id == search),
    );
    let (ok, text) = replay(&no_search, &["--episode", &searched, "--policy", "scripted"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("-> failed") && text.contains("first difference at turn 0"),
        "{text}"
    );
    let (ok, text) = replay(
        &no_search,
        &[
            "--episode",
            &searched,
            "--policy",
            "scripted",
            "--on-miss",
            "sandbox",
            "--sandbox",
            &format!("127.0.0.1:{}", free_ports()),
            "--sandbox-entities",
            "300",
        ],
    );
    assert!(ok, "{text}");
    assert!(text.contains("-> answered by the fallback web"), "{text}");
    let scores = text.lines().nth(1).unwrap();
    assert_eq!(scores.matches("reward 1.000").count(), 2, "both solved: {text}");

    // Bad requests.
    let (ok, text) = replay(&data, &["--episode", "e-999", "--check"]);
    assert!(!ok && text.contains("holds no episode e-999"), "{text}");
    let (ok, text) = replay(&data, &["--episode", &episode]);
    assert!(!ok && text.contains("--check"), "{text}");
    let (ok, text) = replay(&data, &["--episode", &episode, "--checkpoint", "1"]);
    assert!(!ok && text.contains("no training run behind it"), "{text}");
}

/// The id of the episode a counterfactual re-run recorded, from its report.
fn rerun_id(report: &str) -> String {
    let line = report
        .lines()
        .find(|l| l.starts_with("recorded as "))
        .expect("the re-run's id");
    line.split_whitespace().nth(2).unwrap().to_string()
}

/// A tiny training run of `steps` steps with a checkpoint every `every`,
/// recorded into `dir/data` (its sandbox gone once it ends).
fn trained(dir: &Path, steps: u32, every: u32) -> std::path::PathBuf {
    let model = tiny_model(dir);
    let cfg = config(dir, &model, "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("steps = 5", &format!("steps = {steps}"))
        .replace("every = 2", &format!("every = {every}"));
    std::fs::write(&cfg, text).unwrap();
    let data = dir.join("data");
    let sandbox = format!("127.0.0.1:{}", free_ports());
    let out = run(
        &data,
        &[
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--sandbox",
            &sandbox,
            "--sandbox-entities",
            "300",
            "--snapshot-every",
            "off",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    data
}

#[test]
fn a_candle_run_replays_identically_and_a_swapped_checkpoint_or_another_one_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let data = trained(dir.path(), 2, 1);

    // Every training episode (policy versions 0 and 1), and the evaluations
    // before and after (the starting weights, the checkpoint of step 2).
    for run_id in ["r-1", "r-2", "r-3"] {
        let (ok, text) = replay(&data, &["--run", run_id, "--check"]);
        assert!(ok, "{run_id}: {text}");
        assert!(text.contains("diverged    0"), "{text}");
    }
    let (_, text) = replay(&data, &["--run", "r-1", "--check"]);
    assert!(
        text.contains("8 episode(s) re-run") && text.contains("sampled token(s) compared"),
        "{text}"
    );

    // A counterfactual: an episode of step 1 with the weights after step 2.
    let out = run(
        &data,
        &[
            "sql",
            "--format",
            "csv",
            "SELECT episode_id FROM episodes WHERE run_id = 'r-1' AND step = 1 ORDER BY seq LIMIT 1",
        ],
    );
    let first = stdout(&out).lines().nth(1).expect("an episode of step 1").to_string();
    let (ok, text) = replay(&data, &["--episode", &first, "--checkpoint", "2", "--width", "100"]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("{first} (recorded)")) && text.contains("checkpoint of step 2 of r-1"),
        "{text}"
    );
    assert!(
        text.contains("first difference at turn 0") || text.contains("identical"),
        "{text}"
    );
    let rerun = rerun_id(&text);
    let out = run(
        &data,
        &[
            "sql",
            "--format",
            "csv",
            "SELECT episode_id, original_id, original_run_id, policy FROM replays",
        ],
    );
    let csv = stdout(&out);
    assert!(
        csv.contains(&format!("{rerun},{first},r-1,candle:")),
        "{csv}{}",
        stderr(&out)
    );
    assert!(csv.contains("step-000002"), "{csv}");
    // The re-run is itself a recorded episode that replays identically.
    let (ok, text) = replay(&data, &["--episode", &rerun, "--check"]);
    assert!(ok, "{text}");

    // The checkpoint of step 1 swapped for the one of step 2: the
    // episodes of step 2 (sampled with it) cannot be re-run as recorded.
    let ckpt = data.join("checkpoints/r-1");
    std::fs::copy(
        ckpt.join("step-000002/model.safetensors"),
        ckpt.join("step-000001/model.safetensors"),
    )
    .unwrap();
    let (ok, text) = replay(&data, &["--run", "r-1", "--check"]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("identical   4") && text.contains("diverged    4"),
        "{text}"
    );
    assert!(
        text.contains("checkpoint with another digest") && text.contains("step-000001"),
        "{text}"
    );
    assert!(text.contains("DIVERGES before the first turn"), "{text}");
}

#[test]
fn the_recorded_web_exports_as_warc_and_trajectories_as_chat_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    scripted_run(&data);
    let exchanges = {
        let store = Store::open(data.as_path(), Options::default()).unwrap();
        store
            .iter()
            .filter(|r| matches!(r.as_ref().unwrap().event.payload, Payload::WebExchange(_)))
            .count()
    };

    let warc = dir.path().join("web.warc");
    let out = run(&data, &["export", "--format", "warc", "--out", warc.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("{exchanges} request, {exchanges} response")),
        "{}",
        stdout(&out)
    );
    let bytes = std::fs::read(&warc).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.starts_with("WARC/1.1\r\nWARC-Type: warcinfo\r\n"),
        "{}",
        &text[..200]
    );
    assert_eq!(text.matches("\r\nWARC-Type: request\r\n").count(), exchanges);
    assert_eq!(text.matches("\r\nWARC-Type: response\r\n").count(), exchanges);
    assert_eq!(text.matches("WARC-Block-Digest: sha256:").count(), 2 * exchanges + 1);
    assert!(text.contains("WARC-Target-URI: http://127.0.0.1:") && text.contains("urn:fathom:search:serper?num="));
    assert!(text.contains("HTTP/1.1 200 OK\r\n") && text.contains("WARC-Fathom-Episode: e-"));
    // Every record's Content-Length is its block: walking the file by the
    // lengths lands exactly on each next record and on the end.
    let mut at = 0;
    let mut records = 0;
    while at < bytes.len() {
        let head_end = at + text[at..].find("\r\n\r\n").unwrap() + 4;
        let head = &text[at..head_end];
        assert!(
            head.starts_with("WARC/1.1\r\n"),
            "record {records} at byte {at}: {head}"
        );
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(&bytes[head_end + len..head_end + len + 4], b"\r\n\r\n");
        at = head_end + len + 4;
        records += 1;
    }
    assert_eq!(records, 2 * exchanges + 1);

    let jsonl = dir.path().join("episodes.jsonl");
    let out = run(
        &data,
        &["export", "--format", "jsonl", "--out", jsonl.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    for l in &lines {
        let messages = l["messages"].as_array().unwrap();
        assert_eq!(messages[0]["role"], "system");
        assert!(
            messages[0]["content"].as_str().unwrap().contains("web_search"),
            "tool schemas included"
        );
        assert_eq!(messages[1]["content"], l["question"]);
        let roles: Vec<&str> = messages[2..].iter().map(|m| m["role"].as_str().unwrap()).collect();
        assert!(roles.iter().step_by(2).all(|r| *r == "assistant"), "{roles:?}");
        assert!(
            messages[2..]
                .iter()
                .skip(1)
                .step_by(2)
                .all(|m| m["content"].as_str().unwrap().starts_with("<tool_response>")),
            "tool responses as the policy saw them"
        );
        assert_eq!(
            l["n_turns"].as_u64().unwrap() as usize,
            roles.iter().filter(|r| **r == "assistant").count()
        );
        assert!(l["reward"].is_number() && l["episode_id"].as_str().unwrap().starts_with("e-"));
    }
    let solved = lines.iter().filter(|l| l["reward"] == 1.0).count();
    let out = run(
        &data,
        &[
            "export",
            "--format",
            "jsonl",
            "--min-reward",
            "1",
            "--out",
            jsonl.to_str().unwrap(),
        ],
    );
    assert!(
        stdout(&out).contains(&format!("wrote {solved} episode(s)")),
        "{}",
        stdout(&out)
    );

    // Bad requests lose nothing and say what to do.
    let out = run(
        &data,
        &[
            "export",
            "--format",
            "warc",
            "--run",
            "r-9",
            "--out",
            warc.to_str().unwrap(),
        ],
    );
    assert!(
        !out.status.success() && stderr(&out).contains("holds no run r-9"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&warc).unwrap(), bytes, "the earlier export is untouched");
    let out = run(
        &data,
        &[
            "export",
            "--format",
            "warc",
            "--min-reward",
            "1",
            "--out",
            warc.to_str().unwrap(),
        ],
    );
    assert!(
        !out.status.success() && stderr(&out).contains("--format jsonl"),
        "{}",
        stderr(&out)
    );
}

/// The first episode of `step` of run `run`.
fn episode_of_step(data: &Path, run_id: &str, step: u64) -> String {
    let out = run(
        data,
        &[
            "sql",
            "--format",
            "csv",
            &format!(
                "SELECT episode_id FROM episodes WHERE run_id = '{run_id}' AND step = {step} ORDER BY seq LIMIT 1"
            ),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
        .lines()
        .nth(1)
        .unwrap_or_else(|| panic!("no episode of step {step}"))
        .to_string()
}

#[test]
fn every_training_episode_replays_whatever_checkpoint_every_was_and_any_step_materializes() {
    let dir = tempfile::tempdir().unwrap();
    let data = trained(dir.path(), 5, 3);
    let kept = data.join("checkpoints/r-1");
    let steps: Vec<bool> = (1..=5).map(|s| kept.join(format!("step-{s:06}")).exists()).collect();
    assert_eq!(
        steps,
        [false, false, true, false, true],
        "checkpoints of steps 3 and 5 only"
    );

    // Every episode of the five steps, though the weights of steps 1, 2
    // and 4 (behind the episodes of steps 2, 3 and 5) were never kept.
    let (ok, text) = replay(&data, &["--run", "r-1", "--check"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("20 episode(s) re-run") && text.contains("identical   20"),
        "{text}"
    );
    // The verdict says where the weights came from.
    let step3 = episode_of_step(&data, "r-1", 3);
    let (ok, text) = replay(&data, &["--episode", &step3, "--check"]);
    assert!(ok && text.contains(": identical:"), "{text}");
    assert!(
        text.contains("the weights of r-1 after step 2 rebuilt: the starting weights + 2 updates"),
        "{text}"
    );
    let step5 = episode_of_step(&data, "r-1", 5);
    let (ok, text) = replay(&data, &["--episode", &step5, "--check"]);
    assert!(
        ok && text.contains("rebuilt: checkpoint of step 3 + 1 update"),
        "{text}"
    );

    // A counterfactual with the weights after step 4, which were never
    // kept: recorded, and itself replayable (its weights rebuilt again).
    let (ok, text) = replay(&data, &["--episode", &step3, "--checkpoint", "4"]);
    assert!(
        ok && text.contains("after step 4 rebuilt: checkpoint of step 3 + 1 update"),
        "{text}"
    );
    let rerun = rerun_id(&text);
    let (ok, text) = replay(&data, &["--episode", &rerun, "--check"]);
    assert!(ok && text.contains(": identical:"), "{text}");
    let (ok, text) = replay(&data, &["--episode", &step3, "--checkpoint", "9"]);
    assert!(!ok && text.contains("run r-1 completed 5 step(s)"), "{text}");

    // The weights after step 3, rebuilt with its checkpoint moved away,
    // equal that checkpoint byte for byte, and evaluate as a model.
    let moved = dir.path().join("step-3-kept");
    std::fs::rename(kept.join("step-000003"), &moved).unwrap();
    let m3 = dir.path().join("m3");
    let materialize = |data: &Path, step: &str, out: &Path| {
        run(
            data,
            &[
                "checkpoint",
                "materialize",
                "--run",
                "r-1",
                "--step",
                step,
                "--out",
                out.to_str().unwrap(),
            ],
        )
    };
    let out = materialize(&data, "3", &m3);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("from the starting weights + 3 updates"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        std::fs::read(m3.join("model.safetensors")).unwrap(),
        std::fs::read(moved.join("model.safetensors")).unwrap(),
        "the rebuilt weights are the kept ones, byte for byte"
    );
    for file in ["config.json", "tokenizer.json"] {
        assert!(m3.join(file).exists(), "{file}");
    }
    let out = run(
        &dir.path().join("eval-data"),
        &[
            "eval",
            "--policy",
            &format!("candle:{}", m3.display()),
            "--limit",
            "1",
            "--max-turns",
            "2",
            "--max-turn-tokens",
            "16",
            "--sandbox-entities",
            "300",
            "--snapshot-every",
            "off",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // Refused: an existing directory, a step the run never reached, a run
    // that is not a training run.
    let out = materialize(&data, "2", &m3);
    assert!(
        !out.status.success() && stderr(&out).contains("already exists"),
        "{}",
        stderr(&out)
    );
    let out = materialize(&data, "6", &dir.path().join("m6"));
    assert!(
        !out.status.success() && stderr(&out).contains("choose a step from 0 to 5"),
        "{}",
        stderr(&out)
    );
    let out = run(
        &data,
        &["checkpoint", "materialize", "--run", "r-2", "--step", "1", "--out", "m"],
    );
    assert!(
        !out.status.success() && stderr(&out).contains("run r-2 is not a training run"),
        "{}",
        stderr(&out)
    );

    // One logged update altered by one bit: the rebuild stops at that
    // step and names what the log recorded and what was recomputed.
    let tampered = dir.path().join("tampered");
    copy_log(&data, &tampered, |_, e| {
        if let Payload::GradientUpdate(u) = &mut e.payload
            && u.step == 2
        {
            u.loss = f64::from_bits(u.loss.to_bits() ^ 1);
        }
        true
    });
    let (ok, text) = replay(&tampered, &["--episode", &step3, "--check"]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("the weights could not be rebuilt from the log: recomputing step 2's update")
            && text.contains("but the log recorded"),
        "{text}"
    );
    let out = materialize(&tampered, "2", &dir.path().join("m2"));
    assert!(
        !out.status.success() && stderr(&out).contains("recomputing step 2's update"),
        "{}",
        stderr(&out)
    );
    // Step 1 is before the altered value, and rebuilds.
    let out = materialize(&tampered, "1", &dir.path().join("m1"));
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn readers_share_the_log_and_a_writer_that_starts_meanwhile_waits_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    scripted_run(&data);
    let (episode, _, request) = first_fetch(&data);
    let mut serve = crate::fathom(&data)
        .args(["serve", "--addr", "127.0.0.1:0"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(serve.stderr.take().unwrap()), &mut line).unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    // Parallel loads of a recorded page (each reads a blob from the log),
    // while a writer starts and appends.
    let path = format!("/episodes/{episode}/web/{request}");
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (addr, path) = (addr.clone(), path.clone());
            std::thread::spawn(move || {
                for _ in 0..6 {
                    let body = crate::http_get(&addr, &path);
                    assert!(!body.contains("in use by another fathom process"), "{body}");
                }
            })
        })
        .collect();
    let writer = run(&data, &["--snapshot-every", "off", "log", "load", "--events", "200"]);
    for r in readers {
        r.join().expect("every page load answered 200");
    }
    serve.kill().unwrap();
    serve.wait().unwrap();
    assert!(writer.status.success(), "the writer was refused: {}", stderr(&writer));
}
