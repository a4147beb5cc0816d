//! A service-account token as the database password
//! (`targets[].postgres.client_auth: service_account_token`).
//!
//! With credential injection alone, who the client is comes only from its
//! cgroup. This adds a second, independent proof: the client must present a
//! Kubernetes service-account token as its password, the API server must
//! accept it (TokenReview, the configured audiences), and the identity it
//! names must be the one the connection was attributed to by its cgroup: the
//! same namespace and service account and, for a pod-bound token, the same
//! pod (UID and name). A token copied out of another pod, or another service
//! account's token, is refused even though it is valid.
//!
//! The password is asked for in cleartext (AuthenticationCleartextPassword):
//! the pod-to-node hop never leaves the node, and a token cannot be checked
//! from a challenge-response. The token is consumed here: it never reaches
//! the server (the session logs in with the injected credential), a log or an
//! audit record; only the claims the API server returned are recorded.
//!
//! Failures reach the client as a FATAL ErrorResponse before anything is sent
//! upstream: `28P01` (invalid_password) when the API server rejects the token,
//! `28000` (invalid_authorization_specification) when it names another
//! identity or cannot be verified now, each with an audit record (denied) and
//! `interceptor_client_auth_total{target,result}`.

use std::{fmt, sync::Arc};

use bytes::BytesMut;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{info, warn};

use crate::{
    audit::{self, AccessRecord, AuditLog},
    identity::{
        Identity,
        kubernetes::{ReviewError, TokenVerifier, VerifiedIdentity},
    },
    metrics::{ClientAuthLabels, Metrics},
    protocol::postgres::{Direction, Framer, Progress, parse_password},
};

/// `targets[].postgres.client_auth`: what the client must prove itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// Whatever the client sends is ignored (the cgroup identity decides).
    #[default]
    Any,
    /// A service-account token of the connection's own identity, as the
    /// password, verified by the API server.
    ServiceAccountToken,
}

/// AuthenticationCleartextPassword.
const ASK_CLEARTEXT: &[u8] = &[b'R', 0, 0, 0, 8, 0, 0, 0, 3];

/// SQLSTATE `invalid_password`.
pub const SQLSTATE_INVALID_PASSWORD: &str = "28P01";
/// SQLSTATE `invalid_authorization_specification`.
pub const SQLSTATE_INVALID_AUTHORIZATION: &str = "28000";

/// What the token check of one connection needs.
#[derive(Clone)]
pub struct TokenAuth {
    /// None only if the configuration check was bypassed: then every client
    /// is refused.
    pub verifier: Option<Arc<TokenVerifier>>,
    /// The identity the connection was attributed to by its cgroup.
    pub expected: Option<Identity>,
    pub audit: Option<(AuditLog, AccessRecord)>,
    pub metrics: Arc<Metrics>,
}

impl fmt::Debug for TokenAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenAuth")
            .field("verifier", &self.verifier.is_some())
            .field("expected", &self.expected.as_ref().map(Identity::name))
            .finish()
    }
}

/// Why the client was not let in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenAuthError {
    #[error("the client closed the connection instead of sending a password")]
    Closed,
    #[error("the client answered the password request with message `{0}`")]
    Unexpected(char),
    #[error("malformed password message")]
    Malformed,
    #[error("no service-account token was given as the password")]
    Empty,
    #[error("the service-account token was rejected: {0}")]
    Rejected(String),
    #[error("the service-account token is not the connection's identity: {0}")]
    Mismatch(String),
    #[error("the service-account token cannot be verified now: {0}")]
    Unverifiable(String),
    #[error("no Kubernetes API server is configured to verify service-account tokens")]
    NoVerifier,
}

impl TokenAuthError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            TokenAuthError::Empty | TokenAuthError::Rejected(_) => SQLSTATE_INVALID_PASSWORD,
            _ => SQLSTATE_INVALID_AUTHORIZATION,
        }
    }

    /// Metric label.
    pub fn result(&self) -> &'static str {
        match self {
            TokenAuthError::Closed => "no_password",
            TokenAuthError::Unexpected(_) | TokenAuthError::Malformed => "protocol_error",
            TokenAuthError::Empty => "no_token",
            TokenAuthError::Rejected(_) => "rejected",
            TokenAuthError::Mismatch(_) => "mismatch",
            TokenAuthError::Unverifiable(_) | TokenAuthError::NoVerifier => "unverifiable",
        }
    }
}

