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
pub mod breakdown;
pub mod cap;
pub mod deliveries;
pub mod email_events;
pub mod guard;
pub mod health;
pub mod idempotency;
pub mod keyfile;
pub mod lists;
pub mod replies;
pub mod retention;
pub mod schema;
pub mod sessions;
pub mod sis_syncs;
pub mod tally;
pub mod timeline;
pub mod tokens;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};
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
    /// The change was not saved (disk full, I/O error, a lock held too
    /// long); nothing of it was kept and the caller may try again.
    #[error("the store could not save the change, nothing of it was kept: {0}")]
    Unavailable(String),
    #[error(
        "another klaxon is running on the store folder `{path}` (it holds klaxon.lock); stop it first, or give this one its own [store] dir"
    )]
    Locked { path: PathBuf },
}

type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A queued write's closure. Called with the batch's transaction, or with
/// `None` when no transaction could be begun: then its completion reports
/// the error.
type JobFn = Box<dyn FnOnce(Option<&mut Transaction<'_>>) -> Ran + Send>;

/// What running a write left: its completion, and whether it failed.
struct Ran {
    done: Completion,
    /// A bulk write runs alone in its transaction without a savepoint; when
    /// it fails, the writer rolls the transaction back instead of committing.
    failed: bool,
}

/// A queued write and its class.
struct Job {
    run: JobFn,
    class: Class,
}

/// How the writer schedules a write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// A person waits on it (an answer): committed in a batch of its own
    /// ahead of the others, at the next gap between writes.
    Urgent,
    /// Claims, outcomes, everything else: batched.
    Ordinary,
    /// Materialization: large, and nobody waits on it in a hurry. The
    /// writer runs it alone in a transaction of its own, between batches
    /// of the other writes.
    Bulk,
}

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
    /// Dropped with the last handle: the checkpoint thread then stops.
    _stop_checkpoints: std::sync::mpsc::Sender<()>,
}

/// WAL pages after which the writer checkpoints by itself (64 MiB): a safety
/// net should the checkpoint thread fall behind or stop.
const WRITER_CHECKPOINT_PAGES: i64 = 16_384;

/// How often the checkpoint thread copies the WAL back into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Copies committed WAL frames into the database file beside the writer
/// (PASSIVE: it never takes the write lock nor waits for readers), until the
/// store's last handle is dropped. Safe at any instant: a checkpoint
/// interrupted by `kill -9` is redone from the WAL at the next open.
fn checkpointer(path: &Path, stop: std::sync::mpsc::Receiver<()>) {
    let conn = match Connection::open(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot open the store for checkpoints; the writer will checkpoint instead.");
            return;
        }
    };
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY)
    {
        // Its row (busy, log and checkpointed frames) is not needed.
        let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        if let Err(e) = done {
            tracing::debug!(error = %e, "Checkpoint skipped.");
        }
    }
}

/// Milliseconds since the Unix epoch: the one time format stored.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Process-wide SQLite settings, taken before the first connection opens
/// (`cli::main` calls this first; `Store::open` again for library users).
/// Memory statistics off: with them on, every allocation SQLite makes takes
/// a global mutex to count itself, about a tenth of the store writer's time
/// in a profile of a fan-out; klaxon never reads them.
pub fn configure_sqlite() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: `sqlite3_config` takes an int for MEMSTATUS. Once SQLite
        // is initialized it returns SQLITE_MISUSE and changes nothing, which
        // leaves the statistics on: slower, never wrong.
        unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS,
                0 as std::ffi::c_int,
            );
        }
    });
}

impl Store {
    /// Opens (creating if needed) `dir/klaxon.db`, applies migrations and
    /// starts the writer thread. `full_sync` chooses `synchronous=FULL`.
    pub fn open(dir: &Path, full_sync: bool) -> Result<Store, StoreError> {
        Store::open_with(dir, full_sync, TransactionBehavior::Immediate)
    }

