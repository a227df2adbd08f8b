//! Snapshot mechanics that the SQL tests do not reach: leftovers of an
//! interrupted snapshot, a damaged manifest, the automatic policy.

use std::sync::Arc;
use std::time::Duration;

use fathom_core::RunId;
use fathom_store::snapshot::{AutoPolicy, AutoSnapshot, SnapshotOptions};
use fathom_store::synthetic::{TrainingLoad, TrainingSpec, page_pool};
use fathom_store::{Durability, Options, Store};

fn store_with_steps(dir: &std::path::Path, steps: usize) -> Store {
    let store = Store::open(dir, Options::default()).unwrap();
    append_steps(&store, 1, steps, (0, 0));
    store
}

/// Appends `steps` synthetic training steps of run `r-{run}` (page pool and
/// seed `run`, ids from `first_ids`); returns the events appended.
fn append_steps(store: &Store, run: u64, steps: usize, first_ids: (u64, u64)) -> usize {
    let refs = store
        .put_blobs(&page_pool(run).iter().map(Vec::as_slice).collect::<Vec<_>>())
        .unwrap();
    let spec = TrainingSpec {
        questions_per_step: 2,
        group_size: 2,
        horizon_steps: 10,
    };
    let mut load = TrainingLoad::new(run, RunId(run), spec, refs, first_ids);
    let mut n = 0;
    for _ in 0..steps {
        let events = load.step();
        n += events.len();
        store.append_with(&events, Durability::Durable).unwrap();
    }
    n
}

#[test]
fn files_an_interrupted_snapshot_left_behind_are_removed_before_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_steps(dir.path(), 2);
    let first = store.snapshot(&SnapshotOptions::default()).unwrap();
    assert_eq!(first.orphans_removed, 0);
    let before = store.snapshots().manifest().unwrap();
    // What a kill between a file's rename and the manifest's leaves: a file
    // the manifest does not name, and half-written files in _tmp.
    let snaps = dir.path().join("snapshots");
    std::fs::write(snaps.join("episodes/part-9-9.parquet"), b"not committed").unwrap();
    std::fs::write(snaps.join("_tmp/turns-part.parquet"), b"half").unwrap();
    let report = store.snapshot(&SnapshotOptions::default()).unwrap();
    assert_eq!(
        report.orphans_removed, 1,
        "the stray table file (the _tmp dir is cleared too)"
    );
    assert!(!snaps.join("episodes/part-9-9.parquet").exists());
    assert_eq!(std::fs::read_dir(snaps.join("_tmp")).unwrap().count(), 0);
    // Nothing committed was touched.
    let after = store.snapshots().manifest().unwrap();
    for f in &before.files {
        if f.table != "runs" {
            assert!(after.files.contains(f), "{} still committed", f.path);
            assert!(snaps.join(&f.path).exists());
        }
    }
}

#[test]
fn every_committed_file_matches_its_digest_and_row_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_steps(dir.path(), 3);
    store
        .snapshot(&SnapshotOptions {
            window_events: 50,
            ..SnapshotOptions::default()
        })
        .unwrap();
    let m = store.snapshots().manifest().unwrap();
    assert!(m.files.len() > 10);
    for f in &m.files {
        let bytes = std::fs::read(dir.path().join("snapshots").join(&f.path)).unwrap();
        assert_eq!(blake3::hash(&bytes).to_hex().to_string(), f.digest, "{}", f.path);
        assert_eq!(bytes.len() as u64, f.bytes);
        let rows: usize = store
            .snapshots()
            .read_file(f)
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(rows as u64, f.rows, "{}", f.path);
    }
    // The log records each commit.
    let recorded = store
        .iter()
        .filter(|r| r.as_ref().unwrap().event.kind() == fathom_core::EventKind::SnapshotCommitted)
        .count();
    assert!(
        recorded >= m.files.len(),
        "{recorded} snapshot_committed events for {} files",
        m.files.len()
    );
}

#[test]
fn a_damaged_manifest_is_reported_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_steps(dir.path(), 1);
    store.snapshot(&SnapshotOptions::default()).unwrap();
    std::fs::write(dir.path().join("snapshots/manifest.json"), b"{ truncated").unwrap();
    let err = store.snapshot(&SnapshotOptions::default()).unwrap_err().to_string();
    assert!(
        err.contains("does not parse") && err.contains("fathom snapshot"),
        "{err}"
    );
}

#[test]
fn the_snapshot_policy_parses_and_rejects_what_it_does_not_understand() {
    assert_eq!(AutoPolicy::parse("off").unwrap(), AutoPolicy::off());
    let p = AutoPolicy::parse("100000,60s").unwrap();
    assert_eq!(p.every_events, Some(100_000));
    assert_eq!(p.every, Some(Duration::from_secs(60)));
    assert_eq!(AutoPolicy::parse("5m").unwrap().every, Some(Duration::from_secs(300)));
    assert_eq!(AutoPolicy::parse("2000events").unwrap().every_events, Some(2000));
    let err = AutoPolicy::parse("often").unwrap_err();
    assert!(err.contains("'often'") && err.contains("30s"), "{err}");
}

