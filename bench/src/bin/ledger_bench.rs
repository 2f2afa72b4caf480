//! `ledger_bench`: the ledger benchmark's three phases (see the crate's README and
//! `bench/ledger_vs_postgres.sh`, which runs them against a PostgreSQL 15 it starts itself).
//!
//! ```text
//!   ledger_bench generate      --data DIR [--events N] [--nodes N] [--no-index]   → DIR/manifest.json
//!   ledger_bench load-postgres --data DIR --pg-host SOCKET_DIR                    → JSON report
//!   ledger_bench query         --data DIR --pg-host SOCKET_DIR [--questions K]    → JSON report
//!   ledger_bench reindex       --data DIR    (the index rebuilt as after a snapshot install)
//! ```

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use clap::Parser;
use clap::Subcommand;
use ipam_bench::manifest::Manifest;
use ipam_bench::postgres;
use ipam_bench::postgres::Endpoint;
use ipam_bench::questions;
use ipam_bench::questions::Ours;
use ipam_bench::questions::Question;
use ipam_bench::sim;
use ipam_server::raft::state_machine::Options;
use serde_json::json;

/// The ledger benchmark: a simulated cluster's events, then who-had and history against
/// PostgreSQL 15.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    phase: Phase,
}

#[derive(Debug, Subcommand)]
enum Phase {
    /// Drives a fresh state machine through a simulated cluster until the ledger holds the
    /// events asked for; writes DIR/manifest.json and prints it.
    Generate(GenerateArgs),
    /// Copies the ledger's events into PostgreSQL, builds the indexes, prints a JSON report.
    LoadPostgres(PgArgs),
    /// Asks both the same questions: cross-checks, then times; prints a JSON report.
    Query(QueryArgs),
    /// Throws the ledger's index away and lets the state machine rebuild it on open (as after a
    /// snapshot install); prints a JSON report.
    Reindex(ReindexArgs),
}

#[derive(Debug, Args)]
struct ReindexArgs {
    /// The directory `generate` wrote.
    #[arg(long, env = "LEDGER_BENCH_DATA")]
    data: PathBuf,
}

#[derive(Debug, Args)]
struct GenerateArgs {
    /// An empty (or missing) directory for the sled database, snapshots and manifest.
    #[arg(long, env = "LEDGER_BENCH_DATA")]
    data: PathBuf,
    /// Stop once the ledger holds this many events.
    #[arg(long, env = "LEDGER_BENCH_EVENTS", default_value_t = 10_000_000)]
    events: u64,
    /// Nodes in the simulated cluster.
    #[arg(long, env = "LEDGER_BENCH_NODES", default_value_t = 5_000)]
    nodes: usize,
    /// The simulation's seed.
    #[arg(long, env = "LEDGER_BENCH_SEED", default_value_t = 1)]
    seed: u64,
    /// Do not index the ledger (to measure what indexing costs).
    #[arg(long, env = "LEDGER_BENCH_NO_INDEX")]
    no_index: bool,
    /// Raft entries per apply call.
    #[arg(long, env = "LEDGER_BENCH_BATCH", default_value_t = 64)]
    batch: usize,
    /// The cluster's heartbeat TTL in seconds (the server's default is 30; see the README for
    /// why the benchmark uses a longer one).
    #[arg(long, env = "LEDGER_BENCH_HEARTBEAT_TTL_SECS", default_value_t = 600)]
    heartbeat_ttl_secs: u64,
    /// Addresses and pods sampled for the query phase (each).
    #[arg(long, env = "LEDGER_BENCH_SAMPLES", default_value_t = 20_000)]
    samples: usize,
}

#[derive(Debug, Args)]
struct PgArgs {
    /// The directory `generate` wrote.
    #[arg(long, env = "LEDGER_BENCH_DATA")]
    data: PathBuf,
    /// PostgreSQL's unix socket directory (or a host name).
    #[arg(long, env = "LEDGER_BENCH_PG_HOST")]
    pg_host: String,
    /// PostgreSQL's port.
    #[arg(long, env = "LEDGER_BENCH_PG_PORT", default_value_t = 5432)]
    pg_port: u16,
    /// The role to connect as.
    #[arg(long, env = "LEDGER_BENCH_PG_USER", default_value = "postgres")]
    pg_user: String,
    /// The database the events go in (dropped and created again by load-postgres).
    #[arg(long, env = "LEDGER_BENCH_PG_DATABASE", default_value = "ledger")]
    pg_database: String,
}

#[derive(Debug, Args)]
struct QueryArgs {
    #[command(flatten)]
    pg: PgArgs,
    /// Questions of each kind.
    #[arg(long, env = "LEDGER_BENCH_QUESTIONS", default_value_t = 5_000)]
    questions: usize,
    /// Questions of each kind whose answers are compared before timing.
    #[arg(long, env = "LEDGER_BENCH_CHECK", default_value_t = 200)]
    check: usize,
    /// Seed of the questions.
    #[arg(long, env = "LEDGER_BENCH_QUERY_SEED", default_value_t = 1)]
    seed: u64,
    /// History page size.
    #[arg(long, env = "LEDGER_BENCH_LIMIT", default_value_t = 100)]
    limit: usize,
    /// Also write the markdown table here.
    #[arg(long, env = "LEDGER_BENCH_MARKDOWN")]
    markdown: Option<PathBuf>,
    /// Also write PostgreSQL's plans (EXPLAIN ANALYZE of one question of each kind) here.
    #[arg(long, env = "LEDGER_BENCH_EXPLAIN")]
    explain: Option<PathBuf>,
    /// Time the ledger alone (no PostgreSQL, no cross-check): to compare two ledgers.
    #[arg(long, env = "LEDGER_BENCH_OURS_ONLY")]
    ours_only: bool,
}

