//! Just-in-time approvals: operations matched by a `require_approval` rule wait
//! here until a human approves or denies them (or the timeout passes).
//!
//! Requests live in a sled database (`approvals.dir`) so that their fate is
//! known across restarts: the held client connection does not survive a
//! restart, so a request still pending when the daemon starts is marked
//! `abandoned` (and audited as such), never silently forgotten. Grants
//! (`approve --for 1h --scope statement|target`) are stored with their request
//! and reloaded at start; their expiry is checked at decision time.
//!
//! Storage only: holding a statement on the wire is `session::hold` (used by
//! `pgproxy` and `mysqlproxy`),
//! the root-only API in `admin_socket`, the operator commands in [`cli`].
//! Requests carry the literal-free form of the statement, never its text: a
//! grant of scope `statement` matches on the SHA-256 of the text.

pub mod cli;
pub mod webhook;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Deserializer, Serialize, de};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, oneshot};
use tracing::{info, warn};

use crate::{
    audit::{self, AccessRecord, AuditLog},
    metrics::{ApprovalLabels, Metrics},
};

/// The `approvals:` configuration section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// Directory of the request database (created mode 0700).
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    /// How long a statement is held before it is refused as timed out.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Slack-compatible webhook (`http://` only) told about new and decided
    /// requests; best effort.
    #[serde(default, deserialize_with = "webhook_url")]
    pub webhook: Option<hyper::Uri>,
    /// Upper bound for one webhook delivery.
    #[serde(default = "default_webhook_timeout_ms")]
    pub webhook_timeout_ms: u64,
    /// Decided requests are forgotten this many days after their decision (at
    /// start); the audit log keeps the evidence.
    #[serde(default = "default_keep_days")]
    pub keep_days: u64,
}

fn default_keep_days() -> u64 {
    30
}

fn default_dir() -> PathBuf {
    PathBuf::from("/var/lib/interceptor/approvals")
}
fn default_timeout() -> u64 {
    300
}
fn default_webhook_timeout_ms() -> u64 {
    2000
}

fn webhook_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<hyper::Uri>, D::Error> {
    let s = String::deserialize(d)?;
    let uri: hyper::Uri = s
        .parse()
        .map_err(|e| de::Error::custom(format!("`{s}` is not a URL: {e}")))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(de::Error::custom(format!(
            "`{s}`: the webhook must be an http://host:port/path URL"
        )));
    }
    Ok(Some(uri))
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Approved,
    Denied,
    /// Approved with a grant that has since expired.
    Expired,
    TimedOut,
    /// Still pending when the daemon stopped: the held connection is gone.
    Abandoned,
}

impl State {
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Expired => "expired",
            State::TimedOut => "timed_out",
            State::Abandoned => "abandoned",
        }
    }
}

/// What an approval with `--for` also allows, until it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The same statement text, by the same identity, on the same target.
    Statement,
    /// Anything the same rule holds on the same target, by the same identity.
    Target,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub scope: Scope,
    /// UTC nanoseconds since the epoch.
    pub expires_ns: u64,
}

/// One approval request, as stored and as the admin API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: String,
    /// `namespace/service-account`, or `(unidentified)`.
    pub identity: String,
    pub pod: String,
    pub claims: BTreeMap<String, String>,
    pub target: String,
    /// The `require_approval` rule that holds it, and its description.
    pub rule: String,
    pub rule_reason: String,
    /// The literal-free statement (constants as `$n`, see `sql::normalize`).
    pub operation: String,
    /// SHA-256 (hex) of the statement text: what a `statement` grant matches.
    pub statement_sha256: String,
    pub session_id: String,
    pub connection_id: u64,
    pub created_ns: u64,
    pub state: State,
    /// Who decided: `NAME (uid N)` or, with `--as`, `AS (uid N NAME)`.
    pub decided_by: Option<String>,
    pub decided_ns: Option<u64>,
    pub reason: Option<String>,
    pub grant: Option<Grant>,
}

/// The stored form: the request and the audit record its final state is
/// recorded from when no session is left to do it (abandoned requests).
#[derive(Serialize, Deserialize)]
struct Stored {
    request: Request,
    audit_base: Option<AccessRecord>,
}

