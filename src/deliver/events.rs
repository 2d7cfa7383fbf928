//! What happens to an email after a provider accepted it: SendGrid's Event
//! Webhook (ECDSA-signed JSON) and bounces read back from a mailbox (DSNs)
//! both become an `EmailEvent` that moves the delivery's state and feeds the
//! contactability report (`store::email_events`).
//!
//! SendGrid signs `timestamp + body` with ECDSA P-256 / SHA-256 and sends
//! the signature (base64 DER) in `X-Twilio-Email-Event-Webhook-Signature`,
//! the timestamp in `X-Twilio-Email-Event-Webhook-Timestamp`. Its public key
//! is shown once in the SendGrid console as base64 DER SubjectPublicKeyInfo.

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, ParsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use crate::domain::DeliveryState;

pub const SIGNATURE_HEADER: &str = "x-twilio-email-event-webhook-signature";
pub const TIMESTAMP_HEADER: &str = "x-twilio-email-event-webhook-timestamp";

/// A SendGrid event webhook verification key (P-256).
pub struct EventKey(ParsedPublicKey);

impl std::fmt::Debug for EventKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventKey(P-256)")
    }
}

/// Why a verification key was not accepted (said at start-up, with its key).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error(
        "not a P-256 public key (base64 DER SubjectPublicKeyInfo, as the SendGrid console shows it)"
    )]
    NotP256,
}

impl EventKey {
    /// Parses the key as SendGrid shows it: base64 of the DER
    /// SubjectPublicKeyInfo. PEM armour and line breaks are accepted too.
    pub fn parse(text: &str) -> Result<EventKey, KeyError> {
        let b64: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("-----"))
            .flat_map(|l| l.chars())
            .filter(|c| !c.is_whitespace())
            .collect();
        let der = STANDARD.decode(b64)?;
        ParsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, der)
            .map(EventKey)
            .map_err(|_| KeyError::NotP256)
    }

    /// Whether `signature_b64` is this key's signature over `timestamp + body`.
    pub fn verify(&self, timestamp: &str, body: &[u8], signature_b64: &str) -> bool {
        let Ok(sig) = STANDARD.decode(signature_b64.trim()) else {
            return false;
        };
        let mut signed = Vec::with_capacity(timestamp.len() + body.len());
        signed.extend_from_slice(timestamp.as_bytes());
        signed.extend_from_slice(body);
        self.0.verify_sig(&signed, &sig).is_ok()
    }
}

/// What a report says happened to one email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailEvent {
    /// Our `deliveries.id`, from the custom argument, the return path or the
    /// Message-ID we set.
    pub delivery_id: i64,
    /// The provider's id for the message when the report carries it; checked
    /// against the id stored at hand-over.
    pub message_id: Option<String>,
    pub kind: EventKind,
    /// Short machine code for the contactability report (`bounce`, `5.1.1`…).
    pub code: String,
    /// The receiving side's words, for the operator.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// It reached the recipient's mail server.
    Delivered,
    /// The address cannot receive mail (hard bounce, dropped by the provider).
    Undeliverable,
    /// It did not arrive this time, but the address may be fine (blocked).
    Failed,
    /// The recipient marked it as spam: it arrived, and the address goes on
    /// the contactability report (their provider may suppress the next one).
    Complaint,
}

impl EventKind {
    /// The delivery state it moves to.
    pub fn state(self) -> DeliveryState {
        match self {
            EventKind::Delivered | EventKind::Complaint => DeliveryState::Delivered,
            EventKind::Undeliverable => DeliveryState::Undeliverable,
            EventKind::Failed => DeliveryState::Failed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Delivered => "delivered",
            EventKind::Undeliverable => "undeliverable",
            EventKind::Failed => "failed",
            EventKind::Complaint => "complaint",
        }
    }
}

/// One element of SendGrid's event array; custom args arrive as top-level
/// fields. Unknown fields are ignored: SendGrid adds them over time.
#[derive(Debug, Deserialize)]
pub struct SendGridEvent {
    pub event: String,
    #[serde(default)]
    pub sg_message_id: Option<String>,
    /// Our custom argument (see `SendGridProvider::body`), a string.
    #[serde(default)]
    pub delivery_id: Option<serde_json::Value>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    /// For `bounce`: "bounce" (permanent) or "blocked" (temporary).
    #[serde(default, rename = "type")]
    pub bounce_type: Option<String>,
}

