//! Selecting access records and summarising them for review: the filters of
//! `interceptor audit query/export`, the per-identity access review of
//! `audit report`, and the session view of `interceptor sessions`.
//!
//! Everything here works on decoded records and knows nothing of where they came
//! from (the index or a scan of the segments).

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::{
    format::{Hash, hex},
    record::{AccessRecord, Decision, Outcome, Protocol, ResponseRecord, ResponseSummary},
};

/// A time argument could not be understood.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid time {0:?}: give RFC 3339 (2025-06-01T12:00:00Z), a date (2025-06-01), `now`, or an age such as 1h, 30m, 2d"
)]
pub struct TimeError(pub String);

/// Parse a time argument into nanoseconds since the epoch: RFC 3339, a date, `now`,
/// or a duration meaning that long before `now`.
pub fn parse_time(s: &str, now: SystemTime) -> Result<u64, TimeError> {
    let s = s.trim();
    let t = if s == "now" {
        now
    } else if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        t
    } else if let Ok(t) = humantime::parse_rfc3339_weak(&format!("{s}T00:00:00Z")) {
        t
    } else if let Ok(d) = humantime::parse_duration(s.strip_suffix(" ago").unwrap_or(s)) {
        now.checked_sub(d).unwrap_or(UNIX_EPOCH)
    } else {
        return Err(TimeError(s.to_string()));
    };
    Ok(t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)))
}

/// RFC 3339 with milliseconds, UTC.
pub fn format_time(ns: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}

/// Which decisions `--decision` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DecisionFilter {
    /// Every decision that let the operation through (allow, allow-masked, approved).
    Allow,
    Deny,
    RequireApproval,
}

impl DecisionFilter {
    pub fn matches(self, d: &Decision) -> bool {
        match self {
            DecisionFilter::Allow => matches!(
                d,
                Decision::Allow | Decision::AllowMasked | Decision::Approved
            ),
            DecisionFilter::Deny => *d == Decision::Deny,
            DecisionFilter::RequireApproval => *d == Decision::RequireApproval,
        }
    }
}

/// `--identity NS/SA`, or `NS/*` for every service account of a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityFilter {
    pub namespace: String,
    /// None: any service account.
    pub service_account: Option<String>,
}

impl std::str::FromStr for IdentityFilter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (ns, sa) = s
            .split_once('/')
            .ok_or_else(|| format!("identity {s:?} is not NAMESPACE/SERVICEACCOUNT"))?;
        if ns.is_empty() || sa.is_empty() {
            return Err(format!("identity {s:?} is not NAMESPACE/SERVICEACCOUNT"));
        }
        Ok(IdentityFilter {
            namespace: ns.to_string(),
            service_account: (sa != "*").then(|| sa.to_string()),
        })
    }
}

impl std::fmt::Display for IdentityFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}",
            self.namespace,
            self.service_account.as_deref().unwrap_or("*")
        )
    }
}

/// The conditions of a query; every set field must match. Times are inclusive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    pub identity: Option<IdentityFilter>,
    pub target: Option<String>,
    pub since_ns: Option<u64>,
    pub until_ns: Option<u64>,
    pub session: Option<String>,
    pub decision: Option<DecisionFilter>,
}

impl Filter {
    pub fn matches(&self, r: &AccessRecord) -> bool {
        self.identity.as_ref().is_none_or(|i| {
            r.identity.namespace == i.namespace
                && i.service_account
                    .as_ref()
                    .is_none_or(|sa| *sa == r.identity.service_account)
        }) && self.target.as_ref().is_none_or(|t| *t == r.target)
            && self.since_ns.is_none_or(|t| r.time_ns >= t)
            && self.until_ns.is_none_or(|t| r.time_ns <= t)
            && self.session.as_ref().is_none_or(|s| *s == r.session_id)
            && self.decision.is_none_or(|d| d.matches(&r.decision))
    }
}

