//! Deterministic storage simulation (in the manner of TigerBeetle's VOPR and
//! FoundationDB's simulation tests): a seeded workload of appends (durable
//! and relaxed), blob puts, id allocations, flushes, full disks, failed
//! syncs, crashes and reopens runs against a simulated disk under the
//! segment files. After every crash and reopen it checks that every
//! acknowledged durable event is there byte for byte, that sequence
//! numbers are dense, that only a suffix of relaxed events was lost, that
//! nothing unacknowledged appears half-written, that ids are never handed
//! out twice, and that verify agrees.
//!
//! sled does its own I/O on a real temporary directory. A crash gives it
//! one of two states it could really be found in: as at its last flush
//! (a copy taken then), or with everything it held written (its files as
//! it closes).
//!
//! `FATHOM_SIM_SECONDS` bounds the run (default 60), `FATHOM_SIM_SEED`
//! runs one seed. A failure prints the command that reproduces it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use fathom_core::event::{RunFinished, RunStatus};
use fathom_core::{Clock, Digest, Event, IdKind, Payload, RunId, SeededRng, SystemClock, Timestamp};
use fathom_store::disk::{CrashMode, Fault, SimDisk};
use fathom_store::{Durability, Error, Options, Store};

use crate::copy_dir;

/// What the workload believes the log holds.
#[derive(Default)]
struct Model {
    /// Every event an append assigned a number to, acknowledged or not.
    written: BTreeMap<u64, Event>,
    /// Every number at or below this was acknowledged durable.
    durable_through: u64,
    /// Blob contents by digest.
    blobs: HashMap<Digest, Vec<u8>>,
    /// Ids handed out, by kind tag: the largest, and the largest durable.
    ids: HashMap<u8, (u64, u64)>,
}

impl Model {
    fn made_durable(&mut self, through: u64) {
        self.durable_through = self.durable_through.max(through);
        for v in self.ids.values_mut() {
            v.1 = v.0;
        }
    }
}

fn event(rng: &mut SeededRng, blob: Option<fathom_core::BlobRef>, n: u64) -> Event {
    match blob {
        Some(b) => {
            let mut e = fathom_core::event::fixtures::events()
                .into_iter()
                .find(|e| matches!(e.payload, Payload::WebExchange(_)))
                .expect("a web exchange fixture");
            if let Payload::WebExchange(w) = &mut e.payload {
                w.body = Some(b);
                w.target = format!("https://example.org/{n}");
            }
            e
        }
        None => Event::new(
            RunId(1 + rng.below(3)),
            Timestamp(n as i64),
            RunFinished {
                status: RunStatus::Completed,
                steps_completed: n,
                message: "m".repeat(rng.below(3000) as usize),
            },
        ),
    }
}

struct Sim {
    seed: u64,
    rng: SeededRng,
    disk: SimDisk,
    dir: tempfile::TempDir,
    saved: tempfile::TempDir,
    model: Model,
    n: u64,
    crashes: u32,
}

impl Sim {
    fn opts(&self) -> Options {
        Options {
            disk: Arc::new(self.disk.clone()),
            relaxed_flush_ms: 3_600_000,
            segment_bytes: 64 << 10,
            ..Options::default()
        }
    }

    /// Keeps a copy of sled's files as they are after a flush.
    fn save_sled(&self) {
        let to = self.saved.path().join("log");
        let _ = std::fs::remove_dir_all(&to);
        copy_dir(&self.dir.path().join("log"), &to);
    }

    fn open(&mut self) -> Result<Store, String> {
        let store = Store::open(self.dir.path(), self.opts()).map_err(|e| format!("reopen failed: {e}"))?;
        self.check(&store)?;
        self.save_sled();
        Ok(store)
    }

