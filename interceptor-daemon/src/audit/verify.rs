//! Offline verification of a log directory: a pure function of the files and,
//! optionally, the public key the auditor trusts.
//!
//! One sequential pass checks, in file order: each segment header (its own hash,
//! the sequence number in it against the file name, its link to the end of the
//! previous segment), each record (its own hash, its link, its sequence number, that
//! it decodes), each checkpoint (chain head, count, Merkle root over the records
//! since the previous checkpoint, link to the previous checkpoint, signer, Ed25519
//! signature) and each key rotation (signed by the key it replaces). The first
//! problem ends the pass and is reported with the segment file and the byte offset
//! of the header or record where it was found.
//!
//! Trust: a checkpoint signature covers the chain head, and the chain commits to
//! everything before it, so one valid checkpoint by a trusted key authenticates the
//! whole prefix. The trusted key may be any key of the log's rotation lineage, as
//! long as the last checkpoint is signed by it or by a key it rotated to. Without a
//! trusted key only integrity is shown (the signer is whoever the log names).
//! What no offline check can show is that the newest records were not removed after
//! the last checkpoint; the report gives the chain head and the unsigned tail so it
//! can be compared with a copy taken earlier.

use std::{fmt, path::Path};

use ed25519_dalek::{Signature, VerifyingKey};

use super::{
    format::{FrameError, Hash, Merkle, ZERO_HASH, decode_frame, decode_header, hex},
    keys,
    record::{self, Checkpoint, Record},
    writer::{file_name, list_segments},
};

/// What a successful verification covered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub segments: u64,
    pub first_segment: u64,
    pub last_segment: u64,
    /// Every record, checkpoints included.
    pub records: u64,
    pub access_records: u64,
    pub checkpoints: u64,
    pub key_rotations: u64,
    pub recoveries: u64,
    pub retention_events: u64,
    /// Records after the last checkpoint: chained, but not yet signed.
    pub unsigned_tail: u64,
    /// Hash of the last record.
    pub chain_head: Hash,
    /// The signing keys in the order the log used them.
    pub signers: Vec<[u8; 32]>,
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyError {
    /// Segment file name (empty when the problem is the directory itself).
    pub segment: String,
    /// Byte offset in that file of the header or record with the problem.
    pub offset: u64,
    pub reason: String,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segment.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(
                f,
                "{} at byte {}: {}",
                self.segment, self.offset, self.reason
            )
        }
    }
}

impl std::error::Error for VerifyError {}

fn fail<T>(segment: &str, offset: usize, reason: impl Into<String>) -> Result<T, VerifyError> {
    Err(VerifyError {
        segment: segment.to_string(),
        offset: offset as u64,
        reason: reason.into(),
    })
}

struct State {
    report: Report,
    head: Hash,
    expected_seq: Option<u64>,
    merkle: Merkle,
    /// Hash of the previous checkpoint, when known (unknown after retention).
    prev_checkpoint: Option<Hash>,
    current_key: Option<[u8; 32]>,
    /// Position of the first checkpoint, for key complaints found at the end.
    first_checkpoint_at: Option<(String, usize)>,
    last_checkpoint_signer: Option<[u8; 32]>,
    last_checkpoint_record: u64,
    /// Segments missing before the first one: (last missing, its last hash, file).
    gap: Option<(u64, Hash, String)>,
    gap_covered_at: Option<u64>,
}

/// Verify every segment in `dir`; see the module documentation.
pub fn verify_dir(dir: &Path, trusted: Option<&VerifyingKey>) -> Result<Report, VerifyError> {
    let segs = list_segments(dir).or_else(|e| fail("", 0, e.to_string()))?;
    let Some(&(first, _)) = segs.first() else {
        return fail("", 0, format!("no audit segments in {}", dir.display()));
    };
    let mut st = State {
        report: Report {
            first_segment: first,
            ..Report::default()
        },
        head: ZERO_HASH,
        expected_seq: None,
        merkle: Merkle::default(),
        prev_checkpoint: None,
        current_key: None,
        first_checkpoint_at: None,
        last_checkpoint_signer: None,
        last_checkpoint_record: 0,
        gap: None,
        gap_covered_at: None,
    };
    let mut prev_seq = None;
    for (seq, path) in &segs {
        let name = file_name(path);
        let buf = std::fs::read(path).or_else(|e| fail(&name, 0, format!("cannot read: {e}")))?;
        verify_segment(&mut st, *seq, prev_seq, &name, &buf)?;
        prev_seq = Some(*seq);
        st.report.segments += 1;
        st.report.last_segment = *seq;
    }
    finish(st, &segs[0].1, trusted)
}

