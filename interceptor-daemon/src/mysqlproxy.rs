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
//! * Authentication passes through, or, with `mysql.upstream` on the target,
//!   the daemon logs in with the injected credential ([`crate::mysqlauth`]);
//!   the command phase starts at the server's OK. `COM_CHANGE_USER` (re-authentication as another user) and commands
//!   outside a known set (replication, debug...) are refused.
//! * With `action: mask` rules for the session, result rows are rewritten
//!   ([`crate::masking::mysql`]): the client half queues what each forwarded
//!   command expects, the server half follows the answers.
//! * With `audit.record_responses`, each statement's answer as written to
//!   the client (after masking, the proxy's denials included) is recorded
//!   the same way ([`crate::recording::mysql`]).
//! * A prepared statement is decided at prepare time, and each
//!   `COM_STMT_EXECUTE` of it is one audited decision: the prepare-time one
//!   while the policy is unchanged, a new one after a reload
//!   (`statements`); an allowed prepare runs nothing and leaves no record.
//!   `COM_STMT_FETCH` (more rows of an execute's cursor) continues that
//!   execution. `COM_INIT_DB` (`USE db`) passes; tables are matched as
//!   written in the statement.
//! * A statement a `require_approval` rule matches (query, prepare, or an
//!   execute decided again) is held until a human decides
//!   ([`crate::session::hold`]): the client waits for its answer, as for a
//!   slow statement. An approval at prepare covers the first execute.
//! * The classic protocol is request/response: an injected ERR is written at
//!   the next packet boundary of the server stream, which for a client that
//!   waits for each answer (every known client) is exactly its place.

mod readings;
mod statements;

use std::{io, sync::Arc, time::SystemTime};

use bytes::{Buf, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{mpsc, watch},
};
use tracing::{debug, warn};

use crate::{
    audit,
    forward::Transferred,
    masking::{self, MaskKey},
    policy::{Action, Decision},
    protocol::mysql::{
        Answer, AnswerTracker, CLIENT_DEPRECATE_EOF, COM_CHANGE_USER, COM_FIELD_LIST, COM_INIT_DB,
        COM_PING, COM_QUERY, COM_QUIT, COM_RESET_CONNECTION, COM_SET_OPTION, COM_STATISTICS,
        COM_STMT_CLOSE, COM_STMT_EXECUTE, COM_STMT_FETCH, COM_STMT_PREPARE, COM_STMT_RESET,
        COM_STMT_SEND_LONG_DATA, ClientHello, ER_TABLEACCESS_DENIED, MysqlError, STRIPPED,
        err_packet, frame, rewrite_client_response, rewrite_server_handshake, statement_id,
    },
    session::{
        SessionCtx,
        hold::{Held, client_gone},
    },
};
use readings::Readings;
use statements::{MAX_STATEMENTS, Statement, Statements};

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
    #[error(transparent)]
    Upstream(#[from] crate::mysqlauth::InjectError),
    #[error(transparent)]
    Mask(#[from] crate::masking::mysql::MaskError),
}

/// A packet with payload `payload` (shorter than 16 MiB: masked rows are).
fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let n = payload.len();
    let mut v = Vec::with_capacity(4 + n);
    v.extend_from_slice(&[n as u8, (n >> 8) as u8, (n >> 16) as u8, seq]);
    v.extend_from_slice(payload);
    v
}

/// What the server half must know of each forwarded command: its answer's
/// shape, for the statement registry, masking and recording.
struct Expects {
    statements: Statements,
    mask: Option<masking::mysql::Pending>,
    record: Option<crate::recording::mysql::Asked>,
    /// The session's query for views and functions goes ahead of the
    /// client's first command (the server half reads its answer:
    /// [`masking::mysql::objects`]).
    objects: bool,
}

