//! `ipamctl`: the operator's command line for an ipam-server cluster.
//!
//! A gRPC client of `ipam.v1.AdminService` and `ipam.v1.AuditService` that follows the Raft
//! leader (see [`client`]).
//!
//! ```text
//!   main ── clap ──▶ cluster::*  (membership)           ──┐
//!                    apply::* ◀── manifest (parse, plan)   ├──▶ client::Client ──▶ AdminService
//!                    query::* ──▶ render / output          │      (leader following, retries)
//!                    audit::* ──▶ render / output          ──┘                 ──▶ AuditService
//!                      ▲ time_flag (--at, --since, --until)
//! ```
//!
//! ```text
//!   ipamctl cluster init                                   # a single replica leads itself
//!   ipamctl -s 10.0.0.1:7400,10.0.0.2:7400 cluster status --leader
//!   ipamctl apply -f pool.yaml -f eniconfigs.yaml -f sgp.yaml
//!   kubectl get eniconfigs -o yaml | ipamctl apply -f -
//!   ipamctl get leases --node ip-10-0-1-2.us-west-2.compute.internal -o wide
//!   ipamctl settings set --ip-cooldown 5s
//!   ipamctl who-had 100.64.3.48 --at 2026-11-24T14:02:00Z
//!   ipamctl history pod default/web-1 --since 2h -o json
//!   ipamctl watch --from 1 --filter node=ip-10-0-1-2.us-west-2.compute.internal
//!   ipamctl export --since 7d > events.jsonl
//! ```
//!
//! Exit codes: 0 success; 1 the server refused or could not be reached; 2 bad usage or an invalid
//! manifest (clap's own usage errors are 2 as well).

mod apply;
mod audit;
mod client;
mod cluster;
mod manifest;
mod output;
mod query;
mod render;
mod time_flag;

use std::io::ErrorKind;
use std::io::Read;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use clap::Parser;
use clap::Subcommand;
use clap::ValueEnum;
use ipam_proto::ipam::v1 as pb;

use crate::audit::Consistency;
use crate::audit::HistoryQuery;
use crate::audit::Key;
use crate::audit::KeyKind;
use crate::audit::Range;
use crate::audit::WatchQuery;
use crate::client::CallError;
use crate::client::Client;
use crate::client::ClientConfig;
use crate::client::RetryPolicy;
use crate::client::new_request_id;
use crate::cluster::Member;
use crate::manifest::ManifestError;
use crate::output::Format;
use crate::query::SettingsChange;

/// The operator's command line for an ipam-server cluster (EKS custom networking IPAM).
#[derive(Debug, Parser)]
#[command(name = "ipamctl", version)]
struct Cli {
    /// Server addresses (HOST:PORT), comma-separated, tried in order; the Raft leader is followed.
    #[arg(
        long,
        short = 's',
        global = true,
        env = "IPAMCTL_SERVER",
        value_delimiter = ',',
        default_value = "127.0.0.1:7400",
        value_name = "HOST:PORT"
    )]
    server: Vec<String>,
    /// Deadline of each attempt of a call (e.g. 10s, 1m).
    #[arg(long, global = true, env = "IPAMCTL_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// How many times a call waits and tries again when no leader is known or no server answers.
    #[arg(long, global = true, env = "IPAMCTL_RETRIES", default_value_t = 5)]
    retries: u32,
    /// The operator name recorded as the actor of changes (default: the local user name).
    #[arg(long, global = true, env = "IPAMCTL_OPERATOR")]
    operator: Option<String>,
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the Raft cluster: init, add-learner, promote, remove, status.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Create or update pools, ENIConfigs and SecurityGroupPolicies from manifests.
    Apply(ApplyArgs),
    /// Delete the ENIConfigs and SecurityGroupPolicies named in manifests.
    Delete(DeleteArgs),
    /// List pools, subnets, nodes, leases, ENIs or security group policies.
    Get(GetArgs),
    /// Address counts per subnet config.
    Stats(OutputArgs),
    /// Show or change the cluster-wide settings.
    #[command(subcommand)]
    Settings(SettingsCommand),
    /// Remove a node: release its leases and forget its ENIs.
    RemoveNode(RemoveNodeArgs),
    /// Release a bound lease by id (for a pod whose node cannot run CNI DEL).
    ReleaseLease(ReleaseLeaseArgs),
    /// Return a quarantined address to its subnet's free list.
    Unquarantine(UnquarantineArgs),
    /// Who held an address at an instant: pod, node, ENI, lease (from the event ledger).
    WhoHad(WhoHadArgs),
    /// The events that touched an address, a pod, a node, an ENI or a security group.
    History(HistoryArgs),
    /// Print events as they happen, until interrupted.
    Watch(WatchArgs),
    /// Write the ledger's events as JSON lines on stdout.
    Export(ExportArgs),
}

