//! The state machine on real commands: entries go in as Raft would hand them over, replies come
//! out, and a reopened database rebuilds exactly the same state.

use ipam_core::CommandBody;
use ipam_core::Reply;
use ipam_core::State;
use ipam_core::command::AgentRef;
use ipam_core::command::EniRequest;
use ipam_core::ids::Actor;
use ipam_core::ids::RequestId;
use ipam_core::limits::InstanceLimits;
use ipam_core::testing::check_invariants;
use ipam_core::testing::node_spec;
use ipam_core::testing::pod;
use ipam_core::testing::subnet_config;
use ipam_server::raft::Outcome;
use ipam_server::raft::Proposal;
use ipam_server::raft::StateMachine;
use ipam_server::raft::types::Entry;
use openraft::CommittedLeaderId;
use openraft::EntryPayload;
use openraft::LogId;
use openraft::Membership;
use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;

mod common;
use common::TempDir;
#[path = "common/state_machine.rs"]
mod open_state_machine;
use open_state_machine::open;

const NODE: &str = "ip-10-0-1-10.us-west-2.compute.internal";
const AZ: &str = "us-west-2a";

/// Sends `leader`'s current snapshot to `follower` as openraft does: what
/// `get_current_snapshot` gives (the state and the ledger; a built snapshot's own file holds the
/// state only), into the file the follower opened for it, then installed.
async fn send_snapshot(leader: &mut StateMachine, follower: &mut StateMachine) {
    let snapshot = leader
        .get_current_snapshot()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("the leader has no snapshot"));
    let mut received = follower
        .begin_receiving_snapshot()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut sent = snapshot.snapshot;
    tokio::io::copy(&mut sent, &mut *received)
        .await
        .unwrap_or_else(|e| panic!("copy the snapshot: {e}"));
    follower
        .install_snapshot(&snapshot.meta, received)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Feeds entries to a state machine the way openraft does, one term, increasing indexes.
struct Feeder {
    index: u64,
    at: u64,
}

impl Feeder {
    fn log_id(&self) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(1, 1), self.index)
    }

    async fn membership(&mut self, sm: &mut StateMachine) {
        self.index += 1;
        let members = std::collections::BTreeSet::from([1_u64]);
        let entry = Entry {
            log_id: self.log_id(),
            payload: EntryPayload::Membership(Membership::new(vec![members], None)),
        };
        let outcomes = apply(sm, entry).await;
        assert_eq!(outcomes, Outcome::done());
    }

    async fn propose(
        &mut self,
        sm: &mut StateMachine,
        actor: Actor,
        request_id: Option<&str>,
        body: CommandBody,
    ) -> Outcome {
        self.index += 1;
        self.at += 1_000;
        let request_id = request_id.map(|id| RequestId::new(id).unwrap_or_else(|e| panic!("{e}")));
        let entry = Entry {
            log_id: self.log_id(),
            payload: EntryPayload::Normal(Proposal {
                at: self.at,
                actor,
                request_id,
                body,
            }),
        };
        apply(sm, entry).await
    }

    async fn admin(&mut self, sm: &mut StateMachine, body: CommandBody) -> Reply {
        let outcome = self.propose(sm, Actor::Operator("test".to_owned()), None, body).await;
        outcome.result.unwrap_or_else(|r| panic!("refused: {r:?}"))
    }

    async fn agent(&mut self, sm: &mut StateMachine, request_id: Option<&str>, body: CommandBody) -> Outcome {
        self.propose(sm, Actor::Agent(NODE.to_owned()), request_id, body).await
    }
}

async fn apply(sm: &mut StateMachine, entry: Entry) -> Outcome {
    let mut outcomes = sm.apply([entry]).await.unwrap_or_else(|e| panic!("apply: {e}"));
    assert_eq!(outcomes.len(), 1, "one outcome per entry");
    outcomes.remove(0)
}

async fn state(sm: &StateMachine) -> State {
    sm.applied().read().await.state.clone()
}

fn limits() -> InstanceLimits {
    InstanceLimits {
        max_enis: 3,
        ipv4_per_eni: 10,
        branch_enis: 0,
        trunking: false,
    }
}

