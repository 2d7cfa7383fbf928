//! The HTTP accept loop, hardened against clients that hold connections:
//! a header-read timeout (it also closes kept-alive connections that sit
//! idle), a body-read deadline, a cap on open connections with headroom kept
//! for health checks and acknowledgements, and a shutdown bounded by the
//! grace period whatever clients do.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// Descriptors kept back from connections: SQLite, provider requests, logs.
const FD_HEADROOM: u64 = 128;

/// What the accept loop allows one client.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request's header must arrive within this; a kept-alive connection
    /// waiting for its next request is closed after it too.
    pub header_read: Duration,
    /// A request's whole body must arrive within this.
    pub body_read: Duration,
    /// Open connections at most; the last eighth is kept for health checks
    /// and acknowledgements.
    pub max_connections: usize,
}

impl Limits {
    /// Connections beyond this many are served only on the reserved paths.
    fn general(&self) -> usize {
        let reserve = (self.max_connections / 8).clamp(2, 256);
        self.max_connections.saturating_sub(reserve).max(1)
    }

    /// Lowers `max_connections` to what the open-file limit allows.
    pub fn fit_to_fd_limit(mut self, nofile: Option<u64>) -> Limits {
        if let Some(n) = nofile {
            let fit = n.saturating_sub(FD_HEADROOM).max(16) as usize;
            self.max_connections = self.max_connections.min(fit);
        }
        self
    }
}

/// Paths served even when the general share of connections is used up: an
/// orchestrator's probes, acknowledgement pages and SMS/voice replies.
fn reserved_path(path: &str) -> bool {
    path == "/healthz"
        || path == "/readyz"
        || path.starts_with("/a/")
        || path.starts_with("/hooks/twilio/")
}

/// Raises the soft open-file limit to the hard limit; returns the limit in
/// force afterwards (`None` if it cannot be read).
pub fn raise_fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            // An unlimited hard limit is not a valid soft one for NOFILE.
            let want = if lim.rlim_max == libc::RLIM_INFINITY {
                1 << 20
            } else {
                lim.rlim_max
            };
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = want;
            }
        }
    }
    Some(lim.rlim_cur)
}

/// One open connection, as the accept loop sees it.
struct Conn {
    /// Requests being handled on it now; a connection with none may be cut
    /// to make room.
    busy: AtomicUsize,
    evict: Notify,
}

type Registry = Arc<Mutex<BTreeMap<u64, Arc<Conn>>>>;

/// Serves `router` on `listener` until `stop` turns true, then lets
/// requests in flight finish for at most `grace` and cuts what is left.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let registry: Registry = Arc::new(Mutex::new(BTreeMap::new()));
    let mut tasks = tokio::task::JoinSet::new();
    let mut next_id: u64 = 0;
    let mut last_warning: Option<Instant> = None;
    let mut warn = |msg: &str, error: Option<&std::io::Error>| {
        // At most one line a second: an attack must not flood the log.
        if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            last_warning = Some(Instant::now());
            match error {
                Some(e) => {
                    tracing::warn!(error = %e, max_connections = limits.max_connections, "{msg}")
                }
                None => tracing::warn!(max_connections = limits.max_connections, "{msg}"),
            }
        }
    };
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            a = listener.accept() => a,
        };
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn("Cannot accept a connection; pausing briefly.", Some(&e));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let open = registry.lock().map(|r| r.len()).unwrap_or(0);
        if open >= limits.max_connections && !evict_one_idle(&registry) {
            warn(
                "Connection limit reached and every connection is busy; refusing new ones.",
                None,
            );
            drop(stream);
            continue;
        }
        let reserved_only = open >= limits.general();
        let conn = Arc::new(Conn {
            busy: AtomicUsize::new(0),
            evict: Notify::new(),
        });
        next_id += 1;
        let id = next_id;
        if let Ok(mut r) = registry.lock() {
            r.insert(id, conn.clone());
        }
        let registry = registry.clone();
        let router = router.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            serve_connection(stream, peer, router, limits, conn, reserved_only, stop).await;
            if let Ok(mut r) = registry.lock() {
                r.remove(&id);
            }
        });
    }
    // Shutdown: every connection was told by `stop`; kept-alive ones close
    // at once, requests in flight get until the deadline.
    let deadline = Instant::now() + grace;
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {}
    if !tasks.is_empty() {
        tracing::warn!(
            connections = tasks.len(),
            "Connections still open after the grace period; closing them."
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

/// Cuts the oldest connection with no request in flight; false if none.
fn evict_one_idle(registry: &Registry) -> bool {
    let Ok(mut r) = registry.lock() else {
        return false;
    };
    let victim = r
        .iter()
        .find(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
        .map(|(id, _)| *id);
    match victim.and_then(|id| r.remove(&id)) {
        Some(c) => {
            c.evict.notify_one();
            true
        }
        None => false,
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    conn: Arc<Conn>,
    reserved_only: bool,
    mut stop: watch::Receiver<bool>,
) {
    let state = conn.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let router = router.clone();
        let state = state.clone();
        async move {
            if reserved_only && !reserved_path(req.uri().path()) {
                return Ok::<_, Infallible>(busy_answer());
            }
            state.busy.fetch_add(1, Ordering::AcqRel);
            let mut req = req.map(|b| Body::new(DeadlineBody::new(b, limits.body_read)));
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let resp = router.oneshot(req).await;
            state.busy.fetch_sub(1, Ordering::AcqRel);
            resp
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = conn.evict.notified() => return,
        _ = stop.wait_for(|s| *s) => {}
    }
    // Shutting down: finish the request in flight, then close. The accept
    // loop aborts this task at the end of the grace period.
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

fn busy_answer() -> Response<Body> {
    let mut resp = Response::new(Body::from(
        r#"{"error":"the server is at its connection limit; try again in a moment"}"#,
    ));
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    h.insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    resp
}

/// A request body that must arrive whole before a deadline: a client that
/// drips its body a byte at a time is cut, not waited for.
struct DeadlineBody {
    body: Incoming,
    deadline: Pin<Box<Sleep>>,
    limit: Duration,
}

impl DeadlineBody {
    fn new(body: Incoming, limit: Duration) -> DeadlineBody {
        DeadlineBody {
            body,
            deadline: Box::pin(tokio::time::sleep(limit)),
            limit,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
struct BodyTimeout(Duration);

impl http_body::Body for DeadlineBody {
    type Data = hyper::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(self.limit)))));
        }
        Pin::new(&mut self.body)
            .poll_frame(cx)
            .map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headroom_is_kept_and_the_cap_fits_the_fd_limit() {
        let l = Limits {
            header_read: Duration::from_secs(1),
            body_read: Duration::from_secs(1),
            max_connections: 1024,
        };
        assert_eq!(l.general(), 896);
        assert_eq!(l.fit_to_fd_limit(Some(256)).max_connections, 128);
        assert_eq!(l.fit_to_fd_limit(None).max_connections, 1024);
        assert!(reserved_path("/a/abc") && reserved_path("/readyz"));
        assert!(!reserved_path("/api/v1/alerts"));
    }
}
