//! Service-account token verification by the API server (TokenReview,
//! `authentication.k8s.io/v1`).
//!
//! The daemon never verifies a token's signature itself: the API server does,
//! and also knows whether the service account, and the pod a bound token names,
//! still exist. The token's `exp` is read (unverified) only to bound how long
//! the answer may be reused.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::{Api, api::PostParams};
use serde::Deserialize;

use super::PodInfo;
use crate::metrics::{Metrics, ReviewFailureLabels, ReviewLabels};

/// The extra keys the API server sets for a pod-bound token.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";

/// A service account the API server vouched for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedIdentity {
    /// `system:serviceaccount:<namespace>:<name>`.
    pub username: String,
    pub namespace: String,
    pub service_account: String,
    /// The service account's UID.
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
    /// Audiences the token was accepted for.
    pub audiences: Vec<String>,
    /// The token's `exp`; the verification is not used past it.
    pub expires_at: Option<SystemTime>,
}

impl VerifiedIdentity {
    fn extra_one(&self, key: &str) -> Option<&str> {
        self.extra.get(key)?.first().map(String::as_str)
    }

    /// Pod name of a pod-bound token.
    pub fn pod_name(&self) -> Option<&str> {
        self.extra_one(EXTRA_POD_NAME)
    }

    /// Pod UID of a pod-bound token.
    pub fn pod_uid(&self) -> Option<&str> {
        self.extra_one(EXTRA_POD_UID)
    }

    /// `namespace/service-account`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.namespace, self.service_account)
    }

    /// The claims recorded with the identity (audit, logs): username, uid,
    /// groups and audiences joined with `,`, and every extra key.
    pub fn claims(&self) -> BTreeMap<String, String> {
        let mut c: BTreeMap<String, String> = self
            .extra
            .iter()
            .map(|(k, v)| (k.clone(), v.join(",")))
            .collect();
        c.insert("username".into(), self.username.clone());
        c.insert("uid".into(), self.uid.clone());
        c.insert("groups".into(), self.groups.join(","));
        if !self.audiences.is_empty() {
            c.insert("audiences".into(), self.audiences.join(","));
        }
        c
    }

    /// Checks that this identity is the one of `pod`: same namespace and
    /// service account and, for a pod-bound token, the same pod.
    pub fn check_binding(&self, pod: &PodInfo) -> Result<(), ReviewError> {
        if self.namespace != pod.namespace || self.service_account != pod.service_account {
            return Err(ReviewError::Mismatch(format!(
                "the token is for {}, the pod {}/{} runs as {}/{}",
                self.name(),
                pod.namespace,
                pod.name,
                pod.namespace,
                pod.service_account
            )));
        }
        match self.pod_uid() {
            Some(u) if u != pod.uid => Err(ReviewError::Mismatch(format!(
                "the token is bound to pod {u}, not to {}",
                pod.uid
            ))),
            _ => Ok(()),
        }
    }
}

/// Why a token did not yield an identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The API server looked at the token and did not accept it.
    #[error("the API server did not authenticate the token: {0}")]
    Unauthenticated(String),
    #[error("the token authenticates `{0}`, which is not a service account")]
    NotServiceAccount(String),
    #[error("identity mismatch: {0}")]
    Mismatch(String),
    /// The API server refused the review itself (the daemon's credentials or
    /// permissions, or a server error).
    #[error("the API server answered the token review with {code}: {message}")]
    Api { code: u16, message: String },
    #[error("the API server cannot be reached: {0}")]
    Unreachable(String),
    #[error("the token review timed out after {0:?}")]
    Timeout(Duration),
}

impl ReviewError {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            ReviewError::Unauthenticated(_) => "unauthenticated",
            ReviewError::NotServiceAccount(_) => "not_service_account",
            ReviewError::Mismatch(_) => "mismatch",
            ReviewError::Api { code: 401, .. } => "api_unauthorized",
            ReviewError::Api { code: 403, .. } => "api_forbidden",
            ReviewError::Api { .. } => "api_error",
            ReviewError::Unreachable(_) => "unreachable",
            ReviewError::Timeout(_) => "timeout",
        }
    }

    /// True when the token itself is bad (the API server answered and said
    /// no); false when the API server could not give an answer.
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            ReviewError::Unauthenticated(_)
                | ReviewError::NotServiceAccount(_)
                | ReviewError::Mismatch(_)
        )
    }
}

