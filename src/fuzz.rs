//! Entry points that feed arbitrary bytes to each of fieldmq's input paths,
//! for the coverage-guided fuzz targets in `fuzz/` and for
//! `tests/fuzz_corpora.rs`, which replays their corpora on stable Rust.
//!
//! Each function takes what an outsider controls (a device's answer, a
//! command payload, a config file, a request) and must neither panic nor
//! hang nor break the invariant it checks: a panic here is a bug found.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::acquire::modbus::cycle;
use crate::acquire::modbus::link::Link;
use crate::acquire::modbus::plan::ReadPlan;
use crate::config::Config;
use crate::config::Overflow;
use crate::core::event::DeviceEvent;
use crate::core::value::{Quality, Sample, Value};
use crate::core::write::WriteImage;
use crate::profile::NodeProfile;
use crate::profile::action::{Action, NodeStats};
use crate::profile::last_values::LastValues;
use crate::profile::sparkplug::host::PrimaryHost;
use crate::store::queue::{Queue, record, sample};

/// The device map every harness uses: a holding, an input, a coil and a
/// float metric, two of them writable with limits.
const DEVICE_MAP: &str = r#"
[node]
group_id = "g"
node_id = "n"

[upstream]
url = "mqtt://127.0.0.1:9"
profile = "PROFILE"

[[bus]]
name = "b"
kind = "KIND"
address = "127.0.0.1:9"
timeout = "50ms"

[[device]]
name = "d"
bus = "b"
unit = 1

[[device.metric]]
name = "level"
table = "holding"
address = 0
type = "u16"
writable = true
max = 100.0

[[device.metric]]
name = "flow"
table = "input"
address = 2
type = "f32"
word_order = "little"

[[device.metric]]
name = "count"
table = "input"
address = 10
type = "i32"

[[device.metric]]
name = "pump"
table = "coil"
address = 3
type = "bool"
writable = true

[[device.metric]]
name = "setpoint"
table = "holding"
address = 20
type = "f32"
writable = true
scale = 0.1
min = -50.0
max = 50.0
"#;

/// The device map in `profile` on a bus of `kind`, parsed once per process
/// (parsing would dominate an execution otherwise).
fn device_map(profile: &str, kind: &str) -> Option<Arc<Config>> {
    type Maps = Vec<(&'static str, &'static str, Option<Arc<Config>>)>;
    static MAPS: std::sync::OnceLock<Maps> = std::sync::OnceLock::new();
    let maps = MAPS.get_or_init(|| {
        let mut maps = Vec::new();
        for profile in ["plain", "sparkplug"] {
            for kind in ["tcp", "rtu-over-tcp"] {
                let text = DEVICE_MAP.replace("PROFILE", profile).replace("KIND", kind);
                let config = Config::from_toml(Path::new("fuzz.toml"), &text)
                    .ok()
                    .map(Arc::new);
                maps.push((profile, kind, config));
            }
        }
        maps
    });
    maps.iter()
        .find(|(p, k, _)| *p == profile && *k == kind)
        .and_then(|(_, _, config)| config.clone())
}

thread_local! {
    /// One runtime per thread, made once: building one per execution would
    /// dominate it.
    static RUNTIME: Option<tokio::runtime::Runtime> = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok();
}

/// Runs `work` to completion on this thread's runtime.
fn block_on<F: std::future::Future>(work: F) -> Option<F::Output> {
    RUNTIME.with(|runtime| runtime.as_ref().map(|r| r.block_on(work)))
}

