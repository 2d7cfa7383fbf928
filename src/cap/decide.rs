//! What klaxon does with one CAP message, given what the store knows about
//! it and the messages it references. Pure, so `klaxon cap inspect` and the
//! daemon (feeds, webhook, drop folder) give the same answer.

use crate::domain::text::{MessageText, base_language};
use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Serialize;

use super::rules::{self, Follow, RuleConfig, SchoolGeo, Skip, Targets, Verdict};
use super::{CapAlert, MsgType};
use crate::store::cap::{PENDING, Seen};

/// What the store knows. Empty when there is no store (inspect before the
/// daemon ever ran).
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// This very message, if seen before.
    pub seen: Option<Seen>,
    /// The referenced messages klaxon has seen, each with whether the alert
    /// it started went out.
    pub referenced: Vec<(Seen, bool)>,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Start an alert.
    Create {
        rule: String,
        playbook: String,
        drill: bool,
        hold: bool,
        targets: Targets,
        message: MessageText,
        /// The earlier message this one updates (for `on_update = "notify"`).
        refers_to: Option<i64>,
    },
    /// Send the rescinding notice for the alert a Cancel references.
    Rescind {
        rule: String,
        original_alert: i64,
        refers_to: i64,
        text: MessageText,
    },
    /// Stored, nothing sent (an ignored Update or Cancel).
    Record {
        refers_to: Option<i64>,
        cancels: bool,
        why: String,
        /// A held alert (never sent) started by the cancelled message: it is
        /// withdrawn, so nobody approves a closure for a cancelled warning.
        withdraw: Option<i64>,
    },
    /// Seen before: handled once.
    AlreadyHandled {
        outcome: String,
        alert_id: Option<i64>,
    },
    Skip(Skip),
}

impl Action {
    /// One sentence for operators.
    pub fn describe(&self) -> String {
        match self {
            Action::Create {
                playbook,
                drill,
                hold,
                targets,
                ..
            } => {
                let who = match targets {
                    Targets::District => "the whole district".to_string(),
                    Targets::Schools(s) => format!("{} school(s): {}", s.len(), s.join(", ")),
                };
                format!(
                    "would start a {}`{playbook}` alert for {who}{}",
                    if *drill { "DRILL " } else { "" },
                    if *hold {
                        ", held for approval (`klaxon approve ID`)"
                    } else {
                        ", sent at once"
                    }
                )
            }
            Action::Rescind { original_alert, .. } => {
                format!("would send a rescinding notice to the people of alert {original_alert}")
            }
            Action::Record { why, .. } => format!("recorded, nothing sent: {why}"),
            Action::AlreadyHandled { outcome, alert_id } => match alert_id {
                Some(id) => format!("already handled ({outcome}, alert {id}); nothing more"),
                None => format!("already handled ({outcome}); nothing more"),
            },
            Action::Skip(s) => s.describe(),
        }
    }
}

/// The rule an earlier message acted under, by name.
fn rule_named<'a>(rules: &'a [RuleConfig], name: Option<&str>) -> Option<&'a RuleConfig> {
    name.and_then(|n| rules.iter().find(|r| r.name == n))
}

