//! The `smtp` provider: email through the district's own relay, over our
//! own pooled, pipelining client (`smtp_client`; plain, STARTTLS or implicit
//! TLS, optional AUTH). lettre builds the MIME message.
//!
//! Each message is multipart/alternative (text and HTML) with one recipient,
//! so an SMTP reply is always about that recipient: a 5xx refusal of the
//! address is permanent, anything the relay may get over (4xx, network,
//! time-out, refused credentials) is transient.

use std::path::PathBuf;

use std::sync::Arc;

use lettre::message::Mailbox;
use serde::Deserialize;
use tokio_rustls::rustls;

use crate::config::{Dur, Issues, relative_to};
use crate::deliver::bounce::{BounceMailbox, BouncesConfig, ImapLogin, ImapTls, RETURN_PATH_LOCAL};
use crate::deliver::message::{Accepted, OutboundMessage, SendError};
use crate::deliver::providers::dkim::DkimSigner;
use crate::deliver::providers::mime;
use crate::deliver::providers::smtp_client::{
    ClientConfig, ClientError, Login, Security, SmtpClient, Step,
};
use crate::deliver::providers::smtp_oauth::{Grant, TokenSource, read_signing_key};
use crate::deliver::providers::{ProviderContext, redact, revalidate};
use crate::domain::Channel;
use crate::markup::escape;
use crate::playbook::Severity;

/// SMTP replies that mean our credentials were refused: a provider problem,
/// not an address problem.
const AUTH_CODES: &[u16] = &[530, 534, 535, 538];

/// Most sessions a provider may keep open; relays limit sessions per client
/// (Exchange Online: 3 per mailbox, Postfix: 50 by default).
const MAX_CONNECTIONS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain text; only for a relay on the same host or a test server.
    None,
    /// Upgrade with STARTTLS, and refuse to continue without it.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// How klaxon signs in to the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// `username` with `password_env` / `_file`, or no AUTH without them.
    #[default]
    Password,
    /// SASL XOAUTH2 with an OAuth 2.0 token (Microsoft 365, Google Workspace).
    Xoauth2,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub name: String,
    pub channels: Vec<Channel>,
    #[serde(default)]
    pub max_per_second: Option<f64>,
    pub host: String,
    /// Defaults by `tls`: 25 for none, 587 for starttls, 465 for tls.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: TlsMode,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The `From:` mailbox, e.g. `"Example ISD Alerts <alerts@example-isd.org>"`.
    pub from: String,
    /// Time-out for connecting and for each SMTP command.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Extra CA certificates (PEM) to trust for the relay, for a district
    /// whose relay has a certificate from its own CA. The system's roots are
    /// trusted as well.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// SMTP sessions kept open to the relay at once; each carries one message
    /// at a time and, where the relay offers PIPELINING, writes the next
    /// waiting message's envelope behind the current body.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// `"password"` (default) or `"xoauth2"`.
    #[serde(default)]
    pub auth: AuthMode,
    /// XOAUTH2: the OAuth token endpoint.
    #[serde(default)]
    pub token_url: Option<String>,
    /// XOAUTH2: the app registration's client id (Microsoft), or the service
    /// account's address (Google; read from a JSON key file when absent).
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret_env: Option<String>,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// XOAUTH2 with a service account (Google): its key, the JSON key file
    /// or a PEM private key; the token is requested with a signed JWT.
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// XOAUTH2: the scope asked for, e.g. `https://outlook.office365.com/.default`.
    #[serde(default)]
    pub scope: Option<String>,
    /// `[providers.bounces]`: read bounces (DSNs) from this IMAP mailbox and
    /// send with a VERP return path that leads there.
    #[serde(default)]
    pub bounces: Option<Box<BouncesConfig>>,
    /// DKIM signing, for a relay that does not sign: the RSA private key
    /// (PEM), the selector (`SELECTOR._domainkey.DOMAIN` in DNS) and the
    /// signing domain (`d=`, normally the From domain). All three or none.
    #[serde(default)]
    pub dkim_key_file: Option<PathBuf>,
    #[serde(default)]
    pub dkim_selector: Option<String>,
    #[serde(default)]
    pub dkim_domain: Option<String>,
}

