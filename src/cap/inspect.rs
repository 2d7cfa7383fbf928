//! `klaxon cap inspect FILE`: what klaxon would do with each alert in a CAP
//! document, and why, without sending anything. District IT tunes rules with
//! it before a storm.

use jiff::Timestamp;
use rusqlite::Connection;
use serde::Serialize;

use super::decide::{self, Action, Known};
use super::rules::{Skip, Targets};
use super::{AlertKey, CapAlert, Document, DocumentKind};
use crate::config::Config;
use crate::store::StoreError;
use crate::store::cap as stored;

/// The whole answer, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Report {
    pub kind: DocumentKind,
    /// Whether the store was read to tell "already handled".
    pub store_checked: bool,
    pub alerts: Vec<Entry>,
    pub skipped: Vec<SkippedEntry>,
}

#[derive(Debug, Serialize)]
pub struct Entry {
    pub identifier: String,
    pub sender: String,
    pub sent: Timestamp,
    pub status: String,
    pub msg_type: String,
    pub scope: String,
    pub events: Vec<String>,
    pub severity: Option<String>,
    pub urgency: Option<String>,
    pub certainty: Option<String>,
    pub expires: Option<Timestamp>,
    pub areas: Vec<String>,
    pub zones: Vec<String>,
    pub polygons: usize,
    pub circles: usize,
    pub references: Vec<String>,
    /// The rule it matches (or that named its event), if any.
    pub rule: Option<String>,
    /// The schools it would reach, when it would start an alert.
    pub schools: Option<Targets>,
    pub action: Action,
    /// `action` in one sentence.
    pub summary: String,
}

#[derive(Debug, Serialize)]
pub struct SkippedEntry {
    pub index: usize,
    pub id: Option<String>,
    pub error: String,
}

/// What the store knows about `alert` and the messages it references.
pub fn known(conn: &Connection, alert: &CapAlert) -> Result<Known, StoreError> {
    let seen = stored::find(conn, &alert.key())?;
    let mut referenced = Vec::new();
    for r in &alert.references {
        let key = AlertKey {
            identifier: r.identifier.clone(),
            sender: r.sender.clone(),
            sent_ms: r.sent.as_millisecond(),
        };
        if let Some(s) = stored::find(conn, &key)? {
            let out = match s.alert_id {
                Some(id) => stored::alert_went_out(conn, id)?,
                None => false,
            };
            referenced.push((s, out));
        }
    }
    Ok(Known { seen, referenced })
}

pub fn inspect(
    doc: &Document,
    config: &Config,
    conn: Option<&Connection>,
    now: Timestamp,
) -> Report {
    let alerts = doc
        .alerts
        .iter()
        .map(|a| {
            let k = conn.and_then(|c| known(c, a).ok()).unwrap_or_default();
            let action = decide::decide(
                a,
                &k,
                &config.rules,
                &config.schools,
                &config.server.timezone,
                now,
            );
            entry(a, action)
        })
        .collect();
    Report {
        kind: doc.kind,
        store_checked: conn.is_some(),
        alerts,
        skipped: doc
            .skipped
            .iter()
            .map(|s| SkippedEntry {
                index: s.index,
                id: s.id.clone(),
                error: s.error.to_string(),
            })
            .collect(),
    }
}

fn entry(a: &CapAlert, action: Action) -> Entry {
    let info = super::rules::primary_info(a);
    let rule = match &action {
        Action::Create { rule, .. } | Action::Rescind { rule, .. } => Some(rule.clone()),
        Action::Skip(
            Skip::BelowThreshold { rule, .. } | Skip::NoZone { rule } | Skip::NoSchool { rule },
        ) => Some(rule.clone()),
        Action::Skip(Skip::Test { rule, .. } | Skip::Expired { rule, .. }) => rule.clone(),
        _ => None,
    };
    let schools = match &action {
        Action::Create { targets, .. } => Some(targets.clone()),
        _ => None,
    };
    let areas = a.infos.iter().flat_map(|i| &i.areas);
    Entry {
        identifier: a.identifier.clone(),
        sender: a.sender.clone(),
        sent: a.sent,
        status: a.status.to_string(),
        msg_type: a.msg_type.to_string(),
        scope: a.scope.to_string(),
        events: a
            .infos
            .iter()
            .map(|i| i.event.clone())
            .fold(Vec::new(), |mut v, e| {
                if !v.contains(&e) {
                    v.push(e);
                }
                v
            }),
        severity: info.map(|i| i.severity.to_string()),
        urgency: info.map(|i| i.urgency.to_string()),
        certainty: info.map(|i| i.certainty.to_string()),
        expires: a.expires(),
        areas: areas
            .clone()
            .map(|x| x.desc.clone())
            .filter(|d| !d.is_empty())
            .collect(),
        zones: a.zones(),
        polygons: areas.clone().map(|x| x.polygons.len()).sum(),
        circles: areas.map(|x| x.circles.len()).sum(),
        references: a
            .references
            .iter()
            .map(|r| format!("{} ({}, {})", r.identifier, r.sender, r.sent))
            .collect(),
        rule,
        schools,
        summary: action.describe(),
        action,
    }
}

