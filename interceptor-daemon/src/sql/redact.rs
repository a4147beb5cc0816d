//! Statement text with every literal replaced by `?`, for people who must judge
//! a statement (approvers) without seeing the data in it.
//!
//! The text is sqlparser's rendering of the parsed statements with each value
//! swapped for a placeholder, then checked again: if the rendering still holds
//! any literal token (a construct the swap missed), nothing is returned and
//! callers fall back to the literal-free description.

use std::ops::ControlFlow;

use sqlparser::{
    ast::{Value, ValueWithSpan, VisitMut, VisitorMut},
    dialect::PostgreSqlDialect,
    parser::Parser,
    tokenizer::{Token, Tokenizer},
};

struct Redactor;

impl VisitorMut for Redactor {
    type Break = ();

    fn pre_visit_value(&mut self, v: &mut ValueWithSpan) -> ControlFlow<()> {
        if !matches!(
            v.value,
            Value::Null | Value::Boolean(_) | Value::Placeholder(_)
        ) {
            v.value = Value::Placeholder("?".into());
        }
        ControlFlow::Continue(())
    }
}

fn is_literal(t: &Token) -> bool {
    matches!(
        t,
        Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
    )
}

/// `sql` with its literals replaced by `?`, or `None` when that cannot be
/// done with certainty (unparsable text, or a literal left after the swap).
pub fn redacted(sql: &str) -> Option<String> {
    let dialect = PostgreSqlDialect {};
    let mut stmts = Parser::parse_sql(&dialect, sql).ok()?;
    if stmts.is_empty() {
        return None;
    }
    let _ = stmts.visit(&mut Redactor);
    let text = stmts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let tokens = Tokenizer::new(&dialect, &text).tokenize().ok()?;
    if tokens.iter().any(is_literal) {
        return None;
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn literals_are_replaced() {
        let cases = [
            (
                "DELETE FROM orders WHERE id = 1",
                "DELETE FROM orders WHERE id = ?",
            ),
            (
                "update customers set email = 'ada@example.com', n = $1 where name = E'x\\'y' /* c */",
                "UPDATE customers SET email = ?, n = $1 WHERE name = ?",
            ),
            (
                "SELECT * FROM t WHERE d > DATE '2020-01-01' AND x = $$secret$$ LIMIT 5",
                "SELECT * FROM t WHERE d > DATE ? AND x = ? LIMIT ?",
            ),
            ("SELECT 1; DELETE FROM t", "SELECT ?; DELETE FROM t"),
        ];
        for (sql, want) in cases {
            assert_eq!(redacted(sql).as_deref(), Some(want), "{sql}");
        }
        assert_eq!(redacted("SELEKT 1"), None);
        for sql in [
            "INSERT INTO t VALUES ('secret-value', 42, -7.5, X'ff', B'101')",
            "SELECT pg_read_file('/etc/passwd')",
            "CREATE ROLE bob PASSWORD 'hunter2'",
            "SET application_name = 'secret-value'",
            "COPY t TO PROGRAM 'curl secret-value'",
        ] {
            let r = redacted(sql);
            // The common forms must be shown; rarer ones may fall back to None.
            if sql.starts_with("INSERT") || sql.starts_with("SELECT") {
                assert!(r.is_some(), "{sql}");
            }
            if let Some(r) = r {
                for leak in [
                    "secret", "42", "7.5", "ff", "101", "passwd", "hunter2", "curl",
                ] {
                    assert!(!r.contains(leak), "{sql} -> {r}");
                }
            }
        }
    }
}
