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

use super::{StoreError, audit};
use crate::domain::Channel;

/// A claimed delivery with what is needed to render and send it.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub alert_id: i64,
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
    pub ack_deadline: Option<i64>,
    pub language: String,
    pub students_json: String,
    pub token: String,
    pub escalation: bool,
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
    due: i64,
}

/// Claims up to `limit` due deliveries of one channel, most urgent first.
pub fn claim(
    conn: &Connection,
    channel: Channel,
    now: i64,
    limit: i64,
) -> Result<Vec<Claimed>, StoreError> {
    // One statement marks the batch; RETURNING does not keep the ORDER BY,
    // so the rows are put back in priority order below.
    let mut rows: Vec<ClaimRow> = conn
        .prepare_cached(
            // First attempts are always due: a wall-clock step back must not stall a new alert.
            "UPDATE deliveries SET state = 'sending', updated_at = ?2
             WHERE id IN (SELECT id FROM deliveries WHERE state = 'queued' AND channel = ?1 AND (next_attempt_at <= ?2 OR attempts = 0)
                          ORDER BY priority, next_attempt_at, id LIMIT ?3)
             RETURNING id, alert_id, recipient_id, address, attempts, provider, escalation, priority, next_attempt_at",
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
                due: r.get(8)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    rows.sort_by_key(|r| (r.priority, r.due, r.id));
    type AlertPart = (String, String, Option<String>, bool, Option<i64>, String);
    let mut alerts: std::collections::HashMap<i64, AlertPart> = std::collections::HashMap::new();
    let mut alert_q = conn.prepare_cached(
        "SELECT playbook, title, message, drill, ack_deadline, place FROM alerts WHERE id = ?1",
    )?;
    let mut recipient_q =
        conn.prepare_cached("SELECT language, students, token FROM recipients WHERE id = ?1")?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let alert_id = row.alert_id;
        let (playbook, title, message, drill, ack_deadline, place) = match alerts.entry(alert_id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(alert_q.query_row([alert_id], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })?)
            }
        };
        let (language, students_json, token): (String, String, String) = recipient_q
            .query_row([row.recipient_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
        out.push(Claimed {
            id: row.id,
            alert_id,
            recipient_id: row.recipient_id,
            channel,
            address: row.address,
            attempts: row.attempts,
            last_provider: row.last_provider,
            playbook: playbook.clone(),
            title: title.clone(),
            place: place.clone(),
            message: message.clone(),
            drill: *drill,
            ack_deadline: *ack_deadline,
            language,
            students_json,
            token,
            escalation: row.escalation,
        });
    }
    Ok(out)
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
}

/// Records a batch of outcomes; returns the alerts that just settled (their
/// queue is empty).
pub fn record(
    conn: &Connection,
    now: i64,
    outcomes: &[(i64, Outcome)],
) -> Result<Vec<i64>, StoreError> {
    let mut touched = BTreeSet::new();
    let mut sent = conn.prepare_cached(
        "UPDATE deliveries SET state = 'sent', provider = ?2, provider_msg_id = ?3, attempts = attempts + 1,
                sent_at = ?4, updated_at = ?4, error = NULL, error_code = NULL
         WHERE id = ?1 AND state = 'sending' RETURNING alert_id",
    )?;
    let mut retry = conn.prepare_cached(
        "UPDATE deliveries SET state = 'queued', provider = ?2, error = ?3, attempts = attempts + 1,
                next_attempt_at = ?4, updated_at = ?5
         WHERE id = ?1 AND state = 'sending' RETURNING alert_id",
    )?;
    let mut bad = conn.prepare_cached(
        "UPDATE deliveries SET state = ?6, provider = ?2, error_code = ?3, error = ?4, attempts = attempts + 1, updated_at = ?5
         WHERE id = ?1 AND state = 'sending' RETURNING alert_id",
    )?;
    for (id, outcome) in outcomes {
        let alert: Option<i64> = match outcome {
            Outcome::Sent {
                provider,
                message_id,
            } => sent
                .query_row(params![id, provider, message_id, now], |r| r.get(0))
                .optional()?,
            Outcome::Retry {
                provider,
                error,
                next_at,
            } => retry
                .query_row(params![id, provider, error, next_at, now], |r| r.get(0))
                .optional()?,
            Outcome::Undeliverable {
                provider,
                code,
                error,
            } => {
                let a = bad
                    .query_row(
                        params![id, provider, code, error, now, "undeliverable"],
                        |r| r.get(0),
                    )
                    .optional()?;
                if a.is_some() {
                    take_over(conn, *id, now)?;
                }
                a
            }
            Outcome::GaveUp { provider, error } => bad
                .query_row(
                    params![id, provider, "gave-up", error, now, "failed"],
                    |r| r.get(0),
                )
                .optional()?,
        };
        if let Some(a) = alert {
            touched.insert(a);
        }
    }
    let mut settled = Vec::new();
    for alert in touched {
        if settle_if_done(conn, alert, now)? {
            settled.push(alert);
        }
    }
    Ok(settled)
}

