//! SMS replies and keys pressed on a call. A "1" (or yes, sí, ok…) confirms
//! the newest open alert that sent to that number and asked for it, for
//! every recipient reached at that number; STOP and START are recorded; any
//! other text is kept in the alert's inbox. klaxon answers with one short
//! SMS; unknown numbers get no answer.

use super::words;
use crate::domain::{AlertId, RecipientId};
use crate::services::Services;
use crate::store::StoreError;
use crate::store::alerts::{self, Answer};
use crate::store::replies::{self, ReplyKind};

fn normalised(body: &str) -> String {
    body.trim().trim_end_matches(['.', '!']).to_lowercase()
}

pub fn is_yes(body: &str) -> bool {
    matches!(
        normalised(body).as_str(),
        "1" | "y" | "yes" | "ok" | "si" | "sí" | "confirm" | "confirmed" | "có" | "是"
    )
}

fn is_stop(body: &str) -> bool {
    matches!(
        normalised(body).as_str(),
        "stop" | "stopall" | "unsubscribe" | "cancel" | "end" | "quit"
    )
}

fn is_start(body: &str) -> bool {
    matches!(normalised(body).as_str(), "start" | "unstop" | "yes start")
}

fn drill_label(drill: bool) -> &'static str {
    if drill { "true" } else { "false" }
}

/// Confirms `who` for `alert`; returns the "Confirmed: …" line.
async fn confirm_all(
    sv: &Services,
    alert: AlertId,
    who: &[RecipientId],
    via: &'static str,
) -> Result<Option<String>, StoreError> {
    let mut lang = None;
    for r in who {
        super::record(sv, *r, Answer::Confirm, via).await?;
        if lang.is_none() {
            let r = *r;
            lang = Some(
                sv.store
                    .read(move |c| Ok(alerts::recipient(c, r)?.language))
                    .await?,
            );
        }
    }
    let a = sv.store.read(move |c| alerts::get(c, alert)).await?;
    let lang = lang.unwrap_or_else(|| "en".into());
    Ok(Some(format!(
        "{}: {}, {}",
        words(&lang).confirmed,
        a.title,
        a.place
    )))
}

/// Handles one SMS reply; returns the text to answer with, if any.
pub async fn sms_reply(
    sv: &Services,
    from: &str,
    body: &str,
) -> Result<Option<String>, StoreError> {
    let now = sv.now_ms();
    let from_s = from.to_string();
    let known = sv
        .store
        .read(move |c| replies::latest_for(c, &from_s))
        .await?;
    let Some((latest_alert, latest_recipient)) = known else {
        // Not a number klaxon sent to: no answer, nothing kept.
        sv.metrics.inc(
            "klaxon_rejected_inputs_total",
            &[("kind", "unknown-number")],
        );
        return Ok(None);
    };
    let lang = sv
        .store
        .read(move |c| Ok(alerts::recipient(c, latest_recipient)?.language))
        .await?;
    let w = words(&lang);
    let keep = |kind: ReplyKind, alert: Option<AlertId>| {
        let (from, body) = (from.to_string(), body.to_string());
        sv.store.write(move |c| {
            replies::store_reply(
                c,
                alert,
                Some(latest_recipient),
                "sms",
                &from,
                &body,
                kind,
                now,
            )
        })
    };
    if is_stop(body) {
        let f = from.to_string();
        sv.store
            .write(move |c| replies::opt_out(c, &f, now))
            .await?;
        keep(ReplyKind::OptOut, Some(latest_alert)).await?;
        sv.metrics
            .inc("klaxon_replies_total", &[("kind", "opt-out")]);
        return Ok(Some(w.opted_out.to_string()));
    }
    if is_start(body) {
        let f = from.to_string();
        sv.store.write(move |c| replies::opt_in(c, &f)).await?;
        keep(ReplyKind::OptIn, Some(latest_alert)).await?;
        sv.metrics
            .inc("klaxon_replies_total", &[("kind", "opt-in")]);
        return Ok(Some(w.opted_in.to_string()));
    }
    if is_yes(body) {
        let f = from.to_string();
        let open = sv.store.read(move |c| replies::confirmable(c, &f)).await?;
        return match open {
            Some((alert, who)) => {
                sv.metrics
                    .inc("klaxon_replies_total", &[("kind", "confirmation")]);
                confirm_all(sv, alert, &who, "sms").await
            }
            None => {
                // Nothing open asks for it: kept, counted, answered politely.
                keep(ReplyKind::LateConfirmation, Some(latest_alert)).await?;
                sv.metrics.inc(
                    "klaxon_rejected_inputs_total",
                    &[("kind", "reply-no-open-alert")],
                );
                Ok(Some(w.nothing_open.to_string()))
            }
        };
    }
    // Not a confirmation ("my son has asthma, is he OK?"): never dropped.
    let id = keep(ReplyKind::Message, Some(latest_alert)).await?;
    sv.metrics
        .inc("klaxon_replies_total", &[("kind", "message")]);
    tracing::info!(
        alert = latest_alert.0,
        reply = id,
        "A reply that is not a confirmation was kept in the alert's inbox."
    );
    Ok(Some(w.message_received.to_string()))
}

/// What to say on a call after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoiceReply {
    /// Thank the person in their language.
    Thanks { language: String, text: String },
    /// Nothing to confirm (wrong key, closed alert): hang up politely.
    Hangup,
}

/// A key pressed on an alert's call (delivery `delivery`): "1" confirms the
/// call's alert, for everyone reached at that number, if it is still open.
pub async fn voice_key(
    sv: &Services,
    delivery: i64,
    digits: Option<&str>,
) -> Result<VoiceReply, StoreError> {
    if digits != Some("1") {
        sv.metrics
            .inc("klaxon_rejected_inputs_total", &[("kind", "voice-key")]);
        return Ok(VoiceReply::Hangup);
    }
    let found = sv
        .store
        .read(move |c| {
            let Some((recipient, address)) = crate::store::deliveries::recipient_of(c, delivery)?
            else {
                return Ok(None);
            };
            let r = alerts::recipient(c, recipient)?;
            let alert = AlertId(r.alert_id);
            let a = alerts::get(c, alert)?;
            let who = replies::sharing(c, alert, &address)?;
            Ok(Some((a, r.language, who)))
        })
        .await?;
    let Some((alert, language, who)) = found else {
        sv.metrics.inc(
            "klaxon_rejected_inputs_total",
            &[("kind", "voice-unknown-delivery")],
        );
        return Ok(VoiceReply::Hangup);
    };
    if !alert.state.is_open() || !alert.confirm {
        sv.metrics.inc(
            "klaxon_rejected_inputs_total",
            &[("kind", "answer-after-close")],
        );
        return Ok(VoiceReply::Hangup);
    }
    for r in &who {
        super::record(sv, *r, Answer::Confirm, "voice").await?;
    }
    sv.metrics.inc(
        "klaxon_replies_total",
        &[
            ("kind", "voice-confirmation"),
            ("drill", drill_label(alert.drill)),
        ],
    );
    Ok(VoiceReply::Thanks {
        text: words(&language).thanks.to_string(),
        language,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_words() {
        assert!(is_yes(" 1 "));
        assert!(is_yes("Sí"));
        assert!(is_yes("yes!"));
        assert!(!is_yes("STOP"));
        assert!(!is_yes("12"));
        assert!(is_stop("Stop"));
        assert!(is_start("START"));
        assert!(!is_stop("is my son ok?"));
    }
}
