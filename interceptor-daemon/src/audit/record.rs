//! Record content: what one audit record says, and its stable binary encoding.
//!
//! The encoding is bincode 2 (serde) with a fixed configuration: little endian,
//! variable-length integers, and a size limit when decoding. Both the crate version
//! (pinned in Cargo.toml) and [`CONFIG`] are part of the on-disk format: the segment
//! header's format version names this schema, so any change to these types or to
//! the configuration must bump [`super::format::FORMAT_VERSION`]. Only append-only
//! changes are not possible with bincode (it has no field tags), which is why the
//! version lives in every segment header instead.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use bincode::error::EncodeError;

/// Largest encoded record accepted by the reader and the writer.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// The bincode configuration of the on-disk format.
pub const CONFIG: bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_RECORD_BYTES>,
> = bincode::config::standard()
    .with_little_endian()
    .with_variable_int_encoding()
    .with_limit::<MAX_RECORD_BYTES>();

/// One record of the log. Access records come from the data path; every other kind
/// is written by the log itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    Access(AccessRecord),
    Checkpoint(Checkpoint),
    KeyRotation(KeyRotation),
    Recovery(Recovery),
    Retention(Retention),
    /// Since format version 2 (appended last: variant indexes 0-4 keep their meaning).
    Response(ResponseRecord),
}

/// What the client received in answer to its command(s) on one session: a
/// bounded summary taken from the bytes sent to the client, i.e. after masking,
/// so a recorded value is never one the client did not see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseRecord {
    /// UTC, nanoseconds since the Unix epoch, when the response was complete.
    pub time_ns: u64,
    pub session_id: String,
    pub connection_id: u64,
    /// From the response's first byte to its end.
    pub duration_ns: u64,
    pub summary: ResponseSummary,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseSummary {
    /// PostgreSQL (one entry per result up to the ReadyForQuery) and MySQL.
    Sql(Vec<SqlResult>),
    Redis(RedisReply),
    Http(HttpResponse),
}

/// One statement's result as the client saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqlResult {
    pub columns: Vec<String>,
    /// The first rows (text; binary values as `\x` hex), cut to the configured
    /// count and value size; `None` is SQL NULL.
    pub rows: Vec<Vec<Option<String>>>,
    /// Rows sent to the client (all of them, recorded or not).
    pub row_count: u64,
    /// Command tag (`SELECT 3`, `UPDATE 1`) or the MySQL OK summary.
    pub tag: Option<String>,
    pub error: Option<SqlError>,
    /// Some rows, values or results were left out to bound the record.
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqlError {
    /// SQLSTATE (PostgreSQL) or `errno/SQLSTATE` (MySQL).
    pub code: String,
    pub message: String,
}

/// One Redis reply: its RESP type, a bounded rendering and, for aggregates,
/// the number of elements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisReply {
    pub kind: String,
    pub value: Option<String>,
    pub elements: Option<u64>,
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: Option<String>,
    /// Body bytes (Content-Length, or counted for a chunked body).
    pub length: Option<u64>,
}

/// One governed operation on one connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRecord {
    /// UTC, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    pub node: String,
    pub identity: Identity,
    /// The target's configured name (e.g. `orders-db`), or `host:port`.
    pub target: String,
    pub protocol: Protocol,
    /// Normalised statement or request line; literals are already masked by the caller.
    pub operation: String,
    pub decision: Decision,
    pub rule_id: Option<String>,
    pub approval_ref: Option<String>,
    pub outcome: Option<Outcome>,
    pub duration_ns: u64,
    pub session_id: String,
    pub connection_id: u64,
}

/// The workload identity an operation is attributed to.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Identity {
    pub namespace: String,
    pub service_account: String,
    pub pod: String,
    pub verification: Verification,
    pub claims: BTreeMap<String, String>,
}