/// Submits TokenReviews.
pub struct TokenVerifier {
    client: kube::Client,
    audiences: Vec<String>,
    timeout: Duration,
    metrics: Arc<Metrics>,
    /// Accepted tokens that clients presented ([`verify_presented`]), shared
    /// with the verifiers made for other audiences.
    ///
    /// [`verify_presented`]: TokenVerifier::verify_presented
    remembered: Arc<Mutex<HashMap<[u8; 32], Remembered>>>,
    remember_for: Duration,
}

/// An accepted review, kept under a digest of the audiences and the token
/// (the token itself is not kept).
struct Remembered {
    verified: VerifiedIdentity,
    at: Instant,
}

/// Accepted reviews kept at most; beyond it expired ones are dropped, then all.
const REMEMBERED_MAX: usize = 10_000;

impl TokenVerifier {
    pub fn new(
        client: kube::Client,
        audiences: Vec<String>,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            client,
            audiences,
            timeout,
            metrics,
            remembered: Arc::default(),
            remember_for: Duration::ZERO,
        }
    }

    /// Keeps accepted reviews of presented tokens for `d` (never past a
    /// token's expiry); zero asks the API server every time.
    pub fn remembering(mut self, d: Duration) -> Self {
        self.remember_for = d;
        self
    }

    /// The same API client reviewing for other audiences (a target that
    /// takes client tokens made for it).
    pub fn with_audiences(&self, audiences: Vec<String>) -> Self {
        Self {
            client: self.client.clone(),
            audiences,
            timeout: self.timeout,
            metrics: self.metrics.clone(),
            remembered: self.remembered.clone(),
            remember_for: self.remember_for,
        }
    }

    /// [`verify_token`](Self::verify_token) for a token a client presents
    /// on every connection (its database password): an accepted review is
    /// reused for the [`remembering`](Self::remembering) time, so a
    /// connection storm is not a TokenReview storm. Rejections and failures
    /// are not kept: the next attempt asks again. A revoked token keeps
    /// working until its review is that old, as with the pod's own token.
    pub async fn verify_presented(&self, token: &str) -> Result<VerifiedIdentity, ReviewError> {
        if self.remember_for.is_zero() {
            return self.verify_token(token).await;
        }
        let key = {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            for a in &self.audiences {
                h.update(a.as_bytes());
                h.update([0]);
            }
            h.update([0xff]);
            h.update(token.as_bytes());
            <[u8; 32]>::from(h.finalize())
        };
        let fresh = |r: &Remembered, now: Instant, wall: SystemTime| {
            now.duration_since(r.at) < self.remember_for
                && r.verified.expires_at.is_none_or(|e| wall < e)
        };
        {
            let kept = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(r) = kept.get(&key)
                && fresh(r, Instant::now(), SystemTime::now())
            {
                return Ok(r.verified.clone());
            }
        }
        let verified = self.verify_token(token).await?;
        let mut kept = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= REMEMBERED_MAX {
            let (now, wall) = (Instant::now(), SystemTime::now());
            kept.retain(|_, r| fresh(r, now, wall));
            if kept.len() >= REMEMBERED_MAX {
                kept.clear();
            }
        }
        kept.insert(
            key,
            Remembered {
                verified: verified.clone(),
                at: Instant::now(),
            },
        );
        Ok(verified)
    }

    /// Asks the API server who `token` belongs to. Only service-account
    /// identities are accepted. Every failure is counted
    /// (`token_review_failures{reason}`) and every request timed
    /// (`token_review_seconds{result}`).
    pub async fn verify_token(&self, token: &str) -> Result<VerifiedIdentity, ReviewError> {
        let started = Instant::now();
        let result = self.review(token).await;
        let label = match &result {
            Ok(_) => "authenticated",
            Err(e) => e.reason(),
        };
        self.metrics
            .token_review
            .get_or_create(&ReviewLabels { result: label })
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            self.metrics
                .token_review_failures
                .get_or_create(&ReviewFailureLabels { reason: e.reason() })
                .inc();
        }
        result
    }

    async fn review(&self, token: &str) -> Result<VerifiedIdentity, ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer =
            tokio::time::timeout(self.timeout, api.create(&PostParams::default(), &review))
                .await
                .map_err(|_| ReviewError::Timeout(self.timeout))?
                .map_err(|e| match e {
                    kube::Error::Api(s) => ReviewError::Api {
                        code: s.code,
                        message: s.message.clone(),
                    },
                    other => ReviewError::Unreachable(other.to_string()),
                })?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(ReviewError::Unauthenticated(
                status
                    .error
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "not authenticated".into()),
            ));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let (namespace, service_account) = parse_service_account(&username)
            .ok_or_else(|| ReviewError::NotServiceAccount(username.clone()))?;
        Ok(VerifiedIdentity {
            namespace: namespace.into(),
            service_account: service_account.into(),
            uid: user.uid.unwrap_or_default(),
            groups: user.groups.unwrap_or_default(),
            extra: user.extra.unwrap_or_default().into_iter().collect(),
            audiences: status.audiences.unwrap_or_default(),
            expires_at: jwt_claims(token)
                .and_then(|c| c.exp)
                .map(|exp| SystemTime::UNIX_EPOCH + Duration::from_secs(exp)),
            username,
        })
    }
}

