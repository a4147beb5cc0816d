//! Shared harness of the privileged integration tests: a lab (real netns + veth
//! + cgroup pods), the real daemon binary, and the probe as client and server.
#![allow(dead_code)]

use std::{
    fs,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use interceptor_daemon::testbed::{self, Lab, Pod};
use serde_json::Value;

pub mod mariadb;
pub mod mywire;
pub mod orders;
pub mod pgwire;
pub mod talk;
pub mod tls;

pub const DAEMON: &str = env!("CARGO_BIN_EXE_interceptor");
pub const PROBE: &str = env!("CARGO_BIN_EXE_interceptor-probe");

/// Returns false (after printing why) when a privileged test cannot run here.
/// With INTERCEPTOR_REQUIRE_PRIVILEGED set (CI does), it fails instead, so a
/// privileged test can never pass by being skipped.
pub fn privileged(test: &str) -> bool {
    match testbed::missing_privileges() {
        None => {
            assert_bpffs();
            true
        }
        Some(why) => {
            if std::env::var_os("INTERCEPTOR_REQUIRE_PRIVILEGED").is_some() {
                panic!(
                    "{test}: privileged test cannot run: {why}, and INTERCEPTOR_REQUIRE_PRIVILEGED is set"
                );
            }
            // Straight to fd 2: libtest captures eprintln! of passing tests, and a
            // skip must be seen.
            let msg = format!(
                "SKIPPED {test}: {why}. Run the tests as root (`sudo -E cargo xtask test`) to include it.\n"
            );
            // SAFETY: write(2) of an owned buffer to fd 2.
            unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
            false
        }
    }
}

fn assert_bpffs() {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    assert!(
        mounts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf ")),
        "bpffs is not mounted at /sys/fs/bpf: run `mount -t bpf bpf /sys/fs/bpf` (cargo xtask test does)"
    );
}

/// The `orders-write` rule of the PostgreSQL and MySQL tests' policies, as
/// it appears in their daemon configurations.
pub const ORDERS_WRITE: &str = "    - id: orders-write\n      identities: [\"shop/*\"]\n      sql: { kinds: [write], tables: [\"orders\"] }\n      action: allow\n";

/// `interceptor policy ARGS...`'s standard output; the command must succeed.
pub fn policy_cli(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(DAEMON)
        .arg("policy")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `policy learn` over an audit log, written to `DIR/../learned.yaml`:
/// the proposed policy's text and its file.
pub fn policy_learn(audit: &Path) -> (String, PathBuf) {
    let text = policy_cli(&["learn".as_ref(), "--audit".as_ref(), audit.as_os_str()]);
    let file = audit.parent().unwrap().join("learned.yaml");
    fs::write(&file, &text).unwrap();
    (text, file)
}

/// `policy simulate --json` of a candidate policy file over an audit log.
pub fn policy_simulate(policy: &Path, audit: &Path) -> Value {
    let out = policy_cli(&[
        "simulate".as_ref(),
        "--json".as_ref(),
        "--policy".as_ref(),
        policy.as_os_str(),
        "--audit".as_ref(),
        audit.as_os_str(),
    ]);
    serde_json::from_str(&out).unwrap()
}

/// A daemon configuration's `policy:` section (indented under it) as a
/// policy file without the rule whose whole block is `rule`, written to
/// `DIR/../candidate.yaml` beside the audit log `dir`.
pub fn candidate_without(section: &str, rule: &str, dir: &Path) -> PathBuf {
    // One level (two spaces) less indentation: out from under `policy:`.
    fn outdent<'a>(lines: impl Iterator<Item = &'a str>) -> String {
        lines
            .map(|l| format!("{}\n", l.strip_prefix("  ").unwrap_or(l)))
            .collect()
    }
    let text = outdent(section.lines().skip(1));
    let rule = outdent(rule.lines());
    assert!(
        text.contains(&rule),
        "no such rule block:\n{rule}\nin:\n{text}"
    );
    let file = dir.parent().unwrap().join("candidate.yaml");
    fs::write(&file, text.replace(&rule, "")).unwrap();
    file
}

/// Scratch directory for one test's files (database clusters, logs, audit
/// logs: a MariaDB data directory alone is over 100 MB). Removed when the
/// test binary exits, unless a test of it failed: then they are kept for
/// a look, and their paths printed.
pub fn scratch(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("interceptor-test-{}-{test}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    scratch_cleanup::register(d.clone());
    d
}

mod scratch_cleanup {
    use std::{
        path::PathBuf,
        sync::{
            Mutex, Once,
            atomic::{AtomicBool, Ordering},
        },
    };

    static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    static FAILED: AtomicBool = AtomicBool::new(false);
    static INSTALL: Once = Once::new();

    pub fn register(dir: PathBuf) {
        INSTALL.call_once(|| {
            // A failing test panics: remember it, then report as before.
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                FAILED.store(true, Ordering::SeqCst);
                previous(info)
            }));
            // libtest's main returns through exit(3), which runs this after
            // every test (and every server a test started) is done.
            // SAFETY: registers a function taking and returning nothing.
            unsafe { libc::atexit(at_exit) };
        });
        DIRS.lock().unwrap_or_else(|e| e.into_inner()).push(dir);
    }

    extern "C" fn at_exit() {
        let dirs = std::mem::take(&mut *DIRS.lock().unwrap_or_else(|e| e.into_inner()));
        if FAILED.load(Ordering::SeqCst) {
            let msg = format!(
                "kept the scratch directories of this test binary (a test failed):\n{}\n",
                dirs.iter()
                    .map(|d| format!("  {}", d.display()))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            // SAFETY: write(2) of an owned buffer to fd 2.
            unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
            return;
        }
        for d in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

pub struct DaemonOpts {
    pub select: Vec<String>,
    pub destinations: Vec<String>,
    pub fail_mode: &'static str,
    pub with_v6: bool,
    pub extra_targets: String,
    /// The `identity:` section.
    pub identity: String,
    /// `proxy.threads`; `None` leaves the default (`auto`: one thread on a
    /// machine of up to four CPUs, the single-threaded scheduler).
    pub threads: Option<u16>,
}

impl Default for DaemonOpts {
    fn default() -> Self {
        Self {
            select: vec!["pods/*".into()],
            destinations: vec![],
            fail_mode: "closed",
            with_v6: true,
            extra_targets: String::new(),
            identity: "identity:\n  standalone:\n    - cgroups: \"pods/*\"\n      namespace: lab\n      service_account: \"{name}\"\n".into(),
            threads: None,
        }
    }
}

pub fn pin_dir(lab: &Lab) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/interceptor-lab-{}", lab.slot))
}

/// The daemon's admin endpoint in a lab (loopback, one port per lab slot).
pub fn admin_addr(lab: &Lab) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 19_100 + u16::from(lab.slot)))
}

