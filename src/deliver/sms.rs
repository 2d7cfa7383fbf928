//! SMS length arithmetic: which encoding a text needs and how many segments
//! (billed messages) it takes, so the engine can keep an alert within
//! `delivery.sms_max_segments` before it is sent.
//!
//! A text that fits the GSM 03.38 default alphabet (plus its extension table)
//! goes out as GSM-7: 160 septets in one message, 153 per part when
//! concatenated (the user data header takes 7). Anything else forces UCS-2 for
//! the whole message: 70 UTF-16 code units, 67 per part. One character outside
//! the alphabet (an `á`, a curly quote, an emoji) more than doubles the cost,
//! which is why templates are worth checking here.

/// How the text must be encoded on the air interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// GSM 03.38 7-bit default alphabet with its extension table.
    Gsm7,
    /// UCS-2 (UTF-16 code units; characters outside the BMP take two).
    Ucs2,
}

/// The size of one SMS text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmsLength {
    pub encoding: Encoding,
    /// Septets for GSM-7 (extension characters count two), UTF-16 code units for UCS-2.
    pub units: usize,
    /// Messages the text is split into; an empty text still costs one.
    pub segments: usize,
}

/// Characters of the GSM 03.38 default alphabet (one septet each), in table order.
const GSM7_BASIC: &str = concat!(
    "@£$¥èéùìòÇ\nØø\rÅå",
    "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ", // 0x1B (escape) is not a character of its own
    " !\"#¤%&'()*+,-./",
    "0123456789:;<=>?",
    "¡ABCDEFGHIJKLMNO",
    "PQRSTUVWXYZÄÖÑÜ§",
    "¿abcdefghijklmno",
    "pqrstuvwxyzäöñüà",
);

/// Characters reached through the escape code (two septets each).
const GSM7_EXTENSION: &str = "\u{000C}^{}\\[~]|€";

