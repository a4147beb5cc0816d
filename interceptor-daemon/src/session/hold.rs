//! Holding a statement for approval (PostgreSQL, MySQL): the part of a
//! session that talks to `crate::approvals` (grants, requests, waiting) and
//! audits each step.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::{info, warn};

use crate::{
    approvals::{Approvals, GrantCheck, GrantKey, NewRequest, Resolution},
    audit::{self, AccessRecord, AuditLog, encode::AccessBase},
    metrics::Metrics,
    policy::{Action, Decision},
};

/// How a held statement's approval ended, for its audit record.
#[derive(Debug, Clone)]
pub struct Held {
    pub decision: audit::Decision,
    pub approval_ref: String,
    pub outcome: Option<audit::Outcome>,
}

impl Held {
    /// Puts the hold's verdict, request id and outcome into `entry`.
    pub fn mark<'a>(&'a self, entry: &mut audit::encode::AccessEntry<'a>) {
        entry.decision = &self.decision;
        entry.approval_ref = Some(&self.approval_ref);
        entry.outcome = self.outcome.as_ref();
    }
}

/// What holding needs of a session.
pub struct Holder<'a> {
    /// Where held statements wait, and the record requests are made from.
    pub approvals: Option<&'a (Arc<Approvals>, AccessRecord)>,
    pub audit: Option<&'a (AuditLog, AccessBase)>,
    pub metrics: &'a Metrics,
    pub identity: Option<&'a str>,
    pub target: &'a str,
}

/// Most client bytes kept while a statement is held (a client that pipelines
/// behind it); beyond that the client is not read until the hold ends.
pub const HELD_INPUT_MAX: usize = 1 << 20;

/// Resolves when the client disconnects (read EOF or error) while held; the
/// bytes it sends meanwhile are kept (up to [`HELD_INPUT_MAX`]) for after.
pub async fn client_gone(cr: &mut (impl AsyncRead + Unpin), kept: &mut BytesMut) {
    while kept.len() < HELD_INPUT_MAX {
        match cr.read_buf(kept).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    std::future::pending().await
}

impl Holder<'_> {
    /// Waits for a human on a statement `d` (a `require_approval` decision)
    /// holds; returns the allow or deny it comes to. `client_gone` resolves
    /// if the client disconnects meanwhile.
    pub async fn hold(
        &self,
        sql: &str,
        d: &Decision,
        description: &str,
        client_gone: impl std::future::Future<Output = ()>,
    ) -> (Decision, Option<Held>) {
        let deny = |reason: String| Decision {
            action: Action::Deny,
            rule: d.rule.clone(),
            reason,
        };
        let Some((approvals, base)) = self.approvals else {
            // Config validation requires `approvals:` for such rules; fail closed anyway.
            return (deny("approvals are not configured".into()), None);
        };
        let identity = self.identity.unwrap_or("(unidentified)");
        let key = GrantKey {
            identity,
            target: self.target,
            rule: &d.rule,
            statement: sql,
        };
        match approvals.check_grant(&key).await {
            GrantCheck::Granted(id) => {
                info!(approval_ref = %id, rule = %d.rule, operation = %description, identity, "statement allowed by an approval grant");
                let allow = Decision {
                    action: Action::Allow,
                    rule: d.rule.clone(),
                    reason: format!("allowed by the grant of approval request {id}"),
                };
                let held = Held {
                    decision: audit::Decision::Approved,
                    approval_ref: id,
                    outcome: None,
                };
                return (allow, Some(held));
            }
            GrantCheck::Expired(id) => {
                info!(approval_ref = %id, rule = %d.rule, operation = %description, identity, "approval grant expired; asking again");
                self.audit_only(
                    description,
                    d,
                    &id,
                    audit::Decision::RequireApproval,
                    Some("grant expired"),
                )
                .await;
            }
            GrantCheck::None => {}
        }
        let submitted = approvals
            .submit(NewRequest {
                base,
                identity,
                rule: &d.rule,
                rule_reason: &d.reason,
                operation: description,
                statement: sql,
            })
            .await;
        let (request, waiter) = match submitted {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "could not record an approval request; denying");
                return (deny(format!("approval could not be requested: {e}")), None);
            }
        };
        let id = request.id.clone();
        info!(approval_ref = %id, rule = %d.rule, operation = %description, identity, "statement held for approval");
        // The pending request is durable in the audit log before anyone can decide on it.
        self.audit_only(description, d, &id, audit::Decision::RequireApproval, None)
            .await;
        let (decision, outcome, verdict) = match approvals.wait(waiter, client_gone).await {
            Resolution::Approved { by } => (
                Decision {
                    action: Action::Allow,
                    rule: d.rule.clone(),
                    reason: format!("approval request {id} approved by {by}"),
                },
                None,
                audit::Decision::Approved,
            ),
            Resolution::Denied { by, reason } => {
                let why = format!("approval request {id} denied by {by}: {reason}");
                (
                    deny(why.clone()),
                    Some(audit::Outcome::Error(why)),
                    audit::Decision::Deny,
                )
            }
            Resolution::ClientGone => {
                let why = format!("approval request {id} abandoned: the client disconnected");
                (
                    deny(why.clone()),
                    Some(audit::Outcome::Error(why)),
                    audit::Decision::Deny,
                )
            }
            Resolution::TimedOut { after } => {
                let why = format!(
                    "approval request {id} timed out: no decision within {}s",
                    after.as_secs()
                );
                (
                    deny(why.clone()),
                    Some(audit::Outcome::Error(why)),
                    audit::Decision::Deny,
                )
            }
        };
        info!(approval_ref = %id, action = decision.action.as_str(), reason = %decision.reason, "approval resolved");
        let held = Held {
            decision: verdict,
            approval_ref: id,
            outcome,
        };
        (decision, Some(held))
    }

    /// An audit record that is not a forwarding decision (pending, expired grant).
    async fn audit_only(
        &self,
        description: &str,
        d: &Decision,
        approval_ref: &str,
        decision: audit::Decision,
        note: Option<&str>,
    ) {
        let Some((log, base)) = self.audit else {
            return;
        };
        let rec = AccessRecord {
            time_ns: audit::record::now_ns(),
            operation: description.to_string(),
            decision,
            rule_id: Some(d.rule.clone()),
            approval_ref: Some(approval_ref.to_string()),
            outcome: note.map(|n| audit::Outcome::Error(n.to_string())),
            ..base.record().clone()
        };
        crate::session::append(self.metrics, log, rec).await;
    }
}
