//! Where a CAP message becomes an alert: every source (feeds, the signed
//! webhook, the drop folder) hands its parsed messages to `handle`, which
//! claims the message in the store (once across sources and restarts),
//! decides, calls `trigger::create` or `trigger::all_clear`, and records the
//! outcome. The only file that calls the trigger API for CAP.

use serde::Serialize;

use crate::app::AppState;
use crate::audience::AudienceSpec;
use crate::cap::decide::{self, Action};
use crate::cap::rules::Targets;
use crate::cap::{CapAlert, inspect};
use crate::domain::text::MessageText;
use crate::store::cap::{self as stored, Claim};
use crate::store::now_ms;
use crate::trigger::{TriggerError, TriggerRequest};

/// Who CAP alerts are created by, in the audit log and the alert row.
const ACTOR: &str = "cap";

/// What became of one message.
#[derive(Debug, Clone, Serialize)]
pub struct Handled {
    /// sent | held | drill | rescinded | recorded | skipped | duplicate
    pub outcome: &'static str,
    pub alert_id: Option<i64>,
    /// In words, for logs and the drop folder's report.
    pub detail: String,
}

/// Handles one message from `source` (`feed:<name>`, `webhook:<name>`,
/// `watch-folder`). An `Err` leaves nothing claimed, so the message is tried
/// again when it is seen again.
pub async fn handle(
    state: &AppState,
    alert: &CapAlert,
    source: &str,
) -> Result<Handled, TriggerError> {
    let a = alert.clone();
    let known = state.store.read(move |c| inspect::known(c, &a)).await?;
    let config = &state.config;
    let action = decide::decide(
        alert,
        &known,
        &config.rules,
        &config.schools,
        &config.server.timezone,
        jiff::Timestamp::now(),
    );
    let done = |outcome: &'static str, alert_id: Option<i64>, detail: String| Handled {
        outcome,
        alert_id,
        detail,
    };
    let result = match action {
        Action::AlreadyHandled { outcome, alert_id } => done(
            "duplicate",
            alert_id,
            format!("already handled ({outcome})"),
        ),
        // Nothing to do and nothing to store: a rule added later still
        // applies when the message is seen again.
        Action::Skip(s) => done("skipped", None, s.describe()),
        action => {
            let key = alert.key();
            let msg_type = alert.msg_type.to_string();
            let src = source.to_string();
            let (now, started) = (now_ms(), state.started_at);
            let claim = state
                .store
                .write(move |c| stored::claim(c, &key, &msg_type, &src, now, started))
                .await?;
            match claim {
                Claim::Seen(seen) => done(
                    "duplicate",
                    seen.alert_id,
                    format!("already handled ({})", seen.outcome),
                ),
                Claim::Mine(row) => match act(state, alert, row, action).await {
                    Ok(h) => h,
                    Err(e) => {
                        let _ = state.store.write(move |c| stored::release(c, row)).await;
                        return Err(e);
                    }
                },
            }
        }
    };
    state.metrics.inc(
        "klaxon_cap_messages_total",
        &[
            ("source", source.split(':').next().unwrap_or(source)),
            ("outcome", result.outcome),
        ],
    );
    Ok(result)
}

