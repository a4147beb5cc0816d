//! A service-account token as the database password
//! (`postgres.client_auth: service_account_token`): real psql in a lab pod
//! whose cgroup is laid out like the kubelet's, the eBPF redirect, the daemon
//! verifying the password with the (in-test HTTPS) API server's TokenReview
//! against the pod it attributed the connection to, and a real PostgreSQL
//! that only ever sees the injected credential. Privileged: run as root.

mod common;
mod kubeapi;

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant, SystemTime},
};

use common::*;
use interceptor_daemon::testbed::{Lab, PgOptions, Pod, Postgres};
use kubeapi::FakeApi;

const SECRET: &str = "Db-Secret-Only-The-Node-Has";
const U1: &str = "5f0c8a4e-1b2d-4c3e-9f8a-0123456789b1";
const U2: &str = "5f0c8a4e-1b2d-4c3e-9f8a-0123456789b2";
const U3: &str = "5f0c8a4e-1b2d-4c3e-9f8a-0123456789b3";

/// A JWT-shaped token (the fake API server knows tokens by their text).
fn jwt(tag: &str) -> String {
    use base64::Engine as _;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let exp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    format!(
        "{}.{}.{}",
        e.encode(br#"{"alg":"RS256","kid":"k1"}"#),
        e.encode(
            format!(r#"{{"aud":["https://kubernetes.default.svc"],"exp":{exp},"sub":"{tag}"}}"#)
                .as_bytes()
        ),
        e.encode(format!("signature-of-{tag}").as_bytes())
    )
}

/// The pod's projected token where the kubelet puts it (the daemon reviews
/// it to attribute the pod's connections).
fn write_token(pods_dir: &Path, uid: &str, token: &str) {
    let vol = pods_dir
        .join(uid)
        .join("volumes/kubernetes.io~projected/kube-api-access-x7k2p");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("token"), token).unwrap();
}

fn cgroup_of(uid: &str) -> String {
    format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{}.scope",
        uid.replace('-', "_"),
        "a".repeat(64)
    )
}

