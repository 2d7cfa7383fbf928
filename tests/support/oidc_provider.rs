//! A real OpenID Connect provider for sign-in tests: panva's certified
//! `oidc-provider` (npm) run with node from `tests/support/oidc/`. Its
//! packages are installed once with `npm ci` into `target/oidc-provider/`
//! (kept between runs) from the committed lock file.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/oidc");

/// One `npm ci` at a time across the tests of a binary.
static INSTALL: Mutex<()> = Mutex::new(());

/// Why the provider cannot run here: `None` when node (20 or later) and
/// npm are installed.
pub fn unavailable() -> Option<String> {
    let out = std::process::Command::new("node").arg("--version").output();
    let version = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => return Some("node is not installed (Debian package nodejs)".into()),
    };
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 20 {
        return Some(format!(
            "node {version} is too old for oidc-provider 9 (20 or later)"
        ));
    }
    if std::process::Command::new("npm")
        .arg("--version")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        return Some("npm is not installed (Debian package npm)".into());
    }
    None
}

/// The folder with the provider script and its installed packages.
fn prepared() -> PathBuf {
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("oidc-provider");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["package.json", "package-lock.json", "provider.mjs"] {
        std::fs::copy(Path::new(SOURCE).join(f), dir.join(f)).unwrap();
    }
    // Reinstall only when the lock file changed since the last install.
    let lock = std::fs::read(dir.join("package-lock.json")).unwrap();
    let stamp = dir.join("installed.lock");
    if std::fs::read(&stamp).ok().as_deref() != Some(&lock[..])
        || !dir.join("node_modules/oidc-provider").exists()
    {
        let out = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .output()
            .expect("npm runs");
        assert!(
            out.status.success(),
            "npm ci in {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&stamp, &lock).unwrap();
    }
    dir
}

/// A running provider; stopped when dropped.
pub struct OidcProvider {
    pub issuer: String,
    _child: Child,
}

/// Starts the provider with one confidential client and `accounts`
/// (`{"alice": {"email": …, "groups": [...]}}`); any password signs in.
pub async fn start(
    client_id: &str,
    client_secret: &str,
    redirect_uri: &str,
    accounts: &serde_json::Value,
) -> OidcProvider {
    let dir = tokio::task::spawn_blocking(prepared).await.unwrap();
    let mut child = Command::new("node")
        .arg("provider.mjs")
        .current_dir(&dir)
        .env("CLIENT_ID", client_id)
        .env("CLIENT_SECRET", client_secret)
        .env("REDIRECT_URI", redirect_uri)
        .env("ACCOUNTS", accounts.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
        .await
        .expect("the provider starts within 30 s")
        .unwrap()
        .expect("the provider prints its issuer");
    // Keep reading: a closed pipe would kill node at its next log line.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    OidcProvider {
        issuer: v["issuer"].as_str().unwrap().to_string(),
        _child: child,
    }
}
