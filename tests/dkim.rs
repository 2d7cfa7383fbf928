//! DKIM signing end to end: the SMTP provider signs with a key generated
//! here, a real SMTP server receives the message, and an independent
//! verifier (Debian's python3-dkim, given the public key as its DNS answer)
//! checks the signature; a changed header or body must fail it.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use klaxon::config::Issues;
use klaxon::deliver::message::OutboundMessage;
use klaxon::deliver::providers::{Provider, ProviderConfig, ProviderContext};
use klaxon::domain::Channel;
use support::smtp_server::SmtpServer;

const PYTHON: &str = "/usr/bin/python3";

fn ctx(dir: &Path) -> ProviderContext {
    ProviderContext {
        public_url: "https://alerts.example-isd.org".into(),
        base_dir: dir.to_path_buf(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_millis(800))
            .build()
            .unwrap(),
    }
}

fn build(dir: &Path, text: &str) -> Result<Provider, Vec<(String, String)>> {
    let table: toml::Table = toml::from_str(text).expect("test TOML");
    let mut issues = Issues::default();
    let p = ProviderConfig::parse("providers[0]", table, &mut issues)
        .and_then(|c| Provider::build("providers[0]", &c, &ctx(dir), &mut issues));
    if issues.is_empty() {
        Ok(p.expect("built"))
    } else {
        Err(issues
            .list
            .into_iter()
            .map(|i| (i.key, i.message))
            .collect())
    }
}

fn smtp_toml(port: u16, dkim: &str) -> String {
    format!(
        r#"
        name = "relay"
        kind = "smtp"
        channels = ["email"]
        host = "127.0.0.1"
        port = {port}
        tls = "none"
        from = "Example ISD Alerts <alerts@example-isd.org>"
        timeout = "2s"
        {dkim}
        "#
    )
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A fresh 2048-bit key: its PKCS#8 PEM and the DNS record's `p=` value.
fn key_pair() -> (String, String) {
    let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
    let private: aws_lc_rs::encoding::Pkcs8V1Der = pair.as_der().unwrap();
    let public: aws_lc_rs::encoding::PublicKeyX509Der = pair.public_key().as_der().unwrap();
    (
        pem("PRIVATE KEY", private.as_ref()),
        STANDARD.encode(public.as_ref()),
    )
}

fn message() -> OutboundMessage {
    OutboundMessage {
        delivery_id: 7,
        alert_id: 42,
        channel: Channel::Email,
        to: "parent@example.com".into(),
        language: "es".into(),
        subject: "Cierre de emergencia: Escuela Lincoln — confirme, por favor".into(),
        body: "La escuela Lincoln está cerrada.  Todos  los alumnos están a salvo.\t\n\nConfirme: https://alerts.example-isd.org/a/tok7\n\n\n".into(),
        html: None,
        ack_url: "https://alerts.example-isd.org/a/tok7".into(),
        speech: String::new(),
        severity: klaxon::playbook::Severity::Emergency,
        bounce_tag: None,
    }
}

/// python3-dkim's verdict on each message, with `p` published for the
/// selector; `None` when python3-dkim is missing (outside CI).
fn verify(messages: &[&str], p: &str) -> Option<Vec<bool>> {
    if !Path::new(PYTHON).exists()
        || !Command::new(PYTHON)
            .args(["-c", "import dkim"])
            .status()
            .is_ok_and(|s| s.success())
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must verify DKIM with python3-dkim"
        );
        eprintln!(
            "skipping the independent check: python3-dkim is missing (apt-get install python3-dkim)"
        );
        return None;
    }
    let script = format!(
        r#"
import sys, json, base64, dkim
record = b"v=DKIM1; k=rsa; p={p}"
def dns(name, timeout=5):
    assert name == b"s2026._domainkey.example-isd.org.", name
    return record
for m in json.load(sys.stdin):
    print("PASS" if dkim.verify(base64.b64decode(m), dnsfunc=dns) else "FAIL")
"#
    );
    let input = serde_json::to_string(
        &messages
            .iter()
            .map(|m| STANDARD.encode(m))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let mut child = Command::new(PYTHON)
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let verdicts: Vec<bool> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim() == "PASS")
        .collect();
    assert_eq!(
        verdicts.len(),
        messages.len(),
        "python3-dkim: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(verdicts)
}

