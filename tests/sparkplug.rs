//! The Sparkplug B edge node against a real mosquitto and the in-process
//! Modbus simulator, with the fieldmq binary run as the service would run it.

mod support;

use std::path::Path;
use std::time::Duration;

use fieldmq::core::identity::Identity;
use fieldmq::core::layout::Table;
use fieldmq::profile::sparkplug::proto::Payload;
use fieldmq::profile::sparkplug::proto::payload::{Metric, metric};
use fieldmq::sim::Simulator;
use prost::Message as _;
use rumqttc::QoS;
use support::mqtt::{Gateway, Mosquitto, Peer, Received, sparkplug_command};
use support::tcp_simulator;

const SECOND: Duration = Duration::from_secs(1);
const GROUP: &str = "plant1";
const NODE: &str = "gw1";

fn topic(kind: &str) -> String {
    format!("spBv1.0/{GROUP}/{kind}/{NODE}")
}

fn device_topic(kind: &str) -> String {
    format!("spBv1.0/{GROUP}/{kind}/{NODE}/plc")
}

/// The test device map: one PLC with read-only and writable metrics.
fn gateway_config(
    sim: std::net::SocketAddr,
    broker: &str,
    data_dir: &Path,
    upstream_extra: &str,
) -> String {
    format!(
        r#"
[node]
group_id = "{GROUP}"
node_id = "{NODE}"
data_dir = "{data_dir}"
stats_interval = "1h"

[upstream]
url = "{broker}"
keep_alive = "5s"
{upstream_extra}

[broker]
enabled = false

[[bus]]
name = "sim"
kind = "tcp"
address = "{sim}"
timeout = "300ms"

[[device]]
name = "plc"
bus = "sim"
unit = 1
poll = "50ms"
offline_after = 2
max_backoff = "1s"

[[device.metric]]
name = "temperature"
table = "input"
address = 0
type = "i16"
scale = 0.1
unit = "°C"

[[device.metric]]
name = "setpoint"
table = "holding"
address = 0
type = "i16"
scale = 0.1
unit = "°C"
writable = true
min = -20.0
max = 80.0

[[device.metric]]
name = "speed"
table = "holding"
address = 1
type = "f32"
writable = true

[[device.metric]]
name = "run"
table = "coil"
address = 0
type = "bool"
writable = true

[[device.metric]]
name = "counter"
table = "holding"
address = 10
type = "u32"
"#,
        data_dir = data_dir.display()
    )
}

/// A simulated PLC with known registers.
fn plc() -> Simulator {
    let sim = Simulator::new();
    sim.set_registers(1, Table::Input, 0, &[215]); // 21.5 °C
    sim.set_registers(1, Table::Holding, 0, &[200, 0x4120, 0x0000]); // 20.0 °C, 10.0
    sim.set_registers(1, Table::Holding, 10, &[0x0001, 0x0002]); // 65538
    sim.set_bits(1, Table::Coil, 0, &[false]);
    sim.set_identity(
        1,
        Identity {
            vendor: "ACME".into(),
            product_code: "PLC-5".into(),
            revision: "3.1".into(),
        },
    );
    sim
}

/// Everything one test needs: broker, simulator, gateway, and a host-side client.
struct Setup {
    broker: Mosquitto,
    sim: Simulator,
    sim_addr: std::net::SocketAddr,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    dir: tempfile::TempDir,
    host: Peer,
}

impl Setup {
    async fn new() -> Setup {
        let broker = Mosquitto::start().await;
        let sim = plc();
        let (sim_addr, server) = tcp_simulator(&sim).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let host = Peer::connect(broker.port, "host", &["spBv1.0/#"]).await;
        Setup {
            broker,
            sim,
            sim_addr,
            server,
            dir,
            host,
        }
    }

    fn write_config(&self, upstream_extra: &str) -> std::path::PathBuf {
        let path = self.dir.path().join("fieldmq.toml");
        let text = gateway_config(
            self.sim_addr,
            &self.broker.url(),
            &self.dir.path().join("data"),
            upstream_extra,
        );
        std::fs::write(&path, text).expect("write config");
        path
    }

