//! Operator and feed text on its way to families: control characters (NUL,
//! BEL, ESC…) and bidirectional overrides (U+202E and friends, which can make
//! a link read backwards) are removed; line breaks become spaces.

/// The cleaned text and how many characters were removed.
pub fn clean(s: &str) -> (String, usize) {
    let mut out = String::with_capacity(s.len());
    let mut removed = 0;
    for c in s.chars() {
        match c {
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control() => removed += 1,
            '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{061C}' => removed += 1,
            c => out.push(c),
        }
    }
    (out.trim().to_string(), removed)
}

/// The operator's words: one text, or one per language (`{"en": …, "es": …}`).
/// One text is taken to be English: families in other languages get it
/// untranslated, and the trigger's answer says so.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum MessageText {
    One(String),
    PerLanguage(std::collections::BTreeMap<String, String>),
}

/// The language a single (not per-language) text is taken to be in.
pub const DEFAULT_LANGUAGE: &str = "en";

/// The base of a language tag: `es` for `es-MX`, lowercase.
pub fn base_language(tag: &str) -> String {
    tag.split(['-', '_'])
        .next()
        .unwrap_or(tag)
        .trim()
        .to_ascii_lowercase()
}

impl MessageText {
    /// The text for `language`: its own, its base language's, else the
    /// default language's, else any.
    pub fn for_language(&self, language: &str) -> &str {
        match self {
            MessageText::One(t) => t,
            MessageText::PerLanguage(m) => pick(m, language).unwrap_or_default(),
        }
    }

    /// Whether `language` gets text written in it (not a fallback).
    pub fn covers(&self, language: &str) -> bool {
        let base = base_language(language);
        match self {
            MessageText::One(_) => base == DEFAULT_LANGUAGE,
            MessageText::PerLanguage(m) => m
                .keys()
                .any(|k| k.eq_ignore_ascii_case(language) || base_language(k) == base),
        }
    }

    /// The languages written, as given.
    pub fn languages(&self) -> Vec<String> {
        match self {
            MessageText::One(_) => vec![DEFAULT_LANGUAGE.to_string()],
            MessageText::PerLanguage(m) => m.keys().cloned().collect(),
        }
    }

    /// The text shown where one text is wanted (status, dashboard): the
    /// default language's, else the first.
    pub fn primary(&self) -> &str {
        self.for_language(DEFAULT_LANGUAGE)
    }
}

/// The entry of `m` for `language`: exact tag, then base language, then the
/// default language, then the first entry.
pub fn pick<'a>(
    m: &'a std::collections::BTreeMap<String, String>,
    language: &str,
) -> Option<&'a str> {
    let base = base_language(language);
    m.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(language))
        .or_else(|| m.iter().find(|(k, _)| base_language(k) == base))
        .or_else(|| m.iter().find(|(k, _)| base_language(k) == DEFAULT_LANGUAGE))
        .or_else(|| m.iter().next())
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    #[test]
    fn controls_and_bidi_overrides_are_removed() {
        let (t, n) = super::clean("Go to\u{0} the \u{1b}[31mnorth\u{7} gate\u{202E}etag\nnow");
        assert_eq!(t, "Go to the [31mnorth gateetag now");
        assert_eq!(n, 4);
        assert_eq!(super::clean("Escuela García").0, "Escuela García");
    }

    #[test]
    fn per_language_text_falls_back_to_base_then_english() {
        let m = super::MessageText::PerLanguage(
            [("en", "Go home"), ("es-MX", "Vaya a casa")]
                .into_iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        );
        assert_eq!(m.for_language("es"), "Vaya a casa");
        assert_eq!(m.for_language("ES-mx"), "Vaya a casa");
        assert_eq!(m.for_language("vi"), "Go home");
        assert!(m.covers("es-US"));
        assert!(!m.covers("vi"));
        let one = super::MessageText::One("Go home".into());
        assert!(one.covers("en-US"));
        assert!(!one.covers("es"));
    }
}

/// Lower-case hex of `bytes`: how digests and random ids are stored. A
/// table lookup, not `format!` per byte: the token hash of every recipient
/// is written on the store's one writer thread.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

#[cfg(test)]
mod hex_tests {
    #[test]
    fn hex_is_lower_case_two_digits_a_byte() {
        assert_eq!(super::hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(super::hex(&[]), "");
    }
}
