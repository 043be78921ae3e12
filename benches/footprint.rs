//! Footprint at scale: the gateway's resident memory and CPU at 10 000 and
//! 100 000 tags (plain profile, every device polled each second, 20 % of
//! the values changing per poll, publishing to a real mosquitto), and where
//! the bytes go.
//!
//! - The simulators run in a child process (this binary re-executed) and
//!   the gateway is the release `fieldmq` binary, so RSS and CPU time
//!   (from /proc) are the gateway's alone.
//! - The parts are measured in this process with a counting allocator:
//!   each part is built from the same device map and filled as the running
//!   gateway fills it, and the bytes it keeps on the heap are counted.
//!
//! Run: `cargo bench --bench footprint` (needs `scripts/install-test-deps`
//! for mosquitto). `FIELDMQ_BENCH_SCALE=10k` or `100k` runs one scale only;
//! `FIELDMQ_BENCH_SECS` changes the 20 s measurement.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use fieldmq::acquire::deadband::ChangeFilter;
use fieldmq::acquire::engine::EVENT_QUEUE;
use fieldmq::acquire::modbus::plan::ReadPlan;
use fieldmq::config::{Config, Profile};
use fieldmq::core::event::DeviceEvent;
use fieldmq::core::layout::Table;
use fieldmq::core::value::{Quality, Sample, Value};
use fieldmq::profile::NodeProfile;
use fieldmq::profile::last_values::LastValues;
use fieldmq::sim::Simulator;
use fieldmq::sink::uplink::options::REQUEST_QUEUE;
use fieldmq::store::forward::{DeviceKeys, Forwarder};

/// Counts the bytes live on the heap, to measure what a part keeps.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const ROLE: &str = "FIELDMQ_BENCH_ROLE";
/// (devices, registers per device)
const SCALES: [(&str, usize, u16); 2] = [("10k", 100, 100), ("100k", 200, 500)];
/// Share of the registers that change every second.
const CHANGING_EVERY: u64 = 5;
/// How long live data waits for proof: the default confirm_interval.
const UNPROVEN: f64 = 0.5;

