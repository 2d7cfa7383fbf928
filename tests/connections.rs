//! Connection hygiene with real sockets: slowloris headers, idle kept-alive
//! connections and dripped bodies are cut; health checks answer while the
//! connection cap is full; SIGTERM is answered within the grace period.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{LOG_PROVIDER, TestApp, import, make_token, start};
use klaxon::store::tokens::ApiRole;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn app(server: &str) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("klaxon.toml"),
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
public_url = "http://127.0.0.1:9"
{server}

[store]
dir = "state"
synchronous = "normal"
{LOG_PROVIDER}
"#
        ),
    )
    .unwrap();
    import(dir.path(), Path::new(common::FIXTURE));
    let admin = make_token(dir.path(), ApiRole::Admin).await;
    let viewer = make_token(dir.path(), ApiRole::Viewer).await;
    start(dir, admin, viewer).await
}

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection; how long that took, or
/// `None` if it was still open after `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((t + limit).into(), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_and_idle_connections_are_closed() {
    let app = app("header_read_timeout = \"500ms\"").await;
    // Partial headers, never finished.
    let mut slow = TcpStream::connect(addr(&app)).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    // A complete request on a kept-alive connection, then silence.
    let mut idle = TcpStream::connect(addr(&app)).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    idle.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    let slow_closed = closed_within(&mut slow, Duration::from_secs(5)).await;
    let idle_closed = closed_within(&mut idle, Duration::from_secs(5)).await;
    let slow_closed = slow_closed.expect("the slowloris connection was never closed");
    assert!(slow_closed >= Duration::from_millis(300), "{slow_closed:?}");
    idle_closed.expect("the idle connection was never closed");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dripped_body_is_cut_at_the_body_deadline() {
    let app = app("body_read_timeout = \"500ms\"").await;
    let mut s = TcpStream::connect(addr(&app)).await.unwrap();
    let head = format!(
        "POST /api/v1/alerts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"playbook\":",
        app.admin
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // One byte every 200 ms: each arrives well within any per-read timeout.
    let t = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the dripped body was waited for"
        );
        let _ = s.write_all(b" ").await;
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if !answer.is_empty() {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || text.starts_with("HTTP/1.1 4"),
        "a client error, not a server error: {text}"
    );
    let count: i64 = app
        .db()
        .query_row("SELECT count(*) FROM alerts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_acknowledgements_answer_while_the_connection_cap_is_full() {
    let app = app("header_read_timeout = \"30s\"\nmax_connections = 32").await;
    let mut held = Vec::new();
    for _ in 0..64 {
        let mut s = TcpStream::connect(addr(&app)).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for path in ["/healthz", "/a/not-a-token"] {
        let fresh = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let r = fresh
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path} did not answer: {e}"));
        assert!(r.status() != 503, "{path}: {}", r.status());
        assert!(r.status().as_u16() < 500, "{path}: {}", r.status());
    }
    drop(held);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_by_the_grace_period_whatever_clients_do() {
    let app =
        app("shutdown_grace = \"1s\"\nheader_read_timeout = \"30s\"\nbody_read_timeout = \"30s\"")
            .await;
    let mut held = Vec::new();
    for i in 0..50 {
        let mut s = TcpStream::connect(addr(&app)).await.unwrap();
        if i % 2 == 0 {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap();
        } else {
            // A request whose body never finishes: in flight at SIGTERM.
            let head = format!(
                "POST /api/v1/alerts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 1000\r\n\r\n{{",
                app.admin
            );
            s.write_all(head.as_bytes()).await.unwrap();
        }
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    app.stop().await;
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "shutdown took {took:?} against a 1 s grace"
    );
    drop(held);
}

/// The real binary under a low open-file limit (soft and hard, as
/// `ulimit -n` in a unit would set): idle attackers beyond the limit must
/// not starve the health check.
#[test]
fn under_a_low_fd_limit_idle_connections_do_not_starve_health() {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        dir.path().join("klaxon.toml"),
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
header_read_timeout = "30s"

[store]
dir = "state"
{LOG_PROVIDER}
"#
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_klaxon"));
    cmd.arg("--config")
        .arg(dir.path().join("klaxon.toml"))
        .arg("run")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 128,
                rlim_max: 128,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "daemon did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut held = Vec::new();
    for _ in 0..200 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ");
            held.push(s);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let health = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5"])
        .arg(format!("http://127.0.0.1:{port}/healthz"))
        .output();
    let code = match health {
        Ok(o) => String::from_utf8_lossy(&o.stdout).to_string(),
        Err(_) => {
            // No curl: speak HTTP by hand.
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            let _ = std::io::Read::read_to_string(&mut s, &mut out);
            out.get(9..12).unwrap_or("").to_string()
        }
    };
    drop(held);
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(code, "200", "health under fd pressure; log:\n{log}");
    assert!(log.contains("max_connections"), "{log}");
}

/// The real binary on a free port with `server` settings, its open-file
/// limit set to `nofile` (soft, hard) between fork and exec when given.
fn daemon(dir: &Path, server: &str, nofile: Option<(u64, u64)>) -> (std::process::Child, u16) {
    use std::os::unix::process::CommandExt;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        dir.join("klaxon.toml"),
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
{server}

[store]
dir = "state"
{LOG_PROVIDER}
"#
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_klaxon"));
    cmd.arg("--config")
        .arg(dir.join("klaxon.toml"))
        .arg("run")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if let Some((soft, hard)) = nofile {
        // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = cmd.spawn().unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "daemon did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, port)
}

/// The log without its terminal colours.
fn plain(log: &[u8]) -> String {
    let text = String::from_utf8_lossy(log);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One `GET /healthz` on a kept-alive connection; its status line.
fn health_on(s: &mut std::net::TcpStream) -> String {
    use std::io::{Read, Write};
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .is_err()
    {
        return "write failed".into();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return head.lines().next().unwrap_or("").to_string();
            }
        }
        match s.read(&mut buf) {
            Ok(0) => return "closed".into(),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return format!("read failed: {e}"),
        }
    }
}

/// Started with a soft open-file limit of 128 and a hard one of 4096, the
/// daemon raises the soft limit to the hard one, says so, and holds and
/// serves far more than 128 connections at once.
#[test]
fn the_open_file_limit_is_raised_to_the_hard_limit_and_used() {
    const CONNECTIONS: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, port) = daemon(
        dir.path(),
        "header_read_timeout = \"60s\"\nmax_connections = 2000",
        Some((128, 4096)),
    );
    let mut held = Vec::new();
    for i in 0..CONNECTIONS {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let status = health_on(&mut s);
        assert_eq!(status, "HTTP/1.1 200 OK", "connection {i}");
        held.push(s);
    }
    // Every one of them is still open and served: none was cut for room.
    for (i, s) in held.iter_mut().enumerate() {
        let status = health_on(s);
        assert_eq!(status, "HTTP/1.1 200 OK", "connection {i}, second request");
    }
    drop(held);
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let log = plain(&out.stderr);
    assert!(log.contains("open_file_limit=4096"), "{log}");
    assert!(log.contains("max_connections=2000"), "{log}");
}

/// The real binary with 200 idle and slowloris connections exits within
/// `shutdown_grace` (2 s) of SIGTERM, plus a margin for the store to close.
#[test]
fn sigterm_with_200_idle_and_slowloris_connections_exits_within_the_grace() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let (child, port) = daemon(
        dir.path(),
        "shutdown_grace = \"2s\"\nheader_read_timeout = \"60s\"\nbody_read_timeout = \"60s\"",
        None,
    );
    let mut held = Vec::new();
    for i in 0..200 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        if i % 2 == 0 {
            // Kept alive after an answer, then silent.
            assert_eq!(health_on(&mut s), "HTTP/1.1 200 OK");
        } else {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap();
        }
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    // SAFETY: a signal to the child this test started.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let out = child.wait_with_output().unwrap();
    let took = t.elapsed();
    let log = plain(&out.stderr);
    eprintln!("SIGTERM with 200 connections: exited in {took:?}");
    assert!(out.status.success(), "{:?}\n{log}", out.status);
    assert!(
        took < Duration::from_millis(3500),
        "shutdown took {took:?} against a 2 s grace\n{log}"
    );
    drop(held);
}
