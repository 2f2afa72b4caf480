//! The ledger's queries against the ledger itself: random histories go through a real state
//! machine (decide, apply, events and index entries in sled), then every `who_had` and `history`
//! answer must equal a brute-force replay of the events. Then retention: pruning keeps what
//! explains a live lease, refuses questions before its horizon, survives a restart and travels
//! in a snapshot.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipam_core::CommandBody;
use ipam_core::Event;
use ipam_core::EventKind;
use ipam_core::Reply;
use ipam_core::command::AgentRef;
use ipam_core::command::EniRequest;
use ipam_core::command::LeaseSelector;
use ipam_core::command::ReleaseReason;
use ipam_core::ids::Actor;
use ipam_core::ids::LeaseId;
use ipam_core::ids::Timestamp;
use ipam_core::limits::InstanceLimits;
use ipam_core::state::Lease;
use ipam_core::testing::node_spec;
use ipam_core::testing::pod;
use ipam_core::testing::subnet_config;
use ipam_server::ledger::Binding;
use ipam_server::ledger::HistoryQuery;
use ipam_server::ledger::Key;
use ipam_server::ledger::Ledger;
use ipam_server::ledger::LedgerError;
use ipam_server::ledger::Release;
use ipam_server::raft::Proposal;
use ipam_server::raft::StateMachine;
use ipam_server::raft::state_machine::Options;
use ipam_server::raft::types::Entry;
use openraft::CommittedLeaderId;
use openraft::EntryPayload;
use openraft::LogId;
use openraft::Membership;
use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;
use proptest::prelude::*;

mod common;
use common::TempDir;
#[path = "common/state_machine.rs"]
mod open_state_machine;
use open_state_machine::open;
use open_state_machine::open_with;

const AZ: &str = "us-west-2a";
const NODES: [&str; 2] = [
    "ip-10-0-1-10.us-west-2.compute.internal",
    "ip-10-0-1-11.us-west-2.compute.internal",
];

fn limits() -> InstanceLimits {
    InstanceLimits {
        max_enis: 3,
        ipv4_per_eni: 10,
        branch_enis: 0,
        trunking: false,
    }
}

/// A cluster of two nodes with one attached ENI of five addresses each, driven through a real
/// state machine as Raft would drive it.
struct Sim {
    sm: StateMachine,
    _db: sled::Db,
    index: u64,
    at: Timestamp,
    agents: Vec<AgentRef>,
    next_pod: u64,
}

/// What a random history does next.
#[derive(Debug, Clone)]
enum Op {
    Bind(usize),
    Release(usize, usize),
    /// Time passes (ms), then the leader's tick (expiry, cooldowns).
    Advance(u64),
    Heartbeat(usize),
    /// A node's agent registers again (after its node expired, say).
    Register(usize),
    /// The next command is stamped this much earlier than the last (a new leader's clock).
    ClockBehind(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..2_usize).prop_map(Op::Bind),
        3 => (0..2_usize, any::<usize>()).prop_map(|(n, pick)| Op::Release(n, pick)),
        2 => prop_oneof![Just(0_u64), 1..2_000_u64, 10_000..40_000_u64].prop_map(Op::Advance),
        2 => (0..2_usize).prop_map(Op::Heartbeat),
        1 => (0..2_usize).prop_map(Op::Register),
        1 => (1..5_000_u64).prop_map(Op::ClockBehind),
    ]
}

impl Sim {
    async fn new(dir: &TempDir) -> Self {
        Self::with_options(dir, Options::default()).await
    }

