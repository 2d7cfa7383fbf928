//! Each provider against a real server on loopback: the Twilio API (validated
//! against Twilio's OpenAPI spec), a SendGrid endpoint and an SMTP server.
//! Providers are built the way the daemon builds them, from a TOML section.

mod support;

use std::path::Path;
use std::time::Duration;

use klaxon::config::Issues;
use klaxon::deliver::message::{OutboundMessage, SendError};
use klaxon::deliver::providers::twilio::{sign, verify_signature};
use klaxon::deliver::providers::{
    Provider, ProviderConfig, ProviderContext, twilio_callback_tokens,
};
use klaxon::domain::Channel;
use support::oauth_server::{Expect, OAuthServer};
use support::sendgrid_server::SendGridServer;
use support::smtp_server::{SmtpMode, SmtpServer};
use support::twilio_server::{Resource, TwilioServer};

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "loopback-token-1";
const PUBLIC: &str = "https://alerts.example-isd.org";

/// A provider context with a short request time-out, as the daemon's client has.
fn ctx(dir: &Path) -> ProviderContext {
    ProviderContext {
        public_url: PUBLIC.into(),
        base_dir: dir.to_path_buf(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_millis(800))
            .build()
            .unwrap(),
    }
}

/// Parses and builds one `[[providers]]` section; panics with the issues.
fn build(dir: &Path, toml_text: &str) -> Provider {
    let table: toml::Table = toml::from_str(toml_text).expect("test TOML");
    let mut issues = Issues::default();
    let cfg = ProviderConfig::parse("providers[0]", table, &mut issues);
    let provider = cfg.and_then(|c| Provider::build("providers[0]", &c, &ctx(dir), &mut issues));
    assert!(issues.is_empty(), "{:?}", issues.list);
    provider.expect("provider built")
}

/// The issue keys a section produces.
fn issue_keys(dir: &Path, toml_text: &str) -> Vec<String> {
    let table: toml::Table = toml::from_str(toml_text).expect("test TOML");
    let mut issues = Issues::default();
    if let Some(c) = ProviderConfig::parse("providers[0]", table, &mut issues) {
        let _ = Provider::build("providers[0]", &c, &ctx(dir), &mut issues);
    }
    issues.list.into_iter().map(|i| i.key).collect()
}

fn secret_file(dir: &Path, name: &str, value: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    path.display().to_string()
}

fn twilio_toml(dir: &Path, api_base: &str, token: &str, extra: &str) -> String {
    let token_file = secret_file(dir, "twilio-token", token);
    format!(
        r#"
        name = "twilio-main"
        kind = "twilio"
        channels = ["sms", "voice"]
        api_base = "{api_base}"
        account_sid = "{SID}"
        auth_token_file = "{token_file}"
        {extra}
        "#
    )
}

fn twilio(dir: &Path, server: &TwilioServer) -> Provider {
    build(
        dir,
        &twilio_toml(
            dir,
            &server.url(),
            TOKEN,
            r#"from = ["+15555550100", "+15555550101"]"#,
        ),
    )
}

fn message(channel: Channel, id: i64, to: &str) -> OutboundMessage {
    OutboundMessage {
        delivery_id: id,
        alert_id: 42,
        channel,
        to: to.into(),
        language: "en".into(),
        subject: "Lockdown at Lincoln Elementary".into(),
        body: format!("Lincoln Elementary is in lockdown. Confirm: {PUBLIC}/a/tok{id}"),
        html: None,
        ack_url: format!("{PUBLIC}/a/tok{id}"),
        speech: "Lincoln Elementary is in lockdown. Students are safe inside.".into(),
        severity: klaxon::playbook::Severity::Emergency,
        bounce_tag: None,
    }
}

fn expect_transient(
    r: Result<klaxon::deliver::message::Accepted, SendError>,
) -> (String, Option<Duration>) {
    match r {
        Err(SendError::Transient {
            reason,
            retry_after,
        }) => (reason, retry_after),
        other => panic!("expected a transient error, got {other:?}"),
    }
}

