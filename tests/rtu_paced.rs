//! RTU on a line paced at its baud rate (tests/support/paced.rs): timeouts
//! that count until the answer starts, so a long answer is never cut off,
//! while a unit that never answers is still declared dead after one timeout.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use fieldmq::core::event::DeviceEvent;
use fieldmq::core::layout::Table;
use fieldmq::core::value::Quality;
use fieldmq::sim::Simulator;
use support::paced::PacedLine;
use support::{Running, config};
use tokio_serial::SerialPortBuilderExt;

fn serve(sim: &Simulator, port: &Path, baud: u32) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let serial = tokio_serial::new(port.to_string_lossy(), baud)
        .open_native_async()
        .expect("open the device end");
    tokio::spawn(sim.clone().serve_rtu(serial))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_answer_outlasting_the_timeout_is_read_every_time_and_a_dead_unit_still_dies_after_one()
 {
    let line = PacedLine::start(9600, 10);
    let sim = Simulator::new();
    sim.set_registers(1, Table::Holding, 0, &(0..120).collect::<Vec<u16>>());
    let server = serve(&sim, &line.device_end, 9600);
    // 120 registers: a 245-byte answer, 255 ms on the wire at 9600 8N1.
    let text = format!(
        r#"
[node]
group_id = "g"
node_id = "n"

[[bus]]
name = "rs485"
kind = "rtu"
port = "{}"
baud = 9600
parity = "none"
timeout = "150ms"

[[device]]
name = "big"
bus = "rs485"
unit = 1
poll = "400ms"
offline_after = 1
identify = false

[[device.metric]]
name = "block"
register = 40001
type = "string"
length = 120

[[device]]
name = "dead"
bus = "rs485"
unit = 9
poll = "400ms"
offline_after = 1
max_backoff = "10s"
identify = false

[[device.metric]]
name = "x"
register = 40001
type = "u16"
"#,
        line.gateway_end.display()
    );
    let started = Instant::now();
    let mut run = Running::start(config(&text));
    let (mut good, mut dead_after) = (0, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < deadline {
        let left = deadline - tokio::time::Instant::now();
        let Ok(Some(event)) = tokio::time::timeout(left, run.engine.events.recv()).await else {
            break;
        };
        match event {
            DeviceEvent::Offline { device: 0, fault } => {
                panic!("the big device went offline: {fault}")
            }
            DeviceEvent::Offline { device: 1, .. } => dead_after = Some(started.elapsed()),
            DeviceEvent::Online {
                device: 0, samples, ..
            }
            | DeviceEvent::Samples { device: 0, samples } => {
                assert!(
                    samples.iter().all(|s| s.quality == Quality::Good),
                    "{samples:?}"
                );
                good += 1;
            }
            _ => {}
        }
    }
    run.stop().await;
    server.abort();
    let polls = sim.served_count(1);
    assert!(polls >= 6, "the big read ran about every 400 ms: {polls}");
    assert!(good >= 1, "its value arrived");
    let dead_after = dead_after.expect("the dead unit was declared offline");
    // Its one timeout (150 ms), after at most one big read ahead of it (about 300 ms).
    assert!(dead_after < Duration::from_millis(1500), "{dead_after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_enable_pin_is_high_exactly_while_a_request_is_on_the_wire() {
    let line = PacedLine::start(9600, 10);
    let sim = Simulator::new();
    sim.set_registers(1, Table::Holding, 0, &[1, 2, 3, 4]);
    // A device takes its time to answer, as real ones do (at least the
    // spec's 3.5 characters).
    sim.set_delay(1, Duration::from_millis(3));
    let server = serve(&sim, &line.device_end, 9600);
    let chip = format!("de-{}", std::process::id());
    let text = format!(
        r#"
[node]
group_id = "g"
node_id = "n"

[[bus]]
name = "rs485"
kind = "rtu"
port = "{}"
baud = 9600
parity = "none"
timeout = "300ms"
rs485 = {{ gpio = "sim", chip = "{chip}", line = 17 }}

[[device]]
name = "meter"
bus = "rs485"
unit = 1
poll = "200ms"
identify = false

[[device.metric]]
name = "block"
register = 40001
type = "string"
length = 4
"#,
        line.gateway_end.display()
    );
    let run = Running::start(config(&text));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    run.stop().await;
    server.abort();

    let edges: Vec<_> = fieldmq::acquire::gpio::lines::sim_output_edges(Path::new(&chip))
        .into_iter()
        .filter(|e| e.pin == 17)
        .collect();
    let crossings = line.crossings();
    let requests: Vec<_> = crossings
        .iter()
        .filter(|c| c.way == support::paced::Way::ToDevice)
        .collect();
    assert!(
        requests.len() >= 5,
        "polled every 200 ms: {}",
        requests.len()
    );
    let slop = Duration::from_micros(300);
    for request in &requests {
        let rise = edges
            .iter()
            .rfind(|e| e.high && e.at <= request.written)
            .unwrap_or_else(|| panic!("no rising edge before the request: {edges:?}"));
        let fall = edges
            .iter()
            .find(|e| !e.high && e.at > rise.at)
            .unwrap_or_else(|| panic!("the pin never fell after {rise:?}"));
        assert!(
            fall.at + slop >= request.delivered,
            "high until the last byte has been sent: fell {:?} before",
            request.delivered.saturating_duration_since(fall.at)
        );
        let answer = crossings
            .iter()
            .find(|c| c.way == support::paced::Way::ToGateway && c.written > request.written)
            .expect("an answer");
        assert!(
            fall.at <= answer.written,
            "low before the device answers: {:?} late",
            fall.at.duration_since(answer.written)
        );
        assert!(
            !edges
                .iter()
                .any(|e| e.high && e.at > answer.written && e.at < answer.delivered),
            "low while the device answers"
        );
    }
}
