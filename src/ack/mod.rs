//! Every way a person answers an alert goes through here: the
//! acknowledgement page (the token comes straight from the page handler),
//! an SMS reply, a key pressed on a call. Also the words those use in each
//! language. `http` only translates to and from these calls.
//!
//! Invariant: an answer is recorded only against an open alert that asked
//! for it; anything else gets a polite answer, is counted, and records
//! nothing — except that a reply which is not a confirmation is always kept
//! in the alert's inbox.

mod page;
mod reply;

pub use page::{PageModel, PageState, SubmitOutcome, load_page, submit};
pub use reply::{VoiceReply, sms_reply, voice_key};

use crate::domain::RecipientId;
use crate::services::Services;
use crate::store::StoreError;
use crate::store::alerts::{self, AckOutcome, Answer};

/// Words of the acknowledgement page and replies, per language (English fallback).
pub struct Words {
    pub for_whom: &'static str,
    pub your_children: &'static str,
    pub choose: &'static str,
    pub confirm: &'static str,
    pub received: &'static str,
    pub save: &'static str,
    pub confirmed_at: &'static str,
    pub your_choice: &'static str,
    pub locked: &'static str,
    pub change: &'static str,
    pub drill: &'static str,
    pub cancelled: &'static str,
    pub invalid: &'static str,
    pub thanks: &'static str,
    pub closed: &'static str,
    pub sent_at: &'static str,
    pub latest_update: &'static str,
    pub not_answered: &'static str,
    /// SMS answer to a confirmation: "Confirmed: {what}".
    pub confirmed: &'static str,
    /// SMS answer to a message that is not a confirmation.
    pub message_received: &'static str,
    /// SMS answer to "1" when nothing waits for a confirmation.
    pub nothing_open: &'static str,
    pub opted_out: &'static str,
    pub opted_in: &'static str,
}

const EN: Words = Words {
    for_whom: "This message is for",
    your_children: "Your children at the affected schools",
    choose: "Please choose one",
    confirm: "Confirm",
    received: "I have received this message",
    save: "Send my answer",
    confirmed_at: "Confirmed at",
    your_choice: "Your answer",
    locked: "The time to change your answer has passed. Call the school office if plans change.",
    change: "You can change your answer until",
    drill: "DRILL — this is a practice, not a real emergency.",
    cancelled: "This alert has been cancelled.",
    invalid: "This link is not valid. It may have been mistyped.",
    thanks: "Thank you. Your answer is recorded.",
    closed: "This alert is closed. Answers are no longer recorded here; call the school office if you need to.",
    sent_at: "Sent at",
    latest_update: "Latest update",
    not_answered: "No answer was recorded.",
    confirmed: "Confirmed",
    message_received: "Your message was received and passed to the school's safety team.",
    nothing_open: "Thank you. Nothing is waiting for your confirmation right now.",
    opted_out: "You will no longer get routine texts from the district. Emergency alerts still reach you by call and email. Reply START to get texts again.",
    opted_in: "Texts from the district are on again.",
};

const ES: Words = Words {
    for_whom: "Este mensaje es para",
    your_children: "Sus hijos en las escuelas afectadas",
    choose: "Elija una opción",
    confirm: "Confirmar",
    received: "He recibido este mensaje",
    save: "Enviar mi respuesta",
    confirmed_at: "Confirmado a las",
    your_choice: "Su respuesta",
    locked: "Ya pasó el plazo para cambiar su respuesta. Llame a la escuela si cambian los planes.",
    change: "Puede cambiar su respuesta hasta",
    drill: "SIMULACRO — esto es una práctica, no una emergencia real.",
    cancelled: "Esta alerta fue cancelada.",
    invalid: "Este enlace no es válido. Puede estar mal escrito.",
    thanks: "Gracias. Su respuesta quedó registrada.",
    closed: "Esta alerta está cerrada. Las respuestas ya no se registran aquí; llame a la escuela si lo necesita.",
    sent_at: "Enviado a las",
    latest_update: "Última actualización",
    not_answered: "No se registró ninguna respuesta.",
    confirmed: "Confirmado",
    message_received: "Recibimos su mensaje y lo pasamos al equipo de seguridad de la escuela.",
    nothing_open: "Gracias. Nada espera su confirmación en este momento.",
    opted_out: "Ya no recibirá textos de rutina del distrito. Las alertas de emergencia le llegarán por llamada y correo. Responda START para recibir textos de nuevo.",
    opted_in: "Los textos del distrito están activados de nuevo.",
};

pub fn words(language: &str) -> &'static Words {
    match language.split(['-', '_']).next().unwrap_or("") {
        "es" => &ES,
        _ => &EN,
    }
}

/// Records an answer for a recipient, whatever the way it came, and counts
/// it; the time to the first confirmation goes into the histogram.
pub async fn record(
    sv: &Services,
    recipient: RecipientId,
    answer: Answer,
    via: &'static str,
) -> Result<AckOutcome, StoreError> {
    let now = sv.now_ms();
    let (outcome, alert) = sv
        .store
        .write_urgent(move |c| {
            let o = alerts::acknowledge(c, recipient, &answer, via, now)?;
            let r = alerts::recipient(c, recipient)?;
            let a = alerts::get(c, crate::domain::AlertId(r.alert_id))?;
            Ok((o, a))
        })
        .await?;
    let label = match outcome {
        AckOutcome::Recorded => "recorded",
        AckOutcome::Changed => "changed",
        AckOutcome::Unchanged => "unchanged",
        AckOutcome::Locked => "locked",
        AckOutcome::Closed => "closed",
        AckOutcome::Cancelled => "cancelled",
    };
    sv.metrics
        .inc("klaxon_acks_total", &[("via", via), ("outcome", label)]);
    if matches!(outcome, AckOutcome::Closed | AckOutcome::Cancelled) {
        sv.metrics.inc(
            "klaxon_rejected_inputs_total",
            &[("kind", "answer-after-close")],
        );
    }
    if outcome == AckOutcome::Recorded
        && let Some(released) = alert.released_at
    {
        sv.metrics.observe(
            "klaxon_time_to_confirmation_seconds",
            &[
                ("via", via),
                ("drill", if alert.drill { "true" } else { "false" }),
            ],
            (now - released) as f64 / 1000.0,
        );
    }
    Ok(outcome)
}
