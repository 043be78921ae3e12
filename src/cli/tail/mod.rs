//! `fieldmq tail`: MQTT traffic printed readably, Sparkplug B decoded with
//! the names its births gave.

pub mod decode;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use fieldmq::config::Config;

use crate::cli::say;

/// A client id of its own, so tailing never takes over the gateway's session.
fn tail_client_id() -> String {
    format!("fieldmq-tail-{}", std::process::id())
}

/// Options for `--url` (plain MQTT) with an optional login.
pub fn tail_options(
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

/// Options as the config's `[upstream]` connects (first server, TLS, credentials).
pub fn tail_options_from(config: &Config) -> anyhow::Result<rumqttc::MqttOptions> {
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

/// How long data of a node asked for a rebirth is held back for its births.
const REBIRTH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// `; N messages before them were not shown` when some were held back.
fn held_note(held: usize) -> String {
    if held == 0 {
        String::new()
    } else {
        format!("; {held} data messages before them were not shown (their aliases had no names)")
    }
}

/// Subscribes and prints until Ctrl-C; reconnects (and subscribes again) on
/// its own. With `rebirth`, asks unborn nodes for their births.
pub async fn tail(
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
    let mut decoder = decode::Tail::new();
    let mut failing = false;
    let stop = crate::cli::run::shutdown_signal();
    tokio::pin!(stop);
    let mut check = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        let event = tokio::select! {
            _ = &mut stop => break,
            event = eventloop.poll() => event,
            _ = check.tick(), if rebirth => {
                for late in decoder.unanswered(std::time::Instant::now(), REBIRTH_WAIT) {
                    eprintln!(
                        "fieldmq tail: no NBIRTH from {} within {}s of asking on {}: the broker probably refused the request (its ACL gives this client no publish right on that topic, and MQTT 3.1.1 reports no error), or the node does not answer rebirth requests; showing its data by alias{}",
                        late.node,
                        REBIRTH_WAIT.as_secs(),
                        late.ncmd,
                        held_note(late.held)
                    );
                }
                continue;
            }
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
                let asking = rebirth
                    .then(|| decoder.rebirth_topic(&p.topic, std::time::Instant::now()))
                    .flatten();
                if let Some(held) = rebirth.then(|| decoder.answered(&p.topic)).flatten()
                    && held > 0
                {
                    eprintln!("fieldmq tail: births arrived{}", held_note(held));
                }
                if !(rebirth && decoder.holds(&p.topic)) {
                    for line in decoder.lines(&p.topic, &p.payload) {
                        say!("{now} {line}");
                    }
                }
                if let Some(ncmd) = asking {
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
                            "fieldmq tail: no birth seen yet; asking for one on {ncmd}; its data waits until the births arrive (at most {}s)",
                            REBIRTH_WAIT.as_secs()
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
