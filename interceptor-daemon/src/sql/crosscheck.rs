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
//!
//! Agreeing on a statement's kind is not enough for table rules: sqlparser
//! reads `SELECT * FROM ONLY secrets` as a read of a table named `only`
//! (alias `secrets`). So the names a policy matches are compared too
//! ([`super::pgnames`] collects them from PostgreSQL's tree): every table any
//! statement names (DDL and DCL included) and every write target must be in
//! ours, and every call of a dangerous function. Ours may name more.
//!
//! The same tree classifies what sqlparser cannot parse, where it tells a
//! policy all it needs ([`PgStatement::classification`]: maintenance, DDL
//! and grants without code or rows, such as `REFRESH MATERIALIZED VIEW` or
//! `ALTER SEQUENCE`); [`redacted`] gives such a statement's audit text.

use pg_query::{NodeEnum, protobuf};

use super::{
    Access, Classification, DangerousFunctions, Flag, Kind, QualifiedName, StatementInfo,
    TableAccess, pgnames::PgNames,
};

/// One statement as PostgreSQL's parser reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PgStatement {
    pub span: std::ops::Range<usize>,
    pub kind: Kind,
    /// The tables and functions it names.
    pub names: PgNames,
    /// Its type is one whose meaning for a policy is all in its kind and
    /// names ([`described_by_names`]).
    pub described: bool,
    /// It creates or replaces a routine: code that runs later, flagged
    /// [`Flag::CreatesRoutine`] as in sqlparser's reading of CREATE FUNCTION.
    pub creates_routine: bool,
}

impl PgStatement {
    /// Our classification of this statement taken from PostgreSQL's tree,
    /// for a statement sqlparser cannot parse (`REFRESH MATERIALIZED VIEW`,
    /// `ALTER SEQUENCE`, `VACUUM (ANALYZE) t`, `ALTER TABLE ... ATTACH
    /// PARTITION`...): its kind, every table it names (written where it
    /// creates or changes them), every function it calls and the dangerous
    /// ones flagged. `None` unless its type is [`described_by_names`].
    pub(crate) fn classification(&self, dangerous: &DangerousFunctions) -> Option<StatementInfo> {
        if !self.described {
            return None;
        }
        let mut tables: Vec<TableAccess> = self
            .names
            .relations
            .iter()
            .map(|n| TableAccess {
                table: QualifiedName { parts: n.clone() },
                access: if self.names.write_targets.contains(n) {
                    Access::Write
                } else {
                    Access::Read
                },
            })
            .collect();
        tables.sort();
        tables.dedup();
        let mut functions: Vec<QualifiedName> = self
            .names
            .calls
            .iter()
            .map(|f| QualifiedName { parts: f.clone() })
            .collect();
        functions.sort();
        functions.dedup();
        let mut flags: Vec<Flag> = dangerous.flags(&functions).collect();
        if self.creates_routine {
            flags.push(Flag::CreatesRoutine);
        }
        Some(StatementInfo {
            span: self.span.clone(),
            kind: self.kind,
            tables,
            columns: Vec::new(),
            functions,
            flags,
            error: None,
        })
    }
}

