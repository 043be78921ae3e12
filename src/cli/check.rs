//! `fieldmq check`: what a valid config will do, bus by bus and request by request.

use fieldmq::acquire::modbus::plan::ReadPlan;
use fieldmq::config::{Attachment, Config, GpioBackend, Profile, Transport};

use crate::cli::{ms, say};

/// Prints the node, the uplink, the local broker and each bus's devices with their read plans.
pub fn print_check(config: &Config) {
    let metrics: usize = config.devices.iter().map(|d| d.metrics.len()).sum();
    say!("{}: valid", config.path.display());
    say!("node {}/{}", config.node.group_id, config.node.node_id);
    say!(
        "{} buses, {} devices, {} metrics",
        config.buses.len(),
        config.devices.len(),
        metrics
    );
    match &config.upstream {
        Some(up) => {
            let servers: Vec<&str> = up.servers.iter().map(|s| s.url.as_str()).collect();
            let profile = match up.profile {
                Profile::Sparkplug => "Sparkplug B",
                Profile::Plain => "plain JSON",
            };
            say!(
                "upstream: {profile} to {} as client {}{}",
                servers.join(", "),
                up.client_id,
                up.primary_host
                    .as_ref()
                    .map_or_else(String::new, |h| format!(", primary host {h}"))
            );
            say!("data dir: {}", config.node.data_dir.display());
        }
        None => say!("upstream: none (values are only logged)"),
    }
    let broker = &config.broker;
    if broker.enabled {
        let profile = match broker.profile {
            Profile::Sparkplug => "Sparkplug B",
            Profile::Plain => "plain JSON",
        };
        say!(
            "local broker: {profile} on {}, {} users, anonymous {}",
            broker.listen,
            broker.users.len(),
            if broker.allow_anonymous {
                "allowed"
            } else {
                "refused"
            }
        );
        if let Some(tls) = &broker.tls {
            let clients = if tls.client_ca.is_some() {
                "client certificates required"
            } else {
                "no client certificates"
            };
            say!("local broker TLS: on {}, {clients}", tls.listen);
        }
    } else {
        say!("local broker: off");
    }
    if config.upstream.is_some() {
        say!(
            "buffer: up to {} MiB on disk, fsync every {}, {} when full",
            config.buffer.max_size / (1024 * 1024),
            humantime::format_duration(config.buffer.sync),
            match config.buffer.overflow {
                fieldmq::config::Overflow::DropOldest => "drop_oldest",
                fieldmq::config::Overflow::DropNewest => "drop_newest",
            }
        );
    }
    match config.health {
        Some(health) => say!(
            "status page: http://{}/ ({})",
            health.listen,
            if health.listen.ip().is_loopback() {
                "this machine only"
            } else if health.needs_login() {
                "other machines log in as local broker users"
            } else {
                "anyone who reaches it, allow_remote = true"
            }
        ),
        None => say!("status page: off (no [health])"),
    }
    for (index, bus) in config.buses.iter().enumerate() {
        let link = &bus.transport;
        say!();
        say!(
            "bus {} ({link}, timeout {})",
            bus.name,
            humantime::format_duration(bus.timeout)
        );
        for (device, modbus) in config
            .devices
            .iter()
            .filter_map(|d| Some((d, d.modbus().filter(|m| m.bus == index)?)))
        {
            let model = device.model.as_ref().map_or_else(String::new, |m| {
                format!(" (model {m}{})", template_note(config, device))
            });
            let model = if modbus.identify {
                model
            } else {
                format!("{model}, not asked to identify")
            };
            let periods = device.periods();
            for (n, period) in periods.iter().enumerate() {
                let plan = ReadPlan::for_period(device, *period);
                let metrics = device
                    .metrics
                    .iter()
                    .filter(|m| device.period_of(m) == *period)
                    .count();
                let every = humantime::format_duration(*period);
                if n == 0 {
                    say!(
                        "  device {} unit {}{model} every {every}: {metrics} metrics in {} requests",
                        device.name,
                        modbus.unit,
                        plan.requests().len()
                    );
                } else {
                    say!(
                        "   and every {every}: {metrics} metrics in {} requests",
                        plan.requests().len()
                    );
                }
                for request in plan.requests() {
                    let names: Vec<&str> = request
                        .members
                        .iter()
                        .filter_map(|m| device.metrics.get(m.metric).map(|m| m.name.as_str()))
                        .collect();
                    // The wire address, and the register number manuals print.
                    say!(
                        "    FC{:02} {:<8} start {:<5} ({:<6}) count {:<4} -> {}",
                        request.table.read_function(),
                        request.table.name(),
                        request.start,
                        request.table.modicon(request.start),
                        request.count,
                        names.join(", ")
                    );
                }
            }
            if let Transport::Rtu(line) = &bus.transport {
                print_frame_timing(bus, line, device);
            }
        }
    }
    print_gpio(config);
}

