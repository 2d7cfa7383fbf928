//! Pages the approvers on call while an alert waits for approval (a feed
//! rule's `manual`, the two-person rule, or an operator's hold): the first
//! approver on call at once, by SMS, voice and email, with the link to the
//! alert's page; then, every `approval_escalate` that nobody acts, the next.
//! A routine alert does not page during `quiet_hours`; an emergency does.
//!
//! Each page is written to the store before it is sent, so a restart never
//! pages the same person twice for one alert (a crash between the two loses
//! that page rather than repeating it).

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;

use crate::config::Dur;
use crate::deliver::message::OutboundMessage;
use crate::deliver::providers::Provider;
use crate::domain::Channel;
use crate::playbook::{PlaybookConfig, Severity};
use crate::services::Services;
use crate::store::alerts::{self, AlertRow};

/// One `[[approval.approvers]]`: a person who can approve, and when they
/// are on call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approver {
    pub name: String,
    /// E.164 or a national number, for SMS and the voice call.
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    /// On call, in the district's time zone, e.g. "17:00-07:00" (past
    /// midnight is fine). Omitted: always.
    #[serde(default)]
    pub hours: Option<String>,
}

/// A daily window "HH:MM-HH:MM" as minutes after midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    from: u32,
    to: u32,
}

impl Window {
    pub fn parse(s: &str) -> Result<Window, String> {
        let minutes = |t: &str| -> Result<u32, String> {
            let (h, m) = t
                .trim()
                .split_once(':')
                .ok_or_else(|| format!("`{t}` is not HH:MM"))?;
            let (h, m): (u32, u32) = (
                h.parse().map_err(|_| format!("`{t}` is not HH:MM"))?,
                m.parse().map_err(|_| format!("`{t}` is not HH:MM"))?,
            );
            if h > 24 || m > 59 || (h == 24 && m > 0) {
                return Err(format!("`{t}` is not a time of day"));
            }
            Ok(h * 60 + m)
        };
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("`{s}` is not a window like \"17:00-07:00\""))?;
        Ok(Window {
            from: minutes(a)?,
            to: minutes(b)?,
        })
    }

    /// Whether `minute` (after midnight) is inside; windows may wrap midnight.
    pub fn contains(&self, minute: u32) -> bool {
        if self.from <= self.to {
            (self.from..self.to).contains(&minute)
        } else {
            minute >= self.from || minute < self.to
        }
    }
}

/// Minutes after midnight of `now_ms` in `tz`.
fn minute_of_day(now_ms: i64, tz: &str) -> u32 {
    let zone = jiff::tz::TimeZone::get(tz).unwrap_or(jiff::tz::TimeZone::UTC);
    jiff::Timestamp::from_millisecond(now_ms)
        .map(|t| {
            let z = t.to_zoned(zone);
            z.hour() as u32 * 60 + z.minute() as u32
        })
        .unwrap_or(0)
}

/// Checks `[approval]`'s approvers and windows; problems go to `issues`.
pub fn validate(
    approvers: &[Approver],
    quiet_hours: Option<&str>,
    default_country: &str,
    issues: &mut crate::config::Issues,
) {
    for (i, a) in approvers.iter().enumerate() {
        let p = format!("approval.approvers[{i}]");
        if a.phone.is_none() && a.email.is_none() {
            issues.push(
                p.clone(),
                "needs a phone or an email to be paged at".to_string(),
            );
        }
        if let Some(phone) = &a.phone
            && crate::domain::phone::PhoneNumber::parse(phone, default_country).is_err()
        {
            issues.push(
                format!("{p}.phone"),
                format!("`{phone}` is not a phone number"),
            );
        }
        if let Some(h) = &a.hours
            && let Err(e) = Window::parse(h)
        {
            issues.push(format!("{p}.hours"), e);
        }
    }
    if let Some(q) = quiet_hours
        && let Err(e) = Window::parse(q)
    {
        issues.push("approval.quiet_hours", e);
    }
}