    async fn with_options(dir: &TempDir, options: Options) -> Self {
        let (db, sm) = open_with(dir, options).await;
        let mut sim = Self {
            sm,
            _db: db,
            index: 0,
            at: 1_700_000_000_000,
            agents: Vec::new(),
            next_pod: 0,
        };
        sim.index += 1;
        let entry = Entry {
            log_id: sim.log_id(),
            payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1_u64])], None)),
        };
        sim.sm.apply([entry]).await.unwrap_or_else(|e| panic!("{e}"));
        let cidr = "100.64.0.0/16".parse().unwrap_or_else(|e| panic!("{e}"));
        sim.ok(Actor::Operator("test".to_owned()), CommandBody::CreatePool { cidr })
            .await;
        let config = subnet_config(AZ, "subnet-0a1b2c3d", "100.64.1.0/24", AZ);
        sim.ok(
            Actor::Operator("test".to_owned()),
            CommandBody::UpsertSubnetConfig(config),
        )
        .await;
        for (n, name) in NODES.iter().enumerate() {
            let epoch = sim.register(n).await;
            let agent = AgentRef {
                node: (*name).to_owned(),
                epoch,
            };
            sim.agents.push(agent.clone());
            let plan = match sim
                .ok(
                    Actor::Agent((*name).to_owned()),
                    CommandBody::PlanEni {
                        agent: agent.clone(),
                        request: EniRequest::Secondary { ips: 5 },
                    },
                )
                .await
            {
                Reply::EniPlanned(plan) => plan,
                other => panic!("{other:?}"),
            };
            sim.ok(
                Actor::Agent((*name).to_owned()),
                CommandBody::ReportEniAttached {
                    agent,
                    eni: plan.eni,
                    eni_id: format!("eni-{n:017x}"),
                    mac: format!("0e:00:00:00:00:{n:02x}"),
                },
            )
            .await;
        }
        sim
    }

    fn log_id(&self) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(1, 1), self.index)
    }

    async fn propose_at(&mut self, at: Timestamp, actor: Actor, body: CommandBody) -> Result<Reply, String> {
        self.index += 1;
        let entry = Entry {
            log_id: self.log_id(),
            payload: EntryPayload::Normal(Proposal {
                at,
                actor,
                request_id: None,
                body,
            }),
        };
        let mut outcomes = self.sm.apply([entry]).await.unwrap_or_else(|e| panic!("apply: {e}"));
        outcomes.remove(0).result.map_err(|refusal| refusal.message)
    }

    async fn propose(&mut self, actor: Actor, body: CommandBody) -> Result<Reply, String> {
        self.at += 1;
        self.propose_at(self.at, actor, body).await
    }

    async fn ok(&mut self, actor: Actor, body: CommandBody) -> Reply {
        self.propose(actor, body)
            .await
            .unwrap_or_else(|e| panic!("refused: {e}"))
    }

    async fn register(&mut self, n: usize) -> u64 {
        let spec = node_spec(NODES[n], &format!("i-{n:017x}"), AZ, AZ, limits());
        match self
            .ok(Actor::Agent(NODES[n].to_owned()), CommandBody::RegisterNode(spec))
            .await
        {
            Reply::Registered { epoch, .. } => epoch,
            other => panic!("{other:?}"),
        }
    }

    async fn live_leases(&self, n: usize) -> Vec<LeaseId> {
        let applied = self.sm.applied();
        let applied = applied.read().await;
        applied
            .state
            .nodes
            .get(NODES[n])
            .map(|node| node.leases.keys().copied().collect())
            .unwrap_or_default()
    }

    async fn run(&mut self, op: Op) {
        let actor = |n: usize| Actor::Agent(NODES[n].to_owned());
        // Refusals (no warm address, an expired node, a stale epoch) are part of a random
        // history: they change nothing and add no event.
        match op {
            Op::Bind(n) => {
                self.next_pod += 1;
                let (owner, meta) = pod(self.next_pod, &[]);
                let body = CommandBody::Bind {
                    agent: self.agents[n].clone(),
                    owner,
                    pod: meta,
                };
                let _ = self.propose(actor(n), body).await;
            }
            Op::Release(n, pick) => {
                let leases = self.live_leases(n).await;
                if let Some(lease) = leases.get(pick % leases.len().max(1)) {
                    let body = CommandBody::Release {
                        agent: self.agents[n].clone(),
                        lease: LeaseSelector::Id(*lease),
                        reason: ReleaseReason::CniDel,
                    };
                    let _ = self.propose(actor(n), body).await;
                }
            }
            Op::Advance(ms) => {
                self.at += ms;
                let _ = self.propose(Actor::Controller, CommandBody::Tick).await;
            }
            Op::Heartbeat(n) => {
                let _ = self
                    .propose(actor(n), CommandBody::Heartbeat(self.agents[n].clone()))
                    .await;
            }
            Op::Register(n) => {
                let epoch = self.register(n).await;
                self.agents[n].epoch = epoch;
            }
            Op::ClockBehind(ms) => {
                self.next_pod += 1;
                let (owner, meta) = pod(self.next_pod, &[]);
                let body = CommandBody::Bind {
                    agent: self.agents[0].clone(),
                    owner,
                    pod: meta,
                };
                let _ = self.propose_at(self.at.saturating_sub(ms), actor(0), body).await;
            }
        }
    }
}