    fn start(&self, upstream_extra: &str, name: &str) -> Gateway {
        Gateway::run(&self.write_config(upstream_extra), self.dir.path(), name)
    }

    async fn next(&mut self, kind: &str) -> Received {
        let t = if kind.starts_with('D') {
            device_topic(kind)
        } else {
            topic(kind)
        };
        self.host.next_on(&t, 10 * SECOND).await
    }

    /// The next device message of `kind` that is not a replay of samples
    /// read before the births (those come flagged historical, whenever the
    /// drain gets to them).
    async fn next_live(&mut self, kind: &str) -> Received {
        let t = device_topic(kind);
        self.host
            .next_where(10 * SECOND, kind, |m| {
                m.topic == t
                    && m.sparkplug()
                        .metrics
                        .iter()
                        .any(|metric| metric.is_historical != Some(true))
            })
            .await
    }

    fn writes(&self) -> Vec<(u8, u16)> {
        support::writes(&self.sim)
    }
}

fn named<'a>(payload: &'a Payload, name: &str) -> &'a Metric {
    payload
        .metrics
        .iter()
        .find(|m| m.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no metric {name} in {payload:?}"))
}

fn property<'a>(
    m: &'a Metric,
    key: &str,
) -> Option<&'a fieldmq::profile::sparkplug::proto::payload::PropertyValue> {
    let props = m.properties.as_ref()?;
    let i = props.keys.iter().position(|k| k == key)?;
    props.values.get(i)
}

fn bd_seq(payload: &Payload) -> u64 {
    match named(payload, "bdSeq").value {
        Some(metric::Value::LongValue(v)) => v,
        ref other => panic!("bdSeq is {other:?}"),
    }
}

fn command(metrics: Vec<Metric>) -> Vec<u8> {
    Payload {
        timestamp: Some(fieldmq::core::value::now_ms()),
        metrics,
        ..Payload::default()
    }
    .encode_to_vec()
}

fn by_name(name: &str, value: metric::Value) -> Metric {
    Metric {
        name: Some(name.into()),
        value: Some(value),
        ..Metric::default()
    }
}

#[tokio::test]
async fn births_data_and_a_graceful_death_follow_the_specification() {
    let mut s = Setup::new().await;
    let gw = s.start("", "gw");

    let nbirth = s.next("NBIRTH").await;
    assert!(!nbirth.retain);
    let p = nbirth.sparkplug();
    assert_eq!(p.seq, Some(0), "NBIRTH seq is 0");
    assert!(p.timestamp.is_some());
    assert_eq!(bd_seq(&p), 0, "first connect of a fresh data dir");
    let rebirth = named(&p, "Node Control/Rebirth");
    assert_eq!(rebirth.value, Some(metric::Value::BooleanValue(false)));
    assert_eq!(rebirth.alias, None, "the rebirth metric never has an alias");
    assert_eq!(rebirth.datatype, Some(11));
    assert!(
        p.metrics
            .iter()
            .any(|m| m.name.as_deref() == Some("Statistics/Polls"))
    );

    let dbirth = s.next("DBIRTH").await.sparkplug();
    assert_eq!(dbirth.seq, Some(1));
    let temperature = named(&dbirth, "temperature");
    assert_eq!(temperature.datatype, Some(10), "scaled values are Double");
    assert_eq!(temperature.value, Some(metric::Value::DoubleValue(21.5)));
    assert!(temperature.timestamp.is_some());
    let unit = property(temperature, "engUnit").expect("engUnit property");
    assert_eq!(
        unit.value,
        Some(
            fieldmq::profile::sparkplug::proto::payload::property_value::Value::StringValue(
                "°C".into()
            )
        )
    );
    assert_eq!(named(&dbirth, "speed").datatype, Some(9));
    assert_eq!(
        named(&dbirth, "speed").value,
        Some(metric::Value::FloatValue(10.0))
    );
    assert_eq!(
        named(&dbirth, "run").value,
        Some(metric::Value::BooleanValue(false))
    );
    assert_eq!(named(&dbirth, "counter").datatype, Some(7));
    assert_eq!(
        named(&dbirth, "counter").value,
        Some(metric::Value::IntValue(65538))
    );
    let aliases: Vec<u64> = dbirth.metrics.iter().filter_map(|m| m.alias).collect();
    assert_eq!(aliases.len(), 5, "every device metric has an alias");
    for (name, value) in [
        ("Properties/Vendor", "ACME"),
        ("Properties/Product Code", "PLC-5"),
        ("Properties/Revision", "3.1"),
    ] {
        let property = named(&dbirth, name);
        assert_eq!(property.datatype, Some(12), "{name} is a String");
        assert_eq!(
            property.value,
            Some(metric::Value::StringValue(value.into())),
            "the device's answer to function 43/14"
        );
    }

    // A register change arrives as DDATA by alias only, with the next seq.
    s.sim
        .set_registers(1, Table::Input, 0, &[(-35i16).cast_unsigned()]);
    let ddata = s.next("DDATA").await.sparkplug();
    assert_eq!(ddata.seq, Some(2));
    assert_eq!(ddata.metrics.len(), 1, "only what changed: {ddata:?}");
    let m = &ddata.metrics[0];
    assert_eq!(m.alias, temperature.alias);
    assert_eq!(m.name, None, "DATA refers to metrics by alias only");
    assert_eq!(m.datatype, None);
    assert_eq!(m.value, Some(metric::Value::DoubleValue(-3.5)));

    // SIGTERM: NDEATH with the same bdSeq and no seq, before the DISCONNECT.
    let status = gw.terminate().await;
    assert!(status.success(), "{status:?}");
    let ndeath = s.next("NDEATH").await;
    assert!(!ndeath.retain);
    let d = ndeath.sparkplug();
    assert_eq!(d.seq, None, "NDEATH has no seq");
    assert_eq!(d.metrics.len(), 1);
    assert_eq!(bd_seq(&d), 0);
    s.server.abort();
}

