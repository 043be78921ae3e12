//! The running gateway: the sources, the sinks that exist in this config,
//! the event tee between them, the health endpoint, and reloads on SIGHUP.
//!
//! Sources stop first, and the sinks end when the event stream does, so what
//! the sources say last (GPIO outputs going safe) is still published before
//! the goodbye.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::acquire::engine::{EVENT_QUEUE, Engine};
use crate::config::Config;
use crate::config::reload::Reload;
use crate::core::event::DeviceEvent;
use crate::ops::health::{self, Access, HealthError, Probe};
use crate::ops::{memory, systemd};
use crate::sink::status::{BrokerPresence, StatusBoard};
use crate::sink::uplink::{StartError, Uplink};

/// How long the sinks wait, after a stop signal, for the sources to finish
/// (a bus transaction under way takes up to its timeout).
const SINK_GRACE: Duration = Duration::from_secs(10);

/// Why the gateway could not start or stopped abnormally.
#[derive(Debug, Error)]
pub enum GatewayError {
    /// The `[health]` endpoint could not start.
    #[error(transparent)]
    Health(#[from] HealthError),
    /// The embedded broker could not start.
    #[cfg(feature = "broker")]
    #[error("cannot start the local broker ({}: set [broker] listen, or enabled = false)", .path.display())]
    LocalBroker {
        /// The config file.
        path: std::path::PathBuf,
        /// What the broker said.
        source: crate::sink::local::broker::BrokerError,
    },
    /// The uplink could not be set up.
    #[error("cannot start the upstream connection")]
    Uplink(#[from] StartError),
    /// `[health]` asks for logins, and this build has no broker users to check them with.
    #[error(
        "[health] listens beyond loopback without allow_remote, and this build has no local broker users to log in with"
    )]
    NoLogins,
    /// SIGHUP could not be listened for.
    #[error("cannot listen for SIGHUP")]
    Signal(#[source] std::io::Error),
    /// A sink task panicked.
    #[error("sink task")]
    Sink(#[from] tokio::task::JoinError),
}

/// One sink's task, handed its own copy of the event stream.
type Sink = Box<
    dyn FnOnce(mpsc::Receiver<DeviceEvent<Config>>) -> Pin<Box<dyn Future<Output = ()> + Send>>
        + Send,
>;

/// A gateway whose sources poll and whose listeners are bound.
pub struct Gateway {
    engine: Engine,
    sinks: JoinSet<()>,
    stop_sinks: CancellationToken,
}

impl Gateway {
    /// Runs the gateway for `config` until `shutdown` is cancelled or the
    /// sources end.
    pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), GatewayError> {
        Gateway::start(config).await?.serve(shutdown).await
    }

    /// Starts everything `config` asks for: the sources, the local broker
    /// (listening before the uplink connects, so an uplink into that same
    /// broker, as in the demo, succeeds at the first attempt), the uplink or
    /// else the log, and the health endpoint with the status page.
    pub async fn start(config: Config) -> Result<Gateway, GatewayError> {
        let config = Arc::new(config);
        let health = match config.health {
            Some(settings) => {
                let listener = health::bind(settings.listen).await?;
                tracing::info!(address = %settings.listen, login = settings.needs_login(), "status page at /, with /api/status, /healthz and /metrics");
                Some((listener, health::install_recorder()?))
            }
            None => None,
        };
        let stop_sinks = CancellationToken::new();
        let mut engine = Engine::start(Arc::clone(&config), &CancellationToken::new());
        let mut sinks: Vec<Sink> = Vec::new();
        // What the local broker lends the status page, when it runs.
        #[cfg_attr(not(feature = "broker"), allow(unused_mut))]
        let mut presence: Option<BrokerPresence> = None;
        #[cfg_attr(not(feature = "broker"), allow(unused_mut))]
        let mut access = Access::Open;
        #[cfg(not(feature = "broker"))]
        if config.health.is_some_and(|h| h.needs_login()) {
            return Err(GatewayError::NoLogins);
        }
        #[cfg(feature = "broker")]
        if config.health.is_some_and(|h| h.needs_login()) {
            access = Access::Login(Arc::new(
                crate::sink::local::broker::http_login::HttpLogin::standalone(&config.broker),
            ));
        }
        #[cfg(feature = "broker")]
        if config.broker.enabled {
            let local = crate::sink::local::LocalFeed::start(
                Arc::clone(&config),
                engine.writes.clone(),
                Arc::clone(&engine.stats),
                engine.liveness.pulse("local broker"),
            )
            .await
            .map_err(|source| GatewayError::LocalBroker {
                path: config.path.clone(),
                source,
            })?;
            presence = Some(Box::new(local.presence()));
            if let Access::Login(_) = access {
                access = Access::Login(Arc::new(local.http_login()));
            }
            let stop = stop_sinks.clone();
            sinks.push(Box::new(move |events| Box::pin(local.run(events, stop))));
        }
        let local_broker = !sinks.is_empty();
        let mut uplink_report = None;
        if config.upstream.is_some() {
            let uplink = Uplink::start(
                Arc::clone(&config),
                engine.writes.clone(),
                Arc::clone(&engine.stats),
                engine.liveness.pulse("uplink"),
            )?;
            uplink_report = Some(uplink.report());
            let stop = stop_sinks.clone();
            sinks.push(Box::new(move |events| Box::pin(uplink.run(events, stop))));
        } else {
            let (config, stop) = (Arc::clone(&config), stop_sinks.clone());
            sinks.push(Box::new(move |events| {
                Box::pin(crate::sink::log::run(config, events, stop))
            }));
        }
        let status = health.as_ref().map(|_| {
            StatusBoard::new(
                Arc::clone(&config),
                Arc::clone(&engine.stats),
                uplink_report,
                presence,
            )
        });
        if let Some(board) = status.clone() {
            let stop = stop_sinks.clone();
            sinks.push(Box::new(move |events| Box::pin(board.run(events, stop))));
        }
        tracing::info!(config = %config.path.display(), buses = config.buses.len(), devices = config.devices.len(), upstream = config.upstream.is_some(), local_broker, "fieldmq running");
        let mut tasks = JoinSet::new();
        let receivers = tee(engine.take_events(), sinks.len());
        for (sink, events) in sinks.into_iter().zip(receivers) {
            tasks.spawn(sink(events));
        }
        if let Some((listener, metrics)) = health {
            let uplink = config
                .upstream
                .as_ref()
                .map(|_| engine.writes.uplink_state());
            let mut probe = Probe::new(
                Arc::clone(&engine.liveness),
                Arc::clone(&engine.stats),
                uplink,
                metrics,
            )
            .with_access(access);
            if let Some(board) = status {
                probe = probe.with_status(Arc::new(board));
            }
            tokio::spawn(probe.serve(listener, stop_sinks.clone()));
        }
        tokio::spawn(systemd::watchdog(
            Arc::clone(&engine.liveness),
            stop_sinks.clone(),
        ));
        announce_ready(&config);
        Ok(Gateway {
            engine,
            sinks: tasks,
            stop_sinks,
        })
    }

    /// Serves until `shutdown` is cancelled or a sink ends by itself (only
    /// when the sources are gone), reloading the device map on SIGHUP; then
    /// stops the sources and gives the sinks `SINK_GRACE` to publish what
    /// they said last.
    pub async fn serve(mut self, shutdown: CancellationToken) -> Result<(), GatewayError> {
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(GatewayError::Signal)?;
        // The first tick comes at once: the device map was just parsed.
        let mut trim = tokio::time::interval(memory::TRIM_INTERVAL);
        trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = self.sinks.join_next() => break,
                Some(()) = hangup.recv() => reload(&mut self.engine).await,
                _ = trim.tick() => memory::return_freed(),
            }
        }
        systemd::stopping();
        self.engine.stop();
        let drained = tokio::time::timeout(SINK_GRACE, async {
            while let Some(done) = self.sinks.join_next().await {
                done?;
            }
            Ok::<(), GatewayError>(())
        })
        .await;
        match drained {
            Ok(done) => done?,
            Err(_) => {
                tracing::warn!(grace = ?SINK_GRACE, "sources did not stop in time; stopping the sinks anyway");
                self.stop_sinks.cancel();
                while let Some(done) = self.sinks.join_next().await {
                    done?;
                }
            }
        }
        self.stop_sinks.cancel();
        self.engine.join().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// SIGHUP: reads the config file again and puts its device map in force;
/// an invalid file changes nothing.
async fn reload(engine: &mut Engine) {
    systemd::reloading();
    let current = engine.config();
    match Config::load(&current.path) {
        Err(e) => {
            tracing::error!("reload refused, the device map in force stays:\n{e}");
        }
        Ok(new) => {
            let reload = Reload::between(&current, new);
            for section in &reload.ignored {
                tracing::warn!(
                    section,
                    "changed, but only [[bus]] and [[device]] are reloaded; restart to apply it"
                );
            }
            if reload.is_noop() {
                tracing::info!("reload: nothing that a reload applies has changed");
            } else {
                engine.reconfigure(&reload).await;
                tracing::info!(
                    added = ?reload.added,
                    removed = ?reload.removed,
                    changed = ?reload.changed,
                    "reload: new device map in force"
                );
            }
        }
    }
    announce_ready(&engine.config());
}

/// Tells systemd that start-up (or a reload) is complete.
fn announce_ready(config: &Config) {
    systemd::ready(&format!(
        "polling {} devices on {} buses",
        config.devices.len(),
        config.buses.len()
    ));
}

/// Copies every event of `events` to `n` receivers, one per sink; ends when
/// the source ends or every receiver is gone.
fn tee(
    mut events: mpsc::Receiver<DeviceEvent<Config>>,
    n: usize,
) -> Vec<mpsc::Receiver<DeviceEvent<Config>>> {
    if n <= 1 {
        return vec![events];
    }
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::channel(EVENT_QUEUE)).unzip();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let mut alive = false;
            for tx in &senders {
                alive |= tx.send(event.clone()).await.is_ok();
            }
            if !alive {
                break;
            }
        }
    });
    receivers
}
