//! SQL statement classifier: what a simple-query string would make PostgreSQL
//! do, in the terms a least-privilege policy decides on (statement kind, tables
//! read and written, functions called, risky constructs).
//!
//! The classifier is pure and deterministic; it never sees a connection. The
//! policy layer denies [`Kind::Unparsable`] by default, so everything here
//! leans towards "unparsable" whenever the reading is uncertain.
//!
//! # Parser differentials (fail closed)
//!
//! The classic bypass of an SQL firewall is text that the firewall and the
//! server read differently: a `;` the firewall thinks is inside a string, a
//! comment that hides a call from one of them, a backslash that escapes a quote
//! for one and not the other. So sqlparser is not trusted to find statement
//! boundaries on its own:
//!
//! 1. A small PostgreSQL-faithful lexer (`lexer`) splits the string at
//!    top-level `;`, honouring `'...'` (with `''`), `E'...'` (backslash
//!    escapes), `"..."` identifiers, `$$...$$` / `$tag$...$tag$`, `--` comments
//!    and *nested* `/* */` comments. `U&'...'` / `U&"..."` (Unicode escapes)
//!    are refused outright.
//! 2. The split is done twice, as `standard_conforming_strings` on and off
//!    would read plain strings (the setting is per session and the client can
//!    change it). If the readings differ, the string is unparsable.
//! 3. Every piece must tokenize in sqlparser to the same sequence of bare and
//!    quoted words as in our lexer (so nothing is code for one and a literal or
//!    comment for the other), and must parse to exactly one statement. Any
//!    disagreement makes the *whole* string unparsable, because the boundaries
//!    are then unreliable. A piece sqlparser merely fails to parse (where both
//!    lexers agree) is an unparsable statement; the others are still classified.
//!
//! Consequences worth knowing: statements sqlparser 0.63 does not know
//! (`REINDEX`, `CLUSTER`, `CHECKPOINT`, `REFRESH MATERIALIZED VIEW`, `TABLE t`,
//! `ALTER SYSTEM`, `SECURITY LABEL`, `BEGIN ATOMIC` bodies...) are unparsable.
//! `DO` blocks are recognised by our lexer alone and classified as opaque code.
//!
//! # Names
//!
//! Unquoted identifiers are lower-cased (ASCII only, as PostgreSQL does with
//! UTF-8), quoted ones kept exact, and both truncated to 63 bytes
//! (`NAMEDATALEN - 1`) as the server does. Tables are reported as written
//! (schema-qualified or not); the classifier does not know `search_path`.

pub mod columns;
mod crosscheck;
pub mod fuzz;
mod lexer;
mod mysql;
mod normalize;
mod pgnames;
#[cfg(test)]
mod tests;
mod walk;

pub use columns::ColumnRef;

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    ops::Range,
    sync::LazyLock,
};

use sqlparser::{
    dialect::PostgreSqlDialect,
    parser::Parser,
    tokenizer::{Token, Tokenizer},
};

/// What a statement does, coarsely; the first thing a policy looks at.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// SELECT / VALUES / EXPLAIN of a read, no side effects on tables.
    Read,
    /// INSERT, UPDATE, DELETE, MERGE, TRUNCATE, or a query whose CTE writes.
    Write,
    /// CREATE / ALTER / DROP / COMMENT of schema objects, SELECT INTO.
    Ddl,
    /// GRANT, REVOKE, CREATE/ALTER/DROP ROLE or USER.
    Dcl,
    /// SET ROLE, SET SESSION AUTHORIZATION, RESET ROLE, DISCARD ALL (which
    /// resets the session authorization), `SET role = ...`.
    RoleSwitch,
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT...
    Transaction,
    /// VACUUM, ANALYZE, SET, SHOW, COPY, LISTEN, NOTIFY, LOCK, DEALLOCATE...
    Utility,
    /// Runs server-side code: DO blocks, CALL.
    Procedural,
    /// EXECUTE of an SQL-level prepared statement: resolve it through
    /// [`PreparedStatements`]; unresolved, it must be denied.
    Execute,
    /// Could not be read reliably; deny by default.
    Unparsable,
}