fn verify_segment(
    st: &mut State,
    seq: u64,
    prev_seq: Option<u64>,
    name: &str,
    buf: &[u8],
) -> Result<(), VerifyError> {
    let header = decode_header(buf).or_else(|(off, reason)| fail(name, off as usize, reason))?;
    if header.segment != seq {
        return fail(
            name,
            10,
            format!(
                "header says segment {} but the file name says {seq} (segments renamed or reordered)",
                header.segment
            ),
        );
    }
    match prev_seq {
        None if seq == 0 => {
            if header.prev != ZERO_HASH {
                return fail(name, 18, "first segment does not start the chain");
            }
            st.prev_checkpoint = Some(ZERO_HASH);
            st.expected_seq = Some(0);
        }
        None => st.gap = Some((seq - 1, header.prev, name.to_string())),
        Some(p) => {
            if seq != p + 1 {
                return fail(
                    name,
                    0,
                    format!(
                        "segment {} is missing (the files go from {p} to {seq})",
                        p + 1
                    ),
                );
            }
            if header.prev != st.head {
                return fail(
                    name,
                    18,
                    format!("header does not chain to the end of segment {p}"),
                );
            }
        }
    }
    st.head = header.hash;
    let mut pos = header.len;
    while pos < buf.len() {
        let f = decode_frame(&buf[pos..]).or_else(|e| {
            let reason = match e {
                FrameError::Torn(r) => format!("{r}: torn write at the end (the log was not reopened after a crash) or truncation"),
                FrameError::Corrupt(r) => r,
            };
            fail(name, pos, reason)
        })?;
        if f.prev != st.head {
            return fail(name, pos, "record does not chain to the previous record");
        }
        if let Some(e) = st.expected_seq
            && f.seq != e
        {
            return fail(
                name,
                pos,
                format!("record number {} where {e} was expected", f.seq),
            );
        }
        let rec = record::decode(f.body).or_else(|r| fail(name, pos, r))?;
        match rec {
            Record::Checkpoint(cp) => {
                check_checkpoint(st, &cp, &f.prev, &f.hash, f.seq, name, pos)?
            }
            other => {
                match other {
                    Record::Access(_) => st.report.access_records += 1,
                    Record::KeyRotation(r) => {
                        let old = st.current_key.unwrap_or(r.old_key);
                        if r.old_key != old {
                            return fail(name, pos, "key rotation not made by the current key");
                        }
                        check_signature(&old, &r.signed_message(&f.prev), &r.signature)
                            .or_else(|why| fail(name, pos, format!("key rotation {why}")))?;
                        if st.current_key.is_none() {
                            st.report.signers.push(old);
                        }
                        st.current_key = Some(r.new_key);
                        st.report.signers.push(r.new_key);
                        st.report.key_rotations += 1;
                    }
                    Record::Recovery(_) => st.report.recoveries += 1,
                    Record::Retention(r) => {
                        st.report.retention_events += 1;
                        if let Some((missing, last, _)) = &st.gap
                            && st.gap_covered_at.is_none()
                            && r.removed
                                .iter()
                                .any(|s| s.segment == *missing && s.last_hash == *last)
                        {
                            st.gap_covered_at = Some(st.report.records);
                        }
                    }
                    Record::Checkpoint(_) => {}
                }
                st.merkle.push(&f.hash);
            }
        }
        st.head = f.hash;
        st.expected_seq = Some(f.seq + 1);
        st.report.records += 1;
        pos += f.len;
    }
    Ok(())
}

