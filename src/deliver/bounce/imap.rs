//! A small IMAP4rev1 client (RFC 3501), just what the bounce poller needs:
//! LOGIN or AUTHENTICATE XOAUTH2, SELECT, UID SEARCH UNSEEN, UID FETCH
//! BODY.PEEK[], UID STORE, EXPUNGE, LOGOUT; implicit TLS (port 993) through
//! tokio-rustls or plain text on a trusted network.
//!
//! Why our own: `async-imap` pulls a second async stack (async-std or its
//! own tokio compat layer, async-native-tls); `imap` is blocking and its 3.0
//! has stayed in alpha. Ten commands over one socket are less code to trust
//! than either, and share the TLS setup of our SMTP client.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// The largest message we read; a bounce is a few kilobytes, a message
/// carrying the whole original a few hundred.
const MAX_LITERAL: usize = 25 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS with {0} failed: {1}")]
    Tls(String, std::io::Error),
    #[error("the IMAP server did not answer within {0:?}")]
    Timeout(Duration),
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server refused {command}: {answer}")]
    Refused { command: String, answer: String },
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One untagged answer line, with the literals (`{n}` blocks) it carried.
#[derive(Debug, Default)]
pub struct Untagged {
    pub text: String,
    pub literals: Vec<Vec<u8>>,
}

pub struct Imap {
    stream: BufReader<Box<dyn Io>>,
    tag: u32,
    timeout: Duration,
}

