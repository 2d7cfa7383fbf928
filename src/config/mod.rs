//! Typed settings. `Config::load` reads the TOML, checks every section and
//! reports every problem at once, each naming its key (and line where it can be
//! found), so `klaxon check-config` catches mistakes before an alert does.

mod types;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

pub use types::{ConfigIssue, Dur, Issues, Secret, relative_to, resolve_secret};

use crate::audience::GroupConfig;
use crate::cap::rules::{RuleConfig, SchoolGeo};
use crate::deliver::providers::ProviderConfig;
use crate::domain::Channel;
use crate::http::hook_trigger::WebhookConfig;
use crate::playbook::PlaybookConfig;
use crate::sis::SisConfig;
use crate::trigger::feed::FeedConfig;
use crate::trigger::watch::TriggersConfig;

/// The whole configuration, after validation.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (for messages), and its folder, against which
    /// relative paths are resolved.
    pub path: PathBuf,
    pub base_dir: PathBuf,
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub sis: SisConfig,
    pub groups: Vec<GroupConfig>,
    pub providers: Vec<ProviderConfig>,
    pub delivery: DeliveryConfig,
    pub playbooks: BTreeMap<String, PlaybookConfig>,
    /// CAP rules (`[[rules]]`): which alerts start which playbook.
    pub rules: Vec<RuleConfig>,
    /// Where schools are (`[schools."ID"]`), for per-school CAP targeting.
    pub schools: BTreeMap<String, SchoolGeo>,
    /// CAP feeds polled by the daemon (`[[feeds]]`).
    pub feeds: Vec<FeedConfig>,
    /// Sources of signed webhook triggers (`[webhooks.NAME]`).
    pub webhooks: BTreeMap<String, WebhookConfig>,
    /// `[triggers]`: the CAP drop folder.
    pub triggers: TriggersConfig,
    /// `[approval]`: the two-person rule beyond the playbooks that ask for it.
    pub approval: ApprovalConfig,
    /// `[console]`: sessions and who signs in as what (`http::session`).
    pub console: crate::http::session::ConsoleConfig,
    /// `[oidc]`: the district's identity provider (`http::oidc`).
    pub oidc: Option<crate::http::oidc::OidcConfig>,
    /// `[retention]`: how long personal data and delivery payloads are kept.
    pub retention: crate::retention::RetentionConfig,
    /// Things that work but deserve a look; `check-config` prints them.
    pub warnings: Vec<ConfigIssue>,
}

/// `[approval]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalConfig {
    /// `"two-person"`: every district-wide alert (no schools, grades, classes
    /// or groups named) needs a second operator, whatever its playbook says.
    #[serde(default)]
    pub district_wide: crate::playbook::Approval,
    /// Paged, in order, while an alert waits for approval.
    #[serde(default)]
    pub approvers: Vec<crate::trigger::pager::Approver>,
    /// Nobody acts within this: the next approver on call is paged.
    #[serde(default = "crate::trigger::pager::default_escalate")]
    pub approval_escalate: Dur,
    /// "21:00-07:00": routine alerts waiting for approval page nobody then;
    /// emergencies always do.
    #[serde(default)]
    pub quiet_hours: Option<String>,
}

