//! Reading a bounce: an RFC 3464 delivery status notification, a
//! `multipart/report; report-type=delivery-status` whose
//! `message/delivery-status` part has one block of per-message fields and
//! one block per recipient (`Final-Recipient`, `Action`, `Status`,
//! `Diagnostic-Code`). Tolerant: folded headers, LF or CRLF, any case.

/// One recipient block of a DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsnRecipient {
    /// The address, without the `rfc822;` type.
    pub final_recipient: String,
    /// `failed`, `delayed`, `delivered`, `relayed`, `expanded`.
    pub action: String,
    /// `5.1.1` and the like.
    pub status: String,
    pub diagnostic: Option<String>,
}

impl DsnRecipient {
    /// A permanent failure: the address cannot receive mail.
    pub fn is_permanent_failure(&self) -> bool {
        self.action.eq_ignore_ascii_case("failed") && self.status.starts_with('5')
    }

    /// Failed, but the status says it may work later.
    pub fn is_failure(&self) -> bool {
        self.action.eq_ignore_ascii_case("failed")
    }
}

/// The recipients of a DSN; `None` when the message is not one (an
/// out-of-office reply, a person writing back).
pub fn parse(raw: &[u8]) -> Option<Vec<DsnRecipient>> {
    let text = String::from_utf8_lossy(raw);
    let (headers, body) = split(&text);
    let ct = header(&headers, "content-type")?;
    let (mime, params) = content_type(&ct);
    if mime != "multipart/report" {
        return None;
    }
    let boundary = params.iter().find(|(k, _)| k == "boundary")?.1.clone();
    for part in parts(body, &boundary) {
        let (ph, pb) = split(part);
        let Some(pct) = header(&ph, "content-type") else {
            continue;
        };
        if content_type(&pct).0 != "message/delivery-status" {
            continue;
        }
        let mut blocks = blocks(pb).into_iter();
        let _per_message = blocks.next();
        let recipients: Vec<DsnRecipient> = blocks
            .filter_map(|b| {
                let field = |n: &str| header(&b, n);
                let recipient = field("final-recipient").or_else(|| field("original-recipient"))?;
                let address = recipient
                    .split_once(';')
                    .map_or(recipient.as_str(), |(_, a)| a)
                    .trim()
                    .trim_matches(['<', '>'])
                    .to_string();
                Some(DsnRecipient {
                    final_recipient: address,
                    action: field("action")?.trim().to_ascii_lowercase(),
                    status: field("status")?
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                    diagnostic: field("diagnostic-code").map(|d| {
                        d.split_once(';')
                            .map_or(d.as_str(), |(_, t)| t)
                            .trim()
                            .to_string()
                    }),
                })
            })
            .collect();
        return Some(recipients);
    }
    None
}

/// Header section and body (at the first empty line).
fn split(text: &str) -> (Vec<(String, String)>, &str) {
    let (head, body) = match (text.find("\r\n\r\n"), text.find("\n\n")) {
        (Some(a), Some(b)) if b + 1 < a => (&text[..b], &text[b + 2..]),
        (Some(a), _) => (&text[..a], &text[a + 4..]),
        (None, Some(b)) => (&text[..b], &text[b + 2..]),
        (None, None) => (text, ""),
    };
    (fields(head), body)
}

/// `Name: value` lines, continuation lines folded in; names lower-cased.
fn fields(head: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            out.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    out
}

fn header(fields: &[(String, String)], name: &str) -> Option<String> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

/// `type/subtype` lower-cased and its parameters (names lower-cased, quotes removed).
fn content_type(value: &str) -> (String, Vec<(String, String)>) {
    let mut it = value.split(';');
    let mime = it.next().unwrap_or_default().trim().to_ascii_lowercase();
    let params = it
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_ascii_lowercase(),
                v.trim().trim_matches('"').to_string(),
            )
        })
        .collect();
    (mime, params)
}

/// The parts of a multipart body between `--boundary` lines.
fn parts<'a>(body: &'a str, boundary: &str) -> Vec<&'a str> {
    let delim = format!("--{boundary}");
    let mut out = Vec::new();
    let mut rest = body;
    // Skip the preamble.
    let Some(start) = rest.find(&delim) else {
        return out;
    };
    rest = &rest[start + delim.len()..];
    loop {
        if rest.starts_with("--") {
            break;
        }
        let rest_line = rest.find('\n').map_or("", |i| &rest[i + 1..]);
        match rest_line.find(&delim) {
            Some(end) => {
                out.push(rest_line[..end].trim_end_matches(['\r', '\n']));
                rest = &rest_line[end + delim.len()..];
            }
            None => {
                out.push(rest_line);
                break;
            }
        }
    }
    out
}

/// Blocks of fields separated by empty lines.
fn blocks(text: &str) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.trim().is_empty() {
                out.push(fields(&cur));
            }
            cur.clear();
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    if !cur.trim().is_empty() {
        out.push(fields(&cur));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bounce as Postfix writes it (RFC 3464 example shape).
    const POSTFIX: &str = "Return-Path: <>\r\nFrom: MAILER-DAEMON@relay.example-isd.org (Mail Delivery System)\r\nTo: bounces+d42.0123456789abcdef@example-isd.org\r\nSubject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"ABC.123/relay\"\r\n\r\nThis is a MIME-encapsulated message.\r\n\r\n--ABC.123/relay\r\nContent-Description: Notification\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nI'm sorry to have to inform you that your message could not be delivered.\r\n\r\n--ABC.123/relay\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; relay.example-isd.org\r\nArrival-Date: Mon, 23 Nov 2026 07:00:00 +0000\r\n\r\nFinal-Recipient: rfc822; gone@example.org\r\nOriginal-Recipient: rfc822;gone@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.example.org\r\nDiagnostic-Code: smtp; 550 5.1.1 <gone@example.org>: Recipient address\r\n    rejected: User unknown\r\n\r\n--ABC.123/relay\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <klaxon.7.d42.0123456789abcdef@example-isd.org>\r\n\r\n--ABC.123/relay--\r\n";

    #[test]
    fn a_postfix_bounce() {
        let r = parse(POSTFIX.as_bytes()).expect("a DSN");
        assert_eq!(
            r,
            vec![DsnRecipient {
                final_recipient: "gone@example.org".into(),
                action: "failed".into(),
                status: "5.1.1".into(),
                diagnostic: Some(
                    "550 5.1.1 <gone@example.org>: Recipient address rejected: User unknown".into()
                ),
            }]
        );
        assert!(r[0].is_permanent_failure());
    }

    #[test]
    fn lf_only_and_delayed() {
        let text = POSTFIX
            .replace("\r\n", "\n")
            .replace("Action: failed", "Action: delayed")
            .replace("Status: 5.1.1", "Status: 4.4.1");
        let r = parse(text.as_bytes()).unwrap();
        assert_eq!(r[0].action, "delayed");
        assert!(!r[0].is_failure());
    }

    #[test]
    fn other_mail_is_not_a_dsn() {
        assert!(parse(b"From: a@b\r\nSubject: Out of office\r\n\r\nI am away.\r\n").is_none());
        assert!(
            parse(b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\nhi\r\n--x--\r\n")
                .is_none()
        );
        assert!(parse(b"").is_none());
    }
}
