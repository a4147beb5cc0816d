//! The data path on the real kernel: lab pods (netns + veth + cgroup), the real
//! daemon binary with its eBPF programs, real client and server processes.
//! Privileged: run as root (CI does, with INTERCEPTOR_REQUIRE_PRIVILEGED=1).

mod common;

use std::net::SocketAddr;

use common::*;
use interceptor_daemon::testbed::Lab;

const MB: u64 = 1024 * 1024;

#[test]
fn redirect_ipv4_end_to_end_100mb_both_ways() {
    if !privileged("redirect_ipv4_end_to_end_100mb_both_ways") {
        return;
    }
    let dir = scratch("e2e4");
    let mut lab = Lab::new().unwrap();
    let pod = lab.add_pod("a", "pods/a").unwrap();
    let svc: SocketAddr = (lab.node_v4(2), 7001).into();
    let server = Server::start(svc, 100 * MB, &dir, &[]);
    let cfg = write_config(
        &lab,
        &dir,
        &DaemonOpts {
            destinations: vec![svc.to_string()],
            ..Default::default()
        },
    );
    let daemon = Daemon::start(&cfg, &dir);

    let (report, pid) = probe_in_pod(
        &pod,
        &[
            "connect",
            &svc.to_string(),
            "--send",
            &(100 * MB).to_string(),
        ],
    );
    assert_eq!(report["ok"], true, "{report}");
    // The application sees the original peer, not the daemon.
    assert_eq!(report["peer"], svc.to_string(), "{report}");
    assert_eq!(report["received"], 100 * MB);

    let s = &server.reports(1)[0];
    assert_eq!(s["received"], 100 * MB);
    assert_eq!(
        s["received_sha256"], report["sent_sha256"],
        "upstream bytes differ"
    );
    assert_eq!(
        report["received_sha256"], s["sent_sha256"],
        "downstream bytes differ"
    );
    // The server was reached by the daemon, not by the pod.
    let server_peer: SocketAddr = s["peer"].as_str().unwrap().parse().unwrap();
    assert_ne!(server_peer.ip(), pod.v4, "connection bypassed the daemon");

    let recs = daemon.records(1);
    let r = record_for(&recs, &svc.to_string());
    assert_eq!(r.len(), 1, "daemon records: {recs:?}");
    let r = r[0];
    assert_eq!(r["cgroup_id"], pod.cgroup_id);
    assert_eq!(r["cgroup"], "pods/a");
    assert_eq!(r["pid"], pid);
    assert_eq!(r["uid"], 0);
    assert_eq!(r["target_name"], "svc");
    assert_eq!(r["identity"], "lab/a");
    assert_eq!(r["identity_method"], "standalone");
    assert_eq!(r["selected"], true);
    assert_eq!(r["bytes_up"], 100 * MB);
    assert_eq!(r["bytes_down"], 100 * MB);
    assert_eq!(
        r["client"].as_str().unwrap().split(':').next().unwrap(),
        pod.v4.to_string()
    );
}

#[test]
fn redirect_ipv6_and_ipv4_mapped() {
    if !privileged("redirect_ipv6_and_ipv4_mapped") {
        return;
    }
    let dir = scratch("e2e6");
    let mut lab = Lab::new().unwrap();
    let pod = lab.add_pod("a", "pods/a").unwrap();
    let svc6: SocketAddr = (lab.node_v6(2), 7002).into();
    let svc4: SocketAddr = (lab.node_v4(2), 7003).into();
    let server6 = Server::start(svc6, 100 * MB, &dir, &[]);
    let server4 = Server::start(svc4, 4 * MB, &dir, &[]);
    let cfg = write_config(
        &lab,
        &dir,
        &DaemonOpts {
            destinations: vec![svc6.to_string(), svc4.to_string()],
            ..Default::default()
        },
    );
    let daemon = Daemon::start(&cfg, &dir);

    // Native IPv6.
    let (r6, pid6) = probe_in_pod(
        &pod,
        &[
            "connect",
            &svc6.to_string(),
            "--send",
            &(100 * MB).to_string(),
        ],
    );
    assert_eq!(r6["ok"], true, "{r6}");
    assert_eq!(r6["peer"], svc6.to_string());
    assert_eq!(r6["received"], 100 * MB);
    assert_eq!(r6["received_sha256"], server6.reports(1)[0]["sent_sha256"]);
    assert_eq!(r6["sent_sha256"], server6.reports(1)[0]["received_sha256"]);

    // A dual-stack (AF_INET6) socket connecting to an IPv4-mapped address.
    let mapped = format!("[::ffff:{}]:7003", lab.node_v4(2));
    let (rm, pidm) = probe_in_pod(&pod, &["connect", &mapped, "--send", &(4 * MB).to_string()]);
    assert_eq!(rm["ok"], true, "{rm}");
    assert_eq!(rm["peer"], mapped, "the app sees the mapped original peer");
    assert_eq!(rm["received_sha256"], server4.reports(1)[0]["sent_sha256"]);

    let recs = daemon.records(2);
    let r = record_for(&recs, &svc6.to_string());
    assert_eq!(r.len(), 1, "{recs:?}");
    assert_eq!(
        (r[0]["pid"].as_u64(), r[0]["cgroup_id"].as_u64()),
        (Some(pid6.into()), Some(pod.cgroup_id))
    );
    assert_eq!(
        (r[0]["bytes_up"].as_u64(), r[0]["bytes_down"].as_u64()),
        (Some(100 * MB), Some(100 * MB))
    );
    let r = record_for(&recs, &svc4.to_string());
    assert_eq!(r.len(), 1, "{recs:?}");
    assert_eq!(r[0]["pid"].as_u64(), Some(pidm.into()));
    assert_eq!(r[0]["bytes_down"], 4 * MB);
}

