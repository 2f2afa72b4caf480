//! The etcd side of the comparison benchmark: a minimal etcd v3 KV client, the
//! compare-and-swap allocator that Whereabouts and Calico use, and the benchmark runner.
//!
//! ```text
//!   bench::run ──▶ raw-put:   Put(unique key)                       one op = 1 write
//!              └─▶ cas-alloc: cas::CasAllocator ── Kv trait ──┬─▶ EtcdKv (gRPC, etcd 3.4)
//!                             alloc + release                 └─▶ testing::MemKv (unit tests)
//! ```

pub mod bench;
pub mod cas;
pub mod testing;

use std::future::Future;

use tonic::transport::Channel;

use crate::error::Error;
use crate::error::Result;

/// The generated client and messages of `proto/etcd_kv.proto` (etcd's `etcdserverpb` subset).
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

/// A value read from the store with the revision of its last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The value.
    pub value: Vec<u8>,
    /// The store revision of the key's last modification (etcd's `mod_revision`); never 0 for a
    /// key that exists.
    pub mod_revision: i64,
}

/// The answer of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swap {
    /// The key still had the revision seen; the new value is written.
    Done,
    /// Someone changed the key first; here is its current value (`None`: absent).
    Conflict(Option<Versioned>),
}

/// The three key-value operations an etcd-backed IPAM needs. Implemented over etcd's gRPC API
/// and, for tests, in memory.
pub trait Kv: Send + Sync {
    /// Reads a key (linearizable); `None` when absent.
    fn get(&self, key: &[u8]) -> impl Future<Output = Result<Option<Versioned>>> + Send;

    /// Writes a key unconditionally.
    fn put(&self, key: &[u8], value: &[u8]) -> impl Future<Output = Result<()>> + Send;

    /// Writes `value` if the key's modification revision is still `seen_mod_revision` (0: the
    /// key must be absent), in one transaction; on conflict, returns the current value read in
    /// the same transaction, so that a retry needs no extra read.
    fn swap(&self, key: &[u8], seen_mod_revision: i64, value: &[u8]) -> impl Future<Output = Result<Swap>> + Send;
}

/// [`Kv`] over etcd's v3 gRPC API (`etcdserverpb.KV` Range, Put and Txn).
#[derive(Debug, Clone)]
pub struct EtcdKv {
    client: pb::kv_client::KvClient<Channel>,
}

impl EtcdKv {
    /// A client on `channel` (to any member: followers forward writes to the leader).
    pub fn new(channel: Channel) -> Self {
        Self {
            client: pb::kv_client::KvClient::new(channel),
        }
    }
}

fn kv_error(what: &str, status: tonic::Status) -> Error {
    Error::rpc(format!("etcd {what}"), status)
}

impl Kv for EtcdKv {
    async fn get(&self, key: &[u8]) -> Result<Option<Versioned>> {
        let request = pb::RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        };
        let response = self
            .client
            .clone()
            .range(request)
            .await
            .map_err(|s| kv_error("Range", s))?
            .into_inner();
        Ok(response.kvs.into_iter().next().map(|kv| Versioned {
            value: kv.value,
            mod_revision: kv.mod_revision,
        }))
    }

    async fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let request = pb::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..Default::default()
        };
        self.client.clone().put(request).await.map_err(|s| kv_error("Put", s))?;
        Ok(())
    }

    async fn swap(&self, key: &[u8], seen_mod_revision: i64, value: &[u8]) -> Result<Swap> {
        let request = swap_request(key, seen_mod_revision, value);
        let response = self
            .client
            .clone()
            .txn(request)
            .await
            .map_err(|s| kv_error("Txn", s))?
            .into_inner();
        if response.succeeded {
            return Ok(Swap::Done);
        }
        let current = response
            .responses
            .into_iter()
            .find_map(|op| match op.response {
                Some(pb::response_op::Response::ResponseRange(range)) => Some(range),
                _ => None,
            })
            .and_then(|range| range.kvs.into_iter().next())
            .map(|kv| Versioned {
                value: kv.value,
                mod_revision: kv.mod_revision,
            });
        Ok(Swap::Conflict(current))
    }
}

/// The transaction of a compare-and-swap: `if mod_revision(key) == seen { put } else { range }`.
pub fn swap_request(key: &[u8], seen_mod_revision: i64, value: &[u8]) -> pb::TxnRequest {
    pb::TxnRequest {
        compare: vec![pb::Compare {
            result: pb::compare::CompareResult::Equal.into(),
            target: pb::compare::CompareTarget::Mod.into(),
            key: key.to_vec(),
            target_union: Some(pb::compare::TargetUnion::ModRevision(seen_mod_revision)),
            range_end: Vec::new(),
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: key.to_vec(),
                value: value.to_vec(),
                ..Default::default()
            })),
        }],
        failure: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            })),
        }],
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn the_swap_transaction_compares_the_mod_revision() {
        let txn = swap_request(b"pool", 42, b"v");
        let compare = &txn.compare[0];
        assert_eq!(compare.result(), pb::compare::CompareResult::Equal);
        assert_eq!(compare.target(), pb::compare::CompareTarget::Mod);
        assert_eq!(compare.target_union, Some(pb::compare::TargetUnion::ModRevision(42)));
        assert!(matches!(
            txn.success[0].request,
            Some(pb::request_op::Request::RequestPut(_))
        ));
        assert!(matches!(
            txn.failure[0].request,
            Some(pb::request_op::Request::RequestRange(_))
        ));
    }

    #[test]
    fn field_numbers_match_etcd_on_the_wire() {
        // etcd's PutRequest: key = 1 (bytes), value = 2 (bytes). Tag bytes: (1 << 3) | 2 = 0x0a,
        // (2 << 3) | 2 = 0x12.
        let bytes = pb::PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(bytes, [0x0a, 1, b'k', 0x12, 1, b'v']);
        // Compare.mod_revision = 6 (varint): tag (6 << 3) | 0 = 0x30; range_end = 64 would be a
        // two-byte tag, and is absent when empty.
        let bytes = pb::Compare {
            result: 0,
            target: 2,
            key: b"k".to_vec(),
            target_union: Some(pb::compare::TargetUnion::ModRevision(7)),
            range_end: Vec::new(),
        }
        .encode_to_vec();
        assert_eq!(bytes, [0x10, 2, 0x1a, 1, b'k', 0x30, 7]);
    }
}
