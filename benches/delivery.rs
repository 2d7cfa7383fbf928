//! Delivery benchmarks (run with `cargo bench --bench delivery`), all on
//! loopback against the real daemon (`klaxon run` in a child process):
//!
//! 1. the loopback provider's raw capacity, measured with the same kind of
//!    client, as the ceiling for everything else;
//! 2. 100,000 students' guardians (≈106k people), sms + email each, no rate
//!    limit: trigger → first provider request (target ≤ 100 ms), trigger →
//!    last hand-over (target ≤ 20 s), daemon peak RSS (target ≤ 200 MB);
//! 3. a rate limit R per provider: achieved rate (target ≥ 0.97 R), the most
//!    requests in any one-second window (target ≤ R), 429s (target 0);
//! 4. acknowledgements: `POST /a/{token}` at 64 concurrent clients
//!    (target ≥ 5,000/s durable, p99 ≤ 50 ms);
//! 5. SMTP: klaxon's `smtp` provider against Postfix's `smtp-sink`, beside
//!    Postfix's own `smtp-source` into the same sink with the same session
//!    count (target ≥ 0.7 × smtp-source), and the cost of building one
//!    message (MIME); then klaxon's SMTP client alone (messages built in the
//!    benchmark process, no store, no engine) beside smtp-source again, to
//!    tell the transport's share from the rest;
//! 6. the whole district through a Twilio-shaped HTTP server (SMS) and
//!    `smtp-sink` (email) together: trigger → last hand-over (target ≤ 20 s).
//!
//! Parts 5 and 6 need `smtp-sink` and `smtp-source` (Debian package
//! `postfix`); without them they are skipped with a message.
//!
//! Each scenario runs several times on a fresh store; medians are reported.
//! Set `KLAXON_BENCH_STUDENTS` and `KLAXON_BENCH_RUNS` to scale it down,
//! `KLAXON_BENCH_ONLY=smtp` to run parts 5 and 6 alone (`district`: 6 alone,
//! `transport`: the SMTP client alone), `KLAXON_BENCH_ONLY=rate` part 3 (the
//! rate limit and the capacity estimate's error) alone.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use klaxon::sis::{self, GenerateOptions, ImportOptions, SisConfig};
use klaxon::store::tokens::{self, ApiRole};
use klaxon::store::{Store, now_ms};

const BIN: &str = env!("CARGO_BIN_EXE_klaxon");

/// The daemon to measure: `KLAXON_BENCH_BIN` names another build (an older
/// commit's, for an A/B in the same minutes on a noisy machine).
fn daemon_bin() -> String {
    std::env::var("KLAXON_BENCH_BIN").unwrap_or_else(|_| BIN.to_string())
}
const SID: &str = "AC0123456789abcdef0123456789abcdef";

/// The loopback provider: answers Twilio's Messages.json and SendGrid's
/// mail/send like the real ones, records arrival times, and (when a limit is
/// set) answers 429 to any request that would put more than `limit` into the
/// last second, as a real provider's rate limiter does.
#[derive(Default)]
struct Sink {
    arrivals: Mutex<Vec<Instant>>,
    /// Arrivals per provider (0 Twilio, 1 SendGrid), for the per-provider rate.
    lanes: Mutex<[Vec<Instant>; 2]>,
    windows: Mutex<[VecDeque<Instant>; 2]>,
    limit: Mutex<Option<usize>>,
    rejected: AtomicU64,
    ids: AtomicU64,
}

impl Sink {
    fn admit(&self, lane: usize) -> bool {
        let Some(limit) = *self.limit.lock().unwrap() else {
            return true;
        };
        let now = Instant::now();
        let mut w = self.windows.lock().unwrap();
        let q = &mut w[lane];
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            q.pop_front();
        }
        if q.len() >= limit {
            return false;
        }
        q.push_back(now);
        true
    }

    fn record(&self, lane: usize) {
        let now = Instant::now();
        self.arrivals.lock().unwrap().push(now);
        self.lanes.lock().unwrap()[lane].push(now);
    }

    fn reset(&self, limit: Option<usize>) {
        self.arrivals.lock().unwrap().clear();
        *self.lanes.lock().unwrap() = Default::default();
        *self.windows.lock().unwrap() = Default::default();
        *self.limit.lock().unwrap() = limit;
        self.rejected.store(0, Ordering::SeqCst);
    }
}

async fn twilio(State(sink): State<Arc<Sink>>) -> Response {
    if !sink.admit(0) {
        sink.rejected.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            r#"{"code":20429,"message":"Too Many Requests","status":429}"#,
        )
            .into_response();
    }
    sink.record(0);
    let n = sink.ids.fetch_add(1, Ordering::Relaxed);
    let body = format!(r#"{{"sid":"SM{n:032x}","status":"queued","account_sid":"{SID}"}}"#);
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        body,
    )
        .into_response()
}