/// A possibly qualified name (`table`, `schema.table`, `db.schema.table`),
/// normalised like PostgreSQL normalises identifiers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QualifiedName {
    pub parts: Vec<String>,
}

impl QualifiedName {
    pub fn new<S: Into<String>>(parts: impl IntoIterator<Item = S>) -> Self {
        Self {
            parts: parts.into_iter().map(Into::into).collect(),
        }
    }

    /// The last part: the object's own name.
    pub fn name(&self) -> &str {
        self.parts.last().map_or("", String::as_str)
    }

    /// The part before the name, if qualified.
    pub fn schema(&self) -> Option<&str> {
        self.parts
            .len()
            .checked_sub(2)
            .and_then(|i| self.parts.get(i))
            .map(String::as_str)
    }

    /// Every table of `schema` (`schema.*`), or of the database (`*`):
    /// what a statement that acts on all of them at once touches (GRANT ...
    /// ON ALL TABLES IN SCHEMA, DROP SCHEMA, ALTER DEFAULT PRIVILEGES). As a
    /// function name: every function of the schema (GRANT ... ON ALL
    /// FUNCTIONS IN SCHEMA).
    pub fn all_in(schema: Option<QualifiedName>) -> Self {
        let mut parts = schema.map(|s| s.parts).unwrap_or_default();
        parts.push("*".to_owned());
        Self { parts }
    }

    /// For a name from [`QualifiedName::all_in`], the schema's parts (empty
    /// for the whole database; MySQL's `*.*` is that too). A table or
    /// function really named `"*"` reads as every one too: a policy then
    /// denies more, never less.
    pub fn all_in_schema(&self) -> Option<&[String]> {
        match self.parts.split_last() {
            Some((last, schema)) if last == "*" => Some(if schema.iter().any(|p| p == "*") {
                &[]
            } else {
                schema
            }),
            _ => None,
        }
    }
}

impl fmt::Display for QualifiedName {
    /// SQL form: parts that are not plain lower-case identifiers are quoted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.parts.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            let plain = p
                .bytes()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == b'_')
                && p.bytes().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'$'
                });
            let every_table = p == "*" && self.all_in_schema().is_some();
            if plain || every_table {
                f.write_str(p)?;
            } else {
                write!(f, "\"{}\"", p.replace('"', "\"\""))?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    Read,
    Write,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableAccess {
    pub table: QualifiedName,
    pub access: Access,
}

/// Risky constructs, reported whatever the statement kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Flag {
    /// COPY ... TO/FROM PROGRAM: runs a shell command on the server.
    CopyProgram,
    /// COPY ... TO/FROM 'file': reads or writes the server's filesystem.
    CopyFile,
    /// Code whose effect cannot be classified (a DO block's body).
    OpaqueCode,
    /// CREATE FUNCTION / PROCEDURE: code that will run later, maybe as its owner.
    CreatesRoutine,
    /// A call to a function on the dangerous list.
    DangerousFunction(QualifiedName),
    /// SELECT ... FOR UPDATE / SHARE (needs UPDATE privilege in PostgreSQL).
    LocksRows,
    /// LOAD 'library': loads a shared library into the backend.
    LoadsLibrary,
    /// PREPARE name AS ...: the statement carries the inner classification.
    Prepare(String),
    /// EXECUTE name.
    Execute(String),
    /// DEALLOCATE name, or `None` for DEALLOCATE ALL / DISCARD ALL.
    Deallocate(Option<String>),
}

/// The classification of one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementInfo {
    /// Byte range of the statement in the classified string.
    pub span: Range<usize>,
    pub kind: Kind,
    /// Sorted, without duplicates; a table both read and written appears twice.
    pub tables: Vec<TableAccess>,
    /// Columns referenced, resolved to tables conservatively (see
    /// [`columns`]); sorted, without duplicates.
    pub columns: Vec<ColumnRef>,
    /// Every function or procedure called, sorted, without duplicates.
    pub functions: Vec<QualifiedName>,
    pub flags: Vec<Flag>,
    /// Why the statement is [`Kind::Unparsable`].
    pub error: Option<String>,
}

