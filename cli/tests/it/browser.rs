//! The dashboard in a real headless Chromium, driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`, which `scripts/test`
//! installs): the runs page, a run page and an episode page of a recorded
//! demo run, with screenshots saved under the test target directory.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::train::small_demo;
use crate::{fathom, free_port, run, stderr};

/// Kills a child process when dropped, so a failing assertion leaves no
/// browser or server behind.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One WebDriver command over plain HTTP/1.1 on loopback.
fn wd(port: u16, method: &str, path: &str, body: Option<Value>) -> Value {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("chromedriver listens");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // chromedriver keeps the connection open: read by Content-Length, or
    // by chunks.
    let mut r = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        if l == "\r\n" || l.is_empty() {
            break;
        }
        head.push_str(&l);
    }
    let lower = head.to_lowercase();
    let payload = if let Some(len) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        let mut buf = vec![0u8; len];
        r.read_exact(&mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    } else {
        let mut out = Vec::new();
        loop {
            let mut size = String::new();
            r.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk).unwrap();
            out.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8(out).unwrap()
    };
    let v: Value = serde_json::from_str(&payload).unwrap_or_else(|e| panic!("{method} {path}: {e}: {payload}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{method} {path} failed: {head}\n{v}");
    v["value"].clone()
}

const ELEMENT: &str = "element-6066-11e4-a021-4c2c4d8d4d4b";

fn elements(port: u16, session: &str, css: &str) -> Vec<String> {
    let v = wd(
        port,
        "POST",
        &format!("/session/{session}/elements"),
        Some(json!({"using": "css selector", "value": css})),
    );
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e[ELEMENT]
                .as_str()
                .or_else(|| e.as_object().and_then(|o| o.values().find_map(Value::as_str)))
                .unwrap_or_else(|| panic!("not an element reference: {e}"))
                .to_string()
        })
        .collect()
}

