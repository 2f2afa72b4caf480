//! The ledger's indexes: one sled tree beside the events, written in the same transaction as the
//! events they point at, so a query never sees an event without its index entries or the reverse.
//!
//! ```text
//!   tree "ledger_index"
//!   b'i' ip[4]           seq[8]  ─▶ ∅              events touching an address
//!   b'u' len[2] uid      seq[8]  ─▶ ∅              … a pod, by UID
//!   b'p' len[2] ns/name  seq[8]  ─▶ ∅              … a pod, by namespace/name
//!   b'n' len[2] node     seq[8]  ─▶ ∅              … a node
//!   b'e' eni_ref[8]      seq[8]  ─▶ ∅              … an ENI (secondary, trunk or branch)
//!   b's' len[2] sg       seq[8]  ─▶ ∅              … a security group
//!   b't' at[8]           seq[8]  ─▶ ∅              the first event of each command: time → seq
//!   b'x' len[2] eni_id           ─▶ eni_ref[8]     EC2's id → the server's handle
//!   b'b' ip[4] lease_id[8]       ─▶ binding        each binding of an address (see [`BindingRecord`])
//! ```
//!
//! Every integer is big-endian, so sled's byte order is numeric order: the events of one key are
//! a contiguous range in seq order, and "the events of X between two times" is one seek to the
//! first and a short scan. Strings are length-prefixed, so no key is a prefix of another key's
//! entries. Ledger time is monotonic in seq (`State::command_time`), which is what lets the `t`
//! entries turn a time into a seq.
//!
//! Writing never reads: every entry is a blind insert derived from the event alone (a release
//! overwrites its binding's record, whose key it knows from the lease it carries), so indexing
//! costs inserts in the batch the events go in, not lookups.

use std::net::Ipv4Addr;

use ipam_core::Event;
use ipam_core::EventKind;
use ipam_core::ids::EniRef;
use ipam_core::ids::LeaseId;
use ipam_core::ids::Timestamp;

/// The sled tree the indexes live in.
pub const INDEX_TREE: &str = "ledger_index";

const IP: u8 = b'i';
const POD_UID: u8 = b'u';
const POD_NAME: u8 = b'p';
const NODE: u8 = b'n';
const ENI: u8 = b'e';
const SECURITY_GROUP: u8 = b's';
const TIME: u8 = b't';
const ENI_ID: u8 = b'x';
const BINDING: u8 = b'b';

/// A key the ledger finds events by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// An address.
    Ip(Ipv4Addr),
    /// A pod by UID.
    PodUid(String),
    /// A pod by namespace and name (every pod that ever had that name).
    PodName {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A node.
    Node(String),
    /// An ENI by the server's handle (EC2 ids are resolved to handles first).
    Eni(EniRef),
    /// A security group.
    SecurityGroup(String),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip(ip) => write!(f, "ip {ip}"),
            Self::PodUid(uid) => write!(f, "pod uid {uid}"),
            Self::PodName { namespace, name } => write!(f, "pod {namespace}/{name}"),
            Self::Node(node) => write!(f, "node {node}"),
            Self::Eni(eni) => write!(f, "eni #{eni}"),
            Self::SecurityGroup(sg) => write!(f, "security group {sg}"),
        }
    }
}

fn push_str(key: &mut Vec<u8>, s: &str) {
    // Names are bounded far below 64 KiB by validation (DNS names, UIDs, EC2 ids); a longer one
    // is cut rather than allowed to break the layout.
    let bytes = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(bytes);
}

impl Key {
    /// The prefix every index entry of this key starts with; the entry adds the seq.
    pub fn prefix(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(24);
        match self {
            Self::Ip(ip) => {
                key.push(IP);
                key.extend_from_slice(&ip.octets());
            }
            Self::PodUid(uid) => {
                key.push(POD_UID);
                push_str(&mut key, uid);
            }
            Self::PodName { namespace, name } => {
                key.push(POD_NAME);
                push_str(&mut key, &format!("{namespace}/{name}"));
            }
            Self::Node(node) => {
                key.push(NODE);
                push_str(&mut key, node);
            }
            Self::Eni(eni) => {
                key.push(ENI);
                key.extend_from_slice(&eni.to_be_bytes());
            }
            Self::SecurityGroup(sg) => {
                key.push(SECURITY_GROUP);
                push_str(&mut key, sg);
            }
        }
        key
    }

    /// The index entry of this key for the event at `seq`.
    pub fn entry(&self, seq: u64) -> Vec<u8> {
        let mut key = self.prefix();
        key.extend_from_slice(&seq.to_be_bytes());
        key
    }
}

