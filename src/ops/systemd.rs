//! Notifications to systemd for `Type=notify`: ready, reloading, stopping,
//! and the watchdog, which is pinged only while every task keeps its promises
//! ([`crate::ops::liveness`]). Outside systemd (no `NOTIFY_SOCKET`) each call does nothing.

use std::sync::Arc;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::ops::liveness::Liveness;

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Start-up is complete: sources, uplink and local broker are running.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload (SIGHUP) has begun; [`ready`] follows when it is done.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// Shutdown has begun.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// Pings the watchdog at half its period while nothing is stuck; with a
/// task stuck, stops pinging (and says why), so systemd restarts the service.
/// Returns at once when the unit has no `WatchdogSec`.
pub async fn watchdog(liveness: Arc<Liveness>, shutdown: CancellationToken) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let mut tick = tokio::time::interval(period / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut withheld = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let stuck = liveness.stuck();
        if stuck.is_empty() {
            if withheld {
                tracing::info!("every task is making progress again; watchdog pinged");
                withheld = false;
            }
            notify(&[NotifyState::Watchdog]);
        } else if !withheld {
            tracing::error!(stuck = %stuck.join(", "), "tasks stuck; not pinging the watchdog (systemd will restart the service)");
            withheld = true;
        }
    }
}
