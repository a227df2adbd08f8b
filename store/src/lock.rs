//! The writer lock: one process owns a data directory at a time.
//!
//! sled already refuses a second opener, but with an error that names
//! neither the directory nor the holder. fathom takes an advisory lock on
//! `<data>/LOCK` first and writes the holder's pid and command line into it,
//! so a second process can say exactly who is in the way. The lock is released
//! by the operating system when the holder exits, however it exits, so a
//! killed writer never leaves a stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::{Error, Result};

/// Holds the lock until dropped.
#[derive(Debug)]
pub struct DirLock {
    // Kept open: closing the file would release the lock.
    _file: File,
}

impl DirLock {
    /// Takes the lock on `lock_path`, or explains who holds it.
    pub fn acquire(data_dir: &Path, lock_path: &Path) -> Result<DirLock> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(lock_path)
            .map_err(|source| Error::Io {
                action: "open the lock file",
                path: lock_path.to_path_buf(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(Error::InUse {
                    dir: data_dir.to_path_buf(),
                    holder: if holder.is_empty() {
                        "holder unknown".to_string()
                    } else {
                        holder.to_string()
                    },
                });
            }
            Err(TryLockError::Error(source)) => {
                return Err(Error::Io {
                    action: "lock",
                    path: lock_path.to_path_buf(),
                    source,
                });
            }
        }
        let args: Vec<String> = std::env::args().collect();
        let who = format!("pid {}: {}", std::process::id(), args.join(" "));
        let write = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(who.as_bytes()))
            .and_then(|()| file.flush());
        write.map_err(|source| Error::Io {
            action: "write the lock file",
            path: lock_path.to_path_buf(),
            source,
        })?;
        Ok(DirLock { _file: file })
    }
}
