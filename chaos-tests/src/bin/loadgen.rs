//! `loadgen`: N concurrent clients binding and releasing pod addresses on an ipam-server
//! cluster; prints one JSON line with ops/s and latency percentiles on stdout and a summary on
//! stderr.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ipam_chaos_tests::cli::init_logging;
use ipam_chaos_tests::cli::parse_duration;
use ipam_chaos_tests::cli::split_list;
use ipam_chaos_tests::loadgen;
use ipam_chaos_tests::loadgen::LoadgenConfig;
use ipam_chaos_tests::loadgen::parse_cidr;
use ipam_chaos_tests::routing::ChannelOptions;
use ipam_chaos_tests::routing::RetryPolicy;

/// Load generator for an ipam-server cluster: each client is a node that binds and releases
/// pod addresses in a loop.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The replicas' gRPC addresses, comma separated; the leader is found from any of them.
    #[arg(long, env = "LOADGEN_SERVERS", default_value = "127.0.0.1:7400")]
    servers: String,
    /// Concurrent clients (one node each).
    #[arg(long, env = "LOADGEN_CLIENTS", default_value_t = 16)]
    clients: usize,
    /// How long to run (e.g. 20s, 2m); 10s when neither this nor --ops is given.
    #[arg(long, env = "LOADGEN_DURATION", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// How many bind+release pairs to run in total.
    #[arg(long, env = "LOADGEN_OPS")]
    ops: Option<u64>,
    /// Names this run's nodes and request ids ([a-z0-9], at most 12); fresh by default.
    #[arg(long, env = "LOADGEN_RUN_ID")]
    run_id: Option<String>,
    /// The pool (the VPC's secondary CIDR); created if missing.
    #[arg(long, env = "LOADGEN_POOL", default_value = "100.64.0.0/10")]
    pool: String,
    /// Availability zones: one subnet config with a /16 of the pool each.
    #[arg(long, env = "LOADGEN_AZS", default_value_t = 3)]
    azs: u32,
    /// The region the AZ names are made of.
    #[arg(long, env = "LOADGEN_REGION", default_value = "us-east-1")]
    region: String,
    /// The cluster's ip cooldown is set to this (other settings are kept).
    #[arg(long, env = "LOADGEN_IP_COOLDOWN", default_value = "1s", value_parser = parse_duration)]
    ip_cooldown: Duration,
    /// The nodes' instance type (limits from the built-in table).
    #[arg(long, env = "LOADGEN_INSTANCE_TYPE", default_value = "m5.24xlarge")]
    instance_type: String,
    /// Secondary ENIs each node plans at setup.
    #[arg(long, env = "LOADGEN_ENIS_PER_NODE", default_value_t = 4)]
    enis_per_node: u32,
    /// Secondary addresses per ENI at setup; 0 for the instance type's maximum.
    #[arg(long, env = "LOADGEN_IPS_PER_ENI", default_value_t = 0)]
    ips_per_eni: u32,
    /// Append every bind and release outcome to this JSON lines file.
    #[arg(long, env = "LOADGEN_RECORD")]
    record: Option<PathBuf>,
    /// HTTP/2 connections per server, shared by the clients.
    #[arg(long, env = "LOADGEN_CONNECTIONS", default_value_t = 4)]
    connections: usize,
    /// Deadline of every call.
    #[arg(long, env = "LOADGEN_RPC_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    rpc_timeout: Duration,
    /// Attempts per call (leader hops and retries included).
    #[arg(long, env = "LOADGEN_MAX_ATTEMPTS", default_value_t = 10)]
    max_attempts: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let args = Args::parse();
    let mut config = LoadgenConfig::new(split_list(&args.servers));
    config.clients = args.clients;
    config.duration = match (args.duration, args.ops) {
        (None, None) => Some(Duration::from_secs(10)),
        (duration, _) => duration,
    };
    config.ops = args.ops;
    if let Some(run_id) = args.run_id {
        config.run_id = run_id;
    }
    config.pool = parse_cidr(&args.pool)?;
    config.azs = args.azs;
    config.region = args.region;
    config.ip_cooldown = args.ip_cooldown;
    config.instance_type = args.instance_type;
    config.enis_per_node = args.enis_per_node;
    config.ips_per_eni = args.ips_per_eni;
    config.record = args.record;
    config.channels = ChannelOptions {
        connections: args.connections.clamp(1, args.clients.max(1)),
        rpc_timeout: args.rpc_timeout,
        ..ChannelOptions::default()
    };
    config.retry = RetryPolicy {
        max_attempts: args.max_attempts.max(1),
        ..RetryPolicy::default()
    };
    let outcome = loadgen::run(&config)
        .await
        .with_context(|| format!("loadgen run {} against {}", config.run_id, args.servers))?;
    println!("{}", outcome.report.to_json());
    eprintln!("{} (run {})", outcome.report.human_line(), config.run_id);
    Ok(())
}
