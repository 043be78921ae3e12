//! Report by exception: which samples are news.
//!
//! A sample is reported when its quality changes, or when its value moves by
//! more than the metric's deadband from the last *reported* value (comparing
//! with the last reported value, not the last read one, stops a slow drift
//! from hiding under the deadband forever).

use crate::core::value::{Quality, Sample, Value};

/// The last reported state of every metric of one device.
#[derive(Debug, Clone)]
pub struct ChangeFilter {
    deadbands: Vec<Option<f64>>,
    last: Vec<Option<(Option<Value>, Quality)>>,
}

impl ChangeFilter {
    /// A filter for metrics with these deadbands (by metric index); nothing is reported yet.
    pub fn new(deadbands: Vec<Option<f64>>) -> ChangeFilter {
        let last = vec![None; deadbands.len()];
        ChangeFilter { deadbands, last }
    }

    /// Whether `sample` must be reported; if so it becomes the new reference.
    pub fn admit(&mut self, sample: &Sample) -> bool {
        let Some(slot) = self.last.get_mut(sample.metric) else {
            return true;
        };
        let deadband = self.deadbands.get(sample.metric).copied().flatten();
        let news = match slot {
            None => true,
            Some((value, quality)) => {
                *quality != sample.quality || moved(value.as_ref(), sample.value.as_ref(), deadband)
            }
        };
        if news {
            *slot = Some((sample.value.clone(), sample.quality.clone()));
        }
        news
    }

    /// Makes `sample` the reference for later samples, whether it is news or
    /// not: used for values that are reported regardless, such as a snapshot
    /// at a birth or the read-back after a write.
    pub fn record(&mut self, sample: &Sample) {
        if let Some(slot) = self.last.get_mut(sample.metric) {
            *slot = Some((sample.value.clone(), sample.quality.clone()));
        }
    }
}

fn moved(before: Option<&Value>, now: Option<&Value>, deadband: Option<f64>) -> bool {
    match (before, now) {
        (Some(a), Some(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) if x.is_nan() || y.is_nan() => x.is_nan() != y.is_nan(),
            (Some(x), Some(y)) => match deadband {
                Some(band) => (x - y).abs() > band,
                None => a != b,
            },
            _ => a != b,
        },
        (None, None) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::value::Fault;

    fn sample(metric: usize, value: Option<Value>, quality: Quality) -> Sample {
        Sample {
            device: 0,
            metric,
            value,
            quality,
            timestamp_ms: 0,
        }
    }

    fn good(metric: usize, v: f64) -> Sample {
        sample(metric, Some(Value::F64(v)), Quality::Good)
    }

    #[test]
    fn first_samples_are_news_and_repeats_are_not() {
        let mut f = ChangeFilter::new(vec![None, None]);
        assert!(f.admit(&good(0, 1.0)));
        assert!(!f.admit(&good(0, 1.0)));
        assert!(f.admit(&good(1, 1.0)), "metrics are independent");
        assert!(f.admit(&good(0, 1.5)));
        assert!(f.admit(&sample(0, Some(Value::String("x".into())), Quality::Good)));
    }

    #[test]
    fn the_deadband_is_measured_from_the_last_reported_value() {
        let mut f = ChangeFilter::new(vec![Some(0.5)]);
        assert!(f.admit(&good(0, 230.0)));
        assert!(!f.admit(&good(0, 230.3)));
        assert!(
            !f.admit(&good(0, 230.5)),
            "exactly the band is not beyond it"
        );
        assert!(
            f.admit(&good(0, 230.6)),
            "creeping up still gets reported once beyond the band"
        );
        assert!(!f.admit(&good(0, 230.2)));
        assert!(f.admit(&good(0, 230.0)));
    }

    #[test]
    fn quality_changes_are_always_news() {
        let mut f = ChangeFilter::new(vec![Some(100.0)]);
        assert!(f.admit(&good(0, 1.0)));
        assert!(f.admit(&sample(0, None, Quality::Bad(Fault::Timeout))));
        assert!(!f.admit(&sample(0, None, Quality::Bad(Fault::Timeout))));
        assert!(
            f.admit(&sample(0, None, Quality::Bad(Fault::Exception(2)))),
            "a new reason is news"
        );
        assert!(
            f.admit(&good(0, 1.0)),
            "recovery is news even with the same value"
        );
    }

    #[test]
    fn nan_repeats_are_not_news_but_entering_and_leaving_nan_is() {
        let mut f = ChangeFilter::new(vec![None]);
        assert!(f.admit(&good(0, f64::NAN)));
        assert!(!f.admit(&good(0, f64::NAN)));
        assert!(f.admit(&good(0, 0.0)));
        assert!(f.admit(&good(0, f64::NAN)));
    }
}
