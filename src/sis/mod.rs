//! The SIS copy: a SQLite file built from the district's OneRoster export and
//! swapped in atomically. Readers open `sis.db` fresh for each resolution, so a
//! new import is picked up without a restart, and an alert that already froze
//! its audience is not affected.
//!
//! - [`import()`] builds a new copy from an export (folder or zip); a delta
//!   export is merged on top of the current copy ([`delta`]);
//! - [`watch()`] imports exports dropped in `sis.watch_dir`;
//! - [`generate()`] writes synthetic exports (tests, benchmarks, the demo);
//! - [`open_current`] opens the copy read-only for [`crate::audience::resolve`].
//!
//! The table layout is documented in [`schema`].

pub mod catalog;
pub mod delta;
mod generate;
mod import;
pub mod rest;
pub mod schema;
mod source;
pub mod sync;
mod watch;

pub use watch::{WatchOutcome, watch};

pub use generate::{GenerateError, GenerateOptions, GenerateSummary, demo_district, generate};

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::config::Dur;

pub use import::{
    Changes, DANGLING_MAX_SHARE, ImportError, ImportOptions, ImportReport, ImportWarning, import,
};

/// `[sis]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SisConfig {
    /// ISO 3166 country used to read phone numbers written without a country code.
    pub default_country: String,
    /// Language for contacts whose record does not say.
    pub default_language: String,
    /// Refuse an import that drops more than this share of students or contacts.
    pub max_shrink: f64,
    /// Folder the daemon watches for nightly exports.
    pub watch_dir: Option<PathBuf>,
    /// How often the watch folder is looked at.
    pub watch_interval: Dur,
    /// A copy older than this makes `/readyz` report degraded.
    pub max_age: Dur,
    /// Who is emailed when a sync is refused or the copy grows stale.
    pub notify: Vec<String>,
    /// `[sis.source]`: pull from the SIS on a schedule.
    pub source: Option<rest::SourceConfig>,
}

impl SisConfig {
    /// Checks what serde cannot; problems go to `issues` under `sis.*`.
    pub fn validate(&self, issues: &mut crate::config::Issues) {
        if !(0.0..1.0).contains(&self.max_shrink) {
            issues.push("sis.max_shrink", "must be at least 0 and below 1");
        }
        if self.max_age.0.is_zero() {
            issues.push("sis.max_age", "must be more than 0s");
        }
        for (i, a) in self.notify.iter().enumerate() {
            if crate::domain::email::EmailAddress::parse(a).is_err() {
                issues.push(
                    format!("sis.notify[{i}]"),
                    format!("`{a}` is not an email address"),
                );
            }
        }
        if let Some(src) = &self.source {
            src.validate(issues);
        }
    }
}

impl Default for SisConfig {
    fn default() -> Self {
        SisConfig {
            default_country: "US".into(),
            default_language: "en".into(),
            max_shrink: 0.10,
            watch_dir: None,
            watch_interval: Dur::secs(30),
            max_age: Dur::secs(36 * 3600),
            notify: Vec::new(),
            source: None,
        }
    }
}

/// Where the current SIS copy lives inside the store folder.
pub fn current_path(store_dir: &Path) -> PathBuf {
    store_dir.join("sis.db")
}

/// Errors opening or reading the SIS copy.
#[derive(Debug, thiserror::Error)]
pub enum SisError {
    #[error("no SIS copy yet: run `klaxon sis import PATH` ({path} does not exist)")]
    NoCopy { path: PathBuf },
    #[error(
        "{path} was written by schema version {found:?}, this klaxon reads {expected:?}; import the export again"
    )]
    Schema {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
    #[error("SIS copy {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

/// Opens the current SIS copy read-only.
pub fn open_current(store_dir: &Path) -> Result<Connection, SisError> {
    open_current_at(&current_path(store_dir))
}

/// Opens a frozen copy (an alert's snapshot) read-only, schema-checked: the
/// one way the rest of klaxon reads a SIS file.
pub fn open_at(path: &Path) -> Result<Connection, SisError> {
    open_current_at(path)
}

/// The names of the schools with these ids, in the order given (unknown ids
/// are left out).
pub fn school_names(conn: &Connection, ids: &[String]) -> Result<Vec<String>, rusqlite::Error> {
    let mut st = conn.prepare_cached("SELECT name FROM schools WHERE id = ?1")?;
    let mut out = Vec::new();
    for id in ids {
        if let Some(n) = st.query_row([id], |r| r.get::<_, String>(0)).optional()? {
            out.push(n);
        }
    }
    Ok(out)
}

/// The district's first school by id (where a district-wide alert starts).
pub fn first_school(conn: &Connection) -> Result<Option<String>, rusqlite::Error> {
    conn.query_row("SELECT id FROM schools ORDER BY id LIMIT 1", [], |r| {
        r.get(0)
    })
    .optional()
}

pub(crate) fn open_current_at(path: &Path) -> Result<Connection, SisError> {
    if !path.is_file() {
        return Err(SisError::NoCopy {
            path: path.to_path_buf(),
        });
    }
    let err = |source| SisError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    let found: String = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .map_err(err)?;
    if found != schema::SCHEMA_VERSION {
        return Err(SisError::Schema {
            path: path.to_path_buf(),
            found,
            expected: schema::SCHEMA_VERSION,
        });
    }
    Ok(conn)
}

/// What the current copy says about itself (for `/readyz`, status pages).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SisMeta {
    pub imported_at: String,
    pub source: String,
    pub oneroster_version: String,
    pub students: u64,
    pub guardians: u64,
    pub staff: u64,
    pub schools: u64,
    pub contact_points: u64,
}

/// Reads the `meta` table of an open copy.
pub fn read_meta(conn: &Connection) -> Result<SisMeta, rusqlite::Error> {
    let get = |k: &str| -> Result<String, rusqlite::Error> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0))
    };
    let num = |k: &str| -> Result<u64, rusqlite::Error> { Ok(get(k)?.parse().unwrap_or(0)) };
    Ok(SisMeta {
        imported_at: get("imported_at")?,
        source: get("source")?,
        oneroster_version: get("oneroster_version")?,
        students: num("students")?,
        guardians: num("guardians")?,
        staff: num("staff")?,
        schools: num("schools")?,
        contact_points: num("contact_points")?,
    })
}

/// When each person's record was last changed in the SIS (`dateLastModified`,
/// RFC 3339 UTC), by sourcedId; `None` when the export did not say, or said
/// it ambiguously. A copy imported before this was kept reads as all `None`.
pub fn last_modified(
    conn: &Connection,
) -> Result<std::collections::HashMap<String, Option<String>>, rusqlite::Error> {
    let has_column = conn.prepare("SELECT modified FROM people LIMIT 0").is_ok();
    let sql = if has_column {
        "SELECT id, modified FROM people"
    } else {
        "SELECT id, NULL FROM people"
    };
    let mut st = conn.prepare(sql)?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// Grades as stored and as matched: trimmed, upper-cased, and numbers
/// without leading zeros, so `09`, `9` and ` 9 ` are the same grade and `kg`
/// is `KG`.
pub fn normalize_grade(g: &str) -> String {
    let g = g.trim();
    if !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()) {
        let t = g.trim_start_matches('0');
        return if t.is_empty() { "0".into() } else { t.into() };
    }
    g.to_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grades_normalise() {
        assert_eq!(normalize_grade("09"), "9");
        assert_eq!(normalize_grade(" 9 "), "9");
        assert_eq!(normalize_grade("00"), "0");
        assert_eq!(normalize_grade("kg"), "KG");
    }
}