impl StatementInfo {
    fn unparsable(span: Range<usize>, error: impl Into<String>) -> Self {
        Self {
            span,
            kind: Kind::Unparsable,
            tables: Vec::new(),
            columns: Vec::new(),
            functions: Vec::new(),
            flags: Vec::new(),
            error: Some(error.into()),
        }
    }

    pub fn has_flag(&self, flag: &Flag) -> bool {
        self.flags.contains(flag)
    }

    /// True if any function on the dangerous list is called.
    pub fn calls_dangerous_function(&self) -> bool {
        self.flags
            .iter()
            .any(|f| matches!(f, Flag::DangerousFunction(_)))
    }

    pub fn reads(&self) -> impl Iterator<Item = &QualifiedName> {
        self.tables
            .iter()
            .filter(|t| t.access == Access::Read)
            .map(|t| &t.table)
    }

    pub fn writes(&self) -> impl Iterator<Item = &QualifiedName> {
        self.tables
            .iter()
            .filter(|t| t.access == Access::Write)
            .map(|t| &t.table)
    }
}

/// The classification of a whole simple-query string, statement by statement
/// (empty for a string with no statements: PostgreSQL answers
/// EmptyQueryResponse). When the string cannot be split reliably it holds a
/// single [`Kind::Unparsable`] entry covering all of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub statements: Vec<StatementInfo>,
}

impl Classification {
    /// True if any statement is unparsable (the policy default: deny all).
    pub fn any_unparsable(&self) -> bool {
        self.statements.iter().any(|s| s.kind == Kind::Unparsable)
    }

    /// Kinds and tables, literal-free, for logs and audit records:
    /// `write,read on [orders,customers]`.
    pub fn summary(&self) -> String {
        let kinds: Vec<String> = self
            .statements
            .iter()
            .map(|s| format!("{:?}", s.kind).to_lowercase())
            .collect();
        let tables: Vec<String> = self
            .statements
            .iter()
            .flat_map(|s| s.tables.iter().map(|t| t.table.parts.join(".")))
            .collect();
        format!("{} on [{}]", kinds.join(","), tables.join(","))
    }

    fn whole_unparsable(sql: &str, error: impl Into<String>) -> Self {
        Self {
            statements: vec![StatementInfo::unparsable(0..sql.len(), error)],
        }
    }
}

/// Functions whose calls are flagged [`Flag::DangerousFunction`]: they read or
/// write server files, signal backends, change settings (including `role` via
/// `set_config`), reach other servers, or run SQL given as a string (which
/// escapes table-level classification). Matching is on the unqualified name,
/// case-insensitively, whatever the schema: a user function with the same name
/// is flagged too (over-reporting is safe, missing `pg_catalog.x` is not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DangerousFunctions {
    exact: BTreeSet<String>,
    prefixes: BTreeSet<String>,
}

impl DangerousFunctions {
    /// An empty list.
    pub fn none() -> Self {
        Self {
            exact: BTreeSet::new(),
            prefixes: BTreeSet::new(),
        }
    }

