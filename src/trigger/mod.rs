//! Triggers: every way an alert starts ends here. `create` resolves the
//! audience from the current SIS copy, estimates whether the deadline can be
//! met, and commits the alert with all its deliveries in one transaction
//! before waking the delivery engine.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::audience::{AudienceSpec, Recipient};
use crate::domain::Channel;
use crate::store::alerts::{self, NewAlert};
use crate::store::{StoreError, now_ms};

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
        && m.len() > 1000
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
    let store_dir = app.config.store_dir();
    let groups = app.config.groups.clone();
    let spec_for_resolve = spec.clone();
    let recipients: Vec<Recipient> = tokio::task::spawn_blocking(move || {
        let conn = crate::sis::open_current(&store_dir).map_err(|e| e.to_string())?;
        crate::audience::resolve(&conn, &spec_for_resolve, &groups)
            .map(|a| a.recipients)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| TriggerError::Audience(e.to_string()))?
    .map_err(TriggerError::Audience)?;
    let place = place_of(&recipients, &spec);
    create_for(app, &req, &pb, recipients, place, spec, actor, source, None).await
}

/// The schools an audience concerns, as a message names them.
fn place_of(recipients: &[Recipient], spec: &AudienceSpec) -> String {
    if spec.schools.is_empty() {
        return "all district schools".into();
    }
    let names: BTreeSet<&str> = recipients
        .iter()
        .flat_map(|r| r.students.iter())
        .filter(|s| spec.schools.contains(&s.school_id))
        .map(|s| s.school_name.as_str())
        .collect();
    if names.is_empty() {
        spec.schools.join(", ")
    } else {
        names.into_iter().collect::<Vec<_>>().join(", ")
    }
}

/// Commits an alert for an already known set of recipients (used by
/// `create` and by all-clear, which goes to exactly the same people).
#[allow(clippy::too_many_arguments)]
pub async fn create_for(
    app: &AppState,
    req: &TriggerRequest,
    pb: &crate::playbook::PlaybookConfig,
    recipients: Vec<Recipient>,
    place: String,
    spec: AudienceSpec,
    actor: &str,
    source: &str,
    parent_id: Option<i64>,
) -> Result<TriggerResponse, TriggerError> {
    // Capacity: what the engine can hand over at the configured rates, against the deadline.
    let available = app.engine.channels();
    let mut counts: HashMap<Channel, i64> = HashMap::new();
    for r in &recipients {
        for (ch, _) in alerts::channels_for(&pb.channels, &available, &r.addresses) {
            *counts.entry(*ch).or_default() += 1;
        }
    }
    let estimate = app.engine.estimate(&counts);
    let warning = (estimate > pb.notify_within.0).then(|| {
        format!(
            "at the configured provider rates handing over takes about {:.0} s, longer than the playbook's {} deadline",
            estimate.as_secs_f64(),
            pb.notify_within
        )
    });
    if let Some(w) = &warning {
        tracing::warn!(playbook = %req.playbook, warning = %w, "The deadline cannot be met at the configured rates.");
    }
    let new = NewAlert {
        playbook: req.playbook.clone(),
        title: pb.title.clone(),
        place,
        priority: pb.severity.priority(),
        audience_json: serde_json::to_string(&spec).unwrap_or_else(|_| "{}".into()),
        message: req.message.clone(),
        drill: req.drill,
        held: req.hold,
        source: source.to_string(),
        created_by: actor.to_string(),
        notify_within_ms: pb.notify_within.0.as_millis() as i64,
        ack_within_ms: pb.ack_within.0.as_millis() as i64,
        channels: pb.channels.clone(),
        available,
        parent_id,
        estimate_ms: Some(estimate.as_millis().min(i64::MAX as u128) as i64),
        warning: warning.clone(),
    };
    let now = now_ms();
    let created = app
        .store
        .write(move |c| alerts::insert(c, now, &new, &recipients))
        .await?;
    app.engine.kick();
    app.tracker.notify_one();
    app.metrics.inc(
        "klaxon_alerts_created_total",
        &[
            ("playbook", &req.playbook),
            ("drill", if req.drill { "true" } else { "false" }),
        ],
    );
    tracing::info!(
        alert = created.id,
        playbook = %req.playbook,
        recipients = created.recipients,
        deliveries = created.deliveries,
        drill = req.drill,
        held = req.hold,
        "Alert created."
    );
    Ok(TriggerResponse {
        id: created.id,
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

/// Sends the all-clear for an alert to the same recipients.
pub async fn all_clear(
    app: &AppState,
    alert_id: i64,
    message: Option<String>,
    actor: &str,
) -> Result<TriggerResponse, TriggerError> {
    let parent = app.store.read(move |c| alerts::get(c, alert_id)).await?;
    let recipients = app
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
    create_for(
        app,
        &req,
        &pb,
        recipients,
        parent.place.clone(),
        spec,
        actor,
        &format!("all-clear:{alert_id}"),
        Some(alert_id),
    )
    .await
}
