//! The status page, as a technician sees it: the `fieldmq` binary polls the
//! in-process simulator and serves the page; headless Chromium loads it and
//! the test reads what the page shows, not the JSON behind it. Screenshots
//! (desktop and phone) are left in target/test-artefacts/.
//!
//! Also: `/api/status` itself, and logins for readers beyond this machine.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldmq::core::layout::Table;
use fieldmq::sim::Simulator;
use serde_json::{Value, json};
use support::browser::Browser;
use support::mqtt::{Mosquitto, Peer, free_port};
use support::{http_get, tcp_simulator};

/// What a device string may hold; shown as text, never run or parsed.
const HOSTILE: &str = "<img src=x onerror=\"document.body.dataset.pwned=1\">";

/// The binary, stopped when the test ends however it ends.
struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_gateway(dir: &Path, text: &str) -> Gateway {
    let path = dir.join("fieldmq.toml");
    std::fs::write(&path, text).expect("write config");
    let child = Command::new(env!("CARGO_BIN_EXE_fieldmq"))
        .args(["run", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start fieldmq");
    Gateway(child)
}

/// ASCII packed two characters a register, high byte first.
fn registers_of(text: &str, registers: usize) -> Vec<u16> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.resize(registers * 2, 0);
    bytes
        .chunks(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
        .collect()
}

fn site(dir: &Path, sim: SocketAddr, dead: SocketAddr, status: u16, broker: u16) -> String {
    format!(
        r#"
[node]
group_id = "plant"
node_id = "line3"
data_dir = "{dir}"

[broker]
listen = "127.0.0.1:{broker}"

[health]
listen = "127.0.0.1:{status}"

[[bus]]
name = "line"
kind = "tcp"
address = "{sim}"
timeout = "300ms"

[[bus]]
name = "cabinet"
kind = "tcp"
address = "{dead}"
timeout = "200ms"

[[device]]
name = "tank"
bus = "line"
unit = 1
poll = "200ms"

[[device.metric]]
name = "level"
table = "holding"
address = 0
type = "u16"
unit = "mm"

[[device.metric]]
name = "label"
table = "holding"
address = 10
type = "string"
length = 32

[[device]]
name = "chiller"
bus = "cabinet"
unit = 2
poll = "200ms"
offline_after = 1

[[device.metric]]
name = "supply"
table = "input"
address = 0
type = "u16"
"#,
        dir = dir.display()
    )
}

/// What the page shows of every device card: name, state badge, error
/// line, and each metric row's name and value.
const CARDS: &str = r#"JSON.stringify([...document.querySelectorAll('#devices .device')].map(d => ({
  name: d.querySelector('.name').textContent,
  state: d.querySelector('.state').textContent,
  error: d.querySelector('.error').textContent,
  metrics: Object.fromEntries([...d.querySelectorAll('tr.metric')].map(r => [r.cells[0].textContent, r.cells[1].textContent])),
})))"#;

fn cards(browser: &mut Browser) -> Vec<Value> {
    let text = browser.eval(CARDS);
    serde_json::from_str(text.as_str().unwrap_or("[]")).expect("cards as JSON")
}

fn card<'a>(cards: &'a [Value], name: &str) -> &'a Value {
    cards
        .iter()
        .find(|c| c["name"] == json!(name))
        .unwrap_or_else(|| panic!("no card for {name} in {cards:?}"))
}

