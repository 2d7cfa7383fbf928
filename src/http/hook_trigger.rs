//! `POST /hooks/trigger/{source}`: signed triggers from panic buttons and
//! other systems. The body is a small JSON trigger or a CAP document, signed
//! with HMAC-SHA256 under the source's secret over `timestamp + "." + body`:
//!
//! ```text
//! X-Klaxon-Timestamp: 1763870400          (Unix seconds)
//! X-Klaxon-Signature: sha256=<hex of HMAC-SHA256(secret, "1763870400." + body)>
//! ```
//!
//! Refused, with nothing recorded and a counter in `/metrics`: an unknown
//! source (404), a missing or wrong signature (401), a timestamp more than
//! five minutes away (401), a signature seen before (401, replay; kept in the
//! store, so a restart does not reopen the window), a playbook the source may
//! not start or a CAP body from a source not allowed to send one (403).

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::ApiError;
use crate::app::AppState;
use crate::audience::AudienceSpec;
use crate::config::{Issues, relative_to, resolve_secret};
use crate::store::now_ms;

/// How far a request's timestamp may be from now.
pub const MAX_SKEW_SECS: i64 = 300;

/// One `[webhooks.NAME]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The shared secret: an environment variable or a file, never the TOML.
    pub secret_env: Option<String>,
    pub secret_file: Option<PathBuf>,
    /// Playbooks this source may start with a JSON trigger.
    pub playbooks: Vec<String>,
    /// Accept CAP documents (they go through `[[rules]]` like a feed's).
    #[serde(default)]
    pub accept_cap: bool,
}

/// Checks `[webhooks]`; each issue names its key.
pub fn validate(
    hooks: &std::collections::BTreeMap<String, WebhookConfig>,
    playbooks: &std::collections::BTreeMap<String, crate::playbook::PlaybookConfig>,
    issues: &mut Issues,
) {
    for (name, h) in hooks {
        let p = format!("webhooks.{name}");
        if h.secret_env.is_none() && h.secret_file.is_none() {
            issues.push(
                format!("{p}.secret_env"),
                "set `secret_env` (an environment variable) or `secret_file` (a file) with the shared secret",
            );
        }
        if h.playbooks.is_empty() && !h.accept_cap {
            issues.push(
                format!("{p}.playbooks"),
                "list the playbooks this source may start (or set accept_cap = true)",
            );
        }
        for pb in &h.playbooks {
            if !playbooks.contains_key(pb) {
                issues.push(
                    format!("{p}.playbooks"),
                    format!(
                        "unknown playbook `{pb}`; configured playbooks: {}",
                        playbooks.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                );
            }
        }
    }
}

/// Reads every webhook secret, as `check-config` does for providers, so a
/// missing one is found before a panic button is pressed.
pub fn check_secrets(config: &crate::config::Config) -> Vec<crate::config::ConfigIssue> {
    let mut issues = Issues::default();
    for (name, h) in &config.webhooks {
        let file = h
            .secret_file
            .as_ref()
            .map(|f| relative_to(&config.base_dir, f));
        resolve_secret(
            &format!("webhooks.{name}"),
            "secret",
            h.secret_env.as_deref(),
            file.as_deref(),
            true,
            &mut issues,
        );
    }
    issues.list
}

/// A JSON trigger body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonTrigger {
    playbook: String,
    #[serde(default)]
    audience: AudienceSpec,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    drill: bool,
}

