//! OneRoster REST pull: reads orgs, users (with their agents and, in 1.2,
//! their roles), classes, enrollments, academic sessions and demographics
//! from a OneRoster 1.1 or 1.2 REST API and writes them as a OneRoster CSV
//! export in a folder. That folder then goes through the ordinary import
//! (validation, shrink guard, report, atomic swap) — a pull is checked
//! exactly like a file — or, for an incremental pull, through the delta merge.
//!
//! Paging is `limit`/`offset`; a `Link: <…>; rel="next"` header is followed
//! when the server sends one, and `X-Total-Count` is checked at the end so a
//! pull that came back short is refused rather than taken for a shrink.
//! Authentication is OAuth 2.0 client credentials (the token is cached until
//! shortly before it expires, and fetched again on a 401) or OAuth 1.0a
//! request signing with HMAC-SHA256. Each request has a timeout and is
//! retried with exponential backoff on a network error, a 429 or a 5xx.
//! Records are streamed page by page into the CSV files; a pull never holds
//! the whole district in memory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::{AUTHORIZATION, HeaderMap};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

use crate::config::{Dur, Issues, Secret};

/// `[sis.source]`: where and how to pull the SIS from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Only `oneroster-rest` for now.
    pub kind: String,
    /// e.g. `https://sis.example-isd.org/ims/oneroster/v1p1` or `…/rostering/v1p2`.
    pub base_url: String,
    /// OAuth 2.0 token endpoint (client credentials); required with `auth = "oauth2"`.
    pub token_url: Option<String>,
    pub client_id: String,
    pub client_secret_env: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    /// `oauth2` (client credentials, the default) or `oauth1` (HMAC-SHA256 signing).
    #[serde(default)]
    pub auth: Auth,
    /// OAuth 2.0 scope to ask for, if the server wants one.
    pub scope: Option<String>,
    /// Pull this often…
    pub every: Option<Dur>,
    /// …or every day at this time ("02:30") in `server.timezone`.
    pub at: Option<String>,
    /// Limit for one HTTP request.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Records asked for per page (`limit`).
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Between two pulls only changed records are asked for
    /// (`filter=dateLastModified>…`); a full pull is made at least this often.
    #[serde(default = "default_full_every")]
    pub full_every: Dur,
}

fn default_timeout() -> Dur {
    Dur::secs(30)
}
fn default_page_size() -> u32 {
    1000
}
fn default_full_every() -> Dur {
    Dur::secs(24 * 3600)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    #[default]
    Oauth2,
    Oauth1,
}

impl SourceConfig {
    /// Checks what serde cannot; problems go to `issues` under `sis.source.*`.
    pub fn validate(&self, issues: &mut Issues) {
        if self.kind != "oneroster-rest" {
            issues.push(
                "sis.source.kind",
                format!(
                    "unknown kind `{}`; only \"oneroster-rest\" is supported",
                    self.kind
                ),
            );
        }
        if !(self.base_url.starts_with("https://") || self.base_url.starts_with("http://"))
            || reqwest::Url::parse(&self.base_url).is_err()
        {
            issues.push(
                "sis.source.base_url",
                format!("`{}` is not an http(s) URL", self.base_url),
            );
        }
        match (&self.token_url, self.auth) {
            (None, Auth::Oauth2) => issues.push(
                "sis.source.token_url",
                "required with auth = \"oauth2\" (the OAuth 2.0 client-credentials token endpoint)",
            ),
            (Some(u), _) if reqwest::Url::parse(u).is_err() => {
                issues.push("sis.source.token_url", format!("`{u}` is not a URL"))
            }
            _ => {}
        }
        if self.client_id.trim().is_empty() {
            issues.push("sis.source.client_id", "must not be empty");
        }
        match (&self.every, &self.at) {
            (Some(_), Some(_)) => {
                issues.push("sis.source.every", "set either `every` or `at`, not both")
            }
            (None, None) => issues.push(
                "sis.source.every",
                "say when to pull: `every = \"1h\"` or `at = \"02:30\"`",
            ),
            (Some(d), None) if d.0 < Duration::from_secs(60) => {
                issues.push("sis.source.every", "must be at least 1m")
            }
            (None, Some(at)) if parse_at(at).is_none() => issues.push(
                "sis.source.at",
                format!("`{at}` is not a time of day like \"02:30\""),
            ),
            _ => {}
        }
        if !(1..=10_000).contains(&self.page_size) {
            issues.push("sis.source.page_size", "must be between 1 and 10000");
        }
        if self.timeout.0.is_zero() {
            issues.push("sis.source.timeout", "must be more than 0s");
        }
        // The secret itself is read by `check-config` and when the pull
        // starts, like providers' secrets: the config loads without it.
        match (&self.client_secret_env, &self.client_secret_file) {
            (Some(_), Some(_)) => issues.push(
                "sis.source.client_secret_env",
                "set either `client_secret_env` or `client_secret_file`, not both",
            ),
            (None, None) => issues.push(
                "sis.source.client_secret_env",
                "missing secret: set `client_secret_env` (an environment variable) or `client_secret_file` (a file); secrets are never read from the TOML itself",
            ),
            _ => {}
        }
    }

