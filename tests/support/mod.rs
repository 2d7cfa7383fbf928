//! Loopback stand-ins for the outside world, shared by the integration tests:
//! a Twilio REST API that validates every request against Twilio's OpenAPI
//! spec, a SendGrid Mail Send endpoint and a real SMTP server. Each binds
//! `127.0.0.1:0`, records what it received and takes faults at run time.
//! Also: Debian's Chromium driven over WebDriver (`browser`) and Prometheus's
//! `promtool` checking a `/metrics` scrape (`promtool`).
//!
//! Use from a test file with `mod support;`.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod browser;
pub mod dovecot;
pub mod oauth_server;
pub mod oidc_provider;
pub mod promtool;
pub mod sendgrid_server;
pub mod smtp_server;
pub mod twilio_server;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Faults an HTTP test server injects, configurable while it runs. Counted
/// faults apply to the next N requests, in this order: down, drop, delay, 429, 500.
#[derive(Debug, Default)]
pub struct Faults {
    state: Mutex<FaultState>,
}

#[derive(Debug, Default)]
struct FaultState {
    down: bool,
    drop_next: usize,
    delay: Duration,
    too_many_next: usize,
    retry_after_secs: u64,
    server_error_next: usize,
    /// Share of requests answered 500, drawn from a seeded generator.
    server_error_share: f64,
    /// Every `burst_every` requests, `burst_len` in a row get 429.
    burst_every: u64,
    burst_len: u64,
    seen: u64,
    rng: u64,
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Close the connection without answering.
    Drop,
    /// 429 with this `Retry-After` (seconds).
    TooMany(u64),
    /// 500.
    ServerError,
}

impl Faults {
    fn lock(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next `n` requests get 429 with `Retry-After: retry_after_secs`.
    pub fn fail_with_429(&self, n: usize, retry_after_secs: u64) {
        let mut s = self.lock();
        s.too_many_next = n;
        s.retry_after_secs = retry_after_secs;
    }

    /// The next `n` requests get 500.
    pub fn fail_with_500(&self, n: usize) {
        self.lock().server_error_next = n;
    }

    /// The next `n` requests are read, then the connection is closed without an answer.
    pub fn drop_connections(&self, n: usize) {
        self.lock().drop_next = n;
    }

    /// Every request waits this long before it is handled.
    pub fn set_delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    /// While down, new connections are closed at once and requests on open
    /// ones are dropped.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    pub fn is_down(&self) -> bool {
        self.lock().down
    }

    /// A flaky provider: `share` of requests get 500 (seeded, so a run can
    /// be repeated), and bursts of `burst_len` 429s with `Retry-After:
    /// retry_after_secs` every `burst_every` requests.
    pub fn flaky(
        &self,
        share: f64,
        burst_every: u64,
        burst_len: u64,
        retry_after_secs: u64,
        seed: u64,
    ) {
        let mut s = self.lock();
        s.server_error_share = share;
        s.burst_every = burst_every;
        s.burst_len = burst_len;
        s.retry_after_secs = retry_after_secs;
        s.rng = seed | 1;
    }

    /// Takes the fault for the request that just arrived (and its delay).
    pub fn take(&self) -> (Option<Fault>, Duration) {
        let mut s = self.lock();
        let delay = s.delay;
        let fault = if s.down {
            Some(Fault::Drop)
        } else if s.drop_next > 0 {
            s.drop_next -= 1;
            Some(Fault::Drop)
        } else if s.too_many_next > 0 {
            s.too_many_next -= 1;
            Some(Fault::TooMany(s.retry_after_secs))
        } else if s.server_error_next > 0 {
            s.server_error_next -= 1;
            Some(Fault::ServerError)
        } else if s.burst_every > 0 || s.server_error_share > 0.0 {
            s.seen += 1;
            // xorshift64: cheap, seeded, good enough to spread faults.
            s.rng ^= s.rng << 13;
            s.rng ^= s.rng >> 7;
            s.rng ^= s.rng << 17;
            let draw = (s.rng >> 11) as f64 / (1u64 << 53) as f64;
            if s.burst_every > 0 && s.seen % s.burst_every < s.burst_len {
                Some(Fault::TooMany(s.retry_after_secs))
            } else if draw < s.server_error_share {
                Some(Fault::ServerError)
            } else {
                None
            }
        } else {
            None
        };
        (fault, delay)
    }
}

/// Handed to handlers (as an axum `Extension`) to close their own connection
/// without writing a response.
#[derive(Clone)]
pub struct ConnectionKill(Arc<Notify>);

impl ConnectionKill {
    /// Closes the connection; the returned future never completes (the
    /// connection, and with it this handler, is dropped).
    pub async fn kill(&self) -> axum::response::Response {
        self.0.notify_one();
        std::future::pending().await
    }
}

/// A running HTTP test server; stops when dropped.
pub struct HttpServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HttpServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `router` on `127.0.0.1:0`, one HTTP/1.1 connection per task, so a
/// handler can drop its connection through [`ConnectionKill`].
pub async fn serve_http(router: Router, faults: Arc<Faults>) -> HttpServer {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            if faults.is_down() {
                drop(stream);
                continue;
            }
            let kill = Arc::new(Notify::new());
            let app = router
                .clone()
                .layer(axum::Extension(ConnectionKill(kill.clone())));
            tokio::spawn(async move {
                let service = TowerToHyperService::new(app);
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = conn => {}
                    _ = kill.notified() => {}
                }
            });
        }
    });
    HttpServer { addr, task }
}

/// Decodes an `application/x-www-form-urlencoded` body into pairs, in order.
pub fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    fn decode(s: &[u8]) -> Result<String, String> {
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    let hex = s
                        .get(i + 1..i + 3)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .ok_or_else(|| format!("bad percent escape at byte {i}"))?;
                    out.push(hex);
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).map_err(|_| "form value is not UTF-8".to_string())
    }
    body.split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let mut it = pair.splitn(2, |b| *b == b'=');
            let name = decode(it.next().unwrap_or_default())?;
            let value = decode(it.next().unwrap_or_default())?;
            Ok((name, value))
        })
        .collect()
}
