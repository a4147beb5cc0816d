//! PostgreSQL session handling: frames both directions of a redirected
//! connection, decides every statement before it reaches the server, and answers
//! denied ones with a native ErrorResponse (SQLSTATE 42501) while keeping the
//! session usable.
//!
//! Denials keep the server's response order intact by riding on the protocol's
//! own synchronisation points instead of answering out of band:
//! * a denied simple Query is replaced by an empty Query; the server answers
//!   EmptyQueryResponse + ReadyForQuery, and the EmptyQueryResponse is replaced
//!   by our ErrorResponse, so the client also gets the server's true
//!   transaction status;
//! * a denied Parse starts skipping the client's messages up to Sync (what the
//!   server itself does after an error); the Sync is forwarded and our
//!   ErrorResponse goes in front of the server's ReadyForQuery for it.
//!
//! A statement is decided at Parse and enforced at every Execute: each
//! execution is counted and audited (an allowed Parse runs nothing, so it has
//! no record of its own), under the Parse-time decision while the policy is
//! unchanged, or decided again after a reload or a rule's time boundary. An
//! approval obtained at Parse covers the first execution; later ones ask
//! again unless a grant covers them. The rest of a suspended portal (an
//! Execute with a row limit, fetched again) is the same execution: it is
//! decided again only if the policy changed meanwhile.
//!
//! Each forwarded Query, Sync and FunctionCall yields exactly one ReadyForQuery,
//! so a FIFO of pending injections lines the two directions up.
//!
//! SSLRequest and GSSENCRequest are answered `N`: the pod-to-node hop stays on
//! the node. A CancelRequest is forwarded to the same original destination.
//! Authentication messages pass through, unless the target injects the
//! upstream credential (`postgres.upstream`, see `pgauth`): then the daemon
//! logs in (over TLS if configured) and the relay starts after
//! AuthenticationOk.
//!
//! Result masking ([`crate::masking::wire`]) rides on the same alignment: its
//! feed closes a batch wherever a pending entry is queued, and its masker sees
//! every server message after authentication before the code here does.
//!
//! A statement a `require_approval` rule matches is held: nothing more is
//! read from the client until a human decides (`crate::approvals`) or the
//! timeout passes; approved, it is forwarded as if allowed; denied or timed
//! out, it takes the denial path above with the request id and reason. An
//! active grant from an earlier approval lets it through without asking.

use std::{
    borrow::Cow,
    collections::{HashMap, VecDeque},
    io,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use bytes::{Buf, BytesMut};
use prometheus_client::metrics::{counter::Counter, histogram::Histogram};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::{TcpStream, tcp::OwnedReadHalf},
};
use tokio_util::{either::Either, task::AbortOnDropHandle};
use tracing::{Instrument as _, info, warn};