/// Statement types whose effect a policy can judge from their kind and the
/// names in their tree alone: DDL, maintenance and grants that return no
/// rows (so no column is read or masked), carry no code to run later (no
/// trigger, rule or DO body; ALTER FUNCTION changes a routine's properties,
/// not its code) and no query whose rows go anywhere (CREATE TABLE AS,
/// CREATE VIEW and COPY stay with sqlparser). CREATE FUNCTION / PROCEDURE
/// carries code, but is judged as sqlparser's reading judges it: by kind and
/// name, flagged as creating a routine, its body unread. Publications are
/// left out: they export rows, `FOR ALL TABLES` without naming any.
fn described_by_names(n: &NodeEnum) -> bool {
    use NodeEnum as N;
    match n {
        N::CreateSchemaStmt(s) => s.schema_elts.is_empty(),
        N::RefreshMatViewStmt(_)
        | N::CreateSeqStmt(_)
        | N::AlterSeqStmt(_)
        | N::VacuumStmt(_)
        | N::ReindexStmt(_)
        | N::ClusterStmt(_)
        | N::CheckPointStmt(_)
        | N::ConstraintsSetStmt(_)
        | N::LockStmt(_)
        | N::CreateStmt(_)
        | N::CreateForeignTableStmt(_)
        | N::AlterTableStmt(_)
        | N::AlterObjectSchemaStmt(_)
        | N::RenameStmt(_)
        | N::AlterOwnerStmt(_)
        | N::AlterFunctionStmt(_)
        | N::CreateFunctionStmt(_)
        | N::CommentStmt(_)
        | N::IndexStmt(_)
        | N::CreateStatsStmt(_)
        | N::AlterStatsStmt(_)
        | N::DropStmt(_)
        | N::CreateEnumStmt(_)
        | N::AlterEnumStmt(_)
        | N::CompositeTypeStmt(_)
        | N::CreateDomainStmt(_)
        | N::AlterDomainStmt(_)
        | N::CreatePolicyStmt(_)
        | N::AlterPolicyStmt(_)
        | N::GrantStmt(_)
        | N::GrantRoleStmt(_)
        | N::AlterDefaultPrivilegesStmt(_)
        | N::DropOwnedStmt(_)
        | N::ReassignOwnedStmt(_) => true,
        _ => false,
    }
}

/// `sql` (one statement) as PostgreSQL's own scanner tokenizes it, with
/// every constant written as a numbered placeholder (`$n`, after the
/// statement's own parameters, as [`super::normalize`] does) and comments
/// dropped: the audit log's text for a statement classified from
/// PostgreSQL's tree. Whitespace between tokens becomes one space. Like
/// every recorded text it must parse again (`policy simulate` re-decides
/// it): where the grammar takes only a literal (`ALTER SEQUENCE s RESTART
/// WITH 5000`) it does not, and the statement is not quoted (`None`).
pub(crate) fn redacted(sql: &str) -> Option<String> {
    use protobuf::Token as T;
    let scanned = pg_query::scan(sql).ok()?;
    let mut tokens = Vec::with_capacity(scanned.tokens.len());
    for t in &scanned.tokens {
        let range = usize::try_from(t.start).ok()?..usize::try_from(t.end).ok()?;
        tokens.push((T::try_from(t.token).ok()?, range));
    }
    let mut n = tokens
        .iter()
        .filter(|(t, _)| *t == T::Param)
        .filter_map(|(_, r)| sql.get(r.start + 1..r.end)?.parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    let mut out = String::with_capacity(sql.len());
    let mut last_end = 0;
    for (token, range) in tokens {
        if matches!(token, T::SqlComment | T::CComment) {
            continue;
        }
        if !out.is_empty() && range.start > last_end {
            out.push(' ');
        }
        last_end = range.end;
        match token {
            T::Sconst | T::Usconst | T::Bconst | T::Xconst | T::Iconst | T::Fconst => {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            }
            _ => out.push_str(sql.get(range)?),
        }
    }
    pg_query::parse(&out).is_ok().then_some(out)
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
        let names = match &raw.stmt {
            Some(stmt) => PgNames::of(stmt)?,
            None => PgNames::default(),
        };
        let node = raw.stmt.as_ref().and_then(|n| n.node.as_ref());
        out.push(PgStatement {
            span: start..end,
            kind,
            names,
            described: node.is_some_and(described_by_names),
            creates_routine: matches!(node, Some(NodeEnum::CreateFunctionStmt(_))),
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
    /// The same statements, but a name PostgreSQL's parser sees (a table,
    /// write target or dangerous call) is not in ours (the explanation).
    Names(String),
}

impl std::fmt::Display for Disagreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Disagreement::Rejected(e) => write!(
                f,
                "cross-check: PostgreSQL's parser rejects the text ({e}) where ours read it"
            ),
            Disagreement::Differs(e) | Disagreement::Names(e) => write!(f, "cross-check: {e}"),
        }
    }
}

/// Compares our classification of `sql` with PostgreSQL's reading; `Err`
/// explains the first disagreement.
pub(crate) fn check(
    sql: &str,
    ours: &Classification,
    dangerous: &DangerousFunctions,
) -> Result<(), Disagreement> {
    let theirs = pg_statements(sql).map_err(Disagreement::Rejected)?;
    compare(&theirs, ours, dangerous)
}

