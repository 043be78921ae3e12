use super::check::{DEFAULT_DATA_DIR, DEFAULT_POLL, DEFAULT_TIMEOUT};
use super::*;
use crate::core::layout::{ByteOrder, WordOrder};

const GOOD: &str = r#"
[node]
group_id = "plant1"
node_id  = "line3-gw"

[[bus]]
name = "rs485-1"
kind = "rtu"
port = "/dev/ttyUSB0"
baud = 9600
parity = "even"
timeout = "500ms"

[[bus]]
name = "plc-net"
kind = "tcp"
address = "10.0.0.5:502"

[[device]]
name = "meter1"
bus  = "rs485-1"
unit = 1
poll = "1s"
word_order = "little"

[[device.metric]]
name    = "voltage/L1"
table   = "input"
address = 0
type    = "f32"
unit    = "V"
deadband = 0.5

[[device.metric]]
name    = "status/running"
table   = "input"
address = 0
type    = "bool"
bit     = 3

[[device]]
name = "plc"
bus = "plc-net"
unit = 0

[[device.metric]]
name = "speed"
table = "holding"
address = 100
type = "i16"
scale = 0.1
writable = true
min = -100
max = 100
"#;

fn errors(text: &str) -> Vec<String> {
    match Config::from_toml(Path::new("meter1.toml"), text) {
        Ok(_) => Vec::new(),
        Err(e) => e.to_string().lines().map(str::to_owned).collect(),
    }
}

/// The good config with one line replaced, so each case names its fault.
fn with(find: &str, replace: &str) -> String {
    assert!(GOOD.contains(find), "{find}");
    GOOD.replacen(find, replace, 1)
}

#[test]
fn a_valid_config_becomes_typed_values_with_defaults_applied() {
    let config = Config::from_toml(Path::new("x.toml"), GOOD).expect("valid");
    assert_eq!(config.node.group_id, "plant1");
    let Transport::Rtu(line) = &config.buses[0].transport else {
        panic!("rtu")
    };
    assert_eq!(
        (line.baud, line.parity, line.data_bits, line.stop_bits),
        (9600, Parity::Even, 8, 1)
    );
    assert_eq!(config.buses[0].timeout, Duration::from_millis(500));
    assert_eq!(config.buses[1].timeout, DEFAULT_TIMEOUT);
    let meter = &config.devices[0];
    assert_eq!(
        meter.metrics[0].register().unwrap().layout.word_order,
        WordOrder::Little,
        "device default applies"
    );
    assert_eq!(
        meter.metrics[0].register().unwrap().layout.byte_order,
        ByteOrder::Big
    );
    assert_eq!(meter.metrics[1].register().unwrap().layout.bit, Some(3));
    let plc = &config.devices[1];
    let modbus = plc.modbus().unwrap();
    assert_eq!((modbus.bus, modbus.unit, plc.poll), (1, 0, DEFAULT_POLL));
    assert_eq!(
        plc.metrics[0].register().unwrap().scaling,
        Some(Scaling {
            scale: 0.1,
            offset: 0.0
        })
    );
    assert_eq!(plc.metrics[0].value_type(), DataType::F64);
    assert!(plc.metrics[0].writable);
    assert_eq!(
        crate::acquire::modbus::plan::ReadPlan::for_device(meter)
            .requests()
            .len(),
        1,
        "the bool shares the float's register"
    );
}

#[test]
fn errors_name_file_line_context_key_and_expectation() {
    let text = with("type    = \"f32\"", "type    = \"flaot32\"");
    assert_eq!(
        errors(&text),
        vec![
            "meter1.toml:30: device \"meter1\", metric \"voltage/L1\": unknown type \"flaot32\", expected one of bool, u16, i16, u32, i32, u64, i64, f32, f64, string"
        ]
    );
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let text = with("unit = 1\n", "unit = 300\n").replace("address = 100", "address = 70000");
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].contains(":22: device \"meter1\": unit = 300 is out of range, expected 0..=247"),
        "{errs:?}"
    );
    assert!(
        errs[1].contains("address = 70000 is out of range, expected 0..=65535"),
        "{errs:?}"
    );
}

