//! The subcommands, one file each, and what they share: config loading with
//! its exit code, stdout that survives a closed pipe, logging, the runtime.

pub mod check;
pub mod demo;
pub mod docs;
pub mod read;
pub mod run;
pub mod scan;
pub mod tail;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use fieldmq::config::{Config, ConfigError};

/// Prints a line to stdout; a closed pipe (`fieldmq check | head`) ends the
/// output quietly instead of panicking as `println!` would.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

pub(crate) use say;

/// A duration in milliseconds with one decimal, as `check` and `scan` print them.
pub fn ms(d: std::time::Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// sysexits.h EX_CONFIG: the configuration is wrong, so restarting will not help.
const EX_CONFIG: u8 = 78;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per event (timestamp, level, target, fields).
    Json,
}

/// Loads the config and runs `then` with it; a config error exits with EX_CONFIG.
pub fn with_config(
    path: &Path,
    then: impl FnOnce(Config) -> anyhow::Result<ExitCode>,
) -> anyhow::Result<ExitCode> {
    match Config::load(path) {
        Ok(config) => then(config),
        Err(e) => Ok(config_error(path, &e)),
    }
}

/// Prints a config error and gives the exit code for it.
pub fn config_error(path: &Path, e: &ConfigError) -> ExitCode {
    match e {
        ConfigError::Invalid { .. } => {
            eprintln!("{e}");
            eprintln!("fieldmq: {} is not a valid config", path.display());
        }
        ConfigError::Io { .. } => eprintln!("fieldmq: {e}"),
    }
    ExitCode::from(EX_CONFIG)
}

/// Sets up logging to stderr in `format`.
pub fn init_tracing(format: LogFormat) {
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

/// The multi-threaded runtime the async subcommands run on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
