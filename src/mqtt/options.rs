//! rumqttc options and the TLS client configuration from `[upstream]`.
//!
//! TLS always verifies the server's certificate: against `ca_file` when
//! given, else against the system's roots. The crypto provider (ring) is
//! handed to rustls explicitly instead of installed process-wide, so no other
//! crate's provider choice can make the config builder panic.

use std::path::Path;
use std::sync::Arc;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

use crate::config::{Server, Upstream};

/// Messages the publisher may queue for the connection before `try_publish`
/// fails; beyond that the uplink is slower than the devices and messages are
/// counted as dropped instead of stalling polling.
pub const REQUEST_QUEUE: usize = 1024;
/// Unacknowledged QoS 1/2 messages in flight at once.
const INFLIGHT: u16 = 100;

/// The TLS setup could not be built.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {why}")]
    Pem {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// No CA certificate to verify the server with.
    #[error("no system CA certificates could be loaded; set ca_file in [upstream]")]
    NoRoots,
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn pem_error(path: &Path, why: impl ToString) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

/// The certificates of a PEM file; an empty file is an error.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, e))
}

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
