//! Credential injection and upstream TLS: a real PostgreSQL that demands
//! passwords (SCRAM-SHA-256, md5) or TLS, real psql in a lab pod that has no
//! password (or a wrong one), the eBPF redirect, and the daemon logging in
//! with a secret only it holds. Privileged: run as root (CI does).

mod common;

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{tls::*, *};
use interceptor_daemon::testbed::{Lab, PgOptions, Pod, Postgres};

const SECRET: &str = "Inj3cted-Only-The-Node-Knows";
const MD5_SECRET: &str = "md5-Secret-From-The-Env";

const POLICY: &str = r#"policy:
  default: deny
  rules:
    - id: shop-apps
      identities: ["shop/*"]
      sql: { kinds: [read, write, transaction, utility] }
      action: allow
"#;

const IDENTITY: &str = "identity:\n  standalone:\n    - cgroups: \"pods/app\"\n      namespace: shop\n      service_account: orders-api\n";

const WHO: &str = "SELECT current_user || '|' || current_database() || '|' || current_setting('application_name') || '|' || coalesce((SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()), '?')";

struct Setup {
    lab: Lab,
    pod: Pod,
    pg: Postgres,
    daemon: Daemon,
    dir: PathBuf,
}

fn target(name: &str, dst: SocketAddr, upstream: &str) -> String {
    format!(
        "  - name: {name}\n    protocol: postgres\n    destinations: [\"{dst}\"]\n    postgres:\n      upstream:\n{upstream}"
    )
}

/// A lab with one PostgreSQL listening on node addresses 2-5 (port 5432).
fn lab_and_pg(test: &str, opts: &PgOptions) -> (Lab, Pod, Postgres, PathBuf) {
    let dir = scratch(test);
    let mut lab = Lab::new().unwrap();
    let pod = lab.add_pod("app", "pods/app").unwrap();
    let pg_dir = dir.join("pg");
    std::fs::create_dir_all(&pg_dir).unwrap();
    let also: Vec<std::net::IpAddr> = (3..=5).map(|h| lab.node_v4(h).into()).collect();
    let pg = Postgres::start_with((lab.node_v4(2), 5432).into(), &also, &pg_dir, opts).unwrap();
    (lab, pod, pg, dir)
}

fn start_daemon(lab: &Lab, dir: &Path, targets: &str, env: &[(&str, &str)]) -> Daemon {
    let opts = DaemonOpts {
        // The default `svc` target needs a destination: one nobody uses.
        destinations: vec![format!("{}:9", lab.node_v4(6))],
        extra_targets: format!("{targets}{POLICY}"),
        identity: IDENTITY.into(),
        ..Default::default()
    };
    let cfg = write_config(lab, dir, &opts);
    let mut cmd = Command::new(DAEMON);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Daemon::start_with(cmd, &cfg, dir)
}

fn node(s: &Setup, h: u8) -> Ipv4Addr {
    s.lab.node_v4(h)
}

