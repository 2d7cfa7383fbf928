//! Metrics for Prometheus, on the official `prometheus-client` crate (a
//! hand-written registry got histograms wrong). Every series is registered
//! up front from the tables below with its help text; components count by
//! name (`inc`, `add`, `observe`, `set_gauge`) and `render` writes the
//! OpenMetrics text that `GET /metrics` serves. Counts only: no personal data
//! in any label.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;
type Hist = Family<Labels, Histogram, fn() -> Histogram>;

/// Counters: full name (with `_total`) and help.
const COUNTERS: &[(&str, &str)] = &[
    (
        "klaxon_alerts_created_total",
        "Alerts created, by playbook, kind and drill",
    ),
    (
        "klaxon_provider_requests_total",
        "Provider requests, by provider and outcome",
    ),
    (
        "klaxon_acks_total",
        "Acknowledgements, by channel of reply and outcome",
    ),
    (
        "klaxon_escalations_total",
        "Deliveries added by escalation, by channel and drill",
    ),
    (
        "klaxon_sis_imports_total",
        "SIS imports from the watch folder, by outcome",
    ),
    (
        "klaxon_signins_total",
        "Console sign-ins, by method (oidc, token) and outcome (ok, refused, csrf, rate-limited)",
    ),
    (
        "klaxon_http_auth_failures_total",
        "Requests refused for a missing or wrong token or signature",
    ),
    (
        "klaxon_rejected_inputs_total",
        "Replies, keys, answers and callbacks that matched nothing or came too late, by kind; nothing was recorded",
    ),
    (
        "klaxon_replies_total",
        "SMS replies and keys received, by what they were",
    ),
    (
        "klaxon_task_panics_total",
        "Background tasks that panicked and were restarted, by task",
    ),
    (
        "klaxon_approval_pages_total",
        "Approvers paged for alerts waiting for approval",
    ),
    (
        "klaxon_idempotent_replays_total",
        "POSTs repeated with an Idempotency-Key: replayed, or refused for another body",
    ),
    ("klaxon_alerts_closed_total", "Alerts closed, by reason"),
    (
        "klaxon_bounce_polls_total",
        "Reads of a bounce mailbox over IMAP, by provider and outcome (ok, error)",
    ),
    (
        "klaxon_email_events_total",
        "Email events after hand-over (SendGrid webhook, DSN bounces), by source, event and outcome (applied, unchanged, unknown, ignored)",
    ),
    (
        "klaxon_feed_polls_total",
        "CAP feed polls, by feed and outcome (ok, not-modified, error)",
    ),
    (
        "klaxon_feed_errors_total",
        "Failed CAP feed polls, by feed and reason (request, status, too-large, unreadable, wrong-content, not-acted)",
    ),
    (
        "klaxon_cap_messages_total",
        "CAP messages handled, by source and outcome",
    ),
    (
        "klaxon_sis_syncs_total",
        "SIS syncs (pulls and imports), by kind and outcome (ok, refused, failed)",
    ),
    (
        "klaxon_webhook_refusals_total",
        "Signed webhook triggers refused, by source and reason (nothing recorded)",
    ),
    (
        "klaxon_retention_rows_purged_total",
        "Rows stripped of personal data by retention, by table",
    ),
];

/// Histograms of time to notify, in seconds from release.
const HISTOGRAMS: &[(&str, &str)] = &[
    (
        "klaxon_time_to_handover_seconds",
        "From an alert's release to a first delivery's hand-over to a provider, by channel and drill",
    ),
    (
        "klaxon_time_to_delivery_seconds",
        "From an alert's release to a provider's delivered report, by drill",
    ),
    (
        "klaxon_time_to_confirmation_seconds",
        "From an alert's release to a recipient's first confirmation, by channel of reply and drill",
    ),
];

/// Gauges with a single value and no labels.
const PLAIN_GAUGES: &[(&str, &str)] = &[
    ("klaxon_start_time_seconds", "When the daemon started"),
    (
        "klaxon_sis_last_success_timestamp_seconds",
        "When the last SIS sync that replaced the copy finished (Unix seconds)",
    ),
    (
        "klaxon_retention_last_run_timestamp_seconds",
        "When the last retention run finished (Unix seconds)",
    ),
];

/// Gauges set at scrape time (or by their owner).
const GAUGES: &[(&str, &str)] = &[
    (
        "klaxon_outbox_deliveries",
        "Deliveries queued or in flight, by channel and state",
    ),
    (
        "klaxon_open_alerts",
        "Alerts not yet closed, by state and drill",
    ),
    (
        "klaxon_feed_up",
        "1 when the CAP feed's last poll succeeded, 0 when it failed",
    ),
    (
        "klaxon_feed_last_success_timestamp_seconds",
        "When the CAP feed last answered usable content (Unix time)",
    ),
];

fn time_buckets() -> Histogram {
    Histogram::new([
        0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    ])
}