#[test]
fn each_kind_of_mistake_is_refused_with_its_own_message() {
    let cases: Vec<(String, &str)> = vec![
        (
            with("name = \"plc\"", "name = \"meter1\""),
            "duplicate device name \"meter1\"",
        ),
        (
            with("name    = \"status/running\"", "name    = \"voltage/L1\""),
            "duplicate metric name \"voltage/L1\"",
        ),
        (
            with("name    = \"status/running\"", "name    = \"Voltage/l1\""),
            "differs from \"voltage/L1\" only by letter case",
        ),
        (
            with("type    = \"bool\"\nbit     = 3", "type    = \"string\""),
            "type = \"string\" needs length",
        ),
        (
            with("bus = \"plc-net\"", "bus = \"plc-net2\""),
            "bus \"plc-net2\" is not defined, expected one of: rs485-1, plc-net",
        ),
        (
            with("kind = \"rtu\"", "kind = \"rs485\""),
            "unknown kind \"rs485\", expected one of tcp, rtu, rtu-over-tcp",
        ),
        (
            with("timeout = \"500ms\"", "timeout = \"fast\""),
            "timeout = \"fast\" is not a duration",
        ),
        (
            with("poll = \"1s\"", "poll = \"0s\""),
            "poll must be longer than zero",
        ),
        (
            with("poll = \"1s\"", "poll = \"300years\""),
            "poll = \"300years\" is longer than the longest allowed",
        ),
        (
            with("address = \"10.0.0.5:502\"", "address = \"10.0.0.5\""),
            "is not host:port",
        ),
        (
            with("baud = 9600", "baud = 9600\naddress = \"1.2.3.4:502\""),
            "address applies only to kind",
        ),
        (
            with("unit = 1\n", "unit = 0\n"),
            "unit = 0 is the broadcast address on a serial line",
        ),
        (
            with(
                "name = \"plc-net\"",
                "name = \"plc-net\"\nport = \"/dev/ttyUSB0\"",
            ),
            "port applies only to kind = \"rtu\"",
        ),
        (
            with("group_id = \"plant1\"", "group_id = \"plant/1\""),
            "group_id \"plant/1\" contains '/'",
        ),
        (
            with("name = \"plc\"", "name = \"plc#2\""),
            "name \"plc#2\" contains '#'",
        ),
        (
            with("name    = \"voltage/L1\"", "name    = \"voltage//L1\""),
            "has an empty folder",
        ),
        (
            with("scale = 0.1", "scale = 0.0"),
            "scale = 0 would make every reading 0",
        ),
        (
            with("min = -100", "min = 200"),
            "min = 200 is greater than max = 100",
        ),
        (
            with("bit     = 3", "bit     = 16"),
            "bit = 16 is out of range, expected 0..=15",
        ),
        (
            with(
                "type    = \"bool\"\nbit     = 3",
                "type    = \"u16\"\nbit     = 3",
            ),
            "bit applies only to type = \"bool\"",
        ),
        (
            with("table = \"holding\"", "table = \"coil\""),
            "type \"i16\" cannot be read from table \"coil\"",
        ),
        (
            with("table = \"holding\"", "table = \"input\""),
            "writable = true needs table \"coil\" or \"holding\"",
        ),
        (
            with("deadband = 0.5", "deadband = -1.0"),
            "deadband = -1 must be a finite number >= 0",
        ),
        (
            with(
                "address = 0\ntype    = \"bool\"\nbit     = 3",
                "address = 1\ntype    = \"u32\"",
            ),
            "registers 1..2 overlap metric \"voltage/L1\" at 0..1",
        ),
        (
            with("type = \"i16\"", "type = \"u64\"\nlength = 2"),
            "length applies only to type = \"string\"",
        ),
        (
            with(
                "word_order = \"little\"",
                "word_order = \"little\"\nmax_read_registers = 200",
            ),
            "max_read_registers = 200 is out of range, expected 1..=125",
        ),
        (
            with("deadband = 0.5", "deadband = 0.5\nscael = 2"),
            "unknown field `scael`",
        ),
    ];
    for (text, expected) in cases {
        let errs = errors(&text);
        assert!(
            errs.iter().any(|e| e.contains(expected)),
            "expected {expected:?} in {errs:?}"
        );
        assert!(
            errs.iter().all(|e| e.starts_with("meter1.toml:")),
            "{errs:?}"
        );
    }
}

#[test]
fn a_value_running_past_the_last_address_is_refused() {
    let text = with("address = 100", "address = 65534").replace("type = \"i16\"", "type = \"f32\"");
    assert_eq!(
        errors(&text),
        Vec::<String>::new(),
        "65534..65535 is the last pair"
    );
    let text = with("address = 100", "address = 65533").replace("type = \"i16\"", "type = \"u64\"");
    let errs = errors(&text);
    assert!(
        errs.iter()
            .any(|e| e.contains("ends at 65536, past the last address 65535")),
        "{errs:?}"
    );
    let text = with("address = 100", "address = 65532").replace("type = \"i16\"", "type = \"u64\"");
    assert_eq!(errors(&text), Vec::<String>::new());
}

#[test]
fn unknown_keys_are_errors_with_their_line() {
    let errs = errors(&with("poll = \"1s\"", "poll = \"1s\"\npoll_rate = 5"));
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("meter1.toml:24: unknown field `poll_rate`, expected one of"),
        "{errs:?}"
    );
}

#[test]
fn silent_interval_follows_the_character_time_and_the_fixed_floor() {
    let line = |baud, parity| SerialLine {
        port: "/dev/null".into(),
        baud,
        parity,
        data_bits: 8,
        stop_bits: 1,
        byte_timeout: None,
        direction: crate::config::Direction::Auto,
    };
    // 9600 8E1: 11 bits per char, 3.5 chars = 38.5 bits = 4010 us.
    assert_eq!(
        line(9600, Parity::Even).silent_interval(),
        Duration::from_micros(4010)
    );
    // 9600 8N1: 10 bits, 35 bits = 3645 us.
    assert_eq!(
        line(9600, Parity::None).silent_interval(),
        Duration::from_micros(3645)
    );
    assert_eq!(
        line(115_200, Parity::None).silent_interval(),
        Duration::from_micros(1750)
    );
}

/// The good config with an `[upstream]` section appended.
fn with_upstream(section: &str) -> String {
    format!("{GOOD}\n[upstream]\n{section}\n")
}

