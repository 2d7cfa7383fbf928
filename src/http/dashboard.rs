//! The safety officer's dashboard: recent alerts, and per alert the live
//! progress against the deadline, who has not been reached or has not
//! confirmed, and each student's pickup plan. Server-rendered, refreshes
//! itself, no JavaScript. Needs a token (bearer or the login cookie).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::api::status_view;
use super::{authorize, escape, html_page, layout};
use crate::app::AppState;
use crate::store::alerts;
use crate::store::tokens::{self, ApiRole};

fn time(state: &AppState, ms: Option<i64>) -> String {
    let Some(ms) = ms else { return "—".into() };
    let tz =
        jiff::tz::TimeZone::get(&state.config.server.timezone).unwrap_or(jiff::tz::TimeZone::UTC);
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_zoned(tz).strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

async fn gate(state: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    authorize(state, headers, ApiRole::Viewer)
        .await
        .map(|_| ())
        .map_err(|_| Redirect::to("/login").into_response())
}

pub async fn index(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(r) = gate(&state, &headers).await {
        return r;
    }
    let rows = match state.store.read(|c| alerts::recent(c, 50)).await {
        Ok(r) => r,
        Err(e) => return super::ApiError::from(e).into_response(),
    };
    let mut b = String::from("<h1>klaxon — alerts</h1>");
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
                state = escape(&a.state),
                at = escape(&time(&state, Some(a.created_at))),
                n = a.recipients,
            ));
        }
        b.push_str("</tbody></table>");
    }
    html_page(StatusCode::OK, layout("en", "klaxon alerts", Some(10), &b))
}

