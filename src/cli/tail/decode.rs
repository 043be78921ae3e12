//! `fieldmq tail`: MQTT messages as lines an engineer can read. Sparkplug B
//! payloads are decoded, one line per metric, with names resolved from the
//! births seen (data messages carry aliases only); anything else is printed
//! as its text. Pure: it takes a topic and payload and returns lines.
//!
//! Whatever a publisher sends is shown, so it is made harmless first:
//! control characters (a terminal's escape sequences among them) are printed
//! escaped, and the births remembered are bounded, so a hostile publisher
//! can neither drive the engineer's terminal nor fill tail's memory.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prost::Message as _;

use fieldmq::profile::sparkplug::compression;
use fieldmq::profile::sparkplug::proto::Payload;
use fieldmq::profile::sparkplug::proto::payload::{Metric, metric, property_value};
use fieldmq::profile::sparkplug::topic::{MessageType, Topic};

/// What a birth said about one metric.
#[derive(Debug, Clone)]
struct Known {
    name: String,
    datatype: Option<u32>,
    unit: Option<String>,
}

/// Births (node or device) remembered at most; beyond this one is forgotten
/// to make room, and its data shows aliases until its next birth.
const MAX_BIRTHS: usize = 10_000;
/// The most a compressed payload may inflate to: more than any broker
/// carries, less than a bomb needs.
const MAX_INFLATED: usize = 16 << 20;
/// Metrics remembered per birth at most.
const MAX_METRICS_PER_BIRTH: usize = 10_000;

/// `text` with control characters escaped (`\u{1b}`), everything else as is.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The metrics each edge node and device announced in its last birth.
#[derive(Debug, Default)]
pub struct Tail {
    /// By (group, node, device): metrics by alias and by name.
    births: HashMap<(String, String, Option<String>), Births>,
    /// Nodes (group, node) already asked for a rebirth.
    asked: HashMap<(String, String), Asked>,
}

/// A rebirth request of this tail and what became of it.
#[derive(Debug)]
struct Asked {
    at: Instant,
    /// Data messages not shown while the births were awaited.
    held: usize,
    /// Births arrived, or the wait was given up: data is shown again.
    settled: bool,
}

/// A node that did not answer this tail's rebirth request in time.
#[derive(Debug, PartialEq, Eq)]
pub struct Unanswered {
    /// `group/node`.
    pub node: String,
    /// Where the request went.
    pub ncmd: String,
    /// Data messages not shown while waiting.
    pub held: usize,
}

#[derive(Debug, Default)]
struct Births {
    by_alias: HashMap<u64, Known>,
    by_name: HashMap<String, Known>,
}

impl Tail {
    /// A decoder that has seen no birth yet.
    pub fn new() -> Tail {
        Tail::default()
    }

    /// The NCMD topic to ask for a rebirth when `topic` carries data of an
    /// edge node whose NBIRTH this tail has not seen (it started later):
    /// without the births, aliases have no names. Once per node.
    pub fn rebirth_topic(&mut self, topic: &str, now: Instant) -> Option<String> {
        let parsed = Topic::parse(topic)?;
        if !matches!(parsed.message_type, MessageType::NData | MessageType::DData) {
            return None;
        }
        let node = (parsed.group_id, parsed.node_id);
        let born = self
            .births
            .contains_key(&(node.0.clone(), node.1.clone(), None));
        if born || self.asked.len() >= MAX_BIRTHS || self.asked.contains_key(&node) {
            return None;
        }
        let ncmd = Topic::node(&node.0, MessageType::NCmd, &node.1).to_string();
        self.asked.insert(
            node,
            Asked {
                at: now,
                held: 0,
                settled: false,
            },
        );
        Some(ncmd)
    }

    /// Whether a data message on `topic` is held back: its node was asked
    /// for a rebirth that has not come yet, and its aliases have no names.
    pub fn holds(&mut self, topic: &str) -> bool {
        let Some(parsed) = Topic::parse(topic) else {
            return false;
        };
        if !matches!(parsed.message_type, MessageType::NData | MessageType::DData) {
            return false;
        }
        match self.asked.get_mut(&(parsed.group_id, parsed.node_id)) {
            Some(asked) if !asked.settled => {
                asked.held += 1;
                true
            }
            _ => false,
        }
    }

    /// On the NBIRTH of a node this tail asked: how many of its data
    /// messages were held back meanwhile.
    pub fn answered(&mut self, topic: &str) -> Option<usize> {
        let parsed = Topic::parse(topic)?;
        if parsed.message_type != MessageType::NBirth {
            return None;
        }
        let asked = self.asked.get_mut(&(parsed.group_id, parsed.node_id))?;
        if asked.settled {
            return None;
        }
        asked.settled = true;
        Some(asked.held)
    }

