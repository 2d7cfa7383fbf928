//! Sign-in through a real OpenID Connect provider (panva's oidc-provider,
//! run with node): authorization code with PKCE, the provider's own login
//! and consent pages, the ID token verified against its JWKS, people
//! mapped to roles and scopes by `[[console.roles]]`, unknown people
//! refused and audited. Driven with plain HTTP and a cookie jar, as a
//! browser would, following the provider's forms.

mod common;
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::TestApp;
use klaxon::store::tokens::ApiRole;
use serde_json::json;
use support::browser::{Browser, Until};
use support::oidc_provider;

/// Where klaxon's config says it is reachable; the provider redirects
/// there, and the user agent below turns it into the daemon's real address
/// (the port is only known once it listens).
const PUBLIC: &str = "http://127.0.0.1:9";

fn skip() -> bool {
    match oidc_provider::unavailable() {
        None => false,
        Some(why) if std::env::var_os("CI").is_some() => panic!("{why}; CI must install it"),
        Some(why) => {
            eprintln!("skipped: {why}");
            true
        }
    }
}

/// A user agent: a cookie jar across the provider and klaxon, redirects
/// followed by hand, forms filled in.
struct Agent {
    http: reqwest::Client,
    jar: BTreeMap<String, String>,
    daemon: String,
}

impl Agent {
    fn new(daemon: &str) -> Agent {
        Agent {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            jar: BTreeMap::new(),
            daemon: daemon.to_string(),
        }
    }

    fn cookie_header(&self) -> String {
        self.jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, r: &reqwest::Response) {
        for v in r.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let Some((k, val)) = v.split(';').next().and_then(|kv| kv.split_once('=')) else {
                continue;
            };
            if val.is_empty() || v.contains("Max-Age=0") || v.contains("expires=Thu, 01 Jan 1970") {
                self.jar.remove(k);
            } else {
                self.jar.insert(k.to_string(), val.to_string());
            }
        }
    }

    fn rewrite(&self, url: &str) -> String {
        match url.strip_prefix(PUBLIC) {
            Some(rest) => format!("{}{rest}", self.daemon),
            None => url.to_string(),
        }
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> reqwest::Response {
        let r = req
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.keep_cookies(&r);
        r
    }

    /// GETs `url` and follows redirects; returns the final URL and response.
    async fn get(&mut self, url: &str) -> (String, reqwest::Response) {
        let mut url = self.rewrite(url);
        for _ in 0..20 {
            let r = self.send(self.http.get(&url)).await;
            if !r.status().is_redirection() {
                return (url, r);
            }
            let loc = r.headers()["location"].to_str().unwrap().to_string();
            url = self.rewrite(&resolve(&url, &loc));
        }
        panic!("too many redirects at {url}");
    }

    /// Signs in at the provider as `login`, starting at klaxon's
    /// `/auth/login`, and returns klaxon's answer to the callback.
    async fn sign_in(&mut self, login: &str) -> (String, reqwest::Response) {
        let start = format!("{}/auth/login?next=/alerts/7", self.daemon);
        self.walk(&start, login).await
    }

    /// From `start`, through the provider's login and consent forms, until
    /// the provider sends the browser back to klaxon.
    async fn walk(&mut self, start: &str, login: &str) -> (String, reqwest::Response) {
        let (mut url, mut resp) = self.get(start).await;
        for _ in 0..4 {
            if url.starts_with(&self.daemon) {
                return (url, resp);
            }
            let page = resp.text().await.unwrap();
            let (action, mut fields) = first_form(&page)
                .unwrap_or_else(|| panic!("a form at the provider ({url}): {page}"));
            for (k, v) in fields.iter_mut() {
                match k.as_str() {
                    "login" => *v = login.to_string(),
                    "password" => *v = "any password".to_string(),
                    _ => {}
                }
            }
            let target = resolve(&url, &action);
            let r = self.send(self.http.post(&target).form(&fields)).await;
            assert!(
                r.status().is_redirection(),
                "the provider took the form at {target}: {}",
                r.status()
            );
            let loc = r.headers()["location"].to_str().unwrap().to_string();
            (url, resp) = self.get(&resolve(&target, &loc)).await;
        }
        panic!("the provider never sent us back to klaxon (last at {url})");
    }

    /// One GET, no redirect followed.
    async fn get_one(&mut self, url: &str) -> reqwest::Response {
        let url = self.rewrite(url);
        self.send(self.http.get(&url)).await
    }
}

/// `loc` relative to `base`.
fn resolve(base: &str, loc: &str) -> String {
    if loc.starts_with("http://") || loc.starts_with("https://") {
        return loc.to_string();
    }
    let scheme_end = base.find("://").unwrap() + 3;
    let host_end = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    format!("{}{loc}", &base[..host_end])
}