/// A plain HTTP/1.1 GET; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("admin endpoint reachable");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of one sample line in an OpenMetrics exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// `interceptor_decisions_total` of one target, action and rule in a
/// metrics page.
pub fn decisions(text: &str, target: &str, action: &str, rule: &str) -> Option<f64> {
    metric(
        text,
        &format!(
            r#"interceptor_decisions_total{{target="{target}",action="{action}",rule="{rule}"}}"#
        ),
    )
}

pub fn write_config(lab: &Lab, dir: &Path, o: &DaemonOpts) -> PathBuf {
    let v6 = if o.with_v6 {
        format!("  address_v6: \"[{}]:15001\"\n", lab.node_v6(1))
    } else {
        String::new()
    };
    let select: Vec<String> = o.select.iter().map(|s| format!("\"{s}\"")).collect();
    let dests: Vec<String> = o.destinations.iter().map(|s| format!("\"{s}\"")).collect();
    let threads = o
        .threads
        .map(|n| format!("  threads: {n}\n"))
        .unwrap_or_default();
    let text = format!(
        "node_name: lab-node\nadmin:\n  address: {}\nlistener:\n  address: {}:15001\n{v6}redirect:\n  cgroup_root: {}\n  pin_dir: {}\n  select_cgroups: [{}]\n  fail_mode: {}\n  rescan_interval_ms: 200\nproxy:\n  shutdown_grace_ms: 200\n{threads}targets:\n  - name: svc\n    destinations: [{}]\n{}{}",
        admin_addr(lab),
        lab.node_v4(1),
        lab.cgroup_dir.display(),
        pin_dir(lab).display(),
        select.join(", "),
        o.fail_mode,
        dests.join(", "),
        o.extra_targets,
        o.identity,
    );
    let path = dir.join("config.yaml");
    fs::write(&path, text).unwrap();
    path
}

/// The real daemon binary, logging JSON lines to a file.
pub struct Daemon {
    pub child: Option<Child>,
    pub log: PathBuf,
    pub config: PathBuf,
}

impl Daemon {
    /// Starts a daemon that must take over the programs an earlier one left
    /// attached (pinned).
    pub fn start_taking_over(config: &Path, dir: &Path) -> Daemon {
        let d = Daemon::start(config, dir);
        assert!(
            d.raw_log().contains("taking over programs left attached"),
            "{}",
            d.raw_log()
        );
        d
    }

