//! `GET /alerts/{id}/events`: Server-Sent Events that keep the alert view
//! current without reloading it. Each open stream reads the alert's status
//! once a second and sends a `figures` event only when what the page shows
//! has changed (the same `Live` map the page was drawn from, plus the chart
//! at most every few seconds). Bounded: at most `MAX_STREAMS` streams at
//! once (more are answered 503 and the page keeps its Refresh link), each
//! lives at most `MAX_LIFETIME` (the browser reconnects by itself), a
//! look is spaced out when reading the alert is slow, a
//! stream ends with a `closed` event once its alert is closed, and every
//! stream ends when the daemon shuts down, so none holds the shutdown up.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use tokio::sync::watch;

use super::alert::Live;
use crate::app::AppState;
use crate::http::session::Operator;

/// Streams open at once, across all alerts. Each costs one status read a
/// second; past this the page still works with its Refresh link.
pub const MAX_STREAMS: usize = 16;

/// A stream is ended after this long; `EventSource` reconnects and the
/// first event of the new stream carries every figure again.
const MAX_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// How often a stream looks at its alert, at most: a read that takes long
/// (a district-wide alert) spaces the next one out to `SLOW_FACTOR` times
/// its cost, up to `POLL_MAX`, so open views never take more than a
/// fraction of the store.
const POLL: Duration = Duration::from_secs(1);
const SLOW_FACTOR: u32 = 4;
const POLL_MAX: Duration = Duration::from_secs(10);

/// The chart is redrawn at most this often: it costs three grouped scans.
const CHART_EVERY: Duration = Duration::from_secs(5);

/// The daemon's open event streams: their count and the shutdown signal.
#[derive(Debug)]
pub struct Streams {
    open: AtomicUsize,
    stop: watch::Sender<bool>,
}

impl Default for Streams {
    fn default() -> Self {
        Streams {
            open: AtomicUsize::new(0),
            stop: watch::channel(false).0,
        }
    }
}

impl Streams {
    /// Ends every open stream and refuses new ones: called when the daemon
    /// starts shutting down.
    pub fn close_all(&self) {
        self.stop.send_replace(true);
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn take(self: &Arc<Self>) -> Option<Slot> {
        if *self.stop.borrow() {
            return None;
        }
        let mut n = self.open.load(Ordering::Relaxed);
        loop {
            if n >= MAX_STREAMS {
                return None;
            }
            match self
                .open
                .compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Some(Slot(self.clone())),
                Err(now) => n = now,
            }
        }
    }
}

/// One open stream; gives its place back when the stream is dropped
/// (finished, or the browser went away).
struct Slot(Arc<Streams>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Cursor {
    state: Arc<AppState>,
    id: i64,
    last: Option<Live>,
    chart_at: Option<tokio::time::Instant>,
    chart: Option<String>,
    /// The figures changed since the chart was last drawn.
    chart_stale: bool,
    /// Time until the next look (see `POLL`).
    pause: Duration,
    stop: watch::Receiver<bool>,
    until: tokio::time::Instant,
    done: bool,
    _slot: Slot,
}

pub async fn stream(
    op: Operator,
    State(state): State<Arc<AppState>>,
    Path(id): Path<i64>,
) -> Response {
    // The scope check reads the alert: a missing one is answered 404 there.
    if let Err(r) = super::in_scope(&state, &op, id).await {
        return r;
    }
    let Some(slot) = state.streams.take() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "30")],
            "Too many live views are open; use Refresh on the page.",
        )
            .into_response();
    };
    let cursor = Cursor {
        stop: state.streams.stop.subscribe(),
        state,
        id,
        last: None,
        chart_at: None,
        chart: None,
        chart_stale: false,
        pause: POLL,
        until: tokio::time::Instant::now() + MAX_LIFETIME,
        done: false,
        _slot: slot,
    };
    let mut resp = Sse::new(events(cursor))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

fn events(cursor: Cursor) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(cursor, |mut c| async move {
        if c.done {
            return None;
        }
        loop {
            // The first event goes out at once, then one look a second.
            if c.last.is_some() {
                tokio::select! {
                    _ = tokio::time::sleep(c.pause) => {}
                    _ = c.stop.changed() => return None,
                }
            }
            if *c.stop.borrow() || tokio::time::Instant::now() >= c.until {
                return None;
            }
            let read = tokio::time::Instant::now();
            let super::alert::Reading { view: v, chart: h, .. } =
                match super::alert::read(&c.state, c.id, false).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(alert = c.id, error = %e.message, "Cannot read an alert for its live view.");
                    return None;
                }
            };
            let live = Live::of(&c.state, &v, c.state.now_ms());
            c.pause = (read.elapsed() * SLOW_FACTOR).clamp(POLL, POLL_MAX);
            let changed = c
                .last
                .as_ref()
                .is_none_or(|l| l.text != live.text || l.closed != live.closed);
            // The chart follows the figures, at most every CHART_EVERY, and
            // catches up once they stop changing.
            let chart_due = live.closed || c.chart_at.is_none_or(|at| at.elapsed() >= CHART_EVERY);
            if !(changed || c.chart_stale && chart_due) {
                continue;
            }
            let mut chart = None;
            c.chart_stale = !chart_due;
            if chart_due {
                c.chart_at = Some(tokio::time::Instant::now());
                if c.chart.as_deref() != Some(h.as_str()) {
                    c.chart = Some(h.clone());
                    chart = Some(h);
                }
            }
            let data = serde_json::json!({
                "now": c.state.now_ms(),
                "text": live.text,
                "deadlines": live.deadlines,
                "bars": live.bars,
                "closed": live.closed,
                "chart": chart,
            });
            let mut out = vec![Event::default().event("figures").data(data.to_string())];
            if live.closed {
                // The last figures, then the end: nothing changes any more.
                out.push(Event::default().event("closed").data("{}"));
                c.done = true;
            }
            c.last = Some(live);
            return Some((out, c));
        }
    })
    .flat_map(|evs| stream::iter(evs.into_iter().map(Ok)))
}
