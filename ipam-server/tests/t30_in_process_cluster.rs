//! Three replicas in one process, wired by the in-process [`Router`]: commands proposed on the
//! leader are applied everywhere, a cut-off leader is replaced, writes continue through the new
//! leader, and after healing the three state machines hold the same domain state.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

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
use ipam_server::raft::LogStore;
use ipam_server::raft::Outcome;
use ipam_server::raft::Proposal;
use ipam_server::raft::StateMachine;
use ipam_server::raft::network::Raft;
use ipam_server::raft::network::Router;
use ipam_server::raft::state_machine::SharedApplied;
use ipam_server::raft::types::LogId;
use ipam_server::raft::types::NodeId;
use openraft::BasicNode;
use openraft::Config;
use openraft::ServerState;

mod common;
use common::TempDir;

const NODE: &str = "ip-10-0-1-10.us-west-2.compute.internal";
const AZ: &str = "us-west-2a";
const IDS: [NodeId; 3] = [1, 2, 3];
/// Binds before the leader is cut off, and after.
const BINDS_BEFORE: u64 = 30;
const BINDS_AFTER: u64 = 12;

/// Generous bounds: nothing in this test may hang.
const ELECTION: Duration = Duration::from_secs(10);
const WRITE: Duration = Duration::from_secs(5);
const CONVERGE: Duration = Duration::from_secs(15);

/// One replica: its Raft handle, a read handle on its applied state, and what keeps its
/// database alive.
struct Replica {
    id: NodeId,
    raft: Raft,
    applied: SharedApplied,
    db: sled::Db,
    _dir: TempDir,
}

