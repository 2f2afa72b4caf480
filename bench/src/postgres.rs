//! The PostgreSQL side: the schema a DBA would write for the ledger's questions, the load (binary
//! COPY of the very events the ledger holds, indexes built afterwards), and the questions as
//! prepared statements.
//!
//! ```text
//!   events     one row per event: seq (primary key), log_index, at (ms), kind, actor,
//!              node, pod_ns, pod_name, pod_uid, eni, lease_id  (what EventKind::touches names)
//!              payload jsonb (the event kind as the ledger stores it, serde's JSON)
//!   event_ips  one row per (address, event) for events touching addresses (an ENI plan names
//!              up to 11): ip inet, seq, at, kind
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::path::Path;
use std::pin::pin;
use std::time::Instant;

use ipam_core::Event;
use ipam_core::ids::Actor;
use ipam_core::ids::Timestamp;
use ipam_server::ledger::Ledger;
use serde::Serialize;
use tokio_postgres::Client;
use tokio_postgres::NoTls;
use tokio_postgres::Row;
use tokio_postgres::Statement;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Json;
use tokio_postgres::types::Type;

use crate::Result;

/// The events table, created before the load (no index yet).
pub const EVENTS_TABLE: &str = "
CREATE TABLE events (
    seq       bigint NOT NULL,
    log_index bigint NOT NULL,
    at        bigint NOT NULL,
    kind      text   NOT NULL,
    actor     text   NOT NULL,
    node      text,
    pod_ns    text,
    pod_name  text,
    pod_uid   text,
    eni       bigint,
    lease_id  bigint,
    payload   jsonb  NOT NULL
)";

/// The addresses of each event, created before the load.
pub const EVENT_IPS_TABLE: &str = "
CREATE TABLE event_ips (
    ip   inet   NOT NULL,
    seq  bigint NOT NULL,
    at   bigint NOT NULL,
    kind text   NOT NULL
)";

/// The indexes, built after the load, by name.
pub const INDEXES: &[(&str, &str)] = &[
    (
        "events_pkey",
        "ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY (seq)",
    ),
    (
        "event_ips_ip_seq",
        "CREATE INDEX event_ips_ip_seq ON event_ips (ip, seq)",
    ),
    (
        "event_ips_bound",
        "CREATE INDEX event_ips_bound ON event_ips (ip, at, seq) WHERE kind = 'IpBound'",
    ),
    (
        "events_lease",
        "CREATE INDEX events_lease ON events (lease_id) WHERE lease_id IS NOT NULL",
    ),
    (
        "events_pod_uid",
        "CREATE INDEX events_pod_uid ON events (pod_uid, seq) WHERE pod_uid IS NOT NULL",
    ),
    (
        "events_pod_name",
        "CREATE INDEX events_pod_name ON events (pod_ns, pod_name, seq) WHERE pod_name IS NOT NULL",
    ),
    (
        "events_node",
        "CREATE INDEX events_node ON events (node, seq) WHERE node IS NOT NULL",
    ),
    (
        "events_eni",
        "CREATE INDEX events_eni ON events (eni, seq) WHERE eni IS NOT NULL",
    ),
    ("events_at", "CREATE INDEX events_at ON events (at)"),
];

/// Who had `$1` at `$2`: the address's last bind at or before `$2` (one probe of the partial
/// index of binds), unless its lease was released at or before `$2`; with the release if any.
pub const WHO_HAD: &str = "
SELECT b.seq, b.lease_id, r.seq, r.at, r.payload -> 'IpReleased' ->> 'reason',
       COALESCE(r.payload, b.payload)::text
FROM (SELECT seq FROM event_ips
      WHERE ip = $1 AND kind = 'IpBound' AND at <= $2
      ORDER BY at DESC, seq DESC LIMIT 1) AS last
JOIN events b ON b.seq = last.seq
LEFT JOIN events r ON r.lease_id = b.lease_id AND r.kind = 'IpReleased'
WHERE r.seq IS NULL OR r.at > $2";

const EVENT_COLUMNS: &str = "e.seq, e.log_index, e.at, e.kind, e.actor, e.node, e.pod_ns, e.pod_name, e.pod_uid, e.eni, e.lease_id, e.payload::text";

/// The first `limit` events touching address `$1`.
pub fn history_by_ip(limit: usize) -> String {
    format!(
        "SELECT {EVENT_COLUMNS} FROM event_ips i JOIN events e ON e.seq = i.seq \
         WHERE i.ip = $1 ORDER BY i.seq LIMIT {limit}"
    )
}

/// The first `limit` events of the pod with UID `$1`.
pub fn history_by_pod_uid(limit: usize) -> String {
    format!("SELECT {EVENT_COLUMNS} FROM events e WHERE e.pod_uid = $1 ORDER BY e.seq LIMIT {limit}")
}

