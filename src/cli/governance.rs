//! `klaxon audit …` and `klaxon token list|revoke`: governance commands
//! for district IT on the daemon's host. They read and write the store
//! directly (file access to the store is a stronger credential than an API
//! token, and `audit verify` must work with the daemon stopped or on a copy
//! of the file); writes go through `BEGIN IMMEDIATE` like the daemon's, so
//! they are safe beside a running daemon. Every write is audited, from
//! `cli`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use rusqlite::{Connection, OpenFlags};

use super::output::{local, table};
use super::stdout::outln;
use crate::config::Config;
use crate::store::audit::{self, ExportFilter};
use crate::store::{Store, StoreError, tokens};

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the audit log's hash chain; names the first entry altered or removed.
    #[command(
        after_help = "Examples:\n  klaxon audit verify\n  klaxon audit verify --json\n\nExits 0 when the chain is intact, 1 when an entry was altered or removed.\nKeep the head it prints somewhere else (a ticket, an email): a rewrite of\nthe whole chain after an entry shows only against such a copy."
    )]
    Verify {
        /// Check this klaxon.db instead of the configured store (a copy, a backup)
        #[arg(long, value_name = "FILE")]
        db: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Export audit entries for a public-records request (the export is itself audited).
    #[command(
        after_help = "Examples:\n  klaxon audit export --from 2026-09-01 --to 2026-09-30 > september.csv\n  klaxon audit export --from 2026-09-01 --to 2026-09-30 --alert 42 --format json\n  klaxon audit export --from 2026-01-01 --to 2026-12-31 --person stu-1042 --format json\n  klaxon audit export --from 2026-11-23T08:00:00-06:00 --to 2026-11-23T12:00:00-06:00 --text lockdown\n\nDates are YYYY-MM-DD in the server's time zone (--to includes that whole\nday) or RFC 3339 times. --person takes a SIS sourcedId: the entries naming\nthem, those of every alert that reached them, and the deliveries made to\nthem (channel and outcome; addresses are left out)."
    )]
    Export {
        /// First day or time included
        #[arg(long, value_name = "DATE")]
        from: String,
        /// Last day included, or the time the export stops before
        #[arg(long, value_name = "DATE")]
        to: String,
        /// Only entries of this alert and its follow-ups
        #[arg(long, value_name = "ID")]
        alert: Option<i64>,
        /// Only what concerns this person (SIS sourcedId)
        #[arg(long, value_name = "ID")]
        person: Option<String>,
        /// Only entries containing all these words (case-insensitive)
        #[arg(long, value_name = "WORDS")]
        text: Option<String>,
        #[arg(long, default_value = "csv", value_parser = ["csv", "json"])]
        format: String,
    },
    /// Put an alert on legal hold: retention keeps its personal data until released.
    #[command(
        after_help = "Example:\n  klaxon audit hold 42 --reason \"Records request 2026-117 (Smith)\""
    )]
    Hold {
        alert_id: i64,
        /// Why, for the audit log and `klaxon audit holds`
        #[arg(long, value_name = "TEXT")]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// Release an alert's legal hold: retention may purge it again.
    #[command(after_help = "Example:\n  klaxon audit release 42")]
    Release {
        alert_id: i64,
        #[arg(long)]
        json: bool,
    },
    /// List the legal holds in force.
    #[command(after_help = "Example:\n  klaxon audit holds --json")]
    Holds {
        #[arg(long)]
        json: bool,
    },
}

