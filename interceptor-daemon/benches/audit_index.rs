//! Audit review: building and updating the sled index, and answering a query with
//! and without it. Figures for the reference VM are in bench/AUDIT.md.
//!
//! The log is written under `$AUDIT_BENCH_DIR` (default: the system temp dir).

use std::{path::PathBuf, time::Duration};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use interceptor_daemon::audit::{
    AccessRecord, AuditConfig, AuditLog, Decision, Identity, Outcome, Protocol, Verification,
    index::{self, Index},
    query::{Filter, IdentityFilter},
};

const RECORDS: u64 = 200_000;
/// Distinct service accounts; a query for one selects 1/SAS of the records.
const SAS: u64 = 20;

fn record(i: u64) -> AccessRecord {
    AccessRecord {
        time_ns: 1_750_000_000_000_000_000 + i * 1_000_000,
        node: "node-bench-1".into(),
        identity: Identity {
            namespace: "shop".into(),
            service_account: format!("sa-{}", i % SAS),
            pod: format!("pod-{}", i % (SAS * 3)),
            verification: Verification::ServiceAccountToken,
            claims: [("sub".to_string(), format!("system:serviceaccount:shop:sa-{}", i % SAS))]
                .into_iter()
                .collect(),
        },
        target: format!("db-{}", i % 5),
        protocol: Protocol::Postgres,
        operation: "SELECT o.id, o.total, c.email FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id = $1".into(),
        decision: if i.is_multiple_of(13) { Decision::Deny } else { Decision::Allow },
        rule_id: Some("orders-read".into()),
        approval_ref: None,
        outcome: Some(Outcome::Rows(1)),
        duration_ns: 412_000,
        session_id: format!("node-bench-1-{}", i / 64),
        connection_id: i / 64,
    }
}

fn build_log() -> (tempfile::TempDir, PathBuf) {
    let base = std::env::var_os("AUDIT_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let tmp = tempfile::tempdir_in(base).unwrap();
    let dir = tmp.path().join("log");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (log, _) = AuditLog::open(AuditConfig::new(&dir, "node-bench-1"))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for t in 0..256 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for i in (t..RECORDS).step_by(256) {
                    log.append(&record(i)).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        log.close().await.unwrap();
    });
    (tmp, dir)
}

fn benches(c: &mut Criterion) {
    let (_tmp, dir) = build_log();
    let ix_dir = dir.join(index::DEFAULT_INDEX_DIR);
    let mut g = c.benchmark_group("audit_index");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(30));
    g.throughput(Throughput::Elements(RECORDS));
    g.bench_function("build from scratch", |b| {
        b.iter(|| {
            let _ = std::fs::remove_dir_all(&ix_dir);
            let ix = Index::open(&dir, None).unwrap();
            assert_eq!(ix.update().unwrap().added, RECORDS);
        })
    });
    let filter = Filter {
        identity: Some(IdentityFilter {
            namespace: "shop".into(),
            service_account: Some("sa-7".into()),
        }),
        ..Filter::default()
    };
    g.throughput(Throughput::Elements(1));
    g.bench_function("open + staleness check, nothing new", |b| {
        b.iter(|| {
            let ix = Index::open(&dir, None).unwrap();
            assert_eq!(ix.update().unwrap().added, 0);
        })
    });
    let ix = Index::open(&dir, None).unwrap();
    g.bench_function("query one identity (10 000 records) via index", |b| {
        b.iter(|| assert_eq!(ix.query(&filter, None).unwrap().len() as u64, RECORDS / SAS))
    });
    g.bench_function("query one identity, newest 100, via index", |b| {
        b.iter(|| assert_eq!(ix.query(&filter, Some(100)).unwrap().len(), 100))
    });
    g.bench_function("query one identity by scanning the segments", |b| {
        b.iter(|| {
            assert_eq!(
                index::scan_query(&dir, &filter, None).unwrap().len() as u64,
                RECORDS / SAS
            )
        })
    });
    g.finish();
}

criterion_group!(audit_index, benches);
criterion_main!(audit_index);
