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

/// (path, If-None-Match, If-Modified-Since, User-Agent) of one request.
type Request = (String, Option<String>, Option<String>, Option<String>);

#[derive(Default)]
struct FeedServer {
    served: Mutex<Served>,
    /// (path, If-None-Match, If-Modified-Since, User-Agent) of every request.
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
        h(header::USER_AGENT),
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
                .any(|(_, inm, ims, _)| inm.as_deref() == Some("\"v2\"")
                    && ims.as_deref() == Some("Mon, 23 Nov 2026 04:00:00 GMT")),
            "{reqs:?}"
        );
    }
    assert!(
        metrics(&app)
            .await
            .contains("klaxon_feed_polls_total{feed=\"nws-a\",outcome=\"not-modified\"}")
    );
    // Every poll names the install: nws-a with its configured User-Agent and
    // contact; mirror-b has none configured and sends klaxon's own (which
    // `check-config` warns about, tests/cap_inspect.rs).
    {
        let reqs = server.requests.lock().unwrap();
        let agents = |path: &str| -> Vec<Option<String>> {
            reqs.iter()
                .filter(|r| r.0 == path)
                .map(|r| r.3.clone())
                .collect()
        };
        let (a, b) = (agents("/a"), agents("/b"));
        assert!(!a.is_empty() && !b.is_empty());
        assert!(
            a.iter()
                .all(|u| u.as_deref() == Some("klaxon-test (it@example-isd.org)")),
            "{a:?}"
        );
        let default = format!("klaxon/{}", env!("CARGO_PKG_VERSION"));
        assert!(
            b.iter().all(|u| u.as_deref() == Some(default.as_str())),
            "{b:?}"
        );
    }

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

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/cap");

/// (path, Accept, User-Agent) of one request.
type Seen = (String, Option<String>, Option<String>);

/// A loopback server with one document per path.
#[derive(Default)]
struct Documents {
    /// path → (Content-Type, body).
    served: Mutex<std::collections::HashMap<String, (String, String)>>,
    requests: Mutex<Vec<Seen>>,
}

impl Documents {
    fn set(&self, path: &str, content_type: &str, body: String) {
        self.served
            .lock()
            .unwrap()
            .insert(path.into(), (content_type.into(), body));
    }

    fn polls(&self, path: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.0 == path)
            .count()
    }
}