async fn bounded<T>(what: &str, bound: Duration, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(bound, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {bound:?}"))
}

/// Polls `probe` until it answers `Some`, for at most `bound`.
async fn until<T>(what: &str, bound: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    bounded(what, bound, async {
        loop {
            if let Some(found) = probe() {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

async fn start(router: &Router, config: &Arc<Config>, id: NodeId) -> Replica {
    let dir = TempDir::new(&format!("t30-node{id}"));
    let db = sled::open(dir.0.join("sled")).unwrap_or_else(|e| panic!("open sled at {}: {e}", dir.0.display()));
    let log = LogStore::open(&db).unwrap_or_else(|e| panic!("open log store: {e}"));
    let sm = StateMachine::open(&db, dir.0.join("snapshots"))
        .await
        .unwrap_or_else(|e| panic!("open state machine: {e}"));
    let applied = sm.applied();
    let raft = bounded(
        "Raft::new",
        WRITE,
        Raft::new(id, Arc::clone(config), router.factory(id), log, sm),
    )
    .await
    .unwrap_or_else(|e| panic!("start replica {id}: {e}"));
    router.add(id, raft.clone());
    Replica {
        id,
        raft,
        applied,
        db,
        _dir: dir,
    }
}

/// The leader every replica in `among` agrees on, once it also sees itself as leader.
async fn agreed_leader(replicas: &[Replica], among: &[NodeId]) -> NodeId {
    until("leader election", ELECTION, || {
        let leaders: BTreeSet<Option<NodeId>> = replicas
            .iter()
            .filter(|r| among.contains(&r.id))
            .map(|r| r.raft.metrics().borrow().current_leader)
            .collect();
        let leader = match leaders.into_iter().collect::<Vec<_>>().as_slice() {
            [Some(leader)] => *leader,
            _ => return None,
        };
        let replica = replicas.iter().find(|r| r.id == leader)?;
        (replica.raft.metrics().borrow().state == ServerState::Leader).then_some(leader)
    })
    .await
}

fn replica(replicas: &[Replica], id: NodeId) -> &Replica {
    replicas
        .iter()
        .find(|r| r.id == id)
        .unwrap_or_else(|| panic!("no replica {id}"))
}

/// Proposes commands on a leader, stamping increasing times and request ids.
struct Client {
    at: u64,
    /// The log id of the last acknowledged write.
    last: Option<LogId>,
}

impl Client {
    async fn propose(&mut self, raft: &Raft, actor: Actor, request_id: Option<&str>, body: CommandBody) -> Outcome {
        self.at += 1_000;
        let proposal = Proposal {
            at: self.at,
            actor,
            request_id: request_id.map(|id| RequestId::new(id).unwrap_or_else(|e| panic!("{e}"))),
            body,
        };
        let response = bounded("client_write", WRITE, raft.client_write(proposal))
            .await
            .unwrap_or_else(|e| panic!("client_write: {e}"));
        self.last = Some(response.log_id);
        response.data
    }

    async fn admin(&mut self, raft: &Raft, body: CommandBody) -> Reply {
        let outcome = self.propose(raft, Actor::Operator("test".to_owned()), None, body).await;
        outcome.result.unwrap_or_else(|r| panic!("refused: {r:?}"))
    }

    async fn agent(&mut self, raft: &Raft, request_id: Option<&str>, body: CommandBody) -> Reply {
        let outcome = self
            .propose(raft, Actor::Agent(NODE.to_owned()), request_id, body)
            .await;
        outcome.result.unwrap_or_else(|r| panic!("refused: {r:?}"))
    }

    async fn bind(&mut self, raft: &Raft, agent: &AgentRef, n: u64) -> Ipv4Addr {
        let (owner, meta) = pod(n, &[]);
        let bind = CommandBody::Bind {
            agent: agent.clone(),
            owner: owner.clone(),
            pod: meta,
        };
        match self.agent(raft, Some(&format!("bind-{n}")), bind).await {
            Reply::Bound(lease) => {
                assert_eq!(lease.owner, owner);
                assert_eq!(lease.eni_id, "eni-0123456789abcdef0");
                lease.ip
            }
            other => panic!("bind {n}: {other:?}"),
        }
    }
}

fn limits() -> InstanceLimits {
    InstanceLimits {
        max_enis: 3,
        ipv4_per_eni: 50,
        branch_enis: 0,
        trunking: false,
    }
}

/// Pool, ENIConfig, a registered node and one attached ENI with enough warm addresses for
/// every bind of the test. Returns the agent.
async fn set_up(client: &mut Client, raft: &Raft) -> AgentRef {
    let cidr = "100.64.0.0/16".parse().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(client.admin(raft, CommandBody::CreatePool { cidr }).await, Reply::Done);
    let config = subnet_config(AZ, "subnet-0a1b2c3d", "100.64.1.0/24", AZ);
    assert_eq!(
        client.admin(raft, CommandBody::UpsertSubnetConfig(config)).await,
        Reply::Done
    );

    let spec = node_spec(NODE, "i-0123456789abcdef0", AZ, AZ, limits());
    let Reply::Registered { epoch, .. } = client.agent(raft, None, CommandBody::RegisterNode(spec)).await else {
        panic!("not registered")
    };
    let agent = AgentRef {
        node: NODE.to_owned(),
        epoch,
    };

    let ips = u16::try_from(BINDS_BEFORE + BINDS_AFTER + 2).unwrap_or_else(|e| panic!("{e}"));
    let plan = match client
        .agent(
            raft,
            Some("plan-1"),
            CommandBody::PlanEni {
                agent: agent.clone(),
                request: EniRequest::Secondary { ips },
            },
        )
        .await
    {
        Reply::EniPlanned(plan) => plan,
        other => panic!("{other:?}"),
    };
    assert_eq!(plan.ips.len(), usize::from(ips));

    let attached = CommandBody::ReportEniAttached {
        agent: agent.clone(),
        eni: plan.eni,
        eni_id: "eni-0123456789abcdef0".to_owned(),
        mac: "0e:00:00:00:00:01".to_owned(),
    };
    assert_eq!(client.agent(raft, None, attached).await, Reply::Done);
    agent
}

/// Every lease address in the state, with the number of leases holding it.
fn lease_ips(state: &State) -> BTreeMap<Ipv4Addr, usize> {
    let mut ips = BTreeMap::new();
    for node in state.nodes.values() {
        for lease in node.leases.values() {
            *ips.entry(lease.ip).or_insert(0) += 1;
        }
    }
    ips
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_survive_the_loss_of_their_leader_and_converge() {
    let config = Config {
        cluster_name: "t30".to_owned(),
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        ..Config::default()
    };
    let config = Arc::new(config.validate().unwrap_or_else(|e| panic!("config: {e}")));
    let router = Router::new();
    let mut replicas = Vec::new();
    for id in IDS {
        replicas.push(start(&router, &config, id).await);
    }
    assert_eq!(router.ids(), IDS.to_vec());

    let members: BTreeMap<NodeId, BasicNode> = IDS
        .iter()
        .map(|id| (*id, BasicNode::new(format!("in-process-{id}"))))
        .collect();
    bounded("initialize", WRITE, replica(&replicas, 1).raft.initialize(members))
        .await
        .unwrap_or_else(|e| panic!("initialize: {e}"));

    // 1. A leader, and a working cluster.
    let first = agreed_leader(&replicas, &IDS).await;
    let mut client = Client {
        at: 1_000_000,
        last: None,
    };
    let leader = &replica(&replicas, first).raft;
    let agent = set_up(&mut client, leader).await;
    let mut bound = BTreeSet::new();
    for n in 1..=BINDS_BEFORE {
        let ip = client.bind(leader, &agent, n).await;
        assert!(bound.insert(ip), "{ip} handed out twice");
    }

    // 2. The leader is cut off: the other two elect one of themselves.
    router.isolate(first);
    let isolated_at = std::time::Instant::now();
    assert!(router.is_isolated(first));
    let rest: Vec<NodeId> = IDS.iter().copied().filter(|id| *id != first).collect();
    let second = until("a new leader", ELECTION, || {
        let leaders: BTreeSet<Option<NodeId>> = rest
            .iter()
            .map(|id| replica(&replicas, *id).raft.metrics().borrow().current_leader)
            .collect();
        match leaders.into_iter().collect::<Vec<_>>().as_slice() {
            [Some(leader)] if *leader != first => Some(*leader),
            _ => None,
        }
    })
    .await;
    assert_ne!(second, first, "the isolated leader cannot be re-elected");
    // Reported, not asserted (a timing, not a correctness property; `until` above bounds it at
    // ELECTION): followers wait one election timeout (300-600 ms here) before campaigning, and
    // refuse votes while the old leader's lease (one more timeout) lasts.
    let election = isolated_at.elapsed();
    println!("t30: new leader {second} elected {election:?} after leader {first} was cut off");
    assert_eq!(agreed_leader(&replicas, &rest).await, second);

    // The old leader cannot commit anything on its own.
    let (stale_owner, stale_meta) = pod(1_000, &[]);
    let stale = Proposal {
        at: client.at + 1,
        actor: Actor::Agent(NODE.to_owned()),
        request_id: None,
        body: CommandBody::Bind {
            agent: agent.clone(),
            owner: stale_owner,
            pod: stale_meta,
        },
    };
    let stale_write = tokio::time::timeout(
        Duration::from_millis(500),
        replica(&replicas, first).raft.client_write(stale),
    )
    .await;
    assert!(
        !matches!(stale_write, Ok(Ok(_))),
        "an isolated leader committed a write: {stale_write:?}"
    );

    // 3. Writes continue through the new leader.
    let leader = &replica(&replicas, second).raft;
    for n in BINDS_BEFORE + 1..=BINDS_BEFORE + BINDS_AFTER {
        let ip = client.bind(leader, &agent, n).await;
        assert!(bound.insert(ip), "{ip} handed out twice");
    }

    // 4. Heal: the old leader catches up and every replica applies the same log.
    router.heal(first);
    // The leader's metrics may lag its replies, so the target is the last acknowledged write.
    let target = client.last.unwrap_or_else(|| panic!("nothing was written"));
    let converged = tokio::time::timeout(CONVERGE, async {
        while !replicas
            .iter()
            .all(|r| r.raft.metrics().borrow().last_applied == Some(target))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if converged.is_err() {
        let metrics: Vec<_> = replicas.iter().map(|r| r.raft.metrics().borrow().clone()).collect();
        panic!("the replicas did not converge on {target} within {CONVERGE:?}: {metrics:#?}");
    }
    assert_eq!(
        agreed_leader(&replicas, &IDS).await,
        second,
        "healing keeps the new leader"
    );

    let mut states = Vec::new();
    for r in &replicas {
        let applied = r.applied.read().await;
        assert_eq!(applied.last_applied, Some(target), "replica {}", r.id);
        states.push((r.id, applied.state.clone()));
    }
    let (_, reference) = &states[0];
    for (id, state) in &states {
        assert_eq!(state, reference, "replica {id} diverged from replica {}", states[0].0);
        check_invariants(state).unwrap_or_else(|e| panic!("replica {id}: {e}"));
    }
    let ledgers: Vec<Vec<(Vec<u8>, Vec<u8>)>> = replicas
        .iter()
        .map(|r| {
            let events = r.db.open_tree("events").unwrap_or_else(|e| panic!("{e}"));
            events
                .iter()
                .map(|kv| {
                    kv.map(|(k, v)| (k.to_vec(), v.to_vec()))
                        .unwrap_or_else(|e| panic!("{e}"))
                })
                .collect()
        })
        .collect();
    assert!(!ledgers[0].is_empty());
    for (r, ledger) in replicas.iter().zip(&ledgers) {
        assert_eq!(
            ledger, &ledgers[0],
            "replica {}'s ledger differs from replica {}'s",
            r.id, replicas[0].id
        );
    }
    let ips = lease_ips(reference);
    let twice: Vec<_> = ips.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "bound more than once: {twice:?}");
    assert_eq!(
        ips.keys().copied().collect::<BTreeSet<_>>(),
        bound,
        "the leases are exactly the acknowledged binds (the isolated leader's write is gone)"
    );

    for r in &replicas {
        bounded("shutdown", WRITE, r.raft.shutdown())
            .await
            .unwrap_or_else(|e| panic!("shutdown {}: {e}", r.id));
    }
}
