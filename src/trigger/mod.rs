//! The alert lifecycle, owned here: create, approve, cancel, update,
//! all-clear (and `track` closes alerts whose window is over). Every way an
//! alert starts (API, CLI, demo, feeds) ends in `create`.
//!
//! `create` freezes the audience first: the alert row is committed with a
//! hard link to the current SIS file (a later import replaces `sis.db` by
//! rename, so the link keeps this version). The first school's recipients are
//! resolved and committed with it, and the engine starts sending at once; the
//! rest of the audience follows in committed chunks, and the alert is marked
//! materialized. The chunks are written by a task of their own, so a client
//! that hangs up does not abandon the alert; if the daemon dies in between,
//! `resume` completes it from the frozen snapshot at start-up, idempotently:
//! nobody is missed, nobody is added twice.
//!
//! Follow-ups (updates, the all-clear) are alerts of their own that reuse the
//! original's recipients: they reach exactly its people, their links open
//! the original's page, and they wait for the original to be fully written.

pub mod cap_act;
pub mod check;
pub mod feed;
pub mod pager;
pub mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::audience::{AudienceSpec, Recipient};
use crate::config::Config;
use crate::domain::text::MessageText;
use crate::domain::{AlertId, AlertState, Channel, CloseReason};
use crate::playbook::{Approval, PlaybookConfig, Severity};
use crate::services::Services;
use crate::store::StoreError;
use crate::store::alerts::{self, AlertKind, AlertRow, Fanout, NewAlert, Released};

/// Recipients per committed chunk after the first wave: small enough that a
/// chunk's names and addresses are a few hundred kilobytes.
const CHUNK: usize = 1_000;

/// Chunks of recipients on their way to the store; an error ends the stream.
type Chunks = tokio::sync::mpsc::Receiver<Result<Vec<Recipient>, String>>;

/// What the API (and `klaxon trigger`) sends.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerRequest {
    pub playbook: String,
    #[serde(default)]
    pub audience: AudienceSpec,
    /// One text, or one per language: `{"en": "…", "es": "…"}`.
    #[serde(default)]
    pub message: Option<MessageText>,
    #[serde(default)]
    pub drill: bool,
    /// Create the alert but send nothing until `approve`.
    #[serde(default)]
    pub hold: bool,
    /// Send at once although the playbook (or a district-wide audience)
    /// needs a second operator's approval: why. Recorded, audited and put
    /// on the review list.
    #[serde(default)]
    pub override_reason: Option<String>,
    /// Create it even when the audience reaches nobody.
    #[serde(default)]
    pub allow_empty: bool,
    /// Create it even when an alert of the same playbook is open for the
    /// same schools.
    #[serde(default)]
    pub confirm_duplicate: bool,
}

