//! Alerts and their frozen audience (recipients): the lifecycle transitions
//! (`release`, `cancel`, `close`, `settle_if_done`), materialization in
//! chunks, follow-ups (updates and all-clears, which reuse the original's
//! recipients), status and figures.
//!
//! Invariant: an alert's state only moves along `AlertState::can_move_to`,
//! and each move is one committed transaction together with what it implies
//! for the outbox (a cancel cancels every unsent delivery in the same
//! transaction; a chunk written after a cancel adds no delivery).

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{StoreError, audit};
use crate::audience::{Recipient, StudentRef};
use crate::domain::{
    AckKey, AckToken, AlertId, AlertState, Channel, CloseReason, DeliveryState, RecipientId,
};

/// What kind of alert a row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlertKind {
    /// Starts with its own audience.
    Alert,
    /// A follow-up to the original's recipients ("pick up at the north gate").
    Update,
    /// The last follow-up: the situation is over.
    AllClear,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Alert => "alert",
            AlertKind::Update => "update",
            AlertKind::AllClear => "all-clear",
        }
    }

    fn parse(s: &str) -> AlertKind {
        match s {
            "update" => AlertKind::Update,
            "all-clear" => AlertKind::AllClear,
            _ => AlertKind::Alert,
        }
    }
}

/// Everything needed to create an alert; computed by the trigger.
#[derive(Debug, Clone)]
pub struct NewAlert {
    pub kind: AlertKind,
    pub playbook: String,
    pub title: String,
    /// The schools it concerns, as the message names them.
    pub place: String,
    pub priority: i64,
    pub audience_json: String,
    pub message: Option<String>,
    /// The text per language, JSON `{language: text}`, when there is one
    /// per language (then `message` is the default language's).
    pub messages: Option<String>,
    /// A second operator must approve it (two-person rule).
    pub two_person: bool,
    /// Sent at once by its operator, without the second approval it needed:
    /// why (an emergency override; it goes on the review list).
    pub override_reason: Option<String>,
    pub drill: bool,
    /// Held alerts wait for `approve` before anything is sent.
    pub held: bool,
    /// Whether recipients are asked to confirm (replies are matched to it).
    pub confirm: bool,
    pub source: String,
    pub created_by: String,
    pub notify_within_ms: i64,
    pub ack_within_ms: i64,
    /// Length of the escalation stage after the ack deadline; 0 without escalation.
    pub escalate_within_ms: i64,
    pub parent_id: Option<AlertId>,
    pub warning: Option<String>,
    /// Frozen copy (hard link) of the SIS file the audience is resolved
    /// from, kept until the alert is fully materialized.
    pub snapshot: Option<String>,
    /// The pre-flight's capacity estimate for the hand-over, stored with the
    /// row so it is there before any delivery is claimed.
    pub estimate_ms: Option<i64>,
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

pub use crate::domain::channels_for;

/// The times that follow from a release at `now`.
struct Deadlines {
    notify: i64,
    ack: i64,
    escalate_until: Option<i64>,
    close_at: i64,
}

fn deadlines(now: i64, notify_ms: i64, ack_ms: i64, escalate_ms: i64) -> Deadlines {
    let ack = now + ack_ms;
    let escalate_until = (escalate_ms > 0).then(|| ack + escalate_ms);
    Deadlines {
        notify: now + notify_ms,
        ack,
        escalate_until,
        close_at: escalate_until.unwrap_or(ack),
    }
}

/// Writes the alert's own row, not yet materialized: its recipients and
/// deliveries follow in chunks (`add_recipients`), then `finish`.
pub fn insert(conn: &Connection, now: i64, new: &NewAlert) -> Result<AlertId, StoreError> {
    let state = if new.held {
        AlertState::Held
    } else {
        AlertState::Sending
    };
    let d = (!new.held).then(|| {
        deadlines(
            now,
            new.notify_within_ms,
            new.ack_within_ms,
            new.escalate_within_ms,
        )
    });
    conn.prepare_cached(
        "INSERT INTO alerts (playbook, title, priority, audience, message, drill, state, source, created_by,
                             created_at, released_at, notify_deadline, ack_deadline, parent_id,
                             warning, place, materialized, snapshot, kind, confirm, escalate_until, close_at, messages,
                             approval, override_reason, estimate_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, 0, ?17, ?18, ?19, ?20, ?21, ?22,
                 ?23, ?24, ?25)",
    )?
    .execute(params![
        new.playbook,
        new.title,
        new.priority,
        new.audience_json,
        new.message,
        new.drill,
        state.as_str(),
        new.source,
        new.created_by,
        now,
        d.as_ref().map(|_| now),
        d.as_ref().map(|d| d.notify),
        d.as_ref().map(|d| d.ack),
        new.parent_id.map(|p| p.0),
        new.warning,
        new.place,
        new.snapshot,
        new.kind.as_str(),
        new.confirm,
        d.as_ref().and_then(|d| d.escalate_until),
        d.as_ref().map(|d| d.close_at),
        new.messages,
        new.two_person.then_some("two-person"),
        new.override_reason,
        new.estimate_ms,
    ])?;
    let alert_id = AlertId(conn.last_insert_rowid());
    if let Some(reason) = &new.override_reason {
        audit::record(
            conn,
            now,
            &new.created_by,
            "alert.override",
            Some(alert_id.0),
            &serde_json::json!({ "reason": reason, "at": "trigger" }).to_string(),
            audit::FROM_CONTEXT,
        )?;
    }
    let detail = serde_json::json!({
        "kind": new.kind.as_str(), "playbook": new.playbook, "audience": new.audience_json,
        "drill": new.drill, "held": new.held, "source": new.source, "parent": new.parent_id,
        "message": new.message,
    });
    audit::record(
        conn,
        now,
        &new.created_by,
        "alert.create",
        Some(alert_id.0),
        &detail.to_string(),
        audit::FROM_CONTEXT,
    )?;
    Ok(alert_id)
}

/// How an alert's deliveries are made from its recipients.
#[derive(Debug, Clone)]
pub struct Fanout {
    pub channels: Vec<Channel>,
    pub available: Vec<Channel>,
    pub priority: i64,
    /// Routine messages honour SMS opt-outs on voice too; emergencies still
    /// call and email (an opted-out number never gets an SMS).
    pub routine: bool,
}

