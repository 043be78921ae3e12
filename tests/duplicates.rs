//! The duplicate bound of store-and-forward, in the scenario a new user
//! would try: three Modbus TCP devices whose counter steps 4 times a
//! second, the uplink cut for 30 s (its connection dropped and new ones
//! refused), `kill -9` of fieldmq in the middle of the outage and a restart.
//!
//! An observer on the broker (which stays up) records everything. Per
//! device and in both profiles: nothing is lost but the one read the kill
//! may interrupt (the simulator says when it answered), at most 3 values arrive
//! twice, and only values sampled within 1 s of the cut, the kill or the
//! reconnect; stored values come flagged historical (Sparkplug) with their
//! original timestamps, in order.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fieldmq::profile::sparkplug::proto::Payload;
use fieldmq::profile::sparkplug::proto::payload::metric;
use fieldmq::sim::Simulator;
use support::mqtt::{Gateway, Mosquitto, Peer, Received};
use support::relay::Relay;
use support::{KillOnAPoll, tcp_simulator};

const SECOND: Duration = Duration::from_secs(1);
const DEVICES: [&str; 3] = ["d1", "d2", "d3"];
/// How far from an event a value that arrives twice may have been sampled.
const NEAR_MS: u64 = 1000;
/// Values one device may deliver twice.
const MAX_DUPLICATES: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profile {
    Sparkplug,
    Plain,
}

fn config(profile: Profile, sim: std::net::SocketAddr, url: &str, data_dir: &Path) -> String {
    let (profile_key, qos) = match profile {
        Profile::Sparkplug => ("sparkplug", ""),
        Profile::Plain => ("plain", "qos = 1\n"),
    };
    let mut text = format!(
        r#"
[node]
group_id = "plant"
node_id = "gw"
data_dir = "{}"

[upstream]
url = "{url}"
profile = "{profile_key}"
max_backoff = "1s"

[broker]
enabled = false

[[bus]]
name = "sim"
kind = "tcp"
address = "{sim}"
"#,
        data_dir.display()
    );
    for (unit, name) in DEVICES.iter().enumerate() {
        text += &format!(
            "\n[[device]]\nname = \"{name}\"\nbus = \"sim\"\nunit = {}\npoll = \"250ms\"\n{qos}\n[[device.metric]]\nname = \"count\"\ntable = \"input\"\naddress = 0\ntype = \"u16\"\n",
            unit + 1
        );
    }
    text
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One value of a device's counter as the observer saw it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    value: u64,
    sampled_ms: u64,
    historical: bool,
}

/// The counter values per device, in arrival order.
fn read(profile: Profile, messages: &[Received]) -> HashMap<String, Vec<Seen>> {
    let mut seen: HashMap<String, Vec<Seen>> = HashMap::new();
    let mut aliases: HashMap<u64, String> = HashMap::new();
    for m in messages {
        let levels: Vec<&str> = m.topic.split('/').collect();
        match profile {
            Profile::Sparkplug => {
                let (Some(kind @ ("DBIRTH" | "DDATA")), Some(device)) =
                    (levels.get(2).copied(), levels.get(4).copied())
                else {
                    continue;
                };
                let payload = <Payload as prost::Message>::decode(&m.payload[..])
                    .expect("a Sparkplug payload");
                for metric in &payload.metrics {
                    if kind == "DBIRTH"
                        && let (Some("count"), Some(alias)) = (metric.name.as_deref(), metric.alias)
                    {
                        aliases.insert(alias, device.to_owned());
                    }
                    let ours = metric.name.as_deref() == Some("count")
                        || metric
                            .alias
                            .is_some_and(|a| aliases.get(&a).is_some_and(|d| d == device));
                    if let (true, Some(metric::Value::IntValue(v)), Some(ts)) =
                        (ours, &metric.value, metric.timestamp)
                    {
                        seen.entry(device.to_owned()).or_default().push(Seen {
                            value: u64::from(*v),
                            sampled_ms: ts,
                            historical: metric.is_historical == Some(true),
                        });
                    }
                }
            }
            Profile::Plain => {
                let ["plant", "gw", device, "count"] = levels[..] else {
                    continue;
                };
                let json: serde_json::Value =
                    serde_json::from_slice(&m.payload).expect("a JSON value message");
                if let (Some(value), Some(ts)) = (json["value"].as_u64(), json["ts"].as_u64()) {
                    seen.entry(device.to_owned()).or_default().push(Seen {
                        value,
                        sampled_ms: ts,
                        historical: false,
                    });
                }
            }
        }
    }
    seen
}

/// The length of the longest non-increasing subsequence: the fewest
/// ascending runs the sequence splits into (Dilworth).
fn longest_non_increasing(values: &[u64]) -> usize {
    let mut best = vec![1; values.len()];
    for i in 0..values.len() {
        for j in 0..i {
            if values[j] >= values[i] {
                best[i] = best[i].max(best[j] + 1);
            }
        }
    }
    best.into_iter().max().unwrap_or(0)
}

