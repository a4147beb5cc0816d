//! Columns a statement references, resolved to the tables they belong to.
//!
//! The walker (`super::walk`) collects raw references while it visits the
//! statement (`Raw`) together with the statement's table aliases and CTE
//! names; `resolve` then turns them into [`ColumnRef`]s once every table of
//! the statement is known. Resolution is deliberately coarse and leans towards
//! reporting *more* (a policy denying a column must not be bypassed):
//!
//! * the alias map is flattened over the whole statement: an alias used for
//!   two tables in two subqueries resolves to both;
//! * an unqualified `col` is attributed to every table of the statement
//!   (PostgreSQL would pick one, or an output alias, or an outer query's);
//! * a bare name that is also a table or alias (`SELECT c FROM customers c`,
//!   `row_to_json(c)`) is a whole-row reference: all columns of that table;
//! * a qualifier naming nothing known is attributed to every table;
//! * references through a CTE or a derived table are dropped: the CTE's or
//!   subquery's own body is walked and names the real columns.
//!
//! `*` is recorded as "all columns of T" ([`ColumnRef::column`] `None`): a bare
//! `*` for each table of its SELECT's FROM list, `t.*` for `t`, an INSERT
//! without a column list, `RETURNING *`, COPY without a column list, and any
//! MERGE target (its actions are not modelled column by column).

use std::fmt;

use super::QualifiedName;

/// One column (or all columns, `*`) of one table that a statement references.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ColumnRef {
    /// The table as the statement names it (`customers`, `public.customers`).
    pub table: QualifiedName,
    /// The column, or `None` for all of the table's columns (`*`, a whole row).
    pub column: Option<String>,
}

impl fmt::Display for ColumnRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.column {
            Some(c) => write!(f, "{}.{c}", self.table.parts.join(".")),
            None => write!(f, "{}.*", self.table.parts.join(".")),
        }
    }
}

/// A reference as written, before tables are known.
#[derive(Debug, Clone)]
pub(super) enum Raw {
    /// An identifier in an expression: `col`, `t.col`, `s.t.col`.
    Name(Vec<String>),
    /// `prefix.*` (select list, function argument or expression).
    Star(Vec<String>),
    /// `*` over every table of the statement (a bare wildcard expression).
    StarAll,
    /// A column already known to belong to a table (INSERT column list,
    /// UPDATE SET target); `None`: all its columns.
    Of(QualifiedName, Option<String>),
}

/// What an alias (or CTE name) stands for: a table, or something whose
/// columns are reported where it is defined (CTE, subquery, function).
pub(super) type Alias = (String, Option<QualifiedName>);

pub(super) fn resolve(
    raw: &[Raw],
    tables: &[QualifiedName],
    aliases: &[Alias],
    ctes: &[String],
) -> Vec<ColumnRef> {
    let r = Resolver {
        tables,
        aliases,
        ctes,
    };
    let mut out = Vec::new();
    let mut push = |table: &QualifiedName, column: Option<&str>| {
        out.push(ColumnRef {
            table: table.clone(),
            column: column.map(str::to_owned),
        })
    };
    for item in raw {
        match item {
            Raw::Of(t, c) => push(t, c.as_deref()),
            Raw::StarAll => tables.iter().for_each(|t| push(t, None)),
            Raw::Star(prefix) => match r.prefix(prefix) {
                Some(targets) => targets.iter().flatten().for_each(|t| push(t, None)),
                None => tables.iter().for_each(|t| push(t, None)),
            },
            Raw::Name(parts) => match parts.as_slice() {
                [] => {}
                [col] => {
                    tables.iter().for_each(|t| push(t, Some(col)));
                    if let Some(targets) = r.prefix(std::slice::from_ref(col)) {
                        targets.iter().flatten().for_each(|t| push(t, None));
                    }
                }
                _ => {
                    let resolved = (1..parts.len()).rev().find_map(|k| {
                        let targets = r.prefix(&parts[..k])?;
                        Some((targets, &parts[k]))
                    });
                    match resolved {
                        Some((targets, col)) => {
                            targets.iter().flatten().for_each(|t| push(t, Some(col)))
                        }
                        None => {
                            for col in &parts[1..] {
                                tables.iter().for_each(|t| push(t, Some(col)));
                            }
                        }
                    }
                }
            },
        }
    }
    out.sort();
    out.dedup();
    out
}

