//! Just-in-time approvals end to end: real PostgreSQL, real psql in a lab pod
//! through the eBPF redirect, the daemon holding statements a
//! `require_approval` rule matches, operators deciding with the
//! `interceptor approvals` CLI over the admin socket, a webhook listener.
//! Privileged: run as root (CI does).

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{pgwire::PgWire, *};
use interceptor_daemon::testbed::{Lab, Pod, Postgres};
use serde_json::Value;

const POLICY: &str = r#"policy:
  default: deny
  rules:
    - id: orders-rw
      identities: ["shop/*"]
      sql: { kinds: [read, write, transaction, utility], tables: ["orders"] }
      action: allow
    - id: order-changes
      identities: ["shop/*"]
      targets: ["orders-db"]
      sql: { kinds: [write], tables: ["orders"] }
      action: require_approval
      description: changing orders needs a human
"#;

/// A webhook receiver on loopback: every POST body, as JSON.
fn webhook() -> (SocketAddr, mpsc::Receiver<Value>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut len = 0usize;
            let mut first = String::new();
            r.read_line(&mut first).unwrap();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                    break;
                }
                if let Some((k, v)) = h.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
            assert!(first.starts_with("POST /hook "), "{first}");
            if tx.send(serde_json::from_slice(&body).unwrap()).is_err() {
                break;
            }
        }
    });
    (addr, rx)
}

struct Setup {
    lab: Lab,
    pod: Pod,
    pg: Postgres,
    pg_addr: SocketAddr,
    daemon: Daemon,
    config: PathBuf,
    dir: PathBuf,
    socket: PathBuf,
    audit_dir: PathBuf,
    hooks: mpsc::Receiver<Value>,
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
        "CREATE TABLE orders (id int PRIMARY KEY, total int);
         INSERT INTO orders SELECT g, g * 10 FROM generate_series(1, 9) g;",
    )
    .unwrap();
    let (hook_addr, hooks) = webhook();
    let socket = dir.join("run/admin.sock");
    let audit_dir = dir.join("audit");
    let opts = DaemonOpts {
        // The default `svc` target needs a destination: one nobody uses.
        destinations: vec![format!("{}:9", lab.node_v4(6))],
        extra_targets: format!(
            "  - name: orders-db\n    protocol: postgres\n    destinations: [\"{pg_addr}\"]\n{POLICY}\
             approvals:\n  dir: {}\n  timeout_secs: 4\n  webhook: \"http://{hook_addr}/hook\"\n\
             audit:\n  dir: {}\n  checkpoint_every: 5\n",
            dir.join("approvals").display(),
            audit_dir.display()
        ),
        identity: "identity:\n  standalone:\n    - cgroups: \"pods/app\"\n      namespace: shop\n      service_account: orders-api\n".into(),
        ..Default::default()
    };
    let config = write_config(&lab, &dir, &opts);
    // The admin section is written by the harness; the socket goes with it.
    let text = std::fs::read_to_string(&config).unwrap();
    let admin = format!("admin:\n  address: {}\n", admin_addr(&lab));
    assert!(text.contains(&admin));
    let text = text.replace(&admin, &format!("{admin}  socket: {}\n", socket.display()));
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&config, &dir);
    Setup {
        lab,
        pod,
        pg,
        pg_addr,
        daemon,
        config,
        dir,
        socket,
        audit_dir,
        hooks,
    }
}

