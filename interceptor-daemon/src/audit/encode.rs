//! The data path's records, encoded without building them first.
//!
//! Every statement of a busy session makes an access record and a response
//! record. Building those structs and serialising them costs a clone of the
//! identity (with its claims) per record, and a `String` per column name and
//! recorded value, all freed right after encoding. The encoders here produce
//! the same bytes as [`super::record::encode`] of the equivalent
//! [`Record`](super::record::Record), so the format, the verifier and every
//! reader are unchanged:
//!
//! * [`AccessBase`] encodes a connection's constant fields (node, identity,
//!   target, protocol, session) once; a record then costs only what differs.
//! * [`SqlResponse`] writes a `Record::Response` with a SQL summary value by
//!   value as the response streams past, reusing its buffers across responses.
//!
//! Both rely on bincode's serde encoding being a plain concatenation of the
//! fields in declaration order (no field tags or lengths around structs), with
//! sequences and strings prefixed by their varint length. The tests compare
//! every shape with the struct encoding, so a change to the record types that
//! is not mirrored here fails them.

use serde::Serialize;

use super::record::{self, AccessRecord, Decision, Outcome};

/// `Record::Access`'s variant index.
const ACCESS_VARIANT: u64 = 0;
/// `Record::Response`'s variant index.
const RESPONSE_VARIANT: u64 = 5;
/// `ResponseSummary::Sql`'s variant index.
const SQL_SUMMARY_VARIANT: u64 = 0;

/// bincode's varint: one byte below 251, else a marker and 2, 4 or 8 bytes LE.
fn put_u64(out: &mut Vec<u8>, v: u64) {
    if v < 251 {
        out.push(v as u8);
    } else if let Ok(v) = u16::try_from(v) {
        out.push(251);
        out.extend_from_slice(&v.to_le_bytes());
    } else if let Ok(v) = u32::try_from(v) {
        out.push(252);
        out.extend_from_slice(&v.to_le_bytes());
    } else {
        out.push(253);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// `Option<&str>`: a 0 byte, or a 1 byte and the string.
fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

fn put_serde<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) -> Result<(), record::EncodeError> {
    bincode::serde::encode_into_std_write(v, out, record::CONFIG).map(drop)
}

/// What a connection's access records share, encoded once.
#[derive(Debug, Clone)]
pub struct AccessBase {
    record: AccessRecord,
    /// node, identity, target, protocol.
    head: Option<Vec<u8>>,
    /// session_id, connection_id.
    tail: Vec<u8>,
}

/// The fields of one access record that are not the connection's.
#[derive(Debug, Clone, Copy)]
pub struct AccessEntry<'a> {
    pub time_ns: u64,
    pub operation: &'a str,
    pub decision: &'a Decision,
    pub rule_id: Option<&'a str>,
    pub approval_ref: Option<&'a str>,
    pub outcome: Option<&'a Outcome>,
    pub duration_ns: u64,
}

impl AccessEntry<'static> {
    /// An allowed entry made now, with no operation, rule or outcome yet.
    pub fn now() -> AccessEntry<'static> {
        AccessEntry {
            time_ns: record::now_ns(),
            operation: "",
            decision: &Decision::Allow,
            rule_id: None,
            approval_ref: None,
            outcome: None,
            duration_ns: 0,
        }
    }
}

/// The record's fields between `protocol` and `session_id`, in order.
#[derive(Serialize)]
struct Middle<'a> {
    operation: &'a str,
    decision: &'a Decision,
    rule_id: Option<&'a str>,
    approval_ref: Option<&'a str>,
    outcome: Option<&'a Outcome>,
    duration_ns: u64,
}

#[derive(Serialize)]
struct Head<'a> {
    node: &'a str,
    identity: &'a super::Identity,
    target: &'a str,
    protocol: &'a super::Protocol,
}