impl Default for ApprovalConfig {
    fn default() -> ApprovalConfig {
        ApprovalConfig {
            district_wide: Default::default(),
            approvers: Vec::new(),
            approval_escalate: crate::trigger::pager::default_escalate(),
            quiet_hours: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the one HTTP listener. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Base of acknowledgement links and provider callback URLs, as the
    /// outside world reaches this daemon (usually through a reverse proxy).
    pub public_url: String,
    /// How long SIGTERM waits for in-flight requests and sends.
    #[serde(default = "default_grace")]
    pub shutdown_grace: Dur,
    /// Admin token for the daemon's own clients (`klaxon trigger`, `status`):
    /// the environment variable they read it from. Documented here so
    /// operators see it; the daemon itself validates tokens against the store.
    #[serde(default)]
    pub token_env: Option<String>,
    /// IANA time zone for times shown to people (pages, status), e.g. "America/Chicago".
    #[serde(default = "default_tz")]
    pub timezone: String,
    /// A request's header must arrive within this; a kept-alive connection
    /// waiting for its next request is closed after it too (idle timeout).
    #[serde(default = "default_header_read")]
    pub header_read_timeout: Dur,
    /// A request's whole body must arrive within this.
    #[serde(default = "default_body_read")]
    pub body_read_timeout: Dur,
    /// Open HTTP connections at most (lowered to fit the open-file limit);
    /// the last eighth is kept for /healthz, /readyz and acknowledgements.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_header_read() -> Dur {
    Dur::secs(10)
}

fn default_body_read() -> Dur {
    Dur::secs(30)
}

fn default_max_connections() -> usize {
    1024
}

fn default_tz() -> String {
    "UTC".into()
}

fn default_grace() -> Dur {
    Dur::secs(20)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Folder for `klaxon.db` (operational) and the SIS copies.
    pub dir: PathBuf,
    /// SQLite `synchronous`: "full" survives power loss, "normal" survives
    /// a crash of klaxon (kill -9) but may lose the last commits on power loss.
    #[serde(default = "default_sync")]
    pub synchronous: String,
}

fn default_sync() -> String {
    "full".into()
}

/// How the delivery engine behaves; every key has a safe default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Sends in flight at once per provider.
    pub concurrency: usize,
    /// Time-out for one provider request.
    pub request_timeout: Dur,
    /// First retry delay; doubles each attempt, with jitter.
    pub retry_initial: Dur,
    /// Longest delay between two attempts.
    pub retry_max: Dur,
    /// Attempts before a delivery is given up as failed, for alerts without
    /// an acknowledgement deadline; with one, the deadline bounds retries.
    pub max_attempts: u32,
    /// Consecutive transient failures that put a provider on a cooling-off period.
    pub breaker_failures: u32,
    /// How long a tripped provider is skipped in favour of the next one.
    pub breaker_cooldown: Dur,
    /// SMS segment budget for one message including its link.
    pub sms_max_segments: u32,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            concurrency: 64,
            request_timeout: Dur::secs(10),
            retry_initial: Dur(std::time::Duration::from_millis(500)),
            retry_max: Dur::secs(30),
            max_attempts: 8,
            breaker_failures: 5,
            breaker_cooldown: Dur::secs(30),
            sms_max_segments: 3,
        }
    }
}

/// The fields every provider kind has.
#[derive(Debug, Clone)]
pub struct ProviderCommon {
    pub name: String,
    pub channels: Vec<Channel>,
    /// Messages per second this provider may be sent; none means unlimited.
    pub max_per_second: Option<f64>,
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file `{path}` has {} problem(s):\n{}", issues.len(), issues.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        issues: Vec<ConfigIssue>,
    },
}

/// Deserialises one section, pushing a problem naming `key` on failure.
pub fn section<T: DeserializeOwned>(
    key: &str,
    value: toml::Value,
    issues: &mut Issues,
) -> Option<T> {
    let sub = match &value {
        toml::Value::Table(t) => toml::to_string(t).ok(),
        _ => None,
    };
    match T::deserialize(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let msg = e.message().to_string();
            // serde names the field in its message for unknown and missing
            // fields; lift it into the key path.
            let field = msg
                .split('`')
                .nth(1)
                .filter(|_| msg.starts_with("unknown field") || msg.starts_with("missing field"))
                .map(str::to_string)
                .or_else(|| sub.as_deref().and_then(|s| field_at_error::<T>(s)));
            let msg = match field.as_deref() {
                Some(f @ ("auth_token" | "password" | "api_key" | "secret" | "token")) => format!(
                    "secrets are not read from the TOML: use `{f}_env` (an environment variable) or `{f}_file` (a file)"
                ),
                _ => msg,
            };
            match field {
                Some(f) => issues.push(format!("{key}.{f}"), msg),
                None => issues.push(key.to_string(), msg),
            }
            None
        }
    }
}

