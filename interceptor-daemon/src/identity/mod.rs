//! Identity: who is behind a redirected connection.
//!
//! A connection arrives with the cgroup of the task that opened it. This module
//! turns that into an identity, a Kubernetes-style `namespace/service-account`,
//! with the pod and container the cgroup path names (see [`cgroup_path`]) and how
//! the identity was established.
//!
//! The standalone source (the embedded default, for machines without a cluster)
//! maps cgroup path globs to identities in the configuration; its identities say
//! `standalone` as their verification method. The Kubernetes source
//! ([`kubernetes`]: this node's pods from a Pod watch, each pod's projected
//! service-account token verified with a TokenReview) answers for cgroups that
//! name a pod when `identity.kubernetes` is configured; standalone rules answer
//! for the rest.
//!
//! A selected cgroup that maps to no identity is refused unless the configuration
//! says `unknown: allow` (fail closed). A pod whose token the API server rejects
//! is refused whatever `unknown` says: it is not unknown, it failed to prove
//! who it is.

pub mod cgroup_path;
pub mod kubernetes;

use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

use serde::Deserialize;

use crate::config::CgroupGlob;

/// How an identity was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// From the node's configuration (cgroup path → identity); not verified
    /// with the cluster.
    Standalone,
    /// The pod's projected service-account token, verified by the API server
    /// (TokenReview) and matched against the pod's namespace and service account.
    TokenReview,
}

impl Method {
    pub fn as_str(&self) -> &'static str {
        match self {
            Method::Standalone => "standalone",
            Method::TokenReview => "tokenreview",
        }
    }
}

/// A resolved identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub namespace: String,
    pub service_account: String,
    pub pod_uid: Option<String>,
    pub container_id: Option<String>,
    pub method: Method,
    pub resolved_at: SystemTime,
    /// Claims as verified (TokenReview user info) or configured.
    pub claims: BTreeMap<String, String>,
}

impl Identity {
    /// `namespace/service-account`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.namespace, self.service_account)
    }
}

/// What to do with a selected cgroup that maps to no identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Unknown {
    /// Refuse the connection (fail closed).
    #[default]
    Deny,
    /// Let it through, attributed to the identity `unknown/<cgroup path>`.
    Allow,
}

/// One standalone mapping. `service_account` may contain `{name}`, replaced by
/// the last component of the matching cgroup path (one identity per pod
/// directory with a single rule).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandaloneRule {
    pub cgroups: CgroupGlob,
    pub namespace: String,
    pub service_account: String,
    /// Extra claims recorded with the identity.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    #[serde(default)]
    pub standalone: Vec<StandaloneRule>,
    /// The Kubernetes source (pod watch + TokenReview); none if absent.
    #[serde(default)]
    pub kubernetes: Option<kubernetes::KubernetesConfig>,
    #[serde(default)]
    pub unknown: Unknown,
}

/// Why a connection has no identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unresolved {
    #[error("the connecting cgroup no longer exists")]
    CgroupGone,
    #[error("no identity is configured for cgroup `{0}`")]
    NoMapping(String),
    #[error("pod {0} is not a pod of this node (unknown to the pod index, or deleted)")]
    UnknownPod(String),
    #[error("pod {uid} has no usable service-account token: {reason}")]
    NoToken { uid: String, reason: String },
    #[error("pod {uid}: the token cannot be verified now: {reason}")]
    Unverifiable { uid: String, reason: String },
    /// The API server rejected the pod's token, or the token names another
    /// identity than the pod's: refused whatever `unknown` says.
    #[error("pod {uid}: token verification failed: {reason}")]
    Rejected { uid: String, reason: String },
}

/// Resolves identities from the configuration (standalone rules) and, when
/// configured, from the Kubernetes source.
pub struct Resolver {
    cfg: IdentityConfig,
    kubernetes: Option<Arc<kubernetes::KubeSource>>,
}

impl Resolver {
    /// A resolver with the standalone rules only (any `kubernetes` section is
    /// ignored: use [`Resolver::start`] for that).
    pub fn new(cfg: IdentityConfig) -> Self {
        Self {
            cfg,
            kubernetes: None,
        }
    }

