//! Integration tests of the store: one binary, modules by topic.

mod golden;
mod log;
mod properties;
mod segments;
mod simulation;
mod verl;

use fathom_store::{Options, Store};

/// A store in a fresh temporary directory.
pub fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    (dir, store)
}

/// The core fixtures with their (made-up) blob references removed, for tests
/// that verify the whole store and would otherwise see missing blobs.
pub fn events_without_blobs() -> Vec<fathom_core::Event> {
    use fathom_core::Payload;
    let mut events = fathom_core::event::fixtures::events();
    for e in &mut events {
        match &mut e.payload {
            Payload::TurnGenerated(t) => {
                t.token_ids = None;
                t.logprobs = None;
            }
            Payload::WebExchange(w) => w.body = None,
            _ => {}
        }
    }
    events
}
mod snapshot;
mod tables;

/// Copies a directory tree (sled's files, for crash images).
pub fn copy_dir(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &dst.join(entry.file_name()));
        } else {
            std::fs::copy(&path, dst.join(entry.file_name())).unwrap();
        }
    }
}
