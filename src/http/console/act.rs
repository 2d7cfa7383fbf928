//! Acting from the console: start an alert (form → preview → send) and
//! approve, give the all-clear or cancel one, each behind a confirmation
//! step. Every POST carries the sign-in's CSRF token (`check_csrf`) and
//! needs the operator role; the actions call the lifecycle owner
//! (`crate::trigger`) directly with the operator as actor, as the API does.
//!
//! A district-wide alert (no school chosen) needs the word DISTRICT typed
//! on the preview page: one stray click must not reach every family.

use crate::domain::text::{DEFAULT_LANGUAGE, MessageText};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{error_page, escape, num, page};
use crate::app::AppState;
use crate::audience::AudienceSpec;
use crate::deliver::sms;
use crate::domain::{AlertId, AlertState, Channel, Role};
use crate::http::session::{Operator, check_csrf, csrf_input};
use crate::store::alerts;
use crate::store::deliveries::Claimed;
use crate::store::tokens::ApiRole;
use crate::trigger::{self, TriggerError, TriggerRequest};

/// Playbooks that only follow another alert; they are not started alone.
const FOLLOW_UPS: &[&str] = &["all-clear", "update"];

/// What must be typed to send to the whole district.
pub const DISTRICT_WORD: &str = "DISTRICT";

pub(super) type Fields = Vec<(String, String)>;

pub(super) fn field<'a>(f: &'a Fields, name: &str) -> &'a str {
    f.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

