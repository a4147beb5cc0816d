//! Policy against recorded traffic: `policy simulate` (what a candidate policy
//! would change) and `policy learn` (the least-privilege policy that allows
//! exactly what each identity was seen doing).
//!
//! Both read statement decisions from the audit log, whose operations are
//! literal-free statements that re-classify as the originals did: PostgreSQL
//! operations are the statement ([`crate::sql::normalize`]); MySQL ones
//! describe it, then give its text (`query write on [orders]: INSERT INTO
//! orders VALUES (?, ?)`). Policy code still knows nothing of storage: the
//! CLI reads the log and hands in [`Observed`] statements.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::SystemTime,
};

use serde::Serialize;

use super::{Action, Context, Policy};
use crate::sql::{self, Kind};

/// A recorded statement decision, as simulate and learn need it.
#[derive(Debug, Clone)]
pub struct Observed {
    /// `namespace/service-account`, or `None` for an unidentified client.
    pub identity: Option<String>,
    pub target: String,
    pub operation: String,
    /// Whose grammar the statement is in.
    pub dialect: Dialect,
    /// Whether the statement ran (allowed, masked or approved).
    pub ran: bool,
    pub rule: String,
}

/// The SQL dialect of an observed statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Mysql,
}

impl Observed {
    /// The statement classified as its server read it.
    fn classification(&self) -> sql::Classification {
        match self.dialect {
            Dialect::Postgres => sql::classify(&self.operation),
            // The text follows the tables' closing bracket. An operation
            // without one (or a table name holding `]: `) classifies as
            // unparsable: denied by simulate, left to a human by learn.
            Dialect::Mysql => sql::classify_mysql(
                self.operation
                    .split_once("]: ")
                    .map_or(self.operation.as_str(), |(_, text)| text),
            ),
        }
    }
}

/// One kind of change a candidate policy makes, with how often it happened.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Change {
    pub identity: Option<String>,
    pub target: String,
    pub operation: String,
    /// `allow` or `deny` as recorded, with the rule then.
    pub was: String,
    pub was_rule: String,
    pub now: String,
    pub now_rule: String,
    pub count: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Simulation {
    pub statements: u64,
    pub unchanged: u64,
    pub newly_denied: u64,
    pub newly_allowed: u64,
    /// Same outcome, decided by a different rule.
    pub rule_changed: u64,
    /// Recorded without a text that says what ran (a statement only
    /// PostgreSQL's tree could read whose literal-free form does not parse,
    /// such as `ALTER SEQUENCE s RESTART WITH $1`; COPY to a file): not
    /// re-decided, their recorded outcome stands. Read again, each would be
    /// unparsable, and a statement that ran would show as newly denied.
    pub not_replayable: u64,
    /// Newly denied and newly allowed operations (rule-only changes are counted).
    pub changes: Vec<Change>,
}

/// Re-decides every observed statement under `candidate` at `now`.
pub fn simulate(candidate: &Policy, observed: &[Observed], now: SystemTime) -> Simulation {
    let mut sim = Simulation::default();
    let mut changes: BTreeMap<(Option<String>, String, String, bool), Change> = BTreeMap::new();
    for o in observed {
        sim.statements += 1;
        if sql::has_unquoted_statement(&o.operation) {
            sim.not_replayable += 1;
            continue;
        }
        let c = o.classification();
        let d = candidate.decide_statements_at(
            &Context {
                identity: o.identity.as_deref(),
                target: &o.target,
            },
            &c.statements,
            now,
        );
        let allowed = d.action == Action::Allow;
        if allowed == o.ran {
            if d.rule == o.rule {
                sim.unchanged += 1;
            } else {
                sim.rule_changed += 1;
            }
            continue;
        }
        if allowed {
            sim.newly_allowed += 1;
        } else {
            sim.newly_denied += 1;
        }
        let key = (
            o.identity.clone(),
            o.target.clone(),
            o.operation.clone(),
            allowed,
        );
        changes
            .entry(key)
            .or_insert_with(|| Change {
                identity: o.identity.clone(),
                target: o.target.clone(),
                operation: o.operation.clone(),
                was: if o.ran { "allow" } else { "deny" }.into(),
                was_rule: o.rule.clone(),
                now: d.action.as_str().into(),
                now_rule: d.rule.clone(),
                count: 0,
            })
            .count += 1;
    }
    sim.changes = changes.into_values().collect();
    sim
}

#[derive(Serialize)]
struct LearnedSql {
    kinds: Vec<Kind>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tables: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    functions: Vec<String>,
}