#[test]
fn automatic_snapshots_follow_the_log_by_event_count_and_finish_covers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(store_with_steps(dir.path(), 0));
    let policy = AutoPolicy {
        every_events: Some(100),
        every: None,
    };
    let auto = AutoSnapshot::start(store.clone(), policy, SnapshotOptions::default());
    let refs = store
        .put_blobs(&page_pool(2).iter().map(Vec::as_slice).collect::<Vec<_>>())
        .unwrap();
    let spec = TrainingSpec {
        questions_per_step: 2,
        group_size: 2,
        horizon_steps: 10,
    };
    let mut load = TrainingLoad::new(2, RunId(1), spec, refs, (0, 0));
    store.append_with(&load.step(), Durability::Durable).unwrap();
    // The background thread notices within its tick.
    let mut upto = 0;
    for _ in 0..100 {
        upto = store.snapshots().manifest().unwrap().upto_seq;
        if upto > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(upto > 0, "no automatic snapshot after 100 new events");
    store.append_with(&load.step(), Durability::Relaxed).unwrap();
    let last_data = store.last_seq().0;
    let report = auto.finish().unwrap().expect("a last snapshot");
    assert!(
        report.upto_seq >= last_data,
        "the last snapshot covers event {last_data}"
    );
}

#[test]
fn a_rebuild_from_the_log_agrees_with_the_snapshots_until_a_file_is_altered() {
    use arrow_array::{Array, Float64Array, RecordBatch};
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_steps(dir.path(), 3);
    let opts = SnapshotOptions {
        window_events: 50,
        compact_min_files: 4,
        ..SnapshotOptions::default()
    };
    store.snapshot(&opts).unwrap();
    // More events, and a second snapshot with other windows.
    let more = append_steps(&store, 2, 2, (1000, 1000));
    assert!(more > 0);
    store.snapshot(&SnapshotOptions::default()).unwrap();

    let report = store
        .rebuild(&dir.path().join("rebuilt-1"), &SnapshotOptions::default(), &mut |_| {})
        .unwrap();
    assert!(report.agrees(), "{report:?}");
    let episodes = report.tables.iter().find(|t| t.table == "episodes").unwrap();
    assert!(episodes.committed_rows >= 12 && episodes.committed_rows == episodes.rebuilt_rows);
    assert_eq!(report.tables.len(), fathom_store::snapshot::tables::all().len());
    // The rebuilt directory is a snapshot root of its own.
    let rebuilt = fathom_store::snapshot::Snapshots::new(dir.path().join("rebuilt-1"));
    assert_eq!(rebuilt.manifest().unwrap().upto_seq, report.upto_seq);

    // One reward in one committed episodes file changed (a valid Parquet file).
    let m = store.snapshots().manifest().unwrap();
    let f = m.files_of("episodes").next().unwrap().clone();
    let path = dir.path().join("snapshots").join(&f.path);
    let batches = store.snapshots().read_file(&f).unwrap();
    let batch = &batches[0];
    let i = batch.schema().index_of("reward").unwrap();
    let old = batch.column(i).as_any().downcast_ref::<Float64Array>().unwrap();
    let changed: Float64Array = (0..old.len())
        .map(|r| Some(if r == 0 { 42.0 } else { old.value(r) }))
        .collect();
    let mut columns = batch.columns().to_vec();
    columns[i] = std::sync::Arc::new(changed);
    let altered = RecordBatch::try_new(batch.schema(), columns).unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), altered.schema(), None).unwrap();
    w.write(&altered).unwrap();
    w.close().unwrap();

    let report = store
        .rebuild(&dir.path().join("rebuilt-2"), &SnapshotOptions::default(), &mut |_| {})
        .unwrap();
    assert!(!report.agrees());
    let bad: Vec<_> = report.tables.iter().filter(|t| t.difference.is_some()).collect();
    assert_eq!(bad.len(), 1, "{report:?}");
    assert_eq!(bad[0].table, "episodes");
    let d = bad[0].difference.as_ref().unwrap();
    assert_eq!(d.column, "reward");
    assert_eq!(d.committed, "42.0");
    assert!(d.row.starts_with("seq "), "{d:?}");
    assert_eq!(bad[0].altered_files, vec![f.path.clone()]);
    // An existing directory is refused.
    assert!(
        store
            .rebuild(&dir.path().join("rebuilt-2"), &SnapshotOptions::default(), &mut |_| {})
            .is_err()
    );
}
