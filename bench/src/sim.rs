//! A simulated EKS cluster driving a real state machine: the write phase of the benchmark.
//!
//! ```text
//!   queue of timed actions (BinaryHeap, earliest first)
//!     │ pop: the leader's clock moves to the action's time
//!     ▼
//!   Launch / Heartbeat / StartPod / EndPod / Tick / Outage / Terminate / EC2 replies …
//!     │ each becomes a Proposal (stamped with the clock) in the pending batch,
//!     │ with what to do with its outcome (`Then`)
//!     ▼  64 entries
//!   StateMachine::apply(entries) ── decide, apply, events + index entries in sled
//!     │ outcomes, in order
//!     ▼
//!   Then: schedule the pod's end, the EC2 reply to a plan, the next pod, …
//!   then the agents of the nodes touched look at the applied state and top up or trim their
//!   warm pools (PlanIps / PlanEni / DrainIps / PlanEniDetach)
//! ```
//!
//! The cluster: `nodes` nodes over three AZs (one /16 subnet config each in 100.64.0.0/10),
//! 3 pod ENIs of 10 addresses per node, warm pool of 5 (minimum 10) addresses. Each node runs
//! between 6 and 24 pods (its target changes about twice a day); a pod lives 10 min (60 %),
//! 2 h (30 %) or a day (10 %) on average (exponential), and is replaced a few seconds after it
//! ends. Agents heartbeat every TTL/3; the domain records every other one (an event once half
//! the TTL is used), so a node writes one heartbeat event per 2·TTL/3.
//! About 2 % of nodes a day have an agent outage long enough to expire (they register again
//! afterwards), about 5 % a day are terminated (they expire, an operator removes them, a new
//! node takes their place). The leader ticks every second when a cooldown or a deadline is due.
//! Everything is drawn from one seeded PRNG, so a seed gives one history, and a run that stops
//! earlier writes a prefix of a longer run's ledger.

use std::cmp::Ordering;
use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::collections::BinaryHeap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use ipam_core::CommandBody;
use ipam_core::Reply;
use ipam_core::command::AgentRef;
use ipam_core::command::EniRequest;
use ipam_core::command::LeaseSelector;
use ipam_core::command::Owner;
use ipam_core::command::ReleaseReason;
use ipam_core::ids::Actor;
use ipam_core::ids::LeaseId;
use ipam_core::ids::RequestId;
use ipam_core::ids::Timestamp;
use ipam_core::limits::InstanceLimits;
use ipam_core::policy::PodMeta;
use ipam_core::state::EniKind;
use ipam_core::state::EniState;
use ipam_core::state::NodeStatus;
use ipam_core::state::Settings;
use ipam_core::state::Slot as IpSlot;
use ipam_core::testing::node_spec;
use ipam_core::testing::subnet_config;
use ipam_server::controllers::tick_due;
use ipam_server::ledger::Ledger;
use ipam_server::raft::Outcome;
use ipam_server::raft::Proposal;
use ipam_server::raft::StateMachine;
use ipam_server::raft::state_machine::Options;
use ipam_server::raft::state_machine::SharedApplied;
use ipam_server::raft::types::Entry;
use openraft::CommittedLeaderId;
use openraft::EntryPayload;
use openraft::LogId;
use openraft::Membership;
use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;

use crate::Error;
use crate::Result;
use crate::manifest::Manifest;
use crate::manifest::PodKey;
use crate::manifest::Reservoir;
use crate::manifest::Samples;
use crate::manifest::WriteStats;
use crate::rng::Rng;

/// 2026-11-02T00:00:00Z, where the simulated history starts.
pub const START_AT_MS: Timestamp = 1_793_577_600_000;

