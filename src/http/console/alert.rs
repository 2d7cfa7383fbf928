//! One alert as the safety officer follows it: state, time left to each
//! deadline, recipients reached, delivered and confirmed (kept current by
//! the event stream, with a Refresh link without JavaScript), the progress
//! chart, the per-school breakdown, deliveries per channel, escalation,
//! the pickup plan, the inbox and who has not confirmed.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{chart, error_page, escape, left, num, page, pct, time};
use crate::app::AppState;
use crate::domain::{AlertId, AlertState, DeliveryState};
use crate::http::ApiError;
use crate::http::api::{StatusView, view_of};
use crate::http::session::Operator;
use crate::store::tally::Tally;
use crate::store::{alerts, breakdown, lists, timeline};

/// The figures that change while an alert runs, as text ready to show:
/// the page renders them and the event stream pushes the same map, so the
/// two can never disagree.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Live {
    pub text: BTreeMap<&'static str, String>,
    /// Deadlines (ms since the epoch) the script counts down to.
    pub deadlines: BTreeMap<&'static str, Option<i64>>,
    /// Progress bar widths, percent.
    pub bars: BTreeMap<&'static str, f64>,
    pub closed: bool,
}

pub fn state_label(a: &alerts::AlertRow) -> String {
    match (a.state, a.closed_reason) {
        (AlertState::Closed, Some(r)) => format!("closed ({})", r.as_str()),
        (AlertState::Held, _) if a.two_person => "held: needs a second approval".into(),
        (AlertState::Held, _) => "held for approval".into(),
        (st, _) => st.as_str().to_string(),
    }
}

fn spread(x: &alerts::Spread) -> String {
    match (x.p50, x.p95, x.max) {
        (Some(p50), Some(p95), Some(max)) => format!(
            "p50 {p50:.1} s · p95 {p95:.1} s · max {max:.1} s ({} in all)",
            num(x.count)
        ),
        _ => "—".into(),
    }
}

impl Live {
    pub fn of(state: &AppState, v: &StatusView, now: i64) -> Live {
        let s = &v.status;
        let a = &s.alert;
        let mut text = BTreeMap::new();
        text.insert("state", state_label(a));
        text.insert("recipients", num(a.recipients));
        text.insert(
            "unreachable",
            format!("{} with no usable address", num(a.unreachable)),
        );
        text.insert("reached", num(s.reached));
        text.insert(
            "reached_pct",
            format!("{:.0}% of recipients", pct(s.reached, a.recipients)),
        );
        text.insert("delivered", num(s.delivered));
        text.insert(
            "delivered_pct",
            format!(
                "{:.0}% reported by providers",
                pct(s.delivered, a.recipients)
            ),
        );
        text.insert("confirmed", num(s.acknowledged));
        text.insert(
            "confirmed_pct",
            format!("{:.0}% of recipients", pct(s.acknowledged, a.recipients)),
        );
        text.insert("outstanding", num(a.recipients - s.acknowledged));
        let verdict = if a.state == AlertState::Held && a.two_person {
            format!(
                "Needs a second approval (two-person rule): nothing is sent until an operator other than {} approves it.",
                a.created_by
            )
        } else if a.state == AlertState::Held {
            "Held for approval: nothing is sent until it is approved.".to_string()
        } else if a.is_cancelled() {
            "Cancelled: nothing more of it is sent.".to_string()
        } else {
            match a.deadline_met {
                Some(true) => {
                    "Everyone reachable was handed to the providers within the notify deadline."
                        .into()
                }
                Some(false) => "The notify deadline was missed for first deliveries.".into(),
                None => format!(
                    "Sending. Estimated time to finish: {}.",
                    v.eta_seconds
                        .map(|e| format!("{e:.0} s"))
                        .unwrap_or_else(|| "—".into())
                ),
            }
        };
        text.insert("verdict", verdict);
        text.insert("notify_at", time(state, a.notify_deadline));
        text.insert("ack_at", time(state, a.ack_deadline));
        text.insert(
            "notify_left",
            a.notify_deadline
                .map(|d| left(d, now))
                .unwrap_or_else(|| "—".into()),
        );
        text.insert(
            "ack_left",
            a.ack_deadline
                .map(|d| left(d, now))
                .unwrap_or_else(|| "—".into()),
        );
        text.insert("last_handover", time(state, s.last_handover_at));
        text.insert("handover", spread(&s.figures.handover));
        text.insert("delivery", spread(&s.figures.delivery));
        text.insert("confirmation", spread(&s.figures.confirmation));
        let e = &s.escalation;
        let escalation = match e.started_at {
            None if a.confirm => {
                "Not started: unconfirmed people are escalated at the confirm deadline.".into()
            }
            None => "None: this alert asks for no confirmation.".into(),
            Some(at) => {
                let by_state = e
                    .totals
                    .iter()
                    .map(|(k, v)| format!("{k} {}", num(*v)))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!(
                    "Started {}, retried until {}: {} call(s) or message(s) ({}); {} confirmed since.",
                    time(state, Some(at)),
                    time(state, e.until),
                    num(e.deliveries),
                    if by_state.is_empty() {
                        "none yet".into()
                    } else {
                        by_state
                    },
                    num(e.confirmed_after)
                )
            }
        };
        text.insert("escalation", escalation);
        let closed = a.state == AlertState::Closed;
        let mut deadlines = BTreeMap::new();
        // A deadline stops counting once it no longer matters.
        deadlines.insert(
            "notify_left",
            a.notify_deadline
                .filter(|_| !closed && a.deadline_met.is_none()),
        );
        deadlines.insert("ack_left", a.ack_deadline.filter(|_| !closed));
        let mut bars = BTreeMap::new();
        bars.insert("reached", pct(s.reached, a.recipients));
        bars.insert("delivered", pct(s.delivered, a.recipients));
        bars.insert("confirmed", pct(s.acknowledged, a.recipients));
        Live {
            text,
            deadlines,
            bars,
            closed,
        }
    }

