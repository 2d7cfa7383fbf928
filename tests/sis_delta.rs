//! Delta exports merged on top of the catalyst OneRoster 1.2 full set: the
//! next alert uses the changed numbers, deleted students drop out, and a
//! delta with no base, or one that would orphan students, is refused with
//! the previous copy kept.

mod common;

use std::path::{Path, PathBuf};

use klaxon::sis::{self, ImportError, ImportOptions, ImportReport, SisConfig};
use klaxon::store::tokens::ApiRole;
use serde_json::json;

fn full_set() -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/oneroster/catalyst-moodle-enrol_oneroster/v1p2_full"
    ))
    .to_path_buf()
}

/// Writes a delta export into `dir/name`: a 1.2 manifest listing `files` as
/// delta, and each file's text.
fn write_delta(dir: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    let mut manifest =
        "propertyName,value\nmanifest.version,1.0\noneroster.version,1.2\nfile.orgs,absent\n"
            .to_string();
    for (file, text) in files {
        manifest.push_str(&format!("file.{file},delta\n"));
        std::fs::write(out.join(format!("{file}.csv")), text).unwrap();
    }
    std::fs::write(out.join("manifest.csv"), manifest).unwrap();
    out
}

const USERS_HEADER: &str = "sourcedId,status,dateLastModified,enabledUser,username,userIds,givenName,familyName,middleName,identifier,email,sms,phone,agentSourcedIds,grades,password,userMasterIdentifier,preferredGivenName,preferredMiddleName,preferredFamilyName,primaryOrgSourcedId,pronouns";

/// The delta counterpart of the full set: John Doe (guardian of Mary and of
/// mmichel) has new numbers; mmichel left the district (user, role and
/// enrollment deleted).
fn nightly_delta(dir: &Path) -> PathBuf {
    let users = format!(
        "{USERS_HEADER}\n\
         usr-222-123456,active,2026-11-20T08:00:00Z,TRUE,john.doe,,John,Doe,Michael,john.doe,john.doe@myschool.com,6035550198,6035550199,,12,,,,,,org-sch-222-456,\n\
         usr-222-1234561232,tobedeleted,2026-11-20T08:00:00Z,TRUE,mmichel.jones,,mmichel,Jones,,,,,,,12,,,,,,org-sch-222-456,\n"
    );
    write_delta(
        dir,
        "delta-1",
        &[
            ("users", &users),
            (
                "roles",
                "sourcedId,status,dateLastModified,userSourcedId,roleType,role,beginDate,endDate,orgSourcedId\n\
                 rol-222-1122,tobedeleted,2026-11-20,usr-222-1234561232,primary,student,,,org-sch-222-456\n",
            ),
            (
                "enrollments",
                "sourcedId,status,dateLastModified,classSourcedId,schoolSourcedId,userSourcedId,role\n\
                 enr-s-222-12345-987655,tobedeleted,2026-11-20,cls-222-123456,org-sch-222-456,usr-222-1234561232,student\n",
            ),
        ],
    )
}

/// The sample is tiny: one student leaving is a third of them, so the
/// shrink guard is set wide enough for that (as `[sis] max_shrink` would be).
fn import(src: &Path, store: &Path) -> Result<ImportReport, ImportError> {
    let cfg = SisConfig {
        max_shrink: 0.5,
        ..Default::default()
    };
    sis::import(src, store, &cfg, &ImportOptions::default())
}

fn students(store: &Path) -> Vec<String> {
    let conn = sis::open_current(store).unwrap();
    let mut st = conn
        .prepare("SELECT id FROM people WHERE is_student = 1 ORDER BY id")
        .unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_on_top_of_full_is_used_by_the_next_alert() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("klaxon.toml"),
        common::config_text(&format!(
            "[sis]\nmax_shrink = 0.5\n{}",
            common::LOG_PROVIDER
        )),
    )
    .unwrap();
    let store = dir.path().join("state");
    let full = import(&full_set(), &store).unwrap();
    assert_eq!(full.kind, "bulk");
    assert_eq!(
        full.changes.added, 6,
        "every user is new: {:?}",
        full.changes
    );

    let delta = nightly_delta(dir.path());
    let r = import(&delta, &store).unwrap();
    assert_eq!(r.kind, "delta");
    assert_eq!(r.source, delta.display().to_string());
    assert_eq!(
        (r.changes.added, r.changes.changed, r.changes.removed),
        (0, 1, 1)
    );
    assert_eq!(r.students, 2, "{r}");
    assert_eq!(students(&store), ["usr-222-567891", "usr-222-66778899"]);
    let conn = sis::open_current(&store).unwrap();
    let modified: Option<String> = conn
        .query_row(
            "SELECT modified FROM people WHERE id = 'usr-222-123456'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(modified.as_deref(), Some("2026-11-20T08:00:00Z"));
    drop(conn);
    let small = SisConfig {
        max_shrink: 0.1,
        ..Default::default()
    };
    import(&full_set(), &store).unwrap();
    let err = sis::import(&delta, &store, &small, &ImportOptions::default()).unwrap_err();
    assert!(
        matches!(err, ImportError::Shrink { .. }),
        "same guard as a full import: {err}"
    );
    assert_eq!(
        students(&store).len(),
        3,
        "the refused delta left the copy alone"
    );
    import(&delta, &store).unwrap();

    let admin = common::make_token(dir.path(), ApiRole::Admin).await;
    let viewer = common::make_token(dir.path(), ApiRole::Viewer).await;
    let app = common::start(dir, admin, viewer).await;
    let created: serde_json::Value = app
        .trigger(json!({"playbook": "lockdown", "audience": {"roles": ["guardian"]}}))
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_i64().expect("alert created");
    app.wait_settled(id).await;
    let outbox = app.outbox();
    let to: Vec<&str> = outbox.iter().filter_map(|m| m["to"].as_str()).collect();
    // The lockdown playbook texts and emails.
    assert!(to.contains(&"+16035550198"), "new sms number used: {to:?}");
    assert!(
        !to.contains(&"+16032221111") && !to.contains(&"+16037778888"),
        "old numbers not used: {to:?}"
    );
    for m in &outbox {
        let body = m["body"].as_str().unwrap_or_default();
        assert!(!body.contains("mmichel"), "deleted student named: {body}");
    }
    app.stop().await;
}

