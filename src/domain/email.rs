//! Email addresses, checked and lower-cased so that the same address written
//! twice is one contact point.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A syntactically usable email address, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmailAddress(String);

/// Why a text is not a usable email address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("empty email address")]
    Empty,
    #[error("an email address needs exactly one @")]
    At,
    #[error("the part before @ is empty, too long or has a space or bad character")]
    Local,
    #[error("the domain must be dot-separated letters, digits and hyphens with a dot")]
    Domain,
}

impl EmailAddress {
    /// Checks the shape the SMTP relay will accept (a pragmatic subset of RFC
    /// 5321: no quoted local parts, no IP literals) and lower-cases it. Local
    /// parts are case-sensitive in theory; no real mailbox provider treats
    /// them so, and lower-casing is what makes duplicates collapse.
    pub fn parse(text: &str) -> Result<EmailAddress, EmailError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(EmailError::Empty);
        }
        let (local, domain) = text.split_once('@').ok_or(EmailError::At)?;
        if domain.contains('@') {
            return Err(EmailError::At);
        }
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
        if !local_ok {
            return Err(EmailError::Local);
        }
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = domain.len() <= 253
            && labels.len() >= 2
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
            && labels
                .last()
                .is_some_and(|tld| tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic()));
        if !domain_ok {
            return Err(EmailError::Domain);
        }
        Ok(EmailAddress(text.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for EmailAddress {
    type Error = EmailError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        EmailAddress::parse(&s)
    }
}

impl From<EmailAddress> for String {
    fn from(e: EmailAddress) -> String {
        e.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_addresses_are_lower_cased() {
        assert_eq!(
            EmailAddress::parse(" Mary.Archer@StudentGPS.org ")
                .unwrap()
                .as_str(),
            "mary.archer@studentgps.org"
        );
        assert!(EmailAddress::parse("a+b@sub.example-isd.org").is_ok());
    }

    #[test]
    fn bad_addresses_are_rejected() {
        assert_eq!(EmailAddress::parse(""), Err(EmailError::Empty));
        assert_eq!(
            EmailAddress::parse("name at example.org"),
            Err(EmailError::At)
        );
        assert_eq!(EmailAddress::parse("a@b@example.org"), Err(EmailError::At));
        assert_eq!(EmailAddress::parse("name@"), Err(EmailError::Domain));
        assert_eq!(
            EmailAddress::parse("name@localhost"),
            Err(EmailError::Domain)
        );
        assert_eq!(
            EmailAddress::parse("na me@example.org"),
            Err(EmailError::Local)
        );
        assert_eq!(
            EmailAddress::parse("a..b@example.org"),
            Err(EmailError::Local)
        );
        assert_eq!(
            EmailAddress::parse("a@ex_ample.org"),
            Err(EmailError::Domain)
        );
    }
}
