//! What a statement's text says about where its output comes from: the
//! relations it reads, the names its expressions mention, and the constructs
//! that hide provenance (wildcards below the top-level select list, column
//! alias lists). Computed once per statement text, independent of the
//! catalog; judged against the masked names later ([`Facts::tainted`]).

use std::{collections::BTreeSet, ops::ControlFlow};

use sqlparser::{
    ast::{
        CopySource, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, ObjectName,
        ObjectNamePart, Select, SelectItem, SetExpr, Statement, TableAlias, TableFactor, Visit,
        Visitor,
    },
    dialect::{Dialect, MySqlDialect, PostgreSqlDialect},
    parser::Parser,
};

/// Names a statement could expose masked data through, as the masking layer
/// sees them (implemented over the policy's globs and the session catalog).
pub trait Sensitivity {
    /// `names` (`t`, `schema.t`) is a relation with masked columns, or a view over one.
    fn relation(&self, names: &[String]) -> bool;
    /// `name` is a masked column of one of `relations` (each `[name, qualified]`).
    fn column(&self, name: &str, relations: &[[String; 2]]) -> bool;
    /// Some relation may have a masked column called `name` (a cheap
    /// filter before [`Sensitivity::column`]).
    fn column_name(&self, name: &str) -> bool;
    /// `names` (`f`, `schema.f`) is a routine whose source reads masked data
    /// ([`source_reads_masked`]): what it returns may carry it.
    fn function(&self, names: &[String; 2]) -> bool;
}

/// Provenance facts of one statement string (all its statements together).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// sqlparser could not read it, or its rows come from elsewhere (FETCH,
    /// EXECUTE, CALL): every expression output is suspect.
    pub unparsable: bool,
    /// Relations named anywhere, each as `[name, qualified]`.
    pub relations: Vec<[String; 2]>,
    /// Aliases of relations: (relation names, alias).
    pub aliases: Vec<([String; 2], String)>,
    /// Every identifier part mentioned in an expression.
    pub idents: BTreeSet<String>,
    /// Functions called (in expressions and in FROM), each as `[name, qualified]`.
    pub functions: Vec<[String; 2]>,
    /// A `*` / `t.*` somewhere other than the top-level select list.
    pub inner_wildcard: bool,
    /// A column alias list (`AS x(a, b)`, `WITH x(a, b)`): renames columns.
    pub renames_columns: bool,
    /// For a plain top-level SELECT over base tables: one entry per output
    /// column, in order.
    pub items: Option<Vec<ItemFacts>>,
}

/// What one top-level select item mentions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemFacts {
    pub idents: BTreeSet<String>,
    pub wildcard: bool,
}

fn ident(id: &Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_ascii_lowercase()
    }
}

fn names(n: &ObjectName) -> [String; 2] {
    let parts: Vec<String> =
        n.0.iter()
            .map(|p| match p {
                ObjectNamePart::Identifier(id) => ident(id),
                other => other.to_string(),
            })
            .collect();
    [parts.last().cloned().unwrap_or_default(), parts.join(".")]
}

impl Facts {
    /// Analyses a statement string (simple Query or Parse text).
    pub fn of(sql: &str) -> Facts {
        Self::of_dialect(sql, &PostgreSqlDialect {})
    }

    /// The same for a MySQL/MariaDB statement.
    pub fn of_mysql(sql: &str) -> Facts {
        Self::of_dialect(sql, &MySqlDialect {})
    }

    fn of_dialect(sql: &str, dialect: &dyn Dialect) -> Facts {
        let stmts = match Parser::parse_sql(dialect, sql) {
            Ok(s) => s,
            Err(_) => {
                return Facts {
                    unparsable: true,
                    ..Facts::default()
                };
            }
        };
        // Rows produced by a cursor, an SQL-level prepared statement or a
        // procedure come from a query this text does not show.
        let opaque = stmts.iter().any(|s| {
            matches!(
                s,
                Statement::Fetch { .. } | Statement::Execute { .. } | Statement::Call(_)
            )
        });
        if opaque {
            return Facts {
                unparsable: true,
                ..Facts::default()
            };
        }
        let mut c = Collector::default();
        for s in &stmts {
            c.top = top_select(s).map(|s| s as *const Select);
            let _ = s.visit(&mut c);
        }
        let items = match stmts.as_slice() {
            [s] => plain_items(s),
            _ => None,
        };
        Facts {
            unparsable: false,
            relations: c.relations,
            aliases: c.aliases,
            idents: c.idents,
            functions: c.functions,
            inner_wildcard: c.inner_wildcard,
            renames_columns: c.renames_columns,
            items,
        }
    }

