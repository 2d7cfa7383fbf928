//! The audit log: who did what, when and from where. Written in the same
//! transaction as the change it describes, so the log and the state never
//! disagree.
//!
//! Entries form a SHA-256 hash chain: each entry's `hash` covers its own
//! fields and the `hash` of the entry before it (`prev_hash`). Editing an
//! entry breaks its hash; removing one leaves a gap in the sequence
//! (`id`, `AUTOINCREMENT`, so ids are never reused). `verify` names the first
//! entry altered or removed. Someone who rewrites the file *and* recomputes
//! every later hash is caught only by comparing the head with a copy kept
//! elsewhere: `klaxon audit verify` prints it, and the retention task logs it
//! daily (journald keeps it apart from the store).
//!
//! Invariant: the chain is linear. Entries are written inside a write
//! transaction (`BEGIN IMMEDIATE`: the daemon's single writer, or a CLI on
//! its own connection), and `record` reads the previous hash inside it.

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::StoreError;

/// Pass as `origin` when the call site does not know where the action came
/// from: the entry takes the origin of the request or task that asked for
/// the write (an HTTP client's address, `cli`, `feed:NAME`; see
/// `with_origin`), or `daemon` when there is none.
pub const FROM_CONTEXT: &str = "";

/// The origin of entries whose cause had none (the daemon's own work).
pub const DAEMON: &str = "daemon";

tokio::task_local! {
    static ORIGIN: Arc<str>;
}

thread_local! {
    /// The origin of the write the store's writer is running now.
    static WRITE_ORIGIN: RefCell<Option<Arc<str>>> = const { RefCell::new(None) };
}

/// Runs `f` with `origin` as where its audited actions come from.
pub async fn with_origin<F: Future>(origin: impl Into<Arc<str>>, f: F) -> F::Output {
    ORIGIN.scope(origin.into(), f).await
}

/// `f` with the current task's origin, for a task spawned on its behalf
/// (a trigger that runs in a task of its own keeps its caller's origin).
pub fn carry_origin<F: Future>(f: F) -> impl Future<Output = F::Output> {
    let origin = current_origin().unwrap_or_else(|| Arc::from(DAEMON));
    ORIGIN.scope(origin, f)
}

/// The origin of the current task, if one was set.
pub fn current_origin() -> Option<Arc<str>> {
    ORIGIN.try_with(|o| o.clone()).ok()
}

/// Runs `f` (a store write) with `origin` visible to `record`. Called by
/// the store's writer for each queued write.
pub(crate) fn in_write_origin<T>(origin: Option<Arc<str>>, f: impl FnOnce() -> T) -> T {
    let before = WRITE_ORIGIN.with(|w| w.replace(origin));
    let out = f();
    WRITE_ORIGIN.with(|w| *w.borrow_mut() = before);
    out
}

fn resolve_origin(origin: &str) -> String {
    if origin != FROM_CONTEXT {
        return origin.to_string();
    }
    WRITE_ORIGIN
        .with(|w| w.borrow().clone())
        .or_else(current_origin)
        .map(|o| o.to_string())
        .unwrap_or_else(|| DAEMON.to_string())
}

/// What an entry is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    None,
    Alert(i64),
    Token(i64),
    /// Anything else, written as `kind:id` (e.g. `sis`, `person:p-17`).
    Other(String),
}

impl Target {
    pub fn text(&self) -> String {
        match self {
            Target::None => String::new(),
            Target::Alert(id) => format!("alert:{id}"),
            Target::Token(id) => format!("token:{id}"),
            Target::Other(s) => s.clone(),
        }
    }

    fn alert_id(&self) -> Option<i64> {
        match self {
            Target::Alert(id) => Some(*id),
            _ => None,
        }
    }
}

/// An optional alert id, as the lifecycle passes it.
impl From<Option<i64>> for Target {
    fn from(id: Option<i64>) -> Target {
        id.map_or(Target::None, Target::Alert)
    }
}

impl From<&str> for Target {
    fn from(s: &str) -> Target {
        match s.strip_prefix("alert:").and_then(|n| n.parse().ok()) {
            Some(id) => Target::Alert(id),
            None if s.is_empty() => Target::None,
            None => Target::Other(s.to_string()),
        }
    }
}

