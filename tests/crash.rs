//! S6: `kill -9` in the middle of a fan-out, then a restart. Drives the real
//! binary the way an operator does (`token create`, `run`, `trigger`,
//! `status`) and checks that every recipient still gets the alert and that
//! nothing committed before the crash is lost.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::twilio_server::TwilioServer;

const BIN: &str = env!("CARGO_BIN_EXE_klaxon");
const SID: &str = "AC0123456789abcdef0123456789abcdef";

fn klaxon(dir: &Path, args: &[&str], token: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(dir.join("klaxon.toml")).args(args);
    if let Some(t) = token {
        cmd.env("KLAXON_TOKEN", t);
    }
    cmd.output().expect("klaxon runs")
}

fn daemon(dir: &Path) -> Child {
    Command::new(BIN)
        .arg("--config")
        .arg(dir.join("klaxon.toml"))
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_fan_out_loses_nothing_and_everyone_is_reached() {
    let tw = TwilioServer::start(SID, "tok").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("twilio.token"), "tok").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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
name = "twilio-main"
kind = "twilio"
channels = ["sms", "voice"]
api_base = "{}"
account_sid = "{SID}"
auth_token_file = "twilio.token"
from = ["+15555550100"]
max_per_second = 60
per_sender_per_second = 60

[[providers]]
name = "mail"
kind = "log"
channels = ["email"]
path = "outbox.jsonl"
"#,
            tw.url()
        ),
    )
    .unwrap();

    // The operator's path: generate and import an export, create a token.
    let export = d.join("export");
    let out = klaxon(
        d,
        &[
            "sis",
            "generate",
            "--students",
            "150",
            "--seed",
            "3",
            export.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = klaxon(d, &["sis", "import", export.to_str().unwrap()], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = klaxon(
        d,
        &[
            "token",
            "create",
            "--role",
            "operator",
            "--name",
            "crash test",
        ],
        None,
    );
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.lines().last().unwrap().trim().to_string();
    assert!(token.starts_with("klx_"));

    let mut child = daemon(d);
    wait_ready(port);
    let out = klaxon(d, &["trigger", "lockdown"], Some(&token));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: i64 = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    // Confirm one recipient before the crash: it must survive it.
    let until = Instant::now() + Duration::from_secs(20);
    while tw.requests().len() < 20 {
        assert!(Instant::now() < until, "sending did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let body = tw.requests()[0].field("Body").unwrap().to_string();
    let link = body
        .split_whitespace()
        .find_map(|w| {
            w.find("http")
                .map(|i| &w[i..])
                .filter(|u| u.contains("/a/"))
        })
        .unwrap()
        .to_string();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http.post(&link).form(&[("ack", "1")]).send().await.unwrap();
    assert_eq!(r.status(), 303);

    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let before_restart = tw.requests().len();
    let db = rusqlite::Connection::open(d.join("state/klaxon.db")).unwrap();
    let (total, pending): (i64, i64) = db
        .query_row(
            "SELECT count(*), sum(state IN ('queued','sending')) FROM deliveries WHERE alert_id = ?1 AND channel = 'sms'",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(
        pending > 0,
        "the crash came mid-fan-out ({before_restart} of {total} sent)"
    );

    let mut child = daemon(d);
    wait_ready(port);
    let until = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let out = klaxon(d, &["status", &id.to_string(), "--json"], Some(&token));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if !s["settled_at"].is_null() {
            break s;
        }
        assert!(
            Instant::now() < until,
            "alert did not finish after restart: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();

    assert_eq!(
        status["acknowledged"], 1,
        "the confirmation made before the crash is kept"
    );
    assert_eq!(
        status["channels"]["sms"]["sent"].as_i64(),
        Some(total),
        "{status}"
    );
    // Every sms address reached Twilio; duplicates only for what was in flight.
    let addresses: Vec<String> = db
        .prepare("SELECT address FROM deliveries WHERE alert_id = ?1 AND channel = 'sms'")
        .unwrap()
        .query_map([id], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut got: HashMap<String, usize> = HashMap::new();
    for r in tw.requests() {
        *got.entry(r.field("To").unwrap().to_string()).or_default() += 1;
    }
    let mut wanted: HashMap<String, usize> = HashMap::new();
    for a in &addresses {
        *wanted.entry(a.clone()).or_default() += 1;
    }
    for (a, n) in &wanted {
        assert!(
            got.get(a).copied().unwrap_or(0) >= *n,
            "{a} never reached Twilio"
        );
    }
    let duplicates = tw.requests().len() as i64 - total;
    assert!(
        duplicates <= 64,
        "duplicates limited to the requests in flight: {duplicates}"
    );
    assert!(tw.violations().is_empty());
}
