//! CAP feeds end to end: a loopback HTTP server plays two feeds carrying the
//! same messages, moving Test → Alert → the same Alert again, across a
//! daemon restart, then Update, then Cancel; then it fails (500, garbage).
//! Exactly the expected alerts are created; conditional GET headers are sent.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

const SENDER: &str = "w-nws.webmaster@noaa.gov";

#[derive(Default)]
struct Served {
    body: String,
    etag: String,
    status: u16,
}

/// (path, If-None-Match, If-Modified-Since) of one request.
type Request = (String, Option<String>, Option<String>);

#[derive(Default)]
struct FeedServer {
    served: Mutex<Served>,
    /// (path, If-None-Match, If-Modified-Since) of every request.
    requests: Mutex<Vec<Request>>,
}

impl FeedServer {
    fn set(&self, body: String, etag: &str) {
        *self.served.lock().unwrap() = Served {
            body,
            etag: etag.into(),
            status: 200,
        };
    }

    fn fail(&self, status: u16, body: &str) {
        let mut s = self.served.lock().unwrap();
        s.status = status;
        s.body = body.into();
        s.etag = format!("\"broken-{status}\"");
    }
}

async fn serve(State(s): State<Arc<FeedServer>>, uri: Uri, headers: HeaderMap) -> Response {
    let h = |n: header::HeaderName| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let inm = h(header::IF_NONE_MATCH);
    s.requests.lock().unwrap().push((
        uri.path().to_string(),
        inm.clone(),
        h(header::IF_MODIFIED_SINCE),
    ));
    let served = s.served.lock().unwrap();
    if served.status != 200 {
        return (
            StatusCode::from_u16(served.status).unwrap(),
            served.body.clone(),
        )
            .into_response();
    }
    if inm.as_deref() == Some(served.etag.as_str()) {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    (
        [
            (header::ETAG, served.etag.clone()),
            (
                header::LAST_MODIFIED,
                "Mon, 23 Nov 2026 04:00:00 GMT".into(),
            ),
            (header::CONTENT_TYPE, "application/cap+xml".into()),
        ],
        served.body.clone(),
    )
        .into_response()
}

/// A CAP 1.2 message sent `sent` (RFC 3339), in force for two hours from now.
fn cap(id: &str, sent: &str, status: &str, msg_type: &str, references: Option<&str>) -> String {
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(2);
    let refs = references
        .map(|r| format!("<references>{r}</references>"))
        .unwrap_or_default();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{id}</identifier><sender>{SENDER}</sender><sent>{sent}</sent>
  <status>{status}</status><msgType>{msg_type}</msgType><scope>Public</scope>{refs}
  <info>
    <language>en-US</language><category>Met</category><event>Winter Storm Warning</event>
    <urgency>Expected</urgency><severity>Severe</severity><certainty>Likely</certainty>
    <eventCode><valueName>SAME</valueName><value>WSW</value></eventCode>
    <expires>{expires}</expires>
    <headline>Winter Storm Warning until tomorrow noon</headline>
    <area><areaDesc>Travis County</areaDesc>
      <geocode><valueName>UGC</valueName><value>TXZ192</value></geocode>
      <geocode><valueName>UGC</valueName><value>TXZ213</value></geocode>
    </area>
  </info>
</alert>"#
    )
}

fn extra(addr: std::net::SocketAddr) -> String {
    format!(
        r#"{}
[[feeds]]
name = "nws-a"
kind = "cap"
url = "http://{addr}/a"
interval = "200ms"
user_agent = "klaxon-test (it@example-isd.org)"

[[feeds]]
name = "mirror-b"
kind = "cap"
url = "http://{addr}/b"
interval = "200ms"

[[rules]]
name = "winter-storm-closure"
events = ["Winter Storm Warning"]
zones = ["TXZ213"]
min_severity = "Severe"
playbook = "weather-closure"
approval = "auto"
on_update = "ignore"
on_cancel = "notify"
"#,
        common::LOG_PROVIDER
    )
}

