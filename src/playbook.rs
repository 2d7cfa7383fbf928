//! Playbooks: what kind of alert this is, who it goes to by default, on which
//! channels, how fast, and what it says in each language. Built-in playbooks
//! cover the usual school events; `[playbooks.NAME]` overrides or adds.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::{Dur, Issues};
use crate::domain::{Channel, Role};

/// How urgent an alert is; decides its place in the send queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Emergency,
    Urgent,
    Routine,
}

impl Severity {
    /// Lower sorts first in the outbox.
    pub fn priority(self) -> i64 {
        match self {
            Severity::Emergency => 0,
            Severity::Urgent => 1,
            Severity::Routine => 2,
        }
    }
}

/// One pickup or response option offered on the acknowledgement page.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Choice {
    /// Stable key recorded with the acknowledgement, e.g. "pickup-self".
    pub key: String,
    /// Label per language; "en" is required.
    pub label: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaybookConfig {
    /// Human title, e.g. "Lockdown".
    pub title: String,
    pub severity: Severity,
    /// Channels used for every recipient that has them.
    pub channels: Vec<Channel>,
    /// Roles targeted when the trigger does not name any.
    #[serde(default = "default_roles")]
    pub roles: Vec<Role>,
    /// Every recipient must be handed to a provider within this time.
    #[serde(default = "default_notify")]
    pub notify_within: Dur,
    /// Recipients who have not confirmed by then are escalated.
    #[serde(default = "default_ack")]
    pub ack_within: Dur,
    /// Channel used to escalate unconfirmed recipients (usually "voice").
    #[serde(default)]
    pub escalate: Option<Channel>,
    /// The escalation stage's own window after the ack deadline: escalation
    /// calls are retried and failed over until then.
    #[serde(default = "default_escalate_within")]
    pub escalate_within: Dur,
    /// When someone has no usable address on the escalation channel (none,
    /// or it proved undeliverable), escalate on their next channel instead.
    #[serde(default = "yes")]
    pub escalate_next_channel: bool,
    /// Whether recipients are asked to confirm. All-clears and updates ask
    /// for nothing unless their playbook says so.
    #[serde(default = "yes")]
    pub confirm: bool,
    /// Choices offered on the acknowledgement page; empty means a single
    /// "I have received this" confirmation.
    #[serde(default)]
    pub choices: Vec<Choice>,
    /// Message text per language, a minijinja template. Variables: `school`,
    /// `students` (names), `link`, `title`, `drill` (bool), `message` (the
    /// operator's text, if any).
    pub messages: BTreeMap<String, String>,
    /// Languages the operator's message must be written in: a trigger whose
    /// `message` lacks one of them is refused. Empty: any text is accepted
    /// (the answer names the languages that get it untranslated).
    #[serde(default)]
    pub message_languages: Vec<String>,
    /// `"two-person"`: an alert waits, held, until a second operator (not
    /// the one who triggered it) approves it, or the first sends it at once
    /// with a typed reason (an emergency override, put up for review).
    #[serde(default)]
    pub approval: Approval,
    /// "21:00-07:00": while one of this routine playbook's alerts waits for
    /// approval, approvers are not paged in these hours (this playbook's own
    /// `[approval] quiet_hours`). Only routine playbooks: emergencies and
    /// urgent alerts always page.
    #[serde(default)]
    pub quiet_hours: Option<String>,
}

/// How many people it takes to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Approval {
    #[default]
    OnePerson,
    TwoPerson,
}

fn default_roles() -> Vec<Role> {
    vec![Role::Guardian, Role::Staff]
}

fn default_notify() -> Dur {
    Dur::secs(120)
}

fn default_ack() -> Dur {
    Dur::secs(15 * 60)
}

fn default_escalate_within() -> Dur {
    Dur::secs(10 * 60)
}

fn yes() -> bool {
    true
}

impl PlaybookConfig {
    /// Languages whose template never shows the operator's `message`: a
    /// message given to this playbook would not reach them.
    pub fn templates_without_message(&self) -> Vec<String> {
        let env = minijinja::Environment::new();
        self.messages
            .iter()
            .filter(|(_, text)| {
                env.template_from_str(text)
                    .map(|t| !t.undeclared_variables(false).contains("message"))
                    .unwrap_or(false)
            })
            .map(|(lang, _)| lang.clone())
            .collect()
    }

