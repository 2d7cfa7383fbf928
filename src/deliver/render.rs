//! Turns a claimed delivery into the message a provider sends: the playbook's
//! template in the recipient's language, with their children's names and
//! their own acknowledgement link.

use std::collections::BTreeMap;

use minijinja::{Environment, context};

use crate::audience::StudentRef;
use crate::deliver::message::OutboundMessage;
use crate::deliver::sms;
use crate::domain::{AckKey, AckToken, Channel, RecipientId};
use crate::playbook::PlaybookConfig;
use crate::store::deliveries::Claimed;

pub struct Renderer {
    env: Environment<'static>,
    playbooks: BTreeMap<String, PlaybookConfig>,
    public_url: String,
    /// Most SMS segments one text may take, link included.
    sms_max_segments: usize,
    /// Acknowledgement links are derived from this key and the recipient id.
    key: AckKey,
}

impl Renderer {
    pub fn new(
        playbooks: &BTreeMap<String, PlaybookConfig>,
        public_url: &str,
        sms_max_segments: u32,
        key: AckKey,
    ) -> Renderer {
        let mut env = Environment::new();
        // Message templates are plain text: no HTML escaping, and a missing
        // variable renders empty rather than failing an alert.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        for (name, pb) in playbooks {
            for (lang, text) in &pb.messages {
                // Validated at start-up by `PlaybookConfig::validate`; a
                // template that still fails is skipped and falls back to English.
                let _ = env.add_template_owned(format!("{name}:{lang}"), text.clone());
            }
        }
        Renderer {
            env,
            playbooks: playbooks.clone(),
            public_url: public_url.to_string(),
            sms_max_segments: sms_max_segments.max(1) as usize,
            key,
        }
    }

    pub fn ack_url(&self, recipient: RecipientId) -> String {
        format!(
            "{}/a/{}",
            self.public_url,
            AckToken::derive(&self.key, recipient).as_str()
        )
    }

    /// The alert's own words for the acknowledgement page: the message
    /// template in the recipient's language, without the link, drill marked.
    #[allow(clippy::too_many_arguments)]
    pub fn page_text(
        &self,
        playbook: &str,
        language: &str,
        place: &str,
        title: &str,
        message: Option<&str>,
        students: &str,
        drill: bool,
    ) -> String {
        let Ok(tmpl) = self
            .env
            .get_template(&self.template_name(playbook, language))
        else {
            return message.unwrap_or_default().to_string();
        };
        let text = tmpl
            .render(context! {
                school => place, students => students, link => "", title => title,
                drill => drill, message => message.unwrap_or_default(),
            })
            .map(|t| speech_text(&squeeze(&t)))
            .unwrap_or_default();
        mark_drill(text, drill, language)
    }

    /// The template key for a playbook and language, with the same fallback as
    /// `PlaybookConfig::message_for`.
    fn template_name(&self, playbook: &str, language: &str) -> String {
        let Some(pb) = self.playbooks.get(playbook) else {
            return format!("{playbook}:en");
        };
        let base = language.split(['-', '_']).next().unwrap_or(language);
        for lang in [language, base] {
            if pb.messages.contains_key(lang) {
                return format!("{playbook}:{lang}");
            }
        }
        format!("{playbook}:en")
    }

    pub fn render(&self, c: &Claimed) -> Result<OutboundMessage, String> {
        let students: Vec<StudentRef> = serde_json::from_str(&c.students_json).unwrap_or_default();
        let names = join_names(students.iter().map(|s| s.name.as_str()).collect());
        let link = self.ack_url(RecipientId(c.recipient_id));
        let tmpl = self
            .env
            .get_template(&self.template_name(&c.playbook, &c.language))
            .map_err(|e| format!("no template for playbook `{}`: {e}", c.playbook))?;
        let vars = |link: &str| {
            context! {
                school => c.place,
                students => names,
                link => link,
                title => c.title,
                drill => c.drill,
                message => c.message.clone().unwrap_or_default(),
            }
        };
        let mut body = squeeze(&tmpl.render(vars(&link)).map_err(|e| e.to_string())?);
        if c.channel == Channel::Sms && sms::segments(&body).segments > self.sms_max_segments {
            // Over budget: first drop the optional details, then cut the
            // text before the link. The link always survives whole.
            let lean = context! {
                school => c.place, students => "", link => link, title => c.title,
                drill => c.drill, message => "",
            };
            let shorter = squeeze(&tmpl.render(lean).map_err(|e| e.to_string())?);
            body = fit_sms(&shorter, &link, self.sms_max_segments);
        }
        // Every channel marks a drill, whatever the template says.
        if c.channel == Channel::Sms {
            let marked = mark_drill(body.clone(), c.drill, &c.language);
            if marked != body {
                body = fit_sms(&marked, &link, self.sms_max_segments);
            }
        } else {
            body = mark_drill(body, c.drill, &c.language);
        }
        // Only what the channel uses is rendered: this runs once per message.
        let speech = if c.channel == Channel::Voice {
            mark_drill(
                speech_text(&squeeze(&tmpl.render(vars("")).map_err(|e| e.to_string())?)),
                c.drill,
                &c.language,
            )
        } else {
            String::new()
        };
        let subject = format!(
            "{}{}: {}",
            if c.drill { "[DRILL] " } else { "" },
            c.title,
            c.place
        );
        Ok(OutboundMessage {
            delivery_id: c.id,
            alert_id: c.alert_id,
            channel: c.channel,
            to: c.address.clone(),
            language: c.language.clone(),
            subject,
            body,
            // Email providers build the HTML part from the text (one place, localised).
            html: None,
            ack_url: link,
            speech,
            severity: self
                .playbooks
                .get(&c.playbook)
                .map_or(crate::playbook::Severity::Emergency, |p| p.severity),
            bounce_tag: (c.channel == Channel::Email)
                .then(|| crate::deliver::bounce::tag(&self.key, c.id)),
        })
    }
}