fn default_timeout() -> Dur {
    Dur::secs(20)
}

fn default_connections() -> usize {
    16
}

impl SmtpConfig {
    pub fn validate(&self, prefix: &str, issues: &mut Issues) {
        if self.host.trim().is_empty() {
            issues.push(format!("{prefix}.host"), "empty host name");
        }
        if let Err(e) = self.from.parse::<Mailbox>() {
            issues.push(
                format!("{prefix}.from"),
                format!(
                    "`{}` is not a mailbox like \"Alerts <alerts@example.org>\": {e}",
                    self.from
                ),
            );
        }
        if self.port == Some(0) {
            issues.push(format!("{prefix}.port"), "port 0 is not a port");
        }
        let has_password = self.password_env.is_some() || self.password_file.is_some();
        if has_password && self.username.is_none() {
            issues.push(
                format!("{prefix}.username"),
                "a password is set but no username",
            );
        }
        self.validate_oauth(prefix, issues, has_password);
        if self.timeout.0.is_zero() {
            issues.push(format!("{prefix}.timeout"), "must be longer than 0s");
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.connections) {
            issues.push(
                format!("{prefix}.connections"),
                format!("must be between 1 and {MAX_CONNECTIONS}"),
            );
        }
        if self.ca_file.is_some() && self.tls == TlsMode::None {
            issues.push(
                format!("{prefix}.ca_file"),
                "a CA file only matters with tls = \"starttls\" or \"tls\"",
            );
        }
        self.validate_dkim(prefix, issues);
        if let Some(b) = &self.bounces {
            b.validate(&format!("{prefix}.bounces"), issues);
            if b.auth == AuthMode::Xoauth2 && self.auth != AuthMode::Xoauth2 {
                issues.push(
                    format!("{prefix}.bounces.auth"),
                    "xoauth2 for the bounce mailbox uses the provider's OAuth settings; set auth = \"xoauth2\" on the provider too",
                );
            }
        }
    }

    fn validate_dkim(&self, prefix: &str, issues: &mut Issues) {
        let set = [
            ("dkim_key_file", self.dkim_key_file.is_some()),
            ("dkim_selector", self.dkim_selector.is_some()),
            ("dkim_domain", self.dkim_domain.is_some()),
        ];
        if set.iter().any(|(_, s)| *s) {
            for (key, is_set) in set {
                if !is_set {
                    issues.push(
                        format!("{prefix}.{key}"),
                        "DKIM needs dkim_key_file, dkim_selector and dkim_domain together",
                    );
                }
            }
        }
        let token = |v: &str| {
            !v.is_empty()
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        };
        for (key, v) in [
            ("dkim_selector", &self.dkim_selector),
            ("dkim_domain", &self.dkim_domain),
        ] {
            if let Some(v) = v
                && !token(v)
            {
                issues.push(
                    format!("{prefix}.{key}"),
                    format!("`{v}`: letters, digits, dots, hyphens and underscores only"),
                );
            }
        }
    }