/// Decides for `alert` at `now`.
pub fn decide(
    alert: &CapAlert,
    known: &Known,
    rules: &[RuleConfig],
    schools: &BTreeMap<String, SchoolGeo>,
    tz: &str,
    now: Timestamp,
) -> Action {
    if let Some(seen) = known.seen.as_ref().filter(|s| s.outcome != PENDING) {
        return Action::AlreadyHandled {
            outcome: seen.outcome.clone(),
            alert_id: seen.alert_id,
        };
    }
    // The earlier message klaxon acted on, if this one refers to one.
    let acted = known
        .referenced
        .iter()
        .find(|(s, _)| s.alert_id.is_some() && s.msg_type != "Cancel");
    match alert.msg_type {
        MsgType::Cancel => {
            let Some(&(ref orig, went_out)) = acted else {
                return Action::Record {
                    refers_to: known.referenced.first().map(|(s, _)| s.id),
                    cancels: true,
                    why: "cancels an alert klaxon did not act on".into(),
                    withdraw: None,
                };
            };
            let original_alert = orig.alert_id.unwrap_or_default();
            if !went_out {
                return Action::Record {
                    refers_to: Some(orig.id),
                    cancels: true,
                    why: format!(
                        "alert {original_alert} never went out; it is withdrawn and nothing is sent"
                    ),
                    withdraw: Some(original_alert),
                };
            }
            match rule_named(rules, orig.rule.as_deref()) {
                Some(rule) if rule.on_cancel == Follow::Notify => Action::Rescind {
                    rule: rule.name.clone(),
                    original_alert,
                    refers_to: orig.id,
                    text: rescind_text(alert),
                },
                _ => Action::Record {
                    refers_to: Some(orig.id),
                    cancels: true,
                    why: format!(
                        "cancellation of alert {original_alert} recorded (on_cancel = \"ignore\")"
                    ),
                    withdraw: None,
                },
            }
        }
        MsgType::Update if acted.is_some() => {
            let (orig, _) = acted.expect("checked");
            let notify = rule_named(rules, orig.rule.as_deref())
                .is_some_and(|r| r.on_update == Follow::Notify);
            if !notify {
                return Action::Record {
                    refers_to: Some(orig.id),
                    cancels: false,
                    withdraw: None,
                    why: format!(
                        "update of alert {} recorded (on_update = \"ignore\")",
                        orig.alert_id.unwrap_or_default()
                    ),
                };
            }
            create(alert, rules, schools, tz, now, Some(orig.id))
        }
        _ => create(alert, rules, schools, tz, now, None),
    }
}

fn create(
    alert: &CapAlert,
    rules: &[RuleConfig],
    schools: &BTreeMap<String, SchoolGeo>,
    tz: &str,
    now: Timestamp,
    refers_to: Option<i64>,
) -> Action {
    match rules::evaluate(alert, rules, schools, now) {
        Verdict::Act {
            rule,
            drill,
            targets,
        } => {
            let r = &rules[rule];
            let message = rules::render_messages(r, alert, tz).unwrap_or_else(|_| {
                MessageText::One(
                    rules::primary_info(alert)
                        .map(|i| i.event.clone())
                        .unwrap_or_default(),
                )
            });
            Action::Create {
                rule: r.name.clone(),
                playbook: r.playbook.clone(),
                drill,
                hold: r.approval == rules::Approval::Manual,
                targets,
                message,
                refers_to,
            }
        }
        Verdict::Skip(s) => Action::Skip(s),
    }
}