pub async fn alert(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    if let Err(r) = gate(&state, &headers).await {
        return r;
    }
    let view = match status_view(&state, id).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let outstanding = state
        .store
        .read(move |c| alerts::outstanding(c, id, 500))
        .await
        .unwrap_or_default();
    let s = &view.status;
    let a = &s.alert;
    let mut b = String::new();
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
    let verdict = match s.deadline_met {
        Some(true) => "<p class=\"ok\">Everyone reachable was handed to the providers within the deadline.</p>".to_string(),
        Some(false) => "<p class=\"warn\"><strong>The notify deadline was missed.</strong></p>".to_string(),
        None => format!(
            "<p class=\"warn\">Sending. Estimated time to finish: {}.</p>",
            view.eta_seconds.map(|e| format!("{e:.0} s")).unwrap_or_else(|| "—".into())
        ),
    };
    b.push_str(&verdict);
    if let Some(w) = &a.warning {
        b.push_str(&format!("<p class=\"warn\">{}</p>", escape(w)));
    }
    b.push_str(&format!(
        "<table><tbody>\
<tr><th scope=\"row\">State</th><td>{}</td></tr>\
<tr><th scope=\"row\">Created</th><td>{} by {}</td></tr>\
<tr><th scope=\"row\">Notify deadline</th><td>{}</td></tr>\
<tr><th scope=\"row\">Last hand-over</th><td>{}</td></tr>\
<tr><th scope=\"row\">Confirm deadline</th><td>{}</td></tr>\
<tr><th scope=\"row\">Recipients</th><td>{} ({} with no usable address)</td></tr>\
<tr><th scope=\"row\">Reached</th><td>{}</td></tr>\
<tr><th scope=\"row\">Confirmed</th><td>{}</td></tr>\
</tbody></table>",
        escape(&a.state),
        escape(&time(&state, Some(a.created_at))),
        escape(&a.created_by),
        escape(&time(&state, a.notify_deadline)),
        escape(&time(&state, s.last_handover_at)),
        escape(&time(&state, a.ack_deadline)),
        a.recipients,
        a.unreachable,
        s.reached,
        s.acknowledged,
    ));
    b.push_str("<h2>Deliveries</h2><table><thead><tr><th scope=\"col\">Channel</th>");
    let states = [
        "queued",
        "sending",
        "sent",
        "delivered",
        "failed",
        "undeliverable",
        "cancelled",
    ];
    for st in states {
        b.push_str(&format!("<th scope=\"col\">{st}</th>"));
    }
    b.push_str("</tr></thead><tbody>");
    for (ch, counts) in &s.channels {
        b.push_str(&format!("<tr><th scope=\"row\">{}</th>", escape(ch)));
        for st in states {
            b.push_str(&format!(
                "<td>{}</td>",
                counts.get(st).copied().unwrap_or(0)
            ));
        }
        b.push_str("</tr>");
    }
    b.push_str("</tbody></table>");

    // Pickup plans: each student with the answer of their guardian(s).
    let choices = state
        .config
        .playbooks
        .get(&a.playbook)
        .map(|p| p.choices.clone())
        .unwrap_or_default();
    if !choices.is_empty() {
        let answered = state
            .store
            .read(move |c| alerts::answered(c, id, 5000))
            .await
            .unwrap_or_default();
        let labels: HashMap<&str, &str> = choices
            .iter()
            .map(|c| {
                (
                    c.key.as_str(),
                    c.label.get("en").map(String::as_str).unwrap_or(&c.key),
                )
            })
            .collect();
        let mut plans: BTreeMap<(String, String), (String, String)> = BTreeMap::new();
        for r in answered.iter() {
            let plan = r
                .ack_choice
                .as_deref()
                .map(|k| labels.get(k).copied().unwrap_or(k))
                .unwrap_or("confirmed");
            for st in &r.students {
                plans.insert(
                    (st.school_name.clone(), st.name.clone()),
                    (plan.to_string(), r.name.clone()),
                );
            }
        }
        for o in &outstanding {
            for st in &o.recipient.students {
                plans
                    .entry((st.school_name.clone(), st.name.clone()))
                    .or_insert_with(|| ("no answer yet".into(), o.recipient.name.clone()));
            }
        }
        b.push_str("<h2>Pickup plans</h2><table><thead><tr><th scope=\"col\">School</th><th scope=\"col\">Student</th><th scope=\"col\">Plan</th><th scope=\"col\">Guardian</th></tr></thead><tbody>");
        for ((school, student), (plan, guardian)) in plans {
            b.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&school),
                escape(&student),
                escape(&plan),
                escape(&guardian)
            ));
        }
        b.push_str("</tbody></table>");
    }

    b.push_str(&format!("<h2>Not confirmed ({})</h2>", outstanding.len()));
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
    }
    html_page(
        StatusCode::OK,
        layout("en", &format!("Alert {id}"), Some(5), &b),
    )
}

pub async fn login_form() -> Response {
    let body = "<h1>klaxon — sign in</h1>\
<form method=\"post\" action=\"/login\"><label for=\"t\">API token (create one with <code>klaxon token create</code>)</label>\
<input id=\"t\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required style=\"width:100%;font-size:1.125rem;padding:.5rem\">\
<button type=\"submit\">Sign in</button></form>";
    html_page(StatusCode::OK, layout("en", "klaxon sign in", None, body))
}

pub async fn login(
    State(state): State<Arc<AppState>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let token = form.get("token").cloned().unwrap_or_default();
    let t = token.clone();
    match state.store.read(move |c| tokens::lookup(c, &t)).await {
        Ok(Some(_)) => {
            let secure = if state.config.server.public_url.starts_with("https://") {
                "; Secure"
            } else {
                ""
            };
            (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, "/".to_string()),
                    (
                        header::SET_COOKIE,
                        format!("klaxon_token={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200{secure}"),
                    ),
                ],
            )
                .into_response()
        }
        _ => {
            state
                .metrics
                .inc("klaxon_http_auth_failures_total", &[("reason", "login")]);
            html_page(
                StatusCode::UNAUTHORIZED,
                layout(
                    "en",
                    "klaxon sign in",
                    None,
                    "<h1>That token is not valid.</h1><p><a href=\"/login\">Try again</a></p>",
                ),
            )
        }
    }
}