/// Cuts `text` so that it fits `budget` SMS segments, keeping `link` whole
/// at the end and marking the cut with an ellipsis.
pub fn fit_sms(text: &str, link: &str, budget: usize) -> String {
    if sms::segments(text).segments <= budget {
        return text.to_string();
    }
    let before = text.replace(link, "");
    let before = before.trim_end().trim_end_matches(':').trim_end();
    let chars: Vec<char> = before.chars().collect();
    let fits = |n: usize| {
        let s: String = chars[..n].iter().collect();
        sms::segments(&format!("{}… {link}", s.trim_end())).segments <= budget
    };
    // The longest prefix that fits (fits is monotonic in n).
    let (mut lo, mut hi) = (0usize, chars.len());
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(mid) { lo = mid } else { hi = mid - 1 }
    }
    let s: String = chars[..lo].iter().collect();
    format!("{}… {link}", s.trim_end())
}

/// The word that marks a drill, per language (English fallback).
pub fn drill_word(language: &str) -> &'static str {
    match language.split(['-', '_']).next().unwrap_or("") {
        "es" => "SIMULACRO",
        "vi" => "DIỄN TẬP",
        "zh" => "演习",
        "ar" => "تمرين",
        _ => "DRILL",
    }
}

/// Puts the drill word first unless the text already starts with it.
pub fn mark_drill(text: String, drill: bool, language: &str) -> String {
    let word = drill_word(language);
    if !drill || text.starts_with(word) {
        return text;
    }
    format!("{word} - {text}")
}

