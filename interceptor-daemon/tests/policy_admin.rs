//! The policy engine's admin surface end to end: `interceptor policy apply /
//! history / show / rollback` and `interceptor status` against the real daemon
//! over its admin socket, with a real psql in a lab pod talking to real
//! PostgreSQL through the eBPF redirect; applied versions across a restart
//! and their interplay with `policy_file`. `policy test --http/--redis` is
//! checked offline. The daemon tests are privileged: run as root (CI does).

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Output, Stdio},
    sync::{Arc, Mutex},
};

use common::{orders::*, *};
use interceptor_daemon::testbed::{Lab, Pod, Postgres};
use serde_json::Value;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Setup {
    lab: Lab,
    pod: Pod,
    pg: Postgres,
    pg_addr: SocketAddr,
    dir: PathBuf,
    config: PathBuf,
    policy_path: PathBuf,
    socket: PathBuf,
}

fn setup(name: &str) -> Setup {
    let dir = scratch(name);
    let o = orders(
        name,
        &format!("audit:\n  dir: {}\n", dir.join("audit").display()),
    );
    let socket = o.dir.join("run/admin.sock");
    // The admin section is written by the harness; the socket goes with it.
    let cfg_text = std::fs::read_to_string(&o.config).unwrap();
    let admin = format!("admin:\n  address: {}\n", admin_addr(&o.lab));
    assert!(cfg_text.contains(&admin));
    let cfg_text = cfg_text.replace(&admin, &format!("{admin}  socket: {}\n", socket.display()));
    std::fs::write(&o.config, cfg_text).unwrap();
    Setup {
        lab: o.lab,
        pod: o.pod,
        pg: o.pg,
        pg_addr: o.pg_addr,
        dir: o.dir,
        config: o.config,
        policy_path: o.policy_path,
        socket,
    }
}

/// `interceptor <args> --socket S`.
fn cli(socket: &Path, args: &[&str]) -> Output {
    Command::new(DAEMON)
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .unwrap()
}

fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("no JSON ({e}): {}", text(o)))
}

/// One psql session in the pod, fed statement by statement.
struct Psql {
    child: Child,
    stdin: ChildStdin,
    errors: Arc<Mutex<String>>,
}

impl Psql {
    fn start(s: &Setup) -> Psql {
        let mut child = s
            .pod
            .command(s.pg.bin.join("psql"))
            .unwrap()
            .args([
                "-X",
                "-At",
                "-h",
                &s.pg_addr.ip().to_string(),
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
        let stdin = child.stdin.take().unwrap();
        let errors = Arc::new(Mutex::new(String::new()));
        let e = errors.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut e = e.lock().unwrap();
                e.push_str(&line);
                e.push('\n');
            }
        });
        Psql {
            child,
            stdin,
            errors,
        }
    }

    fn send(&mut self, sql: &str) {
        writeln!(self.stdin, "{sql}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn denials(&self) -> usize {
        self.errors
            .lock()
            .unwrap()
            .matches("statement denied by rule `freeze`")
            .count()
    }

    fn finish(self) -> String {
        let Psql {
            mut child,
            stdin,
            errors,
        } = self;
        drop(stdin);
        let _ = child.wait();
        errors.lock().unwrap().clone()
    }
}

