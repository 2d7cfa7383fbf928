//! Retention: `[retention]` and the daily task that applies it. After
//! `personal_data` an alert's recipients, addresses and answers are purged
//! (its counts, figures and audit entries stay); after `outbox` delivery
//! payloads (address, provider id, error text) are pruned; alerts on legal
//! hold (`klaxon audit hold`) are skipped. Each run is audited and counted
//! in `/metrics`, gives the freed pages back (`PRAGMA incremental_vacuum`)
//! and logs the audit chain's head so journald keeps a copy apart from the
//! store. The SQL is in `store::retention`.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;

use crate::config::{Dur, Issues};
use crate::services::Services;
use crate::store::retention::{self, Purged};
use crate::store::{StoreError, audit};

/// `[retention]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// How long after an alert closes its personal data is kept.
    pub personal_data: Dur,
    /// How long delivery payloads are kept.
    pub outbox: Dur,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            personal_data: Dur(Duration::from_secs(5 * 31_557_600)),
            outbox: Dur(DAY * 90),
        }
    }
}

const DAY: Duration = Duration::from_secs(86_400);

/// The shortest `personal_data` accepted: a typo like "5d" for "5y" must
/// not purge last week's lockdown.
const MIN_PERSONAL: Duration = Duration::from_secs(30 * 86_400);

pub fn validate(c: &RetentionConfig, issues: &mut Issues) {
    if c.personal_data.0 < MIN_PERSONAL {
        issues.push(
            "retention.personal_data",
            format!(
                "`{}` is shorter than 30 days; alerts are asked about for years (write \"5y\", \"400d\")",
                days(c.personal_data)
            ),
        );
    }
    if c.outbox.0 < DAY {
        issues.push(
            "retention.outbox",
            format!(
                "`{}` is shorter than a day; write it in days, like \"90d\"",
                c.outbox
            ),
        );
    }
}

fn days(d: Dur) -> String {
    format!("{}d", d.0.as_secs() / 86_400)
}

/// Recipients stripped per write, so a district-wide purge never holds the
/// writer long while an emergency may be sending (2,000 held it 137 ms on
/// the loaded 2-core machine; see BENCHMARKS.md for what is still slow).
pub const CHUNK: i64 = 500;

/// What one run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunReport {
    pub alerts: i64,
    pub purged: Purged,
    pub outbox: i64,
}

/// One retention run at `now`: purges what is due, prunes the outbox,
/// audits and counts it, vacuums.
pub async fn run_once(sv: &Services, now: i64) -> Result<RunReport, StoreError> {
    let cfg = &sv.config.retention;
    let cutoff = now - cfg.personal_data.0.as_millis() as i64;
    let due = sv.store.read(move |c| retention::due(c, cutoff)).await?;
    let mut report = RunReport::default();
    for alert in due {
        match purge_alert(sv, alert, now).await {
            Ok(p) => {
                report.alerts += 1;
                report.purged.add(p);
            }
            // Put on hold since the list was read: it stays as it is.
            Err(StoreError::Conflict(why)) => {
                tracing::info!(alert, reason = %why, "Retention skipped an alert put on hold.")
            }
            Err(e) => return Err(e),
        }
    }
    let outbox_cutoff = now - cfg.outbox.0.as_millis() as i64;
    loop {
        let n = sv
            .store
            .write_bulk(move |c| retention::prune_outbox(c, outbox_cutoff, CHUNK * 5))
            .await?;
        report.outbox += n;
        if n < CHUNK * 5 {
            break;
        }
    }
    let r = report;
    sv.store
        .write(move |c| {
            retention::record_run(c, now, r.alerts, r.purged, r.outbox)?;
            retention::incremental_vacuum(c, 0)
        })
        .await?;
    let m = &sv.metrics;
    for (table, n) in [
        ("recipients", r.purged.recipients),
        ("deliveries", r.purged.deliveries + r.outbox),
        ("replies", r.purged.replies),
        ("pickups", r.purged.pickups),
    ] {
        m.add(
            "klaxon_retention_rows_purged_total",
            &[("table", table)],
            n as u64,
        );
    }
    m.set_gauge(
        "klaxon_retention_last_run_timestamp_seconds",
        &[],
        now as f64 / 1000.0,
    );
    Ok(report)
}

