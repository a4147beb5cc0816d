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

use std::{
    fmt,
    path::{Path, PathBuf},
};

use ed25519_dalek::{Signature, VerifyingKey};

use super::{
    format::{self, FrameError, Hash, Header, Merkle, ZERO_HASH, decode_frame, decode_header, hex},
    keys,
    record::{self, Checkpoint, KeyRotation, Record, RecordView, Retention},
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
    /// Recorded responses (format version 2).
    pub responses: u64,
    /// Segments the retention records say were removed (before the first on disk).
    pub pruned_segments: u64,
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
    /// An excerpt (an evidence package) may start after the first segment.
    excerpt: bool,
}

/// Verify every segment in `dir`; see the module documentation.
pub fn verify_dir(dir: &Path, trusted: Option<&VerifyingKey>) -> Result<Report, VerifyError> {
    verify_segments(dir, trusted, false)
}

/// Verify consecutive segments cut out of a log (an evidence package): like
/// [`verify_dir`], except that segments before the first one may be missing without
/// a retention record. Segments start right after a checkpoint, so the first
/// checkpoint's Merkle root still covers every record since the excerpt began.
pub fn verify_excerpt(dir: &Path, trusted: Option<&VerifyingKey>) -> Result<Report, VerifyError> {
    verify_segments(dir, trusted, true)
}

fn verify_segments(
    dir: &Path,
    trusted: Option<&VerifyingKey>,
    excerpt: bool,
) -> Result<Report, VerifyError> {
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
        excerpt,
    };
    // Segments are scanned (hashes, decoding) in parallel, a window at a time, while
    // the previous window is checked in order (links, Merkle roots, signatures).
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let windows: Vec<&[(u64, PathBuf)]> = segs.chunks(threads).collect();
    std::thread::scope(|scope| {
        let spawn = |w: &[(u64, PathBuf)]| -> Vec<_> {
            w.iter()
                .map(|(_, p)| {
                    let p = p.clone();
                    scope.spawn(move || scan_segment(&p))
                })
                .collect()
        };
        let mut pending = windows.first().map(|w| spawn(w));
        let mut prev_seq = None;
        for (i, w) in windows.iter().enumerate() {
            let handles = pending.take().unwrap_or_default();
            if let Some(next) = windows.get(i + 1) {
                pending = Some(spawn(next));
            }
            for ((seq, path), h) in w.iter().zip(handles) {
                let scanned = h
                    .join()
                    .or_else(|_| fail(&file_name(path), 0, "verifier thread panicked"))?;
                apply_segment(&mut st, *seq, prev_seq, &scanned)?;
                prev_seq = Some(*seq);
                st.report.segments += 1;
                st.report.last_segment = *seq;
            }
        }
        Ok(())
    })?;
    finish(st, &segs[0].1, trusted)
}

/// What the per-segment pass found: every good frame in order, then the first
/// problem with the frames themselves (their own hash, their encoding), if any.
struct Scanned {
    name: String,
    header: Result<Header, VerifyError>,
    frames: Vec<Summary>,
    problem: Option<VerifyError>,
}

struct Summary {
    pos: usize,
    seq: u64,
    prev: Hash,
    hash: Hash,
    event: Event,
}

/// The content the ordered pass needs; access records are only counted.
/// The rare kinds are boxed to keep the per-record summary small.
enum Event {
    Access,
    Checkpoint(Box<Checkpoint>),
    KeyRotation(Box<KeyRotation>),
    Recovery,
    Retention(Box<Retention>),
    Response,
}

