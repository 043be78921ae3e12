//! The embedded local broker, tried from outside as local clients would:
//! MQTT behaviour the standard requires, fieldmq's data and states in it,
//! and the users' topic ACLs.

mod support;

use std::path::Path;
use std::time::Duration;

use fieldmq::core::layout::Table;
use fieldmq::sim::Simulator;
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
    assert!(
        support::mqtt::wait_for_listener(port).await,
        "the gateway's broker listens on {port}"
    );
    (dir, gateway, port, sim)
}

/// Whether holding register `address` of unit 1 reads `value` within 3 s.
async fn holding_becomes(sim: &Simulator, address: u16, value: u16) -> bool {
    for _ in 0..30 {
        if sim.registers(1, Table::Holding, address, 1) == Some(vec![value]) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
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
    let written = holding_becomes(&sim, 0, 42).await;
    assert!(written, "alice's /set reached the device");
    assert!(
        gateway.log().contains("publish refused"),
        "refusals are logged"
    );
    gateway.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metric_made_writable_by_a_reload_takes_local_commands() {
    let (dir, gateway, port, sim) = start(OPEN, None).await;
    sim.set_registers(1, Table::Holding, 1, &[0]);
    let mut hmi = client(options("hmi", port));
    assert!(hmi.accepted().await);
    hmi.subscribe("plant/gw/plc/limit", QoS::AtLeastOnce).await;

    let path = dir.path().join("fieldmq.toml");
    let mut text = std::fs::read_to_string(&path).expect("config");
    text.push_str(
        "\n[[device.metric]]\nname = \"limit\"\ntable = \"holding\"\naddress = 1\ntype = \"u16\"\nwritable = true\n",
    );
    std::fs::write(&path, text).expect("rewrite config");
    gateway.signal(libc::SIGHUP);
    // The local feed publishes the new metric after it has taken the new
    // map, its /set topic included.
    let first = tokio::time::timeout(5 * SECOND, hmi.received.recv()).await;
    assert!(
        matches!(first, Ok(Some((ref topic, ..))) if topic == "plant/gw/plc/limit"),
        "the reloaded metric appears locally: {first:?}\n{}",
        gateway.log()
    );

    hmi.client
        .publish("plant/gw/plc/limit/set", QoS::AtLeastOnce, false, "9")
        .await
        .expect("publish");
    let written = holding_becomes(&sim, 1, 9).await;
    assert!(
        written,
        "the new metric's /set reached the device: {}",
        gateway.log()
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

/// An MQTT 5 client: its handle, its event loop task, and what it receives.
struct Client5 {
    client: rumqttc::v5::AsyncClient,
    task: JoinHandle<()>,
    publishes: tokio::sync::mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Publish>,
    connacks: tokio::sync::mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::ConnAck>,
    /// Set once the connection failed (the client does not reconnect).
    failed: tokio::sync::watch::Receiver<Option<String>>,
}

fn options5(id: &str, port: u16) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(5 * SECOND);
    o.set_max_packet_size(Some(1024 * 1024));
    o
}

fn client5(options: rumqttc::v5::MqttOptions) -> Client5 {
    use rumqttc::v5::{Event, mqttbytes::v5::Packet};
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 64);
    let (tx, publishes) = tokio::sync::mpsc::unbounded_channel();
    let (ack_tx, connacks) = tokio::sync::mpsc::unbounded_channel();
    let (fail_tx, failed) = tokio::sync::watch::channel(None);
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(p);
                }
                Ok(Event::Incoming(Packet::ConnAck(c))) => {
                    let _ = ack_tx.send(c);
                }
                // Nothing more is read, so nothing more acknowledged, once
                // the DISCONNECT is out: what arrives later stays the
                // session's to send again.
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(e) => {
                    let _ = fail_tx.send(Some(e.to_string()));
                    return;
                }
            }
        }
    });
    Client5 {
        client,
        task,
        publishes,
        connacks,
        failed,
    }
}

impl Client5 {
    async fn connack(&mut self) -> rumqttc::v5::mqttbytes::v5::ConnAck {
        tokio::time::timeout(5 * SECOND, self.connacks.recv())
            .await
            .ok()
            .flatten()
            .expect("a CONNACK")
    }

