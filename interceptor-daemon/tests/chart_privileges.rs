//! The Helm chart (helm/interceptor) runs the daemon as uid 0 with every
//! capability dropped except CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, not
//! privileged, with no_new_privs (allowPrivilegeEscalation: false), a
//! read-only root filesystem and the host's cgroup root mounted read-only. This runs the real daemon exactly so,
//! on the real kernel: it must load and attach its programs without
//! CAP_SYS_ADMIN, pin them, become ready, redirect a pod's connection with a
//! marked upstream socket and write its signed audit log; and without any one
//! of the three it must fail, naming why. `cargo xtask chart` checks that the
//! chart renders this same capability list.
//! Privileged: run as root (CI does, with INTERCEPTOR_REQUIRE_PRIVILEGED=1).

mod common;

use std::{ffi::CString, net::SocketAddr, os::unix::process::CommandExt as _};

use common::*;
use interceptor_daemon::testbed::Lab;

const CAP_NET_ADMIN: u32 = 12;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;
/// What the chart's DaemonSet adds after `drop: [ALL]` (without the kubelet
/// pods directory, whose DAC_READ_SEARCH the daemon does not use yet).
const CHART_CAPS: [u32; 3] = [CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN];

/// Between fork and exec: what the container runtime does for the chart's
/// securityContext, plus a read-only bind of the cgroup root (the chart's
/// `readOnly: true` hostPath mount).
fn confine(
    cmd: &mut std::process::Command,
    cgroup_root: &std::path::Path,
    writable: &[&std::path::Path],
    caps: &[u32],
) {
    let caps = caps.to_vec();
    let root = CString::new(cgroup_root.to_str().unwrap()).unwrap();
    let writable: Vec<CString> = writable
        .iter()
        .map(|p| CString::new(p.to_str().unwrap()).unwrap())
        .collect();
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let err = std::io::Error::last_os_error;
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(err());
            }
            let slash = c"/".as_ptr();
            if libc::mount(
                std::ptr::null(),
                slash,
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
                || libc::mount(
                    root.as_ptr(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                || libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                    std::ptr::null(),
                ) != 0
            {
                return Err(err());
            }
            // readOnlyRootFilesystem: the container's root (here the host's
            // "/", which holds /tmp and /run) and /sys are read-only; only the
            // chart's writable hostPath mounts (bound onto themselves first, so
            // they are mounts of their own) and bpffs (its own mount) stay
            // writable.
            for w in &writable {
                if libc::mount(
                    w.as_ptr(),
                    w.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(err());
                }
            }
            for ro in [c"/", c"/sys"] {
                if libc::mount(
                    std::ptr::null(),
                    ro.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(err());
                }
            }
            // The bounding set limits what uid 0 gets at exec; capabilities
            // above the kernel's last one give EINVAL, which is fine.
            for cap in 0..64u32 {
                if !caps.contains(&cap) {
                    libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
                }
            }
            if libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
                || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            {
                return Err(err());
            }
            Ok(())
        });
    }
}

fn cap_eff(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap()
}

