//! The load generator: N concurrent clients, each acting as one node's agent, binding and
//! releasing pod addresses on an ipam-server cluster as fast as the cluster answers.
//!
//! ```text
//!  setup (idempotent)                         run (each client, until the budget ends)
//!  ───────────────────────────────────────    ─────────────────────────────────────────────
//!  CreatePool 100.64.0.0/10                   Bind(new pod, new attachment) ──▶ lease
//!  UpsertSubnetConfig: one /16 per AZ           └ RESOURCE_EXHAUSTED node-warm:
//!  GetSettings → UpdateSettings(cooldown)          PlanIps → ReportIpsAssigned (or a new
//!  per client: RegisterNode,                       ENI), retry with a new request id
//!    PlanEni → ReportEniAttached × k,         Release(lease id, attachment)
//!    heartbeat every ttl/3 (background)       latencies: bind, release, pair (bind+release)
//! ```
//!
//! Every call goes through [`Cluster::call`], which follows `ipam-leader` hints and retries
//! calls with unknown outcomes under the same request id. Acknowledged binds and releases, and
//! the ones whose outcome stayed unknown, are recorded ([`Record`]) for a chaos test to check
//! against the server's ledger afterwards: a failed or timed-out call is `unknown`, never
//! "did not happen".

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use ipam_proto::ipam::v1::Attachment;
use ipam_proto::ipam::v1::BindRequest;
use ipam_proto::ipam::v1::CreatePoolRequest;
use ipam_proto::ipam::v1::EniKind;
use ipam_proto::ipam::v1::GetSettingsRequest;
use ipam_proto::ipam::v1::HeartbeatRequest;
use ipam_proto::ipam::v1::NodeLimits;
use ipam_proto::ipam::v1::PlanEniRequest;
use ipam_proto::ipam::v1::PlanIpsRequest;
use ipam_proto::ipam::v1::PodRef;
use ipam_proto::ipam::v1::RegisterNodeRequest;
use ipam_proto::ipam::v1::ReleaseReason;
use ipam_proto::ipam::v1::ReleaseRequest;
use ipam_proto::ipam::v1::ReportEniAttachedRequest;
use ipam_proto::ipam::v1::ReportIpsAssignedRequest;
use ipam_proto::ipam::v1::SubnetConfig;
use ipam_proto::ipam::v1::UpdateSettingsRequest;
use ipam_proto::ipam::v1::UpsertSubnetConfigRequest;
use ipam_proto::ipam::v1::admin_service_client::AdminServiceClient;
use ipam_proto::ipam::v1::agent_service_client::AgentServiceClient;
use serde::Deserialize;
use serde::Serialize;
use tokio::sync::watch;
use tonic::Code;
use tonic::Status;

use crate::error::Error;
use crate::error::Result;
use crate::report::Budget;
use crate::report::Report;
use crate::report::Tally;
use crate::report::bump;
use crate::routing::ChannelOptions;
use crate::routing::Cluster;
use crate::routing::RetryPolicy;
use crate::routing::error_name;
use crate::routing::exhausted_what;
use crate::routing::outcome_is_unknown;

/// The load generator's configuration.
#[derive(Debug, Clone)]
pub struct LoadgenConfig {
    /// The replicas' gRPC addresses, `host:port`; the leader is found from any of them.
    pub servers: Vec<String>,
    /// Concurrent clients; each one is a node.
    pub clients: usize,
    /// Run for this long (with `ops`: whichever ends first).
    pub duration: Option<Duration>,
    /// Run this many bind+release pairs in total.
    pub ops: Option<u64>,
    /// Names this run's nodes, pods and request ids (`[a-z0-9]`, at most 12 characters); a new
    /// one per run unless given.
    pub run_id: String,
    /// The pool (the VPC's secondary CIDR); at most a /16.
    pub pool: (Ipv4Addr, u8),
    /// Availability zones: one subnet config with a /16 of the pool each; clients are spread
    /// over them.
    pub azs: u32,
    /// The AWS region the AZ names are made of (`us-east-1` → `us-east-1a`, `us-east-1b`, ...).
    pub region: String,
    /// The cluster's ip cooldown is set to this (other settings are kept).
    pub ip_cooldown: Duration,
    /// The nodes' EC2 instance type; its limits come from the built-in table.
    pub instance_type: String,
    /// Secondary ENIs each node plans at setup.
    pub enis_per_node: u32,
    /// Secondary addresses per ENI at setup; 0 for the instance type's maximum.
    pub ips_per_eni: u32,
    /// Times a bind waits for cooling addresses when the node can grow no more, before it
    /// fails.
    pub max_warm_waits: u32,
    /// The pause of one such wait.
    pub warm_wait: Duration,
    /// Append every bind and release outcome to this JSON lines file.
    pub record: Option<PathBuf>,
    /// Also return the records in memory ([`RunOutcome::records`]).
    pub keep_records: bool,
    /// Connections and deadlines.
    pub channels: ChannelOptions,
    /// Leader following and retries.
    pub retry: RetryPolicy,
}

