//! The SIS sync log (`sis_syncs`): one row per import or pull with its
//! outcome and counts, read by `klaxon sis status` and `/readyz`; and the
//! problems already emailed (`sis_notices`), so each is sent once.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::StoreError;

/// One sync as recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRecord {
    pub id: i64,
    pub started_at: i64,
    pub finished_at: i64,
    /// `schedule`, `watch-folder` or `cli`.
    pub trigger: String,
    /// `bulk`, `delta`, `rest` or `rest-incremental`.
    pub kind: String,
    pub source: String,
    /// `ok`, `refused` (the data was judged wrong) or `failed` (it could not be read).
    pub outcome: String,
    pub added: i64,
    pub changed: i64,
    pub removed: i64,
    pub warnings: i64,
    pub message: Option<String>,
}

pub fn insert(conn: &Connection, r: &SyncRecord) -> Result<i64, StoreError> {
    conn.prepare_cached(
        "INSERT INTO sis_syncs (started_at, finished_at, trigger, kind, source, outcome, added, changed, removed, warnings, message)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        r.started_at,
        r.finished_at,
        r.trigger,
        r.kind,
        r.source,
        r.outcome,
        r.added,
        r.changed,
        r.removed,
        r.warnings,
        r.message
    ])?;
    Ok(conn.last_insert_rowid())
}

fn row(r: &rusqlite::Row) -> rusqlite::Result<SyncRecord> {
    Ok(SyncRecord {
        id: r.get(0)?,
        started_at: r.get(1)?,
        finished_at: r.get(2)?,
        trigger: r.get(3)?,
        kind: r.get(4)?,
        source: r.get(5)?,
        outcome: r.get(6)?,
        added: r.get(7)?,
        changed: r.get(8)?,
        removed: r.get(9)?,
        warnings: r.get(10)?,
        message: r.get(11)?,
    })
}

const COLUMNS: &str = "id, started_at, finished_at, trigger, kind, source, outcome, added, changed, removed, warnings, message";

/// The latest syncs, newest first.
pub fn recent(conn: &Connection, limit: i64) -> Result<Vec<SyncRecord>, StoreError> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM sis_syncs ORDER BY id DESC LIMIT ?1"
    ))?;
    let rows = st.query_map([limit], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The latest sync of a kind (`rest` or `rest-incremental`…) that succeeded.
pub fn last_ok(conn: &Connection, kinds: &[&str]) -> Result<Option<SyncRecord>, StoreError> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM sis_syncs WHERE outcome = 'ok' AND kind IN (SELECT value FROM json_each(?1)) ORDER BY id DESC LIMIT 1"
    ))?;
    let list = serde_json::to_string(kinds).unwrap_or_else(|_| "[]".into());
    Ok(st.query_row([list], row).optional()?)
}

/// Records that `problem` was emailed; `false` when it already had been.
pub fn note_problem(conn: &Connection, problem: &str, at: i64) -> Result<bool, StoreError> {
    let n = conn
        .prepare_cached("INSERT OR IGNORE INTO sis_notices (problem, sent_at) VALUES (?1, ?2)")?
        .execute(params![problem, at])?;
    Ok(n == 1)
}

/// Forgets emailed problems except `keep` (they are over): the next time
/// one happens it is a new problem and is emailed again.
pub fn clear_problems(conn: &Connection, keep: &[String]) -> Result<(), StoreError> {
    let list = serde_json::to_string(keep).unwrap_or_else(|_| "[]".into());
    conn.prepare_cached(
        "DELETE FROM sis_notices WHERE problem NOT IN (SELECT value FROM json_each(?1))",
    )?
    .execute([list])?;
    Ok(())
}
