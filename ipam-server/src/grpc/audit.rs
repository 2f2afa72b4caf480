//! `ipam.v1.AuditService`: the event ledger, served by any replica from what it has applied.
//!
//! ```text
//!   Export(since, until) ──▶ read the ledger in pages of PAGE events from seq 1 ──▶ stream, end
//!   Watch(from_seq, filter) ──▶ read pages from from_seq ──▶ stream
//!                               caught up ──▶ Ledger::wait_for(next seq) ──▶ read again …
//! ```
//!
//! Both read sled directly, a page at a time, so a slow client holds no memory beyond one page
//! and the channel in front of it. `WhoHad` and `History` are index seeks; the indexes are
//! issue C, and until they exist these two answer UNIMPLEMENTED rather than scanning.

use std::pin::Pin;

use ipam_proto::ipam::v1 as pb;
use ipam_proto::ipam::v1::audit_service_server::AuditService;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::ledger::Ledger;
use crate::ledger::LedgerError;
use crate::pb_impl::event::EventMatcher;
use crate::pb_impl::event::event_to_pb;

/// Events read from sled per page.
const PAGE: usize = 512;
/// Events buffered per stream ahead of the client.
const BUFFER: usize = 1024;

/// A stream of events.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

/// `AuditService` for one replica.
#[derive(Debug, Clone)]
pub struct AuditGrpc {
    ledger: Ledger,
}

impl AuditGrpc {
    /// Serves `ledger`.
    pub fn new(ledger: Ledger) -> Self {
        Self { ledger }
    }
}

fn ledger_status(error: &LedgerError) -> Status {
    match error {
        LedgerError::Closed => Status::unavailable("the replica is shutting down"),
        other => Status::data_loss(format!("the ledger cannot be read: {other}")),
    }
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

    async fn who_had(&self, _: Request<pb::WhoHadRequest>) -> Result<Response<pb::WhoHadResponse>, Status> {
        Err(Status::unimplemented(
            "WhoHad needs the ledger's indexes (issue C); until then use Export and filter",
        ))
    }

    async fn history(&self, _: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryResponse>, Status> {
        Err(Status::unimplemented(
            "History needs the ledger's indexes (issue C); until then use Watch with a filter from seq 1",
        ))
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
        let since = time_bound("since_unix_ms", request.since_unix_ms)?;
        let until = time_bound("until_unix_ms", request.until_unix_ms)?;
        if let (Some(since), Some(until)) = (since, until)
            && until < since
        {
            return Err(Status::invalid_argument(format!(
                "until_unix_ms ({until}) is before since_unix_ms ({since})"
            )));
        }
        let ledger = self.ledger.clone();
        // Everything applied when the export starts, and nothing after: an export ends.
        let last = ledger.last_seq();
        let (tx, rx) = mpsc::channel(BUFFER);
        tokio::spawn(async move {
            let mut next = 1;
            while next <= last {
                let page = match ledger.read(next, PAGE) {
                    Ok(page) if !page.is_empty() => page,
                    Ok(_) => return,
                    Err(error) => {
                        let _ = tx.send(Err(ledger_status(&error))).await;
                        return;
                    }
                };
                for (seq, event) in page {
                    if seq > last {
                        return;
                    }
                    next = seq + 1;
                    let after_since = since.is_none_or(|since| event.at >= since);
                    let before_until = until.is_none_or(|until| event.at < until);
                    if after_since && before_until && tx.send(Ok(event_to_pb(seq, &event))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
