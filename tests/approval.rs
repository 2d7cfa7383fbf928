//! The two-person rule (issue 9): a playbook marked `approval =
//! "two-person"`, and by config every district-wide alert, waits until a
//! second operator approves it; the one who triggered it cannot, except by
//! an emergency override with a typed reason, which is recorded, audited
//! and put on a review list for a second person.

mod common;

use std::path::Path;

use common::{LOG_PROVIDER, config_text, import, make_named_token, start};
use klaxon::store::tokens::ApiRole;
use serde_json::json;

const EXTRA: &str = r#"
[approval]
district_wide = "two-person"

[playbooks.reunification]
title = "Reunification"
severity = "emergency"
channels = ["sms", "email"]
approval = "two-person"
messages = { en = "Reunification at {{ school }}. {{ message }} {{ link }}" }
"#;

struct Ops {
    app: common::TestApp,
    alice: String,
    bob: String,
}

async fn start_with_two_operators() -> Ops {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("klaxon.toml"),
        config_text(&format!("{LOG_PROVIDER}{EXTRA}")),
    )
    .unwrap();
    import(dir.path(), Path::new(common::FIXTURE));
    let alice = make_named_token(dir.path(), "alice", ApiRole::Operator).await;
    let bob = make_named_token(dir.path(), "bob", ApiRole::Operator).await;
    let admin = make_named_token(dir.path(), "admin", ApiRole::Admin).await;
    let viewer = make_named_token(dir.path(), "viewer", ApiRole::Viewer).await;
    let app = start(dir, admin, viewer).await;
    Ops { app, alice, bob }
}

async fn post(
    ops: &Ops,
    token: &str,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = ops
        .app
        .http
        .post(format!("{}{path}", ops.app.base))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(serde_json::Value::Null))
}

fn sent(app: &common::TestApp, id: i64) -> i64 {
    app.db()
        .query_row(
            "SELECT count(*) FROM deliveries WHERE alert_id = ?1 AND state <> 'held'",
            [id],
            |r| r.get(0),
        )
        .unwrap()
}

fn audit_actions(app: &common::TestApp, id: i64) -> Vec<(String, String)> {
    let db = app.db();
    let mut st = db
        .prepare("SELECT actor, action FROM audit WHERE alert_id = ?1 ORDER BY id")
        .unwrap();
    st.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test]
