//! Audit log throughput: durable appends per second (group commit, many concurrent
//! appenders, each `append` awaited until its record is fsynced) and records per
//! second verified offline. Figures for the reference VM are in bench/AUDIT.md.
//!
//! The logs are written under `$AUDIT_BENCH_DIR` (default: the system temp dir), so
//! the fsync cost is that of the disk behind it.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use interceptor_daemon::audit::{
    AccessRecord, AuditConfig, AuditLog, Decision, Identity, Outcome, Protocol, Verification,
    verify_dir,
};

fn record(i: u64) -> AccessRecord {
    let mut claims = BTreeMap::new();
    claims.insert(
        "iss".into(),
        "https://kubernetes.default.svc.cluster.local".into(),
    );
    claims.insert("sub".into(), "system:serviceaccount:shop:orders".into());
    AccessRecord {
        time_ns: 1_750_000_000_000_000_000 + i,
        node: "node-bench-1".into(),
        identity: Identity {
            namespace: "shop".into(),
            service_account: "orders".into(),
            pod: "orders-6c9f7d8b4-x2x7q".into(),
            verification: Verification::ServiceAccountToken,
            claims,
        },
        target: "orders-db".into(),
        protocol: Protocol::Postgres,
        operation: "SELECT o.id, o.total, c.email FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id = $1".into(),
        decision: Decision::AllowMasked,
        rule_id: Some("orders-read-masked".into()),
        approval_ref: None,
        outcome: Some(Outcome::Rows(1)),
        duration_ns: 412_000,
        session_id: format!("sess-{:08}", i / 64),
        connection_id: i / 16,
    }
}

fn base_dir() -> PathBuf {
    std::env::var_os("AUDIT_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Append `n` records from `appenders` concurrent tasks into a fresh log; the time
/// covers the appends only (not opening or closing).
async fn durable_appends(n: u64, appenders: u64) -> Duration {
    let tmp = tempfile::tempdir_in(base_dir()).unwrap();
    let (log, _) = AuditLog::open(AuditConfig::new(tmp.path(), "node-bench-1"))
        .await
        .unwrap();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..appenders {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in (t..n).step_by(appenders as usize) {
                log.append(&record(i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = start.elapsed();
    log.close().await.unwrap();
    took
}

fn appends(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("audit_append_durable");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    for (appenders, n) in [
        (1u64, 2_000u64),
        (64, 100_000),
        (1024, 400_000),
        (4096, 400_000),
    ] {
        g.throughput(Throughput::Elements(n));
        g.bench_function(format!("{appenders}_appenders"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| rt.block_on(durable_appends(n, appenders)))
                    .sum()
            })
        });
    }
    g.finish();
}

fn verify(c: &mut Criterion) {
    let rt = runtime();
    let tmp = tempfile::tempdir_in(base_dir()).unwrap();
    let n = 1_000_000;
    let key = rt.block_on(async {
        let (log, rep) = AuditLog::open(AuditConfig::new(tmp.path(), "node-bench-1"))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for t in 0..1024u64 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for i in (t..n).step_by(1024) {
                    log.append(&record(i)).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        log.close().await.unwrap();
        rep.public_key
    });
    let report = verify_dir(tmp.path(), Some(&key)).unwrap();
    let mut g = c.benchmark_group("audit_verify");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(30));
    g.throughput(Throughput::Elements(report.records));
    g.bench_function(
        format!("{}_records_{}_segments", report.records, report.segments),
        |b| b.iter(|| verify_dir(tmp.path(), Some(&key)).unwrap()),
    );
    g.finish();
}

criterion_group!(benches, appends, verify);
criterion_main!(benches);
