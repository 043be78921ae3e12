//! The config file as written: serde structs that keep each value's position.
//!
//! Strings that name a choice (types, tables, orders) are kept as strings
//! here and parsed during validation, where the error can name the device and
//! metric it belongs to; serde alone could only say "unknown variant".

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Files of `[[model]]` tables, as globs relative to this file.
    pub include: Option<Spanned<Vec<Spanned<String>>>>,
    pub node: RawNode,
    pub upstream: Option<RawUpstream>,
    pub buffer: Option<RawBuffer>,
    pub broker: Option<RawBroker>,
    pub health: Option<RawHealth>,
    #[serde(default)]
    pub bus: Vec<RawBus>,
    #[serde(default)]
    pub device: Vec<RawDevice>,
    #[serde(default)]
    pub model: Vec<RawModel>,
}

/// A file brought in by `include`: models only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModelFile {
    #[serde(default)]
    pub model: Vec<RawModel>,
}

/// `[[model]]`: a device type's metrics and defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub name: Spanned<String>,
    pub byte_order: Option<Spanned<String>>,
    pub word_order: Option<Spanned<String>>,
    pub max_read_registers: Option<Spanned<i64>>,
    pub max_gap: Option<Spanned<i64>>,
    pub identity: Option<RawModelIdentity>,
    #[serde(default)]
    pub metric: Vec<RawMetric>,
}

/// `[model.identity]`: how the device answers function 43/14.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModelIdentity {
    pub vendor: Spanned<String>,
    pub product_code: Spanned<String>,
}

/// `[node]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub group_id: Spanned<String>,
    pub node_id: Spanned<String>,
    pub data_dir: Option<Spanned<String>>,
    pub stats_interval: Option<Spanned<String>>,
}

/// `[upstream]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: Option<Spanned<String>>,
    pub urls: Option<Spanned<Vec<Spanned<String>>>>,
    pub ca_file: Option<Spanned<String>>,
    pub cert_file: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
    pub username: Option<Spanned<String>>,
    pub password: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    pub client_id: Option<Spanned<String>>,
    pub keep_alive: Option<Spanned<String>>,
    pub confirm_interval: Option<Spanned<String>>,
    pub republish: Option<Spanned<String>>,
    pub max_backoff: Option<Spanned<String>>,
    pub clean_session: Option<Spanned<bool>>,
    pub max_packet_size: Option<Spanned<i64>>,
    pub primary_host: Option<Spanned<String>>,
    pub primary_host_legacy: Option<Spanned<bool>>,
    pub connect_jitter: Option<Spanned<String>>,
    pub rebirth_min_interval: Option<Spanned<String>>,
    pub compression: Option<Spanned<String>>,
    pub templates: Option<Spanned<bool>>,
    pub profile: Option<Spanned<String>>,
    pub topic_template: Option<Spanned<String>>,
}

/// `[buffer]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuffer {
    pub max_size: Option<Spanned<i64>>,
    pub sync: Option<Spanned<String>>,
    pub overflow: Option<Spanned<String>>,
    pub drain_rate: Option<Spanned<i64>>,
}

/// `[health]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub listen: Spanned<String>,
    pub allow_remote: Option<Spanned<bool>>,
}

/// `[broker]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBroker {
    pub enabled: Option<Spanned<bool>>,
    pub listen: Option<Spanned<String>>,
    pub profile: Option<Spanned<String>>,
    pub allow_anonymous: Option<Spanned<bool>>,
    pub anonymous_subscribe: Option<Spanned<Vec<Spanned<String>>>>,
    pub anonymous_publish: Option<Spanned<Vec<Spanned<String>>>>,
    pub max_clients: Option<Spanned<i64>>,
    pub max_packet_size: Option<Spanned<i64>>,
    pub max_inflight: Option<Spanned<i64>>,
    pub max_queued: Option<Spanned<i64>>,
    pub message_expiry: Option<Spanned<String>>,
    pub session_expiry: Option<Spanned<String>>,
    pub max_publish_rate: Option<Spanned<i64>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub max_pending: Option<Spanned<i64>>,
    pub max_pending_per_address: Option<Spanned<i64>>,
    pub max_sessions_per_user: Option<Spanned<i64>>,
    pub anonymous_persistent: Option<Spanned<bool>>,
    pub max_queued_bytes: Option<Spanned<i64>>,
    pub max_queued_bytes_total: Option<Spanned<i64>>,
    pub max_retained: Option<Spanned<i64>>,
    pub max_retained_bytes: Option<Spanned<i64>>,
    pub max_subscriptions: Option<Spanned<i64>>,
    pub max_topic_length: Option<Spanned<i64>>,
    pub max_topic_levels: Option<Spanned<i64>>,
    pub tls_listen: Option<Spanned<String>>,
    pub tls_cert: Option<Spanned<String>>,
    pub tls_key: Option<Spanned<String>>,
    pub tls_client_ca: Option<Spanned<String>>,
    #[serde(default)]
    pub user: Vec<RawBrokerUser>,
}

