//! Redis session handling: decides every client command before it reaches the
//! server and answers a denied one with ``-ERR interceptor: command denied by
//! rule `<id>`: <reason>`` in its place, keeping pipelines in order.
//!
//! Order: the client half sends one `Entry` per command to the server half
//! (before the command is written upstream, so an entry is always there before
//! its reply). The server half scans replies (never buffering them whole) and
//! walks the FIFO: a forwarded command consumes one reply, a denied one is
//! written to the client as soon as it is next in line and the stream is
//! between two replies.
//!
//! Special cases, and the limits of the FIFO:
//! * RESP3 (after a successful `HELLO 3`): push frames (`>`) are not replies
//!   and pass through without consuming an entry; `(P|S)(UN)SUBSCRIBE`
//!   confirmations are pushes, so those commands consume no reply;
//! * RESP2 pub/sub (after the confirmations of `SUBSCRIBE`...), `MONITOR`
//!   and `CLIENT REPLY OFF|SKIP` make replies stop lining up with commands:
//!   from then on the session is
//!   *loose*: a denial is written at the next boundary between server frames
//!   (never inside one), which a client in those modes accepts, but its place
//!   relative to replies of earlier commands is not guaranteed;
//! * `MULTI`: a command denied while queueing gets the error instead of
//!   `+QUEUED` and, like a command the server itself rejects, dooms the
//!   transaction: `EXEC` is sent to the server as `DISCARD` and the client gets
//!   `-EXECABORT`. A denied `EXEC` also discards the transaction. A denied
//!   `MULTI` is not a transaction: the following commands run one by one;
//! * malformed client bytes close the connection (after `-ERR Protocol error`,
//!   like the server would) with a warning naming the error; malformed server
//!   bytes close it too.
//!
//! Logs and audit name the command and its keys (from the key table; never the
//! values, and no arguments at all for commands whose key positions are
//! unknown, such as `AUTH`).

use std::{collections::VecDeque, io};

use bytes::{Buf, BytesMut};
use tokio::{
    io::AsyncWriteExt,
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::mpsc,
};
use tracing::{debug, warn};

use crate::{
    forward::Transferred,
    policy::{Action, Decision, protocols::RedisOperation},
    protocol::redis::{
        Command, Keys, ReplyScanner, RespError, Scan, command_keys, error_reply, has_subcommand,
        parse_command,
    },
    session::SessionCtx,
};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("malformed Redis traffic from the {side}: {source}")]
    Protocol {
        side: &'static str,
        source: RespError,
    },
}

/// What the server half owes the client for one command.
#[derive(Debug)]
enum Entry {
    /// This many regular replies answer the command.
    Replies(usize),
    /// HELLO: one reply; a map means RESP3 from now on, an array RESP2.
    Hello,
    /// Answered by the interceptor: these bytes, when next in line.
    Denied(Vec<u8>),
    /// One reply answers the command and is replaced by these bytes.
    Replace(Vec<u8>),
    /// (P|S)SUBSCRIBE naming n channels: pushes only in RESP3; in RESP2 one
    /// confirmation per channel, then pub/sub (loose).
    Subscribe(usize),
    /// RESP2 subscription confirmations still to come before going loose.
    ThenLoose(usize),
    /// (P|S)UNSUBSCRIBE naming n channels: pushes only in RESP3; in RESP2
    /// outside pub/sub, one reply per channel (one if none named).
    Unsubscribe(usize),
    /// Replies stop lining up with commands (MONITOR, CLIENT REPLY OFF|SKIP).
    Loose,
}

const DISCARD: &[u8] = b"*1\r\n$7\r\nDISCARD\r\n";
const EXECABORT: &[u8] = b"-EXECABORT Transaction discarded because of previous errors.\r\n";

