//! The embedded local broker, tried from outside as local clients would:
//! MQTT behaviour the standard requires, fieldmq's data and states in it,
//! and the users' topic ACLs.

mod support;

use std::path::Path;
use std::time::Duration;

use fieldmq::modbus::plan::Table;
use fieldmq::simulator::Simulator;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, LastWill, MqttOptions, QoS};
use support::mqtt::{Gateway, free_port};
use support::{tcp_simulator, writes};
use tokio::task::JoinHandle;

const SECOND: Duration = Duration::from_secs(1);
/// `mosquitto_passwd -c -b pw alice secret`.
const ALICE: &str = "$7$101$ZE3ynDDujAAWdLJ8$FJs5vlTv16jzQFAhLcDDZdKGWStcbeXo/2TJgnhCjArhaohuu0m4Z4cylhBNl7y6HLn5kot2DSlN4PYmWBxBAQ==";

fn gateway_config(sim: std::net::SocketAddr, dir: &Path, broker: &str) -> String {
    format!(
        r#"
[node]
group_id = "plant"
node_id = "gw"
data_dir = "{}"

{broker}

[[bus]]
name = "sim"
kind = "tcp"
address = "{sim}"

[[device]]
name = "plc"
bus = "sim"
unit = 1
poll = "100ms"

[[device.metric]]
name = "level"
table = "input"
address = 0
type = "u16"

[[device.metric]]
name = "setpoint"
table = "holding"
address = 0
type = "u16"
writable = true
"#,
        dir.display()
    )
}

/// A gateway with its local broker on a free port, and the simulator it
/// polls; `file` (name, contents) is written beside the config first.
async fn start(
    broker: &str,
    file: Option<(&str, &str)>,
) -> (tempfile::TempDir, Gateway, u16, Simulator) {
    let sim = Simulator::new();
    sim.set_registers(1, Table::Input, 0, &[7]);
    sim.set_registers(1, Table::Holding, 0, &[0]);
    let (addr, _server) = tcp_simulator(&sim).await;
    let dir = tempfile::tempdir().expect("tempdir");
    if let Some((name, contents)) = file {
        std::fs::write(dir.path().join(name), contents).expect("file");
    }
    let port = free_port();
    let section = format!("[broker]\nlisten = \"127.0.0.1:{port}\"\n{broker}");
    let config = dir.path().join("fieldmq.toml");
    std::fs::write(&config, gateway_config(addr, dir.path(), &section)).expect("config");
    let gateway = Gateway::run(&config, dir.path(), "gateway");
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (dir, gateway, port, sim)
}

/// A raw client: its handle, the task running its event loop, and what it receives.
struct Client {
    client: AsyncClient,
    task: JoinHandle<()>,
    received: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>, QoS, bool)>,
    connacks: tokio::sync::mpsc::UnboundedReceiver<rumqttc::ConnectReturnCode>,
}

fn client(options: MqttOptions) -> Client {
    let (client, eventloop) = AsyncClient::new(options, 64);
    let (tx, received) = tokio::sync::mpsc::unbounded_channel();
    let (ack_tx, connacks) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(drive(eventloop, tx, ack_tx));
    Client {
        client,
        task,
        received,
        connacks,
    }
}

async fn drive(
    mut eventloop: EventLoop,
    tx: tokio::sync::mpsc::UnboundedSender<(String, Vec<u8>, QoS, bool)>,
    acks: tokio::sync::mpsc::UnboundedSender<rumqttc::ConnectReturnCode>,
) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                let _ = tx.send((p.topic, p.payload.to_vec(), p.qos, p.retain));
            }
            Ok(Event::Incoming(Incoming::ConnAck(c))) => {
                let _ = acks.send(c.code);
            }
            Ok(_) => {}
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                let _ = acks.send(code);
                return;
            }
            Err(_) => return,
        }
    }
}

impl Client {
    async fn accepted(&mut self) -> bool {
        matches!(
            tokio::time::timeout(5 * SECOND, self.connacks.recv()).await,
            Ok(Some(rumqttc::ConnectReturnCode::Success))
        )
    }

