//! The `ipam-server` binary as a newcomer meets it: no flags in an empty directory gives a
//! single-replica cluster on 127.0.0.1:7400 with its data in `./ipam-data`, that stops cleanly on
//! SIGTERM and comes back with its state; a bad configuration exits with status 2 and says what
//! is wrong.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use ipam_proto::ipam::v1 as pb;
use ipam_proto::ipam::v1::admin_service_client::AdminServiceClient;
use tonic::transport::Endpoint;

mod common;
use common::TempDir;

const BINARY: &str = env!("CARGO_BIN_EXE_ipam-server");

fn run_to_exit(cwd: &Path, args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(BINARY)
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run ipam-server: {e}"));
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_exits_2_and_names_the_problem() {
    let dir = TempDir::new("t65-bad");
    std::fs::create_dir_all(&dir.0).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.0.join("typo.toml"), "idd = 3\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.0.join("a-file"), "").unwrap_or_else(|e| panic!("{e}"));
    let cases: [(&[&str], &str); 6] = [
        (&["--id", "0"], "ids start at 1"),
        (&["--peers", "1=no-port"], "no port"),
        (&["--config", "typo.toml"], "unknown field `idd`"),
        (&["--config", "missing.toml"], "cannot read config file"),
        (&["--data-dir", "a-file"], "is a file"),
        (&["--log", "info,[["], "log filter"),
    ];
    for (args, says) in cases {
        let (code, stderr) = run_to_exit(&dir.0, args);
        assert_eq!(code, Some(2), "{args:?} exits 2; stderr: {stderr}");
        assert!(stderr.contains(says), "{args:?} says {says:?}; stderr: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

fn admin(addr: SocketAddr) -> AdminServiceClient<tonic::transport::Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    AdminServiceClient::new(channel)
}

async fn cluster_status(addr: SocketAddr) -> Option<pb::ClusterInfo> {
    admin(addr)
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .ok()
        .and_then(|r| r.into_inner().cluster)
}

async fn wait_for_leader(addr: SocketAddr) -> pb::ClusterInfo {
    let start = Instant::now();
    loop {
        if let Some(info) = cluster_status(addr).await.filter(|i| i.leader_id != 0) {
            return info;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no leader at {addr} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sigterm(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap_or_else(|e| panic!("kill -TERM: {e}"));
    assert!(status.success());
}

#[tokio::test]
async fn no_flags_runs_a_single_replica_that_restarts_with_its_state() {
    let default_addr = SocketAddr::from(([127, 0, 0, 1], 7400));
    if std::net::TcpListener::bind(default_addr).is_err() {
        panic!("{default_addr} is in use: this test runs ipam-server with its defaults and needs the port");
    }
    let dir = TempDir::new("t65-defaults");
    std::fs::create_dir_all(&dir.0).unwrap_or_else(|e| panic!("{e}"));
    for run in 0..2 {
        let mut child = Command::new(BINARY)
            .current_dir(&dir.0)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start ipam-server: {e}"));
        let info = wait_for_leader(default_addr).await;
        assert_eq!((info.id, info.leader_id), (1, 1), "run {run}: replica 1 leads itself");
        assert_eq!(info.members.len(), 1);
        assert_eq!(info.leader_address, "127.0.0.1:7400");
        if run == 0 {
            admin(default_addr)
                .create_pool(pb::CreatePoolRequest {
                    request_id: "t65-pool".to_owned(),
                    cidr: "100.64.0.0/16".to_owned(),
                })
                .await
                .unwrap_or_else(|e| panic!("create a pool: {e}"));
        }
        let pools = admin(default_addr)
            .list_pools(pb::ListPoolsRequest {})
            .await
            .unwrap_or_else(|e| panic!("list pools: {e}"))
            .into_inner()
            .pools;
        let cidrs: Vec<&str> = pools.iter().map(|p| p.cidr.as_str()).collect();
        assert_eq!(
            cidrs,
            ["100.64.0.0/16"],
            "run {run}: the pool is there (after a restart too)"
        );
        sigterm(&child);
        let status = child.wait().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status.code(), Some(0), "run {run}: SIGTERM stops it cleanly");
    }
    assert!(dir.0.join("ipam-data").is_dir(), "the data lives in ./ipam-data");
}
