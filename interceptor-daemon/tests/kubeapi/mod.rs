//! An in-test Kubernetes API server: HTTPS (a test CA made with rcgen) on
//! loopback, speaking the real JSON (k8s-openapi types serialized) for the
//! calls the daemon makes: Pod list and watch (resourceVersion, bookmarks,
//! 410 Expired after compaction) and TokenReview create. Failures are injected
//! on demand: wrong client credentials (401), 403 and 500 answers, slow
//! answers, dropped watches.
//!
//! It runs on its own runtime thread, so it serves synchronous tests (with the
//! daemon binary as the client) and async tests alike.
#![allow(dead_code)]

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Frame, Incoming},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use k8s_openapi::{
    api::{
        authentication::v1::{TokenReview, TokenReviewStatus, UserInfo},
        core::v1::{Pod, PodSpec},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// The daemon's own bearer token that the server accepts.
pub const CLIENT_TOKEN: &str = "daemon-token-1";

/// What a registered service-account token authenticates as.
#[derive(Clone)]
struct TokenEntry {
    /// `None`: not authenticated (with this error).
    user: Result<UserInfo, String>,
    audiences: Vec<String>,
}

#[derive(Default)]
struct St {
    rv: u64,
    pods: BTreeMap<String, Pod>,
    /// (resourceVersion, type, object) since the last compaction.
    history: Vec<(u64, &'static str, Pod)>,
    /// Watches from a version older than this get 410 Expired.
    compacted_to: u64,
    tokens: HashMap<String, TokenEntry>,
    review_status: Option<u16>,
    review_delay: Duration,
    pods_status: Option<u16>,
    /// Bumped to end every open watch.
    watch_epoch: u64,
    pub lists: u64,
    /// resourceVersion of every watch request, in order.
    pub watches: Vec<String>,
    pub reviews: u64,
    /// DaemonSets by `namespace/name`: `true` once being deleted.
    daemonsets: HashMap<String, bool>,
}

pub struct FakeApi {
    pub addr: SocketAddr,
    pub url: String,
    pub ca_file: PathBuf,
    pub token_file: PathBuf,
    st: Arc<Mutex<St>>,
    changed: Arc<Notify>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn tls_config(dir: &Path) -> (rustls::ServerConfig, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        SanType,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "interceptor test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    leaf.distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    (cfg, ca_file)
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn error(code: u16) -> Response<Body> {
    let reason = match code {
        401 => "Unauthorized",
        403 => "Forbidden",
        _ => "InternalError",
    };
    full(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &status(code, reason, &format!("injected {code}")),
    )
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

/// `spec.nodeName=<node>` (the only field selector the daemon uses).
fn node_filter(q: &HashMap<String, String>) -> Option<String> {
    q.get("fieldSelector")
        .and_then(|f| f.strip_prefix("spec.nodeName="))
        .map(str::to_string)
}

fn on_node(p: &Pod, node: &Option<String>) -> bool {
    node.as_ref()
        .is_none_or(|n| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(n.as_str()))
}

impl FakeApi {
    /// Starts the server; the CA and the daemon's token are written to `dir`.
    pub fn start(dir: &Path) -> FakeApi {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tls, ca_file) = tls_config(dir);
        let token_file = dir.join("daemon-token");
        std::fs::write(&token_file, CLIENT_TOKEN).unwrap();
        // Bound here (not with block_on), so async tests can start it too.
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let st = Arc::new(Mutex::new(St::default()));
        let changed = Arc::new(Notify::new());
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        {
            let st = st.clone();
            let changed = changed.clone();
            rt.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let acceptor = acceptor.clone();
                    let st = st.clone();
                    let changed = changed.clone();
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let svc = service_fn(move |req| {
                            let st = st.clone();
                            let changed = changed.clone();
                            async move { Ok::<_, Infallible>(handle(req, st, changed).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                    });
                }
            });
        }
        FakeApi {
            addr,
            url: format!("https://127.0.0.1:{}", addr.port()),
            ca_file,
            token_file,
            st,
            changed,
            rt: Some(rt),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut St) -> R) -> R {
        let r = f(&mut self.st.lock().unwrap());
        self.changed.notify_waiters();
        r
    }

    /// The `identity.kubernetes` section pointing at this server.
    pub fn identity_yaml(&self, pods_dir: &Path, node: &str, indent: &str) -> String {
        format!(
            "{indent}api_server: {}\n{indent}ca_file: {}\n{indent}token_file: {}\n{indent}kubelet_pods_dir: {}\n{indent}node_name: {node}\n{indent}review_timeout_ms: 1000\n",
            self.url,
            self.ca_file.display(),
            self.token_file.display(),
            pods_dir.display()
        )
    }

    pub fn add_pod(&self, uid: &str, ns: &str, name: &str, sa: &str, node: &str) {
        let pod = Pod {
            metadata: ObjectMeta {
                uid: Some(uid.into()),
                namespace: Some(ns.into()),
                name: Some(name.into()),
                labels: Some([("app".to_string(), name.to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                service_account_name: Some(sa.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.with(|s| {
            s.rv += 1;
            let mut pod = pod;
            pod.metadata.resource_version = Some(s.rv.to_string());
            let kind = if s.pods.contains_key(uid) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            s.pods.insert(uid.into(), pod.clone());
            let rv = s.rv;
            s.history.push((rv, kind, pod));
        });
    }

    pub fn delete_pod(&self, uid: &str) {
        self.with(|s| {
            if let Some(mut pod) = s.pods.remove(uid) {
                s.rv += 1;
                pod.metadata.resource_version = Some(s.rv.to_string());
                let rv = s.rv;
                s.history.push((rv, "DELETED", pod));
            }
        });
    }

    /// Forgets the history: a watch resuming from an older version gets 410.
    pub fn compact(&self) {
        self.with(|s| {
            s.compacted_to = s.rv + 1;
            s.history.clear();
        });
    }

    /// Ends every open watch stream (as a load balancer or an API server
    /// restart does).
    pub fn drop_watches(&self) {
        self.with(|s| s.watch_epoch += 1);
    }

    /// A service-account token the server authenticates.
    pub fn add_token(&self, token: &str, ns: &str, sa: &str, pod: Option<(&str, &str)>) {
        let mut extra = BTreeMap::new();
        if let Some((name, uid)) = pod {
            extra.insert(
                "authentication.kubernetes.io/pod-name".to_string(),
                vec![name.to_string()],
            );
            extra.insert(
                "authentication.kubernetes.io/pod-uid".to_string(),
                vec![uid.to_string()],
            );
            extra.insert(
                "authentication.kubernetes.io/node-name".to_string(),
                vec!["node-1".to_string()],
            );
        }
        let user = UserInfo {
            username: Some(format!("system:serviceaccount:{ns}:{sa}")),
            uid: Some(format!("sa-uid-{ns}-{sa}")),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ]),
            extra: Some(extra.into_iter().collect()),
        };
        self.with(|s| {
            s.tokens.insert(
                token.into(),
                TokenEntry {
                    user: Ok(user),
                    audiences: vec!["https://kubernetes.default.svc".into()],
                },
            )
        });
    }

    /// A token registered as invalid (revoked, bad signature, ...).
    pub fn reject_token(&self, token: &str, error: &str) {
        self.with(|s| {
            s.tokens.insert(
                token.into(),
                TokenEntry {
                    user: Err(error.into()),
                    audiences: vec![],
                },
            )
        });
    }

    pub fn set_review_status(&self, code: Option<u16>) {
        self.with(|s| s.review_status = code);
    }

    pub fn set_review_delay(&self, d: Duration) {
        self.with(|s| s.review_delay = d);
    }

    pub fn set_pods_status(&self, code: Option<u16>) {
        self.with(|s| s.pods_status = code);
    }

    /// A DaemonSet exists (`Some(deleting)`) or not (`None`).
    pub fn set_daemonset(&self, ns: &str, name: &str, state: Option<bool>) {
        self.with(|s| match state {
            Some(deleting) => {
                s.daemonsets.insert(format!("{ns}/{name}"), deleting);
            }
            None => {
                s.daemonsets.remove(&format!("{ns}/{name}"));
            }
        });
    }

    pub fn reviews(&self) -> u64 {
        self.st.lock().unwrap().reviews
    }

    pub fn lists(&self) -> u64 {
        self.st.lock().unwrap().lists
    }

    pub fn watches(&self) -> Vec<String> {
        self.st.lock().unwrap().watches.clone()
    }
}

async fn handle(
    req: Request<Incoming>,
    st: Arc<Mutex<St>>,
    changed: Arc<Notify>,
) -> Response<Body> {
    let authorized = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {CLIENT_TOKEN}"));
    if !authorized {
        return error(401);
    }
    let path = req.uri().path().to_string();
    let q = query(req.uri().query());
    match (req.method().as_str(), path.as_str()) {
        ("POST", "/apis/authentication.k8s.io/v1/tokenreviews") => {
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            let Ok(body) = body else {
                return error(500);
            };
            token_review(&body, &st).await
        }
        ("GET", "/api/v1/pods") => {
            if let Some(code) = st.lock().unwrap().pods_status {
                return error(code);
            }
            if q.get("watch").map(String::as_str) == Some("true") {
                watch(q, st, changed)
            } else {
                list(&q, &st)
            }
        }
        ("GET", p) if p.starts_with("/apis/apps/v1/namespaces/") => daemonset(p, &st),
        _ => full(
            StatusCode::NOT_FOUND,
            &status(404, "NotFound", &format!("no route {path}")),
        ),
    }
}

/// GET /apis/apps/v1/namespaces/{ns}/daemonsets/{name}
fn daemonset(path: &str, st: &Mutex<St>) -> Response<Body> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ["apis", "apps", "v1", "namespaces", ns, "daemonsets", name] = parts[..] else {
        return full(
            StatusCode::NOT_FOUND,
            &status(404, "NotFound", &format!("no route {path}")),
        );
    };
    let Some(deleting) = st
        .lock()
        .unwrap()
        .daemonsets
        .get(&format!("{ns}/{name}"))
        .copied()
    else {
        return full(
            StatusCode::NOT_FOUND,
            &status(
                404,
                "NotFound",
                &format!("daemonsets.apps \"{name}\" not found"),
            ),
        );
    };
    let ds = k8s_openapi::api::apps::v1::DaemonSet {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            deletion_timestamp: deleting.then(|| {
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                )
            }),
            ..ObjectMeta::default()
        },
        ..Default::default()
    };
    full(StatusCode::OK, &serde_json::to_value(&ds).unwrap())
}

async fn token_review(body: &[u8], st: &Mutex<St>) -> Response<Body> {
    let (code, delay) = {
        let mut s = st.lock().unwrap();
        s.reviews += 1;
        (s.review_status, s.review_delay)
    };
    tokio::time::sleep(delay).await;
    if let Some(code) = code {
        return error(code);
    }
    let Ok(mut review) = serde_json::from_slice::<TokenReview>(body) else {
        return full(
            StatusCode::BAD_REQUEST,
            &status(400, "BadRequest", "not a TokenReview"),
        );
    };
    let token = review.spec.token.clone().unwrap_or_default();
    let entry = st.lock().unwrap().tokens.get(&token).cloned();
    let wanted = review.spec.audiences.clone().unwrap_or_default();
    review.status = Some(match entry {
        Some(TokenEntry {
            user: Ok(user),
            audiences,
        }) if wanted.is_empty() || wanted.iter().any(|a| audiences.contains(a)) => {
            TokenReviewStatus {
                authenticated: Some(true),
                user: Some(user),
                audiences: Some(if wanted.is_empty() {
                    audiences
                } else {
                    wanted
                        .into_iter()
                        .filter(|a| audiences.contains(a))
                        .collect()
                }),
                error: None,
            }
        }
        Some(TokenEntry { user: Ok(_), .. }) => TokenReviewStatus {
            authenticated: Some(false),
            error: Some("[invalid bearer token, token audiences are invalid]".into()),
            ..Default::default()
        },
        Some(TokenEntry { user: Err(e), .. }) => TokenReviewStatus {
            authenticated: Some(false),
            error: Some(e),
            ..Default::default()
        },
        None => TokenReviewStatus {
            authenticated: Some(false),
            error: Some(
                "[invalid bearer token, square/go-jose: error in cryptographic primitive]".into(),
            ),
            ..Default::default()
        },
    });
    full(StatusCode::CREATED, &serde_json::to_value(&review).unwrap())
}

fn list(q: &HashMap<String, String>, st: &Mutex<St>) -> Response<Body> {
    let mut s = st.lock().unwrap();
    s.lists += 1;
    let node = node_filter(q);
    let items: Vec<Value> = s
        .pods
        .values()
        .filter(|p| on_node(p, &node))
        .map(|p| serde_json::to_value(p).unwrap())
        .collect();
    full(
        StatusCode::OK,
        &json!({"apiVersion": "v1", "kind": "PodList",
                "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
    )
}

fn watch(q: HashMap<String, String>, st: Arc<Mutex<St>>, changed: Arc<Notify>) -> Response<Body> {
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let node = node_filter(&q);
    let epoch = {
        let mut s = st.lock().unwrap();
        s.watches
            .push(q.get("resourceVersion").cloned().unwrap_or_default());
        s.watch_epoch
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let line = |v: Value| Bytes::from(format!("{v}\n"));
        let mut cursor = from;
        let expired = st.lock().unwrap().compacted_to > from;
        if expired {
            let _ = tx
                .send(line(
                    json!({"type": "ERROR", "object": status(410, "Expired",
                    &format!("too old resource version: {from}"))}),
                ))
                .await;
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        loop {
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (events, rv, ended) = {
                let s = st.lock().unwrap();
                let ev: Vec<(u64, &'static str, Pod)> = s
                    .history
                    .iter()
                    .filter(|(rv, _, p)| *rv > cursor && on_node(p, &node))
                    .cloned()
                    .collect();
                (ev, s.rv, s.watch_epoch != epoch)
            };
            if ended {
                return;
            }
            for (rv, kind, pod) in events {
                cursor = rv;
                if tx
                    .send(line(json!({"type": kind, "object": pod})))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tick.tick() => {
                    if bookmarks {
                        cursor = cursor.max(rv);
                        let bm = json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                            "metadata": {"resourceVersion": cursor.to_string()}}});
                        if tx.send(line(bm)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}