    /// The element showing `key`, with the attribute the script updates.
    fn el(&self, tag: &str, key: &'static str) -> String {
        let v = self.text.get(key).map(String::as_str).unwrap_or("—");
        let deadline = match self.deadlines.get(key) {
            Some(d) => format!(
                " data-live-deadline=\"{key}\" data-deadline=\"{}\"",
                d.map(|d| d.to_string()).unwrap_or_default()
            ),
            None => String::new(),
        };
        format!("<{tag} data-live=\"{key}\"{deadline}>{}</{tag}>", escape(v))
    }

    fn bar(&self, key: &'static str) -> String {
        format!(
            "<div class=\"bar\" aria-hidden=\"true\"><span data-live-bar=\"{key}\" style=\"width:{:.1}%\"></span></div>",
            self.bars.get(key).copied().unwrap_or(0.0)
        )
    }
}

/// One alert's figures as the console shows them, all from one pass over
/// its deliveries (`Tally`): the status, the chart (SVG) and, when asked
/// for, the per-school breakdown.
pub struct Reading {
    pub view: StatusView,
    pub chart: String,
    pub schools: Vec<breakdown::SchoolFigures>,
}

pub async fn read(state: &AppState, id: i64, schools: bool) -> Result<Reading, ApiError> {
    let aid = AlertId(id);
    let now = state.now_ms();
    let (status, chart, schools) = state
        .store
        .read(move |c| {
            let t = Tally::read(c, aid)?;
            let status = alerts::status_with(c, aid, &t)?;
            let a = &status.alert;
            let chart = match a.released_at {
                None => chart::render(a, &timeline::Timeline::default(), 0),
                Some(start) => {
                    let last = timeline::last_event(c, aid, &t)?;
                    match chart::span(a, last, now).map(|(s, e)| (s.min(start), e)) {
                        None => String::new(),
                        Some((s, e)) => {
                            let tl = timeline::timeline(c, aid, &t, s, chart::bucket_for(e - s))?;
                            chart::render(a, &tl, e)
                        }
                    }
                }
            };
            let schools = if schools {
                breakdown::per_school(c, aid, &t)?
            } else {
                Vec::new()
            };
            Ok((status, chart, schools))
        })
        .await?;
    Ok(Reading {
        view: view_of(state, status),
        chart,
        schools,
    })
}

#[derive(serde::Deserialize)]
pub struct AlertQuery {
    /// Outstanding list: the last recipient id of the previous page.
    after: Option<i64>,
}

/// Rows per page of the lists on this page; each says how many there are
/// in all and links to the next page, so nothing is cut silently.
const PAGE: i64 = 200;

