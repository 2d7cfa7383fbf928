//! The audit log: who did what, when. Written in the same transaction as the
//! change it describes, so the log and the state never disagree.

use rusqlite::{Connection, params};
use serde::Serialize;

use super::StoreError;

pub fn record(
    conn: &Connection,
    at: i64,
    actor: &str,
    action: &str,
    alert_id: Option<i64>,
    detail: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO audit (at, actor, action, alert_id, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![at, actor, action, alert_id, detail])?;
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct AuditEntry {
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub alert_id: Option<i64>,
    pub detail: String,
}

pub fn recent(conn: &Connection, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT at, actor, action, alert_id, detail FROM audit ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit], |r| {
        Ok(AuditEntry {
            at: r.get(0)?,
            actor: r.get(1)?,
            action: r.get(2)?,
            alert_id: r.get(3)?,
            detail: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