    /// What arrives within `window`.
    async fn collect(&mut self, window: Duration) -> Vec<(String, Vec<u8>, QoS, bool)> {
        let deadline = tokio::time::Instant::now() + window;
        let mut out = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, self.received.recv()).await {
            out.push(m);
        }
        out
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.client.subscribe(filter, qos).await.expect("subscribe");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn options(id: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(5 * SECOND);
    o
}

fn with_login(id: &str, port: u16, user: &str, password: &str) -> MqttOptions {
    let mut o = options(id, port);
    o.set_credentials(user, password);
    o
}

const OPEN: &str = "anonymous_publish = [\"#\"]\nanonymous_subscribe = [\"#\", \"$local/#\"]";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_zero_retained_messages_and_wildcards_behave_as_mqtt_says() {
    let (_dir, gateway, port, _sim) = start(OPEN, None).await;

    let mut o = options("idle", port);
    o.set_keep_alive(Duration::ZERO);
    let mut idle = client(o);
    assert!(idle.accepted().await, "keep-alive 0 is legal and accepted");

    let publisher = client(options("pub", port));
    let retain = |payload: &'static str| {
        publisher
            .client
            .publish("site/retained", QoS::AtLeastOnce, true, payload)
    };
    retain("first").await.expect("publish");
    retain("second").await.expect("publish");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut late = client(options("late", port));
    late.subscribe("site/#", QoS::AtLeastOnce).await;
    let got = late.collect(SECOND).await;
    let retained: Vec<_> = got.iter().filter(|m| m.0 == "site/retained").collect();
    assert_eq!(retained.len(), 1, "{got:?}");
    assert_eq!(
        retained[0].1, b"second",
        "the newest retained message replaces the old"
    );
    assert!(retained[0].3, "delivered with the retain flag on subscribe");

    retain("").await.expect("publish");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut later = client(options("later", port));
    later.subscribe("site/#", QoS::AtLeastOnce).await;
    assert!(
        later
            .collect(SECOND)
            .await
            .iter()
            .all(|m| m.0 != "site/retained"),
        "an empty retained payload clears it"
    );

