//! Policy hot reload under a live session: a real psql in a lab pod keeps one
//! connection to real PostgreSQL open through the interceptor while the policy
//! file changes under it. Privileged: run as root (CI does).

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{
    orders::*,
    pgwire::{self, PgWire},
    *,
};
use interceptor_daemon::testbed::{Lab, Pod, Postgres};

struct Setup {
    lab: Lab,
    pod: Pod,
    pg: Postgres,
    pg_addr: SocketAddr,
    policy_path: std::path::PathBuf,
    daemon: Daemon,
}

fn setup(name: &str) -> Setup {
    let o = orders(name, "");
    let daemon = Daemon::start(&o.config, &o.dir);
    Setup {
        lab: o.lab,
        pod: o.pod,
        pg: o.pg,
        pg_addr: o.pg_addr,
        policy_path: o.policy_path,
        daemon,
    }
}

#[test]
fn prepared_statements_are_decided_again_at_execute_after_a_reload() {
    if !privileged("prepared_statements_are_decided_again_at_execute_after_a_reload") {
        return;
    }
    let s = setup("policyexecute");
    let version = || {
        metric(
            &http_get(admin_addr(&s.lab), "/metrics").1,
            "interceptor_policy_version",
        )
    };
    let script = s.policy_path.with_file_name("insert.sql");
    std::fs::write(&script, "INSERT INTO orders VALUES (1, 1);\n").unwrap();
    // pgbench -M prepared parses once per connection, then only binds and executes.
    let bench = s
        .pod
        .command(s.pg.bin.join("pgbench"))
        .unwrap()
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            "1",
            "-T",
            "8",
            "-h",
            &s.pg_addr.ip().to_string(),
            "-U",
            "postgres",
            "-f",
        ])
        .arg(&script)
        .arg("postgres")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let count = || {
        s.pg.admin_sql("SELECT count(*) FROM orders")
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    wait_for("inserts", || count() > 10);
    std::fs::write(&s.policy_path, READ_ONLY).unwrap();
    wait_for("policy version 2", || version() == Some(2.0));
    let out = bench.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        err.contains("statement denied by rule `freeze`"),
        "the prepared INSERT kept running after the reload:\n{stdout}\n{err}"
    );
    // Nothing was inserted after the denial: the count is stable.
    let after = count();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count(), after);
    let log = s.daemon.raw_log();
    assert!(
        log.contains("\"operation\":\"execute write on [orders]\""),
        "{log}"
    );
}