    fn validate_oauth(&self, prefix: &str, issues: &mut Issues, has_password: bool) {
        let has_secret = self.client_secret_env.is_some() || self.client_secret_file.is_some();
        let has_key = self.private_key_file.is_some();
        if self.auth == AuthMode::Password {
            for (key, set) in [
                ("token_url", self.token_url.is_some()),
                ("client_id", self.client_id.is_some()),
                ("client_secret_env", self.client_secret_env.is_some()),
                ("client_secret_file", self.client_secret_file.is_some()),
                ("private_key_file", has_key),
                ("scope", self.scope.is_some()),
            ] {
                if set {
                    issues.push(
                        format!("{prefix}.{key}"),
                        "only used with auth = \"xoauth2\"",
                    );
                }
            }
            return;
        }
        if self.username.is_none() {
            issues.push(
                format!("{prefix}.username"),
                "auth = \"xoauth2\" needs the mailbox to send as",
            );
        }
        if has_password {
            issues.push(
                format!("{prefix}.password_env"),
                "auth = \"xoauth2\" signs in with a token, not a password; remove the password",
            );
        }
        match self.token_url.as_deref() {
            None => issues.push(
                format!("{prefix}.token_url"),
                "missing; e.g. https://login.microsoftonline.com/<tenant id>/oauth2/v2.0/token or https://oauth2.googleapis.com/token",
            ),
            Some(u) if !(u.starts_with("https://") || is_loopback_http(u)) => issues.push(
                format!("{prefix}.token_url"),
                format!("`{u}` must be an https:// URL (plain http only to 127.0.0.1 or localhost)"),
            ),
            Some(_) => {}
        }
        if self.scope.as_deref().is_none_or(|s| s.trim().is_empty()) {
            issues.push(
                format!("{prefix}.scope"),
                "missing; https://outlook.office365.com/.default for Microsoft 365, https://mail.google.com/ for Google",
            );
        }
        match (has_secret, has_key) {
            (false, false) => issues.push(
                format!("{prefix}.client_secret_env"),
                "auth = \"xoauth2\" needs client_secret_env / client_secret_file (Microsoft 365) or private_key_file (Google service account)",
            ),
            (true, true) => issues.push(
                format!("{prefix}.private_key_file"),
                "set either a client secret or a private key, not both",
            ),
            (true, false) if self.client_id.is_none() => issues.push(
                format!("{prefix}.client_id"),
                "missing; the app registration's application (client) id",
            ),
            _ => {}
        }
    }

    fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            TlsMode::None => 25,
            TlsMode::Starttls => 587,
            TlsMode::Tls => 465,
        })
    }
}

pub struct SmtpProvider {
    name: String,
    client: SmtpClient,
    from: Mailbox,
    /// `From:` as header text, formatted once.
    from_header: String,
    max_per_second: Option<f64>,
    /// With `[providers.bounces]`: the mailbox and the return path's domain.
    bounces: Option<Arc<BounceMailbox>>,
    return_path_domain: Option<String>,
    dkim: Option<DkimSigner>,
}

