//! Lab "pods" for the tests, the demo and the benchmarks.
//!
//! On a node a pod is a cgroup plus a network namespace. A [`Lab`] builds exactly
//! that with the kernel's own tools: a cgroup v2 directory (the programs attach
//! there), a host-side interface carrying the lab's "node"
//! addresses (listener and service addresses), and per pod a network namespace
//! joined to the host by a veth pair, plus a child cgroup.
//!
//! Addressing: all labs live in 10.77.0.0/20 and fd77::/16 (ULA). Lab `s` owns
//! 10.77.s.0/24: node addresses 10.77.s.1-15 on the dummy, pod `i`'s veth is
//! 10.77.s.(16+4i)/30. A pod gets exactly one route, to the lab's node block via
//! its veth: there is no default route, so nothing can leave the lab even if a
//! redirect fails.
//!
//! Every resource is removed on drop; leftovers of a crashed run in the same slot
//! are removed when the slot is taken again.

use std::{
    ffi::CString,
    fs::File,
    io,
    net::{Ipv4Addr, Ipv6Addr},
    os::{fd::AsRawFd, unix::ffi::OsStrExt, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

/// Number of labs that can exist at once on a machine (10.77.0.0/20).
pub const SLOTS: u8 = 16;
/// Node addresses per lab (10.77.s.1 ..= 10.77.s.6).
pub const NODE_ADDRESSES: u8 = 6;

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mount_point = pre.split_whitespace().nth(4)?;
        (post.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// Why a privileged test cannot run here, or `None` when it can.
pub fn missing_privileges() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (eBPF programs, cgroups, network namespaces)".into());
    }
    if cgroup2_mount().is_none() {
        return Some("needs a cgroup v2 mount".into());
    }
    None
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn ip(args: &[&str]) -> io::Result<()> {
    run(Command::new("ip").args(args))
}

/// A lab: a node address block, a cgroup subtree and the pods in it.
pub struct Lab {
    pub slot: u8,
    /// The cgroup v2 mount.
    pub cgroup_mount: PathBuf,
    /// The lab's cgroup directory: point `redirect.cgroup_root` here.
    pub cgroup_dir: PathBuf,
    dummy: String,
    pods: Vec<Pod>,
    _lock: File,
}

/// One pod: a network namespace, its veth pair and its cgroup.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub netns: String,
    pub host_if: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// The pod's cgroup directory.
    pub cgroup: PathBuf,
    /// Its path relative to the lab's cgroup directory (what a selector names).
    pub cgroup_rel: String,
    pub cgroup_id: u64,
}

impl Lab {
    /// Takes a free slot and creates the lab's cgroup and node interface.
    pub fn new() -> io::Result<Lab> {
        let cgroup_mount = cgroup2_mount().ok_or_else(|| io::Error::other("no cgroup v2 mount"))?;
        let lock_dir = Path::new("/run/interceptor-lab");
        std::fs::create_dir_all(lock_dir)?;
        let (slot, lock) = (0..SLOTS)
            .find_map(|s| {
                let f = File::create(lock_dir.join(format!("slot-{s}.lock"))).ok()?;
                // SAFETY: valid fd owned by `f`.
                (unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0)
                    .then_some((s, f))
            })
            .ok_or_else(|| io::Error::other("all lab slots are busy"))?;
        let lab = Lab {
            slot,
            cgroup_dir: cgroup_mount.join(format!("interceptor-lab-{slot}")),
            cgroup_mount,
            dummy: format!("icl{slot}node"),
            pods: Vec::new(),
            _lock: lock,
        };
        lab.remove_leftovers();
        std::fs::create_dir_all(&lab.cgroup_dir)?;
        // The "node" interface: a veth pair kept in the host namespace (this
        // kernel may have no dummy driver); only the first end carries addresses.
        ip(&[
            "link",
            "add",
            &lab.dummy,
            "type",
            "veth",
            "peer",
            "name",
            &format!("icl{slot}nodx"),
        ])?;
        for h in 1..=NODE_ADDRESSES {
            ip(&[
                "addr",
                "add",
                &format!("{}/32", lab.node_v4(h)),
                "dev",
                &lab.dummy,
            ])?;
            ip(&[
                "addr",
                "add",
                &format!("{}/128", lab.node_v6(h)),
                "dev",
                &lab.dummy,
                "nodad",
            ])?;
        }
        ip(&["link", "set", &lab.dummy, "up"])?;
        ip(&["link", "set", &format!("icl{slot}nodx"), "up"])?;
        Ok(lab)
    }

    /// Node address `h` (1-6) of this lab. 1 is meant for the daemon's listener,
    /// the others for services.
    pub fn node_v4(&self, h: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.slot, h)
    }

    pub fn node_v6(&self, h: u8) -> Ipv6Addr {
        Ipv6Addr::new(0xfd77, u16::from(self.slot), 0, 0, 0, 0, 0, u16::from(h))
    }

    /// Adds a pod whose cgroup is `cgroup_rel` below the lab's cgroup directory.
    pub fn add_pod(&mut self, name: &str, cgroup_rel: &str) -> io::Result<Pod> {
        let i = self.pods.len() as u8;
        if i >= 59 {
            return Err(io::Error::other("a lab holds at most 59 pods"));
        }
        let netns = format!("icl{}-{name}", self.slot);
        let host_if = format!("icl{}h{i}", self.slot);
        let pod_if = format!("icl{}p{i}", self.slot);
        let host_v4 = Ipv4Addr::new(10, 77, self.slot, 16 + 4 * i + 1);
        let v4 = Ipv4Addr::new(10, 77, self.slot, 16 + 4 * i + 2);
        let host_v6 = Ipv6Addr::new(
            0xfd77,
            u16::from(self.slot),
            u16::from(i) + 1,
            0,
            0,
            0,
            0,
            1,
        );
        let v6 = Ipv6Addr::new(
            0xfd77,
            u16::from(self.slot),
            u16::from(i) + 1,
            0,
            0,
            0,
            0,
            2,
        );
        let cgroup = self.cgroup_dir.join(cgroup_rel);
        std::fs::create_dir_all(&cgroup)?;
        let cgroup_id = crate::cgroups::cgroup_id(&cgroup)?;
        // Register first so a failure below still cleans up what was made.
        let pod = Pod {
            name: name.into(),
            netns: netns.clone(),
            host_if: host_if.clone(),
            v4,
            v6,
            cgroup,
            cgroup_rel: cgroup_rel.into(),
            cgroup_id,
        };
        self.pods.push(pod.clone());
        // The previous holder's `netns del` tears its veths down asynchronously:
        // a host end of the same name may still exist for a moment.
        let _ = ip(&["link", "del", &host_if]);
        ip(&["netns", "add", &netns])?;
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &pod_if, "netns", &netns,
        ])?;
        ip(&["addr", "add", &format!("{host_v4}/30"), "dev", &host_if])?;
        ip(&[
            "addr",
            "add",
            &format!("{host_v6}/64"),
            "dev",
            &host_if,
            "nodad",
        ])?;
        ip(&["link", "set", &host_if, "up"])?;
        let n = |args: &[&str]| {
            let mut v = vec!["-n", netns.as_str()];
            v.extend_from_slice(args);
            ip(&v)
        };
        n(&["link", "set", "lo", "up"])?;
        n(&["addr", "add", &format!("{v4}/30"), "dev", &pod_if])?;
        n(&["addr", "add", &format!("{v6}/64"), "dev", &pod_if, "nodad"])?;
        n(&["link", "set", &pod_if, "up"])?;
        // The only way out of the pod: the lab's node block, through the veth.
        n(&[
            "route",
            "add",
            &format!("10.77.{}.0/28", self.slot),
            "via",
            &host_v4.to_string(),
        ])?;
        n(&[
            "-6",
            "route",
            "add",
            &format!("fd77:{:x}::/64", self.slot),
            "via",
            &host_v6.to_string(),
        ])?;
        Ok(pod)
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    fn remove_leftovers(&self) {
        let _ = ip(&["link", "del", &self.dummy]);
        if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
            let prefix = format!("icl{}-", self.slot);
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(ns) = line
                    .split_whitespace()
                    .next()
                    .filter(|n| n.starts_with(&prefix))
                {
                    let _ = ip(&["netns", "del", ns]);
                }
            }
        }
        remove_cgroup_tree(&self.cgroup_dir);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &self.pods {
            let _ = ip(&["netns", "del", &p.netns]);
        }
        let _ = ip(&["link", "del", &self.dummy]);
        remove_cgroup_tree(&self.cgroup_dir);
    }
}

