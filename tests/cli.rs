//! The `fieldmq` binary as an engineer uses it: check, read, run.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use fieldmq::core::identity::Identity;
use fieldmq::core::layout::Table;
use fieldmq::sim::Simulator;
use support::tcp_simulator;
use tokio::process::Command;

fn fieldmq() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fieldmq"));
    cmd.env("RUST_LOG", "info").stdin(Stdio::null());
    cmd
}

async fn output(cmd: &mut Command) -> (i32, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("fieldmq finishes within 30 s")
        .expect("fieldmq runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

#[tokio::test]
async fn every_shipped_config_validates_and_prints_its_read_plan_or_pins() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(root.join("examples"))
        .expect("examples/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.push(root.join("config/fieldmq.example.toml"));
    assert!(files.len() >= 4, "{files:?}");
    for file in files {
        let (code, stdout, stderr) =
            output(fieldmq().arg("check").arg("--config").arg(&file)).await;
        assert_eq!(code, 0, "{}: {stderr}", file.display());
        assert!(stdout.contains(": valid"), "{stdout}");
        assert!(
            stdout.contains("FC0") || stdout.contains("    pin "),
            "the read plan (or the pins) is printed: {stdout}"
        );
    }
}

#[tokio::test]
async fn a_broken_config_names_file_line_and_key_and_exits_78_from_every_subcommand() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        dir.path(),
        "meter1.toml",
        "[node]\ngroup_id = \"g\"\nnode_id = \"n\"\n[[bus]]\nname = \"b\"\nkind = \"tcp\"\naddress = \"127.0.0.1:1\"\n[[device]]\nname = \"meter1\"\nbus = \"b\"\nunit = 1\n[[device.metric]]\nname = \"voltage/L1\"\ntable = \"input\"\naddress = 0\ntype = \"flaot32\"\n",
    );
    for args in [
        vec!["check"],
        vec!["run"],
        vec!["read", "--device", "meter1"],
    ] {
        let (code, _, stderr) = output(fieldmq().args(&args).arg("--config").arg(&path)).await;
        assert_eq!(code, 78, "{args:?}: {stderr}");
        assert!(
            stderr.contains("meter1.toml:16: device \"meter1\", metric \"voltage/L1\": unknown type \"flaot32\", expected one of bool, u16"),
            "{stderr}"
        );
    }
    let (code, _, stderr) = output(
        fieldmq()
            .args(["check", "--config"])
            .arg(dir.path().join("missing.toml")),
    )
    .await;
    assert_eq!(code, 78, "{stderr}");
    assert!(stderr.contains("missing.toml"), "{stderr}");
}

fn sim_config(addr: std::net::SocketAddr) -> String {
    format!(
        "[node]\ngroup_id = \"g\"\nnode_id = \"n\"\n[broker]\nenabled = false\n[[bus]]\nname = \"b\"\nkind = \"tcp\"\naddress = \"{addr}\"\ntimeout = \"300ms\"\n\
         [[device]]\nname = \"meter\"\nbus = \"b\"\nunit = 1\n\
         [[device.metric]]\nname = \"voltage\"\ntable = \"input\"\naddress = 0\ntype = \"f32\"\nunit = \"V\"\n\
         [[device.metric]]\nname = \"temp\"\ntable = \"holding\"\naddress = 0\ntype = \"i16\"\nscale = 0.1\n\
         [[device.metric]]\nname = \"missing\"\ntable = \"holding\"\naddress = 50\ntype = \"u16\"\n"
    )
}

/// A simulated meter on a loopback port and a config file for it.
struct MeterFixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn meter_fixture() -> MeterFixture {
    let sim = Simulator::new();
    sim.set_registers(1, Table::Input, 0, &[0x4366, 0x8000]);
    sim.set_registers(1, Table::Holding, 0, &[0xFF85]);
    sim.set_identity(
        1,
        Identity {
            vendor: "ACME".into(),
            product_code: "PM-9".into(),
            revision: "1.2".into(),
        },
    );
    let (addr, server) = tcp_simulator(&sim).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), "sim.toml", &sim_config(addr));
    MeterFixture {
        _dir: dir,
        path,
        server,
    }
}

