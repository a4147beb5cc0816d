//! PostgreSQL through the interceptor: real PostgreSQL, real psql and pgbench
//! inside a lab pod, the eBPF redirect, statement policy on the wire.
//! Privileged: run as root (CI does).

mod common;

use std::{net::SocketAddr, process::Output};

use common::*;
use interceptor_daemon::testbed::{Lab, Pod, Postgres};

const POLICY: &str = r#"policy:
  default: deny
  rules:
    - id: orders-read
      identities: ["shop/*"]
      targets: ["customers-db"]
      sql: { kinds: [read, transaction, utility], tables: ["customers", "orders"] }
      action: allow
    - id: orders-write
      identities: ["shop/*"]
      sql: { kinds: [write], tables: ["orders"] }
      action: allow
    - id: no-customer-changes
      sql: { kinds: [write, ddl], tables: ["customers"] }
      action: deny
      description: customer records are never changed by workloads
"#;

struct Setup {
    _lab: Lab,
    pod: Pod,
    pg: Postgres,
    pg_addr: SocketAddr,
    daemon: Daemon,
    audit_dir: std::path::PathBuf,
}

fn setup(test: &str) -> Setup {
    let dir = scratch(test);
    let mut lab = Lab::new().unwrap();
    let pod = lab.add_pod("app", "pods/app").unwrap();
    let pg_addr: SocketAddr = (lab.node_v4(2), 5432).into();
    let pg_dir = dir.join("pg");
    std::fs::create_dir_all(&pg_dir).unwrap();
    let pg = Postgres::start(pg_addr, &pg_dir).unwrap();
    pg.admin_sql(
        "CREATE TABLE customers (id int PRIMARY KEY, name text, email text);
         INSERT INTO customers VALUES (1, 'Ada', 'ada@example.com'), (2, 'Grace', 'grace@example.com');
         CREATE TABLE orders (id int, customer int);",
    )
    .unwrap();
    let opts = DaemonOpts {
        destinations: vec![],
        extra_targets: format!(
            "  - name: customers-db\n    protocol: postgres\n    destinations: [\"{pg_addr}\"]\n{POLICY}"
        ),
        identity: "identity:\n  standalone:\n    - cgroups: \"pods/app\"\n      namespace: shop\n      service_account: orders-api\n".into(),
        // Two runtime threads: on this machine every other test runs the
        // default, one thread (tokio's single-threaded scheduler); nodes with
        // more than four CPUs get the multi-threaded one, tested here.
        threads: Some(2),
        ..Default::default()
    };
    // The default `svc` target needs a destination: one nobody uses.
    let opts = DaemonOpts {
        destinations: vec![format!("{}:9", lab.node_v4(6))],
        ..opts
    };
    let audit_dir = dir.join("audit");
    let opts = DaemonOpts {
        extra_targets: format!(
            "{}audit:\n  dir: {}\n  checkpoint_every: 5\n",
            opts.extra_targets,
            audit_dir.display()
        ),
        ..opts
    };
    let cfg = write_config(&lab, &dir, &opts);
    let daemon = Daemon::start(&cfg, &dir);
    let ready = daemon
        .lines()
        .into_iter()
        .find(|l| l["message"] == "interceptor ready")
        .expect("a ready line");
    assert_eq!(ready["threads"], 2, "{ready}");
    Setup {
        _lab: lab,
        pod,
        pg,
        pg_addr,
        daemon,
        audit_dir,
    }
}

/// psql inside the pod, through the redirect, with `args` after the connection options.
fn psql_args(s: &Setup, args: &[&std::ffi::OsStr]) -> Output {
    let host = s.pg_addr.ip().to_string();
    let mut cmd = s.pod.command(s.pg.bin.join("psql")).unwrap();
    cmd.args([
        "-X",
        "-At",
        "-v",
        "VERBOSITY=verbose",
        "-h",
        &host,
        "-U",
        "postgres",
        "-d",
        "postgres",
    ])
    .args(args);
    cmd.output().unwrap()
}

fn psql(s: &Setup, script: &str) -> Output {
    psql_args(s, &["-c".as_ref(), script.as_ref()])
}

/// Runs a multi-statement script in one session.
fn psql_file(s: &Setup, script: &str) -> Output {
    let path =
        std::env::temp_dir().join(format!("icpt-{}-{}.sql", std::process::id(), script.len()));
    std::fs::write(&path, script).unwrap();
    let out = psql_args(s, &["-f".as_ref(), path.as_os_str()]);
    let _ = std::fs::remove_file(path);
    out
}