impl Imap {
    /// Connects and reads the greeting. `tls`: implicit TLS with this config.
    pub async fn connect(
        host: &str,
        port: u16,
        tls: Option<Arc<rustls::ClientConfig>>,
        timeout: Duration,
    ) -> Result<Imap, ImapError> {
        let at = format!("{host}:{port}");
        let tcp = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| ImapError::Timeout(timeout))?
            .map_err(|e| ImapError::Connect(at.clone(), e))?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Io> = match tls {
            None => Box::new(tcp),
            Some(cfg) => {
                let name = rustls::pki_types::ServerName::try_from(host.to_string())
                    .map_err(|e| ImapError::Tls(at.clone(), std::io::Error::other(e)))?;
                let s = tokio::time::timeout(
                    timeout,
                    tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
                )
                .await
                .map_err(|_| ImapError::Timeout(timeout))?
                .map_err(|e| ImapError::Tls(at.clone(), e))?;
                Box::new(s)
            }
        };
        let mut imap = Imap {
            stream: BufReader::new(stream),
            tag: 0,
            timeout,
        };
        let greeting = imap.read_line().await?;
        if !(greeting.text.starts_with("* OK") || greeting.text.starts_with("* PREAUTH")) {
            return Err(ImapError::Protocol(format!(
                "greeting `{}`",
                greeting.text.trim_end()
            )));
        }
        Ok(imap)
    }

    /// Reads one response line, with its literals.
    async fn read_line(&mut self) -> Result<Untagged, ImapError> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.read_line_inner())
            .await
            .map_err(|_| ImapError::Timeout(timeout))?
    }

    async fn read_line_inner(&mut self) -> Result<Untagged, ImapError> {
        let mut out = Untagged::default();
        loop {
            let mut line = Vec::new();
            let n = self.stream.read_until(b'\n', &mut line).await?;
            if n == 0 {
                return Err(ImapError::Protocol(
                    "the server closed the connection".into(),
                ));
            }
            let text = String::from_utf8_lossy(&line).into_owned();
            let trimmed = text.trim_end_matches(['\r', '\n']);
            out.text.push_str(trimmed);
            // A literal: `{123}` (or `{123+}`) at the end of the line, then that many bytes.
            let Some(size) = trimmed
                .strip_suffix('}')
                .and_then(|t| t.rsplit_once('{'))
                .and_then(|(_, n)| n.trim_end_matches('+').parse::<usize>().ok())
            else {
                return Ok(out);
            };
            if size > MAX_LITERAL {
                return Err(ImapError::Protocol(format!(
                    "a {size}-byte message is larger than we read"
                )));
            }
            let mut lit = vec![0u8; size];
            self.stream.read_exact(&mut lit).await?;
            out.literals.push(lit);
        }
    }

    /// Sends one tagged command and collects the untagged answers until its
    /// tagged completion; `NO` and `BAD` become `Refused`. `shown` is what
    /// errors call the command (never a password).
    async fn command(&mut self, line: &str, shown: &str) -> Result<Vec<Untagged>, ImapError> {
        self.tag += 1;
        let tag = format!("k{}", self.tag);
        let wire = format!("{tag} {line}\r\n");
        let timeout = self.timeout;
        tokio::time::timeout(timeout, async {
            self.stream.get_mut().write_all(wire.as_bytes()).await?;
            self.stream.get_mut().flush().await
        })
        .await
        .map_err(|_| ImapError::Timeout(timeout))??;
        let mut untagged = Vec::new();
        loop {
            let l = self.read_line().await?;
            if let Some(rest) = l.text.strip_prefix(&format!("{tag} ")) {
                if rest.starts_with("OK") {
                    return Ok(untagged);
                }
                return Err(ImapError::Refused {
                    command: shown.to_string(),
                    answer: rest.to_string(),
                });
            }
            if l.text.starts_with('+') {
                // A continuation request: only AUTHENTICATE gets one here,
                // with the error details; an empty line ends the exchange.
                self.stream.get_mut().write_all(b"\r\n").await?;
                self.stream.get_mut().flush().await?;
                continue;
            }
            untagged.push(l);
        }
    }

    pub async fn login(&mut self, user: &str, password: &str) -> Result<(), ImapError> {
        let line = format!("LOGIN {} {}", quote(user), quote(password));
        self.command(&line, "LOGIN").await.map(|_| ())
    }

    /// SASL XOAUTH2 with the initial response (Microsoft 365, Gmail).
    pub async fn authenticate_xoauth2(&mut self, user: &str, token: &str) -> Result<(), ImapError> {
        let sasl = base64::engine::general_purpose::STANDARD
            .encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"));
        self.command(
            &format!("AUTHENTICATE XOAUTH2 {sasl}"),
            "AUTHENTICATE XOAUTH2",
        )
        .await
        .map(|_| ())
    }

    pub async fn select(&mut self, mailbox: &str) -> Result<(), ImapError> {
        let line = format!("SELECT {}", quote(mailbox));
        self.command(&line, &line).await.map(|_| ())
    }

    /// UIDs of the messages not yet seen.
    pub async fn unseen(&mut self) -> Result<Vec<u32>, ImapError> {
        let answers = self.command("UID SEARCH UNSEEN", "UID SEARCH").await?;
        Ok(answers
            .iter()
            .filter_map(|a| a.text.strip_prefix("* SEARCH"))
            .flat_map(|rest| rest.split_ascii_whitespace())
            .filter_map(|n| n.parse().ok())
            .collect())
    }

    /// The whole message, without setting `\Seen`.
    pub async fn fetch(&mut self, uid: u32) -> Result<Vec<u8>, ImapError> {
        let line = format!("UID FETCH {uid} BODY.PEEK[]");
        let answers = self.command(&line, &line).await?;
        answers
            .into_iter()
            .find(|a| a.text.contains("FETCH") && !a.literals.is_empty())
            .and_then(|a| a.literals.into_iter().next())
            .ok_or_else(|| ImapError::Protocol(format!("no body for UID {uid}")))
    }

    /// Adds flags, e.g. `\Seen \Deleted`.
    pub async fn add_flags(&mut self, uid: u32, flags: &str) -> Result<(), ImapError> {
        let line = format!("UID STORE {uid} +FLAGS.SILENT ({flags})");
        self.command(&line, &line).await.map(|_| ())
    }

    pub async fn expunge(&mut self) -> Result<(), ImapError> {
        self.command("EXPUNGE", "EXPUNGE").await.map(|_| ())
    }

    pub async fn logout(mut self) {
        let _ = self.command("LOGOUT", "LOGOUT").await;
    }
}

/// An IMAP quoted string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        // CR and LF cannot appear in a quoted string; they would end the command.
        if c != '\r' && c != '\n' {
            out.push(c);
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quoting_cannot_end_the_command() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quote("x\r\nk2 DELETE INBOX"), "\"xk2 DELETE INBOX\"");
    }
}
