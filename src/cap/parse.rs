//! Reading CAP: one CAP 1.1 or 1.2 `<alert>`, an ATOM feed whose entries
//! carry CAP (IPAWS embeds whole alerts, the NWS index carries `cap:` fields),
//! or api.weather.gov GeoJSON (one feature or a collection). A document that
//! cannot be read is an error; one bad entry in a feed is skipped and listed.

use jiff::Timestamp;
use serde_json::Value;

use super::xml::{self, El};
use super::{
    Area, CapAlert, Certainty, Circle, Info, MsgType, Reference, Scope, Severity, Status, Urgency,
};

pub const CAP11: &str = "urn:oasis:names:tc:emergency:cap:1.1";
pub const CAP12: &str = "urn:oasis:names:tc:emergency:cap:1.2";
const ATOM: &str = "http://www.w3.org/2005/Atom";

/// Larger documents are refused: the national NWS index is under 1 MB.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;

/// Why a document or an entry could not be read. Field paths name the
/// element, e.g. `info[0].area[1].polygon`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CapError {
    #[error("the document is empty")]
    Empty,
    #[error("the document is larger than {} MB", MAX_DOCUMENT_BYTES / (1024 * 1024))]
    TooLarge,
    #[error("the document is not UTF-8")]
    NotUtf8,
    #[error("malformed XML: {0}")]
    Xml(String),
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error(
        "not a CAP document: the root is `{0}`; expected a CAP <alert>, an ATOM <feed> or api.weather.gov GeoJSON"
    )]
    UnknownRoot(String),
    #[error("unsupported CAP namespace `{0}`; expected {CAP11} or {CAP12} (CAP 1.1 or 1.2)")]
    Namespace(String),
    #[error("`{0}` is missing")]
    Missing(String),
    #[error("`{field}` = `{value}` is not valid: {why}")]
    Invalid {
        field: String,
        value: String,
        why: String,
    },
}

/// What kind of document it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DocumentKind {
    Cap11,
    Cap12,
    Atom,
    GeoJson,
}

impl DocumentKind {
    pub fn describe(self) -> &'static str {
        match self {
            DocumentKind::Cap11 => "CAP 1.1 alert",
            DocumentKind::Cap12 => "CAP 1.2 alert",
            DocumentKind::Atom => "ATOM feed",
            DocumentKind::GeoJson => "api.weather.gov GeoJSON",
        }
    }
}

/// A feed entry that could not be read: skipped, not fatal.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    /// Position in the feed, from 0.
    pub index: usize,
    /// The entry's id, when it has one.
    pub id: Option<String>,
    pub error: CapError,
}

/// A document read: its alerts and the entries skipped.
#[derive(Debug, Clone)]
pub struct Document {
    pub kind: DocumentKind,
    pub alerts: Vec<CapAlert>,
    pub skipped: Vec<Skipped>,
}

/// Reads any supported document; the first non-blank byte decides XML or JSON.
pub fn parse_document(bytes: &[u8]) -> Result<Document, CapError> {
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(CapError::TooLarge);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| CapError::NotUtf8)?;
    let text = text.trim_start_matches('\u{feff}').trim();
    if text.is_empty() {
        return Err(CapError::Empty);
    }
    if text.starts_with('{') {
        let v: Value =
            serde_json::from_str(text).map_err(|e| CapError::Json(clip(&e.to_string(), 300)))?;
        return geojson(&v);
    }
    // An error may quote the document (an entity name runs to the next `;`):
    // keep what a person reads, not a 60 kB echo (found by fuzzing).
    let root = xml::parse(text).map_err(|e| CapError::Xml(clip(&e, 300)))?;
    match (root.name.as_str(), root.ns.as_deref()) {
        ("feed", Some(ATOM)) => Ok(atom(&root)),
        ("alert", ns) => {
            let kind = match ns {
                Some(CAP11) => DocumentKind::Cap11,
                Some(CAP12) => DocumentKind::Cap12,
                other => {
                    return Err(CapError::Namespace(clip(other.unwrap_or("(none)"), 200)));
                }
            };
            Ok(Document {
                kind,
                alerts: vec![cap_alert(&root)?],
                skipped: vec![],
            })
        }
        (name, _) => Err(CapError::UnknownRoot(format!("<{}>", clip(name, 200)))),
    }
}

