//! Signed, tamper-evident audit log on node storage.
//!
//! # Format
//! The log is a directory of segment files `seg-<seq:020>.log`. A segment starts
//! with a header frame and holds length-prefixed frames:
//!
//! ```text
//! frame   = len:u32le  payload[len]
//! payload = bincode(Entry { seq, prev, event })     (format version 1)
//! hash(frame) = SHA-256(payload)
//! ```
//!
//! Every entry names the hash of the entry before it (`prev`), across segment
//! boundaries, so removing, reordering or editing anything breaks the chain. The
//! first entry of every segment is a `SegmentStart` event naming the segment's
//! sequence number, so a missing or swapped segment file is caught even at a
//! boundary.
//!
//! Every `checkpoint_every` entries (and on clean shutdown) a `Checkpoint`
//! entry is signed with the node's Ed25519 key over the chain head, the entry
//! count and the time. An auditor who holds only the public key verifies
//! everything offline ([`verify`]); entries after the last checkpoint are
//! reported as unsigned.
//!
//! # Durability
//! Appends go through one writer task that batches whatever is queued, writes
//! it, `fdatasync`s, and only then acknowledges each entry (group commit). On
//! open, a torn tail (a partial frame, or a frame whose payload does not decode
//! or does not chain) is cut off and a signed `Recovered` entry records what was
//! cut. Acknowledged entries were synced, so they are never in a torn tail.
//!
//! A query index (sled) is derived data built from these segments; it is not
//! part of the evidence.

pub mod cli;
mod format;
mod key;
mod writer;

pub use format::{Entry, Event, FORMAT_VERSION, Record};
pub use key::NodeKey;
pub use writer::{AuditLog, Options, Receipt};

use std::path::{Path, PathBuf};

use format::{decode_payload, entry_hash, read_frame};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("audit log: {0}")]
    Corrupt(String),
    #[error("the audit writer has stopped")]
    Closed,
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.into(),
        source,
    }
}

/// The segment files of a log directory, in sequence order.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("seg-")
            .and_then(|s| s.strip_suffix(".log"))
            && let Ok(seq) = n.parse::<u64>()
        {
            v.push((seq, e.path()));
        }
    }
    v.sort();
    Ok(v)
}

/// Result of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub segments: usize,
    pub entries: u64,
    pub checkpoints: u64,
    /// Entries after the last checkpoint (chained but not yet signed).
    pub unsigned_tail: u64,
    pub recoveries: u64,
}

/// The first problem found, with its place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{segment} at byte {offset}: {reason}")]
pub struct VerifyFailure {
    pub segment: String,
    pub offset: u64,
    pub reason: String,
}

/// Verifies a whole log directory against a public key.
pub fn verify(
    dir: &Path,
    pubkey: &ed25519_dalek::VerifyingKey,
) -> Result<VerifyReport, VerifyFailure> {
    let fail = |segment: &str, offset: u64, reason: String| VerifyFailure {
        segment: segment.into(),
        offset,
        reason,
    };
    let segs = segments(dir).map_err(|e| fail(&dir.display().to_string(), 0, e.to_string()))?;
    if segs.is_empty() {
        return Err(fail(
            &dir.display().to_string(),
            0,
            "no segment files".into(),
        ));
    }
    let mut prev = [0u8; 32];
    let mut next_seq = 0u64;
    let mut report = VerifyReport {
        segments: segs.len(),
        entries: 0,
        checkpoints: 0,
        unsigned_tail: 0,
        recoveries: 0,
    };
    for (expected_segment, (seg_no, path)) in (segs[0].0..).zip(segs.iter()) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if *seg_no != expected_segment {
            return Err(fail(
                &name,
                0,
                format!("segment {expected_segment} is missing (found {seg_no} next)"),
            ));
        }
        let data = std::fs::read(path).map_err(|e| fail(&name, 0, e.to_string()))?;
        let mut off = 0usize;
        let mut first = true;
        // Where the previous entry starts: a broken link means that entry, or
        // this one's `prev`, was altered, so report the earlier place.
        let mut prev_off = 0u64;
        while off < data.len() {
            let (payload, len) = read_frame(&data[off..])
                .ok_or_else(|| fail(&name, off as u64, "truncated frame".into()))?;
            let entry = decode_payload(payload)
                .map_err(|e| fail(&name, off as u64, format!("undecodable entry: {e}")))?;
            if entry.seq != next_seq {
                return Err(fail(
                    &name,
                    off as u64,
                    format!("entry {} where {next_seq} was expected", entry.seq),
                ));
            }
            if entry.prev != prev {
                let at = if first { off as u64 } else { prev_off };
                return Err(fail(
                    &name,
                    at,
                    format!(
                        "entry {} does not chain to the entry before it (one of them was altered)",
                        entry.seq
                    ),
                ));
            }
            if first {
                match &entry.event {
                    Event::SegmentStart { segment, .. } if segment == seg_no => {}
                    _ => {
                        return Err(fail(
                            &name,
                            off as u64,
                            format!("segment {seg_no} does not start with its own header"),
                        ));
                    }
                }
                first = false;
            }
            let hash = entry_hash(payload);
            match &entry.event {
                Event::Checkpoint {
                    head,
                    count,
                    time_ns,
                    signature,
                } => {
                    if *head != prev || *count != entry.seq {
                        return Err(fail(
                            &name,
                            off as u64,
                            "checkpoint does not describe the chain before it".into(),
                        ));
                    }
                    let msg = format::checkpoint_message(head, *count, *time_ns);
                    let sig = <[u8; 64]>::try_from(signature.as_slice())
                        .map(|b| ed25519_dalek::Signature::from_bytes(&b))
                        .map_err(|_| {
                            fail(
                                &name,
                                off as u64,
                                "checkpoint signature is not 64 bytes".into(),
                            )
                        })?;
                    pubkey.verify_strict(&msg, &sig).map_err(|_| {
                        fail(
                            &name,
                            off as u64,
                            "checkpoint signature does not verify with this public key".into(),
                        )
                    })?;
                    report.checkpoints += 1;
                    report.unsigned_tail = 0;
                }
                Event::Recovered { .. } => {
                    report.recoveries += 1;
                    report.unsigned_tail += 1;
                }
                _ => report.unsigned_tail += 1,
            }
            prev = hash;
            prev_off = off as u64;
            next_seq += 1;
            report.entries += 1;
            off += len;
        }
        if first {
            return Err(fail(&name, 0, "empty segment".into()));
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests;
