//! bind + release + cooldown in the domain, at 1k, 100k and 5M live leases.
//!
//! Each iteration binds a new pod on a node, releases it, and ticks its cooldown away, so the
//! number of live leases stays N. `random_node` picks the node at random (large states are really
//! cache-cold, as on a busy replica); `same_node` always uses one node, so the data it touches is
//! in cache at every size and what remains is the algorithm's cost. Commands are stamped like the leader does; only `decide` + `apply` run in
//! the timed part. Run: `cargo bench -p ipam-core --bench bind_release`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::BatchSize;
use criterion::BenchmarkId;
use criterion::Criterion;
use criterion::criterion_group;
use criterion::criterion_main;
use ipam_core::Command;
use ipam_core::CommandBody;
use ipam_core::Reply;
use ipam_core::State;
use ipam_core::command::AgentRef;
use ipam_core::command::EniRequest;
use ipam_core::command::LeaseSelector;
use ipam_core::command::NodeSpec;
use ipam_core::command::Owner;
use ipam_core::command::ReleaseReason;
use ipam_core::command::SubnetConfigSpec;
use ipam_core::decide;
use ipam_core::ids::Actor;
use ipam_core::limits::InstanceLimits;
use ipam_core::policy::PodMeta;
use ipam_core::state::Settings;

/// m5.24xlarge-like: 15 ENIs × 50 addresses; 14 pod ENIs × 49 pod addresses = 686 per node.
// The allocator the server binaries use (see docs/benchmarks.md for why): in a heap of several
// GiB, glibc's malloc spends much of a bind+release touching and consolidating cold free chunks.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LIMITS: InstanceLimits = InstanceLimits {
    max_enis: 15,
    ipv4_per_eni: 50,
    branch_enis: 0,
    trunking: false,
};
const BOUND_PER_NODE: u64 = 600;
const NODES_PER_SUBNET: u64 = 90;

struct Cluster {
    state: State,
    index: u64,
    now: u64,
    nodes: Vec<AgentRef>,
    rng: u64,
}

impl Cluster {
    fn exec(&mut self, actor: Actor, body: CommandBody) -> Reply {
        self.index += 1;
        let cmd = Command {
            index: self.index,
            at: self.now,
            actor,
            request_id: None,
            body,
        };
        let decision = decide(&self.state, &cmd).unwrap_or_else(|e| panic!("{e}"));
        for event in &decision.events {
            self.state.apply(event);
        }
        decision.reply
    }

    fn admin(&mut self, body: CommandBody) {
        self.exec(Actor::Operator("bench".to_owned()), body);
    }

    /// A cluster with `leases` live leases on full-sized nodes.
    fn with_leases(leases: u64) -> Self {
        let mut c = Cluster {
            state: State::default(),
            index: 0,
            now: 1_000_000,
            nodes: Vec::new(),
            rng: 0x9e37_79b9_7f4a_7c15,
        };
        // No cooldown, so each iteration's tick returns its address; nodes never expire during the run.
        let settings = Settings {
            ip_cooldown_ms: 0,
            heartbeat_ttl_ms: 1 << 40,
            ..Settings::default()
        };
        c.admin(CommandBody::UpdateSettings(settings));
        c.admin(CommandBody::CreatePool {
            cidr: "10.0.0.0/8".parse().unwrap_or_else(|e| panic!("{e}")),
        });
        let nodes = leases.div_ceil(BOUND_PER_NODE);
        for s in 0..nodes.div_ceil(NODES_PER_SUBNET) {
            c.admin(CommandBody::UpsertSubnetConfig(SubnetConfigSpec {
                name: format!("cfg-{s}"),
                subnet_id: format!("subnet-{s:08x}"),
                cidr: format!("10.{s}.0.0/16").parse().unwrap_or_else(|e| panic!("{e}")),
                az: "us-east-1a".to_owned(),
                security_groups: vec!["sg-0123456789abcdef0".to_owned()],
            }));
        }
        let mut pod = 0;
        for n in 0..nodes {
            let name = format!("ip-10-0-{}-{}.ec2.internal", n / 256, n % 256);
            let spec = NodeSpec {
                name: name.clone(),
                instance_id: format!("i-{n:017x}"),
                instance_type: "m5.24xlarge".to_owned(),
                limits: Some(LIMITS),
                az: "us-east-1a".to_owned(),
                labels: BTreeMap::new(),
                subnet_config: format!("cfg-{}", n / NODES_PER_SUBNET),
                pod_eni: false,
            };
            let Reply::Registered { epoch, .. } = c.exec(Actor::Agent(name.clone()), CommandBody::RegisterNode(spec))
            else {
                panic!("not registered")
            };
            let agent = AgentRef {
                node: name.clone(),
                epoch,
            };
            for _ in 1..LIMITS.max_enis {
                let request = EniRequest::Secondary {
                    ips: LIMITS.ipv4_per_eni - 1,
                };
                let Reply::EniPlanned(plan) = c.exec(
                    Actor::Agent(name.clone()),
                    CommandBody::PlanEni {
                        agent: agent.clone(),
                        request,
                    },
                ) else {
                    panic!("not planned")
                };
                let eni_id = format!("eni-{:017x}", plan.eni);
                let mac = format!(
                    "02:00:{:02x}:{:02x}:{:02x}:{:02x}",
                    (plan.eni >> 24) & 0xff,
                    (plan.eni >> 16) & 0xff,
                    (plan.eni >> 8) & 0xff,
                    plan.eni & 0xff
                );
                c.exec(
                    Actor::Agent(name.clone()),
                    CommandBody::ReportEniAttached {
                        agent: agent.clone(),
                        eni: plan.eni,
                        eni_id,
                        mac,
                    },
                );
            }
            let here = BOUND_PER_NODE.min(leases - n * BOUND_PER_NODE);
            for _ in 0..here {
                pod += 1;
                let (owner, meta) = pod_of(pod);
                c.exec(
                    Actor::Agent(name.clone()),
                    CommandBody::Bind {
                        agent: agent.clone(),
                        owner,
                        pod: meta,
                    },
                );
            }
            c.nodes.push(agent);
        }
        c.index += 1_000_000_000; // leave room: pods numbered by index below
        c
    }
}

