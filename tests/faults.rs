//! Fault injection against the real binary and the real daemon: a second
//! daemon on the same store, the SIS copy deleted under a running daemon.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_klaxon");

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
