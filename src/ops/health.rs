//! `[health]`: `/healthz` for probes, `/metrics` for Prometheus and the
//! status page (given by a layer above as a [`StatusView`]), over plain
//! HTTP/1.1 on the configured address.
//!
//! Loopback by default. On another address the config asks for either
//! `allow_remote = true` or a login: then every request from beyond this
//! machine needs HTTP basic auth, checked by a [`Gatekeeper`] (the local
//! broker's users), whatever the path: device names, values and the uplink's
//! server say more about a plant than a passer-by should learn.
//!
//! What is counted, and under which names, is [`crate::ops::metrics`]'s;
//! this module installs the Prometheus exporter that renders it and serves
//! the endpoints. Every answer carries headers that keep a browser from
//! running anything but the page's own script.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::ops::liveness::Liveness;
use crate::ops::metrics::{self, Counters, POLL_DURATION};

/// Bucket bounds of [`POLL_DURATION`]: from a fast TCP device (a few ms) to
/// a slow RS-485 unit or a timeout (seconds).
const POLL_BUCKETS: [f64; 12] = [
    0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Connections served at once; a scraper needs one.
const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the exporter's histogram state is compacted.
const UPKEEP: Duration = Duration::from_secs(5);

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The address is taken or not ours.
    #[error("[health] listen = \"{0}\": {1}")]
    Listen(SocketAddr, std::io::Error),
    /// A recorder was installed before (only one per process).
    #[error("metrics recorder: {0}")]
    Recorder(String),
}

/// The status page and its data, served from a layer above.
pub trait StatusView: Send + Sync + std::fmt::Debug {
    /// The answer to `GET path?query`, or `None` when the path is not the page's.
    fn answer(&self, path: &str, query: Option<&str>) -> Option<Answer>;
}

/// Checks the logins of requests from beyond this machine.
pub trait Gatekeeper: Send + Sync + std::fmt::Debug {
    /// How long a request from `peer` waits before its login is checked
    /// (failures from one address slow that address down).
    fn delay(&self, peer: IpAddr) -> Duration;
    /// Whether the `Authorization` header `authorization` is a valid login;
    /// may block (password hashing), so it is called off the async workers.
    fn admits(&self, peer: IpAddr, authorization: &str) -> bool;
}

/// Who may read the endpoint.
#[derive(Debug, Clone)]
pub enum Access {
    /// Whoever reaches the listener: loopback listeners, or `allow_remote = true`.
    Open,
    /// Requests from beyond this machine log in (HTTP basic auth).
    Login(Arc<dyn Gatekeeper>),
}

/// What the endpoint is answered from.
#[derive(Debug, Clone)]
pub struct Probe {
    liveness: Arc<Liveness>,
    stats: Arc<Counters>,
    /// `None` without an `[upstream]`.
    uplink: Option<watch::Receiver<bool>>,
    metrics: PrometheusHandle,
    status: Option<Arc<dyn StatusView>>,
    access: Access,
}