impl PgArgs {
    fn endpoint(&self) -> Endpoint {
        Endpoint {
            host: self.pg_host.clone(),
            port: self.pg_port,
            user: self.pg_user.clone(),
        }
    }
}

fn manifest_path(data: &std::path::Path) -> PathBuf {
    data.join("manifest.json")
}

async fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let config = sim::Config {
        nodes: args.nodes,
        events: args.events,
        seed: args.seed,
        index: !args.no_index,
        batch: args.batch.max(1),
        heartbeat_ttl_ms: args.heartbeat_ttl_secs * 1_000,
        samples: args.samples,
    };
    let manifest = sim::generate(&config, &args.data)
        .await
        .with_context(|| format!("generate into {}", args.data.display()))?;
    manifest.save(&manifest_path(&args.data))?;
    let w = &manifest.write;
    eprintln!(
        "[generate] {} events ({} entries, {} refused) over {:.1} days in {:.0} s: {:.0} events/s, \
         {:.0} events/s inside apply (index: {})",
        manifest.events,
        w.entries,
        w.refused,
        (manifest.last_at - manifest.first_at) as f64 / 86_400_000.0,
        w.wall_secs,
        w.events_per_sec,
        w.apply_events_per_sec,
        w.index
    );
    let mut summary = serde_json::to_value(&manifest)?;
    if let Some(object) = summary.as_object_mut() {
        object.remove("samples");
    }
    println!("{summary}");
    Ok(())
}

async fn load_postgres(args: PgArgs) -> anyhow::Result<()> {
    let (db, sm) = sim::open(&args.data, Options::default()).await?;
    let ledger = sm.ledger();
    let report = postgres::load(&args.endpoint(), &args.pg_database, &ledger)
        .await
        .context("load the ledger into PostgreSQL")?;
    eprintln!("[load-postgres] counting what the sled trees hold");
    let sled_trees = sim::logical_bytes(&db)?;
    let mut json = serde_json::to_value(&report)?;
    if let Some(object) = json.as_object_mut() {
        object.insert("sled_trees".to_owned(), serde_json::to_value(sled_trees)?);
    }
    println!("{json}");
    Ok(())
}

async fn query(args: QueryArgs) -> anyhow::Result<()> {
    let manifest = Manifest::load(&manifest_path(&args.pg.data))?;
    let (_db, sm) = sim::open(&args.pg.data, Options::default()).await?;
    anyhow::ensure!(
        sm.ledger().last_seq() == manifest.events,
        "the ledger holds {} events, its manifest says {}",
        sm.ledger().last_seq(),
        manifest.events
    );
    let ours = Ours {
        ledger: sm.ledger(),
        applied: sm.applied(),
        limit: args.limit,
    };
    let questions = questions::pick(&manifest, args.questions, args.seed);
    anyhow::ensure!(!questions.is_empty(), "the manifest has no samples to ask about");
    if args.ours_only {
        // The same warm-up the cross-check gives the ledger before a comparison.
        for list in questions.values() {
            for question in list.iter().take(args.check) {
                ours.ask(question).await?;
            }
        }
        let timings = questions::time(&ours, None, &questions).await?;
        let report = json!({
            "events": manifest.events,
            "questions_per_kind": args.questions,
            "limit": args.limit,
            "timings": timings,
        });
        println!("{report}");
        return Ok(());
    }
    let pg = postgres::Questions::prepare(&args.pg.endpoint(), &args.pg.pg_database, args.limit).await?;

    if let Some(path) = &args.explain {
        let ip = questions["history_ip"]
            .iter()
            .find_map(|q| match q {
                Question::HistoryIp(ip) => Some(*ip),
                _ => None,
            })
            .context("no address question")?;
        let at = manifest.first_at + (manifest.last_at - manifest.first_at) / 2;
        let pod = &manifest.samples.pods[0];
        let plans = pg
            .explain(args.limit, ip, at, &pod.uid, &pod.namespace, &pod.name)
            .await?;
        let text: String = plans
            .iter()
            .map(|(kind, plan)| format!("-- {kind}\n{plan}\n\n"))
            .collect();
        std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    }

    let compared = questions::cross_check(&ours, &pg, &questions, args.check)
        .await
        .context("cross-check of the answers")?;
    eprintln!("[query] cross-check: {compared} answers identical on both systems");
    let timings = questions::time(&ours, Some(&pg), &questions).await?;
    let table = questions::markdown(&timings);
    eprint!("{table}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &table).with_context(|| format!("write {}", path.display()))?;
    }
    let report = json!({
        "events": manifest.events,
        "questions_per_kind": args.questions,
        "cross_checked": compared,
        "limit": args.limit,
        "timings": timings,
    });
    println!("{report}");
    Ok(())
}

async fn reindex(args: ReindexArgs) -> anyhow::Result<()> {
    let (events, took) = sim::reindex(&args.data)
        .await
        .with_context(|| format!("reindex {}", args.data.display()))?;
    let secs = took.as_secs_f64();
    eprintln!(
        "[reindex] {events} events indexed in {secs:.0} s ({:.0} events/s)",
        events as f64 / secs
    );
    println!(
        "{}",
        json!({ "events": events, "secs": secs, "events_per_sec": events as f64 / secs })
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One thread: the questions are asked one at a time, and the numbers should not depend on
    // where the scheduler put a task.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    runtime.block_on(async move {
        match cli.phase {
            Phase::Generate(args) => generate(args).await,
            Phase::LoadPostgres(args) => load_postgres(args).await,
            Phase::Query(args) => query(args).await,
            Phase::Reindex(args) => reindex(args).await,
        }
    })
}
