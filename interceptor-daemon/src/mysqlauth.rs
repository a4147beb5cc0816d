//! Credential injection for MySQL/MariaDB targets: the daemon logs in to the
//! server itself, with a credential only the node holds, so a workload needs
//! (and sees) no database password. The configuration has the shape of
//! PostgreSQL's (`targets[].mysql.upstream`, [`crate::pgauth::Upstream`]),
//! and the secret and TLS code are PostgreSQL's too.
//!
//! With `mysql.upstream` configured, [`establish`] runs the login:
//!
//! 1. the server's greeting goes to the client with TLS (and the other
//!    capabilities the proxy never allows) cleared, so the pod-to-node hop
//!    stays plaintext on the node; its connection id is the server's, so a
//!    client's `KILL QUERY <id>` still names its own session;
//! 2. the client's HandshakeResponse is read for its capabilities, user,
//!    database, collation and connection attributes; its auth response (a
//!    scramble of whatever password it has) is dropped unread;
//! 3. the upstream connection is encrypted as configured (SSLRequest, then
//!    rustls: `disable` / `require` / `verify-full`);
//! 4. the daemon sends its own HandshakeResponse (user and database as
//!    configured, defaulting to the client's) and answers the server's
//!    authentication exchange with the secret, read from its file or
//!    environment variable at that moment: `mysql_native_password`,
//!    `caching_sha2_password` (fast path; full authentication by cleartext
//!    over TLS, or without TLS encrypted with the server's RSA key),
//!    `sha256_password` and `mysql_clear_password` (the latter only over TLS),
//!    including AuthSwitchRequests (MariaDB switches plugin per user). The
//!    scrambles and the RSA encryption are `mysql_common`'s;
//! 5. the server's OK is given to the client as the answer to its own
//!    HandshakeResponse, and the statement relay takes over.
//!
//! Any failure reaches the client as an ERR packet in place of that OK: the
//! server's own for a refused login, otherwise one naming the target (1045 /
//! 28000 for a credential problem, 1043 / 08S01 for a connection or TLS
//! problem), never a hang. The secret is never logged and never sent to the
//! client. `COM_CHANGE_USER` stays refused by the relay, so a session cannot
//! re-authenticate around the injected credential.

use std::{net::SocketAddr, time::Duration};

use bytes::{Buf, BytesMut};
use mysql_common::{
    auth::plugins::{AuthProc, ChallengeResponsePlugin, Context, Response},
    constants::CapabilityFlags,
    io::ParseBuf,
    packets::{AuthPlugin, AuthSwitchRequest, HandshakePacket, HandshakeResponse, SslRequest},
    proto::MySerialize,
};
use serde::Deserialize;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::either::Either;
use tracing::{info, warn};

use crate::{
    pgauth::{
        SecretError, TlsError, TlsMode, Upstream, UpstreamStream,
        tls::{base_config, handshake},
    },
    protocol::{
        mysql::{ClientHello, MAX_PAYLOAD, STRIPPED, err_packet, frame, rewrite_server_handshake},
        postgres::auth::Secret,
    },
};

/// How long the upstream TLS handshake plus login may take.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// `ER_ACCESS_DENIED_ERROR`.
const ER_ACCESS_DENIED: u16 = 1045;
/// `ER_HANDSHAKE_ERROR` (SQLSTATE 08S01): a server error code; clients reject
/// their own (2xxx) codes in an ERR packet as malformed.
const ER_HANDSHAKE_ERROR: u16 = 1043;

/// `targets[].mysql`: MySQL-specific target settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlTarget {
    /// How the daemon logs in to the server; absent: the client's own
    /// authentication passes through untouched.
    #[serde(default)]
    pub upstream: Option<Upstream>,
}

/// Credential injection for one connection.
#[derive(Debug, Clone)]
pub struct Injection {
    pub target: String,
    pub upstream: Upstream,
    /// The original destination (default TLS server name: its IP).
    pub dst: SocketAddr,
}

