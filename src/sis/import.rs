//! OneRoster 1.1 / 1.2 CSV export → a fresh `sis.db`, swapped in atomically.
//!
//! The export is streamed file by file (orgs, classes, roles, users,
//! enrollments) into a temporary SQLite file in the store folder, inside one
//! transaction with bulk-load settings; indexes are built at the end. Only
//! when everything checked out (structure, references, the shrink guard) is
//! the file fsynced and renamed over `sis.db`. On any error the temporary file
//! is removed and the previous copy stays in use.
//!
//! What is accepted with a warning (each naming file, line, field and value):
//! a trailing empty field beyond the header, unnamed trailing header columns,
//! known header misspellings, an org whose parent is not in the file, a
//! department with no school above it (used as the school), unusable phone
//! numbers and emails, agent links that are not guardian↔student. What is
//! rejected whole: see [`ImportError`]. A user's `dateLastModified` is kept
//! (`people.modified`) when it is a date that can be read one way only; a
//! `1/05/2023` style date is left out with a warning. Other dates are not
//! interpreted.
//!
//! The CSV files the copy was built from are stored in it (`base_files`) so
//! that a delta export can later be merged on top: [`import()`] hands a delta
//! manifest to [`super::delta`], which merges and comes back here with a full
//! set.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::{Connection, Transaction, params};
use serde::{Deserialize, Serialize};

use super::source::{Source, Table};
use super::{SisConfig, current_path, normalize_grade, schema};
use crate::domain::Channel;
use crate::domain::email::EmailAddress;
use crate::domain::phone::PhoneNumber;

/// Share of references that may point at records missing from the export
/// before the export is judged broken rather than slightly untidy.
pub const DANGLING_MAX_SHARE: f64 = 0.01;
/// Warnings kept in the report; the rest are only counted.
const MAX_WARNINGS: usize = 10_000;

/// Options for one import.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportOptions {
    /// Accept an export that shrinks more than `max_shrink`.
    pub force: bool,
}

/// Something odd that was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportWarning {
    pub file: String,
    pub line: u64,
    pub field: String,
    pub value: String,
    pub message: String,
}

impl fmt::Display for ImportWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} line {}, {}", self.file, self.line, self.field)?;
        if !self.value.is_empty() {
            write!(f, " {:?}", self.value)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// People records (users.csv rows, by sourcedId) that differ from the
/// previous copy: what an operator reads to see what a sync changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub added: u64,
    pub changed: u64,
    pub removed: u64,
}

/// What an import found and wrote.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImportReport {
    pub source: String,
    /// `bulk` (a full export), `delta` (merged on top of the previous copy)
    /// or `rest` (pulled from a OneRoster REST API).
    #[serde(default)]
    pub kind: String,
    /// People added, changed and removed compared with the previous copy
    /// (all added when there was none).
    #[serde(default)]
    pub changes: Changes,
    pub oneroster_version: String,
    pub imported_at: String,
    pub schools: u64,
    pub students: u64,
    pub guardians: u64,
    pub staff: u64,
    pub classes: u64,
    pub enrollments: u64,
    pub guardian_links: u64,
    /// Distinct addresses per channel.
    pub contact_points: BTreeMap<Channel, u64>,
    pub contact_points_total: u64,
    /// Guardians and staff with no usable address.
    pub unreachable_contacts: u64,
    /// Records left out because `status=tobedeleted`/`inactive` or `enabledUser=false`.
    pub inactive_skipped: u64,
    /// True when the shrink guard was overridden with `force`.
    pub forced: bool,
    pub warnings_total: u64,
    pub warnings: Vec<ImportWarning>,
    pub elapsed_ms: u64,
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "OneRoster {} export imported from {}",
            self.oneroster_version, self.source
        )?;
        writeln!(
            f,
            "  people: {} added, {} changed, {} removed since the previous copy",
            self.changes.added, self.changes.changed, self.changes.removed
        )?;
        writeln!(f, "  schools      {:>8}", self.schools)?;
        writeln!(f, "  students     {:>8}", self.students)?;
        writeln!(
            f,
            "  guardians    {:>8}  ({} guardian-student links)",
            self.guardians, self.guardian_links
        )?;
        writeln!(f, "  staff        {:>8}", self.staff)?;
        writeln!(
            f,
            "  classes      {:>8}  ({} enrollments)",
            self.classes, self.enrollments
        )?;
        let per: Vec<String> = Channel::ALL
            .iter()
            .map(|c| format!("{c} {}", self.contact_points.get(c).copied().unwrap_or(0)))
            .collect();
        writeln!(
            f,
            "  contact points {} ({})",
            self.contact_points_total,
            per.join(", ")
        )?;
        writeln!(
            f,
            "  guardians and staff with no usable channel: {}",
            self.unreachable_contacts
        )?;
        if self.inactive_skipped > 0 {
            writeln!(f, "  inactive records left out: {}", self.inactive_skipped)?;
        }
        if self.forced {
            writeln!(f, "  shrink guard overridden with --force")?;
        }
        writeln!(
            f,
            "  {} warning(s) in {} ms",
            self.warnings_total, self.elapsed_ms
        )?;
        for w in self.warnings.iter().take(20) {
            writeln!(f, "    {w}")?;
        }
        if self.warnings_total > 20 {
            writeln!(
                f,
                "    … and {} more (see --json)",
                self.warnings_total - 20
            )?;
        }
        Ok(())
    }
}

/// Longest field value quoted whole in a report or an error.
const QUOTE_MAX: usize = 80;

/// A field value as quoted to people: a huge one (a 2 MB cell) is cut to
/// its first 80 bytes and its size, so a report stays readable.
fn clip_raw(v: &str) -> String {
    if v.len() <= QUOTE_MAX {
        return v.to_string();
    }
    let mut end = QUOTE_MAX;
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &v[..end], v.len())
}

/// `clip_raw`, quoted as the error messages quote values.
fn clip(v: &str) -> String {
    if v.len() <= QUOTE_MAX {
        format!("{v:?}")
    } else {
        let cut = clip_raw(v);
        let (head, size) = cut.split_once('…').unwrap_or((&cut, ""));
        format!("{head:?}…{size}")
    }
}

