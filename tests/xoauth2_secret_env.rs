//! XOAUTH2 with the client secret from the environment (`client_secret_env`,
//! as a systemd unit's `Environment=` or `LoadCredential=` wrapper gives it):
//! the secret reaches the token endpoint, and the token signs the SMTP
//! session in. Its own test binary, so that setting the variable races with
//! no other test.

mod support;

use std::time::Duration;

use klaxon::config::Issues;
use klaxon::deliver::message::OutboundMessage;
use klaxon::deliver::providers::{Provider, ProviderConfig, ProviderContext};
use klaxon::domain::Channel;
use support::oauth_server::{Expect, OAuthServer};
use support::smtp_server::SmtpServer;

const VAR: &str = "KLAXON_TEST_M365_CLIENT_SECRET";
const SCOPE: &str = "https://outlook.office365.com/.default";

#[test]
fn the_client_secret_from_the_environment_gets_the_token_that_signs_in() {
    // SAFETY: the only test in this binary, and no thread of ours has
    // started yet: nothing reads the environment while it is written.
    unsafe { std::env::set_var(VAR, "env-s3cret\n") };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let idp = OAuthServer::start(Expect::ClientCredentials {
        client_id: "app-1234".into(),
        secret: "env-s3cret".into(),
        scope: SCOPE.into(),
    })
    .await;
    let server = SmtpServer::start().await;
    server.accept_bearer("alerts@example-isd.org", &["tok-1"]);
    let section = |var: &str| {
        format!(
            r#"
            name = "m365"
            kind = "smtp"
            channels = ["email"]
            host = "127.0.0.1"
            port = {}
            tls = "none"
            from = "Example ISD Alerts <alerts@example-isd.org>"
            timeout = "2s"
            connections = 1
            username = "alerts@example-isd.org"
            auth = "xoauth2"
            token_url = "{}"
            client_id = "app-1234"
            client_secret_env = "{var}"
            scope = "{SCOPE}"
            "#,
            server.port(),
            idp.url()
        )
    };
    let ctx = ProviderContext {
        public_url: "https://alerts.example-isd.org".into(),
        base_dir: dir.path().to_path_buf(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_millis(800))
            .build()
            .unwrap(),
    };
    let build = |text: &str| -> (Option<Provider>, Vec<(String, String)>) {
        let table: toml::Table = toml::from_str(text).expect("test TOML");
        let mut issues = Issues::default();
        let p = ProviderConfig::parse("providers[0]", table, &mut issues)
            .and_then(|c| Provider::build("providers[0]", &c, &ctx, &mut issues));
        let list = issues
            .list
            .into_iter()
            .map(|i| (i.key, i.message))
            .collect();
        (p, list)
    };

    let (p, issues) = build(&section(VAR));
    assert!(issues.is_empty(), "{issues:?}");
    let p = p.expect("provider built");
    p.send(&OutboundMessage {
        delivery_id: 1,
        alert_id: 42,
        channel: Channel::Email,
        to: "parent@example.com".into(),
        language: "en".into(),
        subject: "Lockdown at Lincoln Elementary".into(),
        body: "Lincoln Elementary is in lockdown.".into(),
        html: None,
        ack_url: "https://alerts.example-isd.org/a/tok1".into(),
        speech: "Lincoln Elementary is in lockdown.".into(),
        severity: klaxon::playbook::Severity::Emergency,
        bounce_tag: None,
    })
    .await
    .expect("accepted with the token the environment's secret obtained");
    assert_eq!(idp.issued(), 1);
    assert!(idp.refusals().is_empty(), "{:?}", idp.refusals());
    let got = server.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].auth_mechanism.as_deref(), Some("XOAUTH2"));

    // A variable that is not set is a config problem naming the key.
    let (p, issues) = build(&section("KLAXON_TEST_NOT_SET_ANYWHERE"));
    assert!(p.is_none());
    assert_eq!(
        issues.first().map(|i| i.0.as_str()),
        Some("providers[0].client_secret_env"),
        "{issues:?}"
    );
    assert!(
        issues[0].1.contains("KLAXON_TEST_NOT_SET_ANYWHERE"),
        "{issues:?}"
    );
}
