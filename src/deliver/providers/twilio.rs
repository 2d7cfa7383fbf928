//! The `twilio` provider: SMS through the Messages resource and voice calls
//! with inline TwiML through the Calls resource of Twilio's 2010-04-01 REST
//! API, plus the `X-Twilio-Signature` check for Twilio's callbacks.
//!
//! One call of [`TwilioProvider::send`] is one HTTP request. Its outcome is
//! classified so the engine can decide: a bad number (21211, 21614, STOP…) is
//! permanent; throttling, server errors, network trouble and rejected
//! credentials are transient (the last because another provider may work).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha1::Sha1;

use crate::config::{Issues, Secret};
use crate::deliver::message::{Accepted, OutboundMessage, SendError};
use crate::deliver::providers::{ProviderContext, redact, retry_after, revalidate};
use crate::domain::Channel;
use crate::markup::escape;

/// Twilio error codes that say something about the sender or the account, not
/// the recipient: another provider may well succeed, so they are transient.
const PROVIDER_SIDE_CODES: &[u32] = &[
    20003, // authentication failed
    20005, // account not active
    20429, // too many requests
    21212, // invalid From number
    21606, // From number is not SMS-capable
    21659, // From is not a Twilio number
    30001, // queue overflow
    14107, // rate limit exceeded
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioConfig {
    pub name: String,
    pub channels: Vec<Channel>,
    #[serde(default)]
    pub max_per_second: Option<f64>,
    /// Base URL of the REST API; tests point it at a loopback server.
    #[serde(default = "default_api_base")]
    pub api_base: String,
    /// `AC` followed by 32 hex digits.
    pub account_sid: String,
    #[serde(default)]
    pub auth_token_env: Option<String>,
    #[serde(default)]
    pub auth_token_file: Option<PathBuf>,
    /// The previous (or next) auth token while Twilio rotates them; only used
    /// to verify callback signatures, never to send.
    #[serde(default)]
    pub secondary_auth_token_env: Option<String>,
    #[serde(default)]
    pub secondary_auth_token_file: Option<PathBuf>,
    /// A pool of E.164 sender numbers, used round-robin.
    #[serde(default)]
    pub from: Option<OneOrMany>,
    /// A Messaging Service picks the sender itself (SMS only).
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// Messages per second one sender number may send; US long codes manage
    /// about one.
    #[serde(default = "default_per_sender")]
    pub per_sender_per_second: f64,
    /// Voice per language tag, e.g. `{ es = "Polly.Lupe", "es-ES" = "Polly.Lucia" }`;
    /// merged over the built-in defaults.
    #[serde(default)]
    pub voice: BTreeMap<String, String>,
    /// Wait for the voicemail greeting to end before speaking, so an answering
    /// machine records the whole message.
    #[serde(default = "yes")]
    pub machine_detection: bool,
}

/// `from = "+1555…"` or `from = ["+1555…", …]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

fn default_api_base() -> String {
    "https://api.twilio.com".into()
}

fn default_per_sender() -> f64 {
    1.0
}

fn yes() -> bool {
    true
}

/// `+` and 8 to 15 digits, not starting with 0 (ITU-T E.164).
pub fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// Twilio SIDs: a two-letter prefix and 32 hex digits.
fn is_sid(s: &str, prefix: &str) -> bool {
    s.len() == 34 && s.starts_with(prefix) && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

impl TwilioConfig {
    /// Checks what can be checked without the environment; every problem is
    /// pushed with its key.
    pub fn validate(&self, prefix: &str, issues: &mut Issues) {
        if !is_sid(&self.account_sid, "AC") {
            issues.push(
                format!("{prefix}.account_sid"),
                "must be `AC` followed by 32 hex digits (34 characters), as shown in the Twilio console",
            );
        }
        if let Err(e) = reqwest::Url::parse(&self.api_base) {
            issues.push(format!("{prefix}.api_base"), format!("not a URL: {e}"));
        }
        let from = self.from.as_ref().map(OneOrMany::to_vec);
        for (i, n) in from.iter().flatten().enumerate() {
            if !is_e164(n) {
                issues.push(
                    format!("{prefix}.from[{i}]"),
                    format!("`{n}` is not an E.164 number like \"+15555550100\""),
                );
            }
        }
        match (&from, &self.messaging_service_sid) {
            (Some(_), Some(_)) => issues.push(
                format!("{prefix}.from"),
                "set either `from` or `messaging_service_sid`, not both",
            ),
            (None, None) => issues.push(
                format!("{prefix}.from"),
                "missing: set `from` (a list of E.164 numbers) or `messaging_service_sid`",
            ),
            (Some(list), None) => {
                if list.is_empty() {
                    issues.push(format!("{prefix}.from"), "the sender pool is empty");
                }
            }
            (None, Some(sid)) => {
                if !is_sid(sid, "MG") {
                    issues.push(
                        format!("{prefix}.messaging_service_sid"),
                        "must be `MG` followed by 32 hex digits",
                    );
                }
                if self.channels.contains(&Channel::Voice) {
                    issues.push(
                        format!("{prefix}.from"),
                        "voice calls need a caller id: set `from` or remove \"voice\" from `channels`",
                    );
                }
            }
        }
        if !(self.per_sender_per_second.is_finite() && self.per_sender_per_second > 0.0) {
            issues.push(
                format!("{prefix}.per_sender_per_second"),
                "must be a number above 0",
            );
        }
        for (lang, voice) in &self.voice {
            if voice.trim().is_empty() {
                issues.push(format!("{prefix}.voice.{lang}"), "empty voice name");
            }
        }
    }
}

/// Who the messages come from.
#[derive(Debug)]
enum Senders {
    Pool(Vec<String>),
    Service(String),
}

pub struct TwilioProvider {
    name: String,
    http: reqwest::Client,
    account_sid: String,
    token: Secret,
    secondary_token: Option<Secret>,
    messages_url: String,
    calls_url: String,
    public_url: String,
    senders: Senders,
    /// Round-robin position in the sender pool.
    next_sender: AtomicUsize,
    max_per_second: Option<f64>,
    per_sender_per_second: f64,
    /// Operator overrides; see [`voice_for`].
    voices: BTreeMap<String, String>,
    machine_detection: bool,
}

impl std::fmt::Debug for TwilioProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioProvider")
            .field("name", &self.name)
            .field("account_sid", &self.account_sid)
            .field("senders", &self.senders)
            .finish_non_exhaustive()
    }
}