use crate::{
    audit, bufpool,
    forward::Transferred,
    masking::{
        MaskKey,
        wire::{self, Feed, ResultMasker, Verdict},
    },
    metrics::{DecisionLabels, TargetLabels},
    pgauth::{self, Injection},
    policy::{Action, Context, Decision},
    protocol::postgres::{
        Direction, Framer, FrontendMessage, Progress, ProtocolError, StartupPacket, Target,
        build::{self, ErrorSpec, SQLSTATE_INSUFFICIENT_PRIVILEGE},
        looks_like_tls_client_hello,
    },
    session::{
        SessionCtx,
        hold::{Held, client_gone},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("malformed PostgreSQL message from the {side}: {source}")]
    Protocol {
        side: &'static str,
        source: ProtocolError,
    },
    #[error("the client started TLS directly; only SSLRequest negotiation is supported")]
    DirectTls,
    #[error("{0}")]
    Upstream(#[from] pgauth::InjectError),
}

/// What to do when the server's answer to a forwarded Query/Sync arrives.
enum Inject {
    Nothing,
    /// Replace the EmptyQueryResponse with this ErrorResponse.
    ReplaceEmptyQuery(Vec<u8>),
    /// Send this ErrorResponse before the ReadyForQuery.
    BeforeReady(Vec<u8>),
}

type Pending = Arc<Mutex<VecDeque<Inject>>>;

/// Most distinct statements a session remembers decisions for.
const DECISION_CACHE: usize = 1024;

const EMPTY_QUERY: &[u8] = &[b'Q', 0, 0, 0, 5, 0];

/// Runs the session until both directions are done.
/// `inject` is the target's credential injection / upstream TLS, if
/// configured; `mask_key` keys the `hash` masking strategy's pseudonyms.
pub async fn run(
    mut client: TcpStream,
    mut upstream: TcpStream,
    ctx: SessionCtx,
    inject: Option<Injection>,
    mask_key: MaskKey,
) -> Result<Transferred, SessionError> {
    let mut cbuf = BytesMut::with_capacity(16 * 1024);
    let mut up = 0u64;
    // Startup phase: encryption negotiation, cancel, startup message.
    let framer = Framer::new(Direction::Frontend);
    loop {
        let (packet_len, packet_kind) = match framer.next_startup(&cbuf) {
            Ok(Progress::Complete(f)) => {
                let p = f.parse().map_err(|source| SessionError::Protocol {
                    side: "client",
                    source,
                })?;
                (f.len(), p)
            }
            Ok(Progress::NeedMore(_)) => {
                if looks_like_tls_client_hello(&cbuf) {
                    return Err(SessionError::DirectTls);
                }
                if crate::session::fill(&mut client, &mut cbuf).await? == 0 {
                    return Ok(Transferred { up, down: 0 });
                }
                continue;
            }
            Err(source) => {
                return Err(SessionError::Protocol {
                    side: "client",
                    source,
                });
            }
        };
        match packet_kind {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                client.write_all(b"N").await?;
                cbuf.advance(packet_len);
            }
            StartupPacket::CancelRequest { .. } => {
                // The key belongs to the backend behind this same destination.
                Box::pin(pgauth::forward_cancel(
                    upstream,
                    &cbuf[..packet_len],
                    inject.as_ref(),
                ))
                .await?;
                return Ok(Transferred {
                    up: packet_len as u64,
                    down: 0,
                });
            }
            StartupPacket::Startup { version, params } => {
                let Some(inj) = &inject else {
                    upstream.write_all(&cbuf[..packet_len]).await?;
                    up += packet_len as u64;
                    cbuf.advance(packet_len);
                    break;
                };
                // Boxed, like the other one-off and rare steps here: the
                // session's future holds the largest state of any await in it,
                // for its whole life.
                let est = Box::pin(pgauth::establish(
                    &mut client,
                    upstream,
                    version,
                    &params,
                    inj,
                    ctx.identity.as_deref(),
                    &cbuf[packet_len..],
                ))
                .await?;
                match est.client_rest {
                    // Read past the client's password message.
                    Some(rest) => cbuf = rest,
                    None => cbuf.advance(packet_len),
                }
                up += est.up;
                let (a, b) = match est.stream {
                    Either::Left(tcp) => {
                        let (ur, uw) = tcp.into_split();
                        relay(client, ur, uw, cbuf, est.server_buf, &ctx, mask_key).await
                    }
                    Either::Right(tls) => {
                        let (ur, uw) = tokio::io::split(tls);
                        relay(client, ur, uw, cbuf, est.server_buf, &ctx, mask_key).await
                    }
                };
                return Ok(Transferred {
                    up: up + a?,
                    down: b?,
                });
            }
        }
    }

    let (ur, uw) = upstream.into_split();
    let sbuf = BytesMut::with_capacity(64 * 1024);
    let (a, b) = relay(client, ur, uw, cbuf, sbuf, &ctx, mask_key).await;
    Ok(Transferred {
        up: up + a?,
        down: b?,
    })
}

