//! What part of the district a person or token may see and act on: the
//! whole district, or a list of schools (OneRoster `sourcedId`s).

use std::fmt;

/// A role's reach. An alert whose audience names no school is district-wide
/// and needs `District`; one naming schools needs every one of them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Scope {
    #[default]
    District,
    Schools(Vec<String>),
}

impl Scope {
    /// Whether an audience over `schools` is within this scope. An empty
    /// list means the whole district: only `District` allows it.
    pub fn allows_schools(&self, schools: &[String]) -> bool {
        match self {
            Scope::District => true,
            Scope::Schools(mine) => !schools.is_empty() && schools.iter().all(|s| mine.contains(s)),
        }
    }

    pub fn is_district(&self) -> bool {
        matches!(self, Scope::District)
    }

    /// The stored form: NULL for the district, else a JSON array.
    pub fn to_column(&self) -> Option<String> {
        match self {
            Scope::District => None,
            Scope::Schools(s) => Some(serde_json::to_string(s).unwrap_or_else(|_| "[]".into())),
        }
    }

    /// Reads the stored form; `None` when the text is not a JSON array of
    /// strings (the caller reports the row as corrupt).
    pub fn from_column(col: Option<&str>) -> Option<Scope> {
        match col {
            None => Some(Scope::District),
            Some(text) => serde_json::from_str::<Vec<String>>(text)
                .ok()
                .map(Scope::Schools),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::District => f.write_str("the whole district"),
            Scope::Schools(s) => write!(f, "school(s) {}", s.join(", ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_school_scope_allows_only_its_own_schools_and_never_the_district() {
        let two = Scope::Schools(v(&["A", "B"]));
        assert!(two.allows_schools(&v(&["A"])));
        assert!(two.allows_schools(&v(&["B", "A"])));
        assert!(!two.allows_schools(&v(&["A", "C"])));
        assert!(!two.allows_schools(&[]), "district-wide needs District");
        assert!(Scope::District.allows_schools(&[]));
        assert!(Scope::District.allows_schools(&v(&["Z"])));
    }

    #[test]
    fn the_column_form_round_trips() {
        let s = Scope::Schools(v(&["A", "B"]));
        assert_eq!(Scope::from_column(s.to_column().as_deref()), Some(s));
        assert_eq!(Scope::from_column(None), Some(Scope::District));
        assert_eq!(Scope::from_column(Some("not json")), None);
    }
}