/// `s` cut to `max` characters, marked when cut.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

fn missing(field: &str) -> CapError {
    CapError::Missing(field.to_string())
}

fn invalid(field: &str, value: &str, why: impl Into<String>) -> CapError {
    CapError::Invalid {
        field: field.to_string(),
        value: value.chars().take(80).collect(),
        why: why.into(),
    }
}

fn time(field: &str, value: &str) -> Result<Timestamp, CapError> {
    value.trim().parse::<Timestamp>().map_err(|_| {
        invalid(
            field,
            value,
            "expected a date-time with offset, e.g. 2021-12-27T10:08:00-06:00",
        )
    })
}

fn opt_time(field: &str, value: Option<String>) -> Result<Option<Timestamp>, CapError> {
    value.map(|v| time(field, &v)).transpose()
}

fn code<T>(
    field: &str,
    value: Option<String>,
    parse: fn(&str) -> Option<T>,
    all: &[&str],
) -> Result<T, CapError> {
    let v = value.ok_or_else(|| missing(field))?;
    parse(&v).ok_or_else(|| invalid(field, &v, format!("expected one of {}", all.join(", "))))
}

/// `(valueName, value)` pairs in document order. The NWS ATOM index puts
/// several pairs in one `<cap:geocode>`, so pairs are read off the sequence
/// rather than one per element.
fn pairs(el: &El) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut name: Option<String> = None;
    for c in &el.children {
        match c.name.as_str() {
            "valueName" => name = Some(c.text.trim().to_string()),
            "value" => {
                if let Some(n) = name.take() {
                    out.push((n, c.text.trim().to_string()));
                }
            }
            _ => {}
        }
    }
    out
}

/// `lat,lon lat,lon …`; blank means no polygon (the NWS writes `<polygon></polygon>`).
pub fn polygon(field: &str, text: &str) -> Result<Option<Vec<(f64, f64)>>, CapError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let mut points = Vec::new();
    for pair in text.split_whitespace() {
        points.push(point(field, pair)?);
    }
    if points.len() < 4 || points.first() != points.last() {
        return Err(invalid(
            field,
            text,
            "a polygon needs at least 4 \"lat,lon\" pairs, the last equal to the first",
        ));
    }
    Ok(Some(points))
}

fn point(field: &str, pair: &str) -> Result<(f64, f64), CapError> {
    let (lat, lon) = pair
        .split_once(',')
        .ok_or_else(|| invalid(field, pair, "expected \"lat,lon\""))?;
    let lat: f64 = lat
        .trim()
        .parse()
        .map_err(|_| invalid(field, pair, "latitude is not a number"))?;
    let lon: f64 = lon
        .trim()
        .parse()
        .map_err(|_| invalid(field, pair, "longitude is not a number"))?;
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return Err(invalid(field, pair, "latitude or longitude out of range"));
    }
    Ok((lat, lon))
}

/// `lat,lon radius_km`.
pub fn circle(field: &str, text: &str) -> Result<Option<Circle>, CapError> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    let (center, radius) = t
        .split_once(char::is_whitespace)
        .ok_or_else(|| invalid(field, t, "expected \"lat,lon radius_km\""))?;
    let (lat, lon) = point(field, center)?;
    let radius_km: f64 = radius
        .trim()
        .parse()
        .ok()
        .filter(|r: &f64| *r >= 0.0 && r.is_finite())
        .ok_or_else(|| invalid(field, t, "radius is not a non-negative number of km"))?;
    Ok(Some(Circle {
        lat,
        lon,
        radius_km,
    }))
}

/// `sender,identifier,sent` triples separated by whitespace.
fn references(text: &str) -> Result<Vec<Reference>, CapError> {
    text.split_whitespace()
        .map(|r| {
            let mut parts = r.splitn(3, ',');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(s), Some(i), Some(t)) => Ok(Reference {
                    sender: s.to_string(),
                    identifier: i.to_string(),
                    sent: time("references", t)?,
                }),
                _ => Err(invalid(
                    "references",
                    r,
                    "expected \"sender,identifier,sent\"",
                )),
            }
        })
        .collect()
}