    /// Reads the client secret from `client_secret_env` / `client_secret_file`.
    pub fn secret(&self, base_dir: &Path, issues: &mut Issues) -> Option<Secret> {
        let file = self
            .client_secret_file
            .as_ref()
            .map(|p| crate::config::relative_to(base_dir, p));
        crate::config::resolve_secret(
            "sis.source",
            "client_secret",
            self.client_secret_env.as_deref(),
            file.as_deref(),
            true,
            issues,
        )
    }

    /// The OneRoster version the base URL speaks.
    pub fn version(&self) -> &'static str {
        if self.base_url.contains("v1p2") {
            "1.2"
        } else {
            "1.1"
        }
    }
}

/// Reads "HH:MM" (24-hour).
pub fn parse_at(at: &str) -> Option<jiff::civil::Time> {
    let (h, m) = at.trim().split_once(':')?;
    let (h, m) = (h.parse::<i8>().ok()?, m.parse::<i8>().ok()?);
    jiff::civil::Time::new(h, m, 0, 0).ok()
}

/// Why a pull failed. The current copy is untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{url}: the server answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("getting an OAuth 2.0 token from {url}: {message}")]
    Token { url: String, message: String },
    #[error("{url}: {message}")]
    Paging { url: String, message: String },
    #[error("writing the pulled export to {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the server does not accept filter=dateLastModified>… ({status}); a full pull is needed"
    )]
    FilterUnsupported { status: u16 },
}

/// What one pull wrote.
#[derive(Debug, Clone, Default)]
pub struct PullSummary {
    /// Records per endpoint, in pull order.
    pub records: Vec<(&'static str, u64)>,
    pub requests: u64,
    pub incremental: bool,
}

/// One OneRoster collection: its path, the JSON key holding the records,
/// the CSV it becomes and the columns written.
struct Endpoint {
    path: &'static str,
    file: &'static str,
    columns: &'static [&'static str],
    required: bool,
}

