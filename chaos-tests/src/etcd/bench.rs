//! The etcd benchmark: N clients against an etcd cluster, for a duration or a number of ops.
//!
//! * `raw-put`: one op = one Put of a unique key (the ceiling of any etcd-backed design: one
//!   replicated, fsynced write, no read, no contention).
//! * `cas-alloc`: one op = allocate + release through [`CasAllocator`] on one /16 pool key, as
//!   Whereabouts and Calico do; comparable with the IPAM's bind + release.
//!
//! Clients are spread round-robin over the endpoints (as etcd's Go client balances), each on one
//! of `connections` HTTP/2 connections per endpoint.

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use crate::error::Error;
use crate::error::Result;
use crate::etcd::EtcdKv;
use crate::etcd::Kv;
use crate::etcd::cas::CasAllocator;
use crate::report::Budget;
use crate::report::Report;
use crate::report::Tally;
use crate::report::bump;
use crate::routing::ChannelOptions;
use crate::routing::ChannelPool;
use crate::routing::code_name;

/// What one op is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One Put of a unique key.
    RawPut,
    /// Allocate + release through the compare-and-swap allocator.
    CasAlloc,
}

impl Mode {
    /// The name in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::RawPut => "raw-put",
            Self::CasAlloc => "cas-alloc",
        }
    }
}

/// The benchmark's configuration.
#[derive(Debug, Clone)]
pub struct EtcdBenchConfig {
    /// etcd client endpoints, `host:port`.
    pub endpoints: Vec<String>,
    /// Concurrent clients.
    pub clients: usize,
    /// What one op is.
    pub mode: Mode,
    /// Run for this long (with `ops`: whichever ends first).
    pub duration: Option<Duration>,
    /// Run this many ops in total.
    pub ops: Option<u64>,
    /// Every key starts with this (unique per run, so runs do not see each other's pools).
    pub key_prefix: String,
    /// Bytes of each raw-put value.
    pub value_size: usize,
    /// The pool's prefix length (16: a /16 of 65536 addresses).
    pub pool_prefix_len: u8,
    /// Conflicting transactions before an allocation gives up (Whereabouts and Calico: 100).
    pub max_cas_attempts: u32,
    /// Addresses allocated in the pool before the run (pods already running).
    pub prefill: u32,
    /// Connections and deadlines.
    pub channels: ChannelOptions,
}

impl EtcdBenchConfig {
    /// Checks that the configuration can run.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first problem.
    pub fn validate(&self) -> Result<()> {
        if self.endpoints.is_empty() {
            return Err(Error::Config("no etcd endpoint".to_owned()));
        }
        if self.clients == 0 {
            return Err(Error::Config("clients must be at least 1".to_owned()));
        }
        if self.duration.is_none() && self.ops.is_none() {
            return Err(Error::Config("give a duration or a number of ops".to_owned()));
        }
        if !(8..=30).contains(&self.pool_prefix_len) {
            return Err(Error::Config("the pool prefix length must be 8 to 30".to_owned()));
        }
        Ok(())
    }

    fn pool_size(&self) -> u32 {
        1u32 << (32 - u32::from(self.pool_prefix_len))
    }
}

