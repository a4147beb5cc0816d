//! HTTP/1.1 session handling: decides every request (method, host, path)
//! before it reaches the server; a denied one is answered `403` with
//! `{"error":"denied","rule":...,"reason":...}` in its place among the
//! server's responses (keep-alive and pipelining preserved).
//!
//! * Bodies stream through in both directions (Content-Length, chunked, or
//!   until close for responses); nothing is buffered beyond one read.
//! * A denied request's body is read and dropped, so the connection stays
//!   usable; with `Expect: 100-continue` the client has not sent the body yet
//!   and may never, so the 403 carries `Connection: close` and the connection
//!   ends. A client that asked for `Connection: close` (or HTTP/1.0 without
//!   keep-alive) gets it too.
//! * Malformed or ambiguous request framing (see [`crate::protocol::http`])
//!   is answered `400` with `Connection: close`, after the responses owed for
//!   earlier requests, with a warning naming the problem.
//! * Interim responses (`100 Continue`) pass through. An upgrade (`101`) or a
//!   successful `CONNECT` turns the connection into an opaque tunnel: the
//!   request that asked for it was decided; what flows after it is not HTTP
//!   and is not inspected. While such a request awaits its response the client
//!   half reads nothing further, so a refused upgrade cannot smuggle requests.
//! * Logs and audit describe a request as `METHOD host path`: no query
//!   string, no header values; a denial's log line lists the headers with
//!   `Authorization`, `Cookie` (and `proxy.redact_headers`) redacted.

use std::{collections::VecDeque, io};

use bytes::{Buf, BytesMut};
use serde_json::json;
use tokio::{
    io::AsyncWriteExt,
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{mpsc, oneshot},
};
use tracing::{info, warn};

use crate::{
    forward::Transferred,
    policy::{Action, protocols::HttpRequest},
    protocol::http::{
        BodyScanner, Framing, HttpError, json_response, parse_request, parse_response,
        redacted_headers,
    },
    session::SessionCtx,
};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("malformed HTTP from the {side}: {source}")]
    Protocol {
        side: &'static str,
        source: HttpError,
    },
}

/// What the server half owes the client, in request order.
#[derive(Debug)]
enum Entry {
    /// A request went upstream; its response comes from the server.
    Forwarded {
        method: String,
        /// Told whether the response switched protocols (101 / CONNECT 2xx).
        switched: Option<oneshot::Sender<bool>>,
    },
    /// The interceptor answers: these bytes, then the end of the connection
    /// if `close`.
    Local { bytes: Vec<u8>, close: bool },
}

/// Runs the session until both directions are done.
pub async fn run(
    client: TcpStream,
    upstream: TcpStream,
    ctx: SessionCtx,
) -> Result<Transferred, SessionError> {
    let (tx, rx) = mpsc::channel(256);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let (a, b) = tokio::join!(
        client_to_server(cr, uw, tx, &ctx),
        server_to_client(
            ur,
            cw,
            rx,
            ctx.recorder
                .clone()
                .map(crate::recording::http::HttpRecorder::new)
        )
    );
    Ok(Transferred { up: a?, down: b? })
}

/// Where the client half is in the request stream.
enum In {
    Head,
    /// A request body: forwarded (allowed) or dropped (denied).
    Body {
        scanner: BodyScanner,
        forward: bool,
    },
}

/// What the client half does after one request head.
enum Next {
    Continue,
    /// Stop reading the client (a closing answer was queued).
    Stop,
    /// Wait for the response before reading on (possible protocol switch).
    AwaitSwitch(oneshot::Receiver<bool>),
}

