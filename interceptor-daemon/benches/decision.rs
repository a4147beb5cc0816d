//! What deciding one statement costs the PostgreSQL proxy: the decision-cache
//! hit path (`sql::fingerprint_into` and a `HashMap` lookup, as pgproxy's `Decider`
//! does for a statement it has seen with other constants) against the miss path
//! (`Classifier::classify` then `Policy::decide_statements`), under a policy of
//! 20 rules; the policy's share of a miss alone; and the classification alone
//! against `Classifier::classify_text`, which also rewrites the statement
//! literal-free for the audit log (what a miss pays).
//! Figures and machine: bench/MICRO.md.

use std::{collections::HashMap, hint::black_box, sync::Arc};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use interceptor_daemon::{
    policy::{Action, Context, Decision, Policy},
    sql::{self, Classifier},
};

/// 20 rules of the kinds a cluster policy has: per-service grants with
/// identities, targets, kinds and tables, team-wide globs, denies on
/// functions and sensitive tables, an approval rule and a time-bounded grant.
const POLICY: &str = r#"
default: deny
rules:
  - id: bench-pgbench
    identities: ["bench/pgbench"]
    targets: ["bench-db"]
    sql: { kinds: [read, write, transaction, utility], tables: ["pgbench_*"] }
    action: allow
  - id: orders-read
    identities: ["shop/orders-api"]
    targets: ["customers-db"]
    sql: { kinds: [read, transaction, utility], tables: ["customers", "orders", "order_items"] }
    action: allow
  - id: orders-write
    identities: ["shop/orders-api"]
    targets: ["customers-db"]
    sql: { kinds: [write, transaction], tables: ["orders", "order_items"] }
    action: allow
  - id: shop-read-catalog
    identities: ["shop/*"]
    sql: { kinds: [read], tables: ["products", "categories", "prices"] }
    action: allow
  - id: billing-read
    identities: ["billing/invoicer", "billing/reconciler"]
    targets: ["customers-db", "billing-db"]
    sql: { kinds: [read], tables: ["customers", "orders", "invoices", "payments"] }
    action: allow
  - id: billing-write
    identities: ["billing/invoicer"]
    targets: ["billing-db"]
    sql: { kinds: [write, transaction], tables: ["invoices", "invoice_lines"] }
    action: allow
  - id: analytics-read
    identities: ["analytics/*"]
    targets: ["*-replica"]
    sql: { kinds: [read, utility], tables: ["public.*", "reporting.*"] }
    action: allow
  - id: support-read
    identities: ["support/console"]
    targets: ["customers-db"]
    sql: { kinds: [read], tables: ["customers", "tickets"] }
    action: allow
  - id: search-indexer
    identities: ["search/indexer"]
    sql: { kinds: [read], tables: ["products", "product_texts"] }
    action: allow
  - id: auth-sessions
    identities: ["auth/gateway"]
    targets: ["auth-db"]
    sql: { kinds: [read, write, transaction], tables: ["sessions", "tokens"] }
    action: allow
  - id: no-customer-changes
    sql: { kinds: [write, ddl], tables: ["customers", "public.customers"] }
    action: deny
  - id: no-server-files
    sql: { functions: ["pg_read_file", "pg_read_binary_file", "lo_export", "lo_import", "dblink*"] }
    action: deny
  - id: no-role-games
    sql: { kinds: [role_switch, dcl] }
    action: deny
  - id: no-procedural
    identities: ["shop/*", "billing/*", "analytics/*"]
    sql: { kinds: [procedural] }
    action: deny
  - id: no-audit-tampering
    sql: { kinds: [write, ddl], tables: ["audit.*", "audit_log"] }
    action: deny
  - id: ddl-needs-approval
    sql: { kinds: [ddl] }
    action: require_approval
  - id: payments-write-approval
    identities: ["billing/*"]
    sql: { kinds: [write], tables: ["payments"] }
    action: require_approval
  - id: migration-window
    identities: ["shop/migrate"]
    targets: ["customers-db"]
    sql: { kinds: [ddl, write, read, transaction] }
    action: allow
    valid_from: 2026-12-01T22:00:00Z
    valid_until: 2026-12-02T02:00:00Z
  - id: ops-utility
    identities: ["ops/*"]
    sql: { kinds: [utility, read] }
    action: allow
  - id: health-checks
    identities: ["*/healthcheck"]
    sql: { kinds: [read], tables: [] }
    action: allow
"#;

/// A ~4 KB multi-row INSERT, the shape of a batch writer.
fn big_insert() -> String {
    let mut s = String::from("INSERT INTO orders (id, customer_id, total, status, note) VALUES ");
    let mut i = 0;
    while s.len() < 4000 {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&format!(
            "({}, {}, {}.{:02}, 'placed', 'order {} placed through the web shop')",
            1_000_000 + i,
            17 + i * 7,
            10 + i,
            i % 100,
            i
        ));
        i += 1;
    }
    s
}