fn expect_permanent(r: Result<klaxon::deliver::message::Accepted, SendError>) -> (String, String) {
    match r {
        Err(SendError::Permanent { code, reason }) => (code, reason),
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

// ---------------------------------------------------------------- Twilio

#[tokio::test]
async fn twilio_sms_is_accepted_valid_and_round_robin() {
    let dir = tempfile::tempdir().unwrap();
    let server = TwilioServer::start(SID, TOKEN).await;
    let p = twilio(dir.path(), &server);

    let mut sids = Vec::new();
    for id in 1..=3 {
        let ok = p
            .send(&message(Channel::Sms, id, "+15555550123"))
            .await
            .expect("accepted");
        sids.push(ok.provider_message_id.expect("sid"));
    }

    assert!(server.violations().is_empty(), "{:?}", server.violations());
    let reqs = server.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(sids, reqs.iter().map(|r| r.sid.clone()).collect::<Vec<_>>());
    assert!(sids.iter().all(|s| s.starts_with("SM") && s.len() == 34));
    let r = &reqs[0];
    assert_eq!(r.resource, Resource::Message);
    assert_eq!(r.field("To"), Some("+15555550123"));
    assert_eq!(
        r.field("Body"),
        Some(message(Channel::Sms, 1, "").body.as_str())
    );
    assert_eq!(
        r.field("StatusCallback"),
        Some("https://alerts.example-isd.org/hooks/twilio/status?d=1")
    );
    assert_eq!(r.field("MessagingServiceSid"), None);
    let froms: Vec<_> = reqs
        .iter()
        .map(|r| r.field("From").unwrap().to_string())
        .collect();
    assert_eq!(froms, ["+15555550100", "+15555550101", "+15555550100"]);
}

#[tokio::test]
async fn twilio_messaging_service_replaces_from() {
    let dir = tempfile::tempdir().unwrap();
    let server = TwilioServer::start(SID, TOKEN).await;
    let toml_text = twilio_toml(
        dir.path(),
        &server.url(),
        TOKEN,
        r#"messaging_service_sid = "MG0123456789abcdef0123456789abcdef""#,
    )
    .replace(r#"channels = ["sms", "voice"]"#, r#"channels = ["sms"]"#);
    let p = build(dir.path(), &toml_text);
    p.send(&message(Channel::Sms, 5, "+15555550123"))
        .await
        .expect("accepted");
    assert!(server.violations().is_empty(), "{:?}", server.violations());
    let r = &server.requests()[0];
    assert_eq!(
        r.field("MessagingServiceSid"),
        Some("MG0123456789abcdef0123456789abcdef")
    );
    assert_eq!(r.field("From"), None);
    // A messaging service is limited only by max_per_second.
    assert_eq!(p.effective_rate(), None);
}

#[tokio::test]
async fn twilio_voice_call_speaks_twice_and_gathers() {
    let dir = tempfile::tempdir().unwrap();
    let server = TwilioServer::start(SID, TOKEN).await;
    let p = twilio(dir.path(), &server);
    let mut msg = message(Channel::Voice, 9, "+15555550123");
    msg.language = "es".into();
    msg.subject = "Cierre".into();
    msg.speech = "La escuela Lincoln cierra hoy a las 12 & media.".into();
    let ok = p.send(&msg).await.expect("accepted");

    assert!(server.violations().is_empty(), "{:?}", server.violations());
    let r = &server.requests()[0];
    assert_eq!(r.resource, Resource::Call);
    assert!(ok.provider_message_id.unwrap().starts_with("CA"));
    let twiml = r.field("Twiml").expect("inline TwiML");
    assert_eq!(
        twiml
            .matches("La escuela Lincoln cierra hoy a las 12 &amp; media.")
            .count(),
        2,
        "{twiml}"
    );
    assert!(
        twiml.contains(r#"<Say language="es-US" voice="Polly.Lupe">"#),
        "{twiml}"
    );
    assert!(
        twiml.contains(r#"<Gather numDigits="1" timeout="10" method="POST" action="https://alerts.example-isd.org/hooks/twilio/voice?d=9">"#),
        "{twiml}"
    );
    assert!(twiml.contains("oprima 1"), "{twiml}");
    assert_eq!(r.field("MachineDetection"), Some("DetectMessageEnd"));
    assert_eq!(
        r.field("StatusCallback"),
        Some("https://alerts.example-isd.org/hooks/twilio/status?d=9")
    );
    assert_eq!(r.field("From"), Some("+15555550100"));
}

#[tokio::test]
async fn twilio_429_is_transient_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let server = TwilioServer::start(SID, TOKEN).await;
    let p = twilio(dir.path(), &server);
    server.faults().fail_with_429(1, 3);
    let (reason, retry) = expect_transient(p.send(&message(Channel::Sms, 1, "+15555550123")).await);
    assert_eq!(retry, Some(Duration::from_secs(3)), "{reason}");
    assert!(reason.contains("429"), "{reason}");
    // The fault was for one request only.
    p.send(&message(Channel::Sms, 2, "+15555550123"))
        .await
        .expect("accepted");
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn twilio_500_is_transient() {
    let dir = tempfile::tempdir().unwrap();
    let server = TwilioServer::start(SID, TOKEN).await;
    let p = twilio(dir.path(), &server);
    server.faults().fail_with_500(2);
    for id in 1..=2 {
        let (reason, retry) =
            expect_transient(p.send(&message(Channel::Sms, id, "+15555550123")).await);
        assert!(reason.contains("500"), "{reason}");
        assert_eq!(retry, None);
    }
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn twilio_invalid_number_is_permanent_21211() {
    let dir = tempfile::tempdir().unwrap();
    let server = TwilioServer::start(SID, TOKEN).await;
    let p = twilio(dir.path(), &server);
    server.reject_to("+15555550199");
    let (code, reason) = expect_permanent(p.send(&message(Channel::Sms, 1, "+15555550199")).await);
    assert_eq!(code, "21211", "{reason}");
    assert!(
        !reason.contains("+15555550199"),
        "no phone numbers in reasons: {reason}"
    );
    assert!(server.violations().is_empty(), "{:?}", server.violations());
}

#[tokio::test]
async fn twilio_dropped_connection_and_time_out_are_transient() {
    let dir = tempfile::tempdir().unwrap();
    let server = TwilioServer::start(SID, TOKEN).await;
    let p = twilio(dir.path(), &server);

    server.faults().drop_connections(1);
    let (reason, _) = expect_transient(p.send(&message(Channel::Sms, 1, "+15555550123")).await);
    assert!(
        !reason.contains("+1555"),
        "no phone numbers in reasons: {reason}"
    );

    // Longer than the client's 800 ms time-out.
    server.faults().set_delay(Duration::from_millis(1500));
    let (reason, _) = expect_transient(p.send(&message(Channel::Sms, 2, "+15555550123")).await);
    assert!(reason.contains("time-out"), "{reason}");
    server.faults().set_delay(Duration::ZERO);

    p.send(&message(Channel::Sms, 3, "+15555550123"))
        .await
        .expect("recovers");
    assert_eq!(server.arrivals(), 3);
}

#[tokio::test]
async fn twilio_down_is_transient() {
    let dir = tempfile::tempdir().unwrap();
    let server = TwilioServer::start(SID, TOKEN).await;
    let p = twilio(dir.path(), &server);
    server.faults().set_down(true);
    expect_transient(p.send(&message(Channel::Sms, 1, "+15555550123")).await);
    server.faults().set_down(false);
    p.send(&message(Channel::Sms, 2, "+15555550123"))
        .await
        .expect("back up");
}

#[tokio::test]
async fn twilio_wrong_token_is_transient() {
    let dir = tempfile::tempdir().unwrap();
    let server = TwilioServer::start(SID, TOKEN).await;
    let p = build(
        dir.path(),
        &twilio_toml(
            dir.path(),
            &server.url(),
            "stale-token",
            r#"from = ["+15555550100"]"#,
        ),
    );
    let (reason, _) = expect_transient(p.send(&message(Channel::Sms, 1, "+15555550123")).await);
    assert!(
        reason.contains("401") && reason.contains("20003"),
        "{reason}"
    );
    let v = server.violations();
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].reason, "Authenticate");
}

/// The validator itself must catch bad requests, or the zero-violation
/// assertions above prove nothing.
#[tokio::test]
async fn twilio_server_rejects_requests_outside_the_spec() {
    let server = TwilioServer::start(SID, TOKEN).await;
    let http = reqwest::Client::new();
    let messages = format!("{}/2010-04-01/Accounts/{SID}/Messages.json", server.url());
    let cases: Vec<(reqwest::RequestBuilder, &str)> = vec![
        (
            http.post(&messages)
                .basic_auth(SID, Some(TOKEN))
                .form(&[("From", "+15555550100"), ("Body", "x")]),
            "required field `To` missing",
        ),
        (
            http.post(&messages).basic_auth(SID, Some(TOKEN)).form(&[
                ("To", "+15555550123"),
                ("From", "+15555550100"),
                ("Body", "x"),
                ("Colour", "red"),
            ]),
            "field `Colour` is not in the schema",
        ),
        (
            http.post(&messages).basic_auth(SID, Some(TOKEN)).form(&[
                ("To", "5550123"),
                ("From", "+15555550100"),
                ("Body", "x"),
            ]),
            "is not an E.164 number",
        ),
        (
            http.post(&messages)
                .basic_auth(SID, Some(TOKEN))
                .form(&[("To", "+15555550123"), ("Body", "x")]),
            "'From' or 'MessagingServiceSid'",
        ),
        (
            http.post(&messages).basic_auth(SID, Some(TOKEN)).json(
                &serde_json::json!({"To": "+15555550123", "From": "+15555550100", "Body": "x"}),
            ),
            "content type `application/json` not accepted",
        ),
        (
            http.post(format!(
                "{}/2010-04-01/Accounts/{SID}/Texts.json",
                server.url()
            ))
            .basic_auth(SID, Some(TOKEN))
            .form(&[("To", "+15555550123")]),
            "no spec path matches",
        ),
        (
            http.delete(&messages).basic_auth(SID, Some(TOKEN)),
            "DELETE is not defined",
        ),
        (
            http.post(format!(
                "{}/2010-04-01/Accounts/ACnothex/Messages.json",
                server.url()
            ))
            .basic_auth(SID, Some(TOKEN))
            .form(&[
                ("To", "+15555550123"),
                ("From", "+15555550100"),
                ("Body", "x"),
            ]),
            "path parameter AccountSid",
        ),
        (
            http.post(format!(
                "{}/2010-04-01/Accounts/{SID}/Calls.json",
                server.url()
            ))
            .basic_auth(SID, Some(TOKEN))
            .form(&[
                ("To", "+15555550123"),
                ("From", "+15555550100"),
                ("Twiml", "<Response><Say>a & b</Say></Response>"),
            ]),
            "unescaped `&`",
        ),
    ];
    let expected = cases.len();
    for (req, _) in cases.iter().map(|(r, w)| (r.try_clone().unwrap(), w)) {
        let status = req.send().await.unwrap().status();
        assert!(status.is_client_error(), "{status}");
    }
    let v = server.violations();
    assert_eq!(v.len(), expected, "{v:#?}");
    for ((_, want), got) in cases.iter().zip(&v) {
        assert!(
            got.reason.contains(want),
            "wanted `{want}`, got `{}`",
            got.reason
        );
    }
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn twilio_effective_rate_is_limited_by_the_sender_pool() {
    let dir = tempfile::tempdir().unwrap();
    let from = r#"from = ["+15555550100", "+15555550101", "+15555550102"]"#;
    let p = build(
        dir.path(),
        &twilio_toml(dir.path(), "http://127.0.0.1:9", TOKEN, from),
    );
    assert_eq!(p.effective_rate(), Some(3.0));
    let p = build(
        dir.path(),
        &twilio_toml(
            dir.path(),
            "http://127.0.0.1:9",
            TOKEN,
            &format!("{from}\nmax_per_second = 2"),
        ),
    );
    assert_eq!(p.effective_rate(), Some(2.0));
    let p = build(
        dir.path(),
        &twilio_toml(
            dir.path(),
            "http://127.0.0.1:9",
            TOKEN,
            &format!("{from}\nper_sender_per_second = 10.0\nmax_per_second = 25"),
        ),
    );
    assert_eq!(p.effective_rate(), Some(25.0));
    match &p {
        Provider::Twilio(t) => assert_eq!(t.sender_count(), 3),
        _ => panic!("not twilio"),
    }
}

#[test]
fn twilio_config_problems_name_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let keys = issue_keys(
        dir.path(),
        r#"
        name = "t"
        kind = "twilio"
        channels = ["sms", "voice"]
        account_sid = "AC123"
        from = ["+15555550100", "555-0101"]
        messaging_service_sid = "MG0123456789abcdef0123456789abcdef"
        per_sender_per_second = 0.0
        "#,
    );
    for want in [
        "providers[0].account_sid",
        "providers[0].from",
        "providers[0].from[1]",
        "providers[0].per_sender_per_second",
        "providers[0].auth_token_env",
    ] {
        assert!(keys.iter().any(|k| k == want), "missing {want} in {keys:?}");
    }
    let mut unique = keys.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), keys.len(), "each problem once: {keys:?}");
    let keys = issue_keys(
        dir.path(),
        r#"
        name = "t"
        kind = "twilio"
        channels = ["sms", "voice"]
        account_sid = "AC0123456789abcdef0123456789abcdef"
        auth_token = "literal"
        "#,
    );
    assert_eq!(
        keys,
        ["providers[0].auth_token"],
        "a literal secret is refused"
    );
    let keys = issue_keys(
        dir.path(),
        r#"
        name = "t"
        kind = "twilio"
        channels = ["voice"]
        account_sid = "AC0123456789abcdef0123456789abcdef"
        auth_token_env = "KLAXON_TEST_SURELY_UNSET_VARIABLE"
        messaging_service_sid = "MG0123456789abcdef0123456789abcdef"
        "#,
    );
    assert!(
        keys.contains(&"providers[0].from".to_string()),
        "voice needs a caller id: {keys:?}"
    );
}

#[test]
fn callback_tokens_cover_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let secondary = secret_file(dir.path(), "old-token", "old-secret");
    let p = build(
        dir.path(),
        &twilio_toml(
            dir.path(),
            "http://127.0.0.1:9",
            TOKEN,
            &format!("from = [\"+15555550100\"]\nsecondary_auth_token_file = \"{secondary}\""),
        ),
    );
    let providers = [p];
    let tokens = twilio_callback_tokens(&providers);
    assert_eq!(tokens, [TOKEN, "old-secret"]);

    let url = "https://alerts.example-isd.org/hooks/twilio/status?d=12";
    let params = vec![
        ("MessageSid".to_string(), "SM0123".to_string()),
        ("MessageStatus".to_string(), "delivered".to_string()),
    ];
    let by_old = sign("old-secret", url, &params);
    assert!(verify_signature(&tokens, url, &params, &by_old));
    assert!(verify_signature(
        &tokens,
        url,
        &params,
        &sign(TOKEN, url, &params)
    ));
    assert!(!verify_signature(
        &tokens,
        url,
        &params,
        &sign("someone-else", url, &params)
    ));
    let mut tampered = params.clone();
    tampered[1].1 = "failed".into();
    assert!(!verify_signature(&tokens, url, &tampered, &by_old));
}

// ---------------------------------------------------------------- SMTP

fn smtp_toml(dir: &Path, port: u16, password: Option<&str>) -> String {
    let auth = match password {
        Some(pw) => format!(
            "username = \"alerts@example-isd.org\"\npassword_file = \"{}\"",
            secret_file(dir, "smtp-password", pw)
        ),
        None => String::new(),
    };
    format!(
        r#"
        name = "district-relay"
        kind = "smtp"
        channels = ["email"]
        host = "127.0.0.1"
        port = {port}
        tls = "none"
        from = "Example ISD Alerts <alerts@example-isd.org>"
        timeout = "2s"
        {auth}
        "#
    )
}

#[tokio::test]
async fn smtp_delivers_text_and_html_with_auth() {
    let dir = tempfile::tempdir().unwrap();
    let server = SmtpServer::start().await;
    server.require_auth("alerts@example-isd.org", "s3cret");
    let p = build(
        dir.path(),
        &smtp_toml(dir.path(), server.port(), Some("s3cret")),
    );
    let mut msg = message(Channel::Email, 7, "parent@example.com");
    msg.body =
        "Lincoln Elementary is in lockdown.\n.A line that starts with a dot.\n\nConfirm here."
            .into();
    let ok = p.send(&msg).await.expect("accepted");
    assert_eq!(
        ok.provider_message_id.as_deref(),
        Some("<klaxon.42.7@example-isd.org>")
    );

    let got = server.received();
    assert_eq!(got.len(), 1, "{:?}", server.transcript());
    let m = &got[0];
    assert_eq!(m.auth_user.as_deref(), Some("alerts@example-isd.org"));
    assert_eq!(m.mail_from, "alerts@example-isd.org");
    assert_eq!(m.rcpt_to, ["parent@example.com"]);
    assert_eq!(
        m.header("Subject").as_deref(),
        Some("Lockdown at Lincoln Elementary")
    );
    assert_eq!(
        m.header("Message-ID").as_deref(),
        Some("<klaxon.42.7@example-isd.org>")
    );
    assert!(m.header("From").unwrap().contains("alerts@example-isd.org"));
    assert!(
        m.header("Content-Type")
            .unwrap()
            .starts_with("multipart/alternative")
    );
    assert!(m.data.contains("Content-Type: text/plain"), "{}", m.data);
    assert!(m.data.contains("Content-Type: text/html"), "{}", m.data);
    // Dot-stuffed by the client, unstuffed by the server: the line is intact.
    assert!(
        m.data.contains("\r\n.A line that starts with a dot."),
        "{}",
        m.data
    );
    assert!(
        m.data
            .contains("href=3D\"https://alerts.example-isd.org/a/tok7\"")
            || m.data
                .contains("href=\"https://alerts.example-isd.org/a/tok7\""),
        "{}",
        m.data
    );
}

#[tokio::test]
async fn smtp_unknown_user_is_permanent() {
    let dir = tempfile::tempdir().unwrap();
    let server = SmtpServer::start().await;
    server.reject_recipient("nobody@example.com");
    let p = build(dir.path(), &smtp_toml(dir.path(), server.port(), None));
    let (code, reason) = expect_permanent(
        p.send(&message(Channel::Email, 1, "nobody@example.com"))
            .await,
    );
    assert_eq!(code, "smtp-5xx", "{reason}");
    assert!(reason.contains("550"), "{reason}");
    assert!(
        !reason.contains("nobody@"),
        "no addresses in reasons: {reason}"
    );
    // The pooled connection is still usable for the next recipient.
    p.send(&message(Channel::Email, 2, "parent@example.com"))
        .await
        .expect("accepted");
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn smtp_temporary_trouble_is_transient() {
    let dir = tempfile::tempdir().unwrap();
    let server = SmtpServer::start().await;
    let p = build(dir.path(), &smtp_toml(dir.path(), server.port(), None));
    server.set_mode(SmtpMode::TempFail);
    let (reason, _) = expect_transient(
        p.send(&message(Channel::Email, 1, "parent@example.com"))
            .await,
    );
    assert!(reason.contains("451"), "{reason}");
    server.set_mode(SmtpMode::Unavailable);
    let p = build(dir.path(), &smtp_toml(dir.path(), server.port(), None));
    let (reason, _) = expect_transient(
        p.send(&message(Channel::Email, 2, "parent@example.com"))
            .await,
    );
    assert!(reason.contains("421"), "{reason}");
    server.set_mode(SmtpMode::Normal);
    p.send(&message(Channel::Email, 3, "parent@example.com"))
        .await
        .expect("recovers");
}

#[tokio::test]
async fn smtp_server_down_or_bad_password_is_transient() {
    let dir = tempfile::tempdir().unwrap();
    // A port that was free a moment ago: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let p = build(dir.path(), &smtp_toml(dir.path(), port, None));
    expect_transient(
        p.send(&message(Channel::Email, 1, "parent@example.com"))
            .await,
    );

    let server = SmtpServer::start().await;
    server.require_auth("alerts@example-isd.org", "right");
    let p = build(
        dir.path(),
        &smtp_toml(dir.path(), server.port(), Some("wrong")),
    );
    let (reason, _) = expect_transient(
        p.send(&message(Channel::Email, 2, "parent@example.com"))
            .await,
    );
    assert!(reason.contains("535"), "{reason}");
    assert!(server.received().is_empty());
}

/// Microsoft 365's refusals of a password sign-in say what to fix: Basic
/// authentication retired (5.7.30), SMTP AUTH off for the tenant (5.7.139).
#[tokio::test]
async fn smtp_password_refusals_by_microsoft_365_say_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let server = SmtpServer::start().await;
    server.require_auth("alerts@example-isd.org", "right");
    let p = build(
        dir.path(),
        &smtp_toml(dir.path(), server.port(), Some("right-but-basic")),
    );
    for (n, reply, code, hint) in [
        (
            1,
            "535 5.7.30 Basic authentication is not supported for Client Submission.",
            "5.7.30",
            "set auth = \"xoauth2\"",
        ),
        (
            2,
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.",
            "5.7.139",
            "enable Authenticated SMTP for the sending mailbox",
        ),
    ] {
        server.refuse_passwords_with(reply);
        let (reason, _) = expect_transient(
            p.send(&message(Channel::Email, n, "parent@example.com"))
                .await,
        );
        assert!(reason.contains(code), "{reason}");
        assert!(reason.contains(hint), "{code}: {reason}");
        // Each code gets its own advice, not the generic sign-in one.
        assert!(!reason.contains("SMTP.SendAsApp"), "{code}: {reason}");
    }
    assert!(server.received().is_empty());
}

#[tokio::test]
async fn smtp_invalid_address_is_permanent_without_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let server = SmtpServer::start().await;
    let p = build(dir.path(), &smtp_toml(dir.path(), server.port(), None));
    let (code, _) = expect_permanent(p.send(&message(Channel::Email, 1, "not an address")).await);
    assert_eq!(code, "invalid-address");
    assert!(server.transcript().is_empty());
}

