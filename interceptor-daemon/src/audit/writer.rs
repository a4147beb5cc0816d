//! The writer: group commit, checkpoints, rotation, retention, key rotation and
//! crash recovery.
//!
//! Callers encode their record on their own task and queue it; one writer task
//! takes everything queued (up to `max_batch`), frames it into one buffer, writes
//! it with one `write` and one `fdatasync`, and only then acknowledges every record
//! of the batch. While the blocking write runs (on tokio's blocking pool), new
//! appends queue up and form the next batch, so the fsync rate stays constant while
//! the record rate grows with the number of concurrent appenders.
//!
//! Any I/O error leaves the on-disk state unknown, so the writer stops accepting
//! records (every later append fails): the data path fails closed and a restart
//! recovers the tail.

use std::{
    fs::{self, File, OpenOptions},
    io::{Read as _, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::{Duration, Instant, SystemTime},
};

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::{Notify, mpsc, oneshot};

use super::{
    AuditConfig, AuditError,
    format::{
        self, FRAME_OVERHEAD, Hash, Merkle, ZERO_HASH, decode_frame, decode_header, encode_frame,
        segment_name,
    },
    keys,
    record::{
        self, AccessRecord, Checkpoint, KeyRotation, MAX_RECORD_BYTES, Record, Recovery,
        RemovedSegment, ResponseRecord, Retention, now_ns,
    },
};

/// Proof that a record is durable: its place and hash in the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub seq: u64,
    pub hash: Hash,
}

/// What opening the log found.
#[derive(Debug, Clone)]
pub struct OpenReport {
    /// Set when a torn tail was cut (the same content is in the log as a record).
    pub recovered: Option<Recovery>,
    /// Sequence number the next record gets.
    pub next_seq: u64,
    pub segment: u64,
    pub public_key: VerifyingKey,
}

/// Handle to an open log; cheap to clone. The writer stops (after a final
/// checkpoint) when [`AuditLog::close`] is called or every handle is dropped.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    /// Told when someone starts waiting (see [`run`]).
    urgent: Arc<Notify>,
    node: Arc<str>,
}

enum Msg {
    Append {
        body: Vec<u8>,
        /// `None` for a submitted record nobody waits for.
        ack: Option<oneshot::Sender<Result<Receipt, AuditError>>>,
        queued: Instant,
    },
    RotateKey {
        ack: oneshot::Sender<Result<VerifyingKey, AuditError>>,
    },
    Close {
        ack: oneshot::Sender<Result<(), AuditError>>,
    },
}

/// Serialises exactly like `Record::Access` (same variant index), without a clone.
#[derive(Serialize)]
enum AccessRef<'a> {
    Access(&'a AccessRecord),
}

impl AuditLog {
    /// Open (or create) the log, recovering a torn tail, and start the writer task.
    pub async fn open(cfg: AuditConfig) -> Result<(AuditLog, OpenReport), AuditError> {
        let capacity = cfg.queue_capacity.max(1);
        let node: Arc<str> = cfg.node.as_str().into();
        let (writer, report) = tokio::task::spawn_blocking(move || Writer::open(cfg))
            .await
            .map_err(|e| AuditError::WriterFailed(format!("open: {e}")))??;
        let (tx, rx) = mpsc::channel(capacity);
        let (sync_tx, sync_rx) = std::sync::mpsc::channel();
        let failed = writer.sync_failed.clone();
        let dir = writer.cfg.dir.clone();
        std::thread::Builder::new()
            .name("audit-fsync".into())
            .spawn(move || syncer(sync_rx, &failed, &dir))
            .map_err(|e| AuditError::WriterFailed(format!("cannot start the fsync thread: {e}")))?;
        let urgent = Arc::new(Notify::new());
        tokio::spawn(run(Box::new(writer), rx, urgent.clone(), sync_tx));
        Ok((AuditLog { tx, urgent, node }, report))
    }

    /// The node name the log was opened with.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Append a record; resolves once it is on disk (fsynced).
    pub async fn append(&self, rec: &AccessRecord) -> Result<Receipt, AuditError> {
        self.append_encoded(encode(rec)?).await
    }

    /// Queue a record without waiting for the disk: it is written and fsynced
    /// with its group within [`AuditConfig::linger`] (the observer hears when).
    /// Resolves at once unless the queue is full, so a disk that cannot keep
    /// up slows the callers down instead of losing records or growing memory.
    /// For what a client may learn only after it is durable, use [`append`].
    ///
    /// [`append`]: AuditLog::append
    pub async fn submit(&self, rec: &AccessRecord) -> Result<(), AuditError> {
        self.submit_encoded(encode(rec)?).await
    }

    /// Append what a client received (see [`ResponseRecord`]); resolves once durable.
    pub async fn append_response(&self, rec: ResponseRecord) -> Result<Receipt, AuditError> {
        self.append_encoded(encode_response(rec)?).await
    }

    /// Queue what a client received without waiting for the disk, from
    /// synchronous code (the relay's write path): durable with its group, like
    /// [`submit`](AuditLog::submit).
    pub fn submit_response(&self, rec: ResponseRecord) -> Result<(), AuditError> {
        self.queue_encoded(encode_response(rec)?)
    }

    /// [`submit`](AuditLog::submit) of a record body made by [`super::encode`].
    pub async fn submit_encoded(&self, body: Vec<u8>) -> Result<(), AuditError> {
        self.tx
            .send(queued(body, None))
            .await
            .map_err(|_| AuditError::Closed)
    }

    /// Queue a record body made by [`super::encode`] from synchronous code:
    /// when the queue is full the record waits for room in a task of its own
    /// rather than blocking the caller.
    pub fn queue_encoded(&self, body: Vec<u8>) -> Result<(), AuditError> {
        match self.tx.try_send(queued(body, None)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(AuditError::Closed),
            Err(mpsc::error::TrySendError::Full(msg)) => {
                let rt = tokio::runtime::Handle::try_current().map_err(|_| AuditError::Closed)?;
                let tx = self.tx.clone();
                rt.spawn(async move { drop(tx.send(msg).await) });
                Ok(())
            }
        }
    }

    /// [`append`](AuditLog::append) of a record body made by [`super::encode`]:
    /// queued, then waits until it is durable.
    pub async fn append_encoded(&self, body: Vec<u8>) -> Result<Receipt, AuditError> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(queued(body, Some(ack)))
            .await
            .map_err(|_| AuditError::Closed)?;
        self.urgent.notify_one();
        rx.await.map_err(|_| AuditError::Closed)?
    }

    /// Replace the node key: the new public key is recorded, signed by the old key,
    /// and later checkpoints are signed by the new one. Returns the new public key.
    pub async fn rotate_key(&self) -> Result<VerifyingKey, AuditError> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Msg::RotateKey { ack })
            .await
            .map_err(|_| AuditError::Closed)?;
        self.urgent.notify_one();
        rx.await.map_err(|_| AuditError::Closed)?
    }

    /// Write a final checkpoint and stop the writer.
    pub async fn close(&self) -> Result<(), AuditError> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Msg::Close { ack })
            .await
            .map_err(|_| AuditError::Closed)?;
        self.urgent.notify_one();
        rx.await.map_err(|_| AuditError::Closed)?
    }
}

