//! Build and run: wires config, store, providers, engine, tracker, SIS watch
//! folder and the HTTP listener, and owns the shutdown order.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{Notify, watch};

use crate::clock::Clock;
use crate::config::{Config, ConfigIssue, Issues};
use crate::deliver::engine::{Engine, Slot};
use crate::deliver::providers::{Provider, ProviderContext};
use crate::deliver::render::Renderer;
use crate::metrics::Metrics;
use crate::services::Services;
use crate::store::{Store, deliveries};
use crate::supervise::TaskHealth;

/// What the HTTP side shares: the lifecycle owners' `Services`, plus what
/// only request handlers need. Derefs to `Services`.
pub struct AppState {
    pub services: Arc<Services>,
    /// Auth tokens of the Twilio providers, for checking callback signatures.
    pub twilio_tokens: Vec<String>,
    pub started_at: i64,
    /// Console sign-in: the identity provider and the sign-in limiter.
    pub auth: crate::http::session::Auth,
    /// The console's live event streams: capped, and ended at shutdown.
    pub streams: Arc<crate::http::console::events::Streams>,
}

impl std::ops::Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.services
    }
}

/// Builds every provider in the config, resolving secrets. Used by the daemon
/// and by `check-config`, so a missing secret is found before it matters.
pub fn build_providers(config: &Config) -> Result<(Vec<Slot>, Vec<String>), Vec<ConfigIssue>> {
    let mut issues = Issues::default();
    let http = reqwest::Client::builder()
        .timeout(config.delivery.request_timeout.0)
        .pool_max_idle_per_host(config.delivery.concurrency)
        .build()
        .map_err(|e| {
            vec![ConfigIssue {
                key: "providers".into(),
                line: None,
                message: format!("cannot build the HTTP client: {e}"),
            }]
        })?;
    let ctx = ProviderContext {
        public_url: config.server.public_url.clone(),
        base_dir: config.base_dir.clone(),
        http,
    };
    let mut slots = Vec::new();
    let mut tokens = Vec::new();
    for (i, p) in config.providers.iter().enumerate() {
        let common = p.common();
        if let Some(provider) = Provider::build(&format!("providers[{i}]"), p, &ctx, &mut issues) {
            tokens.extend(provider.callback_tokens().into_iter().map(str::to_string));
            let rate = provider.effective_rate();
            slots.push(Slot::new(
                common.name,
                common.channels,
                provider,
                rate,
                &config.delivery,
            ));
        }
    }
    if issues.is_empty() {
        Ok((slots, tokens))
    } else {
        Err(issues.list)
    }
}

/// A built daemon, listener bound, not yet running.
pub struct App {
    state: Arc<AppState>,
    /// The store folder's lock, held until the store is closed.
    store_lock: crate::store::guard::StoreLock,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
}

impl App {
    /// Opens the store, re-queues deliveries a crash left in flight, builds
    /// the providers and binds the listener (port 0 picks a free one).
    pub async fn build(config: Config) -> anyhow::Result<App> {
        App::build_with_clock(config, Clock::system()).await
    }

