//! Run with: `cargo bench -p fathom-store --bench append` (then
//! `python3 scripts/bench-summary` for the ratio table in docs/BENCHMARKS.md).
//!
//! Appends realistic events (model turns of about 2 KB with their token ids
//! as a blob; web exchanges with 20–200 KB HTML bodies as blobs) in batches
//! of 1, 64 and 1024, and compares four systems on the same bytes in the
//! same process:
//!
//! - `fathom-durable`: `workload::append` in durable mode (hash, compress,
//!   frame, sled batch, flush + fsync);
//! - `fathom-relaxed`: the same, returning before the flush;
//! - `file-fdatasync`: the physical limit: the same frames and raw bodies,
//!   pre-encoded, appended to a plain file with one `fdatasync` per batch;
//! - `sqlite-wal`: SQLite in WAL mode with `synchronous=FULL`, one
//!   transaction per batch, frames and bodies pre-encoded (what MLflow-style
//!   trackers do).
//!
//! `append/concurrent` appends single events from 8 threads at once, durable,
//! against the same threads writing to a plain file with an fdatasync per
//! append: what group commit buys.
//!
//! Throughput is the plain bytes per batch (frames plus raw blobs), so all
//! four are measured in the same unit. Blob contents are made unique per
//! iteration so that deduplication never flatters fathom.

use std::io::Write;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fathom_core::RunId;
use fathom_store::workload::{self, Item, Workload, WorkloadSpec};
use fathom_store::{Durability, Options, Store};

const BATCHES: [usize; 3] = [1, 64, 1024];

#[derive(Clone, Copy, Debug)]
enum Kind {
    Turns,
    Pages,
}

/// A pool of pre-generated items; each use stamps a counter into every blob
/// so its digest is new.
struct Pool {
    items: Vec<Item>,
    next: usize,
    stamp: u64,
}

impl Pool {
    fn new(kind: Kind, n: usize) -> Pool {
        let mut w = Workload::new(7, RunId(1), WorkloadSpec::default());
        let items = (0..n)
            .map(|_| match kind {
                Kind::Turns => w.next_turn(),
                Kind::Pages => w.next_exchange(),
            })
            .collect();
        Pool {
            items,
            next: 0,
            stamp: 0,
        }
    }

    fn batch(&mut self, n: usize) -> Vec<Item> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let mut item = self.items[self.next % self.items.len()].clone();
            self.next += 1;
            self.stamp += 1;
            let blob = item.blob_bytes_mut();
            let stamp = self.stamp.to_le_bytes();
            let k = blob.len().min(8);
            blob[..k].copy_from_slice(&stamp[..k]);
            out.push(item);
        }
        out
    }
}

fn plain_bytes(items: &[Item]) -> u64 {
    items.iter().map(|i| i.plain_bytes().len() as u64).sum()
}