#[test]
fn every_execution_of_a_prepared_statement_is_decided_and_audited() {
    if !privileged("every_execution_of_a_prepared_statement_is_decided_and_audited") {
        return;
    }
    let name = "executeaudit";
    let audit_dir = scratch(name).join("audit");
    let o = orders(name, &format!("audit:\n  dir: {}\n", audit_dir.display()));
    let mut daemon = Daemon::start(&o.config, &o.dir);
    let version = || {
        metric(
            &http_get(admin_addr(&o.lab), "/metrics").1,
            "interceptor_policy_version",
        )
    };
    let count = || o.pg.admin_sql("SELECT count(*) FROM orders").unwrap();
    let mut pg = PgWire::connect(&o.pod, o.pg_addr, "postgres");
    let r = pg.prepare("ins", "INSERT INTO orders VALUES (7, 1)");
    assert!(r.iter().any(|m| m.tag == b'1'), "no ParseComplete: {r:?}");
    for _ in 0..3 {
        let r = pg.execute("ins");
        assert!(r.iter().any(|m| m.tag == b'C'), "not executed: {r:?}");
    }
    assert_eq!(count().trim(), "3");
    // A portal fetched a row at a time (a cursor-style read) is one
    // execution: decided and audited at its first Execute only.
    pg.query("BEGIN");
    pg.prepare("rows", "SELECT id FROM orders");
    let tags = |r: &[pgwire::Msg]| r.iter().map(|m| m.tag as char).collect::<String>();
    assert_eq!(tags(&pg.execute_portal("cur", Some("rows"), 1)), "2DsZ");
    assert_eq!(tags(&pg.execute_portal("cur", None, 1)), "DsZ");
    assert_eq!(tags(&pg.execute_portal("cur", None, 0)), "DCZ");
    pg.query("COMMIT");

    std::fs::write(&o.policy_path, READ_ONLY).unwrap();
    wait_for("policy version 2", || version() == Some(2.0));
    // Denied at the first Execute after the reload, and at every later one
    // on the same connection, which stays usable.
    for attempt in 0..2 {
        let r = pg.execute("ins");
        pgwire::assert_denied(
            &r,
            "`freeze`",
            &format!("execute {attempt} after the reload"),
        );
        assert_eq!(r.last().map(|m| m.tag), Some(b'Z'));
    }
    assert_eq!(count().trim(), "3");
    pg.prepare("n", "SELECT count(*) FROM orders");
    let r = pg.execute("n");
    assert!(
        r.iter().any(|m| m.tag == b'D'),
        "the session is unusable: {r:?}"
    );
    drop(pg);

    let (_, text) = http_get(admin_addr(&o.lab), "/metrics");
    let counted = |action: &str, rule: &str| decisions(&text, "orders-db", action, rule);
    assert_eq!(counted("allow", "orders-write"), Some(3.0), "{text}");
    assert_eq!(counted("deny", "freeze"), Some(2.0), "{text}");
    assert_eq!(daemon.stop(), Some(0));

    // One access record per execution, none for the Parse that ran nothing.
    let records = audit_access_records(&audit_dir);
    let inserts: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| {
            r["operation"]
                .as_str()
                .is_some_and(|op| op.starts_with("INSERT INTO orders"))
        })
        .map(|r| {
            (
                r["decision"].as_str().unwrap_or_default(),
                r["rule_id"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        inserts,
        [
            ("Allow", "orders-write"),
            ("Allow", "orders-write"),
            ("Allow", "orders-write"),
            ("Deny", "freeze"),
            ("Deny", "freeze"),
        ],
        "{records:#?}"
    );
    for read in ["SELECT count(*) FROM orders", "SELECT id FROM orders"] {
        let n = records.iter().filter(|r| r["operation"] == read).count();
        assert_eq!(n, 1, "{read}: {records:#?}");
    }
}

#[test]
fn policy_reload_applies_to_open_sessions_and_rejects_invalid_files() {
    if !privileged("policy_reload_applies_to_open_sessions_and_rejects_invalid_files") {
        return;
    }
    let Setup {
        lab,
        pod,
        pg,
        pg_addr,
        policy_path,
        daemon,
    } = setup("policyreload");
    let orders = || {
        pg.admin_sql("SELECT count(*) FROM orders")
            .unwrap()
            .trim()
            .to_string()
    };
    let metrics = || http_get(admin_addr(&lab), "/metrics").1;
    let version = || metric(&metrics(), "interceptor_policy_version").unwrap_or(0.0);
    assert_eq!(version(), 1.0);

    // One psql session for the whole test, fed statement by statement.
    let mut psql = pod
        .command(pg.bin.join("psql"))
        .unwrap()
        .args([
            "-X",
            "-At",
            "-h",
            &pg_addr.ip().to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = psql.stdin.take().unwrap();
    let errors = Arc::new(Mutex::new(String::new()));
    let reader = {
        let errors = errors.clone();
        let stderr = psql.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut e = errors.lock().unwrap();
                e.push_str(&line);
                e.push('\n');
            }
        })
    };
    let mut send = |sql: &str| {
        writeln!(stdin, "{sql}").unwrap();
        stdin.flush().unwrap();
    };
    let denials = || {
        errors
            .lock()
            .unwrap()
            .matches("statement denied by rule")
            .count()
    };

    send("INSERT INTO orders VALUES (1, 1);");
    wait_for("the first insert", || orders() == "1");

    // A new policy applies to the open session: the same statement is now denied.
    std::fs::write(&policy_path, READ_ONLY).unwrap();
    wait_for("policy version 2", || version() == 2.0);
    send("INSERT INTO orders VALUES (1, 1);");
    wait_for("a denial", || denials() == 1);
    assert!(
        errors
            .lock()
            .unwrap()
            .contains("denied by rule `freeze`: orders are frozen for the audit"),
        "{}",
        errors.lock().unwrap()
    );

    // An invalid policy is rejected, named with its line, and the old one keeps enforcing.
    std::fs::write(
        &policy_path,
        "default: deny\nrules:\n  - id: x\n    action: permit\n",
    )
    .unwrap();
    wait_for("the rejection", || {
        metric(
            &metrics(),
            r#"interceptor_policy_reloads_total{result="rejected"}"#,
        ) == Some(1.0)
    });
    let log = daemon.raw_log();
    assert!(
        log.contains("policy rejected") && log.contains("line 4, column"),
        "{log}"
    );
    assert_eq!(version(), 2.0);
    send("INSERT INTO orders VALUES (1, 1);");
    wait_for("a second denial", || denials() == 2);

    // Back to the first policy: the session is still the same one and writes again.
    std::fs::write(&policy_path, WRITES_ALLOWED).unwrap();
    wait_for("policy version 3", || version() == 3.0);
    send("INSERT INTO orders VALUES (2, 1);");
    wait_for("the second insert", || orders() == "2");
    drop(stdin);
    let status = psql.wait().unwrap();
    reader.join().unwrap();
    assert!(status.success(), "psql: {status}");
    assert_eq!(denials(), 2, "{}", errors.lock().unwrap());
    // All of it over one redirected connection: nothing was dropped by a reload.
    let text = metrics();
    let conns: f64 = text
        .lines()
        .filter(|l| l.starts_with("interceptor_connections_total{") && l.contains("orders-db"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(conns, 1.0, "{text}");
    drop(daemon);
    drop(lab);
}