impl LoadgenConfig {
    /// A configuration with the defaults of the `loadgen` binary for the given servers.
    pub fn new(servers: Vec<String>) -> Self {
        Self {
            servers,
            clients: 16,
            duration: Some(Duration::from_secs(10)),
            ops: None,
            run_id: new_run_id(),
            pool: (Ipv4Addr::new(100, 64, 0, 0), 10),
            azs: 3,
            region: "us-east-1".to_owned(),
            ip_cooldown: Duration::from_secs(1),
            instance_type: "m5.24xlarge".to_owned(),
            enis_per_node: 4,
            ips_per_eni: 0,
            max_warm_waits: 100,
            warm_wait: Duration::from_millis(50),
            record: None,
            keep_records: false,
            channels: ChannelOptions::default(),
            retry: RetryPolicy::default(),
        }
    }

    /// Checks that the configuration can run.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first problem.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::Config(why));
        if self.servers.is_empty() {
            return bad("no server address".to_owned());
        }
        if self.clients == 0 || self.clients > 65_535 {
            return bad("clients must be 1 to 65535".to_owned());
        }
        if self.duration.is_none() && self.ops.is_none() {
            return bad("give a duration or a number of ops".to_owned());
        }
        let id_ok = !self.run_id.is_empty()
            && self.run_id.len() <= 12
            && self
                .run_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !id_ok {
            return bad(format!(
                "run id {:?} must be 1 to 12 characters of [a-z0-9]",
                self.run_id
            ));
        }
        let (base, prefix) = self.pool;
        if !(8..=16).contains(&prefix) || u32::from(base) & !prefix_mask(prefix) != 0 {
            return bad(format!("pool {base}/{prefix} must be a /8 to /16 network address"));
        }
        let room = 1u32 << (16 - u32::from(prefix));
        if self.azs == 0 || self.azs > room.min(26) {
            return bad(format!("azs must be 1 to {} for a /{prefix} pool", room.min(26)));
        }
        let limits = self.limits()?;
        if self.enis_per_node == 0 || self.enis_per_node >= limits.max_enis {
            return bad(format!(
                "enis per node must be 1 to {} for {}",
                limits.max_enis.saturating_sub(1),
                self.instance_type
            ));
        }
        if self.ips_per_eni >= limits.ipv4_per_eni {
            return bad(format!(
                "ips per ENI must be at most {} for {}",
                limits.ipv4_per_eni.saturating_sub(1),
                self.instance_type
            ));
        }
        Ok(())
    }

    /// The instance type's limits, from the built-in table.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a type the table does not know.
    pub fn limits(&self) -> Result<NodeLimits> {
        let limits = ipam_core::limits::lookup(&self.instance_type)
            .ok_or_else(|| Error::Config(format!("unknown instance type {:?}", self.instance_type)))?;
        Ok(NodeLimits {
            max_enis: u32::from(limits.max_enis),
            ipv4_per_eni: u32::from(limits.ipv4_per_eni),
            branch_enis: u32::from(limits.branch_enis),
            trunking: limits.trunking,
        })
    }

    /// The AZ of client `client`, e.g. `us-east-1b`.
    pub fn az_of(&self, client: usize) -> String {
        az_name(&self.region, u32::try_from(client).unwrap_or(0) % self.azs.max(1))
    }

    /// The node name of client `client`.
    pub fn node_name(&self, client: usize) -> String {
        format!("lg-{}-{client}", self.run_id)
    }
}

/// A fresh run id: 10 hex digits from the clock and the process id.
pub fn new_run_id() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mixed = (nanos as u64) ^ (u64::from(std::process::id()) << 20);
    format!("{:010x}", fnv1a(&mixed.to_le_bytes()) & 0xff_ffff_ffff)
}

/// Parses `a.b.c.d/n`.
///
/// # Errors
///
/// [`Error::Config`] when it is not a CIDR.
pub fn parse_cidr(cidr: &str) -> Result<(Ipv4Addr, u8)> {
    let bad = || Error::Config(format!("{cidr:?} is not an IPv4 CIDR"));
    let (addr, len) = cidr.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if len > 32 {
        return Err(bad());
    }
    Ok((addr, len))
}

fn prefix_mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn az_name(region: &str, index: u32) -> String {
    let letter = char::from(b'a' + u8::try_from(index % 26).unwrap_or(0));
    format!("{region}{letter}")
}

/// The subnet config of AZ number `index`: the `index`-th /16 of the pool.
pub fn subnet_config(config: &LoadgenConfig, index: u32) -> SubnetConfig {
    let base = u32::from(config.pool.0).wrapping_add(index << 16);
    let cidr = format!("{}/16", Ipv4Addr::from(base));
    SubnetConfig {
        name: az_name(&config.region, index),
        subnet_id: format!("subnet-{:017x}", fnv1a(cidr.as_bytes()) & 0x0fff_ffff_ffff_ffff),
        subnet_cidr: cidr,
        availability_zone: az_name(&config.region, index),
        security_group_ids: Vec::new(),
        updated_at_unix_ms: 0,
    }
}

