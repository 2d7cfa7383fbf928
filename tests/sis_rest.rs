//! OneRoster REST pulls from a loopback OneRoster server written here: it
//! serves the shared sample sets as JSON pages, requires an OAuth 2.0
//! client-credentials token (or an OAuth 1.0a HMAC-SHA256 signature), and
//! checks the paging. The pulled copy must equal the file import of the
//! same set; an expired token mid-pull is renewed; a 500 on page 3 is
//! retried, or, when it persists, the pull is refused and the old copy kept.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use klaxon::sis::rest::{Auth, Puller, SourceConfig};
use klaxon::sis::sync::pull_once;
use klaxon::sis::{self, ImportOptions, SisConfig};
use serde_json::{Map, Value, json};

const CLIENT: &str = "klaxon";
const SECRET: &str = "s3cret-for-tests";

fn sample(name: &str) -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/oneroster"
    ))
    .join(name)
}

/// Reads a sample CSV as OneRoster REST JSON records: `xSourcedId` becomes
/// a `{sourcedId}` reference `x`, `xSourcedIds` a list `xs`, grades a list.
fn records(path: &Path) -> Vec<Value> {
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .unwrap();
    let header: Vec<String> = rdr.headers().unwrap().iter().map(str::to_string).collect();
    let mut out = Vec::new();
    for row in rdr.records() {
        let row = row.unwrap();
        let mut m = Map::new();
        for (h, v) in header.iter().zip(row.iter()) {
            if h.is_empty() || v.is_empty() {
                continue;
            }
            if let Some(stem) = h.strip_suffix("SourcedIds") {
                let list: Vec<Value> = v
                    .split(',')
                    .map(|id| json!({"sourcedId": id.trim(), "type": stem}))
                    .collect();
                m.insert(format!("{stem}s"), Value::Array(list));
            } else if let Some(stem) = h.strip_suffix("SourcedId").filter(|s| !s.is_empty()) {
                m.insert(stem.into(), json!({"sourcedId": v, "type": stem}));
            } else if h == "grades" {
                m.insert(h.clone(), v.split(',').map(|g| json!(g.trim())).collect());
            } else if h == "enabledUser" {
                m.insert(h.clone(), json!(v.eq_ignore_ascii_case("true")));
            } else {
                m.insert(h.clone(), json!(v));
            }
        }
        out.push(Value::Object(m));
    }
    out
}

#[derive(Default)]
struct Server {
    data: HashMap<String, Vec<Value>>,
    /// Valid tokens and how many data requests each may still make.
    tokens: HashMap<String, u32>,
    token_life: u32,
    tokens_issued: u32,
    oauth1: bool,
    /// Remaining 500s to give for page 3 of users.
    fail_page3: u32,
    /// (collection, offset, limit, filter) of every data request answered.
    pages: Vec<(String, u64, u64, Option<String>)>,
    problems: Vec<String>,
    /// Use Link headers on users (the others are paged by X-Total-Count only).
    links: bool,
}

type Shared = Arc<Mutex<Server>>;

async fn token(State(s): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let mut s = s.lock().unwrap();
    let want = format!(
        "Basic {}",
        base64::prelude::BASE64_STANDARD.encode(format!("{CLIENT}:{SECRET}"))
    );
    let auth_ok = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&want);
    if !auth_ok || !body.contains("grant_type=client_credentials") {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    s.tokens_issued += 1;
    let t = format!("tok-{}", s.tokens_issued);
    let life = s.token_life;
    s.tokens.insert(t.clone(), life);
    Json(json!({"access_token": t, "token_type": "bearer", "expires_in": 3600})).into_response()
}

use axum::Json;

