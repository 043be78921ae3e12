//! Sparkplug uplink costs:
//! 1. encoding: CPU per metric for DBIRTH and DDATA payloads (pure, no I/O);
//! 2. end-to-end latency from a register change in a simulated device to the
//!    DDATA at a subscriber of a real mosquitto, polling at 10 Hz.
//!
//! Run: `cargo bench --bench sparkplug_uplink` (needs mosquitto: scripts/install-test-deps).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldmq::acquire::engine::Engine;
use fieldmq::config::Config;
use fieldmq::core::event::DeviceEvent;
use fieldmq::core::layout::Table;
use fieldmq::core::value::{Quality, Sample, Value};
use fieldmq::profile::action::{Action, NodeStats};
use fieldmq::profile::last_values::LastValues;
use fieldmq::profile::sparkplug::edge::EdgeNode;
use fieldmq::profile::sparkplug::proto::Payload;
use fieldmq::profile::sparkplug::proto::payload::metric;
use fieldmq::sim::Simulator;
use fieldmq::sink::uplink::Uplink;
use prost::Message as _;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio_util::sync::CancellationToken;

const METRICS: usize = 1000;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    encoding();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(latency());
}

fn device_map(address: &str, metrics: usize, poll: &str, upstream: &str) -> String {
    let mut text = format!(
        "[node]\ngroup_id = \"bench\"\nnode_id = \"gw\"\ndata_dir = \"{}\"\n{upstream}\n[[bus]]\nname = \"b\"\nkind = \"tcp\"\naddress = \"{address}\"\n[[device]]\nname = \"d\"\nbus = \"b\"\nunit = 1\npoll = \"{poll}\"\n",
        std::env::temp_dir().join("fieldmq-bench").display()
    );
    for i in 0..metrics {
        let (t, ty) = if i % 2 == 0 {
            (i * 2, "f32")
        } else {
            (i * 2, "u32")
        };
        text.push_str(&format!(
            "[[device.metric]]\nname = \"group{}/metric{i}\"\ntable = \"holding\"\naddress = {t}\ntype = \"{ty}\"\nunit = \"kWh\"\n",
            i / 50
        ));
    }
    text
}

fn encoding() {
    let text = device_map(
        "127.0.0.1:502",
        METRICS,
        "1s",
        "[upstream]\nurl = \"mqtt://127.0.0.1\"",
    );
    let config = Arc::new(Config::from_toml(Path::new("bench.toml"), &text).expect("bench config"));
    let samples: Vec<Sample> = (0..METRICS)
        .map(|i| Sample {
            device: 0,
            metric: i,
            value: Some(if i % 2 == 0 {
                Value::F32(i as f32 * 1.5)
            } else {
                Value::U32(i as u32)
            }),
            quality: Quality::Good,
            timestamp_ms: 1_700_000_000_000,
        })
        .collect();
    let mut cache = LastValues::new(&config);
    cache.apply(&DeviceEvent::Online {
        device: 0,
        samples: samples.clone(),
        identity: None,
    });
    let mut node = EdgeNode::new(Arc::clone(&config), fieldmq::profile::Role::Uplink);
    node.connected(0);

    let rounds = 200;
    let start = Instant::now();
    let mut bytes = 0;
    for _ in 0..rounds {
        for action in node.subscribed(&cache, NodeStats::default()) {
            if let Action::Publish(m) = action {
                bytes += m.payload.len();
            }
        }
    }
    let birth = start.elapsed();
    let per_birth_metric = birth.as_nanos() as f64 / (rounds * METRICS) as f64;

    let event = DeviceEvent::Samples { device: 0, samples };
    let start = Instant::now();
    let mut data_bytes = 0;
    for _ in 0..rounds {
        for action in node.event(&event, &cache) {
            if let Action::Publish(m) = action {
                data_bytes += m.payload.len();
            }
        }
    }
    let data = start.elapsed();
    let per_data_metric = data.as_nanos() as f64 / (rounds * METRICS) as f64;
    println!("encoding ({METRICS} metrics per payload, {rounds} rounds):");
    println!(
        "  NBIRTH+DBIRTH: {per_birth_metric:.0} ns per metric, {:.1} bytes per metric",
        bytes as f64 / (rounds * METRICS) as f64
    );
    println!(
        "  DDATA:         {per_data_metric:.0} ns per metric, {:.1} bytes per metric",
        data_bytes as f64 / (rounds * METRICS) as f64
    );
}

