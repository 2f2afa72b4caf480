//! `who-had`, `history`, `watch` and `export`: questions to the event ledger (`AuditService`).
//!
//! ```text
//!   who-had IP [--at T]          ──WhoHad──▶  the binding(s) live at T   ─▶ render::who_had_*
//!   history KIND KEY [--limit N] ──History──▶ page ─▶ print ─▶ next_page_token ─▶ page …
//!                                             until N printed (then the token on stderr) or the end
//!   watch [--from SEQ]           ──Watch────▶ event … event ✗ ABORTED / UNAVAILABLE
//!                                   ▲                      │ Resume::after: wait, or give up
//!                                   └── from last seq + 1 ─┘
//!   export [--since] [--until]   ──Export───▶ JSON lines on stdout, progress on stderr, end
//! ```
//!
//! WhoHad and History are linearizable unless `--consistency stale` (then any replica answers,
//! see [`Route`]); Watch and Export stream from the first replica that answers. Whether and when
//! a broken watch resumes is [`Resume`], a pure state machine tested without a network.

use std::io::BufWriter;
use std::io::IsTerminal;
use std::io::Write;
use std::net::Ipv4Addr;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use clap::ValueEnum;
use ipam_proto::ipam::v1 as pb;
use tonic::Code;
use tonic::Status;

use crate::Exit;
use crate::client::CallError;
use crate::client::Client;
use crate::client::RetryPolicy;
use crate::client::Route;
use crate::client::code_name;
use crate::output::Format;
use crate::output::time_ms;
use crate::render;

/// The events History is asked for per page: small enough that a page stays far below gRPC's
/// 4 MiB message limit.
const PAGE_LIMIT: u64 = 500;
/// The most pages `history` reads: a server whose page tokens never end must not hang ipamctl.
const MAX_PAGES: usize = 100_000;
/// How often `export` redraws its progress line.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Why a key given on the command line is not one the ledger can look up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not an IPv4 address.
    #[error("ipamctl manages IPv4 (the 100.64 CGNAT pools); `{0}` is not an IPv4 address")]
    NotIpv4(String),
    /// A pod name without its namespace.
    #[error("`{0}` is not a pod name: write it as NAMESPACE/NAME")]
    PodName(String),
    /// An empty key.
    #[error("the {0} is empty")]
    Empty(&'static str),
    /// A `--filter` that is not `KIND=KEY` with a known kind.
    #[error("`{0}` is not a filter: write KIND=KEY with KIND one of ip, pod, pod-uid, node, eni, sg")]
    Filter(String),
}

/// An IPv4 address given on the command line.
pub fn parse_ipv4(text: &str) -> Result<Ipv4Addr, KeyError> {
    text.parse().map_err(|_| KeyError::NotIpv4(text.to_owned()))
}

/// The kinds of key the ledger indexes events by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyKind {
    /// An IPv4 address.
    Ip,
    /// A pod by NAMESPACE/NAME (every pod that ever had that name).
    Pod,
    /// A pod by UID.
    PodUid,
    /// A node name.
    Node,
    /// An ENI: its EC2 id (eni-…), or the server's handle of one that never attached.
    Eni,
    /// A security group id (sg-…).
    Sg,
}

impl KeyKind {
    /// The wire form.
    fn to_pb(self) -> pb::EventKeyKind {
        match self {
            Self::Ip => pb::EventKeyKind::Ip,
            Self::Pod => pb::EventKeyKind::PodName,
            Self::PodUid => pb::EventKeyKind::PodUid,
            Self::Node => pb::EventKeyKind::Node,
            Self::Eni => pb::EventKeyKind::Eni,
            Self::Sg => pb::EventKeyKind::SecurityGroup,
        }
    }

    /// What a key of this kind is, for messages.
    fn noun(self) -> &'static str {
        match self {
            Self::Ip => "address",
            Self::Pod => "pod name",
            Self::PodUid => "pod UID",
            Self::Node => "node name",
            Self::Eni => "ENI",
            Self::Sg => "security group id",
        }
    }
}

/// A checked key: what `history` looks up and `watch --filter` matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The kind.
    pub kind: KeyKind,
    /// The key in the form the kind says (an address in its canonical form).
    pub value: String,
}