/// What one SendGrid event means for us; `Err` says why it is ignored
/// (an event we do not act on, or one that names no delivery of ours).
pub fn from_sendgrid(ev: &SendGridEvent) -> Result<EmailEvent, &'static str> {
    let (kind, code) = match ev.event.as_str() {
        "delivered" => (EventKind::Delivered, "delivered"),
        "bounce" if ev.bounce_type.as_deref() == Some("blocked") => (EventKind::Failed, "blocked"),
        "bounce" => (EventKind::Undeliverable, "bounce"),
        "dropped" => (EventKind::Undeliverable, "dropped"),
        "spamreport" => (EventKind::Complaint, "spam-report"),
        _ => return Err("not acted on"),
    };
    let delivery_id = match &ev.delivery_id {
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        Some(serde_json::Value::Number(n)) => n.as_i64(),
        _ => None,
    }
    .ok_or("no delivery_id")?;
    let reason = match (&ev.status, &ev.reason) {
        (Some(s), Some(r)) => Some(format!("{s} {r}")),
        (None, Some(r)) => Some(r.clone()),
        (Some(s), None) => Some(s.clone()),
        (None, None) => None,
    };
    Ok(EmailEvent {
        delivery_id,
        message_id: ev.sg_message_id.clone(),
        kind,
        code: code.to_string(),
        reason,
    })
}

/// Whether SendGrid's `sg_message_id` belongs to the `X-Message-Id` we stored
/// at hand-over: it is that id followed by `.filter…` routing parts.
pub fn same_message(stored: &str, reported: &str) -> bool {
    reported == stored
        || reported
            .strip_prefix(stored)
            .is_some_and(|rest| rest.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};

    #[test]
    fn a_signature_verifies_only_over_the_same_timestamp_and_body() {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        let spki = pair.public_key().as_der().unwrap();
        let key = EventKey::parse(&STANDARD.encode(spki.as_ref())).unwrap();
        let body = br#"[{"event":"delivered","delivery_id":"7"}]"#;
        let mut signed = b"1763870400".to_vec();
        signed.extend_from_slice(body);
        let sig = pair.sign(&SystemRandom::new(), &signed).unwrap();
        let sig = STANDARD.encode(sig.as_ref());
        assert!(key.verify("1763870400", body, &sig));
        assert!(!key.verify("1763870401", body, &sig));
        assert!(!key.verify("1763870400", b"[]", &sig));
        assert!(!key.verify("1763870400", body, "not base64!"));
    }

    #[test]
    fn keys_that_are_not_p256_are_refused() {
        assert!(matches!(EventKey::parse("%%%"), Err(KeyError::Base64(_))));
        assert!(matches!(
            EventKey::parse("aGVsbG8="),
            Err(KeyError::NotP256)
        ));
    }

    #[test]
    fn events_map_to_states() {
        let ev = |j: &str| from_sendgrid(&serde_json::from_str(j).unwrap());
        let b = ev(
            r#"{"event":"bounce","type":"bounce","delivery_id":"12","status":"5.1.1","reason":"550 no such user","sg_message_id":"abc.filter0001"}"#,
        )
        .unwrap();
        assert_eq!(b.kind, EventKind::Undeliverable);
        assert_eq!(b.delivery_id, 12);
        assert_eq!(b.reason.as_deref(), Some("5.1.1 550 no such user"));
        assert_eq!(
            ev(r#"{"event":"bounce","type":"blocked","delivery_id":"3"}"#)
                .unwrap()
                .kind,
            EventKind::Failed
        );
        assert_eq!(
            ev(r#"{"event":"spamreport","delivery_id":4}"#)
                .unwrap()
                .kind,
            EventKind::Complaint
        );
        assert!(ev(r#"{"event":"open","delivery_id":"4"}"#).is_err());
        assert!(ev(r#"{"event":"delivered"}"#).is_err());
        assert!(same_message("abc", "abc.filter0001.1.2"));
        assert!(same_message("abc", "abc"));
        assert!(!same_message("abc", "abcd.filter"));
    }
}
