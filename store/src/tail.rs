//! The writer's read endpoint: other processes get the log's newest events
//! from the process that holds it, so they never need to stop it.
//!
//! The writer serves a Unix socket, `<data>/tail.sock`. A client sends one
//! line, `after N\n`, and receives every event with a sequence number above
//! `N` up to the last visible one, each as a little-endian `u32` length
//! followed by the event's frame (the format of `store/README.md`), then a
//! zero length. `episode N\n` gets the events of episode `e-N` (from the
//! log's per-episode index) the same way, and `run N KIND,KIND,…\n` the
//! events of run `r-N` of those kinds (from the per-run index, filtered by
//! the writer). Or it sends `blob HEX\n` (a BLAKE3 digest) and receives the
//! blob's bytes after a little-endian `u64` length (`u64::MAX`: no such
//! blob); the client checks the digest. Frames are checked by the client as they are read from the
//! log (CRC and validation), so a damaged transfer is an error, never a
//! wrong row.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fathom_core::{Record, Seq};

use crate::{Error, Result, Store, frame};

/// The socket's file name inside the data directory.
pub const SOCKET: &str = "tail.sock";

/// A running endpoint; stops and removes its socket when dropped.
#[derive(Debug)]
pub struct TailServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Connections being served on their own threads.
    active: Arc<std::sync::atomic::AtomicUsize>,
}

