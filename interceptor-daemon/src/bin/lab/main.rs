//! `interceptor-lab`: runs the product on this machine, no Kubernetes needed.
//!
//! `interceptor-lab demo` builds a lab (pods made of a network namespace, a veth
//! pair and a cgroup), starts a real PostgreSQL on a node address, runs the
//! daemon on the embedded standalone configuration and walks through what it
//! does, explaining each step. Everything it creates is removed at the end.
//! `cargo xtask demo` builds the binaries and runs it.

use std::{
    fs,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use interceptor_daemon::testbed::{Lab, Pod, Postgres, missing_privileges};
use serde_json::Value;

#[derive(Parser)]
#[command(
    name = "interceptor-lab",
    about = "Run the interceptor on lab pods on this machine"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The guided demo.
    Demo {
        /// Directory holding the `interceptor` binary (default: next to this one).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    /// pgbench from a lab pod: direct, through the interceptor, through
    /// pgbouncer and through HAProxy, in one run.
    Bench {
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Seconds per pgbench run.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Rounds per mode and client count: every path runs once per round,
        /// in a rotating order, and the report gives medians (the spread of
        /// the per-round ratios shows how noisy the machine was).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        rounds: u32,
        /// Give the proxies the last CPU and PostgreSQL and pgbench the others
        /// (every path, direct included), as on a node where the database runs
        /// elsewhere, instead of all of them sharing every CPU.
        #[arg(long)]
        split_cpus: bool,
        /// Client counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        clients: Vec<u32>,
        #[arg(long, default_value_t = 10)]
        scale: u32,
        /// Also write the Markdown report here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Paths to measure, comma-separated (direct is always measured: ratios need it).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "interceptor,pgbouncer,haproxy"
        )]
        paths: Vec<String>,
        /// Protocol modes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "simple,prepared")]
        modes: Vec<String>,
        /// Run the interceptor without its audit log, to see what the log costs.
        #[arg(long)]
        no_audit: bool,
        /// Keep the audit log but record no responses in it
        /// (`audit.record_responses: false`), to see what recording costs.
        #[arg(long, conflicts_with = "no_audit")]
        no_recording: bool,
        /// Hold every path at this many transactions per second (pgbench
        /// -R) instead of as many as it can: TPS ratios are then 1 by design,
        /// and the figure is each proxy's CPU per transaction at equal load
        /// (the `CPU × pgbouncer` column), which a busy machine disturbs less.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        rate: Option<u32>,
    },
    /// Memory per idle PostgreSQL connection through the interceptor,
    /// pgbouncer and HAProxy, in one run.
    Idle {
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 10_000)]
        connections: u32,
        /// Also write the Markdown report here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// The interceptor target's protocol (`tcp`: no protocol handling).
        #[arg(long, default_value = "postgres")]
        protocol: String,
    },
    /// (run by `idle` inside the pod) open and hold logged-in connections.
    #[command(hide = true)]
    IdleClients {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        connections: u32,
    },
}

mod bench;
mod idle;

fn bin_dir_or_here(bin_dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match bin_dir {
        Some(d) => Ok(d),
        None => Ok(std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .context("binary directory")?),
    }
}