/// psql in the pod, with no password (`None`) or a given one, never prompting.
fn psql_cmd(s: &Setup, host: Ipv4Addr, password: Option<&str>, db: &str, sql: &str) -> Command {
    let mut cmd = s.pod.command(s.pg.bin.join("psql")).unwrap();
    cmd.env_remove("PGPASSWORD")
        .env("PGPASSFILE", "/nonexistent/pgpass")
        .env("PGAPPNAME", "pod-app")
        .env("PGCONNECT_TIMEOUT", "20");
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    cmd.args([
        "-X",
        "-w",
        "-At",
        "-v",
        "VERBOSITY=verbose",
        "-h",
        &host.to_string(),
        "-U",
        "workload",
        "-d",
        db,
        "-c",
        sql,
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    cmd
}

// libpq prints no SQLSTATE for errors before the session is up (there is no
// verbosity setting for the connection phase); the unit tests check the codes.

/// Runs with a deadline: a login that hangs is a failure, not a stuck test.
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "psql did not finish in {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn psql(s: &Setup, host: Ipv4Addr, password: Option<&str>, db: &str, sql: &str) -> Output {
    output_within(
        psql_cmd(s, host, password, db, sql),
        Duration::from_secs(40),
    )
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[track_caller]
fn assert_ok(o: &Output, want: &str) {
    let (out, err) = text(o);
    assert!(o.status.success(), "psql failed: {err}");
    assert_eq!(out.trim(), want, "{err}");
}

#[track_caller]
fn assert_fails_with(o: &Output, wants: &[&str]) {
    let (out, err) = text(o);
    assert!(!o.status.success(), "psql succeeded: {out}");
    for w in wants {
        assert!(err.contains(w), "`{w}` not in: {err}");
    }
}

#[track_caller]
fn assert_no_secret(s: &Setup, outputs: &[&Output]) {
    for o in outputs {
        let (out, err) = text(o);
        for secret in [SECRET, MD5_SECRET, "Rotated-Secret"] {
            assert!(
                !out.contains(secret) && !err.contains(secret),
                "the client saw a secret"
            );
        }
    }
    let log = s.daemon.raw_log();
    for secret in [SECRET, MD5_SECRET, "Rotated-Secret"] {
        assert!(!log.contains(secret), "a secret reached the daemon log");
    }
}

/// Cancels a long query with psql's own CancelRequest (SIGINT), through the
/// redirect; the server must cancel the statement.
fn assert_cancel_works(s: &Setup, host: Ipv4Addr) {
    let child = psql_cmd(s, host, None, "shop", "SELECT pg_sleep(30)")
        .spawn()
        .unwrap();
    // Let the query start.
    let start = Instant::now();
    loop {
        let n = s
            .pg
            .admin_sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%' AND state = 'active'")
            .unwrap();
        if n.trim() == "1" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "query never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let begun = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        begun.elapsed() < Duration::from_secs(15),
        "cancel did not work"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("canceling statement due to user request"),
        "{err}"
    );
}

fn setup_passwords() -> (Lab, Pod, Postgres, PathBuf) {
    let hba = "host all app_md5 10.77.0.0/16 md5\nhost all app_trust 10.77.0.0/16 trust\nhost all all 10.77.0.0/16 scram-sha-256\n";
    let (lab, pod, pg, dir) = lab_and_pg(
        "pgauth-pw",
        &PgOptions {
            hba: Some(hba.into()),
            tls: None,
            client_ca: None,
        },
    );
    pg.admin_sql(&format!(
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE app LOGIN PASSWORD '{SECRET}'; \
         SET password_encryption = 'md5'; CREATE ROLE app_md5 LOGIN PASSWORD '{MD5_SECRET}'; \
         CREATE ROLE app_trust LOGIN;"
    ))
    .unwrap();
    // Only the md5 role's verifier is md5: otherwise the server would use SCRAM.
    assert_eq!(
        pg.admin_sql("SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = 'app_md5'")
            .unwrap()
            .trim(),
        "md5"
    );
    pg.admin_sql("CREATE DATABASE shop").unwrap();
    pg.admin_sql("GRANT ALL ON DATABASE shop TO app, app_md5, app_trust")
        .unwrap();
    (lab, pod, pg, dir)
}

#[test]
fn passwords_are_injected_scram_md5_trust() {
    if !privileged("passwords_are_injected_scram_md5_trust") {
        return;
    }
    let (lab, pod, pg, dir) = setup_passwords();
    let secret_file = dir.join("customers-db.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let port = |h| SocketAddr::from((lab.node_v4(h), 5432));
    let targets = [
        target(
            "customers-db",
            port(2),
            &format!(
                "        user: app\n        database: shop\n        password_file: {}\n",
                secret_file.display()
            ),
        ),
        target(
            "md5-db",
            port(3),
            "        user: app_md5\n        password_env: ICPT_TEST_MD5_PASSWORD\n",
        ),
        target("trust-db", port(4), "        user: app_trust\n"),
        // This server has no TLS: `require` must fail, not fall back.
        target(
            "tls-less-db",
            port(5),
            "        user: app_trust\n        tls: { mode: require }\n",
        ),
    ]
    .concat();
    let daemon = start_daemon(
        &lab,
        &dir,
        &targets,
        &[("ICPT_TEST_MD5_PASSWORD", MD5_SECRET)],
    );
    let s = Setup {
        lab,
        pod,
        pg,
        daemon,
        dir,
    };

    // (a) SCRAM: no password, then a wrong one; the daemon's credential is used.
    let no_pw = psql(&s, node(&s, 2), None, "whatever", WHO);
    assert_ok(&no_pw, "app|shop|pod-app|false");
    let wrong_pw = psql(&s, node(&s, 2), Some("not-the-password"), "whatever", WHO);
    assert_ok(&wrong_pw, "app|shop|pod-app|false");
    // Policy keeps deciding in an injected session.
    let denied = psql(&s, node(&s, 2), None, "shop", "CREATE TABLE t (i int)");
    assert_fails_with(&denied, &["42501", "identity shop/orders-api"]);
    // (b) md5, password from the daemon's environment; database: the client's.
    let md5 = psql(&s, node(&s, 3), None, "shop", WHO);
    assert_ok(&md5, "app_md5|shop|pod-app|false");
    // (c) trust.
    let trust = psql(&s, node(&s, 4), None, "shop", WHO);
    assert_ok(&trust, "app_trust|shop|pod-app|false");
    // `require` against a server without TLS: a clear error, no plaintext.
    let no_tls = psql(&s, node(&s, 5), None, "shop", WHO);
    assert_fails_with(&no_tls, &["FATAL", "`tls-less-db`", "does not accept TLS"]);
    assert_cancel_works(&s, node(&s, 2));
    // A startup option that would switch role outside policy is refused.
    let mut cmd = psql_cmd(&s, node(&s, 2), None, "shop", WHO);
    cmd.env("PGOPTIONS", "-c role=postgres");
    let role_switch = output_within(cmd, Duration::from_secs(40));
    assert_fails_with(
        &role_switch,
        &["FATAL", "`customers-db`", "startup parameter `options`"],
    );

    // (e) The server's password changes first: the client gets its error.
    s.pg.admin_sql("ALTER ROLE app PASSWORD 'Rotated-Secret'")
        .unwrap();
    let stale = psql(&s, node(&s, 2), None, "shop", WHO);
    assert_fails_with(
        &stale,
        &["FATAL", "password authentication failed for user \"app\""],
    );
    // Rotation: the file is read at each connection, no restart.
    std::fs::write(&secret_file, "Rotated-Secret").unwrap();
    let rotated = psql(&s, node(&s, 2), None, "shop", WHO);
    assert_ok(&rotated, "app|shop|pod-app|false");
    // (f) A missing secret file: FATAL naming the target, at once.
    std::fs::remove_file(&secret_file).unwrap();
    let started = Instant::now();
    let missing = psql(&s, node(&s, 2), None, "shop", WHO);
    assert_fails_with(&missing, &["FATAL", "`customers-db`", "password_file"]);
    assert!(started.elapsed() < Duration::from_secs(10));

    assert_no_secret(
        &s,
        &[
            &no_pw, &wrong_pw, &denied, &md5, &trust, &no_tls, &stale, &rotated, &missing,
        ],
    );
    let lines = s.daemon.lines();
    let failure = lines
        .iter()
        .find(|l| {
            l["message"] == "upstream login failed; the client gets a FATAL error"
                && l["target_name"] == "customers-db"
                && l["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("password authentication failed"))
        })
        .unwrap_or_else(|| panic!("no login failure logged: {}", s.daemon.raw_log()));
    assert_eq!(failure["identity"], "shop/orders-api");
    assert_eq!(failure["upstream_user"], "app");
    let _ = &s.dir;
}

/// A lab with PostgreSQL on node address 2 (and `also`) with `ssl=on`: a
/// certificate for db.internal and the node addresses `cert_hosts`, `hba`,
/// a role `app` with password [`SECRET`], a database `shop`. With
/// `client_cn`, the server checks client certificates against its CA and
/// `client` holds one for that name (PEM certificate and key).
struct TlsLab {
    lab: Lab,
    pod: Pod,
    pg: Postgres,
    dir: PathBuf,
    ca: String,
    client: (String, String),
}

fn tls_lab(
    test: &str,
    cert_hosts: &[u8],
    also: &[u8],
    hba: &str,
    client_cn: Option<&str>,
) -> TlsLab {
    // The lab slot decides the addresses, so the certificate is made after it.
    let mut lab = Lab::new().unwrap();
    let pod = lab.add_pod("app", "pods/app").unwrap();
    let dir = scratch(test);
    let ips: Vec<Ipv4Addr> = cert_hosts.iter().map(|h| lab.node_v4(*h)).collect();
    let (ca, cert, key, client) = certificates_and_client(&ips, client_cn.unwrap_or("app"));
    let pg_dir = dir.join("pg");
    std::fs::create_dir_all(&pg_dir).unwrap();
    let also: Vec<std::net::IpAddr> = also.iter().map(|h| lab.node_v4(*h).into()).collect();
    let pg = Postgres::start_with(
        (lab.node_v4(2), 5432).into(),
        &also,
        &pg_dir,
        &PgOptions {
            hba: Some(hba.into()),
            tls: Some((cert, key)),
            client_ca: client_cn.map(|_| ca.clone()),
        },
    )
    .unwrap();
    pg.admin_sql(&format!("CREATE ROLE app LOGIN PASSWORD '{SECRET}'"))
        .unwrap();
    pg.admin_sql("CREATE DATABASE shop").unwrap();
    TlsLab {
        lab,
        pod,
        pg,
        dir,
        ca,
        client,
    }
}

impl TlsLab {
    /// Writes `pem` to a file of the scratch directory.
    fn file(&self, name: &str, pem: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, pem).unwrap();
        p
    }

    fn port(&self, h: u8) -> SocketAddr {
        (self.lab.node_v4(h), 5432).into()
    }

    /// Starts the daemon with `targets`.
    fn start(self, targets: &str) -> Setup {
        let daemon = start_daemon(&self.lab, &self.dir, targets, &[]);
        Setup {
            lab: self.lab,
            pod: self.pod,
            pg: self.pg,
            daemon,
            dir: self.dir,
        }
    }
}

#[test]
fn upstream_tls_require_and_verify_full() {
    if !privileged("upstream_tls_require_and_verify_full") {
        return;
    }
    // Plaintext sessions are refused by the server itself.
    let hba = "hostssl all all 10.77.0.0/16 scram-sha-256\nhostnossl all all 10.77.0.0/16 reject\n";
    let t = tls_lab("pgauth-tls", &[2, 3], &[3, 4, 5], hba, None);
    let secret_file = t.file("secret", SECRET);
    let ca_file = t.file("ca.pem", &t.ca);
    let port = |h| t.port(h);
    let creds = format!(
        "        user: app\n        database: shop\n        password_file: {}\n",
        secret_file.display()
    );
    let targets = [
        target(
            "verified-db",
            port(2),
            &format!(
                "{creds}        tls: {{ mode: verify-full, ca_file: {}, server_name: db.internal }}\n",
                ca_file.display()
            ),
        ),
        // No server_name: the destination IP must be in the certificate.
        target(
            "by-ip-db",
            port(3),
            &format!(
                "{creds}        tls: {{ mode: verify-full, ca_file: {} }}\n",
                ca_file.display()
            ),
        ),
        target(
            "wrong-name-db",
            port(4),
            &format!(
                "{creds}        tls: {{ mode: verify-full, ca_file: {}, server_name: other.internal }}\n",
                ca_file.display()
            ),
        ),
        target(
            "encrypted-db",
            port(5),
            &format!("{creds}        tls: {{ mode: require }}\n"),
        ),
    ]
    .concat();
    let s = t.start(&targets);

    // (d) verify-full and require work, and the server sees TLS sessions.
    let verified = psql(&s, node(&s, 2), None, "x", WHO);
    assert_ok(&verified, "app|shop|pod-app|true");
    let by_ip = psql(&s, node(&s, 3), None, "x", WHO);
    assert_ok(&by_ip, "app|shop|pod-app|true");
    let required = psql(&s, node(&s, 5), None, "x", WHO);
    assert_ok(&required, "app|shop|pod-app|true");
    // A certificate for another name fails verify-full.
    let wrong_name = psql(&s, node(&s, 4), None, "x", WHO);
    assert_fails_with(&wrong_name, &["FATAL", "`wrong-name-db`", "TLS handshake"]);
    assert_cancel_works(&s, node(&s, 2));
    // A CA that did not sign the server's certificate: a clear client error.
    std::fs::write(s.dir.join("ca.pem"), other_ca()).unwrap();
    let wrong_ca = psql(&s, node(&s, 2), None, "x", WHO);
    assert_fails_with(
        &wrong_ca,
        &[
            "FATAL",
            "`verified-db`",
            "TLS handshake",
            "invalid peer certificate",
        ],
    );
    // `require` does not look at the certificate.
    let still = psql(&s, node(&s, 5), None, "x", WHO);
    assert_ok(&still, "app|shop|pod-app|true");
    assert_no_secret(
        &s,
        &[&verified, &by_ip, &required, &wrong_name, &wrong_ca, &still],
    );
}

/// `verify-ca` checks the chain but not the name (a server reached by an
/// address its certificate does not carry), and a client certificate logs
/// the daemon in where the server authenticates by certificate (`hostssl …
/// cert`): no password anywhere. Without the certificate the server refuses.
#[test]
fn upstream_tls_verify_ca_and_client_certificates() {
    if !privileged("upstream_tls_verify_ca_and_client_certificates") {
        return;
    }
    // The server certificate names db.internal and address 2 only.
    let hba = "hostssl all all 10.77.0.0/16 cert\nhostnossl all all 10.77.0.0/16 reject\n";
    let t = tls_lab("pgauth-clientcert", &[2], &[3, 4, 5], hba, Some("app"));
    let ca_file = t.file("ca.pem", &t.ca);
    let cert_file = t.file("client.pem", &t.client.0);
    let key_file = t.file("client.key", &t.client.1);
    let port = |h| t.port(h);
    let creds = "        user: app\n        database: shop\n";
    let client = format!(
        "client_cert_file: {}, client_key_file: {}",
        cert_file.display(),
        key_file.display()
    );
    let targets = [
        // Address 3 is not in the certificate: verify-ca does not mind.
        target(
            "ca-db",
            port(3),
            &format!(
                "{creds}        tls: {{ mode: verify-ca, ca_file: {}, {client} }}\n",
                ca_file.display()
            ),
        ),
        // verify-full does.
        target(
            "full-db",
            port(4),
            &format!(
                "{creds}        tls: {{ mode: verify-full, ca_file: {}, {client} }}\n",
                ca_file.display()
            ),
        ),
        target(
            "no-cert-db",
            port(5),
            &format!(
                "{creds}        tls: {{ mode: verify-ca, ca_file: {} }}\n",
                ca_file.display()
            ),
        ),
    ]
    .concat();
    let s = t.start(&targets);

    let ok = psql(&s, node(&s, 3), None, "x", WHO);
    assert_ok(&ok, "app|shop|pod-app|true");
    let full = psql(&s, node(&s, 4), None, "x", WHO);
    assert_fails_with(&full, &["FATAL", "`full-db`", "TLS handshake"]);
    let no_cert = psql(&s, node(&s, 5), None, "x", WHO);
    assert_fails_with(&no_cert, &["FATAL", "certificate"]);
    // A CA that did not sign the server's certificate fails verify-ca too.
    std::fs::write(s.dir.join("ca.pem"), other_ca()).unwrap();
    let wrong_ca = psql(&s, node(&s, 3), None, "x", WHO);
    assert_fails_with(
        &wrong_ca,
        &[
            "FATAL",
            "`ca-db`",
            "TLS handshake",
            "invalid peer certificate",
        ],
    );
    assert_no_secret(&s, &[&ok, &full, &no_cert, &wrong_ca]);
}

/// A relay in the middle that terminates TLS with a certificate of its own
/// and opens its own TLS session to the server (what `require`, which does
/// not check certificates, cannot notice), relaying the login in between.
/// Runs on its own thread until the returned guard is dropped (its address
/// may serve another test's lab after this one).
fn tls_relay(listen: SocketAddr, server: SocketAddr, server_ca: &str) -> RelayGuard {
    use rustls_pki_types::pem::PemObject;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_, cert, key) = certificates(&[Ipv4Addr::new(127, 0, 0, 1)]);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let accept = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(server_ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let connect = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(accept));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(connect));
    let listener = std::net::TcpListener::bind(listen).unwrap();
    listener.set_nonblocking(true).unwrap();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let mut c = tokio::select! {
                    a = listener.accept() => match a {
                        Ok((c, _)) => c,
                        Err(_) => return,
                    },
                    _ = &mut stopped => return,
                };
                let (acceptor, connector) = (acceptor.clone(), connector.clone());
                tokio::spawn(async move {
                    // SSLRequest from the daemon: yes.
                    let mut req = [0u8; 8];
                    c.read_exact(&mut req).await?;
                    c.write_all(b"S").await?;
                    let mut c = acceptor.accept(c).await?;
                    let mut s = tokio::net::TcpStream::connect(server).await?;
                    s.write_all(&req).await?;
                    let mut answer = [0u8; 1];
                    s.read_exact(&mut answer).await?;
                    let name = rustls_pki_types::ServerName::try_from("db.internal").unwrap();
                    let mut s = connector.connect(name, s).await?;
                    tokio::io::copy_bidirectional(&mut c, &mut s).await?;
                    Ok::<_, std::io::Error>(())
                });
            }
        });
    });
    RelayGuard(Some((stop, thread)))
}

