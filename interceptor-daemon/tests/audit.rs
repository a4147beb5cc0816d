//! The audit log as an auditor meets it: a directory of segments, the node's
//! public key, and `interceptor audit verify` / `interceptor audit pubkey`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use interceptor_daemon::audit::{
    AccessRecord, AuditConfig, AuditLog, Decision, Identity, Outcome, Protocol, Receipt,
    Verification, format, keys, verify,
};

fn record(i: u64) -> AccessRecord {
    AccessRecord {
        time_ns: 1_750_000_000_000_000_000 + i * 1000,
        node: "node-1".into(),
        identity: Identity {
            namespace: "payments".into(),
            service_account: "ledger".into(),
            pod: format!("ledger-{}", i % 3),
            verification: Verification::ServiceAccountToken,
            claims: [(
                "sub".to_string(),
                "system:serviceaccount:payments:ledger".to_string(),
            )]
            .into_iter()
            .collect(),
        },
        target: "ledger-db".into(),
        protocol: Protocol::Postgres,
        operation: "UPDATE accounts SET balance = balance - $1 WHERE id = $2".into(),
        decision: if i.is_multiple_of(10) {
            Decision::Deny
        } else {
            Decision::Allow
        },
        rule_id: Some("ledger-write".into()),
        approval_ref: None,
        outcome: Some(if i.is_multiple_of(10) {
            Outcome::Error("denied by policy".into())
        } else {
            Outcome::Rows(1)
        }),
        duration_ns: 800_000,
        session_id: format!("s-{}", i / 50),
        connection_id: i / 25,
    }
}

fn cfg(dir: &Path) -> AuditConfig {
    let mut c = AuditConfig::new(dir, "node-1");
    c.segment_max_bytes = 8 * 1024;
    c.checkpoint_every_records = 25;
    c
}