/// An access record and where it is in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub segment: u64,
    pub offset: u64,
    pub seq: u64,
    pub hash: Hash,
    pub record: AccessRecord,
}

/// A recorded response and its place in the log.
#[derive(Debug, Clone)]
pub struct ResponseHit {
    pub segment: u64,
    pub offset: u64,
    pub seq: u64,
    pub hash: Hash,
    pub record: ResponseRecord,
}

/// One JSON object per response: the record's fields (session, connection,
/// summary as recorded, i.e. already masked), `"kind":"response"`, its time
/// and its place in the log.
pub fn response_json(h: &ResponseHit) -> serde_json::Value {
    let mut v = serde_json::to_value(&h.record).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.insert("kind".into(), "response".into());
        m.insert("time".into(), format_time(h.record.time_ns).into());
        m.insert("segment".into(), h.segment.into());
        m.insert("offset".into(), h.offset.into());
        m.insert("seq".into(), h.seq.into());
        m.insert("hash".into(), hex(&h.hash).into());
    }
    v
}

/// A response as `audit tail` prints it: time, session and connection, then
/// the summary lines of a replay (result/reply/response, columns, rows).
pub fn response_text(r: &ResponseRecord) -> String {
    let mut s = format!(
        "{} session {} conn {}",
        format_time(r.time_ns),
        r.session_id,
        r.connection_id
    );
    for (i, l) in response_lines("", r).iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        s.push_str(l);
    }
    s.push('\n');
    s
}

/// Order hits by time, then by position in the log, and keep the newest `limit`.
pub fn finish(mut hits: Vec<Hit>, limit: Option<usize>) -> Vec<Hit> {
    hits.sort_by_key(|h| (h.record.time_ns, h.segment, h.offset));
    if let Some(n) = limit
        && hits.len() > n
    {
        hits.drain(..hits.len() - n);
    }
    hits
}

pub fn identity_text(r: &AccessRecord) -> String {
    if r.identity.namespace.is_empty() && r.identity.service_account.is_empty() {
        // Unattributed: the pod's cgroup is all that is known.
        format!("unknown({})", r.identity.pod)
    } else {
        format!("{}/{}", r.identity.namespace, r.identity.service_account)
    }
}

pub fn decision_text(d: &Decision) -> &'static str {
    match d {
        Decision::Allow => "allow",
        Decision::AllowMasked => "allow-masked",
        Decision::Deny => "deny",
        Decision::RequireApproval => "require-approval",
        Decision::Approved => "approved",
    }
}

pub fn protocol_text(p: &Protocol) -> String {
    match p {
        Protocol::Postgres => "postgres".into(),
        Protocol::Mysql => "mysql".into(),
        Protocol::Http => "http".into(),
        Protocol::Redis => "redis".into(),
        Protocol::Tcp => "tcp".into(),
        Protocol::Other(s) => s.clone(),
    }
}

pub fn outcome_text(o: &Option<Outcome>) -> String {
    match o {
        None => "-".into(),
        Some(Outcome::Rows(n)) => format!("rows={n}"),
        Some(Outcome::Error(e)) => format!("error: {e}"),
    }
}

/// The statement description with runs of whitespace collapsed, so the same
/// statement written differently is counted once.
pub fn normalise_operation(op: &str) -> String {
    op.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One JSON object per hit: the record's fields plus its place in the log.
pub fn hit_json(h: &Hit) -> serde_json::Value {
    let mut v = serde_json::to_value(&h.record).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.insert("time".into(), format_time(h.record.time_ns).into());
        m.insert("segment".into(), h.segment.into());
        m.insert("offset".into(), h.offset.into());
        m.insert("seq".into(), h.seq.into());
        m.insert("hash".into(), hex(&h.hash).into());
    }
    v
}