/// The answer: `201 {id, recipients, deadline}` plus what an operator needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TriggerResponse {
    pub id: i64,
    /// alert, update or all-clear.
    pub kind: String,
    pub state: String,
    pub recipients: i64,
    pub unreachable: i64,
    pub deliveries: i64,
    /// Notify deadline, RFC 3339; null while held.
    pub deadline: Option<String>,
    pub drill: bool,
    pub held: bool,
    /// Estimated time to hand everything to the providers, in seconds.
    pub estimate_seconds: f64,
    /// Set when the configured rates cannot meet the deadline, or when
    /// something the operator should know happened (text cleaned, …).
    pub warning: Option<String>,
    /// The alert a follow-up belongs to.
    pub parent_id: Option<i64>,
    /// Held until a second operator approves it (two-person rule).
    #[serde(default)]
    pub needs_second_approval: bool,
    /// Sent without the second approval it needed, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_reason: Option<String>,
    /// Languages of the audience that get the operator's text in another
    /// language (it was not written in theirs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub untranslated: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("unknown playbook `{0}`; configured playbooks: {1}")]
    UnknownPlaybook(String, String),
    #[error("{0}")]
    BadRequest(String),
    /// The request is fine but the alert is not in a state that allows it.
    #[error("{0}")]
    Conflict(String),
    #[error("cannot resolve the audience: {0}")]
    Audience(String),
    /// The caller may not do this (the two-person rule).
    #[error("{0}")]
    Forbidden(String),
    /// An alert like this one is already open; the caller must confirm.
    #[error("{0}")]
    Duplicate(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn playbook(sv: &Services, name: &str) -> Result<PlaybookConfig, TriggerError> {
    sv.config.playbooks.get(name).cloned().ok_or_else(|| {
        TriggerError::UnknownPlaybook(
            name.to_string(),
            sv.config
                .playbooks
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
        )
    })
}

/// The alert row's `message` (the default language's text) and `messages`
/// (JSON, when written per language).
fn stored_message(text: Option<&MessageText>) -> (Option<String>, Option<String>) {
    match text {
        None => (None, None),
        Some(t @ MessageText::One(_)) => (Some(t.primary().to_string()), None),
        Some(t @ MessageText::PerLanguage(m)) => {
            (Some(t.primary().to_string()), serde_json::to_string(m).ok())
        }
    }
}

/// Streams the audience of `spec` from a SIS file in chunks: the plan (who)
/// is computed once (or given, when the pre-flight made it), the details
/// (names, addresses, children) per chunk, so a district-wide alert never
/// holds every recipient in memory at once.
fn stream_plan(
    sv: &Services,
    sis: PathBuf,
    spec: AudienceSpec,
    plan: Option<crate::audience::Plan>,
) -> Chunks {
    let groups = sv.config.groups.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        let run = || -> Result<(), String> {
            let conn = crate::sis::open_at(&sis).map_err(|e| e.to_string())?;
            let read = conn.unchecked_transaction().map_err(|e| e.to_string())?;
            let plan = match plan {
                Some(p) => p,
                None => crate::audience::plan(&conn, &spec, &groups).map_err(|e| e.to_string())?,
            };
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
        crate::clock::Clock::system().now_ms(),
        crate::domain::text::hex(&rnd)
    );
    let snap = dir.join(name);
    if std::fs::hard_link(&current, &snap).is_err() {
        std::fs::copy(&current, &snap)
            .map_err(|e| TriggerError::Audience(format!("freezing the SIS copy: {e}")))?;
    }
    Ok(snap)
}

/// What the alert says about where it is, and the first wave: the first
/// school the alert concerns (the first listed, or the district's first), so
/// sending starts before the whole district is resolved. No first wave when
/// the spec names only groups.
fn place_and_first_wave(
    sis: &Path,
    spec: &AudienceSpec,
) -> Result<(String, Option<AudienceSpec>), TriggerError> {
    let conn = crate::sis::open_at(sis).map_err(|e| TriggerError::Audience(e.to_string()))?;
    let place = if spec.schools.is_empty() {
        "all district schools".to_string()
    } else {
        let names = crate::sis::school_names(&conn, &spec.schools)
            .map_err(|e| TriggerError::Audience(e.to_string()))?;
        if names.is_empty() {
            spec.schools.join(", ")
        } else {
            let mut n = names;
            n.sort();
            n.dedup();
            n.join(", ")
        }
    };
    let only_groups = !spec.groups.is_empty()
        && spec.schools.is_empty()
        && spec.grades.is_empty()
        && spec.classes.is_empty();
    if only_groups {
        return Ok((place, None));
    }
    let school = match spec.schools.first() {
        Some(s) => Some(s.clone()),
        None => {
            crate::sis::first_school(&conn).map_err(|e| TriggerError::Audience(e.to_string()))?
        }
    };
    Ok((
        place,
        school.map(|s| AudienceSpec {
            schools: vec![s],
            groups: Vec::new(),
            ..spec.clone()
        }),
    ))
}

fn fanout(sv: &Services, pb: &PlaybookConfig, priority: i64) -> Fanout {
    Fanout {
        channels: pb.channels.clone(),
        available: sv.engine.channels(),
        priority,
        routine: pb.severity == Severity::Routine,
    }
}

fn windows(pb: &PlaybookConfig) -> (i64, i64, i64) {
    (
        pb.notify_within.0.as_millis() as i64,
        pb.ack_within.0.as_millis() as i64,
        if pb.escalate.is_some() {
            pb.escalate_within.0.as_millis() as i64
        } else {
            0
        },
    )
}

/// Creates an alert for `req`, on behalf of `actor`, from `source`.
/// Answers once every recipient is committed. The work runs in a task of its
/// own: once a trigger is received, a caller that goes away (a client
/// time-out, a dropped connection) does not stop the alert.
pub async fn create(
    sv: &Arc<Services>,
    req: TriggerRequest,
    actor: &str,
    source: &str,
) -> Result<TriggerResponse, TriggerError> {
    let (sv, actor, source) = (sv.clone(), actor.to_string(), source.to_string());
    tokio::spawn(crate::store::audit::carry_origin(async move {
        create_now(&sv, req, &actor, &source).await
    }))
    .await
    .map_err(|e| TriggerError::Audience(format!("creating the alert failed: {e}")))?
}

async fn create_now(
    sv: &Arc<Services>,
    req: TriggerRequest,
    actor: &str,
    source: &str,
) -> Result<TriggerResponse, TriggerError> {
    let pb = playbook(sv, &req.playbook)?;
    let cleaned = check::message(&req.playbook, &pb, req.message.clone())?;
    let mut notes: Vec<String> = cleaned.note.into_iter().collect();
    // A copy older than `[sis] max_age` still serves, and the operator hears so.
    notes.extend(crate::sis::sync::staleness(
        &sv.config.store_dir(),
        sv.config.sis.max_age,
        jiff::Timestamp::from_millisecond(sv.now_ms()).unwrap_or_else(|_| jiff::Timestamp::now()),
    ));
    let mut spec = req.audience.clone();
    if spec.roles.is_empty() {
        spec.roles = pb.roles.clone();
    }
    for g in &spec.groups {
        if !sv.config.groups.iter().any(|c| &c.name == g) {
            let known: Vec<String> = sv.config.groups.iter().map(|c| c.name.clone()).collect();
            return Err(TriggerError::BadRequest(format!(
                "group `{g}` is not in [[groups]]; groups are {}",
                if known.is_empty() {
                    "none (configure [[groups]])".to_string()
                } else {
                    crate::audience::closest(g, known).join(", ")
                }
            )));
        }
    }
    if !req.confirm_duplicate {
        refuse_duplicate(sv, &req.playbook, req.drill, &spec).await?;
    }
    let two_person = needs_two_person(&sv.config, &pb, &spec);
    let override_reason = match &req.override_reason {
        Some(r) if two_person => Some(reason(r)?),
        Some(_) => {
            return Err(TriggerError::BadRequest(
                "override_reason is only for alerts that need a second approval; this one does not"
                    .into(),
            ));
        }
        None => None,
    };
    let held = req.hold || (two_person && override_reason.is_none());
    // Trigger → first wave committed, in phases (debug log): the pre-flight
    // over the whole audience is most of a district's first-request time.
    let t0 = std::time::Instant::now();
    let ms = |t: std::time::Instant| t.duration_since(t0).as_secs_f64() * 1e3;
    let snapshot = freeze(&sv.config.store_dir())?;
    let first = async {
        // Pre-flight on the frozen copy: every name is checked, the whole
        // audience counted, before anything is stored or sent.
        let (snap, s2) = (snapshot.clone(), spec.clone());
        let (place, first_wave) =
            tokio::task::spawn_blocking(move || place_and_first_wave(&snap, &s2))
                .await
                .map_err(|e| TriggerError::Audience(e.to_string()))??;
        // The first school is read beside the pre-flight, on the other
        // core: after it, it was 12–50 ms more before the first request.
        // Its result counts only once the pre-flight has passed.
        let first_read = first_wave.map(|fs| {
            let snap = snapshot.clone();
            let groups = sv.config.groups.clone();
            tokio::task::spawn_blocking(move || {
                let conn = crate::sis::open_at(&snap).map_err(|e| e.to_string())?;
                crate::audience::resolve(&conn, &fs, &groups)
                    .map(|a| a.recipients)
                    .map_err(|e| e.to_string())
            })
        });
        let (snap, s2, groups) = (snapshot.clone(), spec.clone(), sv.config.groups.clone());
        let (wanted, available) = (pb.channels.clone(), sv.engine.channels());
        let pre = tokio::task::spawn_blocking(move || {
            preflight(&snap, &s2, &groups, &wanted, &available)
        })
        .await
        .map_err(|e| TriggerError::Audience(e.to_string()))??;
        let preflight_done = std::time::Instant::now();
        if pre.summary.recipients == 0 && !req.allow_empty {
            return Err(TriggerError::BadRequest(format!(
                "the audience ({}) reaches nobody in the SIS copy; check the schools, grades, classes and roles, or send \"allow_empty\": true to create it anyway",
                describe_spec(&spec)
            )));
        }
        let untranslated = check::untranslated(cleaned.text.as_ref(), &pre.summary.languages);
        if !untranslated.is_empty() {
            notes.push(format!(
                "the message is not written in {}; they get it as written",
                untranslated
                    .iter()
                    .map(|(l, n)| format!("{l} ({n} recipient{})", if *n == 1 { "" } else { "s" }))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let capacity = check::capacity(&sv.engine.capacity(), &pre.summary.deliveries);
        if let Some(advice) = capacity.advice(pb.notify_within.0.as_secs_f64()) {
            tracing::warn!(playbook = %req.playbook, warning = %advice, "The deadline cannot be met at the configured rates.");
            notes.insert(0, advice);
        }
        let first = match first_read {
            Some(read) => read
                .await
                .map_err(|e| TriggerError::Audience(e.to_string()))?
                .map_err(TriggerError::Audience)?,
            None => Vec::new(),
        };
        let first_wave_read = std::time::Instant::now();
        let (notify_ms, ack_ms, escalate_ms) = windows(&pb);
        let (message, messages) = stored_message(cleaned.text.as_ref());
        let new = NewAlert {
            kind: AlertKind::Alert,
            playbook: req.playbook.clone(),
            title: pb.title.clone(),
            place,
            priority: pb.severity.priority(),
            audience_json: serde_json::to_string(&spec).unwrap_or_else(|_| "{}".into()),
            message,
            messages,
            drill: req.drill,
            held,
            two_person,
            override_reason: override_reason.clone(),
            confirm: pb.confirm,
            source: source.to_string(),
            created_by: actor.to_string(),
            notify_within_ms: notify_ms,
            ack_within_ms: ack_ms,
            escalate_within_ms: escalate_ms,
            parent_id: None,
            warning: (!notes.is_empty()).then(|| notes.join("; ")),
            snapshot: Some(snapshot.display().to_string()),
            estimate_ms: Some((capacity.seconds * 1000.0).round().min(i64::MAX as f64) as i64),
        };
        let id = start(sv, &pb, new, first).await?;
        tracing::debug!(
            alert = id.0,
            preflight_ms = ms(preflight_done),
            first_wave_read_ms = ms(first_wave_read),
            first_wave_committed_ms = ms(std::time::Instant::now()),
            "Trigger phases."
        );
        Ok((id, pre.plan, capacity, untranslated))
    }
    .await;
    let (id, plan, capacity, untranslated) = match first {
        Ok(v) => v,
        Err(e) => {
            // Nothing was committed: the snapshot is not needed.
            let _ = std::fs::remove_file(&snapshot);
            return Err(e);
        }
    };
    count_created(sv, &req.playbook, AlertKind::Alert, req.drill);
    let rest = stream_plan(sv, snapshot.clone(), spec, Some(plan));
    let out = complete(sv, id, &pb, rest, Some(capacity.seconds)).await;
    // The snapshot goes only once the audience is fully written; otherwise
    // `resume` needs it after a restart.
    if out.is_ok() {
        let _ = std::fs::remove_file(&snapshot);
    }
    let mut resp = out?;
    resp.untranslated = untranslated.into_iter().map(|(l, _)| l).collect();
    Ok(resp)
}

/// An override's reason: typed, cleaned, not empty.
fn reason(r: &str) -> Result<String, TriggerError> {
    let (text, _) = crate::domain::text::clean(r);
    if text.chars().count() < 5 {
        return Err(TriggerError::BadRequest(
            "an override needs a reason of a few words: why can this not wait for a second approval?".into(),
        ));
    }
    Ok(text.chars().take(500).collect())
}

/// What the pre-flight learns from the frozen SIS copy.
struct Preflight {
    plan: crate::audience::Plan,
    summary: crate::audience::PlanSummary,
}

fn preflight(
    sis: &Path,
    spec: &AudienceSpec,
    groups: &[crate::audience::GroupConfig],
    wanted: &[Channel],
    available: &[Channel],
) -> Result<Preflight, TriggerError> {
    let conn = crate::sis::open_at(sis).map_err(|e| TriggerError::Audience(e.to_string()))?;
    let read = conn
        .unchecked_transaction()
        .map_err(|e| TriggerError::Audience(e.to_string()))?;
    let audience = |e: crate::audience::AudienceError| {
        if e.is_unknown_name() {
            TriggerError::BadRequest(e.to_string())
        } else {
            TriggerError::Audience(e.to_string())
        }
    };
    let plan = crate::audience::plan(&conn, spec, groups).map_err(audience)?;
    let summary = plan.summary(&conn, wanted, available).map_err(audience)?;
    drop(read);
    Ok(Preflight { plan, summary })
}

/// The spec as an operator wrote it, for messages.
fn describe_spec(spec: &AudienceSpec) -> String {
    let mut parts = Vec::new();
    let mut add = |what: &str, v: &[String]| {
        if !v.is_empty() {
            parts.push(format!("{what} {}", v.join(", ")));
        }
    };
    add("schools", &spec.schools);
    add("grades", &spec.grades);
    add("classes", &spec.classes);
    add("groups", &spec.groups);
    let roles: Vec<String> = spec.roles.iter().map(|r| r.as_str().to_string()).collect();
    add("roles", &roles);
    if parts.is_empty() {
        "the whole district".into()
    } else {
        parts.join("; ")
    }
}

/// Refuses a second open alert of the same playbook for an overlapping set
/// of schools (a district-wide one overlaps every school), unless the
/// caller confirms it is meant.
async fn refuse_duplicate(
    sv: &Services,
    playbook: &str,
    drill: bool,
    spec: &AudienceSpec,
) -> Result<(), TriggerError> {
    let pb = playbook.to_string();
    let open = sv
        .store
        .read(move |c| alerts::open_of_playbook(c, &pb, drill))
        .await?;
    let overlaps = |a: &AlertRow| {
        let theirs: Vec<String> = a
            .audience
            .get("schools")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        theirs.is_empty()
            || spec.schools.is_empty()
            || theirs.iter().any(|s| spec.schools.contains(s))
    };
    if let Some(a) = open.iter().find(|a| overlaps(a)) {
        return Err(TriggerError::Duplicate(format!(
            "alert {} ({}, {}) is already open for {}; send \"confirm_duplicate\": true to send another, or use `klaxon update {}` to add to it",
            a.id,
            playbook,
            a.state.as_str(),
            a.place,
            a.id
        )));
    }
    Ok(())
}

/// Commits the alert row with its first wave and wakes the engine.
async fn start(
    sv: &Services,
    pb: &PlaybookConfig,
    new: NewAlert,
    first: Vec<Recipient>,
) -> Result<AlertId, TriggerError> {
    let f = fanout(sv, pb, new.priority);
    let now = sv.now_ms();
    let key = sv.ack_key.clone();
    let (id, added) = sv
        .store
        .write(move |c| {
            let id = alerts::insert(c, now, &new)?;
            let added = alerts::add_recipients(c, id, now, &f, &key, &first)?;
            Ok((id, added))
        })
        .await?;
    sv.engine.kick();
    sv.tracker.notify_one();
    tracing::info!(
        alert = id.0,
        first_wave = added.0,
        "Alert created; first wave committed."
    );
    Ok(id)
}

/// Writes the rest of the audience as its chunks arrive, then finishes the
/// alert with its counts and capacity estimate.
async fn complete(
    sv: &Services,
    id: AlertId,
    pb: &PlaybookConfig,
    mut chunks: Chunks,
    estimate_s: Option<f64>,
) -> Result<TriggerResponse, TriggerError> {
    let available = sv.engine.channels();
    let f = fanout(sv, pb, pb.severity.priority());
    let mut counts: HashMap<Channel, i64> = HashMap::new();
    let mut in_flight: std::collections::VecDeque<ChunkWrite> = Default::default();
    while let Some(chunk) = chunks.recv().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                // What was written is being sent; say that the rest is missing.
                while let Some(w) = in_flight.pop_front() {
                    written(sv, Some(w)).await?;
                }
                let msg = format!("the audience could not be fully resolved: {e}");
                finish(sv, id, None, Some(msg.clone())).await?;
                return Err(TriggerError::Audience(msg));
            }
        };
        for r in &chunk {
            for (ch, _) in alerts::channels_for(&pb.channels, &available, &r.addresses) {
                *counts.entry(*ch).or_default() += 1;
            }
        }
        let (f, key, now, store) = (f.clone(), sv.ack_key.clone(), sv.now_ms(), sv.store.clone());
        in_flight.push_back(tokio::spawn(async move {
            store
                .write_bulk(move |c| alerts::add_recipients(c, id, now, &f, &key, &chunk))
                .await
        }));
        if in_flight.len() >= WRITES_IN_FLIGHT {
            written(sv, in_flight.pop_front()).await?;
        }
    }
    while let Some(w) = in_flight.pop_front() {
        written(sv, Some(w)).await?;
    }
    finish_with_estimate(sv, id, pb, &counts, estimate_s).await
}

/// Chunk writes queued at the store at once. One at a time, each chunk
/// waited for its own commit (a round trip behind the lanes' claims and
/// outcomes) before the next was sent, and writing a district's audience
/// took 20 s; queued together, the writer always has the next one. They
/// are bulk writes: the writer runs one between its batches of claims,
/// outcomes and acknowledgements, which wait for one chunk at most. Each is
/// idempotent and checks for a cancel, so their order does not matter.
const WRITES_IN_FLIGHT: usize = 4;

type ChunkWrite = tokio::task::JoinHandle<Result<(i64, i64), StoreError>>;

/// Waits for one queued chunk write; its deliveries are now claimable.
async fn written(sv: &Services, w: Option<ChunkWrite>) -> Result<(), TriggerError> {
    let Some(w) = w else { return Ok(()) };
    w.await
        .map_err(|e| StoreError::Unavailable(format!("a chunk write stopped: {e}")))??;
    sv.engine.kick();
    Ok(())
}

/// Marks the alert materialized with its capacity estimate: the pre-flight's
/// when there was one (the create path), else computed from `counts` (an
/// alert resumed after a restart).
async fn finish_with_estimate(
    sv: &Services,
    id: AlertId,
    pb: &PlaybookConfig,
    counts: &HashMap<Channel, i64>,
    estimate_s: Option<f64>,
) -> Result<TriggerResponse, TriggerError> {
    let (seconds, warning) = match estimate_s {
        Some(s) => (s, None),
        None => {
            let deliveries = counts
                .iter()
                .map(|(c, n)| (*c, (*n).max(0) as usize))
                .collect();
            let c = check::capacity(&sv.engine.capacity(), &deliveries);
            let advice = c.advice(pb.notify_within.0.as_secs_f64());
            if let Some(w) = &advice {
                tracing::warn!(alert = id.0, warning = %w, "The deadline cannot be met at the configured rates.");
            }
            (c.seconds, advice)
        }
    };
    let estimate_ms = (seconds * 1000.0).round().min(i64::MAX as f64) as i64;
    finish(sv, id, Some(estimate_ms), warning).await?;
    let alert = sv.store.read(move |c| alerts::get(c, id)).await?;
    tracing::info!(
        alert = id.0,
        playbook = %alert.playbook,
        recipients = alert.recipients,
        drill = alert.drill,
        "Alert materialized."
    );
    response(sv, &alert).await
}

async fn finish(
    sv: &Services,
    id: AlertId,
    estimate_ms: Option<i64>,
    warning: Option<String>,
) -> Result<(), TriggerError> {
    let now = sv.now_ms();
    sv.store
        .write(move |c| alerts::finish(c, id, now, estimate_ms, warning.as_deref()).map(|_| ()))
        .await?;
    sv.tracker.notify_one();
    Ok(())
}

/// The 201 answer for a stored alert (also what a repeated request gets).
async fn response(sv: &Services, a: &AlertRow) -> Result<TriggerResponse, TriggerError> {
    let id = AlertId(a.id);
    let deliveries = sv
        .store
        .read(move |c| alerts::delivery_count(c, id))
        .await?;
    Ok(TriggerResponse {
        id: a.id,
        kind: a.kind.as_str().into(),
        state: a.state.as_str().into(),
        recipients: a.recipients,
        unreachable: a.unreachable,
        deliveries,
        deadline: a.notify_deadline.map(rfc3339),
        drill: a.drill,
        held: a.state == AlertState::Held,
        estimate_seconds: a.estimate_ms.unwrap_or(0) as f64 / 1000.0,
        warning: a.warning.clone(),
        parent_id: a.parent_id,
        needs_second_approval: a.two_person && a.state == AlertState::Held,
        override_reason: a.override_reason.clone(),
        untranslated: Vec::new(),
    })
}

fn count_created(sv: &Services, playbook: &str, kind: AlertKind, drill: bool) {
    sv.metrics.inc(
        "klaxon_alerts_created_total",
        &[
            ("playbook", playbook),
            ("kind", kind.as_str()),
            ("drill", if drill { "true" } else { "false" }),
        ],
    );
}

/// Releases a held alert. A second approve answers as the first. An alert
/// under the two-person rule is released by another operator than the one
/// who triggered it, or by that one with `override_reason` (an emergency
/// override, recorded and put on the review list).
pub async fn approve(
    sv: &Services,
    id: AlertId,
    actor: &str,
    override_reason: Option<String>,
) -> Result<Released, TriggerError> {
    let alert = sv.store.read(move |c| alerts::get(c, id)).await?;
    let own = same_person(&alert.created_by, actor);
    let override_reason = match override_reason {
        Some(r) => Some(reason(&r)?),
        None => None,
    };
    if alert.two_person && alert.state == AlertState::Held && own && override_reason.is_none() {
        return Err(TriggerError::Forbidden(format!(
            "alert {id} needs a second operator's approval (two-person rule), and `{actor}` triggered it: another operator approves it, or send it now with an override reason"
        )));
    }
    // Only the one who triggered it overrides; anyone else simply approves.
    let override_reason = override_reason.filter(|_| alert.two_person && own);
    let pb = sv.config.playbooks.get(&alert.playbook).ok_or_else(|| {
        TriggerError::Conflict(format!(
            "playbook `{}` is no longer configured",
            alert.playbook
        ))
    })?;
    let w = windows(pb);
    let now = sv.now_ms();
    let actor = actor.to_string();
    let released = sv
        .store
        .write(move |c| alerts::release(c, id, now, &actor, w, override_reason.as_deref()))
        .await
        .map_err(conflict)?;
    sv.engine.kick();
    sv.tracker.notify_one();
    if released == Released::Now {
        tracing::info!(alert = id.0, "Held alert approved and released.");
    }
    Ok(released)
}

/// Whether two actors are one person: the same token acts as `NAME` on the
/// API and `token:NAME` in a console session begun with it.
pub fn same_person(a: &str, b: &str) -> bool {
    a.strip_prefix("token:").unwrap_or(a) == b.strip_prefix("token:").unwrap_or(b)
}

/// Whether an alert of playbook `pb` for `spec` waits for a second
/// operator: the playbook says so, or it reaches the whole district (no
/// school, grade, class or group named) and `[approval] district_wide` says so.
pub fn needs_two_person(config: &Config, pb: &PlaybookConfig, spec: &AudienceSpec) -> bool {
    let district_wide = spec.schools.is_empty()
        && spec.classes.is_empty()
        && spec.groups.is_empty()
        && spec.grades.is_empty();
    pb.approval == Approval::TwoPerson
        || (district_wide && config.approval.district_wide == Approval::TwoPerson)
}

/// A second person's review of an alert sent with an emergency override
/// (the API's and the console's). The one who triggered or released it
/// cannot review it. A second review answers as the first.
pub async fn review(
    sv: &Services,
    id: AlertId,
    actor: &str,
    note: &str,
) -> Result<AlertRow, TriggerError> {
    let a = sv.store.read(move |c| alerts::get(c, id)).await?;
    if same_person(&a.created_by, actor)
        || a.approved_by
            .as_deref()
            .is_some_and(|b| same_person(b, actor))
    {
        return Err(TriggerError::Forbidden(format!(
            "`{actor}` sent alert {id}; its review is for a second person"
        )));
    }
    let (now, actor, note) = (
        sv.now_ms(),
        actor.to_string(),
        crate::domain::text::clean(note).0,
    );
    sv.store
        .write(move |c| alerts::review(c, id, now, &actor, &note))
        .await
        .map_err(conflict)
}

fn conflict(e: StoreError) -> TriggerError {
    match e {
        StoreError::Conflict(m) => TriggerError::Conflict(m),
        other => TriggerError::Store(other),
    }
}

/// Cancels an alert: nothing more of it is sent, including chunks still
/// being written and retries. A second cancel answers as the first.
pub async fn cancel(sv: &Services, id: AlertId, actor: &str) -> Result<i64, TriggerError> {
    let now = sv.now_ms();
    let actor = actor.to_string();
    let unsent = sv
        .store
        .write(move |c| alerts::cancel(c, id, now, &actor))
        .await
        .map_err(conflict)?;
    sv.engine.stop_alert(id.0);
    sv.metrics
        .inc("klaxon_alerts_closed_total", &[("reason", "cancelled")]);
    sv.tracker.notify_one();
    tracing::info!(alert = id.0, unsent, "Alert cancelled.");
    Ok(unsent)
}

/// Sends the all-clear for an alert to exactly its people and closes it.
/// A second all-clear answers with the first.
pub async fn all_clear(
    sv: &Arc<Services>,
    id: AlertId,
    message: Option<MessageText>,
    actor: &str,
) -> Result<TriggerResponse, TriggerError> {
    let original = sv.store.read(move |c| alerts::get(c, id)).await?;
    if let Some(first) = original.all_clear_id {
        let a = sv
            .store
            .read(move |c| alerts::get(c, AlertId(first)))
            .await?;
        return response(sv, &a).await;
    }
    spawn_follow_up(sv, original, AlertKind::AllClear, message, actor).await
}

/// Sends a follow-up ("Parents may now pick up at the north gate") to
/// exactly the people of the original alert.
pub async fn update(
    sv: &Arc<Services>,
    id: AlertId,
    message: MessageText,
    actor: &str,
) -> Result<TriggerResponse, TriggerError> {
    let original = sv.store.read(move |c| alerts::get(c, id)).await?;
    if message.primary().trim().is_empty() {
        return Err(TriggerError::BadRequest(
            "an update needs a message: what has changed?".into(),
        ));
    }
    spawn_follow_up(sv, original, AlertKind::Update, Some(message), actor).await
}

/// Runs the follow-up in its own task, like `create`: a caller that goes
/// away does not leave it half written.
async fn spawn_follow_up(
    sv: &Arc<Services>,
    original: AlertRow,
    kind: AlertKind,
    message: Option<MessageText>,
    actor: &str,
) -> Result<TriggerResponse, TriggerError> {
    let (sv, actor) = (sv.clone(), actor.to_string());
    tokio::spawn(crate::store::audit::carry_origin(async move {
        follow_up(&sv, original, kind, message, &actor).await
    }))
    .await
    .map_err(|e| TriggerError::Audience(format!("sending the follow-up failed: {e}")))?
}

async fn follow_up(
    sv: &Arc<Services>,
    original: AlertRow,
    kind: AlertKind,
    message: Option<MessageText>,
    actor: &str,
) -> Result<TriggerResponse, TriggerError> {
    let id = AlertId(original.id);
    let what = kind.as_str();
    if original.kind != AlertKind::Alert {
        return Err(TriggerError::Conflict(format!(
            "alert {id} is itself a follow-up ({}); send the {what} for alert {}",
            original.kind.as_str(),
            original.parent_id.unwrap_or(original.id)
        )));
    }
    if original.state == AlertState::Held {
        return Err(TriggerError::Conflict(format!(
            "alert {id} is held and was never sent; approve it or cancel it instead of sending an {what}"
        )));
    }
    if original.is_cancelled() {
        return Err(TriggerError::Conflict(format!(
            "alert {id} was cancelled; an {what} would reach people who may never have received it"
        )));
    }
    if kind == AlertKind::Update && original.closed_reason == Some(CloseReason::AllClear) {
        return Err(TriggerError::Conflict(format!(
            "alert {id} has had its all-clear, which is the last update"
        )));
    }
    let name = if kind == AlertKind::AllClear {
        "all-clear"
    } else {
        "update"
    };
    let pb = playbook(sv, name)?;
    let cleaned = check::message(name, &pb, message)?;
    let (message, messages) = stored_message(cleaned.text.as_ref());
    let note = cleaned.note;
    let (notify_ms, ack_ms, escalate_ms) = windows(&pb);
    let new = NewAlert {
        kind,
        playbook: name.into(),
        // An update speaks of the original ("UPDATE: Lockdown at …").
        title: if kind == AlertKind::Update {
            original.title.clone()
        } else {
            pb.title.clone()
        },
        place: original.place.clone(),
        priority: pb.severity.priority().min(original.priority),
        audience_json: original.audience.to_string(),
        message,
        messages,
        two_person: false,
        override_reason: None,
        drill: original.drill,
        held: false,
        confirm: pb.confirm,
        source: format!("{what}:{id}"),
        created_by: actor.to_string(),
        notify_within_ms: notify_ms,
        ack_within_ms: ack_ms,
        escalate_within_ms: escalate_ms,
        parent_id: Some(id),
        warning: note,
        snapshot: None,
        estimate_ms: None,
    };
    let now = sv.now_ms();
    let actor_s = actor.to_string();
    let follow = sv
        .store
        .write(move |c| {
            if kind == AlertKind::AllClear {
                // Two all-clears racing: the second one finds the first here.
                let again: Option<i64> = c
                    .prepare_cached("SELECT all_clear_id FROM alerts WHERE id = ?1")?
                    .query_row([id.0], |r| r.get(0))?;
                if let Some(first) = again {
                    return Ok((AlertId(first), false));
                }
            }
            let fid = alerts::insert(c, now, &new)?;
            if kind == AlertKind::AllClear {
                alerts::set_all_clear(c, id, fid)?;
                alerts::close(c, id, now, CloseReason::AllClear, &actor_s)?;
            }
            Ok((fid, true))
        })
        .await?;
    let (fid, created) = follow;
    if !created {
        let a = sv.store.read(move |c| alerts::get(c, fid)).await?;
        return response(sv, &a).await;
    }
    if kind == AlertKind::AllClear {
        sv.metrics
            .inc("klaxon_alerts_closed_total", &[("reason", "all-clear")]);
    }
    count_created(sv, name, kind, original.drill);
    complete_follow_up(sv, fid, id, &pb).await
}

/// Writes a follow-up's deliveries from the original's recipients, a chunk
/// at a time by recipient id (streaming, never the whole audience in
/// memory). While the original is still being written, it waits for more.
async fn complete_follow_up(
    sv: &Services,
    follow: AlertId,
    original: AlertId,
    pb: &PlaybookConfig,
) -> Result<TriggerResponse, TriggerError> {
    let f = fanout(sv, pb, pb.severity.priority());
    let mut after = 0i64;
    let mut counts: HashMap<Channel, i64> = HashMap::new();
    loop {
        let (f2, now) = (f.clone(), sv.now_ms());
        let (last, added) = sv
            .store
            .write_bulk(move |c| {
                alerts::add_follow_up_chunk(c, follow, original, after, CHUNK as i64, now, &f2)
            })
            .await?;
        if added > 0 {
            sv.engine.kick();
            // Rough per-channel split for the estimate: the playbook's first channel.
            if let Some(ch) = pb.channels.first() {
                *counts.entry(*ch).or_default() += added;
            }
        }
        match last {
            Some(l) => after = l,
            None => {
                let done = sv
                    .store
                    .read(move |c| Ok(alerts::get(c, original)?.materialized))
                    .await?;
                if done {
                    // One more pass: rows written just before materialized turned 1.
                    let (f2, now) = (f.clone(), sv.now_ms());
                    let (_, more) = sv
                        .store
                        .write(move |c| {
                            alerts::add_follow_up_chunk(
                                c,
                                follow,
                                original,
                                after,
                                i64::MAX,
                                now,
                                &f2,
                            )
                        })
                        .await?;
                    if more > 0 {
                        sv.engine.kick();
                    }
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    finish_with_estimate(sv, follow, pb, &counts, None).await
}

/// Completes alerts whose materialization a crash interrupted: the frozen
/// snapshot (or, for a follow-up, the original's recipients) is read again
/// and written idempotently. Runs once at start-up.
pub async fn resume(sv: &Arc<Services>) -> Result<usize, TriggerError> {
    let pending = sv.store.read(alerts::unmaterialized).await?;
    let n = pending.len();
    for (id, snapshot) in pending {
        let alert = sv.store.read(move |c| alerts::get(c, id)).await?;
        let remove_snapshot = || {
            if let Some(s) = &snapshot {
                let _ = std::fs::remove_file(s);
            }
        };
        if alert.state == AlertState::Closed && alert.kind == AlertKind::Alert {
            // Cancelled (or closed) before it was fully written: nothing more is owed.
            finish(sv, id, None, None).await?;
            remove_snapshot();
            continue;
        }
        let Some(pb) = sv.config.playbooks.get(&alert.playbook).cloned() else {
            let msg = format!(
                "playbook `{}` is no longer configured; the audience was not completed",
                alert.playbook
            );
            finish(sv, id, None, Some(msg)).await?;
            continue;
        };
        let created = match (alert.parent_id, snapshot.as_deref()) {
            (Some(parent), _) if alert.kind != AlertKind::Alert => {
                complete_follow_up(sv, id, AlertId(parent), &pb).await?
            }
            (_, Some(snap)) if Path::new(snap).exists() => {
                let spec: AudienceSpec =
                    serde_json::from_value(alert.audience.clone()).unwrap_or_default();
                let chunks = stream_plan(sv, PathBuf::from(snap), spec, None);
                complete(sv, id, &pb, chunks, None).await?
            }
            _ => {
                tracing::error!(
                    alert = id.0,
                    "The audience snapshot of an interrupted alert is gone; keeping the recipients already written."
                );
                finish(sv, id, None, Some("the audience snapshot was lost in a crash; only the recipients written before it were sent to".into())).await?;
                continue;
            }
        };
        tracing::warn!(
            alert = id.0,
            recipients = created.recipients,
            "Completed an alert interrupted by a crash."
        );
        remove_snapshot();
    }
    Ok(n)
}