/// FNV-1a, 64 bits: stable ids from names.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordOp {
    /// A Bind.
    Bind,
    /// A Release.
    Release,
}

/// What became of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged: the server answered with success.
    Ok,
    /// Refused by the state machine (a definite answer: nothing was applied).
    Refused,
    /// Unknown: no answer, or an answer that does not say (timeout, leader lost). The write
    /// may have been applied, now or later.
    Unknown,
}

/// One line of the record file: the outcome of one Bind or Release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Bind or release.
    pub op: RecordOp,
    /// What became of it.
    pub outcome: Outcome,
    /// The request id of the last attempt.
    pub request_id: String,
    /// The node.
    pub node: String,
    /// The pod's namespace.
    pub pod_namespace: String,
    /// The pod's name.
    pub pod_name: String,
    /// The pod's uid.
    pub pod_uid: String,
    /// The attachment's container id.
    pub container_id: String,
    /// The lease id: the bound lease (bind ok) or the one named (release); 0 when unknown.
    pub lease_id: u64,
    /// The bound address (bind ok); empty otherwise.
    pub ip: String,
    /// For a release that succeeded: whether it released a live lease.
    pub released: Option<bool>,
    /// The error of a call that did not succeed.
    pub error: Option<String>,
    /// When the client saw the answer (client clock), ms since the Unix epoch.
    pub at_unix_ms: u64,
}

/// Where records go.
#[derive(Debug, Default)]
struct Recorder {
    file: Option<Mutex<BufWriter<File>>>,
    memory: Option<Mutex<Vec<Record>>>,
    write_errors: Mutex<u64>,
}

impl Recorder {
    fn new(config: &LoadgenConfig) -> Result<Self> {
        let file = match &config.record {
            Some(path) => Some(Mutex::new(BufWriter::new(
                File::options().create(true).append(true).open(path)?,
            ))),
            None => None,
        };
        Ok(Self {
            file,
            memory: config.keep_records.then(|| Mutex::new(Vec::new())),
            write_errors: Mutex::new(0),
        })
    }

    fn enabled(&self) -> bool {
        self.file.is_some() || self.memory.is_some()
    }

    fn push(&self, record: Record) {
        if let Some(file) = &self.file {
            let line = serde_json::to_string(&record).unwrap_or_default();
            let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
            if writeln!(file, "{line}").is_err() {
                *self.write_errors.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            }
        }
        if let Some(memory) = &self.memory {
            memory.lock().unwrap_or_else(|p| p.into_inner()).push(record);
        }
    }

    fn finish(self) -> Result<(Vec<Record>, u64)> {
        if let Some(file) = self.file {
            file.into_inner().unwrap_or_else(|p| p.into_inner()).flush()?;
        }
        let records = self
            .memory
            .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
            .unwrap_or_default();
        Ok((
            records,
            self.write_errors.into_inner().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct RunOutcome {
    /// The figures.
    pub report: Report,
    /// Every bind and release outcome, when `keep_records` was set.
    pub records: Vec<Record>,
}

/// Sets the cluster up (idempotently), runs the clients until the budget ends, and reports.
///
/// # Errors
///
/// A bad configuration, a failed setup step, or a record file that cannot be written.
pub async fn run(config: &LoadgenConfig) -> Result<RunOutcome> {
    let (_stop, never) = watch::channel(false);
    run_until(config, never).await
}

/// As [`run`], and stops early when `stop` turns true (a chaos test's signal).
///
/// # Errors
///
/// As [`run`].
pub async fn run_until(config: &LoadgenConfig, stop: watch::Receiver<bool>) -> Result<RunOutcome> {
    config.validate()?;
    let cluster = Arc::new(
        Cluster::new(config.servers.clone(), config.retry, config.channels).map_err(|s| Error::rpc("servers", s))?,
    );
    let recorder = Arc::new(Recorder::new(config)?);
    setup_cluster(&cluster, config).await?;

    // Every node first, all at once; the clock starts when all are ready.
    let mut setups = Vec::with_capacity(config.clients);
    for client in 0..config.clients {
        let cluster = Arc::clone(&cluster);
        let config = config.clone();
        setups.push(tokio::spawn(async move { setup_node(&cluster, &config, client).await }));
    }
    let mut nodes = Vec::with_capacity(config.clients);
    for setup in setups {
        let node = setup.await.map_err(|e| Error::Protocol {
            what: "node setup".to_owned(),
            why: e.to_string(),
        })??;
        nodes.push(node);
    }

    let (heartbeats_stop, heartbeats_signal) = watch::channel(false);
    let heartbeat_errors = Arc::new(Mutex::new(BTreeMap::new()));
    let mut heartbeats = Vec::with_capacity(nodes.len());
    for node in &nodes {
        heartbeats.push(tokio::spawn(heartbeat_loop(
            Arc::clone(&cluster),
            node.name.clone(),
            node.epoch,
            node.client,
            node.heartbeat_every,
            heartbeats_signal.clone(),
            Arc::clone(&heartbeat_errors),
        )));
    }

    let budget = Arc::new(Budget::new(config.duration, config.ops));
    let start = budget.start();
    let mut clients = Vec::with_capacity(nodes.len());
    for node in nodes {
        let cluster = Arc::clone(&cluster);
        let config = config.clone();
        let budget = Arc::clone(&budget);
        let recorder = Arc::clone(&recorder);
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            client_loop(&cluster, &config, node, &budget, &recorder, &stop).await
        }));
    }
    let mut total = Tally::default();
    for client in clients {
        match client.await {
            Ok(tally) => total.merge(&tally),
            Err(e) => bump(&mut total.errors, &format!("client:{e}"), 1),
        }
    }
    let elapsed = start.elapsed();

    let _ = heartbeats_stop.send(true);
    for heartbeat in heartbeats {
        let _ = heartbeat.await;
    }
    for (name, n) in heartbeat_errors.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        bump(&mut total.errors, name, *n);
    }
    let (hops, retries) = cluster.routing_counts();
    bump(&mut total.counters, "leader_hops", hops);
    bump(&mut total.counters, "retries", retries);

