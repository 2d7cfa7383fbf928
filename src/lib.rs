//! klaxon: an emergency mass-notification daemon.
//!
//! The flow reads top to bottom: a **trigger** creates an alert from a
//! **playbook**; the **audience** is resolved from the **sis** copy; the
//! **deliver** engine hands one message per recipient and channel to the
//! providers from a durable outbox in the **store**; people confirm through
//! **ack**; **track** watches deadlines and escalates; **http** is the one
//! listener for the API, pages, hooks and metrics. `app` wires it all.

pub mod ack;
pub mod app;
pub mod audience;
pub mod cap;
pub mod cli;
pub mod clock;
pub mod config;
pub mod deliver;
pub mod demo;
pub mod domain;
pub mod http;
pub mod markup;
pub mod metrics;
pub mod playbook;
pub mod retention;
pub mod services;
pub mod sis;
pub mod store;
pub mod supervise;
pub mod systemd;
pub mod track;
pub mod trigger;
