//! `sql.columns` selectors: globs over `table.column` and
//! `schema.table.column` (`customers.ssn`, `public.customers.*`, `*.email`).
//!
//! A selector is split at its last `.` into a table part and a column part.
//! The table part is matched like `sql.tables` (against `table` and
//! `schema.table` as the statement names the table), the column part against
//! the column name. The classifier's column references ([`ColumnRef`]) are
//! conservative (an unqualified column counts for every table of the
//! statement, `*` for all columns of its tables); on top of that:
//!
//! * [`touched`] (deny, require_approval) also lets a schema-qualified
//!   selector match a table the statement does not qualify
//!   (`public.customers.ssn` matches `SELECT ssn FROM customers`): the
//!   daemon does not know `search_path`, so it assumes the worst; and `*` on a
//!   table touches every selector naming that table.
//! * [`uncovered`] (allow) is strict: only tables whose names match a
//!   selector's table part are constrained, every column referenced on them
//!   must match a selector for that table, and `*` (all columns) is covered
//!   only by a selector whose column part is exactly `*`.

use globset::{Glob, GlobMatcher};
use serde::{Deserialize, Deserializer, de};

use crate::sql::{ColumnRef, QualifiedName, StatementInfo};

/// One `sql.columns` entry.
#[derive(Debug, Clone)]
pub struct ColumnGlob {
    pub pattern: String,
    /// The table part, as written.
    table: GlobMatcher,
    /// The last segment of the table part (the table's own name).
    table_name: GlobMatcher,
    column: GlobMatcher,
    /// The column part is `*`: it covers "all columns" references.
    all_columns: bool,
}

impl ColumnGlob {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let glob = |p: &str| {
            Glob::new(p)
                .map(|g| g.compile_matcher())
                .map_err(|e| format!("`{pattern}`: not a valid glob: {e}"))
        };
        let (table, column) = pattern
            .rsplit_once('.')
            .filter(|(t, c)| !t.is_empty() && !c.is_empty())
            .ok_or_else(|| {
                format!("`{pattern}`: a column is `table.column` or `schema.table.column`")
            })?;
        let table_name = table.rsplit('.').next().unwrap_or(table);
        Ok(Self {
            pattern: pattern.to_owned(),
            table: glob(table)?,
            table_name: glob(table_name)?,
            column: glob(column)?,
            all_columns: column == "*",
        })
    }

    /// Whether the table part names `t`; `assume_any_schema` lets a
    /// qualified selector match an unqualified table of the same name.
    fn names_table(&self, t: &QualifiedName, assume_any_schema: bool) -> bool {
        self.table.is_match(t.name())
            || self.table.is_match(t.parts.join("."))
            || (assume_any_schema && t.parts.len() == 1 && self.table_name.is_match(t.name()))
    }
}

impl<'de> Deserialize<'de> for ColumnGlob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pattern = String::deserialize(d)?;
        Self::parse(&pattern).map_err(de::Error::custom)
    }
}

impl schemars::JsonSchema for ColumnGlob {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ColumnGlob".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^.+\\..+$",
            "description": "`table.column` or `schema.table.column`, glob parts (`customers.ssn`, `public.customers.*`, `*.email`); the table part is what precedes the last `.`."
        })
    }
}

/// For deny and require_approval: the first reference to a listed column
/// (explicit, through `*` on its table, or unqualified with its table in
/// scope), if any.
pub fn touched<'s>(globs: &[ColumnGlob], s: &'s StatementInfo) -> Option<&'s ColumnRef> {
    s.columns.iter().find(|r| {
        globs.iter().any(|g| {
            g.names_table(&r.table, true)
                && r.column.as_deref().is_none_or(|c| g.column.is_match(c))
        })
    })
}

/// For allow: the first reference, on a table the selectors name, that no
/// selector covers (`*` only by `table.*`); `None` if the rule covers them all.
pub fn uncovered<'s>(globs: &[ColumnGlob], s: &'s StatementInfo) -> Option<&'s ColumnRef> {
    s.columns.iter().find(|r| {
        let on_named_table: Vec<&ColumnGlob> = globs
            .iter()
            .filter(|g| g.names_table(&r.table, false))
            .collect();
        !on_named_table.is_empty()
            && !on_named_table.iter().any(|g| match r.column.as_deref() {
                Some(c) => g.column.is_match(c),
                None => g.all_columns,
            })
    })
}

#[cfg(test)]
mod tests {
    use crate::policy::{Action, Context, Policy};
    use crate::sql::classify;

