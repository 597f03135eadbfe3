//! A run's figures: commands applied over a measured window, commit latencies,
//! and the process's peak resident memory.

use std::time::Duration;

/// Most latency samples kept; beyond it every further sample replaces an older one
/// at a rotating position, so memory stays bounded on long runs.
pub const LATENCY_SAMPLES_MAX: usize = 1 << 20;

/// Commands applied over a window, and their commit latencies.
#[derive(Clone, Debug, Default)]
pub struct Measurement {
    /// Commands applied at the proposing node during the window.
    pub commands: u64,
    /// Length of the window.
    pub elapsed: Duration,
    /// Commit latencies in nanoseconds (bounded sample).
    latencies_ns: Vec<u64>,
    /// Samples offered so far, kept or not.
    offered: u64,
    /// Most samples kept (0 means [`LATENCY_SAMPLES_MAX`]).
    samples_max: usize,
}

impl Measurement {
    /// An empty measurement.
    pub fn new() -> Measurement {
        Measurement::default()
    }

    /// An empty measurement keeping at most `samples_max` latency samples (at
    /// least 1, at most [`LATENCY_SAMPLES_MAX`]), for one of many client tasks.
    pub fn with_samples_max(samples_max: usize) -> Measurement {
        Measurement { samples_max: samples_max.clamp(1, LATENCY_SAMPLES_MAX), ..Measurement::default() }
    }

    /// Records one commit latency.
    #[inline]
    pub fn record_latency(&mut self, latency: Duration) {
        let nanos = latency.as_nanos().min(u128::from(u64::MAX)) as u64;
        let samples_max = if self.samples_max == 0 { LATENCY_SAMPLES_MAX } else { self.samples_max };
        if self.latencies_ns.len() < samples_max {
            self.latencies_ns.push(nanos);
        } else {
            // Overwrite at a position that walks the buffer with a large odd stride.
            let position = (self.offered.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 24) as usize % samples_max;
            self.latencies_ns[position] = nanos;
        }
        self.offered += 1;
    }

    /// Adds another measurement's latency samples (for several client tasks).
    pub fn merge_latencies(&mut self, other: &Measurement) {
        for nanos in &other.latencies_ns {
            self.record_latency(Duration::from_nanos(*nanos));
        }
    }

    /// Commands per second over the window.
    pub fn ops_per_sec(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.commands as f64 / seconds
        } else {
            0.0
        }
    }

    /// The `percentile` (0 to 100) commit latency in microseconds; 0 with no samples.
    pub fn latency_percentile_us(&self, percentile: f64) -> f64 {
        let mut sorted = self.latencies_ns.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return 0.0;
        }
        let rank = ((percentile / 100.0) * (sorted.len() - 1) as f64).round() as usize;
        sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
    }

    /// How many latency samples are held.
    pub fn latency_samples(&self) -> usize {
        self.latencies_ns.len()
    }
}

/// The process's peak resident set size in bytes (`VmHWM` in `/proc/self/status`),
/// or 0 where that file does not exist.
pub fn peak_rss_bytes() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_rate() {
        let mut measurement = Measurement::new();
        for micros in 1..=100 {
            measurement.record_latency(Duration::from_micros(micros));
        }
        measurement.commands = 500;
        measurement.elapsed = Duration::from_millis(250);
        assert_eq!(measurement.ops_per_sec(), 2000.0);
        assert_eq!(measurement.latency_percentile_us(50.0), 51.0);
        assert_eq!(measurement.latency_percentile_us(99.0), 99.0);
        assert_eq!(Measurement::new().latency_percentile_us(50.0), 0.0);
    }

    #[test]
    fn samples_stay_bounded() {
        let mut measurement = Measurement::with_samples_max(10);
        for micros in 0..1000 {
            measurement.record_latency(Duration::from_micros(micros));
        }
        assert_eq!(measurement.latency_samples(), 10);
        assert!(measurement.latency_percentile_us(100.0) >= 9.0);
    }

    #[test]
    fn peak_rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes() > 0);
        }
    }
}