/// (id, playbook, source, parent_id) of every alert.
fn alerts(app: &common::TestApp) -> Vec<(i64, String, String, Option<i64>)> {
    let db = app.db();
    let mut st = db
        .prepare("SELECT id, playbook, source, parent_id FROM alerts ORDER BY id")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Waits until both feeds have polled at least `n` more times.
async fn polls(server: &FeedServer, n: usize) {
    let start: Vec<usize> = ["/a", "/b"]
        .iter()
        .map(|p| {
            server
                .requests
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.0 == *p)
                .count()
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let now: Vec<usize> = ["/a", "/b"]
            .iter()
            .map(|p| {
                server
                    .requests
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|r| r.0 == *p)
                    .count()
            })
            .collect();
        if now[0] >= start[0] + n && now[1] >= start[1] + n {
            return;
        }
        assert!(Instant::now() < until, "the feeds stopped polling");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for<F: Fn() -> bool>(what: &str, f: F) {
    let until = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metrics(app: &common::TestApp) -> String {
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
async fn a_feed_moving_from_test_to_alert_update_and_cancel_sends_exactly_once() {
    let server = Arc::new(FeedServer::default());
    let router = axum::Router::new()
        .fallback(serve)
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });

    let t0 = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(5);
    let sent = t0.to_string();
    // 1. A Test message: nothing is sent.
    server.set(cap("T-1", &sent, "Test", "Alert", None), "\"v1\"");
    let app = common::spawn_app_with(&extra(addr)).await;
    polls(&server, 3).await;
    assert!(alerts(&app).is_empty(), "a Test message sends nothing");

    // 2. The real alert, on both feeds: one closure, district-wide.
    server.set(cap("A-1", &sent, "Actual", "Alert", None), "\"v2\"");
    wait_for("the closure alert", || !alerts(&app).is_empty()).await;
    polls(&server, 3).await;
    let list = alerts(&app);
    assert_eq!(list.len(), 1, "{list:?}");
    let (first, playbook, source, _) = list[0].clone();
    assert_eq!(playbook, "weather-closure");
    assert_eq!(source, format!("cap:{SENDER}:A-1"));
    let msg: String = app
        .db()
        .query_row("SELECT message FROM alerts WHERE id = ?1", [first], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(
        msg.starts_with("Winter Storm Warning for Travis County until"),
        "{msg}"
    );
    // Audited as the feed rule's, from the feed (either feed may win).
    let (actor, origin): (String, String) = app
        .db()
        .query_row(
            "SELECT actor, origin FROM audit WHERE action = 'alert.create' AND alert_id = ?1",
            [first],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(actor, "cap");
    assert!(
        origin == "feed:nws-a" || origin == "feed:mirror-b",
        "{origin}"
    );
    app.wait_settled(first).await;
    let sends = app.outbox().len();
    assert!(sends > 0);

    // Conditional GET: after the 200 carrying ETag "v2", polls send it back
    // with the Last-Modified date, and get 304.
    {
        let reqs = server.requests.lock().unwrap();
        assert!(
            reqs.iter()
                .any(|(_, inm, ims)| inm.as_deref() == Some("\"v2\"")
                    && ims.as_deref() == Some("Mon, 23 Nov 2026 04:00:00 GMT")),
            "{reqs:?}"
        );
    }
    assert!(
        metrics(&app)
            .await
            .contains("klaxon_feed_polls_total{feed=\"nws-a\",outcome=\"not-modified\"}")
    );

    // 3. The same alert served again as new content (another ETag): nothing more.
    server.set(cap("A-1", &sent, "Actual", "Alert", None), "\"v3\"");
    polls(&server, 3).await;
    assert_eq!(alerts(&app).len(), 1);

    // 4. Across a restart: still handled once.
    let (dir, admin, viewer) = app.stop().await;
    let app = common::start(dir, admin, viewer).await;
    polls(&server, 3).await;
    assert_eq!(alerts(&app).len(), 1, "a restart does not send it again");
    assert_eq!(app.outbox().len(), sends);

    // 5. An Update of it: recorded, nothing sent (on_update = "ignore").
    let refs = format!("{SENDER},A-1,{sent}");
    let sent2 = (t0 + jiff::SignedDuration::from_mins(1)).to_string();
    server.set(
        cap("U-1", &sent2, "Actual", "Update", Some(&refs)),
        "\"v4\"",
    );
    wait_for("the update recorded", || {
        app.db()
            .query_row(
                "SELECT count(*) FROM cap_messages WHERE identifier = 'U-1' AND outcome = 'recorded'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
            == 1
    })
    .await;
    polls(&server, 2).await;
    assert_eq!(alerts(&app).len(), 1, "an update sends nothing new");

    // 6. A Cancel: the rescinding notice, linked to the original, once.
    let sent3 = (t0 + jiff::SignedDuration::from_mins(2)).to_string();
    server.set(
        cap("C-1", &sent3, "Actual", "Cancel", Some(&refs)),
        "\"v5\"",
    );
    wait_for("the rescinding notice", || alerts(&app).len() == 2).await;
    polls(&server, 3).await;
    let list = alerts(&app);
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[1].1, "all-clear");
    assert_eq!(list[1].3, Some(first), "linked to the original alert");
    let cancelled: Option<i64> = app
        .db()
        .query_row(
            "SELECT cancelled_at FROM cap_messages WHERE identifier = 'A-1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(cancelled.is_some(), "the cancel is recorded against A-1");
    // The notice reaches the same people as the original.
    let db = app.db();
    // A follow-up's deliveries point at the original's recipients.
    let people = |id: i64| -> i64 {
        db.query_row(
            "SELECT count(DISTINCT recipient_id) FROM deliveries WHERE alert_id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap()
    };
    wait_for("the notice handed over", || {
        people(list[1].0) == people(first)
    })
    .await;
    assert!(people(first) > 0);
    drop(db);

    // 7. The feed breaks: 500, then garbage. Nothing recorded; the daemon runs.
    let before: i64 = app
        .db()
        .query_row("SELECT count(*) FROM cap_messages", [], |r| r.get(0))
        .unwrap();
    server.fail(500, "oops");
    polls(&server, 2).await;
    // 200 with garbage, under a new ETag so it is fetched.
    server.set("<html><body>maintenance</body></html>".into(), "\"v6\"");
    polls(&server, 2).await;
    let m = metrics(&app).await;
    assert!(
        m.contains("klaxon_feed_polls_total{feed=\"nws-a\",outcome=\"error\"}"),
        "{m}"
    );
    assert!(m.contains("klaxon_feed_up{feed=\"nws-a\"} 0"), "{m}");
    assert!(
        m.contains("klaxon_feed_last_success_timestamp_seconds{feed=\"nws-a\"}"),
        "{m}"
    );
    let after: i64 = app
        .db()
        .query_row("SELECT count(*) FROM cap_messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(before, after, "a broken feed records nothing");
    assert_eq!(alerts(&app).len(), 2);
    // Failing for more than three intervals: /readyz says which feed.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let r = app
            .http
            .get(format!("{}/readyz", app.base))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap();
        if status == 503 {
            let failing = body["feeds_failing"].as_array().unwrap();
            assert!(failing.iter().any(|f| f == "nws-a"), "{body}");
            break;
        }
        assert!(
            Instant::now() < until,
            "readyz never reported the feed: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "the daemon keeps running");
    app.stop().await;
}
