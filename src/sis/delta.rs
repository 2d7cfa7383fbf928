//! Delta exports: a manifest whose files are `delta` carries only the records
//! that changed since the last export. They are merged into the full set the
//! current copy was built from (kept in its `base_files` table): rows are
//! upserted by `sourcedId`, and a `tobedeleted` row replaces the record as a
//! tombstone, so the import leaves it out and references to it are not taken
//! for broken ones. The merged set then goes through the ordinary full import
//! (validation, shrink guard, report, atomic swap), so nothing is checked
//! twice or differently.
//!
//! Refused with a sentence saying why: a delta with no full copy to apply it
//! to, a delta of another OneRoster version than the copy, and a delta that
//! would orphan students (delete an org they still belong to, or their only
//! guardian). Errors and warnings about merged rows name the delta file and
//! its line, or the current copy's file and line the row came from.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::import::{Changes, ImportError, ImportOptions, ImportReport, Origin, import_full};
use super::source::{Source, Table};
use super::{SisConfig, current_path};

/// One CSV file held in memory while merging.
#[derive(Default, Clone)]
pub(crate) struct CsvSet {
    /// Column names as written, for the merged file.
    header: Vec<String>,
    /// Canonical (lower-case) column names.
    canon: Vec<String>,
    rows: Vec<Vec<String>>,
    by_id: HashMap<String, usize>,
    /// Per row: whether it came from the delta, and its line there (or in
    /// the current copy's file).
    origin: Vec<(bool, u64)>,
}

impl CsvSet {
    /// Reads a file. With `strict` (a file of the delta) an empty or repeated
    /// sourcedId is an error; the current copy's files were checked when
    /// they were imported.
    fn read(
        file: &str,
        reader: Box<dyn Read + '_>,
        strict: bool,
        from_delta: bool,
    ) -> Result<CsvSet, ImportError> {
        let mut t = Table::new(file, reader, &["sourcedId"])?;
        let keep: Vec<usize> = (0..t.columns().len())
            .filter(|&i| !t.columns()[i].is_empty())
            .collect();
        let mut set = CsvSet {
            header: keep.iter().map(|&i| t.written()[i].clone()).collect(),
            canon: keep.iter().map(|&i| t.columns()[i].clone()).collect(),
            ..Default::default()
        };
        let c_id = t.col("sourcedid");
        while t.next()? {
            let id = t.get(c_id).to_string();
            if id.is_empty() {
                if strict {
                    return Err(ImportError::InvalidValue {
                        file: file.into(),
                        line: t.line,
                        field: "sourcedId".into(),
                        value: String::new(),
                        reason: "empty sourcedId".into(),
                    });
                }
                continue;
            }
            if let Some(&first) = set.by_id.get(&id) {
                if strict {
                    return Err(ImportError::DuplicateId {
                        file: file.into(),
                        line: t.line,
                        value: id,
                        first_line: set.origin[first].1,
                    });
                }
                continue;
            }
            set.by_id.insert(id, set.rows.len());
            set.rows
                .push(keep.iter().map(|&i| t.get(Some(i)).to_string()).collect());
            set.origin.push((from_delta, t.line));
        }
        Ok(set)
    }

    fn col(&self, name: &str) -> Option<usize> {
        self.canon.iter().position(|c| c == name)
    }

    fn col_or_add(&mut self, canon: &str, written: &str) -> usize {
        if let Some(i) = self.col(canon) {
            return i;
        }
        self.canon.push(canon.into());
        self.header.push(written.into());
        for r in &mut self.rows {
            r.push(String::new());
        }
        self.canon.len() - 1
    }

    fn get(&self, row: usize, col: Option<usize>) -> &str {
        col.and_then(|c| self.rows[row].get(c))
            .map_or("", String::as_str)
    }

    /// Rows that are in force: not `tobedeleted`/`inactive`, not a disabled user.
    fn active(&self, row: usize) -> bool {
        let status = self.get(row, self.col("status"));
        let enabled = self.get(row, self.col("enableduser"));
        !(status.eq_ignore_ascii_case("tobedeleted")
            || status.eq_ignore_ascii_case("inactive")
            || matches!(enabled.to_ascii_lowercase().as_str(), "false" | "0" | "no"))
    }

