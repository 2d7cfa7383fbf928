//! Readable terminal output: short sentences and aligned tables.

use crate::cli::stdout::outln;

use crate::store::deliveries::ContactProblem;
use crate::trigger::TriggerResponse;

pub(crate) fn local(ms: Option<i64>, tz: &str) -> String {
    let Some(ms) = ms else { return "—".into() };
    let zone = jiff::tz::TimeZone::get(tz).unwrap_or(jiff::tz::TimeZone::UTC);
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| {
            t.to_zoned(zone)
                .strftime("%Y-%m-%d %H:%M:%S %Z")
                .to_string()
        })
        .unwrap_or_default()
}

/// Prints rows as a table with a header, columns padded to fit.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        outln!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    line(widths.iter().map(|w| "-".repeat(*w)).collect());
    for r in rows {
        line(r.clone());
    }
}

pub fn created(c: &TriggerResponse) {
    let what = if c.held {
        "created and held for approval"
    } else {
        "created and sending"
    };
    outln!(
        "Alert {} {what}{}: {} recipient(s), {} message(s), {} with no usable address.",
        c.id,
        if c.drill { " (DRILL)" } else { "" },
        c.recipients,
        c.deliveries,
        c.unreachable
    );
    if let Some(d) = &c.deadline {
        outln!(
            "Everyone is to be handed over by {d} (estimate: {:.0} s).",
            c.estimate_seconds
        );
    }
    if let Some(w) = &c.warning {
        outln!("WARNING: {w}");
    }
}

pub fn alert_list(list: &serde_json::Value, tz: &str) {
    let Some(items) = list.as_array() else { return };
    if items.is_empty() {
        outln!("No alerts yet.");
        return;
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|a| {
            vec![
                a["id"].to_string(),
                format!(
                    "{}{}",
                    if a["drill"] == true { "DRILL " } else { "" },
                    a["title"].as_str().unwrap_or("")
                ),
                a["place"].as_str().unwrap_or("").to_string(),
                a["state"].as_str().unwrap_or("").to_string(),
                local(a["created_at"].as_i64(), tz),
                a["recipients"].to_string(),
            ]
        })
        .collect();
    table(
        &["ID", "ALERT", "WHERE", "STATE", "CREATED", "RECIPIENTS"],
        &rows,
    );
}

