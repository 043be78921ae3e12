//! RS-485 at wire speed: the gateway polls one unit (four blocks of 10
//! holding registers, four requests a cycle) as fast as it can over a line paced at its baud rate
//! (tests/support/paced.rs), at 9600, 19200, 38400 and 115200 baud 8N1.
//!
//! For each rate it prints transactions per second, their share of the
//! physical limit (request and answer on the wire plus the spec's silence
//! before the next request), and the median gap the gateway leaves between the end of
//! an answer and its next request (the spec asks for 3.5 characters, and a
//! fixed 1.75 ms above 19200 baud).
//!
//! Run: `cargo bench --bench rs485_line` (needs socat;
//! FIELDMQ_BENCH_SECS to change the 3 s per rate).

#[path = "../tests/support/paced.rs"]
mod paced;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldmq::acquire::engine::Engine;
use fieldmq::config::{Config, Transport};
use fieldmq::core::layout::Table;
use fieldmq::sim::Simulator;
use paced::{PacedLine, Way, pty_hop};
use tokio_serial::SerialPortBuilderExt;
use tokio_util::sync::CancellationToken;

const REGISTERS: u16 = 10;
const BLOCKS: u16 = 4;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let secs: u64 = std::env::var("FIELDMQ_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("baud     transactions/s  limit/s  share  median gap  spec silence");
    for baud in [9600, 19_200, 38_400, 115_200] {
        rt.block_on(measure(baud, Duration::from_secs(secs)));
    }
    let hop = pty_hop();
    println!(
        "each gap includes two pty hops through socat, {:.0} µs each here (median of 50): the gateway's own gap is that much shorter",
        hop.as_secs_f64() * 1e6
    );
}

async fn measure(baud: u32, window: Duration) {
    let line = PacedLine::start(baud, 10);
    let sim = Simulator::new();
    for block in 0..BLOCKS {
        sim.set_registers(
            1,
            Table::Holding,
            block * 100,
            &(0..REGISTERS).collect::<Vec<u16>>(),
        );
    }
    let serial = tokio_serial::new(line.device_end.to_string_lossy(), baud)
        .open_native_async()
        .expect("open the device end");
    let server = tokio::spawn(sim.clone().serve_rtu(serial));
    // Four blocks too far apart to merge: four requests per poll cycle, so
    // most gaps are the ones between requests of a cycle, which no schedule
    // rounds (the schedule's next tick would, with a 1 ms poll period).
    let metrics: String = (0..BLOCKS)
        .map(|b| {
            format!(
                "[[device.metric]]\nname = \"block{b}\"\nregister = {}\ntype = \"string\"\nlength = {REGISTERS}\n",
                40001 + u32::from(b) * 100
            )
        })
        .collect();
    let text = format!(
        r#"
[node]
group_id = "bench"
node_id = "rs485"

[[bus]]
name = "line"
kind = "rtu"
port = "{}"
baud = {baud}
parity = "none"
timeout = "500ms"

[[device]]
name = "meter"
bus = "line"
unit = 1
poll = "1ms"
identify = false

{metrics}"#,
        line.gateway_end.display()
    );
    let config = Arc::new(Config::from_toml(Path::new("bench.toml"), &text).expect("config"));
    let Some(Transport::Rtu(serial_line)) = config.buses.first().map(|b| b.transport.clone())
    else {
        return;
    };
    let shutdown = CancellationToken::new();
    let mut engine = Engine::start(Arc::clone(&config), &shutdown);
    let stop = shutdown.clone();
    let drain = tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                event = engine.events.recv() => if event.is_none() { break },
            }
        }
        engine.join().await;
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (t0, c0) = (Instant::now(), sim.served_count(1));
    tokio::time::sleep(window).await;
    let (elapsed, served) = (t0.elapsed(), sim.served_count(1) - c0);
    shutdown.cancel();
    let _ = drain.await;
    server.abort();

    let request = serial_line.wire_time(8);
    let answer = serial_line.wire_time(5 + 2 * usize::from(REGISTERS));
    let silence = serial_line.silent_interval();
    // The master's share of the line: its request, the answer, and the
    // silence it must leave before the next request (the simulator answers
    // at once, as a device's silence before its answer is its own).
    let limit = 1.0 / (request + answer + silence).as_secs_f64();
    let rate = served as f64 / elapsed.as_secs_f64();
    let crossings: Vec<_> = line
        .crossings()
        .into_iter()
        .filter(|c| c.written >= t0 && c.written <= t0 + elapsed)
        .collect();
    let mut gaps: Vec<Duration> = crossings
        .windows(2)
        .filter(|w| w[0].way == Way::ToGateway && w[1].way == Way::ToDevice)
        .map(|w| w[1].written.saturating_duration_since(w[0].delivered))
        .collect();
    gaps.sort();
    let median = gaps.get(gaps.len() / 2).copied().unwrap_or_default();
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    println!(
        "{baud:<8} {rate:>14.1}  {limit:>7.1}  {:>4.0} %  {:>10}  {:>12}",
        100.0 * rate / limit,
        ms(median),
        ms(silence)
    );
}