/// Runs the benchmark and returns its report.
///
/// # Errors
///
/// A bad configuration, or a failed setup (the pool could not be created).
pub async fn run(config: &EtcdBenchConfig) -> Result<Report> {
    config.validate()?;
    let pool = ChannelPool::new(config.channels);
    let kvs = (0..config.clients)
        .map(|c| {
            let endpoint = &config.endpoints[c % config.endpoints.len()];
            pool.get(endpoint, c / config.endpoints.len())
                .map(EtcdKv::new)
                .map_err(|s| Error::rpc("etcd channel", s))
        })
        .collect::<Result<Vec<_>>>()?;
    let pool_key = format!("{}/pool", config.key_prefix).into_bytes();
    if config.mode == Mode::CasAlloc
        && let Some(kv) = kvs.first()
    {
        let allocator = CasAllocator::new(
            kv.clone(),
            pool_key.clone(),
            config.pool_size(),
            config.max_cas_attempts,
        );
        allocator.create_pool(config.prefill).await?;
    }

    let budget = Arc::new(Budget::new(config.duration, config.ops));
    let start = budget.start();
    let mut tasks = Vec::with_capacity(config.clients);
    for (client, kv) in kvs.into_iter().enumerate() {
        let budget = Arc::clone(&budget);
        let config = config.clone();
        let pool_key = pool_key.clone();
        tasks.push(tokio::spawn(async move {
            match config.mode {
                Mode::RawPut => raw_put_client(&kv, &config, client, &budget).await,
                Mode::CasAlloc => {
                    let allocator = CasAllocator::new(kv, pool_key, config.pool_size(), config.max_cas_attempts);
                    cas_client(&allocator, &config, client, &budget).await
                }
            }
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        match task.await {
            Ok(tally) => total.merge(&tally),
            Err(e) => bump(&mut total.errors, &format!("client:{e}"), 1),
        }
    }
    Ok(total.report("etcd_bench", config.mode.name(), config.clients, start.elapsed()))
}

/// The error counter name of a failed op step, e.g. `put:unavailable`, `alloc:cas_exhausted`.
pub fn error_key(op: &str, error: &Error) -> String {
    let reason = match error {
        Error::Rpc { status, .. } => code_name(status.code()),
        Error::CasExhausted { .. } => "cas_exhausted",
        Error::PoolFull => "pool_full",
        Error::CorruptPool(_) => "corrupt_pool",
        Error::NotAllocated { .. } => "not_allocated",
        Error::Config(_) | Error::Protocol { .. } | Error::Io(_) => "other",
    };
    format!("{op}:{reason}")
}

/// A pause after a failed op, so that a client facing a dead cluster does not spin.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

async fn raw_put_client(kv: &EtcdKv, config: &EtcdBenchConfig, client: usize, budget: &Budget) -> Tally {
    let mut tally = Tally::default();
    let value = vec![b'x'; config.value_size];
    let mut seq: u64 = 0;
    while budget.claim() {
        seq += 1;
        let key = format!("{}/put/{client}/{seq}", config.key_prefix);
        let started = Instant::now();
        match kv.put(key.as_bytes(), &value).await {
            Ok(()) => {
                let took = started.elapsed();
                tally.latencies.record("put", took);
                tally.latencies.record("pair", took);
                tally.ops += 1;
            }
            Err(e) => {
                bump(&mut tally.errors, &error_key("put", &e), 1);
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    tally
}

async fn cas_client<K: Kv>(
    allocator: &CasAllocator<K>,
    config: &EtcdBenchConfig,
    client: usize,
    budget: &Budget,
) -> Tally {
    let mut tally = Tally::default();
    let mut seq: u64 = 0;
    while budget.claim() {
        seq += 1;
        // Whereabouts records the pod reference and the container id with each allocation.
        let owner = format!(
            "{}/pod-{client}-{seq} {:016x}{:016x}{:016x}{:016x}",
            config.key_prefix, client, seq, client, seq
        );
        let started = Instant::now();
        let offset = match allocator.allocate(&owner).await {
            Ok((offset, counts)) => {
                tally.latencies.record("alloc", started.elapsed());
                bump(&mut tally.counters, "cas_txns", u64::from(counts.txns));
                bump(&mut tally.counters, "cas_conflicts", u64::from(counts.conflicts));
                offset
            }
            Err(e) => {
                bump(&mut tally.errors, &error_key("alloc", &e), 1);
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        let release_started = Instant::now();
        match allocator.release(offset, &owner).await {
            Ok(counts) => {
                tally.latencies.record("release", release_started.elapsed());
                tally.latencies.record("pair", started.elapsed());
                bump(&mut tally.counters, "cas_txns", u64::from(counts.txns));
                bump(&mut tally.counters, "cas_conflicts", u64::from(counts.conflicts));
                tally.ops += 1;
            }
            Err(e) => {
                bump(&mut tally.errors, &error_key("release", &e), 1);
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::testing::MemKv;

    fn config(mode: Mode) -> EtcdBenchConfig {
        EtcdBenchConfig {
            endpoints: vec!["127.0.0.1:2379".to_owned()],
            clients: 4,
            mode,
            duration: None,
            ops: Some(40),
            key_prefix: "t".to_owned(),
            value_size: 16,
            pool_prefix_len: 16,
            max_cas_attempts: 100,
            prefill: 0,
            channels: ChannelOptions::default(),
        }
    }

    #[test]
    fn configurations_that_cannot_run_are_refused() {
        assert!(config(Mode::RawPut).validate().is_ok());
        let mut c = config(Mode::RawPut);
        c.endpoints.clear();
        assert!(c.validate().is_err());
        let mut c = config(Mode::RawPut);
        c.clients = 0;
        assert!(c.validate().is_err());
        let mut c = config(Mode::RawPut);
        c.ops = None;
        assert!(c.validate().is_err());
        let mut c = config(Mode::CasAlloc);
        c.pool_prefix_len = 31;
        assert!(c.validate().is_err());
        assert_eq!(config(Mode::CasAlloc).pool_size(), 65536);
    }

    #[test]
    fn error_keys_name_the_step_and_the_reason() {
        assert_eq!(
            error_key("alloc", &Error::CasExhausted { attempts: 100 }),
            "alloc:cas_exhausted"
        );
        assert_eq!(
            error_key("put", &Error::rpc("etcd Put", tonic::Status::unavailable("down"))),
            "put:unavailable"
        );
    }

    #[tokio::test]
    async fn the_cas_client_counts_ops_and_transactions() {
        let config = config(Mode::CasAlloc);
        let allocator = CasAllocator::new(MemKv::new(), b"t/pool".to_vec(), 65536, 100);
        allocator.create_pool(0).await.expect("test value");
        let budget = Budget::new(None, Some(5));
        let tally = cas_client(&allocator, &config, 0, &budget).await;
        assert_eq!(tally.ops, 5);
        assert_eq!(tally.counters["cas_txns"], 10);
        assert!(!tally.counters.contains_key("cas_conflicts"));
        assert_eq!(tally.latencies.summaries()["pair"].count, 5);
        assert!(tally.errors.is_empty());
    }
}