pub async fn view(
    op: Operator,
    State(state): State<Arc<AppState>>,
    Path(id): Path<i64>,
    Query(q): Query<AlertQuery>,
) -> Response {
    if let Err(r) = super::in_scope(&state, &op, id).await {
        return r;
    }
    let Reading {
        view: v,
        chart,
        schools,
    } = match read(&state, id, true).await {
        Ok(r) => r,
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            return error_page(
                &state,
                StatusCode::NOT_FOUND,
                &format!("There is no alert {id}."),
            );
        }
        Err(e) => return e.into_response(),
    };
    let now = state.now_ms();
    let live = Live::of(&state, &v, now);
    let s = &v.status;
    let a = &s.alert;
    let mut b = String::new();
    if a.drill {
        b.push_str("<p class=\"banner drill\">DRILL: this is an exercise.</p>");
    }
    let _ = write!(
        b,
        "<h1>#{} {}: {}</h1>",
        a.id,
        escape(&a.title),
        escape(&a.place)
    );
    let _ = write!(
        b,
        "<section aria-labelledby=\"progress-h\" data-events=\"/alerts/{id}/events\">\
<h2 id=\"progress-h\">Progress</h2>\
<p class=\"live-note\"><span id=\"live-note\" role=\"status\">Figures as of {asof}.</span> <a href=\"/alerts/{id}\">Refresh</a></p>\
<p class=\"{verdict_class}\">{verdict}</p>\
<dl class=\"figures\">\
<div><dt>State</dt><dd>{state}</dd></div>\
<div><dt>Recipients</dt><dd>{recipients}<small>{unreachable}</small></dd></div>\
<div><dt>Reached</dt><dd>{reached}<small>{reached_pct}</small>{reached_bar}</dd></div>\
<div><dt>Delivered</dt><dd>{delivered}<small>{delivered_pct}</small>{delivered_bar}</dd></div>\
<div><dt>Confirmed</dt><dd>{confirmed}<small>{confirmed_pct}</small>{confirmed_bar}</dd></div>\
<div><dt>Not confirmed</dt><dd>{outstanding}</dd></div>\
</dl>\
<div class=\"scroll\" tabindex=\"0\"><table><caption>Deadlines and times</caption><tbody>\
<tr><th scope=\"row\">Notify deadline</th><td>{notify_at}</td><td>{notify_left}</td></tr>\
<tr><th scope=\"row\">Confirm deadline</th><td>{ack_at}</td><td>{ack_left}</td></tr>\
<tr><th scope=\"row\">Last hand-over (first deliveries)</th><td colspan=\"2\">{last_handover}</td></tr>\
<tr><th scope=\"row\">Time to hand-over</th><td colspan=\"2\">{handover}</td></tr>\
<tr><th scope=\"row\">Time to delivery</th><td colspan=\"2\">{delivery}</td></tr>\
<tr><th scope=\"row\">Time to confirmation</th><td colspan=\"2\">{confirmation}</td></tr>\
</tbody></table></div>\
<h3>Escalation</h3><p>{escalation}</p>\
</section>",
        asof = escape(&time(&state, Some(now))),
        verdict_class = if a.deadline_met == Some(true) {
            "ok"
        } else {
            "warn"
        },
        verdict = live.el("span", "verdict"),
        state = live.el("span", "state"),
        recipients = live.el("span", "recipients"),
        unreachable = live.el("span", "unreachable"),
        reached = live.el("span", "reached"),
        reached_pct = live.el("span", "reached_pct"),
        reached_bar = live.bar("reached"),
        delivered = live.el("span", "delivered"),
        delivered_pct = live.el("span", "delivered_pct"),
        delivered_bar = live.bar("delivered"),
        confirmed = live.el("span", "confirmed"),
        confirmed_pct = live.el("span", "confirmed_pct"),
        confirmed_bar = live.bar("confirmed"),
        outstanding = live.el("span", "outstanding"),
        notify_at = live.el("span", "notify_at"),
        notify_left = live.el("span", "notify_left"),
        ack_at = live.el("span", "ack_at"),
        ack_left = live.el("span", "ack_left"),
        last_handover = live.el("span", "last_handover"),
        handover = live.el("span", "handover"),
        delivery = live.el("span", "delivery"),
        confirmation = live.el("span", "confirmation"),
        escalation = live.el("span", "escalation"),
    );
    if let Some(w) = &a.warning {
        let _ = write!(b, "<p class=\"warn\">{}</p>", escape(w));
    }
    b.push_str(&override_note(&state, a));
    b.push_str(&super::act::buttons(&op, a));
    let _ = write!(
        b,
        "<p class=\"muted\">Created {} by {}.</p>",
        escape(&time(&state, Some(a.created_at))),
        escape(&a.created_by)
    );

    let _ = write!(
        b,
        "<section aria-labelledby=\"chart-h\"><h2 id=\"chart-h\">Over time</h2><div id=\"chart\">{chart}</div></section>"
    );

    b.push_str(&schools_table(&schools));

    b.push_str("<h2>First deliveries per channel</h2><div class=\"scroll\" tabindex=\"0\"><table><thead><tr><th scope=\"col\">Channel</th>");
    for st in DeliveryState::ALL {
        let _ = write!(b, "<th scope=\"col\" class=\"n\">{st}</th>");
    }
    b.push_str("</tr></thead><tbody>");
    for (ch, counts) in &s.channels {
        let _ = write!(b, "<tr><th scope=\"row\">{}</th>", escape(ch));
        for st in DeliveryState::ALL {
            let _ = write!(
                b,
                "<td class=\"n\">{}</td>",
                num(counts.get(st.as_str()).copied().unwrap_or(0))
            );
        }
        b.push_str("</tr>");
    }
    b.push_str("</tbody></table></div>");

    if let Err(r) = pickup_section(&state, &mut b, &v).await {
        return r;
    }
    if let Err(r) = inbox_section(&state, &mut b, &v).await {
        return r;
    }
    if let Err(r) = outstanding_section(&mut b, &state, &v, q.after.unwrap_or(0)).await {
        return r;
    }
    page(&state, Some(&op), &format!("Alert {id}: {}", a.title), &b)
}

