//! What the status page costs the gateway.
//!
//! 1. Per request: `/api/status` built and serialised from a board holding
//!    1 000 and 10 000 tags (every tag read, as on a running gateway), the
//!    work one open page asks for once a second.
//! 2. Keeping up with the events, page open or not: per changed sample.
//! 3. Whole process: the release `fieldmq demo` (a meter and a GPIO panel,
//!    Sparkplug uplink into its own broker) run twice, with no page open and
//!    with one reader fetching `/api/status` once a second as the page does;
//!    the CPU time the kernel accounted to each run.
//!
//! Run: `cargo bench --bench status_page`. `FIELDMQ_BENCH_SECS` changes the
//! 30 s runs of part 3.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldmq::config::Config;
use fieldmq::core::event::DeviceEvent;
use fieldmq::core::value::{Quality, Sample, Value};
use fieldmq::ops::metrics::CounterSnapshot;
use fieldmq::sink::status::board::{Board, Inputs, Selection};

fn config(devices: usize, registers: u16) -> Arc<Config> {
    let mut text = String::from("[node]\ngroup_id = \"bench\"\nnode_id = \"gw\"\n");
    text.push_str("[[model]]\nname = \"bench\"\n");
    for r in 0..registers {
        text.push_str(&format!(
            "[[model.metric]]\nname = \"r{r}\"\ntable = \"holding\"\naddress = {r}\ntype = \"u16\"\nunit = \"mm\"\n"
        ));
    }
    for d in 0..devices {
        text.push_str(&format!(
            "[[bus]]\nname = \"b{d}\"\nkind = \"tcp\"\naddress = \"127.0.0.1:{}\"\n\
             [[device]]\nname = \"d{d}\"\nbus = \"b{d}\"\nunit = 1\nmodel = \"bench\"\n",
            10_000 + d
        ));
    }
    Arc::new(Config::from_toml(Path::new("bench.toml"), &text).expect("bench config"))
}

/// Microseconds one `/api/status` takes at `devices` x `registers` tags, and its size.
fn per_request(devices: usize, registers: u16, selection: &Selection) -> (f64, usize) {
    let config = config(devices, registers);
    let mut board = Board::new(Arc::clone(&config));
    for device in 0..devices {
        let samples = (0..usize::from(registers))
            .map(|metric| Sample {
                device,
                metric,
                value: Some(Value::U16(metric as u16)),
                quality: Quality::Good,
                timestamp_ms: 1_764_000_000_000,
            })
            .collect();
        board.apply(
            &DeviceEvent::Online {
                device,
                samples,
                identity: None,
            },
            1_764_000_000_000,
        );
    }
    let polls = HashMap::new();
    let inputs = Inputs {
        now_ms: 1_764_000_001_000,
        uptime: Duration::from_secs(60),
        counters: CounterSnapshot::default(),
        polls: &polls,
        uplink: None,
        drain_rate: 0.0,
        broker: None,
    };
    let render = || serde_json::to_string(&board.status(&inputs, selection)).expect("json");
    let size = render().len();
    let rounds = 30;
    let t0 = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(render());
    }
    (t0.elapsed().as_secs_f64() * 1e6 / f64::from(rounds), size)
}

/// Nanoseconds the board takes to keep up with one changed sample (what an
/// open or closed page costs while the gateway polls).
fn per_sample() -> f64 {
    let config = config(100, 100);
    let mut board = Board::new(Arc::clone(&config));
    let events: Vec<DeviceEvent<Config>> = (0..100)
        .map(|device| DeviceEvent::Samples {
            device,
            samples: (0..100)
                .map(|metric| Sample {
                    device,
                    metric,
                    value: Some(Value::U16(metric as u16 + 1)),
                    quality: Quality::Good,
                    timestamp_ms: 1_764_000_000_000,
                })
                .collect(),
        })
        .collect();
    let rounds = 20;
    let t0 = Instant::now();
    for _ in 0..rounds {
        for event in &events {
            board.apply(event, 1_764_000_000_000);
        }
    }
    t0.elapsed().as_secs_f64() * 1e9 / f64::from(rounds) / 10_000.0
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One GET, as the page's fetch does it; the body's length.
fn get(port: u16, path: &str) -> usize {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("answer");
    assert!(answer.starts_with(b"HTTP/1.1 200"), "GET {path} failed");
    answer.len()
}

/// Share of one core a demo run of `secs` used, start and stop included,
/// with a reader fetching `/api/status` once a second or none; from the
/// kernel's accounting of the reaped child, to the microsecond.
fn demo_run(secs: u64, reader: bool) -> f64 {
    let (modbus, broker, status) = (free_port(), free_port(), free_port());
    let before = children_cpu();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_fieldmq"))
        .args(["demo", "--modbus-listen"])
        .arg(format!("127.0.0.1:{modbus}"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{broker}"))
        .arg("--status-listen")
        .arg(format!("127.0.0.1:{status}"))
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start fieldmq demo");
    let pid = demo.id() as i32;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    if reader {
        get(status, "/");
    }
    while t0.elapsed() < Duration::from_secs(secs) {
        let tick = Instant::now();
        if reader {
            get(status, "/api/status");
        }
        std::thread::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()));
    }
    // SAFETY: the demo is our child; SIGTERM stops it cleanly.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let _ = demo.wait();
    let elapsed = t0.elapsed().as_secs_f64();
    (children_cpu() - before) / elapsed
}

/// Seconds of CPU all reaped children of this process used (RUSAGE_CHILDREN).
fn children_cpu() -> f64 {
    // SAFETY: getrusage fills the plain-data struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("/api/status, built and serialised (one open page asks once a second):");
    println!("| tags | metrics listed | per request | JSON | share of one core at 1/s |");
    println!("|---|---|---|---|---|");
    let one_open = Selection::from_query(Some("device=d0"));
    let cases = [
        (10, 100, Selection::All, "all"),
        (100, 100, Selection::All, "all"),
        (100, 100, one_open, "one device's (the page, one card open)"),
    ];
    for (devices, registers, selection, metrics) in cases {
        let (micros, size) = per_request(devices, registers, &selection);
        println!(
            "| {} | {metrics} | {:.0} µs | {:.1} KiB | {:.3} % |",
            devices * usize::from(registers),
            micros,
            size as f64 / 1024.0,
            micros / 1e6 * 100.0
        );
    }
    println!();
    println!(
        "keeping the board up to date: {:.0} ns per changed sample (10 000 changes a second: {:.3} % of one core)",
        per_sample(),
        per_sample() * 10_000.0 / 1e9 * 100.0
    );
    let secs = std::env::var("FIELDMQ_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let closed = demo_run(secs, false);
    let open = demo_run(secs, true);
    println!();
    println!(
        "fieldmq demo (release), two {secs} s runs, CPU from the kernel's accounting (getrusage of the reaped child):"
    );
    println!(
        "  no page open:            {:.2} % of one core",
        closed * 100.0
    );
    println!(
        "  /api/status once a second: {:.2} % of one core",
        open * 100.0
    );
    println!(
        "  the page's cost:         {:.2} % of one core",
        (open - closed) * 100.0
    );
}
