//! The delivery engine end to end: the daemon sends through the loopback
//! Twilio (every request checked against Twilio's OpenAPI spec), retries
//! transient faults, never retries permanent ones, fails over to a secondary
//! provider, honours rate limits and takes signed status callbacks.

mod common;
mod support;

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use common::{TestApp, config_text, import, make_token, start};
use hmac::{KeyInit, Mac};
use klaxon::store::tokens::ApiRole;
use serde_json::json;
use support::twilio_server::TwilioServer;

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const SID2: &str = "ACfedcba9876543210fedcba9876543210";

fn twilio_section(
    name: &str,
    sid: &str,
    url: &str,
    token_file: &Path,
    from: &str,
    rate: Option<f64>,
) -> String {
    // One sender number: its own 1/s default would pace everything; a test
    // sets the limit it means explicitly.
    let rate = match rate {
        Some(r) => format!("max_per_second = {r}\nper_sender_per_second = {r}\n"),
        None => "per_sender_per_second = 1000\n".to_string(),
    };
    format!(
        r#"
[[providers]]
name = "{name}"
kind = "twilio"
channels = ["sms", "voice"]
api_base = "{url}"
account_sid = "{sid}"
auth_token_file = "{}"
from = ["{from}"]
{rate}
"#,
        token_file.display()
    )
}

const SMS_ONLY: &str = r#"
[delivery]
request_timeout = "1s"
retry_initial = "50ms"
retry_max = "300ms"
breaker_failures = 2
breaker_cooldown = "300ms"

[playbooks.sms-only]
title = "Lockdown"
severity = "emergency"
channels = ["sms"]
roles = ["guardian", "staff"]
escalate = "voice"
[playbooks.sms-only.messages]
en = "LOCKDOWN at {{ school }}. Confirm: {{ link }}"
"#;

async fn app_with(providers: &str, export: Option<&Path>) -> TestApp {
    app_with_settings(providers, SMS_ONLY, export).await
}

/// `app_with`, with `settings` (delivery and playbooks) in place of `SMS_ONLY`.
async fn app_with_settings(providers: &str, settings: &str, export: Option<&Path>) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("klaxon.toml"),
        config_text(&format!("{providers}{settings}")),
    )
    .unwrap();
    import(dir.path(), export.unwrap_or(Path::new(common::FIXTURE)));
    let admin = make_token(dir.path(), ApiRole::Admin).await;
    let viewer = make_token(dir.path(), ApiRole::Viewer).await;
    start(dir, admin, viewer).await
}

/// A synthetic OneRoster export of `students` students, in a temporary folder.
fn generated_export(students: u32, seed: u64) -> tempfile::TempDir {
    let export = tempfile::tempdir().unwrap();
    klaxon::sis::generate(
        export.path(),
        &klaxon::sis::GenerateOptions {
            students,
            seed,
            ..Default::default()
        },
    )
    .unwrap();
    export
}

fn token_file(dir: &Path, name: &str, token: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, token).unwrap();
    p
}

async fn trigger_sms(app: &TestApp, audience: serde_json::Value) -> i64 {
    let r = app
        .trigger(json!({"playbook": "sms-only", "audience": audience}))
        .await;
    assert_eq!(r.status(), 201);
    r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap()
}