#[tokio::test]
async fn a_killed_gateway_dies_by_its_will_and_the_restart_takes_the_next_bd_seq() {
    let mut s = Setup::new().await;
    let mut gw = s.start("", "first");
    assert_eq!(bd_seq(&s.next("NBIRTH").await.sparkplug()), 0);
    s.next("DBIRTH").await;
    gw.kill().await;
    let will = s.next("NDEATH").await;
    assert_eq!(will.qos, QoS::AtLeastOnce, "the will is published at QoS 1");
    assert!(!will.retain);
    assert_eq!(bd_seq(&will.sparkplug()), 0, "the will matches the birth");

    let gw = s.start("", "second");
    let nbirth = s.next("NBIRTH").await.sparkplug();
    assert_eq!(bd_seq(&nbirth), 1, "bdSeq survives the restart on disk");
    s.next("DBIRTH").await;
    gw.terminate().await;
    assert_eq!(bd_seq(&s.next("NDEATH").await.sparkplug()), 1);
    s.server.abort();
}

#[tokio::test]
async fn seq_counts_every_node_message_and_wraps_past_255() {
    let mut s = Setup::new().await;
    let gw = s.start("", "gw");
    s.next("NBIRTH").await;
    let mut last = s.next("DBIRTH").await.sparkplug().seq.expect("seq");
    let mut wrapped = false;
    let mut value = 0u16;
    let deadline = tokio::time::Instant::now() + 30 * SECOND;
    while !wrapped {
        assert!(
            tokio::time::Instant::now() < deadline,
            "seq did not wrap in 30 s (at {last})"
        );
        value = value.wrapping_add(1);
        s.sim.set_registers(1, Table::Input, 0, &[value]);
        let ddata = s.next("DDATA").await.sparkplug();
        let seq = ddata.seq.expect("DDATA has seq");
        assert_eq!(seq, (last + 1) % 256, "seq increments by one modulo 256");
        assert!(seq <= 255);
        wrapped = last == 255 && seq == 0;
        last = seq;
    }
    gw.terminate().await;
    s.server.abort();
}