/// Marks the alert settled when nothing of it is queued or in flight.
fn settle_if_done(conn: &Connection, alert: i64, now: i64) -> Result<bool, StoreError> {
    // EXISTS stops at the first pending row: this runs after every batch of
    // outcomes, and counting a 100k-row queue each time would cost seconds.
    let pending = conn
        .prepare_cached(
            "SELECT 1 FROM deliveries WHERE alert_id = ?1 AND state IN ('queued', 'sending', 'held') LIMIT 1",
        )?
        .exists([alert])?;
    if pending {
        return Ok(false);
    }
    let n = conn
        .prepare_cached("UPDATE alerts SET settled_at = ?2 WHERE id = ?1 AND settled_at IS NULL AND materialized = 1")?
        .execute(params![alert, now])?;
    Ok(n > 0)
}

/// After a permanent failure: if the recipient has nothing else on its way,
/// their next address on another channel takes over.
fn take_over(conn: &Connection, failed_id: i64, now: i64) -> Result<(), StoreError> {
    let (alert_id, recipient_id, failed_addr, priority, addresses): (
        i64,
        i64,
        String,
        i64,
        String,
    ) = conn
        .prepare_cached(
            "SELECT d.alert_id, d.recipient_id, d.address, d.priority, r.addresses
             FROM deliveries d JOIN recipients r ON r.id = d.recipient_id WHERE d.id = ?1",
        )?
        .query_row([failed_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
    let alive: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM deliveries WHERE recipient_id = ?1 AND state NOT IN ('undeliverable', 'failed', 'cancelled')",
        )?
        .query_row([recipient_id], |r| r.get(0))?;
    if alive > 0 {
        return Ok(());
    }
    let addresses: Vec<(Channel, String)> = serde_json::from_str(&addresses).unwrap_or_default();
    let mut used = conn.prepare_cached(
        "SELECT 1 FROM deliveries WHERE recipient_id = ?1 AND channel = ?2 AND address = ?3",
    )?;
    for (ch, addr) in addresses {
        if addr == failed_addr || used.exists(params![recipient_id, ch.as_str(), addr])? {
            continue;
        }
        conn.prepare_cached(
            "INSERT INTO deliveries (alert_id, recipient_id, channel, address, state, priority, next_attempt_at, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?6, ?6)",
        )?
        .execute(params![alert_id, recipient_id, ch.as_str(), addr, priority, now])?;
        break;
    }
    Ok(())
}

fn rank(state: &str) -> i32 {
    match state {
        "held" | "queued" => 0,
        "sending" => 1,
        "sent" => 2,
        _ => 3,
    }
}

/// Applies a provider's status report. Monotonic: a late `sent` never
/// overwrites `delivered`. Returns whether anything changed.
pub fn provider_status(
    conn: &Connection,
    now: i64,
    delivery_id: Option<i64>,
    provider_msg_id: &str,
    new_state: &str,
    error_code: Option<&str>,
) -> Result<bool, StoreError> {
    let row: Option<(i64, String)> = match delivery_id {
        Some(id) => conn
            .prepare_cached("SELECT id, state FROM deliveries WHERE id = ?1 AND (provider_msg_id = ?2 OR provider_msg_id IS NULL)")?
            .query_row(params![id, provider_msg_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?,
        None => conn
            .prepare_cached("SELECT id, state FROM deliveries WHERE provider_msg_id = ?1")?
            .query_row([provider_msg_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?,
    };
    let Some((id, old)) = row else {
        return Ok(false);
    };
    if rank(new_state) <= rank(&old) || old == "cancelled" {
        return Ok(false);
    }
    conn.prepare_cached(
        "UPDATE deliveries SET state = ?2, updated_at = ?3,
            delivered_at = CASE WHEN ?2 = 'delivered' THEN ?3 ELSE delivered_at END,
            sent_at = coalesce(sent_at, ?3),
            error_code = coalesce(?4, error_code)
         WHERE id = ?1",
    )?
    .execute(params![id, new_state, now, error_code])?;
    if new_state == "undeliverable" {
        take_over(conn, id, now)?;
    }
    Ok(true)
}

/// After a crash: every delivery that was claimed but not recorded goes back
/// to the queue. Returns how many.
pub fn recover(conn: &Connection, now: i64) -> Result<usize, StoreError> {
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
        )?;
    }
    Ok(n)
}

/// Escalates the unconfirmed recipients of an alert on `channel`: one new
/// delivery each, for those with an address on it and none there yet.
pub fn escalate(
    conn: &Connection,
    alert_id: i64,
    channel: Channel,
    now: i64,
) -> Result<i64, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT r.id, r.addresses, a.priority FROM recipients r JOIN alerts a ON a.id = r.alert_id
         WHERE r.alert_id = ?1 AND r.acked_at IS NULL
           AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.recipient_id = r.id AND d.channel = ?2)",
    )?;
    let rows: Vec<(i64, String, i64)> = stmt
        .query_map(params![alert_id, channel.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut ins = conn.prepare_cached(
        "INSERT INTO deliveries (alert_id, recipient_id, channel, address, state, priority, next_attempt_at, escalation, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, 1, ?6, ?6)",
    )?;
    let mut n = 0;
    for (rid, addresses, priority) in rows {
        let addresses: Vec<(Channel, String)> =
            serde_json::from_str(&addresses).unwrap_or_default();
        if let Some((_, addr)) = addresses.iter().find(|(c, _)| *c == channel) {
            ins.execute(params![
                alert_id,
                rid,
                channel.as_str(),
                addr,
                priority,
                now
            ])?;
            n += 1;
        }
    }
    conn.prepare_cached("UPDATE alerts SET escalated_at = ?2, settled_at = CASE WHEN ?3 > 0 THEN NULL ELSE settled_at END WHERE id = ?1")?
        .execute(params![alert_id, now, n])?;
    audit::record(
        conn,
        now,
        "klaxon",
        "alert.escalate",
        Some(alert_id),
        &serde_json::json!({"channel": channel, "deliveries": n}).to_string(),
    )?;
    Ok(n)
}

/// Alerts still sending whose ack deadline has passed and that have an
/// escalation channel are found by the tracker through this.
pub fn pending_escalations(conn: &Connection) -> Result<Vec<(i64, String, i64)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, playbook, ack_deadline FROM alerts
         WHERE state = 'sending' AND escalated_at IS NULL AND ack_deadline IS NOT NULL ORDER BY ack_deadline",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The recipient a reply from `phone` most likely answers: the newest
/// unconfirmed recipient that was texted or called at that number.
pub fn recipient_for_reply(conn: &Connection, phone: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT r.id FROM deliveries d JOIN recipients r ON r.id = d.recipient_id JOIN alerts a ON a.id = d.alert_id
             WHERE d.address = ?1 AND d.channel IN ('sms', 'voice') AND a.state = 'sending'
             ORDER BY (r.acked_at IS NULL) DESC, d.alert_id DESC LIMIT 1",
        )?
        .query_row([phone], |r| r.get(0))
        .optional()?)
}

pub fn recipient_of(conn: &Connection, delivery_id: i64) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT recipient_id FROM deliveries WHERE id = ?1")?
        .query_row([delivery_id], |r| r.get(0))
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
         WHERE d.state = 'undeliverable'
         GROUP BY r.person_id, d.channel, d.address ORDER BY r.name, d.channel",
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
