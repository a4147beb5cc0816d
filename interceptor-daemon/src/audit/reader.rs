//! Reading segments while the daemon appends to them.
//!
//! The writer appends whole batches with one `write`, so a concurrent reader can see
//! a batch half copied into the file, and after a crash the newest segment can end
//! in a torn frame until the daemon reopens the log. This reader therefore stops at
//! the first incomplete frame and reports where it stopped, so the caller can come
//! back later ([`Cursor`]) and read on from there. Every frame it returns has a
//! valid own hash and links to the one before it; signatures are not checked here
//! (that is [`super::verify`]'s job), so what is read is fit for searching, not for
//! proving anything.

use std::{
    fs::File,
    io::{Read as _, Seek as _, SeekFrom},
    path::Path,
};

use super::{
    AuditError,
    format::{FrameError, Hash, decode_frame, decode_header},
    record::{self, Record},
    writer::file_name,
};

/// One complete record as found in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub segment: u64,
    /// Byte offset of the frame in the segment file.
    pub offset: u64,
    pub seq: u64,
    pub hash: Hash,
    /// The encoded record (see [`record::decode`]).
    pub body: Vec<u8>,
}

impl Entry {
    pub fn decode(&self, segment_file: &str) -> Result<Record, AuditError> {
        record::decode(&self.body).map_err(|reason| AuditError::Corrupt {
            segment: segment_file.to_string(),
            offset: self.offset,
            reason,
        })
    }
}

/// Where reading stopped: the next frame starts at `offset` and must link to `head`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub segment: u64,
    pub offset: u64,
    pub head: Hash,
}

/// What one read of a segment found.
#[derive(Debug)]
pub struct SegmentRead {
    pub entries: Vec<Entry>,
    /// Where the next read starts.
    pub end: Cursor,
    /// The header's link to the previous segment, when the read began at the header.
    pub header_prev: Option<Hash>,
    /// An incomplete frame follows `end` (an append in progress or a torn tail).
    pub incomplete: Option<String>,
    /// A complete but damaged frame follows `end`: a crash that left garbage (e.g.
    /// zeros) not yet cut by the daemon, or damage; reading stopped there.
    pub damaged: Option<AuditError>,
}

/// Read the complete frames of segment `segment` at `path`, from its header
/// (`from = None`) or from a cursor returned by an earlier read.
pub fn read_segment(
    path: &Path,
    segment: u64,
    from: Option<Cursor>,
) -> Result<SegmentRead, AuditError> {
    let name = file_name(path);
    let corrupt = |offset: u64, reason: String| AuditError::Corrupt {
        segment: name.clone(),
        offset,
        reason,
    };
    let mut file = File::open(path).map_err(|e| AuditError::io(path, e))?;
    let start = from.map_or(0, |c| c.offset);
    file.seek(SeekFrom::Start(start))
        .map_err(|e| AuditError::io(path, e))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)
        .map_err(|e| AuditError::io(path, e))?;
    let (mut pos, mut head, header_prev) = match from {
        Some(c) => (0usize, c.head, None),
        None => match decode_header(&buf) {
            Ok(h) => {
                if h.segment != segment {
                    return Err(corrupt(10, format!("header names segment {}", h.segment)));
                }
                (h.len, h.hash, Some(h.prev))
            }
            // A segment the writer is creating right now: nothing to read yet.
            Err((_, why)) if buf.len() < 512 && why.contains("truncated") => {
                return Ok(SegmentRead {
                    entries: Vec::new(),
                    end: Cursor {
                        segment,
                        offset: 0,
                        head: [0; 32],
                    },
                    header_prev: None,
                    incomplete: Some(why),
                    damaged: None,
                });
            }
            Err((off, why)) => return Err(corrupt(off, why)),
        },
    };
    let mut entries = Vec::new();
    let mut incomplete = None;
    let mut damaged = None;
    while pos < buf.len() {
        let at = start + pos as u64;
        let f = match decode_frame(&buf[pos..]) {
            Ok(f) => f,
            Err(FrameError::Torn(why)) => {
                incomplete = Some(why);
                break;
            }
            Err(FrameError::Corrupt(why)) => {
                damaged = Some(corrupt(at, why));
                break;
            }
        };
        if f.prev != head {
            damaged = Some(corrupt(
                at,
                "record does not chain to the previous record".into(),
            ));
            break;
        }
        entries.push(Entry {
            segment,
            offset: at,
            seq: f.seq,
            hash: f.hash,
            body: f.body.to_vec(),
        });
        head = f.hash;
        pos += f.len;
    }
    Ok(SegmentRead {
        entries,
        end: Cursor {
            segment,
            offset: start + pos as u64,
            head,
        },
        header_prev,
        incomplete,
        damaged,
    })
}

