//! Real processes: three `ipam-server` replicas on 127.0.0.1-3, the load generator binding and
//! releasing through them, the leader SIGKILLed mid-load and restarted after the others have
//! compacted their logs past it (so it must catch up through a snapshot), then a fourth replica
//! added later (learner, then voter). The oracle reads every replica's ledger (Export):
//!
//! * the ledgers are identical, event for event;
//! * every bind the load generator saw acknowledged is in them, with its lease id and address;
//! * replaying them, no address is ever bound twice at once;
//! * the restarted replica logged that it installed a snapshot, and the late replica serves the
//!   full history from seq 1.
//!
//! A bind whose answer was lost is "unknown": it may or may not be in the ledger, and the oracle
//! does not care which.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::net::TcpListener;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use ipam_chaos_tests::loadgen::LoadgenConfig;
use ipam_chaos_tests::loadgen::Outcome;
use ipam_chaos_tests::loadgen::RecordOp;
use ipam_proto::ipam::v1 as pb;
use ipam_proto::ipam::v1::admin_service_client::AdminServiceClient;
use ipam_proto::ipam::v1::audit_service_client::AuditServiceClient;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

mod common;
use common::TempDir;

/// Entries between snapshots: small, so the leader's log is purged within seconds of load.
const SNAPSHOT_AFTER: u64 = 300;
/// Entries kept behind a snapshot.
const KEEP_BEHIND: u64 = 100;
/// Log entries the killed leader may have appended after its last status answer.
const REPLICATION_SLACK: u64 = 200;
/// The longest any wait in this test may take.
const PATIENCE: Duration = Duration::from_secs(60);

/// One replica process and how to start it again.
struct Replica {
    id: u64,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Replica {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("log file {}: {e}", self.log.display()));
        let child = Command::new(env!("CARGO_BIN_EXE_ipam-server"))
            .args(&self.args)
            .env(
                "RUST_LOG",
                "warn,ipam_server::raft::state_machine=info,ipam_server::server=info",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start replica {}: {e}", self.id));
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown, no flush beyond what sled already did.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free port on `ip` (bound and released; the replica binds it a moment later).
fn free_addr(ip: [u8; 4]) -> SocketAddr {
    let listener = TcpListener::bind(SocketAddr::from((ip, 0))).unwrap_or_else(|e| panic!("bind {ip:?}: {e}"));
    listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
}

fn replica(dir: &Path, id: u64, addr: SocketAddr, cluster: &[String]) -> Replica {
    let mut args = vec![
        "--id".to_owned(),
        id.to_string(),
        "--listen".to_owned(),
        addr.to_string(),
        "--no-http".to_owned(),
        "--data-dir".to_owned(),
        dir.join(format!("replica-{id}")).display().to_string(),
        "--snapshot-after-entries".to_owned(),
        SNAPSHOT_AFTER.to_string(),
        "--keep-entries-behind-snapshot".to_owned(),
        KEEP_BEHIND.to_string(),
    ];
    if cluster.is_empty() {
        args.push("--join".to_owned());
    } else {
        args.push("--peers".to_owned());
        args.push(cluster.join(","));
    }
    Replica {
        id,
        args,
        log: dir.join(format!("replica-{id}.log")),
        child: None,
    }
}

fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5))
        .connect_lazy()
}

async fn status(addr: SocketAddr) -> Option<pb::ClusterInfo> {
    let mut admin = AdminServiceClient::new(channel(addr));
    admin
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .ok()
        .and_then(|r| r.into_inner().cluster)
}

