//! `spawn_app()`: the real daemon on a free loopback port, with a fresh
//! store in a temporary folder, the tiny fixture district imported, and an
//! admin and a viewer token. Tests talk to it only over HTTP.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use klaxon::app::App;
use klaxon::clock::Clock;
use klaxon::config::Config;
use klaxon::store::tokens::{self, ApiRole};
use klaxon::store::{Store, now_ms};

pub const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-district");

pub struct TestApp {
    pub base: String,
    pub admin: String,
    pub viewer: String,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    /// The daemon's clock: tests move it instead of sleeping.
    pub clock: Clock,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// The config every test starts from: loopback, the log provider. `extra`
/// is appended (more providers, playbooks, delivery settings).
pub fn config_text(extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
public_url = "http://127.0.0.1:9"

[store]
dir = "state"
synchronous = "normal"

{extra}
"#
    )
}

pub const LOG_PROVIDER: &str = r#"
[[providers]]
name = "test-log"
kind = "log"
channels = ["sms", "voice", "email"]
path = "outbox.jsonl"
"#;

/// Imports `export` into the store folder of the config at `dir`.
pub fn import(dir: &Path, export: &Path) {
    let config = Config::load(&dir.join("klaxon.toml")).expect("config");
    klaxon::sis::import(
        export,
        &config.store_dir(),
        &config.sis,
        &klaxon::sis::ImportOptions { force: true },
    )
    .expect("fixture imports");
}

/// Creates a token directly in the store, as `klaxon token create` does.
pub async fn make_token(dir: &Path, role: ApiRole) -> String {
    make_named_token(dir, "test", role).await
}

/// A token for the person `name` (the actor the audit log and the
/// two-person rule see). Call before the daemon starts on `dir`.
pub async fn make_named_token(dir: &Path, name: &str, role: ApiRole) -> String {
    let store = Store::open(&dir.join("state"), false).expect("store");
    let t = tokens::generate();
    let (t2, name) = (t.clone(), name.to_string());
    store
        .write(move |c| tokens::insert(c, &name, role, &t2, now_ms()).map(|_| ()))
        .await
        .expect("token");
    store.close();
    t
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(LOG_PROVIDER).await
}

pub async fn spawn_app_with(extra: &str) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("klaxon.toml"), config_text(extra)).expect("config");
    import(dir.path(), Path::new(FIXTURE));
    let admin = make_token(dir.path(), ApiRole::Admin).await;
    let viewer = make_token(dir.path(), ApiRole::Viewer).await;
    start(dir, admin, viewer).await
}

/// A copy of the fixture district with `edit` applied to its users.csv
/// (shared phones, extra contacts), for tests that need such a family.
pub fn fixture_variant(edit: impl Fn(&str) -> String) -> tempfile::TempDir {
    let out = tempfile::tempdir().expect("tempdir");
    for e in std::fs::read_dir(FIXTURE).expect("fixture") {
        let e = e.unwrap();
        let text = std::fs::read_to_string(e.path()).unwrap();
        let text = if e.file_name() == "users.csv" {
            edit(&text)
        } else {
            text
        };
        std::fs::write(out.path().join(e.file_name()), text).unwrap();
    }
    out
}

/// The daemon with `extra` config, the district in `export`, and `clock`.
pub async fn spawn_app_full(extra: &str, export: &Path, clock: Clock) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("klaxon.toml"), config_text(extra)).expect("config");
    import(dir.path(), export);
    let admin = make_token(dir.path(), ApiRole::Admin).await;
    let viewer = make_token(dir.path(), ApiRole::Viewer).await;
    start_with_clock(dir, admin, viewer, clock).await
}

/// Starts (or restarts) the daemon on the folder's config.
pub async fn start(dir: tempfile::TempDir, admin: String, viewer: String) -> TestApp {
    start_with_clock(dir, admin, viewer, Clock::system()).await
}

