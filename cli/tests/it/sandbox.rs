//! `fathom sandbox serve` from the outside.

use crate::http_get;

#[test]
fn serve_prints_its_address_and_answers_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = crate::spawn_sandbox(dir.path(), "3", "100");
    let about: serde_json::Value = serde_json::from_str(&http_get(&addr, "/")).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    assert_eq!(about["seed"], 3);
    assert!(about["pages"].as_u64().unwrap() > 100);
    assert!(
        about["sites"]["wiki"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );
}

#[test]
fn a_bad_fault_spec_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let out = crate::run(dir.path(), &["sandbox", "serve", "--faults", "teapot=0.5"]);
    assert!(!out.status.success());
    let err = crate::stderr(&out);
    assert!(
        err.contains("unknown fault kind 'teapot'") && err.contains("KIND=RATE"),
        "{err}"
    );
}

#[test]
fn questions_are_written_in_verl_layout_and_are_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.parquet"), dir.path().join("b.parquet"));
    for out in [&a, &b] {
        let o = crate::run(
            dir.path(),
            &[
                "sandbox",
                "questions",
                "--seed",
                "9",
                "--entities",
                "300",
                "--count",
                "40",
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", crate::stderr(&o));
        assert!(crate::stdout(&o).starts_with("wrote 40 questions"));
    }
    let rows = fathom_store::verl::read(&a).unwrap();
    assert_eq!(rows, fathom_store::verl::read(&b).unwrap(), "same seed, same questions");
    assert_eq!(rows.len(), 40);
    for h in 1..=4 {
        assert_eq!(rows.iter().filter(|r| r.hops() == Some(h)).count(), 10);
    }
    assert!(
        rows.iter()
            .all(|r| r.question().ends_with('?') && !r.ground_truths().is_empty())
    );

    let o = crate::run(
        dir.path(),
        &["sandbox", "questions", "--hops", "3..2", "--out", "x.parquet"],
    );
    assert!(
        crate::stderr(&o).contains("is not a hop range"),
        "{}",
        crate::stderr(&o)
    );
}
