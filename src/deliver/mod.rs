//! The delivery engine: a durable outbox in SQLite, rate-limited dispatch to
//! providers, retries with backoff and failover.

pub mod bounce;
pub mod engine;
pub mod events;
pub mod message;
pub mod providers;
pub mod render;
pub mod sms;