fn all_events(ledger: &Ledger) -> Vec<(u64, Event)> {
    ledger.read(1, usize::MAX).unwrap_or_else(|e| panic!("{e}"))
}

/// Every binding the events tell of, by brute force: binds, and the releases that ended them.
fn bindings_by_replay(events: &[(u64, Event)]) -> Vec<(Lease, Option<Release>)> {
    let mut bindings: Vec<(Lease, Option<Release>)> = Vec::new();
    for (seq, event) in events {
        match &event.kind {
            EventKind::IpBound { lease, .. } => bindings.push((lease.clone(), None)),
            EventKind::IpReleased {
                lease,
                reason,
                cooling_until,
                ..
            } => {
                let ended = Release {
                    seq: *seq,
                    at: event.at,
                    reason: *reason,
                    cooling_until: *cooling_until,
                };
                match bindings.iter_mut().find(|(l, _)| l.id == lease.id) {
                    Some(binding) => binding.1 = Some(ended),
                    // Its bind was pruned: the release carries the whole lease.
                    None => bindings.push((lease.clone(), Some(ended))),
                }
            }
            _ => {}
        }
    }
    bindings
}

fn who_had_by_replay(bindings: &[(Lease, Option<Release>)], ip: Ipv4Addr, at: Timestamp) -> Vec<Binding> {
    let mut live: Vec<Binding> = bindings
        .iter()
        .filter(|(lease, released)| lease.ip == ip && lease.bound_at <= at && released.is_none_or(|r| r.at > at))
        .map(|(lease, released)| Binding {
            lease: lease.clone(),
            released: *released,
        })
        .collect();
    live.sort_by_key(|b| b.lease.id);
    live
}

/// Whether `event` touches `key`, straight from the domain's `touches` (not the index's code).
fn touches(event: &Event, key: &Key) -> bool {
    let t = event.kind.touches();
    match key {
        Key::Ip(ip) => t.ips.contains(ip),
        Key::PodUid(uid) => t.owner.is_some_and(|o| &o.uid == uid),
        Key::PodName { namespace, name } => t.owner.is_some_and(|o| &o.namespace == namespace && &o.name == name),
        Key::Node(node) => t.node == Some(node.as_str()),
        Key::Eni(eni) => t.eni == Some(*eni),
        Key::SecurityGroup(sg) => t.security_groups.contains(sg),
    }
}

fn history_by_replay(
    events: &[(u64, Event)],
    key: &Key,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
    from_seq: u64,
) -> Vec<u64> {
    events
        .iter()
        .filter(|(seq, e)| {
            *seq >= from_seq && touches(e, key) && since.is_none_or(|s| e.at >= s) && until.is_none_or(|u| e.at < u)
        })
        .map(|(seq, _)| *seq)
        .collect()
}

/// Every page of a history, followed to the end.
fn history_paged(
    ledger: &Ledger,
    key: &Key,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
    limit: usize,
) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut after_seq = 0;
    for _ in 0..10_000 {
        let page = ledger
            .history(&HistoryQuery {
                key: key.clone(),
                since,
                until,
                after_seq,
                limit,
            })
            .unwrap_or_else(|e| panic!("history of {key}: {e}"));
        assert!(page.events.len() <= limit);
        seqs.extend(page.events.iter().map(|(seq, _)| *seq));
        match page.events.last() {
            Some((last, _)) if page.more => after_seq = *last,
            _ => return seqs,
        }
    }
    panic!("history of {key} did not end");
}