/// An answer, before it becomes an HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Content type.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Probe {
    /// A probe over an existing recorder's handle.
    pub fn new(
        liveness: Arc<Liveness>,
        stats: Arc<Counters>,
        uplink: Option<watch::Receiver<bool>>,
        metrics: PrometheusHandle,
    ) -> Probe {
        Probe {
            liveness,
            stats,
            uplink,
            metrics,
            status: None,
            access: Access::Open,
        }
    }

    /// Also serves the status page, `/` and what `status` answers.
    pub fn with_status(mut self, status: Arc<dyn StatusView>) -> Probe {
        self.status = Some(status);
        self
    }

    /// Lets in only what `access` admits.
    pub fn with_access(mut self, access: Access) -> Probe {
        self.access = access;
        self
    }

    /// The answer to `method path?query`.
    pub fn answer(&self, method: &Method, path: &str, query: Option<&str>) -> Answer {
        if method != Method::GET && method != Method::HEAD {
            return text(405, "only GET\n");
        }
        match path {
            "/healthz" => self.healthz(),
            "/metrics" => Answer {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: self.metrics(),
            },
            _ => match self.status.as_ref().and_then(|s| s.answer(path, query)) {
                Some(answer) => answer,
                None if self.status.is_some() => {
                    text(404, "not found: try /, /api/status, /healthz or /metrics\n")
                }
                None => text(404, "not found: try /healthz or /metrics\n"),
            },
        }
    }

    /// Whether a request from `peer` with this `Authorization` header may be
    /// answered: always from this machine, else as [`Access`] says.
    pub async fn admits(&self, peer: Option<IpAddr>, authorization: Option<&str>) -> bool {
        let Access::Login(gatekeeper) = &self.access else {
            return true;
        };
        let peer = match peer {
            Some(ip) if ip.to_canonical().is_loopback() => return true,
            Some(ip) => ip,
            None => IpAddr::from([0, 0, 0, 0]),
        };
        let Some(authorization) = authorization else {
            return false;
        };
        let delay = gatekeeper.delay(peer);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let (gatekeeper, authorization) = (Arc::clone(gatekeeper), authorization.to_owned());
        tokio::task::spawn_blocking(move || gatekeeper.admits(peer, &authorization))
            .await
            .unwrap_or(false)
    }

    /// 200 while every task keeps its promises, 503 naming the stuck ones.
    /// The uplink's state is reported, not judged: buffering through an
    /// outage is the gateway doing its job.
    fn healthz(&self) -> Answer {
        let stuck = self.liveness.stuck();
        let uplink = match &self.uplink {
            None => "none",
            Some(rx) if *rx.borrow() => "up",
            Some(_) => "down",
        };
        let queue = match &self.uplink {
            None => "none",
            Some(_)
                if self
                    .stats
                    .queue_unavailable
                    .load(std::sync::atomic::Ordering::Relaxed) =>
            {
                "unavailable"
            }
            Some(_) => "ok",
        };
        let body = serde_json::json!({
            "status": if stuck.is_empty() { "ok" } else { "stuck" },
            "stuck": stuck,
            "uplink": uplink,
            "store_and_forward": queue,
        });
        Answer {
            status: if stuck.is_empty() { 200 } else { 503 },
            content_type: "application/json",
            body: format!("{body}\n"),
        }
    }

    fn metrics(&self) -> String {
        // The gateway's own counters live in `Counters` (they are also node
        // metrics); copy them in at scrape time rather than count twice.
        metrics::export_totals(self.stats.snapshot());
        if let Some(rx) = &self.uplink {
            metrics::uplink_up(*rx.borrow());
        }
        self.metrics.render()
    }

    /// Serves until `shutdown`; one task per connection, at most [`MAX_CONNECTIONS`].
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let upkeep = self.metrics.clone();
        let mut upkeep_tick = tokio::time::interval(UPKEEP);
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                _ = upkeep_tick.tick() => {
                    upkeep.run_upkeep();
                    continue;
                }
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok((stream, peer)) => (stream, peer),
                Err(e) => {
                    tracing::warn!(error = %e, "health endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                continue;
            };
            let probe = self.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                serve_connection(probe, stream, Some(peer.ip()), stop).await;
                drop(slot);
            });
        }
    }
}

