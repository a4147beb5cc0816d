//! Policy: who may do what, where. Knows nothing of sockets or wire formats: it
//! decides on an identity, a target and a classified operation.
//!
//! Rules select who (identity `namespace/service-account` globs), where (target
//! names) and what (for SQL: statement kinds, tables, functions) and carry an
//! action. Precedence is deterministic:
//!
//! 1. a matching `deny` rule wins over any `allow` (the first such rule in file
//!    order is reported);
//! 2. otherwise the first matching `allow`;
//! 3. otherwise the default (deny unless configured).
//!
//! Allow rules are conservative: a statement is allowed only if *every* table it
//! touches and *every* function it calls is within the rule's lists (when the rule
//! has lists), and never if it carries a risky flag (COPY PROGRAM / file, opaque
//! code, dangerous functions, LOAD) unless the rule says `risky: true`. Deny rules
//! match on *any* table or function. Unparsable statements only match rules that
//! name the `unparsable` kind.

use globset::{Glob, GlobMatcher};
use serde::{Deserialize, Deserializer, de};

use crate::sql::{Flag, Kind, StatementInfo};

pub mod protocols;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// A glob over names (`shop/*`, `public.*`), matched case-sensitively.
#[derive(Debug, Clone)]
pub struct NameGlob {
    pub pattern: String,
    matcher: GlobMatcher,
}

impl NameGlob {
    pub fn is_match(&self, s: &str) -> bool {
        self.matcher.is_match(s)
    }
}

impl<'de> Deserialize<'de> for NameGlob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pattern = String::deserialize(d)?;
        let matcher = Glob::new(&pattern)
            .map_err(|e| de::Error::custom(format!("`{pattern}`: not a valid glob: {e}")))?
            .compile_matcher();
        Ok(NameGlob { pattern, matcher })
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SqlMatch {
    /// Statement kinds (`read`, `write`, `ddl`, `dcl`, `role_switch`,
    /// `transaction`, `utility`, `procedural`, `execute`, `unparsable`);
    /// empty = any parsable kind.
    #[serde(default)]
    pub kinds: Vec<Kind>,
    /// Table globs over `name` and `schema.name`; empty = any table.
    #[serde(default)]
    pub tables: Vec<NameGlob>,
    /// Function globs; empty = any function (allow rules still refuse
    /// dangerous ones unless `risky`).
    #[serde(default)]
    pub functions: Vec<NameGlob>,
    /// Allow rules: also allow statements with risky flags.
    #[serde(default)]
    pub risky: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: String,
    /// Identity globs (`namespace/service-account`); empty = anyone.
    #[serde(default)]
    pub identities: Vec<NameGlob>,
    /// Target names (globs); empty = every target.
    #[serde(default)]
    pub targets: Vec<NameGlob>,
    #[serde(default)]
    pub sql: SqlMatch,
    /// Redis command matcher: the rule then applies only to Redis commands.
    #[serde(default)]
    pub redis: Option<protocols::RedisMatch>,
    /// HTTP request matcher: the rule then applies only to HTTP requests.
    #[serde(default)]
    pub http: Option<protocols::HttpMatch>,
    pub action: Action,
    /// One line shown with decisions this rule makes.
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default = "default_action")]
    pub default: Action,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

fn default_action() -> Action {
    Action::Deny
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            default: Action::Deny,
            rules: Vec::new(),
        }
    }
}

/// The outcome for one operation, with the rule that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// Rule id, or `default`.
    pub rule: String,
    pub reason: String,
}

/// Who and where an operation happens.
pub struct Context<'a> {
    /// `namespace/service-account`, or `None` for an unidentified client.
    pub identity: Option<&'a str>,
    pub target: &'a str,
}

fn names_of(t: &crate::sql::QualifiedName) -> [String; 2] {
    [t.name().to_string(), t.parts.join(".")]
}

fn any_glob(globs: &[NameGlob], names: &[String]) -> bool {
    globs.iter().any(|g| names.iter().any(|n| g.is_match(n)))
}

