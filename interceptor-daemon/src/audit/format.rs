//! On-disk layout of segment files, shared by the writer, recovery and the verifier.
//!
//! ```text
//! segment  = header frame*
//! header   = magic "ICPTAUDT" | version u16 | segment u64 | prev [32] | node_len u16 | node | hash [32]
//! frame    = len u32 | seq u64 | prev [32] | body | hash [32]      (len = 8 + 32 + body + 32)
//! ```
//!
//! Integers are little endian. `hash` of the header is SHA-256 of the header bytes
//! before it; `hash` of a frame is SHA-256(seq | prev | body). The chain runs through
//! headers too: a header's `prev` is the chain head at the end of the previous segment
//! and the first frame's `prev` is the header's hash, so every byte of the log is
//! covered by the chain, and every stored hash lets a reader pinpoint a damaged
//! header or frame by its own offset.

use sha2::{Digest, Sha256};

pub const MAGIC: &[u8; 8] = b"ICPTAUDT";
/// Written into new segments. Version 2 added response records
/// ([`super::record::Record::Response`]); everything else is as in version 1, whose
/// segments are still read and verified.
pub const FORMAT_VERSION: u16 = 2;
/// The oldest version this build reads.
pub const MIN_FORMAT_VERSION: u16 = 1;
/// The first version whose segments may hold response records.
pub const RESPONSES_SINCE: u16 = 2;
/// Header bytes before the node name.
const HEADER_FIXED: usize = 8 + 2 + 8 + 32 + 2;
pub const MAX_NODE_NAME: usize = 255;
/// Frame bytes besides the body: len, seq, prev, hash.
pub const FRAME_OVERHEAD: usize = 4 + 8 + 32 + 32;

pub type Hash = [u8; 32];
pub const ZERO_HASH: Hash = [0; 32];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub segment: u64,
    pub prev: Hash,
    pub node: String,
    /// SHA-256 of the header bytes (the chain head after the header).
    pub hash: Hash,
    /// Encoded size.
    pub len: usize,
}

/// Segment file name for a sequence number; names sort in sequence order.
pub fn segment_name(seq: u64) -> String {
    format!("seg-{seq:020}.audit")
}

/// The sequence number in a segment file name, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".audit")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Encode a header; `node` is cut to [`MAX_NODE_NAME`] bytes at a char boundary.
pub fn encode_header(segment: u64, prev: &Hash, node: &str) -> (Vec<u8>, Hash) {
    encode_header_version(FORMAT_VERSION, segment, prev, node)
}

/// [`encode_header`] naming another format version (tests write older logs).
pub fn encode_header_version(
    version: u16,
    segment: u64,
    prev: &Hash,
    node: &str,
) -> (Vec<u8>, Hash) {
    let mut end = node.len().min(MAX_NODE_NAME);
    while !node.is_char_boundary(end) {
        end -= 1;
    }
    let node = &node.as_bytes()[..end];
    let mut h = Vec::with_capacity(HEADER_FIXED + node.len() + 32);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&version.to_le_bytes());
    h.extend_from_slice(&segment.to_le_bytes());
    h.extend_from_slice(prev);
    h.extend_from_slice(&(node.len() as u16).to_le_bytes());
    h.extend_from_slice(node);
    let hash: Hash = Sha256::digest(&h).into();
    h.extend_from_slice(&hash);
    (h, hash)
}

/// Parse and check a header at the start of `buf`. Errors are (offset, reason).
pub fn decode_header(buf: &[u8]) -> Result<Header, (u64, String)> {
    if buf.len() < HEADER_FIXED {
        return Err((0, format!("segment header truncated ({} bytes)", buf.len())));
    }
    if &buf[..8] != MAGIC {
        return Err((0, "bad segment magic".into()));
    }
    let version = u16::from_le_bytes([buf[8], buf[9]]);
    let node_len = usize::from(u16::from_le_bytes([buf[50], buf[51]]));
    let len = HEADER_FIXED + node_len + 32;
    if buf.len() < len {
        return Err((
            0,
            format!("segment header truncated ({} of {len} bytes)", buf.len()),
        ));
    }
    let body = &buf[..HEADER_FIXED + node_len];
    let hash: Hash = Sha256::digest(body).into();
    if hash[..] != buf[HEADER_FIXED + node_len..len] {
        return Err((0, "segment header hash mismatch".into()));
    }
    if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err((8, format!("unsupported format version {version}")));
    }
    let node = std::str::from_utf8(&buf[HEADER_FIXED..HEADER_FIXED + node_len])
        .map_err(|_| (HEADER_FIXED as u64, "node name is not UTF-8".to_string()))?
        .to_string();
    Ok(Header {
        version,
        segment: u64::from_le_bytes(array(&buf[10..18])),
        prev: array(&buf[18..50]),
        node,
        hash,
        len,
    })
}

/// Append one frame for `body` to `out`; returns the frame's hash.
pub fn encode_frame(out: &mut Vec<u8>, seq: u64, prev: &Hash, body: &[u8]) -> Hash {
    let len = (8 + 32 + body.len() + 32) as u32;
    out.reserve(FRAME_OVERHEAD + body.len());
    out.extend_from_slice(&len.to_le_bytes());
    let start = out.len();
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(prev);
    out.extend_from_slice(body);
    let hash: Hash = Sha256::digest(&out[start..]).into();
    out.extend_from_slice(&hash);
    hash
}

/// A frame read from a buffer; `body` borrows from it.
#[derive(Debug)]
pub struct Frame<'a> {
    pub seq: u64,
    pub prev: Hash,
    pub body: &'a [u8],
    pub hash: Hash,
    /// Total encoded size.
    pub len: usize,
}