#[test]
fn a_second_delta_applies_on_top_of_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    import(&full_set(), &store).unwrap();
    import(&nightly_delta(dir.path()), &store).unwrap();
    // A new student arrives, linked to John Doe.
    let users = format!(
        "{USERS_HEADER}\nusr-222-999,active,2026-11-21,TRUE,new.kid,,New,Kid,,,,,,usr-222-123456,09,,,,,,org-sch-222-456,\n"
    );
    let roles = "sourcedId,status,dateLastModified,userSourcedId,roleType,role,orgSourcedId\nrol-999,active,2026-11-21,usr-222-999,primary,student,org-sch-222-456\n";
    let d2 = write_delta(
        dir.path(),
        "delta-2",
        &[("users", &users), ("roles", roles)],
    );
    let r = import(&d2, &store).unwrap();
    assert_eq!(
        (r.changes.added, r.changes.changed, r.changes.removed),
        (1, 0, 0)
    );
    assert_eq!(
        students(&store),
        ["usr-222-567891", "usr-222-66778899", "usr-222-999"],
        "the first delta's deletion and the new student are both there"
    );
    assert_eq!(r.guardian_links, 2, "{r}");
}

#[test]
fn a_delta_without_a_base_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let err = import(&nightly_delta(dir.path()), &store).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ImportError::Delta { .. }), "{msg}");
    assert!(
        msg.contains("no SIS copy yet") && msg.contains("full (bulk) export"),
        "{msg}"
    );
    assert!(!sis::current_path(&store).exists());
}

#[test]
fn a_delta_that_would_orphan_students_is_refused_and_the_copy_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    import(&full_set(), &store).unwrap();
    let before = std::fs::read(sis::current_path(&store)).unwrap();

    let orgs = write_delta(
        dir.path(),
        "drop-org",
        &[(
            "orgs",
            "sourcedId,status,dateLastModified,name,type\norg-sch-222-456,tobedeleted,2026-11-20,History Department,department\n",
        )],
    );
    let msg = import(&orgs, &store).unwrap_err().to_string();
    assert!(
        msg.contains("deletes org org-sch-222-456") && msg.contains("3 active student(s)"),
        "{msg}"
    );

    // John Doe is the only guardian of Mary and of mmichel.
    let users = format!(
        "{USERS_HEADER}\nusr-222-123456,tobedeleted,2026-11-20,TRUE,john.doe,,John,Doe,,,,,,,,,,,,,org-sch-222-456,\n"
    );
    let guardian = write_delta(dir.path(), "drop-guardian", &[("users", &users)]);
    let msg = import(&guardian, &store).unwrap_err().to_string();
    assert!(
        msg.contains("deletes usr-222-123456, the last guardian of 2 active student(s)"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(sis::current_path(&store)).unwrap(),
        before,
        "the copy is untouched"
    );
}

#[test]
fn a_bad_delta_row_is_named_by_its_file_and_line_in_the_delta() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    import(&full_set(), &store).unwrap();
    let d = write_delta(
        dir.path(),
        "bad",
        &[(
            "enrollments",
            "sourcedId,status,classSourcedId,schoolSourcedId,userSourcedId,role\n\
             enr-new-1,active,cls-222-123456,org-sch-222-456,usr-222-567891,student\n\
             enr-new-2,active,cls-222-123456,org-sch-222-456,usr-222-567891,wizard\n",
        )],
    );
    let msg = import(&d, &store).unwrap_err().to_string();
    assert!(
        msg.contains("enrollments.csv (delta) line 3") && msg.contains("wizard"),
        "{msg}"
    );
}

#[test]
fn a_delta_of_another_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    import(&full_set(), &store).unwrap();
    let d = write_delta(dir.path(), "v11", &[("users", USERS_HEADER)]);
    let manifest = std::fs::read_to_string(d.join("manifest.csv"))
        .unwrap()
        .replace("oneroster.version,1.2", "oneroster.version,1.1");
    std::fs::write(d.join("manifest.csv"), manifest).unwrap();
    let msg = import(&d, &store).unwrap_err().to_string();
    assert!(msg.contains("built from OneRoster 1.2"), "{msg}");
}