#[tokio::test]
async fn rebirth_on_ncmd_resends_births_with_seq_zero_and_the_same_bd_seq() {
    let mut s = Setup::new().await;
    let gw = s.start("", "gw");
    let first = s.next("NBIRTH").await.sparkplug();
    s.next("DBIRTH").await;
    s.sim.set_registers(1, Table::Input, 0, &[300]);
    s.next("DDATA").await;

    let ncmd = command(vec![by_name(
        "Node Control/Rebirth",
        metric::Value::BooleanValue(true),
    )]);
    s.host.publish(&topic("NCMD"), ncmd, false).await;
    let again = s.next("NBIRTH").await.sparkplug();
    assert_eq!(again.seq, Some(0));
    assert_eq!(
        bd_seq(&again),
        bd_seq(&first),
        "a rebirth is not a reconnect"
    );
    let dbirth = s.next("DBIRTH").await.sparkplug();
    assert_eq!(dbirth.seq, Some(1));
    assert_eq!(
        named(&dbirth, "temperature").value,
        Some(metric::Value::DoubleValue(30.0))
    );
    gw.terminate().await;
    s.server.abort();
}

#[tokio::test]
async fn a_dcmd_writes_the_device_and_the_read_back_arrives_as_ddata() {
    let mut s = Setup::new().await;
    let gw = s.start("", "gw");
    s.next("NBIRTH").await;
    let dbirth = s.next("DBIRTH").await.sparkplug();
    let speed_alias = named(&dbirth, "speed").alias.expect("alias");

    // By name with a datatype, as Ignition sends it: the scaled setpoint.
    let mut setpoint = by_name("setpoint", metric::Value::DoubleValue(-12.5));
    setpoint.datatype = Some(10);
    s.host
        .publish(&device_topic("DCMD"), command(vec![setpoint]), false)
        .await;
    let ddata = s.next_live("DDATA").await.sparkplug();
    assert_eq!(
        ddata.metrics[0].value,
        Some(metric::Value::DoubleValue(-12.5))
    );
    assert_eq!(
        s.sim.registers(1, Table::Holding, 0, 1),
        Some(vec![(-125i16).cast_unsigned()]),
        "the raw register holds the value with the scaling reversed"
    );

    // By alias, without a datatype; a float over FC 16.
    let speed = Metric {
        alias: Some(speed_alias),
        value: Some(metric::Value::FloatValue(123.456)),
        ..Metric::default()
    };
    s.host
        .publish(&device_topic("DCMD"), command(vec![speed]), false)
        .await;
    let ddata = s.next_live("DDATA").await.sparkplug();
    assert_eq!(ddata.metrics[0].alias, Some(speed_alias));
    assert_eq!(
        ddata.metrics[0].value,
        Some(metric::Value::FloatValue(123.456))
    );
    assert_eq!(
        s.sim.registers(1, Table::Holding, 1, 2),
        Some(vec![0x42F6, 0xE979])
    );

    // A coil over FC 5.
    s.host
        .publish(
            &device_topic("DCMD"),
            command(vec![by_name("run", metric::Value::BooleanValue(true))]),
            false,
        )
        .await;
    let ddata = s.next_live("DDATA").await.sparkplug();
    assert_eq!(
        ddata.metrics[0].value,
        Some(metric::Value::BooleanValue(true))
    );
    assert_eq!(s.writes(), vec![(6, 0), (16, 1), (5, 0)]);
    gw.terminate().await;
    s.server.abort();
}

