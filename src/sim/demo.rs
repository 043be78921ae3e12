//! `fieldmq demo`: a simulated three-phase meter on a local Modbus TCP port
//! and a simulated GPIO panel, run by the real engine and published into the
//! embedded broker in both profiles, so the gateway can be watched working on
//! a laptop with no hardware and no config file.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::core::identity::Identity;
use crate::core::layout::Table;
use crate::sim::Simulator;

/// The demo meter's unit id.
const UNIT: u8 = 1;

/// How often the simulated meter's readings move.
const TICK: Duration = Duration::from_millis(500);

/// The demo's Sparkplug uplink logs in to the embedded broker as this user.
pub const UPLINK_USER: &str = "sparkplug";

/// The demo's configuration: the meter on `address` and a simulated GPIO
/// panel, published into the embedded broker on `broker` twice: as plain
/// JSON by the broker's own feed, and as Sparkplug B by the uplink, which
/// logs in to that same broker as [`UPLINK_USER`] with the password in
/// `data_dir/uplink.pass` (the caller writes it); the status page on `status`.
pub fn config_text(
    address: SocketAddr,
    broker: SocketAddr,
    status: SocketAddr,
    data_dir: &Path,
) -> String {
    let data_dir = data_dir.display();
    let mut text = format!(
        r#"
[node]
group_id = "demo"
node_id = "fieldmq-demo"
data_dir = "{data_dir}"
stats_interval = "10s"

[upstream]
url = "mqtt://{broker}"
profile = "sparkplug"
client_id = "fieldmq-demo-sparkplug"
username = "{UPLINK_USER}"
password_file = "{data_dir}/uplink.pass"
keep_alive = "10s"
max_backoff = "2s"
# One gateway, not a fleet: nothing to spread out.
connect_jitter = "0s"

[broker]
listen = "{broker}"
# Anyone on this machine may read everything, switch the relay and ask the
# demo node for a rebirth (so `fieldmq tail --rebirth` names its metrics from
# the first line), nothing else. A rebirth costs one set of births, which
# the node sends at most once a second however often it is asked; the same
# NCMD topic could also carry Next Server, which moves a node to the next of
# its servers, but the demo has one server, so the worst it does is a
# reconnect.
anonymous_publish = ["demo/fieldmq-demo/panel/relay/set", "spBv1.0/demo/NCMD/fieldmq-demo"]

[[broker.user]]
name = "{UPLINK_USER}"
password_file = "{data_dir}/uplink.pass"
publish = ["spBv1.0/#"]
subscribe = ["spBv1.0/#"]

[health]
listen = "{status}"

[[bus]]
name = "sim"
kind = "tcp"
address = "{address}"
timeout = "500ms"

[[device]]
name = "meter"
bus = "sim"
unit = {UNIT}
poll = "1s"
"#
    );
    let floats = [
        ("voltage/L1", 0, "V", 0.2),
        ("voltage/L2", 2, "V", 0.2),
        ("voltage/L3", 4, "V", 0.2),
        ("current/L1", 6, "A", 0.05),
        ("power/total", 52, "W", 5.0),
        ("frequency", 70, "Hz", 0.01),
        ("energy/import", 72, "kWh", 0.0),
    ];
    for (name, address, unit, deadband) in floats {
        text.push_str(&format!(
            "\n[[device.metric]]\nname = \"{name}\"\ntable = \"input\"\naddress = {address}\ntype = \"f32\"\nunit = \"{unit}\"\ndeadband = {deadband}\n"
        ));
    }
    text.push_str("\n[[device.metric]]\nname = \"status/running\"\ntable = \"holding\"\naddress = 0\ntype = \"bool\"\nbit = 0\n");
    text.push_str(PANEL);
    text
}

/// A simulated GPIO panel: a door contact that opens and closes, a water
/// meter's pulse output, and a relay that commands may switch.
const PANEL: &str = r#"
[[device]]
name = "panel"
gpio = "sim"
poll = "2s"

[[device.metric]]
name = "door_closed"
pin = 17
pull = "up"
active_low = true
sim_toggle = "7s"

[[device.metric]]
name = "water"
pin = 22
mode = "counter"
debounce = "5ms"
unit = "L"
sim_toggle = "300ms"

[[device.metric]]
name = "relay"
pin = 23
direction = "output"
writable = true
safe = false
"#;

/// Moves the meter's readings until `shutdown`: voltages wander around
/// 230 V, the load follows a slow cycle, energy accumulates, and the running
/// bit flips every 10 s. The meter answers identification (function 43/14),
/// so births and `fieldmq scan` show what it is.
pub async fn animate(sim: Simulator, shutdown: CancellationToken) {
    sim.set_identity(
        UNIT,
        Identity {
            vendor: "fieldmq".into(),
            product_code: "demo-meter".into(),
            revision: env!("CARGO_PKG_VERSION").into(),
        },
    );
    let mut energy_kwh = 1234.5f64;
    let mut step = 0u64;
    let mut interval = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        step += 1;
        let phase = step as f64 / 40.0;
        let current = 12.0 + 6.0 * phase.sin() + fastrand::f64();
        let volts =
            [0.0, 1.0, 2.0].map(|k| 230.0 + 2.0 * (phase + k).cos() + fastrand::f64() - 0.5);
        let power = volts.iter().sum::<f64>() * current;
        energy_kwh += power * TICK.as_secs_f64() / 3_600_000.0;
        for (address, value) in [
            (0, volts[0]),
            (2, volts[1]),
            (4, volts[2]),
            (6, current),
            (52, power),
            (70, 50.0 + 0.05 * fastrand::f64()),
            (72, energy_kwh),
        ] {
            sim.set_registers(UNIT, Table::Input, address, &float_registers(value));
        }
        let running = (step / 20).is_multiple_of(2);
        sim.set_registers(UNIT, Table::Holding, 0, &[u16::from(running)]);
    }
}

/// A float as two big-endian registers (high word first).
fn float_registers(value: f64) -> [u16; 2] {
    let bits = (value as f32).to_bits();
    [(bits >> 16) as u16, (bits & 0xFFFF) as u16]
}
