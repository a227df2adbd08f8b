//! `fathom eval` on a sandbox question set.

use crate::{run, stderr, stdout};

#[test]
fn eval_prints_the_table_and_records_the_results() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q.parquet");
    let out = run(
        dir.path(),
        &[
            "sandbox",
            "questions",
            "--seed",
            "4",
            "--entities",
            "300",
            "--count",
            "40",
            "--out",
            q.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // The file names its world (seed 4, 300 entities): asking for another
    // is refused, naming both, before any episode runs.
    let other = run(
        dir.path(),
        &["eval", "--questions", q.to_str().unwrap(), "--sandbox-seed", "5"],
    );
    assert!(!other.status.success());
    assert!(
        stderr(&other).contains("the sandbox world with seed 4 and 300 entities")
            && stderr(&other).contains("but the command asks for seed 5 ("),
        "{}",
        stderr(&other)
    );
    // Without flags the sandbox it starts is the file's world (the scores
    // below hold only there).
    let out = run(
        dir.path(),
        &["eval", "--questions", q.to_str().unwrap(), "--sandbox", "127.0.0.1:0"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    let f1_of = |name: &str| -> f64 {
        let line = table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} row: {table}"));
        line.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    assert!(f1_of("sandbox-1hop") >= 0.8, "{table}");
    assert!(f1_of("overall") > 0.5, "{table}");
    assert!(table.contains("\n1-hop "), "{table}");

    let stats = run(dir.path(), &["log", "stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["by_kind"]["episode_finished"]["events"], 40);
    assert!(stats["by_kind"]["eval_result"]["events"].as_u64().unwrap() >= 15);
    assert!(stats["by_kind"]["behaviour_tagged"]["events"].as_u64().unwrap() > 0);

    // The run was snapshotted as it ended; SQL sees each episode with its
    // question, and the per-hop F1 the command printed.
    assert!(
        stderr(&out).contains("snapshots cover events up to"),
        "{}",
        stderr(&out)
    );
    let sql = run(
        dir.path(),
        &[
            "sql",
            "--snapshots-only",
            "--format",
            "json",
            "SELECT count(*) AS n, count(question) AS with_question, count(DISTINCT data_source) AS sources, \
             avg(CASE WHEN hops = 1 THEN f1 END) AS f1_1hop FROM episodes",
        ],
    );
    assert!(sql.status.success(), "{}", stderr(&sql));
    let v: serde_json::Value = serde_json::from_slice(&sql.stdout).unwrap();
    assert_eq!(v[0]["n"], 40);
    assert_eq!(v[0]["with_question"], 40);
    assert!(v[0]["sources"].as_u64().unwrap() >= 2, "{v}");
    let printed = table.lines().find(|l| l.starts_with("1-hop")).unwrap();
    let printed: f64 = printed.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(
        (v[0]["f1_1hop"].as_f64().unwrap() - printed).abs() < 0.0006,
        "{v} vs {printed}"
    );

    let bad = run(
        dir.path(),
        &["eval", "--questions", q.to_str().unwrap(), "--policy", "gpt"],
    );
    assert!(stderr(&bad).contains("policy 'gpt' is not known"), "{}", stderr(&bad));
    let bad = run(
        dir.path(),
        &["eval", "--questions", q.to_str().unwrap(), "--web", "live"],
    );
    assert!(
        stderr(&bad).contains("--web live needs a search API"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn without_a_question_file_eval_generates_sandbox_questions() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        &[
            "eval",
            "--limit",
            "12",
            "--sandbox-entities",
            "200",
            "--sandbox-seed",
            "2",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    for row in ["sandbox-1hop", "sandbox-4hop", "overall", "4-hop"] {
        assert!(table.lines().any(|l| l.starts_with(row)), "no {row} row: {table}");
    }
    let overall = table.lines().find(|l| l.starts_with("overall")).unwrap();
    assert_eq!(overall.split_whitespace().nth(1), Some("12"), "{overall}");
    let bad = run(
        dir.path(),
        &["eval", "--web", "live", "--search-url", "http://127.0.0.1:9/search"],
    );
    assert!(
        stderr(&bad).contains("--web live needs --questions"),
        "{}",
        stderr(&bad)
    );
    // Values no evaluation can run with are refused before anything is
    // recorded (the scripted policy ignores sampling, but a typo is a typo).
    for (args, wanted) in [
        (&["--top-p", "5"][..], "--top-p must be above 0 and at most 1"),
        (&["--temperature", "inf"][..], "--temperature must be 0 (greedy) to 2"),
        (&["--concurrency", "0"][..], "--concurrency must be 1 to 4096"),
        (&["--limit", "0"][..], "--limit 0 would evaluate nothing"),
        (&["--max-turns", "0"][..], "--max-turns must be 1 to 64"),
    ] {
        let mut all = vec!["eval"];
        all.extend_from_slice(args);
        let bad = run(dir.path(), &all);
        assert!(!bad.status.success(), "{args:?} accepted");
        assert!(stderr(&bad).contains(wanted), "{args:?}: {}", stderr(&bad));
    }
    let out = run(
        dir.path(),
        &[
            "sql",
            "--format",
            "csv",
            "SELECT count(*) FROM runs WHERE status = 'running'",
        ],
    );
    assert_eq!(
        stdout(&out).lines().nth(1),
        Some("0"),
        "no run left running: {}",
        stderr(&out)
    );
}