async fn purge_alert(sv: &Services, alert: i64, now: i64) -> Result<Purged, StoreError> {
    let mut total = Purged::default();
    loop {
        let p = sv
            .store
            .write_bulk(move |c| retention::purge_chunk(c, alert, CHUNK))
            .await?;
        total.add(p);
        if p.recipients < CHUNK {
            break;
        }
    }
    let t = total;
    let last = sv
        .store
        .write(move |c| retention::finish(c, alert, now, t))
        .await?;
    total.add(last);
    Ok(total)
}

/// The daily task: a first run a minute after start-up, then every day.
/// Runs on the services' clock, so tests move time instead of waiting.
pub async fn run(sv: Arc<Services>, mut stop: watch::Receiver<bool>) {
    let mut next = sv.now_ms() + 60_000;
    loop {
        while sv.now_ms() < next {
            tokio::select! {
                _ = sv.clock.sleep_until(next, Duration::from_secs(60)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        let now = sv.now_ms();
        next = match run_once(&sv, now).await {
            Ok(r) => {
                tracing::info!(
                    alerts = r.alerts,
                    rows = r.purged.total(),
                    outbox = r.outbox,
                    "Retention run done."
                );
                now + 24 * 3_600_000
            }
            Err(e) => {
                tracing::error!(error = %e, "Retention run failed; it is tried again in an hour.");
                now + 3_600_000
            }
        };
        match sv.store.read(audit::verify).await {
            Ok(v) if v.ok => tracing::info!(
                entries = v.entries,
                head_seq = v.head_seq,
                head_hash = %v.head_hash,
                "Audit chain verified."
            ),
            Ok(v) => tracing::error!(
                error = %v.first_break.map(|b| b.to_string()).unwrap_or_default(),
                head_seq = v.head_seq,
                "The audit chain is broken; run `klaxon audit verify`."
            ),
            Err(e) => tracing::error!(error = %e, "Cannot verify the audit chain."),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    const BASE: &str = r#"
[server]
listen = "127.0.0.1:0"
public_url = "http://127.0.0.1:8080"

[store]
dir = "state"

[[providers]]
name = "demo-log"
kind = "log"
channels = ["sms", "voice", "email"]
path = "outbox.jsonl"
"#;

    fn load(extra: &str) -> Result<Config, ConfigError> {
        Config::from_str(
            &format!("{BASE}{extra}"),
            Path::new("/etc/klaxon/klaxon.toml"),
        )
    }

    #[test]
    fn defaults_years_and_every_bad_key_named_with_its_line() {
        let c = load("").unwrap();
        assert_eq!(c.retention.personal_data.0.as_secs(), 5 * 31_557_600);
        assert_eq!(c.retention.outbox.0.as_secs(), 90 * 86_400);
        let c = load("[retention]\npersonal_data = \"7y\"\noutbox = \"30d\"\n").unwrap();
        assert_eq!(c.retention.personal_data.0.as_secs(), 7 * 31_557_600);
        let Err(ConfigError::Invalid { issues, .. }) =
            load("[retention]\npersonal_data = \"5d\"\noutbox = \"2h\"\nkeep = 1\n")
        else {
            panic!("refused");
        };
        let keys: Vec<(&str, Option<usize>)> =
            issues.iter().map(|i| (i.key.as_str(), i.line)).collect();
        assert!(keys.contains(&("retention.keep", Some(17))), "{issues:?}");
        let Err(ConfigError::Invalid { issues, .. }) =
            load("[retention]\npersonal_data = \"5d\"\noutbox = \"2h\"\n")
        else {
            panic!("refused");
        };
        let keys: Vec<(&str, Option<usize>)> =
            issues.iter().map(|i| (i.key.as_str(), i.line)).collect();
        assert_eq!(
            keys,
            vec![
                ("retention.personal_data", Some(15)),
                ("retention.outbox", Some(16))
            ],
            "{issues:?}"
        );
        assert!(issues[0].message.contains("shorter than 30 days"));
    }
}