/// Pool, ENIConfig, a registered node, one attached ENI with four warm addresses and one pod
/// bound. Returns the agent and the bound address.
async fn cluster(sm: &mut StateMachine, feed: &mut Feeder) -> (AgentRef, std::net::Ipv4Addr) {
    feed.membership(sm).await;
    let cidr = "100.64.0.0/16".parse().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(feed.admin(sm, CommandBody::CreatePool { cidr }).await, Reply::Done);
    let config = subnet_config(AZ, "subnet-0a1b2c3d", "100.64.1.0/24", AZ);
    assert_eq!(
        feed.admin(sm, CommandBody::UpsertSubnetConfig(config)).await,
        Reply::Done
    );

    let spec = node_spec(NODE, "i-0123456789abcdef0", AZ, AZ, limits());
    let register_index = feed.index + 1;
    let Ok(Reply::Registered { epoch, .. }) = feed.agent(sm, None, CommandBody::RegisterNode(spec)).await.result else {
        panic!("not registered")
    };
    assert_eq!(epoch, register_index, "the epoch is the log index of the registration");
    let agent = AgentRef {
        node: NODE.to_owned(),
        epoch,
    };

    let plan_index = feed.index + 1;
    let request = EniRequest::Secondary { ips: 4 };
    let plan = match feed
        .agent(
            sm,
            Some("plan-1"),
            CommandBody::PlanEni {
                agent: agent.clone(),
                request,
            },
        )
        .await
        .result
    {
        Ok(Reply::EniPlanned(plan)) => plan,
        other => panic!("{other:?}"),
    };
    assert_eq!(plan.eni, plan_index, "the ENI's handle is the log index of its plan");
    assert_eq!(plan.ips.len(), 4);
    assert_eq!(plan.token, format!("ipam-{plan_index}"));

    let attached = CommandBody::ReportEniAttached {
        agent: agent.clone(),
        eni: plan.eni,
        eni_id: "eni-0123456789abcdef0".to_owned(),
        mac: "0e:00:00:00:00:01".to_owned(),
    };
    assert_eq!(feed.agent(sm, None, attached).await.result, Ok(Reply::Done));

    let (owner, meta) = pod(1, &[]);
    let bind_index = feed.index + 1;
    let bind = CommandBody::Bind {
        agent: agent.clone(),
        owner: owner.clone(),
        pod: meta,
    };
    let lease = match feed.agent(sm, Some("bind-1"), bind).await.result {
        Ok(Reply::Bound(lease)) => lease,
        other => panic!("{other:?}"),
    };
    assert_eq!(lease.id, bind_index);
    assert_eq!(lease.owner, owner);
    assert_eq!(lease.eni_id, "eni-0123456789abcdef0");
    assert!(
        plan.ips.contains(&lease.ip),
        "{} is one of the planned {:?}",
        lease.ip,
        plan.ips
    );
    (agent, lease.ip)
}

#[tokio::test]
async fn replies_come_from_the_domain_and_a_reopened_db_rebuilds_the_same_state() {
    let dir = TempDir::new("t20-reopen");
    let (db, mut sm) = open(&dir).await;
    let mut feed = Feeder {
        index: 0,
        at: 1_000_000,
    };
    let (_, ip) = cluster(&mut sm, &mut feed).await;

    let before = state(&sm).await;
    check_invariants(&before).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(before.last_index, feed.index);
    assert!(
        before
            .nodes
            .get(NODE)
            .is_some_and(|n| n.leases.values().any(|l| l.ip == ip))
    );
    let (last_applied, membership) = sm.applied_state().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(last_applied, Some(feed.log_id()));
    assert_eq!(membership.log_id().map(|id| id.index), Some(1));

    drop(sm);
    drop(db);
    let (db, mut sm) = open(&dir).await;
    assert_eq!(
        state(&sm).await,
        before,
        "replaying the persisted events gives the same state"
    );
    let (reopened_applied, reopened_membership) = sm.applied_state().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((reopened_applied, reopened_membership), (last_applied, membership));
    drop(sm);
    drop(db);
}