    /// A resolver with every configured source; starts the pod watch when
    /// `identity.kubernetes` is set. `node_name` is used when that section
    /// names no node.
    pub async fn start(
        cfg: IdentityConfig,
        node_name: &str,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, kubernetes::KubeError> {
        let kubernetes = match &cfg.kubernetes {
            Some(k) => Some(Arc::new(
                kubernetes::KubeSource::start(k, node_name, metrics).await?,
            )),
            None => None,
        };
        Ok(Self { cfg, kubernetes })
    }

    pub fn unknown_policy(&self) -> Unknown {
        self.cfg.unknown
    }

    /// Whether a connection that could not be resolved for `why` is refused.
    pub fn refuses(&self, why: &Unresolved) -> bool {
        matches!(why, Unresolved::Rejected { .. }) || self.cfg.unknown == Unknown::Deny
    }

    /// The Kubernetes token verifier, for protocol handlers that receive a
    /// service-account token from the client (e.g. as a password).
    pub fn token_verifier(&self) -> Option<Arc<kubernetes::TokenVerifier>> {
        self.kubernetes.as_ref().map(|k| k.verifier())
    }

    /// The identity of a cgroup (path relative to the cgroup root). With the
    /// Kubernetes source configured, a cgroup that names a pod is resolved by
    /// it (and only by it); everything else by the standalone rules.
    pub async fn resolve(&self, cgroup: Option<&str>) -> Result<Identity, Unresolved> {
        let path = cgroup.ok_or(Unresolved::CgroupGone)?;
        let pod = cgroup_path::parse(path);
        if let (Some(k), Some(p)) = (&self.kubernetes, &pod) {
            return k.resolve(p).await;
        }
        self.resolve_standalone(path, pod)
    }

    /// A path in a descendant of a mapped cgroup (a container of a mapped pod)
    /// belongs to it.
    fn resolve_standalone(
        &self,
        path: &str,
        pod: Option<cgroup_path::PodCgroup>,
    ) -> Result<Identity, Unresolved> {
        let rule = self.cfg.standalone.iter().find_map(|r| {
            // The path itself or its nearest ancestor that the glob matches.
            let mut p = path;
            loop {
                if r.cgroups.matcher.is_match(p) {
                    return Some((r, p));
                }
                p = p.rsplit_once('/')?.0;
            }
        });
        match rule {
            Some((r, matched)) => {
                let name = matched.rsplit('/').next().unwrap_or(matched);
                Ok(Identity {
                    namespace: r.namespace.clone(),
                    service_account: r.service_account.replace("{name}", name),
                    pod_uid: pod.as_ref().map(|p| p.pod_uid.clone()),
                    container_id: pod.and_then(|p| p.container_id),
                    method: Method::Standalone,
                    resolved_at: SystemTime::now(),
                    claims: r.claims.clone(),
                })
            }
            None => Err(Unresolved::NoMapping(path.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    fn resolver(yaml: &str) -> Resolver {
        Resolver::new(serde_yaml::from_str(yaml).unwrap())
    }

    /// The standalone path has no await point: one poll answers.
    fn resolve(r: &Resolver, cgroup: Option<&str>) -> Result<Identity, Unresolved> {
        let fut = std::pin::pin!(r.resolve(cgroup));
        match fut.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("standalone resolution waited"),
        }
    }

    #[test]
    fn standalone_mapping() {
        let r = resolver(
            "standalone:\n  - cgroups: \"pods/orders-*\"\n    namespace: shop\n    service_account: orders\n    claims: {team: payments}\n  - cgroups: \"pods/*\"\n    namespace: lab\n    service_account: \"{name}\"\n",
        );
        let i = resolve(&r, Some("pods/orders-1")).unwrap();
        assert_eq!(i.name(), "shop/orders");
        assert_eq!(i.method.as_str(), "standalone");
        assert_eq!(i.claims.get("team").map(String::as_str), Some("payments"));
        // A container below a mapped pod directory belongs to the pod.
        assert_eq!(
            resolve(&r, Some("pods/batch/c1")).unwrap().name(),
            "lab/batch"
        );
        assert_eq!(
            resolve(&r, Some("other/x")),
            Err(Unresolved::NoMapping("other/x".into()))
        );
        assert_eq!(resolve(&r, None), Err(Unresolved::CgroupGone));
        assert_eq!(r.unknown_policy(), Unknown::Deny, "fail closed by default");
    }

    #[test]
    fn kubelet_paths_carry_pod_and_container() {
        let r = resolver(
            "standalone:\n  - cgroups: \"kubepods.slice/*/*\"\n    namespace: default\n    service_account: default\nunknown: allow\n",
        );
        let cid = "ab".repeat(32);
        let path = format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod5f0c8a4e_1b2d_4c3e_9f8a_0123456789ab.slice/cri-containerd-{cid}.scope"
        );
        let i = resolve(&r, Some(&path)).unwrap();
        assert_eq!(
            i.pod_uid.as_deref(),
            Some("5f0c8a4e-1b2d-4c3e-9f8a-0123456789ab")
        );
        assert_eq!(i.container_id.as_deref(), Some(cid.as_str()));
        assert_eq!(r.unknown_policy(), Unknown::Allow);
    }
}
