//! The operator console over HTTP against the real daemon: the alert view
//! (no timed reload, chart, per-school breakdown), its live event stream
//! from the first figures to the alert's close, sign-in, CSRF and sign-out.

mod common;

use std::time::Duration;

use common::{TestApp, spawn_app};
use serde_json::json;

async fn page(
    app: &TestApp,
    path: &str,
) -> (reqwest::StatusCode, reqwest::header::HeaderMap, String) {
    let r = app
        .http
        .get(format!("{}{path}", app.base))
        .bearer_auth(&app.viewer)
        .send()
        .await
        .unwrap();
    let (st, h) = (r.status(), r.headers().clone());
    (st, h, r.text().await.unwrap())
}

/// Events read from an SSE body: `(event name, data)`.
struct Events {
    resp: reqwest::Response,
    buf: String,
}

impl Events {
    async fn open(app: &TestApp, id: i64) -> Events {
        let resp = app
            .http
            .get(format!("{}/alerts/{id}/events", app.base))
            .bearer_auth(&app.viewer)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Events {
            resp,
            buf: String::new(),
        }
    }

    /// The next event (keep-alive comments skipped), or None at the end.
    async fn next(&mut self) -> Option<(String, String)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() && name == "message" {
                    continue;
                }
                return Some((name, data));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.resp.chunk())
                .await
                .expect("an event within 20 s")
                .unwrap()?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next `figures` event's data.
    async fn figures(&mut self) -> serde_json::Value {
        let (name, data) = self.next().await.expect("the stream is still open");
        assert_eq!(name, "figures", "{data}");
        serde_json::from_str(&data).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_view_shows_figures_chart_and_schools_without_reloading_itself() {
    let app = spawn_app().await;
    let created: serde_json::Value = app
        .trigger(json!({"playbook": "early-dismissal", "audience": {"schools": ["S1", "S2"]}, "message": "Power outage."}))
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_i64().unwrap();
    let s = app.wait_settled(id).await;

    let (st, headers, body) = page(&app, &format!("/alerts/{id}")).await;
    assert_eq!(st, 200);
    assert!(!body.contains("http-equiv"), "no timed reload (WCAG 2.2.1)");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert!(body.contains(&format!("data-events=\"/alerts/{id}/events\"")));
    assert!(
        body.contains(&format!("<a href=\"/alerts/{id}\">Refresh</a>")),
        "a refresh link without JavaScript"
    );
    let reached = s["reached"].as_i64().unwrap();
    assert!(reached > 0);
    assert!(
        body.contains(&format!("<span data-live=\"reached\">{reached}</span>")),
        "the reached figure is shown and marked for live updates"
    );
    assert!(
        body.contains("data-live-deadline=\"ack_left\""),
        "the confirm deadline counts down"
    );
    // The chart: an accessible SVG with the same figures as a table.
    assert!(body.contains("role=\"img\""));
    assert!(body.contains(&format!("<title id=\"chart-title-{id}\">")));
    assert!(body.contains("The chart as a table"));
    let handed: i64 = ["sent", "delivered"]
        .iter()
        .map(|k| s["totals"][k].as_i64().unwrap_or(0))
        .sum();
    assert!(
        body.contains(&format!("<td class=\"n\">{handed}</td>")),
        "the table's last row holds every first delivery handed over ({handed})"
    );
    // Per school: both schools of the audience, with their recipients.
    assert!(body.contains("Lincoln Elementary") && body.contains("Roosevelt Middle"));
    assert!(body.contains("Per school"));

    let (st, _, overview) = page(&app, "/").await;
    assert_eq!(st, 200);
    assert!(
        !overview.contains("http-equiv"),
        "the overview does not reload itself"
    );
    assert!(
        overview.contains("Open alerts") && overview.contains(&format!("href=\"/alerts/{id}\""))
    );

    let (st, _, _) = page(&app, "/alerts/999999").await;
    assert_eq!(st, 404);
    let js = app
        .http
        .get(format!("{}/console.js", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert!(js.text().await.unwrap().contains("EventSource"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_pushes_a_confirmation_and_ends_when_the_alert_closes() {
    let app = spawn_app().await;
    let created: serde_json::Value = app
        .trigger(json!({"playbook": "early-dismissal", "audience": {"schools": ["S1"]}, "message": "Power outage."}))
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_i64().unwrap();
    app.wait_settled(id).await;

    let mut events = Events::open(&app, id).await;
    let first = events.figures().await;
    assert_eq!(first["text"]["confirmed"], "0", "{first}");
    assert_eq!(first["text"]["recipients"], "4");
    assert_eq!(first["closed"], false);
    assert!(
        first["chart"].as_str().unwrap().contains("<svg"),
        "the first event carries the chart"
    );

    // A guardian confirms: the next event says so, without a reload.
    let link = app.link_of("+15555550102", id).expect("Wei's link");
    let r = app
        .http
        .post(&link)
        .form(&[("choice", "bus")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let next = events.figures().await;
    assert_eq!(next["text"]["confirmed"], "1", "{next}");
    assert_eq!(next["text"]["outstanding"], "3");

    // The all-clear closes the alert: last figures, `closed`, end of stream.
    let r = app
        .post(&format!("/api/v1/alerts/{id}/all-clear"), json!({}))
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    let mut last = events.figures().await;
    while last["closed"] != true {
        last = events.figures().await;
    }
    assert!(
        last["text"]["state"]
            .as_str()
            .unwrap()
            .starts_with("closed"),
        "{last}"
    );
    let (name, _) = events.next().await.expect("a closed event");
    assert_eq!(name, "closed");
    assert!(events.next().await.is_none(), "the stream ends");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_does_not_hold_up_shutdown() {
    let app = spawn_app().await;
    let created: serde_json::Value = app
        .trigger(json!({"playbook": "lockdown", "audience": {"schools": ["S1"]}}))
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_i64().unwrap();
    let mut events = Events::open(&app, id).await;
    events.figures().await;
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(app.stop());
    assert!(events.next().await.is_none(), "the stream ends at shutdown");
    stopping.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lists_are_searched_paged_and_exported_whole() {
    let app = spawn_app().await;
    let created: serde_json::Value = app
        .trigger(json!({"playbook": "early-dismissal", "audience": {"schools": ["S1", "S2"]}, "message": "Power outage."}))
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_i64().unwrap();
    app.wait_settled(id).await;
    let link = app.link_of("+15555550102", id).expect("Wei's link");
    let r = app
        .http
        .post(&link)
        .form(&[("choice", "bus")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let s = app.status(id).await;
    let outstanding = s["recipients"].as_i64().unwrap() - s["acknowledged"].as_i64().unwrap();

    let (st, _, all) = page(&app, &format!("/alerts/{id}/outstanding")).await;
    assert_eq!(st, 200);
    assert!(
        all.contains(&format!("of {outstanding} on this page")),
        "the total is said"
    );
    assert!(!all.contains("Wei Lee"), "Wei confirmed");
    assert!(all.contains("Maria Garcia"));
    // Search by a child's name: only that child's guardian.
    let (_, _, found) = page(&app, &format!("/alerts/{id}/outstanding?q=carlos")).await;
    assert!(
        found.contains("Maria Garcia") && found.contains("1 of 1 matching"),
        "{found}"
    );
    assert!(!found.contains("Dana Nguyen"));
    let (_, _, none) = page(
        &app,
        &format!("/alerts/{id}/outstanding?q=nobody-by-this-name"),
    )
    .await;
    assert!(none.contains("0 of 0 matching"));

    // The CSV export: every outstanding person, one row each.
    let r = app
        .http
        .get(format!("{}/alerts/{id}/outstanding?format=csv", app.base))
        .bearer_auth(&app.viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("attachment")
    );
    let csv = r.text().await.unwrap();
    let mut rows = csv::Reader::from_reader(csv.as_bytes());
    assert_eq!(rows.records().count() as i64, outstanding, "{csv}");

    // The pickup plan: Ben's answer, searchable by school.
    let (st, _, plan) = page(&app, &format!("/alerts/{id}/pickup?q=ben")).await;
    assert_eq!(st, 200);
    assert!(
        plan.contains("Ben Lee") && plan.contains("Send my child home on the bus"),
        "{plan}"
    );
    let (_, _, roosevelt) = page(&app, &format!("/alerts/{id}/pickup?q=Roosevelt")).await;
    assert!(roosevelt.contains("Roosevelt Middle") && !roosevelt.contains("Lincoln Elementary"));
    let r = app
        .http
        .get(format!("{}/alerts/{id}/pickup?format=csv", app.base))
        .bearer_auth(&app.viewer)
        .send()
        .await
        .unwrap();
    let csv = r.text().await.unwrap();
    assert!(csv.starts_with("student_id,student,school,grade,plan,conflict"));
    assert!(
        csv.contains("Ben Lee") && csv.contains("Send my child home on the bus (Wei Lee)"),
        "{csv}"
    );
    let (st, _, _) = page(&app, "/alerts/424242/pickup").await;
    assert_eq!(st, 404);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_shows_open_alerts_providers_feeds_and_sis_syncs() {
    // A feed nobody answers: a port we bound and closed again.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let app = common::spawn_app_with(&format!(
        "{}\n[[feeds]]\nname = \"county-cap\"\nkind = \"cap\"\nurl = \"http://{addr}/cap\"\ninterval = \"1h\"\ntimeout = \"1s\"\n",
        common::LOG_PROVIDER
    ))
    .await;
    let created: serde_json::Value = app
        .trigger(json!({"playbook": "lockdown", "audience": {"schools": ["S1"]}}))
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_i64().unwrap();
    let s = app.wait_settled(id).await;
    let handed: i64 = ["sent", "delivered"]
        .iter()
        .map(|k| s["totals"][k].as_i64().unwrap_or(0))
        .sum();
    // The feed's first poll fails at once (connection refused).
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (st, _, body) = page(&app, "/").await;
        assert_eq!(st, 200);
        if body.contains("failed; retrying") || std::time::Instant::now() > until {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        body.contains("county-cap") && body.contains("failed; retrying"),
        "{body}"
    );
    assert!(
        body.contains(&format!("href=\"/alerts/{id}\">#{id} Lockdown")),
        "the open alert"
    );
    // The log provider, healthy, with the requests it accepted.
    assert!(body.contains("<th scope=\"row\">test-log</th>"));
    assert!(body.contains("closed (healthy)"));
    assert!(
        body.contains(&format!("<td class=\"n\">{handed}</td>")),
        "{handed} requests accepted"
    );
    assert!(body.contains("SIS imports and syncs"));
    app.stop().await;
}

/// Signs in with `token` through the sign-in form (`http::session`); the
/// cookie and the CSRF token.
async fn sign_in(app: &TestApp, token: &str) -> (String, String) {
    let cookie = app.console_cookie(token).await;
    let home = app
        .http
        .get(format!("{}/", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = home
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    (cookie, csrf)
}

async fn post_form(
    app: &TestApp,
    cookie: &str,
    path: &str,
    form: &[(&str, &str)],
) -> reqwest::Response {
    app.http
        .post(format!("{}{path}", app.base))
        .header("cookie", cookie)
        .form(form)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_previews_and_sends_a_drill_from_the_form() {
    let app = spawn_app().await;
    let (cookie, csrf) = sign_in(&app, &app.admin).await;
    let form = app
        .http
        .get(format!("{}/trigger", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(form.contains("Lincoln Elementary") && form.contains("value=\"early-dismissal\""));
    assert!(
        !form.contains("value=\"all-clear\""),
        "follow-ups are not started alone"
    );

    let fields = [
        ("csrf", csrf.as_str()),
        ("playbook", "early-dismissal"),
        ("school", "S1"),
        ("message", "Power outage."),
        ("drill", "on"),
    ];
    // The preview: who, how, in which languages, whether it fits the deadline.
    let preview = post_form(&app, &cookie, "/trigger/preview", &fields).await;
    assert_eq!(preview.status(), 200);
    let preview = preview.text().await.unwrap();
    assert!(preview.contains("<strong>4 people</strong>"), "{preview}");
    assert!(preview.contains("Recipients per role") && preview.contains("guardian"));
    assert!(
        preview.contains("SMS per language") && preview.contains(">es<"),
        "{preview}"
    );
    assert!(preview.contains("it fits"), "{preview}");
    assert!(
        preview.contains("Send now to 4 people") && !preview.contains("id=\"two-person\""),
        "{preview}"
    );
    assert!(
        !preview.contains("name=\"confirm\""),
        "one school: no typed confirmation"
    );
    assert!(preview.contains("DRILL"));
    let audit_before: i64 = app
        .db()
        .query_row("SELECT count(*) FROM alerts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(audit_before, 0, "a preview sends nothing");

    // Without the CSRF token: refused, nothing created.
    let r = post_form(&app, &cookie, "/trigger/send", &fields[1..]).await;
    assert_eq!(r.status(), 403);
    let r = post_form(&app, &cookie, "/trigger/send", &fields).await;
    assert_eq!(r.status(), 303);
    let to = r.headers()["location"].to_str().unwrap().to_string();
    let id: i64 = to.trim_start_matches("/alerts/").parse().unwrap();
    let s = app.wait_settled(id).await;
    assert_eq!(s["drill"], true);
    assert_eq!(s["recipients"], 4);
    assert_eq!(s["source"], "console");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_form_takes_the_message_per_language_and_each_family_reads_theirs() {
    let app = spawn_app().await;
    let (cookie, csrf) = sign_in(&app, &app.admin).await;
    let form = app
        .http
        .get(format!("{}/trigger", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(form.contains("name=\"message_es\""), "{form}");
    let fields = [
        ("csrf", csrf.as_str()),
        ("playbook", "early-dismissal"),
        ("school", "S1"),
        ("message", "Power outage."),
        ("message_es", "Corte de luz."),
        ("drill", "on"),
    ];
    let preview = post_form(&app, &cookie, "/trigger/preview", &fields)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        preview.contains("Power outage.") && preview.contains("Corte de luz."),
        "{preview}"
    );
    // The preview carries both texts to the send step.
    assert!(preview.contains("name=\"message_es\" value=\"Corte de luz.\""));
    let r = post_form(&app, &cookie, "/trigger/send", &fields).await;
    assert_eq!(r.status(), 303);
    let id: i64 = r.headers()["location"]
        .to_str()
        .unwrap()
        .trim_start_matches("/alerts/")
        .parse()
        .unwrap();
    app.wait_settled(id).await;
    let sent: Vec<serde_json::Value> = app
        .outbox()
        .into_iter()
        .filter(|m| m["alert_id"] == id)
        .collect();
    let (es, other): (Vec<_>, Vec<_>) = sent.iter().partition(|m| m["language"] == "es");
    assert!(!es.is_empty() && !other.is_empty(), "{sent:?}");
    for m in es {
        let body = m["body"].as_str().unwrap();
        assert!(
            body.contains("Corte de luz.") && !body.contains("Power outage."),
            "{m}"
        );
    }
    for m in other {
        let body = m["body"].as_str().unwrap();
        assert!(
            body.contains("Power outage.") && !body.contains("Corte de luz."),
            "{m}"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_district_wide_alert_needs_the_typed_word_and_a_viewer_cannot_act() {
    let app = spawn_app().await;
    let (cookie, csrf) = sign_in(&app, &app.admin).await;
    let fields = [
        ("csrf", csrf.as_str()),
        ("playbook", "lockdown"),
        ("drill", "on"),
    ];
    let preview = post_form(&app, &cookie, "/trigger/preview", &fields)
        .await
        .text()
        .await
        .unwrap();
    assert!(preview.contains("the whole district") && preview.contains("name=\"confirm\""));
    let r = post_form(&app, &cookie, "/trigger/send", &fields).await;
    assert_eq!(r.status(), 200, "back to the form");
    assert!(r.text().await.unwrap().contains("Nothing was sent"));
    let wrong = [fields[0], fields[1], fields[2], ("confirm", "district")];
    let r = post_form(&app, &cookie, "/trigger/send", &wrong).await;
    assert_eq!(r.status(), 200);
    let n: i64 = app
        .db()
        .query_row("SELECT count(*) FROM alerts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0, "nothing sent without the exact word");
    let right = [fields[0], fields[1], fields[2], ("confirm", "DISTRICT")];
    let r = post_form(&app, &cookie, "/trigger/send", &right).await;
    assert_eq!(r.status(), 303);

    // A viewer sees no form and cannot post one.
    let (vcookie, vcsrf) = sign_in(&app, &app.viewer).await;
    let r = app
        .http
        .get(format!("{}/trigger", app.base))
        .header("cookie", &vcookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let vf = [
        ("csrf", vcsrf.as_str()),
        ("playbook", "lockdown"),
        ("school", "S1"),
    ];
    let r = post_form(&app, &vcookie, "/trigger/send", &vf).await;
    assert_eq!(r.status(), 403);
    let n: i64 = app
        .db()
        .query_row("SELECT count(*) FROM alerts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_all_clear_and_cancel_each_take_a_confirmation_step() {
    let app = spawn_app().await;
    let (cookie, csrf) = sign_in(&app, &app.admin).await;
    let held: serde_json::Value = app
        .trigger(json!({"playbook": "lockdown", "audience": {"schools": ["S1"]}, "hold": true, "drill": true}))
        .await
        .json()
        .await
        .unwrap();
    let id = held["id"].as_i64().unwrap();
    let view = app
        .http
        .get(format!("{}/alerts/{id}", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(view.contains(&format!("href=\"/alerts/{id}/act/approve\"")));
    assert!(
        !view.contains("act/all-clear"),
        "no all-clear for a held alert"
    );
    let confirm = app
        .http
        .get(format!("{}/alerts/{id}/act/approve", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(confirm.contains("Sending starts now") && confirm.contains("Yes: approve and send"));
    assert_eq!(
        app.status(id).await["state"],
        "held",
        "the confirmation page changes nothing"
    );
    let r = post_form(
        &app,
        &cookie,
        &format!("/alerts/{id}/act/approve"),
        &[("csrf", "x")],
    )
    .await;
    assert_eq!(r.status(), 403, "CSRF checked");
    let r = post_form(
        &app,
        &cookie,
        &format!("/alerts/{id}/act/approve"),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(r.status(), 303);
    app.wait_settled(id).await;

    let r = post_form(
        &app,
        &cookie,
        &format!("/alerts/{id}/act/all-clear"),
        &[("csrf", &csrf), ("message", "Doors open again.")],
    )
    .await;
    assert_eq!(r.status(), 303);
    let s = app
        .wait_status(id, "closed by the all-clear", |s| s["state"] == "closed")
        .await;
    assert_eq!(s["closed_reason"], "all-clear");
    assert!(s["all_clear_id"].is_i64());

    // Cancel, on another alert.
    let other: serde_json::Value = app
        .trigger(json!({"playbook": "lockdown", "audience": {"schools": ["S2"]}, "hold": true}))
        .await
        .json()
        .await
        .unwrap();
    let other = other["id"].as_i64().unwrap();
    let r = post_form(
        &app,
        &cookie,
        &format!("/alerts/{other}/act/cancel"),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(r.status(), 303);
    let s = app.status(other).await;
    assert_eq!(s["state"], "closed");
    assert_eq!(s["closed_reason"], "cancelled");
    assert_eq!(s["created_by"], "test");
    let r = post_form(
        &app,
        &cookie,
        &format!("/alerts/{other}/act/teleport"),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(r.status(), 404);
    app.stop().await;
}

/// A token for the person `name` limited to `schools`, made in the store as
/// `klaxon token create --schools` does. Call before the daemon starts.
async fn scoped_token(
    dir: &std::path::Path,
    name: &str,
    role: klaxon::store::tokens::ApiRole,
    schools: &[&str],
) -> String {
    use klaxon::store::tokens;
    let store = klaxon::store::Store::open(&dir.join("state"), false).expect("store");
    let t = tokens::generate();
    let (t2, name) = (t.clone(), name.to_string());
    let scope = klaxon::domain::Scope::Schools(schools.iter().map(|s| s.to_string()).collect());
    store
        .write(move |c| {
            let id = tokens::insert(c, &name, role, &t2, klaxon::store::now_ms())?;
            tokens::set_scope(c, id, &scope)
        })
        .await
        .expect("token");
    store.close();
    t
}

fn alert_count(app: &TestApp) -> i64 {
    app.db()
        .query_row("SELECT count(*) FROM alerts", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_school_scoped_operator_previews_sends_and_acts_only_within_its_schools() {
    use klaxon::store::tokens::ApiRole;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("klaxon.toml"),
        common::config_text(common::LOG_PROVIDER),
    )
    .unwrap();
    common::import(dir.path(), std::path::Path::new(common::FIXTURE));
    let admin = common::make_token(dir.path(), ApiRole::Admin).await;
    let viewer = common::make_token(dir.path(), ApiRole::Viewer).await;
    let s1 = scoped_token(dir.path(), "north office", ApiRole::Operator, &["S1"]).await;
    let app = common::start(dir, admin, viewer).await;
    let (cookie, csrf) = sign_in(&app, &s1).await;

    // The form offers only its own school.
    let form = app
        .http
        .get(format!("{}/trigger", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(form.contains("Lincoln Elementary"), "{form}");
    assert!(!form.contains("Roosevelt Middle"), "{form}");

    // Preview and send: another school, a mix, or the whole district are
    // refused, and the refusal names nobody.
    for schools in [vec!["S2"], vec!["S1", "S2"], vec![]] {
        let mut fields = vec![
            ("csrf", csrf.as_str()),
            ("playbook", "lockdown"),
            ("drill", "on"),
            ("confirm", "DISTRICT"),
        ];
        fields.extend(schools.iter().map(|s| ("school", *s)));
        let r = post_form(&app, &cookie, "/trigger/preview", &fields).await;
        assert_eq!(r.status(), 403, "preview {schools:?}");
        let body = r.text().await.unwrap();
        assert!(body.contains("school(s) S1"), "says what they may: {body}");
        for secret in [
            "Recipients per role",
            "people</strong>",
            "Tam Nguyen",
            "Okafor",
        ] {
            assert!(!body.contains(secret), "preview {schools:?} shows {secret}");
        }
        let r = post_form(&app, &cookie, "/trigger/send", &fields).await;
        assert_eq!(r.status(), 403, "send {schools:?}");
        assert_eq!(alert_count(&app), 0, "nothing sent for {schools:?}");
    }
    // Its own school: previewed (its unreachable person named) and sent.
    let own = [
        ("csrf", csrf.as_str()),
        ("playbook", "lockdown"),
        ("drill", "on"),
        ("school", "S1"),
    ];
    let r = post_form(&app, &cookie, "/trigger/preview", &own).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("Tam Nguyen"));
    let r = post_form(&app, &cookie, "/trigger/send", &own).await;
    assert_eq!(r.status(), 303);
    assert_eq!(alert_count(&app), 1);

    // Another school's alerts: one held, one sending. Neither the
    // confirmation step nor the action is open to this operator.
    let held = app
        .trigger(json!({"playbook": "shelter", "audience": {"schools": ["S2"]}, "hold": true, "drill": true}))
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let sending = app
        .trigger(
            json!({"playbook": "early-dismissal", "audience": {"schools": ["S2"]}, "drill": true}),
        )
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    app.wait_settled(sending).await;
    for (id, action) in [
        (held, "approve"),
        (held, "cancel"),
        (sending, "all-clear"),
        (sending, "cancel"),
    ] {
        let path = format!("/alerts/{id}/act/{action}");
        let r = app
            .http
            .get(format!("{}{path}", app.base))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "GET {path}");
        let r = post_form(&app, &cookie, &path, &[("csrf", &csrf)]).await;
        assert_eq!(r.status(), 403, "POST {path}");
    }
    assert_eq!(app.status(held).await["state"], "held", "untouched");
    let s = app.status(sending).await;
    assert_ne!(s["state"], "closed", "untouched: {s}");
    assert!(s["all_clear_id"].is_null(), "no all-clear: {s}");
    app.stop().await;
}

/// A daemon whose `reunification` playbook needs two people, with the
/// operators alice and bob (their tokens).
async fn two_operators() -> (TestApp, String, String) {
    use klaxon::store::tokens::ApiRole;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "{}{}",
        common::LOG_PROVIDER,
        r#"
[playbooks.reunification]
title = "Reunification"
severity = "emergency"
channels = ["sms", "email"]
approval = "two-person"
messages = { en = "Reunification at {{ school }}. {{ message }} {{ link }}" }
"#
    );
    std::fs::write(dir.path().join("klaxon.toml"), common::config_text(&extra)).unwrap();
    common::import(dir.path(), std::path::Path::new(common::FIXTURE));
    let alice = common::make_named_token(dir.path(), "alice", ApiRole::Operator).await;
    let bob = common::make_named_token(dir.path(), "bob", ApiRole::Operator).await;
    let admin = common::make_named_token(dir.path(), "admin", ApiRole::Admin).await;
    let viewer = common::make_named_token(dir.path(), "viewer", ApiRole::Viewer).await;
    (common::start(dir, admin, viewer).await, alice, bob)
}

async fn get_page(app: &TestApp, cookie: &str, path: &str) -> (reqwest::StatusCode, String) {
    let r = app
        .http
        .get(format!("{}{path}", app.base))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

/// Sends `reunification` at S1 from the console form; the new alert's id.
async fn send_reunification(app: &TestApp, cookie: &str, csrf: &str) -> i64 {
    let r = post_form(
        app,
        cookie,
        "/trigger/send",
        &[
            ("csrf", csrf),
            ("playbook", "reunification"),
            ("school", "S1"),
            ("message", "At the north gym."),
            ("drill", "on"),
        ],
    )
    .await;
    assert_eq!(r.status(), 303);
    r.headers()["location"]
        .to_str()
        .unwrap()
        .trim_start_matches("/alerts/")
        .parse()
        .unwrap()
}

fn handed_over(app: &TestApp, id: i64) -> i64 {
    app.db()
        .query_row(
            "SELECT count(*) FROM deliveries WHERE alert_id = ?1 AND state <> 'held'",
            [id],
            |r| r.get(0),
        )
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_two_person_rule_in_the_console_a_second_operator_approves() {
    let (app, alice, bob) = two_operators().await;
    let (a_cookie, a_csrf) = sign_in(&app, &alice).await;
    let (b_cookie, b_csrf) = sign_in(&app, &bob).await;
    // The preview says it will wait for a second approval.
    let preview = post_form(
        &app,
        &a_cookie,
        "/trigger/preview",
        &[
            ("csrf", &a_csrf),
            ("playbook", "reunification"),
            ("school", "S1"),
        ],
    )
    .await
    .text()
    .await
    .unwrap();
    assert!(
        preview.contains("id=\"two-person\"")
            && preview.contains("Ask for a second approval to send to"),
        "{preview}"
    );
    let id = send_reunification(&app, &a_cookie, &a_csrf).await;
    assert_eq!(app.status(id).await["state"], "held");

    // Alice triggered it: her view says it needs a second approval and
    // offers only the override; her approval is refused.
    let (_, view) = get_page(&app, &a_cookie, &format!("/alerts/{id}")).await;
    assert!(view.contains("held: needs a second approval"), "{view}");
    assert!(
        view.contains("Send now without a second approval…"),
        "{view}"
    );
    assert!(!view.contains("Approve and send…"), "{view}");
    let r = post_form(
        &app,
        &a_cookie,
        &format!("/alerts/{id}/act/approve"),
        &[("csrf", &a_csrf)],
    )
    .await;
    assert_eq!(r.status(), 403, "self-approval refused");
    assert!(r.text().await.unwrap().contains("second operator"));
    assert_eq!(app.status(id).await["state"], "held");
    assert_eq!(handed_over(&app, id), 0, "nothing sent");

    // Bob sees an ordinary approval, names who triggered it, and approves.
    let (_, view) = get_page(&app, &b_cookie, &format!("/alerts/{id}")).await;
    assert!(view.contains("Approve and send…"), "{view}");
    let (_, confirm) = get_page(&app, &b_cookie, &format!("/alerts/{id}/act/approve")).await;
    assert!(
        confirm.contains("You give the second approval") && confirm.contains("token:alice"),
        "{confirm}"
    );
    assert!(!confirm.contains("override_reason"), "{confirm}");
    let r = post_form(
        &app,
        &b_cookie,
        &format!("/alerts/{id}/act/approve"),
        &[("csrf", &b_csrf)],
    )
    .await;
    assert_eq!(r.status(), 303);
    let s = app.wait_settled(id).await;
    assert!(s["override_reason"].is_null(), "{s}");
    assert!(handed_over(&app, id) > 0);
    let (_, view) = get_page(&app, &b_cookie, &format!("/alerts/{id}")).await;
    assert!(!view.contains("Sent without a second approval"), "{view}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_needs_a_reason_is_marked_and_another_operator_reviews_it() {
    let (app, alice, bob) = two_operators().await;
    let (a_cookie, a_csrf) = sign_in(&app, &alice).await;
    let (b_cookie, b_csrf) = sign_in(&app, &bob).await;
    let id = send_reunification(&app, &a_cookie, &a_csrf).await;
    let path = format!("/alerts/{id}/act/approve");

    // The override form asks for a typed reason.
    let (st, confirm) = get_page(&app, &a_cookie, &path).await;
    assert_eq!(st, 200);
    assert!(
        confirm.contains("name=\"override_reason\"") && confirm.contains("required"),
        "{confirm}"
    );
    assert!(confirm.contains("Yes: send now without a second approval"));
    // Without a reason, or with a blank or too short one: nothing is sent.
    for (reason, status) in [("", 403), ("   ", 403), ("go", 422)] {
        let r = post_form(
            &app,
            &a_cookie,
            &path,
            &[("csrf", &a_csrf), ("override_reason", reason)],
        )
        .await;
        assert_eq!(r.status(), status, "reason {reason:?}");
        assert_eq!(app.status(id).await["state"], "held", "reason {reason:?}");
    }
    assert_eq!(handed_over(&app, id), 0);

    // With a reason: sent at once, marked, and on the review list.
    let why = "Intruder at the gym; no second operator answers.";
    let r = post_form(
        &app,
        &a_cookie,
        &path,
        &[("csrf", &a_csrf), ("override_reason", why)],
    )
    .await;
    assert_eq!(r.status(), 303);
    let s = app.wait_settled(id).await;
    assert_eq!(s["override_reason"], why, "{s}");
    assert!(handed_over(&app, id) > 0);
    let (_, home) = get_page(&app, &b_cookie, "/").await;
    assert!(
        home.contains("1 alert(s) sent without a second approval wait for review"),
        "{home}"
    );
    let (_, view) = get_page(&app, &b_cookie, &format!("/alerts/{id}")).await;
    assert!(
        view.contains("Sent without a second approval") && view.contains(why),
        "{view}"
    );
    assert!(view.contains("Not reviewed yet"), "{view}");

    // The review list: the same as /api/v1/reviews.
    let api: Vec<serde_json::Value> = app
        .get_json("/api/v1/reviews")
        .await
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(api.len(), 1);
    assert_eq!(api[0]["id"], id);
    let (_, mine) = get_page(&app, &a_cookie, "/reviews").await;
    assert!(
        mine.contains(&format!("href=\"/alerts/{id}\"")) && mine.contains(why),
        "{mine}"
    );
    assert!(
        mine.contains("You sent it: another person reviews it."),
        "{mine}"
    );
    assert!(
        !mine.contains(&format!("action=\"/alerts/{id}/review\"")),
        "{mine}"
    );
    // Alice cannot review her own override, even by posting the form.
    let review = format!("/alerts/{id}/review");
    let r = post_form(&app, &a_cookie, &review, &[("csrf", &a_csrf)]).await;
    assert_eq!(r.status(), 403);
    // Bob can, with the form's CSRF token.
    let (_, his) = get_page(&app, &b_cookie, "/reviews").await;
    assert!(
        his.contains(&format!("action=\"/alerts/{id}/review\"")),
        "{his}"
    );
    let r = post_form(
        &app,
        &b_cookie,
        &review,
        &[("note", "Checked with the principal.")],
    )
    .await;
    assert_eq!(r.status(), 403, "CSRF checked");
    let reviewed: Option<String> = app
        .db()
        .query_row("SELECT reviewed_by FROM alerts WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(
        reviewed, None,
        "neither Alice nor a form without CSRF reviewed it"
    );
    let r = post_form(
        &app,
        &b_cookie,
        &review,
        &[("csrf", &b_csrf), ("note", "Checked with the principal.")],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/reviews");
    let reviewed: Option<String> = app
        .db()
        .query_row("SELECT reviewed_by FROM alerts WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(reviewed.as_deref(), Some("token:bob"));
    let (_, his) = get_page(&app, &b_cookie, "/reviews").await;
    assert!(his.contains("Nothing waits for review."), "{his}");
    let (_, home) = get_page(&app, &b_cookie, "/").await;
    assert!(!home.contains("id=\"to-review\""), "{home}");
    assert!(
        app.get_json("/api/v1/reviews")
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );
    let (_, view) = get_page(&app, &a_cookie, &format!("/alerts/{id}")).await;
    assert!(view.contains("Reviewed by token:bob"), "{view}");
    let audited: i64 = app
        .db()
        .query_row(
            "SELECT count(*) FROM audit WHERE action = 'alert.review' AND alert_id = ?1 AND actor = 'token:bob'",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(audited, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preview_names_the_languages_that_get_the_message_untranslated() {
    let app = spawn_app().await;
    let (cookie, csrf) = sign_in(&app, &app.admin).await;
    let preview = |fields: Vec<(&'static str, String)>| {
        let (app, cookie, csrf) = (&app, &cookie, &csrf);
        async move {
            let mut f: Vec<(&str, &str)> = vec![
                ("csrf", csrf.as_str()),
                ("playbook", "early-dismissal"),
                ("school", "S1"),
                ("drill", "on"),
            ];
            f.extend(fields.iter().map(|(k, v)| (*k, v.as_str())));
            let r = post_form(app, cookie, "/trigger/preview", &f).await;
            assert_eq!(r.status(), 200);
            r.text().await.unwrap()
        }
    };
    // English only: the Spanish and Vietnamese families get it as written,
    // exactly as the API's 201 answer reckons it.
    let p = preview(vec![("message", "Power outage.".into())]).await;
    assert!(p.contains("id=\"untranslated\""), "{p}");
    let created: serde_json::Value = app
        .trigger(json!({"playbook": "early-dismissal", "audience": {"schools": ["S1"]}, "message": "Power outage.", "drill": true, "hold": true}))
        .await
        .json()
        .await
        .unwrap();
    let mut langs: Vec<String> = created["untranslated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    langs.sort();
    assert_eq!(langs, ["es", "vi"], "{created}");
    let warning = created["warning"].as_str().unwrap();
    let list = warning
        .split("the message is not written in ")
        .nth(1)
        .and_then(|s| s.split("; they get").next())
        .unwrap_or_else(|| panic!("{warning}"));
    assert!(
        p.contains(&format!("The message is not written in {list}:")),
        "the preview lists {list}: {p}"
    );
    // With Spanish too, only Vietnamese is left; with no message, nothing.
    let p = preview(vec![
        ("message", "Power outage.".into()),
        ("message_es", "Corte de luz.".into()),
    ])
    .await;
    assert!(p.contains("The message is not written in vi ("), "{p}");
    assert!(!p.contains("es ("), "{p}");
    let p = preview(vec![]).await;
    assert!(!p.contains("id=\"untranslated\""), "{p}");
    app.stop().await;
}