/// The state new deliveries of an alert start in, read inside the writing
/// transaction so a chunk written after an approve or a cancel follows it.
/// `None`: the alert is closed and gets no new deliveries.
/// An alert closed by its all-clear still reaches everyone in its audience
/// (in order, before the all-clear); a cancelled one reaches nobody more.
fn delivery_start(conn: &Connection, alert: AlertId) -> Result<Option<DeliveryState>, StoreError> {
    let state = state_of(conn, alert)?;
    let cancelled: bool = conn
        .prepare_cached(
            "SELECT coalesce(closed_reason = 'cancelled', 0) FROM alerts WHERE id = ?1",
        )?
        .query_row([alert.0], |r| r.get(0))?;
    Ok(match state {
        _ if cancelled => None,
        AlertState::Held => Some(DeliveryState::Held),
        AlertState::Sending | AlertState::Settled | AlertState::Closed => {
            Some(DeliveryState::Queued)
        }
    })
}

pub fn state_of(conn: &Connection, alert: AlertId) -> Result<AlertState, StoreError> {
    let s: String = conn
        .prepare_cached("SELECT state FROM alerts WHERE id = ?1")?
        .query_row([alert.0], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("alert {alert}")))?;
    AlertState::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("alert state `{s}`")))
}

/// Inserts one delivery row.
#[allow(clippy::too_many_arguments)]
fn insert_delivery(
    conn: &Connection,
    alert: AlertId,
    recipient: i64,
    channel: Channel,
    address: &str,
    state: DeliveryState,
    priority: i64,
    now: i64,
    escalation: bool,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO deliveries (alert_id, recipient_id, channel, address, state, priority, next_attempt_at, escalation, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?7, ?7)",
    )?
    .execute(params![
        alert.0,
        recipient,
        channel.as_str(),
        address,
        state.as_str(),
        priority,
        now,
        escalation
    ])?;
    Ok(())
}

/// Whether `address` has opted out of SMS (a STOP reply).
pub fn opted_out(conn: &Connection, address: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM opt_outs WHERE address = ?1")?
        .exists([address])?)
}

/// The channels and addresses a recipient is sent on, minus opt-outs.
fn targets<'a>(
    conn: &Connection,
    f: &Fanout,
    addresses: &'a [(Channel, String)],
) -> Result<Vec<&'a (Channel, String)>, StoreError> {
    let mut out = Vec::new();
    for t in channels_for(&f.channels, &f.available, addresses) {
        let phone = matches!(t.0, Channel::Sms | Channel::Voice);
        if phone && (t.0 == Channel::Sms || f.routine) && opted_out(conn, &t.1)? {
            continue;
        }
        out.push(t);
    }
    Ok(out)
}

