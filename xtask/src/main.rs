//! Build, run and test helpers: `cargo xtask <command>`.
//!
//! xtask deliberately depends on nothing of the product: it must build on a
//! fresh machine before bpf-linker and the nightly sources exist, because
//! installing them is its first job.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod chart;
mod image;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (apt packages, nightly rust-src,
    /// bpf-linker) and mount bpffs. Idempotent; needs root for apt and mounts.
    Setup,
    /// Run every test. As root the privileged tests (eBPF, cgroups, netns) run
    /// and must not skip; otherwise they print a skip message each.
    Test {
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The Helm chart's test: render helm/interceptor with helm, validate the
    /// manifests against the Kubernetes schemas, check privileges, RBAC, mounts
    /// and that the daemon accepts the rendered configuration. Part of `test`.
    Chart,
    /// Build and run the demo: a lab pod, real PostgreSQL, the daemon, a
    /// redirected connection, explained as it runs. Needs root.
    Demo,
    /// Side-by-side benchmark: pgbench direct, through the interceptor,
    /// pgbouncer and HAProxy, in one run; writes bench/RESULTS.md, then
    /// bench/RESULTS-SPLIT.md (proxies on a CPU of their own) and
    /// bench/IDLE.md. Needs root.
    Bench {
        /// Arguments for `interceptor-lab bench` (e.g. --seconds 5 --clients 1,16).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the cargo-fuzz targets in `fuzz/` (libFuzzer, nightly), each for
    /// `--seconds`; all of them unless some are named. Installs cargo-fuzz
    /// first. A crash stops the run; its input is kept in
    /// `fuzz/artifacts/<target>/`.
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Targets to run (see `fuzz/fuzz_targets/`); default: every one.
        targets: Vec<String>,
    },
    /// The daemon's container image as an OCI archive (no container engine
    /// needed): the release binary and the libraries it links, checked by
    /// running it inside the unpacked image (as root). Part of `test`.
    Image {
        /// Where to write it (default: `<target>/image/interceptor-<tag>.oci.tar`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Image name for `docker load` / containerd.
        #[arg(long, default_value = "interceptor")]
        name: String,
        /// Image tag (default: the workspace version, the chart's appVersion).
        #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
        tag: String,
    },
}

/// Debian packages: build (LLVM for bpf-linker), lab (iproute2), services
/// the tests and the demo start.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    // bindgen in the pg_query crate's build (the cross-check parser).
    "libclang-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "postgresql",
    "postgresql-client",
    "pgbouncer",
    "haproxy",
    // The chart test: helm comes inside a zip in an npm package.
    "unzip",
    // Real servers and clients for the Redis, HTTP and MySQL protocol tests.
    "redis-server",
    "redis-tools",
    "nginx",
    "curl",
    "mariadb-server",
    "mariadb-client",
];

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Test { args } => setup().and_then(|()| test(&args)),
        Cmd::Chart => setup().and_then(|()| chart_test()),
        Cmd::Demo => setup().and_then(|()| demo()),
        Cmd::Bench { args } => setup().and_then(|()| bench(&args)),
        Cmd::Fuzz { seconds, targets } => setup().and_then(|()| fuzz(seconds, &targets)),
        Cmd::Image { out, name, tag } => setup().and_then(|()| image_build(out, &name, &tag)),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// The workspace around the current directory. Not the compile-time manifest
/// path: with a build cache shared between clones (CI), the xtask binary may
/// have been built from another checkout.
fn workspace_root() -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_default();
    cwd.ancestors()
        .find(|d| {
            std::fs::read_to_string(d.join("Cargo.toml")).is_ok_and(|t| t.contains("[workspace]"))
        })
        .map(Path::to_path_buf)
        .unwrap_or(cwd)
}

