//! MySQL/MariaDB through the interceptor: a real MariaDB server (Debian's
//! package) on a lab node address, the real `mariadb` client inside a lab pod
//! through the eBPF redirect, statement policy on the wire.
//! Privileged: run as root (CI does).

mod common;

use std::{
    net::SocketAddr,
    process::{Command, Output, Stdio},
};

use common::{mariadb::*, *};
use interceptor_daemon::testbed::{Lab, Pod};

const POLICY: &str = r#"policy:
  default: deny
  rules:
    - id: orders-read
      identities: ["shop/*"]
      sql: { kinds: [read, transaction, utility], tables: ["customers", "orders"] }
      action: allow
    - id: orders-write
      identities: ["shop/*"]
      sql: { kinds: [write], tables: ["orders"] }
      action: allow
    - id: session-status
      sql: { kinds: [read], tables: ["information_schema.session_status"] }
      action: allow
    - id: no-customer-changes
      sql: { kinds: [write, ddl], tables: ["customers"] }
      action: deny
      description: customer records are never changed by workloads
"#;

fn client_args(addr: SocketAddr) -> Vec<String> {
    vec![
        "--no-defaults".into(),
        "-h".into(),
        addr.ip().to_string(),
        "-P".into(),
        addr.port().to_string(),
        "-u".into(),
        "root".into(),
        "-N".into(),
        "-B".into(),
    ]
}

struct Setup {
    lab: Lab,
    pod: Pod,
    db: Mariadb,
    daemon: Daemon,
    audit_dir: std::path::PathBuf,
    /// The admin socket (`interceptor approvals`).
    socket: std::path::PathBuf,
}

fn setup(test: &str) -> Setup {
    setup_with(test, POLICY)
}

fn setup_with(test: &str, policy: &str) -> Setup {
    let dir = scratch(test);
    let mut lab = Lab::new().unwrap();
    let pod = lab.add_pod("app", "pods/app").unwrap();
    let addr: SocketAddr = (lab.node_v4(5), 3306).into();
    let db = Mariadb::start(
        &dir,
        &MariadbOpts {
            binds: &[lab.node_v4(5)],
            port: addr.port(),
            grant_tables: false,
            tls: None,
        },
    );
    db.admin(
        "CREATE DATABASE shop; CREATE TABLE shop.customers (id int PRIMARY KEY, name text);
         INSERT INTO shop.customers VALUES (1, 'Ada'), (2, 'Grace');
         CREATE TABLE shop.orders (id int, customer int);",
    )
    .unwrap();
    let audit_dir = dir.join("audit");
    let opts = DaemonOpts {
        destinations: vec![format!("{}:9", lab.node_v4(6))],
        extra_targets: format!(
            "  - name: shop-db\n    protocol: mysql\n    destinations: [\"{addr}\"]\n{policy}audit:\n  dir: {}\n  checkpoint_every: 5\n",
            audit_dir.display()
        ),
        identity: "identity:\n  standalone:\n    - cgroups: \"pods/app\"\n      namespace: shop\n      service_account: orders-api\n".into(),
        ..Default::default()
    };
    let cfg = write_config(&lab, &dir, &opts);
    let socket = dir.join("run/admin.sock");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let admin = format!("admin:\n  address: {}\n", admin_addr(&lab));
    assert!(text.contains(&admin));
    let text = text.replace(&admin, &format!("{admin}  socket: {}\n", socket.display()));
    std::fs::write(&cfg, text).unwrap();
    let daemon = Daemon::start(&cfg, &dir);
    Setup {
        lab,
        pod,
        db,
        daemon,
        audit_dir,
        socket,
    }
}

/// The mariadb client inside the pod, through the redirect.
fn sql(s: &Setup, extra: &[&str], script: &str) -> Output {
    s.pod
        .command("mariadb")
        .unwrap()
        .args(client_args(s.db.addr))
        .args(extra)
        .args(["shop", "-e", script])
        .output()
        .unwrap()
}