/// Checks an OAuth 1.0a HMAC-SHA256 signature the way RFC 5849 says.
fn oauth1_ok(auth: &str, url: &str) -> bool {
    let Some(rest) = auth.strip_prefix("OAuth ") else {
        return false;
    };
    let mut params: Vec<(String, String)> = Vec::new();
    let mut sig = String::new();
    for part in rest.split(", ") {
        let (k, v) = part.split_once('=').unwrap_or(("", ""));
        let v = percent_decode(v.trim_matches('"'));
        if k == "oauth_signature" {
            sig = v;
        } else {
            params.push((k.into(), v));
        }
    }
    if !params
        .iter()
        .any(|(k, v)| k == "oauth_signature_method" && v == "HMAC-SHA256")
        || !params
            .iter()
            .any(|(k, v)| k == "oauth_consumer_key" && v == CLIENT)
    {
        return false;
    }
    let parsed = reqwest::Url::parse(url).unwrap();
    let want = klaxon::sis::rest::oauth1_base_string("GET", &parsed, &params);
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(format!("{SECRET}&").as_bytes()).unwrap();
    mac.update(want.as_bytes());
    let expected = base64::prelude::BASE64_STANDARD.encode(mac.finalize().into_bytes());
    expected == sig
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = s
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(x)) => {
                out.push(x);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

async fn collection(
    State(s): State<Shared>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let mut s = s.lock().unwrap();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let full_url = format!("http://{host}{uri}");
    if s.oauth1 {
        if !oauth1_ok(&auth, &full_url) {
            s.problems
                .push(format!("bad OAuth 1.0a signature on {full_url}"));
            return StatusCode::UNAUTHORIZED.into_response();
        }
    } else {
        let tok = auth.strip_prefix("Bearer ").unwrap_or("").to_string();
        match s.tokens.get_mut(&tok) {
            Some(left) if *left > 0 => *left -= 1,
            _ => return StatusCode::UNAUTHORIZED.into_response(),
        }
    }
    if !headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with("klaxon/"))
    {
        s.problems.push("no klaxon User-Agent".into());
    }
    let (Some(limit), Some(offset)) = (
        q.get("limit").and_then(|v| v.parse::<u64>().ok()),
        q.get("offset").and_then(|v| v.parse::<u64>().ok()),
    ) else {
        s.problems
            .push(format!("request without limit and offset: {uri}"));
        return StatusCode::BAD_REQUEST.into_response();
    };
    let Some(all) = s.data.get(&name).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let filter = q.get("filter").cloned();
    let all: Vec<Value> = match &filter {
        None => all,
        Some(f) => {
            let Some(since) = f
                .strip_prefix("dateLastModified>'")
                .and_then(|r| r.strip_suffix('\''))
            else {
                s.problems.push(format!("unreadable filter {f}"));
                return StatusCode::BAD_REQUEST.into_response();
            };
            all.into_iter()
                .filter(|r| r["dateLastModified"].as_str().is_some_and(|d| d > since))
                .collect()
        }
    };
    if name == "users" && offset == 2 * limit && s.fail_page3 > 0 {
        s.fail_page3 -= 1;
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    s.pages.push((name.clone(), offset, limit, filter.clone()));
    let page: Vec<Value> = all
        .iter()
        .skip(offset as usize)
        .take(limit as usize)
        .cloned()
        .collect();
    let mut resp = Json(json!({ name.clone(): page })).into_response();
    let h = resp.headers_mut();
    h.insert("x-total-count", all.len().to_string().parse().unwrap());
    if s.links && name == "users" && offset + limit < all.len() as u64 {
        let mut next = format!(
            "/ims/oneroster/v1p1/users?offset={}&limit={limit}",
            offset + limit
        );
        if let Some(f) = &filter {
            next.push_str(&format!("&filter={}", urlencode(f)));
        }
        h.insert("link", format!("<{next}>; rel=\"next\"").parse().unwrap());
    }
    resp
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Starts the server on a free loopback port with the files of `set`.
async fn serve(set: &str, setup: impl FnOnce(&mut Server)) -> (String, Shared) {
    let mut server = Server {
        token_life: u32::MAX,
        links: true,
        ..Default::default()
    };
    for (file, name) in [
        ("orgs.csv", "orgs"),
        ("users.csv", "users"),
        ("classes.csv", "classes"),
        ("enrollments.csv", "enrollments"),
        ("academicSessions.csv", "academicSessions"),
        ("demographics.csv", "demographics"),
    ] {
        let p = sample(set).join(file);
        if p.is_file() {
            server.data.insert(name.into(), records(&p));
        }
    }
    setup(&mut server);
    let shared: Shared = Arc::new(Mutex::new(server));
    let app = Router::new()
        .route("/oauth/token", post(token))
        .route("/ims/oneroster/v1p1/{name}", get(collection))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), shared)
}

fn source(base: &str, auth: Auth) -> SourceConfig {
    let text = format!(
        r#"
kind = "oneroster-rest"
base_url = "{base}/ims/oneroster/v1p1"
token_url = "{base}/oauth/token"
client_id = "{CLIENT}"
client_secret_env = "UNUSED"
every = "1h"
page_size = 3
timeout = "5s"
auth = "{}"
"#,
        if auth == Auth::Oauth1 {
            "oauth1"
        } else {
            "oauth2"
        }
    );
    toml::from_str(&text).unwrap()
}

