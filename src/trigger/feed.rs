//! CAP feed pollers: one task per `[[feeds]]`, polling with conditional GET
//! (ETag / Last-Modified), backing off with jitter while the feed fails, and
//! handing every message to `cap_act::handle`. A bad entry is skipped; the
//! poller never stops until shutdown.

use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use reqwest::header;
use serde::Deserialize;
use tokio::sync::watch;

use crate::app::AppState;
use crate::cap::{DocumentKind, parse_document};
use crate::config::{Dur, Issues};
use crate::store::now_ms;

/// What a feed serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FeedKind {
    /// api.weather.gov GeoJSON (`/alerts/active?zone=…`).
    NwsApi,
    /// ATOM with CAP entries (IPAWS, the NWS index).
    Atom,
    /// One CAP document.
    Cap,
}

impl FeedKind {
    fn accept(self) -> &'static str {
        match self {
            FeedKind::NwsApi => "application/geo+json",
            FeedKind::Atom => "application/atom+xml, application/xml;q=0.9",
            FeedKind::Cap => "application/cap+xml, application/xml;q=0.9",
        }
    }

    fn serves(self, kind: DocumentKind) -> bool {
        matches!(
            (self, kind),
            (FeedKind::NwsApi, DocumentKind::GeoJson)
                | (FeedKind::Atom, DocumentKind::Atom)
                | (FeedKind::Cap, DocumentKind::Cap11 | DocumentKind::Cap12)
        )
    }
}

/// One `[[feeds]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// Shows in each alert's source and in the metrics.
    pub name: String,
    pub kind: FeedKind,
    pub url: String,
    /// Time between polls while the feed is healthy.
    #[serde(default = "default_interval")]
    pub interval: Dur,
    /// Names this install and a contact, e.g. "klaxon (it@example-isd.org)";
    /// required for api.weather.gov, which blocks anonymous clients.
    pub user_agent: Option<String>,
    /// Time-out for one poll.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
}

fn default_interval() -> Dur {
    Dur::secs(60)
}

fn default_timeout() -> Dur {
    Dur::secs(15)
}

/// Checks `[[feeds]]`; each issue names its key.
pub fn validate(feeds: &[FeedConfig], issues: &mut Issues) {
    for (i, f) in feeds.iter().enumerate() {
        let p = format!("feeds[{i}]");
        if f.name.trim().is_empty() {
            issues.push(format!("{p}.name"), "must not be empty");
        } else if feeds[..i].iter().any(|o| o.name == f.name) {
            issues.push(
                format!("{p}.name"),
                format!("duplicate feed name `{}`", f.name),
            );
        }
        if !(f.url.starts_with("https://") || f.url.starts_with("http://")) {
            issues.push(
                format!("{p}.url"),
                format!("`{}` must start with https:// or http://", f.url),
            );
        }
        if f.interval.0 < Duration::from_millis(100) {
            issues.push(format!("{p}.interval"), "must be at least 100ms");
        }
        match f.user_agent.as_deref().map(str::trim) {
            Some(ua) if !(ua.contains('@') || ua.contains("http")) => issues.push(
                format!("{p}.user_agent"),
                "must name a contact (an email address or URL), e.g. \"klaxon (it@example-isd.org)\"",
            ),
            None if f.kind == FeedKind::NwsApi => issues.push(
                format!("{p}.user_agent"),
                "required for api.weather.gov, which blocks anonymous clients: e.g. \"klaxon (it@example-isd.org)\"",
            ),
            _ => {}
        }
    }
}

/// Bodies larger than this are refused (the national NWS index is < 1 MB).
const MAX_BODY: usize = crate::cap::parse::MAX_DOCUMENT_BYTES;

/// Starts one poller per feed, and the task that withdraws held CAP alerts
/// whose warning expired; each stops when `stop` turns true.
pub fn spawn_all(
    state: &Arc<AppState>,
    stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks: Vec<_> = state
        .config
        .feeds
        .iter()
        .map(|f| tokio::spawn(run(state.clone(), f.clone(), stop.clone())))
        .collect();
    if !state.config.rules.is_empty() {
        tasks.push(tokio::spawn(expire_held(state.clone(), stop)));
    }
    tasks
}

/// How often held CAP alerts are checked against their message's expiry.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);

async fn expire_held(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EXPIRY_CHECK) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        if let Err(e) = super::cap_act::withdraw_expired(&state).await {
            tracing::error!(error = %e, "Cannot withdraw expired held CAP alerts.");
        }
    }
}

/// Validators from the last answer, sent back to get `304 Not Modified`.
#[derive(Default)]
struct Validators {
    etag: Option<String>,
    last_modified: Option<String>,
}

fn backoff(interval: Duration) -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(interval)
        .with_max_delay(interval * 10)
        .with_jitter()
        .without_max_times()
        .build()
}