    let recorder = Arc::try_unwrap(recorder).map_err(|_| Error::Protocol {
        what: "recorder".to_owned(),
        why: "still shared after the run".to_owned(),
    })?;
    let (records, write_errors) = recorder.finish()?;
    bump(&mut total.errors, "record:write", write_errors);
    Ok(RunOutcome {
        report: total.report("loadgen", "bind-release", config.clients, elapsed),
        records,
    })
}

/// The pool, one subnet config per AZ, and the cooldown. Safe to run again and concurrently.
async fn setup_cluster(cluster: &Cluster, config: &LoadgenConfig) -> Result<()> {
    let (base, prefix) = config.pool;
    let cidr = format!("{base}/{prefix}");
    let request = CreatePoolRequest {
        request_id: format!("{}-pool", config.run_id),
        cidr: cidr.clone(),
    };
    let created = cluster
        .call(0, |ch| {
            let request = request.clone();
            async move { AdminServiceClient::new(ch).create_pool(request).await }
        })
        .await;
    match created {
        Ok(_) => {}
        // Another pool covers it (an earlier setup, another loadgen): fine.
        Err(status) if status.code() == Code::AlreadyExists => {}
        Err(status) => return Err(Error::rpc(format!("CreatePool {cidr}"), status)),
    }

    for index in 0..config.azs {
        let subnet = subnet_config(config, index);
        let name = subnet.name.clone();
        let request = UpsertSubnetConfigRequest {
            request_id: format!("{}-subnet-{index}", config.run_id),
            subnet_config: Some(subnet),
        };
        cluster
            .call(0, |ch| {
                let request = request.clone();
                async move { AdminServiceClient::new(ch).upsert_subnet_config(request).await }
            })
            .await
            .map_err(|s| Error::rpc(format!("UpsertSubnetConfig {name}"), s))?;
    }

    let settings = cluster
        .call(0, |ch| async move {
            AdminServiceClient::new(ch).get_settings(GetSettingsRequest {}).await
        })
        .await
        .map_err(|s| Error::rpc("GetSettings", s))?
        .settings
        .ok_or_else(|| Error::Protocol {
            what: "GetSettings".to_owned(),
            why: "no settings in the answer".to_owned(),
        })?;
    let cooldown_ms = u64::try_from(config.ip_cooldown.as_millis()).unwrap_or(u64::MAX);
    if settings.ip_cooldown_ms != cooldown_ms {
        let mut wanted = settings;
        wanted.ip_cooldown_ms = cooldown_ms;
        let request = UpdateSettingsRequest {
            request_id: format!("{}-settings", config.run_id),
            settings: Some(wanted),
        };
        cluster
            .call(0, |ch| {
                let request = request.clone();
                async move { AdminServiceClient::new(ch).update_settings(request).await }
            })
            .await
            .map_err(|s| Error::rpc("UpdateSettings", s))?;
    }
    Ok(())
}

/// One of a node's secondary ENIs.
#[derive(Debug, Clone, Copy)]
struct EniSlot {
    eni_ref: u64,
    /// Secondary addresses on it (planned and reported).
    ips: u32,
}

/// A client's node as the client knows it.
#[derive(Debug)]
struct NodeView {
    client: usize,
    name: String,
    epoch: u64,
    limits: NodeLimits,
    enis: Vec<EniSlot>,
    /// ENIs planned so far (names the next one's fake EC2 ids).
    planned: u32,
    /// PlanIps calls so far (names their request ids).
    ip_plans: u32,
    heartbeat_every: Duration,
}

impl NodeView {
    fn max_secondary_ips(&self) -> u32 {
        self.limits.ipv4_per_eni.saturating_sub(1)
    }
}