#[tokio::test]
async fn smtp_starttls_with_private_ca_and_auth() {
    let dir = tempfile::tempdir().unwrap();
    let server = SmtpServer::start_with_starttls().await;
    server.require_auth("alerts@example-isd.org", "s3cret");
    let ca = secret_file(dir.path(), "relay-ca.pem", server.ca_pem().unwrap());
    let starttls = smtp_toml(dir.path(), server.port(), Some("s3cret"))
        .replace(r#"tls = "none""#, r#"tls = "starttls""#);

    // Without the district's CA the certificate is not trusted: nothing is sent.
    let untrusted = build(dir.path(), &starttls);
    let (reason, _) = expect_transient(
        untrusted
            .send(&message(Channel::Email, 1, "parent@example.com"))
            .await,
    );
    assert!(server.received().is_empty(), "{reason}");
    assert!(
        reason.to_lowercase().contains("tls") || reason.contains("certificate"),
        "{reason}"
    );

    let p = build(dir.path(), &format!("{starttls}\nca_file = \"{ca}\""));
    p.send(&message(Channel::Email, 2, "parent@example.com"))
        .await
        .expect("accepted");
    let got = server.received();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls, "sent after STARTTLS");
    assert_eq!(got[0].auth_user.as_deref(), Some("alerts@example-isd.org"));

    // A relay that insists on STARTTLS refuses a plain-text client: transient
    // (a configuration problem; another provider may work), never permanent.
    let plain = build(dir.path(), &smtp_toml(dir.path(), server.port(), None));
    expect_transient(
        plain
            .send(&message(Channel::Email, 3, "parent@example.com"))
            .await,
    );
    assert_eq!(server.received().len(), 1);
}