fn encode(rec: &AccessRecord) -> Result<Vec<u8>, AuditError> {
    bincode::serde::encode_to_vec(AccessRef::Access(rec), record::CONFIG)
        .map_err(|e| AuditError::Record(e.to_string()))
}

fn encode_response(rec: ResponseRecord) -> Result<Vec<u8>, AuditError> {
    record::encode(&Record::Response(rec)).map_err(|e| AuditError::Record(e.to_string()))
}

fn queued(body: Vec<u8>, ack: Option<oneshot::Sender<Result<Receipt, AuditError>>>) -> Msg {
    Msg::Append {
        body,
        ack,
        queued: Instant::now(),
    }
}

/// Someone waits for this message's outcome.
fn is_urgent(m: &Msg) -> bool {
    !matches!(m, Msg::Append { ack: None, .. })
}

async fn run(
    mut w: Box<Writer>,
    mut rx: mpsc::Receiver<Msg>,
    urgent: Arc<Notify>,
    sync_tx: std::sync::mpsc::Sender<SyncJob>,
) {
    let max_batch = w.cfg.max_batch.max(1);
    loop {
        let deadline = tokio::time::Instant::from_std(w.next_tick());
        let first = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => Some(m),
                None => {
                    // Every handle is gone: seal what was written, best effort.
                    let _ = tokio::task::spawn_blocking(move || w.finish()).await;
                    return;
                }
            },
            () = tokio::time::sleep_until(deadline) => None,
        };
        let mut batch: Vec<Msg> = first.into_iter().collect();
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        // Nobody waits: gather more for one write and one fsync, up to the
        // linger time after the oldest, unless someone starts waiting. The
        // queue is not watched meanwhile (each record would wake this task:
        // two wake-ups per statement on a busy node); whoever waits for the
        // disk rings `urgent` instead, and the queue is drained after.
        if !batch.is_empty()
            && !batch.iter().any(is_urgent)
            && !w.cfg.linger.is_zero()
            && batch.len() < max_batch
        {
            tokio::select! {
                () = tokio::time::sleep(w.cfg.linger) => {}
                () = urgent.notified() => {}
            }
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
        }
        let joined = tokio::task::spawn_blocking(move || {
            let job = w.process(batch);
            (w, job)
        })
        .await;
        let Ok((back, job)) = joined else {
            // The writer panicked: dropping the queue fails every waiting append.
            tracing::error!("audit writer task panicked; audit log closed");
            return;
        };
        w = back;
        if sync_tx.send(job).is_err() || w.closed {
            return;
        }
    }
}

/// A written batch waiting for its fsync, and the replies to send after it.
struct SyncJob {
    /// The segment written to and its sequence number (its path is only
    /// needed to report a failed fsync).
    file: Option<(Arc<File>, u64)>,
    replies: Replies,
    observer: Option<super::Observer>,
}

/// The second stage of the pipeline: while the writer frames and writes the next
/// batch, this thread fsyncs the previous ones (one fsync for all batches waiting)
/// and acknowledges them. A failed fsync fails its batches and every later one:
/// after an fsync error the kernel may have dropped the data, and a later fsync
/// can succeed without writing it.
fn syncer(rx: std::sync::mpsc::Receiver<SyncJob>, failed: &OnceLock<String>, dir: &Path) {
    while let Ok(job) = rx.recv() {
        let observer = job.observer.clone();
        let mut jobs = vec![job];
        while let Ok(j) = rx.try_recv() {
            jobs.push(j);
        }
        let mut synced: Vec<*const File> = Vec::new();
        for j in &jobs {
            if let Some((f, seq)) = &j.file
                && failed.get().is_none()
                && !synced.contains(&Arc::as_ptr(f))
            {
                if let Err(e) = f.sync_data() {
                    let path = dir.join(segment_name(*seq));
                    let msg = format!("{}: fsync: {e}", path.display());
                    tracing::error!(error = %msg, "audit log fsync failed; the log stops accepting records");
                    let _ = failed.set(msg);
                }
                synced.push(Arc::as_ptr(f));
            }
        }
        for j in jobs {
            j.replies.send(failed.get(), observer.as_ref());
        }
    }
}

/// Replies of one batch, sent after its fsync.
struct Replies(Vec<Reply>);

enum Reply {
    Append(
        Option<oneshot::Sender<Result<Receipt, AuditError>>>,
        Result<Receipt, AuditError>,
        Instant,
    ),
    RotateKey(
        oneshot::Sender<Result<VerifyingKey, AuditError>>,
        Result<VerifyingKey, AuditError>,
    ),
    Close(
        oneshot::Sender<Result<(), AuditError>>,
        Result<(), AuditError>,
    ),
}

impl Replies {
    /// Send every reply (failed ones when the fsync failed).
    fn send(self, failed: Option<&String>, observer: Option<&super::Observer>) {
        let fail = || AuditError::WriterFailed(failed.cloned().unwrap_or_default());
        // Every record of the batch became durable at this same moment.
        let now = Instant::now();
        for r in self.0 {
            // A caller that stopped waiting is no error of the log.
            match r {
                Reply::Append(tx, v, queued) => {
                    let v = if failed.is_some() { Err(fail()) } else { v };
                    if let Some(o) = observer {
                        (o.0)(
                            v.as_ref()
                                .map(|_| now.saturating_duration_since(queued))
                                .map_err(|_| ()),
                        );
                    }
                    if let Some(tx) = tx {
                        drop(tx.send(v));
                    }
                }
                Reply::RotateKey(tx, v) => {
                    drop(tx.send(if failed.is_some() { Err(fail()) } else { v }))
                }
                Reply::Close(tx, v) => {
                    drop(tx.send(if failed.is_some() { Err(fail()) } else { v }))
                }
            }
        }
    }
}

struct Active {
    seq: u64,
    /// Format version in the segment's header.
    version: u16,
    file: Arc<File>,
    /// Bytes on disk (written and fsynced).
    len: u64,
    /// Header size: a segment longer than this has records.
    header_len: u64,
}

/// The synchronous state of the writer; it moves between the writer task and the
/// blocking pool for every batch.
pub(super) struct Writer {
    cfg: AuditConfig,
    /// Held (flock) while the writer lives: one writer per directory, so an
    /// offline `audit prune` cannot interleave with a running daemon.
    _lock: File,
    key: SigningKey,
    key_path: PathBuf,
    seg: Active,
    head: Hash,
    next_seq: u64,
    merkle: Merkle,
    prev_checkpoint: Hash,
    last_checkpoint: Instant,
    last_retention: Instant,
    buf: Vec<u8>,
    /// Written since the last fsync.
    unsynced: bool,
    failed: Option<String>,
    /// Set by the fsync thread.
    sync_failed: Arc<OnceLock<String>>,
    closed: bool,
}

