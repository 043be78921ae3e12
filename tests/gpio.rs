//! GPIO devices with the `sim` driver, run by the fieldmq binary and watched
//! through its embedded broker: debouncing, event-driven publishing, pulse
//! counters that survive a restart, outputs' initial and safe states, and
//! commands to pins.

mod support;

use std::path::Path;
use std::time::Duration;

use fieldmq::profile::sparkplug::proto::Payload;
use fieldmq::profile::sparkplug::proto::payload::{Metric, metric};
use serde_json::Value;
use support::http_get;
use support::mqtt::{Gateway, Mosquitto, Peer, Received, free_port, sparkplug_command as command};

const SECOND: Duration = Duration::from_secs(1);

/// A gateway config with a simulated GPIO device `panel` made of `pins`.
fn config(dir: &Path, broker_port: u16, extra: &str, poll: &str, pins: &str) -> String {
    format!(
        r##"
[node]
group_id = "site"
node_id = "gw"
data_dir = "{data}"
stats_interval = "1s"

{extra}

[broker]
listen = "127.0.0.1:{broker_port}"
anonymous_publish = ["#"]
anonymous_subscribe = ["#"]

[[device]]
name = "panel"
gpio = "sim"
poll = "{poll}"
{pins}
"##,
        data = dir.join("data").display()
    )
}

/// Starts the binary on `text`.
fn start(dir: &Path, text: &str, name: &str) -> Gateway {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("config");
    Gateway::run(&path, dir, name)
}

/// A client of the embedded broker, once it accepts connections.
async fn peer(port: u16, filters: &[&str]) -> Peer {
    assert!(
        support::mqtt::wait_for_listener(port).await,
        "the gateway's broker listens on {port}"
    );
    Peer::connect(port, "test", filters).await
}

fn json(m: &Received) -> Value {
    serde_json::from_slice(&m.payload).unwrap_or_else(|e| panic!("{}: {e}", m.text()))
}

/// `(value, ts)` of the plain messages on `topic`.
fn values_on(messages: &[Received], topic: &str) -> Vec<(Value, u64)> {
    messages
        .iter()
        .filter(|m| m.topic == topic)
        .map(|m| {
            let v = json(m);
            (v["value"].clone(), v["ts"].as_u64().unwrap_or(0))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bouncing_contact_is_one_change_per_flip_published_when_it_happens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    // The simulated contact flips every 300 ms and bounces 4 times (1 ms
    // apart) after each flip; the device's poll is 5 s, so a change seen
    // within the period was published by the edge, not by a poll.
    let pins = r#"
[[device.metric]]
name = "door"
pin = 4
direction = "input"
pull = "up"
active_low = true
debounce = "20ms"
sim_toggle = "300ms"
"#;
    let text = config(dir.path(), port, "", "5s", pins);
    let gateway = start(dir.path(), &text, "gw");
    let mut local = peer(port, &["site/gw/panel/#"]).await;
    let got = local.collect_for(2300 * Duration::from_millis(1)).await;
    let door = values_on(&got, "site/gw/panel/door");
    let changes: Vec<&(Value, u64)> = door.iter().skip(1).collect();
    assert!(
        (5..=8).contains(&changes.len()),
        "about one change per 300 ms flip in 2.3 s, bounces filtered: {door:?}"
    );
    for pair in door.windows(2) {
        assert_ne!(pair[0].0, pair[1].0, "every message is a change: {door:?}");
    }
    for pair in changes.windows(2) {
        let gap = pair[1].1 - pair[0].1;
        assert!(
            (240..=360).contains(&gap),
            "changes follow the contact's 300 ms period, not a poll: {gap} ms in {door:?}"
        );
    }
    gateway.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulse_counter_reports_total_and_rate_and_keeps_its_total_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    // A flip every 50 ms is one pulse (active edge) every 100 ms: 10 pulses/s.
    let pins = r#"
[[device.metric]]
name = "water"
pin = 5
direction = "input"
mode = "counter"
pull = "down"
debounce = "5ms"
sim_toggle = "50ms"
unit = "pulse"
"#;
    let text = config(dir.path(), port, "", "500ms", pins);
    let gateway = start(dir.path(), &text, "gw");
    let mut local = peer(port, &["site/gw/panel/#"]).await;
    let got = local.collect_for(3 * SECOND).await;
    let totals = values_on(&got, "site/gw/panel/water");
    let rates = values_on(&got, "site/gw/panel/water/rate");
    let last_rate = rates.last().and_then(|(v, _)| v.as_f64()).unwrap_or(0.0);
    assert!(
        (8.0..=12.0).contains(&last_rate),
        "10 pulses/s, bounces not counted: {rates:?}"
    );
    let unit = got
        .iter()
        .find(|m| m.topic == "site/gw/panel/water/rate")
        .map(|m| json(m)["unit"].clone());
    assert_eq!(unit, Some(Value::from("pulse/s")));
    let reported = totals.last().and_then(|(v, _)| v.as_u64()).unwrap_or(0);
    assert!(reported >= 15, "pulses counted and reported: {totals:?}");
    gateway.terminate().await;
    drop(local);

    let saved: serde_json::Map<String, Value> = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("data/gpio/panel.json")).expect("saved totals"),
    )
    .expect("JSON totals");
    let saved = saved["water"].as_u64().expect("water total");
    assert!(
        saved >= reported,
        "saved at shutdown: {saved} >= {reported}"
    );

    let gateway = start(dir.path(), &text, "gw2");
    let mut local = peer(port, &["site/gw/panel/water"]).await;
    let first = local.next_on("site/gw/panel/water", 5 * SECOND).await;
    assert_eq!(
        json(&first)["value"].as_u64(),
        Some(saved),
        "counting goes on from the saved total"
    );
    let later = local.next_on("site/gw/panel/water", 5 * SECOND).await;
    assert!(json(&later)["value"].as_u64() > Some(saved));
    gateway.terminate().await;
}

