//! Literal-free statement text: what the audit log, session recordings and
//! `policy simulate` see instead of the statement itself.
//!
//! Every constant becomes a numbered placeholder (`$n`, numbered after any
//! placeholders the statement already had; MySQL's `?`), comments go,
//! keywords and spacing take sqlparser's canonical form — the same idea as
//! pg_stat_statements' query jumbling. `NULL`, `TRUE` and `FALSE` stay: they
//! carry no data. The result parses again with the statement's dialect, so a
//! recorded operation can be re-classified and re-decided later. The text is
//! rewritten from the classifier's own parse
//! ([`super::Classifier::classify_text`], [`super::Classifier::classify_mysql_text`]);
//! a statement the classifier does not read is never quoted: it is
//! `<unparsable statement>`.

use std::ops::ControlFlow;

use sqlparser::ast::{Expr, Statement, Value, visit_expressions, visit_expressions_mut};

/// The literal-free form of a simple-query string (statements joined by
/// `; `), as the decision path records it.
pub fn normalize(sql: &str) -> String {
    super::DEFAULT.classify_text(sql).1
}

/// Not even its length: statements sharing a decision-cache key share this.
const OPAQUE: &str = "<unparsable statement>";

/// A DO block: its body is a string literal, code possibly with data in it.
pub(super) const DO_BLOCK: &str = "DO $1";

/// Every constant of `stmt` (but `NULL`, `TRUE`, `FALSE` and placeholders)
/// becomes the placeholder `next` gives, and the statement is printed.
fn without_constants(stmt: &mut Statement, mut next: impl FnMut() -> String) -> String {
    let _ = visit_expressions_mut(stmt, |e| {
        if let Expr::Value(v) = e
            && !matches!(
                v.value,
                Value::Null | Value::Boolean(_) | Value::Placeholder(_)
            )
        {
            v.value = Value::Placeholder(next());
        }
        ControlFlow::<()>::Continue(())
    });
    stmt.to_string()
}

/// The literal-free form of one parsed PostgreSQL statement, rewritten in
/// place (the caller is done with it).
pub(super) fn pg_text(stmt: &mut Statement) -> String {
    // Number after the statement's own `$n` parameters so they stay distinct.
    let mut n = 0u32;
    let _ = visit_expressions(stmt, |e| {
        if let Expr::Value(v) = e
            && let Value::Placeholder(p) = &v.value
            && let Some(k) = p.strip_prefix('$').and_then(|k| k.parse::<u32>().ok())
        {
            n = n.max(k);
        }
        ControlFlow::<()>::Continue(())
    });
    let s = without_constants(stmt, || {
        n += 1;
        format!("${n}")
    });
    // Constants outside expressions (COPY ... 'file', role passwords written as
    // options) are not visited; never let a quoted string through.
    if s.contains('\'') || s.contains("$$") {
        return OPAQUE.to_string();
    }
    s
}

/// The literal-free form of one MySQL statement (a MySQL session runs one
/// per query), rewritten in place: every constant becomes `?`, MySQL's
/// placeholder.
pub(super) fn mysql_text(stmt: &mut Statement) -> String {
    let s = without_constants(stmt, || "?".into());
    // Strings outside expressions are not visited; MySQL quotes strings
    // with either quote by default.
    if s.contains('\'') || s.contains('"') {
        return OPAQUE.to_string();
    }
    s
}

/// What stands for a statement that is not quoted.
pub(super) fn opaque() -> String {
    OPAQUE.to_string()
}