fn scan_segment(path: &Path) -> Scanned {
    let name = file_name(path);
    let mut out = Scanned {
        header: fail(&name, 0, "not read"),
        frames: Vec::new(),
        problem: None,
        name,
    };
    let buf = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            out.header = fail(&out.name, 0, format!("cannot read: {e}"));
            return out;
        }
    };
    out.header = decode_header(&buf).or_else(|(off, reason)| fail(&out.name, off as usize, reason));
    let Ok(header) = &out.header else {
        return out;
    };
    let mut pos = header.len;
    while pos < buf.len() {
        let f = match decode_frame(&buf[pos..]) {
            Ok(f) => f,
            Err(e) => {
                let reason = match e {
                    FrameError::Torn(r) => format!(
                        "{r}: torn write at the end (the log was not reopened after a crash) or truncation"
                    ),
                    FrameError::Corrupt(r) => r,
                };
                out.problem = fail::<()>(&out.name, pos, reason).err();
                break;
            }
        };
        let event = match record::decode_view(f.body) {
            Ok(RecordView::Access(_)) => Event::Access,
            Ok(RecordView::Checkpoint(c)) => Event::Checkpoint(Box::new(c)),
            Ok(RecordView::KeyRotation(r)) => Event::KeyRotation(Box::new(r)),
            Ok(RecordView::Recovery(_)) => Event::Recovery,
            Ok(RecordView::Retention(r)) => Event::Retention(Box::new(r)),
            Ok(RecordView::Response(_)) if header.version < format::RESPONSES_SINCE => {
                out.problem = fail::<()>(
                    &out.name,
                    pos,
                    format!(
                        "response record in a format version {} segment",
                        header.version
                    ),
                )
                .err();
                break;
            }
            Ok(RecordView::Response(_)) => Event::Response,
            Err(r) => {
                out.problem = fail::<()>(&out.name, pos, r).err();
                break;
            }
        };
        out.frames.push(Summary {
            pos,
            seq: f.seq,
            prev: f.prev,
            hash: f.hash,
            event,
        });
        pos += f.len;
    }
    out
}