impl Writer {
    /// When the writer must wake up without new records: the next time checkpoint
    /// or retention check.
    fn next_tick(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(86_400);
        if self.failed.is_some() || self.closed {
            return far;
        }
        let mut t = self.last_retention + self.cfg.checkpoint_interval;
        if self.merkle.count() > 0 {
            t = t.min(self.last_checkpoint + self.cfg.checkpoint_interval);
        }
        t
    }

    fn process(&mut self, batch: Vec<Msg>) -> SyncJob {
        if let Some(f) = self.sync_failed.get() {
            self.failed.get_or_insert_with(|| f.clone());
        }
        let mut replies = Vec::with_capacity(batch.len());
        if let Some(f) = self
            .failed
            .clone()
            .or_else(|| self.closed.then(|| "closed".into()))
        {
            for m in batch {
                reply_err(&mut replies, m, &f);
            }
            return SyncJob {
                file: None,
                replies: Replies(replies),
                observer: self.cfg.observer.clone(),
            };
        }
        let res = self.process_inner(batch, &mut replies);
        if let Err(e) = res {
            let msg = e.to_string();
            tracing::error!(error = %msg, "audit log write failed; the log stops accepting records");
            self.failed = Some(msg.clone());
            for r in &mut replies {
                match r {
                    Reply::Append(_, v, _) => *v = Err(AuditError::WriterFailed(msg.clone())),
                    Reply::RotateKey(_, v) => *v = Err(AuditError::WriterFailed(msg.clone())),
                    Reply::Close(_, v) => *v = Err(AuditError::WriterFailed(msg.clone())),
                }
            }
        }
        let file =
            std::mem::take(&mut self.unsynced).then(|| (self.seg.file.clone(), self.seg.seq));
        SyncJob {
            file,
            replies: Replies(replies),
            observer: self.cfg.observer.clone(),
        }
    }

    fn process_inner(
        &mut self,
        batch: Vec<Msg>,
        replies: &mut Vec<Reply>,
    ) -> Result<(), AuditError> {
        let mut iter = batch.into_iter();
        for m in iter.by_ref() {
            match m {
                Msg::Append { body, ack, queued } => {
                    if body.len() > MAX_RECORD_BYTES {
                        let e = AuditError::Record(format!(
                            "record of {} bytes is too large",
                            body.len()
                        ));
                        replies.push(Reply::Append(ack, Err(e), queued));
                        continue;
                    }
                    let receipt = self.push(&body, true)?;
                    replies.push(Reply::Append(ack, Ok(receipt), queued));
                    if self.merkle.count() >= self.cfg.checkpoint_every_records.max(1) {
                        self.checkpoint()?;
                    }
                }
                Msg::RotateKey { ack } => {
                    // Earlier records of the batch are flushed inside.
                    let v = self.rotate_key()?;
                    replies.push(Reply::RotateKey(ack, Ok(v)));
                }
                Msg::Close { ack } => {
                    self.seal()?;
                    replies.push(Reply::Close(ack, Ok(())));
                    self.closed = true;
                    break;
                }
            }
        }
        for m in iter {
            reply_err(replies, m, "closed");
        }
        if !self.closed
            && self.merkle.count() > 0
            && self.last_checkpoint.elapsed() >= self.cfg.checkpoint_interval
        {
            self.checkpoint()?;
        }
        self.flush()?;
        if !self.closed && self.last_retention.elapsed() >= self.cfg.checkpoint_interval {
            self.retain()?;
        }
        Ok(())
    }

    /// Final checkpoint when the last handle is dropped without `close`.
    fn finish(mut self: Box<Self>) {
        if self.failed.is_none()
            && !self.closed
            && let Err(e) = self.seal().and_then(|()| self.flush_sync())
        {
            tracing::error!(error = %e, "audit log: final checkpoint failed");
        }
    }

    /// Checkpoint (if anything is unsigned) and write (the fsync follows).
    fn seal(&mut self) -> Result<(), AuditError> {
        if self.merkle.count() > 0 {
            self.checkpoint()?;
        }
        self.flush()
    }

    /// Frame a record, rotating first when it would not fit in the segment.
    fn push(&mut self, body: &[u8], leaf: bool) -> Result<Receipt, AuditError> {
        self.ensure_room(body.len())?;
        Ok(self.push_raw(body, leaf))
    }

    fn ensure_room(&mut self, body_len: usize) -> Result<(), AuditError> {
        let pending = self.seg.len + self.buf.len() as u64;
        let has_records = pending > self.seg.header_len;
        // Room is kept for the sealing checkpoint (< 300 bytes).
        let needed = (body_len + FRAME_OVERHEAD + 512) as u64;
        if has_records && pending + needed > self.cfg.segment_max_bytes {
            self.rotate_segment()?;
        }
        Ok(())
    }

    fn push_raw(&mut self, body: &[u8], leaf: bool) -> Receipt {
        let seq = self.next_seq;
        let hash = encode_frame(&mut self.buf, seq, &self.head, body);
        self.head = hash;
        self.next_seq += 1;
        if leaf {
            self.merkle.push(&hash);
        }
        Receipt { seq, hash }
    }

    fn push_event(&mut self, r: &Record) -> Result<Receipt, AuditError> {
        let body = record::encode(r).map_err(|e| AuditError::Record(e.to_string()))?;
        self.push(&body, true)
    }

    fn checkpoint(&mut self) -> Result<(), AuditError> {
        let mut cp = Checkpoint {
            time_ns: now_ns(),
            chain_head: self.head,
            record_count: self.next_seq,
            merkle_root: self.merkle.root(),
            leaf_count: self.merkle.count(),
            prev_checkpoint: self.prev_checkpoint,
            signer: self.key.verifying_key().to_bytes(),
            signature: Vec::new(),
        };
        cp.signature = self.key.sign(&cp.signed_message()).to_bytes().to_vec();
        let body = record::encode(&Record::Checkpoint(cp))
            .map_err(|e| AuditError::Record(e.to_string()))?;
        let r = self.push_raw(&body, false);
        self.prev_checkpoint = r.hash;
        self.merkle.clear();
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Write the buffer; the fsync thread syncs it (see [`syncer`]).
    fn flush(&mut self) -> Result<(), AuditError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        (&*self.seg.file)
            .write_all(&self.buf)
            .map_err(|e| AuditError::io(self.segment_path(self.seg.seq), e))?;
        self.seg.len += self.buf.len() as u64;
        self.buf.clear();
        self.unsynced = true;
        Ok(())
    }

    /// Write and fsync now, for steps that must not go on before the data is durable
    /// (sealing a segment, deleting old ones, replacing the key).
    fn flush_sync(&mut self) -> Result<(), AuditError> {
        self.flush()?;
        if std::mem::take(&mut self.unsynced) {
            self.seg
                .file
                .sync_data()
                .map_err(|e| AuditError::io(self.segment_path(self.seg.seq), e))?;
        }
        Ok(())
    }

    fn segment_path(&self, seq: u64) -> PathBuf {
        self.cfg.dir.join(segment_name(seq))
    }