/// Write `n` records; `close` false leaves the log as a crash would.
async fn write_log(dir: &Path, n: u64, close: bool) -> Vec<Receipt> {
    let (log, _) = AuditLog::open(cfg(dir)).await.unwrap();
    // Concurrent appenders, as connections would be.
    let mut tasks = Vec::new();
    for t in 0..4 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in (t..n).step_by(4) {
                out.push(log.append(&record(i)).await.unwrap());
            }
            out
        }));
    }
    let mut receipts = Vec::new();
    for t in tasks {
        receipts.extend(t.await.unwrap());
    }
    if close {
        log.close().await.unwrap();
    }
    receipts
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn interceptor(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_interceptor"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `audit pubkey` into a file, as an auditor would receive it.
fn pubkey_file(dir: &Path, out: &Path) -> String {
    let (code, stdout, stderr) = interceptor(&["audit", "pubkey", "--dir", s(dir)]);
    assert_eq!(code, 0, "{stderr}");
    fs::write(out, &stdout).unwrap();
    stdout.trim().to_string()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| format::parse_segment_name(p.file_name().unwrap().to_str().unwrap()).is_some())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ok_prints_counts_and_pubkey_matches() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let receipts = write_log(&dir, 500, true).await;
    assert_eq!(receipts.len(), 500);
    let pk_path = tmp.path().join("node.pub");
    let pk = pubkey_file(&dir, &pk_path);
    assert!(pk.starts_with("ed25519:") && pk.len() == 72, "{pk}");

    let report = verify::verify_dir(&dir, Some(&keys::parse_public(&pk).unwrap())).unwrap();
    let (code, stdout, stderr) =
        interceptor(&["audit", "verify", s(&dir), "--pubkey", s(&pk_path)]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let first = stdout.lines().next().unwrap();
    assert_eq!(
        first,
        format!(
            "OK: {} segments, {} records, {} checkpoints verified",
            report.segments, report.records, report.checkpoints
        )
    );
    assert!(
        report.segments > 5 && report.records > 500 && report.checkpoints >= 20,
        "{first}"
    );
    assert!(stdout.contains(&format!("signed by {pk}")), "{stdout}");
    assert!(stdout.contains("500 access records"), "{stdout}");

    // Without --pubkey: still verified, with a warning that authenticity is not shown.
    let (code, _, stderr) = interceptor(&["audit", "verify", s(&dir)]);
    assert_eq!(code, 0);
    assert!(stderr.contains("no --pubkey"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_the_damaged_segment_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    write_log(&dir, 300, true).await;
    let pk_path = tmp.path().join("node.pub");
    pubkey_file(&dir, &pk_path);
    let segs = segments(&dir);
    let victim = &segs[2];
    let name = victim.file_name().unwrap().to_str().unwrap().to_string();
    let orig = fs::read(victim).unwrap();
    for pos in [0, 9, 20, 70, 200, orig.len() / 2, orig.len() - 1] {
        let mut bad = orig.clone();
        bad[pos] ^= 0x80;
        fs::write(victim, &bad).unwrap();
        let (code, stdout, _) = interceptor(&["audit", "verify", s(&dir), "--pubkey", s(&pk_path)]);
        assert_eq!(code, 1, "flip at {pos}: {stdout}");
        let rest = stdout
            .strip_prefix(&format!("FAILED: {name} at byte "))
            .unwrap_or_else(|| panic!("flip at {pos}: {stdout}"));
        let offset: usize = rest.split(':').next().unwrap().parse().unwrap();
        assert!(offset <= pos, "flip at {pos} reported at {offset}");
    }
    fs::write(victim, &orig).unwrap();

    // A removed segment.
    fs::rename(&segs[3], tmp.path().join("elsewhere")).unwrap();
    let (code, stdout, _) = interceptor(&["audit", "verify", s(&dir), "--pubkey", s(&pk_path)]);
    assert_eq!(code, 1);
    assert!(
        stdout.starts_with(&format!(
            "FAILED: {} at byte 0: segment 3 is missing",
            format::segment_name(4)
        )),
        "{stdout}"
    );
    fs::rename(tmp.path().join("elsewhere"), &segs[3]).unwrap();

    // Two segments swapped.
    fs::rename(&segs[1], tmp.path().join("tmp")).unwrap();
    fs::rename(&segs[2], &segs[1]).unwrap();
    fs::rename(tmp.path().join("tmp"), &segs[2]).unwrap();
    let (code, stdout, _) = interceptor(&["audit", "verify", s(&dir), "--pubkey", s(&pk_path)]);
    assert_eq!(code, 1);
    assert!(
        stdout.starts_with(&format!("FAILED: {}", format::segment_name(1)))
            && stdout.contains("reordered"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_key_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    write_log(&dir, 50, true).await;
    let other = tmp.path().join("other.pub");
    fs::write(
        &other,
        keys::public_text(&keys::generate().unwrap().verifying_key()),
    )
    .unwrap();
    let (code, stdout, _) = interceptor(&["audit", "verify", s(&dir), "--pubkey", s(&other)]);
    assert_eq!(code, 1);
    assert!(
        stdout.starts_with(&format!("FAILED: {} at byte ", format::segment_name(0))),
        "{stdout}"
    );
    assert!(stdout.contains("not the trusted key"), "{stdout}");

    let garbage = tmp.path().join("garbage.pub");
    fs::write(&garbage, "hello").unwrap();
    let (code, _, stderr) = interceptor(&["audit", "verify", s(&dir), "--pubkey", s(&garbage)]);
    assert_eq!(code, 1);
    assert!(stderr.contains("not an ed25519 public key"), "{stderr}");
}

#[test]
fn crash_mid_record_is_recovered_without_losing_acknowledged_records() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    // The writer dies with its runtime, as with kill -9: no final checkpoint.
    let rt = runtime();
    let receipts = rt.block_on(write_log(&dir, 200, false));
    drop(rt);
    let pk_path = tmp.path().join("node.pub");
    pubkey_file(&dir, &pk_path);

    // What a kill -9 during the next write leaves: half a record at the end.
    let last = segments(&dir).pop().unwrap();
    let mut data = fs::read(&last).unwrap();
    let torn_at = data.len();
    let top = receipts.iter().max_by_key(|r| r.seq).unwrap();
    let mut frame = Vec::new();
    let body = interceptor_daemon::audit::record::encode(
        &interceptor_daemon::audit::Record::Access(record(999)),
    )
    .unwrap();
    format::encode_frame(&mut frame, top.seq + 1, &top.hash, &body);
    data.extend_from_slice(&frame[..frame.len() - 17]);
    fs::write(&last, &data).unwrap();

    let name = last.file_name().unwrap().to_str().unwrap().to_string();
    let (code, stdout, _) = interceptor(&["audit", "verify", s(&dir), "--pubkey", s(&pk_path)]);
    assert_eq!(code, 1);
    assert!(
        stdout.starts_with(&format!("FAILED: {name} at byte {torn_at}: partial record")),
        "{stdout}"
    );

    runtime().block_on(async {
        let (log, rep) = AuditLog::open(cfg(&dir)).await.unwrap();
        let rec = rep.recovered.clone().unwrap();
        assert_eq!(
            (rec.offset, rec.bytes),
            (torn_at as u64, (frame.len() - 17) as u64)
        );
        let after = log.append(&record(1000)).await.unwrap();
        assert!(after.seq > top.seq);
        log.close().await.unwrap();
    });

    let recs = verify::read_records(&dir).unwrap();
    for r in &receipts {
        assert!(
            recs.iter().any(|(seq, h, _)| *seq == r.seq && *h == r.hash),
            "record {} lost",
            r.seq
        );
    }
    let (code, stdout, _) = interceptor(&["audit", "verify", s(&dir), "--pubkey", s(&pk_path)]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("201 access records") && stdout.contains("1 recoveries"),
        "{stdout}"
    );
}

#[test]
fn pubkey_of_a_missing_key_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = interceptor(&["audit", "pubkey", "--dir", s(tmp.path())]);
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert!(stderr.contains("node.key"), "{stderr}");
    let (code, stdout, _) = interceptor(&["audit", "verify", s(tmp.path())]);
    assert_eq!(code, 1);
    assert!(stdout.starts_with("FAILED: no audit segments"), "{stdout}");
}

/// `audit rotate-key --dir` when no daemon answers on the admin socket: the
/// new key is printed and becomes the node key, the log verifies with either
/// key, an export across the rotation verifies, and a log another writer
/// holds is refused.
#[test]
fn rotate_key_offline_keeps_the_log_verifiable_with_either_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let no_daemon = tmp.path().join("no-daemon.sock");
    let rt = runtime();
    rt.block_on(write_log(&dir, 60, true));
    let old = pubkey_file(&dir, &tmp.path().join("old.pub"));

    // Without --dir, no daemon means nothing to do.
    let (code, _, stderr) = interceptor(&["audit", "rotate-key", "--socket", s(&no_daemon)]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("not running") && stderr.contains("give --dir DIR"),
        "{stderr}"
    );

    // A log another process writes is refused, and keeps its key.
    let (log, _) = rt.block_on(AuditLog::open(cfg(&dir))).unwrap();
    let (code, stdout, stderr) = interceptor(&[
        "audit",
        "rotate-key",
        "--socket",
        s(&no_daemon),
        "--dir",
        s(&dir),
    ]);
    assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
    assert!(
        stderr.contains("another process is writing this audit log"),
        "{stderr}"
    );
    rt.block_on(async {
        for i in 60..80 {
            log.append(&record(i)).await.unwrap();
        }
        log.close().await.unwrap();
    });
    drop(log);
    assert_eq!(pubkey_file(&dir, &tmp.path().join("same.pub")), old);

    let (code, stdout, stderr) = interceptor(&[
        "audit",
        "rotate-key",
        "--socket",
        s(&no_daemon),
        "--dir",
        s(&dir),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("rotated the key of"), "{stderr}");
    let new = stdout.trim().to_string();
    assert!(new.starts_with("ed25519:") && new != old, "{stdout}");
    assert_eq!(pubkey_file(&dir, &tmp.path().join("new.pub")), new);

    // The log goes on under the new key.
    rt.block_on(async {
        let (log, rep) = AuditLog::open(cfg(&dir)).await.unwrap();
        assert_eq!(keys::public_text(&rep.public_key), new);
        for i in 80..120 {
            log.append(&record(i)).await.unwrap();
        }
        log.close().await.unwrap();
    });
    for key in ["old.pub", "new.pub"] {
        let k = tmp.path().join(key);
        let (code, stdout, stderr) = interceptor(&["audit", "verify", s(&dir), "--pubkey", s(&k)]);
        assert_eq!(code, 0, "{key}: {stdout}{stderr}");
        assert!(stdout.contains("1 key rotations"), "{stdout}");
        assert!(
            stdout.contains(&format!("signed by {old} -> {new}")),
            "{stdout}"
        );
    }
    let stranger = tmp.path().join("stranger.pub");
    fs::write(
        &stranger,
        keys::public_text(&keys::generate().unwrap().verifying_key()),
    )
    .unwrap();
    let (code, stdout, _) = interceptor(&["audit", "verify", s(&dir), "--pubkey", s(&stranger)]);
    assert_eq!(code, 1, "{stdout}");

    // An evidence package across the rotation verifies with either key.
    let pkg = tmp.path().join("evidence.tar");
    let (code, stdout, stderr) = interceptor(&[
        "audit",
        "export",
        s(&dir),
        "--since",
        "2020-01-01",
        "--out",
        s(&pkg),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("manifest signed by {new}")),
        "{stdout}"
    );
    for key in ["old.pub", "new.pub"] {
        let k = tmp.path().join(key);
        let (code, stdout, stderr) = interceptor(&["audit", "verify", s(&pkg), "--pubkey", s(&k)]);
        assert_eq!(code, 0, "{key}: {stdout}{stderr}");
        assert!(
            stdout.contains(&format!("signed by {old} -> {new}")),
            "{stdout}"
        );
        assert!(stdout.contains("120 selected records"), "{stdout}");
    }
}
