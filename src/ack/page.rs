//! The acknowledgement page's logic: what a token shows, and what a
//! submitted form records. `http::pages` draws the HTML from `PageModel`.

use std::collections::BTreeMap;

use crate::domain::{AlertId, AlertState, RecipientId};
use crate::playbook::Choice;
use crate::services::Services;
use crate::store::StoreError;
use crate::store::alerts::{self, AckOutcome, AlertRow, Answer, RecipientRow};

/// Whether the page takes answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageState {
    /// Answers can be given and changed.
    Open,
    /// Answered, and past the ack deadline: no more changes.
    Locked,
    /// The alert closed: the answer given (if any), no form.
    Closed,
    /// "This alert was cancelled", no form.
    Cancelled,
}

/// Everything the page shows.
#[derive(Debug, Clone)]
pub struct PageModel {
    pub recipient: RecipientRow,
    pub alert: AlertRow,
    /// The alert's own words in the recipient's language, without the link.
    pub text: String,
    /// The latest follow-up's words (an update or the all-clear), if any.
    pub latest_update: Option<(i64, String)>,
    pub choices: Vec<Choice>,
    /// This guardian's recorded choice per student.
    pub pickups: BTreeMap<String, String>,
    pub state: PageState,
}

fn names(r: &RecipientRow) -> String {
    r.students
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Loads the page for a presented token; `None` when the token is not one
/// of ours (a forged or mistyped link).
pub async fn load_page(sv: &Services, token: String) -> Result<Option<PageModel>, StoreError> {
    let key = sv.ack_key.clone();
    let loaded = sv
        .store
        .read(move |c| {
            let Some(r) = alerts::recipient_by_token(c, &key, &token)? else {
                return Ok(None);
            };
            let a = alerts::get(c, AlertId(r.alert_id))?;
            let update = alerts::latest_follow_up(c, AlertId(r.alert_id))?;
            let picks = alerts::pickups_of(c, RecipientId(r.id))?;
            Ok(Some((r, a, update, picks)))
        })
        .await?;
    let Some((recipient, alert, update, pickups)) = loaded else {
        sv.metrics
            .inc("klaxon_rejected_inputs_total", &[("kind", "unknown-token")]);
        return Ok(None);
    };
    let renderer = sv.engine.renderer();
    let lang = recipient.language.clone();
    let text = renderer.page_text(
        &alert.playbook,
        &lang,
        &alert.place,
        &alert.title,
        alert.message_for(&lang),
        &names(&recipient),
        alert.drill,
    );
    let latest_update = update.map(|u| {
        (
            u.created_at,
            renderer.page_text(
                &u.playbook,
                &lang,
                &u.place,
                &u.title,
                u.message_for(&lang),
                &names(&recipient),
                u.drill,
            ),
        )
    });
    let choices = sv
        .config
        .playbooks
        .get(&alert.playbook)
        .map(|p| p.choices.clone())
        .unwrap_or_default();
    let now = sv.now_ms();
    let state = if alert.is_cancelled() {
        PageState::Cancelled
    } else if alert.state == AlertState::Closed || alert.state == AlertState::Held {
        PageState::Closed
    } else if recipient.acked_at.is_some() && alert.ack_deadline.is_some_and(|d| now > d) {
        PageState::Locked
    } else {
        PageState::Open
    };
    Ok(Some(PageModel {
        recipient,
        alert,
        text,
        latest_update,
        choices,
        pickups,
        state,
    }))
}

/// What a submitted form did.
#[derive(Debug)]
pub enum SubmitOutcome {
    /// Not one of our tokens.
    Invalid,
    /// Recorded (or unchanged): show the page again.
    Saved,
    /// A choice or student that is not on offer: nothing recorded.
    BadAnswer(Box<PageModel>, String),
    /// Nothing recorded; the page says why.
    Refused(Box<PageModel>, AckOutcome),
}

/// Parses a form: `choice` for every child at once, or `choice-<student id>`
/// per child; a playbook without choices takes a bare confirmation.
fn answer_from(page: &PageModel, form: &[(String, String)]) -> Result<Answer, String> {
    if page.choices.is_empty() {
        return Ok(Answer::Confirm);
    }
    let valid = |c: &str| page.choices.iter().any(|k| k.key == c);
    // Staff (no children) answer for themselves, under their own id.
    let students: Vec<&str> = if page.recipient.students.is_empty() {
        vec![page.recipient.person_id.as_str()]
    } else {
        page.recipient
            .students
            .iter()
            .map(|s| s.id.as_str())
            .collect()
    };
    let mut picks: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in form {
        if k == "choice" {
            if !valid(v) {
                return Err(format!("unknown choice `{v}`"));
            }
            for s in &students {
                picks.entry(s.to_string()).or_insert_with(|| v.clone());
            }
        } else if let Some(sid) = k.strip_prefix("choice-") {
            if !students.contains(&sid) {
                return Err("a child that is not on this page".into());
            }
            if !valid(v) {
                return Err(format!("unknown choice `{v}`"));
            }
            picks.insert(sid.to_string(), v.clone());
        }
    }
    if picks.is_empty() {
        return Err("no choice".into());
    }
    Ok(Answer::PerStudent(picks.into_iter().collect()))
}

pub async fn submit(
    sv: &Services,
    token: String,
    form: Vec<(String, String)>,
) -> Result<SubmitOutcome, StoreError> {
    let Some(page) = load_page(sv, token).await? else {
        return Ok(SubmitOutcome::Invalid);
    };
    match page.state {
        PageState::Cancelled => {
            sv.metrics.inc(
                "klaxon_rejected_inputs_total",
                &[("kind", "answer-after-close")],
            );
            return Ok(SubmitOutcome::Refused(
                Box::new(page),
                AckOutcome::Cancelled,
            ));
        }
        PageState::Closed => {
            sv.metrics.inc(
                "klaxon_rejected_inputs_total",
                &[("kind", "answer-after-close")],
            );
            return Ok(SubmitOutcome::Refused(Box::new(page), AckOutcome::Closed));
        }
        PageState::Locked | PageState::Open => {}
    }
    let answer = match answer_from(&page, &form) {
        Ok(a) => a,
        Err(why) => {
            sv.metrics
                .inc("klaxon_rejected_inputs_total", &[("kind", "bad-answer")]);
            return Ok(SubmitOutcome::BadAnswer(Box::new(page), why));
        }
    };
    match super::record(sv, RecipientId(page.recipient.id), answer, "web").await? {
        o @ (AckOutcome::Locked | AckOutcome::Closed | AckOutcome::Cancelled) => {
            Ok(SubmitOutcome::Refused(Box::new(page), o))
        }
        _ => Ok(SubmitOutcome::Saved),
    }
}
