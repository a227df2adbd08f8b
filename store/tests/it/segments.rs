//! The segment layout: crash images, torn tails, rolling, group commit,
//! and directories written before segments.

use std::path::Path;
use std::sync::Arc;

use fathom_core::{Event, IdKind, RunId, Seq};
use fathom_store::workload::{self, Workload, WorkloadSpec};
use fathom_store::{Durability, Options, Store};

use crate::copy_dir;

/// `log`'s event, with a message long enough that a record is hundreds
/// of bytes (the torn-tail tests cut 100).
fn finished(run: u64, n: u64) -> Event {
    let mut e = crate::log::finished(run, n);
    if let fathom_core::Payload::RunFinished(p) = &mut e.payload {
        p.message = format!("{} ", p.message).repeat(40);
    }
    e
}

/// Options whose background flush never runs during a test: sled's index
/// stays unflushed, as after a crash between flushes.
fn no_flush() -> Options {
    Options {
        relaxed_flush_ms: 3_600_000,
        ..Options::default()
    }
}

/// Copies a data directory's files as they are on disk now (without the
/// lock): what a machine would find after a crash at this moment, the page
/// cache included.
fn crash_image(from: &Path, to: &Path) {
    for sub in ["log", "segments"] {
        let src = from.join(sub);
        if !src.exists() {
            continue;
        }
        copy_dir(&src, &to.join(sub));
    }
}

fn segment_files(data: &Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(data.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    out.sort();
    out
}

#[test]
fn acknowledged_appends_survive_a_crash_before_sleds_index_is_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let image = tempfile::tempdir().unwrap();
    let mut w = Workload::new(5, RunId(1), WorkloadSpec::default());
    let store = Store::open(dir.path(), no_flush()).unwrap();
    // sled's files as the open left them (flushed): with no flush after
    // this, a crash may find exactly these, whatever sled wrote since.
    copy_dir(&dir.path().join("log"), &image.path().join("log"));
    let episode = store.next_id(IdKind::Episode).unwrap();
    let mut acked = Vec::new();
    for _ in 0..5 {
        let items = w.batch(16);
        let range = workload::append(&store, &items, Durability::Durable).unwrap().unwrap();
        acked.extend(range.iter());
    }
    let expected: Vec<_> = store.iter().map(|r| r.unwrap()).collect();
    copy_dir(&dir.path().join("segments"), &image.path().join("segments"));
    drop(store);

    let store = Store::open(image.path(), Options::default()).unwrap();
    let report = store.recovery();
    // Five chunks, 80 blobs and the counter, none of them in sled's files.
    assert_eq!(report.reindexed, 5 + 80 + 1, "{report:?}");
    assert!(report.cut.is_empty() && report.segment_cut.is_none(), "{report:?}");
    assert_eq!(store.last_seq(), *acked.last().unwrap());
    let got: Vec<_> = store.iter().map(|r| r.unwrap()).collect();
    assert_eq!(got, expected, "every acknowledged event, byte for byte");
    assert!(store.verify(&mut |_, _, _| {}).unwrap().is_ok());
    // The id counter came back from the segments too: no id twice.
    assert_eq!(store.next_id(IdKind::Episode).unwrap(), episode + 1);
    assert_eq!(store.run_events(RunId(1)).count(), acked.len());
}

#[test]
fn a_torn_segment_tail_is_cut_to_a_prefix_and_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let image = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), no_flush()).unwrap();
    for n in 1..=30 {
        store.append_with(&[finished(1, n)], Durability::Relaxed).unwrap();
    }
    crash_image(dir.path(), image.path());
    drop(store);
    // The machine died mid-write: the last segment ends inside a record.
    let seg = segment_files(image.path()).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 100).unwrap();

    let store = Store::open(image.path(), Options::default()).unwrap();
    let (at, why) = store.recovery().segment_cut.clone().expect("a cut");
    assert!(why.contains("the file holds"), "{why}");
    assert_eq!(store.last_seq(), Seq(29), "one event lost, the rest a prefix");
    let seqs: Vec<u64> = store.iter().map(|r| r.unwrap().seq.0).collect();
    assert_eq!(seqs, (1..=29).collect::<Vec<_>>());
    assert!(store.verify(&mut |_, _, _| {}).unwrap().is_ok());
    let quarantined: Vec<_> = std::fs::read_dir(image.path().join("segments/quarantine"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert!(quarantined[0].contains(&format!(".{}.", at.offset)), "{quarantined:?}");
    // Writing continues where the valid data ends.
    assert_eq!(store.append(&[finished(1, 99)]).unwrap().unwrap().first, Seq(30));
    drop(store);
    let store = Store::open(image.path(), Options::default()).unwrap();
    assert_eq!(store.get(Seq(30)).unwrap().unwrap().event, finished(1, 99));
}

#[test]
fn an_index_that_points_past_the_segments_end_is_named_and_cut() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), Options::default()).unwrap();
        for n in 1..=10 {
            store.append(&[finished(1, n)]).unwrap();
        }
        store.close().unwrap();
    }
    // Something outside fathom shortened the segment after it was synced.
    let seg = segment_files(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    let report = store.recovery();
    let (_, why) = report.segment_cut.clone().expect("the short segment is named");
    assert!(why.contains("shorter than the mark"), "{why}");
    assert_eq!(report.cut.len(), 1, "{report:?}");
    assert!(
        report.cut[0].0 == Seq(10) && report.cut[0].1.contains("gone from the segments"),
        "{report:?}"
    );
    assert_eq!(store.last_seq(), Seq(9));
    assert!(store.verify(&mut |_, _, _| {}).unwrap().is_ok());
}

