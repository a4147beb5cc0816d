//! The Kubernetes identity source against an in-test HTTPS API server
//! (`kubeapi`): the pod index (list, watch, resume, relist), TokenReview
//! verification and its failure modes, the resolver's cache and fail-closed
//! rules; and, privileged, the whole path on the real kernel: a lab pod with a
//! kubelet-shaped cgroup connects through the redirect and is attributed to its
//! verified service account.

mod common;
mod kubeapi;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use interceptor_daemon::{
    identity::{
        IdentityConfig, Method, Resolver, Unresolved,
        kubernetes::{self, KubernetesConfig, Lookup, PodIndex, ReviewError, TokenVerifier},
    },
    metrics::Metrics,
};
use kubeapi::FakeApi;

const U1: &str = "5f0c8a4e-1b2d-4c3e-9f8a-0123456789a1";
const U2: &str = "5f0c8a4e-1b2d-4c3e-9f8a-0123456789a2";
const U3: &str = "5f0c8a4e-1b2d-4c3e-9f8a-0123456789a3";
const U4: &str = "5f0c8a4e-1b2d-4c3e-9f8a-0123456789a4";
const U5: &str = "5f0c8a4e-1b2d-4c3e-9f8a-0123456789a5";

/// A JWT-shaped token (the fake API server knows it by its text; the daemon
/// only reads `exp` and `aud` from it).
fn jwt(tag: &str, exp: u64) -> String {
    use base64::Engine as _;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{}",
        e.encode(br#"{"alg":"RS256","kid":"k1"}"#),
        e.encode(
            format!(r#"{{"aud":["https://kubernetes.default.svc"],"exp":{exp},"sub":"{tag}"}}"#)
                .as_bytes()
        ),
        e.encode(tag.as_bytes())
    )
}

fn in_an_hour() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600
}

/// Writes a pod's projected token the way the kubelet does: a timestamped
/// directory, `..data` pointing at it, `token` → `..data/token`. Writing again
/// is a rotation (a new file, the `..data` link swapped atomically).
fn write_token(pods_dir: &Path, uid: &str, token: &str) {
    let vol = pods_dir
        .join(uid)
        .join("volumes/kubernetes.io~projected/kube-api-access-x7k2p");
    std::fs::create_dir_all(&vol).unwrap();
    let ts = format!(
        "..{}",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    std::fs::create_dir(vol.join(&ts)).unwrap();
    std::fs::write(vol.join(&ts).join("token"), token).unwrap();
    std::fs::write(vol.join(&ts).join("namespace"), "shop").unwrap();
    let tmp = vol.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&ts, &tmp).unwrap();
    std::fs::rename(&tmp, vol.join("..data")).unwrap();
    if std::fs::symlink_metadata(vol.join("token")).is_err() {
        std::os::unix::fs::symlink("..data/token", vol.join("token")).unwrap();
    }
}

/// The cgroup path of a container of pod `uid` (systemd driver, burstable).
fn cgroup_of(uid: &str, container: char) -> String {
    format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{}.scope",
        uid.replace('-', "_"),
        container.to_string().repeat(64)
    )
}

fn kube_cfg(api: &FakeApi, pods_dir: &Path) -> KubernetesConfig {
    serde_yaml::from_str(&api.identity_yaml(pods_dir, "node-1", "")).unwrap()
}

