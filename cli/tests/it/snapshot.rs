//! `fathom snapshot` and `fathom sql` end to end: a snapshotter killed at
//! random moments never loses or doubles a row, and the SQL command's
//! formats, errors and interactive prompt behave.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use fathom_core::SeededRng;

use crate::{fathom, run, stderr, stdout};

/// Each table and the event kinds whose events make its rows.
const TABLES: &[(&str, &[&str])] = &[
    ("runs", &["run_started"]),
    ("questions", &["question_sampled"]),
    ("episodes", &["episode_finished"]),
    ("turns", &["turn_generated", "tool_result"]),
    ("tool_calls", &["tool_called"]),
    ("web_requests", &["web_exchange"]),
    ("segments", &["page_segment_read"]),
    ("behaviours", &["behaviour_tagged"]),
    ("updates", &["gradient_update"]),
    ("checkpoints", &["checkpoint_saved"]),
    ("evals", &["eval_result"]),
];

fn log_counts(data: &std::path::Path) -> (BTreeMap<String, u64>, u64) {
    let out = run(data, &["log", "stats", "--json"]);
    assert!(out.status.success(), "log stats: {}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    let mut counts = BTreeMap::new();
    let mut total = 0;
    for (kind, k) in v["by_kind"].as_object().expect("by_kind") {
        let n = k["events"].as_u64().expect("events");
        counts.insert(kind.clone(), n);
        total += n;
    }
    (counts, total)
}

pub(crate) fn sql_json(data: &std::path::Path, extra: &[&str], query: &str) -> serde_json::Value {
    let out = fathom(data)
        .args(["sql", "--format", "json"])
        .args(extra)
        .arg(query)
        .output()
        .expect("fathom sql runs");
    assert!(out.status.success(), "sql {query}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("JSON from sql ({e}): {}", stdout(&out)))
}

/// Counts and duplicate keys of every table, in one query.
pub(crate) fn table_counts(data: &std::path::Path, extra: &[&str]) -> BTreeMap<String, (u64, u64)> {
    let mut parts: Vec<String> = TABLES
        .iter()
        .map(|(t, _)| format!("SELECT '{t}' AS t, count(*) AS n, count(*) - count(DISTINCT seq) AS dup FROM {t}"))
        .collect();
    parts.push("SELECT 'events' AS t, count(*) AS n, count(*) - count(DISTINCT seq) AS dup FROM events".into());
    let v = sql_json(data, extra, &parts.join(" UNION ALL "));
    v.as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["t"].as_str().expect("t").to_string(),
                (r["n"].as_u64().expect("n"), r["dup"].as_u64().expect("dup")),
            )
        })
        .collect()
}

fn expected(counts: &BTreeMap<String, u64>, kinds: &[&str]) -> u64 {
    kinds.iter().map(|k| counts.get(*k).copied().unwrap_or(0)).sum()
}

fn check_consistent(data: &std::path::Path, when: &str) {
    let (log, total) = log_counts(data);
    let tables = table_counts(data, &[]);
    for (table, kinds) in TABLES {
        let (n, dup) = tables[*table];
        assert_eq!(dup, 0, "{when}: duplicate keys in {table}");
        assert_eq!(
            n,
            expected(&log, kinds),
            "{when}: rows of {table} against {kinds:?} events in the log"
        );
    }
    assert_eq!(tables["events"], (total, 0), "{when}: the events table");
}

pub(crate) fn load(data: &std::path::Path, episodes: &str) {
    let out = run(
        data,
        &["--snapshot-every", "off", "log", "load", "--episodes", episodes],
    );
    assert!(out.status.success(), "log load: {}", stderr(&out));
}

