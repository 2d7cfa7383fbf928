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

/// A store holding a good import of the edfi sample, and a copy of that
/// sample to break.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let export = dir.path().join("export");
        std::fs::create_dir_all(&export).unwrap();
        for e in std::fs::read_dir(sample("edfi-lms-toolkit-v1p1")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), export.join(e.file_name())).unwrap();
        }
        let f = Fixture { dir };
        import(&f.export(), &f.store()).unwrap();
        f
    }
    fn export(&self) -> PathBuf {
        self.dir.path().join("export")
    }
    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }
    fn edit(&self, file: &str, f: impl FnOnce(Vec<u8>) -> Vec<u8>) {
        let p = self.export().join(file);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, f(bytes)).unwrap();
    }
    fn replace(&self, file: &str, from: &str, to: &str) {
        self.edit(file, |b| {
            let s = String::from_utf8(b).unwrap();
            assert!(s.contains(from), "{from:?} not in {file}");
            s.replacen(from, to, 1).into_bytes()
        });
    }
    /// Imports the broken export and checks the previous copy survived
    /// byte for byte, with no temporary file left behind.
    fn refused(&self) -> ImportError {
        let current = sis::current_path(&self.store());
        let before = std::fs::read(&current).unwrap();
        let err = import(&self.export(), &self.store()).unwrap_err();
        assert_eq!(
            std::fs::read(&current).unwrap(),
            before,
            "sis.db changed after a refused import"
        );
        let names: Vec<String> = std::fs::read_dir(self.store())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["sis.db"], "temporary files left behind");
        err
    }
}

#[test]
fn bad_utf8_is_refused_naming_line_and_column() {
    let f = Fixture::new();
    f.edit("users.csv", |b| {
        let s = String::from_utf8(b).unwrap();
        let i = s.find("Kyle,Hughes").unwrap();
        let mut b = s.into_bytes();
        b[i + 1] = 0xff;
        b
    });
    let e = f.refused();
    assert!(
        matches!(&e, ImportError::BadUtf8 { file, line: 3, column, .. } if file == "users.csv" && column == "givenName"),
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with("users.csv line 3, column givenName: not valid UTF-8"),
        "{e}"
    );
}

#[test]
fn missing_required_column_is_refused() {
    let f = Fixture::new();
    f.replace("users.csv", ",familyName,", ",surname,");
    let e = f.refused();
    assert!(
        matches!(&e, ImportError::MissingColumn { file, column } if file == "users.csv" && column == "familyName"),
        "{e}"
    );
}

#[test]
fn unknown_role_is_refused() {
    let f = Fixture::new();
    f.replace(
        "users.csv",
        "207270,,,true,255901001,teacher",
        "207270,,,true,255901001,wizard",
    );
    let e = f.refused();
    assert!(
        matches!(&e, ImportError::UnknownRole { file, line: 10, field, value } if file == "users.csv" && field == "role" && value == "wizard"),
        "{e}"
    );
}

#[test]
fn dangling_reference_is_refused() {
    let f = Fixture::new();
    f.replace(
        "enrollments.csv",
        ",255901001,604874,student",
        ",255901001,999999,student",
    );
    let e = f.refused();
    assert!(
        matches!(&e, ImportError::Dangling { count: 1, file, line: 4, field, value, .. } if file == "enrollments.csv" && field == "userSourcedId" && value == "999999"),
        "{e}"
    );
}

#[test]
fn truncated_file_is_refused() {
    let f = Fixture::new();
    // Cut the last row in the middle, as an interrupted copy would.
    f.edit("users.csv", |mut b| {
        b.truncate(b.len() - 40);
        b
    });
    let e = f.refused();
    assert!(
        matches!(&e, ImportError::ShortRow { file, line: 11, expected: 18, .. } if file == "users.csv"),
        "{e}"
    );
}

#[test]
fn quote_left_open_is_refused() {
    let f = Fixture::new();
    f.replace(
        "classes.csv",
        "2020-2021_Spring\",Algebra",
        "2020-2021_Spring,Algebra",
    );
    let e = f.refused();
    assert!(
        matches!(&e, ImportError::UnclosedQuote { file, line: 3 } if file == "classes.csv"),
        "{e}"
    );
}

#[test]
fn missing_listed_file_is_refused() {
    let f = Fixture::new();
    std::fs::remove_file(f.export().join("enrollments.csv")).unwrap();
    let e = f.refused();
    assert!(
        matches!(&e, ImportError::MissingFile { file, .. } if file == "enrollments.csv"),
        "{e}"
    );
}