fn artefact(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-artefacts")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_shows_devices_live_values_and_an_offline_device() {
    let sim = Simulator::new();
    sim.set_registers(1, Table::Holding, 0, &[1200]);
    sim.set_registers(1, Table::Holding, 10, &registers_of(HOSTILE, 32));
    let (addr, _server) = tcp_simulator(&sim).await;
    // A port nothing listens on: the cabinet's device cannot be reached.
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dir = tempfile::tempdir().expect("tempdir");
    let status = free_port();
    let _gateway = start_gateway(
        dir.path(),
        &site(dir.path(), addr, dead, status, free_port()),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", status)).is_err() {
        assert!(Instant::now() < deadline, "the status page never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let url = format!("http://127.0.0.1:{status}/");
    let sim_for_browser = sim.clone();
    tokio::task::spawn_blocking(move || {
        let mut browser = Browser::launch();
        browser.open(&url);
        browser.viewport(1100, 900, false);
        browser.wait_for(
            r#"document.querySelector('[data-device="tank"]')?.dataset.state === 'online'
               && document.querySelector('[data-device="chiller"]')?.dataset.state === 'offline'"#,
            Duration::from_secs(15),
            "tank online and chiller offline on the page",
        );
        let shown = cards(&mut browser);
        let tank = card(&shown, "tank");
        assert_eq!(tank["state"], json!("online"));
        assert_eq!(tank["metrics"]["level"], json!("1200"), "{tank}");
        assert_eq!(
            tank["metrics"]["label"],
            json!(HOSTILE),
            "a device's string is shown as the text it is"
        );
        let chiller = card(&shown, "chiller");
        assert_eq!(chiller["state"], json!("offline"), "{chiller}");
        let error = chiller["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with("Offline: ") && error.contains("link"),
            "the offline device says why: {error}"
        );
        assert_eq!(
            browser.eval("document.body.dataset.pwned === undefined && !document.querySelector('#devices img')"),
            json!(true),
            "markup in a device string never becomes an element"
        );

        // The page updates itself: no reload, the new value appears.
        let loads = browser.eval("performance.getEntriesByType('navigation').length");
        sim_for_browser.set_registers(1, Table::Holding, 0, &[1234]);
        browser.wait_for(
            r#"document.querySelector('[data-device="tank"] tr[data-metric="level"] td.value')?.textContent === '1234'"#,
            Duration::from_secs(5),
            "the new level on the open page",
        );
        assert_eq!(
            browser.eval("performance.getEntriesByType('navigation').length"),
            loads,
            "updated in place, not reloaded"
        );
        assert_eq!(browser.eval("document.getElementById('live').textContent"), json!("live"));
        browser.screenshot(&artefact("status-page.png"));

        // A closed card is not fed (the page asks only for what it shows);
        // opening it brings its values at once.
        let level = r#"document.querySelector('[data-device="tank"] tr[data-metric="level"] td.value').textContent"#;
        let summary = r#"document.querySelector('[data-device="tank"] summary').click(); true"#;
        browser.eval(summary);
        sim_for_browser.set_registers(1, Table::Holding, 0, &[1300]);
        std::thread::sleep(Duration::from_millis(2500));
        assert_eq!(browser.eval(level), json!("1234"), "a closed card was fed");
        browser.eval(summary);
        browser.wait_for(
            &format!("{level} === '1300'"),
            Duration::from_secs(2),
            "the reopened card's value",
        );

        // A phone at the panel: everything fits the width, nothing scrolls sideways.
        browser.viewport(390, 844, true);
        browser.wait_for(
            "document.documentElement.scrollWidth <= 390",
            Duration::from_secs(5),
            "the page fits a 390 px wide screen",
        );
        browser.screenshot(&artefact("status-page-phone.png"));
    })
    .await
    .expect("browser session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_status_is_the_documented_shape() {
    let sim = Simulator::new();
    sim.set_registers(1, Table::Holding, 0, &[42]);
    sim.set_registers(1, Table::Holding, 10, &registers_of("pump A", 32));
    let (addr, _server) = tcp_simulator(&sim).await;
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dir = tempfile::tempdir().expect("tempdir");
    let (status, broker) = (free_port(), free_port());
    let _gateway = start_gateway(dir.path(), &site(dir.path(), addr, dead, status, broker));
    let deadline = Instant::now() + Duration::from_secs(15);
    let document = loop {
        if std::net::TcpStream::connect(("127.0.0.1", status)).is_ok() {
            let (code, body) = http_get(status, "/api/status").await;
            assert_eq!(code, 200, "{body}");
            let document: Value = serde_json::from_str(&body).expect("JSON");
            let states: Vec<_> = document["devices"]
                .as_array()
                .map(|d| d.iter().map(|d| d["state"].clone()).collect())
                .unwrap_or_default();
            if states == [json!("online"), json!("offline")] {
                break document;
            }
        }
        assert!(Instant::now() < deadline, "devices never settled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(document["node"]["group_id"], json!("plant"));
    assert_eq!(document["node"]["node_id"], json!("line3"));
    assert_eq!(document["node"]["profile"], json!("none"));
    assert_eq!(document["uplink"], Value::Null, "no [upstream]");
    assert_eq!(document["queue"], Value::Null);
    assert_eq!(
        document["broker"]["listen"],
        json!(format!("127.0.0.1:{broker}"))
    );
    let tank = &document["devices"][0];
    assert_eq!(tank["name"], json!("tank"));
    assert_eq!(tank["bus"], json!("line"));
    assert_eq!(tank["unit"], json!(1));
    assert_eq!(tank["metrics"][0]["name"], json!("level"));
    assert_eq!(tank["metrics"][0]["value"], json!(42));
    assert_eq!(tank["metrics"][0]["unit"], json!("mm"));
    assert_eq!(tank["metrics"][0]["quality"], json!("good"));
    assert_eq!(tank["metrics"][1]["value"], json!("pump A"));
    assert_eq!(tank["cycle"]["period_ms"], json!(200.0));
    assert!(tank["requests"].as_u64().unwrap_or(0) > 0, "{tank}");
    assert_eq!(tank["failed_requests"], json!(0));
    let chiller = &document["devices"][1];
    assert_eq!(chiller["last_error"]["kind"], json!("link"), "{chiller}");
    assert_eq!(chiller["metrics"][0]["quality"], json!("bad"));
    assert_eq!(chiller["metrics"][0]["value"], Value::Null);
    assert!(
        chiller["metrics"][0]["fault"]
            .as_str()
            .is_some_and(|f| f.contains("link")),
        "{chiller}"
    );
    assert_eq!(document["buses"][0]["state"], json!("ok"));
    assert_eq!(document["buses"][1]["state"], json!("down"));
    // Nothing here takes a write, whatever the method.
    let (code, _) = http_get(status, "/api/status?write=1").await;
    assert_eq!(code, 200, "a query string changes nothing");
}

/// `/api/status` once the `check` holds, or a panic naming `what` after 15 s.
async fn status_until(port: u16, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let (code, body) = http_get(port, "/api/status").await;
            if code == 200 {
                last = serde_json::from_str(&body).expect("JSON");
                if check(&last) {
                    return last;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within 15 s; last /api/status: {last}");
}

/// The primary host `scada` says it is online, retained, as hosts do.
async fn host_online(host: &Peer, timestamp: u64) {
    let state = format!(r#"{{"online":true,"timestamp":{timestamp}}}"#);
    host.publish("spBv1.0/STATE/scada", state.into_bytes(), true)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_uplink_born_for_its_primary_host_and_the_queue_during_an_outage() {
    let sim = Simulator::new();
    sim.set_registers(1, Table::Holding, 0, &[1]);
    let (addr, _server) = tcp_simulator(&sim).await;
    let mosquitto = Mosquitto::start().await;
    let host = Peer::connect(mosquitto.port, "scada", &["spBv1.0/#"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let status = free_port();
    let text = format!(
        r#"
[node]
group_id = "plant"
node_id = "line3"
data_dir = "{dir}"

[upstream]
url = "{url}"
profile = "sparkplug"
primary_host = "scada"
connect_jitter = "0s"
max_backoff = "1s"

[broker]
enabled = false

[health]
listen = "127.0.0.1:{status}"

[[bus]]
name = "line"
kind = "tcp"
address = "{addr}"

[[device]]
name = "tank"
bus = "line"
unit = 1
poll = "100ms"

[[device.metric]]
name = "level"
table = "holding"
address = 0
type = "u16"
"#,
        dir = dir.path().display(),
        url = mosquitto.url(),
    );
    let _gateway = start_gateway(dir.path(), &text);
    let waiting = status_until(status, "connected, waiting for the host", |s| {
        s["uplink"]["connected"] == json!(true)
    })
    .await;
    assert_eq!(waiting["node"]["profile"], json!("sparkplug"));
    assert_eq!(
        waiting["uplink"]["born"],
        json!(false),
        "no births before the host"
    );
    assert_eq!(
        waiting["uplink"]["primary_host"],
        json!({"id": "scada", "online": false})
    );
    assert_eq!(waiting["uplink"]["bd_seq"], json!(0));
    assert_eq!(
        waiting["uplink"]["server"],
        json!(mosquitto.url()),
        "the server as configured"
    );
    host_online(&host, 1000).await;
    let born = status_until(status, "born for the host", |s| {
        s["uplink"]["born"] == json!(true)
    })
    .await;
    assert_eq!(born["uplink"]["primary_host"]["online"], json!(true));

    // The server goes away: the page sees the uplink down and the backlog grow.
    let port = mosquitto.port;
    mosquitto.stop().await;
    let moving = sim.clone();
    let rising = tokio::spawn(async move {
        for level in 2..u16::MAX {
            moving.set_registers(1, Table::Holding, 0, &[level]);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let outage = status_until(status, "a backlog while the server is away", |s| {
        s["uplink"]["connected"] == json!(false) && s["queue"]["backlog"].as_u64().unwrap_or(0) >= 5
    })
    .await;
    assert_eq!(outage["queue"]["usable"], json!(true));
    rising.abort();
    // A new server, without the host's retained STATE: connected, not born.
    let _back = Mosquitto::start_on(port).await;
    let unborn = status_until(status, "connected to the new server", |s| {
        s["uplink"]["connected"] == json!(true)
    })
    .await;
    assert_eq!(unborn["uplink"]["born"], json!(false));
    assert_eq!(
        unborn["uplink"]["bd_seq"],
        json!(1),
        "a new session, a new bdSeq"
    );
    // The host comes online there: births, and the backlog drains.
    let host = Peer::connect(port, "scada", &["spBv1.0/#"]).await;
    host_online(&host, 2000).await;
    let drained = status_until(status, "the backlog drained", |s| {
        s["uplink"]["born"] == json!(true) && s["queue"]["backlog"] == json!(0)
    })
    .await;
    assert_eq!(drained["queue"]["dropped"], json!(0));
}

/// A probe as a gateway listening beyond loopback serves it, with the
/// local broker's user table behind its logins.
fn guarded_probe() -> fieldmq::ops::health::Probe {
    use fieldmq::config::{BrokerUser, LocalBrokerSettings, Secret};
    use fieldmq::sink::local::broker::http_login::HttpLogin;
    let settings = LocalBrokerSettings {
        users: vec![BrokerUser {
            name: "tech".into(),
            secret: Secret::Plain("panel-42".into()),
            publish: Vec::new(),
            subscribe: Vec::new(),
        }],
        ..LocalBrokerSettings::default()
    };
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    fieldmq::ops::health::Probe::new(Arc::default(), Arc::default(), None, recorder.handle())
        .with_access(fieldmq::ops::health::Access::Login(Arc::new(
            HttpLogin::standalone(&settings),
        )))
}

/// One request from `peer` over a real HTTP/1 connection; the raw answer.
async fn request_from(peer: IpAddr, authorization: Option<&str>) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (ours, mut theirs) = tokio::io::duplex(1 << 16);
    let served = tokio::spawn(fieldmq::ops::health::serve_connection(
        guarded_probe(),
        ours,
        Some(peer),
        tokio_util::sync::CancellationToken::new(),
    ));
    let header = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    let request = format!("GET /healthz HTTP/1.1\r\nHost: gw\r\n{header}Connection: close\r\n\r\n");
    theirs.write_all(request.as_bytes()).await.expect("send");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), theirs.read_to_string(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    served.abort();
    answer
}

#[tokio::test]
async fn readers_beyond_this_machine_log_in_as_broker_users() {
    let remote = IpAddr::from([192, 0, 2, 10]);
    let basic = |user: &str, password: &str| {
        let encoded = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{user}:{password}"),
        );
        format!("Basic {encoded}")
    };
    let anonymous = request_from(remote, None).await;
    assert!(anonymous.starts_with("HTTP/1.1 401"), "{anonymous}");
    assert!(
        anonymous
            .to_ascii_lowercase()
            .contains("www-authenticate: basic realm=\"fieldmq\""),
        "{anonymous}"
    );
    let wrong = request_from(remote, Some(&basic("tech", "guess"))).await;
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    let right = request_from(remote, Some(&basic("tech", "panel-42"))).await;
    assert!(right.starts_with("HTTP/1.1 200"), "{right}");
    assert!(
        right
            .to_ascii_lowercase()
            .contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{right}"
    );
    for local in [
        IpAddr::from([127, 0, 0, 1]),
        // A client of 127.0.0.1 as a listener on [::] sees it.
        IpAddr::from(std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped()),
    ] {
        let answer = request_from(local, None).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "this machine reads without a login ({local}): {answer}"
        );
    }
}
