//! Rules: which CAP alerts start which playbook, for which schools. Pure
//! logic over a parsed alert, the `[[rules]]` and `[schools."ID"]` config and
//! `now`; whether an alert was already handled is the caller's question.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::{Area, CapAlert, Certainty, Info, MsgType, Severity, Status, Urgency, geo};
use crate::config::Issues;
use crate::domain::text::{DEFAULT_LANGUAGE, MessageText, base_language};

/// EAS event codes that are tests whatever the message's status says:
/// Required Monthly/Weekly Test, Demonstration, National Periodic Test.
pub const EAS_TEST_CODES: &[&str] = &["RMT", "RWT", "DMO", "NPT"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    /// Sends at once.
    Auto,
    /// Held until `klaxon approve ID`; the safe default.
    #[default]
    Manual,
}

/// What to do with an `Update` or `Cancel` of an alert already acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Follow {
    #[default]
    Ignore,
    Notify,
}

/// Default for `message`: what the playbook's `{{ message }}` says.
pub const DEFAULT_MESSAGE: &str =
    "{{ event }} for {{ area }}{% if ends %} until {{ ends }}{% endif %}.";

/// The default in other languages, used when the alert carries an `<info>`
/// in that language and the rule gives no template of its own.
pub const DEFAULT_MESSAGES: &[(&str, &str)] = &[(
    "es",
    "{{ event }} para {{ area }}{% if ends %} hasta {{ ends }}{% endif %}.",
)];

/// One `[[rules]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// CAP `event` names, compared without case.
    #[serde(default)]
    pub events: Vec<String>,
    /// SAME event codes (e.g. "WSW", "BZW"), an alternative to `events`.
    #[serde(default)]
    pub event_codes: Vec<String>,
    /// UGC or SAME codes; any overlap with the alert's matches. Empty: any
    /// zone (allowed only when schools carry zones or locations).
    #[serde(default)]
    pub zones: Vec<String>,
    pub min_severity: Option<Severity>,
    pub min_urgency: Option<Urgency>,
    pub min_certainty: Option<Certainty>,
    pub playbook: String,
    #[serde(default)]
    pub approval: Approval,
    #[serde(default)]
    pub on_update: Follow,
    #[serde(default)]
    pub on_cancel: Follow,
    /// A `Test` or `Exercise` message (or an EAS test code) becomes a drill
    /// instead of doing nothing.
    #[serde(default)]
    pub test_as_drill: bool,
    /// Template (minijinja) for the alert's message, which the playbook's
    /// `{{ message }}` shows. Variables: headline, event, area, onset, ends,
    /// description, instruction.
    #[serde(default = "default_message")]
    pub message: String,
    /// The same template in other languages (`[rules.messages] es = "…"`):
    /// recipients speaking one get it, filled from the CAP `<info>` in their
    /// language when the alert has one.
    #[serde(default)]
    pub messages: BTreeMap<String, String>,
}

fn default_message() -> String {
    DEFAULT_MESSAGE.into()
}

/// One `[schools."ID"]` table: where a school is, for per-school targeting.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchoolGeo {
    /// UGC or SAME codes the school lies in.
    #[serde(default)]
    pub zones: Vec<String>,
    /// `[lat, lon]`.
    pub location: Option<[f64; 2]>,
}

