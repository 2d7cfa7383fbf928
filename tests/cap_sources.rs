//! The other trigger sources: the signed webhook (JSON and CAP bodies; bad
//! signatures, stale timestamps, replays and disallowed playbooks refused
//! with nothing recorded) and the CAP drop folder (handled, then archived
//! with its outcome).

mod common;

use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

const SENDER: &str = "eoc@county.example.gov";

fn cap(id: &str) -> String {
    cap_with(id, &jiff::Timestamp::now().to_string(), "SPW", "Alert", "")
}

/// A CAP message with this SAME event code, type and references.
fn cap_with(id: &str, sent: &str, code: &str, msg_type: &str, references: &str) -> String {
    let now = jiff::Timestamp::now();
    let expires = now + jiff::SignedDuration::from_hours(2);
    format!(
        r#"<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{id}</identifier><sender>{SENDER}</sender><sent>{sent}</sent>
  <status>Actual</status><msgType>{msg_type}</msgType><scope>Public</scope>{references}
  <info><event>County warning</event>
    <urgency>Immediate</urgency><severity>Extreme</severity><certainty>Observed</certainty>
    <eventCode><valueName>SAME</valueName><value>{code}</value></eventCode>
    <expires>{expires}</expires>
    <area><areaDesc>Example County</areaDesc>
      <geocode><valueName>SAME</valueName><value>048453</value></geocode></area>
  </info>
</alert>"#
    )
}

const EXTRA: &str = r#"
[webhooks.panic]
secret_file = "panic.secret"
playbooks = ["lockdown"]

[webhooks.county-eoc]
secret_file = "eoc.secret"
playbooks = []
accept_cap = true

[[rules]]
name = "county-shelter"
event_codes = ["SPW"]
zones = ["048453"]
playbook = "shelter"
approval = "auto"

[[rules]]
name = "county-evacuation"
event_codes = ["EVI"]
zones = ["048453"]
playbook = "evacuation"
approval = "manual"

[triggers]
watch_dir = "incoming"
watch_interval = "100ms"
"#;

