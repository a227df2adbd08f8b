//! Reading a log without holding it: [`LogRead`] is what a reader needs
//! (one episode's events, a run's events of some kinds, blobs), answered by
//! the [`Store`] itself or, while another process writes the log, by that
//! writer's read endpoint ([`crate::tail::Endpoint`]).

use std::path::Path;

use fathom_core::{Digest, EpisodeId, EventKind, Record, RunId};

use crate::{Result, Store};

/// Read access to one data directory's log.
pub trait LogRead: Send + Sync {
    /// The data directory.
    fn data_dir(&self) -> &Path;
    /// One episode's events, in log order (empty when there is none).
    fn episode_records(&self, episode: EpisodeId) -> Result<Vec<Record>>;
    /// A run's events of the given kinds, in log order.
    fn run_records(&self, run: RunId, kinds: &[EventKind]) -> Result<Vec<Record>>;
    /// A blob by its digest.
    fn blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>>;
}

impl LogRead for Store {
    fn data_dir(&self) -> &Path {
        self.dir().root()
    }

    fn episode_records(&self, episode: EpisodeId) -> Result<Vec<Record>> {
        self.episode_events(episode).collect()
    }

    fn run_records(&self, run: RunId, kinds: &[EventKind]) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        for rec in self.run_events(run) {
            let rec = rec?;
            if kinds.contains(&rec.event.payload.kind()) {
                out.push(rec);
            }
        }
        Ok(out)
    }

    fn blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        self.get_blob(digest)
    }
}

impl<T: LogRead + ?Sized> LogRead for std::sync::Arc<T> {
    fn data_dir(&self) -> &Path {
        (**self).data_dir()
    }

    fn episode_records(&self, episode: EpisodeId) -> Result<Vec<Record>> {
        (**self).episode_records(episode)
    }

    fn run_records(&self, run: RunId, kinds: &[EventKind]) -> Result<Vec<Record>> {
        (**self).run_records(run, kinds)
    }

    fn blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>> {
        (**self).blob(digest)
    }
}
