//! Latency histograms and how they are printed.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies of one kind of question on one system, in nanoseconds.
#[derive(Debug, Clone)]
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// An empty histogram from 1 ns to an hour, 3 significant digits.
    pub fn new() -> Self {
        let histogram = Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
            .unwrap_or_else(|e| unreachable!("constant histogram bounds are valid: {e}"));
        Self { histogram }
    }

    /// Records one latency.
    pub fn record(&mut self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.histogram.saturating_record(ns);
    }

    /// The summary.
    pub fn summary(&self) -> Summary {
        let us = |ns: u64| ns as f64 / 1_000.0;
        Summary {
            count: self.histogram.len(),
            p50_us: us(self.histogram.value_at_quantile(0.5)),
            p99_us: us(self.histogram.value_at_quantile(0.99)),
            mean_us: self.histogram.mean() / 1_000.0,
            max_us: us(self.histogram.max()),
        }
    }
}

/// A latency summary in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Mean.
    pub mean_us: f64,
    /// Slowest.
    pub max_us: f64,
}

/// `a / b`, or 0 when `b` is 0.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { 0.0 } else { a / b }
}