/// Queues what the server's answer to a forwarded command will be;
/// `prepared`: the statement a prepare files under its id.
fn expect(e: &Expects, cmd: u8, payload: &[u8], prepared: Option<Statement>) {
    use masking::mysql::{Expect, Masker};
    e.statements.forwarded(cmd, payload, prepared);
    if let Some(r) = &e.record {
        r.forwarded(cmd, payload);
    }
    let Some(pending) = e.mask.as_ref() else {
        return;
    };
    let sql = || String::from_utf8_lossy(payload.get(1..).unwrap_or_default());
    let Some(answer) = Answer::to(cmd, payload) else {
        return;
    };
    let e = match answer {
        Answer::Query => Expect::Query(Masker::facts(&sql())),
        Answer::Prepare => Expect::Prepare(Masker::facts(&sql())),
        Answer::Execute(id) => Expect::Execute(id),
        Answer::Fetch(id) => Expect::Fetch(id),
        Answer::FieldList => Expect::FieldList,
        Answer::Single => Expect::Single,
    };
    pending
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push_back(e);
}

/// Reads until `buf` starts with a whole packet; returns its length.
async fn read_packet(r: &mut TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    loop {
        if let Some(p) = frame(buf) {
            return Ok(p.wire_len());
        }
        if crate::session::fill(r, buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// The masking halves for a session, if mask rules apply to it.
fn masking(
    ctx: &SessionCtx,
    key: MaskKey,
    caps: u32,
) -> (
    Option<masking::mysql::Pending>,
    Option<masking::mysql::Masker>,
) {
    let plan = ctx.policy.current().policy.masks_for(&ctx.policy_ctx());
    if plan.is_empty() {
        return (None, None);
    }
    let pending = masking::mysql::Pending::default();
    let deprecate_eof = caps & CLIENT_DEPRECATE_EOF != 0;
    let m = masking::mysql::Masker::new(plan, key, pending.clone(), deprecate_eof);
    (Some(pending), Some(m))
}

/// Runs the session until both directions are done; `inject`: log in with
/// the target's credential instead of passing the client's through;
/// `mask_key` keys the `hash` masking strategy.
pub async fn run(
    mut client: TcpStream,
    upstream: TcpStream,
    ctx: SessionCtx,
    inject: Option<crate::mysqlauth::Injection>,
    mask_key: MaskKey,
) -> Result<Transferred, SessionError> {
    if let Some(inj) = inject {
        let est = crate::mysqlauth::establish(&mut client, upstream, &inj, ctx.identity.as_deref())
            .await?;
        let (pending, masker) = masking(&ctx, mask_key, est.caps);
        let (asked, recorder) =
            crate::recording::mysql::for_session(ctx.recorder.clone(), est.caps);
        let statements = Statements::default();
        let tracker = AnswerTracker::new(est.caps & CLIENT_DEPRECATE_EOF != 0);
        let objects = masker.as_ref().and_then(|m| m.objects_reader());
        let expects = Expects {
            statements: statements.clone(),
            mask: pending,
            record: asked,
            objects: objects.is_some(),
        };
        let (authed_tx, authed) = watch::channel(true);
        let (tx, rx) = mpsc::channel(64);
        let (cr, cw) = client.into_split();
        let (ur, uw) = tokio::io::split(est.stream);
        let (a, b) = tokio::join!(
            client_to_server(cr, uw, est.client_buf, tx, authed, &ctx, expects),
            server_to_client(
                ur,
                cw,
                est.server_buf,
                rx,
                authed_tx,
                (statements, tracker),
                (masker, objects, recorder)
            )
        );
        return Ok(Transferred {
            up: est.up + a?,
            down: est.down + b?,
        });
    }
    let mut upstream = upstream;
    let mut sbuf = BytesMut::with_capacity(16 * 1024);
    let mut cbuf = BytesMut::with_capacity(16 * 1024);
    // The server speaks first.
    let len = read_packet(&mut upstream, &mut sbuf).await?;
    let refused = sbuf[4] == 0xff;
    let mut caps = 0;
    if !refused {
        caps = rewrite_server_handshake(&mut sbuf[4..len], STRIPPED).map_err(|source| {
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
            Ok(ClientHello::Response { caps: client }) => {
                caps &= client;
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
    let (pending, masker) = masking(&ctx, mask_key, caps);
    let (asked, recorder) = crate::recording::mysql::for_session(ctx.recorder.clone(), caps);
    let statements = Statements::default();
    let tracker = AnswerTracker::new(caps & CLIENT_DEPRECATE_EOF != 0);
    let objects = masker.as_ref().and_then(|m| m.objects_reader());
    let expects = Expects {
        statements: statements.clone(),
        mask: pending,
        record: asked,
        objects: objects.is_some(),
    };
    let (authed_tx, authed) = watch::channel(false);
    let (tx, rx) = mpsc::channel(64);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let (a, b) = tokio::join!(
        client_to_server(cr, uw, cbuf, tx, authed, &ctx, expects),
        server_to_client(
            ur,
            cw,
            sbuf,
            rx,
            authed_tx,
            (statements, tracker),
            (masker, objects, recorder)
        )
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

/// What the client half does with one command.
enum Step {
    /// Forward it unrecorded; a prepare's statement, to file under its id.
    Forward(Option<Statement>),
    /// Record the decision (and the hold it came from), then forward or refuse.
    Decided(Decision, String, Option<Held>),
    /// A `require_approval` decision: the command waits for a human first.
    Hold(Waiting),
}

/// A command held for a human.
struct Waiting {
    sql: Arc<str>,
    decision: Decision,
    description: String,
    /// A prepare's statement: approved, it is filed with the approval, which
    /// covers its first execute (later ones ask again, unless a grant covers
    /// them), as for a PostgreSQL Parse.
    prepare: Option<Statement>,
}

impl Waiting {
    /// What the hold came to.
    fn resolved(self, d: Decision, held: Option<Held>) -> Step {
        match (self.prepare, held) {
            (Some(mut s), Some(h))
                if matches!(d.action, Action::Allow | Action::Mask)
                    && h.decision == audit::Decision::Approved =>
            {
                s.approval = Some((d, h.approval_ref));
                Step::Forward(Some(s))
            }
            (_, held) => Step::Decided(d, self.description, held),
        }
    }
}

fn not_utf8(via: &str) -> Step {
    Step::Decided(
        protocol_denial("statement text is not valid UTF-8"),
        format!("{via} (not UTF-8)"),
        None,
    )
}

/// A `COM_QUERY`.
fn query(payload: &[u8], ctx: &SessionCtx, readings: &mut Readings) -> Step {
    let Ok(sql) = std::str::from_utf8(payload) else {
        return not_utf8("query");
    };
    let r = decide_text(sql, ctx, readings);
    let description = format!("query {}", r.description);
    if r.decision.action == Action::RequireApproval {
        return Step::Hold(Waiting {
            sql: sql.into(),
            decision: r.decision,
            description,
            prepare: None,
        });
    }
    Step::Decided(r.decision, description, None)
}

/// A `COM_STMT_PREPARE`: an allowed one runs nothing and is not recorded
/// (each execute is the audited event); its statement is filed.
fn prepare(payload: &[u8], ctx: &SessionCtx, readings: &mut Readings) -> Step {
    let Ok(sql) = std::str::from_utf8(payload) else {
        return not_utf8("prepare");
    };
    let s = decide_text(sql, ctx, readings).into_statement(sql.into());
    let description = format!("prepare {}", s.description);
    match s.decision.action {
        Action::Allow | Action::Mask => Step::Forward(Some(s)),
        Action::RequireApproval => Step::Hold(Waiting {
            sql: s.sql.clone(),
            decision: s.decision.clone(),
            description,
            prepare: Some(s),
        }),
        Action::Deny => Step::Decided(s.decision, description, None),
    }
}

/// A `COM_STMT_EXECUTE`. The prepare-time decision holds while the policy
/// is the one it was made under; after a reload or a window boundary the
/// text is decided again.
fn execute(
    payload: &[u8],
    statements: &Statements,
    ctx: &SessionCtx,
    readings: &mut Readings,
) -> Step {
    let id = statement_id(payload);
    let Some(mut s) = statements.get(id) else {
        return Step::Decided(
            protocol_denial(&format!(
                "statement {id} was not prepared through the interceptor in this session"
            )),
            "execute (unknown statement)".to_string(),
            None,
        );
    };
    if s.current(ctx.policy.version(), SystemTime::now()) {
        if let Some((d, approval_ref)) = s.approval.take() {
            let description = format!("execute {}", s.description);
            statements.update(id, s);
            let held = Held {
                decision: audit::Decision::Approved,
                approval_ref,
                outcome: None,
            };
            return Step::Decided(d, description, Some(held));
        }
        if matches!(s.decision.action, Action::Allow | Action::Mask) {
            return Step::Decided(s.decision, format!("execute {}", s.description), None);
        }
    }
    let fresh = decide_text(&s.sql, ctx, readings).into_statement(s.sql);
    let description = format!("execute {}", fresh.description);
    let (sql, decision) = (fresh.sql.clone(), fresh.decision.clone());
    statements.update(id, fresh);
    if decision.action == Action::RequireApproval {
        return Step::Hold(Waiting {
            description,
            sql,
            decision,
            prepare: None,
        });
    }
    Step::Decided(decision, description, None)
}

/// A text's decision, its description (kinds, tables and literal-free
/// text: `write on [orders]: INSERT INTO orders VALUES (?, ?)`), and the
/// policy and time it was made under.
struct Ruled {
    decision: Decision,
    description: String,
    policy: Arc<crate::policy::store::Versioned>,
    at: SystemTime,
}

impl Ruled {
    /// The statement to file for `sql` under this decision. The next window
    /// boundary is looked up here, not for every query.
    fn into_statement(self, sql: Arc<str>) -> Statement {
        Statement {
            sql,
            decision: self.decision,
            description: self.description.into(),
            version: self.policy.version,
            stale_at: self.policy.policy.next_boundary(self.at),
            approval: None,
        }
    }
}

/// Decides a text under the current policy (its reading may be remembered;
/// the decision never is).
fn decide_text(sql: &str, ctx: &SessionCtx, readings: &mut Readings) -> Ruled {
    let r = readings.read(sql, &ctx.classifier);
    let policy = ctx.policy.current();
    let at = SystemTime::now();
    let d = policy
        .policy
        .decide_statements_at(&ctx.policy_ctx(), &r.statements, at);
    Ruled {
        decision: d,
        description: r.description.clone(),
        policy,
        at,
    }
}

async fn client_to_server(
    mut cr: OwnedReadHalf,
    mut uw: impl AsyncWrite + Unpin,
    mut buf: BytesMut,
    tx: mpsc::Sender<Vec<u8>>,
    mut authed: watch::Receiver<bool>,
    ctx: &SessionCtx,
    expects: Expects,
) -> Result<u64, SessionError> {
    let mut out: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut total = 0u64;
    // Inside a payload longer than one packet: forwarding it, or dropping it.
    let mut continuing = false;
    let mut dropping = false;
    let mut held_input = BytesMut::new();
    let mut readings = Readings::default();
    let mut objects_due = expects.objects;
    loop {
        while let Some(p) = frame(&buf) {
            let len = p.wire_len();
            // A command (sequence 0) sent before authentication ended: the
            // server would run it right after its OK, so it waits for the OK
            // and is decided like any other.
            if !continuing && p.seq == 0 && !*authed.borrow() {
                if !out.is_empty() {
                    uw.write_all(&out).await?;
                    uw.flush().await?;
                    total += out.len() as u64;
                    out.clear();
                }
                if authed.wait_for(|a| *a).await.is_err() {
                    // The server half ended without an OK.
                    let _ = uw.shutdown().await;
                    return Ok(total);
                }
                continue;
            }
            // Authentication data, LOAD DATA LOCAL contents and continuation
            // packets are not commands.
            if continuing || p.seq != 0 {
                if !dropping {
                    out.extend_from_slice(&buf[..len]);
                }
                continuing = p.continued();
                dropping &= continuing;
                buf.advance(len);
                continue;
            }
            let cmd = p.payload.first().copied().unwrap_or(0);
            if objects_due && cmd != COM_QUIT {
                objects_due = false;
                out.extend_from_slice(&packet(0, &masking::mysql::objects::Reader::command()));
            }
            let step = match cmd {
                COM_QUERY | COM_STMT_PREPARE if p.continued() => Step::Decided(
                    protocol_denial("statement larger than 16 MiB cannot be inspected"),
                    "query (oversized)".to_string(),
                    None,
                ),
                COM_QUERY => query(&p.payload[1..], ctx, &mut readings),
                COM_STMT_PREPARE if expects.statements.open() >= MAX_STATEMENTS => Step::Decided(
                    protocol_denial(&format!(
                        "more than {MAX_STATEMENTS} prepared statements open in one session; close some"
                    )),
                    "prepare (too many open)".to_string(),
                    None,
                ),
                COM_STMT_PREPARE => prepare(&p.payload[1..], ctx, &mut readings),
                COM_STMT_EXECUTE => execute(p.payload, &expects.statements, ctx, &mut readings),
                COM_SET_OPTION if p.payload.get(1..3) == Some(&[0, 0]) => Step::Decided(
                    protocol_denial("multi-statements are not available through the interceptor"),
                    "set option multi-statements on".to_string(),
                    None,
                ),
                COM_CHANGE_USER => Step::Decided(
                    protocol_denial(
                        "changing the user on a connection is not available through the interceptor",
                    ),
                    "change user".to_string(),
                    None,
                ),
                COM_QUIT
                | COM_INIT_DB
                | COM_FIELD_LIST
                | COM_STATISTICS
                | COM_PING
                | COM_STMT_SEND_LONG_DATA
                | COM_STMT_CLOSE
                | COM_STMT_RESET
                | COM_STMT_FETCH
                | COM_RESET_CONNECTION
                | COM_SET_OPTION => Step::Forward(None),
                other => Step::Decided(
                    protocol_denial(&format!(
                        "command {other:#04x} is not available through the interceptor"
                    )),
                    format!("command {other:#04x}"),
                    None,
                ),
            };
            let step = match step {
                Step::Hold(h) => {
                    // What came before the held command is not held with it.
                    if !out.is_empty() {
                        uw.write_all(&out).await?;
                        uw.flush().await?;
                        total += out.len() as u64;
                        out.clear();
                    }
                    let gone = client_gone(&mut cr, &mut held_input);
                    let (d, held) =
                        Box::pin(ctx.holder().hold(&h.sql, &h.decision, &h.description, gone))
                            .await;
                    h.resolved(d, held)
                }
                other => other,
            };
            match step {
                Step::Decided(d, description, held) => {
                    ctx.record_held(&d, description, held.as_ref()).await;
                    if matches!(d.action, Action::Allow | Action::Mask) {
                        expect(&expects, cmd, p.payload, None);
                        out.extend_from_slice(&buf[..len]);
                    } else {
                        dropping = p.continued();
                        if tx.send(error_for(&d, ctx)).await.is_err() {
                            let _ = uw.shutdown().await;
                            return Ok(total);
                        }
                    }
                }
                Step::Forward(prepared) => {
                    match cmd {
                        COM_STMT_CLOSE => expects.statements.close(statement_id(p.payload)),
                        COM_RESET_CONNECTION => expects.statements.reset(),
                        _ => {}
                    }
                    expect(&expects, cmd, p.payload, prepared);
                    out.extend_from_slice(&buf[..len]);
                }
                // `resolved` never holds again.
                Step::Hold(_) => {}
            }
            continuing = p.continued();
            buf.advance(len);
            if !held_input.is_empty() {
                // What the client sent while a command was held.
                buf.extend_from_slice(&held_input);
                held_input.clear();
            }
        }
        if !out.is_empty() {
            uw.write_all(&out).await?;
            // TLS upstream: records leave rustls's buffer on flush.
            uw.flush().await?;
            total += out.len() as u64;
            out.clear();
        }
        if crate::session::fill(&mut cr, &mut buf).await? == 0 {
            let _ = uw.shutdown().await;
            return Ok(total);
        }
    }
}

async fn server_to_client(
    mut ur: impl AsyncRead + Unpin,
    mut cw: OwnedWriteHalf,
    mut buf: BytesMut,
    mut rx: mpsc::Receiver<Vec<u8>>,
    authed: watch::Sender<bool>,
    (statements, mut tracker): (Statements, AnswerTracker),
    (mut masker, mut objects, mut recorder): (
        Option<masking::mysql::Masker>,
        Option<masking::mysql::objects::Reader>,
        Option<crate::recording::mysql::MysqlRecorder>,
    ),
) -> Result<u64, SessionError> {
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut total = 0u64;
    let mut rx_open = true;
    loop {
        while let Some(p) = frame(&buf) {
            let len = p.wire_len();
            // The OK that ends authentication: commands may follow.
            let command_phase = *authed.borrow();
            // The first answer of the command phase is the objects query's,
            // sent ahead of the client's first command: read, not forwarded.
            if command_phase && let Some(r) = objects.as_mut() {
                if r.on_packet(p.payload)
                    && let (Some(r), Some(m)) = (objects.take(), masker.as_mut())
                {
                    match m.learn_objects(r) {
                        Ok(v) if v.unread > 0 => warn!(
                            masked = v.len(),
                            unread = v.unread,
                            "masking: views and functions whose definition the session's user cannot read (SHOW VIEW, SHOW CREATE ROUTINE) count as masked"
                        ),
                        Ok(v) => debug!(
                            masked = v.len(),
                            "masking: views and functions over masked columns"
                        ),
                        Err(e) => warn!(
                            error = %e,
                            "masking: views and functions could not be read; masking by column names"
                        ),
                    }
                }
                buf.advance(len);
                continue;
            }
            if !command_phase {
                if p.payload.first() == Some(&0x00) {
                    authed.send_replace(true);
                }
            } else {
                statements.on_server_packet(&mut tracker, p.payload);
            }
            if command_phase && let Some(m) = masker.as_mut() {
                match m.on_packet(p.payload) {
                    Ok(None) => {}
                    Ok(Some(new)) => {
                        if let Some(r) = recorder.as_mut() {
                            r.on_packet(&new);
                        }
                        out.extend_from_slice(&packet(p.seq, &new));
                        buf.advance(len);
                        continue;
                    }
                    Err(e) => {
                        // Fail closed: nothing more of this session reaches
                        // the client.
                        warn!(error = %e, "closing the connection: result cannot be masked");
                        out.extend_from_slice(&err_packet(
                            p.seq,
                            ER_TABLEACCESS_DENIED,
                            "42000",
                            &format!("interceptor: {e}"),
                        ));
                        cw.write_all(&out).await?;
                        let _ = cw.shutdown().await;
                        return Err(SessionError::Mask(e));
                    }
                }
            }
            // What the client receives is what is recorded.
            if command_phase && let Some(r) = recorder.as_mut() {
                r.on_packet(p.payload);
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
                    if let Some(r) = &recorder {
                        r.on_injected(err.get(4..).unwrap_or_default());
                    }
                    cw.write_all(&err).await?;
                    total += err.len() as u64;
                }
                None => rx_open = false,
            },
            n = crate::session::fill(&mut ur, &mut buf) => {
                // A server closing after COM_QUIT may reset the connection
                // (our TLS close_notify unread) or skip close_notify: the end.
                let n = match n {
                    Err(e) if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof
                    ) => 0,
                    other => other?,
                };
                if n == 0 {
                    while let Ok(err) = rx.try_recv() {
                        if let Some(r) = &recorder {
                            r.on_injected(err.get(4..).unwrap_or_default());
                        }
                        cw.write_all(&err).await?;
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
    //! The session over real sockets against a scripted server.
    use std::{sync::Arc, time::Duration};

    use tokio::net::TcpListener;

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::{
        metrics::Metrics,
        policy::Policy,
        protocol::mysql::{CLIENT_PROTOCOL_41, CLIENT_SSL},
    };

    fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        let n = payload.len();
        let mut v = vec![n as u8, (n >> 8) as u8, (n >> 16) as u8, seq];
        v.extend_from_slice(payload);
        v
    }

    /// The client's handshake response (protocol 4.1, nothing else).
    fn handshake_response() -> Vec<u8> {
        let mut resp = CLIENT_PROTOCOL_41.to_le_bytes().to_vec();
        resp.resize(40, 0);
        packet(1, &resp)
    }

    fn greeting() -> Vec<u8> {
        let mut p = vec![10];
        p.extend_from_slice(b"11.4.2-MariaDB\0\x01\0\0\0abcdefgh\0");
        let caps = CLIENT_PROTOCOL_41 | CLIENT_SSL;
        p.extend_from_slice(&(caps as u16).to_le_bytes());
        p.extend_from_slice(&[8, 2, 0, 0, 0]);
        packet(0, &p)
    }

    /// Runs a session; the server sends its greeting, waits a moment before
    /// its OK, and records every byte it receives.
    async fn session(client_bytes: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
        session_with(
            "default: allow\nrules:\n  - {id: no-delete, sql: {kinds: [write]}, action: deny}\n",
            client_bytes,
        )
        .await
    }

    async fn session_with(policy: &str, client_bytes: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
        let policy = Policy::parse(policy).unwrap();
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (saddr, paddr) = (server.local_addr().unwrap(), proxy.local_addr().unwrap());
        let srv = tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            s.write_all(&greeting()).await.unwrap();
            let mut seen = Vec::new();
            let mut chunk = [0u8; 4096];
            // The handshake response, then a slow OK.
            let n = s.read(&mut chunk).await.unwrap();
            seen.extend_from_slice(&chunk[..n]);
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = s.write_all(&packet(2, &[0, 0, 0, 2, 0, 0, 0])).await;
            loop {
                match tokio::time::timeout(Duration::from_millis(300), s.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&chunk[..n]),
                    _ => return seen,
                }
            }
        });
        let px = tokio::spawn(async move {
            let (c, _) = proxy.accept().await.unwrap();
            let u = TcpStream::connect(saddr).await.unwrap();
            let ctx = SessionCtx {
                audit: None,
                identity: None,
                target: "db".into(),
                policy: crate::policy::store::PolicyHandle::fixed(policy),
                classifier: Arc::default(),
                metrics: Arc::new(Metrics::new()),
                redact_headers: vec![],
                recorder: None,
                approvals: None,
            };
            run(c, u, ctx, None, MaskKey::from_bytes([0; 32])).await
        });
        let mut c = TcpStream::connect(paddr).await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        let n = c.read(&mut chunk).await.unwrap();
        got.extend_from_slice(&chunk[..n]);
        c.write_all(&client_bytes).await.unwrap();
        loop {
            match tokio::time::timeout(Duration::from_millis(400), c.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
        drop(c);
        let _ = px.await.unwrap();
        (got, srv.await.unwrap())
    }

    #[tokio::test]
    async fn a_command_sent_before_the_ok_is_still_decided() {
        let mut bytes = handshake_response();
        bytes.extend(packet(0, b"\x03DELETE FROM customers"));
        let (got, seen) = session(bytes).await;
        // The greeting reached the client without SSL.
        let caps = u16::from_le_bytes([got[4 + 29], got[4 + 30]]);
        assert_eq!(u32::from(caps) & CLIENT_SSL, 0);
        assert!(
            !String::from_utf8_lossy(&seen).contains("DELETE"),
            "the DELETE reached the server"
        );
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.contains("#42000interceptor: statement denied by rule `no-delete`"),
            "{text}"
        );
    }

    /// Without an `approvals:` section nobody can be asked: a rule requiring
    /// approval denies (fail closed), and the command never reaches the server.
    #[tokio::test]
    async fn without_approvals_a_rule_requiring_approval_denies() {
        let mut bytes = handshake_response();
        bytes.extend(packet(0, b"\x03DELETE FROM customers"));
        bytes.extend(packet(0, b"\x16DELETE FROM customers"));
        let (got, seen) = session_with(
            "default: allow\nrules:\n  - {id: hold-deletes, sql: {kinds: [write]}, action: require_approval}\n",
            bytes,
        )
        .await;
        assert!(
            !String::from_utf8_lossy(&seen).contains("DELETE"),
            "the DELETE reached the server"
        );
        let text = String::from_utf8_lossy(&got);
        assert_eq!(
            text.matches("denied by rule `hold-deletes`: approvals are not configured")
                .count(),
            2,
            "{text}"
        );
    }

    /// Re-authentication would log in around an injected credential: it
    /// never reaches the server (the same relay serves injected sessions).
    #[tokio::test]
    async fn change_user_is_refused() {
        let mut bytes = handshake_response();
        bytes.extend(packet(0, b"\x11root\0\0"));
        let (got, seen) = session(bytes).await;
        assert!(
            !seen.windows(5).any(|w| w == b"\x11root"),
            "COM_CHANGE_USER reached the server"
        );
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.contains("changing the user on a connection is not available"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn tls_is_refused() {
        let mut ssl = (CLIENT_PROTOCOL_41 | CLIENT_SSL).to_le_bytes().to_vec();
        ssl.resize(32, 0);
        let (got, seen) = session(packet(1, &ssl)).await;
        assert!(
            String::from_utf8_lossy(&got).contains("TLS is not available on this hop"),
            "{got:?}"
        );
        assert!(seen.is_empty(), "{seen:?}");
    }
}