    let mut everything = client(options("all", port));
    everything.subscribe("#", QoS::AtMostOnce).await;
    let mut plus = client(options("plus", port));
    plus.subscribe("site/+/c", QoS::AtMostOnce).await;
    for topic in ["site/b/c", "site/b/c/d", "$local/x"] {
        publisher
            .client
            .publish(topic, QoS::AtMostOnce, false, "x")
            .await
            .expect("publish");
    }
    let all: Vec<String> = everything
        .collect(SECOND)
        .await
        .into_iter()
        .map(|m| m.0)
        .collect();
    assert!(all.contains(&"site/b/c/d".to_owned()), "{all:?}");
    assert!(
        !all.iter().any(|t| t.starts_with('$')),
        "# does not match $-topics: {all:?}"
    );
    let plus: Vec<String> = plus
        .collect(SECOND)
        .await
        .into_iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(plus, vec!["site/b/c".to_owned()], "+ matches one level");
    idle.task.abort();
    gateway.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_is_the_lower_of_publish_and_subscription_and_sessions_queue_for_offline_clients() {
    let (_dir, gateway, port, _sim) = start(OPEN, None).await;
    let publisher = client(options("pub", port));
    let mut q1 = client(options("q1", port));
    q1.subscribe("q/#", QoS::AtLeastOnce).await;
    let mut q2 = client(options("q2", port));
    q2.subscribe("q/#", QoS::ExactlyOnce).await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publisher
            .client
            .publish(format!("q/{}", qos as u8), qos, false, "x")
            .await
            .expect("publish");
    }
    let mut at_1: Vec<(String, QoS)> = q1
        .collect(SECOND)
        .await
        .into_iter()
        .map(|m| (m.0, m.2))
        .collect();
    at_1.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        at_1,
        vec![
            ("q/0".into(), QoS::AtMostOnce),
            ("q/1".into(), QoS::AtLeastOnce),
            ("q/2".into(), QoS::AtLeastOnce)
        ]
    );
    let mut at_2: Vec<(String, QoS)> = q2
        .collect(SECOND)
        .await
        .into_iter()
        .map(|m| (m.0, m.2))
        .collect();
    at_2.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        at_2,
        vec![
            ("q/0".into(), QoS::AtMostOnce),
            ("q/1".into(), QoS::AtLeastOnce),
            ("q/2".into(), QoS::ExactlyOnce)
        ]
    );

    // A persistent session keeps QoS 1 messages for a client that is away.
    let mut o = options("historian", port);
    o.set_clean_session(false);
    let mut historian = client(o.clone());
    historian.subscribe("log/#", QoS::AtLeastOnce).await;
    historian.client.disconnect().await.expect("disconnect");
    tokio::time::sleep(Duration::from_millis(300)).await;
    historian.task.abort();
    for n in 0..20 {
        publisher
            .client
            .publish("log/entry", QoS::AtLeastOnce, false, format!("{n}"))
            .await
            .expect("publish");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut back = client(o);
    let got: Vec<String> = back
        .collect(2 * SECOND)
        .await
        .into_iter()
        .map(|m| String::from_utf8_lossy(&m.1).into_owned())
        .collect();
    assert_eq!(got, (0..20).map(|n| n.to_string()).collect::<Vec<_>>());
    gateway.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_goes_out_on_an_abrupt_disconnect_and_not_on_a_clean_one() {
    let (_dir, gateway, port, _sim) = start(OPEN, None).await;
    let mut watcher = client(options("watch", port));
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;

    let mut o = options("abrupt", port);
    o.set_last_will(LastWill::new(
        "wills/abrupt",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let mut abrupt = client(o);
    assert!(abrupt.accepted().await);
    abrupt.task.abort();

    let mut o = options("polite", port);
    o.set_last_will(LastWill::new(
        "wills/polite",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let mut polite = client(o);
    assert!(polite.accepted().await);
    polite.client.disconnect().await.expect("disconnect");

    let got: Vec<String> = watcher
        .collect(2 * SECOND)
        .await
        .into_iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(got, vec!["wills/abrupt".to_owned()]);
    gateway.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_clients_see_live_values_and_states_and_write_only_with_rights() {
    let users = format!(
        r#"allow_anonymous = false

[[broker.user]]
name = "alice"
password_hash = "{ALICE}"
subscribe = ["plant/gw/#"]
publish = ["plant/gw/plc/setpoint/set"]

[[broker.user]]
name = "viewer"
password_file = "viewer.pw"
subscribe = ["plant/gw/plc/level"]
"#
    );
    // The password file is read relative to the config.
    let (_dir, gateway, port, sim) = start(&users, Some(("viewer.pw", "look\n"))).await;

    let mut anonymous = client(options("anon", port));
    assert!(!anonymous.accepted().await, "anonymous refused");
    let mut wrong = client(with_login("wrong", port, "alice", "nope"));
    assert!(!wrong.accepted().await, "wrong password refused");

    let mut alice = client(with_login("alice", port, "alice", "secret"));
    assert!(alice.accepted().await);
    alice.subscribe("plant/gw/#", QoS::AtLeastOnce).await;
    let got = alice.collect(SECOND).await;
    let topics: Vec<&str> = got.iter().map(|m| m.0.as_str()).collect();
    assert!(
        topics.contains(&"plant/gw/state"),
        "retained node state: {topics:?}"
    );
    assert!(
        topics.contains(&"plant/gw/plc/state"),
        "retained device state: {topics:?}"
    );
    let level = got
        .iter()
        .find(|m| m.0 == "plant/gw/plc/level")
        .expect("level value");
    let json: serde_json::Value = serde_json::from_slice(&level.1).expect("json");
    assert_eq!(json["value"], 7);

    let mut viewer = client(with_login("viewer", port, "viewer", "look"));
    assert!(viewer.accepted().await);
    viewer.subscribe("plant/gw/#", QoS::AtLeastOnce).await;
    viewer
        .subscribe("plant/gw/plc/level", QoS::AtLeastOnce)
        .await;
    let seen: Vec<String> = viewer
        .collect(SECOND)
        .await
        .into_iter()
        .map(|m| m.0)
        .collect();
    assert!(
        seen.iter().all(|t| t == "plant/gw/plc/level"),
        "viewer reads only what it may: {seen:?}"
    );
    assert!(!seen.is_empty(), "viewer gets its one topic");

    viewer
        .client
        .publish("plant/gw/plc/setpoint/set", QoS::AtLeastOnce, false, "55")
        .await
        .expect("publish");
    tokio::time::sleep(SECOND).await;
    assert!(
        writes(&sim).is_empty(),
        "a client without rights writes nothing"
    );

    alice
        .client
        .publish("plant/gw/plc/setpoint/set", QoS::AtLeastOnce, false, "42")
        .await
        .expect("publish");
    let mut written = false;
    for _ in 0..30 {
        if sim.registers(1, Table::Holding, 0, 1) == Some(vec![42]) {
            written = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(written, "alice's /set reached the device");
    assert!(
        gateway.log().contains("publish refused"),
        "refusals are logged"
    );
    gateway.terminate().await;
}

#[tokio::test]
async fn an_open_listener_without_authentication_is_refused_at_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = "127.0.0.1:1".parse().expect("addr");
    let config = dir.path().join("fieldmq.toml");
    std::fs::write(
        &config,
        gateway_config(sim, dir.path(), "[broker]\nlisten = \"0.0.0.0:1883\""),
    )
    .expect("config");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fieldmq"))
        .args(["check", "-c"])
        .arg(&config)
        .output()
        .await
        .expect("run check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(
            "fieldmq.toml:8: [broker]: listen = \"0.0.0.0:1883\" is reachable from the network"
        ),
        "{stderr}"
    );
}