    /// Seal the active segment with a checkpoint and start the next one.
    fn rotate_segment(&mut self) -> Result<(), AuditError> {
        self.checkpoint()?;
        self.flush_sync()?;
        let seq = self.seg.seq + 1;
        let (seg, head) = create_segment(
            &self.cfg.dir,
            seq,
            &self.head,
            &self.cfg.node,
            self.cfg.write_version,
        )?;
        self.seg = seg;
        self.head = head;
        tracing::debug!(segment = seq, "audit log: new segment");
        Ok(())
    }

    fn rotate_key(&mut self) -> Result<VerifyingKey, AuditError> {
        let new = keys::generate()?;
        let next_path = next_key_path(&self.key_path);
        if next_path.exists() {
            fs::remove_file(&next_path).map_err(|e| AuditError::io(&next_path, e))?;
        }
        keys::write_new(&next_path, &new)?;
        let mut rot = KeyRotation {
            time_ns: now_ns(),
            old_key: self.key.verifying_key().to_bytes(),
            new_key: new.verifying_key().to_bytes(),
            signature: Vec::new(),
        };
        let probe = record::encode(&Record::KeyRotation(rot.clone()))
            .map_err(|e| AuditError::Record(e.to_string()))?;
        self.ensure_room(probe.len() + 64)?;
        rot.signature = self
            .key
            .sign(&rot.signed_message(&self.head))
            .to_bytes()
            .to_vec();
        let body = record::encode(&Record::KeyRotation(rot))
            .map_err(|e| AuditError::Record(e.to_string()))?;
        self.push_raw(&body, true);
        self.key = new;
        self.checkpoint()?;
        self.flush_sync()?;
        // The log now names the new key; on a crash before this rename, open()
        // promotes the `.next` file because the log's last signer is its key.
        fs::rename(&next_path, &self.key_path).map_err(|e| AuditError::io(&self.key_path, e))?;
        if let Some(parent) = self.key_path.parent() {
            keys::sync_dir(parent)?;
        }
        tracing::info!(public_key = %keys::public_text(&self.key.verifying_key()), "audit log: node key rotated");
        Ok(self.key.verifying_key())
    }

    /// Delete the oldest sealed segments beyond the size or age limit, after a
    /// signed retention record names them.
    fn retain(&mut self) -> Result<Option<Retention>, AuditError> {
        self.last_retention = Instant::now();
        if self.cfg.retention_max_bytes.is_none() && self.cfg.retention_max_age.is_none() {
            return Ok(None);
        }
        let segs = list_segments(&self.cfg.dir)?;
        let mut total: u64 = 0;
        let mut info = Vec::with_capacity(segs.len());
        for (seq, path) in &segs {
            let meta = fs::metadata(path).map_err(|e| AuditError::io(path, e))?;
            total += meta.len();
            info.push((*seq, path.clone(), meta.len(), meta.modified().ok()));
        }
        let now = SystemTime::now();
        let mut removed = Vec::new();
        let mut paths = Vec::new();
        let mut why = Vec::new();
        for (seq, path, len, mtime) in info {
            if seq >= self.seg.seq {
                break;
            }
            let over_size = self.cfg.retention_max_bytes.is_some_and(|m| total > m);
            let too_old = match (self.cfg.retention_max_age, mtime) {
                (Some(age), Some(t)) => now.duration_since(t).is_ok_and(|d| d > age),
                _ => false,
            };
            if !over_size && !too_old {
                break;
            }
            // The chain head at the end of this segment is the next header's `prev`.
            let next = self.segment_path(seq + 1);
            let header = read_header(&next)?;
            removed.push(RemovedSegment {
                segment: seq,
                last_hash: header.prev,
                bytes: len,
            });
            paths.push(path);
            why.push(if over_size { "size" } else { "age" });
            total -= len;
        }
        if removed.is_empty() {
            return Ok(None);
        }
        why.dedup();
        let rec = Retention {
            time_ns: now_ns(),
            removed,
            reason: format!("retention limit reached ({})", why.join(", ")),
        };
        self.push_event(&Record::Retention(rec.clone()))?;
        self.checkpoint()?;
        self.flush_sync()?;
        for p in &paths {
            fs::remove_file(p).map_err(|e| AuditError::io(p, e))?;
        }
        keys::sync_dir(&self.cfg.dir)?;
        tracing::info!(
            segments = paths.len(),
            "audit log: retention removed old segments"
        );
        Ok(Some(rec))
    }

    /// Open the directory: create a new log, or recover the existing one's state.
    pub(super) fn open(cfg: AuditConfig) -> Result<(Writer, OpenReport), AuditError> {
        keys::create_private_dir(&cfg.dir)?;
        let lock = lock_dir(&cfg.dir)?;
        let key_path = cfg.key_path();
        if let Some(parent) = key_path.parent() {
            keys::create_private_dir(parent)?;
        }
        let segs = list_segments(&cfg.dir)?;
        let mut st = if segs.is_empty() {
            Tail::default()
        } else {
            recover(&cfg.dir, &segs)?
        };
        let key = open_key(&key_path, st.last_signer)?;

        // A missing or cut-away active segment is (re)created.
        let seg = match st.active.take() {
            Some(a) => a,
            None => {
                let (a, head) =
                    create_segment(&cfg.dir, st.segment, &st.head, &cfg.node, cfg.write_version)?;
                st.head = head;
                a
            }
        };
        let now = Instant::now();
        let mut w = Writer {
            cfg,
            _lock: lock,
            key,
            key_path,
            seg,
            head: st.head,
            next_seq: st.next_seq,
            merkle: st.merkle,
            prev_checkpoint: st.prev_checkpoint,
            last_checkpoint: now,
            last_retention: now,
            buf: Vec::with_capacity(1 << 20),
            unsynced: false,
            failed: None,
            sync_failed: Arc::new(OnceLock::new()),
            closed: false,
        };
        let recovered = st.recovery.clone();
        if let Some(rec) = st.recovery {
            tracing::warn!(
                segment = rec.segment,
                offset = rec.offset,
                bytes = rec.bytes,
                saved_as = %rec.saved_as,
                "audit log: cut a torn tail left by a crash"
            );
            w.push_event(&Record::Recovery(rec))?;
        }
        // A new log starts with a checkpoint (it publishes the signer); a crashed one
        // gets its unsigned tail (and the recovery record) signed right away.
        if w.merkle.count() > 0 || w.prev_checkpoint == ZERO_HASH {
            w.checkpoint()?;
        }
        // New record kinds go only into segments whose header announces them.
        if w.seg.version < w.cfg.write_version {
            w.rotate_segment()?;
        }
        w.flush_sync()?;
        let report = OpenReport {
            recovered,
            next_seq: w.next_seq,
            segment: w.seg.seq,
            public_key: w.key.verifying_key(),
        };
        Ok((w, report))
    }
}

/// Apply the retention limits of `cfg` to a log no daemon is writing (`interceptor
/// audit prune`): the removal is recorded and signed like the daemon's own, with
/// the key in `cfg`. Returns what was removed, if anything.
pub fn prune(cfg: AuditConfig) -> Result<Option<Retention>, AuditError> {
    let (mut w, _) = Writer::open(cfg)?;
    let removed = w.retain()?;
    w.seal()?;
    w.flush_sync()?;
    w.closed = true;
    Ok(removed)
}