/// The client's node: registered, with `enis_per_node` attached secondary ENIs.
async fn setup_node(cluster: &Cluster, config: &LoadgenConfig, client: usize) -> Result<NodeView> {
    let name = config.node_name(client);
    let limits = config.limits()?;
    let run_bits = fnv1a(config.run_id.as_bytes()) & 0xff_ffff_ffff;
    let client_bits = u64::try_from(client).unwrap_or(0) & 0xffff;
    let az = config.az_of(client);
    let request = RegisterNodeRequest {
        node: name.clone(),
        request_id: format!("{}-{client}-reg", config.run_id),
        instance_id: format!("i-{:017x}", (run_bits << 16) | client_bits),
        instance_type: config.instance_type.clone(),
        availability_zone: az.clone(),
        limits: Some(limits),
        labels: [("ipam.loadgen/run".to_owned(), config.run_id.clone())].into(),
        subnet_config: az,
        pod_eni_enabled: false,
        primary_ip: Ipv4Addr::from(0x0a00_0000 | (u32::try_from(client_bits).unwrap_or(0) << 8) | 10).to_string(),
    };
    let registered = cluster
        .call(client, |ch| {
            let request = request.clone();
            async move { AgentServiceClient::new(ch).register_node(request).await }
        })
        .await
        .map_err(|s| Error::rpc(format!("RegisterNode {name}"), s))?;
    let ttl = Duration::from_millis(registered.heartbeat_ttl_ms.max(300));
    let mut node = NodeView {
        client,
        name,
        epoch: registered.epoch,
        limits,
        enis: Vec::new(),
        planned: 0,
        ip_plans: 0,
        heartbeat_every: ttl / 3,
    };
    let ips = if config.ips_per_eni == 0 {
        node.max_secondary_ips()
    } else {
        config.ips_per_eni
    };
    for _ in 0..config.enis_per_node {
        add_eni(cluster, config, &mut node, ips)
            .await?
            .ok_or_else(|| Error::Protocol {
                what: format!("PlanEni {}", node.name),
                why: "the node or subnet is full at setup".to_owned(),
            })?;
    }
    Ok(node)
}

/// Plans and "attaches" one more secondary ENI with `ips` secondary addresses (there is no EC2
/// here: the ids are made up). `None` when the node or the subnet has no room.
async fn add_eni(cluster: &Cluster, config: &LoadgenConfig, node: &mut NodeView, ips: u32) -> Result<Option<u64>> {
    node.planned += 1;
    let seq = node.planned;
    let plan = PlanEniRequest {
        node: node.name.clone(),
        epoch: node.epoch,
        request_id: format!("{}-{}-eni{seq}", config.run_id, node.client),
        kind: EniKind::Secondary.into(),
        ip_count: ips,
    };
    let planned = match cluster
        .call(node.client, |ch| {
            let plan = plan.clone();
            async move { AgentServiceClient::new(ch).plan_eni(plan).await }
        })
        .await
    {
        Ok(planned) => planned,
        Err(status) if status.code() == Code::ResourceExhausted => return Ok(None),
        Err(status) => return Err(Error::rpc(format!("PlanEni {}", node.name), status)),
    };
    let run_bits = fnv1a(config.run_id.as_bytes()) & 0xff_ffff_ffff;
    let eni_bits = (run_bits << 24) | ((u64::try_from(node.client).unwrap_or(0) & 0xffff) << 8) | u64::from(seq & 0xff);
    let mac_bits = fnv1a(&eni_bits.to_le_bytes()).to_be_bytes();
    let report = ReportEniAttachedRequest {
        node: node.name.clone(),
        epoch: node.epoch,
        request_id: format!("{}-{}-att{seq}", config.run_id, node.client),
        eni_ref: planned.eni_ref,
        eni_id: format!("eni-{eni_bits:017x}"),
        mac: format!(
            "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            mac_bits[0], mac_bits[1], mac_bits[2], mac_bits[3], mac_bits[4]
        ),
        attachment_id: format!("eni-attach-{eni_bits:017x}"),
    };
    cluster
        .call(node.client, |ch| {
            let report = report.clone();
            async move { AgentServiceClient::new(ch).report_eni_attached(report).await }
        })
        .await
        .map_err(|s| Error::rpc(format!("ReportEniAttached {}", node.name), s))?;
    node.enis.push(EniSlot {
        eni_ref: planned.eni_ref,
        ips: u32::try_from(planned.secondary_ips.len()).unwrap_or(u32::MAX),
    });
    Ok(Some(planned.eni_ref))
}

