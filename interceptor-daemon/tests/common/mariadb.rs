//! A real MariaDB server (Debian's package) with its data in a scratch
//! directory, for the MySQL tests.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct MariadbOpts<'a> {
    /// Addresses to listen on (the first is [`Mariadb::addr`]).
    pub binds: &'a [Ipv4Addr],
    pub port: u16,
    /// Off: `--skip-grant-tables`, anyone logs in as anyone.
    pub grant_tables: bool,
    /// CA, certificate and key files for TLS.
    pub tls: Option<(&'a Path, &'a Path, &'a Path)>,
}

pub struct Mariadb {
    child: Child,
    socket: PathBuf,
    pub addr: SocketAddr,
}

impl Mariadb {
    pub fn start(dir: &Path, o: &MariadbOpts<'_>) -> Mariadb {
        let data = dir.join("mysql-data");
        // A temporary directory of its own: a starting server deletes every
        // `#sql*` file in its tmpdir, which in a shared /tmp are the
        // temporary tables of another test's mariadb-install-db, still running.
        let tmp = dir.join("mysql-tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let out = Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=root", "--skip-test-db"])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .output()
            .expect("mariadb-install-db (apt-get install mariadb-server; cargo xtask setup does)");
        assert!(
            out.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let socket = dir.join("mysql.sock");
        let binds: Vec<String> = o.binds.iter().map(ToString::to_string).collect();
        let mut cmd = Command::new("mariadbd");
        cmd.args(["--no-defaults", "--user=root"])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", dir.join("mysql.pid").display()))
            .arg(format!("--log-error={}", dir.join("mysql.err").display()))
            .arg(format!("--bind-address={}", binds.join(",")))
            .arg(format!("--port={}", o.port))
            .args(["--skip-name-resolve", "--innodb-buffer-pool-size=16M"]);
        if !o.grant_tables {
            cmd.arg("--skip-grant-tables");
        }
        if let Some((ca, cert, key)) = o.tls {
            cmd.arg(format!("--ssl-ca={}", ca.display()))
                .arg(format!("--ssl-cert={}", cert.display()))
                .arg(format!("--ssl-key={}", key.display()));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd");
        let addr = SocketAddr::from((o.binds[0], o.port));
        let m = Mariadb {
            child,
            socket,
            addr,
        };
        let start = Instant::now();
        while !m.admin("SELECT 1").is_ok_and(|o| o.trim() == "1") {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "mariadbd did not start on {binds:?} port {}: {}",
                o.port,
                std::fs::read_to_string(dir.join("mysql.err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    /// SQL as root over the unix socket (not intercepted).
    pub fn admin(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("mariadb")
            .args(["--no-defaults", "-u", "root", "-N", "-B"])
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-e", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