/// `fieldmq read --device DEVICE [extra...] --config PATH`.
async fn read(path: &Path, device: &str, extra: &[&str]) -> (i32, String, String) {
    let mut cmd = fieldmq();
    cmd.args(["read", "--device", device])
        .args(extra)
        .arg("--config")
        .arg(path);
    output(&mut cmd).await
}

#[tokio::test]
async fn read_prints_values_raw_registers_and_json_with_null_for_bad_quality() {
    let meter = meter_fixture().await;
    let path = &meter.path;

    let (code, stdout, stderr) = read(path, "meter", &[]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.lines().next(),
        Some("identity: ACME PM-9 rev 1.2"),
        "what the device says it is (function 43/14) comes first: {stdout}"
    );
    let voltage_row = stdout
        .lines()
        .find(|l| l.starts_with("voltage"))
        .expect("voltage row");
    for cell in ["230.5", "V", "good", "4366 8000"] {
        assert!(voltage_row.contains(cell), "{voltage_row:?} lacks {cell}");
    }
    let missing_row = stdout
        .lines()
        .find(|l| l.starts_with("missing"))
        .expect("missing row");
    assert!(
        missing_row.contains("bad: exception 0x02 (illegal data address)"),
        "{missing_row}"
    );

    let (code, stdout, stderr) = read(path, "meter", &["--json"]).await;
    assert_eq!(code, 0, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(json["voltage"], serde_json::json!(230.5));
    assert!(
        (json["temp"].as_f64().expect("number") - (-12.3)).abs() < 1e-9,
        "{json}"
    );
    assert_eq!(json["missing"], serde_json::Value::Null);

    let (code, _, stderr) = read(path, "nope", &[]).await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("no device \"nope\"") && stderr.contains("devices: meter"),
        "{stderr}"
    );
    meter.server.abort();
}

#[tokio::test]
async fn read_exits_1_when_the_device_does_not_answer() {
    // A port nothing listens on: bind, note it, close.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = &write_config(dir.path(), "dead.toml", &sim_config(addr));
    let (code, stdout, stderr) = read(path, "meter", &[]).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains("bad: link: connect to"), "{stdout}");
    assert!(stderr.contains("did not answer"), "{stderr}");
}

#[tokio::test]
async fn run_logs_samples_and_stops_cleanly_on_sigterm() {
    let meter = meter_fixture().await;
    let path = &meter.path;
    let child = fieldmq()
        .env("NO_COLOR", "1")
        .args(["run", "--config"])
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fieldmq run");
    let pid = child.id().expect("pid");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // SAFETY: kill(2) with a pid we spawned and a valid signal number has no memory effects.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let out = tokio::time::timeout(Duration::from_secs(5), child.wait_with_output())
        .await
        .expect("fieldmq stops within 5 s of SIGTERM")
        .expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("metric=voltage") && stderr.contains("value=230.5"),
        "{stderr}"
    );
    assert!(
        stderr.contains("shutting down")
            && stderr.contains("SIGTERM")
            && stderr.contains("stopped"),
        "{stderr}"
    );
    meter.server.abort();
}

