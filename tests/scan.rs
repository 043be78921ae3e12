//! `fieldmq scan` as a technician runs it on a new bus: against the
//! simulator over TCP, with models to match, and the tables it prints fed
//! back into `fieldmq check`.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fieldmq::acquire::modbus::scan::ScanTimeouts;
use fieldmq::config::{Bus, Transport};
use fieldmq::core::identity::Identity;
use fieldmq::core::layout::Table;
use fieldmq::sim::Simulator;
use support::tcp_simulator;
use tokio::process::Command;

const MODELS: &str = r#"
[[model]]
name = "acme-pm9"
identity = { vendor = "ACME", product_code = "PM-9" }

[[model.metric]]
name = "voltage"
register = 30001
type = "u16"
unit = "V"
"#;

async fn fieldmq(args: &[&str]) -> (i32, String, String, Duration) {
    let started = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(env!("CARGO_BIN_EXE_fieldmq"))
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("fieldmq finishes within 60 s")
    .expect("fieldmq runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

/// Units 3 (identifies as a modelled product), 7 (refuses function 43) and
/// 12 (identifies as an unknown product); the others are absent.
fn bus_of_three() -> Simulator {
    let sim = Simulator::new();
    for unit in [3, 7, 12] {
        sim.set_registers(unit, Table::Input, 0, &[230]);
    }
    sim.set_registers(12, Table::Holding, 0, &[1]);
    sim.set_identity(
        3,
        Identity {
            vendor: "ACME".into(),
            product_code: "PM-9".into(),
            revision: "1.2".into(),
        },
    );
    sim.set_identity(
        12,
        Identity {
            vendor: "Other".into(),
            product_code: "X1".into(),
            revision: "7".into(),
        },
    );
    sim
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_finds_exactly_the_units_that_answer_within_its_bound_and_never_writes() {
    let sim = bus_of_three();
    let (addr, server) = tcp_simulator(&sim).await;
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "acme.toml", MODELS);
    let models = format!("{}/*.toml", dir.path().display());
    let address = addr.to_string();

    let (code, stdout, stderr, took) = fieldmq(&[
        "scan", "--tcp", &address, "--units", "1-20", "--models", &models, "--json",
    ])
    .await;
    assert_eq!(code, 0, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let found = json["buses"][0]["found"].as_array().expect("found").clone();
    let units: Vec<u64> = found.iter().filter_map(|f| f["unit"].as_u64()).collect();
    assert_eq!(units, vec![3, 7, 12], "{json}");
    assert_eq!(
        found[0]["identity"],
        serde_json::json!({"vendor": "ACME", "product_code": "PM-9", "revision": "1.2"})
    );
    assert_eq!(found[0]["model"], "acme-pm9");
    assert_eq!(found[1]["identification"], "refused");
    assert_eq!(found[1]["identification_exception"], 1);
    assert_eq!(
        found[1]["read_exception"], 2,
        "holding register 0 does not exist on unit 7"
    );
    assert_eq!(found[2]["identity"]["vendor"], "Other");
    assert_eq!(found[2]["model"], serde_json::Value::Null);
    assert!(
        found
            .iter()
            .all(|f| f["reply_ms"].as_f64().is_some_and(|ms| ms < 250.0))
    );

    let bus = Bus {
        name: "scanned".into(),
        transport: Transport::Tcp {
            address: address.clone(),
        },
        timeout: Duration::from_millis(250),
        turnaround: Duration::ZERO,
    };
    let bound = ScanTimeouts::for_transport(&bus.transport, None).bound(&bus, 20, 3);
    assert!(
        took < bound + Duration::from_secs(1),
        "took {took:?}, bound {bound:?} (+1 s to start the process)"
    );
    let functions: Vec<u8> = sim.served().iter().map(|s| s.function).collect();
    assert!(
        functions.iter().all(|f| [3, 43].contains(f)),
        "a scan only reads: {functions:?}"
    );
    assert_eq!(
        functions.iter().filter(|f| **f == 43).count(),
        3,
        "only the units that answered are asked to identify"
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tables_scan_prints_are_a_config_check_accepts() {
    let sim = bus_of_three();
    let (addr, server) = tcp_simulator(&sim).await;
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "acme.toml", MODELS);
    let models = format!("{}/*.toml", dir.path().display());
    let (code, stdout, stderr, _) = fieldmq(&[
        "scan",
        "--tcp",
        &addr.to_string(),
        "--units",
        "1-13",
        "--models",
        &models,
    ])
    .await;
    assert_eq!(code, 0, "{stderr}");
    let line = |unit: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("unit {unit:>3}")))
            .unwrap_or_else(|| panic!("no line for unit {unit}: {stdout}"))
            .to_owned()
    };
    assert!(
        line("3").contains("ACME PM-9 rev 1.2  (model \"acme-pm9\")"),
        "{stdout}"
    );
    assert!(
        line("7").contains("identification not supported (exception 01: illegal function)"),
        "{stdout}"
    );
    assert!(line("12").contains("Other X1 rev 7"), "{stdout}");
    assert!(stdout.contains("found 3 of 13 unit ids"), "{stdout}");
    let pasted = stdout
        .split("# ready to paste")
        .nth(1)
        .expect("a table to paste for unit 3");
    assert!(
        pasted.contains("unit  = 3\nmodel = \"acme-pm9\""),
        "{pasted}"
    );
    assert!(
        !pasted.contains("unit  = 12"),
        "no model fits unit 12: {pasted}"
    );

    let pasted = pasted.split_once('\n').map_or("", |(_, rest)| rest);
    let config = format!(
        "include = [\"acme.toml\"]\n[node]\ngroup_id = \"g\"\nnode_id = \"n\"\n[broker]\nenabled = false\n{pasted}"
    );
    let path = write(dir.path(), "site.toml", &config);
    let (code, stdout, stderr, _) = fieldmq(&["check", "--config", &path]).await;
    assert_eq!(code, 0, "{config}\n{stderr}");
    assert!(stdout.contains("acme-pm9"), "{stdout}");

    let (code, stdout, stderr, _) =
        fieldmq(&["read", "--config", &path, "--device", "acme-pm9-3"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("identity: ACME PM-9 rev 1.2"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("voltage") && l.contains("230")),
        "{stdout}"
    );

    // The same bus by name from that config: its included models are matched.
    let (code, stdout, stderr, _) = fieldmq(&[
        "scan",
        "--config",
        &path,
        "--bus",
        "scanned",
        "--units",
        "3",
        "--models",
        "/nonexistent/*.toml",
    ])
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("(model \"acme-pm9\")"), "{stdout}");
    assert!(
        !stdout.contains("[[bus]]"),
        "the bus is already in the config: {stdout}"
    );
    server.abort();
}

#[tokio::test]
async fn a_scan_that_finds_nothing_exits_1_and_one_that_cannot_connect_says_why() {
    let sim = Simulator::new();
    let (addr, server) = tcp_simulator(&sim).await;
    let (code, stdout, _, _) = fieldmq(&[
        "scan",
        "--tcp",
        &addr.to_string(),
        "--units",
        "1-2",
        "--timeout",
        "50ms",
    ])
    .await;
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("found 0 of 2 unit ids"), "{stdout}");
    server.abort();

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let (code, _, stderr, _) =
        fieldmq(&["scan", "--tcp", &closed.to_string(), "--units", "1"]).await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("scan stopped") && stderr.contains(&closed.to_string()),
        "{stderr}"
    );

    let (code, _, stderr, _) = fieldmq(&["scan", "--tcp", "127.0.0.1:1", "--units", "0-3"]).await;
    assert_eq!(code, 2, "a usage error: {stderr}");
    assert!(stderr.contains("0 is broadcast"), "{stderr}");
}
