//! A minimal SMTP client (RFC 5321) for the `smtp` provider: a pool of
//! connections kept open across messages, ESMTP PIPELINING (RFC 2920) where
//! the relay offers it, STARTTLS or implicit TLS (rustls), AUTH PLAIN, LOGIN
//! and XOAUTH2.
//!
//! Why not lettre's transport: lettre 0.11 sends MAIL, RCPT and DATA one
//! round trip at a time and checks every pooled connection with a NOOP before
//! each message, five round trips a message. Here, with PIPELINING, a lone
//! message costs two (MAIL + RCPT + DATA in one write, then the body), and
//! under load one: each body is written together with the next waiting
//! message's envelope, and its reply read together with that envelope's.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, oneshot};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;

/// A pooled connection idle longer than this is closed rather than reused:
/// relays drop idle sessions (Postfix after 300 s), and a send should not be
/// the one to find out.
const MAX_IDLE: Duration = Duration::from_secs(60);

/// Longest reply line we accept, against a misbehaving peer.
const MAX_REPLY_LINE: usize = 4096;

/// How the connection is secured.
#[derive(Clone)]
pub enum Security {
    Plain,
    /// STARTTLS, required: a relay that does not offer it is refused.
    StartTls(Arc<rustls::ClientConfig>),
    /// TLS from the first byte (port 465).
    Implicit(Arc<rustls::ClientConfig>),
}

/// How we sign in, if at all.
#[derive(Clone)]
pub enum Login {
    None,
    /// PLAIN if offered, else LOGIN.
    Password {
        user: String,
        password: String,
    },
    /// SASL XOAUTH2 with a bearer token fetched (or taken from the cache)
    /// when a session opens.
    XOAuth2 {
        user: String,
        tokens: Arc<super::smtp_oauth::TokenSource>,
    },
}

/// Everything needed to open a session.
pub struct ClientConfig {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub login: Login,
    /// Our name in EHLO.
    pub helo_name: String,
    /// Bound on connecting and on each reply.
    pub timeout: Duration,
    /// Sessions kept open at most.
    pub connections: usize,
}

/// A reply from the relay: three-digit code and its text lines joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// Which step a refusal answered; the provider words its errors by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Greeting,
    Ehlo,
    StartTls,
    Auth,
    Mail,
    Rcpt,
    Data,
    Message,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Greeting => "greeting",
            Step::Ehlo => "EHLO",
            Step::StartTls => "STARTTLS",
            Step::Auth => "AUTH",
            Step::Mail => "MAIL FROM",
            Step::Rcpt => "RCPT TO",
            Step::Data => "DATA",
            Step::Message => "end of data",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("time-out waiting for the relay")]
    Timeout,
    #[error("the relay answered {step} with {reply}")]
    Refused { step: Step, reply: Reply },
    #[error("{0}")]
    Protocol(String),
    #[error("cannot get an OAuth token: {0}")]
    Token(String),
}

