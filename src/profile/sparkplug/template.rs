//! Device models as Sparkplug Templates (UDTs), with `[upstream] templates
//! = true`. Pure: it shapes birth and data metrics, nothing else.
//!
//! What hosts expect, from the Sparkplug 3.0 specification (payloads,
//! "Template") and Eclipse Tahu's examples:
//! - The NBIRTH carries one definition per model in use: a metric named as
//!   the model, datatype Template, no alias, whose value has
//!   `is_definition = true`, no `template_ref`, a `version`, and every member
//!   with name, datatype and `engUnit` (tck-id-payloads-template-definition-*).
//! - A DBIRTH carries the device's instance: a metric named as the model,
//!   with an alias, whose value has `is_definition = false`, `template_ref`
//!   = the definition's name and every member with its value (members have
//!   no aliases; tck-id-payloads-template-instance-members-birth).
//! - DDATA carries the instance metric by alias with only the members that
//!   changed, by name (tck-id-payloads-template-instance-members-data); the
//!   replay flags the instance and its members historical.
//! - DCMD may address a member through the instance (a Template metric by
//!   alias or name holding the member by name), or by the member's own name.
//!
//! Metrics of a device that its model does not have stay plain metrics
//! next to the instance. The instance takes the alias its first member
//! would have had as a plain metric, so aliases stay unique.

use crate::config::{Config, Metric as MetricDef};
use crate::core::value::{DeviceId, MetricId, Sample};
use crate::profile::sparkplug::payload::{
    Aliases, birth_metric, data_metric, datatype, datatype_of,
};
use crate::profile::sparkplug::proto::payload::{
    Metric, PropertySet, PropertyValue, Template, metric, property_value,
};

/// The Template shape of a node's devices.
#[derive(Debug, Clone, PartialEq)]
pub struct Templates {
    definitions: Vec<Metric>,
    instances: Vec<Option<Instance>>,
}

/// A device published as an instance of its model's Template.
#[derive(Debug, Clone, PartialEq)]
struct Instance {
    model: String,
    version: String,
    /// Per metric of the device: whether it is a member.
    members: Vec<bool>,
    /// The metric whose alias the instance takes.
    first_member: MetricId,
}

impl Templates {
    /// The definitions of the models `config`'s devices use, and each such
    /// device's instance. Devices without a model have none.
    pub fn new(config: &Config) -> Templates {
        let mut definitions = Vec::new();
        let instances = config
            .devices
            .iter()
            .map(|device| {
                let model = config
                    .models
                    .iter()
                    .find(|m| Some(&m.name) == device.model.as_ref())?;
                if let Err(why) = fits(&model.metrics, &device.metrics) {
                    tracing::warn!(device = %device.name, model = %model.name, "published as plain metrics, not as a Template instance: {why}");
                    return None;
                }
                let version = version_of(&model.metrics);
                let members: Vec<bool> = device
                    .metrics
                    .iter()
                    .map(|m| model.metrics.iter().any(|d| d.name == m.name))
                    .collect();
                let first_member = members.iter().position(|m| *m)?;
                if !definitions
                    .iter()
                    .any(|d: &Metric| d.name.as_deref() == Some(model.name.as_str()))
                {
                    definitions.push(definition(&model.name, &version, &model.metrics));
                }
                Some(Instance {
                    model: model.name.clone(),
                    version,
                    members,
                    first_member,
                })
            })
            .collect();
        Templates {
            definitions,
            instances,
        }
    }

    /// Whether `other` has the same definitions (a reload that changes a
    /// model's members needs a new NBIRTH, where definitions live).
    pub fn defines_as(&self, other: &Templates) -> bool {
        self.definitions == other.definitions
    }

    /// The definitions for the NBIRTH, stamped `now_ms`.
    pub fn definitions(&self, now_ms: u64) -> Vec<Metric> {
        self.definitions
            .iter()
            .map(|d| Metric {
                timestamp: Some(now_ms),
                ..d.clone()
            })
            .collect()
    }