/// `-o`.
#[derive(Debug, Args)]
struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table, env = "IPAMCTL_OUTPUT")]
    output: Format,
}

/// `cluster ...`.
#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Initialize a new cluster on the replica called (once).
    Init {
        /// An initial voter, ID=HOST:PORT; repeat for each. None: the called replica alone.
        #[arg(long = "member", value_name = "ID=HOST:PORT", value_parser = cluster::parse_member)]
        members: Vec<Member>,
        /// Output format.
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Add a replica as a learner (it receives the log but does not vote).
    AddLearner {
        /// The new replica's Raft node id (at least 1).
        id: u64,
        /// The new replica's advertised gRPC address.
        #[arg(value_parser = cluster::parse_address)]
        address: String,
        /// Answer at once instead of when the learner has caught up.
        #[arg(long)]
        no_wait: bool,
        /// Output format.
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Make members voters, in addition to the current voters.
    Promote {
        /// The Raft node ids to promote.
        #[arg(required = true)]
        ids: Vec<u64>,
        /// Output format.
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Remove members from the cluster.
    Remove {
        /// The Raft node ids to remove.
        #[arg(required = true)]
        ids: Vec<u64>,
        /// Output format.
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show the Raft view of the replica called: members, leader, term, log indexes.
    Status {
        /// Ask the leader instead (only the leader knows each member's matched index).
        #[arg(long)]
        leader: bool,
        /// Output format.
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// `apply`.
#[derive(Debug, Args)]
struct ApplyArgs {
    /// A manifest file (YAML, `---`-separated, or JSON), a directory of them, or - for stdin.
    #[arg(short = 'f', long = "filename", required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Namespace of a SecurityGroupPolicy without metadata.namespace.
    #[arg(short = 'n', long, env = "IPAMCTL_NAMESPACE", default_value = manifest::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Check and compare with the server, but change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// `delete`.
#[derive(Debug, Args)]
struct DeleteArgs {
    /// A manifest file, a directory of them, or - for stdin.
    #[arg(short = 'f', long = "filename", required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Namespace of a SecurityGroupPolicy without metadata.namespace.
    #[arg(short = 'n', long, env = "IPAMCTL_NAMESPACE", default_value = manifest::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Treat objects the server does not have as deleted.
    #[arg(long)]
    ignore_not_found: bool,
}

/// `get`.
#[derive(Debug, Args)]
struct GetArgs {
    /// What to list.
    #[command(subcommand)]
    resource: Resource,
}

/// What `get` lists.
#[derive(Debug, Subcommand)]
enum Resource {
    /// Pools (secondary CIDRs).
    #[command(alias = "pool")]
    Pools(OutputArgs),
    /// Subnet configs (ENIConfigs with their subnet's CIDR and zone).
    #[command(aliases = ["subnet", "subnet-configs", "eniconfigs", "eniconfig"])]
    Subnets(OutputArgs),
    /// Nodes.
    #[command(alias = "node")]
    Nodes(NodesArgs),
    /// Bound and cooling leases.
    #[command(alias = "lease")]
    Leases(LeasesArgs),
    /// ENIs managed by the server.
    #[command(alias = "eni")]
    Enis(EnisArgs),
    /// Security group policies.
    #[command(aliases = ["sg-policy", "sgp", "securitygrouppolicies"])]
    SgPolicies(SgPoliciesArgs),
}

/// `get nodes`.
#[derive(Debug, Args)]
struct NodesArgs {
    /// Only nodes in this state.
    #[arg(long, value_enum)]
    state: Option<NodeStateArg>,
    /// Only nodes that selected this subnet config.
    #[arg(long)]
    subnet_config: Option<String>,
    /// Output format.
    #[command(flatten)]
    output: OutputArgs,
}

/// `get leases`.
#[derive(Debug, Args)]
struct LeasesArgs {
    /// Only leases on this node.
    #[arg(long)]
    node: Option<String>,
    /// Only leases in this EC2 subnet.
    #[arg(long)]
    subnet_id: Option<String>,
    /// Only leases in this state.
    #[arg(long, value_enum)]
    state: Option<LeaseStateArg>,
    /// Output format.
    #[command(flatten)]
    output: OutputArgs,
}

/// `get enis`.
#[derive(Debug, Args)]
struct EnisArgs {
    /// Only ENIs of this node.
    #[arg(long)]
    node: Option<String>,
    /// Only ENIs in this EC2 subnet.
    #[arg(long)]
    subnet_id: Option<String>,
    /// Only ENIs of this kind.
    #[arg(long, value_enum)]
    kind: Option<EniKindArg>,
    /// Only ENIs in this state.
    #[arg(long, value_enum)]
    state: Option<EniStateArg>,
    /// Output format.
    #[command(flatten)]
    output: OutputArgs,
}

/// `get sg-policies`.
#[derive(Debug, Args)]
struct SgPoliciesArgs {
    /// Only policies of this namespace (default: all).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Output format.
    #[command(flatten)]
    output: OutputArgs,
}

/// A node state filter.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum NodeStateArg {
    /// Heartbeating.
    Active,
    /// Expired.
    Expired,
}

/// A lease state filter.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LeaseStateArg {
    /// Held by a pod.
    Bound,
    /// Released, in its cooldown.
    Cooling,
}

/// An ENI kind filter.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum EniKindArg {
    /// Shared secondary ENIs.
    Secondary,
    /// Trunk ENIs.
    Trunk,
    /// Branch ENIs (security groups for pods).
    Branch,
}

/// An ENI state filter.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum EniStateArg {
    /// Planned, awaiting EC2.
    Planned,
    /// Attached.
    Attached,
    /// Being detached.
    Detaching,
}

/// `settings ...`.
#[derive(Debug, Subcommand)]
enum SettingsCommand {
    /// Show the settings in force.
    Get(OutputArgs),
    /// Change some settings (the others keep their value).
    Set(SetArgs),
}

/// `settings set`.
#[derive(Debug, Args)]
struct SetArgs {
    /// A node whose agent has not heartbeated for this long expires (e.g. 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    heartbeat_ttl: Option<Duration>,
    /// A released shared-ENI address is not bound again before this (e.g. 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    ip_cooldown: Option<Duration>,
    /// A released branch ENI is not bound again before this (at least 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    branch_cooldown: Option<Duration>,
    /// Prefix of EC2 ClientTokens, unique per cluster.
    #[arg(long)]
    token_prefix: Option<String>,
    /// Replies remembered per node for retried request ids.
    #[arg(long)]
    recent_requests_per_node: Option<u32>,
    /// Output format.
    #[command(flatten)]
    output: OutputArgs,
}

/// `remove-node`.
#[derive(Debug, Args)]
struct RemoveNodeArgs {
    /// The node name.
    name: String,
    /// Remove it even if its agent is active.
    #[arg(long)]
    force: bool,
}

/// `release-lease`.
#[derive(Debug, Args)]
struct ReleaseLeaseArgs {
    /// The lease id (see `ipamctl get leases`).
    lease_id: u64,
}

/// `unquarantine`.
#[derive(Debug, Args)]
struct UnquarantineArgs {
    /// The quarantined address.
    ip: Ipv4Addr,
}

/// `--consistency`.
#[derive(Debug, Args)]
struct ConsistencyArgs {
    /// How fresh the answer must be: linearizable asks the leader; stale lets any replica answer
    /// from what it has applied.
    #[arg(long, value_enum, default_value_t = Consistency::Linearizable, env = "IPAMCTL_CONSISTENCY")]
    consistency: Consistency,
}

/// `--since` and `--until`.
#[derive(Debug, Args)]
struct RangeArgs {
    /// Only events at or after this time: RFC 3339 (2026-11-24T14:02:00Z, with an offset or a
    /// fraction) or a duration ago (90s, 15m, 2h, 7d, 1w, 1h30m), or now.
    #[arg(long, value_name = "TIME", value_parser = time_flag::parse)]
    since: Option<i64>,
    /// Only events before this time (same forms as --since).
    #[arg(long, value_name = "TIME", value_parser = time_flag::parse)]
    until: Option<i64>,
}

impl RangeArgs {
    /// The range; `--until` before `--since` is bad usage.
    fn range(&self) -> Result<Range, Exit> {
        Range::new(self.since, self.until).map_err(Exit::Usage)
    }
}

/// `who-had`.
#[derive(Debug, Args)]
struct WhoHadArgs {
    /// The IPv4 address.
    ip: String,
    /// The instant asked about (RFC 3339, a duration ago such as 2h, or now; default: now).
    #[arg(long, value_name = "TIME", value_parser = time_flag::parse)]
    at: Option<i64>,
    /// Consistency.
    #[command(flatten)]
    consistency: ConsistencyArgs,
    /// Output format.
    #[command(flatten)]
    output: OutputArgs,
}

/// `history`.
#[derive(Debug, Args)]
struct HistoryArgs {
    /// What KEY is: ip, pod (NAMESPACE/NAME), pod-uid, node, eni or sg.
    #[arg(value_enum)]
    kind: KeyKind,
    /// The address, NAMESPACE/NAME, pod UID, node name, ENI id or security group id.
    key: String,
    /// The time range.
    #[command(flatten)]
    range: RangeArgs,
    /// The most events to print, page after page; 0 for all.
    #[arg(long, default_value_t = 100)]
    limit: u64,
    /// Continue where an earlier `history` stopped (it prints the token on stderr).
    #[arg(long, value_name = "TOKEN")]
    page_token: Option<String>,
    /// Consistency.
    #[command(flatten)]
    consistency: ConsistencyArgs,
    /// Output format (json: one event per line).
    #[command(flatten)]
    output: OutputArgs,
}

/// `watch`.
#[derive(Debug, Args)]
struct WatchArgs {
    /// The first event (seq) to print; 0 for only the events from now on.
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    from: u64,
    /// Only events of this kind (e.g. IpBound, IpReleased, EniAttached); repeat for more.
    #[arg(long = "kind", value_name = "KIND")]
    kinds: Vec<String>,
    /// Only events touching this key: ip=ADDRESS, pod=NAMESPACE/NAME, pod-uid=UID, node=NAME,
    /// eni=ENI-ID or sg=GROUP-ID.
    #[arg(long, value_name = "KIND=KEY", value_parser = audit::parse_filter)]
    filter: Option<Key>,
    /// Output format (json: one event per line).
    #[command(flatten)]
    output: OutputArgs,
}

/// `export`.
#[derive(Debug, Args)]
struct ExportArgs {
    /// The time range (default: every event the ledger holds).
    #[command(flatten)]
    range: RangeArgs,
}

/// Why ipamctl stops short of success, and with which exit code.
#[derive(Debug)]
pub enum Exit {
    /// Bad usage found after clap (exit 2).
    Usage(String),
    /// Invalid manifests (exit 2).
    Manifest(Vec<ManifestError>),
    /// A call failed (exit 1).
    Call(CallError),
    /// The server answered something ipamctl cannot use (exit 1).
    Protocol(String),
    /// Errors already printed (exit 1).
    Reported,
    /// Writing the output failed (exit 1; silent for a closed pipe).
    Output(std::io::Error),
}

impl Exit {
    /// An output error.
    pub fn output(error: std::io::Error) -> Self {
        Self::Output(error)
    }

    /// The process exit code.
    fn code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::Manifest(_) => 2,
            Self::Call(_) | Self::Protocol(_) | Self::Reported | Self::Output(_) => 1,
        }
    }

    /// Prints the error to stderr.
    fn report(&self) {
        match self {
            Self::Usage(why) | Self::Protocol(why) => eprintln!("error: {why}"),
            Self::Manifest(errors) => {
                for error in errors {
                    eprintln!("error: {error}");
                }
                eprintln!("error: {} found; nothing was sent", plural(errors.len(), "problem"));
            }
            Self::Call(error) => eprintln!("error: {error}"),
            Self::Reported => {}
            Self::Output(error) if error.kind() == ErrorKind::BrokenPipe => {}
            Self::Output(error) => eprintln!("error: writing the output: {error}"),
        }
    }
}