#[test]
fn policy_apply_history_rollback_status_and_restart_through_the_admin_socket() {
    if !privileged("policy_apply_history_rollback_status_and_restart_through_the_admin_socket") {
        return;
    }
    let s = setup("policyadmin");
    let mut daemon = Daemon::start(&s.config, &s.dir);
    let orders = || {
        s.pg.admin_sql("SELECT count(*) FROM orders")
            .unwrap()
            .trim()
            .to_string()
    };
    let version = || {
        metric(
            &http_get(admin_addr(&s.lab), "/metrics").1,
            "interceptor_policy_version",
        )
    };
    assert_eq!(version(), Some(1.0));

    let mut psql = Psql::start(&s);
    psql.send("INSERT INTO orders VALUES (1, 1);");
    wait_for("the first insert", || orders() == "1");

    // `status` shows the open session under its identity.
    let out = cli(&s.socket, &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let st = json_of(&out);
    let groups = st["connections_by_identity"].as_array().unwrap();
    assert!(
        groups.iter().any(|g| g["identity"] == "shop/orders-api"
            && g["target"] == "orders-db"
            && g["protocol"] == "postgres"
            && g["connections"] == 1),
        "{st}"
    );
    let out = cli(&s.socket, &["status"]);
    let table = text(&out);
    assert!(
        table.contains("IDENTITY")
            && table.contains("shop/orders-api")
            && table.contains("orders-db"),
        "{table}"
    );

    // Apply: the open session's next INSERT is denied by the new policy.
    let read_only = s.dir.join("read-only.yaml");
    std::fs::write(&read_only, READ_ONLY).unwrap();
    let out = cli(&s.socket, &["policy", "apply", read_only.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("applied: policy version 2") && text(&out).contains("by root (uid 0)"),
        "{}",
        text(&out)
    );
    assert_eq!(version(), Some(2.0));
    psql.send("INSERT INTO orders VALUES (2, 1);");
    wait_for("a denial", || psql.denials() == 1);
    assert_eq!(orders(), "1");
    // `policy test` against the running daemon agrees (exit 1: deny).
    let out = cli(
        &s.socket,
        &[
            "policy",
            "test",
            "--identity",
            "shop/orders-api",
            "--target",
            "orders-db",
            "--sql",
            "INSERT INTO orders VALUES (3, 1)",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(json_of(&out)["rule"], "freeze");

    // An invalid apply is refused with its position; the old policy enforces.
    let bad = s.dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "default: deny\nrules:\n  - id: x\n    action: permit\n",
    )
    .unwrap();
    let out = cli(&s.socket, &["policy", "apply", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{}: line 4, column", bad.display()))
            && text(&out).contains("permit"),
        "{}",
        text(&out)
    );
    assert_eq!(version(), Some(2.0));
    psql.send("INSERT INTO orders VALUES (2, 1);");
    wait_for("a second denial", || psql.denials() == 2);

    // `policy show` reads the running daemon's policy and version.
    let out = cli(&s.socket, &["policy", "show", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = json_of(&out);
    assert_eq!(shown["running"]["version"], 2, "{shown}");
    assert_eq!(shown["running"]["source"], "apply", "{shown}");
    assert!(
        shown["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == "freeze"),
        "{shown}"
    );
    // `policy diff` against the running policy.
    let out = cli(
        &s.socket,
        &["policy", "diff", s.policy_path.to_str().unwrap(), "--json"],
    );
    let d = json_of(&out);
    assert_eq!(
        (d["added"][0].as_str(), d["removed"][0].as_str()),
        (Some("orders-write"), Some("freeze")),
        "{d}"
    );

    // A non-root caller is refused with a clear message, and nothing changes.
    let out = Command::new(DAEMON)
        .args(["policy", "apply"])
        .arg(&s.policy_path)
        .arg("--socket")
        .arg(&s.socket)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out)
            .contains("permission denied: the admin socket needs root (uid 0); you are uid 65534"),
        "{}",
        text(&out)
    );
    assert_eq!(version(), Some(2.0));

    // History: both versions with their actors.
    let out = cli(&s.socket, &["policy", "history", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let h = json_of(&out);
    let file_actor = format!("file:{}", s.policy_path.display());
    let rows: Vec<(u64, String, String)> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            assert_eq!(v["digest"].as_str().unwrap().len(), 64, "{v}");
            assert!(v["time"].as_str().unwrap().ends_with('Z'), "{v}");
            (
                v["version"].as_u64().unwrap(),
                v["actor"].as_str().unwrap().to_string(),
                v["source"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (1, file_actor.clone(), s.policy_path.display().to_string()),
            (2, "root (uid 0)".to_string(), "apply".to_string()),
        ]
    );
    let out = cli(&s.socket, &["policy", "history"]);
    let table = text(&out);
    assert!(
        table.contains("VERSION") && table.contains("root (uid 0)") && table.contains(&file_actor),
        "{table}"
    );
    assert_eq!(psql.denials(), 2);
    let errors = psql.finish();
    assert_eq!(errors.matches("ERROR").count(), 2, "{errors}");

    // Restart: the applied version is restored (the file did not change).
    assert_eq!(daemon.stop(), Some(0));
    let mut daemon = Daemon::start(&s.config, &s.dir);
    assert_eq!(version(), Some(2.0));
    let mut psql = Psql::start(&s);
    psql.send("INSERT INTO orders VALUES (4, 1);");
    wait_for("a denial after the restart", || psql.denials() == 1);
    drop(psql.finish());
    assert_eq!(orders(), "1");

    // The policy file changes (a ConfigMap update): last writer wins, as version 3.
    std::fs::write(&s.policy_path, format!("{WRITES_ALLOWED}# reviewed\n")).unwrap();
    wait_for("policy version 3", || version() == Some(3.0));
    let mut psql = Psql::start(&s);
    psql.send("INSERT INTO orders VALUES (5, 1);");
    wait_for("the insert under the file's policy", || orders() == "2");
    drop(psql.finish());
    let h = json_of(&cli(&s.socket, &["policy", "history", "--json"]));
    assert_eq!(h[2]["actor"], file_actor.as_str(), "{h}");

    // Rollback re-applies version 2 as version 4.
    let out = cli(&s.socket, &["policy", "rollback", "2", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let r = json_of(&out);
    assert_eq!(
        (r["version"].as_u64(), r["source"].as_str()),
        (Some(4), Some("rollback:2")),
        "{r}"
    );
    assert_eq!(version(), Some(4.0));

    // A restart after the file changed while the daemon was down: the file wins.
    assert_eq!(daemon.stop(), Some(0));
    std::fs::write(&s.policy_path, WRITES_ALLOWED).unwrap();
    let daemon = Daemon::start(&s.config, &s.dir);
    assert_eq!(version(), Some(5.0));
    let h = json_of(&cli(&s.socket, &["policy", "history", "--json"]));
    assert_eq!(h.as_array().unwrap().len(), 5, "{h}");
    assert_eq!(h[4]["actor"], file_actor.as_str(), "{h}");
    drop(daemon);
    drop(s);
}

#[test]
fn policy_cli_without_a_daemon_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let out = cli(&socket, &["policy", "history"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("the interceptor daemon is not running, or serves no admin socket"),
        "{}",
        text(&out)
    );
    // show with no policy source asks the daemon and explains the alternatives.
    let out = cli(&socket, &["policy", "show"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--policy FILE"), "{}", text(&out));
}

const PROTOCOLS: &str = r#"default: deny
rules:
  - id: cache-sessions
    identities: ["shop/*"]
    redis: { commands: ["GET", "SET", "CONFIG GET"], keys: ["session:*"] }
    action: allow
  - id: no-flush
    redis: { commands: ["FLUSH*"] }
    action: deny
  - id: orders-api
    http: { methods: [GET], hosts: ["api.*"], paths: ["/v1/orders/*"] }
    action: allow
  - id: refunds
    http: { methods: [POST], paths: ["/v1/refunds"] }
    action: require_approval
"#;

fn policy_test(policy: &Path, args: &[&str]) -> (Option<i32>, Value, String) {
    let out = Command::new(DAEMON)
        .args(["policy", "test", "--policy"])
        .arg(policy)
        .args(["--identity", "shop/api", "--target", "svc"])
        .args(args)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), v, text(&out))
}

#[test]
fn policy_test_decides_http_and_redis_with_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("protocols.yaml");
    std::fs::write(&p, PROTOCOLS).unwrap();

    let (code, v, _) = policy_test(&p, &["--redis", "get session:42", "--json"]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(
        (v["action"].as_str(), v["rule"].as_str()),
        (Some("allow"), Some("cache-sessions"))
    );
    // Every key must be covered: MGET of a foreign key is not allowed.
    let (code, v, _) = policy_test(&p, &["--redis", "MGET session:1 user:1", "--json"]);
    assert_eq!(
        (code, v["rule"].as_str()),
        (Some(1), Some("default")),
        "{v}"
    );
    let (code, v, _) = policy_test(&p, &["--redis", "FLUSHALL", "--json"]);
    assert_eq!(
        (code, v["rule"].as_str()),
        (Some(1), Some("no-flush")),
        "{v}"
    );
    assert!(v["reason"].is_string(), "{v}");
    // Arguments split and quoted as the server reads them; only keys matter.
    let (code, _, out) = policy_test(&p, &["--redis", "SET session:9 \"a b\" EX 60"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.starts_with("allow  rule cache-sessions") && out.contains("SET [session:9]"),
        "{out}"
    );
    // An allow rule with keys never covers a keyless command.
    let (code, _, out) = policy_test(&p, &["--redis", "CONFIG GET maxmemory"]);
    assert_eq!(code, Some(1), "{out}");

    // HTTP: host matcher, path normalisation as the proxy does it.
    let (code, v, _) = policy_test(
        &p,
        &[
            "--http",
            "GET /v1/%6Frders/../orders/7?x=1",
            "--host",
            "api.shop:8080",
            "--json",
        ],
    );
    assert_eq!(
        (code, v["rule"].as_str()),
        (Some(0), Some("orders-api")),
        "{v}"
    );
    let (code, v, _) = policy_test(
        &p,
        &["--http", "GET /v1/orders/7", "--host", "web.shop", "--json"],
    );
    assert_eq!((code, v["action"].as_str()), (Some(1), Some("deny")), "{v}");
    // As enforced: only SQL statements can be held, so a
    // require_approval rule denies an HTTP request.
    let (code, v, _) = policy_test(&p, &["--http", "POST /v1/refunds", "--json"]);
    assert_eq!(
        (code, v["rule"].as_str()),
        (Some(1), Some("refunds")),
        "{v}"
    );
    assert!(
        v["reason"].as_str().unwrap().contains("needs approval"),
        "{v}"
    );

    // Usage errors: exit 2.
    let (code, _, out) = policy_test(&p, &["--http", "GET"]);
    assert_eq!(code, Some(2), "{out}");
    let (code, _, out) = policy_test(&p, &["--redis", "GET a", "--sql", "SELECT 1"]);
    assert_eq!(code, Some(2), "{out}");
    let (code, _, out) = policy_test(&p, &["--redis", "GET a", "--host", "x"]);
    assert_eq!(code, Some(2), "{out}");
}