    /// A device's DBIRTH metrics from its full snapshot: the instance with
    /// every member, then the plain metrics with their aliases.
    pub fn birth(
        &self,
        config: &Config,
        aliases: &Aliases,
        device: DeviceId,
        snapshot: &[Sample],
        now_ms: u64,
    ) -> Vec<Metric> {
        let plain = |s: &Sample| birth_metric(config, aliases, s);
        let Some(instance) = self.instance(device) else {
            return snapshot.iter().filter_map(plain).collect();
        };
        let members = snapshot
            .iter()
            .filter(|s| instance.is_member(s.metric))
            .filter_map(|s| {
                let mut m = birth_metric(config, aliases, s)?;
                m.alias = None;
                Some(m)
            })
            .collect();
        let mut metrics = vec![instance.metric(aliases, device, members, now_ms, false, true)];
        metrics.extend(
            snapshot
                .iter()
                .filter(|s| !instance.is_member(s.metric))
                .filter_map(plain),
        );
        metrics
    }

    /// A device's DDATA metrics for `samples`: the instance with the
    /// members among them, by name, then the plain ones by alias.
    pub fn data(
        &self,
        config: &Config,
        aliases: &Aliases,
        device: DeviceId,
        samples: &[Sample],
        historical: bool,
        now_ms: u64,
    ) -> Vec<Metric> {
        let plain = |s: &Sample| data_metric(aliases, s, historical);
        let Some(instance) = self.instance(device) else {
            return samples.iter().map(plain).collect();
        };
        let members: Vec<Metric> = samples
            .iter()
            .filter(|s| instance.is_member(s.metric))
            .map(|s| Metric {
                name: config
                    .devices
                    .get(device)
                    .and_then(|d| d.metrics.get(s.metric))
                    .map(|m| m.name.clone()),
                alias: None,
                ..data_metric(aliases, s, historical)
            })
            .collect();
        let mut metrics = Vec::new();
        if !members.is_empty() {
            metrics.push(instance.metric(aliases, device, members, now_ms, historical, false));
        }
        metrics.extend(
            samples
                .iter()
                .filter(|s| !instance.is_member(s.metric))
                .map(plain),
        );
        metrics
    }

    /// The members a command metric addresses, when it is `device`'s
    /// instance (by alias or by name) holding members by name; `None` when
    /// it is no instance of that device.
    pub fn command_members<'m>(
        &self,
        config: &Config,
        aliases: &Aliases,
        device: DeviceId,
        command: &'m Metric,
    ) -> Option<Vec<(Option<MetricId>, &'m Metric)>> {
        let instance = self.instance(device)?;
        let by_alias = command
            .alias
            .is_some_and(|a| a == aliases.of(device, instance.first_member));
        let by_name =
            command.alias.is_none() && command.name.as_deref() == Some(instance.model.as_str());
        if !(by_alias || by_name) {
            return None;
        }
        let Some(metric::Value::TemplateValue(template)) = &command.value else {
            return Some(Vec::new());
        };
        let defs = &config.devices.get(device)?.metrics;
        Some(
            template
                .metrics
                .iter()
                .map(|m| {
                    let id = m.name.as_deref().and_then(|n| {
                        defs.iter()
                            .position(|d| d.name == n)
                            .filter(|&i| instance.is_member(i))
                    });
                    (id, m)
                })
                .collect(),
        )
    }

    /// Whether metric `metric` of `device` travels inside its instance.
    pub fn is_member(&self, device: DeviceId, metric: MetricId) -> bool {
        self.instance(device).is_some_and(|i| i.is_member(metric))
    }

    fn instance(&self, device: DeviceId) -> Option<&Instance> {
        self.instances.get(device)?.as_ref()
    }
}

impl Instance {
    fn is_member(&self, metric: MetricId) -> bool {
        self.members.get(metric).copied().unwrap_or(false)
    }

    fn metric(
        &self,
        aliases: &Aliases,
        device: DeviceId,
        members: Vec<Metric>,
        now_ms: u64,
        historical: bool,
        birth: bool,
    ) -> Metric {
        Metric {
            name: birth.then(|| self.model.clone()),
            alias: Some(aliases.of(device, self.first_member)),
            timestamp: Some(now_ms),
            datatype: birth.then_some(datatype::TEMPLATE),
            is_historical: historical.then_some(true),
            value: Some(metric::Value::TemplateValue(Template {
                version: Some(self.version.clone()),
                metrics: members,
                parameters: Vec::new(),
                template_ref: Some(self.model.clone()),
                is_definition: Some(false),
            })),
            ..Metric::default()
        }
    }
}