/// Adds recipients to an alert with their deliveries. Idempotent: a person
/// already there keeps their id and deliveries (their list of children is
/// updated), so a chunk may be written twice, as recovery after a crash does.
/// Returns the new recipients and deliveries.
pub fn add_recipients(
    conn: &Connection,
    alert_id: AlertId,
    now: i64,
    f: &Fanout,
    key: &AckKey,
    recipients: &[Recipient],
) -> Result<(i64, i64), StoreError> {
    let Some(start) = delivery_start(conn, alert_id)? else {
        return Ok((0, 0));
    };
    // Ids are chosen here (one writer, inside its transaction) so the token
    // hash, which depends on the id, is written with the row.
    let mut next_id: i64 = conn
        .prepare_cached("SELECT coalesce(max(id), 0) + 1 FROM recipients")?
        .query_row([], |r| r.get(0))?;
    let mut ins_r = conn.prepare_cached(
        "INSERT OR IGNORE INTO recipients (id, alert_id, person_id, role, name, language, students, addresses, token)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    // A person already there (the first wave, or a chunk written again):
    // read their row, and rewrite the children only when they changed. No
    // `UPDATE … RETURNING`: SQLite runs RETURNING as a trigger, with a
    // statement journal per row.
    let mut had_r = conn.prepare_cached(
        "SELECT id, students FROM recipients WHERE alert_id = ?1 AND person_id = ?2",
    )?;
    let mut upd_r = conn.prepare_cached("UPDATE recipients SET students = ?2 WHERE id = ?1")?;
    // The children again as rows, for the console's lists and breakdown.
    let mut ins_s = conn.prepare_cached(
        "INSERT OR IGNORE INTO alert_students (alert_id, student_id, recipient_id, name, school_id, school_name, grade)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let mut children = |rid: i64, r: &Recipient| -> Result<(), StoreError> {
        for k in &r.students {
            ins_s.execute(params![
                alert_id.0,
                k.id,
                rid,
                k.name,
                k.school_id,
                k.school_name,
                k.grade
            ])?;
        }
        Ok(())
    };
    let (mut added, mut deliveries) = (0i64, 0i64);
    for r in recipients {
        let students =
            serde_json::to_string(&r.students).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let addresses =
            serde_json::to_string(&r.addresses).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let token = AckToken::derive(key, RecipientId(next_id));
        let inserted = ins_r.execute(params![
            next_id,
            alert_id.0,
            r.person_id,
            r.role.as_str(),
            r.name,
            r.language,
            students,
            addresses,
            token.stored(RecipientId(next_id))
        ])?;
        if inserted == 0 {
            let (rid, had): (i64, String) = had_r
                .query_row(params![alert_id.0, r.person_id], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?;
            if had != students {
                upd_r.execute(params![rid, students])?;
                children(rid, r)?;
            }
            continue;
        }
        let rid = next_id;
        children(rid, r)?;
        next_id += 1;
        added += 1;
        for (ch, addr) in targets(conn, f, &r.addresses)? {
            insert_delivery(
                conn, alert_id, rid, *ch, addr, start, f.priority, now, false,
            )?;
            deliveries += 1;
        }
    }
    Ok((added, deliveries))
}

/// Writes the deliveries of a follow-up for the original's recipients with
/// an id after `after`, at most `limit` of them. Addresses that proved
/// undeliverable for the original are skipped. Returns the last recipient
/// id handled (None when there were none left) and the deliveries added.
pub fn add_follow_up_chunk(
    conn: &Connection,
    follow_up: AlertId,
    original: AlertId,
    after: i64,
    limit: i64,
    now: i64,
    f: &Fanout,
) -> Result<(Option<i64>, i64), StoreError> {
    let Some(start) = delivery_start(conn, follow_up)? else {
        return Ok((None, 0));
    };
    let rows: Vec<(i64, String)> = conn
        .prepare_cached(
            "SELECT id, addresses FROM recipients WHERE alert_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )?
        .query_map(params![original.0, after, limit], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut bad = conn.prepare_cached(
        "SELECT 1 FROM deliveries WHERE recipient_id = ?1 AND address = ?2 AND state = 'undeliverable'",
    )?;
    let mut exists = conn.prepare_cached(
        "SELECT 1 FROM deliveries WHERE alert_id = ?1 AND recipient_id = ?2 LIMIT 1",
    )?;
    let mut n = 0;
    let mut last = None;
    for (rid, addresses) in rows {
        last = Some(rid);
        // Idempotent: a chunk written again after a crash adds nothing.
        if exists.exists(params![follow_up.0, rid])? {
            continue;
        }
        let addresses: Vec<(Channel, String)> =
            serde_json::from_str(&addresses).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let usable: Vec<(Channel, String)> = addresses
            .into_iter()
            .filter(|(_, a)| !bad.exists(params![rid, a]).unwrap_or(false))
            .collect();
        for (ch, addr) in targets(conn, f, &usable)? {
            insert_delivery(
                conn, follow_up, rid, *ch, addr, start, f.priority, now, false,
            )?;
            n += 1;
        }
    }
    Ok((last, n))
}

/// Marks an alert fully materialized and records its counts and warning.
/// Settles it at once if everything was already handed over.
pub fn finish(
    conn: &Connection,
    alert_id: AlertId,
    now: i64,
    estimate_ms: Option<i64>,
    warning: Option<&str>,
) -> Result<Created, StoreError> {
    let id = alert_id.0;
    let kind: String = conn
        .prepare_cached("SELECT kind FROM alerts WHERE id = ?1")?
        .query_row([id], |r| r.get(0))?;
    let (recipients, unreachable): (i64, i64) = if AlertKind::parse(&kind) == AlertKind::Alert {
        conn.prepare_cached(
            "SELECT count(*), coalesce(sum(addresses = '[]'), 0) FROM recipients WHERE alert_id = ?1",
        )?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))?
    } else {
        let parent: i64 = conn
            .prepare_cached("SELECT parent_id FROM alerts WHERE id = ?1")?
            .query_row([id], |r| r.get(0))?;
        conn.prepare_cached(
            "SELECT count(*), coalesce(sum(addresses = '[]'), 0) FROM recipients WHERE alert_id = ?1",
        )?
        .query_row([parent], |r| Ok((r.get(0)?, r.get(1)?)))?
    };
    let deliveries: i64 = conn
        .prepare_cached("SELECT count(*) FROM deliveries WHERE alert_id = ?1")?
        .query_row([id], |r| r.get(0))?;
    conn.prepare_cached(
        "UPDATE alerts SET materialized = 1, snapshot = NULL, recipients = ?2, unreachable = ?3,
                estimate_ms = coalesce(?4, estimate_ms), warning = coalesce(?5, warning)
         WHERE id = ?1",
    )?
    .execute(params![id, recipients, unreachable, estimate_ms, warning])?;
    let deadline: Option<i64> = conn
        .prepare_cached("SELECT notify_deadline FROM alerts WHERE id = ?1")?
        .query_row([id], |r| r.get(0))?;
    audit::record(
        conn,
        now,
        "klaxon",
        "alert.materialized",
        Some(id),
        &serde_json::json!({"recipients": recipients, "deliveries": deliveries}).to_string(),
        audit::FROM_CONTEXT,
    )?;
    settle_if_done(conn, alert_id, now)?;
    Ok(Created {
        id,
        recipients,
        unreachable,
        deliveries,
        deadline,
    })
}

/// `sending → settled` once the alert is materialized and none of its first
/// deliveries is queued or in flight. The notify-deadline verdict is decided
/// here (or by the tracker when the deadline passes first) and never changes:
/// escalation is its own stage and does not touch it. A follow-up that asks
/// no confirmation closes as soon as it is handed over.
pub fn settle_if_done(conn: &Connection, alert: AlertId, now: i64) -> Result<bool, StoreError> {
    let row: Option<(String, bool, Option<i64>, bool)> = conn
        .prepare_cached(
            "SELECT state, materialized, notify_deadline, confirm FROM alerts WHERE id = ?1",
        )?
        .query_row([alert.0], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((state, materialized, notify_deadline, confirm)) = row else {
        return Ok(false);
    };
    if AlertState::parse(&state) != Some(AlertState::Sending) || !materialized {
        return Ok(false);
    }
    // EXISTS stops at the first pending row: this runs after every batch of
    // outcomes, and counting a 100k-row queue each time would cost seconds.
    let pending = conn
        .prepare_cached(
            "SELECT 1 FROM deliveries WHERE alert_id = ?1 AND escalation = 0
               AND state IN ('queued', 'sending', 'held') LIMIT 1",
        )?
        .exists([alert.0])?;
    if pending {
        return Ok(false);
    }
    let handed_over: Option<i64> = conn
        .prepare_cached(
            "SELECT max(sent_at) FROM deliveries WHERE alert_id = ?1 AND escalation = 0",
        )?
        .query_row([alert.0], |r| r.get(0))?;
    let met = notify_deadline.map(|d| handed_over.unwrap_or(now).min(now) <= d);
    conn.prepare_cached(
        "UPDATE alerts SET state = 'settled', settled_at = ?2, handed_over_at = ?3,
                deadline_met = coalesce(deadline_met, ?4)
         WHERE id = ?1 AND state = 'sending'",
    )?
    .execute(params![alert.0, now, handed_over, met])?;
    let kind: String = conn
        .prepare_cached("SELECT kind FROM alerts WHERE id = ?1")?
        .query_row([alert.0], |r| r.get(0))?;
    if AlertKind::parse(&kind) != AlertKind::Alert && !confirm {
        close(conn, alert, now, CloseReason::Delivered, "klaxon")?;
    }
    Ok(true)
}

/// Decides the notify verdict of released alerts that have none yet: met
/// when every first delivery left the queue by the deadline, missed once the
/// deadline passes with some still queued. Whatever the alert's state (an
/// all-clear may close it while it is still sending). Returns how many were
/// decided now.
pub fn decide_verdicts(conn: &Connection, now: i64) -> Result<usize, StoreError> {
    let undecided: Vec<(i64, i64)> = conn
        .prepare_cached(
            "SELECT id, notify_deadline FROM alerts
             WHERE deadline_met IS NULL AND notify_deadline IS NOT NULL AND materialized = 1",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut n = 0;
    for (id, deadline) in undecided {
        let pending = conn
            .prepare_cached(
                "SELECT 1 FROM deliveries WHERE alert_id = ?1 AND escalation = 0
                   AND state IN ('queued', 'sending', 'held') LIMIT 1",
            )?
            .exists([id])?;
        let verdict = if pending {
            (now > deadline).then_some(false)
        } else {
            let last: Option<i64> = conn
                .prepare_cached(
                    "SELECT max(sent_at) FROM deliveries WHERE alert_id = ?1 AND escalation = 0",
                )?
                .query_row([id], |r| r.get(0))?;
            Some(last.unwrap_or(now).min(now) <= deadline)
        };
        if let Some(v) = verdict {
            conn.prepare_cached(
                "UPDATE alerts SET deadline_met = ?2,
                        handed_over_at = coalesce(handed_over_at,
                            (SELECT max(sent_at) FROM deliveries WHERE alert_id = ?1 AND escalation = 0))
                 WHERE id = ?1 AND deadline_met IS NULL",
            )?
            .execute(params![id, v])?;
            n += 1;
        }
    }
    Ok(n)
}

/// Alerts whose materialization a crash interrupted: (id, snapshot path).
pub fn unmaterialized(conn: &Connection) -> Result<Vec<(AlertId, Option<String>)>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT id, snapshot FROM alerts WHERE materialized = 0 ORDER BY id")?;
    let rows = stmt.query_map([], |r| Ok((AlertId(r.get(0)?), r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The alert's own row.
#[derive(Debug, Clone, Serialize)]
pub struct AlertRow {
    pub id: i64,
    pub kind: AlertKind,
    pub playbook: String,
    pub title: String,
    pub place: String,
    pub priority: i64,
    pub audience: serde_json::Value,
    pub message: Option<String>,
    pub drill: bool,
    pub state: AlertState,
    pub closed_reason: Option<CloseReason>,
    pub confirm: bool,
    pub materialized: bool,
    pub source: String,
    pub created_by: String,
    pub created_at: i64,
    pub released_at: Option<i64>,
    pub notify_deadline: Option<i64>,
    pub ack_deadline: Option<i64>,
    pub escalate_until: Option<i64>,
    pub close_at: Option<i64>,
    pub settled_at: Option<i64>,
    pub handed_over_at: Option<i64>,
    pub escalated_at: Option<i64>,
    pub closed_at: Option<i64>,
    /// Kept for readers of the old field: when it was cancelled.
    pub cancelled_at: Option<i64>,
    pub parent_id: Option<i64>,
    pub all_clear_id: Option<i64>,
    pub recipients: i64,
    pub unreachable: i64,
    pub estimate_ms: Option<i64>,
    pub warning: Option<String>,
    /// The notify verdict about first deliveries; decided once.
    pub deadline_met: Option<bool>,
    /// The operator's text per language, when written per language.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<std::collections::BTreeMap<String, String>>,
    /// It needs a second operator's approval (two-person rule).
    pub two_person: bool,
    pub approved_by: Option<String>,
    /// Sent without the second approval it needed, and why.
    pub override_reason: Option<String>,
    pub reviewed_by: Option<String>,
    pub reviewed_at: Option<i64>,
}

impl AlertRow {
    /// The operator's text for someone speaking `language`.
    pub fn message_for(&self, language: &str) -> Option<&str> {
        match &self.messages {
            Some(m) => crate::domain::text::pick(m, language),
            None => self.message.as_deref(),
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.closed_reason == Some(CloseReason::Cancelled)
    }
}

const ALERT_COLUMNS: &str = "id, kind, playbook, title, place, priority, audience, message, drill, state,
    closed_reason, confirm, materialized, source, created_by, created_at, released_at, notify_deadline,
    ack_deadline, escalate_until, close_at, settled_at, handed_over_at, escalated_at, closed_at,
    parent_id, all_clear_id, recipients, unreachable, estimate_ms, warning, deadline_met, messages,
    approval, approved_by, override_reason, reviewed_by, reviewed_at";

fn alert_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AlertRow> {
    let audience: String = r.get(6)?;
    let state: String = r.get(9)?;
    let reason: Option<String> = r.get(10)?;
    let bad = |what: &str, v: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            9,
            rusqlite::types::Type::Text,
            format!("unknown {what} `{v}`").into(),
        )
    };
    let state = AlertState::parse(&state).ok_or_else(|| bad("alert state", &state))?;
    let closed_reason = match reason {
        Some(r) => Some(CloseReason::parse(&r).ok_or_else(|| bad("close reason", &r))?),
        None => None,
    };
    let closed_at: Option<i64> = r.get(24)?;
    Ok(AlertRow {
        id: r.get(0)?,
        kind: AlertKind::parse(&r.get::<_, String>(1)?),
        playbook: r.get(2)?,
        title: r.get(3)?,
        place: r.get(4)?,
        priority: r.get(5)?,
        audience: serde_json::from_str(&audience).unwrap_or(serde_json::Value::Null),
        message: r.get(7)?,
        drill: r.get(8)?,
        state,
        closed_reason,
        confirm: r.get(11)?,
        materialized: r.get(12)?,
        source: r.get(13)?,
        created_by: r.get(14)?,
        created_at: r.get(15)?,
        released_at: r.get(16)?,
        notify_deadline: r.get(17)?,
        ack_deadline: r.get(18)?,
        escalate_until: r.get(19)?,
        close_at: r.get(20)?,
        settled_at: r.get(21)?,
        handed_over_at: r.get(22)?,
        escalated_at: r.get(23)?,
        closed_at,
        cancelled_at: (closed_reason == Some(CloseReason::Cancelled))
            .then_some(closed_at)
            .flatten(),
        parent_id: r.get(25)?,
        all_clear_id: r.get(26)?,
        recipients: r.get(27)?,
        unreachable: r.get(28)?,
        estimate_ms: r.get(29)?,
        warning: r.get(30)?,
        deadline_met: r.get(31)?,
        messages: r
            .get::<_, Option<String>>(32)?
            .and_then(|j| serde_json::from_str(&j).ok()),
        two_person: r.get::<_, Option<String>>(33)?.as_deref() == Some("two-person"),
        approved_by: r.get(34)?,
        override_reason: r.get(35)?,
        reviewed_by: r.get(36)?,
        reviewed_at: r.get(37)?,
    })
}

/// Alerts (not follow-ups) of `playbook` still open (held, sending or
/// settled), drill or not as asked: the candidates for a duplicate.
pub fn open_of_playbook(
    conn: &Connection,
    playbook: &str,
    drill: bool,
) -> Result<Vec<AlertRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ALERT_COLUMNS} FROM alerts
         WHERE playbook = ?1 AND drill = ?2 AND kind = 'alert' AND state <> 'closed'
         ORDER BY id"
    ))?;
    let rows = stmt.query_map(params![playbook, drill], alert_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Alerts sent without the second approval they needed, not yet reviewed
/// by a second person, oldest first.
pub fn to_review(conn: &Connection) -> Result<Vec<AlertRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ALERT_COLUMNS} FROM alerts
         WHERE override_reason IS NOT NULL AND reviewed_at IS NULL ORDER BY id"
    ))?;
    let rows = stmt.query_map([], alert_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Records the after-the-fact review of an override by `actor`. A second
/// review answers as the first.
pub fn review(
    conn: &Connection,
    id: AlertId,
    now: i64,
    actor: &str,
    note: &str,
) -> Result<AlertRow, StoreError> {
    let a = get(conn, id)?;
    if a.override_reason.is_none() {
        return Err(StoreError::Conflict(format!(
            "alert {id} was not sent with an emergency override; there is nothing to review"
        )));
    }
    if a.reviewed_at.is_none() {
        conn.prepare_cached(
            "UPDATE alerts SET reviewed_by = ?2, reviewed_at = ?3 WHERE id = ?1 AND reviewed_at IS NULL",
        )?
        .execute(params![id.0, actor, now])?;
        audit::record(
            conn,
            now,
            actor,
            "alert.review",
            Some(id.0),
            &serde_json::json!({ "note": note }).to_string(),
            audit::FROM_CONTEXT,
        )?;
    }
    get(conn, id)
}

/// Alerts held, waiting for approval, oldest first.
pub fn held(conn: &Connection) -> Result<Vec<AlertRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ALERT_COLUMNS} FROM alerts WHERE state = 'held' ORDER BY id"
    ))?;
    let rows = stmt.query_map([], alert_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The approvers paged for an alert (index, when), in the order paged.
pub fn approval_pages(conn: &Connection, id: AlertId) -> Result<Vec<(usize, i64)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT approver, paged_at FROM approval_pages WHERE alert_id = ?1 ORDER BY paged_at, approver",
    )?;
    let rows = stmt.query_map([id.0], |r| Ok((r.get::<_, i64>(0)? as usize, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Notes that approver `who` is paged for `id`; false when they already were.
pub fn record_approval_page(
    conn: &Connection,
    id: AlertId,
    who: usize,
    now: i64,
) -> Result<bool, StoreError> {
    let n = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO approval_pages (alert_id, approver, paged_at) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![id.0, who as i64, now])?;
    if n == 1 {
        audit::record(
            conn,
            now,
            "klaxon",
            "alert.approver_paged",
            Some(id.0),
            &serde_json::json!({ "approver": who }).to_string(),
            audit::FROM_CONTEXT,
        )?;
    }
    Ok(n == 1)
}

pub fn get(conn: &Connection, id: AlertId) -> Result<AlertRow, StoreError> {
    conn.prepare_cached(&format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = ?1"))?
        .query_row([id.0], alert_from_row)
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

/// How many deliveries an alert has (all states).
pub fn delivery_count(conn: &Connection, id: AlertId) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached("SELECT count(*) FROM deliveries WHERE alert_id = ?1")?
        .query_row([id.0], |r| r.get(0))?)
}

/// Alerts not closed, by state and drill: the open-alerts gauge.
pub fn open_counts(conn: &Connection) -> Result<Vec<(String, bool, i64)>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT state, drill, count(*) FROM alerts WHERE state <> 'closed' GROUP BY state, drill",
    )?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The newest follow-up (update or all-clear) of an alert, for its page.
pub fn latest_follow_up(conn: &Connection, id: AlertId) -> Result<Option<AlertRow>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE parent_id = ?1 AND state <> 'held' ORDER BY id DESC LIMIT 1"
        ))?
        .query_row([id.0], alert_from_row)
        .optional()?)
}