/// The end of the hazard when the NWS says it (`eventEndingTime`).
fn ends_from(parameters: &[(String, String)]) -> Option<Timestamp> {
    parameters
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("eventEndingTime"))
        .and_then(|(_, v)| v.parse().ok())
}

fn cap_alert(root: &El) -> Result<CapAlert, CapError> {
    let req = |name: &str| root.text_of(name).ok_or_else(|| missing(name));
    let mut infos = Vec::new();
    for (i, info) in root.children("info").enumerate() {
        infos.push(cap_info(&format!("info[{i}]"), info)?);
    }
    Ok(CapAlert {
        identifier: req("identifier")?,
        sender: req("sender")?,
        sent: time("sent", &req("sent")?)?,
        status: code("status", root.text_of("status"), Status::parse, Status::ALL)?,
        msg_type: code(
            "msgType",
            root.text_of("msgType"),
            MsgType::parse,
            MsgType::ALL,
        )?,
        scope: code("scope", root.text_of("scope"), Scope::parse, Scope::ALL)?,
        references: references(&root.text_of("references").unwrap_or_default())?,
        infos,
    })
}

fn cap_info(p: &str, info: &El) -> Result<Info, CapError> {
    let f = |name: &str| format!("{p}.{name}");
    let mut areas = Vec::new();
    for (j, area) in info.children("area").enumerate() {
        let ap = format!("{p}.area[{j}]");
        let mut polygons = Vec::new();
        for pg in area.children("polygon") {
            polygons.extend(polygon(&format!("{ap}.polygon"), &pg.text)?);
        }
        let mut circles = Vec::new();
        for c in area.children("circle") {
            circles.extend(circle(&format!("{ap}.circle"), &c.text)?);
        }
        areas.push(Area {
            desc: area.text_of("areaDesc").unwrap_or_default(),
            polygons,
            circles,
            geocodes: area.children("geocode").flat_map(pairs).collect(),
        });
    }
    let parameters: Vec<(String, String)> = info.children("parameter").flat_map(pairs).collect();
    Ok(Info {
        language: info.text_of("language").unwrap_or_else(|| "en-US".into()),
        event: info.text_of("event").ok_or_else(|| missing(&f("event")))?,
        urgency: code(
            &f("urgency"),
            info.text_of("urgency"),
            Urgency::parse,
            Urgency::ALL,
        )?,
        severity: code(
            &f("severity"),
            info.text_of("severity"),
            Severity::parse,
            Severity::ALL,
        )?,
        certainty: code(
            &f("certainty"),
            info.text_of("certainty"),
            Certainty::parse,
            Certainty::ALL,
        )?,
        effective: opt_time(&f("effective"), info.text_of("effective"))?,
        onset: opt_time(&f("onset"), info.text_of("onset"))?,
        expires: opt_time(&f("expires"), info.text_of("expires"))?,
        ends: ends_from(&parameters),
        headline: info.text_of("headline"),
        description: info.text_of("description"),
        instruction: info.text_of("instruction"),
        event_codes: info.children("eventCode").flat_map(pairs).collect(),
        parameters,
        areas,
    })
}

fn atom(feed: &El) -> Document {
    let mut alerts = Vec::new();
    let mut skipped = Vec::new();
    for (index, entry) in feed.children("entry").enumerate() {
        let embedded = entry
            .child("content")
            .and_then(|c| c.children.iter().find(|e| e.name == "alert"));
        let result = match embedded {
            Some(alert) if matches!(alert.ns.as_deref(), Some(CAP11 | CAP12)) => cap_alert(alert),
            Some(alert) => Err(CapError::Namespace(clip(
                alert.ns.as_deref().unwrap_or("(none)"),
                200,
            ))),
            None if entry.child("event").is_some() => atom_index_entry(entry),
            None => Err(missing("entry.content.alert")),
        };
        match result {
            Ok(a) => alerts.push(a),
            Err(error) => skipped.push(Skipped {
                index,
                id: entry.text_of("id"),
                error,
            }),
        }
    }
    Document {
        kind: DocumentKind::Atom,
        alerts,
        skipped,
    }
}

