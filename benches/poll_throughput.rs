//! Polling throughput: 100 simulated Modbus TCP devices × 100 holding
//! registers each, polled as fast as the engine can.
//!
//! The simulators run in a child process (this binary re-executed), so the
//! CPU time measured with getrusage is the gateway's alone.
//!
//! Run: `cargo bench --bench poll_throughput` (FIELDMQ_BENCH_SECS to change the 10 s run).

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldmq::acquire::engine::Engine;
use fieldmq::config::Config;
use fieldmq::core::layout::Table;
use fieldmq::sim::Simulator;
use tokio_util::sync::CancellationToken;

const DEVICES: usize = 100;
const REGISTERS: u16 = 100;
const ROLE: &str = "FIELDMQ_BENCH_ROLE";

fn main() {
    if std::env::var(ROLE).as_deref() == Ok("simulators") {
        simulators();
    } else if std::env::args().any(|a| a == "--bench") {
        gateway();
    }
}

/// Child: serve DEVICES simulators, print their ports, then print the
/// number of requests served for every line read from stdin, until it closes.
fn simulators() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let sim = Simulator::new();
        let values: Vec<u16> = (0..REGISTERS).map(|i| i * 7).collect();
        sim.set_registers(1, Table::Holding, 0, &values);
        let mut ports = Vec::new();
        for _ in 0..DEVICES {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            ports.push(listener.local_addr().expect("addr").port().to_string());
            tokio::spawn(sim.clone().serve_tcp(listener));
        }
        println!("{}", ports.join(" "));
        std::io::stdout().flush().expect("flush");
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
                println!("{}", sim.served_count(1));
                std::io::stdout().flush().expect("flush");
            }
        })
        .await
        .expect("stdin watcher");
    });
}

fn config(ports: &[&str]) -> Config {
    let mut text = String::from("[node]\ngroup_id = \"bench\"\nnode_id = \"gw\"\n");
    for (i, port) in ports.iter().enumerate() {
        text.push_str(&format!(
            "[[bus]]\nname = \"b{i}\"\nkind = \"tcp\"\naddress = \"127.0.0.1:{port}\"\ntimeout = \"1s\"\n\
             [[device]]\nname = \"d{i}\"\nbus = \"b{i}\"\nunit = 1\npoll = \"1ms\"\n"
        ));
        for r in 0..REGISTERS {
            text.push_str(&format!("[[device.metric]]\nname = \"r{r}\"\ntable = \"holding\"\naddress = {r}\ntype = \"u16\"\n"));
        }
    }
    Config::from_toml(Path::new("bench.toml"), &text).expect("bench config")
}

fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct we pass; RUSAGE_SELF is always valid.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn gateway() {
    let secs: u64 = std::env::var("FIELDMQ_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .env(ROLE, "simulators")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn simulators");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ports_line = lines.next().expect("ports").expect("read ports");
    let ports: Vec<&str> = ports_line.split_whitespace().collect();
    let config = Arc::new(config(&ports));

    let mut stdin = child.stdin.take().expect("stdin");
    let mut served = move || -> u64 {
        writeln!(stdin, "count").expect("ask the simulators");
        lines
            .next()
            .expect("count")
            .expect("read count")
            .trim()
            .parse()
            .expect("number")
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (elapsed, cpu, requests) = rt.block_on(async {
        let shutdown = CancellationToken::new();
        let mut engine = Engine::start(Arc::clone(&config), &shutdown);
        // Warm up: connections made, first reports out.
        let warm = tokio::time::Instant::now() + Duration::from_secs(1);
        while tokio::time::timeout_at(warm, engine.events.recv())
            .await
            .is_ok()
        {}
        let (t0, c0, r0) = (Instant::now(), cpu_time(), served());
        let end = tokio::time::Instant::now() + Duration::from_secs(secs);
        while tokio::time::timeout_at(end, engine.events.recv())
            .await
            .is_ok()
        {}
        let measured = (t0.elapsed(), cpu_time() - c0, served() - r0);
        shutdown.cancel();
        engine.join().await;
        measured
    });
    drop(served);
    let _ = child.wait();

    let requests = requests as f64;
    let registers = requests * f64::from(REGISTERS);
    let per_s = registers / elapsed.as_secs_f64();
    println!(
        "poll_throughput: {DEVICES} Modbus TCP devices x {REGISTERS} holding registers, loopback, {:.1} s",
        elapsed.as_secs_f64()
    );
    println!(
        "  requests          {:>12.0}  ({:.0}/s)",
        requests,
        requests / elapsed.as_secs_f64()
    );
    println!("  registers         {:>12.0}  ({:.0}/s)", registers, per_s);
    println!(
        "  gateway CPU       {:>12.2} s  ({:.1} % of one core; {:.1} us per 1000 registers)",
        cpu.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / (registers / 1000.0)
    );
}
