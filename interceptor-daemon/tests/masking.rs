//! Result masking through the interceptor: real PostgreSQL, real psql inside a
//! lab pod, the eBPF redirect; masked columns (by OID, through aliases,
//! expressions, CTEs, subqueries and views), value detectors, every strategy.
//! Privileged: run as root (CI does).

mod common;

use std::{net::SocketAddr, os::unix::fs::PermissionsExt, process::Output};

use common::*;
use interceptor_daemon::{
    masking::MaskKey,
    testbed::{Lab, Pod, Postgres},
};

const KEY: [u8; 32] = [42; 32];

const POLICY: &str = r#"policy:
  default: deny
  rules:
    - id: reads
      identities: ["shop/*"]
      targets: ["customers-db"]
      sql: { kinds: [read, transaction, utility] }
      action: allow
    - id: mask-email
      identities: ["shop/*"]
      targets: ["customers-db"]
      action: mask
      mask: { columns: ["customers.email"], strategy: hash }
    - id: mask-ssn
      identities: ["shop/*"]
      action: mask
      mask: { columns: ["*.ssn"], strategy: partial, keep_last: 4 }
    - id: mask-phone
      action: mask
      mask: { columns: ["public.customers.phone"], strategy: redact }
    - id: detect-secrets
      action: mask
      mask: { detectors: [card, aws_key, bearer], strategy: redact }
    - id: detect-tokens
      action: mask
      mask: { detectors: [jwt, private_key], strategy: null }
    - id: detect-mail
      action: mask
      mask:
        detectors: [email]
        regex: ["(?i)secret-[a-z0-9]+"]
        strategy: partial
        keep_last: 4
"#;

struct Setup {
    _lab: Lab,
    pod: Pod,
    pg: Postgres,
    pg_addr: SocketAddr,
    daemon: Daemon,
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
        r"CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn text, phone text);
         INSERT INTO customers VALUES
           (1, 'Ada', 'ada@example.com', '123-45-6789', '+1 555 0100'),
           (2, 'Grace', 'grace@example.com', '987-65-4321', NULL);
         CREATE TABLE orders (id int, customer int, note text);
         INSERT INTO orders VALUES
           (1, 1, 'card 4111 1111 1111 1111'),
           (2, 1, 'mail bob@example.org'),
           (3, 2, 'jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl'),
           (4, 2, 'key AKIAIOSFODNN7EXAMPLE'),
           (5, 2, 'Authorization: Bearer abcdefgh12345678'),
           (6, 1, E'-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----'),
           (7, 1, 'token secret-abc123'),
           (8, 1, 'plain order 1234567812345678');
         CREATE VIEW v_contacts AS SELECT id, email AS contact FROM customers;
         CREATE FUNCTION email_of(i int) RETURNS text LANGUAGE plpgsql
           AS $$ BEGIN RETURN (SELECT email FROM customers WHERE id = i); END $$;
         CREATE FUNCTION contacts() RETURNS TABLE (id int, e text) LANGUAGE sql
           AS $$ SELECT id, email FROM customers $$;
         CREATE FUNCTION email_atomic(i int) RETURNS text LANGUAGE sql
           BEGIN ATOMIC SELECT email FROM customers WHERE id = i; END;
         CREATE FUNCTION name_of(i int) RETURNS text LANGUAGE sql
           AS $$ SELECT name FROM customers WHERE id = i $$;",
    )
    .unwrap();
    let key_file = dir.join("mask.key");
    std::fs::write(&key_file, KEY).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let opts = DaemonOpts {
        destinations: vec![format!("{}:9", lab.node_v4(6))],
        extra_targets: format!(
            "  - name: customers-db\n    protocol: postgres\n    destinations: [\"{pg_addr}\"]\n{POLICY}masking:\n  key_file: {}\n",
            key_file.display()
        ),
        identity: "identity:\n  standalone:\n    - cgroups: \"pods/app\"\n      namespace: shop\n      service_account: orders-api\n".into(),
        ..Default::default()
    };
    let cfg = write_config(&lab, &dir, &opts);
    let daemon = Daemon::start(&cfg, &dir);
    Setup {
        _lab: lab,
        pod,
        pg,
        pg_addr,
        daemon,
    }
}

fn psql(s: &Setup, sql: &str) -> Output {
    let host = s.pg_addr.ip().to_string();
    let mut cmd = s.pod.command(s.pg.bin.join("psql")).unwrap();
    cmd.args([
        "-X", "-At", "-h", &host, "-U", "postgres", "-d", "postgres", "-c", sql,
    ]);
    cmd.output().unwrap()
}