/// Why an export was refused. The previous `sis.db` is untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a OneRoster export: {reason}")]
    NotAnExport { path: PathBuf, reason: String },
    #[error("{}: required file is missing ({})", clip_raw(.file), clip_raw(.reason))]
    MissingFile { file: String, reason: String },
    #[error("{file} line {line}, {} {}: {reason}", clip_raw(.field), clip(.value))]
    Unsupported {
        file: String,
        line: u64,
        field: String,
        value: String,
        reason: String,
    },
    #[error("{file}: required column {column:?} is missing from the header")]
    MissingColumn { file: String, column: String },
    #[error("{file} line {line}, column {}: not valid UTF-8 (read as {})", clip_raw(.column), clip(.value))]
    BadUtf8 {
        file: String,
        line: u64,
        column: String,
        value: String,
    },
    #[error("{file} line {line}: {}", clip_raw(.message))]
    Csv {
        file: String,
        line: u64,
        message: String,
    },
    #[error(
        "{file} line {line}: row has {found} fields, {expected} expected; column {} is missing (truncated file?)", clip(.column)
    )]
    ShortRow {
        file: String,
        line: u64,
        expected: usize,
        found: usize,
        column: String,
    },
    #[error("{file} line {line}: a quoted field is never closed (truncated file?)")]
    UnclosedQuote { file: String, line: u64 },
    #[error("{file} line {line}, sourcedId {}: duplicate (first seen on line {first_line})", clip(.value))]
    DuplicateId {
        file: String,
        line: u64,
        value: String,
        first_line: u64,
    },
    #[error("{file} line {line}, {} {}: unknown role", clip_raw(.field), clip(.value))]
    UnknownRole {
        file: String,
        line: u64,
        field: String,
        value: String,
    },
    #[error("{file} line {line}, {} {}: {reason}", clip_raw(.field), clip(.value))]
    InvalidValue {
        file: String,
        line: u64,
        field: String,
        value: String,
        reason: String,
    },
    #[error(
        "{count} of {total} references point at records missing from the export (more than {}%); first: {file} line {line}, {field} {}",
        DANGLING_MAX_SHARE * 100.0,
        clip(.value)
    )]
    Dangling {
        count: u64,
        total: u64,
        file: String,
        line: u64,
        field: String,
        value: String,
    },
    #[error(
        "refusing the export: {what} would drop from {before} to {after} (-{:.1}%, more than the {:.1}% allowed by sis.max_shrink); run with --force if this is expected",
        (*before as f64 - *after as f64) * 100.0 / (*before as f64),
        max_shrink * 100.0
    )]
    Shrink {
        what: &'static str,
        before: u64,
        after: u64,
        max_shrink: f64,
    },
    #[error("refusing the delta export {path}: {reason}")]
    Delta { path: PathBuf, reason: String },
    #[error("SQLite while {context}: {source}")]
    Sqlite {
        context: &'static str,
        source: rusqlite::Error,
    },
}

fn sql(context: &'static str) -> impl FnOnce(rusqlite::Error) -> ImportError {
    move |source| ImportError::Sqlite { context, source }
}

/// The three kinds of people klaxon targets, as bits so one person can be
/// several (a teacher who is also a parent).
const STUDENT: u8 = 1;
const STAFF: u8 = 2;
const GUARDIAN: u8 = 4;

/// Maps a OneRoster role to klaxon's kind; `None` for an unknown role.
fn role_bits(role: &str) -> Option<u8> {
    let r = role.trim().to_ascii_lowercase();
    Some(match r.as_str() {
        "student" => STUDENT,
        "parent" | "guardian" | "relative" => GUARDIAN,
        "teacher"
        | "administrator"
        | "aide"
        | "siteadministrator"
        | "principal"
        | "districtadministrator"
        | "systemadministrator"
        | "proctor"
        | "counselor"
        | "staff" => STAFF,
        _ => return None,
    })
}

fn primary_role(bits: u8) -> &'static str {
    if bits & STUDENT != 0 {
        "student"
    } else if bits & STAFF != 0 {
        "staff"
    } else {
        "guardian"
    }
}

fn is_inactive_status(s: &str) -> bool {
    s.eq_ignore_ascii_case("tobedeleted") || s.eq_ignore_ascii_case("inactive")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Version {
    V1_1,
    V1_2,
}

struct Org {
    name: String,
    kind: String,
    parent: String,
    line: u64,
    school: Option<u32>,
}

#[derive(Default)]
struct RoleInfo {
    bits: u8,
    primary: u8,
    orgs: Vec<String>,
}

/// Everything the streaming passes accumulate.
struct Build<'a> {
    cfg: &'a SisConfig,
    report: ImportReport,
    orgs: HashMap<String, Org>,
    /// Ids of records left out as inactive: references to them are skipped, not dangling.
    inactive: HashSet<Box<str>>,
    classes: HashMap<Box<str>, (u32, Option<u32>, u64)>,
    users: HashMap<Box<str>, u32>,
    /// Per person pk (index): kind bits and the line it came from.
    bits: Vec<u8>,
    user_lines: Vec<u64>,
    person_schools: Vec<(u32, u32)>,
    members: Vec<(u32, u32, u8)>,
    agents: Vec<(u32, Box<str>, u64)>,
    refs: u64,
    dangling: u64,
    first_dangling: Option<ImportWarning>,
}

impl Build<'_> {
    fn warn(
        &mut self,
        file: &str,
        line: u64,
        field: &str,
        value: &str,
        message: impl Into<String>,
    ) {
        self.report.warnings_total += 1;
        if self.report.warnings.len() < MAX_WARNINGS {
            self.report.warnings.push(ImportWarning {
                file: file.into(),
                line,
                field: field.into(),
                value: clip_raw(value),
                message: message.into(),
            });
        }
    }

    fn dangle(&mut self, file: &str, line: u64, field: &str, value: &str, what: &str) {
        self.dangling += 1;
        let w = ImportWarning {
            file: file.into(),
            line,
            field: field.into(),
            value: clip_raw(value),
            message: format!("no {what} with this sourcedId in the export; reference ignored"),
        };
        if self.first_dangling.is_none() {
            self.first_dangling = Some(w.clone());
        }
        self.warn(&w.file, w.line, &w.field, &w.value, w.message);
    }

    fn drain_notes(&mut self, t: &mut Table) {
        for (line, field, msg) in std::mem::take(&mut t.notes) {
            self.warn(&t.file.clone(), line, &field, "", msg);
        }
    }

    /// Resolves an org reference to a school pk. `Ok(None)` when the org is
    /// known but is not under a school (a district), or inactive.
    fn org_school(&mut self, file: &str, line: u64, field: &str, id: &str) -> Option<u32> {
        self.refs += 1;
        if let Some(org) = self.orgs.get(id) {
            return org.school;
        }
        if !self.inactive.contains(id) {
            self.dangle(file, line, field, id, "org");
        }
        None
    }
}

/// Where a full set being imported came from, as the report names it.
pub(crate) struct Origin {
    pub source: String,
    pub kind: &'static str,
}

