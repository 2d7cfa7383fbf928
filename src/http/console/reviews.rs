//! The review list: alerts sent without the second approval they needed
//! (an emergency override), each waiting for a second person to read the
//! reason and mark it reviewed. The same data as `/api/v1/reviews`, within
//! the operator's scope; the review itself is `trigger::review`, which
//! refuses the one who sent the alert.

use std::fmt::Write;
use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};

use super::act::{Fields, field, forbidden, see_other, status_of};
use super::{error_page, escape, page, time};
use crate::app::AppState;
use crate::domain::AlertId;
use crate::http::scope::schools_of;
use crate::http::session::{Operator, check_csrf, csrf_input};
use crate::store::alerts;
use crate::store::tokens::ApiRole;
use crate::trigger;

pub async fn list(op: Operator, State(state): State<Arc<AppState>>) -> Response {
    let mut rows = match state.store.read(alerts::to_review).await {
        Ok(r) => r,
        Err(e) => return crate::http::ApiError::from(e).into_response(),
    };
    rows.retain(|a| op.scope.allows_schools(&schools_of(&a.audience)));
    let mut b = String::from(
        "<h1>Alerts to review</h1>\
<p>These alerts were sent without the second approval they needed (an emergency override). \
A second person, not the one who sent it, reads the reason and marks each one reviewed; the review is audited.</p>",
    );
    if rows.is_empty() {
        b.push_str("<p>Nothing waits for review.</p>");
        return page(&state, Some(&op), "Alerts to review", &b);
    }
    b.push_str(
        "<div class=\"scroll\" tabindex=\"0\"><table><thead><tr><th scope=\"col\">Alert</th><th scope=\"col\">Sent by</th>\
<th scope=\"col\">Sent</th><th scope=\"col\">Reason</th><th scope=\"col\">Review</th></tr></thead><tbody>",
    );
    for a in &rows {
        let sender = a.approved_by.as_deref().unwrap_or(&a.created_by);
        let own = trigger::same_person(&a.created_by, &op.actor)
            || trigger::same_person(sender, &op.actor);
        let action = if op.role < ApiRole::Operator {
            "An operator reviews it.".to_string()
        } else if own {
            "You sent it: another person reviews it.".to_string()
        } else {
            format!(
                "<form method=\"post\" action=\"/alerts/{id}/review\">{csrf}\
<label for=\"note-{id}\">Note (optional)</label><input id=\"note-{id}\" name=\"note\" maxlength=\"500\">\
<p><button type=\"submit\">Mark #{id} reviewed</button></p></form>",
                id = a.id,
                csrf = csrf_input(&op)
            )
        };
        let _ = write!(
            b,
            "<tr><td><a href=\"/alerts/{id}\">#{id} {drill}{title}: {place}</a></td><td>{by}</td><td>{at}</td>\
<td>{reason}</td><td>{action}</td></tr>",
            id = a.id,
            drill = if a.drill { "DRILL " } else { "" },
            title = escape(&a.title),
            place = escape(&a.place),
            by = escape(sender),
            at = escape(&time(&state, a.released_at.or(Some(a.created_at)))),
            reason = escape(a.override_reason.as_deref().unwrap_or("")),
        );
    }
    b.push_str("</tbody></table></div>");
    page(&state, Some(&op), "Alerts to review", &b)
}

pub async fn review(
    op: Operator,
    State(state): State<Arc<AppState>>,
    Path(id): Path<i64>,
    Form(f): Form<Fields>,
) -> Response {
    if let Err(r) = super::in_scope(&state, &op, id).await {
        return r;
    }
    if let Err(r) = check_csrf(&op, field(&f, "csrf")) {
        return r;
    }
    if op.role < ApiRole::Operator {
        return forbidden(&state);
    }
    match trigger::review(&state, AlertId(id), &op.actor, field(&f, "note")).await {
        Ok(_) => see_other("/reviews"),
        Err(e) => {
            if matches!(e, trigger::TriggerError::Store(_)) {
                tracing::error!(alert = id, error = %e, "A console review failed.");
            }
            error_page(
                &state,
                status_of(&e),
                &format!("The review was not recorded: {e}"),
            )
        }
    }
}
