//! The sync nobody has to babysit: pulls `[sis.source]` on its schedule
//! (incremental between full pulls, a full pull at least every
//! `full_every`), records every sync's outcome (`sis_syncs`, the audit log,
//! `/metrics`), says when the copy is stale, and emails `[sis] notify` once
//! per problem (a refused sync, a stale copy), not once per try.
//!
//! Time is an input: [`next_run`] and [`age_sentence`] are pure functions of
//! `now`, tested with a moved clock.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::import::{ImportError, ImportOptions, ImportReport, Origin, import_full};
use super::rest::{PullError, Puller, SourceConfig, parse_at};
use super::{SisConfig, current_path};
use crate::config::{Config, Dur};
use crate::metrics::Metrics;
use crate::store::sis_syncs::{self, SyncRecord};
use crate::store::{Store, StoreError};

/// When pulls happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    Every(Duration),
    /// Every day at this time of day, in the server's timezone.
    At(jiff::civil::Time),
}

impl Schedule {
    pub fn of(src: &SourceConfig) -> Option<Schedule> {
        match (&src.every, &src.at) {
            (Some(d), None) => Some(Schedule::Every(d.0)),
            (None, Some(at)) => parse_at(at).map(Schedule::At),
            _ => None,
        }
    }
}

/// When the next pull is due, given the last successful one. `every`: one
/// period after the last (now if there was none or it is overdue). `at`:
/// the next time the clock in `tz` shows that time, strictly after `now`
/// (on a day when it does not exist, the DST gap, jiff's compatible
/// reading: the same wall time an hour later).
pub fn next_run(
    now: Timestamp,
    schedule: &Schedule,
    tz: &TimeZone,
    last: Option<Timestamp>,
) -> Timestamp {
    match schedule {
        Schedule::Every(d) => {
            let Some(last) = last else { return now };
            let span = jiff::SignedDuration::try_from(*d).unwrap_or(jiff::SignedDuration::MAX);
            match last.checked_add(span) {
                Ok(t) if t > now => t,
                _ => now,
            }
        }
        Schedule::At(time) => {
            let today = now.to_zoned(tz.clone()).date();
            let mut day = today;
            for _ in 0..3 {
                if let Ok(z) = day.to_datetime(*time).to_zoned(tz.clone())
                    && z.timestamp() > now
                {
                    return z.timestamp();
                }
                day = day.tomorrow().unwrap_or(day);
            }
            now
        }
    }
}

/// A sentence saying the copy is too old, or `None` while it is fresh.
pub fn age_sentence(
    imported_at: Option<Timestamp>,
    now: Timestamp,
    max_age: Dur,
) -> Option<String> {
    let Some(at) = imported_at else {
        return Some("there is no SIS copy yet".into());
    };
    let age = now.duration_since(at);
    let max = jiff::SignedDuration::try_from(max_age.0).unwrap_or(jiff::SignedDuration::MAX);
    let secs = max_age.0.as_secs();
    // Dur prints "2160m"; people set and read "36h".
    let max_text = if secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else {
        max_age.to_string()
    };
    (age > max).then(|| {
        format!(
            "the SIS copy is {} h old (max_age {max_text})",
            age.as_secs() / 3600
        )
    })
}

/// When the current copy was imported, from its `meta`.
pub fn imported_at(store_dir: &Path) -> Option<Timestamp> {
    let conn = super::open_current(store_dir).ok()?;
    super::read_meta(&conn).ok()?.imported_at.parse().ok()
}

/// A sentence like "the SIS copy is 40 h old (max_age 36h)" when the copy
/// is older than `[sis] max_age`, or missing; `None` while it is fresh. For
/// a trigger's answer and status, and `/readyz`.
pub fn staleness(store_dir: &Path, max_age: Dur, now: Timestamp) -> Option<String> {
    age_sentence(imported_at(store_dir), now, max_age)
}

/// Why a pull did not replace the copy.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error("the import task stopped: {0}")]
    Task(String),
}