/// The first `limit` events of the pods named `$1`/`$2`.
pub fn history_by_pod_name(limit: usize) -> String {
    format!("SELECT {EVENT_COLUMNS} FROM events e WHERE e.pod_ns = $1 AND e.pod_name = $2 ORDER BY e.seq LIMIT {limit}")
}

/// Where the server is.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// A unix socket directory (starts with `/`) or a host name.
    pub host: String,
    /// The port (also names the socket file).
    pub port: u16,
    /// The role.
    pub user: String,
}

impl Endpoint {
    /// Connects to `database`; the connection runs on a spawned task.
    ///
    /// # Errors
    ///
    /// The server cannot be reached or refuses.
    pub async fn connect(&self, database: &str) -> Result<Client> {
        let mut config = tokio_postgres::Config::new();
        if self.host.starts_with('/') {
            config.host_path(Path::new(&self.host));
        } else {
            config.host(&self.host);
        }
        config.port(self.port).user(&self.user).dbname(database);
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                eprintln!("[postgres] connection ended: {error}");
            }
        });
        Ok(client)
    }
}

/// What loading did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    /// Rows in `events`.
    pub events: u64,
    /// Rows in `event_ips`.
    pub event_ips: u64,
    /// Reading the ledger and COPYing, seconds.
    pub copy_secs: f64,
    /// Building each index, seconds.
    pub index_secs: BTreeMap<String, f64>,
    /// VACUUM (ANALYZE), seconds.
    pub vacuum_secs: f64,
    /// Events by kind.
    pub kinds: BTreeMap<String, u64>,
    /// Bytes on disk after the load.
    pub sizes: Sizes,
}

/// Bytes on disk, from PostgreSQL's own accounting.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sizes {
    /// `pg_relation_size` of each table (heap, main fork).
    pub tables: BTreeMap<String, i64>,
    /// TOAST of each table (`pg_table_size` − `pg_relation_size`, which also counts the free
    /// space and visibility maps).
    pub toast_and_maps: BTreeMap<String, i64>,
    /// `pg_relation_size` of each index.
    pub indexes: BTreeMap<String, i64>,
    /// `pg_total_relation_size` of both tables: heap, TOAST, maps and indexes.
    pub total: i64,
    /// `pg_database_size` (adds the catalogs).
    pub database: i64,
}

fn actor_text(actor: &Actor) -> String {
    match actor {
        Actor::Agent(node) => format!("agent:{node}"),
        Actor::Controller => "controller".to_owned(),
        Actor::Operator(who) => format!("operator:{who}"),
    }
}

fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Creates database `database` afresh (dropping an older one), loads every event of `ledger`
/// into it, builds the indexes and vacuums. Prints progress on stderr.
///
/// # Errors
///
/// The ledger cannot be read or PostgreSQL fails.
pub async fn load(endpoint: &Endpoint, database: &str, ledger: &Ledger) -> Result<LoadReport> {
    let admin = endpoint.connect("postgres").await?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {database}"))
        .await?;
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {database} TEMPLATE template0 ENCODING 'UTF8'"
        ))
        .await?;
    let client = endpoint.connect(database).await?;
    let ips_client = endpoint.connect(database).await?;
    // Each table is created in the transaction that COPYs into it: with wal_level = minimal (the
    // script's setting for the load) PostgreSQL then writes the data without WAL, as its manual
    // advises for a bulk load (and the disk holds the data once).
    client.batch_execute(&format!("BEGIN; {EVENTS_TABLE}")).await?;
    ips_client.batch_execute(&format!("BEGIN; {EVENT_IPS_TABLE}")).await?;

    let mut report = LoadReport::default();
    let started = Instant::now();
    let events_sink = client.copy_in("COPY events FROM STDIN (FORMAT binary)").await?;
    let ips_sink = ips_client.copy_in("COPY event_ips FROM STDIN (FORMAT binary)").await?;
    let event_types = [
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::JSONB,
    ];
    let mut events_writer = pin!(BinaryCopyInWriter::new(events_sink, &event_types));
    let mut ips_writer = pin!(BinaryCopyInWriter::new(
        ips_sink,
        &[Type::INET, Type::INT8, Type::INT8, Type::TEXT]
    ));
    let last = ledger.last_seq();
    let mut from = 1;
    while from <= last {
        let page = ledger.read(from, 10_000)?;
        let Some((last_in_page, _)) = page.last() else {
            break;
        };
        from = last_in_page + 1;
        for (seq, event) in &page {
            write_event(&mut events_writer, &mut ips_writer, *seq, event, &mut report).await?;
        }
        if report.events % 1_000_000 < 10_000 {
            eprintln!(
                "[load-postgres] {} events, {} address rows, {:.0} s",
                report.events,
                report.event_ips,
                started.elapsed().as_secs_f64()
            );
        }
    }
    events_writer.finish().await?;
    ips_writer.finish().await?;
    client.batch_execute("COMMIT").await?;
    ips_client.batch_execute("COMMIT").await?;
    report.copy_secs = started.elapsed().as_secs_f64();
    eprintln!("[load-postgres] copied in {:.0} s; building indexes", report.copy_secs);

    client
        .batch_execute("SET maintenance_work_mem = '1GB'; SET max_parallel_maintenance_workers = 1")
        .await?;
    for (name, sql) in INDEXES {
        let started = Instant::now();
        client.batch_execute(sql).await?;
        let secs = started.elapsed().as_secs_f64();
        eprintln!("[load-postgres] {name}: {secs:.1} s");
        report.index_secs.insert((*name).to_owned(), secs);
    }
    let started = Instant::now();
    client.batch_execute("VACUUM (ANALYZE) events, event_ips").await?;
    report.vacuum_secs = started.elapsed().as_secs_f64();
    report.sizes = sizes(&client).await?;
    Ok(report)
}

