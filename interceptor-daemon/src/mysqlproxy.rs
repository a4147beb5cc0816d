//! MySQL/MariaDB session handling: every `COM_QUERY` and `COM_STMT_PREPARE`
//! is classified (sqlparser, MySQL dialect, see [`crate::sql`]) and decided
//! before it reaches the server; a denied one is answered with an ERR packet
//! (1142, SQLSTATE 42000) naming the rule, and the session stays usable.
//!
//! * The handshake is rewritten so the session never uses TLS (a client that
//!   insists gets an error: the pod-to-node hop stays on the node),
//!   multi-statements or query attributes; `COM_SET_OPTION` turning
//!   multi-statements on is refused. So one query is one statement, which is
//!   what the classifier vouches for.
//! * Authentication passes through; the command phase starts at the server's
//!   OK. `COM_CHANGE_USER` (re-authentication as another user) and commands
//!   outside a known set (replication, debug...) are refused.
//! * A prepared statement is decided at prepare time; executing it needs no
//!   new decision. `COM_INIT_DB` (`USE db`) passes; tables are matched as
//!   written in the statement.
//! * The classic protocol is request/response: an injected ERR is written at
//!   the next packet boundary of the server stream, which for a client that
//!   waits for each answer (every known client) is exactly its place.

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::{Buf, BytesMut};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::mpsc,
};
use tracing::warn;

use crate::{
    forward::Transferred,
    policy::{Action, Decision},
    protocol::mysql::{
        COM_CHANGE_USER, COM_FIELD_LIST, COM_INIT_DB, COM_PING, COM_QUERY, COM_QUIT,
        COM_RESET_CONNECTION, COM_SET_OPTION, COM_STATISTICS, COM_STMT_CLOSE, COM_STMT_EXECUTE,
        COM_STMT_FETCH, COM_STMT_PREPARE, COM_STMT_RESET, COM_STMT_SEND_LONG_DATA, ClientHello,
        ER_TABLEACCESS_DENIED, MysqlError, STRIPPED, err_packet, frame, rewrite_client_response,
        rewrite_server_handshake,
    },
    session::SessionCtx,
};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("malformed MySQL handshake from the {side}: {source}")]
    Handshake {
        side: &'static str,
        source: MysqlError,
    },
    #[error("the client asked for TLS, which is not available on the pod-to-node hop")]
    ClientTls,
}

async fn fill(r: &mut (impl AsyncReadExt + Unpin), buf: &mut BytesMut) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 8192 {
        buf.reserve(64 * 1024);
    }
    r.read_buf(buf).await
}

