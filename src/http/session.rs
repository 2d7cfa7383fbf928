//! Console sign-in: server-side sessions, CSRF tokens, the break-glass token
//! sign-in and sign-out. People sign in through the district's identity
//! provider (`oidc`); an API token still works at `/login` for break-glass
//! use, checked once and turned into a session (the cookie never holds it).
//!
//! Invariant: the session cookie authorises console pages only; `/api/v1`
//! reads bearer tokens and nothing else (`super::authorize`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::Form;
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{escape, html_page, layout};
use crate::app::AppState;
use crate::config::{Dur, Issues};
pub use crate::domain::Scope;
use crate::store::sessions::{self, NewSession};
use crate::store::tokens::{self, ApiRole};

/// The session cookie: a random 256-bit id; the store keeps its SHA-256.
pub const SESSION_COOKIE: &str = "klaxon_session";
/// Binds the token sign-in form to the browser that loaded it.
const LOGIN_COOKIE: &str = "klaxon_login";

/// `[console]`: how long sessions live and who may sign in as what.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// A session unused this long ends.
    pub session_idle: Dur,
    /// A session ends this long after sign-in, however busy.
    pub session_max: Dur,
    /// `[[console.roles]]`: identity-provider people and groups to roles
    /// and scopes; the first rule that matches wins.
    pub roles: Vec<RoleRule>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            session_idle: Dur::secs(30 * 60),
            session_max: Dur::secs(12 * 3600),
            roles: Vec::new(),
        }
    }
}

/// One `[[console.roles]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRule {
    /// The person's email, as the identity provider states it (any case).
    pub match_email: Option<String>,
    /// A value of the ID token's groups claim (`[oidc] groups_claim`).
    pub match_group: Option<String>,
    /// viewer, operator or admin.
    pub role: String,
    /// School sourcedIds; omitted means the whole district.
    pub schools: Option<Vec<String>>,
}

impl ConsoleConfig {
    pub fn validate(&self, oidc_configured: bool, issues: &mut Issues) {
        if self.session_idle.0.is_zero() {
            issues.push("console.session_idle", "must be longer than zero");
        }
        if self.session_max.0 < self.session_idle.0 {
            issues.push(
                "console.session_max",
                format!(
                    "must be at least console.session_idle ({})",
                    self.session_idle
                ),
            );
        }
        for (i, r) in self.roles.iter().enumerate() {
            let p = format!("console.roles[{i}]");
            match (&r.match_email, &r.match_group) {
                (None, None) => issues.push(
                    format!("{p}.match_email"),
                    "set `match_email` or `match_group`: whom this rule is for",
                ),
                (Some(_), Some(_)) => issues.push(
                    format!("{p}.match_group"),
                    "set `match_email` or `match_group`, not both (use two rules)",
                ),
                (Some(e), None) if !e.contains('@') => issues.push(
                    format!("{p}.match_email"),
                    format!("`{e}` is not an email address"),
                ),
                _ => {}
            }
            if ApiRole::parse(&r.role).is_none() {
                issues.push(
                    format!("{p}.role"),
                    format!("unknown role `{}`; use viewer, operator or admin", r.role),
                );
            }
            if let Some(s) = &r.schools
                && (s.is_empty() || s.iter().any(|x| x.trim().is_empty()))
            {
                issues.push(
                    format!("{p}.schools"),
                    "list at least one school sourcedId, or leave `schools` out for the whole district",
                );
            }
        }
        if oidc_configured && self.roles.is_empty() {
            issues.push(
                "console.roles",
                "[oidc] is set but no [[console.roles]] maps anyone to a role; everyone would be refused",
            );
        }
    }

    /// The role and scope of a person the identity provider vouched for,
    /// or `None` when no rule names them.
    pub fn map_person(&self, email: Option<&str>, groups: &[String]) -> Option<(ApiRole, Scope)> {
        self.roles.iter().find_map(|r| {
            let hit = match (&r.match_email, &r.match_group) {
                (Some(e), _) => email.is_some_and(|m| m.eq_ignore_ascii_case(e)),
                (None, Some(g)) => groups.iter().any(|x| x == g),
                (None, None) => false,
            };
            hit.then(|| {
                let role = ApiRole::parse(&r.role)?;
                let scope = match &r.schools {
                    None => Scope::District,
                    Some(s) => Scope::Schools(s.clone()),
                };
                Some((role, scope))
            })
            .flatten()
        })
    }
}