fn rows(s: &Setup, sql: &str) -> String {
    let out = psql(s, sql);
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pseudonym(v: &str) -> String {
    MaskKey::from_bytes(KEY).pseudonym(v.as_bytes())
}

#[test]
fn query_results_are_masked_on_the_wire() {
    if !privileged("query_results_are_masked_on_the_wire") {
        return;
    }
    let s = setup("pgmasking");
    let ada = pseudonym("ada@example.com");
    let grace = pseudonym("grace@example.com");

    // Column strategies: hash, partial, redact; NULL stays NULL; the other
    // columns and rows are untouched.
    assert_eq!(
        rows(
            &s,
            "SELECT id, name, email, ssn, phone FROM customers ORDER BY id"
        ),
        format!("1|Ada|{ada}|****6789|[redacted]\n2|Grace|{grace}|****4321|\n")
    );
    assert_eq!(
        rows(&s, "SELECT id, name FROM customers ORDER BY id"),
        "1|Ada\n2|Grace\n"
    );

    // Aliases, wildcards, expressions, subqueries, CTEs, casts, views.
    // Plain columns keep their strategy (the server names their origin);
    // anything computed from a masked column gets the strongest column
    // strategy (redact) or, for non-text types, NULL.
    let cases = [
        ("SELECT email AS e FROM customers WHERE id = 1", ada.clone()),
        (
            "SELECT c.email FROM public.customers c WHERE id = 1",
            ada.clone(),
        ),
        (
            "SELECT c.* FROM customers c WHERE id = 1",
            format!("1|Ada|{ada}|****6789|[redacted]"),
        ),
        (
            "SELECT upper(email) FROM customers WHERE id = 1",
            "[redacted]".into(),
        ),
        (
            "SELECT email || '' FROM customers WHERE id = 1",
            "[redacted]".into(),
        ),
        (
            "SELECT row_to_json(c) FROM customers c WHERE id = 1",
            "\"[redacted]\"".into(),
        ),
        (
            "SELECT c::text FROM customers c WHERE id = 1",
            "[redacted]".into(),
        ),
        (
            "SELECT (SELECT email FROM customers ORDER BY id LIMIT 1)",
            "[redacted]".into(),
        ),
        (
            "WITH x AS (SELECT email FROM customers WHERE id = 1) SELECT * FROM x",
            ada.clone(),
        ),
        (
            "WITH x AS (SELECT upper(email) AS u FROM customers WHERE id = 1) SELECT * FROM x",
            "[redacted]".into(),
        ),
        (
            "SELECT s.e FROM (SELECT email AS e FROM customers WHERE id = 1) s",
            ada.clone(),
        ),
        (
            "SELECT email::bytea FROM customers WHERE id = 1",
            "\\x5b72656461637465645d".into(),
        ),
        (
            "SELECT encode(email::bytea, 'hex') FROM customers WHERE id = 1",
            "[redacted]".into(),
        ),
        (
            "SELECT length(email) FROM customers WHERE id = 1",
            String::new(),
        ),
        (
            "SELECT string_agg(email, ',') FROM customers",
            "[redacted]".into(),
        ),
        // A view over customers.email: all its columns are masked.
        (
            "SELECT contact FROM v_contacts WHERE id = 1",
            "[redacted]".into(),
        ),
        (
            "SELECT upper(contact) FROM v_contacts WHERE id = 1",
            "[redacted]".into(),
        ),
        // Functions whose source (or SQL-standard body) reads
        // customers.email: what they return is masked like an expression
        // (redact, the strongest column strategy, not the e-mail
        // detector's partial); one that reads only names is not.
        ("SELECT email_of(1)", "[redacted]".into()),
        ("SELECT upper(public.email_of(2))", "[redacted]".into()),
        ("SELECT e FROM contacts() WHERE id = 1", "[redacted]".into()),
        ("SELECT email_atomic(1)", "[redacted]".into()),
        ("SELECT name_of(1)", "Ada".into()),
        // Not built on masked data: untouched.
        (
            "SELECT upper(name) FROM customers WHERE id = 1",
            "ADA".into(),
        ),
        ("SELECT count(*) FROM customers", "2".into()),
    ];
    for (sql, want) in cases {
        assert_eq!(rows(&s, sql), format!("{want}\n"), "{sql}");
    }

    // Detectors on every text value, each with its rule's strategy.
    assert_eq!(
        rows(&s, "SELECT id, note FROM orders ORDER BY id"),
        "1|card [redacted]\n\
         2|mail ****.org\n\
         3|\n\
         4|key [redacted]\n\
         5|Authorization: [redacted]\n\
         6|\n\
         7|token ****c123\n\
         8|plain order 1234567812345678\n"
    );

    // Several statements in one session (the catalog is read once).
    let out = rows(
        &s,
        "SELECT email FROM customers WHERE id = 2; SELECT name FROM customers WHERE id = 2",
    );
    assert_eq!(out, format!("{grace}\nGrace\n"));

    // Unmasked results arrive exactly as PostgreSQL sends them directly,
    // including text that only looks sensitive to a column rule.
    for sql in [
        "SELECT id, customer FROM orders ORDER BY id",
        "SELECT id, name, id * 2, name || '!' FROM customers ORDER BY id",
        "SELECT relname FROM pg_class WHERE relname = 'customers'",
    ] {
        assert_eq!(rows(&s, sql), s.pg.admin_sql(sql).unwrap(), "{sql}");
    }

    // Errors after a masked read do not quote the data.
    let out = psql(&s, "SELECT email::int FROM customers WHERE id = 1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("invalid input syntax for type integer: \"[redacted]\""),
        "{err}"
    );
    // Other errors keep their text, and the session's next statement works.
    let out = psql(&s, "SELECT nosuch FROM orders");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("column \"nosuch\" does not exist"), "{err}");

    // Notifications carrying masked data are redacted.
    let host = s.pg_addr.ip().to_string();
    let out = s
        .pod
        .command(s.pg.bin.join("psql"))
        .unwrap()
        .args(["-X", "-At", "-h", &host, "-U", "postgres", "-d", "postgres"])
        .args(["-c", "LISTEN c"])
        .args([
            "-c",
            "SELECT pg_notify('c', email) FROM customers WHERE id = 1",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("with payload \"[redacted]\"") && !text.contains("ada@"),
        "{text}"
    );

    // COPY of a masked relation delivers no rows.
    let out = psql(&s, "COPY customers TO STDOUT");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("ada@"), "{text}");

    // The daemon never logs a value.
    let log = s.daemon.raw_log();
    for secret in [
        "ada@example.com",
        "4111 1111 1111 1111",
        "AKIAIOSFODNN7EXAMPLE",
        "123-45-6789",
    ] {
        assert!(!log.contains(secret), "`{secret}` reached the log");
    }
}
