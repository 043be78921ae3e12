//! `fieldmq scan`: which unit ids answer on a bus, how fast, what they say
//! they are, and a ready-to-paste `[[device]]` table for each unit a known
//! model fits. It only reads.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use fieldmq::acquire::modbus::link::Link;
use fieldmq::acquire::modbus::scan::{self, Found, Identification, Probe, ScanTimeouts};
use fieldmq::config::{Bus, Config, KnownModel, Parity, SerialLine, Transport};
use fieldmq::core::value::exception_name;
use serde_json::json;
use tokio::time::Instant;

use crate::cli::{config_error, ms, say};

/// Where models are installed by the package.
const INSTALLED_MODELS: &str = "/usr/share/fieldmq/models/*.toml";

/// The name the ready-to-paste tables give an ad-hoc bus.
const AD_HOC_BUS: &str = "scanned";

/// `fieldmq scan`'s arguments.
#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("target")
        .required(true)
        .args(["config", "tcp", "rtu_over_tcp", "rtu"]),
))]
pub struct ScanArgs {
    /// Scan a bus of this config (with --bus); its models are matched too.
    #[arg(long, short, requires = "bus")]
    config: Option<PathBuf>,
    /// The bus of --config to scan.
    #[arg(long, requires = "config")]
    bus: Option<String>,
    /// Scan Modbus TCP at HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    tcp: Option<String>,
    /// Scan RTU frames over TCP (a serial server) at HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    rtu_over_tcp: Option<String>,
    /// Scan Modbus RTU on a serial port, e.g. /dev/ttyUSB0.
    #[arg(long, value_name = "PORT")]
    rtu: Option<String>,
    /// Baud rates to try on --rtu, e.g. 9600,19200.
    #[arg(long, value_delimiter = ',', default_value = "9600", requires = "rtu")]
    baud: Vec<u32>,
    /// Parities to try on --rtu, e.g. none,even.
    #[arg(long, value_delimiter = ',', default_value = "none", requires = "rtu")]
    parity: Vec<ParityArg>,
    /// Data bits on --rtu.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(7..=8), requires = "rtu")]
    data_bits: u8,
    /// Stop bits on --rtu.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2), requires = "rtu")]
    stop_bits: u8,
    /// Unit ids to probe: ranges and single ids, e.g. 1-247 or 1-10,100.
    #[arg(long, default_value = "1-247", value_parser = parse_units)]
    units: UnitSet,
    /// Timeout of the presence read (default: wire time + 100 ms on a serial
    /// line, 250 ms over TCP), e.g. 300ms.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Model files to match identities against (globs; default the installed models).
    #[arg(long = "models", value_name = "GLOB")]
    models: Vec<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// A parity on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ParityArg {
    None,
    Even,
    Odd,
}

impl From<ParityArg> for Parity {
    fn from(p: ParityArg) -> Parity {
        match p {
            ParityArg::None => Parity::None,
            ParityArg::Even => Parity::Even,
            ParityArg::Odd => Parity::Odd,
        }
    }
}

/// Unit ids to probe, ascending, without repeats.
#[derive(Debug, Clone)]
struct UnitSet(Vec<u8>);

fn parse_units(text: &str) -> Result<UnitSet, String> {
    let id = |s: &str| -> Result<u8, String> {
        match s.trim().parse::<u8>() {
            Ok(n @ 1..=255) => Ok(n),
            _ => Err(format!(
                "\"{s}\" is not a unit id 1..255 (0 is broadcast, which nothing answers)"
            )),
        }
    };
    let mut units = Vec::new();
    for part in text.split(',') {
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (id(from)?, id(to)?);
                if from > to {
                    return Err(format!("range {part} runs backwards"));
                }
                units.extend(from..=to);
            }
            None => units.push(id(part)?),
        }
    }
    units.sort_unstable();
    units.dedup();
    Ok(UnitSet(units))
}

/// What one bus (one line setting) gave.
struct BusScan {
    bus: Bus,
    timeouts: ScanTimeouts,
    elapsed: Duration,
    found: Vec<(Found, Option<String>)>,
    garbled: Vec<(u8, String)>,
    no_target: Vec<u8>,
    /// Why the scan of this bus stopped early, if it did.
    stopped: Option<String>,
}

