//! Domain types shared by every part of klaxon: channels, roles and the parsed
//! contact addresses. Parse, don't validate: once a value has one of these types
//! it is known to be well formed.

pub mod email;
pub mod ids;
pub mod phone;
pub mod scope;
pub mod state;
pub mod text;

pub use ids::{AckKey, AckToken, Address, AlertId, RecipientId};
pub use scope::Scope;
pub use state::{AlertState, CloseReason, DeliveryState};

use std::fmt;

use serde::{Deserialize, Serialize};

/// How a message reaches a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Sms,
    Voice,
    Email,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Sms, Channel::Voice, Channel::Email];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Voice => "voice",
            Channel::Email => "email",
        }
    }

    pub fn parse(s: &str) -> Option<Channel> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sms" => Some(Channel::Sms),
            "voice" => Some(Channel::Voice),
            "email" => Some(Channel::Email),
            _ => None,
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a contact is to the district, as far as targeting is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Guardian,
    Staff,
    Student,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Guardian, Role::Staff, Role::Student];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Guardian => "guardian",
            Role::Staff => "staff",
            Role::Student => "student",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s.trim().to_ascii_lowercase().as_str() {
            "guardian" | "guardians" | "parent" | "parents" => Some(Role::Guardian),
            "staff" => Some(Role::Staff),
            "student" | "students" => Some(Role::Student),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Channels a recipient is sent on: the playbook's channels they have an
/// address for; if they have none of those, another channel this install can
/// send on, so a guardian with only a landline still gets the call.
pub fn channels_for<'a>(
    wanted: &[Channel],
    available: &[Channel],
    addresses: &'a [(Channel, String)],
) -> Vec<&'a (Channel, String)> {
    let mut chosen: Vec<&(Channel, String)> = Vec::new();
    for ch in wanted {
        if let Some(a) = addresses.iter().find(|(c, _)| c == ch) {
            chosen.push(a);
        }
    }
    if chosen.is_empty()
        && let Some(a) = addresses.iter().find(|(c, _)| available.contains(c))
    {
        chosen.push(a);
    }
    chosen
}