#[tokio::test]
async fn refused_commands_write_nothing_and_are_counted_in_a_node_metric() {
    let mut s = Setup::new().await;
    let gw = s.start("", "gw");
    let nbirth = s.next("NBIRTH").await.sparkplug();
    let rejected_alias = named(&nbirth, "Statistics/Commands Rejected")
        .alias
        .expect("alias");
    s.next("DBIRTH").await;

    let refused = [
        by_name("counter", metric::Value::IntValue(5)), // not writable
        by_name("setpoint", metric::Value::DoubleValue(80.5)), // above max
        by_name("setpoint", metric::Value::IntValue(20)), // wrong datatype
        by_name("nonexistent", metric::Value::BooleanValue(true)), // unknown
        Metric {
            alias: Some(9999),
            value: Some(metric::Value::BooleanValue(true)),
            ..Metric::default()
        },
    ];
    let count = refused.len() as u64;
    s.host
        .publish(&device_topic("DCMD"), command(refused.to_vec()), false)
        .await;
    let ndata = s
        .host
        .next_where(10 * SECOND, "NDATA with the rejected count", |m| {
            m.topic == topic("NDATA")
                && m.sparkplug().metrics.iter().any(|x| {
                    x.alias == Some(rejected_alias)
                        && x.value == Some(metric::Value::LongValue(count))
                })
        })
        .await;
    assert!(ndata.sparkplug().seq.is_some());
    tokio::time::sleep(SECOND / 2).await;
    assert_eq!(s.writes(), vec![], "nothing was written");
    assert!(gw.log().contains("command refused"), "{}", gw.log());
    gw.terminate().await;
    s.server.abort();
}

#[tokio::test]
async fn a_device_that_stops_answering_gets_ddeath_and_a_fresh_dbirth_when_back() {
    let mut s = Setup::new().await;
    let gw = s.start("", "gw");
    s.next("NBIRTH").await;
    s.next("DBIRTH").await;
    s.server.abort();
    let ddeath = s.next("DDEATH").await.sparkplug();
    assert!(ddeath.seq.is_some() && ddeath.timestamp.is_some());

    let listener = tokio::net::TcpListener::bind(s.sim_addr)
        .await
        .expect("rebind");
    s.server = tokio::spawn(s.sim.clone().serve_tcp(listener));
    let dbirth = s.next("DBIRTH").await.sparkplug();
    assert_eq!(
        named(&dbirth, "temperature").value,
        Some(metric::Value::DoubleValue(21.5))
    );
    assert_eq!(dbirth.seq, Some((ddeath.seq.unwrap_or(0) + 1) % 256));
    gw.terminate().await;
    s.server.abort();
}

