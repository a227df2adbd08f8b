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
            "SELECT episode_id, turn, text FROM turns WHERE role = 'assistant' ORDER BY seq",
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
