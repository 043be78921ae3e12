//! RTU on a real serial line: a pseudo-terminal pair made by socat, the
//! simulator on one end, the engine on the other.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use fieldmq::acquire::modbus::scan::ScanTimeouts;
use fieldmq::core::event::DeviceEvent;
use fieldmq::core::identity::Identity;
use fieldmq::core::layout::Table;
use fieldmq::core::value::{Quality, Value};
use fieldmq::sim::Simulator;
use support::{Running, config, good_value, samples_in};
use tokio::process::{Child, Command};
use tokio_serial::SerialPortBuilderExt;

/// A socat process linking two ptys; killed when dropped.
struct PtyPair {
    _socat: Child,
    _dir: tempfile::TempDir,
    device_end: PathBuf,
    gateway_end: PathBuf,
}

async fn pty_pair() -> PtyPair {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("ttyDEV"), dir.path().join("ttyGW"));
    let socat = Command::new("socat")
        .arg(format!("pty,raw,echo=0,link={}", a.display()))
        .arg(format!("pty,raw,echo=0,link={}", b.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("socat must be installed (scripts/test installs it)");
    for _ in 0..100 {
        if a.exists() && b.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(a.exists() && b.exists(), "socat made no pty pair");
    PtyPair {
        _socat: socat,
        _dir: dir,
        device_end: a,
        gateway_end: b,
    }
}

fn serve(sim: &Simulator, port: &Path) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let serial = tokio_serial::new(port.to_string_lossy(), 19200)
        .open_native_async()
        .expect("open the device end of the pty");
    tokio::spawn(sim.clone().serve_rtu(serial))
}

fn line_config(port: &Path, devices: &str) -> String {
    format!(
        r#"
[node]
group_id = "g"
node_id = "n"
[[bus]]
name = "rs485"
kind = "rtu"
port = "{}"
baud = 19200
parity = "none"
timeout = "150ms"
{devices}
"#,
        port.display()
    )
}

fn device(name: &str, unit: u8, extra: &str) -> String {
    format!(
        r#"
[[device]]
name = "{name}"
bus = "rs485"
unit = {unit}
poll = "100ms"
{extra}
[[device.metric]]
name = "power"
table = "input"
address = 0
type = "f32"
"#
    )
}

#[tokio::test]
async fn two_live_units_keep_their_rate_next_to_a_dead_one() {
    let pty = pty_pair().await;
    let sim = Simulator::new();
    sim.set_registers(1, Table::Input, 0, &[0x4366, 0x8000]); // 230.5
    sim.set_registers(2, Table::Input, 0, &[0xBFC0, 0x0000]); // -1.5
    let server = serve(&sim, &pty.device_end);
    let devices = [
        device("meter1", 1, ""),
        device("meter2", 2, ""),
        device("ghost", 7, "offline_after = 2\nmax_backoff = \"2s\""),
    ]
    .concat();
    let mut run = Running::start(config(&line_config(&pty.gateway_end, &devices)));

    let mut values = [None, None];
    let mut ghost_offline = false;
    while values.iter().any(Option::is_none) || !ghost_offline {
        let event = run
            .next(
                Duration::from_secs(5),
                "both meters and the ghost going offline",
            )
            .await;
        match samples_in(&event) {
            Some((device, samples)) if device < 2 => values[device] = Some(good_value(samples, 0)),
            Some((_, samples)) => assert!(matches!(samples[0].quality, Quality::Bad(_))),
            None => ghost_offline |= matches!(event, DeviceEvent::Offline { device: 2, .. }),
        }
    }
    assert_eq!(values, [Some(Value::F32(230.5)), Some(Value::F32(-1.5))]);

    // Measure the live units' rate over 3 s while the dead one is retried with backoff.
    let before = [sim.served_count(1), sim.served_count(2)];
    let drain = async { while run.engine.events.recv().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(3), drain).await;
    // 30 ticks fit in 3 s; each backoff retry of the ghost costs one 150 ms
    // timeout (at most three in the window). Polling the ghost every tick
    // would halve the rate to ~12.
    for (unit, before) in [1u8, 2].into_iter().zip(before) {
        let polled = sim.served_count(unit) - before;
        assert!(
            polled >= 22,
            "unit {unit} polled {polled} times in 3 s at 100 ms next to a dead unit"
        );
    }
    run.stop().await;
    server.abort();
}

#[tokio::test]
async fn a_late_reply_is_never_taken_for_the_answer_to_a_later_request() {
    let pty = pty_pair().await;
    let sim = Simulator::new();
    sim.set_registers(1, Table::Input, 0, &[0x4366, 0x8000]);
    sim.set_registers(3, Table::Input, 0, &[0x3F80, 0x0000]); // 1.0
    // Unit 3 always answers 60 ms after the gateway gave up waiting.
    sim.set_delay(3, Duration::from_millis(210));
    let server = serve(&sim, &pty.device_end);
    let devices = [
        device("fast", 1, ""),
        device("slow", 3, "offline_after = 1000"),
    ]
    .concat();
    let mut run = Running::start(config(&line_config(&pty.gateway_end, &devices)));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut fast_reads = 0;
    while tokio::time::Instant::now() < deadline {
        let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(200), run.engine.events.recv()).await
        else {
            continue;
        };
        if let Some((device, samples)) = samples_in(&event) {
            if device == 0 {
                assert_eq!(samples[0].value, Some(Value::F32(230.5)), "{samples:?}");
                fast_reads += 1;
            } else {
                assert_eq!(
                    samples[0].value, None,
                    "a stale reply was accepted as a fresh value: {samples:?}"
                );
            }
        }
    }
    assert!(fast_reads >= 1);
    assert!(
        sim.served_count(3) >= 5,
        "the slow unit was asked repeatedly"
    );
    run.stop().await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_writes_to_one_unit_leaves_the_others_their_poll_rate() {
    let pty = pty_pair().await;
    let sim = Simulator::new();
    for unit in [1u8, 2, 3] {
        sim.set_registers(unit, Table::Input, 0, &[0x4366, 0x8000]);
        sim.set_registers(unit, Table::Holding, 0, &[0]);
    }
    // A drive that takes 8 ms per answer: 100 writes a second with their
    // read-backs would need more than the whole bus.
    sim.set_delay(1, Duration::from_millis(8));
    let server = serve(&sim, &pty.device_end);
    let writable = r#"
[[device.metric]]
name = "setpoint"
table = "holding"
address = 0
type = "u16"
writable = true
"#;
    let devices = [
        device("drive", 1, ""),
        writable.to_owned(),
        device("meter2", 2, ""),
        device("meter3", 3, ""),
    ]
    .concat();
    let mut run = Running::start(config(&line_config(&pty.gateway_end, &devices)));
    for _ in 0..3 {
        run.until(Duration::from_secs(5), "all three online", |e| {
            matches!(e, DeviceEvent::Online { .. }).then_some(())
        })
        .await;
    }
    let events = run.engine.take_events();
    let drain = tokio::spawn(async move {
        let mut events = events;
        while events.recv().await.is_some() {}
    });
    let window = Duration::from_secs(3);
    let rate = |before: [u64; 2]| {
        [
            sim.served_count(2) - before[0],
            sim.served_count(3) - before[1],
        ]
    };

    let before = [sim.served_count(2), sim.served_count(3)];
    tokio::time::sleep(window).await;
    let quiet = rate(before);

    // 100 writes a second at the drive, for as long again.
    let (writes, config) = (run.engine.writes.clone(), Arc::clone(&run.config));
    let setpoint = run.metric(0, "setpoint");
    let before = [sim.served_count(2), sim.served_count(3)];
    let writes_before = support::writes(&sim).len();
    let flood = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let (mut queued, mut busy) = (0u32, 0u32);
        let until = tokio::time::Instant::now() + window;
        let mut n = 0u16;
        while tokio::time::Instant::now() < until {
            tick.tick().await;
            n = n.wrapping_add(1);
            let write = fieldmq::profile::command::prepare(&config, 0, setpoint, Value::U16(n))
                .expect("a valid write");
            match writes.send(write, &config) {
                Ok(()) => queued += 1,
                Err(_) => busy += 1,
            }
        }
        (queued, busy)
    });
    let (queued, busy) = flood.await.expect("writer");
    let flooded = rate(before);
    let written = support::writes(&sim).len() - writes_before;
    eprintln!(
        "polls of units 2 and 3 in {window:?}: {quiet:?} quiet, {flooded:?} under {queued} queued writes ({busy} refused as busy, {written} carried out)"
    );
    assert!(written > 20, "the writes got a share of the bus: {written}");
    for (quiet, flooded) in quiet.into_iter().zip(flooded) {
        assert!(
            flooded * 10 >= quiet * 8,
            "a unit kept {flooded} of {quiet} polls next to the write flood (at least 80 % expected)"
        );
    }
    drain.abort();
    run.stop().await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_on_a_serial_line_finds_exactly_the_units_that_answer_within_its_bound() {
    let pty = pty_pair().await;
    let sim = Simulator::new();
    sim.set_registers(2, Table::Holding, 0, &[1]);
    sim.set_registers(5, Table::Input, 0, &[1]);
    sim.set_identity(
        2,
        Identity {
            vendor: "ACME".into(),
            product_code: "PM-9".into(),
            revision: "1.2".into(),
        },
    );
    let server = serve(&sim, &pty.device_end);
    let port = pty.gateway_end.display().to_string();
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_fieldmq"))
        .args(["scan", "--rtu", &port, "--baud", "19200", "--units", "1-8"])
        .args(["--models", "/nonexistent/*.toml", "--json"])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("fieldmq runs");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let found = &json["buses"][0]["found"];
    let units: Vec<u64> = found
        .as_array()
        .expect("found")
        .iter()
        .filter_map(|f| f["unit"].as_u64())
        .collect();
    assert_eq!(units, vec![2, 5], "{json}");
    assert_eq!(found[0]["identity"]["product_code"], "PM-9");
    assert_eq!(found[1]["identification"], "refused");
    assert_eq!(json["buses"][0]["baud"], 19200);

    let bus = fieldmq::config::Bus {
        name: "scanned".into(),
        transport: fieldmq::config::Transport::Rtu(fieldmq::config::SerialLine {
            port,
            baud: 19200,
            parity: fieldmq::config::Parity::None,
            data_bits: 8,
            stop_bits: 1,
            byte_timeout: None,
            direction: fieldmq::config::Direction::Auto,
        }),
        timeout: Duration::from_millis(100),
        turnaround: Duration::ZERO,
    };
    let bound = ScanTimeouts::for_transport(&bus.transport, None).bound(&bus, 8, 2);
    assert!(
        took < bound + Duration::from_secs(1),
        "took {took:?}, bound {bound:?} (+1 s to start the process)"
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_with_register_numbers_scan_classes_and_fc16_writes_on_a_serial_line() {
    let pty = pty_pair().await;
    let sim = Simulator::new();
    for unit in [1, 2] {
        sim.set_registers(unit, Table::Input, 0, &[0x4366, 0x8000]); // 230.5
        sim.set_registers(unit, Table::Holding, 10, &[unit.into()]);
        sim.set_registers(unit, Table::Holding, 20, &[0]);
    }
    let server = serve(&sim, &pty.device_end);
    let model = r#"
[[model]]
name = "meter"

[[model.metric]]
name = "power"
register = 30001
type = "f32"

[[model.metric]]
name = "energy"
register = 40011
type = "u16"
poll = "1s"

[[model.metric]]
name = "setpoint"
register = 40021
type = "u16"
writable = true
"#;
    let devices = r#"
[[device]]
name = "m1"
bus = "rs485"
unit = 1
poll = "100ms"
model = "meter"
write_multiple = true

[[device]]
name = "m2"
bus = "rs485"
unit = 2
poll = "100ms"
model = "meter"
"#;
    let text = format!("{}{model}", line_config(&pty.gateway_end, devices));
    let mut run = Running::start(config(&text));
    let first = run.samples_of(0, Duration::from_secs(5)).await;
    assert_eq!(
        good_value(&first, 0),
        Value::F32(230.5),
        "30001 is input register 0"
    );
    assert_eq!(
        good_value(&first, 1),
        Value::U16(1),
        "40011 is holding register 10"
    );
    let setpoint = run.metric(0, "setpoint");
    let write = fieldmq::profile::command::prepare(&run.config, 0, setpoint, Value::U16(42))
        .expect("a valid write");
    run.engine
        .writes
        .send(write, &run.config)
        .expect("the write is queued");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    run.stop().await;
    server.abort();

    assert_eq!(sim.registers(1, Table::Holding, 20, 1), Some(vec![42]));
    let served = sim.served();
    let count = |unit: u8, function: u8, start: u16| {
        served
            .iter()
            .filter(|s| (s.unit, s.function, s.start) == (unit, function, start))
            .count()
    };
    assert_eq!(
        count(1, 16, 20),
        1,
        "write_multiple: FC 16 for one register"
    );
    assert_eq!(count(1, 6, 20), 0);
    for unit in [1, 2] {
        let fast = count(unit, 4, 0);
        let slow = count(unit, 3, 10);
        assert!(
            fast >= 10 && (2..=4).contains(&slow),
            "unit {unit}: power read {fast} times, energy {slow} times in about 2.5 s"
        );
    }
}