async fn write_event(
    events: &mut std::pin::Pin<&mut BinaryCopyInWriter>,
    ips: &mut std::pin::Pin<&mut BinaryCopyInWriter>,
    seq: u64,
    event: &Event,
    report: &mut LoadReport,
) -> Result<()> {
    let touches = event.kind.touches();
    let kind = event.kind.name();
    let owner = touches.owner;
    let (seq, at) = (int(seq), int(event.at));
    events
        .as_mut()
        .write(&[
            &seq,
            &int(event.index),
            &at,
            &kind,
            &actor_text(&event.actor),
            &touches.node,
            &owner.map(|o| o.namespace.as_str()),
            &owner.map(|o| o.name.as_str()),
            &owner.map(|o| o.uid.as_str()),
            &touches.eni.map(int),
            &touches.lease_id.map(int),
            &Json(&event.kind),
        ])
        .await?;
    let mut addresses: Vec<Ipv4Addr> = touches.ips.clone();
    addresses.sort_unstable();
    addresses.dedup();
    for ip in addresses {
        ips.as_mut().write(&[&IpAddr::V4(ip), &seq, &at, &kind]).await?;
        report.event_ips += 1;
    }
    report.events += 1;
    *report.kinds.entry(kind.to_owned()).or_default() += 1;
    Ok(())
}

/// The bytes PostgreSQL holds for the ledger's tables.
///
/// # Errors
///
/// PostgreSQL fails.
pub async fn sizes(client: &Client) -> Result<Sizes> {
    let mut sizes = Sizes::default();
    for table in ["events", "event_ips"] {
        let row = client
            .query_one(
                "SELECT pg_relation_size($1::text::regclass), pg_table_size($1::text::regclass) - pg_relation_size($1::text::regclass)",
                &[&table],
            )
            .await?;
        sizes.tables.insert(table.to_owned(), row.get(0));
        sizes.toast_and_maps.insert(table.to_owned(), row.get(1));
    }
    for (name, _) in INDEXES {
        let row = client
            .query_one("SELECT pg_relation_size($1::text::regclass)", &[name])
            .await?;
        sizes.indexes.insert((*name).to_owned(), row.get(0));
    }
    let row = client
        .query_one(
            "SELECT pg_total_relation_size('events') + pg_total_relation_size('event_ips'), \
             pg_database_size(current_database())",
            &[],
        )
        .await?;
    sizes.total = row.get(0);
    sizes.database = row.get(1);
    Ok(sizes)
}

/// The questions as prepared statements on one connection.
#[derive(Debug)]
pub struct Questions {
    client: Client,
    who_had: Statement,
    by_ip: Statement,
    by_pod_uid: Statement,
    by_pod_name: Statement,
    ping: Statement,
}

/// One binding as the who-had query returns it: (lease id, seq of its release if any).
pub type Binding = (u64, Option<u64>);

fn seq_of(n: i64) -> u64 {
    u64::try_from(n).unwrap_or_default()
}

/// Takes every column of an event row out of it (so the row is really read, as a client
/// would); returns its seq.
fn read_event_row(row: &Row) -> u64 {
    let seq: i64 = row.get(0);
    let numbers: [i64; 2] = [row.get(1), row.get(2)];
    let texts: [&str; 2] = [row.get(3), row.get(4)];
    let optional: [Option<&str>; 4] = [row.get(5), row.get(6), row.get(7), row.get(8)];
    let ids: [Option<i64>; 2] = [row.get(9), row.get(10)];
    let payload: &str = row.get(11);
    std::hint::black_box((numbers, texts, optional, ids, payload));
    seq_of(seq)
}

