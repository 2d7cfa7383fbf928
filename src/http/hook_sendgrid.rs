//! `POST /hooks/sendgrid/events`: SendGrid's Event Webhook. The body is a
//! JSON array of events signed with ECDSA P-256 over `timestamp + body`
//! (`deliver::events`). `delivered`, `bounce`, `dropped` and `spamreport`
//! move the delivery named by our `delivery_id` custom argument; other
//! events (open, click, processed, deferred) are acknowledged and ignored.
//!
//! Refused with nothing changed and `klaxon_http_auth_failures_total`
//! counted: no provider with an `event_public_key` (404), a missing
//! signature (401), a wrong signature or a timestamp more than five minutes
//! away (403).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::hook_trigger::MAX_SKEW_SECS;
use crate::app::AppState;
use crate::deliver::events::{self, SIGNATURE_HEADER, SendGridEvent, TIMESTAMP_HEADER};
use crate::deliver::providers::Provider;
use crate::store::deliveries::StatusApplied;
use crate::store::{email_events, now_ms};

fn refuse(state: &AppState, reason: &str, status: StatusCode, text: &'static str) -> Response {
    state
        .metrics
        .inc("klaxon_http_auth_failures_total", &[("reason", reason)]);
    tracing::warn!(reason, "SendGrid event webhook refused.");
    (status, text).into_response()
}

pub async fn events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let keys: Vec<&events::EventKey> = state
        .engine
        .providers()
        .filter_map(|p| match p {
            Provider::SendGrid(s) => s.event_key(),
            _ => None,
        })
        .collect();
    if keys.is_empty() {
        return refuse(
            &state,
            "sendgrid-not-configured",
            StatusCode::NOT_FOUND,
            "no sendgrid provider has an event_public_key\n",
        );
    }
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    let (Some(ts), Some(sig)) = (h(TIMESTAMP_HEADER), h(SIGNATURE_HEADER)) else {
        return refuse(
            &state,
            "sendgrid-unsigned",
            StatusCode::UNAUTHORIZED,
            "X-Twilio-Email-Event-Webhook-Signature and -Timestamp are required\n",
        );
    };
    if !keys.iter().any(|k| k.verify(ts, &body, sig)) {
        return refuse(
            &state,
            "sendgrid-signature",
            StatusCode::FORBIDDEN,
            "invalid signature\n",
        );
    }
    // Checked after the signature, so the timestamp is SendGrid's own.
    if ts
        .parse::<i64>()
        .map_or(true, |t| (now_ms() / 1000 - t).abs() > MAX_SKEW_SECS)
    {
        return refuse(
            &state,
            "sendgrid-stale",
            StatusCode::FORBIDDEN,
            "the timestamp is more than 5 minutes away from now\n",
        );
    }
    let list: Vec<SendGridEvent> = match serde_json::from_slice(&body) {
        Ok(l) => l,
        Err(e) => {
            state.metrics.inc(
                "klaxon_rejected_inputs_total",
                &[("kind", "sendgrid-event-json")],
            );
            return (
                StatusCode::BAD_REQUEST,
                format!("the body is not a JSON array of events: {e}\n"),
            )
                .into_response();
        }
    };
    let mut parsed = Vec::new();
    for ev in &list {
        match events::from_sendgrid(ev) {
            Ok(e) => parsed.push(e),
            Err(_) => state.metrics.inc(
                "klaxon_email_events_total",
                &[
                    ("source", "sendgrid"),
                    ("event", "other"),
                    ("outcome", "ignored"),
                ],
            ),
        }
    }
    let now = state.now_ms();
    let todo = parsed.clone();
    // One transaction for the whole array: SendGrid retries the whole POST
    // when we answer 5xx, and applying an event twice changes nothing.
    let result = state
        .store
        .write(move |c| {
            todo.iter()
                .map(|e| email_events::apply(c, now, e))
                .collect::<Result<Vec<_>, _>>()
        })
        .await;
    match result {
        Ok(outcomes) => {
            for (e, o) in parsed.iter().zip(outcomes) {
                let outcome = match o {
                    StatusApplied::Applied { .. } | StatusApplied::Deferred => "applied",
                    StatusApplied::Unchanged => "unchanged",
                    StatusApplied::Unknown => "unknown",
                };
                state.metrics.inc(
                    "klaxon_email_events_total",
                    &[
                        ("source", "sendgrid"),
                        ("event", e.kind.as_str()),
                        ("outcome", outcome),
                    ],
                );
            }
            (StatusCode::OK, "").into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "Cannot record SendGrid events; SendGrid will retry.");
            (StatusCode::SERVICE_UNAVAILABLE, "").into_response()
        }
    }
}