fn check_checkpoint(
    st: &mut State,
    cp: &Checkpoint,
    prev: &Hash,
    hash: &Hash,
    seq: u64,
    name: &str,
    pos: usize,
) -> Result<(), VerifyError> {
    if cp.record_count != seq {
        return fail(
            name,
            pos,
            format!(
                "checkpoint counts {} records but is record {seq}",
                cp.record_count
            ),
        );
    }
    if cp.chain_head != *prev {
        return fail(
            name,
            pos,
            "checkpoint chain head is not the previous record",
        );
    }
    if cp.leaf_count != st.merkle.count() || cp.merkle_root != st.merkle.root() {
        return fail(
            name,
            pos,
            format!(
                "checkpoint Merkle root does not match the {} records since the previous checkpoint",
                st.merkle.count()
            ),
        );
    }
    if let Some(p) = st.prev_checkpoint
        && p != cp.prev_checkpoint
    {
        return fail(
            name,
            pos,
            "checkpoint does not chain to the previous checkpoint",
        );
    }
    match st.current_key {
        Some(k) if k != cp.signer => {
            return fail(
                name,
                pos,
                format!(
                    "checkpoint signed by ed25519:{} but the log's key is ed25519:{} (no key rotation record)",
                    hex(&cp.signer),
                    hex(&k)
                ),
            );
        }
        Some(_) => {}
        None => {
            st.current_key = Some(cp.signer);
            st.report.signers.push(cp.signer);
        }
    }
    check_signature(&cp.signer, &cp.signed_message(), &cp.signature)
        .or_else(|why| fail(name, pos, format!("checkpoint {why}")))?;
    if st.first_checkpoint_at.is_none() {
        st.first_checkpoint_at = Some((name.to_string(), pos));
    }
    st.last_checkpoint_signer = Some(cp.signer);
    st.last_checkpoint_record = st.report.records;
    st.prev_checkpoint = Some(*hash);
    st.merkle.clear();
    st.report.checkpoints += 1;
    Ok(())
}

fn check_signature(key: &[u8; 32], msg: &[u8], sig: &[u8]) -> Result<(), String> {
    let vk =
        VerifyingKey::from_bytes(key).map_err(|_| "names an invalid public key".to_string())?;
    let sig = Signature::from_slice(sig).map_err(|_| "signature is malformed".to_string())?;
    vk.verify_strict(msg, &sig)
        .map_err(|_| format!("signature by ed25519:{} is invalid", hex(key)))
}

fn finish(
    mut st: State,
    first: &Path,
    trusted: Option<&VerifyingKey>,
) -> Result<Report, VerifyError> {
    let first_name = file_name(first);
    let Some((cp_file, cp_pos)) = st.first_checkpoint_at.clone() else {
        return fail(&first_name, 0, "the log has no signed checkpoint");
    };
    if let Some((missing, _, file)) = &st.gap
        && st
            .gap_covered_at
            .is_none_or(|at| at > st.last_checkpoint_record)
    {
        return fail(
            file,
            0,
            format!(
                "segments up to {missing} are missing and no signed retention record accounts for them"
            ),
        );
    }
    if let Some(k) = trusted {
        let k = k.to_bytes();
        let pos_of = |x: &[u8; 32]| st.report.signers.iter().position(|s| s == x);
        let trusted_at = pos_of(&k);
        let last_at = st.last_checkpoint_signer.as_ref().and_then(pos_of);
        match (trusted_at, last_at) {
            (Some(t), Some(l)) if t <= l => {}
            (Some(_), _) => {
                return fail(
                    &cp_file,
                    cp_pos,
                    format!(
                        "no checkpoint signed by the trusted key {} or a key it rotated to",
                        keys::public_text_bytes(&k)
                    ),
                );
            }
            (None, _) => {
                return fail(
                    &cp_file,
                    cp_pos,
                    format!(
                        "checkpoint signed by {}, which is not the trusted key {} (nor rotated from or to it)",
                        keys::public_text_bytes(&st.report.signers[0]),
                        keys::public_text_bytes(&k)
                    ),
                );
            }
        }
    }
    st.report.unsigned_tail = st.merkle.count();
    st.report.chain_head = st.head;
    Ok(st.report)
}