/// The keys worth asking about in `events`: every address, pod, node, ENI and group touched.
fn keys_in(events: &[(u64, Event)]) -> Vec<Key> {
    let ips: BTreeSet<Ipv4Addr> = events.iter().flat_map(|(_, e)| e.kind.touches().ips).collect();
    let mut out: Vec<Key> = ips.into_iter().map(Key::Ip).collect();
    let mut seen = std::collections::HashSet::new();
    for (_, event) in events {
        let t = event.kind.touches();
        let mut candidates = Vec::new();
        if let Some(owner) = t.owner {
            candidates.push(Key::PodUid(owner.uid.clone()));
            candidates.push(Key::PodName {
                namespace: owner.namespace.clone(),
                name: owner.name.clone(),
            });
        }
        candidates.extend(t.node.map(|n| Key::Node(n.to_owned())));
        candidates.extend(t.eni.map(Key::Eni));
        candidates.extend(t.security_groups.iter().map(|sg| Key::SecurityGroup(sg.clone())));
        for key in candidates {
            if seen.insert(key.clone()) {
                out.push(key);
            }
        }
    }
    // Keys nothing touched answer nothing.
    out.push(Key::Ip(Ipv4Addr::new(100, 64, 9, 9)));
    out.push(Key::Node("no-such-node".to_owned()));
    out
}

/// The instants worth asking about: every event's time, a millisecond either side, and the
/// ends of time.
fn instants(events: &[(u64, Event)]) -> Vec<Timestamp> {
    let mut times = BTreeSet::from([0, u64::MAX]);
    for (_, event) in events {
        times.extend([event.at.saturating_sub(1), event.at, event.at + 1]);
    }
    times.into_iter().collect()
}