struct Case {
    name: &'static str,
    identity: &'static str,
    target: &'static str,
    sql: String,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "pgbench_select",
            identity: "bench/pgbench",
            target: "bench-db",
            sql: "SELECT abalance FROM pgbench_accounts WHERE aid = 48823;".into(),
        },
        Case {
            name: "cte_join",
            identity: "shop/orders-api",
            target: "customers-db",
            sql: "WITH recent AS (SELECT o.customer_id, sum(i.quantity * i.price) AS spent \
                  FROM orders o JOIN order_items i ON i.order_id = o.id \
                  WHERE o.created_at > now() - interval '30 days' GROUP BY o.customer_id) \
                  SELECT c.id, c.email, r.spent FROM customers c JOIN recent r \
                  ON r.customer_id = c.id WHERE r.spent > 100 ORDER BY r.spent DESC LIMIT 50"
                .into(),
        },
        Case {
            // pgbench's TPC-B-like transaction sent as one simple-query text.
            name: "multi_statement",
            identity: "bench/pgbench",
            target: "bench-db",
            sql: "BEGIN; \
                  UPDATE pgbench_accounts SET abalance = abalance + -4211 WHERE aid = 48823; \
                  SELECT abalance FROM pgbench_accounts WHERE aid = 48823; \
                  UPDATE pgbench_tellers SET tbalance = tbalance + -4211 WHERE tid = 7; \
                  UPDATE pgbench_branches SET bbalance = bbalance + -4211 WHERE bid = 1; \
                  INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
                  VALUES (7, 1, 48823, -4211, CURRENT_TIMESTAMP); \
                  END;"
                .into(),
        },
        Case {
            name: "insert_4kb",
            identity: "shop/orders-api",
            target: "customers-db",
            sql: big_insert(),
        },
    ]
}

/// The miss path: what `Decider` does before it caches a decision.
fn decide(classifier: &Classifier, policy: &Policy, ctx: &Context<'_>, sql: &str) -> Decision {
    let c = classifier.classify(sql);
    policy.decide_statements(ctx, &c.statements)
}

fn decision(c: &mut Criterion) {
    let policy = Policy::parse(POLICY).expect("bench policy parses");
    assert_eq!(policy.rules.len(), 20);
    let classifier = Classifier::default();
    let cases = cases();

    // A warm cache as a busy session has it: these statements and a few
    // hundred others, keyed like `Decider` keys them.
    let mut cache: HashMap<String, Arc<(Decision, String)>> = HashMap::new();
    for i in 0..300 {
        let other = format!(
            "SELECT name, price FROM products WHERE category_id = 3 AND id > {i} ORDER BY c{i}"
        );
        let key = sql::fingerprint(&other).unwrap_or(other);
        cache.insert(
            key,
            Arc::new((
                Decision {
                    action: Action::Allow,
                    rule: "shop-read-catalog".into(),
                    reason: String::new(),
                },
                String::new(),
            )),
        );
    }
    for case in &cases {
        let ctx = Context {
            identity: Some(case.identity),
            target: case.target,
        };
        let d = decide(&classifier, &policy, &ctx, &case.sql);
        // The bench measures the path a workload takes when it is allowed.
        assert_eq!(d.action, Action::Allow, "{}: {d:?}", case.name);
        let key = sql::fingerprint(&case.sql).unwrap_or_else(|| case.sql.clone());
        cache.insert(key, Arc::new((d, sql::normalize(&case.sql))));
    }

    let mut g = c.benchmark_group("decision");
    // `Decider` builds each fingerprint in one buffer it keeps.
    let mut key = String::new();
    for case in &cases {
        let ctx = Context {
            identity: Some(case.identity),
            target: case.target,
        };
        g.throughput(Throughput::Bytes(case.sql.len() as u64));
        g.bench_function(format!("hit/{}", case.name), |b| {
            b.iter(|| {
                let sql = black_box(case.sql.as_str());
                let k: &str = if sql::fingerprint_into(sql, &mut key) {
                    &key
                } else {
                    sql
                };
                cache.get(k).cloned().expect("cached")
            })
        });
        g.bench_function(format!("miss/{}", case.name), |b| {
            b.iter(|| decide(&classifier, &policy, &ctx, black_box(&case.sql)))
        });
        // The policy's share of a miss: deciding an already classified text.
        let classified = classifier.classify(&case.sql);
        g.bench_function(format!("policy/{}", case.name), |b| {
            b.iter(|| policy.decide_statements(&ctx, black_box(&classified.statements)))
        });
        // What a miss parses: the classification alone, and with the
        // audit log's literal-free text from the same parse (what `Decider`
        // does), against classify + normalize (two parses).
        g.bench_function(format!("classify/{}", case.name), |b| {
            b.iter(|| classifier.classify(black_box(&case.sql)))
        });
        g.bench_function(format!("classify_text/{}", case.name), |b| {
            b.iter(|| classifier.classify_text(black_box(&case.sql)))
        });
    }
    g.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
