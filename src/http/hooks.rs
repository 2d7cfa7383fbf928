//! Twilio callbacks: delivery status, SMS replies and the key pressed on a
//! call. Every request must carry a valid `X-Twilio-Signature`; one without
//! gets 403 and changes nothing.

use std::sync::Arc;

use axum::Form;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::escape;
use crate::ack::{self, VoiceReply};
use crate::app::AppState;
use crate::deliver::providers::twilio::verify_signature;
use crate::domain::DeliveryState;
use crate::store::deliveries::{self, StatusApplied};

type Params = Vec<(String, String)>;

fn param<'a>(p: &'a Params, name: &str) -> Option<&'a str> {
    p.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Checks the signature over the URL Twilio called (our public URL plus the
/// path and query) and the POST parameters.
fn signed(state: &AppState, headers: &HeaderMap, uri: &axum::http::Uri, params: &Params) -> bool {
    let Some(sig) = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let url = format!("{}{}", state.config.server.public_url, path);
    let tokens: Vec<&str> = state.twilio_tokens.iter().map(String::as_str).collect();
    !tokens.is_empty() && verify_signature(&tokens, &url, params, sig)
}

fn forbidden(state: &AppState) -> Response {
    state.metrics.inc(
        "klaxon_http_auth_failures_total",
        &[("reason", "signature")],
    );
    (StatusCode::FORBIDDEN, "invalid signature\n").into_response()
}

fn twiml(body: String) -> Response {
    (
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>{body}</Response>"),
    )
        .into_response()
}

fn delivery_param(uri: &axum::http::Uri) -> Option<i64> {
    uri.query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "d")
        .and_then(|(_, v)| v.parse().ok())
}

/// Twilio error codes that mean the number itself cannot receive messages.
const PERMANENT_CODES: &[&str] = &[
    "21211", "21610", "21612", "21614", "30003", "30005", "30006",
];

pub async fn twilio_status(
    State(state): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    Form(params): Form<Params>,
) -> Response {
    if !signed(&state, &headers, &uri, &params) {
        return forbidden(&state);
    }
    let sid = param(&params, "MessageSid")
        .or_else(|| param(&params, "CallSid"))
        .unwrap_or("")
        .to_string();
    let code = param(&params, "ErrorCode")
        .filter(|c| !c.is_empty())
        .map(str::to_string);
    let raw = param(&params, "MessageStatus")
        .or_else(|| param(&params, "CallStatus"))
        .unwrap_or("");
    let new_state = match raw {
        "delivered" | "read" | "completed" => DeliveryState::Delivered,
        "queued" | "accepted" | "sending" | "sent" | "ringing" | "in-progress" | "initiated" => {
            DeliveryState::Sent
        }
        "undelivered" | "failed"
            if code
                .as_deref()
                .is_some_and(|c| PERMANENT_CODES.contains(&c)) =>
        {
            DeliveryState::Undeliverable
        }
        "undelivered" | "failed" | "busy" | "no-answer" | "canceled" => DeliveryState::Failed,
        _ => return (StatusCode::NO_CONTENT, "").into_response(),
    };
    if sid.is_empty() {
        state.metrics.inc(
            "klaxon_rejected_inputs_total",
            &[("kind", "callback-missing-sid")],
        );
        return (StatusCode::BAD_REQUEST, "missing MessageSid or CallSid\n").into_response();
    }
    let d = delivery_param(&uri);
    let now = state.now_ms();
    match state
        .store
        .write(move |c| deliveries::provider_status(c, now, d, &sid, new_state, code.as_deref()))
        .await
    {
        Ok(StatusApplied::Applied { released_at, .. }) => {
            if new_state == DeliveryState::Delivered
                && let Some(r) = released_at
            {
                state.metrics.observe(
                    "klaxon_time_to_delivery_seconds",
                    &[("drill", "unknown")],
                    (now - r) as f64 / 1000.0,
                );
            }
            (StatusCode::NO_CONTENT, "").into_response()
        }
        Ok(StatusApplied::Unknown) => {
            state.metrics.inc(
                "klaxon_rejected_inputs_total",
                &[("kind", "callback-unknown-message")],
            );
            (StatusCode::NO_CONTENT, "").into_response()
        }
        Ok(_) => (StatusCode::NO_CONTENT, "").into_response(),
        Err(e) => {
            tracing::error!(error = %e, "Cannot record a status callback; Twilio will retry.");
            (StatusCode::SERVICE_UNAVAILABLE, "").into_response()
        }
    }
}

pub async fn twilio_sms(
    State(state): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    Form(params): Form<Params>,
) -> Response {
    if !signed(&state, &headers, &uri, &params) {
        return forbidden(&state);
    }
    let from = param(&params, "From").unwrap_or("");
    let body = param(&params, "Body").unwrap_or("");
    match ack::sms_reply(&state, from, body).await {
        Ok(Some(text)) => twiml(format!("<Message>{}</Message>", escape(&text))),
        Ok(None) => twiml(String::new()),
        Err(e) => {
            tracing::error!(error = %e, "Cannot handle an SMS reply; Twilio will retry.");
            (StatusCode::SERVICE_UNAVAILABLE, "").into_response()
        }
    }
}

pub async fn twilio_voice(
    State(state): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    Form(params): Form<Params>,
) -> Response {
    if !signed(&state, &headers, &uri, &params) {
        return forbidden(&state);
    }
    let Some(d) = delivery_param(&uri) else {
        state.metrics.inc(
            "klaxon_rejected_inputs_total",
            &[("kind", "voice-missing-delivery")],
        );
        return (StatusCode::BAD_REQUEST, "missing delivery\n").into_response();
    };
    match ack::voice_key(&state, d, param(&params, "Digits")).await {
        Ok(VoiceReply::Thanks { language, text }) => twiml(format!(
            "<Say language=\"{}\">{}</Say>",
            escape(&language),
            escape(&text)
        )),
        Ok(VoiceReply::Hangup) => twiml("<Hangup/>".into()),
        Err(e) => {
            tracing::error!(error = %e, "Cannot record a voice confirmation.");
            (StatusCode::SERVICE_UNAVAILABLE, "").into_response()
        }
    }
}
