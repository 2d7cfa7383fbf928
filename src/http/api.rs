//! The JSON API under `/api/v1`, plus metrics and health. Handlers check
//! the caller, parse, call the lifecycle owners (`trigger`, `store` reads)
//! and translate the answer; no SQL and no state rules here.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{ApiError, authorize};
use crate::app::AppState;
use crate::domain::{AlertId, AlertState, Channel};
use crate::store::alerts::{self, AlertStatus};
use crate::store::tokens::ApiRole;
use crate::store::{audit, deliveries, replies};
use crate::trigger::{self, TriggerError, TriggerRequest, rfc3339};

impl From<TriggerError> for ApiError {
    fn from(e: TriggerError) -> ApiError {
        match e {
            TriggerError::UnknownPlaybook(..) | TriggerError::BadRequest(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
            }
            TriggerError::Forbidden(_) => ApiError::new(StatusCode::FORBIDDEN, e.to_string()),
            TriggerError::Conflict(_) | TriggerError::Duplicate(_) => {
                ApiError::new(StatusCode::CONFLICT, e.to_string())
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
    serde_json::from_slice(body).map_err(|e| {
        // Well-formed JSON naming a value klaxon does not know (a role such
        // as "teacher") is a request it understood and cannot act on: 422,
        // like a school or grade the SIS lacks. Bad JSON or an unknown
        // field stays 400.
        let status = if e.classify() == serde_json::error::Category::Data
            && e.to_string().starts_with("unknown variant")
        {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(status, format!("request body: {e}"))
    })
}

pub async fn create_alert(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = super::scope::authorize_create(&state, &headers, &body).await?;
    let req: TriggerRequest = parse_json(&body)?;
    let created = trigger::create(&state.services, req, &caller.name, "api").await?;
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
    let caller = authorize(&state, &headers, ApiRole::Viewer).await?;
    let limit = q.limit.unwrap_or(20).clamp(1, 500);
    let mut rows = state.store.read(move |c| alerts::recent(c, limit)).await?;
    super::scope::retain_in_scope(&caller, &mut rows);
    Ok(Json(rows))
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
    /// Seconds from release to the last hand-over of a first delivery.
    pub handover_seconds: Option<f64>,
}

pub async fn status_view(state: &AppState, id: i64) -> Result<StatusView, ApiError> {
    let status = state
        .store
        .read(move |c| alerts::status(c, AlertId(id)))
        .await?;
    Ok(view_of(state, status))
}

/// A status as the API and the console show it, with the estimate of the
/// time left at the configured rates.
pub fn view_of(state: &AppState, status: alerts::AlertStatus) -> StatusView {
    let eta_seconds = if status.alert.state == AlertState::Sending {
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
    let handover_seconds = match (status.alert.released_at, status.alert.handed_over_at) {
        (Some(r), Some(l)) => Some((l - r) as f64 / 1000.0),
        _ => None,
    };
    StatusView {
        deadline: status.alert.notify_deadline.map(rfc3339),
        ack_deadline_at: status.alert.ack_deadline.map(rfc3339),
        eta_seconds,
        handover_seconds,
        status,
    }
}

pub async fn alert_status(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<StatusView>, ApiError> {
    let caller = authorize(&state, &headers, ApiRole::Viewer).await?;
    super::scope::check_alert(&state, &caller, id).await?;
    Ok(Json(status_view(&state, id).await?))
}

#[derive(Deserialize)]
pub struct PageQuery {
    limit: Option<i64>,
    /// Keyset pagination: the last id (or student id) of the previous page.
    after: Option<String>,
}

pub async fn outstanding(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Vec<alerts::Outstanding>>, ApiError> {
    let caller = authorize(&state, &headers, ApiRole::Viewer).await?;
    super::scope::check_alert(&state, &caller, id).await?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 100_000);
    let after = q.after.and_then(|a| a.parse().ok()).unwrap_or(0);
    let id = AlertId(id);
    state.store.read(move |c| alerts::get(c, id)).await?;
    Ok(Json(
        state
            .store
            .read(move |c| alerts::outstanding(c, id, after, limit))
            .await?,
    ))
}

/// The pickup plan per student, a page at a time (`?after=<student id>`),
/// as JSON or, with `Accept: text/csv`, as CSV. A `Link: <…>; rel="next"`
/// header points at the next page when there is one.
pub async fn pickup(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let caller = authorize(&state, &headers, ApiRole::Viewer).await?;
    super::scope::check_alert(&state, &caller, id).await?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let after = q.after.unwrap_or_default();
    let aid = AlertId(id);
    state.store.read(move |c| alerts::get(c, aid)).await?;
    let plan = state
        .store
        .read(move |c| alerts::pickup_plan(c, aid, &after, limit))
        .await?;
    let next = (plan.len() as i64 == limit)
        .then(|| plan.last().map(|p| p.student_id.clone()))
        .flatten()
        .map(|last| {
            format!(
                "</api/v1/alerts/{id}/pickup?limit={limit}&after={}>; rel=\"next\"",
                url_escape(&last)
            )
        });
    let csv = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/csv"));
    let mut resp = if csv {
        let mut w = csv::Writer::from_writer(Vec::new());
        let _ = w.write_record([
            "student_id",
            "student",
            "school",
            "grade",
            "conflict",
            "guardian_id",
            "guardian",
            "choice",
            "answered_at",
            "via",
        ]);
        for p in &plan {
            let conflict = if p.conflict { "yes" } else { "no" };
            if p.answers.is_empty() {
                let _ = w.write_record([
                    &p.student_id,
                    &p.student,
                    &p.school,
                    &p.grade,
                    conflict,
                    "",
                    "",
                    "",
                    "",
                    "",
                ]);
            }
            for a in &p.answers {
                let _ = w.write_record([
                    p.student_id.as_str(),
                    &p.student,
                    &p.school,
                    &p.grade,
                    conflict,
                    &a.guardian_id,
                    &a.guardian,
                    &a.choice,
                    &rfc3339(a.at),
                    &a.via,
                ]);
            }
        }
        let body = w.into_inner().unwrap_or_default();
        (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response()
    } else {
        Json(plan).into_response()
    };
    if let Some(link) = next
        && let Ok(v) = header::HeaderValue::from_str(&link)
    {
        resp.headers_mut().insert(header::LINK, v);
    }
    Ok(resp)
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Deserialize)]
pub struct InboxQuery {
    limit: Option<i64>,
    before: Option<i64>,
}

/// Messages from recipients that were not confirmations, newest first.
pub async fn inbox(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Query<InboxQuery>,
) -> Result<Json<Vec<replies::InboxEntry>>, ApiError> {
    let caller = authorize(&state, &headers, ApiRole::Viewer).await?;
    super::scope::check_alert(&state, &caller, id).await?;
    let limit = q.limit.unwrap_or(200).clamp(1, 10_000);
    let before = q.before.unwrap_or(i64::MAX);
    let aid = AlertId(id);
    state.store.read(move |c| alerts::get(c, aid)).await?;
    Ok(Json(
        state
            .store
            .read(move |c| replies::inbox(c, aid, before, limit))
            .await?,
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FollowUp {
    /// One text, or one per language.
    #[serde(default)]
    message: Option<crate::domain::text::MessageText>,
}

pub async fn all_clear(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = authorize(&state, &headers, ApiRole::Operator).await?;
    super::scope::check_alert(&state, &caller, id).await?;
    let f: FollowUp = parse_json(&body)?;
    let created = trigger::all_clear(&state.services, AlertId(id), f.message, &caller.name).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

pub async fn update(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = authorize(&state, &headers, ApiRole::Operator).await?;
    super::scope::check_alert(&state, &caller, id).await?;
    let f: FollowUp = parse_json(&body)?;
    let message = f.message.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "an update needs a `message`: what has changed?",
        )
    })?;
    let created = trigger::update(&state.services, AlertId(id), message, &caller.name).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

pub async fn cancel(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = authorize(&state, &headers, ApiRole::Operator).await?;
    super::scope::check_alert(&state, &caller, id).await?;
    let unsent = trigger::cancel(&state, AlertId(id), &caller.name).await?;
    Ok(Json(serde_json::json!({
        "id": id, "state": "closed", "closed_reason": "cancelled", "cancelled": true, "unsent": unsent
    })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Approve {
    /// The operator who triggered a two-person alert sends it anyway: why.
    #[serde(default)]
    override_reason: Option<String>,
}

pub async fn approve(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Bytes,
) -> Result<Json<StatusView>, ApiError> {
    let caller = authorize(&state, &headers, ApiRole::Operator).await?;
    super::scope::check_alert(&state, &caller, id).await?;
    let a: Approve = parse_json(&body)?;
    trigger::approve(&state, AlertId(id), &caller.name, a.override_reason).await?;
    Ok(Json(status_view(&state, id).await?))
}

/// Alerts sent with an emergency override, waiting for a second person's review.
pub async fn reviews(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Vec<alerts::AlertRow>>, ApiError> {
    let caller = authorize(&state, &headers, ApiRole::Viewer).await?;
    let mut rows = state.store.read(alerts::to_review).await?;
    super::scope::retain_in_scope(&caller, &mut rows);
    Ok(Json(rows))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Review {
    #[serde(default)]
    note: String,
}

/// A second operator reviews an override after the fact.
pub async fn review(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: Bytes,
) -> Result<Json<alerts::AlertRow>, ApiError> {
    let caller = authorize(&state, &headers, ApiRole::Operator).await?;
    super::scope::check_alert(&state, &caller, id).await?;
    let r: Review = parse_json(&body)?;
    Ok(Json(
        trigger::review(&state, AlertId(id), &caller.name, &r.note).await?,
    ))
}

pub async fn contactability(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Vec<deliveries::ContactProblem>>, ApiError> {
    let caller = authorize(&state, &headers, ApiRole::Viewer).await?;
    super::scope::check_schools(&state, &caller, &[])?;
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

/// OpenMetrics when the scraper asks for it, the classic text format otherwise.
pub async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let open_metrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let depth = state
        .store
        .read(deliveries::queue_depth)
        .await
        .unwrap_or_default();
    let open = state
        .store
        .read(alerts::open_counts)
        .await
        .unwrap_or_default();
    let started = state.started_at;
    let out = state.metrics.render(|m| {
        for (ch, st, n) in &depth {
            m.set_gauge(
                "klaxon_outbox_deliveries",
                &[("channel", ch), ("state", st)],
                *n as f64,
            );
        }
        for (st, drill, n) in &open {
            m.set_gauge(
                "klaxon_open_alerts",
                &[
                    ("state", st),
                    ("drill", if *drill { "true" } else { "false" }),
                ],
                *n as f64,
            );
        }
        m.set_gauge("klaxon_start_time_seconds", &[], (started / 1000) as f64);
    });
    if open_metrics {
        ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], out).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, crate::metrics::TEXT_CONTENT_TYPE)],
            crate::metrics::to_prometheus_text(&out),
        )
            .into_response()
    }
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

/// Ready when the store answers and a SIS copy exists to resolve audiences;
/// a background task that panicked recently is reported (it was restarted).
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let store_ok = state
        .store
        .read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
        .await
        .is_ok();
    let sis_ok = crate::sis::current_path(&state.config.store_dir()).exists();
    let panics = state.tasks.recent_panics(state.now_ms());
    // CAP feeds failing for more than three intervals.
    let feeds_failing = crate::trigger::feed::failing(&state);
    // A sentence for the operator who reads the probe's answer.
    let reason = match (store_ok, sis_ok) {
        (true, true) => None,
        (false, _) => Some("the store cannot be read; see the daemon's log"),
        (true, false) => Some(
            "there is no SIS copy (sis.db is missing); alerts are refused until `klaxon sis import` runs",
        ),
    };
    let mut body = serde_json::json!({
        "store": store_ok, "sis": sis_ok, "reason": reason,
        "degraded": !panics.is_empty(),
        "tasks_restarted_recently": panics,
        "feeds_failing": feeds_failing,
    });
    // A refused or stale SIS sync, or a task restarted: degraded, still serving.
    sis_degraded(&state, &mut body).await;
    if !panics.is_empty() {
        body["degraded"] = true.into();
    }
    let status = if store_ok && sis_ok && feeds_failing.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