/// A device answering with `data` (first byte: 0 = Modbus TCP framing,
/// otherwise RTU framing) to one poll cycle, an identification and one bit
/// write, through the link, the cycle and the codec.
pub fn modbus_response(data: &[u8]) {
    let Some((&framing, answer)) = data.split_first() else {
        return;
    };
    let kind = if framing % 2 == 0 {
        "tcp"
    } else {
        "rtu-over-tcp"
    };
    let Some(config) = device_map("plain", kind) else {
        return;
    };
    let (Some(bus), Some(device)) = (config.buses.first(), config.devices.first()) else {
        return;
    };
    let Some(unit) = device.modbus().map(|m| m.unit) else {
        return;
    };
    let answer = answer.to_vec();
    block_on(async {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let device_side = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut rx, mut tx) = tokio::io::split(theirs);
            // Swallow the requests; answer with the bytes, then hang up.
            let drain = tokio::spawn(async move {
                let mut sink = [0u8; 512];
                while matches!(rx.read(&mut sink).await, Ok(n) if n > 0) {}
            });
            let _ = tx.write_all(&answer).await;
            let _ = tx.shutdown().await;
            let _ = drain.await;
        });
        let mut link = Link::attached(bus, ours);
        let mut plan = ReadPlan::for_device(device);
        let polled = cycle::poll(&mut link, &device.name, unit, &mut plan).await;
        assert_eq!(polled.answers.len(), plan.requests().len());
        for reading in cycle::decode(device, &plan, &polled) {
            if let Ok(Value::F32(x)) = reading.value {
                // Any bit pattern is a value; decoding must not invent NaN payload panics.
                let _ = x.is_finite();
            }
        }
        if let Ok(Ok(identity)) = link.identify(unit).await {
            // Whatever the device sent, the strings are printable.
            assert!(!identity.to_string().chars().any(char::is_control));
        }
        let _ = link
            .write(
                unit,
                20,
                &WriteImage::RegisterBit {
                    mask: 0x0100,
                    on: true,
                },
                false,
            )
            .await;
        link.close().await;
        device_side.abort();
    });
}

/// The node, its device online and born, as a command arrives: prepared
/// once per process and cloned for each execution.
fn commanded(profile: &str) -> Option<(NodeProfile, LastValues, Arc<Config>)> {
    type Prepared = Option<(NodeProfile, LastValues, Arc<Config>)>;
    static SPARKPLUG: std::sync::OnceLock<Prepared> = std::sync::OnceLock::new();
    static PLAIN: std::sync::OnceLock<Prepared> = std::sync::OnceLock::new();
    let prepared = match profile {
        "sparkplug" => SPARKPLUG.get_or_init(|| prepare("sparkplug")),
        _ => PLAIN.get_or_init(|| prepare("plain")),
    };
    prepared.clone()
}

fn prepare(profile: &str) -> Option<(NodeProfile, LastValues, Arc<Config>)> {
    let config = device_map(profile, "tcp")?;
    let kind = config.upstream.as_ref()?.profile;
    let mut node = NodeProfile::new(Arc::clone(&config), kind, crate::profile::Role::Uplink);
    let mut cache = LastValues::new(&config);
    let samples = (0..config.devices.first()?.metrics.len())
        .map(|metric| Sample {
            device: 0,
            metric,
            value: None,
            quality: Quality::Bad(crate::core::value::Fault::Timeout),
            timestamp_ms: 1,
        })
        .collect();
    let online = DeviceEvent::Online {
        device: 0,
        samples,
        identity: None,
    };
    cache.apply(&online);
    node.connected(0);
    node.subscribed(&cache, NodeStats::default());
    node.event(&online, &cache);
    Some((node, cache, config))
}

/// Every write a command produced is of a writable metric, within its limits.
fn check_writes(actions: &[Action], config: &Config) {
    for action in actions {
        if let Action::Write(write) = action {
            let metric = config
                .devices
                .get(write.device)
                .and_then(|d| d.metrics.get(write.metric));
            let Some(metric) = metric else {
                panic!("a write to a metric that does not exist: {write:?}");
            };
            assert!(metric.writable, "a write to read-only {}", metric.name);
            if let Some(x) = write.value.as_f64() {
                assert!(
                    x.is_finite()
                        && metric.min.is_none_or(|min| x >= min)
                        && metric.max.is_none_or(|max| x <= max),
                    "{x} written to {} outside its limits",
                    metric.name
                );
            }
        }
    }
}

/// A Sparkplug NCMD or DCMD payload (first byte: bit 0 NCMD/DCMD, bit 1
/// retained) through the edge node's command handling.
pub fn sparkplug_command(data: &[u8]) {
    let Some((&flags, payload)) = data.split_first() else {
        return;
    };
    let Some((mut node, cache, config)) = commanded("sparkplug") else {
        return;
    };
    let topic = if flags & 1 == 0 {
        "spBv1.0/g/NCMD/n"
    } else {
        "spBv1.0/g/DCMD/n/d"
    };
    let actions = node.message(topic, payload, flags & 2 != 0, &cache, NodeStats::default());
    if flags & 2 != 0 {
        assert!(
            actions.iter().all(|a| !matches!(a, Action::Write(_))),
            "a retained command was applied"
        );
    }
    check_writes(&actions, &config);
}

