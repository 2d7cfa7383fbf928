//! Synthetic OneRoster 1.1 exports: realistic enough to exercise import and
//! resolution (households with siblings across schools, a language mix, free-
//! form and broken contact data), deterministic for a seed, and fast enough to
//! write a 100,000-student district in a few seconds.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub students: u32,
    /// Number of schools; by default one per ~500 students, at least 3.
    pub schools: Option<u32>,
    pub seed: u64,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            students: 600,
            schools: None,
            seed: 1,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GenerateSummary {
    pub out: PathBuf,
    pub schools: u32,
    pub households: u32,
    pub students: u32,
    pub guardians: u32,
    pub staff: u32,
    pub classes: u32,
    pub enrollments: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("writing {path}: {source}")]
pub struct GenerateError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The bundled demo district: 3 schools, 600 students, a fixed seed.
pub fn demo_district(out: &Path) -> Result<GenerateSummary, GenerateError> {
    generate(
        out,
        &GenerateOptions {
            students: 600,
            schools: Some(3),
            seed: 2024,
        },
    )
}

/// SplitMix64: tiny, fast, and ours, so a seed gives the same district on
/// every version of every dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// True with probability `pct`/100.
    fn pct(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
    /// Picks by weight from `(weight, value)` pairs.
    fn weighted<T: Copy>(&mut self, table: &[(u64, T)]) -> T {
        let total: u64 = table.iter().map(|(w, _)| w).sum();
        let mut x = self.below(total);
        for &(w, v) in table {
            if x < w {
                return v;
            }
            x -= w;
        }
        table[table.len() - 1].1
    }
}

const GIVEN: &[&str] = &[
    "Ana", "Ben", "Carmen", "David", "Elena", "Farah", "Gabriel", "Hana", "Isaac", "Jada", "Kevin",
    "Linh", "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Samuel", "Tuan", "Uma", "Victor",
    "Wei", "Ximena", "Yusuf", "Zoe", "Liam", "Olivia", "Noah", "Emma", "Sofia", "Lucas", "Mia",
    "Ethan", "Amir", "Layla", "Diego", "Mei", "Jamal", "Grace",
];
const FAMILY: &[&str] = &[
    "Garcia",
    "Smith",
    "Nguyen",
    "Johnson",
    "Martinez",
    "Lee",
    "Brown",
    "Hernandez",
    "Williams",
    "Lopez",
    "Chen",
    "Davis",
    "Gonzalez",
    "Tran",
    "Miller",
    "Rodriguez",
    "Wilson",
    "Ali",
    "Anderson",
    "Pham",
    "Taylor",
    "Hassan",
    "Thomas",
    "Le",
    "Moore",
    "Wang",
    "Jackson",
    "Ramirez",
    "Martin",
    "Kim",
    "Perez",
    "White",
    "Sanchez",
    "Harris",
    "Clark",
    "Lewis",
];
const LANGUAGES: &[(u64, &str)] = &[
    (70, "en"),
    (20, "es"),
    (3, "vi"),
    (3, "zh"),
    (2, "ar"),
    (1, "so"),
    (1, "ht"),
];
const SUBJECTS: &[&str] = &["math", "ela", "science", "social", "pe"];

/// School kinds and the grades they teach (0 = KG).
const KINDS: [(&str, u8, u8); 3] = [("Elementary", 0, 5), ("Middle", 6, 8), ("High", 9, 12)];

fn grade_text(g: u8) -> String {
    if g == 0 {
        "KG".into()
    } else {
        format!("{g:02}")
    }
}

struct Child {
    school: u32,
    grade: u8,
}

struct Household {
    children: Vec<u32>,
    guardians: u8,
    language: &'static str,
    family: &'static str,
}

/// A CSV file being written, with its path for error messages.
struct Out {
    path: PathBuf,
    w: BufWriter<File>,
}

impl Out {
    fn create(dir: &Path, name: &str, header: &str) -> Result<Out, GenerateError> {
        let path = dir.join(name);
        let file = File::create(&path).map_err(|e| GenerateError {
            path: path.clone(),
            source: e,
        })?;
        let mut out = Out {
            path,
            w: BufWriter::with_capacity(1 << 20, file),
        };
        out.line(header)?;
        Ok(out)
    }
    fn line(&mut self, text: &str) -> Result<(), GenerateError> {
        self.w
            .write_all(text.as_bytes())
            .and_then(|_| self.w.write_all(b"\n"))
            .map_err(|e| GenerateError {
                path: self.path.clone(),
                source: e,
            })
    }
    fn finish(mut self) -> Result<(), GenerateError> {
        self.w.flush().map_err(|e| GenerateError {
            path: self.path.clone(),
            source: e,
        })
    }
}