fn status(cmd: &mut Command) -> anyhow::Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn setup() -> anyhow::Result<()> {
    let root = is_root();
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if !missing.is_empty() {
        if !root {
            bail!(
                "missing Debian packages: {} (run `sudo apt-get install {}` or `sudo cargo xtask setup`)",
                missing.join(" "),
                missing.join(" ")
            );
        }
        eprintln!("xtask: installing {}", missing.join(" "));
        status(Command::new("apt-get").arg("update").arg("-q"))?;
        status(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing),
        )?;
    }
    let components = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("rustup is needed (with a nightly toolchain) to build the eBPF programs")?;
    if !String::from_utf8_lossy(&components.stdout).contains("rust-src") {
        eprintln!("xtask: adding rust-src to the nightly toolchain");
        status(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    if !have("bpf-linker") {
        eprintln!("xtask: building bpf-linker against LLVM 22 (takes a few minutes, once)");
        status(
            Command::new("cargo")
                .env("LLVM_PREFIX", "/usr/lib/llvm-22")
                .args([
                    "install",
                    "bpf-linker",
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ]),
        )?;
    }
    if root && !is_bpffs("/sys/fs/bpf") {
        status(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    chart::setup()
}

fn is_bpffs(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines().any(|l| {
                l.split_whitespace().nth(1) == Some(path)
                    && l.split_whitespace().nth(2) == Some("bpf")
            })
        })
        .unwrap_or(false)
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

/// `cargo +nightly fuzz run` for each target, one after the other. The SQL
/// target gets a dictionary of keywords, quotes and comment markers, so the
/// fuzzer reaches statements instead of lexer errors.
fn fuzz(seconds: u64, targets: &[String]) -> anyhow::Result<()> {
    if !have("cargo-fuzz") {
        eprintln!("xtask: installing cargo-fuzz (once)");
        status(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let dir = workspace_root().join("fuzz");
    let targets = if targets.is_empty() {
        let out = Command::new("cargo")
            .args(["+nightly", "fuzz", "list"])
            .current_dir(&dir)
            .output()
            .context("cargo fuzz list")?;
        if !out.status.success() {
            bail!(
                "cargo fuzz list failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    } else {
        targets.to_vec()
    };
    for t in &targets {
        eprintln!("xtask: fuzzing {t} for {seconds} s");
        // rustup's `cargo` proxy, not `$CARGO` (see `cargo()`): only the
        // proxy understands `+nightly`.
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&dir)
            .args([
                "+nightly",
                "fuzz",
                "run",
                "--release",
                "--debug-assertions",
                t,
            ])
            // Overflow checks on: a length that wraps is a finding.
            .arg("--")
            .arg(format!("-max_total_time={seconds}"));
        let dict = dir.join(format!("{t}.dict"));
        if dict.exists() {
            cmd.arg(format!("-dict={}", dict.display()));
        }
        status(&mut cmd).with_context(|| {
            format!("fuzz target {t} failed: the input is in fuzz/artifacts/{t}/")
        })?;
    }
    Ok(())
}

fn test(args: &[String]) -> anyhow::Result<()> {
    let mut cmd = cargo();
    // The default members: the eBPF crate only builds for the BPF target.
    cmd.args(["test", "--no-fail-fast"]);
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
    if is_root() {
        // Every privileged test must run: a skip is a failure here.
        cmd.env("INTERCEPTOR_REQUIRE_PRIVILEGED", "1");
    } else {
        eprintln!(
            "xtask: not root: the privileged tests (eBPF, cgroups, netns) will print SKIPPED; run `sudo -E cargo xtask test` to include them"
        );
    }
    let tests = status(&mut cmd);
    // The chart and the image run even when a cargo test failed: their
    // results are independent.
    let chart = chart_test();
    let image = image_build(None, "interceptor", env!("CARGO_PKG_VERSION"));
    let docs = docs_check();
    tests.and(chart).and(image).and(docs)
}

/// The API documentation builds without a warning (broken or private links,
/// stray HTML): a link that no longer resolves is a doc that went stale.
fn docs_check() -> anyhow::Result<()> {
    status(
        cargo()
            .env("RUSTDOCFLAGS", "-D warnings")
            .args(["doc", "--no-deps", "-q"])
            .args([
                "-p",
                "interceptor-daemon",
                "-p",
                "interceptor-common",
                "-p",
                "xtask",
            ]),
    )
}

/// Builds and checks the image archive (at `out`, or in the target directory).
fn image_build(out: Option<PathBuf>, name: &str, tag: &str) -> anyhow::Result<()> {
    let bin = release_bins()?.join("interceptor");
    let out = out.unwrap_or_else(|| {
        target_dir()
            .join("image")
            .join(format!("{name}-{tag}.oci.tar"))
    });
    image::build(&bin, &out, name, tag)?;
    let reference = image::check(&out, &bin, is_root())
        .with_context(|| format!("checking {}", out.display()))?;
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!(
        "image: {reference} written to {} ({:.1} MiB), checked\n  load:  podman load -i {0}   (or docker load -i, Docker 25+; ctr -n k8s.io images import)\n  push:  skopeo copy oci-archive:{0} docker://REGISTRY/{name}:{tag}",
        out.display(),
        size as f64 / (1024.0 * 1024.0),
    );
    Ok(())
}

/// Cargo's target directory (CI points it at a cache outside the clone).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The chart test needs the daemon binary to check the rendered configuration.
fn chart_test() -> anyhow::Result<()> {
    status(cargo().args([
        "build",
        "-q",
        "-p",
        "interceptor-daemon",
        "--bin",
        "interceptor",
    ]))?;
    chart::test(
        &workspace_root(),
        &target_dir().join("debug").join("interceptor"),
    )
}

fn release_bins() -> anyhow::Result<PathBuf> {
    status(cargo().args(["build", "--release", "-p", "interceptor-daemon", "--bins"]))?;
    Ok(target_dir().join("release"))
}

fn demo() -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the demo attaches eBPF programs and creates a network namespace: run it as root (`sudo -E cargo xtask demo`)"
        );
    }
    let bin = release_bins()?;
    status(
        Command::new(bin.join("interceptor-lab"))
            .arg("demo")
            .arg("--bin-dir")
            .arg(&bin),
    )
}

fn bench(args: &[String]) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the benchmark attaches eBPF programs and creates a network namespace: run it as root"
        );
    }
    let bin = release_bins()?;
    let dir = workspace_root().join("bench");
    // One `interceptor-lab bench` run: its own options, the client counts
    // it uses unless the caller gave some, the report file; then the
    // caller's arguments.
    let lab_bench = |own: &[&str], clients: Option<&str>, report: &str| {
        let clients = clients.filter(|_| !args.iter().any(|a| a.starts_with("--clients")));
        status(
            Command::new(bin.join("interceptor-lab"))
                .arg("bench")
                .arg("--bin-dir")
                .arg(&bin)
                .args(own)
                .args(clients.map(|c| ["--clients", c]).into_iter().flatten())
                .arg("--out")
                .arg(dir.join(report))
                .args(args),
        )
    };
    lab_bench(&[], None, "RESULTS.md")?;
    // The same with the proxies on a CPU of their own, as when the database
    // runs elsewhere: what the proxy adds when it does not compete with it.
    lab_bench(&["--split-cpus"], Some("16,64"), "RESULTS-SPLIT.md")?;
    // CPU per transaction at equal load: every path held at one rate (below
    // what any of them reaches here), so the proxies do the same work and
    // only its cost differs.
    lab_bench(&["--rate", "10000"], Some("16"), "RESULTS-CPU.md")?;
    // Memory per idle connection, same proxies, 10k connections (or as many
    // as the descriptor limit allows).
    status(
        Command::new(bin.join("interceptor-lab"))
            .arg("idle")
            .arg("--bin-dir")
            .arg(&bin)
            .arg("--out")
            .arg(dir.join("IDLE.md")),
    )
}
