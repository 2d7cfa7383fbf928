//! API tokens. Only a SHA-256 hash is stored; the token itself is shown once.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::StoreError;
use crate::domain::Scope;

/// What a token may do. Ordered: an admin may do all an operator may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiRole {
    Viewer,
    Operator,
    Admin,
}

impl ApiRole {
    pub fn parse(s: &str) -> Option<ApiRole> {
        match s {
            "viewer" => Some(ApiRole::Viewer),
            "operator" => Some(ApiRole::Operator),
            "admin" => Some(ApiRole::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ApiRole::Viewer => "viewer",
            ApiRole::Operator => "operator",
            ApiRole::Admin => "admin",
        }
    }
}

/// The caller behind a valid token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: ApiRole,
    /// The token's row, so a session begun with it ends when it is revoked.
    pub id: i64,
    /// The schools it may act for; `District` when not limited.
    pub scope: Scope,
}

pub fn hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    crate::domain::text::hex(&digest)
}

/// A new random token: `klx_` and 32 random bytes, base64url (256 bits).
pub fn generate() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source is available");
    format!(
        "klx_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

pub fn insert(
    conn: &Connection,
    name: &str,
    role: ApiRole,
    token: &str,
    now: i64,
) -> Result<i64, StoreError> {
    conn.prepare_cached(
        "INSERT INTO api_tokens (name, role, hash, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![name, role.as_str(), hash(token), now])?;
    Ok(conn.last_insert_rowid())
}

pub fn lookup(conn: &Connection, token: &str) -> Result<Option<Caller>, StoreError> {
    let row: Option<(String, String, i64, Option<String>)> = conn
        .prepare_cached(
            "SELECT name, role, id, schools FROM api_tokens WHERE hash = ?1 AND revoked_at IS NULL",
        )?
        .query_row([hash(token)], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    Ok(match row {
        Some((name, role, id, schools)) => Some(Caller {
            name,
            role: ApiRole::parse(&role)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown token role `{role}`")))?,
            id,
            scope: Scope::from_column(schools.as_deref()).ok_or_else(|| {
                StoreError::Corrupt(format!("token {id} has unreadable schools `{schools:?}`"))
            })?,
        }),
        None => None,
    })
}

/// Limits a token to schools (`klaxon token create --schools A,B`).
pub fn set_scope(conn: &Connection, id: i64, scope: &Scope) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE api_tokens SET schools = ?2 WHERE id = ?1")?
        .execute(params![id, scope.to_column()])?;
    Ok(())
}

/// A token as `klaxon token list` shows it: never the secret, nor its hash.
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// Every token, oldest first, revoked ones included.
pub fn list(conn: &Connection) -> Result<Vec<TokenInfo>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, role, created_at, last_used_at, revoked_at FROM api_tokens ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(TokenInfo {
            id: r.get(0)?,
            name: r.get(1)?,
            role: r.get(2)?,
            created_at: r.get(3)?,
            last_used_at: r.get(4)?,
            revoked_at: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Revokes token `id` (audited): from the next request on it is refused.
/// Returns the token as it is now; `revoked_at` older than `now` means it
/// was already revoked, and nothing changed.
pub fn revoke(
    conn: &Connection,
    id: i64,
    now: i64,
    actor: &str,
    origin: &str,
) -> Result<TokenInfo, StoreError> {
    let changed = conn
        .prepare_cached(
            "UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
        )?
        .execute(params![id, now])?;
    let info = list(conn)?
        .into_iter()
        .find(|t| t.id == id)
        .ok_or_else(|| StoreError::NotFound(format!("token {id}")))?;
    if changed > 0 {
        super::audit::record(
            conn,
            now,
            actor,
            "token.revoke",
            super::audit::Target::Token(id),
            &serde_json::json!({"name": info.name, "role": info.role}).to_string(),
            origin,
        )?;
    }
    Ok(info)
}

/// Notes that `token` was used at `now`, at most once a minute per token
/// (so a polling script does not cost a write per request).
pub fn touch(conn: &Connection, token: &str, now: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE api_tokens SET last_used_at = ?2
         WHERE hash = ?1 AND (last_used_at IS NULL OR last_used_at < ?2 - 60000)",
    )?
    .execute(params![hash(token), now])?;
    Ok(())
}