/// What a session asks approval for.
pub struct NewRequest<'a> {
    pub base: &'a AccessRecord,
    pub identity: &'a str,
    pub rule: &'a str,
    pub rule_reason: &'a str,
    pub operation: &'a str,
    /// The raw text: only its digest is kept (for `statement` grants).
    pub statement: &'a str,
}

/// An operator's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Approve { grant: Option<(Duration, Scope)> },
    Deny { reason: String },
}

/// How a held operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Approved {
        by: String,
    },
    Denied {
        by: String,
        reason: String,
    },
    TimedOut {
        after: Duration,
    },
    /// The held client disconnected before a decision.
    ClientGone,
}

/// A grant lookup key: what a held operation is.
pub struct GrantKey<'a> {
    pub identity: &'a str,
    pub target: &'a str,
    pub rule: &'a str,
    pub statement: &'a str,
}

#[derive(Debug, PartialEq, Eq)]
pub enum GrantCheck {
    /// Allowed by the grant of this request.
    Granted(String),
    /// The matching grant of this request expired (it is now `expired`).
    Expired(String),
    None,
}

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("approvals store: {0}")]
    Store(#[from] sled::Error),
    #[error("approvals store: {0}")]
    Encoding(#[from] serde_json::Error),
    #[error("approvals store {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no approval request `{0}`")]
    UnknownId(String),
    #[error("approval request {id} is already {} ({})", state.as_str(), by.as_deref().unwrap_or("not by an operator"))]
    AlreadyDecided {
        id: String,
        state: State,
        by: Option<String>,
    },
    #[error("{0}")]
    Invalid(String),
}

struct ActiveGrant {
    request_id: String,
    identity: String,
    target: String,
    rule: String,
    statement_sha256: String,
    scope: Scope,
    expires_ns: u64,
}

impl ActiveGrant {
    fn of(r: &Request) -> Option<ActiveGrant> {
        let g = r.grant.as_ref()?;
        Some(ActiveGrant {
            request_id: r.id.clone(),
            identity: r.identity.clone(),
            target: r.target.clone(),
            rule: r.rule.clone(),
            statement_sha256: r.statement_sha256.clone(),
            scope: g.scope,
            expires_ns: g.expires_ns,
        })
    }

    fn covers(&self, k: &GrantKey<'_>, digest: &str) -> bool {
        self.identity == k.identity
            && self.target == k.target
            && self.rule == k.rule
            && (self.scope == Scope::Target || self.statement_sha256 == digest)
    }
}

struct Inner {
    /// Sessions waiting for a decision, by request id.
    waiters: HashMap<String, oneshot::Sender<Resolution>>,
    grants: Vec<ActiveGrant>,
}

/// The approvals store and the sessions waiting on it.
pub struct Approvals {
    db: sled::Db,
    timeout: Duration,
    webhook: Option<webhook::Webhook>,
    metrics: Arc<Metrics>,
    /// Every state transition happens under this lock, so a decision and a
    /// timeout cannot both win.
    inner: Mutex<Inner>,
}

/// SHA-256 (hex) of a statement's text.
pub fn statement_digest(sql: &str) -> String {
    Sha256::digest(sql.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A short random id, easy to read aloud and type (no 0/o/1/l).
fn new_id() -> Result<String, ApprovalError> {
    const ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| ApprovalError::Invalid(format!("no randomness: {e}")))?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[usize::from(b & 31)] as char)
        .collect())
}