/// Both relay directions, until both are done; `cbuf`/`sbuf` hold bytes
/// already read from the client/server.
async fn relay(
    client: TcpStream,
    ur: impl AsyncRead + Unpin + WaitReadable + Send + 'static,
    uw: impl AsyncWrite + Unpin,
    cbuf: BytesMut,
    sbuf: BytesMut,
    ctx: &SessionCtx,
    mask_key: MaskKey,
) -> (Result<u64, SessionError>, Result<u64, SessionError>) {
    let pending: Pending = Arc::new(Mutex::new(VecDeque::new()));
    let plan = ctx.policy.current().policy.masks_for(&Context {
        identity: ctx.identity.as_deref(),
        target: &ctx.target,
    });
    let (feed, masker) = wire::session(plan, mask_key).unzip();
    let (cr, cw) = client.into_split();
    let c2s = client_to_server(cr, uw, cbuf, pending.clone(), feed, ctx);
    let rec = ctx
        .recorder
        .clone()
        .map(crate::recording::pg::PgRecorder::new);
    // The server's direction is a task of its own, so that a wake-up polls
    // only the direction whose socket is ready (`join!` polls both on every
    // wake-up: two idle polls per transaction). Aborted if the session is
    // dropped (daemon shutdown).
    let mut s2c = AbortOnDropHandle::new(tokio::spawn(
        server_to_client(ur, cw, pending, masker, sbuf, rec).in_current_span(),
    ));
    let up = c2s.await;
    let down = match (&mut s2c).await {
        Ok(r) => r,
        Err(e) => Err(SessionError::Io(io::Error::other(format!(
            "server-to-client relay: {e}"
        )))),
    };
    (up, down)
}

fn error_bytes(d: &Decision, ctx: &SessionCtx) -> Vec<u8> {
    let message = format!(
        "interceptor: statement denied by rule `{}`: {}",
        d.rule, d.reason
    );
    let detail = format!(
        "identity {}, target {}",
        ctx.identity.as_deref().unwrap_or("(unidentified)"),
        ctx.target
    );
    let mut out = Vec::new();
    let spec = ErrorSpec::error(SQLSTATE_INSUFFICIENT_PRIVILEGE, &message).detail(&detail);
    if build::error_response(&mut out, &spec).is_err() {
        // Only a NUL inside a field fails; ours have none, but never send nothing.
        let _ = build::error_response(
            &mut out,
            &ErrorSpec::error(SQLSTATE_INSUFFICIENT_PRIVILEGE, "denied"),
        );
    }
    out
}

struct Decider<'c> {
    ctx: &'c SessionCtx,
    cache: HashMap<String, Arc<Ruling>>,
    /// This session's series of `decision_time`, looked up once.
    timer: Histogram,
    /// The policy version the cache was filled under; a reload empties it.
    version: u64,
    /// When a rule's time window opens or closes next: the cache empties then.
    stale_at: Option<SystemTime>,
    /// The fingerprint of the statement being decided (reused buffer).
    key: String,
}

/// A statement's decision with what every repetition of it needs: the
/// literal-free form the audit log records and its `decisions` series
/// (looked up once, not per statement).
struct Ruling {
    decision: Decision,
    operation: String,
    counter: Counter,
}

/// A bound portal: the statement it runs and, once an Execute of it was
/// forwarded, the policy version and window boundary that allowed it. A later
/// Execute of the same portal (the rest of a suspended portal) under the same
/// policy continues that execution: it is neither decided nor audited again.
struct Portal {
    statement: String,
    running: Option<(u64, Option<SystemTime>)>,
}

/// A named (or the unnamed) prepared statement that was allowed at Parse.
struct Prepared {
    sql: String,
    /// The decision every Execute is counted and audited under.
    ruling: Arc<Ruling>,
    /// A one-time approval obtained at Parse (the allow it came to and the
    /// request id): it covers the first Execute; later ones ask again,
    /// unless a grant covers them.
    approval: Option<(Decision, String)>,
    /// Policy version and window boundary of the Parse-time decision: an
    /// Execute after a reload or a boundary is decided again.
    version: u64,
    stale_at: Option<SystemTime>,
}

impl Prepared {
    fn current(&self, version: u64, now: SystemTime) -> bool {
        self.version == version && self.stale_at.is_none_or(|t| now < t)
    }
}

impl<'c> Decider<'c> {
    fn new(ctx: &'c SessionCtx) -> Self {
        let timer = ctx
            .metrics
            .decision_time
            .get_or_create(&TargetLabels {
                target: ctx.target.clone(),
                protocol: "postgres",
            })
            .clone();
        Decider {
            ctx,
            cache: HashMap::new(),
            timer,
            version: 0,
            stale_at: None,
            key: String::new(),
        }
    }