fn main() -> ExitCode {
    let res = match Cli::parse().cmd {
        Cmd::Demo { bin_dir } => demo(bin_dir),
        Cmd::Idle {
            bin_dir,
            connections,
            out,
            protocol,
        } => bin_dir_or_here(bin_dir).and_then(|bin_dir| {
            if let Some(why) = missing_privileges() {
                anyhow::bail!("the benchmark {why}: run it as root");
            }
            idle::run(idle::Options {
                bin_dir,
                connections,
                out,
                protocol,
            })
        }),
        Cmd::IdleClients { addr, connections } => idle::raise_nofile(u64::from(connections) + 1024)
            .and_then(|_| idle::clients(addr, connections)),
        Cmd::Bench {
            bin_dir,
            seconds,
            rounds,
            split_cpus,
            clients,
            scale,
            out,
            paths,
            modes,
            no_audit,
            no_recording,
            rate,
        } => bin_dir_or_here(bin_dir).and_then(|bin_dir| {
            if let Some(why) = missing_privileges() {
                anyhow::bail!("the benchmark {why}: run it as root");
            }
            bench::run(bench::Options {
                bin_dir,
                seconds,
                rounds,
                split_cpus,
                clients,
                scale,
                out,
                paths,
                modes,
                no_audit,
                no_recording,
                rate,
            })
        }),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nfailed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn step(title: &str) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    println!("\n\x1b[1m[{n}] {title}\x1b[0m");
}

fn say(text: &str) {
    for l in text.lines() {
        println!("    {l}");
    }
}

struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Runs `interceptor run` with JSON logs into `log`; returns once it is ready.
    fn start(
        interceptor: &Path,
        config: &Path,
        log: PathBuf,
        rust_log: Option<&str>,
    ) -> anyhow::Result<Daemon> {
        let mut cmd = Command::new(interceptor);
        cmd.args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .stderr(fs::File::create(&log)?);
        if let Some(filter) = rust_log {
            cmd.env("RUST_LOG", filter);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", interceptor.display()))?;
        let mut daemon = Daemon {
            child: Some(child),
            log,
        };
        daemon.wait_for(
            |v| v["message"] == "interceptor ready",
            "the daemon to start",
        )?;
        Ok(daemon)
    }

    fn records(&self) -> Vec<Value> {
        let Ok(f) = fs::File::open(&self.log) else {
            return vec![];
        };
        BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
            .collect()
    }

    fn wait_for(&mut self, pred: impl Fn(&Value) -> bool, what: &str) -> anyhow::Result<Value> {
        let start = Instant::now();
        loop {
            if let Some(v) = self.records().into_iter().find(|v| pred(v)) {
                return Ok(v);
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                bail!(
                    "the daemon exited ({st}); its log: {}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if start.elapsed() > Duration::from_secs(20) {
                bail!(
                    "timed out waiting for {what}; daemon log: {}",
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn psql_in_pod(pod: &Pod, pg: SocketAddr, sql: &str) -> anyhow::Result<(String, u32)> {
    let child = pod
        .command("psql")?
        .args([
            "-X",
            "-At",
            "-F",
            " | ",
            "-h",
            &pg.ip().to_string(),
            "-p",
            &pg.port().to_string(),
        ])
        .args(["-U", "postgres", "-d", "postgres", "-c", sql])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running psql in the pod")?;
    let pid = child.id();
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((String::from_utf8_lossy(&out.stdout).trim().to_string(), pid))
}

/// A plain HTTP/1.1 GET on loopback; returns the body.
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    Ok(resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

fn demo(bin_dir: Option<PathBuf>) -> anyhow::Result<()> {
    if let Some(why) = missing_privileges() {
        bail!("the demo {why}: run it as root");
    }
    let bin_dir = bin_dir_or_here(bin_dir)?;
    let interceptor = bin_dir.join("interceptor");
    let work = std::env::temp_dir().join(format!("interceptor-demo-{}", std::process::id()));
    fs::create_dir_all(&work)?;

    println!(
        "\x1b[1minterceptor demo\x1b[0m: a pod's PostgreSQL connection, transparently routed through the"
    );
    println!("node's interceptor by eBPF, with no change to the application.");

    step("A lab node and two pods (real network namespaces, veth pairs and cgroups)");
    let mut lab = Lab::new().context("creating the lab (needs iproute2 and cgroup v2)")?;
    let app = lab.add_pod("app", "pods/app")?;
    let batch = lab.add_pod("batch", "batch/job")?;
    say(&format!(
        "pod `app`:   address {}, cgroup {} (id {})\npod `batch`: address {}, cgroup {} (id {})\nnode addresses: {} (interceptor), {} (PostgreSQL)\nEach pod has one route, to the node block through its veth: no way out of the lab.",
        app.v4,
        app.cgroup.display(),
        app.cgroup_id,
        batch.v4,
        batch.cgroup.display(),
        batch.cgroup_id,
        lab.node_v4(1),
        lab.node_v4(2),
    ));

    step("A real PostgreSQL server on the node");
    let pg_addr: SocketAddr = (lab.node_v4(2), 5432).into();
    let pg_dir = work.join("pg");
    fs::create_dir_all(&pg_dir)?;
    let pg = Postgres::start(pg_addr, &pg_dir).context("starting PostgreSQL")?;
    pg.admin_sql(
        "CREATE TABLE customers (id int PRIMARY KEY, name text, email text);
         INSERT INTO customers VALUES (1, 'Ada', 'ada@example.com'), (2, 'Grace', 'grace@example.com');
         CREATE TABLE orders (id int PRIMARY KEY, customer int, status text);
         INSERT INTO orders VALUES (1, 1, 'paid'), (2, 2, 'paid');",
    )?;
    say(&format!(
        "PostgreSQL ({}) listening on {pg_addr}, tables `customers` and `orders` created",
        pg.bin.display()
    ));

    step("The interceptor daemon, on the embedded standalone configuration");
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/interceptor-demo-{}", lab.slot));
    let admin_port = 19_200 + u16::from(lab.slot);
    let audit_dir = work.join("audit");
    let audit_dir = audit_dir.display();
    let approvals_dir = work.join("approvals");
    let approvals_dir = approvals_dir.display();
    let admin_socket = work.join("admin.sock");
    let admin_socket_arg = admin_socket.display().to_string();
    let config = format!(
        "node_name: demo-node\nadmin:\n  address: 127.0.0.1:{admin_port}\n  socket: {admin_socket_arg}\nlistener:\n  address: {}:15001\nredirect:\n  cgroup_root: {}\n  pin_dir: {}\n  select_cgroups: [\"pods/*\"]\n  fail_mode: closed\nidentity:\n  standalone:\n    - cgroups: \"pods/app\"\n      namespace: shop\n      service_account: orders-api\ntargets:\n  - name: customers-db\n    protocol: postgres\n    destinations: [\"{pg_addr}\"]\npolicy:\n  default: deny\n  rules:\n    - id: app-reads\n      identities: [\"shop/orders-api\"]\n      sql: {{ kinds: [read, transaction, utility], tables: [customers, orders] }}\n      action: allow\n    - id: no-customer-deletes\n      sql: {{ kinds: [write], tables: [customers] }}\n      action: deny\n      description: customer records are never deleted by workloads\n    - id: mask-emails\n      identities: [\"shop/*\"]\n      action: mask\n      mask: {{ columns: [\"customers.email\"], strategy: partial, keep_last: 4 }}\n    - id: order-changes\n      identities: [\"shop/orders-api\"]\n      sql: {{ kinds: [write], tables: [orders] }}\n      action: require_approval\n      description: order changes need a human\napprovals:\n  dir: {approvals_dir}\n  timeout_secs: 120\naudit:\n  dir: {audit_dir}\n",
        lab.node_v4(1),
        lab.cgroup_dir.display(),
        pin_dir.display()
    );
    let config_path = work.join("interceptor.yaml");
    fs::write(&config_path, &config)?;
    say(&config);
    let log = work.join("interceptor.log");
    let mut daemon = Daemon::start(&interceptor, &config_path, log, None)?;
    say(&format!(
        "eBPF programs (connect4/6, getpeername4/6, sockops) attached to {}\nlistening on {}:15001; cgroups matching `pods/*` are intercepted",
        lab.cgroup_dir.display(),
        lab.node_v4(1)
    ));

    step("The `app` pod runs psql against PostgreSQL's own address");
    let (out, pid) = psql_in_pod(
        &app,
        pg_addr,
        "SELECT inet_server_addr() AS server, inet_client_addr() AS seen_client, (SELECT count(*) FROM customers)",
    )?;
    say(&format!(
        "$ psql -h {} -c 'SELECT inet_server_addr(), inet_client_addr(), ...'\n{out}",
        pg_addr.ip()
    ));
    let rec = daemon.wait_for(
        |v| v["message"] == "connection closed" && v["pid"] == pid,
        "the connection record",
    )?;
    say(&format!(
        "PostgreSQL saw the connection come from the node, not from the pod ({}): the interceptor carried it.\nThe daemon's record of it:\n  identity {} ({})\n  original destination {}  target {}\n  cgroup {} (id {})  pid {} (psql)  uid {}\n  {} bytes up, {} bytes down",
        app.v4,
        rec["identity"].as_str().unwrap_or("?"),
        rec["identity_method"].as_str().unwrap_or("?"),
        rec["orig_dst"].as_str().unwrap_or("?"),
        rec["target_name"].as_str().unwrap_or("?"),
        rec["cgroup"].as_str().unwrap_or("?"),
        rec["cgroup_id"],
        rec["pid"],
        rec["uid"],
        rec["bytes_up"],
        rec["bytes_down"],
    ));

    step("The `app` pod tries to delete customers: the interceptor blocks it");
    match psql_in_pod(&app, pg_addr, "DELETE FROM customers") {
        Ok((out, _)) => bail!("the DELETE was not blocked: {out}"),
        Err(e) => say(&format!(
            "$ psql -c 'DELETE FROM customers'\n{}",
            e.to_string().trim_start_matches("psql failed: ").trim()
        )),
    }
    say(&format!(
        "customers still in the table (checked on the server): {}\nThe statement never reached PostgreSQL; the pod got a native error (SQLSTATE 42501) naming the rule.",
        pg.admin_sql("SELECT count(*) FROM customers")?.trim()
    ));

    step("The `app` pod reads customers: the e-mail column is masked on the wire");
    let (out, _) = psql_in_pod(
        &app,
        pg_addr,
        "SELECT id, name, email FROM customers ORDER BY id",
    )?;
    say(&format!(
        "$ psql -c 'SELECT id, name, email FROM customers'\n{out}"
    ));
    let (alias, _) = psql_in_pod(
        &app,
        pg_addr,
        "SELECT upper(c.email) AS not_an_email FROM customers c ORDER BY id LIMIT 1",
    )?;
    say(&format!(
        "$ psql -c 'SELECT upper(c.email) AS not_an_email FROM customers c ...'\n{alias}\nOn the server the data is intact: {}\nRule `mask-emails` keeps the last 4 characters; aliases, expressions and `SELECT *` do not unmask it.",
        pg.admin_sql("SELECT email FROM customers WHERE id = 1")?
            .trim()
    ));
    if out.contains("ada@example.com") || alias.to_lowercase().contains("ada@") {
        bail!("an e-mail address reached the pod unmasked");
    }

    step("The `app` pod changes an order: held until a human approves it");
    let held = app
        .command("psql")?
        .args([
            "-X",
            "-At",
            "-h",
            &pg_addr.ip().to_string(),
            "-p",
            &pg_addr.port().to_string(),
        ])
        .args([
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            "UPDATE orders SET status = 'refunded' WHERE id = 1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running psql in the pod")?;
    say("$ psql -c \"UPDATE orders SET status = 'refunded' WHERE id = 1\"   (waiting...)");
    let approvals = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(&interceptor)
            .arg("approvals")
            .args(args)
            .args(["--socket", &admin_socket_arg])
            .output()?;
        if !out.status.success() {
            bail!(
                "interceptor approvals {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    };
    let started = Instant::now();
    let id = loop {
        let list: Value = serde_json::from_str(&approvals(&["list", "--json"])?)?;
        if let Some(id) = list.get(0).and_then(|r| r["id"].as_str()) {
            break id.to_string();
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!("no approval request appeared");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    say(&format!(
        "status on the server meanwhile: {} (the statement has not reached it)",
        pg.admin_sql("SELECT status FROM orders WHERE id = 1")?
            .trim()
    ));
    say(&format!(
        "$ interceptor approvals list\n{}",
        approvals(&["list"])?
    ));
    say(&format!(
        "$ interceptor approvals approve {id} --as security-oncall\n{}",
        approvals(&["approve", &id, "--as", "security-oncall"])?
    ));
    let out = held.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "the approved statement failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    say(&format!(
        "psql in the pod finished: {}\nstatus on the server now: {}",
        String::from_utf8_lossy(&out.stdout).trim(),
        pg.admin_sql("SELECT status FROM orders WHERE id = 1")?
            .trim()
    ));

    step("The `batch` pod is not selected: it reaches PostgreSQL directly");
    let (out, _) = psql_in_pod(&batch, pg_addr, "SELECT inet_client_addr()")?;
    say(&format!(
        "inet_client_addr() = {out}  (the pod's own address: not intercepted)"
    ));

    step("`interceptor status`: the daemon's open connections and the kernel side");
    let st = Command::new(&interceptor)
        .args(["status", "--socket", &admin_socket_arg, "--pin-dir"])
        .arg(&pin_dir)
        .output()?;
    say(String::from_utf8_lossy(&st.stdout).trim_end());

    step("The per-node metrics endpoint an SRE's Prometheus scrapes");
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let body = http_get(admin, "/metrics")?;
    let shown = [
        "interceptor_connections_total",
        "interceptor_decisions_total",
        "interceptor_approvals_total",
        "interceptor_bytes_total",
        "interceptor_kernel_events_total{event=\"redirected\"}",
        "interceptor_bpf_conntrack_entries",
    ];
    for l in body
        .lines()
        .filter(|l| shown.iter().any(|p| l.starts_with(p)))
    {
        say(l);
    }
    say(&format!(
        "GET /readyz -> {}",
        http_get(admin, "/readyz")?.trim()
    ));

    step("Stopping the daemon (SIGTERM) detaches and unpins everything");
    let code = daemon.stop();
    say(&format!(
        "daemon exited with {code:?}; pin directory present afterwards: {}",
        pin_dir.exists()
    ));

    step("An auditor verifies the signed audit log offline, with only the node's public key");
    let audit_dir = work.join("audit");
    let run = |args: &[&str]| -> anyhow::Result<(bool, String)> {
        let out = Command::new(&interceptor)
            .args(args)
            .arg(&audit_dir)
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    };
    let key = Command::new(&interceptor)
        .args(["audit", "pubkey", "--dir"])
        .arg(&audit_dir)
        .output()?;
    // What the auditor obtained from the node beforehand, kept apart from the log.
    let pubkey_file = work.join("node.pub");
    fs::write(&pubkey_file, &key.stdout)?;
    let pubkey_arg = format!("--pubkey={}", pubkey_file.display());
    say(&format!(
        "node public key: {}",
        String::from_utf8_lossy(&key.stdout).trim()
    ));
    let (_, shown) = run(&["audit", "show"])?;
    for l in shown.lines().filter(|l| {
        l.contains("\"decision\":\"Deny\"")
            || l.contains("\"decision\":\"RequireApproval\"")
            || l.contains("\"decision\":\"Approved\"")
    }) {
        let v: Value = serde_json::from_str(l)?;
        let r = &v["record"]["Access"];
        say(&format!(
            "record {}: {}/{} {} -> {} by rule `{}`{}",
            v["seq"],
            r["identity"]["namespace"].as_str().unwrap_or("?"),
            r["identity"]["service_account"].as_str().unwrap_or("?"),
            r["operation"].as_str().unwrap_or("?"),
            r["decision"].as_str().unwrap_or("?"),
            r["rule_id"].as_str().unwrap_or("?"),
            r["approval_ref"]
                .as_str()
                .map(|a| format!(" (approval {a})"))
                .unwrap_or_default()
        ));
    }
    let (ok, text) = run(&["audit", "verify", &pubkey_arg])?;
    say(&format!(
        "$ interceptor audit verify {}\n{text}",
        audit_dir.display()
    ));
    if !ok {
        bail!("the audit log did not verify");
    }
    step("Someone edits one byte of the log: verification fails and says where");
    let seg = fs::read_dir(&audit_dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "audit"))
        .context("no audit segment")?;
    let mut data = fs::read(&seg)?;
    let pos = data.len() / 2;
    data[pos] ^= 0x01;
    fs::write(&seg, &data)?;
    let (ok, text) = run(&["audit", "verify", &pubkey_arg])?;
    say(&format!(
        "flipped one bit at byte {pos} of {}\n$ interceptor audit verify ...\n{text}",
        seg.display()
    ));
    if ok {
        bail!("a tampered audit log verified");
    }

    drop(pg);
    drop(lab);
    let _ = fs::remove_dir_all(&work);
    println!("\n\x1b[1mdone\x1b[0m: lab, PostgreSQL and daemon cleaned up.");
    Ok(())
}
