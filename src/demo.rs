//! `klaxon demo`: the whole path on the bundled demo district, on this
//! machine only. It writes a config with the `log` provider, imports the demo
//! OneRoster export, starts the real daemon on a free loopback port, triggers a
//! lockdown through the HTTP API, has a share of guardians open and confirm
//! their links over HTTP (GET, then POST), sends the all-clear and prints a
//! report.

use crate::cli::stdout::outln;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::app::App;
use crate::config::Config;
use crate::store::{Store, now_ms, tokens};

#[derive(Debug, Serialize)]
pub struct DemoReport {
    pub folder: PathBuf,
    pub school: String,
    pub alert_id: i64,
    pub recipients: i64,
    pub guardians: i64,
    pub staff: i64,
    pub unreachable: i64,
    pub handed_over: serde_json::Value,
    pub undeliverable: i64,
    pub handover_seconds: f64,
    pub deadline_seconds: f64,
    pub deadline_met: bool,
    pub links_opened: usize,
    pub confirmations: i64,
    pub all_clear_id: i64,
    pub all_clear_recipients: i64,
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(l.local_addr()?.port())
}

fn write_config(dir: &Path, port: u16) -> anyhow::Result<PathBuf> {
    let text = format!(
        r#"# Written by `klaxon demo`: loopback only, the log provider, no credentials.
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"

[store]
dir = "state"
synchronous = "normal"

[[providers]]
name = "demo-log"
kind = "log"
channels = ["sms", "voice", "email"]
path = "outbox.jsonl"
"#
    );
    let path = dir.join("klaxon.toml");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

pub async fn run(
    confirm_share: f64,
    keep: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<DemoReport> {
    let temp;
    let kept = keep.is_some();
    let dir = match keep {
        Some(d) => {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            d
        }
        None => {
            temp = tempfile::tempdir().context("creating a temporary folder")?;
            temp.path().to_path_buf()
        }
    };
    let say = |s: &str| {
        if !json {
            eprintln!("{s}");
        }
    };
    say("1/6 Writing the demo district (OneRoster export) …");
    let export = dir.join("export");
    crate::sis::demo_district(&export)?;
    let port = free_port()?;
    let config_path = write_config(&dir, port)?;
    let config = Config::load(&config_path)?;
    let store_dir = config.store_dir();
    std::fs::create_dir_all(&store_dir)?;

    say("2/6 Importing it into the SIS copy …");
    let sis_cfg = config.sis.clone();
    let sd = store_dir.clone();
    let imported = tokio::task::spawn_blocking(move || {
        crate::sis::import(
            &export,
            &sd,
            &sis_cfg,
            &crate::sis::ImportOptions { force: true },
        )
    })
    .await??;
    let school = first_school(&store_dir)?;

    let token = tokens::generate();
    {
        let store = Store::open(&store_dir, false)?;
        let t = token.clone();
        store
            .write(move |c| {
                tokens::insert(c, "demo", tokens::ApiRole::Admin, &t, now_ms()).map(|_| ())
            })
            .await?;
        store.close();
    }

    say("3/6 Starting the daemon on loopback …");
    let app = App::build(config).await?;
    let base = format!("http://{}", app.addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(app.run(async move {
        let _ = stop_rx.await;
    }));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;

    say(&format!(
        "4/6 Triggering a lockdown at {} through the API …",
        school.1
    ));
    let started = Instant::now();
    let created: serde_json::Value = http
        .post(format!("{base}/api/v1/alerts"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"playbook": "lockdown", "audience": {"schools": [school.0]}}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let alert_id = created["id"]
        .as_i64()
        .context("the API returned no alert id")?;
    let status = wait_settled(&http, &base, &token, alert_id, !json).await?;
    let wall = started.elapsed();

    say("5/6 Guardians open and confirm their links …");
    let links = ack_links(&dir.join("outbox.jsonl"), alert_id)?;
    let take = ((links.len() as f64) * confirm_share).round() as usize;
    let mut opened = 0;
    for link in links.iter().take(take) {
        let path = link
            .split_once("/a/")
            .map(|(_, t)| format!("{base}/a/{t}"))
            .context("bad link in outbox")?;
        let page = http.get(&path).send().await?;
        if !page.status().is_success() {
            bail!("the acknowledgement page answered {}", page.status());
        }
        let posted = http.post(&path).form(&[("ack", "1")]).send().await?;
        if !posted.status().is_success() {
            bail!("confirming answered {}", posted.status());
        }
        opened += 1;
    }
    let after: serde_json::Value = get_status(&http, &base, &token, alert_id).await?;

    say("6/6 Sending the all-clear to the same people …");
    let clear: serde_json::Value = http
        .post(format!("{base}/api/v1/alerts/{alert_id}/all-clear"))
        .bearer_auth(&token)
        .json(&serde_json::json!({}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let clear_id = clear["id"]
        .as_i64()
        .context("the API returned no all-clear id")?;
    wait_settled(&http, &base, &token, clear_id, false).await?;

    let _ = stop_tx.send(());
    daemon.await??;

    let roles = role_counts(&store_dir, alert_id)?;
    let handover = status["handover_seconds"]
        .as_f64()
        .unwrap_or(wall.as_secs_f64());
    let deadline = (status["notify_deadline"].as_i64().unwrap_or(0)
        - status["released_at"].as_i64().unwrap_or(0)) as f64
        / 1000.0;
    let mut handed = serde_json::Map::new();
    let mut undeliverable = 0;
    if let Some(chs) = status["channels"].as_object() {
        for (ch, counts) in chs {
            let sent =
                counts["sent"].as_i64().unwrap_or(0) + counts["delivered"].as_i64().unwrap_or(0);
            undeliverable += counts["undeliverable"].as_i64().unwrap_or(0)
                + counts["failed"].as_i64().unwrap_or(0);
            handed.insert(ch.clone(), sent.into());
        }
    }
    let report = DemoReport {
        folder: dir.clone(),
        school: school.1.clone(),
        alert_id,
        recipients: status["recipients"].as_i64().unwrap_or(0),
        guardians: roles.0,
        staff: roles.1,
        unreachable: status["unreachable"].as_i64().unwrap_or(0),
        handed_over: serde_json::Value::Object(handed),
        undeliverable,
        handover_seconds: handover,
        deadline_seconds: deadline,
        deadline_met: status["deadline_met"].as_bool().unwrap_or(false),
        links_opened: opened,
        confirmations: after["acknowledged"].as_i64().unwrap_or(0),
        all_clear_id: clear_id,
        all_clear_recipients: clear["recipients"].as_i64().unwrap_or(0),
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, &imported.to_string(), kept);
    }
    Ok(report)
}

fn print_report(r: &DemoReport, imported: &str, kept: bool) {
    outln!();
    outln!("klaxon demo — lockdown at {}", r.school);
    outln!("==========================================");
    outln!("SIS import:");
    // The summary, not the list of warnings (those name contacts; `klaxon sis import` shows them).
    for line in imported.lines() {
        outln!("  {line}");
        if line.contains("warning(s)") {
            break;
        }
    }
    outln!(
        "Audience:        {} recipients ({} guardians, {} staff); {} with no usable address",
        r.recipients,
        r.guardians,
        r.staff,
        r.unreachable
    );
    let per: Vec<String> = r
        .handed_over
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect())
        .unwrap_or_default();
    outln!(
        "Handed over:     {} (undeliverable or failed: {})",
        per.join(", "),
        r.undeliverable
    );
    outln!(
        "Trigger to last hand-over: {:.2} s against a {:.0} s deadline: {}",
        r.handover_seconds,
        r.deadline_seconds,
        if r.deadline_met { "MET" } else { "MISSED" }
    );
    outln!(
        "Confirmations:   {} ({} links opened with GET, then confirmed with POST)",
        r.confirmations,
        r.links_opened
    );
    outln!(
        "All-clear:       alert {} to the same {} recipients",
        r.all_clear_id,
        r.all_clear_recipients
    );
    if kept {
        outln!(
            "Every message is in {}",
            r.folder.join("outbox.jsonl").display()
        );
    } else {
        outln!(
            "Run with --keep DIR to keep the export, the store and every message (outbox.jsonl)."
        );
    }
}

async fn get_status(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    id: i64,
) -> anyhow::Result<serde_json::Value> {
    Ok(http
        .get(format!("{base}/api/v1/alerts/{id}"))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

async fn wait_settled(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    id: i64,
    progress: bool,
) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = get_status(http, base, token, id).await?;
        if progress {
            let sent = s["totals"]["sent"].as_i64().unwrap_or(0)
                + s["totals"]["delivered"].as_i64().unwrap_or(0);
            let queued = s["totals"]["queued"].as_i64().unwrap_or(0)
                + s["totals"]["sending"].as_i64().unwrap_or(0);
            eprintln!("    alert {id}: {sent} handed over, {queued} to go");
        }
        if !s["settled_at"].is_null() {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("alert {id} did not finish within 2 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Distinct acknowledgement links of one alert, in the order the outbox has them.
fn ack_links(outbox: &Path, alert_id: i64) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(outbox).with_context(|| format!("reading {}", outbox.display()))?;
    let mut seen = BTreeSet::new();
    let mut links = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if v["alert_id"].as_i64() == Some(alert_id)
            && let Some(u) = v["ack_url"].as_str()
            && seen.insert(u.to_string())
        {
            links.push(u.to_string());
        }
    }
    Ok(links)
}

fn first_school(store_dir: &Path) -> anyhow::Result<(String, String)> {
    let conn = crate::sis::open_current(store_dir)?;
    Ok(conn.query_row(
        "SELECT id, name FROM schools ORDER BY id LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}

fn role_counts(store_dir: &Path, alert_id: i64) -> anyhow::Result<(i64, i64)> {
    let conn = rusqlite::Connection::open(store_dir.join("klaxon.db"))?;
    let count = |role: &str| -> rusqlite::Result<i64> {
        conn.query_row(
            "SELECT count(*) FROM recipients WHERE alert_id = ?1 AND role = ?2",
            rusqlite::params![alert_id, role],
            |r| r.get(0),
        )
    };
    Ok((count("guardian")?, count("staff")?))
}
