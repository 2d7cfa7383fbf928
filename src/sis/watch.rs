//! The drop folder: the district's nightly job drops a OneRoster export (a
//! sub-folder or a zip) into `sis.watch_dir`; once its files have stopped
//! changing for one poll it is imported, then moved to `archive/` with a
//! report beside it. A bad export is archived as failed; the loop goes on.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::SisConfig;
use super::import::{ImportOptions, ImportReport, import};

/// The result of one dropped export, for the audit log and metrics.
#[derive(Debug, Clone)]
pub struct WatchOutcome {
    /// File or folder name as dropped.
    pub name: String,
    /// Where it was moved to; `None` if the move failed (it is then left in place and not retried).
    pub archived_to: Option<PathBuf>,
    /// The import report, or the error message naming file, line and field.
    pub result: Result<ImportReport, String>,
}

/// What a candidate looked like at a poll: file count, total size, latest mtime.
type Signature = (u64, u64, Option<SystemTime>);

/// Polls `cfg.watch_dir` every `cfg.watch_interval` until `shutdown`
/// completes. Returns at once if no watch folder is configured.
pub async fn watch(
    cfg: SisConfig,
    store_dir: PathBuf,
    shutdown: impl Future<Output = ()>,
    mut on_outcome: impl FnMut(WatchOutcome) + Send,
) {
    let Some(dir) = cfg.watch_dir.clone() else {
        return;
    };
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(
        cfg.watch_interval
            .0
            .max(std::time::Duration::from_millis(10)),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: HashMap<PathBuf, Signature> = HashMap::new();
    // Exports that could not be moved away: never imported twice.
    let mut stuck: HashSet<PathBuf> = HashSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        let scan_dir = dir.clone();
        let now = match tokio::task::spawn_blocking(move || scan(&scan_dir)).await {
            Ok(Ok(now)) => now,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, dir = %dir.display(), "Cannot read the SIS watch folder.");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "SIS watch folder scan panicked.");
                continue;
            }
        };
        for (path, sig) in &now {
            if stuck.contains(path) || last.get(path) != Some(sig) {
                continue;
            }
            // Unchanged for a whole interval: the writer is done.
            let (cfg2, store2, src) = (cfg.clone(), store_dir.clone(), path.clone());
            let result = tokio::task::spawn_blocking(move || {
                import(&src, &store2, &cfg2, &ImportOptions::default())
            })
            .await
            .unwrap_or_else(|e| {
                Err(super::ImportError::NotAnExport {
                    path: path.clone(),
                    reason: format!("import panicked: {e}"),
                })
            });
            let outcome = archive(&dir, path, result.map_err(|e| e.to_string()));
            match &outcome.result {
                Ok(r) => {
                    tracing::info!(name = %outcome.name, students = r.students, warnings = r.warnings_total, "SIS export imported from the watch folder.")
                }
                Err(e) => {
                    tracing::warn!(name = %outcome.name, error = %e, "SIS export from the watch folder refused.")
                }
            }
            if outcome.archived_to.is_none() {
                stuck.insert(path.clone());
            }
            on_outcome(outcome);
        }
        last = now.into_iter().collect();
        stuck.retain(|p| p.exists());
    }
}

/// Candidates in the folder: sub-folders (but `archive/`) and `.zip` files,
/// ignoring hidden names (a writer's temporary files).
fn scan(dir: &Path) -> std::io::Result<Vec<(PathBuf, Signature)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "archive" {
            continue;
        }
        let path = entry.path();
        let meta = entry.metadata()?;
        if meta.is_dir() {
            let has_manifest = path.join("manifest.csv").is_file()
                || std::fs::read_dir(&path)?
                    .filter_map(|e| e.ok())
                    .any(|e| e.path().join("manifest.csv").is_file());
            if has_manifest {
                out.push((path.clone(), signature(&path)?));
            }
        } else if name.to_ascii_lowercase().ends_with(".zip") {
            out.push((path, (1, meta.len(), meta.modified().ok())));
        }
    }
    Ok(out)
}

fn signature(dir: &Path) -> std::io::Result<Signature> {
    let (mut n, mut size, mut newest) = (0, 0, None);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let m = e.metadata()?;
            if m.is_dir() {
                stack.push(e.path());
            } else {
                n += 1;
                size += m.len();
                newest = newest.max(m.modified().ok());
            }
        }
    }
    Ok((n, size, newest))
}

/// Moves the export to `archive/<timestamp>-ok|failed-<name>` and writes
/// `<that name>.outcome.txt` beside it.
fn archive(dir: &Path, path: &Path, result: Result<ImportReport, String>) -> WatchOutcome {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let tag = if result.is_ok() { "ok" } else { "failed" };
    let archive_dir = dir.join("archive");
    let target = archive_dir.join(format!("{stamp}-{tag}-{name}"));
    let moved = std::fs::create_dir_all(&archive_dir).and_then(|_| std::fs::rename(path, &target));
    let text = match &result {
        Ok(r) => format!("{r}"),
        Err(e) => format!("import of {name} refused; the previous SIS copy stays in use\n{e}\n"),
    };
    let report_path = archive_dir.join(format!("{stamp}-{tag}-{name}.outcome.txt"));
    if let Err(e) = std::fs::write(&report_path, text) {
        tracing::warn!(error = %e, path = %report_path.display(), "Cannot write the SIS import outcome.");
    }
    let archived_to = match moved {
        Ok(()) => Some(target),
        Err(e) => {
            tracing::error!(error = %e, name = %name, "Cannot move the SIS export to the archive; it will not be imported again.");
            None
        }
    };
    WatchOutcome {
        name,
        archived_to,
        result,
    }
}