    /// Upserts the delta's rows; returns the ids the delta deletes.
    fn merge(&mut self, delta: CsvSet) -> Vec<String> {
        let map: Vec<usize> = delta
            .canon
            .iter()
            .zip(&delta.header)
            .map(|(c, w)| self.col_or_add(c, w))
            .collect();
        let id_col = self.col_or_add("sourcedid", "sourcedId");
        let mut deleted = Vec::new();
        for (i, row) in delta.rows.iter().enumerate() {
            let id = delta.get(i, delta.col("sourcedid")).to_string();
            let target = match self.by_id.get(&id) {
                Some(&r) => r,
                None => {
                    let mut empty = vec![String::new(); self.canon.len()];
                    empty[id_col] = id.clone();
                    self.rows.push(empty);
                    self.origin.push((true, 0));
                    self.by_id.insert(id.clone(), self.rows.len() - 1);
                    self.rows.len() - 1
                }
            };
            for (j, v) in row.iter().enumerate() {
                self.rows[target][map[j]] = v.clone();
            }
            self.origin[target] = delta.origin[i];
            if !delta.active(i) {
                deleted.push(id);
            }
        }
        deleted
    }

    /// Writes the file; returns the line each row starts on.
    fn write(&self, path: &Path) -> std::io::Result<Vec<u64>> {
        let mut w = csv::Writer::from_path(path)?;
        w.write_record(&self.header)?;
        let mut lines = Vec::with_capacity(self.rows.len());
        let mut line = 2u64;
        for r in &self.rows {
            lines.push(line);
            w.write_record(r)?;
            line += 1 + r
                .iter()
                .map(|f| f.bytes().filter(|&b| b == b'\n').count() as u64)
                .sum::<u64>();
        }
        w.flush()?;
        Ok(lines)
    }
}

/// Per merged file: the line each row starts on, and where the row came from.
type LineMap = (Vec<u64>, Vec<(bool, u64)>);

/// `(version, [(file, value)])` from a manifest, names and values lower-cased.
type Manifest = (Option<String>, Vec<(String, String)>);

fn read_manifest(reader: Box<dyn Read + '_>) -> Result<Manifest, ImportError> {
    let mut t = Table::new("manifest.csv", reader, &["propertyName", "value"])?;
    let (c_name, c_value) = (t.col("propertyname"), t.col("value"));
    let mut version = None;
    let mut files = Vec::new();
    while t.next()? {
        let name = t.get(c_name).to_ascii_lowercase();
        let value = t.get(c_value).to_ascii_lowercase();
        if name == "oneroster.version" {
            version = Some(if value == "1.0" { "1.1".into() } else { value });
        } else if let Some(f) = name.strip_prefix("file.") {
            files.push((f.to_string(), value));
        }
    }
    Ok((version, files))
}

/// True when the export's manifest lists any file as `delta`.
pub(crate) fn is_delta(src: &Path) -> Result<bool, ImportError> {
    let mut source = Source::open(src)?;
    let Some(reader) = source.open_file("manifest.csv")? else {
        // The full import reports the missing manifest.
        return Ok(false);
    };
    let (_, files) = read_manifest(reader)?;
    Ok(files.iter().any(|(_, v)| v == "delta"))
}

/// The files the current copy was built from, by name (`users.csv`…).
fn load_base(current: &Path) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let conn = match super::open_current_at(current) {
        Ok(c) => c,
        Err(super::SisError::NoCopy { .. }) => {
            return Err(
                "there is no SIS copy yet to apply it to; import a full (bulk) export first".into(),
            );
        }
        Err(e) => return Err(format!("the current SIS copy cannot be read ({e})")),
    };
    let mut out = BTreeMap::new();
    let rows = conn
        .prepare("SELECT name, content FROM base_files")
        .and_then(|mut st| {
            st.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()
        });
    // No table: a copy from before deltas were supported (said below).
    if let Ok(rows) = rows {
        out.extend(rows);
    }
    if !out.contains_key("users.csv") || !out.contains_key("orgs.csv") {
        return Err("the current SIS copy does not keep the full export it was built from (it was imported by an older klaxon); import a full (bulk) export once, and deltas will apply on top of it".into());
    }
    Ok(out)
}

/// Links between active users (`agentSourcedIds`, both directions) where
/// one end is in `guardians`, by the other end.
fn links(users: &CsvSet, guardians: &HashSet<String>) -> HashMap<String, HashSet<String>> {
    let c_agents = users.col("agentsourcedids");
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    for (id, &r) in &users.by_id {
        if !users.active(r) {
            continue;
        }
        for a in users
            .get(r, c_agents)
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            if !users.by_id.get(a).is_some_and(|&ar| users.active(ar)) {
                continue;
            }
            if guardians.contains(a) {
                out.entry(id.clone()).or_default().insert(a.into());
            }
            if guardians.contains(id) {
                out.entry(a.into()).or_default().insert(id.clone());
            }
        }
    }
    out
}

