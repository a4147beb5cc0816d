//! Walks one parsed statement: its kind, the tables it reads and writes, the
//! functions it calls and its risky constructs.
//!
//! Tables come from sqlparser's relation visitor, minus references to CTEs in
//! scope (scoped as PostgreSQL does: a non-recursive CTE sees only the CTEs
//! before it, so `WITH t AS (SELECT * FROM t)` reads the real table `t`), minus
//! table functions (`FROM pg_read_file(...)` is a call, not a table). Write
//! targets (INSERT/UPDATE/DELETE/MERGE/TRUNCATE/COPY FROM, DDL objects) are
//! recognised by identity of the AST node, so the same name read elsewhere in
//! the statement is still reported as a read. DDL and DCL report the objects
//! they create or change as written (a table, view, index, sequence, a
//! trigger's, grant's or comment's table) and the tables they only name as read
//! (a foreign key's referenced table, INHERITS parents, LIKE's source), so a
//! table rule sees `CREATE TABLE x (... REFERENCES customers)`.
//!
//! Column references are collected on the way (expressions, select-list
//! wildcards, INSERT column lists, SET targets, RETURNING, JOIN USING) and
//! resolved to tables afterwards by [`super::columns`].

use std::ops::{ControlFlow, Range};

use sqlparser::ast::{
    AlterTableOperation, Assignment, AssignmentTarget, ColumnDef, ColumnOption, CommentObject,
    CopySource, CopyTarget, CreateFunction, CreateTableLikeKind, DiscardObject, DoUpdate,
    DropFunction, Expr, FromTable, FunctionArg, FunctionArgExpr, FunctionArguments, GrantObjects,
    Ident, JoinConstraint, JoinOperator, ObjectName, ObjectNamePart, ObjectType, OnConflictAction,
    OnInsert, Query, Reset, Select, SelectItem, SelectItemQualifiedWildcardKind, Set, SetExpr,
    Statement, TableConstraint, TableFactor, TableObject, TableWithJoins, Visit, Visitor,
};

use super::{
    Access, DangerousFunctions, Flag, Kind, QualifiedName, StatementInfo, TableAccess,
    columns::{self, Raw},
};

/// PostgreSQL truncates identifiers to `NAMEDATALEN - 1` bytes.
const MAX_IDENT_BYTES: usize = 63;

