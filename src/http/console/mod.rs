//! The operator console: the pages a safety officer works from, often on a
//! tablet and under stress. Server-rendered, so every page works without
//! JavaScript; a small script (`/console.js`) keeps the alert view live over
//! Server-Sent Events instead of reloading the page (a timed reload breaks
//! WCAG 2.2.1). One file per page:
//!
//! - `overview`: open alerts with progress, recent alerts, health.
//! - `act`: start an alert (form, preview, send); approve, all-clear, cancel.
//! - `alert`: one alert, its live figures, chart and per-school breakdown.
//! - `events`: the alert view's event stream.
//! - `lists`: who has not confirmed and the pickup plan: search, pages, CSV.
//! - `chart`: the server-drawn SVG of hand-over, delivery and confirmation.
//! - `reviews`: alerts sent without a second approval, for a second person.
//!
//! Sign-in and sign-out are `http::session` and `http::oidc`.
//!
//! Who is signed in comes from `super::session::Operator`; pages read the
//! store through its functions and never hold state of their own.

pub mod act;
pub mod alert;
pub mod chart;
pub mod events;
pub mod lists;
pub mod overview;
pub mod reviews;

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::escape;
use super::session::{Operator, csrf_input};
use crate::app::AppState;

/// The console's routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(overview::index))
        .route("/alerts/{id}", get(alert::view))
        .route("/alerts/{id}/events", get(events::stream))
        .route("/alerts/{id}/outstanding", get(lists::outstanding))
        .route("/alerts/{id}/pickup", get(lists::pickup))
        .route("/trigger", get(act::form))
        .route("/trigger/preview", axum::routing::post(act::preview))
        .route("/trigger/send", axum::routing::post(act::send))
        .route(
            "/alerts/{id}/act/{action}",
            get(act::confirm).post(act::act),
        )
        .route("/reviews", get(reviews::list))
        .route("/alerts/{id}/review", axum::routing::post(reviews::review))
        .route("/console.js", get(script))
}

/// Pages carry names and capability links: nothing caches them, nothing
/// leaks a referrer, and only our own script and stream may run.
const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        body,
    )
        .into_response()
}

/// A console page: the header (who is signed in, sign-out) and `body`.
/// `now` (ms) lets the script correct for a browser clock that differs
/// from the daemon's when it counts deadlines down.
pub fn page(state: &AppState, op: Option<&Operator>, title: &str, body: &str) -> Response {
    let nav = match op {
        Some(op) => format!(
            "<header><nav aria-label=\"Console\"><a href=\"/\">Alerts</a>{start} <a href=\"/reviews\">Reviews</a></nav>\
<form method=\"post\" action=\"/logout\" class=\"who\">{csrf}<span>Signed in as {name} ({role}, {scope})</span> \
<button type=\"submit\" class=\"link\">Sign out</button></form></header>",
            csrf = csrf_input(op),
            start = if op.role >= crate::store::tokens::ApiRole::Operator {
                " <a href=\"/trigger\">Start an alert</a>"
            } else {
                ""
            },
            name = escape(&op.display),
            role = op.role.as_str(),
            scope = escape(&op.scope.to_string()),
        ),
        None => String::new(),
    };
    html(
        StatusCode::OK,
        format!(
            r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{title}</title>
<style>{STYLE}</style>
<script src="/console.js" defer></script>
</head>
<body data-now="{now}">
{nav}
<main>
{body}
</main>
</body>
</html>
"#,
            title = escape(title),
            now = state.now_ms(),
        ),
    )
}