const AZS: [&str; 3] = ["us-west-2a", "us-west-2b", "us-west-2c"];
const SUBNETS: [(&str, &str); 3] = [
    ("subnet-0a1b2c3d4e5f60001", "100.64.0.0/16"),
    ("subnet-0a1b2c3d4e5f60002", "100.65.0.0/16"),
    ("subnet-0a1b2c3d4e5f60003", "100.66.0.0/16"),
];
const POOL: &str = "100.64.0.0/10";
/// 4 interfaces of 11 addresses: with custom networking, 3 pod ENIs of 10 pod addresses.
const LIMITS: InstanceLimits = InstanceLimits {
    max_enis: 4,
    ipv4_per_eni: 11,
    branch_enis: 0,
    trunking: false,
};
/// Warm addresses an agent keeps beyond its bound ones (the VPC CNI's WARM_IP_TARGET).
const WARM_IP_TARGET: usize = 5;
/// Addresses an agent keeps at least (MINIMUM_IP_TARGET).
const MINIMUM_IP_TARGET: usize = 10;
/// Addresses asked for per PlanIps or per later ENI.
const IPS_PER_STEP: u16 = 5;
const POD_ENIS: usize = 3;
const SECOND: u64 = 1_000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// What `generate` is asked to do.
#[derive(Debug, Clone)]
pub struct Config {
    /// Nodes in the cluster (kept at this count: a terminated node is replaced).
    pub nodes: usize,
    /// Stop once the ledger holds at least this many events.
    pub events: u64,
    /// The PRNG seed.
    pub seed: u64,
    /// Whether the state machine indexes the ledger.
    pub index: bool,
    /// Entries per `apply` call.
    pub batch: usize,
    /// The cluster's heartbeat TTL (the domain's default is 30 s).
    pub heartbeat_ttl_ms: u64,
    /// Keys sampled for the query phase (each of addresses and pods).
    pub samples: usize,
}

/// Where the sled database and the snapshot files of a ledger live under a data directory.
pub fn paths(data: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    (data.join("sled"), data.join("snapshots"))
}

/// Opens the state machine of the ledger under `data` (created if new), as the server opens
/// its sled (default configuration: 1 GiB page cache).
///
/// # Errors
///
/// sled or the state machine failed to open.
pub async fn open(data: &Path, options: Options) -> Result<(sled::Db, StateMachine)> {
    let (sled_dir, snapshots) = paths(data);
    let db = sled::Config::new().path(&sled_dir).open()?;
    let sm = StateMachine::open_with(&db, snapshots, options).await?;
    Ok((db, sm))
}

/// Something that happens at a time.
#[derive(Debug, Clone)]
enum Action {
    /// The leader's tick loop (every second).
    Tick,
    /// A new instance boots in `slot` and its agent registers.
    Launch { slot: usize },
    /// The agent of the node in `slot` heartbeats.
    Heartbeat { slot: usize, generation: u32 },
    /// The agent's periodic look at its warm pool.
    Reconcile { slot: usize, generation: u32 },
    /// A pod is scheduled on the node: CNI ADD.
    StartPod { slot: usize, generation: u32 },
    /// A pod ends: CNI DEL.
    EndPod {
        slot: usize,
        generation: u32,
        lease: LeaseId,
    },
    /// EC2 answers an agent's call: the ENI attached, addresses assigned or unassigned, the ENI
    /// deleted.
    Ec2Done {
        slot: usize,
        generation: u32,
        body: Box<CommandBody>,
    },
    /// The node's pod count target changes.
    Retarget { slot: usize },
    /// The agent goes silent (a crash loop, a network problem) long enough to expire.
    Outage { slot: usize },
    /// The silent agent is back and registers again.
    Recover { slot: usize },
    /// The instance is terminated (scale-in, spot reclaim).
    Terminate { slot: usize },
    /// The node lifecycle controller forgets a terminated (expired) node.
    RemoveNode { node: String },
}

/// An action in the queue, ordered by time then by when it was scheduled.
#[derive(Debug)]
struct Timed {
    at: Timestamp,
    order: u64,
    action: Action,
}

impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}

impl Eq for Timed {}

impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Timed {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

/// What to do with an entry's outcome.
#[derive(Debug, Clone)]
enum Then {
    Nothing,
    Tick,
    Registered {
        slot: usize,
        generation: u32,
    },
    Bound {
        slot: usize,
        generation: u32,
    },
    Released {
        slot: usize,
        generation: u32,
    },
    /// A warm-pool step: EniPlanned / IpsPlanned / IpsDraining / EniDetaching, or an EC2 report.
    Agent {
        slot: usize,
        generation: u32,
    },
    Removed {
        node: String,
    },
}

/// Where a node's instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Down,
    Registering,
    Up,
    Silent,
    Terminated,
}

/// One node position of the cluster; instances come and go in it.
#[derive(Debug, Clone)]
struct NodeSlot {
    az: usize,
    name: String,
    instance_id: String,
    life: Life,
    /// Bumped at every registration: actions of an older one are dropped.
    generation: u32,
    epoch: u64,
    target: u32,
    /// Pods alive or about to start in this generation.
    pods: u32,
    /// A warm-pool step is in flight.
    busy: bool,
}

/// The simulation.
struct Cluster {
    config: Config,
    rng: Rng,
    sm: StateMachine,
    applied: SharedApplied,
    ledger: Ledger,
    queue: BinaryHeap<Reverse<Timed>>,
    order: u64,
    now: Timestamp,
    index: u64,
    slots: Vec<NodeSlot>,
    launched: u64,
    pending: Vec<(Entry, Then)>,
    dirty: BTreeSet<usize>,
    tick_pending: bool,
    last_seq: u64,
    ips: Reservoir<Ipv4Addr>,
    pods: Reservoir<PodKey>,
    stats: WriteStats,
    apply_time: Duration,
}