/// `1 problem`, `2 problems`.
fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let operator = cli
        .operator
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .unwrap_or_default();
    let servers: Vec<String> = cli
        .server
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if servers.is_empty() {
        eprintln!("error: --server is empty; give HOST:PORT");
        return ExitCode::from(2);
    }
    let mut client = Client::new(ClientConfig {
        servers,
        timeout: cli.timeout,
        connect_timeout: cli.timeout.min(Duration::from_secs(3)),
        operator,
        retry: RetryPolicy {
            max_retries: cli.retries,
            ..RetryPolicy::default()
        },
    });
    let mut stdout = std::io::stdout().lock();
    match runtime.block_on(run(cli.command, &mut client, &mut stdout)) {
        Ok(()) => match stdout.flush() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                let exit = Exit::Output(e);
                exit.report();
                ExitCode::from(exit.code())
            }
        },
        Err(exit) => {
            // Lines already written go out before the error.
            let _ = stdout.flush();
            exit.report();
            ExitCode::from(exit.code())
        }
    }
}

/// Runs one command.
async fn run(command: Command, client: &mut Client, out: &mut dyn Write) -> Result<(), Exit> {
    match command {
        Command::Cluster(command) => run_cluster(command, client, out).await,
        Command::Apply(args) => {
            let objects = read_manifests(&args.files, &args.namespace)?;
            let view = apply::server_view(client, &objects).await.map_err(Exit::Call)?;
            let plan = manifest::plan_apply(&objects, &view.subnet_configs).map_err(Exit::Manifest)?;
            apply::apply(client, &plan, &view, args.dry_run, out).await
        }
        Command::Delete(args) => {
            let objects = read_manifests(&args.files, &args.namespace)?;
            apply::delete(client, &objects, args.ignore_not_found, out).await
        }
        Command::Get(args) => run_get(args.resource, client, out).await,
        Command::Stats(args) => {
            let stats = query::stats(client).await?;
            let wide = args.output == Format::Wide;
            query::print(
                out,
                args.output,
                "subnet configs",
                render::stats_table(&stats, wide),
                render::stats_json(&stats),
            )
        }
        Command::Settings(SettingsCommand::Get(args)) => {
            let settings = query::settings(client).await?;
            query::print_settings(out, &settings, args.output)
        }
        Command::Settings(SettingsCommand::Set(args)) => {
            let change = SettingsChange {
                heartbeat_ttl: args.heartbeat_ttl,
                ip_cooldown: args.ip_cooldown,
                branch_cooldown: args.branch_cooldown,
                token_prefix: args.token_prefix,
                recent_requests_per_node: args.recent_requests_per_node,
            };
            let settings = query::set_settings(client, &change).await?;
            query::print_settings(out, &settings, args.output.output)
        }
        Command::RemoveNode(args) => {
            let request = pb::RemoveNodeRequest {
                request_id: new_request_id(),
                node: args.name.clone(),
                force: args.force,
            };
            let reply = client
                .call(request, |mut c, r| async move { c.remove_node(r).await })
                .await
                .map_err(Exit::Call)?;
            writeln!(
                out,
                "node/{} removed ({} released, {} forgotten)",
                args.name,
                plural(reply.released_leases as usize, "lease"),
                plural(reply.forgotten_enis as usize, "ENI")
            )
            .map_err(Exit::output)
        }
        Command::ReleaseLease(args) => {
            let request = pb::ReleaseLeaseRequest {
                request_id: new_request_id(),
                lease_id: args.lease_id,
            };
            let reply = client
                .call(request, |mut c, r| async move { c.release_lease(r).await })
                .await
                .map_err(Exit::Call)?;
            let until = reply
                .lease
                .map(|l| output::time(l.cooling_until_unix_ms))
                .unwrap_or_else(|| "-".to_owned());
            writeln!(out, "lease/{} released (cooling until {until})", args.lease_id).map_err(Exit::output)
        }
        Command::Unquarantine(args) => {
            let request = pb::UnquarantineRequest {
                request_id: new_request_id(),
                ip: args.ip.to_string(),
            };
            client
                .call(request, |mut c, r| async move { c.unquarantine(r).await })
                .await
                .map_err(Exit::Call)?;
            writeln!(out, "address/{} unquarantined", args.ip).map_err(Exit::output)
        }
        Command::WhoHad(args) => {
            let ip = audit::parse_ipv4(&args.ip).map_err(|e| Exit::Usage(e.to_string()))?;
            let at = args.at.unwrap_or(0);
            audit::who_had(client, ip, at, args.consistency.consistency, args.output.output, out).await
        }
        Command::History(args) => {
            let query = HistoryQuery {
                key: Key::parse(args.kind, &args.key).map_err(|e| Exit::Usage(e.to_string()))?,
                range: args.range.range()?,
                limit: args.limit,
                page_token: args.page_token.unwrap_or_default(),
                consistency: args.consistency.consistency,
            };
            audit::history(client, &query, args.output.output, out).await
        }
        Command::Watch(args) => {
            let query = WatchQuery {
                from_seq: args.from,
                kinds: args.kinds,
                filter: args.filter,
            };
            audit::watch(client, &query, args.output.output, out).await
        }
        Command::Export(args) => audit::export(client, args.range.range()?, out).await,
    }
}

