//! A loopback SendGrid v3 Mail Send endpoint (`POST /v3/mail/send`): checks
//! the bearer key and the shape SendGrid requires (personalizations with
//! recipients, a from address, a subject, content parts), answers 202 with an
//! `X-Message-Id`, and takes the same run-time faults as the Twilio server.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use serde_json::{Value, json};

use super::{ConnectionKill, Fault, Faults, HttpServer, serve_http};

struct Inner {
    api_key: String,
    faults: Arc<Faults>,
    invalid: Mutex<HashSet<String>>,
    accepted: Mutex<Vec<SentMail>>,
    violations: Mutex<Vec<String>>,
    next_id: AtomicU64,
}

/// One accepted Mail Send request.
#[derive(Debug, Clone)]
pub struct SentMail {
    pub message_id: String,
    pub body: Value,
}

pub struct SendGridServer {
    http: HttpServer,
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SendGridServer {
    /// Starts a server that accepts `Authorization: Bearer {api_key}`.
    pub async fn start(api_key: &str) -> SendGridServer {
        let faults = Arc::new(Faults::default());
        let inner = Arc::new(Inner {
            api_key: api_key.to_string(),
            faults: faults.clone(),
            invalid: Mutex::new(HashSet::new()),
            accepted: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
        });
        let router = Router::new()
            .route("/v3/mail/send", post(mail_send))
            .with_state(inner.clone());
        let http = serve_http(router, faults).await;
        SendGridServer { http, inner }
    }

    /// The `api_base` to configure.
    pub fn url(&self) -> String {
        self.http.url()
    }

    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// Mail to this address gets SendGrid's 400 "Does not contain a valid address."
    pub fn reject_address(&self, address: &str) {
        lock(&self.inner.invalid).insert(address.to_ascii_lowercase());
    }

    pub fn sent(&self) -> Vec<SentMail> {
        lock(&self.inner.accepted).clone()
    }

    pub fn violations(&self) -> Vec<String> {
        lock(&self.inner.violations).clone()
    }
}

fn errors(status: StatusCode, message: &str, field: Option<&str>) -> Response {
    let body = json!({ "errors": [{ "message": message, "field": field, "help": null }] });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn mail_send(
    State(inner): State<Arc<Inner>>,
    Extension(kill): Extension<ConnectionKill>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (fault, delay) = inner.faults.take();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match fault {
        Some(Fault::Drop) => return kill.kill().await,
        Some(Fault::TooMany(secs)) => {
            let mut r = errors(StatusCode::TOO_MANY_REQUESTS, "too many requests", None);
            if let Ok(v) = secs.to_string().parse() {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
        Some(Fault::ServerError) => {
            return errors(StatusCode::INTERNAL_SERVER_ERROR, "internal error", None);
        }
        None => {}
    }
    let violation = |status, message: String, field: Option<&str>| {
        lock(&inner.violations).push(message.clone());
        errors(status, &message, field)
    };
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {}", inner.api_key));
    if !authorized {
        return violation(
            StatusCode::UNAUTHORIZED,
            "The provided authorization grant is invalid, expired, or revoked".into(),
            None,
        );
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return violation(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json".into(),
            None,
        );
    }
    let Ok(mail) = serde_json::from_slice::<Value>(&body) else {
        return violation(StatusCode::BAD_REQUEST, "Bad Request".into(), None);
    };
    if let Err((message, field)) = check_shape(&mail) {
        return violation(StatusCode::BAD_REQUEST, message, Some(&field));
    }
    for (p, pers) in mail["personalizations"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        for (t, to) in pers["to"].as_array().into_iter().flatten().enumerate() {
            let email = to["email"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase();
            if lock(&inner.invalid).contains(&email) || !email.contains('@') {
                return errors(
                    StatusCode::BAD_REQUEST,
                    "Does not contain a valid address.",
                    Some(&format!("personalizations.{p}.to.{t}.email")),
                );
            }
        }
    }
    let n = inner.next_id.fetch_add(1, Ordering::SeqCst);
    let message_id = format!("sg{n:020}");
    lock(&inner.accepted).push(SentMail {
        message_id: message_id.clone(),
        body: mail,
    });
    (StatusCode::ACCEPTED, [("x-message-id", message_id)]).into_response()
}

/// What SendGrid requires of a Mail Send body; the error names the field.
fn check_shape(mail: &Value) -> Result<(), (String, String)> {
    let err = |m: &str, f: &str| Err((m.to_string(), f.to_string()));
    let Some(pers) = mail["personalizations"]
        .as_array()
        .filter(|p| !p.is_empty())
    else {
        return err(
            "The personalizations field is required and must have at least one personalization.",
            "personalizations",
        );
    };
    for (i, p) in pers.iter().enumerate() {
        let Some(to) = p["to"].as_array().filter(|t| !t.is_empty()) else {
            return err(
                "The to array is required for all personalization objects, and must have at least one email object with a valid email address.",
                &format!("personalizations.{i}.to"),
            );
        };
        if to.iter().any(|t| !t["email"].is_string()) {
            return err(
                "The email parameter is required.",
                &format!("personalizations.{i}.to"),
            );
        }
    }
    if !mail["from"]["email"].is_string() {
        return err(
            "The from object must be provided for every email send.",
            "from",
        );
    }
    if !mail["subject"].is_string() || mail["subject"] == "" {
        return err("The subject is required.", "subject");
    }
    let Some(content) = mail["content"].as_array().filter(|c| !c.is_empty()) else {
        return err(
            "Unless a valid template_id is provided, the content parameter is required.",
            "content",
        );
    };
    for (i, c) in content.iter().enumerate() {
        if !c["type"].is_string() || !c["value"].is_string() {
            return err(
                "Content objects need a type and a value.",
                &format!("content.{i}"),
            );
        }
    }
    // SendGrid requires text/plain first when both are present.
    if content.len() > 1 && content[0]["type"] != "text/plain" {
        return err(
            "The text/plain content type must be first.",
            "content.0.type",
        );
    }
    Ok(())
}
