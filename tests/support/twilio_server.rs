//! A loopback Twilio REST API (2010-04-01 Messages.json and Calls.json) that
//! checks every request against Twilio's own OpenAPI description
//! (`data/twilio/twilio_api_v2010.json`): the path matches a spec path, the
//! method exists there, the body is form-encoded, every required field is
//! present, no field is unknown, values have the declared types, and basic
//! auth carries the account SID and token. A request that breaks any rule gets
//! Twilio's error shape and is recorded as a violation; tests assert there
//! were none.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use base64::Engine as _;
use serde_json::{Value, json};

use super::{ConnectionKill, Fault, Faults, HttpServer, parse_form, serve_http};

/// Where the spec lives, next to the repository.
const SPEC_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/data/twilio/twilio_api_v2010.json"
);

/// The spec, parsed once per test binary (it is almost 2 MB).
fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let text = std::fs::read_to_string(SPEC_PATH)
            .unwrap_or_else(|e| panic!("cannot read the Twilio spec at {SPEC_PATH}: {e}"));
        serde_json::from_str(&text).expect("the Twilio spec is JSON")
    })
}

/// Which resource a request created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Message,
    Call,
}

/// One accepted (201) request.
#[derive(Debug, Clone)]
pub struct TwilioRequest {
    pub at: Instant,
    pub resource: Resource,
    pub sid: String,
    pub fields: Vec<(String, String)>,
}

impl TwilioRequest {
    /// The first value of a form field.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A request that broke the spec (or Twilio's documented rules).
#[derive(Debug, Clone)]
pub struct Violation {
    pub method: String,
    pub path: String,
    pub reason: String,
}

struct Inner {
    account_sid: String,
    token: String,
    faults: Arc<Faults>,
    invalid_to: Mutex<HashSet<String>>,
    accepted: Mutex<Vec<TwilioRequest>>,
    violations: Mutex<Vec<Violation>>,
    arrivals: AtomicU64,
    next_sid: AtomicU64,
}

/// A running loopback Twilio; stops when dropped.
pub struct TwilioServer {
    http: HttpServer,
    inner: Arc<Inner>,
}

impl TwilioServer {
    /// Starts a server that accepts `account_sid` with `auth_token`.
    pub async fn start(account_sid: &str, auth_token: &str) -> TwilioServer {
        spec();
        let faults = Arc::new(Faults::default());
        let inner = Arc::new(Inner {
            account_sid: account_sid.to_string(),
            token: auth_token.to_string(),
            faults: faults.clone(),
            invalid_to: Mutex::new(HashSet::new()),
            accepted: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
            arrivals: AtomicU64::new(0),
            next_sid: AtomicU64::new(1),
        });
        let router = Router::new().fallback(handle).with_state(inner.clone());
        let http = serve_http(router, faults).await;
        TwilioServer { http, inner }
    }

    /// The `api_base` to configure.
    pub fn url(&self) -> String {
        self.http.url()
    }

    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// Requests to this `To` number get 400 with Twilio error 21211.
    pub fn reject_to(&self, number: &str) {
        lock(&self.inner.invalid_to).insert(number.to_string());
    }

    /// Accepted requests, in arrival order.
    pub fn requests(&self) -> Vec<TwilioRequest> {
        lock(&self.inner.accepted).clone()
    }

    pub fn violations(&self) -> Vec<Violation> {
        lock(&self.inner.violations).clone()
    }