#[test]
fn an_upstream_gets_its_defaults_and_several_servers_keep_their_order() {
    let text = with_upstream(
        "urls = [\"mqtt://broker-a\", \"mqtts://[fd00::1]:9883\"]\nusername = \"gw\"\npassword = \"s3cret\"",
    );
    let config = Config::from_toml(Path::new("x.toml"), &text).expect("valid");
    let up = config.upstream.expect("upstream");
    let servers: Vec<(&str, u16, bool)> = up
        .servers
        .iter()
        .map(|s| (s.host.as_str(), s.port, s.tls))
        .collect();
    assert_eq!(
        servers,
        vec![("broker-a", 1883, false), ("fd00::1", 9883, true)]
    );
    assert_eq!(up.client_id, "line3-gw", "the node id by default");
    assert_eq!(up.profile, Profile::Sparkplug);
    assert!(up.clean_session);
    assert_eq!(up.keep_alive, Duration::from_secs(30));
    assert_eq!(up.confirm_interval, Duration::from_millis(500));
    assert_eq!(up.max_packet_size, DEFAULT_MAX_PACKET_SIZE);
    assert_eq!(up.password.as_deref(), Some("s3cret"));
    assert_eq!(config.node.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    let speed = &config.devices[1].metrics[0];
    assert_eq!((speed.qos, speed.retain), (Qos::AtMostOnce, true));
}

#[test]
fn a_password_file_is_read_relative_to_the_config_and_trimmed() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("secret"), "hunter2\n").expect("write");
    let text = with_upstream("url = \"mqtt://b\"\nusername = \"gw\"\npassword_file = \"secret\"");
    let config = Config::from_toml(&dir.path().join("fieldmq.toml"), &text).expect("valid");
    assert_eq!(
        config.upstream.and_then(|u| u.password).as_deref(),
        Some("hunter2")
    );
}

#[test]
fn upstream_mistakes_are_refused_with_their_line() {
    let base = GOOD.lines().count() + 2;
    let cases: Vec<(&str, &str)> = vec![
        (
            "url = \"http://b\"",
            "has scheme \"http\", expected mqtt://host:port or mqtts://host:port",
        ),
        ("url = \"mqtt://b:0\"", "has port \"0\", expected 1..=65535"),
        (
            "url = \"mqtt://user@b\"",
            "credentials go in username/password",
        ),
        (
            "url = \"mqtt://b\"\nca_file = \"ca.pem\"",
            "ca_file applies only to mqtts:// servers",
        ),
        (
            "url = \"mqtts://b\"\nca_file = \"/nonexistent/ca.pem\"",
            "ca_file = \"/nonexistent/ca.pem\": cannot read",
        ),
        (
            "url = \"mqtt://b\"\nclean_session = false",
            "Sparkplug B requires clean_session = true",
        ),
        (
            "url = \"mqtt://b\"\nkeep_alive = \"500ms\"",
            "keep_alive must be at least 1s",
        ),
        (
            "url = \"mqtt://b\"\nrepublish = \"10m\"",
            "republish applies only to profile = \"plain\"",
        ),
        (
            "url = \"mqtt://b\"\nprofile = \"plain\"\nrepublish = \"500ms\"",
            "republish must be at least 1s",
        ),
        (
            "url = \"mqtt://b\"\nconfirm_interval = \"10ms\"",
            "confirm_interval must be between 50ms and keep_alive (30s)",
        ),
        (
            "url = \"mqtt://b\"\nkeep_alive = \"5s\"\nconfirm_interval = \"6s\"",
            "confirm_interval must be between 50ms and keep_alive (5s)",
        ),
        (
            "url = \"mqtt://b\"\nprofile = \"json\"",
            "unknown profile \"json\", expected one of sparkplug, plain",
        ),
        (
            "url = \"mqtt://b\"\nprofile = \"plain\"\ntopic_template = \"{group_id}/{device}/{metrik}\"",
            "unknown placeholder {metrik}",
        ),
        (
            "url = \"mqtt://b\"\ntopic_template = \"x/{device}/{metric}\"",
            "topic_template applies only to profile = \"plain\"",
        ),
        (
            "url = \"mqtt://b\"\npassword = \"x\"",
            "a password needs a username",
        ),
        (
            "url = \"mqtt://b\"\nprimary_host = \"scada/1\"",
            "primary_host \"scada/1\" contains '/'",
        ),
        (
            "url = \"mqtt://b\"\nmax_packet_size = 10",
            "max_packet_size = 10 is out of range, expected 1024..=268435455",
        ),
        ("username = \"x\"", "needs url = \"mqtt://host:1883\""),
        ("url = \"mqtt://b\"\nretries = 3", "unknown field `retries`"),
    ];
    for (section, expected) in cases {
        let errs = errors(&with_upstream(section));
        assert!(
            errs.iter().any(|e| e.contains(expected)),
            "{section:?}: expected {expected:?} in {errs:?}"
        );
        assert!(
            errs.iter().all(|e| e.starts_with("meter1.toml:")
                && e["meter1.toml:".len()..]
                    .split(':')
                    .next()
                    .and_then(|l| l.parse::<usize>().ok())
                    .is_some_and(|l| l >= base - 1)),
            "{section:?}: errors point into [upstream]: {errs:?}"
        );
    }
}

#[test]
fn plain_topics_that_collide_are_refused() {
    let text = with_upstream("url = \"mqtt://b\"\nprofile = \"plain\"")
        .replace("name = \"speed\"", "name = \"state\"");
    let errs = errors(&text);
    assert!(
        errs.iter().any(|e| e
            .contains("topic plant1/line3-gw/plc/state is already the state of device \"plc\"")),
        "{errs:?}"
    );
}

