//! Scope checks for `/api/v1`: a token limited to schools sees and acts on
//! only the alerts whose audience lies within them. An alert whose audience
//! names no school is district-wide and needs a district token. Follow-ups
//! (all-clears, updates) carry their original's audience, so they are
//! judged the same way.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};

use super::{ApiError, authorize};
use crate::app::AppState;
use crate::domain::AlertId;
use crate::store::alerts::{self, AlertRow};
use crate::store::tokens::{ApiRole, Caller};

/// The schools an audience (as stored, or as posted) names.
pub fn schools_of(audience: &serde_json::Value) -> Vec<String> {
    audience["schools"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// 403 unless the caller's scope covers `schools` (none: the district).
pub fn check_schools(
    state: &AppState,
    caller: &Caller,
    schools: &[String],
) -> Result<(), ApiError> {
    if caller.scope.allows_schools(schools) {
        return Ok(());
    }
    state
        .metrics
        .inc("klaxon_http_auth_failures_total", &[("reason", "scope")]);
    let what = if schools.is_empty() {
        "the whole district".to_string()
    } else {
        format!("school(s) {}", schools.join(", "))
    };
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "this concerns {what}; the token `{}` may act for {} only",
            caller.name, caller.scope
        ),
    ))
}

/// Loads alert `id` (404 when there is none) and checks it is in scope.
pub async fn check_alert(state: &AppState, caller: &Caller, id: i64) -> Result<(), ApiError> {
    if caller.scope.is_district() {
        return Ok(());
    }
    let alert = state
        .store
        .read(move |c| alerts::get(c, AlertId(id)))
        .await?;
    check_schools(state, caller, &schools_of(&alert.audience))
}

/// The create handler's gate: an operator token whose scope covers the
/// posted audience. A body that is not JSON is left to the handler, which
/// names the field; an audience without schools needs the district.
pub async fn authorize_create(
    state: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Caller, ApiError> {
    let caller = authorize(state, headers, ApiRole::Operator).await?;
    if !caller.scope.is_district() {
        let posted: serde_json::Value =
            serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
        check_schools(state, &caller, &schools_of(&posted["audience"]))?;
    }
    Ok(caller)
}

/// Keeps only the alerts the caller may see.
pub fn retain_in_scope(caller: &Caller, rows: &mut Vec<AlertRow>) {
    if !caller.scope.is_district() {
        rows.retain(|a| caller.scope.allows_schools(&schools_of(&a.audience)));
    }
}