/// Alerts the tracker still has work for: not closed, released.
pub fn open_alerts(conn: &Connection) -> Result<Vec<AlertRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ALERT_COLUMNS} FROM alerts WHERE state IN ('sending', 'settled') ORDER BY id"
    ))?;
    let rows = stmt.query_map([], alert_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// p50, p95 and max of a set of durations, in seconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Spread {
    pub count: i64,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub max: Option<f64>,
}

impl Spread {
    fn of(mut ms: Vec<i64>) -> Spread {
        ms.sort_unstable();
        let n = ms.len();
        let at = |q: f64| -> Option<f64> {
            if n == 0 {
                return None;
            }
            let i = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
            Some(ms[i] as f64 / 1000.0)
        };
        Spread {
            count: n as i64,
            p50: at(0.5),
            p95: at(0.95),
            max: ms.last().map(|m| *m as f64 / 1000.0),
        }
    }
}

/// Time-to-notify figures of one alert, from its release.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    /// To hand-over, per first delivery.
    pub handover: Spread,
    /// To delivery, as providers reported it.
    pub delivery: Spread,
    /// To the first confirmation, per recipient.
    pub confirmation: Spread,
}

/// Time-to figures from the release: hand-over and delivery from the
/// alert's tally, confirmation from its recipients.
fn figures_from(
    conn: &Connection,
    alert: &AlertRow,
    tally: &super::tally::Tally,
) -> Result<Figures, StoreError> {
    let Some(released) = alert.released_at else {
        return Ok(Figures::default());
    };
    let since = |v: &[i64]| v.iter().map(|t| t - released).collect::<Vec<_>>();
    let confirmation = conn
        .prepare_cached(
            "SELECT acked_at - ?2 FROM recipients WHERE alert_id = ?1 AND acked_at IS NOT NULL",
        )?
        .query_map(params![alert.id, released], |r| r.get::<_, i64>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Figures {
        handover: Spread::of(since(&tally.handed_over)),
        delivery: Spread::of(since(&tally.delivered_at)),
        confirmation: Spread::of(confirmation),
    })
}

