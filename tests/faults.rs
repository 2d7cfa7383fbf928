//! Fault injection against the real binary and the real daemon: a second
//! daemon on the same store, a provider that is down for a while, a
//! wall-clock step, the SIS copy deleted under a running daemon.

mod common;
mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{config_text, import, make_token, start};
use klaxon::store::tokens::ApiRole;
use serde_json::json;
use support::twilio_server::TwilioServer;

const BIN: &str = env!("CARGO_BIN_EXE_klaxon");
const SID: &str = "AC0123456789abcdef0123456789abcdef";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(d: &Path, port: u16) {
    std::fs::write(
        d.join("klaxon.toml"),
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"

[store]
dir = "state"

[[providers]]
name = "log"
kind = "log"
channels = ["sms", "voice", "email"]
path = "outbox.jsonl"
"#
        ),
    )
    .unwrap();
}

fn daemon(d: &Path) -> Child {
    Command::new(BIN)
        .arg("--config")
        .arg(d.join("klaxon.toml"))
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("daemon starts")
}

fn wait_ready(port: u16) {
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "daemon did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A delivery in flight: claimed by the running daemon, not yet recorded.
fn insert_in_flight(db: &rusqlite::Connection) -> i64 {
    db.execute_batch(
        "INSERT INTO alerts (playbook, title, place, priority, audience, state, source, created_by, created_at)
           VALUES ('lockdown', 'Lockdown', 'Test', 0, '{}', 'sending', 'api', 'test', 1);
         INSERT INTO recipients (alert_id, person_id, role, name, language, students, addresses, token)
           VALUES (last_insert_rowid(), 'p1', 'guardian', 'Pat', 'en', '[]', '[]', 'tok-in-flight');
         INSERT INTO deliveries (alert_id, recipient_id, channel, address, state, priority, next_attempt_at, created_at, updated_at)
           SELECT alert_id, id, 'sms', '+15555550123', 'sending', 0, 1, 1, 1 FROM recipients WHERE token = 'tok-in-flight';",
    )
    .unwrap();
    db.last_insert_rowid()
}

#[test]
fn a_second_daemon_on_the_same_store_refuses_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    write_config(d, port);
    let mut first = daemon(d);
    wait_ready(port);

    let db = rusqlite::Connection::open(d.join("state/klaxon.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    let id = insert_in_flight(&db);

    let second = Command::new(BIN)
        .arg("--config")
        .arg(d.join("klaxon.toml"))
        .arg("run")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another klaxon is running on the store folder"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let state: String = db
        .query_row("SELECT state FROM deliveries WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(
        state, "sending",
        "the first daemon's send in flight was requeued"
    );
    let recovers: i64 = db
        .query_row(
            "SELECT count(*) FROM audit WHERE action = 'outbox.recover'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(recovers, 0);

    // The first daemon still answers.
    let health = std::net::TcpStream::connect(("127.0.0.1", port));
    assert!(health.is_ok());
    first.kill().unwrap();
    first.wait().unwrap();

    // Once the holder is gone (even by SIGKILL) the lock is free again.
    let mut again = daemon(d);
    wait_ready(port);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let state: String = db
            .query_row("SELECT state FROM deliveries WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        if state != "sending" {
            break;
        }
        assert!(
            Instant::now() < until,
            "the restart did not recover the row"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    again.kill().unwrap();
    again.wait().unwrap();
}

/// One Twilio provider for SMS and voice at `url`, retries bounded by
/// `max_attempts = 3` (which a window-bounded retry must outlast), a breaker
/// that opens after 2 failures for `cooldown`, and an SMS-only playbook.
fn only_provider(url: &str, cooldown: &str) -> String {
    format!(
        r#"
[[providers]]
name = "only"
kind = "twilio"
channels = ["sms", "voice"]
api_base = "{}"
account_sid = "{SID}"
auth_token_file = "twilio.token"
from = ["+15555550100"]
per_sender_per_second = 1000

[delivery]
request_timeout = "1s"
retry_initial = "50ms"
retry_max = "200ms"
max_attempts = 3
breaker_failures = 2
breaker_cooldown = "{cooldown}"

[playbooks.sms-only]
title = "Lockdown"
severity = "emergency"
channels = ["sms"]
roles = ["guardian", "staff"]
ack_within = "15m"
[playbooks.sms-only.messages]
en = "LOCKDOWN at {{{{ school }}}}. Confirm: {{{{ link }}}}"
"#,
        url
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_provider_down_for_a_while_pauses_sends_without_spending_attempts() {
    let tw = TwilioServer::start(SID, "tok").await;
    tw.faults().set_down(true);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("twilio.token"), "tok").unwrap();
    // max_attempts = 3 would end every delivery `failed` within a second
    // if retries were bounded by a count; the 15-minute window bounds them.
    let extra = only_provider(&tw.url(), "300ms");
    std::fs::write(dir.path().join("klaxon.toml"), config_text(&extra)).unwrap();
    import(dir.path(), Path::new(common::FIXTURE));
    let admin = make_token(dir.path(), ApiRole::Admin).await;
    let viewer = make_token(dir.path(), ApiRole::Viewer).await;
    let app = start(dir, admin, viewer).await;
    let r = app
        .trigger(json!({"playbook": "sms-only", "audience": {}}))
        .await;
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (failed, attempts): (i64, i64) = app
        .db()
        .query_row(
            "SELECT count(*) FILTER (WHERE state = 'failed'), coalesce(sum(attempts), 0) FROM deliveries WHERE alert_id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        failed, 0,
        "nobody is given up on while the provider is down"
    );
    // 3 deliveries; 2 failures open the breaker, then one probe per pause
    // (300 ms, 600 ms, ...): a handful of attempts, not one per retry tick.
    assert!(
        attempts <= 8,
        "{attempts} attempts spent while the provider was down"
    );
    tw.faults().set_down(false);
    let s = app.wait_settled(id).await;
    assert_eq!(
        s["totals"]["sent"], 3,
        "everyone reached once it is back: {s}"
    );
    assert_eq!(tw.requests().len(), 3);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_while_the_last_provider_is_down_are_bounded_by_the_window_not_a_count() {
    let tw = TwilioServer::start(SID, "tok").await;
    tw.faults().set_down(true);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("twilio.token"), "tok").unwrap();
    // One delivery (Roosevelt's one family with a phone), so every probe of
    // the paused provider is an attempt of that delivery.
    let extra = only_provider(&tw.url(), "200ms");
    std::fs::write(dir.path().join("klaxon.toml"), config_text(&extra)).unwrap();
    import(dir.path(), Path::new(common::FIXTURE));
    let admin = make_token(dir.path(), ApiRole::Admin).await;
    let viewer = make_token(dir.path(), ApiRole::Viewer).await;
    let app = start(dir, admin, viewer).await;
    let r = app
        .trigger(json!({"playbook": "sms-only", "audience": {"schools": ["S2"]}}))
        .await;
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let row = |app: &common::TestApp| -> (i64, i64, String) {
        app.db()
            .query_row(
                "SELECT count(*), max(attempts), max(state) FROM deliveries WHERE alert_id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap()
    };
    // Wait for a fifth attempt: under a count bound (max_attempts = 3) the
    // delivery would have failed at its third.
    let until = Instant::now() + Duration::from_secs(30);
    let (n, attempts, state) = loop {
        let (n, attempts, state) = row(&app);
        assert_ne!(state, "failed", "given up after {attempts} attempts");
        if attempts > 4 {
            break (n, attempts, state);
        }
        assert!(
            Instant::now() < until,
            "only {attempts} attempts in 30 s; state {state}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(n, 1, "one delivery");
    eprintln!("provider down: {attempts} attempts, still {state}");
    tw.faults().set_down(false);
    let s = app.wait_settled(id).await;
    assert_eq!(s["totals"]["sent"], 1, "reached once it is back: {s}");
    assert_eq!(tw.requests().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn first_attempts_are_due_whatever_the_wall_clock_says() {
    let dir = tempfile::tempdir().unwrap();
    let store = klaxon::store::Store::open(dir.path(), false).unwrap();
    let ids = store
        .write(|c| {
            let in_flight = insert_in_flight(c);
            // Queued by a clock that was an hour ahead (then stepped back by
            // NTP): a first attempt, and a retry that is not yet due.
            c.execute(
                "UPDATE deliveries SET state = 'queued', next_attempt_at = ?2 WHERE id = ?1",
                rusqlite::params![in_flight, klaxon::store::now_ms() + 3_600_000],
            )?;
            c.execute(
                "INSERT INTO deliveries (alert_id, recipient_id, channel, address, state, priority, attempts, next_attempt_at, created_at, updated_at)
                 SELECT alert_id, recipient_id, 'sms', address, 'queued', 0, 1, ?1, 1, 1 FROM deliveries WHERE id = ?2",
                rusqlite::params![klaxon::store::now_ms() + 3_600_000, in_flight],
            )?;
            Ok((in_flight, c.last_insert_rowid()))
        })
        .await
        .unwrap();
    let claimed = store
        .write(|c| {
            klaxon::store::deliveries::claim(
                c,
                klaxon::domain::Channel::Sms,
                klaxon::store::now_ms(),
                10,
            )
        })
        .await
        .unwrap();
    let got: Vec<i64> = claimed.iter().map(|c| c.id).collect();
    assert_eq!(
        got,
        vec![ids.0],
        "the first attempt is claimed, the retry waits"
    );
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sis_copy_deleted_under_a_running_daemon_refuses_alerts_clearly() {
    let app = common::spawn_app().await;
    std::fs::remove_file(app.path().join("state/sis.db")).unwrap();
    let r = app
        .trigger(json!({"playbook": "lockdown", "audience": {"schools": ["S1"]}}))
        .await;
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert!(
        status == 503 || (400..500).contains(&status),
        "{status}: {body}"
    );
    assert!(body.contains("SIS"), "the answer says why: {body}");
    assert!(!body.contains("internal error"), "{body}");
    let ready = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let why: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(why["sis"], false, "{why}");
    assert!(
        why["reason"]
            .as_str()
            .is_some_and(|r| r.contains("sis import")),
        "{why}"
    );
    // Still up: health answers and nothing was stored.
    let health = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let alerts: i64 = app
        .db()
        .query_row("SELECT count(*) FROM alerts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(alerts, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_answering_30_percent_5xx_with_429_bursts_still_reaches_everyone_in_time() {
    let tw = TwilioServer::start(SID, "tok").await;
    // 30% 500s; every 40 requests a burst of 4 429s asking for 1 s.
    tw.faults().flaky(0.30, 40, 4, 1, 12);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("twilio.token"), "tok").unwrap();
    let extra = format!(
        r#"
[[providers]]
name = "flaky"
kind = "twilio"
channels = ["sms", "voice"]
api_base = "{}"
account_sid = "{SID}"
auth_token_file = "twilio.token"
from = ["+15555550100"]
max_per_second = 200
per_sender_per_second = 200

[delivery]
request_timeout = "2s"
retry_initial = "100ms"
retry_max = "1s"
breaker_failures = 5
breaker_cooldown = "500ms"

[playbooks.sms-only]
title = "Lockdown"
severity = "emergency"
channels = ["sms"]
roles = ["guardian", "staff"]
notify_within = "30s"
ack_within = "15m"
[playbooks.sms-only.messages]
en = "LOCKDOWN at {{{{ school }}}}. Confirm: {{{{ link }}}}"
"#,
        tw.url()
    );
    std::fs::write(dir.path().join("klaxon.toml"), config_text(&extra)).unwrap();
    let export = tempfile::tempdir().unwrap();
    klaxon::sis::generate(
        export.path(),
        &klaxon::sis::GenerateOptions {
            students: 120,
            seed: 5,
            ..Default::default()
        },
    )
    .unwrap();
    import(dir.path(), export.path());
    let admin = make_token(dir.path(), ApiRole::Admin).await;
    let viewer = make_token(dir.path(), ApiRole::Viewer).await;
    let app = start(dir, admin, viewer).await;
    let t = Instant::now();
    let r = app
        .trigger(json!({"playbook": "sms-only", "audience": {}}))
        .await;
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let s = app.wait_settled(id).await;
    let took = t.elapsed();
    let (total, sent, attempts): (i64, i64, i64) = app
        .db()
        .query_row(
            "SELECT count(*), count(*) FILTER (WHERE state = 'sent'), sum(attempts) FROM deliveries WHERE alert_id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    eprintln!(
        "flaky provider: {sent}/{total} sent in {:.1} s, {attempts} attempts, {} requests accepted",
        took.as_secs_f64(),
        tw.requests().len()
    );
    assert!(total > 100, "{total}");
    assert_eq!(sent, total, "everyone reached: {s}");
    assert!(
        attempts > total,
        "the faults were injected: {attempts} attempts"
    );
    assert_eq!(s["deadline_met"], true, "{s}");
    // Accepted once each: no duplicate sends.
    assert_eq!(tw.requests().len() as i64, total);
    assert!(tw.violations().is_empty(), "{:?}", tw.violations());
    app.stop().await;
}

/// A size-limited tmpfs mounted on a folder for the life of the value.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// `None` (with a note) when this process may not mount: not root, or a
    /// container without the right.
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            eprintln!("skipped: mounting a size-limited tmpfs needs root");
            return None;
        }
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: cannot mount a tmpfs here (no CAP_SYS_ADMIN?)");
            return None;
        }
        Some(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `dir` until it refuses another byte.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let small = [0u8; 512];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_store_loses_nothing_acknowledged_and_errors_honestly() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_mount) = Tmpfs::mount(&dir.path().join("state"), "8m") else {
        return;
    };
    std::fs::write(
        dir.path().join("klaxon.toml"),
        config_text(common::LOG_PROVIDER),
    )
    .unwrap();
    import(dir.path(), Path::new(common::FIXTURE));
    let admin = make_token(dir.path(), ApiRole::Admin).await;
    let viewer = make_token(dir.path(), ApiRole::Viewer).await;
    let app = start(dir, admin, viewer).await;
    let trigger = |school: &'static str| {
        app.trigger(json!({"playbook": "lockdown", "audience": {"schools": [school]}}))
    };
    let first = trigger("S1").await;
    assert_eq!(first.status(), 201);
    let first = first.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    app.wait_settled(first).await;
    // The links sent: derived from the store's key (the store keeps hashes).
    let key = klaxon::store::keyfile::load_or_create(&app.path().join("state")).unwrap();
    let tokens: Vec<String> = app
        .db()
        .prepare("SELECT id FROM recipients WHERE alert_id = ?1")
        .unwrap()
        .query_map([first], |r| r.get::<_, i64>(0))
        .unwrap()
        .map(|id| {
            klaxon::domain::AckToken::derive(&key, klaxon::domain::RecipientId(id.unwrap()))
                .as_str()
                .to_string()
        })
        .collect();
    assert!(tokens.len() >= 2);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let ack = |token: &str| {
        http.post(format!("{}/a/{token}", app.base))
            .form(&[("ack", "1")])
            .send()
    };
    assert_eq!(ack(&tokens[0]).await.unwrap().status(), 303);

    let filler = fill(&app.path().join("state"));
    // Whatever is answered as done must be on disk; the rest must say so.
    let mut created = vec![first];
    let mut refused = 0;
    for _ in 0..5 {
        let r = trigger("S2").await;
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        if status == 201 {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            created.push(v["id"].as_i64().unwrap());
        } else {
            assert!(status >= 500, "{status}: {body}");
            refused += 1;
        }
    }
    let mut acked = vec![tokens[0].clone()];
    for t in &tokens[1..] {
        let r = ack(t).await.unwrap();
        if r.status() == 303 {
            acked.push(t.clone());
        } else {
            assert!(r.status().is_server_error(), "{}", r.status());
        }
    }
    eprintln!(
        "disk full: {} of 5 alerts refused, {} of {} acknowledgements taken",
        refused,
        acked.len() - 1,
        tokens.len() - 1
    );
    assert!(
        refused > 0,
        "the disk was not full enough to refuse anything"
    );
    // The daemon is still up and recovers once there is room again.
    let health = http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    std::fs::remove_file(filler).unwrap();
    let again = trigger("S2").await;
    assert_eq!(
        again.status(),
        201,
        "the store recovers once space is freed"
    );
    created.push(
        again.json::<serde_json::Value>().await.unwrap()["id"]
            .as_i64()
            .unwrap(),
    );
    let (dir, _, _) = app.stop().await;

    let db = rusqlite::Connection::open(dir.path().join("state/klaxon.db")).unwrap();
    for id in &created {
        let n: i64 = db
            .query_row("SELECT count(*) FROM alerts WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(n, 1, "alert {id} was answered 201 but is not stored");
    }
    for t in &acked {
        let at: Option<i64> = db
            .query_row(
                "SELECT acked_at FROM recipients WHERE substr(token, 17) = ?1",
                // The store keeps each link's SHA-256, after the recipient id.
                [<sha2::Sha256 as sha2::Digest>::digest(t.as_bytes())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()],
                |r| r.get(0),
            )
            .unwrap();
        assert!(at.is_some(), "an acknowledgement answered 303 was lost");
    }
}

/// The recorder survives a store that cannot write: outcomes of sends in
/// flight when the disk fills are kept, retried, and committed once there is
/// room again; none is lost, none counted twice, nothing sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_in_flight_when_the_disk_fills_are_recorded_once_it_has_room() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_mount) = Tmpfs::mount(&dir.path().join("state"), "8m") else {
        return;
    };
    let tw = TwilioServer::start(SID, "tok").await;
    std::fs::write(dir.path().join("twilio.token"), "tok").unwrap();
    let extra = format!(
        r#"
[[providers]]
name = "slow"
kind = "twilio"
channels = ["sms", "voice"]
api_base = "{}"
account_sid = "{SID}"
auth_token_file = "twilio.token"
from = ["+15555550100"]
per_sender_per_second = 1000

[delivery]
request_timeout = "30s"

[playbooks.sms-only]
title = "Lockdown"
severity = "emergency"
channels = ["sms"]
roles = ["guardian", "staff"]
ack_within = "15m"
[playbooks.sms-only.messages]
en = "LOCKDOWN at {{{{ school }}}}. Confirm: {{{{ link }}}}"
"#,
        tw.url()
    );
    std::fs::write(dir.path().join("klaxon.toml"), config_text(&extra)).unwrap();
    import(dir.path(), Path::new(common::FIXTURE));
    let admin = make_token(dir.path(), ApiRole::Admin).await;
    let viewer = make_token(dir.path(), ApiRole::Viewer).await;
    let app = start(dir, admin, viewer).await;
    // Every request is held by the provider for a while: in flight.
    tw.faults().set_delay(Duration::from_secs(2));
    let r = app
        .trigger(json!({"playbook": "sms-only", "audience": {}}))
        .await;
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let states = |app: &common::TestApp| -> Vec<(String, i64)> {
        app.db()
            .prepare("SELECT state, attempts FROM deliveries WHERE alert_id = ?1 ORDER BY id")
            .unwrap()
            .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let total = states(&app).len();
    assert!(total >= 3, "{total}");
    let until = Instant::now() + Duration::from_secs(20);
    while (tw.arrivals() as usize) < total {
        assert!(Instant::now() < until, "the sends never left");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // An empty WAL first: the store's checkpoint thread lets the WAL restart
    // in place, and a commit that only overwrites frames already on disk
    // needs no new space, so a full disk would not stop it.
    let (busy, _, _): (i64, i64, i64) = app
        .db()
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(busy, 0, "the WAL could not be emptied");
    let filler = fill(&app.path().join("state"));
    // The provider answers while the disk is full; the recorder cannot write.
    let until = Instant::now() + Duration::from_secs(20);
    while tw.requests().len() < total {
        assert!(Instant::now() < until, "the provider never answered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = states(&app);
    let unrecorded = during.iter().filter(|(s, _)| s == "sending").count();
    eprintln!("disk full: {unrecorded} of {total} outcomes waiting to be recorded");
    assert!(
        unrecorded > 0,
        "the outcomes were recorded with the disk full: it was not full ({during:?})"
    );
    std::fs::remove_file(filler).unwrap();
    let s = app.wait_settled(id).await;
    let after = states(&app);
    assert_eq!(
        after,
        vec![("sent".to_string(), 1); total],
        "each outcome recorded once, none sent again: {s}"
    );
    assert_eq!(s["totals"]["sent"], total, "{s}");
    assert_eq!(tw.requests().len(), total, "nothing sent twice");
    app.stop().await;
}