async fn sendgrid(State(sink): State<Arc<Sink>>) -> Response {
    if !sink.admit(1) {
        sink.rejected.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "").into_response();
    }
    sink.record(1);
    let n = sink.ids.fetch_add(1, Ordering::Relaxed);
    (
        StatusCode::ACCEPTED,
        [("x-message-id", format!("bench{n}"))],
        "",
    )
        .into_response()
}

/// Runs the sink on its own runtime thread, so its work is not scheduled
/// with the benchmark's own clients.
fn start_sink() -> (SocketAddr, Arc<Sink>) {
    let sink = Arc::new(Sink::default());
    let s2 = sink.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = Router::new()
                .route("/2010-04-01/Accounts/{sid}/Messages.json", post(twilio))
                .route("/v3/mail/send", post(sendgrid))
                .with_state(s2);
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    (rx.recv().unwrap(), sink)
}

fn config(dir: &Path, port: u16, sink: SocketAddr, rate: Option<f64>) -> String {
    // KLAXON_BENCH_SYNC=normal measures what fsync on every commit costs.
    let sync = std::env::var("KLAXON_BENCH_SYNC").unwrap_or_else(|_| "full".into());
    let rate = rate
        .map(|r| format!("max_per_second = {r}\n"))
        .unwrap_or_default();
    std::fs::write(dir.join("twilio.token"), "bench-token").unwrap();
    std::fs::write(dir.join("sendgrid.key"), "SG.bench").unwrap();
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"

[store]
dir = "state"
synchronous = "{sync}"

[delivery]
concurrency = 128

[[providers]]
name = "twilio-bench"
kind = "twilio"
channels = ["sms"]
api_base = "http://{sink}"
account_sid = "{SID}"
auth_token_file = "twilio.token"
messaging_service_sid = "MG0123456789abcdef0123456789abcdef"
{rate}
[[providers]]
name = "sendgrid-bench"
kind = "sendgrid"
channels = ["email"]
api_base = "http://{sink}"
api_key_file = "sendgrid.key"
from = "Bench ISD <alerts@bench.example>"
{rate}
[playbooks.bench]
title = "Bench"
severity = "emergency"
channels = ["sms", "email"]
roles = ["guardian"]
notify_within = "2m"
[playbooks.bench.messages]
en = "LOCKDOWN at {{{{ school }}}}. Confirm: {{{{ link }}}}"
"#
    )
}

