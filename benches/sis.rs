//! SIS benchmarks (run with `cargo bench --bench sis`): import of a generated
//! 100,000-student export (target ≤ 15 s, peak RSS ≤ 300 MB), resolution
//! of every guardian in that district (target ≤ 500 ms), and a OneRoster REST
//! pull of the same district from a loopback server (`KLAXON_BENCH_REST=0`
//! skips it).
//!
//! The REST server runs in this process and serves the generated CSVs as
//! OneRoster JSON pages (1,000 records a page) behind an OAuth 2.0 token
//! endpoint; the pull (`child-pull`) runs in a child so its peak RSS is its
//! own.
//!
//! Each import runs in a child process (this same binary with `child-import`)
//! so that its peak RSS (`VmHWM` in `/proc/self/status`) belongs to the import
//! alone, not to the generator or to earlier runs. Medians of several runs.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use klaxon::audience::{self, AudienceSpec};
use klaxon::domain::Role;
use klaxon::sis::{self, GenerateOptions, ImportOptions, SisConfig};

const STUDENTS: u32 = 100_000;
const IMPORT_RUNS: usize = 3;
const RESOLVE_RUNS: usize = 7;

fn vm_hwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child-import") {
        let (src, store) = (Path::new(&args[2]), Path::new(&args[3]));
        let t = Instant::now();
        let r = sis::import(src, store, &SisConfig::default(), &ImportOptions::default())
            .expect("import");
        println!(
            "{} {} {}",
            t.elapsed().as_secs_f64(),
            vm_hwm_kb(),
            r.students
        );
        return;
    }

    if args.get(1).map(String::as_str) == Some("child-pull") {
        let (base, store) = (&args[2], Path::new(&args[3]));
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let t = Instant::now();
        let r = rt.block_on(async {
            let cfg: klaxon::sis::rest::SourceConfig = toml::from_str(&format!(
                "kind = \"oneroster-rest\"\nbase_url = \"{base}/ims/oneroster/v1p1\"\ntoken_url = \"{base}/oauth/token\"\nclient_id = \"bench\"\nclient_secret_env = \"UNUSED\"\nevery = \"1h\"\n"
            ))
            .expect("source config");
            let mut p = klaxon::sis::rest::Puller::new(cfg, klaxon::config::Secret::new("bench"))
                .expect("puller");
            klaxon::sis::sync::pull_once(&SisConfig::default(), &mut p, base, store, None)
                .await
                .expect("pull")
        });
        println!(
            "{} {} {}",
            t.elapsed().as_secs_f64(),
            vm_hwm_kb(),
            r.students
        );
        return;
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("export");
    let t = Instant::now();
    let sum = sis::generate(
        &src,
        &GenerateOptions {
            students: STUDENTS,
            schools: None,
            seed: 7,
        },
    )
    .expect("generate");
    println!(
        "generate: {} students, {} guardians, {} staff, {} enrollments in {:.2} s",
        sum.students,
        sum.guardians,
        sum.staff,
        sum.enrollments,
        t.elapsed().as_secs_f64()
    );

    let exe = std::env::current_exe().expect("current exe");
    let (mut secs, mut rss) = (Vec::new(), Vec::new());
    let store = dir.path().join("store");
    for i in 0..IMPORT_RUNS {
        let store_i = dir.path().join(format!("store-{i}"));
        let out = Command::new(&exe)
            .arg("child-import")
            .arg(&src)
            .arg(&store_i)
            .output()
            .expect("child");
        assert!(
            out.status.success(),
            "child import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let f: Vec<&str> = text.split_whitespace().collect();
        let (s, kb): (f64, f64) = (f[0].parse().expect("secs"), f[1].parse().expect("kb"));
        println!(
            "import run {}: {:.2} s, peak RSS {:.0} MB",
            i + 1,
            s,
            kb / 1024.0
        );
        secs.push(s);
        rss.push(kb / 1024.0);
        if i == 0 {
            std::fs::rename(&store_i, &store).expect("keep store");
        } else {
            let _ = std::fs::remove_dir_all(&store_i);
        }
    }
    println!(
        "import 100k students: median {:.2} s (target ≤ 15 s), median peak RSS {:.0} MB (target ≤ 300 MB)",
        median(secs),
        median(rss)
    );

    if std::env::var("KLAXON_BENCH_REST").as_deref() != Ok("0") {
        rest_pull(&exe, &src, dir.path());
    }

    let conn = sis::open_current(&store).expect("open");
    for (label, spec) in [
        (
            "all guardians in the district",
            AudienceSpec {
                roles: vec![Role::Guardian],
                ..Default::default()
            },
        ),
        ("whole district, every role", AudienceSpec::default()),
        (
            "one school, every role (lockdown)",
            AudienceSpec {
                schools: vec!["sch-0001".into()],
                ..Default::default()
            },
        ),
    ] {
        let mut times = Vec::new();
        let mut n = 0;
        for _ in 0..RESOLVE_RUNS {
            let t = Instant::now();
            let a = audience::resolve(&conn, &spec, &[]).expect("resolve");
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            n = a.recipients.len();
        }
        println!(
            "resolve {label}: {n} recipients, median {:.0} ms (target ≤ 500 ms)",
            median(times)
        );
    }
}

/// Reads a generated CSV as OneRoster REST JSON records, each serialised
/// once: `xSourcedId` → `{"x": {"sourcedId": …}}`, `xSourcedIds` → a list.
fn json_records(path: &Path) -> Vec<String> {
    let mut rdr = csv::Reader::from_path(path).expect("csv");
    let header: Vec<String> = rdr
        .headers()
        .expect("header")
        .iter()
        .map(str::to_string)
        .collect();
    let mut out = Vec::new();
    for row in rdr.records() {
        let row = row.expect("row");
        let mut m = serde_json::Map::new();
        for (h, v) in header.iter().zip(row.iter()) {
            if v.is_empty() {
                continue;
            }
            if let Some(stem) = h.strip_suffix("SourcedIds") {
                let list: Vec<serde_json::Value> = v
                    .split(',')
                    .map(|id| serde_json::json!({"sourcedId": id}))
                    .collect();
                m.insert(format!("{stem}s"), list.into());
            } else if let Some(stem) = h.strip_suffix("SourcedId").filter(|s| !s.is_empty()) {
                m.insert(stem.into(), serde_json::json!({"sourcedId": v}));
            } else if let Some(k) = h.strip_prefix("metadata.") {
                m.entry("metadata")
                    .or_insert_with(|| serde_json::json!({}))
                    .as_object_mut()
                    .expect("object")
                    .insert(k.into(), v.into());
            } else {
                m.insert(h.clone(), v.into());
            }
        }
        out.push(serde_json::Value::Object(m).to_string());
    }
    out
}

/// Serves `src` as a OneRoster 1.1 REST API on loopback and times a child
/// pulling all of it into a fresh store.
fn rest_pull(exe: &Path, src: &Path, dir: &Path) {
    use axum::extract::{Path as UrlPath, Query, State};
    use std::collections::HashMap;
    use std::sync::Arc;
    let mut data: HashMap<String, Vec<String>> = HashMap::new();
    for name in [
        "orgs",
        "users",
        "classes",
        "enrollments",
        "academicSessions",
    ] {
        let p = src.join(format!("{name}.csv"));
        if p.is_file() {
            data.insert(name.into(), json_records(&p));
        }
    }
    let data = Arc::new(data);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let base = rt.block_on(async {
        let app = axum::Router::new()
            .route(
                "/oauth/token",
                axum::routing::post(|| async {
                    axum::Json(serde_json::json!({"access_token": "t", "expires_in": 3600}))
                }),
            )
            .route(
                "/ims/oneroster/v1p1/{name}",
                axum::routing::get(
                    |State(d): State<Arc<HashMap<String, Vec<String>>>>,
                     UrlPath(name): UrlPath<String>,
                     Query(q): Query<HashMap<String, String>>| async move {
                        let Some(all) = d.get(&name) else {
                            return axum::http::StatusCode::NOT_FOUND.into_response();
                        };
                        let limit: usize =
                            q.get("limit").and_then(|v| v.parse().ok()).unwrap_or(100);
                        let offset: usize =
                            q.get("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
                        let page: Vec<&str> = all
                            .iter()
                            .skip(offset)
                            .take(limit)
                            .map(String::as_str)
                            .collect();
                        let body = format!("{{\"{name}\":[{}]}}", page.join(","));
                        (
                            [
                                ("content-type", "application/json".to_string()),
                                ("x-total-count", all.len().to_string()),
                            ],
                            body,
                        )
                            .into_response()
                    },
                ),
            )
            .with_state(data.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}")
    });
    use axum::response::IntoResponse;
    let (mut secs, mut rss) = (Vec::new(), Vec::new());
    for i in 0..IMPORT_RUNS {
        let store = dir.join(format!("rest-store-{i}"));
        let out = Command::new(exe)
            .arg("child-pull")
            .arg(&base)
            .arg(&store)
            .output()
            .expect("child");
        assert!(
            out.status.success(),
            "child pull failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let f: Vec<&str> = text.split_whitespace().collect();
        let (s, kb): (f64, f64) = (f[0].parse().expect("secs"), f[1].parse().expect("kb"));
        println!(
            "REST pull run {}: {} students, {:.2} s, peak RSS {:.0} MB",
            i + 1,
            f[2],
            s,
            kb / 1024.0
        );
        secs.push(s);
        rss.push(kb / 1024.0);
        let _ = std::fs::remove_dir_all(&store);
    }
    println!(
        "REST pull 100k students (pages of 1,000, pull + import): median {:.2} s, median peak RSS {:.0} MB",
        median(secs),
        median(rss)
    );
    rt.shutdown_background();
}