/// The escalation stage, apart from the first deliveries.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EscalationStatus {
    pub started_at: Option<i64>,
    /// End of its retry window.
    pub until: Option<i64>,
    pub deliveries: i64,
    /// Escalation deliveries per state.
    pub totals: BTreeMap<String, i64>,
    /// Recipients confirmed after escalation started.
    pub confirmed_after: i64,
}

/// Progress of one alert, as the API and `klaxon status` show it.
#[derive(Debug, Clone, Serialize)]
pub struct AlertStatus {
    #[serde(flatten)]
    pub alert: AlertRow,
    /// First deliveries per channel and state.
    pub channels: BTreeMap<String, BTreeMap<String, i64>>,
    /// First deliveries per state, all channels.
    pub totals: BTreeMap<String, i64>,
    /// Recipients who have at least one delivery handed over.
    pub reached: i64,
    /// Recipients whose delivery a provider reported delivered.
    pub delivered: i64,
    pub acknowledged: i64,
    /// Pickup answers per choice (one per student and guardian).
    pub choices: BTreeMap<String, i64>,
    /// Students whose guardians gave different answers.
    pub conflicts: i64,
    /// When the last first delivery was handed to a provider.
    pub last_handover_at: Option<i64>,
    pub escalation: EscalationStatus,
    pub figures: Figures,
    /// Messages from recipients that were not confirmations.
    pub inbox: i64,
}

