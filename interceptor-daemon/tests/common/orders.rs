//! The `orders` fixture of the policy tests: a lab pod `shop/orders-api`, a
//! real PostgreSQL with an `orders` table, and a policy file that the tests
//! rewrite (or apply) between a write-allowing and a read-only version.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use interceptor_daemon::testbed::{Lab, Pod, Postgres};

use super::{DaemonOpts, scratch, write_config};

pub const WRITES_ALLOWED: &str = r#"default: deny
rules:
  - id: orders-read
    identities: ["shop/*"]
    sql: { kinds: [read, transaction, utility], tables: ["orders"] }
    action: allow
  - id: orders-write
    identities: ["shop/orders-api"]
    sql: { kinds: [write], tables: ["orders"] }
    action: allow
"#;

pub const READ_ONLY: &str = r#"default: deny
rules:
  - id: orders-read
    identities: ["shop/*"]
    sql: { kinds: [read, transaction, utility], tables: ["orders"] }
    action: allow
  - id: freeze
    description: orders are frozen for the audit
    sql: { kinds: [write] }
    action: deny
"#;

/// Polls `f` every 100 ms for up to 20 s.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub struct Orders {
    pub lab: Lab,
    pub pod: Pod,
    pub pg: Postgres,
    pub pg_addr: SocketAddr,
    pub dir: PathBuf,
    /// The daemon's configuration (not started).
    pub config: PathBuf,
    /// `policy.yaml`, starting as [`WRITES_ALLOWED`].
    pub policy_path: PathBuf,
}

/// Builds the fixture; `extra_config` is appended to the daemon's configuration.
pub fn orders(name: &str, extra_config: &str) -> Orders {
    let dir = scratch(name);
    let mut lab = Lab::new().unwrap();
    let pod = lab.add_pod("app", "pods/app").unwrap();
    let pg_addr: SocketAddr = (lab.node_v4(2), 5432).into();
    let pg_dir = dir.join("pg");
    std::fs::create_dir_all(&pg_dir).unwrap();
    let pg = Postgres::start(pg_addr, &pg_dir).unwrap();
    pg.admin_sql("CREATE TABLE orders (id int, customer int);")
        .unwrap();
    let policy_path = dir.join("policy.yaml");
    std::fs::write(&policy_path, WRITES_ALLOWED).unwrap();
    let opts = DaemonOpts {
        destinations: vec![format!("{}:9", lab.node_v4(6))],
        extra_targets: format!(
            "  - name: orders-db\n    protocol: postgres\n    destinations: [\"{pg_addr}\"]\npolicy_file: policy.yaml\n{extra_config}"
        ),
        identity: "identity:\n  standalone:\n    - cgroups: \"pods/app\"\n      namespace: shop\n      service_account: orders-api\n".into(),
        ..Default::default()
    };
    let config = write_config(&lab, &dir, &opts);
    Orders {
        lab,
        pod,
        pg,
        pg_addr,
        dir,
        config,
        policy_path,
    }
}