/// Stamps the commands of one iteration: bind on a random node, release it, tick.
struct Feed {
    index: u64,
    now: u64,
    nodes: Vec<AgentRef>,
    rng: u64,
    /// Always the first node: the same data stays in cache whatever the state's size, which
    /// isolates the algorithm's cost from the memory hierarchy's.
    same_node: bool,
}

impl Feed {
    fn next(&mut self) -> (Command, Command, Command) {
        // xorshift64*: deterministic, cheap, and the same sequence for every size.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let pick = if self.same_node {
            0
        } else {
            (r % self.nodes.len() as u64) as usize
        };
        let agent = self.nodes[pick].clone();
        self.index += 3;
        self.now += 1;
        let (owner, pod) = pod_of(self.index);
        let actor = Actor::Agent(agent.node.clone());
        let stamp = |index, actor: Actor, body| Command {
            index,
            at: self.now,
            actor,
            request_id: None,
            body,
        };
        let bound = self.index - 2;
        let bind = stamp(
            bound,
            actor.clone(),
            CommandBody::Bind {
                agent: agent.clone(),
                owner,
                pod,
            },
        );
        let lease = LeaseSelector::Id(bound);
        let release = stamp(
            bound + 1,
            actor,
            CommandBody::Release {
                agent,
                lease,
                reason: ReleaseReason::CniDel,
            },
        );
        let tick = stamp(bound + 2, Actor::Controller, CommandBody::Tick);
        (bind, release, tick)
    }
}

fn pod_of(n: u64) -> (Owner, PodMeta) {
    let owner = Owner {
        namespace: "default".to_owned(),
        name: format!("web-{n}"),
        uid: format!("{n:08x}-0000-4000-8000-000000000000"),
        container_id: format!("{n:064x}"),
        ifname: "eth0".to_owned(),
    };
    let meta = PodMeta {
        namespace: owner.namespace.clone(),
        name: owner.name.clone(),
        ..PodMeta::default()
    };
    (owner, meta)
}

fn step(state: &mut State, cmd: &Command) -> Reply {
    let decision = decide(state, cmd).unwrap_or_else(|e| panic!("{e}"));
    for event in &decision.events {
        state.apply(event);
    }
    decision.reply
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("bind_release_cooldown");
    group
        .sample_size(50)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(2));
    for &leases in &[1_000u64, 100_000, 5_000_000] {
        let cluster = Cluster::with_leases(leases);
        assert_eq!(
            cluster.state.nodes.values().map(|n| n.leases.len() as u64).sum::<u64>(),
            leases
        );
        let Cluster {
            mut state,
            index,
            now,
            nodes,
            rng,
        } = cluster;
        let mut feed = Feed {
            index,
            now,
            nodes,
            rng,
            same_node: false,
        };
        for same_node in [false, true] {
            feed.same_node = same_node;
            let name = if same_node { "same_node" } else { "random_node" };
            group.bench_with_input(BenchmarkId::new(name, leases), &leases, |b, _| {
                b.iter_batched(
                    // Untimed: pick the node and build the commands, as the log would hand them over.
                    || feed.next(),
                    |(bind, release, tick)| {
                        black_box(step(&mut state, &bind));
                        black_box(step(&mut state, &release));
                        black_box(step(&mut state, &tick));
                    },
                    BatchSize::SmallInput,
                );
            });
        }
        assert_eq!(state.nodes.values().map(|n| n.leases.len() as u64).sum::<u64>(), leases);
        drop(state);
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
