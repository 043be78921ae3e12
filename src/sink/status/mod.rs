//! The status page: one page for the technician at the panel, and the
//! `/api/status` document it reads, served by the `[health]` listener.
//! Read-only: nothing here writes to a device or changes the config.
//!
//! The page polls `/api/status` once a second rather than holding a
//! server-sent event stream open: a closed tab, a laptop put to sleep or a
//! phone dropping off the Wi-Fi leave nothing behind on the gateway (an
//! event stream would hold a connection and a task until TCP gave up, and
//! count against the listener's 16 connections); the document is built only
//! when asked for, so with no page open the board costs nothing but keeping
//! up with the events; and a poll is a plain GET that `curl`, a proxy or
//! another tool reads the same way. A second's latency is what a person
//! watching a panel needs. The page stops polling while it is hidden.

pub mod board;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::core::event::DeviceEvent;
use crate::core::value::now_ms;
use crate::ops::health::{Answer, StatusView};
use crate::ops::metrics::Counters;
use crate::sink::uplink::UplinkReport;
use board::{Board, Inputs, Selection, Status};

/// The page; everything it shows comes from `/api/status`.
const PAGE: &str = include_str!("page.html");
/// Its script: fetches, and writes every string with `textContent`.
const SCRIPT: &str = include_str!("page.js");
/// Its style.
const STYLE: &str = include_str!("page.css");

/// The shortest window the drain rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(2);

/// Who is connected to the local broker now: clients per login (`None`: anonymous).
pub type BrokerPresence = Box<dyn Fn() -> Vec<(Option<String>, usize)> + Send + Sync>;

/// The board, shared between the task that keeps it and the endpoint that reads it.
#[derive(Clone)]
pub struct StatusBoard {
    shared: Arc<Shared>,
}

struct Shared {
    board: Mutex<Board>,
    counters: Arc<Counters>,
    uplink: Option<watch::Receiver<UplinkReport>>,
    broker: Option<BrokerPresence>,
    started: Instant,
    drain: Mutex<DrainRate>,
}

impl std::fmt::Debug for StatusBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusBoard").finish_non_exhaustive()
    }
}

impl StatusBoard {
    /// A board for `config`, read together with the gateway's counters, the
    /// uplink's reports (if there is an uplink) and the local broker's
    /// clients (if it runs).
    pub fn new(
        config: Arc<Config>,
        counters: Arc<Counters>,
        uplink: Option<watch::Receiver<UplinkReport>>,
        broker: Option<BrokerPresence>,
    ) -> StatusBoard {
        StatusBoard {
            shared: Arc::new(Shared {
                board: Mutex::new(Board::new(config)),
                counters,
                uplink,
                broker,
                started: Instant::now(),
                drain: Mutex::new(DrainRate::default()),
            }),
        }
    }

    /// Keeps the board up to date until the events end or `shutdown`.
    pub async fn run(
        self,
        mut events: mpsc::Receiver<DeviceEvent<crate::config::Config>>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                event = events.recv() => match event {
                    Some(event) => lock(&self.shared.board).apply(&event, now_ms()),
                    None => break,
                },
            }
        }
    }

    /// Everything the page shows, now, with the metrics of `selection`.
    pub fn status(&self, selection: &Selection) -> Status {
        let shared = &self.shared;
        let uplink = shared.uplink.as_ref().map(|rx| rx.borrow().clone());
        let drain_rate = uplink.as_ref().map_or(0.0, |u| {
            lock(&shared.drain).update(Instant::now(), u.drained)
        });
        let broker = shared.broker.as_ref().map(|presence| presence());
        let polls: HashMap<_, _> = shared.counters.polls_by_device();
        let inputs = Inputs {
            now_ms: now_ms(),
            uptime: shared.started.elapsed(),
            counters: shared.counters.snapshot(),
            polls: &polls,
            uplink: uplink.as_ref(),
            drain_rate,
            broker: broker.as_deref(),
        };
        lock(&shared.board).status(&inputs, selection)
    }
}

impl StatusView for StatusBoard {
    fn answer(&self, path: &str, query: Option<&str>) -> Option<Answer> {
        let (content_type, body) = match path {
            "/" | "/index.html" => ("text/html; charset=utf-8", PAGE.to_owned()),
            "/status.js" => ("text/javascript; charset=utf-8", SCRIPT.to_owned()),
            "/status.css" => ("text/css; charset=utf-8", STYLE.to_owned()),
            "/api/status" => {
                match serde_json::to_string(&self.status(&Selection::from_query(query))) {
                    Ok(json) => ("application/json", json),
                    Err(e) => {
                        tracing::error!(error = %e, "status: cannot render /api/status");
                        return Some(Answer {
                            status: 500,
                            content_type: "text/plain; charset=utf-8",
                            body: "cannot render the status\n".to_owned(),
                        });
                    }
                }
            }
            _ => return None,
        };
        Some(Answer {
            status: 200,
            content_type,
            body,
        })
    }
}

/// Samples a second sent from the queue, over the last window of at least
/// [`RATE_WINDOW`] between two readings.
#[derive(Debug, Default)]
struct DrainRate {
    mark: Option<(Instant, u64)>,
    rate: f64,
}

impl DrainRate {
    fn update(&mut self, now: Instant, drained: u64) -> f64 {
        match self.mark {
            Some((at, before)) => {
                let elapsed = now.saturating_duration_since(at);
                if elapsed >= RATE_WINDOW {
                    self.rate = drained.saturating_sub(before) as f64 / elapsed.as_secs_f64();
                    self.mark = Some((now, drained));
                }
            }
            None => self.mark = Some((now, drained)),
        }
        self.rate
    }
}

/// Locks `m`; the board is plain bookkeeping that a panic cannot leave half-done.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