fn all_warm(eni: &ipam_core::state::Eni) -> bool {
    eni.slots.values().all(|s| matches!(s, IpSlot::Warm { .. }))
}

fn request_id(rng: &mut Rng) -> Option<RequestId> {
    RequestId::new(rng.uuid()).ok()
}

fn pod_lifetime(rng: &mut Rng) -> u64 {
    let u = rng.unit();
    let mean = if u < 0.6 {
        10.0 * MINUTE as f64
    } else if u < 0.9 {
        2.0 * HOUR as f64
    } else {
        DAY as f64
    };
    (rng.exp(mean) as u64).max(20 * SECOND)
}

fn new_pod(rng: &mut Rng) -> (Owner, PodMeta) {
    let (namespace, name) = if rng.chance(0.25) {
        // StatefulSet pods: the same names come back, so a name has a history of several pods.
        let app = rng.below(1_500);
        (format!("data-{}", app % 40), format!("db-{app:04}-{}", rng.below(3)))
    } else {
        let app = rng.below(4_000);
        (
            format!("team-{}", app % 120),
            format!("svc-{app:04}-{}-{}", rng.k8s_suffix(10), rng.k8s_suffix(5)),
        )
    };
    let owner = Owner {
        namespace: namespace.clone(),
        name: name.clone(),
        uid: rng.uuid(),
        container_id: rng.hex(64),
        ifname: "eth0".to_owned(),
    };
    let meta = PodMeta {
        namespace,
        name,
        labels: std::collections::BTreeMap::new(),
        service_account: "default".to_owned(),
        service_account_labels: std::collections::BTreeMap::new(),
    };
    (owner, meta)
}

impl Cluster {
    fn schedule(&mut self, at: Timestamp, action: Action) {
        self.order += 1;
        self.queue.push(Reverse(Timed {
            at: at.max(self.now),
            order: self.order,
            action,
        }));
    }

    fn after(&mut self, delay: u64, action: Action) {
        self.schedule(self.now + delay, action);
    }

