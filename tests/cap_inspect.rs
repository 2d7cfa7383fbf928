//! `klaxon cap inspect` over every shared CAP file: each is understood, and
//! the verdicts read as an operator needs them (rule, schools, why not).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_klaxon");
const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/cap");

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:1"
public_url = "https://alerts.example-isd.org"
timezone = "America/Chicago"

[store]
dir = "state"

[[providers]]
name = "demo-log"
kind = "log"
channels = ["sms", "voice", "email"]
path = "outbox.jsonl"

[[rules]]
name = "blizzard-closure"
events = ["Blizzard Warning", "Winter Storm Warning"]
zones = ["MNZ021"]
min_severity = "Severe"
playbook = "weather-closure"
approval = "auto"

[[rules]]
name = "storm-shelter"
events = ["Severe Thunderstorm Warning"]
zones = ["ILC013"]
playbook = "shelter"

[[rules]]
name = "eas-test"
events = ["Required Monthly Test"]
zones = ["072115"]
playbook = "weather-closure"

[schools."north-shore-high"]
zones = ["MNZ020"]

[schools."jersey-high"]
location = [39.02, -90.66]

[schools."carrollton-elem"]
location = [39.30, -90.41]
"#;

fn inspect(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.join("klaxon.toml"))
        .args(["cap", "inspect"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("klaxon.toml"), CONFIG).unwrap();
    dir
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if matches!(p.extension().and_then(|x| x.to_str()), Some("xml" | "json")) {
            out.push(p);
        }
    }
}

#[test]
fn every_shared_cap_file_is_understood() {
    let dir = setup();
    let mut all = Vec::new();
    files(Path::new(DATA), &mut all);
    assert_eq!(all.len(), 10, "{all:?}");
    for f in &all {
        let (code, out, err) = inspect(dir.path(), &[f.to_str().unwrap(), "--json"]);
        assert_eq!(code, 0, "{}: {err}", f.display());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let alerts = v["alerts"].as_array().unwrap();
        assert!(!alerts.is_empty(), "{}", f.display());
        assert!(
            v["skipped"].as_array().unwrap().is_empty(),
            "{}: {v}",
            f.display()
        );
        assert_eq!(v["store_checked"], false);
        for a in alerts {
            assert!(a["summary"].as_str().is_some_and(|s| !s.is_empty()), "{a}");
        }
        // And the text form for people.
        let (code, out, _) = inspect(dir.path(), &[f.to_str().unwrap()]);
        assert_eq!(code, 0);
        assert!(out.contains("alert(s)"), "{out}");
    }
}