/// A script on the client's stdin with `--force` (`-e` disables it), so the
/// session goes on after an error or a denial.
fn script(s: &Setup, statements: &[u8]) -> Output {
    let mut child = s
        .pod
        .command("mariadb")
        .unwrap()
        .args(client_args(s.db.addr))
        .args(["--force", "shop"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(statements).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn customers(s: &Setup) -> String {
    s.db.admin("SELECT count(*) FROM shop.customers")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn mysql_statements_are_decided_on_the_wire() {
    if !privileged("mysql_statements_are_decided_on_the_wire") {
        return;
    }
    let s = setup("mysql");

    let out = sql(&s, &[], "SELECT name FROM customers ORDER BY id");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Ada\nGrace\n");

    let out = sql(&s, &[], "DELETE FROM customers");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("ERROR 1142 (42000)")
            && err.contains("interceptor: statement denied by rule `no-customer-changes`: customer records are never changed by workloads (identity shop/orders-api, target shop-db)"),
        "{err}"
    );
    assert_eq!(customers(&s), "2", "the DELETE reached the server");

    // The session stays usable after a denial (a script on stdin: `-e`
    // disables --force).
    let out = script(&s, b"DELETE FROM customers;\nSELECT 40 + 2;\nINSERT INTO orders VALUES (1, 1);\nSELECT count(*) FROM orders;\n");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout, "42\n1\n", "stderr: {err}");
    assert_eq!(err.matches("ERROR 1142").count(), 1, "{err}");

    // Evasions: each is denied and changes nothing.
    for evasion in [
        "SELECT 1 /*!50000 , (SELECT count(*) FROM secrets) */",
        "DELETE FROM `customers`",
        "SELECT * FROM customers WHERE id = 1 --1",
        "SELECT 'x\\' FROM customers -- '",
        "DROP TABLE customers",
        "SELECT * FROM mysql.user",
    ] {
        let out = sql(&s, &[], evasion);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("ERROR 1142"),
            "`{evasion}` was not denied: {err}"
        );
    }
    assert_eq!(customers(&s), "2");

    // The hop is never TLS, whatever the client asks.
    let out = sql(
        &s,
        &[],
        "SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher'",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (_, text) = http_get(admin_addr(&s.lab), "/metrics");
    let denied =
        r#"interceptor_decisions_total{target="shop-db",action="deny",rule="no-customer-changes"}"#;
    assert!(metric(&text, denied).unwrap_or(0.0) >= 3.0, "{text}");

    let mut s = s;
    assert_eq!(s.daemon.stop(), Some(0));
    let shown = Command::new(DAEMON)
        .args(["audit", "show"])
        .arg(&s.audit_dir)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    let line = shown
        .lines()
        .find(|l| l.contains("\"operation\":\"query write on [customers]: DELETE FROM customers\""))
        .unwrap_or_else(|| panic!("no record of the DELETE: {shown}"));
    assert!(
        line.contains("\"decision\":\"Deny\"")
            && line.contains("no-customer-changes")
            && line.contains("\"protocol\":\"Mysql\""),
        "{line}"
    );
    // Statements are recorded without their literals (what the client
    // received is recorded apart, as responses).
    assert!(
        !shown
            .lines()
            .filter(|l| l.contains("\"Access\""))
            .any(|l| l.contains("Grace")),
        "a literal reached the audit log"
    );

    // The recorded text is what `policy learn` and `policy simulate` re-read,
    // with the MySQL grammar.
    let (learned, learned_file) = policy_learn(&s.audit_dir);
    assert!(
        learned.contains("- shop/orders-api")
            && learned.contains("- shop-db")
            && learned.contains("- orders"),
        "{learned}"
    );
    let v = policy_simulate(&learned_file, &s.audit_dir);
    assert_eq!(
        (v["newly_denied"].as_u64(), v["newly_allowed"].as_u64()),
        (Some(0), Some(0)),
        "{v}\n{learned}"
    );
    // Without the orders-write rule, the recorded INSERT would be denied.
    let candidate = candidate_without(POLICY, ORDERS_WRITE, &s.audit_dir);
    let v = policy_simulate(&candidate, &s.audit_dir);
    assert_eq!(v["newly_denied"].as_u64(), Some(1), "{v}");
    assert_eq!(
        v["changes"][0]["operation"], "query write on [orders]: INSERT INTO orders VALUES (?, ?)",
        "{v}"
    );
}

/// A MariaDB session is recorded with what the client received: the masked
/// value (never the stored one, anywhere in the audit directory), server
/// errors, the proxy's own denial, OK packets with their affected rows; and
/// `sessions replay` shows statements and responses in order.
#[test]
fn mysql_sessions_replay_with_their_masked_responses() {
    if !privileged("mysql_sessions_replay_with_their_masked_responses") {
        return;
    }
    let policy = format!(
        "{POLICY}    - id: mask-email\n      targets: [\"shop-db\"]\n      action: mask\n      mask: {{ columns: [\"customers.email\"], strategy: redact }}\n    - id: contacts-view\n      sql: {{ kinds: [read], tables: [\"v_contacts\"] }}\n      action: allow\n"
    );
    let mut s = setup_with("mysql-recording", &policy);
    s.db.admin(
        "ALTER TABLE shop.customers ADD email text;
         UPDATE shop.customers SET email = concat(lower(name), '@example.com');
         CREATE VIEW shop.v_contacts AS SELECT email AS contact FROM shop.customers;",
    )
    .unwrap();

    // One session: a masked read, the same column through a view, a server
    // error, a denial, a write, a count.
    let out = script(
        &s,
        b"SELECT id, email FROM customers ORDER BY id;\n\
                  SELECT contact FROM v_contacts ORDER BY contact;\n\
                  SELECT nosuchcol FROM customers;\n\
                  DELETE FROM customers WHERE id = 2;\n\
                  INSERT INTO orders VALUES (1, 1), (2, 1);\n\
                  SELECT count(*) FROM orders;\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stdout, "1\t[redacted]\n2\t[redacted]\n[redacted]\n[redacted]\n2\n",
        "stderr: {err}"
    );
    assert!(
        err.contains("ERROR 1054 (42S22)") && err.contains("ERROR 1142 (42000)"),
        "{err}"
    );
    // Another session, binary protocol (what connectors use): its rows are
    // masked and recorded masked too.
    let mut w = common::mywire::MyWire::connect(&s.pod, s.db.addr, "shop");
    let stmt = w
        .prepare("SELECT id, email FROM customers ORDER BY id")
        .unwrap();
    let rows = w.execute(stmt).concat();
    let has = |b: &[u8], needle: &str| b.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(
        has(&rows, "[redacted]") && !has(&rows, "@example.com"),
        "{}",
        String::from_utf8_lossy(&rows)
    );
    drop(w);
    assert_eq!(s.daemon.stop(), Some(0));

    let a = s.audit_dir.to_str().unwrap();
    let (ok, list, err) = cli(&[
        "sessions",
        "list",
        a,
        "--json",
        "--identity",
        "shop/orders-api",
    ]);
    assert!(ok, "{err}");
    let sessions: Vec<serde_json::Value> = list
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(sessions.len(), 2, "{list}");
    let replays: Vec<String> = sessions
        .iter()
        .map(|v| {
            let (ok, replay, err) =
                cli(&["sessions", "replay", a, v["session_id"].as_str().unwrap()]);
            assert!(ok, "{err}");
            replay
        })
        .collect();
    let (binary, replay) = match replays[0].contains("execute read on [customers]") {
        true => (&replays[0], &replays[1]),
        false => (&replays[1], &replays[0]),
    };
    for want in [
        "execute read on [customers]",
        "| 1 | [redacted] |",
        "| 2 | [redacted] |",
    ] {
        assert!(binary.contains(want), "`{want}` not in:\n{binary}");
    }
    // In this order (the client may send statements of its own in between).
    let expect = [
        "query read on [customers]",
        "result  2 rows in set  [2 rows]",
        "| id | email |",
        "| 1 | [redacted] |",
        "| 2 | [redacted] |",
        "query read on [v_contacts]",
        "| contact |",
        "| [redacted] |",
        "| [redacted] |",
        "query read on [customers]",
        "result  ERROR 1054/42S22 Unknown column 'nosuchcol'",
        "deny    query write on [customers]: DELETE FROM customers WHERE id = ?",
        "result  ERROR 1142/42000 interceptor: statement denied by rule `no-customer-changes`",
        "query write on [orders]: INSERT INTO orders VALUES (?, ?), (?, ?)",
        "result  OK, 2 rows affected",
        "query read on [orders]",
        "result  1 rows in set  [1 rows]",
        "| count(*) |",
        "| 2 |",
    ];
    let lines: Vec<&str> = replay.lines().collect();
    let mut at = 0;
    for want in expect {
        match lines[at..].iter().position(|l| l.contains(want)) {
            Some(i) => at += i + 1,
            None => panic!("`{want}` expected after line {at} of:\n{replay}"),
        }
    }
    assert!(!replay.contains("note: no responses"), "{replay}");
    // The proxy's own view query is neither forwarded nor recorded.
    for r in [binary, replay] {
        assert!(
            !r.contains("VIEW_DEFINITION") && !r.contains("TABLE_SCHEMA"),
            "{r}"
        );
    }

    // The stored values appear nowhere: not in the segments, not in the index.
    let bytes = all_bytes(&s.audit_dir);
    let has = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(has("[redacted]"), "the masked rows are recorded");
    for raw in ["ada@example.com", "grace@example.com"] {
        assert!(!has(raw), "`{raw}` reached the audit directory");
    }
    let (ok, verified, err) = cli(&["audit", "verify", a]);
    assert!(ok, "{verified}{err}");
    assert!(verified.contains("recorded responses"), "{verified}");
}

/// The binary protocol (what connectors use for parameterised queries):
/// each `COM_STMT_EXECUTE` is one decision and one audit record, an allowed
/// prepare none; after a policy reload, a statement prepared under the old
/// policy is decided again at its next execute (denied here, the session
/// still usable); an id the proxy never saw prepared is refused.
#[test]
fn mysql_every_execution_of_a_prepared_statement_is_decided_and_audited() {
    use common::{
        mywire::{MyWire, error},
        orders::{READ_ONLY, WRITES_ALLOWED, wait_for},
    };
    if !privileged("mysql_every_execution_of_a_prepared_statement_is_decided_and_audited") {
        return;
    }
    let policy_path = scratch("mysqlexec-policy").join("policy.yaml");
    std::fs::write(&policy_path, WRITES_ALLOWED).unwrap();
    let mut s = setup_with(
        "mysqlexec",
        &format!("policy_file: {}\n", policy_path.display()),
    );
    let orders = |s: &Setup| {
        s.db.admin("SELECT count(*) FROM shop.orders")
            .unwrap()
            .trim()
            .to_string()
    };
    let mut w = MyWire::connect(&s.pod, s.db.addr, "shop");
    let ins = w.prepare("INSERT INTO orders VALUES (7, 1)").unwrap();
    for _ in 0..3 {
        let r = w.execute(ins);
        assert_eq!(r.first().and_then(|p| p.first()), Some(&0), "{r:?}");
    }
    assert_eq!(orders(&s), "3");
    let sel = w.prepare("SELECT id FROM orders").unwrap();
    let r = w.execute(sel);
    assert_eq!(r.first(), Some(&vec![1]), "not a result set: {r:?}");

    let e = w.prepare("DELETE FROM customers").unwrap_err();
    assert!(e.contains("statement denied by rule `default`"), "{e}");
    let e = error(&w.execute(999)).expect("an unknown statement id was executed");
    assert!(
        e.contains("statement 999 was not prepared through the interceptor"),
        "{e}"
    );

    std::fs::write(&policy_path, READ_ONLY).unwrap();
    wait_for("policy version 2", || {
        metric(
            &http_get(admin_addr(&s.lab), "/metrics").1,
            "interceptor_policy_version",
        ) == Some(2.0)
    });
    for attempt in 0..2 {
        let e = error(&w.execute(ins))
            .unwrap_or_else(|| panic!("execute {attempt} after the reload ran"));
        assert!(
            e.contains("denied by rule `freeze`: orders are frozen for the audit"),
            "{e}"
        );
    }
    assert_eq!(orders(&s), "3");
    let r = w.execute(sel);
    assert_eq!(r.first(), Some(&vec![1]), "the session is unusable: {r:?}");
    w.close(sel);
    let e = error(&w.execute(sel)).expect("a closed statement was executed");
    assert!(
        e.contains("was not prepared through the interceptor"),
        "{e}"
    );
    drop(w);

    let (_, text) = http_get(admin_addr(&s.lab), "/metrics");
    let counted = |action: &str, rule: &str| decisions(&text, "shop-db", action, rule);
    assert_eq!(counted("allow", "orders-write"), Some(3.0), "{text}");
    assert_eq!(counted("deny", "freeze"), Some(2.0), "{text}");
    assert_eq!(s.daemon.stop(), Some(0));

    let records = audit_access_records(&s.audit_dir);
    let on_orders = |prefix: &str| -> Vec<(String, String)> {
        records
            .iter()
            .filter(|r| {
                r["operation"]
                    .as_str()
                    .is_some_and(|o| o.starts_with(prefix))
            })
            .map(|r| {
                (
                    r["decision"].as_str().unwrap_or_default().to_string(),
                    r["rule_id"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let pair = |d: &str, r: &str| (d.to_string(), r.to_string());
    assert_eq!(
        on_orders("execute write on [orders]"),
        [
            pair("Allow", "orders-write"),
            pair("Allow", "orders-write"),
            pair("Allow", "orders-write"),
            pair("Deny", "freeze"),
            pair("Deny", "freeze"),
        ]
    );
    assert_eq!(on_orders("execute read on [orders]").len(), 2);
    assert_eq!(
        on_orders("prepare "),
        [pair("Deny", "default")],
        "an allowed prepare runs nothing and leaves no record"
    );
}

/// `interceptor approvals ARGS` over the daemon's admin socket.
fn approvals(s: &Setup, args: &[&str]) -> Output {
    Command::new(DAEMON)
        .arg("approvals")
        .args(args)
        .arg("--socket")
        .arg(&s.socket)
        .output()
        .unwrap()
}

/// Waits until exactly one approval request is pending; returns its id.
fn pending_request(s: &Setup) -> String {
    let start = std::time::Instant::now();
    loop {
        let out = approvals(s, &["list", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let l: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        if let [r] = l.as_slice() {
            assert_eq!(r["rule"], "order-changes", "{r}");
            assert_eq!(r["identity"], "shop/orders-api", "{r}");
            return r["id"].as_str().unwrap().to_string();
        }
        assert!(l.is_empty(), "{l:?}");
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "no pending request:\n{}",
            s.daemon.raw_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `require_approval` holds MySQL statements as it holds PostgreSQL ones:
/// the client waits, an operator approves or denies with the CLI; an
/// approval at prepare covers the first execute, the next one asks again.
#[test]
fn mysql_statements_wait_for_a_human() {
    use common::mywire::{MyWire, error};
    if !privileged("mysql_statements_wait_for_a_human") {
        return;
    }
    let approvals_dir = scratch("mysqlhold-approvals");
    let policy = format!(
        r#"policy:
  default: deny
  rules:
    - id: orders-rw
      identities: ["shop/*"]
      sql: {{ kinds: [read, write], tables: ["orders"] }}
      action: allow
    - id: order-changes
      identities: ["shop/*"]
      sql: {{ kinds: [write], tables: ["orders"] }}
      action: require_approval
      description: changing orders needs a human
approvals:
  dir: {}
  timeout_secs: 20
"#,
        approvals_dir.display()
    );
    let mut s = setup_with("mysqlhold", &policy);
    let orders = |s: &Setup| {
        s.db.admin("SELECT count(*) FROM shop.orders")
            .unwrap()
            .trim()
            .to_string()
    };
    let spawn = |s: &Setup, sql: &str| {
        s.pod
            .command("mariadb")
            .unwrap()
            .args(client_args(s.db.addr))
            .args(["shop", "-e", sql])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    // Approved: the held INSERT runs.
    let client = spawn(&s, "INSERT INTO orders VALUES (1, 1)");
    let id = pending_request(&s);
    assert_eq!(orders(&s), "0", "the held statement reached the server");
    let listed = approvals(&s, &["list"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("INSERT INTO orders VALUES (?, ?)") && !listed.contains("(1, 1)"),
        "the approver does not see the statement's shape, or sees its values: {listed}"
    );
    let out = approvals(&s, &["approve", &id, "--as", "alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = client.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(orders(&s), "1");

    // Denied: the native error with the rule and the reason.
    let client = spawn(&s, "INSERT INTO orders VALUES (2, 2)");
    let id = pending_request(&s);
    let out = approvals(&s, &["deny", &id, "--reason", "not during the freeze"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = client.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("ERROR 1142 (42000)")
            && err.contains("denied by rule `order-changes`")
            && err.contains("not during the freeze"),
        "{err}"
    );
    assert_eq!(orders(&s), "1");

    // Binary protocol: the prepare is held; its approval covers one execute.
    let mut w = MyWire::connect(&s.pod, s.db.addr, "shop");
    let mut prepare = vec![0x16];
    prepare.extend_from_slice(b"INSERT INTO orders VALUES (3, 3)");
    assert!(w.command(&prepare).is_empty(), "the prepare was not held");
    let id = pending_request(&s);
    assert!(approvals(&s, &["approve", &id]).status.success());
    let ok = w.next_reply();
    assert_eq!(ok.first().and_then(|p| p.first()), Some(&0), "{ok:?}");
    let stmt = u32::from_le_bytes([ok[0][1], ok[0][2], ok[0][3], ok[0][4]]);
    let r = w.execute(stmt);
    assert_eq!(r.first().and_then(|p| p.first()), Some(&0), "{r:?}");
    assert_eq!(orders(&s), "2");
    let mut execute = vec![0x17];
    execute.extend_from_slice(&stmt.to_le_bytes());
    execute.extend_from_slice(&[0, 1, 0, 0, 0]);
    assert!(
        w.command(&execute).is_empty(),
        "the second execute was not held"
    );
    let id = pending_request(&s);
    assert!(
        approvals(&s, &["deny", &id, "--reason", "once is enough"])
            .status
            .success()
    );
    let e = error(&w.next_reply()).expect("the denied execute ran");
    assert!(e.contains("once is enough"), "{e}");
    assert_eq!(orders(&s), "2");
    drop(w);
    assert_eq!(s.daemon.stop(), Some(0));

    // The audit log tells each step: requests, approvals, the denials.
    let records = audit_access_records(&s.audit_dir);
    let steps: Vec<(String, String)> = records
        .iter()
        .filter(|r| r["rule_id"] == "order-changes")
        .map(|r| {
            (
                r["operation"].as_str().unwrap_or_default().to_string(),
                r["decision"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let step = |o: &str, d: &str| (o.to_string(), d.to_string());
    // Every record carries the command's literal-free text (the approver
    // sees it too).
    let query = "query write on [orders]: INSERT INTO orders VALUES (?, ?)".to_string();
    let execute = "execute write on [orders]: INSERT INTO orders VALUES (?, ?)".to_string();
    assert_eq!(
        steps,
        [
            step(&query, "RequireApproval"),
            step(&query, "Approved"),
            step(&query, "RequireApproval"),
            step(&query, "Deny"),
            step(
                "prepare write on [orders]: INSERT INTO orders VALUES (?, ?)",
                "RequireApproval"
            ),
            // The approval obtained at prepare, consumed by the first execute.
            step(&execute, "Approved"),
            step(&execute, "RequireApproval"),
            step(&execute, "Deny"),
        ]
    );
    assert!(
        records
            .iter()
            .filter(|r| r["decision"] == "Approved")
            .all(|r| r["approval_ref"].is_string()),
        "{records:?}"
    );
}