#[tokio::test]
async fn a_reopened_db_rebuilds_from_the_snapshot_plus_later_events() {
    let dir = TempDir::new("t20-snapshot");
    let (db, mut sm) = open(&dir).await;
    let mut feed = Feeder {
        index: 0,
        at: 1_000_000,
    };
    let (agent, _) = cluster(&mut sm, &mut feed).await;

    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snapshot.meta.last_log_id, Some(feed.log_id()));

    // More work after the snapshot: a second pod.
    let (owner, meta) = pod(2, &[]);
    let bind = CommandBody::Bind {
        agent,
        owner,
        pod: meta,
    };
    assert!(matches!(
        feed.agent(&mut sm, Some("bind-2"), bind).await.result,
        Ok(Reply::Bound(_))
    ));
    let before = state(&sm).await;

    drop(sm);
    drop(db);
    let (db, mut sm) = open(&dir).await;
    assert_eq!(state(&sm).await, before);
    let current = sm.get_current_snapshot().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        current.map(|s| s.meta),
        Some(snapshot.meta),
        "the built snapshot survives a restart"
    );
    drop(sm);
    drop(db);
}

#[tokio::test]
async fn a_refused_command_answers_a_refusal_and_changes_nothing() {
    let dir = TempDir::new("t20-refusal");
    let (db, mut sm) = open(&dir).await;
    let mut feed = Feeder {
        index: 0,
        at: 1_000_000,
    };
    let (agent, _) = cluster(&mut sm, &mut feed).await;
    let before = state(&sm).await;

    let stale = AgentRef {
        node: agent.node.clone(),
        epoch: agent.epoch - 1,
    };
    let (owner, meta) = pod(2, &[]);
    let bind = CommandBody::Bind {
        agent: stale,
        owner,
        pod: meta,
    };
    let refused_index = feed.index + 1;
    let Err(refusal) = feed.agent(&mut sm, Some("bind-2"), bind).await.result else {
        panic!("a stale epoch must be refused")
    };
    assert_eq!(refusal.code, "FailedPrecondition");
    assert!(refusal.message.contains("epoch"), "{}", refusal.message);

    let after = state(&sm).await;
    assert_eq!(after, before, "a refusal changes nothing");
    let events = db.open_tree("events").unwrap_or_else(|e| panic!("{e}"));
    let logged = events
        .iter()
        .values()
        .filter(|value| {
            let event: serde_json::Value = serde_json::from_slice(value.as_deref().unwrap_or_else(|e| panic!("{e}")))
                .unwrap_or_else(|e| panic!("a logged event is not JSON: {e}"));
            event["index"] == serde_json::json!(refused_index)
        })
        .count();
    assert_eq!(logged, 0, "a refusal logs no event");
    let (last_applied, _) = sm.applied_state().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(last_applied, Some(feed.log_id()), "the entry is still applied");
    drop(sm);
    drop(db);
}

#[tokio::test]
async fn an_installed_snapshot_replaces_the_state_and_survives_a_restart() {
    let leader_dir = TempDir::new("t20-install-leader");
    let (leader_db, mut leader) = open(&leader_dir).await;
    let mut feed = Feeder {
        index: 0,
        at: 1_000_000,
    };
    cluster(&mut leader, &mut feed).await;
    let snapshot = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let leader_state = state(&leader).await;
    let leader_applied = leader.applied_state().await.unwrap_or_else(|e| panic!("{e}"));

    // A follower that applied only the first entries, then receives the snapshot.
    let follower_dir = TempDir::new("t20-install-follower");
    let (follower_db, mut follower) = open(&follower_dir).await;
    let mut behind = Feeder {
        index: 0,
        at: 1_000_000,
    };
    behind.membership(&mut follower).await;
    let cidr = "100.64.0.0/16".parse().unwrap_or_else(|e| panic!("{e}"));
    behind.admin(&mut follower, CommandBody::CreatePool { cidr }).await;
    assert_ne!(state(&follower).await, leader_state);

    let meta = snapshot.meta.clone();
    send_snapshot(&mut leader, &mut follower).await;
    assert_eq!(state(&follower).await, leader_state);
    assert_eq!(
        follower.applied_state().await.unwrap_or_else(|e| panic!("{e}")),
        leader_applied
    );
    let events = follower_db.open_tree("events").unwrap_or_else(|e| panic!("{e}"));
    let leader_events = leader_db.open_tree("events").unwrap_or_else(|e| panic!("{e}"));
    let ledger = |tree: &sled::Tree| -> Vec<(Vec<u8>, Vec<u8>)> {
        tree.iter()
            .map(|kv| {
                kv.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .unwrap_or_else(|e| panic!("{e}"))
            })
            .collect()
    };
    assert!(!leader_events.is_empty());
    assert_eq!(
        ledger(&events),
        ledger(&leader_events),
        "the snapshot carried the leader's whole ledger, replacing the follower's own"
    );

    // A restart rebuilds from the snapshot's state (no events after it to replay).
    drop(events);
    drop(follower);
    drop(follower_db);
    let (follower_db, mut follower) = open(&follower_dir).await;
    assert_eq!(state(&follower).await, leader_state);
    assert_eq!(
        follower.applied_state().await.unwrap_or_else(|e| panic!("{e}")),
        leader_applied
    );
    let current = follower.get_current_snapshot().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(current.map(|s| s.meta), Some(meta));
    drop(follower);
    drop(follower_db);
    drop(leader);
    drop(leader_db);
}