/// Checks `[[rules]]` and `[schools]` against each other and the playbooks.
pub fn validate(
    rules: &[RuleConfig],
    schools: &BTreeMap<String, SchoolGeo>,
    playbooks: &BTreeMap<String, crate::playbook::PlaybookConfig>,
    issues: &mut Issues,
) {
    let targeted = schools
        .values()
        .any(|s| !s.zones.is_empty() || s.location.is_some());
    for (i, r) in rules.iter().enumerate() {
        let p = format!("rules[{i}]");
        if r.name.trim().is_empty() {
            issues.push(format!("{p}.name"), "must not be empty");
        } else if rules[..i].iter().any(|o| o.name == r.name) {
            issues.push(
                format!("{p}.name"),
                format!("duplicate rule name `{}`", r.name),
            );
        }
        if r.events.is_empty() && r.event_codes.is_empty() {
            issues.push(
                format!("{p}.events"),
                "list at least one CAP event (or SAME code in `event_codes`)",
            );
        }
        if r.zones.is_empty() && !targeted {
            issues.push(
                format!("{p}.zones"),
                "list at least one UGC or SAME zone; without zones (and without [schools] zones or locations) an alert anywhere would match",
            );
        }
        if r.zones.iter().any(|z| z.trim().is_empty()) {
            issues.push(format!("{p}.zones"), "a zone must not be empty");
        }
        if !playbooks.contains_key(&r.playbook) {
            issues.push(
                format!("{p}.playbook"),
                format!(
                    "unknown playbook `{}`; configured playbooks: {}",
                    r.playbook,
                    playbooks.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        let templates = std::iter::once((format!("{p}.message"), &r.message)).chain(
            r.messages
                .iter()
                .map(|(lang, t)| (format!("{p}.messages.{lang}"), t)),
        );
        for (key, text) in templates {
            if let Err(e) = env
                .template_from_str(text)
                .and_then(|t| t.render(sample_vars()))
            {
                issues.push(key, format!("template error: {e}"));
            }
        }
    }
    for (id, s) in schools {
        let p = format!("schools.{id}");
        if let Some([lat, lon]) = s.location
            && (!(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon))
        {
            issues.push(
                format!("{p}.location"),
                "must be [latitude, longitude] with latitude in -90..90 and longitude in -180..180",
            );
        }
        if s.zones.iter().any(|z| z.trim().is_empty()) {
            issues.push(format!("{p}.zones"), "a zone must not be empty");
        }
    }
}

fn sample_vars() -> minijinja::Value {
    minijinja::context! {
        headline => "h", event => "e", area => "a", onset => "o", ends => "x",
        description => "d", instruction => "i",
    }
}

/// Who an acting alert reaches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "schools", rename_all = "lowercase")]
pub enum Targets {
    /// No school carries a zone or location: the whole district.
    District,
    /// The schools whose zone the alert lists or whose location it covers.
    Schools(Vec<String>),
}

/// Why an alert does nothing.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum Skip {
    /// `Ack` or `Error` messages are about messages, not hazards.
    NotAnAlert {
        msg_type: MsgType,
    },
    /// Status Test/Exercise/System/Draft or an EAS test code; `rule` is the
    /// rule it would otherwise match.
    Test {
        why: String,
        rule: Option<String>,
    },
    Expired {
        at: Timestamp,
        rule: Option<String>,
    },
    /// No rule names this event.
    NoRule,
    /// A rule names the event, but the alert is below its threshold.
    BelowThreshold {
        rule: String,
        why: String,
    },
    /// A rule names the event, but none of its zones is in the alert.
    NoZone {
        rule: String,
    },
    /// Schools have zones or locations, and none of them is in the alert.
    NoSchool {
        rule: String,
    },
}

impl Skip {
    /// A sentence for operators.
    pub fn describe(&self) -> String {
        match self {
            Skip::NotAnAlert { msg_type } => {
                format!("a CAP {msg_type} message is not an alert; nothing to do")
            }
            Skip::Test { why, .. } => format!("a test ({why}); nothing is sent"),
            Skip::Expired { at, .. } => format!("expired at {at}; nothing is sent"),
            Skip::NoRule => "no rule matches this event".into(),
            Skip::BelowThreshold { rule, why } => {
                format!("rule `{rule}` names this event, but {why}")
            }
            Skip::NoZone { rule } => {
                format!("rule `{rule}` names this event, but none of its zones is in the alert")
            }
            Skip::NoSchool { rule } => format!(
                "rule `{rule}` matches, but no school's zone or location is in the alert area"
            ),
        }
    }
}

/// What the rules say about one alert (before dedup and update handling).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "lowercase")]
pub enum Verdict {
    Act {
        /// Index into the rules.
        rule: usize,
        drill: bool,
        targets: Targets,
    },
    Skip(Skip),
}

/// Why a message counts as a test, if it does.
pub fn test_reason(alert: &CapAlert) -> Option<String> {
    if let Some(c) = alert
        .same_event_codes()
        .into_iter()
        .find(|c| EAS_TEST_CODES.contains(&c.as_str()))
    {
        return Some(format!("EAS test code {c}"));
    }
    match alert.status {
        Status::Actual => None,
        s => Some(format!("status {s}")),
    }
}

/// Applies the rules to `alert` at `now`.
pub fn evaluate(
    alert: &CapAlert,
    rules: &[RuleConfig],
    schools: &BTreeMap<String, SchoolGeo>,
    now: Timestamp,
) -> Verdict {
    if matches!(alert.msg_type, MsgType::Ack | MsgType::Error) {
        return Verdict::Skip(Skip::NotAnAlert {
            msg_type: alert.msg_type,
        });
    }
    let test = test_reason(alert);
    let expired = alert.expires().filter(|t| *t <= now);
    let zones = alert.zones();
    let mut best: Option<Skip> = None;
    for (idx, rule) in rules.iter().enumerate() {
        let named: Vec<&Info> = alert
            .infos
            .iter()
            .filter(|i| names_event(rule, i))
            .collect();
        if named.is_empty() {
            continue;
        }
        if named.iter().all(|i| below(rule, i).is_some()) {
            if let Some(why) = named.iter().find_map(|i| below(rule, i)) {
                best.get_or_insert(Skip::BelowThreshold {
                    rule: rule.name.clone(),
                    why,
                });
            }
            continue;
        }
        if !rule.zones.is_empty()
            && !rule
                .zones
                .iter()
                .any(|z| zones.iter().any(|a| a.eq_ignore_ascii_case(z.trim())))
        {
            if !matches!(best, Some(Skip::BelowThreshold { .. })) {
                best = Some(Skip::NoZone {
                    rule: rule.name.clone(),
                });
            }
            continue;
        }
        let targets = targets(alert, &zones, schools);
        if targets == Targets::Schools(vec![]) {
            best = Some(Skip::NoSchool {
                rule: rule.name.clone(),
            });
            continue;
        }
        if let Some(at) = expired {
            return Verdict::Skip(Skip::Expired {
                at,
                rule: Some(rule.name.clone()),
            });
        }
        return match test {
            None => Verdict::Act {
                rule: idx,
                drill: false,
                targets,
            },
            // Only tests that are exercises of the system become drills;
            // System and Draft messages never reach anyone.
            Some(_)
                if rule.test_as_drill
                    && !matches!(alert.status, Status::System | Status::Draft) =>
            {
                Verdict::Act {
                    rule: idx,
                    drill: true,
                    targets,
                }
            }
            Some(why) => Verdict::Skip(Skip::Test {
                why,
                rule: Some(rule.name.clone()),
            }),
        };
    }
    if let Some(why) = test {
        return Verdict::Skip(Skip::Test { why, rule: None });
    }
    if let Some(at) = expired {
        return Verdict::Skip(Skip::Expired { at, rule: None });
    }
    Verdict::Skip(best.unwrap_or(Skip::NoRule))
}

fn names_event(rule: &RuleConfig, info: &Info) -> bool {
    rule.events
        .iter()
        .any(|e| e.trim().eq_ignore_ascii_case(info.event.trim()))
        || info.event_codes.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case("SAME")
                && rule
                    .event_codes
                    .iter()
                    .any(|c| c.trim().eq_ignore_ascii_case(v.trim()))
        })
}

