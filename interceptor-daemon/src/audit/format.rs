//! On-disk encoding of audit entries (format version 1).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const FORMAT_VERSION: u16 = 1;
/// Largest frame accepted when reading (a record is a few KiB at most).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// One audited operation or connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Record {
    pub time_ns: u64,
    pub node: String,
    /// `namespace/service-account`, empty when unidentified.
    pub identity: String,
    /// How the identity was established (`standalone`, `tokenreview`).
    pub identity_method: String,
    pub claims: Vec<(String, String)>,
    pub pod_uid: String,
    pub target: String,
    pub protocol: String,
    /// What was attempted, described without literals.
    pub operation: String,
    /// `allow`, `deny`, ... .
    pub decision: String,
    pub rule: String,
    pub approval: Option<String>,
    /// Rows affected or the error, when known.
    pub outcome: Option<String>,
    pub duration_us: u64,
    pub session: u64,
    pub connection: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// First entry of every segment.
    SegmentStart {
        segment: u64,
        format: u16,
        node: String,
        public_key: [u8; 32],
    },
    Record(Box<Record>),
    /// Signed over (head, count, time): the chain up to here is authentic.
    Checkpoint {
        head: [u8; 32],
        count: u64,
        time_ns: u64,
        signature: Vec<u8>,
    },
    /// A torn tail was cut when the log was opened.
    Recovered {
        segment: u64,
        offset: u64,
        bytes_cut: u64,
        time_ns: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub prev: [u8; 32],
    pub event: Event,
}

pub fn entry_hash(payload: &[u8]) -> [u8; 32] {
    Sha256::digest(payload).into()
}

/// What a checkpoint signature covers.
pub fn checkpoint_message(head: &[u8; 32], count: u64, time_ns: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(b"interceptor-audit-checkpoint-v1");
    m.extend_from_slice(head);
    m.extend_from_slice(&count.to_le_bytes());
    m.extend_from_slice(&time_ns.to_le_bytes());
    m
}

pub fn encode_payload(e: &Entry) -> Vec<u8> {
    // Serialising plain data into a Vec cannot fail.
    use bincode::Options as _;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .serialize(e)
        .unwrap_or_default()
}

pub fn decode_payload(p: &[u8]) -> Result<Entry, bincode::Error> {
    use bincode::Options as _;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .reject_trailing_bytes()
        .with_limit(MAX_FRAME as u64)
        .deserialize(p)
}

/// Appends `len | payload` to `out`.
pub fn push_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The payload of the frame at the start of `buf` and the frame's length.
pub fn read_frame(buf: &[u8]) -> Option<(&[u8], usize)> {
    let len = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    if len == 0 || len > MAX_FRAME {
        return None;
    }
    Some((buf.get(4..4 + len)?, 4 + len))
}
