//! Small value types that config sections share: durations, secrets and the
//! issue list that `check-config` prints.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// One problem found in the configuration. Every problem is collected, so an
/// operator fixes them all in one pass instead of one per restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted key path, e.g. `providers[1].auth_token_env` or `server.listen`.
    pub key: String,
    /// 1-based line in the config file, where it could be found.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: `{}`: {}", self.key, self.message),
            None => write!(f, "`{}`: {}", self.key, self.message),
        }
    }
}

/// Where problems are collected while a config is validated.
#[derive(Debug, Default)]
pub struct Issues {
    pub list: Vec<ConfigIssue>,
}

impl Issues {
    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.list.push(ConfigIssue {
            key: key.into(),
            line: None,
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// A duration written the way people say it: `"90s"`, `"2m"`, `"1h30m"`, `"500ms"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn parse(text: &str) -> Result<Dur, String> {
        let s = text.trim();
        if s.is_empty() {
            return Err("empty duration; write it like \"90s\", \"2m\" or \"1h30m\"".into());
        }
        let mut total = Duration::ZERO;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 {
                return Err(format!(
                    "`{text}` is not a duration; write it like \"90s\", \"2m\" or \"1h30m\""
                ));
            }
            let n: u64 = rest[..digits]
                .parse()
                .map_err(|_| format!("`{text}`: number too large"))?;
            rest = rest[digits..].trim_start();
            let unit_len = rest.chars().take_while(|c| c.is_ascii_alphabetic()).count();
            let unit = &rest[..unit_len];
            rest = rest[unit_len..].trim_start();
            let d = match unit {
                "ms" => Duration::from_millis(n),
                "s" => Duration::from_secs(n),
                "m" => Duration::from_secs(n * 60),
                "h" => Duration::from_secs(n * 3600),
                "d" => Duration::from_secs(n * 86_400),
                // Retention periods: a year is 365 days and a quarter.
                "y" => Duration::from_secs(n * 31_557_600),
                "" => {
                    return Err(format!(
                        "`{text}` has no unit; write it like \"{n}s\" or \"{n}m\""
                    ));
                }
                other => {
                    return Err(format!(
                        "`{text}`: unknown unit `{other}` (use ms, s, m, h, d or y)"
                    ));
                }
            };
            total += d;
        }
        Ok(Dur(total))
    }

    pub fn secs(secs: u64) -> Dur {
        Dur(Duration::from_secs(secs))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 != 0 {
            write!(f, "{ms}ms")
        } else {
            let s = ms / 1000;
            if s >= 60 && s % 60 == 0 {
                write!(f, "{}m", s / 60)
            } else {
                write!(f, "{s}s")
            }
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A secret value read from the environment or a file. Its `Debug` never shows
/// the value, so it cannot leak through a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Reads a secret named by `<name>_env` or `<name>_file`. Exactly one must be
/// set when `required`; problems are pushed onto `issues` under `prefix.name_*`.
pub fn resolve_secret(
    prefix: &str,
    name: &str,
    env: Option<&str>,
    file: Option<&Path>,
    required: bool,
    issues: &mut Issues,
) -> Option<Secret> {
    match (env, file) {
        (Some(_), Some(_)) => {
            issues.push(
                format!("{prefix}.{name}_env"),
                format!("set either `{name}_env` or `{name}_file`, not both"),
            );
            None
        }
        (Some(var), None) => match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Some(Secret(v.trim().to_string())),
            Ok(_) => {
                issues.push(
                    format!("{prefix}.{name}_env"),
                    format!("environment variable `{var}` is empty"),
                );
                None
            }
            Err(_) => {
                issues.push(
                    format!("{prefix}.{name}_env"),
                    format!("environment variable `{var}` is not set"),
                );
                None
            }
        },
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(v) if !v.trim().is_empty() => Some(Secret(v.trim().to_string())),
            Ok(_) => {
                issues.push(
                    format!("{prefix}.{name}_file"),
                    format!("secret file `{}` is empty", path.display()),
                );
                None
            }
            Err(e) => {
                issues.push(
                    format!("{prefix}.{name}_file"),
                    format!("cannot read secret file `{}`: {e}", path.display()),
                );
                None
            }
        },
        (None, None) => {
            if required {
                issues.push(
                    format!("{prefix}.{name}_env"),
                    format!(
                        "missing secret: set `{name}_env` (an environment variable) or `{name}_file` (a file); secrets are never read from the TOML itself"
                    ),
                );
            }
            None
        }
    }
}

/// Resolves a path written in the config relative to the config file's folder.
pub fn relative_to(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_people_write_them() {
        assert_eq!(Dur::parse("90s").unwrap().0, Duration::from_secs(90));
        assert_eq!(Dur::parse("2m").unwrap().0, Duration::from_secs(120));
        assert_eq!(Dur::parse("1h30m").unwrap().0, Duration::from_secs(5400));
        assert_eq!(Dur::parse("250ms").unwrap().0, Duration::from_millis(250));
        assert!(Dur::parse("5").unwrap_err().contains("no unit"));
        assert!(
            Dur::parse("5 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(Dur::parse("soon").is_err());
        assert_eq!(Dur::secs(120).to_string(), "2m");
    }

    #[test]
    fn secret_debug_hides_value() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }
}
