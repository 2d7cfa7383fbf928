//! The outbox: one row per recipient, channel and address.
//!
//! States: `held` (waiting for approval) → `queued` → `sending` (claimed by a
//! worker) → `sent` (a provider accepted it) → `delivered` | `failed`;
//! `undeliverable` when the address itself is bad; `cancelled` when the alert
//! was cancelled before it went out. A state only moves forward, except that
//! a `sending` row goes back to `queued` for a retry or after a crash.
//!
//! Invariant: a delivery is claimed (`sending`) in a committed transaction
//! before its request leaves, and its outcome is committed before it counts
//! as handed over. After `kill -9`, `recover` puts every `sending` row back in
//! the queue: delivery is at least once, and duplicates are limited to the
//! requests in flight at the crash.

use std::collections::BTreeSet;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{StoreError, alerts, audit};
use crate::domain::{AlertId, Channel, DeliveryState, RecipientId};

/// A claimed delivery with what is needed to render and send it.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub alert_id: i64,
    /// For a follow-up, the original alert's recipient: their link opens the
    /// original's page.
    pub recipient_id: i64,
    pub channel: Channel,
    pub address: String,
    pub attempts: i64,
    pub last_provider: Option<String>,
    pub playbook: String,
    pub title: String,
    pub place: String,
    pub message: Option<String>,
    pub drill: bool,
    pub released_at: Option<i64>,
    /// No attempt after this: the ack deadline for a first delivery, the end
    /// of the escalation stage for an escalation.
    pub retry_until: Option<i64>,
    pub language: String,
    pub students_json: String,
    pub escalation: bool,
    /// The alert's priority (lower goes first), to order rows claimed ahead.
    pub priority: i64,
}

/// One row marked by `claim`, before its alert and recipient are joined in.
struct ClaimRow {
    id: i64,
    alert_id: i64,
    recipient_id: i64,
    address: String,
    attempts: i64,
    last_provider: Option<String>,
    escalation: bool,
    priority: i64,
}

/// The alert fields a claimed delivery needs, read once per alert and batch.
struct AlertPart {
    playbook: String,
    title: String,
    message: Option<String>,
    drill: bool,
    ack_deadline: Option<i64>,
    escalate_until: Option<i64>,
    place: String,
    released_at: Option<i64>,
    cancelled: bool,
    /// The operator's text per language, when written per language.
    per_language: Option<std::collections::BTreeMap<String, String>>,
}

