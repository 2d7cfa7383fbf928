//! A real SMTP server on loopback (RFC 5321): EHLO/HELO, AUTH PLAIN,
//! LOGIN and XOAUTH2 (checking the bearer token), MAIL, RCPT, DATA with dot-unstuffing, RSET, NOOP, QUIT,
//! optionally PIPELINING (RFC 2920), and optionally STARTTLS (RFC 3207) with a certificate from a throwaway CA made
//! for each server. It can require credentials, refuse recipients with
//! `550 5.1.1`, be temporarily unavailable (421 at greeting or 451 on MAIL),
//! and records every message it accepts with its envelope.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

/// Longest command or data line accepted; RFC 5321 allows 1000 bytes per line.
const MAX_LINE: usize = 64 * 1024;

/// How the server answers, switchable while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SmtpMode {
    #[default]
    Normal,
    /// Greets new connections with `421 4.3.2` and closes them.
    Unavailable,
    /// Answers `MAIL FROM` with `451 4.3.0` (temporary local problem).
    TempFail,
}

/// One message the server accepted.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    pub helo: String,
    /// The user that authenticated on this connection, if any.
    pub auth_user: Option<String>,
    /// The AUTH mechanism used.
    pub auth_mechanism: Option<String>,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The message as sent, after dot-unstuffing, lines joined with CRLF.
    pub data: String,
    /// Whether the session had been upgraded with STARTTLS.
    pub tls: bool,
    /// Whether RCPT had already arrived when MAIL was read (the client
    /// pipelined its commands).
    pub pipelined: bool,
    /// Whether MAIL had already arrived when the previous message's
    /// end-of-data line was read (the client wrote this envelope behind that
    /// body, RFC 2920).
    pub carried: bool,
    /// Which connection (1, 2, …) carried the message.
    pub session: usize,
}

impl ReceivedMail {
    /// The value of the first header named `name` (unfolded).
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next()?;
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if let Some(v) = value.as_mut() {
                if line.starts_with([' ', '\t']) {
                    v.push_str(line);
                    continue;
                }
                break;
            }
            if let Some((n, v)) = line.split_once(':') {
                if n.eq_ignore_ascii_case(name) {
                    value = Some(v.trim().to_string());
                }
            }
        }
        value
    }
}

