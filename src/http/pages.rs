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
use crate::ack::{self, words};
use crate::app::AppState;
use crate::playbook::Choice;
use crate::store::StoreError;
use crate::store::alerts::{self, AckOutcome, AlertRow, RecipientRow};
use crate::store::now_ms;

/// Tokens are base64url; anything else is refused before touching the store.
fn plausible(token: &str) -> bool {
    (16..=64).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn load(
    state: &AppState,
    token: String,
) -> Result<Option<(RecipientRow, AlertRow)>, StoreError> {
    state
        .store
        .read(move |c| {
            let Some(r) = alerts::recipient_by_token(c, &token)? else {
                return Ok(None);
            };
            let a = alerts::get(c, r.alert_id)?;
            Ok(Some((r, a)))
        })
        .await
}

fn not_found() -> Response {
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
        StatusCode::INTERNAL_SERVER_ERROR,
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

fn render(state: &AppState, token: &str, r: &RecipientRow, a: &AlertRow, saved: bool) -> String {
    let lang = r.language.as_str();
    let w = words(lang);
    let choices: &[Choice] = state
        .config
        .playbooks
        .get(&a.playbook)
        .map(|p| p.choices.as_slice())
        .unwrap_or(&[]);
    let now = now_ms();
    let locked = r.acked_at.is_some() && a.ack_deadline.is_some_and(|d| now > d);
    let mut b = String::new();
    if a.drill {
        b.push_str(&format!(
            "<p class=\"banner drill\" role=\"status\">{}</p>",
            escape(w.drill)
        ));
    }
    if a.state == "cancelled" {
        b.push_str(&format!(
            "<p class=\"warn\" role=\"status\">{}</p>",
            escape(w.cancelled)
        ));
    }
    b.push_str(&format!(
        "<h1>{} — {}</h1>",
        escape(&a.title),
        escape(&a.place)
    ));
    if let Some(m) = &a.message {
        b.push_str(&format!("<p>{}</p>", escape(m)));
    }
    b.push_str(&format!(
        "<p class=\"muted\">{} {}.</p>",
        escape(w.for_whom),
        escape(&r.name)
    ));
    if !r.students.is_empty() {
        b.push_str(&format!("<h2>{}</h2><ul>", escape(w.your_children)));
        for s in &r.students {
            b.push_str(&format!(
                "<li>{} — {}{}</li>",
                escape(&s.name),
                escape(&s.school_name),
                if s.grade.is_empty() {
                    String::new()
                } else {
                    format!(", grade {}", escape(&s.grade))
                }
            ));
        }
        b.push_str("</ul>");
    }
    if saved {
        b.push_str(&format!(
            "<p class=\"ok\" role=\"status\">{}</p>",
            escape(w.thanks)
        ));
    }
    if let Some(at) = r.acked_at {
        let mut s = format!(
            "{} {}.",
            escape(w.confirmed_at),
            escape(&local_time(state, at))
        );
        if let Some(k) = &r.ack_choice
            && let Some(c) = choices.iter().find(|c| &c.key == k)
        {
            s.push_str(&format!(
                " {}: <strong>{}</strong>.",
                escape(w.your_choice),
                escape(label(c, lang))
            ));
        }
        b.push_str(&format!("<p class=\"ok\">{s}</p>"));
    }
    if locked {
        b.push_str(&format!("<p class=\"warn\">{}</p>", escape(w.locked)));
        return b;
    }
    let action = format!("/a/{}", escape(token));
    if choices.is_empty() {
        if r.acked_at.is_none() {
            b.push_str(&format!(
                "<form method=\"post\" action=\"{action}\"><input type=\"hidden\" name=\"ack\" value=\"1\"><button type=\"submit\">{}</button></form>",
                escape(w.received)
            ));
        }
    } else {
        b.push_str(&format!(
            "<form method=\"post\" action=\"{action}\"><fieldset><legend>{}</legend>",
            escape(w.choose)
        ));
        for (i, c) in choices.iter().enumerate() {
            let checked = if r.ack_choice.as_deref() == Some(c.key.as_str()) {
                " checked"
            } else {
                ""
            };
            b.push_str(&format!(
                "<label for=\"c{i}\"><input type=\"radio\" id=\"c{i}\" name=\"choice\" value=\"{}\" required{checked}>{}</label>",
                escape(&c.key),
                escape(label(c, lang))
            ));
        }
        b.push_str(&format!(
            "</fieldset><button type=\"submit\">{}</button></form>",
            escape(w.save)
        ));
        if let Some(d) = a.ack_deadline {
            b.push_str(&format!(
                "<p class=\"muted\">{} {}.</p>",
                escape(w.change),
                escape(&local_time(state, d))
            ));
        }
    }
    b
}

pub async fn ack_page(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !plausible(&token) {
        return not_found();
    }
    match load(&state, token.clone()).await {
        Ok(Some((r, a))) => {
            let body = render(&state, &token, &r, &a, q.contains_key("saved"));
            html_page(StatusCode::OK, layout(&r.language, &a.title, None, &body))
        }
        Ok(None) => not_found(),
        Err(e) => {
            tracing::error!(error = %e, "Cannot load an acknowledgement page.");
            internal()
        }
    }
}

pub async fn ack_submit(
    State(state): State<Arc<AppState>>,
    Path(token): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if !plausible(&token) {
        return not_found();
    }
    let (r, a) = match load(&state, token.clone()).await {
        Ok(Some(x)) => x,
        Ok(None) => return not_found(),
        Err(e) => {
            tracing::error!(error = %e, "Cannot load an acknowledgement.");
            return internal();
        }
    };
    let choices = state
        .config
        .playbooks
        .get(&a.playbook)
        .map(|p| p.choices.clone())
        .unwrap_or_default();
    let choice = form.get("choice").cloned();
    if !choices.is_empty() {
        let valid = choice
            .as_ref()
            .is_some_and(|c| choices.iter().any(|k| &k.key == c));
        if !valid {
            let body = render(&state, &token, &r, &a, false);
            let w = words(&r.language);
            return html_page(
                StatusCode::UNPROCESSABLE_ENTITY,
                layout(
                    &r.language,
                    &a.title,
                    None,
                    &format!(
                        "<p class=\"warn\" role=\"alert\">{}.</p>{body}",
                        escape(w.choose)
                    ),
                ),
            );
        }
    }
    let choice = if choices.is_empty() { None } else { choice };
    match ack::record(&state, r.id, choice, "web").await {
        Ok(AckOutcome::Locked) => {
            let body = render(&state, &token, &r, &a, false);
            html_page(
                StatusCode::CONFLICT,
                layout(&r.language, &a.title, None, &body),
            )
        }
        // Recorded, changed or unchanged: the answer stands; show it (POST/redirect/GET).
        Ok(_) => (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, format!("/a/{token}?saved=1")),
                (header::CACHE_CONTROL, "no-store".to_string()),
            ],
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "Cannot record an acknowledgement.");
            internal()
        }
    }
}