fn puller(base: &str, auth: Auth) -> Puller {
    let mut p = Puller::new(source(base, auth), klaxon::config::Secret::new(SECRET)).unwrap();
    p.retry_delay = Duration::from_millis(20);
    p.retries = 3;
    p
}

fn counts(r: &sis::ImportReport) -> [u64; 7] {
    [
        r.schools,
        r.students,
        r.guardians,
        r.staff,
        r.classes,
        r.enrollments,
        r.guardian_links,
    ]
}

#[tokio::test]
async fn a_pull_pages_through_and_equals_the_file_import() {
    let (base, server) = serve("edfi-lms-toolkit-v1p1", |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let file_store = dir.path().join("from-file");
    let from_file = sis::import(
        &sample("edfi-lms-toolkit-v1p1"),
        &file_store,
        &SisConfig::default(),
        &ImportOptions::default(),
    )
    .unwrap();

    let store = dir.path().join("store");
    let mut p = puller(&base, Auth::Oauth2);
    let r = pull_once(&SisConfig::default(), &mut p, &base, &store, None)
        .await
        .unwrap();
    assert_eq!(r.kind, "rest");
    assert_eq!(counts(&r), counts(&from_file), "{r}");
    assert_eq!(counts(&r), [1, 8, 0, 2, 2, 24, 0]);
    assert_eq!(r.contact_points, from_file.contact_points);
    assert_eq!(r.changes.added, 10);

    let s = server.lock().unwrap();
    assert!(s.problems.is_empty(), "{:?}", s.problems);
    assert_eq!(s.tokens_issued, 1, "the token is cached for the whole pull");
    let user_offsets: Vec<u64> = s
        .pages
        .iter()
        .filter(|p| p.0 == "users")
        .map(|p| p.1)
        .collect();
    assert_eq!(
        user_offsets,
        [0, 3, 6, 9],
        "users followed the Link headers"
    );
    let enrollment_pages = s.pages.iter().filter(|p| p.0 == "enrollments").count();
    assert_eq!(
        enrollment_pages, 8,
        "24 enrollments by 3, X-Total-Count only"
    );
    assert!(s.pages.iter().all(|p| p.2 == 3));
}

#[tokio::test]
async fn an_expired_token_mid_pull_is_renewed() {
    let (base, server) = serve("edfi-lms-toolkit-v1p1", |s| s.token_life = 5).await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = puller(&base, Auth::Oauth2);
    let r = pull_once(&SisConfig::default(), &mut p, &base, dir.path(), None)
        .await
        .unwrap();
    assert_eq!(counts(&r), [1, 8, 0, 2, 2, 24, 0]);
    let s = server.lock().unwrap();
    assert!(
        s.tokens_issued >= 3,
        "renewed as each token ran out: {}",
        s.tokens_issued
    );
}

#[tokio::test]
async fn a_500_on_page_3_is_retried() {
    let (base, server) = serve("edfi-lms-toolkit-v1p1", |s| s.fail_page3 = 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = puller(&base, Auth::Oauth2);
    let r = pull_once(&SisConfig::default(), &mut p, &base, dir.path(), None)
        .await
        .unwrap();
    assert_eq!(counts(&r), [1, 8, 0, 2, 2, 24, 0]);
    assert_eq!(server.lock().unwrap().fail_page3, 0, "both 500s were met");
}

#[tokio::test]
async fn a_lasting_500_refuses_the_pull_and_keeps_the_old_copy() {
    let (base, _server) = serve("edfi-lms-toolkit-v1p1", |s| s.fail_page3 = 100).await;
    let dir = tempfile::tempdir().unwrap();
    sis::import(
        &sample("catalyst-moodle-enrol_oneroster/v1p2_full"),
        dir.path(),
        &SisConfig::default(),
        &ImportOptions::default(),
    )
    .unwrap();
    let before = std::fs::read(sis::current_path(dir.path())).unwrap();
    let mut p = puller(&base, Auth::Oauth2);
    let err = pull_once(&SisConfig::default(), &mut p, &base, dir.path(), None)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.outcome(), "failed");
    assert!(
        msg.contains("users?offset=6&limit=3") && msg.contains("500") && msg.contains("gave up"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(sis::current_path(dir.path())).unwrap(),
        before
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".sis"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files removed");
}

#[tokio::test]
async fn oauth1_signed_requests_are_accepted() {
    let (base, server) = serve("edfi-lms-toolkit-v1p1", |s| s.oauth1 = true).await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = puller(&base, Auth::Oauth1);
    let r = pull_once(&SisConfig::default(), &mut p, &base, dir.path(), None)
        .await
        .unwrap();
    assert_eq!(counts(&r), [1, 8, 0, 2, 2, 24, 0]);
    let s = server.lock().unwrap();
    assert!(s.problems.is_empty(), "{:?}", s.problems);
    assert_eq!(s.tokens_issued, 0);
}

#[tokio::test]
async fn an_incremental_pull_asks_for_changes_and_merges_them() {
    let (base, server) = serve("edfi-lms-toolkit-v1p1", |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = puller(&base, Auth::Oauth2);
    pull_once(&SisConfig::default(), &mut p, &base, dir.path(), None)
        .await
        .unwrap();
    // One student's phone changes in the SIS.
    let id = {
        let mut s = server.lock().unwrap();
        s.pages.clear();
        let u = &mut s.data.get_mut("users").unwrap()[0];
        u["phone"] = json!("(950) 413 7777");
        u["dateLastModified"] = json!("2026-11-23T03:00:00Z");
        u["sourcedId"].as_str().unwrap().to_string()
    };
    let since: jiff::Timestamp = "2026-11-23T02:00:00Z".parse().unwrap();
    let r = pull_once(
        &SisConfig::default(),
        &mut p,
        &base,
        dir.path(),
        Some(since),
    )
    .await
    .unwrap();
    assert_eq!(r.kind, "rest-incremental");
    assert_eq!(
        (r.changes.added, r.changes.changed, r.changes.removed),
        (0, 1, 0)
    );
    assert_eq!(r.students, 8, "the rest of the copy is kept");
    let s = server.lock().unwrap();
    assert!(
        s.pages
            .iter()
            .all(|p| p.3.as_deref() == Some("dateLastModified>'2026-11-23T02:00:00Z'")),
        "{:?}",
        s.pages
    );
    let conn = sis::open_current(dir.path()).unwrap();
    let phone: String = conn
        .query_row(
            "SELECT c.address FROM contacts c JOIN people p ON p.pk = c.person WHERE p.id = ?1 AND c.channel = 'sms'",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(phone, "+19504137777");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_pulls_on_its_schedule_and_records_the_sync() {
    let (base, server) = serve("edfi-lms-toolkit-v1p1", |_| {}).await;
    let secrets = tempfile::tempdir().unwrap();
    let secret_file = secrets.path().join("sis-secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let extra = format!(
        r#"
[sis.source]
kind = "oneroster-rest"
base_url = "{base}/ims/oneroster/v1p1"
token_url = "{base}/oauth/token"
client_id = "{CLIENT}"
client_secret_file = "{}"
every = "1h"
page_size = 3
{}"#,
        secret_file.display(),
        common::LOG_PROVIDER
    );
    let app = common::spawn_app_with(&extra).await;
    let until = std::time::Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let m = app
            .http
            .get(format!("{}/metrics", app.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if m.contains("klaxon_sis_syncs_total{kind=\"rest\",outcome=\"ok\"} 1") {
            break m;
        }
        assert!(std::time::Instant::now() < until, "no pull recorded: {m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let gauge = metrics
        .lines()
        .find(|l| l.starts_with("klaxon_sis_last_success_timestamp_seconds "))
        .expect("last success gauge");
    let secs: f64 = gauge.rsplit(' ').next().unwrap().parse().unwrap();
    let now = jiff::Timestamp::now().as_second() as f64;
    assert!((now - secs).abs() < 60.0, "{gauge}");
    assert!(server.lock().unwrap().problems.is_empty());

    let (action, detail): (String, String) = app
        .db()
        .query_row(
            "SELECT action, detail FROM audit WHERE action LIKE 'sis.%' ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(action, "sis.sync");
    let detail: Value = serde_json::from_str(&detail).unwrap();
    assert_eq!(detail["outcome"], "ok");
    assert_eq!(detail["added"], 10, "{detail}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_klaxon"))
        .arg("--config")
        .arg(app.dir.path().join("klaxon.toml"))
        .args(["sis", "status", "--json"])
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    let last = &status["syncs"][0];
    assert_eq!(
        (
            last["trigger"].as_str(),
            last["kind"].as_str(),
            last["outcome"].as_str()
        ),
        (Some("schedule"), Some("rest"), Some("ok")),
        "{status}"
    );
    assert_eq!(status["copy"]["students"], 8, "{status}");
    app.stop().await;
}