/// Gives the node more warm addresses: PlanIps on an ENI with free slots, else a new ENI.
/// Returns the kind of growth (`planned_ips`, `planned_enis`), or `None` when the node can grow
/// no more (its addresses are cooling: wait).
async fn grow(cluster: &Cluster, config: &LoadgenConfig, node: &mut NodeView) -> Result<Option<&'static str>> {
    let max = node.max_secondary_ips();
    // Each pass fills one ENI or finds it full: bounded by the ENI count.
    for index in 0..node.enis.len() {
        let Some(eni) = node.enis.get(index).copied() else {
            break;
        };
        if eni.ips >= max {
            continue;
        }
        node.ip_plans += 1;
        let plan = PlanIpsRequest {
            node: node.name.clone(),
            epoch: node.epoch,
            request_id: format!("{}-{}-ips{}", config.run_id, node.client, node.ip_plans),
            eni_ref: eni.eni_ref,
            count: max - eni.ips,
        };
        let planned = match cluster
            .call(node.client, |ch| {
                let plan = plan.clone();
                async move { AgentServiceClient::new(ch).plan_ips(plan).await }
            })
            .await
        {
            Ok(planned) => planned,
            Err(status) if status.code() == Code::ResourceExhausted => {
                node.enis[index].ips = max;
                continue;
            }
            Err(status) => return Err(Error::rpc(format!("PlanIps {}", node.name), status)),
        };
        if planned.ips.is_empty() {
            node.enis[index].ips = max;
            continue;
        }
        let report = ReportIpsAssignedRequest {
            node: node.name.clone(),
            epoch: node.epoch,
            request_id: format!("{}-{}-ipsok{}", config.run_id, node.client, node.ip_plans),
            eni_ref: eni.eni_ref,
            intent_token: planned.intent_token.clone(),
            ips: planned.ips.clone(),
        };
        cluster
            .call(node.client, |ch| {
                let report = report.clone();
                async move { AgentServiceClient::new(ch).report_ips_assigned(report).await }
            })
            .await
            .map_err(|s| Error::rpc(format!("ReportIpsAssigned {}", node.name), s))?;
        node.enis[index].ips = node.enis[index]
            .ips
            .saturating_add(u32::try_from(planned.ips.len()).unwrap_or(u32::MAX));
        return Ok(Some("planned_ips"));
    }
    let pod_enis = node.limits.max_enis.saturating_sub(1);
    if u32::try_from(node.enis.len()).unwrap_or(u32::MAX) < pod_enis
        && add_eni(cluster, config, node, max).await?.is_some()
    {
        return Ok(Some("planned_enis"));
    }
    Ok(None)
}

/// Heartbeats every `every` until `stop` (at most a day of them).
async fn heartbeat_loop(
    cluster: Arc<Cluster>,
    node: String,
    epoch: u64,
    client: usize,
    every: Duration,
    mut stop: watch::Receiver<bool>,
    errors: Arc<Mutex<BTreeMap<String, u64>>>,
) {
    let every = every.max(Duration::from_millis(100));
    let beats = (Duration::from_secs(86_400).as_millis() / every.as_millis().max(1)).max(1);
    for beat in 0..beats {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let request = HeartbeatRequest {
            node: node.clone(),
            epoch,
            request_id: format!("{node}-hb{beat}"),
        };
        let answer = cluster
            .call(client, |ch| {
                let request = request.clone();
                async move { AgentServiceClient::new(ch).heartbeat(request).await }
            })
            .await;
        if let Err(status) = answer {
            let mut errors = errors.lock().unwrap_or_else(|p| p.into_inner());
            bump(&mut errors, &format!("heartbeat:{}", error_name(&status)), 1);
        }
    }
}

/// The identity of one iteration's pod.
struct PodIdent {
    namespace: String,
    name: String,
    uid: String,
    container_id: String,
}

impl PodIdent {
    fn new(run_id: &str, client: usize, iteration: u64) -> Self {
        let run_bits = fnv1a(run_id.as_bytes());
        Self {
            namespace: "loadgen".to_owned(),
            name: format!("lg-{run_id}-{client}-{iteration}"),
            uid: format!("{run_id}-{client}-{iteration}"),
            container_id: format!("{run_bits:016x}{:016x}{iteration:016x}{:016x}", client, 0u64),
        }
    }

    fn attachment(&self) -> Attachment {
        Attachment {
            container_id: self.container_id.clone(),
            ifname: "eth0".to_owned(),
        }
    }