    /// The properties, after an open.
    fn check(&mut self, store: &Store) -> Result<(), String> {
        let last = store.last_seq().0;
        if last < self.model.durable_through {
            return Err(format!(
                "acknowledged durable events lost: the log ends at {last}, {} were acknowledged ({:?})",
                self.model.durable_through,
                store.recovery()
            ));
        }
        let mut expected = 1;
        for rec in store.iter() {
            let rec = rec.map_err(|e| format!("a recovered event does not read: {e}"))?;
            if rec.seq.0 != expected {
                return Err(format!("sequence numbers jump from {} to {}", expected - 1, rec.seq));
            }
            match self.model.written.get(&rec.seq.0) {
                Some(e) if *e == rec.event => {}
                Some(_) => return Err(format!("event {} differs from what was appended", rec.seq)),
                None => return Err(format!("event {} was never appended", rec.seq)),
            }
            for blob in rec.event.payload.blob_refs() {
                let got = store
                    .get_blob(&blob.digest)
                    .map_err(|e| format!("blob of event {}: {e}", rec.seq))?;
                if got.as_ref() != self.model.blobs.get(&blob.digest) {
                    return Err(format!("the blob of event {} is missing or wrong", rec.seq));
                }
            }
            expected += 1;
        }
        if expected - 1 != last {
            return Err(format!("last_seq says {last}, the log reads to {}", expected - 1));
        }
        // What was lost is a suffix: forget it, the next appends reuse it.
        self.model.written.retain(|&s, _| s <= last);
        let report = store
            .verify(&mut |_, _, _| {})
            .map_err(|e| format!("verify failed: {e}"))?;
        if !report.is_ok() {
            let problems: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
            return Err(format!("verify disagrees: {problems:?}"));
        }
        for kind in [IdKind::Episode, IdKind::Run] {
            let durable = self.model.ids.get(&kind.tag()).map_or(0, |v| v.1);
            let next = store.next_id(kind).map_err(|e| e.to_string())?;
            if next <= durable {
                return Err(format!(
                    "id {next} of kind {kind:?} handed out again (durable up to {durable})"
                ));
            }
            let v = self.model.ids.entry(kind.tag()).or_default();
            v.0 = next;
        }
        Ok(())
    }

    fn crash(&mut self, store: Store) -> Result<Store, String> {
        self.crashes += 1;
        let mode = match self.rng.below(3) {
            0 => CrashMode::LoseUnsynced,
            1 => CrashMode::TearLast,
            _ => CrashMode::TearAndFlip,
        };
        store.abandon();
        self.disk.crash(mode, &mut self.rng);
        if self.rng.below(2) == 0 {
            // sled as at its last flush.
            let log = self.dir.path().join("log");
            std::fs::remove_dir_all(&log).unwrap();
            copy_dir(&self.saved.path().join("log"), &log);
        }
        self.open()
    }

    fn step(&mut self, store: Store) -> Result<Store, String> {
        let roll = self.rng.below(100);
        match roll {
            0..=49 => {
                let durability = if self.rng.below(2) == 0 {
                    Durability::Durable
                } else {
                    Durability::Relaxed
                };
                let count = 1 + self.rng.below(8);
                let mut bodies = Vec::new();
                for _ in 0..count {
                    if self.rng.below(2) == 0 {
                        let mut b = vec![0u8; 100 + self.rng.below(20_000) as usize];
                        self.rng.fill_bytes(&mut b[..64]);
                        bodies.push(Some(b));
                    } else {
                        bodies.push(None);
                    }
                }
                let fault = self.rng.below(100);
                if fault < 8 {
                    self.disk.inject(Fault::NoSpaceOnWrite);
                } else if fault < 12 && durability == Durability::Durable {
                    self.disk.inject(Fault::IoErrorOnSync);
                }
                let items: Vec<&[u8]> = bodies.iter().flatten().map(Vec::as_slice).collect();
                let refs = match store.put_blobs(&items) {
                    Ok(r) => r,
                    Err(e) => return self.after_error(store, e),
                };
                for (r, b) in refs.iter().zip(&items) {
                    self.model.blobs.insert(r.digest, b.to_vec());
                }
                let mut refs = refs.into_iter();
                let events: Vec<Event> = bodies
                    .iter()
                    .map(|b| {
                        self.n += 1;
                        let blob = b.as_ref().and_then(|_| refs.next());
                        event(&mut self.rng, blob, self.n)
                    })
                    .collect();
                let first = store.last_seq().0 + 1;
                match store.append_with(&events, durability) {
                    Ok(Some(range)) => {
                        if range.first.0 != first {
                            return Err(format!("append got {} where {first} was next", range.first));
                        }
                        for (i, e) in events.into_iter().enumerate() {
                            self.model.written.insert(first + i as u64, e);
                        }
                        if durability == Durability::Durable {
                            self.model.made_durable(range.last.0);
                        }
                        Ok(store)
                    }
                    Ok(None) => Err("a non-empty append returned no range".into()),
                    Err(e) => {
                        // A sync that failed after the batch was written:
                        // the events may or may not survive. (A full disk
                        // fails before the batch is numbered.)
                        if !matches!(e, Error::DiskFull { .. }) {
                            for (i, e) in events.into_iter().enumerate() {
                                self.model.written.insert(first + i as u64, e);
                            }
                        }
                        self.after_error(store, e)
                    }
                }
            }
            50..=59 => {
                let kind = if self.rng.below(2) == 0 {
                    IdKind::Episode
                } else {
                    IdKind::Run
                };
                match store.next_id(kind) {
                    Ok(id) => {
                        let v = self.model.ids.entry(kind.tag()).or_default();
                        if id <= v.0 {
                            return Err(format!("id {id} handed out twice"));
                        }
                        v.0 = id;
                        Ok(store)
                    }
                    Err(e) => self.after_error(store, e),
                }
            }
            60..=69 => match store.flush() {
                Ok(()) => {
                    let last = store.last_seq().0;
                    self.model.made_durable(last);
                    self.save_sled();
                    Ok(store)
                }
                Err(e) => self.after_error(store, e),
            },
            70..=79 => {
                store.close().map_err(|e| format!("close failed: {e}"))?;
                let last = self.model.written.keys().next_back().copied().unwrap_or(0);
                self.model.made_durable(last);
                self.open()
            }
            _ => self.crash(store),
        }
    }

