//! Twilio callbacks: delivery status, SMS replies and the key pressed on a
//! call. Every request must carry a valid `X-Twilio-Signature`; one without
//! gets 403 and changes nothing.

use std::sync::Arc;

use axum::Form;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::escape;
use crate::ack::{self, words};
use crate::app::AppState;
use crate::deliver::providers::twilio::verify_signature;
use crate::store::{alerts, deliveries, now_ms};

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
        "delivered" | "read" | "completed" => "delivered",
        "queued" | "accepted" | "sending" | "sent" | "ringing" | "in-progress" | "initiated" => {
            "sent"
        }
        "undelivered" | "failed"
            if code
                .as_deref()
                .is_some_and(|c| PERMANENT_CODES.contains(&c)) =>
        {
            "undeliverable"
        }
        "undelivered" | "failed" | "busy" | "no-answer" | "canceled" => "failed",
        _ => return (StatusCode::NO_CONTENT, "").into_response(),
    };
    if sid.is_empty() {
        return (StatusCode::BAD_REQUEST, "missing MessageSid or CallSid\n").into_response();
    }
    let d = delivery_param(&uri);
    let now = now_ms();
    let st = new_state.to_string();
    match state
        .store
        .write(move |c| deliveries::provider_status(c, now, d, &sid, &st, code.as_deref()))
        .await
    {
        Ok(_) => (StatusCode::NO_CONTENT, "").into_response(),
        Err(e) => {
            tracing::error!(error = %e, "Cannot record a status callback; Twilio will retry.");
            (StatusCode::INTERNAL_SERVER_ERROR, "").into_response()
        }
    }
}

fn is_yes(body: &str) -> bool {
    matches!(
        body.trim()
            .trim_end_matches(['.', '!'])
            .to_lowercase()
            .as_str(),
        "1" | "y" | "yes" | "ok" | "si" | "sí" | "confirm" | "confirmed"
    )
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
    let from = param(&params, "From").unwrap_or("").to_string();
    let body = param(&params, "Body").unwrap_or("");
    if !is_yes(body) {
        // Not a confirmation (STOP/HELP are handled by Twilio itself).
        return twiml(String::new());
    }
    let recipient = match state
        .store
        .read(move |c| deliveries::recipient_for_reply(c, &from))
        .await
    {
        Ok(Some(r)) => r,
        Ok(None) => return twiml(String::new()),
        Err(e) => {
            tracing::error!(error = %e, "Cannot look up an SMS reply.");
            return (StatusCode::INTERNAL_SERVER_ERROR, "").into_response();
        }
    };
    reply_ack(&state, recipient, "sms").await
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
        return (StatusCode::BAD_REQUEST, "missing delivery\n").into_response();
    };
    if param(&params, "Digits") != Some("1") {
        return twiml("<Hangup/>".into());
    }
    let recipient = match state
        .store
        .read(move |c| deliveries::recipient_of(c, d))
        .await
    {
        Ok(Some(r)) => r,
        Ok(None) => return twiml("<Hangup/>".into()),
        Err(e) => {
            tracing::error!(error = %e, "Cannot look up a voice confirmation.");
            return (StatusCode::INTERNAL_SERVER_ERROR, "").into_response();
        }
    };
    reply_ack(&state, recipient, "voice").await
}

/// Records the confirmation and answers with TwiML thanking the person in
/// their language (`<Message>` for SMS, `<Say>` for a call).
async fn reply_ack(state: &AppState, recipient: i64, via: &'static str) -> Response {
    let lang = state
        .store
        .read(move |c| alerts::recipient_language(c, recipient))
        .await
        .unwrap_or_else(|_| "en".into());
    match ack::record(state, recipient, None, via).await {
        Ok(_) => {
            let thanks = escape(words(&lang).thanks);
            if via == "sms" {
                twiml(format!("<Message>{thanks}</Message>"))
            } else {
                twiml(format!(
                    "<Say language=\"{}\">{thanks}</Say>",
                    escape(&lang)
                ))
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "Cannot record a confirmation.");
            (StatusCode::INTERNAL_SERVER_ERROR, "").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yes_words() {
        assert!(is_yes(" 1 "));
        assert!(is_yes("Sí"));
        assert!(is_yes("yes!"));
        assert!(!is_yes("STOP"));
        assert!(!is_yes("12"));
    }
}