impl AccessBase {
    /// `base`'s per-record fields (time, operation, decision...) are ignored.
    pub fn new(base: AccessRecord) -> AccessBase {
        let mut head = Vec::with_capacity(256);
        let encoded = put_serde(
            &mut head,
            &Head {
                node: &base.node,
                identity: &base.identity,
                target: &base.target,
                protocol: &base.protocol,
            },
        );
        let mut tail = Vec::with_capacity(32);
        put_str(&mut tail, &base.session_id);
        put_u64(&mut tail, base.connection_id);
        AccessBase {
            record: base,
            // Unreachable for these types (bincode fails only on sequences of
            // unknown length); should it happen, `encode` takes the struct
            // path, which reports the error.
            head: if encoded.is_ok() { Some(head) } else { None },
            tail,
        }
    }

    /// The connection's fields as a record, for the rare paths that build one.
    pub fn record(&self) -> &AccessRecord {
        &self.record
    }

    /// The body of `Record::Access` for this connection and `e`.
    pub fn encode(&self, e: &AccessEntry<'_>) -> Result<Vec<u8>, record::EncodeError> {
        let Some(head) = &self.head else {
            return record::encode(&record::Record::Access(AccessRecord {
                time_ns: e.time_ns,
                operation: e.operation.to_string(),
                decision: e.decision.clone(),
                rule_id: e.rule_id.map(str::to_string),
                approval_ref: e.approval_ref.map(str::to_string),
                outcome: e.outcome.cloned(),
                duration_ns: e.duration_ns,
                ..self.record.clone()
            }));
        };
        let mut out = Vec::with_capacity(head.len() + self.tail.len() + e.operation.len() + 64);
        put_u64(&mut out, ACCESS_VARIANT);
        put_u64(&mut out, e.time_ns);
        out.extend_from_slice(head);
        put_serde(
            &mut out,
            &Middle {
                operation: e.operation,
                decision: e.decision,
                rule_id: e.rule_id,
                approval_ref: e.approval_ref,
                outcome: e.outcome,
                duration_ns: e.duration_ns,
            },
        )?;
        out.extend_from_slice(&self.tail);
        Ok(out)
    }
}

/// A `Record::Response` with a SQL summary (one result per statement), written
/// as the response streams past: column names and values go straight into the
/// record's bytes, and the buffers are reused for the next response.
///
/// Use: per result, [`column`](Self::column)s, then rows
/// ([`row`](Self::row) + its [`value`](Self::value)s, or only
/// [`count_row`](Self::count_row)), then [`end_result`](Self::end_result);
/// [`finish`](Self::finish) makes the record.
#[derive(Debug, Default)]
pub struct SqlResponse {
    /// Finished results, encoded.
    results: Vec<u8>,
    result_count: u64,
    /// The open result's column names and recorded rows.
    columns: Vec<u8>,
    column_count: u64,
    rows: Vec<u8>,
    recorded_rows: u64,
    row_count: u64,
    truncated: bool,
}

impl SqlResponse {
    pub fn result_count(&self) -> u64 {
        self.result_count
    }

    pub fn recorded_rows(&self) -> u64 {
        self.recorded_rows
    }

    /// Some rows, values or results of the open result were left out.
    pub fn mark_truncated(&mut self) {
        self.truncated = true;
    }

    pub fn column(&mut self, name: &str) {
        self.column_count += 1;
        put_str(&mut self.columns, name);
    }

    /// A counted row that is not recorded.
    pub fn count_row(&mut self) {
        self.row_count += 1;
    }

    /// A recorded row of `values` values (each added with [`value`](Self::value)).
    pub fn row(&mut self, values: usize) {
        self.count_row();
        self.recorded_rows += 1;
        put_u64(&mut self.rows, values as u64);
    }

    /// One value of the row begun last; `None` is SQL NULL.
    pub fn value(&mut self, v: Option<&str>) {
        put_opt_str(&mut self.rows, v);
    }

