//! `ipam.v1.AuditService`: the event ledger, served by any replica from what it has applied.
//!
//! ```text
//!   WhoHad(ip, at)          ──▶ read barrier (consistency) ──▶ Ledger::who_had: index seek
//!   History(key, range)     ──▶ read barrier (consistency) ──▶ Ledger::history: index seek, a page
//!   Export(since, until)    ──▶ seq_at(since) ──▶ read the ledger in pages of PAGE ──▶ stream, end
//!   Watch(from_seq, filter) ──▶ read pages from from_seq ──▶ stream
//!                               caught up ──▶ Ledger::wait_for(next seq) ──▶ read again …
//! ```
//!
//! The streams read sled directly, a page at a time, so a slow client holds no memory beyond one
//! page and the channel in front of it. A question reaching before the retention horizon is
//! OUT_OF_RANGE, never a silently partial answer.

use std::pin::Pin;

use ipam_proto::ipam::v1 as pb;
use ipam_proto::ipam::v1::audit_service_server::AuditService;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::grpc::status::replica_status;
use crate::ledger::HistoryQuery;
use crate::ledger::Ledger;
use crate::ledger::LedgerError;
use crate::pb_impl::consistency::consistency_from_pb;
use crate::pb_impl::event::EventMatcher;
use crate::pb_impl::event::RequestedKey;
use crate::pb_impl::event::binding_to_pb;
use crate::pb_impl::event::event_to_pb;
use crate::pb_impl::event::key_from_pb;
use crate::pb_impl::event::page_token;
use crate::pb_impl::event::seq_from_page_token;
use crate::pb_impl::field;
use crate::pb_impl::time;
use crate::replica::Replica;

/// Events read from sled per page.
const PAGE: usize = 512;
/// Events buffered per stream ahead of the client.
const BUFFER: usize = 1024;
/// History's page size when the request leaves it to the server.
const DEFAULT_HISTORY_LIMIT: usize = 100;
/// The largest History page.
const MAX_HISTORY_LIMIT: usize = 1000;

/// A stream of events.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

/// `AuditService` for one replica.
#[derive(Debug, Clone)]
pub struct AuditGrpc {
    replica: Replica,
    ledger: Ledger,
}

impl AuditGrpc {
    /// Serves `ledger`, the ledger of `replica` (which answers the read barriers).
    pub fn new(replica: Replica, ledger: Ledger) -> Self {
        Self { replica, ledger }
    }
}

fn ledger_status(error: &LedgerError) -> Status {
    match error {
        LedgerError::Closed => Status::unavailable("the replica is shutting down"),
        LedgerError::Trimmed { .. } => Status::out_of_range(error.to_string()),
        other => Status::data_loss(format!("the ledger cannot be read: {other}")),
    }
}

/// Events at or above the horizon are gapless; a page that does not start at `next` means
/// retention pruned the events this stream had not sent yet (a reader slower than retention).
fn pruned_gap(next: u64, page: &[(u64, ipam_core::Event)]) -> Option<Status> {
    let first = page.first()?.0;
    (first != next).then(|| {
        Status::out_of_range(format!(
            "events {next}..{first} were pruned by the ledger's retention before they were sent; \
             resume from seq {first} or export a later range"
        ))
    })
}

/// A `since`/`until` pair: each 0 for none, never negative, until not before since.
fn time_range(request_since: i64, request_until: i64) -> Result<(Option<u64>, Option<u64>), Status> {
    let since = time_bound("since_unix_ms", request_since)?;
    let until = time_bound("until_unix_ms", request_until)?;
    if let (Some(since), Some(until)) = (since, until)
        && until < since
    {
        return Err(Status::invalid_argument(format!(
            "until_unix_ms ({until}) is before since_unix_ms ({since}): the range is empty"
        )));
    }
    Ok((since, until))
}