/// The keys an event is indexed under (each once, in a fixed order).
pub fn keys_of(event: &Event) -> Vec<Key> {
    let t = event.kind.touches();
    let mut keys: Vec<Key> = Vec::with_capacity(4 + t.ips.len() + t.security_groups.len());
    let mut ips = t.ips.clone();
    ips.sort_unstable();
    ips.dedup();
    keys.extend(ips.into_iter().map(Key::Ip));
    if let Some(owner) = t.owner {
        keys.push(Key::PodUid(owner.uid.clone()));
        keys.push(Key::PodName {
            namespace: owner.namespace.clone(),
            name: owner.name.clone(),
        });
    }
    if let Some(node) = t.node {
        keys.push(Key::Node(node.to_owned()));
    }
    if let Some(eni) = t.eni {
        keys.push(Key::Eni(eni));
    }
    let mut groups: Vec<&String> = t.security_groups.iter().collect();
    groups.sort_unstable();
    groups.dedup();
    keys.extend(groups.into_iter().map(|sg| Key::SecurityGroup(sg.clone())));
    keys
}

/// The time entry of a command whose first event is `seq`.
pub fn time_entry(at: Timestamp, seq: u64) -> [u8; 17] {
    let mut key = [0; 17];
    key[0] = TIME;
    key[1..9].copy_from_slice(&at.to_be_bytes());
    key[9..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// Where the time entries at or after `at` start.
pub fn time_seek(at: Timestamp) -> [u8; 9] {
    let mut key = [0; 9];
    key[0] = TIME;
    key[1..].copy_from_slice(&at.to_be_bytes());
    key
}

/// The seq in a time entry.
pub fn seq_of_time_entry(key: &[u8]) -> Option<u64> {
    (key.len() == 17 && key[0] == TIME)
        .then(|| key[9..].try_into().ok().map(u64::from_be_bytes))
        .flatten()
}

/// The first seq whose event is at or after `at`, from the time entries in `index` (one past
/// `last_seq` if none is).
///
/// # Errors
///
/// sled failed.
pub fn seq_at(index: &sled::Tree, at: Timestamp, last_seq: u64) -> sled::Result<u64> {
    if let Some(kv) = index.range(&time_seek(at)[..]..).next() {
        let (key, _) = kv?;
        if let Some(seq) = seq_of_time_entry(&key) {
            return Ok(seq);
        }
    }
    Ok(last_seq + 1)
}

/// The key mapping EC2's id of an ENI to the server's handle.
pub fn eni_id_key(eni_id: &str) -> Vec<u8> {
    let mut key = vec![ENI_ID];
    push_str(&mut key, eni_id);
    key
}

/// The prefix of an address's binding records.
pub fn binding_prefix(ip: Ipv4Addr) -> [u8; 5] {
    let mut key = [0; 5];
    key[0] = BINDING;
    key[1..].copy_from_slice(&ip.octets());
    key
}

/// The key of one binding's record.
pub fn binding_key(ip: Ipv4Addr, lease: LeaseId) -> [u8; 13] {
    let mut key = [0; 13];
    key[..5].copy_from_slice(&binding_prefix(ip));
    key[5..].copy_from_slice(&lease.to_be_bytes());
    key
}

/// One binding of an address, as its index record keeps it: enough to decide whether it was
/// live at an instant without reading events, and the seq of the event that tells the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingRecord {
    /// Still bound; `seq` is the `IpBound` event.
    Bound {
        /// The `IpBound` event.
        seq: u64,
        /// When it was bound.
        bound_at: Timestamp,
    },
    /// Released; `seq` is the `IpReleased` event (which carries the whole lease).
    Released {
        /// The `IpReleased` event.
        seq: u64,
        /// When it was bound.
        bound_at: Timestamp,
        /// When it was released.
        released_at: Timestamp,
    },
}

impl BindingRecord {
    /// The event that tells this binding's story.
    pub fn seq(&self) -> u64 {
        match self {
            Self::Bound { seq, .. } | Self::Released { seq, .. } => *seq,
        }
    }

    /// When it was bound.
    pub fn bound_at(&self) -> Timestamp {
        match self {
            Self::Bound { bound_at, .. } | Self::Released { bound_at, .. } => *bound_at,
        }
    }

    /// When it was released, if it was.
    pub fn released_at(&self) -> Option<Timestamp> {
        match self {
            Self::Bound { .. } => None,
            Self::Released { released_at, .. } => Some(*released_at),
        }
    }

    /// Whether the binding held its address at `at` (bound at or before, not released by then).
    pub fn live_at(&self, at: Timestamp) -> bool {
        self.bound_at() <= at && self.released_at().is_none_or(|released| released > at)
    }

    /// The stored form: a tag byte, then the numbers big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut value = Vec::with_capacity(25);
        match self {
            Self::Bound { seq, bound_at } => {
                value.push(0);
                value.extend_from_slice(&seq.to_be_bytes());
                value.extend_from_slice(&bound_at.to_be_bytes());
            }
            Self::Released {
                seq,
                bound_at,
                released_at,
            } => {
                value.push(1);
                value.extend_from_slice(&seq.to_be_bytes());
                value.extend_from_slice(&bound_at.to_be_bytes());
                value.extend_from_slice(&released_at.to_be_bytes());
            }
        }
        value
    }

    /// Reads the stored form back; `None` if it is not one.
    pub fn decode(value: &[u8]) -> Option<Self> {
        let number = |at: usize| value.get(at..at + 8)?.try_into().ok().map(u64::from_be_bytes);
        match (value.first()?, value.len()) {
            (0, 17) => Some(Self::Bound {
                seq: number(1)?,
                bound_at: number(9)?,
            }),
            (1, 25) => Some(Self::Released {
                seq: number(1)?,
                bound_at: number(9)?,
                released_at: number(17)?,
            }),
            _ => None,
        }
    }
}