/// "Ana", "Ana and Ben", "Ana, Ben and Cy".
fn join_names(names: Vec<&str>) -> String {
    match names.as_slice() {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// Collapses the runs of spaces an empty template variable leaves behind.
fn squeeze(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// A voice call cannot follow a link: drop the trailing "Confirm:" that
/// introduced it; the call asks to press 1 instead.
fn speech_text(s: &str) -> String {
    let t = s.trim_end();
    if t.ends_with(':')
        && let Some(cut) = t.rfind(['.', '!', '。'])
    {
        return t[..=cut].to_string();
    }
    t.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeeze_leaves_single_spaces_between_words() {
        assert_eq!(
            squeeze("  Lincoln \n\t  Elementary:  "),
            "Lincoln Elementary:"
        );
        assert_eq!(squeeze(""), "");
        assert_eq!(squeeze("one"), "one");
    }

    fn claimed(lang: &str, students: &str) -> Claimed {
        Claimed {
            id: 7,
            alert_id: 1,
            recipient_id: 3,
            channel: Channel::Sms,
            address: "+15555550123".into(),
            attempts: 0,
            last_provider: None,
            playbook: "lockdown".into(),
            title: "Lockdown".into(),
            place: "Lincoln Elementary".into(),
            message: None,
            drill: true,
            released_at: None,
            retry_until: None,
            language: lang.into(),
            students_json: students.into(),
            escalation: false,
            priority: 0,
        }
    }

    #[test]
    fn renders_language_link_and_drill_marker() {
        let key = AckKey::from_bytes([1; 32]);
        let r = Renderer::new(
            &crate::playbook::builtin(),
            "https://alerts.example.org",
            3,
            key.clone(),
        );
        let m = r.render(&claimed("es-MX", "[]")).unwrap();
        assert!(m.body.starts_with("SIMULACRO"), "{}", m.body);
        assert!(m.body.contains("Lincoln Elementary"));
        let token = AckToken::derive(&key, RecipientId(3));
        assert!(
            m.body
                .ends_with(&format!("https://alerts.example.org/a/{}", token.as_str())),
            "{}",
            m.body
        );
        let mut call = claimed("es-MX", "[]");
        call.channel = Channel::Voice;
        let v = r.render(&call).unwrap();
        assert!(
            v.speech.starts_with("SIMULACRO") && !v.speech.contains("http"),
            "{}",
            v.speech
        );
        assert!(m.subject.starts_with("[DRILL] Lockdown"));
    }

    #[test]
    fn drills_are_marked_on_every_channel_even_without_a_template_marker() {
        let mut pbs = crate::playbook::builtin();
        let pb = pbs.get_mut("lockdown").unwrap();
        pb.messages = BTreeMap::from([(
            "en".to_string(),
            "LOCKDOWN at {{ school }}. Confirm: {{ link }}".to_string(),
        )]);
        assert_eq!(pb.templates_without_drill_marker(), vec!["en".to_string()]);
        let r = Renderer::new(
            &pbs,
            "https://a.example.org",
            3,
            AckKey::from_bytes([1; 32]),
        );
        let mut c = claimed("en", "[]");
        let sms = r.render(&c).unwrap();
        assert!(sms.body.starts_with("DRILL - LOCKDOWN"), "{}", sms.body);
        c.channel = Channel::Voice;
        assert!(r.render(&c).unwrap().speech.starts_with("DRILL - "));
        c.channel = Channel::Email;
        let mail = r.render(&c).unwrap();
        assert!(mail.subject.starts_with("[DRILL]") && mail.body.starts_with("DRILL"));
        c.drill = false;
        c.channel = Channel::Sms;
        assert!(r.render(&c).unwrap().body.starts_with("LOCKDOWN"));
    }

    #[test]
    fn sms_over_budget_is_cut_before_the_link() {
        let link = "https://alerts.example.org/a/AAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let long = format!("{} Confirm: {link}", "Lockdown at the school. ".repeat(30));
        let cut = fit_sms(&long, link, 1);
        assert!(cut.ends_with(link), "{cut}");
        assert!(cut.contains('…'));
        assert_eq!(sms::segments(&cut).segments, 1, "{cut}");
        // Vietnamese is UCS-2: 70 units for one segment.
        let vi = format!("{} Xác nhận: {link}", "Phong tỏa tại trường. ".repeat(10));
        let cut = fit_sms(&vi, link, 2);
        assert!(
            cut.ends_with(link) && sms::segments(&cut).segments <= 2,
            "{cut}"
        );
        let short = format!("Short. {link}");
        assert_eq!(fit_sms(&short, link, 1), short);
    }

    #[test]
    fn names_children_in_order() {
        assert_eq!(join_names(vec!["Ana", "Ben", "Cy"]), "Ana, Ben and Cy");
        assert_eq!(join_names(vec!["Ana"]), "Ana");
    }
}