/// Sign-in state shared by the handlers: the per-client limiter on token
/// sign-ins and the identity provider's client.
pub struct Auth {
    attempts: DefaultKeyedRateLimiter<IpAddr>,
    pub oidc: Option<super::oidc::OidcClient>,
}

impl Auth {
    /// Five token sign-ins at once per client address, then one every 12 s.
    pub fn new(oidc: Option<super::oidc::OidcClient>) -> Auth {
        let quota = Quota::with_period(std::time::Duration::from_secs(12))
            .expect("a non-zero period")
            .allow_burst(NonZeroU32::new(5).expect("non-zero"));
        Auth {
            attempts: RateLimiter::keyed(quota),
            oidc,
        }
    }
}

/// The signed-in operator of a console page.
#[derive(Debug, Clone)]
pub struct Operator {
    /// The audit actor: `oidc:alice@example.org` or `token:front office`.
    pub actor: String,
    /// What the pages call them.
    pub display: String,
    pub role: ApiRole,
    pub scope: Scope,
    /// This session's form token: every form carries it (`csrf_input`).
    pub csrf: String,
}

impl Operator {
    /// 403 page unless the operator's role is at least `min`.
    // The refusal is the whole answer (a page), returned as is by handlers.
    #[allow(clippy::result_large_err)]
    pub fn require(&self, min: ApiRole) -> Result<(), Response> {
        if self.role >= min {
            return Ok(());
        }
        Err(message_page(
            StatusCode::FORBIDDEN,
            "Not allowed",
            &format!(
                "You are signed in as a {}; this needs an {} (ask district IT).",
                self.role.as_str(),
                min.as_str()
            ),
        ))
    }

    /// 403 page unless every one of `schools` is in the operator's scope
    /// (none: district-wide, which needs the whole district).
    // The refusal is the whole answer (a page), returned as is by handlers.
    #[allow(clippy::result_large_err)]
    pub fn require_schools(&self, schools: &[String]) -> Result<(), Response> {
        if self.scope.allows_schools(schools) {
            return Ok(());
        }
        Err(message_page(
            StatusCode::FORBIDDEN,
            "Outside your schools",
            &format!(
                "You may act for {}; this concerns {}.",
                self.scope,
                if schools.is_empty() {
                    "the whole district".to_string()
                } else {
                    format!("school(s) {}", schools.join(", "))
                }
            ),
        ))
    }
}

/// The value of cookie `name`, if the request carries it.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|c| c.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// 32 random bytes, base64url: session ids, CSRF tokens, OIDC binding.
pub fn random_token() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source is available");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Compares two secrets in constant time (their SHA-256, so the length of
/// the expected one does not leak either).
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

/// Where a sign-in may send the browser afterwards: a path on this site.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.into(),
        _ => "/".into(),
    }
}

/// `Secure` when the public URL is https (behind the district's proxy).
fn secure_attr(state: &AppState) -> &'static str {
    if state.config.server.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

/// The client's address as the listener saw it ("unknown" in unit tests).
pub fn client_ip(parts_ext: &axum::http::Extensions) -> Option<IpAddr> {
    parts_ext
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip())
}

