//! Credential injection for PostgreSQL targets: the daemon logs in to the
//! server itself, with a credential only the node holds, so a workload needs
//! (and sees) no database password.
//!
//! With `postgres.upstream` configured on a target, the session starts like
//! this (see [`establish`]):
//!
//! 1. the client's StartupMessage is rewritten: `user` / `database` become the
//!    configured ones, every other parameter (`application_name`, GUCs,
//!    `options`, ...) is kept;
//! 2. the upstream connection is encrypted as configured (`tls`, see [`tls`]);
//! 3. the daemon answers the server's authentication request (trust,
//!    cleartext, md5 or SCRAM-SHA-256) with the secret, read from its file or
//!    environment variable at that moment (so a rotated file is picked up by
//!    the next connection);
//! 4. on success the client is told AuthenticationOk and the session relay
//!    takes over from the server's ParameterStatus/BackendKeyData/
//!    ReadyForQuery, so policy and audit work as for any session. The
//!    BackendKeyData is the server's own, so a client's CancelRequest works.
//!
//! The client is never asked for a password: it is answered AuthenticationOk
//! as soon as the upstream login succeeded. Asking and ignoring would make
//! psql prompt, and a workload configured with no password fail with
//! "fe_sendauth: no password supplied"; who the client is comes from its pod
//! (cgroup identity), not from a password it could leak. Any failure before
//! that point reaches the client as a FATAL ErrorResponse: the server's own
//! for a refused login, otherwise one naming the target (SQLSTATE 28000 for a
//! credential problem, 08006 for a connection/TLS problem), never a hang.
//! The secret is never logged and never sent to the client.

pub mod tls;
pub mod token;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use bytes::{Buf, BytesMut};
use serde::Deserialize;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tracing::{info, warn};

use crate::protocol::postgres::{
    BackendMessage, Direction, Framer, ProtocolError, ProtocolVersion, StartupParams,
    auth::{AUTHENTICATION_OK, AuthError, AuthStep, Secret, UpstreamAuth},
    build::{self, ErrorSpec},
};

pub use tls::{TlsConfig, TlsError, TlsMode, UpstreamStream};
pub use token::{ClientAuth, TokenAuth, TokenAuthError};

/// How long the upstream TLS handshake plus login may take before the client
/// is told the server did not answer.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// SQLSTATE `invalid_authorization_specification`.
const SQLSTATE_INVALID_AUTHORIZATION: &str = "28000";
/// SQLSTATE `connection_failure`.
const SQLSTATE_CONNECTION_FAILURE: &str = "08006";

/// `targets[].postgres`: PostgreSQL-specific target settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresTarget {
    /// How the daemon logs in to the server; absent: the client's own
    /// authentication passes through untouched.
    #[serde(default)]
    pub upstream: Option<Upstream>,
    /// What the client must prove before the daemon logs in for it
    /// (`service_account_token`: see [`token`]); default `any`.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Audiences a client's token is reviewed for; default: those of
    /// `identity.kubernetes.audiences`.
    #[serde(default)]
    pub token_audiences: Vec<String>,
}

impl PostgresTarget {
    /// Checks what only the whole configuration can tell; `kubernetes`: is
    /// `identity.kubernetes` configured.
    pub fn validate(&self, kubernetes: bool) -> Result<(), String> {
        if self.client_auth == ClientAuth::ServiceAccountToken {
            if self.upstream.is_none() {
                return Err("postgres.client_auth: service_account_token needs postgres.upstream (the token is consumed by the daemon, which logs in to the server with the injected credential)".into());
            }
            if !kubernetes {
                return Err("postgres.client_auth: service_account_token needs identity.kubernetes (the token is verified with the cluster's TokenReview API; standalone mode has no cluster to ask)".into());
            }
        } else if !self.token_audiences.is_empty() {
            return Err(
                "postgres.token_audiences is only used with client_auth: service_account_token"
                    .into(),
            );
        }
        Ok(())
    }
}

