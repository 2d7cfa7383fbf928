//! The `klaxon` command line. Every command reads the config (`--config`),
//! prints readable sentences and tables for people and `--json` for scripts,
//! and exits non-zero with one clear line when something is wrong.

mod client;
mod governance;
pub(crate) mod output;
pub(crate) mod stdout;

use stdout::{out, outln};

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::audience::AudienceSpec;
use crate::config::{Config, ConfigError};
use crate::domain::Role;
use crate::store::Store;
use crate::store::tokens::{self, ApiRole};

#[derive(Parser)]
#[command(
    name = "klaxon",
    version,
    about = "Emergency mass notification for school districts: SMS, voice and email, with confirmations.",
    after_help = "Examples:\n  klaxon check-config --config /etc/klaxon/klaxon.toml\n  klaxon run\n  klaxon trigger lockdown --school 0042\n  klaxon status\n  klaxon demo"
)]
pub struct Cli {
    /// Config file [default: config/klaxon.toml, then /etc/klaxon/klaxon.toml]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Log format on stderr: "text" or "json"
    #[arg(long, global = true, default_value = "text", value_name = "FORMAT")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (HTTP listener, delivery engine, deadline tracker, SIS watch folder).
    #[command(
        after_help = "Example:\n  KLAXON_TWILIO_TOKEN=... klaxon run --config /etc/klaxon/klaxon.toml"
    )]
    Run,
    /// Validate the config: every problem is listed with its key and line.
    #[command(after_help = "Example:\n  klaxon check-config --config /etc/klaxon/klaxon.toml")]
    CheckConfig {
        #[arg(long)]
        json: bool,
    },
    /// Import or generate OneRoster exports (the SIS copy).
    #[command(subcommand)]
    Sis(SisCommand),
    /// Preview an audience without sending anything.
    #[command(
        after_help = "Examples:\n  klaxon audience --school 0042\n  klaxon audience --school 0042 --grade 5 --role guardian\n  klaxon audience --group bus-12 --json"
    )]
    Audience {
        #[command(flatten)]
        audience: AudienceArgs,
        #[arg(long)]
        json: bool,
    },
    /// Ask the running daemon to start an alert; prints the alert id.
    #[command(
        after_help = "Examples:\n  klaxon trigger lockdown --school 0042\n  klaxon trigger early-dismissal --school 0042 --message \"Water main break\"\n  klaxon trigger early-dismissal --school 0042 --message \"Water main break\" --message-in es=\"Rotura de tubería\"\n  klaxon trigger evacuation --school 0042 --drill\n\nReads the API token from KLAXON_TOKEN."
    )]
    Trigger {
        /// Playbook name, e.g. lockdown, shelter, evacuation, early-dismissal, weather-closure
        playbook: String,
        #[command(flatten)]
        audience: AudienceArgs,
        /// Extra text added to the playbook's message (English; see --message-in)
        #[arg(long, value_name = "TEXT")]
        message: Option<String>,
        /// The text in another language, e.g. es="Rotura de tubería" (repeatable)
        #[arg(long = "message-in", value_name = "LANG=TEXT")]
        message_in: Vec<String>,
        /// Mark as a drill: measured like a real alert, every message says DRILL
        #[arg(long)]
        drill: bool,
        /// Create the alert but hold it until `klaxon approve`
        #[arg(long)]
        hold: bool,
        /// Create it even if the audience reaches nobody
        #[arg(long)]
        allow_empty: bool,
        /// Send even though an alert of this playbook is open for these schools
        #[arg(long)]
        confirm_duplicate: bool,
        /// Send now although a second operator must approve it: why (audited, reviewed later)
        #[arg(long, value_name = "REASON")]
        override_reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Progress of one alert, or the list of recent alerts.
    #[command(
        after_help = "Examples:\n  klaxon status\n  klaxon status 42\n  klaxon status 42 --watch\n  klaxon status 42 --json"
    )]
    Status {
        alert_id: Option<i64>,
        /// Refresh every 2 seconds until the alert has settled
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        json: bool,
    },
    /// Release an alert held for approval.
    #[command(
        after_help = "Examples:\n  klaxon approve 42\n  klaxon approve 42 --override-reason \"Intruder on site, no second operator reachable\""
    )]
    Approve {
        alert_id: i64,
        /// You triggered this two-person alert and it cannot wait: why (audited, reviewed later)
        #[arg(long, value_name = "REASON")]
        override_reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Send the all-clear for an alert to the same people.
    #[command(
        name = "all-clear",
        after_help = "Example:\n  klaxon all-clear 42 --message \"Dismissal as normal\""
    )]
    AllClear {
        alert_id: i64,
        #[arg(long, value_name = "TEXT")]
        message: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Send a follow-up to exactly the people of an alert; it shows on their
    /// acknowledgement page above the choices.
    #[command(
        after_help = "Example:\n  klaxon update 42 --message \"Parents may now pick up at the north gate.\""
    )]
    Update {
        alert_id: i64,
        #[arg(long, value_name = "TEXT")]
        message: String,
        #[arg(long)]
        json: bool,
    },
    /// Cancel an alert: nothing more is sent.
    #[command(after_help = "Example:\n  klaxon cancel 42")]
    Cancel {
        alert_id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Alerts sent without a second approval (an emergency override), reviewed afterwards by another person.
    #[command(subcommand)]
    Review(ReviewCommand),
    /// Reports for district staff.
    #[command(subcommand)]
    Report(ReportCommand),
    /// A self-contained run on the bundled demo district: no credentials, no network.
    #[command(after_help = "Example:\n  cargo run --release -- demo")]
    Demo {
        /// Share of guardians who confirm, 0 to 1
        #[arg(long, default_value_t = 0.6)]
        confirm_share: f64,
        /// Keep the demo's files here instead of a temporary folder
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The audit log: verify its hash chain, export it, legal holds.
    #[command(subcommand)]
    Audit(governance::AuditCommand),
    /// CAP weather and civil-defence alerts.
    #[command(subcommand)]
    Cap(CapCommand),
}

#[derive(Subcommand)]
enum ReviewCommand {
    /// The overrides waiting for review.
    #[command(after_help = "Example:\n  klaxon review list")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Mark an override reviewed (not by the one who sent it).
    #[command(
        after_help = "Example:\n  klaxon review done 42 --note \"Checked with the principal\""
    )]
    Done {
        alert_id: i64,
        #[arg(long, value_name = "TEXT", default_value = "")]
        note: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CapCommand {
    /// What klaxon would do with each alert in a CAP XML, ATOM or api.weather.gov JSON file, and why.
    #[command(
        after_help = "Examples:\n  klaxon cap inspect storm.xml\n  klaxon cap inspect old-blizzard.xml --at 2021-12-27T12:00:00-06:00\n  curl -s -A 'district-it (it@example-isd.org)' 'https://api.weather.gov/alerts/active?zone=TXZ213' > now.json && klaxon cap inspect now.json --json\n\nNothing is sent. Exits non-zero only when the document cannot be understood."
    )]
    Inspect {
        file: PathBuf,
        /// Judge as of this time (RFC 3339), to replay a past storm against today's rules
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SisCommand {
    /// Import a OneRoster 1.1 or 1.2 CSV export (folder or .zip).
    #[command(
        after_help = "Examples:\n  klaxon sis import /srv/exports/oneroster-2026-11-22.zip\n  klaxon sis import ./export --force"
    )]
    Import {
        path: PathBuf,
        /// Accept an export that drops more students or contacts than `sis.max_shrink`
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// The SIS copy in use, what needs attention, and the last syncs.
    #[command(after_help = "Examples:\n  klaxon sis status\n  klaxon sis status --last 50 --json")]
    Status {
        /// How many syncs to list
        #[arg(long, default_value_t = 10)]
        last: i64,
        #[arg(long)]
        json: bool,
    },
    /// Write a synthetic OneRoster export of N students.
    #[command(after_help = "Example:\n  klaxon sis generate --students 100000 /tmp/district")]
    Generate {
        #[arg(long)]
        students: u32,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum ReportCommand {
    /// Contacts whose addresses failed permanently, and why.
    #[command(after_help = "Example:\n  klaxon report contactability --json > contactability.json")]
    Contactability {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create an API token; it is printed once (last line) and only its hash is stored.
    #[command(
        after_help = "Examples:\n  klaxon token create --role operator --name \"front office\"\n  klaxon token create --role operator --name \"north office\" --schools 0042,0043"
    )]
    Create {
        #[arg(long, value_parser = ["admin", "operator", "viewer"])]
        role: String,
        #[arg(long)]
        name: String,
        /// Limit the token to these schools (sourcedIds, comma-separated);
        /// without it, the whole district.
        #[arg(long, value_name = "ID,ID", value_delimiter = ',')]
        schools: Vec<String>,
    },
    /// List API tokens: id, name, role, created, last used, revoked (never the secret).
    #[command(after_help = "Examples:\n  klaxon token list\n  klaxon token list --json")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API token: the daemon refuses it from the next request on.
    #[command(after_help = "Example:\n  klaxon token list\n  klaxon token revoke 3")]
    Revoke {
        /// The token's id, from `klaxon token list`
        id: i64,
        #[arg(long)]
        json: bool,
    },
}

/// Who an audience is, from repeated flags. Empty flags do not narrow.
#[derive(Args, Clone, Default)]
pub struct AudienceArgs {
    /// School sourcedId (repeatable)
    #[arg(long = "school", value_name = "ID")]
    schools: Vec<String>,
    /// Grade, e.g. 05 or KG (repeatable)
    #[arg(long = "grade", value_name = "G")]
    grades: Vec<String>,
    /// guardian, staff or student (repeatable)
    #[arg(long = "role", value_name = "R")]
    roles: Vec<String>,
    /// Named group from the config (repeatable)
    #[arg(long = "group", value_name = "NAME")]
    groups: Vec<String>,
    /// Class sourcedId (repeatable)
    #[arg(long = "class", value_name = "ID")]
    classes: Vec<String>,
}

impl AudienceArgs {
    fn spec(&self) -> anyhow::Result<AudienceSpec> {
        let mut roles = Vec::new();
        for r in &self.roles {
            roles.push(
                Role::parse(r).with_context(|| {
                    format!("unknown role `{r}`; use guardian, staff or student")
                })?,
            );
        }
        Ok(AudienceSpec {
            schools: self.schools.clone(),
            grades: self.grades.clone(),
            roles,
            groups: self.groups.clone(),
            classes: self.classes.clone(),
        })
    }
}

fn init_logging(format: &str, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KLAXON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

fn load_config(path: &Option<PathBuf>) -> anyhow::Result<Config> {
    let path = path.clone().unwrap_or_else(Config::default_path);
    Ok(Config::load(&path)?)
}

/// Entry point for `main`: runs the command, prints an error in one
/// readable paragraph (never a backtrace) and maps it to an exit code.
pub fn main() -> ExitCode {
    crate::store::configure_sqlite();
    std::panic::set_hook(Box::new(|info| {
        eprintln!(
            "klaxon: internal error: {info}\nThis is a bug; please report it with the command you ran."
        );
    }));
    let cli = Cli::parse();
    let daemon = matches!(cli.command, Command::Run);
    init_logging(&cli.log_format, if daemon { "info" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // The command line's own writes (tokens, imports, holds) are audited as
    // from `cli`; the daemon and the demo say where each action came from.
    let daemon = daemon || matches!(cli.command, Command::Demo { .. });
    let run = async move {
        if daemon {
            dispatch(cli).await
        } else {
            crate::store::audit::with_origin("cli", dispatch(cli)).await
        }
    };
    match runtime.block_on(run) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run => {
            let config = load_config(&cli.config)?;
            let app = crate::app::App::build(config).await?;
            app.run(crate::app::shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { json } => check_config(&cli.config, json),
        Command::Sis(cmd) => sis(&cli.config, cmd).await,
        Command::Audience { audience, json } => {
            let config = load_config(&cli.config)?;
            let spec = audience.spec()?;
            let store_dir = config.store_dir();
            let groups = config.groups.clone();
            let (preview, contacts) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let conn = crate::sis::open_current(&store_dir)?;
                let audience = crate::audience::resolve(&conn, &spec, &groups)?;
                let contacts = if json {
                    last_changed(&conn, &audience)?
                } else {
                    Vec::new()
                };
                Ok((audience.preview(), contacts))
            })
            .await??;
            if json {
                let mut out = serde_json::to_value(&preview)?;
                out["contacts"] = serde_json::Value::Array(contacts);
                outln!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                out!("{preview}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Trigger {
            playbook,
            audience,
            message,
            message_in,
            drill,
            hold,
            allow_empty,
            confirm_duplicate,
            override_reason,
            json,
        } => {
            let config = load_config(&cli.config)?;
            let req = crate::trigger::TriggerRequest {
                playbook,
                audience: audience.spec()?,
                message: message_text(message, &message_in)?,
                drill,
                hold,
                allow_empty,
                confirm_duplicate,
                override_reason,
            };
            client::trigger(&config, &req, json).await
        }
        Command::Status {
            alert_id,
            watch,
            json,
        } => {
            let config = load_config(&cli.config)?;
            client::status(&config, alert_id, watch, json).await
        }
        Command::Approve {
            alert_id,
            override_reason,
            json,
        } => {
            let config = load_config(&cli.config)?;
            let body = override_reason.map(|r| serde_json::json!({ "override_reason": r }));
            client::action_with(&config, alert_id, "approve", body, json).await
        }
        Command::AllClear {
            alert_id,
            message,
            json,
        } => {
            let config = load_config(&cli.config)?;
            client::action(&config, alert_id, "all-clear", message, json).await
        }
        Command::Update {
            alert_id,
            message,
            json,
        } => {
            let config = load_config(&cli.config)?;
            client::action(&config, alert_id, "updates", Some(message), json).await
        }
        Command::Cancel { alert_id, json } => {
            let config = load_config(&cli.config)?;
            client::action(&config, alert_id, "cancel", None, json).await
        }
        Command::Review(ReviewCommand::List { json }) => {
            let config = load_config(&cli.config)?;
            client::reviews(&config, json).await
        }
        Command::Review(ReviewCommand::Done {
            alert_id,
            note,
            json,
        }) => {
            let config = load_config(&cli.config)?;
            client::review(&config, alert_id, &note, json).await
        }
        Command::Report(ReportCommand::Contactability { json }) => {
            let config = load_config(&cli.config)?;
            let store = Store::open(&config.store_dir(), true)?;
            let rows = store.read(crate::store::deliveries::contactability).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                output::contactability(&rows, &config.server.timezone);
            }
            store.close();
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            confirm_share,
            keep,
            json,
        } => {
            if !(0.0..=1.0).contains(&confirm_share) {
                bail!("--confirm-share must be between 0 and 1");
            }
            crate::demo::run(confirm_share, keep, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cap(CapCommand::Inspect { file, at, json }) => {
            cap_inspect(&cli.config, &file, at.as_deref(), json)
        }
        Command::Token(TokenCommand::List { json }) => {
            governance::token_list(&load_config(&cli.config)?, json)
        }
        Command::Token(TokenCommand::Revoke { id, json }) => {
            governance::token_revoke(&load_config(&cli.config)?, id, json).await
        }
        Command::Audit(cmd) => governance::audit_command(&load_config(&cli.config)?, cmd).await,
        Command::Token(TokenCommand::Create {
            role,
            name,
            schools,
        }) => {
            let config = load_config(&cli.config)?;
            let role = ApiRole::parse(&role).context("role must be admin, operator or viewer")?;
            let schools: Vec<String> = schools
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            let scope = if schools.is_empty() {
                crate::domain::Scope::District
            } else {
                crate::domain::Scope::Schools(schools)
            };
            let sc = scope.clone();
            let store = Store::open(&config.store_dir(), true)?;
            let token = tokens::generate();
            let t = token.clone();
            let now = crate::store::now_ms();
            let n = name.clone();
            let actor = governance::cli_actor();
            store
                .write(move |c| {
                    let id = tokens::insert(c, &n, role, &t, now)?;
                    tokens::set_scope(c, id, &sc)?;
                    crate::store::audit::record(
                        c,
                        now,
                        &actor,
                        "token.create",
                        crate::store::audit::Target::Token(id),
                        &serde_json::json!({"name": n, "role": role.as_str(), "schools": sc.to_column()})
                            .to_string(),
                        "cli",
                    )
                })
                .await?;
            store.close();
            outln!(
                "Created a {} token named \"{name}\" for {scope}. It is shown only this once; store it now:",
                role.as_str()
            );
            outln!("{token}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn cap_inspect(
    config: &Option<PathBuf>,
    file: &Path,
    at: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let now = match at {
        Some(t) => t.parse::<jiff::Timestamp>().with_context(|| {
            format!("--at `{t}` is not a time; write it like 2021-12-27T12:00:00-06:00")
        })?,
        None => jiff::Timestamp::now(),
    };
    let config = load_config(config)?;
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let doc = crate::cap::parse_document(&bytes)
        .with_context(|| format!("{} cannot be understood", file.display()))?;
    let conn = crate::store::cap::open_read_only(&config.store_dir());
    let report = crate::cap::inspect::inspect(&doc, &config, conn.as_ref(), now);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        crate::cap::inspect::print(&report, &config.server.timezone);
    }
    Ok(ExitCode::SUCCESS)
}

/// Records a `klaxon sis import` in the sync log, like a pull; a store that
/// cannot be opened only costs the record (the import itself stands).
async fn record_cli_import(
    config: &Config,
    path: &std::path::Path,
    started: i64,
    report: &Result<crate::sis::ImportReport, crate::sis::ImportError>,
) {
    let shown = match report {
        Ok(r) => Ok(r.clone()),
        Err(e) => Err(e.to_string()),
    };
    let outcome = match report {
        Err(crate::sis::ImportError::Io { .. } | crate::sis::ImportError::Sqlite { .. }) => {
            "failed"
        }
        _ => "refused",
    };
    let rec = crate::sis::sync::record_of(
        "cli",
        "bulk",
        &path.display().to_string(),
        started,
        &shown,
        outcome,
    );
    let Ok(store) = Store::open(&config.store_dir(), true) else {
        return;
    };
    let metrics = crate::metrics::Metrics::default();
    if let Err(e) = crate::sis::sync::record(&store, &metrics, rec).await {
        eprintln!("warning: the import is done but could not be recorded in the sync log: {e}");
    }
    store.close();
}

/// For `audience --json`: each recipient with when the SIS last changed
/// their record, so an operator can see whether a number is fresh.
fn last_changed(
    conn: &rusqlite::Connection,
    audience: &crate::audience::Audience,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let modified = crate::sis::last_modified(conn)?;
    Ok(audience
        .recipients
        .iter()
        .map(|r| {
            serde_json::json!({
                "person_id": r.person_id,
                "role": r.role,
                "last_modified": modified.get(&r.person_id).cloned().flatten(),
            })
        })
        .collect())
}

/// Reads the `[sis.source]` secret as the pull will, so a missing one is
/// found by `check-config` (the systemd `ExecStartPre`).
fn sis_secret_issues(config: &Config) -> Vec<crate::config::ConfigIssue> {
    let Some(src) = &config.sis.source else {
        return Vec::new();
    };
    let mut issues = crate::config::Issues::default();
    let _ = src.secret(&config.base_dir, &mut issues);
    issues.list
}

fn check_config(path: &Option<PathBuf>, json: bool) -> anyhow::Result<ExitCode> {
    let path = path.clone().unwrap_or_else(Config::default_path);
    let mut warnings = Vec::new();
    let mut issues = match Config::load(&path) {
        Ok(config) => {
            warnings = config.warnings.clone();
            let mut issues = match crate::app::build_providers(&config) {
                Ok(_) => Vec::new(),
                Err(issues) => issues,
            };
            issues.extend(crate::http::hook_trigger::check_secrets(&config));
            issues.extend(crate::http::oidc::check_secret(&config));
            issues.extend(sis_secret_issues(&config));
            issues
        }
        Err(ConfigError::Invalid { issues, .. }) => issues,
        Err(e) => bail!(e),
    };
    issues.sort_by_key(|i| i.line.unwrap_or(usize::MAX));
    if json {
        let list: Vec<_> = issues
            .iter()
            .map(|i| serde_json::json!({"key": i.key, "line": i.line, "message": i.message}))
            .collect();
        let warn: Vec<_> = warnings
            .iter()
            .map(|i| serde_json::json!({"key": i.key, "line": i.line, "message": i.message}))
            .collect();
        outln!(
            "{}",
            serde_json::json!({"file": path, "ok": issues.is_empty(), "problems": list, "warnings": warn})
        );
    } else if issues.is_empty() {
        outln!("{}: the configuration is valid.", path.display());
        for w in &warnings {
            outln!("  warning: {w}");
        }
    } else {
        outln!("{}: {} problem(s):", path.display(), issues.len());
        for i in &issues {
            outln!("  - {i}");
        }
    }
    Ok(if issues.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

async fn sis(config: &Option<PathBuf>, cmd: SisCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SisCommand::Import { path, force, json } => {
            let config = load_config(config)?;
            let store_dir = config.store_dir();
            std::fs::create_dir_all(&store_dir)
                .with_context(|| format!("creating {}", store_dir.display()))?;
            let sis_cfg = config.sis.clone();
            eprintln!("Importing {} …", path.display());
            let (src, dir) = (path.clone(), store_dir.clone());
            let started = crate::store::now_ms();
            let report = tokio::task::spawn_blocking(move || {
                crate::sis::import(&src, &dir, &sis_cfg, &crate::sis::ImportOptions { force })
            })
            .await?;
            record_cli_import(&config, &path, started, &report).await;
            match report {
                Ok(r) => {
                    if json {
                        outln!("{}", serde_json::to_string_pretty(&r)?);
                    } else {
                        out!("{r}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    if json {
                        outln!(
                            "{}",
                            serde_json::json!({"ok": false, "error": e.to_string()})
                        );
                    }
                    eprintln!(
                        "error: the export was rejected; the previous SIS copy stays in use.\n{e}"
                    );
                    Ok(ExitCode::from(2))
                }
            }
        }
        SisCommand::Status { last, json } => {
            let config = load_config(config)?;
            let store_dir = config.store_dir();
            let store = Store::open(&store_dir, true)?;
            let syncs = store
                .read(move |c| crate::store::sis_syncs::recent(c, last))
                .await?;
            let problems: Vec<String> = crate::sis::sync::problems(
                &store,
                &store_dir,
                config.sis.max_age,
                jiff::Timestamp::now(),
            )
            .await
            .into_iter()
            .map(|(_, s)| s)
            .collect();
            store.close();
            let meta = crate::sis::open_current(&store_dir)
                .ok()
                .and_then(|c| crate::sis::read_meta(&c).ok());
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "copy": meta,
                        "degraded": !problems.is_empty(),
                        "problems": problems,
                        "syncs": syncs,
                    }))?
                );
            } else {
                output::sis_status(meta.as_ref(), &problems, &syncs, &config.server.timezone);
            }
            Ok(ExitCode::SUCCESS)
        }
        SisCommand::Generate {
            students,
            seed,
            out,
        } => {
            if students == 0 {
                bail!("--students must be at least 1");
            }
            let opts = crate::sis::GenerateOptions {
                students,
                seed,
                ..Default::default()
            };
            let summary =
                tokio::task::spawn_blocking(move || crate::sis::generate(&out, &opts)).await??;
            outln!(
                "Wrote a synthetic OneRoster 1.1 export to {}: {} schools, {} students, {} guardians in {} households, {} staff, {} classes, {} enrollments.",
                summary.out.display(),
                summary.schools,
                summary.students,
                summary.guardians,
                summary.households,
                summary.staff,
                summary.classes,
                summary.enrollments
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `--message` and `--message-in LANG=TEXT` as the API's `message`: one
/// text, or a map per language (`--message` is the English one).
fn message_text(
    message: Option<String>,
    message_in: &[String],
) -> anyhow::Result<Option<crate::domain::text::MessageText>> {
    use crate::domain::text::MessageText;
    if message_in.is_empty() {
        return Ok(message.map(MessageText::One));
    }
    let mut map = std::collections::BTreeMap::new();
    if let Some(m) = message {
        map.insert("en".to_string(), m);
    }
    for pair in message_in {
        let Some((lang, text)) = pair.split_once('=') else {
            anyhow::bail!(
                "--message-in `{pair}`: write it as LANG=TEXT, e.g. es=\"Rotura de tubería\""
            );
        };
        map.insert(lang.trim().to_string(), text.to_string());
    }
    Ok(Some(MessageText::PerLanguage(map)))
}