/// A plain-profile `/set` payload (first byte picks the metric, bit 7 retained).
pub fn plain_set(data: &[u8]) {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let Some((mut node, cache, config)) = commanded("plain") else {
        return;
    };
    let names = ["level", "flow", "count", "pump", "setpoint", "nothing"];
    let name = names[usize::from(pick & 0x7f) % names.len()];
    let topic = format!("g/n/d/{name}/set");
    let retained = pick & 0x80 != 0;
    let actions = node.message(&topic, payload, retained, &cache, NodeStats::default());
    if retained {
        assert!(actions.iter().all(|a| !matches!(a, Action::Write(_))));
    }
    check_writes(&actions, &config);
}

/// A primary host's STATE payloads, two in a row (split at the first 0xff).
pub fn state_json(data: &[u8]) {
    let mut host = PrimaryHost::default();
    for part in data.splitn(2, |b| *b == 0xff) {
        let before = host.is_online();
        match host.observe(part) {
            Some(change) => {
                assert_eq!(
                    host.is_online(),
                    change == crate::profile::sparkplug::host::HostChange::Online
                );
            }
            None => assert_eq!(
                host.is_online(),
                before,
                "an ignored STATE changed the state"
            ),
        }
    }
}

/// Distinct scratch directories for [`queue_records`] within one process.
static QUEUE_RUN: AtomicU64 = AtomicU64::new(0);

/// Arbitrary bytes as queue records and as a segment file left on disk
/// (with a cursor from the first 16 bytes): decoding never panics, and the
/// queue opens, drains and acknowledges whatever survives recovery.
pub fn queue_records(data: &[u8]) {
    let mut rest = data;
    while let record::Decoded::Record { payload, size } = record::decode(rest) {
        let _ = sample::decode(payload, |key| (key % 3 == 0).then_some(0));
        rest = rest.get(size..).unwrap_or_default();
    }
    let _ = sample::decode(data, |_| Some(0));
    // Memory-backed where there is one: the disk would set the pace.
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!(
        "fieldmq-fuzz-queue-{}-{}",
        std::process::id(),
        QUEUE_RUN.fetch_add(1, Ordering::Relaxed)
    ));
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let (cursor, segment) = data.split_at(data.len().min(16));
    let cursor_text = format!(
        "{} {}\n",
        cursor.first().copied().unwrap_or(1),
        u64::from_le_bytes(std::array::from_fn(|i| cursor
            .get(1 + i)
            .copied()
            .unwrap_or(0)))
            % 4096
    );
    let written = std::fs::write(dir.join("00000000000000000001.seg"), segment)
        .and_then(|()| std::fs::write(dir.join("cursor"), cursor_text));
    if written.is_ok()
        && let Ok(mut queue) = Queue::open(&dir, 1 << 20, Overflow::DropOldest, sample::count)
    {
        let waiting = queue.len();
        let mut seen = 0;
        while let Ok(records) = queue.peek(64) {
            let Some((_, last)) = records.last() else {
                break;
            };
            seen += records.len() as u64;
            let last = *last;
            if queue.ack(last).is_err() {
                break;
            }
        }
        assert_eq!(seen, waiting, "every recovered record comes out once");
        let _ = queue.append(b"after");
        let _ = queue.sync();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A whole config file: parsed and validated, never a panic; a valid one
/// also yields its read plans.
pub fn config_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `include` reads files by glob: a fuzzer must not walk the file system.
    if text.contains("include") {
        return;
    }
    if let Ok(config) = Config::from_toml(Path::new("fuzz.toml"), text) {
        for device in &config.devices {
            let _ = ReadPlan::for_device(device);
        }
    } else if let Err(e) = Config::from_toml(Path::new("fuzz.toml"), text) {
        let _ = e.to_string();
    }
}