/// Claims up to `limit` due deliveries of one channel, most urgent first.
/// Rows of a cancelled alert, and escalations for someone who has confirmed
/// in the meantime, are closed here instead of being handed out: the claim
/// runs on the writer, after every acknowledgement committed before it.
pub fn claim(
    conn: &Connection,
    channel: Channel,
    now: i64,
    limit: i64,
) -> Result<Vec<Claimed>, StoreError> {
    // The batch is read, then marked row by row. Not one `UPDATE …
    // RETURNING`: SQLite runs RETURNING as a trigger, and inside our
    // savepoints that keeps a statement journal, each page the claim touched
    // copied first (the claim was a sixth of the writer in a fan-out).
    let rows: Vec<ClaimRow> = conn
        .prepare_cached(
            // First attempts are always due: a wall-clock step back must not stall a new alert.
            "SELECT id, alert_id, recipient_id, address, attempts, provider, escalation, priority
             FROM deliveries WHERE state = 'queued' AND channel = ?1 AND (next_attempt_at <= ?2 OR attempts = 0)
             ORDER BY priority, next_attempt_at, id LIMIT ?3",
        )?
        .query_map(params![channel.as_str(), now, limit], |r| {
            Ok(ClaimRow {
                id: r.get(0)?,
                alert_id: r.get(1)?,
                recipient_id: r.get(2)?,
                address: r.get(3)?,
                attempts: r.get(4)?,
                last_provider: r.get(5)?,
                escalation: r.get(6)?,
                priority: r.get(7)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut mark = conn
        .prepare_cached("UPDATE deliveries SET state = 'sending', updated_at = ?2 WHERE id = ?1")?;
    for row in &rows {
        mark.execute(params![row.id, now])?;
    }
    let mut alerts: std::collections::HashMap<i64, AlertPart> = std::collections::HashMap::new();
    let mut alert_q = conn.prepare_cached(
        "SELECT playbook, title, message, drill, ack_deadline, place, released_at, escalate_until,
                closed_reason = 'cancelled', messages
         FROM alerts WHERE id = ?1",
    )?;
    let mut recipient_q = conn.prepare_cached(
        "SELECT language, students, acked_at IS NOT NULL FROM recipients WHERE id = ?1",
    )?;
    let mut close_q = conn.prepare_cached(
        "UPDATE deliveries SET state = ?2, error = ?3, updated_at = ?4 WHERE id = ?1",
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let alert_id = row.alert_id;
        let a = match alerts.entry(alert_id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(alert_q.query_row([alert_id], |r| {
                    Ok(AlertPart {
                        playbook: r.get(0)?,
                        title: r.get(1)?,
                        message: r.get(2)?,
                        drill: r.get(3)?,
                        ack_deadline: r.get(4)?,
                        place: r.get(5)?,
                        released_at: r.get(6)?,
                        escalate_until: r.get(7)?,
                        cancelled: r.get::<_, Option<bool>>(8)?.unwrap_or(false),
                        per_language: r
                            .get::<_, Option<String>>(9)?
                            .and_then(|j| serde_json::from_str(&j).ok()),
                    })
                })?)
            }
        };
        let (language, students_json, acked): (String, String, bool) = recipient_q
            .query_row([row.recipient_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
        if a.cancelled {
            close_q.execute(params![row.id, "cancelled", "the alert was cancelled", now])?;
            continue;
        }
        if row.escalation && acked {
            close_q.execute(params![
                row.id,
                "cancelled",
                "confirmed before the escalation left",
                now
            ])?;
            continue;
        }
        out.push(Claimed {
            id: row.id,
            alert_id,
            recipient_id: row.recipient_id,
            channel,
            address: row.address,
            attempts: row.attempts,
            last_provider: row.last_provider,
            playbook: a.playbook.clone(),
            title: a.title.clone(),
            place: a.place.clone(),
            message: match &a.per_language {
                Some(m) => crate::domain::text::pick(m, &language).map(str::to_string),
                None => a.message.clone(),
            },
            drill: a.drill,
            released_at: a.released_at,
            retry_until: if row.escalation {
                a.escalate_until
            } else {
                a.ack_deadline
            },
            language,
            students_json,
            escalation: row.escalation,
            priority: row.priority,
        });
    }
    Ok(out)
}

/// Puts claimed rows that were never sent back in the queue: a lane that
/// stops with rows in hand. Returns how many went back.
pub fn unclaim(conn: &Connection, ids: &[i64], now: i64) -> Result<usize, StoreError> {
    let mut back = conn.prepare_cached(
        "UPDATE deliveries SET state = 'queued', next_attempt_at = ?2, updated_at = ?2
         WHERE id = ?1 AND state = 'sending'",
    )?;
    let mut n = 0;
    for id in ids {
        n += back.execute(params![id, now])?;
    }
    Ok(n)
}

/// The earliest time a queued delivery of this channel becomes due.
pub fn next_due(conn: &Connection, channel: Channel) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT min(next_attempt_at) FROM deliveries WHERE state = 'queued' AND channel = ?1",
        )?
        .query_row([channel.as_str()], |r| r.get(0))?)
}

/// What happened to one attempt.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A provider accepted the message.
    Sent {
        provider: String,
        message_id: Option<String>,
    },
    /// Transient failure: try again at `next_at` (possibly elsewhere).
    Retry {
        provider: String,
        error: String,
        next_at: i64,
    },
    /// The address is bad; never retried.
    Undeliverable {
        provider: String,
        code: String,
        error: String,
    },
    /// Retries exhausted or the alert's window closed.
    GaveUp { provider: String, error: String },
    /// The alert was cancelled after this row was claimed; never sent.
    Cancelled,
}

/// Records a batch of outcomes; returns the alerts that just settled (their
/// queue is empty).
pub fn record(
    conn: &Connection,
    now: i64,
    outcomes: &[(i64, Outcome)],
) -> Result<Vec<i64>, StoreError> {
    let mut touched = BTreeSet::new();
    // No RETURNING on these: SQLite runs a RETURNING clause as a trigger, and
    // a statement with a trigger inside our savepoints keeps a statement
    // journal: pages copied in and the journal freed for every row, half the
    // cost of recording an outcome in a profile of a fan-out. The row's
    // alert is read by its key instead, when the update took.
    let mut alert_of = conn.prepare_cached("SELECT alert_id FROM deliveries WHERE id = ?1")?;
    let mut took = |changed: usize, id: i64| -> Result<Option<i64>, StoreError> {
        if changed == 0 {
            return Ok(None);
        }
        Ok(Some(alert_of.query_row([id], |r| r.get(0))?))
    };
    let mut sent = conn.prepare_cached(
        "UPDATE deliveries SET state = coalesce(reported_state, 'sent'), provider = ?2,
                provider_msg_id = coalesce(?3, provider_msg_id), attempts = attempts + 1,
                sent_at = ?4, updated_at = ?4, error = NULL,
                delivered_at = CASE WHEN reported_state = 'delivered' THEN ?4 ELSE delivered_at END
         WHERE id = ?1 AND state = 'sending'",
    )?;
    let mut retry = conn.prepare_cached(
        "UPDATE deliveries SET provider = ?2, error = ?3, attempts = attempts + 1,
                next_attempt_at = ?4, updated_at = ?5,
                state = CASE WHEN (SELECT closed_reason FROM alerts a WHERE a.id = deliveries.alert_id) = 'cancelled'
                             THEN 'cancelled' ELSE 'queued' END
         WHERE id = ?1 AND state = 'sending'",
    )?;
    let mut bad = conn.prepare_cached(
        "UPDATE deliveries SET state = ?6, provider = ?2, error_code = ?3, error = ?4, attempts = attempts + 1, updated_at = ?5
         WHERE id = ?1 AND state = 'sending'",
    )?;
    let mut stopped = conn.prepare_cached(
        "UPDATE deliveries SET state = 'cancelled', error = ?2, updated_at = ?3
         WHERE id = ?1 AND state = 'sending'",
    )?;
    for (id, outcome) in outcomes {
        let alert: Option<i64> = match outcome {
            Outcome::Sent {
                provider,
                message_id,
            } => took(sent.execute(params![id, provider, message_id, now])?, *id)?,
            Outcome::Retry {
                provider,
                error,
                next_at,
            } => took(
                retry.execute(params![id, provider, error, next_at, now])?,
                *id,
            )?,
            Outcome::Undeliverable {
                provider,
                code,
                error,
            } => {
                let a = took(
                    bad.execute(params![id, provider, code, error, now, "undeliverable"])?,
                    *id,
                )?;
                if a.is_some() {
                    take_over(conn, *id, now)?;
                }
                a
            }
            Outcome::GaveUp { provider, error } => took(
                bad.execute(params![id, provider, "gave-up", error, now, "failed"])?,
                *id,
            )?,
            Outcome::Cancelled => took(
                stopped.execute(params![
                    id,
                    "the alert was cancelled before this was sent",
                    now
                ])?,
                *id,
            )?,
        };
        if let Some(a) = alert {
            touched.insert(a);
        }
    }
    let mut settled = Vec::new();
    for alert in touched {
        if alerts::settle_if_done(conn, AlertId(alert), now)? {
            settled.push(alert);
        }
    }
    Ok(settled)
}

/// After a permanent failure: if the recipient has nothing else on its way,
/// their next address on another channel takes over.
fn take_over(conn: &Connection, failed_id: i64, now: i64) -> Result<(), StoreError> {
    let (alert_id, recipient_id, failed_addr, priority, escalation, addresses, cancelled): (
        i64,
        i64,
        String,
        i64,
        bool,
        String,
        bool,
    ) = conn
        .prepare_cached(
            "SELECT d.alert_id, d.recipient_id, d.address, d.priority, d.escalation, r.addresses,
                    coalesce(a.closed_reason = 'cancelled', 0)
             FROM deliveries d JOIN recipients r ON r.id = d.recipient_id JOIN alerts a ON a.id = d.alert_id
             WHERE d.id = ?1",
        )?
        .query_row([failed_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
        })?;
    if cancelled {
        return Ok(());
    }
    let alive: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM deliveries WHERE alert_id = ?1 AND recipient_id = ?2
               AND state NOT IN ('undeliverable', 'failed', 'cancelled')",
        )?
        .query_row(params![alert_id, recipient_id], |r| r.get(0))?;
    if alive > 0 {
        return Ok(());
    }
    let addresses: Vec<(Channel, String)> = serde_json::from_str(&addresses).unwrap_or_default();
    let mut used = conn.prepare_cached(
        "SELECT 1 FROM deliveries WHERE alert_id = ?1 AND recipient_id = ?2 AND channel = ?3 AND address = ?4",
    )?;
    for (ch, addr) in addresses {
        if addr == failed_addr || used.exists(params![alert_id, recipient_id, ch.as_str(), addr])? {
            continue;
        }
        if ch == Channel::Sms && alerts::opted_out(conn, &addr)? {
            continue;
        }
        conn.prepare_cached(
            "INSERT INTO deliveries (alert_id, recipient_id, channel, address, state, priority, next_attempt_at, escalation, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?7, ?6, ?6)",
        )?
        .execute(params![alert_id, recipient_id, ch.as_str(), addr, priority, now, escalation])?;
        break;
    }
    Ok(())
}

