//! verl question files: the paper's own, and round trips of ours.

use std::collections::BTreeMap;
use std::path::PathBuf;

use fathom_store::verl::{self, Message, VerlRow};

/// The paper's dev question set (verl layout), vendored as published.
fn papers_dev_set() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/deepresearcher-dev.parquet")
}

#[test]
fn the_papers_dev_set_reads_as_published() {
    let path = papers_dev_set();
    let rows = verl::read(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows.len(), 875);
    assert!(
        rows.iter().all(|r| r.sandbox_world.is_none()),
        "the paper's sets name no sandbox world"
    );
    let mut per_source: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &rows {
        *per_source.entry(&r.data_source).or_default() += 1;
        assert!(!r.question().is_empty());
        assert!(!r.ground_truths().is_empty(), "{r:?}");
    }
    assert_eq!(per_source.len(), 7);
    assert!(per_source.values().all(|&n| n == 125), "{per_source:?}");
    let tq = rows.iter().find(|r| r.index == "tq_qg_3477").unwrap();
    assert!(tq.question().starts_with("Lasting from 1299 to 1922"));
    assert!(tq.ground_truths().contains(&"turkey".to_string()));
    let musique: Vec<u32> = rows
        .iter()
        .filter(|r| r.data_source == "musique")
        .filter_map(VerlRow::hops)
        .collect();
    assert_eq!(musique.len(), 125, "every MuSiQue id names its hop count");
    assert!(musique.iter().all(|h| (2..=4).contains(h)));
}

#[test]
fn written_files_read_back_identically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.parquet");
    let rows: Vec<VerlRow> = (0..50)
        .map(|i| VerlRow {
            data_source: format!("sandbox-{}hop", 1 + i % 4),
            prompt: vec![Message {
                role: "user".into(),
                content: format!("Question {i}? With “unicode”."),
            }],
            ability: "search & question answering".into(),
            ground_truth: format!("Answer {i}<|answer_split|>A. {i}"),
            style: "rule".into(),
            index: format!("sandbox-1-{i}"),
            split: "test".into(),
            // Sandbox questions carry their world; others carry none.
            sandbox_world: (i % 3 != 0).then_some((11, 300 + i as u64)),
        })
        .collect();
    verl::write(&path, &rows).unwrap();
    assert!(!dir.path().join("q.parquet.tmp").exists());
    let back = verl::read(&path).unwrap();
    assert_eq!(back, rows);
    assert_eq!(back[5].hops(), Some(2));
    assert_eq!(back[5].ground_truths(), vec!["Answer 5", "A. 5"]);
}

#[test]
fn files_that_are_not_question_sets_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let not_parquet = dir.path().join("x.parquet");
    std::fs::write(&not_parquet, b"hello").unwrap();
    let e = verl::read(&not_parquet).unwrap_err().to_string();
    assert!(e.contains("not a Parquet file"), "{e}");
    let e = verl::read(&dir.path().join("missing.parquet")).unwrap_err().to_string();
    assert!(e.contains("missing.parquet: cannot open"), "{e}");
}
