//! The `fieldmq` command: check a config, scan a bus, read a device once,
//! tail MQTT, run the demo or the gateway. Parsing and dispatch only; each subcommand is in `cli/`.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use fieldmq::config::Config;

use cli::{LogFormat, config_error, init_tracing, runtime, tail, with_config};

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
    /// Find the units on a bus: who answers, how fast, what they are (reads only).
    Scan(cli::scan::ScanArgs),
    /// Print a shell completion script (bash, zsh, fish).
    Completions(cli::docs::CompletionsArgs),
    /// Write the man pages fieldmq(1) and fieldmq.toml(5), for packaging.
    #[command(hide = true)]
    Manual(cli::docs::ManualArgs),
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
    Demo(cli::demo::DemoArgs),
}

fn main() -> ExitCode {
    fieldmq::ops::memory::limit_fragmentation();
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let outcome = match cli.command {
        Command::Check { config } => with_config(&config, |config| {
            cli::check::print_check(&config);
            Ok(ExitCode::SUCCESS)
        }),
        Command::Read {
            config,
            device,
            json,
        } => with_config(&config, |config| {
            runtime()?.block_on(cli::read::read(&config, &device, json))
        }),
        Command::Scan(args) => runtime().and_then(|rt| rt.block_on(cli::scan::scan(args))),
        Command::Completions(args) => Ok(cli::docs::completions(Cli::command(), &args)),
        Command::Manual(args) => cli::docs::manual(Cli::command(), &args),
        Command::Run { config } => {
            with_config(&config, |config| runtime()?.block_on(cli::run::run(config)))
        }
        Command::Demo(args) => runtime().and_then(|rt| rt.block_on(cli::demo::demo(args))),
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
                    Ok(config) => tail::tail_options_from(&config),
                    Err(e) => return config_error(&path, &e),
                },
                None => tail::tail_options(&url, username, password_file.as_deref()),
            };
            options.and_then(|o| runtime()?.block_on(tail::tail(o, filters, rebirth)))
        }
    };
    outcome.unwrap_or_else(|e| {
        eprintln!("fieldmq: {e:#}");
        ExitCode::FAILURE
    })
}