impl FromRequestParts<Arc<AppState>> for Operator {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Operator, Response> {
        let to_login = || {
            let path = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let loc = format!("/login?next={}", url_escape(path));
            (StatusCode::SEE_OTHER, [(header::LOCATION, loc)]).into_response()
        };
        // A script (or a test) may read and act on console pages with an API
        // token, as on the API: a browser never attaches it cross-site, and
        // its forms still carry a token derived from it.
        if let Some(bearer) = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_string())
        {
            let t = bearer.clone();
            return match state.store.read(move |c| tokens::lookup(c, &t)).await {
                Ok(Some(caller)) => Ok(Operator {
                    actor: caller.name.clone(),
                    display: caller.name,
                    role: caller.role,
                    scope: caller.scope,
                    csrf: {
                        let d = Sha256::new()
                            .chain_update(b"klaxon-console-bearer-csrf\0")
                            .chain_update(state.ack_key.as_bytes())
                            .chain_update(bearer.as_bytes())
                            .finalize();
                        crate::domain::text::hex(&d)
                    },
                }),
                _ => Err(message_page(
                    StatusCode::UNAUTHORIZED,
                    "Not signed in",
                    "That API token is not valid (revoked or mistyped).",
                )),
            };
        }
        let Some(id) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(to_login());
        };
        let now = state.now_ms();
        let idle = state.config.console.session_idle.0.as_millis() as i64;
        let sid = id.clone();
        let row = match state
            .store
            .read(move |c| sessions::lookup(c, &sid, now, idle))
            .await
        {
            Ok(Some(r)) => r,
            Ok(None) => return Err(to_login()),
            Err(e) => {
                tracing::error!(error = %e, "Cannot read the session store.");
                return Err(message_page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "The sign-in could not be checked; see the daemon's log.",
                ));
            }
        };
        // One write a minute at most per session, not one per page.
        if now - row.last_seen > 60_000 {
            let _ = state
                .store
                .write(move |c| sessions::touch(c, &id, now))
                .await;
        }
        Ok(Operator {
            actor: row.actor,
            display: row.display,
            role: row.role,
            scope: row.scope,
            csrf: row.csrf,
        })
    }
}

/// The hidden form field every console form carries.
pub fn csrf_input(op: &Operator) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        escape(&op.csrf)
    )
}

/// Checks a submitted form token against the session's, in constant time;
/// a 403 page when it is missing or wrong (a forged or stale form).
// The refusal is the whole answer (a page), returned as is by handlers.
#[allow(clippy::result_large_err)]
pub fn check_csrf(op: &Operator, submitted: &str) -> Result<(), Response> {
    if !submitted.is_empty() && secrets_equal(&op.csrf, submitted) {
        return Ok(());
    }
    Err(message_page(
        StatusCode::FORBIDDEN,
        "Form expired",
        "This form is out of date or did not come from this console, so nothing was done. Go back, reload the page and try again.",
    ))
}

/// The sign-out button for page headers.
pub fn logout_form(op: &Operator) -> String {
    format!(
        "<form method=\"post\" action=\"/logout\"><p>Signed in as {} ({}, {}). {}<button type=\"submit\">Sign out</button></p></form>",
        escape(&op.display),
        op.role.as_str(),
        escape(&op.scope.to_string()),
        csrf_input(op)
    )
}

