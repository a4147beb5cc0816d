//! Redis through the interceptor: a real redis-server (Debian's package) on a
//! lab node address, real redis-cli and a raw pipeline inside a lab pod
//! through the eBPF redirect, command policy on the wire.
//! Privileged: run as root (CI does).

mod common;

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::*;
use interceptor_daemon::testbed::{Lab, Pod};

const POLICY: &str = r#"policy:
  default: deny
  rules:
    - id: sessions
      identities: ["shop/*"]
      redis: { commands: ["GET", "SET", "DEL"], keys: ["session:*"] }
      action: allow
    - id: basics
      identities: ["shop/*"]
      redis: { commands: ["PING", "ECHO", "HELLO", "INCR", "MULTI", "EXEC"] }
      action: allow
    - id: no-admin
      redis: { commands: ["FLUSH*", "CONFIG*", "KEYS"] }
      action: deny
      description: administrative commands are for operators
"#;

/// A real redis-server on a lab address, stopped on drop.
struct RedisServer {
    child: Child,
    addr: SocketAddr,
}

impl RedisServer {
    fn start(addr: SocketAddr, dir: &Path) -> RedisServer {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                &addr.ip().to_string(),
                "--port",
                &addr.port().to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--daemonize",
                "no",
                "--dir",
            ])
            .arg(dir)
            .stdout(std::fs::File::create(dir.join("redis.log")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server; cargo xtask setup does)");
        let s = RedisServer { child, addr };
        let start = Instant::now();
        while s.direct(&["PING"]).trim() != "PONG" {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server did not start on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// redis-cli from the host, straight to the server (not intercepted).
    fn direct(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args([
                "-h",
                &self.addr.ip().to_string(),
                "-p",
                &self.addr.port().to_string(),
            ])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Setup {
    lab: Lab,
    pod: Pod,
    redis: RedisServer,
    daemon: Daemon,
    audit_dir: std::path::PathBuf,
}

fn setup(test: &str) -> Setup {
    let dir = scratch(test);
    let mut lab = Lab::new().unwrap();
    let pod = lab.add_pod("app", "pods/app").unwrap();
    let addr: SocketAddr = (lab.node_v4(3), 6379).into();
    let redis = RedisServer::start(addr, &dir);
    let audit_dir = dir.join("audit");
    let opts = DaemonOpts {
        // The default `svc` target needs a destination: one nobody uses.
        destinations: vec![format!("{}:9", lab.node_v4(6))],
        extra_targets: format!(
            "  - name: cache\n    protocol: redis\n    destinations: [\"{addr}\"]\n{POLICY}audit:\n  dir: {}\n  checkpoint_every: 5\n",
            audit_dir.display()
        ),
        identity: "identity:\n  standalone:\n    - cgroups: \"pods/app\"\n      namespace: shop\n      service_account: cart\n".into(),
        ..Default::default()
    };
    let cfg = write_config(&lab, &dir, &opts);
    let daemon = Daemon::start(&cfg, &dir);
    Setup {
        lab,
        pod,
        redis,
        daemon,
        audit_dir,
    }
}

/// redis-cli inside the pod, through the redirect.
fn cli(s: &Setup, args: &[&str]) -> Output {
    s.pod
        .command("redis-cli")
        .unwrap()
        .args([
            "-h",
            &s.redis.addr.ip().to_string(),
            "-p",
            &s.redis.addr.port().to_string(),
        ])
        .args(args)
        .output()
        .unwrap()
}

fn cli_out(s: &Setup, args: &[&str]) -> String {
    let o = cli(s, args);
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Sends `raw` on one connection from inside the pod (bash /dev/tcp) and
/// returns the first `lines` reply lines, CRs removed.
fn raw_pipeline(s: &Setup, raw: &str, lines: usize) -> String {
    let script = format!(
        "exec 3<>/dev/tcp/{}/{}; printf '%s' \"$REQ\" >&3; timeout 5 head -n {lines} <&3",
        s.redis.addr.ip(),
        s.redis.addr.port()
    );
    let out = s
        .pod
        .command("bash")
        .unwrap()
        .args(["-c", &script])
        .env("REQ", raw)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).replace('\r', "")
}

const DENIED_ADMIN: &str =
    "ERR interceptor: command denied by rule `no-admin`: administrative commands are for operators";

#[test]
fn redis_commands_are_decided_on_the_wire() {
    if !privileged("redis_commands_are_decided_on_the_wire") {
        return;
    }
    let s = setup("redis");

    // Allowed commands work as usual.
    assert_eq!(cli_out(&s, &["SET", "session:1", "hello"]).trim(), "OK");
    assert_eq!(cli_out(&s, &["GET", "session:1"]).trim(), "hello");
    // RESP3 (redis-cli -3 sends HELLO 3 first).
    assert_eq!(cli_out(&s, &["-3", "GET", "session:1"]).trim(), "hello");

    // Denied: admin commands, and keys outside the allowed ones.
    for args in [
        &["FLUSHALL"][..],
        &["CONFIG", "GET", "maxmemory"],
        &["KEYS", "*"],
    ] {
        let out = cli_out(&s, args);
        assert!(out.contains(DENIED_ADMIN), "{args:?}: {out}");
    }
    let out = cli_out(&s, &["GET", "other:1"]);
    assert!(
        out.contains(
            "ERR interceptor: command denied by rule `default`: no rule allows this command"
        ),
        "{out}"
    );
    // FLUSHALL never reached the server.
    assert_eq!(s.redis.direct(&["GET", "session:1"]).trim(), "hello");

    // A pipeline on one connection: the denials take their places.
    let got = raw_pipeline(
        &s,
        "PING\r\nSET session:2 a\r\nFLUSHALL\r\nGET session:2\r\n*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$1\r\n*\r\nINCR counter\r\nECHO done\r\n",
        9,
    );
    assert_eq!(
        got,
        format!("+PONG\n+OK\n-{DENIED_ADMIN}\n$1\na\n-{DENIED_ADMIN}\n:1\n$4\ndone\n")
    );

    // A transaction with a denied command is aborted, like a server-side error.
    let got = raw_pipeline(
        &s,
        "MULTI\r\nINCR counter\r\nFLUSHDB\r\nEXEC\r\nGET session:2\r\n",
        6,
    );
    assert_eq!(
        got,
        format!(
            "+OK\n+QUEUED\n-{DENIED_ADMIN}\n-EXECABORT Transaction discarded because of previous errors.\n$1\na\n"
        )
    );
    assert_eq!(s.redis.direct(&["GET", "counter"]).trim(), "1");

    // redis-cli --pipe: 2000 commands in flight, one denied among them.
    let mut mass = String::new();
    for i in 0..1000 {
        mass.push_str(&format!("SET session:m{i} v{i}\r\n"));
    }
    mass.push_str("FLUSHALL\r\n");
    for i in 0..999 {
        mass.push_str(&format!("GET session:m{i}\r\n"));
    }
    let mut child = s
        .pod
        .command("redis-cli")
        .unwrap()
        .args([
            "-h",
            &s.redis.addr.ip().to_string(),
            "-p",
            &s.redis.addr.port().to_string(),
            "--pipe",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(mass.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("errors: 1, replies: 2000"), "{text}");
    assert_eq!(s.redis.direct(&["GET", "session:m999"]).trim(), "v999");

    // Malformed bytes close the connection with a protocol error and a log line.
    let got = raw_pipeline(&s, "PING\r\n*1\r\n:5\r\nPING\r\n", 2);
    assert!(
        got.starts_with("+PONG\n-ERR Protocol error: a command argument must be a bulk string"),
        "{got}"
    );
    let log = s.daemon.raw_log();
    assert!(
        log.contains("closing the connection: malformed Redis command from the client"),
        "{log}"
    );

    // Metrics name the rule.
    let (_, text) = http_get(admin_addr(&s.lab), "/metrics");
    let denied = r#"interceptor_decisions_total{target="cache",action="deny",rule="no-admin"}"#;
    assert!(metric(&text, denied).unwrap_or(0.0) >= 7.0, "{text}");

    // The signed audit log holds every decision, attributed and verifiable.
    let mut s = s;
    assert_eq!(s.daemon.stop(), Some(0));
    let out = Command::new(DAEMON)
        .args(["audit", "verify"])
        .arg(&s.audit_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let shown = Command::new(DAEMON)
        .args(["audit", "show"])
        .arg(&s.audit_dir)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    let line = shown
        .lines()
        .find(|l| l.contains("\"operation\":\"FLUSHALL\""))
        .unwrap_or_else(|| panic!("no FLUSHALL record: {shown}"));
    assert!(
        line.contains("\"decision\":\"Deny\"")
            && line.contains("no-admin")
            && line.contains("\"protocol\":\"Redis\"")
            && line.contains("\"service_account\":\"cart\""),
        "{line}"
    );
    assert!(
        shown.contains("\"operation\":\"SET [session:1]\"")
            && shown.contains("\"decision\":\"Allow\""),
        "{shown}"
    );
    // Values never reach the audit log.
    assert!(!shown.contains("hello"), "a value reached the audit log");

    // The pipeline's session replays with each reply the client got, in order:
    // statuses and integers as sent, strings by their size only.
    let echo = shown
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["record"]["Access"]["operation"] == "ECHO")
        .unwrap_or_else(|| panic!("no ECHO record: {shown}"));
    let session = echo["record"]["Access"]["session_id"].as_str().unwrap();
    let out = Command::new(DAEMON)
        .args(["sessions", "replay"])
        .arg(&s.audit_dir)
        .arg(session)
        .output()
        .unwrap();
    let replay = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{replay}");
    let at = |needle: &str| {
        replay
            .find(needle)
            .unwrap_or_else(|| panic!("no `{needle}` in the replay:\n{replay}"))
    };
    let order = [
        at("reply   simple PONG"),
        at("reply   simple OK"),
        at("reply   bulk (1 bytes)"),
        at("reply   integer 1"),
        at("reply   bulk (4 bytes)"),
    ];
    assert!(order.is_sorted(), "{replay}");
    // Each reply follows its command.
    assert!(
        at("allow   PING") < order[0] && at("allow   ECHO") < order[4],
        "{replay}"
    );
}
