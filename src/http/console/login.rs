//! Token sign-in (break-glass: `klaxon token create` prints one) and
//! sign-out. The token becomes an `HttpOnly`, `SameSite=Strict` cookie;
//! sign-out clears it and is itself a CSRF-checked form.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{escape, page};
use crate::app::AppState;
use crate::http::session::{COOKIE, Operator, check_csrf};
use crate::store::tokens;

/// Only a path on this site: never `//host` or a full URL.
fn safe_next(next: Option<&String>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.clone(),
        _ => "/".into(),
    }
}

fn form_body(next: &str, problem: Option<&str>) -> String {
    let problem = problem
        .map(|p| format!("<p class=\"warn\" role=\"alert\">{}</p>", escape(p)))
        .unwrap_or_default();
    format!(
        "<h1>klaxon: sign in</h1>{problem}\
<form method=\"post\" action=\"/login\">\
<input type=\"hidden\" name=\"next\" value=\"{next}\">\
<label for=\"token\">API token</label>\
<p class=\"muted\" id=\"token-help\">Create one with <code>klaxon token create --role operator --name \"your name\"</code>.</p>\
<input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" aria-describedby=\"token-help\" required style=\"width:100%\">\
<p><button type=\"submit\">Sign in</button></p></form>",
        next = escape(next),
    )
}

pub async fn form(
    State(state): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let next = safe_next(q.get("next"));
    page(&state, None, "klaxon: sign in", &form_body(&next, None))
}

pub async fn submit(
    State(state): State<Arc<AppState>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let token = form.get("token").cloned().unwrap_or_default();
    let next = safe_next(form.get("next"));
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
                    (header::LOCATION, next),
                    (
                        header::SET_COOKIE,
                        format!(
                            "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200{secure}"
                        ),
                    ),
                ],
            )
                .into_response()
        }
        _ => {
            state
                .metrics
                .inc("klaxon_http_auth_failures_total", &[("reason", "login")]);
            let mut r = page(
                &state,
                None,
                "klaxon: sign in",
                &form_body(&next, Some("That token is not valid or has been revoked.")),
            );
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            r
        }
    }
}

pub async fn logout(op: Operator, Form(form): Form<HashMap<String, String>>) -> Response {
    if let Err(r) = check_csrf(&op, form.get("csrf").map(String::as_str).unwrap_or("")) {
        return r;
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/login".to_string()),
            (
                header::SET_COOKIE,
                format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
            ),
        ],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next(Some(&"/alerts/3".to_string())), "/alerts/3");
        assert_eq!(safe_next(Some(&"//evil.example".to_string())), "/");
        assert_eq!(safe_next(Some(&"https://evil.example".to_string())), "/");
        assert_eq!(safe_next(Some(&"/\\evil".to_string())), "/");
        assert_eq!(safe_next(None), "/");
    }
}
