//! Policy: who may do what, where. Knows nothing of sockets or wire formats: it
//! decides on an identity, a target and a classified operation.
//!
//! Rules select who (identity `namespace/service-account` globs), where (target
//! names) and what (for SQL: statement kinds, tables, functions) and carry an
//! action. Precedence is deterministic:
//!
//! 1. a matching `deny` rule wins over any other;
//! 2. otherwise a matching `require_approval` (a human decides; it wins over
//!    `allow` so that a broad allow cannot bypass an approval rule);
//! 3. otherwise a matching `allow`;
//! 4. otherwise the default (deny unless configured).
//!
//! Among matching rules of the winning action, the most specific one decides
//! (and is reported): see [`Rule::specificity`]; equal specificity falls back to
//! file order. Rules bounded in time (`valid_from`, `valid_until`, RFC 3339)
//! match only inside their window, so a grant expires on its own.
//!
//! Allow rules are conservative: a statement is allowed only if *every* table it
//! touches and *every* function it calls is within the rule's lists (when the rule
//! has lists), and never if it carries a risky flag (COPY PROGRAM / file, opaque
//! code, dangerous functions, LOAD) unless the rule says `risky: true`. Deny and
//! require_approval rules match on *any* table or function. Unparsable statements only match rules that
//! name the `unparsable` kind.
//!
//! Columns (`sql.columns`, globs over `table.column` / `schema.table.column`,
//! see [`columns`]) follow the same asymmetry, fail closed: a deny or
//! require_approval rule with columns matches a statement that touches *any*
//! listed column, explicitly, through `*` (or a whole-row reference) on its
//! table, or by an unqualified name while the table is in the statement; an
//! allow rule with columns covers a statement only if *every* column it
//! touches on the tables the selectors name is listed, and `*` on such a table
//! only through `table.*`. The decision's reason names the column.
//!
//! `mask` rules never allow or deny: decisions skip them, and
//! [`Policy::masks_for`] collects those applying to a session (see
//! [`crate::masking`]).

pub mod cli;
pub mod columns;
pub mod control;
pub mod replay;
pub mod store;

use std::time::SystemTime;

use globset::{Glob, GlobMatcher};
use serde::{Deserialize, Deserializer, de};

use crate::{
    masking::{MaskPlan, MaskSpec},
    sql::{Flag, Kind, StatementInfo},
};

pub mod protocols;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Deny,
    /// Masks result data (see `mask:`); never decides a statement.
    Mask,
    /// Held until a human approves or denies it (see `crate::approvals`).
    RequireApproval,
}

impl Action {
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Mask => "mask",
            Action::RequireApproval => "require_approval",
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

    /// Whether a table or function this glob matches may be one of
    /// `schema`'s (the parts before `*` in [`QualifiedName::all_in_schema`];
    /// empty: the whole database). An unqualified glob names objects in
    /// every schema on the search path; a qualified one those of the schema
    /// it spells, and of any schema where that part is a pattern.
    fn may_name_one_in(&self, schema: &[String]) -> bool {
        let Some((qualifier, _)) = self.pattern.rsplit_once('.') else {
            return true;
        };
        match schema.last() {
            None => true,
            Some(s) => {
                qualifier.contains(GLOB_META) || qualifier.rsplit('.').next() == Some(s.as_str())
            }
        }
    }

    /// Whether this glob matches every table or function of `schema` (empty:
    /// of the database): `*`, `schema.*` or a literal prefix of `schema.`
    /// and `*`.
    fn names_all_in(&self, schema: &[String]) -> bool {
        let Some(prefix) = self.pattern.strip_suffix('*') else {
            return false;
        };
        if prefix.contains(GLOB_META) {
            return false;
        }
        prefix.is_empty()
            || (!schema.is_empty() && format!("{}.", schema.join(".")).starts_with(prefix))
    }

    /// 2 for a literal name, 1 for a pattern: literal selectors are more specific.
    fn specificity(&self) -> u32 {
        if self.pattern.contains(GLOB_META) {
            1
        } else {
            2
        }
    }
}

impl schemars::JsonSchema for NameGlob {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "NameGlob".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A glob over names: `*` any run of characters, `?` one, `[abc]`, `{a,b}`."
        })
    }
}

/// An RFC 3339 time (`2026-12-01T18:00:00Z`) bounding a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub SystemTime);

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text)
            .map(Timestamp)
            .map_err(|e| de::Error::custom(format!("`{text}`: not an RFC 3339 time: {e}")))
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_seconds(self.0))
    }
}

impl schemars::JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339 time, e.g. 2026-12-01T18:00:00Z"
        })
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

