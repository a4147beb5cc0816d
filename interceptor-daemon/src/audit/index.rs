//! A sled index over the access records, by time, identity, target and session.
//!
//! The index is derived data: it is built from the segments by the CLI when a
//! command needs it, brought up to date incrementally as the daemon appends, and
//! rebuilt from scratch whenever it does not match the segments on disk. It is never
//! used to verify anything (the verifier reads only the segments), and deleting it
//! is always safe.
//!
//! Staleness is checked cheaply on every open: the index remembers, per segment, how
//! many bytes it indexed and the hash of the last record in them. A segment that
//! grew past that point is read on from there (after checking that the stored hash
//! is still at the same place); any other difference (a segment shorter, missing,
//! replaced or with another hash there, a different index version) means a rebuild.
//!
//! Layout (trees; integers big endian so keys sort numerically):
//! - `records`: id -> seq u64 | hash \[32\] | record body, where id = segment | offset
//! - `by_time`: time | id
//! - `by_identity`: str(namespace) | str(service account) | time | id
//! - `by_target`: str(target) | time | id
//! - `by_session`: str(session) | time | id
//! - `responses`: str(session) | time | id -> record body (recorded responses)
//! - `meta`: `state` -> JSON `State`
//!
//! where str(s) = len u16 | bytes, so that a prefix never matches a longer name.

use std::{
    collections::BTreeMap,
    fs::File,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{
    AuditError,
    format::{self, Hash},
    query::{Filter, Hit},
    reader::{self, Cursor, Entry},
    record::{self, Record, ResponseRecord},
    writer::{file_name, list_segments},
};

/// Bumped whenever the layout above changes: an index of another version is rebuilt.
const INDEX_VERSION: u32 = 2;

/// Name of the index directory inside the log directory, unless configured.
pub const DEFAULT_INDEX_DIR: &str = "index";

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("audit index {path}: {source}")]
    Db { path: PathBuf, source: sled::Error },
    #[error(transparent)]
    Log(#[from] AuditError),
    #[error("audit index {0}: damaged entry ({1}); delete the index directory to rebuild it")]
    Entry(PathBuf, String),
}

/// What the index covers of one segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SegState {
    segment: u64,
    /// Bytes indexed: the file up to the end of the last complete record read.
    len: u64,
    /// Hash of the last record in those bytes (the header's hash for an empty one).
    last_hash: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    version: u32,
    segments: Vec<SegState>,
}

/// What bringing the index up to date did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateReport {
    /// Set when the index was (re)built from scratch, with the reason.
    pub rebuilt: Option<String>,
    /// Access records added.
    pub added: u64,
    /// Records of the log the index covers.
    pub indexed_segments: usize,
}

pub struct Index {
    log_dir: PathBuf,
    path: PathBuf,
    db: sled::Db,
    records: sled::Tree,
    by_time: sled::Tree,
    by_identity: sled::Tree,
    by_target: sled::Tree,
    by_session: sled::Tree,
    responses: sled::Tree,
    meta: sled::Tree,
}

fn put_str(k: &mut Vec<u8>, s: &str) {
    // Longer names are cut: the key only narrows the search, the filter decides.
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    k.extend_from_slice(&(b.len() as u16).to_be_bytes());
    k.extend_from_slice(b);
}

fn id(segment: u64, offset: u64) -> [u8; 16] {
    let mut k = [0; 16];
    k[..8].copy_from_slice(&segment.to_be_bytes());
    k[8..].copy_from_slice(&offset.to_be_bytes());
    k
}