/// For errors that do not name their field (a wrong type, a bad value), the
/// section is re-parsed as its own small document: the parser's error span
/// then points at the offending `key = value` line, and the key is read off it.
fn field_at_error<T: DeserializeOwned>(doc: &str) -> Option<String> {
    let err = toml::from_str::<T>(doc).err()?;
    let span = err.span()?;
    let line = doc[..span.start.min(doc.len())].matches('\n').count();
    let text = doc.lines().nth(line)?;
    let (k, _) = text.split_once('=')?;
    // Keys inside a sub-table (`[messages]`) keep their table name.
    let table = doc
        .lines()
        .take(line)
        .filter(|l| l.trim_start().starts_with('['))
        .last()
        .map(|h| h.trim().trim_matches(['[', ']']).to_string());
    let k = k.trim().trim_matches('"').to_string();
    Some(match table {
        Some(t) => format!("{t}.{k}"),
        None => k,
    })
}

impl Config {
    /// The path used when `--config` is not given: `config/klaxon.toml`, then
    /// `/etc/klaxon/klaxon.toml`.
    pub fn default_path() -> PathBuf {
        let local = PathBuf::from("config/klaxon.toml");
        if local.exists() {
            local
        } else {
            PathBuf::from("/etc/klaxon/klaxon.toml")
        }
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        // Not UTF-8 is a problem in the file, like a syntax error (exit 2
        // from check-config), not a failure to read it.
        let text = String::from_utf8(bytes).map_err(|e| {
            let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = good.iter().filter(|b| **b == b'\n').count() + 1;
            let column =
                good.len() - good.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1) + 1;
            ConfigError::Invalid {
                path: path.to_path_buf(),
                issues: vec![ConfigIssue {
                    key: "(file)".into(),
                    line: Some(line),
                    message: format!("not valid UTF-8 at column {column}; save the file as UTF-8"),
                }],
            }
        })?;
        Config::from_str(&text, path)
    }

    /// Parses and validates config text; `path` names the file in messages
    /// and anchors relative paths.
    pub fn from_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut issues = Issues::default();
        let invalid = |mut issues: Issues| {
            locate_lines(text, &mut issues.list);
            ConfigError::Invalid {
                path: path.to_path_buf(),
                issues: issues.list,
            }
        };
        let mut root: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => {
                let e: toml::de::Error = e;
                let line = e
                    .span()
                    .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
                issues.list.push(ConfigIssue {
                    key: "(syntax)".into(),
                    line,
                    message: e.message().to_string(),
                });
                return Err(invalid(issues));
            }
        };

        let server = take_required::<ServerConfig>(&mut root, "server", &mut issues);
        let store = take_required::<StoreConfig>(&mut root, "store", &mut issues);
        let sis = take_optional::<SisConfig>(&mut root, "sis", &mut issues);
        let delivery = take_optional::<DeliveryConfig>(&mut root, "delivery", &mut issues);

        let mut groups = Vec::new();
        if let Some(v) = root.remove("groups") {
            match v {
                toml::Value::Array(items) => {
                    for (i, item) in items.into_iter().enumerate() {
                        if let Some(g) =
                            section::<GroupConfig>(&format!("groups[{i}]"), item, &mut issues)
                        {
                            groups.push(g);
                        }
                    }
                }
                _ => issues.push("groups", "must be an array of tables: [[groups]]"),
            }
        }

        let mut providers = Vec::new();
        match root.remove("providers") {
            Some(toml::Value::Array(items)) => {
                for (i, item) in items.into_iter().enumerate() {
                    let prefix = format!("providers[{i}]");
                    match item {
                        toml::Value::Table(t) => {
                            if let Some(p) = ProviderConfig::parse(&prefix, t, &mut issues) {
                                providers.push(p);
                            }
                        }
                        _ => issues.push(prefix, "must be a table: [[providers]]"),
                    }
                }
            }
            Some(_) => issues.push("providers", "must be an array of tables: [[providers]]"),
            None => issues.push(
                "providers",
                "no providers configured; add at least one [[providers]] section",
            ),
        }

        let mut playbooks = crate::playbook::builtin();
        let mut configured = std::collections::BTreeSet::new();
        if let Some(v) = root.remove("playbooks") {
            match v {
                toml::Value::Table(t) => {
                    for (name, body) in t {
                        if let Some(p) = section::<PlaybookConfig>(
                            &format!("playbooks.{name}"),
                            body,
                            &mut issues,
                        ) {
                            configured.insert(name.clone());
                            playbooks.insert(name, p);
                        }
                    }
                }
                _ => issues.push(
                    "playbooks",
                    "must be a table of playbooks: [playbooks.NAME]",
                ),
            }
        }

        let (rules, schools) = take_cap_sections(&mut root, &mut issues);
        let mut feeds = Vec::new();
        match root.remove("feeds") {
            Some(toml::Value::Array(items)) => {
                for (i, item) in items.into_iter().enumerate() {
                    if let Some(f) =
                        section::<FeedConfig>(&format!("feeds[{i}]"), item, &mut issues)
                    {
                        feeds.push(f);
                    }
                }
            }
            Some(_) => issues.push("feeds", "must be an array of tables: [[feeds]]"),
            None => {}
        }
        let mut webhooks = BTreeMap::new();
        match root.remove("webhooks") {
            Some(toml::Value::Table(t)) => {
                for (name, body) in t {
                    if let Some(w) =
                        section::<WebhookConfig>(&format!("webhooks.{name}"), body, &mut issues)
                    {
                        webhooks.insert(name, w);
                    }
                }
            }
            Some(_) => issues.push("webhooks", "must be a table of sources: [webhooks.NAME]"),
            None => {}
        }
        let triggers = take_optional::<TriggersConfig>(&mut root, "triggers", &mut issues);
        let approval = take_optional::<ApprovalConfig>(&mut root, "approval", &mut issues);
        let console =
            take_optional::<crate::http::session::ConsoleConfig>(&mut root, "console", &mut issues);
        let oidc = crate::http::oidc::take_config(&mut root, &mut issues);
        let retention =
            take_optional::<crate::retention::RetentionConfig>(&mut root, "retention", &mut issues);

        for key in root.keys() {
            issues.push(
                key.clone(),
                "unknown section; expected server, store, sis, delivery, groups, providers, playbooks, rules, schools, feeds, webhooks, triggers, approval, console, oidc or retention",
            );
        }

        let (Some(server), Some(store)) = (server, store) else {
            return Err(invalid(issues));
        };
        // A built-in playbook only uses the channels this install has
        // providers for; an operator's own playbook must be satisfiable.
        let mut warnings = Vec::new();
        for (name, pb) in playbooks
            .iter_mut()
            .filter(|(n, _)| !configured.contains(*n))
        {
            let have = |ch: &Channel| {
                providers
                    .iter()
                    .any(|p: &ProviderConfig| p.common().channels.contains(ch))
            };
            let dropped: Vec<Channel> = pb.channels.iter().filter(|c| !have(c)).copied().collect();
            if pb.escalate.is_some_and(|c| !have(&c)) {
                pb.escalate = None;
            }
            if !dropped.is_empty() {
                pb.channels.retain(|c| have(c));
                warnings.push(ConfigIssue {
                    key: format!("playbooks.{name}.channels"),
                    line: None,
                    message: format!(
                        "built-in playbook sends without {} (no provider configured for it)",
                        dropped
                            .iter()
                            .map(|c| c.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        }
        let config = Config {
            warnings,
            path: path.to_path_buf(),
            base_dir,
            server,
            store,
            sis: sis.unwrap_or_default(),
            groups,
            providers,
            delivery: delivery.unwrap_or_default(),
            playbooks,
            rules,
            schools,
            feeds,
            webhooks,
            triggers: triggers.unwrap_or_default(),
            approval: approval.unwrap_or_default(),
            console: console.unwrap_or_default(),
            oidc,
            retention: retention.unwrap_or_default(),
        };
        config.validate(&mut issues);
        let mut config = config;
        if let Some(w) = plain_http_listener_warning(&config.server) {
            config.warnings.push(w);
        }
        config
            .warnings
            .extend(crate::trigger::feed::warnings(&config.feeds));
        for (name, pb) in &config.playbooks {
            for lang in pb.templates_without_drill_marker() {
                config.warnings.push(ConfigIssue {
                    key: format!("playbooks.{name}.messages.{lang}"),
                    line: None,
                    message: "the template has no drill marker of its own ({% if drill %}…{% endif %}); klaxon puts \"DRILL - \" (in the language) before it on every channel".into(),
                });
            }
            if !pb.channels.contains(&Channel::Sms) {
                continue;
            }
            for (lang, n) in
                pb.sms_over_budget(&config.server.public_url, config.delivery.sms_max_segments)
            {
                config.warnings.push(ConfigIssue {
                    key: format!("playbooks.{name}.messages.{lang}"),
                    line: None,
                    message: format!(
                        "an SMS with long names and its link takes {n} segments, over the budget of {} (delivery.sms_max_segments); such texts are shortened when sent",
                        config.delivery.sms_max_segments
                    ),
                });
            }
        }
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(invalid(issues))
        }
    }

    /// Cross-field checks that serde cannot express.
    fn validate(&self, issues: &mut Issues) {
        crate::trigger::pager::validate(
            &self.approval.approvers,
            self.approval.quiet_hours.as_deref(),
            &self.sis.default_country,
            issues,
        );
        crate::retention::validate(&self.retention, issues);
        let url = &self.server.public_url;
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            issues.push(
                "server.public_url",
                format!("`{url}` must start with https:// or http://"),
            );
        } else if url.ends_with('/') {
            issues.push("server.public_url", "must not end with a slash");
        }
        if self.server.max_connections < 16 {
            issues.push("server.max_connections", "must be at least 16");
        }
        for (key, d) in [
            (
                "server.header_read_timeout",
                self.server.header_read_timeout.0,
            ),
            ("server.body_read_timeout", self.server.body_read_timeout.0),
        ] {
            if d.is_zero() {
                issues.push(key, "must be longer than zero");
            }
        }
        if jiff::tz::TimeZone::get(&self.server.timezone).is_err() {
            issues.push(
                "server.timezone",
                format!(
                    "unknown time zone `{}`; use an IANA name like \"America/Chicago\"",
                    self.server.timezone
                ),
            );
        }
        if !matches!(self.store.synchronous.as_str(), "full" | "normal") {
            issues.push("store.synchronous", "must be \"full\" or \"normal\"");
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            let common = p.common();
            let prefix = format!("providers[{i}]");
            if common.name.trim().is_empty() {
                issues.push(format!("{prefix}.name"), "must not be empty");
            } else if !names.insert(common.name.clone()) {
                issues.push(
                    format!("{prefix}.name"),
                    format!("duplicate provider name `{}`", common.name),
                );
            }
            if common.channels.is_empty() {
                issues.push(
                    format!("{prefix}.channels"),
                    "must list at least one channel",
                );
            }
            for ch in &common.channels {
                if !p.supported_channels().contains(ch) {
                    issues.push(
                        format!("{prefix}.channels"),
                        format!("a `{}` provider cannot carry `{ch}`", p.kind()),
                    );
                }
            }
            if let Some(r) = common.max_per_second
                && !(r > 0.0 && r.is_finite())
            {
                issues.push(
                    format!("{prefix}.max_per_second"),
                    "must be a positive number",
                );
            }
        }
        let d = &self.delivery;
        if d.concurrency == 0 {
            issues.push("delivery.concurrency", "must be at least 1");
        }
        if d.max_attempts == 0 {
            issues.push("delivery.max_attempts", "must be at least 1");
        }
        if d.sms_max_segments == 0 {
            issues.push("delivery.sms_max_segments", "must be at least 1");
        }
        for (name, pb) in &self.playbooks {
            pb.validate(&format!("playbooks.{name}"), issues);
            if let Some(ch) = pb.escalate
                && !self
                    .providers
                    .iter()
                    .any(|p| p.common().channels.contains(&ch))
            {
                issues.push(
                    format!("playbooks.{name}.escalate"),
                    format!("no provider is configured for channel `{ch}`"),
                );
            }
            for ch in &pb.channels {
                if !self
                    .providers
                    .iter()
                    .any(|p| p.common().channels.contains(ch))
                {
                    issues.push(
                        format!("playbooks.{name}.channels"),
                        format!("no provider is configured for channel `{ch}`"),
                    );
                }
            }
        }
        crate::cap::rules::validate(&self.rules, &self.schools, &self.playbooks, issues);
        crate::trigger::feed::validate(&self.feeds, issues);
        crate::http::hook_trigger::validate(&self.webhooks, &self.playbooks, issues);
        self.sis.validate(issues);
        self.console.validate(self.oidc.is_some(), issues);
        for (i, g) in self.groups.iter().enumerate() {
            if self.groups[..i].iter().any(|o| o.name == g.name) {
                issues.push(
                    format!("groups[{i}].name"),
                    format!("duplicate group name `{}`", g.name),
                );
            }
        }
    }

    pub fn store_dir(&self) -> PathBuf {
        relative_to(&self.base_dir, &self.store.dir)
    }

    /// Providers for one channel, in the order the config lists them (priority).
    pub fn providers_for(&self, channel: Channel) -> Vec<&ProviderConfig> {
        self.providers
            .iter()
            .filter(|p| p.common().channels.contains(&channel))
            .collect()
    }
}

/// `[[rules]]` and `[schools."ID"]`: CAP rules and where schools are.
fn take_cap_sections(
    root: &mut toml::Table,
    issues: &mut Issues,
) -> (Vec<RuleConfig>, BTreeMap<String, SchoolGeo>) {
    let mut rules = Vec::new();
    match root.remove("rules") {
        Some(toml::Value::Array(items)) => {
            for (i, item) in items.into_iter().enumerate() {
                if let Some(r) = section::<RuleConfig>(&format!("rules[{i}]"), item, issues) {
                    rules.push(r);
                }
            }
        }
        Some(_) => issues.push("rules", "must be an array of tables: [[rules]]"),
        None => {}
    }
    let mut schools = BTreeMap::new();
    match root.remove("schools") {
        Some(toml::Value::Table(t)) => {
            for (id, body) in t {
                if let Some(s) = section::<SchoolGeo>(&format!("schools.{id}"), body, issues) {
                    schools.insert(id, s);
                }
            }
        }
        Some(_) => issues.push("schools", "must be a table of schools: [schools.\"ID\"]"),
        None => {}
    }
    (rules, schools)
}

fn take_required<T: DeserializeOwned>(
    root: &mut toml::Table,
    key: &str,
    issues: &mut Issues,
) -> Option<T> {
    match root.remove(key) {
        Some(v) => section(key, v, issues),
        None => {
            issues.push(key, format!("missing section [{key}]"));
            None
        }
    }
}

fn take_optional<T: DeserializeOwned>(
    root: &mut toml::Table,
    key: &str,
    issues: &mut Issues,
) -> Option<T> {
    root.remove(key).and_then(|v| section(key, v, issues))
}

/// Finds the line of each issue's key in the source, where the key's last
/// segment appears as `name =` inside the matching section. Best effort: a
/// problem without a line still names its key.
fn locate_lines(text: &str, issues: &mut [ConfigIssue]) {
    for issue in issues.iter_mut().filter(|i| i.line.is_none()) {
        let (section_path, leaf) = match issue.key.rsplit_once('.') {
            Some((s, l)) => (s.to_string(), l.to_string()),
            None => (String::new(), issue.key.clone()),
        };
        // `providers[2]` → header `[[providers]]`, the third of them.
        let (header, nth) = match section_path.split_once('[') {
            Some((name, rest)) => (
                format!("[[{name}]]"),
                rest.trim_end_matches(']').parse::<usize>().unwrap_or(0),
            ),
            None if section_path.is_empty() => (String::new(), 0),
            None => (format!("[{section_path}]"), 0),
        };
        let mut seen = 0usize;
        let mut inside = header.is_empty();
        for (n, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.starts_with('[') {
                if t == header {
                    inside = seen == nth;
                    seen += 1;
                } else {
                    inside = false;
                }
                if header.is_empty() && t == format!("[{leaf}]") {
                    issue.line = Some(n + 1);
                    break;
                }
                continue;
            }
            if inside {
                let k = t.split('=').next().unwrap_or("").trim().trim_matches('"');
                if k == leaf {
                    issue.line = Some(n + 1);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

/// A listener reachable from other hosts whose links are `http://`: tokens
/// in acknowledgement links and API calls would cross the network in clear.
fn plain_http_listener_warning(server: &ServerConfig) -> Option<ConfigIssue> {
    if server.listen.ip().is_loopback() || !server.public_url.starts_with("http://") {
        return None;
    }
    Some(ConfigIssue {
        key: "server.listen".into(),
        line: None,
        message: format!(
            "listens on {} (reachable from other hosts) while server.public_url is plain http://; put klaxon behind an https proxy and use an https:// public_url, or listen on 127.0.0.1",
            server.listen
        ),
    })
}