    /// Ends the open result (or an empty one) with its tag or error.
    pub fn end_result(&mut self, tag: Option<&str>, error: Option<(&str, &str)>) {
        let r = &mut self.results;
        put_u64(r, self.column_count);
        r.extend_from_slice(&self.columns);
        put_u64(r, self.recorded_rows);
        r.extend_from_slice(&self.rows);
        put_u64(r, self.row_count);
        put_opt_str(r, tag);
        match error {
            None => r.push(0),
            Some((code, message)) => {
                r.push(1);
                put_str(r, code);
                put_str(r, message);
            }
        }
        r.push(u8::from(self.truncated));
        self.result_count += 1;
        self.clear_result();
    }

    /// Forgets the open result, keeping its buffers.
    fn clear_result(&mut self) {
        self.columns.clear();
        self.rows.clear();
        self.column_count = 0;
        self.recorded_rows = 0;
        self.row_count = 0;
        self.truncated = false;
    }

    /// Marks the last ended result truncated (results were left out after it).
    pub fn truncate_last(&mut self) {
        // `truncated` is the last field of an encoded result.
        if self.result_count > 0
            && let Some(b) = self.results.last_mut()
        {
            *b = 1;
        }
    }

    /// The record of the ended results (a result not ended is dropped);
    /// `None` when there are none. Resets for the next response.
    pub fn finish(
        &mut self,
        time_ns: u64,
        session_id: &str,
        connection_id: u64,
        duration_ns: u64,
    ) -> Option<Vec<u8>> {
        let body = (self.result_count > 0).then(|| {
            let mut out = Vec::with_capacity(self.results.len() + session_id.len() + 40);
            put_u64(&mut out, RESPONSE_VARIANT);
            put_u64(&mut out, time_ns);
            put_str(&mut out, session_id);
            put_u64(&mut out, connection_id);
            put_u64(&mut out, duration_ns);
            put_u64(&mut out, SQL_SUMMARY_VARIANT);
            put_u64(&mut out, self.result_count);
            out.extend_from_slice(&self.results);
            out
        });
        self.results.clear();
        self.result_count = 0;
        self.clear_result();
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::{
        Record, ResponseRecord, ResponseSummary, SqlError, SqlResult, sample_access,
    };

    #[test]
    fn varints_match_bincode_at_every_width() {
        for v in [
            0u64,
            1,
            250,
            251,
            255,
            256,
            65_535,
            65_536,
            u32::MAX as u64,
            u32::MAX as u64 + 1,
            1_700_000_000_000_000_000,
            u64::MAX,
        ] {
            let mut mine = Vec::new();
            put_u64(&mut mine, v);
            assert_eq!(
                mine,
                bincode::serde::encode_to_vec(v, record::CONFIG).unwrap(),
                "{v}"
            );
        }
        let long = "x".repeat(70_000);
        for s in ["", "abalance", "é", long.as_str()] {
            let mut mine = Vec::new();
            put_str(&mut mine, s);
            assert_eq!(
                mine,
                bincode::serde::encode_to_vec(s, record::CONFIG).unwrap()
            );
        }
    }

    #[test]
    fn access_records_encode_like_the_struct() {
        let outcomes = [
            None,
            Some(Outcome::Rows(3)),
            Some(Outcome::Error("approval timed out".into())),
        ];
        for i in [0u64, 7, 300, 70_000, u64::MAX / 3] {
            for (k, outcome) in outcomes.iter().enumerate() {
                let mut full = sample_access(i);
                full.identity
                    .claims
                    .insert(format!("claim-{k}"), "v".repeat(k * 100));
                full.outcome = outcome.clone();
                full.approval_ref = (k == 1).then(|| "apr-12".to_string());
                full.rule_id = (k != 2).then(|| "r".repeat(i as usize % 300));
                full.decision = [Decision::Allow, Decision::Deny, Decision::Approved][k].clone();
                full.duration_ns = i.wrapping_mul(31);
                let base = AccessBase::new(AccessRecord {
                    operation: "ignored".into(),
                    time_ns: 1,
                    ..full.clone()
                });
                let mine = base
                    .encode(&AccessEntry {
                        time_ns: full.time_ns,
                        operation: &full.operation,
                        decision: &full.decision,
                        rule_id: full.rule_id.as_deref(),
                        approval_ref: full.approval_ref.as_deref(),
                        outcome: full.outcome.as_ref(),
                        duration_ns: full.duration_ns,
                    })
                    .unwrap();
                assert_eq!(mine, record::encode(&Record::Access(full.clone())).unwrap());
                assert_eq!(record::decode(&mine).unwrap(), Record::Access(full));
            }
        }
    }

    fn build(r: &mut SqlResponse, results: &[SqlResult]) {
        for res in results {
            for c in &res.columns {
                r.column(c);
            }
            for row in &res.rows {
                r.row(row.len());
                for v in row {
                    r.value(v.as_deref());
                }
            }
            for _ in res.rows.len() as u64..res.row_count {
                r.count_row();
            }
            if res.truncated {
                r.mark_truncated();
            }
            r.end_result(
                res.tag.as_deref(),
                res.error
                    .as_ref()
                    .map(|e| (e.code.as_str(), e.message.as_str())),
            );
        }
    }

    #[test]
    fn sql_responses_encode_like_the_struct_and_buffers_are_reused() {
        let shapes: Vec<Vec<SqlResult>> = vec![
            vec![SqlResult {
                columns: vec!["abalance".into()],
                rows: vec![vec![Some("-2817".into())]],
                row_count: 1,
                tag: Some("SELECT 1".into()),
                error: None,
                truncated: false,
            }],
            vec![
                SqlResult {
                    columns: vec!["id".into(), "email".into()],
                    rows: vec![
                        vec![Some("1".into()), None],
                        vec![None, Some("é".repeat(300))],
                    ],
                    row_count: 400,
                    tag: Some("SELECT 400".into()),
                    error: None,
                    truncated: true,
                },
                SqlResult {
                    error: Some(SqlError {
                        code: "42501".into(),
                        message: "denied by rule no-writes".into(),
                    }),
                    ..SqlResult::default()
                },
                SqlResult::default(),
            ],
        ];
        let mut r = SqlResponse::default();
        for (i, results) in shapes.iter().chain(shapes.iter()).enumerate() {
            build(&mut r, results);
            let mine = r
                .finish(1_700_000_000_000_000_000 + i as u64, "bench-42", 42, 90_000)
                .unwrap();
            let rec = Record::Response(ResponseRecord {
                time_ns: 1_700_000_000_000_000_000 + i as u64,
                session_id: "bench-42".into(),
                connection_id: 42,
                duration_ns: 90_000,
                summary: ResponseSummary::Sql(results.clone()),
            });
            assert_eq!(mine, record::encode(&rec).unwrap(), "shape {i}");
        }
        assert_eq!(r.finish(1, "s", 1, 1), None, "nothing ended, no record");
    }

    #[test]
    fn the_last_result_can_be_marked_truncated_after_it_ended() {
        let mut r = SqlResponse::default();
        let mut results = vec![
            SqlResult::default(),
            SqlResult {
                tag: Some("UPDATE 1".into()),
                ..SqlResult::default()
            },
        ];
        build(&mut r, &results);
        r.truncate_last();
        results[1].truncated = true;
        let mine = r.finish(5, "s", 1, 2).unwrap();
        let expect = Record::Response(ResponseRecord {
            time_ns: 5,
            session_id: "s".into(),
            connection_id: 1,
            duration_ns: 2,
            summary: ResponseSummary::Sql(results),
        });
        assert_eq!(record::decode(&mine).unwrap(), expect);
    }
}
