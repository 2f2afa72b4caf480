//! Latency histograms and the one-line JSON report that `loadgen` and `etcd_bench` both print.
//!
//! ```text
//!  client 1 ─┐ Latencies ("bind", "release", "pair")    ┌─▶ stdout: {"tool":..,"clients":N,
//!  client 2 ─┼──────────── merge ───────────▶ Report ───┤     "ops":..,"ops_per_sec":..,
//!  client N ─┘ Counters, error counts                    │     "pair_p50_us":..,"errors":{..}}
//!                                                        └─▶ stderr: one human line
//! ```
//!
//! Every latency is in microseconds, recorded in an HDR histogram with 3 significant digits
//! (0.1 % error) from 1 µs to 60 s; longer samples saturate at 60 s.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde::ser::SerializeMap;

/// The longest latency a histogram holds, in microseconds (60 s); longer samples are clamped.
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// Named latency histograms of one client or of a whole run.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    histograms: BTreeMap<String, Histogram<u64>>,
}

impl Latencies {
    /// No samples yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one sample of the operation `name`.
    pub fn record(&mut self, name: &str, latency: Duration) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_LATENCY_US);
        if !self.histograms.contains_key(name)
            && let Some(histogram) = new_histogram()
        {
            self.histograms.insert(name.to_owned(), histogram);
        }
        if let Some(histogram) = self.histograms.get_mut(name) {
            histogram.saturating_record(micros);
        }
    }

    /// Adds every sample of `other` (another client's) to this one.
    pub fn merge(&mut self, other: &Latencies) {
        for (name, theirs) in &other.histograms {
            let Some(ours) = self.histograms.get_mut(name) else {
                self.histograms.insert(name.clone(), theirs.clone());
                continue;
            };
            // Same bounds on both sides, so adding cannot fail; saturate rather than panic anyway.
            if ours.add(theirs).is_err() {
                for value in theirs.iter_recorded() {
                    ours.saturating_record_n(value.value_iterated_to(), value.count_at_value());
                }
            }
        }
    }

    /// The summary of every operation, by name.
    pub fn summaries(&self) -> BTreeMap<String, Summary> {
        self.histograms
            .iter()
            .map(|(name, histogram)| (name.clone(), Summary::of(histogram)))
            .collect()
    }
}

/// 1 µs .. 60 s at 3 significant digits: valid bounds, so this is never `None`.
fn new_histogram() -> Option<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).ok()
}

/// The percentiles of one operation's latencies, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// How many samples.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest sample.
    pub max_us: u64,
    /// Mean.
    pub mean_us: f64,
}

impl Summary {
    /// Summarizes a histogram; all zeros when it is empty.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self {
                count: 0,
                p50_us: 0,
                p90_us: 0,
                p99_us: 0,
                p999_us: 0,
                max_us: 0,
                mean_us: 0.0,
            };
        }
        Self {
            count: histogram.len(),
            p50_us: histogram.value_at_quantile(0.50),
            p90_us: histogram.value_at_quantile(0.90),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
            mean_us: round1(histogram.mean()),
        }
    }
}

/// The result of one run of a load tool: what `loadgen` and `etcd_bench` print as JSON.
///
/// The JSON is flat so that a shell script can read it with one `jq` path per figure: latency
/// summaries become `<op>_count`, `<op>_p50_us`, `<op>_p90_us`, `<op>_p99_us`, `<op>_p999_us`,
/// `<op>_max_us` and `<op>_mean_us`; counters and errors are objects keyed by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The tool: `loadgen` or `etcd_bench`.
    pub tool: String,
    /// What one op is: `bind-release`, `raw-put` or `cas-alloc`.
    pub mode: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Completed ops (an op whose every step succeeded).
    pub ops: u64,
    /// The run phase's wall-clock time, in seconds (setup excluded).
    pub elapsed_s: f64,
    /// ops / elapsed_s.
    pub ops_per_sec: f64,
    /// Latency summaries by operation name (`pair` is always one whole op).
    pub latencies: BTreeMap<String, Summary>,
    /// Event counters (leader hops, retries, CAS conflicts, ...), by name.
    pub counters: BTreeMap<String, u64>,
    /// Failed calls by `<op>:<reason>`; a failed call is counted once, after its retries.
    pub errors: BTreeMap<String, u64>,
}

