use super::*;

fn opts(dir: &Path, every: u64, seg: u64) -> Options {
    Options {
        dir: dir.into(),
        node: "n1".into(),
        checkpoint_every: every,
        segment_bytes: seg,
    }
}

fn record(i: u64) -> Record {
    Record {
        time_ns: i,
        identity: "shop/orders".into(),
        operation: format!("read customers #{i}"),
        decision: "allow".into(),
        ..Default::default()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A log of `n` records, closed cleanly (ends with a checkpoint).
fn write_log(dir: &Path, n: u64, every: u64, seg: u64) -> ed25519_dalek::VerifyingKey {
    rt().block_on(async {
        let log = AuditLog::open(opts(dir, every, seg)).unwrap();
        for i in 0..n {
            log.append(record(i)).await.unwrap();
        }
        log.close().await;
        log.public_key()
    })
}

#[test]
fn clean_log_verifies() {
    let d = tempfile::tempdir().unwrap();
    let key = write_log(d.path(), 200, 50, 4096);
    let r = verify(d.path(), &key).unwrap();
    assert!(r.segments > 2, "{r:?}");
    assert_eq!(r.unsigned_tail, 0);
    assert!(r.checkpoints >= 4);
    assert_eq!(r.entries, 200 + r.checkpoints + r.segments as u64);
    let (ok, msg) = cli::verify_dir(d.path(), None);
    assert!(ok, "{msg}");
}

#[test]
fn every_flipped_byte_is_detected_at_or_before_it() {
    let d = tempfile::tempdir().unwrap();
    let key = write_log(d.path(), 8, 3, 1 << 20);
    let segs = segments(d.path()).unwrap();
    let path = &segs[0].1;
    let original = std::fs::read(path).unwrap();
    for pos in 0..original.len() {
        let mut bad = original.clone();
        bad[pos] ^= 0x01;
        std::fs::write(path, &bad).unwrap();
        let f = verify(d.path(), &key).expect_err(&format!("flip at {pos} not detected"));
        assert!(
            f.offset <= pos as u64,
            "flip at {pos} reported at {}: {f}",
            f.offset
        );
        assert!(f.segment.starts_with("seg-"), "{f}");
    }
    std::fs::write(path, &original).unwrap();
    verify(d.path(), &key).unwrap();
}

#[test]
fn removed_or_reordered_segments_and_foreign_keys_are_rejected() {
    let d = tempfile::tempdir().unwrap();
    let key = write_log(d.path(), 100, 20, 2048);
    let segs = segments(d.path()).unwrap();
    assert!(segs.len() >= 4);
    // Reorder: swap two segment files.
    let (a, b) = (&segs[1].1, &segs[2].1);
    let (da, db) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    std::fs::write(a, &db).unwrap();
    std::fs::write(b, &da).unwrap();
    assert!(verify(d.path(), &key).is_err());
    std::fs::write(a, &da).unwrap();
    std::fs::write(b, &db).unwrap();
    verify(d.path(), &key).unwrap();
    // Remove one in the middle.
    let saved = std::fs::read(&segs[2].1).unwrap();
    std::fs::remove_file(&segs[2].1).unwrap();
    let f = verify(d.path(), &key).unwrap_err();
    assert!(f.reason.contains("missing"), "{f}");
    std::fs::write(&segs[2].1, saved).unwrap();
    // Another key.
    let other = NodeKey::load_or_create(tempfile::tempdir().unwrap().path())
        .unwrap()
        .public();
    let f = verify(d.path(), &other).unwrap_err();
    assert!(f.reason.contains("signature"), "{f}");
}

#[test]
fn torn_tail_is_cut_recorded_and_acknowledged_entries_survive() {
    let d = tempfile::tempdir().unwrap();
    let rt = rt();
    let acked = rt.block_on(async {
        let log = AuditLog::open(opts(d.path(), 1000, 1 << 20)).unwrap();
        let mut acked = Vec::new();
        for i in 0..25 {
            acked.push(log.append(record(i)).await.unwrap());
        }
        // No close: the writer is dropped as a crash would leave it.
        acked
    });
    // A crash mid-write leaves half a frame at the end.
    let path = segments(d.path()).unwrap().last().unwrap().1.clone();
    let mut data = std::fs::read(&path).unwrap();
    let cut_at = data.len();
    data.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3]);
    std::fs::write(&path, &data).unwrap();

    let key = rt.block_on(async {
        let log = AuditLog::open(opts(d.path(), 1000, 1 << 20)).unwrap();
        log.append(record(99)).await.unwrap();
        log.close().await;
        log.public_key()
    });
    let r = verify(d.path(), &key).unwrap();
    assert_eq!(r.recoveries, 1);
    let data = std::fs::read(&path).unwrap();
    assert!(data.len() > cut_at);
    // Every acknowledged entry is still there, unchanged.
    let mut off = 0;
    let mut hashes = Vec::new();
    while let Some((p, len)) = format::read_frame(&data[off..]) {
        hashes.push(format::entry_hash(p));
        off += len;
    }
    for a in acked {
        assert_eq!(
            hashes.get(a.seq as usize),
            Some(&a.hash),
            "acknowledged entry {} lost",
            a.seq
        );
    }
}
