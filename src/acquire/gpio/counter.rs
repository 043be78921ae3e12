//! Pulse counters: totals that survive restarts, and the rate between reports.
//!
//! Flow and energy meters give one pulse per litre or watt-hour; the total is
//! the reading, so losing it at a restart would be losing the meter. Totals
//! are written to `data_dir/gpio/<device>.json` ([`crate::ops::atomic_file`], so
//! a crash leaves the old or the new file, never half of one) at most once
//! per save period and at shutdown; a power cut costs at
//! most the pulses of one period.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use thiserror::Error;

/// The counter file could not be read or written.
#[derive(Debug, Error)]
#[error("{path}: {reason}")]
pub struct CounterStoreError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

/// The saved totals of one device's counters, by metric name.
#[derive(Debug)]
pub struct CounterStore {
    path: PathBuf,
}

impl CounterStore {
    /// The store of device `device` under `data_dir`.
    pub fn new(data_dir: &Path, device: &str) -> CounterStore {
        CounterStore {
            path: data_dir.join("gpio").join(format!("{device}.json")),
        }
    }

    /// The saved totals; none when nothing was saved yet.
    pub fn load(&self) -> Result<BTreeMap<String, u64>, CounterStoreError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| self.error(e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Replaces the saved totals.
    pub fn save(&self, totals: &BTreeMap<String, u64>) -> Result<(), CounterStoreError> {
        let text = serde_json::to_string_pretty(totals).map_err(|e| self.error(e))?;
        crate::ops::atomic_file::replace(&self.path, text.as_bytes()).map_err(|e| self.error(e))
    }

    fn error(&self, e: impl ToString) -> CounterStoreError {
        CounterStoreError {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }
}

/// Pulses per second between two reports.
#[derive(Debug, Clone)]
pub struct RateMeter {
    total: u64,
    at: Instant,
}

impl RateMeter {
    /// Starts measuring from `total` at `at`.
    pub fn new(total: u64, at: Instant) -> RateMeter {
        RateMeter { total, at }
    }

    /// The rate since the last call (or the start), and a new start.
    pub fn rate(&mut self, total: u64, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        let pulses = total.saturating_sub(self.total);
        self.total = total;
        self.at = now;
        if elapsed > 0.0 {
            pulses as f64 / elapsed
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn totals_survive_a_new_store_on_the_same_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = CounterStore::new(dir.path(), "panel");
        assert!(store.load().unwrap().is_empty());
        let totals = BTreeMap::from([("water".to_owned(), 1234), ("energy".to_owned(), 7)]);
        store.save(&totals).unwrap();
        assert_eq!(
            CounterStore::new(dir.path(), "panel").load().unwrap(),
            totals
        );
        assert!(!dir.path().join("gpio/panel.json.tmp").exists());
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = CounterStore::new(dir.path(), "panel");
        std::fs::create_dir_all(dir.path().join("gpio")).unwrap();
        std::fs::write(dir.path().join("gpio/panel.json"), "{\"water\": ").unwrap();
        let e = store.load().unwrap_err();
        assert!(e.to_string().contains("gpio/panel.json"), "{e}");
    }

    #[test]
    fn the_rate_is_pulses_per_second_since_the_last_report() {
        let t0 = Instant::now();
        let mut meter = RateMeter::new(100, t0);
        assert_eq!(meter.rate(150, t0 + Duration::from_secs(10)), 5.0);
        assert_eq!(meter.rate(150, t0 + Duration::from_secs(20)), 0.0);
        assert_eq!(
            meter.rate(150, t0 + Duration::from_secs(20)),
            0.0,
            "no time, no rate"
        );
    }
}