    fn propose(&mut self, actor: Actor, request_id: Option<RequestId>, body: CommandBody, then: Then) {
        self.index += 1;
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
            payload: EntryPayload::Normal(Proposal {
                at: self.now,
                actor,
                request_id,
                body,
            }),
        };
        self.pending.push((entry, then));
    }

    fn agent(&self, slot: usize) -> AgentRef {
        AgentRef {
            node: self.slots[slot].name.clone(),
            epoch: self.slots[slot].epoch,
        }
    }

    fn current(&self, slot: usize, generation: u32) -> bool {
        let s = &self.slots[slot];
        s.generation == generation && s.life == Life::Up
    }

    async fn apply(&mut self, entries: Vec<Entry>) -> Result<Vec<Outcome>> {
        let started = Instant::now();
        let outcomes = self.sm.apply(entries).await?;
        self.apply_time += started.elapsed();
        self.stats.batches += 1;
        Ok(outcomes)
    }

    /// Applies the pending batch, handles the outcomes, then lets the touched agents look at
    /// their warm pools.
    async fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (entries, thens): (Vec<Entry>, Vec<Then>) = std::mem::take(&mut self.pending).into_iter().unzip();
        self.stats.entries += entries.len() as u64;
        let outcomes = self.apply(entries).await?;
        self.last_seq = self.ledger.last_seq();
        for (outcome, then) in outcomes.into_iter().zip(thens) {
            self.handle(then, outcome)?;
        }
        self.reconcile_dirty().await;
        Ok(())
    }

    fn handle(&mut self, then: Then, outcome: Outcome) -> Result<()> {
        let result = outcome.result;
        if result.is_err() {
            self.stats.refused += 1;
        }
        match then {
            Then::Nothing => {}
            Then::Tick => self.tick_pending = false,
            Then::Registered { slot, generation } => {
                let epoch = match result {
                    Ok(Reply::Registered { epoch, .. }) => epoch,
                    other => {
                        return Err(Error::Simulation(format!(
                            "registering {} was answered {other:?}",
                            self.slots[slot].name
                        )));
                    }
                };
                if self.slots[slot].generation != generation {
                    return Ok(());
                }
                self.slots[slot].epoch = epoch;
                self.slots[slot].life = Life::Up;
                let interval = self.config.heartbeat_ttl_ms / 3;
                let first = self.rng.between(interval * 9 / 10, interval);
                self.after(first, Action::Heartbeat { slot, generation });
                let reconcile = self.rng.between(30 * SECOND, 90 * SECOND);
                self.after(reconcile, Action::Reconcile { slot, generation });
                self.dirty.insert(slot);
                self.fill(slot, 20 * SECOND, 2 * MINUTE);
            }
            Then::Bound { slot, generation } => match result {
                Ok(Reply::Bound(lease)) => {
                    self.ips.offer(&mut self.rng, lease.ip);
                    let key = PodKey {
                        namespace: lease.owner.namespace.clone(),
                        name: lease.owner.name.clone(),
                        uid: lease.owner.uid.clone(),
                    };
                    self.pods.offer(&mut self.rng, key);
                    let lifetime = pod_lifetime(&mut self.rng);
                    self.after(
                        lifetime,
                        Action::EndPod {
                            slot,
                            generation,
                            lease: lease.id,
                        },
                    );
                    self.dirty.insert(slot);
                }
                _ if self.current(slot, generation) => {
                    // No warm address yet: the kubelet retries the sandbox a little later.
                    let retry = self.rng.between(5 * SECOND, 15 * SECOND);
                    self.after(retry, Action::StartPod { slot, generation });
                    self.dirty.insert(slot);
                }
                _ => {}
            },
            Then::Released { slot, generation } => {
                if self.slots[slot].generation == generation {
                    self.slots[slot].pods = self.slots[slot].pods.saturating_sub(1);
                    if self.slots[slot].life == Life::Up {
                        self.fill(slot, 2 * SECOND, 30 * SECOND);
                    }
                }
            }
            Then::Agent { slot, generation } => {
                if self.slots[slot].generation != generation {
                    return Ok(());
                }
                let (delay, body) = match result {
                    Ok(Reply::EniPlanned(plan)) => {
                        let body = CommandBody::ReportEniAttached {
                            agent: self.agent(slot),
                            eni: plan.eni,
                            eni_id: format!("eni-0{}", self.rng.hex(16)),
                            mac: format!(
                                "0e:{}:{}:{}:{}:{}",
                                self.rng.hex(2),
                                self.rng.hex(2),
                                self.rng.hex(2),
                                self.rng.hex(2),
                                self.rng.hex(2)
                            ),
                        };
                        (self.rng.between(2 * SECOND, 8 * SECOND), Some(body))
                    }
                    Ok(Reply::IpsPlanned { eni, ips }) => {
                        let agent = self.agent(slot);
                        let body = CommandBody::ReportIpsAssigned { agent, eni, ips };
                        (self.rng.between(500, 2 * SECOND), Some(body))
                    }
                    Ok(Reply::IpsDraining { eni, ips }) => {
                        let agent = self.agent(slot);
                        let body = CommandBody::ReportIpsUnassigned { agent, eni, ips };
                        (self.rng.between(500, 2 * SECOND), Some(body))
                    }
                    Ok(Reply::EniDetaching { eni }) => {
                        let agent = self.agent(slot);
                        let body = CommandBody::ReportEniDetached { agent, eni };
                        (self.rng.between(3 * SECOND, 10 * SECOND), Some(body))
                    }
                    // An EC2 report went through, or a step was refused: the agent looks again.
                    _ => (0, None),
                };
                match body {
                    Some(body) => {
                        let body = Box::new(body);
                        self.after(delay, Action::Ec2Done { slot, generation, body });
                    }
                    None => {
                        self.slots[slot].busy = false;
                        self.dirty.insert(slot);
                    }
                }
            }
            Then::Removed { node } => {
                if result.is_err() {
                    // Not expired yet (its last heartbeat reached further): try again later.
                    self.after(MINUTE, Action::RemoveNode { node });
                }
            }
        }
        Ok(())
    }

    /// Schedules pod starts until the node's pods reach its target.
    fn fill(&mut self, slot: usize, low: u64, high: u64) {
        let generation = self.slots[slot].generation;
        while self.slots[slot].pods < self.slots[slot].target {
            self.slots[slot].pods += 1;
            let delay = self.rng.between(low, high);
            self.after(delay, Action::StartPod { slot, generation });
        }
    }

    /// The agents of the dirty nodes look at the applied state and take one warm-pool step each.
    async fn reconcile_dirty(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let applied = Arc::clone(&self.applied);
        let applied = applied.read().await;
        let dirty = std::mem::take(&mut self.dirty);
        for slot in dirty {
            let s = &self.slots[slot];
            if s.life != Life::Up || s.busy {
                continue;
            }
            let Some(node) = applied.state.nodes.get(&s.name) else {
                continue;
            };
            if node.epoch != s.epoch || node.status != NodeStatus::Active {
                continue;
            }
            let agent = self.agent(slot);
            let generation = s.generation;
            let then = Then::Agent { slot, generation };
            let secondary: Vec<_> = node.enis.values().filter(|e| e.kind == EniKind::Secondary).collect();
            // Work an earlier generation of the agent left half done: EC2 finished it meanwhile.
            let unfinished = secondary.iter().find_map(|e| {
                let in_state = |wanted: IpSlot| -> Vec<Ipv4Addr> {
                    e.slots
                        .iter()
                        .filter(|(_, s)| **s == wanted)
                        .map(|(ip, _)| *ip)
                        .collect()
                };
                match e.state {
                    EniState::Planned => Some(CommandBody::ReportEniAttached {
                        agent: agent.clone(),
                        eni: e.eni_ref,
                        eni_id: format!("eni-0{:016x}", e.eni_ref),
                        mac: format!(
                            "0e:00:{:02x}:{:02x}:{:02x}:{:02x}",
                            (e.eni_ref >> 24) & 255,
                            (e.eni_ref >> 16) & 255,
                            (e.eni_ref >> 8) & 255,
                            e.eni_ref & 255
                        ),
                    }),
                    EniState::Detaching => Some(CommandBody::ReportEniDetached {
                        agent: agent.clone(),
                        eni: e.eni_ref,
                    }),
                    EniState::Attached => {
                        let pending = in_state(IpSlot::Pending);
                        let draining = in_state(IpSlot::Draining);
                        if !pending.is_empty() {
                            Some(CommandBody::ReportIpsAssigned {
                                agent: agent.clone(),
                                eni: e.eni_ref,
                                ips: pending,
                            })
                        } else if !draining.is_empty() {
                            Some(CommandBody::ReportIpsUnassigned {
                                agent: agent.clone(),
                                eni: e.eni_ref,
                                ips: draining,
                            })
                        } else {
                            None
                        }
                    }
                }
            });
            if let Some(body) = unfinished {
                self.slots[slot].busy = true;
                self.propose(Actor::Agent(agent.node.clone()), None, body, then);
                continue;
            }
            let warm = node.warm.len();
            let total: usize = secondary.iter().map(|e| e.slots.len()).sum();
            let per_eni = usize::from(LIMITS.pod_ips_per_eni());
            let step = if warm < WARM_IP_TARGET || total < MINIMUM_IP_TARGET {
                match secondary
                    .iter()
                    .find(|e| e.state == EniState::Attached && e.slots.len() < per_eni)
                {
                    Some(e) => Some(CommandBody::PlanIps {
                        agent: agent.clone(),
                        eni: e.eni_ref,
                        count: IPS_PER_STEP.min((per_eni - e.slots.len()) as u16),
                    }),
                    None if secondary.len() < POD_ENIS => Some(CommandBody::PlanEni {
                        agent: agent.clone(),
                        request: EniRequest::Secondary {
                            ips: if secondary.is_empty() {
                                LIMITS.pod_ips_per_eni()
                            } else {
                                IPS_PER_STEP
                            },
                        },
                    }),
                    None => None,
                }
            } else if warm > 2 * WARM_IP_TARGET && total > MINIMUM_IP_TARGET {
                let spare = secondary.iter().skip(1).find(|e| {
                    all_warm(e) && warm - e.slots.len() >= WARM_IP_TARGET && total - e.slots.len() >= MINIMUM_IP_TARGET
                });
                match spare {
                    Some(e) => Some(CommandBody::PlanEniDetach {
                        agent: agent.clone(),
                        eni: e.eni_ref,
                    }),
                    None => secondary
                        .iter()
                        .map(|e| {
                            let w = e.slots.values().filter(|s| matches!(s, IpSlot::Warm { .. })).count();
                            (w, e.eni_ref)
                        })
                        .max()
                        .map(|(w, eni)| (w.min(warm - WARM_IP_TARGET).min(total - MINIMUM_IP_TARGET), eni))
                        .filter(|(count, _)| *count > 0)
                        .map(|(count, eni)| CommandBody::DrainIps {
                            agent: agent.clone(),
                            eni,
                            count: count as u16,
                        }),
                }
            } else {
                None
            };
            if let Some(body) = step {
                self.slots[slot].busy = true;
                let request = request_id(&mut self.rng);
                self.propose(Actor::Agent(agent.node.clone()), request, body, then);
            }
        }
    }

    fn spec(&self, slot: usize) -> ipam_core::command::NodeSpec {
        let s = &self.slots[slot];
        node_spec(&s.name, &s.instance_id, AZS[s.az], AZS[s.az], LIMITS)
    }

    fn register(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        s.generation += 1;
        s.life = Life::Registering;
        s.pods = 0;
        s.busy = false;
        let generation = s.generation;
        let actor = Actor::Agent(s.name.clone());
        let spec = self.spec(slot);
        self.propose(
            actor,
            None,
            CommandBody::RegisterNode(spec),
            Then::Registered { slot, generation },
        );
    }

    async fn act(&mut self, action: Action) -> Result<()> {
        let ttl = self.config.heartbeat_ttl_ms;
        match action {
            Action::Tick => {
                self.after(SECOND, Action::Tick);
                if self.tick_pending {
                    return Ok(());
                }
                let due = {
                    let applied = self.applied.read().await;
                    tick_due(&applied.state, self.now, Duration::MAX)
                };
                if due {
                    self.tick_pending = true;
                    self.propose(Actor::Controller, None, CommandBody::Tick, Then::Tick);
                }
            }
            Action::Launch { slot } => {
                self.launched += 1;
                let n = self.launched;
                let az = self.slots[slot].az;
                self.slots[slot].name = format!(
                    "ip-10-{}-{}-{}.us-west-2.compute.internal",
                    az * 64 + ((n >> 16) % 64) as usize,
                    (n >> 8) & 255,
                    n & 255
                );
                self.slots[slot].instance_id = format!("i-0{}", self.rng.hex(16));
                self.register(slot);
            }
            Action::Heartbeat { slot, generation } => {
                if self.current(slot, generation) {
                    let agent = self.agent(slot);
                    let actor = Actor::Agent(agent.node.clone());
                    self.propose(actor, None, CommandBody::Heartbeat(agent), Then::Nothing);
                    let interval = ttl / 3;
                    let next = self.rng.between(interval * 9 / 10, interval);
                    self.after(next, Action::Heartbeat { slot, generation });
                }
            }
            Action::Reconcile { slot, generation } => {
                if self.current(slot, generation) {
                    self.dirty.insert(slot);
                    self.after(MINUTE, Action::Reconcile { slot, generation });
                }
            }
            Action::StartPod { slot, generation } => {
                if self.current(slot, generation) {
                    if self.slots[slot].pods > self.slots[slot].target {
                        // The target went down meanwhile: this pod is not scheduled after all.
                        self.slots[slot].pods -= 1;
                        return Ok(());
                    }
                    let (owner, pod) = new_pod(&mut self.rng);
                    let agent = self.agent(slot);
                    let request = request_id(&mut self.rng);
                    let actor = Actor::Agent(agent.node.clone());
                    let body = CommandBody::Bind { agent, owner, pod };
                    self.propose(actor, request, body, Then::Bound { slot, generation });
                }
            }
            Action::EndPod {
                slot,
                generation,
                lease,
            } => {
                if self.current(slot, generation) {
                    let u = self.rng.unit();
                    let reason = if u < 0.96 {
                        ReleaseReason::CniDel
                    } else if u < 0.99 {
                        ReleaseReason::Gc
                    } else {
                        ReleaseReason::Reconcile
                    };
                    let agent = self.agent(slot);
                    let request = request_id(&mut self.rng);
                    let actor = Actor::Agent(agent.node.clone());
                    let body = CommandBody::Release {
                        agent,
                        lease: LeaseSelector::Id(lease),
                        reason,
                    };
                    self.propose(actor, request, body, Then::Released { slot, generation });
                }
            }
            Action::Ec2Done { slot, generation, body } => {
                if self.current(slot, generation) {
                    let actor = Actor::Agent(self.slots[slot].name.clone());
                    self.propose(actor, None, *body, Then::Agent { slot, generation });
                }
            }
            Action::Retarget { slot } => {
                self.slots[slot].target = self.rng.between(6, 24) as u32;
                if self.slots[slot].life == Life::Up {
                    self.fill(slot, 2 * SECOND, 5 * MINUTE);
                }
                let next = self.rng.exp(12.0 * HOUR as f64) as u64;
                self.after(next, Action::Retarget { slot });
            }
            Action::Outage { slot } => {
                if self.slots[slot].life == Life::Up {
                    self.slots[slot].life = Life::Silent;
                    let back = ttl + self.rng.between(20 * SECOND, 10 * MINUTE);
                    self.after(back, Action::Recover { slot });
                }
                let next = self.rng.exp(50.0 * DAY as f64) as u64;
                self.after(next, Action::Outage { slot });
            }
            Action::Recover { slot } => {
                if self.slots[slot].life == Life::Silent {
                    let expired = {
                        let applied = self.applied.read().await;
                        applied
                            .state
                            .nodes
                            .get(&self.slots[slot].name)
                            .is_none_or(|n| n.status == NodeStatus::Expired)
                    };
                    if expired {
                        self.register(slot);
                    } else {
                        self.after(5 * SECOND, Action::Recover { slot });
                    }
                }
            }
            Action::Terminate { slot } => {
                if self.slots[slot].life == Life::Up {
                    self.slots[slot].life = Life::Terminated;
                    self.slots[slot].generation += 1;
                    let node = self.slots[slot].name.clone();
                    let remove = ttl + self.rng.between(2 * MINUTE, 20 * MINUTE);
                    self.after(remove, Action::RemoveNode { node });
                    let relaunch = self.rng.between(MINUTE, 5 * MINUTE);
                    self.after(relaunch, Action::Launch { slot });
                }
                let next = self.rng.exp(20.0 * DAY as f64) as u64;
                self.after(next, Action::Terminate { slot });
            }
            Action::RemoveNode { node } => {
                let actor = Actor::Operator("node-lifecycle-controller".to_owned());
                let body = CommandBody::RemoveNode {
                    node: node.clone(),
                    force: false,
                };
                self.propose(actor, None, body, Then::Removed { node });
            }
        }
        Ok(())
    }

    async fn setup(&mut self) -> Result<()> {
        self.index += 1;
        let membership = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), self.index),
            payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1_u64])], None)),
        };
        self.apply(vec![membership]).await?;
        let operator = || Actor::Operator("bench".to_owned());
        let cidr = POOL.parse().map_err(|e| Error::Simulation(format!("{POOL}: {e:?}")))?;
        self.propose(operator(), None, CommandBody::CreatePool { cidr }, Then::Nothing);
        for (az, (subnet_id, cidr)) in AZS.iter().zip(SUBNETS) {
            let config = subnet_config(az, subnet_id, cidr, az);
            self.propose(operator(), None, CommandBody::UpsertSubnetConfig(config), Then::Nothing);
        }
        let settings = Settings {
            heartbeat_ttl_ms: self.config.heartbeat_ttl_ms,
            ..Settings::default()
        };
        if settings != Settings::default() {
            self.propose(operator(), None, CommandBody::UpdateSettings(settings), Then::Nothing);
        }
        let outcomes = {
            let (entries, _): (Vec<Entry>, Vec<Then>) = std::mem::take(&mut self.pending).into_iter().unzip();
            self.stats.entries += entries.len() as u64 + 1;
            self.apply(entries).await?
        };
        if let Some(refused) = outcomes.iter().find(|o| o.result.is_err()) {
            return Err(Error::Simulation(format!("cluster setup refused: {refused:?}")));
        }
        self.schedule(self.now, Action::Tick);
        for slot in 0..self.slots.len() {
            let boot = self.rng.below(10 * MINUTE);
            self.schedule(START_AT_MS + boot, Action::Launch { slot });
            let retarget = self.rng.exp(12.0 * HOUR as f64) as u64;
            self.schedule(START_AT_MS + retarget, Action::Retarget { slot });
            let outage = self.rng.exp(50.0 * DAY as f64) as u64;
            self.schedule(START_AT_MS + outage, Action::Outage { slot });
            let terminate = self.rng.exp(20.0 * DAY as f64) as u64;
            self.schedule(START_AT_MS + terminate, Action::Terminate { slot });
        }
        Ok(())
    }
}