    pub fn validate(&self, prefix: &str, issues: &mut Issues) {
        if self.channels.is_empty() {
            issues.push(
                format!("{prefix}.channels"),
                "must list at least one channel",
            );
        }
        if !self.messages.contains_key("en") {
            issues.push(
                format!("{prefix}.messages"),
                "needs an \"en\" message, the fallback for every language",
            );
        }
        let env = minijinja::Environment::new();
        for (lang, text) in &self.messages {
            if let Err(e) = env.template_from_str(text) {
                issues.push(
                    format!("{prefix}.messages.{lang}"),
                    format!("template does not parse: {e}"),
                );
            }
        }
        for (i, c) in self.choices.iter().enumerate() {
            if !c.label.contains_key("en") {
                issues.push(
                    format!("{prefix}.choices[{i}].label"),
                    "needs an \"en\" label",
                );
            }
            if self.choices[..i].iter().any(|o| o.key == c.key) {
                issues.push(
                    format!("{prefix}.choices[{i}].key"),
                    format!("duplicate choice `{}`", c.key),
                );
            }
        }
        if let Some(q) = &self.quiet_hours {
            if let Err(e) = crate::trigger::pager::Window::parse(q) {
                issues.push(format!("{prefix}.quiet_hours"), e);
            } else if self.severity != Severity::Routine {
                issues.push(
                    format!("{prefix}.quiet_hours"),
                    "only a routine playbook has quiet hours: emergencies and urgent alerts always page the approvers",
                );
            }
        }
        if self.notify_within.0.is_zero() {
            issues.push(
                format!("{prefix}.notify_within"),
                "must be longer than zero",
            );
        }
    }

    /// Templates whose SMS, rendered with long but plausible values and a
    /// real-length link, take more than `budget` segments: (language,
    /// segments). Such texts are shortened at send time.
    pub fn sms_over_budget(&self, public_url: &str, budget: u32) -> Vec<(String, usize)> {
        let env = minijinja::Environment::new();
        let link = format!("{public_url}/a/{}", "A".repeat(27));
        let mut out = Vec::new();
        for (lang, text) in &self.messages {
            let Ok(t) = env.template_from_str(text) else {
                continue;
            };
            let Ok(body) = t.render(minijinja::context! {
                school => "Lincoln-Roosevelt International Elementary School",
                students => "Alexandria Montgomery and Christopher Washington",
                link => link, title => self.title, drill => true, message => "",
            }) else {
                continue;
            };
            let body = body.split_whitespace().collect::<Vec<_>>().join(" ");
            let n = crate::deliver::sms::segments(&body).segments;
            if n > budget as usize {
                out.push((lang.clone(), n));
            }
        }
        out
    }

    /// Channels tried in order when escalating someone.
    pub fn escalation_order(&self) -> Vec<Channel> {
        let Some(first) = self.escalate else {
            return Vec::new();
        };
        let mut v = vec![first];
        if self.escalate_next_channel {
            v.extend(
                [Channel::Voice, Channel::Sms, Channel::Email]
                    .into_iter()
                    .filter(|c| *c != first),
            );
        }
        v
    }

    /// Languages whose template has no drill marker of its own (`{% if
    /// drill %}`): klaxon marks drills on every channel anyway, but the
    /// operator's wording is then not the one used.
    pub fn templates_without_drill_marker(&self) -> Vec<String> {
        self.messages
            .iter()
            .filter(|(_, t)| !t.contains("drill"))
            .map(|(l, _)| l.clone())
            .collect()
    }

    /// The message template for a language, falling back to its base language
    /// ("es-MX" → "es") and then to English.
    pub fn message_for(&self, language: &str) -> &str {
        let base = language.split(['-', '_']).next().unwrap_or(language);
        self.messages
            .get(language)
            .or_else(|| self.messages.get(base))
            .or_else(|| self.messages.get("en"))
            .map(String::as_str)
            .unwrap_or("")
    }
}

fn choice(key: &str, en: &str, es: &str) -> Choice {
    Choice {
        key: key.into(),
        label: BTreeMap::from([("en".into(), en.into()), ("es".into(), es.into())]),
    }
}

fn messages(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(l, t)| (l.to_string(), t.to_string()))
        .collect()
}