impl Report {
    /// Builds a report from merged client results.
    pub fn new(tool: &str, mode: &str, clients: usize, ops: u64, elapsed: Duration, latencies: &Latencies) -> Self {
        let elapsed_s = elapsed.as_secs_f64();
        let ops_per_sec = if elapsed_s > 0.0 { ops as f64 / elapsed_s } else { 0.0 };
        Self {
            tool: tool.to_owned(),
            mode: mode.to_owned(),
            clients,
            ops,
            elapsed_s: round3(elapsed_s),
            ops_per_sec: round1(ops_per_sec),
            latencies: latencies.summaries(),
            counters: BTreeMap::new(),
            errors: BTreeMap::new(),
        }
    }

    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        // Serializing a map of numbers and strings cannot fail; an empty object is never printed.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A line for humans, e.g. `loadgen bind-release: 16 clients, 9000 ops in 20.0 s = 450.0
    /// ops/s; pair p50 2.10 ms p99 7.80 ms; 0 errors`.
    pub fn human_line(&self) -> String {
        let pair = self.latencies.get("pair").copied();
        let (p50, p99) = pair.map_or((0, 0), |s| (s.p50_us, s.p99_us));
        let errors: u64 = self.errors.values().sum();
        format!(
            "{} {}: {} clients, {} ops in {:.1} s = {:.1} ops/s; pair p50 {:.2} ms p99 {:.2} ms; {} errors",
            self.tool,
            self.mode,
            self.clients,
            self.ops,
            self.elapsed_s,
            self.ops_per_sec,
            p50 as f64 / 1000.0,
            p99 as f64 / 1000.0,
            errors
        )
    }
}

impl Serialize for Report {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("tool", &self.tool)?;
        map.serialize_entry("mode", &self.mode)?;
        map.serialize_entry("clients", &self.clients)?;
        map.serialize_entry("ops", &self.ops)?;
        map.serialize_entry("elapsed_s", &self.elapsed_s)?;
        map.serialize_entry("ops_per_sec", &self.ops_per_sec)?;
        for (name, s) in &self.latencies {
            map.serialize_entry(&format!("{name}_count"), &s.count)?;
            map.serialize_entry(&format!("{name}_p50_us"), &s.p50_us)?;
            map.serialize_entry(&format!("{name}_p90_us"), &s.p90_us)?;
            map.serialize_entry(&format!("{name}_p99_us"), &s.p99_us)?;
            map.serialize_entry(&format!("{name}_p999_us"), &s.p999_us)?;
            map.serialize_entry(&format!("{name}_max_us"), &s.max_us)?;
            map.serialize_entry(&format!("{name}_mean_us"), &s.mean_us)?;
        }
        map.serialize_entry("counters", &self.counters)?;
        map.serialize_entry("errors", &self.errors)?;
        map.end()
    }
}

/// Adds `n` to the counter `name`.
pub fn bump(counts: &mut BTreeMap<String, u64>, name: &str, n: u64) {
    if n == 0 {
        return;
    }
    *counts.entry(name.to_owned()).or_insert(0) += n;
}

/// Adds every count of `from` to `into`.
pub fn merge_counts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (name, n) in from {
        bump(into, name, *n);
    }
}

/// What one client (or, merged, a whole run) did.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Completed ops.
    pub ops: u64,
    /// Latencies by operation.
    pub latencies: Latencies,
    /// Event counters.
    pub counters: BTreeMap<String, u64>,
    /// Failed calls by `<op>:<reason>`.
    pub errors: BTreeMap<String, u64>,
}