    /// The built-in list.
    pub fn builtin() -> Self {
        let mut d = Self::none();
        for p in [
            // Server filesystem.
            "pg_read_file",
            "pg_read_binary_file",
            "pg_ls_dir",
            "pg_stat_file",
            "pg_ls_logdir",
            "pg_ls_waldir",
            "pg_ls_tmpdir",
            "pg_ls_archive_statusdir",
            "pg_ls_logicalsnapdir",
            "pg_ls_logicalmapdir",
            "pg_ls_replslotdir",
            "pg_file_write",
            "pg_file_rename",
            "pg_file_unlink",
            "pg_file_sync",
            "pg_logdir_ls",
            // Large objects (lo_import/lo_export touch server files; the rest
            // move data outside table privileges).
            "lo_*",
            "loread",
            "lowrite",
            // Other servers.
            "dblink*",
            // Backends, configuration and server state.
            "pg_terminate_backend",
            "pg_cancel_backend",
            "pg_signal_backend",
            "set_config",
            "pg_reload_conf",
            "pg_rotate_logfile",
            "pg_promote",
            "pg_switch_wal",
            "pg_create_restore_point",
            "pg_backup_start",
            "pg_backup_stop",
            "pg_create_physical_replication_slot",
            "pg_create_logical_replication_slot",
            "pg_drop_replication_slot",
            "pg_replication_origin_*",
            "pg_import_system_collations",
            // SQL given as text (dynamic SQL, or a table named by a string).
            "query_to_xml",
            "query_to_xmlschema",
            "query_to_xml_and_xmlschema",
            "cursor_to_xml",
            "cursor_to_xmlschema",
            "table_to_xml",
            "table_to_xmlschema",
            "table_to_xml_and_xmlschema",
            "schema_to_xml",
            "schema_to_xmlschema",
            "schema_to_xml_and_xmlschema",
            "database_to_xml",
            "database_to_xmlschema",
            "database_to_xml_and_xmlschema",
            "ts_stat",
            "ts_rewrite",
        ] {
            d.insert(p);
        }
        d
    }

    /// Adds a name (`pg_read_file`) or a prefix pattern ending in `*` (`dblink*`).
    pub fn insert(&mut self, pattern: &str) {
        let p = pattern.to_ascii_lowercase();
        match p.strip_suffix('*') {
            Some(prefix) => self.prefixes.insert(prefix.to_owned()),
            None => self.exact.insert(p),
        };
    }

    /// Whether `f` is on the list; every function of a schema (`s.*`: a
    /// grant on ALL FUNCTIONS IN SCHEMA s) may hold one, so it is too.
    pub fn matches(&self, f: &QualifiedName) -> bool {
        if f.all_in_schema().is_some() {
            return true;
        }
        let name = f.name().to_ascii_lowercase();
        self.exact.contains(&name) || self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }

    /// A [`Flag::DangerousFunction`] for each of `functions` on the list.
    pub(crate) fn flags<'a>(
        &'a self,
        functions: &'a [QualifiedName],
    ) -> impl Iterator<Item = Flag> + 'a {
        functions
            .iter()
            .filter(|f| self.matches(f))
            .cloned()
            .map(Flag::DangerousFunction)
    }
}

impl Default for DangerousFunctions {
    fn default() -> Self {
        Self::builtin()
    }
}

/// A classifier with its (extensible) dangerous-function list.
#[derive(Debug, Clone)]
pub struct Classifier {
    pub dangerous: DangerousFunctions,
    /// Cross-check every classification with PostgreSQL's own parser
    /// (`crosscheck`); on by default.
    pub cross_check: bool,
}

impl Default for Classifier {
    fn default() -> Self {
        Self::new(DangerousFunctions::default())
    }
}

/// `sql:` in the daemon configuration.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    /// Cross-check statement boundaries, kinds and names with PostgreSQL's
    /// own parser (libpg_query) on every decision-cache miss; a disagreement
    /// is unparsable (denied by default). It also reads from PostgreSQL's
    /// tree the statements sqlparser cannot parse, where the tree describes
    /// them completely (maintenance, DDL and grants without code or rows).
    #[serde(default = "default_cross_check")]
    pub cross_check: bool,
}

fn default_cross_check() -> bool {
    true
}

impl Default for SqlConfig {
    fn default() -> Self {
        Self {
            cross_check: default_cross_check(),
        }
    }
}

static DEFAULT: LazyLock<Classifier> = LazyLock::new(Classifier::default);

/// Classifies a simple-query string with the built-in dangerous-function list.
pub use normalize::{has_unquoted_statement, normalize};

/// Decision-cache key: the statement with its constants hidden where they
/// cannot change a classification (see the lexer); `None` if it does not lex.
pub fn fingerprint(sql: &str) -> Option<String> {
    lexer::fingerprint(sql)
}

/// [`fingerprint`] into a buffer the caller reuses (cleared first): no
/// allocation per statement once it is large enough; `false` if the text
/// does not lex.
pub fn fingerprint_into(sql: &str, out: &mut String) -> bool {
    lexer::fingerprint_into(sql, out)
}

