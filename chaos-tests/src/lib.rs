//! Chaos tests, the load generator and the etcd comparison benchmark.
//!
//! * [`loadgen`]: N clients binding and releasing pod addresses on an ipam-server cluster,
//!   following the leader, recording every acknowledged (and every unknown) outcome; the
//!   `loadgen` binary and the multi-process chaos tests drive it.
//! * [`etcd`]: the baseline — an etcd v3 client, raw puts, and the compare-and-swap allocator
//!   of Whereabouts and Calico; the `etcd_bench` binary.
//! * [`report`]: latency histograms and the JSON report both binaries print.
//! * [`routing`]: leader following and retries, as a pure decision plus the channels.
//!
//! `bench/raft_vs_etcd.sh` runs both against local 3-replica clusters in one go.

pub mod cli;
pub mod error;
pub mod etcd;
pub mod loadgen;
pub mod report;
/// Leader following and retries live in `ipam-client`, shared with the node agent and ipamctl.
pub use ipam_client as routing;

pub use error::Error;
pub use error::Result;