/// psql inside the pod through the redirect, in the background.
fn spawn_psql(s: &Setup, sql: &str) -> Child {
    let host = s.pg_addr.ip().to_string();
    s.pod
        .command(s.pg.bin.join("psql"))
        .unwrap()
        .args([
            "-X",
            "-v",
            "VERBOSITY=verbose",
            "-h",
            &host,
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            sql,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(c: Child) -> (bool, String, String) {
    let out = c.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cli_as(prefix: &[&str], socket: &Path, args: &[&str]) -> Output {
    let mut cmd = match prefix.split_first() {
        Some((p, rest)) => {
            let mut c = Command::new(p);
            c.args(rest).arg(DAEMON);
            c
        }
        None => Command::new(DAEMON),
    };
    cmd.arg("approvals")
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .unwrap()
}

fn cli(s: &Setup, args: &[&str]) -> Output {
    cli_as(&[], &s.socket, args)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn list(s: &Setup, all: bool) -> Vec<Value> {
    let args: &[&str] = if all {
        &["list", "--json", "--all"]
    } else {
        &["list", "--json"]
    };
    let out = cli(s, args);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits until exactly one request is pending and returns it.
fn pending_one(s: &Setup) -> Value {
    let start = Instant::now();
    loop {
        let l = list(s, false);
        if l.len() == 1 {
            return l[0].clone();
        }
        assert!(l.is_empty(), "{l:?}");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no pending request:\n{}",
            s.daemon.raw_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn orders(s: &Setup, id: u32) -> String {
    s.pg.admin_sql(&format!("SELECT count(*) FROM orders WHERE id = {id}"))
        .unwrap()
        .trim()
        .to_string()
}

fn next_hook(s: &Setup, event: &str) -> Value {
    loop {
        let v = s
            .hooks
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("no `{event}` webhook"));
        if v["event"] == event {
            return v;
        }
    }
}

#[test]
fn statements_wait_for_a_human() {
    if !privileged("statements_wait_for_a_human") {
        return;
    }
    let mut s = setup("approvals");

    // Reads are not held.
    let (ok, out, err) = finish(spawn_psql(&s, "SELECT total FROM orders WHERE id = 1"));
    assert!(ok && out.contains("10"), "{out}{err}");
    assert!(list(&s, true).is_empty());

    // 1. Approved: the held DELETE runs.
    let psql = spawn_psql(&s, "DELETE FROM orders WHERE id = 1");
    let r = pending_one(&s);
    let id = r["id"].as_str().unwrap().to_string();
    assert_eq!(r["state"], "pending");
    assert_eq!(r["identity"], "shop/orders-api");
    assert_eq!(r["target"], "orders-db");
    assert_eq!(r["rule"], "order-changes");
    assert_eq!(r["rule_reason"], "changing orders needs a human");
    // The approver reads the statement with its literals masked.
    assert_eq!(r["operation"], "DELETE FROM orders WHERE id = $1");
    assert!(
        !r.to_string().contains("id = 1"),
        "a literal in the request: {r}"
    );
    assert_eq!(orders(&s, 1), "1", "the held statement reached the server");
    let hook = next_hook(&s, "approval_requested");
    let hook_text = hook["text"].as_str().unwrap();
    assert!(
        hook_text.contains(&id) && hook_text.contains("DELETE FROM orders WHERE id = $1"),
        "{hook}"
    );
    assert_eq!(hook["request"]["id"], id.as_str());
    let human = cli(&s, &["list"]);
    assert!(
        text(&human).contains(&id) && text(&human).contains("pending"),
        "{}",
        text(&human)
    );

    let out = cli(&s, &["approve", &id, "--as", "alice"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("approved {id} by alice (uid 0 root)")),
        "{}",
        text(&out)
    );
    let (ok, out, err) = finish(psql);
    assert!(ok, "{out}{err}");
    assert_eq!(out.trim(), "DELETE 1");
    assert_eq!(orders(&s, 1), "0");
    let decided = next_hook(&s, "approval_decided");
    assert_eq!(decided["request"]["state"], "approved");

    // Decided once only; unknown ids are named.
    let again = cli(&s, &["deny", &id, "--reason", "late"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again).contains(&format!(
            "approval request {id} is already approved (alice (uid 0 root))"
        )),
        "{}",
        text(&again)
    );
    let unknown = cli(&s, &["approve", "nosuchid"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        text(&unknown).contains("no approval request `nosuchid`"),
        "{}",
        text(&unknown)
    );

    // 2. Denied: psql gets the native error with the rule, the id and the reason.
    let psql = spawn_psql(&s, "DELETE FROM orders WHERE id = 2");
    let id2 = pending_one(&s)["id"].as_str().unwrap().to_string();
    let out = cli(&s, &["deny", &id2, "--reason", "not during the freeze"]);
    assert!(out.status.success(), "{}", text(&out));
    let (ok, _, err) = finish(psql);
    assert!(!ok);
    assert!(
        err.contains("ERROR:  42501: interceptor: statement denied by rule `order-changes`")
            && err.contains(&format!(
                "approval request {id2} denied by root (uid 0): not during the freeze"
            )),
        "{err}"
    );
    assert_eq!(orders(&s, 2), "1");

    // 3. Nobody decides: refused after the timeout.
    let started = Instant::now();
    let psql = spawn_psql(&s, "DELETE FROM orders WHERE id = 3");
    let id3 = pending_one(&s)["id"].as_str().unwrap().to_string();
    let (ok, _, err) = finish(psql);
    assert!(!ok);
    assert!(started.elapsed() >= Duration::from_secs(4));
    assert!(
        err.contains("42501")
            && err.contains(&format!(
                "approval request {id3} timed out: no decision within 4s"
            )),
        "{err}"
    );
    assert_eq!(orders(&s, 3), "1");
    let late = cli(&s, &["approve", &id3]);
    assert!(text(&late).contains("already timed_out"), "{}", text(&late));

    // 4. A grant: the same statement runs without asking until it expires.
    let stmt = "UPDATE orders SET total = total + 1 WHERE id = 4";
    let psql = spawn_psql(&s, stmt);
    let id4 = pending_one(&s)["id"].as_str().unwrap().to_string();
    let out = cli(
        &s,
        &["approve", &id4, "--for", "6s", "--scope", "statement"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let granted_at = Instant::now();
    let (ok, out, err) = finish(psql);
    assert!(ok && out.trim() == "UPDATE 1", "{out}{err}");
    let (ok, out, err) = finish(spawn_psql(&s, stmt));
    assert!(
        granted_at.elapsed() < Duration::from_secs(6),
        "too slow to test the grant"
    );
    assert!(ok && out.trim() == "UPDATE 1", "{out}{err}");
    assert!(
        list(&s, false).is_empty(),
        "the granted statement asked again"
    );
    // Another statement is not covered by a statement grant.
    let psql = spawn_psql(&s, "UPDATE orders SET total = 0 WHERE id = 4");
    let other = pending_one(&s)["id"].as_str().unwrap().to_string();
    assert!(
        cli(&s, &["deny", &other, "--reason", "no"])
            .status
            .success()
    );
    finish(psql);
    // After expiry the same statement is held again.
    std::thread::sleep(Duration::from_secs(6).saturating_sub(granted_at.elapsed()));
    let psql = spawn_psql(&s, stmt);
    let id5 = pending_one(&s)["id"].as_str().unwrap().to_string();
    assert_ne!(id5, id4);
    assert!(cli(&s, &["approve", &id5]).status.success());
    let (ok, out, err) = finish(psql);
    assert!(ok && out.trim() == "UPDATE 1", "{out}{err}");
    assert_eq!(
        s.pg.admin_sql("SELECT total FROM orders WHERE id = 4")
            .unwrap()
            .trim(),
        "43"
    );
    let all = list(&s, true);
    let state_of = |id: &str| {
        all.iter()
            .find(|r| r["id"] == id)
            .map(|r| r["state"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(state_of(&id), "approved");
    assert_eq!(state_of(&id2), "denied");
    assert_eq!(state_of(&id3), "timed_out");
    assert_eq!(state_of(&id4), "expired");

    // 5. Only root: a non-root caller is refused with a clear message.
    let out = cli_as(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        &s.socket,
        &["list"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out)
            .contains("permission denied: the admin socket needs root (uid 0); you are uid 65534"),
        "{}",
        text(&out)
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&s.socket).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // The daemon checks the caller's credentials itself: a loosened socket
    // mode does not let a non-root caller decide.
    let psql = spawn_psql(&s, "DELETE FROM orders WHERE id = 7");
    let id7 = pending_one(&s)["id"].as_str().unwrap().to_string();
    std::fs::set_permissions(
        &s.socket,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let out = cli_as(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        &s.socket,
        &["approve", &id7],
    );
    assert!(
        text(&out)
            .contains("permission denied: the admin socket needs root (uid 0); you are uid 65534"),
        "{}",
        text(&out)
    );
    assert!(
        s.daemon
            .raw_log()
            .contains("refused a caller that is not root")
    );
    std::fs::set_permissions(
        &s.socket,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    // A client that goes away abandons its request: approving it later runs nothing.
    let mut psql = psql;
    psql.kill().unwrap();
    let _ = psql.wait();
    let start = Instant::now();
    while list(&s, true)
        .iter()
        .any(|r| r["id"] == id7.as_str() && r["state"] == "pending")
    {
        assert!(start.elapsed() < Duration::from_secs(5), "still pending");
        std::thread::sleep(Duration::from_millis(50));
    }
    let late = cli(&s, &["approve", &id7]);
    assert!(text(&late).contains("already abandoned"), "{}", text(&late));
    assert_eq!(orders(&s, 7), "1");

    // Metrics.
    let (_, m) = http_get(admin_addr(&s.lab), "/metrics");
    assert_eq!(
        metric(&m, "interceptor_approvals_pending"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"interceptor_approvals_total{outcome="approved"}"#),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"interceptor_approvals_total{outcome="timed_out"}"#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"interceptor_approvals_total{outcome="granted"}"#),
        Some(1.0),
        "{m}"
    );

    // 6. A restart while a statement is held: the request is abandoned.
    let psql = spawn_psql(&s, "DELETE FROM orders WHERE id = 6");
    let id6 = pending_one(&s)["id"].as_str().unwrap().to_string();
    assert_eq!(s.daemon.stop(), Some(0));
    let (ok, _, _) = finish(psql);
    assert!(!ok, "the held session cannot survive the daemon");
    s.daemon = Daemon::start(&s.config, &s.dir);
    let all = list(&s, true);
    let r6 = all.iter().find(|r| r["id"] == id6.as_str()).unwrap();
    assert_eq!(r6["state"], "abandoned", "{r6}");
    assert!(list(&s, false).is_empty());
    assert_eq!(orders(&s, 6), "1");
    assert!(s.daemon.raw_log().contains("approval request abandoned"));

    // The audit log has every step, with the request id as approval_ref.
    assert_eq!(s.daemon.stop(), Some(0));
    let shown = Command::new(DAEMON)
        .args(["audit", "show"])
        .arg(&s.audit_dir)
        .output()
        .unwrap();
    let records: Vec<Value> = String::from_utf8_lossy(&shown.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let with_ref = |id: &str| -> Vec<String> {
        records
            .iter()
            .filter(|r| {
                r.to_string()
                    .contains(&format!("\"approval_ref\":\"{id}\""))
            })
            .map(|r| {
                let d = r.to_string();
                ["RequireApproval", "Approved", "Deny"]
                    .into_iter()
                    .find(|k| d.contains(&format!("\"decision\":\"{k}\"")))
                    .unwrap_or("?")
                    .to_string()
            })
            .collect()
    };
    assert_eq!(
        with_ref(&id),
        ["RequireApproval", "Approved"],
        "{records:?}"
    );
    assert_eq!(with_ref(&id2), ["RequireApproval", "Deny"]);
    assert_eq!(with_ref(&id3), ["RequireApproval", "Deny"]);
    // Approved, used by the grant, then found expired.
    assert_eq!(
        with_ref(&id4),
        ["RequireApproval", "Approved", "Approved", "RequireApproval"]
    );
    assert_eq!(with_ref(&id6), ["RequireApproval", "Deny"]);
    assert_eq!(with_ref(&id7), ["RequireApproval", "Deny"]);
    let verify = Command::new(DAEMON)
        .args(["audit", "verify"])
        .arg(&s.audit_dir)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", text(&verify));
}

#[test]
fn the_cli_says_when_no_daemon_is_running() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let out = cli_as(&[], &socket, &["list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains(&format!(
            "the interceptor daemon is not running, or serves no admin socket at {}",
            socket.display()
        )),
        "{}",
        text(&out)
    );
    // A scope without a duration is refused before anything is sent.
    let out = cli_as(&[], &socket, &["approve", "abc", "--scope", "target"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--for"), "{}", text(&out));
}

#[test]
fn an_approval_at_parse_covers_one_execution_of_the_prepared_statement() {
    if !privileged("an_approval_at_parse_covers_one_execution_of_the_prepared_statement") {
        return;
    }
    let mut s = setup("approvalsprepared");
    let mut pg = PgWire::connect(&s.pod, s.pg_addr, "postgres");
    let stmt = "UPDATE orders SET total = total + 1 WHERE id = 8";
    // Held at Parse; approved once, without a grant.
    let (parsed, id) = std::thread::scope(|t| {
        let parse = t.spawn(|| pg.prepare("bump", stmt));
        let id = pending_one(&s)["id"].as_str().unwrap().to_string();
        assert!(cli(&s, &["approve", &id]).status.success());
        (parse.join().unwrap(), id)
    });
    assert!(parsed.iter().any(|m| m.tag == b'1'), "{parsed:?}");
    let total = || {
        s.pg.admin_sql("SELECT total FROM orders WHERE id = 8")
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(total(), "80", "the Parse ran the statement");
    let r = pg.execute("bump");
    assert!(r.iter().any(|m| m.tag == b'C'), "{r:?}");
    assert_eq!(total(), "81");
    // The approval is spent: the next execution asks again.
    let (r, id2) = std::thread::scope(|t| {
        let run = t.spawn(|| pg.execute("bump"));
        let id2 = pending_one(&s)["id"].as_str().unwrap().to_string();
        assert!(
            cli(&s, &["deny", &id2, "--reason", "once is enough"])
                .status
                .success()
        );
        (run.join().unwrap(), id2)
    });
    assert_ne!(id, id2);
    pgwire::assert_denied(&r, "once is enough", "the denied execution");
    assert_eq!(r.last().map(|m| m.tag), Some(b'Z'));
    assert_eq!(total(), "81");
    drop(pg);

    assert_eq!(s.daemon.stop(), Some(0));
    let steps: Vec<(String, String)> = audit_access_records(&s.audit_dir)
        .iter()
        .filter(|r| r["operation"] == "UPDATE orders SET total = total + $1 WHERE id = $2")
        .map(|r| {
            (
                r["decision"].as_str().unwrap_or_default().to_string(),
                r["approval_ref"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let step = |d: &str, id: &str| (d.to_string(), id.to_string());
    assert_eq!(
        steps,
        [
            step("RequireApproval", &id),
            step("Approved", &id),
            step("RequireApproval", &id2),
            step("Deny", &id2),
        ]
    );
}
