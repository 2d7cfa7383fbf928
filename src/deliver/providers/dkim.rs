//! DKIM signing (RFC 6376) for districts whose relay does not sign:
//! RSA-SHA256 with relaxed/relaxed canonicalisation, with aws-lc-rs (ring's
//! API; already in the tree through rustls). Not lettre's `dkim` feature: it
//! pulls the `rsa` crate (RUSTSEC-2023-0071, timing side channel, no fix).
//!
//! The DKIM-Signature header is written on one line (under the 998-octet
//! limit for keys up to 4096 bits), so what we sign is exactly its relaxed
//! form with an empty `b=`.

use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

/// Headers we sign when present, in this order. `From` is required by the
/// RFC; the rest are what a forger would most like to change.
const SIGNED: &[&str] = &[
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-language",
    "auto-submitted",
    "list-unsubscribe",
];

pub struct DkimSigner {
    key: RsaKeyPair,
    domain: String,
    selector: String,
    rng: SystemRandom,
}

#[derive(Debug, thiserror::Error)]
pub enum DkimKeyError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0} holds no PEM private key (BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)")]
    NotPem(String),
    #[error("{0} is not a usable RSA private key: {1}")]
    Rejected(String, String),
    #[error("{0}: a {1}-bit key; DKIM needs at least 1024 bits (2048 recommended)")]
    TooShort(String, usize),
}

impl std::fmt::Debug for DkimSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DkimSigner({}._domainkey.{})",
            self.selector, self.domain
        )
    }
}

impl DkimSigner {
    /// Reads a PEM RSA key, PKCS#8 (`openssl genpkey`) or PKCS#1
    /// (`openssl genrsa`).
    pub fn from_file(
        path: &Path,
        domain: &str,
        selector: &str,
    ) -> Result<DkimSigner, DkimKeyError> {
        let shown = path.display().to_string();
        let pem =
            std::fs::read_to_string(path).map_err(|e| DkimKeyError::Read(shown.clone(), e))?;
        let key = Self::parse_pem(&pem, &shown)?;
        Ok(DkimSigner {
            key,
            domain: domain.to_string(),
            selector: selector.to_string(),
            rng: SystemRandom::new(),
        })
    }

    fn parse_pem(pem: &str, shown: &str) -> Result<RsaKeyPair, DkimKeyError> {
        let block = |label: &str| {
            let begin = format!("-----BEGIN {label}-----");
            let end = format!("-----END {label}-----");
            let start = pem.find(&begin)? + begin.len();
            let stop = pem[start..].find(&end)? + start;
            let b64: String = pem[start..stop]
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            STANDARD.decode(b64).ok()
        };
        let key = if let Some(der) = block("PRIVATE KEY") {
            RsaKeyPair::from_pkcs8(&der)
        } else if let Some(der) = block("RSA PRIVATE KEY") {
            RsaKeyPair::from_der(&der)
        } else {
            return Err(DkimKeyError::NotPem(shown.to_string()));
        }
        .map_err(|e| DkimKeyError::Rejected(shown.to_string(), e.to_string()))?;
        let bits = key.public_modulus_len() * 8;
        if bits < 1024 {
            return Err(DkimKeyError::TooShort(shown.to_string(), bits));
        }
        Ok(key)
    }

    /// The message with a DKIM-Signature header in front. `message` is the
    /// whole message with CRLF line ends, as `mime` formats it.
    pub fn sign(&self, message: &[u8], now_secs: i64) -> Result<Vec<u8>, String> {
        let text = std::str::from_utf8(message).map_err(|_| "the message is not UTF-8")?;
        let (head, body) = match text.find("\r\n\r\n") {
            Some(i) => (&text[..i + 2], &text[i + 4..]),
            None => (text, ""),
        };
        let bh = STANDARD.encode(Sha256::digest(relaxed_body(body).as_bytes()));
        let headers = parse_headers(head);
        let mut names = Vec::new();
        let mut signed = String::new();
        for name in SIGNED {
            // One instance of each: the last one is what a reader sees.
            if let Some((_, raw)) = headers.iter().rev().find(|(n, _)| n == name) {
                signed.push_str(&relaxed_header(raw));
                signed.push_str("\r\n");
                names.push(*name);
            }
        }
        let field = format!(
            "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={}; s={}; t={now_secs}; h={}; bh={bh}; b=",
            self.domain,
            self.selector,
            names.join(":")
        );
        // The signature header itself is signed last, with an empty b= and no CRLF.
        signed.push_str(&relaxed_header(&field));
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &self.rng, signed.as_bytes(), &mut sig)
            .map_err(|e| format!("DKIM signing failed: {e}"))?;
        let mut out = Vec::with_capacity(message.len() + field.len() + 400);
        out.extend_from_slice(field.as_bytes());
        out.extend_from_slice(STANDARD.encode(&sig).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(message);
        Ok(out)
    }
}

/// (lower-case name, the whole field with its folding) for each header.
fn parse_headers(head: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push_str("\r\n");
                last.1.push_str(line);
            }
        } else if let Some((name, _)) = line.split_once(':') {
            out.push((name.trim().to_ascii_lowercase(), line.to_string()));
        }
    }
    out
}

/// RFC 6376 3.4.2: lower-case name, unfolded, runs of whitespace to one
/// space, none around the colon or at the end.
pub fn relaxed_header(field: &str) -> String {
    let (name, value) = field.split_once(':').unwrap_or((field, ""));
    let unfolded = value.replace("\r\n", "");
    format!(
        "{}:{}",
        name.trim().to_ascii_lowercase(),
        squeeze_wsp(&unfolded).trim()
    )
}

/// RFC 6376 3.4.4: whitespace runs to one space, none at line ends, no
/// empty lines at the end, and a final CRLF unless the body is empty.
pub fn relaxed_body(body: &str) -> String {
    let mut lines: Vec<String> = body
        .split("\r\n")
        .map(|l| squeeze_wsp(l).trim_end().to_string())
        .collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    if lines.is_empty() {
        return String::new();
    }
    let mut out = lines.join("\r\n");
    out.push_str("\r\n");
    out
}

fn squeeze_wsp(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_wsp = false;
    for c in s.chars() {
        if c == ' ' || c == '\t' {
            if !in_wsp {
                out.push(' ');
            }
            in_wsp = true;
        } else {
            out.push(c);
            in_wsp = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6376 3.4.5's example.
    #[test]
    fn canonicalisation_as_in_the_rfc() {
        assert_eq!(relaxed_header("A: X"), "a:X");
        assert_eq!(relaxed_header("B : Y\t\r\n\tZ  "), "b:Y Z");
        assert_eq!(relaxed_body(" C \r\nD \t E\r\n\r\n\r\n"), " C\r\nD E\r\n");
        assert_eq!(relaxed_body(""), "");
        assert_eq!(relaxed_body("\r\n\r\n"), "");
        assert_eq!(relaxed_body("no newline"), "no newline\r\n");
    }
}
