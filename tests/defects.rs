//! The smaller defects of issue 12, each reproduced: a closed pipe,
//! a config that is not UTF-8, a listed file missing from an export, a huge
//! field value in the import report, a public plain-http listener.

use std::path::Path;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_klaxon");
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-district");

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

fn klaxon(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--config")
        .arg(dir.join("klaxon.toml"))
        .args(args)
        .output()
        .unwrap()
}

fn copy_fixture(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(FIXTURE).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn a_closed_pipe_ends_the_cli_quietly_with_0() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("klaxon.toml"), GOOD).unwrap();
    assert!(
        klaxon(dir.path(), &["sis", "import", FIXTURE])
            .status
            .success()
    );
    for args in [
        &["audience", "--school", "S1"][..],
        &["audience", "--school", "S1", "--json"][..],
        &["check-config"][..],
    ] {
        // The reader is gone before klaxon writes its first byte, as with
        // `| head -1` on a long listing.
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(dir.path().join("klaxon.toml"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}

#[test]
fn check_config_exits_2_on_invalid_utf8_and_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = GOOD.as_bytes().to_vec();
    text.extend_from_slice(b"# caf\xe9\n");
    std::fs::write(dir.path().join("klaxon.toml"), text).unwrap();
    let out = klaxon(dir.path(), &["check-config"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("line 14") && stdout.contains("UTF-8"),
        "{stdout}"
    );
}

#[test]
fn a_file_the_manifest_lists_but_the_export_lacks_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export");
    copy_fixture(&export);
    let manifest = std::fs::read_to_string(export.join("manifest.csv")).unwrap();
    std::fs::write(
        export.join("manifest.csv"),
        manifest.replace("file.courses,absent", "file.courses,bulk"),
    )
    .unwrap();
    std::fs::write(dir.path().join("klaxon.toml"), GOOD).unwrap();
    let out = klaxon(dir.path(), &["sis", "import", export.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("courses.csv"), "{err}");
    assert!(!dir.path().join("state/sis.db").exists());
}

#[test]
fn a_huge_field_value_is_cut_in_the_import_report() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export");
    copy_fixture(&export);
    let users = std::fs::read_to_string(export.join("users.csv")).unwrap();
    let huge = "9".repeat(2 * 1024 * 1024);
    // A guardian's phone: not a number klaxon can dial, so it is reported.
    let mut lines: Vec<String> = users.lines().map(str::to_string).collect();
    let row = lines
        .iter()
        .position(|l| l.contains(",guardian,"))
        .expect("a guardian in the fixture");
    let mut fields: Vec<String> = lines[row].split(',').map(str::to_string).collect();
    fields[14] = huge.clone();
    lines[row] = fields.join(",");
    std::fs::write(export.join("users.csv"), lines.join("\n") + "\n").unwrap();
    std::fs::write(dir.path().join("klaxon.toml"), GOOD).unwrap();
    let out = klaxon(
        dir.path(),
        &["sis", "import", export.to_str().unwrap(), "--json"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("{stdout}{stderr}");
    assert!(
        all.len() < 64 * 1024,
        "the report echoes the 2 MB value ({} bytes)",
        all.len()
    );
    assert!(
        all.contains(&format!("… ({} bytes)", huge.len())),
        "the cut value says its size: {all}"
    );
}

/// Found by the 10-minute fuzz run: a header whose column name is 5,000
/// characters long (and a row that does not fit it) was quoted whole in the
/// refusal, a 5 kB sentence.
#[test]
fn a_huge_column_name_is_cut_in_the_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export");
    copy_fixture(&export);
    let classes = std::fs::read_to_string(export.join("classes.csv")).unwrap();
    let lines: Vec<&str> = classes.lines().collect();
    let header: Vec<&str> = lines[0].split(',').collect();
    let at = header
        .iter()
        .position(|c| *c == "classType")
        .expect("classType column");
    let long = format!("classType{}", "9".repeat(5000));
    let mut bytes: Vec<u8> = Vec::new();
    for (i, c) in header.iter().enumerate() {
        if i > 0 {
            bytes.push(b',');
        }
        bytes.extend_from_slice(if i == at {
            long.as_bytes()
        } else {
            c.as_bytes()
        });
    }
    bytes.push(b'\n');
    // The first row: not UTF-8 under the long column.
    for (i, f) in lines[1].split(',').enumerate() {
        if i > 0 {
            bytes.push(b',');
        }
        bytes.extend_from_slice(f.as_bytes());
        if i == at {
            bytes.push(0xff);
        }
    }
    bytes.push(b'\n');
    for l in &lines[2..] {
        bytes.extend_from_slice(l.as_bytes());
        bytes.push(b'\n');
    }
    std::fs::write(export.join("classes.csv"), bytes).unwrap();
    std::fs::write(dir.path().join("klaxon.toml"), GOOD).unwrap();
    let out = klaxon(dir.path(), &["sis", "import", export.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("classes.csv"), "{err}");
    assert!(err.len() < 1024, "{} bytes: {err}", err.len());
}

/// Found by the second 10-minute fuzz run: 5,000 digits inserted into a
/// file name listed in manifest.csv were quoted whole ("999…classes.csv:
/// required file is missing").
#[test]
fn a_huge_file_name_in_the_manifest_is_cut_in_the_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export");
    copy_fixture(&export);
    let manifest = std::fs::read_to_string(export.join("manifest.csv")).unwrap();
    let long = format!("file.{}classes", "9".repeat(5000));
    std::fs::write(
        export.join("manifest.csv"),
        manifest.replacen("file.classes", &long, 1),
    )
    .unwrap();
    std::fs::write(dir.path().join("klaxon.toml"), GOOD).unwrap();
    let out = klaxon(dir.path(), &["sis", "import", export.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.len() < 1024,
        "{} bytes: {}",
        err.len(),
        &err[..200.min(err.len())]
    );
}
