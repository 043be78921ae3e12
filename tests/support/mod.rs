//! Shared pieces of the integration tests: simulators on loopback ports,
//! configs written for them, and an engine whose events can be awaited.
#![allow(dead_code)]

pub mod browser;
pub mod mqtt;
pub mod paced;
pub mod relay;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fieldmq::acquire::engine::Engine;
use fieldmq::config::Config;
use fieldmq::core::event::DeviceEvent;
use fieldmq::core::value::{Quality, Sample, Value};
use fieldmq::sim::Simulator;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A simulator serving Modbus TCP on a free loopback port.
pub async fn tcp_simulator(sim: &Simulator) -> (SocketAddr, JoinHandle<std::io::Result<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    (addr, tokio::spawn(sim.clone().serve_tcp(listener)))
}

/// Parses a config written by a test; a test config that does not validate is a test bug.
pub fn config(text: &str) -> Arc<Config> {
    match Config::from_toml(Path::new("test.toml"), text) {
        Ok(c) => Arc::new(c),
        Err(e) => panic!("test config is invalid:\n{e}\n---\n{text}"),
    }
}

/// A running engine and what it has said so far.
pub struct Running {
    pub config: Arc<Config>,
    pub engine: Engine,
    pub shutdown: CancellationToken,
}

impl Running {
    pub fn start(config: Arc<Config>) -> Running {
        let shutdown = CancellationToken::new();
        let engine = Engine::start(Arc::clone(&config), &shutdown);
        Running {
            config,
            engine,
            shutdown,
        }
    }

    /// The next event, or a panic naming what was awaited.
    pub async fn next(&mut self, within: Duration, what: &str) -> DeviceEvent<Config> {
        match tokio::time::timeout(within, self.engine.events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("engine stopped while waiting for {what}"),
            Err(_) => panic!("no event within {within:?} while waiting for {what}"),
        }
    }

    /// Skips events until `pick` accepts one.
    pub async fn until<T>(
        &mut self,
        within: Duration,
        what: &str,
        mut pick: impl FnMut(&DeviceEvent<Config>) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.next(left, what).await;
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    }

    /// The samples of the next `Samples` or `Online` event of `device`.
    pub async fn samples_of(&mut self, device: usize, within: Duration) -> Vec<Sample> {
        self.until(within, "samples", |e| match samples_in(e) {
            Some((d, samples)) if d == device => Some(samples.to_vec()),
            _ => None,
        })
        .await
    }

    /// A metric's index by name.
    pub fn metric(&self, device: usize, name: &str) -> usize {
        self.config.devices[device]
            .metrics
            .iter()
            .position(|m| m.name == name)
            .unwrap_or_else(|| panic!("no metric {name}"))
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.engine.join())
            .await
            .expect("bus tasks stop within 5 s of shutdown");
    }
}

/// The value of `metric` in `samples`, asserting it is good.
pub fn good_value(samples: &[Sample], metric: usize) -> Value {
    let s = samples
        .iter()
        .find(|s| s.metric == metric)
        .unwrap_or_else(|| panic!("metric {metric} not in {samples:?}"));
    assert_eq!(s.quality, Quality::Good, "{s:?}");
    s.value.clone().expect("good samples carry a value")
}

/// The device and samples an event carries: changes, or the complete
/// snapshot that comes with a device going online.
pub fn samples_in(event: &DeviceEvent<Config>) -> Option<(usize, &[Sample])> {
    match event {
        DeviceEvent::Samples { device, samples }
        | DeviceEvent::Online {
            device, samples, ..
        } => Some((*device, samples)),
        _ => None,
    }
}

/// The writes (function code, start address) a simulator has received, in order.
pub fn writes(sim: &Simulator) -> Vec<(u8, u16)> {
    sim.served()
        .iter()
        .filter(|s| matches!(s.function, 5 | 6 | 15 | 16))
        .map(|s| (s.function, s.start))
        .collect()
}

/// GET `path` over HTTP/1.1; the status and the body.
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to [health]");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .expect("answer within 5 s")
        .expect("read answer");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// How long before a SIGKILL a counter value may have been answered and
/// still be on its way into the queue: the response on the loopback, its
/// decoding and one `write(2)` (well under a millisecond), with slack for a
/// loaded CI machine.
const IN_FLIGHT: Duration = Duration::from_millis(50);

/// A `kill -9` of a gateway, timed to land on a poll.
pub struct KillOnAPoll {
    /// Just before SIGKILL was sent.
    pub at: SystemTime,
    /// When the process was reaped.
    pub reaped: SystemTime,
}

impl KillOnAPoll {
    /// Kills `gateway` right after `sim` answered a read of unit `unit`'s
    /// counter, the worst moment: that answer is on its way into the queue.
    pub async fn strike(gateway: &mut mqtt::Gateway, sim: &Simulator, unit: u8) -> KillOnAPoll {
        let answers = sim.counter_answers(unit).len();
        while sim.counter_answers(unit).len() == answers {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let at = SystemTime::now();
        gateway.kill().await;
        KillOnAPoll {
            at,
            reaped: SystemTime::now(),
        }
    }

    /// The values of `unit`'s counter the kill may have interrupted:
    /// answered from [`IN_FLIGHT`] before it until the process was reaped.
    /// Any other value missing downstream was lost by the gateway.
    pub fn interrupted(&self, sim: &Simulator, unit: u8) -> Vec<u64> {
        let from = self.at.checked_sub(IN_FLIGHT).unwrap_or(UNIX_EPOCH);
        sim.counter_answers(unit)
            .into_iter()
            .filter(|(_, answered)| (from..=self.reaped).contains(answered))
            .map(|(value, _)| u64::from(value))
            .collect()
    }

    /// The moment of the kill in ms since the epoch.
    pub fn at_ms(&self) -> u64 {
        self.at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}