async fn client_to_server(
    mut cr: OwnedReadHalf,
    mut uw: OwnedWriteHalf,
    tx: mpsc::Sender<Entry>,
    ctx: &SessionCtx,
) -> Result<u64, SessionError> {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut state = In::Head;
    let mut total = 0u64;
    let mut switch: Option<oneshot::Receiver<bool>> = None;
    loop {
        loop {
            match &mut state {
                In::Body { scanner, forward } => {
                    let n = scanner.scan(&buf).map_err(|source| {
                        warn!(error = %source, "closing the connection: malformed request body from the client");
                        SessionError::Protocol { side: "client", source }
                    })?;
                    if *forward {
                        out.extend_from_slice(&buf[..n]);
                    }
                    buf.advance(n);
                    if !scanner.is_done() {
                        break;
                    }
                    state = In::Head;
                }
                In::Head if switch.is_some() => break,
                In::Head => {
                    let parsed = match parse_request(&buf) {
                        Ok(None) => break,
                        Ok(Some(h)) => Ok(h),
                        Err(e) => Err(e),
                    };
                    let head = match parsed {
                        Ok(h) => h,
                        Err(source) => {
                            warn!(error = %source, "closing the connection: malformed HTTP request from the client");
                            let body =
                                json!({"error": "bad request", "reason": source.to_string()});
                            let _ = tx
                                .send(Entry::Local {
                                    bytes: json_response(400, "Bad Request", &body, true),
                                    close: true,
                                })
                                .await;
                            uw.write_all(&out).await?;
                            let _ = uw.shutdown().await;
                            return Err(SessionError::Protocol {
                                side: "client",
                                source,
                            });
                        }
                    };
                    let (host, path) = head.host_and_path();
                    let operation = format!("{} {} {}", head.method, host, path);
                    let req = HttpRequest {
                        method: head.method,
                        host: &host,
                        path: &path,
                    };
                    let d = ctx
                        .policy
                        .current()
                        .policy
                        .decide_http(&ctx.policy_ctx(), &req);
                    if d.action == Action::Deny {
                        info!(
                            rule = %d.rule,
                            operation = %operation,
                            headers = %redacted_headers(&head.headers, &ctx.redact_headers),
                            "request denied"
                        );
                    }
                    ctx.record(&d, operation).await;
                    let len = head.len;
                    let (entry, next) = if d.action == Action::Deny {
                        // Without the body on the wire (100-continue) there is
                        // no telling whether it will come: close.
                        let close = !head.keep_alive()
                            || (head.expects_continue() && head.framing != Framing::None);
                        let body = json!({"error": "denied", "rule": d.rule, "reason": d.reason});
                        state = In::Body {
                            scanner: BodyScanner::new(head.framing),
                            forward: false,
                        };
                        (
                            Entry::Local {
                                bytes: json_response(403, "Forbidden", &body, close),
                                close,
                            },
                            if close { Next::Stop } else { Next::Continue },
                        )
                    } else {
                        out.extend_from_slice(&buf[..len]);
                        state = In::Body {
                            scanner: BodyScanner::new(head.framing),
                            forward: true,
                        };
                        if head.may_switch_protocols() {
                            let (stx, srx) = oneshot::channel();
                            (
                                Entry::Forwarded {
                                    method: head.method.to_string(),
                                    switched: Some(stx),
                                },
                                Next::AwaitSwitch(srx),
                            )
                        } else {
                            (
                                Entry::Forwarded {
                                    method: head.method.to_string(),
                                    switched: None,
                                },
                                Next::Continue,
                            )
                        }
                    };
                    if tx.send(entry).await.is_err() {
                        let _ = uw.shutdown().await;
                        return Ok(total);
                    }
                    buf.advance(len);
                    match next {
                        Next::Continue => {}
                        Next::Stop => {
                            uw.write_all(&out).await?;
                            total += out.len() as u64;
                            let _ = uw.shutdown().await;
                            return Ok(total);
                        }
                        Next::AwaitSwitch(r) => switch = Some(r),
                    }
                }
            }
        }
        if !out.is_empty() {
            uw.write_all(&out).await?;
            total += out.len() as u64;
            out.clear();
        }
        // A request that may switch protocols has been sent whole: its
        // response decides whether what follows is HTTP.
        if matches!(state, In::Head)
            && let Some(r) = switch.take()
        {
            if r.await.unwrap_or(false) {
                uw.write_all(&buf).await?;
                total += buf.len() as u64;
                total += tokio::io::copy(&mut cr, &mut uw).await?;
                let _ = uw.shutdown().await;
                return Ok(total);
            }
            continue;
        }
        if crate::session::fill(&mut cr, &mut buf).await? == 0 {
            if !buf.is_empty() {
                warn!(
                    bytes = buf.len(),
                    "client closed in the middle of a request"
                );
            }
            let _ = uw.shutdown().await;
            return Ok(total);
        }
    }
}