#[derive(Debug, Clone, Deserialize, Default, schemars::JsonSchema)]
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
    /// Column globs over `table.column` and `schema.table.column`
    /// (`customers.ssn`, `public.customers.*`, `*.email`); empty = any column.
    /// Deny: the statement touches any of them; allow: every column it
    /// touches on the tables named here is listed.
    #[serde(default)]
    pub columns: Vec<columns::ColumnGlob>,
    /// Allow rules: also allow statements with risky flags.
    #[serde(default)]
    pub risky: bool,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
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
    /// For `action: mask`: what to mask and how.
    #[serde(default)]
    pub mask: Option<MaskSpec>,
    /// One line shown with decisions this rule makes.
    #[serde(default)]
    pub description: Option<String>,
    /// The rule matches only from this time on (RFC 3339).
    #[serde(default)]
    pub valid_from: Option<Timestamp>,
    /// The rule matches only until this time (RFC 3339): an expiring grant.
    #[serde(default)]
    pub valid_until: Option<Timestamp>,
}

/// A policy: rules and the default for operations no rule matches.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
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

/// Characters that make a glob a pattern rather than a literal name.
const GLOB_META: [char; 5] = ['*', '?', '[', '{', '\\'];

/// For deny and approval: whether a table (or function) glob may name `t`.
/// A statement on every table of a schema (`s.*`) is one on each table any
/// glob could name there, so a deny on `secrets` holds for GRANT ... ON ALL
/// TABLES IN SCHEMA public and DROP SCHEMA public; likewise a grant on ALL
/// FUNCTIONS IN SCHEMA for a function rule.
fn may_name(globs: &[NameGlob], t: &crate::sql::QualifiedName) -> bool {
    match t.all_in_schema() {
        Some(schema) => globs.iter().any(|g| g.may_name_one_in(schema)),
        None => any_glob(globs, &names_of(t)),
    }
}

/// For allow: whether the table (or function) globs cover `t`; every one of
/// a schema only by a glob that matches them all (`*`, `s.*`).
fn covers(globs: &[NameGlob], t: &crate::sql::QualifiedName) -> bool {
    match t.all_in_schema() {
        Some(schema) => globs.iter().any(|g| g.names_all_in(schema)),
        None => any_glob(globs, &names_of(t)),
    }
}