fn local(t: Option<Timestamp>, tz: &str) -> String {
    let zone = jiff::tz::TimeZone::get(tz).unwrap_or(jiff::tz::TimeZone::UTC);
    t.map(|t| t.to_zoned(zone).strftime("%Y-%m-%d %H:%M %Z").to_string())
        .unwrap_or_else(|| "—".into())
}

fn short(list: &[String], n: usize) -> String {
    if list.is_empty() {
        return "—".into();
    }
    let mut s = list.iter().take(n).cloned().collect::<Vec<_>>().join(", ");
    if list.len() > n {
        s.push_str(&format!(" (+{} more)", list.len() - n));
    }
    s
}

/// Prints the report for a person: one block per alert, or a table for a
/// feed with many.
pub fn print(r: &Report, tz: &str) {
    println!(
        "{}: {} alert(s){}.",
        r.kind.describe(),
        r.alerts.len(),
        if r.skipped.is_empty() {
            String::new()
        } else {
            format!(", {} entry(ies) skipped as unreadable", r.skipped.len())
        }
    );
    if !r.store_checked {
        println!("No klaxon store found: \"already handled\" was not checked.");
    }
    println!();
    if r.alerts.len() > 5 {
        let rows: Vec<Vec<String>> = r
            .alerts
            .iter()
            .map(|e| {
                vec![
                    short(&e.events, 1),
                    format!("{} {}", e.status, e.msg_type),
                    short(&e.zones, 2),
                    local(e.expires, tz),
                    e.rule.clone().unwrap_or_else(|| "—".into()),
                    e.summary.clone(),
                ]
            })
            .collect();
        crate::cli::output::table(
            &["EVENT", "STATUS", "ZONES", "EXPIRES", "RULE", "KLAXON"],
            &rows,
        );
    } else {
        for e in &r.alerts {
            let what = if e.events.is_empty() {
                e.msg_type.clone()
            } else {
                short(&e.events, 3)
            };
            println!("{what} — {}", e.identifier);
            let line = |k: &str, v: String| println!("  {k:<11} {v}");
            line("sender", e.sender.clone());
            line("sent", local(Some(e.sent), tz));
            line(
                "status",
                format!("{} {} ({})", e.status, e.msg_type, e.scope),
            );
            if let (Some(s), Some(u), Some(c)) = (&e.severity, &e.urgency, &e.certainty) {
                line("severity", format!("{s}, urgency {u}, certainty {c}"));
            }
            line("expires", local(e.expires, tz));
            line("area", short(&e.areas, 3));
            line("zones", short(&e.zones, 8));
            if e.polygons + e.circles > 0 {
                line(
                    "shapes",
                    format!("{} polygon(s), {} circle(s)", e.polygons, e.circles),
                );
            }
            if !e.references.is_empty() {
                line("references", short(&e.references, 3));
            }
            line("rule", e.rule.clone().unwrap_or_else(|| "none".into()));
            if let Some(t) = &e.schools {
                line(
                    "schools",
                    match t {
                        Targets::District => "the whole district".into(),
                        Targets::Schools(s) => s.join(", "),
                    },
                );
            }
            line("klaxon", e.summary.clone());
            println!();
        }
    }
    for s in &r.skipped {
        println!(
            "Skipped entry {}{}: {}",
            s.index + 1,
            s.id.as_deref()
                .map(|i| format!(" ({i})"))
                .unwrap_or_default(),
            s.error
        );
    }
}
