//! Sign-in through the district's identity provider over OpenID Connect:
//! authorization code with PKCE, `state` and `nonce`, discovery from
//! `issuer/.well-known/openid-configuration`, the ID token's signature
//! checked against the provider's JWKS (RS256 or ES256). The person is then
//! mapped to a role and scope by `[[console.roles]]` and gets a session.
//!
//! The `openidconnect` crate does the protocol; its reqwest is 0.12, so it
//! is built without features and talks through our reqwest 0.13 (`Http`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AsyncHttpClient, AuthorizationCode, ClientId, ClientSecret, CsrfToken, HttpRequest,
    HttpResponse, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl,
    TokenResponse,
};
use serde::Deserialize;

use super::session::{self, begin_session, message_page, random_token, refused, safe_next};
use super::{escape, html_page, layout};
use crate::app::AppState;
use crate::config::{Issues, Secret, relative_to, resolve_secret, section};
use crate::store::sessions::{self as store_sessions, NewSession};

/// Where the provider sends the browser back: `public_url` + this. Register
/// exactly that URL with the identity provider.
pub const CALLBACK_PATH: &str = "/auth/callback";
/// Binds a sign-in to the browser that started it (login CSRF). `Lax`: it
/// must come back on the provider's cross-site redirect.
const BINDING_COOKIE: &str = "klaxon_oidc";
/// How long discovery and the provider's keys are reused.
const METADATA_TTL: Duration = Duration::from_secs(300);

/// `[oidc]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The provider's issuer, e.g. "https://accounts.google.com" or
    /// "https://login.microsoftonline.com/<tenant>/v2.0".
    pub issuer: String,
    pub client_id: String,
    /// The client secret: an environment variable or a file, never the TOML.
    pub client_secret_env: Option<String>,
    pub client_secret_file: Option<std::path::PathBuf>,
    /// Scopes asked for; `openid` is always sent.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The ID token claim listing the person's groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// The sign-in button's words: "Sign in with …".
    #[serde(default = "default_label")]
    pub label: String,
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "email".into(), "profile".into()]
}

fn default_groups_claim() -> String {
    "groups".into()
}

fn default_label() -> String {
    "the district account".into()
}

/// Reads `[oidc]` from the config root, if present, and checks it.
pub fn take_config(root: &mut toml::Table, issues: &mut Issues) -> Option<OidcConfig> {
    let c: OidcConfig = section("oidc", root.remove("oidc")?, issues)?;
    match url_parts(&c.issuer) {
        Some((scheme, host)) if scheme == "https" || is_loopback(&host) => {}
        Some(_) => issues.push(
            "oidc.issuer",
            format!(
                "`{}` must be https:// (plain http only for a provider on this host)",
                c.issuer
            ),
        ),
        None => issues.push(
            "oidc.issuer",
            format!(
                "`{}` is not a URL like https://accounts.google.com",
                c.issuer
            ),
        ),
    }
    if c.client_id.trim().is_empty() {
        issues.push("oidc.client_id", "must not be empty");
    }
    if c.client_secret_env.is_none() && c.client_secret_file.is_none() {
        issues.push(
            "oidc.client_secret_env",
            "set `client_secret_env` (an environment variable) or `client_secret_file` (a file); secrets are never read from the TOML",
        );
    }
    Some(c)
}

