//! `/metrics` as Prometheus reads it: a scrape of the running daemon after an
//! alert, checked by Prometheus's own `promtool check metrics`.

mod common;
mod support;

use common::spawn_app;
use serde_json::json;
use support::promtool::{check_metrics, run_promtool};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_scrape_after_an_alert_passes_promtool() {
    let app = spawn_app().await;
    let created: serde_json::Value = app
        .trigger(json!({"playbook": "lockdown", "audience": {"schools": ["S1"]}}))
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_i64().expect("alert id");
    app.wait_settled(id).await;

    let r = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    // The scrape is about the alert just sent, not an empty registry.
    assert!(
        text.lines()
            .any(|l| l.starts_with("klaxon_alerts_created_total{") && l.ends_with(" 1")),
        "the scrape counts the alert's deliveries:\n{text}"
    );
    check_metrics(&text);
    app.stop().await;
}

/// The check itself can fail: promtool rejects what breaks the format or
/// its lint rules, and accepts a well-formed family.
#[test]
fn promtool_rejects_a_broken_scrape_and_accepts_a_good_one() {
    let Some(bad) = run_promtool("klaxon_x{channel=\"sms\" 1\n") else {
        return;
    };
    assert!(!bad.status.success(), "unbalanced braces are an error");
    let lint =
        run_promtool("# HELP klaxon_sent Sent.\n# TYPE klaxon_sent counter\nklaxon_sent 1\n")
            .expect("promtool present");
    assert!(
        !lint.status.success() && String::from_utf8_lossy(&lint.stderr).contains("_total"),
        "a counter without _total is a lint problem: {lint:?}"
    );
    check_metrics(
        "# HELP klaxon_sent_total Sent.\n# TYPE klaxon_sent_total counter\nklaxon_sent_total{channel=\"sms\"} 1\n",
    );
}