pub(crate) fn is_risky(f: &Flag) -> bool {
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
    /// How narrowly the rule selects: literal identities and targets count more
    /// than patterns, and each constrained `what` (kinds, tables, functions)
    /// adds one. The more specific of two matching rules of the same action
    /// decides, so `allow shop/orders-api` explains a decision better than
    /// `allow shop/*`.
    pub fn specificity(&self) -> u32 {
        let sel = |g: &[NameGlob]| g.iter().map(NameGlob::specificity).min().unwrap_or(0);
        let m = &self.sql;
        4 * sel(&self.identities)
            + 2 * sel(&self.targets)
            + u32::from(!m.kinds.is_empty())
            + u32::from(!m.tables.is_empty())
            + u32::from(!m.functions.is_empty())
            + u32::from(!m.columns.is_empty())
    }

    /// Whether the rule's time window holds `now`.
    pub fn in_force(&self, now: SystemTime) -> bool {
        self.valid_from.is_none_or(|t| now >= t.0) && self.valid_until.is_none_or(|t| now < t.0)
    }

    fn applies_to(&self, ctx: &Context<'_>) -> bool {
        let who = self.identities.is_empty()
            || ctx
                .identity
                .is_some_and(|i| self.identities.iter().any(|g| g.is_match(i)));
        let where_ = self.targets.is_empty() || self.targets.iter().any(|g| g.is_match(ctx.target));
        who && where_
    }

    fn matches_statement(&self, s: &StatementInfo) -> bool {
        let m = &self.sql;
        self.matches_except_columns(s)
            && match self.action {
                Action::Deny | Action::RequireApproval => {
                    m.columns.is_empty() || columns::touched(&m.columns, s).is_some()
                }
                Action::Allow => columns::uncovered(&m.columns, s).is_none(),
                Action::Mask => false,
            }
    }

    fn matches_except_columns(&self, s: &StatementInfo) -> bool {
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
            Action::Deny | Action::RequireApproval => {
                let tables =
                    m.tables.is_empty() || s.tables.iter().any(|t| may_name(&m.tables, &t.table));
                let funcs =
                    m.functions.is_empty() || s.functions.iter().any(|f| may_name(&m.functions, f));
                tables && funcs
            }
            Action::Allow => {
                let tables =
                    m.tables.is_empty() || s.tables.iter().all(|t| covers(&m.tables, &t.table));
                let funcs =
                    m.functions.is_empty() || s.functions.iter().all(|f| covers(&m.functions, f));
                let risky_ok = m.risky || !s.flags.iter().any(is_risky);
                tables && funcs && risky_ok
            }
            Action::Mask => false,
        }
    }

    fn reason(&self) -> String {
        self.description
            .clone()
            .unwrap_or_else(|| format!("rule `{}` ({})", self.id, self.action.as_str()))
    }

    /// The reason, naming the column that made a column rule match.
    fn reason_for(&self, s: &StatementInfo) -> String {
        let hit = match self.action {
            Action::Deny | Action::RequireApproval => columns::touched(&self.sql.columns, s),
            _ => None,
        };
        match hit {
            Some(c) => format!("{}: column {c}", self.reason()),
            None => self.reason(),
        }
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

    /// Checks what the schema cannot: rule ids are unique and non-empty, time
    /// windows are not empty, `mask:` goes with (and only with) `action: mask`,
    /// and its globs and regexes compile.
    pub fn validate(&self) -> Result<(), String> {
        if self.default == Action::Mask {
            return Err("default must be allow or deny".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            if r.id.trim().is_empty() {
                return Err(format!("rules[{i}]: empty rule id"));
            }
            if !seen.insert(r.id.as_str()) {
                return Err(format!("duplicate rule id `{}`", r.id));
            }
            if let (Some(from), Some(until)) = (r.valid_from, r.valid_until)
                && until.0 <= from.0
            {
                return Err(format!(
                    "rule `{}`: valid_until {until} is not after valid_from {from}",
                    r.id
                ));
            }
            match (&r.mask, r.action) {
                (Some(m), Action::Mask) => {
                    m.compiled()
                        .map_err(|e| format!("rule `{}`: mask: {e}", r.id))?;
                }
                (None, Action::Mask) => {
                    return Err(format!(
                        "rule `{}`: action mask needs a `mask:` field",
                        r.id
                    ));
                }
                (Some(_), _) => {
                    return Err(format!("rule `{}`: `mask:` needs action mask", r.id));
                }
                (None, _) => {}
            }
        }
        Ok(())
    }

    /// The first rule-window boundary (`valid_from` / `valid_until`) after
    /// `t`: decisions made at `t` may change then, so caches must not outlive it.
    pub fn next_boundary(&self, t: SystemTime) -> Option<SystemTime> {
        self.rules
            .iter()
            .flat_map(|r| [r.valid_from, r.valid_until])
            .flatten()
            .map(|b| b.0)
            .filter(|b| *b > t)
            .min()
    }

    /// Every mask rule applying to this identity and target.
    pub fn masks_for(&self, ctx: &Context<'_>) -> MaskPlan {
        MaskPlan {
            specs: self
                .rules
                .iter()
                .filter(|r| {
                    r.action == Action::Mask && r.in_force(SystemTime::now()) && r.applies_to(ctx)
                })
                .filter_map(|r| r.mask.as_ref()?.compiled().ok())
                .collect(),
        }
    }

    /// Decides one SQL statement now.
    pub fn decide_statement(&self, ctx: &Context<'_>, s: &StatementInfo) -> Decision {
        self.decide_statement_at(ctx, s, SystemTime::now())
    }

    /// Decides one SQL statement at a given time (rules outside their window
    /// do not match).
    pub fn decide_statement_at(
        &self,
        ctx: &Context<'_>,
        s: &StatementInfo,
        now: SystemTime,
    ) -> Decision {
        // Best rule per action: highest specificity, then file order.
        let mut deny: Option<&Rule> = None;
        let mut allow: Option<&Rule> = None;
        let mut approval: Option<&Rule> = None;
        for r in self
            .rules
            .iter()
            .filter(|r| r.in_force(now) && r.applies_to(ctx) && r.matches_statement(s))
        {
            let slot = match r.action {
                Action::Deny => &mut deny,
                Action::RequireApproval => &mut approval,
                Action::Allow => &mut allow,
                // Mask rules shape results; they never allow or deny.
                Action::Mask => continue,
            };
            if slot.is_none_or(|best| r.specificity() > best.specificity()) {
                *slot = Some(r);
            }
        }
        match deny.or(approval).or(allow) {
            Some(r) => Decision {
                action: r.action,
                rule: r.id.clone(),
                reason: r.reason_for(s),
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
                    self.column_refusal(ctx, s, now)
                        .unwrap_or_else(|| "no rule allows this statement".into())
                },
            },
        }
    }

    /// Why an allow rule that would otherwise match did not: a column it does
    /// not list.
    fn column_refusal(
        &self,
        ctx: &Context<'_>,
        s: &StatementInfo,
        now: SystemTime,
    ) -> Option<String> {
        self.rules
            .iter()
            .filter(|r| r.action == Action::Allow && r.in_force(now) && r.applies_to(ctx))
            .filter(|r| r.matches_except_columns(s))
            .find_map(|r| {
                let c = columns::uncovered(&r.sql.columns, s)?;
                Some(format!(
                    "no rule allows this statement (column {c} is not among rule `{}`'s columns)",
                    r.id
                ))
            })
    }

    /// Decides a whole simple-query string: the first denied statement decides
    /// the whole (PostgreSQL runs it as one implicit transaction); otherwise the
    /// first statement that needs approval holds the whole.
    pub fn decide_statements<'s>(
        &self,
        ctx: &Context<'_>,
        stmts: impl IntoIterator<Item = &'s StatementInfo>,
    ) -> Decision {
        self.decide_statements_at(ctx, stmts, SystemTime::now())
    }

    /// [`Policy::decide_statements`] at a given time.
    pub fn decide_statements_at<'s>(
        &self,
        ctx: &Context<'_>,
        stmts: impl IntoIterator<Item = &'s StatementInfo>,
        now: SystemTime,
    ) -> Decision {
        let mut last = None;
        let mut approval = None;
        for s in stmts {
            let d = self.decide_statement_at(ctx, s, now);
            match d.action {
                Action::Deny => return d,
                Action::RequireApproval if approval.is_none() => approval = Some(d),
                _ => last = Some(d),
            }
        }
        let last = approval.or(last);
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

    /// `p`'s action and rule for `statements` run by `identity` on `target`.
    fn decision(
        p: &Policy,
        identity: &str,
        target: &str,
        statements: &[crate::sql::StatementInfo],
    ) -> (Action, String) {
        let d = p.decide_statements(
            &Context {
                identity: Some(identity),
                target,
            },
            statements,
        );
        (d.action, d.rule)
    }

    fn decide(identity: &str, target: &str, sql: &str) -> (Action, String) {
        let p = Policy::parse(POLICY).unwrap();
        decision(&p, identity, target, &classify(sql).statements)
    }

    /// Allows `kinds` (rule `id`), denies anything on table `secrets`.
    fn no_secrets_policy(id: &str, kinds: &str) -> Policy {
        Policy::parse(&format!(
            r#"
default: deny
rules:
  - id: {id}
    sql: {{ kinds: [{kinds}] }}
    action: allow
  - id: no-secrets
    sql: {{ tables: ["secrets"] }}
    action: deny
"#
        ))
        .unwrap()
    }

    /// Asserts that `sql` (classified as the daemon does) gets `outcome`
    /// (action, rule) for `identity` on target `db`.
    fn assert_decided(p: &Policy, identity: &str, sql: &str, outcome: (Action, &str)) {
        assert_eq!(
            decision(p, identity, "db", &classify(sql).statements),
            (outcome.0, outcome.1.to_owned()),
            "{identity}: {sql}"
        );
    }

    /// Asserts that each statement, read with and without the PostgreSQL
    /// cross-check (both must read it), gets `outcome` for `identity`.
    fn decided_alike_in_both_readings(
        p: &Policy,
        identity: &str,
        sqls: &[&str],
        outcome: (Action, &str),
    ) {
        let plain = crate::sql::Classifier::default().with_cross_check(false);
        for sql in sqls {
            for c in [classify(sql), plain.classify(sql)] {
                assert!(!c.any_unparsable(), "{sql}: {c:?}");
                assert_eq!(
                    decision(p, identity, "db", &c.statements),
                    (outcome.0, outcome.1.to_owned()),
                    "{sql}"
                );
            }
        }
    }

    /// A deny-list policy (reads and writes allowed, one table denied) sees
    /// the table however the statement names it, also with the PostgreSQL
    /// cross-check turned off: `ONLY secrets` and a string as a table name
    /// are sqlparser misreadings that named another table.
    #[test]
    fn deny_listed_table_under_every_spelling() {
        let p = no_secrets_policy("app", "read, write");
        let plain = crate::sql::Classifier::default().with_cross_check(false);
        for sql in [
            "SELECT * FROM ONLY secrets",
            "DELETE FROM ONLY secrets",
            "UPDATE ONLY secrets SET a = 1",
            "TRUNCATE 'secrets'",
        ] {
            for c in [classify(sql), plain.classify(sql)] {
                let d = decision(&p, "shop/app", "db", &c.statements);
                assert_eq!(d.0, Action::Deny, "{sql}: {d:?}");
            }
        }
        assert_eq!(
            decision(
                &p,
                "shop/app",
                "db",
                &classify("SELECT * FROM orders").statements
            ),
            (Action::Allow, "app".to_owned())
        );
    }

    /// DDL and DCL that name a table without creating it (a foreign key's
    /// referenced table, INHERITS, LIKE, a trigger's or a grant's table) are
    /// matched by that table's rules: a deny on it denies them, and an allow
    /// list that does not name it does not allow them.
    #[test]
    fn ddl_naming_a_table_is_matched_by_its_rules() {
        let p = no_secrets_policy("admin", "ddl, dcl, utility");
        let named = [
            "CREATE TABLE x (id int REFERENCES secrets (id))",
            "CREATE TABLE x (id int, FOREIGN KEY (id) REFERENCES public.secrets)",
            "ALTER TABLE x ADD CONSTRAINT fk FOREIGN KEY (id) REFERENCES secrets (id)",
            "ALTER TABLE x ADD COLUMN s int REFERENCES secrets",
            "CREATE TABLE x () INHERITS (secrets)",
            "CREATE TABLE x (LIKE secrets)",
            "CREATE TRIGGER t AFTER INSERT ON secrets FOR EACH ROW EXECUTE FUNCTION f()",
            "DROP TRIGGER t ON secrets",
            "GRANT SELECT ON secrets TO public",
            "REVOKE ALL ON TABLE secrets FROM app",
            "VACUUM FULL secrets",
        ];
        decided_alike_in_both_readings(&p, "shop/migrator", &named, (Action::Deny, "no-secrets"));
        // Read from PostgreSQL's tree (sqlparser cannot parse them): the
        // same rules apply.
        let expect = |sqls: &[&str], outcome: (Action, &str)| {
            for sql in sqls {
                assert_eq!(
                    decision(&p, "shop/migrator", "db", &classify(sql).statements),
                    (outcome.0, outcome.1.to_owned()),
                    "{sql}"
                );
            }
        };
        expect(
            &[
                "REFRESH MATERIALIZED VIEW secrets",
                "VACUUM (ANALYZE) secrets",
                "ALTER TABLE x ATTACH PARTITION secrets FOR VALUES IN (1)",
                "CREATE TABLE x (LIKE secrets INCLUDING ALL)",
            ],
            (Action::Deny, "no-secrets"),
        );
        expect(
            &[
                "CREATE TABLE x (id int REFERENCES orders (id))",
                "REFRESH MATERIALIZED VIEW CONCURRENTLY daily_totals",
                "ALTER SEQUENCE order_seq RESTART WITH 1000",
            ],
            (Action::Allow, "admin"),
        );

        let allow_list = Policy::parse(
            r#"
default: deny
rules:
  - id: orders-migrations
    sql: { kinds: [ddl], tables: [orders, order_items] }
    action: allow
"#,
        )
        .unwrap();
        let decide = |sql: &str| {
            decision(
                &allow_list,
                "shop/migrator",
                "db",
                &classify(sql).statements,
            )
        };
        assert_eq!(
            decide("CREATE TABLE order_items (order_id int REFERENCES orders (id))"),
            (Action::Allow, "orders-migrations".to_owned())
        );
        assert_eq!(
            decide("ALTER TABLE orders ADD FOREIGN KEY (customer_id) REFERENCES customers (id)"),
            (Action::Deny, "default".to_owned())
        );
    }

    /// A statement on every table of a schema at once names none of them,
    /// yet changes each: it touches `schema.*`. A deny on one table holds
    /// for it (on 0e0645b and before, GRANT SELECT ON ALL TABLES IN SCHEMA
    /// public TO PUBLIC passed a deny on `secrets`, and an allow limited to
    /// `orders` allowed it), and an allow covers it only with a glob that
    /// matches every table there.
    #[test]
    fn statements_on_every_table_of_a_schema_are_matched_by_table_rules() {
        let p = no_secrets_policy("admin", "ddl, dcl");
        let schema_wide = [
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO PUBLIC",
            "REVOKE ALL ON ALL SEQUENCES IN SCHEMA public, app FROM app",
            "DROP SCHEMA public CASCADE",
            "ALTER SCHEMA public RENAME TO old",
            "ALTER SCHEMA public OWNER TO intruder",
        ];
        decided_alike_in_both_readings(
            &p,
            "shop/migrator",
            &schema_wide,
            (Action::Deny, "no-secrets"),
        );
        // Not tables: the admin rule decides.
        decided_alike_in_both_readings(
            &p,
            "shop/migrator",
            &["GRANT USAGE ON SCHEMA public TO app"],
            (Action::Allow, "admin"),
        );
        // Read from PostgreSQL's tree (future tables of one schema, or of
        // every schema; functions are not tables).
        for (sql, outcome) in [
            (
                "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO PUBLIC",
                (Action::Deny, "no-secrets"),
            ),
            (
                "ALTER DEFAULT PRIVILEGES FOR ROLE app GRANT ALL ON SEQUENCES TO intruder",
                (Action::Deny, "no-secrets"),
            ),
            // Granting a dangerous function is risky, which a plain allow
            // never covers; so is every function of a schema (future ones
            // too), and altering or dropping a dangerous function.
            (
                "ALTER DEFAULT PRIVILEGES GRANT EXECUTE ON FUNCTIONS TO app",
                (Action::Deny, "default"),
            ),
            (
                "ALTER FUNCTION pg_read_file(text) SECURITY DEFINER",
                (Action::Deny, "default"),
            ),
            (
                "ALTER FUNCTION app.refresh(int) OWNER TO reporting",
                (Action::Allow, "admin"),
            ),
            (
                "GRANT EXECUTE ON FUNCTION pg_read_file(text) TO app",
                (Action::Deny, "default"),
            ),
            (
                "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA app TO reporting",
                (Action::Deny, "default"),
            ),
            (
                "GRANT EXECUTE ON FUNCTION app.refresh(int) TO reporting",
                (Action::Allow, "admin"),
            ),
            ("DROP OWNED BY app", (Action::Deny, "no-secrets")),
            (
                "REASSIGN OWNED BY app TO intruder",
                (Action::Deny, "no-secrets"),
            ),
        ] {
            assert_decided(&p, "shop/migrator", sql, outcome);
        }

        let scoped = Policy::parse(
            r#"
default: deny
rules:
  - id: orders-grants
    sql: { kinds: [dcl, ddl], tables: [orders, "public.orders"] }
    action: allow
  - id: app-schema
    sql: { kinds: [dcl, ddl], tables: ["app.*"] }
    action: allow
  - id: anything
    identities: ["shop/dba"]
    sql: { kinds: [dcl, ddl], tables: ["*"] }
    action: allow
  - id: no-audit-secrets
    sql: { tables: ["audit.secrets"] }
    action: deny
  - id: no-exports
    sql: { functions: ["lo_export"] }
    action: deny
"#,
        )
        .unwrap();
        let classifier = crate::sql::Classifier::default();
        let decide = |identity: &str, sql: &str| {
            // MySQL's `db.*` and `*.*` are read as PostgreSQL's `s.*` and `*`.
            let c = match sql.strip_prefix("mysql: ") {
                Some(sql) => classifier.classify_mysql(sql),
                None => classifier.classify(sql),
            };
            decision(&scoped, identity, "db", &c.statements)
        };
        let mut cases: Vec<(&str, &str, Action, &str)> = Vec::new();
        for sql in schema_wide {
            cases.push(("shop/migrator", sql, Action::Deny, "default"));
            cases.push(("shop/dba", sql, Action::Allow, "anything"));
        }
        cases.extend([
            (
                "shop/migrator",
                "GRANT SELECT ON orders TO app",
                Action::Allow,
                "orders-grants",
            ),
            (
                "shop/migrator",
                "GRANT SELECT ON ALL TABLES IN SCHEMA app TO reporting",
                Action::Allow,
                "app-schema",
            ),
            // `app.*` covers schema app only, and a deny qualified with
            // another schema does not reach it; one qualified with audit does.
            (
                "shop/migrator",
                "DROP SCHEMA app, public",
                Action::Deny,
                "default",
            ),
            (
                "shop/dba",
                "DROP SCHEMA audit CASCADE",
                Action::Deny,
                "no-audit-secrets",
            ),
            (
                "shop/dba",
                "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC",
                Action::Deny,
                "no-audit-secrets",
            ),
            (
                "shop/migrator",
                "mysql: GRANT SELECT ON app.* TO 'r'@'%'",
                Action::Allow,
                "app-schema",
            ),
            (
                "shop/migrator",
                "mysql: GRANT SELECT ON shop.* TO 'r'@'%'",
                Action::Deny,
                "default",
            ),
            (
                "shop/dba",
                "mysql: GRANT ALL ON *.* TO 'r'@'%'",
                Action::Deny,
                "no-audit-secrets",
            ),
            (
                "shop/dba",
                "mysql: DROP DATABASE audit",
                Action::Deny,
                "no-audit-secrets",
            ),
            (
                "shop/dba",
                "mysql: DROP DATABASE shop",
                Action::Allow,
                "anything",
            ),
            // A function rule holds for grants of the function, and of every
            // function of a schema.
            (
                "shop/dba",
                "GRANT EXECUTE ON FUNCTION lo_export(oid, text) TO app",
                Action::Deny,
                "no-exports",
            ),
            (
                "shop/dba",
                "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pg_catalog TO app",
                Action::Deny,
                "no-exports",
            ),
        ]);
        // And for the DDL of the function: dropping, altering (also read
        // from PostgreSQL's tree: ALTER ROUTINE), replacing it, or handing
        // out future functions where it could be.
        for sql in [
            "DROP FUNCTION IF EXISTS app.refresh(int), lo_export(oid, text)",
            "ALTER FUNCTION pg_catalog.lo_export(oid, text) OWNER TO app",
            "ALTER ROUTINE lo_export(oid, text) SECURITY DEFINER",
            "ALTER FUNCTION lo_export(oid, text) RENAME TO safe_name",
            "CREATE OR REPLACE FUNCTION lo_export(o oid, f text) RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
            "ALTER DEFAULT PRIVILEGES IN SCHEMA pg_catalog GRANT EXECUTE ON FUNCTIONS TO app",
        ] {
            cases.push(("shop/dba", sql, Action::Deny, "no-exports"));
        }
        cases.push((
            "shop/dba",
            "DROP FUNCTION app.refresh(int)",
            Action::Allow,
            "anything",
        ));
        for (identity, sql, action, rule) in cases {
            assert_eq!(
                decide(identity, sql),
                (action, rule.to_owned()),
                "{identity}: {sql}"
            );
        }
    }

    /// A procedure with a `$$` body (which sqlparser cannot parse) is read
    /// from PostgreSQL's tree and decided like a function sqlparser reads:
    /// a DDL rule allows it, a rule on the routine's name holds for it.
    /// (Before, it was unparsable: denied by default under any DDL rule.)
    #[test]
    fn routines_are_decided_by_kind_and_name() {
        let p = Policy::parse(
            r#"
default: deny
rules:
  - id: migrations
    identities: ["shop/migrator"]
    sql: { kinds: [ddl] }
    action: allow
  - id: no-purge
    sql: { functions: ["app.purge"] }
    action: deny
"#,
        )
        .unwrap();
        for (sql, outcome) in [
            (
                "CREATE FUNCTION app.f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
                (Action::Allow, "migrations"),
            ),
            (
                "CREATE PROCEDURE app.refresh() LANGUAGE sql AS $$ REFRESH MATERIALIZED VIEW mv $$",
                (Action::Allow, "migrations"),
            ),
            (
                "CREATE OR REPLACE PROCEDURE app.purge() LANGUAGE sql AS $$ DELETE FROM orders $$",
                (Action::Deny, "no-purge"),
            ),
        ] {
            assert_decided(&p, "shop/migrator", sql, outcome);
        }
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
    fn require_approval_precedence() {
        use Action::*;
        let p = Policy::parse(
            r#"
rules:
  - id: orders-rw
    sql: { kinds: [read, write], tables: [orders, customers] }
    action: allow
  - id: order-deletes
    sql: { kinds: [write], tables: [orders] }
    action: require_approval
  - id: second-approval
    sql: { kinds: [write] }
    action: require_approval
  - id: no-customer-deletes
    sql: { kinds: [write], tables: [customers] }
    action: deny
"#,
        )
        .unwrap();
        let ctx = Context {
            identity: Some("shop/app"),
            target: "db",
        };
        let decide = |sql: &str| {
            let d = p.decide_statements(&ctx, &classify(sql).statements);
            (d.action, d.rule)
        };
        let table = [
            // allow alone
            ("SELECT * FROM orders", (Allow, "orders-rw")),
            // require_approval wins over a matching allow; the first one is reported
            (
                "DELETE FROM orders WHERE id = 1",
                (RequireApproval, "order-deletes"),
            ),
            // a deny wins over require_approval, even written after it
            ("DELETE FROM customers", (Deny, "no-customer-deletes")),
            (
                "WITH x AS (DELETE FROM orders RETURNING 1) DELETE FROM customers",
                (Deny, "no-customer-deletes"),
            ),
            // one statement needing approval holds the whole query string
            (
                "SELECT 1 FROM orders; DELETE FROM orders",
                (RequireApproval, "order-deletes"),
            ),
            // and a denied one anywhere in it still denies it
            (
                "DELETE FROM orders; DELETE FROM customers",
                (Deny, "no-customer-deletes"),
            ),
            // require_approval matches on any table, like deny
            (
                "UPDATE orders SET id = 2 FROM secrets",
                (RequireApproval, "order-deletes"),
            ),
        ];
        for (sql, (action, rule)) in table {
            assert_eq!(decide(sql), (action, rule.to_string()), "{sql}");
        }
        let e = Policy::parse("rules:\n  - {id: a, action: require_approval}\n").unwrap();
        assert_eq!(e.rules[0].action.as_str(), "require_approval");
    }

    #[test]
    fn specificity_then_order_among_rules_of_one_action() {
        let p = Policy::parse(
            r#"
rules:
  - {id: any-read, sql: {kinds: [read]}, action: allow}
  - {id: shop-read, identities: ["shop/*"], sql: {kinds: [read]}, action: allow}
  - {id: api-read, identities: ["shop/api"], sql: {kinds: [read]}, action: allow}
  - {id: api-read-2, identities: ["shop/api"], sql: {kinds: [read]}, action: allow}
  - {id: no-secrets, sql: {tables: ["secrets"]}, action: deny}
  - {id: no-secrets-api, identities: ["shop/api"], sql: {tables: ["secrets"]}, action: deny}
"#,
        )
        .unwrap();
        let d = |who: &str, sql: &str| {
            let c = classify(sql);
            p.decide_statements(
                &Context {
                    identity: Some(who),
                    target: "db",
                },
                &c.statements,
            )
            .rule
        };
        assert_eq!(d("shop/api", "SELECT 1"), "api-read");
        assert_eq!(d("shop/web", "SELECT 1"), "shop-read");
        assert_eq!(d("ops/cron", "SELECT 1"), "any-read");
        // deny beats a more specific allow; the most specific deny is reported
        assert_eq!(d("shop/api", "SELECT * FROM secrets"), "no-secrets-api");
        assert_eq!(d("shop/web", "SELECT * FROM secrets"), "no-secrets");
    }

    #[test]
    fn rules_match_only_inside_their_window() {
        let p = Policy::parse(
            r#"
rules:
  - id: grant
    sql: {kinds: [write]}
    action: allow
    valid_from: 2026-12-01T10:00:00Z
    valid_until: 2026-12-01T11:00:00Z
"#,
        )
        .unwrap();
        let at = |t: &str| {
            let c = classify("DELETE FROM t");
            let now = humantime::parse_rfc3339(t).unwrap();
            p.decide_statements_at(
                &Context {
                    identity: None,
                    target: "db",
                },
                &c.statements,
                now,
            )
            .action
        };
        assert_eq!(at("2026-12-01T09:59:59Z"), Action::Deny);
        assert_eq!(at("2026-12-01T10:00:00Z"), Action::Allow);
        assert_eq!(at("2026-12-01T10:59:59Z"), Action::Allow);
        assert_eq!(at("2026-12-01T11:00:00Z"), Action::Deny);
        // Caches of decisions made inside the window expire at its end.
        let t = |s: &str| humantime::parse_rfc3339(s).unwrap();
        assert_eq!(
            p.next_boundary(t("2026-12-01T09:00:00Z")),
            Some(t("2026-12-01T10:00:00Z"))
        );
        assert_eq!(
            p.next_boundary(t("2026-12-01T10:30:00Z")),
            Some(t("2026-12-01T11:00:00Z"))
        );
        assert_eq!(p.next_boundary(t("2026-12-01T11:00:00Z")), None);
        let e = Policy::parse(
            "rules:\n  - {id: g, action: allow, valid_from: 2026-12-02T00:00:00Z, valid_until: 2026-12-01T00:00:00Z}\n",
        )
        .unwrap_err();
        assert!(e.contains("valid_until") && e.contains("not after"), "{e}");
        let e = Policy::parse("rules:\n  - {id: g, action: allow, valid_until: tomorrow}\n")
            .unwrap_err();
        assert!(e.contains("line 2") && e.contains("RFC 3339"), "{e}");
    }

    #[test]
    fn mask_rules_never_decide_and_are_collected_per_session() {
        let p = Policy::parse(
            r#"
default: deny
rules:
  - id: mask-pii
    identities: ["shop/*"]
    targets: ["customers-db"]
    action: mask
    mask: { columns: ["customers.email"], strategy: hash }
  - id: mask-all
    action: mask
    mask: { detectors: [card], strategy: partial, keep_last: 4 }
  - id: read
    sql: { kinds: [read] }
    action: allow
"#,
        )
        .unwrap();
        let ctx = |identity, target| Context {
            identity: Some(identity),
            target,
        };
        let c = classify("SELECT email FROM customers");
        let d = p.decide_statements(&ctx("shop/a", "customers-db"), &c.statements);
        assert_eq!((d.action, d.rule.as_str()), (Action::Allow, "read"));
        let c = classify("DELETE FROM customers");
        let d = p.decide_statements(&ctx("shop/a", "customers-db"), &c.statements);
        assert_eq!((d.action, d.rule.as_str()), (Action::Deny, "default"));
        assert_eq!(p.masks_for(&ctx("shop/a", "customers-db")).specs.len(), 2);
        let other = p.masks_for(&ctx("billing/a", "customers-db"));
        assert_eq!(other.specs.len(), 1);
        assert!(!other.has_columns() && other.has_detectors());
        // Mask rules are checked at load, naming the rule.
        for (yaml, want) in [
            (
                "rules:\n  - {id: m, action: mask, mask: {regex: ['(x']}}\n",
                "rule `m`: mask: `(x`: not a valid regex",
            ),
            (
                "rules:\n  - {id: m, action: mask}\n",
                "rule `m`: action mask needs",
            ),
            (
                "rules:\n  - {id: a, action: allow, mask: {detectors: [email]}}\n",
                "rule `a`: `mask:` needs action mask",
            ),
            ("default: mask\n", "default must be allow or deny"),
        ] {
            let e = Policy::parse(yaml).unwrap_err();
            assert!(e.contains(want), "{e}");
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