/// Whether a recorded text stands for a statement, or one of several, that
/// was not quoted (so reading the text again cannot tell what it was).
pub fn has_unquoted_statement(text: &str) -> bool {
    text.contains(OPAQUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mysql_literals_become_question_marks() {
        for (sql, want) in [
            (
                "insert into orders values (7, 'ada@example.com', NULL)",
                "INSERT INTO orders VALUES (?, ?, NULL)",
            ),
            (
                "UPDATE `orders` SET note = \"hunter2\" WHERE id = 3",
                "UPDATE `orders` SET note = ? WHERE id = ?",
            ),
            ("SELECT * FROM t WHERE a = ?", "SELECT * FROM t WHERE a = ?"),
            ("SELEKT 'hunter2'", "<unparsable statement>"),
            ("SELECT 1; SELECT 2", "<unparsable statement>"),
            // Text the classifier will not read is not quoted either.
            ("SELECT 'hunter2\\' -- '", "<unparsable statement>"),
            ("SELECT /*!50000 'hunter2' */ 1", "<unparsable statement>"),
        ] {
            let n = crate::sql::Classifier::default().classify_mysql_text(sql).1;
            assert!(!n.contains("hunter2"), "{sql} -> {n}");
            assert_eq!(n, want, "{sql}");
        }
    }

    #[test]
    fn literals_become_placeholders() {
        let cases = [
            (
                "select name from customers where email = 'ada@example.com' and id > 10",
                "SELECT name FROM customers WHERE email = $1 AND id > $2",
            ),
            (
                "/* app */ DELETE FROM public.\"Customers\" WHERE id = $1 AND note = E'x\\'y'",
                "DELETE FROM public.\"Customers\" WHERE id = $1 AND note = $2",
            ),
            (
                "INSERT INTO orders VALUES (1, 'a', NULL, true); SELECT 2",
                "INSERT INTO orders VALUES ($1, $2, NULL, true); SELECT $1",
            ),
            ("DO $$ BEGIN DELETE FROM t; END $$", "DO $1"),
            ("SELEKT 'secret'", "<unparsable statement>"),
        ];
        for (sql, want) in cases {
            assert_eq!(normalize(sql), want, "{sql}");
            // The decision path's text, from the classification's parse.
            assert_eq!(classified(sql), want, "{sql}");
        }
    }

    fn classified(sql: &str) -> String {
        crate::sql::Classifier::default().classify_text(sql).1
    }

    #[test]
    fn text_the_classifier_refuses_as_a_whole_is_not_quoted() {
        for sql in [
            // Reads differently with standard_conforming_strings off.
            "SELECT 'a\\', 'hunter2'",
            // The lexer and sqlparser disagree on a statement boundary.
            "SELECT 'hunter2' /* unterminated",
        ] {
            let (c, text) = crate::sql::Classifier::default().classify_text(sql);
            assert!(c.any_unparsable(), "{sql}");
            assert_eq!(text, "<unparsable statement>", "{sql}");
        }
    }

    #[test]
    fn no_quoted_data_survives() {
        for sql in [
            "ALTER ROLE app PASSWORD 'hunter2'",
            "CREATE ROLE x LOGIN PASSWORD 'hunter2'",
            "COPY t TO '/tmp/hunter2'",
            "SELECT $tag$hunter2$tag$",
            "SET application_name = 'hunter2'",
            "SELECT U&'hunter2'",
        ] {
            for n in [normalize(sql), classified(sql)] {
                assert!(!n.contains("hunter2"), "{sql} -> {n}");
            }
        }
    }

    #[test]
    fn normalized_text_classifies_like_the_original() {
        for sql in [
            "SELECT * FROM customers c JOIN orders o ON o.customer = c.id WHERE c.email = 'x'",
            "WITH gone AS (DELETE FROM customers WHERE id = 3 RETURNING 1) SELECT count(*) FROM gone",
            "UPDATE orders SET note = 'x' WHERE id = 1",
            "SELECT pg_read_file('/etc/passwd')",
        ] {
            let a = super::super::classify(sql);
            let b = super::super::classify(&normalize(sql));
            let shape = |c: &super::super::Classification| {
                c.statements
                    .iter()
                    .map(|s| (s.kind, s.tables.clone(), s.functions.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(shape(&a), shape(&b), "{sql}");
        }
    }
}