/// Imports the export at `src` into `store_dir/sis.db`. See the module docs.
/// A delta export is merged on top of the current copy first.
pub fn import(
    src: &Path,
    store_dir: &Path,
    cfg: &SisConfig,
    opts: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    if super::delta::is_delta(src)? {
        let origin = Origin {
            source: src.display().to_string(),
            kind: "delta",
        };
        return super::delta::apply(src, store_dir, cfg, opts, origin);
    }
    let origin = Origin {
        source: src.display().to_string(),
        kind: "bulk",
    };
    import_full(src, store_dir, cfg, opts, &origin)
}

/// Imports a full set (every file `bulk`) and swaps it in.
pub(crate) fn import_full(
    src: &Path,
    store_dir: &Path,
    cfg: &SisConfig,
    opts: &ImportOptions,
    origin: &Origin,
) -> Result<ImportReport, ImportError> {
    let started = Instant::now();
    let mut source = Source::open(src)?;
    std::fs::create_dir_all(store_dir).map_err(|e| ImportError::Io {
        path: store_dir.to_path_buf(),
        source: e,
    })?;
    // The SIS copy holds every family's contacts: private folder and file.
    let private = |e: crate::store::StoreError| ImportError::Io {
        path: store_dir.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    };
    crate::store::guard::private_dir(store_dir).map_err(private)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tmp = TempFile(store_dir.join(format!(".sis.db.importing-{}-{nanos}", std::process::id())));

    crate::store::guard::private_file(&tmp.0).map_err(private)?;
    let mut conn = Connection::open(&tmp.0).map_err(sql("creating the new SIS file"))?;
    conn.execute_batch(
        "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA locking_mode = EXCLUSIVE;
         PRAGMA cache_size = -65536;",
    )
    .map_err(sql("setting bulk-load pragmas"))?;
    conn.execute_batch(schema::TABLES)
        .map_err(sql("creating tables"))?;

    let mut b = Build {
        cfg,
        report: ImportReport {
            source: origin.source.clone(),
            kind: origin.kind.to_string(),
            ..Default::default()
        },
        orgs: HashMap::new(),
        inactive: HashSet::new(),
        classes: HashMap::new(),
        users: HashMap::new(),
        bits: vec![0],
        user_lines: vec![0],
        person_schools: Vec::new(),
        members: Vec::new(),
        agents: Vec::new(),
        refs: 0,
        dangling: 0,
        first_dangling: None,
    };
    {
        let tx = conn.transaction().map_err(sql("starting the load"))?;
        let files = load(&tx, &mut source, &mut b)?;
        finish(&tx, &mut b)?;
        store_base(&tx, &mut source, &files)?;
        tx.commit().map_err(sql("committing the load"))?;
    }
    conn.close().map_err(|(_, e)| ImportError::Sqlite {
        context: "closing the new SIS file",
        source: e,
    })?;

    let current = current_path(store_dir);
    b.report.changes = super::delta::people_changes(&current, &tmp.0);
    if !opts.force {
        shrink_guard(&current, &b.report, cfg.max_shrink)?;
    } else if shrink_guard(&current, &b.report, cfg.max_shrink).is_err() {
        b.report.forced = true;
    }
    b.report.elapsed_ms = started.elapsed().as_millis() as u64;
    rewrite_report(&tmp.0, &b.report)?;

    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e| ImportError::Io { path, source: e }
    };
    std::fs::File::open(&tmp.0)
        .and_then(|f| f.sync_all())
        .map_err(io(&tmp.0))?;
    std::fs::rename(&tmp.0, &current).map_err(io(&current))?;
    tmp.disarm();
    // Make the rename itself durable.
    if let Ok(dir) = std::fs::File::open(store_dir) {
        let _ = dir.sync_all();
    }
    tracing::info!(
        students = b.report.students,
        guardians = b.report.guardians,
        staff = b.report.staff,
        warnings = b.report.warnings_total,
        "SIS copy replaced."
    );
    Ok(b.report)
}

/// Removes the half-built file unless the import succeeded.
struct TempFile(PathBuf);

impl TempFile {
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        for suffix in ["-journal", "-wal", "-shm"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
    }
}

/// Counts recorded by the previous import, if there is a readable one.
fn previous_counts(current: &Path) -> Option<(u64, u64)> {
    let conn = super::open_current_at(current).ok()?;
    let get = |k: &str| -> Option<u64> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| {
            r.get::<_, String>(0)
        })
        .ok()?
        .parse()
        .ok()
    };
    Some((get("students")?, get("contact_points")?))
}

fn shrink_guard(current: &Path, report: &ImportReport, max_shrink: f64) -> Result<(), ImportError> {
    let Some((students, contacts)) = previous_counts(current) else {
        return Ok(());
    };
    for (what, before, after) in [
        ("students", students, report.students),
        ("contact points", contacts, report.contact_points_total),
    ] {
        if before > 0 && (after as f64) < (before as f64) * (1.0 - max_shrink) {
            return Err(ImportError::Shrink {
                what,
                before,
                after,
                max_shrink,
            });
        }
    }
    Ok(())
}

fn rewrite_report(path: &Path, report: &ImportReport) -> Result<(), ImportError> {
    let conn = Connection::open(path).map_err(sql("reopening the new SIS file"))?;
    let json = serde_json::to_string(report).unwrap_or_default();
    conn.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES ('report', ?1)",
        [json],
    )
    .map_err(sql("writing the report"))?;
    Ok(())
}

/// Keeps the manifest and every file it lists as bulk in the new copy, so a
/// later delta has a base to merge into.
fn store_base(tx: &Transaction, source: &mut Source, files: &[String]) -> Result<(), ImportError> {
    let mut ins = tx
        .prepare("INSERT INTO base_files(name, content) VALUES (?1, ?2)")
        .map_err(sql("preparing base_files"))?;
    let names =
        std::iter::once("manifest.csv".to_string()).chain(files.iter().map(|f| format!("{f}.csv")));
    for name in names {
        let Some(mut reader) = source.open_file(&name)? else {
            continue;
        };
        let mut content = Vec::new();
        reader
            .read_to_end(&mut content)
            .map_err(|e| ImportError::Csv {
                file: name.clone(),
                line: 0,
                message: format!("cannot read the file again to keep it: {e}"),
            })?;
        drop(reader);
        ins.execute(params![name, content])
            .map_err(sql("storing base_files"))?;
    }
    Ok(())
}