#[test]
fn a_snapshotter_killed_at_random_moments_never_loses_or_doubles_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    load(data, "640");
    let mut rng = SeededRng::new(20261122);
    let (mut mid_run_kills, mut iterations) = (0, 0);
    while mid_run_kills < 20 {
        iterations += 1;
        assert!(
            iterations < 80,
            "only {mid_run_kills} kills landed mid-snapshot in {iterations} tries"
        );
        let mut child = fathom(data)
            .args(["snapshot", "--window", "300", "--compact-min-files", "4"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("fathom snapshot starts");
        std::thread::sleep(Duration::from_millis(20 + rng.below(2500)));
        let running = child.try_wait().expect("try_wait").is_none();
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait");
        if running {
            mid_run_kills += 1;
        } else {
            assert!(status.success(), "an unkilled snapshot succeeds");
            // Caught up: give the next snapshot work to be killed in.
            load(data, "256");
        }
        check_consistent(data, &format!("after kill {iterations} (mid-run: {running})"));
    }

    // Finished cleanly, the files alone hold every row, and nothing but
    // the manifest's files is left in the table directories.
    let out = run(data, &["snapshot"]);
    assert!(out.status.success(), "final snapshot: {}", stderr(&out));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("snapshots/manifest.json")).unwrap()).unwrap();
    let upto = manifest["upto_seq"].as_u64().unwrap();
    let (log, _) = log_counts(data);
    let files_only = table_counts(data, &["--snapshots-only"]);
    for (table, kinds) in TABLES {
        assert_eq!(
            files_only[*table],
            (expected(&log, kinds), 0),
            "snapshot files of {table}"
        );
    }
    assert_eq!(
        files_only["events"],
        (upto, 0),
        "the events files hold events 1..={upto}"
    );
    let named = manifest_paths(&data.join("snapshots"));
    for entry in walk(&data.join("snapshots")) {
        let rel = entry
            .strip_prefix(data.join("snapshots"))
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if rel.ends_with(".parquet") {
            assert!(
                named.contains(&rel),
                "{rel} is in a table directory but not in the manifest"
            );
        }
    }
}

/// The paths the manifest in snapshot root `root` names.
pub(crate) fn manifest_paths(root: &std::path::Path) -> std::collections::BTreeSet<String> {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("manifest.json")).unwrap()).unwrap();
    manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect()
}