impl SmtpProvider {
    pub fn build(
        prefix: &str,
        cfg: &SmtpConfig,
        ctx: &ProviderContext,
        issues: &mut Issues,
    ) -> Option<SmtpProvider> {
        let before = issues.list.len();
        let valid = revalidate(issues, |i| cfg.validate(prefix, i));
        let password = ctx.secret(
            prefix,
            "password",
            cfg.password_env.as_deref(),
            cfg.password_file.as_ref(),
            cfg.username.is_some() && cfg.auth == AuthMode::Password,
            issues,
        );
        let security = match tls_config(
            prefix,
            cfg.tls != TlsMode::None,
            cfg.ca_file.as_ref(),
            ctx,
            issues,
        ) {
            None => return None,
            Some(None) => Security::Plain,
            Some(Some(tls)) => match cfg.tls {
                TlsMode::Tls => Security::Implicit(tls),
                _ => Security::StartTls(tls),
            },
        };
        let from = cfg.from.parse::<Mailbox>().ok();
        let dkim = match (&cfg.dkim_key_file, &cfg.dkim_domain, &cfg.dkim_selector) {
            (Some(file), Some(domain), Some(selector)) => {
                let path = relative_to(&ctx.base_dir, file);
                match DkimSigner::from_file(&path, domain, selector) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        issues.push(format!("{prefix}.dkim_key_file"), e.to_string());
                        None
                    }
                }
            }
            _ => None,
        };
        if !valid || issues.list.len() > before {
            return None;
        }
        let from = from?;
        let tokens = if cfg.auth == AuthMode::Xoauth2 {
            token_source(prefix, cfg, ctx, issues)
        } else {
            None
        };
        if issues.list.len() > before {
            return None;
        }
        let tokens = tokens.map(Arc::new);
        let bounces = match &cfg.bounces {
            Some(b) => Some(Arc::new(bounce_mailbox(
                prefix,
                cfg,
                b,
                tokens.clone(),
                ctx,
                issues,
            )?)),
            None => None,
        };
        let return_path_domain = cfg.bounces.as_ref().map(|b| {
            b.return_path_domain
                .clone()
                .unwrap_or_else(|| from.email.domain().to_string())
        });
        let login = match (&cfg.username, password, tokens) {
            (Some(user), _, Some(tokens)) => Login::XOAuth2 {
                user: user.clone(),
                tokens,
            },
            (Some(user), Some(password), None) => Login::Password {
                user: user.clone(),
                password: password.expose().to_string(),
            },
            _ => Login::None,
        };
        let client = SmtpClient::new(ClientConfig {
            host: cfg.host.clone(),
            port: cfg.port(),
            security,
            login,
            helo_name: helo_name(&from),
            timeout: cfg.timeout.0,
            connections: cfg.connections,
        });
        Some(SmtpProvider {
            name: cfg.name.clone(),
            client,
            from_header: from.to_string(),
            from,
            max_per_second: cfg.max_per_second,
            bounces,
            return_path_domain,
            dkim,
        })
    }

    /// The bounce mailbox to poll, with `[providers.bounces]`.
    pub fn bounces(&self) -> Option<Arc<BounceMailbox>> {
        self.bounces.clone()
    }

    /// The envelope sender: the VERP return path when bounces are read,
    /// else the `From:` address.
    fn return_path(&self, msg: &OutboundMessage) -> String {
        match (&self.return_path_domain, &msg.bounce_tag) {
            (Some(domain), Some(tag)) => format!("{RETURN_PATH_LOCAL}+{tag}@{domain}"),
            _ => self.from.email.to_string(),
        }
    }

    pub fn max_per_second(&self) -> Option<f64> {
        self.max_per_second
    }

    pub async fn send(&self, msg: &OutboundMessage) -> Result<Accepted, SendError> {
        if msg.channel != Channel::Email {
            return Err(SendError::Permanent {
                code: "unsupported-channel".into(),
                reason: format!("provider `{}` only sends email", self.name),
            });
        }
        let to: Mailbox = msg.to.parse().map_err(|e| SendError::Permanent {
            code: "invalid-address".into(),
            reason: format!("not an email address: {e}"),
        })?;
        let message_id = message_id(msg, &self.from);
        let mut data = build_message(msg, &self.from, to.clone(), &message_id)?;
        if let Some(dkim) = &self.dkim {
            data = dkim
                .sign(&data, crate::store::now_ms() / 1000)
                .map_err(|reason| SendError::Permanent {
                    code: "invalid-message".into(),
                    reason,
                })?;
        }
        tracing::debug!(provider = %self.name, delivery_id = msg.delivery_id, to = %msg.to, "Sending email over SMTP.");
        let return_path = self.return_path(msg);
        match self
            .client
            .send(&return_path, to.email.as_ref(), data)
            .await
        {
            Ok(_) => Ok(Accepted {
                provider_message_id: Some(message_id),
            }),
            Err(e) => redact(Err(classify(&e)), &msg.to),
        }
    }

    /// The `From:` header as sent, for logs and tests.
    pub fn from_header(&self) -> &str {
        &self.from_header
    }
}

