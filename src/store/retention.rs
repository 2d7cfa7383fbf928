//! Retention in `klaxon.db`: purging the personal data of old alerts,
//! pruning old delivery payloads, legal holds (see `audit::hold`), and the
//! switch to incremental vacuum. The schedule lives in `crate::retention`.
//!
//! A purge keeps every count and figure: recipient rows stay, stripped of
//! who they were (sourcedId, name, students, addresses, link, answers), so
//! `alerts::status` computes the same numbers after as before. Students in
//! pickup answers get a per-alert pseudonym, so disagreements still count.
//!
//! Invariant: an alert is purged only when it and its follow-ups are closed,
//! closed before the cutoff, and none of them is on legal hold; an alert is
//! marked `purged_at` only once every row of it is stripped.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, params};
use serde::Serialize;

use super::{StoreError, audit};

/// Rows stripped, by table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Purged {
    pub recipients: i64,
    pub deliveries: i64,
    pub replies: i64,
    pub pickups: i64,
}

impl Purged {
    pub fn add(&mut self, o: Purged) {
        self.recipients += o.recipients;
        self.deliveries += o.deliveries;
        self.replies += o.replies;
        self.pickups += o.pickups;
    }

    pub fn total(&self) -> i64 {
        self.recipients + self.deliveries + self.replies + self.pickups
    }
}

/// Marker of a stripped recipient's sourcedId and link.
const PURGED: &str = "purged:";

/// Alerts (originals, not follow-ups) whose personal data is due: closed
/// before `cutoff` with every follow-up closed, not purged, not on hold
/// (a hold on a follow-up holds its original too).
pub fn due(conn: &Connection, cutoff: i64) -> Result<Vec<i64>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.id FROM alerts a
         WHERE a.parent_id IS NULL AND a.state = 'closed' AND a.closed_at < ?1 AND a.materialized = 1
           AND a.purged_at IS NULL
           AND NOT EXISTS (SELECT 1 FROM alerts f WHERE f.parent_id = a.id
                           AND (f.state <> 'closed' OR f.closed_at >= ?1))
           AND NOT EXISTS (SELECT 1 FROM legal_holds h
                           WHERE h.alert_id = a.id
                              OR h.alert_id IN (SELECT f.id FROM alerts f WHERE f.parent_id = a.id))
         ORDER BY a.id",
    )?;
    let rows = stmt.query_map([cutoff], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether the alert or one of its follow-ups is on hold now (checked in
/// each purge transaction: a hold placed mid-purge stops it).
fn held(conn: &Connection, alert: i64) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT count(*) FROM legal_holds WHERE alert_id = ?1
                OR alert_id IN (SELECT id FROM alerts WHERE parent_id = ?1)",
        )?
        .query_row([alert], |r| r.get::<_, i64>(0))?
        > 0)
}

/// Strips up to `limit` recipients of `alert` and their deliveries
/// (including the follow-ups' deliveries to them). Returns what was
/// stripped; fewer than `limit` recipients means none is left. A hold placed since
/// `due` stops it (`Conflict`).
pub fn purge_chunk(conn: &Connection, alert: i64, limit: i64) -> Result<Purged, StoreError> {
    if held(conn, alert)? {
        return Err(StoreError::Conflict(format!(
            "alert {alert} was put on legal hold; its purge stops"
        )));
    }
    // Set-based, a chunk at a time: each statement finds its rows by index.
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS retention_chunk (id INTEGER PRIMARY KEY);
         DELETE FROM retention_chunk;",
    )?;
    let recipients = conn
        .prepare_cached(
            "INSERT INTO retention_chunk (id)
             SELECT id FROM recipients WHERE alert_id = ?1 AND person_id NOT LIKE 'purged:%' LIMIT ?2",
        )?
        .execute(params![alert, limit])? as i64;
    conn.prepare_cached(
        "UPDATE recipients SET person_id = ?1 || id, name = '', students = '[]', addresses = '[]',
                token = ?1 || id, ack_choice = NULL WHERE id IN (SELECT id FROM retention_chunk)",
    )?
    .execute([PURGED])?;
    let deliveries = conn
        .prepare_cached(
            "UPDATE deliveries SET address = '', error = NULL, provider_msg_id = NULL
             WHERE recipient_id IN (SELECT id FROM retention_chunk) AND address <> ''",
        )?
        .execute([])? as i64;
    conn.execute_batch("DELETE FROM retention_chunk")?;
    Ok(Purged {
        recipients,
        deliveries,
        ..Purged::default()
    })
}

