//! Identifiers and capabilities: typed ids so an alert id is never passed
//! where a recipient id belongs, and the acknowledgement token.

use std::fmt;

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// An alert (including follow-ups: updates and all-clears).
    AlertId
);
id_type!(
    /// One person in one alert's frozen audience.
    RecipientId
);

/// A contact address as stored in the outbox: an E.164 number for sms and
/// voice, a lower-case email address for email. Never logged at info level.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Address(pub String);

impl Address {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The key acknowledgement tokens are derived from; lives in the store folder
/// (`ack.key`, 0600) so tokens survive restarts but are never stored.
#[derive(Clone)]
pub struct AckKey([u8; 32]);

impl fmt::Debug for AckKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AckKey(…)")
    }
}

/// Bytes of MAC in a token: 128 bits, the unguessable part.
const MAC_LEN: usize = 16;

impl AckKey {
    pub fn from_bytes(b: [u8; 32]) -> AckKey {
        AckKey(b)
    }

    pub fn generate() -> Result<AckKey, getrandom::Error> {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b)?;
        Ok(AckKey(b))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn mac(&self, id: RecipientId) -> [u8; MAC_LEN] {
        let mut m = hmac::Hmac::<Sha256>::new_from_slice(&self.0).expect("any key length");
        m.update(b"klaxon-ack-v1");
        m.update(&id.0.to_be_bytes());
        let full = m.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }
}

/// A recipient's acknowledgement capability: their id and a 128-bit MAC over
/// it, base64url (32 characters). Derived, not stored: the store keeps only
/// its SHA-256, so a copy of the database does not hand out working links.
#[derive(Clone, PartialEq, Eq)]
pub struct AckToken(String);

impl fmt::Debug for AckToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AckToken(…)")
    }
}

impl AckToken {
    pub fn derive(key: &AckKey, id: RecipientId) -> AckToken {
        let mut raw = [0u8; 8 + MAC_LEN];
        raw[..8].copy_from_slice(&id.0.to_be_bytes());
        raw[8..].copy_from_slice(&key.mac(id));
        AckToken(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
    }

    /// Parses a presented token: shape first (cheap refusal), then the MAC in
    /// constant time. Returns the recipient it was made for.
    pub fn verify(key: &AckKey, presented: &str) -> Option<(AckToken, RecipientId)> {
        if presented.len() != 32 {
            return None;
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(presented)
            .ok()?;
        if raw.len() != 8 + MAC_LEN {
            return None;
        }
        let id = RecipientId(i64::from_be_bytes(raw[..8].try_into().ok()?));
        let mut m = hmac::Hmac::<Sha256>::new_from_slice(key.as_bytes()).ok()?;
        m.update(b"klaxon-ack-v1");
        m.update(&id.0.to_be_bytes());
        m.verify_truncated_left(&raw[8..]).ok()?;
        Some((AckToken(presented.to_string()), id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What the store kept before `stored`: SHA-256, hex. Still matched, for
    /// the links of alerts written then.
    pub fn hash(&self) -> String {
        super::text::hex(&Sha256::digest(self.0.as_bytes()))
    }

    /// What the store keeps: the recipient id (16 hex digits) before the
    /// SHA-256. The id in front makes the token index grow at its end, in
    /// order, as recipients are written; a bare hash landed on a random page
    /// of it for every recipient, one more page in the WAL each.
    pub fn stored(&self, id: RecipientId) -> String {
        let mut s = super::text::hex(&id.0.to_be_bytes());
        s.push_str(&self.hash());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_with_their_key_and_id() {
        let k = AckKey::from_bytes([7; 32]);
        let t = AckToken::derive(&k, RecipientId(42));
        assert_eq!(t.as_str().len(), 32);
        let (back, id) = AckToken::verify(&k, t.as_str()).unwrap();
        assert_eq!(id, RecipientId(42));
        assert_eq!(back, t);
        assert!(AckToken::verify(&AckKey::from_bytes([8; 32]), t.as_str()).is_none());
        // One character changed in the MAC part.
        let mut s = t.as_str().to_string();
        let last = if s.ends_with('A') { "B" } else { "A" };
        s.replace_range(31..32, last);
        assert!(AckToken::verify(&k, &s).is_none());
        assert!(AckToken::verify(&k, "short").is_none());
        assert_ne!(t.hash(), t.as_str());
        assert_eq!(t.hash().len(), 64);
        // Stored values sort by recipient id, then by hash.
        let stored = t.stored(RecipientId(42));
        assert_eq!(stored, format!("000000000000002a{}", t.hash()));
        let later = AckToken::derive(&k, RecipientId(300));
        assert!(later.stored(RecipientId(300)) > stored);
    }
}