/// Checks that the reviewed token names the identity the connection was
/// attributed to: namespace and service account, and for a pod-bound token
/// the pod's UID and name.
pub fn check_binding(v: &VerifiedIdentity, conn: Option<&Identity>) -> Result<(), String> {
    let Some(conn) = conn else {
        return Err(format!(
            "the token is for {}, but the connection is attributed to no identity",
            v.username
        ));
    };
    if v.namespace != conn.namespace || v.service_account != conn.service_account {
        return Err(format!(
            "the token is for {}, the connection comes from {}",
            v.username,
            conn.name()
        ));
    }
    if let Some(uid) = v.pod_uid() {
        match conn.pod_uid.as_deref() {
            Some(p) if p == uid => {}
            Some(p) => {
                return Err(format!(
                    "the token is bound to pod {uid}, the connection comes from pod {p}"
                ));
            }
            None => {
                return Err(format!(
                    "the token is bound to pod {uid}, the connection comes from no pod"
                ));
            }
        }
    }
    // The pod name is known for identities the Kubernetes source resolved
    // (claim `pod` = `namespace/name`).
    if let (Some(name), Some(pod)) = (v.pod_name(), conn.claims.get("pod"))
        && pod.rsplit('/').next() != Some(name)
    {
        return Err(format!(
            "the token is bound to pod {}/{name}, the connection comes from pod {pod}",
            v.namespace
        ));
    }
    Ok(())
}

/// Reads one message from the client: `pre` holds bytes already read.
/// Returns the password and the bytes after its message.
async fn read_password<C: AsyncRead + Unpin>(
    client: &mut C,
    pre: &[u8],
) -> Result<(crate::protocol::postgres::auth::Secret, BytesMut), TokenAuthError> {
    let framer = Framer::new(Direction::Frontend);
    let mut buf = BytesMut::from(pre);
    loop {
        match framer.next(&buf) {
            Ok(Progress::Complete(f)) => {
                if f.tag != b'p' {
                    return Err(TokenAuthError::Unexpected(f.tag as char));
                }
                let len = f.len();
                let pw = parse_password(f.body).map_err(|_| TokenAuthError::Malformed)?;
                let pw = crate::protocol::postgres::auth::Secret::new(pw.trim().to_string());
                let rest = BytesMut::from(&buf[len..]);
                return Ok((pw, rest));
            }
            Ok(Progress::NeedMore(_)) => {}
            Err(_) => return Err(TokenAuthError::Malformed),
        }
        buf.reserve(4096);
        match client.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Err(TokenAuthError::Closed),
            Ok(_) => {}
        }
    }
}

impl TokenAuth {
    /// Asks the client for its token, verifies it and checks the binding.
    /// Records the outcome (log, metric, audit). On failure the caller sends
    /// the client a FATAL error ([`TokenAuthError::sqlstate`]). Returns the
    /// client bytes read past the password message.
    pub async fn authenticate<C: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: &mut C,
        pre: &[u8],
        target: &str,
    ) -> Result<BytesMut, TokenAuthError> {
        let started = std::time::Instant::now();
        let outcome = self.attempt(client, pre).await;
        let (result, operation, error) = match &outcome {
            Ok((v, _)) => (
                "ok",
                format!("client authentication: {}", describe(v)),
                None,
            ),
            Err((e, v)) => (
                e.result(),
                match v {
                    Some(v) => format!("client authentication refused: {}", describe(v)),
                    None => "client authentication refused".to_string(),
                },
                Some(e.to_string()),
            ),
        };
        self.metrics
            .client_auth
            .get_or_create(&ClientAuthLabels {
                target: target.to_string(),
                result,
            })
            .inc();
        let expected = self
            .expected
            .as_ref()
            .map(Identity::name)
            .unwrap_or_default();
        match &error {
            None => info!(target_name = %target, identity = %expected, %operation,
                "service-account token verified for the connection's identity"),
            Some(e) => warn!(target_name = %target, identity = %expected, %operation, error = %e,
                "refusing the client: service-account token check failed"),
        }
        if let Some((log, base)) = &self.audit {
            let rec = AccessRecord {
                time_ns: audit::record::now_ns(),
                operation,
                decision: if error.is_none() {
                    audit::Decision::Allow
                } else {
                    audit::Decision::Deny
                },
                rule_id: Some("client_auth:service_account_token".into()),
                outcome: error.map(audit::Outcome::Error),
                duration_ns: started.elapsed().as_nanos() as u64,
                ..base.clone()
            };
            // Durable before the client hears of a refusal, as for statements.
            crate::session::append(&self.metrics, log, rec).await;
        }
        outcome.map(|(_, rest)| rest).map_err(|(e, _)| e)
    }

    #[allow(clippy::type_complexity)]
    async fn attempt<C: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: &mut C,
        pre: &[u8],
    ) -> Result<(VerifiedIdentity, BytesMut), (TokenAuthError, Option<VerifiedIdentity>)> {
        let Some(verifier) = &self.verifier else {
            return Err((TokenAuthError::NoVerifier, None));
        };
        client
            .write_all(ASK_CLEARTEXT)
            .await
            .map_err(|_| (TokenAuthError::Closed, None))?;
        let (token, rest) = read_password(client, pre).await.map_err(|e| (e, None))?;
        if token.expose().is_empty() {
            return Err((TokenAuthError::Empty, None));
        }
        let v = verifier
            .verify_presented(token.expose())
            .await
            .map_err(|e| {
                let err = match &e {
                    ReviewError::Unauthenticated(_) | ReviewError::NotServiceAccount(_) => {
                        TokenAuthError::Rejected(e.to_string())
                    }
                    ReviewError::Mismatch(m) => TokenAuthError::Mismatch(m.clone()),
                    _ => TokenAuthError::Unverifiable(e.to_string()),
                };
                (err, None)
            })?;
        if let Err(why) = check_binding(&v, self.expected.as_ref()) {
            self.metrics
                .token_review_failures
                .get_or_create(&crate::metrics::ReviewFailureLabels { reason: "mismatch" })
                .inc();
            return Err((TokenAuthError::Mismatch(why), Some(v)));
        }
        Ok((v, rest))
    }
}