/// Twenty sends at once over `connections` sessions of a pipelining
/// server that refuses the tenth recipient: that one fails as permanent,
/// the others are accepted. Returns the server to look at.
async fn twenty_sends_one_refused(connections: usize) -> SmtpServer {
    let dir = tempfile::tempdir().unwrap();
    let server = SmtpServer::start().await;
    server.offer_pipelining();
    server.reject_recipient("nobody@example.com");
    let p = std::sync::Arc::new(build(
        dir.path(),
        &format!(
            "{}\nconnections = {connections}",
            smtp_toml(dir.path(), server.port(), None)
        ),
    ));
    let mut sends = tokio::task::JoinSet::new();
    for id in 1..=20 {
        let p = p.clone();
        let to = if id == 10 {
            "nobody@example.com".to_string()
        } else {
            format!("parent{id}@example.com")
        };
        sends.spawn(async move { (id, p.send(&message(Channel::Email, id, &to)).await) });
    }
    while let Some(r) = sends.join_next().await {
        let (id, r) = r.unwrap();
        if id == 10 {
            let (code, reason) = expect_permanent(r);
            assert_eq!(code, "smtp-5xx", "{reason}");
            assert!(reason.contains("550"), "{reason}");
        } else {
            r.expect("accepted");
        }
    }
    let got = server.received();
    assert_eq!(got.len(), 19);
    let mut to: Vec<&str> = got.iter().map(|m| m.rcpt_to[0].as_str()).collect();
    to.sort();
    to.dedup();
    assert_eq!(to.len(), 19, "each message once");
    // One RSET, after the refused recipient; none between good messages.
    let t = server.transcript();
    assert_eq!(t.iter().filter(|l| *l == "RSET").count(), 1);
    assert!(!t.iter().any(|l| l == "NOOP"), "no NOOP per message");
    server
}