#[test]
fn qos_is_0_to_2_and_a_device_sets_the_default_of_its_metrics() {
    let text = with("poll = \"1s\"", "poll = \"1s\"\nqos = 1\nretain = false");
    let config = Config::from_toml(Path::new("x.toml"), &text).expect("valid");
    let m = &config.devices[0].metrics[0];
    assert_eq!((m.qos, m.retain), (Qos::AtLeastOnce, false));
    let errs = errors(&with("unit    = \"V\"", "unit    = \"V\"\nqos = 3"));
    assert!(
        errs[0].contains("qos = 3 is out of range, expected 0..=2"),
        "{errs:?}"
    );
}

#[test]
fn a_buffer_section_is_checked_and_defaults_apply_without_it() {
    let config = Config::from_toml(Path::new("gw.toml"), GOOD).expect("valid");
    assert_eq!(config.buffer, BufferPolicy::default());
    let text = GOOD.replace(
        "[[bus]]\nname = \"rs485-1\"",
        "[buffer]\nmax_size = 1048576\nsync = \"250ms\"\noverflow = \"drop_newest\"\ndrain_rate = 50\n\n[[bus]]\nname = \"rs485-1\"",
    );
    let config = Config::from_toml(Path::new("gw.toml"), &text).expect("valid");
    assert_eq!(
        config.buffer,
        BufferPolicy {
            max_size: 1_048_576,
            sync: Duration::from_millis(250),
            overflow: crate::config::Overflow::DropNewest,
            drain_rate: 50,
        }
    );
    let bad = GOOD.replace(
        "[[bus]]\nname = \"rs485-1\"",
        "[buffer]\nmax_size = 1000\noverflow = \"oldest\"\n\n[[bus]]\nname = \"rs485-1\"",
    );
    let errs = errors(&bad);
    assert!(
        errs.iter()
            .any(|e| e.contains("[buffer]: max_size = 1000 is out of range")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e
                .contains("unknown overflow \"oldest\", expected one of drop_oldest, drop_newest")),
        "{errs:?}"
    );
}

#[test]
fn broker_limits_default_safely_and_an_empty_password_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("empty"), "\n").expect("write");
    let text = GOOD.replace(
        "[[bus]]\nname = \"rs485-1\"",
        "[broker]\nconnect_timeout = \"3s\"\n\n[[broker.user]]\nname = \"hmi\"\npassword_file = \"empty\"\n\n[[bus]]\nname = \"rs485-1\"",
    );
    let errors = match Config::from_toml(&dir.path().join("gw.toml"), &text) {
        Ok(_) => panic!("an empty password file was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        errors.contains("password_file = \"empty\" is empty"),
        "{errors}"
    );
    let defaults = Config::from_toml(Path::new("gw.toml"), GOOD)
        .expect("valid")
        .broker;
    assert_eq!(defaults.max_packet_size, 256 * 1024);
    assert_eq!(defaults.connect_timeout, Duration::from_secs(10));
    assert!(
        defaults.anonymous_persistent,
        "without users, anonymous clients are the only kind"
    );
    let with_user = GOOD.replace(
        "[[bus]]\nname = \"rs485-1\"",
        "[[broker.user]]\nname = \"hmi\"\npassword_hash = \"$7$101$ZE3ynDDujAAWdLJ8$FJs5vlTv16jzQFAhLcDDZdKGWStcbeXo/2TJgnhCjArhaohuu0m4Z4cylhBNl7y6HLn5kot2DSlN4PYmWBxBAQ==\"\n\n[[bus]]\nname = \"rs485-1\"",
    );
    let broker = Config::from_toml(Path::new("gw.toml"), &with_user)
        .expect("valid")
        .broker;
    assert!(
        !broker.anonymous_persistent,
        "next to users, anonymous clients get no persistent session"
    );
}