#[derive(Default)]
struct Inner {
    credentials: Mutex<Option<(String, String)>>,
    reject: Mutex<HashSet<String>>,
    mode: Mutex<SmtpMode>,
    received: Mutex<Vec<ReceivedMail>>,
    /// Every line the server read, for debugging a failing test.
    transcript: Mutex<Vec<String>>,
    /// XOAUTH2: the user and the bearer tokens accepted for it.
    bearer: Mutex<Option<(String, HashSet<String>)>>,
    /// Offer PIPELINING in the EHLO reply.
    pipelining: std::sync::atomic::AtomicBool,
    /// Connections accepted so far.
    sessions: std::sync::atomic::AtomicUsize,
    /// The reply to a refused AUTH PLAIN/LOGIN, when not the default 5.7.8.
    password_refusal: Mutex<Option<String>>,
    /// Messages a session may carry before the next MAIL is answered with
    /// 421 and the connection closed; 0 for no limit.
    per_session: std::sync::atomic::AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running SMTP server; stops accepting when dropped.
pub struct SmtpServer {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: JoinHandle<()>,
    /// PEM of the CA that signed the server certificate, when STARTTLS is on.
    ca_pem: Option<String>,
}

/// STARTTLS material: the acceptor and the PEM of its issuing CA.
fn tls_material() -> (TlsAcceptor, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "klaxon loopback test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server params");
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    let private_key =
        rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("server key DER");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], private_key)
    .expect("server TLS config");
    (TlsAcceptor::from(Arc::new(config)), ca_cert.pem())
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpServer {
    /// Starts a plain-text server on `127.0.0.1:0` that accepts mail without AUTH.
    pub async fn start() -> SmtpServer {
        SmtpServer::start_inner(None).await
    }

    /// Starts a server that offers STARTTLS and refuses AUTH and MAIL before
    /// it; trust [`SmtpServer::ca_pem`] to verify its certificate (issued for
    /// 127.0.0.1 and localhost).
    pub async fn start_with_starttls() -> SmtpServer {
        let (acceptor, ca_pem) = tls_material();
        let mut server = SmtpServer::start_inner(Some(acceptor)).await;
        server.ca_pem = Some(ca_pem);
        server
    }

    /// The CA certificate (PEM) behind the STARTTLS certificate.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    async fn start_inner(tls: Option<TlsAcceptor>) -> SmtpServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let inner = Arc::new(Inner::default());
        let shared = inner.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let inner = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    // A client that goes away mid-session is not the server's problem.
                    let _ = session(Box::new(stream), inner, tls).await;
                });
            }
        });
        SmtpServer {
            addr,
            inner,
            task,
            ca_pem: None,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// From now on MAIL requires a successful AUTH with these credentials.
    pub fn require_auth(&self, user: &str, password: &str) {
        *lock(&self.inner.credentials) = Some((user.to_string(), password.to_string()));
    }

    /// `RCPT TO` this address gets `550 5.1.1 no such user`.
    pub fn reject_recipient(&self, address: &str) {
        lock(&self.inner.reject).insert(address.to_ascii_lowercase());
    }

    pub fn set_mode(&self, mode: SmtpMode) {
        *lock(&self.inner.mode) = mode;
    }

    pub fn received(&self) -> Vec<ReceivedMail> {
        lock(&self.inner.received).clone()
    }

    pub fn transcript(&self) -> Vec<String> {
        lock(&self.inner.transcript).clone()
    }

    /// From now on AUTH XOAUTH2 succeeds for `user` with one of `tokens`;
    /// any other token is refused as Microsoft 365 does (a 334 with a JSON
    /// detail, then `535 5.7.3`).
    pub fn accept_bearer(&self, user: &str, tokens: &[&str]) {
        *lock(&self.inner.bearer) = Some((
            user.to_string(),
            tokens.iter().map(|t| t.to_string()).collect(),
        ));
    }

    /// From now on a refused AUTH PLAIN/LOGIN gets this reply, as Microsoft
    /// 365 words its refusals (`535 5.7.139 Authentication unsuccessful, …`).
    pub fn refuse_passwords_with(&self, reply: &str) {
        *lock(&self.inner.password_refusal) = Some(reply.to_string());
    }

    /// From now on EHLO offers PIPELINING (as Postfix and Exchange do).
    pub fn offer_pipelining(&self) {
        self.inner
            .pipelining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// From now on a session takes `n` messages; the next MAIL gets 421 and
    /// the connection is closed (as relays that limit messages per
    /// connection do).
    pub fn limit_messages_per_session(&self, n: usize) {
        self.inner
            .per_session
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn sessions(&self) -> usize {
        self.inner
            .sessions
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The address inside `<…>` after `MAIL FROM:` or `RCPT TO:`.
fn path_arg(rest: &str) -> Option<String> {
    let rest = rest.trim_start();
    let open = rest.find('<')?;
    let close = rest[open..].find('>')? + open;
    Some(rest[open + 1..close].to_string())
}

/// A connection before or after STARTTLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Conn {
    stream: BufReader<Box<dyn Io>>,
    inner: Arc<Inner>,
}

impl Conn {
    async fn reply(&mut self, text: &str) -> std::io::Result<()> {
        let w = self.stream.get_mut();
        w.write_all(text.as_bytes()).await?;
        w.write_all(b"\r\n").await?;
        w.flush().await
    }

    /// Reads one line without its CRLF; `None` at end of stream.
    async fn line(&mut self) -> std::io::Result<Option<String>> {
        let mut buf = Vec::new();
        let n = (&mut self.stream)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await?;
        if n == 0 {
            return Ok(None);
        }
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        let line = String::from_utf8_lossy(&buf).into_owned();
        lock(&self.inner.transcript).push(line.clone());
        Ok(Some(line))
    }
}

/// Decodes base64 to text, `None` if either step fails.
fn b64(s: &str) -> Option<String> {
    let bytes = base64::prelude::BASE64_STANDARD.decode(s.trim()).ok()?;
    String::from_utf8(bytes).ok()
}

async fn session(
    stream: Box<dyn Io>,
    inner: Arc<Inner>,
    tls: Option<TlsAcceptor>,
) -> std::io::Result<()> {
    let session_no = inner
        .sessions
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        + 1;
    let mut c = Conn {
        stream: BufReader::new(stream),
        inner,
    };
    let mut pipelined = false;
    let mut carried = false;
    let mut next_buffered = false;
    let mut taken = 0usize;
    let mut encrypted = false;
    if *lock(&c.inner.mode) == SmtpMode::Unavailable {
        return c
            .reply("421 4.3.2 loopback.test Service not available, closing channel")
            .await;
    }
    c.reply("220 loopback.test ESMTP klaxon test server")
        .await?;

    let mut helo = String::new();
    let mut auth: Option<(String, String)> = None; // (user, mechanism)
    let mut mail_from: Option<String> = None;
    let mut rcpt: Vec<String> = Vec::new();

    while let Some(line) = c.line().await? {
        let (verb, rest) = match line.find(' ') {
            Some(i) => (line[..i].to_ascii_uppercase(), line[i + 1..].to_string()),
            None => (line.to_ascii_uppercase(), String::new()),
        };
        match verb.as_str() {
            "EHLO" => {
                helo = rest.trim().to_string();
                mail_from = None;
                rcpt.clear();
                c.reply("250-loopback.test greets you").await?;
                c.reply("250-8BITMIME").await?;
                c.reply("250-SIZE 10485760").await?;
                c.reply("250-ENHANCEDSTATUSCODES").await?;
                if c.inner.pipelining.load(std::sync::atomic::Ordering::SeqCst) {
                    c.reply("250-PIPELINING").await?;
                }
                if tls.is_some() && !encrypted {
                    // Like most relays: no AUTH on offer until the channel is private.
                    c.reply("250 STARTTLS").await?;
                } else {
                    c.reply("250 AUTH PLAIN LOGIN XOAUTH2").await?;
                }
            }
            "HELO" => {
                helo = rest.trim().to_string();
                mail_from = None;
                rcpt.clear();
                c.reply("250 loopback.test").await?;
            }
            "STARTTLS" => {
                let Some(acceptor) = tls.clone().filter(|_| !encrypted) else {
                    c.reply("502 5.5.1 STARTTLS not available").await?;
                    continue;
                };
                c.reply("220 2.0.0 Ready to start TLS").await?;
                // RFC 3207: the client waits for 220, so nothing is buffered yet;
                // everything said before the handshake is forgotten.
                let plain = c.stream.into_inner();
                let secured = acceptor.accept(plain).await?;
                c.stream = BufReader::new(Box::new(secured));
                encrypted = true;
                helo.clear();
                auth = None;
                mail_from = None;
                rcpt.clear();
            }
            _ if tls.is_some() && !encrypted && matches!(verb.as_str(), "AUTH" | "MAIL") => {
                c.reply("530 5.7.0 Must issue a STARTTLS command first")
                    .await?;
            }
            "AUTH" => {
                if auth.is_some() {
                    c.reply("503 5.5.1 Already authenticated").await?;
                    continue;
                }
                let mut words = rest.split_whitespace();
                let mechanism = words.next().unwrap_or_default().to_ascii_uppercase();
                let initial = words.next().map(str::to_string);
                let given = match mechanism.as_str() {
                    "PLAIN" => {
                        let response = match initial {
                            Some(i) => i,
                            None => {
                                c.reply("334 ").await?;
                                c.line().await?.unwrap_or_default()
                            }
                        };
                        // authzid NUL authcid NUL password
                        b64(&response).and_then(|s| {
                            let mut parts = s.split('\0');
                            let _authzid = parts.next()?;
                            Some((parts.next()?.to_string(), parts.next()?.to_string()))
                        })
                    }
                    "LOGIN" => {
                        let user = match initial {
                            Some(i) => i,
                            None => {
                                c.reply("334 VXNlcm5hbWU6").await?; // "Username:"
                                c.line().await?.unwrap_or_default()
                            }
                        };
                        c.reply("334 UGFzc3dvcmQ6").await?; // "Password:"
                        let password = c.line().await?.unwrap_or_default();
                        b64(&user).zip(b64(&password))
                    }
                    "XOAUTH2" => {
                        // user=<user>^Aauth=Bearer <token>^A^A
                        let given = initial.as_deref().and_then(b64).and_then(|s| {
                            let mut user = None;
                            let mut token = None;
                            for field in s.split('\x01') {
                                if let Some(u) = field.strip_prefix("user=") {
                                    user = Some(u.to_string());
                                } else if let Some(t) = field.strip_prefix("auth=Bearer ") {
                                    token = Some(t.to_string());
                                }
                            }
                            user.zip(token)
                        });
                        let accepted = lock(&c.inner.bearer).clone();
                        match (given, accepted) {
                            (Some((user, token)), Some((u, tokens)))
                                if user == u && tokens.contains(&token) =>
                            {
                                auth = Some((user, mechanism.clone()));
                                c.reply("235 2.7.0 Authentication successful").await?;
                            }
                            _ => {
                                let detail = base64::prelude::BASE64_STANDARD.encode(
                                    r#"{"status":"401","schemes":"bearer","scope":"https://outlook.office365.com/.default"}"#,
                                );
                                c.reply(&format!("334 {detail}")).await?;
                                let _ = c.line().await?;
                                c.reply("535 5.7.3 Authentication unsuccessful").await?;
                            }
                        }
                        continue;
                    }
                    _ => {
                        c.reply("504 5.5.4 Unrecognized authentication type")
                            .await?;
                        continue;
                    }
                };
                let expected = lock(&c.inner.credentials).clone();
                let ok = match (&given, &expected) {
                    (Some(g), Some(e)) => g == e,
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                match (ok, given) {
                    (true, Some((user, _))) => {
                        auth = Some((user, mechanism));
                        c.reply("235 2.7.0 Authentication successful").await?;
                    }
                    _ => {
                        let refusal = lock(&c.inner.password_refusal).clone();
                        c.reply(
                            refusal
                                .as_deref()
                                .unwrap_or("535 5.7.8 Authentication credentials invalid"),
                        )
                        .await?
                    }
                }
            }
            "MAIL" => {
                let Some(from) = rest
                    .get(..5)
                    .filter(|p| p.eq_ignore_ascii_case("FROM:"))
                    .and_then(|_| path_arg(&rest[5..]))
                else {
                    c.reply("501 5.5.4 Syntax: MAIL FROM:<address>").await?;
                    continue;
                };
                let limit = c
                    .inner
                    .per_session
                    .load(std::sync::atomic::Ordering::SeqCst);
                if limit > 0 && taken >= limit {
                    return c
                        .reply("421 4.7.0 loopback.test Too many messages, closing channel")
                        .await;
                }
                if helo.is_empty() {
                    c.reply("503 5.5.1 EHLO or HELO first").await?;
                } else if lock(&c.inner.credentials).is_some() && auth.is_none() {
                    c.reply("530 5.7.0 Authentication required").await?;
                } else if *lock(&c.inner.mode) == SmtpMode::TempFail {
                    c.reply("451 4.3.0 Temporary local problem, try again later")
                        .await?;
                } else if mail_from.is_some() {
                    c.reply("503 5.5.1 Nested MAIL command").await?;
                } else {
                    // Already buffered: the client sent RCPT without waiting.
                    pipelined = !c.stream.buffer().is_empty();
                    carried = std::mem::take(&mut next_buffered);
                    mail_from = Some(from);
                    rcpt.clear();
                    c.reply("250 2.1.0 Ok").await?;
                }
            }
            "RCPT" => {
                let Some(to) = rest
                    .get(..3)
                    .filter(|p| p.eq_ignore_ascii_case("TO:"))
                    .and_then(|_| path_arg(&rest[3..]))
                else {
                    c.reply("501 5.5.4 Syntax: RCPT TO:<address>").await?;
                    continue;
                };
                if mail_from.is_none() {
                    c.reply("503 5.5.1 Need MAIL before RCPT").await?;
                } else if lock(&c.inner.reject).contains(&to.to_ascii_lowercase()) {
                    c.reply(&format!(
                        "550 5.1.1 <{to}>: Recipient address rejected: no such user"
                    ))
                    .await?;
                } else {
                    rcpt.push(to);
                    c.reply("250 2.1.5 Ok").await?;
                }
            }
            "DATA" => {
                if mail_from.is_none() || rcpt.is_empty() {
                    c.reply("503 5.5.1 Need MAIL and RCPT before DATA").await?;
                    continue;
                }
                c.reply("354 End data with <CR><LF>.<CR><LF>").await?;
                let mut lines = Vec::new();
                loop {
                    let Some(line) = c.line().await? else {
                        return Ok(()); // client went away mid-message: nothing is stored
                    };
                    if line == "." {
                        next_buffered = !c.stream.buffer().is_empty();
                        break;
                    }
                    // RFC 5321 4.5.2: a leading dot was doubled by the client.
                    lines.push(line.strip_prefix('.').map(str::to_string).unwrap_or(line));
                }
                let (user, mechanism) = auth.clone().unzip();
                let mail = ReceivedMail {
                    helo: helo.clone(),
                    auth_user: user,
                    auth_mechanism: mechanism,
                    mail_from: mail_from.take().unwrap_or_default(),
                    rcpt_to: std::mem::take(&mut rcpt),
                    data: lines.join("\r\n"),
                    tls: encrypted,
                    pipelined,
                    carried,
                    session: session_no,
                };
                taken += 1;
                let id = {
                    let mut received = lock(&c.inner.received);
                    received.push(mail);
                    received.len()
                };
                c.reply(&format!("250 2.0.0 Ok: queued as Q{id:06}"))
                    .await?;
            }
            "RSET" => {
                mail_from = None;
                rcpt.clear();
                c.reply("250 2.0.0 Ok").await?;
            }
            "NOOP" => c.reply("250 2.0.0 Ok").await?,
            "VRFY" => c.reply("252 2.0.0 Cannot VRFY user").await?,
            "QUIT" => {
                c.reply("221 2.0.0 Bye").await?;
                return Ok(());
            }
            _ => c.reply("502 5.5.2 Command not recognized").await?,
        }
    }
    Ok(())
}
