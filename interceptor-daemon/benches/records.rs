//! What the data path pays to turn one statement into audit records: an
//! access record and a PostgreSQL response record (one column, one row, as
//! pgbench `-S` gets), each built as a struct and serialised (how the daemon
//! did it before `audit::encode`) against the encoders it uses now. Both
//! produce the same bytes, which the bench checks before timing.
//! Figures and machine: bench/MICRO.md.

use std::{collections::BTreeMap, hint::black_box};

use criterion::{Criterion, criterion_group, criterion_main};
use interceptor_daemon::audit::{
    AccessRecord, Decision, Identity, Protocol, Record, Verification,
    encode::{AccessBase, AccessEntry, SqlResponse},
    record::{self, ResponseRecord, ResponseSummary, SqlResult},
};

fn base() -> AccessRecord {
    // The claims a TokenReview returns for a projected service-account token.
    let claims: BTreeMap<String, String> = [
        ("aud", "https://kubernetes.default.svc"),
        ("iss", "https://kubernetes.default.svc.cluster.local"),
        ("sub", "system:serviceaccount:bench:pgbench"),
        ("kubernetes.io/pod/name", "pgbench-7d9f8c6b5-x2x9q"),
        (
            "kubernetes.io/pod/uid",
            "0f6c1a6e-58b4-4c2e-9d1c-3c8f5f9b2a71",
        ),
        ("exp", "1767225600"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    AccessRecord {
        time_ns: 0,
        node: "node-a".into(),
        identity: Identity {
            namespace: "bench".into(),
            service_account: "pgbench".into(),
            pod: "0f6c1a6e-58b4-4c2e-9d1c-3c8f5f9b2a71".into(),
            verification: Verification::Other("cgroup".into()),
            claims,
        },
        target: "bench-db".into(),
        protocol: Protocol::Postgres,
        operation: String::new(),
        decision: Decision::Allow,
        rule_id: None,
        approval_ref: None,
        outcome: None,
        duration_ns: 0,
        session_id: "node-a-1234".into(),
        connection_id: 1234,
    }
}

const OPERATION: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
const TIME: u64 = 1_764_633_600_000_000_000;

fn access_struct(base: &AccessRecord, rule: &str) -> Vec<u8> {
    let rec = AccessRecord {
        time_ns: TIME,
        operation: OPERATION.to_string(),
        decision: Decision::Allow,
        rule_id: Some(rule.to_string()),
        ..base.clone()
    };
    record::encode(&Record::Access(rec)).unwrap()
}

fn access_base(base: &AccessBase, rule: &str) -> Vec<u8> {
    base.encode(&AccessEntry {
        time_ns: TIME,
        operation: OPERATION,
        decision: &Decision::Allow,
        rule_id: Some(rule),
        approval_ref: None,
        outcome: None,
        duration_ns: 0,
    })
    .unwrap()
}

fn response_struct(value: &[u8]) -> Vec<u8> {
    let r = SqlResult {
        columns: vec!["abalance".to_string()],
        rows: vec![vec![Some(String::from_utf8_lossy(value).into_owned())]],
        row_count: 1,
        tag: Some("SELECT 1".to_string()),
        error: None,
        truncated: false,
    };
    record::encode(&Record::Response(ResponseRecord {
        time_ns: TIME,
        session_id: "node-a-1234".to_string(),
        connection_id: 1234,
        duration_ns: 90_000,
        summary: ResponseSummary::Sql(vec![r]),
    }))
    .unwrap()
}

fn response_streamed(r: &mut SqlResponse, value: &[u8]) -> Vec<u8> {
    r.column("abalance");
    r.row(1);
    r.value(std::str::from_utf8(value).ok());
    r.end_result(Some("SELECT 1"), None);
    r.finish(TIME, "node-a-1234", 1234, 90_000).unwrap()
}

fn bench(c: &mut Criterion) {
    let plain = base();
    let encoded = AccessBase::new(base());
    let rule = "bench-pgbench";
    assert_eq!(access_struct(&plain, rule), access_base(&encoded, rule));
    let mut streamed = SqlResponse::default();
    let value = b"-2817";
    assert_eq!(
        response_struct(value),
        response_streamed(&mut streamed, value)
    );

    let mut g = c.benchmark_group("records");
    g.bench_function("access/struct", |b| {
        b.iter(|| access_struct(black_box(&plain), black_box(rule)))
    });
    g.bench_function("access/base", |b| {
        b.iter(|| access_base(black_box(&encoded), black_box(rule)))
    });
    g.bench_function("response/struct", |b| {
        b.iter(|| response_struct(black_box(value)))
    });
    g.bench_function("response/streamed", |b| {
        b.iter(|| response_streamed(&mut streamed, black_box(value)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
