//! Providers move a rendered message to the outside world. One enum, one
//! variant per kind, so the engine dispatches without boxing futures.
//!
//! Invariant: a provider never touches the store and never retries by itself;
//! it makes one attempt and classifies the outcome as `Accepted`, transient or
//! permanent. Retrying, failover and recording belong to the engine.

pub mod dkim;
pub mod log;
pub mod mime;
pub mod sendgrid;
pub mod smtp;
pub mod smtp_client;
pub mod smtp_oauth;
pub mod twilio;

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Issues, ProviderCommon};
use crate::deliver::message::{Accepted, OutboundMessage, SendError};
use crate::domain::Channel;

/// What every provider may need besides its own section of the config.
#[derive(Clone)]
pub struct ProviderContext {
    /// Base of acknowledgement links and callback URLs (`server.public_url`).
    pub public_url: String,
    /// Folder of the config file; relative paths in a provider section are
    /// resolved against it.
    pub base_dir: PathBuf,
    /// One HTTP client for all HTTP providers (connection pooling).
    pub http: reqwest::Client,
}

impl ProviderContext {
    /// Reads the secret `prefix.name_env` / `prefix.name_file`, a file path
    /// being relative to the config file's folder.
    pub fn secret(
        &self,
        prefix: &str,
        name: &str,
        env: Option<&str>,
        file: Option<&PathBuf>,
        required: bool,
        issues: &mut Issues,
    ) -> Option<crate::config::Secret> {
        let file = file.map(|p| crate::config::relative_to(&self.base_dir, p));
        crate::config::resolve_secret(prefix, name, env, file.as_deref(), required, issues)
    }
}

/// A provider section from the config, parsed by `kind`.
#[derive(Debug, Clone)]
pub enum ProviderConfig {
    Log(log::LogConfig),
    Twilio(twilio::TwilioConfig),
    Smtp(smtp::SmtpConfig),
    SendGrid(sendgrid::SendGridConfig),
}

impl ProviderConfig {
    /// Parses one `[[providers]]` table. `prefix` is its key path, e.g. `providers[2]`.
    pub fn parse(prefix: &str, table: toml::Table, issues: &mut Issues) -> Option<ProviderConfig> {
        let mut table = table;
        let kind = match table.remove("kind") {
            Some(toml::Value::String(k)) => k,
            Some(_) => {
                issues.push(format!("{prefix}.kind"), "must be a string");
                return None;
            }
            None => {
                issues.push(
                    format!("{prefix}.kind"),
                    "missing; one of \"twilio\", \"smtp\", \"sendgrid\", \"log\"",
                );
                return None;
            }
        };
        let value = toml::Value::Table(table);
        match kind.as_str() {
            "log" => crate::config::section(prefix, value, issues).map(ProviderConfig::Log),
            "twilio" => crate::config::section::<twilio::TwilioConfig>(prefix, value, issues)
                .inspect(|c| c.validate(prefix, issues))
                .map(ProviderConfig::Twilio),
            "smtp" => crate::config::section::<smtp::SmtpConfig>(prefix, value, issues)
                .inspect(|c| c.validate(prefix, issues))
                .map(ProviderConfig::Smtp),
            "sendgrid" => crate::config::section::<sendgrid::SendGridConfig>(prefix, value, issues)
                .inspect(|c| c.validate(prefix, issues))
                .map(ProviderConfig::SendGrid),
            other => {
                issues.push(
                    format!("{prefix}.kind"),
                    format!(
                        "unknown provider kind `{other}`; one of \"twilio\", \"smtp\", \"sendgrid\", \"log\""
                    ),
                );
                None
            }
        }
    }

    /// The fields every kind shares.
    pub fn common(&self) -> ProviderCommon {
        macro_rules! common {
            ($c:expr) => {
                ProviderCommon {
                    name: $c.name.clone(),
                    channels: $c.channels.clone(),
                    max_per_second: $c.max_per_second,
                }
            };
        }
        match self {
            ProviderConfig::Log(c) => common!(c),
            ProviderConfig::Twilio(c) => common!(c),
            ProviderConfig::Smtp(c) => common!(c),
            ProviderConfig::SendGrid(c) => common!(c),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ProviderConfig::Log(_) => "log",
            ProviderConfig::Twilio(_) => "twilio",
            ProviderConfig::Smtp(_) => "smtp",
            ProviderConfig::SendGrid(_) => "sendgrid",
        }
    }

    /// Channels this kind can carry at all, for validating `channels`.
    pub fn supported_channels(&self) -> &'static [Channel] {
        match self {
            ProviderConfig::Log(_) => &Channel::ALL,
            ProviderConfig::Twilio(_) => &[Channel::Sms, Channel::Voice],
            ProviderConfig::Smtp(_) | ProviderConfig::SendGrid(_) => &[Channel::Email],
        }
    }
}

/// A ready-to-use provider.
pub enum Provider {
    Log(log::LogProvider),
    Twilio(twilio::TwilioProvider),
    Smtp(smtp::SmtpProvider),
    SendGrid(sendgrid::SendGridProvider),
}

