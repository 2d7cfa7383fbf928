//! Phone numbers in E.164 form, parsed from what SIS exports really contain:
//! `+15555550100`, `(950) 336 6601`, bare `6039876543`, `1-555-555-0100`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A phone number in E.164 form (`+` then 8 to 15 digits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PhoneNumber(String);

/// Why a text is not a usable phone number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("empty phone number")]
    Empty,
    #[error("unexpected character {0:?} in phone number")]
    BadCharacter(char),
    #[error("{0} digits is not a valid length for {1}")]
    BadLength(usize, &'static str),
    #[error(
        "not a valid North American number (area code and exchange must not start with 0 or 1)"
    )]
    BadNanp,
    #[error("unknown default country {0:?}; write numbers with a leading +")]
    UnknownCountry(String),
}

/// Calling codes and national significant number lengths for the countries
/// whose local numbers we read without a `+`. Everything else must carry `+`.
const COUNTRIES: &[(&str, &str, usize, usize)] = &[
    ("US", "1", 10, 10),
    ("CA", "1", 10, 10),
    ("PR", "1", 10, 10),
    ("GB", "44", 9, 10),
    ("IE", "353", 7, 9),
    ("FR", "33", 9, 9),
    ("DE", "49", 6, 13),
    ("ES", "34", 9, 9),
    ("MX", "52", 10, 10),
    ("AU", "61", 9, 9),
    ("NZ", "64", 8, 10),
];

impl PhoneNumber {
    /// Parses a phone number. Numbers with a leading `+` (or `00`) are read as
    /// international; others as national numbers of `default_country`
    /// (ISO 3166 alpha-2). Spaces, dots, dashes and parentheses are ignored;
    /// letters (extensions, "n/a") are rejected rather than guessed at.
    pub fn parse(text: &str, default_country: &str) -> Result<PhoneNumber, PhoneError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(PhoneError::Empty);
        }
        let mut digits = String::with_capacity(16);
        let mut plus = false;
        for (i, c) in text.chars().enumerate() {
            match c {
                '0'..='9' => digits.push(c),
                '+' if i == 0 => plus = true,
                ' ' | '-' | '.' | '(' | ')' | '\u{a0}' => {}
                other => return Err(PhoneError::BadCharacter(other)),
            }
        }
        if digits.is_empty() {
            return Err(PhoneError::Empty);
        }
        if !plus && let Some(rest) = digits.strip_prefix("00") {
            digits = rest.to_string();
            plus = true;
        }
        if plus {
            return international(&digits);
        }
        let country = default_country.trim().to_ascii_uppercase();
        let Some(&(_, code, min, max)) = COUNTRIES.iter().find(|(c, ..)| *c == country) else {
            return Err(PhoneError::UnknownCountry(default_country.to_string()));
        };
        if code == "1" {
            let national = match digits.len() {
                10 => digits.as_str(),
                11 if digits.starts_with('1') => &digits[1..],
                n => return Err(PhoneError::BadLength(n, "a North American number")),
            };
            return nanp(national);
        }
        // Outside NANP a national number carries a trunk prefix 0 we drop.
        let national = digits.strip_prefix('0').unwrap_or(&digits);
        if national.len() < min || national.len() > max {
            return Err(PhoneError::BadLength(national.len(), "a national number"));
        }
        Ok(PhoneNumber(format!("+{code}{national}")))
    }

    /// The E.164 text, `+` included.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn nanp(national: &str) -> Result<PhoneNumber, PhoneError> {
    let b = national.as_bytes();
    if b.len() != 10 || b[0] < b'2' || b[3] < b'2' {
        return Err(PhoneError::BadNanp);
    }
    Ok(PhoneNumber(format!("+1{national}")))
}

fn international(digits: &str) -> Result<PhoneNumber, PhoneError> {
    if digits.starts_with('0') {
        return Err(PhoneError::BadCharacter('0'));
    }
    if let Some(national) = digits.strip_prefix('1') {
        return nanp(national);
    }
    if !(8..=15).contains(&digits.len()) {
        return Err(PhoneError::BadLength(
            digits.len(),
            "an international number",
        ));
    }
    Ok(PhoneNumber(format!("+{digits}")))
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for PhoneNumber {
    type Error = PhoneError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        PhoneNumber::parse(&s, "US")
    }
}

impl From<PhoneNumber> for String {
    fn from(p: PhoneNumber) -> String {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(s: &str) -> Result<String, PhoneError> {
        PhoneNumber::parse(s, "US").map(|p| p.0)
    }

    #[test]
    fn north_american_forms() {
        assert_eq!(us("(950) 336 6601").unwrap(), "+19503366601");
        assert_eq!(us("6039876543").unwrap(), "+16039876543");
        assert_eq!(us("1-555-555-0100").unwrap(), "+15555550100");
        assert_eq!(us("+1 555 555 0100").unwrap(), "+15555550100");
        assert_eq!(us("555.555.0100").unwrap(), "+15555550100");
    }

    #[test]
    fn international_forms() {
        assert_eq!(us("+44 20 7946 0958").unwrap(), "+442079460958");
        assert_eq!(us("0044 20 7946 0958").unwrap(), "+442079460958");
        assert_eq!(
            PhoneNumber::parse("020 7946 0958", "GB").unwrap().as_str(),
            "+442079460958"
        );
    }

    #[test]
    fn junk_is_rejected() {
        assert_eq!(us(""), Err(PhoneError::Empty));
        assert_eq!(us("n/a"), Err(PhoneError::BadCharacter('n')));
        assert!(matches!(us("603121567"), Err(PhoneError::BadLength(9, _))));
        assert!(matches!(
            us("60312323567"),
            Err(PhoneError::BadLength(11, _))
        ));
        assert_eq!(us("(950) 064 8122"), Err(PhoneError::BadNanp));
        assert_eq!(us("555-555-0100 x12"), Err(PhoneError::BadCharacter('x')));
        assert!(us("+12").is_err());
        assert!(matches!(
            PhoneNumber::parse("5551234", "ZZ"),
            Err(PhoneError::UnknownCountry(_))
        ));
    }
}