    /// Nodes asked at least `within` before `now` that sent no NBIRTH:
    /// their data is shown again, by alias.
    pub fn unanswered(&mut self, now: Instant, within: Duration) -> Vec<Unanswered> {
        let mut late = Vec::new();
        for ((group, node), asked) in &mut self.asked {
            if !asked.settled && now.duration_since(asked.at) >= within {
                asked.settled = true;
                late.push(Unanswered {
                    node: printable(&format!("{group}/{node}")),
                    ncmd: printable(&Topic::node(group, MessageType::NCmd, node).to_string()),
                    held: asked.held,
                });
            }
        }
        late.sort_by(|a, b| a.node.cmp(&b.node));
        late
    }

    /// The lines that show one message.
    pub fn lines(&mut self, topic: &str, payload: &[u8]) -> Vec<String> {
        let Some(parsed) = Topic::parse(topic) else {
            return vec![format!(
                "{}  {}",
                printable(topic),
                printable(&String::from_utf8_lossy(payload))
            )];
        };
        let kind = parsed.message_type.token();
        let source = printable(&match &parsed.device_id {
            Some(device) => format!("{}/{}/{device}", parsed.group_id, parsed.node_id),
            None => format!("{}/{}", parsed.group_id, parsed.node_id),
        });
        let decoded = match Payload::decode(payload) {
            Ok(p) => p,
            Err(e) => {
                return vec![format!(
                    "{kind:<6} {source}  undecodable Sparkplug payload ({} bytes): {e}",
                    payload.len()
                )];
            }
        };
        let compressed = compression::is_compressed(&decoded);
        let decoded = match compression::open(decoded, MAX_INFLATED) {
            Ok(p) => p,
            Err(e) => return vec![format!("{kind:<6} {source}  {e}")],
        };
        let key = (parsed.group_id, parsed.node_id, parsed.device_id);
        if matches!(
            parsed.message_type,
            MessageType::NBirth | MessageType::DBirth
        ) {
            if self.births.len() >= MAX_BIRTHS && !self.births.contains_key(&key) {
                let forgotten = self.births.keys().next().cloned();
                if let Some(forgotten) = forgotten {
                    self.births.remove(&forgotten);
                }
            }
            let births = self.births.entry(key.clone()).or_default();
            *births = Births::default();
            for m in decoded.metrics.iter().take(MAX_METRICS_PER_BIRTH) {
                births.learn(m);
            }
        }
        let seq = decoded
            .seq
            .map_or_else(|| "-".to_owned(), |s| s.to_string());
        let head = if compressed {
            format!("{kind:<6} {source} seq={seq} (compressed)")
        } else {
            format!("{kind:<6} {source} seq={seq}")
        };
        if decoded.metrics.is_empty() {
            return vec![head];
        }
        let births = self.births.get(&key);
        decoded
            .metrics
            .iter()
            .flat_map(|m| shown(m, births))
            .map(|line| format!("{head}  {line}"))
            .collect()
    }
}

impl Births {
    fn learn(&mut self, m: &Metric) {
        let Some(name) = &m.name else { return };
        let unit = m.properties.as_ref().and_then(|p| {
            let i = p.keys.iter().position(|k| k == "engUnit")?;
            match p.values.get(i)?.value.as_ref()? {
                property_value::Value::StringValue(s) => Some(s.clone()),
                _ => None,
            }
        });
        let known = Known {
            name: name.clone(),
            datatype: m.datatype,
            unit,
        };
        if let Some(alias) = m.alias {
            self.by_alias.insert(alias, known.clone());
        }
        self.by_name.insert(name.clone(), known);
        // An instance's members are known as `instance/member`.
        if let Some(metric::Value::TemplateValue(t)) = &m.value
            && t.is_definition != Some(true)
        {
            for member in t.metrics.iter().take(MAX_METRICS_PER_BIRTH) {
                if let Some(member_name) = &member.name {
                    self.learn(&Metric {
                        name: Some(format!("{name}/{member_name}")),
                        alias: None,
                        value: None,
                        ..member.clone()
                    });
                }
            }
        }
    }
}

