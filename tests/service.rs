//! fieldmq as systemd runs it: readiness and watchdog over `NOTIFY_SOCKET`,
//! `systemctl reload` (SIGHUP) swapping the device map under a live
//! Sparkplug session, and the `[health]` endpoint.

mod support;

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use fieldmq::core::layout::Table;
use fieldmq::sim::Simulator;
use support::mqtt::{Gateway, Mosquitto, Peer, free_port};
use support::{http_get, tcp_simulator};

const SECOND: Duration = Duration::from_secs(1);

fn config(
    dir: &Path,
    broker: u16,
    health: u16,
    meter: SocketAddr,
    pump: SocketAddr,
    pump_metrics: &str,
) -> String {
    format!(
        r#"
[node]
group_id = "plant"
node_id = "gw1"
data_dir = "{data}"

[upstream]
url = "mqtt://127.0.0.1:{broker}"

[broker]
enabled = false

[health]
listen = "127.0.0.1:{health}"

[[bus]]
name = "line1"
kind = "tcp"
address = "{meter}"

[[bus]]
name = "line2"
kind = "tcp"
address = "{pump}"

[[device]]
name = "meter"
bus = "line1"
unit = 1
poll = "200ms"

[[device.metric]]
name = "voltage"
table = "holding"
address = 0
type = "u16"

[[device]]
name = "pump"
bus = "line2"
unit = 1
poll = "200ms"
{pump_metrics}
"#,
        data = dir.join("data").display()
    )
}

const SPEED: &str = r#"
[[device.metric]]
name = "speed"
table = "holding"
address = 0
type = "u16"
"#;

const SPEED_AND_HOURS: &str = r#"
[[device.metric]]
name = "speed"
table = "holding"
address = 0
type = "u16"

[[device.metric]]
name = "hours"
table = "holding"
address = 1
type = "u16"
unit = "h"
"#;

/// The next datagram on the notify socket, within `within`.
async fn notified(socket: &UnixDatagram, within: Duration) -> String {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 512];
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => return String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no notification within {within:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("notify socket: {e}"),
        }
    }
}

/// Waits for a notification containing `what`, skipping watchdog pings.
async fn notified_with(socket: &UnixDatagram, what: &str) -> String {
    loop {
        let message = notified(socket, 10 * SECOND).await;
        if message.contains(what) {
            return message;
        }
        assert!(
            message.contains("WATCHDOG=1"),
            "unexpected notification {message:?} while waiting for {what}"
        );
    }
}