#[tokio::test]
async fn an_install_interrupted_before_its_ledger_import_is_finished_on_open() {
    let leader_dir = TempDir::new("t20-interrupted-leader");
    let (leader_db, mut leader) = open(&leader_dir).await;
    let mut feed = Feeder {
        index: 0,
        at: 1_000_000,
    };
    cluster(&mut leader, &mut feed).await;
    leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let leader_state = state(&leader).await;

    let follower_dir = TempDir::new("t20-interrupted-follower");
    let (follower_db, mut follower) = open(&follower_dir).await;
    send_snapshot(&mut leader, &mut follower).await;

    // Put the follower back in the state of a crash after the snapshot's meta was saved but
    // before its ledger was imported and its applied position moved.
    let events = follower_db.open_tree("events").unwrap_or_else(|e| panic!("{e}"));
    let meta = follower_db.open_tree("sm_meta").unwrap_or_else(|e| panic!("{e}"));
    events.clear().unwrap_or_else(|e| panic!("{e}"));
    meta.remove("last_applied").unwrap_or_else(|e| panic!("{e}"));
    follower_db.flush().unwrap_or_else(|e| panic!("{e}"));
    drop((events, meta, follower, follower_db));

    let (follower_db, follower) = open(&follower_dir).await;
    assert_eq!(
        state(&follower).await,
        leader_state,
        "the state comes back from the snapshot"
    );
    let ledger = |db: &sled::Db| -> usize { db.open_tree("events").map_or(0, |tree| tree.len()) };
    assert!(ledger(&leader_db) > 0);
    assert_eq!(
        ledger(&follower_db),
        ledger(&leader_db),
        "the ledger import was redone on open"
    );
    drop((follower, follower_db, leader, leader_db));
}

#[tokio::test]
async fn the_sendable_snapshot_is_made_when_read_once_and_stale_files_go_on_open() {
    let dir = TempDir::new("t20-files");
    let (db, mut sm) = open(&dir).await;
    let mut feed = Feeder {
        index: 0,
        at: 1_000_000,
    };
    cluster(&mut sm, &mut feed).await;
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let snap_files = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.0.join("snapshots"))
            .unwrap_or_else(|e| panic!("{e}"))
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        snap_files().len(),
        1,
        "building writes the state file only: {:?}",
        snap_files()
    );
    // openraft asks at every start only to read the meta: a handle not read makes nothing.
    let looked_at = sm.get_current_snapshot().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(looked_at.is_some_and(|s| !s.snapshot.is_open()));
    assert_eq!(snap_files().len(), 1, "only looked at: {:?}", snap_files());
    // Read three times, it is made once.
    for _ in 0..3 {
        let current = sm.get_current_snapshot().await.unwrap_or_else(|e| panic!("{e}"));
        let mut data = current.unwrap_or_else(|| panic!("no snapshot")).snapshot;
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut *data, &mut bytes)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!bytes.is_empty());
    }
    let files = snap_files();
    assert_eq!(
        files.len(),
        2,
        "one sendable file, however often it is asked for: {files:?}"
    );
    assert!(files.iter().any(|f| f.starts_with("send-")), "{files:?}");

    // A crash can leave files behind; opening removes whatever is not the current snapshot.
    std::fs::write(dir.0.join("snapshots").join("received-1-2.snap.part"), b"partial")
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.0.join("snapshots").join("state-0-0.snap"), b"old").unwrap_or_else(|e| panic!("{e}"));
    drop((sm, db));
    let (db, sm) = open(&dir).await;
    assert_eq!(snap_files(), files, "stale files removed, the current ones kept");
    drop((sm, db));
}