pub fn classify(sql: &str) -> Classification {
    DEFAULT.classify(sql)
}

/// [`Classifier::classify_mysql`] with the default dangerous functions.
pub fn classify_mysql(sql: &str) -> Classification {
    DEFAULT.classify_mysql(sql)
}

impl Classifier {
    pub fn new(dangerous: DangerousFunctions) -> Self {
        Self {
            dangerous,
            cross_check: true,
        }
    }

    pub fn with_cross_check(self, cross_check: bool) -> Self {
        Self {
            cross_check,
            ..self
        }
    }

    /// Classifies every statement of a simple-query string (also usable for
    /// the single statement of an extended-protocol Parse message); with
    /// `cross_check`, PostgreSQL's own parser must then agree
    /// (`crosscheck`), else the whole string is unparsable.
    pub fn classify(&self, sql: &str) -> Classification {
        self.classify_inner(sql, false).0
    }

    /// [`classify`](Self::classify), with the text's literal-free form
    /// ([`normalize`], what the audit log records) derived from the same
    /// parse instead of a second one. A text the classifier does not read
    /// as a whole is not quoted: it is `<unparsable statement>`.
    pub fn classify_text(&self, sql: &str) -> (Classification, String) {
        let (c, text) = self.classify_inner(sql, true);
        (c, text.unwrap_or_else(normalize::opaque))
    }

    fn classify_inner(&self, sql: &str, with_text: bool) -> (Classification, Option<String>) {
        let Ours {
            statements,
            mut texts,
            unread,
        } = match self.classify_ours(sql, with_text) {
            Ok(ours) => ours,
            Err(why) => return (Classification::whole_unparsable(sql, why), None),
        };
        let mut ours = Classification { statements };
        let joined = |texts: Option<Vec<String>>| texts.map(|t| t.join("; "));
        // Nothing to compare or fill in when nothing was read and nothing
        // failed to parse (denied anyway).
        let read = |c: &Classification| c.statements.iter().any(|s| s.kind != Kind::Unparsable);
        if !self.cross_check || (!read(&ours) && unread.is_empty()) {
            return (ours, joined(texts));
        }
        let theirs = match crosscheck::pg_statements(sql) {
            Ok(theirs) => theirs,
            // PostgreSQL rejects the whole text when one statement is bad;
            // ours already says which (and each statement keeps its own
            // decision in the audit log).
            Err(_) if ours.any_unparsable() => return (ours, joined(texts)),
            Err(e) => {
                let why = crosscheck::Disagreement::Rejected(e);
                return (Classification::whole_unparsable(sql, why.to_string()), None);
            }
        };
        // Statements sqlparser cannot parse, read from PostgreSQL's own tree
        // where that tells a policy all it needs (same statement boundaries).
        if theirs.len() == ours.statements.len() {
            for i in unread {
                let (Some(p), Some(o)) = (theirs.get(i), ours.statements.get_mut(i)) else {
                    continue;
                };
                if p.span != o.span {
                    continue;
                }
                if let Some(info) = p.classification(&self.dangerous) {
                    if let Some(t) = texts.as_mut().and_then(|t| t.get_mut(i)) {
                        *t = sql
                            .get(p.span.clone())
                            .and_then(crosscheck::redacted)
                            .unwrap_or_else(normalize::opaque);
                    }
                    *o = info;
                }
            }
        }
        if !read(&ours) {
            return (ours, joined(texts));
        }
        match crosscheck::compare(&theirs, &ours, &self.dangerous) {
            Ok(()) => (ours, joined(texts)),
            Err(why) => (Classification::whole_unparsable(sql, why.to_string()), None),
        }
    }