/// Loads every table; returns the (lower-case) names of the files the
/// manifest lists as bulk.
fn load(tx: &Transaction, source: &mut Source, b: &mut Build) -> Result<Vec<String>, ImportError> {
    let (version, files) = read_manifest(source, b)?;
    b.report.oneroster_version = match version {
        Version::V1_1 => "1.1".into(),
        Version::V1_2 => "1.2".into(),
    };
    let present = |name: &str| files.get(name).map(String::as_str) == Some("bulk");
    for name in ["orgs", "users"] {
        if !present(name) {
            return Err(ImportError::MissingFile {
                file: format!("{name}.csv"),
                reason: "manifest.csv must list it as bulk".into(),
            });
        }
    }
    let open = |source: &mut Source, name: &str| -> Result<(), ImportError> {
        if source.open_file(&format!("{name}.csv"))?.is_none() {
            return Err(ImportError::MissingFile {
                file: format!("{name}.csv"),
                reason: "manifest.csv lists it as bulk but the file is not in the export".into(),
            });
        }
        Ok(())
    };
    // Every file the manifest lists must be there, even one klaxon does not
    // read (courses): a missing one means a truncated or mixed-up export.
    let mut listed: Vec<&String> = files
        .iter()
        .filter(|(_, v)| v.as_str() == "bulk")
        .map(|(k, _)| k)
        .collect();
    listed.sort();
    for name in listed {
        open(source, name)?;
    }
    load_orgs(tx, source, b)?;
    if present("classes") {
        load_classes(tx, source, b)?;
    }
    let roles = if version == Version::V1_2 && present("roles") {
        Some(load_roles(source, b)?)
    } else {
        None
    };
    load_users(tx, source, b, roles)?;
    if present("enrollments") {
        load_enrollments(source, b)?;
    }
    let mut bulk: Vec<String> = files
        .iter()
        .filter(|(_, v)| v.as_str() == "bulk")
        .map(|(k, _)| k.clone())
        .collect();
    bulk.sort();
    Ok(bulk)
}

/// Opens a file the manifest lists as present and reads its header.
fn listed_table<'a>(
    source: &'a mut Source,
    file: &str,
    required: &[&str],
) -> Result<Table<'a>, ImportError> {
    let reader = source
        .open_file(file)?
        .ok_or_else(|| ImportError::MissingFile {
            file: file.into(),
            reason: "listed in the manifest".into(),
        })?;
    Table::new(file, reader, required)
}

fn read_manifest(
    source: &mut Source,
    b: &mut Build,
) -> Result<(Version, HashMap<String, String>), ImportError> {
    const FILE: &str = "manifest.csv";
    let reader = source
        .open_file(FILE)?
        .ok_or_else(|| ImportError::MissingFile {
            file: FILE.into(),
            reason: "every OneRoster export starts with it".into(),
        })?;
    let mut t = Table::new(FILE, reader, &["propertyName", "value"])?;
    let (c_name, c_value) = (t.col("propertyname"), t.col("value"));
    let mut version = None;
    let mut files = HashMap::new();
    while t.next()? {
        let name = t.get(c_name).to_string();
        let value = t.get(c_value).to_ascii_lowercase();
        if name.eq_ignore_ascii_case("oneroster.version") {
            version = Some(match value.as_str() {
                "1.1" | "1.0" => Version::V1_1,
                "1.2" => Version::V1_2,
                _ => {
                    return Err(ImportError::Unsupported {
                        file: FILE.into(),
                        line: t.line,
                        field: "oneroster.version".into(),
                        value,
                        reason: "only OneRoster 1.1 and 1.2 are supported".into(),
                    });
                }
            });
        } else if let Some(file) = name.strip_prefix("file.") {
            let file = file.to_ascii_lowercase();
            match value.as_str() {
                "bulk" | "absent" => {}
                "" => b.warn(FILE, t.line, &name, "", "empty value read as absent"),
                "delta"
                    if matches!(
                        file.as_str(),
                        "orgs" | "users" | "classes" | "enrollments" | "roles"
                    ) =>
                {
                    return Err(ImportError::Unsupported {
                        file: FILE.into(),
                        line: t.line,
                        field: name,
                        value,
                        reason: "a manifest cannot mix delta files into a full set".into(),
                    });
                }
                _ => b.warn(
                    FILE,
                    t.line,
                    &name,
                    &value,
                    "unexpected value; file ignored",
                ),
            }
            files.insert(file, value);
        }
    }
    b.drain_notes(&mut t);
    let version = match version {
        Some(v) => v,
        None => {
            let v = if files.get("roles").is_some_and(|v| v == "bulk") {
                Version::V1_2
            } else {
                Version::V1_1
            };
            b.warn(
                FILE,
                0,
                "oneroster.version",
                "",
                "missing; guessed from the files listed",
            );
            v
        }
    };
    Ok((version, files))
}

fn check_dup<V>(
    map: &HashMap<Box<str>, V>,
    file: &str,
    line: u64,
    id: &str,
    first: impl Fn(&V) -> u64,
) -> Result<(), ImportError> {
    if let Some(v) = map.get(id) {
        return Err(ImportError::DuplicateId {
            file: file.into(),
            line,
            value: id.into(),
            first_line: first(v),
        });
    }
    Ok(())
}

fn require_id(file: &str, line: u64, id: &str) -> Result<(), ImportError> {
    if id.is_empty() {
        return Err(ImportError::InvalidValue {
            file: file.into(),
            line,
            field: "sourcedId".into(),
            value: String::new(),
            reason: "empty sourcedId".into(),
        });
    }
    Ok(())
}

