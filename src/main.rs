//! The `fieldmq` command: check a config, read a device once, or run the gateway.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use fieldmq::acquire::engine::Engine;
use fieldmq::acquire::modbus::cycle::{self, Raw};
use fieldmq::acquire::modbus::link::Link;
use fieldmq::acquire::modbus::plan::ReadPlan;
use fieldmq::config::{Config, ConfigError, LinkKind, Profile};
use fieldmq::core::event::DeviceEvent;
use fieldmq::sink::uplink::Publisher;

/// Prints a line to stdout; a closed pipe (`fieldmq check | head`) ends the
/// output quietly instead of panicking as `println!` would.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// sysexits.h EX_CONFIG: the configuration is wrong, so restarting will not help.
const EX_CONFIG: u8 = 78;

#[derive(Debug, Parser)]
#[command(
    name = "fieldmq",
    version,
    about = "Industrial edge gateway: Modbus devices to MQTT and Sparkplug B"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text (default; without timestamps under systemd, whose journal adds them) or as JSON objects.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per event (timestamp, level, target, fields).
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a config and print its buses, devices and read plan.
    Check {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Poll one device once and print what it answered.
    Read {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
        /// The device's name in the config.
        #[arg(long, short)]
        device: String,
        /// Print one JSON object {"metric": value}; bad quality is null.
        #[arg(long)]
        json: bool,
    },
    /// Run the gateway until SIGINT or SIGTERM.
    Run {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print MQTT traffic readably: Sparkplug B decoded, one line per metric; other payloads as text.
    Tail {
        /// The server (mqtt://host:port); default the local broker.
        #[arg(
            long,
            default_value = "mqtt://127.0.0.1:1883",
            conflicts_with = "config"
        )]
        url: String,
        /// Connect the way this config's [upstream] does (first server, TLS, credentials).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// User name for --url.
        #[arg(long, requires = "password_file")]
        username: Option<String>,
        /// File holding the password for --username.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Ask each edge node whose data arrives before its birth to rebirth
        /// (an NCMD Node Control/Rebirth, once per node), so its metrics get
        /// their names; the broker must let this client publish NCMD.
        #[arg(long)]
        rebirth: bool,
        /// Topic filters; default all topics.
        filters: Vec<String>,
    },
    /// Run a simulated meter (Modbus TCP) and GPIO panel into the embedded broker, in both profiles; no hardware or config needed.
    Demo {
        /// Where the simulated meter listens (Modbus TCP).
        #[arg(long, default_value = "127.0.0.1:5020")]
        modbus_listen: SocketAddr,
        /// Where the embedded MQTT broker listens.
        #[arg(long, default_value = fieldmq::config::DEFAULT_LISTEN)]
        listen: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let outcome = match cli.command {
        Command::Check { config } => with_config(&config, |config| {
            print_check(&config);
            Ok(ExitCode::SUCCESS)
        }),
        Command::Read {
            config,
            device,
            json,
        } => with_config(&config, |config| {
            runtime()?.block_on(read(&config, &device, json))
        }),
        Command::Run { config } => with_config(&config, |config| runtime()?.block_on(run(config))),
        Command::Demo {
            modbus_listen,
            listen,
        } => runtime().and_then(|rt| rt.block_on(demo(modbus_listen, listen))),
        Command::Tail {
            url,
            config,
            username,
            password_file,
            rebirth,
            filters,
        } => {
            let options = match config {
                Some(path) => match Config::load(&path) {
                    Ok(config) => tail_options_from(&config),
                    Err(e) => return config_error(&path, &e),
                },
                None => tail_options(&url, username, password_file.as_deref()),
            };
            options.and_then(|o| runtime()?.block_on(tail(o, filters, rebirth)))
        }
    };
    outcome.unwrap_or_else(|e| {
        eprintln!("fieldmq: {e:#}");
        ExitCode::FAILURE
    })
}

