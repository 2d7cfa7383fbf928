//! Governance end to end: the audit log's hash chain (tampered with SQL on
//! the stopped daemon's store), public-records exports, legal holds,
//! retention on a moved clock, and API tokens listed and revoked. The
//! daemon is the real one (`spawn_app*`), the commands the real binary.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{FIXTURE, LOG_PROVIDER, spawn_app, spawn_app_full};
use klaxon::clock::Clock;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_klaxon");

fn cli(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.join("klaxon.toml"))
        .args(args)
        .env("USER", "records-officer")
        .env_remove("SUDO_USER")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn today() -> String {
    jiff::Zoned::now()
        .with_time_zone(jiff::tz::TimeZone::UTC)
        .date()
        .to_string()
}

async fn created(r: reqwest::Response) -> i64 {
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
}

/// (id, actor, action, target, origin) of every entry, oldest first.
fn entries(db: &rusqlite::Connection) -> Vec<(i64, String, String, String, String)> {
    db.prepare("SELECT id, actor, action, target, origin FROM audit ORDER BY id")
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_is_a_chained_entry_and_tampering_is_named() {
    let app = spawn_app().await;
    let dir = app.path();
    // Trigger held, approve, update, all-clear; another one cancelled.
    let a = created(
        app.trigger(json!({"playbook": "lockdown", "audience": {"schools": ["S1"]}, "hold": true}))
            .await,
    )
    .await;
    assert_eq!(
        app.post(&format!("/api/v1/alerts/{a}/approve"), json!({}))
            .await
            .status(),
        200
    );
    app.wait_settled(a).await;
    assert_eq!(
        app.post(
            &format!("/api/v1/alerts/{a}/updates"),
            json!({"message": "Pick up at the north gate."})
        )
        .await
        .status(),
        201
    );
    assert_eq!(
        app.post(&format!("/api/v1/alerts/{a}/all-clear"), json!({}))
            .await
            .status(),
        201
    );
    let b = created(
        app.trigger(json!({"playbook": "shelter", "audience": {"schools": ["S2"]}, "hold": true}))
            .await,
    )
    .await;
    assert_eq!(
        app.post(&format!("/api/v1/alerts/{b}/cancel"), json!({}))
            .await
            .status(),
        200
    );
    let (code, _, err) = cli(
        &dir,
        &["token", "create", "--role", "viewer", "--name", "x"],
    );
    assert_eq!(code, 0, "{err}");

    let log = entries(&app.db());
    let find = |action: &str, target: &str| {
        log.iter()
            .find(|e| e.2 == action && e.3 == target)
            .unwrap_or_else(|| panic!("{action} on {target} audited: {log:#?}"))
            .clone()
    };
    // Who (the token's name) and from where (the client's address).
    for (action, target) in [
        ("alert.create", format!("alert:{a}")),
        ("alert.approve", format!("alert:{a}")),
        ("alert.close", format!("alert:{a}")),
        ("alert.cancel", format!("alert:{b}")),
    ] {
        let e = find(action, &target);
        assert_eq!((e.1.as_str(), e.4.as_str()), ("test", "127.0.0.1"), "{e:?}");
    }
    let follow_ups = log
        .iter()
        .filter(|e| e.2 == "alert.create" && e.4 == "127.0.0.1")
        .count();
    assert_eq!(
        follow_ups, 4,
        "two alerts, the update and the all-clear: {log:#?}"
    );
    let token = log.iter().find(|e| e.2 == "token.create").unwrap();
    assert_eq!(
        (token.1.as_str(), token.4.as_str()),
        ("cli:records-officer", "cli")
    );
    assert!(token.3.starts_with("token:"));
    let (_keep, _, _) = app.stop().await;
    let db = rusqlite::Connection::open(dir.join("state/klaxon.db")).unwrap();

    let (code, out, _) = cli(&dir, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("The audit chain is intact"), "{out}");
    assert!(out.contains("Head: entry"), "{out}");

    // An edited entry is named.
    let cancel = find("alert.cancel", &format!("alert:{b}")).0;
    let original: String = db
        .query_row("SELECT detail FROM audit WHERE id = ?1", [cancel], |r| {
            r.get(0)
        })
        .unwrap();
    db.execute(
        "UPDATE audit SET detail = '{\"unsent\":0}' WHERE id = ?1",
        [cancel],
    )
    .unwrap();
    let (code, out, _) = cli(&dir, &["audit", "verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("Audit entry {cancel} was altered")),
        "{out}"
    );
    let (code, out, _) = cli(&dir, &["audit", "verify", "--json"]);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["first_break"]["kind"], "altered");
    assert_eq!(v["first_break"]["seq"], cancel);

    // Put back, it verifies again; a removed entry is named.
    db.execute(
        "UPDATE audit SET detail = ?2 WHERE id = ?1",
        rusqlite::params![cancel, original],
    )
    .unwrap();
    assert_eq!(cli(&dir, &["audit", "verify"]).0, 0);
    let approve = find("alert.approve", &format!("alert:{a}")).0;
    db.execute("DELETE FROM audit WHERE id = ?1", [approve])
        .unwrap();
    let (code, out, _) = cli(&dir, &["audit", "verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("Audit entry {approve} was removed")),
        "{out}"
    );
    // The newest entry removed is seen too.
    let db = rusqlite::Connection::open(dir.join("state/klaxon.db")).unwrap();
    let last: i64 = db
        .query_row("SELECT max(id) FROM audit", [], |r| r.get(0))
        .unwrap();
    db.execute("DELETE FROM audit WHERE id >= ?1", [approve])
        .unwrap();
    let (code, out, _) = cli(&dir, &["audit", "verify", "--json"]);
    assert_eq!(code, 1, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["first_break"]["kind"], "removed", "{v}");
    assert_eq!(v["first_break"]["first"], approve);
    assert_eq!(v["first_break"]["last"], last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_at_once_and_list_never_shows_a_secret() {
    let app = spawn_app().await;
    let dir = app.path();
    let (code, out, err) = cli(
        &dir,
        &[
            "token",
            "create",
            "--role",
            "operator",
            "--name",
            "front office",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let token = out.lines().last().unwrap().trim().to_string();
    let get = || {
        app.http
            .get(format!("{}/api/v1/alerts", app.base))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(get().await.unwrap().status(), 200);

    let list = || {
        let (code, out, err) = cli(&dir, &["token", "list", "--json"]);
        assert_eq!(code, 0, "{err}");
        assert!(!out.contains(&token), "never the secret");
        serde_json::from_str::<Vec<Value>>(&out).unwrap()
    };
    let mine = |l: Vec<Value>| l.into_iter().find(|t| t["name"] == "front office").unwrap();
    // The last use is noted off the request's path.
    let until = Instant::now() + Duration::from_secs(10);
    let t = loop {
        let t = mine(list());
        if !t["last_used_at"].is_null() || Instant::now() > until {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!t["last_used_at"].is_null(), "{t}");
    assert!(t["revoked_at"].is_null());
    assert_eq!(t["role"], "operator");
    let id = t["id"].as_i64().unwrap().to_string();
    let hash: String = app
        .db()
        .query_row("SELECT hash FROM api_tokens WHERE id = ?1", [&id], |r| {
            r.get(0)
        })
        .unwrap();
    let (_, table, _) = cli(&dir, &["token", "list"]);
    assert!(
        table.contains("LAST USED") && table.contains("front office"),
        "{table}"
    );
    assert!(!table.contains(&token) && !table.contains(&hash), "{table}");

    // Revoked while the daemon runs: the very next request is refused.
    let (code, out, err) = cli(&dir, &["token", "revoke", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("is revoked"), "{out}");
    assert_eq!(get().await.unwrap().status(), 401);
    let r = app
        .http
        .post(format!("{}/api/v1/alerts", app.base))
        .bearer_auth(&token)
        .json(&json!({"playbook": "lockdown", "audience": {"schools": ["S1"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "nothing is triggered with it");
    assert!(!mine(list())["revoked_at"].is_null());

    let (code, out, _) = cli(&dir, &["token", "revoke", &id]);
    assert_eq!(code, 0);
    assert!(out.contains("already revoked"), "{out}");
    let (code, _, err) = cli(&dir, &["token", "revoke", "999"]);
    assert_eq!(code, 1);
    assert!(err.contains("there is no token 999"), "{err}");

    let log = entries(&app.db());
    let revokes: Vec<_> = log.iter().filter(|e| e.2 == "token.revoke").collect();
    assert_eq!(revokes.len(), 1, "a repeat changes and records nothing");
    assert_eq!(revokes[0].3, format!("token:{id}"));
    assert_eq!(revokes[0].4, "cli");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_for_records_requests_by_alert_person_and_words_are_audited() {
    let app = spawn_app().await;
    let dir = app.path();
    let a = created(
        app.trigger(json!({"playbook": "lockdown", "audience": {"schools": ["S1"]}, "message": "Gas leak near the gym"}))
            .await,
    )
    .await;
    let b = created(
        app.trigger(json!({"playbook": "shelter", "audience": {"schools": ["S2"]}}))
            .await,
    )
    .await;
    app.wait_settled(a).await;
    app.wait_settled(b).await;
    let day = today();
    let export = |extra: &[&str]| {
        let mut args = vec!["audit", "export", "--from", &day, "--to", &day];
        args.extend_from_slice(extra);
        let (code, out, err) = cli(&dir, &args);
        assert_eq!(code, 0, "{err}");
        out
    };
    let json_of = |extra: &[&str]| {
        let mut v = extra.to_vec();
        v.extend(["--format", "json"]);
        serde_json::from_str::<Value>(&export(&v)).unwrap()
    };

    let by_alert = json_of(&["--alert", &a.to_string()]);
    let list = by_alert["entries"].as_array().unwrap();
    assert!(!list.is_empty());
    assert!(list.iter().all(|e| e["alert_id"] == a), "{by_alert}");
    assert!(list.iter().any(|e| e["action"] == "alert.create"));

    // Maria (g1) has a child at each school: both alerts reached her.
    let maria = json_of(&["--person", "g1"]);
    let alerts: std::collections::BTreeSet<i64> = maria["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["alert_id"].as_i64())
        .collect();
    assert_eq!(alerts, [a, b].into_iter().collect(), "{maria}");
    let sent = maria["deliveries"].as_array().unwrap();
    assert!(sent.len() >= 2, "{maria}");
    assert!(sent.iter().all(|d| d["channel"].is_string()));
    let text = maria.to_string();
    // Her phone (+1 555 555 0101) in any spelling, and her email. Not
    // "555" alone: a SHA-256 hash in the export may hold those digits.
    assert!(
        !text.contains("5555550101")
            && !text.contains("555 555 0101")
            && !text.contains("maria.garcia@"),
        "no addresses in an export: {text}"
    );
    let nobody = json_of(&["--person", "no-such-person"]);
    assert_eq!(nobody["entries"].as_array().unwrap().len(), 0);

    let words = json_of(&["--text", "GAS leak"]);
    let w = words["entries"].as_array().unwrap();
    assert_eq!(w.len(), 1, "{words}");
    assert_eq!(w[0]["alert_id"], a);

    let csv = export(&["--alert", &b.to_string()]);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "record,seq,time,actor,action,target,detail,origin,hash"
    );
    assert!(lines.all(|l| l.starts_with("audit,")), "{csv}");

    let (code, _, err) = cli(
        &dir,
        &["audit", "export", "--from", "2026-13-01", "--to", &day],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("--from") && err.contains("2026-13-01"),
        "{err}"
    );

    // Each export is itself an entry, and the chain still holds.
    let exports = entries(&app.db())
        .into_iter()
        .filter(|e| e.2 == "audit.export")
        .count();
    assert_eq!(exports, 5, "every export made; the refused one is not");
    assert_eq!(cli(&dir, &["audit", "verify"]).0, 0);
    app.stop().await;
}

async fn metric(app: &common::TestApp, line_start: &str) -> Option<f64> {
    let text = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_old_alerts_keeps_their_figures_and_respects_holds() {
    let extra = format!("{LOG_PROVIDER}\n[retention]\npersonal_data = \"30d\"\noutbox = \"7d\"\n");
    let clock = Clock::system();
    let app = spawn_app_full(&extra, Path::new(FIXTURE), clock.clone()).await;
    let dir = app.path();
    let a = created(
        app.trigger(json!({"playbook": "lockdown", "audience": {"schools": ["S1"]}}))
            .await,
    )
    .await;
    app.wait_settled(a).await;
    let link = app.link_of("+15555550101", a).expect("Maria's link");
    let r = app
        .http
        .post(&link)
        .form(&[("ack", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(
        app.post(&format!("/api/v1/alerts/{a}/all-clear"), json!({}))
            .await
            .status(),
        201
    );
    let b = created(
        app.trigger(json!({"playbook": "shelter", "audience": {"schools": ["S2"]}}))
            .await,
    )
    .await;
    app.wait_settled(b).await;
    assert_eq!(
        app.post(&format!("/api/v1/alerts/{b}/cancel"), json!({}))
            .await
            .status(),
        200
    );
    let (code, out, err) = cli(
        &dir,
        &[
            "audit",
            "hold",
            &b.to_string(),
            "--reason",
            "Records request 2026-117",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("is on legal hold"), "{out}");
    let before = app.status(a).await;
    assert_eq!(before["acknowledged"], 1);

    // 31 days later the daily task runs.
    clock.advance(Duration::from_secs(31 * 86_400));
    let db = app.db();
    let purged = |id: i64| -> bool {
        db.query_row(
            "SELECT purged_at IS NOT NULL FROM alerts WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap()
    };
    let until = Instant::now() + Duration::from_secs(20);
    while !purged(a) {
        assert!(Instant::now() < until, "alert {a} was not purged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = app.status(a).await;
    for k in [
        "recipients",
        "reached",
        "acknowledged",
        "totals",
        "channels",
        "figures",
    ] {
        assert_eq!(after[k], before[k], "{k} stays after the purge");
    }
    let left: i64 = db
        .query_row(
            "SELECT count(*) FROM recipients WHERE alert_id = ?1
               AND (name <> '' OR person_id NOT LIKE 'purged:%' OR addresses <> '[]' OR students <> '[]')",
            [a],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0, "no name, sourcedId, address or child left");
    let addresses: i64 = db
        .query_row(
            "SELECT count(*) FROM deliveries WHERE address <> ''
               AND (alert_id = ?1 OR alert_id IN (SELECT id FROM alerts WHERE parent_id = ?1))",
            [a],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(addresses, 0, "the alert's and its all-clear's deliveries");
    let page = app.http.get(&link).send().await.unwrap();
    assert!(
        page.status().is_client_error(),
        "the link no longer opens a page: {}",
        page.status()
    );

    // The held alert keeps everything, outbox included.
    assert!(!purged(b));
    let kept: i64 = db
        .query_row(
            "SELECT count(*) FROM deliveries WHERE alert_id = ?1 AND address <> ''",
            [b],
            |r| r.get(0),
        )
        .unwrap();
    assert!(kept > 0);
    let actions: Vec<String> = entries(&db).into_iter().map(|e| e.2).collect();
    assert!(
        actions.contains(&"retention.purge".to_string()),
        "{actions:?}"
    );
    assert!(actions.contains(&"retention.run".to_string()));
    assert!(actions.contains(&"hold.place".to_string()));
    assert!(
        metric(
            &app,
            "klaxon_retention_rows_purged_total{table=\"recipients\"}"
        )
        .await
        .unwrap()
            > 0.0
    );
    assert!(
        metric(&app, "klaxon_retention_last_run_timestamp_seconds")
            .await
            .is_some()
    );

    // Released, it goes at the next daily run.
    let (code, out, _) = cli(&dir, &["audit", "release", &b.to_string()]);
    assert_eq!(code, 0);
    assert!(out.contains("released"), "{out}");
    clock.advance(Duration::from_secs(86_400 + 60));
    let until = Instant::now() + Duration::from_secs(20);
    while !purged(b) {
        assert!(
            Instant::now() < until,
            "alert {b} was not purged after release"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mode: i64 = db
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, 2, "incremental vacuum");
    let (_keep, _, _) = app.stop().await;
    assert_eq!(cli(&dir, &["audit", "verify"]).0, 0);
}

/// The `retention.run` entries' details, oldest first.
fn retention_runs(db: &rusqlite::Connection) -> Vec<Value> {
    db.prepare("SELECT detail FROM audit WHERE action = 'retention.run' ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|d| serde_json::from_str(&d.unwrap()).unwrap())
        .collect()
}

/// Waits for the daily task's `n`th run (the clock was moved past it).
async fn wait_runs(db: &rusqlite::Connection, n: usize) -> Vec<Value> {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let runs = retention_runs(db);
        if runs.len() >= n {
            return runs;
        }
        assert!(
            Instant::now() < until,
            "{} retention runs, not {n}",
            runs.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_is_pruned_after_its_time_while_personal_data_stays() {
    let extra = format!("{LOG_PROVIDER}\n[retention]\npersonal_data = \"30d\"\noutbox = \"1d\"\n");
    let clock = Clock::system();
    let app = spawn_app_full(&extra, Path::new(FIXTURE), clock.clone()).await;
    let a = created(
        app.trigger(json!({"playbook": "early-dismissal", "audience": {"schools": ["S1"]}, "message": "Power outage."}))
            .await,
    )
    .await;
    app.wait_settled(a).await;
    let link = app.link_of("+15555550102", a).expect("Wei's link");
    assert_eq!(
        app.post(&format!("/api/v1/alerts/{a}/all-clear"), json!({}))
            .await
            .status(),
        201
    );
    app.wait_status(a, "closed", |s| s["state"] == "closed")
        .await;
    let before = app.status(a).await;
    let db = app.db();
    let with_address = |db: &rusqlite::Connection| -> i64 {
        db.query_row(
            "SELECT count(*) FROM deliveries WHERE alert_id = ?1 AND address <> ''",
            [a],
            |r| r.get(0),
        )
        .unwrap()
    };
    let deliveries = with_address(&db);
    assert!(deliveries > 0);
    let personal = |db: &rusqlite::Connection| -> (i64, i64) {
        db.query_row(
            "SELECT count(*), sum(name <> '' AND addresses <> '[]' AND person_id NOT LIKE 'purged:%')
               FROM recipients WHERE alert_id = ?1",
            [a],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    };
    let (people, named) = personal(&db);
    assert!(people > 0 && named > 0);

    // Two days on: past `outbox` (1 day), far from `personal_data` (30).
    clock.advance(Duration::from_secs(2 * 86_400));
    let runs = wait_runs(&db, 1).await;
    let run = runs.last().unwrap();
    assert_eq!(run["alerts_purged"], 0, "{run}");
    assert!(
        run["outbox_pruned"].as_i64().unwrap() >= deliveries,
        "{run}"
    );
    assert_eq!(
        with_address(&db),
        0,
        "every finished delivery's address is gone"
    );
    let leftovers: i64 = db
        .query_row(
            "SELECT count(*) FROM deliveries WHERE alert_id = ?1
               AND (error IS NOT NULL OR provider_msg_id IS NOT NULL)",
            [a],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(leftovers, 0, "nor provider ids or errors");
    // The alert's people, their addresses and answers stay until `personal_data`.
    assert_eq!(personal(&db), (people, named));
    let purged: bool = db
        .query_row(
            "SELECT purged_at IS NOT NULL FROM alerts WHERE id = ?1",
            [a],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!purged);
    let page = app.http.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200, "the guardian's page still opens");
    let after = app.status(a).await;
    for k in ["recipients", "reached", "totals", "channels", "figures"] {
        assert_eq!(after[k], before[k], "{k} stays after pruning");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_run_gives_free_pages_back_to_the_file_system() {
    let clock = Clock::system();
    let app = spawn_app_full(LOG_PROVIDER, Path::new(FIXTURE), clock.clone()).await;
    let db = app.db();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let pragma = |db: &rusqlite::Connection, p: &str| -> i64 {
        db.query_row(&format!("PRAGMA {p}"), [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(pragma(&db, "auto_vacuum"), 2, "incremental");
    // Space that was used and given up, as purged rows leave behind: with
    // incremental vacuum nothing returns it but the daily run.
    db.execute_batch(
        "CREATE TABLE scratch (x BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
         INSERT INTO scratch SELECT randomblob(4000) FROM n;
         DROP TABLE scratch;",
    )
    .unwrap();
    let (free, pages) = (pragma(&db, "freelist_count"), pragma(&db, "page_count"));
    assert!(free >= 250, "{free} free pages after the drop");

    // The first daily run is a minute after start.
    clock.advance(Duration::from_secs(61));
    wait_runs(&db, 1).await;
    let (free_after, pages_after) = (pragma(&db, "freelist_count"), pragma(&db, "page_count"));
    assert_eq!(free_after, 0, "the free pages were given back");
    assert!(
        pages_after <= pages - free,
        "the file shrank: {pages} pages, {free} free, now {pages_after}"
    );
    app.stop().await;
}