    /// As `build`, with the clock every deadline reads (tests move it).
    pub async fn build_with_clock(config: Config, clock: Clock) -> anyhow::Result<App> {
        let store_dir = config.store_dir();
        // Before recovery: a second daemon must not requeue the first one's
        // sends in flight (they would go out twice).
        let store_lock = crate::store::guard::StoreLock::acquire(&store_dir)?;
        // Once per existing store: retention's freed pages go back to the
        // file system (a new store gets this from `Store::open`).
        match crate::store::retention::enable_incremental_vacuum(&store_dir) {
            Ok(true) => tracing::info!("The store now vacuums incrementally (a one-time rewrite)."),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "Cannot switch the store to incremental vacuum; it keeps its size after purges.")
            }
        }
        let store = Store::open(&store_dir, config.store.synchronous == "full")
            .with_context(|| format!("opening the store in {}", store_dir.display()))?;
        let ack_key = crate::store::keyfile::load_or_create(&store_dir).with_context(|| {
            format!("reading the acknowledgement key in {}", store_dir.display())
        })?;
        let now = clock.now_ms();
        let requeued = store.write(move |c| deliveries::recover(c, now)).await?;
        if requeued > 0 {
            tracing::warn!(
                requeued,
                "Deliveries left in flight by a previous run were put back in the queue."
            );
        }
        let (slots, twilio_tokens) = build_providers(&config).map_err(|issues| {
            anyhow::anyhow!(
                "provider configuration:\n{}",
                issues
                    .iter()
                    .map(|i| format!("  - {i}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })?;
        let oidc = crate::http::oidc::OidcClient::build(&config).map_err(|issues| {
            anyhow::anyhow!(
                "[oidc] configuration:\n{}",
                issues
                    .iter()
                    .map(|i| format!("  - {i}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })?;
        let metrics = Arc::new(Metrics::default());
        let renderer = Renderer::new(
            &config.playbooks,
            &config.server.public_url,
            config.delivery.sms_max_segments,
            ack_key.clone(),
        );
        let engine = Arc::new(Engine::new(
            store.clone(),
            clock.clone(),
            slots,
            renderer,
            config.delivery.clone(),
            metrics.clone(),
        ));
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("binding the HTTP listener to {}", config.server.listen))?;
        let addr = listener.local_addr()?;
        let services = Arc::new(Services {
            config: Arc::new(config),
            store,
            engine,
            metrics,
            clock,
            tracker: Arc::new(Notify::new()),
            ack_key,
            tasks: Arc::new(TaskHealth::default()),
        });
        let state = Arc::new(AppState {
            services,
            twilio_tokens,
            started_at: now,
            auth: crate::http::session::Auth::new(oidc),
            streams: Arc::default(),
        });
        Ok(App {
            state,
            store_lock,
            listener,
            addr,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` completes, then stops in this order:
    /// 1. the listener stops accepting; requests in flight (acknowledgements
    ///    above all) finish and commit;
    /// 2. the engine stops claiming; sends in flight finish and their
    ///    outcomes are committed, so they are not sent again after restart;
    /// 3. the tracker and the watch folder stop;
    /// 4. the store's writer drains and closes.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let App {
            state,
            store_lock,
            listener,
            addr,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let sv = state.services.clone();
        let engine_tasks = sv.engine.spawn(stop_rx.clone(), sv.tasks.clone());
        let tracker = {
            let (sv2, stop) = (sv.clone(), stop_rx.clone());
            crate::supervise::spawn(
                "tracker",
                sv.metrics.clone(),
                sv.tasks.clone(),
                sv.clock.clone(),
                move || crate::track::run(sv2.clone(), stop.clone()),
            )
        };
        let pager = {
            let (sv2, stop) = (sv.clone(), stop_rx.clone());
            crate::supervise::spawn(
                "approval-pager",
                sv.metrics.clone(),
                sv.tasks.clone(),
                sv.clock.clone(),
                move || crate::trigger::pager::run(sv2.clone(), stop.clone()),
            )
        };
        let watcher = spawn_sis_watch(&state, stop_rx.clone());
        let mut feeds = crate::trigger::feed::spawn_all(&state, stop_rx.clone());
        feeds.extend(crate::trigger::watch::spawn(&state, stop_rx.clone()));
        // Bounce mailboxes (IMAP) of SMTP providers; stopped like the feeds.
        feeds.extend(crate::deliver::bounce::spawn_all(&sv, stop_rx.clone()));
        let syncer = spawn_sis_sync(&state, stop_rx.clone());
        let retention = {
            let (sv2, stop) = (sv.clone(), stop_rx.clone());
            crate::supervise::spawn(
                "retention",
                sv.metrics.clone(),
                sv.tasks.clone(),
                sv.clock.clone(),
                move || crate::retention::run(sv2.clone(), stop.clone()),
            )
        };
        // Alerts a crash interrupted while their audience was being written.
        let resumer = sv.clone();
        tokio::spawn(async move {
            match crate::trigger::resume(&resumer).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(alerts = n, "Completed alerts interrupted by a crash."),
                Err(e) => {
                    tracing::error!(error = %e, "Cannot complete alerts interrupted by a crash.")
                }
            }
        });
        let router = crate::http::router(state.clone());
        tracing::info!(%addr, "Listening.");
        crate::systemd::notify_ready();
        let watchdog = crate::systemd::spawn_watchdog(stop_rx.clone());

        let grace = state.config.server.shutdown_grace.0;
        let server = spawn_server(&state, listener, router, stop_rx.clone(), grace);
        shutdown.await;
        tracing::info!("Shutting down: no new requests.");
        // Live views would otherwise hold their connections for the grace.
        state.streams.close_all();
        crate::systemd::notify_stopping();
        let _ = stop_tx.send(true);
        // One deadline for every step, so SIGTERM is answered within the
        // grace period whatever clients and providers do.
        let deadline = tokio::time::Instant::now() + grace;
        let _ = tokio::time::timeout_at(deadline, server).await;
        tracing::info!("Finishing sends in flight.");
        for t in engine_tasks {
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                tracing::warn!(
                    "Sends still in flight after the grace period; they will be re-sent after restart."
                );
            }
        }
        let short = deadline.min(tokio::time::Instant::now() + Duration::from_secs(2));
        for mut t in [tracker, pager] {
            if tokio::time::timeout_at(short, &mut t).await.is_err() {
                t.abort();
            }
        }
        if let Some(mut w) = watcher
            && tokio::time::timeout_at(short, &mut w).await.is_err()
        {
            w.abort();
        }
        for mut f in feeds {
            if tokio::time::timeout_at(short, &mut f).await.is_err() {
                // A poll still waiting on the network: its message is not
                // claimed yet, or is released, and is seen again after restart.
                f.abort();
            }
        }
        let mut retention = retention;
        if tokio::time::timeout_at(short, &mut retention)
            .await
            .is_err()
        {
            // A purge chunk not yet committed is simply done again next run.
            retention.abort();
        }
        let mut syncer = syncer;
        if tokio::time::timeout_at(short, &mut syncer).await.is_err() {
            // A pull still waiting on the network: the copy in use stays.
            syncer.abort();
        }
        if let Some(w) = watchdog {
            w.abort();
        }
        let store = state.store.clone();
        drop(state);
        // Every task that wrote has stopped; what the writer has not
        // committed by now was never reported done to anyone.
        let left = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .clamp(Duration::from_millis(200), Duration::from_secs(2));
        store.close_within(left);
        drop(store_lock);
        tracing::info!("Stopped.");
        Ok(())
    }
}

/// Starts the HTTP accept loop with the connection limits of the config,
/// after raising the open-file limit as far as the system allows.
fn spawn_server(
    state: &Arc<AppState>,
    listener: tokio::net::TcpListener,
    router: axum::Router,
    stop: watch::Receiver<bool>,
    grace: Duration,
) -> tokio::task::JoinHandle<()> {
    use crate::http::serve;
    let server = &state.config.server;
    let nofile = serve::raise_fd_limit();
    let limits = serve::Limits {
        header_read: server.header_read_timeout.0,
        body_read: server.body_read_timeout.0,
        max_connections: server.max_connections,
    }
    .fit_to_fd_limit(nofile);
    tracing::info!(
        open_file_limit = nofile.unwrap_or(0),
        max_connections = limits.max_connections,
        "Open-file limit raised as far as allowed."
    );
    tokio::spawn(serve::serve(listener, router, limits, stop, grace))
}

/// Scheduled SIS pulls and SIS problem emails (`crate::sis::sync::run`).
fn spawn_sis_sync(
    state: &Arc<AppState>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let (config, store, metrics) = (
        state.config.clone(),
        state.store.clone(),
        state.metrics.clone(),
    );
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        crate::sis::sync::run(config, store, metrics, shutdown).await;
    })
}

/// Watches `sis.watch_dir` for nightly exports; each outcome goes to the
/// audit log and the metrics. `None` when no watch folder is configured.
fn spawn_sis_watch(
    state: &Arc<AppState>,
    stop: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let mut cfg = state.config.sis.clone();
    let dir = cfg.watch_dir.as_ref()?;
    cfg.watch_dir = Some(crate::config::relative_to(&state.config.base_dir, dir));
    let store_dir = state.config.store_dir();
    let (metrics, tasks, clock) = (
        state.metrics.clone(),
        state.tasks.clone(),
        state.clock.clone(),
    );
    let state = state.clone();
    // Supervised: a panic while importing is counted and the folder watched again.
    Some(crate::supervise::spawn(
        "sis-watch",
        metrics,
        tasks,
        clock,
        move || {
            let (cfg, store_dir, state, mut stop) =
                (cfg.clone(), store_dir.clone(), state.clone(), stop.clone());
            async move {
                let shutdown = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                crate::sis::watch(cfg, store_dir, shutdown, move |outcome| {
            let ok = outcome.result.is_ok();
            state
                .metrics
                .inc("klaxon_sis_imports_total", &[("outcome", if ok { "ok" } else { "rejected" })]);
            // Counts only: the error text may quote a rejected phone or email.
            let detail = match &outcome.result {
                Ok(r) => serde_json::json!({
                    "name": outcome.name, "ok": true, "students": r.students, "guardians": r.guardians,
                    "staff": r.staff, "warnings": r.warnings_total, "archived_to": outcome.archived_to,
                }),
                Err(e) => serde_json::json!({"name": outcome.name, "ok": false, "error": e, "archived_to": outcome.archived_to}),
            };
            if ok {
                tracing::info!(export = %outcome.name, "SIS export imported from the watch folder.");
            } else {
                tracing::warn!(export = %outcome.name, "SIS export from the watch folder was rejected; the previous copy stays in use.");
            }
            let rec = crate::sis::sync::record_of(
                "watch-folder",
                "bulk",
                &outcome.name,
                crate::store::now_ms(),
                &outcome.result,
                "refused",
            );
            let (store, metrics) = (state.store.clone(), state.metrics.clone());
            tokio::spawn(async move {
                if let Err(e) = crate::sis::sync::record(&store, &metrics, rec).await {
                    tracing::error!(error = %e, "Cannot record a SIS sync.");
                }
            });
            let store = state.store.clone();
            tokio::spawn(async move {
                let now = crate::store::now_ms();
                let action = if ok { "sis.import" } else { "sis.reject" };
                let text = detail.to_string();
                if let Err(e) = store
                    .write(move |c| crate::store::audit::record(c, now, "watch-folder", action, None, &text, "watch-folder"))
                    .await
                {
                    tracing::error!(error = %e, "Cannot record a SIS import in the audit log.");
                }
            });
        })
        .await;
            }
        },
    ))
}

/// Completes on SIGTERM or SIGINT: the production shutdown signal.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
