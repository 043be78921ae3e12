//! Store-and-forward against a real mosquitto whose link goes away: every sample
//! taken while the uplink was down arrives afterwards, in order, flagged
//! historical. The simulated devices count their reads, so each sample has
//! a number and a gap or a repeat is visible.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use fieldmq::profile::sparkplug::proto::Payload;
use fieldmq::profile::sparkplug::proto::payload::metric;
use fieldmq::sim::Simulator;
use support::mqtt::{Gateway, Mosquitto, Peer, Received, free_port};
use support::relay::Relay;
use support::{KillOnAPoll, tcp_simulator};

const SECOND: Duration = Duration::from_secs(1);
const DEVICES: [&str; 3] = ["d1", "d2", "d3"];
const NO_LOCAL_BROKER: &str = "[broker]\nenabled = false";

/// Three devices at 10 Hz, each with `metrics` metrics reading its read counter.
fn gateway_config(
    sim: std::net::SocketAddr,
    broker: &str,
    data_dir: &Path,
    metrics: usize,
    buffer: &str,
) -> String {
    let mut text = format!(
        r#"
[node]
group_id = "plant"
node_id = "gw"
data_dir = "{}"
stats_interval = "500ms"

[upstream]
url = "{broker}"
keep_alive = "2s"
max_backoff = "1s"

{buffer}

[[bus]]
name = "sim"
kind = "tcp"
address = "{sim}"
timeout = "500ms"
"#,
        data_dir.display()
    );
    for (unit, name) in DEVICES.iter().enumerate() {
        text += &format!(
            "\n[[device]]\nname = \"{name}\"\nbus = \"sim\"\nunit = {}\npoll = \"100ms\"\n",
            unit + 1
        );
        for m in 0..metrics {
            text += &format!(
                "\n[[device.metric]]\nname = \"count{m}\"\ntable = \"input\"\naddress = 0\ntype = \"u16\"\n"
            );
        }
    }
    text
}

/// An uplink that can be cut and restored (a relay in front of mosquitto),
/// the simulator, and a gateway whose Sparkplug stream an observer on the
/// broker records from its births on. The broker and the observer stay up
/// throughout, so the record holds exactly what crossed the relay.
struct Outage {
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    broker: Mosquitto,
    relay: Relay,
    observer: Peer,
    gateway: Gateway,
    /// Everything the observer received so far.
    messages: Vec<Received>,
    sim: Simulator,
}

impl Outage {
    /// Starts everything, waits for the births and records `lead` of live data.
    async fn start(metrics: usize, extra: &str, lead: Duration) -> Outage {
        let dir = tempfile::tempdir().expect("tempdir");
        let broker = Mosquitto::start().await;
        let relay = Relay::start(broker.port).await;
        let sim = Simulator::new();
        for unit in 1..=3 {
            sim.count_reads(unit, 0);
        }
        let (sim_addr, _server) = tcp_simulator(&sim).await;
        let config = dir.path().join("fieldmq.toml");
        let text = gateway_config(sim_addr, &relay.url(), dir.path(), metrics, extra);
        std::fs::write(&config, text).expect("write config");
        let mut observer = Peer::connect(broker.port, "observer", &["spBv1.0/#"]).await;
        let gateway = Gateway::run(&config, dir.path(), "gateway");
        let mut messages = births(&mut observer).await;
        messages.extend(observer.collect_for(lead).await);
        Outage {
            dir,
            config,
            broker,
            relay,
            observer,
            gateway,
            messages,
            sim,
        }
    }

    /// The uplink goes away: its connection drops and new ones are refused.
    fn cut(&mut self) {
        self.relay.cut();
    }

    /// The uplink comes back; what arrives within `window` is recorded.
    async fn restore(&mut self, window: Duration) {
        self.relay.restore().await;
        self.messages
            .extend(self.observer.collect_for(window).await);
    }

    /// Stops the gateway and reads what was recorded.
    async fn finish(self) -> (Stream, tempfile::TempDir) {
        self.gateway.terminate().await;
        self.broker.stop().await;
        let mut stream = Stream::default();
        stream.read(&self.messages);
        (stream, self.dir)
    }
}

/// One value of `count0` as a subscriber saw it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    value: u32,
    historical: bool,
}

/// Reads the Sparkplug stream: per device, the `count0` values in arrival
/// order (from DBIRTH and DDATA), and the last reported node statistics.
#[derive(Debug, Default)]
struct Stream {
    seen: HashMap<String, Vec<Seen>>,
    /// Alias → device of each device's `count0`.
    aliases: HashMap<u64, String>,
    /// Node metric name by alias, and last value by name.
    node_aliases: HashMap<u64, String>,
    node_metrics: HashMap<String, u64>,
}

