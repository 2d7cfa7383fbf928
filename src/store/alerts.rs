//! Alerts, their frozen audience (recipients) and acknowledgements.
//!
//! Invariant: an alert, all its recipients and all their deliveries are
//! written in one transaction, before the first message is sent. After a crash
//! the outbox holds everything still owed.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{StoreError, audit};
use crate::audience::{Recipient, StudentRef};
use crate::domain::Channel;

/// Everything needed to create an alert; computed by the trigger.
#[derive(Debug, Clone)]
pub struct NewAlert {
    pub playbook: String,
    pub title: String,
    /// The schools it concerns, as the message names them.
    pub place: String,
    pub priority: i64,
    pub audience_json: String,
    pub message: Option<String>,
    pub drill: bool,
    /// Held alerts wait for `approve` before anything is sent.
    pub held: bool,
    pub source: String,
    pub created_by: String,
    pub notify_within_ms: i64,
    pub ack_within_ms: i64,
    pub parent_id: Option<i64>,
    pub estimate_ms: Option<i64>,
    pub warning: Option<String>,
    /// Frozen copy (hard link) of the SIS file the audience is resolved
    /// from, kept until the alert is fully materialized.
    pub snapshot: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Created {
    pub id: i64,
    pub recipients: i64,
    pub unreachable: i64,
    pub deliveries: i64,
    /// Notify deadline, ms since epoch; `None` while held.
    pub deadline: Option<i64>,
}

/// A recipient's acknowledgement token: 160 random bits, base64url.
fn new_tokens(n: usize) -> Result<Vec<String>, StoreError> {
    use base64::Engine;
    let mut bytes = vec![0u8; n * 20];
    getrandom::fill(&mut bytes).map_err(|e| StoreError::Corrupt(format!("no randomness: {e}")))?;
    Ok(bytes
        .chunks(20)
        .map(|c| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c))
        .collect())
}

/// Channels a recipient is sent on: the playbook's channels they have an
/// address for; if they have none of those, another channel this install can
/// send on, so a guardian with only a landline still gets the call.
pub fn channels_for<'a>(
    wanted: &[Channel],
    available: &[Channel],
    addresses: &'a [(Channel, String)],
) -> Vec<&'a (Channel, String)> {
    let mut chosen: Vec<&(Channel, String)> = Vec::new();
    for ch in wanted {
        if let Some(a) = addresses.iter().find(|(c, _)| c == ch) {
            chosen.push(a);
        }
    }
    if chosen.is_empty()
        && let Some(a) = addresses.iter().find(|(c, _)| available.contains(c))
    {
        chosen.push(a);
    }
    chosen
}

/// Writes the alert's own row, not yet materialized: its recipients and
/// deliveries follow in chunks (`add_recipients`), then `finish`.
pub fn insert(conn: &Connection, now: i64, new: &NewAlert) -> Result<i64, StoreError> {
    let state = if new.held { "held" } else { "sending" };
    let (released, notify_deadline, ack_deadline) = if new.held {
        (None, None, None)
    } else {
        (
            Some(now),
            Some(now + new.notify_within_ms),
            Some(now + new.ack_within_ms),
        )
    };
    conn.prepare_cached(
        "INSERT INTO alerts (playbook, title, priority, audience, message, drill, state, source, created_by,
                             created_at, released_at, notify_deadline, ack_deadline, parent_id,
                             estimate_ms, warning, place, materialized, snapshot)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, 0, ?18)",
    )?
    .execute(params![
        new.playbook,
        new.title,
        new.priority,
        new.audience_json,
        new.message,
        new.drill,
        state,
        new.source,
        new.created_by,
        now,
        released,
        notify_deadline,
        ack_deadline,
        new.parent_id,
        new.estimate_ms,
        new.warning,
        new.place,
        new.snapshot,
    ])?;
    let alert_id = conn.last_insert_rowid();
    let detail = serde_json::json!({
        "playbook": new.playbook, "audience": new.audience_json, "drill": new.drill,
        "held": new.held, "source": new.source,
    });
    audit::record(
        conn,
        now,
        &new.created_by,
        "alert.create",
        Some(alert_id),
        &detail.to_string(),
    )?;
    Ok(alert_id)
}

/// How an alert's deliveries are made from its recipients.
#[derive(Debug, Clone)]
pub struct Fanout {
    pub channels: Vec<Channel>,
    pub available: Vec<Channel>,
    pub priority: i64,
    pub held: bool,
}