#[test]
fn segments_roll_at_the_chosen_size_and_everything_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        segment_bytes: 64 << 10,
        ..Options::default()
    };
    let mut w = Workload::new(9, RunId(2), WorkloadSpec::default());
    let items = w.batch(200);
    let expected_blobs: Vec<Vec<u8>> = items.iter().map(|i| i.blob_bytes().to_vec()).collect();
    {
        let store = Store::open(dir.path(), opts.clone()).unwrap();
        for chunk in items.chunks(10) {
            workload::append(&store, chunk, Durability::Durable).unwrap();
        }
        store.close().unwrap();
    }
    let files = segment_files(dir.path());
    assert!(files.len() > 5, "{} segments", files.len());
    let store = Store::open(dir.path(), opts).unwrap();
    assert_eq!(store.last_seq(), Seq(200));
    let records: Vec<_> = store.iter().map(|r| r.unwrap()).collect();
    for (rec, body) in records.iter().zip(&expected_blobs) {
        let blob = rec.event.payload.blob_refs()[0];
        assert_eq!(&store.get_blob(&blob.digest).unwrap().unwrap(), body);
    }
    let report = store.verify(&mut |_, _, _| {}).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

#[test]
fn concurrent_durable_appenders_share_fsyncs_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), Options::default()).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..25)
                    .map(|n| store.append(&[finished(t, n)]).unwrap().unwrap().first)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .map(|s| s.0)
        .collect();
    seqs.sort();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    let store = Arc::into_inner(store).unwrap();
    store.close().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(store.iter().count(), 200);
    for t in 0..8 {
        assert_eq!(store.run_events(RunId(t)).count(), 25);
    }
}

#[test]
fn an_event_over_the_old_192_kib_limit_is_stored() {
    let (_dir, store) = crate::temp_store();
    let mut big = finished(1, 1);
    if let fathom_core::Payload::RunFinished(p) = &mut big.payload {
        p.message = "y".repeat(3 << 20);
    }
    store.append(&[finished(1, 0), big.clone(), finished(1, 2)]).unwrap();
    assert_eq!(store.get(Seq(2)).unwrap().unwrap().event, big);
    assert_eq!(store.iter().count(), 3);
}

/// A data directory written by fathom before segments existed (frames and
/// blobs inline in sled), committed as a fixture: 62 events, 48 blobs.
fn v1_directory() -> tempfile::TempDir {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-data");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    std::fs::create_dir_all(log.join("blobs")).unwrap();
    std::fs::copy(fixture.join("conf"), log.join("conf")).unwrap();
    let db = zstd::decode_all(std::fs::File::open(fixture.join("db.zst")).unwrap()).unwrap();
    std::fs::write(log.join("db"), db).unwrap();
    dir
}

#[test]
fn a_directory_from_before_segments_reads_verifies_and_takes_new_appends() {
    let dir = v1_directory();
    let before: Vec<_>;
    {
        let store = Store::open(dir.path(), Options::default()).unwrap();
        assert_eq!(store.last_seq(), Seq(62));
        let report = store.verify(&mut |_, _, _| {}).unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!((report.events, report.blobs), (62, 48));
        before = store.iter().map(|r| r.unwrap()).collect();
        for rec in &before {
            for blob in rec.event.payload.blob_refs() {
                assert_eq!(store.get_blob(&blob.digest).unwrap().unwrap().len() as u64, blob.len);
            }
        }
        // New appends go to segments, beside the old inline chunks.
        let mut w = Workload::new(11, RunId(1), WorkloadSpec::default()).ids_after(100, 100);
        workload::append(&store, &w.batch(20), Durability::Durable).unwrap();
        store.close().unwrap();
    }
    assert!(!segment_files(dir.path()).is_empty());
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(store.last_seq(), Seq(82));
    let all: Vec<_> = store.iter().map(|r| r.unwrap()).collect();
    assert_eq!(&all[..62], &before[..]);
    let report = store.verify(&mut |_, _, _| {}).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.events, 82);
    let stats = store.stats().unwrap();
    assert_eq!(stats.events, 82);
    assert!(stats.blobs > 48, "{stats:?}");
}

