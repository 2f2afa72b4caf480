//! The query phase: the same seeded questions to the ledger and to PostgreSQL, their answers
//! compared, then each timed on both, interleaved (ours first on even questions, PostgreSQL
//! first on odd ones) so that both see the same background noise.
//!
//! Ours: `Ledger::who_had` under the state's read lock plus `binding_to_pb` for each binding,
//! and `Ledger::history` plus `event_to_pb` for each event — what `AuditService` does for a
//! request, in process, without gRPC. PostgreSQL: a prepared statement over its unix socket,
//! every column of every row taken out of the row.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Instant;

use ipam_core::ids::Timestamp;
use ipam_server::ledger::HistoryQuery;
use ipam_server::ledger::Key;
use ipam_server::ledger::Ledger;
use ipam_server::pb_impl::event::binding_to_pb;
use ipam_server::pb_impl::event::event_to_pb;
use ipam_server::raft::state_machine::SharedApplied;
use serde::Serialize;

use crate::Error;
use crate::Result;
use crate::manifest::Manifest;
use crate::manifest::PodKey;
use crate::measure::Latencies;
use crate::measure::Summary;
use crate::measure::ratio;
use crate::postgres;
use crate::rng::Rng;

/// One question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// Who had the address at that time.
    WhoHad(Ipv4Addr, Timestamp),
    /// The first page of the address's history.
    HistoryIp(Ipv4Addr),
    /// The first page of the pod's history, by UID.
    HistoryPodUid(String),
    /// The first page of the history of the pods with that name.
    HistoryPodName(String, String),
}

/// The kinds of question, in the order they are reported.
pub const KINDS: [&str; 4] = ["who_had", "history_ip", "history_pod_uid", "history_pod_name"];

/// An answer, reduced to what both systems must agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// (lease id, seq of its release) of each binding.
    Bindings(Vec<postgres::Binding>),
    /// The seqs of the events.
    Seqs(Vec<u64>),
}

impl Answer {
    /// Bindings or events returned.
    pub fn len(&self) -> usize {
        match self {
            Self::Bindings(b) => b.len(),
            Self::Seqs(s) => s.len(),
        }
    }

    /// Whether nothing was returned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `count` questions of each kind, drawn with `seed` from the manifest's samples; who-had times
/// are uniform over the ledger's span.
pub fn pick(manifest: &Manifest, count: usize, seed: u64) -> BTreeMap<&'static str, Vec<Question>> {
    let mut rng = Rng::new(seed, 0x0051_5545_5259);
    let ips = &manifest.samples.ips;
    let pods = &manifest.samples.pods;
    let ip = |rng: &mut Rng| ips[rng.below(ips.len() as u64) as usize];
    let pod = |rng: &mut Rng| -> PodKey { pods[rng.below(pods.len() as u64) as usize].clone() };
    let mut questions = BTreeMap::new();
    if ips.is_empty() || pods.is_empty() {
        return questions;
    }
    let who_had = (0..count)
        .map(|_| {
            let at = rng.between(manifest.first_at, manifest.last_at);
            Question::WhoHad(ip(&mut rng), at)
        })
        .collect();
    questions.insert("who_had", who_had);
    questions.insert(
        "history_ip",
        (0..count).map(|_| Question::HistoryIp(ip(&mut rng))).collect(),
    );
    questions.insert(
        "history_pod_uid",
        (0..count).map(|_| Question::HistoryPodUid(pod(&mut rng).uid)).collect(),
    );
    questions.insert(
        "history_pod_name",
        (0..count)
            .map(|_| {
                let p = pod(&mut rng);
                Question::HistoryPodName(p.namespace, p.name)
            })
            .collect(),
    );
    questions
}

/// The ledger, asked as the audit service asks it.
#[derive(Debug, Clone)]
pub struct Ours {
    /// The ledger.
    pub ledger: Ledger,
    /// The applied state (who-had's pb conversion reads the subnet from it).
    pub applied: SharedApplied,
    /// History page size.
    pub limit: usize,
}

impl Ours {
    /// Answers `question`.
    ///
    /// # Errors
    ///
    /// The ledger cannot answer.
    pub async fn ask(&self, question: &Question) -> Result<Answer> {
        let key = match question {
            Question::WhoHad(ip, at) => {
                let applied = self.applied.read().await;
                let bindings = self.ledger.who_had(*ip, *at)?;
                let pb: Vec<_> = bindings.iter().map(|b| binding_to_pb(&applied.state, b)).collect();
                std::hint::black_box(pb);
                let answer = bindings
                    .iter()
                    .map(|b| (b.lease.id, b.released.map(|r| r.seq)))
                    .collect();
                return Ok(Answer::Bindings(answer));
            }
            Question::HistoryIp(ip) => Key::Ip(*ip),
            Question::HistoryPodUid(uid) => Key::PodUid(uid.clone()),
            Question::HistoryPodName(namespace, name) => Key::PodName {
                namespace: namespace.clone(),
                name: name.clone(),
            },
        };
        let page = self.ledger.history(&HistoryQuery {
            key,
            since: None,
            until: None,
            after_seq: 0,
            limit: self.limit,
        })?;
        let pb: Vec<_> = page
            .events
            .iter()
            .map(|(seq, event)| event_to_pb(*seq, event))
            .collect();
        std::hint::black_box(pb);
        Ok(Answer::Seqs(page.events.iter().map(|(seq, _)| *seq).collect()))
    }
}