/// Carries out a claimed decision and records it against `row`.
async fn act(
    state: &AppState,
    alert: &CapAlert,
    row: i64,
    action: Action,
) -> Result<Handled, TriggerError> {
    let mut withdraw = None;
    let (outcome, alert_id, detail, rule, refers_to, cancels) = match action {
        Action::Create {
            rule,
            playbook,
            drill,
            hold,
            targets,
            message,
            refers_to,
        } => {
            let source = format!("cap:{}:{}", alert.sender, alert.identifier);
            let src = source.clone();
            // An alert committed before a crash, whose outcome was not recorded.
            let existing = state
                .store
                .read(move |c| stored::alert_by_source(c, &src))
                .await?;
            let id = match existing {
                Some(id) => id,
                None => {
                    let schools = match &targets {
                        Targets::District => vec![],
                        Targets::Schools(s) => s.clone(),
                    };
                    let req = TriggerRequest {
                        playbook,
                        audience: AudienceSpec {
                            schools,
                            ..AudienceSpec::default()
                        },
                        message: Some(message),
                        drill,
                        hold,
                        // Only the closure's schools: a school without
                        // people is not a reason to drop a storm warning.
                        allow_empty: true,
                        // CAP has its own dedup (identifier + sender +
                        // sent): a second, distinct warning is news.
                        confirm_duplicate: true,
                        // A feed never overrides a second person's approval.
                        override_reason: None,
                    };
                    crate::trigger::create(&state.services, req, ACTOR, &source)
                        .await?
                        .id
                }
            };
            let outcome = match (hold, drill) {
                (true, _) => "held",
                (false, true) => "drill",
                (false, false) => "sent",
            };
            (
                outcome,
                Some(id),
                format!("alert {id} started by rule `{rule}`"),
                Some(rule),
                refers_to,
                false,
            )
        }
        Action::Rescind {
            rule,
            original_alert,
            refers_to,
            text,
        } => {
            let id = crate::trigger::all_clear(
                &state.services,
                crate::domain::AlertId(original_alert),
                Some(text),
                ACTOR,
            )
            .await?
            .id;
            (
                "rescinded",
                Some(id),
                format!("rescinding notice {id} for alert {original_alert}"),
                Some(rule),
                Some(refers_to),
                true,
            )
        }
        Action::Record {
            refers_to,
            cancels,
            why,
            withdraw: w,
        } => {
            withdraw = w;
            ("recorded", None, why, None, refers_to, cancels)
        }
        Action::AlreadyHandled { .. } | Action::Skip(_) => unreachable!("not claimed"),
    };
    let d = detail.clone();
    let now = now_ms();
    let expires = alert.expires().map(|t| t.as_millisecond());
    state
        .store
        .write(move |c| {
            stored::finish(
                c,
                row,
                outcome,
                Some(&d),
                rule.as_deref(),
                alert_id,
                refers_to,
            )?;
            stored::set_expires(c, row, expires)?;
            if cancels && let Some(orig) = refers_to {
                stored::mark_cancelled(c, orig, now)?;
            }
            // Withdraw a closure still held for approval: its warning is cancelled.
            if let Some(id) = withdraw
                && crate::store::alerts::get(c, crate::domain::AlertId(id))?.state
                    == crate::domain::AlertState::Held
            {
                crate::store::alerts::cancel(c, crate::domain::AlertId(id), now, ACTOR)?;
            }
            Ok(())
        })
        .await?;
    Ok(Handled {
        outcome,
        alert_id,
        detail,
    })
}

/// A signed webhook's JSON trigger (the signature and the source's allowed
/// playbooks are checked by `http::hook_trigger`).
pub async fn webhook(
    state: &AppState,
    source: &str,
    playbook: String,
    audience: AudienceSpec,
    message: Option<String>,
    drill: bool,
) -> Result<crate::trigger::TriggerResponse, TriggerError> {
    let label = format!("webhook:{source}");
    let req = TriggerRequest {
        playbook,
        audience,
        message: message.map(MessageText::One),
        drill,
        hold: false,
        allow_empty: false,
        confirm_duplicate: false,
        override_reason: None,
    };
    crate::trigger::create(&state.services, req, &label, &label).await
}

/// Withdraws closures held for approval whose CAP message has expired: an
/// approval is only asked for while the warning stands. Returns the alerts
/// withdrawn.
pub async fn withdraw_expired(state: &AppState) -> Result<Vec<i64>, TriggerError> {
    let now = now_ms();
    let due = state
        .store
        .read(move |c| stored::held_and_expired(c, now))
        .await?;
    let mut done = Vec::new();
    for id in due {
        let withdrawn = state
            .store
            .write(move |c| {
                // Approved meanwhile: leave it.
                let aid = crate::domain::AlertId(id);
                if crate::store::alerts::get(c, aid)?.state != crate::domain::AlertState::Held {
                    return Ok(false);
                }
                crate::store::alerts::cancel(c, aid, now, "cap-expired")?;
                Ok(true)
            })
            .await?;
        if withdrawn {
            tracing::info!(
                alert = id,
                "Held CAP alert withdrawn: its warning expired before approval."
            );
            done.push(id);
        }
    }
    Ok(done)
}