/// Writes a OneRoster 1.1 bulk export into the folder `out` (created if needed).
pub fn generate(out: &Path, opts: &GenerateOptions) -> Result<GenerateSummary, GenerateError> {
    std::fs::create_dir_all(out).map_err(|e| GenerateError {
        path: out.to_path_buf(),
        source: e,
    })?;
    let mut rng = Rng(opts.seed ^ 0x6B6C_6178_6F6E);
    let n_schools = opts.schools.unwrap_or(opts.students / 500).max(3);
    let mut sum = GenerateSummary {
        out: out.to_path_buf(),
        schools: n_schools,
        ..Default::default()
    };

    // Schools by kind, so a child of a given grade goes to a school teaching it.
    let kind_of = |s: u32| (s % 3) as usize;
    let by_kind: Vec<Vec<u32>> = (0..3)
        .map(|k| (0..n_schools).filter(|&s| kind_of(s) == k).collect())
        .collect();

    // Households first, so siblings share a family, a language and guardians.
    let mut children: Vec<Child> = Vec::with_capacity(opts.students as usize);
    let mut households: Vec<Household> = Vec::new();
    while (children.len() as u32) < opts.students {
        let want = rng
            .weighted(&[(55, 1u32), (30, 2), (10, 3), (5, 4)])
            .min(opts.students - children.len() as u32);
        let mut list = Vec::with_capacity(want as usize);
        for _ in 0..want {
            let grade = rng.below(13) as u8;
            let kind = KINDS
                .iter()
                .position(|&(_, lo, hi)| (lo..=hi).contains(&grade))
                .unwrap_or(0);
            let schools = &by_kind[kind];
            let school = schools[rng.below(schools.len() as u64) as usize];
            list.push(children.len() as u32);
            children.push(Child { school, grade });
        }
        households.push(Household {
            children: list,
            guardians: rng.weighted(&[(30, 1u8), (65, 2), (5, 3)]),
            language: rng.weighted(LANGUAGES),
            family: rng.pick(FAMILY),
        });
    }
    sum.households = households.len() as u32;

    // Class sections: (school, grade) → number of sections of up to 25.
    let mut per_sg = vec![0u32; n_schools as usize * 13];
    let mut seat = Vec::with_capacity(children.len());
    for c in &children {
        let slot = &mut per_sg[c.school as usize * 13 + c.grade as usize];
        seat.push(*slot);
        *slot += 1;
    }
    // Elementary grades have one homeroom class; from grade 6 one per subject.
    let subjects_for =
        |g: u8| -> &'static [&'static str] { if g >= 6 { SUBJECTS } else { &["homeroom"] } };
    let class_id = |s: u32, g: u8, sec: u32, subject: &str| {
        format!("cls-{s:04}-{}-{sec}-{subject}", grade_text(g))
    };

    // Staff per school, about one per 12 students, at least 3.
    let staff_per_school: Vec<u32> = (0..n_schools)
        .map(|s| {
            (per_sg[s as usize * 13..s as usize * 13 + 13]
                .iter()
                .sum::<u32>()
                / 12)
                .max(3)
        })
        .collect();
    let staff_base: Vec<u32> = staff_per_school
        .iter()
        .scan(0, |acc, &n| Some(std::mem::replace(acc, *acc + n)))
        .collect();

    let mut manifest = Out::create(out, "manifest.csv", "propertyName,value")?;
    for line in [
        "manifest.version,1.0",
        "oneroster.version,1.1",
        "source.systemName,klaxon generator",
        "source.systemCode,klaxon",
        "file.academicSessions,bulk",
        "file.categories,absent",
        "file.classes,bulk",
        "file.classResources,absent",
        "file.courses,bulk",
        "file.courseResources,absent",
        "file.demographics,absent",
        "file.enrollments,bulk",
        "file.lineItems,absent",
        "file.orgs,bulk",
        "file.resources,absent",
        "file.results,absent",
        "file.users,bulk",
    ] {
        manifest.line(line)?;
    }
    manifest.finish()?;

    let mut sessions = Out::create(
        out,
        "academicSessions.csv",
        "sourcedId,status,dateLastModified,title,type,startDate,endDate,parentSourcedId,schoolYear",
    )?;
    sessions.line(
        "as-2025,active,2025-07-01T00:00:00Z,2025-2026,schoolYear,2025-08-18,2026-06-05,,2026",
    )?;
    sessions.line("as-2025-f,active,2025-07-01T00:00:00Z,Fall 2025,semester,2025-08-18,2025-12-19,as-2025,2026")?;
    sessions.line("as-2025-s,active,2025-07-01T00:00:00Z,Spring 2026,semester,2026-01-05,2026-06-05,as-2025,2026")?;
    sessions.finish()?;

    let mut orgs = Out::create(
        out,
        "orgs.csv",
        "sourcedId,status,dateLastModified,name,type,identifier,parentSourcedId",
    )?;
    orgs.line(
        "dist-1,active,2025-07-01T00:00:00Z,Example Independent School District,district,EISD,",
    )?;
    for s in 0..n_schools {
        let (kind, ..) = KINDS[kind_of(s)];
        let name = format!("{} {} School", FAMILY[s as usize % FAMILY.len()], kind);
        orgs.line(&format!(
            "sch-{s:04},active,2025-07-01T00:00:00Z,{name} {s},school,S{s:04},dist-1"
        ))?;
    }
    orgs.finish()?;

    let mut courses = Out::create(
        out,
        "courses.csv",
        "sourcedId,status,dateLastModified,schoolYearSourcedId,title,courseCode,grades,orgSourcedId,subjects,subjectCodes",
    )?;
    for g in 0..13u8 {
        for s in subjects_for(g) {
            let gt = grade_text(g);
            courses.line(&format!("crs-{gt}-{s},active,2025-07-01T00:00:00Z,as-2025,Grade {gt} {s},{s}{gt},{gt},dist-1,{s},"))?;
        }
    }
    courses.finish()?;

    let mut classes = Out::create(
        out,
        "classes.csv",
        "sourcedId,status,dateLastModified,title,grades,courseSourcedId,classCode,classType,location,schoolSourcedId,termSourcedIds,subjects,subjectCodes,periods",
    )?;
    let mut enrollments = Out::create(
        out,
        "enrollments.csv",
        "sourcedId,status,dateLastModified,classSourcedId,schoolSourcedId,userSourcedId,role,primary,beginDate,endDate",
    )?;
    let mut n_enr = 0u64;
    let mut buf = String::with_capacity(256);
    for s in 0..n_schools {
        let mut teacher = 0u32;
        for g in 0..13u8 {
            let n = per_sg[s as usize * 13 + g as usize];
            let gt = grade_text(g);
            for sec in 0..n.div_ceil(25) {
                for (subj, s_name) in subjects_for(g).iter().enumerate() {
                    let id = class_id(s, g, sec, s_name);
                    let kind = if g >= 6 { "scheduled" } else { "homeroom" };
                    classes.line(&format!(
                        "{id},active,2025-07-01T00:00:00Z,Grade {gt} {s_name} {sec},{gt},crs-{gt}-{s_name},{s_name}-{sec},{kind},Room {},sch-{s:04},\"as-2025-f,as-2025-s\",{s_name},,{}",
                        100 + sec,
                        subj + 1
                    ))?;
                    sum.classes += 1;
                    // Teachers take classes in turn; the first staff member of
                    // a school is its principal and teaches none.
                    let pool = staff_per_school[s as usize].saturating_sub(1).max(1);
                    let t = staff_base[s as usize] + 2 + teacher % pool;
                    teacher += 1;
                    n_enr += 1;
                    enrollments.line(&format!("enr-{n_enr:08},active,2025-07-01T00:00:00Z,{id},sch-{s:04},stf-{t:06},teacher,true,2025-08-18,2026-06-05"))?;
                }
            }
        }
    }
    for (i, c) in children.iter().enumerate() {
        let sec = seat[i] / 25;
        for subject in subjects_for(c.grade) {
            let id = class_id(c.school, c.grade, sec, subject);
            n_enr += 1;
            buf.clear();
            let _ = write!(
                buf,
                "enr-{n_enr:08},active,2025-07-01T00:00:00Z,{id},sch-{:04},stu-{i:07},student,false,2025-08-18,2026-06-05",
                c.school
            );
            enrollments.line(&buf)?;
        }
    }
    classes.finish()?;
    enrollments.finish()?;
    sum.enrollments = n_enr as u32;

    let mut users = Out::create(
        out,
        "users.csv",
        "sourcedId,status,dateLastModified,enabledUser,orgSourcedIds,role,username,userIds,givenName,familyName,middleName,identifier,email,sms,phone,agentSourcedIds,grades,password,metadata.preferredLanguage",
    )?;
    let mut phone_seq = 0u32;
    let mut next_phone = |rng: &mut Rng| {
        phone_seq += 1;
        // 555 area code, exchange 200-999: valid NANP shape, never a real line.
        let exchange = 200 + (phone_seq / 10_000) % 800;
        let line = phone_seq % 10_000;
        match rng.below(100) {
            0..=84 => format!("+1555{exchange:03}{line:04}"),
            85..=97 => format!("(555) {exchange:03}-{line:04}"),
            _ => format!("555-{line:04}"), // too short: unusable, reported at import
        }
    };
    let mut n_guardians = 0u32;
    for h in &households {
        let kid_ids: Vec<String> = h.children.iter().map(|&c| format!("stu-{c:07}")).collect();
        for &c in &h.children {
            let child = &children[c as usize];
            let given = rng.pick(GIVEN);
            let email = if child.grade >= 6 {
                format!(
                    "{}.{}.{c}@students.example-isd.org",
                    given.to_lowercase(),
                    h.family.to_lowercase()
                )
            } else {
                String::new()
            };
            buf.clear();
            let _ = write!(
                buf,
                "stu-{c:07},active,2025-07-01T00:00:00Z,true,sch-{:04},student,s{c},,{given},{},,{c},{email},,,,{},,{}",
                child.school,
                h.family,
                grade_text(child.grade),
                h.language
            );
            users.line(&buf)?;
        }
        let mut schools: Vec<String> = h
            .children
            .iter()
            .map(|&c| format!("sch-{:04}", children[c as usize].school))
            .collect();
        schools.sort();
        schools.dedup();
        for k in 0..h.guardians {
            n_guardians += 1;
            let g = n_guardians;
            let given = rng.pick(GIVEN);
            let family = if k == 0 || rng.pct(70) {
                h.family
            } else {
                rng.pick(FAMILY)
            };
            let role = if rng.pct(90) { "parent" } else { "guardian" };
            let none = rng.pct(2); // no usable channel at all
            let phone = if none || rng.pct(5) {
                String::new()
            } else {
                next_phone(&mut rng)
            };
            let sms = if !none && rng.pct(10) {
                next_phone(&mut rng)
            } else {
                String::new()
            };
            let email = match rng.below(100) {
                _ if none => String::new(),
                0 => format!("{}.{}{g}@", given.to_lowercase(), family.to_lowercase()),
                1..=75 => format!(
                    "{}.{}{g}@{}",
                    given,
                    family,
                    rng.pick(&["gmail.com", "Yahoo.com", "example.net", "outlook.com"])
                ),
                _ => String::new(),
            };
            buf.clear();
            let _ = write!(
                buf,
                "gdn-{g:07},active,2025-07-01T00:00:00Z,true,\"{}\",{role},g{g},,{given},{family},,,{email},{sms},{phone},\"{}\",,,{}",
                schools.join(","),
                kid_ids.join(","),
                h.language
            );
            users.line(&buf)?;
        }
    }
    sum.guardians = n_guardians;
    for s in 0..n_schools {
        for k in 0..staff_per_school[s as usize] {
            let t = staff_base[s as usize] + 1 + k;
            let role = if k == 0 {
                "administrator"
            } else if k % 10 == 9 {
                "aide"
            } else {
                "teacher"
            };
            let given = rng.pick(GIVEN);
            let family = rng.pick(FAMILY);
            let phone = if rng.pct(50) {
                next_phone(&mut rng)
            } else {
                String::new()
            };
            buf.clear();
            let _ = write!(
                buf,
                "stf-{t:06},active,2025-07-01T00:00:00Z,true,sch-{s:04},{role},t{t},,{given},{family},,,{}.{}.{t}@example-isd.org,,{phone},,,,{}",
                given.to_lowercase(),
                family.to_lowercase(),
                if rng.pct(85) { "en" } else { "es" }
            );
            users.line(&buf)?;
            sum.staff += 1;
        }
    }
    users.finish()?;
    sum.students = children.len() as u32;
    Ok(sum)
}
