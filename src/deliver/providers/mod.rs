//! Providers move a rendered message to the outside world. One enum, one
//! variant per kind, so the engine dispatches without boxing futures.
//!
//! Invariant: a provider never touches the store and never retries by itself;
//! it makes one attempt and classifies the outcome as `Accepted`, transient or
//! permanent. Retrying, failover and recording belong to the engine.

pub mod log;

use std::path::PathBuf;

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

/// A provider section from the config, parsed by `kind`.
#[derive(Debug, Clone)]
pub enum ProviderConfig {
    Log(log::LogConfig),
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
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ProviderConfig::Log(_) => "log",
        }
    }

    /// Channels this kind can carry at all, for validating `channels`.
    pub fn supported_channels(&self) -> &'static [Channel] {
        match self {
            ProviderConfig::Log(_) => &Channel::ALL,
        }
    }
}

/// A ready-to-use provider.
pub enum Provider {
    Log(log::LogProvider),
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
        }
    }

    /// One attempt to hand the message over.
    pub async fn send(&self, msg: &OutboundMessage) -> Result<Accepted, SendError> {
        match self {
            Provider::Log(p) => p.send(msg).await,
        }
    }
}