async fn serve_documents(
    State(s): State<Arc<Documents>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let h = |n: header::HeaderName| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    s.requests.lock().unwrap().push((
        uri.path().to_string(),
        h(header::ACCEPT),
        h(header::USER_AGENT),
    ));
    match s.served.lock().unwrap().get(uri.path()) {
        Some((ct, body)) => ([(header::CONTENT_TYPE, ct.clone())], body.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Moves `t` (RFC 3339) by `by`, written in UTC.
fn moved(t: &str, by: jiff::SignedDuration) -> String {
    let t: jiff::Timestamp = t.trim().parse().unwrap_or_else(|e| panic!("{t}: {e}"));
    (t + by).to_string()
}

/// The shared api.weather.gov sample with its times moved so that it was
/// sent five minutes ago (it is from 2019, long expired).
fn nws_api_sample_now() -> (String, serde_json::Value) {
    let path = format!(
        "{DATA}/api-weather-gov/alerts-active-zone-ORZ004-flood-watch-update-2019-12-20.json"
    );
    let mut doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let p = &doc["features"][0]["properties"];
    let sent: jiff::Timestamp = p["sent"].as_str().unwrap().parse().unwrap();
    let by = (jiff::Timestamp::now() - jiff::SignedDuration::from_mins(5)).duration_since(sent);
    let props = doc["features"][0]["properties"].as_object_mut().unwrap();
    for key in ["sent", "effective", "onset", "expires", "ends"] {
        let t = props[key].as_str().unwrap().to_string();
        props.insert(key.into(), moved(&t, by).into());
    }
    let props = props.clone().into();
    (serde_json::to_string(&doc).unwrap(), props)
}

/// The shared NWS ATOM index (2018) with the times of every entry moved so
/// that it was published five minutes ago.
fn atom_sample_now() -> String {
    let text = std::fs::read_to_string(format!(
        "{DATA}/nws/atom/nws-us-national-atom-2018-08-15.xml"
    ))
    .unwrap();
    let published: jiff::Timestamp = "2018-08-15T22:57:00Z".parse().unwrap();
    let by =
        (jiff::Timestamp::now() - jiff::SignedDuration::from_mins(5)).duration_since(published);
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    let tags = [
        "updated",
        "published",
        "cap:effective",
        "cap:expires",
        "cap:onset",
    ];
    loop {
        let next = tags
            .iter()
            .filter_map(|t| rest.find(&format!("<{t}>")).map(|at| (at, *t)))
            .min();
        let Some((at, tag)) = next else {
            out.push_str(rest);
            break;
        };
        let open = at + tag.len() + 2;
        let close = open + rest[open..].find(&format!("</{tag}>")).unwrap();
        out.push_str(&rest[..open]);
        let value = &rest[open..close];
        if value.trim().is_empty() {
            out.push_str(value);
        } else {
            out.push_str(&moved(value, by));
        }
        rest = &rest[close..];
    }
    out
}

fn sources_extra(addr: std::net::SocketAddr) -> String {
    format!(
        r#"{}
[[feeds]]
name = "nws-zone"
kind = "nws-api"
url = "http://{addr}/alerts/active"
interval = "200ms"
user_agent = "klaxon-test (it@example-isd.org)"

[[feeds]]
name = "nws-index"
kind = "atom"
url = "http://{addr}/cap/us.atom"
interval = "200ms"
user_agent = "klaxon-test (it@example-isd.org)"

[[feeds]]
name = "misconfigured"
kind = "nws-api"
url = "http://{addr}/wrong"
interval = "200ms"
user_agent = "klaxon-test (it@example-isd.org)"

[[rules]]
name = "flood-watch"
events = ["Flood Watch"]
zones = ["ORZ004"]
playbook = "weather-closure"
approval = "auto"

[[rules]]
name = "high-wind"
events = ["High Wind Warning"]
zones = ["AKZ204"]
min_severity = "Severe"
playbook = "weather-closure"
approval = "auto"
"#,
        common::LOG_PROVIDER
    )
}

async fn readyz(app: &common::TestApp) -> (u16, serde_json::Value) {
    let r = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// `kind = "nws-api"` and `kind = "atom"` feeds, each serving its shared NWS
/// sample (times moved to today): each starts the alert its rule names. A
/// feed serving the wrong kind of document fails, shows in `/metrics` and
/// `/readyz`, keeps being polled, and recovers once it serves its kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nws_api_and_atom_feeds_start_their_alerts_and_a_wrong_document_is_reported() {
    let server = Arc::new(Documents::default());
    let (geojson, props) = nws_api_sample_now();
    server.set("/alerts/active", "application/geo+json", geojson);
    server.set("/cap/us.atom", "application/atom+xml", atom_sample_now());
    // A CAP document where api.weather.gov GeoJSON is expected.
    let wrong = std::fs::read_to_string(format!(
        "{DATA}/nws/cap11/nws-blizzard-warning-MNZ020-021-2021-12-27.xml"
    ))
    .unwrap();
    server.set("/wrong", "application/cap+xml", wrong);
    let router = axum::Router::new()
        .fallback(serve_documents)
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });

    let app = common::spawn_app_with(&sources_extra(addr)).await;
    // Recorded against their messages (the alert row is written first).
    wait_for("the two alerts", || {
        app.db()
            .query_row(
                "SELECT count(*) FROM cap_messages WHERE outcome = 'sent' AND alert_id IS NOT NULL",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
            >= 2
    })
    .await;
    let list = alerts(&app);
    let by_source = |s: &str| list.iter().find(|a| a.2 == s).cloned();
    // The GeoJSON feature: its id and sender are the CAP identifier and sender.
    let flood = by_source(&format!(
        "cap:w-nws.webmaster@noaa.gov:{}",
        props["id"].as_str().unwrap()
    ))
    .unwrap_or_else(|| panic!("no flood watch alert: {list:?}"));
    assert_eq!(flood.1, "weather-closure");
    // The ATOM index entry: its id (the CAP link) stands in for the identifier.
    let wind = by_source(
        "cap:w-nws.webmaster@noaa.gov:https://alerts.weather.gov/cap/wwacapget.php?x=AK125AB652A170.HighWindWarning.125AB660BDF0AK.AFGNPWNSB.e9d4afdcacb3b7015f58bccc1db60d46",
    )
    .unwrap_or_else(|| panic!("no high wind alert: {list:?}"));
    assert_eq!(wind.1, "weather-closure");
    let message = |id: i64| -> String {
        app.db()
            .query_row("SELECT message FROM alerts WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap()
    };
    let m = message(flood.0);
    assert!(
        m.starts_with("Flood Watch for North Oregon Coast; Greater Portland Metro Area"),
        "{m}"
    );
    let m = message(wind.0);
    assert!(
        m.starts_with("High Wind Warning for Eastern Beaufort Sea Coast"),
        "{m}"
    );
    // Which feed found each, in the CAP message log.
    let origin = |id: i64| -> String {
        app.db()
            .query_row(
                "SELECT source FROM cap_messages WHERE alert_id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(origin(flood.0), "feed:nws-zone");
    assert_eq!(origin(wind.0), "feed:nws-index");
    {
        let reqs = server.requests.lock().unwrap();
        let accept = |p: &str| reqs.iter().find(|r| r.0 == p).unwrap().1.clone();
        assert_eq!(
            accept("/alerts/active").as_deref(),
            Some("application/geo+json")
        );
        assert!(
            accept("/cap/us.atom")
                .unwrap()
                .contains("application/atom+xml"),
            "{reqs:?}"
        );
    }

    // The misconfigured feed: failing for more than three intervals, named
    // by /readyz (alone), counted as wrong content; it recorded nothing.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = readyz(&app).await;
        if status == 503 {
            assert_eq!(
                body["feeds_failing"],
                serde_json::json!(["misconfigured"]),
                "{body}"
            );
            break;
        }
        assert!(
            Instant::now() < until,
            "readyz never reported the feed: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = metrics(&app).await;
    assert!(
        m.contains("klaxon_feed_up{feed=\"misconfigured\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("klaxon_feed_errors_total{feed=\"misconfigured\",reason=\"wrong-content\"}"),
        "{m}"
    );
    assert!(m.contains("klaxon_feed_up{feed=\"nws-zone\"} 1"), "{m}");
    assert!(m.contains("klaxon_feed_up{feed=\"nws-index\"} 1"), "{m}");
    let recorded: i64 = app
        .db()
        .query_row(
            "SELECT count(*) FROM cap_messages WHERE source = 'feed:misconfigured'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(recorded, 0);

    // The poller keeps going: once the feed serves GeoJSON, it is up again.
    let before = server.polls("/wrong");
    server.set(
        "/wrong",
        "application/geo+json",
        r#"{"type": "FeatureCollection", "features": []}"#.into(),
    );
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = readyz(&app).await;
        if status == 200 {
            assert_eq!(body["feeds_failing"], serde_json::json!([]), "{body}");
            break;
        }
        assert!(Instant::now() < until, "the feed did not recover: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.polls("/wrong") > before);
    assert!(
        metrics(&app)
            .await
            .contains("klaxon_feed_up{feed=\"misconfigured\"} 1")
    );
    assert_eq!(alerts(&app).len(), 2, "{:?}", alerts(&app));
    app.stop().await;
}
