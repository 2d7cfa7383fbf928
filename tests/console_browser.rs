//! The operator console in Debian's Chromium: every page passes axe-core's
//! WCAG 2.1 A and AA rules (axe-core 4.14.1, vendored in
//! `tests/support/axe/`), at desktop width, on a 768 px tablet and at the
//! width 200% zoom leaves (640 CSS px of a 1280 px window), without
//! horizontal scrolling; the alert view updates its figures live, without
//! a reload; the operator signs out; a second operator approves a
//! two-person alert the first one triggered, then gives the all-clear.

mod common;
mod support;

use std::path::Path;
use std::time::Duration;

use common::{TestApp, spawn_app};
use serde_json::json;
use support::browser::{Browser, Until};

const AXE: &str = include_str!("support/axe/axe.min.js");

/// Runs axe-core on the current page and fails listing every violation.
async fn assert_accessible(browser: &Browser, what: &str) {
    let loaded = browser
        .script("return typeof window.axe !== 'undefined'", vec![])
        .await;
    if loaded != json!(true) {
        browser
            .script(&format!("{AXE}\n;return true;"), vec![])
            .await;
    }
    let result = browser
        .script(
            "return axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}, resultTypes: ['violations']})
                .then(function (r) { return r.violations.map(function (v) {
                    return {id: v.id, impact: v.impact, help: v.help,
                            nodes: v.nodes.slice(0, 5).map(function (n) { return n.target.join(' ') + ': ' + n.failureSummary; })};
                }); });",
            vec![],
        )
        .await;
    let violations = result.as_array().cloned().unwrap_or_default();
    assert!(
        violations.is_empty(),
        "{what}: {} axe violation(s):\n{}",
        violations.len(),
        serde_json::to_string_pretty(&violations).unwrap()
    );
}

/// The page does not scroll sideways at the current window width.
async fn assert_no_horizontal_scroll(browser: &Browser, what: &str) {
    let r = browser
        .script(
            "return [document.documentElement.scrollWidth, window.innerWidth]",
            vec![],
        )
        .await;
    let (scroll, inner) = (r[0].as_i64().unwrap(), r[1].as_i64().unwrap());
    assert!(
        scroll <= inner,
        "{what}: the page is {scroll} px wide in a {inner} px window"
    );
}