/// Answers the HTTP/1 requests of one connection from `peer` until it ends or `stop`.
pub async fn serve_connection<IO>(
    probe: Probe,
    io: IO,
    peer: Option<IpAddr>,
    stop: CancellationToken,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<_>| {
        let probe = probe.clone();
        async move {
            let authorization = request
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let answer = if probe.admits(peer, authorization).await {
                probe.answer(
                    request.method(),
                    request.uri().path(),
                    request.uri().query(),
                )
            } else {
                text(401, "log in as a user of the local broker\n")
            };
            Ok::<_, Infallible>(response(answer))
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::select! {
        () = stop.cancelled() => {}
        served = connection => if let Err(e) = served {
            tracing::debug!(error = %e, "health endpoint: connection ended");
        }
    }
}

/// Installs the Prometheus recorder for this process; before the tasks
/// start, so that their first polls are counted too.
pub fn install_recorder() -> Result<PrometheusHandle, HealthError> {
    exporter()?
        .install_recorder()
        .map_err(|e| HealthError::Recorder(e.to_string()))
}

/// The exporter with fieldmq's histogram buckets.
fn exporter() -> Result<PrometheusBuilder, HealthError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(POLL_DURATION.to_owned()), &POLL_BUCKETS)
        .map_err(|e| HealthError::Recorder(e.to_string()))
}

/// Binds the endpoint's address.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, HealthError> {
    TcpListener::bind(address)
        .await
        .map_err(|e| HealthError::Listen(address, e))
}

fn text(status: u16, body: &str) -> Answer {
    Answer {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.to_owned(),
    }
}

/// What every answer carries: only the page's own script and style run, it
/// cannot be framed, nothing is cached or sniffed into another type.
const SAFETY_HEADERS: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
];

fn response(answer: Answer) -> Response<Full<Bytes>> {
    use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue, WWW_AUTHENTICATE};
    let status = answer.status;
    let mut response = Response::new(Full::new(Bytes::from(answer.body)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(answer.content_type) {
        headers.insert(CONTENT_TYPE, value);
    }
    for (name, value) in SAFETY_HEADERS {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    if status == 401 {
        headers.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"fieldmq\", charset=\"UTF-8\""),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder() -> metrics_exporter_prometheus::PrometheusRecorder {
        match exporter() {
            Ok(builder) => builder.build_recorder(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn healthz_reports_the_uplink_without_judging_it() {
        let (tx, rx) = watch::channel(false);
        let liveness = Arc::new(Liveness::default());
        let probe = Probe::new(
            Arc::clone(&liveness),
            Arc::new(Counters::default()),
            Some(rx),
            recorder().handle(),
        );
        let _pulse = liveness.pulse("bus line1");
        let ok = probe.answer(&Method::GET, "/healthz", None);
        assert_eq!(ok.status, 200, "the uplink being down is not unhealthy");
        assert!(ok.body.contains(r#""uplink":"down""#), "{}", ok.body);
        tx.send_replace(true);
        let up = probe.answer(&Method::GET, "/healthz", None);
        assert!(up.body.contains(r#""uplink":"up""#), "{}", up.body);
        assert_eq!(probe.answer(&Method::POST, "/healthz", None).status, 405);
        assert_eq!(probe.answer(&Method::GET, "/", None).status, 404);
    }

    #[test]
    fn metrics_carry_the_gateway_counters_and_per_device_histograms() {
        let recorder = recorder();
        let stats = Arc::new(Counters::default());
        Counters::bump(&stats.polls);
        Counters::bump(&stats.polls);
        Counters::bump(&stats.commands_rejected);
        let probe = Probe::new(
            Arc::new(Liveness::default()),
            Arc::clone(&stats),
            None,
            recorder.handle(),
        );
        let answer = ::metrics::with_local_recorder(&recorder, || {
            metrics::cycle_recorded("meter", Duration::from_millis(12), std::iter::empty());
            probe.answer(&Method::GET, "/metrics", None)
        });
        assert_eq!(answer.status, 200);
        for line in [
            "fieldmq_polls_total 2",
            "fieldmq_commands_rejected_total 1",
            "fieldmq_poll_duration_seconds_bucket{device=\"meter\",le=\"0.025\"} 1",
            "fieldmq_poll_duration_seconds_count{device=\"meter\"} 1",
        ] {
            assert!(
                answer.body.contains(line),
                "no {line:?} in\n{}",
                answer.body
            );
        }
    }
}