struct Resolver<'a> {
    tables: &'a [QualifiedName],
    aliases: &'a [Alias],
    ctes: &'a [String],
}

impl Resolver<'_> {
    /// What a qualifier names: tables (`None` entries: a CTE or subquery), or
    /// `None` if it names nothing known.
    fn prefix(&self, prefix: &[String]) -> Option<Vec<Option<QualifiedName>>> {
        if let [one] = prefix {
            let by_alias: Vec<_> = self
                .aliases
                .iter()
                .filter(|(a, _)| a == one)
                .map(|(_, t)| t.clone())
                .collect();
            if !by_alias.is_empty() {
                return Some(by_alias);
            }
        }
        let by_table: Vec<_> = self
            .tables
            .iter()
            .filter(|t| t.parts.ends_with(prefix) || prefix.ends_with(&t.parts))
            .cloned()
            .map(Some)
            .collect();
        if !by_table.is_empty() {
            return Some(by_table);
        }
        match prefix {
            [one] if self.ctes.contains(one) => Some(vec![None]),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::sql::classify;

    fn cols(sql: &str) -> Vec<String> {
        let c = classify(sql);
        assert_eq!(c.statements.len(), 1, "{sql}");
        c.statements[0]
            .columns
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn references_resolve_to_tables() {
        let table: &[(&str, &[&str])] = &[
            ("SELECT 1", &[]),
            (
                "SELECT id, name FROM customers",
                &["customers.id", "customers.name"],
            ),
            (
                "SELECT c.ssn FROM public.customers c",
                &["public.customers.ssn"],
            ),
            (
                "SELECT public.customers.ssn FROM public.customers",
                &["public.customers.ssn"],
            ),
            ("SELECT * FROM customers", &["customers.*"]),
            ("SELECT x.* FROM customers x, orders", &["customers.*"]),
            ("SELECT c FROM customers c", &["customers.*", "customers.c"]),
            (
                "SELECT o.id FROM orders o JOIN customers c ON c.id = o.cid WHERE ssn = '1'",
                &[
                    "customers.id",
                    "customers.ssn",
                    "orders.cid",
                    "orders.id",
                    "orders.ssn",
                ],
            ),
            (
                "SELECT total FROM orders GROUP BY total ORDER BY placed",
                &["orders.placed", "orders.total"],
            ),
            (
                "UPDATE customers SET ssn = '1' WHERE id = 2",
                &["customers.id", "customers.ssn"],
            ),
            (
                "UPDATE customers c SET name = 'x' RETURNING c.email",
                &["customers.email", "customers.name"],
            ),
            ("INSERT INTO customers VALUES (1)", &["customers.*"]),
            (
                "INSERT INTO customers (id, name) VALUES (1, DEFAULT)",
                &["customers.id", "customers.name"],
            ),
            (
                "INSERT INTO archive SELECT id FROM customers RETURNING *",
                &["archive.*", "archive.id", "customers.*", "customers.id"],
            ),
            ("DELETE FROM customers WHERE ssn = '1'", &["customers.ssn"]),
            (
                "WITH s AS (SELECT ssn FROM customers) SELECT s.ssn, x FROM s",
                &["customers.ssn", "customers.x"],
            ),
            (
                "SELECT * FROM (SELECT id FROM customers) sub",
                &["customers.id"],
            ),
            (
                "SELECT sub.id FROM (SELECT id FROM customers) sub",
                &["customers.id"],
            ),
            ("SELECT count(*) FROM customers", &[]),
            ("SELECT to_jsonb(c.*) FROM customers c", &["customers.*"]),
            // A qualifier naming nothing known counts for every table.
            ("SELECT zz.ssn FROM customers", &["customers.ssn"]),
            (
                "COPY customers (id, name) TO STDOUT",
                &["customers.id", "customers.name"],
            ),
            (
                "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
                &["s.id", "t.*", "t.id"],
            ),
        ];
        for (sql, want) in table {
            assert_eq!(cols(sql), *want, "{sql}");
        }
        let t = classify("TABLE customers");
        assert_eq!(t.statements[0].kind, crate::sql::Kind::Unparsable, "{t:?}");
    }
}