/// `targets[].postgres.upstream`; also `targets[].mysql.upstream` (same shape).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawUpstream")]
pub struct Upstream {
    /// Role to log in as; default: the user the client asked for.
    pub user: Option<String>,
    /// Database; default: the client's (or, when `user` is replaced and the
    /// client named no database, the client's user name, as the server would
    /// have defaulted it for the client).
    pub database: Option<String>,
    /// Where the password is; none: only `trust` (or a server that asks for
    /// nothing) works.
    pub password: Option<PasswordSource>,
    pub tls: TlsConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// A file holding the password (one trailing newline is ignored).
    File(PathBuf),
    /// An environment variable of the daemon.
    Env(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    database: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
    #[serde(default)]
    password_env: Option<String>,
    #[serde(default)]
    tls: TlsConfig,
}

impl TryFrom<RawUpstream> for Upstream {
    type Error = String;

    fn try_from(r: RawUpstream) -> Result<Self, String> {
        for (field, v) in [("user", &r.user), ("database", &r.database)] {
            if let Some(v) = v
                && (v.is_empty() || v.contains('\0'))
            {
                return Err(format!(
                    "upstream.{field} must be a non-empty name without NUL"
                ));
            }
        }
        let password = match (r.password_file, r.password_env) {
            (Some(_), Some(_)) => {
                return Err("upstream: set password_file or password_env, not both".into());
            }
            (Some(f), None) if f.as_os_str().is_empty() => {
                return Err("upstream.password_file is empty".into());
            }
            (Some(f), None) => Some(PasswordSource::File(f)),
            (None, Some(v)) if v.is_empty() || v.contains(['=', '\0']) => {
                return Err(format!(
                    "upstream.password_env `{v}` is not an environment variable name"
                ));
            }
            (None, Some(v)) => Some(PasswordSource::Env(v)),
            (None, None) => None,
        };
        r.tls.validate()?;
        Ok(Upstream {
            user: r.user,
            database: r.database,
            password,
            tls: r.tls,
        })
    }
}

/// Why no secret could be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("password_file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("password_file {0} is empty")]
    EmptyFile(PathBuf),
    #[error("password_env {0} is not set (or not UTF-8)")]
    Env(String),
}

impl PasswordSource {
    /// Reads the secret now (connect time), so a rotated file applies to the
    /// next connection without a restart.
    pub async fn read(&self) -> Result<Secret, SecretError> {
        match self {
            PasswordSource::File(path) => {
                let mut s =
                    tokio::fs::read_to_string(path)
                        .await
                        .map_err(|source| SecretError::File {
                            path: path.clone(),
                            source,
                        })?;
                // Files written by `echo` or editors end in a newline that is
                // not part of the password.
                if s.ends_with('\n') {
                    s.pop();
                    if s.ends_with('\r') {
                        s.pop();
                    }
                }
                if s.is_empty() {
                    return Err(SecretError::EmptyFile(path.clone()));
                }
                Ok(Secret::new(s))
            }
            PasswordSource::Env(var) => std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .map(Secret::new)
                .ok_or_else(|| SecretError::Env(var.clone())),
        }
    }
}

/// Credential injection for one connection: the target's settings and where
/// the connection goes.
#[derive(Debug, Clone)]
pub struct Injection {
    pub target: String,
    pub upstream: Upstream,
    /// The original destination (default TLS server name: its IP).
    pub dst: SocketAddr,
    pub client_auth: ClientAuth,
    pub token_audiences: Vec<String>,
    /// The client's token check (`client_auth: service_account_token`), set
    /// per connection by [`Injection::with_token_auth`].
    pub token: Option<TokenAuth>,
}

impl Injection {
    /// The injection configured for `target`, if any.
    pub fn for_target(
        cfg: &crate::config::Config,
        target: &str,
        dst: SocketAddr,
    ) -> Option<Injection> {
        let t = cfg.targets.iter().find(|t| t.name == target)?;
        let pg = t.postgres.as_ref()?;
        let upstream = pg.upstream.clone()?;
        Some(Injection {
            target: target.into(),
            upstream,
            dst,
            client_auth: pg.client_auth,
            token_audiences: pg.token_audiences.clone(),
            token: None,
        })
    }