impl Injection {
    /// The injection configured for `target`, if any.
    pub fn for_target(
        cfg: &crate::config::Config,
        target: &str,
        dst: SocketAddr,
    ) -> Option<Injection> {
        let t = cfg.targets.iter().find(|t| t.name == target)?;
        let upstream = t.mysql.as_ref()?.upstream.clone()?;
        Some(Injection {
            target: target.into(),
            upstream,
            dst,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("no upstream credential: {0}")]
    Secret(#[from] SecretError),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("the server at {0} does not offer TLS but tls.mode requires it")]
    NoTls(SocketAddr),
    #[error("the server asks for authentication plugin `{0}`, which the interceptor cannot answer")]
    Plugin(String),
    #[error("the server's authentication exchange failed: {0}")]
    Auth(String),
    #[error(
        "the server asks for a password and none is configured (password_file or password_env)"
    )]
    NoPassword,
    #[error(
        "the server asks for the password in cleartext (`{0}`) on an unencrypted connection; set tls.mode"
    )]
    Cleartext(String),
    #[error("the server refused the login: {code}: {message}")]
    Rejected {
        code: u16,
        message: String,
        /// The server's ERR payload, forwarded to the client as is.
        raw: Vec<u8>,
    },
    #[error("malformed {0} during login")]
    Malformed(&'static str),
    #[error("the client asked for TLS, which is not available on the pod-to-node hop")]
    ClientTls,
    #[error("the server closed the connection during login")]
    Closed,
    #[error("the server did not complete the login within {0:?}")]
    Timeout(Duration),
    #[error("I/O during login: {0}")]
    Io(#[from] std::io::Error),
}

impl InjectError {
    fn code(&self) -> (u16, &'static str) {
        match self {
            InjectError::Secret(_)
            | InjectError::Plugin(_)
            | InjectError::Auth(_)
            | InjectError::NoPassword
            | InjectError::Cleartext(_) => (ER_ACCESS_DENIED, "28000"),
            _ => (ER_HANDSHAKE_ERROR, "08S01"),
        }
    }
}

/// An authenticated upstream session, ready for the relay.
pub struct Established {
    pub stream: UpstreamStream,
    /// Server bytes read past the OK: the relay's first input.
    pub server_buf: BytesMut,
    /// Client bytes read past its HandshakeResponse (a pipelined command).
    pub client_buf: BytesMut,
    /// Bytes sent upstream / to the client during the login.
    pub up: u64,
    pub down: u64,
    pub user: String,
    /// Capabilities of the upstream session (CLIENT_DEPRECATE_EOF matters
    /// to the relay).
    pub caps: u32,
}

/// What mysql_common's plugins need to know of the connection.
struct AuthCtx<'a> {
    pass: &'a [u8],
    tls: bool,
    scramble: &'a [u8],
}

impl Context for AuthCtx<'_> {
    fn pass(&self) -> &[u8] {
        self.pass
    }
    fn is_ipc_transport(&self) -> bool {
        false
    }
    fn is_tls_transport(&self) -> bool {
        self.tls
    }
    fn scramble(&self) -> &[u8] {
        self.scramble
    }
    fn server_key_pem(&self) -> Option<&[u8]> {
        None
    }
}

/// One upstream authentication plugin run.
struct Exchange {
    proc: AuthProc,
    plugin: String,
    nonce: Vec<u8>,
}

impl Exchange {
    fn new(plugin: &AuthPlugin<'_>, nonce: &[u8], tls: bool) -> Result<Exchange, InjectError> {
        let name = String::from_utf8_lossy(plugin.as_bytes()).into_owned();
        // Cleartext plugins would put the secret on the wire unencrypted.
        if matches!(plugin, AuthPlugin::MysqlClearPassword) && !tls {
            return Err(InjectError::Cleartext(name));
        }
        let proc = AuthProc::init(plugin).map_err(|_| InjectError::Plugin(name.clone()))?;
        Ok(Exchange {
            proc,
            plugin: name,
            nonce: nonce.to_vec(),
        })
    }