    /// Every request that reached a handler, including faulted and refused ones.
    pub fn arrivals(&self) -> u64 {
        self.inner.arrivals.load(Ordering::SeqCst)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Twilio's error body: `{code, message, more_info, status}`.
fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    Extension(kill): Extension<ConnectionKill>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    inner.arrivals.fetch_add(1, Ordering::SeqCst);
    let (fault, delay) = inner.faults.take();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match fault {
        Some(Fault::Drop) => return kill.kill().await,
        Some(Fault::TooMany(secs)) => {
            let mut r = twilio_error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests");
            if let Ok(v) = secs.to_string().parse() {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
        Some(Fault::ServerError) => {
            return twilio_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                20500,
                "Internal Server Error",
            );
        }
        None => {}
    }

    let violation = |status: StatusCode, code: u32, reason: String| {
        lock(&inner.violations).push(Violation {
            method: method.to_string(),
            path: uri.path().to_string(),
            reason: reason.clone(),
        });
        twilio_error(status, code, &reason)
    };

    // Path and method, against the spec.
    let Some((template, params)) = match_path(uri.path()) else {
        return violation(
            StatusCode::NOT_FOUND,
            20404,
            format!("no spec path matches {}", uri.path()),
        );
    };
    let path_item = &spec()["paths"][template.as_str()];
    let operation = &path_item[method.as_str().to_ascii_lowercase()];
    if !operation.is_object() {
        return violation(
            StatusCode::METHOD_NOT_ALLOWED,
            20004,
            format!("{method} is not defined for {template}"),
        );
    }

    // Basic auth: the account SID and its token.
    if !auth_ok(&headers, &inner.account_sid, &inner.token) {
        return violation(StatusCode::UNAUTHORIZED, 20003, "Authenticate".into());
    }

    // Path parameters: declared constraints, and the account must be ours.
    for p in operation["parameters"].as_array().into_iter().flatten() {
        if p["in"] != "path" {
            continue;
        }
        let name = p["name"].as_str().unwrap_or_default();
        let Some(value) = params.iter().find(|(n, _)| n == name).map(|(_, v)| v) else {
            return violation(
                StatusCode::BAD_REQUEST,
                20001,
                format!("path parameter {name} missing"),
            );
        };
        if let Err(e) = check_string_schema(&p["schema"], value) {
            return violation(
                StatusCode::BAD_REQUEST,
                20001,
                format!("path parameter {name}: {e}"),
            );
        }
        if name == "AccountSid" && value != &inner.account_sid {
            return violation(
                StatusCode::UNAUTHORIZED,
                20003,
                "AccountSid does not match the credentials".into(),
            );
        }
    }

    // The body: content type, then every field against the schema.
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let content = &operation["requestBody"]["content"];
    let Some(schema) = content.get(&content_type).map(|c| resolve(&c["schema"])) else {
        return violation(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            20001,
            format!("content type `{content_type}` not accepted here"),
        );
    };
    let fields = match parse_form(&body) {
        Ok(f) => f,
        Err(e) => return violation(StatusCode::BAD_REQUEST, 20001, format!("body: {e}")),
    };
    if let Err(reason) = check_fields(schema, &fields) {
        return violation(StatusCode::BAD_REQUEST, 20001, reason);
    }
    let resource = if template.ends_with("/Messages.json") {
        Resource::Message
    } else if template.ends_with("/Calls.json") {
        Resource::Call
    } else {
        return violation(
            StatusCode::NOT_FOUND,
            20404,
            format!("{template} is valid but this loopback server only creates Messages and Calls"),
        );
    };
    let has = |n: &str| fields.iter().any(|(k, _)| k == n);
    // Rules Twilio documents outside the schema.
    match resource {
        Resource::Message => {
            if !has("From") && !has("MessagingServiceSid") {
                return violation(
                    StatusCode::BAD_REQUEST,
                    21603,
                    "A 'From' or 'MessagingServiceSid' parameter is required".into(),
                );
            }
            if !has("Body") && !has("MediaUrl") && !has("ContentSid") {
                return violation(
                    StatusCode::BAD_REQUEST,
                    21602,
                    "Message body is required".into(),
                );
            }
            let body_len = fields
                .iter()
                .find(|(k, _)| k == "Body")
                .map(|(_, v)| v.chars().count())
                .unwrap_or(0);
            if body_len > 1600 {
                return violation(
                    StatusCode::BAD_REQUEST,
                    21617,
                    "The concatenated message body exceeds the 1600 character limit".into(),
                );
            }
        }
        Resource::Call => {
            if !has("Url") && !has("Twiml") && !has("ApplicationSid") {
                return violation(
                    StatusCode::BAD_REQUEST,
                    21205,
                    "Url, Twiml or ApplicationSid is required".into(),
                );
            }
        }
    }

    let field = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let to = field("To").unwrap_or_default();
    if lock(&inner.invalid_to).contains(&to) {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21211,
            &format!("Invalid 'To' Phone Number: {to}"),
        );
    }

    let n = inner.next_sid.fetch_add(1, Ordering::SeqCst);
    let (prefix, status_code) = match resource {
        Resource::Message => ("SM", "queued"),
        Resource::Call => ("CA", "queued"),
    };
    let sid = format!("{prefix}{n:032x}");
    // The spec's own example of the created resource, with our values in it.
    let mut created =
        operation["responses"]["201"]["content"]["application/json"]["examples"]["create"]["value"]
            .clone();
    let base_uri = format!("/2010-04-01/Accounts/{}", inner.account_sid);
    created["sid"] = json!(sid);
    created["account_sid"] = json!(inner.account_sid);
    created["to"] = json!(to);
    created["from"] = json!(field("From"));
    created["status"] = json!(status_code);
    match resource {
        Resource::Message => {
            created["body"] = json!(field("Body"));
            created["messaging_service_sid"] = json!(field("MessagingServiceSid"));
            created["direction"] = json!("outbound-api");
            created["uri"] = json!(format!("{base_uri}/Messages/{sid}.json"));
        }
        Resource::Call => {
            created["direction"] = json!("outbound-api");
            created["uri"] = json!(format!("{base_uri}/Calls/{sid}.json"));
        }
    }
    lock(&inner.accepted).push(TwilioRequest {
        at: Instant::now(),
        resource,
        sid,
        fields,
    });
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        created.to_string(),
    )
        .into_response()
}

fn auth_ok(headers: &HeaderMap, user: &str, password: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(encoded) = value.strip_prefix("Basic ") else {
        return false;
    };
    let Ok(decoded) = base64::prelude::BASE64_STANDARD.decode(encoded.trim()) else {
        return false;
    };
    decoded == format!("{user}:{password}").as_bytes()
}

/// Finds the spec path template matching `path`, with its parameters; the
/// most literal template wins (`/Calls/Events.json` over `/Calls/{Sid}.json`).
fn match_path(path: &str) -> Option<(String, Vec<(String, String)>)> {
    let segments: Vec<&str> = path.split('/').collect();
    let mut found: Option<(String, Vec<(String, String)>)> = None;
    'templates: for template in spec()["paths"].as_object()?.keys() {
        let parts: Vec<&str> = template.split('/').collect();
        if parts.len() != segments.len() {
            continue;
        }
        let mut params = Vec::new();
        for (t, s) in parts.iter().zip(&segments) {
            match (t.find('{'), t.find('}')) {
                (Some(open), Some(close)) if open < close => {
                    let (prefix, suffix) = (&t[..open], &t[close + 1..]);
                    let fits = s.len() > prefix.len() + suffix.len()
                        && s.starts_with(prefix)
                        && s.ends_with(suffix);
                    if !fits {
                        continue 'templates;
                    }
                    params.push((
                        t[open + 1..close].to_string(),
                        s[prefix.len()..s.len() - suffix.len()].to_string(),
                    ));
                }
                _ if t == s => {}
                _ => continue 'templates,
            }
        }
        if found.as_ref().is_none_or(|(_, p)| params.len() < p.len()) {
            found = Some((template.clone(), params));
        }
    }
    found
}

