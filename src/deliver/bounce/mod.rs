//! Bounces of mail sent through an SMTP relay. A relay accepts a message and
//! learns only later that the address does not exist; it then mails a DSN
//! (RFC 3464) to the envelope sender. With `[providers.bounces]` each
//! message goes out with a VERP return path, `bounces+d{id}.{mac}@domain`,
//! and a Message-ID carrying the same tag; a supervised poller reads the
//! bounce mailbox over IMAP, matches each DSN to its delivery by that tag,
//! and records the address as undeliverable with the relay's reason.
//!
//! The tag's MAC (HMAC-SHA256 under the store's key, 64 bits) means nobody
//! who can mail the bounce mailbox can mark someone else's delivery as
//! undeliverable: a DSN whose tag does not verify is ignored and counted.

pub mod dsn;
pub mod imap;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hmac::{KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;

use crate::config::{Dur, Issues, Secret};
use crate::deliver::events::{EmailEvent, EventKind};
use crate::deliver::providers::Provider;
use crate::deliver::providers::smtp_oauth::TokenSource;
use crate::domain::AckKey;
use crate::metrics::Metrics;
use crate::services::Services;
use crate::store::deliveries::StatusApplied;
use crate::store::{Store, email_events};
use imap::{Imap, ImapError};

/// Local part of the return path; the tag follows a `+` (subaddressing,
/// which Microsoft 365, Google Workspace and Postfix deliver to `bounces@`).
pub const RETURN_PATH_LOCAL: &str = "bounces";

/// `[providers.bounces]` of an SMTP provider: the mailbox bounces go to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BouncesConfig {
    /// The IMAP server, e.g. `outlook.office365.com` or `imap.gmail.com`.
    pub host: String,
    /// Default 993 with `tls = "tls"`, 143 with `"none"`.
    #[serde(default)]
    pub port: Option<u16>,
    /// `"tls"` (implicit TLS, the default) or `"none"` (a trusted network only).
    #[serde(default)]
    pub tls: ImapTls,
    /// The mailbox's login.
    pub user: String,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// `"password"` (default) or `"xoauth2"`: the provider's OAuth token
    /// (the same app registration or service account) signs in as `user`.
    #[serde(default)]
    pub auth: crate::deliver::providers::smtp::AuthMode,
    #[serde(default = "default_mailbox")]
    pub mailbox: String,
    /// How often the mailbox is read.
    #[serde(default = "default_interval")]
    pub interval: Dur,
    /// Domain of the return path `bounces+TAG@domain`; default: the `from`
    /// address's domain. Mail to it must reach `user`'s mailbox.
    #[serde(default)]
    pub return_path_domain: Option<String>,
    /// Extra CA certificates (PEM) for the IMAP server.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImapTls {
    #[default]
    Tls,
    None,
}

fn default_mailbox() -> String {
    "INBOX".into()
}

fn default_interval() -> Dur {
    Dur::secs(60)
}

impl BouncesConfig {
    pub fn validate(&self, prefix: &str, issues: &mut Issues) {
        if self.host.trim().is_empty() {
            issues.push(format!("{prefix}.host"), "empty host name");
        }
        if self.port == Some(0) {
            issues.push(format!("{prefix}.port"), "port 0 is not a port");
        }
        if self.user.trim().is_empty() {
            issues.push(format!("{prefix}.user"), "empty user");
        }
        if self.interval.0 < Duration::from_millis(100) {
            issues.push(format!("{prefix}.interval"), "must be at least 100ms");
        }
        if let Some(d) = &self.return_path_domain
            && (d.is_empty()
                || !d
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'))
        {
            issues.push(
                format!("{prefix}.return_path_domain"),
                format!("`{d}` is not a domain name"),
            );
        }
        if self.ca_file.is_some() && self.tls == ImapTls::None {
            issues.push(
                format!("{prefix}.ca_file"),
                "a CA file only matters with tls = \"tls\"",
            );
        }
    }

    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            ImapTls::Tls => 993,
            ImapTls::None => 143,
        })
    }
}

/// How the poller signs in.
pub enum ImapLogin {
    Password(Secret),
    XOAuth2(Arc<TokenSource>),
}