/// A time bound: 0 means none; negative is an error.
fn time_bound(field: &'static str, value: i64) -> Result<Option<u64>, Status> {
    match u64::try_from(value) {
        Ok(0) => Ok(None),
        Ok(ms) => Ok(Some(ms)),
        Err(_) => Err(Status::invalid_argument(format!("{field}: {value} is before 1970"))),
    }
}

#[tonic::async_trait]
impl AuditService for AuditGrpc {
    type WatchStream = EventStream;
    type ExportStream = EventStream;

    #[tracing::instrument(skip_all, fields(ip))]
    async fn who_had(&self, request: Request<pb::WhoHadRequest>) -> Result<Response<pb::WhoHadResponse>, Status> {
        let request = request.into_inner();
        tracing::Span::current().record("ip", &request.ip);
        let ip = field::ip("ip", &request.ip)?;
        let at = match request.at_unix_ms {
            0 => u64::MAX,
            ms => time::from_unix_ms("at_unix_ms", ms)?,
        };
        let consistency = consistency_from_pb("consistency", request.consistency)?;
        let ledger = self.ledger.clone();
        // The bindings are read under the state's read lock: the subnet of each comes from the
        // state, and a binding's "still bound" must agree with the applied position reported.
        let (bindings, as_of_log_index) = self
            .replica
            .read(consistency, move |applied| {
                let bindings = ledger.who_had(ip, at)?;
                let pb = bindings
                    .iter()
                    .map(|b| binding_to_pb(&applied.state, b))
                    .collect::<Vec<_>>();
                Ok::<_, LedgerError>((pb, applied.last_applied.map_or(0, |id| id.index)))
            })
            .await
            .map_err(replica_status)?
            .map_err(|e| ledger_status(&e))?;
        Ok(Response::new(pb::WhoHadResponse {
            bindings,
            as_of_log_index,
        }))
    }

