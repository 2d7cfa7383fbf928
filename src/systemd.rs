//! The systemd notify protocol (`Type=notify`): readiness, stopping and the
//! watchdog keep-alive, written to `$NOTIFY_SOCKET`. No-ops when not under systemd.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

fn notify(msg: &str) {
    #[cfg(target_os = "linux")]
    {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return;
        };
        let path = path.to_string_lossy().to_string();
        let addr = if let Some(abstract_name) = path.strip_prefix('@') {
            SocketAddr::from_abstract_name(abstract_name.as_bytes())
        } else {
            SocketAddr::from_pathname(&path)
        };
        let sent = addr
            .and_then(|a| UnixDatagram::unbound().and_then(|s| s.send_to_addr(msg.as_bytes(), &a)));
        if let Err(e) = sent {
            tracing::warn!(error = %e, "Cannot notify systemd.");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = msg;
}

pub fn notify_ready() {
    notify("READY=1\nSTATUS=Serving");
}

pub fn notify_stopping() {
    notify("STOPPING=1");
}

/// Pings the watchdog at half the interval systemd asks for (`WatchdogSec=`).
pub fn spawn_watchdog(mut stop: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let every = Duration::from_micros(usec / 2);
    Some(tokio::spawn(async move {
        loop {
            notify("WATCHDOG=1");
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
    }))
}
