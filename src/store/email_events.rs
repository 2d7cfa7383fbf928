//! Email events after hand-over (SendGrid's webhook, DSN bounces read over
//! IMAP): the one place they change a delivery. Same rules as Twilio's
//! status callbacks (`deliveries::provider_status`): states only move
//! forward, a hard bounce lets the person's next address take over, and a
//! report that names a delivery we do not know changes nothing.

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;
use super::deliveries::{self, StatusApplied};
use crate::deliver::events::{EmailEvent, EventKind, same_message};

/// Applies one event. `Unknown` when no email delivery has that id (or the
/// report's message id is another message's).
pub fn apply(conn: &Connection, now: i64, ev: &EmailEvent) -> Result<StatusApplied, StoreError> {
    let row: Option<(String, Option<String>, String)> = conn
        .prepare_cached("SELECT channel, provider_msg_id, address FROM deliveries WHERE id = ?1")?
        .query_row([ev.delivery_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((channel, stored, address)) = row else {
        return Ok(StatusApplied::Unknown);
    };
    if channel != "email" {
        return Ok(StatusApplied::Unknown);
    }
    if let (Some(stored), Some(reported)) = (&stored, &ev.message_id)
        && !same_message(stored, reported)
    {
        return Ok(StatusApplied::Unknown);
    }
    if ev.kind == EventKind::Complaint {
        conn.prepare_cached(
            "INSERT INTO email_complaints (address, delivery_id, code, reason, at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(address) DO UPDATE SET delivery_id = excluded.delivery_id, code = excluded.code,
                 reason = excluded.reason, at = excluded.at",
        )?
        .execute(params![address, ev.delivery_id, ev.code, ev.reason, now])?;
    }
    // provider_status matches on the stored id (or none yet).
    let msg_id = stored.or_else(|| ev.message_id.clone()).unwrap_or_default();
    let applied = deliveries::provider_status(
        conn,
        now,
        Some(ev.delivery_id),
        &msg_id,
        ev.kind.state(),
        Some(&ev.code),
    )?;
    if matches!(
        applied,
        StatusApplied::Applied { .. } | StatusApplied::Deferred
    ) && matches!(ev.kind, EventKind::Undeliverable | EventKind::Failed)
        && let Some(reason) = &ev.reason
    {
        conn.prepare_cached("UPDATE deliveries SET error = ?2 WHERE id = ?1")?
            .execute(params![ev.delivery_id, reason])?;
    }
    // A complaint is news even when the delivery was already `delivered`.
    if ev.kind == EventKind::Complaint && applied == StatusApplied::Unchanged {
        return Ok(StatusApplied::Applied {
            alert: crate::domain::AlertId(conn.query_row(
                "SELECT alert_id FROM deliveries WHERE id = ?1",
                [ev.delivery_id],
                |r| r.get(0),
            )?),
            released_at: None,
        });
    }
    Ok(applied)
}