/// Adds recipients to an alert with their deliveries. Idempotent: a person
/// already there keeps their token and deliveries (their list of children is
/// updated), so a chunk may be written twice, as recovery after a crash does.
/// Returns the new recipients and deliveries.
pub fn add_recipients(
    conn: &Connection,
    alert_id: i64,
    now: i64,
    f: &Fanout,
    recipients: &[Recipient],
) -> Result<(i64, i64), StoreError> {
    let tokens = new_tokens(recipients.len())?;
    let mut ins_r = conn.prepare_cached(
        "INSERT OR IGNORE INTO recipients (alert_id, person_id, role, name, language, students, addresses, token)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut upd_r = conn.prepare_cached(
        "UPDATE recipients SET students = ?3 WHERE alert_id = ?1 AND person_id = ?2",
    )?;
    let mut ins_d = conn.prepare_cached(
        "INSERT INTO deliveries (alert_id, recipient_id, channel, address, state, priority, next_attempt_at, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?7)",
    )?;
    let delivery_state = if f.held { "held" } else { "queued" };
    let (mut added, mut deliveries) = (0i64, 0i64);
    for (r, token) in recipients.iter().zip(tokens) {
        let students =
            serde_json::to_string(&r.students).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let addresses =
            serde_json::to_string(&r.addresses).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let inserted = ins_r.execute(params![
            alert_id,
            r.person_id,
            r.role.as_str(),
            r.name,
            r.language,
            students,
            addresses,
            token
        ])?;
        if inserted == 0 {
            upd_r.execute(params![alert_id, r.person_id, students])?;
            continue;
        }
        added += 1;
        let rid = conn.last_insert_rowid();
        for (ch, addr) in channels_for(&f.channels, &f.available, &r.addresses) {
            ins_d.execute(params![
                alert_id,
                rid,
                ch.as_str(),
                addr,
                delivery_state,
                f.priority,
                now
            ])?;
            deliveries += 1;
        }
    }
    Ok((added, deliveries))
}

