//! The one HTTP listener: JSON API, acknowledgement pages, provider hooks,
//! the operator console, metrics and health.
//!
//! Invariant: only this module speaks HTTP to the outside; handlers translate
//! to and from the store and never hold a lock across an await.

mod api;
pub mod console;
pub mod hook_sendgrid;
pub mod hook_trigger;
mod hooks;
mod idempotency;
pub mod oidc;
pub mod origin;
mod pages;
pub mod scope;
pub mod serve;
pub mod session;
mod token_use;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::app::AppState;
use crate::store::StoreError;
use crate::store::tokens::{self, ApiRole, Caller};

pub fn router(state: Arc<AppState>) -> Router {
    // The POSTs that start or change alerts honour `Idempotency-Key`.
    let lifecycle = Router::new()
        .route("/api/v1/alerts", post(api::create_alert))
        .route("/api/v1/alerts/{id}/all-clear", post(api::all_clear))
        .route("/api/v1/alerts/{id}/cancel", post(api::cancel))
        .route("/api/v1/alerts/{id}/approve", post(api::approve))
        .route("/api/v1/alerts/{id}/updates", post(api::update))
        .route("/api/v1/alerts/{id}/review", post(api::review))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            idempotency::layer,
        ));
    Router::new()
        .merge(lifecycle)
        .route("/api/v1/alerts", get(api::list_alerts))
        .route("/api/v1/alerts/{id}", get(api::alert_status))
        .route("/api/v1/alerts/{id}/outstanding", get(api::outstanding))
        .route("/api/v1/reviews", get(api::reviews))
        .route("/api/v1/alerts/{id}/pickup", get(api::pickup))
        .route("/api/v1/alerts/{id}/inbox", get(api::inbox))
        .route("/api/v1/reports/contactability", get(api::contactability))
        .route("/api/v1/audit", get(api::audit))
        .route("/a/{token}", get(pages::ack_page).post(pages::ack_submit))
        .route("/hooks/twilio/status", post(hooks::twilio_status))
        .route("/hooks/twilio/sms", post(hooks::twilio_sms))
        .route("/hooks/twilio/voice", post(hooks::twilio_voice))
        .route("/hooks/trigger/{source}", post(hook_trigger::trigger))
        .route("/hooks/sendgrid/events", post(hook_sendgrid::events))
        .route("/metrics", get(api::metrics))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/login", get(session::login_form).post(session::login))
        .route("/logout", post(session::logout))
        .route("/auth/login", get(oidc::login))
        .route(oidc::CALLBACK_PATH, get(oidc::callback))
        .merge(console::routes())
        .with_state(state)
        .layer(axum::middleware::from_fn(origin::layer))
}

/// An error answered as `{"error": "..."}` with a status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound(what) => {
                ApiError::new(StatusCode::NOT_FOUND, format!("{what} not found"))
            }
            StoreError::Conflict(msg) => ApiError::new(StatusCode::CONFLICT, msg),
            other => {
                tracing::error!(error = %other, "Store error while serving a request.");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the daemon's log",
                )
            }
        }
    }
}

/// The bearer token from `Authorization`. Only that: a cookie never
/// authorises the API, so a cross-site form post carries no authority.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
}

/// Checks the caller's token and role. 401 without a valid token, 403 when
/// the role is too low; nothing is read or changed before this passes.
pub async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    min: ApiRole,
) -> Result<Caller, ApiError> {
    let Some(token) = presented_token(headers) else {
        state
            .metrics
            .inc("klaxon_http_auth_failures_total", &[("reason", "missing")]);
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing bearer token",
        ));
    };
    let used = token.clone();
    let caller = state.store.read(move |c| tokens::lookup(c, &token)).await?;
    match caller {
        None => {
            state
                .metrics
                .inc("klaxon_http_auth_failures_total", &[("reason", "invalid")]);
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid or revoked token",
            ))
        }
        Some(c) if c.role < min => {
            state
                .metrics
                .inc("klaxon_http_auth_failures_total", &[("reason", "role")]);
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "a {} token cannot do this; it needs {}",
                    c.role.as_str(),
                    min.as_str()
                ),
            ))
        }
        Some(c) => {
            token_use::note(state, used);
            Ok(c)
        }
    }
}

pub use crate::markup::escape;

/// An HTML response that no cache or referrer keeps: pages carry names and
/// capability links.
pub fn html_page(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
        ],
        body,
    )
        .into_response()
}

/// Shared page chrome: mobile-first, readable, high contrast, no JavaScript.
pub fn layout(lang: &str, title: &str, refresh: Option<u32>, body: &str) -> String {
    let refresh = refresh
        .map(|s| format!("<meta http-equiv=\"refresh\" content=\"{s}\">"))
        .unwrap_or_default();
    format!(
        r#"<!doctype html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
{refresh}
<title>{title}</title>
<style>
body{{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;font-size:1.125rem;line-height:1.5;color:#111;background:#fff;margin:0 auto;max-width:46rem;padding:1rem}}
h1{{font-size:1.5rem;line-height:1.25}}
.banner{{background:#8a0000;color:#fff;padding:.75rem 1rem;border-radius:.375rem;font-weight:700}}
.drill{{background:#5c3b00}}
.ok{{background:#e7f4e4;border:2px solid #1e6b1e;padding:.75rem 1rem;border-radius:.375rem}}
.warn{{background:#fff4e0;border:2px solid #8a5300;padding:.75rem 1rem;border-radius:.375rem}}
fieldset{{border:2px solid #444;border-radius:.375rem;padding:.5rem 1rem 1rem}}
legend{{font-weight:700;padding:0 .25rem}}
label{{display:block;padding:.5rem 0;min-height:44px}}
input[type=radio]{{width:1.5rem;height:1.5rem;vertical-align:middle;margin-right:.5rem}}
button{{font-size:1.125rem;min-height:48px;padding:.5rem 1.5rem;margin-top:1rem;background:#0b4f9c;color:#fff;border:0;border-radius:.375rem;cursor:pointer}}
button:focus,input:focus,a:focus{{outline:3px solid #f5a700;outline-offset:2px}}
table{{border-collapse:collapse;width:100%;font-size:1rem}}
th,td{{text-align:left;padding:.375rem .5rem;border-bottom:1px solid #bbb}}
a{{color:#0b4f9c}}
.muted{{color:#444}}
</style>
</head>
<body>
<main>
{body}
</main>
</body>
</html>
"#,
        lang = escape(lang),
        title = escape(title),
    )
}
