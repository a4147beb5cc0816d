//! `interceptor-lab idle`: memory per idle PostgreSQL connection, at 10k
//! connections, through the interceptor, pgbouncer and HAProxy in one run.
//!
//! A node holds many pooled, mostly idle connections, so what each one costs
//! while idle decides how many a node can carry. The clients run in a lab pod
//! (so the interceptor's connections arrive through the eBPF redirect), log in
//! with a StartupMessage and wait for ReadyForQuery, then stay idle. The
//! upstream is a minimal server in this process that speaks the real startup
//! exchange (AuthenticationOk, ParameterStatus, BackendKeyData,
//! ReadyForQuery): a real PostgreSQL cannot hold 10k backends on this machine,
//! and what is measured is the proxy's resident memory, not the server's.
//! Per-connection cost = (proxy RSS with N idle clients - RSS before) / N.

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, bail};
use interceptor_daemon::testbed::{Lab, Pod};

use crate::Daemon;

pub struct Options {
    pub bin_dir: PathBuf,
    pub connections: u32,
    pub out: Option<PathBuf>,
    /// The interceptor target's protocol: `postgres`, or `tcp` for what the
    /// connection costs without protocol handling.
    pub protocol: String,
}

struct Sample {
    path: &'static str,
    before_kib: u64,
    after_kib: u64,
    connections: u32,
}

