//! Replies from people: which alert an SMS reply or a key on a call answers,
//! the inbox of messages that are not confirmations, and SMS opt-outs.
//!
//! Invariant: a reply is never dropped. A confirmation is recorded against
//! the alert it answers; anything else from a known number is kept in that
//! alert's inbox with its sender.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::StoreError;
use crate::domain::{AlertId, RecipientId};

/// The alert a confirmation from `phone` answers: the newest one that sent
/// to that number (on sms or voice, follow-ups included), asked for a
/// confirmation and is not closed; with every recipient of it reached at
/// that number (guardians sharing one phone are all confirmed).
pub fn confirmable(
    conn: &Connection,
    phone: &str,
) -> Result<Option<(AlertId, Vec<RecipientId>)>, StoreError> {
    let alert: Option<i64> = conn
        .prepare_cached(
            "SELECT r.alert_id FROM deliveries d JOIN recipients r ON r.id = d.recipient_id
             JOIN alerts a ON a.id = r.alert_id
             WHERE d.address = ?1 AND d.channel IN ('sms', 'voice') AND a.state IN ('sending', 'settled') AND a.confirm = 1
             ORDER BY r.alert_id DESC LIMIT 1",
        )?
        .query_row([phone], |r| r.get(0))
        .optional()?;
    let Some(alert) = alert else {
        return Ok(None);
    };
    let who = sharing(conn, AlertId(alert), phone)?;
    Ok(Some((AlertId(alert), who)))
}

/// Recipients of `alert` reached (or being reached) at `phone`.
pub fn sharing(
    conn: &Connection,
    alert: AlertId,
    phone: &str,
) -> Result<Vec<RecipientId>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT DISTINCT d.recipient_id FROM deliveries d JOIN recipients r ON r.id = d.recipient_id
         WHERE r.alert_id = ?1 AND d.address = ?2 AND d.channel IN ('sms', 'voice') ORDER BY d.recipient_id",
    )?;
    let rows = st.query_map(params![alert.0, phone], |r| Ok(RecipientId(r.get(0)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The newest alert (any state) that sent to the phone number `address`, with
/// the recipient it was for: where a message that is not a confirmation is
/// filed.
pub fn latest_for(
    conn: &Connection,
    address: &str,
) -> Result<Option<(AlertId, RecipientId)>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT r.alert_id, d.recipient_id FROM deliveries d JOIN recipients r ON r.id = d.recipient_id
             WHERE d.address = ?1 AND d.channel IN ('sms', 'voice') ORDER BY r.alert_id DESC, d.id DESC LIMIT 1",
        )?
        .query_row([address], |r| Ok((AlertId(r.get(0)?), RecipientId(r.get(1)?))))
        .optional()?)
}

/// What a stored reply was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplyKind {
    /// Free text for the operators ("is my son OK?").
    Message,
    /// A confirmation that came after the alert closed.
    LateConfirmation,
    OptOut,
    OptIn,
}

impl ReplyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyKind::Message => "message",
            ReplyKind::LateConfirmation => "late-confirmation",
            ReplyKind::OptOut => "opt-out",
            ReplyKind::OptIn => "opt-in",
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn store_reply(
    conn: &Connection,
    alert: Option<AlertId>,
    recipient: Option<RecipientId>,
    channel: &str,
    address: &str,
    body: &str,
    kind: ReplyKind,
    now: i64,
) -> Result<i64, StoreError> {
    conn.prepare_cached(
        "INSERT INTO replies (alert_id, recipient_id, channel, address, body, kind, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        alert.map(|a| a.0),
        recipient.map(|r| r.0),
        channel,
        address,
        body,
        kind.as_str(),
        now
    ])?;
    Ok(conn.last_insert_rowid())
}

/// One message in an alert's inbox.
#[derive(Debug, Clone, Serialize)]
pub struct InboxEntry {
    pub id: i64,
    pub received_at: i64,
    pub channel: String,
    pub kind: String,
    /// Who wrote, as the SIS names them (None: not matched to a person).
    pub from_person_id: Option<String>,
    pub from_name: Option<String>,
    pub from_role: Option<String>,
    pub address: String,
    pub body: String,
}

/// The inbox of an alert, newest first, a page at a time (ids before `before`).
pub fn inbox(
    conn: &Connection,
    alert: AlertId,
    before: i64,
    limit: i64,
) -> Result<Vec<InboxEntry>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT q.id, q.received_at, q.channel, q.kind, r.person_id, r.name, r.role, q.address, q.body
         FROM replies q LEFT JOIN recipients r ON r.id = q.recipient_id
         WHERE q.alert_id = ?1 AND q.id < ?2 ORDER BY q.id DESC LIMIT ?3",
    )?;
    let rows = st.query_map(params![alert.0, before, limit], |r| {
        Ok(InboxEntry {
            id: r.get(0)?,
            received_at: r.get(1)?,
            channel: r.get(2)?,
            kind: r.get(3)?,
            from_person_id: r.get(4)?,
            from_name: r.get(5)?,
            from_role: r.get(6)?,
            address: r.get(7)?,
            body: r.get(8)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn opt_out(conn: &Connection, address: &str, now: i64) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT OR IGNORE INTO opt_outs (address, at) VALUES (?1, ?2)")?
        .execute(params![address, now])?;
    Ok(())
}

pub fn opt_in(conn: &Connection, address: &str) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM opt_outs WHERE address = ?1")?
        .execute([address])?;
    Ok(())
}