/// Runs the simulation into a fresh ledger under `data` until it holds `config.events` events;
/// builds a snapshot at the end (as Raft would have), so later phases open it without replaying
/// the ledger. Prints progress on stderr.
///
/// # Errors
///
/// The state machine failed, or the simulation met a refusal it cannot explain.
pub async fn generate(config: &Config, data: &Path) -> Result<Manifest> {
    let started = Instant::now();
    let (db, sm) = open(
        data,
        Options {
            index: config.index,
            ..Options::default()
        },
    )
    .await?;
    let applied = sm.applied();
    let ledger = sm.ledger();
    if ledger.last_seq() != 0 {
        return Err(Error::Simulation(format!(
            "{} already holds a ledger ({} events): give an empty directory",
            data.display(),
            ledger.last_seq()
        )));
    }
    let mut rng = Rng::new(config.seed, 0);
    let slots = (0..config.nodes)
        .map(|i| NodeSlot {
            az: i % AZS.len(),
            name: String::new(),
            instance_id: String::new(),
            life: Life::Down,
            generation: 0,
            epoch: 0,
            target: rng.between(6, 24) as u32,
            pods: 0,
            busy: false,
        })
        .collect();
    let mut cluster = Cluster {
        config: config.clone(),
        rng,
        sm,
        applied,
        ledger,
        queue: BinaryHeap::new(),
        order: 0,
        now: START_AT_MS,
        index: 0,
        slots,
        launched: 0,
        pending: Vec::new(),
        dirty: BTreeSet::new(),
        tick_pending: false,
        last_seq: 0,
        ips: Reservoir::new(config.samples),
        pods: Reservoir::new(config.samples),
        stats: WriteStats {
            index: config.index,
            ..WriteStats::default()
        },
        apply_time: Duration::ZERO,
    };
    cluster.setup().await?;
    let mut reported = Instant::now();
    while cluster.last_seq < config.events {
        let Some(Reverse(next)) = cluster.queue.pop() else {
            return Err(Error::Simulation("nothing left to do".to_owned()));
        };
        cluster.now = cluster.now.max(next.at);
        cluster.act(next.action).await?;
        if cluster.pending.len() >= config.batch {
            cluster.flush().await?;
            if reported.elapsed() >= Duration::from_secs(10) {
                reported = Instant::now();
                eprintln!(
                    "[generate] {} events, {} entries, simulated {:.1} h, {:.0} s",
                    cluster.last_seq,
                    cluster.stats.entries,
                    (cluster.now - START_AT_MS) as f64 / HOUR as f64,
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
    cluster.flush().await?;
    let flush_started = Instant::now();
    db.flush_async().await?;
    cluster.apply_time += flush_started.elapsed();
    let wall = started.elapsed();
    let events = cluster.ledger.last_seq();
    let first_at = cluster.ledger.read(1, 1)?.first().map_or(START_AT_MS, |(_, e)| e.at);
    let last_at = cluster
        .ledger
        .read(events, 1)?
        .first()
        .map_or(START_AT_MS, |(_, e)| e.at);
    // A snapshot, as Raft takes every few thousand entries: later phases open from it.
    let mut builder = cluster.sm.get_snapshot_builder().await;
    builder.build_snapshot().await?;
    db.flush_async().await?;
    let mut stats = cluster.stats;
    stats.wall_secs = wall.as_secs_f64();
    stats.apply_secs = cluster.apply_time.as_secs_f64();
    stats.events_per_sec = events as f64 / stats.wall_secs;
    stats.apply_events_per_sec = events as f64 / stats.apply_secs;
    Ok(Manifest {
        seed: config.seed,
        nodes: config.nodes,
        events,
        first_at,
        last_at,
        write: stats,
        samples: Samples {
            ips: cluster.ips.into_items(),
            pods: cluster.pods.into_items(),
        },
    })
}

/// What one sled tree holds, counted by what was put in it (keys and values), not by the file.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct TreeBytes {
    /// Entries.
    pub entries: u64,
    /// Bytes of the keys.
    pub key_bytes: u64,
    /// Bytes of the values.
    pub value_bytes: u64,
}

/// Counts each tree of `db`: the logical size, to set against the bytes on disk.
///
/// # Errors
///
/// sled failed.
pub fn logical_bytes(db: &sled::Db) -> Result<std::collections::BTreeMap<String, TreeBytes>> {
    let mut trees = std::collections::BTreeMap::new();
    for name in db.tree_names() {
        let tree = db.open_tree(&name)?;
        let mut bytes = TreeBytes::default();
        for kv in tree.iter() {
            let (key, value) = kv?;
            bytes.entries += 1;
            bytes.key_bytes += key.len() as u64;
            bytes.value_bytes += value.len() as u64;
        }
        trees.insert(String::from_utf8_lossy(&name).into_owned(), bytes);
    }
    Ok(trees)
}

/// Throws away the index of the ledger under `data` and has the state machine rebuild it on
/// open, as a replica does after installing a snapshot or when the index layout changed
/// (events in order, index entries in batches of 10,000). Returns the events indexed and the
/// time it took, the final flush included.
///
/// # Errors
///
/// sled or the state machine failed.
pub async fn reindex(data: &Path) -> Result<(u64, Duration)> {
    let (sled_dir, snapshots) = paths(data);
    let db = sled::Config::new().path(&sled_dir).open()?;
    db.open_tree(ipam_server::ledger::index::INDEX_TREE)?.clear()?;
    db.flush_async().await?;
    let started = Instant::now();
    let sm = StateMachine::open_with(&db, snapshots, Options::default()).await?;
    db.flush_async().await?;
    Ok((sm.ledger().last_seq(), started.elapsed()))
}