impl Key {
    /// Checks `value` as a key of `kind`.
    pub fn parse(kind: KeyKind, value: &str) -> Result<Self, KeyError> {
        if value.is_empty() {
            return Err(KeyError::Empty(kind.noun()));
        }
        let value = match kind {
            KeyKind::Ip => parse_ipv4(value)?.to_string(),
            KeyKind::Pod => match value.split_once('/') {
                Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
                    value.to_owned()
                }
                _ => return Err(KeyError::PodName(value.to_owned())),
            },
            KeyKind::PodUid | KeyKind::Node | KeyKind::Eni | KeyKind::Sg => value.to_owned(),
        };
        Ok(Self { kind, value })
    }
}

/// A `--filter KIND=KEY` (clap's value parser).
pub fn parse_filter(text: &str) -> Result<Key, KeyError> {
    let (kind, value) = text.split_once('=').ok_or_else(|| KeyError::Filter(text.to_owned()))?;
    let kind = KeyKind::from_str(kind, true).map_err(|_| KeyError::Filter(text.to_owned()))?;
    Key::parse(kind, value)
}

/// How fresh a read must be (`--consistency`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Consistency {
    /// Served by the leader (followed like other calls): reflects every acknowledged write.
    #[default]
    Linearizable,
    /// Served by the first replica that answers, from what it has applied (may lag).
    Stale,
}

impl Consistency {
    /// The wire form.
    fn to_pb(self) -> pb::Consistency {
        match self {
            Self::Linearizable => pb::Consistency::Linearizable,
            Self::Stale => pb::Consistency::Stale,
        }
    }

    /// Which replicas may answer.
    fn route(self) -> Route {
        match self {
            Self::Linearizable => Route::Leader,
            Self::Stale => Route::AnyReplica,
        }
    }
}

/// A time range (`--since`, `--until`), each bound in ms since the epoch, 0 for none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Range {
    /// Events at or after this time.
    pub since_unix_ms: i64,
    /// Events before this time.
    pub until_unix_ms: i64,
}

impl Range {
    /// The range of the flags given; `--until` before `--since` is refused.
    pub fn new(since: Option<i64>, until: Option<i64>) -> Result<Self, String> {
        if let (Some(since), Some(until)) = (since, until)
            && until < since
        {
            return Err(format!(
                "--until ({}) is before --since ({})",
                time_ms(until),
                time_ms(since)
            ));
        }
        Ok(Self {
            since_unix_ms: since.unwrap_or(0),
            until_unix_ms: until.unwrap_or(0),
        })
    }
}

/// The local clock in ms since the epoch.
fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .unwrap_or(0)
}

/// `who-had`: the bindings of `ip` live at `at_unix_ms` (0: now), printed.
pub async fn who_had(
    client: &mut Client,
    ip: Ipv4Addr,
    at_unix_ms: i64,
    consistency: Consistency,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), Exit> {
    let request = pb::WhoHadRequest {
        ip: ip.to_string(),
        at_unix_ms,
        consistency: consistency.to_pb().into(),
    };
    let reply = client
        .call_audit(
            consistency.route(),
            request,
            |mut c, r| async move { c.who_had(r).await },
        )
        .await
        .map_err(Exit::Call)?;
    let ip = ip.to_string();
    let text = match format {
        Format::Json => format!("{:#}\n", render::who_had_json(&ip, at_unix_ms, &reply)),
        Format::Table | Format::Wide => {
            // `now` as the reader sees it: the server's clock decided, but it is not in the reply.
            let at = time_ms(if at_unix_ms == 0 { now_unix_ms() } else { at_unix_ms });
            if reply.bindings.len() > 1 {
                eprintln!(
                    "warning: {} bindings of {ip} at {at}: the address was allocated twice",
                    reply.bindings.len()
                );
            }
            render::who_had_text(&ip, &at, &reply.bindings)
        }
    };
    if consistency == Consistency::Stale && format != Format::Json {
        eprintln!("(stale read: as of log index {})", reply.as_of_log_index);
    }
    out.write_all(text.as_bytes()).map_err(Exit::output)
}

/// What `history` asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    /// The key.
    pub key: Key,
    /// The time range.
    pub range: Range,
    /// The most events to print; 0 for all.
    pub limit: u64,
    /// Where to start: a token an earlier `history` printed; empty for the oldest event.
    pub page_token: String,
    /// How fresh.
    pub consistency: Consistency,
}

