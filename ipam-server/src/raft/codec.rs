//! How the Raft log and the state machine store values in sled: serde_json, with an error that
//! names the value that did not (de)serialize.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A value that does not encode, or stored bytes that do not decode.
#[derive(Debug, thiserror::Error)]
#[error("{what} does not (de)serialize: {source}")]
pub struct CodecError {
    /// Which value.
    pub what: &'static str,
    /// serde_json's complaint.
    pub source: serde_json::Error,
}

/// Encodes `value` (named `what` in errors).
pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, CodecError> {
    serde_json::to_vec(value).map_err(|source| CodecError { what, source })
}

/// Decodes `bytes` as a `T` (named `what` in errors).
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    serde_json::from_slice(bytes).map_err(|source| CodecError { what, source })
}
