//! Pre-flight checks of a new alert, made before anything is stored or
//! sent: the operator's words can reach every language the audience speaks
//! (or the answer says which get them untranslated), and the providers can
//! hand everything over before the notify deadline (or the answer says
//! what would).

use std::collections::BTreeMap;

use crate::deliver::engine::SlotCapacity;
use crate::domain::Channel;
use crate::domain::text::{MessageText, base_language};
use crate::playbook::PlaybookConfig;

use super::TriggerError;

/// Longest operator message, per language.
pub const MAX_MESSAGE: usize = 1000;

/// The operator's text, cleaned, with what was removed said.
pub struct Cleaned {
    pub text: Option<MessageText>,
    pub note: Option<String>,
}

/// Cleans and bounds the operator's text (each language's), and refuses a
/// message that a playbook cannot carry or that lacks a required language.
pub fn message(
    playbook: &str,
    pb: &PlaybookConfig,
    m: Option<MessageText>,
) -> Result<Cleaned, TriggerError> {
    let mut removed = 0;
    let mut clean_one = |lang: &str, t: &str| -> Result<String, TriggerError> {
        if t.chars().count() > MAX_MESSAGE {
            let which = if lang.is_empty() {
                String::new()
            } else {
                format!(" (`{lang}`)")
            };
            return Err(TriggerError::BadRequest(format!(
                "message{which} is longer than {MAX_MESSAGE} characters"
            )));
        }
        let (text, n) = crate::domain::text::clean(t);
        removed += n;
        Ok(text)
    };
    let text = match m {
        None => None,
        Some(MessageText::One(t)) => {
            let t = clean_one("", &t)?;
            (!t.is_empty()).then_some(MessageText::One(t))
        }
        Some(MessageText::PerLanguage(map)) => {
            let mut out = BTreeMap::new();
            for (lang, t) in map {
                let lang = lang.trim().to_string();
                if lang.is_empty() || !lang.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                    return Err(TriggerError::BadRequest(format!(
                        "message: `{lang}` is not a language tag (use \"en\", \"es\", \"zh-Hant\", …)"
                    )));
                }
                let t = clean_one(&lang, &t)?;
                if !t.is_empty() {
                    out.insert(lang, t);
                }
            }
            (!out.is_empty()).then_some(MessageText::PerLanguage(out))
        }
    };
    if !pb.message_languages.is_empty() {
        let missing: Vec<&str> = pb
            .message_languages
            .iter()
            .filter(|l| !text.as_ref().is_some_and(|t| t.covers(l)))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(TriggerError::BadRequest(format!(
                "playbook `{playbook}` needs the message in {}; missing: {} (send \"message\": {{\"en\": …, \"es\": …}})",
                pb.message_languages.join(", "),
                missing.join(", ")
            )));
        }
    }
    if text.is_some() {
        let deaf = pb.templates_without_message();
        if !deaf.is_empty() {
            return Err(TriggerError::BadRequest(format!(
                "playbook `{playbook}` cannot carry a message: its template(s) for {} do not include {{{{ message }}}}; add it to playbooks.{playbook}.messages or send without a message",
                deaf.join(", ")
            )));
        }
    }
    let note = (removed > 0).then(|| {
        format!("{removed} control or text-direction character(s) were removed from the message")
    });
    Ok(Cleaned { text, note })
}

/// The audience's languages that will get the operator's text in another
/// language (a fallback), most recipients first, with their counts.
pub fn untranslated(
    text: Option<&MessageText>,
    languages: &BTreeMap<String, usize>,
) -> Vec<(String, usize)> {
    let Some(text) = text else {
        return Vec::new();
    };
    let mut by_base: BTreeMap<String, usize> = BTreeMap::new();
    for (lang, n) in languages {
        let lang = if lang.trim().is_empty() { "en" } else { lang };
        if !text.covers(lang) {
            *by_base.entry(base_language(lang)).or_default() += n;
        }
    }
    let mut out: Vec<(String, usize)> = by_base.into_iter().collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

/// The capacity estimate for one alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Capacity {
    /// Seconds to hand every delivery over.
    pub seconds: f64,
    /// The channels that set it, and the providers they share.
    pub bottleneck: Vec<Channel>,
    pub providers: Vec<String>,
    /// Messages per second those providers give those channels (after retries).
    pub rate: f64,
    /// Deliveries on those channels.
    pub load: usize,
}

