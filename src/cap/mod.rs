//! Common Alerting Protocol: the typed alert every weather or civil-defence
//! source is read into (CAP 1.1 and 1.2 XML, ATOM feeds of CAP entries,
//! api.weather.gov GeoJSON), the rules that map an alert to a playbook and the
//! schools it reaches, and `klaxon cap inspect`.

pub mod decide;
pub mod geo;
pub mod inspect;
pub mod parse;
pub mod rules;
mod xml;

#[cfg(test)]
mod parse_tests;

use std::fmt;

use jiff::Timestamp;
use serde::Serialize;

pub use parse::{CapError, Document, DocumentKind, Skipped, parse_document};

/// One CAP message. Times are absolute instants; the offset the sender wrote
/// is not kept (nothing we do depends on it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CapAlert {
    pub identifier: String,
    pub sender: String,
    pub sent: Timestamp,
    pub status: Status,
    pub msg_type: MsgType,
    pub scope: Scope,
    /// Earlier messages this one updates or cancels.
    pub references: Vec<Reference>,
    pub infos: Vec<Info>,
}

/// A reference to an earlier message: `sender,identifier,sent`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reference {
    pub sender: String,
    pub identifier: String,
    pub sent: Timestamp,
}

/// One `<info>` block: an event in one language.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Info {
    pub language: String,
    pub event: String,
    pub urgency: Urgency,
    pub severity: Severity,
    pub certainty: Certainty,
    pub effective: Option<Timestamp>,
    pub onset: Option<Timestamp>,
    pub expires: Option<Timestamp>,
    /// When the hazard ends, where the source says (api.weather.gov `ends`,
    /// NWS `eventEndingTime`); otherwise unknown.
    pub ends: Option<Timestamp>,
    pub headline: Option<String>,
    pub description: Option<String>,
    pub instruction: Option<String>,
    /// `(valueName, value)` pairs, in document order.
    pub parameters: Vec<(String, String)>,
    /// `(valueName, value)` pairs, e.g. `("SAME", "WSW")`.
    pub event_codes: Vec<(String, String)>,
    pub areas: Vec<Area>,
}

/// One `<area>`: what it is called and where it is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Area {
    pub desc: String,
    /// Closed rings of `(lat, lon)` vertices (CAP writes latitude first).
    pub polygons: Vec<Vec<(f64, f64)>>,
    pub circles: Vec<Circle>,
    /// `(valueName, value)` pairs: `UGC` zones, `SAME` / `FIPS6` counties.
    pub geocodes: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Circle {
    pub lat: f64,
    pub lon: f64,
    pub radius_km: f64,
}

/// The key under which a message is handled once: identifier + sender + sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AlertKey {
    pub identifier: String,
    pub sender: String,
    /// Milliseconds since the epoch: the same instant written with two
    /// different offsets is the same message.
    pub sent_ms: i64,
}

impl CapAlert {
    pub fn key(&self) -> AlertKey {
        AlertKey {
            identifier: self.identifier.clone(),
            sender: self.sender.clone(),
            sent_ms: self.sent.as_millisecond(),
        }
    }

    /// Every zone or county code the alert names (UGC, SAME, FIPS6), upper-cased.
    pub fn zones(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for area in self.infos.iter().flat_map(|i| &i.areas) {
            for (name, value) in &area.geocodes {
                // The NWS ATOM index lists several codes in one value.
                if is_zone_code(name) {
                    for v in value.split_whitespace().map(str::to_ascii_uppercase) {
                        if !out.contains(&v) {
                            out.push(v);
                        }
                    }
                }
            }
        }
        out
    }

    /// SAME event codes (e.g. `WSW`, `RMT`) across every info block.
    pub fn same_event_codes(&self) -> Vec<String> {
        self.infos
            .iter()
            .flat_map(|i| &i.event_codes)
            .filter(|(n, v)| n.eq_ignore_ascii_case("SAME") && !v.trim().is_empty())
            .map(|(_, v)| v.trim().to_ascii_uppercase())
            .collect()
    }

    /// The latest `expires` of its info blocks; none when no block says.
    pub fn expires(&self) -> Option<Timestamp> {
        self.infos.iter().filter_map(|i| i.expires).max()
    }
}

fn is_zone_code(value_name: &str) -> bool {
    ["UGC", "SAME", "FIPS6"]
        .iter()
        .any(|k| value_name.trim().eq_ignore_ascii_case(k))
}

/// Defines a CAP code list as an enum with its wire spelling; the variants
/// are written lowest first, so `Ord` gives the threshold order.
macro_rules! cap_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal $(| $alt:literal)*),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [&'static str] = &[$($text),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses the CAP spelling (case-insensitive).
            pub fn parse(s: &str) -> Option<$name> {
                let s = s.trim();
                $(if s.eq_ignore_ascii_case($text) $(|| s.eq_ignore_ascii_case($alt))* {
                    return Some($name::$variant);
                })+
                None
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

cap_enum!(
    /// `<status>`: only `Actual` is real.
    Status { Actual = "Actual", Exercise = "Exercise", System = "System", Test = "Test", Draft = "Draft" }
);
cap_enum!(
    /// `<msgType>`.
    MsgType { Alert = "Alert", Update = "Update", Cancel = "Cancel", Ack = "Ack", Error = "Error" }
);
cap_enum!(
    /// `<scope>`.
    Scope { Public = "Public", Restricted = "Restricted", Private = "Private" }
);
cap_enum!(
    /// `<urgency>`, least urgent first.
    Urgency { Unknown = "Unknown", Past = "Past", Future = "Future", Expected = "Expected", Immediate = "Immediate" }
);
cap_enum!(
    /// `<severity>`, least severe first.
    Severity { Unknown = "Unknown", Minor = "Minor", Moderate = "Moderate", Severe = "Severe", Extreme = "Extreme" }
);
cap_enum!(
    /// `<certainty>`, least certain first. CAP 1.0's "Very Likely" reads as Likely.
    Certainty { Unknown = "Unknown", Unlikely = "Unlikely", Possible = "Possible", Likely = "Likely" | "Very Likely", Observed = "Observed" }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_order_from_least_to_most() {
        assert!(Severity::Extreme > Severity::Severe);
        assert!(Severity::Severe > Severity::Moderate);
        assert!(Severity::Minor > Severity::Unknown);
        assert!(Urgency::Immediate > Urgency::Expected);
        assert!(Urgency::Future > Urgency::Past);
        assert!(Certainty::Observed > Certainty::Likely);
        assert_eq!(Certainty::parse("very likely"), Some(Certainty::Likely));
        assert_eq!(Status::parse("actual"), Some(Status::Actual));
        assert_eq!(MsgType::parse("Bogus"), None);
    }
}
