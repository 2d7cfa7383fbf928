//! The drop folder: a good export is imported and archived as ok, a broken
//! one is archived as failed with its report, and the loop keeps going.

use std::path::Path;
use std::time::Duration;

use klaxon::config::Dur;
use klaxon::sis::{self, SisConfig, WatchOutcome};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[tokio::test]
async fn dropped_exports_are_imported_and_archived() {
    let dir = tempfile::tempdir().unwrap();
    let (watch_dir, store) = (dir.path().join("drop"), dir.path().join("store"));
    std::fs::create_dir_all(&watch_dir).unwrap();
    let cfg = SisConfig {
        watch_dir: Some(watch_dir.clone()),
        watch_interval: Dur(Duration::from_millis(40)),
        ..Default::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<WatchOutcome>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sis::watch(
        cfg,
        store.clone(),
        async move {
            let _ = stop_rx.await;
        },
        move |o| {
            let _ = tx.send(o);
        },
    ));

    // A broken export first: users.csv is listed but missing.
    let bad = watch_dir.join("broken");
    copy_dir(
        Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/data/oneroster/edfi-lms-toolkit-v1p1"
        )),
        &bad,
    );
    std::fs::remove_file(bad.join("users.csv")).unwrap();
    let o = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(o.name, "broken");
    let err = o.result.clone().unwrap_err();
    assert!(err.contains("users.csv"), "{err}");
    let archived = o.archived_to.clone().unwrap();
    assert!(
        archived
            .file_name()
            .unwrap()
            .to_string_lossy()
            .contains("-failed-broken")
    );
    assert!(archived.join("orgs.csv").is_file() && !bad.exists());
    let report = std::fs::read_to_string(format!("{}.outcome.txt", archived.display())).unwrap();
    assert!(
        report.contains("previous SIS copy stays in use"),
        "{report}"
    );
    assert!(!sis::current_path(&store).exists());

    // Then a good one.
    copy_dir(
        Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/data/oneroster/edfi-lms-toolkit-v1p1"
        )),
        &watch_dir.join("nightly"),
    );
    let o = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(o.result.as_ref().map(|r| r.students).ok(), Some(8));
    let archived = o.archived_to.unwrap();
    assert!(
        archived
            .file_name()
            .unwrap()
            .to_string_lossy()
            .contains("-ok-nightly")
    );
    assert!(
        std::fs::read_to_string(format!("{}.outcome.txt", archived.display()))
            .unwrap()
            .contains("students")
    );
    assert!(sis::current_path(&store).is_file());

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}