/// Active users whose role (users.csv `role`, or any active roles.csv
/// row) is one of `wanted`.
fn with_role(files: &BTreeMap<String, CsvSet>, wanted: &[&str]) -> HashSet<String> {
    let mut out = HashSet::new();
    let Some(users) = files.get("users") else {
        return out;
    };
    let is = |r: &str| wanted.iter().any(|w| r.eq_ignore_ascii_case(w));
    let c_role = users.col("role");
    for (id, &r) in &users.by_id {
        if users.active(r) && is(users.get(r, c_role)) {
            out.insert(id.clone());
        }
    }
    if let Some(roles) = files.get("roles") {
        let (c_user, c_r) = (roles.col("usersourcedid"), roles.col("role"));
        for r in 0..roles.rows.len() {
            let user = roles.get(r, c_user);
            let active_user = users.by_id.get(user).is_some_and(|&u| users.active(u));
            if roles.active(r) && active_user && is(roles.get(r, c_r)) {
                out.insert(user.to_string());
            }
        }
    }
    out
}

const GUARDIAN_ROLES: &[&str] = &["parent", "guardian", "relative"];

/// Active students of a merged set, with the orgs each belongs to.
fn students(files: &BTreeMap<String, CsvSet>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Some(users) = files.get("users") else {
        return out;
    };
    let (c_role, c_orgs, c_primary) = (
        users.col("role"),
        users.col("orgsourcedids"),
        users.col("primaryorgsourcedid"),
    );
    let mut role_orgs: HashMap<&str, (bool, Vec<String>)> = HashMap::new();
    if let Some(roles) = files.get("roles") {
        let (c_user, c_r, c_org) = (
            roles.col("usersourcedid"),
            roles.col("role"),
            roles.col("orgsourcedid"),
        );
        for r in 0..roles.rows.len() {
            if !roles.active(r) {
                continue;
            }
            let e = role_orgs.entry(roles.get(r, c_user)).or_default();
            e.0 |= roles.get(r, c_r).eq_ignore_ascii_case("student");
            let org = roles.get(r, c_org);
            if !org.is_empty() {
                e.1.push(org.into());
            }
        }
    }
    for (id, &r) in &users.by_id {
        if !users.active(r) {
            continue;
        }
        let from_roles = role_orgs.get(id.as_str());
        let is_student =
            users.get(r, c_role).eq_ignore_ascii_case("student") || from_roles.is_some_and(|x| x.0);
        if !is_student {
            continue;
        }
        let mut orgs: Vec<String> = users
            .get(r, c_orgs)
            .split(',')
            .chain(std::iter::once(users.get(r, c_primary)))
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(String::from)
            .collect();
        if let Some((_, o)) = from_roles {
            orgs.extend(o.iter().cloned());
        }
        out.insert(id.clone(), orgs);
    }
    out
}

/// A sentence saying how the delta would orphan students, if it would.
fn orphans(
    base_links: &HashMap<String, HashSet<String>>,
    merged: &BTreeMap<String, CsvSet>,
    deleted: &HashMap<String, HashSet<String>>,
) -> Option<String> {
    let students = students(merged);
    let none = HashSet::new();
    let deleted_orgs = deleted.get("orgs").unwrap_or(&none);
    let mut by_org: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (s, orgs) in &students {
        let mut orgs: Vec<&String> = orgs.iter().collect();
        orgs.sort();
        orgs.dedup();
        for o in orgs {
            if let Some(o) = deleted_orgs.get(o) {
                by_org.entry(o).or_default().push(s);
            }
        }
    }
    if let Some((org, list)) = by_org.iter().next() {
        return Some(format!(
            "it deletes org {org} but {} active student(s) still belong to it (first: {}); the delta must move or delete those students too, or a full export must be imported",
            list.len(),
            list[0]
        ));
    }
    let deleted_users = deleted.get("users").unwrap_or(&none);
    let guardians = with_role(merged, GUARDIAN_ROLES);
    let merged_links = merged
        .get("users")
        .map(|u| links(u, &guardians))
        .unwrap_or_default();
    let mut by_guardian: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for s in students.keys() {
        let Some(before) = base_links.get(s) else {
            continue;
        };
        let lost: Vec<&String> = before.intersection(deleted_users).collect();
        if lost.is_empty() || merged_links.get(s).is_some_and(|l| !l.is_empty()) {
            continue;
        }
        by_guardian.entry(lost[0]).or_default().push(s);
    }
    by_guardian.iter().next().map(|(g, list)| {
        format!(
            "it deletes {g}, the last guardian of {} active student(s) (first: {}), so nobody would be told about them; the delta must link those students to another guardian, or a full export must be imported",
            list.len(),
            list[0]
        )
    })
}