/// The message as sent: headers for mail software (Message-ID, Date,
/// Auto-Submitted, Content-Language, List-Unsubscribe for routine notices),
/// a text part and an HTML part. Built once per recipient.
pub fn build_message(
    msg: &OutboundMessage,
    from: &Mailbox,
    to: Mailbox,
    message_id: &str,
) -> Result<Vec<u8>, SendError> {
    let html = match &msg.html {
        Some(h) => std::borrow::Cow::Borrowed(h.as_str()),
        None => std::borrow::Cow::Owned(render_html(msg)),
    };
    // RFC 2369 / 8058 ask bulk senders for it; an emergency notice must
    // never look like something one can unsubscribe from.
    let unsubscribe = (msg.severity == Severity::Routine)
        .then(|| format!("<mailto:{}?subject=unsubscribe>", from.email));
    let from_header = mime::mailbox(from.name.as_deref(), from.email.as_ref());
    let to_header = mime::mailbox(to.name.as_deref(), to.email.as_ref());
    Ok(mime::Mime {
        from: &from_header,
        to: &to_header,
        subject: &msg.subject,
        message_id,
        language: is_language_tag(&msg.language).then_some(msg.language.as_str()),
        list_unsubscribe: unsubscribe.as_deref(),
        text: &msg.body,
        html: &html,
        date: crate::store::now_ms() / 1000,
    }
    .render())
}

/// A BCP 47 tag as we store them ("en", "es-MX", "zh-Hant"): letters, digits
/// and hyphens only, so it cannot inject into a header.
fn is_language_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 35
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The token source for `auth = "xoauth2"`; problems go to `issues`.
fn token_source(
    prefix: &str,
    cfg: &SmtpConfig,
    ctx: &ProviderContext,
    issues: &mut Issues,
) -> Option<TokenSource> {
    let grant = if let Some(file) = &cfg.private_key_file {
        let path = relative_to(&ctx.base_dir, file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))
            .and_then(|t| read_signing_key(&t).map_err(|e| format!("`{}`: {e}", path.display())));
        let (key, email) = match text {
            Ok(k) => k,
            Err(e) => {
                issues.push(format!("{prefix}.private_key_file"), e);
                return None;
            }
        };
        let Some(client_id) = cfg.client_id.clone().or(email) else {
            issues.push(
                format!("{prefix}.client_id"),
                "missing; the service account's address (client_email in its JSON key file)",
            );
            return None;
        };
        Grant::JwtBearer {
            client_id,
            subject: cfg.username.clone()?,
            key,
        }
    } else {
        let secret = ctx.secret(
            prefix,
            "client_secret",
            cfg.client_secret_env.as_deref(),
            cfg.client_secret_file.as_ref(),
            true,
            issues,
        )?;
        Grant::ClientCredentials {
            client_id: cfg.client_id.clone()?,
            secret: secret.expose().to_string(),
        }
    };
    Some(TokenSource::new(
        ctx.http.clone(),
        cfg.token_url.clone()?,
        cfg.scope.clone()?,
        grant,
    ))
}

/// `http://127.0.0.1…` or `http://localhost…`: a token endpoint on this host.
fn is_loopback_http(url: &str) -> bool {
    [
        "http://127.0.0.1:",
        "http://127.0.0.1/",
        "http://localhost:",
        "http://localhost/",
        "http://[::1]:",
    ]
    .iter()
    .any(|p| url.starts_with(p))
}

/// Our name in EHLO: the sender's domain (we have no better public name).
fn helo_name(from: &Mailbox) -> String {
    let domain = from.email.domain();
    if domain.is_empty() {
        "localhost".into()
    } else {
        domain.to_string()
    }
}