/// An alert sent with an emergency override says so, with the reason and
/// whether a second person has reviewed it yet.
fn override_note(state: &AppState, a: &alerts::AlertRow) -> String {
    let Some(reason) = &a.override_reason else {
        return String::new();
    };
    let review = match (&a.reviewed_by, a.reviewed_at) {
        (Some(by), at) => format!(
            "Reviewed by {} at {}.",
            escape(by),
            escape(&time(state, at))
        ),
        _ => "Not reviewed yet: a second person reviews it from the <a href=\"/reviews\">review list</a>.".into(),
    };
    format!(
        "<p class=\"warn\" id=\"override\"><strong>Sent without a second approval</strong> by {}: \u{201c}{}\u{201d}. {review}</p>",
        escape(a.approved_by.as_deref().unwrap_or(&a.created_by)),
        escape(reason)
    )
}

fn schools_table(rows: &[breakdown::SchoolFigures]) -> String {
    let mut b = String::from(
        "<section aria-labelledby=\"schools-h\"><h2 id=\"schools-h\">Per school</h2>\
<p class=\"muted\">A guardian counts at each school one of their children in this alert attends.</p>\
<div class=\"scroll\" tabindex=\"0\"><table><thead><tr><th scope=\"col\">School</th><th scope=\"col\" class=\"n\">Recipients</th>\
<th scope=\"col\" class=\"n\">Reached</th><th scope=\"col\" class=\"n\">Delivered</th><th scope=\"col\" class=\"n\">Confirmed</th>\
<th scope=\"col\" class=\"n\">Not confirmed</th></tr></thead><tbody>",
    );
    if rows.is_empty() {
        b.push_str("<tr><td colspan=\"6\">No recipients yet.</td></tr>");
    }
    for r in rows {
        let name = if r.school_id.is_empty() {
            "Staff and others (no child in this alert)".to_string()
        } else {
            r.school.clone()
        };
        let _ = write!(
            b,
            "<tr><th scope=\"row\">{}</th><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&name),
            num(r.recipients),
            num(r.reached),
            num(r.delivered),
            num(r.confirmed),
            num(r.outstanding()),
        );
    }
    b.push_str("</tbody></table></div></section>");
    b
}