/// Cut `s` to at most `max` characters, marking the cut.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// Lay out rows as columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(w - c.chars().count() + 2));
            }
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// The query result as a table.
pub fn hits_table(hits: &[Hit]) -> String {
    let rows: Vec<Vec<String>> = hits
        .iter()
        .map(|h| {
            let r = &h.record;
            vec![
                format_time(r.time_ns),
                identity_text(r),
                r.target.clone(),
                protocol_text(&r.protocol),
                clip(&normalise_operation(&r.operation), 60),
                decision_text(&r.decision).to_string(),
                r.rule_id.clone().unwrap_or_else(|| "-".into()),
                r.approval_ref.clone().unwrap_or_else(|| "-".into()),
                outcome_text(&r.outcome),
            ]
        })
        .collect();
    table(
        &[
            "TIME",
            "IDENTITY",
            "TARGET",
            "PROTOCOL",
            "OPERATION",
            "DECISION",
            "RULE",
            "APPROVAL",
            "OUTCOME",
        ],
        &rows,
    )
}

/// Access review of one identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IdentityReview {
    pub identity: String,
    pub records: u64,
    pub first_seen: String,
    pub last_seen: String,
    #[serde(skip)]
    first_ns: u64,
    #[serde(skip)]
    last_ns: u64,
    pub targets: BTreeMap<String, u64>,
    /// Normalised statement description -> decision -> count.
    pub operations: BTreeMap<String, BTreeMap<String, u64>>,
    pub decisions: BTreeMap<String, u64>,
    pub rules: BTreeMap<String, u64>,
    /// Approval reference -> operations it let through.
    pub approvals: BTreeMap<String, u64>,
    pub pods: BTreeMap<String, u64>,
}

/// Aggregate records per identity, ordered by identity.
pub fn review<'a>(records: impl IntoIterator<Item = &'a AccessRecord>) -> Vec<IdentityReview> {
    let mut by: BTreeMap<String, IdentityReview> = BTreeMap::new();
    for r in records {
        let id = identity_text(r);
        let e = by.entry(id.clone()).or_insert_with(|| IdentityReview {
            identity: id,
            first_ns: u64::MAX,
            ..IdentityReview::default()
        });
        e.records += 1;
        e.first_ns = e.first_ns.min(r.time_ns);
        e.last_ns = e.last_ns.max(r.time_ns);
        *e.targets.entry(r.target.clone()).or_default() += 1;
        let d = decision_text(&r.decision).to_string();
        *e.operations
            .entry(normalise_operation(&r.operation))
            .or_default()
            .entry(d.clone())
            .or_default() += 1;
        *e.decisions.entry(d).or_default() += 1;
        if let Some(rule) = &r.rule_id {
            *e.rules.entry(rule.clone()).or_default() += 1;
        }
        if let Some(a) = &r.approval_ref {
            *e.approvals.entry(a.clone()).or_default() += 1;
        }
        if !r.identity.pod.is_empty() {
            *e.pods.entry(r.identity.pod.clone()).or_default() += 1;
        }
    }
    by.into_values()
        .map(|mut e| {
            e.first_seen = format_time(e.first_ns);
            e.last_seen = format_time(e.last_ns);
            e
        })
        .collect()
}

fn counts(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, n)| format!("{k} ({n})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The review as text, one block per identity.
pub fn review_text(reviews: &[IdentityReview]) -> String {
    let mut s = String::new();
    for r in reviews {
        s.push_str(&format!(
            "identity {}: {} operations, first seen {}, last seen {}\n",
            r.identity, r.records, r.first_seen, r.last_seen
        ));
        s.push_str(&format!("  targets:   {}\n", counts(&r.targets)));
        s.push_str(&format!("  decisions: {}\n", counts(&r.decisions)));
        s.push_str(&format!("  rules:     {}\n", counts(&r.rules)));
        s.push_str(&format!("  approvals: {}\n", counts(&r.approvals)));
        s.push_str(&format!("  pods:      {}\n", counts(&r.pods)));
        s.push_str("  operations:\n");
        for (op, ds) in &r.operations {
            let by: Vec<String> = ds.iter().map(|(d, n)| format!("{d} {n}")).collect();
            s.push_str(&format!("    {:<24}  {op}\n", by.join(", ")));
        }
    }
    if reviews.is_empty() {
        s.push_str("no access records in the period\n");
    }
    s
}

/// One session (a client connection's statements), as `sessions list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionSummary {
    pub session_id: String,
    pub identity: String,
    pub pod: String,
    pub target: String,
    pub connection_id: u64,
    pub start: String,
    pub end: String,
    pub statements: u64,
    pub denied: u64,
    #[serde(skip)]
    pub start_ns: u64,
}