impl SyncError {
    /// `refused` when the data was judged wrong (the import's checks),
    /// `failed` when it could not be fetched or written.
    pub fn outcome(&self) -> &'static str {
        match self {
            SyncError::Import(ImportError::Io { .. } | ImportError::Sqlite { .. }) => "failed",
            SyncError::Import(_) => "refused",
            _ => "failed",
        }
    }
}

/// Pulls once (incrementally when `since` is given and the server allows
/// it) and imports the result; the copy is replaced only if the pulled data
/// passes every check of a file import.
pub async fn pull_once(
    cfg: &SisConfig,
    puller: &mut Puller,
    base_url: &str,
    store_dir: &Path,
    since: Option<Timestamp>,
) -> Result<ImportReport, SyncError> {
    std::fs::create_dir_all(store_dir).map_err(|e| {
        SyncError::Import(ImportError::Io {
            path: store_dir.to_path_buf(),
            source: e,
        })
    })?;
    let tmp = tempfile::Builder::new()
        .prefix(".sis-pull-")
        .tempdir_in(store_dir)
        .map_err(|e| {
            SyncError::Import(ImportError::Io {
                path: store_dir.to_path_buf(),
                source: e,
            })
        })?;
    let mut incremental = since.is_some() && current_path(store_dir).is_file();
    let first = puller
        .pull(tmp.path(), if incremental { since } else { None })
        .await;
    match first {
        Ok(_) => {}
        Err(PullError::FilterUnsupported { status }) => {
            tracing::info!(
                status,
                "The SIS server does not filter by dateLastModified; pulling everything."
            );
            incremental = false;
            let _ = std::fs::remove_dir_all(tmp.path());
            puller.pull(tmp.path(), None).await?;
        }
        Err(e) => return Err(e.into()),
    }
    let (cfg, store_dir, src) = (
        cfg.clone(),
        store_dir.to_path_buf(),
        tmp.path().to_path_buf(),
    );
    let origin = Origin {
        source: base_url.to_string(),
        kind: if incremental {
            "rest-incremental"
        } else {
            "rest"
        },
    };
    let report = tokio::task::spawn_blocking(move || {
        let opts = ImportOptions::default();
        if incremental {
            super::delta::apply(&src, &store_dir, &cfg, &opts, origin)
        } else {
            import_full(&src, &store_dir, &cfg, &opts, &origin)
        }
    })
    .await
    .map_err(|e| SyncError::Task(e.to_string()))??;
    drop(tmp);
    Ok(report)
}

/// The row for a finished sync.
pub fn record_of(
    trigger: &str,
    kind: &str,
    source: &str,
    started_at: i64,
    result: &Result<ImportReport, String>,
    outcome_if_err: &str,
) -> SyncRecord {
    let mut r = SyncRecord {
        started_at,
        finished_at: crate::store::now_ms(),
        trigger: trigger.into(),
        kind: kind.into(),
        source: source.into(),
        ..Default::default()
    };
    match result {
        Ok(rep) => {
            r.outcome = "ok".into();
            r.kind = if rep.kind.is_empty() {
                kind.into()
            } else {
                rep.kind.clone()
            };
            r.added = rep.changes.added as i64;
            r.changed = rep.changes.changed as i64;
            r.removed = rep.changes.removed as i64;
            r.warnings = rep.warnings_total as i64;
        }
        Err(e) => {
            r.outcome = outcome_if_err.into();
            r.message = Some(e.clone());
        }
    }
    r
}

/// Stores a sync's outcome in `sis_syncs` and the audit log (one
/// transaction) and counts it in the metrics.
pub async fn record(store: &Store, metrics: &Metrics, rec: SyncRecord) -> Result<(), StoreError> {
    let action = if rec.outcome == "ok" {
        "sis.sync"
    } else {
        "sis.sync_refused"
    };
    let detail = serde_json::json!({
        "trigger": rec.trigger, "kind": rec.kind, "source": rec.source, "outcome": rec.outcome,
        "added": rec.added, "changed": rec.changed, "removed": rec.removed,
        "warnings": rec.warnings, "message": rec.message,
    })
    .to_string();
    let (actor, kind, outcome, finished_at) = (
        rec.trigger.clone(),
        rec.kind.clone(),
        rec.outcome.clone(),
        rec.finished_at,
    );
    // Committed first, counted after: `/metrics` never shows a sync the
    // store does not have.
    store
        .write(move |c| {
            sis_syncs::insert(c, &rec)?;
            crate::store::audit::record(
                c,
                rec.finished_at,
                &actor,
                action,
                None,
                &detail,
                crate::store::audit::FROM_CONTEXT,
            )
        })
        .await?;
    metrics.inc(
        "klaxon_sis_syncs_total",
        &[("kind", &kind), ("outcome", &outcome)],
    );
    if outcome == "ok" {
        metrics.set_gauge(
            "klaxon_sis_last_success_timestamp_seconds",
            &[],
            finished_at as f64 / 1000.0,
        );
    }
    Ok(())
}

