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
use crate::config::{ConfigIssue, Dur, Issues};
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
    /// As written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            FeedKind::NwsApi => "nws-api",
            FeedKind::Atom => "atom",
            FeedKind::Cap => "cap",
        }
    }

    /// What the kind serves, in words.
    fn describe(self) -> &'static str {
        match self {
            FeedKind::NwsApi => "api.weather.gov GeoJSON",
            FeedKind::Atom => "an ATOM feed of CAP entries",
            FeedKind::Cap => "one CAP document",
        }
    }

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

/// The `User-Agent` of a feed without `user_agent`: it names klaxon, no contact.
pub fn default_user_agent() -> String {
    format!("klaxon/{}", env!("CARGO_PKG_VERSION"))
}

/// Warnings for `check-config`: a `cap` or `atom` feed without `user_agent`
/// (api.weather.gov requires one, see `validate`) sends
/// `default_user_agent()`, which names no contact. Feed operators block such
/// clients, and cannot reach the district when its polling misbehaves.
pub fn warnings(feeds: &[FeedConfig]) -> Vec<ConfigIssue> {
    feeds
        .iter()
        .enumerate()
        .filter(|(_, f)| f.user_agent.is_none() && f.kind != FeedKind::NwsApi)
        .map(|(i, f)| ConfigIssue {
            key: format!("feeds[{i}].user_agent"),
            line: None,
            message: format!(
                "not set: feed `{}` is polled as \"{}\", which names no contact; feed operators (NWS, IPAWS) block anonymous clients. Set it, e.g. \"klaxon (it@example-isd.org)\"",
                f.name,
                default_user_agent()
            ),
        })
        .collect()
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

/// Longest wait between polls of a failing feed, in intervals (jitter included).
const MAX_BACKOFF_INTERVALS: u32 = 10;

/// The waits between polls of a failing feed: the first about one interval,
/// doubling with each failure, never more than `MAX_BACKOFF_INTERVALS`
/// intervals. Each wait is the doubled delay plus a random share of it (up
/// to as much again), so klaxons that failed together do not retry together.
/// A success starts it over.
pub(crate) struct Backoff {
    interval: Duration,
    delays: backon::ExponentialBackoff,
}

impl Backoff {
    pub(crate) fn new(interval: Duration) -> Self {
        Backoff {
            interval,
            delays: Self::delays(interval),
        }
    }

    fn delays(interval: Duration) -> backon::ExponentialBackoff {
        // backon adds up to the delay itself as jitter: cap the delay at
        // half the longest wait.
        backon::ExponentialBuilder::default()
            .with_min_delay(interval)
            .with_max_delay(interval * MAX_BACKOFF_INTERVALS / 2)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// A poll failed: how long to wait before the next.
    pub(crate) fn failed(&mut self) -> Duration {
        let longest = self.interval * MAX_BACKOFF_INTERVALS;
        self.delays.next().unwrap_or(longest).min(longest)
    }

    /// A poll succeeded: the next failure waits about one interval again.
    pub(crate) fn succeeded(&mut self) {
        self.delays = Self::delays(self.interval);
    }
}

async fn run(state: Arc<AppState>, feed: FeedConfig, mut stop: watch::Receiver<bool>) {
    let ua = feed.user_agent.clone().unwrap_or_else(default_user_agent);
    if feed.user_agent.is_none() {
        tracing::warn!(feed = %feed.name, user_agent = %ua, "CAP feed has no user_agent: it is polled under a name without a contact, which feed operators may block.");
    }
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
    let mut backoff = Backoff::new(feed.interval.0);
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
                backoff.succeeded();
                feed.interval.0
            }
            Err(e) => {
                state.metrics.inc(
                    "klaxon_feed_polls_total",
                    &[labels[0], ("outcome", "error")],
                );
                state.metrics.inc(
                    "klaxon_feed_errors_total",
                    &[labels[0], ("reason", e.reason)],
                );
                state.metrics.set_gauge("klaxon_feed_up", &labels, 0.0);
                let delay = backoff.failed();
                tracing::warn!(feed = %feed.name, reason = e.reason, error = %e.message, retry_in_s = delay.as_secs_f64(), "CAP feed poll failed; backing off.");
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
}

/// Why a poll failed: `reason` labels `klaxon_feed_errors_total`.
struct PollError {
    reason: &'static str,
    message: String,
}

fn failed(reason: &'static str, message: impl Into<String>) -> PollError {
    PollError {
        reason,
        message: message.into(),
    }
}

/// One poll: fetch, parse, handle each message. `Ok` names the outcome.
async fn poll(
    state: &AppState,
    feed: &FeedConfig,
    client: &reqwest::Client,
    v: &mut Validators,
) -> Result<&'static str, PollError> {
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
        .map_err(|e| failed("request", format!("request failed: {e}")))?;
    if resp.status() == reqwest::StatusCode::NOT_MODIFIED {
        return Ok("not-modified");
    }
    if !resp.status().is_success() {
        return Err(failed(
            "status",
            format!("the feed answered {}", resp.status()),
        ));
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
        .map_err(|e| failed("request", format!("reading the body: {e}")))?
    {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(failed(
                "too-large",
                format!("the body is larger than {MAX_BODY} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    let doc = parse_document(&body)
        .map_err(|e| failed("unreadable", format!("the document cannot be read: {e}")))?;
    if !feed.kind.serves(doc.kind) {
        return Err(failed(
            "wrong-content",
            format!(
                "a `{}` feed serves {}, but its answer is of another kind ({}); check the feed's kind and url",
                feed.kind.as_str(),
                feed.kind.describe(),
                doc.kind.describe()
            ),
        ));
    }
    for s in &doc.skipped {
        tracing::warn!(feed = %feed.name, entry = s.index, id = s.id.as_deref().unwrap_or(""), error = %s.error, "CAP feed entry skipped: it cannot be read.");
    }
    let source = format!("feed:{}", feed.name);
    let mut not_acted = 0;
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
                not_acted += 1;
                tracing::error!(feed = %feed.name, identifier = %alert.identifier, error = %e, "Cannot act on a CAP message; it is tried again at the next poll.");
            }
        }
    }
    if not_acted > 0 {
        // Forget the validators so the next poll gets the messages again.
        *v = Validators::default();
        return Err(failed(
            "not-acted",
            format!("{not_acted} message(s) could not be acted on"),
        ));
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

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(60);

    #[test]
    fn the_first_wait_is_about_one_interval_and_varies() {
        let firsts: Vec<Duration> = (0..200).map(|_| Backoff::new(INTERVAL).failed()).collect();
        for d in &firsts {
            assert!(
                *d >= INTERVAL && *d < INTERVAL * 2,
                "the first wait after a failure is between one and two intervals: {d:?}"
            );
        }
        // Jitter: 200 feeds failing at once do not all retry at the same moment.
        let mut distinct = firsts.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() > 100, "{} distinct waits", distinct.len());
    }

    #[test]
    fn waits_grow_with_failures_up_to_the_cap() {
        let cap = INTERVAL * MAX_BACKOFF_INTERVALS;
        for _ in 0..50 {
            let mut b = Backoff::new(INTERVAL);
            let waits: Vec<Duration> = (0..30).map(|_| b.failed()).collect();
            // The n-th wait is the delay doubled n times (at most half the
            // cap), plus up to as much again.
            for (n, w) in waits.iter().enumerate() {
                let base = INTERVAL * 2u32.saturating_pow(n as u32).min(MAX_BACKOFF_INTERVALS / 2);
                assert!(
                    *w >= base && *w < base * 2,
                    "wait {n}: {w:?} (base {base:?})"
                );
            }
            assert!(waits.iter().all(|w| *w <= cap), "{waits:?}");
            // After many failures the wait stays between half the cap and the cap.
            for w in &waits[10..] {
                assert!(*w >= cap / 2 && *w <= cap, "{waits:?}");
            }
        }
        // At the cap the waits still vary.
        let mut b = Backoff::new(INTERVAL);
        let late: Vec<Duration> = (0..60).map(|_| b.failed()).skip(20).collect();
        assert!(late.iter().any(|w| *w != late[0]), "{late:?}");
    }

    #[test]
    fn each_feed_kind_accepts_only_its_documents() {
        use DocumentKind::*;
        let all = [Cap11, Cap12, Atom, GeoJson];
        let accepted = |k: FeedKind| -> Vec<DocumentKind> {
            all.iter().copied().filter(|d| k.serves(*d)).collect()
        };
        assert_eq!(accepted(FeedKind::NwsApi), vec![GeoJson]);
        assert_eq!(accepted(FeedKind::Atom), vec![Atom]);
        assert_eq!(accepted(FeedKind::Cap), vec![Cap11, Cap12]);
    }

    #[test]
    fn a_success_starts_the_waits_over() {
        let mut b = Backoff::new(INTERVAL);
        for _ in 0..8 {
            b.failed();
        }
        assert!(b.failed() >= INTERVAL * 5);
        b.succeeded();
        let d = b.failed();
        assert!(d >= INTERVAL && d < INTERVAL * 2, "{d:?}");
        let d = b.failed();
        assert!(
            d >= INTERVAL * 2 && d < INTERVAL * 4,
            "the second wait doubles: {d:?}"
        );
    }
}