/// Lets this process and its children (pgbouncer, HAProxy, the daemon, the
/// pod's client) hold tens of thousands of sockets: raises the soft limit to
/// `n`, and the hard limit too where that is permitted. Returns the soft
/// limit in force.
pub fn raise_nofile(n: u64) -> anyhow::Result<u64> {
    let mut rlim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with a pointer to a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        let want = libc::rlimit {
            rlim_cur: n,
            rlim_max: n.max(rlim.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
            return Ok(n);
        }
        // Without CAP_SYS_RESOURCE the hard limit is the ceiling.
        rlim.rlim_cur = n.min(rlim.rlim_max);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &rlim) != 0 {
            bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    Ok(rlim.rlim_cur)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS line")
}

/// Startup exchange of a server that trusts everyone; Query gets an empty answer.
async fn fake_server(addr: SocketAddr) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (mut s, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut hello = Vec::new();
            for (k, v) in [
                ("server_version", "15.0"),
                ("server_encoding", "UTF8"),
                ("client_encoding", "UTF8"),
                ("DateStyle", "ISO, MDY"),
                ("TimeZone", "UTC"),
                ("integer_datetimes", "on"),
                ("standard_conforming_strings", "on"),
            ] {
                let body = [k.as_bytes(), &[0], v.as_bytes(), &[0]].concat();
                hello.push(b'S');
                hello.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
                hello.extend_from_slice(&body);
            }
            let auth_ok = [b'R', 0, 0, 0, 8, 0, 0, 0, 0];
            let key = [b'K', 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 2];
            let ready = [b'Z', 0, 0, 0, 5, b'I'];
            let mut started = false;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    let (hdr, tag) = if started {
                        (5, buf.first().copied())
                    } else {
                        (4, None)
                    };
                    if buf.len() < hdr {
                        break;
                    }
                    let at = hdr - 4;
                    let len = u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
                        as usize
                        + at;
                    if buf.len() < len {
                        break;
                    }
                    let code = (len >= 8).then(|| [buf[4], buf[5], buf[6], buf[7]]);
                    buf.drain(..len);
                    let reply: Vec<u8> = match (started, tag, code) {
                        // SSLRequest / GSSENCRequest: no.
                        (false, _, Some([4, 0xd2, 0x16, 0x2f | 0x30])) => b"N".to_vec(),
                        (false, _, _) => {
                            started = true;
                            [&auth_ok[..], &hello, &key, &ready].concat()
                        }
                        (true, Some(b'Q'), _) => [&[b'I', 0, 0, 0, 4][..], &ready].concat(),
                        (true, Some(b'X'), _) => return,
                        _ => Vec::new(),
                    };
                    if !reply.is_empty() && s.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

/// The pod side (`interceptor-lab idle-clients`): opens `n` connections, logs
/// each in, prints `ready`, and holds them until stdin closes.
pub fn clients(addr: SocketAddr, n: u32) -> anyhow::Result<()> {
    let mut startup = Vec::new();
    let params = b"user\0postgres\0database\0postgres\0\0";
    startup.extend_from_slice(&((8 + params.len()) as u32).to_be_bytes());
    startup.extend_from_slice(&196_608u32.to_be_bytes());
    startup.extend_from_slice(params);
    let mut held = Vec::with_capacity(n as usize);
    for i in 0..n {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .with_context(|| format!("connection {i} to {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(&startup)?;
        // Read messages until ReadyForQuery.
        let mut hdr = [0u8; 5];
        loop {
            s.read_exact(&mut hdr)
                .with_context(|| format!("connection {i}: no ReadyForQuery"))?;
            let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
            let mut body = vec![0u8; len.saturating_sub(4)];
            s.read_exact(&mut body)?;
            match hdr[0] {
                b'Z' => break,
                b'E' => bail!(
                    "connection {i}: ErrorResponse {}",
                    String::from_utf8_lossy(&body)
                ),
                _ => {}
            }
        }
        held.push(s);
    }
    println!("ready {}", held.len());
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}

fn measure(
    pod: &Pod,
    lab_bin: &std::path::Path,
    path: &'static str,
    addr: SocketAddr,
    pid: u32,
    n: u32,
) -> anyhow::Result<Sample> {
    std::thread::sleep(Duration::from_millis(500));
    let before_kib = rss_kib(pid)?;
    let mut child = pod
        .command(lab_bin)?
        .args(["idle-clients", "--addr", &addr.to_string(), "--connections"])
        .arg(n.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the clients in the pod")?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out).read_line(&mut line)?;
    }
    if !line.starts_with("ready") {
        let _ = child.kill();
        let _ = child.wait();
        bail!("the clients via {path} did not all log in");
    }
    // Let allocators settle and deferred work (audit, metrics) finish.
    std::thread::sleep(Duration::from_secs(2));
    let after_kib = rss_kib(pid)?;
    drop(child.stdin.take());
    let _ = child.wait();
    eprintln!(
        "idle: {path:<11} {n} connections: RSS {before_kib} KiB -> {after_kib} KiB, {:.1} KiB per connection",
        (after_kib.saturating_sub(before_kib)) as f64 / f64::from(n)
    );
    Ok(Sample {
        path,
        before_kib,
        after_kib,
        connections: n,
    })
}

pub fn run(mut o: Options) -> anyhow::Result<()> {
    let limit = raise_nofile(4 * u64::from(o.connections) + 4096)?;
    // The daemon holds two descriptors per proxied connection.
    let most = u32::try_from(limit.saturating_sub(512) / 2).unwrap_or(u32::MAX);
    if o.connections > most {
        eprintln!(
            "idle: the descriptor limit here is {limit} (hard limit, not raisable without CAP_SYS_RESOURCE); a proxy needs two per connection, so measuring {most} connections instead of {}",
            o.connections
        );
        o.connections = most;
    }
    let work = std::env::temp_dir().join(format!("interceptor-idle-{}", std::process::id()));
    fs::create_dir_all(&work)?;
    let mut lab = Lab::new().context("creating the lab")?;
    let pod = lab.add_pod("idle", "pods/idle")?;
    let upstream: SocketAddr = (lab.node_v4(2), 5432).into();
    let bouncer: SocketAddr = (lab.node_v4(1), 6432).into();
    let haproxy: SocketAddr = (lab.node_v4(1), 6433).into();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let server = rt.spawn(fake_server(upstream));
    crate::bench::wait_listening(upstream)?;

    let bdir = work.join("pgbouncer");
    fs::create_dir_all(&bdir)?;
    let max = o.connections + 100;
    let bouncer_proc = crate::bench::start_pgbouncer(bouncer, upstream, &bdir, max)?;
    let haproxy_proc = crate::bench::start_haproxy(haproxy, upstream, &work, max)?;

    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/interceptor-idle-{}", lab.slot));
    let config = format!(
        "node_name: idle\nlistener:\n  address: {}:15001\nredirect:\n  cgroup_root: {}\n  pin_dir: {}\n  select_cgroups: [\"pods/*\"]\nidentity:\n  standalone:\n    - cgroups: \"pods/*\"\n      namespace: bench\n      service_account: \"{{name}}\"\ntargets:\n  - name: idle-db\n    protocol: {}\n    destinations: [\"{upstream}\"]\npolicy:\n  default: deny\n  rules:\n    - id: reads\n      identities: [\"bench/*\"]\n      sql: {{ kinds: [read] }}\n      action: allow\naudit:\n  dir: {}\n",
        lab.node_v4(1),
        lab.cgroup_dir.display(),
        pin_dir.display(),
        o.protocol,
        work.join("audit").display()
    );
    let config_path = work.join("interceptor.yaml");
    fs::write(&config_path, config)?;
    let mut daemon = Daemon::start(
        &o.bin_dir.join("interceptor"),
        &config_path,
        work.join("interceptor.log"),
        Some("warn,interceptor_daemon::daemon=info"),
    )?;
    let lab_bin = std::env::current_exe()?;
    let mut samples = Vec::new();
    let daemon_pid = daemon.pid().context("the daemon is not running")?;
    samples.push(measure(
        &pod,
        &lab_bin,
        "interceptor",
        upstream,
        daemon_pid,
        o.connections,
    )?);
    samples.push(measure(
        &pod,
        &lab_bin,
        "pgbouncer",
        bouncer,
        bouncer_proc.pid(),
        o.connections,
    )?);
    samples.push(measure(
        &pod,
        &lab_bin,
        "haproxy",
        haproxy,
        haproxy_proc.pid(),
        o.connections,
    )?);
    daemon.stop();
    server.abort();
    drop(rt);

    let report = report(&samples);
    println!("{report}");
    if let Some(out) = &o.out {
        fs::write(out, &report).with_context(|| format!("writing {}", out.display()))?;
    }
    drop(bouncer_proc);
    drop(haproxy_proc);
    drop(lab);
    let _ = fs::remove_dir_all(&work);
    Ok(())
}

fn report(samples: &[Sample]) -> String {
    let mut s = format!(
        "Memory per idle PostgreSQL connection (logged in, then idle), clients in a lab pod\nmachine: {}\n\n",
        crate::bench::machine()
    );
    s.push_str(
        "| path | connections | RSS before (MiB) | RSS with clients (MiB) | KiB per connection |\n|---|---:|---:|---:|---:|\n",
    );
    for x in samples {
        s.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} |\n",
            x.path,
            x.connections,
            x.before_kib as f64 / 1024.0,
            x.after_kib as f64 / 1024.0,
            x.after_kib.saturating_sub(x.before_kib) as f64 / f64::from(x.connections)
        ));
    }
    s
}