/// Runs the session until both directions are done.
pub async fn run(
    client: TcpStream,
    upstream: TcpStream,
    ctx: SessionCtx,
) -> Result<Transferred, SessionError> {
    let (tx, rx) = mpsc::channel(1024);
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
                .map(crate::recording::redis::RedisRecorder::new)
        )
    );
    Ok(Transferred { up: a?, down: b? })
}

/// `GET [session:1]`: the command and its known keys, bounded.
fn describe(name: &str, sub: Option<&str>, keys: &Keys<'_>) -> String {
    let mut s = name.to_string();
    if let Some(sub) = sub {
        s.push(' ');
        s.push_str(sub);
    }
    if !keys.exact {
        s.push_str(" (keys unknown)");
        return s;
    }
    if keys.keys.is_empty() {
        return s;
    }
    let shown: Vec<String> = keys
        .keys
        .iter()
        .take(8)
        .map(|k| {
            let k = String::from_utf8_lossy(k);
            k.chars().take(64).collect()
        })
        .collect();
    s.push_str(&format!(" [{}", shown.join(",")));
    if keys.keys.len() > 8 {
        s.push_str(&format!(",+{}", keys.keys.len() - 8));
    }
    s.push(']');
    s
}

fn denial(d: &Decision) -> Vec<u8> {
    error_reply(&format!(
        "interceptor: command denied by rule `{}`: {}",
        d.rule, d.reason
    ))
}

/// The client's transaction state: `Some(doomed)` between MULTI and EXEC.
type Multi = Option<bool>;

/// Decides one command: what the server half is owed and what (if anything)
/// goes upstream in its place.
async fn decide<'b>(
    cmd: &Command<'b>,
    raw: &'b [u8],
    multi: &mut Multi,
    ctx: &SessionCtx,
) -> (Entry, Option<&'b [u8]>) {
    let name = cmd.name();
    let sub = if has_subcommand(&name) {
        cmd.arg_upper(1)
    } else {
        None
    };
    let keys = command_keys(cmd);
    let op = RedisOperation {
        command: &name,
        subcommand: sub.as_deref(),
        keys: &keys.keys,
    };
    let d = ctx
        .policy
        .current()
        .policy
        .decide_redis(&ctx.policy_ctx(), &op);
    ctx.record(&d, describe(&name, sub.as_deref(), &keys)).await;
    if d.action == Action::Deny {
        if name == "EXEC" && multi.is_some() {
            *multi = None;
            return (Entry::Replace(denial(&d)), Some(DISCARD));
        }
        if let Some(doomed) = multi.as_mut() {
            *doomed = true;
        }
        return (Entry::Denied(denial(&d)), None);
    }
    let entry = match name.as_str() {
        "EXEC" => match multi.take() {
            Some(true) => return (Entry::Replace(EXECABORT.to_vec()), Some(DISCARD)),
            _ => Entry::Replies(1),
        },
        "DISCARD" | "RESET" => {
            *multi = None;
            Entry::Replies(1)
        }
        "MULTI" => {
            multi.get_or_insert(false);
            Entry::Replies(1)
        }
        // Inside a transaction every command is answered `+QUEUED`.
        _ if multi.is_some() => Entry::Replies(1),
        "HELLO" => Entry::Hello,
        "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" => Entry::Subscribe(cmd.args.len() - 1),
        "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "SUNSUBSCRIBE" => Entry::Unsubscribe(cmd.args.len() - 1),
        "MONITOR" => Entry::Loose,
        "CLIENT"
            if sub.as_deref() == Some("REPLY")
                && matches!(cmd.arg_upper(2).as_deref(), Some("OFF" | "SKIP")) =>
        {
            Entry::Loose
        }
        _ => Entry::Replies(1),
    };
    (entry, Some(raw))
}