#[test]
fn broker_tls_keys_go_together_and_an_open_tls_listener_needs_a_decision() {
    let broker = |section: &str| {
        GOOD.replace(
            "[[bus]]\nname = \"rs485-1\"",
            &format!("[broker]\n{section}\n\n[[bus]]\nname = \"rs485-1\""),
        )
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("broker.crt");
    std::fs::write(&cert, "").expect("cert");
    let good = broker(&format!(
        "tls_listen = \"127.0.0.1:8883\"\ntls_cert = \"{0}\"\ntls_key = \"{0}\"\nsession_expiry = \"30m\"\nmax_publish_rate = 20",
        cert.display()
    ));
    let config = Config::from_toml(Path::new("gw.toml"), &good).expect("valid");
    let tls = config.broker.tls.expect("tls listener");
    assert_eq!(tls.listen, "127.0.0.1:8883".parse().unwrap());
    assert_eq!((tls.cert.clone(), tls.client_ca), (cert.clone(), None));
    assert_eq!(config.broker.session_expiry, Duration::from_secs(1800));
    assert_eq!(config.broker.max_publish_rate, 20);

    let cases = [
        (
            "tls_cert = \"broker.crt\"".to_owned(),
            "[broker]: tls_cert needs tls_listen",
        ),
        (
            "tls_listen = \"127.0.0.1:8883\"".to_owned(),
            "[broker]: tls_listen needs tls_cert (a PEM file)",
        ),
        (
            "tls_listen = \"8883\"".to_owned(),
            "tls_listen = \"8883\" is not an address, expected e.g. \"0.0.0.0:8883\"",
        ),
        (
            format!(
                "tls_listen = \"0.0.0.0:8883\"\ntls_cert = \"{0}\"\ntls_key = \"{0}\"",
                cert.display()
            ),
            "meter1.toml:7: [broker]: tls_listen = \"0.0.0.0:8883\" is reachable from the network",
        ),
        (
            "session_expiry = \"0s\"".to_owned(),
            "session_expiry must be longer than zero",
        ),
    ];
    for (section, expected) in cases {
        let errs = errors(&broker(&section));
        assert!(
            errs.iter().any(|e| e.contains(expected)),
            "{section}: {errs:?}"
        );
    }
}

#[test]
fn a_status_page_beyond_loopback_needs_allow_remote_or_broker_users() {
    let health = |section: &str| {
        GOOD.replace(
            "[[bus]]\nname = \"rs485-1\"",
            &format!("{section}\n\n[[bus]]\nname = \"rs485-1\""),
        )
    };
    let local = Config::from_toml(
        Path::new("gw.toml"),
        &health("[health]\nlisten = \"127.0.0.1:9185\""),
    )
    .expect("loopback needs nothing");
    assert_eq!(local.health.map(|h| h.needs_login()), Some(false));

    let remote = "[health]\nlisten = \"0.0.0.0:9185\"";
    let errs = errors(&health(remote));
    assert!(
        errs.iter().any(|e| e.contains(
            "meter1.toml:7: [health]: listen = \"0.0.0.0:9185\" serves the status page, /metrics and /healthz beyond this machine, expected either allow_remote = true"
        )),
        "{errs:?}"
    );

    let open = Config::from_toml(
        Path::new("gw.toml"),
        &health(&format!("{remote}\nallow_remote = true")),
    )
    .expect("allow_remote opens it");
    assert_eq!(open.health.map(|h| h.needs_login()), Some(false));

    let dir = tempfile::tempdir().expect("tempdir");
    let password = dir.path().join("tech.pass");
    std::fs::write(&password, "panel-42").expect("password");
    let users = format!(
        "{remote}\n\n[[broker.user]]\nname = \"tech\"\npassword_file = \"{}\"",
        password.display()
    );
    let guarded = Config::from_toml(Path::new("gw.toml"), &health(&users)).expect("users log in");
    assert_eq!(guarded.health.map(|h| h.needs_login()), Some(true));
}

const PANEL: &str = r#"
[[device]]
name = "panel"
gpio = "cdev"
chip = "/dev/gpiochip1"

[[device.metric]]
name = "door"
pin = 17
direction = "input"
pull = "up"
active_low = true

[[device.metric]]
name = "water"
pin = 22
mode = "counter"
debounce = "5ms"
unit = "L"

[[device.metric]]
name = "light"
pin = 23
direction = "output"
writable = true
initial = true
safe = false
safe_after = "30s"
"#;

fn with_panel(find: &str, replace: &str) -> String {
    assert!(PANEL.contains(find), "{find}");
    format!("{GOOD}{}", PANEL.replacen(find, replace, 1))
}

#[test]
fn a_gpio_device_becomes_its_own_bus_and_its_pins_typed_metrics() {
    let config = Config::from_toml(Path::new("panel.toml"), &format!("{GOOD}{PANEL}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let (id, panel) = config.device_by_name("panel").unwrap();
    assert_eq!(id, 2);
    assert_eq!(
        panel.attachment,
        Attachment::Gpio(GpioChip {
            backend: GpioBackend::Cdev,
            chip: PathBuf::from("/dev/gpiochip1"),
        })
    );
    assert_eq!(config.buses.len(), 2, "no bus is made up for it");
    assert_eq!(
        config.acquisitions(),
        [
            Acquisition::Bus(0),
            Acquisition::Bus(1),
            Acquisition::Gpio(2)
        ],
        "a task of its own"
    );
    let names: Vec<&str> = panel.metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["door", "water", "water/rate", "light"]);
    let types: Vec<DataType> = panel.metrics.iter().map(Metric::value_type).collect();
    assert_eq!(
        types,
        [DataType::Bool, DataType::U64, DataType::F64, DataType::Bool]
    );
    assert_eq!(panel.metrics[2].unit.as_deref(), Some("L/s"));
    let door = panel.metrics[0].pin().unwrap();
    assert!(door.active_low);
    assert_eq!(
        door.role,
        PinRole::Level(InputLine {
            pull: Pull::Up,
            debounce: Duration::from_millis(20),
            sim_toggle: None,
        })
    );
    assert!(!panel.metrics[0].writable, "inputs are read-only");
    assert!(panel.metrics[3].writable);
    assert_eq!(
        panel.metrics[3].pin().unwrap().role,
        PinRole::Output {
            initial: true,
            safe: Some(false),
            safe_after: Some(Duration::from_secs(30)),
        }
    );
}

#[test]
fn gpio_mistakes_are_refused_with_their_line() {
    let cases: Vec<(String, &str)> = vec![
        (
            with_panel("pin = 22", "pin = 17"),
            "pin 17 is already used by metric \"door\"",
        ),
        (
            with_panel("gpio = \"cdev\"", "gpio = \"wiringpi\""),
            "unknown gpio \"wiringpi\", expected one of cdev, rppal, sim",
        ),
        (
            with_panel("pull = \"up\"\nactive_low", "initial = true\nactive_low"),
            "initial does not apply to an input",
        ),
        (
            with_panel("initial = true\nsafe", "pull = \"up\"\nsafe"),
            "pull does not apply to direction = \"output\"",
        ),
        (
            with_panel("active_low = true", "active_low = true\nwritable = true"),
            "an input pin is read-only",
        ),
        (
            with_panel("safe = false\n", ""),
            "safe_after needs safe = true or false",
        ),
        (with_panel("pin = 23\n", ""), "a GPIO metric needs pin"),
        (
            with_panel("pin = 17\n", "pin = 17\ntable = \"coil\"\n"),
            "table applies only to Modbus metrics",
        ),
        (
            with_panel(
                "chip = \"/dev/gpiochip1\"",
                "chip = \"/dev/gpiochip1\"\nunit = 3",
            ),
            "unit applies only to Modbus devices",
        ),
        (
            with_panel(
                "chip = \"/dev/gpiochip1\"",
                "chip = \"/dev/gpiochip1\"\nidentify = true",
            ),
            "identify applies only to Modbus devices",
        ),
        (
            with_panel("gpio = \"cdev\"\nchip", "gpio = \"sim\"\nchip"),
            "chip applies only to gpio = \"cdev\"",
        ),
        (
            with_panel("mode = \"counter\"", "mode = \"pulses\""),
            "expected one of level, counter",
        ),
    ];
    for (text, expected) in cases {
        let errors = errors(&text);
        assert!(
            errors
                .iter()
                .any(|e| e.contains(expected) && e.contains("meter1.toml:")),
            "expected {expected:?} with file:line, got {errors:#?}"
        );
    }
}

/// A site with two meters of one model (kept in an included file) and a
/// PLC written with register numbers.
const SITE: &str = r#"
include = ["models/*.toml"]

[node]
group_id = "plant1"
node_id = "gw"

[[bus]]
name = "rs485"
kind = "rtu"
port = "/dev/ttyUSB0"

[[device]]
name = "m1"
bus = "rs485"
unit = 1
model = "meter"

[[device]]
name = "m2"
bus = "rs485"
unit = 2
model = "meter"

[[device.metric]]
name = "power"
register = 30013
type = "f32"
unit = "kW"

[[device.metric]]
name = "status"
register = 40101
type = "u16"
"#;

const METER: &str = r#"
[[model]]
name = "meter"
word_order = "little"
max_read_registers = 60

[[model.metric]]
name = "voltage"
register = 30001
type = "f32"
unit = "V"

[[model.metric]]
name = "power"
table = "input"
address = 12
type = "f32"
unit = "W"
"#;

/// Writes `files` (path relative to a new directory, text) and loads `main.toml` there.
fn load_site(files: &[(&str, &str)]) -> (tempfile::TempDir, Result<Config, ConfigError>) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, text).expect("write");
    }
    let config = Config::load(&dir.path().join("main.toml"));
    (dir, config)
}