    fn step(
        &mut self,
        secret: &Secret,
        tls: bool,
        challenge: &[u8],
    ) -> Result<Option<Vec<u8>>, InjectError> {
        let ctx = AuthCtx {
            pass: secret.expose().as_bytes(),
            tls,
            scramble: &self.nonce,
        };
        match self.proc.run(ctx, challenge) {
            Ok(Response::Next { packet } | Response::Last { packet }) => Ok(packet),
            Err(e) => Err(InjectError::Auth(format!("{} ({e})", self.plugin))),
        }
    }
}

/// A MySQL packet stream during the login: reads whole packets.
struct Wire<S> {
    s: S,
    buf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    /// The next packet's sequence id and payload (a login packet is never
    /// longer than one packet).
    async fn read(&mut self) -> Result<(u8, Vec<u8>), InjectError> {
        loop {
            if let Some(p) = frame(&self.buf) {
                if p.continued() {
                    return Err(InjectError::Malformed("oversized login packet"));
                }
                let out = (p.seq, p.payload.to_vec());
                let len = p.wire_len();
                self.buf.advance(len);
                return Ok(out);
            }
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(4096);
            }
            if self.s.read_buf(&mut self.buf).await? == 0 {
                return Err(InjectError::Closed);
            }
        }
    }
}

fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let n = payload.len().min(MAX_PAYLOAD - 1);
    let mut v = Vec::with_capacity(4 + n);
    v.extend_from_slice(&[n as u8, (n >> 8) as u8, (n >> 16) as u8, seq]);
    v.extend_from_slice(&payload[..n]);
    v
}

/// Logs in upstream on the client's behalf (see the module docs). On failure
/// the client has been sent an ERR packet and the error is logged.
pub async fn establish(
    client: &mut TcpStream,
    upstream: TcpStream,
    inj: &Injection,
    identity: Option<&str>,
) -> Result<Established, InjectError> {
    // The sequence id the client expects for the login's final answer (0
    // until it has been sent the greeting).
    let mut answer_seq = 0u8;
    let mut down = 0u64;
    let attempt = login(client, upstream, inj, &mut answer_seq, &mut down);
    let result = match tokio::time::timeout(LOGIN_TIMEOUT, attempt).await {
        Ok(r) => r,
        Err(_) => Err(InjectError::Timeout(LOGIN_TIMEOUT)),
    };
    match &result {
        Ok(e) => info!(
            target_name = %inj.target,
            identity = identity.unwrap_or(""),
            upstream_user = %e.user,
            tls = matches!(e.stream, Either::Right(_)),
            "upstream login with the injected credential"
        ),
        Err(e) => {
            warn!(
                target_name = %inj.target,
                identity = identity.unwrap_or(""),
                error = %e,
                "upstream login failed; the client gets an error"
            );
            let reply = match e {
                InjectError::Rejected { raw, .. } => packet(answer_seq, raw),
                other => {
                    let (code, state) = other.code();
                    err_packet(
                        answer_seq,
                        code,
                        state,
                        &format!(
                            "interceptor: cannot log in to target `{}`: {other}",
                            inj.target
                        ),
                    )
                }
            };
            let _ = client.write_all(&reply).await;
            let _ = client.shutdown().await;
        }
    }
    result
}