/// Checks every who-had and history answer of `ledger` against the replay of its events; only
/// events from `from_seq` on are history (retention may have pruned before).
fn check_against_replay(ledger: &Ledger, from_seq: u64, earliest: Timestamp) {
    let events = all_events(ledger);
    let bindings = bindings_by_replay(&events);
    let times: Vec<Timestamp> = instants(&events).into_iter().filter(|t| *t >= earliest).collect();
    let keys = keys_in(&events);
    for key in &keys {
        if let Key::Ip(ip) = key {
            for at in &times {
                let answer = ledger
                    .who_had(*ip, *at)
                    .unwrap_or_else(|e| panic!("who_had {ip} at {at}: {e}"));
                assert_eq!(answer, who_had_by_replay(&bindings, *ip, *at), "who_had {ip} at {at}");
                assert!(answer.len() <= 1, "{ip} held twice at {at}: {answer:?}");
            }
        }
    }
    // A few ranges per key, paged with several page sizes.
    let mut ranges: Vec<(Option<Timestamp>, Option<Timestamp>)> = vec![(None, None)];
    if times.len() > 4 {
        let (a, b) = (times[times.len() / 4], times[times.len() * 3 / 4]);
        ranges.extend([(Some(a), None), (None, Some(b)), (Some(a), Some(b)), (Some(b), Some(b))]);
    }
    for key in &keys {
        for (since, until) in &ranges {
            let expected = history_by_replay(&events, key, *since, *until, from_seq);
            for limit in [1, 3, 1000] {
                assert_eq!(
                    history_paged(ledger, key, *since, *until, limit),
                    expected,
                    "history of {key} since {since:?} until {until:?}, pages of {limit}"
                );
            }
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn who_had_and_history_equal_a_replay_of_the_events(
        ops in prop::collection::vec(op(), 1..120),
        flush_every in prop_oneof![Just(1_usize), 2..12_usize, Just(100_000)],
    ) {
        runtime().block_on(async {
            let dir = TempDir::new("t25-replay");
            // Index entries written as many small posting chunks, a few, or all still buffered.
            let options = Options { index_flush_every: flush_every, ..Options::default() };
            let mut sim = Sim::with_options(&dir, options).await;
            for op in ops {
                sim.run(op).await;
            }
            let ledger = sim.sm.ledger();
            let events = all_events(&ledger);
            let times: Vec<Timestamp> = events.iter().map(|(_, e)| e.at).collect();
            assert!(times.windows(2).all(|w| w[0] <= w[1]), "ledger time went backwards");
            check_against_replay(&ledger, 1, 0);
        });
    }
}

async fn build_snapshot(sm: &mut StateMachine) {
    let mut builder = sm.get_snapshot_builder().await;
    builder.build_snapshot().await.unwrap_or_else(|e| panic!("{e}"));
}

async fn state_of(sm: &StateMachine) -> ipam_core::State {
    sm.applied().read().await.state.clone()
}

#[tokio::test]
async fn pruning_stops_at_the_snapshot_a_restart_replays_from() {
    let dir = TempDir::new("t25-snapshot-cap");
    let mut sim = Sim::new(&dir).await;
    let ledger = sim.sm.ledger();
    // No snapshot: a restart replays every event, so nothing may go.
    let pruned = sim
        .sm
        .retention()
        .prune(u64::MAX)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((pruned.removed, pruned.horizon.is_pruned()), (0, false), "{pruned:?}");
    busy_history(&mut sim).await;
    build_snapshot(&mut sim.sm).await;
    let covered = ledger.last_seq();
    busy_history(&mut sim).await;
    let before = all_events(&ledger);
    assert!(ledger.last_seq() > covered + 1);
    // Retention would take everything; the snapshot holds it back to the events after it.
    let pruned = sim
        .sm
        .retention()
        .prune(u64::MAX)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pruned.horizon.seq, covered + 1, "{pruned:?}");
    let last_pruned_at = before.iter().find(|(seq, _)| *seq == covered).map(|(_, e)| e.at);
    assert_eq!(Some(pruned.horizon.at), last_pruned_at.map(|at| at + 1));
    let after = all_events(&ledger);
    assert!(
        after
            .iter()
            .filter(|(seq, _)| *seq > covered)
            .eq(before.iter().filter(|(seq, _)| *seq > covered))
    );
    check_against_replay(&ledger, pruned.horizon.seq, pruned.horizon.at);
    // A page token from before the horizon is refused, not silently continued past it.
    let query = HistoryQuery {
        key: Key::Node(NODES[0].to_owned()),
        since: None,
        until: None,
        after_seq: 2,
        limit: 10,
    };
    assert!(matches!(ledger.history(&query), Err(LedgerError::Trimmed { .. })));
    // The restart rebuilds exactly the state it had.
    let state = state_of(&sim.sm).await;
    drop((sim, ledger));
    let (_db, sm) = open(&dir).await;
    assert_eq!(state_of(&sm).await, state, "the state after a restart");
}

#[tokio::test]
async fn a_snapshot_handed_out_before_a_newer_one_is_built_still_reads_as_its_meta() {
    let dir = TempDir::new("t25-handed-out");
    let mut sim = Sim::new(&dir).await;
    busy_history(&mut sim).await;
    build_snapshot(&mut sim.sm).await;
    let old_state = state_of(&sim.sm).await;
    let handed_out = sim
        .sm
        .get_current_snapshot()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no snapshot"));
    // A newer snapshot replaces it (and removes its files) before openraft reads the data.
    busy_history(&mut sim).await;
    build_snapshot(&mut sim.sm).await;
    let other_dir = TempDir::new("t25-handed-out-follower");
    let (_db, mut other) = open(&other_dir).await;
    let mut received = other.begin_receiving_snapshot().await.unwrap_or_else(|e| panic!("{e}"));
    let mut sent = handed_out.snapshot;
    tokio::io::copy(&mut sent, &mut *received)
        .await
        .unwrap_or_else(|e| panic!("reading a replaced snapshot: {e}"));
    other
        .install_snapshot(&handed_out.meta, received)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        state_of(&other).await,
        old_state,
        "the data is the snapshot its meta names"
    );
    let files: Vec<String> = std::fs::read_dir(dir.0.join("snapshots"))
        .unwrap_or_else(|e| panic!("{e}"))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        files.iter().all(|f| !f.starts_with("send-superseded")),
        "left behind: {files:?}"
    );
}

