//! `interceptor-lab bench`: pgbench from inside a lab pod, in one run, against
//! the same PostgreSQL four ways:
//!
//! * direct: the pod connects to an address that is not a selected destination;
//! * interceptor: to a selected destination, so the kernel redirects it to the
//!   daemon, which carries it upstream;
//! * pgbouncer (session pooling) and HAProxy (TCP mode), both on node addresses,
//!   as the proxies an operator would otherwise deploy.
//!
//! Every path crosses the same veth from the pod, so the ratios compare what
//! each proxy adds. Throughput comes from pgbench; p50/p99 latencies from its
//! per-transaction logs.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use interceptor_daemon::testbed::{Lab, Pod, Postgres};

use crate::Daemon;

pub struct Options {
    pub bin_dir: PathBuf,
    pub seconds: u32,
    /// Runs of every path per mode and client count, interleaved.
    pub rounds: u32,
    /// Proxies on the last CPU, PostgreSQL and pgbench on the others.
    pub split_cpus: bool,
    pub clients: Vec<u32>,
    pub scale: u32,
    pub out: Option<PathBuf>,
    /// Which of interceptor / pgbouncer / haproxy to measure besides direct.
    pub paths: Vec<String>,
    /// `simple` and/or `prepared`.
    pub modes: Vec<String>,
    /// The interceptor runs without an audit log.
    pub no_audit: bool,
    /// The audit log records decisions only, no responses.
    pub no_recording: bool,
    /// Transactions per second every path is held at (pgbench -R), if any.
    pub rate: Option<u32>,
}

#[derive(Debug, Clone)]
struct Sample {
    round: u32,
    path: &'static str,
    mode: &'static str,
    clients: u32,
    tps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU time the proxy process spent per transaction (user + system, all
    /// threads), in microseconds; `None` for direct. Less sensitive than TPS to
    /// what else the machine is doing.
    cpu_us_per_tx: Option<f64>,
    /// The kernel's share of `cpu_us_per_tx` (system time): the syscalls,
    /// TCP and disk work, which a proxy cannot make cheaper by its own code.
    kernel_us_per_tx: Option<f64>,
}

/// CPU time of a process and all its threads, in microseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuTime {
    pub user: f64,
    pub kernel: f64,
}

/// User and system CPU time of a process and all its threads.
pub(crate) fn cpu_us(pid: u32) -> anyhow::Result<CpuTime> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after `)`.
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("no CPU time field in /proc/{pid}/stat"))
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(CpuTime {
        user: ticks(11)? * 1e6 / hz,
        kernel: ticks(12)? * 1e6 / hz,
    })
}

/// A helper process (pgbouncer, HAProxy) stopped on drop.
pub(crate) struct Proc(Child);

impl Proc {
    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }
}
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn wait_listening(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..100 {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {addr}")
}

pub(crate) fn start_pgbouncer(
    listen: SocketAddr,
    pg: SocketAddr,
    dir: &Path,
    max_clients: u32,
) -> anyhow::Result<Proc> {
    let ini = dir.join("pgbouncer.ini");
    fs::write(
        &ini,
        format!(
            "[databases]\npostgres = host={} port={} user=postgres\n[pgbouncer]\nlisten_addr = {}\nlisten_port = {}\nauth_type = any\npool_mode = session\nmax_client_conn = {}\ndefault_pool_size = 100\nunix_socket_dir =\nlogfile = {}\n",
            pg.ip(),
            pg.port(),
            listen.ip(),
            listen.port(),
            max_clients,
            dir.join("pgbouncer.log").display()
        ),
    )?;
    let (uid, gid) = postgres_ids()?;
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    let mut cmd = Command::new("pgbouncer");
    cmd.arg(&ini).stdout(Stdio::null()).stderr(Stdio::null());
    // pgbouncer refuses to run as root.
    // SAFETY: setgid/setuid between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let p = Proc(
        cmd.spawn()
            .context("starting pgbouncer (apt-get install pgbouncer)")?,
    );
    wait_listening(listen)?;
    Ok(p)
}