fn url_parts(u: &str) -> Option<(String, String)> {
    let (scheme, rest) = u.split_once("://")?;
    let host = rest.split(['/', ':']).next()?.to_string();
    (!host.is_empty()).then(|| (scheme.to_ascii_lowercase(), host))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Reads the client secret as the daemon will, for `check-config`.
pub fn check_secret(config: &crate::config::Config) -> Vec<crate::config::ConfigIssue> {
    let mut issues = Issues::default();
    if let Some(o) = &config.oidc {
        read_secret(o, &config.base_dir, &mut issues);
    }
    issues.list
}

fn read_secret(o: &OidcConfig, base: &std::path::Path, issues: &mut Issues) -> Option<Secret> {
    let file = o.client_secret_file.as_ref().map(|f| relative_to(base, f));
    resolve_secret(
        "oidc",
        "client_secret",
        o.client_secret_env.as_deref(),
        file.as_deref(),
        true,
        issues,
    )
}

/// Why a sign-in through the provider failed. Shown to the person as a
/// sentence; the detail goes to the log and the audit entry.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("cannot read the identity provider's configuration: {0}")]
    Discovery(String),
    #[error("the identity provider refused the sign-in code: {0}")]
    Exchange(String),
    #[error("the identity provider's answer had no ID token")]
    NoIdToken,
    #[error("the ID token did not verify: {0}")]
    Verify(String),
    #[error("klaxon's OpenID Connect settings are unusable: {0}")]
    Config(String),
}

/// The HTTP client `openidconnect` talks through: our reqwest, no
/// redirects followed (a provider answers discovery and tokens directly).
struct Http(reqwest::Client);

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

impl<'c> AsyncHttpClient<'c> for Http {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let resp = self
                .0
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(|e| HttpError(e.to_string()))?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await.map_err(|e| HttpError(e.to_string()))?;
            let mut out = HttpResponse::new(body.to_vec());
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            Ok(out)
        })
    }
}

/// The configured provider, with its discovery document cached briefly.
pub struct OidcClient {
    config: OidcConfig,
    secret: Secret,
    redirect: String,
    http: Http,
    metadata: tokio::sync::Mutex<Option<(Instant, CoreProviderMetadata)>>,
}

impl OidcClient {
    /// Resolves the secret; an error lists the problems with their keys.
    pub fn build(
        config: &crate::config::Config,
    ) -> Result<Option<OidcClient>, Vec<crate::config::ConfigIssue>> {
        let Some(o) = &config.oidc else {
            return Ok(None);
        };
        let mut issues = Issues::default();
        let secret = read_secret(o, &config.base_dir, &mut issues);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build();
        match (secret, http) {
            (Some(secret), Ok(http)) => Ok(Some(OidcClient {
                config: o.clone(),
                secret,
                redirect: format!("{}{CALLBACK_PATH}", config.server.public_url),
                http: Http(http),
                metadata: tokio::sync::Mutex::new(None),
            })),
            (_, Err(e)) => {
                issues.push("oidc", format!("cannot build the HTTP client: {e}"));
                Err(issues.list)
            }
            (None, _) => Err(issues.list),
        }
    }

    pub fn label(&self) -> &str {
        &self.config.label
    }