impl Approvals {
    /// Opens the store. Requests left pending by a previous run are marked
    /// `abandoned` and audited; unexpired grants become active again.
    pub async fn open(
        cfg: &ApprovalsConfig,
        metrics: Arc<Metrics>,
        audit: Option<&AuditLog>,
    ) -> Result<Arc<Approvals>, ApprovalError> {
        let dir_err = |source| ApprovalError::Dir {
            path: cfg.dir.clone(),
            source,
        };
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&cfg.dir)
                .map_err(dir_err)?;
        }
        let db = crate::kv::open(&sled::Config::new().path(&cfg.dir))?;
        let now = audit::record::now_ns();
        let keep_ns = cfg.keep_days.saturating_mul(86_400 * 1_000_000_000);
        let mut grants = Vec::new();
        let mut abandoned = Vec::new();
        let mut forgotten = 0usize;
        for item in db.iter() {
            let (key, value) = item?;
            let mut stored: Stored = serde_json::from_slice(&value)?;
            let r = &stored.request;
            let last = r
                .grant
                .as_ref()
                .map_or(0, |g| g.expires_ns)
                .max(r.decided_ns.unwrap_or(r.created_ns));
            if r.state != State::Pending && now.saturating_sub(last) > keep_ns {
                db.remove(key)?;
                forgotten += 1;
                continue;
            }
            match stored.request.state {
                State::Pending => {
                    stored.request.state = State::Abandoned;
                    stored.request.decided_ns = Some(now);
                    stored.request.reason =
                        Some("the daemon stopped while the request was pending".into());
                    db.insert(key, serde_json::to_vec(&stored)?)?;
                    abandoned.push(stored);
                }
                State::Approved => {
                    if let Some(g) = ActiveGrant::of(&stored.request)
                        && g.expires_ns > now
                    {
                        grants.push(g);
                    }
                }
                _ => {}
            }
        }
        db.flush_async().await?;
        for s in &abandoned {
            warn!(
                id = %s.request.id,
                identity = %s.request.identity,
                operation = %s.request.operation,
                "approval request abandoned: the daemon stopped while it was pending"
            );
            metrics
                .approvals
                .get_or_create(&ApprovalLabels {
                    outcome: "abandoned",
                })
                .inc();
            if let (Some(log), Some(base)) = (audit, &s.audit_base) {
                let rec = AccessRecord {
                    time_ns: now,
                    operation: s.request.operation.clone(),
                    decision: audit::Decision::Deny,
                    rule_id: Some(s.request.rule.clone()),
                    approval_ref: Some(s.request.id.clone()),
                    outcome: Some(audit::Outcome::Error(
                        "approval abandoned: the daemon stopped while the request was pending"
                            .into(),
                    )),
                    ..base.clone()
                };
                if let Err(e) = log.append(&rec).await {
                    warn!(error = %e, "audit append failed");
                }
            }
        }
        if !grants.is_empty() || forgotten > 0 {
            info!(
                grants = grants.len(),
                forgotten, "approvals store opened: grants restored, old requests forgotten"
            );
        }
        Ok(Arc::new(Approvals {
            db,
            timeout: Duration::from_secs(cfg.timeout_secs.max(1)),
            webhook: cfg
                .webhook
                .clone()
                .map(|u| webhook::Webhook::new(u, Duration::from_millis(cfg.webhook_timeout_ms))),
            metrics,
            inner: Mutex::new(Inner {
                waiters: HashMap::new(),
                grants,
            }),
        }))
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn load(&self, id: &str) -> Result<Option<Stored>, ApprovalError> {
        match self.db.get(id.as_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    async fn store(&self, s: &Stored) -> Result<(), ApprovalError> {
        self.db
            .insert(s.request.id.as_bytes(), serde_json::to_vec(s)?)?;
        self.db.flush_async().await?;
        Ok(())
    }

    fn count(&self, outcome: &'static str) {
        self.metrics
            .approvals
            .get_or_create(&ApprovalLabels { outcome })
            .inc();
    }

    /// Whether an active grant allows this operation without asking. An
    /// expired grant found here is retired (state `expired`).
    pub async fn check_grant(&self, k: &GrantKey<'_>) -> GrantCheck {
        let digest = statement_digest(k.statement);
        let now = audit::record::now_ns();
        let mut inner = self.inner.lock().await;
        let mut expired = None;
        let mut granted = None;
        inner.grants.retain(|g| {
            if !g.covers(k, &digest) {
                return true;
            }
            if g.expires_ns > now {
                granted.get_or_insert_with(|| g.request_id.clone());
                true
            } else {
                expired.get_or_insert_with(|| g.request_id.clone());
                false
            }
        });
        drop(inner);
        if let Some(id) = &expired {
            self.retire(id).await;
        }
        match (granted, expired) {
            (Some(id), _) => {
                self.count("granted");
                GrantCheck::Granted(id)
            }
            (None, Some(id)) => GrantCheck::Expired(id),
            (None, None) => GrantCheck::None,
        }
    }

    /// Marks an approved request whose grant ran out as `expired`.
    async fn retire(&self, id: &str) {
        let result = async {
            if let Some(mut s) = self.load(id)?
                && s.request.state == State::Approved
            {
                s.request.state = State::Expired;
                self.store(&s).await?;
            }
            Ok::<_, ApprovalError>(())
        }
        .await;
        info!(id, "approval grant expired");
        if let Err(e) = result {
            warn!(id, error = %e, "recording an expired grant failed");
        }
    }

    /// Stores a new pending request and registers the caller as its waiter.
    pub async fn submit(&self, n: NewRequest<'_>) -> Result<(Request, Waiter), ApprovalError> {
        let mut id = new_id()?;
        while self.db.contains_key(id.as_bytes())? {
            id = new_id()?;
        }
        let request = Request {
            id: id.clone(),
            identity: n.identity.to_string(),
            pod: n.base.identity.pod.clone(),
            claims: n.base.identity.claims.clone(),
            target: n.base.target.clone(),
            rule: n.rule.to_string(),
            rule_reason: n.rule_reason.to_string(),
            operation: n.operation.to_string(),
            statement_sha256: statement_digest(n.statement),
            session_id: n.base.session_id.clone(),
            connection_id: n.base.connection_id,
            created_ns: audit::record::now_ns(),
            state: State::Pending,
            decided_by: None,
            decided_ns: None,
            reason: None,
            grant: None,
        };
        let (tx, rx) = oneshot::channel();
        {
            let mut inner = self.inner.lock().await;
            self.store(&Stored {
                request: request.clone(),
                audit_base: Some(n.base.clone()),
            })
            .await?;
            inner.waiters.insert(id.clone(), tx);
        }
        self.metrics.approvals_pending.inc();
        self.count("requested");
        if let Some(w) = &self.webhook {
            w.notify("approval_requested", &request);
        }
        Ok((
            request,
            Waiter {
                id,
                rx,
                timeout: self.timeout,
            },
        ))
    }

    /// Waits for the decision on a request submitted by this session, for at
    /// most the configured timeout, or until `client_gone` resolves (the held
    /// client disconnected: its statement must not run after all).
    pub async fn wait(
        &self,
        mut w: Waiter,
        client_gone: impl std::future::Future<Output = ()>,
    ) -> Resolution {
        let after = w.timeout;
        let (state, reason, resolution) = tokio::select! {
            r = tokio::time::timeout(w.timeout, &mut w.rx) => match r {
                Ok(Ok(r)) => return r,
                // Timed out (or the sender vanished, which only a bug can cause).
                _ => (
                    State::TimedOut,
                    format!("no decision within {}s", after.as_secs()),
                    Resolution::TimedOut { after },
                ),
            },
            _ = client_gone => (
                State::Abandoned,
                "the client disconnected while waiting".to_string(),
                Resolution::ClientGone,
            ),
        };
        let mut inner = self.inner.lock().await;
        if inner.waiters.remove(&w.id).is_none() {
            // A decision won the race: it was sent before the lock was released.
            drop(inner);
            return w.rx.try_recv().unwrap_or(resolution);
        }
        if let Ok(Some(mut s)) = self.load(&w.id) {
            s.request.state = state;
            s.request.decided_ns = Some(audit::record::now_ns());
            s.request.reason = Some(reason);
            if let Err(e) = self.store(&s).await {
                warn!(id = %w.id, error = %e, "recording the end of an approval request failed");
            }
            if let Some(h) = &self.webhook {
                h.notify("approval_ended", &s.request);
            }
        }
        drop(inner);
        self.metrics.approvals_pending.dec();
        self.count(state.as_str());
        resolution
    }

    /// An operator's decision on a pending request.
    pub async fn decide(
        &self,
        id: &str,
        verdict: Verdict,
        actor: &str,
    ) -> Result<Request, ApprovalError> {
        let now = audit::record::now_ns();
        let mut inner = self.inner.lock().await;
        let mut s = self
            .load(id)?
            .ok_or_else(|| ApprovalError::UnknownId(id.to_string()))?;
        if s.request.state != State::Pending {
            return Err(ApprovalError::AlreadyDecided {
                id: id.to_string(),
                state: s.request.state,
                by: s.request.decided_by,
            });
        }
        let Some(waiter) = inner.waiters.remove(id) else {
            // Pending in the store but nobody holds it: cannot happen after
            // `open`, which retires every pending request of a previous run.
            return Err(ApprovalError::Invalid(format!(
                "approval request {id} has no waiting session"
            )));
        };
        s.request.decided_by = Some(actor.to_string());
        s.request.decided_ns = Some(now);
        let resolution = match &verdict {
            Verdict::Approve { grant } => {
                s.request.state = State::Approved;
                s.request.grant = grant.map(|(d, scope)| Grant {
                    scope,
                    expires_ns: now.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
                });
                Resolution::Approved {
                    by: actor.to_string(),
                }
            }
            Verdict::Deny { reason } => {
                s.request.state = State::Denied;
                s.request.reason = Some(reason.clone());
                Resolution::Denied {
                    by: actor.to_string(),
                    reason: reason.clone(),
                }
            }
        };
        if let Err(e) = self.store(&s).await {
            // Not decided after all: the session keeps waiting.
            inner.waiters.insert(id.to_string(), waiter);
            return Err(e);
        }
        if let Some(g) = ActiveGrant::of(&s.request) {
            inner.grants.push(g);
        }
        // The session may have gone (its wait dropped); the decision stands.
        let _ = waiter.send(resolution);
        drop(inner);
        self.metrics.approvals_pending.dec();
        self.count(s.request.state.as_str());
        info!(
            id,
            state = s.request.state.as_str(),
            by = actor,
            grant = ?s.request.grant,
            "approval decided"
        );
        if let Some(h) = &self.webhook {
            h.notify("approval_decided", &s.request);
        }
        Ok(s.request)
    }

    /// Pending requests (or all, with `all`), oldest first. Approved requests
    /// whose grant ran out are shown (and stored) as `expired`.
    pub async fn list(&self, all: bool) -> Result<Vec<Request>, ApprovalError> {
        let now = audit::record::now_ns();
        let mut out = Vec::new();
        for item in self.db.iter() {
            let (_, v) = item?;
            let s: Stored = serde_json::from_slice(&v)?;
            let mut r = s.request;
            if r.state == State::Approved && r.grant.as_ref().is_some_and(|g| g.expires_ns <= now) {
                r.state = State::Expired;
            }
            if all || r.state == State::Pending {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.created_ns.cmp(&b.created_ns).then(a.id.cmp(&b.id)));
        Ok(out)
    }
}

/// A session's claim on the decision of its request.
pub struct Waiter {
    pub id: String,
    rx: oneshot::Receiver<Resolution>,
    timeout: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &std::path::Path, timeout_secs: u64) -> ApprovalsConfig {
        ApprovalsConfig {
            dir: dir.into(),
            timeout_secs,
            webhook: None,
            webhook_timeout_ms: 100,
            keep_days: 30,
        }
    }

    fn base() -> AccessRecord {
        let mut b = audit::record::sample_access(1);
        b.target = "orders-db".into();
        b
    }

    async fn submit(a: &Approvals, b: &AccessRecord, sql: &str) -> (Request, Waiter) {
        a.submit(NewRequest {
            base: b,
            identity: "shop/orders",
            rule: "order-deletes",
            rule_reason: "deletes need a human",
            operation: "query write on [orders]",
            statement: sql,
        })
        .await
        .unwrap()
    }

    fn key<'a>(sql: &'a str, target: &'a str) -> GrantKey<'a> {
        GrantKey {
            identity: "shop/orders",
            target,
            rule: "order-deletes",
            statement: sql,
        }
    }

    #[test]
    fn configuration() {
        use crate::config::Config;
        let good = "listener:\n  address: 10.77.0.1:15001\nredirect:\n  select_cgroups: [\"pods/*\"]\ntargets:\n  - name: pg\n    destinations: [\"10.77.0.2:5432\"]\n";
        let held =
            format!("{good}policy:\n  rules:\n    - id: held\n      action: require_approval\n");
        let e = Config::parse(&held).unwrap_err();
        assert_eq!(
            e,
            "line 10: policy rule `held` requires approval, but there is no `approvals:` section"
        );
        let c = Config::parse(&format!("{held}approvals:\n  dir: /tmp/x\n")).unwrap();
        let a = c.approvals.as_ref().unwrap();
        assert_eq!((a.timeout_secs, a.webhook.is_none()), (300, true));
        // With approvals, the admin socket is served at its default path.
        assert_eq!(
            c.admin_socket(),
            Some(PathBuf::from(crate::admin_socket::DEFAULT_PATH))
        );
        let c = Config::parse(&format!(
            "{held}approvals:\n  webhook: \"http://127.0.0.1:9/hook\"\nadmin:\n  socket: /tmp/a.sock\n"
        ))
        .unwrap();
        assert_eq!(c.admin_socket(), Some(PathBuf::from("/tmp/a.sock")));
        assert!(c.admin.unwrap().address.is_none());
        let e = Config::parse(&format!(
            "{held}approvals:\n  webhook: \"https://hooks.example/x\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("must be an http://host:port/path URL"), "{e}");
        // Without approvals or a socket, no socket is served.
        assert_eq!(Config::parse(good).unwrap().admin_socket(), None);
    }

    #[tokio::test]
    async fn approve_deny_timeout_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let m = Arc::new(Metrics::new());
        let a = Approvals::open(&cfg(dir.path(), 1), m.clone(), None)
            .await
            .unwrap();
        let b = base();

        let (r, w) = submit(&a, &b, "DELETE FROM orders WHERE id = 1").await;
        assert_eq!(a.list(false).await.unwrap(), vec![r.clone()]);
        let decided = a
            .decide(&r.id, Verdict::Approve { grant: None }, "ops (uid 0 root)")
            .await
            .unwrap();
        assert_eq!(decided.state, State::Approved);
        assert_eq!(
            a.wait(w, std::future::pending()).await,
            Resolution::Approved {
                by: "ops (uid 0 root)".into()
            }
        );
        let again = a
            .decide(&r.id, Verdict::Deny { reason: "x".into() }, "root (uid 0)")
            .await
            .unwrap_err();
        assert_eq!(
            again.to_string(),
            format!(
                "approval request {} is already approved (ops (uid 0 root))",
                r.id
            )
        );
        assert!(matches!(
            a.decide("nope", Verdict::Approve { grant: None }, "root")
                .await
                .unwrap_err(),
            ApprovalError::UnknownId(_)
        ));
        // No grant was asked for: the same statement asks again.
        assert_eq!(
            a.check_grant(&key("DELETE FROM orders WHERE id = 1", "orders-db"))
                .await,
            GrantCheck::None
        );

        let (r2, w2) = submit(&a, &b, "DELETE FROM orders").await;
        a.decide(
            &r2.id,
            Verdict::Deny {
                reason: "not now".into(),
            },
            "root (uid 0)",
        )
        .await
        .unwrap();
        assert_eq!(
            a.wait(w2, std::future::pending()).await,
            Resolution::Denied {
                by: "root (uid 0)".into(),
                reason: "not now".into()
            }
        );

        let (r3, w3) = submit(&a, &b, "DELETE FROM orders").await;
        assert!(matches!(
            a.wait(w3, std::future::pending()).await,
            Resolution::TimedOut { .. }
        ));
        let err = a
            .decide(&r3.id, Verdict::Approve { grant: None }, "root")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("already timed_out"), "{err}");

        let all = a.list(true).await.unwrap();
        let states: Vec<State> = all.iter().map(|r| r.state).collect();
        assert_eq!(
            states,
            [State::Approved, State::Denied, State::TimedOut],
            "{all:?}"
        );
        assert!(a.list(false).await.unwrap().is_empty());
        let text = m.encode();
        assert!(text.contains("interceptor_approvals_pending 0"), "{text}");
        assert!(
            text.contains("interceptor_approvals_total{outcome=\"timed_out\"} 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn grants_by_scope_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let a = Approvals::open(&cfg(dir.path(), 5), Arc::new(Metrics::new()), None)
            .await
            .unwrap();
        let b = base();
        let sql = "DELETE FROM orders WHERE id = 1";

        let (r, w) = submit(&a, &b, sql).await;
        a.decide(
            &r.id,
            Verdict::Approve {
                grant: Some((Duration::from_millis(300), Scope::Statement)),
            },
            "root (uid 0)",
        )
        .await
        .unwrap();
        a.wait(w, std::future::pending()).await;
        assert_eq!(
            a.check_grant(&key(sql, "orders-db")).await,
            GrantCheck::Granted(r.id.clone())
        );
        // Scope statement: another statement, another target or another
        // identity is not covered.
        assert_eq!(
            a.check_grant(&key("DELETE FROM orders WHERE id = 2", "orders-db"))
                .await,
            GrantCheck::None
        );
        assert_eq!(a.check_grant(&key(sql, "other-db")).await, GrantCheck::None);
        let other = GrantKey {
            identity: "shop/billing",
            ..key(sql, "orders-db")
        };
        assert_eq!(a.check_grant(&other).await, GrantCheck::None);

        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(
            a.check_grant(&key(sql, "orders-db")).await,
            GrantCheck::Expired(r.id.clone())
        );
        // Retired: the next check asks again.
        assert_eq!(
            a.check_grant(&key(sql, "orders-db")).await,
            GrantCheck::None
        );
        assert_eq!(a.list(true).await.unwrap()[0].state, State::Expired);

        // Scope target: any statement the rule holds on that target.
        let (r2, w2) = submit(&a, &b, sql).await;
        a.decide(
            &r2.id,
            Verdict::Approve {
                grant: Some((Duration::from_secs(60), Scope::Target)),
            },
            "root (uid 0)",
        )
        .await
        .unwrap();
        a.wait(w2, std::future::pending()).await;
        assert_eq!(
            a.check_grant(&key("DELETE FROM orders WHERE id = 7", "orders-db"))
                .await,
            GrantCheck::Granted(r2.id.clone())
        );
        assert_eq!(a.check_grant(&key(sql, "other-db")).await, GrantCheck::None);
        let other_rule = GrantKey {
            rule: "another-rule",
            ..key(sql, "orders-db")
        };
        assert_eq!(a.check_grant(&other_rule).await, GrantCheck::None);
    }

    #[tokio::test]
    async fn restart_abandons_pending_and_keeps_grants() {
        let dir = tempfile::tempdir().unwrap();
        let b = base();
        let sql = "DELETE FROM orders WHERE id = 1";
        let (pending_id, granted_id) = {
            let a = Approvals::open(&cfg(dir.path(), 60), Arc::new(Metrics::new()), None)
                .await
                .unwrap();
            let (r, w) = submit(&a, &b, sql).await;
            a.decide(
                &r.id,
                Verdict::Approve {
                    grant: Some((Duration::from_secs(60), Scope::Statement)),
                },
                "root (uid 0)",
            )
            .await
            .unwrap();
            a.wait(w, std::future::pending()).await;
            let (p, _w) = submit(&a, &b, "DELETE FROM orders").await;
            (p.id, r.id)
        };
        // sled keeps the directory locked until every handle is gone.
        let a = loop {
            match Approvals::open(&cfg(dir.path(), 60), Arc::new(Metrics::new()), None).await {
                Ok(a) => break a,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let all = a.list(true).await.unwrap();
        let p = all.iter().find(|r| r.id == pending_id).unwrap();
        assert_eq!(p.state, State::Abandoned);
        assert!(a.list(false).await.unwrap().is_empty());
        assert_eq!(
            a.check_grant(&key(sql, "orders-db")).await,
            GrantCheck::Granted(granted_id.clone())
        );
        let err = a
            .decide(&pending_id, Verdict::Approve { grant: None }, "root")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("already abandoned"), "{err}");
        drop(a);
        // Decided requests past `keep_days` are forgotten; an active grant is kept.
        let short = ApprovalsConfig {
            keep_days: 0,
            ..cfg(dir.path(), 60)
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let a = loop {
            match Approvals::open(&short, Arc::new(Metrics::new()), None).await {
                Ok(a) => break a,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let left: Vec<String> = a
            .list(true)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(left, [granted_id]);
    }
}
