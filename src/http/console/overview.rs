//! The console's first page: open alerts with their progress, then the
//! recent ones, and the health of what the alerts depend on: providers
//! (breaker, rate, recent errors), CAP feeds, and the SIS copy's imports
//! and syncs.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::alert::state_label;
use super::{escape, num, page, pct, time};
use crate::app::AppState;
use crate::deliver::engine::BreakerState;
use crate::domain::{AlertId, AlertState};
use crate::http::session::Operator;
use crate::store::{alerts, health, sis_syncs};

/// Recent alerts listed; the API lists more.
const RECENT: i64 = 50;

pub async fn index(op: Operator, State(state): State<Arc<AppState>>) -> Response {
    let mut rows = match state.store.read(|c| alerts::recent(c, RECENT)).await {
        Ok(r) => r,
        Err(e) => return crate::http::ApiError::from(e).into_response(),
    };
    // Only the alerts of the operator's schools.
    rows.retain(|a| {
        op.scope
            .allows_schools(&crate::http::scope::schools_of(&a.audience))
    });
    let mut b = String::from("<h1>klaxon: alerts</h1>");
    // Overrides waiting for a second person, as the review list counts them.
    let mut to_review = match state.store.read(alerts::to_review).await {
        Ok(r) => r,
        Err(e) => return crate::http::ApiError::from(e).into_response(),
    };
    to_review.retain(|a| {
        op.scope
            .allows_schools(&crate::http::scope::schools_of(&a.audience))
    });
    if !to_review.is_empty() {
        let _ = write!(
            b,
            "<p class=\"warn\" id=\"to-review\">{} alert(s) sent without a second approval wait for review: <a href=\"/reviews\">the review list</a>.</p>",
            num(to_review.len() as i64)
        );
    }

    // Open alerts first, each with its progress.
    let open: Vec<&alerts::AlertRow> = rows
        .iter()
        .filter(|a| a.state != AlertState::Closed)
        .collect();
    b.push_str("<section aria-labelledby=\"open-h\"><h2 id=\"open-h\">Open alerts</h2>");
    if open.is_empty() {
        b.push_str("<p>No alert is open.</p>");
    } else {
        b.push_str("<div class=\"scroll\" tabindex=\"0\"><table><thead><tr><th scope=\"col\">Alert</th><th scope=\"col\">State</th>\
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
        b.push_str("<div class=\"scroll\" tabindex=\"0\"><table><thead><tr><th scope=\"col\">#</th><th scope=\"col\">Alert</th><th scope=\"col\">Where</th><th scope=\"col\">State</th><th scope=\"col\">Created</th><th scope=\"col\" class=\"n\">Recipients</th></tr></thead><tbody>");
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

    b.push_str(&providers_section(&state).await);
    b.push_str(&feeds_section(&state));

    let syncs = match state.store.read(|c| sis_syncs::recent(c, 10)).await {
        Ok(r) => r,
        Err(e) => return crate::http::ApiError::from(e).into_response(),
    };
    b.push_str("<section aria-labelledby=\"sis-h\"><h2 id=\"sis-h\">SIS imports and syncs</h2>");
    if syncs.is_empty() {
        b.push_str("<p>No SIS import or sync recorded yet.</p>");
    } else {
        b.push_str("<div class=\"scroll\" tabindex=\"0\"><table><thead><tr><th scope=\"col\">Finished</th><th scope=\"col\">Kind</th><th scope=\"col\">Outcome</th>\
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

/// Errors listed under the providers.
const RECENT_ERRORS: i64 = 10;

async fn providers_section(state: &AppState) -> String {
    let mut b = String::from(
        "<section aria-labelledby=\"providers-h\"><h2 id=\"providers-h\">Providers</h2>\
<div class=\"scroll\" tabindex=\"0\"><table><thead><tr><th scope=\"col\">Provider</th><th scope=\"col\">Channels</th>\
<th scope=\"col\">Rate limit</th><th scope=\"col\">Breaker</th><th scope=\"col\" class=\"n\">Accepted</th>\
<th scope=\"col\" class=\"n\">Retried</th><th scope=\"col\" class=\"n\">Refused</th></tr></thead><tbody>",
    );
    let providers = state.engine.health();
    if providers.is_empty() {
        b.push_str(
            "<tr><td colspan=\"7\">No provider is configured: nothing can be sent.</td></tr>",
        );
    }
    for p in &providers {
        let channels = p
            .channels
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let rate = p
            .rate
            .map(|r| format!("{r:.1} per second"))
            .unwrap_or_else(|| "none".into());
        let breaker = match p.breaker {
            BreakerState::Closed { failures: 0 } => "closed (healthy)".to_string(),
            BreakerState::Closed { failures } => {
                format!("closed; {failures} failure(s) in a row")
            }
            BreakerState::Open { for_ } => format!(
                "<strong>open</strong>: skipped for {} s more",
                for_.as_secs().max(1)
            ),
            BreakerState::HalfOpen => "half-open: one probe decides".to_string(),
        };
        let count = |outcome: &str| {
            state.metrics.get(
                "klaxon_provider_requests_total",
                &[("provider", p.name.as_str()), ("outcome", outcome)],
            )
        };
        let _ = write!(
            b,
            "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&p.name),
            escape(&channels),
            escape(&rate),
            breaker,
            num(count("accepted") as i64),
            num(count("transient") as i64),
            num(count("permanent") as i64),
        );
    }
    b.push_str(
        "</tbody></table></div><p class=\"muted\">Request counts since the daemon started.</p>",
    );
    match state
        .store
        .read(|c| health::recent_errors(c, RECENT_ERRORS))
        .await
    {
        Ok(errors) if errors.is_empty() => {
            b.push_str("<p>No delivery errors among the latest deliveries.</p>")
        }
        Ok(errors) => {
            b.push_str("<h3>Latest delivery errors</h3><div class=\"scroll\" tabindex=\"0\"><table><thead><tr><th scope=\"col\">When</th><th scope=\"col\">Alert</th>\
<th scope=\"col\">Provider</th><th scope=\"col\">Channel</th><th scope=\"col\">State</th><th scope=\"col\">Error</th></tr></thead><tbody>");
            for e in &errors {
                let _ = write!(
                    b,
                    "<tr><td>{}</td><td><a href=\"/alerts/{a}\">#{a}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td></tr>",
                    escape(&time(state, Some(e.at))),
                    escape(e.provider.as_deref().unwrap_or("—")),
                    escape(&e.channel),
                    escape(&e.state),
                    e.code
                        .as_deref()
                        .map(|c| format!("{}: ", escape(c)))
                        .unwrap_or_default(),
                    escape(&e.error),
                    a = e.alert_id,
                );
            }
            b.push_str("</tbody></table></div>");
        }
        Err(e) => {
            tracing::warn!(error = %e, "Cannot read recent delivery errors for the console.");
            b.push_str(
                "<p class=\"warn\">Recent errors could not be read; see the daemon's log.</p>",
            );
        }
    }
    b.push_str("</section>");
    b
}

fn feeds_section(state: &AppState) -> String {
    let feeds = &state.config.feeds;
    let mut b =
        String::from("<section aria-labelledby=\"feeds-h\"><h2 id=\"feeds-h\">CAP feeds</h2>");
    if feeds.is_empty() {
        b.push_str("<p>No CAP feed is configured.</p></section>");
        return b;
    }
    let failing = crate::trigger::feed::failing(state);
    b.push_str("<div class=\"scroll\" tabindex=\"0\"><table><thead><tr><th scope=\"col\">Feed</th><th scope=\"col\">Last poll</th>\
<th scope=\"col\">Last usable answer</th><th scope=\"col\" class=\"n\">Polls</th><th scope=\"col\" class=\"n\">Errors</th></tr></thead><tbody>");
    for f in feeds {
        let labels = [("feed", f.name.as_str())];
        let up = state.metrics.gauge("klaxon_feed_up", &labels);
        let last_ok = state
            .metrics
            .gauge("klaxon_feed_last_success_timestamp_seconds", &labels)
            .map(|s| (s * 1000.0) as i64);
        let polls: u64 = ["ok", "not-modified", "error"]
            .iter()
            .map(|o| {
                state
                    .metrics
                    .get("klaxon_feed_polls_total", &[labels[0], ("outcome", o)])
            })
            .sum();
        let errors = state.metrics.get(
            "klaxon_feed_polls_total",
            &[labels[0], ("outcome", "error")],
        );
        let status = match up {
            None => "not polled yet".to_string(),
            Some(u) if u >= 1.0 => "ok".to_string(),
            Some(_) if failing.contains(&f.name) => {
                "<strong>failing for more than three intervals</strong>".to_string()
            }
            Some(_) => "failed; retrying".to_string(),
        };
        let _ = write!(
            b,
            "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&f.name),
            status,
            escape(&time(state, last_ok)),
            num(polls as i64),
            num(errors as i64),
        );
    }
    b.push_str("</tbody></table></div></section>");
    b
}