/// Septets one character takes in GSM-7, or `None` if it is not in the alphabet.
fn gsm7_cost(c: char) -> Option<usize> {
    // ASCII by table: this runs for every character of every text sent, and
    // searching the alphabet strings was a quarter of rendering an SMS.
    if c.is_ascii() {
        return match ASCII_COST[c as usize] {
            0 => None,
            n => Some(n as usize),
        };
    }
    if GSM7_BASIC.contains(c) {
        Some(1)
    } else if GSM7_EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// GSM-7 septets of each ASCII character (0: not in the alphabet), built
/// from the two alphabet strings at compile time.
const ASCII_COST: [u8; 128] = {
    let mut t = [0u8; 128];
    let (basic, ext) = (GSM7_BASIC.as_bytes(), GSM7_EXTENSION.as_bytes());
    let mut i = 0;
    while i < ext.len() {
        if ext[i] < 128 {
            t[ext[i] as usize] = 2;
        }
        i += 1;
    }
    i = 0;
    while i < basic.len() {
        if basic[i] < 128 {
            t[basic[i] as usize] = 1;
        }
        i += 1;
    }
    t
};

/// Measures `text` as an SMS.
pub fn segments(text: &str) -> SmsLength {
    let gsm: Option<Vec<usize>> = text.chars().map(gsm7_cost).collect();
    let (encoding, costs, single, multi) = match gsm {
        Some(costs) => (Encoding::Gsm7, costs, 160, 153),
        None => (
            Encoding::Ucs2,
            text.chars().map(char::len_utf16).collect(),
            70,
            67,
        ),
    };
    let units: usize = costs.iter().sum();
    let segments = if units <= single {
        1
    } else {
        // Pack greedily: an escape pair or a surrogate pair is never split
        // across two parts, so a part can hold one unit less than the limit.
        let mut parts = 1;
        let mut used = 0;
        for cost in costs {
            if used + cost > multi {
                parts += 1;
                used = 0;
            }
            used += cost;
        }
        parts
    };
    SmsLength {
        encoding,
        units,
        segments,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ascii_table_agrees_with_the_alphabet_strings() {
        for b in 0u8..128 {
            let c = b as char;
            let by_search = if GSM7_BASIC.contains(c) {
                Some(1)
            } else if GSM7_EXTENSION.contains(c) {
                Some(2)
            } else {
                None
            };
            assert_eq!(gsm7_cost(c), by_search, "{b:#04x}");
        }
        assert_eq!(gsm7_cost('€'), Some(2));
        assert_eq!(gsm7_cost('é'), Some(1));
        assert_eq!(gsm7_cost('á'), None);
    }

    #[test]
    fn the_basic_table_has_all_127_characters() {
        // 128 code points minus the escape code.
        assert_eq!(GSM7_BASIC.chars().count(), 127);
        assert_eq!(GSM7_EXTENSION.chars().count(), 10);
    }

    #[test]
    fn plain_english_is_gsm7() {
        let s = segments("Lockdown at Lincoln Elementary. Confirm: https://a.example.org/a/x");
        assert_eq!(s.encoding, Encoding::Gsm7);
        assert_eq!(s.units, 66);
        assert_eq!(s.segments, 1);
    }

    #[test]
    fn limits_are_160_and_153() {
        assert_eq!(segments(&"a".repeat(160)).segments, 1);
        assert_eq!(segments(&"a".repeat(161)).segments, 2);
        assert_eq!(segments(&"a".repeat(306)).segments, 2);
        assert_eq!(segments(&"a".repeat(307)).segments, 3);
    }

    #[test]
    fn extension_characters_count_two() {
        let s = segments("{€}");
        assert_eq!(s.encoding, Encoding::Gsm7);
        assert_eq!(s.units, 6);
        assert_eq!(segments(&"€".repeat(80)).segments, 1);
        assert_eq!(segments(&"€".repeat(81)).segments, 2);
        // 152 septets then an escape pair: the pair moves to the next part.
        let text = format!("{}€", "a".repeat(152));
        assert_eq!(segments(&format!("{text}{}", "a".repeat(10))).segments, 2);
        assert_eq!(segments(&format!("{}€", "a".repeat(305))).segments, 3);
    }

    #[test]
    fn spanish_accents_split_between_gsm7_and_ucs2() {
        // é, ñ, ü, ¿, ¡ are in the GSM alphabet…
        let s = segments("¿Mañana? Escuela cerrada. Pingüino é ¡Sí! no: i");
        assert_eq!(s.encoding, Encoding::Ucs2, "í is not GSM-7");
        let s = segments("¿Mañana? Escuela cerrada. Pingüino é ¡Ya!");
        assert_eq!(s.encoding, Encoding::Gsm7);
        // …but á, í, ó, ú are not.
        for c in ["á", "í", "ó", "ú", "Á"] {
            assert_eq!(segments(c).encoding, Encoding::Ucs2, "{c}");
        }
        let s = segments("Evacuación de la escuela");
        assert_eq!(s.encoding, Encoding::Ucs2);
        assert_eq!(s.units, 24);
    }

    #[test]
    fn cedilla_is_only_the_capital() {
        assert_eq!(segments("Ç").encoding, Encoding::Gsm7);
        assert_eq!(segments("ç").encoding, Encoding::Ucs2);
    }

    #[test]
    fn ucs2_limits_are_70_and_67() {
        assert_eq!(segments(&"á".repeat(70)).segments, 1);
        assert_eq!(segments(&"á".repeat(71)).segments, 2);
        assert_eq!(segments(&"á".repeat(134)).segments, 2);
        assert_eq!(segments(&"á".repeat(135)).segments, 3);
    }

    #[test]
    fn vietnamese_and_chinese_are_ucs2() {
        let vi = segments("Trường đóng cửa hôm nay");
        assert_eq!(vi.encoding, Encoding::Ucs2);
        assert_eq!(vi.units, 23);
        let zh = segments("学校今天关闭");
        assert_eq!(zh.encoding, Encoding::Ucs2);
        assert_eq!(zh.units, 6);
        assert_eq!(zh.segments, 1);
    }

    #[test]
    fn emoji_take_two_units_and_are_never_split() {
        let s = segments("🚨");
        assert_eq!(s.encoding, Encoding::Ucs2);
        assert_eq!(s.units, 2);
        assert_eq!(segments(&"🚨".repeat(35)).segments, 1);
        // 66 units then a surrogate pair: 68 > 67, the pair starts part two.
        let text = format!("{}🚨", "á".repeat(66));
        assert_eq!(segments(&format!("{text}{}", "á".repeat(10))).segments, 2);
        assert_eq!(segments(&format!("{}🚨", "á".repeat(133))).segments, 3);
    }

    #[test]
    fn empty_text_is_one_segment() {
        let s = segments("");
        assert_eq!((s.encoding, s.units, s.segments), (Encoding::Gsm7, 0, 1));
    }
}
