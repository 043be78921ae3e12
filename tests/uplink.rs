//! The uplink connection: TLS with verification, mutual TLS, and moving on
//! to the next server when one is unreachable.

mod support;

use std::time::Duration;

use fieldmq::core::layout::Table;
use fieldmq::sim::Simulator;
use support::mqtt::{Certificates, Gateway, Mosquitto, Peer, free_port};
use support::relay::Relay;
use support::tcp_simulator;

const SECOND: Duration = Duration::from_secs(1);

fn config(sim: std::net::SocketAddr, dir: &std::path::Path, upstream: &str) -> String {
    format!(
        r#"
[node]
group_id = "g"
node_id = "gw1"
data_dir = "{}"

[upstream]
{upstream}

[broker]
enabled = false

[[bus]]
name = "sim"
kind = "tcp"
address = "{sim}"

[[device]]
name = "d"
bus = "sim"
unit = 1
poll = "200ms"

[[device.metric]]
name = "x"
table = "holding"
address = 0
type = "u16"
"#,
        dir.join("data").display()
    )
}

async fn simulator() -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let sim = Simulator::new();
    sim.set_registers(1, Table::Holding, 0, &[42]);
    tcp_simulator(&sim).await
}

fn start(dir: &std::path::Path, sim: std::net::SocketAddr, upstream: &str) -> Gateway {
    let path = dir.join("fieldmq.toml");
    std::fs::write(&path, config(sim, dir, upstream)).expect("config");
    Gateway::run(&path, dir, "gw")
}

#[tokio::test]
async fn mutual_tls_against_a_private_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = Certificates::make(dir.path());
    let broker = Mosquitto::start_tls(&certs, true).await;
    let tls_port = broker.tls_port.expect("tls listener");
    let mut host = Peer::connect(broker.port, "host", &["spBv1.0/#"]).await;
    let (sim, server) = simulator().await;
    let upstream = format!(
        "url = \"mqtts://127.0.0.1:{tls_port}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
        certs.ca.display(),
        certs.client_cert.display(),
        certs.client_key.display()
    );
    let gw = start(dir.path(), sim, &upstream);
    let birth = host.next_on("spBv1.0/g/NBIRTH/gw1", 10 * SECOND).await;
    assert_eq!(birth.sparkplug().seq, Some(0));
    host.next_on("spBv1.0/g/DBIRTH/gw1/d", 10 * SECOND).await;
    gw.terminate().await;
    server.abort();
}

#[tokio::test]
async fn a_server_certificate_from_an_unknown_ca_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = Certificates::make(dir.path());
    let other = tempfile::tempdir().expect("tempdir");
    let stranger = Certificates::make(other.path());
    let broker = Mosquitto::start_tls(&certs, false).await;
    let tls_port = broker.tls_port.expect("tls listener");
    let mut host = Peer::connect(broker.port, "host", &["spBv1.0/#"]).await;
    let (sim, server) = simulator().await;
    let upstream = format!(
        "url = \"mqtts://127.0.0.1:{tls_port}\"\nca_file = \"{}\"",
        stranger.ca.display()
    );
    let gw = start(dir.path(), sim, &upstream);
    let seen = host.collect_for(3 * SECOND).await;
    assert!(
        seen.is_empty(),
        "nothing may be published over an unverified link: {seen:?}"
    );
    let log = gw.log();
    assert!(log.contains("cannot connect upstream"), "{log}");
    assert!(log.to_lowercase().contains("certificate"), "{log}");
    gw.terminate().await;
    server.abort();
}

#[tokio::test]
async fn an_unreachable_first_server_is_skipped_for_the_next() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start().await;
    let mut host = Peer::connect(broker.port, "host", &["spBv1.0/#"]).await;
    let (sim, server) = simulator().await;
    let dead = free_port();
    let upstream = format!("urls = [\"mqtt://127.0.0.1:{dead}\", \"{}\"]", broker.url());
    let gw = start(dir.path(), sim, &upstream);
    let birth = host
        .next_on("spBv1.0/g/NBIRTH/gw1", 10 * SECOND)
        .await
        .sparkplug();
    let bd_seq = birth
        .metrics
        .iter()
        .find(|m| m.name.as_deref() == Some("bdSeq"))
        .and_then(|m| m.value.clone());
    assert_eq!(
        bd_seq,
        Some(fieldmq::profile::sparkplug::proto::payload::metric::Value::LongValue(0)),
        "a failed attempt does not use up a bdSeq"
    );
    assert!(gw.log().contains("cannot connect upstream"));
    gw.terminate().await;
    server.abort();
}