/// On a serial line: the device's longest answer and its time on the wire
/// (the timeout counts to an answer's first byte, the rest gets its wire
/// time), and a warning when the timeout is shorter than an answer can
/// take to start at all.
fn print_frame_timing(
    bus: &fieldmq::config::Bus,
    line: &fieldmq::config::SerialLine,
    device: &fieldmq::config::Device,
) {
    let longest = device
        .periods()
        .iter()
        .flat_map(|p| ReadPlan::for_period(device, *p).requests().to_vec())
        .map(|r| {
            let data = if r.table.is_bits() {
                usize::from(r.count).div_ceil(8)
            } else {
                2 * usize::from(r.count)
            };
            5 + data
        })
        .max()
        .unwrap_or(0);
    say!(
        "    longest answer {longest} bytes: {} on the wire after its first byte arrives",
        ms(line.wire_time(longest))
    );
    // An 8-byte request must leave, and the line be silent, before any answer starts.
    let earliest = line.wire_time(8) + line.silent_interval() + line.wire_time(1);
    if bus.timeout <= earliest {
        say!(
            "    warning: timeout {} is shorter than an answer needs to start at {} baud ({}): every request will time out",
            humantime::format_duration(bus.timeout),
            line.baud,
            ms(earliest)
        );
    }
}

/// With `[upstream] templates`: whether the device is published as an
/// instance of its model's Template, or why not.
fn template_note(config: &Config, device: &fieldmq::config::Device) -> String {
    if !config.upstream.as_ref().is_some_and(|u| u.templates) {
        return String::new();
    }
    let Some(model) = config
        .models
        .iter()
        .find(|m| Some(&m.name) == device.model.as_ref())
    else {
        return String::new();
    };
    match fieldmq::profile::sparkplug::template::fits(&model.metrics, &device.metrics) {
        Ok(()) => ", a Template instance".to_owned(),
        Err(why) => format!(", plain metrics, not a Template instance: {why}"),
    }
}

/// GPIO devices, each with its pins.
fn print_gpio(config: &Config) {
    for device in &config.devices {
        let Attachment::Gpio(chip) = &device.attachment else {
            continue;
        };
        let lines = match chip.backend {
            GpioBackend::Cdev => format!("gpio {}", chip.chip.display()),
            GpioBackend::Rppal => "gpio rppal".to_owned(),
            GpioBackend::Sim => "gpio simulated".to_owned(),
        };
        say!();
        say!("gpio device {} ({lines})", device.name);
        print_pins(device);
    }
}

/// A GPIO device's pins, one line each, as `check` shows them.
fn print_pins(device: &fieldmq::config::Device) {
    use fieldmq::config::{PinRole, Pull};
    say!(
        "  device {}: {} metrics, counters reported every {}",
        device.name,
        device.metrics.len(),
        humantime::format_duration(device.poll)
    );
    for metric in device.metrics.iter() {
        let Some(pin) = metric.pin() else { continue };
        let input = |kind: &str, line: &fieldmq::config::InputLine| {
            let pull = match line.pull {
                Pull::Up => "pull up",
                Pull::Down => "pull down",
                Pull::None => "no pull",
            };
            let sim = line.sim_toggle.map_or_else(String::new, |t| {
                format!(", simulated toggle every {}", humantime::format_duration(t))
            });
            format!(
                "input {kind}, {pull}, debounce {}{sim}",
                humantime::format_duration(line.debounce)
            )
        };
        let what = match &pin.role {
            PinRole::Level(line) => input("level", line),
            PinRole::Counter(line) => input("counter", line),
            PinRole::Rate => "pulses per second of the counter".to_owned(),
            PinRole::Output {
                initial,
                safe,
                safe_after,
            } => {
                let on_off = |b: bool| if b { "on" } else { "off" };
                let safe = match (safe, safe_after) {
                    (Some(s), Some(after)) => format!(
                        ", safe {} at shutdown and after {} without uplink",
                        on_off(*s),
                        humantime::format_duration(*after)
                    ),
                    (Some(s), None) => format!(", safe {} at shutdown", on_off(*s)),
                    (None, _) => String::new(),
                };
                format!("output, initial {}{safe}", on_off(*initial))
            }
        };
        let low = match pin.role {
            PinRole::Rate => "",
            _ if pin.active_low => ", active low",
            _ => "",
        };
        say!("    pin {:<3} {what}{low} -> {}", pin.pin, metric.name);
    }
}
