//! The JSON API under `/api/v1`, plus metrics and health.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{ApiError, authorize};
use crate::app::AppState;
use crate::domain::Channel;
use crate::store::alerts::{self, AlertStatus};
use crate::store::tokens::ApiRole;
use crate::store::{audit, deliveries, now_ms};
use crate::trigger::{self, TriggerError, TriggerRequest, rfc3339};

impl From<TriggerError> for ApiError {
    fn from(e: TriggerError) -> ApiError {
        match e {
            TriggerError::UnknownPlaybook(..) | TriggerError::BadRequest(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
            }
            TriggerError::Audience(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            TriggerError::Store(s) => s.into(),
        }
    }
}

/// Parses a JSON body ourselves so a malformed one gets a sentence naming
/// the field, not axum's generic rejection.
fn parse_json<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    if body.is_empty() {
        return serde_json::from_slice(b"{}")
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("request body: {e}")));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("request body: {e}")))
}

pub async fn create_alert(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = authorize(&state, &headers, ApiRole::Operator).await?;
    let req: TriggerRequest = parse_json(&body)?;
    let created = trigger::create(&state, req, &caller.name, "api").await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<i64>,
}

pub async fn list_alerts(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<alerts::AlertRow>>, ApiError> {
    authorize(&state, &headers, ApiRole::Viewer).await?;
    let limit = q.limit.unwrap_or(20).clamp(1, 500);
    Ok(Json(
        state.store.read(move |c| alerts::recent(c, limit)).await?,
    ))
}

/// Status with the times people read and an estimate of completion.
#[derive(Serialize)]
pub struct StatusView {
    #[serde(flatten)]
    pub status: AlertStatus,
    pub deadline: Option<String>,
    pub ack_deadline_at: Option<String>,
    /// Seconds until everything still queued is handed over, at the configured rates.
    pub eta_seconds: Option<f64>,
    /// Seconds from release to the last hand-over.
    pub handover_seconds: Option<f64>,
}

pub async fn status_view(state: &AppState, id: i64) -> Result<StatusView, ApiError> {
    let now = now_ms();
    let status = state
        .store
        .read(move |c| alerts::status(c, id, now))
        .await?;
    let eta_seconds = if status.alert.settled_at.is_none() && status.alert.state == "sending" {
        let mut worst: f64 = 0.0;
        for (ch, states) in &status.channels {
            let left: i64 = ["queued", "sending"]
                .iter()
                .filter_map(|s| states.get(*s))
                .sum();
            if let Some(ch) = Channel::parse(ch) {
                let rate = state.engine.channel_rate(ch);
                if rate > 0.0 {
                    worst = worst.max(left as f64 / rate);
                }
            }
        }
        Some(worst)
    } else {
        None
    };
    let handover_seconds = match (status.alert.released_at, status.last_handover_at) {
        (Some(r), Some(l)) if status.alert.settled_at.is_some() => Some((l - r) as f64 / 1000.0),
        _ => None,
    };
    Ok(StatusView {
        deadline: status.alert.notify_deadline.map(rfc3339),
        ack_deadline_at: status.alert.ack_deadline.map(rfc3339),
        eta_seconds,
        handover_seconds,
        status,
    })
}

pub async fn alert_status(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<StatusView>, ApiError> {
    authorize(&state, &headers, ApiRole::Viewer).await?;
    Ok(Json(status_view(&state, id).await?))
}

pub async fn outstanding(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<alerts::Outstanding>>, ApiError> {
    authorize(&state, &headers, ApiRole::Viewer).await?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 100_000);
    state.store.read(move |c| alerts::get(c, id)).await?;
    Ok(Json(
        state
            .store
            .read(move |c| alerts::outstanding(c, id, limit))
            .await?,
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FollowUp {
    #[serde(default)]
    message: Option<String>,
}

pub async fn all_clear(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = authorize(&state, &headers, ApiRole::Operator).await?;
    let f: FollowUp = parse_json(&body)?;
    let created = trigger::all_clear(&state, id, f.message, &caller.name).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

pub async fn cancel(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = authorize(&state, &headers, ApiRole::Operator).await?;
    let now = now_ms();
    let unsent = state
        .store
        .write(move |c| alerts::cancel(c, id, now, &caller.name))
        .await?;
    tracing::info!(alert = id, unsent, "Alert cancelled.");
    Ok(Json(
        serde_json::json!({ "id": id, "state": "cancelled", "unsent": unsent }),
    ))
}

pub async fn approve(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<StatusView>, ApiError> {
    let caller = authorize(&state, &headers, ApiRole::Operator).await?;
    let alert = state.store.read(move |c| alerts::get(c, id)).await?;
    let pb = state.config.playbooks.get(&alert.playbook).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!("playbook `{}` is no longer configured", alert.playbook),
        )
    })?;
    let (notify, ack) = (
        pb.notify_within.0.as_millis() as i64,
        pb.ack_within.0.as_millis() as i64,
    );
    let now = now_ms();
    state
        .store
        .write(move |c| alerts::release(c, id, now, &caller.name, notify, ack))
        .await?;
    state.engine.kick();
    state.tracker.notify_one();
    tracing::info!(alert = id, "Held alert approved and released.");
    Ok(Json(status_view(&state, id).await?))
}

pub async fn contactability(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Vec<deliveries::ContactProblem>>, ApiError> {
    authorize(&state, &headers, ApiRole::Viewer).await?;
    Ok(Json(state.store.read(deliveries::contactability).await?))
}

pub async fn audit(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<audit::AuditEntry>>, ApiError> {
    authorize(&state, &headers, ApiRole::Admin).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    Ok(Json(
        state.store.read(move |c| audit::recent(c, limit)).await?,
    ))
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut out = String::new();
    state.metrics.render(&mut out);
    out.push_str("# HELP klaxon_outbox_deliveries Deliveries queued or in flight, by channel and state.\n# TYPE klaxon_outbox_deliveries gauge\n");
    if let Ok(rows) = state.store.read(deliveries::queue_depth).await {
        for (ch, st, n) in rows {
            out.push_str(&format!(
                "klaxon_outbox_deliveries{{channel=\"{ch}\",state=\"{st}\"}} {n}\n"
            ));
        }
    }
    out.push_str(&format!(
        "# HELP klaxon_start_time_seconds When the daemon started.\n# TYPE klaxon_start_time_seconds gauge\nklaxon_start_time_seconds {}\n",
        state.started_at / 1000
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Adds `degraded` (true/false) and `problems` (sentences) to the readiness
/// answer: a refused or failed SIS sync, or a copy older than `[sis]
/// max_age`. Still 200: alerts go out on the copy there is.
async fn sis_degraded(state: &AppState, body: &mut serde_json::Value) {
    let problems = crate::sis::sync::problems(
        &state.store,
        &state.config.store_dir(),
        state.config.sis.max_age,
        jiff::Timestamp::now(),
    )
    .await;
    body["degraded"] = (!problems.is_empty()).into();
    body["problems"] = problems
        .into_iter()
        .map(|(_, s)| s)
        .collect::<Vec<_>>()
        .into();
}

/// Ready when the store answers and a SIS copy exists to resolve audiences.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let store_ok = state
        .store
        .read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
        .await
        .is_ok();
    let sis_ok = crate::sis::current_path(&state.config.store_dir()).exists();
    let mut body = serde_json::json!({ "store": store_ok, "sis": sis_ok });
    sis_degraded(&state, &mut body).await;
    let status = if store_ok && sis_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