#[test]
fn verify_names_a_record_whose_only_damage_is_its_checksum() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), Options::default()).unwrap();
        store.append(&[finished(1, 1), finished(1, 2)]).unwrap();
        store.close().unwrap();
    }
    // The first record starts right after the 32-byte segment header; its
    // checksum is bytes 12..16 of the record.
    let seg = segment_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[32 + 12] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(store.iter().count(), 2, "the frames are intact and read");
    let report = store.verify(&mut |_, _, _| {}).unwrap();
    let problems: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("the chunk starting at event 1") && problems[0].contains("record checksum mismatch"),
        "{problems:?}"
    );
}

/// A closed data directory with 6 batches of turns and pages (96 events).
fn written_directory() -> (tempfile::TempDir, Vec<fathom_core::Record>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Workload::new(21, RunId(4), WorkloadSpec::default());
    let store = Store::open(dir.path(), Options::default()).unwrap();
    let episode = store.reserve_ids(IdKind::Episode, 7).unwrap();
    for _ in 0..6 {
        workload::append(&store, &w.batch(16), Durability::Durable).unwrap();
    }
    let all = store.iter().map(|r| r.unwrap()).collect();
    store.close().unwrap();
    (dir, all, episode)
}

#[test]
fn repair_rebuilds_a_lost_index_from_the_segments() {
    let (dir, before, episode) = written_directory();
    // sled's files are gone (or too damaged for sled to open).
    std::fs::remove_dir_all(dir.path().join("log")).unwrap();
    let (store, aside) = Store::repair(dir.path(), Options::default()).unwrap();
    assert!(!aside.exists(), "there was no old index to keep");
    assert!(store.recovery().damaged.is_empty());
    let after: Vec<_> = store.iter().map(|r| r.unwrap()).collect();
    assert_eq!(after, before, "every event, byte for byte");
    for rec in &after {
        for blob in rec.event.payload.blob_refs() {
            assert_eq!(store.get_blob(&blob.digest).unwrap().unwrap().len() as u64, blob.len);
        }
    }
    assert_eq!(store.run_events(RunId(4)).count(), 96);
    let report = store.verify(&mut |_, _, _| {}).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(
        store.next_id(IdKind::Episode).unwrap(),
        episode + 1,
        "counters come back"
    );
}

#[test]
fn repair_keeps_every_intact_record_around_damaged_ones() {
    let (dir, before, _) = written_directory();
    let seg = segment_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    // Find the record headers, then damage two chunk records in the middle:
    // one in its body (a frame), one in its header's magic.
    let mut records = Vec::new();
    let mut at = 32usize;
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        records.push((at, bytes[at + 4], len));
        at += 16 + len;
    }
    let chunks: Vec<_> = records.iter().filter(|r| r.1 == 1).collect();
    assert_eq!(chunks.len(), 6);
    let (body_hit, _, len) = *chunks[1];
    bytes[body_hit + 16 + len - 20] ^= 0x40;
    let (header_hit, _, _) = *chunks[3];
    bytes[header_hit] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    std::fs::remove_dir_all(dir.path().join("log")).unwrap();

    let (store, _) = Store::repair(dir.path(), Options::default()).unwrap();
    let damaged = &store.recovery().damaged;
    assert_eq!(damaged.len(), 2, "{damaged:?}");
    assert!(
        damaged.iter().any(|(_, why)| why.contains("bad record magic")),
        "{damaged:?}"
    );
    // Events of the chunk with a bad header are lost (49..=64); the chunk
    // with a damaged frame is indexed, and only that frame is unreadable.
    let readable: Vec<u64> = store.iter().filter_map(Result::ok).map(|r| r.seq.0).collect();
    let expected: Vec<u64> = (1..=96).filter(|s| !(49..=64).contains(s) && *s != 32).collect();
    assert_eq!(readable, expected);
    for rec in store.iter().filter_map(Result::ok) {
        assert_eq!(rec, before[rec.seq.0 as usize - 1]);
    }
    let report = store.verify(&mut |_, _, _| {}).unwrap();
    let problems: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
    assert!(
        problems.iter().any(|p| p.starts_with("event 32 is corrupt")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("jump from 48 to 65")),
        "{problems:?}"
    );
}

#[test]
fn repair_refuses_a_directory_whose_first_events_predate_segments() {
    let dir = v1_directory();
    {
        let store = Store::open(dir.path(), Options::default()).unwrap();
        store.append(&[finished(1, 1)]).unwrap();
        store.close().unwrap();
    }
    let err = Store::repair(dir.path(), Options::default()).unwrap_err().to_string();
    assert!(
        err.contains("events 1 to 62") && err.contains("only in sled's files"),
        "{err}"
    );
    assert!(dir.path().join("log").exists(), "nothing moved");
}