    /// As `open`, with the writer's transactions begun as `behavior`
    /// (always `Immediate` but in the test that shows why).
    fn open_with(
        dir: &Path,
        full_sync: bool,
        behavior: TransactionBehavior,
    ) -> Result<Store, StoreError> {
        configure_sqlite();
        guard::private_dir(dir)?;
        let path = dir.join("klaxon.db");
        guard::private_file(&path)?;
        let mut conn = Connection::open(&path).map_err(|e| StoreError::Open {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // Retention frees pages; incremental vacuum gives them back to the
        // file system. Takes effect on a new file; an existing one is
        // switched by `retention::enable_incremental_vacuum` at start-up.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            if full_sync { "FULL" } else { "NORMAL" },
        )?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // The writer keeps the hot pages of the outbox and its indexes in
        // memory during a fan-out (grows on demand, up to 16 MiB). Not more:
        // when a b-tree split reorders its new pages, SQLite parks one at a
        // page number far past the end of the file, and the commit then
        // walks the whole page-cache hash to drop it, a walk as long as the
        // cache is large (9% of the writer with 64 MiB).
        conn.pragma_update(None, "cache_size", -16384)?;
        // Every write runs in a savepoint of its own; the pages it changes
        // are first copied to the statement journal. In a file (the default
        // beyond 64 KiB) that was a fifth of the writer's time in pwrite.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // Checkpoints run on their own thread (`checkpointer`); the writer
        // copies the WAL back itself only if that thread falls far behind.
        // On the writer, a checkpoint (copying 4 MiB and an fsync of the
        // database every 1,000 pages) stalled every claim and outcome behind
        // it during a fan-out.
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)?;
        schema::migrate(&mut conn)?;
        guard::tighten_files(dir)?;

        let (tx, rx) = mpsc::channel::<Job>(8192);
        let handle = std::thread::Builder::new()
            .name("klaxon-store-writer".into())
            .spawn(move || writer_loop(conn, rx, behavior))
            .map_err(|e| StoreError::Open {
                path: path.clone(),
                reason: format!("cannot start writer thread: {e}"),
            })?;
        let (stop_checkpoints, stopped) = std::sync::mpsc::channel::<()>();
        let checkpoint_path = path.clone();
        std::thread::Builder::new()
            .name("klaxon-store-checkpoint".into())
            .spawn(move || checkpointer(&checkpoint_path, stopped))
            .map_err(|e| StoreError::Open {
                path: path.clone(),
                reason: format!("cannot start checkpoint thread: {e}"),
            })?;
        Ok(Store {
            inner: Arc::new(Inner {
                path,
                jobs: tx,
                _stop_checkpoints: stop_checkpoints,
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
        self.submit(f, Class::Ordinary).await
    }

    /// As `write`, for a write a person is waiting on (a parent's answer):
    /// the writer commits it in a batch of its own before the claims and
    /// outcomes queued, and before the next audience chunk, so an answer
    /// during a fan-out does not wait behind its bookkeeping.
    pub async fn write_urgent<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(f, Class::Urgent).await
    }

    /// As `write`, for a large write nobody waits on in a hurry (an
    /// audience chunk). The writer runs such writes one at a time, each
    /// alone in a transaction of its own, between batches of the others, so
    /// claims, outcomes and acknowledgements are not held behind a
    /// fan-out's materialization. `f` runs without a savepoint; if it fails,
    /// its whole transaction is rolled back.
    pub async fn write_bulk<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(f, Class::Bulk).await
    }

    async fn submit<T, F>(&self, f: F, class: Class) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<T, StoreError>>();
        // Where the write came from, for the audit entries it makes.
        let origin = audit::current_origin();
        let run: JobFn = Box::new(move |txn: Option<&mut Transaction<'_>>| -> Ran {
            let Some(txn) = txn else {
                return Ran {
                    done: Box::new(move |committed: Result<(), String>| {
                        let why = committed.err().unwrap_or_default();
                        let _ = reply.send(Err(StoreError::Unavailable(why)));
                    }),
                    failed: true,
                };
            };
            let outcome = if class == Class::Bulk {
                // Alone in its transaction: no savepoint, whose statement
                // journal copied every page the write touched first (a tenth
                // of the writer's time while an audience was written).
                audit::in_write_origin(origin, || f(txn))
            } else {
                // A savepoint per closure: one failing closure rolls back alone
                // and does not spoil the others in the batch.
                match JobSavepoint::begin(txn) {
                    Ok(sp) => match audit::in_write_origin(origin, || f(sp.conn)) {
                        Ok(v) => sp.release().map(|_| v),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                }
            };
            match outcome {
                Ok(v) => Ran {
                    done: Box::new(move |committed: Result<(), String>| {
                        let _ = reply.send(committed.map(|_| v).map_err(StoreError::Unavailable));
                    }),
                    failed: false,
                },
                Err(e) => Ran {
                    done: Box::new(move |_| {
                        let _ = reply.send(Err(e));
                    }),
                    failed: true,
                },
            }
        });
        self.inner
            .jobs
            .send(Job { run, class })
            .await
            .map_err(|_| StoreError::Closed)?;
        match answer.await {
            Ok(r) => r,
            // The writer is alive but dropped the answer: the closure panicked
            // and its savepoint was rolled back.
            Err(_) if !self.inner.jobs.is_closed() => Err(StoreError::Unavailable(
                "the write failed inside the store writer".into(),
            )),
            Err(_) => Err(StoreError::Closed),
        }
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
        self.close_within(std::time::Duration::from_secs(5));
    }

    /// As `close`, waiting at most `limit` for the writer: what it has not
    /// committed by then was never reported done to anyone.
    pub fn close_within(self, limit: std::time::Duration) {
        let handle = self.inner.writer.lock().ok().and_then(|mut h| h.take());
        drop(self);
        if let Some(h) = handle {
            // The thread ends when every sender is gone; other clones may
            // still hold one, so do not wait forever.
            let deadline = std::time::Instant::now() + limit;
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

/// One write's savepoint inside the batch's transaction, by cached
/// statements: rusqlite's `Transaction::savepoint` parses `SAVEPOINT` and
/// `RELEASE` anew each time, a tenth of the writer's time during a fan-out.
/// Rolled back when dropped unreleased (an error or a panic in the write).
struct JobSavepoint<'c> {
    conn: &'c Connection,
    released: bool,
}

impl<'c> JobSavepoint<'c> {
    fn begin(conn: &'c Connection) -> Result<JobSavepoint<'c>, StoreError> {
        conn.prepare_cached("SAVEPOINT klaxon_write")?.execute([])?;
        Ok(JobSavepoint {
            conn,
            released: false,
        })
    }

    fn release(mut self) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("RELEASE klaxon_write")?
            .execute([])?;
        self.released = true;
        Ok(())
    }
}

impl Drop for JobSavepoint<'_> {
    fn drop(&mut self) {
        // Nothing to undo when SQLite already rolled the whole transaction
        // back (the writer fails the batch then).
        if self.released || self.conn.is_autocommit() {
            return;
        }
        let undo = |sql: &str| {
            self.conn
                .prepare_cached(sql)
                .and_then(|mut s| s.execute([]))
        };
        if let Err(e) = undo("ROLLBACK TO klaxon_write").and_then(|_| undo("RELEASE klaxon_write"))
        {
            tracing::error!(error = %e, "Cannot roll a failed write back to its savepoint.");
        }
    }
}

/// Begins the batch's transaction. `BEGIN IMMEDIATE` takes the write lock
/// at once (waiting out the busy timeout), so a CLI writing beside the
/// daemon cannot fail a batch half-way with SQLITE_BUSY_SNAPSHOT.
fn begin(conn: &mut Connection, behavior: TransactionBehavior) -> Result<Transaction<'_>, String> {
    conn.transaction_with_behavior(behavior)
        .map_err(|e| e.to_string())
}

/// The writer thread: runs queued closures in batches, one transaction each.
///
/// A batch takes the ordinary writes queued (up to `MAX_BATCH`); then one
/// bulk write, if any, runs alone in a transaction of its own. Before, the
/// audience chunks of a fan-out filled every batch: each claim and outcome
/// waited behind four chunks of 1,000 recipients, and sends ran at 500 a
/// second until the whole audience was written. Chunk writes are idempotent
/// and independent, so running them after later ordinary writes changes no
/// result. Urgent writes (answers) go first, in a batch of their own,
/// before the ordinary batch and again before the bulk write: during a
/// district fan-out an answer otherwise waited for a batch of claims and
/// outcomes as well as a chunk (p50 56 ms).
///
/// Invariant: a caller hears `Ok` only if the transaction holding its change
/// committed. SQLite rolls a whole transaction back on some errors (disk
/// full, I/O error) while the savepoints above look fine; the writer checks
/// `is_autocommit()` after every closure, fails everything the lost
/// transaction held, and runs the closures not yet tried in a new one.
fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<Job>, behavior: TransactionBehavior) {
    let mut q = Queues::default();
    let mut alone: VecDeque<JobFn> = VecDeque::with_capacity(1);
    loop {
        if q.is_empty() {
            match rx.blocking_recv() {
                Some(j) => q.take(j),
                None => break,
            }
        }
        q.drain(&mut rx);
        q.run_urgent(&mut conn, behavior);
        // At most MAX_BATCH ordinary writes are ever queued here.
        while !q.ordinary.is_empty() {
            run_batch(&mut conn, &mut q.ordinary, behavior, false);
        }
        // Answers that came in during that batch go before the chunk.
        q.drain(&mut rx);
        q.run_urgent(&mut conn, behavior);
        alone.extend(q.bulk.pop_front());
        while !alone.is_empty() {
            run_batch(&mut conn, &mut alone, behavior, true);
        }
    }
}