/// Where the server half is in the response stream.
enum Out {
    Head,
    Body(BodyScanner),
    Tunnel,
}

async fn server_to_client(
    mut ur: OwnedReadHalf,
    mut cw: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Entry>,
    mut recorder: Option<crate::recording::http::HttpRecorder>,
) -> Result<u64, SessionError> {
    let mut queue: VecDeque<Entry> = VecDeque::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut state = Out::Head;
    let mut rx_open = true;
    let mut total = 0u64;
    let bad = |source| {
        warn!(error = %source, "closing the connection: malformed HTTP response from the server");
        SessionError::Protocol {
            side: "server",
            source,
        }
    };
    loop {
        while let Ok(e) = rx.try_recv() {
            queue.push_back(e);
        }
        loop {
            match &mut state {
                Out::Tunnel => {
                    out.extend_from_slice(&buf);
                    buf.clear();
                    break;
                }
                Out::Body(s) => {
                    let n = s.scan(&buf).map_err(bad)?;
                    out.extend_from_slice(&buf[..n]);
                    buf.advance(n);
                    if let Some(r) = recorder.as_mut() {
                        r.body(n);
                    }
                    if !s.is_done() {
                        break;
                    }
                    if let Some(r) = recorder.as_mut() {
                        r.body_done();
                    }
                    state = Out::Head;
                }
                Out::Head => {
                    // Our own answers go out when they are next in line.
                    while let Some(Entry::Local { .. }) = queue.front() {
                        if let Some(Entry::Local { bytes, close }) = queue.pop_front() {
                            out.extend_from_slice(&bytes);
                            if close {
                                cw.write_all(&out).await?;
                                total += out.len() as u64;
                                let _ = cw.shutdown().await;
                                return Ok(total);
                            }
                        }
                    }
                    let Some(head) = parse_response(&buf).map_err(bad)? else {
                        break;
                    };
                    let method = match queue.front() {
                        Some(Entry::Forwarded { method, .. }) => method.as_str(),
                        // A response nobody asked for (a 408 before closing).
                        _ => "GET",
                    };
                    let framing = head.framing(method).map_err(bad)?;
                    let interim = head.is_interim();
                    if !interim && let Some(r) = recorder.as_mut() {
                        let declared = match framing {
                            Framing::Length(n) => Some(n),
                            Framing::None => Some(0),
                            _ => None,
                        };
                        r.head(head.status, &head.headers, declared);
                    }
                    let len = head.len;
                    out.extend_from_slice(&buf[..len]);
                    buf.advance(len);
                    if interim {
                        continue;
                    }
                    if let Some(Entry::Forwarded { switched, .. }) = queue.pop_front()
                        && let Some(s) = switched
                    {
                        let _ = s.send(framing == Framing::Tunnel);
                    }
                    state = match framing {
                        Framing::Tunnel => Out::Tunnel,
                        f => Out::Body(BodyScanner::new(f)),
                    };
                }
            }
        }
        if !out.is_empty() {
            cw.write_all(&out).await?;
            total += out.len() as u64;
            out.clear();
        }
        tokio::select! {
            e = rx.recv(), if rx_open => match e {
                Some(e) => queue.push_back(e),
                None => rx_open = false,
            },
            n = crate::session::fill(&mut ur, &mut buf) => {
                if n? == 0 {
                    // The server is done; our answers still owed go out in order.
                    if matches!(state, Out::Head) {
                        while let Ok(e) = rx.try_recv() {
                            queue.push_back(e);
                        }
                        while let Some(Entry::Local { bytes, .. }) = queue.pop_front() {
                            out.extend_from_slice(&bytes);
                        }
                        cw.write_all(&out).await?;
                        total += out.len() as u64;
                    }
                    let _ = cw.shutdown().await;
                    return Ok(total);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The session over real sockets against a scripted HTTP server.
    use std::sync::Arc;

    use tokio::net::TcpListener;

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::{metrics::Metrics, policy::Policy};

    const POLICY: &str = r#"
default: allow
rules:
  - id: no-admin
    http: { paths: ["/admin*"] }
    action: deny
    description: admin API is for operators
"#;

    /// The server answers every request with its path as the body (reading
    /// Content-Length / chunked bodies) and records what it received.
    async fn session(client_bytes: &[u8], responses: usize) -> (String, String) {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (saddr, paddr) = (server.local_addr().unwrap(), proxy.local_addr().unwrap());
        let srv = tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            let mut buf = BytesMut::new();
            let mut seen = Vec::new();
            let mut body: Option<(BodyScanner, String)> = None;
            loop {
                loop {
                    if let Some((sc, path)) = body.as_mut() {
                        let n = sc.scan(&buf).unwrap();
                        seen.extend_from_slice(&buf[..n]);
                        buf.advance(n);
                        if !sc.is_done() {
                            break;
                        }
                        let r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}",
                            path.len()
                        );
                        s.write_all(r.as_bytes()).await.unwrap();
                        body = None;
                    }
                    let Ok(Some(h)) = parse_request(&buf) else {
                        break;
                    };
                    if h.expects_continue() {
                        s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.unwrap();
                    }
                    let path = h.target.to_string();
                    let f = h.framing;
                    let len = h.len;
                    seen.extend_from_slice(&buf[..len]);
                    buf.advance(len);
                    body = Some((BodyScanner::new(f), path));
                }
                if s.read_buf(&mut buf).await.unwrap() == 0 {
                    return String::from_utf8_lossy(&seen).into_owned();
                }
            }
        });
        let px = tokio::spawn(async move {
            let (c, _) = proxy.accept().await.unwrap();
            let u = TcpStream::connect(saddr).await.unwrap();
            let ctx = SessionCtx {
                audit: None,
                identity: None,
                target: "api".into(),
                policy: crate::policy::store::PolicyHandle::fixed(Policy::parse(POLICY).unwrap()),
                classifier: Arc::default(),
                metrics: Arc::new(Metrics::new()),
                redact_headers: vec![],
                recorder: None,
                approvals: None,
            };
            run(c, u, ctx).await
        });
        let mut c = TcpStream::connect(paddr).await.unwrap();
        c.write_all(client_bytes).await.unwrap();
        let mut got = Vec::new();
        while String::from_utf8_lossy(&got).matches("HTTP/1.1 ").count() < responses
            || !got.ends_with(b"}") && !got.ends_with(b"/") && !got.ends_with(b"a")
        {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), c.read(&mut chunk))
                .await
                .expect("responses in time")
                .unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        drop(c);
        let _ = px.await.unwrap();
        (
            String::from_utf8_lossy(&got).into_owned(),
            srv.await.unwrap(),
        )
    }

    #[tokio::test]
    async fn pipelined_requests_keep_their_order() {
        let (got, seen) = session(
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /admin/x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nGET POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\nGET /c/ HTTP/1.1\r\nHost: x\r\n\r\n",
            5,
        )
        .await;
        let denied = "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: 74\r\nCache-Control: no-store\r\n\r\n{\"error\":\"denied\",\"reason\":\"admin API is for operators\",\"rule\":\"no-admin\"}";
        assert_eq!(
            got,
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n/a{denied}HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n/b{denied}HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n/c/"
            )
        );
        assert!(
            !seen.contains("admin") && !seen.contains("GET POST"),
            "{seen}"
        );
        assert!(seen.contains("3\r\nabc\r\n0\r\n\r\n"), "{seen}");
    }

    #[tokio::test]
    async fn expect_continue_denied_closes() {
        let (got, seen) = session(
            b"PUT /admin HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
            1,
        )
        .await;
        assert!(
            got.starts_with("HTTP/1.1 403") && got.contains("Connection: close"),
            "{got}"
        );
        assert_eq!(seen, "");
    }

    #[tokio::test]
    async fn expect_continue_allowed_passes_interim() {
        let (got, _) = session(
            b"PUT /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
            2,
        )
        .await;
        assert_eq!(
            got,
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n/a"
        );
    }

    #[tokio::test]
    async fn smuggling_gets_400_after_earlier_responses() {
        let (got, seen) = session(
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            2,
        )
        .await;
        assert!(
            got.starts_with(
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n/aHTTP/1.1 400 Bad Request"
            ),
            "{got}"
        );
        assert!(got.contains("Connection: close"), "{got}");
        assert_eq!(seen, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    }
}

