//! Acknowledgements: the words the confirmation page uses in each language,
//! and the one function every way of confirming goes through (the web page,
//! an SMS reply, a key pressed on a call).

use crate::app::AppState;
use crate::store::alerts::{self, AckOutcome};
use crate::store::{StoreError, now_ms};

/// Words of the acknowledgement page, per language (English fallback).
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
};

pub fn words(language: &str) -> &'static Words {
    match language.split(['-', '_']).next().unwrap_or("") {
        "es" => &ES,
        _ => &EN,
    }
}

/// Records an acknowledgement for a recipient, whatever the way it came.
pub async fn record(
    state: &AppState,
    recipient_id: i64,
    choice: Option<String>,
    via: &'static str,
) -> Result<AckOutcome, StoreError> {
    let now = now_ms();
    let outcome = state
        .store
        .write(move |c| alerts::acknowledge(c, recipient_id, choice.as_deref(), via, now))
        .await?;
    let label = match outcome {
        AckOutcome::Recorded => "recorded",
        AckOutcome::Changed => "changed",
        AckOutcome::Unchanged => "unchanged",
        AckOutcome::Locked => "locked",
    };
    state
        .metrics
        .inc("klaxon_acks_total", &[("via", via), ("outcome", label)]);
    Ok(outcome)
}