#[tokio::test]
async fn under_systemd_it_notifies_pings_reloads_and_reports_its_health() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start().await;
    let mut host = Peer::connect(broker.port, "host", &["spBv1.0/plant/#"]).await;
    let meter_sim = Simulator::new();
    meter_sim.set_registers(1, Table::Holding, 0, &[230]);
    let pump_sim = Simulator::new();
    pump_sim.set_registers(1, Table::Holding, 0, &[1450, 12]);
    let (meter, meter_server) = tcp_simulator(&meter_sim).await;
    let (pump, pump_server) = tcp_simulator(&pump_sim).await;
    let health = free_port();
    let path = dir.path().join("fieldmq.toml");
    std::fs::write(
        &path,
        config(dir.path(), broker.port, health, meter, pump, SPEED),
    )
    .expect("config");

    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("notify socket");
    socket.set_nonblocking(true).expect("nonblocking");
    let gw = Gateway::spawn_with(
        &["run".as_ref(), "-c".as_ref(), path.as_os_str()],
        &[
            ("NOTIFY_SOCKET", socket_path.as_os_str()),
            ("WATCHDOG_USEC", "1000000".as_ref()),
        ],
        dir.path(),
        "gw",
    );

    let ready = notified_with(&socket, "READY=1").await;
    assert!(
        ready.contains("STATUS=polling 2 devices on 2 buses"),
        "{ready}"
    );
    assert_eq!(
        notified(&socket, 2 * SECOND).await,
        "WATCHDOG=1\n",
        "pinged at half of WatchdogSec"
    );
    // The two births come in either order.
    let mut births = Vec::new();
    while births.len() < 2 {
        births.push(
            host.next_where(10 * SECOND, "both DBIRTHs", |m| {
                m.topic.contains("/DBIRTH/")
            })
            .await,
        );
    }
    let Some(pump_birth) = births.iter().find(|m| m.topic.ends_with("/pump")) else {
        panic!("no DBIRTH of the pump: {births:?}");
    };
    assert_eq!(pump_birth.sparkplug().metrics.len(), 1);

    let (status, body) = http_get(health, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#""status":"ok""#) && body.contains(r#""uplink":"up""#),
        "{body}"
    );
    let (status, metrics) = http_get(health, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "fieldmq_poll_duration_seconds_bucket{device=\"meter\",le=\"0.1\"}",
        "fieldmq_device_up{device=\"pump\"} 1",
        "fieldmq_uplink_up 1",
        "fieldmq_messages_published_total{sink=\"upstream\"}",
        "fieldmq_polls_total",
    ] {
        assert!(
            metrics.contains(line),
            "no {line:?} in /metrics:\n{metrics}"
        );
    }

    // systemctl reload: the pump gets a second metric, the meter stays as it is.
    std::fs::write(
        &path,
        config(
            dir.path(),
            broker.port,
            health,
            meter,
            pump,
            SPEED_AND_HOURS,
        ),
    )
    .expect("config");
    gw.signal(libc::SIGHUP);
    assert!(
        notified_with(&socket, "RELOADING=1")
            .await
            .contains("MONOTONIC_USEC=")
    );
    notified_with(&socket, "READY=1").await;
    let death = host
        .next_where(10 * SECOND, "a death or birth", |m| {
            m.topic.contains("DEATH") || m.topic.contains("BIRTH")
        })
        .await;
    assert_eq!(death.topic, "spBv1.0/plant/DDEATH/gw1/pump");
    let birth = host
        .next_where(10 * SECOND, "a death or birth", |m| {
            m.topic.contains("DEATH") || m.topic.contains("BIRTH")
        })
        .await;
    assert_eq!(birth.topic, "spBv1.0/plant/DBIRTH/gw1/pump");
    let metrics = birth.sparkplug().metrics;
    let names: Vec<_> = metrics.iter().filter_map(|m| m.name.clone()).collect();
    assert_eq!(names, ["speed", "hours"]);
    let hours = metrics
        .iter()
        .find(|m| m.name.as_deref() == Some("hours"))
        .and_then(|m| m.value.clone());
    assert_eq!(
        hours,
        Some(fieldmq::profile::sparkplug::proto::payload::metric::Value::IntValue(12))
    );
    let (death_seq, birth_seq) = (death.sparkplug().seq, birth.sparkplug().seq);
    assert!(
        death_seq.is_some_and(|d| birth_seq == Some((d + 1) % 256)),
        "seq goes on: {death_seq:?} then {birth_seq:?}"
    );
    let after = host.collect_for(2 * SECOND).await;
    let lifecycle: Vec<_> = after
        .iter()
        .map(|m| m.topic.as_str())
        .filter(|t| t.contains("BIRTH") || t.contains("DEATH"))
        .collect();
    assert!(
        lifecycle.is_empty(),
        "the session stays and the unchanged meter is not reborn: {lifecycle:?}"
    );
    assert!(
        gw.log().contains("removed=[]") && gw.log().contains(r#"changed=["pump"]"#),
        "{}",
        gw.log()
    );

    // A broken file changes nothing and says why.
    std::fs::write(&path, "[node]\ngroup_id = \"plant\"\n").expect("config");
    gw.signal(libc::SIGHUP);
    notified_with(&socket, "RELOADING=1").await;
    notified_with(&socket, "READY=1").await;
    let log = gw.log();
    assert!(log.contains("reload refused"), "{log}");
    assert!(
        log.contains("node_id"),
        "the error names the missing key: {log}"
    );
    // Still polling under the map in force: a change on the meter goes out.
    meter_sim.set_registers(1, Table::Holding, 0, &[231]);
    host.next_where(5 * SECOND, "the meter's new value", |m| {
        m.topic == "spBv1.0/plant/DDATA/gw1/meter"
    })
    .await;

    let status = gw.terminate().await;
    assert!(status.success(), "{status:?}");
    notified_with(&socket, "STOPPING=1").await;
    meter_server.abort();
    pump_server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unopenable_queue_leaves_the_gateway_polling_without_store_and_forward() {
    let broker = Mosquitto::start().await;
    let sim = Simulator::new();
    sim.set_registers(1, Table::Input, 0, &[0x4366, 0x8000]);
    let (meter, _server) = tcp_simulator(&sim).await;
    let (pump, _pump_server) = tcp_simulator(&sim).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    // Where the queue's directory should be, there is a file.
    std::fs::write(data.join("buffer"), "not a directory").expect("blocker");
    let health = free_port();
    let path = dir.path().join("fieldmq.toml");
    std::fs::write(
        &path,
        config(dir.path(), broker.port, health, meter, pump, SPEED),
    )
    .expect("config");
    let mut host = Peer::connect(broker.port, "host", &["spBv1.0/#"]).await;
    let gateway = Gateway::run(&path, dir.path(), "gateway");
    host.next_on("spBv1.0/plant/DBIRTH/gw1/meter", 10 * SECOND)
        .await;
    let (status, body) = http_get(health, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#""store_and_forward":"unavailable""#),
        "{body}"
    );
    let (_, metrics) = http_get(health, "/metrics").await;
    assert!(metrics.contains("fieldmq_buffer_up 0"), "{metrics}");
    let polls = |m: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix("fieldmq_polls_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    tokio::time::sleep(SECOND).await;
    let (_, later) = http_get(health, "/metrics").await;
    assert!(polls(&later) > polls(&metrics), "polling goes on");
    assert!(
        gateway.log().contains("running without it"),
        "the log says so:\n{}",
        gateway.log()
    );
    gateway.terminate().await;
    broker.stop().await;
}