    /// The statement names a masked relation, or calls a routine that reads
    /// one (a precondition of taint).
    pub fn reads_masked(&self, s: &dyn Sensitivity) -> bool {
        self.unparsable || self.relations.iter().any(|r| s.relation(r)) || self.calls_masked(s)
    }

    /// The statement calls a routine that reads masked data: whatever it
    /// returns, anywhere in the statement, may carry it.
    fn calls_masked(&self, s: &dyn Sensitivity) -> bool {
        self.functions.iter().any(|f| s.function(f))
    }

    fn sensitive_ident(&self, i: &str, s: &dyn Sensitivity) -> bool {
        s.column(i, &self.relations)
            || self.relations.iter().any(|r| r[0] == i && s.relation(r))
            || self
                .aliases
                .iter()
                .any(|(rel, alias)| alias == i && s.relation(rel))
    }

    /// Expression outputs of this statement may carry masked data.
    pub fn tainted(&self, s: &dyn Sensitivity) -> bool {
        if self.unparsable {
            return true;
        }
        if !self.reads_masked(s) {
            return false;
        }
        self.calls_masked(s)
            || self.inner_wildcard
            || self.renames_columns
            || self.idents.iter().any(|i| self.sensitive_ident(i, s))
    }

    /// Output column `i` may carry masked data; `columns` is the number of
    /// output columns (the per-item judgement needs an exact match).
    pub fn column_tainted(&self, i: usize, columns: usize, s: &dyn Sensitivity) -> bool {
        match &self.items {
            Some(items) if items.len() == columns && !self.unparsable => {
                if !self.reads_masked(s) {
                    return false;
                }
                if self.calls_masked(s) {
                    return true;
                }
                items.get(i).is_none_or(|it| {
                    it.wildcard || it.idents.iter().any(|id| self.sensitive_ident(id, s))
                })
            }
            _ => self.tainted(s),
        }
    }
}

/// The select whose list is the statement's output list, if the statement is
/// a plain SELECT.
fn top_select(s: &Statement) -> Option<&Select> {
    match s {
        Statement::Query(q) => match q.body.as_ref() {
            SetExpr::Select(sel) => Some(sel),
            _ => None,
        },
        _ => None,
    }
}

/// Per-item facts when output column i is exactly select item i and the FROM
/// clause holds only base tables (so names cannot be renamed in between).
fn plain_items(s: &Statement) -> Option<Vec<ItemFacts>> {
    let Statement::Query(q) = s else { return None };
    if q.with.is_some() {
        return None;
    }
    let sel = top_select(s)?;
    let base = |f: &TableFactor| {
        matches!(f, TableFactor::Table { args: None, alias, .. }
            if alias.as_ref().is_none_or(|a| a.columns.is_empty()))
    };
    for t in &sel.from {
        if !base(&t.relation) || t.joins.iter().any(|j| !base(&j.relation)) {
            return None;
        }
    }
    let mut items = Vec::with_capacity(sel.projection.len());
    for item in &sel.projection {
        let expr = match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
            _ => return None,
        };
        let mut c = Collector::default();
        let _ = expr.visit(&mut c);
        items.push(ItemFacts {
            wildcard: c.inner_wildcard || c.renames_columns,
            idents: c.idents,
        });
    }
    Some(items)
}

#[derive(Default)]
struct Collector {
    /// The top-level select (its wildcards expand to plain columns).
    top: Option<*const Select>,
    relations: Vec<[String; 2]>,
    aliases: Vec<([String; 2], String)>,
    idents: BTreeSet<String>,
    functions: Vec<[String; 2]>,
    inner_wildcard: bool,
    renames_columns: bool,
}

impl Collector {
    fn alias(&mut self, a: &Option<TableAlias>) {
        if let Some(a) = a
            && !a.columns.is_empty()
        {
            self.renames_columns = true;
        }
    }

    fn function_args(&mut self, args: &FunctionArguments) {
        let FunctionArguments::List(list) = args else {
            return;
        };
        for a in &list.args {
            let (FunctionArg::Unnamed(arg)
            | FunctionArg::Named { arg, .. }
            | FunctionArg::ExprNamed { arg, .. }) = a;
            if let FunctionArgExpr::QualifiedWildcard(n) = arg {
                // `row_to_json(c.*)`: a whole-row reference to `c`.
                for p in &n.0 {
                    if let ObjectNamePart::Identifier(id) = p {
                        self.idents.insert(ident(id));
                    }
                }
            }
            // A bare `*` argument (`count(*)`) carries no column data.
        }
    }
}