/// Group records by session id (records without one are not part of a session).
pub fn sessions<'a>(records: impl IntoIterator<Item = &'a AccessRecord>) -> Vec<SessionSummary> {
    let mut by: BTreeMap<&str, (SessionSummary, u64)> = BTreeMap::new();
    for r in records {
        if r.session_id.is_empty() {
            continue;
        }
        let e = by.entry(&r.session_id).or_insert_with(|| {
            (
                SessionSummary {
                    session_id: r.session_id.clone(),
                    identity: identity_text(r),
                    pod: r.identity.pod.clone(),
                    target: r.target.clone(),
                    connection_id: r.connection_id,
                    start: String::new(),
                    end: String::new(),
                    statements: 0,
                    denied: 0,
                    start_ns: u64::MAX,
                },
                0,
            )
        });
        e.0.statements += 1;
        e.0.denied += u64::from(r.decision == Decision::Deny);
        e.0.start_ns = e.0.start_ns.min(r.time_ns);
        e.1 = e.1.max(r.time_ns);
    }
    let mut out: Vec<SessionSummary> = by
        .into_values()
        .map(|(mut s, end)| {
            s.start = format_time(s.start_ns);
            s.end = format_time(end);
            s
        })
        .collect();
    out.sort_by(|a, b| (a.start_ns, &a.session_id).cmp(&(b.start_ns, &b.session_id)));
    out
}

pub fn sessions_table(list: &[SessionSummary]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            vec![
                s.session_id.clone(),
                s.identity.clone(),
                s.target.clone(),
                s.start.clone(),
                s.end.clone(),
                s.statements.to_string(),
                s.denied.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "SESSION",
            "IDENTITY",
            "TARGET",
            "START",
            "END",
            "STATEMENTS",
            "DENIED",
        ],
        &rows,
    )
}

/// `+S.mmms`: a time relative to the session's first record.
fn rel_text(t: u64, t0: u64) -> String {
    let rel = t.saturating_sub(t0);
    format!(
        "+{}.{:03}s",
        rel / 1_000_000_000,
        (rel % 1_000_000_000) / 1_000_000
    )
}

fn cell(v: &Option<String>) -> String {
    v.as_ref()
        .map_or_else(|| "NULL".to_string(), |s| clip(s, 60))
}