    async fn metadata(&self) -> Result<CoreProviderMetadata, OidcError> {
        let mut cached = self.metadata.lock().await;
        if let Some((at, m)) = cached.as_ref()
            && at.elapsed() < METADATA_TTL
        {
            return Ok(m.clone());
        }
        let issuer = IssuerUrl::new(self.config.issuer.clone())
            .map_err(|e| OidcError::Config(format!("oidc.issuer: {e}")))?;
        let m = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| OidcError::Discovery(error_chain(&e)))?;
        *cached = Some((Instant::now(), m.clone()));
        Ok(m)
    }

    /// Where to send the browser, with the `state`, `nonce` and PKCE
    /// verifier to keep until the callback.
    async fn start(&self) -> Result<(String, String, String, String), OidcError> {
        let m = self.metadata().await?;
        let client = CoreClient::from_provider_metadata(
            m,
            ClientId::new(self.config.client_id.clone()),
            Some(ClientSecret::new(self.secret.expose().to_string())),
        )
        .set_redirect_uri(
            RedirectUrl::new(self.redirect.clone())
                .map_err(|e| OidcError::Config(format!("server.public_url: {e}")))?,
        );
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for s in self.config.scopes.iter().filter(|s| *s != "openid") {
            req = req.add_scope(openidconnect::Scope::new(s.clone()));
        }
        let (url, state, nonce) = req.set_pkce_challenge(challenge).url();
        Ok((
            url.to_string(),
            state.secret().clone(),
            nonce.secret().clone(),
            verifier.secret().clone(),
        ))
    }

    /// Exchanges the code and verifies the ID token: signature (RS256 or
    /// ES256, the provider's JWKS), issuer, audience, expiry and nonce.
    async fn finish(&self, code: String, nonce: String, pkce: String) -> Result<Person, OidcError> {
        let m = self.metadata().await?;
        let client = CoreClient::from_provider_metadata(
            m,
            ClientId::new(self.config.client_id.clone()),
            Some(ClientSecret::new(self.secret.expose().to_string())),
        )
        .set_redirect_uri(
            RedirectUrl::new(self.redirect.clone())
                .map_err(|e| OidcError::Config(format!("server.public_url: {e}")))?,
        );
        let tokens = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| OidcError::Config(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce))
            .request_async(&self.http)
            .await
            .map_err(|e| OidcError::Exchange(error_chain(&e)))?;
        let id_token = tokens.id_token().ok_or(OidcError::NoIdToken)?;
        let verifier = client.id_token_verifier().set_allowed_algs([
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
            CoreJwsSigningAlgorithm::EcdsaP256Sha256,
        ]);
        let claims = match id_token.claims(&verifier, &Nonce::new(nonce)) {
            Ok(c) => c,
            Err(e) => {
                // Perhaps the provider rotated its keys: read them afresh
                // for the next try.
                *self.metadata.lock().await = None;
                return Err(OidcError::Verify(error_chain(&e)));
            }
        };
        // An address the provider says is unverified names nobody.
        let email = claims
            .email()
            .filter(|_| claims.email_verified() != Some(false))
            .map(|e| e.as_str().to_string());
        let name = claims
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().to_string());
        // The groups claim is not a standard one: read it from the payload
        // whose signature was just verified.
        let groups = groups_claim(&id_token.to_string(), &self.config.groups_claim);
        Ok(Person {
            subject: claims.subject().as_str().to_string(),
            email,
            name,
            groups,
        })
    }
}

/// Who the provider says signed in.
#[derive(Debug)]
struct Person {
    subject: String,
    email: Option<String>,
    name: Option<String>,
    groups: Vec<String>,
}