/// Polls `check` every 100 ms until it answers `Some`, for at most [`PATIENCE`].
async fn eventually<T, F>(what: &str, mut check: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "timed out after {PATIENCE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The leader all of `addrs` agree on.
async fn agreed_leader(addrs: &[SocketAddr]) -> pb::ClusterInfo {
    eventually("a leader every replica knows", || async {
        let mut leader = None;
        for addr in addrs {
            let info = status(*addr).await?;
            if info.leader_id == 0 || leader.is_some_and(|l| l != info.leader_id) {
                return None;
            }
            leader = Some(info.leader_id);
        }
        let leader_addr: SocketAddr = status(addrs[0]).await?.leader_address.parse().ok()?;
        status(leader_addr).await.filter(|info| Some(info.id) == leader)
    })
    .await
}

async fn export(addr: SocketAddr) -> Vec<pb::Event> {
    let mut audit = AuditServiceClient::new(channel(addr));
    let mut stream = audit
        .export(pb::ExportRequest::default())
        .await
        .unwrap_or_else(|e| panic!("export from {addr}: {e}"))
        .into_inner();
    let mut events = Vec::new();
    while let Some(event) = stream
        .message()
        .await
        .unwrap_or_else(|e| panic!("export from {addr}: {e}"))
    {
        events.push(event);
    }
    events
}

/// The last applied index every replica of `addrs` reports, if they all report the same.
async fn common_applied(addrs: &[SocketAddr]) -> (Option<u64>, Vec<(SocketAddr, Option<pb::ClusterInfo>)>) {
    let mut applied = BTreeSet::new();
    let mut views = Vec::new();
    for addr in addrs {
        let info = status(*addr).await;
        applied.insert(info.as_ref().map(|i| i.last_applied_index));
        views.push((*addr, info));
    }
    let common = match applied.into_iter().collect::<Vec<_>>().as_slice() {
        [Some(index)] => Some(*index),
        _ => None,
    };
    (common, views)
}

/// Waits until every replica has applied the same entries and nothing more is being written
/// (the leader's controllers go quiet once cooldowns have ended), and returns their whole
/// ledgers, exported while nothing changed: the same applied index before and after the exports.
async fn converged(addrs: &[SocketAddr], logs: &[&Replica]) -> Vec<Vec<pb::Event>> {
    let start = Instant::now();
    loop {
        let (before, views) = common_applied(addrs).await;
        if let Some(before) = before {
            tokio::time::sleep(Duration::from_millis(1_000)).await;
            if common_applied(addrs).await.0 == Some(before) {
                let mut ledgers = Vec::new();
                for addr in addrs {
                    ledgers.push(export(*addr).await);
                }
                if common_applied(addrs).await.0 == Some(before) {
                    return ledgers;
                }
            }
        }
        if start.elapsed() >= PATIENCE {
            let mut report = format!("the replicas did not settle on the same entries within {PATIENCE:?}:\n");
            for (addr, info) in views {
                report.push_str(&format!("  {addr}: {info:?}\n"));
            }
            for replica in logs {
                let text = replica.log_text();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                report.push_str(&format!(
                    "--- replica {} log (last 40 lines, newest first):\n",
                    replica.id
                ));
                report.push_str(&tail.join("\n"));
                report.push('\n');
            }
            panic!("{report}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Replays binds and releases: every address is bound by at most one lease at a time, and
/// releases name the lease that holds the address. Returns the lease ids bound.
fn check_no_double_binding(ledger: &[pb::Event]) -> BTreeMap<u64, String> {
    let mut holder: BTreeMap<&str, u64> = BTreeMap::new();
    let mut bound = BTreeMap::new();
    for (position, event) in ledger.iter().enumerate() {
        assert_eq!(event.seq, position as u64 + 1, "sequence numbers are gapless from 1");
        let ip = event.ips.first().map(String::as_str).unwrap_or_default();
        match event.kind.as_str() {
            "IpBound" => {
                if let Some(other) = holder.insert(ip, event.lease_id) {
                    panic!(
                        "{ip} bound to lease {} while lease {other} held it (seq {})",
                        event.lease_id, event.seq
                    );
                }
                bound.insert(event.lease_id, ip.to_owned());
            }
            "IpReleased" => {
                assert_eq!(
                    holder.remove(ip),
                    Some(event.lease_id),
                    "seq {}: release of {ip} names lease {}, which did not hold it",
                    event.seq,
                    event.lease_id
                );
            }
            _ => {}
        }
    }
    bound
}

/// WhoHad and History on every replica in `addrs`, read stale, agree with each other and with
/// `ledger` (the exported events): for a sample of addresses, the holder at each bind and each
/// release instant, and the address's history. A linearizable read on a follower is refused
/// with the leader's address.
async fn audits_agree(addrs: &[SocketAddr], ledger: &[pb::Event]) {
    let binds: Vec<&pb::Event> = ledger
        .iter()
        .filter(|e| e.kind == "IpBound")
        .step_by(97)
        .take(12)
        .collect();
    assert!(!binds.is_empty());
    for bind in binds {
        let ip = bind.ips[0].clone();
        let release_of = |lease: u64| {
            ledger
                .iter()
                .find(|e| e.kind == "IpReleased" && e.lease_id == lease)
                .map(|e| e.at_unix_ms)
        };
        // The holders at the bind's instant by replay: bound by then, not released by then (a
        // bind and release in the same millisecond held it for no instant).
        let expected: Vec<(u64, i64)> = ledger
            .iter()
            .filter(|e| e.kind == "IpBound" && e.ips.contains(&ip) && e.at_unix_ms <= bind.at_unix_ms)
            .filter(|e| release_of(e.lease_id).is_none_or(|r| r > bind.at_unix_ms))
            .map(|e| (e.lease_id, release_of(e.lease_id).unwrap_or(0)))
            .collect();
        let expected_history: Vec<u64> = ledger.iter().filter(|e| e.ips.contains(&ip)).map(|e| e.seq).collect();
        for addr in addrs {
            let mut audit = AuditServiceClient::new(channel(*addr));
            let holders = audit
                .who_had(pb::WhoHadRequest {
                    ip: ip.clone(),
                    at_unix_ms: bind.at_unix_ms,
                    consistency: pb::Consistency::Stale.into(),
                })
                .await
                .unwrap_or_else(|e| panic!("who-had {ip} on {addr}: {e}"))
                .into_inner()
                .bindings;
            let answered: Vec<(u64, i64)> = holders
                .iter()
                .map(|b| (b.lease.as_ref().map_or(0, |l| l.lease_id), b.released_at_unix_ms))
                .collect();
            assert_eq!(
                answered, expected,
                "who held {ip} at {} (asked {addr})",
                bind.at_unix_ms
            );
            let mut seqs = Vec::new();
            let mut token = String::new();
            loop {
                let page = audit
                    .history(pb::HistoryRequest {
                        key_kind: pb::EventKeyKind::Ip.into(),
                        key: ip.clone(),
                        page_token: token,
                        consistency: pb::Consistency::Stale.into(),
                        ..pb::HistoryRequest::default()
                    })
                    .await
                    .unwrap_or_else(|e| panic!("history of {ip} on {addr}: {e}"))
                    .into_inner();
                seqs.extend(page.events.iter().map(|e| e.seq));
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            assert_eq!(seqs, expected_history, "history of {ip} on {addr}");
        }
    }
    let leader = agreed_leader(addrs).await;
    let follower = addrs
        .iter()
        .find(|a| a.to_string() != leader.leader_address)
        .unwrap_or_else(|| panic!("no follower"));
    let refused = AuditServiceClient::new(channel(*follower))
        .who_had(pb::WhoHadRequest {
            ip: ledger
                .iter()
                .find(|e| e.kind == "IpBound")
                .map(|e| e.ips[0].clone())
                .unwrap_or_default(),
            at_unix_ms: 0,
            consistency: pb::Consistency::Linearizable.into(),
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("a linearizable read on follower {follower} must go to the leader"));
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(
        refused.metadata().get("ipam-leader").and_then(|v| v.to_str().ok()),
        Some(leader.leader_address.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_load_loses_no_acknowledged_bind() {
    let dir = TempDir::new("t70");
    std::fs::create_dir_all(&dir.0).unwrap_or_else(|e| panic!("{e}"));
    let addrs: Vec<SocketAddr> = (1..=3).map(|i| free_addr([127, 0, 0, i])).collect();
    let cluster: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect();
    let mut replicas: Vec<Replica> = (1..=3u64)
        .map(|id| replica(&dir.0, id, addrs[id as usize - 1], &cluster))
        .collect();
    for r in &mut replicas {
        r.start();
    }
    let first = agreed_leader(&addrs).await;

    // Load: 8 clients for 14 s through all three replicas; records kept in memory.
    let mut config = LoadgenConfig::new(addrs.iter().map(ToString::to_string).collect());
    config.clients = 8;
    config.duration = Some(Duration::from_secs(14));
    config.enis_per_node = 2;
    config.keep_records = true;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(async move { ipam_chaos_tests::loadgen::run_until(&config, stop_rx).await });

    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = agreed_leader(&addrs).await;
    let victim = usize::try_from(leader.id).unwrap_or(0) - 1;
    // Entries may still reach the victim's log between this status and the kill; a margin of
    // REPLICATION_SLACK keeps "the purge passed its log" true anyway.
    let victim_last = leader.last_log_index + REPLICATION_SLACK;
    replicas[victim].kill();
    let survivors: Vec<SocketAddr> = addrs.iter().copied().filter(|a| *a != addrs[victim]).collect();

    // The survivors elect a new leader and go on taking writes until their log is purged past
    // the victim's last entry, so that it can only catch up through a snapshot.
    let next = agreed_leader(&survivors).await;
    assert_ne!(next.id, leader.id, "a new leader among the survivors");
    eventually("the new leader to purge its log past the killed replica", || async {
        let info = status(next.leader_address.parse().ok()?).await?;
        (info.purged_log_index > victim_last).then_some(())
    })
    .await;
    replicas[victim].start();

    let outcome = load
        .await
        .unwrap_or_else(|e| panic!("load task: {e}"))
        .unwrap_or_else(|e| panic!("load generator: {e}"));
    drop(stop);
    let acked: Vec<_> = outcome
        .records
        .iter()
        .filter(|r| r.op == RecordOp::Bind && r.outcome == Outcome::Ok)
        .collect();
    assert!(
        acked.len() > 100,
        "the load generator got only {} binds through",
        acked.len()
    );

    let ledgers = converged(&addrs, &replicas.iter().collect::<Vec<_>>()).await;
    assert!(
        ledgers.iter().all(|l| l == &ledgers[0]),
        "every replica holds the same ledger ({:?} events)",
        ledgers.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let bound = check_no_double_binding(&ledgers[0]);
    for record in &acked {
        assert_eq!(
            bound.get(&record.lease_id),
            Some(&record.ip),
            "acknowledged bind of lease {} ({}) is in the ledger",
            record.lease_id,
            record.ip
        );
    }
    assert!(
        replicas[victim]
            .log_text()
            .contains("snapshot installed with its ledger"),
        "the restarted replica caught up through a snapshot; its log:\n{}",
        replicas[victim].log_text()
    );
    println!(
        "t70: {} acknowledged binds, {} events, first leader {}, killed {}, new leader {}",
        acked.len(),
        ledgers[0].len(),
        first.id,
        leader.id,
        next.id
    );

    // A fourth replica, added later: learner, then voter. It serves the whole history.
    let fourth_addr = free_addr([127, 0, 0, 4]);
    let mut fourth = replica(&dir.0, 4, fourth_addr, &[]);
    fourth.start();
    let leader = agreed_leader(&addrs).await;
    let mut admin = AdminServiceClient::new(channel(leader.leader_address.parse().unwrap_or_else(|e| panic!("{e}"))));
    admin
        .add_learner(pb::AddLearnerRequest {
            id: 4,
            address: fourth_addr.to_string(),
            wait_for_catch_up: true,
        })
        .await
        .unwrap_or_else(|e| panic!("add learner: {e}"));
    admin
        .change_membership(pb::ChangeMembershipRequest {
            voter_ids: vec![1, 2, 3, 4],
            retain_as_learners: false,
        })
        .await
        .unwrap_or_else(|e| panic!("promote: {e}"));
    let all: Vec<SocketAddr> = addrs.iter().copied().chain([fourth_addr]).collect();
    let ledgers = converged(&all, &replicas.iter().chain([&fourth]).collect::<Vec<_>>()).await;
    assert_eq!(
        ledgers[3], ledgers[0],
        "the late replica serves the full history from seq 1"
    );
    assert_eq!(ledgers[3].first().map(|e| e.seq), Some(1));
    let members = status(fourth_addr).await.map(|i| i.members.len());
    assert_eq!(members, Some(4));

    // Every replica, the late one included, answers who-had and history alike (stale reads, so
    // each answers from its own ledger), and as the ledger itself says.
    audits_agree(&all, &ledgers[0]).await;

    // Replica 1 loses its disk. On restart with the same flags it would be the one to initialize
    // a cluster; it must see that its peers already have one, and refuse.
    replicas[0].kill();
    std::fs::remove_dir_all(dir.0.join("replica-1")).unwrap_or_else(|e| panic!("wipe replica 1: {e}"));
    replicas[0].start();
    eventually("replica 1 to refuse to initialize over an existing cluster", || async {
        replicas[0].log_text().contains("not initializing: peer").then_some(())
    })
    .await;
    drop(fourth);
    drop(replicas);
}