#[tokio::test]
async fn smtp_pipelines_over_a_few_kept_connections() {
    let server = twenty_sends_one_refused(2).await;
    assert!(
        server.received().iter().all(|m| m.pipelined),
        "MAIL, RCPT, DATA in one write"
    );
    assert!(server.sessions() <= 2, "{} sessions", server.sessions());
    assert_eq!(
        server
            .transcript()
            .iter()
            .filter(|l| l.starts_with("EHLO"))
            .count(),
        server.sessions()
    );
}

/// Under load the next message's MAIL, RCPT and DATA go in the same write
/// as the last one's body (RFC 2920), and a refusal in a carried envelope
/// touches only its own message.
#[tokio::test]
async fn smtp_writes_the_next_envelope_behind_each_body() {
    let server = twenty_sends_one_refused(1).await;
    assert_eq!(server.sessions(), 1);
    let carried = server.received().iter().filter(|m| m.carried).count();
    assert!(
        carried >= 15,
        "{carried} of 19 envelopes written behind the previous body"
    );
}

/// A relay that ends a session after a few messages (421 to the next MAIL):
/// the message whose envelope met the 421 is sent on a new session, not
/// failed, and nothing is sent twice; with and without PIPELINING.
#[tokio::test]
async fn smtp_session_closed_by_the_relay_loses_nothing() {
    for pipelining in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let server = SmtpServer::start().await;
        if pipelining {
            server.offer_pipelining();
        }
        server.limit_messages_per_session(3);
        let p = std::sync::Arc::new(build(
            dir.path(),
            &format!(
                "{}\nconnections = 1",
                smtp_toml(dir.path(), server.port(), None)
            ),
        ));
        let mut sends = tokio::task::JoinSet::new();
        for id in 1..=10 {
            let p = p.clone();
            let to = format!("parent{id}@example.com");
            sends.spawn(async move { p.send(&message(Channel::Email, id, &to)).await });
        }
        while let Some(r) = sends.join_next().await {
            r.unwrap().expect("accepted");
        }
        let got = server.received();
        let mut to: Vec<&str> = got.iter().map(|m| m.rcpt_to[0].as_str()).collect();
        to.sort();
        to.dedup();
        assert_eq!(to.len(), 10, "pipelining {pipelining}: each message once");
        assert_eq!(got.len(), 10, "pipelining {pipelining}");
        assert_eq!(server.sessions(), 4, "pipelining {pipelining}");
    }
}