/// The named claim of a compact JWT's payload as a list of strings (a
/// single string counts as a list of one).
fn groups_claim(jwt: &str, claim: &str) -> Vec<String> {
    use base64::Engine;
    let Some(payload) = jwt.split('.').nth(1) else {
        return Vec::new();
    };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload) else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Vec::new();
    };
    match &v[claim] {
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        serde_json::Value::String(s) => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[derive(Deserialize)]
pub struct StartQuery {
    next: Option<String>,
}

/// `GET /auth/login`: off to the identity provider.
pub async fn login(State(state): State<Arc<AppState>>, Query(q): Query<StartQuery>) -> Response {
    let Some(oidc) = &state.auth.oidc else {
        return message_page(
            StatusCode::NOT_FOUND,
            "No identity provider",
            "Sign-in through the district's identity provider is not configured; use an API token.",
        );
    };
    let (url, csrf_state, nonce, pkce) = match oidc.start().await {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "Cannot start a sign-in with the identity provider.");
            return message_page(
                StatusCode::BAD_GATEWAY,
                "The identity provider cannot be reached",
                "klaxon cannot reach the district's identity provider right now. In an emergency, sign in with an API token (break-glass) below the button on the sign-in page.",
            );
        }
    };
    let binding = random_token();
    let next = safe_next(q.next.as_deref());
    let now = state.now_ms();
    let b = binding.clone();
    let saved = state
        .store
        .write(move |c| store_sessions::put_login(c, &csrf_state, &b, &nonce, &pkce, &next, now))
        .await;
    if let Err(e) = saved {
        tracing::error!(error = %e, "Cannot save a sign-in in progress.");
        return message_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in not started",
            "The sign-in could not be saved. Try again in a moment.",
        );
    }
    let secure = if state.config.server.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{BINDING_COOKIE}={binding}; HttpOnly; SameSite=Lax; Path=/auth; Max-Age=600{secure}"
    );
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, url)]).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /auth/callback`: the provider sends the browser back here.
pub async fn callback(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let origin = peer.ip().to_string();
    let Some(oidc) = &state.auth.oidc else {
        return message_page(
            StatusCode::NOT_FOUND,
            "No identity provider",
            "Sign-in through the district's identity provider is not configured.",
        );
    };
    if let Some(err) = &q.error {
        let why = q.error_description.as_deref().unwrap_or(err);
        refused(
            &state,
            "anonymous",
            "oidc",
            &format!("provider: {err}"),
            &origin,
        )
        .await;
        return message_page(
            StatusCode::UNAUTHORIZED,
            "Not signed in",
            &format!("The identity provider did not sign you in ({why}). Try again."),
        );
    }
    let (Some(code), Some(csrf_state)) = (q.code, q.state) else {
        return message_page(
            StatusCode::BAD_REQUEST,
            "Not signed in",
            "This address is where the identity provider sends you back; start from the sign-in page.",
        );
    };
    let now = state.now_ms();
    let pending = state
        .store
        .write(move |c| store_sessions::take_login(c, &csrf_state, now))
        .await;
    let binding = session::cookie(&headers, BINDING_COOKIE).unwrap_or_default();
    let pending = match pending {
        Ok(Some(p))
            if !binding.is_empty()
                && session::secrets_equal(
                    &crate::store::tokens::hash(&binding),
                    &p.browser_hash,
                ) =>
        {
            p
        }
        Ok(_) => {
            refused(
                &state,
                "anonymous",
                "oidc",
                "unknown, used or expired state, or another browser",
                &origin,
            )
            .await;
            return message_page(
                StatusCode::BAD_REQUEST,
                "Sign-in expired",
                "This sign-in was already used, took too long, or was started in another browser. Start again from the sign-in page.",
            );
        }
        Err(e) => return super::ApiError::from(e).into_response(),
    };
    let person = match oidc
        .finish(code, pending.nonce.clone(), pending.pkce_verifier.clone())
        .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "Sign-in through the identity provider failed.");
            refused(&state, "anonymous", "oidc", &e.to_string(), &origin).await;
            return message_page(
                StatusCode::UNAUTHORIZED,
                "Not signed in",
                "The identity provider's answer could not be verified, so you are not signed in. Try again; if it keeps failing, tell district IT.",
            );
        }
    };
    let who = person
        .email
        .clone()
        .unwrap_or_else(|| format!("sub:{}", person.subject));
    let actor = format!("oidc:{who}");
    let Some((role, scope)) = state
        .config
        .console
        .map_person(person.email.as_deref(), &person.groups)
    else {
        refused(
            &state,
            &actor,
            "oidc",
            "no [[console.roles]] rule names this person",
            &origin,
        )
        .await;
        return message_page(
            StatusCode::FORBIDDEN,
            "No access to klaxon",
            &format!(
                "You signed in as {who}, but klaxon has no role for you. Ask district IT to add you (or one of your groups) to [[console.roles]]."
            ),
        );
    };
    let new = NewSession {
        display: person.name.clone().unwrap_or_else(|| who.clone()),
        actor,
        role,
        scope,
        csrf: random_token(),
        token_id: None,
        origin,
    };
    // A page, not a redirect: the browser arrived from the provider's site,
    // and a SameSite=Strict cookie set in a cross-site redirect chain is not
    // sent on its next hop; a same-site navigation from this page is.
    let next = pending.next;
    let page = layout(
        "en",
        "Signed in",
        None,
        &format!(
            "<h1>Signed in</h1><p>Welcome, {}. <a href=\"{}\">Continue to klaxon</a>.</p>",
            escape(&new.display),
            escape(&next)
        ),
    )
    .replacen(
        "<title>",
        &format!(
            "<meta http-equiv=\"refresh\" content=\"0;url={}\">\n<title>",
            escape(&next)
        ),
        1,
    );
    let mut then = html_page(StatusCode::OK, page);
    then.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_static("klaxon_oidc=; Path=/auth; Max-Age=0"),
    );
    begin_session(&state, new, "oidc", then).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_come_from_the_named_claim_as_a_list() {
        use base64::Engine;
        let enc = |v: serde_json::Value| {
            format!(
                "h.{}.s",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
            )
        };
        assert_eq!(
            groups_claim(&enc(serde_json::json!({"groups": ["a", "b", 3]})), "groups"),
            vec!["a", "b"]
        );
        assert_eq!(
            groups_claim(&enc(serde_json::json!({"roles": "x"})), "roles"),
            vec!["x"]
        );
        assert!(groups_claim("not-a-jwt", "groups").is_empty());
    }

    #[test]
    fn console_and_oidc_problems_are_named_with_key_and_line() {
        let text = r#"
[server]
listen = "127.0.0.1:8080"
public_url = "https://alerts.example-isd.org"

[store]
dir = "state"

[[providers]]
name = "log"
kind = "log"
channels = ["sms", "voice", "email"]
path = "outbox.jsonl"

[console]
session_idle = "0s"

[[console.roles]]
match_group = "principals"
role = "boss"

[oidc]
issuer = "http://idp.example.org"
client_id = "klaxon"
client_secret = "literal"
"#;
        let err =
            crate::config::Config::from_str(text, std::path::Path::new("/etc/klaxon/klaxon.toml"))
                .unwrap_err();
        let crate::config::ConfigError::Invalid { issues, .. } = err else {
            panic!("{err}");
        };
        let found = |key: &str| issues.iter().find(|i| i.key == key);
        assert!(found("console.session_idle").is_some(), "{issues:?}");
        let role = found("console.roles[0].role").expect("the bad role");
        assert_eq!(role.line, Some(20), "{role:?}");
        assert!(role.message.contains("viewer, operator or admin"));
        let secret = found("oidc.client_secret").expect("the literal secret");
        assert!(secret.message.contains("client_secret_env"), "{secret:?}");

        // A good [oidc] whose secret file is missing: found by check-config.
        let good = text
            .replace("session_idle = \"0s\"", "")
            .replace("\"boss\"", "\"operator\"")
            .replace("http://idp.example.org", "https://idp.example.org")
            .replace(
                "client_secret = \"literal\"",
                "client_secret_file = \"/nonexistent/klaxon-oidc\"",
            );
        let c =
            crate::config::Config::from_str(&good, std::path::Path::new("/etc/klaxon/klaxon.toml"))
                .unwrap();
        let issues = check_secret(&c);
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].key, "oidc.client_secret_file");
    }

    #[test]
    fn an_issuer_must_be_https_unless_on_this_host() {
        let parse = |issuer: &str| {
            let mut root: toml::Table = format!(
                "[oidc]\nissuer = \"{issuer}\"\nclient_id = \"k\"\nclient_secret_env = \"X\"\n"
            )
            .parse()
            .unwrap();
            let mut issues = Issues::default();
            take_config(&mut root, &mut issues);
            issues
                .list
                .iter()
                .map(|i| i.key.clone())
                .collect::<Vec<_>>()
        };
        assert!(parse("https://accounts.google.com").is_empty());
        assert!(parse("http://127.0.0.1:8080").is_empty());
        assert_eq!(parse("http://idp.example.org"), vec!["oidc.issuer"]);
        assert_eq!(parse("idp"), vec!["oidc.issuer"]);
    }
}