async fn run(state: Arc<AppState>, feed: FeedConfig, mut stop: watch::Receiver<bool>) {
    let ua = feed
        .user_agent
        .clone()
        .unwrap_or_else(|| format!("klaxon/{}", env!("CARGO_PKG_VERSION")));
    let client = match reqwest::Client::builder()
        .user_agent(ua)
        .timeout(feed.timeout.0)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(feed = %feed.name, error = %e, "Cannot build the HTTP client for a CAP feed; it is not polled.");
            return;
        }
    };
    let labels = [("feed", feed.name.as_str())];
    let mut validators = Validators::default();
    let mut errors = backoff(feed.interval.0);
    loop {
        let delay = match poll(&state, &feed, &client, &mut validators).await {
            Ok(outcome) => {
                state.metrics.inc(
                    "klaxon_feed_polls_total",
                    &[labels[0], ("outcome", outcome)],
                );
                state.metrics.set_gauge("klaxon_feed_up", &labels, 1.0);
                state.metrics.set_gauge(
                    "klaxon_feed_last_success_timestamp_seconds",
                    &labels,
                    now_ms() as f64 / 1000.0,
                );
                errors = backoff(feed.interval.0);
                feed.interval.0
            }
            Err(e) => {
                state.metrics.inc(
                    "klaxon_feed_polls_total",
                    &[labels[0], ("outcome", "error")],
                );
                state.metrics.set_gauge("klaxon_feed_up", &labels, 0.0);
                let delay = errors.next().unwrap_or(feed.interval.0);
                tracing::warn!(feed = %feed.name, error = %e, retry_in_s = delay.as_secs_f64(), "CAP feed poll failed; backing off.");
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
}

/// One poll: fetch, parse, handle each message. `Ok` names the outcome.
async fn poll(
    state: &AppState,
    feed: &FeedConfig,
    client: &reqwest::Client,
    v: &mut Validators,
) -> Result<&'static str, String> {
    let mut req = client
        .get(&feed.url)
        .header(header::ACCEPT, feed.kind.accept());
    if let Some(e) = &v.etag {
        req = req.header(header::IF_NONE_MATCH, e);
    }
    if let Some(m) = &v.last_modified {
        req = req.header(header::IF_MODIFIED_SINCE, m);
    }
    let mut resp = req
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    if resp.status() == reqwest::StatusCode::NOT_MODIFIED {
        return Ok("not-modified");
    }
    if !resp.status().is_success() {
        return Err(format!("the feed answered {}", resp.status()));
    }
    let header_of = |name: header::HeaderName| {
        resp.headers()
            .get(name)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
    };
    let (etag, last_modified) = (header_of(header::ETAG), header_of(header::LAST_MODIFIED));
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("reading the body: {e}"))?
    {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(format!("the body is larger than {MAX_BODY} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    let doc = parse_document(&body).map_err(|e| format!("the document cannot be read: {e}"))?;
    if !feed.kind.serves(doc.kind) {
        return Err(format!(
            "expected {:?} content, got a {}",
            feed.kind,
            doc.kind.describe()
        ));
    }
    for s in &doc.skipped {
        tracing::warn!(feed = %feed.name, entry = s.index, id = s.id.as_deref().unwrap_or(""), error = %s.error, "CAP feed entry skipped: it cannot be read.");
    }
    let source = format!("feed:{}", feed.name);
    let mut failed = 0;
    for alert in &doc.alerts {
        let handled = super::cap_act::handle(state, alert, &source);
        match crate::store::audit::with_origin(source.as_str(), handled).await {
            Ok(h) if h.outcome == "skipped" || h.outcome == "duplicate" => {
                tracing::debug!(feed = %feed.name, identifier = %alert.identifier, outcome = h.outcome, detail = %h.detail, "CAP message handled.");
            }
            Ok(h) => {
                tracing::info!(feed = %feed.name, identifier = %alert.identifier, outcome = h.outcome, alert = ?h.alert_id, detail = %h.detail, "CAP message handled.");
            }
            Err(e) => {
                failed += 1;
                tracing::error!(feed = %feed.name, identifier = %alert.identifier, error = %e, "Cannot act on a CAP message; it is tried again at the next poll.");
            }
        }
    }
    if failed > 0 {
        // Forget the validators so the next poll gets the messages again.
        *v = Validators::default();
        return Err(format!("{failed} message(s) could not be acted on"));
    }
    *v = Validators {
        etag,
        last_modified,
    };
    Ok("ok")
}

/// Feeds that have failed for more than three intervals, for `/readyz`.
pub fn failing(state: &AppState) -> Vec<String> {
    let now = now_ms() as f64 / 1000.0;
    state
        .config
        .feeds
        .iter()
        .filter(|f| {
            let labels = [("feed", f.name.as_str())];
            let up = state.metrics.gauge("klaxon_feed_up", &labels);
            let since = state
                .metrics
                .gauge("klaxon_feed_last_success_timestamp_seconds", &labels)
                .unwrap_or(state.started_at as f64 / 1000.0);
            up != Some(1.0) && now - since > 3.0 * f.interval.0.as_secs_f64()
        })
        .map(|f| f.name.clone())
        .collect()
}