#[cfg(test)]
mod upgrade_tests {
    //! Protocol switches: a refused upgrade keeps the connection HTTP (and
    //! policed); an accepted one makes it a tunnel.
    use std::{sync::Arc, time::Duration};

    use tokio::net::TcpListener;

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::{metrics::Metrics, policy::Policy};

    /// The server answers the first request head with `first_response`; after
    /// a 101 it echoes whatever comes next.
    async fn exchange(first_response: &'static [u8], client_bytes: &[u8]) -> (String, String) {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (saddr, paddr) = (server.local_addr().unwrap(), proxy.local_addr().unwrap());
        let srv = tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut chunk = [0u8; 4096];
            let mut answered = 0;
            loop {
                let n = match tokio::time::timeout(Duration::from_millis(300), s.read(&mut chunk))
                    .await
                {
                    Ok(Ok(n)) if n > 0 => n,
                    _ => return String::from_utf8_lossy(&seen).into_owned(),
                };
                seen.extend_from_slice(&chunk[..n]);
                let heads = String::from_utf8_lossy(&seen).matches("\r\n\r\n").count();
                if answered == 0 && heads > 0 {
                    s.write_all(first_response).await.unwrap();
                    answered = 1;
                } else if answered > 0 && first_response.starts_with(b"HTTP/1.1 101") {
                    s.write_all(&chunk[..n]).await.unwrap();
                }
            }
        });
        let px = tokio::spawn(async move {
            let (c, _) = proxy.accept().await.unwrap();
            let u = TcpStream::connect(saddr).await.unwrap();
            let ctx = SessionCtx {
                audit: None,
                identity: None,
                target: "api".into(),
                policy: crate::policy::store::PolicyHandle::fixed(
                    Policy::parse(
                        "default: allow\nrules:\n  - {id: no-admin, http: {paths: [\"/admin*\"]}, action: deny}\n",
                    )
                    .unwrap(),
                ),
                classifier: Arc::default(),
                metrics: Arc::new(Metrics::new()),
                redact_headers: vec![],
                recorder: None,
                approvals: None,
            };
            run(c, u, ctx).await
        });
        let mut c = TcpStream::connect(paddr).await.unwrap();
        c.write_all(client_bytes).await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_millis(500), c.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        drop(c);
        let _ = px.await.unwrap();
        (
            String::from_utf8_lossy(&got).into_owned(),
            srv.await.unwrap(),
        )
    }

    const UPGRADE_THEN_ADMIN: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n";

    #[tokio::test]
    async fn a_refused_upgrade_stays_policed() {
        let (got, seen) = exchange(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno",
            UPGRADE_THEN_ADMIN,
        )
        .await;
        assert!(
            got.starts_with("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nnoHTTP/1.1 403 Forbidden"),
            "{got}"
        );
        assert!(!seen.contains("/admin"), "{seen}");
    }

    #[tokio::test]
    async fn an_accepted_upgrade_is_a_tunnel() {
        let (got, seen) = exchange(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            UPGRADE_THEN_ADMIN,
        )
        .await;
        assert!(
            got.starts_with("HTTP/1.1 101 Switching Protocols\r\n")
                && got.ends_with("GET /admin HTTP/1.1\r\nHost: x\r\n\r\n"),
            "{got}"
        );
        assert!(seen.contains("/admin"), "{seen}");
    }
}
