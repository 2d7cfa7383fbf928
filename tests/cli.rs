//! The command line as operators use it: clear errors naming keys and lines,
//! help with examples, readable output.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_klaxon");
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-district");

fn run(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.join("klaxon.toml"))
        .args(args)
        .env_remove("KLAXON_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

const GOOD: &str = r#"
[server]
listen = "127.0.0.1:1"
public_url = "https://alerts.example-isd.org"

[store]
dir = "state"

[[providers]]
name = "demo-log"
kind = "log"
channels = ["sms", "voice", "email"]
path = "outbox.jsonl"
"#;

#[test]
fn check_config_names_every_problem_with_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let broken = GOOD
        .replace("[store]\n", "[store]\nsynchronous = 3\n")
        .replace(
            "path = \"outbox.jsonl\"",
            "path = \"outbox.jsonl\"\nmax_per_secnd = 5",
        )
        + r#"
[[providers]]
name = "twilio-main"
kind = "twilio"
channels = ["sms"]
account_sid = "AC0123456789abcdef0123456789abcdef"
auth_token_env = "KLAXON_TEST_SURELY_UNSET_TOKEN"
from = ["+15555550100"]

[playbooks.lockdown]
title = "Lockdown"
severity = "emergency"
channels = ["sms"]
notify_within = "two minutes"
[playbooks.lockdown.messages]
en = "x"
"#;
    std::fs::write(dir.path().join("klaxon.toml"), broken).unwrap();
    let (code, out, _) = run(dir.path(), &["check-config"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("`store.synchronous`") && out.contains("invalid type"),
        "{out}"
    );
    assert!(
        out.contains("`providers[0].max_per_secnd`") && out.contains("line 15"),
        "{out}"
    );
    assert!(out.contains("`playbooks.lockdown.notify_within`"), "{out}");
    assert!(out.contains("two minutes"), "{out}");

    // With the other problems fixed, the missing secret is named by its key.
    let only_secret = GOOD.to_string()
        + r#"
[[providers]]
name = "twilio-main"
kind = "twilio"
channels = ["sms"]
account_sid = "AC0123456789abcdef0123456789abcdef"
auth_token_env = "KLAXON_TEST_SURELY_UNSET_TOKEN"
from = ["+15555550100"]
"#;
    std::fs::write(dir.path().join("klaxon.toml"), only_secret).unwrap();
    let (code, out, _) = run(dir.path(), &["check-config"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("providers[1].auth_token_env")
            && out.contains("KLAXON_TEST_SURELY_UNSET_TOKEN"),
        "{out}"
    );

    std::fs::write(dir.path().join("klaxon.toml"), GOOD).unwrap();
    let (code, out, _) = run(dir.path(), &["check-config"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("valid"));
}

#[test]
fn client_commands_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("klaxon.toml"), GOOD).unwrap();
    let (code, _, err) = run(dir.path(), &["trigger", "lockdown", "--school", "S1"]);
    assert_eq!(code, 1);
    assert!(err.contains("KLAXON_TOKEN"), "{err}");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.path().join("klaxon.toml"))
        .args(["status"])
        .env("KLAXON_TOKEN", "klx_x")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("cannot reach the klaxon daemon at http://127.0.0.1:1"),
        "{err}"
    );
    assert!(!err.contains("panicked") && !err.contains("backtrace"));

    let out = Command::new(BIN)
        .args(["--config", "/nonexistent/klaxon.toml", "check-config"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("/nonexistent/klaxon.toml"), "{err}");
}

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in [
        vec!["run"],
        vec!["check-config"],
        vec!["sis", "import"],
        vec!["sis", "generate"],
        vec!["sis", "status"],
        vec!["audience"],
        vec!["trigger"],
        vec!["status"],
        vec!["approve"],
        vec!["report", "contactability"],
        vec!["demo"],
        vec!["token", "create"],
        vec!["token", "list"],
        vec!["token", "revoke"],
        vec!["audit", "verify"],
        vec!["audit", "export"],
        vec!["audit", "hold"],
        vec!["audit", "release"],
        vec!["audit", "holds"],
        vec!["cap", "inspect"],
    ] {
        let out = Command::new(BIN).args(&cmd).arg("--help").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{cmd:?}");
        assert!(
            text.contains("Example"),
            "{cmd:?} help has no example:\n{text}"
        );
    }
}

#[test]
fn import_audience_preview_and_token_create() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("klaxon.toml"), GOOD).unwrap();
    let (code, out, err) = run(dir.path(), &["sis", "import", FIXTURE]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("4") && out.to_lowercase().contains("student"),
        "{out}"
    );

    let (code, out, err) = run(
        dir.path(),
        &["audience", "--school", "S1", "--role", "guardian", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["recipients"], 4, "{v}");
    assert_eq!(v["unreachable"].as_array().unwrap().len(), 1, "{v}");
    let contacts = v["contacts"].as_array().unwrap();
    assert_eq!(contacts.len(), 4, "{v}");
    assert!(
        contacts
            .iter()
            .all(|c| c["last_modified"] == "2026-08-01T00:00:00Z"),
        "each contact says when it was last changed: {v}"
    );
    let (code, out, _) = run(dir.path(), &["audience", "--school", "S1"]);
    assert_eq!(code, 0);
    assert!(out.contains("guardian"), "{out}");
    let (code, _, err) = run(dir.path(), &["audience", "--role", "wizard"]);
    assert_eq!(code, 1);
    assert!(err.contains("wizard"), "{err}");

    let (code, out, _) = run(
        dir.path(),
        &["token", "create", "--role", "viewer", "--name", "tv"],
    );
    assert_eq!(code, 0);
    let token = out.lines().last().unwrap().trim();
    assert!(token.starts_with("klx_") && token.len() > 40);
    let db = rusqlite::Connection::open(dir.path().join("state/klaxon.db")).unwrap();
    let stored: String = db
        .query_row("SELECT hash FROM api_tokens", [], |r| r.get(0))
        .unwrap();
    assert_ne!(stored, token, "only the hash is stored");
    assert_eq!(stored.len(), 64);
}