/// Who to page next for an alert waiting since `waiting_since`, given the
/// pages already sent (approver indexes, in order, with when): the next
/// approver on call not yet paged, when the last page is older than
/// `escalate` (or none was sent). None: nobody now.
pub fn next_to_page(
    approvers: &[Approver],
    paged: &[(usize, i64)],
    now_ms: i64,
    escalate: Duration,
    tz: &str,
) -> Option<usize> {
    if let Some((_, last)) = paged.last()
        && now_ms - last < escalate.as_millis() as i64
    {
        return None;
    }
    let minute = minute_of_day(now_ms, tz);
    approvers.iter().enumerate().position(|(i, a)| {
        !paged.iter().any(|(p, _)| *p == i)
            && a.hours
                .as_deref()
                .and_then(|h| Window::parse(h).ok())
                .is_none_or(|w| w.contains(minute))
    })
}

/// Whether an alert of playbook `pb` waits without paging at `minute`
/// (after midnight): a routine playbook in its own `quiet_hours`, or, when
/// it has none, in `[approval] quiet_hours`. Emergencies and urgent alerts
/// always page.
pub fn muted(pb: Option<&PlaybookConfig>, global: Option<&str>, minute: u32) -> bool {
    let routine = pb.is_none_or(|p| p.severity == Severity::Routine);
    let window = pb.and_then(|p| p.quiet_hours.as_deref()).or(global);
    routine
        && window
            .and_then(|q| Window::parse(q).ok())
            .is_some_and(|w| w.contains(minute))
}

/// Runs until `stop`: looks at held alerts every few seconds (and when the
/// clock is moved) and pages as `next_to_page` says.
pub async fn run(sv: Arc<Services>, mut stop: watch::Receiver<bool>) {
    let approval = &sv.config.approval;
    if approval.approvers.is_empty() {
        return;
    }
    let slots = match crate::app::build_providers(&sv.config) {
        Ok((slots, _)) => slots,
        Err(_) => return,
    };
    let provider = |ch: Channel| -> Option<&Provider> {
        slots
            .iter()
            .find(|s| s.channels.contains(&ch))
            .map(|s| &s.provider)
    };
    loop {
        if *stop.borrow() {
            return;
        }
        if let Err(e) = round(&sv, &provider).await {
            tracing::error!(error = %e, "Cannot page the approvers.");
        }
        tokio::select! {
            _ = sv.clock.sleep_until(sv.now_ms() + 5_000, Duration::from_secs(5)) => {}
            _ = stop.changed() => {}
        }
    }
}

async fn round<'a>(
    sv: &Services,
    provider: &impl Fn(Channel) -> Option<&'a Provider>,
) -> Result<(), crate::store::StoreError> {
    let approval = &sv.config.approval;
    let held = sv.store.read(alerts::held).await?;
    for alert in held {
        let now = sv.now_ms();
        if muted(
            sv.config.playbooks.get(&alert.playbook),
            approval.quiet_hours.as_deref(),
            minute_of_day(now, &sv.config.server.timezone),
        ) {
            continue;
        }
        let id = crate::domain::AlertId(alert.id);
        let paged = sv
            .store
            .read(move |c| alerts::approval_pages(c, id))
            .await?;
        let Some(who) = next_to_page(
            &approval.approvers,
            &paged,
            now,
            approval.approval_escalate.0,
            &sv.config.server.timezone,
        ) else {
            continue;
        };
        // Written before it is sent: never twice to one person for one alert.
        let first = sv
            .store
            .write(move |c| alerts::record_approval_page(c, id, who, now))
            .await?;
        if !first {
            continue;
        }
        page(sv, provider, &alert, &approval.approvers[who]).await;
        sv.metrics.inc("klaxon_approval_pages_total", &[]);
        tracing::warn!(
            alert = alert.id,
            approver = who,
            "An alert waits for approval; approver paged."
        );
    }
    Ok(())
}

