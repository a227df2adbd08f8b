//! `fathom model init-tiny`, `fathom model info`, and `fathom eval` with
//! the candle policy.

use crate::{run, stderr, stdout};

fn turns(data: &std::path::Path) -> String {
    let out = run(
        data,
        &[
            "sql",
            "--format",
            "json",
            // By question: episode ids follow the order episodes happen to start in.
            "SELECT e.question_id, t.turn, t.text FROM turns t JOIN episodes e ON t.episode_id = e.episode_id \
             WHERE t.role = 'assistant' ORDER BY e.question_id, t.turn",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

#[test]
fn a_tiny_model_is_written_described_and_evaluated_reproducibly() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    let m = model.to_str().unwrap();
    let out = run(dir.path(), &["model", "init-tiny", "--out", m, "--vocab", "1024"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("2 layers, hidden 64"), "{}", stdout(&out));
    let again = run(dir.path(), &["model", "init-tiny", "--out", m]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("already holds a model"), "{}", stderr(&again));

    let info = run(dir.path(), &["model", "info", m]);
    assert!(info.status.success(), "{}", stderr(&info));
    let text = stdout(&info);
    assert!(
        text.contains("Qwen2ForCausalLM") && text.contains("1024 tokens"),
        "{text}"
    );
    assert!(
        text.contains("<tool_call> </tool_call>"),
        "protocol tags are tokens: {text}"
    );

    // Sampled at temperature 1: the same seed gives the same turns, another
    // seed other turns.
    let eval = |data: &std::path::Path, seed: &str| {
        let out = run(
            data,
            &[
                "eval",
                "--policy",
                &format!("candle:{m}"),
                "--limit",
                "2",
                "--temperature",
                "1",
                "--seed",
                seed,
                "--max-turn-tokens",
                "40",
                "--concurrency",
                "1",
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains("overall"), "{}", stdout(&out));
        turns(data)
    };
    let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
    let ta = eval(&a, "5");
    assert_eq!(ta, eval(&b, "5"), "same seed, same turns");
    assert_ne!(ta, eval(&c, "6"), "another seed, other turns");
    // The sampled token ids and log-probs are recorded with every turn.
    let out = run(
        &a,
        &[
            "sql",
            "--format",
            "json",
            "SELECT count(*) AS turns, \
             sum(CASE WHEN payload_json LIKE '%\"token_ids\":{\"digest\"%' AND payload_json LIKE '%\"logprobs\":{\"digest\"%' \
                 THEN 1 ELSE 0 END) AS with_tokens \
             FROM events WHERE kind = 'turn_generated'",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v[0]["turns"].as_u64().unwrap() >= 2, "{v}");
    assert_eq!(v[0]["turns"], v[0]["with_tokens"], "{v}");

    let bad = run(
        dir.path(),
        &["eval", "--policy", "candle:/nonexistent/model", "--limit", "1"],
    );
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("/nonexistent/model"), "{}", stderr(&bad));
}

fn http(addr: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn serve_model_speaks_openai_and_eval_through_it_matches_the_model_run_directly() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    let m = model.to_str().unwrap();
    assert!(
        run(
            dir.path(),
            &["model", "init-tiny", "--out", m, "--vocab", "1024", "--seed", "3"]
        )
        .status
        .success()
    );
    let mut server = crate::fathom(dir.path())
        .args([
            "serve-model",
            "--policy",
            &format!("candle:{m}"),
            "--addr",
            "127.0.0.1:0",
            "--name",
            "tiny",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line}"))
        .to_string();
    let addr = base.trim_start_matches("http://").trim_end_matches("/v1").to_string();

    let models = http(&addr, "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(
        models.contains("\"id\":\"tiny\"") && models.contains("\"object\":\"list\""),
        "{models}"
    );
    let body = r#"{"model":"tiny","messages":[{"role":"user","content":"Who founded the museum?"}],"max_tokens":5,"temperature":0,"logprobs":true,"stop":["</answer>"]}"#;
    let reply = http(
        &addr,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    let json: serde_json::Value = serde_json::from_str(&reply[reply.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(json["object"], "chat.completion");
    assert_eq!(json["choices"][0]["message"]["role"], "assistant");
    assert_eq!(json["usage"]["completion_tokens"], 5);
    assert_eq!(json["choices"][0]["finish_reason"], "length");
    assert_eq!(json["choices"][0]["logprobs"]["content"].as_array().unwrap().len(), 5);
    let bad = r#"{"messages":[],"stream":true}"#;
    let reply = http(
        &addr,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{bad}",
            bad.len()
        ),
    );
    assert!(
        reply.starts_with("HTTP/1.1 400") && reply.contains("stream=true is not supported"),
        "{reply}"
    );
    // More tokens than the model's context leaves: refused at once, not
    // generated for minutes.
    let huge = r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":4294967295,"temperature":0}"#;
    let reply = http(
        &addr,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{huge}",
            huge.len()
        ),
    );
    assert!(
        reply.starts_with("HTTP/1.1 400") && reply.contains("more than the model's context"),
        "{reply}"
    );

    // A full evaluation through the endpoint gives, turn for turn, what the
    // same model gives when run in-process: sampled at temperature 1 with
    // the same seeds, any difference in the prompt would show.
    let common = [
        "--limit",
        "2",
        "--max-turn-tokens",
        "24",
        "--concurrency",
        "1",
        "--sandbox-seed",
        "4",
        "--temperature",
        "1",
        "--seed",
        "9",
    ];
    let (a, b) = (dir.path().join("direct"), dir.path().join("served"));
    let out = run(
        &a,
        &[&["eval", "--policy", &format!("candle:{m}")][..], &common[..]].concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(
        &b,
        &[
            &["eval", "--policy", &format!("openai:{base}"), "--model-name", "tiny"][..],
            &common[..],
        ]
        .concat(),
    );
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("overall"), "{}", stdout(&out));
    let direct = turns(&a);
    assert_eq!(direct, turns(&b), "the endpoint and the in-process model answer alike");
    let texts: std::collections::BTreeSet<String> = serde_json::from_str::<serde_json::Value>(&direct)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["text"].as_str().unwrap().to_string())
        .collect();
    assert!(texts.len() > 1, "sampled turns differ from each other: {texts:?}");
}