async fn client_to_server(
    mut cr: OwnedReadHalf,
    mut uw: OwnedWriteHalf,
    tx: mpsc::Sender<Entry>,
    ctx: &SessionCtx,
) -> Result<u64, SessionError> {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut multi: Multi = None;
    let mut total = 0u64;
    loop {
        loop {
            let (len, entry) = match parse_command(&buf) {
                Ok(None) => break,
                Ok(Some(cmd)) if cmd.is_empty() => (cmd.len, None),
                Ok(Some(cmd)) => {
                    let raw = &buf[..cmd.len];
                    let (entry, send) = decide(&cmd, raw, &mut multi, ctx).await;
                    if let Some(bytes) = send {
                        out.extend_from_slice(bytes);
                    }
                    (cmd.len, Some(entry))
                }
                Err(source) => {
                    warn!(
                        error = %source,
                        "closing the connection: malformed Redis command from the client"
                    );
                    let _ = tx
                        .send(Entry::Denied(error_reply(&format!(
                            "Protocol error: {source}"
                        ))))
                        .await;
                    uw.write_all(&out).await?;
                    let _ = uw.shutdown().await;
                    return Err(SessionError::Protocol {
                        side: "client",
                        source,
                    });
                }
            };
            if let Some(e) = entry
                && tx.send(e).await.is_err()
            {
                // The server half is gone (server closed): nothing more to do.
                let _ = uw.shutdown().await;
                return Ok(total);
            }
            buf.advance(len);
        }
        if !out.is_empty() {
            uw.write_all(&out).await?;
            total += out.len() as u64;
            out.clear();
        }
        if crate::session::fill(&mut cr, &mut buf).await? == 0 {
            if !buf.is_empty() {
                warn!(
                    bytes = buf.len(),
                    "client closed in the middle of a command"
                );
            }
            let _ = uw.shutdown().await;
            return Ok(total);
        }
    }
}

/// The server half's view of the conversation.
#[derive(Default)]
struct Replies {
    queue: VecDeque<Entry>,
    resp3: bool,
    loose: bool,
    scanner: ReplyScanner,
    /// The reply in progress is dropped (it is being replaced).
    swallow: bool,
}

impl Replies {
    /// Between replies: settles every entry at the front that needs no reply,
    /// writing denials that are next in line.
    fn settle(&mut self, out: &mut Vec<u8>) {
        while let Some(front) = self.queue.front_mut() {
            match front {
                Entry::Denied(bytes) => out.append(bytes),
                Entry::Subscribe(n) => {
                    if !(self.resp3 || self.loose) {
                        *front = Entry::ThenLoose((*n).max(1));
                        continue;
                    }
                }
                Entry::Loose => self.loose = true,
                Entry::Unsubscribe(n) => {
                    if !(self.resp3 || self.loose) {
                        *front = Entry::Replies((*n).max(1));
                        continue;
                    }
                }
                Entry::Replies(0) => {}
                // Loose: replies no longer tell which command they answer.
                Entry::Replace(bytes) if self.loose => out.append(bytes),
                Entry::Replies(_) | Entry::Hello | Entry::ThenLoose(_) if self.loose => {}
                Entry::Replies(_) | Entry::Hello | Entry::Replace(_) | Entry::ThenLoose(_) => {
                    return;
                }
            }
            self.queue.pop_front();
        }
    }

    /// A reply starts with `first`: is it the one being replaced?
    fn start(&mut self, first: u8) {
        self.swallow =
            !self.loose && first != b'>' && matches!(self.queue.front(), Some(Entry::Replace(_)));
    }

    fn end(&mut self, marker: u8, out: &mut Vec<u8>) {
        self.swallow = false;
        if marker == b'>' || self.loose {
            return;
        }
        match self.queue.front_mut() {
            Some(Entry::Replies(n)) => {
                *n -= 1;
                if *n == 0 {
                    self.queue.pop_front();
                }
            }
            Some(Entry::ThenLoose(n)) => {
                // A message can beat a later confirmation: approximate.
                *n -= 1;
                if *n == 0 {
                    self.queue.pop_front();
                    self.loose = true;
                }
            }
            Some(Entry::Hello) => {
                match marker {
                    b'%' => self.resp3 = true,
                    b'*' => self.resp3 = false,
                    _ => {}
                }
                self.queue.pop_front();
            }
            Some(Entry::Replace(bytes)) => {
                out.append(bytes);
                self.queue.pop_front();
            }
            _ => debug!(marker = %(marker as char), "reply that answers no pending command"),
        }
    }
}

