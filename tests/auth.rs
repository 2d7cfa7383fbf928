//! Signing in as a person, not a token: server-side sessions, CSRF, the
//! break-glass token sign-in and its rate limit, sign-out, a bearer-only
//! API, and scopes (a token or person limited to schools), over HTTP
//! against the real daemon.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{TestApp, hidden_input, set_cookie};
use klaxon::domain::Scope;
use klaxon::store::tokens::{self, ApiRole};
use klaxon::store::{Store, now_ms};
use serde_json::json;

/// A token limited to `schools`, made in the store as `klaxon token create
/// --schools` does.
async fn scoped_token(dir: &Path, role: ApiRole, schools: &[&str]) -> String {
    let store = Store::open(&dir.join("state"), false).expect("store");
    let t = tokens::generate();
    let t2 = t.clone();
    let scope = Scope::Schools(schools.iter().map(|s| s.to_string()).collect());
    store
        .write(move |c| {
            let id = tokens::insert(c, "north office", role, &t2, now_ms())?;
            tokens::set_scope(c, id, &scope)
        })
        .await
        .expect("token");
    store.close();
    t
}

/// The daemon with an operator token limited to school S1 (and its token).
async fn app_with_s1_operator() -> (TestApp, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("klaxon.toml"),
        common::config_text(common::LOG_PROVIDER),
    )
    .unwrap();
    common::import(dir.path(), Path::new(common::FIXTURE));
    let admin = common::make_token(dir.path(), ApiRole::Admin).await;
    let viewer = common::make_token(dir.path(), ApiRole::Viewer).await;
    let s1 = scoped_token(dir.path(), ApiRole::Operator, &["S1"]).await;
    (common::start(dir, admin, viewer).await, s1)
}