/// Runs the scan; exit code 0 when some unit answered, 1 when none did.
pub async fn scan(args: ScanArgs) -> anyhow::Result<ExitCode> {
    let (buses, from_config, mut models) = match targets(&args) {
        Ok(found) => found,
        Err(Target::Config(path, e)) => return Ok(config_error(&path, &e)),
        Err(Target::Other(e)) => return Err(e),
    };
    let patterns = if args.models.is_empty() {
        vec![PathBuf::from(INSTALLED_MODELS)]
    } else {
        args.models.clone()
    };
    for pattern in &patterns {
        match KnownModel::installed(pattern) {
            Ok(more) => {
                // A model of the config wins over an installed one of the same name.
                let fresh: Vec<KnownModel> = more
                    .into_iter()
                    .filter(|m| !from_config || !models_named(&models, &m.name))
                    .collect();
                models.extend(fresh);
            }
            Err(e) => eprintln!("fieldmq: models not used: {e}"),
        }
    }
    let units = &args.units.0;
    let mut scans = Vec::new();
    for bus in buses {
        let timeouts = ScanTimeouts::for_transport(&bus.transport, args.timeout);
        let bus = Bus {
            // The connect of a TCP bus is limited by the bus timeout.
            timeout: timeouts.probe,
            ..bus
        };
        if !args.json {
            say!(
                "scanning {} for units {}: timeout {} (identification {}); about {} if none answers",
                bus.transport,
                ranges(units),
                ms(timeouts.probe),
                ms(timeouts.identify),
                humantime::format_duration(round_s(timeouts.bound(&bus, units.len(), 0)))
            );
        }
        let scanned = scan_bus(bus, timeouts, units, &models, args.json).await;
        if !args.json {
            summary(&scanned, units.len());
        }
        scans.push(scanned);
    }
    let any = scans.iter().any(|s| !s.found.is_empty());
    if args.json {
        say!(
            "{}",
            json!({ "buses": scans.iter().map(to_json).collect::<Vec<_>>() })
        );
    } else {
        paste(&scans, from_config);
    }
    if let Some(why) = scans.iter().find_map(|s| s.stopped.as_ref()) {
        bail!("scan stopped: {why}");
    }
    Ok(if any {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

enum Target {
    Config(PathBuf, fieldmq::config::ConfigError),
    Other(anyhow::Error),
}

/// The buses to scan (one per baud rate and parity on a serial port),
/// whether they come from a config, and that config's models.
fn targets(args: &ScanArgs) -> Result<(Vec<Bus>, bool, Vec<KnownModel>), Target> {
    let ad_hoc = |transport| Bus {
        name: AD_HOC_BUS.into(),
        transport,
        timeout: Duration::ZERO,
        turnaround: Duration::ZERO,
    };
    if let (Some(path), Some(name)) = (&args.config, &args.bus) {
        let config = Config::load(path).map_err(|e| Target::Config(path.clone(), e))?;
        let Some(bus) = config.buses.iter().find(|b| &b.name == name) else {
            let known: Vec<&str> = config.buses.iter().map(|b| b.name.as_str()).collect();
            return Err(Target::Other(anyhow::anyhow!(
                "no bus \"{name}\" in {}; buses: {}",
                path.display(),
                known.join(", ")
            )));
        };
        return Ok((vec![bus.clone()], true, config.models));
    }
    let buses = if let Some(address) = &args.tcp {
        vec![ad_hoc(Transport::Tcp {
            address: address.clone(),
        })]
    } else if let Some(address) = &args.rtu_over_tcp {
        vec![ad_hoc(Transport::RtuOverTcp {
            address: address.clone(),
        })]
    } else if let Some(port) = &args.rtu {
        let mut buses = Vec::new();
        for &baud in &args.baud {
            for &parity in &args.parity {
                buses.push(ad_hoc(Transport::Rtu(SerialLine {
                    port: port.clone(),
                    baud,
                    parity: parity.into(),
                    data_bits: args.data_bits,
                    stop_bits: args.stop_bits,
                    byte_timeout: None,
                    direction: fieldmq::config::Direction::Auto,
                })));
            }
        }
        buses
    } else {
        return Err(Target::Other(anyhow::anyhow!(
            "say what to scan: --config F --bus NAME, --tcp, --rtu-over-tcp or --rtu"
        )));
    };
    Ok((buses, false, Vec::new()))
}

fn models_named(models: &[KnownModel], name: &str) -> bool {
    models.iter().any(|m| m.name == name)
}

async fn scan_bus(
    bus: Bus,
    timeouts: ScanTimeouts,
    units: &[u8],
    models: &[KnownModel],
    quiet: bool,
) -> BusScan {
    let started = Instant::now();
    let mut link = Link::new(&bus);
    let mut scanned = BusScan {
        bus,
        timeouts,
        elapsed: Duration::ZERO,
        found: Vec::new(),
        garbled: Vec::new(),
        no_target: Vec::new(),
        stopped: None,
    };
    for &unit in units {
        match scan::probe(&mut link, unit, &timeouts).await {
            Ok(Probe::Found(found)) => {
                let model = match &found.identification {
                    Identification::Known(identity) => models
                        .iter()
                        .find(|m| m.fits(identity))
                        .map(|m| m.name.clone()),
                    Identification::Refused(_) | Identification::Unanswered(_) => None,
                };
                if !quiet {
                    say!("{}", found_line(&found, model.as_deref()));
                }
                scanned.found.push((found, model));
            }
            Ok(Probe::Silent) => {}
            Ok(Probe::NoTarget(_)) => scanned.no_target.push(unit),
            Ok(Probe::Garbled(why)) => {
                if !quiet {
                    say!("unit {unit:>3}  garbled reply: {why}");
                }
                scanned.garbled.push((unit, why));
            }
            Err(e) => {
                scanned.stopped = Some(format!("{}: {e}", scanned.bus.transport));
                break;
            }
        }
    }
    link.close().await;
    scanned.elapsed = started.elapsed();
    scanned
}

fn found_line(found: &Found, model: Option<&str>) -> String {
    let what = match &found.identification {
        Identification::Known(identity) => match model {
            Some(m) => format!("{identity}  (model \"{m}\")"),
            None => identity.to_string(),
        },
        Identification::Refused(code) => format!(
            "identification not supported (exception {code:02X}: {}); {}",
            exception_name(*code),
            read_outcome(found.read_exception)
        ),
        Identification::Unanswered(why) => format!(
            "identification unanswered ({why}); {}",
            read_outcome(found.read_exception)
        ),
    };
    format!(
        "unit {:>3}  reply {:>9}  {what}",
        found.unit,
        ms(found.reply)
    )
}

fn read_outcome(exception: Option<u8>) -> String {
    match exception {
        None => "holding register 0 read".to_owned(),
        Some(code) => format!(
            "a read of holding register 0 drew exception {code:02X} ({})",
            exception_name(code)
        ),
    }
}

fn summary(scanned: &BusScan, probed: usize) {
    say!(
        "found {} of {probed} unit ids on {} in {}",
        scanned.found.len(),
        scanned.bus.transport,
        humantime::format_duration(round_ms(scanned.elapsed))
    );
    if !scanned.garbled.is_empty() {
        say!(
            "  {} garbled replies: a device at another baud rate or parity, or two devices with one unit id",
            scanned.garbled.len()
        );
    }
    if !scanned.no_target.is_empty() {
        say!(
            "  the gateway reported {} unit ids unreachable behind it (exception 0A/0B)",
            scanned.no_target.len()
        );
    }
    if probed > 1 && scanned.found.len() == probed {
        say!(
            "  every unit id answered: the device probably ignores the unit id (use unit = 1, or 255 if its manual says so)"
        );
    }
}

/// `[[device]]` tables for the units a model fits (and the `[[bus]]` of an ad-hoc scan).
fn paste(scans: &[BusScan], from_config: bool) {
    for scanned in scans {
        let matched: Vec<(&Found, &str)> = scanned
            .found
            .iter()
            .filter_map(|(f, m)| Some((f, m.as_deref()?)))
            .collect();
        if matched.is_empty() {
            continue;
        }
        say!("\n# ready to paste: the units a known model fits");
        if !from_config {
            say!("{}", bus_table(&scanned.bus));
        }
        for (found, model) in matched {
            say!(
                "[[device]]\nname  = \"{model}-{unit}\"\nbus   = \"{bus}\"\nunit  = {unit}\nmodel = \"{model}\"\n",
                unit = found.unit,
                bus = scanned.bus.name
            );
        }
    }
}

fn bus_table(bus: &Bus) -> String {
    match &bus.transport {
        Transport::Tcp { address } => {
            format!(
                "[[bus]]\nname    = \"{AD_HOC_BUS}\"\nkind    = \"tcp\"\naddress = \"{address}\"\n"
            )
        }
        Transport::RtuOverTcp { address } => format!(
            "[[bus]]\nname    = \"{AD_HOC_BUS}\"\nkind    = \"rtu-over-tcp\"\naddress = \"{address}\"\n"
        ),
        Transport::Rtu(line) => {
            let mut table = format!(
                "[[bus]]\nname    = \"{AD_HOC_BUS}\"\nkind    = \"rtu\"\nport    = \"{}\"\nbaud    = {}\nparity  = \"{}\"\n",
                line.port,
                line.baud,
                line.parity.name()
            );
            if line.data_bits != 8 {
                table.push_str(&format!("data_bits = {}\n", line.data_bits));
            }
            if line.stop_bits != 1 {
                table.push_str(&format!("stop_bits = {}\n", line.stop_bits));
            }
            table
        }
    }
}

fn to_json(scanned: &BusScan) -> serde_json::Value {
    let (port, baud, parity) = match &scanned.bus.transport {
        Transport::Rtu(line) => (
            json!(line.port),
            json!(line.baud),
            json!(line.parity.name()),
        ),
        Transport::Tcp { .. } | Transport::RtuOverTcp { .. } => {
            (json!(null), json!(null), json!(null))
        }
    };
    let found: Vec<serde_json::Value> = scanned
        .found
        .iter()
        .map(|(f, model)| {
            let (identification, identity, exception) = match &f.identification {
                Identification::Known(identity) => ("known", identity.to_json(), json!(null)),
                Identification::Refused(code) => ("refused", json!(null), json!(code)),
                Identification::Unanswered(_) => ("unanswered", json!(null), json!(null)),
            };
            json!({
                "unit": f.unit,
                "reply_ms": millis(f.reply),
                "read_exception": f.read_exception,
                "identification": identification,
                "identification_exception": exception,
                "identity": identity,
                "model": model,
            })
        })
        .collect();
    json!({
        "bus": scanned.bus.name,
        "target": scanned.bus.transport.to_string(),
        "port": port,
        "baud": baud,
        "parity": parity,
        "timeout_ms": millis(scanned.timeouts.probe),
        "identify_timeout_ms": millis(scanned.timeouts.identify),
        "elapsed_ms": millis(scanned.elapsed),
        "found": found,
        "garbled": scanned.garbled.iter().map(|(u, why)| json!({"unit": u, "why": why})).collect::<Vec<_>>(),
        "unreachable_behind_gateway": scanned.no_target,
        "stopped": scanned.stopped,
    })
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

fn round_s(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_millis() >= 500))
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `1-247`, `1-10,100`.
fn ranges(units: &[u8]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < units.len() {
        let start = units[i];
        let mut end = start;
        while i + 1 < units.len() && units[i + 1] == end.wrapping_add(1) {
            i += 1;
            end = units[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_lists_parse_and_print_as_ranges() {
        let units = parse_units("5,1-3,3,200-201").unwrap().0;
        assert_eq!(units, vec![1, 2, 3, 5, 200, 201]);
        assert_eq!(ranges(&units), "1-3,5,200-201");
        assert_eq!(ranges(&parse_units("1-247").unwrap().0), "1-247");
        assert!(parse_units("0-3").is_err(), "0 is broadcast");
        assert!(parse_units("9-3").is_err());
        assert!(parse_units("1-256").is_err());
    }
}