/// Answers per choice and the students whose guardians disagree; the
/// whole plan is on its own page (it reads every recipient).
async fn pickup_section(state: &AppState, b: &mut String, v: &StatusView) -> Result<(), Response> {
    let s = &v.status;
    let a = &s.alert;
    let id = a.id;
    let aid = AlertId(id);
    let choices = state
        .config
        .playbooks
        .get(&a.playbook)
        .map(|p| p.choices.clone())
        .unwrap_or_default();
    if choices.is_empty() {
        return Ok(());
    }
    let labels: HashMap<&str, &str> = choices
        .iter()
        .map(|c| {
            (
                c.key.as_str(),
                c.label.get("en").map(String::as_str).unwrap_or(&c.key),
            )
        })
        .collect();
    let _ = write!(
        b,
        "<section aria-labelledby=\"pickup-h\"><h2 id=\"pickup-h\">Pickup plan</h2>\
<p><a href=\"/alerts/{id}/pickup\">Every student's plan: search it, or download it as CSV</a>.</p>\
<div class=\"scroll\" tabindex=\"0\"><table><caption>Answers per choice (one per student and guardian)</caption><tbody>"
    );
    for c in &choices {
        let _ = write!(
            b,
            "<tr><th scope=\"row\">{}</th><td class=\"n\">{}</td></tr>",
            escape(labels.get(c.key.as_str()).copied().unwrap_or(&c.key)),
            num(s.choices.get(&c.key).copied().unwrap_or(0))
        );
    }
    b.push_str("</tbody></table></div>");
    let conflicts = state
        .store
        .read(move |c| lists::conflicts(c, aid, PAGE))
        .await
        .map_err(|e| crate::http::ApiError::from(e).into_response())?;
    let _ = write!(
        b,
        "<p>{} student(s) with guardians answering differently, marked <strong>CONFLICT</strong>.</p>",
        num(s.conflicts)
    );
    if !conflicts.is_empty() {
        b.push_str("<div class=\"scroll\" tabindex=\"0\"><table><thead><tr><th scope=\"col\">School</th><th scope=\"col\">Student</th><th scope=\"col\">Plan</th></tr></thead><tbody>");
        for p in &conflicts {
            let answers = p
                .answers
                .iter()
                .map(|x| {
                    format!(
                        "{} ({})",
                        labels.get(x.choice.as_str()).copied().unwrap_or(&x.choice),
                        x.guardian
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td><strong>CONFLICT:</strong> {}</td></tr>",
                escape(&p.school),
                escape(&p.student),
                escape(&answers)
            );
        }
        b.push_str("</tbody></table></div>");
        if s.conflicts > conflicts.len() as i64 {
            let _ = write!(
                b,
                "<p>Showing {} of {}; the <a href=\"/alerts/{id}/pickup\">whole plan</a> has them all.</p>",
                conflicts.len(),
                num(s.conflicts)
            );
        }
    }
    b.push_str("</section>");
    Ok(())
}

async fn inbox_section(state: &AppState, b: &mut String, v: &StatusView) -> Result<(), Response> {
    let s = &v.status;
    let id = s.alert.id;
    let aid = AlertId(id);
    let inbox = state
        .store
        .read(move |c| crate::store::replies::inbox(c, aid, i64::MAX, 50))
        .await
        .map_err(|e| crate::http::ApiError::from(e).into_response())?;
    let _ = write!(b, "<h2>Inbox ({} message(s))</h2>", num(s.inbox));
    if inbox.is_empty() {
        b.push_str("<p>No messages.</p>");
        return Ok(());
    }
    b.push_str("<div class=\"scroll\" tabindex=\"0\"><table><thead><tr><th scope=\"col\">Received</th><th scope=\"col\">From</th><th scope=\"col\">Kind</th><th scope=\"col\">Message</th></tr></thead><tbody>");
    for m in &inbox {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&time(state, Some(m.received_at))),
            escape(m.from_name.as_deref().unwrap_or("unknown")),
            escape(&m.kind),
            escape(&m.body)
        );
    }
    b.push_str("</tbody></table></div>");
    if s.inbox > 50 {
        let _ = write!(
            b,
            "<p>Showing the newest 50 of {}. <a href=\"/api/v1/alerts/{id}/inbox\">All messages</a>.</p>",
            num(s.inbox)
        );
    }
    Ok(())
}

async fn outstanding_section(
    b: &mut String,
    state: &AppState,
    v: &StatusView,
    after: i64,
) -> Result<(), Response> {
    let s = &v.status;
    let a = &s.alert;
    let id = a.id;
    let aid = AlertId(id);
    let outstanding = state
        .store
        .read(move |c| alerts::outstanding(c, aid, after, PAGE))
        .await
        .map_err(|e| crate::http::ApiError::from(e).into_response())?;
    let total_out = a.recipients - s.acknowledged;
    let _ = write!(
        b,
        "<h2>Not confirmed ({})</h2><p><a href=\"/alerts/{id}/outstanding\">Search all {}, or download them as CSV</a>.</p>",
        num(total_out),
        num(total_out)
    );
    if outstanding.is_empty() {
        b.push_str("<p>Nobody on this page.</p>");
        return Ok(());
    }
    b.push_str("<div class=\"scroll\" tabindex=\"0\"><table><thead><tr><th scope=\"col\">Name</th><th scope=\"col\">Role</th><th scope=\"col\">Status</th><th scope=\"col\">Children</th></tr></thead><tbody>");
    for o in &outstanding {
        let kids: Vec<&str> = o
            .recipient
            .students
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&o.recipient.name),
            escape(&o.recipient.role),
            escape(&o.reason),
            escape(&kids.join(", "))
        );
    }
    b.push_str("</tbody></table></div>");
    if outstanding.len() as i64 == PAGE
        && let Some(last) = outstanding.last()
    {
        let _ = write!(
            b,
            "<p>Showing {PAGE} of {}. <a href=\"/alerts/{id}?after={}\">Next {PAGE}</a></p>",
            num(total_out),
            last.recipient.id
        );
    }
    Ok(())
}
