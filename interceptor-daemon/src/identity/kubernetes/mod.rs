//! The Kubernetes identity source: this node's pods (a Pod watch) and each
//! pod's projected service-account token verified by the API server
//! (TokenReview).
//!
//! A connection's cgroup names a pod UID ([`super::cgroup_path`]). The pod index
//! ([`pods`]) says which pod that is (namespace, name, service account); the
//! kubelet has written the pod's projected token to
//! `<kubelet_pods_dir>/<uid>/volumes/kubernetes.io~projected/<volume>/token`;
//! the token is submitted to the API server ([`review`]) and its answer, which
//! must name the pod's own namespace and service account, is the identity.
//!
//! Verified identities are cached per pod UID: a hit costs one index lookup and
//! one `stat` of the token file. The entry is re-verified when the file changes
//! (the kubelet rotates the token), after `reverify_after_s`, and never used
//! past the token's own expiry. While the API server cannot be reached a cached
//! identity keeps working until that expiry; a pod never verified is then
//! unresolved (refused unless `identity.unknown: allow`). A token the API server
//! rejects is always refused.
//!
//! API permissions used (ClusterRole of the daemon's service account):
//! `pods`: `list`, `watch` (core group; `get` is not used; the watch is limited to
//! `spec.nodeName=<node>` by a field selector) and `tokenreviews`: `create`
//! (`authentication.k8s.io`).

pub mod pods;
pub mod review;

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use serde::Deserialize;
use tracing::{debug, warn};

use super::{Identity, Method, Unresolved, cgroup_path::PodCgroup};
use crate::metrics::{IdentityCacheLabels, Metrics};

pub use pods::{Lookup, PodIndex, PodInfo};
pub use review::{ReviewError, TokenVerifier, VerifiedIdentity};

/// `identity.kubernetes` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// API server URL. Omitted: the in-cluster service account (or a
    /// kubeconfig), as `kube::Config::infer` finds it.
    #[serde(default)]
    pub api_server: Option<String>,
    /// PEM bundle of the API server's CA (default with `api_server` omitted:
    /// the in-cluster one).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Bearer token of the daemon itself; re-read when it changes (default
    /// with `api_server` omitted: the in-cluster one).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Where the kubelet keeps pod volumes.
    #[serde(default = "default_pods_dir")]
    pub kubelet_pods_dir: PathBuf,
    /// Audiences the TokenReview asks for (empty: the API server's own).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The Kubernetes node name (default: the daemon's `node_name`).
    #[serde(default)]
    pub node_name: Option<String>,
    /// Upper bound of one TokenReview.
    #[serde(default = "default_review_timeout_ms")]
    pub review_timeout_ms: u64,
    /// How long a connection from a pod the index does not know yet waits for
    /// the watch to deliver it (a pod started a moment ago).
    #[serde(default = "default_pod_wait_ms")]
    pub pod_wait_ms: u64,
    /// A cached verification (of a pod's projected token, or of a token a
    /// client presents as its password) is repeated after this long
    /// (revocation is noticed), even if the token has not changed.
    #[serde(default = "default_reverify_after_s")]
    pub reverify_after_s: u64,
}

fn default_pods_dir() -> PathBuf {
    PathBuf::from("/var/lib/kubelet/pods")
}
fn default_review_timeout_ms() -> u64 {
    3000
}
fn default_pod_wait_ms() -> u64 {
    2000
}
fn default_reverify_after_s() -> u64 {
    300
}

/// Why the Kubernetes source cannot start.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("identity.kubernetes.api_server `{0}` is not a URL")]
    BadUrl(String),
    #[error("cannot read identity.kubernetes.ca_file {path}: {source}")]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("identity.kubernetes.ca_file {0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("no Kubernetes client configuration (not in a cluster, no kubeconfig): {0}")]
    Infer(String),
    #[error("building the Kubernetes client: {0}")]
    Client(String),
}