fn load_orgs(tx: &Transaction, source: &mut Source, b: &mut Build) -> Result<(), ImportError> {
    const FILE: &str = "orgs.csv";
    let mut t = listed_table(source, FILE, &["sourcedId", "name", "type"])?;
    let (c_id, c_status, c_name, c_type, c_parent) = (
        t.col("sourcedid"),
        t.col("status"),
        t.col("name"),
        t.col("type"),
        t.col("parentsourcedid"),
    );
    while t.next()? {
        let id = t.get(c_id);
        require_id(FILE, t.line, id)?;
        if let Some(org) = b.orgs.get(id) {
            return Err(ImportError::DuplicateId {
                file: FILE.into(),
                line: t.line,
                value: id.into(),
                first_line: org.line,
            });
        }
        if is_inactive_status(t.get(c_status)) {
            b.inactive.insert(id.into());
            b.report.inactive_skipped += 1;
            continue;
        }
        let kind = t.get(c_type).to_ascii_lowercase();
        if !matches!(
            kind.as_str(),
            "school" | "district" | "department" | "local" | "state" | "national"
        ) {
            b.warn(
                FILE,
                t.line,
                "type",
                &kind,
                "unknown org type; treated like a department",
            );
        }
        let org = Org {
            name: t.get(c_name).into(),
            kind,
            parent: t.get(c_parent).into(),
            line: t.line,
            school: None,
        };
        b.orgs.insert(id.into(), org);
    }
    b.drain_notes(&mut t);

    // Each org belongs to the nearest school at or above it. An org that
    // people belong to but that has no school above it (a department whose
    // parent is not in the file) is taken as its own school: that is the only
    // way to target its people, and it is said in a warning.
    let mut ids: Vec<String> = b.orgs.keys().cloned().collect();
    ids.sort_by_key(|id| b.orgs.get(id).map_or(0, |o| o.line));
    let mut insert = tx
        .prepare("INSERT INTO schools(pk, id, name, kind) VALUES (?1, ?2, ?3, ?4)")
        .map_err(sql("preparing schools"))?;
    let mut school_pk = HashMap::new();
    for id in &ids {
        let mut cur = id.clone();
        let mut found = None;
        for _ in 0..32 {
            let Some(org) = b.orgs.get(&cur) else { break };
            if org.kind == "school" {
                found = Some(cur.clone());
                break;
            }
            if org.parent.is_empty() || org.parent == cur {
                break;
            }
            cur = org.parent.clone();
        }
        let Some(org) = b.orgs.get(id) else { continue };
        let (line, parent, kind) = (org.line, org.parent.clone(), org.kind.clone());
        if !parent.is_empty()
            && !b.orgs.contains_key(&parent)
            && !b.inactive.contains(parent.as_str())
        {
            b.warn(
                FILE,
                line,
                "parentSourcedId",
                &parent,
                "parent org is not in the file; ignored",
            );
        }
        let unit = match found {
            Some(s) => Some(s),
            None if matches!(kind.as_str(), "district" | "state" | "national" | "local") => None,
            None => {
                b.warn(FILE, line, "type", &kind, "no school above this org in the file; its people are grouped under it as a school");
                Some(id.clone())
            }
        };
        let Some(unit) = unit else { continue };
        let next = school_pk.len() as u32 + 1;
        let pk = match school_pk.get(&unit) {
            Some(&pk) => pk,
            None => {
                let Some(u) = b.orgs.get(&unit) else { continue };
                insert
                    .execute(params![next, unit, u.name, u.kind])
                    .map_err(sql("inserting schools"))?;
                school_pk.insert(unit.clone(), next);
                next
            }
        };
        if let Some(org) = b.orgs.get_mut(id) {
            org.school = Some(pk);
        }
    }
    b.report.schools = school_pk.len() as u64;
    Ok(())
}

fn load_classes(tx: &Transaction, source: &mut Source, b: &mut Build) -> Result<(), ImportError> {
    const FILE: &str = "classes.csv";
    let mut t = listed_table(source, FILE, &["sourcedId", "schoolSourcedId"])?;
    let (c_id, c_status, c_title, c_grades, c_school) = (
        t.col("sourcedid"),
        t.col("status"),
        t.col("title"),
        t.col("grades"),
        t.col("schoolsourcedid"),
    );
    let mut ins = tx
        .prepare("INSERT INTO classes(pk, id, title, school) VALUES (?1, ?2, ?3, ?4)")
        .map_err(sql("preparing classes"))?;
    let mut ins_grade = tx
        .prepare("INSERT INTO class_grades(class, grade) VALUES (?1, ?2)")
        .map_err(sql("preparing class grades"))?;
    while t.next()? {
        let id = t.get(c_id);
        require_id(FILE, t.line, id)?;
        check_dup(&b.classes, FILE, t.line, id, |v| v.2)?;
        if is_inactive_status(t.get(c_status)) {
            b.inactive.insert(id.into());
            b.report.inactive_skipped += 1;
            continue;
        }
        let line = t.line;
        let school = t.get(c_school).to_string();
        let school = b.org_school(FILE, line, "schoolSourcedId", &school);
        let pk = b.classes.len() as u32 + 1;
        ins.execute(params![pk, id, t.get(c_title), school])
            .map_err(sql("inserting classes"))?;
        let mut seen = Vec::new();
        for g in t
            .get(c_grades)
            .split(',')
            .map(normalize_grade)
            .filter(|g| !g.is_empty())
        {
            if !seen.contains(&g) {
                ins_grade
                    .execute(params![pk, g])
                    .map_err(sql("inserting class grades"))?;
                seen.push(g);
            }
        }
        b.classes.insert(id.into(), (pk, school, line));
    }
    b.drain_notes(&mut t);
    b.report.classes = b.classes.len() as u64;
    Ok(())
}

/// 1.2 `roles.csv`: user → kinds and orgs. The primary role decides the
/// person's main kind; secondary roles add kinds (a teacher who is a guardian).
fn load_roles(
    source: &mut Source,
    b: &mut Build,
) -> Result<HashMap<Box<str>, RoleInfo>, ImportError> {
    const FILE: &str = "roles.csv";
    let mut t = listed_table(
        source,
        FILE,
        &["sourcedId", "userSourcedId", "roleType", "role"],
    )?;
    let (c_id, c_status, c_user, c_type, c_role, c_org) = (
        t.col("sourcedid"),
        t.col("status"),
        t.col("usersourcedid"),
        t.col("roletype"),
        t.col("role"),
        t.col("orgsourcedid"),
    );
    let mut seen: HashMap<u64, u64> = HashMap::new();
    let mut roles: HashMap<Box<str>, RoleInfo> = HashMap::new();
    while t.next()? {
        let id = t.get(c_id);
        require_id(FILE, t.line, id)?;
        if let Some(first) = seen.insert(hash_id(id), t.line) {
            return Err(ImportError::DuplicateId {
                file: FILE.into(),
                line: t.line,
                value: id.into(),
                first_line: first,
            });
        }
        if is_inactive_status(t.get(c_status)) {
            continue;
        }
        let role = t.get(c_role);
        let bits = role_bits(role).ok_or_else(|| ImportError::UnknownRole {
            file: FILE.into(),
            line: t.line,
            field: "role".into(),
            value: role.into(),
        })?;
        let primary = match t.get(c_type).to_ascii_lowercase().as_str() {
            "primary" => true,
            "secondary" | "" => false,
            other => {
                return Err(ImportError::InvalidValue {
                    file: FILE.into(),
                    line: t.line,
                    field: "roleType".into(),
                    value: other.into(),
                    reason: "expected primary or secondary".into(),
                });
            }
        };
        let info = roles.entry(t.get(c_user).into()).or_default();
        info.bits |= bits;
        if primary {
            info.primary = bits;
        }
        let org = t.get(c_org);
        if !org.is_empty() {
            info.orgs.push(org.into());
        }
    }
    b.drain_notes(&mut t);
    Ok(roles)
}