/// A fixed history: pods bound on both nodes, some released, one node expired, time passing.
async fn busy_history(sim: &mut Sim) {
    for round in 0..8_usize {
        for n in 0..2 {
            sim.run(Op::Bind(n)).await;
            if round % 2 == 1 {
                sim.run(Op::Release(n, round)).await;
            }
            sim.run(Op::Heartbeat(n)).await;
        }
        sim.run(Op::Advance(12_000)).await;
    }
}

#[tokio::test]
async fn pruning_keeps_the_binds_of_live_leases_and_refuses_questions_before_its_horizon() {
    let dir = TempDir::new("t25-prune");
    // Small posting chunks, so that pruning trims chunks that straddle the horizon.
    let options = Options {
        index_flush_every: 5,
        ..Options::default()
    };
    let mut sim = Sim::with_options(&dir, options).await;
    busy_history(&mut sim).await;
    let ledger = sim.sm.ledger();
    let before = all_events(&ledger);
    let live_before: Vec<LeaseId> = [sim.live_leases(0).await, sim.live_leases(1).await].concat();
    assert!(!live_before.is_empty());

    // Prune up to a time in the middle of the history.
    let cutoff = before[before.len() / 2].1.at;
    build_snapshot(&mut sim.sm).await;
    let pruned = sim
        .sm
        .retention()
        .prune(cutoff)
        .await
        .unwrap_or_else(|e| panic!("prune: {e}"));
    let horizon = pruned.horizon;
    assert!(
        horizon.seq > 1 && horizon.at == cutoff && horizon.pruned_to == horizon.seq,
        "{pruned:?}"
    );
    assert!(pruned.removed > 0);
    let after = all_events(&ledger);
    for (seq, event) in &after {
        if *seq < horizon.seq {
            let EventKind::IpBound { lease, .. } = &event.kind else {
                panic!("event {seq} before the horizon is not a kept bind: {event:?}")
            };
            assert!(
                live_before.contains(&lease.id),
                "a kept bind of a lease no longer live: {lease:?}"
            );
        }
    }
    let kept_binds = after.iter().filter(|(seq, _)| *seq < horizon.seq).count() as u64;
    assert_eq!(kept_binds, pruned.kept);
    assert_eq!(
        after.iter().filter(|(seq, _)| *seq >= horizon.seq).count(),
        before.iter().filter(|(seq, _)| *seq >= horizon.seq).count(),
        "nothing at or after the horizon was touched"
    );

    // Before the horizon: refused, with the horizon in the error.
    let refused = ledger.who_had(Ipv4Addr::new(100, 64, 1, 10), cutoff - 1);
    assert!(matches!(refused, Err(LedgerError::Trimmed { .. })), "{refused:?}");
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("retention horizon"), "{message}");
    let query = HistoryQuery {
        key: Key::Node(NODES[0].to_owned()),
        since: Some(cutoff - 1),
        until: None,
        after_seq: 0,
        limit: 10,
    };
    assert!(matches!(ledger.history(&query), Err(LedgerError::Trimmed { .. })));

    // From the horizon on, every answer is still the replay's, and the live leases bound
    // before the horizon are still found by who-had.
    check_against_replay(&ledger, horizon.seq, cutoff);
    for lease in &live_before {
        let holder = before
            .iter()
            .find_map(|(_, e)| match &e.kind {
                EventKind::IpBound { lease: l, .. } if l.id == *lease => Some(l.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("lease {lease} has no bind"));
        let now = ledger.who_had(holder.ip, u64::MAX).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(now.len(), 1, "{holder:?}");
        assert_eq!(now[0].lease, holder);
    }

    // Releasing a lease whose bind was kept removes that bind with the release.
    let kept: Vec<(u64, Lease)> = after
        .iter()
        .filter(|(seq, _)| *seq < horizon.seq)
        .filter_map(|(seq, e)| match &e.kind {
            EventKind::IpBound { lease, .. } => Some((*seq, lease.clone())),
            _ => None,
        })
        .collect();
    if let Some((kept_seq, lease)) = kept.first() {
        let n = NODES.iter().position(|n| *n == lease.node).unwrap_or_else(|| panic!());
        let leases = sim.live_leases(n).await;
        let pick = leases.iter().position(|id| *id == lease.id).unwrap_or_else(|| panic!());
        sim.run(Op::Heartbeat(n)).await;
        sim.run(Op::Release(n, pick)).await;
        assert!(
            !sim.live_leases(n).await.contains(&lease.id),
            "the release went through"
        );
        let now = all_events(&ledger);
        assert!(
            now.iter().all(|(seq, _)| seq != kept_seq),
            "the kept bind {kept_seq} went with its release"
        );
        let holders = ledger.who_had(lease.ip, u64::MAX - 1).unwrap_or_else(|e| panic!("{e}"));
        assert!(holders.iter().all(|b| b.lease.id != lease.id));
        check_against_replay(&ledger, horizon.seq, cutoff);
    }

    // A snapshot carries the pruned ledger and its horizon to another replica.
    let mut builder = sim.sm.get_snapshot_builder().await;
    builder.build_snapshot().await.unwrap_or_else(|e| panic!("{e}"));
    let other_dir = TempDir::new("t25-prune-follower");
    let (_other_db, mut other) = open(&other_dir).await;
    let snapshot = sim
        .sm
        .get_current_snapshot()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no snapshot"));
    let mut received = other.begin_receiving_snapshot().await.unwrap_or_else(|e| panic!("{e}"));
    let mut sent = snapshot.snapshot;
    tokio::io::copy(&mut sent, &mut *received)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    other
        .install_snapshot(&snapshot.meta, received)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let other_ledger = other.ledger();
    assert_eq!(
        other_ledger.horizon().unwrap_or_else(|e| panic!("{e}")).seq,
        horizon.seq
    );
    assert_eq!(all_events(&other_ledger), all_events(&ledger));
    check_against_replay(&other_ledger, horizon.seq, cutoff);
    assert!(matches!(
        other_ledger.who_had(Ipv4Addr::new(100, 64, 1, 10), cutoff - 1),
        Err(LedgerError::Trimmed { .. })
    ));
}

#[tokio::test]
async fn the_horizon_and_the_indexes_survive_a_restart_and_old_indexes_are_rebuilt() {
    let dir = TempDir::new("t25-restart");
    let mut sim = Sim::new(&dir).await;
    busy_history(&mut sim).await;
    let events = all_events(&sim.sm.ledger());
    let cutoff = events[events.len() / 3].1.at;
    build_snapshot(&mut sim.sm).await;
    let horizon = sim
        .sm
        .retention()
        .prune(cutoff)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .horizon;
    drop(sim);

    let (db, sm) = open(&dir).await;
    let ledger = sm.ledger();
    assert_eq!(ledger.horizon().unwrap_or_else(|e| panic!("{e}")), horizon);
    check_against_replay(&ledger, horizon.seq, cutoff);
    let applied = sm.applied();
    assert_eq!(applied.read().await.horizon, horizon);

    // An index written by another layout version (or none: a ledger from before indexes) is
    // rebuilt from the events on open.
    let index = db.open_tree("ledger_index").unwrap_or_else(|e| panic!("{e}"));
    index.remove(b"v").unwrap_or_else(|e| panic!("{e}"));
    let node_entries: Vec<sled::IVec> = index
        .scan_prefix(Key::Node(NODES[0].to_owned()).prefix())
        .keys()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!node_entries.is_empty());
    for key in node_entries {
        index.remove(key).unwrap_or_else(|e| panic!("{e}"));
    }
    index.flush().unwrap_or_else(|e| panic!("{e}"));
    drop((db, sm, ledger, applied, index));
    let (_db, sm) = open(&dir).await;
    let ledger = sm.ledger();
    assert_eq!(ledger.horizon().unwrap_or_else(|e| panic!("{e}")), horizon);
    check_against_replay(&ledger, horizon.seq, cutoff);
}
