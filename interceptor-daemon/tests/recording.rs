//! Session recording through the daemon: a real PostgreSQL session from a lab
//! pod, with a masked column; its replay shows every statement and what the
//! client received (the masked value, never the stored one), and no byte of the
//! log or its index holds the stored value. Privileged: run as root (CI does).

mod common;

use std::{net::SocketAddr, path::PathBuf};

use common::*;
use interceptor_daemon::testbed::{Lab, Pod, Postgres};

const POLICY: &str = r#"policy:
  default: deny
  rules:
    - id: reads
      identities: ["shop/*"]
      targets: ["customers-db"]
      sql: { kinds: [read, transaction, utility] }
      action: allow
    - id: mask-email
      targets: ["customers-db"]
      action: mask
      mask: { columns: ["customers.email"], strategy: redact }
"#;

/// A lab pod, a PostgreSQL on the node with a `customers` table (`rows`
/// inserted), and daemon options for it with the audit log in `<dir>/audit`
/// (`audit` adds lines to its section).
struct Setup {
    dir: PathBuf,
    lab: Lab,
    pod: Pod,
    pg: Postgres,
    pg_addr: SocketAddr,
    audit_dir: PathBuf,
    opts: DaemonOpts,
}

fn setup(test: &str, rows: &str, audit: &str) -> Setup {
    let dir = scratch(test);
    let mut lab = Lab::new().unwrap();
    let pod = lab.add_pod("app", "pods/app").unwrap();
    let pg_addr: SocketAddr = (lab.node_v4(2), 5432).into();
    let pg_dir = dir.join("pg");
    std::fs::create_dir_all(&pg_dir).unwrap();
    let pg = Postgres::start(pg_addr, &pg_dir).unwrap();
    pg.admin_sql(&format!(
        "CREATE TABLE customers (id int PRIMARY KEY, name text, email text);{rows}"
    ))
    .unwrap();
    let audit_dir = dir.join("audit");
    let opts = DaemonOpts {
        destinations: vec![format!("{}:9", lab.node_v4(6))],
        extra_targets: format!(
            "  - name: customers-db\n    protocol: postgres\n    destinations: [\"{pg_addr}\"]\n{POLICY}audit:\n  dir: {}\n{audit}",
            audit_dir.display()
        ),
        identity: "identity:\n  standalone:\n    - cgroups: \"pods/app\"\n      namespace: shop\n      service_account: orders-api\n".into(),
        ..Default::default()
    };
    Setup {
        dir,
        lab,
        pod,
        pg,
        pg_addr,
        audit_dir,
        opts,
    }
}