    /// An injected fault surfaced as an error: a full disk leaves the store
    /// usable; a failed sync makes it refuse writes until reopened.
    fn after_error(&mut self, store: Store, e: Error) -> Result<Store, String> {
        match e {
            Error::DiskFull { ref dir, .. } => {
                if dir != self.dir.path() {
                    return Err(format!(
                        "the full-disk error names {} (expected the data directory): {e}",
                        dir.display()
                    ));
                }
                // Space is back: the next write must succeed.
                let first = store.last_seq().0 + 1;
                self.n += 1;
                let ev = event(&mut self.rng, None, self.n);
                match store.append(std::slice::from_ref(&ev)) {
                    Ok(Some(r)) if r.first.0 == first => {
                        self.model.written.insert(first, ev);
                        self.model.made_durable(first);
                        Ok(store)
                    }
                    other => Err(format!("after a full disk, an append gave {other:?}")),
                }
            }
            Error::Io { ref source, .. } if source.to_string().contains("input/output error") => {
                // The store refuses writes now; reopening finds the truth.
                if store.append(&[event(&mut self.rng, None, 0)]).is_ok() {
                    return Err("the store took a write after a failed fdatasync".into());
                }
                store.abandon();
                self.open()
            }
            other => Err(format!("unexpected error: {other}")),
        }
    }
}

/// A temporary directory in memory where the machine has one: sled's
/// fsyncs there cost nothing, and the simulation runs several times more
/// seeds in its time.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::tempdir_in(shm)
    {
        return d;
    }
    tempfile::tempdir().unwrap()
}

fn run_seed(seed: u64) -> Result<u32, String> {
    let mut sim = Sim {
        seed,
        rng: SeededRng::new(seed),
        disk: SimDisk::new(seed ^ 0x9e37_79b9_7f4a_7c15),
        dir: scratch(),
        saved: scratch(),
        model: Model::default(),
        n: 0,
        crashes: 0,
    };
    let mut store = sim.open()?;
    let steps = 10 + sim.rng.below(30);
    for _ in 0..steps {
        store = sim.step(store)?;
    }
    // Always end with a crash and a check.
    sim.crash(store)?;
    let _ = sim.seed;
    Ok(sim.crashes)
}

#[test]
fn the_log_survives_simulated_crashes_torn_writes_bit_flips_full_disks_and_failed_syncs() {
    if let Some(seed) = std::env::var("FATHOM_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        if let Err(e) = run_seed(seed) {
            panic!("seed {seed}: {e}");
        }
        return;
    }
    let budget_s: u64 = std::env::var("FATHOM_SIM_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let start = SystemClock.now();
    let base = std::env::var("FATHOM_SIM_BASE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1u64);
    let mut seeds = 0u64;
    let mut crashes = 0u64;
    while seeds < 5_000 && (seeds < 50 || SystemClock.now().nanos_since(start) < budget_s * 1_000_000_000) {
        let seed = base + seeds;
        match run_seed(seed) {
            Ok(c) => crashes += u64::from(c),
            Err(e) => panic!(
                "seed {seed}: {e}\nreproduce: FATHOM_SIM_SEED={seed} cargo test -p fathom-store --test it simulation"
            ),
        }
        seeds += 1;
    }
    eprintln!("storage simulation: {seeds} seeds, {crashes} crashes, all properties held");
    assert!(seeds >= 50 && crashes >= seeds);
}
