//! The deadline tracker: one task for every open alert's deadlines. It sleeps
//! until the earliest one (or until woken because a sooner one arrived, or
//! the clock was moved in a test) and then:
//!
//! - decides the notify verdict of alerts whose first deliveries are done,
//!   or whose notify deadline passed with some still queued (once, for good);
//! - at the ack deadline, starts the escalation stage: the unconfirmed get
//!   the playbook's escalation channel (their next channel when that address
//!   is missing or undeliverable), retried within `escalate_within`;
//! - when the window (with its escalation stage) is over, closes the alert.
//!
//! Only open alerts are read on each pass; a closed alert is never looked at
//! again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::domain::{AlertId, AlertState, CloseReason};
use crate::services::Services;
use crate::store::StoreError;
use crate::store::alerts::{self, AlertKind};

/// Longest sleep, so a missed wake-up costs at most this.
const MAX_SLEEP: Duration = Duration::from_secs(30);

pub async fn run(sv: Arc<Services>, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        let next = match tick(&sv, sv.now_ms()).await {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "Deadline tracker failed a pass; trying again shortly.");
                Some(sv.now_ms() + 1000)
            }
        };
        let until = next.unwrap_or(i64::MAX);
        tokio::select! {
            _ = sv.clock.sleep_until(until, MAX_SLEEP) => {}
            _ = sv.tracker.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

fn earliest(next: &mut Option<i64>, t: i64) {
    *next = Some(next.map_or(t, |n| n.min(t)));
}

/// One pass at `now`; returns when the next deadline falls.
pub async fn tick(sv: &Services, now: i64) -> Result<Option<i64>, StoreError> {
    sv.store
        .write(move |c| alerts::decide_verdicts(c, now))
        .await?;
    let open = sv.store.read(alerts::open_alerts).await?;
    let mut next: Option<i64> = None;
    for a in open {
        let id = AlertId(a.id);
        let drill = if a.drill { "true" } else { "false" };
        if a.deadline_met.is_none()
            && let Some(d) = a.notify_deadline
        {
            earliest(&mut next, d.max(now) + 1);
        }
        let Some(ack_deadline) = a.ack_deadline else {
            continue;
        };
        let close_at = a.close_at.unwrap_or(ack_deadline);
        if close_at <= now {
            let closed = sv
                .store
                .write(move |c| alerts::close(c, id, now, CloseReason::Expired, "klaxon"))
                .await?;
            if closed {
                sv.metrics
                    .inc("klaxon_alerts_closed_total", &[("reason", "expired")]);
                tracing::info!(alert = a.id, "The alert's window is over; it is closed.");
            }
            continue;
        }
        earliest(&mut next, close_at);
        let order = sv
            .config
            .playbooks
            .get(&a.playbook)
            .map(|p| p.escalation_order())
            .unwrap_or_default();
        let wants_escalation = a.kind == AlertKind::Alert
            && a.confirm
            && a.escalated_at.is_none()
            && !order.is_empty()
            && a.state != AlertState::Closed;
        if !wants_escalation {
            continue;
        }
        if ack_deadline > now {
            earliest(&mut next, ack_deadline);
            continue;
        }
        if !a.materialized {
            // Escalating a partly written audience would miss people.
            earliest(&mut next, now + 500);
            continue;
        }
        let order2 = order.clone();
        let n = sv
            .store
            .write(move |c| alerts::escalate(c, id, &order2, now))
            .await?;
        sv.metrics.add(
            "klaxon_escalations_total",
            &[("channel", order[0].as_str()), ("drill", drill)],
            n as u64,
        );
        tracing::info!(alert = a.id, escalated = n, channel = %order[0], "Acknowledgement deadline passed; escalating the unconfirmed.");
        if n > 0 {
            sv.engine.kick();
        }
    }
    Ok(next)
}