#[test]
fn a_model_gives_its_metrics_and_defaults_and_a_device_overrides_one_by_name() {
    let (_dir, config) = load_site(&[("main.toml", SITE), ("models/meter.toml", METER)]);
    let config = config.expect("valid");
    let (m1, m2) = (&config.devices[0], &config.devices[1]);
    assert_eq!(m1.model.as_deref(), Some("meter"));
    let names = |d: &Device| d.metrics.iter().map(|m| m.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(m1), ["voltage", "power"]);
    assert_eq!(
        names(m2),
        ["voltage", "power", "status"],
        "own metrics follow the model's"
    );
    let register = |d: &Device, i: usize| d.metrics[i].register().map(|r| (r.table, r.address));
    assert_eq!(
        register(m1, 0),
        Some((Table::Input, 0)),
        "30001 is input register 0"
    );
    assert_eq!(register(m1, 1), Some((Table::Input, 12)));
    assert_eq!(
        m2.metrics[1].unit.as_deref(),
        Some("kW"),
        "the override replaced the whole metric"
    );
    assert_eq!(register(m2, 2), Some((Table::Holding, 100)));
    let limits = |d: &Device| match &d.attachment {
        Attachment::Modbus(u) => u.limits.max_registers,
        Attachment::Gpio(_) => 0,
    };
    assert_eq!(
        (limits(m1), limits(m2)),
        (60, 60),
        "defaults from the model"
    );
    let order = |d: &Device| d.metrics[0].register().map(|r| r.layout.word_order);
    assert_eq!(order(m1), Some(WordOrder::Little));
}

#[test]
fn an_error_in_a_model_points_at_the_model_file_and_names_the_device() {
    let broken = METER.replace(
        "type = \"f32\"\nunit = \"V\"",
        "type = \"f33\"\nunit = \"V\"",
    );
    let (dir, config) = load_site(&[("main.toml", SITE), ("models/meter.toml", &broken)]);
    let message = config.expect_err("invalid").to_string();
    let model_file = dir.path().join("models/meter.toml");
    let expected = format!(
        "{}:10: device \"m1\" (model \"meter\"), metric \"voltage\": unknown type \"f33\"",
        model_file.display()
    );
    assert!(message.contains(&expected), "{message}");
    assert!(
        message.contains("device \"m2\" (model \"meter\")"),
        "{message}"
    );
}

#[test]
fn unknown_models_missing_includes_and_duplicate_models_are_refused() {
    let (_dir, config) = load_site(&[(
        "main.toml",
        &SITE.replace("model = \"meter\"", "model = \"metre\""),
    )]);
    let message = config.expect_err("invalid").to_string();
    assert!(
        message.contains("include \"models/*.toml\": no file matches"),
        "{message}"
    );
    assert!(
        message.contains("model \"metre\" is not defined"),
        "{message}"
    );
    let twice = format!("{SITE}\n{METER}");
    let (_dir, config) = load_site(&[("main.toml", &twice), ("models/meter.toml", METER)]);
    let message = config.expect_err("invalid").to_string();
    assert!(
        message.contains("model \"meter\" is already defined"),
        "{message}"
    );
    let (_dir, config) = load_site(&[("main.toml", SITE), ("models/meter.toml", "[node]\n")]);
    let message = config.expect_err("invalid").to_string();
    assert!(
        message.contains("meter.toml:1: unknown field `node`"),
        "{message}"
    );
}