impl Stream {
    fn read(&mut self, messages: &[Received]) {
        for m in messages {
            let levels: Vec<&str> = m.topic.split('/').collect();
            let Ok(payload) = <Payload as prost::Message>::decode(&m.payload[..]) else {
                continue;
            };
            match (levels.get(2).copied(), levels.get(4)) {
                (Some("DBIRTH" | "DDATA"), Some(device)) => {
                    for metric in &payload.metrics {
                        if let (Some("count0"), Some(alias)) =
                            (metric.name.as_deref(), metric.alias)
                        {
                            self.aliases.insert(alias, (*device).to_owned());
                        }
                        let is_count = metric.name.as_deref() == Some("count0")
                            || metric
                                .alias
                                .is_some_and(|a| self.aliases.get(&a).is_some_and(|d| d == device));
                        if let (true, Some(metric::Value::IntValue(v))) = (is_count, &metric.value)
                        {
                            self.seen
                                .entry((*device).to_owned())
                                .or_default()
                                .push(Seen {
                                    value: *v,
                                    historical: metric.is_historical == Some(true),
                                });
                        }
                    }
                }
                (Some("NBIRTH" | "NDATA"), None) => {
                    for metric in &payload.metrics {
                        if let (Some(name), Some(alias)) = (&metric.name, metric.alias) {
                            self.node_aliases.insert(alias, name.clone());
                        }
                        let name = metric.name.clone().or_else(|| {
                            metric
                                .alias
                                .and_then(|a| self.node_aliases.get(&a).cloned())
                        });
                        if let (Some(name), Some(metric::Value::LongValue(v))) =
                            (name, &metric.value)
                        {
                            self.node_metrics.insert(name, *v);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// The distinct `count0` values `device` delivered, ascending.
    fn distinct(&self, device: &str) -> Vec<u32> {
        let mut values: Vec<u32> = self
            .seen
            .get(device)
            .map(|s| s.iter().map(|s| s.value).collect())
            .unwrap_or_default();
        values.sort_unstable();
        values.dedup();
        values
    }

    /// Asserts that `device` lost nothing: every number from the first seen to
    /// the last, stored ones flagged and each kind in ascending order.
    /// Checks that `device`'s counter has no gap but possibly `may_lose`
    /// (the values a kill interrupted).
    fn assert_complete(
        &self,
        device: &str,
        at_least_historical: usize,
        may_lose: &[u64],
    ) -> (u32, u32) {
        let seen = self.seen.get(device).map(Vec::as_slice).unwrap_or_default();
        let values = self.distinct(device);
        assert!(!values.is_empty(), "{device}: nothing delivered");
        let (first, last) = (values[0], values[values.len() - 1]);
        let missing: Vec<u32> = (first..=last)
            .filter(|v| values.binary_search(v).is_err() && !may_lose.contains(&u64::from(*v)))
            .collect();
        assert!(missing.is_empty(), "{device}: samples lost: {missing:?}");
        let historical: Vec<u32> = seen
            .iter()
            .filter(|s| s.historical)
            .map(|s| s.value)
            .collect();
        assert!(
            historical.len() >= at_least_historical,
            "{device}: {} historical samples, expected at least {at_least_historical}",
            historical.len()
        );
        let live: Vec<u32> = seen
            .iter()
            .filter(|s| !s.historical)
            .map(|s| s.value)
            .collect();
        for (what, list) in [("historical", &historical), ("live", &live)] {
            // A replay after a lost link may repeat a stretch; within one stretch the order holds.
            let backwards = list.windows(2).filter(|w| w[1] < w[0]).count();
            assert!(
                backwards <= 2,
                "{device}: {what} samples out of order: {list:?}"
            );
        }
        (first, last)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thirty_second_outage_loses_nothing() {
    let local_port = free_port();
    let local = format!("[broker]\nlisten = \"127.0.0.1:{local_port}\"");
    let mut outage = Outage::start(1, &local, SECOND).await;
    let mut hmi = Peer::connect(local_port, "hmi", &["plant/gw/+/count0"]).await;
    outage.cut();
    // A local client keeps getting live values from the embedded broker while the uplink is gone.
    let mut last = 0;
    for second in 0..30 {
        let live = hmi.collect_for(SECOND).await;
        let newest = live
            .iter()
            .filter(|m| m.topic == "plant/gw/d1/count0")
            .filter_map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).ok())
            .filter_map(|v| v["value"].as_u64())
            .max();
        let newest =
            newest.unwrap_or_else(|| panic!("no local value in second {second} of the outage"));
        assert!(newest > last, "local values move on");
        last = newest;
    }
    outage.restore(10 * SECOND).await;

    let (stream, _dir) = outage.finish().await;
    for device in DEVICES {
        let (first, last) = stream.assert_complete(device, 250, &[]);
        assert!(
            last - first >= 300,
            "{device}: {first}..{last} spans less than the outage"
        );
    }
    assert_eq!(
        stream.node_metrics.get("Statistics/Samples Dropped"),
        Some(&0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_buffered_survives_kill_9_in_the_middle_of_an_outage() {
    let mut outage = Outage::start(1, NO_LOCAL_BROKER, 2 * SECOND).await;
    outage.cut();
    tokio::time::sleep(10 * SECOND).await;
    let kill = KillOnAPoll::strike(&mut outage.gateway, &outage.sim, 1).await;
    outage.gateway = Gateway::run(&outage.config, outage.dir.path(), "second");
    tokio::time::sleep(5 * SECOND).await;
    outage.restore(8 * SECOND).await;
    let interrupted: Vec<Vec<u64>> = (1..=3).map(|u| kill.interrupted(&outage.sim, u)).collect();

    let (stream, _dir) = outage.finish().await;
    for (device, may_lose) in DEVICES.iter().zip(&interrupted) {
        // The counter only moves when read, so the time fieldmq was dead
        // leaves no gap; only the read the kill interrupted may be missing.
        let (first, last) = stream.assert_complete(device, 120, may_lose);
        assert!(last - first >= 150, "{device}: {first}..{last}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_capacity_the_oldest_are_dropped_counted_exactly_and_memory_stays_flat() {
    // 40 metrics per batch: 613 bytes a record, so 256 KiB fill in about 9 s.
    let metrics = 40;
    let mut outage = Outage::start(
        metrics,
        "[buffer]\nmax_size = 262144\nsync = \"200ms\"\ndrain_rate = 2000\n\n[broker]\nenabled = false",
        SECOND,
    )
    .await;
    outage.cut();
    tokio::time::sleep(12 * SECOND).await;
    let rss_full = outage.gateway.rss_kib();
    tokio::time::sleep(12 * SECOND).await;
    let rss_later = outage.gateway.rss_kib();
    let disk: u64 = std::fs::read_dir(outage.dir.path().join("buffer"))
        .expect("buffer dir")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    assert!(
        disk <= 262_144 + 4096,
        "the queue stays within max_size: {disk} bytes"
    );
    assert!(
        rss_later <= rss_full + 2048,
        "memory grows while dropping: {rss_full} KiB → {rss_later} KiB"
    );

    outage.restore(8 * SECOND).await;

    let (stream, dir) = outage.finish().await;
    let mut lost_batches = 0;
    for device in DEVICES {
        let values = stream.distinct(device);
        assert!(!values.is_empty(), "{device}: nothing delivered");
        let span = values[values.len() - 1] - values[0] + 1;
        lost_batches += u64::from(span) - values.len() as u64;
    }
    let reported = stream
        .node_metrics
        .get("Statistics/Samples Dropped")
        .copied();
    assert!(lost_batches > 0, "the outage overflowed the queue");
    // What went out live but was not yet proven received when the link
    // died is queued again and, being oldest, dropped first: those copies
    // are counted too, though the subscriber had the originals. They are
    // at most the last confirmation interval's (0.5 s, 15 batches) and a
    // round trip's.
    let reported = reported.expect("the node reports its drops");
    let missing = lost_batches * metrics as u64;
    assert!(
        reported >= missing && (reported - missing).is_multiple_of(metrics as u64),
        "the reported drop count ({reported}) is the samples missing ({missing}) plus whole batches"
    );
    let copies = (reported - missing) / metrics as u64;
    assert!(
        copies <= 20,
        "{copies} dropped batches had arrived live: more than the unproven tail"
    );
    assert!(
        gateway_log_mentions(dir.path(), "samples dropped"),
        "the drops are logged"
    );
}

/// Everything up to and including the DBIRTH of every device.
async fn births(peer: &mut Peer) -> Vec<Received> {
    let mut messages = Vec::new();
    let mut born = 0;
    while born < DEVICES.len() {
        let m = peer.next_where(10 * SECOND, "the DBIRTHs", |_| true).await;
        if m.topic.contains("/DBIRTH/") {
            born += 1;
        }
        messages.push(m);
    }
    messages
}

fn gateway_log_mentions(dir: &Path, text: &str) -> bool {
    std::fs::read_to_string(dir.join("gateway.log")).is_ok_and(|log| log.contains(text))
}