#[tokio::test]
async fn smtp_mail_manners() {
    let dir = tempfile::tempdir().unwrap();
    let server = SmtpServer::start().await;
    let p = build(dir.path(), &smtp_toml(dir.path(), server.port(), None));
    let mut msg = message(Channel::Email, 5, "parent@example.com");
    msg.language = "es".into();
    p.send(&msg).await.expect("accepted");
    let mut routine = message(Channel::Email, 6, "parent@example.com");
    routine.severity = klaxon::playbook::Severity::Routine;
    p.send(&routine).await.expect("accepted");

    let got = server.received();
    let (emergency, routine) = (&got[0], &got[1]);
    assert_eq!(
        emergency.header("Message-ID").as_deref(),
        Some("<klaxon.42.5@example-isd.org>")
    );
    let date = emergency.header("Date").expect("Date");
    jiff::fmt::rfc2822::parse(&date).expect("an RFC 5322 date");
    assert_eq!(
        emergency.header("Auto-Submitted").as_deref(),
        Some("auto-generated")
    );
    assert_eq!(emergency.header("Content-Language").as_deref(), Some("es"));
    assert_eq!(routine.header("Content-Language").as_deref(), Some("en"));
    assert!(emergency.data.contains("Content-Type: text/plain"));
    assert!(emergency.data.contains("Content-Type: text/html"));
    assert_eq!(
        emergency.header("List-Unsubscribe"),
        None,
        "an emergency is not a mailing list"
    );
    assert_eq!(
        routine.header("List-Unsubscribe").as_deref(),
        Some("<mailto:alerts@example-isd.org?subject=unsubscribe>")
    );
}

/// The message as a mail reader sees it: Python's own `email` package
/// (the standard library's RFC 5322 / MIME parser, not ours) reads what the
/// server received and gives back the decoded subject, sender and parts.
#[tokio::test]
async fn smtp_messages_read_back_with_an_independent_mime_parser() {
    let dir = tempfile::tempdir().unwrap();
    let server = SmtpServer::start().await;
    let p = build(dir.path(), &smtp_toml(dir.path(), server.port(), None));
    let mut msg = message(Channel::Email, 9, "parent@example.com");
    msg.language = "es".into();
    msg.subject =
        "Cierre de emergencia: Escuela Lincoln — confirme que recibió este aviso, por favor".into();
    msg.body = format!(
        "La escuela está cerrada.\n.Una línea con punto.\nUna línea muy larga: {}\n\nConfirme: {PUBLIC}/a/tok9",
        "niños a salvo ".repeat(12)
    );
    p.send(&msg).await.expect("accepted");
    let raw = server.received()[0].data.clone();
    let script = r#"
import sys, json, email, email.policy
m = email.message_from_string(sys.stdin.read(), policy=email.policy.default)
print(json.dumps({
    "subject": str(m["subject"]),
    "from": str(m["from"]),
    "defects": len(m.defects) + sum(len(p.defects) for p in m.walk()),
    "text": m.get_body(("plain",)).get_content(),
    "html": m.get_body(("html",)).get_content(),
}))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(raw.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["subject"], msg.subject.as_str());
    assert_eq!(got["from"], "Example ISD Alerts <alerts@example-isd.org>");
    assert_eq!(got["defects"], 0, "{raw}");
    assert_eq!(
        got["text"]
            .as_str()
            .unwrap()
            .replace("\r\n", "\n")
            .trim_end(),
        msg.body
    );
    let html = got["html"].as_str().unwrap();
    assert!(html.contains("<p>La escuela está cerrada.<br>"), "{html}");
    assert!(
        html.contains(&format!("href=\"{PUBLIC}/a/tok9\"")),
        "{html}"
    );
}

