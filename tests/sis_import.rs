//! Import of real OneRoster samples and of broken exports into real SQLite files.

use std::path::{Path, PathBuf};

use klaxon::sis::{self, ImportError, ImportOptions, ImportReport, SisConfig};

fn sample(name: &str) -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/oneroster"
    ))
    .join(name)
}

fn import(src: &Path, store: &Path) -> Result<ImportReport, ImportError> {
    sis::import(src, store, &SisConfig::default(), &ImportOptions::default())
}

fn counts(r: &ImportReport) -> [u64; 7] {
    [
        r.schools,
        r.students,
        r.guardians,
        r.staff,
        r.classes,
        r.enrollments,
        r.guardian_links,
    ]
}

fn channels(r: &ImportReport) -> [u64; 3] {
    use klaxon::domain::Channel::*;
    [Sms, Voice, Email].map(|c| r.contact_points.get(&c).copied().unwrap_or(0))
}

#[test]
fn edfi_sample_imports_with_exact_counts() {
    let dir = tempfile::tempdir().unwrap();
    let r = import(&sample("edfi-lms-toolkit-v1p1"), dir.path()).unwrap();
    assert_eq!(r.oneroster_version, "1.1");
    // schools, students, guardians, staff, classes, enrollments, links
    assert_eq!(counts(&r), [1, 8, 0, 2, 2, 24, 0]);
    // Two of the eight "(950) ..." numbers have an exchange starting with 0.
    assert_eq!(channels(&r), [6, 6, 10]);
    assert_eq!(r.unreachable_contacts, 0);
    let w: Vec<(String, u64, String)> = r
        .warnings
        .iter()
        .map(|w| (w.file.clone(), w.line, w.field.clone()))
        .collect();
    assert!(
        w.contains(&("users.csv".into(), 5, "phone".into())),
        "{w:?}"
    );
    assert!(w.contains(&("users.csv".into(), 10, "row".into())), "{w:?}");
    assert!(sis::current_path(dir.path()).is_file());
}

#[test]
fn catalyst_1_1_sample_has_its_parent() {
    let dir = tempfile::tempdir().unwrap();
    let r = import(
        &sample("catalyst-moodle-enrol_oneroster/v1p1_full"),
        dir.path(),
    )
    .unwrap();
    assert_eq!(counts(&r), [1, 3, 1, 2, 1, 3, 1]);
    assert_eq!(channels(&r), [5, 3, 6]);
    assert_eq!(r.inactive_skipped, 1, "the tobedeleted class");
    let sis = sis::open_current(dir.path()).unwrap();
    let (guardian, student): (String, String) = sis
        .query_row(
            "SELECT g.id, s.id FROM guardianship x JOIN people g ON g.pk = x.guardian JOIN people s ON s.pk = x.student",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (guardian.as_str(), student.as_str()),
        ("usr-222-1234561", "usr-222-66778899")
    );
    // The department with a dangling parent stands in for the school.
    assert!(r.warnings.iter().any(|w| w.file == "orgs.csv"
        && w.line == 2
        && w.field == "parentSourcedId"
        && w.value == "org-sch-222-3456"));
}

#[test]
fn catalyst_1_2_sample_reads_roles_csv() {
    let dir = tempfile::tempdir().unwrap();
    let r = import(
        &sample("catalyst-moodle-enrol_oneroster/v1p2_full"),
        dir.path(),
    )
    .unwrap();
    assert_eq!(r.oneroster_version, "1.2");
    // usr-222-123456 is a teacher with a secondary guardian role; the 1.1
    // parent is a siteAdministrator here.
    assert_eq!(counts(&r), [1, 3, 1, 3, 1, 3, 2]);
    let sis = sis::open_current(dir.path()).unwrap();
    let given: String = sis
        .query_row(
            "SELECT given FROM people WHERE id = 'usr-222-1234561'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        given, "Tom",
        "the misspelt prefferedGivenName column is read"
    );
    assert!(
        r.warnings
            .iter()
            .any(|w| w.file == "roles.csv" && w.field == "header")
    );
}

#[test]
fn a_zip_imports_like_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let zip_path = dir.path().join("export.zip");
    let src = sample("catalyst-moodle-enrol_oneroster/v1p2_full");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        let name = format!("nightly/{}", entry.file_name().to_string_lossy());
        zip.start_file(name, zip::write::SimpleFileOptions::default())
            .unwrap();
        std::io::Write::write_all(&mut zip, &std::fs::read(entry.path()).unwrap()).unwrap();
    }
    zip.finish().unwrap();
    let r = import(&zip_path, &dir.path().join("store")).unwrap();
    assert_eq!(counts(&r), [1, 3, 1, 3, 1, 3, 2]);
}
