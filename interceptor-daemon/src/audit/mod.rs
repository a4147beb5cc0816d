//! Tamper-evident audit log: the evidence auditors check offline.
//!
//! Every governed operation becomes an [`AccessRecord`] appended to a log of segment
//! files in one directory. The design follows from what an auditor must be able to
//! conclude from the files and the node's public key alone:
//!
//! - *Nothing was altered or inserted*: every record carries the SHA-256 of the
//!   record before it, across segment boundaries (segment headers are links of the
//!   chain too), so any change breaks the chain at that point ([`mod@format`]).
//! - *The records come from this node*: every N records or T seconds, and whenever
//!   the log itself has something to say (segment sealed, recovery, retention, key
//!   rotation), a checkpoint signed with the node's Ed25519 key commits to the chain
//!   head, the record count, the time and an RFC 6962 Merkle root over the records
//!   since the previous checkpoint ([`keys`], [`record::Checkpoint`]).
//! - *Nothing was removed*: segments are numbered and chained; only a signed
//!   retention record can explain missing old segments, and a crash's torn tail is
//!   cut only together with a signed recovery record that says what was cut (the
//!   bytes are kept next to the segment).
//! - *Nothing acknowledged is lost*: [`AuditLog::append`] resolves after the record
//!   is fsynced; a writer task batches concurrent appends into one write and one
//!   fsync (group commit), which is where the throughput comes from ([`writer`]).
//!
//! Besides the decisions, the log records what each client received
//! ([`record::ResponseRecord`], since format version 2; summaries built by
//! [`crate::recording`] from the bytes sent, after masking), so a session replays
//! from the same signed evidence. Retention ([`writer::prune`] offline, the
//! writer's periodic check in the daemon) removes only whole sealed segments,
//! after a signed record names them.
//!
//! [`verify::verify_dir`] checks all of this without the daemon; [`cli`] holds the
//! `interceptor audit` commands. The auditor-facing side ([`review`]: query, report,
//! export, tail, sessions) reads the segments while the daemon appends ([`reader`]);
//! its sled [`index`] is derived data, rebuilt from the segments whenever it is
//! missing or stale and never part of the evidence. Evidence packages ([`export`])
//! carry whole segments so they verify like the log itself.

pub mod cli;
pub mod encode;
pub mod export;
pub mod format;
pub mod index;
pub mod keys;
pub mod query;
pub mod reader;
pub mod record;
pub mod review;
pub mod verify;
pub mod writer;

use std::{path::PathBuf, time::Duration};

pub use record::{AccessRecord, Decision, Identity, Outcome, Protocol, Record, Verification};
pub use verify::{Report, VerifyError, verify_dir};
pub use writer::{AuditLog, OpenReport, Receipt};

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit key: {0}")]
    Key(String),
    #[error("audit log damaged: {segment} at byte {offset}: {reason}")]
    Corrupt {
        segment: String,
        offset: u64,
        reason: String,
    },
    #[error("audit record rejected: {0}")]
    Record(String),
    #[error("audit writer failed: {0}")]
    WriterFailed(String),
    #[error("audit log is closed")]
    Closed,
}

impl AuditError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AuditError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Where and how the log is written.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Directory of the segment files (created with mode 0700).
    pub dir: PathBuf,
    /// This node's name, written into every segment header.
    pub node: String,
    /// The signing key; `dir/node.key` by default.
    pub key_file: Option<PathBuf>,
    /// A segment is sealed and a new one started once it reaches this size.
    pub segment_max_bytes: u64,
    /// A checkpoint is written after this many records...
    pub checkpoint_every_records: u64,
    /// ...or this long after the previous one, whichever comes first. The retention
    /// limits are checked at the same interval.
    pub checkpoint_interval: Duration,
    /// Delete the oldest sealed segments while the log is larger than this.
    pub retention_max_bytes: Option<u64>,
    /// Delete sealed segments last written longer ago than this.
    pub retention_max_age: Option<Duration>,
    /// Appends waiting for the writer before `append` waits for room.
    pub queue_capacity: usize,
    /// Most records written with one fsync.
    pub max_batch: usize,
    /// How long records nobody waits for ([`AuditLog::submit`]) may gather
    /// before they are written and fsynced together: bounds how far the disk
    /// lags behind allowed traffic, and saves a write + fsync per statement
    /// under load. An [`AuditLog::append`] (a denial, an approval) ends the
    /// wait at once.
    pub linger: Duration,
    /// Told when each submitted or appended record is durable (how long after
    /// it was queued) or failed; the daemon feeds its metrics from it.
    pub observer: Option<Observer>,
    /// Format version of new segments: [`format::FORMAT_VERSION`]; tests set an
    /// older one to produce the logs of earlier releases.
    #[doc(hidden)]
    pub write_version: u16,
}

/// A callback for [`AuditConfig::observer`]: `Ok(queued→durable)` or `Err(())`.
#[derive(Clone)]
pub struct Observer(pub std::sync::Arc<dyn Fn(Result<Duration, ()>) + Send + Sync>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

impl AuditConfig {
    pub fn new(dir: impl Into<PathBuf>, node: impl Into<String>) -> Self {
        AuditConfig {
            dir: dir.into(),
            node: node.into(),
            key_file: None,
            segment_max_bytes: 64 << 20,
            checkpoint_every_records: 10_000,
            checkpoint_interval: Duration::from_secs(10),
            retention_max_bytes: None,
            retention_max_age: None,
            queue_capacity: 65_536,
            max_batch: 32_768,
            linger: Duration::from_millis(20),
            observer: None,
            write_version: format::FORMAT_VERSION,
        }
    }

    pub fn key_path(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.dir.join(DEFAULT_KEY_FILE))
    }
}

/// Name of the key file inside the log directory, unless configured otherwise.
pub const DEFAULT_KEY_FILE: &str = "node.key";
