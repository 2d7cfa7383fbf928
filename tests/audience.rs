//! Audience resolution against a real SIS copy imported from a small export.

use std::path::Path;

use klaxon::audience::{self, AudienceError, AudienceSpec, GroupConfig, Recipient};
use klaxon::domain::{Channel, Role};
use klaxon::sis::{self, ImportOptions, SisConfig};

/// Two schools. g1 has a child at each (s1 grade 5 at A, s3 grade 5 at B);
/// g3 is s1's other guardian; g2 (s2, grade 6 at A) has no usable address;
/// s4 (grade 5 at B) has no guardian. t1 teaches grade 5 at A, t6 grade 6
/// at A, t2 grade 5 at B; admin1 is attached to the district only.
fn district(dir: &Path) -> rusqlite::Connection {
    let src = dir.join("export");
    std::fs::create_dir_all(&src).unwrap();
    let files: &[(&str, &str)] = &[
        (
            "manifest.csv",
            "propertyName,value\nmanifest.version,1.0\noneroster.version,1.1\nfile.orgs,bulk\nfile.users,bulk\nfile.classes,bulk\nfile.enrollments,bulk\n",
        ),
        (
            "orgs.csv",
            "sourcedId,status,dateLastModified,name,type,identifier,parentSourcedId\nd1,,,District,district,,\nsch-a,,,Adams Elementary,school,,d1\nsch-b,,,Brook Middle,school,,d1\n",
        ),
        (
            "users.csv",
            "sourcedId,status,dateLastModified,enabledUser,orgSourcedIds,role,username,userIds,givenName,familyName,middleName,identifier,email,sms,phone,agentSourcedIds,grades,password,metadata.preferredLanguage\n\
s1,,,true,sch-a,student,,,Ann,Lee,,,,,,,05,,\n\
s2,,,true,sch-a,student,,,Bo,Kim,,,,,,,06,,\n\
s3,,,true,sch-b,student,,,Cy,Lee,,,,,,,5,,\n\
s4,,,true,sch-b,student,,,Di,Ray,,,,,,,5,,\n\
g1,,,true,d1,parent,,,Gina,Lee,,,Gina@Example.org,,(555) 555-0101,\"s1,s3\",,,es\n\
g2,,,true,d1,guardian,,,Hal,Kim,,,not-an-email,,n/a,s2,,,\n\
g3,,,true,d1,parent,,,Ian,Lee,,,,+15555550103,,s1,,,\n\
t1,,,true,sch-a,teacher,,,Tia,Fox,,,tia@example.org,,,,,,\n\
t6,,,true,sch-a,teacher,,,Ted,Fox,,,ted@example.org,,,,,,\n\
t2,,,true,sch-b,teacher,,,Tom,Ng,,,tom@example.org,,,,,,\n\
admin1,,,true,d1,districtAdministrator,,,Ada,Po,,,ada@example.org,,5555550199,,,,\n",
        ),
        (
            "classes.csv",
            "sourcedId,status,dateLastModified,title,grades,courseSourcedId,classCode,classType,location,schoolSourcedId,termSourcedIds,subjects,subjectCodes,periods\nc5a,,,Grade 5 A,05,,,homeroom,,sch-a,,,,\nc6a,,,Grade 6 A,06,,,homeroom,,sch-a,,,,\nc5b,,,Grade 5 B,05,,,homeroom,,sch-b,,,,\n",
        ),
        (
            "enrollments.csv",
            "sourcedId,status,dateLastModified,classSourcedId,schoolSourcedId,userSourcedId,role,primary,beginDate,endDate\n\
e1,,,c5a,sch-a,s1,student,,,\ne2,,,c6a,sch-a,s2,student,,,\ne3,,,c5b,sch-b,s3,student,,,\ne4,,,c5b,sch-b,s4,student,,,\n\
e5,,,c5a,sch-a,t1,teacher,,,\ne6,,,c6a,sch-a,t6,teacher,,,\ne7,,,c5b,sch-b,t2,teacher,,,\n",
        ),
    ];
    for (name, text) in files {
        std::fs::write(src.join(name), text).unwrap();
    }
    let store = dir.join("store");
    sis::import(
        &src,
        &store,
        &SisConfig::default(),
        &ImportOptions::default(),
    )
    .unwrap();
    sis::open_current(&store).unwrap()
}