/// The lines of one recorded response (indented under the `rel` column).
pub fn response_lines(rel: &str, r: &ResponseRecord) -> Vec<String> {
    // Times come from the record's place on the relative time line; its
    // duration (first to last byte sent) adds little to a replay.
    let pad = " ".repeat(rel.len() + 2);
    let mut out = Vec::new();
    match &r.summary {
        ResponseSummary::Sql(results) => {
            for (i, x) in results.iter().enumerate() {
                let head = if i == 0 {
                    format!("{rel}  result  ")
                } else {
                    format!("{pad}result  ")
                };
                let mut notes = Vec::new();
                if !x.columns.is_empty() {
                    notes.push(format!("{} rows", x.row_count));
                }
                if x.truncated {
                    notes.push("truncated".into());
                }
                let what = match (&x.error, &x.tag) {
                    (Some(e), _) => format!("ERROR {} {}", e.code, e.message),
                    (None, Some(t)) => t.clone(),
                    (None, None) => "(no command tag)".into(),
                };
                if notes.is_empty() {
                    out.push(format!("{head}{what}"));
                } else {
                    out.push(format!("{head}{what}  [{}]", notes.join("; ")));
                }
                if !x.columns.is_empty() {
                    out.push(format!("{pad}  | {} |", x.columns.join(" | ")));
                }
                for row in &x.rows {
                    let cells: Vec<String> = row.iter().map(cell).collect();
                    out.push(format!("{pad}  | {} |", cells.join(" | ")));
                }
            }
        }
        ResponseSummary::Redis(x) => {
            let mut line = format!("{rel}  reply   {}", x.kind);
            if let Some(v) = &x.value {
                line.push_str(&format!(" {}", clip(v, 120)));
            }
            if let Some(n) = x.elements {
                line.push_str(&format!(", {n} elements"));
            }
            if x.truncated {
                line.push_str("  [truncated]");
            }
            out.push(line);
        }
        ResponseSummary::Http(x) => {
            out.push(format!(
                "{rel}  response {} {} {}",
                x.status,
                x.content_type.as_deref().unwrap_or("-"),
                x.length
                    .map_or_else(|| "length unknown".to_string(), |n| format!("{n} bytes")),
            ));
        }
    }
    out
}

