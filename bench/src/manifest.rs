//! What `generate` leaves for the later phases: how many events, over what time, how fast they
//! were written, and samples of the keys that exist (so questions ask about real addresses and
//! pods).

use std::net::Ipv4Addr;
use std::path::Path;

use ipam_core::ids::Timestamp;
use serde::Deserialize;
use serde::Serialize;

use crate::Error;
use crate::Result;
use crate::rng::Rng;

/// A pod as the ledger keys it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodKey {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its UID.
    pub uid: String,
}

/// Keys sampled from the bindings made (reservoir sampling: each binding equally likely, so an
/// address or a name that was bound more often is picked more often).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Samples {
    /// Addresses that were bound.
    pub ips: Vec<Ipv4Addr>,
    /// Pods that were bound.
    pub pods: Vec<PodKey>,
}

/// How the write phase went.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WriteStats {
    /// Whether the ledger was indexed.
    pub index: bool,
    /// Raft entries applied (commands, including refused and coalesced ones).
    pub entries: u64,
    /// `apply` calls.
    pub batches: u64,
    /// Commands the domain refused (no warm address yet, a coalesced heartbeat is not one).
    pub refused: u64,
    /// Wall time of the whole run (simulation, applying, final flush), seconds.
    pub wall_secs: f64,
    /// Time spent inside `StateMachine::apply` plus the final flush, seconds.
    pub apply_secs: f64,
    /// Events per second of wall time.
    pub events_per_sec: f64,
    /// Events per second of apply time: the write path's own throughput.
    pub apply_events_per_sec: f64,
}

/// The manifest file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    /// The simulation's seed.
    pub seed: u64,
    /// Nodes simulated.
    pub nodes: usize,
    /// Events in the ledger (seq 1 ..= events).
    pub events: u64,
    /// The first event's time (ms since the epoch).
    pub first_at: Timestamp,
    /// The last event's time.
    pub last_at: Timestamp,
    /// The write phase.
    pub write: WriteStats,
    /// Sampled keys.
    pub samples: Samples,
}

impl Manifest {
    /// Writes the manifest as JSON.
    ///
    /// # Errors
    ///
    /// The file cannot be written.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(|source| Error::Manifest {
            path: path.to_owned(),
            source,
        })?;
        std::fs::write(path, json).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads a manifest.
    ///
    /// # Errors
    ///
    /// The file cannot be read or is not a manifest.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Manifest {
            path: path.to_owned(),
            source,
        })
    }
}

/// Reservoir sampling (Vitter's algorithm R) of up to `capacity` items.
#[derive(Debug, Clone)]
pub struct Reservoir<T> {
    capacity: usize,
    seen: u64,
    items: Vec<T>,
}

impl<T> Reservoir<T> {
    /// An empty reservoir of `capacity`.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            seen: 0,
            items: Vec::with_capacity(capacity),
        }
    }

    /// Offers one item.
    pub fn offer(&mut self, rng: &mut Rng, item: T) {
        self.seen += 1;
        if self.items.len() < self.capacity {
            self.items.push(item);
        } else {
            let j = rng.below(self.seen) as usize;
            if j < self.capacity {
                self.items[j] = item;
            }
        }
    }

    /// The sample.
    pub fn into_items(self) -> Vec<T> {
        self.items
    }
}
