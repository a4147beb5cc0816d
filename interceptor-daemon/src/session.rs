//! What a protocol session handler (PostgreSQL, MySQL, Redis, HTTP) needs besides its
//! sockets, and how it records a decision: the per-target decision counter
//! and the signed audit log, a denial durable before the client hears of it.

pub mod hold;

use std::sync::Arc;

use tracing::{debug, info, warn};

use crate::{
    audit::{
        self, AccessRecord, AuditLog,
        encode::{AccessBase, AccessEntry},
    },
    metrics::{DecisionLabels, Metrics},
    policy::{Action, Context, Decision, store::PolicyHandle},
};

pub struct SessionCtx {
    /// Where decisions are recorded, and what every entry shares (node,
    /// identity, target, protocol, connection), encoded once.
    pub audit: Option<(AuditLog, AccessBase)>,
    pub identity: Option<String>,
    pub target: String,
    /// Read on every decision, so a reload applies to open sessions.
    pub policy: PolicyHandle,
    /// SQL classification (MySQL targets).
    pub classifier: Arc<crate::sql::Classifier>,
    pub metrics: Arc<Metrics>,
    /// Header names (lower-case) whose values never reach logs, besides the
    /// built-in ones (HTTP only).
    pub redact_headers: Vec<String>,
    /// Records what the client receives, if configured.
    pub recorder: Option<crate::recording::Recorder>,
    /// Where held statements wait (PostgreSQL, MySQL), and the record
    /// requests are made from.
    pub approvals: Option<(Arc<crate::approvals::Approvals>, AccessRecord)>,
}

impl SessionCtx {
    pub fn policy_ctx(&self) -> Context<'_> {
        Context {
            identity: self.identity.as_deref(),
            target: &self.target,
        }
    }

    /// What holding a statement for approval needs of this session.
    pub fn holder(&self) -> hold::Holder<'_> {
        hold::Holder {
            approvals: self.approvals.as_ref(),
            audit: self.audit.as_ref(),
            metrics: &self.metrics,
            identity: self.identity.as_deref(),
            target: &self.target,
        }
    }

    /// Logs, counts and audits one decision. `operation` must already be free
    /// of values that do not belong in a log (literals, query strings,
    /// credentials). Denials are logged at info, allows at debug (a busy cache
    /// sees many thousands per second).
    pub async fn record(&self, d: &Decision, operation: String) {
        self.record_held(d, operation, None).await;
    }

    /// [`SessionCtx::record`] of a decision a hold came to (its approval
    /// request and outcome go into the record).
    pub async fn record_held(&self, d: &Decision, operation: String, held: Option<&hold::Held>) {
        if d.action == Action::Deny {
            info!(
                action = d.action.as_str(),
                rule = %d.rule,
                reason = %d.reason,
                operation = %operation,
                identity = self.identity.as_deref().unwrap_or(""),
                "operation decision"
            );
        } else {
            debug!(
                action = d.action.as_str(),
                rule = %d.rule,
                operation = %operation,
                identity = self.identity.as_deref().unwrap_or(""),
                "operation decision"
            );
        }
        self.metrics
            .decisions
            .get_or_create(&DecisionLabels {
                target: self.target.clone(),
                action: d.action.as_str(),
                rule: d.rule.clone(),
            })
            .inc();
        let Some((log, base)) = &self.audit else {
            return;
        };
        let decision = match d.action {
            Action::Allow | Action::Mask => audit::Decision::Allow,
            // A hold turns every RequireApproval into Allow or Deny.
            Action::Deny | Action::RequireApproval => audit::Decision::Deny,
        };
        let mut entry = AccessEntry {
            operation: &operation,
            decision: &decision,
            rule_id: Some(&d.rule),
            ..AccessEntry::now()
        };
        if let Some(h) = held {
            h.mark(&mut entry);
        }
        // Allowed operations do not wait for the disk; the record follows.
        record_entry(&self.metrics, log, base, &entry, d.action != Action::Allow).await;
    }
}