#[test]
fn half_close_is_passed_on_both_ways() {
    if !privileged("half_close_is_passed_on_both_ways") {
        return;
    }
    let dir = scratch("halfclose");
    let mut lab = Lab::new().unwrap();
    let pod = lab.add_pod("a", "pods/a").unwrap();
    let svc: SocketAddr = (lab.node_v4(2), 7013).into();
    // The server answers only after it has seen the client's EOF.
    let server = Server::start(svc, 20 * MB, &dir, &["--after-eof"]);
    let cfg = write_config(
        &lab,
        &dir,
        &DaemonOpts {
            destinations: vec![svc.to_string()],
            ..Default::default()
        },
    );
    let daemon = Daemon::start(&cfg, &dir);
    let (r, _) = probe_in_pod(
        &pod,
        &[
            "connect",
            &svc.to_string(),
            "--send",
            "4096",
            "--timeout-ms",
            "20000",
        ],
    );
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["received"], 20 * MB, "{r}");
    let s = &server.reports(1)[0];
    assert_eq!(s["received"], 4096);
    assert_eq!(s["sent_sha256"], r["received_sha256"]);
    let recs = daemon.records(1);
    assert_eq!(
        (recs[0]["bytes_up"].as_u64(), recs[0]["bytes_down"].as_u64()),
        (Some(4096), Some(20 * MB))
    );
}

#[test]
fn unknown_identities_are_refused_unless_allowed() {
    if !privileged("unknown_identities_are_refused_unless_allowed") {
        return;
    }
    let dir = scratch("unknownid");
    let mut lab = Lab::new().unwrap();
    let known = lab.add_pod("a", "pods/a").unwrap();
    let stranger = lab.add_pod("x", "pods/x").unwrap();
    let svc: SocketAddr = (lab.node_v4(2), 7014).into();
    let server = Server::start(svc, 10, &dir, &[]);
    let mapping = "identity:\n  standalone:\n    - cgroups: \"pods/a\"\n      namespace: shop\n      service_account: orders\n";
    let opts = DaemonOpts {
        destinations: vec![svc.to_string()],
        identity: mapping.into(),
        ..Default::default()
    };
    let cfg = write_config(&lab, &dir, &opts);
    let mut daemon = Daemon::start(&cfg, &dir);
    let (r, _) = probe_in_pod(&known, &["connect", &svc.to_string()]);
    assert_eq!(r["ok"], true, "{r}");
    // Selected but mapped to no identity: refused (reset), never forwarded.
    let (r, _) = probe_in_pod(&stranger, &["connect", &svc.to_string()]);
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(
        server.reports(1).len(),
        1,
        "the stranger reached the server"
    );
    let log = daemon.raw_log();
    assert!(
        log.contains("refusing a connection from an unknown identity"),
        "{log}"
    );
    let (_, text) = http_get(admin_addr(&lab), "/metrics");
    let failures =
        r#"interceptor_connection_failures_total{target="svc",reason="unknown_identity"}"#;
    assert_eq!(metric(&text, failures), Some(1.0), "{text}");
    let recs = daemon.records(1);
    assert_eq!(recs[0]["identity"], "shop/orders");
    daemon.stop();

    // With `unknown: allow` the stranger goes through, recorded without identity.
    let opts = DaemonOpts {
        identity: format!("{mapping}  unknown: allow\n"),
        ..opts
    };
    let cfg = write_config(&lab, &dir, &opts);
    let daemon = Daemon::start(&cfg, &dir);
    let (r, pid) = probe_in_pod(&stranger, &["connect", &svc.to_string()]);
    assert_eq!(r["ok"], true, "{r}");
    let recs = daemon.records(1);
    let rec = recs
        .iter()
        .find(|r| r["pid"] == pid)
        .unwrap_or_else(|| panic!("{recs:?}"));
    assert_eq!(rec["identity"], "");
}