impl Tally {
    /// Adds another client's tally.
    pub fn merge(&mut self, other: &Tally) {
        self.ops += other.ops;
        self.latencies.merge(&other.latencies);
        merge_counts(&mut self.counters, &other.counters);
        merge_counts(&mut self.errors, &other.errors);
    }

    /// The report of a run with this tally.
    pub fn report(&self, tool: &str, mode: &str, clients: usize, elapsed: Duration) -> Report {
        let mut report = Report::new(tool, mode, clients, self.ops, elapsed, &self.latencies);
        report.counters = self.counters.clone();
        report.errors = self.errors.clone();
        report
    }
}

/// When a run stops: after a duration, after a number of ops, or at whichever comes first.
/// Clients claim a ticket before each op; shared by every client of a run. The clock starts at
/// [`Budget::start`] (or at the first claim), so that a setup phase is not counted.
#[derive(Debug)]
pub struct Budget {
    duration: Option<Duration>,
    ops: Option<u64>,
    start: OnceLock<Instant>,
    claimed: AtomicU64,
}

impl Budget {
    /// A budget that ends `duration` after its start and/or after `ops` tickets; with neither,
    /// it ends at once.
    pub fn new(duration: Option<Duration>, ops: Option<u64>) -> Self {
        Self {
            duration,
            ops: if duration.is_none() && ops.is_none() {
                Some(0)
            } else {
                ops
            },
            start: OnceLock::new(),
            claimed: AtomicU64::new(0),
        }
    }

    /// Starts the clock (once; later calls return the first start).
    pub fn start(&self) -> Instant {
        *self.start.get_or_init(Instant::now)
    }

    /// Claims the ticket of one more op; false when the run is over.
    pub fn claim(&self) -> bool {
        if self.expired() {
            return false;
        }
        match self.ops {
            Some(ops) => self.claimed.fetch_add(1, Ordering::Relaxed) < ops,
            None => true,
        }
    }

    /// Whether the duration has passed since the start (ops budgets are not looked at).
    pub fn expired(&self) -> bool {
        let start = self.start();
        self.duration.is_some_and(|d| start.elapsed() >= d)
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut latencies = Latencies::new();
        for micros in 1..=1000 {
            latencies.record("pair", Duration::from_micros(micros));
        }
        let s = latencies.summaries()["pair"];
        assert_eq!(s.count, 1000);
        // 3 significant digits: values within 0.1 %.
        assert!((499..=501).contains(&s.p50_us), "{s:?}");
        assert!((989..=991).contains(&s.p99_us), "{s:?}");
        assert!((999..=1001).contains(&s.max_us), "{s:?}");
        assert!((s.mean_us - 500.5).abs() < 1.0, "{s:?}");
    }

    #[test]
    fn merge_adds_the_samples_of_every_client() {
        let mut a = Latencies::new();
        let mut b = Latencies::new();
        a.record("bind", Duration::from_micros(100));
        b.record("bind", Duration::from_micros(300));
        b.record("release", Duration::from_micros(50));
        a.merge(&b);
        let s = a.summaries();
        assert_eq!(s["bind"].count, 2);
        assert_eq!(s["bind"].max_us, 300);
        assert_eq!(s["release"].count, 1);
    }

    #[test]
    fn samples_are_clamped_to_the_histogram_bounds() {
        let mut latencies = Latencies::new();
        latencies.record("put", Duration::ZERO);
        latencies.record("put", Duration::from_secs(3600));
        let s = latencies.summaries()["put"];
        assert_eq!(s.count, 2);
        assert!(
            s.max_us >= MAX_LATENCY_US && s.max_us <= MAX_LATENCY_US + MAX_LATENCY_US / 1000,
            "{s:?}"
        );
    }