/// The kube client configuration from `identity.kubernetes`.
pub async fn client_config(cfg: &KubernetesConfig) -> Result<kube::Config, KubeError> {
    let mut kc = match &cfg.api_server {
        Some(url) => kube::Config::new(url.parse().map_err(|_| KubeError::BadUrl(url.clone()))?),
        None => kube::Config::infer()
            .await
            .map_err(|e| KubeError::Infer(e.to_string()))?,
    };
    if let Some(path) = &cfg.ca_file {
        let pem = std::fs::read(path).map_err(|source| KubeError::CaFile {
            path: path.clone(),
            source,
        })?;
        let ders = pem_certificates(&pem);
        if ders.is_empty() {
            return Err(KubeError::NoCertificate(path.clone()));
        }
        kc.root_cert = Some(ders);
        // Re-read by the client (CA rotation), as for the in-cluster CA.
        kc.root_cert_file = Some(path.clone());
    }
    if let Some(path) = &cfg.token_file {
        kc.auth_info.token = None;
        kc.auth_info.token_file = Some(path.to_string_lossy().into_owned());
    }
    Ok(kc)
}

/// DER bodies of the certificates of a PEM bundle.
fn pem_certificates(pem: &[u8]) -> Vec<Vec<u8>> {
    use rustls_pki_types::{CertificateDer, pem::PemObject as _};
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .map(|c| c.to_vec())
        .collect()
}

/// Identifies one version of a token file: the kubelet writes a rotated token
/// as a new file (and swaps a symlink), so any change shows here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileKey {
    dev: u64,
    ino: u64,
    mtime_ns: i128,
    len: u64,
}

impl FileKey {
    fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            len: m.len(),
        })
    }
}

struct CacheEntry {
    path: PathBuf,
    file: FileKey,
    verified: Arc<VerifiedIdentity>,
    verified_at: Instant,
}

impl CacheEntry {
    fn unexpired(&self, now: SystemTime) -> bool {
        self.verified.expires_at.is_none_or(|e| now < e)
    }
}