fn spec(schools: &[&str], grades: &[&str], roles: &[Role]) -> AudienceSpec {
    AudienceSpec {
        schools: schools.iter().map(|s| s.to_string()).collect(),
        grades: grades.iter().map(|s| s.to_string()).collect(),
        roles: roles.to_vec(),
        ..Default::default()
    }
}

fn ids(rs: &[Recipient]) -> Vec<&str> {
    rs.iter().map(|r| r.person_id.as_str()).collect()
}

fn children(r: &Recipient) -> Vec<&str> {
    r.students.iter().map(|s| s.id.as_str()).collect()
}

#[test]
fn empty_spec_is_the_whole_district() {
    let dir = tempfile::tempdir().unwrap();
    let sis = district(dir.path());
    let a = audience::resolve(&sis, &AudienceSpec::default(), &[]).unwrap();
    assert_eq!(
        ids(&a.recipients),
        [
            "g1", "g2", "g3", "admin1", "t1", "t2", "t6", "s1", "s2", "s3", "s4"
        ]
    );
}

#[test]
fn guardians_are_selected_through_their_children() {
    let dir = tempfile::tempdir().unwrap();
    let sis = district(dir.path());
    let a = audience::resolve(&sis, &spec(&["sch-a"], &["5"], &[Role::Guardian]), &[]).unwrap();
    assert_eq!(ids(&a.recipients), ["g1", "g3"]);
    // g1 also has s3 at school B, who is not in this audience.
    assert_eq!(children(&a.recipients[0]), ["s1"]);
    let s1 = &a.recipients[0].students[0];
    assert_eq!(
        (
            s1.name.as_str(),
            s1.school_id.as_str(),
            s1.school_name.as_str(),
            s1.grade.as_str()
        ),
        ("Ann Lee", "sch-a", "Adams Elementary", "5")
    );
}

#[test]
fn union_within_a_dimension_intersection_across() {
    let dir = tempfile::tempdir().unwrap();
    let sis = district(dir.path());
    // Schools A or B, and grade 5: g1 once, with both children.
    let a = audience::resolve(
        &sis,
        &spec(&["sch-a", "sch-b"], &["05"], &[Role::Guardian]),
        &[],
    )
    .unwrap();
    assert_eq!(ids(&a.recipients), ["g1", "g3"]);
    assert_eq!(children(&a.recipients[0]), ["s1", "s3"]);
    assert_eq!(
        a.recipients[0].school_names(),
        ["Adams Elementary", "Brook Middle"]
    );
    // Grades 5 or 6 at school A, every role.
    let a = audience::resolve(&sis, &spec(&["sch-a"], &["5", "6"], &[]), &[]).unwrap();
    assert_eq!(
        ids(&a.recipients),
        ["g1", "g2", "g3", "t1", "t6", "s1", "s2"]
    );
    // Students at B.
    let a = audience::resolve(&sis, &spec(&["sch-b"], &[], &[Role::Student]), &[]).unwrap();
    assert_eq!(ids(&a.recipients), ["s3", "s4"]);
}

#[test]
fn staff_by_school_and_by_the_grades_they_teach() {
    let dir = tempfile::tempdir().unwrap();
    let sis = district(dir.path());
    let a = audience::resolve(&sis, &spec(&["sch-a"], &[], &[Role::Staff]), &[]).unwrap();
    assert_eq!(ids(&a.recipients), ["t1", "t6"]);
    let a = audience::resolve(&sis, &spec(&["sch-a"], &["5"], &[Role::Staff]), &[]).unwrap();
    assert_eq!(ids(&a.recipients), ["t1"]);
    let a = audience::resolve(&sis, &spec(&[], &[], &[Role::Staff]), &[]).unwrap();
    assert_eq!(ids(&a.recipients), ["admin1", "t1", "t2", "t6"]);
}

#[test]
fn classes_narrow_like_any_other_dimension() {
    let dir = tempfile::tempdir().unwrap();
    let sis = district(dir.path());
    let s = AudienceSpec {
        classes: vec!["c5b".into()],
        ..Default::default()
    };
    let a = audience::resolve(&sis, &s, &[]).unwrap();
    assert_eq!(ids(&a.recipients), ["g1", "t2", "s3", "s4"]);
    assert_eq!(children(&a.recipients[0]), ["s3"]);
}