/// `history`: the key's events, oldest first, page after page until `limit` are printed or there
/// are no more. JSON lines are printed page by page; a table once, at the end.
pub async fn history(
    client: &mut Client,
    query: &HistoryQuery,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), Exit> {
    let mut request = pb::HistoryRequest {
        key_kind: query.key.kind.to_pb().into(),
        key: query.key.value.clone(),
        since_unix_ms: query.range.since_unix_ms,
        until_unix_ms: query.range.until_unix_ms,
        limit: 0,
        page_token: query.page_token.clone(),
        consistency: query.consistency.to_pb().into(),
    };
    let mut table_rows = Vec::new();
    let mut printed: u64 = 0;
    for _ in 0..MAX_PAGES {
        let remaining = match query.limit {
            0 => PAGE_LIMIT,
            limit => (limit - printed).min(PAGE_LIMIT),
        };
        request.limit = u32::try_from(remaining).unwrap_or(u32::MAX);
        let mut page = client
            .call_audit(query.consistency.route(), request.clone(), |mut c, r| async move {
                c.history(r).await
            })
            .await
            .map_err(Exit::Call)?;
        if page.events.len() as u64 > remaining {
            // More than asked: printing them all would overrun --limit, and the token would skip
            // the ones dropped.
            return Err(Exit::Protocol(format!(
                "History returned {} events when {remaining} were asked",
                page.events.len()
            )));
        }
        printed += page.events.len() as u64;
        match format {
            Format::Json => {
                for event in &page.events {
                    writeln!(out, "{}", render::event_json(event)).map_err(Exit::output)?;
                }
            }
            Format::Table | Format::Wide => table_rows.append(&mut page.events),
        }
        let done = page.next_page_token.is_empty();
        let full = query.limit != 0 && printed >= query.limit;
        if done || full {
            if matches!(format, Format::Table | Format::Wide) {
                let table = render::events_table(&table_rows, format == Format::Wide);
                if table.is_empty() {
                    eprintln!("No events found.");
                } else {
                    out.write_all(table.render().as_bytes()).map_err(Exit::output)?;
                }
            }
            if query.consistency == Consistency::Stale && format != Format::Json {
                eprintln!("(stale read: as of log index {})", page.as_of_log_index);
            }
            if !done {
                out.flush().map_err(Exit::output)?;
                eprintln!(
                    "{printed} events printed (--limit {}); there may be more: continue with --page-token {}",
                    query.limit, page.next_page_token
                );
            }
            return Ok(());
        }
        request.page_token = page.next_page_token;
    }
    Err(Exit::Protocol(format!("History did not end after {MAX_PAGES} pages")))
}

/// What `watch` asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchQuery {
    /// The first seq to deliver; 0 for only events applied after the call.
    pub from_seq: u64,
    /// Only events of these kinds; empty for all.
    pub kinds: Vec<String>,
    /// Only events touching this key.
    pub filter: Option<Key>,
}

impl WatchQuery {
    /// The request that starts (or resumes) the watch at `from_seq`.
    fn request(&self, from_seq: u64) -> pb::WatchRequest {
        let (key_kind, key) = match &self.filter {
            Some(key) => (key.kind.to_pb(), key.value.clone()),
            None => (pb::EventKeyKind::Unspecified, String::new()),
        };
        pb::WatchRequest {
            from_seq,
            filter: Some(pb::EventFilter {
                kinds: self.kinds.clone(),
                key_kind: key_kind.into(),
                key,
            }),
        }
    }
}

/// What to do after a watch's stream broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeStep {
    /// Wait, then open the stream again from [`Resume::next_seq`].
    Reconnect(Duration),
    /// Stop: the reason, for the operator.
    GiveUp(String),
    /// Stop: the server refused the watch; resuming would be refused again.
    Refused,
}

/// Whether and when a broken watch resumes, and from which seq: a pure state machine over the
/// events delivered and the errors seen. Progress (an event delivered) resets the retries, so a
/// long watch survives any number of well-spaced breaks.
#[derive(Debug, Clone)]
pub struct Resume {
    /// The seq to resume from: the last delivered + 1, or the first asked.
    from_seq: u64,
    /// The bounds.
    policy: RetryPolicy,
    /// Reconnections since the last event.
    retries: u32,
}

impl Resume {
    /// A watch starting at `from_seq`.
    pub fn new(from_seq: u64, policy: RetryPolicy) -> Self {
        Self {
            from_seq,
            policy,
            retries: 0,
        }
    }