/// Whether a device with `metrics` can be an instance of a model with
/// `members`: an instance carries every member, with the definition's
/// type. An override that changes a member's type (a `scale` makes any
/// number a Double) keeps the device out; it is then published with plain
/// metrics. `Err` says why.
pub fn fits(members: &[MetricDef], metrics: &[MetricDef]) -> Result<(), String> {
    for member in members {
        let Some(mine) = metrics.iter().find(|m| m.name == member.name) else {
            return Err(format!("it has no metric \"{}\"", member.name));
        };
        if mine.value_type() != member.value_type() {
            return Err(format!(
                "its \"{}\" is {} where the model's is {}",
                member.name,
                mine.value_type().name(),
                member.value_type().name()
            ));
        }
    }
    Ok(())
}

/// A model's definition metric: its members with datatype and unit, no values.
fn definition(model: &str, version: &str, members: &[MetricDef]) -> Metric {
    Metric {
        name: Some(model.to_owned()),
        datatype: Some(datatype::TEMPLATE),
        value: Some(metric::Value::TemplateValue(Template {
            version: Some(version.to_owned()),
            metrics: members
                .iter()
                .map(|m| Metric {
                    name: Some(m.name.clone()),
                    datatype: Some(datatype_of(m.value_type())),
                    is_null: Some(true),
                    properties: m.unit.as_ref().map(|u| PropertySet {
                        keys: vec!["engUnit".to_owned()],
                        values: vec![PropertyValue {
                            r#type: Some(datatype::STRING),
                            is_null: None,
                            value: Some(property_value::Value::StringValue(u.clone())),
                        }],
                    }),
                    ..Metric::default()
                })
                .collect(),
            parameters: Vec::new(),
            template_ref: None,
            is_definition: Some(true),
        })),
        ..Metric::default()
    }
}