/// The playbooks every install has, so a fresh install can act at once.
pub fn builtin() -> BTreeMap<String, PlaybookConfig> {
    let all = vec![Channel::Sms, Channel::Voice, Channel::Email];
    let text_mail = vec![Channel::Sms, Channel::Email];
    let mut m = BTreeMap::new();
    m.insert(
        "lockdown".into(),
        PlaybookConfig {
            title: "Lockdown".into(),
            severity: Severity::Emergency,
            channels: text_mail.clone(),
            roles: default_roles(),
            notify_within: Dur::secs(120),
            ack_within: Dur::secs(15 * 60),
            escalate: Some(Channel::Voice),
            escalate_within: default_escalate_within(),
            escalate_next_channel: true,
            confirm: true,
            choices: vec![],
            messages: messages(&[
                ("en", "{% if drill %}DRILL - {% endif %}LOCKDOWN at {{ school }}. Students are safe inside. Do not come to the school. {{ message }} Confirm: {{ link }}"),
                ("es", "{% if drill %}SIMULACRO - {% endif %}CIERRE DE EMERGENCIA en {{ school }}. Estudiantes seguros adentro. No venga a la escuela. {{ message }} Confirme: {{ link }}"),
                ("vi", "{% if drill %}DIỄN TẬP - {% endif %}PHONG TỎA tại {{ school }}. Học sinh an toàn bên trong. Đừng đến trường. {{ message }} Xác nhận: {{ link }}"),
                ("zh", "{% if drill %}演习 - {% endif %}{{ school }}封锁。学生在室内安全。请勿前往学校。{{ message }} 确认：{{ link }}"),
            ]),
            message_languages: Vec::new(),
            approval: Approval::OnePerson,
            quiet_hours: None,
        },
    );
    m.insert(
        "shelter".into(),
        PlaybookConfig {
            title: "Shelter in place".into(),
            severity: Severity::Emergency,
            channels: text_mail.clone(),
            roles: default_roles(),
            notify_within: Dur::secs(120),
            ack_within: Dur::secs(15 * 60),
            escalate: Some(Channel::Voice),
            escalate_within: default_escalate_within(),
            escalate_next_channel: true,
            confirm: true,
            choices: vec![],
            messages: messages(&[
                ("en", "{% if drill %}DRILL - {% endif %}SHELTER IN PLACE at {{ school }}. Everyone is staying indoors. {{ message }} Confirm: {{ link }}"),
                ("es", "{% if drill %}SIMULACRO - {% endif %}REFUGIO EN EL LUGAR en {{ school }}. Todos permanecen adentro. {{ message }} Confirme: {{ link }}"),
            ]),
            message_languages: Vec::new(),
            approval: Approval::OnePerson,
            quiet_hours: None,
        },
    );
    m.insert(
        "evacuation".into(),
        PlaybookConfig {
            title: "Evacuation".into(),
            severity: Severity::Emergency,
            channels: all.clone(),
            roles: default_roles(),
            notify_within: Dur::secs(120),
            ack_within: Dur::secs(15 * 60),
            escalate: Some(Channel::Voice),
            escalate_within: default_escalate_within(),
            escalate_next_channel: true,
            confirm: true,
            choices: vec![],
            messages: messages(&[
                ("en", "{% if drill %}DRILL - {% endif %}EVACUATION of {{ school }}. Students are moving to the relocation site. {{ message }} Confirm: {{ link }}"),
                ("es", "{% if drill %}SIMULACRO - {% endif %}EVACUACIÓN de {{ school }}. Los estudiantes se trasladan al sitio de reubicación. {{ message }} Confirme: {{ link }}"),
            ]),
            message_languages: Vec::new(),
            approval: Approval::OnePerson,
            quiet_hours: None,
        },
    );
    m.insert(
        "early-dismissal".into(),
        PlaybookConfig {
            title: "Early dismissal".into(),
            severity: Severity::Urgent,
            channels: text_mail.clone(),
            roles: vec![Role::Guardian],
            notify_within: Dur::secs(300),
            ack_within: Dur::secs(45 * 60),
            escalate: Some(Channel::Voice),
            escalate_within: default_escalate_within(),
            escalate_next_channel: true,
            confirm: true,
            choices: vec![
                choice("pickup-self", "I will pick up my child", "Recogeré a mi hijo"),
                choice("pickup-other", "Someone on my pickup list will come", "Vendrá alguien de mi lista autorizada"),
                choice("bus", "Send my child home on the bus", "Envíe a mi hijo a casa en el autobús"),
                choice("walk", "My child may walk home", "Mi hijo puede caminar a casa"),
            ],
            messages: messages(&[
                ("en", "{% if drill %}DRILL - {% endif %}EARLY DISMISSAL at {{ school }} today. {{ message }} Tell us how {{ students }} will get home: {{ link }}"),
                ("es", "{% if drill %}SIMULACRO - {% endif %}SALIDA ANTICIPADA hoy en {{ school }}. {{ message }} Díganos cómo llegará a casa {{ students }}: {{ link }}"),
            ]),
            message_languages: Vec::new(),
            approval: Approval::OnePerson,
            quiet_hours: None,
        },
    );
    m.insert(
        "weather-closure".into(),
        PlaybookConfig {
            title: "Weather closure".into(),
            severity: Severity::Urgent,
            channels: text_mail.clone(),
            roles: default_roles(),
            notify_within: Dur::secs(600),
            ack_within: Dur::secs(2 * 3600),
            escalate: None,
            escalate_within: default_escalate_within(),
            escalate_next_channel: true,
            confirm: true,
            choices: vec![],
            messages: messages(&[
                ("en", "{% if drill %}DRILL - {% endif %}{{ school }} is CLOSED due to weather. {{ message }} Confirm: {{ link }}"),
                ("es", "{% if drill %}SIMULACRO - {% endif %}{{ school }} está CERRADA por el clima. {{ message }} Confirme: {{ link }}"),
            ]),
            message_languages: Vec::new(),
            approval: Approval::OnePerson,
            quiet_hours: None,
        },
    );
    m.insert(
        "all-clear".into(),
        PlaybookConfig {
            title: "All clear".into(),
            severity: Severity::Emergency,
            channels: text_mail.clone(),
            roles: default_roles(),
            notify_within: Dur::secs(120),
            ack_within: Dur::secs(15 * 60),
            escalate: None,
            escalate_within: default_escalate_within(),
            escalate_next_channel: true,
            confirm: false,
            choices: vec![],
            messages: messages(&[
                ("en", "{% if drill %}DRILL - {% endif %}ALL CLEAR at {{ school }}. The situation is over. {{ message }} Details: {{ link }}"),
                ("es", "{% if drill %}SIMULACRO - {% endif %}TODO DESPEJADO en {{ school }}. La situación terminó. {{ message }} Detalles: {{ link }}"),
            ]),
            message_languages: Vec::new(),
            approval: Approval::OnePerson,
            quiet_hours: None,
        },
    );
    m.insert(
        "update".into(),
        PlaybookConfig {
            title: "Update".into(),
            severity: Severity::Emergency,
            channels: text_mail,
            roles: default_roles(),
            notify_within: Dur::secs(120),
            ack_within: Dur::secs(15 * 60),
            escalate: None,
            escalate_within: default_escalate_within(),
            escalate_next_channel: true,
            confirm: false,
            choices: vec![],
            messages: messages(&[
                ("en", "{% if drill %}DRILL - {% endif %}UPDATE: {{ title }} at {{ school }}. {{ message }} Details: {{ link }}"),
                ("es", "{% if drill %}SIMULACRO - {% endif %}ACTUALIZACIÓN: {{ title }} en {{ school }}. {{ message }} Detalles: {{ link }}"),
            ]),
            message_languages: Vec::new(),
            approval: Approval::OnePerson,
            quiet_hours: None,
        },
    );
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_playbooks_validate() {
        for (name, pb) in builtin() {
            let mut issues = Issues::default();
            pb.validate(&name, &mut issues);
            assert!(issues.is_empty(), "{name}: {:?}", issues.list);
        }
    }

    #[test]
    fn quiet_hours_are_a_window_and_only_for_routine_playbooks() {
        let mut pb = builtin()["weather-closure"].clone();
        pb.severity = Severity::Routine;
        pb.quiet_hours = Some("21:00-07:00".into());
        let mut issues = Issues::default();
        pb.validate("playbooks.weather-closure", &mut issues);
        assert!(issues.is_empty(), "{:?}", issues.list);
        pb.quiet_hours = Some("9pm-7am".into());
        pb.validate("playbooks.weather-closure", &mut issues);
        pb.quiet_hours = Some("21:00-07:00".into());
        pb.severity = Severity::Emergency;
        pb.validate("playbooks.weather-closure", &mut issues);
        let keys: Vec<String> = issues.list.iter().map(|i| i.key.clone()).collect();
        assert_eq!(keys.len(), 2, "{:?}", issues.list);
        assert!(
            keys.iter()
                .all(|k| k == "playbooks.weather-closure.quiet_hours")
        );
    }

    #[test]
    fn language_falls_back_to_base_then_english() {
        let pb = &builtin()["lockdown"];
        assert!(pb.message_for("es-MX").contains("CIERRE"));
        assert!(pb.message_for("fr").contains("LOCKDOWN"));
    }
}