impl Provider {
    /// Builds the provider, resolving secrets; problems go to `issues`.
    pub fn build(
        prefix: &str,
        cfg: &ProviderConfig,
        ctx: &ProviderContext,
        issues: &mut Issues,
    ) -> Option<Provider> {
        match cfg {
            ProviderConfig::Log(c) => {
                log::LogProvider::build(prefix, c, ctx, issues).map(Provider::Log)
            }
            ProviderConfig::Twilio(c) => {
                twilio::TwilioProvider::build(prefix, c, ctx, issues).map(Provider::Twilio)
            }
            ProviderConfig::Smtp(c) => {
                smtp::SmtpProvider::build(prefix, c, ctx, issues).map(Provider::Smtp)
            }
            ProviderConfig::SendGrid(c) => {
                sendgrid::SendGridProvider::build(prefix, c, ctx, issues).map(Provider::SendGrid)
            }
        }
    }

    /// One attempt to hand the message over.
    pub async fn send(&self, msg: &OutboundMessage) -> Result<Accepted, SendError> {
        match self {
            Provider::Log(p) => p.send(msg).await,
            Provider::Twilio(p) => p.send(msg).await,
            Provider::Smtp(p) => p.send(msg).await,
            Provider::SendGrid(p) => p.send(msg).await,
        }
    }

    /// Messages per second the engine may hand this provider; `None` means no
    /// limit. For Twilio it also honours the sender pool (senders ×
    /// `per_sender_per_second`).
    pub fn effective_rate(&self) -> Option<f64> {
        match self {
            Provider::Log(p) => p.max_per_second(),
            Provider::Twilio(p) => p.effective_rate(),
            Provider::Smtp(p) => p.max_per_second(),
            Provider::SendGrid(p) => p.max_per_second(),
        }
    }

    /// Auth tokens that may sign this provider's callbacks (Twilio only; empty
    /// for the others). The HTTP layer collects them over all providers.
    pub fn callback_tokens(&self) -> Vec<&str> {
        match self {
            Provider::Twilio(p) => p.callback_tokens(),
            Provider::Log(_) | Provider::Smtp(_) | Provider::SendGrid(_) => Vec::new(),
        }
    }
}

/// Every token that may sign a Twilio callback, over all configured providers.
pub fn twilio_callback_tokens(providers: &[Provider]) -> Vec<&str> {
    providers
        .iter()
        .flat_map(Provider::callback_tokens)
        .collect()
}

/// Removes the recipient's address from an error reason. Providers quote it
/// ("Invalid 'To' Phone Number: +1…", "<a@b.org>: no such user"); reasons end
/// up in logs, and the delivery row already says who the recipient was.
pub(crate) fn redact(result: Result<Accepted, SendError>, to: &str) -> Result<Accepted, SendError> {
    if to.is_empty() {
        return result;
    }
    let scrub = |reason: String| {
        // Case-insensitive for email addresses, which servers may re-case.
        let lower = reason.to_lowercase();
        let needle = to.to_lowercase();
        if lower.len() != reason.len() || !lower.contains(&needle) {
            return reason.replace(to, "[recipient]");
        }
        let mut out = String::with_capacity(reason.len());
        let mut rest = 0;
        for (i, _) in lower.match_indices(&needle) {
            out.push_str(&reason[rest..i]);
            out.push_str("[recipient]");
            rest = i + needle.len();
        }
        out.push_str(&reason[rest..]);
        out
    };
    result.map_err(|e| match e {
        SendError::Transient {
            reason,
            retry_after,
        } => SendError::Transient {
            reason: scrub(reason),
            retry_after,
        },
        SendError::Permanent { code, reason } => SendError::Permanent {
            code,
            reason: scrub(reason),
        },
    })
}

/// Runs a section's `validate` again at build time (a config may be built
/// without having been loaded), adding only problems not already reported by
/// `ProviderConfig::parse`, so `check-config` never lists one twice. Returns
/// whether the section is valid.
pub(crate) fn revalidate(issues: &mut Issues, validate: impl FnOnce(&mut Issues)) -> bool {
    let mut found = Issues::default();
    validate(&mut found);
    let valid = found.is_empty();
    for issue in found.list {
        let known = issues
            .list
            .iter()
            .any(|i| i.key == issue.key && i.message == issue.message);
        if !known {
            issues.list.push(issue);
        }
    }
    valid
}

/// Reads `Retry-After` (seconds, or an HTTP date) from an HTTP answer.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // An HTTP date is RFC 2822 shaped ("Wed, 21 Oct 2015 07:28:00 GMT").
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let secs = at.as_second() - jiff::Timestamp::now().as_second();
    Some(Duration::from_secs(secs.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, "17".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(17)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(
            retry_after(&h),
            Some(Duration::ZERO),
            "a past date means now"
        );
        h.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn reasons_do_not_carry_the_recipient() {
        let err = |reason: &str| -> Result<Accepted, SendError> {
            Err(SendError::Permanent {
                code: "x".into(),
                reason: reason.into(),
            })
        };
        let reason = |r: Result<Accepted, SendError>| match r {
            Err(SendError::Permanent { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            reason(redact(
                err("Invalid 'To' Phone Number: +15555550199"),
                "+15555550199"
            )),
            "Invalid 'To' Phone Number: [recipient]"
        );
        assert_eq!(
            reason(redact(
                err("550 <Nobody@Example.com>: no such user"),
                "nobody@example.com"
            )),
            "550 <[recipient]>: no such user"
        );
        assert_eq!(reason(redact(err("time-out"), "a@b.org")), "time-out");
    }
}