impl Visitor for Collector {
    type Break = ();

    fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
        // COPY's table is not visited as a relation by sqlparser.
        if let Statement::Copy {
            source: CopySource::Table { table_name, .. },
            ..
        } = s
        {
            self.relations.push(names(table_name));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, n: &ObjectName) -> ControlFlow<()> {
        self.relations.push(names(n));
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &sqlparser::ast::Query) -> ControlFlow<()> {
        if let Some(w) = &q.with {
            for cte in &w.cte_tables {
                if !cte.alias.columns.is_empty() {
                    self.renames_columns = true;
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
        let me: *const Select = s;
        if self.top != Some(me)
            && s.projection.iter().any(|i| {
                matches!(
                    i,
                    SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
                )
            })
        {
            self.inner_wildcard = true;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, f: &TableFactor) -> ControlFlow<()> {
        match f {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                // `FROM f(...)`: a set-returning function.
                if args.is_some() {
                    self.functions.push(names(name));
                }
                self.alias(alias);
                if let Some(a) = alias {
                    self.aliases.push((names(name), ident(&a.name)));
                }
            }
            TableFactor::Derived { alias, .. }
            | TableFactor::TableFunction { alias, .. }
            | TableFactor::Function { alias, .. }
            | TableFactor::UNNEST { alias, .. }
            | TableFactor::JsonTable { alias, .. }
            | TableFactor::NestedJoin { alias, .. }
            | TableFactor::XmlTable { alias, .. } => self.alias(alias),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        match e {
            Expr::Identifier(id) => {
                self.idents.insert(ident(id));
            }
            Expr::CompoundIdentifier(ids) => {
                self.idents.extend(ids.iter().map(ident));
            }
            Expr::QualifiedWildcard(n, _) => {
                self.inner_wildcard = true;
                self.idents.extend(names(n).into_iter().take(1));
            }
            Expr::Wildcard(_) => self.inner_wildcard = true,
            Expr::Function(f) => {
                self.functions.push(names(&f.name));
                self.function_args(&f.args);
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// The words of a routine's source, lowercased: identifiers, the parts of
/// dotted names and their joins (`public.customers.email` gives
/// `public.customers` and `customers.email` too), words inside string
/// literals (dynamic SQL) and quoted identifiers alike. Bodies in PL/pgSQL
/// or MySQL's compound statements cannot be parsed here, so they are
/// scanned; the scan over-approximates what they read.
pub fn source_words(src: &str) -> BTreeSet<String> {
    let mut words = BTreeSet::new();
    let word_char = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
    for token in src.split(|c: char| !word_char(c) && c != '.') {
        let parts: Vec<String> = token
            .split('.')
            .filter(|p| !p.is_empty())
            .map(str::to_lowercase)
            .collect();
        for i in 0..parts.len() {
            for j in i + 1..=parts.len() {
                words.insert(parts[i..j].join("."));
            }
        }
    }
    words
}

/// A routine whose source has these [`source_words`] may read masked data:
/// it names a masked relation and one of that relation's masked columns, or
/// calls a routine that does (`tainting`, the routines found so far).
pub fn source_reads_masked(
    words: &BTreeSet<String>,
    s: &dyn Sensitivity,
    tainting: &dyn Fn(&str) -> bool,
) -> bool {
    if words.iter().any(|w| tainting(w)) {
        return true;
    }
    // Few words can be masked columns; checking those against each relation
    // word keeps a long body linear, even when a glob matches any table.
    let columns: Vec<&String> = words
        .iter()
        .filter(|c| !c.contains('.') && s.column_name(c))
        .collect();
    !columns.is_empty()
        && words
            .iter()
            .filter(|w| s.relation(std::slice::from_ref(*w)))
            .any(|rel| {
                let r = [[
                    rel.rsplit('.').next().unwrap_or(rel).to_owned(),
                    rel.clone(),
                ]];
                columns.iter().any(|c| s.column(c, &r))
            })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `customers.email` is masked; `v_contacts` is a view over it.
    struct S;
    impl Sensitivity for S {
        fn relation(&self, n: &[String]) -> bool {
            n.iter()
                .any(|n| matches!(n.as_str(), "customers" | "public.customers" | "v_contacts"))
        }
        fn column(&self, n: &str, rels: &[[String; 2]]) -> bool {
            (n == "email" && rels.iter().any(|r| r[0] == "customers"))
                || (n == "contact" && rels.iter().any(|r| r[0] == "v_contacts"))
        }
        fn column_name(&self, n: &str) -> bool {
            matches!(n, "email" | "contact")
        }
        /// `email_of(id)` and `contacts()` read customers.email.
        fn function(&self, n: &[String; 2]) -> bool {
            matches!(n[0].as_str(), "email_of" | "contacts")
        }
    }

    #[test]
    fn taint_table() {
        // (sql, statement tainted)
        let table = [
            ("SELECT id, name FROM customers", false),
            ("SELECT count(*) FROM customers", false),
            ("SELECT email FROM orders", false),
            ("SELECT upper(email) FROM customers", true),
            ("SELECT upper(c.email) FROM public.customers c", true),
            ("SELECT email::bytea FROM customers", true),
            ("SELECT encode(email::bytea, 'hex') FROM customers", true),
            ("SELECT row_to_json(c) FROM customers c", true),
            ("SELECT row_to_json(c.*) FROM customers c", true),
            ("SELECT c::text FROM customers c", true),
            ("SELECT to_jsonb(customers) FROM customers", true),
            ("SELECT (SELECT email FROM customers LIMIT 1)", true),
            (
                "WITH x AS (SELECT email FROM customers) SELECT * FROM x",
                true,
            ),
            (
                "WITH x(a, b, c) AS (SELECT * FROM customers) SELECT upper(c) FROM x",
                true,
            ),
            ("SELECT upper(e) FROM customers AS c(i, n, e)", true),
            ("SELECT s.x FROM (SELECT * FROM customers) s", true),
            ("SELECT string_agg(email, ',') FROM customers", true),
            ("SELECT * FROM v_contacts", false),
            ("SELECT lower(contact) FROM v_contacts v, customers", true),
            ("SELECT lower(contact) FROM orders", false),
            (
                "SELECT upper(email) FROM orders JOIN customers USING (id)",
                true,
            ),
            ("SELECT row_to_json(v) FROM v_contacts v", true),
            ("SELECT 1 UNION SELECT email FROM customers", true),
            ("SELECT email_of(id) FROM orders", true),
            ("SELECT upper(app.email_of(1))", true),
            ("SELECT * FROM contacts()", true),
            ("SELECT c.x FROM orders JOIN contacts() c ON true", true),
            ("SELECT name_of(id) FROM orders", false),
            ("SELEKT email", true),
            ("FETCH ALL FROM c", true),
            ("EXECUTE p(1)", true),
            ("CALL p()", true),
        ];
        for (sql, want) in table {
            assert_eq!(Facts::of(sql).tainted(&S), want, "{sql}");
        }
    }

    #[test]
    fn routine_sources_are_scanned_for_masked_names() {
        let words = source_words(
            "BEGIN SELECT \"Email\" INTO e FROM public.customers WHERE id = $1; RETURN e; END",
        );
        for w in [
            "email",
            "public",
            "customers",
            "public.customers",
            "$1",
            "e",
        ] {
            assert!(words.contains(w), "{w} in {words:?}");
        }
        let none = |_: &str| false;
        assert!(source_reads_masked(&words, &S, &none));
        // The column without its table, or the table without the column: no.
        for src in [
            "SELECT email FROM orders",
            "SELECT name FROM customers",
            "SELECT 1",
        ] {
            assert!(!source_reads_masked(&source_words(src), &S, &none), "{src}");
        }
        // A call of a routine found so far.
        let found = |w: &str| w == "secret_of";
        assert!(source_reads_masked(
            &source_words("RETURN secret_of(1)"),
            &S,
            &found
        ));
    }

    #[test]
    fn plain_selects_are_judged_per_item() {
        let f = Facts::of(
            "SELECT id, upper(name), lower(email) AS e, (SELECT max(email) FROM customers) FROM customers WHERE email = 'x'",
        );
        let cols: Vec<bool> = (0..4).map(|i| f.column_tainted(i, 4, &S)).collect();
        assert_eq!(cols, [false, false, true, true]);
        // A column count that does not match the items: per statement.
        assert!(f.column_tainted(0, 5, &S));
        // Through a derived table: per statement, every expression.
        let f = Facts::of("SELECT upper(n) FROM (SELECT name n, email FROM customers) s");
        assert!(f.items.is_none());
        assert!(f.column_tainted(0, 1, &S));
    }
}