const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        path: "orgs",
        file: "orgs",
        columns: &[
            "sourcedId",
            "status",
            "dateLastModified",
            "name",
            "type",
            "identifier",
            "parentSourcedId",
        ],
        required: true,
    },
    Endpoint {
        path: "academicSessions",
        file: "academicSessions",
        columns: &[
            "sourcedId",
            "status",
            "dateLastModified",
            "title",
            "type",
            "startDate",
            "endDate",
            "parentSourcedId",
            "schoolYear",
        ],
        required: false,
    },
    Endpoint {
        path: "classes",
        file: "classes",
        columns: &[
            "sourcedId",
            "status",
            "dateLastModified",
            "title",
            "grades",
            "courseSourcedId",
            "classCode",
            "classType",
            "location",
            "schoolSourcedId",
            "termSourcedIds",
        ],
        required: true,
    },
    Endpoint {
        path: "users",
        file: "users",
        columns: &[
            "sourcedId",
            "status",
            "dateLastModified",
            "enabledUser",
            "orgSourcedIds",
            "role",
            "username",
            "givenName",
            "familyName",
            "middleName",
            "preferredGivenName",
            "identifier",
            "email",
            "sms",
            "phone",
            "agentSourcedIds",
            "grades",
            "primaryOrgSourcedId",
            "preferredLanguage",
            "metadata.preferredLanguage",
        ],
        required: true,
    },
    Endpoint {
        path: "enrollments",
        file: "enrollments",
        columns: &[
            "sourcedId",
            "status",
            "dateLastModified",
            "classSourcedId",
            "schoolSourcedId",
            "userSourcedId",
            "role",
            "primary",
            "beginDate",
            "endDate",
        ],
        required: true,
    },
    Endpoint {
        path: "demographics",
        file: "demographics",
        columns: &[
            "sourcedId",
            "status",
            "dateLastModified",
            "birthDate",
            "sex",
        ],
        required: false,
    },
];

const ROLE_COLUMNS: &[&str] = &[
    "sourcedId",
    "status",
    "dateLastModified",
    "userSourcedId",
    "roleType",
    "role",
    "orgSourcedId",
    "beginDate",
    "endDate",
];

/// A JSON value as CSV text.
fn text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                Value::Object(o) => text(o.get("sourcedId")),
                other => text(Some(other)),
            })
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::Object(o)) => text(o.get("sourcedId")),
        Some(other) => other.to_string(),
    }
}

/// The CSV value of `column` in a REST record: `xSourcedId` is the
/// `sourcedId` of the `x` reference, `xSourcedIds` those of the `xs` list.
fn field(rec: &Value, column: &str) -> String {
    match column {
        "preferredGivenName" => {
            let v = text(rec.get("preferredGivenName"));
            if v.is_empty() {
                text(rec.get("preferredFirstName"))
            } else {
                v
            }
        }
        "metadata.preferredLanguage" => {
            text(rec.get("metadata").and_then(|m| m.get("preferredLanguage")))
        }
        "sourcedId" => text(rec.get("sourcedId")),
        c => {
            if let Some(stem) = c.strip_suffix("SourcedIds") {
                text(rec.get(format!("{stem}s").as_str()))
            } else if let Some(stem) = c.strip_suffix("SourcedId") {
                text(rec.get(stem))
            } else {
                text(rec.get(c))
            }
        }
    }
}

/// Percent-encoding of RFC 3986 (OAuth 1.0a §3.6): everything but unreserved.
fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The OAuth 1.0a signature base string of a request (RFC 5849 §3.4.1).
pub fn oauth1_base_string(method: &str, url: &reqwest::Url, oauth: &[(String, String)]) -> String {
    let mut params: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (pct(&k), pct(&v)))
        .chain(oauth.iter().map(|(k, v)| (pct(k), pct(v))))
        .collect();
    params.sort();
    let joined = params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut base = url.clone();
    base.set_query(None);
    base.set_fragment(None);
    format!(
        "{}&{}&{}",
        method.to_ascii_uppercase(),
        pct(base.as_str()),
        pct(&joined)
    )
}

