//! The CAP drop folder: IPAWS relays and county EOC tools write CAP files
//! (`.xml`, `.cap`, `.json`) into `triggers.watch_dir`. Once a file has not
//! changed for one poll it is handled like a feed entry, then moved to
//! `archive/` with a `.outcome.json` report beside it. Same pattern as the
//! SIS drop folder (`sis::watch`), which is wired to the SIS import.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;
use tokio::sync::watch;

use crate::app::AppState;
use crate::config::{Dur, relative_to};

/// `[triggers]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TriggersConfig {
    /// Folder watched for CAP files; none: no drop folder.
    pub watch_dir: Option<PathBuf>,
    /// How often it is looked at.
    pub watch_interval: Dur,
}

impl Default for TriggersConfig {
    fn default() -> Self {
        TriggersConfig {
            watch_dir: None,
            watch_interval: Dur::secs(5),
        }
    }
}

type Signature = (u64, Option<SystemTime>);

/// Starts the drop-folder task, if a folder is configured.
pub fn spawn(
    state: &Arc<AppState>,
    mut stop: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let dir = relative_to(
        &state.config.base_dir,
        state.config.triggers.watch_dir.as_ref()?,
    );
    let every = state
        .config
        .triggers
        .watch_interval
        .0
        .max(std::time::Duration::from_millis(10));
    let state = state.clone();
    Some(tokio::spawn(async move {
        let mut last: HashMap<PathBuf, Signature> = HashMap::new();
        let mut failing: Option<String> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let now = match scan(&dir) {
                Ok(n) => {
                    failing = None;
                    n
                }
                Err(e) => {
                    // Once per kind of problem, not every poll.
                    if failing.as_deref() != Some(&e.to_string()) {
                        tracing::warn!(dir = %dir.display(), error = %e, "Cannot read the CAP drop folder.");
                        failing = Some(e.to_string());
                    }
                    continue;
                }
            };
            for (path, sig) in &now {
                if last.get(path) == Some(sig) {
                    handle_file(&state, &dir, path).await;
                }
            }
            last = now.into_iter().collect();
        }
    }))
}

fn scan(dir: &Path) -> std::io::Result<Vec<(PathBuf, Signature)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if name.starts_with('.') || !matches!(ext.as_deref(), Some("xml" | "cap" | "json")) {
            continue;
        }
        let meta = entry.metadata()?;
        if meta.is_file() {
            out.push((path, (meta.len(), meta.modified().ok())));
        }
    }
    Ok(out)
}

/// Handles one file and archives it with its outcome.
async fn handle_file(state: &AppState, dir: &Path, path: &Path) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut report = serde_json::json!({ "file": name });
    let ok = match std::fs::read(path) {
        Err(e) => {
            report["error"] = format!("cannot read: {e}").into();
            false
        }
        Ok(bytes) => match crate::cap::parse_document(&bytes) {
            Err(e) => {
                report["error"] = format!("cannot be understood: {e}").into();
                false
            }
            Ok(doc) => {
                let mut handled = Vec::new();
                let mut all_ok = true;
                for alert in &doc.alerts {
                    let act = super::cap_act::handle(state, alert, "watch-folder");
                    match crate::store::audit::with_origin("watch-folder", act).await {
                        Ok(h) => handled.push(serde_json::json!({
                            "identifier": alert.identifier, "outcome": h.outcome,
                            "alert_id": h.alert_id, "detail": h.detail,
                        })),
                        Err(e) => {
                            all_ok = false;
                            handled.push(serde_json::json!({
                                "identifier": alert.identifier, "outcome": "failed", "error": e.to_string(),
                            }));
                        }
                    }
                }
                report["alerts"] = handled.into();
                report["skipped"] = doc
                    .skipped
                    .iter()
                    .map(|s| format!("entry {}: {}", s.index + 1, s.error))
                    .collect::<Vec<_>>()
                    .into();
                all_ok
            }
        },
    };
    let archive = dir.join("archive");
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let base = format!("{stamp}-{}{name}", if ok { "" } else { "failed-" });
    let moved = std::fs::create_dir_all(&archive)
        .and_then(|_| std::fs::rename(path, archive.join(&base)))
        .and_then(|_| {
            std::fs::write(
                archive.join(format!("{base}.outcome.json")),
                serde_json::to_string_pretty(&report).unwrap_or_default(),
            )
        });
    if ok {
        tracing::info!(file = %name, "CAP file from the drop folder handled and archived.");
    } else {
        tracing::warn!(file = %name, error = %report["error"], "CAP file from the drop folder failed; archived as failed.");
    }
    if let Err(e) = moved {
        // Left in place, it would be handled again each poll; handling is
        // idempotent (dedup by identifier + sender + sent), so that is safe.
        tracing::error!(file = %name, error = %e, "Cannot archive a CAP file from the drop folder.");
    }
}