/// What is wrong with the SIS copy right now, as sentences: the latest sync
/// refused or failed, or the copy is stale. Empty when all is well.
pub async fn problems(
    store: &Store,
    store_dir: &Path,
    max_age: Dur,
    now: Timestamp,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Ok(mut last) = store.read(|c| sis_syncs::recent(c, 1)).await
        && let Some(last) = last.pop()
        && last.outcome != "ok"
    {
        let msg = last.message.unwrap_or_default();
        let first_line = msg.lines().next().unwrap_or_default().to_string();
        out.push((
            format!("sync:{first_line}"),
            format!(
                "the last SIS sync ({}, {}) was {}: {msg}; the previous copy stays in use",
                last.kind, last.source, last.outcome
            ),
        ));
    }
    let dir = store_dir.to_path_buf();
    let stale = tokio::task::spawn_blocking(move || staleness(&dir, max_age, now))
        .await
        .ok()
        .flatten();
    if let Some(s) = stale {
        out.push(("stale".into(), s));
    }
    out
}

/// Emails each current problem to `[sis] notify` once; forgets problems
/// that are over, so they are emailed again if they come back.
async fn notify(
    config: &Config,
    store: &Store,
    email: Option<&crate::deliver::providers::Provider>,
    problems: &[(String, String)],
) {
    let keys: Vec<String> = problems.iter().map(|(k, _)| k.clone()).collect();
    if let Err(e) = store
        .write(move |c| sis_syncs::clear_problems(c, &keys))
        .await
    {
        tracing::error!(error = %e, "Cannot update the SIS problem notices.");
    }
    let (Some(provider), false) = (email, config.sis.notify.is_empty()) else {
        return;
    };
    for (key, sentence) in problems {
        let (k, now) = (key.clone(), crate::store::now_ms());
        // Noted before sending: a crash between the two loses one email
        // rather than sending it on every restart.
        match store
            .write(move |c| sis_syncs::note_problem(c, &k, now))
            .await
        {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::error!(error = %e, "Cannot record a SIS problem notice.");
                continue;
            }
        }
        for to in &config.sis.notify {
            let mut text = sentence.clone();
            if let Some(first) = text.get_mut(0..1) {
                first.make_ascii_uppercase();
            }
            let msg = crate::deliver::message::OutboundMessage {
                delivery_id: 0,
                alert_id: 0,
                channel: crate::domain::Channel::Email,
                to: to.clone(),
                language: "en".into(),
                subject: "klaxon: the SIS copy needs attention".into(),
                body: format!(
                    "{text}.\n\nAlerts still go out using the copy klaxon has. Run `klaxon sis status` on the server for the recent syncs.\n"
                ),
                html: None,
                ack_url: String::new(),
                speech: String::new(),
                // An operator notice, not a routine mailing: no unsubscribe header.
                severity: crate::playbook::Severity::Urgent,
                bounce_tag: None,
            };
            if let Err(e) = provider.send(&msg).await {
                tracing::error!(error = %e, "Cannot email a SIS problem notice.");
            }
        }
        tracing::warn!(problem = %key, "SIS problem emailed to sis.notify.");
    }
}

