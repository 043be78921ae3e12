//! The one way back: validated writes to the task that owns their device,
//! and the uplink's state to the tasks whose outputs depend on it.

use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::core::write::{Rejection, Write};

/// Hands validated writes to the bus task of their device, and the uplink's
/// state to the tasks whose outputs fall back to a safe state without it.
#[derive(Debug, Clone)]
pub struct WriteRouter {
    routes: Arc<RwLock<Routes>>,
    uplink: Arc<watch::Sender<bool>>,
}

#[derive(Debug)]
struct Routes {
    config: Arc<Config>,
    tasks: Vec<mpsc::Sender<Write>>,
}

impl WriteRouter {
    /// A router for `config` with no task to reach yet; the uplink starts
    /// up when there is none, since then there is nothing to lose.
    pub fn new(config: Arc<Config>) -> WriteRouter {
        let (uplink, _) = watch::channel(config.upstream.is_none());
        WriteRouter {
            routes: Arc::new(RwLock::new(Routes {
                config,
                tasks: Vec::new(),
            })),
            uplink: Arc::new(uplink),
        }
    }

    /// Points the router at `config` and its acquisition tasks' write queues,
    /// in [`Config::acquisitions`] order.
    pub fn point_at(&self, config: Arc<Config>, tasks: Vec<mpsc::Sender<Write>>) {
        if let Ok(mut routes) = self.routes.write() {
            *routes = Routes { config, tasks };
        }
    }

    /// Queues `write`, resolved against the device map `map`, for its
    /// device's bus without waiting. A write resolved against a map that a
    /// reload has replaced is refused: its ids may mean other devices now.
    pub fn send(&self, write: Write, map: &Arc<Config>) -> Result<(), Rejection> {
        let routes = self.routes.read().map_err(|_| Rejection::Reloaded)?;
        if !Arc::ptr_eq(&routes.config, map) {
            return Err(Rejection::Reloaded);
        }
        let device = routes.config.devices.get(write.device);
        let name = device.map_or_else(String::new, |d| d.name.clone());
        let sender = routes
            .config
            .acquisition_of(write.device)
            .and_then(|task| routes.tasks.get(task))
            .ok_or_else(|| Rejection::UnknownDevice(name.clone()))?;
        sender.try_send(write).map_err(|_| Rejection::Busy(name))
    }

    /// Follows the uplink's state as told by [`WriteRouter::uplink`].
    pub fn uplink_state(&self) -> watch::Receiver<bool> {
        self.uplink.subscribe()
    }

    /// The uplink is up (connected, and born with the primary host online) or not.
    pub fn uplink(&self, up: bool) {
        self.uplink
            .send_if_modified(|state| std::mem::replace(state, up) != up);
    }
}