/// Why a frame could not be read. `Torn` problems are what an interrupted write
/// leaves at the end of a file; `Corrupt` ones are damage to a complete frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    Torn(String),
    Corrupt(String),
}

impl FrameError {
    pub fn reason(&self) -> &str {
        match self {
            FrameError::Torn(s) | FrameError::Corrupt(s) => s,
        }
    }
}

/// Read the frame at the start of `buf` and check its own hash (not its link).
pub fn decode_frame(buf: &[u8]) -> Result<Frame<'_>, FrameError> {
    if buf.len() < 4 {
        return Err(FrameError::Torn(format!(
            "partial length prefix ({} bytes)",
            buf.len()
        )));
    }
    let n = u32::from_le_bytes(array(&buf[..4])) as usize;
    if !(8 + 32 + 1 + 32..=8 + 32 + super::record::MAX_RECORD_BYTES + 32).contains(&n) {
        return Err(FrameError::Corrupt(format!("invalid record length {n}")));
    }
    if buf.len() < 4 + n {
        return Err(FrameError::Torn(format!(
            "partial record ({} of {} bytes)",
            buf.len() - 4,
            n
        )));
    }
    let content = &buf[4..4 + n - 32];
    let stored = &buf[4 + n - 32..4 + n];
    let hash: Hash = Sha256::digest(content).into();
    if hash[..] != *stored {
        return Err(FrameError::Corrupt("record hash mismatch".into()));
    }
    Ok(Frame {
        seq: u64::from_le_bytes(array(&content[..8])),
        prev: array(&content[8..40]),
        body: &content[40..],
        hash,
        len: 4 + n,
    })
}

fn array<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0; N];
    a.copy_from_slice(s);
    a
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// RFC 6962 Merkle tree hash, built incrementally: leaves are pushed one by one and
/// only the roots of the complete subtrees (at most 64) are kept.
#[derive(Debug, Default, Clone)]
pub struct Merkle {
    stack: Vec<(u32, Hash)>,
    count: u64,
}

impl Merkle {
    pub fn push(&mut self, data: &[u8]) {
        let mut h = Sha256::new();
        h.update([0u8]);
        h.update(data);
        let mut node = (0u32, Hash::from(h.finalize()));
        while let Some(&(height, left)) = self.stack.last() {
            if height != node.0 {
                break;
            }
            self.stack.pop();
            node = (height + 1, node_hash(&left, &node.1));
        }
        self.stack.push(node);
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The root over everything pushed so far (SHA-256 of nothing when empty).
    pub fn root(&self) -> Hash {
        let mut it = self.stack.iter().rev();
        let Some(&(_, mut acc)) = it.next() else {
            return Sha256::digest([]).into();
        };
        for (_, left) in it {
            acc = node_hash(left, &acc);
        }
        acc
    }

    pub fn clear(&mut self) {
        self.stack.clear();
        self.count = 0;
    }
}

fn node_hash(l: &Hash, r: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(l);
    h.update(r);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6962 section 2.1, literally.
    fn mth(leaves: &[&[u8]]) -> Hash {
        match leaves.len() {
            0 => Sha256::digest([]).into(),
            1 => {
                let mut h = Sha256::new();
                h.update([0u8]);
                h.update(leaves[0]);
                h.finalize().into()
            }
            n => {
                // The largest power of two smaller than n.
                let mut k = 1;
                while k * 2 < n {
                    k *= 2;
                }
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn merkle_matches_rfc6962_definition() {
        let data: Vec<Vec<u8>> = (0..70u32).map(|i| i.to_le_bytes().to_vec()).collect();
        for n in 0..data.len() {
            let leaves: Vec<&[u8]> = data[..n].iter().map(|v| v.as_slice()).collect();
            let mut m = Merkle::default();
            for l in &leaves {
                m.push(l);
            }
            assert_eq!(m.root(), mth(&leaves), "n = {n}");
        }
        // Known value: the root of a single empty leaf is SHA-256(0x00).
        let mut m = Merkle::default();
        m.push(b"");
        assert_eq!(
            hex(&m.root()),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn header_and_frame_roundtrip() {
        let (h, hash) = encode_header(3, &[7; 32], "node-é");
        let parsed = decode_header(&h).unwrap();
        assert_eq!(
            (parsed.segment, parsed.prev, parsed.node.as_str()),
            (3, [7; 32], "node-é")
        );
        assert_eq!((parsed.hash, parsed.len), (hash, h.len()));
        let mut bad = h.clone();
        bad[12] ^= 1;
        assert_eq!(
            decode_header(&bad).unwrap_err().1,
            "segment header hash mismatch"
        );

        let mut buf = Vec::new();
        let fh = encode_frame(&mut buf, 9, &hash, b"hello");
        let f = decode_frame(&buf).unwrap();
        assert_eq!(
            (f.seq, f.prev, f.body, f.hash, f.len),
            (9, hash, &b"hello"[..], fh, buf.len())
        );
        assert!(matches!(decode_frame(&buf[..2]), Err(FrameError::Torn(_))));
        assert!(matches!(
            decode_frame(&buf[..buf.len() - 1]),
            Err(FrameError::Torn(_))
        ));
        buf[20] ^= 0x40;
        assert!(matches!(decode_frame(&buf), Err(FrameError::Corrupt(_))));
    }

    #[test]
    fn names_and_hex() {
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("seg-1.audit"), None);
        assert_eq!(
            parse_segment_name("seg-00000000000000000001.audit.cut-5"),
            None
        );
        assert_eq!(unhex(&hex(&[0, 255, 16])), Some(vec![0, 255, 16]));
        assert_eq!(unhex("zz"), None);
    }
}
