//! HTTP/1.1 through the interceptor: a real nginx (Debian's package) started
//! on a lab node address with a tiny configuration, real curl inside a lab pod
//! through the eBPF redirect, request policy on the wire; plus a
//! `protocol: auto` target recognised from the first bytes.
//! Privileged: run as root (CI does).

mod common;

use std::{
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::*;
use interceptor_daemon::testbed::{Lab, Pod};

const POLICY: &str = r#"policy:
  default: deny
  rules:
    - id: orders-api
      identities: ["shop/*"]
      http: { methods: [GET, POST], hosts: ["10.77.*"], paths: ["/v1/orders/*"] }
      action: allow
    - id: no-admin
      http: { paths: ["/admin*"] }
      action: deny
      description: the admin API is for operators
"#;

/// nginx in the foreground with its files in a scratch directory.
struct Nginx {
    child: Child,
}

impl Nginx {
    fn start(addr: SocketAddr, auto_port: u16, echo_port: u16, dir: &Path) -> Nginx {
        let d = dir.display();
        let ip = addr.ip();
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {d}/nginx-access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type text/plain;
    server {{
        listen {addr};
        listen {ip}:{auto_port};
        # The body reaches the backend only if the proxy passed it on intact.
        location = /v1/orders/upload {{
            proxy_pass http://127.0.0.1:{echo_port}/echo;
            proxy_set_header X-Body $request_body;
        }}
        location / {{ return 200 "ok $request_method $uri\n"; }}
    }}
    server {{
        listen 127.0.0.1:{echo_port};
        location /echo {{ return 200 "got $http_x_body\n"; }}
    }}
}}
"#
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("nginx.stderr")).unwrap())
            .spawn()
            .expect("nginx (apt-get install nginx; cargo xtask setup does)");
        let start = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nginx did not start on {addr}: {}",
                std::fs::read_to_string(dir.join("nginx.stderr")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx { child }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Setup {
    lab: Lab,
    pod: Pod,
    base: String,
    auto_base: String,
    _nginx: Nginx,
    daemon: Daemon,
    audit_dir: std::path::PathBuf,
}

fn setup(test: &str) -> Setup {
    let dir = scratch(test);
    let mut lab = Lab::new().unwrap();
    let pod = lab.add_pod("app", "pods/app").unwrap();
    let addr: SocketAddr = (lab.node_v4(4), 8080).into();
    let auto_addr: SocketAddr = (lab.node_v4(4), 8082).into();
    let nginx = Nginx::start(addr, 8082, 18_200 + u16::from(lab.slot), &dir);
    let audit_dir = dir.join("audit");
    let opts = DaemonOpts {
        destinations: vec![format!("{}:9", lab.node_v4(6))],
        extra_targets: format!(
            "  - name: orders-api\n    protocol: http\n    destinations: [\"{addr}\"]\n  - name: sniffed\n    protocol: auto\n    destinations: [\"{auto_addr}\"]\n{POLICY}audit:\n  dir: {}\n  checkpoint_every: 5\n",
            audit_dir.display()
        ),
        identity: "identity:\n  standalone:\n    - cgroups: \"pods/app\"\n      namespace: shop\n      service_account: web\n".into(),
        ..Default::default()
    };
    let cfg = write_config(&lab, &dir, &opts);
    // One more header to keep out of logs.
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "proxy:\n  shutdown_grace_ms: 200\n",
        "proxy:\n  shutdown_grace_ms: 200\n  redact_headers: [X-Api-Key]\n",
    );
    assert!(text.contains("redact_headers"));
    std::fs::write(&cfg, text).unwrap();
    let daemon = Daemon::start(&cfg, &dir);
    Setup {
        lab,
        pod,
        base: format!("http://{addr}"),
        auto_base: format!("http://{auto_addr}"),
        _nginx: nginx,
        daemon,
        audit_dir,
    }
}