/// Runs a `cluster` command.
async fn run_cluster(command: ClusterCommand, client: &mut Client, out: &mut dyn Write) -> Result<(), Exit> {
    let (info, format) = match command {
        ClusterCommand::Init { members, output } => (cluster::init(client, &members).await?, output.output),
        ClusterCommand::AddLearner {
            id,
            address,
            no_wait,
            output,
        } => (
            cluster::add_learner(client, id, &address, !no_wait).await?,
            output.output,
        ),
        ClusterCommand::Promote { ids, output } => (cluster::promote(client, &ids).await?, output.output),
        ClusterCommand::Remove { ids, output } => (cluster::remove(client, &ids).await?, output.output),
        ClusterCommand::Status { leader, output } => (cluster::status(client, leader).await?, output.output),
    };
    cluster::print(out, &info, format)
}

/// Runs a `get`.
async fn run_get(resource: Resource, client: &mut Client, out: &mut dyn Write) -> Result<(), Exit> {
    match resource {
        Resource::Pools(args) => {
            let pools = query::pools(client).await?;
            let wide = args.output == Format::Wide;
            query::print(
                out,
                args.output,
                "pools",
                render::pools_table(&pools, wide),
                render::pools_json(&pools),
            )
        }
        Resource::Subnets(args) => {
            let configs = query::subnet_configs(client).await?;
            let wide = args.output == Format::Wide;
            query::print(
                out,
                args.output,
                "subnet configs",
                render::subnet_configs_table(&configs, wide),
                render::subnet_configs_json(&configs),
            )
        }
        Resource::Nodes(args) => {
            let request = pb::ListNodesRequest {
                state: args.state.map_or(pb::NodeState::Unspecified, |s| match s {
                    NodeStateArg::Active => pb::NodeState::Active,
                    NodeStateArg::Expired => pb::NodeState::Expired,
                }) as i32,
                subnet_config: args.subnet_config.unwrap_or_default(),
                page_size: 0,
                page_token: String::new(),
            };
            let nodes = query::nodes(client, request).await?;
            let format = args.output.output;
            let wide = format == Format::Wide;
            query::print(
                out,
                format,
                "nodes",
                render::nodes_table(&nodes, wide),
                render::nodes_json(&nodes),
            )
        }
        Resource::Leases(args) => {
            let request = pb::ListLeasesRequest {
                node: args.node.unwrap_or_default(),
                subnet_id: args.subnet_id.unwrap_or_default(),
                state: args.state.map_or(pb::LeaseState::Unspecified, |s| match s {
                    LeaseStateArg::Bound => pb::LeaseState::Bound,
                    LeaseStateArg::Cooling => pb::LeaseState::Cooling,
                }) as i32,
                page_size: 0,
                page_token: String::new(),
            };
            let leases = query::leases(client, request).await?;
            let format = args.output.output;
            let wide = format == Format::Wide;
            query::print(
                out,
                format,
                "leases",
                render::leases_table(&leases, wide),
                render::leases_json(&leases),
            )
        }
        Resource::Enis(args) => {
            let request = pb::ListEnisRequest {
                node: args.node.unwrap_or_default(),
                subnet_id: args.subnet_id.unwrap_or_default(),
                kind: args.kind.map_or(pb::EniKind::Unspecified, |k| match k {
                    EniKindArg::Secondary => pb::EniKind::Secondary,
                    EniKindArg::Trunk => pb::EniKind::Trunk,
                    EniKindArg::Branch => pb::EniKind::Branch,
                }) as i32,
                state: args.state.map_or(pb::EniState::Unspecified, |s| match s {
                    EniStateArg::Planned => pb::EniState::Planned,
                    EniStateArg::Attached => pb::EniState::Attached,
                    EniStateArg::Detaching => pb::EniState::Detaching,
                }) as i32,
                page_size: 0,
                page_token: String::new(),
            };
            let enis = query::enis(client, request).await?;
            let format = args.output.output;
            let wide = format == Format::Wide;
            query::print(
                out,
                format,
                "ENIs",
                render::enis_table(&enis, wide),
                render::enis_json(&enis),
            )
        }
        Resource::SgPolicies(args) => {
            let policies = query::sg_policies(client, args.namespace.as_deref().unwrap_or("")).await?;
            let format = args.output.output;
            let wide = format == Format::Wide;
            query::print(
                out,
                format,
                "security group policies",
                render::sg_policies_table(&policies, wide),
                render::sg_policies_json(&policies),
            )
        }
    }
}

