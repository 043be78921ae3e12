//! Interop: what fieldmq publishes, decoded by an independent Sparkplug B
//! implementation (pysparkplug, acting as the host application), and
//! commands encoded by it, carried out by fieldmq.

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fieldmq::core::layout::Table;
use fieldmq::sim::Simulator;
use serde_json::{Value, json};
use support::mqtt::{Gateway, Mosquitto};
use support::tcp_simulator;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const SECOND: Duration = Duration::from_secs(1);

/// The pysparkplug host script, run with the test virtualenv's Python.
struct PyHost {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl PyHost {
    async fn start(port: u16) -> PyHost {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let python = root.join("target/test-venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing; run scripts/install-test-deps",
            python.display()
        );
        let mut child = Command::new(python)
            .arg(root.join("tests/interop/sparkplug_host.py"))
            .args(["--port", &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the pysparkplug host");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let mut host = PyHost {
            _child: child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        };
        host.next_where("ready", |v| v["ready"] == true).await;
        host
    }

    async fn next_where(&mut self, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + 15 * SECOND;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("pysparkplug printed no {what} within 15 s"))
                .expect("read the host's output")
                .unwrap_or_else(|| panic!("the pysparkplug host exited while waiting for {what}"));
            let value: Value = serde_json::from_str(&line).expect("the host prints JSON lines");
            assert!(
                value.get("error").is_none(),
                "pysparkplug could not decode what fieldmq sent: {value}"
            );
            if pick(&value) {
                return value;
            }
        }
    }

    async fn next(&mut self, kind: &str) -> Value {
        self.next_where(kind, |v| v["type"] == kind).await
    }

    async fn send(&mut self, command: Value) {
        let line = format!("{command}\n");
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("send a command to the host");
    }
}

fn metric<'a>(payload: &'a Value, name: &str) -> &'a Value {
    payload["metrics"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["name"] == name))
        .unwrap_or_else(|| panic!("no metric {name} in {payload}"))
}

fn config(sim: std::net::SocketAddr, port: u16, data_dir: &std::path::Path) -> String {
    format!(
        r#"
[node]
group_id = "interop"
node_id = "gw"
data_dir = "{}"

[upstream]
url = "mqtt://127.0.0.1:{port}"

[broker]
enabled = false

[[bus]]
name = "sim"
kind = "tcp"
address = "{sim}"

[[device]]
name = "meter"
bus = "sim"
unit = 1
poll = "100ms"

[[device.metric]]
name = "voltage/L1"
table = "input"
address = 0
type = "f32"
unit = "V"

[[device.metric]]
name = "temperature"
table = "input"
address = 2
type = "i16"
scale = 0.1

[[device.metric]]
name = "level"
table = "input"
address = 3
type = "i16"

[[device.metric]]
name = "delta"
table = "input"
address = 4
type = "i32"

[[device.metric]]
name = "energy"
table = "input"
address = 6
type = "u64"

[[device.metric]]
name = "running"
table = "discrete"
address = 0
type = "bool"

[[device.metric]]
name = "serial"
table = "holding"
address = 20
type = "string"
length = 4

[[device.metric]]
name = "setpoint"
table = "holding"
address = 0
type = "u16"
writable = true
max = 1000.0
"#,
        data_dir.display()
    )
}