    /// Arms the client's token check when the target asks for one:
    /// `verifier` is the Kubernetes source's (None in standalone mode, which
    /// the configuration check rejects; then every client is refused),
    /// `expected` the identity the connection was attributed to.
    pub fn with_token_auth(
        mut self,
        verifier: Option<std::sync::Arc<crate::identity::kubernetes::TokenVerifier>>,
        expected: Option<crate::identity::Identity>,
        audit: Option<(crate::audit::AuditLog, crate::audit::AccessRecord)>,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Self {
        if self.client_auth == ClientAuth::ServiceAccountToken {
            let verifier = verifier.map(|v| {
                if self.token_audiences.is_empty() {
                    v
                } else {
                    std::sync::Arc::new(v.with_audiences(self.token_audiences.clone()))
                }
            });
            self.token = Some(TokenAuth {
                verifier,
                expected,
                audit,
                metrics,
            });
        }
        self
    }

    /// Whether a CancelRequest must travel over TLS (what libpq does when the
    /// session itself requires encryption: the cancel key is a credential).
    pub fn cancel_over_tls(&self) -> bool {
        self.upstream.tls.mode != TlsMode::Disable
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("no upstream credential: {0}")]
    Secret(#[from] SecretError),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("upstream login failed: {0}")]
    Auth(#[from] AuthError),
    #[error("the server refused the login: {code}: {message}")]
    Rejected {
        code: String,
        message: String,
        /// The server's ErrorResponse, forwarded to the client as is.
        raw: Vec<u8>,
    },
    #[error("malformed message from the server during login: {0}")]
    Protocol(ProtocolError),
    #[error("unexpected message {0:?} from the server during login")]
    Unexpected(char),
    #[error("the server closed the connection during login")]
    Closed,
    #[error("the server did not complete the login within {0:?}")]
    Timeout(Duration),
    #[error("I/O with the server during login: {0}")]
    Io(#[from] std::io::Error),
    #[error("the client's StartupMessage has no user")]
    NoUser,
    #[error("{0}")]
    ClientAuth(#[from] TokenAuthError),
    #[error(
        "startup parameter `{0}` is not allowed with credential injection (it would change the session's role or mode outside policy)"
    )]
    Forbidden(String),
}

impl InjectError {
    fn sqlstate(&self) -> &'static str {
        match self {
            InjectError::ClientAuth(e) => e.sqlstate(),
            InjectError::Secret(_)
            | InjectError::Auth(_)
            | InjectError::NoUser
            | InjectError::Forbidden(_) => SQLSTATE_INVALID_AUTHORIZATION,
            _ => SQLSTATE_CONNECTION_FAILURE,
        }
    }
}

/// An authenticated upstream session, ready for the relay.
pub struct Established {
    pub stream: UpstreamStream,
    /// Server bytes read past AuthenticationOk (ParameterStatus, ...): the
    /// relay's first input.
    pub server_buf: BytesMut,
    /// Bytes the daemon sent upstream (StartupMessage and login).
    pub up: u64,
    /// Role the session is logged in as.
    pub user: String,
    /// With a client token check: the client bytes read past its password
    /// message (the relay's first client input, instead of the bytes after
    /// the StartupMessage).
    pub client_rest: Option<BytesMut>,
}

/// The StartupMessage sent upstream: the client's parameters with `user` and
/// `database` replaced as configured.
pub fn upstream_startup(
    version: ProtocolVersion,
    params: &StartupParams<'_>,
    up: &Upstream,
) -> Result<(Vec<u8>, String), InjectError> {
    let client_user = params.get("user").ok_or(InjectError::NoUser)?;
    if let Some((name, _)) = params.iter().find(|(n, v)| forbidden(n, v)) {
        return Err(InjectError::Forbidden(name.to_string()));
    }
    let user = up.user.as_deref().unwrap_or(client_user);
    let database = up.database.as_deref().or(params.get("database")).or(
        // The server defaults the database to the startup user; the client
        // expected its own user name there.
        up.user.as_ref().map(|_| client_user),
    );
    let mut out = Vec::new();
    let rest = params
        .iter()
        .filter(|(n, _)| *n != "user" && *n != "database");
    let head = std::iter::once(("user", user)).chain(database.map(|d| ("database", d)));
    build::startup_message(&mut out, version, head.chain(rest)).map_err(InjectError::Protocol)?;
    Ok((out, user.to_string()))
}

/// Startup parameters a workload may not send to an injected session: every
/// parameter besides user/database/options/replication is a setting, and
/// `role` / `session_authorization` would switch to another role the injected
/// user can reach without the policy seeing a statement (`options` can carry
/// the same as `-c role=...`, with backslash escapes); a replication
/// connection speaks a different command language. Setting names are
/// case-insensitive.
fn forbidden(name: &str, value: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let mentions_role = |s: &str| {
        let plain: String = s.chars().filter(|c| *c != '\\').collect();
        let plain = plain.to_ascii_lowercase();
        plain.contains("role") || plain.contains("session_authorization")
    };
    matches!(
        name.as_str(),
        "role" | "session_authorization" | "replication"
    ) || (name == "options" && mentions_role(value))
}

/// Logs in upstream on the client's behalf (see the module docs). On failure
/// the client has been sent a FATAL ErrorResponse and the error is logged.
/// `client_pre`: client bytes already read past the StartupMessage.
pub async fn establish(
    client: &mut TcpStream,
    upstream: TcpStream,
    version: ProtocolVersion,
    params: &StartupParams<'_>,
    inj: &Injection,
    identity: Option<&str>,
    client_pre: &[u8],
) -> Result<Established, InjectError> {
    let attempt = async {
        let (startup, user) = upstream_startup(version, params, &inj.upstream)?;
        // The client proves itself before the server is bothered.
        let client_rest = match &inj.token {
            Some(t) => Some(t.authenticate(client, client_pre, &inj.target).await?),
            None => None,
        };
        // The secret first: a missing one fails before the server is bothered.
        let password = match &inj.upstream.password {
            Some(src) => Some(src.read().await?),
            None => None,
        };
        let stream = tls::negotiate(upstream, &inj.upstream.tls, inj.dst).await?;
        let binding = match &stream {
            tokio_util::either::Either::Right(tls) => tls::channel_binding(tls),
            tokio_util::either::Either::Left(_) => None,
        };
        let mut auth = UpstreamAuth::new(user.clone(), password).with_channel_binding(binding);
        let (stream, server_buf, up, to_client) = login(stream, &startup, &mut auth).await?;
        client.write_all(&to_client).await?;
        Ok::<_, InjectError>(Established {
            stream,
            server_buf,
            up,
            user,
            client_rest,
        })
    };
    let result = match tokio::time::timeout(LOGIN_TIMEOUT, attempt).await {
        Ok(r) => r,
        Err(_) => Err(InjectError::Timeout(LOGIN_TIMEOUT)),
    };
    match &result {
        Ok(e) => info!(
            target_name = %inj.target,
            identity = identity.unwrap_or(""),
            upstream_user = %e.user,
            tls = matches!(e.stream, tokio_util::either::Either::Right(_)),
            "upstream login with the injected credential"
        ),
        // The token check logged its own refusal (claims, never the token).
        Err(e @ InjectError::ClientAuth(_)) => {
            let _ = client.write_all(&client_error(e, &inj.target)).await;
            let _ = client.shutdown().await;
        }
        Err(e) => {
            warn!(
                target_name = %inj.target,
                identity = identity.unwrap_or(""),
                upstream_user = inj.upstream.user.as_deref().or(params.get("user")).unwrap_or(""),
                error = %e,
                "upstream login failed; the client gets a FATAL error"
            );
            let _ = client.write_all(&client_error(e, &inj.target)).await;
            let _ = client.shutdown().await;
        }
    }
    result
}

/// What the client is told when the login failed.
fn client_error(e: &InjectError, target: &str) -> Vec<u8> {
    if let InjectError::Rejected { raw, .. } = e {
        return raw.clone();
    }
    let message = match e {
        InjectError::ClientAuth(e) => {
            format!("interceptor: client authentication for target `{target}` failed: {e}")
        }
        _ => format!("interceptor: cannot log in to target `{target}`: {e}"),
    };
    let spec = ErrorSpec {
        severity: "FATAL",
        ..ErrorSpec::error(e.sqlstate(), &message)
    };
    let mut out = Vec::new();
    if build::error_response(&mut out, &spec).is_err() {
        // Only a NUL inside the message fails; never send nothing.
        let fallback = ErrorSpec {
            severity: "FATAL",
            ..ErrorSpec::error(e.sqlstate(), "interceptor: upstream login failed")
        };
        let _ = build::error_response(&mut out, &fallback);
    }
    out
}

/// Sends the StartupMessage and answers the server until AuthenticationOk.
/// Returns the stream, the server bytes after AuthenticationOk, the bytes sent
/// upstream and what the client must be sent (notices, a protocol version
/// negotiation, then AuthenticationOk).
async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    startup: &[u8],
    auth: &mut UpstreamAuth,
) -> Result<(S, BytesMut, u64, Vec<u8>), InjectError> {
    stream.write_all(startup).await?;
    let mut up = startup.len() as u64;
    let framer = Framer::new(Direction::Backend);
    let mut buf = BytesMut::with_capacity(4096);
    let mut to_client = Vec::new();
    loop {
        loop {
            let frame = match framer.next(&buf).map_err(InjectError::Protocol)? {
                crate::protocol::postgres::Progress::Complete(f) => f,
                crate::protocol::postgres::Progress::NeedMore(_) => break,
            };
            let len = frame.len();
            let msg = BackendMessage::parse(&frame).map_err(InjectError::Protocol)?;
            match msg {
                BackendMessage::Authentication(req) => match auth.step(req)? {
                    AuthStep::Reply(bytes) => {
                        stream.write_all(&bytes).await?;
                        up += bytes.len() as u64;
                    }
                    AuthStep::Wait => {}
                    AuthStep::Authenticated => {
                        buf.advance(len);
                        to_client.extend_from_slice(AUTHENTICATION_OK);
                        return Ok((stream, buf, up, to_client));
                    }
                },
                BackendMessage::ErrorResponse(fields) => {
                    return Err(InjectError::Rejected {
                        code: fields.code().unwrap_or("?").to_string(),
                        message: fields.message().unwrap_or("").to_string(),
                        raw: frame.raw.to_vec(),
                    });
                }
                // The client learns what the server said, in order.
                BackendMessage::NoticeResponse(_) | BackendMessage::NegotiateProtocolVersion(_) => {
                    to_client.extend_from_slice(frame.raw)
                }
                _ => return Err(InjectError::Unexpected(frame.tag as char)),
            }
            buf.advance(len);
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(InjectError::Closed);
        }
    }
}

/// Forwards a client's CancelRequest packet to the server, over TLS when the
/// target's sessions use it (libpq does the same).
pub async fn forward_cancel(
    upstream: TcpStream,
    packet: &[u8],
    inj: Option<&Injection>,
) -> Result<(), InjectError> {
    let mut stream = match inj {
        Some(i) if i.cancel_over_tls() => tokio::time::timeout(
            LOGIN_TIMEOUT,
            tls::negotiate(upstream, &i.upstream.tls, i.dst),
        )
        .await
        .map_err(|_| InjectError::Timeout(LOGIN_TIMEOUT))??,
        _ => tokio_util::either::Either::Left(upstream),
    };
    stream.write_all(packet).await?;
    stream.flush().await?;
    let _ = stream.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::postgres::{Progress, StartupPacket};

    fn upstream(yaml: &str) -> Result<Upstream, String> {
        serde_yaml::from_str::<PostgresTarget>(yaml)
            .map(|p| p.upstream.expect("upstream"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn upstream_config_parses() {
        let u = upstream(
            "upstream:\n  user: app\n  database: shop\n  password_file: /etc/interceptor/secrets/customers-db\n  tls: { mode: verify-full, ca_file: /etc/interceptor/ca.pem, server_name: db.internal }\n",
        )
        .unwrap();
        assert_eq!(u.user.as_deref(), Some("app"));
        assert_eq!(u.database.as_deref(), Some("shop"));
        assert_eq!(
            u.password,
            Some(PasswordSource::File(
                "/etc/interceptor/secrets/customers-db".into()
            ))
        );
        assert_eq!(u.tls.mode, TlsMode::VerifyFull);
        assert_eq!(u.tls.server_name.as_deref(), Some("db.internal"));

        let u = upstream("upstream:\n  password_env: PG_PASSWORD\n").unwrap();
        assert_eq!(u.password, Some(PasswordSource::Env("PG_PASSWORD".into())));
        assert_eq!((u.user, u.database), (None, None));
        assert_eq!(u.tls.mode, TlsMode::Disable);
        let u = upstream("upstream: { user: app, tls: { mode: require } }\n").unwrap();
        assert_eq!((u.password, u.tls.mode), (None, TlsMode::Require));
        let p: PostgresTarget = serde_yaml::from_str("{}").unwrap();
        assert!(p.upstream.is_none());
    }

    #[test]
    fn upstream_config_errors_are_clear() {
        for (yaml, want) in [
            (
                "upstream: { password_file: /a, password_env: B }",
                "not both",
            ),
            ("upstream: { password_env: \"A=B\" }", "not an environment"),
            ("upstream: { user: \"\" }", "user must be a non-empty"),
            ("upstream: { tls: { mode: verify-full } }", "ca_file"),
            (
                "upstream: { tls: { mode: verify-ca } }",
                "mode verify-ca needs ca_file",
            ),
            (
                "upstream: { tls: { mode: require, ca_file: /ca.pem } }",
                "only used with verify-ca and verify-full",
            ),
            (
                "upstream: { tls: { mode: require, client_cert_file: /c.pem } }",
                "client_cert_file and client_key_file go together",
            ),
            (
                "upstream: { tls: { client_cert_file: /c.pem, client_key_file: /k.pem } }",
                "a client certificate needs TLS",
            ),
            (
                "upstream: { tls: { mode: prefer } }",
                "unknown variant `prefer`",
            ),
            (
                "upstream: { tls: { mode: verify-full, ca_file: /c, server_name: \"a b\" } }",
                "server_name",
            ),
            (
                "upstream: { pasword_file: /a }",
                "unknown field `pasword_file`",
            ),
        ] {
            let e = upstream(yaml).unwrap_err();
            assert!(e.contains(want), "{yaml}: {e}");
        }
    }

    const CONFIG: &str = "listener:\n  address: 10.77.0.1:15001\nredirect:\n  select_cgroups: [\"pods/*\"]\ntargets:\n  - name: customers-db\n    protocol: postgres\n    destinations: [\"10.77.0.2:5432\"]\n    postgres:\n      upstream:\n        user: app\n        database: shop\n        password_file: /etc/interceptor/secrets/customers-db\n        tls: { mode: verify-full, ca_file: /etc/interceptor/ca.pem, server_name: db.internal }\n  - name: plain-db\n    protocol: postgres\n    destinations: [\"10.77.0.3:5432\"]\n";

    #[test]
    fn target_configuration() {
        let cfg = crate::config::Config::parse(CONFIG).unwrap();
        let dst: SocketAddr = "10.77.0.2:5432".parse().unwrap();
        let inj = Injection::for_target(&cfg, "customers-db", dst).unwrap();
        assert_eq!(inj.upstream.user.as_deref(), Some("app"));
        assert!(inj.cancel_over_tls());
        // Without `upstream`, authentication passes through as before.
        assert!(Injection::for_target(&cfg, "plain-db", dst).is_none());

        let tcp = CONFIG.replacen("protocol: postgres", "protocol: tcp", 1);
        let e = crate::config::Config::parse(&tcp).unwrap_err();
        assert!(e.contains("need `protocol: postgres`"), "{e}");
        let bad = CONFIG.replace(
            "mode: verify-full, ca_file: /etc/interceptor/ca.pem, ",
            "mode: verify-full, ",
        );
        let e = crate::config::Config::parse(&bad).unwrap_err();
        assert!(e.contains("needs ca_file") && e.starts_with("line "), "{e}");
    }

    fn startup(params: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        build::startup_message(&mut out, ProtocolVersion::V3_0, params.iter().copied()).unwrap();
        out
    }

    fn rewritten(client: &[(&str, &str)], up: &Upstream) -> Vec<(String, String)> {
        let raw = startup(client);
        let f = Framer::new(Direction::Frontend);
        let Progress::Complete(p) = f.next_startup(&raw).unwrap() else {
            panic!()
        };
        let StartupPacket::Startup { version, params } = p.parse().unwrap() else {
            panic!()
        };
        let (out, _) = upstream_startup(version, &params, up).unwrap();
        let Progress::Complete(p) = f.next_startup(&out).unwrap() else {
            panic!()
        };
        let StartupPacket::Startup { params, .. } = p.parse().unwrap() else {
            panic!()
        };
        params
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn startup_keeps_the_clients_parameters() {
        let up = upstream("upstream: { user: app, database: shop }").unwrap();
        assert_eq!(
            rewritten(
                &[
                    ("user", "me"),
                    ("database", "mine"),
                    ("application_name", "psql"),
                    ("client_encoding", "UTF8")
                ],
                &up
            ),
            pairs(&[
                ("user", "app"),
                ("database", "shop"),
                ("application_name", "psql"),
                ("client_encoding", "UTF8")
            ])
        );
        // Defaults: the client's user and database.
        let up = upstream("upstream: { password_env: X }").unwrap();
        assert_eq!(
            rewritten(&[("user", "me"), ("application_name", "a")], &up),
            pairs(&[("user", "me"), ("application_name", "a")])
        );
        for (name, value) in [
            ("role", "postgres"),
            ("Session_Authorization", "postgres"),
            ("replication", "database"),
            ("options", "-c ro\\le=postgres"),
            ("options", "--ROLE=postgres"),
        ] {
            let raw = startup(&[("user", "me"), (name, value)]);
            let Progress::Complete(p) =
                Framer::new(Direction::Frontend).next_startup(&raw).unwrap()
            else {
                panic!()
            };
            let StartupPacket::Startup { version, params } = p.parse().unwrap() else {
                panic!()
            };
            let e = upstream_startup(version, &params, &up).unwrap_err();
            assert!(
                matches!(e, InjectError::Forbidden(_)),
                "{name}={value}: {e}"
            );
        }
        assert_eq!(
            rewritten(
                &[("user", "me"), ("options", "-c statement_timeout=5s")],
                &up
            ),
            pairs(&[("user", "me"), ("options", "-c statement_timeout=5s")])
        );
        // A replaced user without a database keeps the database the client meant.
        let up = upstream("upstream: { user: app }").unwrap();
        assert_eq!(
            rewritten(&[("user", "me")], &up),
            pairs(&[("user", "app"), ("database", "me")])
        );
    }

    #[tokio::test]
    async fn secrets_are_read_at_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        let src = PasswordSource::File(path.clone());
        let e = src.read().await.unwrap_err();
        assert!(e.to_string().contains("password_file") && e.to_string().contains("pw"));
        std::fs::write(&path, "first\n").unwrap();
        assert_eq!(src.read().await.unwrap().expose(), "first");
        std::fs::write(&path, "second\r\n").unwrap();
        assert_eq!(src.read().await.unwrap().expose(), "second");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(src.read().await, Err(SecretError::EmptyFile(_))));
        let e = PasswordSource::Env("INTERCEPTOR_TEST_SURELY_UNSET".into())
            .read()
            .await
            .unwrap_err();
        assert!(e.to_string().contains("INTERCEPTOR_TEST_SURELY_UNSET"));
    }

    /// A scripted server on an in-memory pipe.
    async fn scripted_login(
        server_says: Vec<u8>,
        password: Option<&str>,
    ) -> (Result<(BytesMut, Vec<u8>), InjectError>, Vec<u8>) {
        let (a, mut b) = tokio::io::duplex(64 * 1024);
        let mut auth = UpstreamAuth::new("app", password.map(|p| Secret::new(p.into())));
        let startup = startup(&[("user", "app")]);
        let server = tokio::spawn(async move {
            b.write_all(&server_says).await.unwrap();
            b.shutdown().await.unwrap();
            let mut got = Vec::new();
            let _ = b.read_to_end(&mut got).await;
            got
        });
        let r = login(a, &startup, &mut auth)
            .await
            .map(|(_, rest, _, to_client)| (rest, to_client));
        let got = server.await.unwrap();
        (r, got)
    }

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[tokio::test]
    async fn login_answers_and_hands_over_the_rest() {
        let mut script = msg(b'N', b"SNOTICE\0C00000\0Mhello\0\0");
        script.extend(msg(b'R', &[0, 0, 0, 3]));
        script.extend(msg(b'R', &[0, 0, 0, 0]));
        let after = msg(b'S', b"server_version\x0015\0");
        script.extend(&after);
        let (r, sent) = scripted_login(script, Some("pw1")).await;
        let (rest, to_client) = r.unwrap();
        assert_eq!(
            &rest[..],
            &after[..],
            "ParameterStatus is left for the relay"
        );
        assert!(to_client.starts_with(b"N") && to_client.ends_with(AUTHENTICATION_OK));
        // Startup, then the password message.
        let mut pwmsg = Vec::new();
        build::password_message(&mut pwmsg, "pw1").unwrap();
        assert!(sent.ends_with(&pwmsg));
        assert!(
            !to_client.windows(3).any(|w| w == b"pw1"),
            "the secret reached the client"
        );
    }

    #[tokio::test]
    async fn login_failures() {
        let mut err = Vec::new();
        build::error_response(
            &mut err,
            &ErrorSpec {
                severity: "FATAL",
                ..ErrorSpec::error("28P01", "password authentication failed for user \"app\"")
            },
        )
        .unwrap();
        let mut script = msg(b'R', &[0, 0, 0, 3]);
        script.extend(&err);
        let (r, _) = scripted_login(script, Some("wrong")).await;
        let e = r.unwrap_err();
        let InjectError::Rejected { code, raw, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!((code.as_str(), raw), ("28P01", &err));
        assert_eq!(client_error(&e, "db"), err, "the server's own error");

        let (r, _) = scripted_login(msg(b'R', &[0, 0, 0, 5, 1, 2, 3, 4]), None).await;
        let e = r.unwrap_err();
        assert!(matches!(e, InjectError::Auth(AuthError::NoPassword)), "{e}");
        let out = client_error(&e, "customers-db");
        let Progress::Complete(f) = Framer::new(Direction::Backend).next(&out).unwrap() else {
            panic!()
        };
        let BackendMessage::ErrorResponse(fields) = BackendMessage::parse(&f).unwrap() else {
            panic!()
        };
        assert_eq!(fields.severity(), Some("FATAL"));
        assert_eq!(fields.code(), Some("28000"));
        assert!(fields.message().unwrap().contains("`customers-db`"));

        let (r, _) = scripted_login(msg(b'R', &[0, 0, 0, 3]), Some("x")).await;
        assert!(matches!(r, Err(InjectError::Closed)));
        let (r, _) = scripted_login(msg(b'Z', b"I"), Some("x")).await;
        assert!(matches!(r, Err(InjectError::Unexpected('Z'))));
    }
}