pub async fn start_with_clock(
    dir: tempfile::TempDir,
    admin: String,
    viewer: String,
    clock: Clock,
) -> TestApp {
    // KLAXON_TEST_LOG=debug shows the daemon's log while debugging a test.
    if let Ok(filter) = std::env::var("KLAXON_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
    let config = Config::load(&dir.path().join("klaxon.toml")).expect("config loads");
    let app = App::build_with_clock(config, clock.clone())
        .await
        .expect("app builds");
    let base = format!("http://{}", app.addr());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    TestApp {
        base,
        admin,
        viewer,
        dir,
        http,
        clock,
        stop: Some(tx),
        handle: Some(handle),
    }
}

impl TestApp {
    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Stops the daemon the way SIGTERM does and waits for it.
    pub async fn stop(mut self) -> (tempfile::TempDir, String, String) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("join").expect("clean shutdown");
        }
        (self.dir, self.admin, self.viewer)
    }

    /// POSTs a trigger. Tests start several alerts of one playbook for one
    /// school on purpose, so this confirms duplicates unless the body says
    /// `"confirm_duplicate"` itself (tests/validation.rs tests the refusal).
    pub async fn trigger(&self, mut body: serde_json::Value) -> reqwest::Response {
        if let Some(o) = body.as_object_mut() {
            o.entry("confirm_duplicate")
                .or_insert(serde_json::Value::Bool(true));
        }
        self.http
            .post(format!("{}/api/v1/alerts", self.base))
            .bearer_auth(&self.admin)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn status(&self, id: i64) -> serde_json::Value {
        self.http
            .get(format!("{}/api/v1/alerts/{id}", self.base))
            .bearer_auth(&self.viewer)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Polls until every delivery of the alert has left the queue.
    pub async fn wait_settled(&self, id: i64) -> serde_json::Value {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.status(id).await;
            if !s["settled_at"].is_null() {
                return s;
            }
            assert!(Instant::now() < until, "alert {id} did not settle: {s}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// POSTs JSON with the admin token.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// GETs JSON with the viewer token.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.viewer)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// Polls until `check` holds for the alert's status (the tracker and
    /// engine run on their own tasks).
    pub async fn wait_status(
        &self,
        id: i64,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.status(id).await;
            if check(&s) {
                return s;
            }
            assert!(Instant::now() < until, "alert {id}: {what}: {s}");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    /// The acknowledgement link of one delivery, from the log provider's
    /// outbox, pointed at this daemon (messages carry the public URL).
    pub fn link_of(&self, to: &str, alert: i64) -> Option<String> {
        self.outbox()
            .into_iter()
            .find(|m| m["to"] == to && m["alert_id"] == alert)
            .and_then(|m| m["ack_url"].as_str().map(|l| self.local(l)))
    }

    /// A link from a message, pointed at this daemon.
    pub fn local(&self, link: &str) -> String {
        link.replacen("http://127.0.0.1:9", &self.base, 1)
    }

    /// Lines of the log provider's outbox.
    pub fn outbox(&self) -> Vec<serde_json::Value> {
        read_outbox(&self.dir.path().join("outbox.jsonl"))
    }

    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path().join("state/klaxon.db")).unwrap()
    }
}

pub fn read_outbox(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("outbox line is JSON"))
        .collect()
}

/// The value of `name` in the response's `Set-Cookie` headers.
pub fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next()?.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The `value` of the hidden input `name` in a page.
pub fn hidden_input(page: &str, name: &str) -> Option<String> {
    let at = page.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &page[at + name.len() + 15..];
    Some(rest[..rest.find('"')?].to_string())
}

impl TestApp {
    /// Signs in to the console with `token` (the break-glass form, as a
    /// person would) and returns the `Cookie` header of the session.
    pub async fn console_cookie(&self, token: &str) -> String {
        let form = self
            .http
            .get(format!("{}/login", self.base))
            .send()
            .await
            .unwrap();
        let binding = set_cookie(&form, "klaxon_login").expect("the form binds a cookie");
        let csrf = hidden_input(&form.text().await.unwrap(), "csrf").expect("csrf field");
        let r = self
            .http
            .post(format!("{}/login", self.base))
            .header("cookie", format!("klaxon_login={binding}"))
            .form(&[("token", token), ("csrf", &csrf), ("next", "/")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "token sign-in");
        let sid = set_cookie(&r, "klaxon_session").expect("a session cookie");
        format!("klaxon_session={sid}")
    }
}