/// One entry, as stored.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditEntry {
    /// Position in the chain, from 1, never reused.
    pub seq: i64,
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    pub actor: String,
    pub action: String,
    /// `alert:ID`, `token:ID`, … or empty.
    pub target: String,
    pub alert_id: Option<i64>,
    /// JSON.
    pub detail: String,
    /// Where from: an HTTP client's address, `cli`, `feed:NAME`, `daemon`.
    pub origin: String,
    pub prev_hash: String,
    pub hash: String,
}

/// SHA-256 (hex) over the canonical encoding of an entry: a version tag,
/// then each field as a netstring (`len:bytes,`), so no two different
/// entries encode alike.
pub fn entry_hash(e: &AuditEntry) -> String {
    let alert = e.alert_id.map(|a| a.to_string()).unwrap_or_default();
    let fields: [&str; 10] = [
        "klaxon-audit-v1",
        &e.seq.to_string(),
        &e.at.to_string(),
        &e.actor,
        &e.action,
        &e.target,
        &alert,
        &e.detail,
        &e.origin,
        &e.prev_hash,
    ];
    let mut h = Sha256::new();
    for f in fields {
        h.update(f.len().to_string().as_bytes());
        h.update(b":");
        h.update(f.as_bytes());
        h.update(b",");
    }
    crate::domain::text::hex(&h.finalize())
}

/// Appends an entry to the chain.
/// `target`: `Some(alert id)` / `None`, or a `Target`, or text like
/// `"token:3"`. `origin`: where from, or `FROM_CONTEXT`.
///
/// Runs inside the caller's transaction; on a connection in autocommit mode
/// (a CLI) it opens its own `BEGIN IMMEDIATE` one so the chain stays linear
/// beside a running daemon.
pub fn record(
    conn: &Connection,
    now_ms: i64,
    actor: &str,
    action: &str,
    target: impl Into<Target>,
    detail: &str,
    origin: &str,
) -> Result<(), StoreError> {
    let target = target.into();
    let origin = resolve_origin(origin);
    if conn.is_autocommit() {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let out = append(conn, now_ms, actor, action, &target, detail, &origin);
        match &out {
            Ok(_) => conn.execute_batch("COMMIT")?,
            Err(_) => {
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
        return out.map(|_| ());
    }
    append(conn, now_ms, actor, action, &target, detail, &origin).map(|_| ())
}

fn append(
    conn: &Connection,
    at: i64,
    actor: &str,
    action: &str,
    target: &Target,
    detail: &str,
    origin: &str,
) -> Result<i64, StoreError> {
    let text = target.text();
    conn.prepare_cached(
        "INSERT INTO audit (at, actor, action, target, alert_id, detail, origin)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        at,
        actor,
        action,
        text,
        target.alert_id(),
        detail,
        origin
    ])?;
    let seq = conn.last_insert_rowid();
    seal(conn, seq)?;
    Ok(seq)
}

/// Links entry `seq` to the one before it and stores its hash.
fn seal(conn: &Connection, seq: i64) -> Result<(), StoreError> {
    let prev_hash: String = conn
        .prepare_cached("SELECT hash FROM audit WHERE id < ?1 ORDER BY id DESC LIMIT 1")?
        .query_row([seq], |r| r.get(0))
        .optional()?
        .unwrap_or_default();
    let mut e =
        get(conn, seq)?.ok_or_else(|| StoreError::NotFound(format!("audit entry {seq}")))?;
    e.prev_hash = prev_hash;
    let hash = entry_hash(&e);
    conn.prepare_cached("UPDATE audit SET prev_hash = ?2, hash = ?3 WHERE id = ?1")?
        .execute(params![seq, e.prev_hash, hash])?;
    Ok(())
}

/// Chains every entry written before the chain existed, oldest first.
pub fn chain_existing(conn: &Connection) -> Result<(), StoreError> {
    let ids: Vec<i64> = conn
        .prepare("SELECT id FROM audit WHERE hash = '' ORDER BY id")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for id in ids {
        seal(conn, id)?;
    }
    Ok(())
}

const COLUMNS: &str = "id, at, actor, action, target, alert_id, detail, origin, prev_hash, hash";

fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        seq: r.get(0)?,
        at: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        target: r.get(4)?,
        alert_id: r.get(5)?,
        detail: r.get(6)?,
        origin: r.get(7)?,
        prev_hash: r.get(8)?,
        hash: r.get(9)?,
    })
}