    /// The seq to (re)start from.
    pub fn next_seq(&self) -> u64 {
        self.from_seq
    }

    /// An event was delivered.
    pub fn delivered(&mut self, seq: u64) {
        self.from_seq = seq.saturating_add(1);
        self.retries = 0;
    }

    /// What to do after the stream ended with `status`.
    pub fn after(&mut self, status: &Status) -> ResumeStep {
        if !resumable(status.code()) {
            return ResumeStep::Refused;
        }
        self.retries += 1;
        if self.retries > self.policy.max_retries {
            return ResumeStep::GiveUp(format!(
                "the watch stream broke {} times in a row without delivering an event (last: {}: {}); \
                 resume with --from {}",
                self.retries,
                code_name(status.code()),
                status.message(),
                self.from_seq
            ));
        }
        let doublings = (self.retries - 1).min(16);
        let pause = self
            .policy
            .first_backoff
            .saturating_mul(1 << doublings)
            .min(self.policy.max_backoff);
        ResumeStep::Reconnect(pause)
    }
}

/// Whether a stream that ended with `code` is worth opening again: the watcher fell behind
/// (ABORTED), the replica went away or the connection broke; not a refusal of the request.
fn resumable(code: Code) -> bool {
    matches!(
        code,
        Code::Aborted | Code::Unavailable | Code::Cancelled | Code::Unknown | Code::Internal | Code::DeadlineExceeded
    )
}

/// `watch`: prints events as they are applied, until interrupted; resumes a broken stream from
/// the last seq + 1.
pub async fn watch(client: &mut Client, query: &WatchQuery, format: Format, out: &mut dyn Write) -> Result<(), Exit> {
    let wide = format == Format::Wide;
    let table = render::events_streaming_table(wide);
    if format != Format::Json {
        out.write_all(table.header().as_bytes()).map_err(Exit::output)?;
        out.flush().map_err(Exit::output)?;
    }
    let mut resume = Resume::new(query.from_seq, client.retry_policy());
    // Why the last stream broke, once one has.
    let mut broken: Option<Status> = None;
    loop {
        let opened = client
            .open_audit_stream(
                query.request(resume.next_seq()),
                |mut c, r| async move { c.watch(r).await },
            )
            .await;
        let mut stream = match (opened, &broken) {
            (Ok(stream), _) => stream,
            (Err(CallError::GaveUp(why)), Some(status)) => {
                return Err(Exit::Call(CallError::GaveUp(format!(
                    "the watch stream broke ({}: {}) and could not be resumed from seq {}: {why}",
                    code_name(status.code()),
                    status.message(),
                    resume.next_seq()
                ))));
            }
            (Err(error), _) => return Err(Exit::Call(error)),
        };
        let status = loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    let line = match format {
                        Format::Json => format!("{}\n", render::event_json(&event)),
                        Format::Table | Format::Wide => table.row(render::event_cells(&event, wide)),
                    };
                    out.write_all(line.as_bytes()).map_err(Exit::output)?;
                    out.flush().map_err(Exit::output)?;
                    resume.delivered(event.seq);
                }
                Ok(None) => break Status::unavailable("the server ended the stream"),
                Err(status) => break status,
            }
        };
        match resume.after(&status) {
            ResumeStep::Reconnect(pause) => {
                eprintln!(
                    "watch: {}: {}; resuming from seq {} in {}",
                    code_name(status.code()),
                    status.message(),
                    resume.next_seq(),
                    humantime::format_duration(pause)
                );
                client.disconnect();
                tokio::time::sleep(pause).await;
                broken = Some(status);
            }
            ResumeStep::GiveUp(why) => return Err(Exit::Call(CallError::GaveUp(why))),
            ResumeStep::Refused => return Err(Exit::Call(CallError::Refused(status))),
        }
    }
}

/// The progress line of `export`: events written and the rate.
pub fn progress_line(written: u64, elapsed: Duration) -> String {
    let rate = written as f64 / elapsed.as_secs_f64().max(0.001);
    format!("{written} events written ({rate:.0} events/s)")
}

/// `export`'s progress on stderr: redrawn in place on a terminal, else one summary at the end.
#[derive(Debug)]
struct Progress {
    /// Whether stderr is a terminal.
    terminal: bool,
    /// When the export started.
    started: Instant,
    /// When the line was last drawn.
    drawn: Instant,
    /// Events written so far.
    written: u64,
}

