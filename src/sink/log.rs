//! The sink of a gateway without an uplink: every value goes to the log, so
//! that `fieldmq run` on a bench shows what it reads.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::core::event::DeviceEvent;

/// Logs every event until the stream ends or `shutdown`; follows reloads.
pub async fn run(
    mut config: Arc<Config>,
    mut events: mpsc::Receiver<DeviceEvent<Config>>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            event = events.recv() => match event {
                Some(DeviceEvent::Reconfigured(map)) => config = map.0,
                Some(event) => log_event(&config, &event),
                None => break,
            },
        }
    }
}

fn log_event(config: &Config, event: &DeviceEvent<Config>) {
    let device_name = |id: usize| config.devices.get(id).map_or("?", |d| d.name.as_str());
    match event {
        DeviceEvent::Samples { device, samples } => {
            let Some(dev) = config.devices.get(*device) else {
                return;
            };
            for sample in samples {
                let Some(metric) = dev.metrics.get(sample.metric) else {
                    continue;
                };
                let value = sample
                    .value
                    .as_ref()
                    .map_or_else(|| "null".to_owned(), ToString::to_string);
                tracing::info!(
                    device = %dev.name,
                    metric = %metric.name,
                    %value,
                    unit = metric.unit.as_deref().unwrap_or(""),
                    quality = %sample.quality,
                    ts = sample.timestamp_ms,
                    "sample"
                );
            }
        }
        DeviceEvent::Offline { device, fault } => {
            tracing::warn!(device = device_name(*device), %fault, "offline")
        }
        DeviceEvent::Online {
            device,
            samples,
            identity,
        } => {
            match identity {
                Some(identity) => {
                    tracing::info!(device = device_name(*device), %identity, "online")
                }
                None => tracing::info!(device = device_name(*device), "online"),
            }
            log_event(
                config,
                &DeviceEvent::Samples {
                    device: *device,
                    samples: samples.clone(),
                },
            );
        }
        DeviceEvent::Written { .. } | DeviceEvent::Reconfigured(_) => {}
    }
}
