//! The dispatcher. One lane per channel claims due deliveries from the outbox
//! (most urgent first), picks a healthy provider, waits for that provider's
//! rate limiter, sends, and hands the outcome to the recorder, which commits
//! outcomes in batches.
//!
//! Invariant: the engine keeps no state that matters after a crash. Claims and
//! outcomes are rows; breakers and limiters are rebuilt at start-up.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::BackoffBuilder;
use governor::clock::DefaultClock;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::config::DeliveryConfig;
use crate::deliver::message::SendError;
use crate::deliver::providers::Provider;
use crate::deliver::render::Renderer;
use crate::domain::Channel;
use crate::metrics::Metrics;
use crate::store::deliveries::{self, Claimed, Outcome};
use crate::store::{Store, StoreError};
use crate::supervise::TaskHealth;

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

/// How long the recorder gathers outcomes into one write. Each commit costs
/// WAL frames for every index page it touched and an fsync; a longer window
/// writes a hot page once for more outcomes. Sends do not wait for it (their
/// permits are freed at the provider's answer), only the outcome's commit.
const RECORD_WINDOW: Duration = Duration::from_millis(20);

/// Most rows one claim takes.
const MAX_CLAIM: usize = 1_000;

/// How much work a lane without rate limits claims ahead of its sends, at
/// the rate its providers answer, and at most how many rows that is. A
/// cancel drops these too, before their request leaves (`stop_alert`).
const AHEAD: Duration = Duration::from_millis(100);
const MAX_AHEAD: usize = 4_096;

/// Pace a little under the configured rate, so that network jitter between
/// us and the provider never puts R+1 requests into one of its 1 s windows.
const PACING_MARGIN: f64 = 0.98;

/// The limiter may bank this share of a second's quota, so a send that woke
/// a millisecond late is made up for instead of lost. Together with the
/// margin it stays under R in any one-second window: 0.98 R + 0.01 R < R.
const BURST_SHARE: f64 = 0.01;

/// Latency assumed for a provider before it has answered anything (for the
/// capacity estimate of providers without a rate limit).
const INITIAL_LATENCY_US: u64 = 20_000;

/// A provider with its limiter and breaker.
/// What the capacity check knows of one provider.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotCapacity {
    pub name: String,
    pub channels: Vec<Channel>,
    /// Messages per second it can take.
    pub rate: f64,
    /// Whether `rate` is a configured limit (else observed latency).
    pub limited: bool,
    /// Share of its requests that failed transiently so far.
    pub transient_share: f64,
}

pub struct Slot {
    pub name: String,
    pub channels: Vec<Channel>,
    pub provider: Provider,
    /// Messages per second actually allowed (after senders and margin); None = unlimited.
    pub rate: Option<f64>,
    limiter: Option<Limiter>,
    /// Tasks pass the limiter one at a time, first come first served:
    /// governor does not serve its waiters in order, and the claim order is
    /// the priority order that must be kept.
    turn: tokio::sync::Mutex<()>,
    breaker: Mutex<Breaker>,
    /// Moving average of request latency, for the capacity estimate of a
    /// provider without a rate limit: in flight / latency.
    latency: Latency,
}

impl Slot {
    pub fn new(
        name: String,
        channels: Vec<Channel>,
        provider: Provider,
        rate: Option<f64>,
        cfg: &DeliveryConfig,
    ) -> Slot {
        let limiter = rate.map(|r| {
            let period = Duration::from_secs_f64(1.0 / (r * PACING_MARGIN));
            let burst =
                NonZeroU32::new((r * BURST_SHARE).floor() as u32).unwrap_or(NonZeroU32::MIN);
            let quota = Quota::with_period(period)
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                .allow_burst(burst);
            RateLimiter::direct(quota)
        });
        Slot {
            name,
            channels,
            provider,
            rate,
            limiter,
            turn: tokio::sync::Mutex::new(()),
            breaker: Mutex::new(Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown.0)),
            latency: Latency::new(INITIAL_LATENCY_US),
        }
    }

    /// Messages per second: the rate limit, or without one what the
    /// observed latency allows with `concurrency` requests in flight.
    fn rate_at(&self, concurrency: usize) -> f64 {
        self.rate
            .unwrap_or_else(|| concurrency as f64 / self.latency.seconds())
    }
}