/// The lines of one metric: one, or one per member of a Template instance
/// (`instance/member = value`); a definition says what it defines.
fn shown(m: &Metric, births: Option<&Births>) -> Vec<String> {
    let Some(metric::Value::TemplateValue(t)) = &m.value else {
        return vec![describe(m, births)];
    };
    let name = m
        .name
        .clone()
        .or_else(|| {
            let b = births?;
            Some(b.by_alias.get(&m.alias?)?.name.clone())
        })
        .unwrap_or_else(|| format!("alias {} (no birth seen)", m.alias.unwrap_or_default()));
    if t.is_definition == Some(true) {
        let members: Vec<String> = t.metrics.iter().filter_map(|x| x.name.clone()).collect();
        return vec![printable(&format!(
            "{name} = Template definition{}: {}",
            t.version
                .as_deref()
                .map_or_else(String::new, |v| format!(" version {v}")),
            members.join(", ")
        ))];
    }
    t.metrics
        .iter()
        .map(|member| {
            let full = Metric {
                name: Some(format!(
                    "{name}/{}",
                    member.name.as_deref().unwrap_or("(unnamed)")
                )),
                is_historical: member.is_historical.or(m.is_historical),
                ..member.clone()
            };
            describe(&full, births)
        })
        .collect()
}

/// `name = value unit`, flagged historical, null or of unknown alias.
fn describe(m: &Metric, births: Option<&Births>) -> String {
    let known = births.and_then(|b| {
        m.alias
            .and_then(|a| b.by_alias.get(&a))
            .or_else(|| m.name.as_ref().and_then(|n| b.by_name.get(n)))
    });
    let name = match (&m.name, known, m.alias) {
        (Some(name), _, _) => name.clone(),
        (None, Some(k), _) => k.name.clone(),
        (None, None, Some(alias)) => format!("alias {alias} (no birth seen)"),
        (None, None, None) => "(unnamed)".to_owned(),
    };
    let datatype = m.datatype.or(known.and_then(|k| k.datatype));
    let value = match &m.value {
        _ if m.is_null == Some(true) => "null".to_owned(),
        Some(v) => value_text(v, datatype),
        None => "null".to_owned(),
    };
    let unit = known
        .and_then(|k| k.unit.as_deref())
        .map_or_else(String::new, |u| format!(" {u}"));
    let historical = if m.is_historical == Some(true) {
        "  (historical)"
    } else {
        ""
    };
    format!(
        "{} = {}{}{historical}",
        printable(&name),
        printable(&value),
        printable(&unit)
    )
}

