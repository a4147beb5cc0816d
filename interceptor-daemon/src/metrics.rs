//! Prometheus / OpenMetrics instruments of the daemon.
//!
//! Connection instruments are updated on the data path (atomic adds behind a
//! label lookup); kernel-side figures (the programs' counters, occupancy of the
//! connection table) are read from the BPF maps when a scrape asks for them.
//! Labels are bounded: targets come from the configuration, never from traffic.

use std::{fmt::Write as _, sync::atomic::Ordering};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnLabels {
    /// `namespace/service-account`; empty when unidentified. Bounded by the
    /// service accounts that exist, not by traffic.
    pub identity: String,
    pub target: String,
    pub protocol: &'static str,
    /// False for connections passed through because their cgroup turned out
    /// not to be selected.
    pub intercepted: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: String,
    pub protocol: &'static str,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Failure {
    /// Accepted connection without a kernel record: refused.
    NoRedirectRecord,
    /// The original destination could not be reached.
    UpstreamConnect,
    /// A selected cgroup with no identity, refused (fail closed).
    UnknownIdentity,
    /// The transfer ended with an I/O error.
    Transfer,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub target: String,
    pub reason: Failure,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    /// Client to upstream.
    Up,
    /// Upstream to client.
    Down,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub target: String,
    pub direction: Direction,
}

impl EncodeLabelValue for Failure {
    fn encode(&self, enc: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        enc.write_str(match self {
            Failure::NoRedirectRecord => "no_redirect_record",
            Failure::UpstreamConnect => "upstream_connect",
            Failure::UnknownIdentity => "unknown_identity",
            Failure::Transfer => "transfer",
        })
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, enc: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        enc.write_str(match self {
            Direction::Up => "up",
            Direction::Down => "down",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub target: String,
    pub action: &'static str,
    /// Rule ids come from the policy file: bounded.
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApprovalLabels {
    /// requested, approved, denied, timed_out, abandoned, granted (allowed by
    /// an earlier approval's grant).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `applied`, `unchanged` (SIGHUP with the same content) or `rejected`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event: &'static str,
}

#[derive(Clone)]
pub struct Buckets(fn() -> Histogram);
impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        (self.0)()
    }
}

fn latency_buckets() -> Histogram {
    // 50 µs .. ~3.3 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

fn fast_buckets() -> Histogram {
    // 1 µs .. ~65 ms: a policy decision, an audit append.
    Histogram::new(exponential_buckets(0.000_001, 2.0, 17))
}

fn duration_buckets() -> Histogram {
    // 1 ms .. ~4.7 h
    Histogram::new(exponential_buckets(0.001, 4.0, 13))
}

/// Identity cache outcome (`hit`, `miss`), by identity source.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityCacheLabels {
    pub source: &'static str,
    pub result: &'static str,
}

/// A TokenReview's result: `authenticated`, or a failure reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    pub result: &'static str,
}

/// Why a token review did not yield an identity (see
/// `identity::kubernetes::ReviewError::reason`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewFailureLabels {
    pub reason: &'static str,
}