/// Follows a local `$ref` (`#/components/schemas/…`).
fn resolve(schema: &Value) -> &Value {
    match schema["$ref"].as_str() {
        Some(r) => r
            .strip_prefix("#/")
            .map(|p| p.split('/').fold(spec(), |v, k| &v[k]))
            .unwrap_or(schema),
        None => schema,
    }
}

/// Checks form fields against an object schema.
fn check_fields(schema: &Value, fields: &[(String, String)]) -> Result<(), String> {
    let props = schema["properties"]
        .as_object()
        .ok_or("request schema has no properties")?;
    for req in schema["required"].as_array().into_iter().flatten() {
        let req = req.as_str().unwrap_or_default();
        if !fields.iter().any(|(n, _)| n == req) {
            return Err(format!("required field `{req}` missing"));
        }
    }
    let mut seen = HashSet::new();
    for (name, value) in fields {
        let Some(prop) = props.get(name) else {
            return Err(format!("field `{name}` is not in the schema"));
        };
        let prop = resolve(prop);
        if prop["type"] == "array" {
            check_value(resolve(&prop["items"]), value)
                .map_err(|e| format!("field `{name}`: {e}"))?;
        } else {
            if !seen.insert(name.as_str()) {
                return Err(format!("field `{name}` given twice but is not an array"));
            }
            check_value(prop, value).map_err(|e| format!("field `{name}`: {e}"))?;
        }
    }
    Ok(())
}