/// `fieldmq demo` with its broker on `listen` and the meter on any free port.
fn start_demo(dir: &Path, listen: &str) -> support::mqtt::Gateway {
    let args = ["demo", "--listen", listen, "--modbus-listen", "127.0.0.1:0"];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    support::mqtt::Gateway::spawn(&args, dir, "demo")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_publishes_the_meter_and_the_gpio_panel_in_both_profiles() {
    use support::mqtt::{Peer, free_port};
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = format!("127.0.0.1:{}", free_port());
    let demo = start_demo(dir.path(), &listen);
    let port: u16 = listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    assert!(
        support::mqtt::wait_for_listener(port).await,
        "the gateway's broker listens on {port}"
    );
    let mut local = Peer::connect(port, "watcher", &["demo/#", "spBv1.0/#"]).await;
    let got = local.collect_for(Duration::from_secs(4)).await;
    let topics: Vec<&str> = got.iter().map(|m| m.topic.as_str()).collect();
    for wanted in [
        "demo/fieldmq-demo/meter/voltage/L1",
        "demo/fieldmq-demo/panel/water",
        "spBv1.0/demo/DDATA/fieldmq-demo/meter",
        "spBv1.0/demo/DDATA/fieldmq-demo/panel",
    ] {
        assert!(
            topics.contains(&wanted),
            "{wanted} in {topics:?}\n{}",
            demo.log()
        );
    }
    // Anonymous clients may read everything, ask the demo node for a
    // rebirth (so tail can name its metrics) and switch the relay through
    // its /set topic; a DCMD is dropped by the broker's ACL.
    local.request_rebirth("demo", "fieldmq-demo").await;
    local
        .next_on("spBv1.0/demo/NBIRTH/fieldmq-demo", Duration::from_secs(5))
        .await;
    local
        .publish(
            "spBv1.0/demo/DCMD/fieldmq-demo/panel",
            support::mqtt::sparkplug_command(
                "relay",
                fieldmq::profile::sparkplug::proto::payload::metric::Value::BooleanValue(true),
            ),
            false,
        )
        .await;
    let after = local.collect_for(Duration::from_secs(2)).await;
    assert!(
        !after
            .iter()
            .any(|m| m.topic == "demo/fieldmq-demo/panel/relay"
                && m.text().contains("\"value\":true")),
        "anonymous clients may not send DCMD"
    );
    let relay_set = "demo/fieldmq-demo/panel/relay/set";
    local.publish(relay_set, b"true".to_vec(), false).await;
    let relay = local
        .next_on("demo/fieldmq-demo/panel/relay", Duration::from_secs(5))
        .await;
    assert!(relay.text().contains("\"value\":true"), "{}", relay.text());
    // Its state, the uplink's password among it, is the owner's alone, in a
    // directory nobody could have made for it beforehand.
    let pid = demo.pid().expect("demo running");
    let state: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .expect("temp dir")
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("fieldmq-demo-{pid}-"))
        })
        .collect();
    assert_eq!(
        state.len(),
        1,
        "one state directory, named with a random part"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &state[0].metadata().expect("metadata").permissions(),
    );
    assert_eq!(mode & 0o777, 0o700);
    let password = std::fs::read_to_string(state[0].path().join("uplink.pass")).expect("password");
    assert_eq!(password.len(), 24, "96 random bits, hex");
    assert!(demo.terminate().await.success());
}

/// A gateway publishing a simulated water meter's pulses as Sparkplug to `broker`.
fn start_water_meter(dir: &Path, broker: &str) -> support::mqtt::Gateway {
    let config = format!(
        r#"
[node]
group_id = "plant"
node_id = "gw"
data_dir = "{}"

[upstream]
url = "{broker}"
connect_jitter = "0s"

[broker]
enabled = false

[[device]]
name = "panel"
gpio = "sim"
poll = "500ms"

[[device.metric]]
name = "water"
pin = 1
mode = "counter"
debounce = "5ms"
sim_toggle = "50ms"
unit = "L"
"#,
        dir.join("data").display(),
    );
    let path = write_config(dir, "gw.toml", &config);
    support::mqtt::Gateway::run(&path, dir, "gw")
}

/// Starts `fieldmq tail` with `args` and waits until it has subscribed.
async fn start_tail(args: &[&str]) -> (tokio::process::Child, tokio::task::JoinHandle<String>) {
    use tokio::io::AsyncBufReadExt as _;
    let mut tail = fieldmq()
        .arg("tail")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start tail");
    let mut status = tokio::io::BufReader::new(tail.stderr.take().expect("stderr")).lines();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(line)) = status.next_line().await {
            if line.contains("subscribed to") {
                return;
            }
        }
    })
    .await
    .expect("tail subscribes");
    let rest = tokio::spawn(async move {
        let mut rest = String::new();
        while let Ok(Some(line)) = status.next_line().await {
            rest.push_str(&line);
            rest.push('\n');
        }
        rest
    });
    (tail, rest)
}