/// Stops the relay (its runtime and every relayed connection) when dropped.
struct RelayGuard(
    Option<(
        tokio::sync::oneshot::Sender<()>,
        std::thread::JoinHandle<()>,
    )>,
);

impl Drop for RelayGuard {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.0.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}

/// Over TLS the daemon's SCRAM login is bound to the TLS session
/// (SCRAM-SHA-256-PLUS, `tls-server-end-point`): a relay in the middle that
/// holds its own certificate cannot pass the login on, even in `require`
/// mode; the same target without the relay logs in.
#[test]
fn scram_is_bound_to_the_tls_session() {
    if !privileged("scram_is_bound_to_the_tls_session") {
        return;
    }
    let hba = "hostssl all all 10.77.0.0/16 scram-sha-256\nhostnossl all all 10.77.0.0/16 reject\n";
    let t = tls_lab("pgauth-binding", &[2], &[], hba, None);
    let relay = t.port(5);
    let _relay = tls_relay(relay, t.port(2), &t.ca);
    let secret_file = t.file("secret", SECRET);
    let upstream = format!(
        "        user: app\n        database: shop\n        password_file: {}\n        tls: {{ mode: require }}\n",
        secret_file.display()
    );
    let targets = [
        target("direct-db", t.port(2), &upstream),
        target("relayed-db", relay, &upstream),
    ]
    .concat();
    let s = t.start(&targets);
    let direct = psql(&s, node(&s, 2), None, "x", WHO);
    assert_ok(&direct, "app|shop|pod-app|true");
    let relayed = psql(&s, node(&s, 5), None, "x", WHO);
    assert_fails_with(&relayed, &["FATAL", "channel binding"]);
    assert_no_secret(&s, &[&direct, &relayed]);
}