/// How long handing over `deliveries` takes on `slots`.
///
/// Channels that share a provider share its rate: the time is the largest,
/// over every set of channels, of their deliveries divided by the rate of
/// every provider serving any of them (the bound a perfect scheduler meets).
/// A provider's rate is discounted by the share of its requests that failed
/// transiently so far, since each failure is sent again.
pub fn capacity(slots: &[SlotCapacity], deliveries: &BTreeMap<Channel, usize>) -> Capacity {
    let used: Vec<Channel> = deliveries
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(c, _)| *c)
        .collect();
    let mut worst = Capacity {
        seconds: 0.0,
        bottleneck: vec![],
        providers: vec![],
        rate: 0.0,
        load: 0,
    };
    for mask in 1u32..(1 << used.len()) {
        let set: Vec<Channel> = used
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, c)| *c)
            .collect();
        let load: usize = set.iter().map(|c| deliveries[c]).sum();
        let serving: Vec<&SlotCapacity> = slots
            .iter()
            .filter(|s| s.channels.iter().any(|c| set.contains(c)))
            .collect();
        let rate: f64 = serving
            .iter()
            .map(|s| s.rate * (1.0 - s.transient_share.clamp(0.0, 0.9)))
            .sum();
        // No provider at all for a channel is the store's business (those
        // deliveries go elsewhere or fail); it does not make the time infinite.
        if rate <= 0.0 {
            continue;
        }
        let seconds = load as f64 / rate;
        if seconds > worst.seconds {
            worst = Capacity {
                seconds,
                bottleneck: set,
                providers: serving.iter().map(|s| s.name.clone()).collect(),
                rate,
                load,
            };
        }
    }
    worst
}

impl Capacity {
    /// What to say when `deadline_s` cannot be met; None when it can.
    pub fn advice(&self, deadline_s: f64) -> Option<String> {
        if self.seconds <= deadline_s || deadline_s <= 0.0 {
            return None;
        }
        let channels: Vec<&str> = self.bottleneck.iter().map(|c| c.as_str()).collect();
        let needed = self.load as f64 / deadline_s;
        let shared = if self.bottleneck.len() > 1 && self.providers.len() == 1 {
            format!(
                "{} share provider `{}`",
                channels.join(" and "),
                self.providers[0]
            )
        } else {
            format!(
                "{} go through {}",
                channels.join(" and "),
                self.providers.join(", ")
            )
        };
        Some(format!(
            "the notify deadline ({deadline_s:.0} s) cannot be met: {shared} at {:.0}/s, so {} messages take about {:.0} s. It needs {:.0}/s: add a provider for {} (another {:.0}/s), or raise the rate (more Twilio senders, a higher max_per_second)",
            self.rate,
            fmt_count(self.load),
            self.seconds,
            needed,
            channels.join(" or "),
            needed - self.rate
        ))
    }
}

fn fmt_count(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(name: &str, channels: &[Channel], rate: f64) -> SlotCapacity {
        SlotCapacity {
            name: name.into(),
            channels: channels.to_vec(),
            rate,
            limited: true,
            transient_share: 0.0,
        }
    }

    #[test]
    fn a_provider_shared_by_two_channels_shares_its_rate() {
        // The defect: one provider at 400/s for SMS and email was estimated
        // per channel (max of the two), 7.8 s, when it takes the sum.
        let slots = [slot("one", &[Channel::Sms, Channel::Email], 400.0)];
        let d = BTreeMap::from([(Channel::Sms, 3_100), (Channel::Email, 2_800)]);
        let c = capacity(&slots, &d);
        assert!((c.seconds - 5_900.0 / 400.0).abs() < 1e-9, "{c:?}");
        assert_eq!(c.bottleneck, vec![Channel::Sms, Channel::Email]);
        let advice = c.advice(10.0).expect("14.75 s misses 10 s");
        assert!(advice.contains("share provider `one`"), "{advice}");
        assert!(advice.contains("590/s"), "{advice}");
    }

    #[test]
    fn separate_providers_run_in_parallel_and_failures_cost_rate() {
        let mut sms = slot("twilio", &[Channel::Sms], 100.0);
        let mail = slot("smtp", &[Channel::Email], 1000.0);
        let d = BTreeMap::from([(Channel::Sms, 1000), (Channel::Email, 1000)]);
        let c = capacity(&[sms.clone(), mail.clone()], &d);
        assert!((c.seconds - 10.0).abs() < 1e-9);
        assert_eq!(c.bottleneck, vec![Channel::Sms]);
        assert!(c.advice(10.0).is_none());
        sms.transient_share = 0.5;
        let c = capacity(&[sms, mail], &d);
        assert!((c.seconds - 20.0).abs() < 1e-9, "{c:?}");
    }

    #[test]
    fn untranslated_languages_are_counted_by_base_language() {
        let langs = BTreeMap::from([
            ("en-US".to_string(), 10),
            ("es".to_string(), 4),
            ("es-MX".to_string(), 2),
            ("vi".to_string(), 1),
        ]);
        let one = MessageText::One("Buses are late".into());
        assert_eq!(
            untranslated(Some(&one), &langs),
            vec![("es".to_string(), 6), ("vi".to_string(), 1)]
        );
        let both = MessageText::PerLanguage(BTreeMap::from([
            ("en".to_string(), "Buses are late".to_string()),
            ("es".to_string(), "Los autobuses llegan tarde".to_string()),
        ]));
        assert_eq!(
            untranslated(Some(&both), &langs),
            vec![("vi".to_string(), 1)]
        );
        assert!(untranslated(None, &langs).is_empty());
    }
}