/// How the identity was established.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Verification {
    /// Attributed from the pod's cgroup only (no cryptographic proof).
    #[default]
    Cgroup,
    /// A projected service-account token, checked against the API server.
    ServiceAccountToken,
    /// A SPIFFE SVID.
    Spiffe,
    /// A client certificate presented on the connection.
    Mtls,
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    Postgres,
    Mysql,
    Http,
    Redis,
    Tcp,
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    Allow,
    /// Allowed, with some returned values masked.
    AllowMasked,
    Deny,
    RequireApproval,
    /// Allowed after a human approval (see `approval_ref`).
    Approved,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Rows(u64),
    Error(String),
}

/// A signed statement about the chain: everything up to `chain_head` is authentic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub time_ns: u64,
    /// Hash of the record just before this checkpoint.
    pub chain_head: [u8; 32],
    /// Records before this checkpoint since the log began (= this record's sequence number).
    pub record_count: u64,
    /// RFC 6962 root over the hashes of the records since the previous checkpoint.
    pub merkle_root: [u8; 32],
    pub leaf_count: u64,
    /// Hash of the previous checkpoint record (zeros for the first).
    pub prev_checkpoint: [u8; 32],
    /// Ed25519 public key of the signer.
    pub signer: [u8; 32],
    /// Ed25519 signature (64 bytes) over [`Checkpoint::signed_message`].
    pub signature: Vec<u8>,
}

impl Checkpoint {
    /// The bytes the signature covers: a domain tag and every field but the signature.
    pub fn signed_message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(200);
        m.extend_from_slice(b"interceptor-audit/checkpoint/v1\0");
        m.extend_from_slice(&self.time_ns.to_le_bytes());
        m.extend_from_slice(&self.chain_head);
        m.extend_from_slice(&self.record_count.to_le_bytes());
        m.extend_from_slice(&self.merkle_root);
        m.extend_from_slice(&self.leaf_count.to_le_bytes());
        m.extend_from_slice(&self.prev_checkpoint);
        m.extend_from_slice(&self.signer);
        m
    }
}

/// The node key changes: signed by the old key, naming the new one. Checkpoints
/// after this record are signed by `new_key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRotation {
    pub time_ns: u64,
    pub old_key: [u8; 32],
    pub new_key: [u8; 32],
    /// Signature by `old_key` over [`KeyRotation::signed_message`].
    pub signature: Vec<u8>,
}

impl KeyRotation {
    /// `prev` is the hash of the record before this one, which ties the statement to
    /// its place in the chain.
    pub fn signed_message(&self, prev: &[u8; 32]) -> Vec<u8> {
        let mut m = Vec::with_capacity(140);
        m.extend_from_slice(b"interceptor-audit/key-rotation/v1\0");
        m.extend_from_slice(&self.time_ns.to_le_bytes());
        m.extend_from_slice(prev);
        m.extend_from_slice(&self.old_key);
        m.extend_from_slice(&self.new_key);
        m
    }
}

/// A torn tail was cut from the log when it was opened after a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovery {
    pub time_ns: u64,
    pub segment: u64,
    /// Byte offset in the segment where the cut began.
    pub offset: u64,
    pub bytes: u64,
    /// SHA-256 of the bytes cut (they are kept next to the segment, see `saved_as`).
    pub cut_sha256: [u8; 32],
    pub saved_as: String,
    pub reason: String,
}

/// Old segments were deleted by the retention policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    pub time_ns: u64,
    pub removed: Vec<RemovedSegment>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedSegment {
    pub segment: u64,
    /// Chain head at the end of the removed segment (the next segment's header names it).
    pub last_hash: [u8; 32],
    pub bytes: u64,
}