async fn client(api: &FakeApi, token_file: Option<PathBuf>) -> kube::Client {
    let mut cfg = kube_cfg(api, Path::new("/nonexistent"));
    if let Some(t) = token_file {
        cfg.token_file = Some(t);
    }
    let kc = kubernetes::client_config(&cfg).await.unwrap();
    kube::Client::try_from(kc).unwrap()
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn metric_value(m: &Metrics, series: &str) -> Option<f64> {
    common::metric(&m.encode(), series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_index_lists_watches_resumes_and_relists() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start(dir.path());
    api.add_pod(U1, "shop", "orders-1", "orders", "node-1");
    api.add_pod(U2, "shop", "elsewhere", "orders", "node-2");
    let metrics = Arc::new(Metrics::new());
    let ix = Arc::new(PodIndex::new(metrics.clone()));
    let task = tokio::spawn(
        ix.clone()
            .run(client(&api, None).await, "node-1".to_string()),
    );
    eventually("initial list", || ix.synced()).await;
    match ix.lookup(U1) {
        Lookup::Found(p) => {
            assert_eq!(
                (
                    p.namespace.as_str(),
                    p.name.as_str(),
                    p.service_account.as_str()
                ),
                ("shop", "orders-1", "orders")
            );
            assert_eq!(p.labels.get("app").map(String::as_str), Some("orders-1"));
        }
        l => panic!("{l:?}"),
    }
    // Another node's pod is not listed (field selector).
    assert_eq!(ix.lookup(U2), Lookup::Unknown);
    assert_eq!(api.lists(), 1);

    // Watch: a new pod arrives, a deleted one goes.
    api.add_pod(U3, "shop", "orders-3", "orders", "node-1");
    assert!(matches!(
        ix.wait_for(U3, Duration::from_secs(10)).await,
        Lookup::Found(_)
    ));
    api.delete_pod(U1);
    eventually("U1 deleted", || ix.lookup(U1) == Lookup::Deleted).await;

    // A dropped watch resumes from the last resourceVersion: no relist.
    let watches = api.watches().len();
    api.add_pod(U2, "shop", "elsewhere-2", "orders", "node-2"); // bookmarks move past it
    tokio::time::sleep(Duration::from_millis(700)).await;
    api.drop_watches();
    api.add_pod(U4, "shop", "orders-4", "orders", "node-1");
    assert!(matches!(
        ix.wait_for(U4, Duration::from_secs(10)).await,
        Lookup::Found(_)
    ));
    assert_eq!(api.lists(), 1, "the index relisted instead of resuming");
    let w = api.watches();
    assert!(w.len() > watches, "{w:?}");
    // From the bookmark's version (5, another node's change), not from the
    // last event of this node (4).
    assert_eq!(w[watches], "5", "{w:?}");
    assert_eq!(
        metric_value(&metrics, "interceptor_kubernetes_pods_known"),
        Some(2.0)
    );

    // Deleted while no watch could run, and the history compacted: the
    // resumed watch gets 410, the index relists and the pod disappears.
    api.set_pods_status(Some(500));
    api.drop_watches();
    api.delete_pod(U3);
    api.compact();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(matches!(ix.lookup(U3), Lookup::Found(_)), "no event yet");
    api.set_pods_status(None);
    eventually("U3 gone after the relist", || {
        ix.lookup(U3) == Lookup::Deleted
    })
    .await;
    assert!(api.lists() >= 2);
    assert!(matches!(ix.lookup(U4), Lookup::Found(_)));
    task.abort();
}

/// Tokens clients present as passwords (one per connection): an accepted
/// review is reused for the configured time, per audience set, never past
/// the token's expiry; rejections are asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presented_tokens_are_reviewed_once_per_remembering_time() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start(dir.path());
    let metrics = Arc::new(Metrics::new());
    let good = jwt("good", in_an_hour());
    api.add_token(&good, "shop", "orders", Some(("orders-1", U1)));
    let v = TokenVerifier::new(
        client(&api, None).await,
        vec![],
        Duration::from_millis(500),
        metrics.clone(),
    )
    .remembering(Duration::from_secs(60));

    let before = api.reviews();
    for _ in 0..5 {
        assert_eq!(
            v.verify_presented(&good).await.unwrap().name(),
            "shop/orders"
        );
    }
    assert_eq!(api.reviews() - before, 1, "five connections, one review");
    // The pod path (verify_token) always asks.
    v.verify_token(&good).await.unwrap();
    assert_eq!(api.reviews() - before, 2);
    // Other audiences are another review, kept apart.
    let aud = v.with_audiences(vec!["https://kubernetes.default.svc".into()]);
    aud.verify_presented(&good).await.unwrap();
    aud.verify_presented(&good).await.unwrap();
    assert_eq!(api.reviews() - before, 3);

    // A rejection is not kept.
    let revoked = jwt("revoked", in_an_hour());
    api.reject_token(&revoked, "token has been invalidated");
    for _ in 0..2 {
        assert!(
            v.verify_presented(&revoked)
                .await
                .unwrap_err()
                .is_rejection()
        );
    }
    assert_eq!(api.reviews() - before, 5);

    // Nor is an acceptance past the token's expiry.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let short = jwt("short", now + 1);
    api.add_token(&short, "shop", "orders", Some(("orders-1", U1)));
    v.verify_presented(&short).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let _ = v.verify_presented(&short).await;
    assert_eq!(
        api.reviews() - before,
        7,
        "an expired token is reviewed again"
    );

    // Remembering nothing: every connection asks.
    let every = TokenVerifier::new(
        client(&api, None).await,
        vec![],
        Duration::from_millis(500),
        metrics,
    );
    let before = api.reviews();
    every.verify_presented(&good).await.unwrap();
    every.verify_presented(&good).await.unwrap();
    assert_eq!(api.reviews() - before, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_review_outcomes_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start(dir.path());
    let metrics = Arc::new(Metrics::new());
    let exp = in_an_hour();
    let good = jwt("good", exp);
    api.add_token(&good, "shop", "orders", Some(("orders-1", U1)));
    let verifier = |client: kube::Client, audiences: Vec<String>| {
        TokenVerifier::new(
            client,
            audiences,
            Duration::from_millis(500),
            metrics.clone(),
        )
    };
    let v = verifier(client(&api, None).await, vec![]);

    let id = v.verify_token(&good).await.unwrap();
    assert_eq!(id.name(), "shop/orders");
    assert_eq!(id.username, "system:serviceaccount:shop:orders");
    assert_eq!(id.uid, "sa-uid-shop-orders");
    assert_eq!((id.pod_name(), id.pod_uid()), (Some("orders-1"), Some(U1)));
    assert!(
        id.groups
            .contains(&"system:serviceaccounts:shop".to_string())
    );
    assert_eq!(
        id.expires_at,
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(exp))
    );
    assert_eq!(
        id.claims()["authentication.kubernetes.io/node-name"],
        "node-1"
    );

    // Tokens the API server does not accept.
    let revoked = jwt("revoked", exp);
    api.reject_token(
        &revoked,
        "[invalid bearer token, service account token has been invalidated]",
    );
    let e = v.verify_token(&revoked).await.unwrap_err();
    assert!(
        e.is_rejection() && e.to_string().contains("invalidated"),
        "{e}"
    );
    let e = v.verify_token("not.a.token").await.unwrap_err();
    assert_eq!(e.reason(), "unauthenticated");
    // Audiences are part of the review.
    let e = verifier(client(&api, None).await, vec!["vault".into()])
        .verify_token(&good)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("audiences"), "{e}");
    assert!(
        verifier(
            client(&api, None).await,
            vec!["https://kubernetes.default.svc".into()]
        )
        .verify_token(&good)
        .await
        .is_ok()
    );

    // The API server cannot answer: not a rejection of the token.
    api.set_review_status(Some(403));
    let e = v.verify_token(&good).await.unwrap_err();
    assert!(matches!(e, ReviewError::Api { code: 403, .. }), "{e}");
    assert!(!e.is_rejection());
    api.set_review_status(Some(500));
    assert_eq!(
        v.verify_token(&good).await.unwrap_err().reason(),
        "api_error"
    );
    api.set_review_status(None);
    api.set_review_delay(Duration::from_secs(2));
    let t = Instant::now();
    let e = v.verify_token(&good).await.unwrap_err();
    assert_eq!(e, ReviewError::Timeout(Duration::from_millis(500)));
    assert!(t.elapsed() < Duration::from_millis(1500));
    api.set_review_delay(Duration::ZERO);
    // The daemon's own credentials are refused.
    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, "nope").unwrap();
    let e = verifier(client(&api, Some(wrong)).await, vec![])
        .verify_token(&good)
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "api_unauthorized", "{e}");
    // Nobody listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut cfg = kube_cfg(&api, dir.path());
    cfg.api_server = Some(format!("https://{closed}"));
    let c = kube::Client::try_from(kubernetes::client_config(&cfg).await.unwrap()).unwrap();
    let e = verifier(c, vec![]).verify_token(&good).await.unwrap_err();
    assert_eq!(e.reason(), "unreachable", "{e}");

    let m = |s: &str| metric_value(&metrics, s);
    assert_eq!(
        m(r#"interceptor_token_review_failures_total{reason="unauthenticated"}"#),
        Some(3.0)
    );
    for reason in [
        "api_forbidden",
        "api_error",
        "timeout",
        "api_unauthorized",
        "unreachable",
    ] {
        assert_eq!(
            m(&format!(
                r#"interceptor_token_review_failures_total{{reason="{reason}"}}"#
            )),
            Some(1.0),
            "{reason}"
        );
    }
    assert_eq!(
        m(r#"interceptor_token_review_seconds_count{result="authenticated"}"#),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolver_verifies_caches_rotates_and_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let pods = dir.path().join("pods");
    let api = FakeApi::start(dir.path());
    let exp = in_an_hour();
    let t1 = jwt("t1", exp);
    api.add_pod(U1, "shop", "orders-1", "orders", "node-1");
    api.add_token(&t1, "shop", "orders", Some(("orders-1", U1)));
    write_token(&pods, U1, &t1);
    let yaml = format!(
        "standalone:\n  - cgroups: \"system.slice/*\"\n    namespace: node\n    service_account: \"{{name}}\"\nkubernetes:\n{}  pod_wait_ms: 300\n",
        api.identity_yaml(&pods, "node-1", "  ")
    );
    let cfg: IdentityConfig = serde_yaml::from_str(&yaml).unwrap();
    let metrics = Arc::new(Metrics::new());
    let r = Resolver::start(cfg, "ignored", metrics.clone())
        .await
        .unwrap();
    let c1 = cgroup_of(U1, 'a');

    let id = r.resolve(Some(&c1)).await.unwrap();
    assert_eq!(id.method, Method::TokenReview);
    assert_eq!(id.method.as_str(), "tokenreview");
    assert_eq!(id.name(), "shop/orders");
    assert_eq!(id.pod_uid.as_deref(), Some(U1));
    assert_eq!(id.container_id.as_deref(), Some("a".repeat(64).as_str()));
    assert_eq!(id.claims["pod"], "shop/orders-1");
    assert_eq!(id.claims["authentication.kubernetes.io/pod-uid"], U1);
    assert_eq!(api.reviews(), 1);
    // Cached: another container of the same pod, no new review.
    let id2 = r.resolve(Some(&cgroup_of(U1, 'b'))).await.unwrap();
    assert_eq!(id2.name(), "shop/orders");
    assert_eq!(api.reviews(), 1);
    let m = |s: &str| metric_value(&metrics, s);
    assert_eq!(
        m(r#"interceptor_identity_cache_total{source="kubernetes",result="hit"}"#),
        Some(1.0)
    );
    assert_eq!(
        m(r#"interceptor_identity_cache_total{source="kubernetes",result="miss"}"#),
        Some(1.0)
    );

    // The kubelet rotates the token: verified again.
    let t2 = jwt("t2", exp);
    api.add_token(&t2, "shop", "orders", Some(("orders-1", U1)));
    write_token(&pods, U1, &t2);
    r.resolve(Some(&c1)).await.unwrap();
    assert_eq!(api.reviews(), 2);

    // API server failing: the pod verified before keeps its identity (until
    // its token expires); a pod never verified is not resolved (and refused
    // with the default `unknown: deny`).
    api.set_review_status(Some(500));
    let t3 = jwt("t3", exp);
    write_token(&pods, U1, &t3);
    assert_eq!(r.resolve(Some(&c1)).await.unwrap().name(), "shop/orders");
    assert_eq!(api.reviews(), 3);
    api.add_pod(U2, "shop", "orders-2", "orders", "node-1");
    let t4 = jwt("t4", exp);
    api.add_token(&t4, "shop", "orders", Some(("orders-2", U2)));
    write_token(&pods, U2, &t4);
    let e = r.resolve(Some(&cgroup_of(U2, 'c'))).await.unwrap_err();
    assert!(matches!(e, Unresolved::Unverifiable { .. }), "{e}");
    assert!(r.refuses(&e));
    api.set_review_status(None);
    assert_eq!(
        r.resolve(Some(&cgroup_of(U2, 'c'))).await.unwrap().name(),
        "shop/orders"
    );

    // A token the API server rejects: refused even with `unknown: allow`.
    api.add_pod(U3, "shop", "orders-3", "orders", "node-1");
    let bad = jwt("bad", exp);
    api.reject_token(&bad, "[invalid bearer token, token has been invalidated]");
    write_token(&pods, U3, &bad);
    let e = r.resolve(Some(&cgroup_of(U3, 'd'))).await.unwrap_err();
    assert!(matches!(e, Unresolved::Rejected { .. }), "{e}");
    let allow: IdentityConfig = serde_yaml::from_str("unknown: allow\n").unwrap();
    let lenient = Resolver::new(allow);
    assert!(lenient.refuses(&e));
    assert!(!lenient.refuses(&Unresolved::UnknownPod(U3.into())));
    assert_eq!(
        m(r#"interceptor_token_review_failures_total{reason="unauthenticated"}"#),
        Some(1.0)
    );

    // A valid token of another service account than the pod's: refused.
    api.add_pod(U4, "shop", "orders-4", "orders", "node-1");
    let admin = jwt("admin", exp);
    api.add_token(&admin, "shop", "admin", Some(("orders-4", U4)));
    write_token(&pods, U4, &admin);
    let e = r.resolve(Some(&cgroup_of(U4, 'e'))).await.unwrap_err();
    assert!(
        matches!(&e, Unresolved::Rejected { reason, .. } if reason.contains("shop/admin")),
        "{e}"
    );
    // Another pod's token copied into this pod's volume: refused.
    api.add_pod(U5, "shop", "orders-5", "orders", "node-1");
    write_token(&pods, U5, &t2);
    let e = r.resolve(Some(&cgroup_of(U5, 'f'))).await.unwrap_err();
    assert!(
        matches!(&e, Unresolved::Rejected { reason, .. } if reason.contains("bound to pod")),
        "{e}"
    );
    assert_eq!(
        m(r#"interceptor_token_review_failures_total{reason="mismatch"}"#),
        Some(2.0)
    );

    // A deleted pod's cgroup no longer resolves, cached or not.
    api.delete_pod(U1);
    let start = Instant::now();
    loop {
        match r.resolve(Some(&c1)).await {
            Err(Unresolved::UnknownPod(u)) => {
                assert_eq!(u, U1);
                break;
            }
            other => assert!(
                start.elapsed() < Duration::from_secs(10),
                "still resolves: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Never a pod of this node: unresolved after the short wait.
    let t = Instant::now();
    let e = r
        .resolve(Some(&cgroup_of(
            "00000000-0000-0000-0000-000000000000",
            'a',
        )))
        .await
        .unwrap_err();
    assert!(matches!(e, Unresolved::UnknownPod(_)), "{e}");
    assert!(t.elapsed() >= Duration::from_millis(250));
    // A pod without a projected token.
    api.add_pod(
        "00000000-0000-0000-0000-0000000000f0",
        "shop",
        "no-token",
        "orders",
        "node-1",
    );
    let e = r
        .resolve(Some(&cgroup_of(
            "00000000-0000-0000-0000-0000000000f0",
            'a',
        )))
        .await
        .unwrap_err();
    assert!(matches!(e, Unresolved::NoToken { .. }), "{e}");
    // Cgroups that are not pods still go to the standalone rules.
    let n = r
        .resolve(Some("system.slice/backup.service"))
        .await
        .unwrap();
    assert_eq!(
        (n.name(), n.method),
        ("node/backup.service".into(), Method::Standalone)
    );
}

/// The real daemon, the real kernel: a process in a lab pod whose cgroup is
/// laid out like the kubelet's is attributed to the service account that the
/// (fake) API server verified from the pod's projected token.
#[test]
fn kubernetes_identity_end_to_end() {
    use common::*;
    if !privileged("kubernetes_identity_end_to_end") {
        return;
    }
    let dir = scratch("k8s-e2e");
    let api = FakeApi::start(&dir);
    let pods_dir = dir.join("kubelet-pods");
    let audit_dir = dir.join("audit");
    let mut lab = interceptor_daemon::testbed::Lab::new().unwrap();
    let exp = in_an_hour();
    let (good, bad, gone) = (U1, U2, U3);
    let good_pod = lab.add_pod("good", &cgroup_of(good, 'a')).unwrap();
    let bad_pod = lab.add_pod("bad", &cgroup_of(bad, 'b')).unwrap();
    let gone_pod = lab.add_pod("gone", &cgroup_of(gone, 'c')).unwrap();
    for (uid, name, tok) in [(good, "orders-1", "good"), (gone, "orders-3", "gone")] {
        api.add_pod(uid, "shop", name, "orders", "lab-node");
        let t = jwt(tok, exp);
        api.add_token(&t, "shop", "orders", Some((name, uid)));
        write_token(&pods_dir, uid, &t);
    }
    api.add_pod(bad, "shop", "orders-2", "orders", "lab-node");
    let revoked = jwt("revoked", exp);
    api.reject_token(
        &revoked,
        "[invalid bearer token, token has been invalidated]",
    );
    write_token(&pods_dir, bad, &revoked);
    // Another node's pod with the same layout is not this node's.
    api.add_pod(U4, "shop", "orders-4", "orders", "other-node");

    let svc: SocketAddr = (lab.node_v4(2), 7401).into();
    let server = Server::start(svc, 10, &dir, &[]);
    let opts = DaemonOpts {
        select: vec!["kubepods.slice/*/kubepods-*-pod*.slice".into()],
        destinations: vec![svc.to_string()],
        identity: format!(
            "identity:\n  kubernetes:\n{}audit:\n  dir: {}\n",
            api.identity_yaml(&pods_dir, "lab-node", "    "),
            audit_dir.display()
        ),
        ..Default::default()
    };
    let cfg = write_config(&lab, &dir, &opts);
    let mut daemon = Daemon::start(&cfg, &dir);

    let (r, pid) = probe_in_pod(&good_pod, &["connect", &svc.to_string()]);
    assert_eq!(r["ok"], true, "{r}\n{}", daemon.raw_log());
    let recs = daemon.records(1);
    let rec = recs
        .iter()
        .find(|r| r["pid"] == pid)
        .unwrap_or_else(|| panic!("{recs:?}"));
    assert_eq!(rec["identity"], "shop/orders");
    assert_eq!(rec["identity_method"], "tokenreview");
    assert_eq!(rec["pod_uid"], good);
    assert_eq!(rec["container_id"], "a".repeat(64));
    assert_eq!(rec["cgroup_id"], good_pod.cgroup_id);

    // A pod whose token the API server rejects is refused, never forwarded.
    let (r, _) = probe_in_pod(&bad_pod, &["connect", &svc.to_string()]);
    assert_eq!(r["ok"], false, "{r}");
    let log = daemon.raw_log();
    assert!(
        log.contains("its service-account token failed verification"),
        "{log}"
    );

    // A pod seen, then deleted: its cgroup no longer resolves.
    let (r, _) = probe_in_pod(&gone_pod, &["connect", &svc.to_string()]);
    assert_eq!(r["ok"], true, "{r}");
    api.delete_pod(gone);
    std::thread::sleep(Duration::from_millis(500));
    let (r, _) = probe_in_pod(&gone_pod, &["connect", &svc.to_string()]);
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        daemon.raw_log().contains("is not a pod of this node"),
        "{}",
        daemon.raw_log()
    );
    assert_eq!(
        server.reports(2).len(),
        2,
        "only the two verified connections"
    );

    let (_, text) = http_get(admin_addr(&lab), "/metrics");
    for (series, want) in [
        (
            r#"interceptor_connections_total{identity="shop/orders",target="svc",protocol="tcp",intercepted="true"}"#,
            2.0,
        ),
        (
            r#"interceptor_token_review_failures_total{reason="unauthenticated"}"#,
            1.0,
        ),
        (
            r#"interceptor_connection_failures_total{target="svc",reason="unknown_identity"}"#,
            2.0,
        ),
        (
            r#"interceptor_token_review_seconds_count{result="authenticated"}"#,
            2.0,
        ),
        ("interceptor_kubernetes_pods_known", 2.0),
    ] {
        assert_eq!(metric(&text, series), Some(want), "{series}\n{text}");
    }
    daemon.stop();

    // The audit log attributes the connection to the verified identity.
    let shown = std::process::Command::new(DAEMON)
        .args(["audit", "show"])
        .arg(&audit_dir)
        .output()
        .unwrap();
    let access: Vec<serde_json::Value> = String::from_utf8_lossy(&shown.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["record"].get("Access").cloned())
        .collect();
    let mine = access
        .iter()
        .find(|a| a["identity"]["pod"] == good)
        .unwrap_or_else(|| panic!("no audit record for the pod: {access:?}"));
    let id = &mine["identity"];
    assert_eq!(id["namespace"], "shop");
    assert_eq!(id["service_account"], "orders");
    assert_eq!(id["verification"]["Other"], "tokenreview", "{id}");
    assert_eq!(
        id["claims"]["authentication.kubernetes.io/pod-name"],
        "orders-1"
    );
    assert_eq!(id["claims"]["pod"], "shop/orders-1");
}

#[test]
fn a_rollout_keeps_the_programs_attached_and_an_uninstall_detaches() {
    use common::*;
    if !privileged("a_rollout_keeps_the_programs_attached_and_an_uninstall_detaches") {
        return;
    }
    let dir = scratch("k8s-handover");
    let api = FakeApi::start(&dir);
    let pods_dir = dir.join("kubelet-pods");
    let mut lab = interceptor_daemon::testbed::Lab::new().unwrap();
    let pod = lab.add_pod("app", &cgroup_of(U1, 'a')).unwrap();
    api.add_pod(U1, "shop", "orders-1", "orders", "lab-node");
    let token = jwt("good", in_an_hour());
    api.add_token(&token, "shop", "orders", Some(("orders-1", U1)));
    write_token(&pods_dir, U1, &token);
    let svc: SocketAddr = (lab.node_v4(2), 7402).into();
    let server = Server::start(svc, 10, &dir, &[]);
    let opts = DaemonOpts {
        select: vec!["kubepods.slice/*/kubepods-*-pod*.slice".into()],
        destinations: vec![svc.to_string()],
        identity: format!(
            "identity:\n  kubernetes:\n{}",
            api.identity_yaml(&pods_dir, "lab-node", "    ")
        ),
        ..Default::default()
    };
    let cfg = write_config(&lab, &dir, &opts);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let with_handover = text.replace(
        "redirect:\n",
        "redirect:\n  handover: { daemonset: interceptor, namespace: interceptor-system }\n",
    );
    assert_ne!(text, with_handover);
    std::fs::write(&cfg, with_handover).unwrap();
    let connect = || probe_in_pod(&pod, &["connect", &svc.to_string(), "--timeout-ms", "3000"]).0;

    // A rollout: the DaemonSet is still there, so the programs stay attached
    // and the pod's connections are refused until the next daemon runs.
    api.set_daemonset("interceptor-system", "interceptor", Some(false));
    let mut daemon = Daemon::start(&cfg, &dir);
    assert_eq!(connect()["ok"], true);
    assert_eq!(daemon.stop(), Some(0), "{}", daemon.raw_log());
    assert!(
        daemon.raw_log().contains("handing over"),
        "{}",
        daemon.raw_log()
    );
    assert!(
        pin_dir(&lab).join("links").exists(),
        "the pins were removed"
    );
    let r = connect();
    assert_eq!(
        r["kind"], "ConnectionRefused",
        "not refused between daemons: {r}"
    );
    assert_eq!(
        server.reports(1).len(),
        1,
        "the server was reached unchecked"
    );

    // The next daemon takes the programs over and serves.
    let mut daemon = Daemon::start_taking_over(&cfg, &dir);
    assert_eq!(connect()["ok"], true);

    // An uninstall: the DaemonSet is gone, or being deleted (foreground
    // deletion), so SIGTERM detaches.
    for (state, says) in [
        (None, "is gone (uninstalled)"),
        (Some(true), "is being deleted (uninstalled)"),
    ] {
        if state.is_some() {
            daemon = Daemon::start(&cfg, &dir);
            assert_eq!(connect()["ok"], true);
        }
        api.set_daemonset("interceptor-system", "interceptor", state);
        assert_eq!(daemon.stop(), Some(0), "{}", daemon.raw_log());
        assert!(daemon.raw_log().contains(says), "{}", daemon.raw_log());
        assert!(
            !pin_dir(&lab).exists(),
            "pins left behind after an uninstall"
        );
    }
    let r = connect();
    assert_eq!(r["ok"], true, "{r}");
    let last: SocketAddr = server.reports(4).last().unwrap()["peer"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(last.ip(), pod.v4, "after the uninstall the pod goes direct");
}
