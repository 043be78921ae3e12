//! A serial line at a real baud rate: two socat pty pairs with a relay
//! between them that delivers each byte at the moment a real line would
//! finish sending it (back to back from the moment the sender wrote it, one
//! character time each). The gateway opens one end, the simulator the
//! other; what crossed, and when, is kept for measurements.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Which way a byte went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// From the gateway to the device.
    ToDevice,
    /// From the device to the gateway.
    ToGateway,
}

/// One chunk the relay read (what a sender wrote at once), with the time
/// it was read and the time its last byte was delivered.
#[derive(Debug, Clone, Copy)]
pub struct Crossing {
    /// Direction.
    pub way: Way,
    /// When the sender wrote it (the relay read it).
    pub written: Instant,
    /// When its last byte reached the other end.
    pub delivered: Instant,
}

/// The line; dropping it stops the socat processes and with them the relay.
pub struct PacedLine {
    /// The port the gateway opens.
    pub gateway_end: PathBuf,
    /// The port the simulator opens.
    pub device_end: PathBuf,
    crossings: Arc<Mutex<Vec<Crossing>>>,
    socats: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for PacedLine {
    fn drop(&mut self) {
        for socat in &mut self.socats {
            let _ = socat.kill();
            let _ = socat.wait();
        }
    }
}

fn pty_pair(a: &Path, b: &Path) -> Child {
    let child = Command::new("socat")
        .arg(format!("pty,raw,echo=0,link={}", a.display()))
        .arg(format!("pty,raw,echo=0,link={}", b.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat must be installed (scripts/install-test-deps installs it)");
    for _ in 0..200 {
        if a.exists() && b.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(a.exists() && b.exists(), "socat made no pty pair");
    child
}

fn open(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Waits until `t` to within a few microseconds: sleeps most of the way and
/// spins the rest (a test fixture may burn a core; the gateway may not).
fn wait_until(t: Instant) {
    loop {
        let now = Instant::now();
        if now >= t {
            return;
        }
        let left = t - now;
        if left > Duration::from_micros(300) {
            std::thread::sleep(left - Duration::from_micros(200));
        } else {
            std::hint::spin_loop();
        }
    }
}

/// The median time a byte takes through a socat pty pair, unpaced: the
/// measured gaps include two such hops (the answer's last byte to the
/// gateway, its next request back to the relay).
pub fn pty_hop() -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let mut socat = pty_pair(&a, &b);
    let (mut tx, mut rx) = (open(&a), open(&b));
    let mut hops = Vec::new();
    for _ in 0..50 {
        let sent = Instant::now();
        if tx.write_all(b"x").is_err() {
            break;
        }
        let mut byte = [0u8; 1];
        if rx.read_exact(&mut byte).is_err() {
            break;
        }
        hops.push(sent.elapsed());
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = socat.kill();
    let _ = socat.wait();
    hops.sort();
    hops.get(hops.len() / 2).copied().unwrap_or_default()
}

impl PacedLine {
    /// A line carrying `bits_per_char` bits per character at `baud`.
    pub fn start(baud: u32, bits_per_char: u32) -> PacedLine {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |name: &str| dir.path().join(name);
        let socats = vec![
            pty_pair(&p("ttyGW"), &p("relayGW")),
            pty_pair(&p("relayDEV"), &p("ttyDEV")),
        ];
        let char_time =
            Duration::from_nanos(u64::from(bits_per_char) * 1_000_000_000 / u64::from(baud));
        let crossings = Arc::new(Mutex::new(Vec::new()));
        let gw = open(&p("relayGW"));
        let dev = open(&p("relayDEV"));
        for (way, from, to) in [
            (
                Way::ToDevice,
                gw.try_clone().expect("clone"),
                dev.try_clone().expect("clone"),
            ),
            (Way::ToGateway, dev, gw),
        ] {
            let crossings = Arc::clone(&crossings);
            std::thread::spawn(move || relay(way, from, to, char_time, &crossings));
        }
        PacedLine {
            gateway_end: p("ttyGW"),
            device_end: p("ttyDEV"),
            crossings,
            socats,
            _dir: dir,
        }
    }

    /// What crossed so far.
    pub fn crossings(&self) -> Vec<Crossing> {
        self.crossings.lock().expect("crossings").clone()
    }
}

/// Moves bytes from `from` to `to` at the line's pace until either end closes.
fn relay(way: Way, mut from: File, mut to: File, char_time: Duration, log: &Mutex<Vec<Crossing>>) {
    let mut buf = [0u8; 512];
    // When the line is free again: a sender cannot start a byte before the previous one left.
    let mut line_free = Instant::now();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let written = Instant::now();
        let mut at = written.max(line_free);
        for byte in &buf[..n] {
            at += char_time;
            wait_until(at);
            if to.write_all(std::slice::from_ref(byte)).is_err() {
                return;
            }
        }
        line_free = at;
        if let Ok(mut log) = log.lock() {
            log.push(Crossing {
                way,
                written,
                delivered: at,
            });
        }
    }
}
