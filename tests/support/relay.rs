//! A TCP relay between the gateway and its broker that can be cut like a
//! pulled cable: the connections through it close at once (bytes still in
//! the relay are lost, as on a wire) and new ones are refused until it is
//! restored on the same port. The broker and its subscribers stay up, so
//! they see exactly what crossed before the cut.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The relay; dropping it cuts it.
pub struct Relay {
    /// The port the gateway connects to.
    pub port: u16,
    target: SocketAddr,
    up: Arc<Mutex<Option<CancellationToken>>>,
}

impl Relay {
    /// Relays a free loopback port to `target_port` on loopback.
    pub async fn start(target_port: u16) -> Relay {
        let relay = Relay {
            port: super::mqtt::free_port(),
            target: SocketAddr::from(([127, 0, 0, 1], target_port)),
            up: Arc::new(Mutex::new(None)),
        };
        relay.restore().await;
        relay
    }

    /// `mqtt://` URL of the relay.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Closes every relayed connection and refuses new ones.
    pub fn cut(&self) {
        if let Some(token) = self.up.lock().expect("relay state").take() {
            token.cancel();
        }
    }

    /// Accepts connections again.
    pub async fn restore(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("the relay's port is free again");
        let token = CancellationToken::new();
        *self.up.lock().expect("relay state") = Some(token.clone());
        let target = self.target;
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = token.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut client, _)) = accepted else {
                    continue;
                };
                let token = token.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        () = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    }
                });
            }
        });
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}
