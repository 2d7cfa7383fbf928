//! What the delivery engine hands a provider, and what a provider answers.

use std::time::Duration;

use crate::domain::Channel;

/// One message for one address on one channel. Rendered before it reaches the
/// provider: providers only transport, they never template.
#[derive(Debug, Clone)]
pub struct OutboundMessage {
    /// Row id in the `deliveries` table; providers echo it in callbacks where
    /// the API allows (for example as a query parameter on Twilio's StatusCallback).
    pub delivery_id: i64,
    pub alert_id: i64,
    pub channel: Channel,
    /// E.164 phone number for sms and voice, lower-case address for email.
    pub to: String,
    /// BCP 47 language tag of the recipient, e.g. "en", "es", "vi", "zh".
    pub language: String,
    /// Email subject; also the first line a voice call speaks.
    pub subject: String,
    /// Plain text body. For sms it already contains the acknowledgement link.
    pub body: String,
    /// HTML body for email, if any.
    pub html: Option<String>,
    /// The acknowledgement link for this recipient.
    pub ack_url: String,
    /// Text a voice call reads (without the link).
    pub speech: String,
    /// The playbook's severity: only routine email offers List-Unsubscribe.
    pub severity: crate::playbook::Severity,
    /// Email: `d{id}.{mac}`, put in the VERP return path and the Message-ID so
    /// a bounce finds its delivery (`deliver::bounce`). `None` elsewhere.
    pub bounce_tag: Option<String>,
}

/// The provider accepted the message.
#[derive(Debug, Clone, Default)]
pub struct Accepted {
    /// The provider's id for the message (Twilio's `sid`, SMTP queue id, …).
    pub provider_message_id: Option<String>,
}

/// Why a send did not go through. The engine branches on the variant: transient
/// errors are retried (same or next provider), permanent ones are not.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// Worth trying again: time-out, connection error, 429, 5xx.
    #[error("transient: {reason}")]
    Transient {
        reason: String,
        /// From a `Retry-After` header, when the provider gave one.
        retry_after: Option<Duration>,
    },
    /// The address itself is bad or refuses messages; retrying cannot help.
    #[error("permanent ({code}): {reason}")]
    Permanent { code: String, reason: String },
}