/// TLS settings for the client: `Some(None)` for plain text, `None` when a
/// problem was reported. The system's roots are trusted, plus `ca_file`.
fn tls_config(
    prefix: &str,
    enabled: bool,
    ca_file: Option<&PathBuf>,
    ctx: &ProviderContext,
    issues: &mut Issues,
) -> Option<Option<Arc<rustls::ClientConfig>>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    if !enabled {
        return Some(None);
    }
    let mut extra = Vec::new();
    if let Some(file) = ca_file {
        let path = relative_to(&ctx.base_dir, file);
        let pem = match std::fs::read(&path) {
            Ok(p) => p,
            Err(e) => {
                issues.push(
                    format!("{prefix}.ca_file"),
                    format!("cannot read `{}`: {e}", path.display()),
                );
                return None;
            }
        };
        match CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
            Ok(certs) if !certs.is_empty() => extra = certs,
            Ok(_) => {
                issues.push(
                    format!("{prefix}.ca_file"),
                    format!("`{}` holds no PEM certificate", path.display()),
                );
                return None;
            }
            Err(e) => {
                issues.push(
                    format!("{prefix}.ca_file"),
                    format!("`{}` is not a PEM certificate: {e}", path.display()),
                );
                return None;
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let built = rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
        .and_then(|verifier| {
            Ok(rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth())
        });
    match built {
        Ok(c) => Some(Some(Arc::new(c))),
        Err(e) => {
            issues.push(format!("{prefix}.tls"), format!("cannot set up TLS: {e}"));
            None
        }
    }
}

/// Our own Message-ID: stable per delivery, so a retried send that did reach
/// the mailbox can be recognised as a duplicate by mail software.
/// With a bounce tag it carries the tag, so a DSN quoting the original's
/// headers is matched even when the relay rewrote the return path.
fn message_id(msg: &OutboundMessage, from: &Mailbox) -> String {
    match &msg.bounce_tag {
        Some(tag) => format!("<klaxon.{}.{tag}@{}>", msg.alert_id, from.email.domain()),
        None => format!(
            "<klaxon.{}.{}@{}>",
            msg.alert_id,
            msg.delivery_id,
            from.email.domain()
        ),
    }
}

/// The bounce mailbox of `[providers.bounces]`; problems go to `issues`.
fn bounce_mailbox(
    prefix: &str,
    cfg: &SmtpConfig,
    b: &BouncesConfig,
    tokens: Option<Arc<TokenSource>>,
    ctx: &ProviderContext,
    issues: &mut Issues,
) -> Option<BounceMailbox> {
    let bp = format!("{prefix}.bounces");
    let login = match (b.auth, tokens) {
        (AuthMode::Xoauth2, Some(t)) => ImapLogin::XOAuth2(t),
        (AuthMode::Xoauth2, None) => return None,
        (AuthMode::Password, _) => ImapLogin::Password(ctx.secret(
            &bp,
            "password",
            b.password_env.as_deref(),
            b.password_file.as_ref(),
            true,
            issues,
        )?),
    };
    let tls = tls_config(&bp, b.tls == ImapTls::Tls, b.ca_file.as_ref(), ctx, issues)?;
    Some(BounceMailbox {
        provider: cfg.name.clone(),
        host: b.host.clone(),
        port: b.port(),
        tls,
        user: b.user.clone(),
        login,
        mailbox: b.mailbox.clone(),
        interval: b.interval.0,
        timeout: cfg.timeout.0,
    })
}

/// Sorts a client error into the engine's two kinds.
fn classify(e: &ClientError) -> SendError {
    if let Some((step, reply)) = e.reply() {
        let about_us = AUTH_CODES.contains(&reply.code)
            || matches!(
                step,
                Step::Greeting | Step::Ehlo | Step::StartTls | Step::Auth
            );
        if reply.code / 100 == 5 && !about_us {
            return SendError::Permanent {
                code: "smtp-5xx".into(),
                reason: format!("smtp: {e}"),
            };
        }
        let what = if reply.code / 100 == 4 {
            "temporary failure: "
        } else {
            ""
        };
        let hint = if step == Step::Auth {
            auth_hint(&reply.text)
        } else {
            ""
        };
        return SendError::Transient {
            reason: format!("smtp: {what}{e}{hint}"),
            retry_after: None,
        };
    }
    SendError::Transient {
        reason: format!("smtp: {e}"),
        retry_after: None,
    }
}

/// What to fix when the relay refuses our sign-in, by the enhanced status
/// codes Microsoft 365 and Google use.
fn auth_hint(text: &str) -> &'static str {
    let has = |code: &str| {
        text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .any(|w| w == code)
    };
    if has("5.7.30") {
        "; the relay no longer accepts passwords (Basic authentication): set auth = \"xoauth2\" (README: Connecting Microsoft 365 and Google Workspace)"
    } else if has("5.7.139") {
        "; SMTP AUTH is turned off for this tenant or mailbox: enable Authenticated SMTP for the sending mailbox in the Exchange admin center"
    } else if has("5.7.3") || has("5.7.8") || has("5.7.9") {
        "; the sign-in was refused: with auth = \"xoauth2\" on Microsoft 365, give the app registration the SMTP.SendAsApp permission with admin consent, register its service principal in Exchange Online and grant it access to the mailbox; on Google, authorise the service account's client id for https://mail.google.com/ in domain-wide delegation; with a password, check username and password"
    } else {
        ""
    }
}

