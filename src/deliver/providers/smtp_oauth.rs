//! OAuth 2.0 access tokens for SMTP XOAUTH2: the client-credentials grant
//! (Microsoft 365) and the service-account JWT grant (RFC 7523, Google
//! Workspace), cached and refreshed before they expire.
//!
//! Exchange Online retires Basic authentication for SMTP AUTH; a district
//! on Microsoft 365 must sign in with a token instead of a password.

use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::sync::Mutex;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::PrivateKeyDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;

/// A token is replaced when less than this part of its life is left (at most
/// five minutes before it expires), so a session never signs in with a token
/// that runs out on the way.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// How a token is obtained.
pub enum Grant {
    /// `grant_type=client_credentials` with a client id and secret.
    ClientCredentials { client_id: String, secret: String },
    /// `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`: a JWT
    /// signed RS256 with the service account's key, issued by `client_id`
    /// (the service account's address) on behalf of `subject` (the mailbox).
    JwtBearer {
        client_id: String,
        subject: String,
        key: std::sync::Arc<dyn rustls::sign::SigningKey>,
    },
}

struct Cached {
    token: String,
    refresh_at: Instant,
}

/// Fetches and caches one access token.
pub struct TokenSource {
    http: reqwest::Client,
    token_url: String,
    scope: String,
    grant: Grant,
    cached: Mutex<Option<Cached>>,
}

impl TokenSource {
    pub fn new(http: reqwest::Client, token_url: String, scope: String, grant: Grant) -> Self {
        TokenSource {
            http,
            token_url,
            scope,
            grant,
            cached: Mutex::new(None),
        }
    }

    /// A valid token: the cached one, or a fresh one if it is about to expire.
    /// One caller fetches while the others wait for it.
    pub async fn token(&self) -> Result<String, String> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| Instant::now() < c.refresh_at) {
            return Ok(c.token.clone());
        }
        let (token, lifetime) = self.fetch().await?;
        let margin = REFRESH_MARGIN.min(lifetime / 2);
        *cached = Some(Cached {
            token: token.clone(),
            refresh_at: Instant::now() + lifetime - margin,
        });
        Ok(token)
    }

    /// Forgets the cached token (the relay refused it; it may be revoked).
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    async fn fetch(&self) -> Result<(String, Duration), String> {
        let form: Vec<(&str, String)> = match &self.grant {
            Grant::ClientCredentials { client_id, secret } => vec![
                ("grant_type", "client_credentials".into()),
                ("client_id", client_id.clone()),
                ("client_secret", secret.clone()),
                ("scope", self.scope.clone()),
            ],
            Grant::JwtBearer {
                client_id,
                subject,
                key,
            } => vec![
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:jwt-bearer".into(),
                ),
                (
                    "assertion",
                    jwt(
                        key.as_ref(),
                        client_id,
                        subject,
                        &self.scope,
                        &self.token_url,
                    )?,
                ),
            ],
        };
        let resp = self
            .http
            .post(&self.token_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| format!("token endpoint unreachable: {e}"))?;
        let status = resp.status();
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| format!("token endpoint answered {status} without JSON: {e}"))?;
        if !status.is_success() {
            let what = body["error_description"]
                .as_str()
                .or(body["error"].as_str())
                .unwrap_or("no reason given");
            return Err(format!(
                "token endpoint refused ({status}): {what}; check client_id, the secret or key, and scope"
            ));
        }
        let token = body["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or("token endpoint answered without access_token")?;
        // Absent expires_in: assume an hour, the usual lifetime.
        let secs = body["expires_in"]
            .as_u64()
            .or_else(|| body["expires_in"].as_str()?.parse().ok())
            .unwrap_or(3600);
        Ok((token.to_string(), Duration::from_secs(secs.max(1))))
    }
}

/// Reads an RSA private key for the JWT grant: a PEM file (PKCS#8 or PKCS#1)
/// or Google's JSON key file (its `private_key`). Returns the key and, from
/// a JSON key file, the service account's `client_email`.
pub fn read_signing_key(
    text: &str,
) -> Result<(std::sync::Arc<dyn rustls::sign::SigningKey>, Option<String>), String> {
    let (pem, email) = if text.trim_start().starts_with('{') {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not a JSON key file: {e}"))?;
        let pem = v["private_key"]
            .as_str()
            .ok_or("the JSON key file has no `private_key`")?
            .to_string();
        (pem, v["client_email"].as_str().map(str::to_string))
    } else {
        (text.to_string(), None)
    };
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("no PEM private key: {e}"))?;
    let key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)
        .map_err(|e| format!("unusable private key: {e}"))?;
    if key.algorithm() != rustls::SignatureAlgorithm::RSA {
        return Err("the key is not an RSA key (the JWT grant signs RS256)".into());
    }
    Ok((key, email))
}

/// The signed assertion: header.claims.signature, each base64url.
fn jwt(
    key: &dyn rustls::sign::SigningKey,
    iss: &str,
    sub: &str,
    scope: &str,
    aud: &str,
) -> Result<String, String> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let now = jiff::Timestamp::now().as_second();
    let header = b64(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = b64(serde_json::json!({
        "iss": iss,
        "sub": sub,
        "scope": scope,
        "aud": aud,
        "iat": now,
        "exp": now + 3600,
    })
    .to_string()
    .as_bytes());
    let signing_input = format!("{header}.{claims}");
    let signer = key
        .choose_scheme(&[rustls::SignatureScheme::RSA_PKCS1_SHA256])
        .ok_or("the key cannot sign RS256")?;
    let sig = signer
        .sign(signing_input.as_bytes())
        .map_err(|e| format!("cannot sign the JWT: {e}"))?;
    Ok(format!("{signing_input}.{}", b64(&sig)))
}