/// Why `info` is below the rule's thresholds, if it is.
fn below(rule: &RuleConfig, info: &Info) -> Option<String> {
    if let Some(min) = rule.min_severity
        && info.severity < min
    {
        return Some(format!("severity {} is below {min}", info.severity));
    }
    if let Some(min) = rule.min_urgency
        && info.urgency < min
    {
        return Some(format!("urgency {} is below {min}", info.urgency));
    }
    if let Some(min) = rule.min_certainty
        && info.certainty < min
    {
        return Some(format!("certainty {} is below {min}", info.certainty));
    }
    None
}

/// The schools an alert reaches: by zone, or by location inside an area.
pub fn targets(
    alert: &CapAlert,
    zones: &[String],
    schools: &BTreeMap<String, SchoolGeo>,
) -> Targets {
    let placed: Vec<(&String, &SchoolGeo)> = schools
        .iter()
        .filter(|(_, s)| !s.zones.is_empty() || s.location.is_some())
        .collect();
    if placed.is_empty() {
        return Targets::District;
    }
    let areas: Vec<&Area> = alert.infos.iter().flat_map(|i| &i.areas).collect();
    Targets::Schools(
        placed
            .into_iter()
            .filter(|(_, s)| {
                s.zones
                    .iter()
                    .any(|z| zones.iter().any(|a| a.eq_ignore_ascii_case(z.trim())))
                    || s.location
                        .is_some_and(|[lat, lon]| areas.iter().any(|a| geo::in_area((lat, lon), a)))
            })
            .map(|(id, _)| id.clone())
            .collect(),
    )
}

