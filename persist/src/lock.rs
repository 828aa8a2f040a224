//! Advisory locking of a data directory, so that two processes never open the same log.
//!
//! A [`DirLock`] is an `flock(2)` on the file [`LOCK_FILE`] inside the directory, held for as
//! long as the value lives (dropping it closes the descriptor, which releases the lock; so does
//! the death of the process, even by SIGKILL: a lock is never left stale). An exclusive holder
//! writes its pid into the file so that a refused opener can name it.
//!
//! - A node takes [`DirLock::exclusive`] on its data directory at start-up, and every
//!   [`crate::Log`] takes one on its own directory in [`crate::Log::open`].
//! - Offline readers (`quark journal …`) take [`DirLock::shared`]: any number of them may read
//!   together, but not while a node (or `quark data reshard`) holds the directory.
//!
//! `flock` locks belong to an open file description: a second `DirLock` on the same directory
//! conflicts with the first even inside one process. They are advisory (a process that does
//! not ask is not stopped), and on NFS they are emulated with byte-range locks by Linux.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Name of the lock file inside a locked directory.
pub const LOCK_FILE: &str = ".lock";

/// Who holds a lock that was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockHolder {
    /// An exclusive holder that wrote its pid (a node, a log, or `quark data reshard`).
    Pid(u32),
    /// An exclusive holder whose pid could not be read (it is still writing it, or the lock was
    /// taken by a process that does not write one).
    Unknown,
    /// One or more shared holders (offline readers such as `quark journal verify`).
    Readers,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockHolder::Pid(pid) => write!(f, "process {pid}"),
            LockHolder::Unknown => f.write_str("another process (its pid is unknown)"),
            LockHolder::Readers => {
                f.write_str("an offline reader such as `quark journal` (shared lock)")
            }
        }
    }
}

/// Why a directory could not be locked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Another open file description holds a conflicting lock.
    #[error(
        "data directory {dir} is in use by {holder} (lock file {file}): only one process may \
         open it; stop the other one first"
    )]
    Held {
        /// The directory.
        dir: PathBuf,
        /// Its lock file.
        file: PathBuf,
        /// Who holds it.
        holder: LockHolder,
    },
    /// Creating, opening, locking or writing the lock file failed.
    #[error("cannot lock data directory {dir} (lock file {file}): {source}")]
    Io {
        /// The directory.
        dir: PathBuf,
        /// Its lock file.
        file: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

impl LockError {
    /// The holder of a refused lock (`None` for an I/O failure).
    pub fn holder(&self) -> Option<LockHolder> {
        match self {
            LockError::Held { holder, .. } => Some(*holder),
            LockError::Io { .. } => None,
        }
    }
}

/// Whether a [`DirLock`] excludes everyone or only exclusive holders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// No other lock of either mode may be held.
    Exclusive,
    /// Other shared locks may be held; no exclusive one.
    Shared,
}

/// A held lock on a directory (see the module docs); released when dropped.
#[derive(Debug)]
pub struct DirLock {
    dir: PathBuf,
    mode: LockMode,
    /// Held open for the lock (closing it releases the lock). `None` only for a shared lock on a directory whose lock file does not exist and cannot
    /// be created (a read-only directory: no process can hold an exclusive lock there either).
    _file: Option<File>,
}

