//! Counters for Prometheus. A handful of labelled counters kept in memory and
//! rendered as text by `GET /metrics`; gauges that live in the store (queue
//! depth) are read at scrape time by the HTTP layer.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Labelled counters: name → label set → value.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<&'static str, BTreeMap<String, u64>>>,
    gauges: Mutex<BTreeMap<&'static str, BTreeMap<String, f64>>>,
}

/// Help text for each gauge set with [`Metrics::set_gauge`].
const GAUGE_HELP: &[(&str, &str)] = &[(
    "klaxon_sis_last_success_timestamp_seconds",
    "When the last SIS sync that replaced the copy finished (Unix seconds).",
)];

/// Help text for each counter, printed as `# HELP`.
const HELP: &[(&str, &str)] = &[
    (
        "klaxon_alerts_created_total",
        "Alerts created, by playbook and drill.",
    ),
    (
        "klaxon_provider_requests_total",
        "Provider requests, by provider and outcome.",
    ),
    (
        "klaxon_acks_total",
        "Acknowledgements recorded, by channel of reply and outcome.",
    ),
    (
        "klaxon_escalations_total",
        "Deliveries added by escalation.",
    ),
    (
        "klaxon_sis_imports_total",
        "SIS imports from the watch folder, by outcome.",
    ),
    (
        "klaxon_sis_syncs_total",
        "SIS syncs (pulls and imports), by kind and outcome (ok, refused, failed).",
    ),
    (
        "klaxon_http_auth_failures_total",
        "Requests refused for a missing or wrong token or signature.",
    ),
];

impl Metrics {
    pub fn inc(&self, name: &'static str, labels: &[(&str, &str)]) {
        self.add(name, labels, 1);
    }

    pub fn add(&self, name: &'static str, labels: &[(&str, &str)], n: u64) {
        let key = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        *c.entry(name).or_default().entry(key).or_default() += n;
    }

    pub fn set_gauge(&self, name: &'static str, labels: &[(&str, &str)], value: f64) {
        let key = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect::<Vec<_>>()
            .join(",");
        let mut g = self.gauges.lock().unwrap_or_else(|p| p.into_inner());
        g.entry(name).or_default().insert(key, value);
    }

    pub fn get(&self, name: &str, labels: &str) -> u64 {
        let c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        c.get(name)
            .and_then(|m| m.get(labels))
            .copied()
            .unwrap_or(0)
    }

    /// Prometheus text exposition format.
    pub fn render(&self, out: &mut String) {
        let c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        for (name, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            if let Some(series) = c.get(name) {
                for (labels, v) in series {
                    if labels.is_empty() {
                        let _ = writeln!(out, "{name} {v}");
                    } else {
                        let _ = writeln!(out, "{name}{{{labels}}} {v}");
                    }
                }
            }
        }
        drop(c);
        let g = self.gauges.lock().unwrap_or_else(|p| p.into_inner());
        for (name, help) in GAUGE_HELP {
            let Some(series) = g.get(name) else { continue };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, v) in series {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {v}");
                }
            }
        }
    }
}