/// Audits one entry of a connection: `durable` waits until it is on disk (a
/// denial, before the client hears of it), otherwise it is only queued.
pub(crate) async fn record_entry(
    metrics: &Metrics,
    log: &AuditLog,
    base: &AccessBase,
    entry: &AccessEntry<'_>,
    durable: bool,
) {
    let res = match base.encode(entry) {
        Ok(body) if durable => log.append_encoded(body).await.map(drop),
        Ok(body) => log.submit_encoded(body).await,
        Err(e) => Err(crate::audit::AuditError::Record(e.to_string())),
    };
    if let Err(e) = res {
        closed(metrics, &e);
        warn!(error = %e, "audit record failed");
    }
}

/// Appends one decision record and waits until it is durable (every
/// protocol). Durable latency and write failures reach the metrics through
/// the log's observer ([`observer`]); a closed log is counted here.
pub(crate) async fn append(metrics: &Metrics, log: &AuditLog, rec: AccessRecord) {
    if let Err(e) = log.append(&rec).await {
        closed(metrics, &e);
        warn!(error = %e, "audit append failed");
    }
}

/// Queues one decision record without waiting for the disk (allowed
/// operations): it is durable within the log's linger time.
pub(crate) async fn submit(metrics: &Metrics, log: &AuditLog, rec: AccessRecord) {
    if let Err(e) = log.submit(&rec).await {
        closed(metrics, &e);
        warn!(error = %e, "audit submit failed");
    }
}

fn closed(metrics: &Metrics, e: &crate::audit::AuditError) {
    if matches!(e, crate::audit::AuditError::Closed) {
        metrics.audit_append_failures.inc();
    }
}

/// The log a connection's decisions go to, with the connection's encoded base.
pub fn audit_of(
    shared: &crate::listener::Shared,
    meta: &crate::listener::ConnMeta,
) -> Option<(AuditLog, AccessBase)> {
    let log = shared.audit.clone()?;
    Some((log, AccessBase::new(meta.audit_base(&shared.node))))
}

/// Feeds the audit metrics from the writer: time from queueing to durable,
/// and records the writer failed to make durable.
pub fn observer(metrics: std::sync::Arc<Metrics>) -> crate::audit::Observer {
    crate::audit::Observer(std::sync::Arc::new(move |r| match r {
        Ok(latency) => metrics.audit_append.observe(latency.as_secs_f64()),
        Err(()) => {
            metrics.audit_append_failures.inc();
        }
    }))
}

impl SessionCtx {
    /// The context for one redirected connection.
    pub fn new(shared: &crate::listener::Shared, meta: &crate::listener::ConnMeta) -> SessionCtx {
        SessionCtx {
            audit: audit_of(shared, meta),
            identity: meta.identity.as_ref().map(crate::identity::Identity::name),
            target: meta.target.clone(),
            policy: shared.policy.clone(),
            classifier: shared.classifier.clone(),
            metrics: shared.metrics.clone(),
            redact_headers: shared
                .cfg
                .proxy
                .redact_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            recorder: crate::recording::Recorder::for_connection(shared, meta),
            approvals: None,
        }
    }

    /// The context of a session whose statements can be held for a human
    /// (PostgreSQL, MySQL; a Redis command or HTTP request a rule would hold
    /// is denied instead, so those sessions carry no request record).
    pub fn holding(shared: &crate::listener::Shared, meta: &crate::listener::ConnMeta) -> Self {
        SessionCtx {
            approvals: shared
                .approvals
                .clone()
                .map(|a| (a, meta.audit_base(&shared.node))),
            ..SessionCtx::new(shared, meta)
        }
    }
}

