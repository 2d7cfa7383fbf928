//! The alert lifecycle through the real daemon: deadlines on a moved clock,
//! escalation as its own stage, replies landing on the right alert, shared
//! phones, per-student pickup answers, updates, cancel and close.

mod common;
mod support;

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use klaxon::clock::Clock;
use serde_json::json;
use support::twilio_server::TwilioServer;

use common::{LOG_PROVIDER, TestApp, fixture_variant, spawn_app_full};

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "tok-lifecycle";

const MARIA: &str = "+15555550101";
/// Wei Lee's number; in the variant fixture Tam Nguyen shares it.
const SHARED: &str = "+15555550102";

/// Tam Nguyen (Dana's other guardian) shares Wei Lee's phone.
fn shared_phone_fixture() -> tempfile::TempDir {
    fixture_variant(|users| {
        users.replace(
            "g3,active,2026-08-01,true,S1,relative,,,Tam,Nguyen,,,,,,st4,,,vi",
            "g3,active,2026-08-01,true,S1,relative,,,Tam,Nguyen,,,,,(555) 555-0102,st4,,,vi",
        )
    })
}

/// Twilio (loopback, validated against its OpenAPI spec) for SMS and
/// voice, the log provider for email.
async fn twilio_app(export: &Path, clock: Clock) -> (TestApp, TwilioServer, tempfile::TempDir) {
    let tw = TwilioServer::start(SID, TOKEN).await;
    let secrets = tempfile::tempdir().unwrap();
    let tf = secrets.path().join("twilio.token");
    std::fs::write(&tf, TOKEN).unwrap();
    let providers = format!(
        r#"
[[providers]]
name = "twilio"
kind = "twilio"
channels = ["sms", "voice"]
api_base = "{}"
account_sid = "{SID}"
auth_token_file = "{}"
from = ["+15555550100"]
per_sender_per_second = 1000

[[providers]]
name = "mail-log"
kind = "log"
channels = ["email"]
path = "outbox.jsonl"

[delivery]
request_timeout = "2s"
retry_initial = "50ms"
retry_max = "200ms"
"#,
        tw.url(),
        tf.display()
    );
    let app = spawn_app_full(&providers, export, clock).await;
    (app, tw, secrets)
}

