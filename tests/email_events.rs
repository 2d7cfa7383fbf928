//! Email events after hand-over, end to end: the daemon sends through the
//! loopback SendGrid, then SendGrid's Event Webhook (ECDSA P-256 signatures
//! made here with a key pair generated for the test) moves the deliveries.

mod common;
mod support;

use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{TestApp, config_text, import, make_token, start};
use klaxon::store::tokens::ApiRole;
use serde_json::json;
use support::sendgrid_server::SendGridServer;

const EMAIL_PLAYBOOK: &str = r#"
[playbooks.email-only]
title = "Lockdown"
severity = "emergency"
channels = ["email"]
roles = ["guardian", "staff"]
[playbooks.email-only.messages]
en = "LOCKDOWN at {{ school }}. Confirm: {{ link }}"
"#;

struct Setup {
    app: TestApp,
    sendgrid: SendGridServer,
    key: EcdsaKeyPair,
}

async fn setup() -> Setup {
    let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
    let public = STANDARD.encode(key.public_key().as_der().unwrap().as_ref());
    let sendgrid = SendGridServer::start("SG.key").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sendgrid.key"), "SG.key").unwrap();
    // The key from a file, with PEM armour, as an operator may paste it.
    std::fs::write(
        dir.path().join("events.pem"),
        format!("-----BEGIN PUBLIC KEY-----\n{public}\n-----END PUBLIC KEY-----\n"),
    )
    .unwrap();
    let providers = format!(
        r#"
[[providers]]
name = "sendgrid"
kind = "sendgrid"
channels = ["email"]
api_base = "{}"
api_key_file = "sendgrid.key"
from = "Alerts <alerts@example-isd.org>"
event_public_key_file = "events.pem"
"#,
        sendgrid.url()
    );
    std::fs::write(
        dir.path().join("klaxon.toml"),
        config_text(&format!("{providers}{EMAIL_PLAYBOOK}")),
    )
    .unwrap();
    import(dir.path(), std::path::Path::new(common::FIXTURE));
    let admin = make_token(dir.path(), ApiRole::Admin).await;
    let viewer = make_token(dir.path(), ApiRole::Viewer).await;
    let app = start(dir, admin, viewer).await;
    Setup { app, sendgrid, key }
}

fn now_secs() -> i64 {
    klaxon::store::now_ms() / 1000
}

fn sign(key: &EcdsaKeyPair, ts: &str, body: &str) -> String {
    let mut m = ts.as_bytes().to_vec();
    m.extend_from_slice(body.as_bytes());
    STANDARD.encode(key.sign(&SystemRandom::new(), &m).unwrap().as_ref())
}