impl ClientError {
    /// The relay's reply, when the relay refused something.
    pub fn reply(&self) -> Option<(Step, &Reply)> {
        match self {
            ClientError::Refused { step, reply } => Some((*step, reply)),
            _ => None,
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One open session, ready for MAIL.
struct Session {
    stream: BufStream<Box<dyn Io>>,
    pipelining: bool,
    eight_bit: bool,
    smtputf8: bool,
}

/// One message waiting for a session, and the caller waiting for its reply.
struct Job {
    from: String,
    to: String,
    data: Vec<u8>,
    /// Put back once already after its session died before the relay
    /// answered its envelope; a second time it fails.
    retried: bool,
    done: oneshot::Sender<Result<Reply, ClientError>>,
}

impl Job {
    fn finish(self, result: Result<Reply, ClientError>) {
        let _ = self.done.send(result);
    }
}

/// The client: messages queue here and up to `connections` session tasks
/// take them. A task that has written one message's body and finds another
/// message waiting writes that one's MAIL, RCPT and DATA in the same write
/// (RFC 2920 lets a pipelining client send the next envelope without waiting
/// for the end-of-data reply), so under load a message costs one write and
/// one read. A lone message is never held back waiting for company.
pub struct SmtpClient {
    pool: Arc<Pool>,
}

struct Pool {
    cfg: ClientConfig,
    state: std::sync::Mutex<PoolState>,
    /// One permit per queued job; closed when the client is dropped, which
    /// ends the session tasks.
    ready: Semaphore,
}

struct PoolState {
    jobs: VecDeque<Job>,
    /// Session tasks running, at most `connections`.
    live: usize,
    /// Of those, the ones waiting for a job.
    waiting: usize,
}

impl Drop for SmtpClient {
    fn drop(&mut self) {
        self.pool.ready.close();
    }
}

/// What a transaction left the session fit for.
enum Fate {
    /// In step and ready for the next MAIL; carrying the job whose envelope
    /// was written behind the last body, if any.
    Keep(Option<Job>),
    /// Out of step or gone: closed.
    Drop,
}

impl SmtpClient {
    pub fn new(cfg: ClientConfig) -> SmtpClient {
        SmtpClient {
            pool: Arc::new(Pool {
                cfg,
                state: std::sync::Mutex::new(PoolState {
                    jobs: VecDeque::new(),
                    live: 0,
                    waiting: 0,
                }),
                ready: Semaphore::new(0),
            }),
        }
    }

    /// Sends one message to one recipient. `data` is the message with CRLF
    /// line ends, not yet dot-stuffed. Returns the relay's final reply.
    pub async fn send(&self, from: &str, to: &str, data: Vec<u8>) -> Result<Reply, ClientError> {
        let (done, reply) = oneshot::channel();
        self.pool.push(
            Job {
                from: from.to_string(),
                to: to.to_string(),
                data,
                retried: false,
                done,
            },
            false,
        );
        reply
            .await
            .unwrap_or_else(|_| Err(ClientError::Protocol("the SMTP client is closed".into())))
    }
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // The state is a queue and two counters, consistent at every unlock.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a job (at the front when it is being retried) and starts a
    /// session task when every running one is busy.
    fn push(self: &Arc<Self>, job: Job, front: bool) {
        let spawn = {
            let mut st = self.lock();
            if front {
                st.jobs.push_front(job);
            } else {
                st.jobs.push_back(job);
            }
            // Under the lock, so a task deciding to stop sees the permit.
            self.ready.add_permits(1);
            let spawn = st.live < self.cfg.connections.max(1) && st.jobs.len() > st.waiting;
            if spawn {
                st.live += 1;
            }
            spawn
        };
        if spawn {
            tokio::spawn(self.clone().session_task());
        }
    }

    /// Takes a queued job whose caller still waits, if there is one now.
    fn try_job(&self) -> Option<Job> {
        let mut st = self.lock();
        Self::take(&mut st, &self.ready)
    }

    fn take(st: &mut PoolState, ready: &Semaphore) -> Option<Job> {
        while let Ok(permit) = ready.try_acquire() {
            permit.forget();
            match st.jobs.pop_front() {
                // A caller that gave up (its future dropped) is not sent.
                Some(job) if job.done.is_closed() => continue,
                job => return job,
            }
        }
        None
    }

    /// Waits for a job; `None` when none came for `MAX_IDLE` or the client
    /// was dropped, and the task should end (closing its session).
    async fn next_job(&self) -> Option<Job> {
        loop {
            self.lock().waiting += 1;
            let waited = tokio::time::timeout(MAX_IDLE, self.ready.acquire()).await;
            let mut st = self.lock();
            st.waiting -= 1;
            match waited {
                Ok(Ok(permit)) => {
                    // Spent with its job. (Dropping it instead would hand it
                    // to the next waiting task, not back to us.)
                    permit.forget();
                    match st.jobs.pop_front() {
                        Some(job) if !job.done.is_closed() => return Some(job),
                        _ => continue,
                    }
                }
                Ok(Err(_)) | Err(_) => {
                    // Ending: a job queued as the wait ended is still taken.
                    let job = Self::take(&mut st, &self.ready);
                    if job.is_none() {
                        st.live -= 1;
                    }
                    return job;
                }
            }
        }
    }

    /// A session task: opens a session when it has a job and keeps it for
    /// the next, until the queue stays empty for `MAX_IDLE` (relays drop idle
    /// sessions; Postfix after 300 s).
    async fn session_task(self: Arc<Self>) {
        let mut session: Option<Session> = None;
        let mut carried: Option<Job> = None;
        loop {
            // A carried job's envelope is already on the wire.
            let (job, written) = match carried.take() {
                Some(job) => (job, true),
                None => match self.next_job().await {
                    Some(job) => (job, false),
                    None => return,
                },
            };
            let (mut s, fresh) = match session.take() {
                Some(s) => (s, false),
                None => match self.open().await {
                    Ok(s) => (s, true),
                    Err(e) => {
                        job.finish(Err(e));
                        continue;
                    }
                },
            };
            match self.transaction(&mut s, job, written, fresh).await {
                Fate::Keep(next) => {
                    session = Some(s);
                    carried = next;
                }
                Fate::Drop => {}
            }
        }
    }

    /// A job whose envelope got no answer at all: nothing was accepted, so
    /// on a session that may have gone stale (reused, or written behind the
    /// last body) it is put back once for a fresh session; else it fails.
    fn unanswered(self: &Arc<Self>, mut job: Job, e: ClientError, may_retry: bool) -> Fate {
        if may_retry && !job.retried {
            job.retried = true;
            self.push(job, true);
        } else {
            job.finish(Err(e));
        }
        Fate::Drop
    }

    /// One message on `s`: its envelope (unless `written` behind the last
    /// body), then its body, with the next waiting job's envelope behind it
    /// when the relay pipelines. The job's result goes to its caller.
    async fn transaction(
        self: &Arc<Self>,
        s: &mut Session,
        job: Job,
        written: bool,
        fresh: bool,
    ) -> Fate {
        let cmds = if written {
            Vec::new()
        } else {
            match envelope(s, &job) {
                Ok(c) => c,
                Err(e) => {
                    job.finish(Err(e));
                    return Fate::Keep(None);
                }
            }
        };
        let replies = if s.pipelining {
            if !written {
                if let Err(e) = self.write(s, &cmds).await {
                    return self.unanswered(job, e, !fresh);
                }
            }
            let mut replies = Vec::with_capacity(3);
            for _ in 0..3 {
                match self.read_reply(s).await {
                    // The relay is closing: the rest will not come.
                    Ok(r) if r.code == 421 => {
                        replies.push(r);
                        break;
                    }
                    Ok(r) => replies.push(r),
                    Err(e) if replies.is_empty() => {
                        return self.unanswered(job, e, !fresh || written);
                    }
                    Err(e) => {
                        job.finish(Err(e));
                        return Fate::Drop;
                    }
                }
            }
            replies
        } else {
            match self.envelope_step_by_step(s, &cmds).await {
                Ok(r) => r,
                Err((e, false)) => return self.unanswered(job, e, !fresh),
                Err((e, true)) => {
                    job.finish(Err(e));
                    return Fate::Drop;
                }
            }
        };
        // A relay that closes a kept session (a limit on messages or time per
        // connection) answers the next MAIL with 421: nothing was accepted.
        if let Some(r) = replies.first().filter(|r| r.code == 421) {
            let e = ClientError::Refused {
                step: Step::Mail,
                reply: r.clone(),
            };
            return self.unanswered(job, e, !fresh || written);
        }
        for (i, step) in [Step::Mail, Step::Rcpt, Step::Data].into_iter().enumerate() {
            let Some(r) = replies.get(i) else { break };
            let ok = if step == Step::Data {
                r.code == 354
            } else {
                r.code / 100 == 2
            };
            if !ok {
                // Should DATA have been accepted all the same (a relay that
                // does not reject DATA without recipients), the session is in
                // the data phase: drop it rather than send an empty message.
                let data_open = replies.get(2).is_some_and(|r| r.code == 354);
                let closing = r.code == 421;
                job.finish(Err(ClientError::Refused {
                    step,
                    reply: r.clone(),
                }));
                if data_open || closing || self.reset(s).await.is_err() {
                    return Fate::Drop;
                }
                return Fate::Keep(None);
            }
        }
        let mut out = dot_stuff(&job.data);
        let next = if s.pipelining {
            self.carry(s, &mut out)
        } else {
            None
        };
        let reply = match self.write(s, &out).await {
            Ok(()) => self.read_reply(s).await,
            Err(e) => Err(e),
        };
        match reply {
            Ok(r) if r.code / 100 == 2 => {
                job.finish(Ok(r));
                Fate::Keep(next)
            }
            Ok(r) => {
                let closing = r.code == 421;
                job.finish(Err(ClientError::Refused {
                    step: Step::Message,
                    reply: r.clone(),
                }));
                match next {
                    Some(n) if closing => self.unanswered(
                        n,
                        ClientError::Refused {
                            step: Step::Message,
                            reply: r,
                        },
                        true,
                    ),
                    _ if closing => Fate::Drop,
                    next => Fate::Keep(next),
                }
            }
            Err(e) => {
                if let Some(n) = next {
                    let again = ClientError::Protocol(format!("the session ended: {e}"));
                    self.unanswered(n, again, true);
                }
                job.finish(Err(e));
                Fate::Drop
            }
        }
    }

    /// Appends the envelope of the next waiting job (one the session can
    /// carry) to `out`, and returns that job.
    fn carry(&self, s: &Session, out: &mut Vec<u8>) -> Option<Job> {
        loop {
            let job = self.try_job()?;
            match envelope(s, &job) {
                Ok(cmds) => {
                    out.extend_from_slice(&cmds);
                    return Some(job);
                }
                Err(e) => job.finish(Err(e)),
            }
        }
    }

    /// Without PIPELINING: MAIL, RCPT and DATA one at a time, stopping at
    /// the first refusal. The error says whether the relay answered anything.
    async fn envelope_step_by_step(
        &self,
        s: &mut Session,
        cmds: &[u8],
    ) -> Result<Vec<Reply>, (ClientError, bool)> {
        let mut replies = Vec::with_capacity(3);
        for cmd in cmds.split_inclusive(|&b| b == b'\n') {
            let answered = !replies.is_empty();
            self.write(s, cmd).await.map_err(|e| (e, answered))?;
            let r = self.read_reply(s).await.map_err(|e| (e, answered))?;
            let ok = r.code / 100 == 2 || r.code == 354;
            replies.push(r);
            if !ok {
                break;
            }
        }
        Ok(replies)
    }

    async fn reset(&self, s: &mut Session) -> Result<(), ClientError> {
        self.write(s, b"RSET\r\n").await?;
        let r = self.read_reply(s).await?;
        if r.code == 250 {
            Ok(())
        } else {
            Err(ClientError::Protocol(format!("RSET answered {r}")))
        }
    }

    async fn write(&self, s: &mut Session, bytes: &[u8]) -> Result<(), ClientError> {
        let io = async {
            s.stream.write_all(bytes).await?;
            s.stream.flush().await
        };
        match tokio::time::timeout(self.cfg.timeout, io).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    async fn read_reply(&self, s: &mut Session) -> Result<Reply, ClientError> {
        read_reply(&mut s.stream, self.cfg.timeout).await
    }

    /// Connects, greets, secures and signs in.
    async fn open(&self) -> Result<Session, ClientError> {
        let cfg = &self.cfg;
        let addr = format!("{}:{}", cfg.host, cfg.port);
        let tcp = match tokio::time::timeout(cfg.timeout, TcpStream::connect(&addr)).await {
            Ok(Ok(t)) => t,
            Ok(Err(source)) => return Err(ClientError::Connect { addr, source }),
            Err(_) => return Err(ClientError::Timeout),
        };
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Io> = match &cfg.security {
            Security::Implicit(tls) => Box::new(self.handshake(tls, tcp).await?),
            _ => Box::new(tcp),
        };
        let mut stream = BufStream::new(stream);
        let greeting = read_reply(&mut stream, cfg.timeout).await?;
        if greeting.code != 220 {
            return Err(ClientError::Refused {
                step: Step::Greeting,
                reply: greeting,
            });
        }
        let mut ext = self.ehlo(&mut stream).await?;
        if let Security::StartTls(tls) = &cfg.security {
            if !ext.has("STARTTLS") {
                return Err(ClientError::Protocol(
                    "the relay does not offer STARTTLS (tls = \"starttls\" requires it)".into(),
                ));
            }
            let r = command(&mut stream, b"STARTTLS\r\n", cfg.timeout).await?;
            if r.code != 220 {
                return Err(ClientError::Refused {
                    step: Step::StartTls,
                    reply: r,
                });
            }
            // Nothing may follow the 220 before the handshake, so the read
            // buffer is empty and the raw stream can be taken out.
            let raw = stream.into_inner();
            let tls_stream = self.handshake(tls, raw).await?;
            stream = BufStream::new(Box::new(tls_stream) as Box<dyn Io>);
            ext = self.ehlo(&mut stream).await?;
        }
        self.login(&mut stream, &ext).await?;
        Ok(Session {
            stream,
            pipelining: ext.has("PIPELINING"),
            eight_bit: ext.has("8BITMIME"),
            smtputf8: ext.has("SMTPUTF8"),
        })
    }

    async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        tls: &Arc<rustls::ClientConfig>,
        stream: S,
    ) -> Result<tokio_rustls::client::TlsStream<S>, ClientError> {
        let name = ServerName::try_from(self.cfg.host.clone()).map_err(|e| {
            ClientError::Protocol(format!("`{}` is not a TLS server name: {e}", self.cfg.host))
        })?;
        let connect = TlsConnector::from(tls.clone()).connect(name, stream);
        match tokio::time::timeout(self.cfg.timeout, connect).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(ClientError::Tls(e)),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    async fn ehlo(&self, stream: &mut BufStream<Box<dyn Io>>) -> Result<Extensions, ClientError> {
        let cmd = format!("EHLO {}\r\n", self.cfg.helo_name);
        let r = command(stream, cmd.as_bytes(), self.cfg.timeout).await?;
        if r.code != 250 {
            return Err(ClientError::Refused {
                step: Step::Ehlo,
                reply: r,
            });
        }
        Ok(Extensions::parse(&r.text))
    }

    async fn login(
        &self,
        stream: &mut BufStream<Box<dyn Io>>,
        ext: &Extensions,
    ) -> Result<(), ClientError> {
        let t = self.cfg.timeout;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let refused = |reply: Reply| ClientError::Refused {
            step: Step::Auth,
            reply,
        };
        match &self.cfg.login {
            Login::None => Ok(()),
            Login::Password { user, password } => {
                let r = if ext.auth("PLAIN") || !ext.auth("LOGIN") {
                    let cmd = format!("AUTH PLAIN {}\r\n", b64(&format!("\0{user}\0{password}")));
                    command(stream, cmd.as_bytes(), t).await?
                } else {
                    let r = command(stream, b"AUTH LOGIN\r\n", t).await?;
                    if r.code != 334 {
                        return Err(refused(r));
                    }
                    let r = command(stream, format!("{}\r\n", b64(user)).as_bytes(), t).await?;
                    if r.code != 334 {
                        return Err(refused(r));
                    }
                    command(stream, format!("{}\r\n", b64(password)).as_bytes(), t).await?
                };
                if r.code == 235 {
                    Ok(())
                } else {
                    Err(refused(r))
                }
            }
            Login::XOAuth2 { user, tokens } => {
                let token = tokens.token().await.map_err(ClientError::Token)?;
                let ir = b64(&format!("user={user}\x01auth=Bearer {token}\x01\x01"));
                let r = command(stream, format!("AUTH XOAUTH2 {ir}\r\n").as_bytes(), t).await?;
                let r = if r.code == 334 {
                    // A JSON error detail (base64); an empty line ends the
                    // exchange and the relay sends its final refusal.
                    let detail = decode_detail(&r.text);
                    let mut last = command(stream, b"\r\n", t).await?;
                    if !detail.is_empty() {
                        last.text = format!("{} (detail: {detail})", last.text);
                    }
                    last
                } else {
                    r
                };
                if r.code == 235 {
                    Ok(())
                } else {
                    // A refused token may have been revoked: the next session
                    // fetches a new one.
                    tokens.invalidate().await;
                    Err(refused(r))
                }
            }
        }
    }
}

/// MAIL FROM, RCPT TO and DATA for `job`, as written to the relay.
fn envelope(s: &Session, job: &Job) -> Result<Vec<u8>, ClientError> {
    let eight_bit = !job.data.is_ascii();
    if eight_bit && !s.eight_bit {
        return Err(ClientError::Protocol(
            "the message has 8-bit content but the relay does not offer 8BITMIME".into(),
        ));
    }
    let utf8 = !job.from.is_ascii() || !job.to.is_ascii();
    if utf8 && !s.smtputf8 {
        return Err(ClientError::Protocol(
            "the address is not ASCII but the relay does not offer SMTPUTF8".into(),
        ));
    }
    let mut cmds = Vec::with_capacity(job.from.len() + job.to.len() + 64);
    cmds.extend_from_slice(b"MAIL FROM:<");
    cmds.extend_from_slice(job.from.as_bytes());
    cmds.push(b'>');
    if eight_bit {
        cmds.extend_from_slice(b" BODY=8BITMIME");
    }
    if utf8 {
        cmds.extend_from_slice(b" SMTPUTF8");
    }
    cmds.extend_from_slice(b"\r\nRCPT TO:<");
    cmds.extend_from_slice(job.to.as_bytes());
    cmds.extend_from_slice(b">\r\nDATA\r\n");
    Ok(cmds)
}

/// EHLO keywords, upper-cased, with their parameters.
struct Extensions(Vec<String>);

impl Extensions {
    fn parse(text: &str) -> Extensions {
        // The first line is the greeting; the rest are keywords.
        Extensions(
            text.split('\n')
                .skip(1)
                .map(|l| l.trim().to_ascii_uppercase())
                .collect(),
        )
    }

    fn has(&self, keyword: &str) -> bool {
        self.0
            .iter()
            .any(|l| l.split_whitespace().next() == Some(keyword))
    }

    fn auth(&self, mechanism: &str) -> bool {
        self.0.iter().any(|l| {
            let mut words = l.split(|c: char| c.is_whitespace() || c == '=');
            words.next() == Some("AUTH") && words.any(|m| m == mechanism)
        })
    }
}

fn decode_detail(b64: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| b64.trim().to_string())
}

async fn command(
    stream: &mut BufStream<Box<dyn Io>>,
    cmd: &[u8],
    timeout: Duration,
) -> Result<Reply, ClientError> {
    let io = async {
        stream.write_all(cmd).await?;
        stream.flush().await
    };
    match tokio::time::timeout(timeout, io).await {
        Ok(r) => r?,
        Err(_) => return Err(ClientError::Timeout),
    }
    read_reply(stream, timeout).await
}

/// Reads one (possibly multi-line) reply.
async fn read_reply<S: AsyncBufReadExt + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<Reply, ClientError> {
    let read = async {
        let mut text = String::new();
        let mut line = Vec::with_capacity(128);
        loop {
            line.clear();
            let n = (&mut *stream)
                .take(MAX_REPLY_LINE as u64)
                .read_until(b'\n', &mut line)
                .await?;
            if n == 0 {
                return Err(ClientError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the relay closed the connection",
                )));
            }
            let l = String::from_utf8_lossy(&line);
            let l = l.trim_end_matches(['\r', '\n']);
            let code = l
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .filter(|c| (200..600).contains(c))
                .ok_or_else(|| ClientError::Protocol(format!("not an SMTP reply: `{l}`")))?;
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(l.get(4..).unwrap_or(""));
            if l.as_bytes().get(3) != Some(&b'-') {
                return Ok(Reply { code, text });
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout),
    }
}

/// The DATA payload: a leading dot doubled on every line (RFC 5321 4.5.2),
/// ending with CRLF "." CRLF.
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    // Copy whole runs between the lines that start with a dot: most
    // messages have none, and this runs once per message.
    let mut from = 0;
    if data.first() == Some(&b'.') {
        out.push(b'.');
    }
    let mut i = 0;
    while let Some(n) = data[i..].iter().position(|&b| b == b'\n') {
        let at = i + n + 1;
        if data.get(at) == Some(&b'.') {
            out.extend_from_slice(&data[from..at]);
            out.push(b'.');
            from = at;
        }
        i = at;
    }
    out.extend_from_slice(&data[from..]);
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing_doubles_leading_dots_and_terminates() {
        assert_eq!(dot_stuff(b".a\r\nb\r\n..c"), b"..a\r\nb\r\n...c\r\n.\r\n");
        assert_eq!(dot_stuff(b"x\r\n"), b"x\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b"\r\n.\r\n");
        assert_eq!(dot_stuff(b"."), b"..\r\n.\r\n");
        assert_eq!(dot_stuff(b"a\r\n.\r\n.\r\n"), b"a\r\n..\r\n..\r\n.\r\n");
    }

    /// The run-copying version against the byte-at-a-time rule it replaced,
    /// on every short string over the bytes that matter.
    #[test]
    fn dot_stuffing_agrees_with_the_byte_rule() {
        fn reference(data: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            let mut at_line_start = true;
            for &b in data {
                if at_line_start && b == b'.' {
                    out.push(b'.');
                }
                out.push(b);
                at_line_start = b == b'\n';
            }
            if !out.ends_with(b"\r\n") {
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b".\r\n");
            out
        }
        let alphabet = [b'.', b'\r', b'\n', b'x'];
        for len in 0..=6u32 {
            for n in 0..4usize.pow(len) {
                let mut k = n;
                let data: Vec<u8> = (0..len)
                    .map(|_| {
                        let b = alphabet[k % 4];
                        k /= 4;
                        b
                    })
                    .collect();
                assert_eq!(dot_stuff(&data), reference(&data), "{data:?}");
            }
        }
    }

    #[test]
    fn extensions_are_read_from_ehlo() {
        let e = Extensions::parse("relay greets you\nPIPELINING\nAUTH PLAIN xoauth2\n8BITMIME");
        assert!(e.has("PIPELINING"));
        assert!(e.has("8BITMIME"));
        assert!(!e.has("STARTTLS"));
        assert!(e.auth("XOAUTH2"));
        assert!(e.auth("PLAIN"));
        assert!(!e.auth("LOGIN"));
        assert!(Extensions::parse("x\nAUTH=LOGIN").auth("LOGIN"));
    }

    #[tokio::test]
    async fn multi_line_replies_are_joined() {
        let mut input: &[u8] = b"250-first\r\n250-second\r\n250 last\r\n";
        let r = read_reply(&mut input, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(r.text, "first\nsecond\nlast");
        let mut junk: &[u8] = b"hello\r\n";
        assert!(read_reply(&mut junk, Duration::from_secs(1)).await.is_err());
    }
}