/// Every file under `dir`.
pub(crate) fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn sql_formats_errors_and_the_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    load(data, "128");

    // Nothing snapshotted yet: the rows come from the log.
    let v = sql_json(data, &[], "SELECT count(*) AS n, round(avg(f1), 6) AS f1 FROM episodes");
    assert_eq!(v[0]["n"], 128);
    let out = run(data, &["snapshot"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("episodes       +128 rows"), "{}", stdout(&out));
    let after = sql_json(
        data,
        &["--snapshots-only"],
        "SELECT count(*) AS n, round(avg(f1), 6) AS f1 FROM episodes",
    );
    assert_eq!(after, v, "the files give what the log gave");

    let out = run(
        data,
        &[
            "sql",
            "--format",
            "csv",
            "SELECT step, episodes FROM step_metrics ORDER BY step",
        ],
    );
    assert!(out.status.success());
    assert_eq!(stdout(&out), "step,episodes\n1,128\n");
    // List and struct columns as JSON text (as DuckDB writes them); null
    // stays an empty cell.
    let out = run(
        data,
        &[
            "sql",
            "--format",
            "csv",
            "SELECT ground_truth, [1, 2] AS l, {'a': 1, 'b': ['x']} AS s, CAST(NULL AS INT[]) AS n FROM episodes LIMIT 1",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let csv = stdout(&out);
    let row = csv.lines().nth(1).unwrap();
    assert!(row.starts_with("\"[\"\""), "{csv}");
    assert!(
        row.ends_with(",\"[1,2]\",\"{\"\"a\"\":1,\"\"b\"\":[\"\"x\"\"]}\","),
        "{csv}"
    );

    let out = run(data, &["sql", "SELECT run_id, status FROM runs"]);
    let text = stdout(&out);
    assert!(
        text.contains("| r-1    | completed |") && text.contains("(1 row)"),
        "{text}"
    );

    let out = run(data, &["sql", "SELECT rewrd FROM episodes"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("No field named rewrd") && err.contains("episodes.reward"),
        "{err}"
    );

    let empty = tempfile::tempdir().unwrap();
    let out = run(&empty.path().join("typo"), &["sql", "SELECT 1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("holds no fathom log or snapshots"),
        "{}",
        stderr(&out)
    );

    let out = run(data, &["sql", "DELETE FROM episodes"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("read-only"), "{}", stderr(&out));

    // The prompt: statements across lines, dot-commands, history kept.
    let mut child = fathom(data)
        .arg("sql")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b".tables\nSELECT count(*) AS n\n  FROM episodes;\n.format csv\nSELECT 41 + 1 AS answer;\n.schema nope\n.quit\n")
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = stdout(&out);
    assert!(text.contains("step_metrics"), "{text}");
    assert!(text.contains("| 128 |"), "{text}");
    assert!(text.contains("answer\n42"), "{text}");
    assert!(stderr(&out).contains("no table 'nope'"), "{}", stderr(&out));
    let history = std::fs::read_to_string(data.join("sql_history")).unwrap();
    assert!(history.contains("SELECT 41 + 1 AS answer;"), "{history}");
}

#[test]
fn while_a_writer_holds_the_log_sql_gets_its_newest_events_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    load(data, "128");
    assert!(run(data, &["snapshot"]).status.success());
    // A writer that keeps the log open and keeps appending.
    let (mut writer, mut acks) = crate::spawn_writer(data);
    let mut acked = 0u64;
    for _ in 0..5 {
        use std::io::BufRead;
        let mut line = String::new();
        acks.read_line(&mut line).unwrap();
        acked = line
            .split_whitespace()
            .nth(2)
            .and_then(|n| n.parse().ok())
            .expect("ack FIRST LAST");
    }
    let v = sql_json(
        data,
        &[],
        "SELECT (SELECT count(*) FROM episodes) AS episodes, (SELECT max(seq) FROM events) AS last, \
         (SELECT count(*) - count(DISTINCT seq) FROM events) AS dup",
    );
    assert_eq!(v[0]["episodes"], 128);
    assert_eq!(v[0]["dup"], 0);
    let last = v[0]["last"].as_u64().unwrap();
    assert!(
        last >= acked,
        "every acknowledged event is visible: saw up to {last}, {acked} acknowledged"
    );

    // A writer whose endpoint is gone: the snapshots, and a note saying so.
    std::fs::remove_file(data.join("tail.sock")).unwrap();
    let out = run(data, &["sql", "--format", "json", "SELECT count(*) AS n FROM episodes"]);
    writer.kill().unwrap();
    writer.wait().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), r#"[{"n":128}]"#);
    let err = stderr(&out);
    assert!(
        err.contains("held by another fathom process") && err.contains("showing the snapshots"),
        "{err}"
    );
    // The raw load numbered its episodes and requests after the ones the
    // log had given out: no id belongs to two runs.
    let v = sql_json(
        data,
        &[],
        "SELECT (SELECT count(DISTINCT run_id) FROM turns) AS runs, \
         (SELECT count(*) FROM (SELECT episode_id FROM turns GROUP BY episode_id HAVING count(DISTINCT run_id) > 1)) AS shared_episodes, \
         (SELECT count(*) FROM (SELECT request_id FROM web_requests GROUP BY request_id HAVING count(DISTINCT run_id) > 1)) AS shared_requests",
    );
    assert_eq!(v[0]["runs"], 2, "{v}");
    assert_eq!(v[0]["shared_episodes"], 0, "{v}");
    assert_eq!(v[0]["shared_requests"], 0, "{v}");
}

#[test]
fn rebuild_agrees_with_fresh_snapshots_and_names_the_table_of_an_altered_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    crate::replay::scripted_run(&data);
    let out = run(&data, &["rebuild"]);
    assert!(
        !out.status.success() && stderr(&out).contains("run 'fathom snapshot' first"),
        "{}",
        stderr(&out)
    );
    let out = run(&data, &["snapshot", "--window", "40"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let kept = dir.path().join("rebuilt");
    let out = run(&data, &["rebuild", "--out", kept.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.contains("the snapshots agree with the log"), "{text}");
    assert_eq!(text.lines().filter(|l| l.ends_with("  same")).count(), 12, "{text}");
    assert!(kept.join("manifest.json").exists() && kept.join("episodes").is_dir());
    assert!(
        !std::fs::read_dir(&data)
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().starts_with("rebuild-"))
    );

    // One episodes file copied over the next: rows lost, others twice.
    let mut parts: Vec<_> = std::fs::read_dir(data.join("snapshots/episodes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    parts.sort();
    assert!(parts.len() >= 2, "{parts:?}");
    std::fs::copy(&parts[0], &parts[1]).unwrap();
    let out = run(&data, &["rebuild"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    let line = text.lines().find(|l| l.starts_with("episodes ")).unwrap();
    assert!(
        line.contains("DIFFERS at seq ") && line.contains("altered since commit"),
        "{text}"
    );
    assert_eq!(text.lines().filter(|l| l.contains("DIFFERS")).count(), 1, "{text}");
    assert!(text.contains("1 table(s) disagree"), "{text}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn damaged_snapshots_and_a_manifest_that_disagrees_with_the_log_are_refused_not_answered() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    load(&good, "64");
    let out = run(&good, &["snapshot"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&good, &["verify"]);
    assert!(
        out.status.success() && stdout(&out).contains("snapshot file(s) match their manifest"),
        "{}",
        stdout(&out)
    );
    let episodes = sql_json(&good, &[], "SELECT count(*) AS n, min(n_turns) AS t FROM episodes");
    assert!(episodes[0]["n"].as_u64().unwrap() >= 64, "{episodes}");

    // Each damage on a fresh copy: SQL refuses (rather than answer from
    // the damaged files), and verify names it.
    let data = dir.path().join("data");
    let damaged = |damage: &dyn Fn(&std::path::Path)| {
        if data.exists() {
            std::fs::remove_dir_all(&data).unwrap();
        }
        copy_dir(&good, &data);
        damage(&data.join("snapshots"));
    };
    let part = |root: &std::path::Path, table: &str| {
        std::fs::read_dir(root.join(table))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "parquet"))
            .unwrap()
    };
    let edit_manifest = |root: &std::path::Path, edit: &dyn Fn(&mut serde_json::Value)| {
        let path = root.join("manifest.json");
        let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut m);
        std::fs::write(&path, m.to_string()).unwrap();
    };
    let refused = |query: &str, wanted: &[&str]| {
        let out = run(&data, &["sql", query]);
        let text = stderr(&out);
        assert!(
            !out.status.success(),
            "answered from damaged snapshots: {}",
            stdout(&out)
        );
        for w in wanted {
            assert!(text.contains(w), "{w:?} not in: {text}");
        }
        assert!(!text.contains("internal error"), "{text}");
        let out = run(&data, &["verify"]);
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        assert!(stdout(&out).contains(wanted[0]), "{}", stdout(&out));
    };

    // One byte flipped in an episodes file.
    damaged(&|root| {
        let p = part(root, "episodes");
        let mut bytes = std::fs::read(&p).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(&p, bytes).unwrap();
    });
    refused(
        "SELECT min(n_turns) FROM episodes",
        &["has BLAKE3 digest", "episodes/part-", "run 'fathom snapshot'"],
    );
    // A file removed.
    damaged(&|root| std::fs::remove_file(part(root, "turns")).unwrap());
    refused("SELECT count(*) FROM turns", &["turns/part-", "is missing"]);
    // A manifest past the log's end: new events would never show, and the
    // snapshots must not be thrown away (they may be the only copy).
    damaged(&|root| {
        edit_manifest(root, &|m| {
            m["upto_seq"] = (m["upto_seq"].as_u64().unwrap() + 100_000).into()
        })
    });
    refused(
        "SELECT count(*) FROM episodes",
        &["but the log ends at event", "Keep the snapshots"],
    );
    for command in ["snapshot", "rebuild"] {
        let out = run(&data, &[command]);
        assert!(
            !out.status.success()
                && stderr(&out).contains("but the log ends at event")
                && stderr(&out).contains("Keep the snapshots"),
            "{command}: {}",
            stderr(&out)
        );
    }
    // A manifest behind its own files: a snapshot would count their events twice.
    damaged(&|root| edit_manifest(root, &|m| m["upto_seq"] = 10.into()));
    refused(
        "SELECT count(*) FROM episodes",
        &["holds events up to", "cover events up to 10"],
    );
    let out = run(&data, &["snapshot"]);
    assert!(
        !out.status.success() && stderr(&out).contains("cover events up to 10"),
        "{}",
        stderr(&out)
    );
    // A truncated manifest: damage, not a bug.
    damaged(&|root| {
        let path = root.join("manifest.json");
        let text = std::fs::read(&path).unwrap();
        std::fs::write(&path, &text[..text.len() / 2]).unwrap();
    });
    refused("SELECT count(*) FROM episodes", &["does not parse"]);

    // Undamaged, the same answers as before.
    damaged(&|_| {});
    assert_eq!(
        sql_json(&data, &[], "SELECT count(*) AS n, min(n_turns) AS t FROM episodes"),
        episodes
    );
}
