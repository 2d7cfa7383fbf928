//! Bounces over IMAP, end to end: the daemon sends through a real SMTP
//! server with a VERP return path, the relay's DSNs land in a real Dovecot
//! mailbox, and the daemon's poller reads them back, records the bounced
//! addresses as undeliverable and removes the bounces it used. Unknown and
//! forged bounces, delay notices and other mail are left, read, and counted.

mod common;
mod support;

use std::time::{Duration, Instant};

use common::{TestApp, config_text, import, make_token, start};
use klaxon::store::tokens::ApiRole;
use serde_json::json;
use support::dovecot::Dovecot;
use support::smtp_server::{ReceivedMail, SmtpServer};

const EMAIL_PLAYBOOK: &str = r#"
[playbooks.email-only]
title = "Lockdown"
severity = "emergency"
channels = ["email"]
roles = ["guardian", "staff"]
[playbooks.email-only.messages]
en = "LOCKDOWN at {{ school }}. Confirm: {{ link }}"
"#;

async fn app(smtp: &SmtpServer, imap_port: u16) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("imap-password"), "s3cret\n").unwrap();
    let providers = format!(
        r#"
[[providers]]
name = "district-relay"
kind = "smtp"
channels = ["email"]
host = "127.0.0.1"
port = {}
tls = "none"
from = "Example ISD Alerts <alerts@example-isd.org>"
timeout = "2s"

[providers.bounces]
host = "127.0.0.1"
port = {imap_port}
tls = "none"
user = "bounces"
password_file = "imap-password"
interval = "200ms"
return_path_domain = "bounces.example-isd.org"
"#,
        smtp.port()
    );
    std::fs::write(
        dir.path().join("klaxon.toml"),
        config_text(&format!("{providers}{EMAIL_PLAYBOOK}")),
    )
    .unwrap();
    import(dir.path(), std::path::Path::new(common::FIXTURE));
    let admin = make_token(dir.path(), ApiRole::Admin).await;
    let viewer = make_token(dir.path(), ApiRole::Viewer).await;
    start(dir, admin, viewer).await
}

/// A DSN as Postfix writes it, to `to`, about `rcpt`, quoting `message_id`.
fn dsn(to: &str, rcpt: &str, action: &str, status: &str, message_id: &str) -> Vec<u8> {
    format!(
        "Return-Path: <>\r\nFrom: MAILER-DAEMON@relay.example-isd.org (Mail Delivery System)\r\n\
To: {to}\r\nSubject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"B0UND/relay\"\r\n\r\n\
This is a MIME-encapsulated message.\r\n\r\n--B0UND/relay\r\nContent-Type: text/plain\r\n\r\n\
Your message could not be delivered.\r\n\r\n--B0UND/relay\r\nContent-Type: message/delivery-status\r\n\r\n\
Reporting-MTA: dns; relay.example-isd.org\r\n\r\nFinal-Recipient: rfc822; {rcpt}\r\nAction: {action}\r\n\
Status: {status}\r\nDiagnostic-Code: smtp; 550 {status} <{rcpt}>: Recipient address rejected:\r\n    User unknown in virtual mailbox table\r\n\r\n\
--B0UND/relay\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: alerts@example-isd.org\r\nMessage-ID: {message_id}\r\n\r\n--B0UND/relay--\r\n"
    )
    .into_bytes()
}

