//! Fuzz targets on stable Rust: proptest mutations of real samples (the
//! shared OneRoster exports, the example config, Twilio callbacks, ack
//! forms, audience JSON) fed to the real parsers and the real daemon.
//!
//! `cargo test --test fuzz` runs a short pass (a few seconds). A long run of
//! one target: `FUZZ_SECONDS=600 cargo test --release --test fuzz -- --nocapture TARGET`
//! (see FUZZING.md); each target prints how many cases it executed.
//!
//! Properties: nothing panics; a parser answers Ok or a typed error that
//! names where; the daemon answers every request with a status below 500
//! and a forged or unsigned callback is refused.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestCaseError, TestRunner};

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data");

/// Cases per batch; `FUZZ_SECONDS` repeats batches until the time is up.
fn batch() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

/// Runs `test` on values of `strategy` for one batch, or for
/// `FUZZ_SECONDS` when set; prints the number of cases executed.
fn fuzz<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let seconds: u64 = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let cases = batch();
    let started = Instant::now();
    let mut executed: u64 = 0;
    loop {
        // A runner runs `cases` once; a fresh one (fresh seed) per batch.
        let mut runner = TestRunner::new(PtConfig {
            cases,
            failure_persistence: None,
            max_shrink_iters: 2000,
            ..PtConfig::default()
        });
        if let Err(e) = runner.run(&strategy, &test) {
            panic!("fuzz target {name} failed after {executed} cases: {e}");
        }
        executed += u64::from(cases);
        if started.elapsed() >= Duration::from_secs(seconds) {
            break;
        }
    }
    eprintln!(
        "fuzz {name}: {executed} cases in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// One edit of a byte string: where (a share of its length), what, with
/// which bytes.
#[derive(Debug, Clone)]
enum Edit {
    Flip(f64, u8),
    Insert(f64, Vec<u8>),
    Delete(f64, usize),
    DuplicateLine(f64),
    Truncate(f64),
}

/// Bytes that matter to the formats under test.
fn interesting() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 1..8),
        prop::sample::select(vec![
            b",".to_vec(),
            b"\"".to_vec(),
            b"\n".to_vec(),
            b"\r\n".to_vec(),
            b"=".to_vec(),
            b"[".to_vec(),
            b"]".to_vec(),
            b"{".to_vec(),
            b"}".to_vec(),
            b"%".to_vec(),
            b"&".to_vec(),
            b"\xef\xbb\xbf".to_vec(),
            b"\xe2\x80\xae".to_vec(),
            b"\0".to_vec(),
            "9".repeat(5000).into_bytes(),
            b"\"\"\"".to_vec(),
            b"1e999".to_vec(),
            b"-9223372036854775809".to_vec(),
        ]),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0.0..1.0f64, any::<u8>()).prop_map(|(p, b)| Edit::Flip(p, b)),
        (0.0..1.0f64, interesting()).prop_map(|(p, b)| Edit::Insert(p, b)),
        (0.0..1.0f64, 1..64usize).prop_map(|(p, n)| Edit::Delete(p, n)),
        (0.0..1.0f64).prop_map(Edit::DuplicateLine),
        (0.0..1.0f64).prop_map(Edit::Truncate),
    ]
}

fn mutate(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut v = seed.to_vec();
    let at = |v: &Vec<u8>, p: f64| ((v.len() as f64) * p) as usize;
    for e in edits {
        match e {
            Edit::Flip(p, b) if !v.is_empty() => {
                let i = at(&v, *p).min(v.len() - 1);
                v[i] ^= b | 1;
            }
            Edit::Insert(p, bytes) => {
                let i = at(&v, *p);
                v.splice(i..i, bytes.iter().copied());
            }
            Edit::Delete(p, n) => {
                let i = at(&v, *p);
                let j = (i + n).min(v.len());
                v.drain(i..j);
            }
            Edit::DuplicateLine(p) => {
                let i = at(&v, *p);
                let start = v[..i]
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(0, |k| k + 1);
                let end = v[i..]
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(v.len(), |k| i + k + 1);
                let line = v[start..end].to_vec();
                v.splice(end..end, line);
            }
            Edit::Truncate(p) => {
                let i = at(&v, *p);
                v.truncate(i.max(1));
            }
            _ => {}
        }
    }
    v
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(edit(), 1..6)
}

