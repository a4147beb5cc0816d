//! MySQL/MariaDB statements (`COM_QUERY`, `COM_STMT_PREPARE`), classified with
//! sqlparser's MySQL dialect into the same terms as PostgreSQL statements.
//!
//! One statement per query: the MySQL handler turns multi-statements off on
//! the wire, so a query that parses as more than one statement is unparsable.
//! The server and sqlparser must not read the text differently, so text with
//! a construct where they could is unparsable (fail closed):
//! * `/*!...*/` and `/*M!...*/` comments, which the server *executes*;
//! * `--` not followed by a space or control character, which the server
//!   reads as two minus signs and sqlparser as a comment;
//! * any backslash: whether it escapes a quote depends on the session's
//!   `sql_mode` (NO_BACKSLASH_ESCAPES), which the client can change.
//!
//! Unquoted names are lower-cased like PostgreSQL names (MySQL's own case
//! rules depend on `lower_case_table_names`; write policy globs in lower
//! case).

use sqlparser::{dialect::MySqlDialect, parser::Parser};

use super::{
    Classification, Classifier, StatementInfo,
    normalize::{mysql_text, opaque},
    walk,
};

fn differential(sql: &str) -> Option<&'static str> {
    if sql.contains('\\') {
        return Some("backslash (its meaning depends on sql_mode)");
    }
    if sql.contains("/*!") || sql.contains("/*M!") {
        return Some("executable comment");
    }
    let b = sql.as_bytes();
    for i in 0..b.len().saturating_sub(1) {
        if b[i] == b'-' && b[i + 1] == b'-' && b.get(i + 2).is_some_and(|c| *c > b' ') {
            return Some("`--` without a following space");
        }
    }
    None
}

impl Classifier {
    /// Classifies one MySQL query string.
    pub fn classify_mysql(&self, sql: &str) -> Classification {
        self.classify_mysql_text(sql).0
    }

    /// Classifies one MySQL query string, with its literal-free text for the
    /// audit log and recordings ([`super::normalize()`], with `?`) from the same
    /// parse. Text the classifier will not read is not quoted either.
    pub fn classify_mysql_text(&self, sql: &str) -> (Classification, String) {
        if let Some(why) = differential(sql) {
            return (Classification::whole_unparsable(sql, why), opaque());
        }
        match Parser::parse_sql(&MySqlDialect {}, sql) {
            Err(e) => (
                Classification::whole_unparsable(sql, e.to_string()),
                opaque(),
            ),
            Ok(mut parsed) => match parsed.as_mut_slice() {
                [] => (Classification { statements: vec![] }, String::new()),
                [stmt] => (
                    Classification {
                        statements: vec![walk::analyze(stmt, 0..sql.len(), &self.dangerous, false)],
                    },
                    mysql_text(stmt),
                ),
                _ => (
                    Classification {
                        statements: vec![StatementInfo::unparsable(
                            0..sql.len(),
                            "more than one statement (multi-statements are off)",
                        )],
                    },
                    opaque(),
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::sql::{Classifier, Kind};

    fn kinds(sql: &str) -> Vec<(Kind, Vec<String>)> {
        Classifier::default()
            .classify_mysql(sql)
            .statements
            .iter()
            .map(|s| {
                (
                    s.kind,
                    s.tables.iter().map(|t| t.table.parts.join(".")).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn mysql_statements() {
        use Kind::*;
        // (statement, its kind, the tables it names)
        let cases: &[(&str, Kind, &[&str])] = &[
            (
                "SELECT * FROM `Orders` o JOIN shop.customers c ON o.c = c.id",
                Read,
                &["Orders", "shop.customers"],
            ),
            ("DELETE FROM customers WHERE id = 1;", Write, &["customers"]),
            (
                "INSERT INTO orders VALUES (1, 'a') # trailing",
                Write,
                &["orders"],
            ),
            // DDL names the tables it references: a foreign key's, in either form.
            (
                "CREATE TABLE o (c INT REFERENCES customers (id), d INT, FOREIGN KEY (d) REFERENCES `shop`.`vault` (id))",
                Ddl,
                &["customers", "o", "shop.vault"],
            ),
            (
                "ALTER TABLE o ADD CONSTRAINT fk FOREIGN KEY (c) REFERENCES customers (id)",
                Ddl,
                &["customers", "o"],
            ),
            // Every table of a database (MySQL's schema), or of all of them.
            ("GRANT SELECT ON shop.* TO 'app'@'%'", Dcl, &["shop.*"]),
            ("REVOKE ALL ON *.* FROM 'app'@'%'", Dcl, &["*.*"]),
            ("DROP DATABASE shop", Ddl, &["shop.*"]),
        ];
        for (sql, kind, tables) in cases {
            let tables: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
            assert_eq!(kinds(sql), vec![(*kind, tables)], "{sql}");
        }
        assert_eq!(kinds("DROP TABLE customers")[0].0, Ddl);
        for bad in [
            "SELECT 1; DROP TABLE customers",
            "SELECT 1 /*!50000 , (SELECT secret FROM secrets) */",
            "SELECT * FROM t WHERE x=1 --(SELECT 1 FROM secrets)",
            "SELECT 'a\\' FROM secrets -- '",
            "SELEKT 1",
        ] {
            assert_eq!(kinds(bad)[0].0, Unparsable, "{bad}");
        }
        assert_eq!(kinds("SELECT 1 -- comment")[0].0, Read);
    }
}