    /// The decision and the literal-free form of the statement(s)
    /// ([`crate::sql::normalize`], from the classification's own parse),
    /// which is what the audit log records.
    fn decide(&mut self, sql: &str, via: &'static str) -> Arc<Ruling> {
        let started = std::time::Instant::now();
        let v = self.decide_uncounted(sql, via);
        self.timer.observe(started.elapsed().as_secs_f64());
        v
    }

    fn counter(&self, d: &Decision) -> Counter {
        self.ctx
            .metrics
            .decisions
            .get_or_create(&DecisionLabels {
                target: self.ctx.target.clone(),
                action: d.action.as_str(),
                rule: d.rule.clone(),
            })
            .clone()
    }

    fn decide_uncounted(&mut self, sql: &str, via: &'static str) -> Arc<Ruling> {
        let policy = self.ctx.policy.current();
        let now = SystemTime::now();
        if policy.version != self.version || self.stale_at.is_some_and(|t| now >= t) {
            self.cache.clear();
            self.version = policy.version;
            self.stale_at = policy.policy.next_boundary(now);
        }
        // Keyed by fingerprint: the same statement with other constants
        // (pgbench's `WHERE aid = 123`) costs no parse. Built in a buffer
        // kept across statements: a hit allocates nothing.
        let key: &str = if crate::sql::fingerprint_into(sql, &mut self.key) {
            &self.key
        } else {
            sql
        };
        if let Some(v) = self.cache.get(key) {
            return v.clone();
        }
        let (c, operation) = self.ctx.classifier.classify_text(sql);
        let pctx = Context {
            identity: self.ctx.identity.as_deref(),
            target: &self.ctx.target,
        };
        let d = policy.policy.decide_statements(&pctx, &c.statements);
        let description = format!("{via} {}", c.summary());
        // Literals never reach the log: the statement is normalised, not quoted.
        // Logged once per distinct statement; metrics and audit count every one.
        info!(
            action = d.action.as_str(),
            rule = %d.rule,
            reason = %d.reason,
            operation = %description,
            statement = %operation,
            identity = self.ctx.identity.as_deref().unwrap_or(""),
            "statement decision"
        );
        if self.cache.len() >= DECISION_CACHE {
            self.cache.clear();
        }
        let v = Arc::new(Ruling {
            counter: self.counter(&d),
            decision: d,
            operation,
        });
        self.cache.insert(key.to_string(), v.clone());
        v
    }

    /// Counts and audits a decision (every one, cached or not). A denial is
    /// durable before the client hears of it. `held` says how an approval
    /// ended, for a statement that needed one.
    /// `d` is `v`'s decision, or what an approval made of it.
    async fn record(&self, v: &Ruling, d: &Decision, held: Option<Held>) {
        if d.action == v.decision.action && d.rule == v.decision.rule {
            v.counter.inc();
        } else {
            self.counter(d).inc();
        }
        let Some((log, base)) = &self.ctx.audit else {
            return;
        };
        let decision = match d.action {
            // Mask rules never decide; a decision is allow or deny.
            Action::Allow | Action::Mask => audit::Decision::Allow,
            Action::Deny => audit::Decision::Deny,
            Action::RequireApproval => audit::Decision::RequireApproval,
        };
        let mut entry = audit::encode::AccessEntry {
            operation: &v.operation,
            decision: &decision,
            rule_id: Some(&d.rule),
            ..audit::encode::AccessEntry::now()
        };
        if let Some(h) = &held {
            h.mark(&mut entry);
        }
        // Allowed statements do not wait for the disk; the record follows.
        let durable = d.action == Action::Deny;
        crate::session::record_entry(&self.ctx.metrics, log, base, &entry, durable).await;
    }
}