/// High contrast (WCAG AA on white), large targets, and nothing wider than
/// the screen: tables scroll inside their own box at 200% zoom or on a
/// 768 px tablet, the page itself never scrolls sideways.
const STYLE: &str = r#"
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;font-size:1.0625rem;line-height:1.5;color:#111;background:#fff;margin:0 auto;max-width:72rem;padding:0 1rem 2rem}
header{display:flex;flex-wrap:wrap;gap:.5rem 1.5rem;align-items:center;justify-content:space-between;border-bottom:2px solid #0b4f9c;padding:.5rem 0;margin-bottom:1rem}
header nav a{font-weight:700;font-size:1.125rem;margin-right:1rem}
.who{display:flex;flex-wrap:wrap;gap:.5rem;align-items:center;margin:0}
h1{font-size:1.5rem;line-height:1.25;overflow-wrap:anywhere}
h2{font-size:1.25rem;margin-top:2rem}
.banner{background:#8a0000;color:#fff;padding:.75rem 1rem;border-radius:.375rem;font-weight:700}
.drill{background:#5c3b00}
.ok{background:#e7f4e4;border:2px solid #1e6b1e;padding:.75rem 1rem;border-radius:.375rem}
.warn{background:#fff4e0;border:2px solid #8a5300;padding:.75rem 1rem;border-radius:.375rem}
button,.button{display:inline-block;font-size:1.0625rem;min-height:44px;padding:.5rem 1.25rem;background:#0b4f9c;color:#fff;border:0;border-radius:.375rem;cursor:pointer;text-decoration:none}
button.link{background:none;color:#0b4f9c;text-decoration:underline;padding:.25rem .5rem;min-height:44px}
button:focus,input:focus,a:focus,select:focus,textarea:focus,summary:focus{outline:3px solid #b35c00;outline-offset:2px}
input,select,textarea{font-size:1.0625rem;padding:.5rem;border:2px solid #444;border-radius:.25rem;max-width:100%}
label{display:block;font-weight:600;margin-top:.75rem}
label.check{font-weight:400;display:flex;gap:.5rem;align-items:center;min-height:44px;margin:0}
label.check input{width:1.5rem;height:1.5rem}
fieldset{border:2px solid #444;border-radius:.375rem;margin:1rem 0;padding:.5rem 1rem;display:flex;flex-wrap:wrap;gap:0 1.5rem}
legend{font-weight:700;padding:0 .25rem}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;width:100%;font-size:1rem}
caption{text-align:left;font-weight:700;padding:.25rem 0}
th,td{text-align:left;padding:.375rem .5rem;border-bottom:1px solid #767676;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
a{color:#0b4f9c}
.muted{color:#444}
.figures{display:grid;grid-template-columns:repeat(auto-fit,minmax(10rem,1fr));gap:.75rem;margin:1rem 0;padding:0}
.figures>div{border:2px solid #0b4f9c;border-radius:.375rem;padding:.5rem .75rem}
.figures dt{font-size:.9375rem;color:#333}
.figures dd{margin:0;font-size:1.5rem;font-weight:700;font-variant-numeric:tabular-nums}
.figures dd small{display:block;font-size:.9375rem;font-weight:400;color:#333}
.bar{background:#ddd;height:.5rem;border-radius:.25rem;overflow:hidden;margin-top:.25rem;border:1px solid #767676}
.bar span{display:block;height:100%;background:#1e6b1e}
svg.chart{width:100%;height:auto;max-width:48rem;display:block}
.live-note{font-size:.9375rem;color:#333}
"#;

/// The console's script: keeps the alert view's figures current from its
/// event stream and counts deadlines down. Plain JavaScript, no library;
/// the page is complete without it.
const SCRIPT: &str = r#""use strict";
(function () {
  var skew = 0;
  function setNow(ms) { skew = ms - Date.now(); }
  var b = document.body;
  if (b && b.dataset.now) setNow(Number(b.dataset.now));
  function left(ms) {
    var s = Math.round(ms / 1000), past = s < 0;
    s = Math.abs(s);
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    var t = h > 0 ? h + " h " + m + " min" : m > 0 ? m + " min " + r + " s" : r + " s";
    return past ? "passed " + t + " ago" : t + " left";
  }
  function tick() {
    var now = Date.now() + skew;
    document.querySelectorAll("[data-deadline]").forEach(function (el) {
      var d = Number(el.dataset.deadline);
      if (d) el.textContent = left(d - now);
    });
  }
  setInterval(tick, 1000);
  var live = document.querySelector("[data-events]");
  if (!live || !window.EventSource) return;
  var note = document.getElementById("live-note");
  var es = new EventSource(live.dataset.events);
  es.addEventListener("figures", function (e) {
    var d = JSON.parse(e.data);
    setNow(d.now);
    Object.keys(d.text).forEach(function (k) {
      document.querySelectorAll('[data-live="' + k + '"]').forEach(function (el) {
        if (el.textContent !== d.text[k]) el.textContent = d.text[k];
      });
    });
    Object.keys(d.deadlines || {}).forEach(function (k) {
      document.querySelectorAll('[data-live-deadline="' + k + '"]').forEach(function (el) {
        el.dataset.deadline = d.deadlines[k] || "";
      });
    });
    Object.keys(d.bars || {}).forEach(function (k) {
      document.querySelectorAll('[data-live-bar="' + k + '"]').forEach(function (el) {
        el.style.width = d.bars[k] + "%";
      });
    });
    if (d.chart) {
      var c = document.getElementById("chart");
      if (c) c.innerHTML = d.chart;
    }
    if (note) note.textContent = "Updating live. Last update " + new Date(d.now).toLocaleTimeString() + ".";
    tick();
  });
  es.addEventListener("closed", function () {
    es.close();
    if (note) note.textContent = "This alert is closed; its figures no longer change.";
  });
  es.onerror = function () {
    if (note && es.readyState === 2) note.textContent = "Live updates stopped. Use Refresh to see the latest figures.";
  };
})();
"#;

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        SCRIPT,
    )
        .into_response()
}

/// A time as the district reads it (the configured time zone).
pub fn time(state: &AppState, ms: Option<i64>) -> String {
    let Some(ms) = ms else { return "—".into() };
    let tz =
        jiff::tz::TimeZone::get(&state.config.server.timezone).unwrap_or(jiff::tz::TimeZone::UTC);
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_zoned(tz).strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// "4 min 10 s left" or "passed 2 min ago", as the script writes it.
pub fn left(deadline: i64, now: i64) -> String {
    let ms = deadline - now;
    let past = ms < 0;
    let s = (ms.abs() + 500) / 1000;
    let (h, m, r) = (s / 3600, (s % 3600) / 60, s % 60);
    let t = if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 {
        format!("{m} min {r} s")
    } else {
        format!("{r} s")
    };
    if past {
        format!("passed {t} ago")
    } else {
        format!("{t} left")
    }
}

/// A number with thousands separators, as people read counts.
pub fn num(n: i64) -> String {
    let s = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// `part` of `whole` as a percentage, 0 when there is no whole.
pub fn pct(part: i64, whole: i64) -> f64 {
    if whole <= 0 {
        0.0
    } else {
        (part as f64 * 100.0 / whole as f64).clamp(0.0, 100.0)
    }
}

/// An error page in the console's frame (store errors are logged, not shown).
pub fn error_page(state: &AppState, status: StatusCode, message: &str) -> Response {
    let mut r = page(
        state,
        None,
        "klaxon: error",
        &format!(
            "<h1>{}</h1><p><a href=\"/\">Back to the alerts</a></p>",
            escape(message)
        ),
    );
    *r.status_mut() = status;
    r
}

/// The alert `id` if the operator's scope covers its schools; otherwise a
/// 403 page (a 404 page when there is no such alert). Every page about one
/// alert starts here.
pub async fn in_scope(
    state: &AppState,
    op: &Operator,
    id: i64,
) -> Result<crate::store::alerts::AlertRow, Response> {
    let a = match state
        .store
        .read(move |c| crate::store::alerts::get(c, crate::domain::AlertId(id)))
        .await
    {
        Ok(a) => a,
        Err(crate::store::StoreError::NotFound(_)) => {
            return Err(error_page(
                state,
                axum::http::StatusCode::NOT_FOUND,
                &format!("There is no alert {id}."),
            ));
        }
        Err(e) => return Err(super::ApiError::from(e).into_response()),
    };
    let schools = super::scope::schools_of(&a.audience);
    if !op.scope.allows_schools(&schools) {
        state
            .metrics
            .inc("klaxon_http_auth_failures_total", &[("reason", "scope")]);
        return Err(super::session::message_page(
            axum::http::StatusCode::FORBIDDEN,
            "Not in your schools",
            &format!(
                "Alert {id} concerns schools outside what you may see ({})",
                op.scope
            ),
        ));
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_left_reads_like_the_script() {
        assert_eq!(left(10_000, 0), "10 s left");
        assert_eq!(left(250_000, 0), "4 min 10 s left");
        assert_eq!(left(0, 125_000), "passed 2 min 5 s ago");
        assert_eq!(left(7_260_000, 0), "2 h 1 min left");
    }

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(num(0), "0");
        assert_eq!(num(999), "999");
        assert_eq!(num(100_000), "100,000");
        assert_eq!(num(1_234_567), "1,234,567");
    }
}