fn state(online: bool, timestamp: u64) -> Vec<u8> {
    format!(r#"{{"online":{online},"timestamp":{timestamp}}}"#).into_bytes()
}

#[tokio::test]
async fn with_a_primary_host_births_wait_for_it_and_its_death_ends_the_session() {
    let mut s = Setup::new().await;
    let gw = s.start("primary_host = \"scada\"", "gw");
    let early = s.host.collect_for(2 * SECOND).await;
    assert!(
        !early.iter().any(|m| m.topic.contains("BIRTH")),
        "no births while the primary host is unknown: {early:?}"
    );

    s.host
        .publish("spBv1.0/STATE/scada", state(true, 1000), true)
        .await;
    let first = s.next("NBIRTH").await.sparkplug();
    s.next("DBIRTH").await;

    // An offline STATE older than the online one is ignored.
    s.host
        .publish("spBv1.0/STATE/scada", state(false, 999), true)
        .await;
    let quiet = s.host.collect_for(SECOND).await;
    assert!(
        !quiet.iter().any(|m| m.topic == topic("NDEATH")),
        "{quiet:?}"
    );

    // The host goes offline: NDEATH, disconnect, reconnect with the next bdSeq, wait again.
    s.host
        .publish("spBv1.0/STATE/scada", state(false, 2000), true)
        .await;
    let death = s.next("NDEATH").await.sparkplug();
    assert_eq!(bd_seq(&death), bd_seq(&first));
    let waiting = s.host.collect_for(2 * SECOND).await;
    assert!(
        !waiting.iter().any(|m| m.topic.contains("BIRTH")),
        "{waiting:?}"
    );

    s.host
        .publish("spBv1.0/STATE/scada", state(true, 3000), true)
        .await;
    let second = s.next("NBIRTH").await.sparkplug();
    assert_eq!(bd_seq(&second), bd_seq(&first) + 1);
    s.next("DBIRTH").await;
    gw.terminate().await;
    s.server.abort();
}

#[tokio::test]
async fn random_bytes_on_command_topics_never_crash_the_gateway_or_write() {
    let mut s = Setup::new().await;
    let mut gw = s.start("", "gw");
    s.next("NBIRTH").await;
    s.next("DBIRTH").await;
    let mut rng = fastrand::Rng::with_seed(0x5EED);
    for i in 0..300 {
        let len = rng.usize(0..200);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        if i % 3 == 0 {
            // Valid protobuf framing with nonsense inside: harder to reject.
            bytes = command(vec![Metric {
                name: Some(String::from_utf8_lossy(&bytes[..len.min(8)]).into_owned()),
                alias: Some(rng.u64(..)),
                datatype: Some(rng.u32(..40)),
                value: Some(metric::Value::LongValue(rng.u64(..))),
                ..Metric::default()
            }]);
        }
        let t = if i % 2 == 0 {
            topic("NCMD")
        } else {
            device_topic("DCMD")
        };
        s.host.publish(&t, bytes, false).await;
    }
    tokio::time::sleep(2 * SECOND).await;
    assert!(gw.is_running(), "{}", gw.log());
    assert_eq!(s.writes(), vec![], "nothing was written");
    // Still serving: a rebirth request is answered.
    let ncmd = command(vec![by_name(
        "Node Control/Rebirth",
        metric::Value::BooleanValue(true),
    )]);
    s.host.publish(&topic("NCMD"), ncmd, false).await;
    assert_eq!(s.next("NBIRTH").await.sparkplug().seq, Some(0));
    gw.terminate().await;
    s.server.abort();
}

#[tokio::test]
async fn a_legacy_state_host_going_offline_and_online_is_obeyed() {
    let mut s = Setup::new().await;
    let gw = s.start(
        "primary_host = \"scada\"\nprimary_host_legacy = true\nconnect_jitter = \"0s\"",
        "gw",
    );
    let early = s.host.collect_for(2 * SECOND).await;
    assert!(
        !early.iter().any(|m| m.topic.contains("BIRTH")),
        "no births before the host says ONLINE: {early:?}"
    );
    // Ignition before Sparkplug 3.0: retained text on STATE/<host id>.
    s.host
        .publish("STATE/scada", b"ONLINE".to_vec(), true)
        .await;
    let first = s.next("NBIRTH").await.sparkplug();
    s.next("DBIRTH").await;

    s.host
        .publish("STATE/scada", b"OFFLINE".to_vec(), true)
        .await;
    let death = s.next("NDEATH").await.sparkplug();
    assert_eq!(bd_seq(&death), bd_seq(&first));
    let waiting = s.host.collect_for(2 * SECOND).await;
    assert!(
        !waiting.iter().any(|m| m.topic.contains("BIRTH")),
        "{waiting:?}"
    );

    s.host
        .publish("STATE/scada", b"ONLINE".to_vec(), true)
        .await;
    let second = s.next("NBIRTH").await.sparkplug();
    assert_eq!(bd_seq(&second), bd_seq(&first) + 1);
    gw.terminate().await;
    s.server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_rebirth_requests_gives_at_most_two_rebirths() {
    let mut s = Setup::new().await;
    let gw = s.start("connect_jitter = \"0s\"", "gw");
    s.next("NBIRTH").await;
    s.next("DBIRTH").await;
    // Past the minimum interval after the births of the connection.
    tokio::time::sleep(1200 * Duration::from_millis(1)).await;
    let rebirth = sparkplug_command("Node Control/Rebirth", metric::Value::BooleanValue(true));
    let flood = tokio::time::Instant::now();
    for _ in 0..100 {
        s.host.publish(&topic("NCMD"), rebirth.clone(), false).await;
        tokio::time::sleep(Duration::from_millis(9)).await;
    }
    assert!(
        flood.elapsed() < 1100 * Duration::from_millis(1),
        "{:?}",
        flood.elapsed()
    );
    let after = s.host.collect_for(3 * SECOND).await;
    let nbirths = after.iter().filter(|m| m.topic == topic("NBIRTH")).count();
    assert!(
        (1..=2).contains(&nbirths),
        "100 requests in a second: {nbirths} rebirths"
    );
    assert!(gw.log().contains("rebirth requested"), "{}", gw.log());
    gw.terminate().await;
    s.server.abort();
}