impl Index {
    /// Open (or create) the index of the log in `log_dir`; `index_dir` defaults to
    /// `log_dir/index`. Call [`Index::update`] before querying.
    pub fn open(log_dir: &Path, index_dir: Option<&Path>) -> Result<Index, IndexError> {
        let path = index_dir.map_or_else(|| log_dir.join(DEFAULT_INDEX_DIR), Path::to_path_buf);
        let db_err = |source| IndexError::Db {
            path: path.clone(),
            source,
        };
        // The index holds the records themselves: as private as the log.
        super::keys::create_private_dir(&path)?;
        let db = crate::kv::open(&sled::Config::new().path(&path).mode(sled::Mode::LowSpace))
            .map_err(db_err)?;
        let tree = |name: &str| db.open_tree(name).map_err(db_err);
        Ok(Index {
            records: tree("records")?,
            by_time: tree("by_time")?,
            by_identity: tree("by_identity")?,
            by_target: tree("by_target")?,
            by_session: tree("by_session")?,
            responses: tree("responses")?,
            meta: tree("meta")?,
            log_dir: log_dir.to_path_buf(),
            path: path.clone(),
            db,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db_err(&self, source: sled::Error) -> IndexError {
        IndexError::Db {
            path: self.path.clone(),
            source,
        }
    }

    fn state(&self) -> Result<State, IndexError> {
        match self.meta.get("state").map_err(|e| self.db_err(e))? {
            None => Ok(State::default()),
            Some(v) => serde_json::from_slice(&v)
                .map_err(|e| IndexError::Entry(self.path.clone(), e.to_string())),
        }
    }

    /// Why the index does not describe a prefix of the segments on disk, if it does
    /// not; `Ok(None)` when it can be brought up to date incrementally.
    fn stale(&self, st: &State, disk: &[(u64, PathBuf)]) -> Result<Option<String>, IndexError> {
        if st.version != INDEX_VERSION {
            return Ok(Some(if st.segments.is_empty() {
                "no index yet".into()
            } else {
                format!(
                    "index version {} (this build uses {INDEX_VERSION})",
                    st.version
                )
            }));
        }
        for (i, s) in st.segments.iter().enumerate() {
            let Some((seq, path)) = disk.get(i) else {
                return Ok(Some(format!("segment {} is gone", s.segment)));
            };
            if *seq != s.segment {
                return Ok(Some(format!(
                    "the segments on disk changed (segment {} where {} was indexed)",
                    seq, s.segment
                )));
            }
            let name = file_name(path);
            let file = File::open(path).map_err(|e| AuditError::io(path, e))?;
            let len = file.metadata().map_err(|e| AuditError::io(path, e))?.len();
            let last = i + 1 == st.segments.len();
            if len < s.len || (!last && len != s.len) {
                return Ok(Some(format!(
                    "{name} is {len} bytes where {} were indexed",
                    s.len
                )));
            }
            // The stored hash is the last 32 bytes of the indexed part (every frame
            // and the header end with their hash).
            let mut h = [0u8; 32];
            if s.len < 32
                || file.read_exact_at(&mut h, s.len - 32).is_err()
                || format::hex(&h) != s.last_hash
            {
                return Ok(Some(format!(
                    "{name} differs from what was indexed (record hash at byte {})",
                    s.len.saturating_sub(32)
                )));
            }
        }
        Ok(None)
    }

    /// Bring the index up to date with the segments, rebuilding it if it is stale.
    pub fn update(&self) -> Result<UpdateReport, IndexError> {
        let disk = list_segments(&self.log_dir)?;
        let mut st = self.state()?;
        let mut report = UpdateReport::default();
        if let Some(why) = self.stale(&st, &disk)? {
            tracing::debug!(index = %self.path.display(), reason = %why, "rebuilding the audit index");
            for t in [
                &self.records,
                &self.by_time,
                &self.by_identity,
                &self.by_target,
                &self.by_session,
                &self.responses,
                &self.meta,
            ] {
                t.clear().map_err(|e| self.db_err(e))?;
            }
            st = State {
                version: INDEX_VERSION,
                segments: Vec::new(),
            };
            report.rebuilt = Some(why);
        }
        let mut prev_head: Option<Hash> = None;
        let mut changed = false;
        for (i, (seq, path)) in disk.iter().enumerate() {
            let from = match st.segments.get(i) {
                Some(s) => {
                    let mut head = [0u8; 32];
                    let bytes = format::unhex(&s.last_hash).unwrap_or_default();
                    if bytes.len() == 32 {
                        head.copy_from_slice(&bytes);
                    }
                    Some(Cursor {
                        segment: *seq,
                        offset: s.len,
                        head,
                    })
                }
                None => None,
            };
            let r = reader::read_segment(path, *seq, from)?;
            reader::check_link(path, prev_head, r.header_prev)?;
            r.accept(path, i + 1 == disk.len())?;
            prev_head = Some(r.end.head);
            if r.end.offset == 0 {
                // The header is not complete yet: the writer is creating this segment.
                break;
            }
            report.added += self.insert(&r.entries, &file_name(path))?;
            let s = SegState {
                segment: *seq,
                len: r.end.offset,
                last_hash: format::hex(&r.end.head),
            };
            match st.segments.get_mut(i) {
                Some(old) if *old == s => {}
                Some(old) => {
                    *old = s;
                    changed = true;
                }
                None => {
                    st.segments.push(s);
                    changed = true;
                }
            }
        }
        if changed || report.rebuilt.is_some() {
            // Written after the entries: a crash in between re-indexes the same
            // records under the same keys on the next update.
            let v = serde_json::to_vec(&st)
                .map_err(|e| IndexError::Entry(self.path.clone(), e.to_string()))?;
            self.meta.insert("state", v).map_err(|e| self.db_err(e))?;
            self.db.flush().map_err(|e| self.db_err(e))?;
        }
        report.indexed_segments = st.segments.len();
        Ok(report)
    }

    fn insert(&self, entries: &[Entry], segment_file: &str) -> Result<u64, IndexError> {
        // sled's memory use grows steeply with the size of one batch (a whole 64 MiB
        // segment in one batch took gigabytes), so batches stay small.
        let mut n = 0;
        for chunk in entries.chunks(1024) {
            n += self.insert_batch(chunk, segment_file)?;
        }
        Ok(n)
    }

    fn insert_batch(&self, entries: &[Entry], segment_file: &str) -> Result<u64, IndexError> {
        let mut records = sled::Batch::default();
        let mut by_time = sled::Batch::default();
        let mut by_identity = sled::Batch::default();
        let mut by_target = sled::Batch::default();
        let mut by_session = sled::Batch::default();
        let mut responses = sled::Batch::default();
        let mut n = 0;
        for e in entries {
            let a = match e.decode(segment_file)? {
                Record::Access(a) => a,
                Record::Response(r) => {
                    let mut k = Vec::new();
                    put_str(&mut k, &r.session_id);
                    k.extend_from_slice(&r.time_ns.to_be_bytes());
                    k.extend_from_slice(&id(e.segment, e.offset));
                    responses.insert(k, e.body.as_slice());
                    continue;
                }
                _ => continue,
            };
            let id = id(e.segment, e.offset);
            let mut v = Vec::with_capacity(40 + e.body.len());
            v.extend_from_slice(&e.seq.to_be_bytes());
            v.extend_from_slice(&e.hash);
            v.extend_from_slice(&e.body);
            records.insert(&id, v);
            let mut tail = Vec::with_capacity(24);
            tail.extend_from_slice(&a.time_ns.to_be_bytes());
            tail.extend_from_slice(&id);
            by_time.insert(tail.clone(), &[]);
            let mut k = Vec::new();
            put_str(&mut k, &a.identity.namespace);
            put_str(&mut k, &a.identity.service_account);
            k.extend_from_slice(&tail);
            by_identity.insert(k, &[]);
            let mut k = Vec::new();
            put_str(&mut k, &a.target);
            k.extend_from_slice(&tail);
            by_target.insert(k, &[]);
            if !a.session_id.is_empty() {
                let mut k = Vec::new();
                put_str(&mut k, &a.session_id);
                k.extend_from_slice(&tail);
                by_session.insert(k, &[]);
            }
            n += 1;
        }
        for (t, b) in [
            (&self.records, records),
            (&self.by_time, by_time),
            (&self.by_identity, by_identity),
            (&self.by_target, by_target),
            (&self.by_session, by_session),
            (&self.responses, responses),
        ] {
            t.apply_batch(b).map_err(|e| self.db_err(e))?;
        }
        Ok(n)
    }

    fn fetch(&self, id: &[u8]) -> Result<Option<Hit>, IndexError> {
        let Some(v) = self.records.get(id).map_err(|e| self.db_err(e))? else {
            return Ok(None);
        };
        let bad = |why: &str| IndexError::Entry(self.path.clone(), why.to_string());
        if v.len() < 40 || id.len() != 16 {
            return Err(bad("short record entry"));
        }
        let Ok(Record::Access(record)) = record::decode(&v[40..]) else {
            return Err(bad("record entry does not decode"));
        };
        let be = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or_default());
        let mut hash = [0; 32];
        hash.copy_from_slice(&v[8..40]);
        Ok(Some(Hit {
            segment: be(&id[..8]),
            offset: be(&id[8..]),
            seq: be(&v[..8]),
            hash,
            record,
        }))
    }

    /// Scan keys `prefix | time | id` for times in the filter's range; returns ids.
    fn scan(
        &self,
        tree: &sled::Tree,
        prefix: &[u8],
        f: &Filter,
        timed: bool,
    ) -> Result<Vec<Vec<u8>>, IndexError> {
        let mut out = Vec::new();
        let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if timed {
            let mut lo = prefix.to_vec();
            lo.extend_from_slice(&f.since_ns.unwrap_or(0).to_be_bytes());
            let mut hi = prefix.to_vec();
            hi.extend_from_slice(&f.until_ns.unwrap_or(u64::MAX).to_be_bytes());
            hi.extend_from_slice(&[0xff; 16]);
            Box::new(tree.range(lo..=hi))
        } else {
            Box::new(tree.scan_prefix(prefix))
        };
        for kv in iter {
            let (k, _) = kv.map_err(|e| self.db_err(e))?;
            if k.len() >= 16 {
                out.push(k[k.len() - 16..].to_vec());
            }
        }
        Ok(out)
    }

    /// The access records matching `f`, oldest first; `limit` keeps the newest.
    /// The index narrows by the most selective key given; the filter decides.
    pub fn query(&self, f: &Filter, limit: Option<usize>) -> Result<Vec<Hit>, IndexError> {
        let ids = if let Some(s) = &f.session {
            let mut p = Vec::new();
            put_str(&mut p, s);
            self.scan(&self.by_session, &p, f, true)?
        } else if let Some(i) = &f.identity {
            let mut p = Vec::new();
            put_str(&mut p, &i.namespace);
            match &i.service_account {
                Some(sa) => {
                    put_str(&mut p, sa);
                    self.scan(&self.by_identity, &p, f, true)?
                }
                None => self.scan(&self.by_identity, &p, f, false)?,
            }
        } else if let Some(t) = &f.target {
            let mut p = Vec::new();
            put_str(&mut p, t);
            self.scan(&self.by_target, &p, f, true)?
        } else {
            self.scan(&self.by_time, &[], f, true)?
        };
        let mut hits = Vec::new();
        for id in ids {
            match self.fetch(&id)? {
                Some(h) if f.matches(&h.record) => hits.push(h),
                Some(_) => {}
                None => {
                    return Err(IndexError::Entry(
                        self.path.clone(),
                        "a key names a missing record".into(),
                    ));
                }
            }
        }
        Ok(super::query::finish(hits, limit))
    }

    /// The responses recorded for a session, oldest first.
    pub fn responses(&self, session: &str) -> Result<Vec<ResponseRecord>, IndexError> {
        let mut p = Vec::new();
        put_str(&mut p, session);
        let mut out = Vec::new();
        for kv in self.responses.scan_prefix(&p) {
            let (_, v) = kv.map_err(|e| self.db_err(e))?;
            match record::decode(&v) {
                Ok(Record::Response(r)) => out.push(r),
                _ => {
                    return Err(IndexError::Entry(
                        self.path.clone(),
                        "response entry does not decode".into(),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Session ids with their record count, for `sessions list` (records are fetched
    /// by the caller through [`Index::query`] with the session filter).
    pub fn session_ids(&self) -> Result<BTreeMap<String, u64>, IndexError> {
        let mut out = BTreeMap::new();
        for kv in self.by_session.iter() {
            let (k, _) = kv.map_err(|e| self.db_err(e))?;
            if k.len() < 2 {
                continue;
            }
            let n = usize::from(u16::from_be_bytes([k[0], k[1]]));
            if let Some(s) = k.get(2..2 + n) {
                *out.entry(String::from_utf8_lossy(s).into_owned())
                    .or_default() += 1;
            }
        }
        Ok(out)
    }
}

/// The responses of a session without an index: every segment is read.
pub fn scan_responses(dir: &Path, session: &str) -> Result<Vec<ResponseRecord>, AuditError> {
    let segs: BTreeMap<u64, String> = list_segments(dir)?
        .into_iter()
        .map(|(s, p)| (s, file_name(&p)))
        .collect();
    let mut out = Vec::new();
    for e in reader::read_all(dir)? {
        let name = segs.get(&e.segment).map_or("", String::as_str);
        if let Record::Response(r) = e.decode(name)?
            && r.session_id == session
        {
            out.push(r);
        }
    }
    out.sort_by_key(|r| r.time_ns);
    Ok(out)
}

/// The same selection without an index: every segment is read.
pub fn scan_query(dir: &Path, f: &Filter, limit: Option<usize>) -> Result<Vec<Hit>, AuditError> {
    let segs: BTreeMap<u64, String> = list_segments(dir)?
        .into_iter()
        .map(|(s, p)| (s, file_name(&p)))
        .collect();
    let mut hits = Vec::new();
    for e in reader::read_all(dir)? {
        let name = segs.get(&e.segment).map_or("", String::as_str);
        if let Record::Access(record) = e.decode(name)?
            && f.matches(&record)
        {
            hits.push(Hit {
                segment: e.segment,
                offset: e.offset,
                seq: e.seq,
                hash: e.hash,
                record,
            });
        }
    }
    Ok(super::query::finish(hits, limit))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::audit::{AuditConfig, AuditLog, query::IdentityFilter, record::sample_access};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn cfg(dir: &Path) -> AuditConfig {
        let mut c = AuditConfig::new(dir, "node-a");
        c.segment_max_bytes = 4096;
        c.checkpoint_every_records = 7;
        c
    }

    /// Records i in `range`, identities alternating between two service accounts.
    fn rec(i: u64) -> crate::audit::AccessRecord {
        let mut r = sample_access(i);
        if i % 2 == 1 {
            r.identity.service_account = "billing".into();
            r.target = "ledger-db".into();
        }
        r
    }

    fn append(dir: &Path, range: std::ops::Range<u64>) {
        rt().block_on(async {
            let (log, _) = AuditLog::open(cfg(dir)).await.unwrap();
            for i in range {
                log.append(&rec(i)).await.unwrap();
            }
            log.close().await.unwrap();
        });
    }

    fn all(ix: &Index) -> Vec<u64> {
        ix.query(&Filter::default(), None)
            .unwrap()
            .iter()
            .map(|h| h.record.time_ns - sample_access(0).time_ns)
            .collect()
    }

    #[test]
    fn index_builds_updates_and_rebuilds() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        append(dir, 0..40);
        assert!(list_segments(dir).unwrap().len() >= 3);
        {
            let ix = Index::open(dir, None).unwrap();
            let r = ix.update().unwrap();
            assert_eq!(r.rebuilt.as_deref(), Some("no index yet"));
            assert_eq!(r.added, 40);
            assert_eq!(all(&ix), (0..40).collect::<Vec<_>>());
            // Nothing changed: nothing to do.
            assert_eq!(
                ix.update().unwrap(),
                UpdateReport {
                    indexed_segments: r.indexed_segments,
                    ..Default::default()
                }
            );
        }

        // The log grows (the last segment and new ones): only the new records are read.
        append(dir, 40..70);
        {
            let ix = Index::open(dir, None).unwrap();
            let r = ix.update().unwrap();
            assert_eq!((r.rebuilt, r.added), (None, 30));
            assert_eq!(all(&ix), (0..70).collect::<Vec<_>>());
        }

        // Deleted: rebuilt from the segments.
        fs::remove_dir_all(dir.join(DEFAULT_INDEX_DIR)).unwrap();
        {
            let ix = Index::open(dir, None).unwrap();
            let r = ix.update().unwrap();
            assert_eq!((r.rebuilt.as_deref(), r.added), (Some("no index yet"), 70));
            assert_eq!(all(&ix), (0..70).collect::<Vec<_>>());
        }

        // A segment replaced by different content of the same size: detected by the
        // hash at the indexed end, and rebuilt (here: from a log of other records).
        let other = tempfile::tempdir().unwrap();
        let mut recs = Vec::new();
        rt().block_on(async {
            let (log, _) = AuditLog::open(cfg(other.path())).await.unwrap();
            for i in 0..70 {
                let mut r = rec(i);
                r.target = "other-db".into();
                recs.push(log.append(&r).await.unwrap());
            }
            log.close().await.unwrap();
        });
        for (_, p) in list_segments(dir).unwrap() {
            fs::remove_file(p).unwrap();
        }
        for (_, p) in list_segments(other.path()).unwrap() {
            fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
        {
            let ix = Index::open(dir, None).unwrap();
            let r = ix.update().unwrap();
            let why = r.rebuilt.expect("stale index not detected");
            assert!(why.contains("differs") || why.contains("bytes"), "{why}");
            let hits = ix.query(&Filter::default(), None).unwrap();
            assert_eq!(hits.len(), 70);
            assert!(hits.iter().all(|h| h.record.target == "other-db"));
        }

        // A removed segment (retention) is also a rebuild.
        fs::remove_file(&list_segments(dir).unwrap()[0].1).unwrap();
        let ix = Index::open(dir, None).unwrap();
        let why = ix.update().unwrap().rebuilt.unwrap();
        assert!(why.contains("changed"), "{why}");
    }

    #[test]
    fn index_query_matches_a_scan_for_every_filter() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        append(dir, 0..50);
        let ix = Index::open(dir, Some(&tmp.path().join("elsewhere"))).unwrap();
        ix.update().unwrap();
        let mode = fs::metadata(tmp.path().join("elsewhere"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o700
        );
        let t0 = sample_access(0).time_ns;
        let id = |s: &str| Some(s.parse::<IdentityFilter>().unwrap());
        let filters = [
            Filter::default(),
            Filter {
                identity: id("shop/billing"),
                ..Filter::default()
            },
            Filter {
                identity: id("shop/*"),
                since_ns: Some(t0 + 10),
                ..Filter::default()
            },
            Filter {
                identity: id("nobody/x"),
                ..Filter::default()
            },
            Filter {
                target: Some("ledger-db".into()),
                until_ns: Some(t0 + 20),
                ..Filter::default()
            },
            Filter {
                session: Some("sess-0".into()),
                since_ns: Some(t0 + 5),
                until_ns: Some(t0 + 9),
                ..Filter::default()
            },
            Filter {
                since_ns: Some(t0 + 48),
                ..Filter::default()
            },
        ];
        let expect = [50, 25, 40, 0, 10, 5, 2];
        for (f, n) in filters.iter().zip(expect) {
            let a = ix.query(f, None).unwrap();
            let b = scan_query(dir, f, None).unwrap();
            assert_eq!(a, b, "{f:?}");
            assert_eq!(a.len(), n, "{f:?}");
        }
        let limited = ix.query(&Filter::default(), Some(3)).unwrap();
        assert_eq!(
            limited
                .iter()
                .map(|h| h.record.time_ns - t0)
                .collect::<Vec<_>>(),
            vec![47, 48, 49]
        );
        assert_eq!(ix.session_ids().unwrap().values().sum::<u64>(), 50);
    }
}
