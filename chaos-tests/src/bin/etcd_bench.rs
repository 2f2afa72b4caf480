//! `etcd_bench`: the etcd baseline of the IPAM benchmark. N concurrent clients doing raw puts
//! or compare-and-swap allocations (Whereabouts / Calico style) against an etcd v3 cluster;
//! prints the same JSON line as `loadgen` on stdout and a summary on stderr.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use clap::ValueEnum;
use ipam_chaos_tests::cli::init_logging;
use ipam_chaos_tests::cli::parse_duration;
use ipam_chaos_tests::cli::split_list;
use ipam_chaos_tests::etcd::bench;
use ipam_chaos_tests::etcd::bench::EtcdBenchConfig;
use ipam_chaos_tests::etcd::bench::Mode;
use ipam_chaos_tests::loadgen::new_run_id;
use ipam_chaos_tests::routing::ChannelOptions;

/// What one op is.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    /// One Put of a unique key.
    RawPut,
    /// Allocate + release through a compare-and-swap on one /16 pool key.
    CasAlloc,
}

/// etcd baseline for the IPAM benchmark.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// etcd client endpoints, comma separated; clients are spread over them.
    #[arg(long, env = "ETCD_BENCH_ENDPOINTS", default_value = "127.0.0.1:2379")]
    endpoints: String,
    /// What one op is.
    #[arg(long, env = "ETCD_BENCH_MODE", value_enum)]
    mode: ModeArg,
    /// Concurrent clients.
    #[arg(long, env = "ETCD_BENCH_CLIENTS", default_value_t = 16)]
    clients: usize,
    /// How long to run (e.g. 20s); 10s when neither this nor --ops is given.
    #[arg(long, env = "ETCD_BENCH_DURATION", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// How many ops to run in total.
    #[arg(long, env = "ETCD_BENCH_OPS")]
    ops: Option<u64>,
    /// Prefix of every key; a fresh one per run by default, so runs start from an empty pool.
    #[arg(long, env = "ETCD_BENCH_PREFIX")]
    prefix: Option<String>,
    /// Bytes per raw-put value.
    #[arg(long, env = "ETCD_BENCH_VALUE_SIZE", default_value_t = 256)]
    value_size: usize,
    /// Prefix length of the CAS pool (16: 65536 addresses).
    #[arg(long, env = "ETCD_BENCH_POOL_PREFIX_LEN", default_value_t = 16)]
    pool_prefix_len: u8,
    /// Conflicting transactions before an allocation gives up (Whereabouts and Calico: 100).
    #[arg(long, env = "ETCD_BENCH_MAX_CAS_ATTEMPTS", default_value_t = 100)]
    max_cas_attempts: u32,
    /// Addresses allocated in the pool before the run (pods already running).
    #[arg(long, env = "ETCD_BENCH_PREFILL", default_value_t = 0)]
    prefill: u32,
    /// HTTP/2 connections per endpoint, shared by the clients.
    #[arg(long, env = "ETCD_BENCH_CONNECTIONS", default_value_t = 4)]
    connections: usize,
    /// Deadline of every call.
    #[arg(long, env = "ETCD_BENCH_RPC_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    rpc_timeout: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let args = Args::parse();
    let mode = match args.mode {
        ModeArg::RawPut => Mode::RawPut,
        ModeArg::CasAlloc => Mode::CasAlloc,
    };
    let config = EtcdBenchConfig {
        endpoints: split_list(&args.endpoints),
        clients: args.clients,
        mode,
        duration: match (args.duration, args.ops) {
            (None, None) => Some(Duration::from_secs(10)),
            (duration, _) => duration,
        },
        ops: args.ops,
        key_prefix: args.prefix.unwrap_or_else(|| format!("/ipam-bench/{}", new_run_id())),
        value_size: args.value_size,
        pool_prefix_len: args.pool_prefix_len,
        max_cas_attempts: args.max_cas_attempts,
        prefill: args.prefill,
        channels: ChannelOptions {
            connections: args.connections.clamp(1, args.clients.max(1)),
            rpc_timeout: args.rpc_timeout,
            ..ChannelOptions::default()
        },
    };
    let report = bench::run(&config)
        .await
        .with_context(|| format!("etcd_bench {} against {}", mode.name(), args.endpoints))?;
    println!("{}", report.to_json());
    eprintln!("{}", report.human_line());
    Ok(())
}