/// The OneRoster exports used as seeds: the shared samples and our fixture.
fn exports() -> Vec<PathBuf> {
    let shared = Path::new(SHARED).join("oneroster");
    vec![
        shared.join("edfi-lms-toolkit-v1p1"),
        shared.join("catalyst-moodle-enrol_oneroster/v1p1_full"),
        shared.join("catalyst-moodle-enrol_oneroster/v1p2_full"),
        PathBuf::from(common::FIXTURE),
    ]
    .into_iter()
    .filter(|p| p.join("manifest.csv").is_file())
    .collect()
}

fn csv_files(export: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(export)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".csv"))
        .collect();
    names.sort();
    names
}

#[test]
fn oneroster_csv() {
    let exports = exports();
    assert!(!exports.is_empty(), "no seed exports found under {SHARED}");
    let cfg = klaxon::sis::SisConfig::default();
    fuzz(
        "oneroster_csv",
        (0..exports.len(), any::<prop::sample::Index>(), edits()),
        |(which, file, edits)| {
            let src = &exports[which];
            let names = csv_files(src);
            let target = file.get(&names);
            let tmp = tempfile::tempdir().unwrap();
            let export = tmp.path().join("export");
            std::fs::create_dir(&export).unwrap();
            for n in &names {
                let bytes = std::fs::read(src.join(n)).unwrap();
                let bytes = if n == target {
                    mutate(&bytes, &edits)
                } else {
                    bytes
                };
                std::fs::write(export.join(n), bytes).unwrap();
            }
            let store = tmp.path().join("state");
            match klaxon::sis::import(
                &export,
                &store,
                &cfg,
                &klaxon::sis::ImportOptions { force: true },
            ) {
                Ok(report) => {
                    // A report never carries a value longer than a person reads.
                    for w in &report.warnings {
                        prop_assert!(w.value.len() < 200, "{:?}", w.value.len());
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    prop_assert!(!msg.is_empty());
                    prop_assert!(msg.len() < 4096, "error too long: {} bytes", msg.len());
                    prop_assert!(
                        !store.join("sis.db").exists(),
                        "a refused export left a SIS copy"
                    );
                }
            }
            Ok(())
        },
    );
}

#[test]
fn config_loader() {
    let seeds: Vec<Vec<u8>> = vec![
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/klaxon.example.toml"
        ))
        .unwrap(),
        common::config_text(common::LOG_PROVIDER).into_bytes(),
    ];
    fuzz(
        "config_loader",
        (0..seeds.len(), edits()),
        |(which, edits)| {
            let bytes = mutate(&seeds[which], &edits);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("klaxon.toml");
            std::fs::write(&path, &bytes).unwrap();
            match klaxon::config::Config::load(&path) {
                Ok(_) => {}
                Err(klaxon::config::ConfigError::Invalid { issues, .. }) => {
                    prop_assert!(!issues.is_empty());
                    for i in issues {
                        prop_assert!(!i.key.is_empty() && !i.message.is_empty(), "{i}");
                    }
                }
                Err(e) => prop_assert!(false, "not a config problem: {e}"),
            }
            Ok(())
        },
    );
}

#[test]
fn audience_json() {
    let dir = tempfile::tempdir().unwrap();
    klaxon::sis::import(
        Path::new(common::FIXTURE),
        dir.path(),
        &klaxon::sis::SisConfig::default(),
        &klaxon::sis::ImportOptions { force: true },
    )
    .unwrap();
    let seeds: Vec<&[u8]> = vec![
        br#"{"schools":["S1"],"grades":["03","KG"],"roles":["guardian","staff"]}"#,
        br#"{"classes":["c1"],"groups":["bus-7"],"people":["g1"]}"#,
        br#"{}"#,
    ];
    fuzz(
        "audience_json",
        (0..seeds.len(), edits()),
        |(which, edits)| {
            let bytes = mutate(seeds[which], &edits);
            if let Ok(spec) = serde_json::from_slice::<klaxon::audience::AudienceSpec>(&bytes) {
                let sis = klaxon::sis::open_current(dir.path()).unwrap();
                let _ = klaxon::audience::resolve(&sis, &spec, &[]);
            }
            Ok(())
        },
    );
}