/// Rotate the node key of a log no daemon is writing (`interceptor audit
/// rotate-key --dir`): opens the log as its writer (refused while another
/// writer holds the lock), records the rotation signed by the old key, seals
/// it with a checkpoint by the new key and closes. Returns the new public key.
pub fn rotate_key_offline(cfg: AuditConfig) -> Result<VerifyingKey, AuditError> {
    let (mut w, _) = Writer::open(cfg)?;
    let key = w.rotate_key()?;
    w.seal()?;
    w.flush_sync()?;
    w.closed = true;
    Ok(key)
}

/// Name of the lock file a writer holds in the log directory.
pub const LOCK_FILE: &str = "writer.lock";

/// Take the directory's writer lock, waiting briefly for a writer that is just
/// stopping (its task drops the lock after acknowledging `close`).
fn lock_dir(dir: &Path) -> Result<File, AuditError> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| AuditError::io(&path, e))?;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(AuditError::io(
                    &path,
                    std::io::Error::other(
                        "another process is writing this audit log (is the daemon running?)",
                    ),
                ));
            }
            Err(fs::TryLockError::Error(e)) => return Err(AuditError::io(&path, e)),
        }
    }
}

fn reply_err(replies: &mut Vec<Reply>, m: Msg, why: &str) {
    let e = || {
        if why == "closed" {
            AuditError::Closed
        } else {
            AuditError::WriterFailed(why.to_string())
        }
    };
    match m {
        Msg::Append { ack, queued, .. } => replies.push(Reply::Append(ack, Err(e()), queued)),
        Msg::RotateKey { ack } => replies.push(Reply::RotateKey(ack, Err(e()))),
        Msg::Close { ack } => replies.push(Reply::Close(ack, Err(e()))),
    }
}

fn next_key_path(key_path: &Path) -> PathBuf {
    let mut s = key_path.as_os_str().to_owned();
    s.push(".next");
    PathBuf::from(s)
}

/// Load the key, finishing an interrupted rotation and refusing a key that does not
/// match the log (a replaced key would make the rest of the log unverifiable).
fn open_key(key_path: &Path, last_signer: Option<[u8; 32]>) -> Result<SigningKey, AuditError> {
    let next = next_key_path(key_path);
    if next.exists() {
        let k = keys::load(&next)?;
        if Some(k.verifying_key().to_bytes()) == last_signer {
            fs::rename(&next, key_path).map_err(|e| AuditError::io(key_path, e))?;
        } else {
            fs::remove_file(&next).map_err(|e| AuditError::io(&next, e))?;
        }
        if let Some(parent) = key_path.parent() {
            keys::sync_dir(parent)?;
        }
    }
    if !key_path.exists() {
        if last_signer.is_some() {
            return Err(AuditError::Key(format!(
                "{} is missing but the log was signed with a key; restore it",
                key_path.display()
            )));
        }
        let k = keys::generate()?;
        keys::write_new(key_path, &k)?;
        tracing::info!(public_key = %keys::public_text(&k.verifying_key()), "audit log: created node key");
        return Ok(k);
    }
    let k = keys::load(key_path)?;
    if let Some(s) = last_signer
        && s != k.verifying_key().to_bytes()
    {
        return Err(AuditError::Key(format!(
            "{} is not the key that signed the log (expected {})",
            key_path.display(),
            format::hex(&s)
        )));
    }
    Ok(k)
}

/// Segment files of a directory in sequence order.
pub(super) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| AuditError::io(dir, e))? {
        let e = e.map_err(|e| AuditError::io(dir, e))?;
        if let Some(seq) = e.file_name().to_str().and_then(format::parse_segment_name) {
            out.push((seq, e.path()));
        }
    }
    out.sort_unstable_by_key(|(s, _)| *s);
    Ok(out)
}

fn create_segment(
    dir: &Path,
    seq: u64,
    prev: &Hash,
    node: &str,
    version: u16,
) -> Result<(Active, Hash), AuditError> {
    let path = dir.join(segment_name(seq));
    let (header, hash) = format::encode_header_version(version, seq, prev, node);
    let mut file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| AuditError::io(&path, e))?;
    file.write_all(&header)
        .and_then(|()| file.sync_all())
        .map_err(|e| AuditError::io(&path, e))?;
    keys::sync_dir(dir)?;
    let len = header.len() as u64;
    Ok((
        Active {
            seq,
            version,
            file: Arc::new(file),
            len,
            header_len: len,
        },
        hash,
    ))
}

fn read_header(path: &Path) -> Result<format::Header, AuditError> {
    let mut buf = vec![0u8; 512];
    let mut f = File::open(path).map_err(|e| AuditError::io(path, e))?;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).map_err(|e| AuditError::io(path, e))? {
            0 => break,
            k => n += k,
        }
    }
    decode_header(&buf[..n]).map_err(|(offset, reason)| AuditError::Corrupt {
        segment: file_name(path),
        offset,
        reason,
    })
}

pub(super) fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The writer state rebuilt from the files.
#[derive(Default)]
struct Tail {
    /// The active segment, unless it must be (re)created as `segment`.
    active: Option<Active>,
    segment: u64,
    head: Hash,
    next_seq: u64,
    merkle: Merkle,
    prev_checkpoint: Hash,
    last_signer: Option<[u8; 32]>,
    recovery: Option<Recovery>,
}

/// One segment read back by `recover`.
struct Scan {
    seq: u64,
    path: PathBuf,
    header: Option<format::Header>,
    /// (seq, hash, kind) of each good frame.
    frames: Vec<(u64, Hash, Kind)>,
    /// End of the good part.
    good_len: u64,
    /// First problem: offset and reason.
    problem: Option<(u64, String)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Leaf,
    Checkpoint([u8; 32]),
    Rotation([u8; 32]),
}