fn check_value(schema: &Value, value: &str) -> Result<(), String> {
    match schema["type"].as_str().unwrap_or("string") {
        "integer" => value
            .parse::<i64>()
            .map(drop)
            .map_err(|_| format!("`{value}` is not an integer")),
        "number" => value
            .parse::<f64>()
            .map(drop)
            .map_err(|_| format!("`{value}` is not a number")),
        "boolean" => match value {
            "true" | "false" => Ok(()),
            _ => Err(format!("`{value}` is not true or false")),
        },
        _ => check_string_schema(schema, value),
    }
}

fn check_string_schema(schema: &Value, value: &str) -> Result<(), String> {
    if let Some(options) = schema["enum"].as_array() {
        if !options.iter().any(|o| o.as_str() == Some(value)) {
            return Err(format!("`{value}` is not one of {options:?}"));
        }
    }
    let len = value.chars().count() as u64;
    if schema["minLength"].as_u64().is_some_and(|m| len < m) {
        return Err("too short".into());
    }
    if schema["maxLength"].as_u64().is_some_and(|m| len > m) {
        return Err("too long".into());
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        check_sid_pattern(pattern, value)?;
    }
    let ignore_format = schema["x-twilio"]["ignoreFormat"] == true;
    match schema["format"].as_str() {
        _ if ignore_format => Ok(()),
        // klaxon only ever sends E.164 numbers, so hold it to that.
        Some("phone-number") | Some("endpoint") if !is_e164(value) => {
            Err(format!("`{value}` is not an E.164 number"))
        }
        Some("uri") if !(value.starts_with("http://") || value.starts_with("https://")) => {
            Err(format!("`{value}` is not an http(s) URI"))
        }
        Some("http-method") if !matches!(value, "GET" | "POST") => {
            Err(format!("`{value}` is not GET or POST"))
        }
        Some("twiml") => check_twiml(value),
        _ => Ok(()),
    }
}

/// The spec's SID patterns all read `^XX[0-9a-fA-F]{32}$`.
fn check_sid_pattern(pattern: &str, value: &str) -> Result<(), String> {
    let Some(prefix) = pattern
        .strip_prefix('^')
        .and_then(|p| p.strip_suffix("[0-9a-fA-F]{32}$"))
    else {
        return Ok(()); // not a SID pattern; nothing this server checks
    };
    let fits = value.len() == prefix.len() + 32
        && value.starts_with(prefix)
        && value[prefix.len()..].bytes().all(|b| b.is_ascii_hexdigit());
    if fits {
        Ok(())
    } else {
        Err(format!("`{value}` does not match {pattern}"))
    }
}

fn is_e164(s: &str) -> bool {
    s.strip_prefix('+').is_some_and(|d| {
        (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0')
    })
}

/// A light well-formedness check: a `<Response>` document whose tags nest and
/// whose `&` all start entities.
fn check_twiml(xml: &str) -> Result<(), String> {
    let body = xml
        .trim()
        .strip_prefix(r#"<?xml version="1.0" encoding="UTF-8"?>"#)
        .unwrap_or(xml.trim());
    if !body.starts_with("<Response>") || !body.ends_with("</Response>") {
        return Err("TwiML must be a <Response> document".into());
    }
    for (i, _) in xml.match_indices('&') {
        let rest = &xml[i..];
        if !["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
            .iter()
            .any(|e| rest.starts_with(e))
        {
            return Err(format!("unescaped `&` at byte {i}"));
        }
    }
    let mut stack = Vec::new();
    let mut rest = body;
    while let Some(open) = rest.find('<') {
        let close = rest[open..].find('>').ok_or("unterminated tag")? + open;
        let tag = &rest[open + 1..close];
        if let Some(name) = tag.strip_prefix('/') {
            if stack.pop() != Some(name.trim()) {
                return Err(format!("mismatched </{name}>"));
            }
        } else if !tag.ends_with('/') {
            stack.push(tag.split_whitespace().next().unwrap_or_default());
        }
        if rest[open + 1..close].contains('<') {
            return Err("`<` inside a tag".into());
        }
        rest = &rest[close + 1..];
    }
    if stack.is_empty() {
        Ok(())
    } else {
        Err(format!("unclosed tags {stack:?}"))
    }
}