pub async fn audit_command(config: &Config, cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    let tz = config.server.timezone.clone();
    match cmd {
        AuditCommand::Verify { db, json } => {
            let path = db.unwrap_or_else(|| config.store_dir().join("klaxon.db"));
            verify(&path, json)
        }
        AuditCommand::Export {
            from,
            to,
            alert,
            person,
            text,
            format,
        } => {
            let filter = ExportFilter {
                from: parse_when(&from, &tz, false).context("--from")?,
                to: parse_when(&to, &tz, true).context("--to")?,
                alert,
                person,
                text,
            };
            if filter.to <= filter.from {
                bail!("--to ({to}) is not after --from ({from}); nothing could match");
            }
            export(config, filter, &format).await
        }
        AuditCommand::Hold {
            alert_id,
            reason,
            json,
        } => {
            let reason = reason.trim().to_string();
            if reason.is_empty() {
                bail!(
                    "--reason is empty; say why the alert is held (a records request number, a case)"
                );
            }
            let now = crate::store::now_ms();
            let r = reason.clone();
            let placed = write(config, move |c| {
                audit::hold(c, alert_id, &r, &cli_actor(), now, audit::FROM_CONTEXT)
            })
            .await?;
            if json {
                outln!(
                    "{}",
                    serde_json::json!({"alert_id": alert_id, "held": true, "placed_now": placed, "reason": reason})
                );
            } else if placed {
                outln!(
                    "Alert {alert_id} is on legal hold: retention keeps its personal data until `klaxon audit release {alert_id}`."
                );
            } else {
                outln!("Alert {alert_id} was already on legal hold; nothing changed.");
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Release { alert_id, json } => {
            let now = crate::store::now_ms();
            let released = write(config, move |c| {
                audit::release(c, alert_id, &cli_actor(), now, audit::FROM_CONTEXT)
            })
            .await?;
            if json {
                outln!(
                    "{}",
                    serde_json::json!({"alert_id": alert_id, "released": released})
                );
            } else if released {
                outln!(
                    "Alert {alert_id}'s legal hold is released: retention may purge its personal data once it is due."
                );
            } else {
                outln!("Alert {alert_id} was not on legal hold; nothing changed.");
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Holds { json } => {
            let conn = read_only(&config.store_dir().join("klaxon.db"))?;
            let holds = audit::holds(&conn)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&holds)?);
            } else if holds.is_empty() {
                outln!("No alert is on legal hold.");
            } else {
                let rows: Vec<Vec<String>> = holds
                    .iter()
                    .map(|h| {
                        vec![
                            h.alert_id.to_string(),
                            local(Some(h.held_at), &tz),
                            h.held_by.clone(),
                            h.reason.clone(),
                        ]
                    })
                    .collect();
                table(&["ALERT", "HELD SINCE", "BY", "REASON"], &rows);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Who runs a command, for the audit log: `cli:` and the login name (the
/// person behind `sudo -u klaxon` when there is one).
pub fn cli_actor() -> String {
    let user = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (user("SUDO_USER"), user("USER").or_else(|| user("LOGNAME"))) {
        (Some(real), Some(as_user)) if real != as_user => format!("cli:{real} (as {as_user})"),
        (Some(real), _) => format!("cli:{real}"),
        (None, Some(u)) => format!("cli:{u}"),
        (None, None) => "cli".into(),
    }
}

/// Runs one audited write on the store and closes it.
async fn write<T, F>(config: &Config, f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
{
    let store = Store::open(&config.store_dir(), true)?;
    let out = store.write(f).await;
    store.close();
    Ok(out?)
}

fn read_only(path: &Path) -> anyhow::Result<Connection> {
    if !path.exists() {
        bail!("there is no store at {}", path.display());
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("cannot open {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

fn verify(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let conn = read_only(path)?;
    let chained: i64 = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('audit') WHERE name = 'hash'",
        [],
        |r| r.get(0),
    )?;
    if chained == 0 {
        bail!(
            "the audit log in {} is not chained yet (an older klaxon wrote it); start this klaxon once to chain it",
            path.display()
        );
    }
    let v = audit::verify(&conn)?;
    if json {
        let mut value = serde_json::to_value(&v)?;
        value["message"] = serde_json::Value::String(sentence(&v));
        outln!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        outln!("{}", sentence(&v));
        if v.head_seq > 0 {
            outln!("Head: entry {} {}", v.head_seq, v.head_hash);
        }
    }
    Ok(if v.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn sentence(v: &audit::Verdict) -> String {
    match &v.first_break {
        None => format!(
            "The audit chain is intact: {} entr{} checked.",
            v.entries,
            if v.entries == 1 { "y" } else { "ies" }
        ),
        Some(b) => {
            let mut s = b.to_string();
            if let Some(first) = s.get_mut(0..1) {
                first.make_ascii_uppercase();
            }
            format!(
                "The audit chain is broken: {s}. Entries before it are as written; treat the rest as unverified."
            )
        }
    }
}

/// One delivery to the person of a `--person` export.
#[derive(serde::Serialize)]
struct PersonDelivery {
    alert_id: i64,
    alert: String,
    kind: String,
    channel: String,
    state: String,
    created_at: i64,
    sent_at: Option<i64>,
    delivered_at: Option<i64>,
    confirmed_at: Option<i64>,
    answer: Option<String>,
}

fn person_deliveries(
    conn: &Connection,
    person: &str,
    f: &ExportFilter,
) -> Result<Vec<PersonDelivery>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT d.alert_id, a.title, a.kind, d.channel, d.state, d.created_at, d.sent_at,
                d.delivered_at, r.acked_at, r.ack_choice
         FROM recipients r JOIN deliveries d ON d.recipient_id = r.id JOIN alerts a ON a.id = d.alert_id
         WHERE r.person_id = ?1 AND d.created_at >= ?2 AND d.created_at < ?3
           AND (?4 IS NULL OR d.alert_id = ?4 OR a.parent_id = ?4)
         ORDER BY d.created_at, d.id",
    )?;
    let rows = stmt.query_map(rusqlite::params![person, f.from, f.to, f.alert], |r| {
        Ok(PersonDelivery {
            alert_id: r.get(0)?,
            alert: r.get(1)?,
            kind: r.get(2)?,
            channel: r.get(3)?,
            state: r.get(4)?,
            created_at: r.get(5)?,
            sent_at: r.get(6)?,
            delivered_at: r.get(7)?,
            confirmed_at: r.get(8)?,
            answer: r.get(9)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

async fn export(config: &Config, filter: ExportFilter, format: &str) -> anyhow::Result<ExitCode> {
    let path = config.store_dir().join("klaxon.db");
    let conn = read_only(&path)?;
    let entries = audit::export(&conn, &filter)?;
    let deliveries = match &filter.person {
        Some(p) => person_deliveries(&conn, p, &filter)?,
        None => Vec::new(),
    };
    drop(conn);
    // Audited before anything is shown: an export that cannot be recorded
    // is not made.
    let now = crate::store::now_ms();
    let detail = serde_json::json!({
        "from": crate::trigger::rfc3339(filter.from), "to": crate::trigger::rfc3339(filter.to),
        "alert": filter.alert, "person": filter.person, "text": filter.text,
        "format": format, "entries": entries.len(), "deliveries": deliveries.len(),
    })
    .to_string();
    write(config, move |c| {
        audit::record(
            c,
            now,
            &cli_actor(),
            "audit.export",
            audit::Target::None,
            &detail,
            audit::FROM_CONTEXT,
        )
    })
    .await
    .context("the export could not be recorded in the audit log, so it was not made")?;
    if format == "json" {
        let doc = serde_json::json!({
            "filter": {
                "from": crate::trigger::rfc3339(filter.from), "to": crate::trigger::rfc3339(filter.to),
                "alert": filter.alert, "person": filter.person, "text": filter.text,
            },
            "generated_at": crate::trigger::rfc3339(now),
            "entries": entries.iter().map(|e| {
                let mut v = serde_json::to_value(e).unwrap_or_default();
                v["time"] = crate::trigger::rfc3339(e.at).into();
                v
            }).collect::<Vec<_>>(),
            "deliveries": deliveries,
        });
        outln!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record([
            "record", "seq", "time", "actor", "action", "target", "detail", "origin", "hash",
        ])?;
        for e in &entries {
            w.write_record([
                "audit",
                &e.seq.to_string(),
                &crate::trigger::rfc3339(e.at),
                &e.actor,
                &e.action,
                &e.target,
                &e.detail,
                &e.origin,
                &e.hash,
            ])?;
        }
        for d in &deliveries {
            let detail = serde_json::json!({
                "alert": d.alert, "kind": d.kind, "channel": d.channel,
                "sent_at": d.sent_at.map(crate::trigger::rfc3339),
                "delivered_at": d.delivered_at.map(crate::trigger::rfc3339),
                "confirmed_at": d.confirmed_at.map(crate::trigger::rfc3339),
                "answer": d.answer,
            })
            .to_string();
            w.write_record([
                "delivery",
                "",
                &crate::trigger::rfc3339(d.created_at),
                "klaxon",
                &format!("delivery.{}", d.state),
                &format!("alert:{}", d.alert_id),
                &detail,
                "",
                "",
            ])?;
        }
        let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
        super::stdout::out!("{}", String::from_utf8_lossy(&bytes));
    }
    eprintln!(
        "Exported {} audit entr{}{}; the export is recorded in the audit log.",
        entries.len(),
        if entries.len() == 1 { "y" } else { "ies" },
        if filter.person.is_some() {
            format!(" and {} deliveries to the person", deliveries.len())
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// A `--from`/`--to` value: an RFC 3339 time, or a day (YYYY-MM-DD) in the
/// server's time zone; as an end, a day means through its last moment.
pub fn parse_when(text: &str, tz: &str, end: bool) -> anyhow::Result<i64> {
    if let Ok(t) = text.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    let day: jiff::civil::Date = text.parse().map_err(|_| {
        anyhow::anyhow!(
            "`{text}` is neither a day (2026-09-01) nor an RFC 3339 time (2026-09-01T08:00:00-05:00)"
        )
    })?;
    let zone = jiff::tz::TimeZone::get(tz).unwrap_or(jiff::tz::TimeZone::UTC);
    let day = if end {
        day.tomorrow().context("the day is out of range")?
    } else {
        day
    };
    Ok(day
        .to_zoned(zone)
        .context("the day is out of range")?
        .timestamp()
        .as_millisecond())
}

/// `klaxon token list`.
pub fn token_list(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let conn = read_only(&config.store_dir().join("klaxon.db"))?;
    let list = tokens::list(&conn)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        outln!(
            "No API token yet; create one with `klaxon token create --role operator --name NAME`."
        );
        return Ok(ExitCode::SUCCESS);
    }
    let tz = &config.server.timezone;
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.name.clone(),
                t.role.clone(),
                local(Some(t.created_at), tz),
                t.last_used_at
                    .map(|u| local(Some(u), tz))
                    .unwrap_or_else(|| "never".into()),
                t.revoked_at
                    .map(|r| local(Some(r), tz))
                    .unwrap_or_else(|| "no".into()),
            ]
        })
        .collect();
    table(
        &["ID", "NAME", "ROLE", "CREATED", "LAST USED", "REVOKED"],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

/// `klaxon token revoke ID`.
pub async fn token_revoke(config: &Config, id: i64, json: bool) -> anyhow::Result<ExitCode> {
    let now = crate::store::now_ms();
    let info = write(config, move |c| {
        tokens::revoke(c, id, now, &cli_actor(), audit::FROM_CONTEXT)
    })
    .await
    .map_err(|e| match e.downcast_ref::<StoreError>() {
        Some(StoreError::NotFound(_)) => {
            anyhow::anyhow!("there is no token {id}; `klaxon token list` shows them")
        }
        _ => e,
    })?;
    let already = info.revoked_at.is_some_and(|r| r < now);
    if json {
        outln!(
            "{}",
            serde_json::json!({"token": info, "revoked_now": !already})
        );
    } else if already {
        outln!(
            "Token {id} (\"{}\") was already revoked on {}; nothing changed.",
            info.name,
            local(info.revoked_at, &config.server.timezone)
        );
    } else {
        outln!(
            "Token {id} (\"{}\", {}) is revoked: the daemon refuses it from the next request on.",
            info.name,
            info.role
        );
    }
    Ok(ExitCode::SUCCESS)
}