#[test]
fn today_every_shared_alert_is_expired_or_not_for_us() {
    let dir = setup();
    let f = format!("{DATA}/nws/cap11/nws-blizzard-warning-MNZ020-021-2021-12-27.xml");
    let (_, out, _) = inspect(dir.path(), &[&f, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["alerts"][0]["action"]["action"], "skip");
    assert_eq!(v["alerts"][0]["action"]["reason"], "expired");
    assert_eq!(v["alerts"][0]["rule"], "blizzard-closure");
}

#[test]
fn replayed_at_the_time_the_verdicts_name_rule_schools_and_reasons() {
    let dir = setup();
    // The blizzard, while it was in force: the closure goes to the school in
    // MNZ020 (the rule matches on MNZ021, the school is placed by MNZ020).
    let f = format!("{DATA}/nws/cap11/nws-blizzard-warning-MNZ020-021-2021-12-27.xml");
    let (code, out, err) = inspect(
        dir.path(),
        &[&f, "--at", "2021-12-27T12:00:00-06:00", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let a = &v["alerts"][0];
    assert_eq!(a["action"]["action"], "create", "{a}");
    assert_eq!(a["action"]["playbook"], "weather-closure");
    assert_eq!(a["action"]["hold"], false);
    assert_eq!(
        a["schools"]["schools"],
        serde_json::json!(["north-shore-high"])
    );
    assert!(
        a["action"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Blizzard Warning for Southern Cook"),
        "{a}"
    );
    let (_, text, _) = inspect(dir.path(), &[&f, "--at", "2021-12-27T12:00:00-06:00"]);
    assert!(text.contains("blizzard-closure"), "{text}");
    assert!(
        text.contains(
            "would start a `weather-closure` alert for 1 school(s): north-shore-high, sent at once"
        ),
        "{text}"
    );

    // The thunderstorm polygon covers Jerseyville, not Carrollton; the rule
    // has no approval key, so it is held.
    let f = format!("{DATA}/nws/cap11/nws-severe-thunderstorm-warning-IL-2012-03-15.xml");
    let (_, out, _) = inspect(
        dir.path(),
        &[&f, "--at", "2012-03-15T22:10:00-05:00", "--json"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let a = &v["alerts"][0];
    assert_eq!(
        a["schools"]["schools"],
        serde_json::json!(["jersey-high"]),
        "{a}"
    );
    assert_eq!(a["action"]["hold"], true);

    // The RMT is a test although its status says Actual.
    let f = format!("{DATA}/ipaws/ipaws-required-monthly-test-PR-2019-05-30.xml");
    let (_, out, _) = inspect(
        dir.path(),
        &[&f, "--at", "2019-05-30T11:56:00-04:00", "--json"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["alerts"][0]["action"]["reason"], "test", "{v}");
    assert!(v["alerts"][0]["summary"].as_str().unwrap().contains("RMT"));

    // An event no rule names; a named event outside the rule's zones.
    let f = format!("{DATA}/nws/cap11/nws-special-weather-statement-GA-2012-03-15.xml");
    let (_, out, _) = inspect(
        dir.path(),
        &[&f, "--at", "2012-03-15T22:00:00-04:00", "--json"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["alerts"][0]["action"]["reason"], "no-rule", "{v}");
    let f = format!("{DATA}/oasis-examples/cap12-appendix-A2-severe-thunderstorm-warning.xml");
    let (_, out, _) = inspect(
        dir.path(),
        &[&f, "--at", "2003-06-17T14:00:00-07:00", "--json"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["alerts"][0]["action"]["reason"], "no-rule", "{v}");

    // A cancel of something klaxon never acted on is recorded, nothing sent.
    let f = format!("{DATA}/ipaws/ipaws-cancel-with-references-NV-2019-04-19.xml");
    let (_, text, _) = inspect(dir.path(), &[&f]);
    assert!(
        text.contains("cancels an alert klaxon did not act on"),
        "{text}"
    );
}

#[test]
fn a_document_that_cannot_be_understood_exits_non_zero_naming_the_problem() {
    let dir = setup();
    let bad = dir.path().join("bad.xml");
    std::fs::write(
        &bad,
        "<alert xmlns='urn:oasis:names:tc:emergency:cap:1.2'><identifier>x",
    )
    .unwrap();
    let (code, out, err) = inspect(dir.path(), &[bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("bad.xml cannot be understood") && err.contains("malformed XML"),
        "{err}"
    );
    std::fs::write(&bad, "<rss/>").unwrap();
    let (code, _, err) = inspect(dir.path(), &[bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("not a CAP document"), "{err}");
    let (code, _, err) = inspect(dir.path(), &["/nonexistent.xml"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read /nonexistent.xml"), "{err}");
}

#[test]
fn check_config_reads_webhook_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("klaxon.toml"),
        format!(
            "{CONFIG}\n[webhooks.panic]\nsecret_env = \"KLAXON_TEST_SURELY_UNSET_PANIC\"\nplaybooks = [\"lockdown\"]\n"
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.path().join("klaxon.toml"))
        .arg("check-config")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("webhooks.panic.secret_env")
            && text.contains("KLAXON_TEST_SURELY_UNSET_PANIC"),
        "{text}"
    );
}

/// A `cap` or `atom` feed without `user_agent` is polled as `klaxon/VERSION`,
/// which names no contact: `check-config` warns (the config stays valid); an
/// `nws-api` feed without one is refused (api.weather.gov blocks anonymous
/// clients), and a `user_agent` without a contact is refused for every kind.
#[test]
fn check_config_warns_about_a_feed_polled_without_a_contact() {
    let check = |feeds: &str| -> (Option<i32>, serde_json::Value) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("klaxon.toml"), format!("{CONFIG}\n{feeds}")).unwrap();
        let out = Command::new(BIN)
            .arg("--config")
            .arg(dir.path().join("klaxon.toml"))
            .args(["check-config", "--json"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (
            out.status.code(),
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
        )
    };
    // The feeds' (the built-in playbooks have warnings of their own).
    let keys = |v: &serde_json::Value, list: &str| -> Vec<String> {
        let mut keys: Vec<String> = v[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["key"].as_str().unwrap().to_string())
            .filter(|k| k.starts_with("feeds"))
            .collect();
        keys.sort();
        keys
    };

    let (code, v) = check(
        r#"
[[feeds]]
name = "ipaws"
kind = "atom"
url = "https://example.org/ipaws.atom"

[[feeds]]
name = "county"
kind = "cap"
url = "https://example.org/county.xml"
user_agent = "klaxon (it@example-isd.org)"
"#,
    );
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(keys(&v, "warnings"), vec!["feeds[0].user_agent"], "{v}");
    let message = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["key"] == "feeds[0].user_agent")
        .unwrap()["message"]
        .as_str()
        .unwrap();
    assert!(
        message.contains("`ipaws`")
            && message.contains(&format!("klaxon/{}", env!("CARGO_PKG_VERSION")))
            && message.contains("names no contact"),
        "{message}"
    );

    let (code, v) = check(
        r#"
[[feeds]]
name = "nws"
kind = "nws-api"
url = "https://api.weather.gov/alerts/active?zone=TXZ213"

[[feeds]]
name = "county"
kind = "cap"
url = "https://example.org/county.xml"
user_agent = "klaxon"
"#,
    );
    assert_eq!(code, Some(2), "{v}");
    assert_eq!(
        keys(&v, "problems"),
        vec!["feeds[0].user_agent", "feeds[1].user_agent"],
        "{v}"
    );
}

/// A Winter Storm Warning for TXZ213, in force for two hours.
fn storm(id: &str) -> String {
    let now = jiff::Timestamp::now();
    let expires = now + jiff::SignedDuration::from_hours(2);
    format!(
        r#"<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{id}</identifier><sender>w-nws.webmaster@noaa.gov</sender><sent>{now}</sent>
  <status>Actual</status><msgType>Alert</msgType><scope>Public</scope>
  <info><event>Winter Storm Warning</event>
    <urgency>Expected</urgency><severity>Severe</severity><certainty>Likely</certainty>
    <expires>{expires}</expires>
    <area><areaDesc>Travis County</areaDesc>
      <geocode><valueName>UGC</valueName><value>TXZ213</value></geocode></area>
  </info>
</alert>"#
    )
}

/// With the daemon's own config and store, `cap inspect` tells a message the
/// daemon already acted on ("already handled", naming the alert), and names
/// a rule whose zones a real NWS warning does not list ("no zone").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_store_inspect_tells_already_handled_and_no_zone() {
    let app = common::spawn_app_with(&format!(
        r#"{}
[[rules]]
name = "winter-closure"
events = ["Winter Storm Warning", "Blizzard Warning"]
zones = ["TXZ213"]
playbook = "weather-closure"
approval = "auto"

[triggers]
watch_dir = "incoming"
watch_interval = "100ms"
"#,
        common::LOG_PROVIDER
    ))
    .await;
    let doc = app.path().join("storm.xml");
    std::fs::write(&doc, storm("WS-1")).unwrap();
    // Before the daemon sees it: it would start the closure.
    let (code, out, err) = inspect(&app.path(), &[doc.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["store_checked"], true, "{v}");
    assert_eq!(v["alerts"][0]["action"]["action"], "create", "{v}");

    // The daemon handles it from its drop folder.
    let incoming = app.path().join("incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    std::fs::copy(&doc, incoming.join("storm.xml")).unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    let id = loop {
        let id: Option<i64> = app
            .db()
            .query_row(
                "SELECT alert_id FROM cap_messages WHERE identifier = 'WS-1' AND outcome = 'sent'",
                [],
                |r| r.get(0),
            )
            .ok()
            .flatten();
        if let Some(id) = id {
            break id;
        }
        assert!(Instant::now() < until, "the daemon did not act on the file");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (dir, _, _) = app.stop().await;

    // Against the same config and store: already handled, by that alert.
    let (code, out, err) = inspect(dir.path(), &[doc.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let a = &v["alerts"][0];
    assert_eq!(a["action"]["action"], "already-handled", "{v}");
    assert_eq!(a["action"]["outcome"], "sent", "{v}");
    assert_eq!(a["action"]["alert_id"], id, "{v}");
    let (_, text, _) = inspect(dir.path(), &[doc.to_str().unwrap()]);
    assert!(
        text.contains(&format!("already handled (sent, alert {id}); nothing more")),
        "{text}"
    );
    assert!(!text.contains("No klaxon store found"), "{text}");

    // The shared blizzard warning names an event of the rule, in zones it
    // does not list (MNZ020/021, the rule has TXZ213): no zone.
    let f = format!("{DATA}/nws/cap11/nws-blizzard-warning-MNZ020-021-2021-12-27.xml");
    let (code, out, _) = inspect(
        dir.path(),
        &[&f, "--at", "2021-12-27T12:00:00-06:00", "--json"],
    );
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let a = &v["alerts"][0];
    assert_eq!(a["action"]["action"], "skip", "{a}");
    assert_eq!(a["action"]["reason"], "no-zone", "{a}");
    assert_eq!(a["rule"], "winter-closure", "{a}");
    let (_, text, _) = inspect(dir.path(), &[&f, "--at", "2021-12-27T12:00:00-06:00"]);
    assert!(
        text.contains(
            "rule `winter-closure` names this event, but none of its zones is in the alert"
        ),
        "{text}"
    );
}