/// Marks an alert fully materialized and records its counts and capacity
/// estimate. Settles it at once if everything was already handed over.
pub fn finish(
    conn: &Connection,
    alert_id: i64,
    now: i64,
    estimate_ms: Option<i64>,
    warning: Option<&str>,
) -> Result<Created, StoreError> {
    let (recipients, unreachable): (i64, i64) = conn
        .prepare_cached("SELECT count(*), coalesce(sum(addresses = '[]'), 0) FROM recipients WHERE alert_id = ?1")?
        .query_row([alert_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let deliveries: i64 = conn
        .prepare_cached("SELECT count(*) FROM deliveries WHERE alert_id = ?1")?
        .query_row([alert_id], |r| r.get(0))?;
    let pending = conn
        .prepare_cached(
            "SELECT 1 FROM deliveries WHERE alert_id = ?1 AND state IN ('queued', 'sending', 'held') LIMIT 1",
        )?
        .exists([alert_id])?;
    conn.prepare_cached(
        "UPDATE alerts SET materialized = 1, snapshot = NULL, recipients = ?2, unreachable = ?3,
                estimate_ms = coalesce(?4, estimate_ms), warning = coalesce(?5, warning),
                settled_at = CASE WHEN ?6 THEN NULL ELSE coalesce(settled_at, ?7) END
         WHERE id = ?1",
    )?
    .execute(params![
        alert_id,
        recipients,
        unreachable,
        estimate_ms,
        warning,
        pending,
        now
    ])?;
    let deadline: Option<i64> = conn
        .prepare_cached("SELECT notify_deadline FROM alerts WHERE id = ?1")?
        .query_row([alert_id], |r| r.get(0))?;
    audit::record(
        conn,
        now,
        "klaxon",
        "alert.materialized",
        Some(alert_id),
        &serde_json::json!({"recipients": recipients, "deliveries": deliveries}).to_string(),
    )?;
    Ok(Created {
        id: alert_id,
        recipients,
        unreachable,
        deliveries,
        deadline,
    })
}

/// Alerts whose materialization a crash interrupted: (id, snapshot path).
pub fn unmaterialized(conn: &Connection) -> Result<Vec<(i64, Option<String>)>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT id, snapshot FROM alerts WHERE materialized = 0 ORDER BY id")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The alert's own row.
#[derive(Debug, Clone, Serialize)]
pub struct AlertRow {
    pub id: i64,
    pub playbook: String,
    pub title: String,
    pub place: String,
    pub priority: i64,
    pub audience: serde_json::Value,
    pub message: Option<String>,
    pub drill: bool,
    pub state: String,
    pub source: String,
    pub created_by: String,
    pub created_at: i64,
    pub released_at: Option<i64>,
    pub notify_deadline: Option<i64>,
    pub ack_deadline: Option<i64>,
    pub settled_at: Option<i64>,
    pub escalated_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub parent_id: Option<i64>,
    pub recipients: i64,
    pub unreachable: i64,
    pub estimate_ms: Option<i64>,
    pub warning: Option<String>,
}

const ALERT_COLUMNS: &str = "id, playbook, title, priority, audience, message, drill, state, source, created_by,
    created_at, released_at, notify_deadline, ack_deadline, settled_at, escalated_at, cancelled_at, parent_id,
    recipients, unreachable, estimate_ms, warning, place";

fn alert_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AlertRow> {
    let audience: String = r.get(4)?;
    Ok(AlertRow {
        id: r.get(0)?,
        playbook: r.get(1)?,
        title: r.get(2)?,
        priority: r.get(3)?,
        audience: serde_json::from_str(&audience).unwrap_or(serde_json::Value::Null),
        message: r.get(5)?,
        drill: r.get(6)?,
        state: r.get(7)?,
        source: r.get(8)?,
        created_by: r.get(9)?,
        created_at: r.get(10)?,
        released_at: r.get(11)?,
        notify_deadline: r.get(12)?,
        ack_deadline: r.get(13)?,
        settled_at: r.get(14)?,
        escalated_at: r.get(15)?,
        cancelled_at: r.get(16)?,
        parent_id: r.get(17)?,
        recipients: r.get(18)?,
        unreachable: r.get(19)?,
        estimate_ms: r.get(20)?,
        warning: r.get(21)?,
        place: r.get(22)?,
    })
}

pub fn get(conn: &Connection, id: i64) -> Result<AlertRow, StoreError> {
    conn.prepare_cached(&format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = ?1"))?
        .query_row([id], alert_from_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("alert {id}")))
}

pub fn recent(conn: &Connection, limit: i64) -> Result<Vec<AlertRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ALERT_COLUMNS} FROM alerts ORDER BY id DESC LIMIT ?1"
    ))?;
    let rows = stmt.query_map([limit], alert_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Progress of one alert, as the API and `klaxon status` show it.
#[derive(Debug, Clone, Serialize)]
pub struct AlertStatus {
    #[serde(flatten)]
    pub alert: AlertRow,
    /// Deliveries per channel and state.
    pub channels: BTreeMap<String, BTreeMap<String, i64>>,
    /// Deliveries per state, all channels.
    pub totals: BTreeMap<String, i64>,
    /// Recipients who have at least one delivery handed over.
    pub reached: i64,
    pub acknowledged: i64,
    /// Acknowledgements per choice (pickup plans).
    pub choices: BTreeMap<String, i64>,
    /// When the last delivery was handed to a provider.
    pub last_handover_at: Option<i64>,
    /// true/false once known; null while sending and before the deadline.
    pub deadline_met: Option<bool>,
}

pub fn status(conn: &Connection, id: i64, now: i64) -> Result<AlertStatus, StoreError> {
    let alert = get(conn, id)?;
    let mut channels: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    {
        let mut stmt = conn.prepare_cached(
            "SELECT channel, state, count(*) FROM deliveries WHERE alert_id = ?1 GROUP BY channel, state",
        )?;
        let mut rows = stmt.query([id])?;
        while let Some(r) = rows.next()? {
            let (ch, st, n): (String, String, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
            *channels
                .entry(ch)
                .or_default()
                .entry(st.clone())
                .or_default() += n;
            *totals.entry(st).or_default() += n;
        }
    }
    let last_handover_at: Option<i64> = conn
        .prepare_cached("SELECT max(sent_at) FROM deliveries WHERE alert_id = ?1")?
        .query_row([id], |r| r.get(0))?;
    let reached: i64 = conn
        .prepare_cached(
            "SELECT count(DISTINCT recipient_id) FROM deliveries
             WHERE alert_id = ?1 AND state IN ('sent', 'delivered')",
        )?
        .query_row([id], |r| r.get(0))?;
    let acknowledged: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM recipients WHERE alert_id = ?1 AND acked_at IS NOT NULL",
        )?
        .query_row([id], |r| r.get(0))?;
    let mut choices = BTreeMap::new();
    {
        let mut stmt = conn.prepare_cached(
            "SELECT ack_choice, count(*) FROM recipients WHERE alert_id = ?1 AND ack_choice IS NOT NULL GROUP BY ack_choice",
        )?;
        let mut rows = stmt.query([id])?;
        while let Some(r) = rows.next()? {
            choices.insert(r.get::<_, String>(0)?, r.get::<_, i64>(1)?);
        }
    }
    let deadline_met = match (alert.notify_deadline, alert.settled_at) {
        (Some(d), Some(s)) => Some(last_handover_at.unwrap_or(s) <= d),
        (Some(d), None) if now > d && alert.state == "sending" => Some(false),
        _ => None,
    };
    Ok(AlertStatus {
        alert,
        channels,
        totals,
        reached,
        acknowledged,
        choices,
        last_handover_at,
        deadline_met,
    })
}

/// One recipient as the acknowledgement page and the outstanding list show it.
#[derive(Debug, Clone, Serialize)]
pub struct RecipientRow {
    pub id: i64,
    pub alert_id: i64,
    pub person_id: String,
    pub role: String,
    pub name: String,
    pub language: String,
    pub students: Vec<StudentRef>,
    pub acked_at: Option<i64>,
    pub ack_choice: Option<String>,
    pub ack_via: Option<String>,
}

fn recipient_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RecipientRow> {
    let students: String = r.get(6)?;
    Ok(RecipientRow {
        id: r.get(0)?,
        alert_id: r.get(1)?,
        person_id: r.get(2)?,
        role: r.get(3)?,
        name: r.get(4)?,
        language: r.get(5)?,
        students: serde_json::from_str(&students).unwrap_or_default(),
        acked_at: r.get(7)?,
        ack_choice: r.get(8)?,
        ack_via: r.get(9)?,
    })
}

const RECIPIENT_COLUMNS: &str =
    "id, alert_id, person_id, role, name, language, students, acked_at, ack_choice, ack_via";

pub fn recipient_by_token(
    conn: &Connection,
    token: &str,
) -> Result<Option<RecipientRow>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE token = ?1"
        ))?
        .query_row([token], recipient_from_row)
        .optional()?)
}