async fn server_to_client(
    mut ur: OwnedReadHalf,
    mut cw: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Entry>,
    mut recorder: Option<crate::recording::redis::RedisRecorder>,
) -> Result<u64, SessionError> {
    let mut st = Replies::default();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut rx_open = true;
    let mut total = 0u64;
    loop {
        // Entries are queued before their commands go upstream, so every reply
        // in `buf` has its entry here after this.
        while let Ok(e) = rx.try_recv() {
            st.queue.push_back(e);
        }
        loop {
            if st.scanner.at_boundary() {
                st.settle(&mut out);
                let Some(&first) = buf.first() else { break };
                st.start(first);
            }
            let scanned = st.scanner.scan(&buf).map_err(|source| {
                warn!(error = %source, "closing the connection: malformed Redis reply from the server");
                SessionError::Protocol {
                    side: "server",
                    source,
                }
            })?;
            match scanned {
                Scan::Partial(n) => {
                    if !st.swallow {
                        out.extend_from_slice(&buf[..n]);
                        if let Some(r) = recorder.as_mut() {
                            r.feed(&buf[..n]);
                        }
                    }
                    buf.advance(n);
                    break;
                }
                Scan::Reply { len, marker } => {
                    // A replaced reply is not what the client gets: not recorded.
                    if !st.swallow {
                        out.extend_from_slice(&buf[..len]);
                        if let Some(r) = recorder.as_mut() {
                            r.feed(&buf[..len]);
                            r.end(marker);
                        }
                    }
                    buf.advance(len);
                    st.end(marker, &mut out);
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
                Some(e) => st.queue.push_back(e),
                None => rx_open = false,
            },
            n = crate::session::fill(&mut ur, &mut buf) => {
                if n? == 0 {
                    // The server is done; denials still owed go out in order.
                    if st.scanner.at_boundary() {
                        while let Ok(e) = rx.try_recv() {
                            st.queue.push_back(e);
                        }
                        for e in st.queue.drain(..) {
                            if let Entry::Denied(b) = e {
                                out.extend_from_slice(&b);
                            }
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
    //! The session over real sockets, against a scripted server: order of
    //! replies and injected errors in pipelines, transactions, RESP3 pushes.
    use std::sync::Arc;

    use tokio::net::TcpListener;

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::{metrics::Metrics, policy::Policy};

    const POLICY: &str = r#"
default: allow
rules:
  - id: no-flush
    redis: { commands: ["FLUSH*", "CONFIG*"] }
    action: deny
    description: "no admin\r\ncommands"
"#;

    /// A server that answers each command (`scripted(name)`), after reading
    /// everything the proxy sends; returns what it received.
    async fn session(
        client_bytes: &[u8],
        reply: fn(&str) -> Vec<u8>,
        expect_replies: usize,
    ) -> (Vec<u8>, Vec<u8>) {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (saddr, paddr) = (server.local_addr().unwrap(), proxy.local_addr().unwrap());
        let srv = tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            let mut buf = BytesMut::new();
            let mut seen = Vec::new();
            loop {
                while let Ok(Some(c)) = parse_command(&buf) {
                    let len = c.len;
                    if !c.is_empty() {
                        s.write_all(&reply(&c.name())).await.unwrap();
                    }
                    seen.extend_from_slice(&buf[..len]);
                    buf.advance(len);
                }
                if s.read_buf(&mut buf).await.unwrap() == 0 {
                    return seen;
                }
            }
        });
        let px = tokio::spawn(async move {
            let (c, _) = proxy.accept().await.unwrap();
            let u = TcpStream::connect(saddr).await.unwrap();
            let ctx = SessionCtx {
                audit: None,
                identity: None,
                target: "cache".into(),
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
        // Read until the expected number of lines (one per simple reply) came.
        let mut got = Vec::new();
        while got.iter().filter(|&&b| b == b'\n').count() < expect_replies {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), c.read(&mut chunk))
                .await
                .expect("replies in time")
                .unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        drop(c);
        let _ = px.await.unwrap();
        (got, srv.await.unwrap())
    }

    fn simple(name: &str) -> Vec<u8> {
        match name {
            "MULTI" | "DISCARD" => b"+OK\r\n".to_vec(),
            "EXEC" => b"*1\r\n:1\r\n".to_vec(),
            "HELLO" => b"%1\r\n+proto\r\n:3\r\n".to_vec(),
            "SUBSCRIBE" => b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n".to_vec(),
            // RESP3: an invalidation push arrives before the GET reply.
            "GET" => b">2\r\n+invalidate\r\n*1\r\n+k\r\n+v\r\n".to_vec(),
            other => format!("+{other}\r\n").into_bytes(),
        }
    }

    #[tokio::test]
    async fn denials_take_their_place_in_a_pipeline() {
        let (got, seen) = session(
            b"PING\r\nFLUSHALL\r\n*2\r\n$4\r\nECHO\r\n$1\r\nx\r\nconfig get *\r\nTIME\r\n",
            simple,
            5,
        )
        .await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            "+PING\r\n-ERR interceptor: command denied by rule `no-flush`: no admin  commands\r\n+ECHO\r\n-ERR interceptor: command denied by rule `no-flush`: no admin  commands\r\n+TIME\r\n"
        );
        assert_eq!(
            String::from_utf8_lossy(&seen),
            "PING\r\n*2\r\n$4\r\nECHO\r\n$1\r\nx\r\nTIME\r\n",
            "denied commands never reach the server"
        );
    }

    #[tokio::test]
    async fn a_denial_in_a_transaction_aborts_it() {
        let (got, seen) =
            session(b"MULTI\r\nINCR a\r\nFLUSHDB\r\nEXEC\r\nPING\r\n", simple, 5).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            "+OK\r\n+INCR\r\n-ERR interceptor: command denied by rule `no-flush`: no admin  commands\r\n-EXECABORT Transaction discarded because of previous errors.\r\n+PING\r\n"
        );
        assert_eq!(
            String::from_utf8_lossy(&seen),
            "MULTI\r\nINCR a\r\n*1\r\n$7\r\nDISCARD\r\nPING\r\n"
        );
    }

    #[tokio::test]
    async fn resp3_pushes_are_not_replies() {
        let (got, _) = session(b"HELLO 3\r\nGET k\r\nFLUSHALL\r\nPING\r\n", simple, 10).await;
        let got = String::from_utf8_lossy(&got);
        assert_eq!(
            got,
            "%1\r\n+proto\r\n:3\r\n>2\r\n+invalidate\r\n*1\r\n+k\r\n+v\r\n-ERR interceptor: command denied by rule `no-flush`: no admin  commands\r\n+PING\r\n"
        );
    }

    #[tokio::test]
    async fn resp2_pubsub_denials_come_after_the_confirmations() {
        let (got, _) = session(b"SUBSCRIBE a b\r\nFLUSHALL\r\nPING\r\n", simple, 14).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            "*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n-ERR interceptor: command denied by rule `no-flush`: no admin  commands\r\n+PING\r\n"
        );
    }

    #[tokio::test]
    async fn malformed_commands_close_the_connection() {
        let (got, seen) = session(b"PING\r\n*1\r\n:5\r\nPING\r\n", simple, 2).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            "+PING\r\n-ERR Protocol error: a command argument must be a bulk string (`$`), got 0x3a\r\n"
        );
        assert_eq!(seen, b"PING\r\n");
    }
}
