//! The schema of `sis.db`, the SQLite copy of the SIS.
//!
//! The file is written once by [`crate::sis::import`] and then only read. Every
//! row refers to others by small integer keys (`pk`) so resolution joins on
//! integers; the OneRoster `sourcedId`s are kept in `id` columns for display
//! and for `--school ID` style lookups.
//!
//! | table | one row per | columns |
//! |---|---|---|
//! | `meta` | fact about the import | `key`, `value`: `schema_version`, `imported_at`, `source`, `oneroster_version`, `students`, `guardians`, `staff`, `schools`, `contact_points`, `report` (JSON) |
//! | `schools` | school (an org of type `school`, or an org with no school above it that people belong to) | `pk`, `id`, `name`, `kind` (the OneRoster org type) |
//! | `people` | active person | `pk`, `id`, `role` (primary: `student`, `staff`, `guardian`), `is_student`, `is_staff`, `is_guardian` (a teacher can also be a guardian), `given` (preferred given name if any), `family`, `language` (primary subtag, lower case), `grade` (students; leading zeros dropped), `modified` (the record's `dateLastModified` as an RFC 3339 UTC timestamp; NULL when absent or ambiguous) |
//! | `person_schools` | person × school | `person`, `school` |
//! | `guardianship` | guardian × student | `guardian`, `student` |
//! | `contacts` | person × usable address | `person`, `channel` (`sms`, `voice`, `email`), `address` (E.164 or lower-cased email). The same address on several people is several rows; `COUNT(DISTINCT address)` is the number of contact points |
//! | `classes` | active class | `pk`, `id`, `title`, `school` |
//! | `class_grades` | class × grade it is for | `class`, `grade` |
//! | `class_members` | enrollment (deduplicated) | `class`, `person`, `role` (`student` or `staff`) |
//! | `base_files` | CSV file the copy was built from | `name` (`manifest.csv`, `users.csv`…), `content`: the full set as merged so far, tombstones (`tobedeleted` rows) included, so a delta export can be applied on top (see [`crate::sis::delta`]) |
//!
//! Indexes are created after the bulk load (see [`INDEXES`]); each serves one
//! step of audience resolution.

/// Bumped when a reader could misread an older file.
pub const SCHEMA_VERSION: &str = "1";

pub const TABLES: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE schools (pk INTEGER PRIMARY KEY, id TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL);
CREATE TABLE people (
    pk INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    role TEXT NOT NULL,
    is_student INTEGER NOT NULL,
    is_staff INTEGER NOT NULL,
    is_guardian INTEGER NOT NULL,
    given TEXT NOT NULL,
    family TEXT NOT NULL,
    language TEXT NOT NULL,
    grade TEXT,
    modified TEXT
);
CREATE TABLE person_schools (person INTEGER NOT NULL, school INTEGER NOT NULL);
CREATE TABLE guardianship (guardian INTEGER NOT NULL, student INTEGER NOT NULL);
CREATE TABLE contacts (person INTEGER NOT NULL, channel TEXT NOT NULL, address TEXT NOT NULL);
CREATE TABLE classes (pk INTEGER PRIMARY KEY, id TEXT NOT NULL, title TEXT NOT NULL, school INTEGER);
CREATE TABLE class_grades (class INTEGER NOT NULL, grade TEXT NOT NULL);
CREATE TABLE class_members (class INTEGER NOT NULL, person INTEGER NOT NULL, role TEXT NOT NULL);
CREATE TABLE base_files (name TEXT PRIMARY KEY, content BLOB NOT NULL);
";

pub const INDEXES: &str = "
CREATE UNIQUE INDEX schools_id ON schools(id);
CREATE UNIQUE INDEX people_id ON people(id);
CREATE INDEX people_student_grade ON people(is_student, grade);
CREATE INDEX person_schools_person ON person_schools(person, school);
CREATE INDEX person_schools_school ON person_schools(school, person);
CREATE INDEX guardianship_student ON guardianship(student, guardian);
CREATE INDEX guardianship_guardian ON guardianship(guardian, student);
CREATE INDEX contacts_person ON contacts(person);
CREATE INDEX contacts_address ON contacts(channel, address);
CREATE UNIQUE INDEX classes_id ON classes(id);
CREATE INDEX class_grades_grade ON class_grades(grade, class);
CREATE INDEX class_members_class ON class_members(class, person);
CREATE INDEX class_members_person ON class_members(person, class);
ANALYZE;
-- Keep the planner's row counts (sqlite_stat1), drop the value samples:
-- with samples, a statement whose parameter the planner looked at is
-- prepared again at every new binding, and an audience read one person at
-- a time spent a tenth of its CPU in SQLite's parser.
DELETE FROM sqlite_stat4;
";