/// The `Authorization: OAuth …` header for a GET, signed with HMAC-SHA256.
pub fn oauth1_header(
    url: &reqwest::Url,
    client_id: &str,
    secret: &str,
    timestamp: u64,
    nonce: &str,
) -> String {
    let mut oauth = vec![
        ("oauth_consumer_key".to_string(), client_id.to_string()),
        ("oauth_nonce".into(), nonce.into()),
        ("oauth_signature_method".into(), "HMAC-SHA256".into()),
        ("oauth_timestamp".into(), timestamp.to_string()),
        ("oauth_version".into(), "1.0".into()),
    ];
    let base = oauth1_base_string("GET", url, &oauth);
    let key = format!("{}&", pct(secret));
    let sig = match Hmac::<Sha256>::new_from_slice(key.as_bytes()) {
        Ok(mut mac) => {
            mac.update(base.as_bytes());
            base64::prelude::BASE64_STANDARD.encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    oauth.push(("oauth_signature".into(), sig));
    let parts: Vec<String> = oauth
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", pct(v)))
        .collect();
    format!("OAuth {}", parts.join(", "))
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: Option<u64>,
}

/// Pulls from one `[sis.source]`; keeps the OAuth 2.0 token between pulls.
pub struct Puller {
    cfg: SourceConfig,
    secret: Secret,
    http: reqwest::Client,
    token: Option<(String, Instant)>,
    /// First retry delay; the following ones double (with jitter).
    pub retry_delay: Duration,
    /// Retries per request after the first try.
    pub retries: usize,
}

impl Puller {
    pub fn new(cfg: SourceConfig, secret: Secret) -> Result<Puller, PullError> {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout.0)
            .user_agent(concat!(
                "klaxon/",
                env!("CARGO_PKG_VERSION"),
                " (OneRoster sync)"
            ))
            .build()
            .map_err(|e| PullError::Http {
                url: cfg.base_url.clone(),
                message: e.to_string(),
            })?;
        Ok(Puller {
            cfg,
            secret,
            http,
            token: None,
            retry_delay: Duration::from_millis(500),
            retries: 4,
        })
    }

    fn delays(&self) -> impl Iterator<Item = Duration> + use<> {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.retry_delay)
            .with_max_delay(Duration::from_secs(30))
            .with_jitter()
            .with_max_times(self.retries)
            .build()
    }

    async fn token(&mut self) -> Result<String, PullError> {
        if let Some((t, until)) = &self.token
            && Instant::now() < *until
        {
            return Ok(t.clone());
        }
        let url = self.cfg.token_url.clone().unwrap_or_default();
        let err = |message: String| PullError::Token {
            url: url.clone(),
            message,
        };
        let mut form = vec![("grant_type", "client_credentials".to_string())];
        if let Some(s) = &self.cfg.scope {
            form.push(("scope", s.clone()));
        }
        let mut delays = self.delays();
        loop {
            let res = self
                .http
                .post(&url)
                .basic_auth(&self.cfg.client_id, Some(self.secret.expose()))
                .form(&form)
                .send()
                .await;
            let transient = match res {
                Ok(r) if r.status().is_success() => {
                    let answer: TokenAnswer = r
                        .json()
                        .await
                        .map_err(|e| err(format!("unreadable answer: {e}")))?;
                    // Renew a little early so a token never expires mid-request.
                    let life = Duration::from_secs(answer.expires_in.unwrap_or(3600));
                    let until = Instant::now()
                        + life.saturating_sub(Duration::from_secs(30).min(life / 10));
                    self.token = Some((answer.access_token.clone(), until));
                    return Ok(answer.access_token);
                }
                Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                    format!("the server answered {}", r.status())
                }
                Ok(r) => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    return Err(err(format!(
                        "the server answered {status}: {}",
                        snippet(&body)
                    )));
                }
                Err(e) => e.to_string(),
            };
            match delays.next() {
                Some(d) => tokio::time::sleep(d).await,
                None => return Err(err(transient)),
            }
        }
    }

    /// GETs `url` with authentication, retrying transient failures.
    async fn get(&mut self, url: &str) -> Result<(HeaderMap, Value), PullError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| PullError::Http {
            url: url.into(),
            message: e.to_string(),
        })?;
        let mut delays = self.delays();
        let mut renewed = false;
        loop {
            let auth = match self.cfg.auth {
                Auth::Oauth2 => format!("Bearer {}", self.token().await?),
                Auth::Oauth1 => {
                    let ts = jiff::Timestamp::now().as_second().max(0) as u64;
                    let mut nonce = [0u8; 16];
                    let _ = getrandom::fill(&mut nonce);
                    let nonce: String = crate::domain::text::hex(&nonce);
                    oauth1_header(
                        &parsed,
                        &self.cfg.client_id,
                        self.secret.expose(),
                        ts,
                        &nonce,
                    )
                }
            };
            let res = self
                .http
                .get(parsed.clone())
                .header(AUTHORIZATION, auth)
                .send()
                .await;
            let transient = match res {
                Ok(r) if r.status().is_success() => {
                    let headers = r.headers().clone();
                    match r.json::<Value>().await {
                        Ok(v) => return Ok((headers, v)),
                        Err(e) => format!("unreadable answer: {e}"),
                    }
                }
                // An expired or revoked token: get a new one, once.
                Ok(r)
                    if r.status().as_u16() == 401 && self.cfg.auth == Auth::Oauth2 && !renewed =>
                {
                    self.token = None;
                    renewed = true;
                    continue;
                }
                Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                    format!("the server answered {}", r.status())
                }
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body = r.text().await.unwrap_or_default();
                    return Err(PullError::Status {
                        url: url.into(),
                        status,
                        body: snippet(&body),
                    });
                }
                Err(e) => e.to_string(),
            };
            match delays.next() {
                Some(d) => {
                    tracing::warn!(error = %transient, url, "SIS pull request failed; retrying.");
                    tokio::time::sleep(d).await;
                }
                None => {
                    return Err(PullError::Http {
                        url: url.into(),
                        message: format!("{transient} (gave up after {} retries)", self.retries),
                    });
                }
            }
        }
    }

    /// Pulls every collection into `dir` as a OneRoster CSV export. With
    /// `since`, only records changed after it are asked for and the export
    /// is a delta.
    pub async fn pull(
        &mut self,
        dir: &Path,
        since: Option<jiff::Timestamp>,
    ) -> Result<PullSummary, PullError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PullError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let version = self.cfg.version();
        let mut summary = PullSummary {
            incremental: since.is_some(),
            ..Default::default()
        };
        let mut listed: Vec<&str> = Vec::new();
        let roles_path = dir.join("roles.csv");
        let mut roles = if version == "1.2" {
            let mut w = csv::Writer::from_path(&roles_path).map_err(|e| csv_io(&roles_path, e))?;
            w.write_record(ROLE_COLUMNS)
                .map_err(|e| csv_io(&roles_path, e))?;
            Some(w)
        } else {
            None
        };
        for ep in ENDPOINTS {
            let path = dir.join(format!("{}.csv", ep.file));
            let mut w = csv::Writer::from_path(&path).map_err(|e| csv_io(&path, e))?;
            w.write_record(ep.columns).map_err(|e| csv_io(&path, e))?;
            let base = self.cfg.base_url.trim_end_matches('/').to_string();
            let mut offset: u64 = 0;
            let mut count: u64 = 0;
            let mut seen_urls = std::collections::HashSet::new();
            let mut url = page_url(&base, ep.path, self.cfg.page_size, 0, since);
            let mut first = true;
            let total = loop {
                if !seen_urls.insert(url.clone()) {
                    return Err(PullError::Paging {
                        url,
                        message: "the Link header points back at a page already read".into(),
                    });
                }
                let (headers, body) = match self.get(&url).await {
                    Ok(x) => x,
                    Err(PullError::Status { status: 404, .. }) if first && !ep.required => {
                        break None;
                    }
                    Err(PullError::Status { status, .. })
                        if first && since.is_some() && matches!(status, 400 | 422) =>
                    {
                        return Err(PullError::FilterUnsupported { status });
                    }
                    Err(e) => return Err(e),
                };
                first = false;
                summary.requests += 1;
                let total: Option<u64> = headers
                    .get("x-total-count")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse().ok());
                let items = body.get(ep.path).and_then(Value::as_array).ok_or_else(|| {
                    PullError::Paging {
                        url: url.clone(),
                        message: format!("the answer has no `{}` list", ep.path),
                    }
                })?;
                for rec in items {
                    let row: Vec<String> = ep.columns.iter().map(|c| field(rec, c)).collect();
                    w.write_record(&row).map_err(|e| csv_io(&path, e))?;
                    if let (Some(rw), "users") = (roles.as_mut(), ep.path) {
                        write_roles(rw, rec).map_err(|e| csv_io(&roles_path, e))?;
                    }
                }
                count += items.len() as u64;
                offset += items.len() as u64;
                if let Some(next) = next_link(&headers) {
                    url = reqwest::Url::parse(&url)
                        .and_then(|u| u.join(&next))
                        .map(|u| u.to_string())
                        .unwrap_or(next);
                    continue;
                }
                let more = match total {
                    Some(t) => offset < t && !items.is_empty(),
                    None => items.len() as u64 >= u64::from(self.cfg.page_size),
                };
                if !more {
                    break total;
                }
                url = page_url(&base, ep.path, self.cfg.page_size, offset, since);
            };
            if let Some(t) = total
                && count != t
            {
                return Err(PullError::Paging {
                    url: format!("{base}/{}", ep.path),
                    message: format!(
                        "X-Total-Count said {t} records but {count} came; the pull is incomplete"
                    ),
                });
            }
            w.flush().map_err(io(&path))?;
            if first {
                // 404 on an optional collection: not offered by this server.
                drop(w);
                let _ = std::fs::remove_file(&path);
                continue;
            }
            summary.records.push((ep.path, count));
            listed.push(ep.file);
        }
        if let Some(mut rw) = roles {
            rw.flush().map_err(io(&roles_path))?;
            listed.push("roles");
        }
        let value = if since.is_some() { "delta" } else { "bulk" };
        let mut manifest =
            format!("propertyName,value\nmanifest.version,1.0\noneroster.version,{version}\n");
        for f in &listed {
            manifest.push_str(&format!("file.{f},{value}\n"));
        }
        let mpath = dir.join("manifest.csv");
        std::fs::write(&mpath, manifest).map_err(io(&mpath))?;
        Ok(summary)
    }
}

