//! The SIS copy: a SQLite file built from the district's OneRoster export and
//! swapped in atomically. Readers open `sis.db` fresh for each resolution, so a
//! new import is picked up without a restart, and an alert that already froze
//! its audience is not affected.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::Dur;

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
}

impl Default for SisConfig {
    fn default() -> Self {
        SisConfig {
            default_country: "US".into(),
            default_language: "en".into(),
            max_shrink: 0.10,
            watch_dir: None,
            watch_interval: Dur::secs(30),
        }
    }
}

/// Where the current SIS copy lives inside the store folder.
pub fn current_path(store_dir: &Path) -> PathBuf {
    store_dir.join("sis.db")
}
