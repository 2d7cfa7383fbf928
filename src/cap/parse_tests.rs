//! Every file in `../shared/data/cap/` read through `parse_document`, with
//! the fields asserted as read off the files themselves.

use super::*;

fn read(rel: &str) -> Document {
    let path = format!("{}/../shared/data/cap/{rel}", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    parse_document(&bytes).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn ts(s: &str) -> jiff::Timestamp {
    s.parse().unwrap()
}

#[test]
fn nws_cap11_blizzard_warning() {
    let d = read("nws/cap11/nws-blizzard-warning-MNZ020-021-2021-12-27.xml");
    assert_eq!(d.kind, DocumentKind::Cap11);
    let a = &d.alerts[0];
    assert_eq!(
        a.identifier,
        "NOAA-NWS-ALERTS-MN1261CB03F0E0.BlizzardWarning.1261CB10BF00MN.DLHWSWDLH.5c2cf27b1f56885d61654dc47fa411d5"
    );
    assert_eq!(a.sender, "w-nws.webmaster@noaa.gov");
    assert_eq!(a.sent, ts("2021-12-27T16:08:00Z"));
    assert_eq!(
        (a.status, a.msg_type, a.scope),
        (Status::Actual, MsgType::Alert, Scope::Public)
    );
    let i = &a.infos[0];
    assert_eq!(i.event, "Blizzard Warning");
    assert_eq!(
        (i.urgency, i.severity, i.certainty),
        (Urgency::Expected, Severity::Severe, Certainty::Likely)
    );
    assert_eq!(i.language, "en-US");
    assert_eq!(i.expires, Some(ts("2021-12-28T00:00:00Z")));
    assert_eq!(i.effective, Some(ts("2021-12-27T16:08:00Z")));
    assert_eq!(
        i.headline.as_deref(),
        Some(
            "Blizzard Warning issued December 27 at 10:08AM CST until December 27 at 6:00PM CST by NWS Duluth"
        )
    );
    let desc = i.description.as_deref().unwrap();
    assert!(
        desc.starts_with("...BLIZZARD WARNING REMAINS IN EFFECT UNTIL 6 PM CST THIS"),
        "{desc}"
    );
    assert_eq!(a.same_event_codes(), vec!["BZW"]);
    assert!(i.parameters.contains(&("UGC".into(), "MNZ020-021".into())));
    assert!(
        i.instruction
            .as_deref()
            .unwrap()
            .starts_with("Travel should be restricted")
    );
    assert_eq!(
        i.areas[0].desc,
        "Southern Cook, North Shore; Southern Lake, North Shore"
    );
    assert!(
        i.areas[0].polygons.is_empty(),
        "an empty <polygon> is no polygon"
    );
    assert_eq!(a.zones(), vec!["027031", "027075", "MNZ020", "MNZ021"]);
}

#[test]
fn nws_cap11_severe_thunderstorm_warning_has_its_polygon() {
    let d = read("nws/cap11/nws-severe-thunderstorm-warning-IL-2012-03-15.xml");
    let a = &d.alerts[0];
    assert!(a.identifier.contains("SevereThunderstormWarning"));
    let i = &a.infos[0];
    assert_eq!(i.event, "Severe Thunderstorm Warning");
    assert_eq!(a.same_event_codes(), vec!["SVR"]);
    assert_eq!(i.expires, Some(ts("2012-03-16T03:30:00Z")));
    assert_eq!(i.effective, Some(ts("2012-03-16T03:08:00Z")));
    assert_eq!(
        i.headline.as_deref(),
        Some(
            "Severe Thunderstorm Warning issued March 15 at 10:08PM CDT until March 15 at 10:30PM CDT by NWS Saint Louis"
        )
    );
    let desc = i.description.as_deref().unwrap();
    assert!(
        desc.starts_with("...A SEVERE THUNDERSTORM WARNING REMAINS IN EFFECT FOR EAST CENTRAL"),
        "{desc}"
    );
    // `&lt;` in the document is read as the character.
    assert!(desc.ends_with("...HAIL <50MPH 1.00IN"), "{desc}");
    let poly = &i.areas[0].polygons[0];
    assert_eq!(poly.len(), 11);
    assert_eq!(poly[0], (39.12, -90.69));
    assert_eq!(poly.first(), poly.last());
    assert!(a.zones().contains(&"ILC013".to_string()));
}

#[test]
fn nws_cap11_special_weather_statement() {
    let d = read("nws/cap11/nws-special-weather-statement-GA-2012-03-15.xml");
    let a = &d.alerts[0];
    let i = &a.infos[0];
    assert_eq!(i.event, "Special Weather Statement");
    assert_eq!(i.effective, Some(ts("2012-03-16T02:18:00Z")));
    assert_eq!(
        i.headline.as_deref(),
        Some("Special Weather Statement issued March 15 at 10:18PM EDT  by NWS Atlanta")
    );
    assert!(
        i.description
            .as_deref()
            .unwrap()
            .starts_with("...SIGNIFICANT WEATHER ADVISORY FOR PEA SIZED HAIL AND 35 MPH WINDS")
    );
    assert!(
        a.same_event_codes().is_empty(),
        "an empty SAME code is none"
    );
    assert_eq!(i.expires, Some(ts("2012-03-16T02:45:00Z")));
    assert_eq!(i.areas[0].polygons[0].len(), 11);
    let zones = a.zones();
    assert!(zones.contains(&"GAZ002".to_string()) && zones.contains(&"GAZ011".to_string()));
    assert!(zones.contains(&"013055".to_string()));
}

#[test]
fn oasis_cap12_severe_thunderstorm() {
    let d = read("oasis-examples/cap12-appendix-A2-severe-thunderstorm-warning.xml");
    assert_eq!(d.kind, DocumentKind::Cap12);
    let a = &d.alerts[0];
    assert_eq!(a.identifier, "KSTO1055887203");
    assert_eq!(a.infos[0].event, "SEVERE THUNDERSTORM");
    assert_eq!(a.same_event_codes(), vec!["SVR"]);
    assert_eq!(a.infos[0].expires, Some(ts("2003-06-17T23:00:00Z")));
    let i = &a.infos[0];
    assert_eq!(i.headline.as_deref(), Some("SEVERE THUNDERSTORM WARNING"));
    let desc = i.description.as_deref().unwrap();
    assert!(
        desc.starts_with(
            "AT 254 PM PDT...NATIONAL WEATHER SERVICE DOPPLER RADAR INDICATED A SEVERE"
        ),
        "the text is trimmed: {desc:?}"
    );
    assert!(desc.ends_with("STORM."), "{desc:?}");
    assert_eq!(i.effective, None, "the example has no <effective>");
    assert_eq!(a.infos[0].areas[0].polygons[0].len(), 5);
    assert_eq!(a.zones(), vec!["006109", "006009", "006003"]);
}

#[test]
fn oasis_cap12_earthquake_update_with_references_and_circle() {
    let d = read("oasis-examples/cap12-appendix-A3-earthquake-update-references.xml");
    let a = &d.alerts[0];
    assert_eq!(a.msg_type, MsgType::Update);
    assert_eq!(
        a.references,
        vec![Reference {
            sender: "trinet@caltech.edu".into(),
            identifier: "TRI13970876.1".into(),
            sent: ts("2003-06-12T03:30:00Z"),
        }]
    );
    let i = &a.infos[0];
    assert_eq!(
        (i.urgency, i.severity, i.certainty),
        (Urgency::Past, Severity::Minor, Certainty::Observed)
    );
    assert_eq!(i.expires, None);
    assert_eq!(i.headline.as_deref(), Some("EQ 3.4 Imperial County CA"));
    assert!(i.description.as_deref().unwrap().starts_with(
        "A minor earthquake measuring 3.4 on the Richter scale occurred near Brawley,"
    ));
    assert_eq!(
        i.areas[0].circles,
        vec![Circle {
            lat: 32.9525,
            lon: -115.5527,
            radius_km: 0.0
        }]
    );
    assert!(
        i.parameters
            .contains(&("Magnitude".into(), "3.4 Ml".into()))
    );
}

#[test]
fn ipaws_cancel_with_references_and_signature() {
    let d = read("ipaws/ipaws-cancel-with-references-NV-2019-04-19.xml");
    assert_eq!(d.kind, DocumentKind::Cap12);
    let a = &d.alerts[0];
    assert_eq!(a.identifier, "AS-NV-58d33e3a-1f9a-4909-9d59-34e90b33b3e8");
    assert_eq!(a.msg_type, MsgType::Cancel);
    assert!(a.infos.is_empty());
    assert_eq!(a.references.len(), 1);
    assert_eq!(
        a.references[0].identifier,
        "AS-NV-e18921c7-1b35-4a81-9705-42d25c265ddd"
    );
    assert_eq!(a.references[0].sent, ts("2019-04-18T18:02:32Z"));
}

#[test]
fn ipaws_required_monthly_test() {
    let d = read("ipaws/ipaws-required-monthly-test-PR-2019-05-30.xml");
    let a = &d.alerts[0];
    assert_eq!(a.identifier, "44232112-8DF1-402A-BB60-948B569D6C7E");
    assert_eq!(
        a.status,
        Status::Actual,
        "the status says Actual; the RMT code makes it a test"
    );
    assert_eq!(a.same_event_codes(), vec!["RMT"]);
    let i = &a.infos[0];
    assert_eq!(i.event, "Required Monthly Test");
    assert_eq!(i.effective, Some(ts("2019-05-30T15:55:00Z")));
    assert_eq!(i.headline.as_deref(), Some("Required Monthly Test"));
    assert_eq!(
        i.description.as_deref(),
        Some(
            "This is an RMT of the Emergency Alert System. THIS IS ONLY A TEST - ESTO ES UNA PRUEBA"
        )
    );
    assert_eq!(i.onset, Some(ts("2019-05-30T15:55:00Z")));
    assert_eq!(i.expires, Some(ts("2019-05-30T16:05:00Z")));
    assert!(!i.areas.is_empty());
}

#[test]
fn nws_atom_national_index() {
    let d = read("nws/atom/nws-us-national-atom-2018-08-15.xml");
    assert_eq!(d.kind, DocumentKind::Atom);
    assert_eq!(d.alerts.len() + d.skipped.len(), 163);
    assert!(d.skipped.is_empty(), "{:?}", d.skipped.first());
    let a = &d.alerts[0];
    assert!(a.identifier.ends_with(
        "AK125AB652A170.HighWindWarning.125AB660BDF0AK.AFGNPWNSB.e9d4afdcacb3b7015f58bccc1db60d46"
    ));
    assert_eq!(a.sender, "w-nws.webmaster@noaa.gov");
    assert_eq!(a.sent, ts("2018-08-15T22:52:00Z"));
    let i = &a.infos[0];
    assert_eq!(i.event, "High Wind Warning");
    assert_eq!(i.severity, Severity::Severe);
    assert_eq!(i.effective, Some(ts("2018-08-15T22:52:00Z")));
    // The index carries no CAP headline or description: the entry's title
    // and summary stand in.
    assert_eq!(
        i.headline.as_deref(),
        Some(
            "High Wind Warning issued August 15 at 2:52PM AKDT until August 16 at 7:00AM AKDT by NWS"
        )
    );
    let desc = i.description.as_deref().unwrap();
    assert!(
        desc.starts_with("...HIGH WIND WARNING REMAINS IN EFFECT UNTIL 7 AM AKDT THURSDAY...")
            && desc.ends_with("Loose objects may be blown away."),
        "{desc}"
    );
    assert_eq!(i.expires, Some(ts("2018-08-16T15:00:00Z")));
    // Two pairs in one <cap:geocode>: both read.
    assert_eq!(a.zones(), vec!["002185", "AKZ204"]);
    assert_eq!(i.areas[0].desc, "Eastern Beaufort Sea Coast");
}

#[test]
fn api_weather_gov_two_features() {
    let d =
        read("api-weather-gov/alerts-active-zone-ORZ004-flood-watch-two-features-2019-12-20.json");
    assert_eq!(d.kind, DocumentKind::GeoJson);
    assert_eq!(d.alerts.len(), 2);
    let a = &d.alerts[0];
    assert_eq!(a.identifier, "NWS-IDP-PROD-3965873-3369046");
    assert_eq!(d.alerts[1].identifier, "NWS-IDP-PROD-3965873-001");
    assert_eq!(a.msg_type, MsgType::Update);
    assert_eq!(a.references.len(), 4);
    assert_eq!(a.references[0].identifier, "NWS-IDP-PROD-3964821-3368352");
    let i = &a.infos[0];
    assert_eq!(i.event, "Flood Watch");
    assert_eq!(
        (i.urgency, i.severity, i.certainty),
        (Urgency::Future, Severity::Severe, Certainty::Possible)
    );
    assert_eq!(i.expires, Some(ts("2019-12-21T13:30:00Z")));
    assert_eq!(i.ends, Some(ts("2019-12-22T18:00:00Z")));
    assert_eq!(i.effective, Some(ts("2019-12-20T21:34:00Z")));
    assert_eq!(i.onset, Some(ts("2019-12-20T21:34:00Z")));
    assert_eq!(
        i.headline.as_deref(),
        Some(
            "Flood Watch issued December 20 at 1:34PM PST until December 22 at 10:00AM PST by NWS Portland OR"
        )
    );
    let desc = i.description.as_deref().unwrap();
    assert!(
        desc.starts_with("The Flood Watch continues for\n\n* Portions of Northwest Oregon"),
        "{desc}"
    );
    let zones = a.zones();
    assert_eq!(zones.len(), 11 + 16);
    assert!(zones.contains(&"ORZ004".to_string()) && zones.contains(&"041005".to_string()));
    assert!(i.parameters.contains(&(
        "VTEC".into(),
        "/O.CON.KPQR.FA.A.0004.000000T0000Z-191222T1800Z/".into()
    )));
}

#[test]
fn api_weather_gov_update() {
    let d = read("api-weather-gov/alerts-active-zone-ORZ004-flood-watch-update-2019-12-20.json");
    assert_eq!(d.alerts.len(), 1);
    let a = &d.alerts[0];
    assert_eq!(a.msg_type, MsgType::Update);
    assert_eq!(a.infos[0].event, "Flood Watch");
    assert!(a.zones().contains(&"ORZ004".to_string()));
}

#[test]
fn api_weather_gov_single_feature_with_polygon() {
    let doc = br#"{"type":"Feature","id":"x","geometry":{"type":"Polygon","coordinates":[[[-90.69,39.12],[-90.6,39.1],[-90.58,39.07],[-90.69,39.12]]]},
      "properties":{"id":"A1","sender":"s@x","sent":"2024-01-01T00:00:00Z","status":"Actual","messageType":"Alert",
      "event":"Tornado Warning","urgency":"Immediate","severity":"Extreme","certainty":"Observed","areaDesc":"Here",
      "geocode":{"UGC":["ILC013"]},"eventCode":{"SAME":["TOR"]}}}"#;
    let d = parse_document(doc).unwrap();
    let a = &d.alerts[0];
    assert_eq!(a.infos[0].areas[0].polygons[0][0], (39.12, -90.69));
    assert_eq!(a.same_event_codes(), vec!["TOR"]);
}

#[test]
fn malformed_documents_are_typed_errors_naming_what_is_wrong() {
    let bad = |doc: &str| parse_document(doc.as_bytes()).unwrap_err();
    assert!(matches!(
        bad("<alert xmlns='urn:oasis:names:tc:emergency:cap:1.2'><identifier>"),
        CapError::Xml(_)
    ));
    assert_eq!(bad(""), CapError::Empty);
    // Found by fuzzing: a stray `&` made the error quote 60 kB of document.
    let long = format!(
        "<alert xmlns='urn:oasis:names:tc:emergency:cap:1.2'><note>&{}</note></alert>",
        "x".repeat(60_000)
    );
    let e = bad(&long).to_string();
    assert!(e.len() < 1_000, "{} bytes", e.len());
    // And the 10-minute run: digits inserted into the root element's name
    // or its namespace were quoted whole.
    for doc in [
        format!(
            "<alert{} xmlns='urn:oasis:names:tc:emergency:cap:1.2'/>",
            "9".repeat(5_000)
        ),
        format!(
            "<alert xmlns='urn:oasis:names:tc:emergency:cap:1.2{}'/>",
            "9".repeat(5_000)
        ),
        format!("{{\"type\": \"{}\"}}", "9".repeat(5_000)),
    ] {
        let e = bad(&doc).to_string();
        assert!(e.len() < 1_000, "{} bytes: {}", e.len(), &e[..100]);
    }
    assert!(matches!(bad("<html/>"), CapError::UnknownRoot(_)));
    assert!(matches!(
        bad("<alert xmlns='urn:oasis:names:tc:emergency:cap:1.0'/>"),
        CapError::Namespace(_)
    ));
    let e = bad(
        "<alert xmlns='urn:oasis:names:tc:emergency:cap:1.2'><identifier>1</identifier><sender>s</sender><sent>2024-01-01T00:00:00Z</sent><status>Real</status></alert>",
    );
    assert!(
        e.to_string().contains("status") && e.to_string().contains("Real"),
        "{e}"
    );
    let e = bad(
        "<alert xmlns='urn:oasis:names:tc:emergency:cap:1.2'><identifier>1</identifier><sender>s</sender></alert>",
    );
    assert_eq!(e, CapError::Missing("sent".into()));
    let e = bad(
        "<alert xmlns='urn:oasis:names:tc:emergency:cap:1.2'><identifier>1</identifier><sender>s</sender><sent>2024-01-01T00:00:00Z</sent><status>Actual</status><msgType>Alert</msgType><scope>Public</scope><info><event>E</event><urgency>Immediate</urgency><severity>Severe</severity><certainty>Observed</certainty><area><areaDesc>x</areaDesc><polygon>1,2 3,4</polygon></area></info></alert>",
    );
    assert!(e.to_string().contains("info[0].area[0].polygon"), "{e}");
    assert!(matches!(bad("{not json"), CapError::Json(_)));
}

#[test]
fn a_malformed_feed_entry_is_skipped_not_fatal() {
    let feed = r#"<feed xmlns="http://www.w3.org/2005/Atom"><entry><id>bad</id><content type="text/xml"><alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>1</identifier></alert></content></entry>
      <entry><id>good</id><content type="text/xml"><alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"><identifier>2</identifier><sender>s</sender><sent>2024-01-01T00:00:00Z</sent><status>Actual</status><msgType>Alert</msgType><scope>Public</scope></alert></content></entry></feed>"#;
    let d = parse_document(feed.as_bytes()).unwrap();
    assert_eq!(d.alerts.len(), 1);
    assert_eq!(d.alerts[0].identifier, "2");
    assert_eq!(d.skipped.len(), 1);
    assert_eq!(d.skipped[0].id.as_deref(), Some("bad"));
    assert_eq!(d.skipped[0].error, CapError::Missing("sender".into()));
}