pub struct Metrics {
    registry: Registry,
    counters: HashMap<&'static str, Family<Labels, Counter>>,
    histograms: HashMap<&'static str, Hist>,
    gauges: HashMap<&'static str, Family<Labels, Gauge<f64, AtomicU64>>>,
    /// Gauges with one value and no labels (`PLAIN_GAUGES`).
    plain: HashMap<&'static str, Gauge<f64, AtomicU64>>,
    /// Serialises scrapes: gauges are cleared and refilled per scrape.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let mut counters = HashMap::new();
        for (name, help) in COUNTERS {
            let f = Family::<Labels, Counter>::default();
            // The encoder adds `_total` to counters itself.
            registry.register(name.trim_end_matches("_total"), *help, f.clone());
            counters.insert(*name, f);
        }
        let mut histograms = HashMap::new();
        for (name, help) in HISTOGRAMS {
            let f: Hist = Family::new_with_constructor(time_buckets as fn() -> Histogram);
            registry.register(*name, *help, f.clone());
            histograms.insert(*name, f);
        }
        let mut gauges = HashMap::new();
        for (name, help) in GAUGES {
            let f = Family::<Labels, Gauge<f64, AtomicU64>>::default();
            registry.register(*name, *help, f.clone());
            gauges.insert(*name, f);
        }
        let mut plain = HashMap::new();
        for (name, help) in PLAIN_GAUGES {
            let g = Gauge::<f64, AtomicU64>::default();
            registry.register(*name, *help, g.clone());
            plain.insert(*name, g);
        }
        Metrics {
            plain,
            registry,
            counters,
            histograms,
            gauges,
            scrape: Mutex::new(()),
        }
    }
}

fn labels(l: &[(&str, &str)]) -> Labels {
    l.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Metrics {
    pub fn inc(&self, name: &'static str, l: &[(&str, &str)]) {
        self.add(name, l, 1);
    }

    pub fn add(&self, name: &'static str, l: &[(&str, &str)], n: u64) {
        match self.counters.get(name) {
            Some(f) => {
                f.get_or_create(&labels(l)).inc_by(n);
            }
            None => debug_assert!(
                false,
                "counter {name} is not registered in metrics::COUNTERS"
            ),
        }
    }

    /// A counter's value (tests and status pages).
    pub fn get(&self, name: &'static str, l: &[(&str, &str)]) -> u64 {
        self.counters
            .get(name)
            .map(|f| f.get_or_create(&labels(l)).get())
            .unwrap_or(0)
    }

    pub fn observe(&self, name: &'static str, l: &[(&str, &str)], seconds: f64) {
        match self.histograms.get(name) {
            Some(f) => f.get_or_create(&labels(l)).observe(seconds.max(0.0)),
            None => debug_assert!(false, "histogram {name} is not registered"),
        }
    }

    pub fn set_gauge(&self, name: &'static str, l: &[(&str, &str)], value: f64) {
        if let Some(g) = self.plain.get(name) {
            g.set(value);
            return;
        }
        match self.gauges.get(name) {
            Some(f) => {
                f.get_or_create(&labels(l)).set(value);
            }
            None => debug_assert!(false, "gauge {name} is not registered"),
        }
    }

    /// A gauge's current value; `None` when it was never set.
    pub fn gauge(&self, name: &'static str, l: &[(&str, &str)]) -> Option<f64> {
        if let Some(g) = self.plain.get(name) {
            return Some(g.get());
        }
        self.gauges
            .get(name)
            .and_then(|f| f.get(&labels(l)).map(|g| g.get()))
    }

    /// Renders every series as OpenMetrics text. `fill` sets the scrape-time
    /// gauges first (after clearing them, so a series that went away is gone).
    pub fn render(&self, fill: impl FnOnce(&Metrics)) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        for name in ["klaxon_outbox_deliveries", "klaxon_open_alerts"] {
            if let Some(f) = self.gauges.get(name) {
                f.clear();
            }
        }
        fill(self);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The content type of `render`'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of `to_prometheus_text`'s output.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics → the Prometheus text format (0.0.4), for scrapers and tools
/// (`promtool check metrics`) that do not ask for OpenMetrics: counter
/// families are named with their `_total` suffix and there is no `# EOF`.
pub fn to_prometheus_text(open_metrics: &str) -> String {
    let mut out = String::with_capacity(open_metrics.len());
    let mut help: Option<&str> = None;
    for line in open_metrics.lines() {
        if line == "# EOF" {
            continue;
        }
        if line.starts_with("# HELP ") {
            if let Some(h) = help.replace(line) {
                out.push_str(h);
                out.push('\n');
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            if let Some(h) = help.take() {
                let text = h.strip_prefix(&format!("# HELP {name} ")).unwrap_or("");
                out.push_str(&format!("# HELP {name}_total {text}\n"));
            }
            out.push_str(&format!("# TYPE {name}_total counter\n"));
            continue;
        }
        if let Some(h) = help.take() {
            out.push_str(h);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    if let Some(h) = help {
        out.push_str(h);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_histograms_and_gauges_render_once_each() {
        let m = Metrics::default();
        m.inc(
            "klaxon_acks_total",
            &[("via", "web"), ("outcome", "recorded")],
        );
        m.add(
            "klaxon_acks_total",
            &[("via", "web"), ("outcome", "recorded")],
            2,
        );
        m.observe(
            "klaxon_time_to_handover_seconds",
            &[("channel", "sms"), ("drill", "false")],
            0.3,
        );
        let text = m.render(|m| m.set_gauge("klaxon_start_time_seconds", &[], 12.0));
        assert!(
            text.contains("klaxon_acks_total{via=\"web\",outcome=\"recorded\"} 3"),
            "{text}"
        );
        assert!(text.contains("# TYPE klaxon_time_to_handover_seconds histogram"));
        assert!(
            text.contains("klaxon_time_to_handover_seconds_bucket{le=\"0.5\",channel=\"sms\",drill=\"false\"} 1"),
            "{text}"
        );
        assert!(text.contains("klaxon_start_time_seconds 12.0"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"));
        assert_eq!(
            m.get(
                "klaxon_acks_total",
                &[("via", "web"), ("outcome", "recorded")]
            ),
            3
        );
    }
}