/// A PostgreSQL client's token check (`client_auth: service_account_token`):
/// `ok` or why it failed (see `pgauth::TokenAuthError::result`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientAuthLabels {
    pub target: String,
    pub result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub client_auth: Family<ClientAuthLabels, Counter>,
    pub identity_cache: Family<IdentityCacheLabels, Counter>,
    pub token_review: Family<ReviewLabels, Histogram, Buckets>,
    pub token_review_failures: Family<ReviewFailureLabels, Counter>,
    /// Pods of this node known to the Kubernetes pod index.
    pub pods_known: Gauge,
    pub connections: Family<ConnLabels, Counter>,
    pub active: Family<TargetLabels, Gauge>,
    pub failures: Family<FailureLabels, Counter>,
    pub bytes: Family<BytesLabels, Counter>,
    pub upstream_connect: Family<TargetLabels, Histogram, Buckets>,
    pub duration: Family<TargetLabels, Histogram, Buckets>,
    pub decisions: Family<DecisionLabels, Counter>,
    pub approvals: Family<ApprovalLabels, Counter>,
    pub approvals_pending: Gauge,
    pub policy_reloads: Family<ReloadLabels, Counter>,
    /// Time to decide one statement (cache hit or full classification).
    pub decision_time: Family<TargetLabels, Histogram, Buckets>,
    /// Time until an audit record is durable (group commit included).
    pub audit_append: Histogram,
    pub audit_append_failures: Counter,
    pub policy_version: Gauge,
    kernel_events: Family<EventLabels, Counter>,
    conntrack_entries: Gauge,
    cgroups_known: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("interceptor");
        let m = Metrics {
            connections: Family::default(),
            active: Family::default(),
            failures: Family::default(),
            bytes: Family::default(),
            upstream_connect: Family::new_with_constructor(Buckets(latency_buckets)),
            duration: Family::new_with_constructor(Buckets(duration_buckets)),
            decisions: Family::default(),
            approvals: Family::default(),
            approvals_pending: Gauge::default(),
            policy_reloads: Family::default(),
            decision_time: Family::new_with_constructor(Buckets(fast_buckets)),
            audit_append: fast_buckets(),
            audit_append_failures: Counter::default(),
            policy_version: Gauge::default(),
            kernel_events: Family::default(),
            conntrack_entries: Gauge::default(),
            cgroups_known: Gauge::default(),
            identity_cache: Family::default(),
            token_review: Family::new_with_constructor(Buckets(latency_buckets)),
            token_review_failures: Family::default(),
            pods_known: Gauge::default(),
            client_auth: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "Redirected connections accepted",
            m.connections.clone(),
        );
        registry.register(
            "connections_active",
            "Redirected connections open now",
            m.active.clone(),
        );
        registry.register(
            "connection_failures",
            "Redirected connections that failed, by reason",
            m.failures.clone(),
        );
        registry.register("bytes", "Bytes carried, by direction", m.bytes.clone());
        registry.register(
            "upstream_connect_seconds",
            "Time to connect to the original destination",
            m.upstream_connect.clone(),
        );
        registry.register(
            "connection_duration_seconds",
            "Lifetime of redirected connections",
            m.duration.clone(),
        );
        registry.register(
            "decisions",
            "Policy decisions on statements, by action and rule",
            m.decisions.clone(),
        );
        registry.register(
            "approvals",
            "Approval requests and their outcomes",
            m.approvals.clone(),
        );
        registry.register(
            "approvals_pending",
            "Operations held now, waiting for an approval",
            m.approvals_pending.clone(),
        );
        registry.register(
            "decision_seconds",
            "Time to decide one statement, by target (cached decisions included)",
            m.decision_time.clone(),
        );
        registry.register(
            "audit_append_seconds",
            "Time until an audit record is durable on node storage",
            m.audit_append.clone(),
        );
        registry.register(
            "audit_append_failures",
            "Audit records that could not be written",
            m.audit_append_failures.clone(),
        );
        registry.register(
            "policy_reloads",
            "Policy file reload attempts, by result (a rejected policy leaves the old one enforcing)",
            m.policy_reloads.clone(),
        );
        registry.register(
            "policy_version",
            "Version of the policy in force (1 at start, +1 per applied reload)",
            m.policy_version.clone(),
        );
        registry.register(
            "kernel_events",
            "Events counted by the eBPF programs (redirected, skipped_mark, rejected, ...)",
            m.kernel_events.clone(),
        );
        registry.register(
            "bpf_conntrack_entries",
            "Live entries in the kernel's redirected-connection table",
            m.conntrack_entries.clone(),
        );
        registry.register(
            "cgroups_known",
            "cgroups in the selection index",
            m.cgroups_known.clone(),
        );
        registry.register(
            "identity_cache",
            "Identity resolutions answered from the cache (hit) or not (miss)",
            m.identity_cache.clone(),
        );
        registry.register(
            "token_review_seconds",
            "Latency of TokenReview requests to the API server, by result",
            m.token_review.clone(),
        );
        registry.register(
            "token_review_failures",
            "Service-account token verifications that failed, by reason",
            m.token_review_failures.clone(),
        );
        registry.register(
            "kubernetes_pods_known",
            "Pods of this node in the Kubernetes pod index",
            m.pods_known.clone(),
        );
        registry.register(
            "client_auth",
            "PostgreSQL client authentications by service-account token, by target and result",
            m.client_auth.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Copies kernel-side figures in; called right before a scrape is encoded.
    pub fn set_kernel(
        &self,
        events: &[(&'static str, u64)],
        conntrack_entries: usize,
        cgroups_known: usize,
    ) {
        for (event, v) in events {
            self.kernel_events
                .get_or_create(&EventLabels { event })
                .inner()
                .store(*v, Ordering::Relaxed);
        }
        self.conntrack_entries.set(conntrack_entries as i64);
        self.cgroups_known.set(cgroups_known as i64);
    }

    /// OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_and_labels() {
        let m = Metrics::new();
        let t = TargetLabels {
            target: "db".into(),
            protocol: "tcp",
        };
        m.connections
            .get_or_create(&ConnLabels {
                identity: "shop/orders".into(),
                target: "db".into(),
                protocol: "tcp",
                intercepted: true,
            })
            .inc();
        m.bytes
            .get_or_create(&BytesLabels {
                target: "db".into(),
                direction: Direction::Up,
            })
            .inc_by(42);
        m.failures
            .get_or_create(&FailureLabels {
                target: "db".into(),
                reason: Failure::UpstreamConnect,
            })
            .inc();
        m.upstream_connect.get_or_create(&t).observe(0.001);
        m.set_kernel(&[("redirected", 7)], 3, 5);
        let text = m.encode();
        for needle in [
            "interceptor_connections_total{identity=\"shop/orders\",target=\"db\",protocol=\"tcp\",intercepted=\"true\"} 1",
            "interceptor_bytes_total{target=\"db\",direction=\"up\"} 42",
            "interceptor_connection_failures_total{target=\"db\",reason=\"upstream_connect\"} 1",
            "interceptor_kernel_events_total{event=\"redirected\"} 7",
            "interceptor_bpf_conntrack_entries 3",
            "interceptor_upstream_connect_seconds_count{target=\"db\",protocol=\"tcp\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
        }
    }

    /// The README's metrics table lists every family the daemon exports,
    /// and nothing else (what SREs build dashboards from).
    #[test]
    fn the_readme_lists_every_metric() {
        // Families without a sample yet are not encoded: the names are read
        // from the registrations themselves.
        let source = include_str!("metrics.rs");
        let code = source.split("#[cfg(test)]").next().unwrap_or(source);
        let exported: std::collections::BTreeSet<String> = code
            .split("registry.register(")
            .skip(1)
            .filter_map(|call| call.split('"').nth(1))
            .map(str::to_owned)
            .collect();
        let readme = include_str!("../../README.md");
        let section = readme
            .split("## Metrics and health")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("a metrics section");
        let documented: std::collections::BTreeSet<String> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .map(|m| m.strip_suffix("_total").unwrap_or(m).to_owned())
            .collect();
        assert!(exported.len() > 10, "{exported:?}");
        assert_eq!(documented, exported);
    }
}