#[tokio::test]
async fn pysparkplug_decodes_the_births_and_data_and_its_commands_are_carried_out() {
    let broker = Mosquitto::start().await;
    let sim = Simulator::new();
    sim.set_registers(1, Table::Input, 0, &[0x4366, 0x8000]); // 230.5
    sim.set_registers(1, Table::Input, 2, &[(-35i16).cast_unsigned(), 1234]);
    sim.set_registers(1, Table::Input, 4, &[0xFFFF, 0xFFFE]); // -2
    sim.set_registers(1, Table::Input, 6, &[0, 0, 0x0001, 0x86A0]); // 100000
    sim.set_bits(1, Table::Discrete, 0, &[true]);
    sim.set_registers(1, Table::Holding, 20, &[0x464D, 0x5130, 0x3034, 0x3200]); // "FMQ0042"
    sim.set_registers(1, Table::Holding, 0, &[500]);
    let (addr, server) = tcp_simulator(&sim).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fieldmq.toml");
    std::fs::write(&path, config(addr, broker.port, &dir.path().join("data"))).expect("config");

    let mut host = PyHost::start(broker.port).await;
    let gw = Gateway::run(&path, dir.path(), "gw");

    let nbirth = host.next("NBIRTH").await;
    assert_eq!(nbirth["seq"], 0);
    assert_eq!(metric(&nbirth, "bdSeq")["datatype"], "INT64");
    assert_eq!(metric(&nbirth, "Node Control/Rebirth")["value"], false);

    let dbirth = host.next("DBIRTH").await;
    assert_eq!(dbirth["topic"], "spBv1.0/interop/DBIRTH/gw/meter");
    assert_eq!(dbirth["seq"], 1);
    let expected = [
        ("voltage/L1", "FLOAT", json!(230.5)),
        ("temperature", "DOUBLE", json!(-3.5)),
        ("level", "INT16", json!(1234)),
        ("delta", "INT32", json!(-2)),
        ("energy", "UINT64", json!(100_000)),
        ("running", "BOOLEAN", json!(true)),
        ("serial", "STRING", json!("FMQ0042")),
        ("setpoint", "UINT16", json!(500)),
    ];
    for (name, datatype, value) in &expected {
        let m = metric(&dbirth, name);
        assert_eq!(&m["datatype"], datatype, "{name}: {m}");
        assert_eq!(&m["value"], value, "{name}: {m}");
        assert!(m["alias"].is_u64(), "{name} has an alias: {m}");
    }

    // DDATA refers by alias; pysparkplug resolves it through the birth.
    sim.set_registers(1, Table::Input, 4, &[0x0001, 0x0000]); // 65536
    // Samples read before the births may follow them as historical DDATA
    // (they waited in the store-and-forward queue): the live one is wanted.
    let ddata = host
        .next_where("live DDATA with delta", |v| {
            v["type"] == "DDATA"
                && v["metrics"].as_array().is_some_and(|ms| {
                    ms.iter()
                        .any(|m| m["name"] == "delta" && m["is_historical"] == false)
                })
        })
        .await;
    assert_eq!(metric(&ddata, "delta")["value"], 65536);

    // A DCMD encoded by pysparkplug: written, read back, reported.
    host.send(json!({
        "topic": "spBv1.0/interop/DCMD/gw/meter",
        "type": "DCMD",
        "metrics": [{"name": "setpoint", "datatype": "UINT16", "value": 750}],
    }))
    .await;
    let ddata = host
        .next_where("DDATA with the setpoint", |v| {
            v["type"] == "DDATA"
                && v["metrics"]
                    .as_array()
                    .is_some_and(|ms| ms.iter().any(|m| m["name"] == "setpoint"))
        })
        .await;
    assert_eq!(metric(&ddata, "setpoint")["value"], 750);
    assert_eq!(sim.registers(1, Table::Holding, 0, 1), Some(vec![750]));

    // Its rebirth request: a new NBIRTH with seq 0 and the same bdSeq.
    host.send(json!({
        "topic": "spBv1.0/interop/NCMD/gw",
        "type": "NCMD",
        "metrics": [{"name": "Node Control/Rebirth", "datatype": "BOOLEAN", "value": true}],
    }))
    .await;
    let again = host.next("NBIRTH").await;
    assert_eq!(again["seq"], 0);
    assert_eq!(
        metric(&again, "bdSeq")["value"],
        metric(&nbirth, "bdSeq")["value"]
    );
    host.next("DBIRTH").await;

    gw.terminate().await;
    let ndeath = host.next("NDEATH").await;
    assert_eq!(
        metric(&ndeath, "bdSeq")["value"],
        metric(&nbirth, "bdSeq")["value"]
    );
    server.abort();
}