impl Progress {
    /// Progress from now.
    fn new() -> Self {
        let now = Instant::now();
        Self {
            terminal: std::io::stderr().is_terminal(),
            started: now,
            drawn: now,
            written: 0,
        }
    }

    /// One more event written.
    fn tick(&mut self) {
        self.written += 1;
        if self.terminal && self.drawn.elapsed() >= PROGRESS_EVERY {
            self.drawn = Instant::now();
            // Trailing spaces wipe a longer previous line.
            eprint!("\r{}   ", progress_line(self.written, self.started.elapsed()));
        }
    }

    /// The last line: the summary, or how far a broken export got.
    fn finish(&self, complete: bool) {
        let summary = progress_line(self.written, self.started.elapsed());
        let text = if complete {
            format!("export done: {summary} in {}", seconds(self.started.elapsed()))
        } else {
            format!("export stopped: {summary}")
        };
        if self.terminal {
            eprintln!("\r{text}   ");
        } else {
            eprintln!("{text}");
        }
    }
}

/// A duration in seconds to the millisecond (`1.234s`).
fn seconds(duration: Duration) -> String {
    format!("{:.3}s", duration.as_secs_f64())
}

/// `export`: every event of `range` as JSON lines on `out`, then the end.
pub async fn export(client: &mut Client, range: Range, out: &mut dyn Write) -> Result<(), Exit> {
    let request = pb::ExportRequest {
        since_unix_ms: range.since_unix_ms,
        until_unix_ms: range.until_unix_ms,
    };
    let mut stream = client
        .open_audit_stream(request, |mut c, r| async move { c.export(r).await })
        .await
        .map_err(Exit::Call)?;
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut progress = Progress::new();
    loop {
        match stream.message().await {
            Ok(Some(event)) => {
                writeln!(out, "{}", render::event_json(&event)).map_err(Exit::output)?;
                progress.tick();
            }
            Ok(None) => {
                out.flush().map_err(Exit::output)?;
                progress.finish(true);
                return Ok(());
            }
            Err(status) => {
                out.flush().map_err(Exit::output)?;
                progress.finish(false);
                return Err(Exit::Call(CallError::Refused(status)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_hops: 3,
            max_retries: 2,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(150),
        }
    }

    #[test]
    fn addresses_must_be_ipv4() {
        assert_eq!(parse_ipv4("100.64.3.48"), Ok(Ipv4Addr::new(100, 64, 3, 48)));
        for text in ["::1", "100.64.3", "100.64.3.256", "host", "", "100.64.3.48/32"] {
            assert_eq!(
                parse_ipv4(text).expect_err(text).to_string(),
                format!("ipamctl manages IPv4 (the 100.64 CGNAT pools); `{text}` is not an IPv4 address")
            );
        }
    }

    #[test]
    fn keys_are_checked_per_kind() {
        assert_eq!(
            Key::parse(KeyKind::Pod, "default/web-1"),
            Ok(Key {
                kind: KeyKind::Pod,
                value: "default/web-1".to_owned()
            })
        );
        for bad in ["web-1", "/web-1", "default/", "a/b/c"] {
            assert_eq!(
                Key::parse(KeyKind::Pod, bad),
                Err(KeyError::PodName(bad.to_owned())),
                "{bad}"
            );
        }
        assert_eq!(Key::parse(KeyKind::Node, ""), Err(KeyError::Empty("node name")));
        assert!(matches!(Key::parse(KeyKind::Ip, "::1"), Err(KeyError::NotIpv4(_))));
        assert_eq!(
            Key::parse(KeyKind::Eni, "eni-0123").map(|k| k.kind.to_pb()),
            Ok(pb::EventKeyKind::Eni)
        );
        assert_eq!(KeyKind::Pod.to_pb(), pb::EventKeyKind::PodName);
        assert_eq!(KeyKind::Sg.to_pb(), pb::EventKeyKind::SecurityGroup);
    }

    #[test]
    fn filters_are_kind_equals_key() {
        assert_eq!(
            parse_filter("pod-uid=0f1e"),
            Ok(Key {
                kind: KeyKind::PodUid,
                value: "0f1e".to_owned()
            })
        );
        assert_eq!(parse_filter("ip=100.64.0.9").map(|k| k.kind), Ok(KeyKind::Ip));
        assert_eq!(parse_filter("sg=sg-1=2").map(|k| k.value), Ok("sg-1=2".to_owned()));
        assert!(matches!(parse_filter("ip=::1"), Err(KeyError::NotIpv4(_))));
        assert_eq!(parse_filter("web-1"), Err(KeyError::Filter("web-1".to_owned())));
        assert_eq!(parse_filter("pods=a/b"), Err(KeyError::Filter("pods=a/b".to_owned())));
    }

    #[test]
    fn until_before_since_is_refused() {
        assert_eq!(
            Range::new(Some(2_000), Some(1_000)),
            Err("--until (1970-01-01T00:00:01.000Z) is before --since (1970-01-01T00:00:02.000Z)".to_owned())
        );
        assert_eq!(
            Range::new(Some(1_000), None),
            Ok(Range {
                since_unix_ms: 1_000,
                until_unix_ms: 0
            })
        );
        assert!(Range::new(Some(1_000), Some(1_000)).is_ok());
    }

    #[test]
    fn consistency_routes_the_read() {
        assert_eq!(Consistency::Linearizable.route(), Route::Leader);
        assert_eq!(Consistency::Stale.route(), Route::AnyReplica);
        assert_eq!(Consistency::Stale.to_pb(), pb::Consistency::Stale);
    }

    #[test]
    fn a_watch_resumes_after_the_last_event_delivered() {
        let mut resume = Resume::new(1, policy());
        resume.delivered(41);
        assert_eq!(resume.next_seq(), 42);
        assert_eq!(
            resume.after(&Status::aborted("too slow")),
            ResumeStep::Reconnect(Duration::from_millis(100))
        );
        assert_eq!(resume.next_seq(), 42);
        assert_eq!(
            resume.after(&Status::unavailable("shutting down")),
            ResumeStep::Reconnect(Duration::from_millis(150))
        );
        match resume.after(&Status::unavailable("shutting down")) {
            ResumeStep::GiveUp(why) => {
                assert!(why.contains("3 times in a row"), "{why}");
                assert!(why.contains("UNAVAILABLE: shutting down"), "{why}");
                assert!(why.contains("--from 42"), "{why}");
            }
            other => panic!("expected to give up, got {other:?}"),
        }
    }

    #[test]
    fn progress_resets_the_retries() {
        let mut resume = Resume::new(0, policy());
        for seq in 1..10 {
            assert!(matches!(
                resume.after(&Status::aborted("too slow")),
                ResumeStep::Reconnect(_)
            ));
            resume.delivered(seq);
        }
        assert_eq!(resume.next_seq(), 10);
    }

    #[test]
    fn refusals_are_not_resumed() {
        let mut resume = Resume::new(5, policy());
        assert_eq!(
            resume.after(&Status::out_of_range("seq 5 was trimmed")),
            ResumeStep::Refused
        );
        assert_eq!(
            resume.after(&Status::invalid_argument("filter.key")),
            ResumeStep::Refused
        );
    }

    #[test]
    fn watch_requests_carry_the_filter() {
        let query = WatchQuery {
            from_seq: 1,
            kinds: vec!["IpBound".to_owned()],
            filter: Some(Key {
                kind: KeyKind::Pod,
                value: "default/web-1".to_owned(),
            }),
        };
        let request = query.request(7);
        assert_eq!(request.from_seq, 7);
        let filter = request.filter.unwrap_or_default();
        assert_eq!(filter.key_kind(), pb::EventKeyKind::PodName);
        assert_eq!(filter.key, "default/web-1");
        assert_eq!(filter.kinds, ["IpBound"]);
        let all = WatchQuery {
            from_seq: 0,
            kinds: Vec::new(),
            filter: None,
        };
        assert_eq!(
            all.request(0).filter.unwrap_or_default().key_kind(),
            pb::EventKeyKind::Unspecified
        );
    }

    #[test]
    fn progress_shows_the_rate() {
        assert_eq!(
            progress_line(1500, Duration::from_secs(3)),
            "1500 events written (500 events/s)"
        );
        assert_eq!(progress_line(0, Duration::ZERO), "0 events written (0 events/s)");
        assert_eq!(seconds(Duration::from_millis(1234)), "1.234s");
    }
}
