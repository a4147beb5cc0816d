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
    let cfg = write_config(&lab, &dir, &DaemonOpts { destinations: vec![svc.to_string()], ..Default::default() });
    let daemon = Daemon::start(&cfg, &dir);

    let (report, pid) = probe_in_pod(&pod, &["connect", &svc.to_string(), "--send", &(100 * MB).to_string()]);
    assert_eq!(report["ok"], true, "{report}");
    // The application sees the original peer, not the daemon.
    assert_eq!(report["peer"], svc.to_string(), "{report}");
    assert_eq!(report["received"], 100 * MB);

    let s = &server.reports(1)[0];
    assert_eq!(s["received"], 100 * MB);
    assert_eq!(s["received_sha256"], report["sent_sha256"], "upstream bytes differ");
    assert_eq!(report["received_sha256"], s["sent_sha256"], "downstream bytes differ");
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
    assert_eq!(r["selected"], true);
    assert_eq!(r["bytes_up"], 100 * MB);
    assert_eq!(r["bytes_down"], 100 * MB);
    assert_eq!(r["client"].as_str().unwrap().split(':').next().unwrap(), pod.v4.to_string());
}
