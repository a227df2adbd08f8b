//! Property tests of what the store parses from bytes it did not write
//! itself: frames read back from disk, and snapshot manifests.

use fathom_core::Seq;
use fathom_core::event::fixtures;
use fathom_store::frame;
use fathom_store::snapshot::Snapshots;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes decode to an error, never a panic.
    #[test]
    fn arbitrary_bytes_are_refused_as_a_frame(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        // A random string that happens to be a valid frame is vanishingly
        // unlikely; what matters is that decoding answers.
        let _ = frame::decode(Seq(1), &bytes);
    }

    /// Any one byte of any frame changed is caught: the frame is refused,
    /// not read as another event.
    #[test]
    fn a_frame_with_one_byte_changed_is_refused(
        which in 0..fixtures::events().len(),
        at in any::<prop::sample::Index>(),
        flip in 1..=255u8,
    ) {
        let event = &fixtures::events()[which];
        let mut bytes = frame::encode(Seq(7), event).unwrap();
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        prop_assert!(frame::decode(Seq(7), &bytes).is_err(), "byte {} of a {} frame", i, event.kind().name());
    }

    /// A frame cut short is refused.
    #[test]
    fn a_truncated_frame_is_refused(which in 0..fixtures::events().len(), keep in any::<prop::sample::Index>()) {
        let bytes = frame::encode(Seq(3), &fixtures::events()[which]).unwrap();
        let n = keep.index(bytes.len());
        prop_assert!(frame::decode(Seq(3), &bytes[..n]).is_err());
    }

    /// A manifest of arbitrary text is refused as damage (never called a
    /// bug, never a panic); JSON mutations of a real one likewise, or read.
    #[test]
    fn any_manifest_text_is_read_or_refused_as_damage(text in prop_oneof![
        any::<String>(),
        Just(r#"{"format":1,"generation":3,"upto_seq":10,"files":[],"carry":{}}"#.to_string()),
        "[{}\\[\\]\":,0-9a-z ]{0,80}".prop_map(|s| format!(r#"{{"format":1,"generation":{s}"#)),
    ]) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("manifest.json"), &text).unwrap();
        match Snapshots::new(dir.path()).manifest() {
            Ok(m) => { let _ = m.problems(Some(5)); }
            Err(e) => prop_assert!(matches!(e, fathom_store::Error::Snapshot(_)), "{}", e),
        }
    }
}