fn named<'a>(payload: &'a Payload, name: &str) -> Option<&'a Metric> {
    payload
        .metrics
        .iter()
        .find(|m| m.name.as_deref() == Some(name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_start_initial_obey_commands_inputs_refuse_them_and_shutdown_goes_safe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let pins = r#"
[[device.metric]]
name = "door"
pin = 4
direction = "input"
pull = "down"

[[device.metric]]
name = "relay"
pin = 7
direction = "output"
writable = true
initial = true
safe = false
"#;
    let text = config(dir.path(), port, "", "1s", pins)
        .replace("[broker]\n", "[broker]\nprofile = \"sparkplug\"\n");
    let gateway = start(dir.path(), &text, "gw");
    let mut host = peer(port, &["spBv1.0/#"]).await;
    host.request_rebirth("site", "gw").await;
    let nbirth = host
        .next_on("spBv1.0/site/NBIRTH/gw", 5 * SECOND)
        .await
        .sparkplug();
    let rejected = named(&nbirth, "Statistics/Commands Rejected")
        .and_then(|m| m.alias)
        .expect("rejected counter alias");
    let dbirth = host
        .next_on("spBv1.0/site/DBIRTH/gw/panel", 5 * SECOND)
        .await
        .sparkplug();
    let relay = named(&dbirth, "relay").expect("relay in DBIRTH");
    assert_eq!(
        relay.value,
        Some(metric::Value::BooleanValue(true)),
        "initial = true"
    );
    let relay_alias = relay.alias.expect("alias");
    let door = named(&dbirth, "door").expect("door in DBIRTH");
    assert_eq!(door.value, Some(metric::Value::BooleanValue(false)));

    let ddata_relay = |on: bool| {
        move |m: &Received| {
            m.topic == "spBv1.0/site/DDATA/gw/panel"
                && m.sparkplug().metrics.iter().any(|x| {
                    x.alias == Some(relay_alias) && x.value == Some(metric::Value::BooleanValue(on))
                })
        }
    };
    let dcmd = "spBv1.0/site/DCMD/gw/panel";
    host.publish(
        dcmd,
        command("relay", metric::Value::BooleanValue(false)),
        false,
    )
    .await;
    host.next_where(5 * SECOND, "DDATA relay off", ddata_relay(false))
        .await;

    host.publish(
        dcmd,
        command("door", metric::Value::BooleanValue(true)),
        false,
    )
    .await;
    host.next_where(5 * SECOND, "NDATA counting the refused write", |m| {
        m.topic == "spBv1.0/site/NDATA/gw"
            && m.sparkplug()
                .metrics
                .iter()
                .any(|x| x.alias == Some(rejected) && x.value == Some(metric::Value::LongValue(1)))
    })
    .await;

    host.publish(
        dcmd,
        command("relay", metric::Value::BooleanValue(true)),
        false,
    )
    .await;
    host.next_where(5 * SECOND, "DDATA relay on", ddata_relay(true))
        .await;
    let door_alias = door.alias;
    assert!(gateway.terminate().await.success(), "clean exit");
    let after = host.collect_for(2 * SECOND).await;
    let safe_at = after.iter().position(ddata_relay(false));
    let death_at = after
        .iter()
        .position(|m| m.topic == "spBv1.0/site/NDEATH/gw");
    assert!(
        matches!((safe_at, death_at), (Some(s), Some(d)) if s < d),
        "the relay goes to its safe state, published before the NDEATH: {:?}",
        after.iter().map(|m| &m.topic).collect::<Vec<_>>()
    );
    assert!(
        !after
            .iter()
            .any(|m| m.topic == "spBv1.0/site/DDATA/gw/panel"
                && m.sparkplug().metrics.iter().any(|x| x.alias == door_alias)),
        "the refused write did not touch the input"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_goes_safe_once_the_uplink_has_been_gone_for_safe_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let uplink = Mosquitto::start().await;
    let upstream = format!(
        // Connect at once: until the first connect the uplink counts as gone.
        "[upstream]\nurl = \"{}\"\nprofile = \"plain\"\nkeep_alive = \"5s\"\nmax_backoff = \"1s\"\nconnect_jitter = \"0s\"",
        uplink.url()
    );
    let pins = r#"
[[device.metric]]
name = "pump"
pin = 3
direction = "output"
writable = true
initial = true
safe = false
safe_after = "1s"
"#;
    let text = config(dir.path(), port, &upstream, "1s", pins);
    let gateway = start(dir.path(), &text, "gw");
    let mut local = peer(port, &["site/gw/panel/pump"]).await;
    let first = local.next_on("site/gw/panel/pump", 5 * SECOND).await;
    assert_eq!(json(&first)["value"], Value::Bool(true));
    let calm = local.collect_for(2 * SECOND).await;
    assert!(
        calm.is_empty(),
        "no safe state while the uplink is up: {calm:?}"
    );

    uplink.stop().await;
    let stopped = tokio::time::Instant::now();
    let safe = local.next_on("site/gw/panel/pump", 5 * SECOND).await;
    assert_eq!(json(&safe)["value"], Value::Bool(false), "safe state");
    assert!(
        stopped.elapsed() >= Duration::from_millis(900),
        "not before safe_after: {:?}",
        stopped.elapsed()
    );
    assert!(
        gateway.log().contains("outputs to their safe state"),
        "{}",
        gateway.log()
    );
    gateway.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpio_chip_that_cannot_be_opened_takes_only_its_device_offline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let missing = dir.path().join("gpiochip9");
    let pins = format!(
        r#"
[[device.metric]]
name = "door"
pin = 4
direction = "input"
sim_toggle = "200ms"

[[device]]
name = "relays"
gpio = "cdev"
chip = "{}"

[[device.metric]]
name = "k1"
pin = 0
direction = "output"
"#,
        missing.display()
    );
    let health = free_port();
    let extra = format!("[health]\nlisten = \"127.0.0.1:{health}\"");
    let text = config(dir.path(), port, &extra, "1s", &pins);
    let gateway = start(dir.path(), &text, "gw");
    let mut local = peer(port, &["site/gw/+/state", "site/gw/panel/door"]).await;
    let offline = local.next_on("site/gw/relays/state", 5 * SECOND).await;
    assert_eq!(offline.text(), "OFFLINE");
    let got = local.collect_for(SECOND).await;
    assert!(
        values_on(&got, "site/gw/panel/door").len() >= 3,
        "the simulated panel goes on: {got:?}"
    );
    let (_, metrics) = http_get(health, "/metrics").await;
    for line in [
        r#"fieldmq_device_up{device="panel"} 1"#,
        r#"fieldmq_device_up{device="relays"} 0"#,
    ] {
        assert!(
            metrics.contains(line),
            "no {line:?} in /metrics:\n{metrics}"
        );
    }
    let log = gateway.log();
    assert!(
        log.contains("GPIO lines unavailable") && log.contains("gpiochip9"),
        "the log names the chip: {log}"
    );
    gateway.terminate().await;
}

#[test]
fn fieldmq_read_shows_a_gpio_device_s_inputs_and_saved_counter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pins = r#"
[[device.metric]]
name = "door"
pin = 4
direction = "input"
pull = "up"
active_low = true

[[device.metric]]
name = "water"
pin = 5
mode = "counter"
unit = "L"
"#;
    let path = dir.path().join("read.toml");
    std::fs::write(&path, config(dir.path(), free_port(), "", "1s", pins)).expect("config");
    std::fs::create_dir_all(dir.path().join("data/gpio")).expect("dir");
    std::fs::write(
        dir.path().join("data/gpio/panel.json"),
        r#"{"water": 4711}"#,
    )
    .expect("totals");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fieldmq"))
        .args(["read", "--json", "--device", "panel", "--config"])
        .arg(&path)
        .output()
        .expect("run fieldmq read");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let values: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(values, serde_json::json!({"door": false, "water": 4711}));
}