fn apply_segment(
    st: &mut State,
    seq: u64,
    prev_seq: Option<u64>,
    scanned: &Scanned,
) -> Result<(), VerifyError> {
    let name = scanned.name.as_str();
    let header = scanned.header.as_ref().map_err(Clone::clone)?;
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
    for f in &scanned.frames {
        let pos = f.pos;
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
        match &f.event {
            Event::Checkpoint(cp) => check_checkpoint(st, cp, &f.prev, &f.hash, f.seq, name, pos)?,
            other => {
                match other {
                    Event::Access => st.report.access_records += 1,
                    Event::KeyRotation(r) => {
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
                    Event::Recovery => st.report.recoveries += 1,
                    Event::Response => st.report.responses += 1,
                    Event::Retention(r) => {
                        st.report.retention_events += 1;
                        if let Some((missing, last, _)) = &st.gap
                            && st.gap_covered_at.is_none()
                            && r.removed
                                .iter()
                                .any(|s| s.segment == *missing && s.last_hash == *last)
                        {
                            st.gap_covered_at = Some(st.report.records);
                        }
                        if let Some((missing, _, _)) = &st.gap {
                            st.report.pruned_segments +=
                                r.removed.iter().filter(|s| s.segment <= *missing).count() as u64;
                        }
                    }
                    Event::Checkpoint(_) => {}
                }
                st.merkle.push(&f.hash);
            }
        }
        st.head = f.hash;
        st.expected_seq = Some(f.seq + 1);
        st.report.records += 1;
    }
    match &scanned.problem {
        Some(p) => Err(p.clone()),
        None => Ok(()),
    }
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
        && !st.excerpt
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

/// Every record of a log directory in order, with its sequence number and hash,
/// for tools that export or index the log. It checks frames and links but not
/// signatures: run [`verify_dir`] for that.
pub fn read_records(dir: &Path) -> Result<Vec<(u64, Hash, Record)>, VerifyError> {
    let segs = list_segments(dir).or_else(|e| fail("", 0, e.to_string()))?;
    let mut out = Vec::new();
    for (_, path) in &segs {
        let name = file_name(path);
        let buf = std::fs::read(path).or_else(|e| fail(&name, 0, format!("cannot read: {e}")))?;
        let header =
            decode_header(&buf).or_else(|(off, reason)| fail(&name, off as usize, reason))?;
        let mut head = header.hash;
        let mut pos = header.len;
        while pos < buf.len() {
            let f = decode_frame(&buf[pos..]).or_else(|e| fail(&name, pos, e.reason()))?;
            if f.prev != head {
                return fail(&name, pos, "record does not chain to the previous record");
            }
            out.push((
                f.seq,
                f.hash,
                record::decode(f.body).or_else(|r| fail(&name, pos, r))?,
            ));
            head = f.hash;
            pos += f.len;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::{fs, path::PathBuf};

    use ed25519_dalek::Signer as _;

    use super::*;
    use crate::audit::{
        AuditConfig, AuditLog, Receipt,
        format::{encode_frame, segment_name},
        record::sample_access,
    };

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn small_cfg(dir: &Path) -> AuditConfig {
        let mut c = AuditConfig::new(dir, "node-a");
        c.segment_max_bytes = 4096;
        c.checkpoint_every_records = 7;
        c
    }

    /// A closed log of `n` records in small segments; returns its public key.
    fn build(dir: &Path, n: u64) -> VerifyingKey {
        rt().block_on(async {
            let (log, rep) = AuditLog::open(small_cfg(dir)).await.unwrap();
            for i in 0..n {
                log.append(&sample_access(i)).await.unwrap();
            }
            log.close().await.unwrap();
            rep.public_key
        })
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        list_segments(dir)
            .unwrap()
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    }

    /// (offset, len, is checkpoint) of every frame of a segment.
    fn frames(buf: &[u8]) -> Vec<(usize, usize, bool)> {
        let mut pos = decode_header(buf).unwrap().len;
        let mut out = Vec::new();
        while pos < buf.len() {
            let f = decode_frame(&buf[pos..]).unwrap();
            let cp = matches!(record::decode(f.body).unwrap(), Record::Checkpoint(_));
            out.push((pos, f.len, cp));
            pos += f.len;
        }
        out
    }

    #[test]
    fn intact_log_verifies_with_its_key_only() {
        let tmp = tempfile::tempdir().unwrap();
        let key = build(tmp.path(), 60);
        let r = verify_dir(tmp.path(), Some(&key)).unwrap();
        assert_eq!(r.access_records, 60);
        assert_eq!(r.segments, segment_files(tmp.path()).len() as u64);
        assert!(r.segments >= 3, "{r:?}");
        // Genesis + one every 7 + seals at rotation + final: more than 60/7.
        assert!(r.checkpoints > 60 / 7, "{r:?}");
        assert_eq!(r.records, r.access_records + r.checkpoints);
        assert_eq!(r.unsigned_tail, 0);
        assert_eq!(r.signers, vec![key.to_bytes()]);

        let other = crate::audit::keys::generate().unwrap().verifying_key();
        let e = verify_dir(tmp.path(), Some(&other)).unwrap_err();
        assert_eq!(e.segment, segment_name(0));
        assert!(e.reason.contains("not the trusted key"), "{e}");
    }

    #[test]
    fn every_flipped_byte_is_found_at_or_before_its_offset() {
        let tmp = tempfile::tempdir().unwrap();
        let key = build(tmp.path(), 40);
        let mut checked = 0;
        for path in segment_files(tmp.path()) {
            let name = file_name(&path);
            let orig = fs::read(&path).unwrap();
            let header_len = decode_header(&orig).unwrap().len;
            let mut positions: Vec<usize> = (0..header_len).collect();
            positions.extend((header_len..orig.len()).step_by(7));
            for (off, len, cp) in frames(&orig) {
                // Length prefix, and for checkpoints the signature bytes.
                positions.extend(off..off + 4);
                if cp {
                    positions.extend((off + len - 32 - 64..off + len - 32).step_by(3));
                }
            }
            for pos in positions {
                let mut bad = orig.clone();
                bad[pos] ^= 0x5a;
                fs::write(&path, &bad).unwrap();
                let e = verify_dir(tmp.path(), Some(&key))
                    .expect_err(&format!("flip at {name}:{pos} not detected"));
                assert_eq!(e.segment, name, "flip at {pos}: {e}");
                assert!(
                    e.offset <= pos as u64,
                    "flip at {pos} reported at {}: {e}",
                    e.offset
                );
                checked += 1;
            }
            fs::write(&path, &orig).unwrap();
        }
        assert!(checked > 1000, "{checked}");
        verify_dir(tmp.path(), Some(&key)).unwrap();
    }

    #[test]
    fn removed_and_reordered_segments_are_detected() {
        let tmp = tempfile::tempdir().unwrap();
        let key = build(tmp.path(), 60);
        let files = segment_files(tmp.path());
        assert!(files.len() >= 4);

        // A middle segment removed.
        let saved = fs::read(&files[1]).unwrap();
        fs::remove_file(&files[1]).unwrap();
        let e = verify_dir(tmp.path(), Some(&key)).unwrap_err();
        assert_eq!(
            (e.segment.as_str(), e.offset),
            (segment_name(2).as_str(), 0)
        );
        assert!(e.reason.contains("segment 1 is missing"), "{e}");
        fs::write(&files[1], &saved).unwrap();

        // The first segment removed, without a retention record.
        let saved0 = fs::read(&files[0]).unwrap();
        fs::remove_file(&files[0]).unwrap();
        let e = verify_dir(tmp.path(), Some(&key)).unwrap_err();
        assert_eq!(e.segment, segment_name(1));
        assert!(e.reason.contains("no signed retention record"), "{e}");
        fs::write(&files[0], &saved0).unwrap();

        // Two segments swapped.
        let a = fs::read(&files[1]).unwrap();
        let b = fs::read(&files[2]).unwrap();
        fs::write(&files[1], &b).unwrap();
        fs::write(&files[2], &a).unwrap();
        let e = verify_dir(tmp.path(), Some(&key)).unwrap_err();
        assert_eq!(e.segment, segment_name(1));
        assert!(e.reason.contains("reordered"), "{e}");
        fs::write(&files[1], &a).unwrap();
        fs::write(&files[2], &b).unwrap();

        // The newest segment removed: the rest still verifies (nothing can show it
        // offline), but the chain head differs from the one the full log reported.
        let full = verify_dir(tmp.path(), Some(&key)).unwrap();
        fs::remove_file(files.last().unwrap()).unwrap();
        let cut = verify_dir(tmp.path(), Some(&key)).unwrap();
        assert_ne!(full.chain_head, cut.chain_head);
    }

    /// Re-sign the final checkpoint (the last frame) with another key, fixing its
    /// frame hash so only the signature tells.
    fn forge_last_checkpoint(dir: &Path, keep_signer: bool) -> VerifyError {
        let path = segment_files(dir).pop().unwrap();
        let buf = fs::read(&path).unwrap();
        let &(off, _, cp) = frames(&buf).last().unwrap();
        assert!(cp);
        let f = decode_frame(&buf[off..]).unwrap();
        let Record::Checkpoint(mut c) = record::decode(f.body).unwrap() else {
            unreachable!()
        };
        let mallory = crate::audit::keys::generate().unwrap();
        if !keep_signer {
            c.signer = mallory.verifying_key().to_bytes();
        }
        c.signature = mallory.sign(&c.signed_message()).to_bytes().to_vec();
        let body = record::encode(&Record::Checkpoint(c)).unwrap();
        let mut out = buf[..off].to_vec();
        encode_frame(&mut out, f.seq, &f.prev, &body);
        fs::write(&path, &out).unwrap();
        let e = verify_dir(dir, None).unwrap_err();
        assert_eq!(
            (e.segment.clone(), e.offset),
            (file_name(&path), off as u64)
        );
        e
    }

    #[test]
    fn checkpoint_signed_by_another_key_is_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        build(tmp.path(), 20);
        let e = forge_last_checkpoint(tmp.path(), false);
        assert!(e.reason.contains("no key rotation record"), "{e}");
        let tmp = tempfile::tempdir().unwrap();
        build(tmp.path(), 20);
        let e = forge_last_checkpoint(tmp.path(), true);
        assert!(
            e.reason.contains("signature by ed25519:") && e.reason.contains("invalid"),
            "{e}"
        );
    }

    /// Appends acknowledged before a crash; the writer task dies with its runtime,
    /// without a final checkpoint.
    fn crash_after(dir: &Path, n: u64) -> (Vec<Receipt>, VerifyingKey) {
        let rt = rt();
        let (log, receipts, key) = rt.block_on(async {
            let (log, rep) = AuditLog::open(small_cfg(dir)).await.unwrap();
            let mut receipts = Vec::new();
            for i in 0..n {
                receipts.push(log.append(&sample_access(i)).await.unwrap());
            }
            (log, receipts, rep.public_key)
        });
        drop(rt);
        drop(log);
        (receipts, key)
    }

    fn reopen(dir: &Path) -> crate::audit::OpenReport {
        rt().block_on(async {
            let (log, rep) = AuditLog::open(small_cfg(dir)).await.unwrap();
            log.close().await.unwrap();
            rep
        })
    }

    fn assert_all_present(dir: &Path, receipts: &[Receipt]) {
        let recs = read_records(dir).unwrap();
        for r in receipts {
            assert!(
                recs.iter().any(|(s, h, _)| *s == r.seq && *h == r.hash),
                "acknowledged record {} lost",
                r.seq
            );
        }
    }

    #[test]
    fn torn_tail_is_cut_recorded_and_verifies() {
        // Each shape an interrupted write can leave at the end of the last segment.
        type Shape = fn(&[u8]) -> Vec<u8>;
        let shapes: [(&str, Shape); 4] = [
            ("partial length prefix", |f| f[..2].to_vec()),
            ("partial record", |f| f[..f.len() / 2].to_vec()),
            ("bad hash", |f| {
                let mut v = f.to_vec();
                let n = v.len();
                v[n - 40] ^= 1;
                v
            }),
            ("zeros", |f| vec![0; f.len()]),
        ];
        for (what, shape) in shapes {
            let tmp = tempfile::tempdir().unwrap();
            let (receipts, key) = crash_after(tmp.path(), 23);
            let before = verify_dir(tmp.path(), Some(&key)).unwrap();
            assert!(
                before.unsigned_tail > 0,
                "{what}: the crash must leave unsigned records"
            );
            let last = segment_files(tmp.path()).pop().unwrap();
            let mut data = fs::read(&last).unwrap();
            let cut_at = data.len() as u64;
            // The frame the crash was writing, chained correctly, then torn.
            let mut frame = Vec::new();
            let body = record::encode(&Record::Access(sample_access(99))).unwrap();
            encode_frame(
                &mut frame,
                receipts.last().unwrap().seq + 1,
                &receipts.last().unwrap().hash,
                &body,
            );
            let torn = shape(&frame);
            data.extend_from_slice(&torn);
            fs::write(&last, &data).unwrap();
            let e = verify_dir(tmp.path(), Some(&key)).unwrap_err();
            assert_eq!(
                (e.segment.clone(), e.offset),
                (file_name(&last), cut_at),
                "{what}: {e}"
            );

            let rep = reopen(tmp.path());
            let rec = rep
                .recovered
                .unwrap_or_else(|| panic!("{what}: no recovery"));
            assert_eq!(
                (rec.offset, rec.bytes),
                (cut_at, torn.len() as u64),
                "{what}"
            );
            let saved = fs::read(tmp.path().join(&rec.saved_as)).unwrap();
            assert_eq!(saved, torn, "{what}: the cut bytes are kept");
            assert_all_present(tmp.path(), &receipts);
            let recs = read_records(tmp.path()).unwrap();
            assert!(
                recs.iter()
                    .any(|(_, _, r)| matches!(r, Record::Recovery(x) if x.offset == cut_at))
            );
            let r = verify_dir(tmp.path(), Some(&key)).unwrap();
            assert_eq!(
                (r.recoveries, r.access_records, r.unsigned_tail),
                (1, 23, 0),
                "{what}"
            );
        }
    }

    #[test]
    fn crash_without_torn_tail_signs_the_tail_without_recovery() {
        let tmp = tempfile::tempdir().unwrap();
        let (receipts, key) = crash_after(tmp.path(), 10);
        let rep = reopen(tmp.path());
        assert!(rep.recovered.is_none());
        assert_all_present(tmp.path(), &receipts);
        let r = verify_dir(tmp.path(), Some(&key)).unwrap();
        assert_eq!((r.recoveries, r.unsigned_tail), (0, 0));
    }

    #[test]
    fn torn_segment_header_after_rotation_is_recovered() {
        let tmp = tempfile::tempdir().unwrap();
        let (receipts, key) = crash_after(tmp.path(), 30);
        let files = segment_files(tmp.path());
        let next = tmp.path().join(segment_name(files.len() as u64));
        fs::write(&next, b"ICPTAU").unwrap();
        let rep = reopen(tmp.path());
        let rec = rep.recovered.unwrap();
        assert_eq!(
            (rec.segment, rec.offset, rec.bytes),
            (files.len() as u64, 0, 6)
        );
        assert_all_present(tmp.path(), &receipts);
        let r = verify_dir(tmp.path(), Some(&key)).unwrap();
        assert_eq!(r.recoveries, 1);
    }

    #[test]
    fn damage_in_a_sealed_segment_is_left_alone_and_reported() {
        let tmp = tempfile::tempdir().unwrap();
        crash_after(tmp.path(), 40);
        let first = segment_files(tmp.path()).remove(0);
        let mut data = fs::read(&first).unwrap();
        let n = data.len();
        data[n - 10] ^= 1;
        fs::write(&first, &data).unwrap();
        // Recovery only ever cuts the newest segment: the damaged one is evidence.
        let rep = reopen(tmp.path());
        assert!(rep.recovered.is_none());
        assert_eq!(fs::read(&first).unwrap(), data);
        let e = verify_dir(tmp.path(), None).unwrap_err();
        assert_eq!(e.segment, file_name(&first));
        assert!(e.reason.contains("hash mismatch"), "{e}");
    }
}