fn scan(seq: u64, path: &Path, expect_prev: Option<Hash>) -> Result<Scan, AuditError> {
    let buf = fs::read(path).map_err(|e| AuditError::io(path, e))?;
    let mut s = Scan {
        seq,
        path: path.to_path_buf(),
        header: None,
        frames: Vec::new(),
        good_len: 0,
        problem: None,
    };
    let header = match decode_header(&buf) {
        Ok(h) => h,
        Err(p) => {
            s.problem = Some(p);
            return Ok(s);
        }
    };
    if header.segment != seq {
        s.problem = Some((10, format!("header names segment {}", header.segment)));
        return Ok(s);
    }
    if let Some(p) = expect_prev
        && p != header.prev
    {
        s.problem = Some((18, "header does not chain to the previous segment".into()));
        return Ok(s);
    }
    let mut head = header.hash;
    let mut pos = header.len;
    s.good_len = pos as u64;
    s.header = Some(header);
    let mut last_seq: Option<u64> = None;
    while pos < buf.len() {
        let f = match decode_frame(&buf[pos..]) {
            Ok(f) => f,
            Err(e) => {
                s.problem = Some((pos as u64, e.reason().to_string()));
                break;
            }
        };
        let bad = if f.prev != head {
            Some("record does not chain to the previous record".to_string())
        } else if last_seq.is_some_and(|l| f.seq != l + 1) {
            Some(format!("record sequence {} out of order", f.seq))
        } else {
            None
        };
        let kind = match (bad, record::decode(f.body)) {
            (Some(b), _) | (None, Err(b)) => {
                s.problem = Some((pos as u64, b));
                break;
            }
            (None, Ok(Record::Checkpoint(c))) => Kind::Checkpoint(c.signer),
            (None, Ok(Record::KeyRotation(r))) => Kind::Rotation(r.new_key),
            (None, Ok(_)) => Kind::Leaf,
        };
        s.frames.push((f.seq, f.hash, kind));
        last_seq = Some(f.seq);
        head = f.hash;
        pos += f.len;
        s.good_len = pos as u64;
    }
    Ok(s)
}

impl Scan {
    fn has_checkpoint(&self) -> bool {
        self.frames
            .iter()
            .any(|f| matches!(f.2, Kind::Checkpoint(_)))
    }

    fn end_head(&self) -> Option<Hash> {
        self.frames
            .last()
            .map(|f| f.1)
            .or_else(|| self.header.as_ref().map(|h| h.hash))
    }
}

/// Rebuild the writer state from the newest segments, cutting a torn tail of the
/// last one. Older segments must be intact: damage there is not a crash artefact.
fn recover(dir: &Path, segs: &[(u64, PathBuf)]) -> Result<Tail, AuditError> {
    // Newest first, back to the segment holding the last checkpoint.
    let mut scans = Vec::new();
    for (seq, path) in segs.iter().rev() {
        let s = scan(*seq, path, None)?;
        let done = s.has_checkpoint();
        scans.push(s);
        if done {
            break;
        }
    }
    scans.reverse();
    let last = scans.len() - 1;
    for (i, s) in scans.iter().enumerate() {
        if i < last
            && let Some((offset, reason)) = &s.problem
        {
            return Err(AuditError::Corrupt {
                segment: file_name(&s.path),
                offset: *offset,
                reason: reason.clone(),
            });
        }
        if i > 0
            && let (Some(h), Some(prev)) = (&s.header, scans[i - 1].end_head())
            && h.prev != prev
        {
            return Err(AuditError::Corrupt {
                segment: file_name(&s.path),
                offset: 18,
                reason: "header does not chain to the previous segment".into(),
            });
        }
    }

    let mut t = Tail::default();
    // Replay: every frame after the last checkpoint is a pending Merkle leaf.
    let mut last_seq = None;
    for s in &scans {
        if let Some(h) = &s.header {
            t.head = h.hash;
        }
        for &(seq, hash, kind) in &s.frames {
            match kind {
                Kind::Checkpoint(signer) => {
                    t.merkle.clear();
                    t.prev_checkpoint = hash;
                    t.last_signer = Some(signer);
                }
                Kind::Rotation(new_key) => {
                    t.merkle.push(&hash);
                    t.last_signer = Some(new_key);
                }
                Kind::Leaf => t.merkle.push(&hash),
            }
            t.head = hash;
            last_seq = Some(seq);
        }
    }
    t.next_seq = last_seq.map_or(0, |s| s + 1);

    let tail = &scans[last];
    t.segment = tail.seq;
    if let Some((offset, reason)) = &tail.problem {
        let cut_from = if tail.header.is_some() {
            tail.good_len
        } else {
            0
        };
        debug_assert!(cut_from <= *offset || tail.header.is_none());
        let rec = cut_tail(dir, tail, cut_from, reason)?;
        t.recovery = Some(rec);
        if tail.header.is_none() {
            // The whole file went: the segment is created again, chained to the end
            // of the previous one (or the genesis zeros).
            t.head = if last > 0 {
                scans[last - 1].end_head().unwrap_or(ZERO_HASH)
            } else if tail.seq == 0 {
                ZERO_HASH
            } else {
                return Err(AuditError::Corrupt {
                    segment: file_name(&tail.path),
                    offset: 0,
                    reason: format!("unreadable header and no previous segment: {reason}"),
                });
            };
            return Ok(t);
        }
    }
    let path = &tail.path;
    let file = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| AuditError::io(path, e))?;
    let header_len = tail.header.as_ref().map_or(0, |h| h.len as u64);
    t.active = Some(Active {
        seq: tail.seq,
        version: tail
            .header
            .as_ref()
            .map_or(format::FORMAT_VERSION, |h| h.version),
        file: Arc::new(file),
        len: tail.good_len,
        header_len,
    });
    Ok(t)
}