impl Questions {
    /// Prepares the questions (history pages of `limit`) on a new connection to `database`.
    ///
    /// # Errors
    ///
    /// PostgreSQL fails.
    pub async fn prepare(endpoint: &Endpoint, database: &str, limit: usize) -> Result<Self> {
        let client = endpoint.connect(database).await?;
        let who_had = client.prepare_typed(WHO_HAD, &[Type::INET, Type::INT8]).await?;
        let by_ip = client.prepare_typed(&history_by_ip(limit), &[Type::INET]).await?;
        let by_pod_uid = client.prepare_typed(&history_by_pod_uid(limit), &[Type::TEXT]).await?;
        let by_pod_name = client
            .prepare_typed(&history_by_pod_name(limit), &[Type::TEXT, Type::TEXT])
            .await?;
        let ping = client.prepare("SELECT 1").await?;
        Ok(Self {
            client,
            who_had,
            by_ip,
            by_pod_uid,
            by_pod_name,
            ping,
        })
    }

    /// Who had `ip` at `at`.
    ///
    /// # Errors
    ///
    /// PostgreSQL fails.
    pub async fn who_had(&self, ip: Ipv4Addr, at: Timestamp) -> Result<Vec<Binding>> {
        let rows = self.client.query(&self.who_had, &[&IpAddr::V4(ip), &int(at)]).await?;
        Ok(rows
            .iter()
            .map(|row| {
                let bound_seq: i64 = row.get(0);
                let lease: i64 = row.get(1);
                let released_seq: Option<i64> = row.get(2);
                let released_at: Option<i64> = row.get(3);
                let reason: Option<&str> = row.get(4);
                let payload: &str = row.get(5);
                std::hint::black_box((bound_seq, released_at, reason, payload));
                (seq_of(lease), released_seq.map(seq_of))
            })
            .collect())
    }

    /// The first page of `ip`'s history: the seqs.
    ///
    /// # Errors
    ///
    /// PostgreSQL fails.
    pub async fn history_by_ip(&self, ip: Ipv4Addr) -> Result<Vec<u64>> {
        let rows = self.client.query(&self.by_ip, &[&IpAddr::V4(ip)]).await?;
        Ok(rows.iter().map(read_event_row).collect())
    }

    /// The first page of a pod's history by UID.
    ///
    /// # Errors
    ///
    /// PostgreSQL fails.
    pub async fn history_by_pod_uid(&self, uid: &str) -> Result<Vec<u64>> {
        let rows = self.client.query(&self.by_pod_uid, &[&uid]).await?;
        Ok(rows.iter().map(read_event_row).collect())
    }

    /// The first page of the history of the pods named `namespace`/`name`.
    ///
    /// # Errors
    ///
    /// PostgreSQL fails.
    pub async fn history_by_pod_name(&self, namespace: &str, name: &str) -> Result<Vec<u64>> {
        let rows = self.client.query(&self.by_pod_name, &[&namespace, &name]).await?;
        Ok(rows.iter().map(read_event_row).collect())
    }

    /// `SELECT 1`: the round trip every question pays.
    ///
    /// # Errors
    ///
    /// PostgreSQL fails.
    pub async fn ping(&self) -> Result<()> {
        let row = self.client.query_one(&self.ping, &[]).await?;
        let one: i32 = row.get(0);
        std::hint::black_box(one);
        Ok(())
    }

    /// `EXPLAIN (ANALYZE, BUFFERS)` of each question for one set of parameters, with the generic
    /// plan a prepared statement settles on after five executions.
    ///
    /// # Errors
    ///
    /// PostgreSQL fails.
    pub async fn explain(
        &self,
        limit: usize,
        ip: Ipv4Addr,
        at: Timestamp,
        uid: &str,
        namespace: &str,
        name: &str,
    ) -> Result<BTreeMap<String, String>> {
        self.client
            .batch_execute("SET plan_cache_mode = force_generic_plan")
            .await?;
        let ip = IpAddr::V4(ip);
        let at = int(at);
        let questions: [(&str, String, Vec<&(dyn tokio_postgres::types::ToSql + Sync)>); 4] = [
            ("who_had", WHO_HAD.to_owned(), vec![&ip, &at]),
            ("history_ip", history_by_ip(limit), vec![&ip]),
            ("history_pod_uid", history_by_pod_uid(limit), vec![&uid]),
            ("history_pod_name", history_by_pod_name(limit), vec![&namespace, &name]),
        ];
        let mut plans = BTreeMap::new();
        for (kind, sql, params) in questions {
            let rows = self
                .client
                .query(&format!("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}"), &params)
                .await?;
            let plan: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
            plans.insert(kind.to_owned(), plan.join("\n"));
        }
        self.client.batch_execute("RESET plan_cache_mode").await?;
        Ok(plans)
    }
}