#[tokio::test]
async fn signed_mail_verifies_with_an_independent_verifier() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = key_pair();
    std::fs::write(dir.path().join("dkim.pem"), private).unwrap();
    let server = SmtpServer::start().await;
    let p = build(
        dir.path(),
        &smtp_toml(
            server.port(),
            r#"dkim_key_file = "dkim.pem"
               dkim_selector = "s2026"
               dkim_domain = "example-isd.org""#,
        ),
    )
    .unwrap();
    p.send(&message()).await.expect("accepted");
    let got = server.received();
    let raw = &got[0].data;
    let sig = got[0].header("DKIM-Signature").expect("signed");
    for tag in [
        "v=1",
        "a=rsa-sha256",
        "c=relaxed/relaxed",
        "d=example-isd.org",
        "s=s2026",
    ] {
        assert!(sig.contains(tag), "{tag} missing: {sig}");
    }
    assert!(
        sig.contains("h=from:to:subject:date:message-id:mime-version:content-type:content-language:auto-submitted;"),
        "{sig}"
    );
    // A changed signed header or body must fail; whitespace a relay may
    // add must not (relaxed canonicalisation).
    let forged_subject = raw.replacen("\r\nSubject: ", "\r\nSubject: Re: ", 1);
    let forged_body = raw.replacen("cerrada", "abierta", 1);
    let relayed = raw
        .replacen("\r\nSubject: ", "\r\nSubject:   ", 1)
        .replacen("Todos  los", "Todos \t los", 1)
        + "\r\n \r\n\r\n";
    for (a, b) in [(&forged_subject, raw), (&forged_body, raw), (&relayed, raw)] {
        assert_ne!(a, b);
    }
    if let Some(v) = verify(&[raw, &forged_subject, &forged_body, &relayed], &public) {
        assert_eq!(
            v,
            [true, false, false, true],
            "python3-dkim verdicts on:\n{raw}"
        );
    }
}

#[test]
fn dkim_settings_are_checked_at_start_up_with_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("not-a-key.pem"), "hello").unwrap();
    std::fs::write(
        dir.path().join("bad.pem"),
        pem("PRIVATE KEY", b"definitely not DER"),
    )
    .unwrap();
    let keys = |dkim: &str| -> Vec<(String, String)> {
        build(dir.path(), &smtp_toml(2525, dkim))
            .err()
            .expect("refused")
    };
    let missing = keys(
        r#"dkim_key_file = "nope.pem"
                          dkim_selector = "s1"
                          dkim_domain = "example-isd.org""#,
    );
    assert_eq!(missing[0].0, "providers[0].dkim_key_file");
    assert!(missing[0].1.contains("nope.pem"), "{missing:?}");
    let not_pem = keys(
        r#"dkim_key_file = "not-a-key.pem"
                          dkim_selector = "s1"
                          dkim_domain = "example-isd.org""#,
    );
    assert_eq!(not_pem[0].0, "providers[0].dkim_key_file");
    assert!(not_pem[0].1.contains("no PEM private key"), "{not_pem:?}");
    let bad = keys(
        r#"dkim_key_file = "bad.pem"
                      dkim_selector = "s1"
                      dkim_domain = "example-isd.org""#,
    );
    assert!(bad[0].1.contains("not a usable RSA private key"), "{bad:?}");
    let partial = keys(r#"dkim_selector = "s 1""#);
    let names: Vec<&str> = partial.iter().map(|(k, _)| k.as_str()).collect();
    assert!(names.contains(&"providers[0].dkim_key_file"), "{partial:?}");
    assert!(names.contains(&"providers[0].dkim_domain"), "{partial:?}");
    assert!(names.contains(&"providers[0].dkim_selector"), "{partial:?}");
}
