//! The local broker's TLS listener (`[broker] tls_listen`).
//!
//! fieldmq terminates TLS itself, with the rustls and ring already used for
//! the uplink, and relays each decrypted connection to the broker's plain
//! listener over loopback. rmqtt's own TLS would pull in aws-lc-rs: a second
//! crypto library with a C build for every ARM target. The broker sees TLS
//! clients as coming from the loopback address; logins and topic ACLs work
//! on user names, so nothing is lost by that.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::config::BrokerTls;
use crate::mqtt::options::{TlsError, certificates, private_key};

/// A client has this long to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS listener could not be set up.
#[derive(Debug, Error)]
pub enum TlsSetupError {
    /// A PEM file could not be read or holds nothing usable.
    #[error(transparent)]
    Pem(#[from] TlsError),
    /// rustls refused the certificate, key or CA.
    #[error("TLS configuration: {0}")]
    Rustls(String),
    /// The address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// `[broker] tls_listen`.
        address: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// The rustls server configuration of `[broker] tls_*`.
pub fn server_config(tls: &BrokerTls) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&tls.cert)?;
    let key = private_key(&tls.key)?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    let builder = match &tls.client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(path)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsSetupError::Rustls(format!("{}: {e}", path.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    Ok(Arc::new(config))
}

/// Where the relay reaches the broker's plain listener.
fn relay_target(plain: SocketAddr) -> SocketAddr {
    match plain.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), plain.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), plain.port())
        }
        _ => plain,
    }
}

/// Listens on `tls.listen` and relays each client to the broker at `plain`;
/// at most `max_clients` connections at once.
pub async fn start(
    tls: &BrokerTls,
    plain: SocketAddr,
    max_clients: usize,
) -> Result<JoinHandle<()>, TlsSetupError> {
    let acceptor = TlsAcceptor::from(server_config(tls)?);
    let listener = TcpListener::bind(tls.listen)
        .await
        .map_err(|source| TlsSetupError::Listen {
            address: tls.listen,
            source,
        })?;
    let target = relay_target(plain);
    let slots = Arc::new(Semaphore::new(max_clients));
    Ok(tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "local broker TLS listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                tracing::warn!(%peer, "local broker TLS listener: too many clients; connection closed");
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Err(e) = relay(stream, acceptor, target).await {
                    tracing::info!(%peer, error = %e, "local broker TLS connection ended");
                }
                drop(slot);
            });
        }
    }))
}

async fn relay(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    target: SocketAddr,
) -> std::io::Result<()> {
    let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
        })??;
    let mut broker = TcpStream::connect(target).await?;
    broker.set_nodelay(true)?;
    tokio::io::copy_bidirectional(&mut tls, &mut broker).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listener_is_reached_over_loopback() {
        let any: SocketAddr = "0.0.0.0:1883".parse().unwrap();
        assert_eq!(relay_target(any), "127.0.0.1:1883".parse().unwrap());
        let any6: SocketAddr = "[::]:1883".parse().unwrap();
        assert_eq!(relay_target(any6), "[::1]:1883".parse().unwrap());
        let lan: SocketAddr = "192.168.1.5:1883".parse().unwrap();
        assert_eq!(relay_target(lan), lan);
    }
}