/// A moving average of request latency in microseconds: each answer
/// weighs an eighth, so about twenty answers replace the starting guess.
struct Latency(std::sync::atomic::AtomicU64);

impl Latency {
    fn new(us: u64) -> Latency {
        Latency(std::sync::atomic::AtomicU64::new(us))
    }

    fn observe(&self, took: Duration) {
        let sample = took.as_micros().min(u64::MAX as u128) as u64;
        let _ = self.0.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |old| Some(old - old / 8 + sample / 8),
        );
    }

    /// The average, at least 100 µs (a rate from it stays finite).
    fn seconds(&self) -> f64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed).max(100) as f64 / 1e6
    }
}

/// How long tasks wait for the one probe a half-open breaker lets through.
const PROBE_WAIT: Duration = Duration::from_millis(100);

/// Skips a provider that keeps failing, for a cooling-off period that doubles
/// while it keeps failing (hysteresis: after the pause one probe goes through;
/// its failure re-opens the breaker, its success closes it). Timed on the
/// monotonic clock, so a wall-clock step cannot stretch or skip a pause.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    base: Duration,
    cooldown: Duration,
    failures: u32,
    open_until: Option<Instant>,
    /// A half-open breaker has let its one probe through and awaits it.
    probing: bool,
}

impl Breaker {
    pub fn new(threshold: u32, base: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            base,
            cooldown: base,
            failures: 0,
            open_until: None,
            probing: false,
        }
    }

    /// `None` when a request may go now; otherwise when to look again.
    pub fn blocked_until(&self, now: Instant) -> Option<Instant> {
        match self.open_until {
            None => None,
            Some(t) if now < t => Some(t),
            Some(_) if self.probing => Some(now + PROBE_WAIT),
            Some(_) => None,
        }
    }

    /// Lets a request through if the breaker allows one; a half-open
    /// breaker lets exactly one (the probe) through.
    pub fn admit(&mut self, now: Instant) -> bool {
        if self.blocked_until(now).is_some() {
            return false;
        }
        if self.open_until.is_some() {
            self.probing = true;
        }
        true
    }

    pub fn success(&mut self) {
        self.failures = 0;
        self.open_until = None;
        self.cooldown = self.base;
        self.probing = false;
    }

    pub fn failure(&mut self, now: Instant) {
        let half_open = self.open_until.is_some_and(|t| now >= t);
        self.failures += 1;
        if half_open || self.failures >= self.threshold {
            self.open_until = Some(now + self.cooldown);
            self.cooldown = (self.cooldown * 2).min(Duration::from_secs(5 * 60));
            self.failures = 0;
        }
        self.probing = false;
    }
}

/// A breaker as the console shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests go through; `failures` in a row so far.
    Closed { failures: u32 },
    /// Skipped for this long yet.
    Open { for_: Duration },
    /// The pause is over; one probe decides.
    HalfOpen,
}

impl Breaker {
    /// What the breaker does now, read-only.
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.open_until {
            None => BreakerState::Closed {
                failures: self.failures,
            },
            Some(t) if now < t => BreakerState::Open { for_: t - now },
            Some(_) => BreakerState::HalfOpen,
        }
    }
}

/// One provider's health, for the console's overview.
#[derive(Debug, Clone)]
pub struct ProviderHealth {
    pub name: String,
    pub channels: Vec<Channel>,
    /// Messages per second allowed; `None` when unlimited.
    pub rate: Option<f64>,
    pub breaker: BreakerState,
}