async fn client_to_server(
    mut cr: OwnedReadHalf,
    mut uw: impl AsyncWrite + Unpin,
    mut buf: BytesMut,
    pending: Pending,
    mut feed: Option<Feed>,
    ctx: &SessionCtx,
) -> Result<u64, SessionError> {
    let framer = Framer::new(Direction::Frontend);
    let mut decider = Decider::new(ctx);
    // Statements allowed at Parse, and which statement each portal runs:
    // Execute re-decides when the policy changed since the Parse.
    let mut statements: HashMap<String, Prepared> = HashMap::new();
    let mut portals: HashMap<String, Portal> = HashMap::new();
    let mut out: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut held_input = BytesMut::new();
    // Set while skipping to Sync after a denied extended-protocol message.
    let mut skipping: Option<Vec<u8>> = None;
    let mut total = 0u64;
    loop {
        loop {
            let frame = match framer.next(&buf) {
                Ok(Progress::Complete(f)) => f,
                Ok(Progress::NeedMore(_)) => break,
                Err(source) => {
                    return Err(SessionError::Protocol {
                        side: "client",
                        source,
                    });
                }
            };
            let len = frame.len();
            if let Some(f) = feed.as_mut() {
                f.on_frontend(&frame, &mut out);
            }
            match frame.tag {
                b'Q' | b'P' => {
                    let msg = FrontendMessage::parse(&frame).map_err(|source| {
                        SessionError::Protocol {
                            side: "client",
                            source,
                        }
                    })?;
                    let (sql, via) = match msg {
                        FrontendMessage::Query { sql } => (sql, "query"),
                        FrontendMessage::Parse(p) => (p.query, "parse"),
                        _ => ("", "other"),
                    };
                    if skipping.is_some() {
                        // Already failing this extended batch: dropped like the server would.
                    } else {
                        let v = decider.decide(sql, via);
                        let (d, held) = if v.decision.action == Action::RequireApproval {
                            // What came before the held statement is not held with it.
                            if !out.is_empty() {
                                uw.write_all(&out).await?;
                                total += out.len() as u64;
                                out.clear();
                            }
                            let gone = client_gone(&mut cr, &mut held_input);
                            let (d, held) = Box::pin(decider.ctx.holder().hold(
                                sql,
                                &v.decision,
                                &v.operation,
                                gone,
                            ))
                            .await;
                            (Cow::Owned(d), held)
                        } else {
                            (Cow::Borrowed(&v.decision), None)
                        };
                        match (msg, d.action) {
                            // An allowed Parse runs nothing: each Execute of
                            // the statement is the audited event.
                            (FrontendMessage::Parse(p), Action::Allow | Action::Mask) => {
                                let approval = held
                                    .filter(|h| h.decision == audit::Decision::Approved)
                                    .map(|h| (d.clone().into_owned(), h.approval_ref));
                                statements.insert(
                                    p.name.to_string(),
                                    Prepared {
                                        sql: sql.to_string(),
                                        ruling: v.clone(),
                                        approval,
                                        version: decider.version,
                                        stale_at: decider.stale_at,
                                    },
                                );
                            }
                            _ => decider.record(&v, &d, held).await,
                        }
                        match (d.action, frame.tag) {
                            (Action::Allow | Action::Mask, b'Q') => {
                                push(&pending, Inject::Nothing);
                                end_batch(&mut feed);
                                out.extend_from_slice(frame.raw);
                            }
                            (Action::Allow | Action::Mask, _) => out.extend_from_slice(frame.raw),
                            // `hold` turned every RequireApproval into Allow or Deny.
                            (Action::Deny | Action::RequireApproval, b'Q') => {
                                push(&pending, Inject::ReplaceEmptyQuery(error_bytes(&d, ctx)));
                                end_batch(&mut feed);
                                out.extend_from_slice(EMPTY_QUERY);
                            }
                            (Action::Deny | Action::RequireApproval, _) => {
                                skipping = Some(error_bytes(&d, ctx))
                            }
                        }
                    }
                }
                b'S' => {
                    push(
                        &pending,
                        skipping.take().map_or(Inject::Nothing, Inject::BeforeReady),
                    );
                    end_batch(&mut feed);
                    out.extend_from_slice(frame.raw);
                }
                b'F' => {
                    if skipping.is_none() {
                        push(&pending, Inject::Nothing);
                        end_batch(&mut feed);
                        out.extend_from_slice(frame.raw);
                    }
                }
                // Bind/Describe/Execute/Close/Flush of a failed batch are dropped.
                b'B' | b'D' | b'E' | b'C' | b'H' if skipping.is_some() => {}
                b'B' | b'E' | b'C' => {
                    let msg = FrontendMessage::parse(&frame).map_err(|source| {
                        SessionError::Protocol {
                            side: "client",
                            source,
                        }
                    })?;
                    let mut forward = true;
                    match msg {
                        FrontendMessage::Bind(b) => match portals.get_mut(b.portal) {
                            // No allocation when a portal keeps its statement
                            // (the unnamed portal of every pgbench execution).
                            Some(p) if p.statement == b.statement => p.running = None,
                            _ => {
                                portals.insert(
                                    b.portal.to_string(),
                                    Portal {
                                        statement: b.statement.to_string(),
                                        running: None,
                                    },
                                );
                            }
                        },
                        FrontendMessage::Execute(e) => {
                            let portal = portals.get_mut(e.portal);
                            let now = SystemTime::now();
                            let version = ctx.policy.version();
                            let resumed = portal.as_ref().and_then(|p| p.running).is_some_and(
                                |(v, stale_at)| v == version && stale_at.is_none_or(|t| now < t),
                            );
                            let stmt = match &portal {
                                Some(p) => statements.get_mut(&p.statement),
                                None => None,
                            };
                            if let Some(p) = stmt {
                                let current = p.current(version, now);
                                if resumed {
                                    // The rest of a suspended portal (a
                                    // cursor-style fetch): its first Execute
                                    // was decided and audited, under this policy.
                                } else if current && let Some((d, approval_ref)) = p.approval.take()
                                {
                                    let held = Held {
                                        decision: audit::Decision::Approved,
                                        approval_ref,
                                        outcome: None,
                                    };
                                    decider.record(&p.ruling, &d, Some(held)).await;
                                } else if current
                                    && matches!(
                                        p.ruling.decision.action,
                                        Action::Allow | Action::Mask
                                    )
                                {
                                    decider.record(&p.ruling, &p.ruling.decision, None).await;
                                } else {
                                    let v = decider.decide(&p.sql, "execute");
                                    let (d, held) = if v.decision.action == Action::RequireApproval
                                    {
                                        if !out.is_empty() {
                                            uw.write_all(&out).await?;
                                            total += out.len() as u64;
                                            out.clear();
                                        }
                                        let gone = client_gone(&mut cr, &mut held_input);
                                        let (d, held) = Box::pin(decider.ctx.holder().hold(
                                            &p.sql,
                                            &v.decision,
                                            &v.operation,
                                            gone,
                                        ))
                                        .await;
                                        (Cow::Owned(d), held)
                                    } else {
                                        (Cow::Borrowed(&v.decision), None)
                                    };
                                    decider.record(&v, &d, held).await;
                                    p.ruling = v.clone();
                                    p.version = decider.version;
                                    p.stale_at = decider.stale_at;
                                    if !matches!(d.action, Action::Allow | Action::Mask) {
                                        // Fails the batch like a server error would.
                                        skipping = Some(error_bytes(&d, ctx));
                                        forward = false;
                                    }
                                }
                                if let Some(portal) = portal.filter(|_| forward) {
                                    portal.running = Some((p.version, p.stale_at));
                                }
                            }
                        }
                        FrontendMessage::Close(c) => match c.target {
                            Target::Statement => {
                                statements.remove(c.name);
                            }
                            Target::Portal => {
                                portals.remove(c.name);
                            }
                        },
                        _ => {}
                    }
                    if forward {
                        out.extend_from_slice(frame.raw);
                    }
                }
                _ => out.extend_from_slice(frame.raw),
            }
            buf.advance(len);
            if !held_input.is_empty() {
                buf.extend_from_slice(&held_input);
                held_input.clear();
            }
        }
        if !out.is_empty() {
            uw.write_all(&out).await?;
            total += out.len() as u64;
            out.clear();
        }
        if buf.is_empty()
            && let Some(ready) = cr.readable_unbuffered()
        {
            wait_unbuffered(&mut buf, &mut out, ready).await?;
        }
        if crate::session::fill(&mut cr, &mut buf).await? == 0 {
            if !buf.is_empty() {
                warn!(
                    bytes = buf.len(),
                    "client closed in the middle of a message"
                );
            }
            let _ = uw.shutdown().await;
            return Ok(total);
        }
    }
}

