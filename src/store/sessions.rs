//! Console sessions and OpenID Connect sign-ins in progress. The browser's
//! cookie holds a random 256-bit id; only its SHA-256 is stored, so a copy
//! of the database hands out no working session.

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;
use super::tokens::{ApiRole, hash};
use crate::domain::Scope;

/// A signed-in person (or break-glass token) as the store keeps them.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub actor: String,
    pub display: String,
    pub role: ApiRole,
    pub scope: Scope,
    pub csrf: String,
    pub last_seen: i64,
    pub expires_at: i64,
}

/// What a new session starts with.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub actor: String,
    pub display: String,
    pub role: ApiRole,
    pub scope: Scope,
    pub csrf: String,
    pub token_id: Option<i64>,
    pub origin: String,
}

/// Stores a session under the hash of `id`; expired ones are swept at the
/// same time so the table stays small.
pub fn create(
    conn: &Connection,
    id: &str,
    s: &NewSession,
    now: i64,
    expires_at: i64,
    idle_ms: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM sessions WHERE expires_at <= ?1 OR last_seen <= ?2")?
        .execute(params![now, now - idle_ms])?;
    conn.prepare_cached(
        "INSERT INTO sessions (id_hash, actor, display, role, schools, csrf, token_id, origin,
                               created_at, last_seen, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10)",
    )?
    .execute(params![
        hash(id),
        s.actor,
        s.display,
        s.role.as_str(),
        s.scope.to_column(),
        s.csrf,
        s.token_id,
        s.origin,
        now,
        expires_at
    ])?;
    Ok(())
}

/// The live session for `id`: not past its absolute end, seen within
/// `idle_ms`, and, when begun with a token, that token not revoked.
pub fn lookup(
    conn: &Connection,
    id: &str,
    now: i64,
    idle_ms: i64,
) -> Result<Option<SessionRow>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT s.actor, s.display, s.role, s.schools, s.csrf, s.last_seen, s.expires_at
             FROM sessions s LEFT JOIN api_tokens t ON t.id = s.token_id
             WHERE s.id_hash = ?1 AND s.expires_at > ?2 AND s.last_seen > ?3
               AND (s.token_id IS NULL OR t.revoked_at IS NULL)",
        )?
        .query_row(params![hash(id), now, now - idle_ms], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })
        .optional()?;
    let Some((actor, display, role, schools, csrf, last_seen, expires_at)) = row else {
        return Ok(None);
    };
    Ok(Some(SessionRow {
        role: ApiRole::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown session role `{role}`")))?,
        scope: Scope::from_column(schools.as_deref())
            .ok_or_else(|| StoreError::Corrupt("a session's schools are unreadable".into()))?,
        actor,
        display,
        csrf,
        last_seen,
        expires_at,
    }))
}

/// Marks the session used now (the idle timeout counts from here).
pub fn touch(conn: &Connection, id: &str, now: i64) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE sessions SET last_seen = ?2 WHERE id_hash = ?1")?
        .execute(params![hash(id), now])?;
    Ok(())
}

/// Ends the session; true when there was one.
pub fn delete(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("DELETE FROM sessions WHERE id_hash = ?1")?
        .execute([hash(id)])?
        > 0)
}

/// A sign-in through the identity provider, between redirect and callback.
#[derive(Debug, Clone)]
pub struct PendingLogin {
    pub nonce: String,
    pub pkce_verifier: String,
    pub next: String,
    /// SHA-256 of the binding cookie set in the browser that started it.
    pub browser_hash: String,
}

/// How long a sign-in at the identity provider may take.
pub const LOGIN_WINDOW_MS: i64 = 10 * 60 * 1000;

pub fn put_login(
    conn: &Connection,
    state: &str,
    browser: &str,
    nonce: &str,
    pkce_verifier: &str,
    next: &str,
    now: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM oidc_logins WHERE created_at <= ?1")?
        .execute([now - LOGIN_WINDOW_MS])?;
    conn.prepare_cached(
        "INSERT INTO oidc_logins (state_hash, browser_hash, nonce, pkce, next, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        hash(state),
        hash(browser),
        nonce,
        pkce_verifier,
        next,
        now
    ])?;
    Ok(())
}

