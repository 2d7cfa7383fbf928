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

#[cfg(test)]
mod tests {
    #[test]
    fn controls_and_bidi_overrides_are_removed() {
        let (t, n) = super::clean("Go to\u{0} the \u{1b}[31mnorth\u{7} gate\u{202E}etag\nnow");
        assert_eq!(t, "Go to the [31mnorth gateetag now");
        assert_eq!(n, 4);
        assert_eq!(super::clean("Escuela García").0, "Escuela García");
    }
}
