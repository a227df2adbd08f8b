//! Scale-out: snapshots shipped to another location and read from there,
//! a catalogue of several data directories, and rollouts whose web
//! requests go through several `fathom gateway serve` processes.
//! (The S3 test against a real S3-compatible server is `scripts/interop_s3.py`,
//! run by `scripts/test`.)

use std::process::{Child, Stdio};
use std::time::Duration;

use crate::snapshot::{load, manifest_paths, sql_json, table_counts, walk};
use crate::{fathom, free_port, http_get, run, spawn_server, stderr, stdout};

#[test]
fn snapshots_shipped_to_a_location_read_the_same_and_a_catalogue_joins_data_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let remote = tmp.path().join("remote");
    let at = |name: &str| remote.join(name).to_string_lossy().into_owned();
    load(&a, "96");
    let out = run(
        &b,
        &[
            "--snapshot-every",
            "off",
            "log",
            "load",
            "--episodes",
            "160",
            "--seed",
            "9",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // Shipping copies every committed file, then the manifest; a second
    // snapshot ships only what it wrote (its predecessor's
    // `snapshot_committed` events, and the rewritten `runs`).
    for (data, name) in [(&a, "machine-a"), (&b, "machine-b")] {
        let out = run(data, &["--snapshots", &at(name), "snapshot"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(
            text.contains("shipped: ") && !text.contains("shipped: 0 snapshot"),
            "{text}"
        );
        let again = stdout(&run(data, &["--snapshots", &at(name), "snapshot"]));
        assert!(again.contains("shipped: 2 snapshot file(s)"), "{again}");
        assert_eq!(
            std::fs::read(data.join("snapshots/manifest.json")).unwrap(),
            std::fs::read(remote.join(name).join("manifest.json")).unwrap(),
            "the remote manifest is the local one"
        );
    }
    // Compaction replaces files: the remote copy follows, stale objects go.
    let out = run(
        &a,
        &[
            "log",
            "load",
            "--episodes",
            "32",
            "--seed",
            "3",
            "--snapshot-every",
            "off",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(
        &a,
        &["--snapshots", &at("machine-a"), "snapshot", "--compact-min-files", "2"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let named = manifest_paths(&remote.join("machine-a"));
    let present: std::collections::BTreeSet<String> = walk(&remote.join("machine-a"))
        .iter()
        .filter_map(|p| {
            p.strip_prefix(remote.join("machine-a"))
                .ok()?
                .to_str()
                .map(str::to_string)
        })
        .filter(|rel| rel != "manifest.json")
        .collect();
    assert_eq!(present, named, "the remote copy holds exactly the manifest's files");

    // Read from the location alone (no data directory): the same tables.
    let nowhere = tmp.path().join("nowhere");
    let local = table_counts(&a, &["--snapshots-only"]);
    let shipped = table_counts(&nowhere, &["--snapshots", &at("machine-a")]);
    assert_eq!(local, shipped);
    assert!(local["episodes"].0 >= 128, "{local:?}");

    // The catalogue: both machines side by side, `origin` first, views per origin.
    let cat = remote.to_string_lossy().into_owned();
    let v = sql_json(
        &nowhere,
        &["--catalog", &cat],
        "SELECT origin, count(*) AS n FROM episodes GROUP BY origin ORDER BY origin",
    );
    let na = sql_json(&a, &[], "SELECT count(*) AS n FROM episodes")[0]["n"].clone();
    let nb = sql_json(&b, &[], "SELECT count(*) AS n FROM episodes")[0]["n"].clone();
    assert_eq!(
        v,
        serde_json::json!([{"origin": "machine-a", "n": na}, {"origin": "machine-b", "n": nb}])
    );
    let q = "SELECT run_id, step, episodes, reward_mean FROM step_metrics ORDER BY run_id, step";
    let from_b = sql_json(&b, &[], q);
    let in_catalogue = sql_json(
        &nowhere,
        &["--catalog", &cat],
        "SELECT run_id, step, episodes, reward_mean FROM step_metrics WHERE origin = 'machine-b' ORDER BY run_id, step",
    );
    assert_eq!(from_b, in_catalogue, "a view over one origin equals that machine's own");
    // Pruning: a filter on origin drops the other member from the plan, and
    // one on run and step skips row groups by their statistics.
    let plan = sql_json(
        &nowhere,
        &["--catalog", &cat],
        "EXPLAIN SELECT count(*) FROM episodes WHERE origin = 'machine-b' AND run_id = 'r-1' AND step = 2",
    );
    let text = plan.to_string();
    assert!(text.contains("machine-b/episodes/"), "{text}");
    assert!(!text.contains("machine-a/episodes/"), "{text}");
    assert!(
        text.contains("run_id_max@") || text.contains("run_id_null_count"),
        "statistics predicate: {text}"
    );

    // Bad locations are refused with what to do.
    let out = run(&nowhere, &["--snapshots", "ftp://x/y", "sql", "SELECT 1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unsupported scheme 'ftp'"), "{}", stderr(&out));
    let out = run(&nowhere, &["--snapshots", &at("empty"), "sql", "SELECT 1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no snapshots have been shipped"),
        "{}",
        stderr(&out)
    );
    let out = run(&nowhere, &["sql", "--catalog", &at("machine-a"), "SELECT 1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("has no member"), "{}", stderr(&out));
}

#[test]
fn three_gateways_one_killed_mid_run_lose_no_episode_and_every_episode_replays_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Every sandbox response takes 150 ms, so the run lasts a few seconds.
    let (mut sandbox, search) = spawn_server(
        tmp.path(),
        &[
            "sandbox",
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--faults",
            "latency=1.0:150ms",
        ],
        "listening on http://",
    );
    let mut gateways = Vec::new();
    for _ in 0..3 {
        gateways.push(spawn_server(
            tmp.path(),
            &["gateway", "serve", "--addr", "127.0.0.1:0", "--sandbox", &search],
            "gateway listening on ",
        ));
    }
    let urls: Vec<String> = gateways.iter().map(|(_, u)| u.clone()).collect();
    let questions = tmp.path().join("q.parquet");
    let out = run(
        tmp.path(),
        &[
            "sandbox",
            "questions",
            "--count",
            "32",
            "--out",
            &questions.to_string_lossy(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let eval = fathom(&data)
        .args([
            "eval",
            "--questions",
            &questions.to_string_lossy(),
            "--sandbox",
            &search,
            "--concurrency",
            "8",
        ])
        .args(["--gateways", &urls.join(",")])
        // A writing command ships its snapshots when it ends, too.
        .args(["--snapshots", &tmp.path().join("shipped").to_string_lossy()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("eval starts");
    // Kill the second gateway once the run is under way.
    std::thread::sleep(Duration::from_millis(1500));
    gateways[1].0.kill().unwrap();
    gateways[1].0.wait().unwrap();
    let out = eval.wait_with_output().unwrap();
    // The gateways read the pages for the browsing agent too.
    let mut pages_read = 0;
    for i in [0, 2] {
        let health: serde_json::Value =
            serde_json::from_str(&http_get(urls[i].trim_start_matches("http://"), "/v1/health")).unwrap();
        assert_eq!(health["status"], "ok", "{health}");
        assert!(health["attempts"].as_u64().unwrap() > 0, "{health}");
        pages_read += health["pages_read"].as_u64().unwrap();
    }
    assert!(pages_read > 0, "no page was read by a gateway");
    for (mut g, _) in gateways {
        let _ = g.kill();
        let _ = g.wait();
    }
    let _ = sandbox.kill();
    let _ = sandbox.wait();
    assert!(out.status.success(), "eval: {}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("tool gateway {} failed", urls[1])),
        "the run went on past the kill and moved that gateway's episodes: {}",
        stderr(&out)
    );

    // No episode lost or cut short, and no failure of a gateway recorded as
    // a web error.
    let v = sql_json(
        &data,
        &[],
        "SELECT count(*) AS n, sum(CASE WHEN ended_by = 'answer' THEN 1 ELSE 0 END) AS answered, \
         (SELECT count(*) FROM web_requests WHERE error IS NOT NULL) AS errors, \
         (SELECT count(*) FROM web_requests) AS requests FROM episodes",
    );
    assert_eq!(v[0]["n"], 32, "{v}");
    assert_eq!(v[0]["answered"], 32, "{v}");
    assert_eq!(v[0]["errors"], 0, "{v}");
    assert!(v[0]["requests"].as_u64().unwrap() >= 64, "{v}");
    let shipped = sql_json(
        &tmp.path().join("nowhere"),
        &["--snapshots", &tmp.path().join("shipped").to_string_lossy()],
        "SELECT count(*) AS n FROM episodes",
    );
    assert_eq!(shipped[0]["n"], 32, "the run's last snapshot was shipped: {shipped}");
    // Every episode replays identical from the log alone (no gateway, no sandbox).
    let out = run(&data, &["replay", "--run", "r-1", "--check"]);
    assert!(out.status.success(), "replay: {}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("identical   32"), "{}", stdout(&out));

    // A gateway URL that is not one is refused before anything runs.
    let out = run(
        &data,
        &[
            "eval",
            "--questions",
            &questions.to_string_lossy(),
            "--gateways",
            "nonsense",
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("gateway URL 'nonsense' does not parse"),
        "{}",
        stderr(&out)
    );
}

/// The `sql` blocks of the cookbook in `docs/SQL.md`.
fn cookbook() -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/SQL.md")).unwrap();
    let start = doc.find("## Cookbook").expect("a cookbook section");
    let section = &doc[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    section
        .split("```sql")
        .skip(1)
        .flat_map(|block| {
            block
                .split("```")
                .next()
                .unwrap()
                .split(";\n")
                .map(|q| q.trim().trim_end_matches(';').to_string())
                .filter(|q| !q.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Child processes killed when dropped (also when a test panics).
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for p in &mut self.0 {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// Rows as sorted strings, numbers rounded to 9 significant digits (sums
/// over other partitions may differ in the last bits).
fn canonical(rows: &serde_json::Value) -> Vec<String> {
    fn round(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Number(n) if n.is_f64() => {
                let x = n.as_f64().unwrap();
                serde_json::Value::String(format!("{x:.9e}"))
            }
            serde_json::Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), round(v))).collect(),
            serde_json::Value::Array(a) => a.iter().map(round).collect(),
            other => other.clone(),
        }
    }
    let mut out: Vec<String> = rows.as_array().unwrap().iter().map(|r| round(r).to_string()).collect();
    out.sort();
    out
}

#[test]
fn a_ballista_scheduler_and_two_executors_give_the_cookbook_results_of_local_datafusion() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    load(&data, "192");
    let out = run(&data, &["eval", "--limit", "12"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let sched = format!("127.0.0.1:{}", free_port());
    let url = format!("df://{sched}");
    let mut procs = Procs(vec![
        fathom(tmp.path())
            .args(["cluster", "scheduler", "--addr", &sched])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    ]);
    for _ in 0..2 {
        let (port, grpc) = (free_port().to_string(), free_port().to_string());
        procs.0.push(
            fathom(tmp.path())
                .args([
                    "cluster",
                    "executor",
                    "--scheduler",
                    &url,
                    "--port",
                    &port,
                    "--grpc-port",
                    &grpc,
                ])
                .args(["--concurrency", "2"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    // Wait for the scheduler to accept a query (it needs an executor).
    let mut ready = false;
    for _ in 0..100 {
        let out = run(&data, &["sql", "--cluster", &url, "SELECT count(*) AS n FROM episodes"]);
        if out.status.success() {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(ready, "the cluster at {url} never answered");
    let queries = cookbook();
    assert!(queries.len() >= 6, "{queries:?}");
    let mut compared = 0;
    for q in &queries {
        let local = sql_json(&data, &["--snapshots-only"], q);
        let out = fathom(&data)
            .args(["sql", "--format", "json", "--cluster", &url])
            .arg(q)
            .output()
            .unwrap();
        assert!(out.status.success(), "{q}\nthrough the cluster: {}", stderr(&out));
        let distributed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(canonical(&local), canonical(&distributed), "{q}");
        compared += usize::from(!local.as_array().unwrap().is_empty());
    }
    assert!(compared >= 4, "most cookbook queries find rows ({compared} did)");

    // A catalogue on the cluster: two members, the second with no eval,
    // update or checkpoint files (typed empty relations in the plans).
    let cat = tmp.path().join("catalogue");
    let other = tmp.path().join("other");
    load(&other, "48");
    for (dir, member) in [(&data, "m1"), (&other, "m2")] {
        let to = cat.join(member).to_string_lossy().into_owned();
        let out = run(dir, &["--snapshots", &to, "snapshot"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let cat = cat.to_string_lossy().into_owned();
    for q in [
        "SELECT origin, count(*) AS n, sum(reward) AS reward FROM episodes GROUP BY origin",
        "SELECT origin, run_id, step, episodes, reward_mean, tool_calls FROM step_metrics",
        "SELECT origin, count(*) AS n FROM evals GROUP BY origin",
        "SELECT count(*) AS n FROM m2.turns",
        "SELECT e.origin, count(*) AS n FROM episodes e JOIN turns t ON e.origin = t.origin AND e.episode_id = t.episode_id GROUP BY e.origin",
    ] {
        let local = sql_json(&data, &["--catalog", &cat], q);
        let distributed = sql_json(&data, &["--catalog", &cat, "--cluster", &url], q);
        assert!(!local.as_array().unwrap().is_empty(), "{q}");
        assert_eq!(canonical(&local), canonical(&distributed), "{q}");
    }
    let origins = sql_json(
        &data,
        &["--catalog", &cat, "--cluster", &url],
        "SELECT origin, count(*) AS n FROM episodes GROUP BY origin ORDER BY origin",
    );
    assert_eq!(origins.as_array().unwrap().len(), 2, "{origins}");
    let own = sql_json(&other, &[], "SELECT count(*) AS n FROM episodes");
    assert_eq!(origins[1]["n"], own[0]["n"], "{origins}");

    // The plan is Ballista's: stages with shuffles, handed to executors.
    let plan = sql_json(
        &data,
        &["--cluster", &url],
        "EXPLAIN SELECT step, count(*) FROM episodes GROUP BY step",
    );
    drop(procs);
    let text = plan.to_string();
    assert!(
        text.contains("distributed_plan") && text.contains("ShuffleWriterExec"),
        "{text}"
    );
}

/// One raw HTTP/1.1 request over loopback; the status line and the body.
fn raw_http(addr: &str, head: &str, body: &[u8]) -> (String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = String::from_utf8_lossy(&raw[..raw.iter().position(|b| *b == b'\r').unwrap()]).to_string();
    (status, raw[split + 4..].to_vec())
}

#[test]
fn a_gateway_needs_a_token_off_loopback_and_on_every_route_and_bounds_what_a_client_asks() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["gateway", "serve", "--addr", "0.0.0.0:0"]);
    assert!(
        !out.status.success() && stderr(&out).contains("add --token"),
        "{}",
        stderr(&out)
    );
    let out = run(
        dir.path(),
        &["gateway", "serve", "--addr", "127.0.0.1:0", "--token", "short"],
    );
    assert!(stderr(&out).contains("at least 12 characters"), "{}", stderr(&out));

    // A site that answers every request with 8 MiB.
    let site = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let site_addr = site.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for conn in site.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let body = vec![b'x'; 8 << 20];
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(&body);
        }
    });
    let token = "a-token-long-enough";
    let (mut child, url) = spawn_server(
        dir.path(),
        &[
            "gateway",
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--token",
            token,
            "--allow",
            &site_addr,
        ],
        "gateway listening on ",
    );
    let addr = url.trim_start_matches("http://").trim_end_matches('/').to_string();
    let (status, _) = raw_http(
        &addr,
        &format!("GET /v1/health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
        b"",
    );
    assert!(status.contains("401"), "health without the token: {status}");
    let (status, body) = raw_http(
        &addr,
        &format!(
            "GET /v1/health HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        ),
        b"",
    );
    assert!(status.contains("200"), "{status}");
    assert!(String::from_utf8_lossy(&body).contains("\"status\":\"ok\""));

    // A client asking for 1.5 GB of body and a day of time gets the
    // server's 5 MiB.
    let request = fathom_replay::gateway::WireRequest {
        method: "GET".into(),
        url: format!("http://{site_addr}/big"),
        headers: Vec::new(),
        body: Vec::new(),
        timeout_ms: 86_400_000,
        max_body_bytes: 1_500_000_000,
        read: false,
    };
    let framed = fathom_replay::remote::frame(&request, &[]);
    let (status, reply) = raw_http(
        &addr,
        &format!(
            "POST /v1/attempt HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            framed.len()
        ),
        &framed,
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(status.contains("200"), "{status}");
    let (exchange, body): (fathom_replay::gateway::WireExchange, Vec<u8>) =
        fathom_replay::remote::unframe(&reply).unwrap();
    assert_eq!(exchange.status, 200);
    assert!(exchange.truncated, "cut at the server's cap");
    assert_eq!(body.len(), 5 << 20);
}
