//! The `sendgrid` provider: email through SendGrid's v3 Mail Send API
//! (`POST /v3/mail/send`, JSON, bearer key). An HTTP email API is the usual
//! second email route when the district's relay is down or throttled.

use std::path::PathBuf;

use lettre::message::Mailbox;
use serde::Deserialize;
use serde_json::json;

use crate::config::{Issues, Secret};
use crate::deliver::events::EventKey;
use crate::deliver::message::{Accepted, OutboundMessage, SendError};
use crate::deliver::providers::smtp::render_html;
use crate::deliver::providers::{ProviderContext, redact, retry_after, revalidate};
use crate::domain::Channel;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendGridConfig {
    pub name: String,
    pub channels: Vec<Channel>,
    #[serde(default)]
    pub max_per_second: Option<f64>,
    /// Base URL of the API; tests point it at a loopback server.
    #[serde(default = "default_api_base")]
    pub api_base: String,
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// The `From:` mailbox; its address must be a verified SendGrid sender.
    pub from: String,
    /// The Event Webhook's verification key (base64 DER, as the SendGrid
    /// console shows it), or a file holding it. A public key, so it may be
    /// written in the TOML. Without one, `/hooks/sendgrid/events` refuses.
    #[serde(default)]
    pub event_public_key: Option<String>,
    #[serde(default)]
    pub event_public_key_file: Option<PathBuf>,
}

fn default_api_base() -> String {
    "https://api.sendgrid.com".into()
}

impl SendGridConfig {
    pub fn validate(&self, prefix: &str, issues: &mut Issues) {
        if let Err(e) = reqwest::Url::parse(&self.api_base) {
            issues.push(format!("{prefix}.api_base"), format!("not a URL: {e}"));
        }
        if let Err(e) = self.from.parse::<Mailbox>() {
            issues.push(
                format!("{prefix}.from"),
                format!(
                    "`{}` is not a mailbox like \"Alerts <alerts@example.org>\": {e}",
                    self.from
                ),
            );
        }
    }
}

pub struct SendGridProvider {
    name: String,
    http: reqwest::Client,
    url: String,
    key: Secret,
    from: Mailbox,
    max_per_second: Option<f64>,
    event_key: Option<EventKey>,
}

impl SendGridProvider {
    pub fn build(
        prefix: &str,
        cfg: &SendGridConfig,
        ctx: &ProviderContext,
        issues: &mut Issues,
    ) -> Option<SendGridProvider> {
        let before = issues.list.len();
        let valid = revalidate(issues, |i| cfg.validate(prefix, i));
        let key = ctx.secret(
            prefix,
            "api_key",
            cfg.api_key_env.as_deref(),
            cfg.api_key_file.as_ref(),
            true,
            issues,
        );
        let event_key = event_key(prefix, cfg, ctx, issues);
        if !valid || issues.list.len() > before {
            return None;
        }
        Some(SendGridProvider {
            name: cfg.name.clone(),
            http: ctx.http.clone(),
            url: format!("{}/v3/mail/send", cfg.api_base.trim_end_matches('/')),
            key: key?,
            from: cfg.from.parse().ok()?,
            max_per_second: cfg.max_per_second,
            event_key,
        })
    }

    /// The key that signs this account's event webhook, if configured.
    pub fn event_key(&self) -> Option<&EventKey> {
        self.event_key.as_ref()
    }

    pub fn max_per_second(&self) -> Option<f64> {
        self.max_per_second
    }

    /// The Mail Send request body for one message.
    fn body(&self, msg: &OutboundMessage) -> serde_json::Value {
        let mut from = json!({ "email": self.from.email.to_string() });
        if let Some(name) = &self.from.name {
            from["name"] = json!(name);
        }
        let html = msg.html.clone().unwrap_or_else(|| render_html(msg));
        json!({
            "personalizations": [{ "to": [{ "email": msg.to }] }],
            "from": from,
            "subject": msg.subject,
            "content": [
                { "type": "text/plain", "value": msg.body },
                { "type": "text/html", "value": html },
            ],
            // Echoed in SendGrid's event webhook, so events map back to rows.
            "custom_args": {
                "delivery_id": msg.delivery_id.to_string(),
                "alert_id": msg.alert_id.to_string(),
            },
            // Tracking rewrites links; the ack link must stay as it is.
            "tracking_settings": {
                "click_tracking": { "enable": false, "enable_text": false },
                "open_tracking": { "enable": false },
            },
        })
    }