    #[test]
    fn json_is_flat_and_carries_every_figure() {
        let mut latencies = Latencies::new();
        latencies.record("pair", Duration::from_micros(2000));
        latencies.record("bind", Duration::from_micros(1000));
        let mut report = Report::new("loadgen", "bind-release", 16, 500, Duration::from_secs(2), &latencies);
        bump(&mut report.errors, "bind:unavailable", 2);
        bump(&mut report.counters, "leader_hops", 1);
        bump(&mut report.counters, "zero", 0);
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("test value");
        assert_eq!(json["tool"], "loadgen");
        assert_eq!(json["mode"], "bind-release");
        assert_eq!(json["clients"], 16);
        assert_eq!(json["ops"], 500);
        assert_eq!(json["ops_per_sec"], 250.0);
        assert_eq!(json["pair_p50_us"], 2000);
        assert_eq!(json["pair_count"], 1);
        assert_eq!(json["bind_p99_us"], 1000);
        assert_eq!(json["errors"]["bind:unavailable"], 2);
        assert_eq!(json["counters"]["leader_hops"], 1);
        assert!(json["counters"].get("zero").is_none());
        assert!(json.get("release_p50_us").is_none());
        // The first keys come in a fixed order, for eyes reading the raw line.
        assert!(
            report
                .to_json()
                .starts_with(r#"{"tool":"loadgen","mode":"bind-release","clients":16,"ops":500,"#)
        );
    }

    #[test]
    fn human_line_reads_milliseconds() {
        let mut latencies = Latencies::new();
        latencies.record("pair", Duration::from_micros(2100));
        let mut report = Report::new("etcd_bench", "cas-alloc", 64, 90, Duration::from_secs(3), &latencies);
        bump(&mut report.errors, "alloc:cas_exhausted", 3);
        assert_eq!(
            report.human_line(),
            "etcd_bench cas-alloc: 64 clients, 90 ops in 3.0 s = 30.0 ops/s; pair p50 2.10 ms p99 2.10 ms; 3 errors"
        );
    }

    #[test]
    fn an_empty_run_reports_zeros() {
        let report = Report::new("loadgen", "bind-release", 1, 0, Duration::ZERO, &Latencies::new());
        assert_eq!(report.ops_per_sec, 0.0);
        assert!(report.latencies.is_empty());
        assert!(report.human_line().contains("0 ops"));
    }

    #[test]
    fn a_budget_of_ops_hands_out_that_many_tickets() {
        let budget = Budget::new(None, Some(3));
        let granted = (0..10).filter(|_| budget.claim()).count();
        assert_eq!(granted, 3);
        let none = Budget::new(None, None);
        assert!(!none.claim());
        let zero = Budget::new(Some(Duration::ZERO), None);
        assert!(!zero.claim());
        assert!(zero.expired());
        let open = Budget::new(Some(Duration::from_secs(3600)), Some(5));
        let first = open.start();
        assert_eq!(open.start(), first, "the clock starts once");
        assert_eq!((0..1000).filter(|_| open.claim()).count(), 5);
    }

    #[test]
    fn tallies_merge_into_one_report() {
        let mut a = Tally {
            ops: 2,
            ..Tally::default()
        };
        a.latencies.record("pair", Duration::from_micros(10));
        bump(&mut a.errors, "bind:unavailable", 1);
        let mut b = Tally {
            ops: 3,
            ..Tally::default()
        };
        b.latencies.record("pair", Duration::from_micros(30));
        bump(&mut b.errors, "bind:unavailable", 2);
        bump(&mut b.counters, "leader_hops", 4);
        a.merge(&b);
        let report = a.report("loadgen", "bind-release", 2, Duration::from_secs(1));
        assert_eq!(report.ops, 5);
        assert_eq!(report.ops_per_sec, 5.0);
        assert_eq!(report.latencies["pair"].count, 2);
        assert_eq!(report.errors["bind:unavailable"], 3);
        assert_eq!(report.counters["leader_hops"], 4);
    }
}
