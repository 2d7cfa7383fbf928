//! CAP messages seen, so each is handled once across feeds and restarts:
//! keyed by identifier + sender + sent, with what was done (the alert it
//! started, or why nothing), and the cancellations recorded against them.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::StoreError;
use crate::cap::AlertKey;

/// Outcome of a message still being handled; taken over when it is older
/// than the running daemon (a crash interrupted it).
pub const PENDING: &str = "pending";

/// A message already seen.
#[derive(Debug, Clone, Serialize)]
pub struct Seen {
    pub id: i64,
    pub msg_type: String,
    /// Where it was first seen: `feed:<name>`, `webhook:<name>`, `watch-folder`, …
    pub source: String,
    pub received_at: i64,
    /// pending | sent | held | drill | recorded | skipped | failed
    pub outcome: String,
    pub detail: Option<String>,
    pub rule: Option<String>,
    /// The alert it started (or, for a cancel, the rescinding notice).
    pub alert_id: Option<i64>,
    pub cancelled_at: Option<i64>,
}

const COLUMNS: &str =
    "id, msg_type, source, received_at, outcome, detail, rule, alert_id, cancelled_at";

fn seen_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Seen> {
    Ok(Seen {
        id: r.get(0)?,
        msg_type: r.get(1)?,
        source: r.get(2)?,
        received_at: r.get(3)?,
        outcome: r.get(4)?,
        detail: r.get(5)?,
        rule: r.get(6)?,
        alert_id: r.get(7)?,
        cancelled_at: r.get(8)?,
    })
}

pub fn find(conn: &Connection, key: &AlertKey) -> Result<Option<Seen>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM cap_messages WHERE identifier = ?1 AND sender = ?2 AND sent = ?3"
        ))?
        .query_row(
            params![key.identifier, key.sender, key.sent_ms],
            seen_from_row,
        )
        .optional()?)
}

/// The answer to a claim.
#[derive(Debug)]
pub enum Claim {
    /// This caller handles the message; record the outcome under this id.
    Mine(i64),
    /// Already handled (or being handled) elsewhere.
    Seen(Seen),
}

/// Claims a message for handling, in a committed transaction, so that two
/// feeds carrying the same alert act once. A `pending` claim older than
/// `started_at` (a crash interrupted it) is taken over.
pub fn claim(
    conn: &Connection,
    key: &AlertKey,
    msg_type: &str,
    source: &str,
    now: i64,
    started_at: i64,
) -> Result<Claim, StoreError> {
    if let Some(seen) = find(conn, key)? {
        if seen.outcome == PENDING && seen.received_at < started_at {
            conn.execute(
                "UPDATE cap_messages SET received_at = ?2, source = ?3 WHERE id = ?1",
                params![seen.id, now, source],
            )?;
            return Ok(Claim::Mine(seen.id));
        }
        return Ok(Claim::Seen(seen));
    }
    conn.execute(
        "INSERT INTO cap_messages (identifier, sender, sent, msg_type, source, received_at, outcome)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![key.identifier, key.sender, key.sent_ms, msg_type, source, now, PENDING],
    )?;
    Ok(Claim::Mine(conn.last_insert_rowid()))
}

/// Records what was done with a claimed message.
pub fn finish(
    conn: &Connection,
    id: i64,
    outcome: &str,
    detail: Option<&str>,
    rule: Option<&str>,
    alert_id: Option<i64>,
    refers_to: Option<i64>,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE cap_messages SET outcome = ?2, detail = ?3, rule = ?4, alert_id = ?5, refers_to = ?6 WHERE id = ?1",
        params![id, outcome, detail, rule, alert_id, refers_to],
    )?;
    Ok(())
}

/// Sets when a claimed message expires (its held alert is withdrawn then).
pub fn set_expires(conn: &Connection, id: i64, expires: Option<i64>) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE cap_messages SET expires = ?2 WHERE id = ?1",
        params![id, expires],
    )?;
    Ok(())
}

/// Alerts started by CAP messages that have expired while the alert is
/// still held for approval.
pub fn held_and_expired(conn: &Connection, now: i64) -> Result<Vec<i64>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT m.alert_id FROM cap_messages m JOIN alerts a ON a.id = m.alert_id
         WHERE m.outcome = 'held' AND m.expires IS NOT NULL AND m.expires <= ?1 AND a.state = 'held'",
    )?;
    let ids = st
        .query_map([now], |r| r.get(0))?
        .collect::<Result<Vec<i64>, _>>()?;
    Ok(ids)
}

/// Marks a message as cancelled by a later one.
pub fn mark_cancelled(conn: &Connection, id: i64, now: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE cap_messages SET cancelled_at = coalesce(cancelled_at, ?2) WHERE id = ?1",
        params![id, now],
    )?;
    Ok(())
}

/// An alert created for `source` already, if any: closes the window between
/// an alert committed and its message's outcome recorded (a crash there must
/// not send it twice).
pub fn alert_by_source(conn: &Connection, source: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT id FROM alerts WHERE source = ?1 ORDER BY id LIMIT 1")?
        .query_row([source], |r| r.get(0))
        .optional()?)
}

/// Whether an alert went out: released (not held, not cancelled before release).
pub fn alert_went_out(conn: &Connection, alert_id: i64) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT released_at IS NOT NULL FROM alerts WHERE id = ?1")?
        .query_row([alert_id], |r| r.get::<_, bool>(0))
        .optional()?
        .unwrap_or(false))
}

/// Opens `klaxon.db` read-only for `klaxon cap inspect`; none when there is
/// no store yet or it predates CAP handling.
pub fn open_read_only(dir: &std::path::Path) -> Option<Connection> {
    let path = dir.join("klaxon.db");
    if !path.exists() {
        return None;
    }
    let conn =
        Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    conn.prepare("SELECT 1 FROM cap_messages LIMIT 1").ok()?;
    Some(conn)
}

/// Gives a claim back (the action failed): the next poll tries again.
pub fn release(conn: &Connection, id: i64) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM cap_messages WHERE id = ?1 AND outcome = ?2",
        params![id, PENDING],
    )?;
    Ok(())
}

/// Records a webhook signature; false when it was seen before (a replay).
/// Signatures older than `keep_ms` are forgotten: their timestamp is refused
/// as stale anyway.
pub fn record_signature(
    conn: &Connection,
    source: &str,
    signature: &str,
    now: i64,
    keep_ms: i64,
) -> Result<bool, StoreError> {
    conn.execute(
        "DELETE FROM webhook_signatures WHERE seen_at < ?1",
        [now - keep_ms],
    )?;
    let n = conn.execute(
        "INSERT OR IGNORE INTO webhook_signatures (source, signature, seen_at) VALUES (?1, ?2, ?3)",
        params![source, signature, now],
    )?;
    Ok(n == 1)
}
