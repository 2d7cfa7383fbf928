//! Answers kept for `Idempotency-Key`: a client that repeats a POST (a
//! retry after a time-out, a double click) gets the first answer instead of
//! a second alert. Keys are per caller (a hash of their credentials) and
//! per route, and kept for a day.

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;

/// How long an answer is kept.
pub const KEEP_MS: i64 = 24 * 3600 * 1000;

/// A request still running under a key is presumed dead after this long
/// (the daemon stopped mid-request): a retry may take the key over.
pub const STALE_PENDING_MS: i64 = 5 * 60 * 1000;

/// What the store knows of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// The key is now ours: run the request, then `finish`.
    Taken,
    /// The same key is running now.
    Running,
    /// The key was used with another body (or another route).
    Mismatch,
    /// The first answer.
    Done {
        status: u16,
        content_type: String,
        body: Vec<u8>,
    },
}

/// fingerprint, status, content type, body, created_at.
type Row = (String, Option<i64>, Option<String>, Option<Vec<u8>>, i64);

/// Claims `key` for a request with `fingerprint` (a hash of route and body).
pub fn begin(
    conn: &Connection,
    key: &str,
    fingerprint: &str,
    now: i64,
) -> Result<Slot, StoreError> {
    conn.prepare_cached("DELETE FROM idempotency WHERE created_at < ?1")?
        .execute([now - KEEP_MS])?;
    let row: Option<Row> = conn
        .prepare_cached(
            "SELECT fingerprint, status, content_type, body, created_at FROM idempotency WHERE key = ?1",
        )?
        .query_row([key], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    match row {
        None => {
            conn.prepare_cached(
                "INSERT INTO idempotency (key, fingerprint, created_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![key, fingerprint, now])?;
            Ok(Slot::Taken)
        }
        Some((fp, _, _, _, _)) if fp != fingerprint => Ok(Slot::Mismatch),
        Some((_, Some(status), ct, body, _)) => Ok(Slot::Done {
            status: status as u16,
            content_type: ct.unwrap_or_default(),
            body: body.unwrap_or_default(),
        }),
        Some((_, None, _, _, created)) if now - created > STALE_PENDING_MS => {
            conn.prepare_cached("UPDATE idempotency SET created_at = ?2 WHERE key = ?1")?
                .execute(params![key, now])?;
            Ok(Slot::Taken)
        }
        Some(_) => Ok(Slot::Running),
    }
}

/// Keeps the answer given under `key`.
pub fn finish(
    conn: &Connection,
    key: &str,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE idempotency SET status = ?2, content_type = ?3, body = ?4 WHERE key = ?1",
    )?
    .execute(params![key, status, content_type, body])?;
    Ok(())
}

/// Frees `key` after an answer that must not be replayed (a server error:
/// the retry should run again).
pub fn release(conn: &Connection, key: &str) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM idempotency WHERE key = ?1 AND status IS NULL")?
        .execute([key])?;
    Ok(())
}