#[test]
fn addresses_languages_and_unreachable_people() {
    let dir = tempfile::tempdir().unwrap();
    let sis = district(dir.path());
    let a = audience::resolve(&sis, &spec(&[], &[], &[Role::Guardian]), &[]).unwrap();
    let g1 = &a.recipients[0];
    assert_eq!(g1.language, "es");
    assert_eq!(
        g1.addresses,
        [
            (Channel::Sms, "+15555550101".to_string()),
            (Channel::Voice, "+15555550101".to_string()),
            (Channel::Email, "gina@example.org".to_string()),
        ]
    );
    let g2 = &a.recipients[1];
    assert_eq!(
        (
            g2.person_id.as_str(),
            g2.addresses.len(),
            g2.language.as_str()
        ),
        ("g2", 0, "en")
    );
    assert_eq!(
        a.recipients[2].addresses,
        [(Channel::Sms, "+15555550103".to_string())]
    );

    let p = a.preview();
    assert_eq!(p.recipients, 3);
    assert_eq!(p.per_channel.get(&Channel::Sms), Some(&2));
    assert_eq!(p.per_channel.get(&Channel::Email), Some(&1));
    assert_eq!(p.addresses, 4);
    assert_eq!(p.unreachable.len(), 1);
    assert_eq!(p.unreachable[0].person_id, "g2");
    let table = p.to_string();
    assert!(
        table.contains("guardian") && table.contains("g2"),
        "{table}"
    );
}

#[test]
fn groups_add_to_the_rest_of_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    let sis = district(dir.path());
    let groups = vec![
        GroupConfig {
            name: "board".into(),
            schools: vec![],
            grades: vec![],
            roles: vec![],
            classes: vec![],
            people: vec!["admin1".into(), "g2".into()],
        },
        GroupConfig {
            name: "b-staff".into(),
            schools: vec!["sch-b".into()],
            grades: vec![],
            roles: vec![Role::Staff],
            classes: vec![],
            people: vec![],
        },
    ];
    // Only groups: their union, not the whole district.
    let s = AudienceSpec {
        groups: vec!["board".into()],
        ..Default::default()
    };
    let a = audience::resolve(&sis, &s, &groups).unwrap();
    assert_eq!(ids(&a.recipients), ["g2", "admin1"]);
    assert_eq!(children(&a.recipients[0]), ["s2"]);
    // Spec dimensions plus groups: a union.
    let mut s = spec(&["sch-a"], &["6"], &[Role::Guardian]);
    s.groups = vec!["b-staff".into(), "board".into()];
    let a = audience::resolve(&sis, &s, &groups).unwrap();
    assert_eq!(ids(&a.recipients), ["g2", "admin1", "t2"]);

    let s = AudienceSpec {
        groups: vec!["nope".into()],
        ..Default::default()
    };
    assert!(
        matches!(audience::resolve(&sis, &s, &groups), Err(AudienceError::UnknownGroup(g)) if g == "nope")
    );
}

#[test]
fn unknown_names_are_errors_not_empty_audiences() {
    let dir = tempfile::tempdir().unwrap();
    let sis = district(dir.path());
    let r = audience::resolve(&sis, &spec(&["sch-z"], &[], &[]), &[]);
    assert!(
        matches!(&r, Err(AudienceError::Unknown { what: "school", value, known }) if value == "sch-z" && !known.is_empty()),
        "{:?}",
        r.err()
    );
    let s = AudienceSpec {
        classes: vec!["c9".into()],
        ..Default::default()
    };
    assert!(matches!(
        audience::resolve(&sis, &s, &[]),
        Err(AudienceError::Unknown { what: "class", value, .. }) if value == "c9"
    ));
    // A grade no student or class has reaches nobody: refused, closest first.
    let s = AudienceSpec {
        grades: vec!["K".into()],
        ..Default::default()
    };
    let e = audience::resolve(&sis, &s, &[]).unwrap_err();
    assert!(
        matches!(&e, AudienceError::Unknown { what: "grade", .. }),
        "{e}"
    );
    assert!(
        e.to_string()
            .starts_with("grade `K` is not in the SIS; grades are "),
        "{e}"
    );
}

#[test]
fn closest_names_come_first() {
    let known = vec!["KG".to_string(), "01".into(), "02".into(), "12".into()];
    assert_eq!(audience::closest("K", known.clone())[0], "KG");
    assert_eq!(audience::closest("2", known)[0], "02");
}

#[test]
fn open_current_without_an_import_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let err = sis::open_current(dir.path()).unwrap_err().to_string();
    assert!(
        err.starts_with("no SIS copy yet: run `klaxon sis import PATH`"),
        "{err}"
    );
}
