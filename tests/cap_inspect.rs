//! `klaxon cap inspect` over every shared CAP file: each is understood, and
//! the verdicts read as an operator needs them (rule, schools, why not).

use std::path::Path;
use std::process::Command;

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