    #[tracing::instrument(skip_all, fields(key_kind, key))]
    async fn history(&self, request: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryResponse>, Status> {
        let request = request.into_inner();
        tracing::Span::current().record("key_kind", request.key_kind);
        tracing::Span::current().record("key", &request.key);
        let requested = key_from_pb("key_kind", "key", request.key_kind, &request.key)?
            .ok_or_else(|| Status::invalid_argument("key_kind must be set (EventKeyKind is UNSPECIFIED)"))?;
        let (since, until) = time_range(request.since_unix_ms, request.until_unix_ms)?;
        let after_seq = seq_from_page_token("page_token", &request.page_token)?;
        let limit = match usize::try_from(request.limit).unwrap_or(usize::MAX) {
            0 => DEFAULT_HISTORY_LIMIT,
            n => n.min(MAX_HISTORY_LIMIT),
        };
        let consistency = consistency_from_pb("consistency", request.consistency)?;
        let as_of_log_index = self
            .replica
            .read(consistency, |applied| applied.last_applied.map_or(0, |id| id.index))
            .await
            .map_err(replica_status)?;
        let key = match requested {
            RequestedKey::Key(key) => key,
            RequestedKey::EniId(eni_id) => match self.ledger.eni_ref(&eni_id).map_err(|e| ledger_status(&e))? {
                Some(eni) => crate::ledger::Key::Eni(eni),
                // An ENI the ledger never saw attached has no history under that id.
                None => {
                    return Ok(Response::new(pb::HistoryResponse {
                        events: Vec::new(),
                        next_page_token: String::new(),
                        as_of_log_index,
                    }));
                }
            },
        };
        let ledger = self.ledger.clone();
        let query = HistoryQuery {
            key,
            since,
            until,
            after_seq,
            limit,
        };
        // sled reads block; a page is short, but it is still not the async workers' job.
        let page = tokio::task::spawn_blocking(move || ledger.history(&query))
            .await
            .map_err(|e| Status::internal(format!("history task failed: {e}")))?
            .map_err(|e| ledger_status(&e))?;
        let next_page_token = match page.events.last() {
            Some((seq, _)) if page.more => page_token(*seq),
            _ => String::new(),
        };
        Ok(Response::new(pb::HistoryResponse {
            events: page
                .events
                .iter()
                .map(|(seq, event)| event_to_pb(*seq, event))
                .collect(),
            next_page_token,
            as_of_log_index,
        }))
    }

    #[tracing::instrument(skip_all, fields(from_seq))]
    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<EventStream>, Status> {
        let request = request.into_inner();
        tracing::Span::current().record("from_seq", request.from_seq);
        let matcher = EventMatcher::try_from(request.filter).map_err(Status::from)?;
        let mut ledger = self.ledger.clone();
        let mut next = match request.from_seq {
            0 => ledger.last_seq() + 1,
            seq => seq,
        };
        let horizon = ledger.horizon().map_err(|e| ledger_status(&e))?;
        if horizon.is_pruned() && next < horizon.seq {
            return Err(Status::out_of_range(format!(
                "from_seq {next} was pruned by the ledger's retention; the oldest retained seq is {}",
                horizon.seq
            )));
        }
        let (tx, rx) = mpsc::channel(BUFFER);
        tokio::spawn(async move {
            loop {
                // Stop when the client goes away, even while waiting for events that may never
                // come (a far-future from_seq, an idle cluster).
                let waited = tokio::select! {
                    waited = ledger.wait_for(next) => waited,
                    () = tx.closed() => return,
                };
                if let Err(error) = waited {
                    let _ = tx.send(Err(ledger_status(&error))).await;
                    return;
                }
                let page = match ledger.read(next, PAGE) {
                    Ok(page) => page,
                    Err(error) => {
                        let _ = tx.send(Err(ledger_status(&error))).await;
                        return;
                    }
                };
                if page.is_empty() {
                    // The ledger is being replaced by an installed snapshot; its last seq is
                    // announced once the import is done.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
                if let Some(status) = pruned_gap(next, &page) {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                for (seq, event) in page {
                    next = seq + 1;
                    if matcher.matches(&event) && tx.send(Ok(event_to_pb(seq, &event))).await.is_err() {
                        return; // the client went away
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[tracing::instrument(skip_all)]
    async fn export(&self, request: Request<pb::ExportRequest>) -> Result<Response<EventStream>, Status> {
        let request = request.into_inner();
        let (since, until) = time_range(request.since_unix_ms, request.until_unix_ms)?;
        let ledger = self.ledger.clone();
        let horizon = ledger.horizon().map_err(|e| ledger_status(&e))?;
        if let Some(since) = since
            && horizon.is_pruned()
            && since < horizon.at
        {
            return Err(ledger_status(&LedgerError::Trimmed {
                asked: format!("since {}", crate::ledger::format_ms(since)),
                horizon,
            }));
        }
        // Everything applied when the export starts, and nothing after: an export ends. It
        // starts at the first event at or after `since` (a seek on the time index).
        let last = ledger.last_seq();
        let first = match since {
            Some(since) => ledger.seq_at(since).map_err(|e| ledger_status(&e))?,
            None => 1,
        };
        let (tx, rx) = mpsc::channel(BUFFER);
        tokio::spawn(async move {
            let mut next = first.max(horizon.seq);
            while next <= last {
                let page = match ledger.read(next, PAGE) {
                    Ok(page) if !page.is_empty() => page,
                    Ok(_) => {
                        // Events up to `last` were there when the export began: the ledger is
                        // being replaced by an installed snapshot. Not a complete export.
                        let status = Status::unavailable(format!(
                            "the ledger was replaced (a snapshot install) during the export, at seq {next}; \
                             export again"
                        ));
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    Err(error) => {
                        let _ = tx.send(Err(ledger_status(&error))).await;
                        return;
                    }
                };
                if let Some(status) = pruned_gap(next, &page) {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                for (seq, event) in page {
                    if seq > last {
                        return;
                    }
                    next = seq + 1;
                    // Ledger time never goes backwards: the first event at `until` ends it.
                    if until.is_some_and(|until| event.at >= until) {
                        return;
                    }
                    if tx.send(Ok(event_to_pb(seq, &event))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