pub(super) fn ident(id: &Ident) -> String {
    let mut s = if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_ascii_lowercase()
    };
    if s.len() > MAX_IDENT_BYTES {
        let mut cut = MAX_IDENT_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

pub(super) fn name(n: &ObjectName) -> QualifiedName {
    QualifiedName {
        parts: n
            .0
            .iter()
            .map(|p| match p {
                ObjectNamePart::Identifier(id) => ident(id),
                other => other.to_string(),
            })
            .collect(),
    }
}

/// A DO block, recognised by the lexer (sqlparser cannot parse DO).
pub(super) fn do_block(span: Range<usize>) -> StatementInfo {
    StatementInfo {
        span,
        kind: Kind::Procedural,
        tables: Vec::new(),
        columns: Vec::new(),
        functions: Vec::new(),
        flags: vec![Flag::OpaqueCode],
        error: None,
    }
}

/// `postgres`: the text is PostgreSQL's (else MySQL's), for the few
/// readings of sqlparser's tree that differ between the two.
pub(super) fn analyze(
    stmt: &Statement,
    span: Range<usize>,
    dangerous: &DangerousFunctions,
    postgres: bool,
) -> StatementInfo {
    let mut w = Walker {
        postgres,
        ..Walker::default()
    };
    // The walker never breaks, so the result carries no information.
    let _ = stmt.visit(&mut w);
    let kind = match w.unmodelled {
        Some(_) => Kind::Unparsable,
        None => kind_of(stmt, &w),
    };
    let Walker {
        mut tables,
        mut functions,
        mut flags,
        raw_columns,
        aliases,
        ctes,
        unmodelled,
        ..
    } = w;
    tables.sort();
    tables.dedup();
    let mut names: Vec<QualifiedName> = tables.iter().map(|t| t.table.clone()).collect();
    names.dedup();
    let columns = columns::resolve(&raw_columns, &names, &aliases, &ctes);
    functions.sort();
    functions.dedup();
    flags.extend(dangerous.flags(&functions));
    flags.sort();
    flags.dedup();
    let error = (kind == Kind::Unparsable).then(|| {
        unmodelled
            .unwrap_or("statement type not modelled by the classifier")
            .to_owned()
    });
    StatementInfo {
        span,
        kind,
        tables,
        columns,
        functions,
        flags,
        error,
    }
}

/// PostgreSQL 17's reserved key words, and those reserved except as
/// function or type names (Appendix C of its manual; none can name a
/// table unquoted). Sorted, for binary search.
const PG_RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

#[derive(Default)]
struct Walker {
    /// CTE names visible in each enclosing query (innermost last).
    scopes: Vec<Vec<String>>,
    /// CTE bodies (by address) and the CTE names visible inside each.
    cte_bodies: Vec<(*const Query, Vec<String>)>,
    /// Relation nodes already accounted for (write targets, table functions).
    handled: Vec<*const ObjectName>,
    tables: Vec<TableAccess>,
    functions: Vec<QualifiedName>,
    flags: Vec<Flag>,
    select_into: bool,
    /// Column references as written, resolved once all tables are known.
    raw_columns: Vec<Raw>,
    /// Every table alias of the statement (flattened over its scopes).
    aliases: Vec<columns::Alias>,
    /// Every CTE name of the statement.
    ctes: Vec<String>,
    /// A construct that makes the whole statement unparsable.
    unmodelled: Option<&'static str>,
    /// PostgreSQL's text (else MySQL's).
    postgres: bool,
}

impl Walker {
    fn access(&mut self, n: &ObjectName, access: Access) {
        self.handled.push(n);
        self.misread_name(n, true);
        self.tables.push(TableAccess {
            table: name(n),
            access,
        });
    }

    fn write_factor(&mut self, f: &TableFactor) {
        if let TableFactor::Table { name, .. } = f {
            self.access(name, Access::Write);
        }
    }

    fn function(&mut self, n: &ObjectName) {
        self.handled.push(n);
        self.misread_name(n, false);
        self.functions.push(name(n));
    }

    /// Names sqlparser accepts that the server would not read as names, so
    /// what we would decide on is not what the server would run:
    /// * a string literal (`TRUNCATE 'x'` reads table `x`), in PostgreSQL
    ///   and MySQL alike;
    /// * for a table in PostgreSQL, a first part that is an unquoted word
    ///   PostgreSQL reserves (after a dot it takes any word: `public.order`).
    ///   `FROM ONLY t` (t without its inheritance children) reaches us as a
    ///   table named `only` with the alias `t`, so a rule on t would not see
    ///   it; the whole class fails closed, not just the instances found.
    ///   (MySQL's `only` is an ordinary name.)
    fn misread_name(&mut self, n: &ObjectName, table: bool) {
        let string = n
            .0
            .iter()
            .any(|p| matches!(p, ObjectNamePart::Identifier(id) if id.quote_style == Some('\'')));
        if string {
            self.unmodelled = Some("a string literal where a name belongs");
            return;
        }
        if !table || !self.postgres || self.unmodelled.is_some() {
            return;
        }
        let Some(ObjectNamePart::Identifier(id)) = n.0.first() else {
            return;
        };
        let word = id.value.to_ascii_lowercase();
        if id.quote_style.is_none() && PG_RESERVED.binary_search(&word.as_str()).is_ok() {
            self.unmodelled = Some(if word == "only" {
                "ONLY, which the SQL parser reads as a table named only"
            } else {
                "a word PostgreSQL reserves, read as a table name"
            });
        }
    }

    /// A foreign key's referenced table, in a column's options.
    fn column_references(&mut self, col: &ColumnDef) {
        for o in &col.options {
            if let ColumnOption::ForeignKey(fk) = &o.option {
                self.access(&fk.foreign_table, Access::Read);
            }
        }
    }

    /// A foreign key's referenced table, in a table constraint.
    fn constraint_references(&mut self, con: &TableConstraint) {
        if let TableConstraint::ForeignKey(fk) = con {
            self.access(&fk.foreign_table, Access::Read);
        }
    }

    /// The tables, views, sequences and functions a GRANT or REVOKE names,
    /// one by one or every one of a schema (`ON ALL TABLES IN SCHEMA s`:
    /// `s.*`).
    fn grant_objects(&mut self, objects: Option<&GrantObjects>) {
        match objects {
            Some(
                GrantObjects::Tables(names)
                | GrantObjects::Views(names)
                | GrantObjects::Sequences(names),
            ) => {
                for n in names {
                    self.access(n, Access::Write);
                }
            }
            // Granting a function is not calling it, but a rule on the
            // function holds for it, and a dangerous one is risky to hand out.
            Some(GrantObjects::Function { name, .. } | GrantObjects::Procedure { name, .. }) => {
                self.function(name);
            }
            Some(GrantObjects::AllFunctionsInSchema { schemas }) => {
                for s in schemas {
                    let all = self.all_in(s);
                    self.functions.push(all);
                }
            }
            Some(
                GrantObjects::AllTablesInSchema { schemas }
                | GrantObjects::AllSequencesInSchema { schemas }
                | GrantObjects::AllViewsInSchema { schemas }
                | GrantObjects::AllMaterializedViewsInSchema { schemas }
                | GrantObjects::AllExternalTablesInSchema { schemas }
                | GrantObjects::FutureTablesInSchema { schemas }
                | GrantObjects::FutureViewsInSchema { schemas }
                | GrantObjects::FutureExternalTablesInSchema { schemas }
                | GrantObjects::FutureMaterializedViewsInSchema { schemas }
                | GrantObjects::FutureSequencesInSchema { schemas },
            ) => {
                for s in schemas {
                    self.all_tables_in(s);
                }
            }
            _ => {}
        }
    }

    /// A statement that changes every table of a schema at once (a grant on
    /// all of them, DROP SCHEMA, ALTER SCHEMA) writes `schema.*`, which a
    /// table rule reads as every table of it
    /// ([`QualifiedName::all_in_schema`]): without it such a statement
    /// names no table, so a deny on one table would not see it and an allow
    /// limited to other tables would let it through.
    fn all_tables_in(&mut self, schema: &ObjectName) {
        let table = self.all_in(schema);
        self.tables.push(TableAccess {
            table,
            access: Access::Write,
        });
    }

    /// Every table or function of `schema`: [`QualifiedName::all_in`].
    fn all_in(&mut self, schema: &ObjectName) -> QualifiedName {
        self.handled.push(schema);
        self.misread_name(schema, true);
        QualifiedName::all_in(Some(name(schema)))
    }

    /// The table of a column name (`t.c`, `s.t.c`), if it is qualified.
    fn column_table(&mut self, column: &ObjectName, access: Access) {
        if column.0.len() > 1 {
            let mut table = name(column);
            table.parts.pop();
            self.tables.push(TableAccess { table, access });
        }
    }

    /// A single-part name that refers to a CTE in the current query's scope.
    fn is_cte(&self, n: &ObjectName) -> bool {
        matches!(n.0.as_slice(), [ObjectNamePart::Identifier(id)]
            if self.scopes.last().is_some_and(|s| s.contains(&ident(id))))
    }

    /// Assignment targets (`SET col = ...`, `SET (a, b) = ...`) are columns of
    /// `table`; a further part is a composite field or array element of it.
    fn assigned(&mut self, table: &QualifiedName, assignments: &[Assignment]) {
        for a in assignments {
            let targets = match &a.target {
                AssignmentTarget::ColumnName(n) => std::slice::from_ref(n),
                AssignmentTarget::Tuple(ns) => ns.as_slice(),
            };
            for n in targets {
                let col = name(n).parts.into_iter().next();
                self.raw_columns.push(Raw::Of(table.clone(), col));
            }
        }
    }

    fn returning(&mut self, items: Option<&Vec<SelectItem>>) {
        for item in items.into_iter().flatten() {
            match item {
                // All columns of every table the statement touches: RETURNING
                // * of an UPDATE ... FROM includes the FROM tables' columns.
                SelectItem::Wildcard(_) => self.raw_columns.push(Raw::StarAll),
                SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(n),
                    _,
                ) => {
                    self.raw_columns.push(Raw::Star(name(n).parts));
                }
                _ => {}
            }
        }
    }

    /// The real tables of a FROM list (not CTEs, subqueries or functions),
    /// and whether a NATURAL join or USING list reads columns by name.
    fn scan_from(&mut self, from: &[TableWithJoins], out: &mut Vec<QualifiedName>) -> bool {
        let mut natural = false;
        for twj in from {
            let factors =
                std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation));
            for f in factors {
                match f {
                    TableFactor::Table {
                        name: n,
                        args: None,
                        ..
                    } if !self.is_cte(n) => out.push(name(n)),
                    TableFactor::NestedJoin {
                        table_with_joins, ..
                    } => {
                        natural |= self.scan_from(std::slice::from_ref(table_with_joins), out);
                    }
                    _ => {}
                }
            }
            for j in &twj.joins {
                let constraint = match &j.join_operator {
                    JoinOperator::Join(c)
                    | JoinOperator::Inner(c)
                    | JoinOperator::Left(c)
                    | JoinOperator::LeftOuter(c)
                    | JoinOperator::Right(c)
                    | JoinOperator::RightOuter(c)
                    | JoinOperator::FullOuter(c)
                    | JoinOperator::CrossJoin(c)
                    | JoinOperator::Semi(c)
                    | JoinOperator::LeftSemi(c)
                    | JoinOperator::RightSemi(c)
                    | JoinOperator::Anti(c)
                    | JoinOperator::LeftAnti(c)
                    | JoinOperator::RightAnti(c)
                    | JoinOperator::StraightJoin(c)
                    | JoinOperator::AsOf { constraint: c, .. } => c,
                    _ => continue,
                };
                match constraint {
                    JoinConstraint::Natural => natural = true,
                    JoinConstraint::Using(cols) => {
                        for c in cols {
                            self.raw_columns.push(Raw::Name(name(c).parts));
                        }
                    }
                    JoinConstraint::On(_) | JoinConstraint::None => {}
                }
            }
        }
        natural
    }
}