#[test]
fn postgres_sessions_replay_with_their_masked_responses() {
    if !privileged("postgres_sessions_replay_with_their_masked_responses") {
        return;
    }
    let Setup {
        dir,
        lab,
        pod,
        pg,
        pg_addr,
        audit_dir,
        opts,
    } = setup(
        "recording",
        "INSERT INTO customers VALUES (1, 'Ada', 'ada@example.com'), (2, 'Grace', 'grace@example.com');",
        "  checkpoint_every: 5\n  record_rows: 20\n",
    );
    let cfg = write_config(&lab, &dir, &opts);
    let mut daemon = Daemon::start(&cfg, &dir);

    // One psql session: a masked read, a server error, a denial, a count.
    let host = pg_addr.ip().to_string();
    let out = pod
        .command(pg.bin.join("psql"))
        .unwrap()
        .args(["-X", "-At", "-h", &host, "-U", "postgres", "-d", "postgres"])
        .args(["-c", "SELECT id, email FROM customers ORDER BY id"])
        .args(["-c", "SELECT * FROM no_such_table"])
        .args(["-c", "DELETE FROM customers WHERE id = 2"])
        .args(["-c", "SELECT count(*) FROM customers"])
        .output()
        .unwrap();
    let got = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        got,
        "1|[redacted]\n2|[redacted]\n2\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(daemon.stop(), Some(0));

    let a = audit_dir.to_str().unwrap();
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
    assert_eq!(sessions.len(), 1, "{list}");
    let id = sessions[0]["session_id"].as_str().unwrap();

    let (ok, replay, err) = cli(&["sessions", "replay", a, id]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = replay.lines().collect();
    // Statements and responses alternate, in order, with relative times.
    let expect = [
        "allow   SELECT id, email FROM customers ORDER BY id",
        "result  SELECT 2  [2 rows]",
        "| id | email |",
        "| 1 | [redacted] |",
        "| 2 | [redacted] |",
        "allow   SELECT * FROM no_such_table",
        "result  ERROR 42P01 relation \"no_such_table\" does not exist",
        "deny    DELETE FROM customers WHERE id = $1",
        "result  ERROR 42501 interceptor: statement denied by rule `default`",
        "allow   SELECT count(*) FROM customers",
        "result  SELECT 1  [1 rows]",
        "| count |",
        "| 2 |",
        "allow   connection to",
    ];
    assert_eq!(lines.len(), expect.len() + 1, "{replay}");
    for (line, want) in lines[1..].iter().zip(expect) {
        assert!(
            line.contains(want),
            "`{want}` expected in `{line}`:\n{replay}"
        );
        if !line.trim_start().starts_with('|') {
            assert!(line.starts_with('+'), "{line}");
        }
    }

    // The stored values appear nowhere: not in the segments, not in the index.
    let bytes = all_bytes(&audit_dir);
    assert!(
        contains_bytes(&bytes, "[redacted]"),
        "the masked rows are recorded"
    );
    for raw in ["ada@example.com", "grace@example.com"] {
        assert!(
            !contains_bytes(&bytes, raw),
            "`{raw}` reached the audit directory"
        );
    }

    // Responses are part of the signed chain.
    let (ok, pubkey, err) = cli(&["audit", "pubkey", "--dir", a]);
    assert!(ok, "{err}");
    let key = dir.join("node.pub");
    std::fs::write(&key, pubkey).unwrap();
    let (ok, verified, err) = cli(&["audit", "verify", a, "--pubkey", key.to_str().unwrap()]);
    assert!(ok, "{verified}{err}");
    assert!(verified.contains("4 recorded responses"), "{verified}");

    // `audit tail` shows what the client received, masked as it was sent.
    let (ok, tailed, err) = cli(&["audit", "tail", a, "-n", "100"]);
    assert!(ok, "{err}");
    for want in [
        format!("session {id} conn "),
        "result  SELECT 2  [2 rows]".to_string(),
        "| id | email |".to_string(),
        "| 2 | [redacted] |".to_string(),
        "result  ERROR 42501 interceptor: statement denied by rule `default`".to_string(),
    ] {
        assert!(tailed.contains(&want), "`{want}` expected in:\n{tailed}");
    }
    let (ok, tailed_json, err) = cli(&["audit", "tail", a, "-n", "100", "--json"]);
    assert!(ok, "{err}");
    let responses: Vec<serde_json::Value> = tailed_json
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "response")
        .collect();
    assert_eq!(responses.len(), 4, "{tailed_json}");
    assert_eq!(
        responses[0]["summary"]["Sql"][0]["rows"][0],
        serde_json::json!(["1", "[redacted]"])
    );
    assert_eq!(responses[1]["summary"]["Sql"][0]["error"]["code"], "42P01");

    // `audit query --responses`: each statement with its answer.
    let (ok, queried, err) = cli(&[
        "audit",
        "query",
        a,
        "--session",
        id,
        "--responses",
        "--json",
    ]);
    assert!(ok, "{err}");
    let first: serde_json::Value = serde_json::from_str(queried.lines().next().unwrap()).unwrap();
    assert_eq!(
        first["operation"],
        "SELECT id, email FROM customers ORDER BY id"
    );
    assert_eq!(
        first["responses"][0]["summary"]["Sql"][0]["rows"][1],
        serde_json::json!(["2", "[redacted]"])
    );
    assert!(!queried.contains("example.com"), "{queried}");

    // An evidence package of the session carries its responses too.
    let pkg = dir.join("session.tar");
    let (ok, out, err) = cli(&[
        "audit",
        "export",
        a,
        "--since",
        "1h",
        "--session",
        id,
        "--out",
        pkg.to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("with 4 recorded responses to them"), "{out}");
    let (ok, out, err) = cli(&[
        "audit",
        "verify",
        pkg.to_str().unwrap(),
        "--pubkey",
        key.to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("4 recorded responses to them present and verified"),
        "{out}"
    );
    let package = std::fs::read(&pkg).unwrap();
    assert!(contains_bytes(&package, "[redacted]"));
    for raw in ["ada@example.com", "grace@example.com"] {
        assert!(!tailed.contains(raw) && !tailed_json.contains(raw));
        assert!(
            !contains_bytes(&package, raw),
            "`{raw}` reached the package"
        );
    }
}

#[test]
fn the_daemon_applies_retention_and_the_log_still_verifies() {
    if !privileged("the_daemon_applies_retention_and_the_log_still_verifies") {
        return;
    }
    let Setup {
        dir,
        lab,
        pod,
        pg,
        pg_addr,
        audit_dir,
        opts,
    } = setup(
        "retention",
        "",
        "  segment_max_bytes: 4096\n  retention: { max_bytes: 16KiB }\n",
    );
    let cfg = write_config(&lab, &dir, &opts);
    let mut daemon = Daemon::start(&cfg, &dir);
    let script = dir.join("many.sql");
    let sql: String = (0..300)
        .map(|i| format!("SELECT {i} AS n, count(*) FROM customers;\n"))
        .collect();
    std::fs::write(&script, sql).unwrap();
    let host = pg_addr.ip().to_string();
    let out = pod
        .command(pg.bin.join("psql"))
        .unwrap()
        .args([
            "-X", "-At", "-h", &host, "-U", "postgres", "-d", "postgres", "-f",
        ])
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first_segment = || {
        std::fs::read_dir(&audit_dir)
            .unwrap()
            .flatten()
            .filter_map(|e| {
                interceptor_daemon::audit::format::parse_segment_name(
                    &e.file_name().to_string_lossy(),
                )
            })
            .min()
            .unwrap()
    };
    // The limits are checked every 10 s.
    let started = std::time::Instant::now();
    while first_segment() == 0 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "no segment was removed"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert_eq!(daemon.stop(), Some(0));

    let a = audit_dir.to_str().unwrap();
    let (ok, pubkey, err) = cli(&["audit", "pubkey", "--dir", a]);
    assert!(ok, "{err}");
    let key = dir.join("node.pub");
    std::fs::write(&key, pubkey).unwrap();
    let k = key.to_str().unwrap();
    let (ok, verified, err) = cli(&["audit", "verify", a, "--pubkey", k]);
    assert!(ok, "{verified}{err}");
    assert!(
        verified.contains(&format!(
            "segments before {} were removed by signed retention records (expected, not a gap)",
            first_segment()
        )),
        "{verified}"
    );
    let (_, shown, _) = cli(&["audit", "show", a]);
    assert!(shown.contains("\"Retention\""), "{shown}");
    assert!(shown.contains("retention limit reached (size)"), "{shown}");

    // What remains is still protected: one flipped byte is found.
    let victim = audit_dir.join(interceptor_daemon::audit::format::segment_name(
        first_segment(),
    ));
    let mut bytes = std::fs::read(&victim).unwrap();
    let at = bytes.len() - 40;
    bytes[at] ^= 0x20;
    std::fs::write(&victim, bytes).unwrap();
    let (ok, out, _) = cli(&["audit", "verify", a, "--pubkey", k]);
    assert!(!ok && out.starts_with("FAILED: seg-"), "{out}");
}

#[test]
fn audit_prune_removes_old_segments_offline_with_a_signed_record() {
    use interceptor_daemon::audit::{
        AccessRecord, AuditConfig, AuditLog, Decision, Identity, Protocol,
        record::{ResponseRecord, ResponseSummary, SqlResult},
    };
    let dir = scratch("prune");
    let log_dir = dir.join("audit");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = AuditConfig::new(&log_dir, "node-1");
        c.segment_max_bytes = 8 * 1024;
        let (log, _) = AuditLog::open(c).await.unwrap();
        for i in 0..400u64 {
            let session_id = format!("node-1-{}", i / 50);
            log.append(&AccessRecord {
                time_ns: 1_750_000_000_000_000_000 + i,
                node: "node-1".into(),
                identity: Identity::default(),
                target: "db".into(),
                protocol: Protocol::Postgres,
                operation: "SELECT 1".into(),
                decision: Decision::Allow,
                rule_id: None,
                approval_ref: None,
                outcome: None,
                duration_ns: 0,
                session_id: session_id.clone(),
                connection_id: i / 50,
            })
            .await
            .unwrap();
            log.append_response(ResponseRecord {
                time_ns: 1_750_000_000_000_000_000 + i,
                session_id,
                connection_id: i / 50,
                duration_ns: 0,
                summary: ResponseSummary::Sql(vec![SqlResult {
                    tag: Some("SELECT 1".into()),
                    ..SqlResult::default()
                }]),
            })
            .await
            .unwrap();
        }
        log.close().await.unwrap();
    });
    drop(rt);
    let a = log_dir.to_str().unwrap();
    let (ok, _, err) = cli(&["audit", "prune", "--dir", a]);
    assert!(
        !ok && err.contains("give --max-age and/or --max-bytes"),
        "{err}"
    );
    let (ok, out, err) = cli(&["audit", "prune", "--dir", a, "--max-age", "1h"]);
    assert!(ok && out.starts_with("nothing to remove"), "{out}{err}");
    let (ok, out, err) = cli(&["audit", "prune", "--dir", a, "--max-bytes", "24KiB"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("removed ") && out.contains("recorded as a signed retention record"),
        "{out}"
    );
    assert!(!log_dir.join("seg-00000000000000000000.audit").exists());
    let (ok, verified, err) = cli(&["audit", "verify", a]);
    assert!(ok, "{verified}{err}");
    assert!(
        verified.contains("were removed by signed retention records"),
        "{verified}"
    );
    assert!(verified.contains("1 retention events"), "{verified}");
    // Replay still reads what remains, responses included.
    let (ok, replay, err) = cli(&["sessions", "replay", a, "node-1-7"]);
    assert!(ok, "{err}");
    assert!(replay.contains("result  SELECT 1"), "{replay}");
}

/// `interceptor audit rotate-key` against the running daemon (admin socket):
/// statements before and after the rotation, the new key printed and in
/// force, who asked in the daemon's log, and the log and an evidence package
/// across the rotation verifying with the old key and with the new one.
#[test]
fn audit_key_rotation_through_the_running_daemon() {
    if !privileged("audit_key_rotation_through_the_running_daemon") {
        return;
    }
    let Setup {
        dir,
        lab,
        pod,
        pg,
        pg_addr,
        audit_dir,
        opts,
    } = setup(
        "rotate-key",
        "INSERT INTO customers VALUES (1, 'Ada', 'ada@example.com');",
        "  checkpoint_every: 5\n",
    );
    let socket = dir.join("run/admin.sock");
    let cfg = write_config(&lab, &dir, &opts);
    let admin = format!("admin:\n  address: {}\n", admin_addr(&lab));
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains(&admin));
    let text = text.replace(&admin, &format!("{admin}  socket: {}\n", socket.display()));
    std::fs::write(&cfg, text).unwrap();
    let mut daemon = Daemon::start(&cfg, &dir);
    let host = pg_addr.ip().to_string();
    let psql = |sql: &str| {
        let out = pod
            .command(pg.bin.join("psql"))
            .unwrap()
            .args(["-X", "-At", "-h", &host, "-U", "postgres", "-d", "postgres"])
            .args(["-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(psql("SELECT name FROM customers"), "Ada\n");

    let a = audit_dir.to_str().unwrap();
    let s = socket.to_str().unwrap();
    let (ok, old, err) = cli(&["audit", "pubkey", "--dir", a]);
    assert!(ok, "{err}");
    let (ok, new, err) = cli(&["audit", "rotate-key", "--socket", s, "--as", "alice"]);
    assert!(ok, "{err}");
    assert!(
        err.contains("the running daemon rotated its audit key"),
        "{err}"
    );
    assert!(
        new.starts_with("ed25519:") && new.ends_with('\n') && new != old,
        "{new}"
    );
    // The new key is the node key from now on, and who asked is logged.
    let (ok, current, err) = cli(&["audit", "pubkey", "--dir", a]);
    assert!(ok, "{err}");
    assert_eq!(current, new);
    let logged = daemon
        .lines()
        .into_iter()
        .find(|l| l["message"] == "admin socket: audit key rotated")
        .unwrap_or_else(|| panic!("{}", daemon.raw_log()));
    assert_eq!(logged["actor"], "alice (uid 0 root)");
    assert_eq!(logged["public_key"], new.trim());

    // Traffic goes on, signed by the new key.
    assert_eq!(psql("SELECT count(*) FROM customers"), "1\n");
    assert_eq!(daemon.stop(), Some(0));

    let old_key = dir.join("old.pub");
    let new_key = dir.join("new.pub");
    std::fs::write(&old_key, &old).unwrap();
    std::fs::write(&new_key, &new).unwrap();
    let chain = format!("signed by {} -> {}", old.trim(), new.trim());
    for k in [&old_key, &new_key] {
        let (ok, out, err) = cli(&["audit", "verify", a, "--pubkey", k.to_str().unwrap()]);
        assert!(ok, "{out}{err}");
        assert!(
            out.contains("1 key rotations") && out.contains(&chain),
            "{out}"
        );
    }
    let pkg = dir.join("evidence.tar");
    let (ok, out, err) = cli(&[
        "audit",
        "export",
        a,
        "--since",
        "1h",
        "--identity",
        "shop/orders-api",
        "--out",
        pkg.to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    for k in [&old_key, &new_key] {
        let (ok, out, err) = cli(&[
            "audit",
            "verify",
            pkg.to_str().unwrap(),
            "--pubkey",
            k.to_str().unwrap(),
        ]);
        assert!(ok, "{out}{err}");
        assert!(out.contains(&chain), "{out}");
    }
}