/// Room taken for each read (the framer needs a whole message; larger ones
/// grow the buffer).
const READ_BUFFER: usize = 16 * 1024;

/// An upstream read half the relay can wait on while holding no buffer.
trait WaitReadable {
    /// Waits until a read would not block; `None` for a stream that buffers
    /// on its own (TLS: decrypted bytes may already wait inside it), whose
    /// relay keeps its buffers.
    fn readable_unbuffered(&self) -> Option<impl Future<Output = io::Result<()>> + Send + '_>;
}

impl WaitReadable for OwnedReadHalf {
    fn readable_unbuffered(&self) -> Option<impl Future<Output = io::Result<()>> + Send + '_> {
        // Only this half reads from the socket.
        Some(crate::forward::read_ready(self.as_ref()))
    }
}

impl<T> WaitReadable for tokio::io::ReadHalf<T> {
    fn readable_unbuffered(&self) -> Option<impl Future<Output = io::Result<()>> + Send + '_> {
        None::<std::future::Ready<io::Result<()>>>
    }
}

/// With no partial message kept: gives the direction's buffers back while
/// `ready` waits for its socket, then takes fresh ones.
async fn wait_unbuffered(
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    ready: impl Future<Output = io::Result<()>>,
) -> io::Result<()> {
    bufpool::give_bytes(std::mem::take(buf));
    bufpool::give_vec(std::mem::take(out));
    ready.await?;
    *buf = bufpool::bytes(READ_BUFFER);
    *out = bufpool::vec(0);
    Ok(())
}

