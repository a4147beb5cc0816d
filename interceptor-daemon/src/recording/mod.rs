//! Session recording: what each client *received*, as bounded summaries in the
//! signed audit log next to the decisions about what it sent.
//!
//! Responses go into the same hash-chained, checkpoint-signed log as the access
//! records ([`crate::audit::record::ResponseRecord`], format version 2), so one
//! `audit verify` covers both and `sessions replay` interleaves them by time.
//!
//! The protocol observers here look only at the bytes the proxy is about to
//! write to the client, after masking and after the proxy's own denials were
//! put in place: a recorded value is exactly what the client saw, never the
//! server's raw value. Every summary is bounded (rows, value length, results per
//! response, bytes per response) so a huge result costs a fixed amount; with
//! `record_rows: 0` a data row is only counted (no allocation per row).
//!
//! Appends are not awaited by the data path (like allowed decisions): the
//! record follows the response to the client.

pub mod http;
pub mod mysql;
pub mod pg;
pub mod redis;

use std::{borrow::Cow, sync::Arc, time::Instant};

use serde::Deserialize;
use tracing::warn;

use crate::{
    audit::{
        AuditLog,
        record::{ResponseRecord, ResponseSummary, now_ns},
    },
    metrics::Metrics,
};

/// Longest recorded value, in characters (longer ones are cut and marked).
pub const MAX_VALUE_CHARS: usize = 256;
/// Most results (statements) recorded for one response.
pub const MAX_RESULTS: usize = 32;
/// Most columns recorded per result.
pub const MAX_COLUMNS: usize = 128;
/// Most bytes of names and values recorded for one response.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// `audit.retention`: old sealed segments are removed beyond these limits, each
/// removal recorded as a signed retention record.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Remove the oldest segments while the log is larger than this: bytes, or
    /// a string with a unit (`500MiB`, `20GB`).
    #[serde(default, deserialize_with = "bytes_opt")]
    pub max_bytes: Option<u64>,
    /// Remove segments last written longer ago than this (`30d`, `12h`).
    #[serde(default, deserialize_with = "duration_opt")]
    pub max_age: Option<std::time::Duration>,
}

fn bytes_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        Num(u64),
        Text(String),
    }
    match Option::<N>::deserialize(d)? {
        None => Ok(None),
        Some(N::Num(n)) => Ok(Some(n)),
        Some(N::Text(s)) => crate::audit::cli::parse_bytes(&s)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

fn duration_opt<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::time::Duration>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => humantime::parse_duration(&s)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("`{s}`: {e}"))),
    }
}

/// Appends one session's response summaries.
#[derive(Clone)]
pub struct Recorder {
    log: AuditLog,
    metrics: Arc<Metrics>,
    session_id: Arc<str>,
    connection_id: u64,
    /// Rows recorded per result (0: none, only counted).
    pub rows: usize,
}

impl Recorder {
    /// The recorder for one connection, if responses are recorded.
    pub fn for_connection(
        shared: &crate::listener::Shared,
        meta: &crate::listener::ConnMeta,
    ) -> Option<Recorder> {
        let cfg = shared.cfg.audit.as_ref()?;
        if !cfg.record_responses {
            return None;
        }
        Some(Recorder::new(
            shared.audit.clone()?,
            shared.metrics.clone(),
            &meta.session_id(&shared.node),
            meta.id,
            cfg.record_rows,
        ))
    }

    pub fn new(
        log: AuditLog,
        metrics: Arc<Metrics>,
        session_id: &str,
        connection_id: u64,
        rows: usize,
    ) -> Recorder {
        Recorder {
            log,
            metrics,
            session_id: session_id.into(),
            connection_id,
            rows,
        }
    }

    /// Queues the record of the SQL results in `r` (none: nothing), a
    /// response that began at `started`; `r` is ready for the next one.
    pub fn emit_sql(&self, started: Instant, r: &mut crate::audit::encode::SqlResponse) {
        let duration_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let Some(body) = r.finish(now_ns(), &self.session_id, self.connection_id, duration_ns)
        else {
            return;
        };
        if let Err(e) = self.log.queue_encoded(body) {
            self.metrics.audit_append_failures.inc();
            warn!(error = %e, "audit append (response) failed");
        }
    }