/// Applies a provider's status report. Monotonic: a late `sent` never
/// overwrites `delivered`. A report that arrives before the engine has
/// committed the send's outcome is kept beside the row and applied with it.
/// Returns whether anything changed, and the delivery's alert and release
/// time for the delivery figures when it became `delivered`.
pub fn provider_status(
    conn: &Connection,
    now: i64,
    delivery_id: Option<i64>,
    provider_msg_id: &str,
    new_state: DeliveryState,
    error_code: Option<&str>,
) -> Result<StatusApplied, StoreError> {
    let row: Option<(i64, String, i64)> = match delivery_id {
        Some(id) => conn
            .prepare_cached("SELECT id, state, alert_id FROM deliveries WHERE id = ?1 AND (provider_msg_id = ?2 OR provider_msg_id IS NULL)")?
            .query_row(params![id, provider_msg_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?,
        None => conn
            .prepare_cached("SELECT id, state, alert_id FROM deliveries WHERE provider_msg_id = ?1")?
            .query_row([provider_msg_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?,
    };
    let Some((id, old, alert_id)) = row else {
        return Ok(StatusApplied::Unknown);
    };
    let old = DeliveryState::parse(&old)
        .ok_or_else(|| StoreError::Corrupt(format!("delivery state `{old}`")))?;
    if old == DeliveryState::Sending {
        // The send's outcome is not committed yet: remember the report.
        conn.prepare_cached(
            "UPDATE deliveries SET reported_state = ?2, provider_msg_id = coalesce(provider_msg_id, ?3),
                    error_code = coalesce(?4, error_code) WHERE id = ?1",
        )?
        .execute(params![id, new_state.as_str(), provider_msg_id, error_code])?;
        return Ok(StatusApplied::Deferred);
    }
    if !old.can_move_to(new_state) || old.is_pending() {
        return Ok(StatusApplied::Unchanged);
    }
    conn.prepare_cached(
        "UPDATE deliveries SET state = ?2, updated_at = ?3,
            delivered_at = CASE WHEN ?2 = 'delivered' THEN ?3 ELSE delivered_at END,
            sent_at = coalesce(sent_at, ?3),
            error_code = coalesce(?4, error_code)
         WHERE id = ?1",
    )?
    .execute(params![id, new_state.as_str(), now, error_code])?;
    if new_state == DeliveryState::Undeliverable {
        take_over(conn, id, now)?;
    }
    let released: Option<i64> = conn
        .prepare_cached("SELECT released_at FROM alerts WHERE id = ?1")?
        .query_row([alert_id], |r| r.get(0))?;
    Ok(StatusApplied::Applied {
        alert: AlertId(alert_id),
        released_at: released,
    })
}

/// What a provider's report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusApplied {
    /// No delivery has that id and provider message id.
    Unknown,
    /// Already there or further along.
    Unchanged,
    /// Kept until the send's outcome is committed.
    Deferred,
    Applied {
        alert: AlertId,
        released_at: Option<i64>,
    },
}

/// After a crash: every delivery that was claimed but not recorded goes back
/// to the queue. Returns how many.
pub fn recover(conn: &Connection, now: i64) -> Result<usize, StoreError> {
    // Rows of a cancelled alert are not sent again.
    conn.prepare_cached(
        "UPDATE deliveries SET state = 'cancelled', updated_at = ?1
         WHERE state IN ('sending', 'queued', 'held')
           AND alert_id IN (SELECT id FROM alerts WHERE closed_reason = 'cancelled')",
    )?
    .execute([now])?;
    let n = conn
        .prepare_cached("UPDATE deliveries SET state = 'queued', next_attempt_at = ?1, updated_at = ?1 WHERE state = 'sending'")?
        .execute([now])?;
    if n > 0 {
        audit::record(
            conn,
            now,
            "klaxon",
            "outbox.recover",
            None,
            &serde_json::json!({"requeued": n}).to_string(),
            audit::FROM_CONTEXT,
        )?;
    }
    Ok(n)
}

/// The recipient a delivery was made for.
pub fn recipient_of(
    conn: &Connection,
    delivery_id: i64,
) -> Result<Option<(RecipientId, String)>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT recipient_id, address FROM deliveries WHERE id = ?1")?
        .query_row([delivery_id], |r| Ok((RecipientId(r.get(0)?), r.get(1)?)))
        .optional()?)
}

/// A contact whose address failed permanently.
#[derive(Debug, Clone, Serialize)]
pub struct ContactProblem {
    pub person_id: String,
    pub name: String,
    pub channel: String,
    pub address: String,
    pub code: Option<String>,
    pub reason: Option<String>,
    pub last_attempt_at: i64,
    pub failures: i64,
}

pub fn contactability(conn: &Connection) -> Result<Vec<ContactProblem>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT r.person_id, r.name, d.channel, d.address, d.error_code, d.error, max(d.updated_at), count(*)
         FROM deliveries d JOIN recipients r ON r.id = d.recipient_id
         WHERE d.state = 'undeliverable' AND d.address <> ''  -- '': pruned by retention
         GROUP BY r.person_id, d.channel, d.address
         UNION ALL
         SELECT r.person_id, r.name, 'sms', o.address, 'opt-out', 'replied STOP: no SMS (emergencies still call and email)', o.at, 0
         FROM opt_outs o JOIN recipients r ON r.id = (SELECT d.recipient_id FROM deliveries d WHERE d.address = o.address AND d.channel IN ('sms', 'voice') ORDER BY d.id DESC LIMIT 1)
         UNION ALL
         SELECT r.person_id, r.name, 'email', c.address, c.code, coalesce(c.reason, 'marked an alert as spam: their mail provider may hide the next one'), c.at, 0
         FROM email_complaints c JOIN deliveries d ON d.id = c.delivery_id JOIN recipients r ON r.id = d.recipient_id
         ORDER BY 2, 3",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(ContactProblem {
            person_id: r.get(0)?,
            name: r.get(1)?,
            channel: r.get(2)?,
            address: r.get(3)?,
            code: r.get(4)?,
            reason: r.get(5)?,
            last_attempt_at: r.get(6)?,
            failures: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Deliveries queued or in flight, per channel: the queue depth gauge.
pub fn queue_depth(conn: &Connection) -> Result<Vec<(String, String, i64)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT channel, state, count(*) FROM deliveries WHERE state IN ('queued', 'sending') GROUP BY channel, state",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
