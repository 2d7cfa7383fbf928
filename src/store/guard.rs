//! Guards for the store folder: the exclusive lock one daemon holds on it,
//! and the private permissions (folder 0700, files 0600) that keep every
//! family's phone number away from other local users whatever the umask.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::StoreError;

/// Name of the lock file inside the store folder.
pub const LOCK_FILE: &str = "klaxon.lock";

/// Held by the running daemon for as long as it uses the store folder. The
/// kernel releases the lock when the process ends, even on `kill -9`, so a
/// stale lock file never blocks a restart.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
    path: PathBuf,
}

impl StoreLock {
    /// Takes the lock without waiting. Fails with a sentence naming the
    /// folder when another process holds it; nothing in the folder is
    /// changed in that case.
    pub fn acquire(dir: &Path) -> Result<StoreLock, StoreError> {
        private_dir(dir)?;
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| open_error(&path, e))?;
        // SAFETY: flock on a descriptor this function owns; no memory is shared.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(StoreLock { _file: file, path });
        }
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            Err(StoreError::Locked {
                path: dir.to_path_buf(),
            })
        } else {
            Err(open_error(&path, e))
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open_error(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Open {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Creates `dir` (and parents) if needed and makes it 0700.
pub fn private_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| open_error(dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| open_error(dir, e))
}

/// Creates `path` empty with mode 0600 if it does not exist. SQLite gives
/// its `-wal` and `-shm` files the mode of the database file, so creating
/// the database this way keeps all three private.
pub fn private_file(path: &Path) -> Result<(), StoreError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| open_error(path, e))?;
    Ok(())
}

/// Makes every regular file directly in `dir` 0600: databases, their WAL
/// and shared-memory files, and copies left by older versions that were
/// created under a permissive umask.
pub fn tighten_files(dir: &Path) -> Result<(), StoreError> {
    let entries = std::fs::read_dir(dir).map_err(|e| open_error(dir, e))?;
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))
                .map_err(|e| open_error(&entry.path(), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_folder_is_refused_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = StoreLock::acquire(dir.path()).unwrap();
        let second = StoreLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(second, StoreError::Locked { .. }), "{second}");
        assert!(second.to_string().contains("another klaxon"), "{second}");
        drop(first);
        StoreLock::acquire(dir.path()).expect("free again once the holder is gone");
    }
}
