//! `Idempotency-Key` on the API's POSTs: a repeat of a request (same
//! caller, route, key and body) gets the first answer, whatever happened
//! since; the same key with another body is refused (422); a repeat while
//! the first is still running is told so (409). Server errors are not kept,
//! so a retry after one runs again. Requests without the header pass through.

use std::sync::Arc;

use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::ApiError;
use crate::app::AppState;
use crate::domain::text::hex;
use crate::store::idempotency::{self, Slot};

/// Longest key accepted (the IETF draft's keys are UUIDs).
const MAX_KEY: usize = 255;

/// Largest request or answer body handled here; the API's bodies are small.
const MAX_BODY: usize = 1 << 20;

pub async fn layer(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(raw) = req.headers().get("idempotency-key") else {
        return next.run(req).await;
    };
    let key = match raw.to_str() {
        Ok(k) if !k.trim().is_empty() && k.len() <= MAX_KEY => k.trim().to_string(),
        _ => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("Idempotency-Key must be 1 to {MAX_KEY} visible characters"),
            )
            .into_response();
        }
    };
    let route = format!("{} {}", req.method(), req.uri().path());
    // Keys are per caller: the credentials presented, hashed.
    let who = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    let (parts, body) = req.into_parts();
    let body: Bytes = match to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
                .into_response();
        }
    };
    let slot_key = hex(&Sha256::new()
        .chain_update(&who)
        .chain_update([0])
        .chain_update(route.as_bytes())
        .chain_update([0])
        .chain_update(key.as_bytes())
        .finalize());
    let fingerprint = hex(&Sha256::new()
        .chain_update(route.as_bytes())
        .chain_update([0])
        .chain_update(&body)
        .finalize());
    let now = state.now_ms();
    let (k, f) = (slot_key.clone(), fingerprint);
    let slot = match state
        .store
        .write(move |c| idempotency::begin(c, &k, &f, now))
        .await
    {
        Ok(s) => s,
        Err(e) => return ApiError::from(e).into_response(),
    };
    match slot {
        Slot::Done {
            status,
            content_type,
            body,
        } => {
            state.metrics.inc(
                "klaxon_idempotent_replays_total",
                &[("outcome", "replayed")],
            );
            let mut resp = Response::new(Body::from(body));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            if let Ok(v) = HeaderValue::from_str(&content_type) {
                resp.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            resp.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return resp;
        }
        Slot::Running => {
            return ApiError::new(
                StatusCode::CONFLICT,
                "a request with this Idempotency-Key is still running; retry in a moment",
            )
            .into_response();
        }
        Slot::Mismatch => {
            state.metrics.inc(
                "klaxon_idempotent_replays_total",
                &[("outcome", "mismatch")],
            );
            return ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "this Idempotency-Key was used with another request body; use a new key for a new request",
            )
            .into_response();
        }
        Slot::Taken => {}
    }
    let resp = next.run(Request::from_parts(parts, Body::from(body))).await;
    let (parts, body) = resp.into_parts();
    let body = to_bytes(body, MAX_BODY).await.unwrap_or_default();
    let status = parts.status;
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let (k, b) = (slot_key, body.clone());
    let kept = if status.is_server_error() {
        state
            .store
            .write(move |c| idempotency::release(c, &k))
            .await
    } else {
        state
            .store
            .write(move |c| idempotency::finish(c, &k, status.as_u16(), &content_type, &b))
            .await
    };
    if let Err(e) = kept {
        tracing::warn!(error = %e, "Could not keep the answer for an Idempotency-Key.");
    }
    Response::from_parts(parts, Body::from(body))
}
