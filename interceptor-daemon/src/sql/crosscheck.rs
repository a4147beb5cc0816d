//! Cross-check against PostgreSQL's own grammar (libpg_query, through the
//! `pg_query` crate): after sqlparser and our boundary lexer have classified
//! a text, the real parser must agree on where every statement begins and
//! ends and on each statement's kind.
//!
//! The classifier's lexer and sqlparser are re-implementations; a text that
//! they read one way and the server another is the classic bypass. This
//! check asks the server's grammar itself (the PostgreSQL 17 parser compiled
//! into the daemon), so a disagreement shows up as one: the whole text
//! becomes [`Kind::Unparsable`] (denied unless a rule allows `unparsable`)
//! with an explanation naming what differed. It runs where a decision is
//! made from scratch, i.e. on a decision-cache miss (`pgproxy` caches by
//! [`super::fingerprint`]), so its cost (tens of microseconds for ordinary
//! statements, see the timing test) is paid once per distinct statement
//! shape per session.
//!
//! The kinds compared are the classifier's own, derived from the parse-tree
//! node of each statement the way [`super::walk`] derives them from
//! sqlparser's AST (a write in a CTE makes a query a write, `SELECT INTO`
//! is DDL, `SET role` a role switch, EXPLAIN/PREPARE take their inner
//! statement's kind...). Statements ours could not read are unparsable
//! already and are not compared.

use pg_query::{NodeEnum, protobuf};

use super::{Classification, Kind};

/// One statement as PostgreSQL's parser reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PgStatement {
    pub span: std::ops::Range<usize>,
    pub kind: Kind,
}

/// Splits and classifies `sql` with libpg_query; `Err` with the parser's
/// message when PostgreSQL would reject the text.
pub(crate) fn pg_statements(sql: &str) -> Result<Vec<PgStatement>, String> {
    let parsed = pg_query::parse(sql).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(parsed.protobuf.stmts.len());
    for raw in &parsed.protobuf.stmts {
        let start = usize::try_from(raw.stmt_location).map_err(|_| "negative location")?;
        let end = match usize::try_from(raw.stmt_len).map_err(|_| "negative length")? {
            // 0: up to the end of the string (the last statement).
            0 => sql.len(),
            len => start + len,
        };
        let kind = raw
            .stmt
            .as_ref()
            .and_then(|n| n.node.as_ref())
            .map_or(Kind::Unparsable, kind_of);
        out.push(PgStatement {
            span: start..end,
            kind,
        });
    }
    Ok(out)
}

/// How PostgreSQL's reading differs from ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Disagreement {
    /// PostgreSQL's parser rejects the text (its message).
    Rejected(String),
    /// Another statement count, span or kind (the explanation).
    Differs(String),
}

impl std::fmt::Display for Disagreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Disagreement::Rejected(e) => write!(
                f,
                "cross-check: PostgreSQL's parser rejects the text ({e}) where ours read it"
            ),
            Disagreement::Differs(e) => write!(f, "cross-check: {e}"),
        }
    }
}

/// Compares our classification of `sql` with PostgreSQL's reading; `Err`
/// explains the first disagreement.
pub(crate) fn check(sql: &str, ours: &Classification) -> Result<(), Disagreement> {
    let theirs = pg_statements(sql).map_err(Disagreement::Rejected)?;
    if theirs.len() != ours.statements.len() {
        return Err(Disagreement::Differs(format!(
            "PostgreSQL's parser sees {} statement(s), ours {}",
            theirs.len(),
            ours.statements.len()
        )));
    }
    for (i, (p, o)) in theirs.iter().zip(&ours.statements).enumerate() {
        if p.span != o.span {
            return Err(Disagreement::Differs(format!(
                "statement {} spans bytes {:?} for PostgreSQL's parser, {:?} for ours",
                i + 1,
                p.span,
                o.span
            )));
        }
        if o.kind != Kind::Unparsable && p.kind != o.kind {
            return Err(Disagreement::Differs(format!(
                "statement {} is {} for PostgreSQL's parser, {} for ours",
                i + 1,
                name(p.kind),
                name(o.kind)
            )));
        }
    }
    Ok(())
}

