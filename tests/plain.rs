//! The plain JSON profile against a real mosquitto: topics from the
//! template, per-metric QoS and retain, retained node and device state with
//! the OFFLINE will, and `/set` writes.

mod support;

use std::time::Duration;

use fieldmq::core::identity::Identity;
use fieldmq::core::layout::Table;
use fieldmq::sim::Simulator;
use rumqttc::QoS;
use serde_json::{Value, json};
use support::mqtt::{Gateway, Mosquitto, Peer};
use support::tcp_simulator;

const SECOND: Duration = Duration::from_secs(1);

fn config(sim: std::net::SocketAddr, port: u16, dir: &std::path::Path, session: &str) -> String {
    format!(
        r#"
[node]
group_id = "site"
node_id = "gw"
data_dir = "{}"

[upstream]
url = "mqtt://127.0.0.1:{port}"
profile = "plain"
keep_alive = "5s"
# At once: samples polled while waiting would be replayed with older timestamps.
connect_jitter = "0s"
{session}

[broker]
enabled = false

[[bus]]
name = "sim"
kind = "tcp"
address = "{sim}"
timeout = "300ms"

[[device]]
name = "boiler"
bus = "sim"
unit = 1
poll = "50ms"
offline_after = 2
max_backoff = "1s"

[[device.metric]]
name = "temperature/flow"
table = "input"
address = 0
type = "i16"
scale = 0.1
unit = "°C"
qos = 0
retain = false

[[device.metric]]
name = "alarm"
table = "discrete"
address = 0
type = "bool"
qos = 1

[[device.metric]]
name = "setpoint"
table = "holding"
address = 0
type = "u16"
writable = true
min = 10.0
max = 90.0
"#,
        dir.join("data").display()
    )
}