fn is_risky(f: &Flag) -> bool {
    matches!(
        f,
        Flag::CopyProgram
            | Flag::CopyFile
            | Flag::OpaqueCode
            | Flag::DangerousFunction(_)
            | Flag::LoadsLibrary
    )
}

impl Rule {
    fn applies_to(&self, ctx: &Context<'_>) -> bool {
        let who = self.identities.is_empty()
            || ctx
                .identity
                .is_some_and(|i| self.identities.iter().any(|g| g.is_match(i)));
        let where_ = self.targets.is_empty() || self.targets.iter().any(|g| g.is_match(ctx.target));
        who && where_
    }

    fn matches_statement(&self, s: &StatementInfo) -> bool {
        if self.redis.is_some() || self.http.is_some() {
            return false;
        }
        let m = &self.sql;
        let kind_ok = if m.kinds.is_empty() {
            s.kind != Kind::Unparsable
        } else {
            m.kinds.contains(&s.kind)
        };
        if !kind_ok {
            return false;
        }
        match self.action {
            Action::Deny => {
                let tables = m.tables.is_empty()
                    || s.tables
                        .iter()
                        .any(|t| any_glob(&m.tables, &names_of(&t.table)));
                let funcs = m.functions.is_empty()
                    || s.functions
                        .iter()
                        .any(|f| any_glob(&m.functions, &names_of(f)));
                tables && funcs
            }
            Action::Allow => {
                let tables = m.tables.is_empty()
                    || s.tables
                        .iter()
                        .all(|t| any_glob(&m.tables, &names_of(&t.table)));
                let funcs = m.functions.is_empty()
                    || s.functions
                        .iter()
                        .all(|f| any_glob(&m.functions, &names_of(f)));
                let risky_ok = m.risky || !s.flags.iter().any(is_risky);
                tables && funcs && risky_ok
            }
        }
    }

    fn reason(&self) -> String {
        self.description
            .clone()
            .unwrap_or_else(|| format!("rule `{}` ({})", self.id, self.action.as_str()))
    }
}

