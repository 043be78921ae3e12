//! The gateway run in-process, as an embedding program or a test harness
//! would run it: `Gateway::start` polls and listens, its local broker carries
//! values out and commands in, and cancelling the token stops it, farewell
//! included, with the broker's port closed behind it.

mod support;

use std::path::Path;
use std::time::Duration;

use fieldmq::config::Config;
use fieldmq::core::layout::Table;
use fieldmq::gateway::Gateway;
use fieldmq::sim::Simulator;
use support::mqtt::{Peer, free_port};
use support::tcp_simulator;
use tokio_util::sync::CancellationToken;

const SECOND: Duration = Duration::from_secs(1);

fn config(sim: std::net::SocketAddr, port: u16, dir: &Path) -> String {
    format!(
        r#"
[node]
group_id = "plant"
node_id = "gw"
data_dir = "{}"

[broker]
listen = "127.0.0.1:{port}"
anonymous_publish = ["plant/gw/plc/setpoint/set"]

[[bus]]
name = "sim"
kind = "tcp"
address = "{sim}"
timeout = "300ms"

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

/// The `value` of a plain JSON payload.
fn value_of(payload: &str) -> serde_json::Value {
    serde_json::from_str::<serde_json::Value>(payload)
        .map(|v| v["value"].clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_runs_in_process_and_stops_when_its_token_is_cancelled() {
    let sim = Simulator::new();
    sim.set_registers(1, Table::Input, 0, &[7]);
    sim.set_registers(1, Table::Holding, 0, &[0]);
    let (addr, _server) = tcp_simulator(&sim).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = Config::from_toml(
        Path::new("in-process.toml"),
        &config(addr, port, dir.path()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // start() returns once the local broker listens.
    let gateway = Gateway::start(config).await.expect("the gateway starts");
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(gateway.serve(shutdown.clone()));
    let mut peer = Peer::connect(port, "watcher", &["plant/gw/#"]).await;

    // The broker hands retained messages over in no set order: take both
    // in whichever order they come.
    let (mut state, mut level) = (None, None);
    while state.is_none() || level.is_none() {
        let m = peer
            .next_where(5 * SECOND, "the node state and the level", |m| {
                m.topic == "plant/gw/state" || m.topic == "plant/gw/plc/level"
            })
            .await;
        if m.topic == "plant/gw/state" {
            state = Some(m.text());
        } else {
            level = Some(value_of(&m.text()));
        }
    }
    assert_eq!(state.as_deref(), Some("ONLINE"));
    assert_eq!(level, Some(serde_json::json!(7)));
    sim.set_registers(1, Table::Input, 0, &[8]);
    let changed = peer
        .next_where(5 * SECOND, "level 8", |m| {
            m.topic == "plant/gw/plc/level" && value_of(&m.text()) == 8
        })
        .await;
    assert!(!changed.retain, "a live update, not the retained copy");

    // A command back through the same broker reaches the device.
    peer.publish("plant/gw/plc/setpoint/set", b"42".to_vec(), false)
        .await;
    let mut written = false;
    for _ in 0..30 {
        if sim.registers(1, Table::Holding, 0, 1) == Some(vec![42]) {
            written = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(written, "the /set reached the device");

    shutdown.cancel();
    let stopped = tokio::time::timeout(15 * SECOND, serving)
        .await
        .expect("the gateway stops within its grace period")
        .expect("the serving task did not panic");
    assert!(stopped.is_ok(), "{stopped:?}");
    let farewell = peer
        .next_where(5 * SECOND, "the OFFLINE state", |m| {
            m.topic == "plant/gw/state"
        })
        .await;
    assert_eq!(
        farewell.text(),
        "OFFLINE",
        "the farewell went out before the broker stopped"
    );
    let mut closed = false;
    for _ in 0..30 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed, "the local broker's port is closed after the stop");
}