/// A value as its datatype says to read it: small signed integers travel as
/// two's complement in a u32, Int64 in a u64.
fn value_text(v: &metric::Value, datatype: Option<u32>) -> String {
    use metric::Value as F;
    match (v, datatype) {
        (F::IntValue(n), Some(1)) => (*n as i8).to_string(),
        (F::IntValue(n), Some(2)) => (*n as i16).to_string(),
        (F::IntValue(n), Some(3)) => n.cast_signed().to_string(),
        (F::LongValue(n), Some(4)) => n.cast_signed().to_string(),
        (F::IntValue(n), _) => n.to_string(),
        (F::LongValue(n), _) => n.to_string(),
        (F::FloatValue(x), _) => x.to_string(),
        (F::DoubleValue(x), _) => x.to_string(),
        (F::BooleanValue(b), _) => b.to_string(),
        (F::StringValue(s), _) => format!("{s:?}"),
        (F::BytesValue(b), _) => format!("{} bytes", b.len()),
        (other, _) => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldmq::profile::sparkplug::proto::payload::{PropertySet, PropertyValue};

    fn metric(name: Option<&str>, alias: u64, value: metric::Value) -> Metric {
        Metric {
            name: name.map(str::to_owned),
            alias: Some(alias),
            value: Some(value),
            ..Metric::default()
        }
    }

    #[test]
    fn control_characters_are_shown_escaped_and_births_are_bounded() {
        let mut tail = Tail::new();
        let lines = tail.lines("plain/\x1b[2Jtopic", b"\x1b]0;owned\x07value");
        assert_eq!(lines, ["plain/\\u{1b}[2Jtopic  \\u{1b}]0;owned\\u{7}value"]);
        let birth = Payload {
            metrics: vec![metric(Some("a\rb"), 1, metric::Value::IntValue(1))],
            ..Payload::default()
        }
        .encode_to_vec();
        let lines = tail.lines("spBv1.0/g/NBIRTH/n\x1b", &birth);
        assert!(
            lines.iter().all(|l| !l.chars().any(char::is_control)),
            "{lines:?}"
        );
        for i in 0..(MAX_BIRTHS + 50) {
            tail.lines(&format!("spBv1.0/g/NBIRTH/n{i}"), &birth);
        }
        assert!(tail.births.len() <= MAX_BIRTHS);
    }

    #[test]
    fn data_by_alias_is_named_from_the_birth_with_unit_sign_and_historical_flag() {
        let mut tail = Tail::new();
        let mut voltage = metric(Some("voltage/L1"), 16, metric::Value::FloatValue(230.5));
        voltage.datatype = Some(9);
        voltage.properties = Some(PropertySet {
            keys: vec!["engUnit".into()],
            values: vec![PropertyValue {
                r#type: Some(12),
                value: Some(property_value::Value::StringValue("V".into())),
                ..PropertyValue::default()
            }],
        });
        let mut delta = metric(Some("delta"), 17, metric::Value::IntValue(0));
        delta.datatype = Some(2);
        let birth = Payload {
            seq: Some(1),
            metrics: vec![voltage, delta],
            ..Payload::default()
        };
        let lines = tail.lines("spBv1.0/g/DBIRTH/n/meter", &birth.encode_to_vec());
        assert_eq!(lines[0], "DBIRTH g/n/meter seq=1  voltage/L1 = 230.5 V");
        let mut late = metric(None, 17, metric::Value::IntValue((-2i32).cast_unsigned()));
        late.is_historical = Some(true);
        let data = Payload {
            seq: Some(2),
            metrics: vec![metric(None, 16, metric::Value::FloatValue(231.0)), late],
            ..Payload::default()
        };
        let lines = tail.lines("spBv1.0/g/DDATA/n/meter", &data.encode_to_vec());
        assert_eq!(
            lines,
            [
                "DDATA  g/n/meter seq=2  voltage/L1 = 231 V",
                "DDATA  g/n/meter seq=2  delta = -2  (historical)",
            ]
        );
    }

    #[test]
    fn unknown_aliases_plain_topics_and_garbage_are_shown_not_dropped() {
        let mut tail = Tail::new();
        let data = Payload {
            seq: Some(3),
            metrics: vec![metric(None, 40, metric::Value::BooleanValue(true))],
            ..Payload::default()
        };
        assert_eq!(
            tail.lines("spBv1.0/g/DDATA/n/panel", &data.encode_to_vec()),
            ["DDATA  g/n/panel seq=3  alias 40 (no birth seen) = true"]
        );
        assert_eq!(
            tail.lines("site/gw/panel/door", br#"{"value":true}"#),
            [r#"site/gw/panel/door  {"value":true}"#]
        );
        let garbage = tail.lines("spBv1.0/g/NDATA/n", &[0xFF, 0xFF, 0xFF]);
        assert!(
            garbage[0].starts_with("NDATA  g/n  undecodable Sparkplug payload (3 bytes)"),
            "{garbage:?}"
        );
        let death = Payload::default();
        assert_eq!(
            tail.lines("spBv1.0/g/DDEATH/n/panel", &death.encode_to_vec()),
            ["DDEATH g/n/panel seq=-"]
        );
    }

    #[test]
    fn data_of_an_unborn_node_asks_it_once_for_a_rebirth_and_a_born_one_never() {
        let mut tail = Tail::new();
        let now = Instant::now();
        assert_eq!(
            tail.rebirth_topic("spBv1.0/g/DDATA/n/panel", now)
                .as_deref(),
            Some("spBv1.0/g/NCMD/n")
        );
        assert_eq!(tail.rebirth_topic("spBv1.0/g/NDATA/n", now), None, "once");
        assert_eq!(
            tail.rebirth_topic("spBv1.0/g/NDATA/other", now).as_deref(),
            Some("spBv1.0/g/NCMD/other")
        );
        let birth = Payload::default().encode_to_vec();
        tail.lines("spBv1.0/g/NBIRTH/born", &birth);
        assert_eq!(tail.rebirth_topic("spBv1.0/g/DDATA/born/panel", now), None);
        assert_eq!(tail.rebirth_topic("spBv1.0/g/DBIRTH/x/panel", now), None);
        assert_eq!(tail.rebirth_topic("spBv1.0/g/NDEATH/x", now), None);
        assert_eq!(tail.rebirth_topic("site/gw/panel/door", now), None);
    }

    #[test]
    fn data_waits_for_the_births_asked_for_and_a_request_unanswered_is_reported() {
        let mut tail = Tail::new();
        let now = Instant::now();
        tail.rebirth_topic("spBv1.0/g/DDATA/n/panel", now);
        tail.rebirth_topic("spBv1.0/g/NDATA/quiet", now);
        assert!(tail.holds("spBv1.0/g/DDATA/n/panel"));
        assert!(tail.holds("spBv1.0/g/NDATA/n"));
        assert!(!tail.holds("spBv1.0/g/DBIRTH/n/panel"), "births are shown");
        assert!(!tail.holds("spBv1.0/g/DDATA/never-asked/panel"));
        assert_eq!(tail.answered("spBv1.0/g/NBIRTH/n"), Some(2));
        assert!(!tail.holds("spBv1.0/g/DDATA/n/panel"), "named from now on");
        assert!(tail.holds("spBv1.0/g/NDATA/quiet"));
        let second = Duration::from_secs(1);
        assert!(tail.unanswered(now + second, 5 * second).is_empty());
        assert_eq!(
            tail.unanswered(now + 5 * second, 5 * second),
            [Unanswered {
                node: "g/quiet".into(),
                ncmd: "spBv1.0/g/NCMD/quiet".into(),
                held: 1,
            }]
        );
        assert!(
            !tail.holds("spBv1.0/g/NDATA/quiet"),
            "shown by alias after that"
        );
        assert!(
            tail.unanswered(now + 9 * second, 5 * second).is_empty(),
            "said once"
        );
    }

    #[test]
    fn compressed_payloads_are_opened_and_marked() {
        let mut tail = Tail::new();
        let birth = Payload {
            seq: Some(1),
            metrics: vec![metric(Some("power"), 7, metric::Value::DoubleValue(2.5))],
            ..Payload::default()
        };
        let gzip = compression::encode(&birth, fieldmq::config::Compression::Gzip);
        assert_eq!(
            tail.lines("spBv1.0/g/DBIRTH/n/meter", &gzip),
            ["DBIRTH g/n/meter seq=1 (compressed)  power = 2.5"]
        );
        let mut broken = Payload::decode(gzip.as_slice()).unwrap();
        broken.body = Some(b"garbage".to_vec());
        let lines = tail.lines("spBv1.0/g/DDATA/n/meter", &broken.encode_to_vec());
        assert!(lines[0].contains("does not inflate"), "{lines:?}");
    }

    #[test]
    fn template_definitions_and_instances_are_shown_member_by_member() {
        use fieldmq::profile::sparkplug::proto::payload::{PropertySet, PropertyValue, Template};
        let mut tail = Tail::new();
        let member = |name: &str, value: Option<metric::Value>, unit: Option<&str>| Metric {
            name: Some(name.into()),
            datatype: Some(9),
            value,
            properties: unit.map(|u| PropertySet {
                keys: vec!["engUnit".into()],
                values: vec![PropertyValue {
                    r#type: Some(12),
                    is_null: None,
                    value: Some(property_value::Value::StringValue(u.into())),
                }],
            }),
            ..Metric::default()
        };
        let template = |definition: bool, members: Vec<Metric>| {
            Some(metric::Value::TemplateValue(Template {
                version: Some("v1".into()),
                metrics: members,
                template_ref: (!definition).then(|| "meter".into()),
                is_definition: Some(definition),
                ..Template::default()
            }))
        };
        let nbirth = Payload {
            seq: Some(0),
            metrics: vec![Metric {
                name: Some("meter".into()),
                datatype: Some(19),
                value: template(true, vec![member("voltage", None, Some("V"))]),
                ..Metric::default()
            }],
            ..Payload::default()
        };
        assert_eq!(
            tail.lines("spBv1.0/g/NBIRTH/n", &nbirth.encode_to_vec()),
            ["NBIRTH g/n seq=0  meter = Template definition version v1: voltage"]
        );
        let dbirth = Payload {
            seq: Some(1),
            metrics: vec![Metric {
                name: Some("meter".into()),
                alias: Some(16),
                datatype: Some(19),
                value: template(
                    false,
                    vec![member(
                        "voltage",
                        Some(metric::Value::FloatValue(230.5)),
                        Some("V"),
                    )],
                ),
                ..Metric::default()
            }],
            ..Payload::default()
        };
        assert_eq!(
            tail.lines("spBv1.0/g/DBIRTH/n/m1", &dbirth.encode_to_vec()),
            ["DBIRTH g/n/m1 seq=1  meter/voltage = 230.5 V"]
        );
        let ddata = Payload {
            seq: Some(2),
            metrics: vec![Metric {
                alias: Some(16),
                value: template(
                    false,
                    vec![Metric {
                        datatype: None,
                        ..member("voltage", Some(metric::Value::FloatValue(231.0)), None)
                    }],
                ),
                ..Metric::default()
            }],
            ..Payload::default()
        };
        assert_eq!(
            tail.lines("spBv1.0/g/DDATA/n/m1", &ddata.encode_to_vec()),
            ["DDATA  g/n/m1 seq=2  meter/voltage = 231 V"]
        );
    }
}
