//! SIGHUP: a new device map for a running gateway. Pure: compares the
//! config in force with what the file says now.
//!
//! The device map (`[[bus]]` and `[[device]]`) is reloaded, and so are the
//! local broker's users and ACLs, which apply at once to connected clients.
//! The other sections shape connections that a reload must not drop (the
//! uplink and its Sparkplug session, the local broker's listeners, the
//! queue on disk), so changes to them are reported and wait for a restart.
//!
//! A task (a bus, or a GPIO device) whose settings and devices are all the
//! same carries on: its devices keep their connection, their schedules and,
//! for GPIO, the state of their outputs. Every other task is restarted with
//! the new map.

use std::sync::Arc;

use crate::config::{Acquisition, Config, Device};

/// What a reload changes.
#[derive(Debug, Clone)]
pub struct Reload {
    /// The config in force afterwards: the new device map, the old everything else.
    pub config: Arc<Config>,
    /// Per acquisition task of the new map ([`Config::acquisitions`]):
    /// whether it carries on untouched.
    pub kept_tasks: Vec<bool>,
    /// Devices only the new map has.
    pub added: Vec<String>,
    /// Devices only the old map had.
    pub removed: Vec<String>,
    /// Devices in both whose definition (or position) differs.
    pub changed: Vec<String>,
    /// Sections that differ but are not reloaded.
    pub ignored: Vec<&'static str>,
    /// The local broker's users or ACLs differ.
    pub access_changed: bool,
}

impl Reload {
    /// From the config in force to the file's `new` content.
    pub fn between(old: &Config, new: Config) -> Reload {
        let mut ignored = Vec::new();
        if old.node != new.node {
            ignored.push("[node]");
        }
        if old.upstream != new.upstream {
            ignored.push("[upstream]");
        }
        if old.buffer != new.buffer {
            ignored.push("[buffer]");
        }
        let broker = old.broker.with_access_of(&new.broker);
        if broker != new.broker {
            ignored.push("[broker]");
        }
        let access_changed = broker != old.broker;
        if old.health != new.health {
            ignored.push("[health]");
        }
        let config = Config {
            buses: new.buses,
            devices: new.devices,
            models: new.models,
            broker,
            ..old.clone()
        };
        let before = old.acquisitions();
        let kept_tasks = config
            .acquisitions()
            .iter()
            .enumerate()
            .map(|(task, owns)| before.get(task) == Some(owns) && same_share(old, &config, *owns))
            .collect();
        let named = |c: &Config, name: &str| c.devices.iter().position(|d| d.name == name);
        let added = config
            .devices
            .iter()
            .filter(|d| named(old, &d.name).is_none())
            .map(|d| d.name.clone())
            .collect();
        let removed = old
            .devices
            .iter()
            .filter(|d| named(&config, &d.name).is_none())
            .map(|d| d.name.clone())
            .collect();
        let unchanged = unchanged_devices(old, &config);
        let changed = config
            .devices
            .iter()
            .enumerate()
            .filter(|(id, d)| named(old, &d.name).is_some() && !unchanged[*id])
            .map(|(_, d)| d.name.clone())
            .collect();
        Reload {
            config: Arc::new(config),
            kept_tasks,
            added,
            removed,
            changed,
            ignored,
            access_changed,
        }
    }

    /// Whether the device map is the same as before.
    pub fn is_noop(&self) -> bool {
        !self.access_changed
            && self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.kept_tasks.iter().all(|k| *k)
    }
}

/// Per device of `new`: whether `old` has the very same device at the same
/// position, so that what is known about it (last values, birth) still holds.
pub fn unchanged_devices(old: &Config, new: &Config) -> Vec<bool> {
    (0..new.devices.len())
        .map(|id| old.devices.get(id) == new.devices.get(id))
        .collect()
}

/// Moves what is known about each device that `unchanged` (from
/// [`unchanged_devices`]) marks as the same in both maps from `old` into
/// `new`; the others keep what `new` starts with.
pub fn carry_over<T: Default>(old: &mut [T], new: &mut [T], unchanged: &[bool]) {
    for ((kept, from), to) in unchanged.iter().zip(old.iter_mut()).zip(new.iter_mut()) {
        if *kept {
            *to = std::mem::take(from);
        }
    }
}

/// Whether a task owns the same things, set up the same way, in both maps.
fn same_share(old: &Config, new: &Config, owns: Acquisition) -> bool {
    match owns {
        Acquisition::Bus(bus) => {
            fn on(c: &Config, bus: usize) -> impl Iterator<Item = (usize, &Device)> {
                c.devices
                    .iter()
                    .enumerate()
                    .filter(move |(_, d)| d.is_on_bus(bus))
            }
            old.buses.get(bus) == new.buses.get(bus) && on(old, bus).eq(on(new, bus))
        }
        Acquisition::Gpio(device) => old.devices.get(device) == new.devices.get(device),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[node]
group_id = "plant"
node_id = "gw1"

[[bus]]
name = "line1"
kind = "tcp"
address = "127.0.0.1:5020"

[[bus]]
name = "line2"
kind = "tcp"
address = "127.0.0.1:5021"

[[device]]
name = "meter"
bus = "line1"
unit = 1
[[device.metric]]
name = "voltage"
table = "input"
address = 0
type = "f32"

[[device]]
name = "pump"
bus = "line2"
unit = 2
[[device.metric]]
name = "speed"
table = "holding"
address = 0
type = "u16"
"#;

    fn config(text: &str) -> Config {
        match Config::from_toml(std::path::Path::new("test.toml"), text) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let reload = Reload::between(&config(BASE), config(BASE));
        assert!(reload.is_noop(), "{reload:?}");
        assert!(reload.ignored.is_empty());
    }

    #[test]
    fn a_changed_device_restarts_only_its_bus_and_other_sections_wait_for_a_restart() {
        let edited = format!(
            "{BASE}[[device.metric]]\nname = \"hours\"\ntable = \"holding\"\naddress = 1\ntype = \"u16\"\n"
        )
            .replace(r#"node_id = "gw1""#, "node_id = \"gw1\"\nstats_interval = \"17s\"");
        let reload = Reload::between(&config(BASE), config(&edited));
        assert_eq!(reload.kept_tasks, vec![true, false]);
        assert_eq!(reload.changed, vec!["pump".to_owned()]);
        assert!(reload.added.is_empty() && reload.removed.is_empty());
        assert_eq!(reload.ignored, vec!["[node]"]);
        assert_eq!(
            reload.config.node,
            config(BASE).node,
            "[node] stays as it was until a restart"
        );
        assert_eq!(reload.config.devices[1].metrics.len(), 2);
    }

    #[test]
    fn a_removed_device_shifts_the_ones_after_it() {
        let without_meter = BASE.replace(
            "[[device]]\nname = \"meter\"\nbus = \"line1\"\nunit = 1\n[[device.metric]]\nname = \"voltage\"\ntable = \"input\"\naddress = 0\ntype = \"f32\"\n",
            "",
        );
        let old = config(BASE);
        let reload = Reload::between(&old, config(&without_meter));
        assert_eq!(reload.removed, vec!["meter".to_owned()]);
        assert_eq!(
            reload.changed,
            vec!["pump".to_owned()],
            "pump moved to position 0: what was known about position 0 no longer holds"
        );
        assert_eq!(reload.kept_tasks, vec![false, false]);
        assert_eq!(unchanged_devices(&old, &reload.config), vec![false]);
    }
}
