//! TEMPORARY shim: replaced by the auth branch.
//!
//! The console's view of who is signed in, with the exact names the auth
//! branch provides (`Scope`, `Operator`, `csrf_input`, `check_csrf`),
//! implemented over today's sign-in: an API token presented as a bearer
//! header or as the `klaxon_token` cookie. Every token is district-wide.
//! The CSRF token is an HMAC of the presented token under the ack key, so it
//! is bound to the sign-in and checked in constant time.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::app::AppState;
use crate::store::tokens::{self, ApiRole};

/// What an operator may see and act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    District,
    Schools(Vec<String>),
}

impl Scope {
    /// Whether every school of `schools` is in scope (an empty list means
    /// the whole district, which only a district scope allows).
    pub fn allows_schools(&self, schools: &[String]) -> bool {
        match self {
            Scope::District => true,
            Scope::Schools(mine) => !schools.is_empty() && schools.iter().all(|s| mine.contains(s)),
        }
    }
}

/// The person behind a console request.
#[derive(Debug, Clone)]
pub struct Operator {
    /// Who, as the audit log and the alert's `created_by` record it.
    pub actor: String,
    /// How the pages greet them.
    pub display: String,
    pub role: ApiRole,
    pub scope: Scope,
    /// The token every form of this sign-in carries.
    pub csrf: String,
}

/// The name of the sign-in cookie.
pub const COOKIE: &str = "klaxon_token";

fn presented(parts: &Parts) -> Option<String> {
    if let Some(t) = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(t.trim().to_string());
    }
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|c| c.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

fn mac(state: &AppState, token: &str) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(state.ack_key.as_bytes()).expect("any key length");
    m.update(b"klaxon-csrf-v1");
    m.update(token.as_bytes());
    m
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn to_login(parts: &Parts) -> Response {
    let next = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut enc = String::new();
    for b in next.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            enc.push(b as char);
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, format!("/login?next={enc}"))],
    )
        .into_response()
}

impl FromRequestParts<Arc<AppState>> for Operator {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let Some(token) = presented(parts) else {
            return Err(to_login(parts));
        };
        let t = token.clone();
        let caller = match state.store.read(move |c| tokens::lookup(c, &t)).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                state
                    .metrics
                    .inc("klaxon_http_auth_failures_total", &[("reason", "invalid")]);
                return Err(to_login(parts));
            }
            Err(e) => return Err(super::ApiError::from(e).into_response()),
        };
        let csrf = hex(&mac(state, &token).finalize().into_bytes());
        Ok(Operator {
            actor: caller.name.clone(),
            display: caller.name,
            role: caller.role,
            scope: Scope::District,
            csrf,
        })
    }
}

/// The hidden field every console form carries.
pub fn csrf_input(op: &Operator) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        crate::markup::escape(&op.csrf)
    )
}

/// Refuses a form whose CSRF token is not this sign-in's (403), comparing
/// in constant time. The signature is the one the auth branch provides.
#[allow(clippy::result_large_err)]
pub fn check_csrf(op: &Operator, submitted: &str) -> Result<(), Response> {
    use subtle_eq::ct_eq;
    if ct_eq(op.csrf.as_bytes(), submitted.as_bytes()) {
        Ok(())
    } else {
        Err((
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "This form has expired or did not come from this console. Go back, reload the page and try again.",
        )
            .into_response())
    }
}

mod subtle_eq {
    /// Equal length and equal bytes, without stopping at the first difference.
    pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_school_scope_allows_only_its_schools() {
        let s = Scope::Schools(vec!["S1".into(), "S2".into()]);
        assert!(s.allows_schools(&["S1".into()]));
        assert!(!s.allows_schools(&["S1".into(), "S3".into()]));
        assert!(
            !s.allows_schools(&[]),
            "an empty list is the whole district"
        );
        assert!(Scope::District.allows_schools(&[]));
    }

    #[test]
    fn csrf_comparison_needs_every_byte() {
        let op = Operator {
            actor: "a".into(),
            display: "a".into(),
            role: ApiRole::Operator,
            scope: Scope::District,
            csrf: "abcd".into(),
        };
        assert!(check_csrf(&op, "abcd").is_ok());
        assert!(check_csrf(&op, "abce").is_err());
        assert!(check_csrf(&op, "abc").is_err());
        assert!(check_csrf(&op, "").is_err());
    }
}