/// An NWS index entry: the CAP fields as `cap:` children of the entry; the
/// entry's id, author and publication time stand in for identifier, sender
/// and sent, which the index does not carry.
fn atom_index_entry(e: &El) -> Result<CapAlert, CapError> {
    let identifier = e.text_of("id").ok_or_else(|| missing("entry.id"))?;
    let sender = e
        .child("author")
        .and_then(|a| a.text_of("name"))
        .ok_or_else(|| missing("entry.author.name"))?;
    let sent = e
        .text_of("published")
        .or_else(|| e.text_of("updated"))
        .ok_or_else(|| missing("entry.published"))?;
    let mut polygons = Vec::new();
    for pg in e.children("polygon") {
        polygons.extend(polygon("entry.polygon", &pg.text)?);
    }
    let parameters: Vec<(String, String)> = e.children("parameter").flat_map(pairs).collect();
    let info = Info {
        language: e.text_of("language").unwrap_or_else(|| "en-US".into()),
        event: e.text_of("event").ok_or_else(|| missing("entry.event"))?,
        urgency: code(
            "entry.urgency",
            e.text_of("urgency"),
            Urgency::parse,
            Urgency::ALL,
        )?,
        severity: code(
            "entry.severity",
            e.text_of("severity"),
            Severity::parse,
            Severity::ALL,
        )?,
        certainty: code(
            "entry.certainty",
            e.text_of("certainty"),
            Certainty::parse,
            Certainty::ALL,
        )?,
        effective: opt_time("entry.effective", e.text_of("effective"))?,
        onset: opt_time("entry.onset", e.text_of("onset"))?,
        expires: opt_time("entry.expires", e.text_of("expires"))?,
        ends: ends_from(&parameters),
        headline: e.text_of("title"),
        description: e.text_of("summary"),
        instruction: None,
        event_codes: e.children("eventCode").flat_map(pairs).collect(),
        parameters,
        areas: vec![Area {
            desc: e.text_of("areaDesc").unwrap_or_default(),
            polygons,
            circles: vec![],
            geocodes: e.children("geocode").flat_map(pairs).collect(),
        }],
    };
    Ok(CapAlert {
        identifier,
        sender,
        sent: time("entry.published", &sent)?,
        status: code(
            "entry.status",
            e.text_of("status"),
            Status::parse,
            Status::ALL,
        )?,
        msg_type: code(
            "entry.msgType",
            e.text_of("msgType"),
            MsgType::parse,
            MsgType::ALL,
        )?,
        scope: Scope::Public,
        references: vec![],
        infos: vec![info],
    })
}

fn geojson(v: &Value) -> Result<Document, CapError> {
    match v.get("type").and_then(Value::as_str) {
        Some("FeatureCollection") => {
            let features = v
                .get("features")
                .and_then(Value::as_array)
                .ok_or_else(|| missing("features"))?;
            let mut alerts = Vec::new();
            let mut skipped = Vec::new();
            for (index, f) in features.iter().enumerate() {
                match feature(f) {
                    Ok(a) => alerts.push(a),
                    Err(error) => skipped.push(Skipped {
                        index,
                        id: f.get("id").and_then(Value::as_str).map(str::to_string),
                        error,
                    }),
                }
            }
            Ok(Document {
                kind: DocumentKind::GeoJson,
                alerts,
                skipped,
            })
        }
        Some("Feature") => Ok(Document {
            kind: DocumentKind::GeoJson,
            alerts: vec![feature(v)?],
            skipped: vec![],
        }),
        Some(other) => Err(CapError::UnknownRoot(format!(
            "GeoJSON type `{}`",
            clip(other, 200)
        ))),
        None => Err(CapError::UnknownRoot("JSON without a `type`".into())),
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| match x {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => vec![],
    }
}

/// `{"UGC": ["ORZ004"], "SAME": ["041005"]}` → pairs.
fn object_pairs(v: Option<&Value>) -> Vec<(String, String)> {
    v.and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .flat_map(|(k, vs)| strings(Some(vs)).into_iter().map(move |s| (k.clone(), s)))
                .collect()
        })
        .unwrap_or_default()
}