/// Reads until `buf` starts with a whole packet; returns its length.
async fn read_packet(r: &mut TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    loop {
        if let Some(p) = frame(buf) {
            return Ok(p.wire_len());
        }
        if fill(r, buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Runs the session until both directions are done.
pub async fn run(
    mut client: TcpStream,
    mut upstream: TcpStream,
    ctx: SessionCtx,
) -> Result<Transferred, SessionError> {
    let mut sbuf = BytesMut::with_capacity(16 * 1024);
    let mut cbuf = BytesMut::with_capacity(16 * 1024);
    // The server speaks first.
    let len = read_packet(&mut upstream, &mut sbuf).await?;
    let refused = sbuf[4] == 0xff;
    if !refused {
        rewrite_server_handshake(&mut sbuf[4..len], STRIPPED).map_err(|source| {
            SessionError::Handshake {
                side: "server",
                source,
            }
        })?;
    }
    client.write_all(&sbuf[..len]).await?;
    sbuf.advance(len);
    let (mut up, mut down) = (0u64, len as u64);
    if !refused {
        let len = read_packet(&mut client, &mut cbuf).await?;
        let seq = cbuf[3];
        match rewrite_client_response(&mut cbuf[4..len], STRIPPED) {
            Ok(ClientHello::Response { .. }) => {
                upstream.write_all(&cbuf[..len]).await?;
                cbuf.advance(len);
                up += len as u64;
            }
            Ok(ClientHello::SslRequest) => {
                warn!(
                    "closing the connection: the client asked for TLS, which is not available on the pod-to-node hop"
                );
                let _ = client
                    .write_all(&err_packet(
                        seq.wrapping_add(1),
                        1045,
                        "08004",
                        "interceptor: TLS is not available on this hop; connect without SSL",
                    ))
                    .await;
                return Err(SessionError::ClientTls);
            }
            Err(source) => {
                warn!(error = %source, "closing the connection: malformed MySQL handshake response");
                return Err(SessionError::Handshake {
                    side: "client",
                    source,
                });
            }
        }
    }
    let authed = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel(64);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let (a, b) = tokio::join!(
        client_to_server(cr, uw, cbuf, tx, authed.clone(), &ctx),
        server_to_client(ur, cw, sbuf, rx, authed)
    );
    up += a?;
    down += b?;
    Ok(Transferred { up, down })
}

fn error_for(d: &Decision, ctx: &SessionCtx) -> Vec<u8> {
    err_packet(
        1,
        ER_TABLEACCESS_DENIED,
        "42000",
        &format!(
            "interceptor: statement denied by rule `{}`: {} (identity {}, target {})",
            d.rule,
            d.reason,
            ctx.identity.as_deref().unwrap_or("(unidentified)"),
            ctx.target
        ),
    )
}

/// A refusal that no rule can lift: the proxy cannot vouch for the command.
fn protocol_denial(reason: &str) -> Decision {
    Decision {
        action: Action::Deny,
        rule: "protocol".into(),
        reason: reason.into(),
    }
}

/// Decides one SQL text; returns the decision and a literal-free description.
fn decide_sql(payload: &[u8], via: &str, ctx: &SessionCtx) -> (Decision, String) {
    let Ok(sql) = std::str::from_utf8(payload) else {
        return (
            protocol_denial("statement text is not valid UTF-8"),
            format!("{via} (not UTF-8)"),
        );
    };
    let c = ctx.classifier.classify_mysql(sql);
    let d = ctx
        .policy
        .decide_statements(&ctx.policy_ctx(), &c.statements);
    let kinds: Vec<String> = c
        .statements
        .iter()
        .map(|s| format!("{:?}", s.kind).to_lowercase())
        .collect();
    let tables: Vec<String> = c
        .statements
        .iter()
        .flat_map(|s| s.tables.iter().map(|t| t.table.parts.join(".")))
        .collect();
    (
        d,
        format!("{via} {} on [{}]", kinds.join(","), tables.join(",")),
    )
}

async fn client_to_server(
    mut cr: OwnedReadHalf,
    mut uw: OwnedWriteHalf,
    mut buf: BytesMut,
    tx: mpsc::Sender<Vec<u8>>,
    authed: Arc<AtomicBool>,
    ctx: &SessionCtx,
) -> Result<u64, SessionError> {
    let mut out: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut total = 0u64;
    // Inside a payload longer than one packet: forwarding it, or dropping it.
    let mut continuing = false;
    let mut dropping = false;
    loop {
        while let Some(p) = frame(&buf) {
            let len = p.wire_len();
            // Authentication data, LOAD DATA LOCAL contents and continuation
            // packets are not commands.
            if continuing || p.seq != 0 || !authed.load(Ordering::Acquire) {
                if !dropping {
                    out.extend_from_slice(&buf[..len]);
                }
                continuing = p.continued();
                dropping &= continuing;
                buf.advance(len);
                continue;
            }
            let cmd = p.payload.first().copied().unwrap_or(0);
            let verdict = match cmd {
                COM_QUERY | COM_STMT_PREPARE if p.continued() => Some((
                    protocol_denial("statement larger than 16 MiB cannot be inspected"),
                    "query (oversized)".to_string(),
                )),
                COM_QUERY => Some(decide_sql(&p.payload[1..], "query", ctx)),
                COM_STMT_PREPARE => Some(decide_sql(&p.payload[1..], "prepare", ctx)),
                COM_SET_OPTION if p.payload.get(1..3) == Some(&[0, 0]) => Some((
                    protocol_denial("multi-statements are not available through the interceptor"),
                    "set option multi-statements on".to_string(),
                )),
                COM_CHANGE_USER => Some((
                    protocol_denial(
                        "changing the user on a connection is not available through the interceptor",
                    ),
                    "change user".to_string(),
                )),
                COM_QUIT
                | COM_INIT_DB
                | COM_FIELD_LIST
                | COM_STATISTICS
                | COM_PING
                | COM_STMT_EXECUTE
                | COM_STMT_SEND_LONG_DATA
                | COM_STMT_CLOSE
                | COM_STMT_RESET
                | COM_STMT_FETCH
                | COM_RESET_CONNECTION
                | COM_SET_OPTION => None,
                other => Some((
                    protocol_denial(&format!(
                        "command {other:#04x} is not available through the interceptor"
                    )),
                    format!("command {other:#04x}"),
                )),
            };
            match verdict {
                Some((d, description)) => {
                    ctx.record(&d, description).await;
                    if d.action == Action::Deny {
                        dropping = p.continued();
                        if tx.send(error_for(&d, ctx)).await.is_err() {
                            let _ = uw.shutdown().await;
                            return Ok(total);
                        }
                    } else {
                        out.extend_from_slice(&buf[..len]);
                    }
                }
                None => out.extend_from_slice(&buf[..len]),
            }
            continuing = p.continued();
            buf.advance(len);
        }
        if !out.is_empty() {
            uw.write_all(&out).await?;
            total += out.len() as u64;
            out.clear();
        }
        if fill(&mut cr, &mut buf).await? == 0 {
            let _ = uw.shutdown().await;
            return Ok(total);
        }
    }
}

async fn server_to_client(
    mut ur: OwnedReadHalf,
    mut cw: OwnedWriteHalf,
    mut buf: BytesMut,
    mut rx: mpsc::Receiver<Vec<u8>>,
    authed: Arc<AtomicBool>,
) -> Result<u64, SessionError> {
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut total = 0u64;
    let mut rx_open = true;
    loop {
        while let Some(p) = frame(&buf) {
            let len = p.wire_len();
            // The OK that ends authentication: commands may follow.
            if !authed.load(Ordering::Acquire) && p.payload.first() == Some(&0x00) {
                authed.store(true, Ordering::Release);
            }
            out.extend_from_slice(&buf[..len]);
            buf.advance(len);
        }
        if !out.is_empty() {
            cw.write_all(&out).await?;
            total += out.len() as u64;
            out.clear();
        }
        tokio::select! {
            e = rx.recv(), if rx_open => match e {
                // Only whole packets were written: this is a boundary.
                Some(err) => {
                    cw.write_all(&err).await?;
                    total += err.len() as u64;
                }
                None => rx_open = false,
            },
            n = fill(&mut ur, &mut buf) => {
                if n? == 0 {
                    while let Ok(err) = rx.try_recv() {
                        cw.write_all(&err).await?;
                    }
                    let _ = cw.shutdown().await;
                    return Ok(total);
                }
            }
        }
    }
}