/// A borrowing mirror of [`Record`] for the verifier: it checks that every record
/// decodes with the same schema, without allocating for access records (their
/// content is not needed to verify the chain). It must follow `Record` field for
/// field; a test decodes the same bytes with both.
#[derive(Deserialize)]
pub(crate) enum RecordView<'a> {
    #[serde(borrow)]
    Access(#[allow(dead_code)] AccessView<'a>),
    Checkpoint(Checkpoint),
    KeyRotation(KeyRotation),
    Recovery(#[allow(dead_code)] Recovery),
    Retention(Retention),
    Response(#[allow(dead_code)] ResponseRecord),
}

#[derive(Deserialize)]
#[allow(dead_code)]
pub(crate) struct AccessView<'a> {
    time_ns: u64,
    node: &'a str,
    namespace: &'a str,
    service_account: &'a str,
    pod: &'a str,
    #[serde(borrow)]
    verification: VerificationView<'a>,
    claims: SkipMap,
    target: &'a str,
    #[serde(borrow)]
    protocol: ProtocolView<'a>,
    operation: &'a str,
    decision: Decision,
    rule_id: Option<&'a str>,
    approval_ref: Option<&'a str>,
    #[serde(borrow)]
    outcome: Option<OutcomeView<'a>>,
    duration_ns: u64,
    session_id: &'a str,
    connection_id: u64,
}

#[derive(Deserialize)]
#[allow(dead_code)]
enum VerificationView<'a> {
    Cgroup,
    ServiceAccountToken,
    Spiffe,
    Mtls,
    Other(&'a str),
}

#[derive(Deserialize)]
#[allow(dead_code)]
enum ProtocolView<'a> {
    Postgres,
    Mysql,
    Http,
    Redis,
    Tcp,
    Other(&'a str),
}

#[derive(Deserialize)]
#[allow(dead_code)]
enum OutcomeView<'a> {
    Rows(u64),
    Error(&'a str),
}

/// A string map read and dropped without allocating.
struct SkipMap;

impl<'de> Deserialize<'de> for SkipMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = SkipMap;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<SkipMap, A::Error> {
                while m.next_entry::<&'de str, &'de str>()?.is_some() {}
                Ok(SkipMap)
            }
        }
        d.deserialize_map(V)
    }
}

/// Decode for verification; the whole slice must be one record.
pub(crate) fn decode_view(bytes: &[u8]) -> Result<RecordView<'_>, String> {
    match bincode::serde::borrow_decode_from_slice::<RecordView<'_>, _>(bytes, CONFIG) {
        Ok((r, n)) if n == bytes.len() => Ok(r),
        Ok((_, n)) => Err(format!(
            "record body has {} trailing bytes",
            bytes.len() - n
        )),
        Err(e) => Err(format!("record body does not decode: {e}")),
    }
}

/// Encode a record with the on-disk configuration.
pub fn encode(record: &Record) -> Result<Vec<u8>, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(record, CONFIG)
}

/// Decode a record; the whole slice must be one record.
pub fn decode(bytes: &[u8]) -> Result<Record, String> {
    match bincode::serde::decode_from_slice::<Record, _>(bytes, CONFIG) {
        Ok((r, n)) if n == bytes.len() => Ok(r),
        Ok((_, n)) => Err(format!(
            "record body has {} trailing bytes",
            bytes.len() - n
        )),
        Err(e) => Err(format!("record body does not decode: {e}")),
    }
}

/// Current time as UTC nanoseconds since the epoch.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
pub(crate) fn sample_access(i: u64) -> AccessRecord {
    let mut claims = BTreeMap::new();
    claims.insert(
        "iss".to_string(),
        "https://kubernetes.default.svc".to_string(),
    );
    claims.insert("aud".to_string(), "interceptor".to_string());
    AccessRecord {
        time_ns: 1_700_000_000_000_000_000 + i,
        node: "node-a".into(),
        identity: Identity {
            namespace: "shop".into(),
            service_account: "orders".into(),
            pod: "orders-7d9f8-abcde".into(),
            verification: Verification::ServiceAccountToken,
            claims,
        },
        target: "orders-db".into(),
        protocol: Protocol::Postgres,
        operation: "SELECT id, total FROM orders WHERE customer_id = $1".into(),
        decision: Decision::Allow,
        rule_id: Some("orders-read".into()),
        approval_ref: None,
        outcome: Some(Outcome::Rows(i % 17)),
        duration_ns: 1_250_000,
        session_id: format!("sess-{}", i / 100),
        connection_id: i / 10,
    }
}