impl Visitor for Walker {
    type Break = ();

    fn pre_visit_statement(&mut self, stmt: &Statement) -> ControlFlow<()> {
        match stmt {
            Statement::Insert(i) => {
                if let TableObject::TableName(n) = &i.table {
                    self.access(n, Access::Write);
                    let t = name(n);
                    if let Some(a) = &i.table_alias {
                        self.aliases.push((ident(&a.alias), Some(t.clone())));
                    }
                    // Without a column list, INSERT fills every column.
                    if i.columns.is_empty() && i.assignments.is_empty() {
                        self.raw_columns.push(Raw::Of(t.clone(), None));
                    }
                    for c in &i.columns {
                        let col = name(c).parts.into_iter().next();
                        self.raw_columns.push(Raw::Of(t.clone(), col));
                    }
                    self.assigned(&t, &i.assignments);
                    match &i.on {
                        Some(OnInsert::DuplicateKeyUpdate(a)) => self.assigned(&t, a),
                        Some(OnInsert::OnConflict(c)) => {
                            if let OnConflictAction::DoUpdate(DoUpdate { assignments, .. }) =
                                &c.action
                            {
                                self.assigned(&t, assignments);
                            }
                        }
                        _ => {}
                    }
                }
                self.returning(i.returning.as_ref());
            }
            Statement::Update(u) => {
                self.write_factor(&u.table.relation);
                if let TableFactor::Table { name: n, .. } = &u.table.relation {
                    self.assigned(&name(n), &u.assignments);
                }
                self.returning(u.returning.as_ref());
            }
            Statement::Delete(d) => {
                let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &d.from;
                for t in from {
                    self.write_factor(&t.relation);
                }
                for n in &d.tables {
                    self.access(n, Access::Write);
                }
                self.returning(d.returning.as_ref());
            }
            Statement::Merge(m) => {
                self.write_factor(&m.table);
                // MERGE actions are not modelled column by column: all of them.
                if let TableFactor::Table { name: n, .. } = &m.table {
                    self.raw_columns.push(Raw::Of(name(n), None));
                }
            }
            Statement::Truncate(t) => {
                for target in &t.table_names {
                    self.access(&target.name, Access::Write);
                }
            }
            Statement::CreateTable(c) => {
                self.access(&c.name, Access::Write);
                for col in &c.columns {
                    self.column_references(col);
                }
                for con in &c.constraints {
                    self.constraint_references(con);
                }
                for parent in c.inherits.iter().flatten() {
                    self.access(parent, Access::Read);
                }
                if let Some(CreateTableLikeKind::Parenthesized(l) | CreateTableLikeKind::Plain(l)) =
                    &c.like
                {
                    self.access(&l.name, Access::Read);
                }
            }
            Statement::CreateView(v) => self.access(&v.name, Access::Write),
            Statement::AlterTable(a) => {
                self.access(&a.name, Access::Write);
                for op in &a.operations {
                    match op {
                        AlterTableOperation::AddConstraint { constraint, .. } => {
                            self.constraint_references(constraint);
                        }
                        AlterTableOperation::AddColumn { column_def, .. } => {
                            self.column_references(column_def);
                        }
                        _ => {}
                    }
                }
            }
            Statement::AlterIndex { name, .. } | Statement::AlterView { name, .. } => {
                self.access(name, Access::Write);
            }
            Statement::CreateSequence { name, owned_by, .. } => {
                self.access(name, Access::Write);
                // `OWNED BY t.c` ties the sequence to table t.
                if let Some(owner) = owned_by {
                    self.column_table(owner, Access::Read);
                }
            }
            Statement::CreateTrigger(t) => {
                self.access(&t.table_name, Access::Write);
                if let Some(r) = &t.referenced_table_name {
                    self.access(r, Access::Read);
                }
                if let Some(body) = &t.exec_body {
                    self.function(&body.func_desc.name);
                }
            }
            // Row security policies change who sees which rows of the table.
            Statement::CreatePolicy(p) => self.access(&p.table_name, Access::Write),
            Statement::AlterPolicy(p) => self.access(&p.table_name, Access::Write),
            Statement::DropPolicy(p) => self.access(&p.table_name, Access::Write),
            Statement::DropTrigger(t) => {
                if let Some(table) = &t.table_name {
                    self.access(table, Access::Write);
                }
            }
            // A grant changes who may use the objects: written, as DDL's are.
            Statement::Grant(g) => self.grant_objects(g.objects.as_ref()),
            Statement::Revoke(r) => self.grant_objects(r.objects.as_ref()),
            Statement::Vacuum(v) => {
                if let Some(t) = &v.table_name {
                    self.access(t, Access::Read);
                }
            }
            // A comment on a relation, or on one of its columns, changes it.
            Statement::Comment {
                object_type,
                object_name,
                ..
            } => match object_type {
                CommentObject::Table
                | CommentObject::View
                | CommentObject::MaterializedView
                | CommentObject::Index
                | CommentObject::Sequence => self.access(object_name, Access::Write),
                CommentObject::Column => self.column_table(object_name, Access::Write),
                CommentObject::Function | CommentObject::Procedure => self.function(object_name),
                _ => {}
            },
            // MySQL's databases are its schemas.
            Statement::Drop {
                object_type: ObjectType::Schema | ObjectType::Database,
                names,
                ..
            } => {
                for n in names {
                    self.all_tables_in(n);
                }
            }
            // Renamed, every table's qualified name changes; a new owner may
            // drop any table in it.
            Statement::AlterSchema(a) => self.all_tables_in(&a.name),
            Statement::Drop {
                object_type:
                    ObjectType::Table
                    | ObjectType::View
                    | ObjectType::MaterializedView
                    | ObjectType::Index
                    | ObjectType::Sequence,
                names,
                ..
            } => {
                for n in names {
                    self.access(n, Access::Write);
                }
            }
            Statement::Copy {
                source, to, target, ..
            } => {
                if let CopySource::Table {
                    table_name,
                    columns,
                } = source
                {
                    self.access(table_name, if *to { Access::Read } else { Access::Write });
                    let t = name(table_name);
                    if columns.is_empty() {
                        self.raw_columns.push(Raw::Of(t.clone(), None));
                    }
                    for c in columns {
                        self.raw_columns.push(Raw::Of(t.clone(), Some(ident(c))));
                    }
                }
                match target {
                    CopyTarget::Program { .. } => self.flags.push(Flag::CopyProgram),
                    CopyTarget::File { .. } => self.flags.push(Flag::CopyFile),
                    CopyTarget::Stdin | CopyTarget::Stdout => {}
                }
            }
            Statement::Call(f) => self.function(&f.name),
            // Creating, replacing, altering or dropping a routine is not
            // calling it, but a rule on the function holds for it (as for a
            // table's DDL), and doing so to a dangerous one is risky.
            Statement::CreateFunction(CreateFunction { name, .. })
            | Statement::CreateProcedure { name, .. } => {
                self.function(name);
                self.flags.push(Flag::CreatesRoutine);
            }
            Statement::AlterFunction(a) => self.function(&a.function.name),
            Statement::DropFunction(DropFunction { func_desc, .. })
            | Statement::DropProcedure {
                proc_desc: func_desc,
                ..
            } => {
                for f in func_desc {
                    self.function(&f.name);
                }
            }
            Statement::Prepare { name, .. } => self.flags.push(Flag::Prepare(ident(name))),
            Statement::Execute { name: Some(n), .. } => {
                // Same spelling as PREPARE's (the plain identifier), not SQL-quoted.
                self.flags.push(Flag::Execute(name(n).parts.join(".")));
            }
            Statement::Deallocate { name, .. } => {
                let all = name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all");
                self.flags
                    .push(Flag::Deallocate((!all).then(|| ident(name))));
            }
            Statement::Discard {
                object_type: DiscardObject::ALL,
            } => {
                self.flags.push(Flag::Deallocate(None));
            }
            Statement::Load { .. } => self.flags.push(Flag::LoadsLibrary),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        let me: *const Query = q;
        let base = match self.cte_bodies.iter().find(|(p, _)| *p == me) {
            Some((_, visible)) => visible.clone(),
            None => self.scopes.last().cloned().unwrap_or_default(),
        };
        let mut frame = base.clone();
        if let Some(with) = &q.with {
            let names: Vec<String> = with
                .cte_tables
                .iter()
                .map(|c| ident(&c.alias.name))
                .collect();
            self.ctes.extend(names.iter().cloned());
            for (i, cte) in with.cte_tables.iter().enumerate() {
                let mut visible = base.clone();
                let seen = if with.recursive { names.len() } else { i };
                visible.extend(names.iter().take(seen).cloned());
                self.cte_bodies.push((&*cte.query, visible));
            }
            frame.extend(names);
        }
        if !q.locks.is_empty() {
            self.flags.push(Flag::LocksRows);
        }
        // `TABLE name`: sqlparser keeps the name as a bare string (quoting
        // lost, not visited as a relation), so neither its table nor its
        // columns could be reported: fail closed.
        if has_table_command(&q.body) {
            self.unmodelled = Some("TABLE command (its table is not modelled)");
        }
        self.scopes.push(frame);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
        self.scopes.pop();
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
        if let Some(into) = &s.into {
            self.select_into = true;
            for t in &into.targets {
                let parts = match t {
                    Expr::Identifier(id) => vec![ident(id)],
                    Expr::CompoundIdentifier(ids) => ids.iter().map(ident).collect(),
                    _ => continue,
                };
                self.tables.push(TableAccess {
                    table: QualifiedName { parts },
                    access: Access::Write,
                });
            }
        }
        let mut from = Vec::new();
        let natural = self.scan_from(&s.from, &mut from);
        let star = s
            .projection
            .iter()
            .any(|i| matches!(i, SelectItem::Wildcard(_)));
        if star || natural {
            for t in from {
                self.raw_columns.push(Raw::Of(t, None));
            }
        }
        for item in &s.projection {
            if let SelectItem::QualifiedWildcard(
                SelectItemQualifiedWildcardKind::ObjectName(n),
                _,
            ) = item
            {
                self.raw_columns.push(Raw::Star(name(n).parts));
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, f: &TableFactor) -> ControlFlow<()> {
        match f {
            TableFactor::Table {
                name: n,
                alias: Some(a),
                args: None,
                ..
            } => {
                let t = (!self.is_cte(n)).then(|| name(n));
                self.aliases.push((ident(&a.name), t));
            }
            TableFactor::Derived { alias: Some(a), .. }
            | TableFactor::Function { alias: Some(a), .. }
            | TableFactor::Table { alias: Some(a), .. }
            | TableFactor::UNNEST { alias: Some(a), .. } => {
                self.aliases.push((ident(&a.name), None));
            }
            _ => {}
        }
        match f {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => {
                self.function(name);
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, n: &ObjectName) -> ControlFlow<()> {
        let me: *const ObjectName = n;
        if self.handled.contains(&me) {
            return ControlFlow::Continue(());
        }
        self.misread_name(n, true);
        if let [ObjectNamePart::Identifier(id)] = n.0.as_slice()
            && self.scopes.last().is_some_and(|s| s.contains(&ident(id)))
        {
            return ControlFlow::Continue(());
        }
        self.tables.push(TableAccess {
            table: name(n),
            access: Access::Read,
        });
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        match e {
            Expr::Function(f) => {
                self.function(&f.name);
                // `f(t.*)` reads the whole row; `count(*)` reads no column.
                if let FunctionArguments::List(list) = &f.args {
                    for a in &list.args {
                        let (FunctionArg::Unnamed(arg)
                        | FunctionArg::Named { arg, .. }
                        | FunctionArg::ExprNamed { arg, .. }) = a;
                        if let FunctionArgExpr::QualifiedWildcard(n) = arg {
                            self.raw_columns.push(Raw::Star(name(n).parts));
                        }
                    }
                }
            }
            // `DEFAULT` in VALUES is a keyword, not a column.
            Expr::Identifier(id)
                if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("default") => {}
            Expr::Identifier(id) => self.raw_columns.push(Raw::Name(vec![ident(id)])),
            Expr::CompoundIdentifier(ids) => {
                self.raw_columns
                    .push(Raw::Name(ids.iter().map(ident).collect()));
            }
            Expr::QualifiedWildcard(n, _) => self.raw_columns.push(Raw::Star(name(n).parts)),
            Expr::Wildcard(_) => self.raw_columns.push(Raw::StarAll),
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

fn has_table_command(body: &SetExpr) -> bool {
    match body {
        SetExpr::Table(_) => true,
        SetExpr::SetOperation { left, right, .. } => {
            has_table_command(left) || has_table_command(right)
        }
        _ => false,
    }
}

fn is_role_setting(n: &ObjectName) -> bool {
    matches!(n.0.as_slice(), [ObjectNamePart::Identifier(id)]
        if matches!(ident(id).as_str(), "role" | "session_authorization"))
}

fn kind_of(stmt: &Statement, w: &Walker) -> Kind {
    match stmt {
        Statement::Query(_) if w.select_into => Kind::Ddl,
        Statement::Query(_) if w.tables.iter().any(|t| t.access == Access::Write) => Kind::Write,
        Statement::Query(_) | Statement::ExplainTable { .. } | Statement::Declare { .. } => {
            Kind::Read
        }
        Statement::Insert(_)
        | Statement::Update(_)
        | Statement::Delete(_)
        | Statement::Merge(_)
        | Statement::Truncate(_) => Kind::Write,
        Statement::Grant(_)
        | Statement::Revoke(_)
        | Statement::Deny(_)
        | Statement::CreateRole(_)
        | Statement::AlterRole { .. }
        | Statement::CreateUser(_)
        | Statement::AlterUser(_) => Kind::Dcl,
        Statement::Drop {
            object_type: ObjectType::Role | ObjectType::User,
            ..
        } => Kind::Dcl,
        Statement::Set(Set::SetRole { .. } | Set::SetSessionAuthorization(_)) => Kind::RoleSwitch,
        Statement::Set(Set::SingleAssignment { variable, .. }) if is_role_setting(variable) => {
            Kind::RoleSwitch
        }
        Statement::Set(Set::ParenthesizedAssignments { variables, .. })
            if variables.iter().any(is_role_setting) =>
        {
            Kind::RoleSwitch
        }
        Statement::Set(Set::MultipleAssignments { assignments })
            if assignments.iter().any(|a| is_role_setting(&a.name)) =>
        {
            Kind::RoleSwitch
        }
        Statement::Reset(r) => match &r.reset {
            Reset::SessionAuthorization => Kind::RoleSwitch,
            Reset::ConfigurationParameter(n) if is_role_setting(n) => Kind::RoleSwitch,
            _ => Kind::Utility,
        },
        // DISCARD ALL includes SET SESSION AUTHORIZATION DEFAULT.
        Statement::Discard {
            object_type: DiscardObject::ALL,
        } => Kind::RoleSwitch,
        Statement::StartTransaction { statements, .. } if statements.is_empty() => {
            Kind::Transaction
        }
        Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => Kind::Transaction,
        // PREPARE is judged by what it prepares; EXPLAIN (ANALYZE runs it) too.
        Statement::Prepare { statement, .. } | Statement::Explain { statement, .. } => {
            kind_of(statement, w)
        }
        Statement::Execute { name: Some(_), .. } => Kind::Execute,
        Statement::Call(_) => Kind::Procedural,
        Statement::Set(_)
        | Statement::Copy { .. }
        | Statement::Deallocate { .. }
        | Statement::Discard { .. }
        | Statement::Vacuum(_)
        | Statement::Analyze(_)
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::LISTEN { .. }
        | Statement::UNLISTEN { .. }
        | Statement::NOTIFY { .. }
        | Statement::Lock(_)
        | Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::Load { .. }
        | Statement::Kill { .. } => Kind::Utility,
        other => {
            // The remaining modelled statements are schema changes; anything
            // else is not PostgreSQL we understand.
            let variant = format!("{other:?}");
            if ["Create", "Alter", "Drop", "Comment"]
                .iter()
                .any(|p| variant.starts_with(p))
            {
                Kind::Ddl
            } else {
                Kind::Unparsable
            }
        }
    }
}