/// A bounce mailbox, ready to poll.
pub struct BounceMailbox {
    /// The SMTP provider it belongs to (logs, metrics).
    pub provider: String,
    pub host: String,
    pub port: u16,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub user: String,
    pub login: ImapLogin,
    pub mailbox: String,
    pub interval: Duration,
    pub timeout: Duration,
}

/// The tag of one delivery: `d{id}.{16 hex digits of MAC}`.
pub fn tag(key: &AckKey, delivery_id: i64) -> String {
    format!("d{delivery_id}.{}", hex(&mac(key, delivery_id)))
}

fn mac(key: &AckKey, delivery_id: i64) -> [u8; 8] {
    let mut m = hmac::Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    m.update(b"klaxon-bounce\0");
    m.update(&delivery_id.to_be_bytes());
    let full = m.finalize().into_bytes();
    let mut out = [0u8; 8];
    out.copy_from_slice(&full[..8]);
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The first delivery whose verified tag appears in `text` (after a `+` in a
/// return path or a `.` in our Message-ID, and followed by `@`).
pub fn delivery_in(key: &AckKey, text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let mut i = 1;
    while i < b.len() {
        if b[i] == b'd' && (b[i - 1] == b'+' || b[i - 1] == b'.') {
            let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            let dot = i + 1 + digits;
            let end = dot + 1 + 16;
            if digits > 0
                && digits < 19
                && b.get(dot) == Some(&b'.')
                && b.get(end) == Some(&b'@')
                && b[dot + 1..end].iter().all(|c| c.is_ascii_hexdigit())
                && let Ok(id) = text[i + 1..dot].parse::<i64>()
            {
                let expected = hex(&mac(key, id));
                let given = text[dot + 1..end].to_ascii_lowercase();
                // Constant time: the MAC is what keeps forged bounces out.
                let same = expected
                    .bytes()
                    .zip(given.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0;
                if same {
                    return Some(id);
                }
            }
        }
        i += 1;
    }
    None
}

/// What one poll did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PollSummary {
    pub recorded: usize,
    pub unknown: usize,
    pub ignored: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Imap(#[from] ImapError),
    #[error("cannot get an OAuth token for the bounce mailbox: {0}")]
    Token(String),
    #[error("cannot record a bounce: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Reads the unseen messages of the mailbox once. A bounce matched to a
/// delivery is recorded, then flagged `\Seen \Deleted` and expunged; any
/// other message (unknown or forged tag, a delay notice, an out-of-office
/// reply) is flagged `\Seen` and left for a person to read.
pub async fn poll_once(
    mb: &BounceMailbox,
    key: &AckKey,
    store: &Store,
    metrics: &Metrics,
    now: impl Fn() -> i64,
) -> Result<PollSummary, PollError> {
    let mut imap = Imap::connect(&mb.host, mb.port, mb.tls.clone(), mb.timeout).await?;
    match &mb.login {
        ImapLogin::Password(p) => imap.login(&mb.user, p.expose()).await?,
        ImapLogin::XOAuth2(tokens) => {
            let token = tokens.token().await.map_err(PollError::Token)?;
            if let Err(e) = imap.authenticate_xoauth2(&mb.user, &token).await {
                // Perhaps revoked early: the next poll fetches a new one.
                tokens.invalidate().await;
                return Err(e.into());
            }
        }
    }
    imap.select(&mb.mailbox).await?;
    let mut summary = PollSummary::default();
    let mut deleted = false;
    let count = |event: &str, outcome: &str| {
        metrics.inc(
            "klaxon_email_events_total",
            &[("source", "dsn"), ("event", event), ("outcome", outcome)],
        )
    };
    for uid in imap.unseen().await? {
        let raw = imap.fetch(uid).await?;
        let Some(recipients) = dsn::parse(&raw) else {
            imap.add_flags(uid, "\\Seen").await?;
            count("other", "ignored");
            summary.ignored += 1;
            continue;
        };
        let Some(failed) = recipients.iter().find(|r| r.is_failure()) else {
            // A delay or success notice: nothing to record.
            imap.add_flags(uid, "\\Seen").await?;
            count("other", "ignored");
            summary.ignored += 1;
            continue;
        };
        let kind = if failed.is_permanent_failure() {
            EventKind::Undeliverable
        } else {
            EventKind::Failed
        };
        let Some(delivery_id) = delivery_in(key, &String::from_utf8_lossy(&raw)) else {
            imap.add_flags(uid, "\\Seen").await?;
            count(kind.as_str(), "unknown");
            summary.unknown += 1;
            tracing::warn!(provider = %mb.provider, uid, "A bounce names no delivery of ours (or a forged one); left in the mailbox as read.");
            continue;
        };
        let event = EmailEvent {
            delivery_id,
            message_id: None,
            kind,
            code: failed.status.clone(),
            reason: Some(
                failed
                    .diagnostic
                    .clone()
                    .unwrap_or_else(|| format!("bounced: status {}", failed.status)),
            ),
        };
        let t = now();
        let applied = store
            .write(move |c| email_events::apply(c, t, &event))
            .await?;
        if applied == StatusApplied::Unknown {
            imap.add_flags(uid, "\\Seen").await?;
            count(kind.as_str(), "unknown");
            summary.unknown += 1;
            continue;
        }
        imap.add_flags(uid, "\\Seen \\Deleted").await?;
        deleted = true;
        let outcome = if applied == StatusApplied::Unchanged {
            "unchanged"
        } else {
            "applied"
        };
        count(kind.as_str(), outcome);
        summary.recorded += 1;
        tracing::info!(provider = %mb.provider, delivery_id, status = %failed.status, "Bounce recorded.");
    }
    if deleted {
        imap.expunge().await?;
    }
    imap.logout().await;
    Ok(summary)
}

/// One supervised poller per SMTP provider with `[providers.bounces]`.
pub fn spawn_all(sv: &Arc<Services>, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let mut out = Vec::new();
    for p in sv.engine.providers() {
        let Provider::Smtp(smtp) = p else { continue };
        let Some(mb) = smtp.bounces() else { continue };
        let (sv2, stop2) = (sv.clone(), stop.clone());
        out.push(crate::supervise::spawn(
            "bounces",
            sv.metrics.clone(),
            sv.tasks.clone(),
            sv.clock.clone(),
            move || run(mb.clone(), sv2.clone(), stop2.clone()),
        ));
    }
    out
}

async fn run(mb: Arc<BounceMailbox>, sv: Arc<Services>, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        let clock = sv.clock.clone();
        let polled = tokio::select! {
            r = poll_once(&mb, &sv.ack_key, &sv.store, &sv.metrics, move || clock.now_ms()) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let outcome = match polled {
            Ok(s) => {
                tracing::debug!(provider = %mb.provider, recorded = s.recorded, unknown = s.unknown, ignored = s.ignored, "Bounce mailbox read.");
                "ok"
            }
            Err(e) => {
                tracing::warn!(provider = %mb.provider, error = %e, "Cannot read the bounce mailbox; trying again at the next interval.");
                "error"
            }
        };
        sv.metrics.inc(
            "klaxon_bounce_polls_total",
            &[("provider", mb.provider.as_str()), ("outcome", outcome)],
        );
        tokio::select! {
            _ = tokio::time::sleep(mb.interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_verify_and_forgeries_do_not() {
        let key = AckKey::from_bytes([7; 32]);
        let t = tag(&key, 42);
        assert!(t.starts_with("d42.") && t.len() == 4 + 16, "{t}");
        assert_eq!(
            delivery_in(&key, &format!("To: bounces+{t}@example-isd.org\r\n")),
            Some(42)
        );
        assert_eq!(
            delivery_in(&key, &format!("Message-ID: <klaxon.7.{t}@example-isd.org>")),
            Some(42)
        );
        // Another delivery id with this MAC, another key, no MAC at all.
        let forged = t.replacen("d42.", "d43.", 1);
        assert_eq!(delivery_in(&key, &format!("bounces+{forged}@x")), None);
        let other = AckKey::from_bytes([8; 32]);
        assert_eq!(delivery_in(&other, &format!("bounces+{t}@x")), None);
        assert_eq!(delivery_in(&key, "Message-ID: <klaxon.7.42@x>"), None);
    }
}
