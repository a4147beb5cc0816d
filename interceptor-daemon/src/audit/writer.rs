//! The append path: one writer thread, group commit, segment rotation,
//! checkpoints, torn-tail recovery.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    sync::mpsc,
    time::{SystemTime, UNIX_EPOCH},
};

use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{
    AuditError, Entry, Event, FORMAT_VERSION, NodeKey, Record,
    format::{
        checkpoint_message, decode_payload, encode_payload, entry_hash, push_frame, read_frame,
    },
    io_err,
    key::{default_pubkey_path, public_key_text},
    segments,
};

#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    pub node: String,
    /// A signed checkpoint after this many entries.
    pub checkpoint_every: u64,
    /// Start a new segment beyond this size.
    pub segment_bytes: u64,
}

/// Proof that an entry is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub seq: u64,
    pub hash: [u8; 32],
}

enum Msg {
    Append(Box<Record>, oneshot::Sender<Result<Receipt, String>>),
    Close(oneshot::Sender<()>),
}

/// Handle to the writer; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    public_key: ed25519_dalek::VerifyingKey,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn seg_path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("seg-{seg:020}.log"))
}

struct Writer {
    dir: PathBuf,
    node: String,
    key: NodeKey,
    file: File,
    seg: u64,
    seg_bytes: u64,
    seq: u64,
    prev: [u8; 32],
    since_checkpoint: u64,
    opts: Options,
    buf: Vec<u8>,
}

impl Writer {
    /// Adds an entry to the pending buffer; returns its receipt.
    fn push(&mut self, event: Event) -> Receipt {
        let entry = Entry {
            seq: self.seq,
            prev: self.prev,
            event,
        };
        let payload = encode_payload(&entry);
        let hash = entry_hash(&payload);
        push_frame(&mut self.buf, &payload);
        let r = Receipt {
            seq: self.seq,
            hash,
        };
        self.prev = hash;
        self.seq += 1;
        self.since_checkpoint += 1;
        r
    }

    fn checkpoint(&mut self) {
        let time_ns = now_ns();
        let signature = self
            .key
            .sign(&checkpoint_message(&self.prev, self.seq, time_ns))
            .to_vec();
        let (head, count) = (self.prev, self.seq);
        self.push(Event::Checkpoint {
            head,
            count,
            time_ns,
            signature,
        });
        self.since_checkpoint = 0;
    }

    /// Writes and syncs everything pending.
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.buf)?;
        self.file.sync_data()?;
        self.seg_bytes += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn rotate_if_full(&mut self) -> std::io::Result<()> {
        if self.seg_bytes < self.opts.segment_bytes {
            return Ok(());
        }
        self.flush()?;
        self.seg += 1;
        let path = seg_path(&self.dir, self.seg);
        self.file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        self.seg_bytes = 0;
        let (segment, node, public_key) =
            (self.seg, self.node.clone(), self.key.public().to_bytes());
        self.push(Event::SegmentStart {
            segment,
            format: FORMAT_VERSION,
            node,
            public_key,
        });
        self.flush()?;
        // The directory entry of the new file must survive a crash too.
        File::open(&self.dir)?.sync_all()
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        while let Ok(first) = rx.recv() {
            let mut acks = Vec::new();
            let mut closing = None;
            let mut next = Some(first);
            // Group commit: take whatever is queued, write once, sync once.
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Append(r, ack) => {
                        let receipt = self.push(Event::Record(r));
                        acks.push((receipt, ack));
                        if self.since_checkpoint >= self.opts.checkpoint_every {
                            self.checkpoint();
                        }
                    }
                    Msg::Close(done) => closing = Some(done),
                }
                if closing.is_none() && acks.len() < 65536 {
                    next = rx.try_recv().ok();
                }
            }
            if closing.is_some() && self.since_checkpoint > 0 {
                self.checkpoint();
            }
            let result = self.flush().and_then(|()| self.rotate_if_full());
            for (receipt, ack) in acks {
                let _ = ack.send(result.as_ref().map(|()| receipt).map_err(|e| e.to_string()));
            }
            if let Err(e) = result {
                warn!(error = %e, "audit log write failed; the writer stops (appends now fail)");
                return;
            }
            if let Some(done) = closing {
                let _ = done.send(());
                return;
            }
        }
        // All handles dropped without `close`: everything acknowledged is
        // already synced; the next open signs it (recovery path).
    }
}

/// Chain state found by scanning the segments.
struct Scan {
    seq: u64,
    prev: [u8; 32],
    last_seg: u64,
    /// Bytes of the last segment that hold whole, chained entries.
    valid_len: u64,
    file_len: u64,
}