/// `[[broker.user]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBrokerUser {
    pub name: Spanned<String>,
    pub password_hash: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    pub publish: Option<Spanned<Vec<Spanned<String>>>>,
    pub subscribe: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[[bus]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBus {
    pub name: Spanned<String>,
    pub kind: Spanned<String>,
    pub port: Option<Spanned<String>>,
    pub baud: Option<Spanned<i64>>,
    pub parity: Option<Spanned<String>>,
    pub data_bits: Option<Spanned<i64>>,
    pub stop_bits: Option<Spanned<i64>>,
    pub address: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub turnaround: Option<Spanned<String>>,
    pub byte_timeout: Option<Spanned<String>>,
    pub rs485: Option<Spanned<RawRs485>>,
}

/// `rs485 = "auto" | "kernel" | "rts"` or a table.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawRs485 {
    Mode(String),
    Table(RawRs485Table),
}

/// `rs485 = { mode = "kernel", ... }` or `rs485 = { gpio = "cdev", chip, line }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRs485Table {
    pub mode: Option<String>,
    pub rts_on_send: Option<bool>,
    pub delay_before: Option<String>,
    pub delay_after: Option<String>,
    pub gpio: Option<String>,
    pub chip: Option<String>,
    pub line: Option<i64>,
}

/// `[[device]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDevice {
    pub name: Spanned<String>,
    pub model: Option<Spanned<String>>,
    pub bus: Option<Spanned<String>>,
    pub unit: Option<Spanned<i64>>,
    pub gpio: Option<Spanned<String>>,
    pub chip: Option<Spanned<String>>,
    pub poll: Option<Spanned<String>>,
    pub max_read_registers: Option<Spanned<i64>>,
    pub max_read_bits: Option<Spanned<i64>>,
    pub max_gap: Option<Spanned<i64>>,
    pub byte_order: Option<Spanned<String>>,
    pub word_order: Option<Spanned<String>>,
    pub offline_after: Option<Spanned<i64>>,
    pub max_backoff: Option<Spanned<String>>,
    pub qos: Option<Spanned<i64>>,
    pub retain: Option<Spanned<bool>>,
    pub write_multiple: Option<Spanned<bool>>,
    pub connect_delay: Option<Spanned<String>>,
    pub request_delay: Option<Spanned<String>>,
    pub close_after_poll: Option<Spanned<bool>>,
    pub identify: Option<Spanned<bool>>,
    #[serde(default)]
    pub metric: Vec<RawMetric>,
}

/// `[[device.metric]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetric {
    pub name: Spanned<String>,
    pub table: Option<Spanned<String>>,
    pub address: Option<Spanned<i64>>,
    /// One-based Modicon number (40001, 400001) instead of table + address.
    pub register: Option<Spanned<i64>>,
    /// Its own poll period (scan class).
    pub poll: Option<Spanned<String>>,
    #[serde(rename = "type")]
    pub data_type: Option<Spanned<String>>,
    pub byte_order: Option<Spanned<String>>,
    pub word_order: Option<Spanned<String>>,
    pub bit: Option<Spanned<i64>>,
    pub length: Option<Spanned<i64>>,
    pub scale: Option<Spanned<f64>>,
    pub offset: Option<Spanned<f64>>,
    pub unit: Option<Spanned<String>>,
    pub deadband: Option<Spanned<f64>>,
    pub writable: Option<Spanned<bool>>,
    pub min: Option<Spanned<f64>>,
    pub max: Option<Spanned<f64>>,
    pub qos: Option<Spanned<i64>>,
    pub retain: Option<Spanned<bool>>,
    pub pin: Option<Spanned<i64>>,
    pub direction: Option<Spanned<String>>,
    pub pull: Option<Spanned<String>>,
    pub active_low: Option<Spanned<bool>>,
    pub debounce: Option<Spanned<String>>,
    pub mode: Option<Spanned<String>>,
    pub initial: Option<Spanned<bool>>,
    pub safe: Option<Spanned<bool>>,
    pub safe_after: Option<Spanned<String>>,
    pub sim_toggle: Option<Spanned<String>>,
}
