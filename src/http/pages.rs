//! The acknowledgement page a parent opens from the message. Mobile-first,
//! no JavaScript, in their language. A GET only shows: mail scanners fetch
//! every link, so nothing is ever recorded without a POST.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{escape, html_page, layout};
use crate::ack::{self, PageModel, PageState, SubmitOutcome, words};
use crate::app::AppState;
use crate::playbook::Choice;
use crate::store::alerts::AckOutcome;

/// Tokens are base64url; anything else is refused before touching the store.
fn plausible(token: &str) -> bool {
    (16..=64).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn not_found(state: &AppState) -> Response {
    state
        .metrics
        .inc("klaxon_rejected_inputs_total", &[("kind", "unknown-token")]);
    let w = words("en");
    html_page(
        StatusCode::NOT_FOUND,
        layout(
            "en",
            "klaxon",
            None,
            &format!("<h1>{}</h1>", escape(w.invalid)),
        ),
    )
}

fn internal() -> Response {
    html_page(
        StatusCode::SERVICE_UNAVAILABLE,
        layout(
            "en",
            "klaxon",
            None,
            "<h1>Something went wrong. Please try again in a minute.</h1>",
        ),
    )
}

fn label<'a>(c: &'a Choice, lang: &str) -> &'a str {
    let base = lang.split(['-', '_']).next().unwrap_or(lang);
    c.label
        .get(lang)
        .or_else(|| c.label.get(base))
        .or_else(|| c.label.get("en"))
        .map(String::as_str)
        .unwrap_or(&c.key)
}

fn local_time(state: &AppState, ms: i64) -> String {
    let tz =
        jiff::tz::TimeZone::get(&state.config.server.timezone).unwrap_or(jiff::tz::TimeZone::UTC);
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_zoned(tz).strftime("%H:%M %Z").to_string())
        .unwrap_or_default()
}

/// The radio buttons for one child (or, for staff, for themselves).
fn choice_group(
    b: &mut String,
    name: &str,
    legend: &str,
    choices: &[Choice],
    current: Option<&str>,
    lang: &str,
    idx: usize,
) {
    b.push_str(&format!("<fieldset><legend>{}</legend>", escape(legend)));
    for (i, c) in choices.iter().enumerate() {
        let checked = if current == Some(c.key.as_str()) {
            " checked"
        } else {
            ""
        };
        b.push_str(&format!(
            "<label for=\"c{idx}-{i}\"><input type=\"radio\" id=\"c{idx}-{i}\" name=\"{}\" value=\"{}\" required{checked}>{}</label>",
            escape(name),
            escape(&c.key),
            escape(label(c, lang))
        ));
    }
    b.push_str("</fieldset>");
}

