//! Console page times on a district-wide alert: a synthetic district of
//! 100,000 students (`KLAXON_BENCH_STUDENTS`), an early dismissal to every
//! guardian, a share of them answering, then each console page fetched
//! `KLAXON_BENCH_RUNS` times (default 5) over loopback; the median and the
//! worst are printed per page. Target: under 300 ms per page.
//!
//! The daemon runs in this process (`App::build`, the real router and
//! store) with the `log` provider, so the fan-out is quick and the numbers
//! are the console's own: store reads and rendering.
//!
//! ```sh
//! cargo bench --bench console
//! KLAXON_BENCH_STUDENTS=20000 KLAXON_BENCH_RUNS=3 cargo bench --bench console
//! KLAXON_BENCH_KEEP=1 cargo bench --bench console   # keep the store afterwards
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use klaxon::app::App;
use klaxon::config::Config;
use klaxon::domain::{AckToken, RecipientId};
use klaxon::sis::{self, GenerateOptions, ImportOptions};
use klaxon::store::tokens::{self, ApiRole};
use klaxon::store::{Store, now_ms};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
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
        .unwrap_or(5);
    // Share of recipients who answer before the pages are timed.
    let answered: f64 = std::env::var("KLAXON_BENCH_ANSWERED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.3);

    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    std::fs::write(
        dir.join("klaxon.toml"),
        r#"
[server]
listen = "127.0.0.1:0"
public_url = "http://127.0.0.1:9"

[store]
dir = "state"
synchronous = "normal"

[[providers]]
name = "bench-log"
kind = "log"
channels = ["sms", "voice", "email"]
path = "outbox.jsonl"
"#,
    )
    .unwrap();
    let config = Config::load(&dir.join("klaxon.toml")).unwrap();
    let export = dir.join("export");
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
        &config.store_dir(),
        &config.sis,
        &ImportOptions { force: true },
    )
    .unwrap();
    println!(
        "district: {} students, {} guardians, {} staff; {runs} runs per page",
        report.students, report.guardians, report.staff
    );
    let store = Store::open(&config.store_dir(), false).unwrap();
    let token = tokens::generate();
    let t = token.clone();
    store
        .write(move |c| tokens::insert(c, "bench", ApiRole::Admin, &t, now_ms()).map(|_| ()))
        .await
        .unwrap();
    store.close();

    let app = App::build(config).await.unwrap();
    let base = format!("http://{}", app.addr());
    let state = app.state();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async move {
        let _ = stop_rx.await;
    }));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();

    let t0 = Instant::now();
    let created: serde_json::Value = http
        .post(format!("{base}/api/v1/alerts"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"playbook": "early-dismissal", "audience": {}, "message": "Water main break."}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_i64().expect("alert created");
    let recipients = created["recipients"].as_i64().unwrap();
    loop {
        let s: serde_json::Value = http
            .get(format!("{base}/api/v1/alerts/{id}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if !s["settled_at"].is_null() {
            println!(
                "alert {id}: {recipients} recipients, {} deliveries, settled in {:.1} s",
                created["deliveries"],
                t0.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(600), "did not settle");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A share of the guardians answer through their page, 64 at a time.
    let ids: Vec<i64> = {
        let conn = rusqlite::Connection::open(dir.join("state/klaxon.db")).unwrap();
        let mut st = conn
            .prepare("SELECT id FROM recipients WHERE alert_id = ?1 ORDER BY id")
            .unwrap();
        st.query_map([id], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let n = (ids.len() as f64 * answered) as usize;
    let links: Arc<Vec<String>> = Arc::new(
        ids.iter()
            .step_by((ids.len() / n.max(1)).max(1))
            .take(n)
            .map(|r| {
                AckToken::derive(&state.ack_key, RecipientId(*r))
                    .as_str()
                    .to_string()
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let t1 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..64 {
        let (http, links, next, base) = (http.clone(), links.clone(), next.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let choices = ["bus", "pickup-self", "walk"];
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(tok) = links.get(i) else { break };
                let r = http
                    .post(format!("{base}/a/{tok}"))
                    .form(&[("choice", choices[(i + w) % choices.len()])])
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_redirection(), "{}", r.status());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "{} answers in {:.1} s",
        links.len(),
        t1.elapsed().as_secs_f64()
    );

    let pages = [
        ("overview", "/".to_string()),
        ("alert view", format!("/alerts/{id}")),
        ("not confirmed, page 1", format!("/alerts/{id}/outstanding")),
        (
            "not confirmed, searched",
            format!("/alerts/{id}/outstanding?q=garcia"),
        ),
        (
            "not confirmed, deep page",
            format!("/alerts/{id}/outstanding?after={}", ids[ids.len() * 9 / 10]),
        ),
        ("pickup plan, page 1", format!("/alerts/{id}/pickup")),
        (
            "pickup plan, searched",
            format!("/alerts/{id}/pickup?q=garcia"),
        ),
        ("sign-in", "/login".to_string()),
    ];
    println!("\n| page | median ms | worst ms | bytes |");
    println!("|---|---|---|---|");
    let mut worst_median: f64 = 0.0;
    for (name, path) in &pages {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..runs {
            let s = Instant::now();
            let r = http
                .get(format!("{base}{path}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{path}: {}", r.status());
            bytes = r.bytes().await.unwrap().len();
            times.push(s.elapsed().as_secs_f64() * 1000.0);
        }
        let worst = times.iter().copied().fold(0.0, f64::max);
        let m = median(times);
        worst_median = worst_median.max(m);
        println!("| {name} | {m:.0} | {worst:.0} | {bytes} |");
    }
    // The live view's first event, as a browser opening the page gets it.
    let mut times = Vec::new();
    for _ in 0..runs {
        let s = Instant::now();
        let mut r = http
            .get(format!("{base}/alerts/{id}/events"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let mut got = String::new();
        while !got.contains("\n\n") {
            let c = r.chunk().await.unwrap().expect("an event");
            got.push_str(&String::from_utf8_lossy(&c));
        }
        times.push(s.elapsed().as_secs_f64() * 1000.0);
    }
    let worst = times.iter().copied().fold(0.0, f64::max);
    let m = median(times);
    worst_median = worst_median.max(m);
    println!("| live view, first event | {m:.0} | {worst:.0} | |");
    println!(
        "\nslowest median: {worst_median:.0} ms (target < 300 ms): {}",
        if worst_median < 300.0 {
            "MET"
        } else {
            "NOT MET"
        }
    );
    let _ = stop_tx.send(());
    let _ = server.await;
    // KLAXON_BENCH_KEEP=1 leaves the store behind, to study its queries.
    if std::env::var_os("KLAXON_BENCH_KEEP").is_some() {
        println!("store kept in {}", root.keep().join("state").display());
    }
}
