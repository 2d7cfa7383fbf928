//! The `log` provider writes each message as one JSON line to a file. It is
//! the demo's provider and a dry-run target: every message is visible, none
//! leaves the machine.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use serde::Deserialize;

use crate::config::{Issues, relative_to};
use crate::deliver::message::{Accepted, OutboundMessage, SendError};
use crate::deliver::providers::ProviderContext;
use crate::domain::Channel;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub name: String,
    pub channels: Vec<Channel>,
    #[serde(default)]
    pub max_per_second: Option<f64>,
    /// The JSON-lines file; relative to the config file's folder.
    pub path: PathBuf,
}

pub struct LogProvider {
    name: String,
    max_per_second: Option<f64>,
    file: Mutex<std::io::BufWriter<std::fs::File>>,
}

impl LogProvider {
    pub fn build(
        prefix: &str,
        cfg: &LogConfig,
        ctx: &ProviderContext,
        issues: &mut Issues,
    ) -> Option<LogProvider> {
        let path = relative_to(&ctx.base_dir, &cfg.path);
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            Ok(f) => Some(LogProvider {
                name: cfg.name.clone(),
                max_per_second: cfg.max_per_second,
                file: Mutex::new(std::io::BufWriter::new(f)),
            }),
            Err(e) => {
                issues.push(
                    format!("{prefix}.path"),
                    format!("cannot open `{}` for appending: {e}", path.display()),
                );
                None
            }
        }
    }

    /// The configured `max_per_second`; `None` means unlimited.
    pub fn max_per_second(&self) -> Option<f64> {
        self.max_per_second
    }

    pub async fn send(&self, msg: &OutboundMessage) -> Result<Accepted, SendError> {
        let id = format!("log-{}", msg.delivery_id);
        let line = serde_json::json!({
            "provider": self.name,
            "id": id,
            "delivery_id": msg.delivery_id,
            "alert_id": msg.alert_id,
            "channel": msg.channel,
            "to": msg.to,
            "language": msg.language,
            "subject": msg.subject,
            "body": msg.body,
            "ack_url": msg.ack_url,
        });
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        // A line is written whole and flushed, so a reader of the file never sees half a message.
        writeln!(f, "{line}")
            .and_then(|_| f.flush())
            .map_err(|e| SendError::Transient {
                reason: format!("cannot write outbox file: {e}"),
                retry_after: None,
            })?;
        Ok(Accepted {
            provider_message_id: Some(id),
        })
    }
}