async fn login(
    client: &mut TcpStream,
    upstream: TcpStream,
    inj: &Injection,
    answer_seq: &mut u8,
    down: &mut u64,
) -> Result<Established, InjectError> {
    let mut server = Wire {
        s: upstream,
        buf: BytesMut::with_capacity(4096),
    };
    let (seq, mut greeting) = server.read().await?;
    if greeting.first() == Some(&0xff) {
        // The server refuses the connection outright (too many connections,
        // host blocked): its error is the client's, in the greeting's place.
        *answer_seq = seq;
        return Err(InjectError::Rejected {
            code: u16::from_le_bytes([
                greeting.get(1).copied().unwrap_or(0),
                greeting.get(2).copied().unwrap_or(0),
            ]),
            message: String::from_utf8_lossy(greeting.get(9..).unwrap_or_default()).into_owned(),
            raw: greeting,
        });
    }
    let hello: HandshakePacket<'static> = ParseBuf(&greeting)
        .parse::<HandshakePacket>(())
        .map_err(|_| InjectError::Malformed("server greeting"))?
        .into_owned();
    // The client sees the server's greeting without the capabilities the
    // proxy never allows (TLS among them).
    rewrite_server_handshake(&mut greeting, STRIPPED)
        .map_err(|_| InjectError::Malformed("server greeting"))?;
    let to_client = packet(seq, &greeting);
    client.write_all(&to_client).await?;
    *down += to_client.len() as u64;
    *answer_seq = 2;

    let mut from_client = Wire {
        s: &mut *client,
        buf: BytesMut::with_capacity(4096),
    };
    let (cseq, mut resp) = from_client.read().await?;
    *answer_seq = cseq.wrapping_add(1);
    match crate::protocol::mysql::rewrite_client_response(&mut resp, STRIPPED) {
        Ok(ClientHello::Response { .. }) => {}
        Ok(ClientHello::SslRequest) => return Err(InjectError::ClientTls),
        Err(_) => return Err(InjectError::Malformed("client handshake response")),
    }
    let client_buf = std::mem::take(&mut from_client.buf);
    let hr = ParseBuf(&resp)
        .parse::<HandshakeResponse>(())
        .map_err(|_| InjectError::Malformed("client handshake response"))?;

    let secret = match &inj.upstream.password {
        Some(src) => Some(src.read().await?),
        None => None,
    };
    let user = inj
        .upstream
        .user
        .clone()
        .unwrap_or_else(|| String::from_utf8_lossy(hr.user()).into_owned());
    let database = inj
        .upstream
        .database
        .clone()
        .map(String::into_bytes)
        .or_else(|| hr.db_name().map(<[u8]>::to_vec));

    let server_caps = hello.capabilities();
    let tls = inj.upstream.tls.mode != TlsMode::Disable;
    // What the client and server agreed on, minus what the proxy forbids;
    // plus what this login needs.
    let mut caps = (hr.capabilities() & server_caps)
        & !CapabilityFlags::from_bits_truncate(STRIPPED)
        & !CapabilityFlags::CLIENT_SSL;
    caps |= CapabilityFlags::CLIENT_PROTOCOL_41 | CapabilityFlags::CLIENT_SECURE_CONNECTION;
    if tls {
        caps |= CapabilityFlags::CLIENT_SSL;
    }
    let attrs = if server_caps.contains(CapabilityFlags::CLIENT_CONNECT_ATTRS) {
        hr.connect_attributes()
    } else {
        None
    };
    // What the HandshakeResponse will say, already in the SSLRequest: a
    // server takes the capabilities from the first of the two.
    caps.set(CapabilityFlags::CLIENT_CONNECT_WITH_DB, database.is_some());
    caps.set(CapabilityFlags::CLIENT_CONNECT_ATTRS, attrs.is_some());
    caps |= CapabilityFlags::CLIENT_PLUGIN_AUTH;
    let ext = hr.mariadb_ext_capabilities() & hello.mariadb_ext_capabilities();
    let mut up = 0u64;
    let mut seq = cseq;
    let max_packet = MAX_PAYLOAD as u32;

    let Wire { s: tcp, buf } = server;
    let stream: UpstreamStream = if tls {
        if !server_caps.contains(CapabilityFlags::CLIENT_SSL) {
            return Err(InjectError::NoTls(inj.dst));
        }
        let config =
            base_config(&inj.upstream.tls)?.ok_or(InjectError::Malformed("TLS configuration"))?;
        let mut req = Vec::new();
        SslRequest::new(caps, max_packet, hr.collation())
            .with_mariadb_capabilities(ext)
            .serialize(&mut req);
        let mut tcp = tcp;
        let bytes = packet(seq, &req);
        tcp.write_all(&bytes).await?;
        up += bytes.len() as u64;
        seq = seq.wrapping_add(1);
        if !buf.is_empty() {
            // Plaintext the server sent before the TLS handshake cannot be
            // part of the encrypted session.
            return Err(InjectError::Malformed("server data before TLS"));
        }
        Either::Right(handshake(tcp, &inj.upstream.tls, inj.dst, config, None).await?)
    } else {
        Either::Left(tcp)
    };
    let mut server = Wire { s: stream, buf };

    let plugin = hello
        .auth_plugin()
        .map(|p| p.into_owned())
        .unwrap_or(AuthPlugin::MysqlNativePassword);
    let no_secret = Secret::new(String::new());
    let pass = secret.as_ref().unwrap_or(&no_secret);
    let mut ex = Exchange::new(&plugin, &hello.nonce(), tls)?;
    let first = ex.step(pass, tls, &hello.nonce())?;
    let version = hello.server_version_parsed().unwrap_or((5, 5, 3));
    let mut out = Vec::new();
    HandshakeResponse::new(
        first,
        version,
        Some(user.as_bytes()),
        database.as_deref(),
        Some(plugin.clone()),
        caps,
        attrs,
        max_packet,
    )
    .with_mariadb_ext_capabilities(ext)
    .serialize(&mut out);
    // The client's collation, not mysql_common's default.
    if let Some(c) = out.get_mut(8) {
        *c = hr.collation();
    }
    let bytes = packet(seq, &out);
    server.s.write_all(&bytes).await?;
    server.s.flush().await?;
    up += bytes.len() as u64;

    loop {
        let (sseq, payload) = server.read().await?;
        let reply = |p: Vec<u8>| packet(sseq.wrapping_add(1), &p);
        match payload.first() {
            Some(0x00) => {
                let ok = packet(*answer_seq, &payload);
                client.write_all(&ok).await?;
                *down += ok.len() as u64;
                return Ok(Established {
                    stream: server.s,
                    server_buf: server.buf,
                    client_buf,
                    up,
                    down: *down,
                    user,
                    caps: caps.bits(),
                });
            }
            Some(0xff) => {
                return Err(InjectError::Rejected {
                    code: u16::from_le_bytes([
                        payload.get(1).copied().unwrap_or(0),
                        payload.get(2).copied().unwrap_or(0),
                    ]),
                    message: String::from_utf8_lossy(payload.get(9..).unwrap_or_default())
                        .into_owned(),
                    raw: payload,
                });
            }
            Some(0xfe) => {
                if payload.len() == 1 {
                    // The pre-4.1 switch: mysql_old_password, never answered.
                    return Err(InjectError::Plugin("mysql_old_password".into()));
                }
                let sw = ParseBuf(&payload)
                    .parse::<AuthSwitchRequest>(())
                    .map_err(|_| InjectError::Malformed("auth switch request"))?;
                let plugin = sw.auth_plugin().into_owned();
                let nonce = sw.plugin_data().to_vec();
                ex = Exchange::new(&plugin, &nonce, tls)?;
                if secret.is_none() {
                    return Err(InjectError::NoPassword);
                }
                if let Some(p) = ex.step(pass, tls, &nonce)? {
                    let b = reply(p);
                    server.s.write_all(&b).await?;
                    server.s.flush().await?;
                    up += b.len() as u64;
                }
            }
            Some(0x01) => {
                if secret.is_none() {
                    return Err(InjectError::NoPassword);
                }
                if let Some(p) = ex.step(pass, tls, &payload[1..])? {
                    let b = reply(p);
                    server.s.write_all(&b).await?;
                    server.s.flush().await?;
                    up += b.len() as u64;
                }
            }
            _ => return Err(InjectError::Malformed("server authentication packet")),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The login against scripted servers: the scrambles are checked against
    //! vectors computed independently (Python's hashlib), the RSA-encrypted
    //! password is decrypted with the openssl command.
    use std::path::Path;

    use mysql_common::{
        constants::StatusFlags,
        packets::{HandshakePacket, HandshakeResponse},
    };
    use tokio::net::TcpListener;

    use super::*;

    const SECRET: &str = "s3cret-Upstream";
    const N1: &[u8; 20] = b"abcdefghijklmnopqrst";
    const N2: &[u8; 20] = b"ABCDEFGHIJKLMNOPQRST";
    /// SHA1(pw) XOR SHA1(N1 + SHA1(SHA1(pw))).
    const NATIVE_N1: &str = "919ef8918f2c828e22958565c7ca6146ac3dc4d1";
    /// SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) + nonce).
    const SHA2_N1: &str = "904094ecad5135352d85f751f2db75e3a3a713e1667280b347f49dfef5f210b5";
    const SHA2_N2: &str = "ac4400bcb54a99958a8937a5d3bdf75c57c571caa7f042af90dc7f7a23328579";

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn caps() -> CapabilityFlags {
        CapabilityFlags::CLIENT_PROTOCOL_41
            | CapabilityFlags::CLIENT_SECURE_CONNECTION
            | CapabilityFlags::CLIENT_PLUGIN_AUTH
            | CapabilityFlags::CLIENT_LONG_PASSWORD
            | CapabilityFlags::CLIENT_CONNECT_WITH_DB
            | CapabilityFlags::CLIENT_TRANSACTIONS
            | CapabilityFlags::CLIENT_SSL
            | CapabilityFlags::CLIENT_MULTI_STATEMENTS
    }

    fn greeting(plugin: &str, nonce: &[u8; 20]) -> Vec<u8> {
        let mut tail = nonce[8..].to_vec();
        tail.push(0);
        let mut out = Vec::new();
        HandshakePacket::new(
            10,
            &b"8.0.36"[..],
            77,
            nonce[..8].try_into().unwrap(),
            Some(tail),
            caps(),
            45,
            StatusFlags::empty(),
            Some(plugin.as_bytes()),
        )
        .serialize(&mut out);
        packet(0, &out)
    }

    async fn read_packet(s: &mut TcpStream) -> (u8, Vec<u8>) {
        let mut w = Wire {
            s,
            buf: BytesMut::new(),
        };
        w.read().await.unwrap()
    }

    fn injection(dir: &Path, dst: SocketAddr) -> Injection {
        let file = dir.join("secret");
        std::fs::write(&file, format!("{SECRET}\n")).unwrap();
        let yaml = format!(
            "upstream: {{user: app, database: shop, password_file: {}}}",
            file.display()
        );
        let t: MysqlTarget = serde_yaml::from_str(&yaml).unwrap();
        Injection {
            target: "db".into(),
            upstream: t.upstream.unwrap(),
            dst,
        }
    }

    /// Runs a login: `server` scripts the upstream side; the client logs in
    /// as `anyone` with a wrong password. Returns what the client received
    /// and the daemon's result.
    async fn login_with<F, Fut>(server: F) -> (Vec<u8>, Result<String, String>)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let dir = tempfile::tempdir().unwrap();
        let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let px = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (uaddr, paddr) = (up.local_addr().unwrap(), px.local_addr().unwrap());
        let srv = tokio::spawn(async move {
            let (s, _) = up.accept().await.unwrap();
            server(s).await
        });
        let inj = injection(dir.path(), uaddr);
        let daemon = tokio::spawn(async move {
            let (mut c, _) = px.accept().await.unwrap();
            let u = TcpStream::connect(uaddr).await.unwrap();
            establish(&mut c, u, &inj, None)
                .await
                .map(|e| e.user)
                .map_err(|e| e.to_string())
        });
        let mut c = TcpStream::connect(paddr).await.unwrap();
        let (_, g) = read_packet(&mut c).await;
        let hello = ParseBuf(&g).parse::<HandshakePacket>(()).unwrap();
        assert!(
            !hello.capabilities().contains(CapabilityFlags::CLIENT_SSL),
            "TLS offered to the client"
        );
        assert_eq!(hello.connection_id(), 77);
        let mut resp = Vec::new();
        HandshakeResponse::new(
            Some(&b"wrong password scramble"[..]),
            (8, 0, 36),
            Some(&b"anyone"[..]),
            None::<&[u8]>,
            Some(AuthPlugin::MysqlNativePassword),
            hello.capabilities(),
            None,
            1 << 24,
        )
        .serialize(&mut resp);
        c.write_all(&packet(1, &resp)).await.unwrap();
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got).await;
        let result = daemon.await.unwrap();
        srv.await.unwrap();
        (got, result)
    }

    /// The daemon's HandshakeResponse: checks user, database and the absence
    /// of TLS / multi-statements; returns its auth data.
    async fn handshake_response(s: &mut TcpStream) -> Vec<u8> {
        let (seq, p) = read_packet(s).await;
        assert_eq!(seq, 1);
        let hr = ParseBuf(&p).parse::<HandshakeResponse>(()).unwrap();
        assert_eq!(hr.user(), b"app");
        assert_eq!(hr.db_name(), Some(&b"shop"[..]));
        assert!(!hr.capabilities().contains(CapabilityFlags::CLIENT_SSL));
        assert!(
            !hr.capabilities()
                .contains(CapabilityFlags::CLIENT_MULTI_STATEMENTS)
        );
        hr.scramble_buf().to_vec()
    }

    const OK: &[u8] = &[0, 0, 0, 2, 0, 0, 0];

    #[test]
    fn config_has_the_postgres_shape_and_needs_protocol_mysql() {
        let base = "listener:\n  address: 10.77.0.1:15001\nredirect:\n  cgroup_root: /sys/fs/cgroup/unified\n  select_cgroups: [\"pods/*\"]\ntargets:\n  - name: db\n    destinations: [\"10.77.0.2:3306\"]\n";
        let up =
            "    mysql:\n      upstream: {user: app, password_env: DB_PW, tls: {mode: require}}\n";
        let c = crate::config::Config::parse(&format!("{base}    protocol: mysql\n{up}")).unwrap();
        let dst: SocketAddr = "10.77.0.2:3306".parse().unwrap();
        let inj = Injection::for_target(&c, "db", dst).unwrap();
        assert_eq!(inj.upstream.user.as_deref(), Some("app"));
        assert_eq!(inj.upstream.tls.mode, TlsMode::Require);
        assert!(Injection::for_target(&c, "other", dst).is_none());
        let e = crate::config::Config::parse(&format!("{base}    protocol: postgres\n{up}"))
            .unwrap_err();
        assert!(e.contains("`mysql` settings need `protocol: mysql`"), "{e}");
        let both = "    mysql:\n      upstream: {password_env: A, password_file: /x}\n";
        let e = crate::config::Config::parse(&format!("{base}    protocol: mysql\n{both}"))
            .unwrap_err();
        assert!(e.contains("not both"), "{e}");
        let e = crate::config::Config::parse(&format!(
            "{base}    protocol: mysql\n    mysql:\n      upstream: {{tls: {{mode: verify-full}}}}\n"
        ))
        .unwrap_err();
        assert!(e.contains("verify-full needs ca_file"), "{e}");
    }

    #[tokio::test]
    async fn native_password_is_injected() {
        let (got, r) = login_with(|mut s| async move {
            s.write_all(&greeting("mysql_native_password", N1))
                .await
                .unwrap();
            assert_eq!(hex(&handshake_response(&mut s).await), NATIVE_N1);
            s.write_all(&packet(2, OK)).await.unwrap();
        })
        .await;
        assert_eq!(r.as_deref(), Ok("app"));
        // The client's login ends with the server's OK, numbered after its
        // own response.
        assert!(got.ends_with(&packet(2, OK)), "{got:?}");
        assert!(!String::from_utf8_lossy(&got).contains(SECRET));
    }

    #[tokio::test]
    async fn auth_switch_to_caching_sha2_fast_path() {
        let (got, r) = login_with(|mut s| async move {
            s.write_all(&greeting("mysql_native_password", N1))
                .await
                .unwrap();
            assert_eq!(hex(&handshake_response(&mut s).await), NATIVE_N1);
            let mut sw = b"\xfecaching_sha2_password\0".to_vec();
            sw.extend_from_slice(N2);
            sw.push(0);
            s.write_all(&packet(2, &sw)).await.unwrap();
            let (seq, p) = read_packet(&mut s).await;
            assert_eq!((seq, hex(&p).as_str()), (3, SHA2_N2));
            // Fast authentication succeeded, then OK.
            s.write_all(&packet(4, b"\x01\x03")).await.unwrap();
            s.write_all(&packet(5, OK)).await.unwrap();
        })
        .await;
        assert_eq!(r.as_deref(), Ok("app"));
        assert!(got.ends_with(&packet(2, OK)), "{got:?}");
    }

    fn openssl(args: &[&str], dir: &Path) -> Vec<u8> {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl command");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    #[tokio::test]
    async fn caching_sha2_full_auth_with_the_servers_rsa_key() {
        let keys = tempfile::tempdir().unwrap();
        let dir = keys.path().to_path_buf();
        openssl(
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "key.pem",
            ],
            &dir,
        );
        let public = openssl(&["pkey", "-in", "key.pem", "-pubout"], &dir);
        let (got, r) = login_with(move |mut s| async move {
            s.write_all(&greeting("caching_sha2_password", N1))
                .await
                .unwrap();
            assert_eq!(hex(&handshake_response(&mut s).await), SHA2_N1);
            // Not cached: full authentication; without TLS the client asks
            // for the public key.
            s.write_all(&packet(2, b"\x01\x04")).await.unwrap();
            let (seq, p) = read_packet(&mut s).await;
            assert_eq!((seq, p.as_slice()), (3, &b"\x02"[..]));
            let mut key = b"\x01".to_vec();
            key.extend_from_slice(&public);
            s.write_all(&packet(4, &key)).await.unwrap();
            let (seq, encrypted) = read_packet(&mut s).await;
            assert_eq!(seq, 5);
            assert_eq!(encrypted.len(), 256, "one RSA-2048 block");
            std::fs::write(dir.join("enc"), &encrypted).unwrap();
            let plain = openssl(
                &[
                    "pkeyutl",
                    "-decrypt",
                    "-inkey",
                    "key.pem",
                    "-pkeyopt",
                    "rsa_padding_mode:oaep",
                    "-in",
                    "enc",
                ],
                &dir,
            );
            let unxored: Vec<u8> = plain
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ N1[i % N1.len()])
                .collect();
            assert_eq!(unxored, format!("{SECRET}\0").as_bytes());
            s.write_all(&packet(6, OK)).await.unwrap();
        })
        .await;
        assert_eq!(r.as_deref(), Ok("app"));
        assert!(got.ends_with(&packet(2, OK)), "{got:?}");
        assert!(!String::from_utf8_lossy(&got).contains(SECRET));
    }

    #[tokio::test]
    async fn a_refused_login_reaches_the_client_as_the_servers_error() {
        let err = err_packet(2, 1045, "28000", "Access denied for user 'app'@'x'");
        let want = err.clone();
        let (got, r) = login_with(move |mut s| async move {
            s.write_all(&greeting("mysql_native_password", N1))
                .await
                .unwrap();
            handshake_response(&mut s).await;
            s.write_all(&err).await.unwrap();
        })
        .await;
        assert!(r.unwrap_err().contains("Access denied"));
        assert!(got.ends_with(&want), "{got:?}");
    }

    #[tokio::test]
    async fn cleartext_without_tls_is_refused() {
        let (got, r) = login_with(|mut s| async move {
            s.write_all(&greeting("mysql_native_password", N1))
                .await
                .unwrap();
            handshake_response(&mut s).await;
            s.write_all(&packet(2, b"\xfemysql_clear_password\0"))
                .await
                .unwrap();
            // The daemon hangs up without sending the password.
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
            assert!(rest.is_empty(), "{rest:?}");
        })
        .await;
        assert!(r.unwrap_err().contains("cleartext"));
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.contains("#28000interceptor: cannot log in to target `db`"),
            "{text}"
        );
    }
}
