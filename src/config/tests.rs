use super::*;

const GOOD: &str = r#"
[server]
listen = "127.0.0.1:0"
public_url = "http://127.0.0.1:8080"

[store]
dir = "state"

[[providers]]
name = "demo-log"
kind = "log"
channels = ["sms", "voice", "email"]
path = "outbox.jsonl"
"#;

fn issues(text: &str) -> Vec<ConfigIssue> {
    match Config::from_str(text, Path::new("/etc/klaxon/klaxon.toml")) {
        Ok(_) => vec![],
        Err(ConfigError::Invalid { issues, .. }) => issues,
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[test]
fn good_config_loads_with_builtin_playbooks() {
    let c = Config::from_str(GOOD, Path::new("/etc/klaxon/klaxon.toml")).unwrap();
    assert_eq!(c.store_dir(), PathBuf::from("/etc/klaxon/state"));
    assert!(c.playbooks.contains_key("lockdown"));
    assert_eq!(c.providers.len(), 1);
}

#[test]
fn every_problem_is_reported_with_its_key_and_line() {
    let text = GOOD
        .replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"nowhere\"\ncolour = \"red\"",
        )
        .replace("[store]", "[store]\nsynchronous = \"sometimes\"");
    let found = issues(&text);
    let keys: Vec<&str> = found.iter().map(|i| i.key.as_str()).collect();
    // serde stops a section at its first problem; the other sections still report.
    assert!(
        keys.contains(&"server") || keys.contains(&"server.colour"),
        "{found:?}"
    );
    assert!(
        keys.contains(&"store.synchronous") || keys.iter().any(|k| k.starts_with("server")),
        "{found:?}"
    );
}

#[test]
fn unknown_key_is_named_with_line() {
    let text = GOOD.replace("[store]", "[store]\ndirectory = \"x\"");
    let found = issues(&text);
    let i = found
        .iter()
        .find(|i| i.key == "store.directory")
        .expect("store.directory named");
    assert!(i.message.contains("unknown field"), "{i}");
    assert_eq!(i.line, Some(7), "{i}");
}

#[test]
fn wrong_type_is_named() {
    let text = GOOD.replace("[store]", "[delivery]\nconcurrency = \"many\"\n\n[store]");
    let found = issues(&text);
    assert!(
        found
            .iter()
            .any(|i| i.key.starts_with("delivery") && i.message.contains("invalid type")),
        "{found:?}"
    );
}

#[test]
fn bad_duration_is_named() {
    let text = format!("{GOOD}\n[delivery]\nretry_max = \"soon\"\n");
    let found = issues(&text);
    let i = found
        .iter()
        .find(|i| i.key.starts_with("delivery"))
        .expect("delivery named");
    assert!(i.message.contains("not a duration"), "{i}");
}

#[test]
fn literal_secret_in_toml_is_refused() {
    let text = GOOD.replace(
        "path = \"outbox.jsonl\"",
        "path = \"outbox.jsonl\"\npassword = \"hunter2\"",
    );
    let found = issues(&text);
    let i = found
        .iter()
        .find(|i| i.key == "providers[0].password")
        .expect("named");
    assert!(i.message.contains("password_env"), "{i}");
    assert!(!i.message.contains("hunter2"));
}

#[test]
fn syntax_error_names_line() {
    let found = issues("[server]\nlisten = \n");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].line, Some(2), "{:?}", found);
}

#[test]
fn playbook_channel_without_provider_is_reported() {
    let email_only = GOOD.replace(
        "channels = [\"sms\", \"voice\", \"email\"]",
        "channels = [\"email\"]",
    );
    // A built-in playbook quietly narrows to what the install can send, with a warning.
    let c = Config::from_str(&email_only, Path::new("/etc/klaxon/klaxon.toml")).unwrap();
    assert_eq!(c.playbooks["lockdown"].channels, vec![Channel::Email]);
    assert_eq!(c.playbooks["lockdown"].escalate, None);
    assert!(
        c.warnings
            .iter()
            .any(|w| w.key == "playbooks.lockdown.channels" && w.message.contains("sms"))
    );
    // An operator's own playbook must be satisfiable: that is an error.
    let own = format!(
        "{email_only}\n[playbooks.lockdown]\ntitle = \"L\"\nseverity = \"emergency\"\nchannels = [\"sms\"]\n[playbooks.lockdown.messages]\nen = \"x\"\n"
    );
    let found = issues(&own);
    assert!(
        found
            .iter()
            .any(|i| i.key == "playbooks.lockdown.channels" && i.message.contains("sms")),
        "{found:?}"
    );
}

#[test]
fn the_documented_example_config_is_valid() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/klaxon.example.toml"
    ));
    let c = Config::load(path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.providers.len(), 3);
    assert_eq!(c.groups.len(), 2);
    assert_eq!(c.server.timezone, "America/Chicago");
}

