//! Installing like a service: the unit passes `systemd-analyze verify`, the
//! sysusers entry creates the user the unit runs as, and the .deb metadata
//! ships what the unit expects where it expects it.

use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `None` (and a note on stderr) when the tool is not installed here; CI
/// installs it (`.ci/run`), so a skip there is a failure.
fn tool(name: &str) -> Option<()> {
    let found = Command::new(name).arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is missing in CI; .ci/run installs systemd"
        );
        eprintln!("skipped: {name} is not installed (apt-get install systemd)");
        return None;
    }
    Some(())
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    if tool("systemd-analyze").is_none() {
        return;
    }
    let unit = std::fs::read_to_string(Path::new(ROOT).join("systemd/klaxon.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/klaxon "), "{unit}");
    // verify checks that ExecStart's binary exists: point it at this build.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("klaxon.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/klaxon", env!("CARGO_BIN_EXE_klaxon")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("klaxon.service"))
        .collect();
    if !out.status.success() && about_unit.is_empty() {
        eprintln!("skipped: systemd-analyze cannot run in this container:\n{stderr}");
        return;
    }
    assert!(out.status.success(), "{stderr}");
    assert!(about_unit.is_empty(), "{}", about_unit.join("\n"));
}

#[test]
fn sysusers_creates_the_user_the_unit_runs_as() {
    if tool("systemd-sysusers").is_none() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    let out = Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.path().display()))
        .arg(Path::new(ROOT).join("systemd/klaxon.sysusers"))
        .output()
        .unwrap();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(std::env::var_os("CI").is_none(), "{stderr}");
        eprintln!("skipped: systemd-sysusers cannot run here: {stderr}");
        return;
    }
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    assert!(passwd.lines().any(|l| l.starts_with("klaxon:")), "{passwd}");
    assert!(group.lines().any(|l| l.starts_with("klaxon:")), "{group}");
    let unit = std::fs::read_to_string(Path::new(ROOT).join("systemd/klaxon.service")).unwrap();
    assert!(unit.contains("\nUser=klaxon\n") && unit.contains("\nGroup=klaxon\n"));
}

#[test]
fn the_package_ships_unit_sysusers_tmpfiles_and_example_config() {
    let manifest = std::fs::read_to_string(Path::new(ROOT).join("Cargo.toml")).unwrap();
    let doc: toml::Value = toml::from_str(&manifest).unwrap();
    let assets = doc["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .expect("[package.metadata.deb] assets");
    let pairs: Vec<(String, String)> = assets
        .iter()
        .map(|a| {
            (
                a[0].as_str().unwrap().to_string(),
                a[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (from, to) in [
        ("target/release/klaxon", "usr/bin/"),
        (
            "systemd/klaxon.service",
            "lib/systemd/system/klaxon.service",
        ),
        ("systemd/klaxon.sysusers", "usr/lib/sysusers.d/klaxon.conf"),
        ("systemd/klaxon.tmpfiles", "usr/lib/tmpfiles.d/klaxon.conf"),
        (
            "config/klaxon.example.toml",
            "usr/share/doc/klaxon/klaxon.example.toml",
        ),
    ] {
        assert!(
            pairs.iter().any(|(f, t)| f == from && t == to),
            "{from} -> {to} missing from {pairs:?}"
        );
        if !from.starts_with("target/") {
            assert!(Path::new(ROOT).join(from).is_file(), "{from}");
        }
    }
    let tmpfiles =
        std::fs::read_to_string(Path::new(ROOT).join("systemd/klaxon.tmpfiles")).unwrap();
    assert!(
        tmpfiles.contains("d /var/lib/klaxon 0700 klaxon klaxon"),
        "{tmpfiles}"
    );
}

/// Builds the .deb with `cargo deb` from the binary this test run built (in
/// a target folder of its own, so no release build is needed) and lists it
/// with `dpkg -c`. Skips when cargo-deb is not installed: it is not part of
/// CI (`cargo install cargo-deb --locked` takes about three and a half
/// minutes on the CI machine).
#[test]
fn the_deb_built_by_cargo_deb_holds_the_binary_unit_sysusers_tmpfiles_and_example_config() {
    let has = |cmd: &[&str]| {
        Command::new(cmd[0])
            .args(&cmd[1..])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has(&["cargo", "deb", "--version"]) {
        eprintln!("skipped: cargo-deb is not installed (cargo install cargo-deb --locked)");
        return;
    }
    if !has(&["dpkg-deb", "--version"]) {
        eprintln!("skipped: dpkg is not installed");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let release = work.path().join("target/release");
    std::fs::create_dir_all(&release).unwrap();
    let bin = release.join("klaxon");
    // A stripped copy packs in seconds; the unstripped one if strip is missing.
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(&bin)
        .arg(env!("CARGO_BIN_EXE_klaxon"))
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(env!("CARGO_BIN_EXE_klaxon"), &bin).unwrap();
    }
    let deb = work.path().join("klaxon.deb");
    let out = Command::new("cargo")
        .args([
            "deb",
            "--no-build",
            "--no-strip",
            "--fast",
            "--manifest-path",
        ])
        .arg(Path::new(ROOT).join("Cargo.toml"))
        .arg("-o")
        .arg(&deb)
        .env("CARGO_TARGET_DIR", work.path().join("target"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo deb failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = Command::new("dpkg").arg("-c").arg(&deb).output().unwrap();
    assert!(list.status.success());
    let list = String::from_utf8_lossy(&list.stdout);
    // `dpkg -c` prints `mode owner size date time ./path`.
    let entries: Vec<(&str, &str)> = list
        .lines()
        .filter_map(|l| {
            let mode = l.split_whitespace().next()?;
            let path = l.split_whitespace().last()?;
            Some((mode, path))
        })
        .collect();
    for (path, mode) in [
        ("./usr/bin/klaxon", "-rwxr-xr-x"),
        ("./lib/systemd/system/klaxon.service", "-rw-r--r--"),
        ("./usr/lib/sysusers.d/klaxon.conf", "-rw-r--r--"),
        ("./usr/lib/tmpfiles.d/klaxon.conf", "-rw-r--r--"),
        ("./usr/share/doc/klaxon/klaxon.example.toml", "-rw-r--r--"),
    ] {
        assert!(
            entries.contains(&(mode, path)),
            "{path} ({mode}) is not in the package:\n{list}"
        );
    }
    // The unit in the package is the one in the tree.
    let unit = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -xOf - ./lib/systemd/system/klaxon.service",
            deb.display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&unit.stdout),
        std::fs::read_to_string(Path::new(ROOT).join("systemd/klaxon.service")).unwrap()
    );
    let depends = Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .arg("Depends")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&depends.stdout).contains("systemd"),
        "{}",
        String::from_utf8_lossy(&depends.stdout)
    );
}