#[test]
fn two_pods_at_once_are_told_apart() {
    if !privileged("two_pods_at_once_are_told_apart") {
        return;
    }
    let dir = scratch("twopods");
    let mut lab = Lab::new().unwrap();
    let a = lab.add_pod("a", "pods/a").unwrap();
    let b = lab.add_pod("b", "pods/b").unwrap();
    let svc: SocketAddr = (lab.node_v4(2), 7004).into();
    let _server = Server::start(svc, 8 * MB, &dir, &[]);
    let cfg = write_config(
        &lab,
        &dir,
        &DaemonOpts {
            destinations: vec![svc.to_string()],
            ..Default::default()
        },
    );
    let daemon = Daemon::start(&cfg, &dir);

    let send = (8 * MB).to_string();
    let ca = spawn_probe_in_pod(&a, &["connect", &svc.to_string(), "--send", &send]);
    let cb = spawn_probe_in_pod(&b, &["connect", &svc.to_string(), "--send", &send]);
    let (ra, pida) = finish(ca);
    let (rb, pidb) = finish(cb);
    assert_eq!(
        (ra["ok"].as_bool(), rb["ok"].as_bool()),
        (Some(true), Some(true)),
        "{ra} {rb}"
    );

    let recs = daemon.records(2);
    let by_pid = |pid: u32| {
        recs.iter()
            .find(|r| r["pid"] == pid)
            .unwrap_or_else(|| panic!("no record for pid {pid}: {recs:?}"))
    };
    let (rec_a, rec_b) = (by_pid(pida), by_pid(pidb));
    assert_eq!(rec_a["cgroup_id"], a.cgroup_id);
    assert_eq!(rec_a["cgroup"], "pods/a");
    assert_eq!(
        (rec_a["identity"].as_str(), rec_b["identity"].as_str()),
        (Some("lab/a"), Some("lab/b"))
    );
    assert_eq!(rec_b["cgroup_id"], b.cgroup_id);
    assert_eq!(rec_b["cgroup"], "pods/b");
    assert!(
        rec_a["client"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", a.v4))
    );
    assert!(
        rec_b["client"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}:", b.v4))
    );

    // What an SRE's Prometheus sees.
    let (code, text) = http_get(admin_addr(&lab), "/metrics");
    assert_eq!(code, 200);
    let m = |s: &str| metric(&text, s).unwrap_or_else(|| panic!("no `{s}` in:\n{text}"));
    for pod in ["a", "b"] {
        let series = format!(
            r#"interceptor_connections_total{{identity="lab/{pod}",target="svc",protocol="tcp",intercepted="true"}}"#
        );
        assert_eq!(m(&series), 1.0, "{series}");
    }
    assert_eq!(
        m(r#"interceptor_connections_active{target="svc",protocol="tcp"}"#),
        0.0
    );
    assert_eq!(
        m(r#"interceptor_bytes_total{target="svc",direction="up"}"#),
        (16 * MB) as f64
    );
    assert_eq!(
        m(r#"interceptor_bytes_total{target="svc",direction="down"}"#),
        (16 * MB) as f64
    );
    assert_eq!(
        m(r#"interceptor_kernel_events_total{event="redirected"}"#),
        2.0
    );
    assert_eq!(m("interceptor_bpf_conntrack_entries"), 0.0);
    let connects = r#"interceptor_upstream_connect_seconds_count{target="svc",protocol="tcp"}"#;
    assert_eq!(m(connects), 2.0);
}

#[test]
fn unselected_cgroup_or_destination_goes_direct() {
    if !privileged("unselected_cgroup_or_destination_goes_direct") {
        return;
    }
    let dir = scratch("unselected");
    let mut lab = Lab::new().unwrap();
    let selected = lab.add_pod("a", "pods/a").unwrap();
    let outsider = lab.add_pod("c", "other/c").unwrap();
    let svc: SocketAddr = (lab.node_v4(2), 7005).into();
    let other_svc: SocketAddr = (lab.node_v4(3), 7005).into();
    let server = Server::start(svc, 1000, &dir, &[]);
    let other = Server::start(other_svc, 1000, &dir, &[]);
    let cfg = write_config(
        &lab,
        &dir,
        &DaemonOpts {
            destinations: vec![svc.to_string()],
            ..Default::default()
        },
    );
    let daemon = Daemon::start(&cfg, &dir);

    // Unselected cgroup, selected destination: reaches the server itself.
    let (r, _) = probe_in_pod(&outsider, &["connect", &svc.to_string(), "--send", "1000"]);
    assert_eq!(r["ok"], true, "{r}");
    let seen: SocketAddr = server.reports(1)[0]["peer"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(seen.ip(), outsider.v4, "unselected cgroup was redirected");

    // Selected cgroup, unselected destination.
    let (r, _) = probe_in_pod(
        &selected,
        &["connect", &other_svc.to_string(), "--send", "1000"],
    );
    assert_eq!(r["ok"], true, "{r}");
    let seen: SocketAddr = other.reports(1)[0]["peer"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        seen.ip(),
        selected.v4,
        "unselected destination was redirected"
    );

    // And the daemon saw neither.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let recs = daemon.records(0);
    assert!(
        recs.is_empty(),
        "daemon handled unselected traffic: {recs:?}"
    );
}

#[test]
fn cgroups_created_after_start_are_classified() {
    if !privileged("cgroups_created_after_start_are_classified") {
        return;
    }
    let dir = scratch("newcg");
    let mut lab = Lab::new().unwrap();
    let svc: SocketAddr = (lab.node_v4(2), 7006).into();
    let server = Server::start(svc, 100, &dir, &[]);
    let cfg = write_config(
        &lab,
        &dir,
        &DaemonOpts {
            select: vec!["pods/pod-*".into()],
            destinations: vec![svc.to_string()],
            ..Default::default()
        },
    );
    let daemon = Daemon::start(&cfg, &dir);

    // A pod that appears after the daemon: intercepted at its first connection.
    let pod = lab.add_pod("new", "pods/pod-new").unwrap();
    let (r, _) = probe_in_pod(&pod, &["connect", &svc.to_string(), "--send", "100"]);
    assert_eq!(r["ok"], true, "{r}");
    let recs = daemon.records(1);
    let rec = recs
        .iter()
        .find(|r| r["cgroup_id"] == pod.cgroup_id)
        .unwrap_or_else(|| panic!("{recs:?}"));
    assert_eq!(rec["selected"], true);
    assert_eq!(rec["cgroup"], "pods/pod-new");

    // A new cgroup under the same directory that the glob does not match: once
    // classified it reaches its destination directly.
    let side = lab.add_pod("side", "pods/sidecar-x").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(600)); // > rescan interval
    let (r, _) = probe_in_pod(&side, &["connect", &svc.to_string(), "--send", "100"]);
    assert_eq!(r["ok"], true, "{r}");
    let reports = server.reports(2);
    let last: SocketAddr = reports.last().unwrap()["peer"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        last.ip(),
        side.v4,
        "unmatched cgroup was intercepted: {reports:?}"
    );
}

fn refused(pod: &interceptor_daemon::testbed::Pod, addr: SocketAddr) -> bool {
    let (r, _) = probe_in_pod(pod, &["connect", &addr.to_string(), "--timeout-ms", "3000"]);
    r["ok"] == false && r["kind"] == "ConnectionRefused"
}

#[test]
fn fail_closed_when_the_daemon_dies_until_detached() {
    if !privileged("fail_closed_when_the_daemon_dies_until_detached") {
        return;
    }
    let dir = scratch("failclosed");
    let mut lab = Lab::new().unwrap();
    let pod = lab.add_pod("a", "pods/a").unwrap();
    let svc: SocketAddr = (lab.node_v4(2), 7007).into();
    let server = Server::start(svc, 10, &dir, &[]);
    let cfg = write_config(
        &lab,
        &dir,
        &DaemonOpts {
            destinations: vec![svc.to_string()],
            ..Default::default()
        },
    );
    let mut daemon = Daemon::start(&cfg, &dir);
    let (r, _) = probe_in_pod(&pod, &["connect", &svc.to_string()]);
    assert_eq!(r["ok"], true, "{r}");

    daemon.kill9();
    // Programs stay attached through their pinned links: refused, not bypassed.
    assert!(
        refused(&pod, svc),
        "connection was not refused with the daemon down"
    );
    let st = status(&lab);
    assert_eq!(
        st["pinned_links"].as_array().map(|a| a.len()),
        Some(5),
        "{st}"
    );
    assert_eq!(
        server.reports(1).len(),
        1,
        "the server must not have been reached"
    );

    // A new daemon takes over the pinned programs and serves again.
    let mut daemon = Daemon::start_taking_over(&cfg, &dir);
    let (r, _) = probe_in_pod(&pod, &["connect", &svc.to_string()]);
    assert_eq!(r["ok"], true, "{r}");
    daemon.kill9();

    // `interceptor detach` is the explicit way to stop enforcing.
    let out = std::process::Command::new(DAEMON)
        .args(["detach", "--pin-dir"])
        .arg(pin_dir(&lab))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!pin_dir(&lab).exists());
    let (r, _) = probe_in_pod(&pod, &["connect", &svc.to_string()]);
    assert_eq!(
        r["ok"], true,
        "after detach the pod reaches the server directly: {r}"
    );
    let last: SocketAddr = server.reports(3).last().unwrap()["peer"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(last.ip(), pod.v4);
    assert_attached(&lab, 0);
}

#[test]
fn fail_open_lets_connections_through_when_the_daemon_dies() {
    if !privileged("fail_open_lets_connections_through_when_the_daemon_dies") {
        return;
    }
    let dir = scratch("failopen");
    let mut lab = Lab::new().unwrap();
    let pod = lab.add_pod("a", "pods/a").unwrap();
    let svc: SocketAddr = (lab.node_v4(2), 7008).into();
    let server = Server::start(svc, 10, &dir, &[]);
    let cfg = write_config(
        &lab,
        &dir,
        &DaemonOpts {
            destinations: vec![svc.to_string()],
            fail_mode: "open",
            ..Default::default()
        },
    );
    let mut daemon = Daemon::start(&cfg, &dir);
    assert_attached(&lab, 1);
    daemon.kill9();
    assert_attached(&lab, 0);
    let (r, _) = probe_in_pod(&pod, &["connect", &svc.to_string()]);
    assert_eq!(r["ok"], true, "{r}");
    let seen: SocketAddr = server.reports(1)[0]["peer"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(seen.ip(), pod.v4);
}

/// Every one of our five attach types has `n` programs on the lab's cgroup.
fn assert_attached(lab: &Lab, n: u32) {
    let attached = interceptor_daemon::redirect::attached_programs(&lab.cgroup_dir).unwrap();
    assert!(
        attached.iter().all(|(_, c)| *c == n),
        "expected {n} per attach type, found {attached:?}"
    );
}

#[test]
fn sigterm_detaches_and_unpins_everything() {
    if !privileged("sigterm_detaches_and_unpins_everything") {
        return;
    }
    let dir = scratch("sigterm");
    let mut lab = Lab::new().unwrap();
    let pod = lab.add_pod("a", "pods/a").unwrap();
    let svc: SocketAddr = (lab.node_v4(2), 7009).into();
    let _server = Server::start(svc, 10, &dir, &[]);
    let cfg = write_config(
        &lab,
        &dir,
        &DaemonOpts {
            destinations: vec![svc.to_string()],
            ..Default::default()
        },
    );
    let mut daemon = Daemon::start(&cfg, &dir);
    assert_attached(&lab, 1);
    assert!(pin_dir(&lab).join("links").exists());
    assert_eq!(
        http_get(admin_addr(&lab), "/readyz"),
        (200, "ready\n".into())
    );
    assert_eq!(http_get(admin_addr(&lab), "/healthz").0, 200);
    let (r, _) = probe_in_pod(&pod, &["connect", &svc.to_string()]);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(daemon.stop(), Some(0), "{}", daemon.raw_log());
    assert_attached(&lab, 0);
    assert!(!pin_dir(&lab).exists(), "pins left behind");
    assert!(daemon.raw_log().contains("eBPF programs detached"));
}

#[test]
fn connection_table_does_not_grow_over_100k_connections() {
    if !privileged("connection_table_does_not_grow_over_100k_connections") {
        return;
    }
    let count: u64 = std::env::var("INTERCEPTOR_CHURN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = scratch("churn");
    let mut lab = Lab::new().unwrap();
    let pod = lab.add_pod("a", "pods/a").unwrap();
    let svc: SocketAddr = (lab.node_v4(2), 7010).into();
    let _server = Server::start(svc, 1, &dir, &["--quiet"]);
    let cfg = write_config(
        &lab,
        &dir,
        &DaemonOpts {
            destinations: vec![svc.to_string()],
            ..Default::default()
        },
    );
    // Connection records at debug level only, to keep the log small.
    let mut cmd = std::process::Command::new(DAEMON);
    cmd.env("RUST_LOG", "warn,interceptor_daemon::daemon=info");
    let _daemon = Daemon::start_with(cmd, &cfg, &dir);

    let (r, _) = probe_in_pod(
        &pod,
        &["churn", &svc.to_string(), "--count", &count.to_string()],
    );
    assert_eq!(r["failed"], 0, "{r}");
    assert_eq!(r["ok"], count);
    // Entries leave the table when the client sockets close.
    let start = std::time::Instant::now();
    let st = loop {
        let st = status(&lab);
        if st["live_connections"] == 0 || start.elapsed() > std::time::Duration::from_secs(10) {
            break st;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(st["live_connections"], 0, "{st}");
    let k = &st["kernel_counters"];
    assert_eq!(k["established"], count, "{st}");
    assert_eq!(k["closed"], count, "{st}");
    assert_eq!(k["redirected"], count, "{st}");
    assert_eq!(k["conn_insert_failed"], 0, "{st}");
}

#[test]
fn daemon_sockets_are_never_redirected_even_from_a_selected_cgroup() {
    if !privileged("daemon_sockets_are_never_redirected_even_from_a_selected_cgroup") {
        return;
    }
    let dir = scratch("loopguard");
    let mut lab = Lab::new().unwrap();
    let pod = lab.add_pod("a", "pods/a").unwrap();
    let svc: SocketAddr = (lab.node_v4(2), 7011).into();
    let _server = Server::start(svc, 1000, &dir, &[]);
    let cfg = write_config(
        &lab,
        &dir,
        &DaemonOpts {
            destinations: vec![svc.to_string()],
            ..Default::default()
        },
    );
    // Run the daemon itself inside a selected cgroup: only the socket mark
    // keeps its upstream connection from being redirected back to itself.
    let daemon_cg = lab.cgroup_dir.join("pods/daemon");
    std::fs::create_dir_all(&daemon_cg).unwrap();
    let procs = std::ffi::CString::new(daemon_cg.join("cgroup.procs").to_str().unwrap()).unwrap();
    let mut cmd = std::process::Command::new(DAEMON);
    // SAFETY: only open/write/close between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            let ok = fd >= 0 && libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            libc::close(fd);
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let daemon = Daemon::start_with(cmd, &cfg, &dir);
    let (r, _) = probe_in_pod(&pod, &["connect", &svc.to_string(), "--send", "1000"]);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["received"], 1000);
    let st = status(&lab);
    assert!(
        st["kernel_counters"]["skipped_mark"].as_u64() >= Some(1),
        "{st}"
    );
    assert_eq!(st["kernel_counters"]["redirected"], 1, "{st}");
    assert_eq!(daemon.records(1).len(), 1);
}

#[test]
fn missing_kernel_features_and_privileges_are_named() {
    if !privileged("missing_kernel_features_and_privileges_are_named") {
        return;
    }
    let dir = scratch("preflight");
    let lab = Lab::new().unwrap();
    let cfg = write_config(
        &lab,
        &dir,
        &DaemonOpts {
            destinations: vec![format!("{}:7012", lab.node_v4(2))],
            ..Default::default()
        },
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    let run = |text: &str, unprivileged: bool| {
        let path = dir.join("variant.yaml");
        std::fs::write(&path, text).unwrap();
        let mut cmd = std::process::Command::new(DAEMON);
        if unprivileged {
            // SAFETY: setuid between fork and exec.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                    if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let out = cmd.args(["run", "--config"]).arg(&path).output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&text, true);
    assert!(
        err.contains("CAP_BPF") && err.contains("CAP_NET_ADMIN"),
        "{err}"
    );
    let not_cg2 = text.replace(
        &lab.cgroup_dir.display().to_string(),
        &std::env::temp_dir().display().to_string(),
    );
    let err = run(&not_cg2, false);
    assert!(err.contains("is not a cgroup v2 mount"), "{err}");
    let no_bpffs = text.replace(
        &pin_dir(&lab).display().to_string(),
        &dir.join("pins").display().to_string(),
    );
    let err = run(&no_bpffs, false);
    assert!(err.contains("mount -t bpf bpf /sys/fs/bpf"), "{err}");
    assert_attached(&lab, 0);
}
