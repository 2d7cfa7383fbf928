//! The safety officer's dashboard: recent alerts, and per alert the live
//! progress against the deadline, who has not been reached or has not
//! confirmed, and each student's pickup plan. Server-rendered, refreshes
//! itself, no JavaScript. Needs a console session (`session::Operator`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::api::status_view;
use super::session::Operator;
use super::{escape, html_page, layout};
use crate::app::AppState;
use crate::domain::{AlertId, AlertState, DeliveryState};
use crate::store::alerts;

fn time(state: &AppState, ms: Option<i64>) -> String {
    let Some(ms) = ms else { return "—".into() };
    let tz =
        jiff::tz::TimeZone::get(&state.config.server.timezone).unwrap_or(jiff::tz::TimeZone::UTC);
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_zoned(tz).strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

pub async fn index(State(state): State<Arc<AppState>>, op: Operator) -> Response {
    let mut rows = match state.store.read(|c| alerts::recent(c, 50)).await {
        Ok(r) => r,
        Err(e) => return super::ApiError::from(e).into_response(),
    };
    rows.retain(|a| {
        op.scope
            .allows_schools(&super::scope::schools_of(&a.audience))
    });
    let mut b = super::session::logout_form(&op);
    b.push_str("<h1>klaxon — alerts</h1>");
    if rows.is_empty() {
        b.push_str("<p>No alerts yet.</p>");
    } else {
        b.push_str("<table><thead><tr><th scope=\"col\">#</th><th scope=\"col\">Alert</th><th scope=\"col\">Where</th><th scope=\"col\">State</th><th scope=\"col\">Created</th><th scope=\"col\">Recipients</th></tr></thead><tbody>");
        for a in rows {
            b.push_str(&format!(
                "<tr><td><a href=\"/alerts/{id}\">{id}</a></td><td>{drill}{title}</td><td>{place}</td><td>{state}</td><td>{at}</td><td>{n}</td></tr>",
                id = a.id,
                drill = if a.drill { "<strong>DRILL</strong> " } else { "" },
                title = escape(&a.title),
                place = escape(&a.place),
                state = escape(&state_label(&a)),
                at = escape(&time(&state, Some(a.created_at))),
                n = a.recipients,
            ));
        }
        b.push_str("</tbody></table>");
    }
    html_page(StatusCode::OK, layout("en", "klaxon alerts", Some(10), &b))
}

fn state_label(a: &alerts::AlertRow) -> String {
    match (a.state, a.closed_reason) {
        (AlertState::Closed, Some(r)) => format!("closed ({})", r.as_str()),
        (st, _) => st.as_str().to_string(),
    }
}

#[derive(serde::Deserialize)]
pub struct AlertQuery {
    /// Outstanding list: the last recipient id of the previous page.
    after: Option<i64>,
    /// Pickup plan: the last student id of the previous page.
    pickup_after: Option<String>,
}

/// Rows per page of the lists; every list says how many there are in all
/// and links to the next page, so nothing is cut silently.
const PAGE: i64 = 200;

pub async fn alert(
    State(state): State<Arc<AppState>>,
    op: Operator,
    Path(id): Path<i64>,
    Query(q): Query<AlertQuery>,
) -> Response {
    let view = match status_view(&state, id).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    if let Err(r) = op.require_schools(&super::scope::schools_of(&view.status.alert.audience)) {
        return r;
    }
    let aid = AlertId(id);
    let after = q.after.unwrap_or(0);
    let outstanding = state
        .store
        .read(move |c| alerts::outstanding(c, aid, after, PAGE))
        .await
        .unwrap_or_default();
    let s = &view.status;
    let a = &s.alert;
    let mut b = super::session::logout_form(&op);
    b.push_str("<p><a href=\"/\">← all alerts</a></p>");
    if a.drill {
        b.push_str("<p class=\"banner drill\">DRILL</p>");
    }
    b.push_str(&format!(
        "<h1>#{} {} — {}</h1>",
        a.id,
        escape(&a.title),
        escape(&a.place)
    ));
    if a.is_cancelled() {
        b.push_str("<p class=\"warn\"><strong>Cancelled.</strong> Nothing more of it is sent.</p>");
    }
    let verdict = match a.deadline_met {
        Some(true) => "<p class=\"ok\">Everyone reachable was handed to the providers within the notify deadline.</p>".to_string(),
        Some(false) => "<p class=\"warn\"><strong>The notify deadline was missed</strong> for first deliveries.</p>".to_string(),
        None => format!(
            "<p class=\"warn\">Sending. Estimated time to finish: {}.</p>",
            view.eta_seconds.map(|e| format!("{e:.0} s")).unwrap_or_else(|| "—".into())
        ),
    };
    b.push_str(&verdict);
    if let Some(w) = &a.warning {
        b.push_str(&format!("<p class=\"warn\">{}</p>", escape(w)));
    }
    let f = &s.figures;
    let spread = |x: &alerts::Spread| match (x.p50, x.p95, x.max) {
        (Some(p50), Some(p95), Some(max)) => {
            format!(
                "p50 {p50:.1} s · p95 {p95:.1} s · max {max:.1} s ({} in all)",
                x.count
            )
        }
        _ => "—".into(),
    };
    b.push_str(&format!(
        "<table><tbody>\
<tr><th scope=\"row\">State</th><td>{}</td></tr>\
<tr><th scope=\"row\">Created</th><td>{} by {}</td></tr>\
<tr><th scope=\"row\">Notify deadline</th><td>{}</td></tr>\
<tr><th scope=\"row\">Last hand-over (first deliveries)</th><td>{}</td></tr>\
<tr><th scope=\"row\">Confirm deadline</th><td>{}</td></tr>\
<tr><th scope=\"row\">Recipients</th><td>{} ({} with no usable address)</td></tr>\
<tr><th scope=\"row\">Reached</th><td>{} (delivered: {})</td></tr>\
<tr><th scope=\"row\">Confirmed</th><td>{}</td></tr>\
<tr><th scope=\"row\">Time to hand-over</th><td>{}</td></tr>\
<tr><th scope=\"row\">Time to delivery</th><td>{}</td></tr>\
<tr><th scope=\"row\">Time to confirmation</th><td>{}</td></tr>\
</tbody></table>",
        escape(&state_label(a)),
        escape(&time(&state, Some(a.created_at))),
        escape(&a.created_by),
        escape(&time(&state, a.notify_deadline)),
        escape(&time(&state, s.last_handover_at)),
        escape(&time(&state, a.ack_deadline)),
        a.recipients,
        a.unreachable,
        s.reached,
        s.delivered,
        s.acknowledged,
        escape(&spread(&f.handover)),
        escape(&spread(&f.delivery)),
        escape(&spread(&f.confirmation)),
    ));
    b.push_str("<h2>First deliveries</h2><table><thead><tr><th scope=\"col\">Channel</th>");
    let states = DeliveryState::ALL;
    for st in states {
        b.push_str(&format!("<th scope=\"col\">{st}</th>"));
    }
    b.push_str("</tr></thead><tbody>");
    for (ch, counts) in &s.channels {
        b.push_str(&format!("<tr><th scope=\"row\">{}</th>", escape(ch)));
        for st in states {
            b.push_str(&format!(
                "<td>{}</td>",
                counts.get(st.as_str()).copied().unwrap_or(0)
            ));
        }
        b.push_str("</tr>");
    }
    b.push_str("</tbody></table>");
    let e = &s.escalation;
    b.push_str("<h2>Escalation</h2>");
    match e.started_at {
        None => b.push_str("<p>Not started.</p>"),
        Some(at) => {
            let by_state = e
                .totals
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ");
            b.push_str(&format!(
                "<p>Started {}; retried until {}. {} call(s) or message(s): {}. Confirmed since: {}.</p>",
                escape(&time(&state, Some(at))),
                escape(&time(&state, e.until)),
                e.deliveries,
                escape(&by_state),
                e.confirmed_after
            ));
        }
    }

    let choices = state
        .config
        .playbooks
        .get(&a.playbook)
        .map(|p| p.choices.clone())
        .unwrap_or_default();
    if !choices.is_empty() {
        let labels: HashMap<&str, &str> = choices
            .iter()
            .map(|c| {
                (
                    c.key.as_str(),
                    c.label.get("en").map(String::as_str).unwrap_or(&c.key),
                )
            })
            .collect();
        let pafter = q.pickup_after.clone().unwrap_or_default();
        let plan = state
            .store
            .read(move |c| alerts::pickup_plan(c, aid, &pafter, PAGE))
            .await
            .unwrap_or_default();
        b.push_str(&format!(
            "<h2>Pickup plan per student</h2><p>{} student(s) with guardians answering differently are marked <strong>CONFLICT</strong>. <a href=\"/api/v1/alerts/{id}/pickup\">Whole plan (JSON or CSV)</a>.</p>",
            s.conflicts
        ));
        b.push_str("<table><thead><tr><th scope=\"col\">School</th><th scope=\"col\">Student</th><th scope=\"col\">Plan</th></tr></thead><tbody>");
        for p in &plan {
            let answers = if p.answers.is_empty() {
                "no answer yet".to_string()
            } else {
                p.answers
                    .iter()
                    .map(|x| {
                        format!(
                            "{} ({})",
                            labels.get(x.choice.as_str()).copied().unwrap_or(&x.choice),
                            x.guardian
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            b.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}{}</td></tr>",
                escape(&p.school),
                escape(&p.student),
                if p.conflict {
                    "<strong>CONFLICT:</strong> "
                } else {
                    ""
                },
                escape(&answers)
            ));
        }
        b.push_str("</tbody></table>");
        if plan.len() as i64 == PAGE
            && let Some(last) = plan.last()
        {
            b.push_str(&format!(
                "<p><a href=\"/alerts/{id}?pickup_after={}\">Next {PAGE} students →</a></p>",
                escape(&last.student_id)
            ));
        }
    }

    let inbox = state
        .store
        .read(move |c| crate::store::replies::inbox(c, aid, i64::MAX, 50))
        .await
        .unwrap_or_default();
    b.push_str(&format!("<h2>Inbox ({} message(s))</h2>", s.inbox));
    if inbox.is_empty() {
        b.push_str("<p>No messages.</p>");
    } else {
        b.push_str("<table><thead><tr><th scope=\"col\">Received</th><th scope=\"col\">From</th><th scope=\"col\">Kind</th><th scope=\"col\">Message</th></tr></thead><tbody>");
        for m in &inbox {
            b.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&time(&state, Some(m.received_at))),
                escape(m.from_name.as_deref().unwrap_or("unknown")),
                escape(&m.kind),
                escape(&m.body)
            ));
        }
        b.push_str("</tbody></table>");
        if s.inbox > 50 {
            b.push_str(&format!(
                "<p>Showing the newest 50. <a href=\"/api/v1/alerts/{id}/inbox\">All messages</a>.</p>"
            ));
        }
    }

    let total_out = a.recipients - s.acknowledged;
    b.push_str(&format!("<h2>Not confirmed ({total_out})</h2>"));
    if !outstanding.is_empty() {
        b.push_str("<table><thead><tr><th scope=\"col\">Name</th><th scope=\"col\">Role</th><th scope=\"col\">Status</th><th scope=\"col\">Children</th></tr></thead><tbody>");
        for o in &outstanding {
            let kids: Vec<String> = o
                .recipient
                .students
                .iter()
                .map(|s| s.name.clone())
                .collect();
            b.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&o.recipient.name),
                escape(&o.recipient.role),
                escape(&o.reason),
                escape(&kids.join(", "))
            ));
        }
        b.push_str("</tbody></table>");
        if outstanding.len() as i64 == PAGE
            && let Some(last) = outstanding.last()
        {
            b.push_str(&format!(
                "<p>Showing {PAGE} of {total_out}. <a href=\"/alerts/{id}?after={}\">Next {PAGE} →</a></p>",
                last.recipient.id
            ));
        }
    }
    html_page(
        StatusCode::OK,
        layout("en", &format!("Alert {id}"), Some(5), &b),
    )
}