async fn a_second_operator_approves_and_the_first_cannot() {
    let ops = start_with_two_operators().await;
    let (s, b) = post(
        &ops,
        &ops.alice,
        "/api/v1/alerts",
        json!({"playbook": "reunification", "audience": {"schools": ["S1"]}, "message": "Go to the church."}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["held"], true, "{b}");
    assert_eq!(b["needs_second_approval"], true, "{b}");
    let id = b["id"].as_i64().unwrap();
    assert_eq!(sent(&ops.app, id), 0);

    // Alice triggered it: her approval is refused, and nothing moves.
    let (s, b) = post(
        &ops,
        &ops.alice,
        &format!("/api/v1/alerts/{id}/approve"),
        json!({}),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    assert!(
        b["error"].as_str().unwrap().contains("second operator"),
        "{b}"
    );
    assert_eq!(sent(&ops.app, id), 0);
    assert_eq!(ops.app.status(id).await["state"], "held");

    // Bob approves: it goes.
    let (s, b) = post(
        &ops,
        &ops.bob,
        &format!("/api/v1/alerts/{id}/approve"),
        json!({}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let st = ops.app.wait_settled(id).await;
    assert_eq!(st["approved_by"], "bob", "{st}");
    assert!(st["override_reason"].is_null());
    assert!(sent(&ops.app, id) > 0);
    let actions = audit_actions(&ops.app, id);
    assert!(
        actions.contains(&("alice".into(), "alert.create".into())),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("bob".into(), "alert.approve".into())),
        "{actions:?}"
    );
}

#[tokio::test]
async fn district_wide_alerts_need_two_people_and_an_override_is_reviewed() {
    let ops = start_with_two_operators().await;
    // Lockdown is one-person, but a district-wide one falls under [approval].
    let (s, b) = post(
        &ops,
        &ops.alice,
        "/api/v1/alerts",
        json!({"playbook": "lockdown"}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["needs_second_approval"], true, "{b}");
    let id = b["id"].as_i64().unwrap();

    // An override needs a reason of some words.
    let (s, _) = post(
        &ops,
        &ops.alice,
        &format!("/api/v1/alerts/{id}/approve"),
        json!({"override_reason": "  "}),
    )
    .await;
    assert_eq!(s, 422);
    // With one, Alice sends it at once: recorded, audited, up for review.
    let (s, b) = post(
        &ops,
        &ops.alice,
        &format!("/api/v1/alerts/{id}/approve"),
        json!({"override_reason": "Intruder reported, no second operator answering"}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let st = ops.app.wait_settled(id).await;
    assert_eq!(
        st["override_reason"],
        "Intruder reported, no second operator answering"
    );
    assert!(audit_actions(&ops.app, id).contains(&("alice".into(), "alert.override".into())));
    let list = ops.app.get_json("/api/v1/reviews").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], id);

    // The review is for a second person.
    let (s, _) = post(
        &ops,
        &ops.alice,
        &format!("/api/v1/alerts/{id}/review"),
        json!({"note": "mine"}),
    )
    .await;
    assert_eq!(s, 403);
    let (s, b) = post(
        &ops,
        &ops.bob,
        &format!("/api/v1/alerts/{id}/review"),
        json!({"note": "Justified."}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["reviewed_by"], "bob");
    assert!(
        ops.app
            .get_json("/api/v1/reviews")
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );

    // An override at trigger time sends at once; on a one-person alert it is refused.
    let (s, b) = post(
        &ops,
        &ops.bob,
        "/api/v1/alerts",
        json!({"playbook": "shelter", "override_reason": "Tornado on the ground now", "confirm_duplicate": true}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["held"], false, "{b}");
    assert_eq!(b["override_reason"], "Tornado on the ground now");
    let (s, b) = post(
        &ops,
        &ops.bob,
        "/api/v1/alerts",
        json!({"playbook": "shelter", "audience": {"schools": ["S2"]}, "override_reason": "Not needed here", "confirm_duplicate": true}),
    )
    .await;
    assert_eq!(s, 422, "{b}");
}

/// Approvers on call are paged while an alert waits: the first at once (SMS,
/// voice, email with the alert's link), the next when nobody acts within
/// `approval_escalate`; nobody after it is approved; a routine alert pages
/// nobody in quiet hours.
#[tokio::test]
async fn approvers_on_call_are_paged_in_turn_while_an_alert_waits() {
    let extra = format!(
        r#"{LOG_PROVIDER}
[approval]
approval_escalate = "5m"
quiet_hours = "00:00-24:00"
approvers = [
  {{ name = "First", phone = "+15125550101", email = "first@example-isd.org" }},
  {{ name = "Second", phone = "+15125550102" }},
]

[playbooks.newsletter]
title = "Newsletter"
severity = "routine"
channels = ["email"]
messages = {{ en = "News. {{{{ message }}}} {{{{ link }}}}" }}
"#
    );
    let clock = klaxon::clock::Clock::system();
    let app = common::spawn_app_full(&extra, Path::new(common::FIXTURE), clock.clone()).await;
    let pages = |app: &common::TestApp, id: i64| -> Vec<(String, String)> {
        app.outbox()
            .into_iter()
            .filter(|m| m["alert_id"] == id && m["delivery_id"] == 0)
            .map(|m| {
                (
                    m["to"].as_str().unwrap().to_string(),
                    m["channel"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let wait_pages = |n: usize, id: i64| {
        let app = &app;
        async move {
            let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                let p = pages(app, id);
                if p.len() >= n {
                    return p;
                }
                assert!(
                    std::time::Instant::now() < until,
                    "{} pages, not {n}: {p:?}",
                    p.len()
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    let r = app
        .trigger(json!({"playbook": "lockdown", "audience": {"schools": ["S1"]}, "hold": true}))
        .await;
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let first = wait_pages(3, id).await;
    let mut got = first.clone();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("+15125550101".to_string(), "sms".to_string()),
            ("+15125550101".to_string(), "voice".to_string()),
            ("first@example-isd.org".to_string(), "email".to_string()),
        ]
    );
    let body = app
        .outbox()
        .into_iter()
        .find(|m| m["alert_id"] == id && m["channel"] == "sms" && m["delivery_id"] == 0)
        .unwrap();
    assert!(
        body["body"]
            .as_str()
            .unwrap()
            .contains(&format!("/alerts/{id}")),
        "{body}"
    );
    // Nobody acts for five minutes: the second approver.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(pages(&app, id).len(), 3, "not before approval_escalate");
    clock.advance(std::time::Duration::from_secs(301));
    let both = wait_pages(5, id).await;
    assert!(
        both.iter()
            .any(|(to, ch)| to == "+15125550102" && ch == "voice"),
        "{both:?}"
    );
    // Approved: nobody more, however long.
    let r = app
        .post(&format!("/api/v1/alerts/{id}/approve"), json!({}))
        .await;
    assert_eq!(r.status(), 200);
    clock.advance(std::time::Duration::from_secs(900));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(pages(&app, id).len(), 5);

    // A routine alert in quiet hours pages nobody.
    let r = app
        .trigger(json!({"playbook": "newsletter", "audience": {"schools": ["S1"]}, "hold": true}))
        .await;
    let routine = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    clock.advance(std::time::Duration::from_secs(10));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(pages(&app, routine).is_empty());
}

/// `klaxon ARGS` against the daemon of `ops` with `token`: (success, stdout, stderr).
async fn cli(ops: &Ops, token: &str, args: &[&str]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let listen = ops.app.base.trim_start_matches("http://");
    std::fs::write(
        dir.path().join("klaxon.toml"),
        config_text(LOG_PROVIDER).replace("127.0.0.1:0", listen),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_klaxon"))
        .arg("--config")
        .arg(dir.path().join("klaxon.toml"))
        .args(args)
        .env("KLAXON_TOKEN", token)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_overrides_and_a_second_person_marks_one_reviewed() {
    let ops = start_with_two_operators().await;
    let (ok, out, err) = cli(&ops, &ops.bob, &["review", "list"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("Nothing waits for review."), "{out}");
    let why = "Intruder reported, no second operator answering";
    let (s, b) = post(
        &ops,
        &ops.alice,
        "/api/v1/alerts",
        json!({"playbook": "reunification", "audience": {"schools": ["S1"]}, "override_reason": why}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let id = b["id"].as_i64().unwrap();
    let (ok, out, err) = cli(&ops, &ops.bob, &["review", "list"]).await;
    assert!(ok, "{err}");
    assert!(
        out.starts_with(&format!("{id}\t")) && out.contains(why) && out.contains("alice"),
        "{out}"
    );
    let id_s = id.to_string();
    let (ok, _, err) = cli(&ops, &ops.alice, &["review", "done", &id_s]).await;
    assert!(!ok, "the sender cannot review");
    assert!(
        err.contains("403") && err.contains("second person"),
        "{err}"
    );
    let (ok, out, err) = cli(
        &ops,
        &ops.bob,
        &["review", "done", &id_s, "--note", "Checked"],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("Alert {id} reviewed by bob.")),
        "{out}"
    );
    let (_, out, _) = cli(&ops, &ops.bob, &["review", "list"]).await;
    assert!(out.contains("Nothing waits for review."), "{out}");
}

/// A routine playbook's own `quiet_hours` mute its approver pages, while a
/// routine playbook without them (and no `[approval] quiet_hours`) pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routine_playbook_s_own_quiet_hours_mute_its_pages() {
    let extra = format!(
        r#"{LOG_PROVIDER}
[approval]
approvers = [ {{ name = "First", phone = "+15125550101" }} ]

[playbooks.newsletter]
title = "Newsletter"
severity = "routine"
channels = ["email"]
quiet_hours = "00:00-24:00"
messages = {{ en = "News. {{{{ message }}}} {{{{ link }}}}" }}

[playbooks.reminder]
title = "Reminder"
severity = "routine"
channels = ["email"]
messages = {{ en = "Reminder. {{{{ message }}}} {{{{ link }}}}" }}
"#
    );
    let app = common::spawn_app_full(
        &extra,
        Path::new(common::FIXTURE),
        klaxon::clock::Clock::system(),
    )
    .await;
    let held = |playbook: &'static str| {
        let app = &app;
        async move {
            let r = app
                .trigger(
                    json!({"playbook": playbook, "audience": {"schools": ["S1"]}, "hold": true}),
                )
                .await;
            assert_eq!(r.status(), 201);
            r.json::<serde_json::Value>().await.unwrap()["id"]
                .as_i64()
                .unwrap()
        }
    };
    // The quiet one is older: each round of the pager looks at it first.
    let quiet = held("newsletter").await;
    let loud = held("reminder").await;
    let pages = |id: i64| {
        app.outbox()
            .into_iter()
            .filter(|m| m["alert_id"] == id && m["delivery_id"] == 0)
            .count()
    };
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while pages(loud) < 2 {
        assert!(
            std::time::Instant::now() < until,
            "the reminder pages nobody"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(pages(quiet), 0, "the newsletter's quiet hours");
    let recorded: i64 = app
        .db()
        .query_row(
            "SELECT count(*) FROM approval_pages WHERE alert_id = ?1",
            [quiet],
            |r| r.get(0),
        )
        .unwrap_or(-1);
    assert_eq!(recorded, 0);
}