fn get(conn: &Connection, seq: i64) -> Result<Option<AuditEntry>, StoreError> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM audit WHERE id = ?1"))?
        .query_row([seq], entry)
        .optional()?)
}

/// The newest entries, newest first.
pub fn recent(conn: &Connection, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM audit ORDER BY id DESC LIMIT ?1"
    ))?;
    let rows = stmt.query_map([limit], entry)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The first problem `verify` found.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Break {
    /// Entries `first..=last` are missing.
    Removed { first: i64, last: i64 },
    /// Entry `seq` is not what was written.
    Altered { seq: i64, why: String },
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Break::Removed { first, last } if first == last => {
                write!(f, "audit entry {first} was removed")
            }
            Break::Removed { first, last } => {
                write!(f, "audit entries {first} to {last} were removed")
            }
            Break::Altered { seq, why } => write!(f, "audit entry {seq} was altered: {why}"),
        }
    }
}

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub ok: bool,
    /// Entries checked.
    pub entries: i64,
    /// The newest entry's sequence number and hash: keep a copy elsewhere
    /// to catch a rewrite of the whole chain from some entry on.
    pub head_seq: i64,
    pub head_hash: String,
    /// The first break, oldest first.
    pub first_break: Option<Break>,
}

/// Checks the whole chain in order and names the first entry altered or
/// removed. Reads only.
pub fn verify(conn: &Connection) -> Result<Verdict, StoreError> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY id"))?;
    let mut rows = stmt.query([])?;
    let (mut last_seq, mut last_hash, mut n) = (0i64, String::new(), 0i64);
    let mut first_break = None;
    while let Some(r) = rows.next()? {
        let e = entry(r)?;
        n += 1;
        if first_break.is_none() {
            first_break = check(&e, last_seq, &last_hash);
        }
        last_seq = e.seq;
        last_hash = e.hash;
    }
    // The newest entries removed: AUTOINCREMENT remembers the highest id.
    let highest: i64 = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'audit'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    if first_break.is_none() && highest > last_seq {
        first_break = Some(Break::Removed {
            first: last_seq + 1,
            last: highest,
        });
    }
    Ok(Verdict {
        ok: first_break.is_none(),
        entries: n,
        head_seq: last_seq,
        head_hash: last_hash,
        first_break,
    })
}

fn check(e: &AuditEntry, last_seq: i64, last_hash: &str) -> Option<Break> {
    if e.seq != last_seq + 1 {
        return Some(Break::Removed {
            first: last_seq + 1,
            last: e.seq - 1,
        });
    }
    if entry_hash(e) != e.hash {
        return Some(Break::Altered {
            seq: e.seq,
            why: "its content does not match its hash".into(),
        });
    }
    if Target::from(e.target.as_str()).alert_id() != e.alert_id {
        return Some(Break::Altered {
            seq: e.seq,
            why: format!(
                "its alert ({:?}) does not match its target `{}`",
                e.alert_id, e.target
            ),
        });
    }
    if e.prev_hash != last_hash {
        // The entry itself is intact, so the one before it was changed and
        // its hash recomputed: this entry still links to the original.
        return Some(Break::Altered {
            seq: last_seq,
            why: format!(
                "its hash was recomputed, but entry {} still links to the original",
                e.seq
            ),
        });
    }
    None
}

/// What a public-records export selects. Times in milliseconds, `to`
/// exclusive.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    pub from: i64,
    pub to: i64,
    pub alert: Option<i64>,
    /// A person's sourcedId: entries that name them, and entries about the
    /// alerts that reached them.
    pub person: Option<String>,
    /// Words that must all appear (case-insensitive) in actor, action,
    /// target or detail.
    pub text: Option<String>,
}