pub fn status(conn: &Connection, id: AlertId) -> Result<AlertStatus, StoreError> {
    status_with(conn, id, &super::tally::Tally::read(conn, id)?)
}

/// `status` from a tally already read, for pages that show more of it.
pub fn status_with(
    conn: &Connection,
    id: AlertId,
    tally: &super::tally::Tally,
) -> Result<AlertStatus, StoreError> {
    let alert = get(conn, id)?;
    let escalation_totals = tally.escalation.clone();
    let mut escalation = EscalationStatus {
        started_at: alert.escalated_at,
        until: alert.escalate_until,
        deliveries: escalation_totals.values().sum(),
        totals: escalation_totals,
        ..Default::default()
    };
    let totals = tally.totals();
    let last_handover_at = tally.handed_over.iter().copied().max();
    let (reached, delivered) = (
        tally.count(super::tally::REACHED),
        tally.count(super::tally::DELIVERED),
    );
    let acknowledged: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM recipients WHERE alert_id = ?1 AND acked_at IS NOT NULL",
        )?
        .query_row([id.0], |r| r.get(0))?;
    if let Some(at) = alert.escalated_at {
        escalation.confirmed_after = conn
            .prepare_cached(
                "SELECT count(*) FROM recipients WHERE alert_id = ?1 AND acked_at >= ?2",
            )?
            .query_row(params![id.0, at], |r| r.get(0))?;
    }
    let mut choices = BTreeMap::new();
    {
        let mut stmt = conn.prepare_cached(
            "SELECT choice, count(*) FROM pickups WHERE alert_id = ?1 GROUP BY choice",
        )?;
        let mut rows = stmt.query([id.0])?;
        while let Some(r) = rows.next()? {
            choices.insert(r.get::<_, String>(0)?, r.get::<_, i64>(1)?);
        }
    }
    let conflicts: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM (SELECT student_id FROM pickups WHERE alert_id = ?1
                                   GROUP BY student_id HAVING count(DISTINCT choice) > 1)",
        )?
        .query_row([id.0], |r| r.get(0))?;
    let inbox: i64 = conn
        .prepare_cached("SELECT count(*) FROM replies WHERE alert_id = ?1 AND kind = 'message'")?
        .query_row([id.0], |r| r.get(0))?;
    let figures = figures_from(conn, &alert, tally)?;
    Ok(AlertStatus {
        alert,
        channels: tally.channels.clone(),
        totals,
        reached,
        delivered,
        acknowledged,
        choices,
        conflicts,
        last_handover_at,
        escalation,
        figures,
        inbox,
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

/// The recipient a presented acknowledgement token belongs to: its MAC must
/// verify and the stored hash must match. Tokens of alerts created before
/// tokens were derived are still found by their stored value.
pub fn recipient_by_token(
    conn: &Connection,
    key: &AckKey,
    presented: &str,
) -> Result<Option<RecipientRow>, StoreError> {
    if let Some((token, id)) = AckToken::verify(key, presented) {
        return Ok(conn
            .prepare_cached(&format!(
                "SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE id = ?1 AND token IN (?2, ?3)"
            ))?
            .query_row(
                params![id.0, token.stored(id), token.hash()],
                recipient_from_row,
            )
            .optional()?);
    }
    // Links from before derived tokens were stored as they were sent. What is
    // stored now is a SHA-256 (64 hex digits), with the recipient id in front
    // (80) since the token index was ordered: presenting either must open
    // nothing, or a copy of the database would hand out working links.
    let looks_like_hash =
        matches!(presented.len(), 64 | 80) && presented.bytes().all(|b| b.is_ascii_hexdigit());
    if looks_like_hash {
        return Ok(None);
    }
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE token = ?1"
        ))?
        .query_row([presented], recipient_from_row)
        .optional()?)
}

pub fn recipient(conn: &Connection, id: RecipientId) -> Result<RecipientRow, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE id = ?1"
    ))?
    .query_row([id.0], recipient_from_row)
    .optional()?
    .ok_or_else(|| StoreError::NotFound(format!("recipient {id}")))
}

/// Recipients of an alert who have confirmed, with their answer.
pub fn answered(
    conn: &Connection,
    alert_id: AlertId,
    limit: i64,
) -> Result<Vec<RecipientRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {RECIPIENT_COLUMNS} FROM recipients WHERE alert_id = ?1 AND acked_at IS NOT NULL ORDER BY name LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![alert_id.0, limit], recipient_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
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

/// One page of the outstanding list, in recipient id order after `after`.
pub fn outstanding(
    conn: &Connection,
    alert_id: AlertId,
    after: i64,
    limit: i64,
) -> Result<Vec<Outstanding>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {RECIPIENT_COLUMNS},
            (SELECT count(*) FROM deliveries d WHERE d.recipient_id = recipients.id) AS total,
            (SELECT count(*) FROM deliveries d WHERE d.recipient_id = recipients.id AND d.state IN ('sent','delivered')) AS ok,
            (SELECT count(*) FROM deliveries d WHERE d.recipient_id = recipients.id AND d.state IN ('queued','sending','held')) AS pending
         FROM recipients WHERE alert_id = ?1 AND acked_at IS NULL AND id > ?2 ORDER BY id LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![alert_id.0, after, limit], |r| {
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

/// How a person answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// "I have received this" (no choices, an SMS "1", a key on a call).
    Confirm,
    /// A pickup choice per student (student id → choice key).
    PerStudent(Vec<(String, String)>),
}

/// What recording an acknowledgement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AckOutcome {
    /// First confirmation.
    Recorded,
    /// An answer changed.
    Changed,
    /// Same as already recorded: nothing written.
    Unchanged,
    /// Answers may no longer be changed (past the ack deadline).
    Locked,
    /// The alert is closed: nothing recorded.
    Closed,
    /// The alert was cancelled: nothing recorded.
    Cancelled,
}