impl Policy {
    /// Parses and checks a policy (YAML); errors name line and column.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let p: Policy = serde_yaml::from_str(text).map_err(|e| match e.location() {
            Some(l) => format!("line {}, column {}: {}", l.line(), l.column(), e),
            None => e.to_string(),
        })?;
        p.validate()?;
        Ok(p)
    }

    /// Checks what the schema cannot: rule ids are unique.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for r in &self.rules {
            if !seen.insert(r.id.as_str()) {
                return Err(format!("duplicate rule id `{}`", r.id));
            }
        }
        Ok(())
    }

    /// Decides one SQL statement.
    pub fn decide_statement(&self, ctx: &Context<'_>, s: &StatementInfo) -> Decision {
        let mut allow: Option<&Rule> = None;
        for r in self
            .rules
            .iter()
            .filter(|r| r.applies_to(ctx) && r.matches_statement(s))
        {
            match r.action {
                Action::Deny => {
                    return Decision {
                        action: Action::Deny,
                        rule: r.id.clone(),
                        reason: r.reason(),
                    };
                }
                Action::Allow => {
                    allow.get_or_insert(r);
                }
            }
        }
        match allow {
            Some(r) => Decision {
                action: Action::Allow,
                rule: r.id.clone(),
                reason: r.reason(),
            },
            None => Decision {
                action: self.default,
                rule: "default".into(),
                reason: if s.kind == Kind::Unparsable {
                    format!(
                        "statement could not be classified ({})",
                        s.error.as_deref().unwrap_or("unparsable")
                    )
                } else {
                    "no rule allows this statement".into()
                },
            },
        }
    }

    /// Decides a whole simple-query string: the first denied statement decides
    /// the whole (PostgreSQL runs it as one implicit transaction).
    pub fn decide_statements<'s>(
        &self,
        ctx: &Context<'_>,
        stmts: impl IntoIterator<Item = &'s StatementInfo>,
    ) -> Decision {
        let mut last = None;
        for s in stmts {
            let d = self.decide_statement(ctx, s);
            if d.action == Action::Deny {
                return d;
            }
            last = Some(d);
        }
        // An empty query string is harmless: the server answers EmptyQueryResponse.
        last.unwrap_or(Decision {
            action: Action::Allow,
            rule: "empty".into(),
            reason: "empty query".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::classify;

    const POLICY: &str = r#"
default: deny
rules:
  - id: orders-read
    identities: ["shop/orders-*"]
    targets: ["customers-db"]
    sql: { kinds: [read, transaction, utility], tables: ["customers", "public.customers", "orders"] }
    action: allow
  - id: orders-write-orders
    identities: ["shop/orders-*"]
    sql: { kinds: [write], tables: ["orders"] }
    action: allow
  - id: no-delete
    sql: { kinds: [write], tables: ["customers"] }
    action: deny
    description: customer records are never changed by workloads
  - id: no-file-read
    sql: { functions: ["pg_read_file"] }
    action: deny
"#;

    fn decide(identity: &str, target: &str, sql: &str) -> (Action, String) {
        let p = Policy::parse(POLICY).unwrap();
        let c = classify(sql);
        let d = p.decide_statements(
            &Context {
                identity: Some(identity),
                target,
            },
            &c.statements,
        );
        (d.action, d.rule)
    }

    #[test]
    fn precedence_table() {
        use Action::*;
        let table = [
            (
                "shop/orders-api",
                "customers-db",
                "SELECT * FROM customers",
                (Allow, "orders-read"),
            ),
            (
                "shop/orders-api",
                "customers-db",
                "select email from public.customers",
                (Allow, "orders-read"),
            ),
            (
                "shop/orders-api",
                "customers-db",
                "SELECT * FROM customers JOIN secrets ON true",
                (Deny, "default"),
            ),
            (
                "shop/orders-api",
                "other-db",
                "SELECT * FROM customers",
                (Deny, "default"),
            ),
            (
                "shop/billing",
                "customers-db",
                "SELECT * FROM customers",
                (Deny, "default"),
            ),
            (
                "shop/orders-api",
                "customers-db",
                "DELETE FROM customers",
                (Deny, "no-delete"),
            ),
            (
                "shop/orders-api",
                "customers-db",
                "INSERT INTO orders VALUES (1)",
                (Allow, "orders-write-orders"),
            ),
            // deny beats allow even when an allow rule matches too
            (
                "shop/orders-api",
                "customers-db",
                "WITH x AS (DELETE FROM customers RETURNING 1) SELECT * FROM orders",
                (Deny, "no-delete"),
            ),
            (
                "shop/orders-api",
                "customers-db",
                "SELECT 1; DELETE FROM customers",
                (Deny, "no-delete"),
            ),
            (
                "shop/orders-api",
                "customers-db",
                "SELECT pg_read_file('/etc/passwd')",
                (Deny, "no-file-read"),
            ),
            // risky flags are not allowed by a plain allow rule
            (
                "shop/orders-api",
                "customers-db",
                "COPY orders TO PROGRAM 'curl x'",
                (Deny, "default"),
            ),
            (
                "shop/orders-api",
                "customers-db",
                "SELECT FROM WHERE",
                (Deny, "default"),
            ),
            (
                "shop/orders-api",
                "customers-db",
                "BEGIN; SELECT * FROM orders; COMMIT",
                (Allow, "orders-read"),
            ),
        ];
        for (who, target, sql, (action, rule)) in table {
            assert_eq!(
                decide(who, target, sql),
                (action, rule.to_string()),
                "{who} {target} {sql}"
            );
        }
    }

    #[test]
    fn errors_name_the_place() {
        let e = Policy::parse("rules:\n  - id: a\n    action: permit\n").unwrap_err();
        assert!(e.starts_with("line 3") && e.contains("permit"), "{e}");
        let e = Policy::parse("rules:\n  - {id: a, action: allow}\n  - {id: a, action: deny}\n")
            .unwrap_err();
        assert!(e.contains("duplicate rule id `a`"), "{e}");
    }
}