    /// Queues the record of one response that began at `started`.
    pub fn emit(&self, started: Instant, summary: ResponseSummary) {
        let rec = ResponseRecord {
            time_ns: now_ns(),
            session_id: self.session_id.to_string(),
            connection_id: self.connection_id,
            duration_ns: u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            summary,
        };
        // Durable latency and write failures reach the metrics through the
        // log's observer; nothing here waits for the disk.
        if let Err(e) = self.log.submit_response(rec) {
            self.metrics.audit_append_failures.inc();
            warn!(error = %e, "audit append (response) failed");
        }
    }
}

/// A value as recorded: UTF-8 text cut to [`MAX_VALUE_CHARS`] characters, other
/// bytes as `\x` hex (cut likewise). Returns the text and whether it was cut.
pub fn render_value(v: &[u8]) -> (String, bool) {
    let (s, cut) = rendered(v);
    (s.into_owned(), cut)
}

/// [`render_value`], borrowing the text when it needs no rendering.
pub fn rendered(v: &[u8]) -> (Cow<'_, str>, bool) {
    match std::str::from_utf8(v) {
        Ok(s) => {
            let (s, cut) = clipped(s, MAX_VALUE_CHARS);
            (Cow::Borrowed(s), cut)
        }
        Err(_) => {
            use std::fmt::Write;
            let n = v.len().min(MAX_VALUE_CHARS / 2);
            let mut s = String::with_capacity(2 + 2 * n);
            s.push_str("\\x");
            for b in &v[..n] {
                let _ = write!(s, "{b:02x}");
            }
            (Cow::Owned(s), n < v.len())
        }
    }
}

/// `s` cut to at most `max` characters.
pub fn clip(s: &str, max: usize) -> (String, bool) {
    let (s, cut) = clipped(s, max);
    (s.to_string(), cut)
}

/// [`clip`] without a copy.
pub fn clipped(s: &str, max: usize) -> (&str, bool) {
    // At most `max` characters take at most 4 * max bytes: a short string
    // needs no walk over its characters.
    if s.len() <= max {
        return (s, false);
    }
    match s.char_indices().nth(max) {
        Some((i, _)) => (&s[..i], true),
        None => (s, false),
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::audit::{
        AuditConfig, reader,
        record::{Record, SqlResult},
    };

    /// Runs `f` with a recorder (session `s-1`, connection `connection`, `rows`
    /// rows per result) into a fresh log, closes the log, and returns its
    /// directory with the response records in it, in order.
    pub(crate) async fn record(
        connection: u64,
        rows: usize,
        f: impl FnOnce(Recorder),
    ) -> (tempfile::TempDir, Vec<ResponseRecord>) {
        let tmp = tempfile::tempdir().unwrap();
        let (log, _) = AuditLog::open(AuditConfig::new(tmp.path(), "n"))
            .await
            .unwrap();
        f(Recorder::new(
            log.clone(),
            Arc::new(Metrics::new()),
            "s-1",
            connection,
            rows,
        ));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        log.close().await.unwrap();
        let responses = reader::read_all(tmp.path())
            .unwrap()
            .iter()
            .filter_map(|e| match e.decode("") {
                Ok(Record::Response(x)) => Some(x),
                _ => None,
            })
            .collect();
        (tmp, responses)
    }

    /// The SQL results of each response.
    pub(crate) fn sql(responses: Vec<ResponseRecord>) -> Vec<Vec<SqlResult>> {
        responses
            .into_iter()
            .filter_map(|x| match x.summary {
                ResponseSummary::Sql(v) => Some(v),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_limits_read_with_units() {
        let r: RetentionConfig = serde_yaml::from_str("max_bytes: 2GiB\nmax_age: 30d\n").unwrap();
        assert_eq!(r.max_bytes, Some(2 << 30));
        assert_eq!(r.max_age, Some(std::time::Duration::from_secs(30 * 86_400)));
        let r: RetentionConfig = serde_yaml::from_str("max_bytes: 1000000\n").unwrap();
        assert_eq!((r.max_bytes, r.max_age), (Some(1_000_000), None));
        for bad in ["max_bytes: 5 parsecs\n", "max_age: soon\n", "max_size: 1\n"] {
            assert!(
                serde_yaml::from_str::<RetentionConfig>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn values_are_bounded() {
        let long = "é".repeat(MAX_VALUE_CHARS + 5);
        let (v, cut) = render_value(long.as_bytes());
        assert!(cut && v.chars().count() == MAX_VALUE_CHARS);
        assert_eq!(render_value(&[0xff, 0x00]), ("\\xff00".to_string(), false));
        let (v, cut) = render_value(&[0xff; 1000]);
        assert!(cut && v.len() == 2 + MAX_VALUE_CHARS);
    }
}