/// The first form's action and its named inputs with their values.
fn first_form(page: &str) -> Option<(String, Vec<(String, String)>)> {
    let start = page.find("<form")?;
    let end = page[start..].find("</form>")? + start;
    let form = &page[start..end];
    let attr = |tag: &str, name: &str| {
        let at = tag.find(&format!("{name}=\""))? + name.len() + 2;
        Some(tag[at..at + tag[at..].find('"')?].to_string())
    };
    let action = attr(form, "action")?;
    let mut fields = Vec::new();
    for piece in form.split("<input").skip(1) {
        let tag = &piece[..piece.find('>').unwrap_or(piece.len())];
        if let Some(name) = attr(tag, "name") {
            fields.push((name, attr(tag, "value").unwrap_or_default()));
        }
    }
    Some((action, fields))
}

const SECRET: &str = "test-client-secret-0123456789";

/// The daemon with `[oidc]` pointing at `issuer` and the role rules.
async fn daemon(issuer: &str) -> TestApp {
    daemon_at(issuer, "127.0.0.1:0", PUBLIC).await
}

/// As `daemon`, listening on `listen` and reachable at `public`.
async fn daemon_at(issuer: &str, listen: &str, public: &str) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("oidc-secret"), SECRET).unwrap();
    let extra = format!(
        r#"{provider}
[oidc]
issuer = "{issuer}"
client_id = "klaxon"
client_secret_file = "oidc-secret"
scopes = ["openid", "email", "profile", "groups"]
label = "Example ISD"

[[console.roles]]
match_email = "alice@example.org"
role = "operator"
schools = ["S1"]

[[console.roles]]
match_group = "district-admins"
role = "admin"

[playbooks.reunification]
title = "Reunification"
severity = "emergency"
channels = ["sms", "email"]
approval = "two-person"
messages = {{ en = "Reunification at {{{{ school }}}}. {{{{ message }}}} {{{{ link }}}}" }}
"#,
        provider = common::LOG_PROVIDER
    );
    std::fs::write(
        dir.path().join("klaxon.toml"),
        common::config_text(&extra)
            .replace("http://127.0.0.1:9\"", &format!("{public}\""))
            .replace("127.0.0.1:0", listen),
    )
    .unwrap();
    common::import(dir.path(), Path::new(common::FIXTURE));
    let admin = common::make_token(dir.path(), ApiRole::Admin).await;
    let viewer = common::make_token(dir.path(), ApiRole::Viewer).await;
    common::start(dir, admin, viewer).await
}

