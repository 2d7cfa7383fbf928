//! Where a request comes from, for the audit log: every request runs with
//! its client's address as the audit origin (`store::audit::with_origin`),
//! so the lifecycle's entries say from where without each handler passing
//! it down. The `klaxon` command line adds `(cli)` by its User-Agent.

use axum::extract::{ConnectInfo, Request};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

/// The User-Agent prefix of the `klaxon` command line's API client.
pub const CLI_USER_AGENT: &str = "klaxon-cli/";

/// The audit origin of a request: the peer's IP address, `(cli)` added
/// when the command line sent it.
pub fn of(req: &Request) -> String {
    let ip = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cli = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with(CLI_USER_AGENT));
    if cli { format!("{ip} (cli)") } else { ip }
}

/// Middleware: runs the request with its origin set.
pub async fn layer(req: Request, next: Next) -> Response {
    let origin = of(&req);
    crate::store::audit::with_origin(origin, next.run(req)).await
}