fn all(f: &Fields, name: &str) -> Vec<String> {
    f.iter()
        .filter(|(k, v)| k == name && !v.trim().is_empty())
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

pub(super) fn forbidden(state: &AppState) -> Response {
    error_page(
        state,
        StatusCode::FORBIDDEN,
        "Your sign-in may look but not act: starting, approving, ending or cancelling an alert needs the operator role.",
    )
}

/// A 403 page unless the operator's scope covers the audience's schools
/// (none chosen: the whole district). The preview and the send both ask:
/// the preview names people, so it is no more open than the send.
// The refusal is the whole answer (a page), returned as is by handlers.
#[allow(clippy::result_large_err)]
fn within_scope(
    state: &AppState,
    op: &Operator,
    req: &TriggerRequest,
    outcome: &str,
) -> Result<(), Response> {
    if op.scope.allows_schools(&req.audience.schools) {
        return Ok(());
    }
    state
        .metrics
        .inc("klaxon_http_auth_failures_total", &[("reason", "scope")]);
    let what = if req.audience.schools.is_empty() {
        "the whole district".to_string()
    } else {
        format!("school(s) {}", req.audience.schools.join(", "))
    };
    Err(crate::http::session::message_page(
        StatusCode::FORBIDDEN,
        "Not in your schools",
        &format!(
            "This audience is {what}; you may alert {} only, so {outcome}",
            op.scope
        ),
    ))
}

/// Field name prefix of the message in another language (`message_es`).
const MESSAGE_IN: &str = "message_";

/// The operator's words: `message` (English) alone, or with the texts in
/// other languages, so each family reads them in its own.
fn message_of(f: &Fields) -> Option<MessageText> {
    let main = field(f, "message").trim();
    let mut per: BTreeMap<String, String> = f
        .iter()
        .filter_map(|(k, v)| {
            let lang = k.strip_prefix(MESSAGE_IN)?;
            let ok = !lang.is_empty()
                && lang.len() <= 8
                && lang.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            (ok && !v.trim().is_empty()).then(|| (lang.to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    if per.is_empty() {
        return (!main.is_empty()).then(|| MessageText::One(main.to_string()));
    }
    if !main.is_empty() {
        per.insert(DEFAULT_LANGUAGE.to_string(), main.to_string());
    }
    Some(MessageText::PerLanguage(per))
}

/// The languages offered for a translated message: those the playbooks
/// have their own words in, besides English.
fn other_languages(state: &AppState) -> Vec<String> {
    let mut langs: Vec<String> = state
        .config
        .playbooks
        .values()
        .flat_map(|p| p.messages.keys().cloned())
        .filter(|l| l != DEFAULT_LANGUAGE)
        .collect();
    langs.sort();
    langs.dedup();
    langs
}

/// The request the form describes.
fn request(f: &Fields) -> TriggerRequest {
    TriggerRequest {
        playbook: field(f, "playbook").to_string(),
        audience: AudienceSpec {
            schools: all(f, "school"),
            grades: all(f, "grade"),
            groups: all(f, "group"),
            ..Default::default()
        },
        message: message_of(f),
        drill: field(f, "drill") == "on",
        hold: false,
        allow_empty: false,
        confirm_duplicate: field(f, "confirm_duplicate") == "on",
        override_reason: {
            let r = field(f, "override_reason").trim();
            (!r.is_empty()).then(|| r.to_string())
        },
    }
}

/// The same request as hidden fields, for the next step.
fn hidden(req: &TriggerRequest) -> String {
    let mut h = String::new();
    let mut put = |k: &str, v: &str| {
        let _ = write!(
            h,
            "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
            escape(v)
        );
    };
    put("playbook", &req.playbook);
    for s in &req.audience.schools {
        put("school", s);
    }
    for g in &req.audience.grades {
        put("grade", g);
    }
    for g in &req.audience.groups {
        put("group", g);
    }
    match &req.message {
        Some(MessageText::One(m)) => put("message", m),
        Some(MessageText::PerLanguage(per)) => {
            for (lang, m) in per {
                if lang == DEFAULT_LANGUAGE {
                    put("message", m);
                } else {
                    put(&format!("{MESSAGE_IN}{lang}"), m);
                }
            }
        }
        None => {}
    }
    if req.drill {
        put("drill", "on");
    }
    h
}

/// The SIS copy's schools and grades, read off the async threads.
async fn catalog(state: &AppState) -> Result<(Vec<(String, String)>, Vec<String>), String> {
    let dir = state.config.store_dir();
    tokio::task::spawn_blocking(move || -> Result<_, String> {
        let conn = crate::sis::open_current(&dir).map_err(|e| e.to_string())?;
        let schools = crate::sis::catalog::schools(&conn).map_err(|e| e.to_string())?;
        let grades = crate::sis::catalog::grades(&conn).map_err(|e| e.to_string())?;
        Ok((schools, grades))
    })
    .await
    .map_err(|e| e.to_string())?
}

fn checkboxes(name: &str, legend: &str, items: &[(String, String)], chosen: &[String]) -> String {
    let mut b = format!("<fieldset><legend>{}</legend>", escape(legend));
    if items.is_empty() {
        b.push_str("<p class=\"muted\">None.</p>");
    }
    for (i, (value, label)) in items.iter().enumerate() {
        let _ = write!(
            b,
            "<label class=\"check\"><input type=\"checkbox\" name=\"{name}\" id=\"{name}-{i}\" value=\"{v}\"{c}> {l}</label>",
            v = escape(value),
            c = if chosen.contains(value) {
                " checked"
            } else {
                ""
            },
            l = escape(label),
        );
    }
    b.push_str("</fieldset>");
    b
}

async fn form_page(
    state: &AppState,
    op: &Operator,
    req: &TriggerRequest,
    problem: Option<&str>,
) -> Response {
    let (schools, grades) = match catalog(state).await {
        Ok(c) => c,
        Err(e) => {
            return error_page(
                state,
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "The SIS copy cannot be read, so no audience can be chosen: {e}. Import one with `klaxon sis import`."
                ),
            );
        }
    };
    let mut b = String::from("<h1>Start an alert</h1>");
    if let Some(p) = problem {
        let _ = write!(b, "<p class=\"warn\" role=\"alert\">{}</p>", escape(p));
    }
    b.push_str("<form method=\"post\" action=\"/trigger/preview\">");
    b.push_str(&csrf_input(op));
    b.push_str("<label for=\"playbook\">Playbook</label><select id=\"playbook\" name=\"playbook\" required>");
    for (key, pb) in &state.config.playbooks {
        if FOLLOW_UPS.contains(&key.as_str()) {
            continue;
        }
        let _ = write!(
            b,
            "<option value=\"{k}\"{s}>{t} ({k})</option>",
            k = escape(key),
            s = if *key == req.playbook {
                " selected"
            } else {
                ""
            },
            t = escape(&pb.title),
        );
    }
    b.push_str("</select>");
    // A school-scoped operator is offered only their schools, and must
    // choose one: none chosen means the whole district.
    let (schools, legend) = match &op.scope {
        crate::domain::Scope::District => (schools, "Schools (none chosen: the whole district)"),
        crate::domain::Scope::Schools(mine) => (
            schools
                .into_iter()
                .filter(|(id, _)| mine.contains(id))
                .collect(),
            "Schools (yours; choose at least one)",
        ),
    };
    b.push_str(&checkboxes(
        "school",
        legend,
        &schools,
        &req.audience.schools,
    ));
    let grade_items: Vec<(String, String)> = grades
        .iter()
        .map(|g| (g.clone(), format!("Grade {g}")))
        .collect();
    b.push_str(&checkboxes(
        "grade",
        "Grades (none chosen: every grade)",
        &grade_items,
        &req.audience.grades,
    ));
    let group_items: Vec<(String, String)> = state
        .config
        .groups
        .iter()
        .map(|g| (g.name.clone(), g.name.clone()))
        .collect();
    if !group_items.is_empty() {
        b.push_str(&checkboxes(
            "group",
            "Groups",
            &group_items,
            &req.audience.groups,
        ));
    }
    let _ = write!(
        b,
        "<label for=\"message\">Message (optional; added to the playbook's words)</label>\
<textarea id=\"message\" name=\"message\" rows=\"3\" maxlength=\"1000\" style=\"width:100%\">{}</textarea>",
        escape(
            req.message
                .as_ref()
                .map(|m| m.for_language(DEFAULT_LANGUAGE))
                .unwrap_or("")
        ),
    );
    // Translations: a family whose language has none reads the English.
    for lang in other_languages(state) {
        let text = match &req.message {
            Some(m @ MessageText::PerLanguage(_)) if m.covers(&lang) => m.for_language(&lang),
            _ => "",
        };
        let _ = write!(
            b,
            "<label for=\"{MESSAGE_IN}{lang}\">The message in <span lang=\"{lang}\">{lang}</span> (optional; without it, families reading {lang} get the English)</label>\
<textarea id=\"{MESSAGE_IN}{lang}\" name=\"{MESSAGE_IN}{lang}\" lang=\"{lang}\" rows=\"2\" maxlength=\"1000\" style=\"width:100%\">{}</textarea>",
            escape(text)
        );
    }
    let _ = write!(
        b,
        "<label class=\"check\"><input type=\"checkbox\" id=\"drill\" name=\"drill\" value=\"on\"{}> This is a drill (marked DRILL on every channel)</label>\
<p><button type=\"submit\">Preview</button></p></form>",
        if req.drill { " checked" } else { "" },
    );
    page(state, Some(op), "Start an alert", &b)
}

pub async fn form(op: Operator, State(state): State<Arc<AppState>>) -> Response {
    if op.role < ApiRole::Operator {
        return forbidden(&state);
    }
    let req = TriggerRequest {
        drill: true,
        ..Default::default()
    };
    form_page(&state, &op, &req, None).await
}

/// What the preview shows before anything is sent.
struct Preview {
    recipients: usize,
    per_role: BTreeMap<Role, usize>,
    per_channel: BTreeMap<Channel, usize>,
    unreachable: Vec<(String, Role)>,
    /// Language → (recipients, SMS segments of the message).
    languages: BTreeMap<String, (usize, usize)>,
    estimate_s: f64,
    deadline_s: f64,
    place: String,
    /// Languages (base tags) whose families get the message as written,
    /// with how many recipients read them.
    untranslated: Vec<(String, usize)>,
}

async fn preview_of(state: &AppState, req: &TriggerRequest) -> Result<Preview, String> {
    let pb = state
        .config
        .playbooks
        .get(&req.playbook)
        .filter(|_| !FOLLOW_UPS.contains(&req.playbook.as_str()))
        .ok_or_else(|| format!("Choose a playbook: `{}` is not one.", req.playbook))?
        .clone();
    // The text as the send would take it: cleaned, and refused here when the
    // playbook cannot carry it or lacks a language it requires.
    let text = crate::trigger::check::message(&req.playbook, &pb, req.message.clone())
        .map_err(|e| format!("Nothing can be sent as written: {e}."))?
        .text;
    let mut spec = req.audience.clone();
    if spec.roles.is_empty() {
        spec.roles = pb.roles.clone();
    }
    let dir = state.config.store_dir();
    let groups = state.config.groups.clone();
    let (audience, place) = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let conn = crate::sis::open_current(&dir).map_err(|e| e.to_string())?;
        let audience =
            crate::audience::resolve(&conn, &spec, &groups).map_err(|e| e.to_string())?;
        let names = crate::sis::school_names(&conn, &spec.schools).map_err(|e| e.to_string())?;
        let place = if names.is_empty() {
            "all schools".to_string()
        } else {
            names.join(", ")
        };
        Ok((audience, place))
    })
    .await
    .map_err(|e| e.to_string())??;
    let p = audience.preview();
    let mut languages: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for r in &audience.recipients {
        languages.entry(r.language.clone()).or_default().0 += 1;
    }
    // Each language's SMS exactly as the renderer would write it.
    for (lang, (_, segs)) in languages.iter_mut() {
        let c = Claimed {
            id: 0,
            alert_id: 0,
            recipient_id: 1,
            channel: Channel::Sms,
            address: String::new(),
            attempts: 0,
            last_provider: None,
            playbook: req.playbook.clone(),
            title: pb.title.clone(),
            place: place.clone(),
            message: text.as_ref().map(|m| m.for_language(lang).to_string()),
            drill: req.drill,
            released_at: None,
            retry_until: None,
            language: lang.clone(),
            students_json: "[]".into(),
            escalation: false,
            priority: 0,
        };
        *segs = state
            .engine
            .renderer()
            .render(&c)
            .map(|m| sms::segments(&m.body).segments)
            .unwrap_or(0);
    }
    let counts: HashMap<Channel, i64> = p
        .per_channel
        .iter()
        .filter(|(ch, _)| pb.channels.contains(ch))
        .map(|(ch, n)| (*ch, *n as i64))
        .collect();
    let estimate_s = state.engine.estimate(&counts).as_secs_f64();
    // The same reckoning as the 201 answer's note.
    let untranslated = crate::trigger::check::untranslated(
        text.as_ref(),
        &languages
            .iter()
            .map(|(l, (n, _))| (l.clone(), *n))
            .collect(),
    );
    Ok(Preview {
        untranslated,
        recipients: p.recipients,
        per_role: p.per_role,
        per_channel: p.per_channel,
        unreachable: p
            .unreachable
            .iter()
            .map(|u| (u.name.clone(), u.role))
            .collect(),
        languages,
        estimate_s,
        deadline_s: pb.notify_within.0.as_secs_f64(),
        place,
    })
}

pub async fn preview(
    op: Operator,
    State(state): State<Arc<AppState>>,
    Form(f): Form<Fields>,
) -> Response {
    if let Err(r) = check_csrf(&op, field(&f, "csrf")) {
        return r;
    }
    if op.role < ApiRole::Operator {
        return forbidden(&state);
    }
    let req = request(&f);
    // The preview names people: only those the operator may alert.
    if let Err(r) = within_scope(&state, &op, &req, "nothing is shown.") {
        return r;
    }
    let p = match preview_of(&state, &req).await {
        Ok(p) => p,
        Err(e) => return form_page(&state, &op, &req, Some(&e)).await,
    };
    let title = state
        .config
        .playbooks
        .get(&req.playbook)
        .map(|p| p.title.clone())
        .unwrap_or_default();
    let district = req.audience.schools.is_empty();
    let mut b = format!(
        "<h1>Preview: {drill}{t} at {place}</h1>",
        drill = if req.drill { "DRILL: " } else { "" },
        t = escape(&title),
        place = escape(&p.place)
    );
    if req.drill {
        b.push_str("<p class=\"banner drill\">DRILL: every message is marked as a drill.</p>");
    }
    let _ = write!(
        b,
        "<p><strong>{} people</strong> will be told.</p>",
        num(p.recipients as i64)
    );
    match &req.message {
        Some(MessageText::One(m)) => {
            let _ = write!(b, "<p>Message added: “{}”</p>", escape(m));
        }
        Some(MessageText::PerLanguage(per)) => {
            b.push_str("<p>Message added, per language:</p><ul>");
            for (lang, m) in per {
                let _ = write!(
                    b,
                    "<li>{lang}: “<span lang=\"{lang}\">{}</span>”</li>",
                    escape(m)
                );
            }
            b.push_str("</ul>");
        }
        None => {}
    }
    if !p.untranslated.is_empty() {
        let list = p
            .untranslated
            .iter()
            .map(|(l, n)| {
                format!(
                    "{} ({} recipient{})",
                    escape(l),
                    num(*n as i64),
                    if *n == 1 { "" } else { "s" }
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let _ = write!(
            b,
            "<p class=\"warn\" id=\"untranslated\">The message is not written in {list}: they get it untranslated, as written.</p>"
        );
    }
    b.push_str("<div class=\"scroll\" tabindex=\"0\"><table><caption>Recipients per role</caption><thead><tr><th scope=\"col\">Role</th><th scope=\"col\" class=\"n\">People</th></tr></thead><tbody>");
    for (role, n) in &p.per_role {
        let _ = write!(
            b,
            "<tr><th scope=\"row\">{}</th><td class=\"n\">{}</td></tr>",
            role.as_str(),
            num(*n as i64)
        );
    }
    b.push_str("</tbody></table></div><div class=\"scroll\" tabindex=\"0\"><table><caption>Reachable per channel</caption><thead><tr><th scope=\"col\">Channel</th><th scope=\"col\" class=\"n\">People</th></tr></thead><tbody>");
    for (ch, n) in &p.per_channel {
        let _ = write!(
            b,
            "<tr><th scope=\"row\">{}</th><td class=\"n\">{}</td></tr>",
            ch.as_str(),
            num(*n as i64)
        );
    }
    b.push_str("</tbody></table></div><div class=\"scroll\" tabindex=\"0\"><table><caption>SMS per language</caption><thead><tr><th scope=\"col\">Language</th><th scope=\"col\" class=\"n\">People</th><th scope=\"col\" class=\"n\">SMS segments each</th></tr></thead><tbody>");
    for (lang, (n, segs)) in &p.languages {
        let _ = write!(
            b,
            "<tr><th scope=\"row\">{}</th><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(lang),
            num(*n as i64),
            segs
        );
    }
    b.push_str("</tbody></table></div>");
    let fits = p.estimate_s <= p.deadline_s;
    let _ = write!(
        b,
        "<p class=\"{}\" id=\"capacity\">Estimated hand-over to the providers: {:.0} s against a notify deadline of {:.0} s: {}.</p>",
        if fits { "ok" } else { "warn" },
        p.estimate_s,
        p.deadline_s,
        if fits {
            "it fits"
        } else {
            "<strong>the configured rates cannot meet the deadline</strong>"
        }
    );
    if p.unreachable.is_empty() {
        b.push_str("<p>Everyone has a usable address.</p>");
    } else {
        let _ = write!(
            b,
            "<h2>No usable address ({})</h2><p>These people cannot be reached by any channel; call them or their school.</p><ul>",
            num(p.unreachable.len() as i64)
        );
        for (name, role) in p.unreachable.iter().take(50) {
            let _ = write!(b, "<li>{} ({})</li>", escape(name), role.as_str());
        }
        b.push_str("</ul>");
        if p.unreachable.len() > 50 {
            let _ = write!(
                b,
                "<p>And {} more: <code>klaxon audience</code> lists them all.</p>",
                num(p.unreachable.len() as i64 - 50)
            );
        }
    }
    b.push_str("<form method=\"post\" action=\"/trigger/send\">");
    b.push_str(&csrf_input(&op));
    b.push_str(&hidden(&req));
    if district {
        let _ = write!(
            b,
            "<p class=\"warn\">No school is chosen: this goes to <strong>the whole district</strong>.</p>\
<label for=\"confirm\">Type {DISTRICT_WORD} to send to the whole district</label>\
<input id=\"confirm\" name=\"confirm\" autocomplete=\"off\" required pattern=\"{DISTRICT_WORD}\">"
        );
    }
    // The rule `trigger::create` applies: said before, not after.
    let two_person = state
        .config
        .playbooks
        .get(&req.playbook)
        .is_some_and(|pb| trigger::needs_two_person(&state.config, pb, &req.audience));
    if two_person {
        b.push_str(
            "<p class=\"warn\" id=\"two-person\">This alert needs a second approval (two-person rule): it waits, held, until another operator approves it. If it cannot wait, you can then send it without a second approval, with a reason.</p>",
        );
    }
    let _ = write!(
        b,
        "<p><button type=\"submit\">{} {} people</button> <a href=\"/trigger\">Start over</a></p></form>",
        if two_person {
            "Ask for a second approval to send to"
        } else {
            "Send now to"
        },
        num(p.recipients as i64)
    );
    page(&state, Some(&op), "Preview the alert", &b)
}

pub async fn send(
    op: Operator,
    State(state): State<Arc<AppState>>,
    Form(f): Form<Fields>,
) -> Response {
    if let Err(r) = check_csrf(&op, field(&f, "csrf")) {
        return r;
    }
    if op.role < ApiRole::Operator {
        return forbidden(&state);
    }
    let req = request(&f);
    if let Err(r) = within_scope(&state, &op, &req, "nothing was sent.") {
        return r;
    }
    if req.audience.schools.is_empty() && field(&f, "confirm").trim() != DISTRICT_WORD {
        return form_page(
            &state,
            &op,
            &req,
            Some(&format!(
                "Nothing was sent. A district-wide alert needs the word {DISTRICT_WORD} typed on the preview page."
            )),
        )
        .await;
    }
    match trigger::create(&state.services, req.clone(), &op.actor, "console").await {
        Ok(created) => see_other(&format!("/alerts/{}", created.id)),
        Err(e) => {
            let msg = format!("Nothing was sent: {e}");
            if matches!(e, TriggerError::Store(_)) {
                tracing::error!(error = %e, "Cannot create an alert from the console.");
            }
            form_page(&state, &op, &req, Some(&msg)).await
        }
    }
}

pub(super) fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

/// The lifecycle actions, with the words each confirmation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Approve,
    AllClear,
    Cancel,
}

impl Action {
    fn parse(s: &str) -> Option<Action> {
        match s {
            "approve" => Some(Action::Approve),
            "all-clear" => Some(Action::AllClear),
            "cancel" => Some(Action::Cancel),
            _ => None,
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Action::Approve => "approve",
            Action::AllClear => "all-clear",
            Action::Cancel => "cancel",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Action::Approve => "Approve and send",
            Action::AllClear => "Send the all-clear",
            Action::Cancel => "Cancel the alert",
        }
    }

    /// Whether the action applies to an alert in this state.
    fn applies(self, a: &alerts::AlertRow) -> bool {
        match self {
            Action::Approve => a.state == AlertState::Held,
            Action::AllClear => {
                matches!(a.state, AlertState::Sending | AlertState::Settled)
                    && a.all_clear_id.is_none()
                    && a.parent_id.is_none()
            }
            Action::Cancel => a.state != AlertState::Closed,
        }
    }

    fn explain(self, a: &alerts::AlertRow) -> String {
        match self {
            Action::Approve => format!(
                "Sending starts now, to {} people, and the deadlines start counting.",
                num(a.recipients)
            ),
            Action::AllClear => format!(
                "The all-clear goes to exactly the same {} people and the alert closes. It cannot be taken back.",
                num(a.recipients)
            ),
            Action::Cancel => {
                "Nothing more of this alert is sent, including retries and escalation calls. Messages already handed over cannot be called back.".into()
            }
        }
    }
}

/// What the one who triggered a two-person alert may do instead of approving it.
pub const OVERRIDE_LABEL: &str = "Send now without a second approval";

/// Whether `a` is held for a second approval and `op` triggered it: they
/// cannot approve it, only override with a reason (`trigger::approve`).
fn own_two_person(op: &Operator, a: &alerts::AlertRow) -> bool {
    a.two_person && a.state == AlertState::Held && trigger::same_person(&a.created_by, &op.actor)
}

/// The status of a console page for a refused lifecycle action.
pub(super) fn status_of(e: &TriggerError) -> StatusCode {
    match e {
        TriggerError::Forbidden(_) => StatusCode::FORBIDDEN,
        TriggerError::BadRequest(_) | TriggerError::UnknownPlaybook(..) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        _ => StatusCode::CONFLICT,
    }
}

/// The buttons on the alert view (links to the confirmation step).
pub fn buttons(op: &Operator, a: &alerts::AlertRow) -> String {
    if op.role < ApiRole::Operator {
        return String::new();
    }
    let mut b = String::new();
    for act in [Action::Approve, Action::AllClear, Action::Cancel] {
        if act.applies(a) {
            let label = if act == Action::Approve && own_two_person(op, a) {
                OVERRIDE_LABEL
            } else {
                act.label()
            };
            let _ = write!(
                b,
                "<a class=\"button\" href=\"/alerts/{}/act/{}\">{}…</a> ",
                a.id,
                act.slug(),
                label
            );
        }
    }
    if b.is_empty() {
        return b;
    }
    format!("<section aria-labelledby=\"act-h\"><h2 id=\"act-h\">Actions</h2><p>{b}</p></section>")
}

/// The confirmation step: what will happen, and one button.
pub async fn confirm(
    op: Operator,
    State(state): State<Arc<AppState>>,
    Path((id, action)): Path<(i64, String)>,
) -> Response {
    let a = match super::in_scope(&state, &op, id).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some(act) = Action::parse(&action) else {
        return error_page(&state, StatusCode::NOT_FOUND, "There is no such action.");
    };
    if op.role < ApiRole::Operator {
        return forbidden(&state);
    }
    let mut b = format!(
        "<p><a href=\"/alerts/{id}\">Back to alert #{id}</a></p><h1>{}: #{id} {}</h1>",
        act.label(),
        escape(&a.title)
    );
    if !act.applies(&a) {
        let _ = write!(
            b,
            "<p class=\"warn\">This alert is {}: this action does not apply any more.</p>",
            escape(&super::alert::state_label(&a))
        );
        return page(&state, Some(&op), act.label(), &b);
    }
    if act == Action::Approve && own_two_person(&op, &a) {
        let _ = write!(
            b,
            "<p class=\"warn\">This alert needs a second approval (two-person rule), and you triggered it: another operator approves it from this alert's page.</p>\
<h2>{OVERRIDE_LABEL}</h2>\
<p>If it cannot wait, send it now. Your reason goes in the audit log, the alert is marked \u{201c}sent without a second approval\u{201d}, and a second person reviews it afterwards. {}</p>\
<form method=\"post\" action=\"/alerts/{id}/act/approve\">{}\
<label for=\"override_reason\">Why can this not wait for a second approval? (required)</label>\
<textarea id=\"override_reason\" name=\"override_reason\" rows=\"2\" required minlength=\"5\" maxlength=\"500\" style=\"width:100%\"></textarea>\
<p><button type=\"submit\">Yes: send now without a second approval</button> <a href=\"/alerts/{id}\">No, wait for a second approval</a></p></form>",
            escape(&act.explain(&a)),
            csrf_input(&op)
        );
        return page(&state, Some(&op), OVERRIDE_LABEL, &b);
    }
    let mut explain = act.explain(&a);
    if act == Action::Approve && a.two_person {
        explain = format!(
            "You give the second approval for this alert, which {} triggered. {explain}",
            a.created_by
        );
    }
    let _ = write!(
        b,
        "<p>{}</p><form method=\"post\" action=\"/alerts/{id}/act/{}\">{}",
        escape(&explain),
        act.slug(),
        csrf_input(&op)
    );
    if act == Action::AllClear {
        b.push_str("<label for=\"message\">Message (optional)</label><textarea id=\"message\" name=\"message\" rows=\"2\" maxlength=\"1000\" style=\"width:100%\"></textarea>");
    }
    let _ = write!(
        b,
        "<p><button type=\"submit\">Yes: {}</button> <a href=\"/alerts/{id}\">No, go back</a></p></form>",
        act.label().to_lowercase()
    );
    page(&state, Some(&op), act.label(), &b)
}

pub async fn act(
    op: Operator,
    State(state): State<Arc<AppState>>,
    Path((id, action)): Path<(i64, String)>,
    Form(f): Form<Fields>,
) -> Response {
    if let Err(r) = super::in_scope(&state, &op, id).await {
        return r;
    }
    let Some(act) = Action::parse(&action) else {
        return error_page(&state, StatusCode::NOT_FOUND, "There is no such action.");
    };
    if let Err(r) = check_csrf(&op, field(&f, "csrf")) {
        return r;
    }
    if op.role < ApiRole::Operator {
        return forbidden(&state);
    }
    let aid = AlertId(id);
    let done = match act {
        Action::Approve => {
            let r = field(&f, "override_reason").trim();
            let r = (!r.is_empty()).then(|| r.to_string());
            trigger::approve(&state, aid, &op.actor, r)
                .await
                .map(|_| ())
        }
        Action::Cancel => trigger::cancel(&state, aid, &op.actor).await.map(|_| ()),
        Action::AllClear => {
            let m = field(&f, "message").trim();
            let m = (!m.is_empty()).then(|| MessageText::One(m.to_string()));
            trigger::all_clear(&state.services, aid, m, &op.actor)
                .await
                .map(|_| ())
        }
    };
    match done {
        Ok(()) => see_other(&format!("/alerts/{id}")),
        Err(e) => {
            if matches!(e, TriggerError::Store(_)) {
                tracing::error!(alert = id, error = %e, "A console action failed.");
            }
            error_page(
                &state,
                status_of(&e),
                &format!("{} did not happen: {e}", act.label()),
            )
        }
    }
}
