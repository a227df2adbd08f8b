//! The writer lock: one process owns a data directory at a time.
//!
//! sled already refuses a second opener, but with an error that names
//! neither the directory nor the holder. fathom takes an advisory lock on
//! `<data>/LOCK` first and writes the holder's pid and command line into it,
//! so a second process can say exactly who is in the way. The lock is released
//! by the operating system when the holder exits, however it exits, so a
//! killed writer never leaves a stale lock behind. The file is readable
//! by its owner only, and secrets on the command line are not written.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::{Error, Result};

/// Flags whose value is a secret: never written into the lock file (which
/// other processes' errors quote).
pub const SECRET_FLAGS: &[&str] = &["--token", "--search-key", "--gateway-token", "--api-key"];

/// A command line with the values of [`SECRET_FLAGS`] replaced by `***`
/// (`--token T` and `--token=T` alike).
/// Free bytes on the file system holding `path` (0 when it cannot be read).
pub fn free_bytes(path: &Path) -> u64 {
    fs2::available_space(path).unwrap_or(0)
}

pub fn redacted(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut hide_next = false;
    for a in args {
        if hide_next {
            out.push("***".to_string());
            hide_next = false;
        } else if let Some((flag, _)) = a.split_once('=')
            && SECRET_FLAGS.contains(&flag)
        {
            out.push(format!("{flag}=***"));
        } else {
            hide_next = SECRET_FLAGS.contains(&a.as_str());
            out.push(a.clone());
        }
    }
    out
}

/// What a reader's lock file says after its pid.
const READING: &str = ", reading";

/// How long an opener waits for a holder that only reads.
pub const READER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Holds the lock until dropped.
#[derive(Debug)]
pub struct DirLock {
    // Kept open: closing the file would release the lock.
    _file: File,
}

impl DirLock {
    /// Takes the lock on `lock_path`, or explains who holds it. A holder
    /// that only reads (`reading` in its lock file) is waited for, up to
    /// [`READER_WAIT`]: readers hold the lock for a query or a page.
    pub fn acquire(data_dir: &Path, lock_path: &Path, reading: bool) -> Result<DirLock> {
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        // Only its owner reads who holds the directory.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(lock_path).map_err(|source| Error::Io {
            action: "open the lock file",
            path: lock_path.to_path_buf(),
            source,
        })?;
        let clock = fathom_core::SystemClock;
        let waited_since = fathom_core::Clock::now(&clock);
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = file.seek(SeekFrom::Start(0));
                    let _ = file.read_to_string(&mut holder);
                    let holder = holder.trim();
                    let waited = fathom_core::Clock::now(&clock).nanos_since(waited_since);
                    if holder.contains(READING) && u128::from(waited) < READER_WAIT.as_nanos() {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        continue;
                    }
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
        }
        // A lock file made by an older fathom may be world-readable.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
        }
        let args: Vec<String> = std::env::args().collect();
        let who = format!(
            "pid {}{}: {}",
            std::process::id(),
            if reading { READING } else { "" },
            redacted(&args).join(" ")
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_on_the_command_line_are_redacted() {
        let args: Vec<String> = [
            "fathom",
            "serve",
            "--token",
            "s3cret-token-value",
            "--search-key=abc123",
            "--addr",
            "0.0.0.0:80",
            "--gateway-token",
            "gt",
            "--api-key",
            "k",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let line = redacted(&args).join(" ");
        assert_eq!(
            line,
            "fathom serve --token *** --search-key=*** --addr 0.0.0.0:80 --gateway-token *** --api-key ***"
        );
    }
}