/// Asks PostgreSQL `question`.
///
/// # Errors
///
/// PostgreSQL fails.
pub async fn ask_postgres(pg: &postgres::Questions, question: &Question) -> Result<Answer> {
    Ok(match question {
        Question::WhoHad(ip, at) => Answer::Bindings(pg.who_had(*ip, *at).await?),
        Question::HistoryIp(ip) => Answer::Seqs(pg.history_by_ip(*ip).await?),
        Question::HistoryPodUid(uid) => Answer::Seqs(pg.history_by_pod_uid(uid).await?),
        Question::HistoryPodName(namespace, name) => Answer::Seqs(pg.history_by_pod_name(namespace, name).await?),
    })
}

/// Asks both the first `count` questions of each kind and fails on the first disagreement.
/// Returns how many were compared.
///
/// # Errors
///
/// Either system fails, or they answer differently ([`Error::Mismatch`]).
pub async fn cross_check(
    ours: &Ours,
    pg: &postgres::Questions,
    questions: &BTreeMap<&'static str, Vec<Question>>,
    count: usize,
) -> Result<usize> {
    let mut compared = 0;
    for (kind, list) in questions {
        for question in list.iter().take(count) {
            let a = ours.ask(question).await?;
            let b = ask_postgres(pg, question).await?;
            if a != b {
                return Err(Error::Mismatch(format!(
                    "{kind} {question:?}: the ledger says {a:?}, PostgreSQL says {b:?}"
                )));
            }
            compared += 1;
        }
    }
    Ok(compared)
}

/// One kind of question on both systems.
#[derive(Debug, Clone, Serialize)]
pub struct KindResult {
    /// The kind.
    pub kind: String,
    /// The ledger.
    pub ours: Summary,
    /// PostgreSQL.
    pub postgres: Summary,
    /// ours / PostgreSQL at the median.
    pub ratio_p50: f64,
    /// … at the 99th percentile.
    pub ratio_p99: f64,
    /// … of the means.
    pub ratio_mean: f64,
    /// Mean bindings or events per answer.
    pub mean_rows: f64,
    /// Questions that had a non-empty answer.
    pub answered: usize,
}

/// The timed part.
#[derive(Debug, Clone, Serialize)]
pub struct Timings {
    /// Per kind.
    pub kinds: Vec<KindResult>,
    /// PostgreSQL's `SELECT 1` round trip.
    pub select1: Summary,
}

/// Times every question on both systems, then `SELECT 1` as many times as there are questions
/// of one kind.
///
/// # Errors
///
/// Either system fails.
/// Without `pg`, only the ledger is timed.
pub async fn time(
    ours: &Ours,
    pg: Option<&postgres::Questions>,
    questions: &BTreeMap<&'static str, Vec<Question>>,
) -> Result<Timings> {
    let mut kinds = Vec::new();
    let mut per_kind = 0;
    for kind in KINDS {
        let Some(list) = questions.get(kind) else {
            continue;
        };
        per_kind = per_kind.max(list.len());
        let (mut a, mut b) = (Latencies::new(), Latencies::new());
        let (mut rows, mut answered) = (0_usize, 0_usize);
        for (i, question) in list.iter().enumerate() {
            for turn in 0..2 {
                if (i + turn) % 2 == 0 {
                    let started = Instant::now();
                    let answer = ours.ask(question).await?;
                    a.record(started.elapsed());
                    rows += answer.len();
                    answered += usize::from(!answer.is_empty());
                } else if let Some(pg) = pg {
                    let started = Instant::now();
                    let answer = ask_postgres(pg, question).await?;
                    b.record(started.elapsed());
                    std::hint::black_box(answer);
                }
            }
        }
        let (ours_summary, pg_summary) = (a.summary(), b.summary());
        kinds.push(KindResult {
            kind: kind.to_owned(),
            ratio_p50: ratio(ours_summary.p50_us, pg_summary.p50_us),
            ratio_p99: ratio(ours_summary.p99_us, pg_summary.p99_us),
            ratio_mean: ratio(ours_summary.mean_us, pg_summary.mean_us),
            ours: ours_summary,
            postgres: pg_summary,
            mean_rows: ratio(rows as f64, list.len() as f64),
            answered,
        });
        eprintln!("[query] {kind}: timed {} questions", list.len());
    }
    let mut select1 = Latencies::new();
    if let Some(pg) = pg {
        for _ in 0..per_kind {
            let started = Instant::now();
            pg.ping().await?;
            select1.record(started.elapsed());
        }
    }
    Ok(Timings {
        kinds,
        select1: select1.summary(),
    })
}

/// The timings as a markdown table.
pub fn markdown(timings: &Timings) -> String {
    let mut out = String::from(
        "| question | rows/answer | ours p50 µs | ours p99 µs | ours mean µs | PG p50 µs | PG p99 µs | PG mean µs | p50 ours/PG | p99 ours/PG | mean ours/PG |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for k in &timings.kinds {
        out.push_str(&format!(
            "| {} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}× | {:.2}× | {:.2}× |\n",
            k.kind,
            k.mean_rows,
            k.ours.p50_us,
            k.ours.p99_us,
            k.ours.mean_us,
            k.postgres.p50_us,
            k.postgres.p99_us,
            k.postgres.mean_us,
            k.ratio_p50,
            k.ratio_p99,
            k.ratio_mean
        ));
    }
    let s = &timings.select1;
    out.push_str(&format!(
        "| PG `SELECT 1` (round trip floor) | 1 | | | | {:.1} | {:.1} | {:.1} | | | |\n",
        s.p50_us, s.p99_us, s.mean_us
    ));
    out
}