/// Stable 64-bit hash of an id, for duplicate checks on the big files where
/// keeping every id would cost too much memory. A false duplicate needs a
/// 64-bit collision (about 1e-8 for a million ids).
fn hash_id(id: &str) -> u64 {
    let mut h = DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

/// Reads a `dateLastModified` as an RFC 3339 UTC timestamp. Dates and
/// date-times without an offset are taken as UTC. A `d/m/y` or `m/d/y` date
/// is kept only when one reading is possible (`15/06/2023`); `1/05/2023`
/// could be either, and a wrong "last changed" is worse than none.
pub(crate) fn parse_modified(text: &str) -> Result<Option<String>, &'static str> {
    use jiff::civil::{Date, DateTime};
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(ts) = text.parse::<jiff::Timestamp>() {
        return Ok(Some(ts.to_string()));
    }
    let utc = |dt: DateTime| {
        dt.to_zoned(jiff::tz::TimeZone::UTC)
            .map(|z| Some(z.timestamp().to_string()))
            .map_err(|_| "not a date; not kept")
    };
    if let Ok(dt) = text.parse::<DateTime>() {
        return utc(dt);
    }
    if let Ok(d) = text.parse::<Date>() {
        return utc(d.to_datetime(jiff::civil::Time::midnight()));
    }
    let parts: Vec<&str> = text.split('/').collect();
    if let [a, b, y] = parts.as_slice() {
        let (Ok(a), Ok(b), Ok(y)) = (a.parse::<i8>(), b.parse::<i8>(), y.parse::<i16>()) else {
            return Err("not a date; not kept");
        };
        let dm = Date::new(y, b, a).ok();
        let md = Date::new(y, a, b).ok();
        return match (dm, md) {
            (Some(d), None) | (None, Some(d)) => utc(d.to_datetime(jiff::civil::Time::midnight())),
            (Some(d), Some(e)) if d == e => utc(d.to_datetime(jiff::civil::Time::midnight())),
            (Some(_), Some(_)) => Err("day and month could be either way round; not kept"),
            (None, None) => Err("not a date; not kept"),
        };
    }
    Err("not a date; not kept")
}

/// Reads a language from an ISO code or a common English name.
fn language_code(text: &str) -> Option<String> {
    let t = text.trim().to_ascii_lowercase();
    let primary = t.split(['-', '_']).next().unwrap_or("");
    let code = match primary {
        "english" | "eng" => "en",
        "spanish" | "spa" | "español" => "es",
        "vietnamese" | "vie" => "vi",
        "chinese" | "mandarin" | "cantonese" | "zho" | "chi" => "zh",
        "arabic" | "ara" => "ar",
        "french" | "fra" | "fre" => "fr",
        "haitian creole" | "hat" => "ht",
        "somali" | "som" => "so",
        "russian" | "rus" => "ru",
        "korean" | "kor" => "ko",
        "portuguese" | "por" => "pt",
        "tagalog" | "tgl" => "tl",
        c if (2..=3).contains(&c.len()) && c.chars().all(|ch| ch.is_ascii_lowercase()) => c,
        _ => return None,
    };
    Some(code.to_string())
}