fn text(port: u16, session: &str, element: &str) -> String {
    wd(port, "GET", &format!("/session/{session}/element/{element}/text"), None)
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn screenshot(port: u16, session: &str, name: &str) -> std::path::PathBuf {
    let b64 = wd(port, "GET", &format!("/session/{session}/screenshot"), None);
    let bytes = decode_base64(b64.as_str().unwrap());
    assert!(bytes.starts_with(b"\x89PNG"), "a PNG screenshot");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => 0,
    };
    let clean: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=').collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= u32::from(val(*c)) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

fn sql_one(data: &std::path::Path, q: &str) -> Value {
    let out = run(data, &["sql", "--format", "json", q]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0].clone()
}

#[test]
fn the_dashboard_in_headless_chromium_shows_runs_curves_turns_and_tags() {
    for (bin, package) in [
        ("/usr/bin/chromium", "chromium"),
        ("/usr/bin/chromedriver", "chromium-driver"),
    ] {
        assert!(
            std::path::Path::new(bin).exists(),
            "{bin} is missing: install Debian's {package} (scripts/test does)"
        );
    }
    // A recorded demo run (the demo's pipeline on a small configuration).
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = small_demo(dir.path());
    let train = sql_one(&data, "SELECT run_id FROM runs WHERE kind = 'train'");
    let train = train["run_id"].as_str().unwrap().to_string();
    let tagged = sql_one(
        &data,
        "SELECT b.episode_id, e.n_turns FROM behaviours b JOIN episodes e ON b.episode_id = e.episode_id \
         WHERE b.kind = 'planning' ORDER BY b.seq LIMIT 1",
    );
    let episode = tagged["episode_id"]
        .as_str()
        .expect("a scripted episode with a planning tag")
        .to_string();
    let turns = tagged["n_turns"].as_u64().unwrap() as usize;

    // The dashboard.
    let mut serve = fathom(&data)
        .args(["serve", "--addr", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(serve.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _serve = Killed(serve);
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in: {line}"))
        .trim_end_matches('/')
        .to_string();

    // The browser.
    let port = free_port();
    let driver = Command::new("/usr/bin/chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _driver = Killed(driver);
    let mut ready = false;
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ready, "chromedriver did not start");
    let session = wd(
        port,
        "POST",
        "/session",
        Some(json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1800"]
            }
        }}})),
    );
    let sid = session["sessionId"].as_str().unwrap().to_string();
    let go = |path: &str| {
        wd(
            port,
            "POST",
            &format!("/session/{sid}/url"),
            Some(json!({"url": format!("{base}{path}")})),
        );
    };

    go("/");
    let title = wd(port, "GET", &format!("/session/{sid}/title"), None);
    assert_eq!(title, "Runs · fathom");
    let rows = elements(port, &sid, "table tbody tr");
    assert!(
        rows.len() >= 4,
        "the initial eval, warm start, training and eval runs: {}",
        rows.len()
    );
    let links = elements(port, &sid, &format!("a[href='/runs/{train}']"));
    assert_eq!(links.len(), 1);
    screenshot(port, &sid, "runs.png");

    go(&format!("/runs/{train}"));
    let charts = elements(port, &sid, "svg.chart");
    assert!(charts.len() >= 12, "a chart per curve: {}", charts.len());
    assert!(
        !elements(port, &sid, "svg.chart polyline.series").is_empty(),
        "curves drawn"
    );
    let h1 = elements(port, &sid, "h1");
    assert!(text(port, &sid, &h1[0]).starts_with(&format!("Run {train}")));
    screenshot(port, &sid, "run.png");

    go(&format!("/episodes/{episode}"));
    let shown = elements(port, &sid, "div.turn:not(.tool)");
    assert_eq!(shown.len(), turns, "every assistant turn is shown");
    let tags = elements(port, &sid, "span.tag");
    assert!(
        tags.iter().any(|t| text(port, &sid, t).starts_with("planning")),
        "the planning tag"
    );
    assert!(!elements(port, &sid, "mark").is_empty(), "the evidence highlighted");
    let shot = screenshot(port, &sid, "episode.png");
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "a real screenshot");

    // The replay action: the button posts the form, the server re-runs the
    // episode from the log (the sandbox of the demo is long gone). Returns
    // the verdict's heading and paragraphs.
    let replay_check = |episode: &str| -> (String, Vec<String>) {
        let button = elements(port, &sid, "form button");
        assert_eq!(button.len(), 1, "a replay button");
        wd(
            port,
            "POST",
            &format!("/session/{sid}/element/{}/click", button[0]),
            Some(json!({})),
        );
        // Clicking returns at once; wait for the verdict page to load.
        let mut title = Value::Null;
        for _ in 0..600 {
            title = wd(port, "GET", &format!("/session/{sid}/title"), None);
            if title.as_str().is_some_and(|t| t.starts_with("Replay check of")) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            title,
            format!("Replay check of {episode} · fathom"),
            "{}",
            wd(port, "GET", &format!("/session/{sid}/source"), None)
        );
        let h2 = elements(port, &sid, "h2");
        let body = elements(port, &sid, "main p");
        (
            text(port, &sid, &h2[0]),
            body.iter().map(|p| text(port, &sid, p)).collect(),
        )
    };
    let (verdict, body) = replay_check(&episode);
    assert_eq!(verdict, "Identical", "the replay verdict");
    assert!(
        body.iter().any(|p| p.contains("re-run with the scripted researcher")),
        "the summary: {body:?}"
    );
    screenshot(port, &sid, "replay.png");

    // The same on an episode of the training run's step 2, sampled with
    // the weights after step 1, which the run never kept (it checkpoints
    // every 2 steps): the server rebuilds them from the log.
    let step2 = sql_one(
        &data,
        &format!("SELECT episode_id FROM episodes WHERE run_id = '{train}' AND step = 2 ORDER BY seq LIMIT 1"),
    );
    let step2 = step2["episode_id"].as_str().unwrap().to_string();
    go(&format!("/episodes/{step2}"));
    let (verdict, body) = replay_check(&step2);
    assert_eq!(verdict, "Identical", "the replay verdict");
    assert!(
        body.iter()
            .any(|p| p.contains("after step 1 rebuilt: the starting weights + 1 update")),
        "where the weights came from: {body:?}"
    );

    wd(port, "DELETE", &format!("/session/{sid}"), None);
}