#[cfg(test)]
pub(crate) fn sample_response(i: u64) -> ResponseRecord {
    ResponseRecord {
        time_ns: 1_700_000_000_000_000_000 + i,
        session_id: format!("sess-{}", i / 100),
        connection_id: i / 10,
        duration_ns: 900_000,
        summary: ResponseSummary::Sql(vec![SqlResult {
            columns: vec!["id".into(), "email".into()],
            rows: vec![
                vec![Some("1".into()), Some("[redacted]".into())],
                vec![None, None],
            ],
            row_count: 2,
            tag: Some("SELECT 2".into()),
            error: None,
            truncated: false,
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_variant_five_and_decode_in_both_readers() {
        let summaries = [
            sample_response(3).summary,
            ResponseSummary::Sql(vec![SqlResult {
                error: Some(SqlError {
                    code: "42501".into(),
                    message: "denied".into(),
                }),
                ..SqlResult::default()
            }]),
            ResponseSummary::Redis(RedisReply {
                kind: "bulk".into(),
                value: Some("v".into()),
                elements: None,
                truncated: false,
            }),
            ResponseSummary::Http(HttpResponse {
                status: 200,
                content_type: Some("text/html".into()),
                length: Some(612),
            }),
        ];
        for summary in summaries {
            let r = Record::Response(ResponseRecord {
                summary,
                ..sample_response(3)
            });
            let bytes = encode(&r).unwrap();
            // Appended as the sixth kind: older kinds keep their tags.
            assert_eq!(bytes[0], 5);
            assert_eq!(decode(&bytes).unwrap(), r);
            assert!(matches!(decode_view(&bytes), Ok(RecordView::Response(_))));
            assert!(decode_view(&bytes[..bytes.len() - 1]).is_err());
        }
    }

    #[test]
    fn roundtrip_and_stable_bytes() {
        let r = Record::Access(sample_access(7));
        let bytes = encode(&r).unwrap();
        assert_eq!(decode(&bytes).unwrap(), r);
        // The variant tag is the first byte: Access = 0. A change here is a format change.
        assert_eq!(bytes[0], 0);
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).unwrap_err().contains("trailing"));
        assert!(decode(&bytes[..bytes.len() - 3]).is_err());
    }

    #[test]
    fn the_verifier_view_reads_every_variant_like_record() {
        let verifications = [
            Verification::Cgroup,
            Verification::ServiceAccountToken,
            Verification::Spiffe,
            Verification::Mtls,
            Verification::Other("x".into()),
        ];
        let protocols = [
            Protocol::Postgres,
            Protocol::Mysql,
            Protocol::Http,
            Protocol::Redis,
            Protocol::Tcp,
            Protocol::Other("amqp".into()),
        ];
        let outcomes = [
            None,
            Some(Outcome::Rows(3)),
            Some(Outcome::Error("e".into())),
        ];
        let decisions = [
            Decision::Allow,
            Decision::AllowMasked,
            Decision::Deny,
            Decision::RequireApproval,
            Decision::Approved,
        ];
        let mut n = 0;
        for v in &verifications {
            for p in &protocols {
                for o in &outcomes {
                    for d in &decisions {
                        let mut a = sample_access(n);
                        a.identity.verification = v.clone();
                        a.protocol = p.clone();
                        a.outcome = o.clone();
                        a.decision = d.clone();
                        a.approval_ref = (n % 2 == 0).then(|| "CHG-1".to_string());
                        let bytes = encode(&Record::Access(a)).unwrap();
                        assert!(
                            matches!(decode_view(&bytes), Ok(RecordView::Access(_))),
                            "{v:?} {p:?} {o:?} {d:?}"
                        );
                        // Any cut is an error for both readers.
                        for cut in [1, bytes.len() / 2, bytes.len() - 1] {
                            assert!(decode(&bytes[..cut]).is_err());
                            assert!(decode_view(&bytes[..cut]).is_err());
                        }
                        n += 1;
                    }
                }
            }
        }
        // An unknown variant index is rejected by both.
        let mut bytes = encode(&Record::Access(sample_access(1))).unwrap();
        bytes[0] = 9;
        assert!(decode(&bytes).is_err() && decode_view(&bytes).is_err());
    }
}