impl SegmentRead {
    /// Accept what was read of segment `path`: a problem after the last complete
    /// record is an error unless this is the newest segment, where it is what a
    /// crash (or an append in progress) leaves until the daemon cuts it; a damaged
    /// record there is logged, since the records after it are not shown.
    pub fn accept(&self, path: &Path, newest: bool) -> Result<(), AuditError> {
        if let Some(e) = &self.damaged {
            if !newest {
                return Err(clone_err(e));
            }
            tracing::warn!(
                "{e}: reading stopped there (a crash the daemon has not recovered yet, or damage: run `interceptor audit verify`)"
            );
        } else if let Some(why) = &self.incomplete
            && !newest
        {
            return Err(AuditError::Corrupt {
                segment: file_name(path),
                offset: self.end.offset,
                reason: format!("{why} in a segment that is not the newest"),
            });
        }
        Ok(())
    }
}

fn clone_err(e: &AuditError) -> AuditError {
    match e {
        AuditError::Corrupt {
            segment,
            offset,
            reason,
        } => AuditError::Corrupt {
            segment: segment.clone(),
            offset: *offset,
            reason: reason.clone(),
        },
        other => AuditError::Record(other.to_string()),
    }
}

/// Every complete record of the log in chain order. An incomplete frame is accepted
/// only at the end of the newest segment (an append in progress, or a crash not yet
/// recovered); anywhere else it is damage.
pub fn read_all(dir: &Path) -> Result<Vec<Entry>, AuditError> {
    let segs = super::writer::list_segments(dir)?;
    let mut out = Vec::new();
    let mut prev_head: Option<Hash> = None;
    for (i, (seq, path)) in segs.iter().enumerate() {
        let r = read_segment(path, *seq, None)?;
        check_link(path, prev_head, r.header_prev)?;
        r.accept(path, i + 1 == segs.len())?;
        prev_head = Some(r.end.head);
        out.extend(r.entries);
    }
    Ok(out)
}

/// A segment header must link to the end of the segment read before it.
pub(crate) fn check_link(
    path: &Path,
    prev_head: Option<Hash>,
    header_prev: Option<Hash>,
) -> Result<(), AuditError> {
    if let (Some(p), Some(h)) = (prev_head, header_prev)
        && p != h
    {
        return Err(AuditError::Corrupt {
            segment: file_name(path),
            offset: 18,
            reason: "header does not chain to the end of the previous segment".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::audit::{
        AuditConfig, AuditLog,
        format::{encode_frame, segment_name},
        record::sample_access,
    };

    #[test]
    fn stops_at_a_partial_append_and_resumes_from_the_cursor() {
        let tmp = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (log, _) = AuditLog::open(AuditConfig::new(tmp.path(), "n"))
                .await
                .unwrap();
            for i in 0..5 {
                log.append(&sample_access(i)).await.unwrap();
            }
            log.close().await.unwrap();
        });
        let path = tmp.path().join(segment_name(0));
        let first = read_segment(&path, 0, None).unwrap();
        assert!(first.incomplete.is_none());
        // Genesis checkpoint + 5 records + final checkpoint.
        assert_eq!(first.entries.len(), 7);

        // Half of a frame appended: not returned, reported as incomplete.
        let mut frame = Vec::new();
        let body = record::encode(&Record::Access(sample_access(9))).unwrap();
        encode_frame(&mut frame, 7, &first.end.head, &body);
        let mut data = fs::read(&path).unwrap();
        let half = frame.len() / 2;
        data.extend_from_slice(&frame[..half]);
        fs::write(&path, &data).unwrap();
        let r = read_segment(&path, 0, Some(first.end)).unwrap();
        assert!(r.entries.is_empty() && r.incomplete.is_some());
        assert_eq!(r.end, first.end);
        assert_eq!(read_all(tmp.path()).unwrap().len(), 7);

        // The rest arrives: read from the cursor, it is the new record.
        data.extend_from_slice(&frame[half..]);
        fs::write(&path, &data).unwrap();
        let r = read_segment(&path, 0, Some(first.end)).unwrap();
        assert_eq!(r.entries.len(), 1);
        assert_eq!(
            (r.entries[0].seq, r.entries[0].offset),
            (7, first.end.offset)
        );
        assert!(matches!(
            r.entries[0].decode("x").unwrap(),
            Record::Access(a) if a == sample_access(9)
        ));

        // A frame that does not link is damage, not an incomplete append: reading
        // stops before it; it is an error except at the end of the newest segment.
        let mut bad = Vec::new();
        encode_frame(&mut bad, 8, &[1; 32], &body);
        data.extend_from_slice(&bad);
        fs::write(&path, &data).unwrap();
        let r = read_segment(&path, 0, Some(first.end)).unwrap();
        assert_eq!(r.entries.len(), 1);
        let e = r.damaged.as_ref().unwrap();
        assert!(e.to_string().contains("does not chain"), "{e}");
        r.accept(&path, true).unwrap();
        let e = r.accept(&path, false).unwrap_err();
        assert!(e.to_string().contains("does not chain"), "{e}");
        assert_eq!(read_all(tmp.path()).unwrap().len(), 8);
    }
}