#[derive(Serialize)]
struct LearnedRule {
    id: String,
    description: String,
    identities: Vec<String>,
    targets: Vec<String>,
    sql: LearnedSql,
    action: &'static str,
}

#[derive(Serialize)]
struct LearnedPolicy {
    default: &'static str,
    rules: Vec<LearnedRule>,
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// A policy (YAML) allowing, per identity, target and statement kind, exactly
/// the tables and functions seen in statements that ran. Unidentified clients
/// and risky statements (which a plain allow never covers) are left out and
/// listed in comments for a human to decide.
pub fn learn(observed: &[Observed]) -> String {
    type Key = (String, String, Kind);
    let mut seen: BTreeMap<Key, (BTreeSet<String>, BTreeSet<String>, u64)> = BTreeMap::new();
    let mut left_out: BTreeSet<String> = BTreeSet::new();
    for o in observed.iter().filter(|o| o.ran) {
        let Some(identity) = &o.identity else {
            left_out.insert(format!(
                "unidentified client on {}: {}",
                o.target, o.operation
            ));
            continue;
        };
        for s in o.classification().statements {
            if s.kind == Kind::Unparsable || s.flags.iter().any(super::is_risky) {
                left_out.insert(format!("{identity} on {}: {}", o.target, o.operation));
                continue;
            }
            let e = seen
                .entry((identity.clone(), o.target.clone(), s.kind))
                .or_default();
            e.0.extend(s.tables.iter().map(|t| t.table.parts.join(".")));
            e.1.extend(s.functions.iter().map(|f| f.parts.join(".")));
            e.2 += 1;
        }
    }
    let rules = seen
        .into_iter()
        .map(
            |((identity, target, kind), (tables, functions, n))| LearnedRule {
                id: format!(
                    "learned-{}-{}-{}",
                    slug(&identity),
                    slug(&target),
                    format!("{kind:?}").to_lowercase()
                ),
                description: format!("learned from {n} statements"),
                identities: vec![identity],
                targets: vec![target],
                sql: LearnedSql {
                    kinds: vec![kind],
                    tables: tables.into_iter().collect(),
                    functions: functions.into_iter().collect(),
                },
                action: "allow",
            },
        )
        .collect();
    let mut out = String::from(
        "# Proposed by `interceptor policy learn` from the audit log: it allows exactly\n\
         # what each identity was seen doing. Review before applying.\n",
    );
    for l in &left_out {
        out.push_str(&format!("# not learned (decide by hand): {l}\n"));
    }
    out.push_str(
        &serde_yaml::to_string(&LearnedPolicy {
            default: "deny",
            rules,
        })
        .unwrap_or_default(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(identity: &str, sql: &str, ran: bool, rule: &str) -> Observed {
        Observed {
            identity: Some(identity.into()),
            target: "db".into(),
            operation: sql::normalize(sql),
            dialect: Dialect::Postgres,
            ran,
            rule: rule.into(),
        }
    }

    fn traffic() -> Vec<Observed> {
        vec![
            obs(
                "shop/api",
                "SELECT name FROM customers WHERE id = 1",
                true,
                "r",
            ),
            obs(
                "shop/api",
                "SELECT name FROM customers WHERE id = 2",
                true,
                "r",
            ),
            obs("shop/api", "INSERT INTO orders VALUES (1, 2)", true, "w"),
            obs("shop/api", "DELETE FROM customers", false, "no-delete"),
            obs("shop/batch", "SELECT count(*) FROM orders", true, "r"),
        ]
    }

    #[test]
    fn learned_policy_allows_exactly_what_ran() {
        let yaml = learn(&traffic());
        let p = Policy::parse(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let sim = simulate(&p, &traffic(), SystemTime::now());
        // Everything that ran still runs; what was denied stays denied.
        assert_eq!((sim.newly_denied, sim.newly_allowed), (0, 0), "{yaml}");
        let d = |who: &str, q: &str| {
            let c = sql::classify(q);
            p.decide_statements(
                &Context {
                    identity: Some(who),
                    target: "db",
                },
                &c.statements,
            )
            .action
        };
        assert_eq!(d("shop/api", "SELECT email FROM customers"), Action::Allow);
        assert_eq!(
            d("shop/api", "INSERT INTO customers VALUES (1)"),
            Action::Deny
        );
        assert_eq!(d("shop/batch", "SELECT * FROM customers"), Action::Deny);
        assert_eq!(d("shop/api", "DELETE FROM customers"), Action::Deny);
    }

    #[test]
    fn simulate_reports_newly_denied_and_allowed() {
        let candidate = Policy::parse(
            "rules:\n  - {id: reads, identities: [\"shop/*\"], sql: {kinds: [read]}, action: allow}\n  - {id: deletes, sql: {kinds: [write], tables: [customers]}, action: allow}\n",
        )
        .unwrap();
        let sim = simulate(&candidate, &traffic(), SystemTime::now());
        assert_eq!(sim.statements, 5);
        assert_eq!(sim.newly_denied, 1, "{:?}", sim.changes);
        assert_eq!(sim.newly_allowed, 1, "{:?}", sim.changes);
        let denied = sim.changes.iter().find(|c| c.now == "deny").unwrap();
        assert_eq!(denied.operation, "INSERT INTO orders VALUES ($1, $2)");
        assert_eq!(
            (denied.was_rule.as_str(), denied.now_rule.as_str()),
            ("w", "default")
        );
        let allowed = sim.changes.iter().find(|c| c.now == "allow").unwrap();
        assert_eq!(allowed.now_rule, "deletes");
    }

    /// A statement recorded without its text (read from PostgreSQL's tree,
    /// its literal-free form would not parse) keeps its recorded outcome:
    /// read again it would be unparsable, and the same policy would show it
    /// newly denied.
    #[test]
    fn statements_recorded_without_text_are_not_re_decided() {
        let seq = obs(
            "shop/migrate",
            "ALTER SEQUENCE s RESTART WITH 5000",
            true,
            "ddl",
        );
        assert!(
            sql::has_unquoted_statement(&seq.operation),
            "{}",
            seq.operation
        );
        let vacuum = obs("shop/migrate", "VACUUM (ANALYZE) orders", true, "ddl");
        let policy =
            Policy::parse("rules:\n  - {id: ddl, sql: {kinds: [ddl, utility]}, action: allow}\n")
                .unwrap();
        let sim = simulate(&policy, &[seq.clone(), vacuum], SystemTime::now());
        assert_eq!(
            (
                sim.statements,
                sim.unchanged,
                sim.newly_denied,
                sim.not_replayable
            ),
            (2, 1, 0, 1),
            "{:?}",
            sim.changes
        );
        // Even under a policy that denies everything it stays as recorded.
        let none = Policy::parse("rules: []\n").unwrap();
        let sim = simulate(&none, &[seq], SystemTime::now());
        assert_eq!((sim.newly_denied, sim.not_replayable), (0, 1));
    }

    /// A MySQL record as the proxy writes it: description, then the text.
    fn mysql(identity: &str, operation: &str, ran: bool) -> Observed {
        Observed {
            identity: Some(identity.into()),
            target: "shop-db".into(),
            operation: operation.into(),
            dialect: Dialect::Mysql,
            ran,
            rule: "r".into(),
        }
    }

    #[test]
    fn mysql_statements_are_replayed_and_learned_in_their_own_grammar() {
        let traffic = vec![
            mysql(
                "shop/api",
                "execute write on [orders]: INSERT INTO orders VALUES (?, ?)",
                true,
            ),
            // Backtick-quoted names read as MySQL reads them.
            mysql(
                "shop/api",
                "query read on [customers]: SELECT `name` FROM `customers` WHERE id = ?",
                true,
            ),
            mysql(
                "shop/api",
                "query read on []: <unparsable statement>",
                false,
            ),
        ];
        let yaml = learn(&traffic);
        let p = Policy::parse(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert!(
            yaml.contains("- orders") && yaml.contains("- customers"),
            "{yaml}"
        );
        let sim = simulate(&p, &traffic, SystemTime::now());
        assert_eq!((sim.newly_denied, sim.newly_allowed), (0, 0), "{yaml}");

        let reads_only = Policy::parse(
            "rules:\n  - {id: reads, identities: [\"shop/*\"], sql: {kinds: [read]}, action: allow}\n",
        )
        .unwrap();
        let sim = simulate(&reads_only, &traffic, SystemTime::now());
        assert_eq!((sim.newly_denied, sim.newly_allowed), (1, 0));
        assert_eq!(
            sim.changes[0].operation,
            "execute write on [orders]: INSERT INTO orders VALUES (?, ?)"
        );
        // Read as PostgreSQL, the backticks would make it unparsable.
        assert_eq!(
            sql::classify("SELECT `name` FROM `customers`").statements[0].kind,
            Kind::Unparsable
        );
    }
}