fn feature(f: &Value) -> Result<CapAlert, CapError> {
    let p = f
        .get("properties")
        .and_then(Value::as_object)
        .ok_or_else(|| missing("properties"))?;
    let s = |k: &str| {
        p.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let field = |k: &str| format!("properties.{k}");
    let req = |k: &str| s(k).ok_or_else(|| missing(&field(k)));
    let mut references = Vec::new();
    for (i, r) in p
        .get("references")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let rf = format!("properties.references[{i}]");
        let get = |k: &str| {
            r.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| missing(&format!("{rf}.{k}")))
        };
        references.push(Reference {
            sender: get("sender")?,
            identifier: get("identifier")?,
            sent: time(&format!("{rf}.sent"), &get("sent")?)?,
        });
    }
    let mut polygons = Vec::new();
    if let Some(g) = f.get("geometry").filter(|g| !g.is_null()) {
        polygons = geometry(g)?;
    }
    let parameters = object_pairs(p.get("parameters"));
    let ends = opt_time(&field("ends"), s("ends"))?.or_else(|| ends_from(&parameters));
    let info = Info {
        language: s("language").unwrap_or_else(|| "en-US".into()),
        event: req("event")?,
        urgency: code(
            &field("urgency"),
            s("urgency"),
            Urgency::parse,
            Urgency::ALL,
        )?,
        severity: code(
            &field("severity"),
            s("severity"),
            Severity::parse,
            Severity::ALL,
        )?,
        certainty: code(
            &field("certainty"),
            s("certainty"),
            Certainty::parse,
            Certainty::ALL,
        )?,
        effective: opt_time(&field("effective"), s("effective"))?,
        onset: opt_time(&field("onset"), s("onset"))?,
        expires: opt_time(&field("expires"), s("expires"))?,
        ends,
        headline: s("headline"),
        description: s("description"),
        instruction: s("instruction"),
        event_codes: object_pairs(p.get("eventCode")),
        parameters,
        areas: vec![Area {
            desc: s("areaDesc").unwrap_or_default(),
            polygons,
            circles: vec![],
            geocodes: object_pairs(p.get("geocode")),
        }],
    };
    Ok(CapAlert {
        identifier: req("id")?,
        sender: req("sender")?,
        sent: time(&field("sent"), &req("sent")?)?,
        status: code(&field("status"), s("status"), Status::parse, Status::ALL)?,
        msg_type: code(
            &field("messageType"),
            s("messageType"),
            MsgType::parse,
            MsgType::ALL,
        )?,
        scope: match s("scope") {
            Some(v) => Scope::parse(&v).ok_or_else(|| {
                invalid(
                    &field("scope"),
                    &v,
                    "expected Public, Restricted or Private",
                )
            })?,
            None => Scope::Public,
        },
        references,
        infos: vec![info],
    })
}

/// GeoJSON `Polygon` / `MultiPolygon` outer rings, turned to `(lat, lon)`.
fn geometry(g: &Value) -> Result<Vec<Vec<(f64, f64)>>, CapError> {
    let ring = |r: &Value| -> Result<Vec<(f64, f64)>, CapError> {
        let pts = r
            .as_array()
            .ok_or_else(|| missing("geometry.coordinates"))?;
        pts.iter()
            .map(|pt| match pt.as_array().map(Vec::as_slice) {
                Some([lon, lat, ..]) => match (lat.as_f64(), lon.as_f64()) {
                    (Some(lat), Some(lon)) => Ok((lat, lon)),
                    _ => Err(invalid(
                        "geometry.coordinates",
                        &pt.to_string(),
                        "expected [lon, lat]",
                    )),
                },
                _ => Err(invalid(
                    "geometry.coordinates",
                    &pt.to_string(),
                    "expected [lon, lat]",
                )),
            })
            .collect()
    };
    let coords = g
        .get("coordinates")
        .ok_or_else(|| missing("geometry.coordinates"))?;
    match g.get("type").and_then(Value::as_str) {
        Some("Polygon") => Ok(coords
            .as_array()
            .and_then(|rings| rings.first())
            .map(ring)
            .transpose()?
            .into_iter()
            .collect()),
        Some("MultiPolygon") => coords
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|poly| poly.as_array().and_then(|r| r.first()))
            .map(ring)
            .collect(),
        other => Err(invalid(
            "geometry.type",
            other.unwrap_or("(none)"),
            "expected Polygon or MultiPolygon",
        )),
    }
}
