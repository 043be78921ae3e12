//! The engine against the simulator over Modbus TCP and RTU over TCP.

mod support;

use std::time::Duration;

use fieldmq::core::event::DeviceEvent;
use fieldmq::core::layout::Table;
use fieldmq::core::value::{Fault, Quality, Value};
use fieldmq::core::write::{Write, WriteImage};
use fieldmq::sim::{Served, Simulator};
use support::{Running, config, good_value, samples_in, tcp_simulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const SECOND: Duration = Duration::from_secs(1);

fn meter_config(kind: &str, addr: std::net::SocketAddr) -> String {
    format!(
        r#"
[node]
group_id = "plant1"
node_id = "gw"

[[bus]]
name = "net"
kind = "{kind}"
address = "{addr}"
timeout = "300ms"

[[device]]
name = "meter"
bus = "net"
unit = 1
poll = "50ms"
word_order = "little"

[[device.metric]]
name = "voltage/L1"
table = "input"
address = 0
type = "f32"
unit = "V"

[[device.metric]]
name = "energy"
table = "input"
address = 2
type = "u32"
scale = 0.01
unit = "kWh"

[[device.metric]]
name = "temperature"
table = "holding"
address = 10
type = "i16"
scale = 0.1
deadband = 0.5

[[device.metric]]
name = "alarm/overtemp"
table = "holding"
address = 11
type = "bool"
bit = 15

[[device.metric]]
name = "serial"
table = "holding"
address = 12
type = "string"
length = 3

[[device.metric]]
name = "relay"
table = "coil"
address = 5
type = "bool"
"#
    )
}

fn load_meter(sim: &Simulator) {
    // 230.5 V as CDAB: 0x43668000 -> [0x8000, 0x4366].
    sim.set_registers(1, Table::Input, 0, &[0x8000, 0x4366]);
    // 123456 * 0.01 kWh as CDAB: 0x0001E240 -> [0xE240, 0x0001].
    sim.set_registers(1, Table::Input, 2, &[0xE240, 0x0001]);
    // -12.3 degrees = -123 -> 0xFF85; status word with bit 15 set; "AB1" + NUL.
    sim.set_registers(
        1,
        Table::Holding,
        10,
        &[0xFF85, 0x8001, 0x4142, 0x3100, 0x0000],
    );
    sim.set_bits(
        1,
        Table::Coil,
        0,
        &[false, false, false, false, false, true],
    );
}

#[tokio::test]
async fn every_type_is_read_decoded_and_then_reported_only_on_change() {
    let sim = Simulator::new();
    load_meter(&sim);
    let (addr, server) = tcp_simulator(&sim).await;
    let mut run = Running::start(config(&meter_config("tcp", addr)));

    let first = run.samples_of(0, 5 * SECOND).await;
    assert_eq!(
        first.len(),
        6,
        "the first cycle reports every metric: {first:?}"
    );
    assert_eq!(
        good_value(&first, run.metric(0, "voltage/L1")),
        Value::F32(230.5)
    );
    assert_eq!(
        good_value(&first, run.metric(0, "energy")),
        Value::F64(123456.0 * 0.01)
    );
    assert_eq!(
        good_value(&first, run.metric(0, "temperature")),
        Value::F64(-123.0 * 0.1)
    );
    assert_eq!(
        good_value(&first, run.metric(0, "alarm/overtemp")),
        Value::Bool(true)
    );
    assert_eq!(
        good_value(&first, run.metric(0, "serial")),
        Value::String("AB1".into())
    );
    assert_eq!(
        good_value(&first, run.metric(0, "relay")),
        Value::Bool(true)
    );

    // A change within the deadband is not news; one beyond it is, alone.
    sim.set_registers(1, Table::Holding, 10, &[0xFF88]); // -12.0: moved 0.3
    tokio::time::sleep(Duration::from_millis(300)).await;
    sim.set_registers(1, Table::Holding, 10, &[0xFF7B]); // -13.3: moved 1.0
    let next = run.samples_of(0, 5 * SECOND).await;
    assert_eq!(next.len(), 1, "only the changed metric: {next:?}");
    assert_eq!(
        good_value(&next, run.metric(0, "temperature")),
        Value::F64(-133.0 * 0.1)
    );

    run.stop().await;
    server.abort();
}

#[tokio::test]
async fn rtu_framing_over_tcp_reads_the_same_values() {
    let sim = Simulator::new();
    load_meter(&sim);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(sim.clone().serve_rtu_over_tcp(listener));
    let mut run = Running::start(config(&meter_config("rtu-over-tcp", addr)));
    let first = run.samples_of(0, 5 * SECOND).await;
    assert_eq!(
        good_value(&first, run.metric(0, "voltage/L1")),
        Value::F32(230.5)
    );
    assert_eq!(
        good_value(&first, run.metric(0, "serial")),
        Value::String("AB1".into())
    );
    run.stop().await;
    server.abort();
}

#[tokio::test]
async fn a_request_refused_for_a_hole_is_split_once_and_the_split_is_remembered() {
    let sim = Simulator::new();
    // Registers 0..=4 and 6..=9 exist; 5 is a hole in the device's map.
    sim.set_registers(1, Table::Holding, 0, &[1, 2, 3, 4, 5]);
    sim.set_registers(1, Table::Holding, 6, &[6, 7, 8, 9]);
    let (addr, server) = tcp_simulator(&sim).await;
    let text = format!(
        r#"
[node]
group_id = "g"
node_id = "n"
[[bus]]
name = "net"
kind = "tcp"
address = "{addr}"
[[device]]
name = "plc"
bus = "net"
unit = 1
poll = "50ms"
max_gap = 2
{}
"#,
        [0, 3, 6, 9]
            .iter()
            .map(|a| format!("[[device.metric]]\nname = \"r{a}\"\ntable = \"holding\"\naddress = {a}\ntype = \"u16\"\n"))
            .collect::<String>()
    );
    let mut run = Running::start(config(&text));
    let first = run.samples_of(0, 5 * SECOND).await;
    for (i, expected) in [1u16, 4, 6, 9].into_iter().enumerate() {
        assert_eq!(good_value(&first, i), Value::U16(expected));
    }
    // Let several more cycles run, then look at what the device was asked.
    tokio::time::sleep(Duration::from_millis(400)).await;
    run.stop().await;
    server.abort();
    // Reads only: the identification asked when the device came online is not part of the plan.
    let served: Vec<(u16, u16)> = sim
        .served()
        .iter()
        .filter(|s| s.function != 43)
        .map(|s: &Served| (s.start, s.count))
        .collect();
    assert_eq!(
        served[0],
        (0, 10),
        "the first cycle tries the coalesced read"
    );
    assert_eq!(
        &served[1..3],
        &[(0, 4), (6, 4)],
        "then reads the halves at once"
    );
    assert!(served.len() > 6, "several cycles ran: {served:?}");
    assert!(
        served[3..]
            .chunks(2)
            .all(|c| c[0] == (0, 4) && c.get(1).is_none_or(|s| *s == (6, 4))),
        "{served:?}"
    );
}

#[tokio::test]
async fn a_server_that_restarts_takes_the_device_offline_and_back_online() {
    let sim = Simulator::new();
    load_meter(&sim);
    let (addr, server) = tcp_simulator(&sim).await;
    let text = meter_config("tcp", addr).replace(
        "poll = \"50ms\"",
        "poll = \"50ms\"\noffline_after = 2\nmax_backoff = \"1s\"",
    );
    let mut run = Running::start(config(&text));
    run.samples_of(0, 5 * SECOND).await;

    server.abort();
    let _ = server.await;
    let fault = run
        .until(5 * SECOND, "offline", |e| match e {
            DeviceEvent::Offline { fault, .. } => Some(fault.clone()),
            _ => None,
        })
        .await;
    assert!(
        matches!(fault, Fault::Link(_) | Fault::Timeout),
        "{fault:?}"
    );

    // Same port again: a real device coming back after a power cycle.
    let listener = TcpListener::bind(addr).await.expect("rebind the same port");
    let server = tokio::spawn(sim.clone().serve_tcp(listener));
    let back = run
        .until(10 * SECOND, "online", |e| match e {
            DeviceEvent::Online { samples, .. } => Some(samples.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        good_value(&back, run.metric(0, "voltage/L1")),
        Value::F32(230.5)
    );
    run.stop().await;
    server.abort();
}

/// A TCP "device" that answers every request with bytes that are not Modbus.
async fn garbage_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut round = 0u8;
        while let Ok((mut stream, _)) = listener.accept().await {
            round = round.wrapping_add(1);
            tokio::spawn(async move {
                let mut buf = [0u8; 260];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    // Alternate: wrong transaction id with a valid-looking body, then a lying length field.
                    let reply: &[u8] = if round.is_multiple_of(2) {
                        &[0xBE, 0xEF, 0, 0, 0, 5, 1, 3, 2, 0, 1]
                    } else {
                        &[buf[0], buf[1], 0, 0, 0, 3, 1, 3, 200]
                    };
                    if stream.write_all(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn malformed_answers_and_dead_units_only_hurt_their_own_device() {
    let sim = Simulator::new();
    load_meter(&sim);
    let (good_addr, server) = tcp_simulator(&sim).await;
    let bad_addr = garbage_server().await;
    let text = format!(
        r#"
[node]
group_id = "g"
node_id = "n"
[[bus]]
name = "good"
kind = "tcp"
address = "{good_addr}"
timeout = "200ms"
[[bus]]
name = "bad"
kind = "tcp"
address = "{bad_addr}"
timeout = "200ms"
[[device]]
name = "meter"
bus = "good"
unit = 1
poll = "50ms"
[[device.metric]]
name = "v"
table = "input"
address = 1
type = "u16"
[[device]]
name = "ghost"
bus = "good"
unit = 9
poll = "50ms"
offline_after = 1
[[device.metric]]
name = "v"
table = "input"
address = 1
type = "u16"
[[device]]
name = "liar"
bus = "bad"
unit = 1
poll = "50ms"
[[device.metric]]
name = "v"
table = "holding"
address = 0
type = "u16"
"#
    );
    let mut run = Running::start(config(&text));
    let mut liar_faults = Vec::new();
    let mut ghost_offline = false;
    let mut meter_values = 0;
    let deadline = tokio::time::Instant::now() + 3 * SECOND;
    while tokio::time::Instant::now() < deadline
        && (liar_faults.len() < 2 || !ghost_offline || meter_values == 0)
    {
        let event = run.next(3 * SECOND, "events").await;
        match (samples_in(&event), &event) {
            (Some((0, samples)), _) => {
                assert_eq!(samples[0].value, Some(Value::U16(0x4366)));
                meter_values += 1;
            }
            (_, DeviceEvent::Samples { device: 2, samples }) => {
                let Quality::Bad(fault) = &samples[0].quality else {
                    panic!("garbage decoded as a value: {samples:?}")
                };
                assert_eq!(samples[0].value, None);
                liar_faults.push(fault.clone());
            }
            (_, DeviceEvent::Offline { device: 1, .. }) => ghost_offline = true,
            _ => {}
        }
    }
    assert!(
        meter_values >= 1,
        "the good device is read despite its dead neighbour"
    );
    assert!(ghost_offline, "the absent unit is marked offline");
    assert!(!liar_faults.is_empty(), "the lying device is reported bad");
    // The good device keeps its rate next to a dead unit on the same connection.
    let before = sim.served_count(1);
    tokio::time::sleep(SECOND).await;
    let polled = sim.served_count(1) - before;
    assert!(polled >= 12, "meter polled {polled} times in 1 s at 50 ms");
    run.stop().await;
    server.abort();
}

#[tokio::test]
async fn write_multiple_uses_fc15_and_fc16_even_for_one_coil_or_register() {
    let sim = Simulator::new();
    sim.set_bits(1, Table::Coil, 0, &[false]);
    sim.set_registers(1, Table::Holding, 0, &[0; 30]);
    let (addr, _server) = tcp_simulator(&sim).await;
    let text = |multiple: bool| {
        format!(
            r#"
[node]
group_id = "plant1"
node_id = "gw"

[[bus]]
name = "net"
kind = "tcp"
address = "{addr}"

[[device]]
name = "drive"
bus = "net"
unit = 1
poll = "50ms"
write_multiple = {multiple}

[[device.metric]]
name = "run"
register = 1
type = "bool"
writable = true

[[device.metric]]
name = "speed"
register = 40011
type = "u16"
writable = true

[[device.metric]]
name = "reset"
register = 40021
type = "bool"
bit = 2
writable = true
"#
        )
    };
    for (multiple, expected) in [
        (false, vec![(5, 0), (6, 10), (6, 20)]),
        (true, vec![(15, 0), (16, 10), (16, 20)]),
    ] {
        let before = support::writes(&sim).len();
        let mut running = Running::start(config(&text(multiple)));
        running.samples_of(0, 2 * SECOND).await;
        let images = [
            (0, Value::Bool(true), WriteImage::Coil(true)),
            (1, Value::U16(1500), WriteImage::Registers(vec![1500])),
            (
                2,
                Value::Bool(true),
                WriteImage::RegisterBit {
                    mask: 1 << 2,
                    on: true,
                },
            ),
        ];
        for (metric, value, image) in images {
            let write = Write {
                device: 0,
                metric,
                value,
                image,
            };
            running
                .engine
                .writes
                .send(write, &running.config)
                .expect("routed");
            running
                .until(2 * SECOND, "the write's outcome", |e| match e {
                    DeviceEvent::Written {
                        metric: m, outcome, ..
                    } if *m == metric => Some(outcome.clone()),
                    _ => None,
                })
                .await
                .unwrap_or_else(|f| panic!("write of metric {metric}: {f}"));
        }
        assert_eq!(
            support::writes(&sim)[before..],
            expected,
            "write_multiple = {multiple}"
        );
        assert_eq!(sim.registers(1, Table::Holding, 10, 1), Some(vec![1500]));
        assert_eq!(sim.registers(1, Table::Holding, 20, 1), Some(vec![4]));
        running.stop().await;
        sim.set_registers(1, Table::Holding, 20, &[0]);
    }
}

/// A TCP relay in front of the simulator that notes when each connection
/// was accepted and when each request (a chunk from the gateway) arrived.
#[derive(Debug, Default)]
struct Wire {
    /// Per connection: accepted at, and each request's arrival.
    connections: Vec<(std::time::Instant, Vec<std::time::Instant>)>,
}

async fn recording_relay(
    target: std::net::SocketAddr,
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Wire>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let wire = std::sync::Arc::new(std::sync::Mutex::new(Wire::default()));
    let log = std::sync::Arc::clone(&wire);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let index = {
                let mut w = log.lock().expect("wire");
                w.connections.push((std::time::Instant::now(), Vec::new()));
                w.connections.len() - 1
            };
            let log = std::sync::Arc::clone(&log);
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let mut buf = [0u8; 512];
                loop {
                    let n = match client.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    log.lock().expect("wire").connections[index]
                        .1
                        .push(std::time::Instant::now());
                    if server.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    let mut reply = [0u8; 512];
                    match server.read(&mut reply).await {
                        Ok(0) | Err(_) => return,
                        Ok(m) => {
                            if client.write_all(&reply[..m]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, wire)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_delay_request_delay_and_close_after_poll_shape_the_traffic() {
    let sim = Simulator::new();
    sim.set_registers(1, Table::Holding, 0, &[0; 300]);
    let (sim_addr, _server) = tcp_simulator(&sim).await;
    let (addr, wire) = recording_relay(sim_addr).await;
    // Three requests per cycle (the registers are too far apart to merge).
    let text = format!(
        r#"
[node]
group_id = "plant1"
node_id = "gw"

[[bus]]
name = "net"
kind = "tcp"
address = "{addr}"

[[device]]
name = "flow"
bus = "net"
unit = 1
poll = "300ms"
connect_delay = "150ms"
request_delay = "60ms"
close_after_poll = true
identify = false

[[device.metric]]
name = "a"
register = 40001
type = "u16"

[[device.metric]]
name = "b"
register = 40101
type = "u16"

[[device.metric]]
name = "c"
register = 40201
type = "u16"
"#
    );
    let mut running = Running::start(config(&text));
    running.samples_of(0, 3 * SECOND).await;
    // Unchanged values are not reported: let the cycles run.
    tokio::time::sleep(1500 * Duration::from_millis(1)).await;
    running.stop().await;
    let wire = wire.lock().expect("wire");
    assert!(
        wire.connections.len() >= 3,
        "a connection per cycle: {}",
        wire.connections.len()
    );
    // The last connection may have been cut short by the stop.
    let whole = wire.connections.len() - 1;
    for (accepted, requests) in &wire.connections[..whole] {
        let Some(first) = requests.first() else {
            continue;
        };
        assert!(
            first.duration_since(*accepted) >= Duration::from_millis(140),
            "the first request waited for connect_delay: {:?}",
            first.duration_since(*accepted)
        );
        assert_eq!(requests.len(), 3, "one cycle per connection");
        for pair in requests.windows(2) {
            assert!(
                pair[1].duration_since(pair[0]) >= Duration::from_millis(55),
                "request_delay between requests: {:?}",
                pair[1].duration_since(pair[0])
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_metric_is_read_on_its_own_period_and_the_first_report_has_every_metric() {
    let sim = Simulator::new();
    sim.set_registers(1, Table::Input, 0, &[0; 200]);
    let (addr, _server) = tcp_simulator(&sim).await;
    let text = format!(
        r#"
[node]
group_id = "plant1"
node_id = "gw"

[[bus]]
name = "net"
kind = "tcp"
address = "{addr}"

[[device]]
name = "meter"
bus = "net"
unit = 1
poll = "100ms"

[[device.metric]]
name = "power"
register = 30001
type = "u16"

[[device.metric]]
name = "energy"
register = 30101
type = "u16"
poll = "1s"
"#
    );
    let mut running = Running::start(config(&text));
    let first = running
        .until(2 * SECOND, "the first report", |e| match e {
            DeviceEvent::Online { samples, .. } => Some(samples.clone()),
            _ => None,
        })
        .await;
    let metrics: Vec<usize> = first.iter().map(|s| s.metric).collect();
    assert_eq!(
        metrics,
        vec![0, 1],
        "the Online event has both scan classes"
    );
    tokio::time::sleep(2100 * Duration::from_millis(1)).await;
    running.stop().await;
    let reads = |start: u16| {
        sim.served()
            .iter()
            .filter(|s| s.function == 4 && s.start == start)
            .count()
    };
    let (fast, slow) = (reads(0), reads(100));
    assert!(
        (15..=26).contains(&fast),
        "power read every 100 ms: {fast} reads"
    );
    assert!(
        (2..=4).contains(&slow),
        "energy read every 1 s: {slow} reads"
    );
}
