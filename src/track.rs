//! The deadline tracker: one task for every alert's acknowledgement deadline.
//! It sleeps until the earliest one (or until woken because a sooner one
//! arrived) and escalates the recipients who have not confirmed, usually with
//! a voice call.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::app::AppState;
use crate::store::{deliveries, now_ms};

/// Longest sleep, so a clock change or a missed wake-up costs at most this.
const MAX_SLEEP: Duration = Duration::from_secs(30);

pub async fn run(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    loop {
        let next = match tick(&state, now_ms()).await {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "Deadline tracker failed a pass; trying again shortly.");
                Some(now_ms() + 1000)
            }
        };
        let sleep = next
            .map(|t| Duration::from_millis((t - now_ms()).max(0) as u64).min(MAX_SLEEP))
            .unwrap_or(MAX_SLEEP);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = state.tracker.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Escalates every alert whose ack deadline has passed; returns the next
/// deadline to wake for.
pub async fn tick(state: &AppState, now: i64) -> Result<Option<i64>, crate::store::StoreError> {
    let pending = state.store.read(deliveries::pending_escalations).await?;
    let mut next: Option<i64> = None;
    for (alert_id, playbook, deadline) in pending {
        let Some(channel) = state
            .config
            .playbooks
            .get(&playbook)
            .and_then(|p| p.escalate)
        else {
            continue;
        };
        if deadline > now {
            next = Some(next.map_or(deadline, |n: i64| n.min(deadline)));
            continue;
        }
        let n = state
            .store
            .write(move |c| deliveries::escalate(c, alert_id, channel, now))
            .await?;
        state.metrics.add(
            "klaxon_escalations_total",
            &[("channel", channel.as_str())],
            n as u64,
        );
        tracing::info!(alert = alert_id, escalated = n, %channel, "Acknowledgement deadline passed; escalating the unconfirmed.");
        if n > 0 {
            state.engine.kick();
        }
    }
    Ok(next)
}
