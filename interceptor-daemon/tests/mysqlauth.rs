//! MySQL/MariaDB credential injection and upstream TLS through the
//! interceptor: a real MariaDB server (Debian's package) with grant tables and
//! TLS on a test CA, the real `mariadb` client in a lab pod through the eBPF
//! redirect, logging in with a wrong password as a user that does not exist.
//! Privileged: run as root (CI does).

mod common;

use std::{net::Ipv4Addr, path::PathBuf, process::Output};

use common::{mariadb::*, tls::*, *};
use interceptor_daemon::testbed::{Lab, Pod};

const SECRET: &str = "Upstream-Secret-9f3b";

const IDENTITY: &str = "identity:\n  standalone:\n    - cgroups: \"pods/app\"\n      namespace: shop\n      service_account: orders-api\n";

const POLICY: &str = r#"policy:
  default: deny
  rules:
    - id: shop-reads
      identities: ["shop/*"]
      sql: { kinds: [read, utility] }
      action: allow
    - id: mask-emails
      identities: ["shop/*"]
      action: mask
      mask: { columns: ["customers.email"], strategy: partial, keep_last: 4 }
"#;

/// What the session is, as the server sees it.
const WHO: &str = "SELECT CONCAT(CURRENT_USER(), '|', IFNULL(DATABASE(), '-'), '|', (SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_version'))";

struct Setup {
    lab: Lab,
    pod: Pod,
    db: Mariadb,
    daemon: Daemon,
    dir: PathBuf,
}

const PORT: u16 = 3306;

/// Node addresses (the lab's 1-6; 1 is the daemon's): 5 plaintext target, 6
/// verify-full target, 4 require target; 2 the unused default target.
fn setup() -> Setup {
    let dir = scratch("mysqlauth");
    let mut lab = Lab::new().unwrap();
    let pod = lab.add_pod("app", "pods/app").unwrap();
    let ips: Vec<Ipv4Addr> = (4..=6).map(|h| lab.node_v4(h)).collect();
    let (ca, cert, key) = certificates(&ips);
    let tls_dir = dir.join("tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let (ca_file, cert_file, key_file) = (
        tls_dir.join("ca.pem"),
        tls_dir.join("server.pem"),
        tls_dir.join("server.key"),
    );
    std::fs::write(&ca_file, &ca).unwrap();
    std::fs::write(&cert_file, &cert).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    let db = Mariadb::start(
        &dir,
        &MariadbOpts {
            binds: &ips,
            port: PORT,
            grant_tables: true,
            tls: Some((&ca_file, &cert_file, &key_file)),
        },
    );
    db.admin(&format!(
        "CREATE DATABASE shop;
         CREATE TABLE shop.customers (id int PRIMARY KEY, name text, email varchar(100));
         INSERT INTO shop.customers VALUES (1, 'Ada', 'ada@example.com'), (2, 'Grace', 'grace@example.org');
         CREATE VIEW shop.v_contacts AS SELECT id, email AS contact FROM shop.customers;
         CREATE ALGORITHM=TEMPTABLE VIEW shop.v_copy AS SELECT * FROM shop.v_contacts;
         CREATE VIEW shop.v_names AS SELECT id, name FROM shop.customers;
         CREATE USER app@'%' IDENTIFIED BY '{SECRET}';
         GRANT ALL ON shop.* TO app@'%';
         CREATE USER app_tls@'%' IDENTIFIED BY '{SECRET}' REQUIRE SSL;
         GRANT ALL ON shop.* TO app_tls@'%';
         CREATE DEFINER = app@'%' FUNCTION shop.email_of(i int) RETURNS varchar(100)
           READS SQL DATA RETURN (SELECT email FROM shop.customers WHERE id = i);
         CREATE DEFINER = app@'%' FUNCTION shop.name_of(i int) RETURNS text
           READS SQL DATA RETURN (SELECT name FROM shop.customers WHERE id = i);
         CREATE FUNCTION shop.root_name(i int) RETURNS text
           READS SQL DATA RETURN (SELECT name FROM shop.customers WHERE id = i);"
    ))
    .unwrap();
    // Daemon-side copies: the CA the daemon trusts (swapped by the test) and
    // the secret.
    let daemon_ca = dir.join("daemon-ca.pem");
    std::fs::write(&daemon_ca, &ca).unwrap();
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let target = |name: &str, h: u8, user: &str, tls: &str| {
        format!(
            "  - name: {name}\n    protocol: mysql\n    destinations: [\"{}:{PORT}\"]\n    mysql:\n      upstream:\n        user: {user}\n        database: shop\n        password_file: {}\n        tls: {tls}\n",
            lab.node_v4(h),
            secret_file.display()
        )
    };
    let targets = [
        target("plain-db", 5, "app", "{ mode: disable }"),
        target(
            "tls-db",
            6,
            "app_tls",
            &format!(
                "{{ mode: verify-full, ca_file: {}, server_name: db.internal }}",
                daemon_ca.display()
            ),
        ),
        target("encrypted-db", 4, "app_tls", "{ mode: require }"),
    ]
    .concat();
    let opts = DaemonOpts {
        destinations: vec![format!("{}:9", lab.node_v4(2))],
        extra_targets: format!("{targets}{POLICY}"),
        identity: IDENTITY.into(),
        ..Default::default()
    };
    let cfg = write_config(&lab, &dir, &opts);
    let daemon = Daemon::start(&cfg, &dir);
    Setup {
        lab,
        pod,
        db,
        daemon,
        dir,
    }
}