fn sign(secret: &str, ts: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{ts}.{body}").as_bytes());
    let bytes = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn now_s() -> i64 {
    jiff::Timestamp::now().as_second()
}

async fn post(
    app: &common::TestApp,
    source: &str,
    ts: i64,
    sig: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let r = app
        .http
        .post(format!("{}/hooks/trigger/{source}", app.base))
        .header("X-Klaxon-Timestamp", ts.to_string())
        .header("X-Klaxon-Signature", sig)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

fn alert_sources(app: &common::TestApp) -> Vec<(String, String)> {
    let db = app.db();
    let mut st = db
        .prepare("SELECT playbook, source FROM alerts ORDER BY id")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhook_triggers_and_refusals() {
    let app = common::spawn_app_with(&format!("{}{EXTRA}", common::LOG_PROVIDER)).await;
    std::fs::write(app.path().join("panic.secret"), "panic-secret-123\n").unwrap();
    std::fs::write(app.path().join("eoc.secret"), "eoc-secret-456").unwrap();
    let body = r#"{"playbook":"lockdown","audience":{"schools":["S1"]},"message":"Panic button, room 12"}"#;

    // A bad signature, a stale timestamp, a missing header, an unknown
    // source, a playbook not allowed, CAP from a JSON-only source: refused.
    let ts = now_s();
    let (s, _) = post(&app, "panic", ts, &sign("wrong", ts, body), body).await;
    assert_eq!(s, 401);
    let old = ts - 301;
    let (s, v) = post(
        &app,
        "panic",
        old,
        &sign("panic-secret-123", old, body),
        body,
    )
    .await;
    assert_eq!(s, 401);
    assert!(v["error"].as_str().unwrap().contains("5 minutes"), "{v}");
    let r = app
        .http
        .post(format!("{}/hooks/trigger/panic", app.base))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (s, _) = post(&app, "nobody", ts, &sign("x", ts, body), body).await;
    assert_eq!(s, 404);
    let evac = body.replace("lockdown", "evacuation");
    let (s, v) = post(
        &app,
        "panic",
        ts,
        &sign("panic-secret-123", ts, &evac),
        &evac,
    )
    .await;
    assert_eq!(s, 403);
    assert!(v["error"].as_str().unwrap().contains("evacuation"), "{v}");
    let doc = cap("X-1");
    let (s, _) = post(&app, "panic", ts, &sign("panic-secret-123", ts, &doc), &doc).await;
    assert_eq!(s, 403);
    assert!(alert_sources(&app).is_empty(), "refusals record nothing");

    // Properly signed: the lockdown starts; the same request again is a replay.
    let sig = sign("panic-secret-123", ts, body);
    let (s, v) = post(&app, "panic", ts, &sig, body).await;
    assert_eq!(s, 201, "{v}");
    assert!(v["recipients"].as_i64().unwrap() > 0, "{v}");
    let (s, v) = post(&app, "panic", ts, &sig, body).await;
    assert_eq!(s, 401);
    assert!(v["error"].as_str().unwrap().contains("already used"), "{v}");
    assert_eq!(
        alert_sources(&app),
        vec![("lockdown".to_string(), "webhook:panic".to_string())]
    );

    // A CAP document from the county: through the rules, once.
    let ts = now_s();
    let (s, v) = post(
        &app,
        "county-eoc",
        ts,
        &sign("eoc-secret-456", ts, &doc),
        &doc,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["handled"][0]["outcome"], "sent", "{v}");
    let ts2 = ts + 1;
    let (s, v) = post(
        &app,
        "county-eoc",
        ts2,
        &sign("eoc-secret-456", ts2, &doc),
        &doc,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["handled"][0]["outcome"], "duplicate", "{v}");
    let list = alert_sources(&app);
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[1], ("shelter".into(), format!("cap:{SENDER}:X-1")));

    // A held evacuation whose warning is then cancelled: withdrawn, never sent.
    let sent = jiff::Timestamp::now().to_string();
    let evi = cap_with("X-2", &sent, "EVI", "Alert", "");
    let ts = now_s();
    let (s, v) = post(
        &app,
        "county-eoc",
        ts,
        &sign("eoc-secret-456", ts, &evi),
        &evi,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["handled"][0]["outcome"], "held", "{v}");
    let held = v["handled"][0]["alert_id"].as_i64().unwrap();
    let cancel = cap_with(
        "X-3",
        &jiff::Timestamp::now().to_string(),
        "EVI",
        "Cancel",
        &format!("<references>{SENDER},X-2,{sent}</references>"),
    );
    let ts = now_s() + 2;
    let (s, v) = post(
        &app,
        "county-eoc",
        ts,
        &sign("eoc-secret-456", ts, &cancel),
        &cancel,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["handled"][0]["outcome"], "recorded", "{v}");
    assert!(
        v["handled"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("withdrawn"),
        "{v}"
    );
    let state: String = app
        .db()
        .query_row(
            "SELECT state || ':' || coalesce(closed_reason, '') FROM alerts WHERE id = ?1",
            [held],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(state, "closed:cancelled");
    assert_eq!(alert_sources(&app).len(), 3, "the cancel sends nothing");

    // A held evacuation whose warning expires before anyone approves it: withdrawn.
    let mut short = cap_with(
        "X-4",
        &jiff::Timestamp::now().to_string(),
        "EVI",
        "Alert",
        "",
    );
    let (a, b) = (
        short.find("<expires>").unwrap(),
        short.find("</expires>").unwrap(),
    );
    let soon = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(2);
    short.replace_range(a + "<expires>".len()..b, &soon.to_string());
    let ts = now_s() + 3;
    let (s, v) = post(
        &app,
        "county-eoc",
        ts,
        &sign("eoc-secret-456", ts, &short),
        &short,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["handled"][0]["outcome"], "held", "{v}");
    let held = v["handled"][0]["alert_id"].as_i64().unwrap();
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let (state, by): (String, String) = app
            .db()
            .query_row(
                "SELECT a.state || coalesce(':' || a.closed_reason, ''), coalesce((SELECT actor FROM audit WHERE alert_id = a.id AND action = 'alert.cancel'), '') FROM alerts a WHERE a.id = ?1",
                [held],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        if state == "closed:cancelled" {
            assert_eq!(by, "cap-expired");
            break;
        }
        assert_eq!(state, "held");
        assert!(
            Instant::now() < until,
            "the expired held alert was not withdrawn"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let m = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in [
        "bad-signature",
        "stale",
        "unsigned",
        "playbook-not-allowed",
        "cap-not-allowed",
        "replay",
    ] {
        assert!(
            m.contains(&format!("reason=\"{reason}\"")),
            "no counter for {reason}:\n{m}"
        );
    }
    assert!(
        m.contains("klaxon_webhook_refusals_total{source=\"unknown\",reason=\"unknown-source\"} 1")
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drop_folder_handles_cap_files_and_archives_them_with_their_outcome() {
    let app = common::spawn_app_with(&format!("{}{EXTRA}", common::LOG_PROVIDER)).await;
    let incoming = app.path().join("incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    std::fs::write(incoming.join("eoc-1.xml"), cap("D-1")).unwrap();
    std::fs::write(incoming.join("broken.xml"), "<alert><identifier>").unwrap();
    std::fs::write(incoming.join("notes.txt"), "not CAP, not touched").unwrap();
    let archive = incoming.join("archive");
    let until = Instant::now() + Duration::from_secs(20);
    let reports = loop {
        let reports: Vec<String> = std::fs::read_dir(&archive)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".outcome.json"))
                    .collect()
            })
            .unwrap_or_default();
        if reports.len() == 2 {
            break reports;
        }
        assert!(Instant::now() < until, "not archived: {reports:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let read = |suffix: &str| -> serde_json::Value {
        let name = reports.iter().find(|n| n.ends_with(suffix)).unwrap();
        serde_json::from_str(&std::fs::read_to_string(archive.join(name)).unwrap()).unwrap()
    };
    let good = read("eoc-1.xml.outcome.json");
    assert_eq!(good["alerts"][0]["outcome"], "sent", "{good}");
    let bad = read("broken.xml.outcome.json");
    assert!(
        bad["error"]
            .as_str()
            .unwrap()
            .contains("cannot be understood"),
        "{bad}"
    );
    assert!(reports.iter().any(|n| n.contains("failed-broken.xml")));
    assert!(!incoming.join("eoc-1.xml").exists() && !incoming.join("broken.xml").exists());
    assert!(incoming.join("notes.txt").exists());
    assert_eq!(
        alert_sources(&app),
        vec![("shelter".to_string(), format!("cap:{SENDER}:D-1"))]
    );
    app.stop().await;
}

/// A CAP message in English and Spanish (`<info>` per language, as IPAWS
/// carries them): each family gets the text built from the `<info>` in
/// their language, and Vietnamese families (no `<info>` of theirs) the
/// English one.
#[tokio::test]
async fn a_bilingual_cap_message_reaches_each_family_in_its_language() {
    let app = common::spawn_app_with(&format!("{}{EXTRA}", common::LOG_PROVIDER)).await;
    let now = jiff::Timestamp::now();
    let expires = now + jiff::SignedDuration::from_hours(2);
    let info = |lang: &str, event: &str, area: &str| {
        format!(
            r#"<info><language>{lang}</language><event>{event}</event>
    <urgency>Immediate</urgency><severity>Extreme</severity><certainty>Observed</certainty>
    <eventCode><valueName>SAME</valueName><value>SPW</value></eventCode>
    <expires>{expires}</expires>
    <area><areaDesc>{area}</areaDesc>
      <geocode><valueName>SAME</valueName><value>048453</value></geocode></area>
  </info>"#
        )
    };
    let doc = format!(
        r#"<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>BI-1</identifier><sender>{SENDER}</sender><sent>{now}</sent>
  <status>Actual</status><msgType>Alert</msgType><scope>Public</scope>
  {}
  {}
</alert>"#,
        info("en-US", "Shelter in place warning", "Example County"),
        info(
            "es-US",
            "Aviso de refugio en el lugar",
            "Condado de Ejemplo"
        ),
    );
    let incoming = app.path().join("incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    std::fs::write(incoming.join("bilingual.xml"), doc).unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    let id = loop {
        let id: Option<i64> = app
            .db()
            .query_row("SELECT max(id) FROM alerts", [], |r| r.get(0))
            .unwrap();
        if let Some(id) = id {
            break id;
        }
        assert!(Instant::now() < until, "no alert from the drop folder");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    app.wait_settled(id).await;
    let sent: Vec<serde_json::Value> = app
        .outbox()
        .into_iter()
        .filter(|m| m["alert_id"] == id)
        .collect();
    let by_lang = |lang: &str| -> Vec<String> {
        sent.iter()
            .filter(|m| m["language"] == lang)
            .map(|m| m["body"].as_str().unwrap().to_string())
            .collect()
    };
    let (es, en, vi) = (by_lang("es"), by_lang("en"), by_lang("vi"));
    assert!(
        !es.is_empty() && !en.is_empty() && !vi.is_empty(),
        "{sent:?}"
    );
    for b in &es {
        assert!(
            b.contains("Aviso de refugio en el lugar para Condado de Ejemplo"),
            "{b}"
        );
        assert!(!b.contains("Shelter in place warning"), "{b}");
    }
    for b in en.iter().chain(&vi) {
        assert!(
            b.contains("Shelter in place warning for Example County"),
            "{b}"
        );
    }
    app.stop().await;
}
