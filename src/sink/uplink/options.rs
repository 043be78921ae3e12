//! rumqttc options and the TLS client configuration from `[upstream]`.
//!
//! TLS always verifies the server's certificate: against `ca_file` when
//! given, else against the system's roots. The crypto provider (ring) is
//! handed to rustls explicitly instead of installed process-wide, so no other
//! crate's provider choice can make the config builder panic.

use std::sync::Arc;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::ClientConfig;

use crate::config::{Server, Upstream};
use crate::sink::pem::{TlsError, certificates, private_key};

/// Messages the publisher may queue for the connection before `try_publish`
/// fails; beyond that the uplink is slower than the devices and messages are
/// counted as dropped instead of stalling polling.
pub const REQUEST_QUEUE: usize = 1024;
/// Unacknowledged QoS 1/2 messages in flight at once.
const INFLIGHT: u16 = 100;

/// The TLS client configuration, when any server uses `mqtts://`.
pub fn tls_config(upstream: &Upstream) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    if !upstream.servers.iter().any(|s| s.tls) {
        return Ok(None);
    }
    let mut roots = rustls::RootCertStore::empty();
    match &upstream.ca_file {
        Some(path) => {
            for cert in certificates(path)? {
                roots.add(cert)?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(TlsError::NoRoots);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match &upstream.client_certificate {
        Some(client) => {
            let chain = certificates(&client.cert_file)?;
            let key = private_key(&client.key_file)?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Some(Arc::new(config)))
}

/// The options of a connection to `server`, without a will (set per connect).
pub fn mqtt_options(
    upstream: &Upstream,
    server: &Server,
    tls: Option<&Arc<ClientConfig>>,
) -> MqttOptions {
    let mut options = MqttOptions::new(&upstream.client_id, &server.host, server.port);
    options
        .set_keep_alive(upstream.keep_alive)
        .set_clean_session(upstream.clean_session)
        .set_max_packet_size(upstream.max_packet_size, upstream.max_packet_size)
        .set_inflight(INFLIGHT);
    if let Some(user) = &upstream.username {
        options.set_credentials(user, upstream.password.clone().unwrap_or_default());
    }
    if let (true, Some(tls)) = (server.tls, tls) {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::clone(tls),
        )));
    }
    options
}