/// Merges the delta at `src` into the current copy's full set and imports
/// the result. See the module docs.
pub(crate) fn apply(
    src: &Path,
    store_dir: &Path,
    cfg: &SisConfig,
    opts: &ImportOptions,
    origin: Origin,
) -> Result<ImportReport, ImportError> {
    let refuse = |reason: String| ImportError::Delta {
        path: src.to_path_buf(),
        reason,
    };
    let mut source = Source::open(src)?;
    let reader = source
        .open_file("manifest.csv")?
        .ok_or_else(|| ImportError::MissingFile {
            file: "manifest.csv".into(),
            reason: "every OneRoster export starts with it".into(),
        })?;
    let (version, listed) = read_manifest(reader)?;
    let base = load_base(&current_path(store_dir)).map_err(refuse)?;
    let base_version = match base.get("manifest.csv") {
        Some(m) => read_manifest(Box::new(Cursor::new(m.as_slice())))?.0,
        None => None,
    };
    if let (Some(v), Some(bv)) = (&version, &base_version)
        && v != bv
    {
        return Err(refuse(format!(
            "it is a OneRoster {v} export but the current copy was built from OneRoster {bv}; import a full {v} export first"
        )));
    }
    let version = version.or(base_version).unwrap_or_else(|| "1.1".into());

    let mut files: BTreeMap<String, CsvSet> = BTreeMap::new();
    for (name, content) in &base {
        let Some(stem) = name.strip_suffix(".csv") else {
            continue;
        };
        if stem == "manifest" {
            continue;
        }
        let set = CsvSet::read(
            name,
            Box::new(Cursor::new(content.as_slice())),
            false,
            false,
        )?;
        files.insert(stem.to_string(), set);
    }
    let base_guardians = with_role(&files, GUARDIAN_ROLES);
    let base_links = files
        .get("users")
        .map(|u| links(u, &base_guardians))
        .unwrap_or_default();

    let mut deleted: HashMap<String, HashSet<String>> = HashMap::new();
    for (name, value) in &listed {
        let file = format!("{name}.csv");
        if value != "delta" && value != "bulk" {
            continue;
        }
        let reader = source
            .open_file(&file)?
            .ok_or_else(|| ImportError::MissingFile {
                file: file.clone(),
                reason: format!(
                    "manifest.csv lists it as {value} but the file is not in the export"
                ),
            })?;
        let set = CsvSet::read(&file, reader, true, true)?;
        if value == "bulk" {
            files.insert(name.clone(), set);
        } else {
            let gone = files.entry(name.clone()).or_default().merge(set);
            deleted.entry(name.clone()).or_default().extend(gone);
        }
    }
    if let Some(why) = orphans(&base_links, &files, &deleted) {
        return Err(refuse(why));
    }

    let tmp = tempfile::Builder::new()
        .prefix(".sis-delta-")
        .tempdir_in(store_dir)
        .map_err(|e| ImportError::Io {
            path: store_dir.to_path_buf(),
            source: e,
        })?;
    let io = |path: PathBuf| move |e| ImportError::Io { path, source: e };
    let mut manifest =
        format!("propertyName,value\nmanifest.version,1.0\noneroster.version,{version}\n");
    let mut line_maps: HashMap<String, LineMap> = HashMap::new();
    for (name, set) in &files {
        manifest.push_str(&format!("file.{name},bulk\n"));
        let path = tmp.path().join(format!("{name}.csv"));
        let lines = set.write(&path).map_err(io(path.clone()))?;
        line_maps.insert(format!("{name}.csv"), (lines, set.origin.clone()));
    }
    let mpath = tmp.path().join("manifest.csv");
    std::fs::write(&mpath, manifest).map_err(io(mpath.clone()))?;

    let relabel = |file: &mut String, line: &mut u64| {
        let Some((lines, origins)) = line_maps.get(file.as_str()) else {
            return;
        };
        let Some(i) = lines.partition_point(|&l| l <= *line).checked_sub(1) else {
            return;
        };
        let (from_delta, at) = origins[i];
        *file = if from_delta {
            format!("{file} (delta)")
        } else {
            format!("{file} (current copy)")
        };
        *line = at;
    };
    match import_full(tmp.path(), store_dir, cfg, opts, &origin) {
        Ok(mut report) => {
            for w in &mut report.warnings {
                relabel(&mut w.file, &mut w.line);
            }
            Ok(report)
        }
        Err(mut e) => {
            use ImportError as E;
            match &mut e {
                E::Unsupported { file, line, .. }
                | E::BadUtf8 { file, line, .. }
                | E::Csv { file, line, .. }
                | E::ShortRow { file, line, .. }
                | E::UnclosedQuote { file, line }
                | E::DuplicateId { file, line, .. }
                | E::UnknownRole { file, line, .. }
                | E::InvalidValue { file, line, .. }
                | E::Dangling { file, line, .. } => relabel(file, line),
                _ => {}
            }
            Err(e)
        }
    }
}