pub fn alert_status(s: &serde_json::Value, tz: &str) {
    outln!(
        "Alert {} — {}{} — {}",
        s["id"],
        if s["drill"] == true { "DRILL " } else { "" },
        s["title"].as_str().unwrap_or(""),
        s["place"].as_str().unwrap_or("")
    );
    match s["closed_reason"].as_str() {
        Some(r) => outln!("State:        closed ({r})"),
        None => outln!("State:        {}", s["state"].as_str().unwrap_or("")),
    }
    let verdict = match s["deadline_met"].as_bool() {
        Some(true) => "met".to_string(),
        Some(false) => "MISSED".to_string(),
        None => match s["eta_seconds"].as_f64() {
            Some(e) => format!("pending, about {e:.0} s to go"),
            None => "pending".into(),
        },
    };
    outln!(
        "Deadline:     {} ({verdict})",
        local(s["notify_deadline"].as_i64(), tz)
    );
    if let Some(h) = s["handover_seconds"].as_f64() {
        outln!("Handed over:  every first delivery in {h:.1} s");
    }
    outln!(
        "Recipients:   {} ({} with no usable address); reached {}; delivered {}; confirmed {}",
        s["recipients"],
        s["unreachable"],
        s["reached"],
        s["delivered"],
        s["acknowledged"]
    );
    let spread =
        |v: &serde_json::Value| match (v["p50"].as_f64(), v["p95"].as_f64(), v["max"].as_f64()) {
            (Some(a), Some(b), Some(c)) => format!("p50 {a:.1} s, p95 {b:.1} s, max {c:.1} s"),
            _ => "—".into(),
        };
    let f = &s["figures"];
    outln!(
        "Time to:      hand-over {}; delivery {}; confirmation {}",
        spread(&f["handover"]),
        spread(&f["delivery"]),
        spread(&f["confirmation"])
    );
    let e = &s["escalation"];
    if e["started_at"].is_i64() {
        let by: Vec<String> = e["totals"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect())
            .unwrap_or_default();
        outln!(
            "Escalation:   started {}, {} delivery(ies): {}; confirmed since: {}",
            local(e["started_at"].as_i64(), tz),
            e["deliveries"],
            by.join(", "),
            e["confirmed_after"]
        );
    }
    if s["conflicts"].as_i64().unwrap_or(0) > 0 {
        outln!(
            "Pickup:       {} student(s) whose guardians answered differently; see /api/v1/alerts/{}/pickup",
            s["conflicts"],
            s["id"]
        );
    }
    if s["inbox"].as_i64().unwrap_or(0) > 0 {
        outln!(
            "Inbox:        {} message(s) from recipients; see /api/v1/alerts/{}/inbox",
            s["inbox"],
            s["id"]
        );
    }
    if let Some(w) = s["warning"].as_str() {
        outln!("WARNING:      {w}");
    }
    let states = [
        "queued",
        "sending",
        "sent",
        "delivered",
        "failed",
        "undeliverable",
        "cancelled",
    ];
    let mut rows = Vec::new();
    if let Some(chs) = s["channels"].as_object() {
        for (ch, counts) in chs {
            let mut r = vec![ch.clone()];
            for st in states {
                r.push(counts[st].as_i64().unwrap_or(0).to_string());
            }
            rows.push(r);
        }
    }
    if !rows.is_empty() {
        outln!();
        let mut header = vec!["CHANNEL"];
        header.extend(states);
        table(&header, &rows);
    }
    if let Some(ch) = s["choices"].as_object()
        && !ch.is_empty()
    {
        outln!();
        let rows: Vec<Vec<String>> = ch
            .iter()
            .map(|(k, v)| vec![k.clone(), v.to_string()])
            .collect();
        table(&["ANSWER", "COUNT"], &rows);
    }
}

pub fn contactability(rows: &[ContactProblem], tz: &str) {
    if rows.is_empty() {
        outln!("No contact has failed permanently.");
        return;
    }
    outln!(
        "{} address(es) failed permanently; fix them in the SIS:",
        rows.len()
    );
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|p| {
            vec![
                p.person_id.clone(),
                p.name.clone(),
                p.channel.clone(),
                p.address.clone(),
                p.code.clone().unwrap_or_default(),
                p.reason.clone().unwrap_or_default(),
                local(Some(p.last_attempt_at), tz),
            ]
        })
        .collect();
    table(
        &[
            "PERSON",
            "NAME",
            "CHANNEL",
            "ADDRESS",
            "CODE",
            "REASON",
            "LAST ATTEMPT",
        ],
        &rows,
    );
}

/// `klaxon sis status`: the copy in use, what is wrong, the last syncs.
pub fn sis_status(
    meta: Option<&crate::sis::SisMeta>,
    problems: &[String],
    syncs: &[crate::store::sis_syncs::SyncRecord],
    tz: &str,
) {
    match meta {
        Some(m) => println!(
            "The SIS copy in use was imported at {} from {}: {} students, {} guardians, {} staff.",
            m.imported_at, m.source, m.students, m.guardians, m.staff
        ),
        None => println!("There is no SIS copy yet."),
    }
    if problems.is_empty() {
        println!("Nothing needs attention.");
    } else {
        println!("Needs attention:");
        for p in problems {
            println!("  - {p}");
        }
    }
    println!();
    if syncs.is_empty() {
        println!("No syncs recorded yet.");
        return;
    }
    let rows: Vec<Vec<String>> = syncs
        .iter()
        .map(|r| {
            vec![
                local(Some(r.finished_at), tz),
                r.trigger.clone(),
                r.kind.clone(),
                r.outcome.clone(),
                format!("+{} ~{} -{}", r.added, r.changed, r.removed),
                r.warnings.to_string(),
                r.message
                    .as_deref()
                    .map(|m| m.chars().take(100).collect())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "finished", "by", "kind", "outcome", "people", "warnings", "why",
        ],
        &rows,
    );
}