fn sign(token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted: Vec<_> = params.to_vec();
    sorted.sort();
    let mut data = url.to_string();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(data.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_goes_out_through_twilio_and_signed_callbacks_update_state() {
    let tw = TwilioServer::start(SID, "tok-primary").await;
    let secrets = tempfile::tempdir().unwrap();
    let tf = token_file(secrets.path(), "primary", "tok-primary");
    let app = app_with(
        &twilio_section("twilio-main", SID, &tw.url(), &tf, "+15555550100", None),
        None,
    )
    .await;
    let id = trigger_sms(&app, json!({"schools": ["S1"]})).await;
    let s = app.wait_settled(id).await;
    assert_eq!(s["totals"]["sent"], 3, "{s}");
    let reqs = tw.requests();
    assert_eq!(reqs.len(), 3);
    assert!(tw.violations().is_empty(), "{:?}", tw.violations());
    let mut to: Vec<&str> = reqs.iter().map(|r| r.field("To").unwrap()).collect();
    to.sort();
    assert_eq!(to, vec!["+15555550101", "+15555550102", "+15555550111"]);
    for r in &reqs {
        assert_eq!(r.field("From"), Some("+15555550100"));
        let cb = r.field("StatusCallback").unwrap();
        assert!(
            cb.starts_with("http://127.0.0.1:9/hooks/twilio/status?d="),
            "{cb}"
        );
        assert!(r.field("Body").unwrap().contains("/a/"));
    }

    // A signed "delivered" callback moves the delivery forward.
    let r0 = &reqs[0];
    let cb = r0.field("StatusCallback").unwrap().to_string();
    let path = cb.trim_start_matches("http://127.0.0.1:9").to_string();
    let delivered = [
        ("MessageSid", r0.sid.as_str()),
        ("MessageStatus", "delivered"),
    ];
    let post = |params: Vec<(&'static str, String)>, sig: Option<String>| {
        let mut req = app.http.post(format!("{}{path}", app.base)).form(&params);
        if let Some(sig) = sig {
            req = req.header("X-Twilio-Signature", sig);
        }
        req.send()
    };
    let owned = |p: &[(&'static str, &str)]| {
        p.iter()
            .map(|(k, v)| (*k, v.to_string()))
            .collect::<Vec<_>>()
    };
    // No signature, or a wrong one: 403 and nothing changes.
    assert_eq!(post(owned(&delivered), None).await.unwrap().status(), 403);
    let bad = sign("not-the-token", &cb, &delivered);
    assert_eq!(
        post(owned(&delivered), Some(bad)).await.unwrap().status(),
        403
    );
    assert_eq!(
        app.status(id).await["totals"]["delivered"],
        serde_json::Value::Null
    );
    let good = sign("tok-primary", &cb, &delivered);
    assert_eq!(
        post(owned(&delivered), Some(good)).await.unwrap().status(),
        204
    );
    assert_eq!(app.status(id).await["totals"]["delivered"], 1);
    // A late "sent" never overwrites "delivered".
    let late = [("MessageSid", r0.sid.as_str()), ("MessageStatus", "sent")];
    let sig = sign("tok-primary", &cb, &late);
    assert_eq!(post(owned(&late), Some(sig)).await.unwrap().status(), 204);
    assert_eq!(app.status(id).await["totals"]["delivered"], 1);

    // Replying "1" by SMS confirms.
    let from = r0.field("To").unwrap().to_string();
    let url = "http://127.0.0.1:9/hooks/twilio/sms";
    let reply = [
        ("From", from.as_str()),
        ("Body", " 1 "),
        ("MessageSid", "SM0000000000000000000000000000reply"),
    ];
    let sig = sign("tok-primary", url, &reply);
    let r = app
        .http
        .post(format!("{}/hooks/twilio/sms", app.base))
        .header("X-Twilio-Signature", sig)
        .form(&owned(&reply))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("<Message>"));
    assert_eq!(app.status(id).await["acknowledged"], 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_are_retried_and_permanent_ones_are_not() {
    let tw = TwilioServer::start(SID, "tok").await;
    tw.faults().fail_with_500(2);
    tw.faults().fail_with_429(1, 1);
    tw.faults().drop_connections(1);
    tw.reject_to("+15555550102");
    let secrets = tempfile::tempdir().unwrap();
    let tf = token_file(secrets.path(), "t", "tok");
    let app = app_with(
        &twilio_section("twilio-main", SID, &tw.url(), &tf, "+15555550100", None),
        None,
    )
    .await;
    let id = trigger_sms(&app, json!({"schools": ["S1"]})).await;
    let s = app.wait_settled(id).await;
    assert_eq!(s["totals"]["sent"], 2, "{s}");
    assert_eq!(s["totals"]["undeliverable"], 1, "{s}");
    assert!(
        tw.arrivals() >= 3 + 4,
        "the faulted requests were retried: {}",
        tw.arrivals()
    );
    assert!(tw.violations().is_empty(), "{:?}", tw.violations());
    // The invalid number was tried once, never again, and is reported.
    let tries = tw
        .requests()
        .iter()
        .filter(|r| r.field("To") == Some("+15555550102"))
        .count();
    assert_eq!(tries, 0, "rejected requests are not recorded as accepted");
    let (state, code): (String, String) = app
        .db()
        .query_row(
            "SELECT state, error_code FROM deliveries WHERE address = '+15555550102' AND channel = 'sms'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((state.as_str(), code.as_str()), ("undeliverable", "21211"));
    let report: serde_json::Value = app
        .http
        .get(format!("{}/api/v1/reports/contactability", app.base))
        .bearer_auth(&app.viewer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = report.as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["address"] == "+15555550102" && r["code"] == "21211"),
        "{report}"
    );
    // Wei's only address failed, and a call to the same number would fail
    // too: nothing else was queued for him.
    let others: i64 = app
        .db()
        .query_row(
            "SELECT count(*) FROM deliveries WHERE address = '+15555550102'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(others, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_is_down_fails_over_to_the_secondary() {
    let primary = TwilioServer::start(SID, "tok1").await;
    let secondary = TwilioServer::start(SID2, "tok2").await;
    primary.faults().set_down(true);
    let secrets = tempfile::tempdir().unwrap();
    let t1 = token_file(secrets.path(), "t1", "tok1");
    let t2 = token_file(secrets.path(), "t2", "tok2");
    let providers = format!(
        "{}{}",
        twilio_section("primary", SID, &primary.url(), &t1, "+15555550100", None),
        twilio_section(
            "secondary",
            SID2,
            &secondary.url(),
            &t2,
            "+15555550199",
            None
        )
    );
    let app = app_with(&providers, None).await;
    let id = trigger_sms(&app, json!({})).await;
    let s = app.wait_settled(id).await;
    // g1, g2 and t1 have phones; t2 has none and g3 nothing at all.
    assert_eq!(s["totals"]["sent"], 3, "every sms handed over: {s}");
    assert_eq!(secondary.requests().len(), 3);
    assert!(primary.requests().is_empty());
    assert!(secondary.violations().is_empty());
    let via: Vec<String> = app
        .db()
        .prepare("SELECT DISTINCT provider FROM deliveries WHERE state = 'sent'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(via, vec!["secondary".to_string()]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_holds_in_every_one_second_window() {
    let export = generated_export(120, 7);
    let tw = TwilioServer::start(SID, "tok").await;
    let secrets = tempfile::tempdir().unwrap();
    let tf = token_file(secrets.path(), "t", "tok");
    let rate = 25.0;
    // A request that outlives `request_timeout` is retried, and the provider
    // may already have taken it: a second text. The 1 s of the other tests
    // can pass on a loaded two-core machine; this test is about the pace.
    let settings = SMS_ONLY.replace("request_timeout = \"1s\"", "request_timeout = \"10s\"");
    assert!(settings.contains("\"10s\""));
    let app = app_with_settings(
        &twilio_section(
            "twilio-main",
            SID,
            &tw.url(),
            &tf,
            "+15555550100",
            Some(rate),
        ),
        &settings,
        Some(export.path()),
    )
    .await;
    let id = trigger_sms(&app, json!({})).await;
    let s = app.wait_settled(id).await;
    let sent = s["totals"]["sent"].as_i64().unwrap();
    assert!(sent > 60, "enough messages to measure: {s}");
    let requests = tw.requests();
    let times: Vec<_> = requests.iter().map(|r| r.at).collect();
    // Seen twice in loaded full-suite runs with a 1 s time-out (121
    // requests, 120 sent): name what was sent more than once, and its rows.
    let mut per_to: std::collections::BTreeMap<String, usize> = Default::default();
    for r in &requests {
        *per_to
            .entry(r.field("To").unwrap_or("?").to_string())
            .or_default() += 1;
    }
    per_to.retain(|_, n| *n > 1);
    let rows: Vec<(String, String, i64, i64)> = app
        .db()
        .prepare(
            "SELECT address, state, attempts, recipient_id FROM deliveries
             WHERE address IN (SELECT value FROM json_each(?1)) ORDER BY address",
        )
        .unwrap()
        .query_map(
            [serde_json::to_string(&per_to.keys().collect::<Vec<_>>()).unwrap()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        times.len() as i64,
        sent,
        "sent more than once: {per_to:?}; their rows: {rows:?}"
    );
    assert_eq!(tw.arrivals() as i64, sent, "zero 429s, zero retries");
    // Any window of one second holds at most `rate` requests.
    let mut worst = 0;
    for (i, t) in times.iter().enumerate() {
        let n = times[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < Duration::from_secs(1))
            .count();
        worst = worst.max(n);
    }
    assert!(
        worst as f64 <= rate,
        "{worst} requests in one second, limit {rate}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_provider_times_out_and_the_secondary_takes_over() {
    let slow = TwilioServer::start(SID, "tok1").await;
    let backup = TwilioServer::start(SID2, "tok2").await;
    slow.faults().set_delay(Duration::from_secs(5));
    let secrets = tempfile::tempdir().unwrap();
    let t1 = token_file(secrets.path(), "t1", "tok1");
    let t2 = token_file(secrets.path(), "t2", "tok2");
    let providers = format!(
        "{}{}",
        twilio_section("slow", SID, &slow.url(), &t1, "+15555550100", None),
        twilio_section("backup", SID2, &backup.url(), &t2, "+15555550199", None)
    );
    let app = app_with(&providers, None).await;
    let started = std::time::Instant::now();
    let id = trigger_sms(&app, json!({"schools": ["S1"]})).await;
    let s = app.wait_settled(id).await;
    assert_eq!(s["totals"]["sent"], 3, "{s}");
    assert_eq!(backup.requests().len(), 3);
    assert!(
        slow.requests().len() < 3,
        "the slow provider did not carry the alert"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "failover within the request time-out, not the provider's delay: {:?}",
        started.elapsed()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emergency_goes_ahead_of_routine_messages_already_queued() {
    let export = generated_export(60, 5);
    let tw = TwilioServer::start(SID, "tok").await;
    let secrets = tempfile::tempdir().unwrap();
    let tf = token_file(secrets.path(), "t", "tok");
    let routine = r#"
[playbooks.newsletter]
title = "Newsletter"
severity = "routine"
channels = ["sms"]
roles = ["guardian"]
notify_within = "1h"
[playbooks.newsletter.messages]
en = "Newsletter: {{ link }}"
"#;
    let app = app_with(
        &format!(
            "{}{routine}",
            twilio_section(
                "twilio-main",
                SID,
                &tw.url(),
                &tf,
                "+15555550100",
                Some(20.0)
            )
        ),
        Some(export.path()),
    )
    .await;
    let r = app
        .trigger(json!({"playbook": "newsletter", "audience": {}}))
        .await;
    assert_eq!(r.status(), 201);
    let routine_id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let emergency = trigger_sms(&app, json!({})).await;
    app.wait_settled(emergency).await;
    // The order the provider saw: routine had started; once the emergency
    // arrived, only the routine texts already in flight (about half a
    // second's worth) went before the emergency's last one.
    let order: String = tw
        .requests()
        .iter()
        .map(|r| {
            if r.field("Body").unwrap().starts_with("LOCKDOWN") {
                'E'
            } else {
                'r'
            }
        })
        .collect();
    let first_e = order.find('E').unwrap();
    let last_e = order.rfind('E').unwrap();
    let interleaved = order[first_e..last_e].matches('r').count();
    assert!(first_e > 0, "routine had started: {order}");
    assert!(
        interleaved <= 10,
        "{interleaved} routine texts overtook the emergency: {order}"
    );
    // And the routine alert still finishes: deprioritised, not dropped.
    let r = app.wait_settled(routine_id).await;
    let newsletters = tw
        .requests()
        .iter()
        .filter(|q| q.field("Body").unwrap().starts_with("Newsletter"))
        .count() as i64;
    assert_eq!(r["totals"]["sent"].as_i64(), Some(newsletters), "{r}");
    assert!(
        r["totals"]["queued"].is_null() && r["totals"]["sending"].is_null(),
        "{r}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_puts_rows_claimed_ahead_back_in_the_queue() {
    // Two sends in flight, each answered after 1.5 s: the lane claims two
    // more ahead of them, which are not sent when the daemon stops.
    let export = generated_export(40, 9);
    let tw = TwilioServer::start(SID, "tok").await;
    tw.faults().set_delay(Duration::from_millis(1500));
    let secrets = tempfile::tempdir().unwrap();
    let tf = token_file(secrets.path(), "t", "tok");
    let dir = tempfile::tempdir().unwrap();
    // A messaging service and no `max_per_second`: a lane without a rate
    // limit, the kind that claims ahead.
    let provider = twilio_section("twilio-main", SID, &tw.url(), &tf, "+15555550100", None)
        .replace(
            "from = [\"+15555550100\"]",
            "messaging_service_sid = \"MG0123456789abcdef0123456789abcdef\"",
        )
        .replace("channels = [\"sms\", \"voice\"]", "channels = [\"sms\"]");
    assert!(provider.contains("messaging_service_sid"));
    let config = format!(
        "{}{}",
        provider,
        SMS_ONLY
            .replace(
                "[delivery]\nrequest_timeout = \"1s\"",
                "[delivery]\nconcurrency = 2\nrequest_timeout = \"5s\""
            )
            .replace("escalate = \"voice\"\n", "")
    );
    assert!(config.contains("concurrency = 2"));
    std::fs::write(dir.path().join("klaxon.toml"), config_text(&config)).unwrap();
    import(dir.path(), export.path());
    let admin = make_token(dir.path(), ApiRole::Admin).await;
    let viewer = make_token(dir.path(), ApiRole::Viewer).await;
    let app = start(dir, admin, viewer).await;
    let id = trigger_sms(&app, json!({})).await;
    let claimed = || -> i64 {
        app.db()
            .query_row(
                "SELECT count(*) FROM deliveries WHERE alert_id = ?1 AND state = 'sending'",
                [id],
                |r| r.get(0),
            )
            .unwrap()
    };
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while claimed() < 4 {
        assert!(
            std::time::Instant::now() < until,
            "the lane never claimed ahead"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (dir, _, _) = app.stop().await;
    let db = rusqlite::Connection::open(dir.path().join("state/klaxon.db")).unwrap();
    let count = |state: &str| -> i64 {
        db.query_row(
            "SELECT count(*) FROM deliveries WHERE alert_id = ?1 AND state = ?2",
            rusqlite::params![id, state],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(
        count("sending"),
        0,
        "nothing stays claimed after a clean stop"
    );
    let sent = count("sent");
    assert_eq!(
        sent as usize,
        tw.requests().len(),
        "what went out is recorded, and only that"
    );
    let total: i64 = db
        .query_row(
            "SELECT count(*) FROM deliveries WHERE alert_id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    assert!(total > sent + 2, "{sent} of {total} sent");
    assert_eq!(count("queued"), total - sent, "the rest waits in the queue");
}