async fn page<'a>(
    sv: &Services,
    provider: &impl Fn(Channel) -> Option<&'a Provider>,
    alert: &AlertRow,
    who: &Approver,
) {
    let link = format!("{}/alerts/{}", sv.config.server.public_url, alert.id);
    let why = if alert.two_person {
        "needs a second approval (two-person rule)"
    } else {
        "waits for approval"
    };
    let drill = if alert.drill { "DRILL - " } else { "" };
    let text = format!(
        "{drill}klaxon: {} at {} {why}, triggered by {}. Approve or cancel: {link}",
        alert.title, alert.place, alert.created_by
    );
    let speech = format!(
        "{drill}This is klaxon. {} at {} {why}. Please open the approval page sent to you by text message.",
        alert.title, alert.place
    );
    let mut sends: Vec<(Channel, String)> = Vec::new();
    if let Some(p) = &who.phone {
        let to = crate::domain::phone::PhoneNumber::parse(p, &sv.config.sis.default_country)
            .map(|n| n.as_str().to_string())
            .unwrap_or_else(|_| p.clone());
        sends.push((Channel::Sms, to.clone()));
        sends.push((Channel::Voice, to));
    }
    if let Some(e) = &who.email {
        sends.push((Channel::Email, e.clone()));
    }
    for (ch, to) in sends {
        let Some(p) = provider(ch) else { continue };
        let msg = OutboundMessage {
            delivery_id: 0,
            alert_id: alert.id,
            channel: ch,
            to,
            language: "en".into(),
            subject: format!("{drill}Approval needed: {} at {}", alert.title, alert.place),
            body: text.clone(),
            html: None,
            ack_url: link.clone(),
            speech: speech.clone(),
            severity: Severity::Urgent,
            // A page is not a delivery: a bounce has nothing to mark.
            bounce_tag: None,
        };
        if let Err(e) = p.send(&msg).await {
            tracing::error!(alert = alert.id, channel = ch.as_str(), error = %e, "Cannot page an approver.");
        }
    }
}

/// `[approval] approval_escalate` default.
pub fn default_escalate() -> Dur {
    Dur::secs(5 * 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approver(name: &str, hours: Option<&str>) -> Approver {
        Approver {
            name: name.into(),
            phone: Some("+15125550100".into()),
            email: None,
            hours: hours.map(str::to_string),
        }
    }

    #[test]
    fn a_routine_playbook_s_own_quiet_hours_come_before_the_global_ones() {
        let mut routine = crate::playbook::builtin()["weather-closure"].clone();
        routine.severity = Severity::Routine;
        let emergency = crate::playbook::builtin()["lockdown"].clone();
        let (night, noon) = (23 * 60, 12 * 60);
        let global = Some("21:00-07:00");
        assert!(muted(Some(&routine), global, night));
        assert!(!muted(Some(&routine), global, noon));
        assert!(!muted(Some(&emergency), global, night), "emergencies page");
        routine.quiet_hours = Some("11:00-13:00".into());
        assert!(muted(Some(&routine), global, noon), "its own hours");
        assert!(
            !muted(Some(&routine), global, night),
            "instead of the global ones"
        );
        assert!(muted(Some(&routine), None, noon));
        assert!(!muted(Some(&routine), None, night));
    }

    #[test]
    fn windows_wrap_midnight() {
        let night = Window::parse("17:00-07:00").unwrap();
        assert!(night.contains(23 * 60) && night.contains(60) && !night.contains(12 * 60));
        let day = Window::parse("07:00-17:00").unwrap();
        assert!(day.contains(12 * 60) && !day.contains(17 * 60));
        assert!(Window::parse("7-17").is_err());
        assert!(Window::parse("25:00-07:00").is_err());
    }

    #[test]
    fn the_next_approver_on_call_after_each_escalation() {
        // 2026-11-23 12:00 UTC = 06:00 in Chicago: the night approver is on call.
        let noon_utc = 1_795_435_200_000;
        let list = [
            approver("day", Some("07:00-17:00")),
            approver("night", Some("17:00-07:00")),
            approver("always", None),
        ];
        let esc = Duration::from_secs(300);
        let tz = "America/Chicago";
        assert_eq!(next_to_page(&list, &[], noon_utc, esc, tz), Some(1));
        let paged = [(1, noon_utc)];
        assert_eq!(
            next_to_page(&list, &paged, noon_utc + 299_000, esc, tz),
            None
        );
        assert_eq!(
            next_to_page(&list, &paged, noon_utc + 300_000, esc, tz),
            Some(2)
        );
        let all = [(1, noon_utc), (2, noon_utc + 300_000)];
        assert_eq!(next_to_page(&list, &all, noon_utc + 900_000, esc, tz), None);
    }
}