/// Entries matching `f`, oldest first.
pub fn export(conn: &Connection, f: &ExportFilter) -> Result<Vec<AuditEntry>, StoreError> {
    let mut sql = format!("SELECT {COLUMNS} FROM audit WHERE at >= ?1 AND at < ?2");
    let mut args: Vec<rusqlite::types::Value> = vec![f.from.into(), f.to.into()];
    if let Some(a) = f.alert {
        args.push(a.into());
        // The alert itself and its follow-ups (updates, all-clear).
        sql.push_str(&format!(
            " AND (alert_id = ?{n} OR alert_id IN (SELECT id FROM alerts WHERE parent_id = ?{n}))",
            n = args.len()
        ));
    }
    if let Some(p) = &f.person {
        args.push(p.clone().into());
        let n = args.len();
        // The sourcedId as a whole JSON string ("g1" does not match "g10");
        // a follow-up reaches its original's recipients.
        sql.push_str(&format!(
            " AND (instr(detail, '\"' || ?{n} || '\"') > 0 OR target = 'person:' || ?{n}
                   OR alert_id IN (SELECT r.alert_id FROM recipients r WHERE r.person_id = ?{n})
                   OR alert_id IN (SELECT a.id FROM alerts a JOIN recipients r ON r.alert_id = a.parent_id
                                   WHERE r.person_id = ?{n}))"
        ));
    }
    if let Some(t) = &f.text {
        for word in t.split_whitespace() {
            args.push(format!("%{}%", like_escape(&word.to_lowercase())).into());
            let n = args.len();
            sql.push_str(&format!(
                " AND lower(actor || ' ' || action || ' ' || target || ' ' || detail) LIKE ?{n} ESCAPE '\\'"
            ));
        }
    }
    sql.push_str(" ORDER BY id");
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), entry)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// A legal hold on an alert: its personal data is kept past retention.
#[derive(Debug, Clone, Serialize)]
pub struct Hold {
    pub alert_id: i64,
    pub reason: String,
    pub held_by: String,
    pub held_at: i64,
}

/// Puts an alert on hold (audited). `Ok(false)` when it already was.
pub fn hold(
    conn: &Connection,
    alert_id: i64,
    reason: &str,
    actor: &str,
    now: i64,
    origin: &str,
) -> Result<bool, StoreError> {
    let exists: bool = conn
        .prepare_cached("SELECT count(*) FROM alerts WHERE id = ?1")?
        .query_row([alert_id], |r| r.get::<_, i64>(0))?
        > 0;
    if !exists {
        return Err(StoreError::NotFound(format!("alert {alert_id}")));
    }
    let purged: Option<i64> = conn
        .prepare_cached("SELECT purged_at FROM alerts WHERE id = ?1")?
        .query_row([alert_id], |r| r.get(0))?;
    if purged.is_some() {
        return Err(StoreError::Conflict(format!(
            "alert {alert_id}'s personal data was already purged by retention; there is nothing left to hold"
        )));
    }
    let n = conn
        .prepare_cached(
            "INSERT INTO legal_holds (alert_id, reason, held_by, held_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (alert_id) DO NOTHING",
        )?
        .execute(params![alert_id, reason, actor, now])?;
    if n == 0 {
        return Ok(false);
    }
    record(
        conn,
        now,
        actor,
        "hold.place",
        Target::Alert(alert_id),
        &serde_json::json!({ "reason": reason }).to_string(),
        origin,
    )?;
    Ok(true)
}

/// Releases an alert's hold (audited). `Ok(false)` when it had none.
pub fn release(
    conn: &Connection,
    alert_id: i64,
    actor: &str,
    now: i64,
    origin: &str,
) -> Result<bool, StoreError> {
    let reason: Option<String> = conn
        .prepare_cached("DELETE FROM legal_holds WHERE alert_id = ?1 RETURNING reason")?
        .query_row([alert_id], |r| r.get(0))
        .optional()?;
    let Some(reason) = reason else {
        return Ok(false);
    };
    record(
        conn,
        now,
        actor,
        "hold.release",
        Target::Alert(alert_id),
        &serde_json::json!({ "reason_was": reason }).to_string(),
        origin,
    )?;
    Ok(true)
}