async fn post_events(app: &TestApp, ts: &str, sig: Option<&str>, body: &str) -> u16 {
    let mut r = app
        .http
        .post(format!("{}/hooks/sendgrid/events", app.base))
        .header("content-type", "application/json")
        .header("X-Twilio-Email-Event-Webhook-Timestamp", ts);
    if let Some(sig) = sig {
        r = r.header("X-Twilio-Email-Event-Webhook-Signature", sig);
    }
    r.body(body.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// (delivery id, address, X-Message-Id) of each email SendGrid accepted.
fn sent(sg: &SendGridServer) -> Vec<(i64, String, String)> {
    let mut v: Vec<_> = sg
        .sent()
        .into_iter()
        .map(|m| {
            let id = m.body["custom_args"]["delivery_id"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            let to = m.body["personalizations"][0]["to"][0]["email"]
                .as_str()
                .unwrap()
                .to_string();
            (id, to, m.message_id)
        })
        .collect();
    v.sort();
    v
}

fn states(app: &TestApp) -> Vec<(i64, String, Option<String>, Option<String>)> {
    let db = app.db();
    let mut q = db
        .prepare("SELECT id, state, error_code, error FROM deliveries WHERE channel = 'email' ORDER BY id")
        .unwrap();
    q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

async fn metrics(app: &TestApp) -> String {
    app.http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn send_alert(s: &Setup) -> Vec<(i64, String, String)> {
    let r = s
        .app
        .trigger(json!({"playbook": "email-only", "audience": {}}))
        .await;
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    s.app.wait_settled(id).await;
    let sent = sent(&s.sendgrid);
    assert!(sent.len() >= 3, "need three emails, got {sent:?}");
    sent
}

#[tokio::test]
async fn signed_events_move_deliveries_and_feed_the_contactability_report() {
    let s = setup().await;
    let sent = send_alert(&s).await;
    let (bounced, delivered, spam) = (&sent[0], &sent[1], &sent[2]);
    let body = json!([
        {"event": "processed", "delivery_id": bounced.0.to_string(), "sg_message_id": format!("{}.filter0001", bounced.2)},
        {"event": "bounce", "type": "bounce", "status": "5.1.1", "reason": "550 5.1.1 mailbox unavailable",
         "delivery_id": bounced.0.to_string(), "sg_message_id": format!("{}.filter0001.1.2", bounced.2), "email": bounced.1},
        {"event": "delivered", "delivery_id": delivered.0.to_string(), "sg_message_id": format!("{}.filter0002", delivered.2)},
        {"event": "spamreport", "delivery_id": spam.0.to_string(), "sg_message_id": spam.2},
        {"event": "delivered", "delivery_id": "999999", "sg_message_id": "nobody.filter"},
        // Right delivery, another message's id: not applied.
        {"event": "bounce", "type": "bounce", "delivery_id": delivered.0.to_string(), "sg_message_id": "other-message.filter"}
    ])
    .to_string();
    let ts = now_secs().to_string();
    assert_eq!(
        post_events(&s.app, &ts, Some(&sign(&s.key, &ts, &body)), &body).await,
        200
    );

    let st = states(&s.app);
    let find = |id: i64| st.iter().find(|r| r.0 == id).unwrap().clone();
    let b = find(bounced.0);
    assert_eq!(b.1, "undeliverable");
    assert_eq!(b.2.as_deref(), Some("bounce"));
    assert_eq!(b.3.as_deref(), Some("5.1.1 550 5.1.1 mailbox unavailable"));
    assert_eq!(find(delivered.0).1, "delivered");
    assert_eq!(find(spam.0).1, "delivered");

    let report = s.app.get_json("/api/v1/reports/contactability").await;
    let rows = report.as_array().unwrap();
    let row = |addr: &str| rows.iter().find(|r| r["address"] == addr).cloned();
    assert_eq!(row(&bounced.1).expect("bounce reported")["code"], "bounce");
    assert_eq!(
        row(&spam.1).expect("complaint reported")["code"],
        "spam-report"
    );
    assert!(row(&delivered.1).is_none(), "{report}");

    let m = metrics(&s.app).await;
    for line in [
        r#"klaxon_email_events_total{source="sendgrid",event="undeliverable",outcome="applied"} 1"#,
        r#"klaxon_email_events_total{source="sendgrid",event="delivered",outcome="unknown"} 1"#,
        r#"klaxon_email_events_total{source="sendgrid",event="undeliverable",outcome="unknown"} 1"#,
        r#"klaxon_email_events_total{source="sendgrid",event="other",outcome="ignored"} 1"#,
    ] {
        assert!(m.contains(line), "{line} missing from:\n{m}");
    }
    // The same POST again (SendGrid retries) changes nothing more.
    assert_eq!(
        post_events(&s.app, &ts, Some(&sign(&s.key, &ts, &body)), &body).await,
        200
    );
    assert_eq!(states(&s.app), st);
}

#[tokio::test]
async fn a_dropped_event_marks_the_delivery_undeliverable_with_the_reason() {
    let s = setup().await;
    let sent = send_alert(&s).await;
    let before = states(&s.app);
    let dropped = &sent[1];
    // SendGrid drops a message it will not try (an address on its bounce
    // or unsubscribe list, invalid SMTPAPI header, ...): no `type`, no status.
    let body = json!([
        {"event": "dropped", "reason": "Bounced Address", "email": dropped.1,
         "delivery_id": dropped.0.to_string(), "sg_message_id": format!("{}.filter0003", dropped.2),
         "timestamp": now_secs()}
    ])
    .to_string();
    let ts = now_secs().to_string();
    assert_eq!(
        post_events(&s.app, &ts, Some(&sign(&s.key, &ts, &body)), &body).await,
        200
    );
    let after = states(&s.app);
    for (b, a) in before.iter().zip(&after) {
        if a.0 == dropped.0 {
            assert_eq!(b.1, "sent", "{b:?}");
            assert_eq!(a.1, "undeliverable", "{a:?}");
            assert_eq!(a.2.as_deref(), Some("dropped"), "{a:?}");
            assert_eq!(a.3.as_deref(), Some("Bounced Address"), "{a:?}");
        } else {
            assert_eq!(a, b, "only the dropped delivery moves");
        }
    }
    let report = s.app.get_json("/api/v1/reports/contactability").await;
    let row = report
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["address"] == dropped.1.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{} not in {report}", dropped.1));
    assert_eq!(row["code"], "dropped", "{row}");
    let m = metrics(&s.app).await;
    let line =
        r#"klaxon_email_events_total{source="sendgrid",event="undeliverable",outcome="applied"} 1"#;
    assert!(m.contains(line), "{line} missing from:\n{m}");
}

#[tokio::test]
async fn bad_or_stale_signatures_are_refused_with_nothing_changed() {
    let s = setup().await;
    let sent = send_alert(&s).await;
    let before = states(&s.app);
    assert!(before.iter().all(|r| r.1 == "sent"), "{before:?}");
    let body = json!([{"event": "bounce", "type": "bounce", "delivery_id": sent[0].0.to_string()}])
        .to_string();
    let ts = now_secs().to_string();

    // Signed by someone else's key.
    let other = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
    assert_eq!(
        post_events(&s.app, &ts, Some(&sign(&other, &ts, &body)), &body).await,
        403
    );
    // Our key, but the body was changed after signing.
    let sig = sign(&s.key, &ts, &body);
    let tampered = body.replace("bounce\"}", "bounce\" }");
    assert_eq!(post_events(&s.app, &ts, Some(&sig), &tampered).await, 403);
    // No signature at all.
    assert_eq!(post_events(&s.app, &ts, None, &body).await, 401);
    // Properly signed, but ten minutes old (a replay).
    let old = (now_secs() - 600).to_string();
    assert_eq!(
        post_events(&s.app, &old, Some(&sign(&s.key, &old, &body)), &body).await,
        403
    );

    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(states(&s.app), before);
    let m = metrics(&s.app).await;
    for line in [
        r#"klaxon_http_auth_failures_total{reason="sendgrid-signature"} 2"#,
        r#"klaxon_http_auth_failures_total{reason="sendgrid-unsigned"} 1"#,
        r#"klaxon_http_auth_failures_total{reason="sendgrid-stale"} 1"#,
    ] {
        assert!(m.contains(line), "{line} missing from:\n{m}");
    }
    assert!(!m.contains("klaxon_email_events_total{"), "{m}");
}

#[test]
fn a_bad_event_key_is_a_config_error_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sendgrid.key"), "SG.key").unwrap();
    let text = config_text(
        r#"
[[providers]]
name = "sendgrid"
kind = "sendgrid"
channels = ["email"]
api_key_file = "sendgrid.key"
from = "Alerts <alerts@example-isd.org>"
event_public_key = "aGVsbG8="

[[providers]]
name = "sendgrid-2"
kind = "sendgrid"
channels = ["email"]
api_key_file = "sendgrid.key"
from = "Alerts <alerts@example-isd.org>"
event_public_key_file = "missing.pub"
"#,
    );
    std::fs::write(dir.path().join("klaxon.toml"), text).unwrap();
    let config = klaxon::config::Config::load(&dir.path().join("klaxon.toml")).unwrap();
    let issues = klaxon::app::build_providers(&config)
        .err()
        .expect("refused");
    let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
    assert!(
        keys.contains(&"providers[0].event_public_key"),
        "{issues:?}"
    );
    assert!(
        keys.contains(&"providers[1].event_public_key_file"),
        "{issues:?}"
    );
    let msg = issues
        .iter()
        .map(|i| i.message.clone())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(msg.contains("P-256"), "{msg}");
    assert!(msg.contains("missing.pub"), "{msg}");
}