async fn latency() {
    let mosquitto = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("mosquitto is installed (scripts/install-test-deps)");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut broker = tokio::process::Command::new(mosquitto)
        .args(["-p", &port.to_string()])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start mosquitto");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let sim = Simulator::new();
    sim.set_registers(1, Table::Holding, 0, &[0, 0]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr");
    tokio::spawn(sim.clone().serve_tcp(listener));
    let text = device_map(
        &address.to_string(),
        1,
        "100ms",
        &format!("[upstream]\nurl = \"mqtt://127.0.0.1:{port}\""),
    );
    let config = Arc::new(Config::from_toml(Path::new("bench.toml"), &text).expect("config"));

    let (client, mut eventloop) =
        AsyncClient::new(MqttOptions::new("bench-sub", "127.0.0.1", port), 64);
    client
        .subscribe("spBv1.0/bench/DDATA/gw/d", QoS::AtMostOnce)
        .await
        .expect("subscribe");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    let _ = tx.send((Instant::now(), fieldmq::core::value::now_ms(), p.payload));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });

    let shutdown = CancellationToken::new();
    let mut engine = Engine::start(Arc::clone(&config), &shutdown);
    let publisher = Uplink::start(
        Arc::clone(&config),
        engine.writes.clone(),
        Arc::clone(&engine.stats),
        engine.liveness.pulse("uplink"),
    )
    .expect("publisher");
    tokio::spawn(publisher.run(engine.take_events(), shutdown.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    while rx.try_recv().is_ok() {}

    let rounds = 200u32;
    let mut latencies = Vec::with_capacity(rounds as usize);
    let mut after_read: Vec<u64> = Vec::with_capacity(rounds as usize);
    let mut rng = fastrand::Rng::with_seed(1);
    for round in 1..=rounds {
        // Changes land at a random phase of the 100 ms poll period.
        tokio::time::sleep(Duration::from_millis(rng.u64(20..120))).await;
        let value = round as f32;
        let bits = value.to_bits();
        sim.set_registers(1, Table::Holding, 0, &[(bits >> 16) as u16, bits as u16]);
        let changed = Instant::now();
        loop {
            let (at, at_ms, payload) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("DDATA within 5 s")
                .expect("subscriber alive");
            let p = Payload::decode(payload).expect("sparkplug");
            if let Some(m) = p
                .metrics
                .iter()
                .find(|m| m.value == Some(metric::Value::FloatValue(value)))
            {
                latencies.push(at.duration_since(changed));
                // The metric's timestamp is when the device's answer arrived.
                after_read.push(at_ms.saturating_sub(m.timestamp.unwrap_or(at_ms)));
                break;
            }
        }
    }
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "end-to-end latency, register change -> DDATA at a mosquitto subscriber, poll 100 ms ({rounds} changes):"
    );
    println!(
        "  p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (the poll period alone accounts for 0..100 ms)",
        pick(0.5).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3,
        pick(1.0).as_secs_f64() * 1e3
    );
    after_read.sort();
    let q = |f: f64| after_read[((after_read.len() - 1) as f64 * f) as usize];
    println!(
        "  from the device's answer to the subscriber (metric timestamp, 1 ms resolution): p50 {} ms, p99 {} ms",
        q(0.5),
        q(0.99)
    );
    shutdown.cancel();
    engine.join().await;
    let _ = broker.kill().await;
}