/// Ctrl-C to `tail`; what it printed.
async fn stop_tail(tail: tokio::process::Child) -> String {
    if let Some(pid) = tail.id() {
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
    }
    let out = tokio::time::timeout(Duration::from_secs(5), tail.wait_with_output())
        .await
        .expect("tail stops on SIGINT")
        .expect("tail output");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_with_rebirth_asks_a_node_it_joined_late_for_its_births_and_names_its_metrics() {
    use support::mqtt::Mosquitto;
    let broker = Mosquitto::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = start_water_meter(dir.path(), &broker.url());
    // tail joins after the births went out.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (tail, stderr) = start_tail(&["--rebirth", "--url", &broker.url(), "spBv1.0/#"]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let out = stop_tail(tail).await;
    let stderr = stderr.await.expect("stderr");
    assert!(
        stderr.contains("asking for one on spBv1.0/plant/NCMD/gw"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("asking for one").count(),
        1,
        "once per node: {stderr}"
    );
    let reborn = out
        .find("NBIRTH plant/gw")
        .unwrap_or_else(|| panic!("the node was reborn:\n{out}\n{}", gateway.log()));
    let after = &out[reborn..];
    assert!(after.contains("DBIRTH plant/gw/panel"), "{out}");
    assert!(
        after
            .lines()
            .any(|l| l.contains("DDATA  plant/gw/panel") && l.contains("water = ")),
        "data named after the birth:\n{out}"
    );
    assert!(gateway.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_sparkplug_metrics_by_name_with_units_once_it_saw_the_births() {
    use support::mqtt::Mosquitto;
    let broker = Mosquitto::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (tail, _) = start_tail(&["--url", &broker.url(), "spBv1.0/#"]).await;
    // The gateway starts after tail, so tail sees its births.
    let gateway = start_water_meter(dir.path(), &broker.url());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(gateway.terminate().await.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = stop_tail(tail).await;
    for wanted in [
        "NBIRTH plant/gw seq=0  bdSeq = ",
        "DBIRTH plant/gw/panel seq=1  water = 0 L",
        "water/rate = 0 L/s",
        "DDATA  plant/gw/panel seq=",
        "NDEATH plant/gw seq=-  bdSeq = ",
    ] {
        assert!(out.contains(wanted), "{wanted:?} in:\n{out}");
    }
    assert!(!out.contains("no birth seen"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_in_the_demo_names_every_metric_from_its_first_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = support::mqtt::free_port();
    let listen = format!("127.0.0.1:{port}");
    let demo = start_demo(dir.path(), &listen);
    assert!(support::mqtt::wait_for_listener(port).await);
    // tail joins after the demo's births went out, as a user does.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let url = format!("mqtt://{listen}");
    let (tail, stderr) = start_tail(&["--url", &url, "--rebirth", "spBv1.0/demo/#"]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let out = stop_tail(tail).await;
    let stderr = stderr.await.expect("stderr");
    let shown: Vec<&str> = out.lines().filter(|l| !l.contains(" NCMD ")).collect();
    assert!(
        shown
            .first()
            .is_some_and(|l| l.contains("NBIRTH demo/fieldmq-demo")),
        "the births first:\n{out}\n{stderr}"
    );
    assert!(!out.contains("no birth seen"), "{out}");
    assert!(
        shown
            .iter()
            .any(|l| l.contains("DDATA  demo/fieldmq-demo/meter") && l.contains(" = ")),
        "{out}"
    );
    assert!(stderr.contains("births arrived"), "{stderr}");
    assert!(demo.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_says_when_its_rebirth_request_was_probably_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = support::mqtt::free_port();
    // The gateway's own broker speaks Sparkplug and lets anonymous clients
    // read but not publish: the NCMD tail sends is dropped by the ACL.
    let config = format!(
        r#"
[node]
group_id = "plant"
node_id = "gw"
data_dir = "{}"

[broker]
listen = "127.0.0.1:{port}"
profile = "sparkplug"

[[device]]
name = "panel"
gpio = "sim"
poll = "200ms"

[[device.metric]]
name = "water"
pin = 1
mode = "counter"
sim_toggle = "50ms"
"#,
        dir.path().join("data").display(),
    );
    let path = write_config(dir.path(), "gw.toml", &config);
    let gateway = support::mqtt::Gateway::run(&path, dir.path(), "gw");
    assert!(support::mqtt::wait_for_listener(port).await);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let url = format!("mqtt://127.0.0.1:{port}");
    let (tail, stderr) = start_tail(&["--url", &url, "--rebirth", "spBv1.0/#"]).await;
    // 5 s of waiting for the births, its check's 1 s tick, and time for data after it.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let out = stop_tail(tail).await;
    let stderr = stderr.await.expect("stderr");
    assert!(
        stderr.contains("no NBIRTH from plant/gw within 5s of asking on spBv1.0/plant/NCMD/gw: the broker probably refused the request"),
        "{stderr}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("DDATA  plant/gw/panel") && l.contains("(no birth seen)")),
        "shown by alias after the wait:\n{out}"
    );
    assert!(gateway.terminate().await.success());
}

#[tokio::test]
async fn completions_and_man_pages_come_from_the_command_line_itself() {
    let (code, bash, _) = output(fieldmq().args(["completions", "bash"])).await;
    assert_eq!(code, 0);
    for word in ["_fieldmq", "scan", "check", "--rtu-over-tcp", "completions"] {
        assert!(bash.contains(word), "{word} in the bash completion");
    }
    let (code, fish, _) = output(fieldmq().args(["completions", "fish"])).await;
    assert_eq!(code, 0);
    assert!(fish.contains("complete -c fieldmq"), "{fish}");

    let dir = tempfile::tempdir().expect("tempdir");
    let (code, _, stderr) = output(fieldmq().arg("manual").arg("--out").arg(dir.path())).await;
    assert_eq!(code, 0, "{stderr}");
    let page = std::fs::read_to_string(dir.path().join("fieldmq.1")).expect("fieldmq.1");
    for section in [
        "FIELDMQ CHECK",
        "FIELDMQ SCAN",
        "FIELDMQ READ",
        "FIELDMQ RUN",
        "FIELDMQ TAIL",
        "FIELDMQ DEMO",
    ] {
        assert!(
            page.contains(&format!(".SH \"{section}\"")),
            "a section {section}"
        );
    }
    assert!(
        page.contains("\\-\\-rtu\\-over\\-tcp"),
        "the scan options are listed"
    );
    assert!(
        !page.contains("FIELDMQ MANUAL"),
        "the packaging helper stays out of the page"
    );
    let config =
        std::fs::read_to_string(dir.path().join("fieldmq.toml.5")).expect("fieldmq.toml.5");
    for section in ["BUSES", "DEVICES", "THE MQTT SERVER TO PUBLISH TO"] {
        assert!(config.contains(&format!(".SH \"{section}\"")), "{section}");
    }
    assert!(
        config.contains("byte_timeout"),
        "every key of the reference config"
    );
    // groff (installed by scripts/install-test-deps) reads both without a warning.
    for page in ["fieldmq.1", "fieldmq.toml.5"] {
        let lint = Command::new("groff")
            .args(["-ww", "-z", "-man"])
            .arg(dir.path().join(page))
            .output()
            .await
            .expect("groff runs");
        assert!(
            lint.status.success() && lint.stderr.is_empty(),
            "{page}: {}",
            String::from_utf8_lossy(&lint.stderr)
        );
    }
}