fn name(k: Kind) -> String {
    format!("{k:?}").to_lowercase()
}

fn inner(n: &Option<Box<protobuf::Node>>) -> Kind {
    n.as_ref()
        .and_then(|n| n.node.as_ref())
        .map_or(Kind::Unparsable, kind_of)
}

fn is_role_setting(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "role" | "session_authorization"
    )
}

/// The kind of one statement's parse tree.
fn kind_of(n: &NodeEnum) -> Kind {
    use NodeEnum as N;
    match n {
        N::SelectStmt(s) => select_kind(s),
        N::InsertStmt(_)
        | N::UpdateStmt(_)
        | N::DeleteStmt(_)
        | N::MergeStmt(_)
        | N::TruncateStmt(_) => Kind::Write,
        N::ExplainStmt(e) => inner(&e.query),
        N::PrepareStmt(p) => inner(&p.query),
        N::DeclareCursorStmt(_) => Kind::Read,
        N::ExecuteStmt(_) => Kind::Execute,
        N::DoStmt(_) | N::CallStmt(_) => Kind::Procedural,
        N::TransactionStmt(_) => Kind::Transaction,
        N::VariableSetStmt(v) if is_role_setting(&v.name) => Kind::RoleSwitch,
        // DISCARD ALL includes SET SESSION AUTHORIZATION DEFAULT.
        N::DiscardStmt(d) if d.target == protobuf::DiscardMode::DiscardAll as i32 => {
            Kind::RoleSwitch
        }
        N::GrantStmt(_)
        | N::GrantRoleStmt(_)
        | N::CreateRoleStmt(_)
        | N::AlterRoleStmt(_)
        | N::AlterRoleSetStmt(_)
        | N::DropRoleStmt(_)
        | N::AlterDefaultPrivilegesStmt(_)
        | N::ReassignOwnedStmt(_)
        | N::DropOwnedStmt(_) => Kind::Dcl,
        N::VariableSetStmt(_)
        | N::VariableShowStmt(_)
        | N::DiscardStmt(_)
        | N::CopyStmt(_)
        | N::DeallocateStmt(_)
        | N::VacuumStmt(_)
        | N::ListenStmt(_)
        | N::UnlistenStmt(_)
        | N::NotifyStmt(_)
        | N::LockStmt(_)
        | N::FetchStmt(_)
        | N::ClosePortalStmt(_)
        | N::LoadStmt(_)
        | N::ConstraintsSetStmt(_)
        | N::CheckPointStmt(_)
        | N::ReindexStmt(_)
        | N::ClusterStmt(_) => Kind::Utility,
        // Every other top-level statement of the grammar creates, alters,
        // drops, comments on or labels a schema object.
        _ => Kind::Ddl,
    }
}

fn select_kind(s: &protobuf::SelectStmt) -> Kind {
    if select_into(s) {
        Kind::Ddl
    } else if writes_in_ctes(s) {
        Kind::Write
    } else {
        Kind::Read
    }
}

/// `SELECT ... INTO t` (also in a branch of a set operation).
fn select_into(s: &protobuf::SelectStmt) -> bool {
    s.into_clause.is_some()
        || s.larg.as_deref().is_some_and(select_into)
        || s.rarg.as_deref().is_some_and(select_into)
}