/// Recipients of an alert who have confirmed, with their answer.
pub fn answered(
    conn: &Connection,
    alert_id: i64,
    limit: i64,
) -> Result<Vec<RecipientRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE alert_id = ?1 AND acked_at IS NOT NULL ORDER BY name LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![alert_id, limit], recipient_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn recipient_language(conn: &Connection, id: i64) -> Result<String, StoreError> {
    conn.prepare_cached("SELECT language FROM recipients WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("recipient {id}")))
}

/// Recipients of an alert who are not yet confirmed, with why: never
/// reached, or reached but silent. This is the safety officer's work list.
#[derive(Debug, Clone, Serialize)]
pub struct Outstanding {
    pub recipient: RecipientRow,
    /// `unreachable` (no address), `failed` (every delivery failed),
    /// `pending` (still being sent) or `reached` (sent, not confirmed).
    pub reason: String,
}

pub fn outstanding(
    conn: &Connection,
    alert_id: i64,
    limit: i64,
) -> Result<Vec<Outstanding>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {RECIPIENT_COLUMNS},
            (SELECT count(*) FROM deliveries d WHERE d.recipient_id = recipients.id) AS total,
            (SELECT count(*) FROM deliveries d WHERE d.recipient_id = recipients.id AND d.state IN ('sent','delivered')) AS ok,
            (SELECT count(*) FROM deliveries d WHERE d.recipient_id = recipients.id AND d.state IN ('queued','sending','held')) AS pending
         FROM recipients WHERE alert_id = ?1 AND acked_at IS NULL ORDER BY name LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![alert_id, limit], |r| {
        let rec = recipient_from_row(r)?;
        let (total, ok, pending): (i64, i64, i64) = (r.get(10)?, r.get(11)?, r.get(12)?);
        let reason = if total == 0 {
            "unreachable"
        } else if ok > 0 {
            "reached"
        } else if pending > 0 {
            "pending"
        } else {
            "failed"
        };
        Ok(Outstanding {
            recipient: rec,
            reason: reason.into(),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// What recording an acknowledgement did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum AckOutcome {
    /// First confirmation.
    Recorded,
    /// The choice changed.
    Changed,
    /// Same as already recorded: nothing written.
    Unchanged,
    /// The choice may no longer be changed (past the ack deadline).
    Locked,
}

/// Records an acknowledgement. Idempotent: repeating the same choice writes
/// nothing. A different choice replaces the old one until the ack deadline.
pub fn acknowledge(
    conn: &Connection,
    recipient_id: i64,
    choice: Option<&str>,
    via: &str,
    now: i64,
) -> Result<AckOutcome, StoreError> {
    let (alert_id, acked_at, old_choice, ack_deadline): (
        i64,
        Option<i64>,
        Option<String>,
        Option<i64>,
    ) = conn
        .prepare_cached(
            "SELECT r.alert_id, r.acked_at, r.ack_choice, a.ack_deadline
             FROM recipients r JOIN alerts a ON a.id = r.alert_id WHERE r.id = ?1",
        )?
        .query_row([recipient_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("recipient {recipient_id}")))?;
    let outcome = match acked_at {
        None => AckOutcome::Recorded,
        Some(_) if choice.is_none() || old_choice.as_deref() == choice => {
            return Ok(AckOutcome::Unchanged);
        }
        Some(_) if ack_deadline.is_some_and(|d| now > d) => return Ok(AckOutcome::Locked),
        Some(_) => AckOutcome::Changed,
    };
    conn.prepare_cached(
        "UPDATE recipients SET acked_at = coalesce(acked_at, ?2), ack_choice = coalesce(?3, ack_choice),
                ack_via = coalesce(ack_via, ?4), ack_changed_at = ?2 WHERE id = ?1",
    )?
    .execute(params![recipient_id, now, choice, via])?;
    conn.prepare_cached("INSERT INTO ack_events (recipient_id, alert_id, at, choice, via) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![recipient_id, alert_id, now, choice, via])?;
    Ok(outcome)
}

/// Sets an alert's state with an audit entry; `held → sending` releases it.
pub fn release(
    conn: &Connection,
    id: i64,
    now: i64,
    actor: &str,
    notify_ms: i64,
    ack_ms: i64,
) -> Result<(), StoreError> {
    let a = get(conn, id)?;
    if a.state != "held" {
        return Err(StoreError::Conflict(format!(
            "alert {id} is {}, not held for approval",
            a.state
        )));
    }
    conn.prepare_cached(
        "UPDATE alerts SET state = 'sending', released_at = ?2, notify_deadline = ?3, ack_deadline = ?4 WHERE id = ?1",
    )?
    .execute(params![id, now, now + notify_ms, now + ack_ms])?;
    conn.prepare_cached(
        "UPDATE deliveries SET state = 'queued', next_attempt_at = ?2, updated_at = ?2 WHERE alert_id = ?1 AND state = 'held'",
    )?
    .execute(params![id, now])?;
    audit::record(conn, now, actor, "alert.approve", Some(id), "{}")
}

/// Cancels an alert: nothing more is sent; what was sent stays on record.
pub fn cancel(conn: &Connection, id: i64, now: i64, actor: &str) -> Result<i64, StoreError> {
    let a = get(conn, id)?;
    if a.state == "cancelled" {
        return Err(StoreError::Conflict(format!(
            "alert {id} is already cancelled"
        )));
    }
    conn.prepare_cached("UPDATE alerts SET state = 'cancelled', cancelled_at = ?2, settled_at = coalesce(settled_at, ?2) WHERE id = ?1")?
        .execute(params![id, now])?;
    let n = conn
        .prepare_cached(
            "UPDATE deliveries SET state = 'cancelled', updated_at = ?2 WHERE alert_id = ?1 AND state IN ('queued', 'held')",
        )?
        .execute(params![id, now])?;
    audit::record(
        conn,
        now,
        actor,
        "alert.cancel",
        Some(id),
        &serde_json::json!({"unsent": n}).to_string(),
    )?;
    Ok(n as i64)
}

/// The recipients of an alert, as audience for a follow-up (all-clear goes
/// to exactly the people the alert went to).
pub fn audience_of(conn: &Connection, id: i64) -> Result<Vec<Recipient>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT person_id, role, name, language, students, addresses FROM recipients WHERE alert_id = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([id], |r| {
        let role: String = r.get(1)?;
        let students: String = r.get(4)?;
        let addresses: String = r.get(5)?;
        Ok((
            r.get::<_, String>(0)?,
            role,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            students,
            addresses,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (person_id, role, name, language, students, addresses) = row?;
        out.push(Recipient {
            person_id,
            role: crate::domain::Role::parse(&role)
                .ok_or_else(|| StoreError::Corrupt(format!("role `{role}`")))?,
            name,
            language,
            students: serde_json::from_str(&students)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            addresses: serde_json::from_str(&addresses)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        });
    }
    Ok(out)
}