/// The writer's queued writes, by class.
#[derive(Default)]
struct Queues {
    urgent: VecDeque<JobFn>,
    ordinary: VecDeque<JobFn>,
    bulk: VecDeque<JobFn>,
}

impl Queues {
    fn is_empty(&self) -> bool {
        self.urgent.is_empty() && self.ordinary.is_empty() && self.bulk.is_empty()
    }

    fn take(&mut self, j: Job) {
        match j.class {
            Class::Urgent => self.urgent.push_back(j.run),
            Class::Ordinary => self.ordinary.push_back(j.run),
            Class::Bulk => self.bulk.push_back(j.run),
        }
    }

    /// Takes what is queued now (a batch's worth of each small class).
    fn drain(&mut self, rx: &mut mpsc::Receiver<Job>) {
        while self.ordinary.len() < MAX_BATCH && self.urgent.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => self.take(j),
                Err(_) => break,
            }
        }
    }

    fn run_urgent(&mut self, conn: &mut Connection, behavior: TransactionBehavior) {
        while !self.urgent.is_empty() {
            run_batch(conn, &mut self.urgent, behavior, false);
        }
    }
}

/// Runs closures from the front of `queue` in one transaction; leaves in
/// `queue` those not tried because SQLite dropped the transaction under them.
/// `alone`: one bulk write without a savepoint, rolled back if it fails.
fn run_batch(
    conn: &mut Connection,
    queue: &mut VecDeque<JobFn>,
    behavior: TransactionBehavior,
    alone: bool,
) {
    let mut txn = match begin(conn, behavior) {
        Ok(t) => t,
        Err(msg) => {
            tracing::error!(error = %msg, jobs = queue.len(), "Cannot begin a store transaction; the writes are refused.");
            for job in queue.drain(..) {
                (job(None).done)(Err(msg.clone()));
            }
            return;
        }
    };
    let mut completions: Vec<Completion> = Vec::with_capacity(queue.len());
    let mut lost = false;
    let mut undo = false;
    while let Some(job) = queue.pop_front() {
        // A panicking closure must not take the only writer down: its
        // savepoint (or, alone, its transaction) rolls back and its caller
        // hears an error.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(Some(&mut txn)))) {
            Ok(ran) => {
                undo |= alone && ran.failed;
                completions.push(ran.done);
            }
            Err(_) => {
                undo |= alone;
                tracing::error!("A store write panicked; it was rolled back alone.");
            }
        }
        if txn.is_autocommit() {
            lost = true;
            break;
        }
    }
    // `unplanned`: a failure the operator should hear about.
    let (committed, unplanned) = if lost {
        drop(txn);
        let why = "SQLite rolled the whole transaction back (disk full or I/O error)";
        (Err(why.to_string()), true)
    } else if undo {
        // The write failed half-way: keep none of it. Its caller already
        // holds its own error; the completion's argument is not read.
        if let Err(e) = txn.rollback() {
            tracing::error!(error = %e, "Rolling a failed write back failed.");
        }
        (Err("rolled back".to_string()), false)
    } else {
        let c = txn.commit().map_err(|e| e.to_string());
        let failed = c.is_err();
        (c, failed)
    };
    if let Err(e) = &committed
        && unplanned
    {
        tracing::error!(error = %e, writes = completions.len(), "Store commit failed; callers are told nothing was saved.");
    }
    for c in completions {
        c(committed.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_checkpoint_thread_copies_the_wal_back_without_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        let db = dir.path().join("klaxon.db");
        let before = std::fs::metadata(&db).unwrap().len();
        // About 2 MiB of WAL: well under the writer's own threshold, so only
        // the checkpoint thread can move it into the database file.
        for i in 0..200 {
            let text = "x".repeat(10_000);
            store
                .write(move |c| {
                    audit::record(c, i, "test", "bulk", None, &text, "test").map(|_| ())
                })
                .await
                .unwrap();
        }
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::metadata(&db).unwrap().len() < before + 1_000_000 {
            assert!(
                std::time::Instant::now() < until,
                "the database file did not grow: nothing was checkpointed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        store.close();
    }

    #[tokio::test]
    async fn write_commits_before_answer_and_failures_roll_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        let a = store.write(|c| audit::record(c, 1, "test", "ok", None, "{}", "test"));
        let b = store.write(|c| {
            audit::record(c, 2, "test", "doomed", None, "{}", "test")?;
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

    fn audit_actions(dir: &Path) -> Vec<String> {
        let other = Connection::open(dir.join("klaxon.db")).unwrap();
        other
            .prepare("SELECT action FROM audit ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Keeps the writer busy so that the writes sent next share one batch.
    fn hold_writer(store: &Store) -> impl std::future::Future<Output = Result<(), StoreError>> {
        store.write(|_| {
            std::thread::sleep(std::time::Duration::from_millis(150));
            Ok(())
        })
    }

    #[tokio::test]
    async fn a_transaction_sqlite_rolled_back_whole_is_never_reported_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        let hold = hold_writer(&store);
        let a = store.write(|c| audit::record(c, 1, "test", "before", None, "{}", "test"));
        // What SQLite does on SQLITE_FULL or an I/O error: the whole
        // transaction is gone, savepoints and all, while the statement
        // that hit it may even look fine to the closure.
        let b = store.write(|c| {
            audit::record(c, 2, "test", "victim", None, "{}", "test")?;
            c.execute_batch("ROLLBACK")?;
            Ok(())
        });
        let c = store.write(|c| audit::record(c, 3, "test", "after", None, "{}", "test"));
        let (_, a, b, c) = tokio::join!(hold, a, b, c);
        assert!(matches!(a, Err(StoreError::Unavailable(_))), "{a:?}");
        assert!(b.is_err(), "{b:?}");
        assert!(
            c.is_ok(),
            "the write after the loss runs in a new transaction: {c:?}"
        );
        assert_eq!(audit_actions(dir.path()), vec!["after".to_string()]);
    }

    #[tokio::test]
    async fn the_writer_survives_a_panicking_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        let hold = hold_writer(&store);
        let boom = store.write(|c| -> Result<(), StoreError> {
            audit::record(c, 1, "test", "boom", None, "{}", "test")?;
            panic!("a bug in one closure");
        });
        let fine = store.write(|c| audit::record(c, 2, "test", "fine", None, "{}", "test"));
        let (_, boom, fine) = tokio::join!(hold, boom, fine);
        assert!(matches!(boom, Err(StoreError::Unavailable(_))), "{boom:?}");
        assert!(fine.is_ok(), "{fine:?}");
        let later = store
            .write(|c| audit::record(c, 3, "test", "later", None, "{}", "test"))
            .await;
        assert!(later.is_ok(), "{later:?}");
        assert_eq!(
            audit_actions(dir.path()),
            vec!["fine".to_string(), "later".to_string()]
        );
    }

    /// Set by the CLI connection's busy handler: it found the store locked.
    static CLI_WAITED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    fn cli_busy(tries: i32) -> bool {
        CLI_WAITED.store(true, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(1));
        tries < 10_000
    }

    /// A batch that reads, lets a second connection write klaxon.db (as
    /// `klaxon token create` does beside the daemon), then writes. Returns
    /// the batch's answer, the second connection's, and the audit actions.
    async fn batch_reads_then_writes_while_the_cli_writes(
        behavior: TransactionBehavior,
    ) -> (Result<(), StoreError>, Result<(), String>, Vec<String>) {
        use std::sync::atomic::{AtomicBool, Ordering};
        CLI_WAITED.store(false, Ordering::SeqCst);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), true, behavior).unwrap();
        store
            .write(|c| audit::record(c, 1, "test", "seed", None, "{}", "test"))
            .await
            .unwrap();
        let path = dir.path().join("klaxon.db");
        let (go, started) = std::sync::mpsc::channel::<()>();
        let committed = Arc::new(AtomicBool::new(false));
        let done = committed.clone();
        let cli = std::thread::spawn(move || -> Result<(), String> {
            started.recv().map_err(|e| e.to_string())?;
            let mut conn = Connection::open(&path).map_err(|e| e.to_string())?;
            conn.busy_handler(Some(cli_busy))
                .map_err(|e| e.to_string())?;
            let t = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| e.to_string())?;
            audit::record(&t, 2, "cli", "cli", None, "{}", "cli").map_err(|e| e.to_string())?;
            t.commit().map_err(|e| e.to_string())?;
            done.store(true, Ordering::SeqCst);
            Ok(())
        });
        let batch = store
            .write(move |c| {
                // The read that starts the transaction's snapshot.
                let n: i64 = c.query_row("SELECT count(*) FROM audit", [], |r| r.get(0))?;
                go.send(()).unwrap();
                // Until the CLI has committed (nothing stops it under
                // DEFERRED) or found the store locked (IMMEDIATE).
                let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while !CLI_WAITED.load(Ordering::SeqCst) && !committed.load(Ordering::SeqCst) {
                    assert!(
                        std::time::Instant::now() < until,
                        "the CLI neither wrote nor waited"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                audit::record(c, 3, "test", &format!("after {n}"), None, "{}", "test")
            })
            .await;
        let cli = cli.join().unwrap();
        let actions = audit_actions(dir.path());
        store.close();
        (batch, cli, actions)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_that_reads_then_writes_survives_the_cli_writing_beside_it() {
        let (batch, cli, actions) =
            batch_reads_then_writes_while_the_cli_writes(TransactionBehavior::Immediate).await;
        assert!(batch.is_ok(), "{batch:?}");
        assert!(cli.is_ok(), "{cli:?}");
        assert!(
            CLI_WAITED.load(std::sync::atomic::Ordering::SeqCst),
            "the CLI's write waited for the batch"
        );
        assert_eq!(actions, vec!["seed", "after 1", "cli"]);

        // The control: the same interleaving under DEFERRED fails the
        // batch's write with SQLITE_BUSY_SNAPSHOT (the busy timeout does not
        // help: the snapshot is stale), as the durability review suspected.
        let (batch, cli, actions) =
            batch_reads_then_writes_while_the_cli_writes(TransactionBehavior::Deferred).await;
        assert!(cli.is_ok(), "{cli:?}");
        let err = batch.expect_err("a DEFERRED batch cannot write after the CLI did");
        assert!(err.to_string().contains("locked"), "{err}");
        assert_eq!(actions, vec!["seed", "cli"]);
    }

    #[tokio::test]
    async fn answers_then_ordinary_writes_go_ahead_of_queued_bulk_writes_one_bulk_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        let order = Arc::new(Mutex::new(Vec::<&'static str>::new()));
        let log = |name: &'static str| {
            let order = order.clone();
            move |c: &Connection| {
                order.lock().unwrap().push(name);
                audit::record(c, 1, "test", name, None, "{}", "test")
            }
        };
        // The first bulk write holds the writer until everything else is queued.
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let first = {
            let (store, order) = (store.clone(), order.clone());
            tokio::spawn(async move {
                store
                    .write_bulk(move |c| {
                        order.lock().unwrap().push("bulk-1");
                        started_tx.send(()).unwrap();
                        wait.recv().unwrap();
                        audit::record(c, 1, "test", "bulk-1", None, "{}", "test")
                    })
                    .await
            })
        };
        tokio::task::spawn_blocking(move || started.recv().unwrap())
            .await
            .unwrap();
        let mut queued = Vec::new();
        for (class, name) in [
            (Class::Bulk, "bulk-2"),
            (Class::Bulk, "bulk-3"),
            (Class::Ordinary, "a"),
            (Class::Ordinary, "b"),
            (Class::Urgent, "answer"),
        ] {
            let (store, f) = (store.clone(), log(name));
            queued.push(tokio::spawn(async move {
                match class {
                    Class::Bulk => store.write_bulk(f).await,
                    Class::Ordinary => store.write(f).await,
                    Class::Urgent => store.write_urgent(f).await,
                }
            }));
            // Sent in this order: each reaches the writer's queue before the next.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        go.send(()).unwrap();
        first.await.unwrap().unwrap();
        for q in queued {
            q.await.unwrap().unwrap();
        }
        let expected = vec!["bulk-1", "answer", "a", "b", "bulk-2", "bulk-3"];
        assert_eq!(
            *order.lock().unwrap(),
            expected,
            "the answer first, then the ordinary writes queued behind bulk ones"
        );
        assert_eq!(audit_actions(dir.path()), expected);
        store.close();
    }

    #[tokio::test]
    async fn a_failed_or_panicking_bulk_write_keeps_nothing_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), true).unwrap();
        // Bulk writes run without a savepoint: half of one must not stay.
        let failed = store
            .write_bulk(|c| {
                audit::record(c, 1, "test", "half-written", None, "{}", "test")?;
                Err::<(), _>(StoreError::Conflict("stopped half-way".into()))
            })
            .await;
        assert!(matches!(failed, Err(StoreError::Conflict(_))), "{failed:?}");
        let panicked = store
            .write_bulk(|c| -> Result<(), StoreError> {
                audit::record(c, 2, "test", "panicked", None, "{}", "test")?;
                panic!("a bug in a bulk write")
            })
            .await;
        assert!(
            matches!(panicked, Err(StoreError::Unavailable(_))),
            "{panicked:?}"
        );
        store
            .write_bulk(|c| audit::record(c, 3, "test", "bulk-ok", None, "{}", "test"))
            .await
            .unwrap();
        store
            .write(|c| audit::record(c, 4, "test", "ok", None, "{}", "test"))
            .await
            .unwrap();
        assert_eq!(audit_actions(dir.path()), vec!["bulk-ok", "ok"]);
        store.close();
    }

    #[tokio::test]
    async fn the_store_folder_and_its_files_are_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A SIS copy left world-readable by an older version.
        std::fs::write(state.join("sis.db"), b"").unwrap();
        std::fs::set_permissions(state.join("sis.db"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let store = Store::open(&state, true).unwrap();
        store
            .write(|c| audit::record(c, 1, "test", "x", None, "{}", "test"))
            .await
            .unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        let mut seen = Vec::new();
        for e in std::fs::read_dir(&state).unwrap() {
            let e = e.unwrap();
            seen.push(e.file_name().to_string_lossy().to_string());
            assert_eq!(mode(&e.path()), 0o600, "{}", e.path().display());
        }
        seen.sort();
        assert!(seen.contains(&"klaxon.db-wal".to_string()), "{seen:?}");
        assert!(seen.contains(&"sis.db".to_string()), "{seen:?}");
        store.close();
    }
}