/// A version that changes whenever the members' names, types or units do,
/// so a host can tell an instance of an older definition.
fn version_of(members: &[MetricDef]) -> String {
    let mut hasher = crc32fast::Hasher::new();
    for m in members {
        hasher.update(m.name.as_bytes());
        hasher.update(&[0]);
        hasher.update(m.value_type().name().as_bytes());
        hasher.update(&[0]);
        hasher.update(m.unit.as_deref().unwrap_or_default().as_bytes());
        hasher.update(&[0]);
    }
    format!("{:08x}", hasher.finalize())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use prost::Message as _;

    use super::*;
    use crate::core::value::{Quality, Value};
    use crate::profile::sparkplug::proto::Payload;

    const SITE: &str = r#"
[node]
group_id = "g"
node_id = "n"

[upstream]
url = "mqtt://b"
templates = true

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
name = "b"
kind = "tcp"
address = "127.0.0.1:502"

[[device]]
name = "m1"
bus = "b"
unit = 1
model = "meter"

[[device.metric]]
name = "extra"
register = 40010
type = "i16"

[[device]]
name = "plain"
bus = "b"
unit = 2

[[device.metric]]
name = "x"
register = 40001
type = "u16"
"#;

    fn sample(device: DeviceId, metric: MetricId, value: Value) -> Sample {
        Sample {
            device,
            metric,
            value: Some(value),
            quality: Quality::Good,
            timestamp_ms: 5,
        }
    }

    fn template(m: &Metric) -> &Template {
        match &m.value {
            Some(metric::Value::TemplateValue(t)) => t,
            other => panic!("not a template: {other:?}"),
        }
    }

    fn names(ms: &[Metric]) -> Vec<Option<&str>> {
        ms.iter().map(|m| m.name.as_deref()).collect()
    }

    #[test]
    fn a_model_is_one_definition_and_its_device_an_instance_next_to_its_own_metrics() {
        let config = Config::from_toml(Path::new("t.toml"), SITE).unwrap();
        let aliases = Aliases::new(&config);
        let t = Templates::new(&config);

        let defs = t.definitions(9);
        assert_eq!(names(&defs), [Some("meter")]);
        assert_eq!(
            (defs[0].alias, defs[0].datatype),
            (None, Some(datatype::TEMPLATE))
        );
        let def = template(&defs[0]);
        assert_eq!(
            (def.is_definition, def.template_ref.as_deref()),
            (Some(true), None)
        );
        assert_eq!(def.version.as_deref().map(str::len), Some(8));
        assert_eq!(names(&def.metrics), [Some("voltage"), Some("setpoint")]);
        assert_eq!(def.metrics[0].datatype, Some(datatype::FLOAT));
        let unit = def.metrics[0].properties.as_ref().expect("engUnit");
        assert_eq!(unit.keys, ["engUnit"]);

        let snapshot = [
            sample(0, 0, Value::F32(230.5)),
            sample(0, 1, Value::U16(40)),
            sample(0, 2, Value::I16(-1)),
        ];
        let birth = t.birth(&config, &aliases, 0, &snapshot, 9);
        assert_eq!(names(&birth), [Some("meter"), Some("extra")]);
        assert_eq!(
            birth[0].alias,
            Some(aliases.of(0, 0)),
            "the first member's alias"
        );
        assert_eq!(birth[1].alias, Some(aliases.of(0, 2)));
        let instance = template(&birth[0]);
        assert_eq!(
            (
                instance.is_definition,
                instance.template_ref.as_deref(),
                &instance.version
            ),
            (Some(false), Some("meter"), &def.version)
        );
        assert_eq!(
            names(&instance.metrics),
            [Some("voltage"), Some("setpoint")]
        );
        assert!(
            instance.metrics.iter().all(|m| m.alias.is_none()),
            "members have no alias"
        );
        assert_eq!(
            instance.metrics[0].value,
            Some(metric::Value::FloatValue(230.5))
        );

        let data = t.data(
            &config,
            &aliases,
            0,
            &[sample(0, 1, Value::U16(41)), sample(0, 2, Value::I16(3))],
            true,
            10,
        );
        assert_eq!(data.len(), 2);
        assert_eq!(
            (data[0].name.as_deref(), data[0].alias),
            (None, Some(aliases.of(0, 0)))
        );
        assert_eq!(data[0].is_historical, Some(true));
        let changed = template(&data[0]);
        assert_eq!(
            names(&changed.metrics),
            [Some("setpoint")],
            "only what changed"
        );
        assert_eq!(changed.metrics[0].is_historical, Some(true));
        assert_eq!(changed.template_ref.as_deref(), Some("meter"));
        assert_eq!(data[1].alias, Some(aliases.of(0, 2)));

        let plain = t.birth(&config, &aliases, 1, &[sample(1, 0, Value::U16(1))], 9);
        assert_eq!(
            names(&plain),
            [Some("x")],
            "a device without a model keeps plain metrics"
        );

        let scaled = SITE.replace(
            "name = \"extra\"\nregister = 40010\ntype = \"i16\"",
            "name = \"voltage\"\nregister = 30001\ntype = \"f32\"\nscale = 0.001",
        );
        let config = Config::from_toml(Path::new("t.toml"), &scaled).unwrap();
        let t = Templates::new(&config);
        let model = &config.models[0];
        assert_eq!(
            fits(&model.metrics, &config.devices[0].metrics),
            Err("its \"voltage\" is f64 where the model's is f32".into())
        );
        let birth = t.birth(&config, &aliases, 0, &snapshot[..2], 9);
        assert_eq!(
            names(&birth),
            [Some("voltage"), Some("setpoint")],
            "plain, not an instance"
        );
        assert!(t.definitions(9).is_empty(), "no instance, no definition");

        // Through prost and back, as a host receives it.
        let payload = Payload {
            metrics: defs.into_iter().chain(birth).collect(),
            ..Payload::default()
        };
        assert_eq!(
            Payload::decode(payload.encode_to_vec().as_slice()).unwrap(),
            payload
        );
    }

    #[test]
    fn a_command_reaches_members_through_the_instance_by_alias_or_name() {
        let config = Config::from_toml(Path::new("t.toml"), SITE).unwrap();
        let aliases = Aliases::new(&config);
        let t = Templates::new(&config);
        let member = |name: &str| Metric {
            name: Some(name.into()),
            value: Some(metric::Value::IntValue(7)),
            ..Metric::default()
        };
        let instance = |alias, name: Option<&str>| Metric {
            alias,
            name: name.map(str::to_owned),
            value: Some(metric::Value::TemplateValue(Template {
                metrics: vec![member("setpoint"), member("nope")],
                ..Template::default()
            })),
            ..Metric::default()
        };
        let by_alias = instance(Some(aliases.of(0, 0)), None);
        let found = t
            .command_members(&config, &aliases, 0, &by_alias)
            .expect("the instance");
        let ids: Vec<Option<MetricId>> = found.iter().map(|(id, _)| *id).collect();
        assert_eq!(
            ids,
            [Some(1), None],
            "members by name; an unknown one is none"
        );
        let by_name = instance(None, Some("meter"));
        assert!(t.command_members(&config, &aliases, 0, &by_name).is_some());
        assert!(
            t.command_members(&config, &aliases, 0, &member("setpoint"))
                .is_none(),
            "a flat metric"
        );
        assert!(
            t.command_members(&config, &aliases, 1, &by_name).is_none(),
            "no instance there"
        );
    }
}