#[tokio::test]
async fn pysparkplug_reads_compressed_births_and_data_and_sends_compressed_commands() {
    let broker = Mosquitto::start().await;
    let sim = Simulator::new();
    sim.set_registers(
        1,
        Table::Input,
        0,
        &[0x4366, 0x8000, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    sim.set_bits(1, Table::Discrete, 0, &[false]);
    sim.set_registers(1, Table::Holding, 20, &[0x4142, 0, 0, 0]); // "AB"
    sim.set_registers(1, Table::Holding, 0, &[500]);
    let (addr, server) = tcp_simulator(&sim).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fieldmq.toml");
    let text = config(addr, broker.port, &dir.path().join("data")).replace(
        "[upstream]\n",
        "[upstream]\ncompression = \"gzip\"\nconnect_jitter = \"0s\"\n",
    );
    std::fs::write(&path, text).expect("config");
    let mut host = PyHost::start(broker.port).await;
    let gw = Gateway::run(&path, dir.path(), "gw");

    let nbirth = host.next("NBIRTH").await;
    assert_eq!(nbirth["compressed"], "GZIP", "{nbirth}");
    assert_eq!(nbirth["seq"], 0);
    let dbirth = host.next("DBIRTH").await;
    assert_eq!(dbirth["compressed"], "GZIP");
    assert_eq!(metric(&dbirth, "voltage/L1")["value"], json!(230.5));
    assert_eq!(metric(&dbirth, "serial")["value"], json!("AB"));

    sim.set_registers(1, Table::Input, 4, &[0x0001, 0x0000]); // 65536
    let ddata = host
        .next_where("live DDATA with delta", |v| {
            v["type"] == "DDATA"
                && v["metrics"].as_array().is_some_and(|ms| {
                    ms.iter()
                        .any(|m| m["name"] == "delta" && m["is_historical"] == false)
                })
        })
        .await;
    assert_eq!(ddata["compressed"], "GZIP");
    assert_eq!(metric(&ddata, "delta")["value"], 65536);

    // A DCMD compressed by the host (zlib, "DEFLATE"): carried out.
    host.send(json!({
        "topic": "spBv1.0/interop/DCMD/gw/meter",
        "type": "DCMD",
        "metrics": [{"name": "setpoint", "datatype": "UINT16", "value": 640}],
        "compress": "DEFLATE",
    }))
    .await;
    let ddata = host
        .next_where("DDATA with the setpoint", |v| {
            v["type"] == "DDATA"
                && v["metrics"]
                    .as_array()
                    .is_some_and(|ms| ms.iter().any(|m| m["name"] == "setpoint"))
        })
        .await;
    assert_eq!(metric(&ddata, "setpoint")["value"], 640);
    assert_eq!(sim.registers(1, Table::Holding, 0, 1), Some(vec![640]));

    gw.terminate().await;
    let ndeath = host.next("NDEATH").await;
    assert_eq!(
        ndeath["compressed"],
        Value::Null,
        "the death is never compressed"
    );
    server.abort();
}

#[tokio::test]
async fn pysparkplug_s_schema_reads_models_as_templates_and_a_dcmd_through_an_instance_is_carried_out()
 {
    let broker = Mosquitto::start().await;
    let sim = Simulator::new();
    for unit in [1, 2] {
        sim.set_registers(unit, Table::Input, 0, &[0x4366, 0x8000]); // 230.5
        sim.set_registers(unit, Table::Holding, 0, &[500]);
    }
    sim.set_registers(3, Table::Holding, 5, &[9]);
    let (addr, server) = tcp_simulator(&sim).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fieldmq.toml");
    let text = format!(
        r#"
[node]
group_id = "interop"
node_id = "gw"
data_dir = "{}"

[upstream]
url = "mqtt://127.0.0.1:{}"
templates = true
connect_jitter = "0s"

[broker]
enabled = false

[[model]]
name = "meter"

[[model.metric]]
name = "voltage"
register = 30001
type = "f32"
unit = "V"

[[model.metric]]
name = "setpoint"
register = 40001
type = "u16"
writable = true

[[bus]]
name = "sim"
kind = "tcp"
address = "{addr}"

[[device]]
name = "m1"
bus = "sim"
unit = 1
poll = "100ms"
model = "meter"

[[device]]
name = "m2"
bus = "sim"
unit = 2
poll = "100ms"
model = "meter"

[[device]]
name = "plc"
bus = "sim"
unit = 3
poll = "100ms"

[[device.metric]]
name = "level"
register = 40006
type = "u16"
"#,
        dir.path().join("data").display(),
        broker.port
    );
    std::fs::write(&path, text).expect("config");
    let mut host = PyHost::start(broker.port).await;
    let gw = Gateway::run(&path, dir.path(), "gw");

    let nbirth = host.next("NBIRTH").await;
    assert_eq!(nbirth["templates"], true, "{nbirth}");
    let definition = metric(&nbirth, "meter");
    assert_eq!(definition["datatype"], 19, "Template");
    assert_eq!(definition["alias"], Value::Null);
    let t = &definition["template"];
    assert_eq!(t["is_definition"], true);
    assert_eq!(t["template_ref"], Value::Null);
    assert!(t["version"].is_string());
    let members = t["metrics"].as_array().expect("members");
    let described: Vec<(&Value, &Value)> = members
        .iter()
        .map(|m| (&m["name"], &m["datatype"]))
        .collect();
    assert_eq!(
        described,
        [
            (&json!("voltage"), &json!(9)),
            (&json!("setpoint"), &json!(6))
        ]
    );
    assert_eq!(members[0]["unit"], "V");

    let mut instance_alias = None;
    for _ in 0..3 {
        let dbirth = host.next("DBIRTH").await;
        if dbirth["topic"] == "spBv1.0/interop/DBIRTH/gw/plc" {
            assert_eq!(
                metric(&dbirth, "level")["value"],
                9,
                "a device without a model: plain metrics"
            );
            continue;
        }
        let instance = metric(&dbirth, "meter");
        let t = &instance["template"];
        assert_eq!(
            (&t["is_definition"], &t["template_ref"]),
            (&json!(false), &json!("meter"))
        );
        assert_eq!(t["version"], definition["template"]["version"]);
        let values: Vec<(&Value, &Value)> = t["metrics"]
            .as_array()
            .expect("members")
            .iter()
            .map(|m| (&m["name"], &m["value"]))
            .collect();
        assert_eq!(
            values,
            [
                (&json!("voltage"), &json!(230.5)),
                (&json!("setpoint"), &json!(500))
            ]
        );
        if dbirth["topic"] == "spBv1.0/interop/DBIRTH/gw/m1" {
            instance_alias = instance["alias"].as_u64();
        }
    }
    let instance_alias = instance_alias.expect("m1's instance has an alias");

    // A member that changes: DDATA carries the instance by alias with only that member.
    sim.set_registers(1, Table::Input, 0, &[0x4370, 0x0000]); // 240.0
    let ddata = host
        .next_where("m1's DDATA with the voltage", |v| {
            v["topic"] == "spBv1.0/interop/DDATA/gw/m1"
                && v["metrics"].as_array().is_some_and(|ms| {
                    ms.iter().any(|m| {
                        m["template"]["metrics"].as_array().is_some_and(|x| {
                            x.iter()
                                .any(|x| x["value"] == 240.0 && x["is_historical"] == false)
                        })
                    })
                })
        })
        .await;
    let instance = &ddata["metrics"][0];
    assert_eq!(instance["alias"], instance_alias);
    assert_eq!(instance["name"], "meter", "resolved through the DBIRTH");
    let members = instance["template"]["metrics"].as_array().expect("members");
    assert_eq!(members.len(), 1, "only what changed: {ddata}");
    assert_eq!(members[0]["name"], "voltage");

    // A DCMD through the instance, as Ignition writes a UDT member.
    host.send(json!({
        "topic": "spBv1.0/interop/DCMD/gw/m1",
        "instance": {
            "alias": instance_alias,
            "template_ref": "meter",
            "members": [{"name": "setpoint", "datatype": "UINT16", "value": 640}],
        },
    }))
    .await;
    host.next_where("m1's DDATA with the setpoint", |v| {
        v["topic"] == "spBv1.0/interop/DDATA/gw/m1"
            && v["metrics"].as_array().is_some_and(|ms| {
                ms.iter().any(|m| {
                    m["template"]["metrics"].as_array().is_some_and(|x| {
                        x.iter()
                            .any(|x| x["name"] == "setpoint" && x["value"] == 640)
                    })
                })
            })
    })
    .await;
    assert_eq!(sim.registers(1, Table::Holding, 0, 1), Some(vec![640]));
    assert_eq!(
        sim.registers(2, Table::Holding, 0, 1),
        Some(vec![500]),
        "only m1"
    );
    gw.terminate().await;
    server.abort();
}