/// Move the bytes after `from` into a side file and truncate the segment there.
fn cut_tail(dir: &Path, s: &Scan, from: u64, reason: &str) -> Result<Recovery, AuditError> {
    let path = &s.path;
    let data = fs::read(path).map_err(|e| AuditError::io(path, e))?;
    let from_usize = usize::try_from(from).unwrap_or(data.len()).min(data.len());
    let cut = &data[from_usize..];
    let saved_as = format!("{}.cut-{from}", file_name(path));
    let saved = dir.join(&saved_as);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&saved)
        .map_err(|e| AuditError::io(&saved, e))?;
    f.write_all(cut)
        .and_then(|()| f.sync_all())
        .map_err(|e| AuditError::io(&saved, e))?;
    if from == 0 {
        fs::remove_file(path).map_err(|e| AuditError::io(path, e))?;
    } else {
        let seg = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| AuditError::io(path, e))?;
        seg.set_len(from)
            .and_then(|()| seg.sync_all())
            .map_err(|e| AuditError::io(path, e))?;
    }
    keys::sync_dir(dir)?;
    Ok(Recovery {
        time_ns: now_ns(),
        segment: s.seq,
        offset: from,
        bytes: cut.len() as u64,
        cut_sha256: Sha256::digest(cut).into(),
        saved_as,
        reason: reason.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::{sample_access, sample_response};

    fn cfg(dir: &Path) -> AuditConfig {
        let mut c = AuditConfig::new(dir, "node-a");
        c.checkpoint_every_records = 50;
        c.segment_max_bytes = 16 * 1024;
        c
    }

    #[test]
    fn access_ref_encodes_like_record() {
        let r = sample_access(3);
        let a = bincode::serde::encode_to_vec(AccessRef::Access(&r), record::CONFIG).unwrap();
        assert_eq!(a, record::encode(&Record::Access(r)).unwrap());
    }

    #[tokio::test]
    async fn append_acknowledges_in_order_and_rotates() {
        let tmp = tempfile::tempdir().unwrap();
        let (log, rep) = AuditLog::open(cfg(tmp.path())).await.unwrap();
        assert_eq!(
            rep.next_seq, 1,
            "a new log starts with its genesis checkpoint"
        );
        let mut last = 0;
        for i in 0..300 {
            let r = log.append(&sample_access(i)).await.unwrap();
            assert!(r.seq > last);
            last = r.seq;
        }
        log.close().await.unwrap();
        assert!(matches!(
            log.append(&sample_access(0)).await,
            Err(AuditError::Closed)
        ));
        let segs = list_segments(tmp.path()).unwrap();
        assert!(segs.len() > 3, "16 KiB segments must rotate: {segs:?}");
        let report = crate::audit::verify_dir(tmp.path(), Some(&rep.public_key)).unwrap();
        assert_eq!(report.segments, segs.len() as u64);
        assert_eq!(report.unsigned_tail, 0);
        assert_eq!(report.access_records, 300);
    }

    #[tokio::test]
    async fn submitted_records_become_durable_in_one_group_and_an_append_cuts_the_wait() {
        let tmp = tempfile::tempdir().unwrap();
        let events = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut c = cfg(tmp.path());
        // Long enough that only an append can end it within the test's bound.
        c.linger = Duration::from_secs(30);
        let seen = events.clone();
        c.observer = Some(crate::audit::Observer(Arc::new(move |r| {
            seen.lock().unwrap().push(r)
        })));
        let (log, rep) = AuditLog::open(c).await.unwrap();
        for i in 0..20 {
            log.submit(&sample_access(i)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            events.lock().unwrap().is_empty(),
            "submitted records wait for the linger time"
        );
        // Someone waiting (a denial) ends the wait for everything before it.
        let started = Instant::now();
        let receipt = tokio::time::timeout(Duration::from_secs(5), log.append(&sample_access(20)))
            .await
            .expect("an append must not wait for the linger time")
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(receipt.seq > 20, "the submitted records come first");
        let ev = events.lock().unwrap().clone();
        assert_eq!(ev.len(), 21, "the observer hears of every record");
        assert!(ev.iter().all(Result::is_ok));
        log.close().await.unwrap();
        let report = crate::audit::verify_dir(tmp.path(), Some(&rep.public_key)).unwrap();
        assert_eq!(report.access_records, 21);
    }

    #[tokio::test]
    async fn submitted_records_are_durable_after_the_linger_time() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = cfg(tmp.path());
        c.linger = Duration::from_millis(20);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        c.observer = Some(crate::audit::Observer(Arc::new(move |r| {
            let _ = tx.send(r);
        })));
        let (log, _) = AuditLog::open(c).await.unwrap();
        log.submit(&sample_access(1)).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("durable without anyone waiting")
            .unwrap();
        let latency = r.unwrap();
        assert!(latency >= Duration::from_millis(20), "{latency:?}");
        log.close().await.unwrap();
    }

    #[tokio::test]
    async fn version_1_logs_still_verify_and_continue_in_a_version_2_segment() {
        let tmp = tempfile::tempdir().unwrap();
        let mut old = cfg(tmp.path());
        old.write_version = 1;
        let (log, rep) = AuditLog::open(old).await.unwrap();
        for i in 0..100 {
            log.append(&sample_access(i)).await.unwrap();
        }
        log.close().await.unwrap();
        let r = crate::audit::verify_dir(tmp.path(), Some(&rep.public_key)).unwrap();
        assert_eq!((r.access_records, r.responses), (100, 0));
        let v1_segments = list_segments(tmp.path()).unwrap();

        // This build opens it: the version 1 segment is sealed, responses go to a new one.
        let (log, _) = AuditLog::open(cfg(tmp.path())).await.unwrap();
        log.append_response(sample_response(1)).await.unwrap();
        log.append(&sample_access(100)).await.unwrap();
        log.close().await.unwrap();
        let segs = list_segments(tmp.path()).unwrap();
        assert_eq!(segs.len(), v1_segments.len() + 1);
        assert_eq!(read_header(&segs[0].1).unwrap().version, 1);
        assert_eq!(read_header(&segs.last().unwrap().1).unwrap().version, 2);
        let r = crate::audit::verify_dir(tmp.path(), Some(&rep.public_key)).unwrap();
        assert_eq!((r.access_records, r.responses), (101, 1));
    }

    #[tokio::test]
    async fn a_response_in_a_version_1_segment_is_refused_by_the_verifier() {
        let tmp = tempfile::tempdir().unwrap();
        let mut old = cfg(tmp.path());
        old.write_version = 1;
        let (log, _) = AuditLog::open(old).await.unwrap();
        log.append_response(sample_response(1)).await.unwrap();
        log.close().await.unwrap();
        let e = crate::audit::verify_dir(tmp.path(), None).unwrap_err();
        assert!(
            e.reason
                .contains("response record in a format version 1 segment"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn offline_prune_records_the_removal_and_the_log_verifies() {
        let tmp = tempfile::tempdir().unwrap();
        let (log, rep) = AuditLog::open(cfg(tmp.path())).await.unwrap();
        for i in 0..600 {
            log.append(&sample_access(i)).await.unwrap();
            if i % 3 == 0 {
                log.append_response(sample_response(i)).await.unwrap();
            }
        }
        log.close().await.unwrap();
        let before = list_segments(tmp.path()).unwrap();
        assert!(before.len() > 4, "{before:?}");

        // Refused while a writer holds the directory.
        let (live, _) = AuditLog::open(cfg(tmp.path())).await.unwrap();
        let mut c = cfg(tmp.path());
        c.retention_max_bytes = Some(40 * 1024);
        assert!(
            prune(c.clone())
                .unwrap_err()
                .to_string()
                .contains("another process is writing this audit log")
        );
        live.close().await.unwrap();

        let removed = prune(c.clone()).unwrap().expect("over the limit");
        let after = list_segments(tmp.path()).unwrap();
        assert_eq!(after[0].0, removed.removed.len() as u64);
        assert!(removed.reason.contains("size"), "{}", removed.reason);
        let r = crate::audit::verify_dir(tmp.path(), Some(&rep.public_key)).unwrap();
        assert_eq!(r.retention_events, 1);
        assert_eq!(r.pruned_segments, removed.removed.len() as u64);
        // Within a limit: nothing to do.
        let mut roomy = c;
        roomy.retention_max_bytes = Some(1 << 30);
        assert!(prune(roomy).unwrap().is_none());

        // A change after pruning is still found.
        let victim = &after[0].1;
        let mut bytes = fs::read(victim).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 1;
        fs::write(victim, bytes).unwrap();
        let e = crate::audit::verify_dir(tmp.path(), Some(&rep.public_key)).unwrap_err();
        assert_eq!(e.segment, file_name(victim), "{e}");
    }

    #[tokio::test]
    async fn reopen_continues_the_chain_and_key() {
        let tmp = tempfile::tempdir().unwrap();
        let (log, rep1) = AuditLog::open(cfg(tmp.path())).await.unwrap();
        for i in 0..10 {
            log.append(&sample_access(i)).await.unwrap();
        }
        drop(log);
        // Dropping the last handle seals the log in the background; close explicitly
        // on the second run.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (log, rep2) = AuditLog::open(cfg(tmp.path())).await.unwrap();
        assert_eq!(rep1.public_key, rep2.public_key);
        assert!(rep2.recovered.is_none());
        let r = log.append(&sample_access(10)).await.unwrap();
        assert_eq!(r.seq, rep2.next_seq);
        log.close().await.unwrap();
        let report = crate::audit::verify_dir(tmp.path(), Some(&rep1.public_key)).unwrap();
        assert_eq!(report.access_records, 11);
    }

    #[tokio::test]
    async fn key_rotation_is_recorded_and_verifies_with_either_key() {
        let tmp = tempfile::tempdir().unwrap();
        let (log, rep) = AuditLog::open(cfg(tmp.path())).await.unwrap();
        log.append(&sample_access(1)).await.unwrap();
        let new = log.rotate_key().await.unwrap();
        assert_ne!(new, rep.public_key);
        log.append(&sample_access(2)).await.unwrap();
        log.close().await.unwrap();
        let on_disk = keys::load(&tmp.path().join("node.key")).unwrap();
        assert_eq!(on_disk.verifying_key(), new);
        assert!(!tmp.path().join("node.key.next").exists());
        for k in [rep.public_key, new] {
            let r = crate::audit::verify_dir(tmp.path(), Some(&k)).unwrap();
            assert_eq!(r.key_rotations, 1);
        }
        let stranger = keys::generate().unwrap().verifying_key();
        assert!(crate::audit::verify_dir(tmp.path(), Some(&stranger)).is_err());
        // Reopening uses the new key.
        let (log, rep2) = AuditLog::open(cfg(tmp.path())).await.unwrap();
        assert_eq!(rep2.public_key, new);
        log.close().await.unwrap();
    }

    #[tokio::test]
    async fn wrong_or_missing_key_is_refused_on_open() {
        let tmp = tempfile::tempdir().unwrap();
        let (log, _) = AuditLog::open(cfg(tmp.path())).await.unwrap();
        log.close().await.unwrap();
        let key = tmp.path().join("node.key");
        fs::remove_file(&key).unwrap();
        let err = AuditLog::open(cfg(tmp.path())).await.err().unwrap();
        assert!(err.to_string().contains("missing"), "{err}");
        keys::write_new(&key, &keys::generate().unwrap()).unwrap();
        let err = AuditLog::open(cfg(tmp.path())).await.err().unwrap();
        assert!(err.to_string().contains("not the key that signed"), "{err}");
    }

    #[tokio::test]
    async fn retention_removes_old_segments_and_still_verifies() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = cfg(tmp.path());
        c.retention_max_bytes = Some(64 * 1024);
        c.checkpoint_interval = Duration::from_millis(1);
        let (log, rep) = AuditLog::open(c).await.unwrap();
        for i in 0..2000 {
            log.append(&sample_access(i)).await.unwrap();
        }
        log.close().await.unwrap();
        let segs = list_segments(tmp.path()).unwrap();
        assert!(segs[0].0 > 0, "oldest segments must be gone: {segs:?}");
        let total: u64 = segs
            .iter()
            .map(|(_, p)| fs::metadata(p).unwrap().len())
            .sum();
        assert!(total <= 64 * 1024 + 16 * 1024, "{total}");
        let r = crate::audit::verify_dir(tmp.path(), Some(&rep.public_key)).unwrap();
        assert!(r.retention_events > 0);
        assert_eq!(r.first_segment, segs[0].0);
    }

    #[tokio::test]
    async fn retention_by_age_keeps_the_active_segment() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = cfg(tmp.path());
        // Long enough that the 300 appends finish well inside it on a loaded
        // machine (a shorter age made the first segments expire mid-loop).
        c.retention_max_age = Some(Duration::from_millis(2000));
        c.checkpoint_interval = Duration::from_millis(20);
        let (log, rep) = AuditLog::open(c).await.unwrap();
        for i in 0..300 {
            log.append(&sample_access(i)).await.unwrap();
        }
        // Go on to the next rotation, so that the segment to keep starts
        // nearly empty: the retention record, its checkpoint and the last
        // append below cannot roll it over. (Where the 300 records left the
        // active segment depends on how many timed checkpoints the machine's
        // speed allowed; one rolled over during the wait was too young to
        // expire, and two segments stayed.)
        let last_seq = || list_segments(tmp.path()).unwrap().last().unwrap().0;
        let full = last_seq();
        let mut i = 300;
        while last_seq() == full {
            log.append(&sample_access(i)).await.unwrap();
            i += 1;
        }
        let before = list_segments(tmp.path()).unwrap();
        assert!(before.len() > 3);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        // One more record: everything sealed before it is older than the limit.
        log.append(&sample_access(i)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        log.close().await.unwrap();
        let after = list_segments(tmp.path()).unwrap();
        assert_eq!(after.len(), 1, "{after:?}");
        assert_eq!(after[0].0, before.last().unwrap().0);
        let r = crate::audit::verify_dir(tmp.path(), Some(&rep.public_key)).unwrap();
        assert!(r.retention_events >= 1);
        let recs = crate::audit::verify::read_records(tmp.path()).unwrap();
        let removed: Vec<u64> = recs
            .iter()
            .filter_map(|(_, _, r)| match r {
                Record::Retention(x) => {
                    Some(x.removed.iter().map(|s| s.segment).collect::<Vec<_>>())
                }
                _ => None,
            })
            .flatten()
            .collect();
        // Retention may also have run while the records were written; the last run
        // names the segments just before the one kept.
        assert_eq!(removed.last(), Some(&(after[0].0 - 1)), "{removed:?}");
    }

    /// Checkpoints come every N records, and the timer signs what is left.
    /// Each is checked in a log of its own: with both in one, a machine slow
    /// enough that appending took longer than the interval had the timer
    /// sign between the count's checkpoints (one more than expected, seen in
    /// a loaded test run).
    #[tokio::test]
    async fn count_and_time_checkpoints() {
        // A log in one segment, checkpointed every `records` or `interval`,
        // after `appended` records and 300 ms.
        async fn checkpoints(
            records: u64,
            interval: Duration,
            appended: u64,
        ) -> crate::audit::verify::Report {
            let tmp = tempfile::tempdir().unwrap();
            let mut c = cfg(tmp.path());
            c.segment_max_bytes = 1 << 30;
            c.checkpoint_every_records = records;
            c.checkpoint_interval = interval;
            let (log, rep) = AuditLog::open(c).await.unwrap();
            for i in 0..appended {
                log.append(&sample_access(i)).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let r = crate::audit::verify_dir(tmp.path(), Some(&rep.public_key)).unwrap();
            log.close().await.unwrap();
            r
        }
        // 1 genesis + 2 by count; the 5 after them wait for the timer.
        let r = checkpoints(10, Duration::from_secs(3600), 25).await;
        assert_eq!((r.checkpoints, r.unsigned_tail), (3, 5));
        // Genesis, then the timer (more than once if appending was slow).
        let r = checkpoints(1000, Duration::from_millis(50), 5).await;
        assert!(r.checkpoints >= 2, "{r:?}");
        assert_eq!(r.unsigned_tail, 0);
    }
}
