//! The ledger's indexes: one sled tree beside the events. Index entries are buffered in memory
//! ([`IndexBuffer`]) and written in large batches, as **posting lists**: one sled entry per key
//! per batch holding every seq of that key in the batch, not one entry per (key, event). sled
//! pays ~7 µs and a few hundred bytes of log per insert, whatever the insert; an event touches
//! about seven keys, so one insert per (key, event) made indexing cost 8× the event itself and
//! 3.6 KB of disk per event (measured, docs/benchmarks.md). Batched, a busy key (a node, an ENI,
//! the time index) costs one insert per batch.
//!
//! ```text
//!   tree "ledger_index"
//!   b'i' ip[4]           first_seq[8] ─▶ seqs      events touching an address (posting chunk)
//!   b'u' len[2] uid      first_seq[8] ─▶ seqs      … a pod, by UID
//!   b'p' len[2] ns/name  first_seq[8] ─▶ seqs      … a pod, by namespace/name
//!   b'n' len[2] node     first_seq[8] ─▶ seqs      … a node
//!   b'e' eni_ref[8]      first_seq[8] ─▶ seqs      … an ENI (secondary, trunk or branch)
//!   b's' len[2] sg       first_seq[8] ─▶ seqs      … a security group
//!   b't' at[8]           first_seq[8] ─▶ (at, seq)…  the first event of each command: time → seq
//!   b'x' len[2] eni_id                ─▶ eni_ref[8]  EC2's id → the server's handle
//!   b'b' ip[4] lease_id[8]            ─▶ binding     each binding of an address ([`BindingRecord`])
//!   b'w'                              ─▶ seq[8]      the watermark: events below it are in the tree
//! ```
//!
//! A posting chunk's value is its seqs, ascending, as LEB128 deltas. Every integer in a key is
//! big-endian, so sled's byte order is numeric order: a key's chunks are contiguous and in seq
//! order, and "the events of X from seq S" is a seek to the chunk holding S and a short scan.
//! Strings are length-prefixed, so no key's range contains another's. Ledger time is monotonic in
//! seq (`State::command_time`), which is what lets the `t` chunks turn a time into a seq.
//!
//! **Crash safety.** The events are durable (written with the applied position) before their
//! index entries are; the buffer holds the entries of events at or above the watermark. After a
//! crash the buffer is rebuilt by indexing the events from the watermark again: indexing is a
//! function of the events, so the rebuilt buffer is the lost one. Readers see the flushed tree
//! and the buffer together (every buffered seq is above every flushed one), under the buffer's
//! lock, which a flush holds while it writes.

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

    /// The key of this key's posting chunk whose first seq is `seq`.
    pub fn chunk(&self, seq: u64) -> Vec<u8> {
        chunk_key(&self.prefix(), seq)
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

fn chunk_key(prefix: &[u8], first_seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 8);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&first_seq.to_be_bytes());
    key
}