/// When a failed delivery stops being retried: the ack deadline for a first
/// delivery, the end of the escalation stage for an escalation (ms on the
/// engine's `Clock`); `None` when it has none, and then
/// `delivery.max_attempts` bounds the retries instead.
fn retry_window(c: &Claimed) -> Option<i64> {
    c.retry_until
}

pub struct Engine {
    store: Store,
    clock: Clock,
    slots: Vec<Arc<Slot>>,
    renderer: Renderer,
    cfg: DeliveryConfig,
    metrics: Arc<Metrics>,
    wake: HashMap<Channel, Arc<Notify>>,
    /// Alerts cancelled since start: rows of theirs already claimed (waiting
    /// for a permit, the limiter or a provider) are dropped before their
    /// request leaves. A restart's recovery cancels them in the store.
    cancelled: std::sync::RwLock<std::collections::HashSet<i64>>,
}

impl Engine {
    pub fn new(
        store: Store,
        clock: Clock,
        slots: Vec<Slot>,
        renderer: Renderer,
        cfg: DeliveryConfig,
        metrics: Arc<Metrics>,
    ) -> Engine {
        let slots: Vec<Arc<Slot>> = slots.into_iter().map(Arc::new).collect();
        // Every channel gets a lane, even one without a provider: its
        // deliveries (from a fallback or a take-over) are then closed as
        // failed with a reason instead of waiting forever.
        let wake = Channel::ALL
            .iter()
            .map(|c| (*c, Arc::new(Notify::new())))
            .collect();
        Engine {
            store,
            clock,
            slots,
            renderer,
            cfg,
            metrics,
            wake,
            cancelled: Default::default(),
        }
    }

    /// After an alert's cancel is committed: nothing of it that lanes hold
    /// is sent any more.
    pub fn stop_alert(&self, alert: i64) {
        if let Ok(mut set) = self.cancelled.write() {
            set.insert(alert);
        }
    }

    fn is_stopped(&self, alert: i64) -> bool {
        self.cancelled
            .read()
            .map(|set| set.contains(&alert))
            .unwrap_or(false)
    }

    /// Tells every lane that new work may be due.
    pub fn kick(&self) {
        for n in self.wake.values() {
            n.notify_one();
        }
    }

    pub fn renderer(&self) -> &Renderer {
        &self.renderer
    }

    /// Every configured provider, for the parts that need more than sending
    /// (event webhook keys, bounce mailboxes).
    pub fn providers(&self) -> impl Iterator<Item = &Provider> {
        self.slots.iter().map(|s| &s.provider)
    }

    fn slots_for(&self, channel: Channel) -> Vec<Arc<Slot>> {
        self.slots
            .iter()
            .filter(|s| s.channels.contains(&channel))
            .cloned()
            .collect()
    }

    /// Each provider's rate and breaker, read without changing anything.
    pub fn health(&self) -> Vec<ProviderHealth> {
        let now = Instant::now();
        self.slots
            .iter()
            .map(|s| ProviderHealth {
                name: s.name.clone(),
                channels: s.channels.clone(),
                rate: s.rate,
                breaker: s
                    .breaker
                    .lock()
                    .map(|b| b.state(now))
                    .unwrap_or(BreakerState::Closed { failures: 0 }),
            })
            .collect()
    }

    /// Channels that have at least one provider.
    pub fn channels(&self) -> Vec<Channel> {
        Channel::ALL
            .into_iter()
            .filter(|c| self.slots.iter().any(|s| s.channels.contains(c)))
            .collect()
    }

    /// Messages per second one channel can carry (sum over its providers):
    /// the rate limit, or for an unlimited provider what its observed
    /// latency allows at the configured concurrency.
    pub fn channel_rate(&self, channel: Channel) -> f64 {
        self.slots_for(channel)
            .iter()
            .map(|s| s.rate_at(self.cfg.concurrency))
            .sum()
    }