impl TailServer {
    /// Serves `store`'s events on `<data>/tail.sock`. Fails only if the
    /// socket cannot be created (a path too long for a Unix socket, a
    /// read-only directory); callers treat that as "no endpoint".
    pub fn start(store: Arc<Store>) -> Result<TailServer> {
        let path = store.dir().root().join(SOCKET);
        // The holder of the writer lock owns the name: a file left by a
        // writer that crashed is stale.
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(|source| Error::Io {
            action: "listen on",
            path: path.clone(),
            source,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = active.clone();
        let thread = std::thread::Builder::new()
            .name("fathom-tail".into())
            .spawn(move || {
                // Each connection on a thread of its own, so one long answer
                // (a reader catching up on the tail) does not hold up the
                // short ones (a dashboard's episode pages); past
                // MAX_CONNECTIONS at once, they are served in turn.
                let active = counted;
                for conn in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                        // A client that goes away mid-answer is its problem.
                        let _ = serve(&store, conn);
                        continue;
                    }
                    active.fetch_add(1, Ordering::SeqCst);
                    let (store, done) = (store.clone(), active.clone());
                    let spawned = std::thread::Builder::new()
                        .name("fathom-tail-conn".into())
                        .spawn(move || {
                            let _ = serve(&store, conn);
                            // The store is released before the count drops,
                            // so a dropped server leaves no handle behind.
                            drop(store);
                            done.fetch_sub(1, Ordering::SeqCst);
                        });
                    if spawned.is_err() {
                        active.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            })
            .map_err(|e| Error::Internal(format!("spawning the tail endpoint: {e}")))?;
        Ok(TailServer {
            path,
            stop,
            thread: Some(thread),
            active,
        })
    }
}

impl Drop for TailServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Connections still being answered finish first (each has a 5 s
        // read timeout), so the store is free when this returns.
        for _ in 0..10_000 {
            if self.active.load(Ordering::SeqCst) == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Connections served at once, each on its own thread.
const MAX_CONNECTIONS: usize = 64;

fn serve(store: &Store, conn: UnixStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if let Some(hex) = line.trim().strip_prefix("blob ") {
        let mut out = std::io::BufWriter::new(conn);
        let blob = match fathom_core::Digest::from_hex(hex) {
            Some(d) => store.get_blob(&d).map_err(std::io::Error::other)?,
            None => None,
        };
        match blob {
            Some(bytes) => {
                out.write_all(&(bytes.len() as u64).to_le_bytes())?;
                out.write_all(&bytes)?;
            }
            None => out.write_all(&u64::MAX.to_le_bytes())?,
        }
        return out.flush();
    }
    let mut out = std::io::BufWriter::new(conn);
    let send = |out: &mut std::io::BufWriter<UnixStream>, rec: Result<Record>| -> std::io::Result<()> {
        let rec = rec.map_err(std::io::Error::other)?;
        let bytes = frame::encode(rec.seq, &rec.event).map_err(std::io::Error::other)?;
        out.write_all(&(bytes.len() as u32).to_le_bytes())?;
        out.write_all(&bytes)
    };
    if let Some(n) = line.trim().strip_prefix("episode ").and_then(|n| n.parse::<u64>().ok()) {
        for rec in store.episode_events(fathom_core::EpisodeId(n)) {
            send(&mut out, rec)?;
        }
    } else if let Some((n, kinds)) = line.trim().strip_prefix("run ").and_then(|rest| rest.split_once(' ')) {
        let kinds: Vec<fathom_core::EventKind> =
            kinds.split(',').filter_map(fathom_core::EventKind::from_name).collect();
        if let Ok(n) = n.parse::<u64>() {
            for rec in store.run_events(fathom_core::RunId(n)) {
                if rec.as_ref().is_ok_and(|r| !kinds.contains(&r.event.payload.kind())) {
                    continue;
                }
                send(&mut out, rec)?;
            }
        }
    } else {
        let after = line
            .trim()
            .strip_prefix("after ")
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        let last = store.last_seq();
        if after < last.0 {
            for rec in store.range(Seq(after + 1)..=last) {
                send(&mut out, rec)?;
            }
        }
    }
    out.write_all(&0u32.to_le_bytes())?;
    out.flush()
}

/// Asks the writer of `data` for the events after `after`. `Ok(None)` when
/// no writer serves the endpoint (none runs, or it predates the endpoint).
pub fn fetch(data: &Path, after: Seq) -> Result<Option<Vec<Record>>> {
    frames(data, &format!("after {}\n", after.0))
}

/// Asks the writer of `data` for the events of one episode (in log order).
/// `Ok(None)` when no writer serves the endpoint; an empty list when the
/// log has no such episode, or the writer predates this request.
pub fn fetch_episode(data: &Path, episode: fathom_core::EpisodeId) -> Result<Option<Vec<Record>>> {
    frames(data, &format!("episode {}\n", episode.0))
}

/// Asks the writer of `data` for run `run`'s events of `kinds` (in log
/// order). `Ok(None)` when no writer serves the endpoint.
pub fn fetch_run(
    data: &Path,
    run: fathom_core::RunId,
    kinds: &[fathom_core::EventKind],
) -> Result<Option<Vec<Record>>> {
    let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    frames(data, &format!("run {} {}\n", run.0, names.join(",")))
}

/// A log read through its writer's endpoint, for a process that needs more
/// than the tail while another one holds the log (the dashboard's replay
/// check during a training run).
#[derive(Debug, Clone)]
pub struct Endpoint {
    data: PathBuf,
}

impl Endpoint {
    /// The endpoint of the writer of `data`, when one serves it now.
    pub fn connect(data: &Path) -> Option<Endpoint> {
        UnixStream::connect(data.join(SOCKET)).ok()?;
        Some(Endpoint {
            data: data.to_path_buf(),
        })
    }

    fn gone(&self) -> Error {
        Error::Internal(format!(
            "the writer of {} stopped serving its read endpoint (it finished or was stopped); try again, the log is free now",
            self.data.display()
        ))
    }
}

impl crate::LogRead for Endpoint {
    fn data_dir(&self) -> &Path {
        &self.data
    }

    fn episode_records(&self, episode: fathom_core::EpisodeId) -> Result<Vec<Record>> {
        fetch_episode(&self.data, episode)?.ok_or_else(|| self.gone())
    }

    fn run_records(&self, run: fathom_core::RunId, kinds: &[fathom_core::EventKind]) -> Result<Vec<Record>> {
        fetch_run(&self.data, run, kinds)?.ok_or_else(|| self.gone())
    }

    fn blob(&self, digest: &fathom_core::Digest) -> Result<Option<Vec<u8>>> {
        fetch_blob(&self.data, digest)?.ok_or_else(|| self.gone())
    }
}

/// What a request to the writer's endpoint was doing, for its errors.
struct Asked {
    path: PathBuf,
    action: &'static str,
}

impl Asked {
    /// An I/O error of this request, naming what it was doing and the socket.
    fn io(&self) -> impl Fn(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            action: self.action,
            path: self.path.clone(),
            source,
        }
    }
}

/// Connects to the writer's endpoint and sends `request`; `Ok(None)` when
/// no writer serves it. Errors name `action` and the socket.
fn ask(data: &Path, request: &str, action: &'static str) -> Result<Option<(BufReader<UnixStream>, Asked)>> {
    let path = data.join(SOCKET);
    let Ok(mut conn) = UnixStream::connect(&path) else {
        return Ok(None);
    };
    let io = |source| Error::Io {
        action,
        path: path.clone(),
        source,
    };
    conn.set_read_timeout(Some(Duration::from_secs(60))).map_err(io)?;
    conn.write_all(request.as_bytes()).map_err(io)?;
    Ok(Some((BufReader::new(conn), Asked { path, action })))
}

fn frames(data: &Path, request: &str) -> Result<Option<Vec<Record>>> {
    let Some((mut reader, asked)) = ask(data, request, "read the writer's events from")? else {
        return Ok(None);
    };
    let io = asked.io();
    let mut records = Vec::new();
    loop {
        let mut len = [0u8; 4];
        reader.read_exact(&mut len).map_err(&io)?;
        let len = u32::from_le_bytes(len) as usize;
        if len == 0 {
            break;
        }
        let mut bytes = vec![0u8; len];
        reader.read_exact(&mut bytes).map_err(&io)?;
        let seq = Seq(u64::from_le_bytes(
            bytes
                .get(16..24)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| Error::Internal("a frame from the writer is too short".into()))?,
        ));
        let (_, event) = frame::decode(seq, &bytes).map_err(|reason| Error::CorruptEvent { seq, reason })?;
        records.push(Record { seq, event });
    }
    Ok(Some(records))
}

/// Asks the writer of `data` for a blob. `Ok(None)` when no writer serves
/// the endpoint; `Ok(Some(None))` when the log has no such blob.
pub fn fetch_blob(data: &Path, digest: &fathom_core::Digest) -> Result<Option<Option<Vec<u8>>>> {
    let request = format!("blob {}\n", digest.to_hex());
    let Some((mut reader, asked)) = ask(data, &request, "read a blob from the writer through")? else {
        return Ok(None);
    };
    let io = asked.io();
    let mut len = [0u8; 8];
    reader.read_exact(&mut len).map_err(&io)?;
    let len = u64::from_le_bytes(len);
    if len == u64::MAX {
        return Ok(Some(None));
    }
    let mut bytes = vec![0u8; len as usize];
    reader.read_exact(&mut bytes).map_err(&io)?;
    if blake3::hash(&bytes).as_bytes() != &digest.0 {
        return Err(Error::Internal(format!(
            "blob {} from the writer does not match its digest",
            digest.short()
        )));
    }
    Ok(Some(Some(bytes)))
}

/// A blob of the log in `data`, from the writer that holds it (through its
/// endpoint) or, when none does, from the log itself (opened briefly).
pub fn read_blob(data: &Path, digest: &fathom_core::Digest) -> Result<Option<Vec<u8>>> {
    // A writer that has just opened the log serves its endpoint a moment
    // later: the read waits for one or the other.
    let clock = fathom_core::SystemClock;
    let started = fathom_core::Clock::now(&clock);
    let waiting =
        || u128::from(fathom_core::Clock::now(&clock).nanos_since(started)) < crate::lock::READER_WAIT.as_nanos();
    loop {
        if let Some(found) = fetch_blob(data, digest)? {
            return Ok(found);
        }
        if !data.join("log").exists() {
            return Ok(None);
        }
        let opened = Store::open_shared(
            data,
            crate::Options {
                cache_bytes: 64 << 20,
                ..crate::Options::default()
            },
        );
        match opened {
            Ok(store) => return store.get_blob(digest),
            Err(crate::Error::InUse { .. }) if waiting() => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}
