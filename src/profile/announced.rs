//! What a birth (Sparkplug DBIRTH) or an announcement (plain) carried, so
//! the replay of stored samples leaves those out instead of delivering
//! them twice.

use crate::core::value::{DeviceId, Sample};

/// Per device and metric, the time of the sample last announced. A stored
/// sample of a metric with that very time is the one announced: a metric
/// has one sample per poll, and an announcement has each metric's newest.
/// (Metrics of one poll cycle may differ in time: each request's answer
/// has its own.)
#[derive(Debug, Clone, Default)]
pub struct Announced {
    times: Vec<Vec<u64>>,
}

impl Announced {
    /// Nothing announced yet for `devices` devices.
    pub fn new(devices: usize) -> Announced {
        Announced {
            times: vec![Vec::new(); devices],
        }
    }

    /// `device` was announced with `snapshot`.
    pub fn record(&mut self, device: DeviceId, snapshot: &[Sample]) {
        let Some(times) = self.times.get_mut(device) else {
            return;
        };
        times.clear();
        for sample in snapshot {
            if times.len() <= sample.metric {
                times.resize(sample.metric + 1, 0);
            }
            times[sample.metric] = sample.timestamp_ms;
        }
    }

    /// Whether `sample` is one an announcement already carried.
    pub fn carried(&self, sample: &Sample) -> bool {
        self.times
            .get(sample.device)
            .and_then(|t| t.get(sample.metric))
            .is_some_and(|t| *t == sample.timestamp_ms && *t != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::value::{Quality, Value};

    fn sample(metric: usize, timestamp_ms: u64) -> Sample {
        Sample {
            device: 0,
            metric,
            value: Some(Value::U16(1)),
            quality: Quality::Good,
            timestamp_ms,
        }
    }

    #[test]
    fn only_the_very_sample_announced_of_each_metric_counts_as_carried() {
        let mut announced = Announced::new(1);
        // One cycle, three requests answered in three different milliseconds.
        announced.record(0, &[sample(0, 10), sample(1, 11), sample(2, 12)]);
        assert!(announced.carried(&sample(0, 10)));
        assert!(announced.carried(&sample(2, 12)));
        assert!(
            !announced.carried(&sample(0, 12)),
            "metric 0's own time counts"
        );
        assert!(
            !announced.carried(&sample(1, 9)),
            "older samples are history"
        );
        assert!(!announced.carried(&Sample {
            device: 1,
            ..sample(0, 10)
        }));
    }
}
