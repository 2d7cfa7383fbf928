//! Supervision of long-running tasks (engine lanes, recorder, tracker,
//! watchers): a panic in one is logged, counted in `/metrics`, shown by
//! `/readyz` for a while, and the task is started again. A task that returns
//! normally (shutdown) is not restarted.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::metrics::Metrics;

/// How long a panic keeps `/readyz` degraded.
const REMEMBER_MS: i64 = 5 * 60 * 1000;

/// Recent panics per task.
#[derive(Default)]
pub struct TaskHealth {
    panics: Mutex<Vec<(&'static str, i64)>>,
}

impl TaskHealth {
    fn record(&self, task: &'static str, now: i64) {
        let mut p = self.panics.lock().unwrap_or_else(|e| e.into_inner());
        p.retain(|(_, at)| now - at < REMEMBER_MS);
        p.push((task, now));
    }

    /// Tasks that panicked in the last five minutes.
    pub fn recent_panics(&self, now: i64) -> Vec<&'static str> {
        let p = self.panics.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<&'static str> = p
            .iter()
            .filter(|(_, at)| now - at < REMEMBER_MS)
            .map(|(t, _)| *t)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Runs `make()` as a task and starts it again whenever it panics.
pub fn spawn<F, Fut>(
    name: &'static str,
    metrics: Arc<Metrics>,
    health: Arc<TaskHealth>,
    clock: crate::clock::Clock,
    mut make: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match tokio::spawn(make()).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    let what = e
                        .into_panic()
                        .downcast::<String>()
                        .map(|s| *s)
                        .or_else(|p| p.downcast::<&'static str>().map(|s| s.to_string()))
                        .unwrap_or_else(|_| "unknown panic".into());
                    tracing::error!(task = name, error = %what, "A background task panicked; restarting it.");
                    metrics.inc("klaxon_task_panics_total", &[("task", name)]);
                    health.record(name, clock.now_ms());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(_) => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_panicking_task_is_restarted_and_counted() {
        let metrics = Arc::new(Metrics::default());
        let health = Arc::new(TaskHealth::default());
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let h = spawn(
            "test-task",
            metrics.clone(),
            health.clone(),
            crate::clock::Clock::system(),
            move || {
                let r = r.clone();
                async move {
                    if r.fetch_add(1, Ordering::SeqCst) == 0 {
                        panic!("first run fails");
                    }
                }
            },
        );
        h.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(
            metrics.get("klaxon_task_panics_total", &[("task", "test-task")]),
            1
        );
        let now = crate::clock::Clock::system().now_ms();
        assert_eq!(health.recent_panics(now), vec!["test-task"]);
    }
}