#[test]
fn daemon_runs_with_only_the_charts_capabilities() {
    if !privileged("daemon_runs_with_only_the_charts_capabilities") {
        return;
    }
    let dir = scratch("chartcaps");
    let mut lab = Lab::new().unwrap();
    let pod = lab.add_pod("a", "pods/a").unwrap();
    let svc: SocketAddr = (lab.node_v4(2), 7020).into();
    let server = Server::start(svc, 4096, &dir, &[]);
    let cfg = write_config(
        &lab,
        &dir,
        &DaemonOpts {
            destinations: vec![svc.to_string()],
            ..Default::default()
        },
    );
    let audit = dir.join("audit");
    // The chart puts the admin socket in the node-state mount (at
    // /run/interceptor/admin.sock; a name of this run's own here, as other
    // tests share the host directory).
    let run = std::path::Path::new("/run/interceptor");
    let socket = run.join(format!("admin-chartcaps-{}.sock", std::process::id()));
    let mut text = std::fs::read_to_string(&cfg).unwrap().replacen(
        "admin:\n",
        &format!("admin:\n  socket: {}\n", socket.display()),
        1,
    );
    text.push_str(&format!("audit:\n  dir: {}\n", audit.display()));
    std::fs::write(&cfg, text).unwrap();

    // The chart's writable hostPath mounts: the node lock (and admin socket)
    // and the audit log.
    std::fs::create_dir_all(run).unwrap();
    std::fs::create_dir_all(&audit).unwrap();
    let mut cmd = std::process::Command::new(DAEMON);
    confine(&mut cmd, &lab.cgroup_dir, &[run, &audit], &CHART_CAPS);
    let mut daemon = Daemon::start_with(cmd, &cfg, &dir);
    let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", daemon.pid())).unwrap();
    let root_ro = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(4) == Some(&"/") && f.get(5).is_some_and(|o| o.split(',').any(|x| x == "ro"))
    });
    assert!(root_ro, "the daemon's root is not read-only:\n{mounts}");

    let want: u64 = CHART_CAPS.iter().map(|c| 1u64 << c).sum();
    assert_eq!(
        cap_eff(daemon.pid()),
        want,
        "the daemon runs with more than the chart's capabilities"
    );
    let (code, body) = http_get(admin_addr(&lab), "/readyz");
    assert_eq!((code, body.as_str()), (200, "ready\n"));

    let (r, _) = probe_in_pod(&pod, &["connect", &svc.to_string(), "--send", "4096"]);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["peer"], svc.to_string(), "{r}");
    assert_eq!(r["received"], 4096);
    let s = &server.reports(1)[0];
    let server_peer: SocketAddr = s["peer"].as_str().unwrap().parse().unwrap();
    assert_ne!(server_peer.ip(), pod.v4, "connection bypassed the daemon");
    let recs = daemon.records(1);
    assert_eq!(record_for(&recs, &svc.to_string()).len(), 1, "{recs:?}");
    assert_eq!(status(&lab)["kernel_counters"]["redirected"], 1);

    // What an operator runs through `kubectl exec`: status over the
    // configuration's admin socket, and a policy applied from stdin (the
    // container's root filesystem is read-only, so the file is piped in).
    let cli = |args: &[&str], stdin: &str| {
        use std::io::Write as _;
        let mut child = std::process::Command::new(DAEMON)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let cfg_s = cfg.to_str().unwrap();
    let st = cli(&["status", "--json", "--config", cfg_s], "");
    assert!(st.get("admin_socket_error").is_none(), "{st}");
    assert!(st["open_connections"].is_array(), "{st}");
    let socket_s = socket.to_str().unwrap();
    let applied = cli(
        &[
            "policy",
            "apply",
            "/dev/stdin",
            "--json",
            "--socket",
            socket_s,
        ],
        "default: deny\nrules:\n  - id: chart-exec\n    sql: { kinds: [read] }\n    action: allow\n",
    );
    assert_eq!(
        (&applied["source"], &applied["unchanged"]),
        (&"apply".into(), &false.into()),
        "{applied}"
    );
    let history = cli(&["policy", "history", "--json", "--socket", socket_s], "");
    let latest = history.as_array().and_then(|v| v.last());
    assert_eq!(
        latest.map(|v| &v["version"]),
        Some(&applied["version"]),
        "the applied version is not the latest: {history}"
    );

    // A clean stop detaches, unpins and seals the audit log.
    assert_eq!(daemon.stop(), Some(0), "{}", daemon.raw_log());
    let audit_cli = |args: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new(DAEMON)
            .arg("audit")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let pubkey = dir.join("node.pub");
    std::fs::write(
        &pubkey,
        audit_cli(&["pubkey".as_ref(), "--dir".as_ref(), audit.as_os_str()]),
    )
    .unwrap();
    let report = audit_cli(&[
        "verify".as_ref(),
        audit.as_os_str(),
        "--pubkey".as_ref(),
        pubkey.as_os_str(),
    ]);
    assert!(report.starts_with("OK: "), "{report}");
}

#[test]
fn each_of_the_charts_capabilities_is_needed() {
    if !privileged("each_of_the_charts_capabilities_is_needed") {
        return;
    }
    let dir = scratch("chartcaps-less");
    let lab = Lab::new().unwrap();
    let cfg = write_config(
        &lab,
        &dir,
        &DaemonOpts {
            destinations: vec![format!("{}:7021", lab.node_v4(2))],
            ..Default::default()
        },
    );
    for (without, why) in [
        (CAP_BPF, "CAP_BPF"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        // Without it the verifier applies its Spectre v1 restrictions to the
        // loader and rejects the programs' stack-buffer arithmetic ("pointer
        // arithmetic ... prohibited for !root"); the preflight says so first.
        (CAP_PERFMON, "CAP_PERFMON"),
    ] {
        let caps: Vec<u32> = CHART_CAPS
            .iter()
            .copied()
            .filter(|c| *c != without)
            .collect();
        let mut cmd = std::process::Command::new(DAEMON);
        confine(&mut cmd, &lab.cgroup_dir, &[], &caps);
        let out = cmd.args(["run", "--config"]).arg(&cfg).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "started without capability {without}"
        );
        assert!(err.contains(why), "without capability {without}: {err}");
    }
}