/// The info block a message is built from: English if there is one.
pub fn primary_info(alert: &CapAlert) -> Option<&Info> {
    alert
        .infos
        .iter()
        .find(|i| i.language.to_ascii_lowercase().starts_with("en"))
        .or_else(|| alert.infos.first())
}

/// Renders the rule's `message` template with the alert's fields (its
/// English `<info>`, or the first); times in the district's time zone.
pub fn render_message(rule: &RuleConfig, alert: &CapAlert, tz: &str) -> Result<String, String> {
    render_one(&rule.name, &rule.message, primary_info(alert), tz)
}

/// The message in every language the alert or the rule speaks: for each,
/// the rule's template in that language (or the built-in default, or its
/// `message`), filled from the alert's `<info>` in that language (or the
/// English one). One text when only one language results.
pub fn render_messages(
    rule: &RuleConfig,
    alert: &CapAlert,
    tz: &str,
) -> Result<MessageText, String> {
    let mut langs: Vec<String> = vec![DEFAULT_LANGUAGE.to_string()];
    let info_langs = alert.infos.iter().map(|i| base_language(&i.language));
    for l in info_langs.chain(rule.messages.keys().map(|k| base_language(k))) {
        if !l.is_empty() && !langs.contains(&l) {
            langs.push(l);
        }
    }
    let mut out = BTreeMap::new();
    for lang in &langs {
        let own = rule
            .messages
            .iter()
            .find(|(k, _)| base_language(k) == *lang);
        let builtin = DEFAULT_MESSAGES
            .iter()
            .find(|(l, _)| l == lang)
            .filter(|_| rule.message == DEFAULT_MESSAGE)
            .map(|(_, t)| *t);
        let template = own
            .map(|(_, t)| t.as_str())
            .or(builtin)
            .unwrap_or(&rule.message);
        let info = alert
            .infos
            .iter()
            .find(|i| base_language(&i.language) == *lang)
            .or_else(|| primary_info(alert));
        out.insert(lang.clone(), render_one(&rule.name, template, info, tz)?);
    }
    if out.len() == 1 {
        return Ok(MessageText::One(
            out.into_values().next().unwrap_or_default(),
        ));
    }
    Ok(MessageText::PerLanguage(out))
}