#[test]
fn cap_rules_and_schools_are_checked_with_their_keys() {
    let text = format!(
        "{GOOD}\n[[rules]]\nname = \"storm\"\nevents = [\"Winter Storm Warning\"]\nzones = [\"TXZ213\"]\nmin_severity = \"Severe\"\nplaybook = \"weather-closure\"\napproval = \"auto\"\n\n[[rules]]\nname = \"typo\"\nevents = [\"Blizzard Warning\"]\nzones = [\"TXZ213\"]\nplaybook = \"snow-day\"\n\n[schools.\"sch-a\"]\nzones = [\"TXZ213\"]\nlocation = [30.2, -97.7]\n"
    );
    let found = issues(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].key, "rules[1].playbook");
    assert!(found[0].message.contains("snow-day"));
    // The line of the offending key in the file.
    let line = text
        .lines()
        .position(|l| l == "playbook = \"snow-day\"")
        .unwrap()
        + 1;
    assert_eq!(found[0].line, Some(line));

    let ok = Config::from_str(
        &text.replace("snow-day", "weather-closure"),
        Path::new("/etc/klaxon/klaxon.toml"),
    )
    .unwrap();
    assert_eq!(ok.rules.len(), 2);
    assert_eq!(ok.rules[0].min_severity, Some(crate::cap::Severity::Severe));
    assert_eq!(ok.schools["sch-a"].location, Some([30.2, -97.7]));

    let bad = issues(&text.replace("min_severity = \"Severe\"", "min_severity = \"Awful\""));
    assert!(
        bad.iter().any(|i| i.key == "rules[0].min_severity"),
        "{bad:?}"
    );
}

#[test]
fn feeds_and_webhooks_are_checked_with_their_keys() {
    let text = format!(
        "{GOOD}\n[[feeds]]\nname = \"nws\"\nkind = \"nws-api\"\nurl = \"https://api.weather.gov/alerts/active?zone=TXZ213\"\n\n[[feeds]]\nname = \"nws\"\nkind = \"rss\"\nurl = \"ftp://x\"\n\n[webhooks.panic]\nplaybooks = [\"lockdown\", \"fire-drill\"]\n\n[webhooks.eoc]\nsecret = \"hunter2\"\nplaybooks = [\"lockdown\"]\n"
    );
    let found = issues(&text);
    let keys: Vec<&str> = found.iter().map(|i| i.key.as_str()).collect();
    // nws-api without a User-Agent naming a contact.
    assert!(keys.contains(&"feeds[0].user_agent"), "{found:?}");
    assert!(keys.contains(&"feeds[1].kind"), "{found:?}");
    assert!(keys.contains(&"webhooks.panic.secret_env"), "{found:?}");
    assert!(keys.contains(&"webhooks.panic.playbooks"), "{found:?}");
    let literal = found
        .iter()
        .find(|i| i.key == "webhooks.eoc.secret")
        .unwrap();
    assert!(literal.message.contains("secret_env"), "{literal:?}");
}

#[test]
fn a_public_listener_with_a_plain_http_public_url_is_warned_about() {
    let open = GOOD.replace("127.0.0.1:0", "0.0.0.0:8080");
    let c = Config::from_str(&open, Path::new("/etc/klaxon/klaxon.toml")).unwrap();
    let w: Vec<_> = c
        .warnings
        .iter()
        .filter(|w| w.key == "server.listen")
        .collect();
    assert_eq!(w.len(), 1, "{:?}", c.warnings);
    assert!(w[0].message.contains("https"), "{}", w[0].message);

    let https = open.replace("http://127.0.0.1:8080", "https://alerts.example.org");
    let c = Config::from_str(&https, Path::new("/etc/klaxon/klaxon.toml")).unwrap();
    assert!(c.warnings.iter().all(|w| w.key != "server.listen"));

    let local = Config::from_str(GOOD, Path::new("/etc/klaxon/klaxon.toml")).unwrap();
    assert!(local.warnings.iter().all(|w| w.key != "server.listen"));
}

#[test]
fn templates_without_their_own_drill_marker_are_named() {
    let text = format!(
        "{GOOD}\n[playbooks.fire]\ntitle = \"Fire\"\nseverity = \"emergency\"\nchannels = [\"sms\"]\n[playbooks.fire.messages]\nen = \"FIRE at {{{{ school }}}}. {{{{ link }}}}\"\nes = \"{{% if drill %}}SIMULACRO {{% endif %}}INCENDIO {{{{ link }}}}\"\n"
    );
    let c = Config::from_str(&text, Path::new("/etc/klaxon/klaxon.toml")).unwrap();
    let keys: Vec<&str> = c.warnings.iter().map(|w| w.key.as_str()).collect();
    assert!(keys.contains(&"playbooks.fire.messages.en"), "{keys:?}");
    assert!(!keys.contains(&"playbooks.fire.messages.es"), "{keys:?}");
}