/// `system:serviceaccount:<namespace>:<name>` → `(namespace, name)`.
pub fn parse_service_account(username: &str) -> Option<(&str, &str)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':')).then_some((ns, name))
}

/// The claims of a JWT read without verification (only to schedule work).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UnverifiedClaims {
    pub exp: Option<u64>,
    pub aud: Vec<String>,
}

/// Decodes a JWT's payload; `None` if it is not a JWT.
pub fn jwt_claims(token: &str) -> Option<UnverifiedClaims> {
    use base64::Engine as _;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Aud {
        One(String),
        Many(Vec<String>),
    }
    #[derive(Deserialize)]
    struct Payload {
        exp: Option<u64>,
        aud: Option<Aud>,
    }
    let mut parts = token.trim().split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let p: Payload = serde_json::from_slice(&bytes).ok()?;
    Some(UnverifiedClaims {
        exp: p.exp,
        aud: match p.aud {
            None => vec![],
            Some(Aud::One(a)) => vec![a],
            Some(Aud::Many(a)) => a,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_usernames() {
        assert_eq!(
            parse_service_account("system:serviceaccount:shop:orders"),
            Some(("shop", "orders"))
        );
        for bad in [
            "system:serviceaccount:shop",
            "system:serviceaccount::orders",
            "system:serviceaccount:shop:",
            "system:serviceaccount:a:b:c",
            "alice",
            "system:node:worker-1",
        ] {
            assert_eq!(parse_service_account(bad), None, "{bad}");
        }
    }

    #[test]
    fn jwt_payload_without_verification() {
        use base64::Engine as _;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let tok = format!(
            "{}.{}.c2ln",
            e.encode(br#"{"alg":"RS256"}"#),
            e.encode(
                br#"{"aud":["https://kubernetes.default.svc","x"],"exp":1893456000,"sub":"s"}"#
            )
        );
        assert_eq!(
            jwt_claims(&tok),
            Some(UnverifiedClaims {
                exp: Some(1_893_456_000),
                aud: vec!["https://kubernetes.default.svc".into(), "x".into()]
            })
        );
        let one = format!("h.{}.s", e.encode(br#"{"aud":"vault"}"#));
        assert_eq!(jwt_claims(&one).unwrap().aud, vec!["vault".to_string()]);
        assert_eq!(jwt_claims(&one).unwrap().exp, None);
        assert_eq!(jwt_claims("not-a-jwt"), None);
        assert_eq!(jwt_claims("a.!!!.c"), None);
    }

    #[test]
    fn binding_to_the_pod() {
        let v = VerifiedIdentity {
            username: "system:serviceaccount:shop:orders".into(),
            namespace: "shop".into(),
            service_account: "orders".into(),
            uid: "sa-uid".into(),
            groups: vec!["system:serviceaccounts".into()],
            extra: [(EXTRA_POD_UID.to_string(), vec!["u1".to_string()])].into(),
            audiences: vec![],
            expires_at: None,
        };
        let pod = |uid: &str, ns: &str, sa: &str| PodInfo {
            uid: uid.into(),
            namespace: ns.into(),
            name: "p".into(),
            service_account: sa.into(),
            labels: Default::default(),
        };
        assert_eq!(v.check_binding(&pod("u1", "shop", "orders")), Ok(()));
        for (p, why) in [
            (pod("u1", "shop", "default"), "runs as shop/default"),
            (pod("u1", "other", "orders"), "other/p"),
            (pod("u2", "shop", "orders"), "bound to pod u1"),
        ] {
            let e = v.check_binding(&p).unwrap_err();
            assert!(e.is_rejection());
            assert!(e.to_string().contains(why), "{e}");
        }
        let c = v.claims();
        assert_eq!(c["username"], "system:serviceaccount:shop:orders");
        assert_eq!(c[EXTRA_POD_UID], "u1");
        assert_eq!(c["groups"], "system:serviceaccounts");
    }
}