/// A topic filter and a topic (split at the first 0 byte): fieldmq's ACL
/// matching agrees with rmqtt's own matcher on every valid filter. Levels
/// after the first that start with `$` are left out: rmqtt takes any such
/// level for a system level that wildcards do not match, where MQTT gives
/// the `$` rule to the first level only (fieldmq follows MQTT there, and
/// rmqtt then delivers less than the ACL allows, never more). The target
/// found one bug in rmqtt's matcher, fixed in `vendor/rmqtt`: `+` matched
/// a one-level `$` topic.
#[cfg(feature = "broker")]
pub fn topic_acl(data: &[u8]) {
    use std::str::FromStr;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some((filter, topic)) = text.split_once('\0') else {
        return;
    };
    let inner_dollar = |s: &str| s.split('/').skip(1).any(|l| l.starts_with('$'));
    if topic.contains(['+', '#', '\0'])
        || topic.is_empty()
        || !valid_filter(filter)
        || inner_dollar(topic)
        || inner_dollar(filter)
    {
        return;
    }
    let Ok(theirs) = rmqtt::topic::Topic::from_str(filter) else {
        return;
    };
    let ours = crate::sink::local::broker::access::matches(filter, topic);
    assert_eq!(
        ours,
        theirs.matches_str(topic),
        "filter {filter:?} and topic {topic:?}: fieldmq says {ours}"
    );
    if crate::sink::local::broker::access::covers(filter, topic) {
        assert!(
            ours,
            "{filter:?} covers the topic {topic:?} but does not match it"
        );
    }
}

/// A filter as `[broker]` accepts one (the config's rule).
#[cfg(feature = "broker")]
fn valid_filter(filter: &str) -> bool {
    let levels: Vec<&str> = filter.split('/').collect();
    !filter.is_empty()
        && !filter.contains('\0')
        && levels.iter().enumerate().all(|(i, l)| {
            (!l.contains('#') || (*l == "#" && i + 1 == levels.len()))
                && (!l.contains('+') || *l == "+")
        })
}

/// Raw bytes as an HTTP/1 connection to the health endpoint, twice: from
/// this machine (status page included) and from another one, which must log
/// in (the `Authorization` header parsed and checked). No input knows the
/// user's password, so the second is never answered 200.
#[cfg(feature = "broker")]
pub fn health_request(data: &[u8]) {
    static PAGE: std::sync::OnceLock<Option<(crate::ops::health::Probe, Arc<Config>)>> =
        std::sync::OnceLock::new();
    let Some((open, config)) = PAGE.get_or_init(health_page).clone() else {
        return;
    };
    // A login of its own per input: failures slow their address down, and
    // carried over from input to input they would only make the run sleep.
    let login = crate::sink::local::broker::http_login::HttpLogin::standalone(&config.broker);
    let guarded = open
        .clone()
        .with_access(crate::ops::health::Access::Login(Arc::new(login)));
    let probes = [open, guarded];
    let peers = [
        std::net::IpAddr::from([127, 0, 0, 1]),
        std::net::IpAddr::from([192, 0, 2, 1]),
    ];
    for (probe, peer) in probes.into_iter().zip(peers) {
        let answer = block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (ours, mut theirs) = tokio::io::duplex(1 << 16);
            let served = tokio::spawn(crate::ops::health::serve_connection(
                probe,
                ours,
                Some(peer),
                tokio_util::sync::CancellationToken::new(),
            ));
            let _ = theirs.write_all(data).await;
            let _ = theirs.shutdown().await;
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(1),
                theirs.read_to_end(&mut answer),
            )
            .await;
            served.abort();
            answer
        });
        let remote = !peer.is_loopback();
        let answered = answer.unwrap_or_default();
        assert!(
            !(remote && answered.windows(12).any(|w| w == b"HTTP/1.1 200")),
            "a request from another machine was answered without a login"
        );
    }
}