/// psql in the pod with `password` (none: no password at all), never prompting.
fn psql(pod: &Pod, pg: &Postgres, host: SocketAddr, password: Option<&str>) -> Output {
    let mut cmd: Command = pod.command(pg.bin.join("psql")).unwrap();
    cmd.env_remove("PGPASSWORD")
        .env("PGPASSFILE", "/nonexistent/pgpass")
        .env("PGCONNECT_TIMEOUT", "20");
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    cmd.args([
        "-X",
        "-w",
        "-At",
        "-h",
        &host.ip().to_string(),
        "-U",
        "workload",
        "-d",
        "shop",
        "-c",
        "SELECT current_user || '|' || current_database() || '|' || count(*) FROM orders",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > Duration::from_secs(40) {
            let _ = child.kill();
            panic!("psql did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).trim().to_string(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[track_caller]
fn assert_refused(o: &Output, wants: &[&str]) {
    let (out, err) = text(o);
    assert!(!o.status.success(), "psql got in: {out}");
    for w in wants {
        assert!(err.contains(w), "`{w}` not in: {err}");
    }
}

#[test]
fn service_account_token_as_the_password() {
    if !privileged("service_account_token_as_the_password") {
        return;
    }
    let dir = scratch("pg-token");
    let api = FakeApi::start(&dir);
    let pods_dir = dir.join("kubelet-pods");
    let audit_dir = dir.join("audit");
    let mut lab = Lab::new().unwrap();
    let pod = lab.add_pod("orders", &cgroup_of(U1)).unwrap();

    // The server demands a password (SCRAM) the workload does not have.
    let pg_dir = dir.join("pg");
    std::fs::create_dir_all(&pg_dir).unwrap();
    let pg_addr: SocketAddr = (lab.node_v4(2), 5432).into();
    let pg = Postgres::start_with(
        pg_addr,
        &[],
        &pg_dir,
        &PgOptions {
            hba: Some("host all all 10.77.0.0/16 scram-sha-256\n".into()),
            tls: None,
            client_ca: None,
        },
    )
    .unwrap();
    pg.admin_sql(&format!(
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE app LOGIN PASSWORD '{SECRET}'"
    ))
    .unwrap();
    // ALTER SYSTEM runs outside a transaction block: its own query.
    pg.admin_sql("ALTER SYSTEM SET log_connections = on")
        .unwrap();
    pg.admin_sql("SELECT pg_reload_conf()").unwrap();
    pg.admin_sql("CREATE DATABASE shop OWNER app").unwrap();
    let secret_file = dir.join("db.secret");
    std::fs::write(&secret_file, SECRET).unwrap();

    // The pod and its own token; another service account's token; the same
    // service account's token bound to another pod; a token the API server
    // rejects.
    let own = jwt("own");
    api.add_pod(U1, "shop", "orders-1", "orders", "lab-node");
    api.add_token(&own, "shop", "orders", Some(("orders-1", U1)));
    write_token(&pods_dir, U1, &own);
    let admin = jwt("admin");
    api.add_token(&admin, "shop", "admin", Some(("admin-1", U2)));
    let other_pod = jwt("other-pod");
    api.add_token(&other_pod, "shop", "orders", Some(("orders-3", U3)));
    let revoked = jwt("revoked");
    api.reject_token(
        &revoked,
        "[invalid bearer token, service account token has been invalidated]",
    );

    let targets = format!(
        "  - name: orders-db\n    protocol: postgres\n    destinations: [\"{pg_addr}\"]\n    postgres:\n      client_auth: service_account_token\n      upstream:\n        user: app\n        password_file: {}\npolicy:\n  default: deny\n  rules:\n    - id: shop-reads\n      identities: [\"shop/orders\"]\n      sql: {{ kinds: [read] }}\n      action: allow\n",
        secret_file.display()
    );
    let opts = DaemonOpts {
        select: vec!["kubepods.slice/*/kubepods-*-pod*.slice".into()],
        destinations: vec![format!("{}:9", lab.node_v4(6))],
        extra_targets: targets,
        identity: format!(
            "identity:\n  kubernetes:\n{}audit:\n  dir: {}\n",
            api.identity_yaml(&pods_dir, "lab-node", "    "),
            audit_dir.display()
        ),
        ..Default::default()
    };
    let cfg = write_config(&lab, &dir, &opts);
    let mut daemon = Daemon::start(&cfg, &dir);
    // The table belongs to `app`'s database.
    let status = Command::new(pg.bin.join("psql"))
        .args(["-X", "-q", "-h"])
        .arg(&pg.dir)
        .args(["-p", "5432", "-U", "postgres", "-d", "shop", "-c"])
        .arg("CREATE TABLE orders (id int); INSERT INTO orders VALUES (1), (2); GRANT SELECT ON orders TO app")
        .status()
        .unwrap();
    assert!(status.success());

    // The pod's own token: in, logged in upstream as the injected user.
    let ok = psql(&pod, &pg, pg_addr, Some(&own));
    let (out, err) = text(&ok);
    assert!(ok.status.success(), "{err}\n{}", daemon.raw_log());
    assert_eq!(out, "app|shop|2");

    // Another service account's valid token: refused (28000).
    let o = psql(&pod, &pg, pg_addr, Some(&admin));
    assert_refused(
        &o,
        &[
            "FATAL",
            "client authentication for target `orders-db` failed",
            "the token is for system:serviceaccount:shop:admin, the connection comes from shop/orders",
        ],
    );
    // The right service account, but bound to another pod: refused.
    let o = psql(&pod, &pg, pg_addr, Some(&other_pod));
    assert_refused(&o, &["FATAL", &format!("bound to pod {U3}")]);
    // A token the API server rejects (28P01).
    let o = psql(&pod, &pg, pg_addr, Some(&revoked));
    assert_refused(&o, &["FATAL", "rejected", "has been invalidated"]);
    // Garbage and no password at all.
    let o = psql(&pod, &pg, pg_addr, Some("not-a-token"));
    assert_refused(&o, &["FATAL", "rejected"]);
    let o = psql(&pod, &pg, pg_addr, None);
    assert_refused(&o, &["no password supplied"]);

    // The refusals happened before the server was bothered: it saw exactly
    // one login, as the injected user, and never any token.
    let pg_log = std::fs::read_to_string(pg_dir.join("postgres.log")).unwrap();
    let authorized: Vec<&str> = pg_log
        .lines()
        .filter(|l| l.contains("connection authorized: user=app database=shop"))
        .collect();
    assert_eq!(authorized.len(), 1, "{pg_log}");
    assert!(!pg_log.contains("user=workload"), "{pg_log}");
    let tokens = [&own, &admin, &other_pod, &revoked];
    for t in tokens {
        assert!(
            !pg_log.contains(t.as_str()),
            "a token reached the server log"
        );
    }

    let (_, metrics) = http_get(admin_addr(&lab), "/metrics");
    for (result, want) in [
        ("ok", 1.0),
        ("mismatch", 2.0),
        ("rejected", 2.0),
        ("no_password", 1.0),
    ] {
        let series =
            format!(r#"interceptor_client_auth_total{{target="orders-db",result="{result}"}}"#);
        assert_eq!(metric(&metrics, &series), Some(want), "{series}\n{metrics}");
    }
    daemon.stop();
    let log = daemon.raw_log();
    for t in tokens {
        assert!(!log.contains(t.as_str()), "a token reached the daemon log");
    }
    assert!(
        log.contains("refusing the client: service-account token check failed"),
        "{log}"
    );

    // The audit log has every attempt with the reviewed claims, never a token.
    let shown = Command::new(DAEMON)
        .args(["audit", "show"])
        .arg(&audit_dir)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    for t in tokens {
        assert!(!shown.contains(t.as_str()), "a token reached the audit log");
    }
    let access: Vec<serde_json::Value> = shown
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["record"].get("Access").cloned())
        .filter(|a| a["rule_id"] == "client_auth:service_account_token")
        .collect();
    assert_eq!(access.len(), 6, "{access:#?}");
    let allowed: Vec<_> = access.iter().filter(|a| a["decision"] == "Allow").collect();
    assert_eq!(allowed.len(), 1, "{access:#?}");
    assert!(
        allowed[0]["operation"]
            .as_str()
            .unwrap()
            .contains("system:serviceaccount:shop:orders bound to pod shop/orders-1"),
        "{access:#?}"
    );
    assert_eq!(allowed[0]["identity"]["pod"], U1);
    let admin_denied = access
        .iter()
        .find(|a| {
            a["operation"]
                .as_str()
                .is_some_and(|o| o.contains("system:serviceaccount:shop:admin"))
        })
        .unwrap_or_else(|| panic!("{access:#?}"));
    assert_eq!(admin_denied["decision"], "Deny");
    assert!(
        admin_denied["outcome"]["Error"]
            .as_str()
            .is_some_and(|e| e.contains("not the connection's identity")),
        "{admin_denied}"
    );
}
