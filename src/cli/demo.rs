//! `fieldmq demo`: a simulated meter and GPIO panel into the embedded broker.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use fieldmq::config::Config;
use tokio_util::sync::CancellationToken;

use crate::cli::say;

/// `fieldmq demo`'s options.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the simulated meter listens (Modbus TCP).
    #[arg(long, default_value = "127.0.0.1:5020")]
    modbus_listen: SocketAddr,
    /// Where the embedded MQTT broker listens.
    #[arg(long, default_value = fieldmq::config::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Where the status page (and /healthz, /metrics) listens.
    #[arg(long, default_value = "127.0.0.1:9185")]
    status_listen: SocketAddr,
}

/// Runs the demo until Ctrl-C, then removes its state directory.
pub async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let DemoArgs {
        modbus_listen: listen,
        listen: broker,
        status_listen,
    } = args;
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
    let text = fieldmq::sim::demo::config_text(address, broker, status_listen, &data_dir);
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
    say!("  and as Sparkplug B, decoded, with metric names from the first line:");
    say!("    fieldmq tail --url mqtt://{host}:{port} --rebirth 'spBv1.0/demo/#'");
    say!(
        "  switch the relay: mosquitto_pub -h {host} -p {port} -t 'demo/fieldmq-demo/panel/relay/set' -m true"
    );
    say!("  the status page, live in a browser: http://{status_listen}/");
    say!("  stop with Ctrl-C");
    let code = crate::cli::run::run(config).await;
    stop_meter.cancel();
    server.abort();
    let _ = animation.await;
    if let Err(e) = std::fs::remove_dir_all(&data_dir) {
        tracing::warn!(dir = %data_dir.display(), error = %e, "cannot remove the demo's state");
    }
    code
}
