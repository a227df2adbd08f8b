//! Golden-format tests: the bytes of every v1 layout are pinned.
//!
//! If one of these fails, a shipped layout changed. That is never allowed:
//! add a new layout version with a migration instead (store/README.md).

use fathom_core::Seq;
use fathom_core::event::fixtures;
use fathom_store::frame;

fn frames() -> Vec<(String, Vec<u8>)> {
    fixtures::events()
        .iter()
        .enumerate()
        .map(|(i, e)| {
            (
                e.kind().name().to_string(),
                frame::encode(Seq(i as u64 + 1), e).unwrap(),
            )
        })
        .collect()
}

fn hex_dump(bytes: &[u8]) -> String {
    bytes.chunks(32).map(hex::encode).collect::<Vec<_>>().join("\n")
}

/// The committed fixture: every kind as written by format version 1. It is
/// regenerated only by `UPDATE_FIXTURES=1` and must then be reviewed.
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/frames-v1.txt");

#[test]
fn v1_fixture_log_still_decodes_to_the_same_events() {
    let rendered: String = frames()
        .iter()
        .map(|(name, bytes)| format!("# {name}\n{}\n", hex_dump(bytes)))
        .collect();
    if std::env::var_os("UPDATE_FIXTURES").is_some() {
        std::fs::write(FIXTURE, &rendered).unwrap();
    }
    let committed = std::fs::read_to_string(FIXTURE).expect("fixture file is committed");
    let mut decoded = Vec::new();
    for (i, block) in committed.split("# ").filter(|b| !b.is_empty()).enumerate() {
        let (name, hex_lines) = block.split_once('\n').unwrap();
        let bytes = hex::decode(hex_lines.replace('\n', "")).unwrap();
        let (header, event) = frame::decode(Seq(i as u64 + 1), &bytes).unwrap();
        assert_eq!(header.kind.name(), name);
        decoded.push(event);
    }
    assert_eq!(decoded, fixtures::events(), "old frames must decode to the same events");
    assert_eq!(committed, rendered, "encoding of a shipped layout changed");
}

#[test]
fn frame_bytes_of_every_kind_are_pinned() {
    // A compact pin: kind, frame length and CRC of each kind's frame. The
    // fixture test above pins every byte; this one makes a diff readable.
    let summary: String = frames()
        .iter()
        .map(|(name, bytes)| {
            format!(
                "{name:<20} {:>5} bytes  crc {}\n",
                bytes.len(),
                hex::encode(&bytes[44..48])
            )
        })
        .collect();
    expect_test::expect![[r#"
        run_started            176 bytes  crc 4a1750f3
        run_finished            72 bytes  crc 81b19bed
        question_sampled       192 bytes  crc d8698c03
        episode_started        136 bytes  crc 8f8089f2
        turn_generated         344 bytes  crc c704465a
        tool_called            120 bytes  crc 2bda05fc
        web_exchange           344 bytes  crc 36505a00
        page_segment_read      192 bytes  crc c54fbe4a
        tool_result            168 bytes  crc 96c3e183
        episode_finished       152 bytes  crc 56f0aa57
        behaviour_tagged       128 bytes  crc 9fd3a47d
        gradient_update        144 bytes  crc 747e36c5
        checkpoint_saved       248 bytes  crc 8c7ac08c
        eval_result            120 bytes  crc ca2ca5a3
        snapshot_committed     168 bytes  crc 9e665268
    "#]]
    .assert_eq(&summary);
}

/// The committed segment fixture: a segment as format version 1 writes it
/// (header, an id counter record, a blob record, a chunk record).
const SEGMENT_FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/segment-v1.txt");

#[test]
fn v1_segment_fixture_still_reads_back_and_its_bytes_are_pinned() {
    use fathom_store::disk::SimDisk;
    use fathom_store::{Options, Store};
    use std::sync::Arc;

    let events: Vec<_> = crate::events_without_blobs().into_iter().take(3).collect();
    let write = |disk: &SimDisk| {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            disk: Arc::new(disk.clone()),
            ..Options::default()
        };
        let store = Store::open(dir.path(), opts).unwrap();
        store.next_id(fathom_core::IdKind::Episode).unwrap();
        store.put_blob(b"a golden blob").unwrap();
        store.append(&events).unwrap();
        store.close().unwrap();
        disk.read_file(&dir.path().join("segments").join(fathom_store::segment::file_name(1)))
            .unwrap()
    };
    let rendered = format!("{}\n", hex_dump(&write(&SimDisk::new(1))));
    if std::env::var_os("UPDATE_FIXTURES").is_some() {
        std::fs::write(SEGMENT_FIXTURE, &rendered).unwrap();
    }
    let committed = std::fs::read_to_string(SEGMENT_FIXTURE).expect("fixture file is committed");

    // The committed bytes alone (no sled index) open as a log: recovery
    // indexes them, and they read back as the same events, blob and id.
    let disk = SimDisk::new(2);
    let dir = tempfile::tempdir().unwrap();
    let seg = dir.path().join("segments").join(fathom_store::segment::file_name(1));
    disk.write_file(&seg, hex::decode(committed.replace('\n', "")).unwrap());
    let opts = Options {
        disk: Arc::new(disk.clone()),
        ..Options::default()
    };
    let store = Store::open(dir.path(), opts).unwrap();
    let read: Vec<_> = store.iter().map(|r| r.unwrap().event).collect();
    assert_eq!(read, events, "old segments must decode to the same events");
    let digest = fathom_store::blob::digest(b"a golden blob");
    assert_eq!(store.get_blob(&digest).unwrap().unwrap(), b"a golden blob");
    assert_eq!(store.next_id(fathom_core::IdKind::Episode).unwrap(), 2);
    assert_eq!(committed, rendered, "the segment layout changed");
}