/// The health endpoint with the status page of a one-device gateway whose
/// broker has one user, and that gateway's config.
#[cfg(feature = "broker")]
fn health_page() -> Option<(crate::ops::health::Probe, Arc<Config>)> {
    let text = "[node]\ngroup_id = \"g\"\nnode_id = \"n\"\n\n[[broker.user]]\nname = \"tech\"\npassword_hash = \"$7$101$ZE3ynDDujAAWdLJ8$FJs5vlTv16jzQFAhLcDDZdKGWStcbeXo/2TJgnhCjArhaohuu0m4Z4cylhBNl7y6HLn5kot2DSlN4PYmWBxBAQ==\"\n\n[[bus]]\nname = \"b\"\nkind = \"tcp\"\naddress = \"127.0.0.1:502\"\n\n[[device]]\nname = \"d\"\nbus = \"b\"\nunit = 1\n\n[[device.metric]]\nname = \"m\"\ntable = \"holding\"\naddress = 0\ntype = \"u16\"\n";
    let config = Arc::new(Config::from_toml(std::path::Path::new("fuzz.toml"), text).ok()?);
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let counters: Arc<crate::ops::metrics::Counters> = Arc::default();
    let board = crate::sink::status::StatusBoard::new(
        Arc::clone(&config),
        Arc::clone(&counters),
        None,
        None,
    );
    let open = crate::ops::health::Probe::new(Arc::default(), counters, None, recorder.handle())
        .with_status(Arc::new(board));
    Some((open, config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acquire::modbus::link::Data;

    #[test]
    fn a_well_formed_answer_through_the_attached_link_is_decoded() {
        let config = device_map("plain", "tcp").expect("device map");
        let (bus, device) = (&config.buses[0], &config.devices[0]);
        let unit = device.modbus().expect("a Modbus device").unit;
        let plan = ReadPlan::for_device(device);
        let mut answers = Vec::new();
        for (tid, request) in plan.requests().iter().enumerate() {
            let mut answer = Vec::new();
            let pdu: Vec<u8> = if request.table.is_bits() {
                let bytes = usize::from(request.count).div_ceil(8);
                [
                    vec![request.table.read_function(), bytes as u8],
                    vec![0xff; bytes],
                ]
                .concat()
            } else {
                let bytes = usize::from(request.count) * 2;
                [
                    vec![request.table.read_function(), bytes as u8],
                    vec![0; bytes],
                ]
                .concat()
            };
            answer.extend_from_slice(&(tid as u16).to_be_bytes());
            answer.extend_from_slice(&[0, 0]);
            answer.extend_from_slice(&(pdu.len() as u16 + 1).to_be_bytes());
            answer.push(unit);
            answer.extend_from_slice(&pdu);
            answers.push(answer);
        }
        let polled = block_on(async {
            let (ours, theirs) = tokio::io::duplex(1 << 16);
            let device_side = tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let (mut rx, mut tx) = tokio::io::split(theirs);
                let mut request = [0u8; 12];
                for answer in answers {
                    if rx.read_exact(&mut request).await.is_err() {
                        break;
                    }
                    let _ = tx.write_all(&answer).await;
                }
            });
            let mut link = Link::attached(bus, ours);
            let mut plan = ReadPlan::for_device(device);
            let polled = cycle::poll(&mut link, &device.name, unit, &mut plan).await;
            device_side.abort();
            polled
        })
        .expect("runtime");
        assert!(
            polled
                .answers
                .iter()
                .all(|(_, a)| matches!(a, Ok(Data::Registers(_) | Data::Bits(_)))),
            "{:?}",
            polled.answers
        );
    }

    #[test]
    fn the_harnesses_reach_the_paths_they_fuzz() {
        for (profile, kind) in [("sparkplug", "tcp"), ("plain", "rtu-over-tcp")] {
            assert!(device_map(profile, kind).is_some(), "{profile} {kind}");
        }
        let (mut node, cache, _) = commanded("plain").expect("a commanded node");
        let actions = node.message(
            "g/n/d/level/set",
            b"42",
            false,
            &cache,
            NodeStats::default(),
        );
        assert!(
            matches!(&actions[..], [Action::Write(_)]),
            "a valid /set reaches the write path: {actions:?}"
        );
        let (mut node, cache, _) = commanded("sparkplug").expect("a commanded node");
        let dcmd = crate::profile::sparkplug::proto::Payload {
            metrics: vec![crate::profile::sparkplug::proto::payload::Metric {
                name: Some("level".into()),
                datatype: Some(6),
                value: Some(crate::profile::sparkplug::proto::payload::metric::Value::IntValue(42)),
                ..Default::default()
            }],
            ..Default::default()
        };
        let actions = node.message(
            "spBv1.0/g/DCMD/n/d",
            &prost::Message::encode_to_vec(&dcmd),
            false,
            &cache,
            NodeStats::default(),
        );
        assert!(
            matches!(&actions[..], [Action::Write(_)]),
            "a valid DCMD reaches the write path: {actions:?}"
        );
    }
}