/// Reads and checks the manifests of `-f` (files, directories, `-` for stdin).
fn read_manifests(files: &[PathBuf], namespace: &str) -> Result<Vec<manifest::Object>, Exit> {
    let mut sources = Vec::new();
    let mut stdin_read = false;
    for file in files {
        if file.as_os_str() == "-" {
            if stdin_read {
                return Err(Exit::Usage("-f - (stdin) is given twice".to_owned()));
            }
            stdin_read = true;
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| Exit::Usage(format!("reading stdin: {e}")))?;
            sources.push(("-".to_owned(), text));
        } else if file.is_dir() {
            for path in manifest_files_in(file)? {
                sources.push(read_file(&path)?);
            }
        } else {
            sources.push(read_file(file)?);
        }
    }
    let objects = manifest::parse_all(&sources, namespace).map_err(Exit::Manifest)?;
    if objects.is_empty() {
        return Err(Exit::Usage("the manifests hold no object".to_owned()));
    }
    Ok(objects)
}

/// The `.yaml`, `.yml` and `.json` files of a directory, by name (not recursive, as kubectl).
fn manifest_files_in(dir: &Path) -> Result<Vec<PathBuf>, Exit> {
    let entries = std::fs::read_dir(dir).map_err(|e| Exit::Usage(format!("reading {}: {e}", dir.display())))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| Exit::Usage(format!("reading {}: {e}", dir.display())))?
            .path();
        let manifest = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if manifest && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Exit::Usage(format!(
            "{} holds no .yaml, .yml or .json file",
            dir.display()
        )));
    }
    Ok(files)
}