/// Loads the config and runs `then` with it; a config error exits with EX_CONFIG.
fn with_config(
    path: &Path,
    then: impl FnOnce(Config) -> anyhow::Result<ExitCode>,
) -> anyhow::Result<ExitCode> {
    match Config::load(path) {
        Ok(config) => then(config),
        Err(e) => Ok(config_error(path, &e)),
    }
}

fn config_error(path: &Path, e: &ConfigError) -> ExitCode {
    match e {
        ConfigError::Invalid { .. } => {
            eprintln!("{e}");
            eprintln!("fieldmq: {} is not a valid config", path.display());
        }
        ConfigError::Io { .. } => eprintln!("fieldmq: {e}"),
    }
    ExitCode::from(EX_CONFIG)
}

async fn demo(listen: SocketAddr, broker: SocketAddr) -> anyhow::Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for the simulated meter (try --modbus-listen 127.0.0.1:0)"))?;
    let address = listener.local_addr().context("simulated meter address")?;
    let sim = fieldmq::sim::Simulator::new();
    let stop_meter = CancellationToken::new();
    let animation = tokio::spawn(fieldmq::sim::demo::animate(sim.clone(), stop_meter.clone()));
    // Give the meter its first readings before the first poll.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let server = tokio::spawn(sim.serve_tcp(listener));
    // State (bdSeq, the buffer, counter totals) and the uplink's password
    // live in a directory of this run, removed at the end. Its name is not
    // guessable and it is created fresh, owner-only: in a shared /tmp
    // another user could otherwise read the password or plant the directory.
    let mut secret = [0u8; 16];
    getrandom::fill(&mut secret).context("the OS random source")?;
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let data_dir = std::env::temp_dir().join(format!(
        "fieldmq-demo-{}-{}",
        std::process::id(),
        hex(&secret[..4])
    ));
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let password = hex(&secret[4..]);
    std::fs::write(data_dir.join("uplink.pass"), password)
        .with_context(|| format!("cannot write to {}", data_dir.display()))?;
    let text = fieldmq::sim::demo::config_text(address, broker, &data_dir);
    let config =
        Config::from_toml(Path::new("<demo>"), &text).context("the demo's built-in device map")?;
    let (host, port) = (broker.ip(), broker.port());
    say!(
        "fieldmq demo: a simulated meter serves Modbus TCP on {address}; polling it every second."
    );
    say!("  any Modbus client can read it too: unit 1, input registers 0.. (f32, big-endian)");
    say!("  a simulated GPIO panel: a door contact, a water meter's pulses, a relay");
    say!("  live values in the embedded MQTT broker on {broker}, as plain JSON:");
    say!("    mosquitto_sub -h {host} -p {port} -t 'demo/fieldmq-demo/#' -v");
    say!("  and as Sparkplug B (protobuf):");
    say!("    mosquitto_sub -h {host} -p {port} -t 'spBv1.0/demo/#' -v");
    say!(
        "  switch the relay: mosquitto_pub -h {host} -p {port} -t 'demo/fieldmq-demo/panel/relay/set' -m true"
    );
    say!("  stop with Ctrl-C");
    let code = run(config).await;
    stop_meter.cancel();
    server.abort();
    let _ = animation.await;
    if let Err(e) = std::fs::remove_dir_all(&data_dir) {
        tracing::warn!(dir = %data_dir.display(), error = %e, "cannot remove the demo's state");
    }
    code
}

/// A client id of its own, so tailing never takes over the gateway's session.
fn tail_client_id() -> String {
    format!("fieldmq-tail-{}", std::process::id())
}

fn tail_options(
    url: &str,
    username: Option<String>,
    password_file: Option<&Path>,
) -> anyhow::Result<rumqttc::MqttOptions> {
    let server = fieldmq::config::parse_url(url).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        !server.tls,
        "{url}: for mqtts:// use --config with the [upstream] TLS settings"
    );
    let mut options = rumqttc::MqttOptions::new(tail_client_id(), server.host, server.port);
    if let (Some(user), Some(file)) = (username, password_file) {
        let password = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        options.set_credentials(user, password.trim_end());
    }
    Ok(options)
}