fn rss_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU seconds (user + system) a process has used so far: on a shared
/// machine whose wall-clock figures swing by half from run to run, the work
/// per delivery is the steadier measure of what a change did.
fn cpu_seconds(pid: u32) -> f64 {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name, which may hold spaces.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks)
        })
        .unwrap_or(0.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Daemon {
    child: Child,
    base: String,
    token: String,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh store with the imported SIS copy, a token and a running daemon.
async fn daemon(
    root: &Path,
    run: &str,
    sis_db: &Path,
    sink: SocketAddr,
    rate: Option<f64>,
) -> Daemon {
    daemon_with(root, run, sis_db, |dir, port| config(dir, port, sink, rate)).await
}

/// Like `daemon`, with the config text from `config(dir, port)`.
async fn daemon_with(
    root: &Path,
    run: &str,
    sis_db: &Path,
    config: impl FnOnce(&Path, u16) -> String,
) -> Daemon {
    let dir = root.join(run);
    std::fs::create_dir_all(dir.join("state")).unwrap();
    std::fs::copy(sis_db, dir.join("state/sis.db")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(dir.join("klaxon.toml"), config(&dir, port)).unwrap();
    let store = Store::open(&dir.join("state"), true).unwrap();
    let token = tokens::generate();
    let t = token.clone();
    store
        .write(move |c| tokens::insert(c, "bench", ApiRole::Admin, &t, now_ms()).map(|_| ()))
        .await
        .unwrap();
    store.close();
    let child = Command::new(daemon_bin())
        .arg("--config")
        .arg(dir.join("klaxon.toml"))
        .arg("run")
        .env("KLAXON_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Daemon {
        child,
        base: format!("http://127.0.0.1:{port}"),
        token,
        dir,
    }
}

struct Fanout {
    deliveries: usize,
    first_ms: f64,
    all_s: f64,
    peak_rss_mb: f64,
    arrivals: Vec<Instant>,
    /// The capacity estimate the 201 answer gave, seconds.
    estimate_s: f64,
}

async fn fanout(
    d: &Daemon,
    sink: &Sink,
    http: &reqwest::Client,
    audience: serde_json::Value,
) -> Fanout {
    let pid = d.child.id();
    let t0 = Instant::now();
    let created: serde_json::Value = http
        .post(format!("{}/api/v1/alerts", d.base))
        .bearer_auth(&d.token)
        .json(&serde_json::json!({"playbook": "bench", "audience": audience}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let expected = created["deliveries"].as_u64().expect("alert created") as usize;
    let estimate_s = created["estimate_seconds"].as_f64().unwrap_or(0.0);
    let mut peak = 0;
    let until = Instant::now() + Duration::from_secs(600);
    loop {
        peak = peak.max(rss_kb(pid, "VmRSS:"));
        if sink.arrivals.lock().unwrap().len() >= expected {
            break;
        }
        assert!(Instant::now() < until, "fan-out did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let arrivals = sink.arrivals.lock().unwrap().clone();
    peak = peak.max(rss_kb(pid, "VmHWM:"));
    Fanout {
        deliveries: expected,
        first_ms: arrivals[0].duration_since(t0).as_secs_f64() * 1000.0,
        all_s: arrivals[expected - 1].duration_since(t0).as_secs_f64(),
        peak_rss_mb: peak as f64 / 1024.0,
        arrivals,
        estimate_s,
    }
}

/// Requests per second a plain client gets from the sink at 128 in flight.
async fn raw_capacity(sink_addr: SocketAddr, n: usize) -> f64 {
    let http = reqwest::Client::new();
    let url = format!("http://{sink_addr}/2010-04-01/Accounts/{SID}/Messages.json");
    let t = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..128 {
        let (http, url, next) = (http.clone(), url.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while (next.fetch_add(1, Ordering::Relaxed) as usize) < n {
                let r = http
                    .post(&url)
                    .basic_auth(SID, Some("bench-token"))
                    .form(&[
                        ("To", "+15555550100"),
                        ("MessagingServiceSid", "MG0123456789abcdef0123456789abcdef"),
                        ("Body", "bench"),
                    ])
                    .send()
                    .await
                    .unwrap();
                let _ = r.bytes().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn max_in_window(arrivals: &[Instant]) -> usize {
    let mut worst = 0;
    let mut j = 0;
    for i in 0..arrivals.len() {
        while arrivals[i].duration_since(arrivals[j]) >= Duration::from_secs(1) {
            j += 1;
        }
        worst = worst.max(i - j + 1);
    }
    worst
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let students: u32 = std::env::var("KLAXON_BENCH_STUDENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let runs: usize = std::env::var("KLAXON_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let root = tempfile::tempdir().unwrap();
    let export = root.path().join("export");
    let sis_dir = root.path().join("sis");
    sis::generate(
        &export,
        &GenerateOptions {
            students,
            schools: None,
            seed: 11,
        },
    )
    .unwrap();
    let report = sis::import(
        &export,
        &sis_dir,
        &SisConfig::default(),
        &ImportOptions { force: true },
    )
    .unwrap();
    let sis_db = sis_dir.join("sis.db");
    println!(
        "district: {} students, {} guardians, {} staff; {} runs per scenario",
        report.students, report.guardians, report.staff, runs
    );
    let (sink_addr, sink) = start_sink();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // KLAXON_BENCH_ONLY=smtp runs parts 5 and 6 alone, =district part 6, =transport the SMTP client alone.
    if matches!(
        std::env::var("KLAXON_BENCH_ONLY").as_deref(),
        Ok("smtp" | "district" | "transport")
    ) {
        smtp_scenarios(root.path(), &sis_db, sink_addr, &http, runs).await;
        return;
    }

    // KLAXON_BENCH_ONLY=rate runs part 3 (and the capacity estimate) alone.
    let rate_only = std::env::var("KLAXON_BENCH_ONLY").as_deref() == Ok("rate");
    if !rate_only {
        // 1. The ceiling.
        let mut raw = Vec::new();
        for _ in 0..runs {
            sink.reset(None);
            raw.push(raw_capacity(sink_addr, 50_000).await);
        }
        sink.reset(None);
        println!(
            "loopback provider raw capacity: median {:.0} requests/s",
            median(raw.clone())
        );

        // 2. Whole district, no rate limit.
        let (mut first, mut all, mut rss, mut rate) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut ack_tps = Vec::new();
        let mut ack_p99 = Vec::new();
        let mut ack_p50 = Vec::new();
        let mut deliveries = 0;
        for run in 0..runs {
            sink.reset(None);
            let d = daemon(
                root.path(),
                &format!("fanout-{run}"),
                &sis_db,
                sink_addr,
                None,
            )
            .await;
            let f = fanout(&d, &sink, &http, serde_json::json!({})).await;
            deliveries = f.deliveries;
            println!(
                "  run {run}: {} deliveries, first request {:.1} ms, all handed over {:.2} s, peak RSS {:.0} MB, capacity estimate {:.2} s",
                f.deliveries, f.first_ms, f.all_s, f.peak_rss_mb, f.estimate_s
            );
            first.push(f.first_ms);
            all.push(f.all_s);
            rss.push(f.peak_rss_mb);
            rate.push(f.deliveries as f64 / f.all_s);

            // 4. Acknowledgements against the same daemon and alert.
            let (tps, p50, p99) = acks(&d, &http, 20_000).await;
            println!("  run {run}: acknowledgements {tps:.0}/s, p50 {p50:.1} ms, p99 {p99:.1} ms");
            ack_tps.push(tps);
            ack_p50.push(p50);
            ack_p99.push(p99);
        }
        println!(
            "fan-out, {deliveries} deliveries, no limit: first request median {:.1} ms (target ≤ 100), all handed over median {:.2} s (target ≤ 20), {:.0}/s, daemon peak RSS median {:.0} MB (target ≤ 200)",
            median(first),
            median(all),
            median(rate),
            median(rss)
        );
        println!(
            "acknowledgements: median {:.0}/s (target ≥ 5000), p50 {:.1} ms, p99 median {:.1} ms (target ≤ 50)",
            median(ack_tps),
            median(ack_p50),
            median(ack_p99)
        );
    }

    // 3. Rate limit R per provider over one school's guardians.
    let r = 200.0;
    let (mut achieved, mut worst, mut rejected) = (Vec::new(), Vec::new(), Vec::new());
    let mut estimate_ratio = Vec::new();
    for run in 0..runs {
        sink.reset(Some(r as usize));
        let d = daemon(
            root.path(),
            &format!("rate-{run}"),
            &sis_db,
            sink_addr,
            Some(r),
        )
        .await;
        let school: String = rusqlite::Connection::open(&sis_db)
            .unwrap()
            .query_row(
                "SELECT id FROM schools ORDER BY id LIMIT 1 OFFSET ?1",
                [run as i64],
                |row| row.get(0),
            )
            .unwrap();
        let f = fanout(&d, &sink, &http, serde_json::json!({"schools": [school]})).await;
        // Per provider: each lane's own span, so a lane that finishes early
        // does not dilute the other's rate.
        let lanes = sink.lanes.lock().unwrap().clone();
        let mut got = f64::MAX;
        let mut w = 0.0f64;
        for lane in lanes.iter().filter(|l| l.len() > 1) {
            let span = lane.last().unwrap().duration_since(lane[0]).as_secs_f64();
            got = got.min((lane.len() - 1) as f64 / span);
            w = w.max(max_in_window(lane) as f64);
        }
        let span = f
            .arrivals
            .last()
            .unwrap()
            .duration_since(f.arrivals[0])
            .as_secs_f64();
        let rej = sink.rejected.load(Ordering::SeqCst);
        println!(
            "  run {run}: {} deliveries over {span:.1} s: {got:.1}/s for the slower provider, most in one second {w:.0} for either, 429s {rej}",
            f.deliveries
        );
        // The capacity check (issue 12): the estimate made before the
        // first send against the hand-over measured from the trigger.
        println!(
            "  run {run}: capacity estimate {:.2} s, measured hand-over {:.2} s, estimate / measured {:.3}",
            f.estimate_s,
            f.all_s,
            f.estimate_s / f.all_s
        );
        estimate_ratio.push(f.estimate_s / f.all_s);
        achieved.push(got / r);
        worst.push(w);
        rejected.push(rej as f64);
        drop(d);
    }
    println!(
        "rate limit R = {r}/s per provider: achieved median {:.3} R (target ≥ 0.97), most in any one-second window median {:.0} (target ≤ {r}), 429s median {:.0} (target 0)",
        median(achieved),
        median(worst),
        median(rejected)
    );
    println!(
        "capacity estimate before the first send, rate-limited providers: estimate / measured hand-over median {:.3} (target within 0.8..1.2)",
        median(estimate_ratio)
    );

    if rate_only {
        return;
    }
    // The Twilio-shaped sink serves part 6's SMS without a limit.
    sink.reset(None);
    smtp_scenarios(root.path(), &sis_db, sink_addr, &http, runs).await;
}

/// Sessions on both sides of the SMTP comparison (klaxon's `connections`,
/// smtp-source's `-s`).
const SMTP_SESSIONS: usize = 16;

/// Postfix's test SMTP server on a free loopback port; killed on drop.
struct SmtpSink {
    child: Child,
    port: u16,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn postfix_tool(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/lib/postfix/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

fn start_smtp_sink() -> SmtpSink {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(postfix_tool("smtp-sink").unwrap());
    // smtp-sink refuses to run as root without a user to switch to.
    if is_root() {
        cmd.args(["-u", "nobody"]);
    }
    // Offers PIPELINING and 8BITMIME by default; 1024 is the listen backlog.
    let child = cmd
        .arg(format!("127.0.0.1:{port}"))
        .arg("1024")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "smtp-sink did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    SmtpSink { child, port }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Messages per second `smtp-source` pushes into the sink: `n` messages of
/// `length` body bytes over `SMTP_SESSIONS` sessions kept open (`-d`).
fn smtp_source_rate(port: u16, n: usize, length: usize) -> f64 {
    let t = Instant::now();
    let status = Command::new(postfix_tool("smtp-source").unwrap())
        .args(["-d", "-s", &SMTP_SESSIONS.to_string()])
        .args(["-m", &n.to_string(), "-l", &length.to_string()])
        .args(["-f", "alerts@bench.example", "-t", "parent@bench.example"])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "smtp-source failed");
    n as f64 / t.elapsed().as_secs_f64()
}

/// Config for the SMTP runs: email through `smtp_port`, and SMS through the
/// Twilio-shaped sink when `sms` is set.
fn smtp_config(dir: &Path, port: u16, sink: SocketAddr, smtp_port: u16, sms: bool) -> String {
    let sync = std::env::var("KLAXON_BENCH_SYNC").unwrap_or_else(|_| "full".into());
    // `[delivery] concurrency` for parts 5 and 6 (sends in flight per provider).
    let concurrency: usize = std::env::var("KLAXON_BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    std::fs::write(dir.join("twilio.token"), "bench-token").unwrap();
    let (channels, twilio) = if sms {
        (
            r#"["sms", "email"]"#,
            format!(
                r#"
[[providers]]
name = "twilio-bench"
kind = "twilio"
channels = ["sms"]
api_base = "http://{sink}"
account_sid = "{SID}"
auth_token_file = "twilio.token"
messaging_service_sid = "MG0123456789abcdef0123456789abcdef"
"#
            ),
        )
    } else {
        (r#"["email"]"#, String::new())
    };
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"

[store]
dir = "state"
synchronous = "{sync}"

[delivery]
concurrency = {concurrency}
{twilio}
[[providers]]
name = "relay-bench"
kind = "smtp"
channels = ["email"]
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
from = "Bench ISD <alerts@bench.example>"
connections = {SMTP_SESSIONS}

[playbooks.bench]
title = "Bench"
severity = "emergency"
channels = {channels}
roles = ["guardian"]
notify_within = "2m"
[playbooks.bench.messages]
en = "LOCKDOWN at {{{{ school }}}}. Students are safe inside; doors stay locked until police clear the building. Do not come to the school. Confirm: {{{{ link }}}}"
"#
    )
}

/// Per channel: how many deliveries, and the first and last `sent_at`;
/// `written_ms`: when the last delivery row was written (the alert's
/// audience is written in chunks while the first ones are sent).
struct Handed {
    count: usize,
    first_ms: i64,
    last_ms: i64,
    written_ms: i64,
}

/// Triggers the bench playbook for the whole district and waits until every
/// delivery has an outcome committed. Returns the trigger time (ms since the
/// epoch) and what was handed over per channel.
async fn fanout_db(d: &Daemon, http: &reqwest::Client) -> (i64, Vec<(String, Handed)>) {
    let t0 = now_ms();
    let created: serde_json::Value = http
        .post(format!("{}/api/v1/alerts", d.base))
        .bearer_auth(&d.token)
        .json(&serde_json::json!({"playbook": "bench", "audience": {}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let expected = created["deliveries"].as_i64().expect("alert created");
    let db = rusqlite::Connection::open_with_flags(
        d.dir.join("state/klaxon.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let until = Instant::now() + Duration::from_secs(600);
    // Polled through the (alert_id, state) index, 10 times a second: a
    // scan of the whole table every 20 ms took a core from the daemon.
    let id = created["id"].as_i64().expect("alert id");
    loop {
        let done: i64 = db
            .query_row(
                "SELECT (SELECT count(*) FROM deliveries WHERE alert_id = ?1)
                      - (SELECT count(*) FROM deliveries WHERE alert_id = ?1 AND state IN ('queued', 'sending'))",
                [id],
                |r| r.get(0),
            )
            .unwrap_or(0);
        if done >= expected {
            break;
        }
        assert!(Instant::now() < until, "fan-out did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed: i64 = db
        .query_row(
            "SELECT count(*) FROM deliveries WHERE state <> 'sent'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(failed, 0, "every delivery handed over");
    let per_channel = db
        .prepare(
            "SELECT channel, count(*), min(sent_at), max(sent_at), max(created_at) FROM deliveries GROUP BY channel",
        )
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Handed {
                    count: r.get::<_, i64>(1)? as usize,
                    first_ms: r.get(2)?,
                    last_ms: r.get(3)?,
                    written_ms: r.get(4)?,
                },
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    // The fan-out's shape, per half second after the trigger: rows written
    // and emails handed over (is the writer the pace while it writes?).
    let per_half = |col: &str| -> Vec<i64> {
        let mut v = Vec::new();
        let mut q = db
            .prepare(&format!(
                "SELECT ({col} - ?1) / 500, count(*) FROM deliveries WHERE channel = 'email' GROUP BY 1 ORDER BY 1"
            ))
            .unwrap();
        let rows = q
            .query_map([t0], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .unwrap();
        for row in rows {
            let (b, n) = row.unwrap();
            let b = b.max(0) as usize;
            if v.len() <= b {
                v.resize(b + 1, 0);
            }
            v[b] += n;
        }
        v
    };
    println!(
        "  per 0.5 s, emails written {:?}, handed over {:?}",
        per_half("created_at"),
        per_half("sent_at")
    );
    (t0, per_channel)
}

/// The email the SMTP parts measure, for recipient `i`: a lockdown notice
/// with a 128-bit link, the size of the daemon's.
fn bench_email(i: usize) -> klaxon::deliver::message::OutboundMessage {
    let link = format!("http://127.0.0.1/a/{i:032x}");
    klaxon::deliver::message::OutboundMessage {
        delivery_id: i as i64,
        alert_id: 1,
        channel: klaxon::domain::Channel::Email,
        to: format!("parent{i}@bench.example"),
        language: "en".into(),
        subject: "Bench: Lincoln Elementary".into(),
        body: format!(
            "LOCKDOWN at Lincoln Elementary. Students are safe inside; doors stay locked until police clear the building. Do not come to the school. Confirm: {link}"
        ),
        html: None,
        ack_url: link,
        speech: String::new(),
        severity: klaxon::playbook::Severity::Emergency,
        bounce_tag: None,
    }
}

/// Microseconds to build one email (MIME, text and HTML parts).
fn mime_cost() -> (f64, usize) {
    use klaxon::deliver::providers::smtp::build_message;
    let from: lettre::message::Mailbox = "Bench ISD <alerts@bench.example>".parse().unwrap();
    let msg = bench_email(1);
    let n = 20_000;
    let t = Instant::now();
    let mut size = 0;
    for i in 0..n {
        let to = format!("parent{i}@bench.example").parse().unwrap();
        size = build_message(&msg, &from, to, "<klaxon.1.1@bench.example>")
            .unwrap()
            .len();
    }
    (t.elapsed().as_secs_f64() * 1e6 / n as f64, size)
}

/// Messages per second klaxon's SMTP client alone (no store, no engine)
/// hands to the sink: `n` messages built by `build_message` for one
/// recipient each, 64 sends at once over `SMTP_SESSIONS` sessions, as the
/// daemon's email lane does. The transport's share of part 5.
async fn smtp_client_rate(port: u16, n: usize) -> f64 {
    use klaxon::deliver::providers::smtp::build_message;
    use klaxon::deliver::providers::smtp_client::{ClientConfig, Login, Security, SmtpClient};
    let client = Arc::new(SmtpClient::new(ClientConfig {
        host: "127.0.0.1".into(),
        port,
        security: Security::Plain,
        login: Login::None,
        helo_name: "bench.example".into(),
        timeout: Duration::from_secs(20),
        connections: SMTP_SESSIONS,
    }));
    let from: lettre::message::Mailbox = "Bench ISD <alerts@bench.example>".parse().unwrap();
    let limit = Arc::new(tokio::sync::Semaphore::new(64));
    let t = Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let (client, from) = (client.clone(), from.clone());
        sends.spawn(async move {
            let msg = bench_email(i);
            let to = msg.to.clone();
            let data = build_message(
                &msg,
                &from,
                to.parse().unwrap(),
                &format!("<klaxon.1.{i}@bench.example>"),
            )
            .unwrap();
            let r = client.send("alerts@bench.example", &to, data).await;
            drop(permit);
            r.expect("smtp-sink accepts")
        });
    }
    while let Some(r) = sends.join_next().await {
        r.unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// Parts 5 and 6 (see the module comment).
async fn smtp_scenarios(
    root: &Path,
    sis_db: &Path,
    sink_addr: SocketAddr,
    http: &reqwest::Client,
    runs: usize,
) {
    if postfix_tool("smtp-sink").is_none() || postfix_tool("smtp-source").is_none() {
        println!(
            "SMTP scenarios skipped: smtp-sink and smtp-source not found (apt-get install postfix)"
        );
        return;
    }
    let (us, size) = mime_cost();
    println!("MIME assembly: {us:.1} µs per message ({size} bytes)");
    // KLAXON_BENCH_ONLY=transport: the SMTP client alone beside
    // smtp-source, `runs` times, nothing else.
    if std::env::var("KLAXON_BENCH_ONLY").as_deref() == Ok("transport") {
        let n = 77_921;
        let mut r = Vec::new();
        for run in 0..runs {
            let sink = start_smtp_sink();
            let c = smtp_client_rate(sink.port, n).await;
            let src = smtp_source_rate(sink.port, n, size);
            println!(
                "  run {run}: klaxon's SMTP client {c:.0}/s, smtp-source {src:.0}/s, ratio {:.2}",
                c / src
            );
            r.push(c / src);
        }
        println!(
            "SMTP transport alone: ratio to smtp-source median {:.2}",
            median(r)
        );
        return;
    }

    // 5. klaxon vs smtp-source into the same sink, same session count
    // (KLAXON_BENCH_ONLY=district skips it and runs 6 alone).
    let (mut ours, mut theirs, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    let mut cpu_per = Vec::new();
    let (mut client_rate, mut client_ratio) = (Vec::new(), Vec::new());
    let only_district = std::env::var("KLAXON_BENCH_ONLY").as_deref() == Ok("district");
    for run in 0..if only_district { 0 } else { runs } {
        let sink = start_smtp_sink();
        let d = daemon_with(root, &format!("smtp-{run}"), sis_db, |dir, port| {
            smtp_config(dir, port, sink_addr, sink.port, false)
        })
        .await;
        let (t0, handed) = fanout_db(&d, http).await;
        let cpu = cpu_seconds(d.child.id());
        let sink_cpu = cpu_seconds(sink.child.id());
        drop(d);
        let email = &handed.iter().find(|(c, _)| c == "email").unwrap().1;
        let per_email = cpu * 1e6 / email.count as f64;
        println!(
            "  run {run}: klaxon used {cpu:.1} CPU s ({per_email:.0} µs per email), smtp-sink {sink_cpu:.1} CPU s"
        );
        cpu_per.push(per_email);
        let span = (email.last_ms - email.first_ms).max(1) as f64 / 1000.0;
        let k = email.count as f64 / span;
        println!(
            "  run {run}: last email row written {:.2} s after the trigger, last email handed over {:.2} s",
            (email.written_ms - t0) as f64 / 1000.0,
            (email.last_ms - t0) as f64 / 1000.0
        );
        // The same number of messages of the same size, through the same sink.
        let src = smtp_source_rate(sink.port, email.count, size);
        println!(
            "  run {run}: klaxon {} emails at {k:.0}/s, smtp-source {src:.0}/s, ratio {:.2}",
            email.count,
            k / src
        );
        ours.push(k);
        theirs.push(src);
        ratio.push(k / src);
        // The transport alone, then smtp-source again, same sink.
        let c = smtp_client_rate(sink.port, email.count).await;
        let src2 = smtp_source_rate(sink.port, email.count, size);
        println!(
            "  run {run}: klaxon's SMTP client alone (no store) {c:.0}/s, smtp-source {src2:.0}/s, ratio {:.2}",
            c / src2
        );
        client_ratio.push(c / src2);
        client_rate.push(c);
    }
    if !only_district {
        println!(
            "SMTP, {SMTP_SESSIONS} sessions into smtp-sink: klaxon median {:.0}/s, smtp-source median {:.0}/s, ratio median {:.2} (target ≥ 0.7); klaxon CPU median {:.0} µs per email",
            median(ours),
            median(theirs),
            median(ratio),
            median(cpu_per)
        );
        println!(
            "SMTP transport alone ({SMTP_SESSIONS} sessions, messages built in the benchmark, no store): klaxon's client median {:.0}/s, ratio to smtp-source median {:.2}",
            median(client_rate),
            median(client_ratio)
        );
    }

    // 6. The whole district, SMS and email together.
    let (mut all, mut sms_s, mut email_s) = (Vec::new(), Vec::new(), Vec::new());
    let mut district_cpu = Vec::new();
    let (mut during_p50, mut during_p99) = (Vec::new(), Vec::new());
    let mut total = 0;
    for run in 0..runs {
        let sink = start_smtp_sink();
        let d = daemon_with(root, &format!("district-{run}"), sis_db, |dir, port| {
            smtp_config(dir, port, sink_addr, sink.port, true)
        })
        .await;
        // Parents confirm while the audience is still being written.
        let ((t0, handed), (_, p50, p99, acked_ms)) =
            tokio::join!(fanout_db(&d, http), acks_during_fanout(&d, http, 2_000));
        let cpu = cpu_seconds(d.child.id());
        drop(d);
        let secs = |h: &Handed| (h.last_ms - t0) as f64 / 1000.0;
        let last = handed.iter().map(|(_, h)| secs(h)).fold(0.0, f64::max);
        total = handed.iter().map(|(_, h)| h.count).sum();
        let by = |c: &str| handed.iter().find(|(n, _)| n == c).map(|(_, h)| h);
        let (sms, email) = (by("sms").unwrap(), by("email").unwrap());
        let written = handed.iter().map(|(_, h)| h.written_ms).max().unwrap_or(t0);
        println!(
            "  run {run}: last delivery row written {:.2} s after the trigger",
            (written - t0) as f64 / 1000.0
        );
        println!(
            "  run {run}: {} sms done at {:.2} s, {} emails done at {:.2} s, all handed over {last:.2} s",
            sms.count,
            secs(sms),
            email.count,
            secs(email)
        );
        println!(
            "  run {run}: 2000 acknowledgements during the fan-out: p50 {p50:.1} ms, p99 {p99:.1} ms, the last {:.2} s after the trigger (last row written {:.2} s)",
            (acked_ms - t0) as f64 / 1000.0,
            (written - t0) as f64 / 1000.0
        );
        during_p50.push(p50);
        during_p99.push(p99);
        let per_delivery = cpu * 1e6 / total as f64;
        println!("  run {run}: klaxon used {cpu:.1} CPU s ({per_delivery:.0} µs per delivery)");
        district_cpu.push(per_delivery);
        all.push(last);
        sms_s.push(secs(sms));
        email_s.push(secs(email));
    }
    println!(
        "whole district, SMS (HTTP) + email (SMTP), {total} deliveries: all handed over median {:.2} s (target ≤ 20); sms median {:.2} s, email median {:.2} s; klaxon CPU median {:.0} µs per delivery",
        median(all),
        median(sms_s),
        median(email_s),
        median(district_cpu)
    );
    println!(
        "acknowledgements during the whole-district fan-out (64 clients, the first 2000 recipients): p50 median {:.1} ms, p99 median {:.1} ms",
        median(during_p50),
        median(during_p99)
    );
}

/// Waits until the daemon's first alert has `n` recipients written, then
/// confirms them (`acks`) while the rest of the audience is being written
/// and sent. Returns the rate, p50 and p99 in ms, and when the last
/// confirmation was answered (ms since the epoch).
async fn acks_during_fanout(d: &Daemon, http: &reqwest::Client, n: usize) -> (f64, f64, f64, i64) {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let written: i64 = rusqlite::Connection::open_with_flags(
            d.dir.join("state/klaxon.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .and_then(|c| {
            c.query_row(
                "SELECT count(*) FROM recipients WHERE alert_id = 1",
                [],
                |r| r.get(0),
            )
        })
        .unwrap_or(0);
        if written >= n as i64 {
            break;
        }
        assert!(Instant::now() < until, "the alert's recipients never came");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (tps, p50, p99) = acks(d, http, n).await;
    (tps, p50, p99, now_ms())
}

/// Confirms up to `n` recipients of the daemon's first alert through
/// `POST /a/{token}` with 64 clients; throughput and latency percentiles.
async fn acks(d: &Daemon, http: &reqwest::Client, n: usize) -> (f64, f64, f64) {
    let conn = rusqlite::Connection::open(d.dir.join("state/klaxon.db")).unwrap();
    // Links are derived from the store's key and the recipient id, as the
    // messages carry them; the store keeps only their hash.
    let key = klaxon::store::keyfile::load_or_create(&d.dir.join("state")).unwrap();
    let tokens: Vec<String> = conn
        .prepare("SELECT id FROM recipients WHERE alert_id = 1 LIMIT ?1")
        .unwrap()
        .query_map([n as i64], |r| r.get::<_, i64>(0))
        .unwrap()
        .map(|id| {
            klaxon::domain::AckToken::derive(&key, klaxon::domain::RecipientId(id.unwrap()))
                .as_str()
                .to_string()
        })
        .collect();
    let tokens = Arc::new(tokens);
    let next = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(tokens.len())));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (http, tokens, next, lat, base) = (
            http.clone(),
            tokens.clone(),
            next.clone(),
            lat.clone(),
            d.base.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(tok) = tokens.get(i) else { break };
                let s = Instant::now();
                let r = http
                    .post(format!("{base}/a/{tok}"))
                    .form(&[("ack", "1")])
                    .send()
                    .await
                    .unwrap();
                assert!(
                    r.status().is_redirection() || r.status().is_success(),
                    "{}",
                    r.status()
                );
                lat.lock().unwrap().push(s.elapsed().as_secs_f64() * 1000.0);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let tps = tokens.len() as f64 / t.elapsed().as_secs_f64();
    let acked: i64 = conn
        .query_row(
            "SELECT count(*) FROM recipients WHERE alert_id = 1 AND acked_at IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        acked as usize,
        tokens.len(),
        "every acknowledgement is durable"
    );
    let mut l = lat.lock().unwrap().clone();
    l.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| l[((l.len() as f64 - 1.0) * q) as usize];
    (tps, p(0.5), p(0.99))
}