fn render(
    state: &AppState,
    token: &str,
    p: &PageModel,
    saved: bool,
    problem: Option<&str>,
) -> String {
    let (r, a) = (&p.recipient, &p.alert);
    let lang = r.language.as_str();
    let w = words(lang);
    let mut b = String::new();
    if a.drill {
        b.push_str(&format!(
            "<p class=\"banner drill\" role=\"status\">{}</p>",
            escape(w.drill)
        ));
    }
    if p.state == PageState::Cancelled {
        b.push_str(&format!(
            "<p class=\"warn\" role=\"status\"><strong>{}</strong></p>",
            escape(w.cancelled)
        ));
    }
    b.push_str(&format!(
        "<h1>{} — {}</h1>",
        escape(&a.title),
        escape(&a.place)
    ));
    if let Some(at) = a.released_at.or(Some(a.created_at)) {
        b.push_str(&format!(
            "<p class=\"muted\">{} {}</p>",
            escape(w.sent_at),
            escape(&local_time(state, at))
        ));
    }
    b.push_str(&format!("<p class=\"message\">{}</p>", escape(&p.text)));
    if let Some((at, text)) = &p.latest_update {
        b.push_str(&format!(
            "<section class=\"ok\" aria-label=\"{lu}\"><h2>{lu} — {}</h2><p>{}</p></section>",
            escape(&local_time(state, *at)),
            escape(text),
            lu = escape(w.latest_update),
        ));
    }
    b.push_str(&format!(
        "<p class=\"muted\">{} {}.</p>",
        escape(w.for_whom),
        escape(&r.name)
    ));
    if let Some(why) = problem {
        b.push_str(&format!(
            "<p class=\"warn\" role=\"alert\">{}: {}.</p>",
            escape(w.choose),
            escape(why)
        ));
    }
    if saved {
        b.push_str(&format!(
            "<p class=\"ok\" role=\"status\">{}</p>",
            escape(w.thanks)
        ));
    }
    // What was recorded, per child.
    if let Some(at) = r.acked_at {
        let mut s = format!(
            "{} {}.",
            escape(w.confirmed_at),
            escape(&local_time(state, at))
        );
        let answered: Vec<String> = if r.students.is_empty() {
            p.pickups
                .get(&r.person_id)
                .and_then(|k| p.choices.iter().find(|c| &c.key == k))
                .map(|c| vec![format!("<strong>{}</strong>", escape(label(c, lang)))])
                .unwrap_or_default()
        } else {
            r.students
                .iter()
                .filter_map(|st| {
                    let k = p.pickups.get(&st.id)?;
                    let c = p.choices.iter().find(|c| &c.key == k)?;
                    Some(format!(
                        "{}: <strong>{}</strong>",
                        escape(&st.name),
                        escape(label(c, lang))
                    ))
                })
                .collect()
        };
        if !answered.is_empty() {
            s.push_str(&format!(
                " {}:</p><ul class=\"recorded\"><li>{}</li></ul><p class=\"ok\">",
                escape(w.your_choice),
                answered.join("</li><li>")
            ));
        }
        b.push_str(&format!("<div class=\"ok\"><p>{s}</p></div>"));
    } else if matches!(p.state, PageState::Closed | PageState::Cancelled) {
        b.push_str(&format!(
            "<p class=\"muted\">{}</p>",
            escape(w.not_answered)
        ));
    }
    match p.state {
        PageState::Closed => {
            b.push_str(&format!("<p class=\"warn\">{}</p>", escape(w.closed)));
            return b;
        }
        PageState::Cancelled => return b,
        PageState::Locked => {
            b.push_str(&format!("<p class=\"warn\">{}</p>", escape(w.locked)));
            return b;
        }
        PageState::Open => {}
    }
    let action = format!("/a/{}", escape(token));
    if p.choices.is_empty() {
        if !r.students.is_empty() {
            b.push_str(&format!("<h2>{}</h2><ul>", escape(w.your_children)));
            for st in &r.students {
                b.push_str(&format!(
                    "<li>{} — {}</li>",
                    escape(&st.name),
                    escape(&st.school_name)
                ));
            }
            b.push_str("</ul>");
        }
        if r.acked_at.is_none() {
            b.push_str(&format!(
                "<form method=\"post\" action=\"{action}\"><input type=\"hidden\" name=\"ack\" value=\"1\"><button type=\"submit\">{}</button></form>",
                escape(w.received)
            ));
        }
        return b;
    }
    b.push_str(&format!("<form method=\"post\" action=\"{action}\">"));
    if r.students.is_empty() {
        choice_group(
            &mut b,
            "choice",
            w.choose,
            &p.choices,
            p.pickups.get(&r.person_id).map(String::as_str),
            lang,
            0,
        );
    } else {
        b.push_str(&format!("<h2>{}</h2>", escape(w.your_children)));
        for (i, st) in r.students.iter().enumerate() {
            let legend = format!(
                "{} — {}{}",
                st.name,
                st.school_name,
                if st.grade.is_empty() {
                    String::new()
                } else {
                    format!(", {}", st.grade)
                }
            );
            choice_group(
                &mut b,
                &format!("choice-{}", st.id),
                &legend,
                &p.choices,
                p.pickups.get(&st.id).map(String::as_str),
                lang,
                i,
            );
        }
    }
    b.push_str(&format!(
        "<button type=\"submit\">{}</button></form>",
        escape(w.save)
    ));
    if let Some(d) = p.alert.ack_deadline {
        b.push_str(&format!(
            "<p class=\"muted\">{} {}.</p>",
            escape(w.change),
            escape(&local_time(state, d))
        ));
    }
    b
}

pub async fn ack_page(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !plausible(&token) {
        return not_found(&state);
    }
    match ack::load_page(&state, token.clone()).await {
        Ok(Some(p)) => {
            let body = render(&state, &token, &p, q.contains_key("saved"), None);
            html_page(
                StatusCode::OK,
                layout(&p.recipient.language, &p.alert.title, None, &body),
            )
        }
        Ok(None) => not_found(&state),
        Err(e) => {
            tracing::error!(error = %e, "Cannot load an acknowledgement page.");
            internal()
        }
    }
}

pub async fn ack_submit(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    if !plausible(&token) {
        return not_found(&state);
    }
    match ack::submit(&state, token.clone(), form).await {
        Ok(SubmitOutcome::Invalid) => not_found(&state),
        // Recorded, changed or unchanged: the answer stands; show it (POST/redirect/GET).
        Ok(SubmitOutcome::Saved) => (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, format!("/a/{token}?saved=1")),
                (header::CACHE_CONTROL, "no-store".to_string()),
            ],
        )
            .into_response(),
        Ok(SubmitOutcome::BadAnswer(p, why)) => {
            let body = render(&state, &token, &p, false, Some(&why));
            html_page(
                StatusCode::UNPROCESSABLE_ENTITY,
                layout(&p.recipient.language, &p.alert.title, None, &body),
            )
        }
        Ok(SubmitOutcome::Refused(p, outcome)) => {
            let status = match outcome {
                AckOutcome::Locked => StatusCode::CONFLICT,
                _ => StatusCode::GONE,
            };
            let body = render(&state, &token, &p, false, None);
            html_page(
                status,
                layout(&p.recipient.language, &p.alert.title, None, &body),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "Cannot record an acknowledgement.");
            internal()
        }
    }
}