/// A file's name and text.
fn read_file(path: &Path) -> Result<(String, String), Exit> {
    let text = std::fs::read_to_string(path).map_err(|e| Exit::Usage(format!("reading {}: {e}", path.display())))?;
    Ok((path.display().to_string(), text))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn servers_split_on_commas() {
        let cli = Cli::try_parse_from(["ipamctl", "--server", "a:1,b:2", "stats"]).expect("should succeed");
        assert_eq!(cli.server, vec!["a:1", "b:2"]);
    }

    #[test]
    fn usage_errors_exit_with_2() {
        let error = Cli::try_parse_from(["ipamctl", "get", "widgets"]).expect_err("should fail");
        assert_eq!(error.exit_code(), 2);
        let error = Cli::try_parse_from(["ipamctl", "apply"]).expect_err("should fail");
        assert_eq!(error.exit_code(), 2);
        assert_eq!(Exit::Usage(String::new()).code(), 2);
        assert_eq!(Exit::Manifest(Vec::new()).code(), 2);
        assert_eq!(Exit::Reported.code(), 1);
        assert_eq!(Exit::Call(CallError::GaveUp(String::new())).code(), 1);
    }

    #[test]
    fn cluster_init_members_parse() {
        let cli = Cli::try_parse_from([
            "ipamctl",
            "cluster",
            "init",
            "--member",
            "1=10.0.0.1:7400",
            "--member",
            "2=10.0.0.2:7400",
        ])
        .expect("should succeed");
        let Command::Cluster(ClusterCommand::Init { members, .. }) = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(members.len(), 2);
        assert_eq!(members[1].address, "10.0.0.2:7400");
        assert!(Cli::try_parse_from(["ipamctl", "cluster", "init", "--member", "10.0.0.1:7400"]).is_err());
    }

    #[test]
    fn get_takes_aliases_and_formats() {
        let cli = Cli::try_parse_from(["ipamctl", "get", "sgp", "-o", "json"]).expect("should succeed");
        assert!(matches!(
            cli.command,
            Command::Get(GetArgs {
                resource: Resource::SgPolicies(SgPoliciesArgs {
                    output: OutputArgs { output: Format::Json },
                    ..
                })
            })
        ));
        let cli =
            Cli::try_parse_from(["ipamctl", "get", "leases", "--node", "n1", "-o", "wide"]).expect("should succeed");
        assert!(matches!(
            cli.command,
            Command::Get(GetArgs {
                resource: Resource::Leases(_)
            })
        ));
    }

    #[test]
    fn audit_commands_parse() {
        let cli = Cli::try_parse_from([
            "ipamctl",
            "history",
            "pod",
            "default/web-1",
            "--since",
            "2026-11-24T14:02:00Z",
            "--until",
            "now",
            "--limit",
            "0",
            "--consistency",
            "stale",
            "-o",
            "json",
        ])
        .expect("should succeed");
        let Command::History(args) = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(
            (args.kind, args.key.as_str(), args.limit),
            (KeyKind::Pod, "default/web-1", 0)
        );
        assert_eq!(args.range.since, Some(1_795_528_920_000));
        assert_eq!(args.consistency.consistency, Consistency::Stale);
        let cli = Cli::try_parse_from([
            "ipamctl",
            "watch",
            "--from",
            "1",
            "--kind",
            "IpBound",
            "--kind",
            "IpReleased",
            "--filter",
            "pod=ns/a",
        ])
        .expect("should succeed");
        let Command::Watch(args) = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(args.kinds, ["IpBound", "IpReleased"]);
        assert_eq!(args.filter.map(|k| k.kind), Some(KeyKind::Pod));
        let cli = Cli::try_parse_from(["ipamctl", "who-had", "100.64.3.48", "--at", "90s"]).expect("should succeed");
        assert!(matches!(cli.command, Command::WhoHad(WhoHadArgs { at: Some(_), .. })));
    }

    #[test]
    fn bad_audit_flags_are_usage_errors_naming_the_flag() {
        let error = Cli::try_parse_from(["ipamctl", "export", "--since", "yesterday"]).expect_err("should fail");
        assert_eq!(error.exit_code(), 2);
        let message = error.to_string();
        assert!(message.contains("--since"), "{message}");
        assert!(message.contains("RFC 3339") && message.contains("1h30m"), "{message}");
        let error = Cli::try_parse_from(["ipamctl", "watch", "--filter", "ip=100.64.3"]).expect_err("should fail");
        assert_eq!(error.exit_code(), 2);
        assert!(
            error.to_string().contains("`100.64.3` is not an IPv4 address"),
            "{error}"
        );
        let error = Cli::try_parse_from(["ipamctl", "history", "widget", "x"]).expect_err("should fail");
        assert_eq!(error.exit_code(), 2);
        let args = RangeArgs {
            since: Some(2_000),
            until: Some(1_000),
        };
        assert!(matches!(args.range(), Err(Exit::Usage(why)) if why.starts_with("--until")));
    }

    #[test]
    fn settings_set_parses_durations() {
        let cli = Cli::try_parse_from([
            "ipamctl",
            "settings",
            "set",
            "--ip-cooldown",
            "5s",
            "--heartbeat-ttl",
            "1m",
        ])
        .expect("should succeed");
        let Command::Settings(SettingsCommand::Set(args)) = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(args.ip_cooldown, Some(Duration::from_secs(5)));
        assert_eq!(args.heartbeat_ttl, Some(Duration::from_secs(60)));
        assert!(Cli::try_parse_from(["ipamctl", "settings", "set", "--ip-cooldown", "soon"]).is_err());
    }
}