async fn audit(app: &TestApp) -> Vec<serde_json::Value> {
    app.http
        .get(format!("{}/api/v1/audit?limit=100", app.base))
        .bearer_auth(&app.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_sign_in_through_the_identity_provider_with_their_role_and_scope() {
    if skip() {
        return;
    }
    let idp = oidc_provider::start(
        "klaxon",
        SECRET,
        &format!("{PUBLIC}/auth/callback"),
        &json!({
            "alice": {"email": "alice@example.org", "email_verified": true, "name": "Alice Principal", "groups": ["staff"]},
            "bob": {"email": "bob@example.org", "email_verified": true, "name": "Bob IT", "groups": ["district-admins"]},
            "eve": {"email": "eve@example.org", "email_verified": true, "name": "Eve", "groups": ["staff"]},
            "mallory": {"email": "alice@example.org", "email_verified": false, "name": "Not Alice", "groups": []},
        }),
    )
    .await;
    let app = daemon(&idp.issuer).await;
    // An alert of another school, to see the scope on the console.
    let other = app
        .trigger(json!({"playbook": "shelter", "audience": {"schools": ["S2"]}, "hold": true}))
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["id"]
        .as_i64()
        .unwrap();

    // The sign-in page offers the provider first.
    let login = app
        .http
        .get(format!("{}/login", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(login.contains("Sign in with Example ISD"), "{login}");

    // Alice: an operator for school S1, by her email.
    let mut alice = Agent::new(&app.base);
    let (url, page) = alice.sign_in("alice").await;
    assert!(url.contains("/auth/callback?"), "{url}");
    assert_eq!(page.status(), 200);
    let body = page.text().await.unwrap();
    assert!(body.contains("Welcome, Alice Principal"), "{body}");
    assert!(
        body.contains("content=\"0;url=/alerts/7\""),
        "goes on to where she was going: {body}"
    );
    let session = alice.jar.get("klaxon_session").cloned().expect("a session");
    assert!(
        !alice.jar.contains_key("klaxon_oidc"),
        "binding cookie cleared"
    );
    let (_, index) = alice.get(&format!("{}/", app.base)).await;
    assert_eq!(index.status(), 200);
    let index = index.text().await.unwrap();
    assert!(
        index.contains("Signed in as Alice Principal (operator, school(s) S1)"),
        "{index}"
    );
    let (_, page) = alice.get(&format!("{}/alerts/{other}", app.base)).await;
    assert_eq!(page.status(), 403, "S2 is outside Alice's scope");
    // Her session cookie does not open the API.
    let r = app
        .http
        .post(format!("{}/api/v1/alerts/{other}/cancel", app.base))
        .header("cookie", format!("klaxon_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The callback cannot be replayed: its state was used.
    let (_, replay) = alice.get(&url).await;
    assert_eq!(replay.status(), 400);

    // Bob: an admin for the district, by his group.
    let mut bob = Agent::new(&app.base);
    let (_, page) = bob.sign_in("bob").await;
    assert_eq!(page.status(), 200);
    let (_, page) = bob.get(&format!("{}/alerts/{other}", app.base)).await;
    assert_eq!(page.status(), 200, "the district admin sees every school");

    // Eve: vouched for by the provider, but no rule names her.
    let mut eve = Agent::new(&app.base);
    let (_, page) = eve.sign_in("eve").await;
    assert_eq!(page.status(), 403);
    let text = page.text().await.unwrap();
    assert!(
        text.contains("klaxon has no role for you") && text.contains("eve@example.org"),
        "{text}"
    );
    assert!(!eve.jar.contains_key("klaxon_session"));

    // Mallory claims Alice's address unverified: not taken as Alice.
    let mut mallory = Agent::new(&app.base);
    let (_, page) = mallory.sign_in("mallory").await;
    assert_eq!(page.status(), 403);
    assert!(!mallory.jar.contains_key("klaxon_session"));

    // A callback in a browser that did not start the sign-in is refused
    // (login CSRF): Alice's next sign-in is finished by another jar.
    let mut started = Agent::new(&app.base);
    let to_idp = started.get_one(&format!("{}/auth/login", app.base)).await;
    assert_eq!(to_idp.status(), 303);
    let mut other_browser = Agent::new(&app.base);
    let idp_url = to_idp.headers()["location"].to_str().unwrap().to_string();
    let (_, cb) = other_browser.walk(&idp_url, "alice").await;
    assert_eq!(cb.status(), 400, "no binding cookie in that browser");
    assert!(!other_browser.jar.contains_key("klaxon_session"));

    let entries = audit(&app).await;
    let has = |actor: &str, action: &str| {
        entries
            .iter()
            .any(|e| e["actor"] == actor && e["action"] == action)
    };
    assert!(has("oidc:alice@example.org", "signin"), "{entries:#?}");
    assert!(has("oidc:bob@example.org", "signin"), "{entries:#?}");
    assert!(
        has("oidc:eve@example.org", "signin.refused"),
        "{entries:#?}"
    );
    assert!(has("anonymous", "signin.refused"), "replays: {entries:#?}");
    let origin_recorded = entries.iter().any(|e| {
        e["action"] == "signin" && e["origin"].as_str().unwrap_or("").contains("127.0.0.1")
    });
    assert!(origin_recorded, "from where: {entries:#?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_and_out_through_the_identity_provider_in_chromium() {
    if skip() {
        return;
    }
    let Some(browser) = Browser::start().await else {
        return;
    };
    // The browser follows the provider's redirect itself, so the daemon
    // must listen where its public URL says: pick a free port first.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let public = format!("http://127.0.0.1:{port}");
    let idp = oidc_provider::start(
        "klaxon",
        SECRET,
        &format!("{public}/auth/callback"),
        &json!({"alice": {"email": "alice@example.org", "email_verified": true, "name": "Alice Principal"}}),
    )
    .await;
    let app = daemon_at(&idp.issuer, &format!("127.0.0.1:{port}"), &public).await;
    let own = app
        .trigger(json!({"playbook": "shelter", "audience": {"schools": ["S1"]}, "hold": true}))
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["id"]
        .as_i64()
        .unwrap();

    // Straight to an alert's page: sent to sign in, then back there.
    browser.goto(&format!("{public}/alerts/{own}")).await;
    browser
        .wait_for(
            Until::Text("Sign in with Example ISD"),
            Duration::from_secs(10),
        )
        .await;
    browser.click("a[href^='/auth/login']").await;
    browser
        .wait_for(Until::Css("input[name=login]"), Duration::from_secs(10))
        .await;
    browser.fill("input[name=login]", "alice").await;
    browser.fill("input[name=password]", "any password").await;
    browser.submit("form").await;
    // The provider's consent page.
    browser
        .wait_for(Until::Css("form button"), Duration::from_secs(10))
        .await;
    browser.submit("form").await;
    browser
        .wait_for(
            Until::Text("Signed in as Alice Principal (operator, school(s) S1)"),
            Duration::from_secs(10),
        )
        .await;
    assert!(
        browser.url().await.ends_with(&format!("/alerts/{own}")),
        "back where she was going: {}",
        browser.url().await
    );

    browser.submit("form[action='/logout']").await;
    browser
        .wait_for(Until::Text("You are signed out"), Duration::from_secs(10))
        .await;
    browser.goto(&format!("{public}/")).await;
    browser
        .wait_for(
            Until::Text("Sign in with Example ISD"),
            Duration::from_secs(10),
        )
        .await;
    let entries = audit(&app).await;
    for action in ["signin", "signout"] {
        assert!(
            entries
                .iter()
                .any(|e| e["actor"] == "oidc:alice@example.org" && e["action"] == action),
            "{action}: {entries:#?}"
        );
    }
    browser.close().await;
    app.stop().await;
}

impl Agent {
    /// The console form's CSRF token of this agent's session.
    async fn csrf(&mut self) -> String {
        let (_, home) = self.get(&format!("{}/", self.daemon)).await;
        common::hidden_input(&home.text().await.unwrap(), "csrf").expect("a csrf field")
    }

    /// POSTs a console form; the response, redirects not followed.
    async fn post_form(&mut self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let url = format!("{}{path}", self.daemon);
        self.send(self.http.post(&url).form(form)).await
    }
}

/// The two-person rule between people signed in through the identity
/// provider: Alice cannot approve her own alert, Bob can; her override is
/// reviewed by Bob, never by her.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_from_the_identity_provider_are_the_two_persons() {
    if skip() {
        return;
    }
    let idp = oidc_provider::start(
        "klaxon",
        SECRET,
        &format!("{PUBLIC}/auth/callback"),
        &json!({
            "alice": {"email": "alice@example.org", "email_verified": true, "name": "Alice Principal", "groups": ["staff"]},
            "bob": {"email": "bob@example.org", "email_verified": true, "name": "Bob IT", "groups": ["district-admins"]},
        }),
    )
    .await;
    let app = daemon(&idp.issuer).await;
    let mut alice = Agent::new(&app.base);
    assert_eq!(alice.sign_in("alice").await.1.status(), 200);
    let mut bob = Agent::new(&app.base);
    assert_eq!(bob.sign_in("bob").await.1.status(), 200);
    let (a_csrf, b_csrf) = (alice.csrf().await, bob.csrf().await);
    let trigger = [
        ("csrf", a_csrf.as_str()),
        ("playbook", "reunification"),
        ("school", "S1"),
        ("drill", "on"),
    ];
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut f = trigger.to_vec();
        if !ids.is_empty() {
            f.push(("confirm_duplicate", "on"));
        }
        let r = alice.post_form("/trigger/send", &f).await;
        assert_eq!(r.status(), 303);
        let id: i64 = r.headers()["location"]
            .to_str()
            .unwrap()
            .trim_start_matches("/alerts/")
            .parse()
            .unwrap();
        let s = app.status(id).await;
        assert_eq!(s["state"], "held", "{s}");
        assert_eq!(s["created_by"], "oidc:alice@example.org");
        ids.push(id);
    }
    let (first, second) = (ids[0], ids[1]);

    // Alice cannot approve her own; Bob, another person, can.
    let r = alice
        .post_form(
            &format!("/alerts/{first}/act/approve"),
            &[("csrf", &a_csrf)],
        )
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(app.status(first).await["state"], "held");
    let r = bob
        .post_form(
            &format!("/alerts/{first}/act/approve"),
            &[("csrf", &b_csrf)],
        )
        .await;
    assert_eq!(r.status(), 303);
    let s = app.wait_settled(first).await;
    assert_eq!(s["approved_by"], "oidc:bob@example.org", "{s}");

    // Her override of the second is reviewed by Bob, not by her.
    let why = "Fire alarm; the second approver is in the drill.";
    let r = alice
        .post_form(
            &format!("/alerts/{second}/act/approve"),
            &[("csrf", &a_csrf), ("override_reason", why)],
        )
        .await;
    assert_eq!(r.status(), 303);
    assert_eq!(app.wait_settled(second).await["override_reason"], why);
    let r = alice
        .post_form(&format!("/alerts/{second}/review"), &[("csrf", &a_csrf)])
        .await;
    assert_eq!(r.status(), 403);
    let r = bob
        .post_form(&format!("/alerts/{second}/review"), &[("csrf", &b_csrf)])
        .await;
    assert_eq!(r.status(), 303);
    let reviewed: Option<String> = app
        .db()
        .query_row(
            "SELECT reviewed_by FROM alerts WHERE id = ?1",
            [second],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(reviewed.as_deref(), Some("oidc:bob@example.org"));
    app.stop().await;
}