/// Runs the scenario and checks the promise for every device.
async fn outage_with_kill(profile: Profile) {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start().await;
    let relay = Relay::start(broker.port).await;
    let sim = Simulator::new();
    for unit in 1..=3 {
        sim.count_reads(unit, 0);
    }
    let (sim_addr, _server) = tcp_simulator(&sim).await;
    let path = dir.path().join("fieldmq.toml");
    std::fs::write(&path, config(profile, sim_addr, &relay.url(), dir.path())).expect("config");
    let filter = match profile {
        Profile::Sparkplug => "spBv1.0/#",
        Profile::Plain => "plant/#",
    };
    let mut observer = Peer::connect(broker.port, "observer", &[filter]).await;
    let mut gateway = Gateway::run(&path, dir.path(), "first");
    let mut messages = observer.collect_for(6 * SECOND).await;

    let cut = now_ms();
    relay.cut();
    messages.extend(observer.collect_for(15 * SECOND).await);
    let kill = KillOnAPoll::strike(&mut gateway, &sim, 1).await;
    let gateway = Gateway::run(&path, dir.path(), "second");
    messages.extend(observer.collect_for(15 * SECOND).await);
    let reconnect = now_ms();
    relay.restore().await;
    messages.extend(observer.collect_for(12 * SECOND).await);
    gateway.terminate().await;
    messages.extend(observer.collect_for(SECOND).await);
    broker.stop().await;

    let events = [
        ("cut", cut),
        ("kill", kill.at_ms()),
        ("reconnect", reconnect),
    ];
    let seen = read(profile, &messages);
    for (device, unit) in DEVICES.iter().copied().zip(1..) {
        let seen = seen.get(device).map(Vec::as_slice).unwrap_or_default();
        let mut values: Vec<u64> = seen.iter().map(|s| s.value).collect();
        values.sort_unstable();
        let arrivals = values.len();
        values.dedup();
        let (first, last) = match (values.first(), values.last()) {
            (Some(f), Some(l)) => (*f, *l),
            _ => panic!("{device}: nothing delivered"),
        };
        let missing: Vec<u64> = (first..=last)
            .filter(|v| values.binary_search(v).is_err())
            .collect();
        let around: Vec<&Seen> = seen
            .iter()
            .filter(|s| missing.iter().any(|m| s.value.abs_diff(*m) <= 1))
            .collect();
        // The kill lands on a poll: its answer may be on the wire, or in
        // the process between the socket and the queue file, when SIGKILL
        // arrives. That one value may be lost; any other is a defect.
        let interrupted = kill.interrupted(&sim, unit);
        assert!(
            missing.len() <= 1 && missing.iter().all(|m| interrupted.contains(m)),
            "{device}: values lost: {missing:?} (the kill may have interrupted {interrupted:?}), neighbours {around:?} (events {events:?})"
        );
        if !missing.is_empty() {
            eprintln!("{profile:?} {device}: the read the kill interrupted was lost: {missing:?}");
        }
        assert!(
            last - first >= 4 * 40,
            "{device}: {first}..{last} does not span the outage"
        );

        let mut count: HashMap<u64, usize> = HashMap::new();
        for s in seen {
            *count.entry(s.value).or_default() += 1;
        }
        let twice: Vec<&Seen> = seen
            .iter()
            .filter(|s| count.get(&s.value).is_some_and(|n| *n > 1))
            .collect();
        eprintln!(
            "{profile:?} {device}: {} values delivered twice {twice:?}",
            arrivals - values.len()
        );
        assert!(
            arrivals - values.len() <= MAX_DUPLICATES,
            "{device}: {} values delivered twice, at most {MAX_DUPLICATES} allowed: {twice:?} (events {events:?})",
            arrivals - values.len()
        );
        for s in &twice {
            assert!(
                events
                    .iter()
                    .any(|(_, at)| s.sampled_ms.abs_diff(*at) <= NEAR_MS),
                "{device}: value {} sampled at {} arrived twice, far from every event {events:?}",
                s.value,
                s.sampled_ms
            );
        }

        // Every value keeps the time it was sampled: later values, later times.
        let mut by_value: Vec<(u64, u64)> = seen.iter().map(|s| (s.value, s.sampled_ms)).collect();
        by_value.sort_unstable();
        by_value.dedup();
        assert!(
            by_value
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1),
            "{device}: one value with two timestamps, or times out of order"
        );

        if profile == Profile::Sparkplug {
            for s in seen {
                let stored = s.sampled_ms > cut + NEAR_MS && s.sampled_ms + NEAR_MS < reconnect;
                assert!(
                    !stored || s.historical,
                    "{device}: value {} sampled during the outage came without is_historical",
                    s.value
                );
            }
            for kind in [true, false] {
                let list: Vec<u64> = seen
                    .iter()
                    .filter(|s| s.historical == kind)
                    .map(|s| s.value)
                    .collect();
                assert!(
                    list.windows(2).all(|w| w[0] < w[1]),
                    "{device}: {} values out of order: {list:?}",
                    if kind { "historical" } else { "live" }
                );
            }
        } else {
            // Without a flag the consumer sees two streams merged, live
            // values and the backlog, each in order: the arrivals split
            // into two ascending runs (no three of them descend).
            let values: Vec<u64> = seen.iter().map(|s| s.value).collect();
            assert!(
                longest_non_increasing(&values) <= 2,
                "{device}: values out of order: {values:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparkplug_an_outage_with_a_kill_repeats_at_most_three_values_per_device() {
    outage_with_kill(Profile::Sparkplug).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_an_outage_with_a_kill_repeats_at_most_three_values_per_device() {
    outage_with_kill(Profile::Plain).await;
}