async fn audit_actions(app: &TestApp) -> Vec<(String, String)> {
    let entries: serde_json::Value = app
        .http
        .get(format!("{}/api/v1/audit?limit=100", app.base))
        .bearer_auth(&app.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or_default().to_string(),
                e["action"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_form_post_with_only_the_session_cookie_cannot_cancel_an_alert() {
    let app = common::spawn_app().await;
    let cookie = app.console_cookie(&app.admin).await;
    let created = app
        .trigger(json!({"playbook": "shelter", "audience": {"schools": ["S2"]}, "hold": true}))
        .await;
    assert_eq!(created.status(), 201);
    let id = created.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    // What a hostile page's auto-submitting form sends: the cookie, a form
    // body, no Authorization header.
    for action in ["cancel", "approve", "all-clear"] {
        let r = app
            .http
            .post(format!("{}/api/v1/alerts/{id}/{action}", app.base))
            .header("cookie", &cookie)
            .header("origin", "https://evil.example")
            .form(&[("x", "1")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{action} with only a cookie");
    }
    let r = app
        .http
        .get(format!("{}/api/v1/alerts/{id}", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a cookie does not read the API either");
    let s = app.status(id).await;
    assert_eq!(s["state"], "held", "the alert is untouched: {s}");
    assert!(s["closed_reason"].is_null(), "{s}");
    // The same session still opens the console.
    let page = app
        .http
        .get(format!("{}/", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_sign_in_becomes_a_session_that_signs_out_only_with_its_csrf_token() {
    let app = common::spawn_app().await;
    // Not signed in: the console sends the browser to the sign-in page.
    let r = app
        .http
        .get(format!("{}/alerts/1?after=2", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login?next=/alerts/1%3Fafter%3D2");

    let form = app
        .http
        .get(format!("{}/login", app.base))
        .send()
        .await
        .unwrap();
    let binding = set_cookie(&form, "klaxon_login").unwrap();
    let csrf = hidden_input(&form.text().await.unwrap(), "csrf").unwrap();
    let r = app
        .http
        .post(format!("{}/login", app.base))
        .header("cookie", format!("klaxon_login={binding}"))
        .form(&[
            ("token", app.admin.as_str()),
            ("csrf", &csrf),
            ("next", "/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let set: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    let session = set
        .iter()
        .find(|c| c.starts_with("klaxon_session="))
        .expect("a session cookie");
    assert!(
        session.contains("HttpOnly")
            && session.contains("SameSite=Strict")
            && session.contains("Path=/"),
        "{session}"
    );
    assert!(!session.contains("Secure"), "http public_url: {session}");
    assert!(
        set.iter().all(|c| !c.contains(&app.admin)),
        "the cookie never holds the token: {set:?}"
    );
    let sid = set_cookie(&r, "klaxon_session").unwrap();
    assert_eq!(sid.len(), 43, "256 bits, base64url");
    let cookie = format!("klaxon_session={sid}");

    // Only the session id's hash is stored.
    let db = rusqlite::Connection::open(app.path().join("state/klaxon.db")).unwrap();
    let stored: Vec<String> = db
        .prepare("SELECT id_hash FROM sessions")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0], sid);

    let page = app
        .http
        .get(format!("{}/", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    let form_csrf = hidden_input(&page, "csrf").expect("the sign-out form has a CSRF field");

    // Sign-out without, or with a wrong, CSRF token: refused, still signed in.
    for bad in [vec![], vec![("csrf", "wrong")]] {
        let r = app
            .http
            .post(format!("{}/logout", app.base))
            .header("cookie", &cookie)
            .form(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{bad:?}");
    }
    let still = app
        .http
        .get(format!("{}/", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(still.status(), 200);

    let out = app
        .http
        .post(format!("{}/logout", app.base))
        .header("cookie", &cookie)
        .form(&[("csrf", form_csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 200);
    assert_eq!(set_cookie(&out, "klaxon_session").as_deref(), Some(""));
    let after = app
        .http
        .get(format!("{}/", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 303, "the old cookie is worth nothing now");
    let n: i64 = db
        .query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);

    let actions = audit_actions(&app).await;
    assert!(
        actions.contains(&("token:test".into(), "signin".into())),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("token:test".into(), "signout".into())),
        "{actions:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sign_in_form_needs_its_csrf_token_and_failures_are_limited_and_audited() {
    let app = common::spawn_app().await;
    // A sign-in form posted from elsewhere (no binding cookie): refused
    // before the token is even looked at.
    let r = app
        .http
        .post(format!("{}/login", app.base))
        .form(&[("token", app.admin.as_str()), ("csrf", "guess")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(set_cookie(&r, "klaxon_session").is_none());

    let form = app
        .http
        .get(format!("{}/login", app.base))
        .send()
        .await
        .unwrap();
    let binding = set_cookie(&form, "klaxon_login").unwrap();
    let csrf = hidden_input(&form.text().await.unwrap(), "csrf").unwrap();
    let attempt = |token: String| {
        let (app, binding, csrf) = (&app, binding.clone(), csrf.clone());
        async move {
            app.http
                .post(format!("{}/login", app.base))
                .header("cookie", format!("klaxon_login={binding}"))
                .form(&[("token", token.as_str()), ("csrf", &csrf)])
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    for _ in 0..5 {
        assert_eq!(attempt("klx_wrong".into()).await, 401);
    }
    // The sixth attempt within the minute is refused unread, even with a
    // good token.
    assert_eq!(attempt(app.admin.clone()).await, 429);
    let actions = audit_actions(&app).await;
    let refused = actions
        .iter()
        .filter(|(a, act)| a == "anonymous" && act == "signin.refused")
        .count();
    assert_eq!(refused, 5, "{actions:?}");
    let metrics = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("klaxon_signins_total{method=\"token\",outcome=\"rate-limited\"} 1"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_ends_and_a_revoked_tokens_session_ends_at_once() {
    let app = common::spawn_app().await;
    let cookie = app.console_cookie(&app.viewer).await;
    let get = |c: String| {
        let app = &app;
        async move {
            app.http
                .get(format!("{}/", app.base))
                .header("cookie", c)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(get(cookie.clone()).await, 200);
    app.clock.advance(Duration::from_secs(29 * 60));
    assert_eq!(get(cookie.clone()).await, 200, "used within 30 minutes");
    app.clock.advance(Duration::from_secs(29 * 60));
    assert_eq!(get(cookie.clone()).await, 200, "the last use counts");
    app.clock.advance(Duration::from_secs(31 * 60));
    assert_eq!(get(cookie.clone()).await, 303, "idle for 31 minutes");

    // Break-glass sessions end with their token.
    let cookie = app.console_cookie(&app.admin).await;
    assert_eq!(get(cookie.clone()).await, 200);
    let db = rusqlite::Connection::open(app.path().join("state/klaxon.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.execute(
        "UPDATE api_tokens SET revoked_at = ?1 WHERE hash = ?2",
        rusqlite::params![now_ms(), tokens::hash(&app.admin)],
    )
    .unwrap();
    assert_eq!(get(cookie).await, 303);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_school_scoped_operator_acts_only_within_its_schools() {
    let (app, s1) = app_with_s1_operator().await;
    let post = |path: String, token: String, body: serde_json::Value| {
        let app = &app;
        async move {
            app.http
                .post(format!("{}{path}", app.base))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let get = |path: String, token: String| {
        let app = &app;
        async move {
            app.http
                .get(format!("{}{path}", app.base))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
        }
    };
    // Creating: its own school yes; another school, a mix, or the whole
    // district, no (and nothing is created).
    let own = post(
        "/api/v1/alerts".into(),
        s1.clone(),
        json!({"playbook": "shelter", "audience": {"schools": ["S1"]}, "hold": true}),
    )
    .await;
    assert_eq!(own.status(), 201);
    let own = own.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    for audience in [
        json!({"schools": ["S2"]}),
        json!({"schools": ["S1", "S2"]}),
        json!({}),
        json!({"grades": ["05"]}),
    ] {
        let r = post(
            "/api/v1/alerts".into(),
            s1.clone(),
            json!({"playbook": "shelter", "audience": audience}),
        )
        .await;
        assert_eq!(r.status(), 403, "{audience}");
        let msg = r.json::<serde_json::Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(msg.contains("S1"), "says what the token may do: {msg}");
    }
    // An alert of another school, held for approval.
    let other = app
        .trigger(json!({"playbook": "shelter", "audience": {"schools": ["S2"]}, "hold": true}))
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    for path in ["", "/outstanding", "/pickup", "/inbox"] {
        let r = get(format!("/api/v1/alerts/{other}{path}"), s1.clone()).await;
        assert_eq!(r.status(), 403, "GET {path}");
        let r = get(format!("/api/v1/alerts/{own}{path}"), s1.clone()).await;
        assert_eq!(r.status(), 200, "GET own {path}");
    }
    for action in ["approve", "cancel", "all-clear", "updates"] {
        let r = post(
            format!("/api/v1/alerts/{other}/{action}"),
            s1.clone(),
            json!({"message": "north gate"}),
        )
        .await;
        assert_eq!(r.status(), 403, "{action}");
    }
    let s = app.status(other).await;
    assert_eq!(s["state"], "held", "untouched: {s}");
    let list: Vec<i64> = get("/api/v1/alerts".into(), s1.clone())
        .await
        .json::<Vec<serde_json::Value>>()
        .await
        .unwrap()
        .iter()
        .map(|a| a["id"].as_i64().unwrap())
        .collect();
    assert_eq!(list, vec![own], "the list shows only its own school");
    let r = get("/api/v1/reports/contactability".into(), s1.clone()).await;
    assert_eq!(r.status(), 403, "district-wide report");

    // Its own alert: approve and cancel work.
    let r = post(
        format!("/api/v1/alerts/{own}/approve"),
        s1.clone(),
        json!({}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = post(
        format!("/api/v1/alerts/{own}/cancel"),
        s1.clone(),
        json!({}),
    )
    .await;
    assert_eq!(r.status(), 200);

    // A viewer (district-wide) may look but not act.
    let r = post(
        format!("/api/v1/alerts/{other}/cancel"),
        app.viewer.clone(),
        json!({}),
    )
    .await;
    assert_eq!(r.status(), 403);
    let r = get(format!("/api/v1/alerts/{other}"), app.viewer.clone()).await;
    assert_eq!(r.status(), 200);

    // The console applies the same scope to a break-glass session.
    let cookie = app.console_cookie(&s1).await;
    let page = app
        .http
        .get(format!("{}/alerts/{other}", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 403);
    let index = app
        .http
        .get(format!("{}/", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(index.contains(&format!("/alerts/{own}\"")), "{index}");
    assert!(!index.contains(&format!("/alerts/{other}\"")), "{index}");

    // The CLI goes through the API, so it is refused the same way.
    let cli_dir = tempfile::tempdir().unwrap();
    let listen = app.base.trim_start_matches("http://");
    std::fs::write(
        cli_dir.path().join("klaxon.toml"),
        common::config_text(common::LOG_PROVIDER).replace("127.0.0.1:0", listen),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_klaxon"))
        .arg("--config")
        .arg(cli_dir.path().join("klaxon.toml"))
        .args(["trigger", "shelter", "--school", "S2"])
        .env("KLAXON_TOKEN", &s1)
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("403") && err.contains("S2"), "{err}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_an_https_public_url_the_session_cookie_is_secure_and_the_idle_time_is_configurable()
{
    let dir = tempfile::tempdir().unwrap();
    let text = common::config_text(&format!(
        "{}\n[console]\nsession_idle = \"5m\"\n",
        common::LOG_PROVIDER
    ))
    .replace("http://127.0.0.1:9", "https://alerts.example-isd.org");
    std::fs::write(dir.path().join("klaxon.toml"), text).unwrap();
    common::import(dir.path(), Path::new(common::FIXTURE));
    let admin = common::make_token(dir.path(), ApiRole::Admin).await;
    let viewer = common::make_token(dir.path(), ApiRole::Viewer).await;
    let app = common::start(dir, admin, viewer).await;

    let form = app
        .http
        .get(format!("{}/login", app.base))
        .send()
        .await
        .unwrap();
    let binding = set_cookie(&form, "klaxon_login").unwrap();
    let csrf = hidden_input(&form.text().await.unwrap(), "csrf").unwrap();
    let r = app
        .http
        .post(format!("{}/login", app.base))
        .header("cookie", format!("klaxon_login={binding}"))
        .form(&[("token", app.viewer.as_str()), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let session = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("klaxon_session="))
        .unwrap();
    assert!(session.contains("; Secure"), "{session}");
    let cookie = format!(
        "klaxon_session={}",
        set_cookie(&r, "klaxon_session").unwrap()
    );
    app.clock.advance(Duration::from_secs(6 * 60));
    let r = app
        .http
        .get(format!("{}/", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "idle past [console] session_idle = 5m");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_create_with_schools_makes_a_school_scoped_token() {
    let app = common::spawn_app().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_klaxon"))
        .arg("--config")
        .arg(app.path().join("klaxon.toml"))
        .args([
            "token",
            "create",
            "--role",
            "viewer",
            "--name",
            "north",
            "--schools",
            "S1, S2",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("for school(s) S1, S2"), "{stdout}");
    let token = stdout.lines().last().unwrap().trim().to_string();
    let db = rusqlite::Connection::open(app.path().join("state/klaxon.db")).unwrap();
    let schools: String = db
        .query_row(
            "SELECT schools FROM api_tokens WHERE hash = ?1",
            [tokens::hash(&token)],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(schools, r#"["S1","S2"]"#);
    // The daemon reads the scope at once: the district report is refused.
    let r = app
        .http
        .get(format!("{}/api/v1/reports/contactability", app.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    app.stop().await;
}