struct Setup {
    broker: Mosquitto,
    sim: Simulator,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    sim_addr: std::net::SocketAddr,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Setup {
        let broker = Mosquitto::start().await;
        let sim = Simulator::new();
        sim.set_registers(1, Table::Input, 0, &[652]);
        sim.set_bits(1, Table::Discrete, 0, &[false]);
        sim.set_registers(1, Table::Holding, 0, &[55]);
        sim.set_identity(
            1,
            Identity {
                vendor: "ACME".into(),
                product_code: "BX-2".into(),
                revision: "4".into(),
            },
        );
        let (sim_addr, server) = tcp_simulator(&sim).await;
        Setup {
            broker,
            sim,
            server,
            sim_addr,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn start(&self, session: &str, name: &str) -> Gateway {
        let path = self.dir.path().join("fieldmq.toml");
        let text = config(self.sim_addr, self.broker.port, self.dir.path(), session);
        std::fs::write(&path, text).expect("config");
        Gateway::run(&path, self.dir.path(), name)
    }

    fn writes(&self) -> usize {
        support::writes(&self.sim).len()
    }
}

fn json_of(payload: &[u8]) -> Value {
    serde_json::from_slice(payload).expect("JSON payload")
}

#[tokio::test]
async fn metrics_are_json_on_template_topics_with_their_qos_retain_and_state() {
    let s = Setup::new().await;
    let mut client = Peer::connect(s.broker.port, "hmi", &["site/#"]).await;
    let mut gw = s.start("", "gw");

    let state = client.next_on("site/gw/state", 10 * SECOND).await;
    assert_eq!(state.text(), "ONLINE");
    assert!(state.retain || state.qos == QoS::AtLeastOnce);

    let flow = client
        .next_on("site/gw/boiler/temperature/flow", 10 * SECOND)
        .await;
    let v = json_of(&flow.payload);
    assert_eq!(v["value"], json!(65.2));
    assert_eq!(v["unit"], "°C");
    assert_eq!(v["quality"], "good");
    assert!(v["ts"].as_u64().is_some_and(|ts| ts > 1_600_000_000_000));
    assert_eq!(flow.qos, QoS::AtMostOnce, "qos = 0 as configured");

    let alarm = client.next_on("site/gw/boiler/alarm", 10 * SECOND).await;
    assert_eq!(json_of(&alarm.payload)["value"], false);
    assert_eq!(alarm.qos, QoS::AtLeastOnce, "qos = 1 as configured");

    // A late subscriber sees retained values and states at once, but not the unretained one.
    let mut late = Peer::connect(s.broker.port, "late", &["site/#"]).await;
    let seen = late.collect_for(SECOND).await;
    let topics: Vec<&str> = seen
        .iter()
        .filter(|m| m.retain)
        .map(|m| m.topic.as_str())
        .collect();
    assert!(topics.contains(&"site/gw/state"), "{topics:?}");
    assert!(topics.contains(&"site/gw/boiler/state"), "{topics:?}");
    assert!(topics.contains(&"site/gw/boiler/alarm"), "{topics:?}");
    let identity = seen
        .iter()
        .find(|m| m.topic == "site/gw/boiler/identity" && m.retain)
        .unwrap_or_else(|| panic!("a retained identity: {topics:?}"));
    assert_eq!(
        json_of(&identity.payload),
        json!({"vendor": "ACME", "product_code": "BX-2", "revision": "4"})
    );
    assert!(
        !topics.contains(&"site/gw/boiler/temperature/flow"),
        "retain = false: {topics:?}"
    );

    // Device down: retained OFFLINE state and bad quality with a null value.
    s.server.abort();
    let bad = client
        .next_where(10 * SECOND, "bad quality", |m| {
            m.topic == "site/gw/boiler/temperature/flow" && json_of(&m.payload)["quality"] == "bad"
        })
        .await;
    assert_eq!(json_of(&bad.payload)["value"], Value::Null);
    let dstate = client
        .next_where(10 * SECOND, "device OFFLINE", |m| {
            m.topic == "site/gw/boiler/state" && m.text() == "OFFLINE"
        })
        .await;
    assert!(dstate.payload == b"OFFLINE");

    // A crash leaves the retained OFFLINE will.
    gw.kill().await;
    let will = client
        .next_where(10 * SECOND, "node OFFLINE", |m| {
            m.topic == "site/gw/state" && m.text() == "OFFLINE"
        })
        .await;
    assert_eq!(will.qos, QoS::AtLeastOnce);
    let mut after = Peer::connect(s.broker.port, "after", &["site/gw/state"]).await;
    let retained = after.next_on("site/gw/state", 5 * SECOND).await;
    assert_eq!(retained.text(), "OFFLINE", "the will is retained");
}

#[tokio::test]
async fn set_writes_within_limits_and_refuses_everything_else() {
    let s = Setup::new().await;
    let mut client = Peer::connect(s.broker.port, "hmi", &["site/gw/boiler/setpoint"]).await;
    let gw = s.start("", "gw");
    let first = client.next_on("site/gw/boiler/setpoint", 10 * SECOND).await;
    assert_eq!(json_of(&first.payload)["value"], 55);

    client
        .publish("site/gw/boiler/setpoint/set", b"72".to_vec(), false)
        .await;
    let written = client
        .next_where(10 * SECOND, "the read-back", |m| {
            json_of(&m.payload)["value"] == 72
        })
        .await;
    assert_eq!(json_of(&written.payload)["quality"], "good");
    assert_eq!(s.sim.registers(1, Table::Holding, 0, 1), Some(vec![72]));
    assert_eq!(s.writes(), 1);

    // Out of range, wrong type, not JSON, read-only metric, random bytes: nothing written.
    let mut rng = fastrand::Rng::with_seed(7);
    let mut junk: Vec<(String, Vec<u8>)> = vec![
        ("site/gw/boiler/setpoint/set".into(), b"95".to_vec()),
        ("site/gw/boiler/setpoint/set".into(), b"\"72\"".to_vec()),
        ("site/gw/boiler/setpoint/set".into(), b"72.5".to_vec()),
        (
            "site/gw/boiler/setpoint/set".into(),
            b"{\"value\":".to_vec(),
        ),
        ("site/gw/boiler/alarm/set".into(), b"true".to_vec()),
    ];
    for _ in 0..200 {
        let value = match rng.u8(0..6) {
            0 => json!(rng.i64(..)),
            1 => json!(rng.f64() * 1e6 - 5e5),
            2 => json!(null),
            3 => json!([rng.u8(..), "x"]),
            4 => json!({"value": {"nested": rng.u32(..)}}),
            _ => json!(String::from_utf8_lossy(&[rng.u8(..); 5])),
        };
        junk.push((
            "site/gw/boiler/setpoint/set".into(),
            value.to_string().into_bytes(),
        ));
        let bytes: Vec<u8> = (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect();
        junk.push(("site/gw/boiler/setpoint/set".into(), bytes));
    }
    // Valid values inside the limits would be legitimate writes; the fuzz must not contain any.
    junk.retain(|(_, p)| {
        serde_json::from_slice::<Value>(p)
            .ok()
            .and_then(|v| v.as_u64())
            .is_none_or(|n| !(10..=90).contains(&n))
    });
    for (topic, payload) in junk {
        client.publish(&topic, payload, false).await;
    }
    tokio::time::sleep(2 * SECOND).await;
    assert_eq!(s.writes(), 1, "refused commands wrote nothing");
    assert_eq!(s.sim.registers(1, Table::Holding, 0, 1), Some(vec![72]));
    assert!(gw.log().contains("command refused"));
    let status = gw.terminate().await;
    assert!(status.success());
    s.server.abort();
}

#[tokio::test]
async fn a_persistent_session_receives_set_commands_sent_while_the_gateway_was_away() {
    let s = Setup::new().await;
    let session = "clean_session = false\nclient_id = \"boiler-gw\"";
    let client = Peer::connect(s.broker.port, "hmi", &[]).await;
    let mut watcher = Peer::connect(s.broker.port, "watch", &["site/gw/state"]).await;
    let gw = s.start(session, "first");
    watcher
        .next_where(10 * SECOND, "ONLINE", |m| m.text() == "ONLINE")
        .await;
    gw.terminate().await;
    watcher
        .next_where(10 * SECOND, "OFFLINE", |m| m.text() == "OFFLINE")
        .await;

    // The broker queues this QoS 1 command for the absent gateway's session.
    client
        .publish("site/gw/boiler/setpoint/set", b"33".to_vec(), false)
        .await;
    tokio::time::sleep(SECOND / 2).await;
    assert_eq!(s.writes(), 0);

    let gw = s.start(session, "second");
    let deadline = tokio::time::Instant::now() + 10 * SECOND;
    while s.sim.registers(1, Table::Holding, 0, 1) != Some(vec![33]) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "queued /set was not carried out:\n{}",
            gw.log()
        );
        tokio::time::sleep(SECOND / 10).await;
    }
    gw.terminate().await;
    s.server.abort();
}

#[tokio::test]
async fn a_retained_set_left_on_the_broker_is_never_applied_and_a_live_one_once() {
    let s = Setup::new().await;
    let client = Peer::connect(s.broker.port, "hmi", &[]).await;
    // Left retained before the gateway subscribes: the broker delivers it
    // with the retain flag at every (re)subscribe.
    client
        .publish("site/gw/boiler/setpoint/set", b"33".to_vec(), true)
        .await;
    let mut watcher = Peer::connect(s.broker.port, "watch", &["site/gw/state"]).await;
    let gw = s.start("", "gw");
    watcher
        .next_where(10 * SECOND, "ONLINE", |m| m.text() == "ONLINE")
        .await;
    tokio::time::sleep(SECOND).await;
    assert_eq!(s.writes(), 0, "the stored /set was not written");
    assert!(
        gw.log().contains("retained command"),
        "the refusal is logged:\n{}",
        gw.log()
    );

    // A live publish whose sender set retain arrives without the flag
    // (MQTT-3.3.1-9) and is carried out, once.
    client
        .publish("site/gw/boiler/setpoint/set", b"44".to_vec(), true)
        .await;
    let deadline = tokio::time::Instant::now() + 5 * SECOND;
    while s.sim.registers(1, Table::Holding, 0, 1) != Some(vec![44]) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "live /set not applied"
        );
        tokio::time::sleep(SECOND / 10).await;
    }
    tokio::time::sleep(SECOND).await;
    assert_eq!(s.writes(), 1, "applied once");
    gw.terminate().await;
    s.server.abort();
}

#[tokio::test]
async fn an_unchanged_value_is_published_again_after_republish() {
    let s = Setup::new().await;
    let mut client =
        Peer::connect(s.broker.port, "late", &["site/gw/boiler/temperature/flow"]).await;
    let gw = s.start("republish = \"1s\"", "gw");
    let first = client
        .next_on("site/gw/boiler/temperature/flow", 10 * SECOND)
        .await;
    let again = client.collect_for(3500 * Duration::from_millis(1)).await;
    gw.terminate().await;
    let stamps: Vec<u64> = std::iter::once(&first)
        .chain(&again)
        .map(|m| {
            let json = json_of(&m.payload);
            assert_eq!(json["value"], serde_json::json!(65.2), "the same value");
            json["ts"].as_u64().expect("ts")
        })
        .collect();
    assert!(
        (3..=6).contains(&stamps.len()),
        "published about every second though unchanged: {stamps:?}"
    );
    assert!(
        stamps.windows(2).all(|w| w[1] >= w[0] + 900),
        "each time as of its republishing, a period apart: {stamps:?}"
    );
}