    pub fn start(config: &Path, dir: &Path) -> Daemon {
        Self::start_with(Command::new(DAEMON), config, dir)
    }

    pub fn start_with(mut cmd: Command, config: &Path, dir: &Path) -> Daemon {
        let log = dir.join(format!(
            "daemon-{}.log",
            Instant::now().elapsed().as_nanos() ^ rand_suffix()
        ));
        let child = cmd
            .args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn daemon");
        let mut d = Daemon {
            child: Some(child),
            log,
            config: config.into(),
        };
        d.wait_for("interceptor ready", Duration::from_secs(20));
        d
    }

    pub fn lines(&self) -> Vec<Value> {
        let f = match fs::File::open(&self.log) {
            Ok(f) => f,
            Err(_) => return vec![],
        };
        BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect()
    }

    pub fn raw_log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for(&mut self, message: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            if self.lines().iter().any(|l| l["message"] == message) {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "daemon exited ({status}) before `{message}`:\n{}",
                    self.raw_log()
                );
            }
            assert!(
                start.elapsed() < timeout,
                "daemon did not log `{message}` in {timeout:?}:\n{}",
                self.raw_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// "connection closed" records, waiting until at least `n` are there.
    pub fn records(&self, n: usize) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let r: Vec<Value> = self
                .lines()
                .into_iter()
                .filter(|l| l["message"] == "connection closed")
                .collect();
            if r.len() >= n || start.elapsed() > Duration::from_secs(10) {
                return r;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGTERM, then wait for exit; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.code();
            }
            if start.elapsed() > Duration::from_secs(15) {
                let _ = c.kill();
                panic!("daemon did not exit after SIGTERM:\n{}", self.raw_log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: what a crash looks like to the kernel.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A probe server in the host namespace (a "service" on a node address).
pub struct Server {
    child: Child,
    out: PathBuf,
}

impl Server {
    pub fn start(addr: SocketAddr, send: u64, dir: &Path, extra: &[&str]) -> Server {
        let ready = dir.join(format!("ready-{}-{}", addr.port(), rand_suffix()));
        let out = dir.join(format!("server-{}-{}.jsonl", addr.port(), rand_suffix()));
        let child = Command::new(PROBE)
            .args([
                "serve",
                &addr.to_string(),
                "--send",
                &send.to_string(),
                "--ready-file",
            ])
            .arg(&ready)
            .args(extra)
            .stdout(fs::File::create(&out).unwrap())
            .spawn()
            .expect("spawn probe server");
        let start = Instant::now();
        while !ready.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "probe server on {addr} did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Server { child, out }
    }

    /// Per-connection reports, waiting until at least `n` are there.
    pub fn reports(&self, n: usize) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let r: Vec<Value> = fs::read_to_string(&self.out)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if r.len() >= n || start.elapsed() > Duration::from_secs(30) {
                return r;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the probe inside a pod; returns its JSON report and its pid.
pub fn probe_in_pod(pod: &Pod, args: &[&str]) -> (Value, u32) {
    let child = pod
        .command(PROBE)
        .expect("pod command")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn probe in pod");
    let pid = child.id();
    let out = child.wait_with_output().expect("probe output");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "probe printed no JSON ({e}): stdout={text} stderr={}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (v, pid)
}

/// Spawns the probe inside a pod without waiting.
pub fn spawn_probe_in_pod(pod: &Pod, args: &[&str]) -> Child {
    pod.command(PROBE)
        .expect("pod command")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn probe in pod")
}

pub fn finish(child: Child) -> (Value, u32) {
    let pid = child.id();
    let out = child.wait_with_output().expect("probe output");
    let text = String::from_utf8_lossy(&out.stdout);
    (
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("no JSON ({e}): {text}")),
        pid,
    )
}

/// `interceptor status --json` for the lab's pin directory.
pub fn status(lab: &Lab) -> Value {
    let out = Command::new(DAEMON)
        .args(["status", "--json", "--pin-dir"])
        .arg(pin_dir(lab))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn record_for<'a>(records: &'a [Value], orig_dst: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["orig_dst"] == orig_dst)
        .collect()
}

/// Every byte of every file under `dir` (to search for what must not be there).
pub fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(all_bytes(&p));
        } else {
            out.extend(fs::read(&p).unwrap());
        }
    }
    out
}

pub fn contains_bytes(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Runs the `interceptor` CLI: (success, stdout, stderr).
pub fn cli(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(DAEMON).args(args).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Access records of the audit log in `dir` (`interceptor audit show`).
pub fn audit_access_records(dir: &Path) -> Vec<Value> {
    let out = Command::new(DAEMON)
        .args(["audit", "show"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["record"].get("Access").cloned())
        .collect()
}