/// Finishes an alert's purge once `purge_chunk` found nobody left: pickup
/// answers get per-alert pseudonyms, reply texts and answer history are
/// stripped (by alert: replies and acknowledgements belong to it), the alert and its follow-ups are marked purged, and the purge
/// is audited with `total` (the counts of every chunk).
pub fn finish(
    conn: &Connection,
    alert: i64,
    now: i64,
    total: Purged,
) -> Result<Purged, StoreError> {
    if held(conn, alert)? {
        return Err(StoreError::Conflict(format!(
            "alert {alert} was put on legal hold; its purge stops"
        )));
    }
    let mut p = Purged::default();
    // Same student, same pseudonym within the alert: conflicts still count.
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS retention_pseudonyms (student_id TEXT PRIMARY KEY, n INTEGER NOT NULL);
         DELETE FROM retention_pseudonyms;",
    )?;
    conn.prepare_cached(
        "INSERT INTO retention_pseudonyms (student_id, n)
         SELECT student_id, row_number() OVER (ORDER BY random()) FROM
           (SELECT DISTINCT student_id FROM pickups WHERE alert_id = ?1 AND student_id NOT LIKE 'purged:%')",
    )?
    .execute([alert])?;
    p.pickups = conn
        .prepare_cached(
            "UPDATE pickups SET student_id = ?2 || (SELECT n FROM retention_pseudonyms s WHERE s.student_id = pickups.student_id)
             WHERE alert_id = ?1 AND student_id NOT LIKE 'purged:%'",
        )?
        .execute(params![alert, PURGED])? as i64;
    conn.execute_batch("DELETE FROM retention_pseudonyms")?;
    p.replies = conn
        .prepare_cached(
            "UPDATE replies SET address = '', body = ''
             WHERE (alert_id = ?1 OR alert_id IN (SELECT id FROM alerts WHERE parent_id = ?1))
               AND (address <> '' OR body <> '')",
        )?
        .execute([alert])? as i64;
    conn.prepare_cached(
        "UPDATE ack_events SET choice = NULL
         WHERE (alert_id = ?1 OR alert_id IN (SELECT id FROM alerts WHERE parent_id = ?1))
           AND choice IS NOT NULL",
    )?
    .execute([alert])?;
    // The console's copy of the children's names and schools goes whole.
    conn.prepare_cached("DELETE FROM alert_students WHERE alert_id = ?1")?
        .execute([alert])?;
    conn.prepare_cached("UPDATE alerts SET purged_at = ?2 WHERE id = ?1 OR parent_id = ?1")?
        .execute(params![alert, now])?;
    let mut all = total;
    all.add(p);
    audit::record(
        conn,
        now,
        "klaxon",
        "retention.purge",
        audit::Target::Alert(alert),
        &serde_json::to_string(&all).unwrap_or_default(),
        audit::DAEMON,
    )?;
    Ok(p)
}

/// Strips the address, provider id and error text of up to `limit`
/// finished deliveries of closed alerts created before `cutoff`. Returns
/// how many; fewer than `limit` means none is left.
pub fn prune_outbox(conn: &Connection, cutoff: i64, limit: i64) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached(
            "UPDATE deliveries SET address = '', error = NULL, provider_msg_id = NULL
             WHERE id IN (
                SELECT d.id FROM deliveries d JOIN alerts a ON a.id = d.alert_id
                WHERE d.created_at < ?1 AND d.address <> ''
                  AND d.state IN ('sent', 'delivered', 'failed', 'undeliverable', 'cancelled')
                  AND a.state = 'closed'
                  AND NOT EXISTS (SELECT 1 FROM legal_holds h
                                  WHERE h.alert_id = coalesce(a.parent_id, a.id)
                                     OR h.alert_id IN (SELECT f.id FROM alerts f
                                                       WHERE f.parent_id = coalesce(a.parent_id, a.id)))
                LIMIT ?2)",
        )?
        .execute(params![cutoff, limit])? as i64)
}

/// Records a retention run in the audit log.
pub fn record_run(
    conn: &Connection,
    now: i64,
    alerts: i64,
    purged: Purged,
    outbox: i64,
) -> Result<(), StoreError> {
    audit::record(
        conn,
        now,
        "klaxon",
        "retention.run",
        audit::Target::None,
        &serde_json::json!({"alerts_purged": alerts, "rows": purged, "outbox_pruned": outbox})
            .to_string(),
        audit::DAEMON,
    )?;
    Ok(())
}

/// Switches an existing store file to incremental vacuum, once (a `VACUUM`
/// rewrites the file; it needs as much free disk as the file's size). Call
/// with the store's lock held, before `Store::open`. `Ok(true)` when it
/// switched. A new file gets the mode from `Store::open`.
pub fn enable_incremental_vacuum(dir: &Path) -> Result<bool, StoreError> {
    let path = dir.join("klaxon.db");
    if !path.exists() {
        return Ok(false);
    }
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let mode: i64 = conn.pragma_query_value(None, "auto_vacuum", |r| r.get(0))?;
    if mode == 2 {
        return Ok(false);
    }
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    conn.execute_batch("VACUUM")?;
    Ok(true)
}

/// Gives up to `pages` free pages back to the file system (0: all).
pub fn incremental_vacuum(conn: &Connection, pages: i64) -> Result<(), StoreError> {
    // The pragma returns no rows but must be stepped to run.
    let mut stmt = conn.prepare(&format!("PRAGMA incremental_vacuum({pages})"))?;
    let mut rows = stmt.query([])?;
    while rows.next()?.is_some() {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut c).unwrap();
        c
    }

    fn alert(c: &Connection, id: i64, parent: Option<i64>, state: &str, closed_at: Option<i64>) {
        c.execute(
            "INSERT INTO alerts (id, playbook, title, place, priority, audience, state, source, created_by, created_at, parent_id, closed_at)
             VALUES (?1, 'lockdown', 'Lockdown', 'X', 1, '{}', ?2, 'api', 't', 0, ?3, ?4)",
            params![id, state, parent, closed_at],
        )
        .unwrap();
    }

    #[test]
    fn only_closed_unheld_families_are_due() {
        let c = store();
        alert(&c, 1, None, "closed", Some(100));
        alert(&c, 2, None, "closed", Some(100));
        alert(&c, 3, Some(2), "sending", None);
        alert(&c, 4, None, "closed", Some(100));
        alert(&c, 5, Some(4), "closed", Some(100));
        alert(&c, 6, None, "closed", Some(900));
        alert(&c, 7, None, "settled", None);
        assert_eq!(due(&c, 500).unwrap(), vec![1, 4]);
        audit::hold(&c, 5, "records request 12", "cli", 200, "cli").unwrap();
        assert_eq!(due(&c, 500).unwrap(), vec![1]);
        assert!(matches!(
            purge_chunk(&c, 4, 10),
            Err(StoreError::Conflict(_))
        ));
    }
}