/// Takes (and deletes) the sign-in started with `state`, if it is recent:
/// a `state` is good for one callback only.
pub fn take_login(
    conn: &Connection,
    state: &str,
    now: i64,
) -> Result<Option<PendingLogin>, StoreError> {
    let row = conn
        .prepare_cached(
            "DELETE FROM oidc_logins WHERE state_hash = ?1
             RETURNING browser_hash, nonce, pkce, next, created_at",
        )?
        .query_row([hash(state)], |r| {
            Ok((
                PendingLogin {
                    browser_hash: r.get(0)?,
                    nonce: r.get(1)?,
                    pkce_verifier: r.get(2)?,
                    next: r.get(3)?,
                },
                r.get::<_, i64>(4)?,
            ))
        })
        .optional()?;
    Ok(row
        .filter(|(_, at)| *at > now - LOGIN_WINDOW_MS)
        .map(|(p, _)| p))
}

/// One audit entry for a sign-in, sign-in refusal or sign-out. The one
/// place this module writes the audit log, so its format changes here only.
pub fn audit(
    conn: &Connection,
    now: i64,
    actor: &str,
    action: &str,
    detail: serde_json::Value,
    origin: &str,
) -> Result<(), StoreError> {
    super::audit::record(conn, now, actor, action, None, &detail.to_string(), origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut c).unwrap();
        c
    }

    fn new(token_id: Option<i64>) -> NewSession {
        NewSession {
            actor: "oidc:a@example.org".into(),
            display: "A".into(),
            role: ApiRole::Operator,
            scope: Scope::Schools(vec!["S1".into()]),
            csrf: "c".into(),
            token_id,
            origin: "127.0.0.1".into(),
        }
    }

    #[test]
    fn a_session_lives_until_idle_or_its_absolute_end_and_only_its_hash_is_kept() {
        let c = store();
        create(&c, "sid", &new(None), 1_000, 100_000, 30_000).unwrap();
        let stored: String = c
            .query_row("SELECT id_hash FROM sessions", [], |r| r.get(0))
            .unwrap();
        assert_ne!(stored, "sid");
        let s = lookup(&c, "sid", 20_000, 30_000).unwrap().unwrap();
        assert_eq!(s.scope, Scope::Schools(vec!["S1".into()]));
        assert!(lookup(&c, "other", 20_000, 30_000).unwrap().is_none());
        // Idle for 30 s: gone; touched, it lives on until the absolute end.
        assert!(lookup(&c, "sid", 31_001, 30_000).unwrap().is_none());
        touch(&c, "sid", 31_000).unwrap();
        assert!(lookup(&c, "sid", 50_000, 30_000).unwrap().is_some());
        touch(&c, "sid", 99_000).unwrap();
        assert!(lookup(&c, "sid", 100_000, 30_000).unwrap().is_none());
        assert!(delete(&c, "sid").unwrap());
        assert!(!delete(&c, "sid").unwrap());
    }

    #[test]
    fn a_session_begun_with_a_token_ends_when_the_token_is_revoked() {
        let c = store();
        let id = super::super::tokens::insert(&c, "ops", ApiRole::Operator, "tok", 1).unwrap();
        create(&c, "sid", &new(Some(id)), 1_000, 100_000, 30_000).unwrap();
        assert!(lookup(&c, "sid", 2_000, 30_000).unwrap().is_some());
        c.execute("UPDATE api_tokens SET revoked_at = 1500", [])
            .unwrap();
        assert!(lookup(&c, "sid", 2_000, 30_000).unwrap().is_none());
    }

    #[test]
    fn a_pending_login_is_taken_once_and_only_while_fresh() {
        let c = store();
        put_login(&c, "st", "br", "n", "v", "/", 1_000).unwrap();
        let p = take_login(&c, "st", 2_000).unwrap().unwrap();
        assert_eq!(p.browser_hash, hash("br"));
        assert!(take_login(&c, "st", 2_000).unwrap().is_none());
        put_login(&c, "st2", "br", "n", "v", "/", 1_000).unwrap();
        assert!(
            take_login(&c, "st2", 1_000 + LOGIN_WINDOW_MS)
                .unwrap()
                .is_none()
        );
    }
}