async fn sign_in(browser: &Browser, app: &TestApp, token: &str) {
    browser.goto(&format!("{}/login", app.base)).await;
    browser.fill("input[name=token]", token).await;
    browser.submit("form[action='/login']").await;
    browser
        .wait_for(Until::Text("Signed in as"), Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_console_page_passes_axe_on_desktop_tablet_and_at_200_percent() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = spawn_app().await;
    let created: serde_json::Value = app
        .trigger(json!({"playbook": "early-dismissal", "audience": {"schools": ["S1", "S2"]}, "message": "Power outage."}))
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_i64().unwrap();
    app.wait_settled(id).await;
    let link = app.link_of("+15555550102", id).expect("Wei's link");
    let r = app
        .http
        .post(&link)
        .form(&[("choice", "bus")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);

    browser.goto(&format!("{}/login", app.base)).await;
    assert_accessible(&browser, "sign-in").await;
    sign_in(&browser, &app, &app.admin).await;
    let pages = [
        ("trigger form", "/trigger".to_string(), "Start an alert"),
        (
            "all-clear confirmation",
            format!("/alerts/{id}/act/all-clear"),
            "Send the all-clear",
        ),
        ("overview", "/".to_string(), "Open alerts"),
        ("alert view", format!("/alerts/{id}"), "Per school"),
        (
            "not confirmed",
            format!("/alerts/{id}/outstanding"),
            "Maria Garcia",
        ),
        (
            "pickup plan",
            format!("/alerts/{id}/pickup?q=lee"),
            "Ben Lee",
        ),
    ];
    for (width, height, label) in [
        (1280, 900, "desktop"),
        (768, 1024, "768 px tablet"),
        (640, 900, "200% zoom"),
    ] {
        browser.resize(width, height).await;
        for (name, path, text) in &pages {
            browser.goto(&format!("{}{path}", app.base)).await;
            browser
                .wait_for(Until::Text(text), Duration::from_secs(10))
                .await;
            let what = format!("{name} at {label}");
            assert_no_horizontal_scroll(&browser, &what).await;
            assert_accessible(&browser, &what).await;
        }
        // The preview, reached through the form.
        browser.goto(&format!("{}/trigger", app.base)).await;
        browser.click("input[name=school][value=S1]").await;
        browser.submit("form[action='/trigger/preview']").await;
        browser
            .wait_for(Until::Text("SMS per language"), Duration::from_secs(10))
            .await;
        let what = format!("preview at {label}");
        assert_no_horizontal_scroll(&browser, &what).await;
        assert_accessible(&browser, &what).await;
    }
    browser.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_view_updates_without_a_reload_and_the_operator_signs_out() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let app = spawn_app().await;
    sign_in(&browser, &app, &app.admin).await;

    // Trigger a drill from the form and see the preview before sending.
    browser.click("nav a[href='/trigger']").await;
    browser
        .wait_for(Until::Css("select#playbook"), Duration::from_secs(10))
        .await;
    browser.select("select#playbook", "early-dismissal").await;
    browser.click("input[name=school][value=S1]").await;
    browser.click("input[name=school][value=S2]").await;
    browser.fill("#message", "Power outage.").await;
    assert!(
        browser.find("#drill").await.is_selected().await.unwrap(),
        "the form starts as a drill"
    );
    browser.submit("form[action='/trigger/preview']").await;
    browser
        .wait_for(Until::Text("SMS per language"), Duration::from_secs(10))
        .await;
    let preview = browser.page_text().await;
    assert!(
        preview.contains("Preview: DRILL: Early dismissal"),
        "{preview}"
    );
    assert!(preview.contains("it fits"), "{preview}");
    assert_eq!(
        app.db()
            .query_row("SELECT count(*) FROM alerts", [], |r| r.get::<_, i64>(0))
            .unwrap(),
        0,
        "the preview sends nothing"
    );
    browser.submit("form[action='/trigger/send']").await;
    browser
        .wait_for(Until::Text("Per school"), Duration::from_secs(20))
        .await;
    let url = browser.url().await;
    let id: i64 = url
        .rsplit('/')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an alert page: {url}"));
    app.wait_settled(id).await;

    browser.resize(1100, 1400).await;
    browser.goto(&format!("{}/alerts/{id}", app.base)).await;
    browser
        .wait_for(Until::Text("Updating live"), Duration::from_secs(10))
        .await;
    assert_eq!(browser.text_of("[data-live=confirmed]").await, "0");
    // A marker a reload would wipe.
    browser
        .script("window.__still_here = 42; return true;", vec![])
        .await;

    // Two guardians answer on their own pages.
    for phone in ["+15555550102", "+15555550101"] {
        let link = app.link_of(phone, id).expect("a guardian's link");
        let r = app
            .http
            .post(&link)
            .form(&[("choice", "pickup-self")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
    }
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while browser.text_of("[data-live=confirmed]").await != "2" {
        assert!(
            std::time::Instant::now() < until,
            "the confirmed figure did not change: {}",
            browser.text_of("[data-live=confirmed]").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        browser
            .script("return window.__still_here === 42", vec![])
            .await,
        json!(true),
        "the figures changed without a reload"
    );
    // The chart followed (it is redrawn at most every few seconds).
    browser
        .wait_for(Until::Css("#chart svg[role=img]"), Duration::from_secs(5))
        .await;
    let left = browser.text_of("[data-live=ack_left]").await;
    assert!(
        left.ends_with("left"),
        "the confirm deadline counts down: {left}"
    );

    // The screenshot in the README, taken from this page.
    // KLAXON_SCREENSHOT=docs/alert-view.png refreshes the README's picture.
    let to = std::env::var("KLAXON_SCREENSHOT")
        .map(|p| Path::new(env!("CARGO_MANIFEST_DIR")).join(p))
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/alert-view.png"));
    let shot = browser.screenshot(&to).await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);

    // The all-clear, with its confirmation step.
    browser
        .click(&format!("a[href='/alerts/{id}/act/all-clear']"))
        .await;
    browser
        .wait_for(Until::Text("exactly the same"), Duration::from_secs(10))
        .await;
    browser
        .submit(&format!("form[action='/alerts/{id}/act/all-clear']"))
        .await;
    browser
        .wait_for(Until::Text("closed (all-clear)"), Duration::from_secs(20))
        .await;

    // Sign out: the session ends, and the console is closed again.
    browser.click("header button[type=submit]").await;
    browser
        .wait_for(Until::Text("You are signed out"), Duration::from_secs(10))
        .await;
    browser.goto(&format!("{}/alerts/{id}", app.base)).await;
    browser
        .wait_for(Until::Css("input[name=token]"), Duration::from_secs(10))
        .await;
    assert!(browser.url().await.contains("/login?next="));
    browser.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_operator_approves_a_two_person_alert_then_gives_the_all_clear_and_signs_out() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    use klaxon::store::tokens::ApiRole;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "{}{}",
        common::LOG_PROVIDER,
        r#"
[playbooks.reunification]
title = "Reunification"
severity = "emergency"
channels = ["sms", "email"]
approval = "two-person"
messages = { en = "Reunification at {{ school }}. {{ message }} {{ link }}" }
"#
    );
    std::fs::write(dir.path().join("klaxon.toml"), common::config_text(&extra)).unwrap();
    common::import(dir.path(), Path::new(common::FIXTURE));
    let alice = common::make_named_token(dir.path(), "alice", ApiRole::Operator).await;
    let bob = common::make_named_token(dir.path(), "bob", ApiRole::Operator).await;
    let admin = common::make_named_token(dir.path(), "admin", ApiRole::Admin).await;
    let viewer = common::make_named_token(dir.path(), "viewer", ApiRole::Viewer).await;
    let app = common::start(dir, admin, viewer).await;

    // Alice triggers it from the form: it waits for a second approval.
    sign_in(&browser, &app, &alice).await;
    browser.click("nav a[href='/trigger']").await;
    browser
        .wait_for(Until::Css("select#playbook"), Duration::from_secs(10))
        .await;
    browser.select("select#playbook", "reunification").await;
    browser.click("input[name=school][value=S1]").await;
    browser.fill("#message", "At the north gym.").await;
    browser.submit("form[action='/trigger/preview']").await;
    browser
        .wait_for(Until::Text("SMS per language"), Duration::from_secs(10))
        .await;
    browser.submit("form[action='/trigger/send']").await;
    browser
        .wait_for(
            // The alert view's own words: the preview also says the alert
            // "needs a second approval", and may still be on screen.
            Until::Text("nothing is sent until an operator other than"),
            Duration::from_secs(20),
        )
        .await;
    let url = browser.url().await;
    let id: i64 = url
        .rsplit('/')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("an alert page: {url}"));
    assert_eq!(app.status(id).await["state"], "held");
    assert_eq!(
        browser
            .count(&format!("a[href='/alerts/{id}/act/approve']"))
            .await,
        1
    );
    assert!(
        browser
            .page_text()
            .await
            .contains("Send now without a second approval"),
        "the one who triggered it is offered only the override"
    );
    // The override page asks for a typed reason, and passes axe.
    browser
        .click(&format!("a[href='/alerts/{id}/act/approve']"))
        .await;
    browser
        .wait_for(
            Until::Css("textarea#override_reason[required]"),
            Duration::from_secs(10),
        )
        .await;
    assert_accessible(&browser, "override confirmation").await;
    browser.click("header button[type=submit]").await;
    browser
        .wait_for(Until::Text("You are signed out"), Duration::from_secs(10))
        .await;
    assert_eq!(app.status(id).await["state"], "held", "still held");

    // Bob approves it in the browser, through the confirmation step.
    sign_in(&browser, &app, &bob).await;
    browser.goto(&format!("{}/alerts/{id}", app.base)).await;
    browser
        .wait_for(Until::Text("Approve and send"), Duration::from_secs(10))
        .await;
    browser
        .click(&format!("a[href='/alerts/{id}/act/approve']"))
        .await;
    browser
        .wait_for(
            Until::Text("You give the second approval"),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(browser.count("textarea#override_reason").await, 0);
    browser
        .submit(&format!("form[action='/alerts/{id}/act/approve']"))
        .await;
    browser
        .wait_for(
            Until::Css(&format!("a[href='/alerts/{id}/act/all-clear']")),
            Duration::from_secs(20),
        )
        .await;
    let s = app.wait_settled(id).await;
    assert_eq!(s["approved_by"], "token:bob", "{s}");
    assert!(s["override_reason"].is_null(), "{s}");

    // The all-clear, then sign out.
    browser
        .click(&format!("a[href='/alerts/{id}/act/all-clear']"))
        .await;
    browser
        .wait_for(Until::Text("exactly the same"), Duration::from_secs(10))
        .await;
    browser
        .submit(&format!("form[action='/alerts/{id}/act/all-clear']"))
        .await;
    browser
        .wait_for(Until::Text("closed (all-clear)"), Duration::from_secs(20))
        .await;
    assert_eq!(app.status(id).await["closed_reason"], "all-clear");
    browser.goto(&format!("{}/reviews", app.base)).await;
    browser
        .wait_for(
            Until::Text("Nothing waits for review."),
            Duration::from_secs(10),
        )
        .await;
    assert_accessible(&browser, "review list").await;
    browser.click("header button[type=submit]").await;
    browser
        .wait_for(Until::Text("You are signed out"), Duration::from_secs(10))
        .await;
    browser.goto(&format!("{}/alerts/{id}", app.base)).await;
    browser
        .wait_for(Until::Css("input[name=token]"), Duration::from_secs(10))
        .await;
    assert!(browser.url().await.contains("/login?next="));
    browser.close().await;
    app.stop().await;
}