/// Records an acknowledgement. Idempotent: repeating an answer writes
/// nothing. A different pickup choice for a student replaces this guardian's
/// earlier one until the ack deadline; each guardian's answer is kept apart.
pub fn acknowledge(
    conn: &Connection,
    recipient_id: RecipientId,
    answer: &Answer,
    via: &str,
    now: i64,
) -> Result<AckOutcome, StoreError> {
    let (alert_id, acked_at, ack_deadline, state, reason): (
        i64,
        Option<i64>,
        Option<i64>,
        String,
        Option<String>,
    ) = conn
        .prepare_cached(
            "SELECT r.alert_id, r.acked_at, a.ack_deadline, a.state, a.closed_reason
             FROM recipients r JOIN alerts a ON a.id = r.alert_id WHERE r.id = ?1",
        )?
        .query_row([recipient_id.0], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("recipient {recipient_id}")))?;
    match (AlertState::parse(&state), reason.as_deref()) {
        (_, Some("cancelled")) => return Ok(AckOutcome::Cancelled),
        (Some(AlertState::Closed), _) => return Ok(AckOutcome::Closed),
        (Some(AlertState::Held), _) => return Ok(AckOutcome::Closed),
        _ => {}
    }
    let past_deadline = ack_deadline.is_some_and(|d| now > d);
    let mut outcome = if acked_at.is_none() {
        AckOutcome::Recorded
    } else {
        AckOutcome::Unchanged
    };
    if let Answer::PerStudent(picks) = answer {
        let mut old_q = conn.prepare_cached(
            "SELECT choice FROM pickups WHERE alert_id = ?1 AND student_id = ?2 AND recipient_id = ?3",
        )?;
        let mut upsert = conn.prepare_cached(
            "INSERT INTO pickups (alert_id, student_id, recipient_id, choice, at, via) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (alert_id, student_id, recipient_id) DO UPDATE SET choice = excluded.choice, at = excluded.at, via = excluded.via",
        )?;
        let mut changes = Vec::new();
        for (student, choice) in picks {
            let old: Option<String> = old_q
                .query_row(params![alert_id, student, recipient_id.0], |r| r.get(0))
                .optional()?;
            match old {
                Some(o) if &o == choice => {}
                Some(_) if past_deadline => return Ok(AckOutcome::Locked),
                Some(_) => changes.push((student, choice, true)),
                None => changes.push((student, choice, false)),
            }
        }
        for (student, choice, _) in &changes {
            upsert.execute(params![alert_id, student, recipient_id.0, choice, now, via])?;
        }
        if !changes.is_empty() {
            if outcome == AckOutcome::Unchanged {
                outcome = AckOutcome::Changed;
            }
            // The recipient's summary: the one choice if all children share it.
            let summary: Option<String> = conn
                .prepare_cached(
                    "SELECT CASE WHEN count(DISTINCT choice) = 1 THEN max(choice) ELSE 'several' END
                     FROM pickups WHERE alert_id = ?1 AND recipient_id = ?2",
                )?
                .query_row(params![alert_id, recipient_id.0], |r| r.get(0))?;
            conn.prepare_cached(
                "UPDATE recipients SET ack_choice = ?2, ack_changed_at = ?3 WHERE id = ?1",
            )?
            .execute(params![recipient_id.0, summary, now])?;
        }
    }
    if outcome == AckOutcome::Unchanged {
        return Ok(outcome);
    }
    conn.prepare_cached(
        "UPDATE recipients SET acked_at = coalesce(acked_at, ?2), ack_via = coalesce(ack_via, ?3) WHERE id = ?1",
    )?
    .execute(params![recipient_id.0, now, via])?;
    let choice = match answer {
        Answer::Confirm => None,
        Answer::PerStudent(p) => serde_json::to_string(p).ok(),
    };
    conn.prepare_cached("INSERT INTO ack_events (recipient_id, alert_id, at, choice, via) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![recipient_id.0, alert_id, now, choice, via])?;
    Ok(outcome)
}