    /// Our own reading: the boundary lexer and sqlparser; with `with_text`,
    /// the literal-free form of each statement. `Err` says why the text as a
    /// whole is unparsable.
    fn classify_ours(&self, sql: &str, with_text: bool) -> Result<Ours, String> {
        let pieces = lexer::split(sql, false).map_err(|e| format!("lexer: {e:?}"))?;
        if lexer::split(sql, true).ok().as_ref() != Some(&pieces) {
            return Err("reads differently with standard_conforming_strings off".into());
        }
        let dialect = PostgreSqlDialect {};
        let mut statements = Vec::with_capacity(pieces.len());
        let mut texts: Vec<String> = Vec::new();
        let mut unread = Vec::new();
        for piece in pieces {
            let text = sql.get(piece.range.clone()).unwrap_or_default();
            if piece.words.first().map(String::as_str) == Some("do") {
                statements.push(walk::do_block(piece.range));
                if with_text {
                    texts.push(normalize::DO_BLOCK.to_string());
                }
                continue;
            }
            let parsed = Tokenizer::new(&dialect, text)
                .tokenize()
                .map_err(|e| e.to_string())
                .and_then(|tokens| {
                    if sqlparser_words(&tokens) != piece.words {
                        return Ok(None);
                    }
                    Parser::parse_sql(&dialect, text)
                        .map(Some)
                        .map_err(|e| e.to_string())
                });
            match parsed {
                Ok(None) => {
                    return Err(
                        "sqlparser and the PostgreSQL lexer read the text differently".into(),
                    );
                }
                Err(e) => {
                    unread.push(statements.len());
                    statements.push(StatementInfo::unparsable(piece.range, e));
                    if with_text {
                        texts.push(normalize::opaque());
                    }
                }
                Ok(Some(mut parsed)) => match parsed.as_mut_slice() {
                    [stmt] => {
                        statements.push(walk::analyze(stmt, piece.range, &self.dangerous, true));
                        if with_text {
                            texts.push(normalize::pg_text(stmt));
                        }
                    }
                    _ => {
                        return Err(format!(
                            "statement boundaries disagree ({} statements in one)",
                            parsed.len()
                        ));
                    }
                },
            }
        }
        Ok(Ours {
            statements,
            texts: with_text.then_some(texts),
            unread,
        })
    }
}

/// Our own reading of a text, before the cross-check.
struct Ours {
    statements: Vec<StatementInfo>,
    /// Each statement's literal-free text, when asked for.
    texts: Option<Vec<String>>,
    /// The statements sqlparser could not parse (indexes into `statements`).
    unread: Vec<usize>,
}

/// The words of sqlparser's token stream, in the form [`lexer::Piece::words`] uses.
fn sqlparser_words(tokens: &[Token]) -> Vec<String> {
    tokens
        .iter()
        .filter_map(|t| match t {
            Token::Word(w) => Some(match w.quote_style {
                None => w.value.to_ascii_lowercase(),
                Some(q) => format!("{q}{}", w.value),
            }),
            _ => None,
        })
        .collect()
}

/// Remembers SQL-level prepared statements of one session so that `EXECUTE
/// name` can be judged by what `PREPARE name AS ...` prepared.
///
/// Feed it ([`record`](Self::record)) only statements that were actually
/// forwarded to the server: a denied PREPARE must not be remembered.
#[derive(Debug, Clone, Default)]
pub struct PreparedStatements {
    by_name: HashMap<String, StatementInfo>,
}

impl PreparedStatements {
    /// Applies a forwarded statement: PREPARE remembers, DEALLOCATE forgets,
    /// DEALLOCATE ALL / DISCARD ALL forget everything.
    pub fn record(&mut self, stmt: &StatementInfo) {
        for flag in &stmt.flags {
            match flag {
                Flag::Prepare(name) => {
                    self.by_name.insert(name.clone(), stmt.clone());
                }
                Flag::Deallocate(Some(name)) => {
                    self.by_name.remove(name);
                }
                Flag::Deallocate(None) => self.by_name.clear(),
                _ => {}
            }
        }
    }

    /// For an EXECUTE, the classification of the PREPARE it runs.
    pub fn resolve(&self, stmt: &StatementInfo) -> Option<&StatementInfo> {
        stmt.flags.iter().find_map(|f| match f {
            Flag::Execute(name) => self.by_name.get(name),
            _ => None,
        })
    }

    pub fn get(&self, name: &str) -> Option<&StatementInfo> {
        self.by_name.get(name)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}