fn delivery_state(app: &TestApp, id: i64) -> (String, Option<String>, Option<String>) {
    app.db()
        .query_row(
            "SELECT state, error_code, error FROM deliveries WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
}

async fn metrics(app: &TestApp) -> String {
    app.http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The delivery id in `bounces+d{id}.{mac}@…`.
fn id_of(m: &ReceivedMail) -> (i64, String) {
    let tag = m
        .mail_from
        .strip_prefix("bounces+")
        .and_then(|r| r.strip_suffix("@bounces.example-isd.org"))
        .unwrap_or_else(|| panic!("no VERP return path: {}", m.mail_from));
    let (id, mac) = tag[1..].split_once('.').unwrap();
    assert_eq!(mac.len(), 16, "{tag}");
    (id.parse().unwrap(), mac.to_string())
}

#[tokio::test]
async fn dsns_for_known_deliveries_mark_them_undeliverable_and_others_are_counted() {
    let Some(imap) = Dovecot::start("bounces", "s3cret") else {
        return;
    };
    let smtp = SmtpServer::start().await;
    let app = app(&smtp, imap.port).await;
    let r = app
        .trigger(json!({"playbook": "email-only", "audience": {}}))
        .await;
    assert_eq!(r.status(), 201);
    let alert = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    app.wait_settled(alert).await;
    let mut mails = smtp.received();
    mails.sort_by_key(|m| id_of(m).0);
    assert!(mails.len() >= 3, "{mails:?}");
    let (a, b, c) = (&mails[0], &mails[1], &mails[2]);
    let ((a_id, a_mac), (b_id, _), (c_id, _)) = (id_of(a), id_of(b), id_of(c));
    // The Message-ID carries the same tag.
    let b_msgid = b.header("Message-ID").unwrap();
    assert!(
        b_msgid.starts_with(&format!("<klaxon.{alert}.d{b_id}.")),
        "{b_msgid}"
    );

    // A: found by its return path. B: the relay rewrote the envelope, found
    // by the Message-ID it quotes. Forged: A's MAC on C's id. Untagged: a
    // DSN about mail klaxon never sent. Delayed: C, not a failure yet.
    imap.deliver(
        "1.a",
        &dsn(&a.mail_from, &a.rcpt_to[0], "failed", "5.1.1", "<x@y>"),
    );
    imap.deliver(
        "2.b",
        &dsn(
            "bounces@bounces.example-isd.org",
            &b.rcpt_to[0],
            "failed",
            "5.2.1",
            &b_msgid,
        ),
    );
    let forged = format!("bounces+d{c_id}.{a_mac}@bounces.example-isd.org");
    imap.deliver(
        "3.forged",
        &dsn(&forged, &c.rcpt_to[0], "failed", "5.1.1", "<x@y>"),
    );
    imap.deliver(
        "4.untagged",
        &dsn(
            "bounces@bounces.example-isd.org",
            "someone@example.org",
            "failed",
            "5.1.1",
            "<other@example.org>",
        ),
    );
    imap.deliver(
        "5.delayed",
        &dsn(&c.mail_from, &c.rcpt_to[0], "delayed", "4.4.1", "<x@y>"),
    );
    imap.deliver(
        "6.ooo",
        b"From: parent@example.org\r\nTo: bounces@bounces.example-isd.org\r\nSubject: Out of office\r\n\r\nAway until Monday.\r\n",
    );

    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let done = delivery_state(&app, a_id).0 == "undeliverable"
            && delivery_state(&app, b_id).0 == "undeliverable"
            && imap
                .messages()
                .iter()
                .filter(|(_, f)| f.contains('S'))
                .count()
                == 4;
        if done {
            break;
        }
        assert!(
            Instant::now() < until,
            "bounces not read: a {:?}, b {:?}, mailbox {:?}\n{}",
            delivery_state(&app, a_id),
            delivery_state(&app, b_id),
            imap.messages(),
            imap.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, code, error) = delivery_state(&app, a_id);
    assert_eq!(code.as_deref(), Some("5.1.1"));
    assert!(
        error
            .as_deref()
            .unwrap()
            .contains("User unknown in virtual mailbox table"),
        "{error:?}"
    );
    assert_eq!(delivery_state(&app, b_id).1.as_deref(), Some("5.2.1"));
    // The forged and the delayed bounce changed nothing.
    assert_eq!(delivery_state(&app, c_id).0, "sent");

    // Used bounces are gone; the others stay, read, for a person to look at.
    let left: Vec<String> = imap.messages().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        left,
        ["3.forged", "4.untagged", "5.delayed", "6.ooo"],
        "{left:?}"
    );

    let report = app.get_json("/api/v1/reports/contactability").await;
    let addrs: Vec<&str> = report
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["address"].as_str().unwrap())
        .collect();
    assert!(addrs.contains(&a.rcpt_to[0].as_str()), "{report}");
    assert!(addrs.contains(&b.rcpt_to[0].as_str()), "{report}");
    assert!(!addrs.contains(&c.rcpt_to[0].as_str()), "{report}");

    let m = metrics(&app).await;
    for line in [
        r#"klaxon_email_events_total{source="dsn",event="undeliverable",outcome="applied"} 2"#,
        r#"klaxon_email_events_total{source="dsn",event="undeliverable",outcome="unknown"} 2"#,
        r#"klaxon_email_events_total{source="dsn",event="other",outcome="ignored"} 2"#,
    ] {
        assert!(m.contains(line), "{line} missing from:\n{m}");
    }
    assert!(
        m.contains(r#"klaxon_bounce_polls_total{provider="district-relay",outcome="ok"}"#),
        "{m}"
    );
    assert!(
        !m.contains(r#"klaxon_bounce_polls_total{provider="district-relay",outcome="error"}"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_wrong_imap_password_is_counted_and_nothing_changes() {
    let Some(imap) = Dovecot::start("bounces", "another-password") else {
        return;
    };
    let smtp = SmtpServer::start().await;
    let app = app(&smtp, imap.port).await;
    imap.deliver(
        "1.ooo",
        b"From: parent@example.org\r\nSubject: hi\r\n\r\nhello\r\n",
    );
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics(&app).await;
        if m.contains(r#"klaxon_bounce_polls_total{provider="district-relay",outcome="error"}"#) {
            break;
        }
        assert!(Instant::now() < until, "{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Not read: still new and unflagged.
    assert_eq!(imap.messages(), [("1.ooo".to_string(), String::new())]);
}

#[test]
fn bounce_settings_are_checked_at_start_up_with_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        r#"
[[providers]]
name = "relay"
kind = "smtp"
channels = ["email"]
host = "127.0.0.1"
port = 2525
tls = "none"
from = "Alerts <alerts@example-isd.org>"

[providers.bounces]
host = "imap.example-isd.org"
user = "bounces"
password_file = "missing-password"
interval = "0s"
return_path_domain = "bad domain"

[[providers]]
name = "relay-2"
kind = "smtp"
channels = ["email"]
host = "127.0.0.1"
port = 2526
tls = "none"
from = "Alerts <alerts@example-isd.org>"

[providers.bounces]
host = "imap.example-isd.org"
user = "bounces"
auth = "xoauth2"
"#,
    );
    std::fs::write(dir.path().join("klaxon.toml"), text).unwrap();
    let keys: Vec<String> = match klaxon::config::Config::load(&dir.path().join("klaxon.toml")) {
        Err(e) => format!("{e:?}").split('\n').map(str::to_string).collect(),
        Ok(config) => klaxon::app::build_providers(&config)
            .err()
            .expect("refused")
            .iter()
            .map(|i| format!("{}: {}", i.key, i.message))
            .collect(),
    };
    let all = keys.join("\n");
    for key in [
        "providers[0].bounces.interval",
        "providers[0].bounces.return_path_domain",
        "providers[1].bounces.auth",
    ] {
        assert!(all.contains(key), "{key} not named in:\n{all}");
    }
}