fn customers(s: &Setup) -> String {
    s.pg.admin_sql("SELECT count(*) FROM customers")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn statements_are_decided_before_they_reach_the_server() {
    if !privileged("statements_are_decided_before_they_reach_the_server") {
        return;
    }
    let s = setup("pgpolicy");

    let out = psql(&s, "SELECT name FROM customers ORDER BY id");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Ada\nGrace\n");

    let out = psql(&s, "DELETE FROM customers");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("ERROR:  42501: interceptor: statement denied by rule `no-customer-changes`"),
        "{err}"
    );
    assert!(
        err.contains("identity shop/orders-api, target customers-db"),
        "{err}"
    );
    assert_eq!(customers(&s), "2", "the DELETE reached the server");

    // The session stays usable after a denial, inside and outside a transaction.
    let out = psql_file(
        &s,
        "DELETE FROM customers;\nSELECT 40 + 2;\nBEGIN;\nUPDATE customers SET name = 'x';\nSELECT count(*) FROM customers;\nCOMMIT;\nINSERT INTO orders VALUES (1, 1);\nSELECT count(*) FROM orders;\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("42\n"), "{stdout}\n{err}");
    assert!(
        stdout.contains("BEGIN\n2\nCOMMIT\nINSERT 0 1\n1\n"),
        "{stdout}\n{err}"
    );
    assert_eq!(err.matches("42501").count(), 2, "{err}");
    assert_eq!(
        s.pg.admin_sql("SELECT count(*) FROM customers WHERE name = 'x'")
            .unwrap()
            .trim(),
        "0"
    );

    // Maintenance sqlparser cannot parse, read from PostgreSQL's own tree and
    // decided like any statement: utility on orders, allowed.
    let out = psql(&s, "VACUUM (ANALYZE) orders");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // DDL naming customers without changing it (a foreign key to it) is
    // matched by customers' rules, and so is DDL on every table of
    // customers' schema at once, which names no table.
    for sql in [
        "ALTER TABLE orders ADD FOREIGN KEY (customer) REFERENCES customers (id)",
        "DROP SCHEMA public CASCADE",
    ] {
        let out = psql(&s, sql);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("42501: interceptor: statement denied by rule `no-customer-changes`"),
            "{sql}: {err}"
        );
    }

    // Evasions: each is denied and changes nothing.
    for sql in [
        "/* hi */ DeLeTe FROM \"customers\"",
        "WITH gone AS (DELETE FROM customers RETURNING 1) SELECT count(*) FROM gone",
        "SELECT 1; DELETE FROM customers",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT pg_catalog.pg_read_file('/etc/hostname')",
        "COPY customers TO PROGRAM 'id'",
        "DO $$ BEGIN DELETE FROM customers; END $$",
        "SET ROLE postgres",
        "PREPARE p AS DELETE FROM customers",
        "DROP TABLE customers",
        "TRUNCATE customers",
        "SELECT $$;$$; DELETE FROM customers",
        "SELECT * FROM secrets_we_did_not_allow",
        "SELEKT 1",
    ] {
        let out = psql(&s, sql);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("42501"),
            "`{sql}` was not denied: {err}"
        );
    }
    assert_eq!(customers(&s), "2");

    // Decisions are visible to SREs.
    let (_, text) = http_get(admin_addr(&s._lab), "/metrics");
    let denied = r#"interceptor_decisions_total{target="customers-db",action="deny",rule="no-customer-changes"}"#;
    assert!(metric(&text, denied).unwrap_or(0.0) >= 3.0, "{text}");
    // The daemon's log describes statements without their literals.
    let log = s.daemon.raw_log();
    assert!(log.contains("statement decision"), "{log}");
    assert!(!log.contains("/etc/passwd"), "a literal reached the log");

    // The signed audit log: every decision, verifiable offline.
    let mut s = s;
    assert_eq!(s.daemon.stop(), Some(0));
    let verify = || {
        std::process::Command::new(DAEMON)
            .args(["audit", "verify"])
            .arg(&s.audit_dir)
            .output()
            .unwrap()
    };
    let out = verify();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK: "));
    let shown = std::process::Command::new(DAEMON)
        .args(["audit", "show"])
        .arg(&s.audit_dir)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    let denials = shown
        .lines()
        .filter(|l| l.contains("\"decision\":\"Deny\"") && l.contains("no-customer-changes"))
        .count();
    assert!(denials >= 3, "{shown}");
    assert!(
        shown.contains("\"service_account\":\"orders-api\"")
            && shown.contains("\"namespace\":\"shop\""),
        "{shown}"
    );
    assert!(
        !shown.contains("/etc/passwd"),
        "a literal reached the audit log"
    );
    // Statements are recorded literal-free, in a form that replays.
    assert!(
        shown.contains("\"operation\":\"SELECT name FROM customers ORDER BY id\""),
        "{shown}"
    );
    assert!(
        shown.contains("\"operation\":\"SELECT pg_read_file($1)\""),
        "{shown}"
    );
    assert!(
        shown.contains("\"operation\":\"VACUUM (ANALYZE) orders\""),
        "{shown}"
    );
    // learn: a policy that allows exactly what ran, and replays with no change.
    let (learned, learned_file) = policy_learn(&s.audit_dir);
    assert!(
        learned.contains("- shop/orders-api") && learned.contains("- orders"),
        "{learned}"
    );
    let v = policy_simulate(&learned_file, &s.audit_dir);
    assert_eq!(
        (v["newly_denied"].as_u64(), v["newly_allowed"].as_u64()),
        (Some(0), Some(0)),
        "{v}\n{learned}"
    );
    assert!(v["statements"].as_u64().unwrap() >= 20, "{v}");
    // simulate: without the orders-write rule, the recorded INSERT would be denied.
    let candidate = candidate_without(POLICY, ORDERS_WRITE, &s.audit_dir);
    let v = policy_simulate(&candidate, &s.audit_dir);
    assert_eq!(v["newly_denied"].as_u64(), Some(1), "{v}");
    assert_eq!(
        v["changes"][0]["operation"], "INSERT INTO orders VALUES ($1, $2)",
        "{v}"
    );
    assert_eq!(v["changes"][0]["was_rule"], "orders-write", "{v}");

    // One flipped byte is detected and located.
    let seg = std::fs::read_dir(&s.audit_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".audit"))
        .unwrap();
    let mut data = std::fs::read(&seg).unwrap();
    let pos = data.len() / 2;
    data[pos] ^= 0x20;
    std::fs::write(&seg, &data).unwrap();
    let out = verify();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.starts_with("FAILED: seg-") && text.contains("at byte"),
        "{text}"
    );
}