/// A data-modifying statement in a WITH clause (at any depth of CTEs).
fn writes_in_ctes(s: &protobuf::SelectStmt) -> bool {
    let ctes = s.with_clause.iter().flat_map(|w| w.ctes.iter());
    ctes.filter_map(|c| match c.node.as_ref() {
        Some(NodeEnum::CommonTableExpr(cte)) => cte.ctequery.as_ref()?.node.as_ref(),
        _ => None,
    })
    .any(|q| match q {
        NodeEnum::SelectStmt(inner) => writes_in_ctes(inner),
        other => kind_of(other) == Kind::Write,
    }) || s.larg.as_deref().is_some_and(writes_in_ctes)
        || s.rarg.as_deref().is_some_and(writes_in_ctes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::{Classifier, classify};

    #[test]
    fn postgres_reads_statements_and_kinds() {
        let s = pg_statements("SELECT 1; /* c */ DELETE FROM t;; WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d").unwrap();
        assert_eq!(
            s.iter().map(|s| s.kind).collect::<Vec<_>>(),
            vec![Kind::Read, Kind::Write, Kind::Write]
        );
        assert_eq!(s[0].span, 0..8);
        assert_eq!(s[1].span, 9..31);
        assert!(
            pg_statements("SELEC 1")
                .unwrap_err()
                .contains("syntax error")
        );
    }

    /// Every ordinary statement the classifier reads is read alike by
    /// PostgreSQL's parser: the cross-check refuses nothing legitimate.
    #[test]
    fn ordinary_statements_agree() {
        let plain = Classifier {
            cross_check: false,
            ..Classifier::default()
        };
        for sql in [
            "SELECT 1",
            "select * from t where a = $1",
            "VALUES (1), (2)",
            "EXPLAIN SELECT * FROM t",
            "EXPLAIN ANALYZE DELETE FROM t",
            "INSERT INTO t VALUES (1) RETURNING id",
            "UPDATE t SET a = 1 WHERE b = 'x;y'",
            "DELETE FROM t",
            "TRUNCATE t",
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "WITH r AS (SELECT 1) SELECT * FROM r",
            "SELECT * INTO copy_of_t FROM t",
            "CREATE TABLE t (a int)",
            "ALTER TABLE t ADD COLUMN b int",
            "DROP TABLE t",
            "CREATE INDEX i ON t (a)",
            "CREATE VIEW v AS SELECT * FROM t",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
            "COMMENT ON TABLE t IS 'x'",
            "GRANT SELECT ON t TO bob",
            "REVOKE ALL ON t FROM bob",
            "CREATE ROLE bob",
            "ALTER ROLE bob SUPERUSER",
            "DROP ROLE bob",
            "SET ROLE admin",
            "set local role admin",
            "SET SESSION AUTHORIZATION postgres",
            "RESET ROLE",
            "SET role = 'admin'",
            "DISCARD ALL",
            "BEGIN",
            "START TRANSACTION READ ONLY",
            "COMMIT",
            "ROLLBACK",
            "SAVEPOINT a",
            "RELEASE SAVEPOINT a",
            "SET search_path = evil, public",
            "SHOW search_path",
            "RESET ALL",
            "VACUUM t",
            "ANALYZE t",
            "LISTEN chan",
            "NOTIFY chan",
            "LOCK TABLE t",
            "COPY t TO STDOUT",
            "PREPARE p AS SELECT 1",
            "EXECUTE p(1)",
            "DEALLOCATE p",
            "CALL do_things(1)",
            "DO $$ BEGIN END $$",
            "SELECT * FROM t FOR UPDATE",
            "SELECT 1; SELECT 2;",
            "BEGIN; UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2; END",
        ] {
            let c = plain.classify(sql);
            assert!(!c.any_unparsable(), "{sql}: {c:?}");
            assert_eq!(check(sql, &c), Ok(()), "{sql}");
            assert_eq!(classify(sql), c, "{sql}");
        }
    }

    /// The cost of a decision-cache miss with and without the cross-check
    /// (printed, never asserted: timings depend on the machine).
    #[test]
    fn miss_cost() {
        let with = Classifier::default();
        let without = Classifier {
            cross_check: false,
            ..Classifier::default()
        };
        let texts = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
            "SELECT c.id, c.email, o.total FROM customers c JOIN orders o ON o.customer_id = c.id WHERE o.created_at > now() - interval '1 day' ORDER BY o.total DESC LIMIT 50",
        ];
        let rounds = 200;
        let time = |c: &Classifier| {
            let t = std::time::Instant::now();
            for _ in 0..rounds {
                for s in texts {
                    std::hint::black_box(c.classify(s));
                }
            }
            t.elapsed() / (rounds * texts.len() as u32)
        };
        let (a, b) = (time(&without), time(&with));
        let t = std::time::Instant::now();
        for _ in 0..rounds {
            for s in texts {
                std::hint::black_box(pg_statements(s).ok());
            }
        }
        let pg = t.elapsed() / (rounds * texts.len() as u32);
        println!(
            "classification per cache miss: {a:?} without the cross-check, {b:?} with it (libpg_query alone: {pg:?})"
        );
    }
}