fn push(p: &Pending, i: Inject) {
    p.lock().unwrap_or_else(|e| e.into_inner()).push_back(i);
}

fn end_batch(feed: &mut Option<Feed>) {
    if let Some(f) = feed.as_mut() {
        f.end_batch();
    }
}

async fn server_to_client(
    mut ur: impl AsyncRead + Unpin + WaitReadable,
    mut cw: impl AsyncWrite + Unpin,
    pending: Pending,
    mut masker: Option<ResultMasker>,
    mut buf: BytesMut,
    mut recorder: Option<crate::recording::pg::PgRecorder>,
) -> Result<u64, SessionError> {
    let framer = Framer::new(Direction::Backend);
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    // The ReadyForQuery that ends authentication answers no client message.
    let mut startup_ready_seen = false;
    let mut total = 0u64;
    loop {
        loop {
            let frame = match framer.next(&buf) {
                Ok(Progress::Complete(f)) => f,
                Ok(Progress::NeedMore(_)) => break,
                Err(source) => {
                    return Err(SessionError::Protocol {
                        side: "server",
                        source,
                    });
                }
            };
            let len = frame.len();
            if startup_ready_seen && let Some(m) = masker.as_mut() {
                let v =
                    m.on_backend(&frame, &mut out)
                        .map_err(|source| SessionError::Protocol {
                            side: "server",
                            source,
                        })?;
                if v == Verdict::Consumed {
                    buf.advance(len);
                    continue;
                }
            }
            match frame.tag {
                b'I' => {
                    let mut q = pending.lock().unwrap_or_else(|e| e.into_inner());
                    match q.front_mut() {
                        Some(Inject::ReplaceEmptyQuery(err)) => out.append(err),
                        _ => out.extend_from_slice(frame.raw),
                    }
                }
                b'Z' => {
                    if startup_ready_seen {
                        let next = pending
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .pop_front();
                        if let Some(Inject::BeforeReady(err)) = next {
                            out.extend_from_slice(&err);
                        }
                    }
                    startup_ready_seen = true;
                    out.extend_from_slice(frame.raw);
                }
                _ => out.extend_from_slice(frame.raw),
            }
            buf.advance(len);
        }
        if !out.is_empty() {
            // What the client gets, masked and with denials in place, is what is recorded.
            if let Some(r) = recorder.as_mut() {
                r.observe(&out);
            }
            cw.write_all(&out).await?;
            total += out.len() as u64;
            out.clear();
        }
        if buf.is_empty()
            && let Some(ready) = ur.readable_unbuffered()
        {
            wait_unbuffered(&mut buf, &mut out, ready).await?;
        }
        if crate::session::fill(&mut ur, &mut buf).await? == 0 {
            let _ = cw.shutdown().await;
            return Ok(total);
        }
    }
}
