//! CAP rules end to end, on the real daemon: per-school targeting from the
//! polygon of a real NWS warning (only the families of the school inside it
//! are reached), and a rule with `approval = "manual"` holding its alert
//! until an operator approves it.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/cap");

/// Replaces the text of every `<tag>` in `doc` with `f(old text)`.
fn retime(doc: &str, tag: &str, f: impl Fn(&str) -> String) -> String {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = String::new();
    let mut rest = doc;
    while let Some(at) = rest.find(&open) {
        let start = at + open.len();
        let end = start + rest[start..].find(&close).unwrap();
        out.push_str(&rest[..start]);
        out.push_str(&f(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The shared NWS Severe Thunderstorm Warning for Calhoun County, IL (2012),
/// its times moved so that it was sent a minute ago. Its polygon covers
/// Jerseyville (39.02, -90.66), not Carrollton (39.30, -90.41).
fn thunderstorm_now() -> String {
    let doc = std::fs::read_to_string(format!(
        "{DATA}/nws/cap11/nws-severe-thunderstorm-warning-IL-2012-03-15.xml"
    ))
    .unwrap();
    let sent: jiff::Timestamp = "2012-03-15T22:08:00-05:00".parse().unwrap();
    let by = (jiff::Timestamp::now() - jiff::SignedDuration::from_mins(1)).duration_since(sent);
    // 22 minutes in force would be enough; the test must not race expiry.
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
    let moved = |t: &str| (t.trim().parse::<jiff::Timestamp>().unwrap() + by).to_string();
    let doc = retime(&doc, "sent", moved);
    let doc = retime(&doc, "effective", moved);
    retime(&doc, "expires", |_| expires.to_string())
}

/// Writes `doc` into the daemon's drop folder and returns the alert it
/// started, once the daemon has recorded the message.
async fn drop_and_wait(app: &common::TestApp, name: &str, doc: &str) -> (i64, String) {
    let incoming = app.path().join("incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    std::fs::write(incoming.join(name), doc).unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let found: Option<(Option<i64>, String)> = app
            .db()
            .query_row(
                "SELECT alert_id, outcome FROM cap_messages WHERE source = 'watch-folder' AND outcome <> 'pending'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .ok();
        if let Some((id, outcome)) = found {
            let id = id.unwrap_or_else(|| panic!("no alert: the message was {outcome}"));
            return (id, outcome);
        }
        assert!(
            Instant::now() < until,
            "the daemon did not act on {name} (archive: {:?})",
            std::fs::read_dir(incoming.join("archive"))
                .map(|d| d
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name())
                    .collect::<Vec<_>>())
                .ok()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Person ids of the recipients of `id` with at least one delivery.
fn reached(app: &common::TestApp, id: i64) -> BTreeSet<String> {
    let db = app.db();
    let mut st = db
        .prepare(
            "SELECT DISTINCT r.person_id FROM deliveries d JOIN recipients r ON r.id = d.recipient_id WHERE d.alert_id = ?1",
        )
        .unwrap();
    st.query_map([id], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

const DROP_FOLDER: &str = r#"
[triggers]
watch_dir = "incoming"
watch_interval = "100ms"
"#;

/// Roosevelt Middle (S2) stands inside the warning's polygon; Lincoln
/// Elementary (S1) lies outside it and in a zone the warning does not list.
/// The alert reaches the families of S2's students only: Maria Garcia (for
/// Carlos, at S2), not the families whose children are only at S1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_nws_polygon_reaches_only_the_families_of_the_school_inside_it() {
    let app = common::spawn_app_with(&format!(
        r#"{}{DROP_FOLDER}
[[rules]]
name = "storm-shelter"
events = ["Severe Thunderstorm Warning"]
zones = ["ILC013"]
playbook = "shelter"
approval = "auto"

[schools."S1"]
zones = ["ILC083"]
location = [39.30, -90.41]

[schools."S2"]
location = [39.02, -90.66]
"#,
        common::LOG_PROVIDER
    ))
    .await;
    let (id, outcome) = drop_and_wait(&app, "svr.xml", &thunderstorm_now()).await;
    assert_eq!(outcome, "sent");
    app.wait_settled(id).await;

    // The audience was S2, and only S2's children are in the alert.
    let audience: String = app
        .db()
        .query_row("SELECT audience FROM alerts WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap();
    let audience: serde_json::Value = serde_json::from_str(&audience).unwrap();
    assert_eq!(audience["schools"], serde_json::json!(["S2"]), "{audience}");
    let db = app.db();
    let mut st = db
        .prepare("SELECT DISTINCT student_id || '@' || school_id FROM alert_students WHERE alert_id = ?1")
        .unwrap();
    let students: Vec<String> = st
        .query_map([id], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(students, vec!["st3@S2"]);

    // Deliveries went to S2's people; none to a family or teacher of S1.
    let people = reached(&app, id);
    assert!(people.contains("g1"), "Carlos's mother: {people:?}");
    for outside in ["g2", "g3", "g4", "t1"] {
        assert!(!people.contains(outside), "{outside} is at S1: {people:?}");
    }
    let sent: Vec<serde_json::Value> = app
        .outbox()
        .into_iter()
        .filter(|m| m["alert_id"] == id)
        .collect();
    assert!(!sent.is_empty());
    for m in &sent {
        let to = m["to"].as_str().unwrap();
        // Wei Lee's phone and Linh Nguyen's email: S1 families.
        assert!(
            !to.ends_with("5550102") && !to.to_lowercase().starts_with("linh."),
            "{m}"
        );
    }
    let body = sent[0]["body"].as_str().unwrap();
    assert!(
        body.contains("Severe Thunderstorm Warning for Calhoun"),
        "{body}"
    );
    app.stop().await;
}

/// A message for `approval = "manual"`: held, visible as held in the
/// status, nothing sent; `POST /api/v1/alerts/{id}/approve` releases it and
/// the deliveries go out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_rule_holds_the_alert_until_an_operator_approves_it() {
    let app = common::spawn_app_with(&format!(
        r#"{}{DROP_FOLDER}
[[rules]]
name = "storm-shelter"
events = ["Severe Thunderstorm Warning"]
zones = ["ILC013"]
playbook = "shelter"
approval = "manual"
"#,
        common::LOG_PROVIDER
    ))
    .await;
    let (id, outcome) = drop_and_wait(&app, "svr.xml", &thunderstorm_now()).await;
    assert_eq!(outcome, "held");
    let status = app.status(id).await;
    assert_eq!(status["state"], "held", "{status}");
    let list = app.get_json("/api/v1/alerts").await;
    let listed = list
        .as_array()
        .unwrap_or_else(|| panic!("{list}"))
        .iter()
        .find(|a| a["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(listed["state"], "held", "{listed}");
    let handed_over = |app: &common::TestApp| -> i64 {
        app.db()
            .query_row(
                "SELECT count(*) FROM deliveries WHERE alert_id = ?1 AND state NOT IN ('held', 'queued')",
                [id],
                |r| r.get(0),
            )
            .unwrap()
    };
    // Held: nothing leaves while it waits (the engine polls the queue often).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(handed_over(&app), 0);
    assert!(app.outbox().iter().all(|m| m["alert_id"] != id));

    let r = app
        .post(
            &format!("/api/v1/alerts/{id}/approve"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let st = app.wait_settled(id).await;
    assert_eq!(st["approved_by"], "test", "{st}");
    assert_ne!(st["state"], "held", "{st}");
    assert!(handed_over(&app) > 0);
    let sent = app
        .outbox()
        .into_iter()
        .filter(|m| m["alert_id"] == id)
        .count();
    assert!(sent > 0, "the approved alert went out");
    app.stop().await;
}