#[tokio::test]
async fn a_message_over_max_packet_size_is_dropped_without_losing_the_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start().await;
    let mut host = Peer::connect(broker.port, "host", &["spBv1.0/#"]).await;
    let (sim, server) = simulator().await;
    let mut text = config(
        sim,
        dir.path(),
        &format!("url = \"{}\"\nmax_packet_size = 1024", broker.url()),
    );
    // 60 metrics make a DBIRTH of several kilobytes.
    for i in 1..60 {
        text.push_str(&format!(
            "\n[[device.metric]]\nname = \"register/number_{i}\"\ntable = \"holding\"\naddress = {i}\ntype = \"u16\"\nunit = \"counts\"\n"
        ));
    }
    let path = dir.path().join("fieldmq.toml");
    std::fs::write(&path, text).expect("config");
    let gw = Gateway::run(&path, dir.path(), "gw");
    host.next_on("spBv1.0/g/NBIRTH/gw1", 10 * SECOND).await;
    let after = host.collect_for(2 * SECOND).await;
    assert!(
        !after.iter().any(|m| m.topic.contains("DBIRTH")),
        "the oversize DBIRTH is not sent"
    );
    let log = gw.log();
    assert!(
        log.contains("larger than [upstream] max_packet_size"),
        "{log}"
    );
    // Still connected: a rebirth request is answered.
    use fieldmq::profile::sparkplug::proto::Payload;
    use fieldmq::profile::sparkplug::proto::payload::{Metric, metric};
    use prost::Message as _;
    let ncmd = Payload {
        timestamp: Some(1),
        metrics: vec![Metric {
            name: Some("Node Control/Rebirth".into()),
            value: Some(metric::Value::BooleanValue(true)),
            ..Metric::default()
        }],
        ..Payload::default()
    };
    host.publish("spBv1.0/g/NCMD/gw1", ncmd.encode_to_vec(), false)
        .await;
    host.next_on("spBv1.0/g/NBIRTH/gw1", 10 * SECOND).await;
    gw.terminate().await;
    server.abort();
}