fn refuse(
    state: &AppState,
    source: &str,
    reason: &'static str,
    status: StatusCode,
    msg: &str,
) -> ApiError {
    state.metrics.inc(
        "klaxon_webhook_refusals_total",
        &[("source", source), ("reason", reason)],
    );
    tracing::warn!(source, reason, "Webhook trigger refused.");
    ApiError::new(status, msg)
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

pub async fn trigger(
    State(state): State<Arc<AppState>>,
    Path(source): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(hook) = state.config.webhooks.get(&source).cloned() else {
        return Err(refuse(
            &state,
            "unknown",
            "unknown-source",
            StatusCode::NOT_FOUND,
            "unknown trigger source",
        ));
    };
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    let (Some(ts), Some(sig)) = (h("x-klaxon-timestamp"), h("x-klaxon-signature")) else {
        return Err(refuse(
            &state,
            &source,
            "unsigned",
            StatusCode::UNAUTHORIZED,
            "X-Klaxon-Timestamp and X-Klaxon-Signature are required",
        ));
    };
    let Ok(ts_secs) = ts.parse::<i64>() else {
        return Err(refuse(
            &state,
            &source,
            "bad-timestamp",
            StatusCode::UNAUTHORIZED,
            "X-Klaxon-Timestamp must be Unix seconds",
        ));
    };
    if (now_ms() / 1000 - ts_secs).abs() > MAX_SKEW_SECS {
        return Err(refuse(
            &state,
            &source,
            "stale",
            StatusCode::UNAUTHORIZED,
            "the timestamp is more than 5 minutes away from now",
        ));
    }
    let mut issues = Issues::default();
    let file = hook
        .secret_file
        .as_ref()
        .map(|f| relative_to(&state.config.base_dir, f));
    let Some(secret) = resolve_secret(
        &format!("webhooks.{source}"),
        "secret",
        hook.secret_env.as_deref(),
        file.as_deref(),
        true,
        &mut issues,
    ) else {
        tracing::error!(source, error = %issues.list.iter().map(|i| i.to_string()).collect::<Vec<_>>().join("; "), "Webhook secret cannot be read.");
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the source's secret cannot be read; see the daemon's log",
        ));
    };
    let Some(given) = sig.strip_prefix("sha256=").and_then(hex) else {
        return Err(refuse(
            &state,
            &source,
            "bad-signature",
            StatusCode::UNAUTHORIZED,
            "X-Klaxon-Signature must be sha256=<hex>",
        ));
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "bad secret"))?;
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(&body);
    // Constant time.
    if mac.verify_slice(&given).is_err() {
        return Err(refuse(
            &state,
            &source,
            "bad-signature",
            StatusCode::UNAUTHORIZED,
            "the signature does not match",
        ));
    }

    // Signed: now what is it, and may this source send it?
    let trimmed = body
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .copied()
        .collect::<Vec<u8>>();
    let json: Option<JsonTrigger> = if trimmed.first() == Some(&b'{') {
        match serde_json::from_slice::<serde_json::Value>(&trimmed) {
            Ok(v) if v.get("playbook").is_some() => {
                Some(serde_json::from_value(v).map_err(|e| {
                    ApiError::new(StatusCode::BAD_REQUEST, format!("request body: {e}"))
                })?)
            }
            Ok(_) => None,
            Err(e) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("request body: {e}"),
                ));
            }
        }
    } else {
        None
    };
    let doc = match &json {
        Some(j) => {
            if !hook.playbooks.contains(&j.playbook) {
                return Err(refuse(
                    &state,
                    &source,
                    "playbook-not-allowed",
                    StatusCode::FORBIDDEN,
                    &format!("source `{source}` may not start playbook `{}`", j.playbook),
                ));
            }
            None
        }
        None => {
            if !hook.accept_cap {
                return Err(refuse(
                    &state,
                    &source,
                    "cap-not-allowed",
                    StatusCode::FORBIDDEN,
                    &format!("source `{source}` may not send CAP documents (accept_cap = false)"),
                ));
            }
            Some(crate::cap::parse_document(&body).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("the CAP document cannot be read: {e}"),
                )
            })?)
        }
    };

    // Replay: the signature is recorded once; a second use is refused.
    let digest = sig.to_ascii_lowercase();
    let (src, now) = (source.clone(), now_ms());
    let fresh = state
        .store
        .write(move |c| {
            crate::store::cap::record_signature(c, &src, &digest, now, MAX_SKEW_SECS * 2 * 1000)
        })
        .await?;
    if !fresh {
        return Err(refuse(
            &state,
            &source,
            "replay",
            StatusCode::UNAUTHORIZED,
            "this signature was already used",
        ));
    }

    match (json, doc) {
        (Some(j), _) => {
            let created = crate::trigger::cap_act::webhook(
                &state, &source, j.playbook, j.audience, j.message, j.drill,
            )
            .await?;
            Ok((StatusCode::CREATED, Json(created)).into_response())
        }
        (None, Some(doc)) => {
            let mut handled = Vec::new();
            for alert in &doc.alerts {
                let h =
                    crate::trigger::cap_act::handle(&state, alert, &format!("webhook:{source}"))
                        .await?;
                handled.push(serde_json::json!({"identifier": alert.identifier, "outcome": h.outcome, "alert_id": h.alert_id, "detail": h.detail}));
            }
            Ok((
                StatusCode::OK,
                Json(serde_json::json!({"handled": handled, "skipped": doc.skipped.len()})),
            )
                .into_response())
        }
        (None, None) => Err(ApiError::new(StatusCode::BAD_REQUEST, "empty body")),
    }
}