/// The reviewed claims, for logs and audit (never the token).
fn describe(v: &VerifiedIdentity) -> String {
    let mut s = format!("service-account token of {}", v.username);
    if let (Some(name), Some(uid)) = (v.pod_name(), v.pod_uid()) {
        s.push_str(&format!(" bound to pod {}/{name} ({uid})", v.namespace));
    }
    if !v.audiences.is_empty() {
        s.push_str(&format!(", audiences {}", v.audiences.join(",")));
    }
    s
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::SystemTime};

    use super::*;
    use crate::identity::{
        Method,
        kubernetes::review::{EXTRA_POD_NAME, EXTRA_POD_UID},
    };

    fn reviewed(ns: &str, sa: &str, pod: Option<(&str, &str)>) -> VerifiedIdentity {
        let mut extra = BTreeMap::new();
        if let Some((name, uid)) = pod {
            extra.insert(EXTRA_POD_NAME.to_string(), vec![name.to_string()]);
            extra.insert(EXTRA_POD_UID.to_string(), vec![uid.to_string()]);
        }
        VerifiedIdentity {
            username: format!("system:serviceaccount:{ns}:{sa}"),
            namespace: ns.into(),
            service_account: sa.into(),
            uid: "sa-uid".into(),
            groups: vec![],
            extra,
            audiences: vec!["db".into()],
            expires_at: None,
        }
    }

    fn conn(ns: &str, sa: &str, pod: Option<(&str, &str)>) -> Identity {
        Identity {
            namespace: ns.into(),
            service_account: sa.into(),
            pod_uid: pod.map(|(_, uid)| uid.to_string()),
            container_id: None,
            method: Method::TokenReview,
            resolved_at: SystemTime::now(),
            claims: pod
                .map(|(name, _)| [("pod".to_string(), format!("{ns}/{name}"))].into())
                .unwrap_or_default(),
        }
    }

    #[test]
    fn binding() {
        let pod = Some(("orders-1", "u1"));
        let ok = reviewed("shop", "orders", pod);
        assert_eq!(
            check_binding(&ok, Some(&conn("shop", "orders", pod))),
            Ok(())
        );
        // A token not bound to a pod: the service account decides.
        let unbound = reviewed("shop", "orders", None);
        assert_eq!(
            check_binding(&unbound, Some(&conn("shop", "orders", pod))),
            Ok(())
        );
        for (v, c, why) in [
            (
                reviewed("shop", "admin", pod),
                Some(conn("shop", "orders", pod)),
                "the token is for system:serviceaccount:shop:admin, the connection comes from shop/orders",
            ),
            (
                reviewed("other", "orders", None),
                Some(conn("shop", "orders", pod)),
                "comes from shop/orders",
            ),
            (
                reviewed("shop", "orders", Some(("orders-2", "u2"))),
                Some(conn("shop", "orders", pod)),
                "bound to pod u2, the connection comes from pod u1",
            ),
            (
                ok.clone(),
                Some(conn("shop", "orders", None)),
                "comes from no pod",
            ),
            (
                reviewed("shop", "orders", Some(("impostor", "u1"))),
                Some(conn("shop", "orders", pod)),
                "bound to pod shop/impostor",
            ),
            (ok.clone(), None, "attributed to no identity"),
        ] {
            let e = check_binding(&v, c.as_ref()).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn error_codes() {
        assert_eq!(TokenAuthError::Rejected("x".into()).sqlstate(), "28P01");
        assert_eq!(TokenAuthError::Empty.sqlstate(), "28P01");
        assert_eq!(TokenAuthError::Mismatch("x".into()).sqlstate(), "28000");
        assert_eq!(TokenAuthError::Unverifiable("x".into()).sqlstate(), "28000");
        let d = describe(&reviewed("shop", "orders", Some(("orders-1", "u1"))));
        assert_eq!(
            d,
            "service-account token of system:serviceaccount:shop:orders bound to pod shop/orders-1 (u1), audiences db"
        );
    }

    #[test]
    fn configuration() {
        use crate::{config::Config, pgauth::Injection};
        let base = "listener:\n  address: 10.77.0.1:15001\nredirect:\n  select_cgroups: [\"pods/*\"]\ntargets:\n  - name: db\n    protocol: postgres\n    destinations: [\"10.77.0.2:5432\"]\n    postgres:\n      client_auth: service_account_token\n";
        let upstream = "      upstream: { user: app, password_env: PW }\n";
        let k8s = "identity:\n  kubernetes:\n    api_server: https://127.0.0.1:6443\n";
        // Standalone mode has no cluster to verify tokens with.
        let e = Config::parse(&format!("{base}{upstream}")).unwrap_err();
        assert!(
            e.contains("targets[0] (db)") && e.contains("needs identity.kubernetes"),
            "{e}"
        );
        let e = Config::parse(&format!("{base}{k8s}")).unwrap_err();
        assert!(e.contains("needs postgres.upstream"), "{e}");
        let cfg = Config::parse(&format!(
            "{base}{upstream}      token_audiences: [orders-db]\n{k8s}"
        ))
        .unwrap();
        let dst = "10.77.0.2:5432".parse().unwrap();
        let inj = Injection::for_target(&cfg, "db", dst).unwrap();
        assert_eq!(inj.client_auth, ClientAuth::ServiceAccountToken);
        assert_eq!(inj.token_audiences, vec!["orders-db".to_string()]);
        let metrics = Arc::new(Metrics::new());
        let armed = inj.with_token_auth(None, None, None, metrics.clone());
        assert!(armed.token.as_ref().is_some_and(|t| t.verifier.is_none()));
        // Default: any; the check is never armed.
        let plain = base.replace("      client_auth: service_account_token\n", "");
        let cfg = Config::parse(&format!("{plain}{upstream}")).unwrap();
        let inj = Injection::for_target(&cfg, "db", dst).unwrap();
        assert_eq!(inj.client_auth, ClientAuth::Any);
        assert!(
            inj.with_token_auth(None, None, None, metrics)
                .token
                .is_none()
        );
        let e =
            Config::parse(&format!("{plain}{upstream}      token_audiences: [x]\n")).unwrap_err();
        assert!(e.contains("only used with client_auth"), "{e}");
        let e = Config::parse(&base.replace("service_account_token", "password")).unwrap_err();
        assert!(e.contains("unknown variant `password`"), "{e}");
    }

    /// Without a verifier (a configuration check bypassed) every client is
    /// refused, and the refusal is counted.
    #[tokio::test]
    async fn no_verifier_refuses() {
        let metrics = Arc::new(Metrics::new());
        let auth = TokenAuth {
            verifier: None,
            expected: None,
            audit: None,
            metrics: metrics.clone(),
        };
        let (mut a, _b) = tokio::io::duplex(64);
        let e = auth.authenticate(&mut a, &[], "db").await.unwrap_err();
        assert_eq!(e, TokenAuthError::NoVerifier);
        assert!(
            metrics
                .encode()
                .contains(r#"interceptor_client_auth_total{target="db",result="unverifiable"} 1"#)
        );
    }

    #[tokio::test]
    async fn the_password_is_read_and_the_rest_kept() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let mut msg = Vec::new();
        crate::protocol::postgres::build::password_message(&mut msg, " tok.en.sig\n").unwrap();
        let (first, second) = msg.split_at(3);
        let second = second.to_vec();
        let writer = tokio::spawn(async move {
            b.write_all(&second).await.unwrap();
            b.write_all(b"Qrest").await.unwrap();
            b
        });
        let (pw, rest) = read_password(&mut a, first).await.unwrap();
        let _b = writer.await.unwrap();
        assert_eq!(pw.expose(), "tok.en.sig");
        assert!(format!("{pw:?}").contains("redacted"));
        // What followed may arrive in the same read or not.
        assert!(b"Qrest".starts_with(&rest), "{rest:?}");

        // A client that gives up (psql -w without a password) closes.
        let (mut a, b) = tokio::io::duplex(64);
        drop(b);
        assert_eq!(
            read_password(&mut a, &[]).await.unwrap_err(),
            TokenAuthError::Closed
        );
        let (mut a, _b) = tokio::io::duplex(64);
        assert_eq!(
            read_password(&mut a, b"Q\0\0\0\x05\0").await.unwrap_err(),
            TokenAuthError::Unexpected('Q')
        );
    }
}