fn xoauth2_toml(dir: &Path, smtp_port: u16, token_url: &str, grant: &str) -> String {
    format!(
        r#"{}
        connections = 1
        username = "alerts@example-isd.org"
        auth = "xoauth2"
        token_url = "{token_url}"
        {grant}
        "#,
        smtp_toml(dir, smtp_port, None)
    )
}

#[tokio::test]
async fn smtp_xoauth2_client_credentials_success_refusal_and_refresh() {
    let dir = tempfile::tempdir().unwrap();
    const SCOPE: &str = "https://outlook.office365.com/.default";
    let idp = OAuthServer::start(Expect::ClientCredentials {
        client_id: "app-1234".into(),
        secret: "app-s3cret".into(),
        scope: SCOPE.into(),
    })
    .await;
    let server = SmtpServer::start().await;
    server.accept_bearer("alerts@example-isd.org", &["tok-1"]);
    let secret = secret_file(dir.path(), "client-secret", "app-s3cret");
    let grant =
        format!("client_id = \"app-1234\"\nclient_secret_file = \"{secret}\"\nscope = \"{SCOPE}\"");
    let toml = xoauth2_toml(dir.path(), server.port(), &idp.url(), &grant);

    // Success: the token from the endpoint signs the session in.
    let p = build(dir.path(), &toml);
    p.send(&message(Channel::Email, 1, "parent@example.com"))
        .await
        .expect("accepted");
    let got = server.received();
    assert_eq!(got[0].auth_mechanism.as_deref(), Some("XOAUTH2"));
    assert_eq!(got[0].auth_user.as_deref(), Some("alerts@example-isd.org"));
    assert_eq!(idp.issued(), 1);

    // Refusal: a provider whose token the relay refuses (tok-2) reports a
    // provider problem that says what to fix, and sends nothing.
    let refused = build(dir.path(), &toml);
    let (reason, _) = expect_transient(
        refused
            .send(&message(Channel::Email, 2, "parent@example.com"))
            .await,
    );
    assert!(
        reason.contains("535") && reason.contains("5.7.3"),
        "{reason}"
    );
    assert!(reason.contains("SMTP.SendAsApp"), "{reason}");
    assert_eq!(server.received().len(), 1);

    // Refresh: the refused token is dropped; the next session gets a new one.
    server.accept_bearer("alerts@example-isd.org", &["tok-3"]);
    refused
        .send(&message(Channel::Email, 3, "parent@example.com"))
        .await
        .expect("accepted with a fresh token");
    assert_eq!(idp.issued(), 3);
    assert_eq!(server.received().len(), 2);

    // A wrong client secret: the token endpoint's refusal is the reason.
    let bad = secret_file(dir.path(), "bad-secret", "nope");
    let p = build(dir.path(), &toml.replace(&secret, &bad));
    let (reason, _) = expect_transient(
        p.send(&message(Channel::Email, 4, "parent@example.com"))
            .await,
    );
    assert!(reason.contains("invalid_client"), "{reason}");
    assert_eq!(idp.refusals(), ["invalid_client"]);
}

#[tokio::test]
async fn oauth_tokens_are_cached_and_refreshed_before_expiry() {
    use klaxon::deliver::providers::smtp_oauth::{Grant, TokenSource};
    let idp = OAuthServer::start(Expect::ClientCredentials {
        client_id: "app".into(),
        secret: "s".into(),
        scope: "scope".into(),
    })
    .await;
    idp.set_expires_in(2);
    let tokens = TokenSource::new(
        reqwest::Client::new(),
        idp.url(),
        "scope".into(),
        Grant::ClientCredentials {
            client_id: "app".into(),
            secret: "s".into(),
        },
    );
    assert_eq!(tokens.token().await.unwrap(), "tok-1");
    assert_eq!(tokens.token().await.unwrap(), "tok-1", "cached");
    assert_eq!(idp.issued(), 1);
    // Half its two-second life left: replaced before it expires.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(tokens.token().await.unwrap(), "tok-2");
    assert_eq!(idp.issued(), 2);
}

#[tokio::test]
async fn smtp_xoauth2_google_service_account_jwt() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let sa = "klaxon@example-isd.iam.gserviceaccount.com";
    let idp = OAuthServer::start(Expect::Jwt {
        iss: sa.into(),
        sub: "alerts@example-isd.org".into(),
        scope: "https://mail.google.com/".into(),
        public_key: key.public_key_raw().to_vec(),
    })
    .await;
    // Google's JSON key file, as the console gives it.
    let key_json = serde_json::json!({
        "type": "service_account",
        "client_email": sa,
        "private_key": key.serialize_pem(),
        "token_uri": idp.url(),
    })
    .to_string();
    let key_file = secret_file(dir.path(), "sa.json", &key_json);
    let server = SmtpServer::start().await;
    server.accept_bearer("alerts@example-isd.org", &["tok-1"]);
    let grant = format!("private_key_file = \"{key_file}\"\nscope = \"https://mail.google.com/\"");
    let p = build(
        dir.path(),
        &xoauth2_toml(dir.path(), server.port(), &idp.url(), &grant),
    );
    p.send(&message(Channel::Email, 1, "parent@example.com"))
        .await
        .expect("accepted");
    assert_eq!(idp.refusals(), Vec::<String>::new());
    assert_eq!(
        server.received()[0].auth_mechanism.as_deref(),
        Some("XOAUTH2")
    );

    // Another key signs: the endpoint refuses the assertion.
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let forged = secret_file(
        dir.path(),
        "forged.json",
        &key_json.replace(
            &key.serialize_pem().replace('\n', "\\n"),
            &other.serialize_pem().replace('\n', "\\n"),
        ),
    );
    let p = build(
        dir.path(),
        &xoauth2_toml(
            dir.path(),
            server.port(),
            &idp.url(),
            &grant.replace(&key_file, &forged),
        ),
    );
    expect_transient(
        p.send(&message(Channel::Email, 2, "parent@example.com"))
            .await,
    );
    assert_eq!(idp.refusals(), ["invalid_grant: bad signature"]);
}