fn sign(url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted: Vec<_> = params.to_vec();
    sorted.sort();
    let mut data = url.to_string();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(TOKEN.as_bytes()).unwrap();
    mac.update(data.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// A signed Twilio callback, as Twilio sends it to our public URL.
async fn hook(app: &TestApp, path_and_query: &str, params: &[(&str, &str)]) -> reqwest::Response {
    let public = format!("http://127.0.0.1:9{path_and_query}");
    app.http
        .post(format!("{}{path_and_query}", app.base))
        .header("X-Twilio-Signature", sign(&public, params))
        .form(params)
        .send()
        .await
        .unwrap()
}

async fn sms_reply(app: &TestApp, from: &str, body: &str) -> String {
    let r = hook(app, "/hooks/twilio/sms", &[("From", from), ("Body", body)]).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

async fn create(app: &TestApp, body: serde_json::Value) -> i64 {
    let r = app.trigger(body).await;
    let status = r.status();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{v}");
    v["id"].as_i64().unwrap()
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_is_its_own_stage_and_the_notify_verdict_never_changes() {
    let clock = Clock::system();
    let export = shared_phone_fixture();
    let (app, tw, _s) = twilio_app(export.path(), clock.clone()).await;
    let id = create(
        &app,
        json!({"playbook": "lockdown", "audience": {"schools": ["S1"]}}),
    )
    .await;
    let first = app.wait_settled(id).await;
    assert_eq!(first["state"], "settled");
    assert_eq!(first["deadline_met"], true, "{first}");
    let handed_over = first["handed_over_at"].clone();
    assert!(handed_over.is_i64());
    // Maria confirms; the others stay silent.
    let answer = sms_reply(&app, MARIA, "1").await;
    assert!(answer.contains("Confirmado: Lockdown"), "{answer}");

    // The ack deadline (15 min) passes: the unconfirmed with a phone are called.
    let calls_before = tw.requests().len();
    clock.advance(Duration::from_secs(15 * 60 + 1));
    let s = app
        .wait_status(id, "escalation handed over", |s| {
            s["escalation"]["started_at"].is_i64()
                && s["escalation"]["totals"]["sent"].as_i64().unwrap_or(0) >= 2
        })
        .await;
    assert_eq!(
        s["deadline_met"], true,
        "escalation never touches the verdict: {s}"
    );
    assert_eq!(s["handed_over_at"], handed_over);
    assert_eq!(s["state"], "settled");
    let calls: Vec<String> = tw.requests()[calls_before..]
        .iter()
        .filter_map(|r| r.field("To").map(str::to_string))
        .collect();
    assert!(
        !calls.iter().any(|to| to == MARIA),
        "Maria confirmed: {calls:?}"
    );
    assert!(calls.iter().any(|to| to == SHARED), "{calls:?}");
    assert!(tw.violations().is_empty(), "{:?}", tw.violations());
    let m = metrics(&app).await;
    assert!(
        metric(
            &m,
            "klaxon_escalations_total{channel=\"voice\",drill=\"false\"}"
        ) >= 2.0,
        "{m}"
    );
    assert!(m.contains("klaxon_time_to_handover_seconds_bucket"), "{m}");
    assert!(
        m.contains("klaxon_time_to_confirmation_seconds_count"),
        "{m}"
    );

    // The escalation window (10 min) ends: the alert closes.
    clock.advance(Duration::from_secs(10 * 60 + 1));
    let s = app
        .wait_status(id, "closed", |s| s["state"] == "closed")
        .await;
    assert_eq!(s["closed_reason"], "expired");
    assert_eq!(s["deadline_met"], true);
    // A reply to a closed alert confirms nothing and says so.
    let before = app.status(id).await["acknowledged"].clone();
    let late = sms_reply(&app, SHARED, "1").await;
    assert!(late.contains("Nothing is waiting"), "{late}");
    assert_eq!(app.status(id).await["acknowledged"], before);
    let m = metrics(&app).await;
    assert!(
        metric(
            &m,
            "klaxon_rejected_inputs_total{kind=\"reply-no-open-alert\"}"
        ) >= 1.0,
        "{m}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_calls_are_retried_and_skip_undeliverable_numbers() {
    let clock = Clock::system();
    let export = shared_phone_fixture();
    let (app, tw, _s) = twilio_app(export.path(), clock.clone()).await;
    // Pat Jones's number is not a mobile that exists (21211 on SMS).
    tw.reject_to("+15555550111");
    let id = create(
        &app,
        json!({"playbook": "lockdown", "audience": {"schools": ["S1"]}}),
    )
    .await;
    let s = app.wait_settled(id).await;
    assert_eq!(s["totals"]["undeliverable"], 1, "{s}");
    // The escalation's first call attempts fail with 500: they are retried
    // within the escalation window, not given up at once.
    tw.faults().fail_with_500(2);
    let before = tw.requests().len();
    clock.advance(Duration::from_secs(15 * 60 + 1));
    let s = app
        .wait_status(id, "escalation calls sent after retries", |s| {
            let t = &s["escalation"]["totals"];
            t["sent"].as_i64().unwrap_or(0) >= 1 && t["queued"].is_null() && t["sending"].is_null()
        })
        .await;
    assert!(s["escalation"]["totals"]["failed"].is_null(), "{s}");
    let voice: Vec<String> = tw.requests()[before..]
        .iter()
        .filter(|r| r.field("Twiml").is_some() || r.field("Url").is_some())
        .filter_map(|r| r.field("To").map(str::to_string))
        .collect();
    assert!(
        !voice.iter().any(|to| to == "+15555550111"),
        "an undeliverable number is never called: {voice:?}"
    );
    // Pat's email takes over instead (the next channel).
    let mail_to_pat = app
        .outbox()
        .iter()
        .filter(|m| m["alert_id"] == id && m["to"] == "pat.jones@example.org")
        .count();
    assert!(mail_to_pat >= 1);
    assert_eq!(s["deadline_met"], true);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_land_on_the_newest_open_alert_and_shared_phones_confirm_everyone() {
    let export = shared_phone_fixture();
    let (app, _tw, _s) = twilio_app(export.path(), Clock::system()).await;
    let lockdown = create(
        &app,
        json!({"playbook": "lockdown", "audience": {"schools": ["S1"]}}),
    )
    .await;
    app.wait_settled(lockdown).await;
    let dismissal = create(
        &app,
        json!({"playbook": "early-dismissal", "audience": {"schools": ["S1"]}}),
    )
    .await;
    app.wait_settled(dismissal).await;

    // Two alerts open on Maria's number: "1" confirms the newest.
    let a = sms_reply(&app, MARIA, "1").await;
    assert!(a.contains("Confirmado: Early dismissal"), "{a}");
    assert_eq!(app.status(dismissal).await["acknowledged"], 1);
    assert_eq!(app.status(lockdown).await["acknowledged"], 0);

    // The all-clear of the dismissal closes it; it asks for no confirmation.
    let r = app
        .post(&format!("/api/v1/alerts/{dismissal}/all-clear"), json!({}))
        .await;
    assert_eq!(r.status(), 201);
    let clear: serde_json::Value = r.json().await.unwrap();
    app.wait_settled(clear["id"].as_i64().unwrap()).await;
    // Now "1" lands on the lockdown, not on the all-clear.
    let a = sms_reply(&app, MARIA, "sí").await;
    assert!(a.contains("Confirmado: Lockdown"), "{a}");
    assert_eq!(app.status(lockdown).await["acknowledged"], 1);

    // Wei Lee and Tam Nguyen share one phone: one reply confirms both.
    let a = sms_reply(&app, SHARED, "YES").await;
    assert!(a.contains("Confirmed: Lockdown"), "{a}");
    let s = app.status(lockdown).await;
    assert_eq!(s["acknowledged"], 3, "{s}");

    // A question is never dropped: it is kept with its alert and sender.
    let a = sms_reply(&app, MARIA, "my son has asthma, is he OK?").await;
    assert!(a.contains("Recibimos su mensaje"), "{a}");
    let inbox = app
        .get_json(&format!("/api/v1/alerts/{dismissal}/inbox"))
        .await;
    let msgs: Vec<&serde_json::Value> = inbox
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["kind"] == "message")
        .collect();
    assert_eq!(msgs.len(), 1, "{inbox}");
    assert_eq!(msgs[0]["body"], "my son has asthma, is he OK?");
    assert_eq!(msgs[0]["from_name"], "Maria Garcia");
    assert_eq!(app.status(dismissal).await["inbox"], 1);

    // An unknown number gets no answer and changes nothing.
    let a = sms_reply(&app, "+15555559999", "1").await;
    assert!(!a.contains("<Message>"), "{a}");

    // STOP is recorded and shows in the contactability report.
    let a = sms_reply(&app, SHARED, "STOP").await;
    assert!(a.contains("START"), "{a}");
    let report = app.get_json("/api/v1/reports/contactability").await;
    assert!(
        report
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["code"] == "opt-out" && p["address"] == SHARED),
        "{report}"
    );
    let m = metrics(&app).await;
    assert!(metric(&m, "klaxon_rejected_inputs_total{kind=\"unknown-number\"}") >= 1.0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_voice_key_confirms_and_an_unsigned_one_changes_nothing() {
    let (app, _tw, _s) = twilio_app(Path::new(common::FIXTURE), Clock::system()).await;
    let id = create(
        &app,
        json!({"playbook": "evacuation", "audience": {"schools": ["S1"]}}),
    )
    .await;
    app.wait_settled(id).await;
    let d: i64 = app
        .db()
        .query_row(
            "SELECT id FROM deliveries WHERE alert_id = ?1 AND channel = 'voice' AND address = ?2",
            rusqlite::params![id, MARIA],
            |r| r.get(0),
        )
        .unwrap();
    let path = format!("/hooks/twilio/voice?d={d}");
    let forged = app
        .http
        .post(format!("{}{path}", app.base))
        .header("X-Twilio-Signature", "bm90IGEgc2lnbmF0dXJl")
        .form(&[("Digits", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert_eq!(app.status(id).await["acknowledged"], 0);
    let wrong = hook(&app, &path, &[("Digits", "7")]).await;
    assert!(wrong.text().await.unwrap().contains("<Hangup/>"));
    assert_eq!(app.status(id).await["acknowledged"], 0);
    let ok = hook(&app, &path, &[("Digits", "1"), ("CallSid", "CA1")]).await;
    assert_eq!(ok.status(), 200);
    let twiml = ok.text().await.unwrap();
    assert!(twiml.contains("<Say language=\"es\">Gracias"), "{twiml}");
    let via: String = app
        .db()
        .query_row(
            "SELECT ack_via FROM recipients WHERE alert_id = ?1 AND person_id = 'g1'",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(via, "voice");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_then_tap_and_no_all_clear_for_what_was_never_sent() {
    let app = spawn_app_full(LOG_PROVIDER, Path::new(common::FIXTURE), Clock::system()).await;
    let held = app
        .trigger(json!({"playbook": "lockdown", "audience": {"schools": ["S1"]}, "hold": true}))
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let hid = held["id"].as_i64().unwrap();
    let r = app
        .post(&format!("/api/v1/alerts/{hid}/all-clear"), json!({}))
        .await;
    assert_eq!(r.status(), 409, "an all-clear of a held alert is refused");
    assert!(r.text().await.unwrap().contains("never sent"));

    let id = create(
        &app,
        json!({"playbook": "lockdown", "audience": {"schools": ["S1"]}}),
    )
    .await;
    app.wait_settled(id).await;
    let link = app.link_of(MARIA, id).expect("Maria's link");
    let c1: serde_json::Value = app
        .post(&format!("/api/v1/alerts/{id}/cancel"), json!({}))
        .await
        .json()
        .await
        .unwrap();
    let c2 = app
        .post(&format!("/api/v1/alerts/{id}/cancel"), json!({}))
        .await;
    assert_eq!(c2.status(), 200, "a second cancel answers as the first");
    assert_eq!(c2.json::<serde_json::Value>().await.unwrap(), c1);
    let page = app
        .http
        .get(&link)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Esta alerta fue cancelada"), "{page}");
    assert!(!page.contains("<form"), "no form on a cancelled alert");
    let tap = app
        .http
        .post(&link)
        .form(&[("ack", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(tap.status(), 410);
    assert_eq!(app.status(id).await["acknowledged"], 0);
    let r = app
        .post(&format!("/api/v1/alerts/{id}/all-clear"), json!({}))
        .await;
    assert_eq!(r.status(), 409, "no all-clear for a cancelled alert");
    // A link that is not ours: a polite 404, counted.
    let bogus = format!("{}/a/{}", app.base, "A".repeat(32));
    assert_eq!(app.http.get(&bogus).send().await.unwrap().status(), 404);
    let m = metrics(&app).await;
    assert!(
        metric(
            &m,
            "klaxon_rejected_inputs_total{kind=\"answer-after-close\"}"
        ) >= 1.0
    );
    assert!(metric(&m, "klaxon_rejected_inputs_total{kind=\"unknown-token\"}") >= 1.0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_guardians_choosing_differently_are_both_shown_as_a_conflict() {
    let export = shared_phone_fixture();
    let app = spawn_app_full(LOG_PROVIDER, export.path(), Clock::system()).await;
    let id = create(
        &app,
        json!({"playbook": "early-dismissal", "audience": {"schools": ["S1"]}}),
    )
    .await;
    app.wait_settled(id).await;
    let outbox = app.outbox();
    let link_for = |to: &str, child: &str| {
        outbox
            .iter()
            .find(|m| {
                m["alert_id"] == id && m["to"] == to && m["body"].as_str().unwrap().contains(child)
            })
            .and_then(|m| m["ack_url"].as_str())
            .map(|l| app.local(l))
            .unwrap_or_else(|| panic!("a message to {to} about {child}"))
    };
    let tam = link_for(SHARED, "Dana");
    let linh = link_for("linh.nguyen@example.org", "Dana");
    let post = |link: String, form: Vec<(&'static str, &'static str)>| {
        let http = app.http.clone();
        async move { http.post(link).form(&form).send().await.unwrap() }
    };
    // An unknown choice, and a child who is not on this page: refused.
    let bad = post(tam.clone(), vec![("choice-st4", "teleport")]).await;
    assert_eq!(bad.status(), 422);
    let other = post(linh.clone(), vec![("choice-st1", "bus")]).await;
    assert_eq!(other.status(), 422);
    assert_eq!(app.status(id).await["acknowledged"], 0);

    assert_eq!(
        post(tam.clone(), vec![("choice-st4", "bus")])
            .await
            .status(),
        303
    );
    assert_eq!(
        post(linh.clone(), vec![("choice-st4", "pickup-self")])
            .await
            .status(),
        303
    );
    let s = app.status(id).await;
    assert_eq!(s["conflicts"], 1, "{s}");
    assert_eq!(s["choices"]["bus"], 1);
    assert_eq!(s["choices"]["pickup-self"], 1);

    let plan = app.get_json(&format!("/api/v1/alerts/{id}/pickup")).await;
    let dana = plan
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["student_id"] == "st4")
        .expect("Dana in the plan");
    assert_eq!(dana["conflict"], true);
    let answers: Vec<&str> = dana["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["choice"].as_str().unwrap())
        .collect();
    assert_eq!(answers.len(), 2, "both answers are kept: {dana}");
    assert!(answers.contains(&"bus") && answers.contains(&"pickup-self"));
    let ben = plan
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["student_id"] == "st2")
        .expect("students without an answer are listed too");
    assert!(ben["answers"].as_array().unwrap().is_empty());

    let csv = app
        .http
        .get(format!("{}/api/v1/alerts/{id}/pickup", app.base))
        .bearer_auth(&app.viewer)
        .header("Accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let csv = csv.text().await.unwrap();
    assert_eq!(
        csv.lines()
            .filter(|l| l.starts_with("st4,") && l.contains(",yes,"))
            .count(),
        2,
        "{csv}"
    );
    // Paging: one student per page, with a link to the next.
    let page = app
        .http
        .get(format!("{}/api/v1/alerts/{id}/pickup?limit=1", app.base))
        .bearer_auth(&app.viewer)
        .send()
        .await
        .unwrap();
    let next = page.headers()["link"].to_str().unwrap().to_string();
    assert!(
        next.contains("after=") && next.contains("rel=\"next\""),
        "{next}"
    );
    let dash = app
        .http
        .get(format!("{}/alerts/{id}", app.base))
        .header("cookie", app.console_cookie(&app.viewer).await)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(dash.contains("CONFLICT"), "the dashboard flags it");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_reaches_exactly_the_original_people_and_shows_on_their_page() {
    let app = spawn_app_full(LOG_PROVIDER, Path::new(common::FIXTURE), Clock::system()).await;
    let id = create(
        &app,
        json!({"playbook": "lockdown", "audience": {"schools": ["S2"]}}),
    )
    .await;
    app.wait_settled(id).await;
    let r = app
        .post(
            &format!("/api/v1/alerts/{id}/updates"),
            json!({"message": "Parents may now pick up at the north gate."}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let up: serde_json::Value = r.json().await.unwrap();
    assert_eq!(up["kind"], "update");
    assert_eq!(up["parent_id"], id);
    let uid = up["id"].as_i64().unwrap();
    app.wait_status(uid, "update handed over", |s| s["state"] == "closed")
        .await;
    let outbox = app.outbox();
    let to_of = |a: i64| {
        let mut v: Vec<String> = outbox
            .iter()
            .filter(|m| m["alert_id"] == a)
            .map(|m| m["to"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(to_of(uid), to_of(id), "exactly the original's people");
    let upd = outbox
        .iter()
        .find(|m| m["alert_id"] == uid && m["to"] == MARIA)
        .unwrap();
    assert!(
        upd["body"].as_str().unwrap().contains("north gate"),
        "{upd}"
    );
    let original_link = app.link_of(MARIA, id).unwrap();
    assert_eq!(
        app.local(upd["ack_url"].as_str().unwrap()),
        original_link,
        "same page"
    );
    let page = app
        .http
        .get(&original_link)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Última actualización"), "{page}");
    assert!(page.contains("north gate"));
    // The alert's own words are on the page.
    assert!(page.contains("Estudiantes seguros adentro"), "{page}");
    // An update has no updates of its own, and none after the all-clear.
    let r = app
        .post(
            &format!("/api/v1/alerts/{uid}/updates"),
            json!({"message": "x"}),
        )
        .await;
    assert_eq!(r.status(), 409);
    let r = app
        .post(&format!("/api/v1/alerts/{id}/all-clear"), json!({}))
        .await;
    assert_eq!(r.status(), 201);
    let first_clear: serde_json::Value = r.json().await.unwrap();
    let again: serde_json::Value = app
        .post(&format!("/api/v1/alerts/{id}/all-clear"), json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        again["id"], first_clear["id"],
        "a repeated all-clear is not sent again"
    );
    let r = app
        .post(
            &format!("/api/v1/alerts/{id}/updates"),
            json!({"message": "late"}),
        )
        .await;
    assert_eq!(r.status(), 409, "the all-clear is the last update");
    app.stop().await;
}

/// A synthetic district big enough that writing its audience takes a while.
fn big_export(students: u32) -> tempfile::TempDir {
    let export = tempfile::tempdir().unwrap();
    klaxon::sis::generate(
        export.path(),
        &klaxon::sis::GenerateOptions {
            students,
            seed: 7,
            ..Default::default()
        },
    )
    .unwrap();
    export
}

/// The log provider at a slow, fixed rate: a fan-out takes many seconds.
const SLOW_LOG: &str = r#"
[[providers]]
name = "slow-log"
kind = "log"
channels = ["sms", "voice", "email"]
path = "outbox.jsonl"
max_per_second = 40
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_the_fan_out_for_good_even_across_a_restart() {
    let export = big_export(600);
    let app = spawn_app_full(SLOW_LOG, export.path(), Clock::system()).await;
    let id = create(&app, json!({"playbook": "lockdown", "audience": {}})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c: serde_json::Value = app
        .post(&format!("/api/v1/alerts/{id}/cancel"), json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert!(c["unsent"].as_i64().unwrap() > 100, "{c}");
    let at_cancel = app.outbox().len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = app.outbox().len();
    // Rows claimed before the cancel (half a second of work per lane at
    // 40/s) are dropped before their request leaves: only a send already
    // past that check, at most one per lane, may still land.
    assert!(after - at_cancel <= 3, "{at_cancel} → {after}");
    let dropped: i64 = app
        .db()
        .query_row(
            "SELECT count(*) FROM deliveries WHERE alert_id = ?1 AND state = 'cancelled'
               AND error = 'the alert was cancelled before this was sent'",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    assert!(dropped > 0, "claimed rows were dropped, not sent");
    let (dir, admin, viewer) = app.stop().await;
    let app = common::start(dir, admin, viewer).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(app.outbox().len(), after, "nothing is sent after a restart");
    let pending: i64 = app
        .db()
        .query_row(
            "SELECT count(*) FROM deliveries WHERE alert_id = ?1 AND state IN ('queued', 'sending', 'held')",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(pending, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_does_not_abandon_the_alert() {
    let export = big_export(1500);
    let app = spawn_app_full(LOG_PROVIDER, export.path(), Clock::system()).await;
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(30))
        .build()
        .unwrap();
    let r = quick
        .post(format!("{}/api/v1/alerts", app.base))
        .bearer_auth(&app.admin)
        .json(&json!({"playbook": "lockdown", "audience": {}}))
        .send()
        .await;
    assert!(r.is_err(), "the client gave up before the answer");
    // The alert is completed anyway, while the daemon runs.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let alert = loop {
        let list = app.get_json("/api/v1/alerts").await;
        if let Some(a) = list.as_array().unwrap().first()
            && a["materialized"] == true
        {
            break a.clone();
        }
        assert!(std::time::Instant::now() < until, "never completed: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let sis = rusqlite::Connection::open(app.path().join("state/sis.db")).unwrap();
    let spec = klaxon::audience::AudienceSpec {
        roles: vec![klaxon::domain::Role::Guardian, klaxon::domain::Role::Staff],
        ..Default::default()
    };
    let expected = klaxon::audience::resolve(&sis, &spec, &[])
        .unwrap()
        .recipients
        .len() as i64;
    assert_eq!(alert["recipients"], expected);
    let snapshots = std::fs::read_dir(app.path().join("state/snapshots"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(
        snapshots, 0,
        "the snapshot goes once the audience is written"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_all_clear_during_materialization_reaches_the_whole_audience() {
    let export = big_export(2500);
    let app = spawn_app_full(LOG_PROVIDER, export.path(), Clock::system()).await;
    let base = app.base.clone();
    let admin = app.admin.clone();
    let http = app.http.clone();
    let creating = tokio::spawn(async move {
        http.post(format!("{base}/api/v1/alerts"))
            .bearer_auth(&admin)
            .json(&json!({"playbook": "lockdown", "audience": {}}))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    });
    // Catch the alert while its audience is still being written.
    let id = loop {
        let list = app.get_json("/api/v1/alerts").await;
        if let Some(a) = list.as_array().unwrap().first() {
            break a["id"].as_i64().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let r = app
        .post(&format!("/api/v1/alerts/{id}/all-clear"), json!({}))
        .await;
    assert_eq!(r.status(), 201);
    let clear: serde_json::Value = r.json().await.unwrap();
    let created = creating.await.unwrap();
    let cid = clear["id"].as_i64().unwrap();
    app.wait_status(cid, "all-clear handed over", |s| s["state"] == "closed")
        .await;
    let reached_by = |alert: i64| -> i64 {
        app.db()
            .query_row(
                "SELECT count(DISTINCT recipient_id) FROM deliveries WHERE alert_id = ?1",
                [alert],
                |r| r.get(0),
            )
            .unwrap()
    };
    let original = reached_by(id);
    assert_eq!(
        original,
        created["recipients"].as_i64().unwrap() - created["unreachable"].as_i64().unwrap()
    );
    assert_eq!(
        reached_by(cid),
        original,
        "every reachable recipient gets the all-clear"
    );
    app.stop().await;
}