fn bench_kind(c: &mut Criterion, kind: Kind) {
    let name = match kind {
        Kind::Turns => "append/turns",
        Kind::Pages => "append/pages",
    };
    let mut group = c.benchmark_group(name);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    let mut pool = Pool::new(kind, 256);
    for &batch in &BATCHES {
        // Every system is credited with the same plain bytes per batch.
        let sample = pool.batch(batch);
        group.throughput(Throughput::Bytes(plain_bytes(&sample)));

        for (label, durability) in [
            ("fathom-durable", Durability::Durable),
            ("fathom-relaxed", Durability::Relaxed),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), Options::default()).unwrap();
            group.bench_function(BenchmarkId::new(label, batch), |b| {
                b.iter_batched(
                    || pool.batch(batch),
                    |items| workload::append(&store, &items, durability).unwrap(),
                    BatchSize::PerIteration,
                )
            });
            store.close().unwrap();
        }

        {
            let dir = tempfile::tempdir().unwrap();
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.path().join("events.log"))
                .unwrap();
            group.bench_function(BenchmarkId::new("file-fdatasync", batch), |b| {
                b.iter_batched(
                    || {
                        pool.batch(batch)
                            .iter()
                            .flat_map(Item::plain_bytes)
                            .collect::<Vec<u8>>()
                    },
                    |bytes| {
                        file.write_all(&bytes).unwrap();
                        // std's sync_data is fdatasync(2) on Linux.
                        file.sync_data().unwrap();
                    },
                    BatchSize::PerIteration,
                )
            });
        }

        {
            let dir = tempfile::tempdir().unwrap();
            let mut db = rusqlite::Connection::open(dir.path().join("events.sqlite")).unwrap();
            db.execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
                 CREATE TABLE events(seq INTEGER PRIMARY KEY, run INTEGER, kind INTEGER, frame BLOB);
                 CREATE TABLE blobs(digest BLOB PRIMARY KEY, body BLOB);",
            )
            .unwrap();
            group.bench_function(BenchmarkId::new("sqlite-wal", batch), |b| {
                b.iter_batched(
                    || {
                        pool.batch(batch)
                            .into_iter()
                            .map(|item| {
                                let digest = fathom_store::blob::digest(item.blob_bytes());
                                let plain = item.plain_bytes();
                                let frame_len = plain.len() - item.blob_bytes().len();
                                (
                                    plain[..frame_len].to_vec(),
                                    digest.0.to_vec(),
                                    item.blob_bytes().to_vec(),
                                )
                            })
                            .collect::<Vec<_>>()
                    },
                    |rows| {
                        let tx = db.transaction().unwrap();
                        {
                            let mut blob = tx
                                .prepare_cached("INSERT OR IGNORE INTO blobs VALUES (?1, ?2)")
                                .unwrap();
                            let mut ev = tx
                                .prepare_cached("INSERT INTO events(run, kind, frame) VALUES (1, 5, ?1)")
                                .unwrap();
                            for (frame, digest, body) in &rows {
                                blob.execute(rusqlite::params![digest, body]).unwrap();
                                ev.execute(rusqlite::params![frame]).unwrap();
                            }
                        }
                        tx.commit().unwrap();
                    },
                    BatchSize::PerIteration,
                )
            });
        }
    }
    group.finish();
}

/// Single-event durable appends from 8 threads at once: with group commit
/// they share fdatasyncs. Baseline: the same threads appending their frames
/// to one plain file, each append followed by its own fdatasync (what a
/// log without group commit pays). Throughput: events.
fn bench_concurrent(c: &mut Criterion) {
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 25;
    let mut group = c.benchmark_group("append/concurrent");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(6));
    group.throughput(Throughput::Elements((WRITERS * PER_WRITER) as u64));
    let mut w = Workload::new(3, RunId(1), WorkloadSpec::default());
    let events: Vec<fathom_core::Event> = (0..WRITERS * PER_WRITER)
        .map(|_| {
            let item = w.next_turn();
            item.event_with(fathom_core::BlobRef {
                digest: fathom_store::blob::digest(item.blob_bytes()),
                len: item.blob_bytes().len() as u64,
            })
        })
        .collect();
    let events = std::sync::Arc::new(events);

    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(Store::open(dir.path(), Options::default()).unwrap());
    group.bench_function(BenchmarkId::new("fathom-durable", WRITERS), |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for t in 0..WRITERS {
                    let (store, events) = (&store, &events);
                    s.spawn(move || {
                        for e in &events[t * PER_WRITER..(t + 1) * PER_WRITER] {
                            store.append(std::slice::from_ref(e)).unwrap();
                        }
                    });
                }
            })
        })
    });

    let frames: Vec<Vec<u8>> = events
        .iter()
        .enumerate()
        .map(|(i, e)| fathom_store::frame::encode(fathom_core::Seq(i as u64 + 1), e).unwrap())
        .collect();
    let file = std::sync::Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("events.log"))
            .unwrap(),
    );
    group.bench_function(BenchmarkId::new("file-fdatasync-each", WRITERS), |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for t in 0..WRITERS {
                    let (file, frames) = (&file, &frames);
                    s.spawn(move || {
                        for f in &frames[t * PER_WRITER..(t + 1) * PER_WRITER] {
                            let mut file = file.lock().unwrap();
                            file.write_all(f).unwrap();
                            file.sync_data().unwrap();
                        }
                    });
                }
            })
        })
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    bench_kind(c, Kind::Turns);
    bench_kind(c, Kind::Pages);
    bench_concurrent(c);
}

criterion_group!(append, benches);
criterion_main!(append);