fn render_one(rule: &str, template: &str, info: Option<&Info>, tz: &str) -> Result<String, String> {
    let zone = jiff::tz::TimeZone::get(tz).unwrap_or(jiff::tz::TimeZone::UTC);
    let when = |t: Option<Timestamp>| {
        t.map(|t| {
            t.to_zoned(zone.clone())
                .strftime("%a %b %-d %-I:%M %p %Z")
                .to_string()
        })
        .unwrap_or_default()
    };
    let area = info
        .map(|i| {
            i.areas
                .iter()
                .map(|a| a.desc.as_str())
                .filter(|d| !d.is_empty())
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    let vars = minijinja::context! {
        headline => info.and_then(|i| i.headline.clone()).unwrap_or_default(),
        event => info.map(|i| i.event.clone()).unwrap_or_default(),
        area => area,
        onset => when(info.and_then(|i| i.onset.or(i.effective))),
        ends => when(info.and_then(|i| i.ends.or(i.expires))),
        description => info.and_then(|i| i.description.clone()).unwrap_or_default(),
        instruction => info.and_then(|i| i.instruction.clone()).unwrap_or_default(),
    };
    let env = minijinja::Environment::new();
    let text = env
        .render_str(template, vars)
        .map_err(|e| format!("rule `{rule}` message: {e}"))?;
    // The API refuses messages over 1000 characters; keep within it.
    Ok(text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(1000)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cap::parse_document;

    fn file(rel: &str) -> CapAlert {
        let path = format!("{}/../shared/data/cap/{rel}", env!("CARGO_MANIFEST_DIR"));
        parse_document(&std::fs::read(path).unwrap())
            .unwrap()
            .alerts
            .remove(0)
    }

    /// The NWS blizzard warning with a Spanish `<info>` added after the
    /// English one (as IPAWS messages carry them).
    fn bilingual() -> CapAlert {
        let path = format!(
            "{}/../shared/data/cap/nws/cap11/nws-blizzard-warning-MNZ020-021-2021-12-27.xml",
            env!("CARGO_MANIFEST_DIR")
        );
        let xml = std::fs::read_to_string(path).unwrap();
        let start = xml.find("<info>").unwrap();
        let end = xml.rfind("</info>").unwrap() + "</info>".len();
        let english = &xml[start..end];
        // The sample has no <language>: CAP's default, en-US.
        let spanish = english
            .replacen("<info>", "<info><language>es-US</language>", 1)
            .replace(
                "<event>Blizzard Warning</event>",
                "<event>Aviso de ventisca</event>",
            );
        assert_ne!(english, spanish);
        let doc = format!("{}{}{}", &xml[..end], spanish, &xml[end..]);
        parse_document(doc.as_bytes()).unwrap().alerts.remove(0)
    }

    #[test]
    fn messages_are_rendered_per_language_from_the_info_in_that_language() {
        let a = bilingual();
        assert_eq!(a.infos.len(), 2);
        let r = rule(&["Blizzard Warning"], &[]);
        let text = render_messages(&r, &a, "America/Chicago").unwrap();
        let MessageText::PerLanguage(m) = &text else {
            panic!("two languages: {text:?}");
        };
        assert_eq!(m.keys().collect::<Vec<_>>(), vec!["en", "es"]);
        assert!(m["en"].starts_with("Blizzard Warning for "), "{}", m["en"]);
        assert!(
            m["es"].starts_with("Aviso de ventisca para "),
            "{}",
            m["es"]
        );
        assert!(m["es"].contains(" hasta "), "{}", m["es"]);
        // Vietnamese families get the English text.
        assert_eq!(text.for_language("vi"), m["en"]);

        // A rule's own template for a language wins, even without an <info>
        // in it; one text when the alert has only English.
        let mut r = rule(&["Blizzard Warning"], &[]);
        r.messages
            .insert("vi".into(), "Bão tuyết: {{ event }}".into());
        let english_only = file("nws/cap11/nws-blizzard-warning-MNZ020-021-2021-12-27.xml");
        let text = render_messages(&r, &english_only, "UTC").unwrap();
        assert_eq!(text.for_language("vi"), "Bão tuyết: Blizzard Warning");
        let plain =
            render_messages(&rule(&["Blizzard Warning"], &[]), &english_only, "UTC").unwrap();
        assert!(matches!(plain, MessageText::One(_)), "{plain:?}");
    }

    fn rule(events: &[&str], zones: &[&str]) -> RuleConfig {
        RuleConfig {
            name: "r".into(),
            events: events.iter().map(|s| s.to_string()).collect(),
            event_codes: vec![],
            zones: zones.iter().map(|s| s.to_string()).collect(),
            min_severity: None,
            min_urgency: None,
            min_certainty: None,
            playbook: "weather-closure".into(),
            approval: Approval::Auto,
            on_update: Follow::Ignore,
            on_cancel: Follow::Ignore,
            test_as_drill: false,
            message: DEFAULT_MESSAGE.into(),
            messages: BTreeMap::new(),
        }
    }

    fn before(a: &CapAlert) -> Timestamp {
        a.sent
    }

    #[test]
    fn matches_on_event_and_zone_case_insensitively() {
        let a = file("nws/cap11/nws-blizzard-warning-MNZ020-021-2021-12-27.xml");
        let none = BTreeMap::new();
        let v = evaluate(
            &a,
            &[rule(&["blizzard warning"], &["mnz021"])],
            &none,
            before(&a),
        );
        assert_eq!(
            v,
            Verdict::Act {
                rule: 0,
                drill: false,
                targets: Targets::District
            }
        );
        // SAME county codes count as zones too.
        let v = evaluate(
            &a,
            &[rule(&["Blizzard Warning"], &["027075"])],
            &none,
            before(&a),
        );
        assert!(matches!(v, Verdict::Act { .. }));
        let v = evaluate(
            &a,
            &[rule(&["Blizzard Warning"], &["TXZ213"])],
            &none,
            before(&a),
        );
        assert_eq!(v, Verdict::Skip(Skip::NoZone { rule: "r".into() }));
        let v = evaluate(
            &a,
            &[rule(&["Winter Storm Warning"], &["MNZ021"])],
            &none,
            before(&a),
        );
        assert_eq!(v, Verdict::Skip(Skip::NoRule));
        // By SAME event code instead of name.
        let mut r = rule(&[], &["MNZ020"]);
        r.event_codes = vec!["BZW".into()];
        assert!(matches!(
            evaluate(&a, &[r], &none, before(&a)),
            Verdict::Act { .. }
        ));
    }

    #[test]
    fn thresholds() {
        let a = file("nws/cap11/nws-blizzard-warning-MNZ020-021-2021-12-27.xml");
        let none = BTreeMap::new();
        let mut r = rule(&["Blizzard Warning"], &["MNZ021"]);
        r.min_severity = Some(Severity::Severe);
        r.min_urgency = Some(Urgency::Expected);
        r.min_certainty = Some(Certainty::Likely);
        assert!(matches!(
            evaluate(&a, &[r.clone()], &none, before(&a)),
            Verdict::Act { .. }
        ));
        r.min_severity = Some(Severity::Extreme);
        assert!(matches!(
            evaluate(&a, &[r.clone()], &none, before(&a)),
            Verdict::Skip(Skip::BelowThreshold { ref why, .. }) if why.contains("severity Severe is below Extreme")
        ));
        r.min_severity = None;
        r.min_urgency = Some(Urgency::Immediate);
        assert!(matches!(
            evaluate(&a, &[r.clone()], &none, before(&a)),
            Verdict::Skip(Skip::BelowThreshold { .. })
        ));
        r.min_urgency = None;
        r.min_certainty = Some(Certainty::Observed);
        assert!(matches!(
            evaluate(&a, &[r], &none, before(&a)),
            Verdict::Skip(Skip::BelowThreshold { .. })
        ));
    }

    #[test]
    fn expired_alerts_do_nothing() {
        let a = file("nws/cap11/nws-blizzard-warning-MNZ020-021-2021-12-27.xml");
        let v = evaluate(
            &a,
            &[rule(&["Blizzard Warning"], &["MNZ021"])],
            &BTreeMap::new(),
            Timestamp::now(),
        );
        assert!(matches!(v, Verdict::Skip(Skip::Expired { .. })));
    }

    #[test]
    fn eas_test_codes_are_tests_whatever_the_status() {
        let a = file("ipaws/ipaws-required-monthly-test-PR-2019-05-30.xml");
        assert_eq!(a.status, Status::Actual);
        let zones = a.zones();
        let mut r = rule(&["Required Monthly Test"], &[zones[0].as_str()]);
        let v = evaluate(&a, &[r.clone()], &BTreeMap::new(), before(&a));
        assert_eq!(
            v,
            Verdict::Skip(Skip::Test {
                why: "EAS test code RMT".into(),
                rule: Some("r".into())
            })
        );
        r.test_as_drill = true;
        let v = evaluate(&a, &[r], &BTreeMap::new(), before(&a));
        assert!(matches!(v, Verdict::Act { drill: true, .. }));
    }

    #[test]
    fn test_and_exercise_status_do_nothing_unless_drilled() {
        let mut a = file("nws/cap11/nws-blizzard-warning-MNZ020-021-2021-12-27.xml");
        let mut r = rule(&["Blizzard Warning"], &["MNZ021"]);
        for s in [
            Status::Test,
            Status::Exercise,
            Status::System,
            Status::Draft,
        ] {
            a.status = s;
            assert!(
                matches!(
                    evaluate(&a, &[r.clone()], &BTreeMap::new(), before(&a)),
                    Verdict::Skip(Skip::Test { .. })
                ),
                "{s}"
            );
        }
        r.test_as_drill = true;
        a.status = Status::Exercise;
        assert!(matches!(
            evaluate(&a, &[r.clone()], &BTreeMap::new(), before(&a)),
            Verdict::Act { drill: true, .. }
        ));
        a.status = Status::Draft;
        assert!(matches!(
            evaluate(&a, &[r], &BTreeMap::new(), before(&a)),
            Verdict::Skip(Skip::Test { .. })
        ));
    }

    #[test]
    fn per_school_targeting_by_zone_and_by_location_in_a_real_nws_polygon() {
        let a = file("nws/cap11/nws-severe-thunderstorm-warning-IL-2012-03-15.xml");
        let mut schools = BTreeMap::new();
        // Jerseyville: inside the warning polygon.
        schools.insert(
            "jersey-high".to_string(),
            SchoolGeo {
                zones: vec![],
                location: Some([39.02, -90.66]),
            },
        );
        // Carrollton: outside it, and in another county.
        schools.insert(
            "carrollton-elem".to_string(),
            SchoolGeo {
                zones: vec!["ILC061".into()],
                location: Some([39.30, -90.41]),
            },
        );
        // No location, but in the warned county by its code.
        schools.insert(
            "county-office".to_string(),
            SchoolGeo {
                zones: vec!["ILC013".into()],
                location: None,
            },
        );
        // Not placed: not in a targeted audience.
        schools.insert("unplaced".to_string(), SchoolGeo::default());
        let r = rule(&["Severe Thunderstorm Warning"], &["ILC013", "ILC083"]);
        let v = evaluate(&a, std::slice::from_ref(&r), &schools, before(&a));
        assert_eq!(
            v,
            Verdict::Act {
                rule: 0,
                drill: false,
                targets: Targets::Schools(vec!["county-office".into(), "jersey-high".into()])
            }
        );
        schools.remove("jersey-high");
        schools.remove("county-office");
        let v = evaluate(&a, &[r], &schools, before(&a));
        assert_eq!(v, Verdict::Skip(Skip::NoSchool { rule: "r".into() }));
    }

    #[test]
    fn message_has_the_cap_fields() {
        let a =
            file("api-weather-gov/alerts-active-zone-ORZ004-flood-watch-update-2019-12-20.json");
        let mut r = rule(&["Flood Watch"], &["ORZ004"]);
        let text = render_message(&r, &a, "America/Los_Angeles").unwrap();
        assert!(
            text.starts_with("Flood Watch for North Oregon Coast;"),
            "{text}"
        );
        assert!(text.ends_with("until Sun Dec 22 10:00 AM PST."), "{text}");
        r.message = "{{ headline }} (from {{ onset }})".into();
        let text = render_message(&r, &a, "America/Los_Angeles").unwrap();
        assert_eq!(
            text,
            "Flood Watch issued December 20 at 1:34PM PST until December 22 at 10:00AM PST by NWS Portland OR (from Fri Dec 20 1:34 PM PST)"
        );
    }

    #[test]
    fn validation_names_each_key() {
        let mut issues = Issues::default();
        let mut r = rule(&[], &[]);
        r.playbook = "nope".into();
        r.message = "{{ oops".into();
        let mut schools = BTreeMap::new();
        schools.insert(
            "S1".to_string(),
            SchoolGeo {
                zones: vec![],
                location: Some([120.0, 0.0]),
            },
        );
        validate(&[r], &schools, &crate::playbook::builtin(), &mut issues);
        let keys: Vec<&str> = issues.list.iter().map(|i| i.key.as_str()).collect();
        assert!(keys.contains(&"rules[0].playbook"), "{keys:?}");
        assert!(keys.contains(&"rules[0].events"), "{keys:?}");
        assert!(keys.contains(&"rules[0].message"), "{keys:?}");
        assert!(keys.contains(&"schools.S1.location"), "{keys:?}");
    }
}