/// [`check`] against PostgreSQL's reading already made.
pub(crate) fn compare(
    theirs: &[PgStatement],
    ours: &Classification,
    dangerous: &DangerousFunctions,
) -> Result<(), Disagreement> {
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
        if o.kind != Kind::Unparsable {
            names_agree(p, o, dangerous)
                .map_err(|e| Disagreement::Names(format!("statement {}: {e}", i + 1)))?;
        }
    }
    Ok(())
}

/// What a policy reads by name must be in our reading wherever PostgreSQL's
/// parser sees it: every table any statement names (a table ours missed is
/// one a table rule cannot deny: a query's, a write's, a foreign key's
/// referenced table, a trigger's, a grant's), every write target, and every
/// call of a dangerous function. Ours may see more (it is not compared the
/// other way).
fn names_agree(
    p: &PgStatement,
    o: &StatementInfo,
    dangerous: &DangerousFunctions,
) -> Result<(), String> {
    // A one-part name may be a CTE; which one only the scopes tell, and
    // ours resolves them (so a CTE's name is not compared).
    let cte = |n: &[String]| matches!(n, [one] if p.names.ctes.contains(one));
    let ours_has = |n: &[String], write: bool| {
        o.tables
            .iter()
            .any(|t| t.table.parts == n && (!write || t.access == Access::Write))
    };
    for n in &p.names.relations {
        if !cte(n) && !ours_has(n, false) {
            return Err(format!(
                "PostgreSQL's parser reads table {}, ours does not see it",
                n.join(".")
            ));
        }
    }
    for n in &p.names.write_targets {
        if !cte(n) && !ours_has(n, true) {
            return Err(format!(
                "PostgreSQL's parser writes table {}, ours does not",
                n.join(".")
            ));
        }
    }
    for f in &p.names.calls {
        let name = super::QualifiedName { parts: f.clone() };
        if dangerous.matches(&name) && !o.functions.contains(&name) {
            return Err(format!(
                "PostgreSQL's parser calls {}, ours does not see the call",
                f.join(".")
            ));
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
            // Tables and functions in every position the grammar has: the
            // name comparison refuses none of them.
            "SELECT * FROM db.s.t JOIN \"Mixed\".\"Case\" m ON m.id = t.id",
            "SELECT * FROM t NATURAL JOIN u",
            "SELECT * FROM t a JOIN u b USING (id) WHERE a.x IN (SELECT x FROM w)",
            "SELECT (SELECT max(x) FROM m), exists(SELECT 1 FROM e) FROM t",
            "SELECT a FROM t GROUP BY a HAVING count(*) > (SELECT 1 FROM h) ORDER BY (SELECT 1 FROM o)",
            "SELECT * FROM t LIMIT (SELECT 1 FROM lim) OFFSET (SELECT 0 FROM off)",
            "SELECT * FROM t1, LATERAL (SELECT * FROM t2 WHERE t2.a = t1.a) s",
            "SELECT * FROM generate_series(1, 3) g, unnest(ARRAY[1]) AS e",
            "SELECT * FROM t TABLESAMPLE SYSTEM (10)",
            "SELECT * FROM (VALUES (1), ((SELECT 2 FROM v))) x(a)",
            "SELECT * FROM t WHERE a = ANY (SELECT a FROM u)",
            "SELECT * FROM t AS x FOR SHARE OF x SKIP LOCKED",
            "SELECT * FROM t FOR UPDATE OF t NOWAIT",
            "SELECT row_number() OVER w FROM t WINDOW w AS (PARTITION BY a)",
            "SELECT EXTRACT(year FROM d), TRIM(x), substring(x FROM 2), d AT TIME ZONE 'UTC' FROM t",
            "SELECT ceil(x), floor(x), position('a' IN x), overlay(x PLACING 'y' FROM 1) FROM t",
            "SELECT * FROM t UNION SELECT * FROM u EXCEPT SELECT * FROM w",
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r",
            "WITH t AS (SELECT * FROM t) SELECT * FROM t",
            "WITH a AS (SELECT 1), b AS (SELECT * FROM a, real_b) SELECT * FROM b",
            "DECLARE c CURSOR FOR SELECT * FROM t",
            "INSERT INTO t DEFAULT VALUES",
            "INSERT INTO s.t AS x (a) SELECT a FROM u ON CONFLICT (a) DO UPDATE SET b = EXCLUDED.b RETURNING (SELECT 1 FROM r)",
            "UPDATE t SET a = (SELECT a FROM u) FROM v WHERE t.id = v.id RETURNING *",
            "DELETE FROM t USING u WHERE t.a = u.a",
            "MERGE INTO t USING (SELECT * FROM s) src ON t.id = src.id WHEN NOT MATCHED THEN INSERT VALUES (src.id)",
            "WITH d AS (DELETE FROM t RETURNING *) INSERT INTO archive SELECT * FROM d",
            "PREPARE q AS INSERT INTO t SELECT * FROM u",
            "EXPLAIN (ANALYZE) UPDATE t SET a = 1 FROM u",
            "TRUNCATE a, s.b",
            "SELECT pg_catalog.now(), lower(x), coalesce(a, b), nullif(a, b), greatest(a, b) FROM t",
            "SELECT pg_read_file('f'), pg_catalog.lo_export(1, '/tmp/x') FROM t",
            "SELECT * FROM dblink('x', 'SELECT 1') AS r(a int)",
            "COPY (SELECT pg_ls_dir('.')) TO STDOUT",
            // DDL and DCL: every table they name, created or referenced.
            "CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint REFERENCES customers (id) ON DELETE CASCADE)",
            "CREATE TABLE items (order_id bigint, FOREIGN KEY (order_id) REFERENCES public.orders (id))",
            "CREATE TABLE IF NOT EXISTS \"Mixed\".\"Case\" (id int REFERENCES \"Other\".\"Ref\")",
            "CREATE TABLE child (extra int) INHERITS (parent, s.other_parent)",
            "CREATE TABLE m_2026 PARTITION OF m FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
            "CREATE TABLE t_as AS SELECT * FROM customers WHERE false",
            "CREATE MATERIALIZED VIEW mv AS SELECT customer_id, sum(total) FROM orders GROUP BY 1",
            "ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (customer_id) REFERENCES customers (id)",
            "ALTER TABLE orders ADD COLUMN coupon_id bigint REFERENCES coupons (id)",
            "ALTER TABLE orders RENAME TO purchases",
            "ALTER INDEX idx_orders RENAME TO idx_orders_2",
            "CREATE UNIQUE INDEX CONCURRENTLY idx_email ON customers (lower(email))",
            "CREATE SEQUENCE order_seq START 1000",
            "CREATE TRIGGER trg BEFORE UPDATE ON public.orders FOR EACH ROW EXECUTE FUNCTION touch()",
            "DROP TRIGGER IF EXISTS trg ON orders",
            "CREATE POLICY tenant ON orders USING (tenant_id = 1)",
            "ALTER POLICY tenant ON orders RENAME TO tenant_2",
            "ALTER TABLE orders RENAME CONSTRAINT fk TO fk_2",
            "CREATE TYPE pair AS (a int, b text)",
            "GRANT SELECT, INSERT ON orders, customers TO app",
            "GRANT USAGE ON SEQUENCE order_seq TO app",
            "REVOKE DELETE ON TABLE customers FROM app",
            "VACUUM FULL customers",
            "DROP TABLE IF EXISTS items, orders CASCADE",
            "GRANT SELECT ON ALL TABLES IN SCHEMA public, app TO reporting",
            "REVOKE ALL ON ALL SEQUENCES IN SCHEMA app FROM reporting",
            "GRANT USAGE ON SCHEMA app TO reporting",
            "DROP SCHEMA IF EXISTS staging CASCADE",
            "ALTER SCHEMA staging RENAME TO archive",
            "ALTER SCHEMA staging OWNER TO migrator",
        ] {
            let c = plain.classify(sql);
            assert!(!c.any_unparsable(), "{sql}: {c:?}");
            assert_eq!(
                check(sql, &c, &DangerousFunctions::builtin()),
                Ok(()),
                "{sql}"
            );
            assert_eq!(classify(sql), c, "{sql}");
        }
    }

    /// A reading that misses a table, a write or a dangerous call that
    /// PostgreSQL's parser sees is refused, whatever position it is in.
    #[test]
    fn a_name_ours_misses_is_a_disagreement() {
        let plain = Classifier::default().with_cross_check(false);
        let dangerous = DangerousFunctions::builtin();
        let differs = |sql: &str, edit: &dyn Fn(&mut StatementInfo)| {
            let mut c = plain.classify(sql);
            assert_eq!(check(sql, &c, &dangerous), Ok(()), "{sql}");
            edit(&mut c.statements[0]);
            match check(sql, &c, &dangerous) {
                Err(Disagreement::Names(e)) => e,
                other => panic!("{sql}: {other:?}"),
            }
        };
        let drop_table = |name: &'static str| {
            move |s: &mut StatementInfo| s.tables.retain(|t| t.table.parts.join(".") != name)
        };
        assert_eq!(
            differs("SELECT * FROM t", &drop_table("t")),
            "statement 1: PostgreSQL's parser reads table t, ours does not see it"
        );
        assert!(
            differs(
                "INSERT INTO t VALUES (1) RETURNING (SELECT secret FROM vault)",
                &drop_table("vault")
            )
            .contains("reads table vault")
        );
        assert!(
            differs(
                "SELECT * FROM t LIMIT (SELECT 1 FROM s.lim)",
                &drop_table("s.lim")
            )
            .contains("reads table s.lim")
        );
        let read_only = |s: &mut StatementInfo| {
            for t in &mut s.tables {
                t.access = Access::Read;
            }
        };
        assert_eq!(
            differs(
                "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
                &read_only
            ),
            "statement 1: PostgreSQL's parser writes table t, ours does not"
        );
        assert_eq!(
            differs(
                "SELECT 1 FROM t WHERE a = (SELECT pg_catalog.pg_read_file('x'))",
                &|s| s.functions.clear()
            ),
            "statement 1: PostgreSQL's parser calls pg_catalog.pg_read_file, ours does not see the call"
        );
        assert_eq!(
            differs(
                "CREATE TABLE x (id int REFERENCES secrets (id))",
                &drop_table("secrets")
            ),
            "statement 1: PostgreSQL's parser reads table secrets, ours does not see it"
        );
        assert!(
            differs("GRANT SELECT ON s.secrets TO app", &drop_table("s.secrets"))
                .contains("reads table s.secrets")
        );
        // Every table of a schema is compared like one table.
        assert!(
            differs(
                "GRANT SELECT ON ALL TABLES IN SCHEMA s TO app",
                &drop_table("s.*")
            )
            .contains("reads table s.*")
        );
        assert!(differs("DROP SCHEMA s CASCADE", &drop_table("s.*")).contains("reads table s.*"));
        // A call that is not dangerous, or a CTE's name, is not compared.
        let mut c = plain.classify("WITH r AS (SELECT lower('x')) SELECT * FROM r");
        c.statements[0].functions.clear();
        c.statements[0].tables.clear();
        assert_eq!(
            check(
                "WITH r AS (SELECT lower('x')) SELECT * FROM r",
                &c,
                &dangerous
            ),
            Ok(())
        );
    }

    #[test]
    fn redacted_text_keeps_code_and_drops_constants_and_comments() {
        assert_eq!(
            redacted("VACUUM  (ANALYZE)\n orders -- nightly").as_deref(),
            Some("VACUUM (ANALYZE) orders")
        );
        assert_eq!(
            redacted(
                "ALTER TABLE \"T\" ALTER c SET DEFAULT B'101' || X'ff' || 'a''b' || -1.5e3 || $1"
            )
            .as_deref(),
            Some("ALTER TABLE \"T\" ALTER c SET DEFAULT $2 || $3 || $4 || -$5 || $1")
        );
        assert_eq!(
            redacted("CREATE DOMAIN d AS text CHECK (VALUE <> $tag$pw$tag$ /* x */)").as_deref(),
            Some("CREATE DOMAIN d AS text CHECK (VALUE <> $1 )")
        );
        // Only a literal fits there: not quoted rather than quoted with it.
        assert_eq!(redacted("ALTER SEQUENCE s RESTART WITH 5000"), None);
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