/// The mariadb client inside the pod, through the redirect, as a user the
/// server does not know, with a wrong password.
fn client(s: &Setup, h: u8, sql: &str) -> Output {
    s.pod
        .command("mariadb")
        .unwrap()
        .args(["--no-defaults", "-h"])
        .arg(s.lab.node_v4(h).to_string())
        .args([
            "-P",
            &PORT.to_string(),
            "-u",
            "nobody",
            "-pwrong-password",
            "-N",
            "-B",
        ])
        .args(["-e", sql])
        .output()
        .unwrap()
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
    assert!(o.status.success(), "stderr: {err}");
    assert_eq!(out.trim_end(), want, "stderr: {err}");
}

#[test]
fn mysql_credentials_are_injected_over_tls() {
    if !privileged("mysql_credentials_are_injected_over_tls") {
        return;
    }
    let s = setup();
    let mut outputs = Vec::new();

    // The server knows neither `nobody` nor its password: the daemon logs
    // in as the configured user, in the configured database.
    let plain = client(&s, 5, WHO);
    assert_ok(&plain, "app@%|shop|");
    // verify-full against the test CA, by name; app_tls requires TLS, so the
    // server itself confirms the session is encrypted.
    let verified = client(&s, 6, WHO);
    let (out, err) = text(&verified);
    assert!(
        verified.status.success() && out.starts_with("app_tls@%|shop|TLSv1."),
        "{out} {err}"
    );
    let required = client(&s, 4, WHO);
    let (out, err) = text(&required);
    assert!(out.starts_with("app_tls@%|shop|TLSv1."), "{out} {err}");
    // Statements are still decided: a write is denied by the default.
    let denied = client(&s, 5, "DELETE FROM customers");
    let (_, err) = text(&denied);
    assert!(
        err.contains("ERROR 1142 (42000)") && err.contains("statement denied"),
        "{err}"
    );
    assert_eq!(
        s.db.admin("SELECT count(*) FROM shop.customers")
            .unwrap()
            .trim(),
        "2"
    );
    outputs.extend([plain, verified, required, denied]);

    // Masking: the email column through an alias, an expression and a
    // derived table; the server keeps the real data.
    let masked = client(
        &s,
        5,
        "SELECT id, email AS contact, UPPER(email), name FROM customers ORDER BY id",
    );
    assert_ok(
        &masked,
        "1\t****.com\t****.COM\tAda\n2\t****.org\t****.ORG\tGrace",
    );
    let derived = client(
        &s,
        6,
        "SELECT e FROM (SELECT email AS e FROM customers) t ORDER BY e",
    );
    assert_ok(&derived, "****.com\n****.org");
    // Through views and functions (read once per session from
    // information_schema): a view over the column is masked whole (its id
    // too, not being text: NULL), also under an alias, in an expression and
    // through a TEMPTABLE view of it; a view without the column is not.
    for (h, sql, want) in [
        (
            5,
            "SELECT id, contact FROM v_contacts ORDER BY contact",
            "NULL\t****.com\nNULL\t****.org",
        ),
        (
            6,
            "SELECT LOWER(c.contact) FROM v_contacts c ORDER BY 1",
            "****.com\n****.org",
        ),
        (
            5,
            "SELECT x.contact FROM v_copy x ORDER BY 1",
            "****.com\n****.org",
        ),
        (
            6,
            "SELECT id, name FROM v_names ORDER BY id",
            "1\tAda\n2\tGrace",
        ),
        // Stored functions: one whose body reads the column returns it
        // masked; one reading names does not; one whose body the user
        // cannot read (root's) counts as reading it (fail closed).
        (
            5,
            "SELECT email_of(1), UPPER(email_of(2))",
            "****.com\t****.ORG",
        ),
        (5, "SELECT name_of(1)", "Ada"),
        (5, "SELECT root_name(1)", "[redacted]"),
    ] {
        assert_ok(&client(&s, h, sql), want);
    }
    assert_eq!(
        s.db.admin("SELECT email FROM shop.customers WHERE id = 1")
            .unwrap()
            .trim(),
        "ada@example.com"
    );

    // A CA that did not sign the server's certificate: a clear client error,
    // no plaintext fallback.
    std::fs::write(s.dir.join("daemon-ca.pem"), other_ca()).unwrap();
    let wrong_ca = client(&s, 6, WHO);
    let (out, err) = text(&wrong_ca);
    assert!(!wrong_ca.status.success() && out.is_empty(), "{out}");
    assert!(
        err.contains("interceptor: cannot log in to target `tls-db`")
            && err.contains("invalid peer certificate"),
        "{err}"
    );
    // `require` does not look at the certificate.
    let still = client(&s, 4, WHO);
    assert!(text(&still).0.starts_with("app_tls@%|shop|TLSv1."));
    outputs.extend([wrong_ca, still]);

    // A wrong upstream secret: the server's own refusal reaches the client.
    std::fs::write(s.dir.join("secret"), "not-the-password").unwrap();
    let refused = client(&s, 5, WHO);
    let (_, err) = text(&refused);
    assert!(
        err.contains("ERROR 1045 (28000)") && err.contains("Access denied for user 'app'"),
        "{err}"
    );
    outputs.push(refused);

    for o in &outputs {
        let (out, err) = text(o);
        assert!(
            !out.contains(SECRET) && !err.contains(SECRET),
            "the client saw the secret"
        );
    }
    assert!(
        !s.daemon.raw_log().contains(SECRET),
        "the secret reached the daemon log"
    );
}