#[test]
fn duplicate_sourced_id_is_refused() {
    let f = Fixture::new();
    f.replace("users.csv", "604874,,,true", "604863,,,true");
    let e = f.refused();
    assert!(
        matches!(&e, ImportError::DuplicateId { file, line: 3, value, first_line: 2 } if file == "users.csv" && value == "604863"),
        "{e}"
    );
}

#[test]
fn extra_non_empty_field_is_refused() {
    let f = Fixture::new();
    f.replace(
        "users.csv",
        "Sara.Preston@studentgps.org,,,,,,",
        "Sara.Preston@studentgps.org,,,,,,surprise",
    );
    let e = f.refused();
    assert!(
        matches!(&e, ImportError::InvalidValue { file, line: 11, value, .. } if file == "users.csv" && value == "surprise"),
        "{e}"
    );
}

#[test]
fn shrunken_export_is_refused_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let big = dir.path().join("big");
    let small = dir.path().join("small");
    sis::generate(
        &big,
        &sis::GenerateOptions {
            students: 400,
            schools: None,
            seed: 3,
        },
    )
    .unwrap();
    sis::generate(
        &small,
        &sis::GenerateOptions {
            students: 300,
            schools: None,
            seed: 3,
        },
    )
    .unwrap();
    let first = import(&big, &store).unwrap();
    assert_eq!(first.students, 400);
    let before = std::fs::read(sis::current_path(&store)).unwrap();

    let e = import(&small, &store).unwrap_err();
    assert!(
        matches!(
            e,
            ImportError::Shrink {
                what: "students",
                before: 400,
                after: 300,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("from 400 to 300 (-25.0%, more than the 10.0% allowed"),
        "{e}"
    );
    assert_eq!(std::fs::read(sis::current_path(&store)).unwrap(), before);

    let forced = sis::import(
        &small,
        &store,
        &SisConfig::default(),
        &ImportOptions { force: true },
    )
    .unwrap();
    assert!(forced.forced);
    let meta = sis::read_meta(&sis::open_current(&store).unwrap()).unwrap();
    assert_eq!(meta.students, 300);
}

#[test]
fn inactive_records_are_left_out() {
    let f = Fixture::new();
    f.replace("users.csv", "604874,,,true", "604874,tobedeleted,,true");
    f.replace("users.csv", "604918,,,true", "604918,,,false");
    // 8 → 6 students is more than the shrink guard allows.
    let r = sis::import(
        &f.export(),
        &f.store(),
        &SisConfig::default(),
        &ImportOptions { force: true },
    )
    .unwrap();
    assert_eq!(r.students, 6);
    assert_eq!(r.inactive_skipped, 2);
    // Their enrollments are skipped, not counted as dangling.
    assert_eq!(r.enrollments, 24 - 4 - 2);
}

#[test]
fn generated_export_imports_with_its_flaws_reported() {
    let dir = tempfile::tempdir().unwrap();
    let sum = sis::demo_district(&dir.path().join("demo")).unwrap();
    assert_eq!((sum.schools, sum.students), (3, 600));
    let r = import(&dir.path().join("demo"), &dir.path().join("store")).unwrap();
    assert_eq!(
        (r.schools, r.students, r.guardians, r.staff),
        (3, 600, u64::from(sum.guardians), u64::from(sum.staff))
    );
    assert_eq!(r.enrollments, u64::from(sum.enrollments));
    assert!(
        r.unreachable_contacts > 0
            && r.warnings.iter().any(|w| w.field == "phone")
            && r.warnings.iter().any(|w| w.field == "email")
    );
    let langs: Vec<String> = {
        let sis = sis::open_current(&dir.path().join("store")).unwrap();
        let mut st = sis
            .prepare("SELECT DISTINCT language FROM people ORDER BY 1")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert!(
        langs.contains(&"es".to_string()) && langs.contains(&"vi".to_string()),
        "{langs:?}"
    );
    // Same seed, same bytes.
    sis::demo_district(&dir.path().join("again")).unwrap();
    for f in ["users.csv", "enrollments.csv"] {
        assert_eq!(
            std::fs::read(dir.path().join("demo").join(f)).unwrap(),
            std::fs::read(dir.path().join("again").join(f)).unwrap()
        );
    }
}