/// The rescinding notice, in English and in each language the Cancel
/// carries an `<info>` for that klaxon has words for.
fn rescind_text(cancel: &CapAlert) -> MessageText {
    let sentence = |lang: &str, event: Option<&str>| match (lang, event) {
        ("es", Some(e)) => Some(format!(
            "La autoridad emisora canceló: {e}. El aviso anterior ya no aplica."
        )),
        ("es", None) => {
            Some("La autoridad emisora canceló la alerta anterior; ya no aplica.".to_string())
        }
        ("en", Some(e)) => Some(format!(
            "The {e} is cancelled by the issuing authority; the earlier notice no longer applies."
        )),
        ("en", None) => Some(
            "The earlier alert is cancelled by the issuing authority; it no longer applies."
                .to_string(),
        ),
        _ => None,
    };
    let mut out = std::collections::BTreeMap::new();
    let primary = rules::primary_info(cancel).map(|i| i.event.as_str());
    out.insert(
        "en".to_string(),
        sentence("en", primary).unwrap_or_default(),
    );
    for info in &cancel.infos {
        let lang = base_language(&info.language);
        if !out.contains_key(&lang)
            && let Some(t) = sentence(&lang, Some(info.event.as_str()))
        {
            out.insert(lang, t);
        }
    }
    if out.len() == 1 {
        return MessageText::One(out.into_values().next().unwrap_or_default());
    }
    MessageText::PerLanguage(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cap::rules::{Approval, DEFAULT_MESSAGE};
    use crate::cap::{Reference, parse_document};

    fn update_doc() -> CapAlert {
        let path = format!(
            "{}/../shared/data/cap/oasis-examples/cap12-appendix-A3-earthquake-update-references.xml",
            env!("CARGO_MANIFEST_DIR")
        );
        parse_document(&std::fs::read(path).unwrap())
            .unwrap()
            .alerts
            .remove(0)
    }

    fn rule(on_update: Follow, on_cancel: Follow) -> RuleConfig {
        RuleConfig {
            name: "quake".into(),
            events: vec!["Earthquake".into()],
            event_codes: vec![],
            zones: vec![],
            min_severity: None,
            min_urgency: None,
            min_certainty: None,
            playbook: "shelter".into(),
            approval: Approval::Auto,
            on_update,
            on_cancel,
            test_as_drill: false,
            message: DEFAULT_MESSAGE.into(),
            messages: BTreeMap::new(),
        }
    }

    fn seen(id: i64, msg_type: &str, outcome: &str, alert_id: Option<i64>) -> Seen {
        Seen {
            id,
            msg_type: msg_type.into(),
            source: "feed:x".into(),
            received_at: 0,
            outcome: outcome.into(),
            detail: None,
            rule: Some("quake".into()),
            alert_id,
            cancelled_at: None,
        }
    }

    fn run(alert: &CapAlert, known: &Known, r: RuleConfig) -> Action {
        decide(alert, known, &[r], &BTreeMap::new(), "UTC", alert.sent)
    }

    #[test]
    fn an_update_of_an_alert_acted_on_sends_only_when_the_rule_says_notify() {
        let a = update_doc();
        let known = Known {
            seen: None,
            referenced: vec![(seen(7, "Alert", "sent", Some(41)), true)],
        };
        assert!(matches!(
            run(&a, &known, rule(Follow::Ignore, Follow::Ignore)),
            Action::Record {
                refers_to: Some(7),
                cancels: false,
                ..
            }
        ));
        assert!(matches!(
            run(&a, &known, rule(Follow::Notify, Follow::Ignore)),
            Action::Create {
                refers_to: Some(7),
                ..
            }
        ));
        // An update of something never acted on is judged as a new alert.
        assert!(matches!(
            run(&a, &Known::default(), rule(Follow::Ignore, Follow::Ignore)),
            Action::Create {
                refers_to: None,
                ..
            }
        ));
    }

    #[test]
    fn a_cancel_rescinds_only_when_notify_and_the_original_went_out() {
        let mut c = update_doc();
        c.msg_type = MsgType::Cancel;
        c.references = vec![Reference {
            sender: "s".into(),
            identifier: "i".into(),
            sent: c.sent,
        }];
        let out = Known {
            seen: None,
            referenced: vec![(seen(7, "Alert", "sent", Some(41)), true)],
        };
        assert!(matches!(
            run(&c, &out, rule(Follow::Ignore, Follow::Notify)),
            Action::Rescind {
                original_alert: 41,
                refers_to: 7,
                ..
            }
        ));
        assert!(matches!(
            run(&c, &out, rule(Follow::Ignore, Follow::Ignore)),
            Action::Record {
                refers_to: Some(7),
                cancels: true,
                ..
            }
        ));
        let held = Known {
            seen: None,
            referenced: vec![(seen(7, "Alert", "held", Some(41)), false)],
        };
        assert!(matches!(
            run(&c, &held, rule(Follow::Ignore, Follow::Notify)),
            Action::Record { cancels: true, withdraw: Some(41), ref why, .. } if why.contains("never went out")
        ));
    }

    #[test]
    fn a_message_seen_before_is_handled_once_unless_its_claim_was_left_pending() {
        let a = update_doc();
        let again = Known {
            seen: Some(seen(9, "Update", "sent", Some(50))),
            referenced: vec![],
        };
        assert_eq!(
            run(&a, &again, rule(Follow::Notify, Follow::Notify)),
            Action::AlreadyHandled {
                outcome: "sent".into(),
                alert_id: Some(50)
            }
        );
        let pending = Known {
            seen: Some(seen(9, "Update", PENDING, None)),
            referenced: vec![],
        };
        assert!(matches!(
            run(&a, &pending, rule(Follow::Notify, Follow::Notify)),
            Action::Create { .. }
        ));
    }
}