/// Kills every process in a cgroup subtree and removes its directories.
pub fn remove_cgroup_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    let mut dirs = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(e.path());
                }
            }
        }
        dirs.push(d);
    }
    // Deepest first; a killed process may take a moment to leave.
    for d in dirs.iter().rev() {
        for _ in 0..100 {
            if std::fs::remove_dir(d).is_ok() || !d.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Pod {
    /// A command that runs inside the pod: in its cgroup, then in its network
    /// namespace (joined directly with setns, which unlike `ip netns exec` does
    /// not remount /sys).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> io::Result<Command> {
        let procs = CString::new(self.cgroup.join("cgroup.procs").as_os_str().as_bytes())
            .map_err(io::Error::other)?;
        let ns = File::open(Path::new("/run/netns").join(&self.netns))?;
        let mut cmd = Command::new(program);
        // SAFETY: only async-signal-safe calls (open, write, close, setns) on
        // data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let w = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if w != 1 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }
}

/// How a lab PostgreSQL treats lab clients.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// pg_hba.conf lines for lab clients (default: trust for the lab blocks).
    pub hba: Option<String>,
    /// `ssl=on` with this certificate (chain) and key, both PEM.
    pub tls: Option<(String, String)>,
    /// CA (PEM) client certificates are verified against (`ssl_ca_file`),
    /// for `cert` authentication.
    pub client_ca: Option<String>,
}

/// A real PostgreSQL server (Debian's packages) for the lab, run as the
/// `postgres` user with its data in a scratch directory.
pub struct Postgres {
    child: std::process::Child,
    pub addr: std::net::SocketAddr,
    pub dir: PathBuf,
    pub bin: PathBuf,
}

impl Postgres {
    /// The postmaster's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The newest installed server's bin directory.
    pub fn bin_dir() -> io::Result<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")?
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("postgres").exists())
            .collect();
        dirs.sort_by_key(|p| {
            p.parent()
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0)
        });
        dirs.pop().ok_or_else(|| {
            io::Error::other(
                "no PostgreSQL server in /usr/lib/postgresql (apt-get install postgresql)",
            )
        })
    }

    fn postgres_ids() -> io::Result<(u32, u32)> {
        let id = |flag: &str| -> io::Result<u32> {
            let out = Command::new("id").args([flag, "postgres"]).output()?;
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .map_err(|_| io::Error::other("no `postgres` user"))
        };
        Ok((id("-u")?, id("-g")?))
    }

    fn as_postgres(program: &Path, uid: u32, gid: u32) -> Command {
        let mut cmd = Command::new(program);
        // SAFETY: setgid/setuid between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// initdb (trust authentication) and start, listening on `addr` only.
    pub fn start(addr: std::net::SocketAddr, dir: &Path) -> io::Result<Postgres> {
        Self::start_on(addr, &[], dir)
    }

    /// Like [`Postgres::start`], also listening on `also` (same port).
    pub fn start_on(
        addr: std::net::SocketAddr,
        also: &[std::net::IpAddr],
        dir: &Path,
    ) -> io::Result<Postgres> {
        Self::start_with(addr, also, dir, &PgOptions::default())
    }

    /// Like [`Postgres::start_on`], with lab authentication and TLS as `opts` say.
    pub fn start_with(
        addr: std::net::SocketAddr,
        also: &[std::net::IpAddr],
        dir: &Path,
        opts: &PgOptions,
    ) -> io::Result<Postgres> {
        let bin = Self::bin_dir()?;
        let (uid, gid) = Self::postgres_ids()?;
        let data = dir.join("pgdata");
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data)?;
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
        std::os::unix::fs::chown(&data, Some(uid), Some(gid))?;
        run(Self::as_postgres(&bin.join("initdb"), uid, gid)
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]))?;
        // Clients come from the lab block (pods directly, or the daemon).
        let mut hba = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("pg_hba.conf"))?;
        let lab_hba = opts
            .hba
            .as_deref()
            .unwrap_or("host all all 10.77.0.0/16 trust\nhost all all fd77::/16 trust\n");
        io::Write::write_all(&mut hba, lab_hba.as_bytes())?;
        let mut ssl_args = Vec::new();
        if let Some((cert, key)) = &opts.tls {
            // The server refuses a key readable by others; it runs as `postgres`.
            for (name, pem, mode) in [("server.crt", cert, 0o644), ("server.key", key, 0o600)] {
                let path = dir.join(name);
                std::fs::write(&path, pem)?;
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(mode),
                )?;
                ssl_args.push("-c".to_string());
                let setting = if name == "server.crt" {
                    "ssl_cert_file"
                } else {
                    "ssl_key_file"
                };
                ssl_args.push(format!("{setting}={}", path.display()));
            }
            ssl_args.extend(["-c".to_string(), "ssl=on".to_string()]);
            if let Some(ca) = &opts.client_ca {
                let path = dir.join("client-ca.crt");
                std::fs::write(&path, ca)?;
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
                ssl_args.push("-c".to_string());
                ssl_args.push(format!("ssl_ca_file={}", path.display()));
            }
        }
        let log = File::create(dir.join("postgres.log"))?;
        let listen: Vec<String> = std::iter::once(addr.ip())
            .chain(also.iter().copied())
            .map(|i| i.to_string())
            .collect();
        let listen = listen.join(",");
        let child = Self::as_postgres(&bin.join("postgres"), uid, gid)
            .arg("-D")
            .arg(&data)
            .args([
                "-c",
                &format!("listen_addresses={listen}"),
                "-c",
                &format!("port={}", addr.port()),
            ])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.display()))
            .args(["-c", "fsync=off", "-c", "max_connections=300"])
            .args(&ssl_args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let pg = Postgres {
            child,
            addr,
            dir: dir.into(),
            bin,
        };
        for _ in 0..200 {
            let ok = Command::new(pg.bin.join("pg_isready"))
                .args([
                    "-q",
                    "-h",
                    &addr.ip().to_string(),
                    "-p",
                    &addr.port().to_string(),
                ])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(pg);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(io::Error::other(format!(
            "PostgreSQL did not start; see {}",
            dir.join("postgres.log").display()
        )))
    }

    /// Runs SQL as the superuser over the server's unix socket (bypassing the
    /// lab network: this is the operator setting things up).
    pub fn admin_sql(&self, sql: &str) -> io::Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-At",
                "-U",
                "postgres",
                "-h",
            ])
            .arg(&self.dir)
            .args(["-p", &self.addr.port().to_string(), "-c", sql])
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}