    pub async fn send(&self, msg: &OutboundMessage) -> Result<Accepted, SendError> {
        if msg.channel != Channel::Email {
            return Err(SendError::Permanent {
                code: "unsupported-channel".into(),
                reason: format!("provider `{}` only sends email", self.name),
            });
        }
        tracing::debug!(provider = %self.name, delivery_id = msg.delivery_id, to = %msg.to, "Sending email over SendGrid.");
        let response = self
            .http
            .post(&self.url)
            .bearer_auth(self.key.expose())
            .json(&self.body(msg))
            .send()
            .await
            .map_err(|e| transient(format!("sendgrid: request failed: {}", chain(&e))))?;
        let status = response.status().as_u16();
        let retry = retry_after(response.headers());
        let message_id = response
            .headers()
            .get("x-message-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response.bytes().await.map_err(|e| {
            transient(format!(
                "sendgrid: reading the answer failed: {}",
                chain(&e)
            ))
        })?;
        redact(classify(status, retry, message_id, &body), &msg.to)
    }
}

/// Reads `event_public_key` / `event_public_key_file`; a problem names the key.
fn event_key(
    prefix: &str,
    cfg: &SendGridConfig,
    ctx: &ProviderContext,
    issues: &mut Issues,
) -> Option<EventKey> {
    let (key, text) = match (&cfg.event_public_key, &cfg.event_public_key_file) {
        (None, None) => return None,
        (Some(_), Some(_)) => {
            issues.push(
                format!("{prefix}.event_public_key_file"),
                "set event_public_key or event_public_key_file, not both",
            );
            return None;
        }
        (Some(text), None) => ("event_public_key", text.clone()),
        (None, Some(path)) => {
            let path = crate::config::relative_to(&ctx.base_dir, path);
            match std::fs::read_to_string(&path) {
                Ok(t) => ("event_public_key_file", t),
                Err(e) => {
                    issues.push(
                        format!("{prefix}.event_public_key_file"),
                        format!("cannot read {}: {e}", path.display()),
                    );
                    return None;
                }
            }
        }
    };
    match EventKey::parse(&text) {
        Ok(k) => Some(k),
        Err(e) => {
            issues.push(format!("{prefix}.{key}"), e.to_string());
            None
        }
    }
}

fn transient(reason: String) -> SendError {
    SendError::Transient {
        reason,
        retry_after: None,
    }
}

/// The error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Debug, Deserialize)]
struct ErrorItem {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    field: Option<String>,
}

/// Turns SendGrid's answer into the engine's terms.
pub fn classify(
    status: u16,
    retry_after: Option<std::time::Duration>,
    message_id: Option<String>,
    body: &[u8],
) -> Result<Accepted, SendError> {
    if (200..300).contains(&status) {
        return Ok(Accepted {
            provider_message_id: message_id,
        });
    }
    let errors = serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.errors)
        .unwrap_or_default();
    let detail = errors
        .iter()
        .filter_map(|e| e.message.as_deref())
        .collect::<Vec<_>>()
        .join("; ");
    let reason = format!("sendgrid {status}: {detail}");
    match status {
        429 | 500..=599 => Err(SendError::Transient {
            reason,
            retry_after,
        }),
        // A bad or revoked key: the provider is unusable, the address may be fine.
        401 | 403 => Err(SendError::Transient {
            reason,
            retry_after,
        }),
        _ => {
            // A 400 naming the recipient field is about the address itself.
            let bad_address = errors.iter().any(|e| {
                e.field
                    .as_deref()
                    .is_some_and(|f| f.starts_with("personalizations") && f.contains(".to"))
            });
            let code = if bad_address {
                "invalid-address".to_string()
            } else {
                format!("http-{status}")
            };
            Err(SendError::Permanent { code, reason })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let ok = classify(202, None, Some("abc".into()), b"").unwrap();
        assert_eq!(ok.provider_message_id.as_deref(), Some("abc"));
        let bad = br#"{"errors":[{"message":"Does not contain a valid address.","field":"personalizations.0.to.0.email","help":null}]}"#;
        match classify(400, None, None, bad) {
            Err(SendError::Permanent { code, reason }) => {
                assert_eq!(code, "invalid-address");
                assert!(reason.contains("valid address"));
            }
            other => panic!("{other:?}"),
        }
        let other = br#"{"errors":[{"message":"The subject is required.","field":"subject"}]}"#;
        assert!(
            matches!(classify(400, None, None, other), Err(SendError::Permanent { code, .. }) if code == "http-400")
        );
        for s in [429, 500, 502, 401, 403] {
            assert!(
                matches!(
                    classify(s, None, None, b""),
                    Err(SendError::Transient { .. })
                ),
                "{s}"
            );
        }
    }
}
