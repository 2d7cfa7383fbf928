//! The external contract over HTTP: trigger → deliveries → acknowledgement
//! page → status, against the real daemon on a loopback port.

mod common;

use common::{spawn_app, spawn_app_with};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockdown_reaches_everyone_and_acknowledgement_is_idempotent() {
    let app = spawn_app().await;
    let resp = app
        .trigger(json!({"playbook": "lockdown", "audience": {"schools": ["S1"]}}))
        .await;
    assert_eq!(resp.status(), 201);
    let created: serde_json::Value = resp.json().await.unwrap();
    let id = created["id"].as_i64().unwrap();
    // Guardians of S1's students (g1, g2, g3, g4) and S1's staff (t1); g3 has no address.
    assert_eq!(created["recipients"], 5, "{created}");
    assert_eq!(created["unreachable"], 1, "{created}");
    assert_eq!(created["deliveries"], 6, "{created}");
    assert!(created["deadline"].as_str().unwrap().contains('T'));

    let s = app.wait_settled(id).await;
    assert_eq!(s["totals"]["sent"], 6, "{s}");
    assert_eq!(s["deadline_met"], true, "{s}");
    assert_eq!(s["reached"], 4);
    assert_eq!(s["acknowledged"], 0);

    // Each recipient got one link; the Spanish-speaking mother of Ana (and of
    // Carlos, at another school) gets Spanish, naming only the child at S1.
    let outbox = app.outbox();
    assert_eq!(outbox.len(), 6);
    let maria: Vec<_> = outbox
        .iter()
        .filter(|m| m["to"] == "+15555550101")
        .collect();
    assert_eq!(maria.len(), 1);
    assert!(
        maria[0]["body"].as_str().unwrap().contains("CIERRE"),
        "{}",
        maria[0]
    );
    let link = maria[0]["ack_url"].as_str().unwrap();
    let token = link.rsplit('/').next().unwrap();
    assert!(token.len() >= 22, "token carries at least 128 bits");
    let same_person: Vec<_> = outbox.iter().filter(|m| m["ack_url"] == link).collect();
    assert_eq!(
        same_person.len(),
        2,
        "sms and email of one person share the link"
    );

    // GET shows the page and records nothing (mail scanners fetch links).
    let page = app
        .http
        .get(format!("{}/a/{token}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("Ana Garcia"), "lists her child");
    assert!(
        !html.contains("Carlos"),
        "only children at the affected school"
    );
    assert!(html.contains("lang=\"es\""));
    assert_eq!(app.status(id).await["acknowledged"], 0);

    // POST records; a repeat changes nothing.
    for _ in 0..2 {
        let r = app
            .http
            .post(format!("{}/a/{token}", app.base))
            .form(&[("ack", "1")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
    }
    assert_eq!(app.status(id).await["acknowledged"], 1);
    let events: i64 = app
        .db()
        .query_row("SELECT count(*) FROM ack_events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(events, 1, "the repeat wrote nothing");

    // Outstanding: who is not confirmed, and why.
    let out: serde_json::Value = app
        .http
        .get(format!("{}/api/v1/alerts/{id}/outstanding", app.base))
        .bearer_auth(&app.viewer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reasons: Vec<&str> = out
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 4);
    assert!(reasons.contains(&"unreachable"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_token_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let url = format!("{}/api/v1/alerts", app.base);
    let body = json!({"playbook": "lockdown", "audience": {}});
    let none = app.http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let wrong = app
        .http
        .post(&url)
        .bearer_auth("klx_not-a-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let viewer = app
        .http
        .post(&url)
        .bearer_auth(&app.viewer)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(viewer.status(), 403, "a viewer may not trigger");
    let status = app.http.get(format!("{url}/1")).send().await.unwrap();
    assert_eq!(status.status(), 401);
    let alerts: i64 = app
        .db()
        .query_row("SELECT count(*) FROM alerts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(alerts, 0);
    assert!(app.outbox().is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    let app = spawn_app().await;
    let r = app.trigger(json!({"playbook": "alien-invasion"})).await;
    assert_eq!(r.status(), 422);
    let msg = r.json::<serde_json::Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("alien-invasion") && msg.contains("lockdown"),
        "{msg}"
    );
    let r = app
        .trigger(json!({"playbook": "lockdown", "audiense": {}}))
        .await;
    assert_eq!(r.status(), 400);
    let msg = r.json::<serde_json::Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("audiense"), "{msg}");
    let r = app
        .trigger(json!({"playbook": "lockdown", "audience": {"groups": ["nope"]}}))
        .await;
    assert_eq!(r.status(), 422);
    let missing = app.status(999).await;
    assert!(missing["error"].as_str().unwrap().contains("not found"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_district_when_audience_is_empty_and_drill_is_marked() {
    let app = spawn_app().await;
    let created: serde_json::Value = app
        .trigger(json!({"playbook": "lockdown", "audience": {}, "drill": true}))
        .await
        .json()
        .await
        .unwrap();
    // All four guardians plus both teachers.
    assert_eq!(created["recipients"], 6, "{created}");
    let id = created["id"].as_i64().unwrap();
    app.wait_settled(id).await;
    for m in app.outbox() {
        let body = m["body"].as_str().unwrap();
        let marked = ["DRILL", "SIMULACRO", "DIỄN TẬP", "演习"]
            .iter()
            .any(|m| body.starts_with(m));
        assert!(marked, "every message carries the drill marker: {body}");
    }
    let s = app.status(id).await;
    assert_eq!(s["drill"], true);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pickup_choice_can_change_and_the_dashboard_shows_each_students_plan() {
    let app = spawn_app().await;
    let created: serde_json::Value = app
        .trigger(json!({"playbook": "early-dismissal", "audience": {"schools": ["S1"]}, "message": "Power outage."}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(created["recipients"], 4, "guardians only: {created}");
    let id = created["id"].as_i64().unwrap();
    app.wait_settled(id).await;
    let wei = app
        .outbox()
        .into_iter()
        .find(|m| m["to"] == "+15555550102")
        .expect("Wei's sms");
    assert!(wei["body"].as_str().unwrap().contains("Ben Lee"), "{wei}");
    let link = wei["ack_url"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let url = format!("{}/a/{link}", app.base);
    let page = app
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("type=\"radio\"") && page.contains("Send my child home on the bus"));
    assert!(page.contains("Power outage."));

    let bad = app
        .http
        .post(&url)
        .form(&[("choice", "teleport")])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    for choice in ["pickup-self", "bus"] {
        let r = app
            .http
            .post(&url)
            .form(&[("choice", choice)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
    }
    let s = app.status(id).await;
    assert_eq!(s["acknowledged"], 1);
    assert_eq!(s["choices"], json!({"bus": 1}), "{s}");
    let page = app
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("checked>Send my child home on the bus"),
        "the page shows the current answer"
    );

    let dash = app
        .http
        .get(format!("{}/alerts/{id}/pickup", app.base))
        .header("cookie", app.console_cookie(&app.viewer).await)
        .send()
        .await
        .unwrap();
    assert_eq!(dash.status(), 200);
    let dash = dash.text().await.unwrap();
    assert!(
        dash.contains("Ben Lee") && dash.contains("Send my child home on the bus"),
        "pickup plan shown"
    );
    assert!(dash.contains("Dana Nguyen") && dash.contains("no answer yet"));
    let anon = app
        .http
        .get(format!("{}/alerts/{id}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 303, "the dashboard needs a sign-in");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_clear_goes_to_the_same_people_and_cancel_stops_the_rest() {
    let app = spawn_app().await;
    let id = app
        .trigger(json!({"playbook": "shelter", "audience": {"schools": ["S2"]}}))
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let first = app.wait_settled(id).await;
    let clear: serde_json::Value = app
        .http
        .post(format!("{}/api/v1/alerts/{id}/all-clear", app.base))
        .bearer_auth(&app.admin)
        .json(&json!({"message": "Dismissal as normal."}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(clear["recipients"], first["recipients"]);
    let cid = clear["id"].as_i64().unwrap();
    let cs = app.wait_settled(cid).await;
    assert_eq!(cs["parent_id"], id);
    assert_eq!(cs["playbook"], "all-clear");
    let texts: Vec<String> = app
        .outbox()
        .iter()
        .filter(|m| m["alert_id"] == cid)
        .map(|m| m["body"].as_str().unwrap().to_string())
        .collect();
    assert!(
        !texts.is_empty() && texts.iter().all(|t| t.contains("Roosevelt Middle")),
        "{texts:?}"
    );

    // A held alert sends nothing until approved; cancelling it sends nothing at all.
    let held: serde_json::Value = app
        .trigger(json!({"playbook": "weather-closure", "audience": {}, "hold": true}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(held["held"], true);
    assert!(held["deadline"].is_null());
    let hid = held["id"].as_i64().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        app.outbox().iter().all(|m| m["alert_id"] != hid),
        "held alert sent nothing"
    );
    let cancel: serde_json::Value = app
        .http
        .post(format!("{}/api/v1/alerts/{hid}/cancel", app.base))
        .bearer_auth(&app.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cancel["state"], "closed");
    assert_eq!(cancel["closed_reason"], "cancelled");
    assert!(cancel["unsent"].as_i64().unwrap() > 0);
    let again = app
        .http
        .post(format!("{}/api/v1/alerts/{hid}/approve", app.base))
        .bearer_auth(&app.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409, "a cancelled alert cannot be released");

    let held2 = app
        .trigger(
            json!({"playbook": "weather-closure", "audience": {"schools": ["S2"]}, "hold": true}),
        )
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let ok = app
        .http
        .post(format!("{}/api/v1/alerts/{held2}/approve", app.base))
        .bearer_auth(&app.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let s = app.wait_settled(held2).await;
    assert!(s["totals"]["sent"].as_i64().unwrap() > 0);
    let audit: Vec<String> = app
        .db()
        .prepare("SELECT action FROM audit ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for action in ["alert.create", "alert.cancel", "alert.approve"] {
        assert!(
            audit.iter().any(|a| a == action),
            "{action} audited: {audit:?}"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let app = spawn_app().await;
    let h = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 200);
    let r = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = app
        .trigger(json!({"playbook": "lockdown", "audience": {"schools": ["S2"]}}))
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    app.wait_settled(id).await;
    let m = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains(
            "klaxon_alerts_created_total{playbook=\"lockdown\",kind=\"alert\",drill=\"false\"} 1"
        ),
        "{m}"
    );
    assert!(
        m.contains("klaxon_provider_requests_total{provider=\"test-log\",outcome=\"accepted\"}"),
        "{m}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_recipients_are_escalated_by_voice_after_the_ack_deadline() {
    let playbook = r#"
[playbooks.quick]
title = "Quick test"
severity = "emergency"
channels = ["sms", "email"]
roles = ["guardian"]
notify_within = "30s"
ack_within = "1s"
escalate = "voice"
[playbooks.quick.messages]
en = "Test alert for {{ school }}. Confirm: {{ link }}"
"#;
    let app = spawn_app_with(&format!("{}{playbook}", common::LOG_PROVIDER)).await;
    let id = app
        .trigger(json!({"playbook": "quick", "audience": {"schools": ["S1"]}}))
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    app.wait_settled(id).await;
    // Maria confirms; the others with a phone (Wei) get a call after the deadline.
    let maria = app
        .outbox()
        .into_iter()
        .find(|m| m["to"] == "+15555550101")
        .unwrap();
    let token = maria["ack_url"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    app.http
        .post(format!("{}/a/{token}", app.base))
        .form(&[("ack", "1")])
        .send()
        .await
        .unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let calls: Vec<_> = app
            .outbox()
            .into_iter()
            .filter(|m| m["channel"] == "voice")
            .collect();
        if !calls.is_empty() {
            let to: Vec<&str> = calls.iter().map(|c| c["to"].as_str().unwrap()).collect();
            assert_eq!(
                to,
                vec!["+15555550102"],
                "only the unconfirmed guardian with a phone is called"
            );
            break;
        }
        assert!(std::time::Instant::now() < until, "no escalation call");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let s = app.status(id).await;
    assert!(!s["escalated_at"].is_null());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_interrupted_while_its_audience_was_written_is_completed_at_start_up() {
    use klaxon::store::alerts::{self, NewAlert};
    use klaxon::store::tokens::ApiRole;
    // What a crash leaves behind: the alert row and its frozen SIS snapshot,
    // no recipients yet.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("klaxon.toml"),
        common::config_text(common::LOG_PROVIDER),
    )
    .unwrap();
    common::import(dir.path(), std::path::Path::new(common::FIXTURE));
    let admin = common::make_token(dir.path(), ApiRole::Admin).await;
    let viewer = common::make_token(dir.path(), ApiRole::Viewer).await;
    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("snapshots")).unwrap();
    let snap = state.join("snapshots/alert-crashed.db");
    std::fs::hard_link(state.join("sis.db"), &snap).unwrap();
    // A new import after the crash must not change the frozen audience.
    std::fs::remove_file(state.join("sis.db")).unwrap();
    std::fs::copy(&snap, state.join("sis.db")).unwrap();
    let store = klaxon::store::Store::open(&state, false).unwrap();
    let snap_s = snap.display().to_string();
    let id = store
        .write(move |c| {
            alerts::insert(
                c,
                klaxon::store::now_ms(),
                &NewAlert {
                    kind: alerts::AlertKind::Alert,
                    confirm: true,
                    escalate_within_ms: 600_000,
                    playbook: "lockdown".into(),
                    title: "Lockdown".into(),
                    place: "Lincoln Elementary".into(),
                    priority: 0,
                    audience_json: r#"{"schools":["S1"],"roles":["guardian","staff"]}"#.into(),
                    message: None,
                    messages: None,
                    two_person: false,
                    override_reason: None,
                    drill: false,
                    held: false,
                    source: "api".into(),
                    created_by: "test".into(),
                    notify_within_ms: 120_000,
                    ack_within_ms: 900_000,
                    parent_id: None,
                    warning: None,
                    snapshot: Some(snap_s),
                    estimate_ms: None,
                },
            )
        })
        .await
        .unwrap();
    store.close();

    let app = common::start(dir, admin, viewer).await;
    let s = app.wait_settled(id.0).await;
    assert_eq!(s["recipients"], 5, "{s}");
    assert_eq!(s["totals"]["sent"], 6, "{s}");
    assert!(
        !snap.exists(),
        "the snapshot is removed once the alert is complete"
    );
    let audit: i64 = app
        .db()
        .query_row(
            "SELECT count(*) FROM audit WHERE action = 'alert.materialized'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(audit, 1);
    app.stop().await;
}

/// The store keeps each link's SHA-256 only: presenting that hash (from a
/// copy of the database) opens nothing, while the link sent does.
#[tokio::test]
async fn the_stored_hash_of_a_link_is_not_a_link() {
    let app = common::spawn_app().await;
    let r = app
        .trigger(serde_json::json!({"playbook": "lockdown", "audience": {"schools": ["S1"]}}))
        .await;
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    app.wait_settled(id).await;
    let sent = app
        .outbox()
        .into_iter()
        .filter(|m| m["alert_id"] == id)
        .map(|m| m["ack_url"].as_str().unwrap_or_default().to_string())
        .find(|u| !u.is_empty())
        .expect("a link was sent");
    // A link carries its recipient's id in its first 8 bytes.
    let token = sent.rsplit('/').next().unwrap();
    let raw =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, token).unwrap();
    let rid = i64::from_be_bytes(raw[..8].try_into().unwrap());
    let hash: String = app
        .db()
        .query_row("SELECT token FROM recipients WHERE id = ?1", [rid], |r| {
            r.get(0)
        })
        .unwrap();
    // The recipient id (16 hex digits), then the SHA-256.
    assert_eq!(hash.len(), 80);
    assert_eq!(&hash[..16], format!("{rid:016x}"));
    let get = |path: String| {
        let http = app.http.clone();
        async move { http.get(path).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get(format!("{}/a/{hash}", app.base)).await, 404);
    assert_eq!(get(format!("{}/a/{}", app.base, &hash[16..])).await, 404);
    assert_eq!(get(app.local(&sent)).await, 200, "{rid}");
    // A row written by an earlier klaxon keeps the bare SHA-256: its link
    // still opens.
    app.db()
        .execute(
            "UPDATE recipients SET token = substr(token, 17) WHERE id = ?1",
            [rid],
        )
        .unwrap();
    assert_eq!(get(app.local(&sent)).await, 200, "{rid}");
}