/// Pod index + token verifier + the per-pod cache.
pub struct KubeSource {
    index: Arc<PodIndex>,
    verifier: Arc<TokenVerifier>,
    pods_dir: PathBuf,
    audiences: Vec<String>,
    pod_wait: Duration,
    reverify_after: Duration,
    cache: Mutex<HashMap<String, CacheEntry>>,
    /// One verification per pod at a time; the others wait for its result.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    metrics: Arc<Metrics>,
    watch: tokio::task::JoinHandle<()>,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

impl KubeSource {
    /// Builds the client and starts watching this node's pods.
    pub async fn start(
        cfg: &KubernetesConfig,
        default_node: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Self, KubeError> {
        let kc = client_config(cfg).await?;
        let client = kube::Client::try_from(kc).map_err(|e| KubeError::Client(e.to_string()))?;
        let node = cfg.node_name.as_deref().unwrap_or(default_node).to_string();
        let index = Arc::new(PodIndex::new(metrics.clone()));
        let watch = tokio::spawn(index.clone().run(client.clone(), node));
        let verifier = Arc::new(
            TokenVerifier::new(
                client,
                cfg.audiences.clone(),
                Duration::from_millis(cfg.review_timeout_ms.max(1)),
                metrics.clone(),
            )
            .remembering(Duration::from_secs(cfg.reverify_after_s)),
        );
        Ok(Self {
            index,
            verifier,
            pods_dir: cfg.kubelet_pods_dir.clone(),
            audiences: cfg.audiences.clone(),
            pod_wait: Duration::from_millis(cfg.pod_wait_ms),
            reverify_after: Duration::from_secs(cfg.reverify_after_s),
            cache: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            metrics,
            watch,
        })
    }

    pub fn verifier(&self) -> Arc<TokenVerifier> {
        self.verifier.clone()
    }

    pub fn index(&self) -> Arc<PodIndex> {
        self.index.clone()
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .identity_cache
            .get_or_create(&IdentityCacheLabels {
                source: "kubernetes",
                result,
            })
            .inc();
    }

    fn cache_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CacheEntry>> {
        // A panic while holding the lock leaves a consistent map (plain inserts).
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh cached identity for `uid`, if the token file is unchanged.
    fn cached(&self, uid: &str) -> Option<Arc<VerifiedIdentity>> {
        let cache = self.cache_lock();
        let e = cache.get(uid)?;
        // One stat of a small tmpfs file: cheaper than a blocking-pool hop.
        let fresh = e.unexpired(SystemTime::now())
            && e.verified_at.elapsed() < self.reverify_after
            && FileKey::of(&e.path).is_ok_and(|k| k == e.file);
        fresh.then(|| e.verified.clone())
    }

    pub async fn resolve(&self, pc: &PodCgroup) -> Result<Identity, Unresolved> {
        let uid = &pc.pod_uid;
        let pod = match self.index.wait_for(uid, self.pod_wait).await {
            Lookup::Found(p) => p,
            Lookup::Deleted | Lookup::Unknown => {
                self.cache_lock().remove(uid);
                return Err(Unresolved::UnknownPod(uid.clone()));
            }
        };
        if let Some(v) = self.cached(uid) {
            self.count("hit");
            return Ok(identity(&pod, &v, pc));
        }
        let lock = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            inflight.retain(|_, l| Arc::strong_count(l) > 1);
            inflight.entry(uid.clone()).or_default().clone()
        };
        let _one_at_a_time = lock.lock().await;
        if let Some(v) = self.cached(uid) {
            // Verified by the task we waited for.
            self.count("hit");
            return Ok(identity(&pod, &v, pc));
        }
        self.count("miss");
        let (path, token) = match find_token(&self.pods_dir, uid, &self.audiences) {
            Ok(t) => t,
            Err(reason) => {
                self.metrics
                    .token_review_failures
                    .get_or_create(&crate::metrics::ReviewFailureLabels { reason: "no_token" })
                    .inc();
                warn!(pod_uid = %uid, namespace = %pod.namespace, pod = %pod.name, %reason,
                    "pod has no usable service-account token");
                return Err(Unresolved::NoToken {
                    uid: uid.clone(),
                    reason,
                });
            }
        };
        let file = FileKey::of(&path).map_err(|e| Unresolved::NoToken {
            uid: uid.clone(),
            reason: format!("{}: {e}", path.display()),
        })?;
        let outcome = self.verifier.verify_token(&token).await.and_then(|v| {
            v.check_binding(&pod).map(|()| v).inspect_err(|e| {
                // verify_token counted an authenticated review.
                self.metrics
                    .token_review_failures
                    .get_or_create(&crate::metrics::ReviewFailureLabels { reason: e.reason() })
                    .inc();
            })
        });
        match outcome {
            Ok(v) => {
                debug!(pod_uid = %uid, identity = %v.username, "token verified");
                let v = Arc::new(v);
                let mut cache = self.cache_lock();
                let now = SystemTime::now();
                cache.retain(|_, e| e.unexpired(now));
                cache.insert(
                    uid.clone(),
                    CacheEntry {
                        path,
                        file,
                        verified: v.clone(),
                        verified_at: Instant::now(),
                    },
                );
                Ok(identity(&pod, &v, pc))
            }
            Err(e) if e.is_rejection() => {
                self.cache_lock().remove(uid);
                warn!(pod_uid = %uid, namespace = %pod.namespace, pod = %pod.name,
                    service_account = %pod.service_account, reason = e.reason(), error = %e,
                    "refusing the pod: its service-account token failed verification");
                Err(Unresolved::Rejected {
                    uid: uid.clone(),
                    reason: e.to_string(),
                })
            }
            Err(e) => {
                // The API server cannot answer: a verification still within
                // the token's lifetime stands.
                let cache = self.cache_lock();
                match cache.get(uid).filter(|c| c.unexpired(SystemTime::now())) {
                    Some(c) => {
                        warn!(pod_uid = %uid, reason = e.reason(), error = %e,
                            "token review unavailable; using the earlier verification until the token expires");
                        Ok(identity(&pod, &c.verified, pc))
                    }
                    None => {
                        warn!(pod_uid = %uid, namespace = %pod.namespace, pod = %pod.name,
                            reason = e.reason(), error = %e, "token review unavailable; pod not verified");
                        Err(Unresolved::Unverifiable {
                            uid: uid.clone(),
                            reason: e.to_string(),
                        })
                    }
                }
            }
        }
    }
}

fn identity(pod: &PodInfo, v: &VerifiedIdentity, pc: &PodCgroup) -> Identity {
    let mut claims = v.claims();
    claims.insert("pod".into(), format!("{}/{}", pod.namespace, pod.name));
    Identity {
        namespace: v.namespace.clone(),
        service_account: v.service_account.clone(),
        pod_uid: Some(pc.pod_uid.clone()),
        container_id: pc.container_id.clone(),
        method: Method::TokenReview,
        resolved_at: SystemTime::now(),
        claims,
    }
}

/// The pod's projected service-account token: `(path, contents)`.
///
/// A pod may have several projected volumes with a `token` (the default
/// `kube-api-access-*` one and tokens projected for other audiences). With
/// `audiences` configured, the first token whose `aud` claim names one of them
/// is taken; otherwise the `kube-api-access-*` volume's, else the first.
pub fn find_token(
    pods_dir: &Path,
    uid: &str,
    audiences: &[String],
) -> Result<(PathBuf, String), String> {
    let dir = pods_dir
        .join(uid)
        .join("volumes")
        .join("kubernetes.io~projected");
    let mut volumes: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path().join("token"))
        .filter(|p| p.is_file())
        .collect();
    volumes.sort();
    let mut tokens = Vec::new();
    for p in volumes {
        match std::fs::read_to_string(&p) {
            Ok(t) if !t.trim().is_empty() => tokens.push((p, t.trim().to_string())),
            _ => {}
        }
    }
    let pick = if audiences.is_empty() {
        tokens
            .iter()
            .position(|(p, _)| {
                p.parent()
                    .and_then(|v| v.file_name())
                    .is_some_and(|n| n.to_string_lossy().starts_with("kube-api-access-"))
            })
            .or((!tokens.is_empty()).then_some(0))
    } else {
        tokens.iter().position(|(_, t)| {
            review::jwt_claims(t).is_some_and(|c| c.aud.iter().any(|a| audiences.contains(a)))
        })
    };
    match pick {
        Some(i) => Ok(tokens.swap_remove(i)),
        None if tokens.is_empty() => Err(format!("no projected token under {}", dir.display())),
        None => Err(format!(
            "no projected token under {} is for the audiences {audiences:?}",
            dir.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        use base64::Engine as _;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            e.encode(br#"{"alg":"RS256"}"#),
            e.encode(payload.as_bytes())
        )
    }

    #[test]
    fn token_file_choice() {
        let d = tempfile::tempdir().unwrap();
        let uid = "5f0c8a4e-1b2d-4c3e-9f8a-0123456789ab";
        let proj = d.path().join(uid).join("volumes/kubernetes.io~projected");
        let put = |vol: &str, tok: &str| {
            std::fs::create_dir_all(proj.join(vol)).unwrap();
            std::fs::write(proj.join(vol).join("token"), tok).unwrap();
        };
        assert!(
            find_token(d.path(), uid, &[])
                .unwrap_err()
                .contains("kubernetes.io~projected")
        );
        let api = jwt(r#"{"aud":["https://kubernetes.default.svc"],"exp":1}"#);
        let vault = jwt(r#"{"aud":"vault","exp":1}"#);
        put("a-vault-token", &vault);
        put("kube-api-access-x7k2p", &format!("{api}\n"));
        // Default audience: the kube-api-access volume, trimmed.
        let (p, t) = find_token(d.path(), uid, &[]).unwrap();
        assert!(p.ends_with("kube-api-access-x7k2p/token"), "{p:?}");
        assert_eq!(t, api);
        // Configured audiences pick the token made for them.
        let (_, t) = find_token(d.path(), uid, &["vault".into()]).unwrap();
        assert_eq!(t, vault);
        assert!(
            find_token(d.path(), uid, &["db".into()])
                .unwrap_err()
                .contains("audiences")
        );
        // A volume without a token file (configmap projection) is skipped.
        std::fs::create_dir_all(proj.join("0-ca")).unwrap();
        assert_eq!(find_token(d.path(), uid, &[]).unwrap().1, api);
    }

    #[test]
    fn config_defaults_and_pem() {
        let c: KubernetesConfig =
            serde_yaml::from_str("api_server: https://10.0.0.1:6443\naudiences: [a]\n").unwrap();
        assert_eq!(c.kubelet_pods_dir, Path::new("/var/lib/kubelet/pods"));
        assert_eq!(c.audiences, vec!["a".to_string()]);
        assert!(serde_yaml::from_str::<KubernetesConfig>("bogus: 1\n").is_err());
        let pem = b"junk\n-----BEGIN CERTIFICATE-----\nAAECAw==\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_certificates(pem), vec![vec![0u8, 1, 2, 3]]);
        assert!(pem_certificates(b"nothing").is_empty());
    }
}