/// curl inside the pod, through the redirect.
fn curl(s: &Setup, args: &[&str]) -> Output {
    s.pod
        .command("curl")
        .unwrap()
        .args(["-s", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const ADMIN_DENIED: &str =
    r#"{"error":"denied","reason":"the admin API is for operators","rule":"no-admin"}"#;

#[test]
fn http_requests_are_decided_on_the_wire() {
    if !privileged("http_requests_are_decided_on_the_wire") {
        return;
    }
    let s = setup("http");
    let url = |p: &str| format!("{}{p}", s.base);

    // Allowed and denied requests.
    let o = curl(&s, &[&url("/v1/orders/7")]);
    assert_eq!(stdout(&o), "ok GET /v1/orders/7\n", "{}", stderr(&o));
    let o = curl(&s, &["-i", &url("/admin/users")]);
    let out = stdout(&o);
    assert!(out.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{out}");
    assert!(out.contains("Content-Type: application/json\r\n"), "{out}");
    assert!(out.ends_with(ADMIN_DENIED), "{out}");
    let o = curl(&s, &[&url("/v1/customers")]);
    assert_eq!(
        stdout(&o),
        r#"{"error":"denied","reason":"no rule allows this request","rule":"default"}"#
    );
    // Evasions by path spelling are normalised before matching.
    let o = curl(&s, &["--path-as-is", &url("/v1/orders/../../admin/x")]);
    assert_eq!(stdout(&o), ADMIN_DENIED);
    let o = curl(&s, &[&url("/%61dmin/x")]);
    assert_eq!(stdout(&o), ADMIN_DENIED);

    // Keep-alive: three URLs on one connection, the denied one in the middle.
    let o = curl(
        &s,
        &[
            "-v",
            &url("/v1/orders/1"),
            &url("/admin/x"),
            &url("/v1/orders/2"),
        ],
    );
    assert_eq!(
        stdout(&o),
        format!("ok GET /v1/orders/1\n{ADMIN_DENIED}ok GET /v1/orders/2\n")
    );
    assert_eq!(
        stderr(&o).matches("Re-using existing connection").count(),
        2,
        "{}",
        stderr(&o)
    );

    // Chunked request bodies stream through, with and without 100-continue.
    for expect in ["Expect:", "Expect: 100-continue"] {
        let o = curl(
            &s,
            &[
                "-H",
                "Transfer-Encoding: chunked",
                "-H",
                expect,
                "--data-binary",
                "hello-chunked",
                &url("/v1/orders/upload"),
            ],
        );
        assert_eq!(
            stdout(&o),
            "got hello-chunked\n",
            "{expect}: {}",
            stderr(&o)
        );
    }

    // A denied request with a body: the body is dropped, the connection stays usable.
    let o = curl(
        &s,
        &[
            "-v",
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Expect:",
            "--data-binary",
            "drop-me",
            &url("/admin/upload"),
            "--next",
            "-s",
            "-v",
            &url("/v1/orders/3"),
        ],
    );
    assert_eq!(stdout(&o), format!("{ADMIN_DENIED}ok GET /v1/orders/3\n"));
    assert!(
        stderr(&o).contains("Re-using existing connection"),
        "{}",
        stderr(&o)
    );
    // With 100-continue the body may never come: 403 and close.
    let o = curl(
        &s,
        &[
            "-i",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            "never",
            &url("/admin/upload"),
        ],
    );
    let out = stdout(&o);
    assert!(
        out.starts_with("HTTP/1.1 403") && out.contains("Connection: close\r\n"),
        "{out}"
    );

    // Credentials and query values never reach the logs.
    let o = curl(
        &s,
        &[
            "-H",
            "Authorization: Bearer s3cr3t-token",
            "-H",
            "X-Api-Key: k3y-value",
            "-H",
            "Cookie: sid=c00kie",
            &url("/admin/secret?token=qv4lue"),
        ],
    );
    assert_eq!(stdout(&o), ADMIN_DENIED);

    // protocol: auto recognises HTTP from the first bytes.
    let o = curl(&s, &[&format!("{}/admin/z", s.auto_base)]);
    assert_eq!(stdout(&o), ADMIN_DENIED);
    let o = curl(&s, &[&format!("{}/v1/orders/5", s.auto_base)]);
    assert_eq!(stdout(&o), "ok GET /v1/orders/5\n");

    let log = s.daemon.raw_log();
    assert!(
        log.contains("request denied") && log.contains("[redacted]"),
        "{log}"
    );
    for secret in ["s3cr3t-token", "k3y-value", "c00kie", "qv4lue"] {
        assert!(!log.contains(secret), "`{secret}` reached the log");
    }
    let (_, text) = http_get(admin_addr(&s.lab), "/metrics");
    let denied =
        r#"interceptor_decisions_total{target="orders-api",action="deny",rule="no-admin"}"#;
    assert!(metric(&text, denied).unwrap_or(0.0) >= 6.0, "{text}");

    // The audit log: every request as `METHOD host path`, attributed.
    let mut s = s;
    assert_eq!(s.daemon.stop(), Some(0));
    let out = Command::new(DAEMON)
        .args(["audit", "verify"])
        .arg(&s.audit_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stdout(&out));
    let shown = stdout(
        &Command::new(DAEMON)
            .args(["audit", "show"])
            .arg(&s.audit_dir)
            .output()
            .unwrap(),
    );
    let host = s.lab.node_v4(4);
    let line = shown
        .lines()
        .find(|l| l.contains(&format!("\"operation\":\"GET {host} /admin/users\"")))
        .unwrap_or_else(|| panic!("no record of the denied request: {shown}"));
    assert!(
        line.contains("\"decision\":\"Deny\"")
            && line.contains("no-admin")
            && line.contains("\"protocol\":\"Http\"")
            && line.contains("\"service_account\":\"web\""),
        "{line}"
    );
    assert!(
        shown.contains(&format!("\"operation\":\"POST {host} /v1/orders/upload\"")),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("\"operation\":\"GET {host} /admin/z\"")),
        "the auto target's request was not decided: {shown}"
    );
    for secret in ["s3cr3t-token", "k3y-value", "c00kie", "qv4lue"] {
        assert!(!shown.contains(secret), "`{secret}` reached the audit log");
    }

    // The session replay shows each response: status, content type, length.
    let first = shown
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["record"]["Access"]["operation"] == format!("GET {host} /v1/orders/7"))
        .unwrap_or_else(|| panic!("no record of the first request: {shown}"));
    let session = first["record"]["Access"]["session_id"].as_str().unwrap();
    let out = Command::new(DAEMON)
        .args(["sessions", "replay"])
        .arg(&s.audit_dir)
        .arg(session)
        .output()
        .unwrap();
    let replay = stdout(&out);
    assert!(out.status.success(), "{replay}{}", stderr(&out));
    let lines: Vec<&str> = replay.lines().collect();
    assert!(lines[1].contains("allow   GET"), "{replay}");
    assert!(
        lines[2].contains("response 200 text/plain 20 bytes"),
        "{replay}"
    );
}
