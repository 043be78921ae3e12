//! The local broker's TLS listener (`[broker] tls_listen`).
//!
//! fieldmq terminates TLS itself, with the rustls and ring already used for
//! the uplink, and relays each decrypted connection to a loopback listener
//! of the broker's, prefixed with a PROXY protocol header that names the
//! client's address. rmqtt's own TLS would pull in aws-lc-rs: a second
//! crypto library with a C build for every ARM target.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use rmqtt::pending::{ExtraLimits, PendingConnections};
use tokio::io::AsyncWriteExt;

use crate::config::{BrokerTls, LocalBrokerSettings};
use crate::sink::pem::{TlsError, certificates, private_key};

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

/// Listens on `tls.listen` and relays each client to the broker's relay
/// listener at `target`, announcing the client's address in a PROXY header.
/// Handshakes in progress are capped like the broker's own pending
/// connections (in all and per address); a relayed client takes one of at
/// most `max_clients` places only once its handshake is done.
pub async fn start(
    tls: &BrokerTls,
    target: SocketAddr,
    settings: &LocalBrokerSettings,
) -> Result<JoinHandle<()>, TlsSetupError> {
    let acceptor = TlsAcceptor::from(server_config(tls)?);
    let listener = TcpListener::bind(tls.listen)
        .await
        .map_err(|source| TlsSetupError::Listen {
            address: tls.listen,
            source,
        })?;
    let slots = Arc::new(Semaphore::new(settings.max_clients));
    let pending = PendingConnections::default();
    let limits = ExtraLimits {
        max_pending: settings.max_pending,
        max_pending_per_address: settings.max_pending_per_address,
        ..ExtraLimits::default()
    };
    let timeout = settings.connect_timeout;
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
            let Some(place) = pending.admit(peer.ip(), &limits) else {
                tracing::info!(%peer, "local broker TLS listener: too many handshakes in progress; connection closed");
                continue;
            };
            let acceptor = acceptor.clone();
            let slots = Arc::clone(&slots);
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(timeout, acceptor.accept(stream)).await;
                drop(place);
                let tls = match handshake {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "local broker TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%peer, "local broker TLS handshake timed out");
                        return;
                    }
                };
                let Ok(slot) = slots.try_acquire_owned() else {
                    tracing::warn!(%peer, "local broker TLS listener: too many clients; connection closed");
                    return;
                };
                if let Err(e) = relay(tls, peer, target).await {
                    tracing::info!(%peer, error = %e, "local broker TLS connection ended");
                }
                drop(slot);
            });
        }
    }))
}

async fn relay(
    mut tls: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    target: SocketAddr,
) -> std::io::Result<()> {
    let mut broker = TcpStream::connect(target).await?;
    broker.set_nodelay(true)?;
    broker
        .write_all(proxy_header(peer, target).as_bytes())
        .await?;
    tokio::io::copy_bidirectional(&mut tls, &mut broker).await?;
    Ok(())
}

/// A PROXY protocol v1 header naming `peer` as the client.
fn proxy_header(peer: SocketAddr, target: SocketAddr) -> String {
    // v1 needs both ends in one family; an IPv6 client reaching the IPv4
    // loopback relay is announced as unknown rather than mislabelled.
    match (peer, target) {
        (SocketAddr::V4(p), SocketAddr::V4(t)) => format!(
            "PROXY TCP4 {} {} {} {}\r\n",
            p.ip(),
            t.ip(),
            p.port(),
            t.port()
        ),
        (SocketAddr::V6(p), SocketAddr::V6(t)) => format!(
            "PROXY TCP6 {} {} {} {}\r\n",
            p.ip(),
            t.ip(),
            p.port(),
            t.port()
        ),
        _ => match peer.ip() {
            std::net::IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
                Some(v4) => format!(
                    "PROXY TCP4 {} {} {} {}\r\n",
                    v4,
                    target.ip(),
                    peer.port(),
                    target.port()
                ),
                None => "PROXY UNKNOWN\r\n".to_owned(),
            },
            std::net::IpAddr::V4(_) => "PROXY UNKNOWN\r\n".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_header_names_the_client() {
        let relay: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let v4: SocketAddr = "192.168.1.7:5555".parse().unwrap();
        assert_eq!(
            proxy_header(v4, relay),
            "PROXY TCP4 192.168.1.7 127.0.0.1 5555 40000\r\n"
        );
        let mapped: SocketAddr = "[::ffff:10.0.0.9]:6000".parse().unwrap();
        assert_eq!(
            proxy_header(mapped, relay),
            "PROXY TCP4 10.0.0.9 127.0.0.1 6000 40000\r\n"
        );
        let v6: SocketAddr = "[2001:db8::1]:7000".parse().unwrap();
        assert_eq!(proxy_header(v6, relay), "PROXY UNKNOWN\r\n");
    }
}