#[test]
fn a_register_number_or_a_table_and_address_but_not_both() {
    let text = with(
        "table   = \"input\"\naddress = 0\ntype    = \"f32\"",
        "register = 30001\ntype    = \"f32\"",
    );
    let config = Config::from_toml(Path::new("x.toml"), &text).expect("valid");
    let r = config.devices[0].metrics[0]
        .register()
        .map(|r| (r.table, r.address));
    assert_eq!(r, Some((Table::Input, 0)));
    let both = with(
        "table   = \"input\"\naddress = 0\ntype    = \"f32\"",
        "table = \"input\"\nregister = 30001\ntype    = \"f32\"",
    );
    let errs = errors(&both);
    assert!(
        errs.iter()
            .any(|e| e.contains("register = 30001 and table both give the register")),
        "{errs:?}"
    );
    for (number, why) in [
        (20001, "starts with 2"),
        (40000, "numbers count from 1"),
        (-1, "not a register number"),
    ] {
        let bad = with(
            "table   = \"input\"\naddress = 0\ntype    = \"f32\"",
            &format!("register = {number}\ntype    = \"f32\""),
        );
        let errs = errors(&bad);
        assert!(errs.iter().any(|e| e.contains(why)), "{number}: {errs:?}");
    }
}

#[test]
fn devices_of_one_model_share_one_metric_list_unless_theirs_differ() {
    let three = format!(
        "{SITE}\n[[device]]\nname = \"m3\"\nbus = \"rs485\"\nunit = 3\nmodel = \"meter\"\n"
    );
    let (_dir, config) = load_site(&[("main.toml", &three), ("models/meter.toml", METER)]);
    let config = config.expect("valid");
    let (m1, m2, m3) = (&config.devices[0], &config.devices[1], &config.devices[2]);
    assert_eq!(m3.name, "m3");
    assert!(
        std::sync::Arc::ptr_eq(&m1.metrics, &m3.metrics),
        "one list for both"
    );
    assert!(
        !std::sync::Arc::ptr_eq(&m1.metrics, &m2.metrics),
        "m2 overrides a metric"
    );
}

#[test]
fn a_model_no_device_uses_is_checked_too() {
    let spare = METER
        .replace("name = \"meter\"", "name = \"spare\"")
        .replace("f32\"\nunit = \"V\"", "f33\"\nunit = \"V\"");
    let (_dir, config) = load_site(&[
        ("main.toml", SITE),
        ("models/meter.toml", METER),
        ("models/spare.toml", &spare),
    ]);
    let message = config.expect_err("invalid").to_string();
    assert!(
        message
            .contains("spare.toml:10: model \"spare\", metric \"voltage\": unknown type \"f33\""),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1, "reported once: {message}");
}

#[test]
fn a_model_may_say_how_its_devices_identify_and_scan_finds_it_by_that() {
    let identified = METER.replace(
        "max_read_registers = 60\n",
        "max_read_registers = 60\nidentity = { vendor = \"ACME\", product_code = \"PM-9\" }\n",
    );
    let (dir, config) = load_site(&[("main.toml", SITE), ("models/meter.toml", &identified)]);
    let config = config.expect("valid");
    let meter = config
        .models
        .iter()
        .find(|m| m.name == "meter")
        .expect("listed");
    assert_eq!(meter.file, dir.path().join("models/meter.toml"));
    let identity = |vendor: &str, product_code: &str| crate::core::identity::Identity {
        vendor: vendor.into(),
        product_code: product_code.into(),
        revision: "1".into(),
    };
    assert!(meter.fits(&identity("acme", "PM-9")));
    assert!(!meter.fits(&identity("ACME", "PM-10")));
    let installed =
        KnownModel::installed(&dir.path().join("models/*.toml")).expect("a models file");
    assert_eq!(installed.len(), 1);
    assert_eq!(
        (
            &installed[0].name,
            &installed[0].identity,
            &installed[0].file
        ),
        (&meter.name, &meter.identity, &meter.file)
    );
    let names: Vec<&str> = meter.metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        ["voltage", "power"],
        "the model's own metrics, for a Template definition"
    );

    let empty = identified.replace("vendor = \"ACME\"", "vendor = \" \"");
    let (_dir, config) = load_site(&[("main.toml", SITE), ("models/meter.toml", &empty)]);
    let message = config.expect_err("invalid").to_string();
    assert!(
        message.contains("meter.toml:6: model \"meter\": identity.vendor must not be empty"),
        "{message}"
    );
    let (_dir, config) = load_site(&[
        ("main.toml", SITE),
        (
            "models/meter.toml",
            &identified.replace("product_code", "product"),
        ),
    ]);
    let message = config.expect_err("invalid").to_string();
    assert!(
        message.contains("meter.toml:6: unknown field `product`"),
        "{message}"
    );
}

#[test]
fn identify_is_on_by_default_and_applies_only_to_modbus_devices() {
    let config = Config::from_toml(Path::new("x.toml"), GOOD).expect("valid");
    assert!(config.devices[0].modbus().is_some_and(|m| m.identify));
    let off = with("unit = 1\n", "unit = 1\nidentify = false\n");
    let config = Config::from_toml(Path::new("x.toml"), &off).expect("valid");
    assert!(config.devices[0].modbus().is_some_and(|m| !m.identify));
}

