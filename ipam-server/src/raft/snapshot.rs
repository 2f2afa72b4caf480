//! Snapshot files: the applied state *and* the event ledger, written and read as a stream, so a
//! replica that catches up through a snapshot (a new learner, a follower whose log was purged)
//! serves the same history as the others, and no side holds a whole snapshot in memory.
//!
//! ```text
//!   offset 0   "IPAMSNAP"                      magic, 8 bytes
//!              u32 be  version (1)
//!              u64 be  header length  ─┐
//!              cbor(Applied)          ◀┘ last_applied, membership, state
//!   records    [u64 be seq][u32 be length][json(Event)]    ledger order
//!   trailer    [8 × 0xFF][u32 be 8][u64 be number of records]    absent = truncated file
//! ```
//!
//! Files are written under a `.part` name, synced, then renamed, so a file with the final name
//! is always complete; the trailer also guards files that arrive over the network.

use std::fs::File;
use std::io::BufReader;
use std::io::BufWriter;
use std::io::Read;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

use crate::raft::state_machine::Applied;

const MAGIC: &[u8; 8] = b"IPAMSNAP";
const VERSION: u32 = 1;
const KEY_LEN: usize = 8;
const TRAILER_KEY: [u8; KEY_LEN] = [0xFF; KEY_LEN];

/// Why a snapshot file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file system failed.
    #[error("snapshot file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a snapshot of this format.
    #[error("snapshot file {path} is not valid: {why}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The state does not encode or decode.
    #[error("snapshot file {path}: state {why}")]
    State {
        /// The file.
        path: PathBuf,
        /// What failed.
        why: String,
    },
    /// sled failed while reading the events to write.
    #[error("reading the ledger for a snapshot: {0}")]
    Sled(#[from] sled::Error),
}

/// `Result` with [`SnapshotError`].
pub type Result<T, E = SnapshotError> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    }
}

fn format_error(path: &Path, why: impl Into<String>) -> SnapshotError {
    SnapshotError::Format {
        path: path.to_owned(),
        why: why.into(),
    }
}

/// Writes `applied` and `events` (key, value pairs in key order) to `path`, atomically: the data
/// goes to `path.part`, is synced, and is renamed. Returns the number of events written.
///
/// # Errors
///
/// The file system failed, the state does not encode, or an event could not be read.
pub fn write(
    path: &Path,
    applied: &Applied,
    events: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
) -> Result<u64> {
    let part = part_path(path);
    let file = File::create(&part).map_err(io(&part))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut header = Vec::new();
    ciborium::into_writer(applied, &mut header).map_err(|e| SnapshotError::State {
        path: part.clone(),
        why: format!("does not encode: {e}"),
    })?;
    out.write_all(MAGIC).map_err(io(&part))?;
    out.write_all(&VERSION.to_be_bytes()).map_err(io(&part))?;
    out.write_all(&(header.len() as u64).to_be_bytes()).map_err(io(&part))?;
    out.write_all(&header).map_err(io(&part))?;
    let mut count: u64 = 0;
    for kv in events {
        let (key, value) = kv?;
        if key.len() != KEY_LEN {
            return Err(format_error(&part, format!("an event key of {} bytes", key.len())));
        }
        let len = u32::try_from(value.len()).map_err(|_| format_error(&part, "an event over 4 GiB"))?;
        out.write_all(&key).map_err(io(&part))?;
        out.write_all(&len.to_be_bytes()).map_err(io(&part))?;
        out.write_all(&value).map_err(io(&part))?;
        count += 1;
    }
    out.write_all(&TRAILER_KEY).map_err(io(&part))?;
    out.write_all(&8u32.to_be_bytes()).map_err(io(&part))?;
    out.write_all(&count.to_be_bytes()).map_err(io(&part))?;
    let file = out.into_inner().map_err(|e| SnapshotError::Io {
        path: part.clone(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io(&part))?;
    drop(file);
    seal(&part, path)?;
    Ok(count)
}

/// Renames a complete, synced `.part` file to its final name and syncs the directory.
///
/// # Errors
///
/// The file system failed.
pub fn seal(part: &Path, path: &Path) -> Result<()> {
    std::fs::rename(part, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    }
    Ok(())
}

/// The temporary name of a file being written.
pub fn part_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".part");
    path.with_file_name(name)
}

/// An open snapshot file, positioned after its header.
#[derive(Debug)]
pub struct Reader {
    path: PathBuf,
    input: BufReader<File>,
    seen: u64,
    finished: bool,
}

/// One record of a snapshot file.
pub type Record = (Vec<u8>, Vec<u8>);

impl Reader {
    /// Opens `path` and reads its header: the applied state.
    ///
    /// # Errors
    ///
    /// The file cannot be read or is not a snapshot of this format.
    pub fn open(path: &Path) -> Result<(Applied, Self)> {
        let file = File::open(path).map_err(io(path))?;
        Self::from_file(file, path)
    }

