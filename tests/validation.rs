//! Validation before an alert is accepted (issue 12): audiences that name
//! what the SIS does not have, audiences that reach nobody, the operator's
//! words in every language, repeats (Idempotency-Key, duplicates), and the
//! capacity check before the first send. Each runs the real daemon.

mod common;

use common::{LOG_PROVIDER, spawn_app_with};
use serde_json::json;

async fn body(r: reqwest::Response) -> (u16, serde_json::Value) {
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

fn alerts_in_store(app: &common::TestApp) -> i64 {
    app.db()
        .query_row("SELECT count(*) FROM alerts", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn names_the_sis_does_not_have_are_refused_with_the_closest_ones() {
    let app = spawn_app_with(LOG_PROVIDER).await;
    // The defect: grade "K" (the SIS says "KG" or "03") gave 201 with nobody.
    let (s, b) = body(
        app.trigger(json!({"playbook": "lockdown", "audience": {"grades": ["K"]}}))
            .await,
    )
    .await;
    assert_eq!(s, 422, "{b}");
    let e = b["error"].as_str().unwrap();
    assert!(e.contains("grade `K` is not in the SIS"), "{e}");
    assert!(e.contains("grades are") && e.contains('3'), "{e}");

    // An unknown school was a 503 (a server error for a client mistake).
    let (s, b) = body(
        app.trigger(json!({"playbook": "lockdown", "audience": {"schools": ["S3"]}}))
            .await,
    )
    .await;
    assert_eq!(s, 422, "{b}");
    let e = b["error"].as_str().unwrap();
    assert!(
        e.contains("school `S3` is not in the SIS; schools are S1, S2")
            || e.contains("schools are S2, S1"),
        "{e}"
    );

    let (s, b) = body(
        app.trigger(json!({"playbook": "lockdown", "audience": {"classes": ["nope"]}}))
            .await,
    )
    .await;
    assert_eq!(s, 422, "{b}");
    assert!(b["error"].as_str().unwrap().contains("class `nope`"), "{b}");

    let (s, b) = body(
        app.trigger(json!({"playbook": "lockdown", "audience": {"groups": ["bus-99"]}}))
            .await,
    )
    .await;
    assert_eq!(s, 422, "{b}");
    assert!(
        b["error"].as_str().unwrap().contains("group `bus-99`"),
        "{b}"
    );

    // A role that does not exist is a parse error naming the field.
    let (s, b) = body(
        app.trigger(json!({"playbook": "lockdown", "audience": {"roles": ["parent"]}}))
            .await,
    )
    .await;
    assert!((400..500).contains(&s), "{s} {b}");
    assert_eq!(
        alerts_in_store(&app),
        0,
        "nothing stored for a refused trigger"
    );
}

#[tokio::test]
async fn an_audience_that_reaches_nobody_needs_allow_empty() {
    let app = spawn_app_with(LOG_PROVIDER).await;
    // Roosevelt (S2) has a grade-7 student only: grade 3 there is nobody.
    let spec = json!({"schools": ["S2"], "grades": ["03"], "roles": ["guardian"]});
    let (s, b) = body(
        app.trigger(json!({"playbook": "early-dismissal", "audience": spec}))
            .await,
    )
    .await;
    assert_eq!(s, 422, "{b}");
    let e = b["error"].as_str().unwrap();
    assert!(
        e.contains("reaches nobody") && e.contains("allow_empty"),
        "{e}"
    );
    assert_eq!(alerts_in_store(&app), 0);

    let (s, b) = body(
        app.trigger(json!({"playbook": "early-dismissal", "audience": spec, "allow_empty": true}))
            .await,
    )
    .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["recipients"], 0);
}

#[tokio::test]
async fn the_operators_words_reach_every_language_or_are_named_untranslated() {
    let app = spawn_app_with(LOG_PROVIDER).await;
    // The defect: lockdown's templates never showed `message`.
    let (s, b) = body(
        app.trigger(json!({"playbook": "lockdown", "audience": {"schools": ["S1"]}, "message": "Use the north gate."}))
            .await,
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let id = b["id"].as_i64().unwrap();
    let mut untranslated: Vec<&str> = b["untranslated"]
        .as_array()
        .expect("the answer names the languages that get English")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    untranslated.sort();
    assert_eq!(untranslated, vec!["es", "vi"], "{b}");
    assert!(
        b["warning"].as_str().unwrap().contains("not written in"),
        "{b}"
    );
    app.wait_settled(id).await;
    let sent: Vec<serde_json::Value> = app
        .outbox()
        .into_iter()
        .filter(|m| m["alert_id"] == id)
        .collect();
    assert!(sent.iter().any(|m| m["language"] == "es"));
    for m in &sent {
        assert!(
            m["body"].as_str().unwrap().contains("Use the north gate."),
            "every channel and language carries the text: {m}"
        );
    }

    // One text per language: each family gets theirs; only Vietnamese is
    // named untranslated.
    let (s, b) = body(
        app.trigger(json!({
            "playbook": "evacuation", "audience": {"schools": ["S1"]},
            "message": {"en": "Go to the stadium.", "es": "Vayan al estadio.\u{202E}"}
        }))
        .await,
    )
    .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["untranslated"], json!(["vi"]), "{b}");
    let id = b["id"].as_i64().unwrap();
    app.wait_settled(id).await;
    let sent: Vec<serde_json::Value> = app
        .outbox()
        .into_iter()
        .filter(|m| m["alert_id"] == id)
        .collect();
    let spanish: Vec<&serde_json::Value> = sent.iter().filter(|m| m["language"] == "es").collect();
    assert!(!spanish.is_empty());
    for m in spanish {
        let body = m["body"].as_str().unwrap();
        assert!(body.contains("Vayan al estadio."), "{m}");
        assert!(!body.contains('\u{202E}'), "bidi override removed: {m}");
        assert!(!body.contains("Go to the stadium."), "{m}");
    }
    for m in sent
        .iter()
        .filter(|m| m["language"] == "en" || m["language"] == "vi")
    {
        assert!(
            m["body"].as_str().unwrap().contains("Go to the stadium."),
            "{m}"
        );
    }
}

#[tokio::test]
async fn a_playbook_can_require_languages_and_a_template_without_message_refuses_text() {
    let extra = format!(
        r#"{LOG_PROVIDER}
[playbooks.bus-delay]
title = "Bus delay"
severity = "routine"
channels = ["sms"]
message_languages = ["en", "es"]
messages = {{ en = "Bus delay at {{{{ school }}}}. {{{{ message }}}} {{{{ link }}}}", es = "Retraso del autobús en {{{{ school }}}}. {{{{ message }}}} {{{{ link }}}}" }}

[playbooks.fixed]
title = "Fixed"
severity = "routine"
channels = ["sms"]
messages = {{ en = "Fixed text at {{{{ school }}}}. {{{{ link }}}}" }}
"#
    );
    let app = spawn_app_with(&extra).await;
    let (s, b) = body(
        app.trigger(json!({"playbook": "bus-delay", "audience": {"schools": ["S1"]}, "message": "Twenty minutes late."}))
            .await,
    )
    .await;
    assert_eq!(s, 422, "{b}");
    assert!(b["error"].as_str().unwrap().contains("missing: es"), "{b}");
    let (s, b) = body(
        app.trigger(
            json!({"playbook": "bus-delay", "audience": {"schools": ["S1"]},
            "message": {"en": "Twenty minutes late.", "es": "Veinte minutos tarde."}}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 201, "{b}");

    let (s, b) = body(
        app.trigger(
            json!({"playbook": "fixed", "audience": {"schools": ["S1"]}, "message": "Lost words"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 422, "{b}");
    let e = b["error"].as_str().unwrap();
    assert!(
        e.contains("cannot carry a message") && e.contains("en"),
        "{e}"
    );
}

#[tokio::test]
async fn repeats_are_answered_once_and_duplicates_need_confirmation() {
    let app = spawn_app_with(LOG_PROVIDER).await;
    let req = json!({"playbook": "shelter", "audience": {"schools": ["S1"]}, "drill": true,
        "confirm_duplicate": false});
    let send = |key: &'static str, body: serde_json::Value| {
        let r = app
            .http
            .post(format!("{}/api/v1/alerts", app.base))
            .bearer_auth(&app.admin)
            .header("Idempotency-Key", key)
            .json(&body)
            .send();
        async move { body_of(r.await.unwrap()).await }
    };
    async fn body_of(r: reqwest::Response) -> (u16, Option<String>, serde_json::Value) {
        let replayed = r
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap().to_string());
        let s = r.status().as_u16();
        (s, replayed, r.json().await.unwrap())
    }
    let (s1, r1, first) = send("k-1", req.clone()).await;
    assert_eq!((s1, r1), (201, None), "{first}");
    let (s2, r2, again) = send("k-1", req.clone()).await;
    assert_eq!((s2, r2.as_deref()), (201, Some("true")));
    assert_eq!(
        again["id"], first["id"],
        "the first answer, not a second alert"
    );
    let (s3, _, other) = send(
        "k-1",
        json!({"playbook": "shelter", "audience": {"schools": ["S2"]}}),
    )
    .await;
    assert_eq!(s3, 422, "{other}");
    assert_eq!(alerts_in_store(&app), 1);

    // 50 identical triggers without a key: one alert, 49 refusals naming it.
    let mut created = 0;
    for _ in 0..50 {
        let (s, b) = body(app.trigger(req.clone()).await).await;
        match s {
            201 => created += 1,
            409 => assert!(
                b["error"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("alert {}", first["id"])),
                "{b}"
            ),
            _ => panic!("{s} {b}"),
        }
    }
    assert_eq!(created, 0, "the open drill already covers S1");
    assert_eq!(alerts_in_store(&app), 1);
    // Meant: confirmed.
    let mut meant = req.clone();
    meant["confirm_duplicate"] = json!(true);
    let (s, b) = body(app.trigger(meant).await).await;
    assert_eq!(s, 201, "{b}");

    // Lifecycle POSTs honour the key too; a second all-clear answers the first.
    let id = first["id"].as_i64().unwrap();
    app.wait_settled(id).await;
    let all_clear = |key: &'static str| {
        let r = app
            .http
            .post(format!("{}/api/v1/alerts/{id}/all-clear", app.base))
            .bearer_auth(&app.admin)
            .header("Idempotency-Key", key)
            .json(&json!({}))
            .send();
        async move { body_of(r.await.unwrap()).await }
    };
    let (a, _, ac1) = all_clear("ac").await;
    let (b2, replay, ac2) = all_clear("ac").await;
    let (c, replay3, ac3) = all_clear("another").await;
    assert_eq!((a, b2, c), (201, 201, 201));
    assert_eq!(replay.as_deref(), Some("true"));
    assert_eq!(replay3, None);
    assert_eq!(ac1["id"], ac2["id"]);
    assert_eq!(
        ac1["id"], ac3["id"],
        "a second all-clear answers with the first"
    );
    let all_clears: i64 = app
        .db()
        .query_row(
            "SELECT count(*) FROM alerts WHERE kind = 'all-clear'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(all_clears, 1);
}

#[tokio::test]
async fn a_shared_provider_that_cannot_meet_the_deadline_warns_before_the_first_send() {
    // One provider at 1 message/s carries SMS and email: the tiny district's
    // S1 has 4+ SMS and 3+ email deliveries, far more than a 2 s deadline allows.
    let extra = r#"
[[providers]]
name = "slow-shared"
kind = "log"
channels = ["sms", "voice", "email"]
path = "outbox.jsonl"
max_per_second = 1

[playbooks.quick]
title = "Quick"
severity = "emergency"
channels = ["sms", "email"]
notify_within = "2s"
messages = { en = "Quick at {{ school }}. {{ message }} {{ link }}" }
"#;
    let app = spawn_app_with(extra).await;
    let (s, b) = body(
        app.trigger(json!({"playbook": "quick", "audience": {"schools": ["S1"]}, "hold": true}))
            .await,
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let w = b["warning"].as_str().expect("a warning");
    assert!(w.contains("cannot be met"), "{w}");
    assert!(
        w.contains("sms and email share provider `slow-shared`"),
        "{w}"
    );
    assert!(b["estimate_seconds"].as_f64().unwrap() > 2.0, "{b}");
    // Held: nothing was sent, and the warning is already on the alert.
    let id = b["id"].as_i64().unwrap();
    let st = app.status(id).await;
    assert!(
        st["warning"].as_str().unwrap().contains("share provider"),
        "{st}"
    );
    let sent: i64 = app
        .db()
        .query_row(
            "SELECT count(*) FROM deliveries WHERE alert_id = ?1 AND state NOT IN ('held')",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(sent, 0, "the estimate came before anything was released");
}

/// The daemon's log as this test binary's tests write it (plain text).
/// `false` when another subscriber was first (KLAXON_TEST_LOG is set).
fn captured_log() -> (bool, &'static std::sync::Mutex<Vec<u8>>) {
    static LOG: std::sync::OnceLock<(bool, &'static std::sync::Mutex<Vec<u8>>)> =
        std::sync::OnceLock::new();
    *LOG.get_or_init(|| {
        let buf: &'static std::sync::Mutex<Vec<u8>> =
            Box::leak(Box::new(std::sync::Mutex::new(Vec::new())));
        struct W(&'static std::sync::Mutex<Vec<u8>>);
        impl std::io::Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let installed = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || W(buf))
            .try_init();
        (installed.is_ok(), buf)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_alert_that_cannot_meet_the_deadline_is_warned_before_its_first_claim() {
    let (capturing, log) = captured_log();
    // Released at once (no hold): one provider at 1/s carries SMS and email.
    let extra = r#"
[[providers]]
name = "slow-shared"
kind = "log"
channels = ["sms", "voice", "email"]
path = "outbox.jsonl"
max_per_second = 1

[playbooks.quick-released]
title = "Quick"
severity = "emergency"
channels = ["sms", "email"]
notify_within = "2s"
messages = { en = "Quick at {{ school }}. {{ message }} {{ link }}" }
"#;
    let app = spawn_app_with(extra).await;
    // What the alert row held at the moment each delivery was claimed.
    app.db()
        .execute_batch(
            "CREATE TABLE claim_probe (delivery INTEGER, warning TEXT, estimate_ms INTEGER);
             CREATE TRIGGER claim_probe AFTER UPDATE OF state ON deliveries
               WHEN NEW.state = 'sending' AND OLD.state <> 'sending'
             BEGIN
               INSERT INTO claim_probe SELECT NEW.id, warning, estimate_ms FROM alerts WHERE id = NEW.alert_id;
             END;",
        )
        .unwrap();
    let (s, b) = body(
        app.trigger(json!({"playbook": "quick-released", "audience": {"schools": ["S1"]}}))
            .await,
    )
    .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["held"], false, "{b}");
    let id = b["id"].as_i64().unwrap();
    let estimate = b["estimate_seconds"].as_f64().unwrap();
    assert!(estimate > 2.0, "{b}");
    let w = b["warning"].as_str().expect("a warning");
    assert!(w.contains("notify deadline (2 s) cannot be met"), "{w}");
    assert!(
        w.contains("sms and email share provider `slow-shared`"),
        "{w}"
    );
    assert!(w.contains(&format!("take about {estimate:.0} s")), "{w}");
    // What would meet it.
    assert!(w.contains("add a provider for sms or email"), "{w}");
    assert!(w.contains("more Twilio senders"), "{w}");

    // The status shows it, with the estimate stored on the alert.
    let st = app.status(id).await;
    assert_eq!(st["warning"].as_str(), Some(w), "{st}");
    let estimate_ms: Option<i64> = app
        .db()
        .query_row("SELECT estimate_ms FROM alerts WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(estimate_ms, Some((estimate * 1000.0).round() as i64));

    // Every delivery claimed so far was claimed with the warning and the
    // estimate already stored on the alert.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    type Probe = (i64, Option<String>, Option<i64>);
    let probes: Vec<Probe> = loop {
        let probes: Vec<Probe> = app
            .db()
            .prepare("SELECT delivery, warning, estimate_ms FROM claim_probe")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        if !probes.is_empty() {
            break probes;
        }
        assert!(std::time::Instant::now() < until, "nothing was claimed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    for (delivery, warning, at_claim) in &probes {
        assert_eq!(
            warning.as_deref(),
            Some(w),
            "delivery {delivery} was claimed before the warning was stored"
        );
        assert_eq!(
            *at_claim, estimate_ms,
            "delivery {delivery} was claimed before the estimate was stored"
        );
    }

    // The log line.
    if !capturing {
        eprintln!("the log line is not checked: KLAXON_TEST_LOG installed its own subscriber");
        return;
    }
    let text = String::from_utf8_lossy(&log.lock().unwrap()).to_string();
    let line = text
        .lines()
        .find(|l| l.contains("playbook=quick-released"))
        .unwrap_or_else(|| panic!("no log line for the playbook:\n{text}"));
    assert!(
        line.contains("WARN") && line.contains("The deadline cannot be met"),
        "{line}"
    );
    assert!(line.contains("share provider `slow-shared`"), "{line}");
}

#[tokio::test]
async fn an_unknown_role_is_refused_naming_the_closest_roles() {
    // There are three roles, so the closest are all of them: the answer
    // names the value typed and the role meant.
    let app = spawn_app_with(LOG_PROVIDER).await;
    for (typed, closest) in [
        ("guardain", "guardian"),
        ("staf", "staff"),
        ("teacher", "staff"),
    ] {
        let (s, b) = body(
            app.trigger(json!({"playbook": "lockdown", "audience": {"roles": [typed]}}))
                .await,
        )
        .await;
        // A value klaxon does not know, like a school the SIS lacks: 422,
        // before anything is resolved or stored.
        assert_eq!(s, 422, "{typed}: {b}");
        let e = b["error"].as_str().unwrap_or_default().to_string();
        assert!(e.contains(typed), "{typed}: {e}");
        assert!(e.contains(closest), "{typed}: {e}");
    }
    assert_eq!(alerts_in_store(&app), 0);
}