fn load_users(
    tx: &Transaction,
    source: &mut Source,
    b: &mut Build,
    roles: Option<HashMap<Box<str>, RoleInfo>>,
) -> Result<(), ImportError> {
    const FILE: &str = "users.csv";
    let mut required = vec!["sourcedId", "givenName", "familyName"];
    if roles.is_none() {
        required.push("role");
    }
    let mut t = listed_table(source, FILE, &required)?;
    let c = |n: &str| t.col(n);
    let (c_id, c_status, c_enabled, c_role, c_given, c_pgiven, c_family) = (
        c("sourcedid"),
        c("status"),
        c("enableduser"),
        c("role"),
        c("givenname"),
        c("preferredgivenname"),
        c("familyname"),
    );
    let c_modified = c("datelastmodified");
    let (c_orgs, c_primary_org, c_email, c_sms, c_phone, c_agents, c_grades) = (
        c("orgsourcedids"),
        c("primaryorgsourcedid"),
        c("email"),
        c("sms"),
        c("phone"),
        c("agentsourcedids"),
        c("grades"),
    );
    let mut c_lang: Vec<usize> = ["preferredlanguage", "language"]
        .iter()
        .filter_map(|n| t.col(n))
        .collect();
    for i in t.cols_containing("language") {
        if !c_lang.contains(&i) {
            c_lang.push(i);
        }
    }

    let mut ins_person = tx
        .prepare("INSERT INTO people(pk, id, role, is_student, is_staff, is_guardian, given, family, language, grade, modified) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)")
        .map_err(sql("preparing people"))?;
    let mut ins_contact = tx
        .prepare("INSERT INTO contacts(person, channel, address) VALUES (?1, ?2, ?3)")
        .map_err(sql("preparing contacts"))?;
    let mut addresses: Vec<(Channel, String)> = Vec::with_capacity(4);
    let mut orgs: Vec<String> = Vec::new();
    let mut inactive_lines: HashMap<Box<str>, u64> = HashMap::new();
    let default_language = language_code(&b.cfg.default_language).unwrap_or_else(|| "en".into());
    while t.next()? {
        let line = t.line;
        let id = t.get(c_id);
        require_id(FILE, line, id)?;
        if let Some(&pk) = b.users.get(id) {
            let first_line = b.user_lines.get(pk as usize).copied().unwrap_or(0);
            return Err(ImportError::DuplicateId {
                file: FILE.into(),
                line,
                value: id.into(),
                first_line,
            });
        }
        if let Some(&first_line) = inactive_lines.get(id) {
            return Err(ImportError::DuplicateId {
                file: FILE.into(),
                line,
                value: id.into(),
                first_line,
            });
        }
        let enabled = t.get(c_enabled).to_ascii_lowercase();
        let disabled = match enabled.as_str() {
            "" | "true" | "1" | "yes" => false,
            "false" | "0" | "no" => true,
            other => {
                b.warn(
                    FILE,
                    line,
                    "enabledUser",
                    other,
                    "not true or false; read as true",
                );
                false
            }
        };
        if disabled || is_inactive_status(t.get(c_status)) {
            inactive_lines.insert(id.into(), line);
            b.inactive.insert(id.into());
            b.report.inactive_skipped += 1;
            continue;
        }
        let (bits, primary, role_orgs) = match &roles {
            Some(roles) => match roles.get(id) {
                Some(r) => (
                    r.bits,
                    if r.primary != 0 { r.primary } else { r.bits },
                    r.orgs.clone(),
                ),
                None => {
                    b.warn(
                        FILE,
                        line,
                        "sourcedId",
                        id,
                        "no active role in roles.csv; user left out",
                    );
                    b.inactive.insert(id.into());
                    continue;
                }
            },
            None => {
                let role = t.get(c_role);
                let bits = role_bits(role).ok_or_else(|| ImportError::UnknownRole {
                    file: FILE.into(),
                    line,
                    field: "role".into(),
                    value: role.into(),
                })?;
                (bits, bits, Vec::new())
            }
        };
        let pk = b.bits.len() as u32;
        let given = match t.get(c_pgiven) {
            "" => t.get(c_given),
            preferred => preferred,
        };
        let mut language = None;
        for &i in &c_lang {
            let v = t.get(Some(i));
            if v.is_empty() {
                continue;
            }
            match language_code(v) {
                Some(l) => {
                    language = Some(l);
                    break;
                }
                None => {
                    let field = t.column_name(i).to_string();
                    b.warn(
                        FILE,
                        line,
                        &field,
                        v,
                        "not a language code; default language used",
                    );
                }
            }
        }
        let grade = (bits & STUDENT != 0)
            .then(|| {
                t.get(c_grades)
                    .split(',')
                    .map(normalize_grade)
                    .find(|g| !g.is_empty())
            })
            .flatten();
        let modified = match parse_modified(t.get(c_modified)) {
            Ok(m) => m,
            Err(why) => {
                let v = t.get(c_modified).to_string();
                b.warn(FILE, line, "dateLastModified", &v, why);
                None
            }
        };
        ins_person
            .execute(params![
                pk,
                id,
                primary_role(primary),
                bits & STUDENT != 0,
                bits & STAFF != 0,
                bits & GUARDIAN != 0,
                given,
                t.get(c_family),
                language.as_deref().unwrap_or(&default_language),
                grade,
                modified,
            ])
            .map_err(sql("inserting people"))?;

        addresses.clear();
        let email = t.get(c_email);
        if !email.is_empty() {
            match EmailAddress::parse(email) {
                Ok(e) => addresses.push((Channel::Email, e.to_string())),
                Err(e) => b.warn(FILE, line, "email", email, e.to_string()),
            }
        }
        for (col, field, channels) in [
            (c_phone, "phone", &[Channel::Sms, Channel::Voice][..]),
            (c_sms, "sms", &[Channel::Sms][..]),
        ] {
            let text = t.get(col);
            if text.is_empty() {
                continue;
            }
            match PhoneNumber::parse(text, &b.cfg.default_country) {
                Ok(p) => {
                    for &ch in channels {
                        let a = (ch, p.to_string());
                        if !addresses.contains(&a) {
                            addresses.push(a);
                        }
                    }
                }
                Err(e) => b.warn(FILE, line, field, text, e.to_string()),
            }
        }
        for (ch, addr) in &addresses {
            ins_contact
                .execute(params![pk, ch.as_str(), addr])
                .map_err(sql("inserting contacts"))?;
        }

        orgs.clear();
        orgs.extend(
            t.get(c_orgs)
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from),
        );
        let primary_org = t.get(c_primary_org);
        if !primary_org.is_empty() && !orgs.iter().any(|o| o == primary_org) {
            orgs.push(primary_org.into());
        }
        for o in role_orgs {
            if !orgs.contains(&o) {
                orgs.push(o);
            }
        }
        for o in &orgs {
            let field = if o == primary_org {
                "primaryOrgSourcedId"
            } else {
                "orgSourcedIds"
            };
            if let Some(school) = b.org_school(FILE, line, field, o) {
                b.person_schools.push((pk, school));
            }
        }
        for agent in t
            .get(c_agents)
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            b.agents.push((pk, agent.into(), line));
        }
        b.users.insert(id.into(), pk);
        b.bits.push(bits);
        b.user_lines.push(line);
    }
    b.drain_notes(&mut t);
    Ok(())
}

fn load_enrollments(source: &mut Source, b: &mut Build) -> Result<(), ImportError> {
    const FILE: &str = "enrollments.csv";
    let mut t = listed_table(
        source,
        FILE,
        &["sourcedId", "classSourcedId", "userSourcedId", "role"],
    )?;
    let (c_id, c_status, c_class, c_school, c_user, c_role) = (
        t.col("sourcedid"),
        t.col("status"),
        t.col("classsourcedid"),
        t.col("schoolsourcedid"),
        t.col("usersourcedid"),
        t.col("role"),
    );
    let mut seen: HashMap<u64, u64> = HashMap::new();
    while t.next()? {
        let line = t.line;
        let id = t.get(c_id);
        require_id(FILE, line, id)?;
        if let Some(first) = seen.insert(hash_id(id), line) {
            return Err(ImportError::DuplicateId {
                file: FILE.into(),
                line,
                value: id.into(),
                first_line: first,
            });
        }
        if is_inactive_status(t.get(c_status)) {
            b.report.inactive_skipped += 1;
            continue;
        }
        let role = t.get(c_role);
        let bits = role_bits(role).ok_or_else(|| ImportError::UnknownRole {
            file: FILE.into(),
            line,
            field: "role".into(),
            value: role.into(),
        })?;
        let class_id = t.get(c_class);
        let user_id = t.get(c_user);
        b.refs += 2;
        let class = match b.classes.get(class_id) {
            Some(&(pk, school, _)) => Some((pk, school)),
            None => {
                if !b.inactive.contains(class_id) {
                    let v = class_id.to_string();
                    b.dangle(FILE, line, "classSourcedId", &v, "class");
                }
                None
            }
        };
        let user = match b.users.get(user_id) {
            Some(&pk) => Some(pk),
            None => {
                if !b.inactive.contains(user_id) {
                    let v = user_id.to_string();
                    b.dangle(FILE, line, "userSourcedId", &v, "user");
                }
                None
            }
        };
        let (Some((class, class_school)), Some(person)) = (class, user) else {
            continue;
        };
        let school_id = t.get(c_school).to_string();
        let school = if school_id.is_empty() {
            None
        } else {
            b.org_school(FILE, line, "schoolSourcedId", &school_id)
        };
        for s in [school, class_school].into_iter().flatten() {
            b.person_schools.push((person, s));
        }
        b.members.push((class, person, bits));
        b.report.enrollments += 1;
    }
    b.drain_notes(&mut t);
    Ok(())
}