#[test]
fn extended_protocol_is_enforced_at_parse() {
    if !privileged("extended_protocol_is_enforced_at_parse") {
        return;
    }
    let s = setup("pgextended");
    let pgbench = s.pg.bin.join("pgbench");
    let dir = std::env::temp_dir().join(format!("icpt-pgbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |script: &str, mode: &str| {
        let f = dir.join(format!("{mode}-{}.sql", script.len()));
        std::fs::write(&f, script).unwrap();
        s.pod
            .command(&pgbench)
            .unwrap()
            .args([
                "-n",
                "-t",
                "5",
                "-M",
                mode,
                "-h",
                &s.pg_addr.ip().to_string(),
                "-U",
                "postgres",
                "-f",
            ])
            .arg(&f)
            .arg("postgres")
            .output()
            .unwrap()
    };
    for mode in ["extended", "prepared"] {
        let ok = run("SELECT count(*) FROM customers;\n", mode);
        assert!(
            ok.status.success(),
            "{mode}: {}{}",
            String::from_utf8_lossy(&ok.stdout),
            String::from_utf8_lossy(&ok.stderr)
        );
        assert!(
            String::from_utf8_lossy(&ok.stdout)
                .contains("number of transactions actually processed: 5/5")
        );
        let denied = run("DELETE FROM customers;\n", mode);
        let err = String::from_utf8_lossy(&denied.stderr);
        assert!(!denied.status.success(), "{mode}: a denied statement ran");
        assert!(
            err.contains("statement denied by rule `no-customer-changes`"),
            "{mode}: {err}"
        );
    }
    assert_eq!(customers(&s), "2");
    // Every execution is counted, including the cached repeats of one
    // statement: 5 with the unnamed statement, 5 of one prepared statement.
    let (_, text) = http_get(admin_addr(&s._lab), "/metrics");
    let allowed =
        r#"interceptor_decisions_total{target="customers-db",action="allow",rule="orders-read"}"#;
    assert!(metric(&text, allowed).unwrap_or(0.0) >= 10.0, "{text}");
    let _ = std::fs::remove_dir_all(dir);
}