/// Label of the confirmation button.
fn confirm_label(language: &str) -> &'static str {
    match language.split(['-', '_']).next().unwrap_or("") {
        "es" => "Confirmar recibido",
        "fr" => "Confirmer la réception",
        "pt" => "Confirmar recebimento",
        "vi" => "Xác nhận đã nhận",
        "zh" => "确认收到",
        _ => "Confirm you received this",
    }
}

/// A plain HTML version of the text body, used when the template gave none:
/// paragraphs from blank lines and a big, obvious confirmation link.
pub fn render_html(msg: &OutboundMessage) -> String {
    let paragraphs: String = msg
        .body
        .split("\n\n")
        .filter(|p| !p.trim().is_empty())
        .map(|p| format!("<p>{}</p>\n", escape(p.trim()).replace('\n', "<br>\n")))
        .collect();
    let button = if msg.ack_url.is_empty() {
        String::new()
    } else {
        format!(
            concat!(
                r#"<p><a href="{url}" style="display:inline-block;padding:14px 24px;"#,
                r#"background:#b00020;color:#ffffff;font-weight:bold;text-decoration:none;"#,
                r#"border-radius:6px;font-size:18px">{label}</a></p>"#,
                "\n"
            ),
            url = escape(&msg.ack_url),
            label = escape(confirm_label(&msg.language)),
        )
    };
    format!(
        concat!(
            "<!DOCTYPE html>\n<html lang=\"{lang}\"><head><meta charset=\"utf-8\">",
            "<title>{title}</title></head>\n",
            "<body style=\"font-family:sans-serif;font-size:16px;line-height:1.5\">\n",
            "{paragraphs}{button}</body></html>\n"
        ),
        lang = escape(&msg.language),
        title = escape(&msg.subject),
        paragraphs = paragraphs,
        button = button,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_rendering_escapes_and_links() {
        let msg = OutboundMessage {
            delivery_id: 3,
            alert_id: 2,
            channel: Channel::Email,
            to: "a@example.org".into(),
            language: "es".into(),
            subject: "Cierre <hoy>".into(),
            body: "Línea 1 & más\nLínea 2\n\nOtro párrafo".into(),
            html: None,
            ack_url: "https://alerts.example.org/a/tok?x=1&y=2".into(),
            speech: String::new(),
            severity: Severity::Emergency,
            bounce_tag: None,
        };
        let h = render_html(&msg);
        assert!(h.contains("<p>Línea 1 &amp; más<br>\nLínea 2</p>"), "{h}");
        assert!(h.contains("<p>Otro párrafo</p>"));
        assert!(h.contains(r#"href="https://alerts.example.org/a/tok?x=1&amp;y=2""#));
        assert!(h.contains("Confirmar recibido"));
        assert!(h.contains("<title>Cierre &lt;hoy&gt;</title>"));
    }

    #[test]
    fn config_problems_name_keys() {
        let cfg: SmtpConfig = toml::from_str(
            r#"
            name = "relay"
            channels = ["email"]
            host = ""
            password_env = "X"
            from = "not a mailbox"
            timeout = "0s"
            "#,
        )
        .unwrap();
        let mut issues = Issues::default();
        cfg.validate("providers[1]", &mut issues);
        let keys: Vec<_> = issues.list.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "providers[1].host",
                "providers[1].from",
                "providers[1].username",
                "providers[1].timeout"
            ]
        );
        assert_eq!(cfg.port(), 587);
    }
}