fn main() {
    if std::env::var(ROLE).as_deref() == Ok("simulators") {
        simulators();
    } else if std::env::args().any(|a| a == "--bench") {
        bench();
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Child: serve the devices, print their ports, change a fifth of the
/// registers every second, and print the requests served for every line
/// read from stdin, until it closes.
fn simulators() {
    let devices = env_number("FIELDMQ_BENCH_DEVICES").unwrap_or(1) as usize;
    let registers = env_number("FIELDMQ_BENCH_REGISTERS").unwrap_or(1) as u16;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let sim = Simulator::new();
        let mut values: Vec<u16> = (0..registers).collect();
        sim.set_registers(1, Table::Holding, 0, &values);
        let mut ports = Vec::new();
        for _ in 0..devices {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            ports.push(listener.local_addr().expect("addr").port().to_string());
            tokio::spawn(sim.clone().serve_tcp(listener));
        }
        println!("{}", ports.join(" "));
        std::io::stdout().flush().expect("flush");
        let changer = sim.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            for round in 0u64.. {
                tick.tick().await;
                for (r, v) in values.iter_mut().enumerate() {
                    if (r as u64 + round).is_multiple_of(CHANGING_EVERY) {
                        *v = v.wrapping_add(1);
                    }
                }
                changer.set_registers(1, Table::Holding, 0, &values);
            }
        });
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

fn config_text(data_dir: &Path, upstream_port: u16, ports: &[&str], registers: u16) -> String {
    let mut text = format!(
        "[node]\ngroup_id = \"bench\"\nnode_id = \"gw\"\ndata_dir = \"{}\"\n\
         [upstream]\nurl = \"mqtt://127.0.0.1:{upstream_port}\"\nprofile = \"plain\"\n\
         [broker]\nenabled = false\n",
        data_dir.display()
    );
    // Identical devices, written as a site would write them: one model.
    text.push_str("[[model]]\nname = \"bench\"\n");
    for r in 0..registers {
        text.push_str(&format!(
            "[[model.metric]]\nname = \"r{r}\"\ntable = \"holding\"\naddress = {r}\ntype = \"u16\"\n"
        ));
    }
    for (i, port) in ports.iter().enumerate() {
        text.push_str(&format!(
            "[[bus]]\nname = \"b{i}\"\nkind = \"tcp\"\naddress = \"127.0.0.1:{port}\"\n\
             [[device]]\nname = \"d{i}\"\nbus = \"b{i}\"\nunit = 1\npoll = \"1s\"\nmodel = \"bench\"\n"
        ));
    }
    text
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A mosquitto on a free loopback port, stopped on drop.
struct Mosquitto {
    port: u16,
    child: Child,
}

impl Mosquitto {
    fn start(dir: &Path) -> Mosquitto {
        let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("mosquitto is not installed; run scripts/install-test-deps");
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
        )
        .expect("mosquitto.conf");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Mosquitto { port, child }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory and CPU time of a process, from /proc.
struct Usage {
    rss_kib: u64,
    cpu: Duration,
}

fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for pid {pid}"));
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 14th field overall.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum());
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Usage {
        rss_kib,
        cpu: Duration::from_secs_f64(ticks as f64 / per_second),
    }
}

/// What one scale measured.
struct Measured {
    tags: usize,
    rss_kib: u64,
    cpu_per_1000: Duration,
    cycles_per_s: f64,
}

/// Runs the gateway against `devices` x `registers` for `secs` after a warm-up.
fn run_gateway(devices: usize, registers: u16, secs: u64) -> Measured {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start(dir.path());
    let mut sims = Command::new(std::env::current_exe().expect("current exe"))
        .env(ROLE, "simulators")
        .env("FIELDMQ_BENCH_DEVICES", devices.to_string())
        .env("FIELDMQ_BENCH_REGISTERS", registers.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn simulators");
    let mut lines = std::io::BufReader::new(sims.stdout.take().expect("stdout")).lines();
    let ports_line = lines.next().expect("ports").expect("read ports");
    let ports: Vec<&str> = ports_line.split_whitespace().collect();
    let config = dir.path().join("fieldmq.toml");
    std::fs::write(
        &config,
        config_text(dir.path(), broker.port, &ports, registers),
    )
    .expect("config");
    let mut stdin = sims.stdin.take().expect("stdin");
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
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_fieldmq"))
        .arg("run")
        .arg("-c")
        .arg(&config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start fieldmq");
    let pid = gateway.id();
    std::thread::sleep(Duration::from_secs(10));
    let (start, requests_before) = (usage(pid), served());
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let (end, requests_after) = (usage(pid), served());
    let elapsed = t0.elapsed().as_secs_f64();
    // SAFETY: the gateway is our child; SIGTERM stops it cleanly.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = gateway.wait();
    drop(served);
    let _ = sims.kill();
    let _ = sims.wait();
    let tags = devices * usize::from(registers);
    let requests_per_cycle = devices * usize::from(registers).div_ceil(125);
    let polled = tags as f64 * elapsed;
    Measured {
        tags,
        rss_kib: end.rss_kib,
        cpu_per_1000: (end.cpu - start.cpu).div_f64(polled / 1000.0),
        cycles_per_s: (requests_after - requests_before) as f64
            / requests_per_cycle as f64
            / elapsed,
    }
}

/// Heap bytes `build`'s result keeps.
fn kept<T>(build: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    let value = build();
    let after = LIVE.load(Ordering::Relaxed);
    (value, usize::try_from(after - before).unwrap_or(0))
}

fn sample(device: usize, metric: usize, v: u16) -> Sample {
    Sample {
        device,
        metric,
        value: Some(Value::U16(v)),
        quality: Quality::Good,
        timestamp_ms: 1_764_000_000_000,
    }
}

/// The parts of the gateway that grow with the tags, filled as a running
/// gateway fills them: (name, bytes).
fn parts(devices: usize, registers: u16) -> Vec<(&'static str, usize)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports: Vec<String> = (0..devices).map(|i| (10_000 + i).to_string()).collect();
    let ports: Vec<&str> = ports.iter().map(String::as_str).collect();
    let text = config_text(dir.path(), 1883, &ports, registers);
    let (config, config_bytes) =
        kept(|| Arc::new(Config::from_toml(Path::new("bench.toml"), &text).expect("config")));
    let (_plans, plan_bytes) = kept(|| {
        config
            .devices
            .iter()
            .map(ReadPlan::for_device)
            .collect::<Vec<_>>()
    });
    let full = |device: usize| -> Vec<Sample> {
        (0..usize::from(registers))
            .map(|m| sample(device, m, m as u16))
            .collect()
    };
    let (_filters, filter_bytes) = kept(|| {
        config
            .devices
            .iter()
            .enumerate()
            .map(|(d, device)| {
                let mut filter =
                    ChangeFilter::new(device.metrics.iter().map(|m| m.deadband).collect());
                for s in full(d) {
                    filter.admit(&s);
                }
                filter
            })
            .collect::<Vec<_>>()
    });
    let (_cache, cache_bytes) = kept(|| {
        let mut cache = LastValues::new(&config);
        for d in 0..devices {
            cache.apply(&DeviceEvent::Online {
                device: d,
                samples: full(d),
                identity: None,
            });
        }
        cache
    });
    let (_board, board_bytes) = kept(|| {
        let mut board = fieldmq::sink::status::board::Board::new(Arc::clone(&config));
        for d in 0..devices {
            let event = DeviceEvent::Online {
                device: d,
                samples: full(d),
                identity: None,
            };
            board.apply(&event, 1_764_000_000_000);
        }
        board
    });
    let (_profile, profile_bytes) = kept(|| {
        NodeProfile::new(
            Arc::clone(&config),
            Profile::Plain,
            fieldmq::profile::Role::Uplink,
        )
    });
    let changed = usize::from(registers) / CHANGING_EVERY as usize;
    let (_forwarder, window_bytes) = kept(|| {
        let mut forwarder = Forwarder::open(
            &dir.path().join("buffer"),
            &config.buffer,
            DeviceKeys::of(&config),
        )
        .expect("queue");
        // Batches handed over since the last proof: half a second of polls.
        let unproven = (devices as f64 * UNPROVEN).ceil() as usize;
        for d in 0..unproven {
            let batch: Vec<Sample> = (0..changed).map(|m| sample(d, m, 1)).collect();
            forwarder.sent_live(d, &batch, d as u64 + 1);
        }
        forwarder
    });
    // Bounds, not live figures: a channel holds what is queued, normally
    // nothing; full, each slot is an event with its samples (one poll's
    // changes), or a request with a JSON message (about 90 bytes).
    let event =
        std::mem::size_of::<DeviceEvent<Config>>() + changed * std::mem::size_of::<Sample>();
    let sinks = 1;
    let channels_full = (devices.min(EVENT_QUEUE) + EVENT_QUEUE * sinks) * event;
    let request = std::mem::size_of::<rumqttc::Request>() + 90;
    // tokio-modbus frames each TCP connection with tokio-util's codec,
    // whose read and write buffers start at 8 KiB each (seen in heaptrack).
    let framing = devices * 2 * 8 * 1024;
    vec![
        ("device map (Config, one model)", config_bytes),
        ("read plans", plan_bytes),
        ("report-by-exception state", filter_bytes),
        ("last values (uplink)", cache_bytes),
        ("status page board (with [health])", board_bytes),
        ("plain topics (profile)", profile_bytes),
        ("Modbus TCP framing buffers (tokio-util)", framing),
        ("replay window (0.5 s unproven)", window_bytes),
        ("event channels, if full (bound)", channels_full),
        (
            "rumqttc request queue, if full (bound)",
            REQUEST_QUEUE * request,
        ),
    ]
}

fn bench() {
    let secs = env_number("FIELDMQ_BENCH_SECS").unwrap_or(20);
    let only = std::env::var("FIELDMQ_BENCH_SCALE").ok();
    let scales: Vec<_> = SCALES
        .iter()
        .filter(|(name, ..)| only.as_deref().is_none_or(|o| o == *name))
        .collect();
    println!(
        "footprint: plain profile to mosquitto, poll 1 s, 1 in {CHANGING_EVERY} values changing per poll, {secs} s after 10 s warm-up"
    );
    let baseline = run_gateway(1, 1, secs.min(10));
    println!(
        "baseline (1 device x 1 register): RSS {:.1} MiB",
        baseline.rss_kib as f64 / 1024.0
    );
    let mut all_parts = Vec::new();
    for &&(name, devices, registers) in &scales {
        let m = run_gateway(devices, registers, secs);
        let over = m.rss_kib.saturating_sub(baseline.rss_kib) * 1024;
        println!(
            "{name}: {devices} devices x {registers} registers = {} tags: RSS {:.1} MiB ({:.0} bytes per tag over the baseline), CPU {:.3} ms per 1000 polled values, {:.2} poll cycles/s",
            m.tags,
            m.rss_kib as f64 / 1024.0,
            over as f64 / m.tags as f64,
            m.cpu_per_1000.as_secs_f64() * 1e3,
            m.cycles_per_s
        );
        all_parts.push((name, m.tags, over, parts(devices, registers)));
    }
    println!(
        "sizes: Metric {} B, Sample {} B, Value {} B, Quality {} B",
        std::mem::size_of::<fieldmq::config::Metric>(),
        std::mem::size_of::<Sample>(),
        std::mem::size_of::<Value>(),
        std::mem::size_of::<Quality>()
    );
    println!("where the bytes go (heap kept by each part; share of the RSS over the baseline):");
    for (name, tags, over, parts) in &all_parts {
        println!("  {name}:");
        for (part, bytes) in parts {
            println!(
                "    {part:<40} {:>9.1} KiB  {:>6.1} bytes/tag  {:>5.1} %",
                *bytes as f64 / 1024.0,
                *bytes as f64 / *tags as f64,
                100.0 * *bytes as f64 / (*over).max(1) as f64
            );
        }
    }
}