fn scan(dir: &Path) -> Result<Option<Scan>, AuditError> {
    let segs = segments(dir)?;
    let Some(&(last_seg, _)) = segs.last() else {
        return Ok(None);
    };
    let (mut seq, mut prev) = (0u64, [0u8; 32]);
    let mut valid_len = 0u64;
    let mut file_len = 0u64;
    for (no, path) in &segs {
        let data = std::fs::read(path).map_err(io_err(path))?;
        let mut off = 0usize;
        while let Some((payload, len)) = read_frame(&data[off..]) {
            match decode_payload(payload) {
                Ok(e) if e.seq == seq && e.prev == prev => {
                    prev = entry_hash(payload);
                    seq += 1;
                    off += len;
                }
                _ => break,
            }
        }
        if *no == last_seg {
            valid_len = off as u64;
            file_len = data.len() as u64;
        } else if off != data.len() {
            // Damage inside an older segment is the verifier's to report; new
            // entries still chain from what could be read.
            warn!(segment = %path.display(), offset = off, "audit segment damaged before its end");
        }
    }
    Ok(Some(Scan {
        seq,
        prev,
        last_seg,
        valid_len,
        file_len,
    }))
}

impl AuditLog {
    /// Opens (or creates) the log, recovering a torn tail, and starts the writer.
    pub fn open(opts: Options) -> Result<AuditLog, AuditError> {
        let dir = opts.dir.clone();
        let key = NodeKey::load_or_create(&dir)?;
        let public_key = key.public();
        let pub_path = default_pubkey_path(&dir);
        std::fs::write(&pub_path, format!("{}\n", public_key_text(&public_key)))
            .map_err(io_err(&pub_path))?;

        let state = scan(&dir)?;
        let (file, seg, seg_bytes, seq, prev, torn) = match &state {
            None => {
                let path = seg_path(&dir, 0);
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                (f, 0, 0, 0, [0u8; 32], None)
            }
            Some(s) => {
                let path = seg_path(&dir, s.last_seg);
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                let torn =
                    (s.file_len > s.valid_len).then_some((s.valid_len, s.file_len - s.valid_len));
                if torn.is_some() {
                    f.set_len(s.valid_len)
                        .and_then(|()| f.sync_all())
                        .map_err(io_err(&path))?;
                }
                drop(f);
                let f = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                (f, s.last_seg, s.valid_len, s.seq, s.prev, torn)
            }
        };
        let mut w = Writer {
            dir: dir.clone(),
            node: opts.node.clone(),
            key,
            file,
            seg,
            seg_bytes,
            seq,
            prev,
            since_checkpoint: 0,
            opts,
            buf: Vec::new(),
        };
        if seq == 0 {
            let (node, public_key) = (w.node.clone(), w.key.public().to_bytes());
            w.push(Event::SegmentStart {
                segment: 0,
                format: FORMAT_VERSION,
                node,
                public_key,
            });
        }
        if let Some((offset, bytes_cut)) = torn {
            warn!(
                segment = seg,
                offset, bytes_cut, "audit log had a torn tail; cut and recorded"
            );
            w.push(Event::Recovered {
                segment: seg,
                offset,
                bytes_cut,
                time_ns: now_ns(),
            });
            w.checkpoint();
        }
        w.flush().map_err(io_err(&dir))?;
        info!(dir = %dir.display(), entries = w.seq, "audit log open");

        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || w.run(rx))
            .map_err(io_err(&dir))?;
        Ok(AuditLog { tx, public_key })
    }

    /// Appends a record; resolves once it is on disk.
    pub async fn append(&self, r: Record) -> Result<Receipt, AuditError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Msg::Append(Box::new(r), ack))
            .map_err(|_| AuditError::Closed)?;
        match done.await {
            Ok(Ok(receipt)) => Ok(receipt),
            Ok(Err(e)) => Err(AuditError::Corrupt(format!("write failed: {e}"))),
            Err(_) => Err(AuditError::Closed),
        }
    }

    /// Queues a record without waiting for it to be durable.
    pub fn append_nowait(&self, r: Record) {
        let (ack, _done) = oneshot::channel();
        let _ = self.tx.send(Msg::Append(Box::new(r), ack));
    }

    /// Signs a final checkpoint, syncs, and stops the writer.
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Close(done)).is_ok() {
            let _ = wait.await;
        }
    }

    pub fn public_key(&self) -> ed25519_dalek::VerifyingKey {
        self.public_key
    }
}