    const POLICY: &str = r#"
default: deny
rules:
  - id: no-ssn
    targets: ["db", "approval-db"]
    sql: { columns: ["customers.ssn"] }
    action: deny
  - id: emails-need-approval
    targets: ["approval-db"]
    sql: { columns: ["*.email"] }
    action: require_approval
  - id: read-all
    targets: ["db", "approval-db"]
    sql: { kinds: [read, write] }
    action: allow
  - id: customer-basics
    targets: ["narrow-db"]
    sql: { kinds: [read], tables: [customers, orders], columns: ["customers.id", "customers.name"] }
    action: allow
"#;

    fn decide(target: &str, sql: &str) -> (Action, String, String) {
        let p = Policy::parse(POLICY).unwrap();
        let c = classify(sql);
        let d = p.decide_statements(
            &Context {
                identity: Some("shop/app"),
                target,
            },
            &c.statements,
        );
        (d.action, d.rule, d.reason)
    }

    #[test]
    fn deny_column_table() {
        use Action::*;
        let table = [
            ("SELECT ssn FROM customers", Deny, "no-ssn"),
            ("SELECT c.ssn FROM customers c", Deny, "no-ssn"),
            ("SELECT customers.ssn FROM public.customers", Deny, "no-ssn"),
            (
                "SELECT public.customers.ssn FROM public.customers",
                Deny,
                "no-ssn",
            ),
            ("SELECT * FROM customers", Deny, "no-ssn"),
            ("SELECT x.* FROM customers x", Deny, "no-ssn"),
            ("SELECT row_to_json(c) FROM customers c", Deny, "no-ssn"),
            ("SELECT row_to_json(c.*) FROM customers c", Deny, "no-ssn"),
            (
                "SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id WHERE ssn = '1'",
                Deny,
                "no-ssn",
            ),
            (
                "SELECT o.id FROM orders o JOIN customers c ON c.ssn = o.ref",
                Deny,
                "no-ssn",
            ),
            ("SELECT id FROM customers GROUP BY id, ssn", Deny, "no-ssn"),
            ("SELECT id FROM customers ORDER BY ssn", Deny, "no-ssn"),
            (
                "SELECT id FROM orders JOIN customers USING (ssn)",
                Deny,
                "no-ssn",
            ),
            (
                "SELECT id FROM orders NATURAL JOIN customers",
                Deny,
                "no-ssn",
            ),
            (
                "UPDATE customers SET ssn = '1' WHERE id = 2",
                Deny,
                "no-ssn",
            ),
            (
                "UPDATE customers SET name = 'x' RETURNING *",
                Deny,
                "no-ssn",
            ),
            (
                "UPDATE customers SET name = 'x' RETURNING ssn",
                Deny,
                "no-ssn",
            ),
            (
                "INSERT INTO customers VALUES (1, 'a', '123')",
                Deny,
                "no-ssn",
            ),
            (
                "INSERT INTO customers (id, ssn) VALUES (1, '123')",
                Deny,
                "no-ssn",
            ),
            (
                "INSERT INTO customers (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET ssn = '2'",
                Deny,
                "no-ssn",
            ),
            ("DELETE FROM customers WHERE ssn = '1'", Deny, "no-ssn"),
            (
                "WITH s AS (SELECT ssn FROM customers) SELECT * FROM s",
                Deny,
                "no-ssn",
            ),
            (
                "WITH s AS (SELECT * FROM customers) SELECT ssn FROM s",
                Deny,
                "no-ssn",
            ),
            (
                "SELECT id FROM (SELECT * FROM customers) sub",
                Deny,
                "no-ssn",
            ),
            (
                "SELECT id FROM orders WHERE EXISTS (SELECT 1 FROM customers c WHERE c.ssn = '1')",
                Deny,
                "no-ssn",
            ),
            ("COPY customers TO STDOUT", Deny, "no-ssn"),
            ("PREPARE p AS SELECT ssn FROM customers", Deny, "no-ssn"),
            // Not the listed column, or not its table.
            ("SELECT id, name FROM customers", Allow, "read-all"),
            (
                "SELECT c.id, c.name FROM customers c ORDER BY c.name",
                Allow,
                "read-all",
            ),
            ("SELECT ssn FROM other_table", Allow, "read-all"),
            ("SELECT * FROM other_table", Allow, "read-all"),
            (
                "SELECT o.ssn FROM orders o JOIN customers c ON c.id = o.cid",
                Allow,
                "read-all",
            ),
            (
                "WITH s AS (SELECT id FROM customers) SELECT * FROM s",
                Allow,
                "read-all",
            ),
            (
                "INSERT INTO customers (id, name) VALUES (1, DEFAULT)",
                Allow,
                "read-all",
            ),
            // `*` is all columns of its own SELECT's tables only.
            (
                "SELECT * FROM orders WHERE cid IN (SELECT id FROM customers)",
                Allow,
                "read-all",
            ),
            // Unparsable stays unparsable.
            ("SELECT ssn FROM customers WHERE", Deny, "default"),
            // `TABLE t` hides its table from the parser's AST: unparsable.
            ("TABLE customers", Deny, "default"),
            ("SELECT 1 UNION TABLE customers", Deny, "default"),
        ];
        for (sql, action, rule) in table {
            let (a, r, reason) = decide("db", sql);
            assert_eq!((a, r.as_str()), (action, rule), "{sql}: {reason}");
        }
    }

