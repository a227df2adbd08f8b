//! `fathom score` over JSON lines.

use crate::{run, stderr, stdout};

const LINES: &str = r#"{"response": "<think>Easy.</think><answer>Ada Lind</answer>", "ground_truth": "Ada Lind<|answer_split|>A. Lind"}
{"response": "<think>t</think><tool_call>{\"name\": \"web_search\", \"arguments\": {\"query\": [\"q\"]}}</tool_call><tool_response>\n<answer> junk from the web\n</tool_response><think>ok</think><answer>Lind</answer>", "ground_truth": ["Ada Lind"]}
{"response": "<think>unclosed <answer>Ada Lind</answer>", "ground_truth": "Ada Lind"}

{"response": "<think>t</think><answer>no</answer>", "ground_truth": "yes"}
"#;

#[test]
fn scores_each_line_then_the_means() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("responses.jsonl");
    std::fs::write(&file, LINES).unwrap();
    let out = run(dir.path(), &["score", file.to_str().unwrap(), "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<serde_json::Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 5, "four results and the means");
    let pick = |i: usize| {
        (
            rows[i]["format_ok"].as_bool().unwrap(),
            rows[i]["reward"].as_f64().unwrap(),
            rows[i]["f1"].as_f64().unwrap(),
            rows[i]["em"].as_f64().unwrap(),
        )
    };
    assert_eq!(pick(0), (true, 1.0, 1.0, 1.0));
    let (ok, reward, f1, em) = pick(1);
    assert!(ok, "tags inside the tool response do not count");
    assert!((reward - 2.0 / 3.0).abs() < 1e-9 && (f1 - 2.0 / 3.0).abs() < 1e-9 && em == 0.0);
    assert_eq!(pick(2), (false, -1.0, 0.0, 0.0));
    assert_eq!(pick(3), (true, 0.0, 0.0, 0.0));
    assert_eq!(rows[3]["line"], 5, "blank lines are skipped but counted");
    let means = &rows[4]["means"];
    assert_eq!(means["n"], 4);
    assert!((means["reward"].as_f64().unwrap() - (1.0 + 2.0 / 3.0 - 1.0 + 0.0) / 4.0).abs() < 1e-9);
    assert!(
        (means["f1"].as_f64().unwrap() - (1.0 + 2.0 / 3.0) / 4.0).abs() < 1e-9,
        "eval F1 counts a failure as 0"
    );
    assert_eq!(means["format_ok"], 0.75);

    let table = stdout(&run(dir.path(), &["score", file.to_str().unwrap()]));
    assert!(table.contains("FAIL"), "{table}");
    assert!(
        table.contains("mean over 4 responses: reward 0.1667, F1 0.4167, EM 0.2500, well-formed 75.0%"),
        "{table}"
    );

    // Protocol 2 (the default, DeepResearcher's rules) needs the think block
    // its prompt opened to be closed, and keeps an en dash inside its word;
    // protocol 1 did neither.
    let other = dir.path().join("rules.jsonl");
    std::fs::write(
        &other,
        "{\"response\": \"<answer>Ada Lind</answer>\", \"ground_truth\": \"Ada Lind\"}\n\
         {\"response\": \"<think>t</think><answer>Ada\\u2013Lind</answer>\", \"ground_truth\": \"Ada Lind\"}\n",
    )
    .unwrap();
    let rules = |version: &str| -> Vec<(bool, f64)> {
        let out = run(
            dir.path(),
            &[
                "score",
                other.to_str().unwrap(),
                "--format",
                "json",
                "--protocol",
                version,
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
            .lines()
            .take(2)
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["format_ok"].as_bool().unwrap(), v["f1"].as_f64().unwrap())
            })
            .collect()
    };
    assert_eq!(rules("2"), vec![(false, 0.0), (true, 0.0)]);
    assert_eq!(rules("1"), vec![(true, 1.0), (true, 1.0)]);
    let out = run(dir.path(), &["score", other.to_str().unwrap(), "--protocol", "7"]);
    assert!(stderr(&out).contains("protocol version 7"), "{}", stderr(&out));
}

#[test]
fn bad_lines_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.jsonl");
    std::fs::write(
        &file,
        "{\"response\": \"<answer>x</answer>\", \"ground_truth\": \"x\"}\n{\"answer\": 1}\n",
    )
    .unwrap();
    let out = run(dir.path(), &["score", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("line 2 is not {\"response\": string"),
        "{}",
        stderr(&out)
    );
    let out = run(dir.path(), &["score", "/nonexistent/x.jsonl"]);
    assert!(
        stderr(&out).contains("cannot open /nonexistent/x.jsonl"),
        "{}",
        stderr(&out)
    );
}