/// For `protocol: auto`: waits (at most `wait`) for the client's first bytes
/// and recognises its protocol without consuming them. A server that speaks
/// first (MySQL, SMTP, SSH...), a silent client or anything unrecognised is
/// plain TCP.
pub async fn sniff(
    client: &tokio::net::TcpStream,
    upstream: &tokio::net::TcpStream,
    wait: std::time::Duration,
) -> crate::protocol::sniff::Sniffed {
    use crate::protocol::sniff::{Sniffed, classify};
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 16];
    let mut seen = 0;
    loop {
        let n = tokio::select! {
            r = client.peek(&mut buf) => match r {
                Ok(n) => n,
                Err(_) => return Sniffed::Tcp,
            },
            // The server speaks first: MySQL/MariaDB, or something else.
            _ = upstream.readable() => {
                // Readiness can be spurious: peek only until the deadline.
                let n = tokio::time::timeout_at(deadline, upstream.peek(&mut buf))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(0);
                return crate::protocol::sniff::classify_server(&buf[..n]);
            }
            _ = tokio::time::sleep_until(deadline) => return Sniffed::Tcp,
        };
        if n == 0 {
            return Sniffed::Tcp;
        }
        if let Some(p) = classify(&buf[..n]) {
            return p;
        }
        // Too few bytes to tell: peek returns at once while they sit unread,
        // so wait a little for more.
        if n == seen && tokio::time::Instant::now() >= deadline {
            return Sniffed::Tcp;
        }
        seen = n;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// How long `protocol: auto` waits for a client's first bytes.
pub const SNIFF_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// The handler for a `protocol: auto` connection.
pub async fn resolve_auto(
    client: &tokio::net::TcpStream,
    upstream: &tokio::net::TcpStream,
) -> crate::config::Protocol {
    use crate::{config::Protocol, protocol::sniff::Sniffed};
    let p = match sniff(client, upstream, SNIFF_WAIT).await {
        Sniffed::Postgres => Protocol::Postgres,
        Sniffed::Redis => Protocol::Redis,
        Sniffed::Http => Protocol::Http,
        Sniffed::Mysql => Protocol::Mysql,
        Sniffed::Tcp => Protocol::Tcp,
    };
    debug!(protocol = p.as_str(), "protocol recognised (auto)");
    p
}

/// Reads more of a stream into `buf`, growing it by 64 KiB when less than
/// 8 KiB is free, so a large message arrives in few reads (every protocol).
pub(crate) async fn fill(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut bytes::BytesMut,
) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;
    if buf.capacity() - buf.len() < 8192 {
        buf.reserve(64 * 1024);
    }
    r.read_buf(buf).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::AsyncWriteExt,
        net::{TcpListener, TcpStream},
    };

    use super::*;
    use crate::protocol::sniff::Sniffed;

    /// A connected (client-side-of-proxy, upstream) pair plus the far ends.
    async fn pairs() -> ((TcpStream, TcpStream), (TcpStream, TcpStream)) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        let (app, (client, _)) =
            tokio::join!(TcpStream::connect(a), async { l.accept().await.unwrap() });
        let (upstream, (server, _)) =
            tokio::join!(TcpStream::connect(a), async { l.accept().await.unwrap() });
        ((client, upstream.unwrap()), (app.unwrap(), server))
    }

    #[tokio::test]
    async fn sniffing_reads_without_consuming() {
        // Client first, in two pieces: HTTP.
        let ((client, upstream), (mut app, _server)) = pairs().await;
        app.write_all(b"GE").await.unwrap();
        let t = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            app.write_all(b"T / HTTP/1.1\r\n").await.unwrap();
            app
        });
        assert_eq!(sniff(&client, &upstream, SNIFF_WAIT).await, Sniffed::Http);
        let _app = t.await.unwrap();
        let mut buf = [0u8; 4];
        client.peek(&mut buf).await.unwrap();
        assert_eq!(&buf, b"GET ", "the bytes are still there for the handler");

        // Server first: a MySQL greeting.
        let ((client, upstream), (_app, mut server)) = pairs().await;
        server.write_all(b"\x4a\0\0\0\x0a11.4.2\0").await.unwrap();
        assert_eq!(sniff(&client, &upstream, SNIFF_WAIT).await, Sniffed::Mysql);

        // Nobody speaks: TCP after the wait.
        let ((client, upstream), _ends) = pairs().await;
        let started = std::time::Instant::now();
        let p = sniff(&client, &upstream, Duration::from_millis(100)).await;
        assert_eq!(p, Sniffed::Tcp);
        assert!(started.elapsed() >= Duration::from_millis(100));
    }
}