/// Adds the index entries of the event at `seq` to `batch`. `first_of_command` marks the first
/// event of a command (it gets the time entry).
pub fn stage(batch: &mut sled::Batch, seq: u64, event: &Event, first_of_command: bool) {
    for key in keys_of(event) {
        batch.insert(key.entry(seq), &[][..]);
    }
    if first_of_command {
        batch.insert(&time_entry(event.at, seq)[..], &[][..]);
    }
    match &event.kind {
        EventKind::EniAttached { eni, eni_id, .. } => {
            batch.insert(eni_id_key(eni_id), &eni.to_be_bytes()[..]);
        }
        EventKind::IpBound { lease, .. } => {
            let record = BindingRecord::Bound {
                seq,
                bound_at: lease.bound_at,
            };
            batch.insert(&binding_key(lease.ip, lease.id)[..], record.encode());
        }
        EventKind::IpReleased { lease, .. } => {
            let record = BindingRecord::Released {
                seq,
                bound_at: lease.bound_at,
                released_at: event.at,
            };
            batch.insert(&binding_key(lease.ip, lease.id)[..], record.encode());
        }
        _ => {}
    }
}

/// Adds the removal of the event at `seq`'s index entries to `batch` (retention). The binding
/// record goes with the release that ended it; a bind's record is the release's by then.
pub fn unstage(batch: &mut sled::Batch, seq: u64, event: &Event) {
    for key in keys_of(event) {
        batch.remove(key.entry(seq));
    }
    batch.remove(&time_entry(event.at, seq)[..]);
    if let EventKind::IpReleased { lease, .. } = &event.kind {
        batch.remove(&binding_key(lease.ip, lease.id)[..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_records_round_trip_and_tell_liveness() {
        let bound = BindingRecord::Bound { seq: 7, bound_at: 100 };
        let released = BindingRecord::Released {
            seq: 9,
            bound_at: 100,
            released_at: 200,
        };
        for record in [bound, released] {
            assert_eq!(BindingRecord::decode(&record.encode()), Some(record));
        }
        assert!(!bound.live_at(99) && bound.live_at(100) && bound.live_at(u64::MAX));
        assert!(released.live_at(100) && released.live_at(199) && !released.live_at(200));
        assert_eq!(BindingRecord::decode(&[2; 17]), None);
        assert_eq!(BindingRecord::decode(&[0; 3]), None);
    }

    #[test]
    fn string_keys_are_length_prefixed_so_one_node_name_never_prefixes_another() {
        let short = Key::Node("node-1".to_owned()).prefix();
        let long = Key::Node("node-10".to_owned()).entry(1);
        assert!(!long.starts_with(&short));
        assert!(Key::Node("node-1".to_owned()).entry(5).starts_with(&short));
    }

    #[test]
    fn entries_of_one_key_sort_by_seq_and_time_entries_by_time() {
        let key = Key::Ip(Ipv4Addr::new(100, 64, 0, 1));
        assert!(key.entry(255) < key.entry(256));
        assert!(time_entry(1_000, 99) < time_entry(1_001, 1));
        assert!(time_seek(1_001)[..] <= time_entry(1_001, 0)[..9]);
        assert_eq!(seq_of_time_entry(&time_entry(5, 42)), Some(42));
    }
}
