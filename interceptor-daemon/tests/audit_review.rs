//! The audit log as an auditor reviews it: `interceptor audit query|report|export|
//! tail`, `interceptor sessions list|replay`, evidence packages verified elsewhere,
//! and reading while a writer appends and dies.

use std::{
    collections::HashSet,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use interceptor_daemon::audit::{
    AccessRecord, AuditConfig, AuditLog, Decision, Identity, Outcome, Protocol, Verification,
    format, verify,
};

/// 2025-06-15T15:06:40Z
const T0: u64 = 1_750_000_000_000_000_000;

/// Record `i`: one second apart; three identities, two targets, sessions of 10.
fn record(i: u64) -> AccessRecord {
    let (ns, sa, target) = match i % 3 {
        0 => ("payments", "ledger", "ledger-db"),
        1 => ("payments", "refunds", "ledger-db"),
        _ => ("shop", "orders", "orders-db"),
    };
    let deny = i.is_multiple_of(7);
    AccessRecord {
        time_ns: T0 + i * 1_000_000_000,
        node: "node-1".into(),
        identity: Identity {
            namespace: ns.into(),
            service_account: sa.into(),
            pod: format!("{sa}-pod"),
            verification: Verification::ServiceAccountToken,
            claims: Default::default(),
        },
        target: target.into(),
        protocol: Protocol::Postgres,
        operation: if deny {
            "DELETE FROM accounts WHERE id = $1".into()
        } else {
            format!("SELECT balance FROM accounts WHERE id = ${}", i % 2 + 1)
        },
        decision: if deny {
            Decision::Deny
        } else {
            Decision::Allow
        },
        rule_id: Some(if deny { "no-deletes" } else { "read" }.into()),
        approval_ref: i.is_multiple_of(11).then(|| "CHG-7".to_string()),
        outcome: Some(if deny {
            Outcome::Error("denied".into())
        } else {
            Outcome::Rows(1)
        }),
        duration_ns: 1000,
        session_id: format!("node-1-{}-{}", i % 3, i / 30),
        connection_id: i % 3 + 10 * (i / 30),
    }
}

fn cfg(dir: &Path) -> AuditConfig {
    let mut c = AuditConfig::new(dir, "node-1");
    c.segment_max_bytes = 8 * 1024;
    c.checkpoint_every_records = 20;
    c
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn write_log(dir: &Path, range: std::ops::Range<u64>) {
    runtime().block_on(async {
        let (log, _) = AuditLog::open(cfg(dir)).await.unwrap();
        for i in range {
            log.append(&record(i)).await.unwrap();
        }
        log.close().await.unwrap();
    });
}

fn interceptor(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_interceptor"))
        .args(args)
        .env_remove("INTERCEPTOR_AUDIT_INDEX")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn query_filters_and_the_index_is_built_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_log(dir, 0..120);

    let (code, out, err) = interceptor(&[
        "audit",
        "query",
        s(dir),
        "--identity",
        "payments/ledger",
        "--since",
        "2025-06-15T15:06:40Z",
        "--until",
        "2025-06-15T15:07:39Z",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("built from the segments (no index yet)"),
        "{err}"
    );
    assert!(dir.join("index").is_dir());
    let rows = json_lines(&out);
    // i in 0..60 with i % 3 == 0.
    assert_eq!(rows.len(), 20);
    assert!(
        rows.iter()
            .all(|r| r["identity"]["service_account"] == "ledger")
    );
    assert_eq!(rows[0]["time"], "2025-06-15T15:06:40.000Z");
    assert!(rows[1]["seq"].as_u64().unwrap() > rows[0]["seq"].as_u64().unwrap());

    // Second run: the index is current, no rebuild note.
    let (code, out, err) = interceptor(&[
        "audit",
        "query",
        s(dir),
        "--target",
        "orders-db",
        "--decision",
        "deny",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("built"), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "TIME",
            "IDENTITY",
            "TARGET",
            "PROTOCOL",
            "OPERATION",
            "DECISION",
            "RULE",
            "APPROVAL",
            "OUTCOME"
        ]
    );
    // i % 3 == 2 and i % 7 == 0 below 120: 14, 35, 56, 77, 98, 119.
    assert_eq!(lines.len(), 1 + 6 + 1, "{out}");
    assert_eq!(
        cells(lines[1]),
        [
            "2025-06-15T15:06:54.000Z",
            "shop/orders",
            "orders-db",
            "postgres",
            "DELETE FROM accounts WHERE id = $1",
            "deny",
            "no-deletes",
            "-",
            "error: denied"
        ],
        "{out}"
    );
    assert_eq!(lines[7], "6 records");

    // --limit keeps the newest; a session filter; the index and a scan agree.
    let (_, out, _) = interceptor(&["audit", "query", s(dir), "--limit", "3", "--json"]);
    let seqs: Vec<String> = json_lines(&out)
        .iter()
        .map(|r| r["time"].to_string())
        .collect();
    assert_eq!(seqs.len(), 3);
    assert!(seqs[2].contains("15:08:39"), "{seqs:?}");
    let (_, a, _) = interceptor(&[
        "audit",
        "query",
        s(dir),
        "--session",
        "node-1-2-1",
        "--json",
    ]);
    let (_, b, _) = interceptor(&[
        "audit",
        "query",
        s(dir),
        "--session",
        "node-1-2-1",
        "--json",
        "--no-index",
    ]);
    assert_eq!(json_lines(&a).len(), 10);
    assert_eq!(a, b);

    // The log grows: the next query sees the new records without a rebuild.
    write_log(dir, 120..150);
    let (_, out, err) = interceptor(&[
        "audit",
        "query",
        s(dir),
        "--since",
        "2025-06-15T15:08:40Z",
        "--json",
    ]);
    assert!(!err.contains("built"), "{err}");
    assert_eq!(json_lines(&out).len(), 30);

    // Deleted: rebuilt on the next query.
    fs::remove_dir_all(dir.join("index")).unwrap();
    let (code, out, err) = interceptor(&["audit", "query", s(dir), "--json"]);
    assert_eq!(code, 0);
    assert!(err.contains("no index yet"), "{err}");
    assert_eq!(json_lines(&out).len(), 150);

    // A bad time is an error that says what is accepted.
    let (code, _, err) = interceptor(&["audit", "query", s(dir), "--since", "last tuesday"]);
    assert_eq!(code, 1);
    assert!(err.contains("RFC 3339"), "{err}");
    // Relative times: the records are from 2025, so nothing in the last hour.
    let (code, out, _) = interceptor(&["audit", "query", s(dir), "--since", "1h", "--json"]);
    assert_eq!((code, out.as_str()), (0, ""));

    // The index elsewhere (read-only log directories).
    let ix = tmp.path().join("other-index");
    let (code, out, _) = interceptor(&[
        "audit",
        "query",
        s(dir),
        "--index",
        s(&ix),
        "--json",
        "--identity",
        "shop/*",
    ]);
    assert_eq!(code, 0);
    assert_eq!(json_lines(&out).len(), 50);
    assert!(ix.is_dir());

    // What a power loss can leave before the daemon restarts: zeros after the last
    // record. Queries still answer (with a warning) from the records before them.
    let newest = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "audit"))
        .max()
        .unwrap();
    let mut data = fs::read(&newest).unwrap();
    data.extend_from_slice(&[0; 100]);
    fs::write(&newest, &data).unwrap();
    let (code, out, err) = interceptor(&["audit", "query", s(dir), "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("reading stopped there"), "{err}");
    assert_eq!(json_lines(&out).len(), 150);
    let (code, out, err) = interceptor(&["audit", "query", s(dir), "--json", "--no-index"]);
    assert_eq!((code, json_lines(&out).len()), (0, 150), "{err}");
}

#[test]
fn report_reviews_each_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_log(dir, 0..42);
    let (code, out, err) = interceptor(&["audit", "report", s(dir), "--since", "2025-06-15"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(
            "access review 2025-06-15T00:00:00.000Z .. now: 42 records, 3 identities\n"
        ),
        "{out}"
    );
    // payments/ledger: i = 0, 3, ..., 39 (14 records); denied: 0, 21 ; approvals: 0, 33.
    let block: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("identity payments/ledger"))
        .take(8)
        .collect();
    assert_eq!(
        block[0],
        "identity payments/ledger: 14 operations, first seen 2025-06-15T15:06:40.000Z, last seen 2025-06-15T15:07:19.000Z"
    );
    assert_eq!(block[1], "  targets:   ledger-db (14)");
    assert_eq!(block[2], "  decisions: allow (12), deny (2)");
    assert_eq!(block[3], "  rules:     no-deletes (2), read (12)");
    assert_eq!(block[4], "  approvals: CHG-7 (2)");
    assert!(
        out.contains("deny 2                    DELETE FROM accounts WHERE id = $1"),
        "{out}"
    );

    let (code, out, _) = interceptor(&[
        "audit",
        "report",
        s(dir),
        "--since",
        "2025-06-15",
        "--until",
        "2025-06-15T15:06:49Z",
        "--json",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let ids = v["identities"].as_array().unwrap();
    assert_eq!(ids.len(), 3);
    let total: u64 = ids.iter().map(|i| i["records"].as_u64().unwrap()).sum();
    assert_eq!(total, 10);
    assert_eq!(ids[0]["identity"], "payments/ledger");
    assert_eq!(ids[0]["decisions"]["deny"], 1);
}

#[test]
fn sessions_list_and_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_log(dir, 0..60);
    let (code, out, err) = interceptor(&["sessions", "list", s(dir)]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("SESSION"), "{out}");
    assert_eq!(*lines.last().unwrap(), "6 sessions");
    assert_eq!(
        cells(lines[1]),
        [
            "node-1-0-0",
            "payments/ledger",
            "ledger-db",
            "2025-06-15T15:06:40.000Z",
            "2025-06-15T15:07:07.000Z",
            "10",
            "2"
        ],
        "{out}"
    );

    let (code, out, _) = interceptor(&[
        "sessions",
        "list",
        s(dir),
        "--json",
        "--identity",
        "shop/orders",
    ]);
    assert_eq!(code, 0);
    let v = json_lines(&out);
    assert_eq!(v.len(), 2);
    assert_eq!(v[0]["statements"], 10);

    let (code, out, err) = interceptor(&["sessions", "replay", s(dir), "node-1-1-0"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("session node-1-1-0: payments/refunds (pod refunds-pod) -> ledger-db [postgres], connection 1, 10 statements"), "{out}");
    assert_eq!(
        lines[1],
        "+0.000s  allow   SELECT balance FROM accounts WHERE id = $2  [rule read; rows=1]"
    );
    assert!(lines[2].starts_with("+3.000s  allow"), "{out}");
    // i = 7 is denied, 6 s after i = 1.
    assert_eq!(
        lines[3],
        "+6.000s  deny    DELETE FROM accounts WHERE id = $1  [rule no-deletes; error: denied]"
    );
    assert!(
        out.contains("note: no responses are recorded for this session"),
        "{out}"
    );

    let (code, _, err) = interceptor(&["sessions", "replay", s(dir), "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("no records for session nope"), "{err}");
}

/// Lines of a child's stdout, read on a thread.
fn line_reader(out: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn tail_follows_appends_across_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_log(dir, 0..5);
    let mut child = Command::new(env!("CARGO_BIN_EXE_interceptor"))
        .args([
            "audit",
            "tail",
            s(dir),
            "-f",
            "--json",
            "-n",
            "2",
            "--poll-ms",
            "20",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = line_reader(child.stdout.take().unwrap());
    let next = |rx: &mpsc::Receiver<String>| -> serde_json::Value {
        serde_json::from_str(
            &rx.recv_timeout(Duration::from_secs(20))
                .expect("tail printed nothing"),
        )
        .unwrap()
    };
    let t = |v: &serde_json::Value| (v["time_ns"].as_u64().unwrap() - T0) / 1_000_000_000;
    assert_eq!((t(&next(&rx)), t(&next(&rx))), (3, 4));

    // Append while it follows: several segment rotations (8 KiB segments).
    let rt = runtime();
    rt.block_on(async {
        let (log, _) = AuditLog::open(cfg(dir)).await.unwrap();
        for i in 5..100 {
            log.append(&record(i)).await.unwrap();
            if i == 50 {
                // What the client received is followed too.
                use interceptor_daemon::audit::record::{
                    RedisReply, ResponseRecord, ResponseSummary,
                };
                let r = record(i);
                log.append_response(ResponseRecord {
                    time_ns: r.time_ns,
                    session_id: r.session_id,
                    connection_id: r.connection_id,
                    duration_ns: 0,
                    summary: ResponseSummary::Redis(RedisReply {
                        kind: "integer".into(),
                        value: Some("7".into()),
                        elements: None,
                        truncated: false,
                    }),
                })
                .await
                .unwrap();
            }
        }
        log.close().await.unwrap();
    });
    assert!(verify::verify_dir(dir, None).unwrap().segments >= 3);
    for i in 5..100 {
        let v = next(&rx);
        assert_eq!(t(&v), i);
        assert_eq!(v["kind"], "access");
        if i == 50 {
            let v = next(&rx);
            assert_eq!((v["kind"].as_str(), t(&v)), (Some("response"), 50), "{v}");
            assert_eq!(v["summary"]["Redis"]["value"], "7", "{v}");
            assert_eq!(v["session_id"], record(50).session_id.as_str());
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // Without -f: the last n records as text.
    let (code, out, _) = interceptor(&["audit", "tail", s(dir), "-n", "1"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1);
    assert!(out.starts_with("2025-06-15T15:08:19.000Z payments/ledger -> ledger-db [postgres] allow rule=read approval=CHG-7 rows=1: SELECT"), "{out}");
}

/// Flip one byte of `data` at `pos`.
fn flip(path: &Path, pos: usize) {
    let mut d = fs::read(path).unwrap();
    d[pos] ^= 0x20;
    fs::write(path, d).unwrap();
}

#[test]
fn export_package_verifies_elsewhere_and_tampering_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    write_log(&dir, 0..200);
    let pubkey = tmp.path().join("node.pub");
    let (_, pk, _) = interceptor(&["audit", "pubkey", "--dir", s(&dir)]);
    fs::write(&pubkey, &pk).unwrap();
    let pkg = tmp.path().join("evidence.tar");
    // Records 100..=149 of payments/ledger: from the middle of the log.
    let (code, out, err) = interceptor(&[
        "audit",
        "export",
        s(&dir),
        "--since",
        "2025-06-15T15:08:20Z",
        "--until",
        "2025-06-15T15:09:09Z",
        "--identity",
        "payments/ledger",
        "--out",
        s(&pkg),
    ]);
    assert_eq!(code, 0, "{err}");
    // i in 100..150 with i % 3 == 0: 102..=147, 16 records.
    assert!(out.starts_with("exported 16 records (segments "), "{out}");
    assert!(
        out.contains(&format!("manifest signed by {}", pk.trim())),
        "{out}"
    );
    assert!(
        !out.contains("segments 0..="),
        "the package must not need the whole log: {out}"
    );

    // On "another machine": only the package, in a clean directory.
    let elsewhere = tempfile::tempdir().unwrap();
    let copy = elsewhere.path().join("evidence.tar");
    fs::copy(&pkg, &copy).unwrap();
    let (code, out, err) = interceptor(&["audit", "verify", s(&copy)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("OK: evidence package"), "{out}");
    assert!(
        out.contains("16 selected records present and verified"),
        "{out}"
    );
    assert!(out.contains("(a key of this log)"), "{out}");
    let pk_copy = elsewhere.path().join("node.pub");
    fs::copy(&pubkey, &pk_copy).unwrap();
    let (code, out, err) = interceptor(&["audit", "verify", s(&copy), "--pubkey", s(&pk_copy)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("warning"), "{err}");

    // Extracted, it verifies the same.
    let x = elsewhere.path().join("x");
    fs::create_dir(&x).unwrap();
    tar::Archive::new(fs::File::open(&copy).unwrap())
        .unpack(&x)
        .unwrap();
    let (code, out, _) = interceptor(&["audit", "verify", s(&x)]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("16 selected records present and verified"),
        "{out}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(x.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["selected_count"], 16);
    assert!(manifest["first_segment"].as_u64().unwrap() > 0);
    assert_eq!(
        fs::read_to_string(x.join("records.jsonl"))
            .unwrap()
            .lines()
            .count(),
        16
    );

    // A flipped byte in a segment inside the tar: the file is named.
    let tar_bytes = fs::read(&copy).unwrap();
    let seg_at = tar_bytes
        .windows(8)
        .position(|w| w == format::MAGIC)
        .unwrap();
    let bad = elsewhere.path().join("bad.tar");
    fs::write(&bad, &tar_bytes).unwrap();
    flip(&bad, seg_at + 300);
    let (code, out, _) = interceptor(&["audit", "verify", s(&bad)]);
    assert_eq!(code, 1);
    let first = manifest["first_segment"].as_u64().unwrap();
    assert_eq!(
        out,
        format!(
            "FAILED: segments/{}: SHA-256 does not match the manifest (the file was altered)\n",
            format::segment_name(first)
        )
    );

    // In the extracted directory: the records file, and the manifest itself.
    flip(&x.join("records.jsonl"), 10);
    let (code, out, _) = interceptor(&["audit", "verify", s(&x)]);
    assert_eq!(code, 1);
    assert!(
        out.starts_with("FAILED: records.jsonl: SHA-256 does not match"),
        "{out}"
    );
    flip(&x.join("records.jsonl"), 10);
    let m = fs::read_to_string(x.join("manifest.json")).unwrap();
    fs::write(
        x.join("manifest.json"),
        m.replace("\"selected_count\": 16", "\"selected_count\": 15"),
    )
    .unwrap();
    let (code, out, _) = interceptor(&["audit", "verify", s(&x)]);
    assert_eq!(code, 1);
    assert!(
        out.starts_with("FAILED: manifest.sig: invalid signature"),
        "{out}"
    );

    // Without the node key: an unsigned package, still verifiable.
    let unsigned = tmp.path().join("unsigned.tar");
    let (code, out, _) = interceptor(&[
        "audit",
        "export",
        s(&dir),
        "--since",
        "2025-06-15",
        "--target",
        "orders-db",
        "--key-file",
        "/nonexistent/key",
        "--out",
        s(&unsigned),
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains("manifest UNSIGNED (node key not readable"),
        "{out}"
    );
    let (code, out, _) = interceptor(&["audit", "verify", s(&unsigned), "--pubkey", s(&pubkey)]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("66 selected records present and verified"),
        "{out}"
    );
    assert!(
        out.contains("manifest unsigned (node key not readable"),
        "{out}"
    );

    // Nothing selected: no package.
    let (code, _, err) = interceptor(&[
        "audit",
        "export",
        s(&dir),
        "--since",
        "1h",
        "--out",
        s(&tmp.path().join("none.tar")),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("no records match"), "{err}");
}

/// The child of `kill9_*`: appends under load from 8 tasks and prints every
/// acknowledged record as `ack SEQ HASH`, until it is killed.
#[test]
#[ignore = "run as a child process by kill9_during_load_loses_no_acknowledged_record"]
fn child_appender() {
    let dir = PathBuf::from(std::env::var("AUDIT_CHILD_DIR").expect("AUDIT_CHILD_DIR"));
    runtime().block_on(async {
        let mut c = cfg(&dir);
        c.segment_max_bytes = 64 * 1024;
        c.checkpoint_every_records = 100;
        let (log, _) = AuditLog::open(c).await.unwrap();
        for t in 0..8u64 {
            let log = log.clone();
            tokio::spawn(async move {
                let mut i = t;
                loop {
                    match log.append(&record(i)).await {
                        Ok(r) => println!("ack {} {}", r.seq, format::hex(&r.hash)),
                        Err(e) => {
                            eprintln!("append failed: {e}");
                            std::process::exit(3);
                        }
                    }
                    i += 8;
                }
            });
        }
        // Appends until killed.
        std::future::pending::<()>().await;
    });
}

#[test]
fn kill9_during_load_loses_no_acknowledged_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_appender",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("AUDIT_CHILD_DIR", &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = line_reader(child.stdout.take().unwrap());
    let mut acked: Vec<(u64, String)> = Vec::new();
    let parse = |l: &str| -> Option<(u64, String)> {
        let mut p = l.strip_prefix("ack ")?.split(' ');
        let seq = p.next()?.parse().ok()?;
        let h = p.next()?;
        (h.len() == 64).then(|| (seq, h.to_string()))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut queried = false;
    while acked.len() < 3000 {
        assert!(Instant::now() < deadline, "only {} acks", acked.len());
        if let Ok(l) = rx.recv_timeout(Duration::from_secs(30))
            && let Some(a) = parse(&l)
        {
            acked.push(a);
        }
        // While the writer appends: the CLI reads and indexes complete records only,
        // and every record acknowledged before the query started is in its answer.
        if !queried && acked.len() >= 1000 {
            queried = true;
            let before: Vec<(u64, String)> = acked.clone();
            let (code, out, err) = interceptor(&["audit", "query", s(&dir), "--json"]);
            assert_eq!(code, 0, "{err}");
            let seen: HashSet<(u64, String)> = json_lines(&out)
                .iter()
                .map(|v| {
                    (
                        v["seq"].as_u64().unwrap(),
                        v["hash"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            for a in &before {
                assert!(
                    seen.contains(a),
                    "acknowledged {a:?} missing from a live query"
                );
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Acknowledgements already in the pipe count too.
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(5)) {
        if let Some(a) = parse(&l) {
            acked.push(a);
        }
    }

    // A SIGKILL tears a write only when it lands inside one; make sure the log ends
    // the way such a write leaves it (half a frame), so the recovery path runs.
    let last = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "audit"))
        .max()
        .unwrap();
    let mut frame = Vec::new();
    format::encode_frame(&mut frame, u64::MAX, &[0; 32], &[0; 200]);
    let mut data = fs::read(&last).unwrap();
    data.extend_from_slice(&frame[..frame.len() / 2]);
    fs::write(&last, &data).unwrap();

    // Before the daemon reopens the log: readers still work (the torn tail is
    // skipped) and the index is brought up to date.
    let (code, out, err) = interceptor(&["audit", "query", s(&dir), "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(json_lines(&out).len() >= acked.len());

    // Reopen (as the restarted daemon does): the torn tail, if the kill left one,
    // is cut and recorded; every acknowledged record is there; the log verifies.
    let rep = runtime().block_on(async {
        let (log, rep) = AuditLog::open(cfg(&dir)).await.unwrap();
        log.close().await.unwrap();
        rep
    });
    let records = verify::read_records(&dir).unwrap();
    let present: HashSet<(u64, String)> = records
        .iter()
        .map(|(seq, h, _)| (*seq, format::hex(h)))
        .collect();
    for a in &acked {
        assert!(present.contains(a), "acknowledged record {a:?} lost");
    }
    let report = verify::verify_dir(&dir, None).unwrap();
    let cut = rep.recovered.expect("the torn tail was not recovered");
    assert!(cut.bytes >= (frame.len() / 2) as u64, "{cut:?}");
    assert!(dir.join(&cut.saved_as).exists());
    assert_eq!(report.recoveries, 1);
    eprintln!(
        "{} acknowledged records survived; torn tail of {} bytes cut and recorded",
        acked.len(),
        cut.bytes
    );
    assert!(report.access_records >= acked.len() as u64);
    assert_eq!(report.unsigned_tail, 0);

    // The CLI's index catches up with the recovery (or rebuilds) and still agrees.
    let (code, out, err) = interceptor(&["audit", "query", s(&dir), "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_lines(&out).len() as u64, report.access_records);
}

/// Cells of a table row (columns are separated by at least two spaces).
fn cells(line: &str) -> Vec<&str> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}