pub(crate) fn start_haproxy(
    listen: SocketAddr,
    pg: SocketAddr,
    dir: &Path,
    maxconn: u32,
) -> anyhow::Result<Proc> {
    let cfg = dir.join("haproxy.cfg");
    fs::write(
        &cfg,
        format!(
            "global\n  maxconn {maxconn}\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\nfrontend pg\n  bind {listen}\n  default_backend pg\nbackend pg\n  server pg1 {pg}\n"
        ),
    )?;
    let p = Proc(
        Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting haproxy (apt-get install haproxy)")?,
    );
    wait_listening(listen)?;
    Ok(p)
}

fn postgres_ids() -> anyhow::Result<(u32, u32)> {
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Which CPUs the proxies and the rest (PostgreSQL, pgbench) may use.
#[derive(Debug, Clone)]
struct Layout {
    proxies: Vec<usize>,
    rest: Vec<usize>,
}

impl Layout {
    fn new(split: bool) -> anyhow::Result<Option<Layout>> {
        if !split {
            return Ok(None);
        }
        let cpus = allowed_cpus()?;
        let Some((&last, rest)) = cpus.split_last() else {
            bail!("no CPU to run on");
        };
        if rest.is_empty() {
            bail!("--split-cpus needs at least two CPUs; this process may use only CPU {last}");
        }
        Ok(Some(Layout {
            proxies: vec![last],
            rest: rest.to_vec(),
        }))
    }

    fn describe(&self) -> String {
        format!(
            "proxies on CPU {:?}, PostgreSQL and pgbench on CPU {:?} (every path, direct included)",
            self.proxies, self.rest
        )
    }
}

fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: CPU_SET bounds-checks against the set's size.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    set
}

/// The CPUs this process may run on.
fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    // SAFETY: all zeroes is a valid empty set, filled by the kernel.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the size passed is the set's own.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_getaffinity");
    }
    // SAFETY: CPU_ISSET bounds-checks against the set's size.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Confines every thread of `pid` and of its descendants to `cpus`