/// A short page with a heading and one sentence.
pub fn message_page(status: StatusCode, title: &str, sentence: &str) -> Response {
    html_page(
        status,
        layout(
            "en",
            title,
            None,
            &format!(
                "<h1>{}</h1><p>{}</p><p><a href=\"/login\">Sign in</a> · <a href=\"/\">Alerts</a></p>",
                escape(title),
                escape(sentence)
            ),
        ),
    )
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Starts a session and answers with its cookie set; `then` is the rest of
/// the response (a redirect or a page).
pub async fn begin_session(
    state: &AppState,
    new: NewSession,
    method: &str,
    then: Response,
) -> Response {
    let id = random_token();
    let now = state.now_ms();
    let max_ms = state.config.console.session_max.0.as_millis() as i64;
    let idle = state.config.console.session_idle.0.as_millis() as i64;
    let sid = id.clone();
    let method_s = method.to_string();
    let saved = state
        .store
        .write(move |c| {
            sessions::create(c, &sid, &new, now, now + max_ms, idle)?;
            sessions::audit(
                c,
                now,
                &new.actor,
                "signin",
                serde_json::json!({
                    "method": method_s,
                    "role": new.role.as_str(),
                    "scope": new.scope.to_column(),
                }),
                &new.origin,
            )
        })
        .await;
    if let Err(e) = saved {
        tracing::error!(error = %e, "Cannot save a new session.");
        return message_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in not saved",
            "The session could not be saved, so you are not signed in. Try again in a moment.",
        );
    }
    state.metrics.inc(
        "klaxon_signins_total",
        &[("method", method), ("outcome", "ok")],
    );
    tracing::info!(method, "Signed in.");
    let mut resp = then;
    let cookie = format!(
        "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        max_ms / 1000,
        secure_attr(state)
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// Records a refused sign-in (audit and metrics) for `actor`.
pub async fn refused(state: &AppState, actor: &str, method: &str, reason: &str, origin: &str) {
    state.metrics.inc(
        "klaxon_signins_total",
        &[("method", method), ("outcome", "refused")],
    );
    tracing::warn!(method, reason, "Sign-in refused.");
    let (actor, method, reason, origin) = (
        actor.to_string(),
        method.to_string(),
        reason.to_string(),
        origin.to_string(),
    );
    let now = state.now_ms();
    if let Err(e) = state
        .store
        .write(move |c| {
            sessions::audit(
                c,
                now,
                &actor,
                "signin.refused",
                serde_json::json!({"method": method, "reason": reason}),
                &origin,
            )
        })
        .await
    {
        tracing::error!(error = %e, "Cannot record a refused sign-in in the audit log.");
    }
}

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

/// The sign-in page: the district's identity provider first, the API token
/// (break-glass) below. The token form is bound to this browser by a
/// cookie and a matching hidden field.
pub async fn login_form(
    State(state): State<Arc<AppState>>,
    Query(q): Query<NextQuery>,
) -> Response {
    let next = safe_next(q.next.as_deref());
    let binding = random_token();
    let mut b = String::from("<h1>klaxon — sign in</h1>");
    if let Some(o) = &state.auth.oidc {
        b.push_str(&format!(
            "<p><a class=\"button\" href=\"/auth/login?next={}\"><strong>Sign in with {}</strong></a></p>",
            url_escape(&next),
            escape(o.label())
        ));
        b.push_str("<h2>Break-glass: sign in with an API token</h2>");
    }
    b.push_str(&format!(
        "<form method=\"post\" action=\"/login\">\
<input type=\"hidden\" name=\"csrf\" value=\"{binding}\">\
<input type=\"hidden\" name=\"next\" value=\"{}\">\
<label for=\"t\">API token (create one with <code>klaxon token create</code>)</label>\
<input id=\"t\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required style=\"width:100%;font-size:1.125rem;padding:.5rem\">\
<button type=\"submit\">Sign in</button></form>",
        escape(&next)
    ));
    let mut resp = html_page(StatusCode::OK, layout("en", "klaxon sign in", None, &b));
    let cookie = format!(
        "{LOGIN_COOKIE}={binding}; HttpOnly; SameSite=Strict; Path=/login; Max-Age=1800{}",
        secure_attr(&state)
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// Break-glass sign-in with an API token: checked once, then a session.
pub async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let origin = peer.ip().to_string();
    let submitted = form.get("csrf").map(String::as_str).unwrap_or("");
    let bound = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if bound.is_empty() || !secrets_equal(&bound, submitted) {
        state.metrics.inc(
            "klaxon_signins_total",
            &[("method", "token"), ("outcome", "csrf")],
        );
        return message_page(
            StatusCode::FORBIDDEN,
            "Form expired",
            "This sign-in form is out of date or did not come from this console. Reload the sign-in page and try again.",
        );
    }
    if state.auth.attempts.check_key(&peer.ip()).is_err() {
        state.metrics.inc(
            "klaxon_signins_total",
            &[("method", "token"), ("outcome", "rate-limited")],
        );
        state.auth.attempts.retain_recent();
        let mut r = message_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many sign-in attempts",
            "Too many sign-in attempts from your address. Wait a minute, then try again.",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        return r;
    }
    let token = form.get("token").cloned().unwrap_or_default();
    let next = safe_next(form.get("next").map(String::as_str));
    let looked = state.store.read(move |c| tokens::lookup(c, &token)).await;
    match looked {
        Ok(Some(caller)) => {
            let new = NewSession {
                actor: format!("token:{}", caller.name),
                display: format!("{} (API token)", caller.name),
                role: caller.role,
                scope: caller.scope.clone(),
                csrf: random_token(),
                token_id: Some(caller.id),
                origin,
            };
            let mut then = (StatusCode::SEE_OTHER, [(header::LOCATION, next)]).into_response();
            then.headers_mut().append(
                header::SET_COOKIE,
                HeaderValue::from_static("klaxon_login=; Path=/login; Max-Age=0"),
            );
            begin_session(&state, new, "token", then).await
        }
        Ok(None) => {
            refused(
                &state,
                "anonymous",
                "token",
                "invalid or revoked token",
                &origin,
            )
            .await;
            message_page(
                StatusCode::UNAUTHORIZED,
                "That token is not valid",
                "The token is unknown or was revoked. Check it and try again.",
            )
        }
        Err(e) => super::ApiError::from(e).into_response(),
    }
}

/// Ends the session (a form with the session's CSRF token).
pub async fn logout(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    op: Operator,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(r) = check_csrf(&op, form.get("csrf").map(String::as_str).unwrap_or("")) {
        return r;
    }
    let Some(id) = cookie(&headers, SESSION_COOKIE) else {
        return message_page(
            StatusCode::BAD_REQUEST,
            "Not signed in",
            "There is no session to end.",
        );
    };
    let now = state.now_ms();
    let (actor, origin) = (op.actor.clone(), peer.ip().to_string());
    let done = state
        .store
        .write(move |c| {
            sessions::delete(c, &id)?;
            sessions::audit(c, now, &actor, "signout", serde_json::json!({}), &origin)
        })
        .await;
    if let Err(e) = done {
        tracing::error!(error = %e, "Cannot end a session.");
        return message_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Not signed out",
            "The session could not be ended. Try again in a moment.",
        );
    }
    let cookie = format!(
        "{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}",
        secure_attr(&state)
    );
    let mut resp = message_page(
        StatusCode::OK,
        "Signed out",
        "You are signed out of klaxon.",
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        email: Option<&str>,
        group: Option<&str>,
        role: &str,
        schools: Option<&[&str]>,
    ) -> RoleRule {
        RoleRule {
            match_email: email.map(Into::into),
            match_group: group.map(Into::into),
            role: role.into(),
            schools: schools.map(|s| s.iter().map(|x| x.to_string()).collect()),
        }
    }

    #[test]
    fn people_map_to_the_first_rule_that_names_them() {
        let c = ConsoleConfig {
            roles: vec![
                rule(Some("Alice@Example.org"), None, "admin", None),
                rule(
                    None,
                    Some("principals-north"),
                    "operator",
                    Some(&["S1", "S2"]),
                ),
                rule(None, Some("staff"), "viewer", Some(&["S1"])),
            ],
            ..ConsoleConfig::default()
        };
        assert_eq!(
            c.map_person(Some("alice@example.org"), &[]),
            Some((ApiRole::Admin, Scope::District))
        );
        assert_eq!(
            c.map_person(
                Some("bob@example.org"),
                &["staff".into(), "principals-north".into()]
            ),
            Some((
                ApiRole::Operator,
                Scope::Schools(vec!["S1".into(), "S2".into()])
            ))
        );
        assert_eq!(
            c.map_person(Some("eve@example.org"), &["other".into()]),
            None
        );
        assert_eq!(c.map_person(None, &[]), None);
    }

    #[test]
    fn a_bad_role_rule_names_its_key() {
        let c = ConsoleConfig {
            roles: vec![
                rule(None, None, "operator", None),
                rule(Some("x@y"), None, "boss", Some(&[])),
            ],
            ..ConsoleConfig::default()
        };
        let mut issues = Issues::default();
        c.validate(true, &mut issues);
        let keys: Vec<_> = issues.list.iter().map(|i| i.key.as_str()).collect();
        assert!(keys.contains(&"console.roles[0].match_email"), "{keys:?}");
        assert!(keys.contains(&"console.roles[1].role"), "{keys:?}");
        assert!(keys.contains(&"console.roles[1].schools"), "{keys:?}");
    }

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(safe_next(Some("/alerts/3?x=1")), "/alerts/3?x=1");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", ""));
    }
}
