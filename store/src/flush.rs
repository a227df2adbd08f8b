//! Making the log durable: the flush that syncs the segments, then writes
//! the mark and flushes sled, and the writer's background flusher.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::keys;
use crate::segment::{Pos, Segments};
use crate::store::lock;
use crate::{Error, sled_err};

/// Why a flush failed.
pub(crate) enum FlushError {
    Sync(std::io::Error),
    Sled(Error),
}

/// Syncs the segments, then records the mark and flushes sled: the mark
/// sled persists never runs ahead of what the segments hold durably.
pub(crate) fn flush_all(
    segments: &Segments,
    db: &sled::Db,
    events: &sled::Tree,
) -> std::result::Result<(), FlushError> {
    let upto = segments.sync_all().map_err(FlushError::Sync)?;
    if upto.segment > 0 {
        let mark = events
            .get(keys::MARK)
            .map_err(|e| FlushError::Sled(sled_err("read the mark")(e)))?;
        if mark.as_deref().and_then(Pos::decode).is_none_or(|m| m < upto) {
            events
                .insert(keys::MARK, &upto.encode()[..])
                .map_err(|e| FlushError::Sled(sled_err("write the mark")(e)))?;
        }
    }
    db.flush()
        .map_err(|e| FlushError::Sled(sled_err("flush the log index")(e)))?;
    Ok(())
}

/// The writer's background flush: every `relaxed_flush_ms`, what relaxed
/// appends wrote becomes durable and sled's index of it is flushed.
#[derive(Debug)]
pub(crate) struct Flusher {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    pub(crate) fn start(segments: Arc<Segments>, db: sled::Db, events: sled::Tree, every: Duration) -> Flusher {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("fathom-flush".into())
            .spawn(move || {
                let (m, cv) = &*flag;
                let mut stopped = lock(m);
                while !*stopped {
                    let (guard, _) = cv.wait_timeout(stopped, every).unwrap_or_else(|e| e.into_inner());
                    stopped = guard;
                    if *stopped {
                        break;
                    }
                    drop(stopped);
                    // A failure is recorded by the segments (a failed sync)
                    // and reported to the next append or flush.
                    let _ = flush_all(&segments, &db, &events);
                    stopped = lock(m);
                }
            })
            .ok();
        Flusher { stop, handle }
    }

    pub(crate) fn stop(mut self) {
        *lock(&self.stop.0) = true;
        self.stop.1.notify_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
