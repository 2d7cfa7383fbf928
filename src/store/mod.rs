//! The operational store: one SQLite file (`klaxon.db`, WAL) holding alerts,
//! recipients, deliveries, acknowledgements, API tokens and the audit log.
//!
//! One dedicated thread owns the only write connection. Writers send it a
//! closure; it runs a batch of queued closures inside one transaction, each in
//! its own savepoint, commits once, and only then answers each caller (group
//! commit). So a caller that got `Ok` knows its change is on disk, and a burst
//! of acknowledgements costs one fsync, not one each.
//!
//! Invariant: nothing is reported done before the transaction holding it has
//! committed.

pub mod alerts;
pub mod audit;
pub mod deliveries;
pub mod schema;
pub mod sis_syncs;
pub mod tokens;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, Transaction};
use tokio::sync::{mpsc, oneshot};

/// Errors from the store. Callers branch on `NotFound` and `Conflict`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot open store at `{path}`: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the store is shut down")]
    Closed,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
type Job = Box<dyn FnOnce(&mut Transaction<'_>) -> Completion + Send>;

/// Most closures one transaction carries; bounds the latency of the first.
const MAX_BATCH: usize = 512;

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    jobs: mpsc::Sender<Job>,
    readers: Mutex<Vec<Connection>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Milliseconds since the Unix epoch: the one time format stored.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) `dir/klaxon.db`, applies migrations and
    /// starts the writer thread. `full_sync` chooses `synchronous=FULL`.
    pub fn open(dir: &Path, full_sync: bool) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        let path = dir.join("klaxon.db");
        let mut conn = Connection::open(&path).map_err(|e| StoreError::Open {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            if full_sync { "FULL" } else { "NORMAL" },
        )?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // The writer keeps the hot pages of the outbox and its indexes in
        // memory during a fan-out (grows on demand, up to 64 MiB).
        conn.pragma_update(None, "cache_size", -65536)?;
        schema::migrate(&mut conn)?;

        let (tx, rx) = mpsc::channel::<Job>(8192);
        let handle = std::thread::Builder::new()
            .name("klaxon-store-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| StoreError::Open {
                path: path.clone(),
                reason: format!("cannot start writer thread: {e}"),
            })?;
        Ok(Store {
            inner: Arc::new(Inner {
                path,
                jobs: tx,
                readers: Mutex::new(Vec::new()),
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    /// Runs `f` in the writer's transaction and returns once it has committed.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<T, StoreError>>();
        let job: Job = Box::new(move |txn: &mut Transaction<'_>| -> Completion {
            // A savepoint per closure: one failing closure rolls back alone
            // and does not spoil the others in the batch.
            let outcome = match txn.savepoint() {
                Ok(sp) => match f(&sp) {
                    Ok(v) => sp.commit().map(|_| v).map_err(StoreError::from),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e.into()),
            };
            match outcome {
                Ok(v) => Box::new(move |committed: Result<(), String>| {
                    let _ = reply.send(
                        committed
                            .map(|_| v)
                            .map_err(|e| StoreError::Corrupt(format!("commit failed: {e}"))),
                    );
                }),
                Err(e) => Box::new(move |_| {
                    let _ = reply.send(Err(e));
                }),
            }
        });
        self.inner
            .jobs
            .send(job)
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on a read-only connection (WAL lets readers run beside the writer).
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = inner.take_reader()?;
            let out = f(&conn);
            inner.give_reader(conn);
            out
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("reader task failed: {e}")))?
    }

    /// Stops the writer after the jobs already queued and waits for it.
    pub fn close(self) {
        let handle = self.inner.writer.lock().ok().and_then(|mut h| h.take());
        drop(self);
        if let Some(h) = handle {
            // The thread ends when every sender is gone; other clones may
            // still hold one, so do not wait forever.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !h.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}

impl Inner {
    fn take_reader(&self) -> Result<Connection, StoreError> {
        if let Some(c) = self.readers.lock().ok().and_then(|mut v| v.pop()) {
            return Ok(c);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(conn)
    }

    fn give_reader(&self, conn: Connection) {
        if let Ok(mut v) = self.readers.lock()
            && v.len() < 16
        {
            v.push(conn);
        }
    }
}

fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut completions: Vec<Completion> = Vec::with_capacity(batch.len());
        let committed = match conn.transaction() {
            Ok(mut txn) => {
                for job in batch.drain(..) {
                    completions.push(job(&mut txn));
                }
                txn.commit().map_err(|e| e.to_string())
            }
            Err(e) => {
                let msg = e.to_string();
                for job in batch.drain(..) {
                    // Without a transaction nothing can run: report the error.
                    drop(job);
                }
                tracing::error!(error = %msg, "Cannot begin a store transaction.");
                Err(msg)
            }
        };
        if let Err(e) = &committed {
            tracing::error!(error = %e, "Store commit failed; callers are told.");
        }
        for c in completions {
            c(committed.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn write_commits_before_answer_and_failures_roll_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        let a = store.write(|c| audit::record(c, 1, "test", "ok", None, "{}"));
        let b = store.write(|c| {
            audit::record(c, 2, "test", "doomed", None, "{}")?;
            Err::<(), _>(StoreError::Conflict("no".into()))
        });
        let (a, b) = tokio::join!(a, b);
        assert!(a.is_ok());
        assert!(matches!(b, Err(StoreError::Conflict(_))));
        // A separate connection sees the committed row and not the rolled-back one.
        let other = Connection::open(dir.path().join("klaxon.db")).unwrap();
        let actions: Vec<String> = other
            .prepare("SELECT action FROM audit ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(actions, vec!["ok".to_string()]);
    }
}
