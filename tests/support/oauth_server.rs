//! A loopback OAuth 2.0 token endpoint: the client-credentials grant
//! (Microsoft identity platform) and the JWT-bearer grant (RFC 7523, Google),
//! with the JWT's RS256 signature checked against the service account's
//! public key. Hands out `tok-1`, `tok-2`, … with a chosen lifetime.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Form;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use base64::Engine as _;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;

/// What the endpoint accepts.
pub enum Expect {
    ClientCredentials {
        client_id: String,
        secret: String,
        scope: String,
    },
    /// A JWT from `iss` for `sub`, signed by the key whose raw public key
    /// (RSAPublicKey DER) is given.
    Jwt {
        iss: String,
        sub: String,
        scope: String,
        public_key: Vec<u8>,
    },
}

struct Inner {
    expect: Expect,
    url: String,
    expires_in: AtomicU64,
    issued: AtomicU64,
    /// The reason for each refusal, for assertions.
    refusals: Mutex<Vec<String>>,
}

pub struct OAuthServer {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OAuthServer {
    pub async fn start(expect: Expect) -> OAuthServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            expect,
            url: format!("http://{addr}/token"),
            expires_in: AtomicU64::new(3600),
            issued: AtomicU64::new(0),
            refusals: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/token", post(token))
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        OAuthServer { addr, inner, task }
    }

    pub fn url(&self) -> String {
        self.inner.url.clone()
    }

    /// Lifetime (`expires_in`) of tokens issued from now on.
    pub fn set_expires_in(&self, secs: u64) {
        self.inner.expires_in.store(secs, Ordering::SeqCst);
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> u64 {
        self.inner.issued.load(Ordering::SeqCst)
    }

    pub fn refusals(&self) -> Vec<String> {
        self.inner.refusals.lock().unwrap().clone()
    }
}

async fn token(
    State(inner): State<Arc<Inner>>,
    Form(form): Form<HashMap<String, String>>,
) -> (StatusCode, axum::Json<serde_json::Value>) {
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    let check = match &inner.expect {
        Expect::ClientCredentials {
            client_id,
            secret,
            scope,
        } => {
            if field("grant_type") != "client_credentials" {
                Err("unsupported_grant_type")
            } else if field("client_id") != client_id || field("client_secret") != secret {
                Err("invalid_client")
            } else if field("scope") != scope {
                Err("invalid_scope")
            } else {
                Ok(())
            }
        }
        Expect::Jwt {
            iss,
            sub,
            scope,
            public_key,
        } => {
            if field("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
                Err("unsupported_grant_type")
            } else {
                check_jwt(field("assertion"), iss, sub, scope, &inner.url, public_key)
            }
        }
    };
    if let Err(e) = check {
        inner.refusals.lock().unwrap().push(e.to_string());
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(
                serde_json::json!({"error": e, "error_description": format!("refused: {e}")}),
            ),
        );
    }
    let n = inner.issued.fetch_add(1, Ordering::SeqCst) + 1;
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({
            "access_token": format!("tok-{n}"),
            "token_type": "Bearer",
            "expires_in": inner.expires_in.load(Ordering::SeqCst),
        })),
    )
}

fn check_jwt(
    jwt: &str,
    iss: &str,
    sub: &str,
    scope: &str,
    aud: &str,
    public_key: &[u8],
) -> Result<(), &'static str> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = jwt.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("invalid_grant: not a JWT");
    };
    let header: serde_json::Value =
        serde_json::from_slice(&b64.decode(h).map_err(|_| "invalid_grant")?)
            .map_err(|_| "invalid_grant")?;
    if header["alg"] != "RS256" {
        return Err("invalid_grant: alg");
    }
    let sig = b64.decode(s).map_err(|_| "invalid_grant")?;
    let algs = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
    let (_, verifiers) = algs
        .mapping
        .iter()
        .find(|(scheme, _)| *scheme == rustls::SignatureScheme::RSA_PKCS1_SHA256)
        .unwrap();
    verifiers[0]
        .verify_signature(public_key, format!("{h}.{c}").as_bytes(), &sig)
        .map_err(|_| "invalid_grant: bad signature")?;
    let claims: serde_json::Value =
        serde_json::from_slice(&b64.decode(c).map_err(|_| "invalid_grant")?)
            .map_err(|_| "invalid_grant")?;
    let now = jiff::Timestamp::now().as_second();
    if claims["iss"] != iss
        || claims["sub"] != sub
        || claims["scope"] != scope
        || claims["aud"] != aud
    {
        return Err("invalid_grant: claims");
    }
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap_or(0),
        claims["exp"].as_i64().unwrap_or(0),
    );
    if iat > now + 5 || exp <= now || exp - iat > 3600 {
        return Err("invalid_grant: times");
    }
    Ok(())
}