/// Per active user: a fingerprint of its non-empty fields, by sourcedId.
/// Streamed row by row: for a large district only the ids and hashes are
/// held, not the rows.
fn user_prints(conn: &Connection) -> Option<HashMap<String, u64>> {
    let content: Vec<u8> = conn
        .query_row(
            "SELECT content FROM base_files WHERE name = 'users.csv'",
            [],
            |r| r.get(0),
        )
        .ok()?;
    let mut t = Table::new("users.csv", Box::new(Cursor::new(content)), &["sourcedId"]).ok()?;
    let columns: Vec<String> = t.columns().to_vec();
    let mut order: Vec<usize> = (0..columns.len())
        .filter(|&i| !columns[i].is_empty())
        .collect();
    order.sort_by(|&a, &b| columns[a].cmp(&columns[b]));
    let (c_id, c_status, c_enabled) = (t.col("sourcedid"), t.col("status"), t.col("enableduser"));
    let mut out = HashMap::new();
    while t.next().ok()? {
        let status = t.get(c_status);
        let enabled = t.get(c_enabled).to_ascii_lowercase();
        if status.eq_ignore_ascii_case("tobedeleted")
            || status.eq_ignore_ascii_case("inactive")
            || matches!(enabled.as_str(), "false" | "0" | "no")
        {
            continue;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for &c in &order {
            let v = t.get(Some(c));
            if !v.is_empty() {
                (&columns[c], v).hash(&mut h);
            }
        }
        out.insert(t.get(c_id).to_string(), h.finish());
    }
    Some(out)
}

/// People added, changed and removed between the copy at `old` (if any)
/// and the new file at `new`.
pub(crate) fn people_changes(old: &Path, new: &Path) -> Changes {
    let open = |p: &Path| Connection::open_with_flags(p, OpenFlags::SQLITE_OPEN_READ_ONLY).ok();
    let after = open(new).as_ref().and_then(user_prints).unwrap_or_default();
    let before = open(old).as_ref().and_then(user_prints).unwrap_or_default();
    let mut c = Changes::default();
    for (id, h) in &after {
        match before.get(id) {
            None => c.added += 1,
            Some(b) if b != h => c.changed += 1,
            Some(_) => {}
        }
    }
    c.removed = before.keys().filter(|id| !after.contains_key(*id)).count() as u64;
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(text: &str) -> CsvSet {
        CsvSet::read(
            "users.csv",
            Box::new(Cursor::new(text.to_string().into_bytes())),
            true,
            false,
        )
        .unwrap()
    }

    #[test]
    fn merge_upserts_and_keeps_tombstones() {
        let mut base = set("sourcedId,status,phone\na,active,1\nb,active,2\n");
        let delta = set(
            "sourcedId,status,phone,email\nb,active,3,b@x.org\nc,active,4,\na,tobedeleted,1,\n",
        );
        let gone = base.merge(delta);
        assert_eq!(gone, vec!["a".to_string()]);
        assert_eq!(base.canon, ["sourcedid", "status", "phone", "email"]);
        let row = |id: &str| base.rows[base.by_id[id]].clone();
        assert_eq!(row("b"), ["b", "active", "3", "b@x.org"]);
        assert_eq!(row("c"), ["c", "active", "4", ""]);
        assert!(!base.active(base.by_id["a"]));
    }

    #[test]
    fn a_delta_keeps_columns_it_does_not_carry() {
        let mut base = set("sourcedId,status,phone,email\na,active,1,a@x.org\n");
        base.merge(set("sourcedId,status,phone\na,active,9\n"));
        assert_eq!(base.rows[0], ["a", "active", "9", "a@x.org"]);
    }

    #[test]
    fn a_repeated_id_in_a_delta_is_refused() {
        let r = CsvSet::read(
            "users.csv",
            Box::new(Cursor::new(
                b"sourcedId,status\na,active\na,active\n".to_vec(),
            )),
            true,
            true,
        );
        assert!(matches!(
            r,
            Err(ImportError::DuplicateId {
                line: 3,
                first_line: 2,
                ..
            })
        ));
    }
}