fn csv_io(path: &Path, e: csv::Error) -> PullError {
    PullError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// 1.2 users carry their roles; they become roles.csv rows with an id made
/// from the user, role and org (the REST API gives roles no sourcedId).
fn write_roles(w: &mut csv::Writer<std::fs::File>, user: &Value) -> Result<(), csv::Error> {
    let Some(list) = user.get("roles").and_then(Value::as_array) else {
        return Ok(());
    };
    let id = field(user, "sourcedId");
    for r in list {
        let role = text(r.get("role"));
        let org = text(r.get("org"));
        w.write_record([
            format!("{id}:{role}:{org}"),
            field(user, "status"),
            field(user, "dateLastModified"),
            id.clone(),
            text(r.get("roleType")),
            role,
            org,
            text(r.get("beginDate")),
            text(r.get("endDate")),
        ])?;
    }
    Ok(())
}

fn page_url(
    base: &str,
    path: &str,
    limit: u32,
    offset: u64,
    since: Option<jiff::Timestamp>,
) -> String {
    let mut url = format!("{base}/{path}?limit={limit}&offset={offset}");
    if let Some(t) = since {
        url.push_str("&filter=");
        url.push_str(&pct(&format!("dateLastModified>'{t}'")));
    }
    url
}

/// The `rel="next"` target of a `Link` header, if any.
fn next_link(headers: &HeaderMap) -> Option<String> {
    for v in headers.get_all("link") {
        let Ok(v) = v.to_str() else { continue };
        for part in v.split(',') {
            let mut pieces = part.split(';');
            let target = pieces.next()?.trim();
            let is_next = pieces.any(|p| {
                let p = p.trim().to_ascii_lowercase();
                p == "rel=\"next\"" || p == "rel=next"
            });
            if is_next {
                return Some(
                    target
                        .trim_start_matches('<')
                        .trim_end_matches('>')
                        .to_string(),
                );
            }
        }
    }
    None
}

fn snippet(body: &str) -> String {
    let t: String = body.chars().take(200).collect();
    t.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_become_sourced_id_columns() {
        let rec = serde_json::json!({
            "sourcedId": "u1", "enabledUser": true, "grades": ["09", "10"],
            "orgs": [{"sourcedId": "s1", "type": "org"}, {"sourcedId": "s2"}],
            "agents": [{"sourcedId": "g1"}], "primaryOrg": {"sourcedId": "s1"},
            "preferredFirstName": "Tom", "metadata": {"preferredLanguage": "es"}
        });
        assert_eq!(field(&rec, "orgSourcedIds"), "s1,s2");
        assert_eq!(field(&rec, "agentSourcedIds"), "g1");
        assert_eq!(field(&rec, "primaryOrgSourcedId"), "s1");
        assert_eq!(field(&rec, "grades"), "09,10");
        assert_eq!(field(&rec, "enabledUser"), "true");
        assert_eq!(field(&rec, "preferredGivenName"), "Tom");
        assert_eq!(field(&rec, "metadata.preferredLanguage"), "es");
        assert_eq!(field(&rec, "phone"), "");
    }

    #[test]
    fn link_header_next_is_found() {
        let mut h = HeaderMap::new();
        h.insert(
            "link",
            "<https://x/users?offset=0>; rel=\"first\", <https://x/users?offset=100&limit=100>; rel=\"next\""
                .parse()
                .unwrap(),
        );
        assert_eq!(
            next_link(&h).as_deref(),
            Some("https://x/users?offset=100&limit=100")
        );
    }

    #[test]
    fn oauth1_base_string_follows_rfc_5849() {
        // RFC 5849 §3.4.1.1's example, without its POST body parameters.
        let url = reqwest::Url::parse("http://example.com/request?b5=%3D%253D&a3=a&c%40=&a2=r%20b")
            .unwrap();
        let oauth = vec![
            (
                "oauth_consumer_key".to_string(),
                "9djdj82h48djs9d2".to_string(),
            ),
            ("oauth_token".into(), "kkk9d7dh3k39sjv7".into()),
            ("oauth_signature_method".into(), "HMAC-SHA1".into()),
            ("oauth_timestamp".into(), "137131201".into()),
            ("oauth_nonce".into(), "7d8f3e4a".into()),
        ];
        assert_eq!(
            oauth1_base_string("get", &url, &oauth),
            "GET&http%3A%2F%2Fexample.com%2Frequest&a2%3Dr%2520b%26a3%3Da%26b5%3D%253D%25253D%26c%2540%3D%26oauth_consumer_key%3D9djdj82h48djs9d2%26oauth_nonce%3D7d8f3e4a%26oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D137131201%26oauth_token%3Dkkk9d7dh3k39sjv7"
        );
    }

    #[test]
    fn a_bad_source_names_every_key() {
        let cfg: SourceConfig = toml::from_str(
            r#"
kind = "powerschool"
base_url = "sis.example.org"
client_id = ""
client_secret_env = "A"
client_secret_file = "b"
every = "1h"
at = "25:00"
page_size = 0
"#,
        )
        .unwrap();
        let mut issues = Issues::default();
        cfg.validate(&mut issues);
        let keys: Vec<&str> = issues.list.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "sis.source.kind",
                "sis.source.base_url",
                "sis.source.token_url",
                "sis.source.client_id",
                "sis.source.every",
                "sis.source.page_size",
                "sis.source.client_secret_env"
            ]
        );
    }

    #[test]
    fn times_of_day_parse() {
        assert_eq!(parse_at("02:30"), Some(jiff::civil::time(2, 30, 0, 0)));
        assert_eq!(parse_at("25:00"), None);
        assert_eq!(parse_at("noon"), None);
    }
}