/// Links guardians to students, checks references, writes the relation
/// tables, builds indexes and fills in the counts.
fn finish(tx: &Transaction, b: &mut Build) -> Result<(), ImportError> {
    let mut links: Vec<(u32, u32)> = Vec::new();
    for (from, agent, line) in std::mem::take(&mut b.agents) {
        b.refs += 1;
        let Some(&to) = b.users.get(&agent) else {
            if !b.inactive.contains(&agent) {
                b.dangle("users.csv", line, "agentSourcedIds", &agent, "user");
            }
            continue;
        };
        let (fb, tb) = (b.bits[from as usize], b.bits[to as usize]);
        if fb & GUARDIAN != 0 && tb & STUDENT != 0 {
            links.push((from, to));
        } else if fb & STUDENT != 0 && tb & GUARDIAN != 0 {
            links.push((to, from));
        } else {
            b.warn(
                "users.csv",
                line,
                "agentSourcedIds",
                &agent,
                "link is not between a guardian and a student; ignored",
            );
        }
    }
    if b.dangling > 0 && b.dangling as f64 > DANGLING_MAX_SHARE * b.refs as f64 {
        let first = b.first_dangling.clone().unwrap_or(ImportWarning {
            file: String::new(),
            line: 0,
            field: String::new(),
            value: String::new(),
            message: String::new(),
        });
        return Err(ImportError::Dangling {
            count: b.dangling,
            total: b.refs,
            file: first.file,
            line: first.line,
            field: first.field,
            value: first.value,
        });
    }

    links.sort_unstable();
    links.dedup();
    {
        let mut ins = tx
            .prepare("INSERT INTO guardianship(guardian, student) VALUES (?1, ?2)")
            .map_err(sql("preparing guardianship"))?;
        for (g, s) in &links {
            ins.execute([g, s]).map_err(sql("inserting guardianship"))?;
        }
    }
    b.report.guardian_links = links.len() as u64;
    drop(links);

    let mut ps = std::mem::take(&mut b.person_schools);
    ps.sort_unstable();
    ps.dedup();
    {
        let mut ins = tx
            .prepare("INSERT INTO person_schools(person, school) VALUES (?1, ?2)")
            .map_err(sql("preparing person_schools"))?;
        for (p, s) in &ps {
            ins.execute([p, s])
                .map_err(sql("inserting person_schools"))?;
        }
    }
    drop(ps);

    let mut members = std::mem::take(&mut b.members);
    members.sort_unstable_by_key(|m| (m.0, m.1));
    members.dedup_by_key(|m| (m.0, m.1));
    {
        let mut ins = tx
            .prepare("INSERT INTO class_members(class, person, role) VALUES (?1, ?2, ?3)")
            .map_err(sql("preparing class_members"))?;
        for (c, p, bits) in &members {
            let role = if bits & STUDENT != 0 {
                "student"
            } else {
                "staff"
            };
            ins.execute(params![c, p, role])
                .map_err(sql("inserting class_members"))?;
        }
    }
    drop(members);

    tx.execute_batch(schema::INDEXES)
        .map_err(sql("building indexes"))?;

    let count = |q: &str| -> Result<u64, ImportError> {
        tx.query_row(q, [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(sql("counting"))
    };
    let r = &mut b.report;
    r.students = count("SELECT COUNT(*) FROM people WHERE is_student = 1")?;
    r.staff = count("SELECT COUNT(*) FROM people WHERE is_staff = 1")?;
    r.guardians = count("SELECT COUNT(*) FROM people WHERE is_guardian = 1")?;
    r.unreachable_contacts = count(
        "SELECT COUNT(*) FROM people p WHERE (p.is_guardian = 1 OR p.is_staff = 1)
         AND NOT EXISTS (SELECT 1 FROM contacts c WHERE c.person = p.pk)",
    )?;
    {
        let mut st = tx
            .prepare("SELECT channel, COUNT(DISTINCT address) FROM contacts GROUP BY channel")
            .map_err(sql("counting contact points"))?;
        let rows = st
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })
            .map_err(sql("counting contact points"))?;
        for row in rows {
            let (ch, n) = row.map_err(sql("counting contact points"))?;
            if let Some(ch) = Channel::parse(&ch) {
                r.contact_points.insert(ch, n as u64);
                r.contact_points_total += n as u64;
            }
        }
    }
    r.imported_at = jiff::Timestamp::now().to_string();
    let meta = [
        ("schema_version", schema::SCHEMA_VERSION.to_string()),
        ("imported_at", r.imported_at.clone()),
        ("source", r.source.clone()),
        ("oneroster_version", r.oneroster_version.clone()),
        ("students", r.students.to_string()),
        ("guardians", r.guardians.to_string()),
        ("staff", r.staff.to_string()),
        ("schools", r.schools.to_string()),
        ("contact_points", r.contact_points_total.to_string()),
    ];
    let mut ins = tx
        .prepare("INSERT INTO meta(key, value) VALUES (?1, ?2)")
        .map_err(sql("preparing meta"))?;
    for (k, v) in meta {
        ins.execute(params![k, v]).map_err(sql("writing meta"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_map_to_kinds() {
        assert_eq!(role_bits("siteAdministrator"), Some(STAFF));
        assert_eq!(role_bits("Parent"), Some(GUARDIAN));
        assert_eq!(role_bits("relative"), Some(GUARDIAN));
        assert_eq!(role_bits("student"), Some(STUDENT));
        assert_eq!(role_bits("wizard"), None);
    }

    #[test]
    fn last_modified_dates_are_read_one_way_only() {
        assert_eq!(
            parse_modified("2023-05-01T18:25:43.511Z")
                .unwrap()
                .as_deref(),
            Some("2023-05-01T18:25:43.511Z")
        );
        assert_eq!(
            parse_modified("2023-05-01").unwrap().as_deref(),
            Some("2023-05-01T00:00:00Z")
        );
        assert_eq!(
            parse_modified("15/06/2023").unwrap().as_deref(),
            Some("2023-06-15T00:00:00Z")
        );
        assert_eq!(parse_modified("").unwrap(), None);
        assert!(parse_modified("1/05/2023").is_err());
        assert!(parse_modified("yesterday").is_err());
    }

    #[test]
    fn languages_are_read_from_codes_and_names() {
        assert_eq!(language_code("es-MX").as_deref(), Some("es"));
        assert_eq!(language_code("Spanish").as_deref(), Some("es"));
        assert_eq!(language_code("vie").as_deref(), Some("vi"));
        assert_eq!(language_code("12"), None);
    }
}
