//! `fathom web search` and `fathom web fetch` through the gateway.

use crate::{run, stderr, stdout};

#[test]
fn search_and_fetch_against_a_running_sandbox_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut server, addr) = crate::spawn_sandbox(dir.path(), "5", "150");

    let out = run(&data, &["web", "search", "--sandbox", &addr, "founded company", "born"]);
    let text = stdout(&out);
    let url = text
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .map(str::to_string)
        .unwrap_or_default();
    let fetched = run(&data, &["web", "fetch", "--sandbox", &addr, &url]);
    let refused = run(
        &data,
        &["web", "fetch", "--sandbox", &addr, "http://169.254.169.254/latest/"],
    );
    let tail = run(&data, &["log", "tail", "--kind", "web_exchange", "-n", "100"]);
    // A command that asks for another world than the running sandbox's is
    // refused rather than served wrong answers; the same world is used.
    let other = run(
        &data,
        &["web", "search", "--sandbox", &addr, "--sandbox-seed", "11", "born"],
    );
    let same = run(
        &data,
        &[
            "web",
            "search",
            "--sandbox",
            &addr,
            "--sandbox-seed",
            "5",
            "--sandbox-entities",
            "150",
            "--no-record",
            "born",
        ],
    );
    server.kill().unwrap();
    server.wait().unwrap();

    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.starts_with("## Results for \"founded company\"\n\n[1] "), "{text}");
    assert!(text.contains("## Results for \"born\""), "{text}");
    assert!(url.starts_with("http://127.0.0.1:"), "{text}");
    assert!(stderr(&out).contains("recorded as run r-1"), "{}", stderr(&out));

    assert!(fetched.status.success(), "{}", stderr(&fetched));
    let page = stdout(&fetched);
    assert!(page.starts_with("# "), "{page}");
    assert!(
        !page.contains("<") && !page.contains("Log in"),
        "chrome is gone: {page}"
    );

    assert!(!other.status.success());
    assert!(
        stderr(&other).contains("serves another world (seed 5, 150 entities) than this command needs (seed 11"),
        "{}",
        stderr(&other)
    );
    assert!(same.status.success(), "{}", stderr(&same));

    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("169.254.169.254 is an internal address"),
        "{}",
        stderr(&refused)
    );

    let exchanges: Vec<serde_json::Value> = stdout(&tail)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        exchanges.len(),
        4,
        "two searches, one fetch, and the refused fetch (which never left, recorded so a replay refuses it too)"
    );
    assert_eq!(exchanges[3]["attempt"], 0, "refused before any attempt");
    assert_eq!(exchanges[3]["status"], 0);
    assert!(
        exchanges[3]["error"]
            .as_str()
            .unwrap()
            .contains("169.254.169.254 is an internal address"),
        "{}",
        exchanges[3]
    );
    assert_eq!(exchanges[0]["request_kind"], "search");
    assert_eq!(exchanges[0]["source"], "sandbox");
    assert_eq!(exchanges[2]["request_kind"], "fetch");
    assert_eq!(exchanges[2]["status"], 200);
    assert!(exchanges[2]["body"]["digest"].as_str().unwrap().len() == 64);
}

#[test]
fn without_a_sandbox_running_one_is_started_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        &[
            "web",
            "search",
            "--sandbox",
            "127.0.0.1:0",
            "--sandbox-entities",
            "100",
            "--no-record",
            "capital",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("[1] "), "{}", stdout(&out));
    assert!(!dir.path().join("log").exists(), "--no-record writes nothing");
}