/// A session's statements and the responses recorded for them, in time order,
/// with their time relative to the first statement.
pub fn replay_text(session: &str, hits: &[Hit], responses: &[ResponseRecord]) -> String {
    let Some(first) = hits.first() else {
        return format!("no records for session {session}\n");
    };
    let r0 = &first.record;
    let mut s = format!(
        "session {session}: {} (pod {}) -> {} [{}], connection {}, {} statements, started {}\n",
        identity_text(r0),
        if r0.identity.pod.is_empty() {
            "-"
        } else {
            &r0.identity.pod
        },
        r0.target,
        protocol_text(&r0.protocol),
        r0.connection_id,
        hits.len(),
        format_time(r0.time_ns)
    );
    let t0 = r0
        .time_ns
        .min(responses.first().map_or(u64::MAX, |r| r.time_ns));
    let mut resp = responses.iter().peekable();
    for h in hits {
        let r = &h.record;
        while let Some(x) = resp.next_if(|x| x.time_ns < r.time_ns) {
            for l in response_lines(&rel_text(x.time_ns, t0), x) {
                s.push_str(&l);
                s.push('\n');
            }
        }
        let mut line = format!(
            "{}  {:<7} {}",
            rel_text(r.time_ns, t0),
            decision_text(&r.decision),
            normalise_operation(&r.operation)
        );
        let mut notes = Vec::new();
        if let Some(rule) = &r.rule_id {
            notes.push(format!("rule {rule}"));
        }
        if let Some(a) = &r.approval_ref {
            notes.push(format!("approval {a}"));
        }
        if r.outcome.is_some() {
            notes.push(outcome_text(&r.outcome));
        }
        if !notes.is_empty() {
            line.push_str(&format!("  [{}]", notes.join("; ")));
        }
        s.push_str(&line);
        s.push('\n');
    }
    for x in resp {
        for l in response_lines(&rel_text(x.time_ns, t0), x) {
            s.push_str(&l);
            s.push('\n');
        }
    }
    if responses.is_empty() {
        s.push_str(
            "note: no responses are recorded for this session (audit.record_responses is off, or the log predates it)\n",
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::sample_access;

    fn rec(i: u64, ns: &str, sa: &str, target: &str, d: Decision) -> AccessRecord {
        let mut r = sample_access(i);
        r.identity.namespace = ns.into();
        r.identity.service_account = sa.into();
        r.target = target.into();
        r.decision = d;
        r
    }

    #[test]
    fn times_parse_absolute_and_relative() {
        let now = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
        let ns = |s| parse_time(s, now).unwrap();
        assert_eq!(ns("now"), 1_750_000_000 * 1_000_000_000);
        assert_eq!(ns("1h"), (1_750_000_000 - 3600) * 1_000_000_000);
        assert_eq!(ns("30m ago"), (1_750_000_000 - 1800) * 1_000_000_000);
        assert_eq!(ns("2d"), (1_750_000_000 - 2 * 86400) * 1_000_000_000);
        assert_eq!(ns("2025-06-15T15:06:40Z"), 1_750_000_000 * 1_000_000_000);
        assert_eq!(ns("2025-06-15"), (1_750_000_000 - 54_400) * 1_000_000_000);
        assert!(parse_time("yesterday-ish", now).is_err());
        assert_eq!(
            format_time(1_750_000_000_123_456_789),
            "2025-06-15T15:06:40.123Z"
        );
    }

    #[test]
    fn filters_combine() {
        let a = rec(1, "shop", "orders", "orders-db", Decision::Allow);
        let b = rec(2, "shop", "billing", "orders-db", Decision::Deny);
        let c = rec(3, "ops", "backup", "ledger-db", Decision::AllowMasked);
        let all = [&a, &b, &c];
        let sel = |f: &Filter| -> Vec<u64> {
            all.iter()
                .filter(|r| f.matches(r))
                .map(|r| r.time_ns - a.time_ns + 1)
                .collect()
        };
        let id = |s: &str| Some(s.parse::<IdentityFilter>().unwrap());
        assert_eq!(sel(&Filter::default()), vec![1, 2, 3]);
        assert_eq!(
            sel(&Filter {
                identity: id("shop/orders"),
                ..Filter::default()
            }),
            vec![1]
        );
        assert_eq!(
            sel(&Filter {
                identity: id("shop/*"),
                ..Filter::default()
            }),
            vec![1, 2]
        );
        assert_eq!(
            sel(&Filter {
                target: Some("orders-db".into()),
                decision: Some(DecisionFilter::Allow),
                ..Filter::default()
            }),
            vec![1]
        );
        assert_eq!(
            sel(&Filter {
                decision: Some(DecisionFilter::Allow),
                ..Filter::default()
            }),
            vec![1, 3]
        );
        assert_eq!(
            sel(&Filter {
                decision: Some(DecisionFilter::Deny),
                ..Filter::default()
            }),
            vec![2]
        );
        assert_eq!(
            sel(&Filter {
                since_ns: Some(b.time_ns),
                until_ns: Some(b.time_ns),
                ..Filter::default()
            }),
            vec![2]
        );
        assert_eq!(
            sel(&Filter {
                session: Some("nope".into()),
                ..Filter::default()
            }),
            Vec::<u64>::new()
        );
        assert!("shop".parse::<IdentityFilter>().is_err());
        assert!("/x".parse::<IdentityFilter>().is_err());
    }

    #[test]
    fn limit_keeps_the_newest_in_time_order() {
        let hits: Vec<Hit> = [5u64, 1, 3, 2, 4]
            .iter()
            .map(|&i| Hit {
                segment: 0,
                offset: i,
                seq: i,
                hash: [0; 32],
                record: sample_access(i),
            })
            .collect();
        let out = finish(hits, Some(2));
        assert_eq!(out.iter().map(|h| h.seq).collect::<Vec<_>>(), vec![4, 5]);
    }

    #[test]
    fn review_aggregates_per_identity() {
        let mut recs = vec![
            rec(10, "shop", "orders", "orders-db", Decision::Allow),
            rec(20, "shop", "orders", "orders-db", Decision::Deny),
            rec(5, "shop", "orders", "ledger-db", Decision::Approved),
            rec(7, "ops", "backup", "orders-db", Decision::Allow),
        ];
        recs[1].operation = "DELETE  FROM orders\n WHERE id = $1".into();
        recs[1].rule_id = Some("deny-writes".into());
        recs[2].approval_ref = Some("CHG-42".into());
        let r = review(&recs);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].identity, "ops/backup");
        let shop = &r[1];
        assert_eq!(shop.identity, "shop/orders");
        assert_eq!(shop.records, 3);
        assert_eq!(shop.first_seen, format_time(recs[2].time_ns));
        assert_eq!(shop.last_seen, format_time(recs[1].time_ns));
        assert_eq!(shop.targets["orders-db"], 2);
        assert_eq!(shop.targets["ledger-db"], 1);
        assert_eq!(shop.decisions["allow"], 1);
        assert_eq!(shop.decisions["deny"], 1);
        assert_eq!(shop.decisions["approved"], 1);
        assert_eq!(shop.rules["deny-writes"], 1);
        assert_eq!(shop.rules["orders-read"], 2);
        assert_eq!(shop.approvals["CHG-42"], 1);
        assert_eq!(
            shop.operations["DELETE FROM orders WHERE id = $1"]["deny"],
            1
        );
        let text = review_text(&r);
        assert!(
            text.contains("identity shop/orders: 3 operations"),
            "{text}"
        );
        assert!(
            text.contains("decisions: allow (1), approved (1), deny (1)"),
            "{text}"
        );
        assert!(
            text.contains("deny 1                    DELETE FROM orders WHERE id = $1"),
            "{text}"
        );
    }

    #[test]
    fn sessions_group_and_replay_with_relative_times() {
        let mut recs: Vec<AccessRecord> = (0..4).map(sample_access).collect();
        for (i, r) in recs.iter_mut().enumerate() {
            r.session_id = if i < 3 { "s-a".into() } else { String::new() };
            r.time_ns = 1_000_000_000_000 + i as u64 * 1_500_000_000;
        }
        recs[1].decision = Decision::Deny;
        let list = sessions(&recs);
        assert_eq!(list.len(), 1);
        assert_eq!((list[0].statements, list[0].denied), (3, 1));
        let hits: Vec<Hit> = recs[..3]
            .iter()
            .map(|r| Hit {
                segment: 0,
                offset: 0,
                seq: 0,
                hash: [0; 32],
                record: r.clone(),
            })
            .collect();
        let text = replay_text("s-a", &hits, &[]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("session s-a: shop/orders"), "{text}");
        assert!(lines[1].starts_with("+0.000s  allow"), "{text}");
        assert!(lines[2].starts_with("+1.500s  deny"), "{text}");
        assert!(lines[3].starts_with("+3.000s  allow"), "{text}");
        assert!(lines[4].starts_with("note: no responses"), "{text}");

        // Responses fall between the statements they follow, rows shown as sent.
        let mut r = crate::audit::record::sample_response(0);
        r.time_ns = recs[0].time_ns + 2_000_000;
        let mut late = crate::audit::record::sample_response(0);
        late.time_ns = recs[2].time_ns + 5_000_000;
        late.summary = ResponseSummary::Http(crate::audit::record::HttpResponse {
            status: 404,
            content_type: Some("text/plain".into()),
            length: Some(9),
        });
        let text = replay_text("s-a", &hits, &[r, late]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("+0.000s  allow"), "{text}");
        assert!(
            lines[2].starts_with("+0.002s  result  SELECT 2  [2 rows]"),
            "{text}"
        );
        assert_eq!(lines[3].trim(), "| id | email |", "{text}");
        assert_eq!(lines[4].trim(), "| 1 | [redacted] |", "{text}");
        assert_eq!(lines[5].trim(), "| NULL | NULL |", "{text}");
        assert!(lines[6].starts_with("+1.500s  deny"), "{text}");
        assert!(
            lines[8].starts_with("+3.005s  response 404 text/plain 9 bytes"),
            "{text}"
        );
        assert!(!text.contains("note:"), "{text}");
    }
}
