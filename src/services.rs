//! The handles the lifecycle owners share: config, store, delivery engine,
//! metrics, the clock, the tracker's wake-up and the acknowledgement key.
//! `trigger`, `ack` and `track` take `&Services`; only `app` and `http` know
//! about the HTTP-side state around it.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::clock::Clock;
use crate::config::Config;
use crate::deliver::engine::Engine;
use crate::domain::AckKey;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::supervise::TaskHealth;

pub struct Services {
    pub config: Arc<Config>,
    pub store: Store,
    pub engine: Arc<Engine>,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    /// Wakes the deadline tracker when an alert with a sooner deadline arrives.
    pub tracker: Arc<Notify>,
    /// Acknowledgement tokens are derived from this key.
    pub ack_key: AckKey,
    /// Background tasks that panicked recently, for `/readyz`.
    pub tasks: Arc<TaskHealth>,
}

impl Services {
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}