#[test]
fn twilio_signature() {
    let tokens = ["tok-current", "tok-previous"];
    let params = prop::collection::vec((".{0,12}", ".{0,40}"), 0..8);
    fuzz(
        "twilio_signature",
        (params, ".{0,60}", any::<prop::sample::Index>(), edits()),
        |(params, path, pick, edits)| {
            let url = format!("https://alerts.example.org/hooks/twilio/sms{path}");
            let token = pick.get(&tokens);
            let sig = klaxon::deliver::providers::twilio::sign(token, &url, &params);
            let check = |p: &[(String, String)], s: &str| {
                klaxon::deliver::providers::twilio::verify_signature(&tokens, &url, p, s)
            };
            prop_assert!(check(&params, &sig), "a true signature is refused");
            let forged = String::from_utf8_lossy(&mutate(sig.as_bytes(), &edits)).to_string();
            if forged.trim() != sig {
                prop_assert!(!check(&params, &forged), "a forged signature is accepted");
            }
            let mut changed = params.clone();
            changed.push(("Body".into(), "YES".into()));
            prop_assert!(!check(&changed, &sig), "a signature covers every parameter");
            prop_assert!(!klaxon::deliver::providers::twilio::verify_signature(
                &["someone-else"],
                &url,
                &params,
                &sig
            ));
            Ok(())
        },
    );
}

/// Raw HTTP/1.1 POST; the status code, or 0 when the server hung up.
fn post(addr: &str, path: &str, headers: &str, body: &[u8]) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    );
    if s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body))
        .is_err()
    {
        return 0;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    std::str::from_utf8(out.get(9..12).unwrap_or(b"000"))
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn ack_form_and_twilio_callbacks_over_http() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let secrets = tempfile::tempdir().unwrap();
    std::fs::write(secrets.path().join("tw"), "tok").unwrap();
    let providers = format!(
        "{}\n[[providers]]\nname = \"tw\"\nkind = \"twilio\"\nchannels = [\"voice\"]\napi_base = \"http://127.0.0.1:9\"\naccount_sid = \"AC0123456789abcdef0123456789abcdef\"\nauth_token_file = \"{}\"\nfrom = [\"+15555550100\"]\n",
        common::LOG_PROVIDER.replace("[\"sms\", \"voice\", \"email\"]", "[\"sms\", \"email\"]"),
        secrets.path().join("tw").display()
    );
    let app = rt.block_on(common::spawn_app_with(&providers));
    let id = rt.block_on(async {
        app.trigger(serde_json::json!({"playbook": "lockdown", "audience": {"schools": ["S1"]}}))
            .await
            .json::<serde_json::Value>()
            .await
            .unwrap()["id"]
            .as_i64()
            .unwrap()
    });
    // A live link, as sent: derived from the store's key and a recipient id.
    let rid: i64 = app
        .db()
        .query_row(
            "SELECT id FROM recipients WHERE alert_id = ?1 LIMIT 1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    let key = klaxon::store::keyfile::load_or_create(&app.path().join("state")).unwrap();
    let token = klaxon::domain::AckToken::derive(&key, klaxon::domain::RecipientId(rid))
        .as_str()
        .to_string();
    let addr = app.base.trim_start_matches("http://").to_string();
    let seeds: Vec<Vec<u8>> = vec![
        b"ack=1".to_vec(),
        b"choice=safe&ack=1".to_vec(),
        b"From=%2B15555550101&Body=YES&MessageSid=SM1".to_vec(),
        b"MessageSid=SM1&MessageStatus=delivered&ErrorCode=".to_vec(),
    ];
    let paths = [
        format!("/a/{token}"),
        "/hooks/twilio/sms".to_string(),
        "/hooks/twilio/status?d=1".to_string(),
        "/hooks/twilio/voice?d=1".to_string(),
    ];
    fuzz(
        "http_forms",
        (0..seeds.len(), 0..paths.len(), edits(), any::<bool>()),
        |(which, path, edits, sign)| {
            let body = mutate(&seeds[which], &edits);
            let path = &paths[path];
            let mut headers = String::new();
            let hook = path.starts_with("/hooks/");
            if hook && sign {
                // Signed as Twilio would, when the body parses as a form.
                let params = form_pairs(&body);
                let url = format!("http://127.0.0.1:9{path}");
                let sig = klaxon::deliver::providers::twilio::sign("tok", &url, &params);
                headers = format!("X-Twilio-Signature: {sig}\r\n");
            }
            let status = post(&addr, path, &headers, &body);
            prop_assert!(status != 0, "the daemon hung up on {path}");
            prop_assert!(status < 500, "{path} answered {status}");
            if hook && headers.is_empty() {
                prop_assert!(
                    status == 403 || status == 400 || status == 415,
                    "unsigned {path} answered {status}"
                );
            }
            Ok(())
        },
    );
    rt.block_on(app.stop());
}

/// `application/x-www-form-urlencoded` pairs, decoded leniently the way
/// the daemon decodes them (for signing test requests).
fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &[u8]) -> String {
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < s.len() => {
                    match u8::from_str_radix(
                        std::str::from_utf8(&s[i + 1..i + 3]).unwrap_or("zz"),
                        16,
                    ) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).to_string()
    }
    body.split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut it = p.splitn(2, |b| *b == b'=');
            (
                decode(it.next().unwrap_or(b"")),
                decode(it.next().unwrap_or(b"")),
            )
        })
        .collect()
}

