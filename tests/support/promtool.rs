//! Checks a `/metrics` scrape with Prometheus's own `promtool check metrics`
//! (Debian package `prometheus`): the exposition format parses, and the lint
//! rules hold (HELP on every family, counters end in `_total`, units in
//! names). Our own parser would only agree with our own renderer.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

pub const PROMTOOL: &str = "/usr/bin/promtool";

/// Fails the test with promtool's own words if it finds any problem in
/// `text`. When promtool is not installed: fails in CI, and otherwise says it
/// skipped the check and returns.
pub fn check_metrics(text: &str) {
    let Some(out) = run_promtool(text) else {
        return;
    };
    if !out.status.success() {
        panic!(
            "promtool check metrics rejected the scrape ({}):\n{}{}\n--- the scrape ---\n{text}",
            meaning(out.status.code()),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }
}

/// Runs `promtool check metrics` with `text` on its standard input. `None`
/// when promtool is missing and `CI` is unset (the skip is printed).
pub fn run_promtool(text: &str) -> Option<Output> {
    if !Path::new(PROMTOOL).exists() {
        let msg = format!(
            "{PROMTOOL} is missing; install it with `apt-get install prometheus` (.ci/run does this)"
        );
        if std::env::var_os("CI").is_some() {
            panic!("The metrics format check needs promtool in CI: {msg}.");
        }
        eprintln!("Skipping the promtool check: {msg}.");
        return None;
    }
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("Cannot run {PROMTOOL}: {e}."));
    // A scrape is small; promtool reads all of stdin before it writes, so
    // writing first and then reading cannot deadlock.
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(text.as_bytes())
        .expect("promtool reads the scrape");
    drop(stdin);
    Some(child.wait_with_output().expect("promtool finishes"))
}

/// promtool's exit codes: 1 is a parse error, 3 lint problems.
fn meaning(code: Option<i32>) -> &'static str {
    match code {
        Some(1) => "the text does not parse",
        Some(3) => "lint problems",
        _ => "unexpected exit",
    }
}