/// (processes and threads they start later inherit it).
fn pin_tree(pid: u32, cpus: &[usize]) -> anyhow::Result<()> {
    let set = cpu_set(cpus);
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for t in fs::read_dir(format!("/proc/{p}/task"))
            .with_context(|| format!("listing the threads of {p}"))?
            .flatten()
        {
            let Ok(tid) = t.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            // SAFETY: the set and its size are our own; a thread that exited
            // meanwhile only makes the call fail.
            if unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ESRCH) {
                    return Err(e).with_context(|| format!("pinning thread {tid} of {p}"));
                }
            }
            if let Ok(children) = fs::read_to_string(format!("/proc/{p}/task/{tid}/children")) {
                todo.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn pgbench(
    pod: &Pod,
    pgbench: &Path,
    addr: SocketAddr,
    mode: &'static str,
    clients: u32,
    seconds: u32,
    work: &Path,
    path: &'static str,
    layout: Option<&Layout>,
    rate: Option<u32>,
) -> anyhow::Result<Sample> {
    let logdir = work.join(format!("log-{path}-{mode}-{clients}"));
    let _ = fs::remove_dir_all(&logdir);
    fs::create_dir_all(&logdir)?;
    let mut cmd = pod.command(pgbench)?;
    if let Some(l) = layout {
        let set = cpu_set(&l.rest);
        // SAFETY: sched_setaffinity on the child itself, between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                if libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let out = cmd
        .args([
            "-n",
            "-S",
            "-M",
            mode,
            "-h",
            &addr.ip().to_string(),
            "-p",
            &addr.port().to_string(),
        ])
        .args([
            "-U",
            "postgres",
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ])
        .args(rate.map(|r| format!("--rate={r}")))
        .args(["-T", &seconds.to_string(), "-l", "--log-prefix"])
        .arg(logdir.join("tx"))
        .arg("postgres")
        .output()
        .context("running pgbench in the pod")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench via {path} failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tps = stdout
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| format!("no tps line in pgbench output: {stdout}"))?;
    // Per-transaction log lines: client_id transaction_no latency_us script_no epoch us.
    let mut lat: Vec<u64> = Vec::new();
    for e in fs::read_dir(&logdir)?.flatten() {
        for l in fs::read_to_string(e.path())?.lines() {
            if let Some(v) = l.split_whitespace().nth(2).and_then(|v| v.parse().ok()) {
                lat.push(v);
            }
        }
    }
    lat.sort_unstable();
    let _ = fs::remove_dir_all(&logdir);
    Ok(Sample {
        round: 0,
        path,
        mode,
        clients,
        tps,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        cpu_us_per_tx: None,
        kernel_us_per_tx: None,
    })
}

pub fn run(o: Options) -> anyhow::Result<()> {
    if let Some(p) = o
        .paths
        .iter()
        .find(|p| !["direct", "interceptor", "pgbouncer", "haproxy"].contains(&p.as_str()))
    {
        bail!("unknown path `{p}`: direct, interceptor, pgbouncer or haproxy");
    }
    if let Some(m) = o
        .modes
        .iter()
        .find(|m| !["simple", "prepared"].contains(&m.as_str()))
    {
        bail!("unknown mode `{m}`: simple or prepared");
    }
    let layout = Layout::new(o.split_cpus)?;
    let work = std::env::temp_dir().join(format!("interceptor-bench-{}", std::process::id()));
    fs::create_dir_all(&work)?;
    let mut lab = Lab::new().context("creating the lab")?;
    let pod = lab.add_pod("bench", "pods/bench")?;
    let selected: SocketAddr = (lab.node_v4(2), 5432).into();
    let direct: SocketAddr = (lab.node_v4(3), 5432).into();
    let bouncer: SocketAddr = (lab.node_v4(4), 6432).into();
    let haproxy: SocketAddr = (lab.node_v4(5), 5433).into();

    eprintln!(
        "bench: PostgreSQL on {selected} and {direct}, pgbench scale {}",
        o.scale
    );
    let pg_dir = work.join("pg");
    fs::create_dir_all(&pg_dir)?;
    let pg = Postgres::start_on(selected, &[IpAddr::V4(lab.node_v4(3))], &pg_dir)?;
    let pgbench_bin = pg.bin.join("pgbench");
    let init = Command::new(&pgbench_bin)
        .args([
            "-i",
            "-q",
            "-s",
            &o.scale.to_string(),
            "-U",
            "postgres",
            "-h",
        ])
        .arg(&pg.dir)
        .args(["-p", "5432", "postgres"])
        .output()?;
    if !init.status.success() {
        bail!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
    }

    let bdir = work.join("pgbouncer");
    fs::create_dir_all(&bdir)?;
    let bouncer_proc = start_pgbouncer(bouncer, direct, &bdir, 500)?;
    let haproxy_proc = start_haproxy(haproxy, direct, &work, 4096)?;

    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/interceptor-bench-{}", lab.slot));
    let config = format!(
        "node_name: bench\nlistener:\n  address: {}:15001\nredirect:\n  cgroup_root: {}\n  pin_dir: {}\n  select_cgroups: [\"pods/*\"]\nidentity:\n  standalone:\n    - cgroups: \"pods/*\"\n      namespace: bench\n      service_account: \"{{name}}\"\ntargets:\n  - name: bench-db\n    protocol: postgres\n    destinations: [\"{selected}\"]\npolicy:\n  default: deny\n  rules:\n    - id: bench-reads\n      identities: [\"bench/*\"]\n      sql: {{ kinds: [read, transaction, utility], tables: [pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history] }}\n      action: allow\n{}",
        lab.node_v4(1),
        lab.cgroup_dir.display(),
        pin_dir.display(),
        if o.no_audit {
            String::new()
        } else {
            format!(
                "audit:\n  dir: {}\n  record_responses: {}\n",
                work.join("audit").display(),
                !o.no_recording
            )
        }
    );
    let config_path = work.join("interceptor.yaml");
    fs::write(&config_path, config)?;
    let log = work.join("interceptor.log");
    let mut daemon = Daemon::start(
        &o.bin_dir.join("interceptor"),
        &config_path,
        log,
        Some("warn,interceptor_daemon::daemon=info"),
    )?;
    if let Some(l) = &layout {
        pin_tree(pg.pid(), &l.rest)?;
        for pid in [
            Some(bouncer_proc.pid()),
            Some(haproxy_proc.pid()),
            daemon.pid(),
        ]
        .into_iter()
        .flatten()
        {
            pin_tree(pid, &l.proxies)?;
        }
        eprintln!("bench: {}", l.describe());
    }

    let paths: [(&'static str, SocketAddr); 4] = [
        ("direct", direct),
        ("interceptor", selected),
        ("pgbouncer", bouncer),
        ("haproxy", haproxy),
    ];
    let mut samples = Vec::new();
    for mode in ["simple", "prepared"] {
        if !o.modes.iter().any(|m| m == mode) {
            continue;
        }
        for &c in &o.clients {
            let measured: Vec<(&'static str, SocketAddr)> = paths
                .into_iter()
                .filter(|(name, _)| *name == "direct" || o.paths.iter().any(|p| p == name))
                .collect();
            // Every round runs every path, starting one further each time: the
            // machine's drift over minutes falls on all paths alike.
            for (round, i) in (0..o.rounds).flat_map(|r| (0..measured.len()).map(move |i| (r, i))) {
                let (name, addr) = measured[(i + round as usize) % measured.len()];
                let pid = match name {
                    "interceptor" => daemon.pid(),
                    "pgbouncer" => Some(bouncer_proc.pid()),
                    "haproxy" => Some(haproxy_proc.pid()),
                    _ => None,
                };
                let cpu_before = pid.map(cpu_us).transpose()?;
                let mut s = pgbench(
                    &pod,
                    &pgbench_bin,
                    addr,
                    mode,
                    c,
                    o.seconds,
                    &work,
                    name,
                    layout.as_ref(),
                    o.rate,
                )?;
                s.round = round;
                if let (Some(pid), Some(before)) = (pid, cpu_before) {
                    let after = cpu_us(pid)?;
                    let txs = (s.tps * f64::from(o.seconds)).max(1.0);
                    let kernel = after.kernel - before.kernel;
                    s.cpu_us_per_tx = Some((after.user - before.user + kernel) / txs);
                    s.kernel_us_per_tx = Some(kernel / txs);
                }
                eprintln!(
                    "bench: round {} {:<11} {:<8} c={:<3} {:>9.0} tps  p50 {:.3} ms  p99 {:.3} ms  cpu {} us/tx (kernel {})",
                    s.round + 1,
                    s.path,
                    s.mode,
                    s.clients,
                    s.tps,
                    s.p50_ms,
                    s.p99_ms,
                    fmt_us(s.cpu_us_per_tx),
                    fmt_us(s.kernel_us_per_tx)
                );
                samples.push(s);
            }
        }
    }
    daemon.stop();

    let report = report(&samples, &o, layout.as_ref());
    println!("{report}");
    if let Some(out) = &o.out {
        fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    drop(pg);
    drop(lab);
    let _ = fs::remove_dir_all(&work);
    Ok(())
}

/// Cores, CPU model and kernel, for the reports.
pub(crate) fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {cpu}, kernel {}", kernel.trim())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Median of the per-round TPS ratios of `x` to `of` (same mode, clients
/// and round: runs minutes apart are not compared), with their range.
fn ratio(samples: &[Sample], x: &Sample, of: &str) -> Option<(f64, f64, f64)> {
    ratio_of(samples, x, of, |s| Some(s.tps))
}

/// [`ratio`] of the CPU each transaction cost the proxy.
fn cpu_ratio(samples: &[Sample], x: &Sample, of: &str) -> Option<(f64, f64, f64)> {
    ratio_of(samples, x, of, |s| s.cpu_us_per_tx)
}

fn ratio_of(
    samples: &[Sample],
    x: &Sample,
    of: &str,
    v: impl Fn(&Sample) -> Option<f64>,
) -> Option<(f64, f64, f64)> {
    let rs: Vec<f64> = samples
        .iter()
        .filter(|a| a.path == x.path && a.mode == x.mode && a.clients == x.clients)
        .filter_map(|a| {
            samples
                .iter()
                .find(|b| {
                    b.path == of && b.mode == a.mode && b.clients == a.clients && b.round == a.round
                })
                .and_then(|b| Some(v(a)? / v(b)?))
        })
        .collect();
    if rs.is_empty() {
        return None;
    }
    let lo = rs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = rs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((median(rs), lo, hi))
}

fn fmt_ratio(r: Option<(f64, f64, f64)>, rounds: u32) -> String {
    match r {
        None => "-".into(),
        Some((m, ..)) if rounds == 1 => format!("{m:.2}"),
        Some((m, lo, hi)) => format!("{m:.2} ({lo:.2}–{hi:.2})"),
    }
}

/// Microseconds per transaction, `-` where there is no figure (direct, or a
/// median of nothing, which is NaN).
fn fmt_us(v: Option<f64>) -> String {
    match v {
        Some(v) if !v.is_nan() => format!("{v:.1}"),
        _ => "-".into(),
    }
}

fn report(samples: &[Sample], o: &Options, layout: Option<&Layout>) -> String {
    let mut s = format!(
        "pgbench -S (select-only), scale {}, {} s per run{}, {} round(s) per row: every path once per round, in rotating order; medians, with the range of the per-round ratios\nfrom a lab pod (netns + veth + cgroup)\nmachine: {}\nCPUs: {}\ninterceptor: eBPF redirect + identity + PostgreSQL framing + SQL classification + policy decision per statement (cached per session) + audit records per statement and per response (group commit{}) + metrics\n\n",
        o.scale,
        o.seconds,
        o.rate.map_or_else(String::new, |r| format!(
            ", every path held at {r} transactions/s (compare CPU per transaction, not TPS)"
        )),
        o.rounds,
        machine(),
        layout.map_or_else(
            || "shared: PostgreSQL, pgbench and the proxy compete for every CPU".to_string(),
            Layout::describe
        ),
        if o.no_audit {
            "; audit OFF for this run"
        } else if o.no_recording {
            "; response records OFF for this run (decisions only)"
        } else {
            ""
        }
    );
    s.push_str("| mode | clients | path | TPS | × direct | × pgbouncer | p50 ms | p99 ms | proxy CPU µs/tx | of which kernel | CPU × pgbouncer |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut done: Vec<(&str, &str, u32)> = Vec::new();
    for x in samples {
        let key = (x.path, x.mode, x.clients);
        if done.contains(&key) {
            continue;
        }
        done.push(key);
        let same: Vec<&Sample> = samples
            .iter()
            .filter(|a| (a.path, a.mode, a.clients) == key)
            .collect();
        let med =
            |f: &dyn Fn(&Sample) -> Option<f64>| median(same.iter().filter_map(|a| f(a)).collect());
        let cpu = med(&|a| a.cpu_us_per_tx);
        let kernel = med(&|a| a.kernel_us_per_tx);
        let (vs_bouncer, cpu_vs_bouncer) = if x.path == "direct" || x.path == "pgbouncer" {
            (None, None)
        } else {
            (
                ratio(samples, x, "pgbouncer"),
                cpu_ratio(samples, x, "pgbouncer"),
            )
        };
        s.push_str(&format!(
            "| {} | {} | {} | {:.0} | {} | {} | {:.3} | {:.3} | {} | {} | {} |\n",
            x.mode,
            x.clients,
            x.path,
            med(&|a| Some(a.tps)),
            fmt_ratio(ratio(samples, x, "direct"), o.rounds),
            fmt_ratio(vs_bouncer, o.rounds),
            med(&|a| Some(a.p50_ms)),
            med(&|a| Some(a.p99_ms)),
            fmt_us(Some(cpu)),
            fmt_us(Some(kernel)),
            fmt_ratio(cpu_vs_bouncer, o.rounds),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(round: u32, path: &'static str, tps: f64) -> Sample {
        Sample {
            round,
            path,
            mode: "simple",
            clients: 16,
            tps,
            p50_ms: 1.0,
            p99_ms: 2.0,
            cpu_us_per_tx: match path {
                "direct" => None,
                "interceptor" => Some(25.0),
                _ => Some(20.0),
            },
            kernel_us_per_tx: (path != "direct").then_some(15.0),
        }
    }

    #[test]
    fn ratios_pair_runs_of_the_same_round_and_report_the_median() {
        // The machine slows down in round 2: same-round ratios stay steady.
        let s = [
            sample(0, "direct", 1000.0),
            sample(0, "interceptor", 800.0),
            sample(0, "pgbouncer", 900.0),
            sample(1, "interceptor", 400.0),
            sample(1, "pgbouncer", 450.0),
            sample(1, "direct", 500.0),
            sample(2, "pgbouncer", 1000.0),
            sample(2, "direct", 1100.0),
            sample(2, "interceptor", 1000.0),
        ];
        let (m, lo, hi) = ratio(&s, &s[1], "direct").unwrap();
        assert!(
            (m - 0.8).abs() < 1e-9 && (lo - 0.8).abs() < 1e-9,
            "{m} {lo}"
        );
        assert!((hi - 1000.0 / 1100.0).abs() < 1e-9);
        let (m, ..) = ratio(&s, &s[1], "pgbouncer").unwrap();
        assert!((m - 800.0 / 900.0).abs() < 1e-9, "{m}");
        assert_eq!(median(vec![3.0, 1.0, 2.0, f64::NAN]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 2.5);
        assert!(median(vec![]).is_nan());

        let o = Options {
            bin_dir: PathBuf::new(),
            seconds: 1,
            rounds: 3,
            split_cpus: false,
            clients: vec![16],
            scale: 1,
            out: None,
            paths: vec![],
            modes: vec![],
            no_audit: false,
            no_recording: false,
            rate: Some(5000),
        };
        let r = report(&s, &o, None);
        assert!(
            r.contains("| simple | 16 | interceptor | 800 | 0.80 (0.80–0.91) | 0.89 (0.89–1.00) | 1.000 | 2.000 | 25.0 | 15.0 | 1.25 (1.25–1.25) |"),
            "{r}"
        );
        assert!(r.contains("every path held at 5000 transactions/s"), "{r}");
        assert!(
            r.contains("| simple | 16 | direct | 1000 | 1.00 (1.00–1.00) | - |"),
            "{r}"
        );
    }

    #[test]
    fn cpu_time_is_split_into_user_and_kernel() {
        let me = std::process::id();
        let before = cpu_us(me).unwrap();
        // Busy in user space, then in the kernel, each for over 50 ms (5 ticks).
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(150) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(300) {
            let _ = std::hint::black_box(fs::metadata("/proc/self/stat"));
        }
        let after = cpu_us(me).unwrap();
        assert!(after.user - before.user >= 50_000.0, "{before:?} {after:?}");
        assert!(
            after.kernel - before.kernel >= 50_000.0,
            "{before:?} {after:?}"
        );
        assert!(cpu_us(u32::MAX).is_err(), "no such process");
    }

    #[test]
    fn a_pinned_tree_runs_only_on_its_cpus() {
        let cpus = allowed_cpus().unwrap();
        assert!(!cpus.is_empty());
        // A shell with a child: both end up on the first CPU only.
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 2 & wait"])
            .spawn()
            .unwrap();
        let pid = sh.id();
        std::thread::sleep(Duration::from_millis(200));
        pin_tree(pid, &cpus[..1]).unwrap();
        let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
        let mut pids = vec![pid];
        pids.extend(
            children
                .split_whitespace()
                .map(|c| c.parse::<u32>().unwrap()),
        );
        assert_eq!(pids.len(), 2, "the shell and its sleep");
        for p in pids {
            let status = fs::read_to_string(format!("/proc/{p}/status")).unwrap();
            let allowed = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim()
                .to_string();
            assert_eq!(allowed, cpus[0].to_string(), "process {p}");
        }
        let _ = sh.kill();
        let _ = sh.wait();
    }
}
