//! Audience resolution: an audience spec (schools, grades, roles, groups)
//! against the SIS copy gives the recipients, each with their channels and, for
//! guardians, the children the alert concerns.

use serde::{Deserialize, Serialize};

use crate::domain::{Channel, Role};

/// A named distribution list from `[[groups]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub name: String,
    #[serde(default)]
    pub schools: Vec<String>,
    #[serde(default)]
    pub grades: Vec<String>,
    #[serde(default)]
    pub roles: Vec<Role>,
    #[serde(default)]
    pub classes: Vec<String>,
    /// Individual people by sourcedId.
    #[serde(default)]
    pub people: Vec<String>,
}

/// Who an alert is for. An empty list does not narrow: `{}` is everyone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AudienceSpec {
    pub schools: Vec<String>,
    pub grades: Vec<String>,
    pub roles: Vec<Role>,
    pub groups: Vec<String>,
    pub classes: Vec<String>,
}

/// A student an alert concerns, as a guardian's message names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudentRef {
    pub id: String,
    pub name: String,
    pub school_id: String,
    pub school_name: String,
    pub grade: String,
}

/// One person to tell, with every usable address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub person_id: String,
    pub role: Role,
    pub name: String,
    pub language: String,
    /// For guardians: their children within the audience. Empty otherwise.
    pub students: Vec<StudentRef>,
    /// Usable addresses; empty means the person cannot be reached.
    pub addresses: Vec<(Channel, String)>,
}

/// The resolved audience.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Audience {
    pub recipients: Vec<Recipient>,
}