    /// Each provider's channels and sustainable rate (messages per second,
    /// as `channel_rate` counts it) and the share of its requests that failed
    /// transiently since start (each costs a retry), for the capacity check.
    pub fn capacity(&self) -> Vec<SlotCapacity> {
        self.slots
            .iter()
            .map(|s| {
                let get = |outcome| {
                    self.metrics.get(
                        "klaxon_provider_requests_total",
                        &[("provider", &s.name), ("outcome", outcome)],
                    ) as f64
                };
                let transient = get("transient");
                let all = transient + get("accepted") + get("permanent");
                SlotCapacity {
                    name: s.name.clone(),
                    channels: s.channels.clone(),
                    rate: s.rate_at(self.cfg.concurrency),
                    limited: s.rate.is_some(),
                    transient_share: if all > 0.0 { transient / all } else { 0.0 },
                }
            })
            .collect()
    }

    /// How long handing over `counts` deliveries per channel takes at the
    /// configured rates (channels run in parallel).
    pub fn estimate(&self, counts: &HashMap<Channel, i64>) -> Duration {
        counts
            .iter()
            .filter(|(ch, _)| self.channel_rate(**ch) > 0.0)
            .map(|(ch, n)| Duration::from_secs_f64(*n as f64 / self.channel_rate(*ch)))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Starts the lanes and the recorder, each supervised (a panic is
    /// counted and the task restarted). They stop when `shutdown` turns
    /// true: lanes stop claiming, sends in flight finish, the recorder
    /// commits what it has, then the handles complete.
    pub fn spawn(
        self: &Arc<Self>,
        shutdown: watch::Receiver<bool>,
        health: Arc<TaskHealth>,
    ) -> Vec<JoinHandle<()>> {
        let (tx, rx) = mpsc::unbounded_channel::<(i64, Outcome)>();
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let mut handles = Vec::new();
        for (channel, wake) in &self.wake {
            let (engine, tx, shutdown, wake, channel) = (
                self.clone(),
                tx.clone(),
                shutdown.clone(),
                wake.clone(),
                *channel,
            );
            let name: &'static str = match channel {
                Channel::Sms => "lane-sms",
                Channel::Voice => "lane-voice",
                Channel::Email => "lane-email",
            };
            handles.push(crate::supervise::spawn(
                name,
                self.metrics.clone(),
                health.clone(),
                self.clock.clone(),
                move || {
                    let (engine, tx, shutdown, wake) =
                        (engine.clone(), tx.clone(), shutdown.clone(), wake.clone());
                    async move { engine.lane(channel, wake, tx, shutdown).await }
                },
            ));
        }
        drop(tx);
        let engine = self.clone();
        handles.push(crate::supervise::spawn(
            "recorder",
            self.metrics.clone(),
            health,
            self.clock.clone(),
            move || {
                let (engine, rx) = (engine.clone(), rx.clone());
                async move { engine.recorder(rx).await }
            },
        ));
        handles
    }

    async fn lane(
        self: Arc<Self>,
        channel: Channel,
        wake: Arc<Notify>,
        results: mpsc::UnboundedSender<(i64, Outcome)>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let slots = self.slots_for(channel);
        // Hold no more than about half a second of work at the channel's
        // rate in flight (claimed, waiting for the limiter or the provider),
        // so an emergency queued later is not stuck behind routine messages.
        let rate = self.channel_rate(channel);
        let all_limited = !slots.is_empty() && slots.iter().all(|s| s.rate.is_some());
        let mut concurrency = self.cfg.concurrency * slots.len().max(1);
        if all_limited {
            concurrency = concurrency.min(((rate * 0.5).ceil() as usize).max(2));
        }
        let permits = Arc::new(Semaphore::new(concurrency));
        // Claimed rows wait here for a permit. The next claim runs on the
        // writer while these are sent: a lane that claimed only when its
        // permits came back sat idle for every claim's round trip, and
        // during a fan-out's materialization that round trip is long.
        // At most `ahead` more rows than can be in flight are claimed. None
        // on a rate-limited channel, whose limiter is its pace anyway (there,
        // rows claimed ahead were only more work to go out after a cancel).
        // Without limits, `AHEAD` of work at the rate the provider answers:
        // while an audience is written a claim waits behind its chunks, and
        // with only one concurrency of rows ahead email went out at a third
        // of its pace until the audience was written.
        let mut ready: VecDeque<Claimed> = VecDeque::with_capacity(concurrency * 2);
        let mut claiming: Option<JoinHandle<Result<Vec<Claimed>, StoreError>>> = None;
        // The last claim found nothing due: wait for a kick or the next due row.
        let mut dry: Option<Instant> = None;
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let ahead = if all_limited {
                0
            } else {
                ((self.channel_rate(channel) * AHEAD.as_secs_f64()) as usize)
                    .clamp(concurrency, MAX_AHEAD.max(concurrency))
            };
            let budget = concurrency + ahead;
            let batch = (budget / 4).max(1);
            let in_flight = concurrency - permits.available_permits();
            let room = budget.saturating_sub(in_flight + ready.len());
            // Claim in batches: a claim per returned permit was a writer
            // job (savepoint, often a commit) for a row or two.
            if claiming.is_none()
                && dry.is_none()
                && (room >= batch || (room > 0 && ready.is_empty()))
            {
                // Every provider of the channel is cooling off: leave the rows
                // queued (no attempt spent) until the first one reopens.
                if let Some(until) = Self::all_blocked_until(&slots, Instant::now()) {
                    if ready.is_empty() {
                        tokio::select! {
                            _ = tokio::time::sleep_until(until) => {}
                            _ = shutdown.changed() => {}
                        }
                        continue;
                    }
                } else {
                    let limit = room.clamp(1, MAX_CLAIM) as i64;
                    // "Due" is judged when the claim runs on the writer, so a row
                    // committed just before it is never missed.
                    let (store, clock) = (self.store.clone(), self.clock.clone());
                    claiming = Some(tokio::spawn(async move {
                        store
                            .write(move |c| deliveries::claim(c, channel, clock.now_ms(), limit))
                            .await
                    }));
                }
            }
            tokio::select! {
                r = async { claiming.as_mut().expect("guarded").await }, if claiming.is_some() => {
                    claiming = None;
                    match r {
                        Ok(Ok(rows)) if rows.is_empty() => {
                            let next = self
                                .store
                                .read(move |c| deliveries::next_due(c, channel))
                                .await
                                .ok()
                                .flatten();
                            let wait = next
                                .map(|t| Duration::from_millis((t - self.clock.now_ms()).clamp(0, 1000) as u64))
                                .unwrap_or(Duration::from_secs(1));
                            dry = Some(Instant::now() + wait);
                        }
                        Ok(Ok(rows)) => {
                            // An emergency claimed now goes ahead of the
                            // routine rows already waiting (a stable sort:
                            // each priority keeps its order).
                            ready.extend(rows);
                            ready.make_contiguous().sort_by_key(|c| c.priority);
                        }
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, %channel, "Cannot claim deliveries; retrying in 1 s.");
                            dry = Some(Instant::now() + Duration::from_secs(1));
                        }
                        Err(e) => {
                            tracing::error!(error = %e, %channel, "A claim stopped; retrying in 1 s.");
                            dry = Some(Instant::now() + Duration::from_secs(1));
                        }
                    }
                }
                p = permits.clone().acquire_owned(), if !ready.is_empty() => {
                    let Ok(permit) = p else { break };
                    let c = ready.pop_front().expect("guarded");
                    let engine = self.clone();
                    let slots = slots.clone();
                    let results = results.clone();
                    tasks.spawn(async move {
                        let outcome = engine.send_one(&slots, &c).await;
                        let _ = results.send((c.id, outcome));
                        drop(permit);
                    });
                }
                // A send finished: its permit is back, so there may be room.
                _ = tasks.join_next(), if !tasks.is_empty() => {}
                _ = wake.notified(), if dry.is_some() => dry = None,
                _ = tokio::time::sleep_until(dry.unwrap_or_else(Instant::now)), if dry.is_some() => dry = None,
                _ = shutdown.changed() => {}
            }
        }
        // Rows claimed but not sent go back to the queue now, not at the
        // next start's recovery; a claim still running is waited for first.
        if let Some(h) = claiming.take()
            && let Ok(Ok(rows)) = h.await
        {
            ready.extend(rows);
        }
        if !ready.is_empty() {
            let ids: Vec<i64> = ready.iter().map(|c| c.id).collect();
            let now = self.clock.now_ms();
            if let Err(e) = self
                .store
                .write(move |c| deliveries::unclaim(c, &ids, now))
                .await
            {
                tracing::warn!(error = %e, %channel, "Claimed rows not sent stay claimed until the next start puts them back.");
            }
        }
        // Finish what is in flight so its outcome is recorded, not re-sent.
        while tasks.join_next().await.is_some() {}
    }

    /// When every provider in `slots` is cooling off, the earliest moment
    /// one may take a request again; `None` if one can take it now.
    fn all_blocked_until(slots: &[Arc<Slot>], now: Instant) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        for s in slots {
            let blocked = s.breaker.lock().ok().and_then(|b| b.blocked_until(now));
            match blocked {
                None => return None,
                Some(t) => earliest = Some(earliest.map_or(t, |e| e.min(t))),
            }
        }
        earliest
    }

    /// A provider that takes the request now, preferring one other than
    /// `avoid` (the last one tried); `None` when all are cooling off.
    fn choose(&self, slots: &[Arc<Slot>], avoid: Option<&str>, now: Instant) -> Option<Arc<Slot>> {
        let admit = |s: &&Arc<Slot>| s.breaker.lock().map(|mut b| b.admit(now)).unwrap_or(true);
        slots
            .iter()
            .filter(|s| Some(s.name.as_str()) != avoid)
            .find(admit)
            .or_else(|| {
                slots
                    .iter()
                    .filter(|s| Some(s.name.as_str()) == avoid)
                    .find(admit)
            })
            .cloned()
    }

    async fn send_one(&self, slots: &[Arc<Slot>], c: &Claimed) -> Outcome {
        let Some(first) = slots.first() else {
            return Outcome::GaveUp {
                provider: String::new(),
                error: format!("no provider configured for {}", c.channel),
            };
        };
        // Rendered before a provider is chosen: a breaker's probe, once
        // admitted, must reach the provider and report back.
        let msg = match self.renderer.render(c) {
            Ok(m) => m,
            Err(e) => {
                return Outcome::GaveUp {
                    provider: first.name.clone(),
                    error: format!("cannot render message: {e}"),
                };
            }
        };
        // Every provider cooling off: wait for one, spending no attempt.
        let slot = loop {
            let now = Instant::now();
            if let Some(s) = self.choose(slots, c.last_provider.as_deref(), now) {
                break s;
            }
            let until = Self::all_blocked_until(slots, now).unwrap_or(now + PROBE_WAIT);
            tokio::time::sleep_until(until).await;
        };
        if let Some(l) = &slot.limiter {
            let _turn = slot.turn.lock().await;
            l.until_ready().await;
        }
        // Checked once the limiter let it through, the last moment before
        // the request leaves: a cancel stops rows claimed ahead too.
        if self.is_stopped(c.alert_id) {
            return Outcome::Cancelled;
        }
        let asked = Instant::now();
        let result = match tokio::time::timeout(
            self.cfg.request_timeout.0,
            slot.provider.send(&msg),
        )
        .await
        {
            Ok(r) => {
                if !matches!(r, Err(SendError::Transient { .. })) {
                    slot.latency.observe(asked.elapsed());
                }
                r
            }
            Err(_) => Err(SendError::Transient {
                reason: format!("no answer within {}", self.cfg.request_timeout),
                retry_after: None,
            }),
        };
        let now = Instant::now();
        let now_ms = self.clock.now_ms();
        match result {
            Ok(accepted) => {
                if let Ok(mut b) = slot.breaker.lock() {
                    b.success();
                }
                if !c.escalation
                    && let Some(released) = c.released_at
                {
                    self.metrics.observe(
                        "klaxon_time_to_handover_seconds",
                        &[
                            ("channel", c.channel.as_str()),
                            ("drill", if c.drill { "true" } else { "false" }),
                        ],
                        (now_ms - released) as f64 / 1000.0,
                    );
                }
                self.metrics.inc(
                    "klaxon_provider_requests_total",
                    &[("provider", &slot.name), ("outcome", "accepted")],
                );
                Outcome::Sent {
                    provider: slot.name.clone(),
                    message_id: accepted.provider_message_id,
                }
            }
            Err(SendError::Permanent { code, reason }) => {
                // The provider works; the address does not.
                if let Ok(mut b) = slot.breaker.lock() {
                    b.success();
                }
                self.metrics.inc(
                    "klaxon_provider_requests_total",
                    &[("provider", &slot.name), ("outcome", "permanent")],
                );
                tracing::info!(delivery = c.id, provider = %slot.name, code = %code, "Address refused permanently.");
                Outcome::Undeliverable {
                    provider: slot.name.clone(),
                    code,
                    error: reason,
                }
            }
            Err(SendError::Transient {
                reason,
                retry_after,
            }) => {
                if let Ok(mut b) = slot.breaker.lock() {
                    b.failure(now);
                }
                self.metrics.inc(
                    "klaxon_provider_requests_total",
                    &[("provider", &slot.name), ("outcome", "transient")],
                );
                tracing::warn!(delivery = c.id, provider = %slot.name, error = %reason, "Send failed; will retry.");
                self.retry_outcome(slots, c, &slot, reason, retry_after)
            }
        }
    }

    /// Decides when (and whether) a transiently failed delivery is tried again.
    fn retry_outcome(
        &self,
        slots: &[Arc<Slot>],
        c: &Claimed,
        slot: &Slot,
        reason: String,
        retry_after: Option<Duration>,
    ) -> Outcome {
        let attempts = c.attempts as u32 + 1;
        let window = retry_window(c);
        if window.is_none() && attempts >= self.cfg.max_attempts {
            return Outcome::GaveUp {
                provider: slot.name.clone(),
                error: format!("{reason} (gave up after {attempts} attempts)"),
            };
        }
        // Another healthy provider for this channel: fail over at once.
        let now = Instant::now();
        let other = slots.iter().any(|s| {
            s.name != slot.name
                && s.breaker
                    .lock()
                    .map(|b| b.blocked_until(now).is_none())
                    .unwrap_or(false)
        });
        let delay = if other && retry_after.is_none() {
            Duration::ZERO
        } else {
            let backoff = backon::ExponentialBuilder::default()
                .with_min_delay(self.cfg.retry_initial.0)
                .with_max_delay(self.cfg.retry_max.0)
                .with_jitter()
                .with_max_times(usize::MAX)
                .build()
                .nth(attempts.saturating_sub(1) as usize)
                .unwrap_or(self.cfg.retry_max.0);
            backoff.max(retry_after.unwrap_or(Duration::ZERO))
        };
        let delay_ms = delay.as_millis() as i64;
        // Past the window the message has lost its purpose; the person is
        // escalated or listed as not reached instead. Escalations have their own window (the escalation stage).
        if window.is_some_and(|d| self.clock.now_ms() + delay_ms > d) {
            return Outcome::GaveUp {
                provider: slot.name.clone(),
                error: format!("{reason} (the alert's window closed)"),
            };
        }
        Outcome::Retry {
            provider: slot.name.clone(),
            error: reason,
            next_at: self.clock.now_ms() + delay_ms,
        }
    }

    /// Commits outcomes in batches: whatever arrived within a few ms, one
    /// transaction. Retries wake the lanes so they are picked up when due.
    async fn recorder(
        self: Arc<Self>,
        rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<(i64, Outcome)>>>,
    ) {
        let mut rx = rx.lock().await;
        let mut batch = Vec::with_capacity(2048);
        while let Some(first) = rx.recv().await {
            batch.push(first);
            let until = tokio::time::Instant::now() + RECORD_WINDOW;
            while batch.len() < 2048 {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(o)) => batch.push(o),
                    _ => break,
                }
            }
            let retry = batch
                .iter()
                .any(|(_, o)| matches!(o, Outcome::Retry { .. } | Outcome::Undeliverable { .. }));
            let items = std::mem::take(&mut batch);
            let n = items.len();
            // A commit that fails is retried: these outcomes are the only
            // record that the messages went out.
            let items = Arc::new(items);
            loop {
                let items = items.clone();
                let clock = self.clock.clone();
                match self
                    .store
                    .write(move |c| deliveries::record(c, clock.now_ms(), &items))
                    .await
                {
                    Ok(settled) => {
                        for alert in settled {
                            tracing::info!(
                                alert,
                                "Every delivery of the alert has left the queue."
                            );
                        }
                        break;
                    }
                    Err(crate::store::StoreError::Closed) => {
                        tracing::error!(
                            outcomes = n,
                            "Store closed before outcomes were recorded; they will be re-sent after restart."
                        );
                        return;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, outcomes = n, "Cannot record outcomes; retrying.");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            if retry {
                self.kick();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_moves_from_the_guess_to_what_the_provider_answers_in() {
        let l = Latency::new(INITIAL_LATENCY_US);
        assert_eq!(l.seconds(), 0.020);
        l.observe(Duration::from_millis(4));
        let one = l.seconds();
        assert!(
            one < 0.020 && one > 0.017,
            "an answer weighs an eighth: {one}"
        );
        for _ in 0..60 {
            l.observe(Duration::from_millis(4));
        }
        assert!((l.seconds() - 0.004).abs() < 0.0002, "{}", l.seconds());
        for _ in 0..60 {
            l.observe(Duration::ZERO);
        }
        assert_eq!(l.seconds(), 0.0001, "never zero: a rate stays finite");
    }

    #[test]
    fn breaker_opens_after_threshold_and_lets_one_probe_through_after_the_pause() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut b = Breaker::new(3, Duration::from_secs(1));
        b.failure(at(0));
        b.failure(at(1));
        assert!(b.admit(at(2)));
        b.failure(at(2));
        assert_eq!(
            b.blocked_until(at(3)),
            Some(at(1002)),
            "opens at the threshold"
        );
        assert!(!b.admit(at(3)));
        assert!(b.admit(at(1002)), "half-open after the cooling-off period");
        assert!(!b.admit(at(1003)), "only one probe while half-open");
        b.failure(at(1004));
        assert!(!b.admit(at(1005)), "the probe's failure re-opens it");
        assert_eq!(
            b.blocked_until(at(2000)),
            Some(at(3004)),
            "and the pause doubled"
        );
        assert!(b.admit(at(3004)));
        b.success();
        assert!(b.admit(at(3005)), "closed again after the probe succeeds");
        assert!(b.admit(at(3005)));
    }

    #[test]
    fn breaker_state_reads_without_changing_it() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut b = Breaker::new(2, Duration::from_secs(1));
        b.failure(at(0));
        assert_eq!(b.state(at(1)), BreakerState::Closed { failures: 1 });
        b.failure(at(1));
        assert_eq!(
            b.state(at(201)),
            BreakerState::Open {
                for_: Duration::from_millis(800)
            }
        );
        assert_eq!(b.state(at(1001)), BreakerState::HalfOpen);
        assert!(
            b.admit(at(1001)),
            "reading the state let the probe through still"
        );
    }
}