#[test]
fn xoauth2_config_problems_name_keys() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\nauth = \"xoauth2\"\ntoken_url = \"http://login.example.com/token\"",
        smtp_toml(dir.path(), 25, Some("pw"))
    );
    let table: toml::Table = toml::from_str(&text).unwrap();
    let mut issues = Issues::default();
    ProviderConfig::parse("providers[0]", table, &mut issues);
    let keys: Vec<_> = issues.list.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "providers[0].password_env",
            "providers[0].token_url",
            "providers[0].scope",
            "providers[0].client_secret_env"
        ],
        "{issues:?}"
    );
}

// ---------------------------------------------------------------- SendGrid

fn sendgrid(dir: &Path, server: &SendGridServer, key: &str) -> Provider {
    let key_file = secret_file(dir, "sendgrid-key", key);
    build(
        dir,
        &format!(
            r#"
            name = "sendgrid"
            kind = "sendgrid"
            channels = ["email"]
            api_base = "{}"
            api_key_file = "{key_file}"
            from = "Example ISD Alerts <alerts@example-isd.org>"
            max_per_second = 50
            "#,
            server.url()
        ),
    )
}

#[tokio::test]
async fn sendgrid_accepts_with_message_id() {
    let dir = tempfile::tempdir().unwrap();
    let server = SendGridServer::start("SG.key").await;
    let p = sendgrid(dir.path(), &server, "SG.key");
    assert_eq!(p.effective_rate(), Some(50.0));
    let ok = p
        .send(&message(Channel::Email, 4, "parent@example.com"))
        .await
        .expect("accepted");
    assert!(server.violations().is_empty(), "{:?}", server.violations());
    let sent = server.sent();
    assert_eq!(
        ok.provider_message_id.as_deref(),
        Some(sent[0].message_id.as_str())
    );
    let b = &sent[0].body;
    assert_eq!(
        b["personalizations"][0]["to"][0]["email"],
        "parent@example.com"
    );
    assert_eq!(b["from"]["email"], "alerts@example-isd.org");
    assert_eq!(b["from"]["name"], "Example ISD Alerts");
    assert_eq!(b["subject"], "Lockdown at Lincoln Elementary");
    assert_eq!(b["content"][0]["type"], "text/plain");
    assert_eq!(b["content"][1]["type"], "text/html");
    assert!(
        b["content"][1]["value"]
            .as_str()
            .unwrap()
            .contains("https://alerts.example-isd.org/a/tok4")
    );
    assert_eq!(b["custom_args"]["delivery_id"], "4");
}

#[tokio::test]
async fn sendgrid_throttling_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = SendGridServer::start("SG.key").await;
    let p = sendgrid(dir.path(), &server, "SG.key");

    server.faults().fail_with_429(1, 5);
    let (_, retry) = expect_transient(
        p.send(&message(Channel::Email, 1, "parent@example.com"))
            .await,
    );
    assert_eq!(retry, Some(Duration::from_secs(5)));

    server.faults().fail_with_500(1);
    expect_transient(
        p.send(&message(Channel::Email, 2, "parent@example.com"))
            .await,
    );

    server.reject_address("bounced@example.com");
    let (code, reason) = expect_permanent(
        p.send(&message(Channel::Email, 3, "bounced@example.com"))
            .await,
    );
    assert_eq!(code, "invalid-address", "{reason}");

    server.faults().drop_connections(1);
    expect_transient(
        p.send(&message(Channel::Email, 4, "parent@example.com"))
            .await,
    );

    assert!(server.sent().is_empty());
    assert!(server.violations().is_empty(), "{:?}", server.violations());
}

#[tokio::test]
async fn sendgrid_bad_key_is_transient() {
    let dir = tempfile::tempdir().unwrap();
    let server = SendGridServer::start("SG.key").await;
    let p = sendgrid(dir.path(), &server, "SG.revoked");
    let (reason, _) = expect_transient(
        p.send(&message(Channel::Email, 1, "parent@example.com"))
            .await,
    );
    assert!(reason.contains("401"), "{reason}");
}

// ---------------------------------------------------------------- Config

/// The provider sections of the brief's example config, verbatim.
#[test]
fn brief_example_config_parses() {
    let text = r#"
[server]
listen = "127.0.0.1:8080"
public_url = "https://alerts.example-isd.org"

[store]
dir = "/var/lib/klaxon"

[[providers]]
name = "twilio-main"
kind = "twilio"
channels = ["sms", "voice"]
api_base = "https://api.twilio.com"
account_sid = "AC0123456789abcdef0123456789abcdef"
auth_token_env = "KLAXON_TWILIO_TOKEN"
from = ["+15555550100"]
max_per_second = 1

[[providers]]
name = "district-relay"
kind = "smtp"
channels = ["email"]
host = "smtp.example-isd.org"
port = 587
tls = "starttls"
username = "alerts@example-isd.org"
password_env = "KLAXON_SMTP_PASSWORD"
from = "Example ISD Alerts <alerts@example-isd.org>"
max_per_second = 20

[[providers]]
name = "district-sendgrid"
kind = "sendgrid"
channels = ["email"]
api_key_env = "KLAXON_SENDGRID_KEY"
from = "Example ISD Alerts <alerts@example-isd.org>"

[[providers]]
name = "demo-log"
kind = "log"
channels = ["sms", "voice", "email"]
path = "outbox.jsonl"
"#;
    let config = klaxon::config::Config::from_str(text, Path::new("/etc/klaxon/klaxon.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let kinds: Vec<_> = config.providers.iter().map(|p| p.kind()).collect();
    assert_eq!(kinds, ["twilio", "smtp", "sendgrid", "log"]);
    let common = config.providers[0].common();
    assert_eq!(common.max_per_second, Some(1.0));

    // A kind cannot carry a channel it does not support.
    let bad = text.replace(
        r#"channels = ["email"]
host"#,
        r#"channels = ["sms"]
host"#,
    );
    let err = klaxon::config::Config::from_str(&bad, Path::new("/etc/klaxon/klaxon.toml"))
        .expect_err("refused");
    assert!(err.to_string().contains("providers[1]"), "{err}");
}