/// Every hold in force.
pub fn holds(conn: &Connection) -> Result<Vec<Hold>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT alert_id, reason, held_by, held_at FROM legal_holds ORDER BY alert_id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(Hold {
            alert_id: r.get(0)?,
            reason: r.get(1)?,
            held_by: r.get(2)?,
            held_at: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut c).unwrap();
        c
    }

    #[test]
    fn entries_chain_and_verify() {
        let c = store();
        for i in 0..5 {
            record(&c, 1000 + i, "t", "x", Some(i), "{}", "cli").unwrap();
        }
        let v = verify(&c).unwrap();
        assert!(v.ok, "{v:?}");
        assert_eq!((v.entries, v.head_seq), (5, 5));
        let e = get(&c, 3).unwrap().unwrap();
        assert_eq!(e.prev_hash, get(&c, 2).unwrap().unwrap().hash);
        assert_eq!(e.origin, "cli");
        assert_eq!(e.target, "alert:2");
    }

    #[test]
    fn an_edit_a_deletion_and_a_truncation_are_named() {
        let c = store();
        for i in 0..6 {
            record(&c, 1000 + i, "t", "x", None, "{}", "cli").unwrap();
        }
        c.execute("UPDATE audit SET actor = 'someone else' WHERE id = 4", [])
            .unwrap();
        assert_eq!(
            verify(&c).unwrap().first_break,
            Some(Break::Altered {
                seq: 4,
                why: "its content does not match its hash".into()
            })
        );
        // Recomputing the altered entry's own hash moves the break to its link.
        let mut e = get(&c, 4).unwrap().unwrap();
        e.hash = entry_hash(&e);
        c.execute("UPDATE audit SET hash = ?1 WHERE id = 4", [&e.hash])
            .unwrap();
        assert!(matches!(
            verify(&c).unwrap().first_break,
            Some(Break::Altered { seq: 4, .. })
        ));
        c.execute("DELETE FROM audit WHERE id IN (2, 3)", [])
            .unwrap();
        assert_eq!(
            verify(&c).unwrap().first_break,
            Some(Break::Removed { first: 2, last: 3 })
        );
        let c = store();
        for i in 0..3 {
            record(&c, 1000 + i, "t", "x", None, "{}", "cli").unwrap();
        }
        c.execute("DELETE FROM audit WHERE id = 3", []).unwrap();
        assert_eq!(
            verify(&c).unwrap().first_break,
            Some(Break::Removed { first: 3, last: 3 })
        );
    }

    #[test]
    fn the_origin_comes_from_the_context_when_not_given() {
        let c = store();
        record(&c, 1, "t", "x", None, "{}", FROM_CONTEXT).unwrap();
        in_write_origin(Some(Arc::from("10.0.0.7")), || {
            record(&c, 2, "t", "y", None, "{}", FROM_CONTEXT).unwrap();
        });
        let e = recent(&c, 2).unwrap();
        assert_eq!(e[0].origin, "10.0.0.7");
        assert_eq!(e[1].origin, DAEMON);
    }

    #[test]
    fn export_filters_by_time_alert_and_words() {
        let c = store();
        record(
            &c,
            10,
            "a",
            "alert.create",
            Some(1),
            r#"{"x":"Lockdown"}"#,
            "cli",
        )
        .unwrap();
        record(&c, 20, "a", "alert.cancel", Some(2), "{}", "cli").unwrap();
        record(&c, 30, "b", "token.create", "token:1", "{}", "cli").unwrap();
        let f = |from, to| ExportFilter {
            from,
            to,
            ..Default::default()
        };
        assert_eq!(export(&c, &f(0, 100)).unwrap().len(), 3);
        assert_eq!(export(&c, &f(15, 30)).unwrap().len(), 1);
        let mut g = f(0, 100);
        g.text = Some("lockdown ALERT".into());
        assert_eq!(export(&c, &g).unwrap()[0].seq, 1);
        g.text = Some("100%".into());
        assert!(export(&c, &g).unwrap().is_empty());
    }
}
