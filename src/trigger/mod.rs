//! Triggers: every way an alert starts ends here.
//!
//! `create` freezes the audience first: the alert row is committed with a
//! hard link to the current SIS file (a later import replaces `sis.db` by
//! rename, so the link keeps this version). The first school's recipients are
//! resolved and committed with it, and the engine starts sending at once; the
//! rest of the audience follows in committed chunks, and the alert is marked
//! materialized. If the daemon dies in between, `resume` completes the
//! alert from the frozen snapshot at start-up, idempotently: nobody is
//! missed, nobody gets a second token.

pub mod cap_act;
pub mod feed;
pub mod watch;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::audience::{AudienceSpec, Recipient};
use crate::domain::Channel;
use crate::playbook::PlaybookConfig;
use crate::store::alerts::{self, Fanout, NewAlert};
use crate::store::{StoreError, now_ms};

/// Recipients per committed chunk after the first wave: small enough that a
/// chunk's names and addresses are a few hundred kilobytes.
const CHUNK: usize = 1_000;

/// Chunks of recipients on their way to the store; an error ends the stream.
type Chunks = tokio::sync::mpsc::Receiver<Result<Vec<Recipient>, String>>;

/// Streams the audience of `spec` from a SIS file in chunks: the plan (who)
/// is computed once, the details (names, addresses, children) per chunk, so
/// a district-wide alert never holds every recipient in memory at once.
fn stream_plan(app: &AppState, sis: PathBuf, spec: AudienceSpec) -> Chunks {
    let groups = app.config.groups.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        let run = || -> Result<(), String> {
            let conn = rusqlite::Connection::open_with_flags(
                &sis,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .map_err(|e| format!("cannot open the SIS copy {}: {e}", sis.display()))?;
            let read = conn.unchecked_transaction().map_err(|e| e.to_string())?;
            let plan = crate::audience::plan(&conn, &spec, &groups).map_err(|e| e.to_string())?;
            let mut i = 0;
            while i < plan.len() {
                let chunk = plan
                    .recipients(&conn, i..i + CHUNK)
                    .map_err(|e| e.to_string())?;
                i += CHUNK;
                if tx.blocking_send(Ok(chunk)).is_err() {
                    break;
                }
            }
            drop(read);
            Ok(())
        };
        if let Err(e) = run() {
            let _ = tx.blocking_send(Err(e));
        }
    });
    rx
}

/// Streams recipients already in memory (an all-clear's, a resumed one's).
fn stream_vec(mut recipients: Vec<Recipient>) -> Chunks {
    let (tx, rx) = tokio::sync::mpsc::channel(recipients.len() / CHUNK + 1);
    while !recipients.is_empty() {
        let chunk: Vec<Recipient> = recipients.drain(..recipients.len().min(CHUNK)).collect();
        let _ = tx.try_send(Ok(chunk));
    }
    rx
}

/// What the API (and `klaxon trigger`) sends.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerRequest {
    pub playbook: String,
    #[serde(default)]
    pub audience: AudienceSpec,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub drill: bool,
    /// Create the alert but send nothing until `approve`.
    #[serde(default)]
    pub hold: bool,
}