/// Runs scheduled pulls and problem checks until `shutdown`. Returns at
/// once when there is neither a `[sis.source]` nor a `[sis] notify`.
pub async fn run(
    config: Arc<Config>,
    store: Store,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let sis = config.sis.clone();
    if sis.source.is_none() && sis.notify.is_empty() {
        return;
    }
    tokio::pin!(shutdown);
    let store_dir = config.store_dir();
    let tz = TimeZone::get(&config.server.timezone).unwrap_or(TimeZone::UTC);
    let email = crate::app::build_providers(&config)
        .ok()
        .and_then(|(slots, _)| {
            slots
                .into_iter()
                .find(|s| s.channels.contains(&crate::domain::Channel::Email))
                .map(|s| s.provider)
        });
    let mut puller = None;
    if let Some(src) = &sis.source {
        let mut issues = crate::config::Issues::default();
        let started = crate::store::now_ms();
        let made = src
            .secret(&config.base_dir, &mut issues)
            .ok_or_else(|| {
                issues
                    .list
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .and_then(|secret| Puller::new(src.clone(), secret).map_err(|e| e.to_string()));
        match made {
            Ok(p) => puller = Some((p, src.clone())),
            Err(e) => {
                // Recorded as a failed sync: /readyz says degraded and
                // sis.notify hears of it, instead of a line in a log.
                tracing::error!(error = %e, "Cannot start the SIS pull.");
                let shown = Err(format!("cannot start the SIS pull: {e}"));
                let rec = record_of("schedule", "rest", &src.base_url, started, &shown, "failed");
                if let Err(e) = record(&store, &metrics, rec).await {
                    tracing::error!(error = %e, "Cannot record a SIS sync.");
                }
            }
        }
    }
    if let Some(p) = &mut puller {
        // Between pulls, waiting for a minute or two is better than a long
        // backoff: the next scheduled pull tries again anyway.
        p.0.retries = 4;
    }
    let check_every = Duration::from_secs(600);
    // After a pull that did not replace the copy, the next try waits this
    // long (or until the schedule, if sooner): no hammering a broken server.
    let retry_gap = jiff::SignedDuration::from_secs(600);
    let mut last_try: Option<Timestamp> = None;
    let mut first = true;
    loop {
        let now = Timestamp::now();
        let mut due = None;
        if let Some((_, src)) = &puller
            && let Some(schedule) = Schedule::of(src)
        {
            let last = store
                .read(|c| sis_syncs::last_ok(c, &["rest", "rest-incremental"]))
                .await
                .ok()
                .flatten();
            let last_at = last
                .as_ref()
                .and_then(|l| Timestamp::from_millisecond(l.started_at).ok());
            // Never pulled: now, rather than at the next 02:30.
            let mut d = match last_at {
                None => now,
                Some(_) => next_run(now, &schedule, &tz, last_at),
            };
            if let Some(t) = last_try.and_then(|t| t.checked_add(retry_gap).ok())
                && t > d
                && last_at.is_none_or(|l| l < last_try.unwrap_or(l))
            {
                d = d.max(t.min(next_run(now, &schedule, &tz, Some(now))));
            }
            due = Some(d);
        }
        // The first round checks at once: a daemon started on a stale copy
        // says so now, not ten minutes later.
        let wake = if std::mem::take(&mut first) {
            Duration::ZERO
        } else {
            due.map_or(check_every, |d| {
                Duration::try_from(d.duration_since(now))
                    .unwrap_or(Duration::ZERO)
                    .min(check_every)
            })
        };
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(wake) => {}
        }
        if let (Some((p, src)), Some(due)) = (&mut puller, due)
            && Timestamp::now() >= due
        {
            last_try = Some(Timestamp::now());
            tokio::select! {
                _ = &mut shutdown => break,
                _ = pull_and_record(&sis, p, src, &store, &metrics, &store_dir) => {}
            }
        }
        let problems = problems(&store, &store_dir, sis.max_age, Timestamp::now()).await;
        notify(&config, &store, email.as_ref(), &problems).await;
    }
}

/// One scheduled pull: incremental unless a full pull is due.
async fn pull_and_record(
    sis: &SisConfig,
    puller: &mut Puller,
    src: &SourceConfig,
    store: &Store,
    metrics: &Metrics,
    store_dir: &Path,
) {
    let last_full = store
        .read(|c| sis_syncs::last_ok(c, &["rest"]))
        .await
        .ok()
        .flatten();
    let last_any = store
        .read(|c| sis_syncs::last_ok(c, &["rest", "rest-incremental"]))
        .await
        .ok()
        .flatten();
    let started = crate::store::now_ms();
    let full_due =
        last_full.is_none_or(|f| started - f.started_at >= src.full_every.0.as_millis() as i64);
    // Five minutes of overlap: a record changed while the last pull ran is
    // asked for again rather than missed.
    let since = match (&last_any, full_due) {
        (Some(l), false) => Timestamp::from_millisecond(l.started_at - 300_000).ok(),
        _ => None,
    };
    let result = pull_once(sis, puller, &src.base_url, store_dir, since).await;
    let outcome = result.as_ref().err().map_or("ok", SyncError::outcome);
    let kind = if since.is_some() {
        "rest-incremental"
    } else {
        "rest"
    };
    let shown = result.map_err(|e| e.to_string());
    match &shown {
        Ok(r) => tracing::info!(
            added = r.changes.added,
            changed = r.changes.changed,
            removed = r.changes.removed,
            warnings = r.warnings_total,
            "SIS pulled and the copy replaced."
        ),
        Err(e) => {
            tracing::warn!(error = %e, "SIS pull did not replace the copy; the previous copy stays in use.")
        }
    }
    let rec = record_of("schedule", kind, &src.base_url, started, &shown, outcome);
    if let Err(e) = record(store, metrics, rec).await {
        tracing::error!(error = %e, "Cannot record a SIS sync.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn every_runs_one_period_after_the_last_pull() {
        let s = Schedule::Every(Duration::from_secs(3600));
        let tz = TimeZone::UTC;
        let now = ts("2026-11-23T10:00:00Z");
        assert_eq!(next_run(now, &s, &tz, None), now);
        assert_eq!(
            next_run(now, &s, &tz, Some(ts("2026-11-23T09:30:00Z"))),
            ts("2026-11-23T10:30:00Z")
        );
        assert_eq!(
            next_run(now, &s, &tz, Some(ts("2026-11-23T07:00:00Z"))),
            now,
            "overdue runs now"
        );
    }

    #[test]
    fn at_runs_at_the_next_wall_clock_time_in_the_servers_zone() {
        let s = Schedule::At(jiff::civil::time(2, 30, 0, 0));
        let chicago = TimeZone::get("America/Chicago").unwrap();
        // 01:00 in Chicago (07:00Z): today at 02:30 local = 08:30Z.
        assert_eq!(
            next_run(ts("2026-11-23T07:00:00Z"), &s, &chicago, None),
            ts("2026-11-23T08:30:00Z")
        );
        // Just after 02:30 local: tomorrow.
        assert_eq!(
            next_run(ts("2026-11-23T08:31:00Z"), &s, &chicago, None),
            ts("2026-11-24T08:30:00Z")
        );
        // The night clocks go back (1 Nov 2026): 02:30 CST is 08:30Z.
        assert_eq!(
            next_run(ts("2026-11-01T05:00:00Z"), &s, &chicago, None),
            ts("2026-11-01T08:30:00Z")
        );
        // The night clocks go forward (8 Mar 2026): 02:30 does not exist;
        // it runs at 03:30 CDT, 08:30Z.
        assert_eq!(
            next_run(ts("2026-03-08T06:00:00Z"), &s, &chicago, None),
            ts("2026-03-08T08:30:00Z")
        );
    }

    #[test]
    fn a_copy_older_than_max_age_is_stale() {
        let max = Dur::secs(36 * 3600);
        let at = ts("2026-11-21T12:00:00Z");
        assert_eq!(
            age_sentence(Some(at), ts("2026-11-22T12:00:00Z"), max),
            None
        );
        assert_eq!(
            age_sentence(Some(at), ts("2026-11-23T04:00:00Z"), max).as_deref(),
            Some("the SIS copy is 40 h old (max_age 36h)")
        );
        assert!(age_sentence(None, at, max).unwrap().contains("no SIS copy"));
    }
}
