//! The console's first page: open alerts with their progress, then the
//! recent ones, and the health of what the alerts depend on (the SIS copy's
//! imports and syncs).

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::alert::state_label;
use super::{escape, num, page, pct, time};
use crate::app::AppState;
use crate::domain::{AlertId, AlertState};
use crate::http::session::Operator;
use crate::store::{alerts, sis_syncs};

/// Recent alerts listed; the API lists more.
const RECENT: i64 = 50;

pub async fn index(op: Operator, State(state): State<Arc<AppState>>) -> Response {
    let rows = match state.store.read(|c| alerts::recent(c, RECENT)).await {
        Ok(r) => r,
        Err(e) => return crate::http::ApiError::from(e).into_response(),
    };
    let mut b = String::from("<h1>klaxon: alerts</h1>");

    // Open alerts first, each with its progress.
    let open: Vec<&alerts::AlertRow> = rows
        .iter()
        .filter(|a| a.state != AlertState::Closed)
        .collect();
    b.push_str("<section aria-labelledby=\"open-h\"><h2 id=\"open-h\">Open alerts</h2>");
    if open.is_empty() {
        b.push_str("<p>No alert is open.</p>");
    } else {
        b.push_str("<div class=\"scroll\"><table><thead><tr><th scope=\"col\">Alert</th><th scope=\"col\">State</th>\
<th scope=\"col\" class=\"n\">Recipients</th><th scope=\"col\" class=\"n\">Reached</th><th scope=\"col\" class=\"n\">Confirmed</th>\
<th scope=\"col\">Notify deadline</th></tr></thead><tbody>");
        for a in open {
            let aid = AlertId(a.id);
            let s = match state.store.read(move |c| alerts::status(c, aid)).await {
                Ok(s) => s,
                Err(e) => return crate::http::ApiError::from(e).into_response(),
            };
            let verdict = match a.deadline_met {
                Some(true) => " (met)",
                Some(false) => " (missed)",
                None => "",
            };
            let _ = write!(
                b,
                "<tr><td><a href=\"/alerts/{id}\">#{id} {drill}{title}: {place}</a></td><td>{st}</td>\
<td class=\"n\">{n}</td><td class=\"n\">{r} ({rp:.0}%)</td><td class=\"n\">{c} ({cp:.0}%)</td><td>{dl}{verdict}</td></tr>",
                id = a.id,
                drill = if a.drill { "DRILL " } else { "" },
                title = escape(&a.title),
                place = escape(&a.place),
                st = escape(&state_label(a)),
                n = num(a.recipients),
                r = num(s.reached),
                rp = pct(s.reached, a.recipients),
                c = num(s.acknowledged),
                cp = pct(s.acknowledged, a.recipients),
                dl = escape(&time(&state, a.notify_deadline)),
            );
        }
        b.push_str("</tbody></table></div>");
    }
    b.push_str("</section>");

    b.push_str("<section aria-labelledby=\"recent-h\"><h2 id=\"recent-h\">Recent alerts</h2>");
    if rows.is_empty() {
        b.push_str("<p>No alerts yet.</p>");
    } else {
        let _ = write!(
            b,
            "<p class=\"muted\">The newest {}; <code>klaxon status</code> and <code>/api/v1/alerts</code> list them too.</p>",
            rows.len()
        );
        b.push_str("<div class=\"scroll\"><table><thead><tr><th scope=\"col\">#</th><th scope=\"col\">Alert</th><th scope=\"col\">Where</th><th scope=\"col\">State</th><th scope=\"col\">Created</th><th scope=\"col\" class=\"n\">Recipients</th></tr></thead><tbody>");
        for a in &rows {
            let _ = write!(
                b,
                "<tr><td><a href=\"/alerts/{id}\">{id}</a></td><td>{drill}{title}</td><td>{place}</td><td>{state}</td><td>{at}</td><td class=\"n\">{n}</td></tr>",
                id = a.id,
                drill = if a.drill {
                    "<strong>DRILL</strong> "
                } else {
                    ""
                },
                title = escape(&a.title),
                place = escape(&a.place),
                state = escape(&state_label(a)),
                at = escape(&time(&state, Some(a.created_at))),
                n = num(a.recipients),
            );
        }
        b.push_str("</tbody></table></div>");
    }
    b.push_str("</section>");

    let syncs = match state.store.read(|c| sis_syncs::recent(c, 10)).await {
        Ok(r) => r,
        Err(e) => return crate::http::ApiError::from(e).into_response(),
    };
    b.push_str("<section aria-labelledby=\"sis-h\"><h2 id=\"sis-h\">SIS imports and syncs</h2>");
    if syncs.is_empty() {
        b.push_str("<p>No SIS import or sync recorded yet.</p>");
    } else {
        b.push_str("<div class=\"scroll\"><table><thead><tr><th scope=\"col\">Finished</th><th scope=\"col\">Kind</th><th scope=\"col\">Outcome</th>\
<th scope=\"col\" class=\"n\">Added</th><th scope=\"col\" class=\"n\">Changed</th><th scope=\"col\" class=\"n\">Removed</th><th scope=\"col\">Why</th></tr></thead><tbody>");
        for s in &syncs {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{} ({})</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                escape(&time(&state, Some(s.finished_at))),
                escape(&s.kind),
                escape(&s.trigger),
                escape(&s.outcome),
                num(s.added),
                num(s.changed),
                num(s.removed),
                escape(s.message.as_deref().unwrap_or("")),
            );
        }
        b.push_str("</tbody></table></div>");
    }
    b.push_str("</section>");
    page(&state, Some(&op), "klaxon alerts", &b)
}