/// Every CAP document in `../shared/data/cap` (CAP 1.1 and 1.2, ATOM,
/// api.weather.gov GeoJSON).
fn cap_seeds() -> Vec<Vec<u8>> {
    fn walk(dir: &Path, out: &mut Vec<Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            if p.is_dir() {
                walk(&p, out);
            } else if matches!(p.extension().and_then(|e| e.to_str()), Some("xml" | "json")) {
                out.push(std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = Vec::new();
    walk(&Path::new(SHARED).join("cap"), &mut out);
    out
}

#[test]
fn cap_atom_geojson() {
    let seeds = cap_seeds();
    assert!(seeds.len() >= 8, "CAP seeds missing under {SHARED}/cap");
    // A rule that names every event of the samples, with zones and
    // per-school targeting, so a parsed alert goes through the whole
    // decision and message rendering.
    let rule: klaxon::cap::rules::RuleConfig = toml::from_str(
        r#"
name = "all"
events = ["Blizzard Warning", "Severe Thunderstorm Warning", "Special Weather Statement",
          "Flood Watch", "Earthquake", "Required Monthly Test", "Test Message"]
event_codes = ["RMT", "SVR", "BZW", "EQW", "FFA"]
playbook = "weather-closure"
test_as_drill = true
message = "{{ headline }} / {{ event }} for {{ area }} from {{ onset }} to {{ ends }}. {{ instruction }}"
[messages]
es = "{{ event }} para {{ area }}"
"#,
    )
    .unwrap();
    let mut schools = std::collections::BTreeMap::new();
    schools.insert(
        "S1".to_string(),
        toml::from_str::<klaxon::cap::rules::SchoolGeo>(
            "zones = [\"MNZ020\", \"ORZ004\"]\nlocation = [44.9, -93.2]",
        )
        .unwrap(),
    );
    fuzz(
        "cap_atom_geojson",
        (0..seeds.len(), edits()),
        |(which, edits)| {
            let bytes = mutate(&seeds[which], &edits);
            match klaxon::cap::parse_document(&bytes) {
                Ok(doc) => {
                    for alert in &doc.alerts {
                        let now = jiff::Timestamp::now();
                        let _ = klaxon::cap::rules::evaluate(
                            alert,
                            std::slice::from_ref(&rule),
                            &schools,
                            now,
                        );
                        if let Ok(text) =
                            klaxon::cap::rules::render_messages(&rule, alert, "America/Chicago")
                        {
                            for lang in text.languages() {
                                prop_assert!(text.for_language(&lang).chars().count() <= 1000);
                            }
                        }
                    }
                    for s in &doc.skipped {
                        prop_assert!(!s.error.to_string().is_empty());
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    prop_assert!(!msg.is_empty());
                    prop_assert!(msg.len() < 4096, "error too long: {} bytes", msg.len());
                }
            }
            Ok(())
        },
    );
}