    fn record(&self, op: RecordOp, outcome: Outcome, request_id: &str, node: &str) -> Record {
        Record {
            op,
            outcome,
            request_id: request_id.to_owned(),
            node: node.to_owned(),
            pod_namespace: self.namespace.clone(),
            pod_name: self.name.clone(),
            pod_uid: self.uid.clone(),
            container_id: self.container_id.clone(),
            lease_id: 0,
            ip: String::new(),
            released: None,
            error: None,
            at_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

/// The outcome class of a failed call.
fn failed(status: &Status) -> Outcome {
    if outcome_is_unknown(status.code()) {
        Outcome::Unknown
    } else {
        Outcome::Refused
    }
}

/// A pause after a failed op, so that a client facing a dead cluster does not spin.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

async fn client_loop(
    cluster: &Cluster,
    config: &LoadgenConfig,
    mut node: NodeView,
    budget: &Budget,
    recorder: &Recorder,
    stop: &watch::Receiver<bool>,
) -> Tally {
    let mut tally = Tally::default();
    let mut iteration: u64 = 0;
    while budget.claim() && !*stop.borrow() {
        iteration += 1;
        let pod = PodIdent::new(&config.run_id, node.client, iteration);
        let started = Instant::now();
        let (outcome, lease_id) = bind(cluster, config, &mut node, &pod, iteration, recorder, &mut tally).await;
        if outcome == Outcome::Refused {
            // Nothing was bound: nothing to release.
            tokio::time::sleep(ERROR_PAUSE).await;
            continue;
        }
        // Bound, or unknown: a bind of unknown outcome may have left a lease, which the
        // release by attachment frees.
        let release_started = Instant::now();
        let released = release(cluster, config, &node, &pod, lease_id, iteration, recorder, &mut tally).await;
        if outcome == Outcome::Ok && released {
            tally.latencies.record("release", release_started.elapsed());
            tally.latencies.record("pair", started.elapsed());
            tally.ops += 1;
        } else {
            tokio::time::sleep(ERROR_PAUSE).await;
        }
    }
    tally
}

/// Binds the iteration's pod: the outcome, and the lease id when acknowledged (else 0).
async fn bind(
    cluster: &Cluster,
    config: &LoadgenConfig,
    node: &mut NodeView,
    pod: &PodIdent,
    iteration: u64,
    recorder: &Recorder,
    tally: &mut Tally,
) -> (Outcome, u64) {
    let started = Instant::now();
    let mut waits = 0;
    // One attempt per growth or wait: bounded by the ENI limit and max_warm_waits.
    let growths = node.limits.max_enis.saturating_mul(node.max_secondary_ips());
    let attempts = config.max_warm_waits.saturating_add(growths).saturating_add(2);
    for attempt in 0..attempts {
        let request = BindRequest {
            node: node.name.clone(),
            epoch: node.epoch,
            // A new id after a refusal: the server remembers the refusal under the old one.
            request_id: format!("{}-{}-{iteration}-b{attempt}", config.run_id, node.client),
            pod: Some(PodRef {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                uid: pod.uid.clone(),
            }),
            pod_labels: Default::default(),
            service_account: String::new(),
            service_account_labels: Default::default(),
            attachment: Some(pod.attachment()),
        };
        let answer = cluster
            .call(node.client, |ch| {
                let request = request.clone();
                async move { AgentServiceClient::new(ch).bind(request).await }
            })
            .await;
        let status = match answer {
            Ok(bound) => {
                tally.latencies.record("bind", started.elapsed());
                let lease = bound.lease.unwrap_or_default();
                if recorder.enabled() {
                    let mut record = pod.record(RecordOp::Bind, Outcome::Ok, &request.request_id, &node.name);
                    record.lease_id = lease.lease_id;
                    record.ip = lease.ip;
                    recorder.push(record);
                }
                if lease.lease_id == 0 {
                    bump(&mut tally.errors, "bind:no_lease_in_answer", 1);
                    return (Outcome::Unknown, 0);
                }
                return (Outcome::Ok, lease.lease_id);
            }
            Err(status) => status,
        };
        if status.code() == Code::ResourceExhausted && exhausted_what(&status) == Some("node-warm") {
            match grow(cluster, config, node).await {
                Ok(Some(kind)) => {
                    bump(&mut tally.counters, kind, 1);
                    continue;
                }
                Ok(None) if waits < config.max_warm_waits => {
                    waits += 1;
                    bump(&mut tally.counters, "warm_waits", 1);
                    tokio::time::sleep(config.warm_wait).await;
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    bump(&mut tally.errors, &format!("grow:{}", grow_error_name(&e)), 1);
                }
            }
        }
        bump(&mut tally.errors, &format!("bind:{}", error_name(&status)), 1);
        let outcome = failed(&status);
        if recorder.enabled() {
            let mut record = pod.record(RecordOp::Bind, outcome, &request.request_id, &node.name);
            record.error = Some(status.to_string());
            recorder.push(record);
        }
        return (outcome, 0);
    }
    // Every attempt was refused for want of a warm address.
    bump(&mut tally.errors, "bind:gave_up", 1);
    (Outcome::Refused, 0)
}

fn grow_error_name(error: &Error) -> String {
    match error {
        Error::Rpc { status, .. } => error_name(status),
        other => other.to_string(),
    }
}

/// Releases the iteration's lease: by id and attachment when the bind was acknowledged, by
/// attachment alone otherwise (a bind of unknown outcome may have left a lease). True when
/// the release was acknowledged.
#[allow(clippy::too_many_arguments)]
async fn release(
    cluster: &Cluster,
    config: &LoadgenConfig,
    node: &NodeView,
    pod: &PodIdent,
    lease_id: u64,
    iteration: u64,
    recorder: &Recorder,
    tally: &mut Tally,
) -> bool {
    let request = ReleaseRequest {
        node: node.name.clone(),
        epoch: node.epoch,
        request_id: format!("{}-{}-{iteration}-r", config.run_id, node.client),
        lease_id,
        attachment: Some(pod.attachment()),
        reason: ReleaseReason::CniDel.into(),
    };
    let answer = cluster
        .call(node.client, |ch| {
            let request = request.clone();
            async move { AgentServiceClient::new(ch).release(request).await }
        })
        .await;
    let (outcome, released, error) = match &answer {
        Ok(done) => (Outcome::Ok, Some(done.released), None),
        Err(status) => {
            bump(&mut tally.errors, &format!("release:{}", error_name(status)), 1);
            (failed(status), None, Some(status.to_string()))
        }
    };
    if lease_id != 0 && released == Some(false) {
        // Our own acknowledged lease was not live any more: someone else released it.
        bump(&mut tally.errors, "release:not_live", 1);
    }
    if recorder.enabled() {
        let mut record = pod.record(RecordOp::Release, outcome, &request.request_id, &node.name);
        record.lease_id = lease_id;
        record.released = released;
        record.error = error;
        recorder.push(record);
    }
    answer.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LoadgenConfig {
        let mut config = LoadgenConfig::new(vec!["127.0.0.1:7400".to_owned()]);
        config.run_id = "t1".to_owned();
        config
    }

    #[test]
    fn the_defaults_are_valid() {
        let config = config();
        config.validate().expect("test value");
        let limits = config.limits().expect("test value");
        assert_eq!((limits.max_enis, limits.ipv4_per_eni), (15, 50));
    }

    #[test]
    fn bad_configurations_are_refused() {
        type Spoil = Box<dyn Fn(&mut LoadgenConfig)>;
        let cases: Vec<Spoil> = vec![
            Box::new(|c| c.servers.clear()),
            Box::new(|c| c.clients = 0),
            Box::new(|c| {
                c.duration = None;
                c.ops = None;
            }),
            Box::new(|c| c.run_id = "Bad_Id".to_owned()),
            Box::new(|c| c.run_id = "a".repeat(13)),
            Box::new(|c| c.pool = (Ipv4Addr::new(100, 64, 0, 1), 10)),
            Box::new(|c| c.pool = (Ipv4Addr::new(100, 64, 0, 0), 24)),
            Box::new(|c| c.azs = 0),
            Box::new(|c| {
                c.pool = (Ipv4Addr::new(100, 64, 0, 0), 16);
                c.azs = 2;
            }),
            Box::new(|c| c.instance_type = "x9.huge".to_owned()),
            Box::new(|c| c.enis_per_node = 15),
            Box::new(|c| c.ips_per_eni = 50),
        ];
        for (i, case) in cases.iter().enumerate() {
            let mut c = config();
            case(&mut c);
            assert!(matches!(c.validate(), Err(Error::Config(_))), "case {i}");
        }
    }

    #[test]
    fn each_az_gets_its_own_slash_16_of_the_pool() {
        let config = config();
        let a = subnet_config(&config, 0);
        let c = subnet_config(&config, 2);
        assert_eq!(
            (a.name.as_str(), a.subnet_cidr.as_str()),
            ("us-east-1a", "100.64.0.0/16")
        );
        assert_eq!(
            (c.name.as_str(), c.subnet_cidr.as_str()),
            ("us-east-1c", "100.66.0.0/16")
        );
        assert_eq!(a.availability_zone, a.name);
        assert_ne!(a.subnet_id, c.subnet_id);
        // EC2's form: subnet- and 17 hex digits; the same every run, so setups are idempotent.
        assert_eq!(a.subnet_id.len(), "subnet-".len() + 17);
        assert_eq!(a.subnet_id, subnet_config(&config, 0).subnet_id);
        assert_eq!(config.az_of(4), "us-east-1b");
    }

    #[test]
    fn cidrs_parse() {
        assert_eq!(
            parse_cidr("100.64.0.0/10").expect("test value"),
            (Ipv4Addr::new(100, 64, 0, 0), 10)
        );
        for bad in ["100.64.0.0", "100.64.0.0/33", "x/10", "100.64.0/10"] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pod_identities_are_unique_and_well_formed() {
        let a = PodIdent::new("t1", 3, 7);
        let b = PodIdent::new("t1", 3, 8);
        let c = PodIdent::new("t1", 4, 7);
        assert_eq!(a.container_id.len(), 64);
        assert_ne!(a.container_id, b.container_id);
        assert_ne!(a.container_id, c.container_id);
        assert_ne!(a.uid, c.uid);
        assert_eq!(a.attachment().ifname, "eth0");
        let id = new_run_id();
        assert_eq!(id.len(), 10);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn records_round_trip_as_json_lines() {
        let pod = PodIdent::new("t1", 0, 1);
        let mut record = pod.record(RecordOp::Bind, Outcome::Unknown, "t1-0-1-b0", "lg-t1-0");
        record.error = Some("deadline".to_owned());
        let line = serde_json::to_string(&record).expect("test value");
        assert!(line.contains(r#""op":"bind","outcome":"unknown""#), "{line}");
        let back: Record = serde_json::from_str(&line).expect("test value");
        assert_eq!(back, record);
    }

    #[test]
    fn refusals_and_unknowns_are_told_apart() {
        assert_eq!(failed(&Status::failed_precondition("stale epoch")), Outcome::Refused);
        assert_eq!(failed(&Status::resource_exhausted("no warm")), Outcome::Refused);
        assert_eq!(failed(&Status::unavailable("no leader")), Outcome::Unknown);
        assert_eq!(failed(&Status::cancelled("timeout")), Outcome::Unknown);
    }
}