impl DirLock {
    /// Takes the exclusive lock of `dir` (which must exist) without waiting, and writes this
    /// process's pid into the lock file.
    ///
    /// Errors: [`LockError::Held`] naming the directory and the holder when any other lock
    /// (exclusive or shared) is held; [`LockError::Io`] when the lock file cannot be created.
    pub fn exclusive(dir: impl AsRef<Path>) -> Result<Self, LockError> {
        let dir = dir.as_ref();
        let path = dir.join(LOCK_FILE);
        let io_err = |source| LockError::Io {
            dir: dir.to_path_buf(),
            file: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        if let Err(e) = flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(io_err(e));
            }
            // Held: by readers if a shared lock can still be had, else by an exclusive holder.
            let holder = if flock(&file, libc::LOCK_SH | libc::LOCK_NB).is_ok() {
                LockHolder::Readers
            } else {
                read_pid(&mut file).map_or(LockHolder::Unknown, LockHolder::Pid)
            };
            return Err(LockError::Held {
                dir: dir.to_path_buf(),
                file: path,
                holder,
            });
        }
        let pid = std::process::id();
        file.set_len(0).map_err(io_err)?;
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        file.write_all(format!("{pid}\n").as_bytes())
            .map_err(io_err)?;
        Ok(DirLock {
            dir: dir.to_path_buf(),
            mode: LockMode::Exclusive,
            _file: Some(file),
        })
    }

    /// Takes a shared lock of `dir` (which must exist) without waiting: for readers that must
    /// not run while a node holds the directory. Creates the lock file if it can; on a
    /// directory where it can neither be created nor opened for writing, it is opened
    /// read-only, and when it does not exist there at all no lock is needed (no node can hold
    /// one in a directory where it cannot create the file).
    ///
    /// Errors: [`LockError::Held`] naming the holder's pid when an exclusive lock is held.
    pub fn shared(dir: impl AsRef<Path>) -> Result<Self, LockError> {
        let dir = dir.as_ref();
        let path = dir.join(LOCK_FILE);
        let io_err = |source| LockError::Io {
            dir: dir.to_path_buf(),
            file: path.clone(),
            source,
        };
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path);
        let mut file = match opened {
            Ok(f) => f,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                match File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Ok(DirLock {
                            dir: dir.to_path_buf(),
                            mode: LockMode::Shared,
                            _file: None,
                        })
                    }
                    Err(e) => return Err(io_err(e)),
                }
            }
            Err(e) => return Err(io_err(e)),
        };
        if let Err(e) = flock(&file, libc::LOCK_SH | libc::LOCK_NB) {
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(io_err(e));
            }
            let holder = read_pid(&mut file).map_or(LockHolder::Unknown, LockHolder::Pid);
            return Err(LockError::Held {
                dir: dir.to_path_buf(),
                file: path,
                holder,
            });
        }
        Ok(DirLock {
            dir: dir.to_path_buf(),
            mode: LockMode::Shared,
            _file: Some(file),
        })
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The mode the lock is held in.
    pub fn mode(&self) -> LockMode {
        self.mode
    }
}

fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor this `File` owns; it touches no memory.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The pid an exclusive holder wrote (`None` while it is still writing it, or when the pid in
/// the file is of a process that no longer exists: left by an earlier holder).
fn read_pid(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(32).read_to_string(&mut s).ok()?;
    let pid: u32 = s.trim().parse().ok()?;
    let raw = libc::pid_t::try_from(pid).ok().filter(|&p| p > 0)?;
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let alive = unsafe { libc::kill(raw, 0) } == 0
        || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    alive.then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_both_modes_and_names_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let held = DirLock::exclusive(dir.path()).unwrap();
        assert_eq!(held.mode(), LockMode::Exclusive);
        let me = LockHolder::Pid(std::process::id());
        let err = DirLock::exclusive(dir.path()).unwrap_err();
        assert_eq!(err.holder(), Some(me));
        let text = err.to_string();
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(
            text.contains(&format!("process {}", std::process::id())),
            "{text}"
        );
        assert_eq!(DirLock::shared(dir.path()).unwrap_err().holder(), Some(me));
        drop(held);
        drop(DirLock::exclusive(dir.path()).unwrap());
    }

    #[test]
    fn readers_share_and_keep_writers_out() {
        let dir = tempfile::tempdir().unwrap();
        let a = DirLock::shared(dir.path()).unwrap();
        let b = DirLock::shared(dir.path()).unwrap();
        assert_eq!(
            DirLock::exclusive(dir.path()).unwrap_err().holder(),
            Some(LockHolder::Readers)
        );
        drop((a, b));
        drop(DirLock::exclusive(dir.path()).unwrap());
    }

    #[test]
    fn a_missing_directory_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = DirLock::exclusive(&missing).unwrap_err();
        assert!(matches!(err, LockError::Io { .. }));
        assert!(err.to_string().contains("nope"));
    }
}