impl TwilioProvider {
    pub fn build(
        prefix: &str,
        cfg: &TwilioConfig,
        ctx: &ProviderContext,
        issues: &mut Issues,
    ) -> Option<TwilioProvider> {
        let before = issues.list.len();
        let valid = revalidate(issues, |i| cfg.validate(prefix, i));
        let token = ctx.secret(
            prefix,
            "auth_token",
            cfg.auth_token_env.as_deref(),
            cfg.auth_token_file.as_ref(),
            true,
            issues,
        );
        let secondary_token = ctx.secret(
            prefix,
            "secondary_auth_token",
            cfg.secondary_auth_token_env.as_deref(),
            cfg.secondary_auth_token_file.as_ref(),
            false,
            issues,
        );
        if !valid || issues.list.len() > before {
            return None;
        }
        let token = token?;
        let senders = match (&cfg.from, &cfg.messaging_service_sid) {
            (Some(from), _) => Senders::Pool(from.to_vec()),
            (None, Some(sid)) => Senders::Service(sid.clone()),
            (None, None) => return None,
        };
        let base = cfg.api_base.trim_end_matches('/');
        let account = format!("{base}/2010-04-01/Accounts/{}", cfg.account_sid);
        Some(TwilioProvider {
            name: cfg.name.clone(),
            http: ctx.http.clone(),
            account_sid: cfg.account_sid.clone(),
            token,
            secondary_token,
            messages_url: format!("{account}/Messages.json"),
            calls_url: format!("{account}/Calls.json"),
            public_url: ctx.public_url.trim_end_matches('/').to_string(),
            senders,
            next_sender: AtomicUsize::new(0),
            max_per_second: cfg.max_per_second,
            per_sender_per_second: cfg.per_sender_per_second,
            voices: cfg.voice.clone(),
            machine_detection: cfg.machine_detection,
        })
    }