#[test]
fn connect_jitter_rebirth_interval_and_legacy_state_are_checked() {
    let upstream = |keys: &str| {
        with(
            "[[bus]]\nname = \"rs485-1\"",
            &format!("[upstream]\nurl = \"mqtt://b\"\n{keys}\n\n[[bus]]\nname = \"rs485-1\""),
        )
    };
    let config = Config::from_toml(Path::new("x.toml"), &upstream("")).expect("valid");
    let u = config.upstream.as_ref().expect("upstream");
    assert_eq!(u.connect_jitter, Duration::from_secs(2));
    assert_eq!(u.rebirth_min_interval, Duration::from_secs(1));
    assert!(!u.primary_host_legacy);
    assert_eq!(u.compression, Compression::None);
    let set = upstream(
        "connect_jitter = \"0s\"\nrebirth_min_interval = \"5s\"\nprimary_host = \"scada\"\nprimary_host_legacy = true",
    );
    let config = Config::from_toml(Path::new("x.toml"), &set).expect("valid");
    let u = config.upstream.as_ref().expect("upstream");
    assert_eq!(
        (
            u.connect_jitter,
            u.rebirth_min_interval,
            u.primary_host_legacy
        ),
        (Duration::ZERO, Duration::from_secs(5), true)
    );
    for (keys, why) in [
        (
            "primary_host_legacy = true",
            "primary_host_legacy needs primary_host",
        ),
        (
            "connect_jitter = \"10m\"",
            "connect_jitter must be at most 5m",
        ),
        (
            "rebirth_min_interval = \"2m\"",
            "rebirth_min_interval must be at most 1m",
        ),
        (
            "profile = \"plain\"\nrebirth_min_interval = \"2s\"",
            "rebirth_min_interval applies only to profile = \"sparkplug\"",
        ),
        (
            "profile = \"plain\"\ncompression = \"gzip\"",
            "compression applies only to profile = \"sparkplug\"",
        ),
        (
            "compression = \"zip\"",
            "expected one of none, gzip, deflate",
        ),
    ] {
        let errs = errors(&upstream(keys));
        assert!(errs.iter().any(|e| e.contains(why)), "{keys}: {errs:?}");
    }
}

#[test]
fn templates_are_for_the_sparkplug_profile() {
    let errs = errors(&with(
        "[[bus]]\nname = \"rs485-1\"",
        "[upstream]\nurl = \"mqtt://b\"\nprofile = \"plain\"\ntemplates = true\n\n[[bus]]\nname = \"rs485-1\"",
    ));
    assert!(
        errs.iter()
            .any(|e| e.contains("templates applies only to profile = \"sparkplug\"")),
        "{errs:?}"
    );
}

#[test]
fn rs485_direction_control_forms_and_misuse() {
    let rs485 = |value: &str| {
        with(
            "timeout = \"500ms\"",
            &format!("timeout = \"500ms\"\nrs485 = {value}"),
        )
    };
    let direction = |value: &str| {
        let config = Config::from_toml(Path::new("x.toml"), &rs485(value)).expect("valid");
        match &config.buses[0].transport {
            Transport::Rtu(line) => line.direction.clone(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(direction("\"auto\""), Direction::Auto);
    assert_eq!(direction("\"rts\""), Direction::Rts);
    assert_eq!(
        direction("{ mode = \"kernel\", rts_on_send = false, delay_before = \"2ms\" }"),
        Direction::Kernel(KernelRs485 {
            rts_on_send: false,
            delay_before_ms: 2,
            delay_after_ms: 0,
        })
    );
    assert_eq!(
        direction("{ gpio = \"sim\", chip = \"bench\", line = 17 }"),
        Direction::Pin(DriverPin {
            chip: GpioChip {
                backend: GpioBackend::Sim,
                chip: "bench".into(),
            },
            line: 17,
        })
    );
    for (value, why) in [
        ("\"half-duplex\"", "rs485 = \"half-duplex\" is unknown"),
        ("{ gpio = \"sim\" }", "rs485 with gpio needs line"),
        ("{ gpio = \"cdev\", line = 4 }", "needs chip"),
        ("{ mode = \"kernel\", delay_after = \"2s\" }", "at most 1s"),
        ("{ mode = \"kernel\", line = 4 }", "rs485 tables are"),
    ] {
        let errs = errors(&rs485(value));
        assert!(errs.iter().any(|e| e.contains(why)), "{value}: {errs:?}");
    }
    let tcp = with(
        "kind = \"tcp\"\naddress = \"10.0.0.5:502\"",
        "kind = \"tcp\"\naddress = \"10.0.0.5:502\"\nrs485 = \"rts\"",
    );
    assert!(
        errors(&tcp)
            .iter()
            .any(|e| e.contains("rs485 applies only to kind = \"rtu\"")),
        "{:?}",
        errors(&tcp)
    );
    let twice = format!(
        "{}\n[[device]]\nname = \"panel\"\ngpio = \"sim\"\n[[device.metric]]\nname = \"relay\"\npin = 17\ndirection = \"output\"\n",
        rs485("{ gpio = \"sim\", line = 17 }")
    );
    let errs = errors(&twice);
    assert!(
        errs.iter()
            .any(|e| e.contains("rs485 line 17 is already used by device \"panel\"")),
        "{errs:?}"
    );
}
