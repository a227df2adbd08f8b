//! Run with: `cargo run --release -p fathom-store --example phases -- turns|pages [ZSTD_LEVEL]`
//!
//! Where an append's time goes: blob put (hash, presence check, compression,
//! sled batch), event append (frames, chunk, index, sled batch) and flush,
//! per batch of 64 synthetic items. A diagnostic for tuning the store; the
//! criterion benchmark (`benches/append.rs`) is the measurement of record.

// Wall-clock timing is this tool's whole purpose.
#![allow(clippy::disallowed_methods)]
use fathom_core::RunId;
use fathom_store::workload::{Item, Workload, WorkloadSpec};
use fathom_store::{Durability, Options, Store};
use std::time::Instant;
fn main() {
    let kind = std::env::args().nth(1).unwrap_or("turns".into());
    let level: i32 = std::env::args().nth(2).map(|s| s.parse().unwrap()).unwrap_or(1);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path(),
        Options {
            blob_level: level,
            ..Options::default()
        },
    )
    .unwrap();
    let mut w = Workload::new(1, RunId(1), WorkloadSpec::default());
    let batches: Vec<Vec<Item>> = (0..40)
        .map(|_| {
            (0..64)
                .map(|_| {
                    if kind == "turns" {
                        w.next_turn()
                    } else {
                        w.next_exchange()
                    }
                })
                .collect()
        })
        .collect();
    let (mut tb, mut ta, mut tf) = (0.0, 0.0, 0.0);
    for items in &batches {
        let bodies: Vec<&[u8]> = items.iter().map(Item::blob_bytes).collect();
        let t1 = Instant::now();
        let refs = store.put_blobs(&bodies).unwrap();
        let t2 = Instant::now();
        let events: Vec<_> = items.iter().zip(refs).map(|(i, r)| i.event_with(r)).collect();
        store.append_with(&events, Durability::Relaxed).unwrap();
        let t3 = Instant::now();
        store.flush().unwrap();
        let t4 = Instant::now();
        tb += (t2 - t1).as_secs_f64();
        ta += (t3 - t2).as_secs_f64();
        tf += (t4 - t3).as_secs_f64();
    }
    let n = batches.len() as f64 / 1000.0;
    println!(
        "per batch ms: put_blobs {:.2} append {:.2} flush {:.2} total {:.2}",
        tb / n,
        ta / n,
        tf / n,
        (tb + ta + tf) / n
    );
}