/// This guardian's recorded choice per student.
pub fn pickups_of(
    conn: &Connection,
    recipient_id: RecipientId,
) -> Result<BTreeMap<String, String>, StoreError> {
    let mut st =
        conn.prepare_cached("SELECT student_id, choice FROM pickups WHERE recipient_id = ?1")?;
    let rows = st.query_map([recipient_id.0], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One guardian's answer for one student.
#[derive(Debug, Clone, Serialize)]
pub struct PickupAnswer {
    pub guardian_id: String,
    pub guardian: String,
    pub choice: String,
    pub at: i64,
    pub via: String,
}

/// The plan for one student: every guardian's answer, and whether they differ.
#[derive(Debug, Clone, Serialize)]
pub struct StudentPlan {
    pub student_id: String,
    pub student: String,
    pub school: String,
    pub grade: String,
    pub answers: Vec<PickupAnswer>,
    /// Guardians chose differently.
    pub conflict: bool,
}

/// One page of the pickup plan, by student id after `after`: every student
/// of the alert's guardians, answered or not.
pub fn pickup_plan(
    conn: &Connection,
    alert_id: AlertId,
    after: &str,
    limit: i64,
) -> Result<Vec<StudentPlan>, StoreError> {
    super::lists::students(conn, alert_id, &super::lists::pattern(""), after, limit)
}

/// What a release did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    Now,
    /// It was already released: the first approve's effect stands.
    Already,
}

/// `held → sending`: starts the clocks and queues every held delivery,
/// including those of chunks still being written (they read the state).
pub fn release(
    conn: &Connection,
    id: AlertId,
    now: i64,
    actor: &str,
    windows: (i64, i64, i64),
    override_reason: Option<&str>,
) -> Result<Released, StoreError> {
    let a = get(conn, id)?;
    match a.state {
        AlertState::Held => {}
        AlertState::Sending | AlertState::Settled => return Ok(Released::Already),
        AlertState::Closed => {
            return Err(StoreError::Conflict(format!(
                "alert {id} is closed ({}); it cannot be released",
                a.closed_reason.map(|r| r.as_str()).unwrap_or("closed")
            )));
        }
    }
    let d = deadlines(now, windows.0, windows.1, windows.2);
    conn.prepare_cached(
        "UPDATE alerts SET state = 'sending', released_at = ?2, notify_deadline = ?3, ack_deadline = ?4,
                escalate_until = ?5, close_at = ?6 WHERE id = ?1",
    )?
    .execute(params![id.0, now, d.notify, d.ack, d.escalate_until, d.close_at])?;
    conn.prepare_cached(
        "UPDATE deliveries SET state = 'queued', next_attempt_at = ?2, updated_at = ?2 WHERE alert_id = ?1 AND state = 'held'",
    )?
    .execute(params![id.0, now])?;
    conn.prepare_cached(
        "UPDATE alerts SET approved_by = ?2, override_reason = coalesce(?3, override_reason) WHERE id = ?1",
    )?
    .execute(params![id.0, actor, override_reason])?;
    match override_reason {
        Some(reason) => audit::record(
            conn,
            now,
            actor,
            "alert.override",
            Some(id.0),
            &serde_json::json!({ "reason": reason, "at": "approve" }).to_string(),
            audit::FROM_CONTEXT,
        )?,
        None => audit::record(
            conn,
            now,
            actor,
            "alert.approve",
            Some(id.0),
            "{}",
            audit::FROM_CONTEXT,
        )?,
    }
    settle_if_done(conn, id, now)?;
    Ok(Released::Now)
}

/// Cancels an alert: it closes, and every delivery not yet handed over is
/// cancelled in the same transaction. A second cancel answers as the first.
/// Returns how many deliveries were stopped.
pub fn cancel(conn: &Connection, id: AlertId, now: i64, actor: &str) -> Result<i64, StoreError> {
    let a = get(conn, id)?;
    if a.is_cancelled() {
        let first: Option<i64> = conn
            .prepare_cached("SELECT cancel_unsent FROM alerts WHERE id = ?1")?
            .query_row([id.0], |r| r.get(0))?;
        return Ok(first.unwrap_or(0));
    }
    if a.state == AlertState::Closed {
        return Err(StoreError::Conflict(format!(
            "alert {id} is already closed ({}); there is nothing left to cancel",
            a.closed_reason.map(|r| r.as_str()).unwrap_or("closed")
        )));
    }
    let n = conn
        .prepare_cached(
            "UPDATE deliveries SET state = 'cancelled', updated_at = ?2 WHERE alert_id = ?1 AND state IN ('queued', 'held')",
        )?
        .execute(params![id.0, now])? as i64;
    conn.prepare_cached(
        "UPDATE alerts SET state = 'closed', closed_reason = 'cancelled', closed_at = ?2, cancelled_at = ?2,
                cancel_unsent = ?3, settled_at = coalesce(settled_at, ?2) WHERE id = ?1",
    )?
    .execute(params![id.0, now, n])?;
    audit::record(
        conn,
        now,
        actor,
        "alert.cancel",
        Some(id.0),
        &serde_json::json!({"unsent": n}).to_string(),
        audit::FROM_CONTEXT,
    )?;
    Ok(n)
}

/// Closes an alert for `reason`: replies no longer match it and nothing more
/// is escalated (queued escalation calls are cancelled). First deliveries
/// still queued keep going unless the window itself is over, so everyone
/// hears the alert before its all-clear.
pub fn close(
    conn: &Connection,
    id: AlertId,
    now: i64,
    reason: CloseReason,
    actor: &str,
) -> Result<bool, StoreError> {
    let state = state_of(conn, id)?;
    if !state.can_move_to(AlertState::Closed) {
        return Ok(false);
    }
    let which = if reason == CloseReason::Expired {
        "1"
    } else {
        "escalation = 1"
    };
    conn.prepare_cached(&format!(
        "UPDATE deliveries SET state = 'cancelled', updated_at = ?2
         WHERE alert_id = ?1 AND state IN ('queued', 'held') AND {which}"
    ))?
    .execute(params![id.0, now])?;
    conn.prepare_cached(
        "UPDATE alerts SET state = 'closed', closed_reason = ?3, closed_at = ?2 WHERE id = ?1",
    )?
    .execute(params![id.0, now, reason.as_str()])?;
    audit::record(
        conn,
        now,
        actor,
        "alert.close",
        Some(id.0),
        &serde_json::json!({"reason": reason.as_str()}).to_string(),
        audit::FROM_CONTEXT,
    )?;
    Ok(true)
}

/// Records the all-clear's id on the original, so a repeat answers with it.
pub fn set_all_clear(
    conn: &Connection,
    original: AlertId,
    clear: AlertId,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE alerts SET all_clear_id = ?2 WHERE id = ?1 AND all_clear_id IS NULL",
    )?
    .execute(params![original.0, clear.0])?;
    Ok(())
}

/// Escalates the unconfirmed recipients of a materialized alert: one new
/// delivery each on `channel`, or on their next channel when they have no
/// usable address there. Addresses that proved undeliverable are never used.
/// Returns how many deliveries were added.
pub fn escalate(
    conn: &Connection,
    alert_id: AlertId,
    order: &[Channel],
    now: i64,
) -> Result<i64, StoreError> {
    let priority: i64 = conn
        .prepare_cached("SELECT priority FROM alerts WHERE id = ?1")?
        .query_row([alert_id.0], |r| r.get(0))?;
    let rows: Vec<(i64, String)> = conn
        .prepare_cached(
            "SELECT r.id, r.addresses FROM recipients r WHERE r.alert_id = ?1 AND r.acked_at IS NULL",
        )?
        .query_map([alert_id.0], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut bad = conn.prepare_cached(
        "SELECT 1 FROM deliveries WHERE address = ?1 AND state = 'undeliverable' LIMIT 1",
    )?;
    let mut n = 0;
    for (rid, addresses) in rows {
        let addresses: Vec<(Channel, String)> =
            serde_json::from_str(&addresses).unwrap_or_default();
        for ch in order {
            let Some((_, addr)) = addresses
                .iter()
                .find(|(c, a)| c == ch && !bad.exists([a]).unwrap_or(true))
            else {
                continue;
            };
            if *ch == Channel::Sms && opted_out(conn, addr)? {
                continue;
            }
            insert_delivery(
                conn,
                alert_id,
                rid,
                *ch,
                addr,
                DeliveryState::Queued,
                priority,
                now,
                true,
            )?;
            n += 1;
            break;
        }
    }
    conn.prepare_cached("UPDATE alerts SET escalated_at = ?2 WHERE id = ?1")?
        .execute(params![alert_id.0, now])?;
    audit::record(
        conn,
        now,
        "klaxon",
        "alert.escalate",
        Some(alert_id.0),
        &serde_json::json!({"channels": order, "deliveries": n}).to_string(),
        audit::FROM_CONTEXT,
    )?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_nearest_rank_percentiles() {
        let s = Spread::of((1..=100).map(|i| i * 1000).collect());
        assert_eq!(s.count, 100);
        assert_eq!(s.p50, Some(50.0));
        assert_eq!(s.p95, Some(95.0));
        assert_eq!(s.max, Some(100.0));
        assert_eq!(Spread::of(vec![]).p50, None);
    }
}