fn tail_options_from(config: &Config) -> anyhow::Result<rumqttc::MqttOptions> {
    let mut upstream = config
        .upstream
        .clone()
        .with_context(|| format!("{} has no [upstream]", config.path.display()))?;
    upstream.client_id = tail_client_id();
    upstream.clean_session = true;
    let server = upstream
        .servers
        .first()
        .context("[upstream] has no server")?;
    let tls = fieldmq::sink::uplink::options::tls_config(&upstream)?;
    Ok(fieldmq::sink::uplink::options::mqtt_options(
        &upstream,
        server,
        tls.as_ref(),
    ))
}

/// Subscribes and prints until Ctrl-C; reconnects (and subscribes again) on
/// its own. With `rebirth`, asks unborn nodes for their births.
async fn tail(
    mut options: rumqttc::MqttOptions,
    filters: Vec<String>,
    rebirth: bool,
) -> anyhow::Result<ExitCode> {
    use prost::Message as _;
    use rumqttc::{Event, Packet, QoS, SubscribeFilter};
    options
        .set_keep_alive(std::time::Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(16 << 20, 1 << 20);
    let filters = if filters.is_empty() {
        vec!["#".to_owned()]
    } else {
        filters
    };
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 16);
    let mut decoder = fieldmq::tail::Tail::new();
    let mut failing = false;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let event = tokio::select! {
            _ = &mut stop => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failing = false;
                let subs = filters
                    .iter()
                    .map(|f| SubscribeFilter::new(f.clone(), QoS::AtMostOnce));
                if let Err(e) = client.try_subscribe_many(subs) {
                    eprintln!(
                        "fieldmq tail: cannot subscribe now ({e}); retrying on the next connection"
                    );
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
                for line in decoder.lines(&p.topic, &p.payload) {
                    say!("{now} {line}");
                }
                if let Some(ncmd) = rebirth.then(|| decoder.rebirth_topic(&p.topic)).flatten() {
                    let request = fieldmq::profile::sparkplug::payload::rebirth_request(
                        fieldmq::core::value::now_ms(),
                    );
                    match client.try_publish(
                        &ncmd,
                        QoS::AtLeastOnce,
                        false,
                        request.encode_to_vec(),
                    ) {
                        Ok(()) => eprintln!(
                            "fieldmq tail: no birth seen yet; asking for one on {ncmd} (a server that refuses the request sends nothing back)"
                        ),
                        Err(e) => eprintln!("fieldmq tail: cannot ask for a rebirth now ({e})"),
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    eprintln!("fieldmq tail: the server refused a subscription");
                } else {
                    eprintln!("fieldmq tail: subscribed to {}", filters.join(" "));
                }
            }
            Ok(_) => {}
            Err(e) => {
                if !failing {
                    eprintln!("fieldmq tail: {e}; retrying");
                    failing = true;
                }
                tokio::select! {
                    _ = &mut stop => break,
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal as _;
    // tokio-modbus warns once per byte it skips while resyncing an RTU frame:
    // a wrong baud rate would flood the journal with what our own bus task
    // already reports once per failed poll. rmqtt's plugin loader warns at
    // every start that the retainer runs on its defaults, which it should.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,tokio_modbus=error,rmqtt=warn,rmqtt::plugin=error,rmqtt_retainer=warn",
        )
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        // systemd sets JOURNAL_STREAM when stderr goes to the journal, which
        // stamps every line itself; colour codes only help a terminal.
        LogFormat::Text if std::env::var_os("JOURNAL_STREAM").is_some() => {
            builder.without_time().with_ansi(false).init()
        }
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn print_check(config: &Config) {
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
    for (index, bus) in config.buses.iter().enumerate() {
        let link = match &bus.link {
            LinkKind::Tcp { address } => format!("tcp {address}"),
            LinkKind::RtuOverTcp { address } => format!("rtu-over-tcp {address}"),
            LinkKind::Rtu(line) => {
                let parity = format!("{:?}", line.parity).chars().next().unwrap_or('N');
                format!(
                    "rtu {} {} {}{}{}",
                    line.port, line.baud, line.data_bits, parity, line.stop_bits
                )
            }
            LinkKind::Gpio(chip) => match chip.backend {
                fieldmq::config::GpioBackend::Cdev => format!("gpio {}", chip.chip.display()),
                fieldmq::config::GpioBackend::Rppal => "gpio rppal".to_owned(),
                fieldmq::config::GpioBackend::Sim => "gpio simulated".to_owned(),
            },
        };
        say!();
        if let LinkKind::Gpio(_) = bus.link {
            say!("bus {} ({link})", bus.name);
            for device in config.devices.iter().filter(|d| d.bus == index) {
                print_pins(device);
            }
            continue;
        }
        say!(
            "bus {} ({link}, timeout {})",
            bus.name,
            humantime::format_duration(bus.timeout)
        );
        for device in config.devices.iter().filter(|d| d.bus == index) {
            let plan = ReadPlan::for_device(device);
            say!(
                "  device {} unit {} every {}: {} metrics in {} requests",
                device.name,
                device.unit,
                humantime::format_duration(device.poll),
                device.metrics.len(),
                plan.requests().len()
            );
            for request in plan.requests() {
                let names: Vec<&str> = request
                    .members
                    .iter()
                    .filter_map(|m| device.metrics.get(m.metric).map(|m| m.name.as_str()))
                    .collect();
                say!(
                    "    FC{:02} {:<8} start {:<5} count {:<4} -> {}",
                    request.table.read_function(),
                    request.table.name(),
                    request.start,
                    request.count,
                    names.join(", ")
                );
            }
        }
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
    for metric in &device.metrics {
        let Some(pin) = &metric.pin else { continue };
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

async fn read(config: &Config, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let (id, device) = config.device_by_name(name).with_context(|| {
        let known: Vec<&str> = config.devices.iter().map(|d| d.name.as_str()).collect();
        format!(
            "no device \"{name}\" in {}; devices: {}",
            config.path.display(),
            known.join(", ")
        )
    })?;
    let bus = config
        .buses
        .get(device.bus)
        .context("device refers to a missing bus")?;
    let mut plan = ReadPlan::for_device(device);
    let cycle;
    let (mut readings, answered) = if let LinkKind::Gpio(chip) = &bus.link {
        let readings = fieldmq::acquire::gpio::read_once(id, device, chip, &config.node.data_dir);
        let answered = readings.iter().any(|r| matches!(r.raw, Raw::Bit(_)));
        (readings, answered)
    } else {
        let mut link = Link::new(bus);
        cycle = cycle::poll(&mut link, device, &mut plan).await;
        link.close().await;
        (cycle::decode(device, &plan, &cycle), cycle.answered)
    };
    readings.sort_by_key(|r| r.metric);
    if json {
        let object: serde_json::Map<String, serde_json::Value> = readings
            .iter()
            .filter_map(|r| {
                let metric = device.metrics.get(r.metric)?;
                let value = r
                    .value
                    .as_ref()
                    .map_or(serde_json::Value::Null, |v| v.to_json());
                Some((metric.name.clone(), value))
            })
            .collect();
        say!("{}", serde_json::Value::Object(object));
    } else {
        let rows: Vec<[String; 5]> = readings
            .iter()
            .filter_map(|r| {
                let metric = device.metrics.get(r.metric)?;
                let (value, quality) = match &r.value {
                    Ok(v) => (v.to_string(), "good".to_owned()),
                    Err(fault) => ("-".to_owned(), format!("bad: {fault}")),
                };
                let raw = match r.raw {
                    Raw::Registers(regs) => regs
                        .iter()
                        .map(|r| format!("{r:04X}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                    Raw::Bit(bit) => u8::from(bit).to_string(),
                    Raw::Missing => "-".to_owned(),
                };
                Some([
                    metric.name.clone(),
                    value,
                    metric.unit.clone().unwrap_or_default(),
                    quality,
                    raw,
                ])
            })
            .collect();
        print_table(["metric", "value", "unit", "quality", "raw"], &rows);
    }
    if answered {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("fieldmq: device \"{name}\" did not answer");
        Ok(ExitCode::FAILURE)
    }
}

fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        say!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// How long the sinks wait, after a stop signal, for the sources to finish
/// (a bus transaction under way takes up to its timeout).
const SINK_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

async fn run(config: Config) -> anyhow::Result<ExitCode> {
    let config = Arc::new(config);
    // Sources stop first, and the sinks end when the event stream does, so
    // what the sources say last (GPIO outputs going safe) is still published
    // before the goodbye.
    let health = match config.health {
        Some(address) => {
            let listener = fieldmq::ops::health::bind(address).await?;
            tracing::info!(%address, "health endpoint: /healthz and /metrics");
            Some((listener, fieldmq::ops::health::install_recorder()?))
        }
        None => None,
    };
    let sources = CancellationToken::new();
    let shutdown = CancellationToken::new();
    let mut engine = Engine::start(Arc::clone(&config), &sources);
    // The local broker listens before the uplink connects, so an uplink
    // into that same broker (the demo) succeeds at the first attempt.
    #[cfg(feature = "broker")]
    let local = match config.broker.enabled {
        true => Some(
            fieldmq::sink::local::LocalFeed::start(
                Arc::clone(&config),
                engine.writes.clone(),
                Arc::clone(&engine.stats),
                engine.liveness.pulse("local broker"),
            )
            .await
            .with_context(|| {
                format!(
                    "cannot start the local broker ({}: set [broker] listen, or enabled = false)",
                    config.path.display()
                )
            })?,
        ),
        false => None,
    };
    #[cfg(not(feature = "broker"))]
    let local: Option<std::convert::Infallible> = None;
    let publisher = match &config.upstream {
        Some(_) => Some(
            Publisher::start(
                Arc::clone(&config),
                engine.writes.clone(),
                Arc::clone(&engine.stats),
                engine.liveness.pulse("uplink"),
            )
            .context("cannot start the upstream connection")?,
        ),
        None => None,
    };
    tracing::info!(config = %config.path.display(), buses = config.buses.len(), devices = config.devices.len(), upstream = publisher.is_some(), local_broker = local.is_some(), "fieldmq running");
    let log_values = publisher.is_none();
    let sinks =
        usize::from(publisher.is_some()) + usize::from(local.is_some()) + usize::from(log_values);
    let mut receivers = fieldmq::acquire::engine::tee(engine.take_events(), sinks).into_iter();
    let mut tasks = tokio::task::JoinSet::new();
    // One receiver per sink, taken only for sinks that exist.
    if let Some(publisher) = publisher
        && let Some(events) = receivers.next()
    {
        tasks.spawn(publisher.run(events, shutdown.clone()));
    }
    #[cfg(feature = "broker")]
    if let Some(local) = local
        && let Some(events) = receivers.next()
    {
        tasks.spawn(local.run(events, shutdown.clone()));
    }
    if log_values && let Some(events) = receivers.next() {
        tasks.spawn(log_events(Arc::clone(&config), events, shutdown.clone()));
    }
    if let Some((listener, metrics)) = health {
        let uplink = config
            .upstream
            .as_ref()
            .map(|_| engine.writes.uplink_state());
        let probe = fieldmq::ops::health::Probe::new(
            Arc::clone(&engine.liveness),
            Arc::clone(&engine.stats),
            uplink,
            metrics,
        );
        tokio::spawn(probe.serve(listener, shutdown.clone()));
    }
    tokio::spawn(fieldmq::ops::systemd::watchdog(
        Arc::clone(&engine.liveness),
        shutdown.clone(),
    ));
    announce_ready(&config);
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP")?;
    loop {
        tokio::select! {
            received = &mut signal => {
                tracing::info!(signal = received?, "shutting down");
                break;
            }
            // A sink ends by itself only when the bus tasks are gone.
            _ = tasks.join_next() => break,
            Some(()) = hangup.recv() => reload(&mut engine).await,
        }
    }
    fieldmq::ops::systemd::stopping();
    engine.stop();
    let drained = tokio::time::timeout(SINK_GRACE, async {
        while let Some(done) = tasks.join_next().await {
            done.context("publisher task")?;
        }
        anyhow::Ok(())
    })
    .await;
    match drained {
        Ok(done) => done?,
        Err(_) => {
            tracing::warn!(grace = ?SINK_GRACE, "sources did not stop in time; stopping the publishers anyway");
            shutdown.cancel();
            while let Some(done) = tasks.join_next().await {
                done.context("publisher task")?;
            }
        }
    }
    engine.join().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP: reads the config file again and puts its device map in force;
/// an invalid file changes nothing.
async fn reload(engine: &mut Engine) {
    fieldmq::ops::systemd::reloading();
    let current = engine.config();
    match Config::load(&current.path) {
        Err(e) => {
            tracing::error!("reload refused, the device map in force stays:\n{e}");
        }
        Ok(new) => {
            let reload = fieldmq::config::reload::Reload::between(&current, new);
            for section in &reload.ignored {
                tracing::warn!(
                    section,
                    "changed, but only [[bus]] and [[device]] are reloaded; restart to apply it"
                );
            }
            if reload.is_noop() {
                tracing::info!("reload: nothing that a reload applies has changed");
            } else {
                engine.reconfigure(&reload).await;
                tracing::info!(
                    added = ?reload.added,
                    removed = ?reload.removed,
                    changed = ?reload.changed,
                    "reload: new device map in force"
                );
            }
        }
    }
    announce_ready(&engine.config());
}

/// Tells systemd that start-up (or a reload) is complete.
fn announce_ready(config: &Config) {
    fieldmq::ops::systemd::ready(&format!(
        "polling {} devices on {} buses",
        config.devices.len(),
        config.buses.len()
    ));
}

async fn log_events(
    mut config: Arc<Config>,
    mut events: tokio::sync::mpsc::Receiver<DeviceEvent<Config>>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            event = events.recv() => match event {
                Some(DeviceEvent::Reconfigured(map)) => config = map.0,
                Some(event) => log_event(&config, &event),
                None => break,
            },
        }
    }
}

async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

fn log_event(config: &Config, event: &DeviceEvent<Config>) {
    let device_name = |id: usize| config.devices.get(id).map_or("?", |d| d.name.as_str());
    match event {
        DeviceEvent::Samples { device, samples } => {
            let Some(dev) = config.devices.get(*device) else {
                return;
            };
            for sample in samples {
                let Some(metric) = dev.metrics.get(sample.metric) else {
                    continue;
                };
                let value = sample
                    .value
                    .as_ref()
                    .map_or_else(|| "null".to_owned(), ToString::to_string);
                tracing::info!(
                    device = %dev.name,
                    metric = %metric.name,
                    %value,
                    unit = metric.unit.as_deref().unwrap_or(""),
                    quality = %sample.quality,
                    ts = sample.timestamp_ms,
                    "sample"
                );
            }
        }
        DeviceEvent::Offline { device, fault } => {
            tracing::warn!(device = device_name(*device), %fault, "offline")
        }
        DeviceEvent::Online { device, samples } => {
            tracing::info!(device = device_name(*device), "online");
            log_event(
                config,
                &DeviceEvent::Samples {
                    device: *device,
                    samples: samples.clone(),
                },
            );
        }
        DeviceEvent::Written { .. } | DeviceEvent::Reconfigured(_) => {}
    }
}
