//! Escaping text into HTML and XML (pages, email bodies, TwiML): one
//! function, so every place that writes markup escapes the same way.

/// Escapes `&<>"'` for element content and attribute values in HTML and XML
/// alike; control characters XML 1.0 forbids become spaces.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_markup_and_drops_control_characters() {
        assert_eq!(
            super::escape("<a href=\"x\">Tom & 'Jerry'</a>\u{7}"),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt; "
        );
    }
}