/// The answer: `201 {id, recipients, deadline}` plus what an operator needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TriggerResponse {
    pub id: i64,
    pub recipients: i64,
    pub unreachable: i64,
    pub deliveries: i64,
    /// Notify deadline, RFC 3339; null while held.
    pub deadline: Option<String>,
    pub drill: bool,
    pub held: bool,
    /// Estimated time to hand everything to the providers, in seconds.
    pub estimate_seconds: f64,
    /// Set when the configured rates cannot meet the deadline.
    pub warning: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("unknown playbook `{0}`; configured playbooks: {1}")]
    UnknownPlaybook(String, String),
    #[error("{0}")]
    BadRequest(String),
    #[error("cannot resolve the audience: {0}")]
    Audience(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Resolves `spec` against a SIS file, off the async threads.
async fn resolve_at(
    app: &AppState,
    sis: PathBuf,
    spec: AudienceSpec,
) -> Result<Vec<Recipient>, TriggerError> {
    let groups = app.config.groups.clone();
    tokio::task::spawn_blocking(move || {
        let conn =
            rusqlite::Connection::open_with_flags(&sis, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(|e| format!("cannot open the SIS copy {}: {e}", sis.display()))?;
        crate::audience::resolve(&conn, &spec, &groups)
            .map(|a| a.recipients)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| TriggerError::Audience(e.to_string()))?
    .map_err(TriggerError::Audience)
}

/// Freezes the current SIS copy for one alert: a hard link, so it costs
/// nothing and survives the next import's rename.
fn freeze(store_dir: &Path) -> Result<PathBuf, TriggerError> {
    let current = crate::sis::current_path(store_dir);
    if !current.exists() {
        return Err(TriggerError::Audience(
            "no SIS copy yet: run `klaxon sis import PATH`".into(),
        ));
    }
    let dir = store_dir.join("snapshots");
    std::fs::create_dir_all(&dir)
        .map_err(|e| TriggerError::Audience(format!("creating {}: {e}", dir.display())))?;
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(|e| TriggerError::Audience(e.to_string()))?;
    let name = format!(
        "alert-{}-{}.db",
        now_ms(),
        rnd.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let snap = dir.join(name);
    if std::fs::hard_link(&current, &snap).is_err() {
        std::fs::copy(&current, &snap)
            .map_err(|e| TriggerError::Audience(format!("freezing the SIS copy: {e}")))?;
    }
    Ok(snap)
}

/// The first wave: the first school the alert concerns (the first listed,
/// or the district's first), so sending starts before the whole district is
/// resolved. None when the spec names only groups.
fn first_wave(sis: &Path, spec: &AudienceSpec) -> Option<AudienceSpec> {
    let only_groups = !spec.groups.is_empty()
        && spec.schools.is_empty()
        && spec.grades.is_empty()
        && spec.classes.is_empty();
    if only_groups {
        return None;
    }
    let school = match spec.schools.first() {
        Some(s) => s.clone(),
        None => {
            let conn = rusqlite::Connection::open_with_flags(
                sis,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .ok()?;
            conn.query_row("SELECT id FROM schools ORDER BY id LIMIT 1", [], |r| {
                r.get(0)
            })
            .ok()?
        }
    };
    Some(AudienceSpec {
        schools: vec![school],
        groups: Vec::new(),
        ..spec.clone()
    })
}

/// The schools an alert concerns, as a message names them.
fn place_of(sis: &Path, spec: &AudienceSpec) -> String {
    if spec.schools.is_empty() {
        return "all district schools".into();
    }
    let names: Option<BTreeSet<String>> = (|| {
        let conn =
            rusqlite::Connection::open_with_flags(sis, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .ok()?;
        let mut st = conn
            .prepare("SELECT name FROM schools WHERE id = ?1")
            .ok()?;
        spec.schools
            .iter()
            .map(|id| st.query_row([id], |r| r.get::<_, String>(0)).ok())
            .collect()
    })();
    match names {
        Some(n) if !n.is_empty() => n.into_iter().collect::<Vec<_>>().join(", "),
        _ => spec.schools.join(", "),
    }
}

/// Creates an alert for `req`, on behalf of `actor`, from `source`.
pub async fn create(
    app: &AppState,
    req: TriggerRequest,
    actor: &str,
    source: &str,
) -> Result<TriggerResponse, TriggerError> {
    let pb = app
        .config
        .playbooks
        .get(&req.playbook)
        .cloned()
        .ok_or_else(|| {
            TriggerError::UnknownPlaybook(
                req.playbook.clone(),
                app.config
                    .playbooks
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })?;
    if let Some(m) = &req.message
        && m.chars().count() > 1000
    {
        return Err(TriggerError::BadRequest(
            "message is longer than 1000 characters".into(),
        ));
    }
    let mut spec = req.audience.clone();
    if spec.roles.is_empty() {
        spec.roles = pb.roles.clone();
    }
    for g in &spec.groups {
        if !app.config.groups.iter().any(|c| &c.name == g) {
            return Err(TriggerError::BadRequest(format!("unknown group `{g}`")));
        }
    }
    let snapshot = freeze(&app.config.store_dir())?;
    let result = async {
        let snap = snapshot.clone();
        let s2 = spec.clone();
        let (place, first_spec) =
            tokio::task::spawn_blocking(move || (place_of(&snap, &s2), first_wave(&snap, &s2)))
                .await
                .map_err(|e| TriggerError::Audience(e.to_string()))?;
        let first = match first_spec {
            Some(fs) => resolve_at(app, snapshot.clone(), fs).await?,
            None => Vec::new(),
        };
        let new = new_alert(
            &req,
            &pb,
            place,
            &spec,
            actor,
            source,
            None,
            Some(snapshot.display().to_string()),
        );
        let id = start(app, &pb, new, first).await?;
        count_created(app, &req);
        let rest = stream_plan(app, snapshot.clone(), spec.clone());
        complete(app, id, &pb, &req, rest).await
    }
    .await;
    let _ = std::fs::remove_file(&snapshot);
    result
}

#[allow(clippy::too_many_arguments)]
fn new_alert(
    req: &TriggerRequest,
    pb: &PlaybookConfig,
    place: String,
    spec: &AudienceSpec,
    actor: &str,
    source: &str,
    parent_id: Option<i64>,
    snapshot: Option<String>,
) -> NewAlert {
    NewAlert {
        playbook: req.playbook.clone(),
        title: pb.title.clone(),
        place,
        priority: pb.severity.priority(),
        audience_json: serde_json::to_string(spec).unwrap_or_else(|_| "{}".into()),
        message: req.message.clone(),
        drill: req.drill,
        held: req.hold,
        source: source.to_string(),
        created_by: actor.to_string(),
        notify_within_ms: pb.notify_within.0.as_millis() as i64,
        ack_within_ms: pb.ack_within.0.as_millis() as i64,
        parent_id,
        estimate_ms: None,
        warning: None,
        snapshot,
    }
}

fn fanout(app: &AppState, pb: &PlaybookConfig, held: bool) -> Fanout {
    Fanout {
        channels: pb.channels.clone(),
        available: app.engine.channels(),
        priority: pb.severity.priority(),
        held,
    }
}

/// Commits the alert row with its first wave and wakes the engine.
async fn start(
    app: &AppState,
    pb: &PlaybookConfig,
    new: NewAlert,
    first: Vec<Recipient>,
) -> Result<i64, TriggerError> {
    let f = fanout(app, pb, new.held);
    let now = now_ms();
    let (id, added) = app
        .store
        .write(move |c| {
            let id = alerts::insert(c, now, &new)?;
            let added = alerts::add_recipients(c, id, now, &f, &first)?;
            Ok((id, added))
        })
        .await?;
    app.engine.kick();
    app.tracker.notify_one();
    tracing::info!(
        alert = id,
        first_wave = added.0,
        "Alert created; first wave committed."
    );
    Ok(id)
}

/// Writes the rest of the audience as its chunks arrive, then finishes the
/// alert with its counts and capacity estimate.
async fn complete(
    app: &AppState,
    id: i64,
    pb: &PlaybookConfig,
    req: &TriggerRequest,
    mut chunks: Chunks,
) -> Result<TriggerResponse, TriggerError> {
    let available = app.engine.channels();
    let f = fanout(app, pb, req.hold);
    let mut counts: HashMap<Channel, i64> = HashMap::new();
    while let Some(chunk) = chunks.recv().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                // What was written is being sent; say that the rest is missing.
                let msg = format!("the audience could not be fully resolved: {e}");
                let _ = finish(app, id, Some(msg.clone())).await;
                return Err(TriggerError::Audience(msg));
            }
        };
        for r in &chunk {
            for (ch, _) in alerts::channels_for(&pb.channels, &available, &r.addresses) {
                *counts.entry(*ch).or_default() += 1;
            }
        }
        let f = f.clone();
        let now = now_ms();
        app.store
            .write(move |c| alerts::add_recipients(c, id, now, &f, &chunk))
            .await?;
        app.engine.kick();
    }
    // Capacity: what the engine can hand over at the configured rates, against the deadline.
    let estimate = app.engine.estimate(&counts);
    let warning = (estimate > pb.notify_within.0).then(|| {
        format!(
            "at the configured provider rates handing over takes about {:.0} s, longer than the playbook's {} deadline",
            estimate.as_secs_f64(),
            pb.notify_within
        )
    });
    if let Some(w) = &warning {
        tracing::warn!(alert = id, warning = %w, "The deadline cannot be met at the configured rates.");
    }
    let estimate_ms = estimate.as_millis().min(i64::MAX as u128) as i64;
    let created = {
        let w = warning.clone();
        let now = now_ms();
        app.store
            .write(move |c| alerts::finish(c, id, now, Some(estimate_ms), w.as_deref()))
            .await?
    };
    tracing::info!(
        alert = id,
        playbook = %req.playbook,
        recipients = created.recipients,
        deliveries = created.deliveries,
        drill = req.drill,
        held = req.hold,
        "Alert materialized."
    );
    Ok(TriggerResponse {
        id,
        recipients: created.recipients,
        unreachable: created.unreachable,
        deliveries: created.deliveries,
        deadline: created.deadline.map(rfc3339),
        drill: req.drill,
        held: req.hold,
        estimate_seconds: estimate.as_secs_f64(),
        warning,
    })
}

/// Closes materialization early with a warning the operator will see.
async fn finish(app: &AppState, id: i64, warning: Option<String>) -> Result<(), TriggerError> {
    let now = now_ms();
    app.store
        .write(move |c| alerts::finish(c, id, now, None, warning.as_deref()).map(|_| ()))
        .await?;
    Ok(())
}

/// Sends the all-clear for an alert to the same recipients.
pub async fn all_clear(
    app: &AppState,
    alert_id: i64,
    message: Option<String>,
    actor: &str,
) -> Result<TriggerResponse, TriggerError> {
    let parent = app.store.read(move |c| alerts::get(c, alert_id)).await?;
    let mut recipients = app
        .store
        .read(move |c| alerts::audience_of(c, alert_id))
        .await?;
    let pb = app
        .config
        .playbooks
        .get("all-clear")
        .cloned()
        .ok_or_else(|| TriggerError::UnknownPlaybook("all-clear".into(), String::new()))?;
    let spec: AudienceSpec = serde_json::from_value(parent.audience.clone()).unwrap_or_default();
    let req = TriggerRequest {
        playbook: "all-clear".into(),
        audience: spec.clone(),
        message,
        drill: parent.drill,
        hold: false,
    };
    let new = new_alert(
        &req,
        &pb,
        parent.place.clone(),
        &spec,
        actor,
        &format!("all-clear:{alert_id}"),
        Some(alert_id),
        None,
    );
    let first: Vec<Recipient> = recipients.drain(..recipients.len().min(CHUNK)).collect();
    let id = start(app, &pb, new, first).await?;
    count_created(app, &req);
    complete(app, id, &pb, &req, stream_vec(recipients)).await
}

fn count_created(app: &AppState, req: &TriggerRequest) {
    app.metrics.inc(
        "klaxon_alerts_created_total",
        &[
            ("playbook", &req.playbook),
            ("drill", if req.drill { "true" } else { "false" }),
        ],
    );
}

/// Completes alerts whose materialization a crash interrupted: the frozen
/// snapshot (or, for an all-clear, the parent's recipients) is resolved
/// again and written idempotently. Runs once at start-up.
pub async fn resume(app: &AppState) -> Result<usize, TriggerError> {
    let pending = app.store.read(alerts::unmaterialized).await?;
    let n = pending.len();
    for (id, snapshot) in pending {
        let alert = app.store.read(move |c| alerts::get(c, id)).await?;
        let Some(pb) = app.config.playbooks.get(&alert.playbook).cloned() else {
            let msg = format!(
                "playbook `{}` is no longer configured; the audience was not completed",
                alert.playbook
            );
            finish(app, id, Some(msg)).await?;
            continue;
        };
        let spec: AudienceSpec = serde_json::from_value(alert.audience.clone()).unwrap_or_default();
        let chunks = match (alert.parent_id, snapshot.as_deref()) {
            (Some(parent), None) => stream_vec(
                app.store
                    .read(move |c| alerts::audience_of(c, parent))
                    .await?,
            ),
            (_, Some(snap)) if Path::new(snap).exists() => {
                stream_plan(app, PathBuf::from(snap), spec.clone())
            }
            _ => {
                tracing::error!(
                    alert = id,
                    "The audience snapshot of an interrupted alert is gone; keeping the recipients already written."
                );
                finish(app, id, Some("the audience snapshot was lost in a crash; only the recipients written before it were sent to".into())).await?;
                continue;
            }
        };
        let req = TriggerRequest {
            playbook: alert.playbook.clone(),
            audience: spec,
            message: alert.message.clone(),
            drill: alert.drill,
            hold: alert.state == "held",
        };
        let created = complete(app, id, &pb, &req, chunks).await?;
        tracing::warn!(
            alert = id,
            recipients = created.recipients,
            "Completed an alert interrupted by a crash."
        );
        if let Some(s) = snapshot {
            let _ = std::fs::remove_file(s);
        }
    }
    Ok(n)
}