    /// Reads the header of the snapshot open as `file` (named `path` in errors), from its
    /// start: a file already open keeps its data even if its name is removed meanwhile.
    ///
    /// # Errors
    ///
    /// The file cannot be read or is not a snapshot of this format.
    pub fn from_file(mut file: File, path: &Path) -> Result<(Applied, Self)> {
        std::io::Seek::rewind(&mut file).map_err(io(path))?;
        let mut input = BufReader::with_capacity(1 << 20, file);
        let mut magic = [0u8; 8];
        input
            .read_exact(&mut magic)
            .map_err(|_| format_error(path, "shorter than its magic"))?;
        if &magic != MAGIC {
            return Err(format_error(path, "wrong magic: not an ipam snapshot"));
        }
        let version = read_u32(&mut input, path)?;
        if version != VERSION {
            return Err(format_error(
                path,
                format!("version {version}; this build reads {VERSION}"),
            ));
        }
        let header_len = read_u64(&mut input, path)?;
        let mut header = (&mut input).take(header_len);
        let applied: Applied = ciborium::from_reader(&mut header).map_err(|e| SnapshotError::State {
            path: path.to_owned(),
            why: format!("does not decode: {e}"),
        })?;
        if header.limit() != 0 {
            return Err(format_error(path, "the header is longer than its state"));
        }
        Ok((
            applied,
            Self {
                path: path.to_owned(),
                input,
                seen: 0,
                finished: false,
            },
        ))
    }

    /// The next event record, or `None` after the trailer (which is checked).
    ///
    /// # Errors
    ///
    /// The file is truncated, or the trailer's count disagrees.
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        if self.finished {
            return Ok(None);
        }
        let mut key = vec![0u8; KEY_LEN];
        self.input
            .read_exact(&mut key)
            .map_err(|_| format_error(&self.path, format!("truncated after {} events (no trailer)", self.seen)))?;
        let len = read_u32(&mut self.input, &self.path)? as usize;
        let mut value = vec![0u8; len];
        self.input
            .read_exact(&mut value)
            .map_err(|_| format_error(&self.path, format!("truncated in event {}", self.seen)))?;
        if key == TRAILER_KEY {
            let count = value
                .as_slice()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| format_error(&self.path, "a malformed trailer"))?;
            if count != self.seen {
                return Err(format_error(
                    &self.path,
                    format!("the trailer counts {count} events, the file holds {}", self.seen),
                ));
            }
            self.finished = true;
            return Ok(None);
        }
        self.seen += 1;
        Ok(Some((key, value)))
    }
}

fn read_u32(input: &mut impl Read, path: &Path) -> Result<u32> {
    let mut bytes = [0u8; 4];
    input
        .read_exact(&mut bytes)
        .map_err(|_| format_error(path, "truncated"))?;
    Ok(u32::from_be_bytes(bytes))
}

fn read_u64(input: &mut impl Read, path: &Path) -> Result<u64> {
    let mut bytes = [0u8; 8];
    input
        .read_exact(&mut bytes)
        .map_err(|_| format_error(path, "truncated"))?;
    Ok(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ipam-snapshot-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        dir
    }

    fn events(n: u32) -> Vec<sled::Result<(sled::IVec, sled::IVec)>> {
        (0..n)
            .map(|i| {
                let key = crate::raft::state_machine::event_key(u64::from(i) + 1);
                Ok((
                    sled::IVec::from(&key[..]),
                    sled::IVec::from(format!("{{\"n\":{i}}}").as_bytes()),
                ))
            })
            .collect()
    }

    #[test]
    fn a_written_file_reads_back_state_and_every_event() {
        let dir = temp("roundtrip");
        let path = dir.join("s.snap");
        let applied = Applied::default();
        let written = write(&path, &applied, events(1000).into_iter()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(written, 1000);
        assert!(!part_path(&path).exists(), "the .part file is renamed");
        let (read, mut reader) = Reader::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read, applied);
        let mut n = 0;
        while let Some((key, value)) = reader.next_record().unwrap_or_else(|e| panic!("{e}")) {
            assert_eq!(key, crate::raft::state_machine::event_key(n + 1).to_vec());
            assert_eq!(value, format!("{{\"n\":{n}}}").into_bytes());
            n += 1;
        }
        assert_eq!(n, 1000);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_truncated_or_foreign_file_is_refused_with_a_reason() {
        let dir = temp("truncated");
        let path = dir.join("s.snap");
        write(&path, &Applied::default(), events(10).into_iter()).unwrap_or_else(|e| panic!("{e}"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        let cut = dir.join("cut.snap");
        std::fs::write(&cut, &bytes[..bytes.len() - 30]).unwrap_or_else(|e| panic!("{e}"));
        let (_, mut reader) = Reader::open(&cut).unwrap_or_else(|e| panic!("{e}"));
        let error = loop {
            match reader.next_record() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("a truncated file must not end cleanly"),
                Err(e) => break e.to_string(),
            }
        };
        assert!(error.contains("truncated"), "{error}");
        let foreign = dir.join("foreign.snap");
        std::fs::write(&foreign, b"{\"json\": true}").unwrap_or_else(|e| panic!("{e}"));
        let error = Reader::open(&foreign).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("magic"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
