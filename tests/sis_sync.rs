//! The sync nobody has to babysit, seen from outside the daemon: a stale
//! copy makes `/readyz` say degraded (still 200) and is emailed to
//! `[sis] notify` once, not again after a restart; `klaxon sis status`
//! lists syncs and problems.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

const NOTIFY: &str = "it-desk@example-isd.org";

fn config() -> String {
    format!(
        "[sis]\nmax_age = \"1s\"\nnotify = [\"{NOTIFY}\"]\n{}",
        common::LOG_PROVIDER
    )
}

fn notices(app: &common::TestApp) -> Vec<serde_json::Value> {
    app.outbox()
        .into_iter()
        .filter(|m| m["to"] == NOTIFY)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_copy_is_degraded_and_emailed_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("klaxon.toml"),
        common::config_text(&config()),
    )
    .unwrap();
    common::import(dir.path(), std::path::Path::new(common::FIXTURE));
    let admin = common::make_token(dir.path(), klaxon::store::tokens::ApiRole::Admin).await;
    let viewer = common::make_token(dir.path(), klaxon::store::tokens::ApiRole::Viewer).await;
    // Older than max_age by the time the daemon looks.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let app = common::start(dir, admin, viewer).await;

    let ready: serde_json::Value = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["sis"], true, "{ready}");
    assert_eq!(ready["degraded"], true, "{ready}");
    let problem = ready["problems"][0].as_str().unwrap_or_default();
    assert!(problem.contains("h old (max_age 1s)"), "{ready}");
    // An alert triggered on a stale copy goes out, and says so in its 201
    // answer and its status.
    let created: serde_json::Value = app
        .trigger(serde_json::json!({"playbook": "lockdown", "audience": {"schools": ["S1"]}}))
        .await
        .json()
        .await
        .unwrap();
    let warning = created["warning"].as_str().unwrap_or_default();
    assert!(warning.contains("SIS copy is"), "{created}");
    let status = app.status(created["id"].as_i64().unwrap()).await;
    assert!(
        status["warning"]
            .as_str()
            .unwrap_or_default()
            .contains("SIS copy is"),
        "{status}"
    );

    let until = Instant::now() + Duration::from_secs(10);
    while notices(&app).is_empty() {
        assert!(Instant::now() < until, "no problem email was sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mail = &notices(&app)[0];
    assert_eq!(mail["channel"], "email");
    assert!(
        mail["body"]
            .as_str()
            .unwrap()
            .contains("SIS copy is 0 h old"),
        "{mail}"
    );

    // A restart on the same stale copy: the problem is not new, no new email.
    let (dir, admin, viewer) = app.stop().await;
    let app = common::start(dir, admin, viewer).await;
    let ready = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "degraded is still serving");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(notices(&app).len(), 1, "once per problem, not once per try");

    let out = Command::new(env!("CARGO_BIN_EXE_klaxon"))
        .arg("--config")
        .arg(app.dir.path().join("klaxon.toml"))
        .args(["sis", "status", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["degraded"], true, "{status}");
    assert_eq!(status["copy"]["students"], 4, "{status}");
    let out = Command::new(env!("CARGO_BIN_EXE_klaxon"))
        .arg("--config")
        .arg(app.dir.path().join("klaxon.toml"))
        .args(["sis", "status"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Needs attention:") && text.contains("h old"),
        "{text}"
    );
    app.stop().await;
}

#[test]
fn check_config_reads_the_sis_source_secret() {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[sis.source]\nkind = \"oneroster-rest\"\nbase_url = \"https://sis.example-isd.org/ims/oneroster/v1p1\"\ntoken_url = \"https://sis.example-isd.org/oauth/token\"\nclient_id = \"klaxon\"\nclient_secret_env = \"KLAXON_TEST_SIS_SECRET_UNSET\"\nat = \"02:30\"\n{}",
        common::LOG_PROVIDER
    );
    std::fs::write(dir.path().join("klaxon.toml"), common::config_text(&extra)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_klaxon"))
        .arg("--config")
        .arg(dir.path().join("klaxon.toml"))
        .args(["check-config", "--json"])
        .env_remove("KLAXON_TEST_SIS_SECRET_UNSET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = v["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p["key"] == "sis.source.client_secret_env"
                && p["message"]
                    .as_str()
                    .unwrap()
                    .contains("KLAXON_TEST_SIS_SECRET_UNSET")),
        "{v}"
    );
}