#[tokio::test]
async fn after_a_broker_restart_the_node_reconnects_and_births_with_the_next_bd_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start().await;
    let port = broker.port;
    let mut host = Peer::connect(port, "host", &["spBv1.0/#"]).await;
    let (sim, server) = simulator().await;
    let gw = start(dir.path(), sim, &format!("url = \"{}\"", broker.url()));
    let first = host
        .next_on("spBv1.0/g/NBIRTH/gw1", 10 * SECOND)
        .await
        .sparkplug();
    drop(host);
    broker.stop().await;
    tokio::time::sleep(2 * SECOND).await;

    let broker = Mosquitto::start_on(port).await;
    let mut host = Peer::connect(broker.port, "host", &["spBv1.0/#"]).await;
    // Had the node come back before this subscription, its births would
    // be gone; asked again, it births again in the same session.
    host.request_rebirth("g", "gw1").await;
    let second = host
        .next_on("spBv1.0/g/NBIRTH/gw1", 40 * SECOND)
        .await
        .sparkplug();
    let bd_seq = |p: &fieldmq::profile::sparkplug::proto::Payload| {
        p.metrics
            .iter()
            .find(|m| m.name.as_deref() == Some("bdSeq"))
            .and_then(|m| m.value.clone())
    };
    use fieldmq::profile::sparkplug::proto::payload::metric::Value::LongValue;
    assert_eq!(bd_seq(&first), Some(LongValue(0)));
    assert_eq!(bd_seq(&second), Some(LongValue(1)));
    host.next_on("spBv1.0/g/DBIRTH/gw1/d", 10 * SECOND).await;
    assert!(
        gw.log().contains("upstream connection lost"),
        "{}",
        gw.log()
    );
    gw.terminate().await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_server_says_goodbye_here_and_births_on_the_next_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (first, second) = (Mosquitto::start().await, Mosquitto::start().await);
    let mut here = Peer::connect(first.port, "host1", &["spBv1.0/#"]).await;
    let mut there = Peer::connect(second.port, "host2", &["spBv1.0/#"]).await;
    let (sim, server) = simulator().await;
    let upstream = format!(
        "urls = [\"{}\", \"{}\"]\nconnect_jitter = \"0s\"",
        first.url(),
        second.url()
    );
    let gw = start(dir.path(), sim, &upstream);
    let birth = here
        .next_on("spBv1.0/g/NBIRTH/gw1", 10 * SECOND)
        .await
        .sparkplug();
    let offered = birth
        .metrics
        .iter()
        .find(|m| m.name.as_deref() == Some("Node Control/Next Server"))
        .expect("Next Server in the NBIRTH");
    assert_eq!(offered.datatype, Some(11), "Boolean");

    here.publish(
        "spBv1.0/g/NCMD/gw1",
        support::mqtt::sparkplug_command(
            "Node Control/Next Server",
            fieldmq::profile::sparkplug::proto::payload::metric::Value::BooleanValue(true),
        ),
        false,
    )
    .await;
    let death = here
        .next_on("spBv1.0/g/NDEATH/gw1", 10 * SECOND)
        .await
        .sparkplug();
    let moved = there
        .next_on("spBv1.0/g/NBIRTH/gw1", 10 * SECOND)
        .await
        .sparkplug();
    let bd_seq = |p: &fieldmq::profile::sparkplug::proto::Payload| {
        p.metrics
            .iter()
            .find(|m| m.name.as_deref() == Some("bdSeq"))
            .and_then(|m| m.value.clone())
    };
    assert_eq!(
        bd_seq(&death),
        bd_seq(&birth),
        "the NDEATH of the session it left"
    );
    use fieldmq::profile::sparkplug::proto::payload::metric::Value::LongValue;
    assert_eq!(bd_seq(&birth), Some(LongValue(0)));
    assert_eq!(
        bd_seq(&moved),
        Some(LongValue(1)),
        "a new session on the next server"
    );
    there.next_on("spBv1.0/g/DBIRTH/gw1/d", 10 * SECOND).await;
    gw.terminate().await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_spreads_its_first_connects_and_its_reconnects_over_connect_jitter() {
    const FLEET: usize = 5;
    let jitter = 2 * SECOND;
    let broker = Mosquitto::start().await;
    // The fleet reaches the broker through a relay, cut below as a broker
    // or a network drops every connection at once; the host stays on.
    let relay = Relay::start(broker.port).await;
    let mut host = Peer::connect(broker.port, "host", &["spBv1.0/+/NBIRTH/+"]).await;
    let (sim, server) = simulator().await;
    let dirs: Vec<tempfile::TempDir> = (0..FLEET)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let started = tokio::time::Instant::now();
    let fleet: Vec<Gateway> = dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            let upstream = format!("url = \"{}\"\nconnect_jitter = \"2s\"", relay.url());
            let text = config(sim, dir.path(), &upstream)
                .replace("node_id = \"gw1\"", &format!("node_id = \"gw{i}\""));
            let path = dir.path().join("fieldmq.toml");
            std::fs::write(&path, text).expect("config");
            Gateway::run(&path, dir.path(), &format!("gw{i}"))
        })
        .collect();
    let first = fleet_births(&mut host, started, FLEET).await;
    let spread = |at: &[Duration]| at[FLEET - 1] - at[0];
    // Starting a process takes a few hundred milliseconds at most here.
    assert!(first[FLEET - 1] < jitter + SECOND, "{first:?}");
    assert!(
        spread(&first) > Duration::from_millis(200),
        "not all at once: {first:?}"
    );

    relay.cut();
    let cut = tokio::time::Instant::now();
    // Long enough for the relay's listener to close; a gateway whose wait
    // ends within it is refused and backs off 0.5 s.
    tokio::time::sleep(Duration::from_millis(200)).await;
    relay.restore().await;
    let again = fleet_births(&mut host, cut, FLEET).await;
    assert!(again[FLEET - 1] < jitter + SECOND, "{again:?}");
    assert!(
        spread(&again) > Duration::from_millis(200),
        "not all at once: {again:?}"
    );
    for gw in fleet {
        assert!(gw.log().contains("connect jitter"), "{}", gw.log());
        gw.terminate().await;
    }
    server.abort();
}

/// When each of `fleet` NBIRTHs arrived, counted from `since`, in order.
async fn fleet_births(host: &mut Peer, since: tokio::time::Instant, fleet: usize) -> Vec<Duration> {
    let mut at = Vec::new();
    while at.len() < fleet {
        host.next_where(10 * SECOND, "the fleet's NBIRTHs", |m| {
            m.topic.contains("NBIRTH")
        })
        .await;
        at.push(since.elapsed());
    }
    at
}