/// The key of a time chunk whose first command is at `at` with first event `seq`.
fn time_key(at: Timestamp, seq: u64) -> [u8; 17] {
    let mut key = [0; 17];
    key[0] = TIME;
    key[1..9].copy_from_slice(&at.to_be_bytes());
    key[9..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// The watermark's key.
const WATERMARK: &[u8] = b"w";

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn get_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut n: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        n |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// Encodes ascending numbers as LEB128 deltas.
pub fn encode_seqs(seqs: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(seqs.len() * 2);
    let mut previous = 0;
    for &seq in seqs {
        put_varint(&mut out, seq - previous);
        previous = seq;
    }
    out
}

/// Decodes [`encode_seqs`]; `None` if the bytes are not such a list.
pub fn decode_seqs(bytes: &[u8]) -> Option<Vec<u64>> {
    let mut seqs = Vec::new();
    let (mut at, mut previous) = (0, 0_u64);
    while at < bytes.len() {
        previous = previous.checked_add(get_varint(bytes, &mut at)?)?;
        seqs.push(previous);
    }
    Some(seqs)
}

fn encode_times(times: &[(Timestamp, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(times.len() * 4);
    let (mut at0, mut seq0) = (0, 0);
    for &(at, seq) in times {
        put_varint(&mut out, at - at0);
        put_varint(&mut out, seq - seq0);
        (at0, seq0) = (at, seq);
    }
    out
}

fn decode_times(bytes: &[u8]) -> Option<Vec<(Timestamp, u64)>> {
    let mut times = Vec::new();
    let (mut i, mut at, mut seq) = (0, 0_u64, 0_u64);
    while i < bytes.len() {
        at = at.checked_add(get_varint(bytes, &mut i)?)?;
        seq = seq.checked_add(get_varint(bytes, &mut i)?)?;
        times.push((at, seq));
    }
    Some(times)
}

/// The index entries of events not yet written to the tree: every seq in it is at or above the
/// watermark, and every seq in the tree below it.
#[derive(Debug, Default)]
pub struct IndexBuffer {
    postings: std::collections::HashMap<Vec<u8>, Vec<u64>>,
    times: Vec<(Timestamp, u64)>,
    records: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    events: usize,
    /// Events below this seq are in the tree (1: none yet).
    watermark: u64,
}

/// The buffer as the state machine and readers share it.
pub type SharedBuffer = std::sync::Arc<std::sync::RwLock<IndexBuffer>>;

/// Reads `buffer`, whether or not a writer panicked while holding it (the buffer is rebuilt from
/// the events on the next open anyway).
pub fn read(buffer: &SharedBuffer) -> std::sync::RwLockReadGuard<'_, IndexBuffer> {
    buffer.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes `buffer` (see [`read`]).
pub fn write(buffer: &SharedBuffer) -> std::sync::RwLockWriteGuard<'_, IndexBuffer> {
    buffer.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How many buffered events make a flush.
pub const FLUSH_EVERY: usize = 16_384;

impl IndexBuffer {
    /// An empty buffer for events from `watermark` on.
    pub fn new(watermark: u64) -> Self {
        Self {
            watermark: watermark.max(1),
            ..Self::default()
        }
    }

    /// Events below this seq are in the tree.
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// Buffered events.
    pub fn len(&self) -> usize {
        self.events
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// Adds the index entries of the event at `seq`. `first_of_command` marks the first event of
    /// a command (it gets a time entry).
    pub fn stage(&mut self, seq: u64, event: &Event, first_of_command: bool) {
        self.events += 1;
        for key in keys_of(event) {
            self.postings.entry(key.prefix()).or_default().push(seq);
        }
        if first_of_command {
            self.times.push((event.at, seq));
        }
        match &event.kind {
            EventKind::EniAttached { eni, eni_id, .. } => {
                self.records
                    .insert(eni_id_key(eni_id), Some(eni.to_be_bytes().to_vec()));
            }
            EventKind::IpBound { lease, .. } => {
                let record = BindingRecord::Bound {
                    seq,
                    bound_at: lease.bound_at,
                };
                self.records
                    .insert(binding_key(lease.ip, lease.id).to_vec(), Some(record.encode()));
            }
            EventKind::IpReleased { lease, .. } => {
                let record = BindingRecord::Released {
                    seq,
                    bound_at: lease.bound_at,
                    released_at: event.at,
                };
                self.records
                    .insert(binding_key(lease.ip, lease.id).to_vec(), Some(record.encode()));
            }
            _ => {}
        }
    }

    /// Writes everything buffered to `index` as posting chunks, with the watermark `next` (one
    /// past the last event staged), and empties the buffer. Called with the buffer's write lock
    /// held (or on a buffer no reader sees), so readers never see the entries twice or not at all.
    ///
    /// # Errors
    ///
    /// sled failed; the buffer is then empty, and the entries are rebuilt from the events above
    /// the stored watermark on the next open.
    pub fn write_to(&mut self, index: &sled::Tree, next: u64) -> sled::Result<()> {
        let mut batch = sled::Batch::default();
        self.drain_into(&mut batch, next);
        index.apply_batch(batch)
    }

    fn drain_into(&mut self, batch: &mut sled::Batch, next: u64) {
        for (prefix, seqs) in self.postings.drain() {
            if let Some(first) = seqs.first() {
                batch.insert(chunk_key(&prefix, *first), encode_seqs(&seqs));
            }
        }
        if let Some(&(at, seq)) = self.times.first() {
            batch.insert(&time_key(at, seq)[..], encode_times(&self.times));
        }
        self.times.clear();
        for (key, value) in std::mem::take(&mut self.records) {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        batch.insert(WATERMARK, &next.to_be_bytes()[..]);
        self.events = 0;
        self.watermark = next;
    }

    /// A point record (binding, ENI id) as buffered: `Some(None)` if buffered as removed.
    fn record(&self, key: &[u8]) -> Option<Option<&Vec<u8>>> {
        self.records.get(key).map(Option::as_ref)
    }
}

/// The watermark stored in `index` (1 if none).
///
/// # Errors
///
/// sled failed.
pub fn stored_watermark(index: &sled::Tree) -> sled::Result<u64> {
    Ok(index
        .get(WATERMARK)?
        .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(1))
}

/// The seqs of the events touching `key` in `[from, to)`, at most `limit` (and whether more
/// match), from the tree and the buffer.
///
/// # Errors
///
/// sled failed, or a chunk is not a list of seqs.
pub fn postings(
    index: &sled::Tree,
    buffer: &IndexBuffer,
    key: &Key,
    from: u64,
    to: u64,
    limit: usize,
) -> Result<(Vec<u64>, bool), String> {
    let prefix = key.prefix();
    let mut seqs = Vec::new();
    let push = |seq: u64, seqs: &mut Vec<u64>| -> bool {
        if seq < from || seq >= to {
            return true;
        }
        if seqs.len() == limit {
            return false;
        }
        seqs.push(seq);
        true
    };
    // The chunk holding `from` starts at or before it: the last chunk key at or below.
    let seek = chunk_key(&prefix, from);
    let start = match index.range(chunk_key(&prefix, 0)..=seek.clone()).next_back() {
        Some(kv) => kv.map_err(|e| e.to_string())?.0.to_vec(),
        None => seek,
    };
    for kv in index.range(start..chunk_key(&prefix, to)) {
        let (chunk, value) = kv.map_err(|e| e.to_string())?;
        let list = decode_seqs(&value).ok_or_else(|| format!("posting chunk {chunk:?} does not decode"))?;
        for seq in list {
            if !push(seq, &mut seqs) {
                return Ok((seqs, true));
            }
        }
    }
    if let Some(list) = buffer.postings.get(&prefix) {
        for &seq in list {
            if !push(seq, &mut seqs) {
                return Ok((seqs, true));
            }
        }
    }
    Ok((seqs, false))
}

/// The first seq whose event is at or after `at`, from the time chunks of `index` and the
/// buffer (one past `last_seq` if none is).
///
/// # Errors
///
/// sled failed, or a time chunk does not decode.
pub fn seq_at(index: &sled::Tree, buffer: &IndexBuffer, at: Timestamp, last_seq: u64) -> Result<u64, String> {
    let first_at_or_after = |value: &[u8]| -> Result<Option<u64>, String> {
        let times = decode_times(value).ok_or_else(|| "a time chunk does not decode".to_owned())?;
        Ok(times.into_iter().find(|(t, _)| *t >= at).map(|(_, seq)| seq))
    };
    // The last chunk starting before `at` may hold commands at or after it …
    let start = time_key(at, 0);
    if let Some(kv) = index.range(&time_key(0, 0)[..]..&start[..]).next_back() {
        let (_, value) = kv.map_err(|e| e.to_string())?;
        if let Some(seq) = first_at_or_after(&value)? {
            return Ok(seq);
        }
    }
    // … else the first chunk starting at or after it begins with the answer.
    if let Some(kv) = index.range(&start[..]..&time_key(u64::MAX, u64::MAX)[..]).next() {
        let (_, value) = kv.map_err(|e| e.to_string())?;
        if let Some(seq) = first_at_or_after(&value)? {
            return Ok(seq);
        }
    }
    Ok(buffer
        .times
        .iter()
        .find(|(t, _)| *t >= at)
        .map_or(last_seq + 1, |(_, seq)| *seq))
}

/// The point record at `key` (a binding, an ENI id), from the buffer or the tree.
///
/// # Errors
///
/// sled failed.
pub fn record(index: &sled::Tree, buffer: &IndexBuffer, key: &[u8]) -> sled::Result<Option<Vec<u8>>> {
    match buffer.record(key) {
        Some(value) => Ok(value.cloned()),
        None => Ok(index.get(key)?.map(|v| v.to_vec())),
    }
}

/// The binding records of `ip`, by lease id, from the tree and the buffer (the buffer's are
/// newer).
///
/// # Errors
///
/// sled failed.
pub fn binding_records(
    index: &sled::Tree,
    buffer: &IndexBuffer,
    ip: Ipv4Addr,
) -> sled::Result<std::collections::BTreeMap<Vec<u8>, Vec<u8>>> {
    let prefix = binding_prefix(ip);
    let mut records = std::collections::BTreeMap::new();
    for kv in index.scan_prefix(prefix) {
        let (key, value) = kv?;
        records.insert(key.to_vec(), value.to_vec());
    }
    for (key, value) in buffer.records.range(prefix.to_vec()..) {
        if !key.starts_with(&prefix) {
            break;
        }
        match value {
            Some(value) => records.insert(key.clone(), value.clone()),
            None => records.remove(key),
        };
    }
    Ok(records)
}

/// Rewrites the posting chunks of `prefix` (a [`Key::prefix`], or the time index's `b"t"`)
/// without the seqs below `horizon`, into `batch` (retention).
///
/// # Errors
///
/// sled failed, or a chunk does not decode.
pub fn trim_chunks(index: &sled::Tree, prefix: &[u8], horizon: u64, batch: &mut sled::Batch) -> Result<(), String> {
    let time = prefix == [TIME];
    for kv in index.scan_prefix(prefix) {
        let (key, value) = kv.map_err(|e| e.to_string())?;
        if key.len() != prefix.len() + if time { 16 } else { 8 } {
            continue;
        }
        let first = u64::from_be_bytes(key[key.len() - 8..].try_into().map_err(|_| "a short chunk key")?);
        if first >= horizon {
            break;
        }
        if time {
            let times = decode_times(&value).ok_or("a time chunk does not decode")?;
            let kept: Vec<_> = times.into_iter().filter(|(_, seq)| *seq >= horizon).collect();
            batch.remove(key.clone());
            if let Some(&(at, seq)) = kept.first() {
                batch.insert(&time_key(at, seq)[..], encode_times(&kept));
            }
        } else {
            let seqs = decode_seqs(&value).ok_or("a posting chunk does not decode")?;
            let kept: Vec<u64> = seqs.into_iter().filter(|seq| *seq >= horizon).collect();
            batch.remove(key.clone());
            if let Some(first) = kept.first() {
                batch.insert(chunk_key(prefix, *first), encode_seqs(&kept));
            }
        }
    }
    Ok(())
}

/// The time index's prefix, for [`trim_chunks`].
pub const TIME_PREFIX: &[u8] = &[TIME];

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
        let long = Key::Node("node-10".to_owned()).chunk(1);
        assert!(!long.starts_with(&short));
        assert!(Key::Node("node-1".to_owned()).chunk(5).starts_with(&short));
    }

    #[test]
    fn chunks_of_one_key_sort_by_seq_and_seq_lists_round_trip() {
        let key = Key::Ip(Ipv4Addr::new(100, 64, 0, 1));
        assert!(key.chunk(255) < key.chunk(256));
        assert!(time_key(1_000, 99) < time_key(1_001, 1));
        for seqs in [vec![], vec![1], vec![1, 2, 300, 70_000, u64::MAX / 2]] {
            assert_eq!(decode_seqs(&encode_seqs(&seqs)), Some(seqs));
        }
        let times = vec![(5, 1), (5, 3), (1_700_000_000_000, 40)];
        assert_eq!(decode_times(&encode_times(&times)), Some(times));
        assert_eq!(decode_seqs(&[0x80]), None, "a truncated varint");
    }
}