    async fn collect(&mut self, window: Duration) -> Vec<rumqttc::v5::mqttbytes::v5::Publish> {
        let deadline = tokio::time::Instant::now() + window;
        let mut out = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, self.publishes.recv()).await {
            out.push(m);
        }
        out
    }

    async fn subscribe(&mut self, filter: &str, qos: rumqttc::v5::mqttbytes::QoS) {
        self.client.subscribe(filter, qos).await.expect("subscribe");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    /// Disconnects cleanly and waits until the broker has seen it.
    async fn leave(self) {
        self.client.disconnect().await.expect("disconnect");
        tokio::time::timeout(5 * SECOND, self.task)
            .await
            .expect("the DISCONNECT goes out")
            .expect("client task");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn payloads(got: &[rumqttc::v5::mqttbytes::v5::Publish]) -> Vec<String> {
    got.iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_sessions_last_as_long_as_asked_and_no_longer_than_allowed() {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    let (_dir, gateway, port, _sim) =
        start(&format!("{OPEN}\nsession_expiry = \"2s\""), None).await;
    let publisher = client(options("pub", port));
    let persistent = |id: &str, expiry: Option<u32>| {
        let mut o = options5(id, port);
        o.set_clean_start(false);
        o.set_session_expiry_interval(expiry);
        o
    };
    let publish_five = |topic: &'static str| {
        let publisher = publisher.client.clone();
        async move {
            for n in 0..5 {
                publisher
                    .publish(topic, QoS::AtLeastOnce, false, format!("{n}"))
                    .await
                    .expect("publish");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };

    // Asked for an hour, back within a second: the session and its queue are there.
    let mut brief = client5(persistent("brief", Some(3600)));
    brief.connack().await;
    brief.subscribe("s/brief", QoS5::AtLeastOnce).await;
    brief.leave().await;
    publish_five("s/brief").await;
    let mut back = client5(persistent("brief", Some(3600)));
    assert!(back.connack().await.session_present, "the session was kept");
    assert_eq!(
        payloads(&back.collect(SECOND).await),
        vec!["0", "1", "2", "3", "4"],
        "QoS 1 messages queued while away, in order"
    );
    back.leave().await;

    // Delivered but never acknowledged, then the connection breaks: the
    // messages are sent again, flagged dup, in their original order
    // (MQTT-4.6.0-1; rmqtt 0.24.0 reversed them, see vendor/README.md).
    let mut unacked = persistent("unacked", Some(3600));
    unacked.set_manual_acks(true);
    let mut first = client5(unacked.clone());
    first.connack().await;
    first.subscribe("s/unacked", QoS5::AtLeastOnce).await;
    publish_five("s/unacked").await;
    assert_eq!(payloads(&first.collect(SECOND).await).len(), 5);
    first.task.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut resumed = client5(unacked);
    assert!(resumed.connack().await.session_present);
    let again = resumed.collect(SECOND).await;
    assert_eq!(
        payloads(&again),
        vec!["0", "1", "2", "3", "4"],
        "unacknowledged messages sent again in order"
    );
    assert!(again.iter().all(|p| p.dup), "sent again with the dup flag");
    for p in &again {
        resumed.client.ack(p).await.expect("ack");
    }
    resumed.leave().await;

    // Asked for an hour, but [broker] session_expiry = 2s caps it.
    let mut long = client5(persistent("long", Some(3600)));
    long.connack().await;
    long.subscribe("s/long", QoS5::AtLeastOnce).await;
    long.leave().await;
    tokio::time::sleep(4 * SECOND).await;
    publish_five("s/long").await;
    let mut late = client5(persistent("long", Some(3600)));
    assert!(
        !late.connack().await.session_present,
        "the session expired after the configured cap"
    );
    assert!(late.collect(SECOND).await.is_empty());
    late.leave().await;

    // No session expiry (0, the MQTT 5 default): the session ends with the connection.
    let mut none = client5(persistent("none", None));
    none.connack().await;
    none.subscribe("s/none", QoS5::AtLeastOnce).await;
    none.leave().await;
    publish_five("s/none").await;
    let mut again = client5(persistent("none", None));
    assert!(!again.connack().await.session_present);
    assert!(again.collect(SECOND).await.is_empty());
    again.leave().await;
    gateway.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_maximum_packet_size_and_receive_maximum_are_respected() {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    let (_dir, gateway, port, _sim) = start(&format!("{OPEN}\nmax_packet_size = 4096"), None).await;
    let publisher = client(options("pub", port));

    // The client's maximum packet size: a larger message is not sent to it
    // (MQTT-3.1.2-24), and the connection stays up.
    let mut o = options5("small", port);
    o.set_max_packet_size(Some(1024));
    let mut small = client5(o);
    let connack = small.connack().await;
    assert_eq!(
        connack.properties.and_then(|p| p.max_packet_size),
        Some(4096),
        "the broker announces its own maximum"
    );
    small.subscribe("size/#", QoS5::AtMostOnce).await;
    let mut roomy = client5(options5("roomy", port));
    roomy.connack().await;
    roomy.subscribe("size/#", QoS5::AtMostOnce).await;
    for (topic, len) in [("size/big", 2000), ("size/small", 10)] {
        publisher
            .client
            .publish(topic, QoS::AtMostOnce, false, vec![b'x'; len])
            .await
            .expect("publish");
    }
    let topics = |got: Vec<rumqttc::v5::mqttbytes::v5::Publish>| -> Vec<String> {
        got.iter()
            .map(|p| String::from_utf8_lossy(&p.topic).into_owned())
            .collect()
    };
    assert_eq!(
        topics(roomy.collect(SECOND).await),
        vec!["size/big", "size/small"]
    );
    let got = topics(small.collect(SECOND).await);
    assert_eq!(
        got,
        vec!["size/small"],
        "small client: {:?}",
        *small.failed.borrow()
    );
    assert_eq!(
        *small.failed.borrow(),
        None,
        "the small client is still connected"
    );

    // The broker's maximum: a client sending a larger packet is disconnected.
    let closed = raw_mqtt5_publish(port, 8000).await;
    assert!(
        closed,
        "an 8000-byte PUBLISH over max_packet_size = 4096 ends the connection"
    );

    // Receive maximum 2: never more than two QoS 1 messages unacknowledged.
    let mut o = options5("slow", port);
    o.set_receive_maximum(Some(2));
    o.set_manual_acks(true);
    let mut slow = client5(o);
    slow.connack().await;
    slow.subscribe("rm/#", QoS5::AtLeastOnce).await;
    for n in 0..10 {
        publisher
            .client
            .publish("rm/x", QoS::AtLeastOnce, false, format!("{n}"))
            .await
            .expect("publish");
    }
    let first = slow.collect(SECOND).await;
    assert_eq!(payloads(&first), vec!["0", "1"], "two in flight, no more");
    slow.client.ack(&first[0]).await.expect("ack");
    let next = slow.collect(SECOND).await;
    assert_eq!(
        payloads(&next),
        vec!["2"],
        "one acknowledged, one more sent"
    );
    let mut rest = Vec::new();
    let mut pending = vec![first[1].clone(), next[0].clone()];
    for _ in 0..20 {
        for p in pending.drain(..) {
            slow.client.ack(&p).await.expect("ack");
        }
        pending = slow.collect(Duration::from_millis(300)).await;
        rest.extend(payloads(&pending));
        if rest.len() >= 7 {
            break;
        }
    }
    assert_eq!(rest, (3..10).map(|n| n.to_string()).collect::<Vec<_>>());
    slow.task.abort();
    small.task.abort();
    roomy.task.abort();
    gateway.terminate().await;
}

/// Connects with MQTT 5 over a bare socket and publishes `len` bytes of
/// QoS 0 payload; true if the broker then closed the connection (with or
/// without a DISCONNECT "packet too large" first).
async fn raw_mqtt5_publish(port: u16, len: usize) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let connect = [
        0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 0, 3, b'r', b'a', b'w',
    ];
    socket.write_all(&connect).await.expect("CONNECT");
    let mut connack = [0u8; 64];
    let n = tokio::time::timeout(5 * SECOND, socket.read(&mut connack))
        .await
        .expect("CONNACK in time")
        .expect("read CONNACK");
    assert!(
        n >= 4 && connack[0] == 0x20 && connack[3] == 0,
        "CONNACK success: {:?}",
        &connack[..n]
    );
    let topic = b"size/raw";
    let remaining = 2 + topic.len() + 1 + len;
    let mut publish = vec![0x30];
    let mut rest = remaining;
    loop {
        let mut byte = (rest % 128) as u8;
        rest /= 128;
        if rest > 0 {
            byte |= 0x80;
        }
        publish.push(byte);
        if rest == 0 {
            break;
        }
    }
    publish.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    publish.extend_from_slice(topic);
    publish.push(0);
    publish.resize(publish.len() + len, b'x');
    if socket.write_all(&publish).await.is_err() {
        return true;
    }
    let mut reply = Vec::new();
    match tokio::time::timeout(3 * SECOND, socket.read_to_end(&mut reply)).await {
        Ok(_) => {
            if let Some(&first) = reply.first() {
                assert_eq!(first, 0xE0, "only a DISCONNECT may come back: {reply:?}");
                assert_eq!(reply.get(2), Some(&0x95), "reason: packet too large");
            }
            true
        }
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_sparkplug_profile_a_local_host_gets_births_data_and_may_command() {
    use fieldmq::profile::sparkplug::proto::Payload;
    use fieldmq::profile::sparkplug::proto::payload::{Metric, metric};
    let (_dir, gateway, port, sim) = start(&format!("profile = \"sparkplug\"\n{OPEN}"), None).await;
    let mut host =
        support::mqtt::Peer::connect(port, "local-host", &["spBv1.0/#", "plant/#"]).await;
    let command = support::mqtt::sparkplug_command;
    let named = |p: &Payload, name: &str| -> Metric {
        p.metrics
            .iter()
            .find(|m| m.name.as_deref() == Some(name))
            .cloned()
            .unwrap_or_else(|| panic!("no metric {name} in {p:?}"))
    };

    // A host that connects after the births asks for them again.
    host.request_rebirth("plant", "gw").await;
    let nbirth = host
        .next_on("spBv1.0/plant/NBIRTH/gw", 5 * SECOND)
        .await
        .sparkplug();
    assert_eq!(nbirth.seq, Some(0));
    let bd_seq = named(&nbirth, "bdSeq").value;
    assert!(bd_seq.is_some(), "NBIRTH carries bdSeq");
    let dbirth = host
        .next_on("spBv1.0/plant/DBIRTH/gw/plc", 5 * SECOND)
        .await
        .sparkplug();
    assert_eq!(
        named(&dbirth, "level").value,
        Some(metric::Value::IntValue(7))
    );
    let level_alias = named(&dbirth, "level").alias;

    sim.set_registers(1, Table::Input, 0, &[8]);
    let ddata = host
        .next_on("spBv1.0/plant/DDATA/gw/plc", 5 * SECOND)
        .await
        .sparkplug();
    let level = ddata
        .metrics
        .iter()
        .find(|m| m.alias == level_alias)
        .expect("level in DDATA, by alias");
    assert_eq!(level.value, Some(metric::Value::IntValue(8)));

    host.publish(
        "spBv1.0/plant/DCMD/gw/plc",
        command("setpoint", metric::Value::IntValue(5)),
        false,
    )
    .await;
    let written = holding_becomes(&sim, 0, 5).await;
    assert!(written, "the local DCMD reached the register");

    let plain = host.collect_for(Duration::from_millis(200)).await;
    assert!(
        plain.iter().all(|m| !m.topic.starts_with("plant/")),
        "the plain profile is not published as well"
    );
    gateway.terminate().await;
    let ndeath = host
        .next_on("spBv1.0/plant/NDEATH/gw", 5 * SECOND)
        .await
        .sparkplug();
    assert_eq!(
        named(&ndeath, "bdSeq").value,
        bd_seq,
        "NDEATH names the session it ends"
    );
}

/// An MQTT 3.1.1 client on a bare socket that subscribes to `filter` at QoS 1
/// and then never reads: its queue at the broker only grows.
async fn stuck_subscriber(port: u16, id: &str, filter: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut connect = vec![0x10, (10 + 2 + id.len()) as u8];
    connect.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0]);
    connect.extend_from_slice(&(id.len() as u16).to_be_bytes());
    connect.extend_from_slice(id.as_bytes());
    socket.write_all(&connect).await.expect("CONNECT");
    let mut connack = [0u8; 4];
    socket.read_exact(&mut connack).await.expect("CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0], "{id} accepted");
    let mut subscribe = vec![0x82, (2 + 2 + filter.len() + 1) as u8, 0, 1];
    subscribe.extend_from_slice(&(filter.len() as u16).to_be_bytes());
    subscribe.extend_from_slice(filter.as_bytes());
    subscribe.push(1);
    socket.write_all(&subscribe).await.expect("SUBSCRIBE");
    socket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_reader_and_a_flooding_writer_neither_exhaust_memory_nor_stall_the_uplink() {
    let uplink = support::mqtt::Mosquitto::start().await;
    let limits = format!(
        "{OPEN}\nmax_clients = 8\nmax_queued = 200\nmax_inflight = 4\n\n[upstream]\nurl = \"{}\"\n",
        uplink.url()
    );
    let mut upstream = support::mqtt::Peer::connect(uplink.port, "host", &["spBv1.0/#"]).await;
    let (_dir, gateway, port, sim) = start(&limits, None).await;
    sim.count_reads(1, 0);
    upstream
        .next_on("spBv1.0/plant/DBIRTH/gw/plc", 10 * SECOND)
        .await;
    let _stuck: Vec<_> = stuck_subscribers(port).await;
    tokio::time::sleep(SECOND).await;
    let rss_before = gateway.rss_kib();

    // 8 KiB messages as fast as a client can send them, for 10 s: each is
    // routed to the stuck readers, whose queues are bounded.
    let flood = client(options("flood", port));
    let flooding = tokio::spawn(async move {
        let payload = vec![b'x'; 8192];
        let until = tokio::time::Instant::now() + 10 * SECOND;
        let mut sent = 0u64;
        while tokio::time::Instant::now() < until {
            if flood
                .client
                .publish("junk/x", QoS::AtMostOnce, false, payload.clone())
                .await
                .is_err()
            {
                break;
            }
            sent += 1;
        }
        sent
    });
    let mut quiet_seconds = Vec::new();
    for second in 0..10 {
        let got = upstream.collect_for(SECOND).await;
        if !got.iter().any(|m| m.topic == "spBv1.0/plant/DDATA/gw/plc") {
            quiet_seconds.push(second);
        }
    }
    let sent = flooding.await.expect("flood task");
    let rss_after = gateway.rss_kib();
    eprintln!("flood of {sent} messages: gateway RSS {rss_before} KiB → {rss_after} KiB");
    assert!(sent > 1000, "the flood was a flood: {sent} messages");
    assert!(
        quiet_seconds.len() <= 1,
        "the uplink kept getting live data during the flood; silent seconds: {quiet_seconds:?}"
    );
    assert!(
        rss_after < rss_before + 32 * 1024,
        "memory is bounded by the queue limits: {rss_before} KiB → {rss_after} KiB after {sent} messages"
    );

    // The client limit holds, and the broker still serves a well-behaved client.
    let mut extra = client(options("ninth", port));
    assert!(
        !extra.accepted().await,
        "a ninth client is refused with max_clients = 8"
    );
    extra.task.abort();
    gateway.terminate().await;
    uplink.stop().await;
}

/// Seven stuck subscribers to `#`: with the flooding writer, the broker is full.
async fn stuck_subscribers(port: u16) -> Vec<tokio::net::TcpStream> {
    let mut stuck = Vec::new();
    for n in 0..7 {
        stuck.push(stuck_subscriber(port, &format!("stuck{n}"), "#").await);
    }
    stuck
}

/// A rumqttc client over TLS that trusts `ca`, with a client certificate if given.
fn tls_options(id: &str, port: u16, ca: &Path, client: Option<(&Path, &Path)>) -> MqttOptions {
    use fieldmq::sink::pem::{certificates, private_key};
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(ca).expect("ca") {
        roots.add(cert).expect("add ca");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => {
            let chain = certificates(cert).expect("client cert");
            let key = private_key(key).expect("client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    let mut o = options(id, port);
    o.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(config)),
    ));
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_listener_serves_verified_clients_the_same_data_and_rules() {
    let certs_dir = tempfile::tempdir().expect("tempdir");
    let certs = support::mqtt::Certificates::make(certs_dir.path());
    let tls_port = free_port();
    let section = format!(
        "tls_listen = \"127.0.0.1:{tls_port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntls_client_ca = \"{}\"\nanonymous_subscribe = [\"plant/#\"]",
        certs.server_cert.display(),
        certs.server_key.display(),
        certs.ca.display()
    );
    let (_dir, gateway, _port, _sim) = start(&section, None).await;

    let mut viewer = client(tls_options(
        "viewer",
        tls_port,
        &certs.ca,
        Some((&certs.client_cert, &certs.client_key)),
    ));
    assert!(
        viewer.accepted().await,
        "a client with a certificate from the CA connects"
    );
    viewer.subscribe("plant/#", QoS::AtLeastOnce).await;
    let got = viewer.collect(2 * SECOND).await;
    assert!(
        got.iter().any(|m| m.0 == "plant/gw/plc/level"),
        "live values over TLS: {:?}",
        got.iter().map(|m| &m.0).collect::<Vec<_>>()
    );

    let mut anonymous_writer = client(tls_options(
        "writer",
        tls_port,
        &certs.ca,
        Some((&certs.client_cert, &certs.client_key)),
    ));
    assert!(anonymous_writer.accepted().await);
    anonymous_writer
        .client
        .publish("plant/gw/plc/setpoint/set", QoS::AtLeastOnce, false, "5")
        .await
        .expect("publish");
    tokio::time::sleep(SECOND).await;
    assert!(
        gateway.log().contains("local broker: publish refused"),
        "the same ACL applies over TLS"
    );

    let mut no_cert = client(tls_options("nocert", tls_port, &certs.ca, None));
    assert!(
        !no_cert.accepted().await,
        "tls_client_ca makes a client certificate mandatory"
    );
    let mut plain = client(options("plain", tls_port));
    assert!(!plain.accepted().await, "no plain MQTT on the TLS port");
    for c in [&viewer, &anonymous_writer, &no_cert, &plain] {
        c.task.abort();
    }
    gateway.terminate().await;
}

/// The four logins of the trust-boundary scenarios (password "secret"
/// each), with anonymous clients left read-only.
fn four_users(extra: &str) -> String {
    let user = |name: &str, rights: &str| {
        format!("\n[[broker.user]]\nname = \"{name}\"\npassword_hash = \"{ALICE}\"\n{rights}\n")
    };
    format!(
        "{extra}\n{}{}{}{}",
        user("historian", "subscribe = [\"#\"]"),
        user("viewer", "subscribe = [\"plant/gw/plc/level\"]"),
        user(
            "operator",
            "subscribe = [\"plant/gw/#\"]\npublish = [\"plant/gw/plc/setpoint/set\"]"
        ),
        user(
            "writer",
            "subscribe = [\"scratch/#\"]\npublish = [\"scratch/#\"]"
        ),
    )
}

fn refused_with(code: Option<rumqttc::ConnectReturnCode>) -> bool {
    matches!(code, Some(rumqttc::ConnectReturnCode::NotAuthorized))
}

impl Client {
    async fn connack(&mut self) -> Option<rumqttc::ConnectReturnCode> {
        tokio::time::timeout(5 * SECOND, self.connacks.recv())
            .await
            .ok()
            .flatten()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_on_a_topic_its_client_may_not_publish_is_refused_at_connect() {
    let (_dir, gateway, port, _sim) = start(&four_users(""), None).await;
    let mut watcher = client(with_login("watch", port, "historian", "secret"));
    watcher.subscribe("#", QoS::AtLeastOnce).await;

    let mut o = options("forger", port);
    o.set_last_will(LastWill::new(
        "plant/gw/plc/level",
        "666",
        QoS::AtLeastOnce,
        true,
    ));
    let mut forger = client(o);
    assert!(
        refused_with(forger.connack().await),
        "a read-only anonymous client with a will on a data topic is refused (3.1.1 code 5)"
    );
    forger.task.abort();

    // A will the client may publish still works.
    let mut o = with_login("scribe", port, "writer", "secret");
    o.set_last_will(LastWill::new(
        "scratch/will",
        "gone",
        QoS::AtLeastOnce,
        true,
    ));
    let mut scribe = client(o);
    assert!(scribe.accepted().await);
    scribe.task.abort();
    drop(scribe);

    let got = watcher.collect(3 * SECOND).await;
    assert!(
        got.iter().all(|m| m.1 != b"666"),
        "the forged value was never delivered: {got:?}"
    );
    assert!(
        got.iter().any(|m| m.0 == "scratch/will" && m.1 == b"gone"),
        "an allowed will goes out on an abrupt drop: {got:?}"
    );
    let mut late = client(options("late", port));
    late.subscribe("plant/gw/plc/level", QoS::AtLeastOnce).await;
    let retained = late.collect(SECOND).await;
    assert!(
        retained.iter().all(|m| m.1 != b"666"),
        "the forged value was never retained: {retained:?}"
    );
    gateway.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_stays_with_the_user_whose_session_it_is() {
    let (_dir, gateway, port, sim) = start(&four_users(""), None).await;
    let mut o = with_login("hist", port, "historian", "secret");
    o.set_clean_session(false);
    let mut historian = client(o);
    assert!(historian.accepted().await);
    historian.subscribe("#", QoS::AtLeastOnce).await;

    let mut o = with_login("hist", port, "viewer", "secret");
    o.set_clean_session(false);
    let mut viewer = client(o);
    assert!(
        refused_with(viewer.connack().await),
        "another user cannot take over the historian's session"
    );
    viewer.task.abort();
    let mut o = options("hist", port);
    o.set_clean_session(true);
    let mut anonymous = client(o);
    assert!(
        refused_with(anonymous.connack().await),
        "nor can an anonymous client"
    );
    anonymous.task.abort();

    historian.collect(Duration::from_millis(200)).await;
    sim.set_registers(1, Table::Input, 0, &[8]);
    let still = historian.collect(2 * SECOND).await;
    assert!(
        still.iter().any(|m| m.0.starts_with("plant/gw/")),
        "the historian was not kicked off and keeps receiving"
    );
    assert!(!historian.task.is_finished());
    gateway.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_send_connect_are_capped_and_closed() {
    let extra = "connect_timeout = \"1s\"\nmax_pending_per_address = 8\nmax_pending = 64";
    let (_dir, gateway, port, _sim) = start(extra, None).await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect"),
        );
    }
    let closed = |streams: &mut Vec<tokio::net::TcpStream>| {
        streams
            .iter_mut()
            .filter(|s| {
                let mut byte = [0u8; 1];
                matches!(s.try_read(&mut byte), Ok(0) | Err(_))
                    && !matches!(s.try_read(&mut byte), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
            })
            .count()
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at_once = closed(&mut idle);
    assert!(
        at_once >= 12,
        "beyond 8 pending connections from one address, the rest are closed at once ({at_once} of 20)"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        closed(&mut idle),
        20,
        "connections without CONNECT are closed after connect_timeout"
    );
    let mut fine = client(options("fine", port));
    assert!(fine.accepted().await, "a real client still gets in");
    gateway.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_cannot_lock_out_a_configured_user() {
    let (_dir, gateway, port, _sim) = start(&four_users("max_clients = 4"), None).await;
    let mut o = options("sticky", port);
    o.set_clean_session(false);
    let mut sticky = client(o);
    assert!(
        refused_with(sticky.connack().await),
        "anonymous clients get no persistent session where users are configured"
    );
    sticky.task.abort();
    let mut crowd = Vec::new();
    let mut accepted = 0;
    for i in 0..10 {
        let mut c = client(options(&format!("crowd{i}"), port));
        if c.accepted().await {
            accepted += 1;
        }
        crowd.push(c);
    }
    assert_eq!(accepted, 4, "anonymous clients share max_clients sessions");
    let mut historian = client(with_login("hist", port, "historian", "secret"));
    assert!(
        historian.accepted().await,
        "the historian gets in with every anonymous place taken"
    );
    let mut operator = client(with_login("op", port, "operator", "secret"));
    assert!(operator.accepted().await, "and so does the operator");
    gateway.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_subscriptions_queued_bytes_and_idle_sockets_stay_within_64_mb() {
    let (_dir, gateway, port, _sim) = start(&four_users(""), None).await;
    // The historian's persistent session, then gone: its queue fills.
    let mut o = with_login("hist", port, "historian", "secret");
    o.set_clean_session(false);
    let mut historian = client(o);
    assert!(historian.accepted().await);
    historian.subscribe("scratch/#", QoS::AtLeastOnce).await;
    historian.client.disconnect().await.expect("disconnect");
    tokio::time::sleep(Duration::from_millis(300)).await;
    historian.task.abort();
    tokio::time::sleep(SECOND).await;
    let before = gateway.rss_kib();

    // One anonymous client asks for 50 000 subscriptions.
    let mut o = options("subscriber", port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (subscriber, mut events) = AsyncClient::new(o, 256);
    let driver = tokio::spawn(async move {
        let mut refused = 0usize;
        let mut granted = 0usize;
        loop {
            let event = match events.poll().await {
                Ok(event) => event,
                Err(e) => panic!("the subscriber's connection failed: {e}"),
            };
            if let Event::Incoming(Incoming::SubAck(ack)) = event {
                for code in ack.return_codes {
                    match code {
                        rumqttc::SubscribeReasonCode::Failure => refused += 1,
                        _ => granted += 1,
                    }
                }
                if refused + granted == 50_000 {
                    break;
                }
            }
        }
        (granted, refused)
    });
    for chunk in 0..500 {
        let filters = (0..100).map(|i| {
            rumqttc::SubscribeFilter::new(format!("flood/{chunk}/{i}/+/x"), QoS::AtMostOnce)
        });
        subscriber.subscribe_many(filters).await.expect("subscribe");
    }
    let (granted, refused) = tokio::time::timeout(60 * SECOND, driver)
        .await
        .expect("all SUBACKs within 60 s")
        .expect("driver");
    assert_eq!((granted, refused), (100, 49_900), "max_subscriptions = 100");

    // 400 messages of 250 KiB for the absent historian (four writers, each
    // within max_publish_rate).
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut o = with_login(&format!("w{w}"), port, "writer", "secret");
        o.set_max_packet_size(1 << 20, 1 << 20);
        writers.push(client(o));
    }
    for writer in &mut writers {
        assert!(writer.accepted().await);
    }
    for n in 0..100 {
        for writer in &writers {
            writer
                .client
                .publish(
                    format!("scratch/{n}"),
                    QoS::AtLeastOnce,
                    false,
                    vec![b'x'; 250 * 1024],
                )
                .await
                .expect("publish");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // 300 sockets that never send CONNECT, from one address (they also
    // keep other clients of this address out until connect_timeout).
    let mut idle = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            idle.push(s);
        }
    }
    tokio::time::sleep(3 * SECOND).await;
    let after = gateway.rss_kib();
    eprintln!("hostile floods: gateway RSS {before} KiB -> {after} KiB");
    assert!(
        after < before + 64 * 1024,
        "the floods grew the gateway by {} KiB, more than 64 MB",
        after - before
    );

    // The historian comes back to at most max_queued_bytes of the newest.
    drop(idle);
    tokio::time::sleep(SECOND).await;
    let mut o = with_login("hist", port, "historian", "secret");
    o.set_clean_session(false);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let mut back = client(o);
    assert!(back.accepted().await);
    let queued = back.collect(3 * SECOND).await;
    let bytes: usize = queued.iter().map(|m| m.1.len()).sum();
    assert!(
        !queued.is_empty() && bytes <= 1024 * 1024,
        "{} messages, {bytes} bytes queued",
        queued.len()
    );
    assert!(
        queued.iter().any(|m| m.0 == "scratch/99"),
        "the oldest were dropped, not the newest"
    );
    gateway.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_closes_removed_users_and_narrows_acls_at_once() {
    let (dir, gateway, port, _sim) = start(&four_users(""), None).await;
    let mut viewer = client(with_login("v", port, "viewer", "secret"));
    assert!(viewer.accepted().await);
    viewer
        .subscribe("plant/gw/plc/level", QoS::AtMostOnce)
        .await;
    let mut op = client(with_login("op", port, "operator", "secret"));
    assert!(op.accepted().await);
    op.subscribe("plant/gw/#", QoS::AtMostOnce).await;
    assert!(!op.collect(2 * SECOND).await.is_empty());

    let config = dir.path().join("fieldmq.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    let narrowed = text
        .replace(
            "[[broker.user]]\nname = \"viewer\"",
            "[[broker.user]]\nname = \"viewer-gone\"",
        )
        .replace(
            "subscribe = [\"plant/gw/#\"]\npublish",
            "subscribe = [\"plant/gw/plc/setpoint\"]\npublish",
        );
    assert_ne!(narrowed, text);
    std::fs::write(&config, narrowed).expect("config");
    gateway.signal(libc::SIGHUP);
    tokio::time::sleep(2 * SECOND).await;
    assert!(
        viewer.task.is_finished(),
        "the removed user's session is closed"
    );
    op.collect(Duration::from_millis(300)).await;
    let after = op.collect(2 * SECOND).await;
    assert!(
        after.iter().all(|m| m.0 == "plant/gw/plc/setpoint"),
        "the narrowed ACL applies to the live subscription: {:?}",
        after.iter().map(|m| &m.0).collect::<Vec<_>>()
    );
    gateway.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_messages_that_carry_an_expiry_get_one_and_the_cap_shortens_it() {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    let (_dir, gateway, port, _sim) =
        start(&format!("{OPEN}\nmessage_expiry = \"60s\""), None).await;
    let mut reader = client5(options5("reader", port));
    reader.connack().await;
    reader.subscribe("e/#", QoS5::AtLeastOnce).await;
    let mut writer = client5(options5("writer", port));
    writer.connack().await;
    writer
        .client
        .publish("e/none", QoS5::AtLeastOnce, false, "plain")
        .await
        .expect("publish");
    let long = PublishProperties {
        message_expiry_interval: Some(7200),
        ..PublishProperties::default()
    };
    writer
        .client
        .publish_with_properties("e/long", QoS5::AtLeastOnce, false, "expiring", long)
        .await
        .expect("publish");
    let got = reader.collect(2 * SECOND).await;
    let expiry = |topic: &str| {
        got.iter()
            .find(|p| p.topic == topic.as_bytes())
            .unwrap_or_else(|| panic!("no {topic} in {got:?}"))
            .properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval)
    };
    assert_eq!(
        expiry("e/none"),
        None,
        "no expiry is stamped on a message without one"
    );
    let capped = expiry("e/long").expect("an expiry");
    assert!(
        (55..=60).contains(&capped),
        "message_expiry caps the message's own: {capped}"
    );
    gateway.terminate().await;
}

/// A raw MQTT 3.1.1 CONNECT from `source` (a loopback address of the test's
/// choosing); the CONNACK return code, and how long it took.
async fn raw_login(source: &str, port: u16, user: &str, password: &str) -> (u8, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("address"))
        .expect("bind the source address");
    let mut stream = socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect");
    let string = |s: &str| {
        [
            (s.len() as u16).to_be_bytes().to_vec(),
            s.as_bytes().to_vec(),
        ]
        .concat()
    };
    let body = [
        string("MQTT"),
        vec![4, 0xC2, 0, 30],
        string(&format!("login-{source}-{password}")),
        string(user),
        string(password),
    ]
    .concat();
    let packet = [vec![0x10, body.len() as u8], body].concat();
    let started = tokio::time::Instant::now();
    stream.write_all(&packet).await.expect("CONNECT");
    let mut connack = [0u8; 4];
    tokio::time::timeout(10 * SECOND, stream.read_exact(&mut connack))
        .await
        .expect("a CONNACK within 10 s")
        .expect("CONNACK");
    (connack[3], started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_slow_down_their_own_address_only() {
    let (_dir, gateway, port, _sim) = start(&four_users(""), None).await;
    for _ in 0..6 {
        let (code, _) = raw_login("127.0.0.1", port, "historian", "guess").await;
        assert_eq!(code, 4, "bad user name or password");
    }
    let (code, waited) = raw_login("127.0.0.1", port, "historian", "secret").await;
    assert_eq!(code, 0);
    assert!(
        waited >= Duration::from_millis(1500),
        "the guessing address waits before its next login is checked: {waited:?}"
    );
    let (code, waited) = raw_login("127.0.0.2", port, "historian", "secret").await;
    assert_eq!(code, 0);
    assert!(
        waited < Duration::from_millis(500),
        "another address is not slowed: {waited:?}"
    );
    let (code, _) = raw_login("127.0.0.2", port, "nobody", "secret").await;
    assert_eq!(code, 4, "an unknown user is refused like a wrong password");
    gateway.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_local_set_is_applied_once_and_never_again_on_subscribe() {
    let (_dir, gateway, port, sim) = start(&four_users(""), None).await;
    let operator = client(with_login("op", port, "operator", "secret"));
    operator
        .client
        .publish("plant/gw/plc/setpoint/set", QoS::AtLeastOnce, true, "5")
        .await
        .expect("publish");
    assert!(
        holding_becomes(&sim, 0, 5).await,
        "the live /set is applied"
    );
    sim.set_registers(1, Table::Holding, 0, &[0]);
    let before = writes(&sim).len();
    for i in 0..3 {
        let mut late = client(with_login(&format!("late{i}"), port, "historian", "secret"));
        late.subscribe("plant/gw/#", QoS::AtLeastOnce).await;
    }
    tokio::time::sleep(SECOND).await;
    assert_eq!(
        writes(&sim).len(),
        before,
        "the retained copy delivered to later subscribers is not a command"
    );
    assert_eq!(sim.registers(1, Table::Holding, 0, 1), Some(vec![0]));
    gateway.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retained_store_is_capped_and_messages_over_it_are_still_delivered() {
    let (_dir, gateway, port, _sim) = start(&four_users("max_retained = 3"), None).await;
    let mut live = client(with_login("live", port, "writer", "secret"));
    live.subscribe("scratch/#", QoS::AtLeastOnce).await;
    let writer = client(with_login("w", port, "writer", "secret"));
    for n in 0..5 {
        writer
            .client
            .publish(
                format!("scratch/{n}"),
                QoS::AtLeastOnce,
                true,
                format!("{n}"),
            )
            .await
            .expect("publish");
    }
    let delivered = live.collect(SECOND).await;
    assert_eq!(delivered.len(), 5, "every message is delivered live");
    let mut late = client(with_login("late", port, "writer", "secret"));
    late.subscribe("scratch/#", QoS::AtLeastOnce).await;
    let retained: Vec<_> = late
        .collect(SECOND)
        .await
        .into_iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(
        retained.len(),
        3,
        "max_retained topics are kept: {retained:?}"
    );
    gateway.terminate().await;
}