    #[test]
    fn the_reason_names_the_column() {
        let (_, _, reason) = decide("db", "SELECT c.ssn FROM customers c");
        assert_eq!(reason, "rule `no-ssn` (deny): column customers.ssn");
        let (_, _, reason) = decide("db", "SELECT * FROM public.customers");
        assert_eq!(reason, "rule `no-ssn` (deny): column public.customers.*");
        let (a, rule, reason) = decide("approval-db", "SELECT u.email FROM users u");
        assert_eq!(
            (a, rule.as_str(), reason.as_str()),
            (
                Action::RequireApproval,
                "emails-need-approval",
                "rule `emails-need-approval` (require_approval): column users.email"
            )
        );
        let (a, rule, reason) = decide("narrow-db", "SELECT id, email FROM customers");
        assert_eq!((a, rule.as_str()), (Action::Deny, "default"));
        assert_eq!(
            reason,
            "no rule allows this statement (column customers.email is not among rule `customer-basics`'s columns)"
        );
    }

    #[test]
    fn allow_column_table() {
        use Action::*;
        let table = [
            ("SELECT id, name FROM customers", Allow, "customer-basics"),
            (
                "SELECT c.name FROM customers c WHERE c.id = 1",
                Allow,
                "customer-basics",
            ),
            ("SELECT count(*) FROM customers", Allow, "customer-basics"),
            ("SELECT * FROM customers", Deny, "default"),
            ("SELECT c.* FROM customers c", Deny, "default"),
            ("SELECT email FROM customers", Deny, "default"),
            (
                "SELECT id FROM customers WHERE email = 'x'",
                Deny,
                "default",
            ),
            ("SELECT ssn FROM customers", Deny, "default"),
            // Tables the selectors do not name are not constrained by them
            // (but an unqualified column counts for every table in scope).
            ("SELECT o.total FROM orders o", Allow, "customer-basics"),
            ("SELECT * FROM orders", Allow, "customer-basics"),
            (
                "SELECT o.total, c.name FROM orders o JOIN customers c ON c.id = o.id",
                Allow,
                "customer-basics",
            ),
            (
                "SELECT total, c.name FROM orders o JOIN customers c ON c.id = o.id",
                Deny,
                "default",
            ),
        ];
        for (sql, action, rule) in table {
            let (a, r, reason) = decide("narrow-db", sql);
            assert_eq!((a, r.as_str()), (action, rule), "{sql}: {reason}");
        }
    }

    #[test]
    fn column_rules_are_sql_rules() {
        // A rule with only `columns` must not become protocol-neutral (and
        // deny every Redis command).
        let p = Policy::parse(
            "default: allow\nrules:\n  - {id: no-ssn, sql: {columns: [customers.ssn]}, action: deny}\n",
        )
        .unwrap();
        let ctx = Context {
            identity: None,
            target: "cache",
        };
        let op = crate::policy::protocols::RedisOperation {
            command: "GET",
            subcommand: None,
            keys: &[b"customers.ssn"],
        };
        let d = p.decide_redis(&ctx, &op);
        assert_eq!((d.action, d.rule.as_str()), (Action::Allow, "default"));
    }

    #[test]
    fn selectors_are_checked_at_load() {
        for bad in ["ssn", ".ssn", "customers.", "customers.[x"] {
            let yaml =
                format!("rules:\n  - {{id: a, action: deny, sql: {{columns: [\"{bad}\"]}}}}\n");
            let e = Policy::parse(&yaml).unwrap_err();
            assert!(e.contains(bad) && e.contains("line 2"), "{bad}: {e}");
        }
        // A schema-qualified deny also matches the unqualified table name
        // (search_path is unknown); an allow does not.
        let p = Policy::parse(
            "rules:\n  - {id: d, action: deny, sql: {columns: [public.customers.ssn]}}\n  - {id: a, action: allow, sql: {columns: [public.customers.id]}}\n",
        )
        .unwrap();
        let ctx = Context {
            identity: None,
            target: "db",
        };
        let d = |sql: &str| p.decide_statements(&ctx, &classify(sql).statements).rule;
        assert_eq!(d("SELECT ssn FROM customers"), "d");
        assert_eq!(d("SELECT ssn FROM other.customers"), "a");
        assert_eq!(d("SELECT id FROM public.customers"), "a");
        assert_eq!(d("SELECT name FROM public.customers"), "default");
    }
}