    /// Sender numbers in the pool, or `usize::MAX` for a Messaging Service
    /// (Twilio spreads the load itself, so only `max_per_second` limits it).
    pub fn sender_count(&self) -> usize {
        match &self.senders {
            Senders::Pool(p) => p.len(),
            Senders::Service(_) => usize::MAX,
        }
    }

    /// Messages per second this provider can take:
    /// min(`max_per_second`, senders × `per_sender_per_second`); `None` means
    /// no limit.
    pub fn effective_rate(&self) -> Option<f64> {
        let senders = match &self.senders {
            Senders::Pool(p) => Some(p.len() as f64 * self.per_sender_per_second),
            Senders::Service(_) => None,
        };
        match (self.max_per_second, senders) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The auth tokens a callback signature may be made with: the primary and,
    /// during a rotation, the secondary.
    pub fn callback_tokens(&self) -> Vec<&str> {
        std::iter::once(self.token.expose())
            .chain(self.secondary_token.as_ref().map(Secret::expose))
            .collect()
    }

    pub fn account_sid(&self) -> &str {
        &self.account_sid
    }

    /// The callback Twilio reports delivery states to, tagged with our delivery id.
    fn status_callback(&self, msg: &OutboundMessage) -> String {
        format!(
            "{}/hooks/twilio/status?d={}",
            self.public_url, msg.delivery_id
        )
    }

    fn next_from(&self, pool: &[String]) -> String {
        let i = self.next_sender.fetch_add(1, Ordering::Relaxed);
        // Build refuses an empty pool; `max(1)` keeps this total anyway.
        pool.get(i % pool.len().max(1)).cloned().unwrap_or_default()
    }

    pub async fn send(&self, msg: &OutboundMessage) -> Result<Accepted, SendError> {
        let (url, form) = match msg.channel {
            Channel::Sms => (&self.messages_url, self.sms_form(msg)),
            Channel::Voice => (&self.calls_url, self.call_form(msg)?),
            Channel::Email => {
                return Err(SendError::Permanent {
                    code: "unsupported-channel".into(),
                    reason: format!("provider `{}` does not send email", self.name),
                });
            }
        };
        tracing::debug!(provider = %self.name, delivery_id = msg.delivery_id, to = %msg.to, channel = %msg.channel, "Sending to Twilio.");
        let response = self
            .http
            .post(url.as_str())
            .basic_auth(&self.account_sid, Some(self.token.expose()))
            .form(&form)
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = response.status();
        let retry = retry_after(response.headers());
        let body = response.bytes().await.map_err(|e| transport_error(&e))?;
        redact(classify(status.as_u16(), retry, &body), &msg.to)
    }

    fn sms_form(&self, msg: &OutboundMessage) -> Vec<(&'static str, String)> {
        let mut form = vec![("To", msg.to.clone())];
        match &self.senders {
            Senders::Pool(pool) => form.push(("From", self.next_from(pool))),
            Senders::Service(sid) => form.push(("MessagingServiceSid", sid.clone())),
        }
        form.push(("Body", msg.body.clone()));
        form.push(("StatusCallback", self.status_callback(msg)));
        form
    }

    fn call_form(&self, msg: &OutboundMessage) -> Result<Vec<(&'static str, String)>, SendError> {
        let Senders::Pool(pool) = &self.senders else {
            // Config validation refuses voice without a pool; this is a guard.
            return Err(SendError::Transient {
                reason: format!("provider `{}` has no caller id for voice", self.name),
                retry_after: None,
            });
        };
        let action = format!(
            "{}/hooks/twilio/voice?d={}",
            self.public_url, msg.delivery_id
        );
        let mut form = vec![
            ("To", msg.to.clone()),
            ("From", self.next_from(pool)),
            ("Twiml", twiml(msg, &self.voices, &action)?),
            ("StatusCallback", self.status_callback(msg)),
        ];
        if self.machine_detection {
            form.push(("MachineDetection", "DetectMessageEnd".into()));
        }
        Ok(form)
    }
}

/// A reqwest failure (connect, time-out, connection closed) is always worth
/// another try, here or at the next provider.
fn transport_error(e: &reqwest::Error) -> SendError {
    let what = if e.is_timeout() {
        "time-out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    // The source chain says what actually happened ("connection closed before
    // message completed"); the top level only repeats the URL.
    let mut detail = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail.push(s.to_string());
        source = s.source();
    }
    let detail = if detail.is_empty() {
        e.to_string()
    } else {
        detail.join(": ")
    };
    SendError::Transient {
        reason: format!("twilio: {what}: {detail}"),
        retry_after: None,
    }
}

/// Twilio's error body (`{code, message, more_info, status}`).
#[derive(Debug, Deserialize)]
struct TwilioError {
    code: Option<u32>,
    message: Option<String>,
}

/// Turns Twilio's answer into the engine's terms.
pub fn classify(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<Accepted, SendError> {
    if (200..300).contains(&status) {
        #[derive(Deserialize)]
        struct Created {
            sid: Option<String>,
        }
        let sid = serde_json::from_slice::<Created>(body)
            .ok()
            .and_then(|c| c.sid);
        return Ok(Accepted {
            provider_message_id: sid,
        });
    }
    let err = serde_json::from_slice::<TwilioError>(body).ok();
    let code = err.as_ref().and_then(|e| e.code);
    let message = err
        .and_then(|e| e.message)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    let reason = match code {
        Some(c) => format!("twilio {status} (error {c}): {message}"),
        None => format!("twilio {status}: {message}"),
    };
    let transient = |reason| {
        Err(SendError::Transient {
            reason,
            retry_after,
        })
    };
    match status {
        429 => transient(reason),
        500..=599 => transient(reason),
        // Bad or suspended credentials: the provider is broken, not the address.
        401 | 403 => transient(reason),
        _ => match code {
            Some(c) if PROVIDER_SIDE_CODES.contains(&c) => transient(reason),
            Some(c) => Err(SendError::Permanent {
                code: c.to_string(),
                reason,
            }),
            None => Err(SendError::Permanent {
                code: format!("http-{status}"),
                reason,
            }),
        },
    }
}

/// Built-in voices: language subtag → (Twilio `language`, voice).
const DEFAULT_VOICES: &[(&str, &str, &str)] = &[
    ("en", "en-US", "Polly.Joanna"),
    ("es", "es-US", "Polly.Lupe"),
    ("fr", "fr-FR", "Polly.Lea"),
    ("pt", "pt-BR", "Polly.Camila"),
    ("de", "de-DE", "Polly.Vicki"),
    ("it", "it-IT", "Polly.Bianca"),
    ("zh", "cmn-CN", "Polly.Zhiyu"),
    ("ko", "ko-KR", "Polly.Seoyeon"),
    ("ja", "ja-JP", "Polly.Mizuki"),
    ("ar", "arb", "Polly.Zeina"),
    ("ru", "ru-RU", "Polly.Tatyana"),
    ("vi", "vi-VN", "Google.vi-VN-Standard-A"),
    ("hi", "hi-IN", "Polly.Aditi"),
];

/// The `<Say>` attributes for a recipient's language: an operator override by
/// full tag, then by primary subtag, then the built-in table, then English.
pub fn voice_for(language: &str, overrides: &BTreeMap<String, String>) -> (String, String) {
    let tag = language.trim();
    let primary = tag
        .split(['-', '_'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let builtin = DEFAULT_VOICES
        .iter()
        .find(|(l, _, _)| *l == primary)
        .unwrap_or(&DEFAULT_VOICES[0]);
    // A tag with a region ("es-MX") is already a Twilio language code.
    let lang_code = if tag.contains('-') && builtin.0 == primary {
        tag.to_string()
    } else {
        builtin.1.to_string()
    };
    let find = |k: &str| {
        overrides
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    match find(tag).or_else(|| find(&primary)) {
        Some(voice) => (lang_code, voice),
        None => (builtin.1.to_string(), builtin.2.to_string()),
    }
}

/// "Press 1 to confirm" in the recipient's language (English when we have no
/// translation).
fn press_one(language: &str) -> &'static str {
    match language.split(['-', '_']).next().unwrap_or("") {
        "es" => "Para confirmar que recibió este mensaje, oprima 1.",
        "fr" => "Pour confirmer la réception de ce message, appuyez sur 1.",
        "pt" => "Para confirmar que recebeu esta mensagem, pressione 1.",
        "vi" => "Để xác nhận bạn đã nhận được tin nhắn này, xin bấm phím 1.",
        "zh" => "如果您已收到此消息，请按1确认。",
        _ => "To confirm you received this message, press 1.",
    }
}

/// Twilio refuses inline TwiML longer than this (error 32018).
pub const TWIML_MAX_CHARS: usize = 4000;

/// The TwiML of an alert call: the message twice (people miss the start of a
/// call), then a one-digit `<Gather>` whose action records the confirmation.
/// A long message is repeated with `loop="2"` instead of being written twice,
/// so it fits Twilio's 4,000-character limit; a message too long even for
/// that is refused as permanent (no retry can shorten it).
pub fn twiml(
    msg: &OutboundMessage,
    voices: &BTreeMap<String, String>,
    action: &str,
) -> Result<String, SendError> {
    let (language, voice) = voice_for(&msg.language, voices);
    let speech = if msg.subject.is_empty() || msg.speech.starts_with(msg.subject.as_str()) {
        msg.speech.clone()
    } else {
        format!("{}. {}", msg.subject.trim_end_matches('.'), msg.speech)
    };
    let attrs = format!(
        r#"language="{}" voice="{}""#,
        escape(&language),
        escape(&voice)
    );
    let speech = escape(&speech);
    let gather = format!(
        r#"<Gather numDigits="1" timeout="10" method="POST" action="{}"><Say {attrs}>{}</Say></Gather>"#,
        escape(action),
        escape(press_one(&msg.language))
    );
    let head = r#"<?xml version="1.0" encoding="UTF-8"?><Response>"#;
    let twice = format!(
        r#"{head}<Say {attrs}>{speech}</Say><Pause length="1"/><Say {attrs}>{speech}</Say>{gather}</Response>"#
    );
    if twice.chars().count() <= TWIML_MAX_CHARS {
        return Ok(twice);
    }
    let looped = format!(r#"{head}<Say {attrs} loop="2">{speech}</Say>{gather}</Response>"#);
    if looped.chars().count() <= TWIML_MAX_CHARS {
        return Ok(looped);
    }
    Err(SendError::Permanent {
        code: "twiml-too-long".into(),
        reason: format!(
            "the call script is {} characters; Twilio accepts {TWIML_MAX_CHARS}: shorten the voice text",
            looped.chars().count()
        ),
    })
}

/// Checks an `X-Twilio-Signature`: base64(HMAC-SHA1(token, url + each POST
/// parameter's name and value, sorted by name)). Any of `tokens` may match, so
/// callbacks keep verifying while an auth token is rotated. Constant-time.
pub fn verify_signature(
    tokens: &[&str],
    url: &str,
    params: &[(String, String)],
    signature_b64: &str,
) -> bool {
    let Ok(expected) = base64::prelude::BASE64_STANDARD.decode(signature_b64.trim()) else {
        return false;
    };
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    tokens.iter().filter(|t| !t.is_empty()).any(|token| {
        let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(token.as_bytes()) else {
            return false;
        };
        mac.update(url.as_bytes());
        for (name, value) in &sorted {
            mac.update(name.as_bytes());
            mac.update(value.as_bytes());
        }
        mac.verify_slice(&expected).is_ok()
    })
}

/// Signs like Twilio does; for tests and loopback tools that play Twilio.
pub fn sign(token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = match Hmac::<Sha1>::new_from_slice(token.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    base64::prelude::BASE64_STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// The example from Twilio's request-validation documentation
    /// (twilio-php `docs/usage/validation.rst`).
    fn documented() -> (&'static str, Vec<(String, String)>) {
        (
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            p(&[
                ("CallSid", "CA1234567890ABCDE"),
                ("Caller", "+14158675309"),
                ("Digits", "1234"),
                ("From", "+14158675309"),
                ("To", "+18005551212"),
            ]),
        )
    }

    #[test]
    fn twilio_documented_signature_verifies() {
        let (url, params) = documented();
        assert!(verify_signature(
            &["12345"],
            url,
            &params,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        assert_eq!(sign("12345", url, &params), "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
        // Order of the parameters as received does not matter.
        let mut reversed = params.clone();
        reversed.reverse();
        assert!(verify_signature(
            &["12345"],
            url,
            &reversed,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
    }

    #[test]
    fn tampered_param_or_url_fails() {
        let (url, mut params) = documented();
        params[2].1 = "1".into();
        assert!(!verify_signature(
            &["12345"],
            url,
            &params,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        let (_, params) = documented();
        assert!(!verify_signature(
            &["12345"],
            "https://mycompany.com/myapp.php?foo=1&bar=3",
            &params,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        assert!(!verify_signature(&["12345"], url, &params, "not base64!"));
        assert!(!verify_signature(&["12345"], url, &params, ""));
    }

    #[test]
    fn wrong_token_fails_and_rotation_token_passes() {
        let (url, params) = documented();
        let sig = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
        assert!(!verify_signature(&["54321"], url, &params, sig));
        assert!(!verify_signature(&[], url, &params, sig));
        assert!(!verify_signature(&[""], url, &params, sig));
        assert!(verify_signature(&["new-token", "12345"], url, &params, sig));
    }

    #[test]
    fn e164_and_sids() {
        assert!(is_e164("+15555550100"));
        assert!(is_e164("+447911123456"));
        assert!(!is_e164("15555550100"));
        assert!(!is_e164("+0555550100"));
        assert!(!is_e164("+1555"));
        assert!(!is_e164("+1555555010012345"));
        assert!(!is_e164("+1 555 555 0100"));
        assert!(is_sid("AC0123456789abcdef0123456789abcdef", "AC"));
        assert!(!is_sid("AC0123456789abcdef0123456789abcde", "AC"));
        assert!(!is_sid("MG0123456789abcdef0123456789abcdef", "AC"));
        assert!(!is_sid("AC0123456789abcdef0123456789abcdeg", "AC"));
    }

    #[test]
    fn classification() {
        let perm = |status, body: &str| match classify(status, None, body.as_bytes()) {
            Err(SendError::Permanent { code, .. }) => code,
            other => panic!("expected permanent, got {other:?}"),
        };
        let transient = |status, body: &str| {
            matches!(
                classify(status, None, body.as_bytes()),
                Err(SendError::Transient { .. })
            )
        };
        for code in [21211, 21614, 21610, 21612, 21408, 13224] {
            let body = format!(r#"{{"code":{code},"message":"x","more_info":"","status":400}}"#);
            assert_eq!(perm(400, &body), code.to_string());
        }
        assert_eq!(perm(404, "not json"), "http-404");
        assert!(transient(429, ""));
        assert!(transient(500, ""));
        assert!(transient(503, "<html>"));
        assert!(transient(401, r#"{"code":20003,"message":"Authenticate"}"#));
        assert!(transient(403, ""));
        assert!(transient(400, r#"{"code":21212,"message":"Invalid From"}"#));
        match classify(429, Some(Duration::from_secs(7)), b"") {
            Err(SendError::Transient { retry_after, .. }) => {
                assert_eq!(retry_after, Some(Duration::from_secs(7)))
            }
            other => panic!("{other:?}"),
        }
        let ok = classify(201, None, br#"{"sid":"SM123"}"#).unwrap();
        assert_eq!(ok.provider_message_id.as_deref(), Some("SM123"));
    }

    #[test]
    fn voices_follow_language_with_overrides() {
        let none = BTreeMap::new();
        assert_eq!(
            voice_for("en", &none),
            ("en-US".into(), "Polly.Joanna".into())
        );
        assert_eq!(
            voice_for("es", &none),
            ("es-US".into(), "Polly.Lupe".into())
        );
        assert_eq!(
            voice_for("xx", &none),
            ("en-US".into(), "Polly.Joanna".into())
        );
        let mut o = BTreeMap::new();
        o.insert("es-ES".to_string(), "Polly.Lucia".to_string());
        o.insert("vi".to_string(), "Google.vi-VN-Wavenet-A".to_string());
        assert_eq!(
            voice_for("es-ES", &o),
            ("es-ES".into(), "Polly.Lucia".into())
        );
        assert_eq!(
            voice_for("es-MX", &o),
            ("es-US".into(), "Polly.Lupe".into())
        );
        assert_eq!(
            voice_for("vi", &o),
            ("vi-VN".into(), "Google.vi-VN-Wavenet-A".into())
        );
    }

    #[test]
    fn twiml_escapes_and_repeats() {
        let msg = OutboundMessage {
            delivery_id: 7,
            alert_id: 1,
            channel: Channel::Voice,
            to: "+15555550123".into(),
            language: "es".into(),
            subject: "Cierre".into(),
            body: String::new(),
            html: None,
            ack_url: String::new(),
            speech: "Escuela <cerrada> & \"hoy\"".into(),
            severity: crate::playbook::Severity::Emergency,
            bounce_tag: None,
        };
        let x = twiml(
            &msg,
            &BTreeMap::new(),
            "https://h/hooks/twilio/voice?d=7&x=1",
        )
        .unwrap();
        assert_eq!(
            x.matches("Cierre. Escuela &lt;cerrada&gt; &amp; &quot;hoy&quot;")
                .count(),
            2
        );
        assert!(
            x.contains(r#"action="https://h/hooks/twilio/voice?d=7&amp;x=1""#),
            "{x}"
        );
        assert!(x.contains("oprima 1"));
        assert!(x.contains(r#"language="es-US" voice="Polly.Lupe""#));
        assert!(!x.contains("<cerrada>"));
    }

    #[test]
    fn long_speech_loops_then_is_refused() {
        let mut msg = OutboundMessage {
            delivery_id: 7,
            alert_id: 1,
            channel: Channel::Voice,
            to: "+15555550123".into(),
            language: "en".into(),
            subject: String::new(),
            body: String::new(),
            html: None,
            ack_url: String::new(),
            speech: "word ".repeat(500),
            severity: crate::playbook::Severity::Emergency,
            bounce_tag: None,
        };
        let x = twiml(&msg, &BTreeMap::new(), "https://h/v").unwrap();
        assert!(x.contains(r#"loop="2""#), "{x}");
        assert_eq!(x.matches("word ").count(), 500, "spoken text written once");
        assert!(x.chars().count() <= TWIML_MAX_CHARS);
        msg.speech = "word ".repeat(900);
        match twiml(&msg, &BTreeMap::new(), "https://h/v") {
            Err(SendError::Permanent { code, .. }) => assert_eq!(code, "twiml-too-long"),
            other => panic!("{other:?}"),
        }
        msg.speech = "short".into();
        assert!(
            !twiml(&msg, &BTreeMap::new(), "https://h/v")
                .unwrap()
                .contains("loop")
        );
    }
}
