//! The tables and functions one statement of PostgreSQL's parse tree names,
//! for the cross-check ([`super::crosscheck`]) to hold against ours.
//!
//! libpg_query's tree has some 270 node types and no visitor; pg_query's own
//! `nodes()` walk follows only the fields it knows (it skips RETURNING, VALUES
//! and LIMIT, among others), and a reference it skips could not be caught. So
//! the tree is walked through its `serde::Serialize` implementation (every
//! generated type has one): a serializer that sees every struct by name and
//! every field, whatever node holds it, and collects the few it is after.

use std::fmt;

use pg_query::protobuf;
use serde::ser::{self, Serialize};

/// What one statement names, as PostgreSQL's parser reads it. Names are in
/// the parse tree's form: unquoted identifiers folded to lower case, quoted
/// ones as written, each part truncated to 63 bytes (our walker's form too).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct PgNames {
    /// Every relation reference (`RangeVar`), row-locking clauses aside
    /// (`FOR UPDATE OF x` names a FROM item, possibly an alias), including
    /// references to CTEs, which only the query's scopes can tell apart.
    pub relations: Vec<Vec<String>>,
    /// The targets of INSERT, UPDATE, DELETE, MERGE and TRUNCATE, at any
    /// depth (data-modifying CTEs), and the relations DDL creates or changes
    /// (CREATE/ALTER TABLE, sequences, views, a trigger's table, REFRESH,
    /// CREATE TABLE AS and SELECT INTO targets) and GRANT/REVOKE names.
    pub write_targets: Vec<Vec<String>>,
    /// Names the statement gives its CTEs.
    pub ctes: Vec<String>,
    /// Functions called by name (`f(...)`), those a GRANT or REVOKE names
    /// (`s.*` for ALL FUNCTIONS IN SCHEMA s), and the routines DDL creates,
    /// alters, renames, moves, re-owns or drops; not the calls the grammar
    /// makes up for SQL syntax such as `EXTRACT(...)` or `TRIM(...)`.
    pub calls: Vec<Vec<String>>,
}

impl PgNames {
    pub(crate) fn of(stmt: &protobuf::Node) -> Result<Self, String> {
        let mut out = PgNames::default();
        let mut scratch = Scratch::default();
        stmt.serialize(Walk {
            out: &mut out,
            scratch: &mut scratch,
            role: Role::Any,
        })
        .map_err(|e| e.0)?;
        out.by_string_lists(stmt);
        Ok(out)
    }

    /// A relation the statement creates or changes.
    fn written(&mut self, name: Vec<String>) {
        self.write_targets.push(name.clone());
        self.relations.push(name);
    }

    /// Every table of a schema (`s.*`), or of the database (`*`), written:
    /// what a statement on all of them at once touches.
    fn every_table_of(&mut self, schema: Option<String>) {
        self.written(all_in(schema));
    }

    /// Relations the tree names by a list of strings rather than a
    /// `RangeVar`: DROP's objects (when they are relations) and a
    /// sequence's `OWNED BY table.column`; and statements on every table of
    /// a schema or of the database (GRANT ... ON ALL TABLES IN SCHEMA,
    /// ALTER DEFAULT PRIVILEGES, DROP, ALTER and RENAME of a schema, DROP
    /// and REASSIGN OWNED); and the routines GRANT and DDL name.
    fn by_string_lists(&mut self, stmt: &protobuf::Node) {
        use protobuf::{ObjectType as O, node::Node as N};
        let string = |n: &protobuf::Node| match &n.node {
            Some(N::String(s)) => Some(s.sval.clone()),
            _ => None,
        };
        let parts = |n: &protobuf::Node| -> Option<Vec<String>> {
            let Some(N::List(l)) = &n.node else {
                return None;
            };
            l.items.iter().map(string).collect()
        };
        let on_functions = |objtype: i32| {
            matches!(
                O::try_from(objtype),
                Ok(O::ObjectFunction | O::ObjectProcedure | O::ObjectRoutine)
            )
        };
        let on_relations =
            |objtype: i32| matches!(O::try_from(objtype), Ok(O::ObjectTable | O::ObjectSequence));
        // The table of a column named `[schema.]table.column`.
        let column_table = |n: &protobuf::Node| {
            parts(n).filter(|name| name.len() > 1).map(|mut name| {
                name.pop();
                name
            })
        };
        // A routine's name without its argument types, as our reading reports it.
        let routine = |f: &protobuf::ObjectWithArgs| -> Option<Vec<String>> {
            f.objname.iter().map(string).collect()
        };
        let routine_node = |n: Option<&protobuf::Node>| match n.and_then(|n| n.node.as_ref()) {
            Some(N::ObjectWithArgs(f)) => routine(f),
            _ => None,
        };
        match &stmt.node {
            Some(N::DropStmt(d))
                if matches!(
                    O::try_from(d.remove_type),
                    Ok(O::ObjectTable
                        | O::ObjectView
                        | O::ObjectMatview
                        | O::ObjectIndex
                        | O::ObjectSequence
                        | O::ObjectForeignTable)
                ) =>
            {
                for name in d.objects.iter().filter_map(parts) {
                    self.written(name);
                }
            }
            Some(N::DropStmt(d)) if O::try_from(d.remove_type) == Ok(O::ObjectSchema) => {
                for schema in d.objects.iter().filter_map(string) {
                    self.every_table_of(Some(schema));
                }
            }
            Some(N::RenameStmt(r)) if O::try_from(r.rename_type) == Ok(O::ObjectSchema) => {
                self.every_table_of(Some(r.subname.clone()));
            }
            Some(N::AlterOwnerStmt(a)) if O::try_from(a.object_type) == Ok(O::ObjectSchema) => {
                if let Some(schema) = a.object.as_deref().and_then(string) {
                    self.every_table_of(Some(schema));
                }
            }
            Some(N::GrantStmt(g))
                if g.targtype == protobuf::GrantTargetType::AclTargetAllInSchema as i32
                    && on_relations(g.objtype) =>
            {
                for schema in g.objects.iter().filter_map(string) {
                    self.every_table_of(Some(schema));
                }
            }
            // Functions granted, named with their argument types, or every
            // function of a schema (as our reading reports them).
            Some(N::GrantStmt(g)) if on_functions(g.objtype) => {
                let all = g.targtype == protobuf::GrantTargetType::AclTargetAllInSchema as i32;
                for o in &g.objects {
                    match &o.node {
                        Some(N::String(s)) if all => {
                            self.calls.push(all_in(Some(s.sval.clone())));
                        }
                        _ if !all => self.calls.extend(routine_node(Some(o))),
                        _ => {}
                    }
                }
            }
            // Routines created, altered, renamed, moved, re-owned or dropped.
            Some(N::CreateFunctionStmt(c)) => {
                let name: Option<Vec<String>> = c.funcname.iter().map(string).collect();
                self.calls.extend(name);
            }
            Some(N::AlterFunctionStmt(a)) => self.calls.extend(a.func.as_ref().and_then(routine)),
            Some(N::DropStmt(d)) if on_functions(d.remove_type) => {
                let names = d.objects.iter().filter_map(|o| routine_node(Some(o)));
                self.calls.extend(names);
            }
            Some(N::RenameStmt(r)) if on_functions(r.rename_type) => {
                self.calls.extend(routine_node(r.object.as_deref()));
            }
            Some(N::AlterOwnerStmt(a)) if on_functions(a.object_type) => {
                self.calls.extend(routine_node(a.object.as_deref()));
            }
            Some(N::AlterObjectSchemaStmt(a)) if on_functions(a.object_type) => {
                self.calls.extend(routine_node(a.object.as_deref()));
            }
            // What a COMMENT is on: a relation, a column's table, a routine.
            Some(N::CommentStmt(c)) => match O::try_from(c.objtype) {
                Ok(
                    O::ObjectTable
                    | O::ObjectView
                    | O::ObjectMatview
                    | O::ObjectIndex
                    | O::ObjectSequence
                    | O::ObjectForeignTable,
                ) => {
                    if let Some(name) = c.object.as_deref().and_then(parts) {
                        self.written(name);
                    }
                }
                Ok(O::ObjectColumn) => {
                    if let Some(table) = c.object.as_deref().and_then(column_table) {
                        self.written(table);
                    }
                }
                Ok(_) if on_functions(c.objtype) => {
                    self.calls.extend(routine_node(c.object.as_deref()));
                }
                _ => {}
            },
            // Future tables (or functions) of the schemas named, or of every schema.
            Some(N::AlterDefaultPrivilegesStmt(a)) => {
                let Some(objtype) = a.action.as_ref().map(|g| g.objtype) else {
                    return;
                };
                let mut schemas: Vec<Option<String>> = a
                    .options
                    .iter()
                    .filter_map(|o| match &o.node {
                        Some(N::DefElem(d)) if d.defname == "schemas" => d.arg.as_deref(),
                        _ => None,
                    })
                    .filter_map(parts)
                    .flatten()
                    .map(Some)
                    .collect();
                if schemas.is_empty() {
                    schemas.push(None);
                }
                for schema in schemas {
                    if on_relations(objtype) {
                        self.every_table_of(schema);
                    } else if on_functions(objtype) {
                        self.calls.push(all_in(schema));
                    }
                }
            }
            // A role's objects, in every schema.
            Some(N::DropOwnedStmt(_) | N::ReassignOwnedStmt(_)) => self.every_table_of(None),
            Some(N::CreateSeqStmt(protobuf::CreateSeqStmt { options, .. }))
            | Some(N::AlterSeqStmt(protobuf::AlterSeqStmt { options, .. })) => {
                for o in options {
                    if let Some(N::DefElem(d)) = &o.node
                        && d.defname == "owned_by"
                        && let Some(table) = d.arg.as_deref().and_then(column_table)
                    {
                        self.relations.push(table);
                    }
                }
            }
            _ => {}
        }
    }
}

/// [`super::QualifiedName::all_in`]'s parts: every table or function of
/// `schema`, or of the database.
fn all_in(schema: Option<String>) -> Vec<String> {
    super::QualifiedName::all_in(schema.map(|s| super::QualifiedName::new([s]))).parts
}

/// Values a struct being walked captures from its fields.
#[derive(Default)]
struct Scratch {
    strings: Vec<String>,
    int: Option<i64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Walk everything below, collecting.
    Any,
    /// The relation(s) below are a statement's write target.
    WriteTarget,
    /// Capture every string below (a name's parts).
    Strings,
    /// Capture the integer below (an enum field).
    Int,
}

#[derive(Debug)]
struct Stop(String);

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Stop {}

impl ser::Error for Stop {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Stop(msg.to_string())
    }
}

struct Walk<'a> {
    out: &'a mut PgNames,
    scratch: &'a mut Scratch,
    role: Role,
}

impl Walk<'_> {
    fn below(&mut self, role: Role) -> Walk<'_> {
        Walk {
            out: self.out,
            scratch: self.scratch,
            role,
        }
    }

    fn int(self, v: i64) -> Result<(), Stop> {
        if self.role == Role::Int {
            self.scratch.int = Some(v);
        }
        Ok(())
    }
}

/// The struct types the walk takes apart; the type is matched once per
/// struct, not per field (most fields belong to `Other`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    RangeVar,
    FuncCall,
    Cte,
    /// INSERT, UPDATE, DELETE, MERGE: `relation` is the write target.
    Dml,
    /// TRUNCATE: `relations` are write targets.
    Truncate,
    /// DDL whose `relation` (`sequence`, `view`, `rel`) it creates or changes.
    DdlTarget,
    /// GRANT/REVOKE: the relations in `objects` (when on tables or sequences).
    Grant,
    /// The wrapper around every node.
    Node,
    Locking,
    /// `CREATE TYPE t AS (...)`: `typevar` names a type, not a table.
    CompositeType,
    Other,
}

impl Shape {
    fn of(name: &str) -> Self {
        match name {
            "Node" => Shape::Node,
            "RangeVar" => Shape::RangeVar,
            "FuncCall" => Shape::FuncCall,
            "CommonTableExpr" => Shape::Cte,
            "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => Shape::Dml,
            "TruncateStmt" => Shape::Truncate,
            "CreateStmt"
            | "AlterTableStmt"
            | "CreateSeqStmt"
            | "AlterSeqStmt"
            | "ViewStmt"
            | "CreateTrigStmt"
            | "RefreshMatViewStmt"
            | "RenameStmt"
            | "AlterObjectSchemaStmt"
            | "IntoClause" => Shape::DdlTarget,
            "GrantStmt" => Shape::Grant,
            "LockingClause" => Shape::Locking,
            "CompositeTypeStmt" => Shape::CompositeType,
            _ => Shape::Other,
        }
    }
}

/// Walks one struct: the few node types the cross-check reads are taken
/// apart field by field, every other field is walked for what it holds.
struct StructWalk<'a> {
    walk: Walk<'a>,
    shape: Shape,
    parts: [Option<String>; 3],
    funcname: Option<Vec<String>>,
    funcformat: Option<i64>,
}

impl StructWalk<'_> {
    fn capture<T: ?Sized + Serialize>(&mut self, value: &T, role: Role) -> Result<(), Stop> {
        self.walk.scratch.strings.clear();
        self.walk.scratch.int = None;
        value.serialize(self.walk.below(role))
    }
}

impl ser::SerializeStruct for StructWalk<'_> {
    type Ok = ();
    type Error = Stop;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Stop> {
        let capturing = matches!(self.walk.role, Role::Strings | Role::Int);
        match (self.shape, key) {
            // Inside a captured value (a name's `String` nodes) or a node's
            // wrapper: pass the role on.
            _ if capturing => value.serialize(self.walk.below(self.walk.role)),
            (Shape::Node, _) => value.serialize(self.walk.below(self.walk.role)),
            (Shape::Other, _) => value.serialize(self.walk.below(Role::Any)),
            (Shape::RangeVar, "catalogname" | "schemaname" | "relname") => {
                self.capture(value, Role::Strings)?;
                let i = match key {
                    "catalogname" => 0,
                    "schemaname" => 1,
                    _ => 2,
                };
                self.parts[i] = self.walk.scratch.strings.pop();
                Ok(())
            }
            (Shape::FuncCall, "funcname") => {
                self.capture(value, Role::Strings)?;
                self.funcname = Some(std::mem::take(&mut self.walk.scratch.strings));
                Ok(())
            }
            (Shape::FuncCall, "funcformat") => {
                self.capture(value, Role::Int)?;
                self.funcformat = self.walk.scratch.int;
                Ok(())
            }
            (Shape::Cte, "ctename") => {
                self.capture(value, Role::Strings)?;
                self.walk.out.ctes.extend(self.walk.scratch.strings.pop());
                Ok(())
            }
            (Shape::Dml, "relation")
            | (Shape::Truncate, "relations")
            | (Shape::DdlTarget, "relation" | "sequence" | "view" | "rel")
            | (Shape::Grant, "objects") => value.serialize(self.walk.below(Role::WriteTarget)),
            // `FOR UPDATE OF x`: x is a FROM item (or its alias), not a new
            // reference; a composite type's name is a type's.
            (Shape::Locking, _) | (Shape::CompositeType, "typevar") => Ok(()),
            _ => value.serialize(self.walk.below(Role::Any)),
        }
    }

    fn end(self) -> Result<(), Stop> {
        match self.shape {
            Shape::RangeVar if self.walk.role != Role::Strings => {
                let name: Vec<String> = self
                    .parts
                    .into_iter()
                    .flatten()
                    .filter(|p| !p.is_empty())
                    .collect();
                if self.walk.role == Role::WriteTarget {
                    self.walk.out.write_targets.push(name.clone());
                }
                self.walk.out.relations.push(name);
            }
            Shape::FuncCall => {
                let made_up =
                    self.funcformat == Some(protobuf::CoercionForm::CoerceSqlSyntax as i64);
                if let Some(name) = self.funcname
                    && !made_up
                {
                    self.walk.out.calls.push(name);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Sequences, tuples and maps: each element walked in the same role (a
/// TRUNCATE's relation list is a list of write targets).
impl ser::SerializeSeq for Walk<'_> {
    type Ok = ();
    type Error = Stop;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), Stop> {
        let role = self.role;
        v.serialize(self.below(role))
    }
    fn end(self) -> Result<(), Stop> {
        Ok(())
    }
}

/// Tuples of every kind: elements, walked like a sequence's.
macro_rules! like_seq {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for Walk<'_> {
            type Ok = ();
            type Error = Stop;
            fn $method<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), Stop> {
                ser::SerializeSeq::serialize_element(self, v)
            }
            fn end(self) -> Result<(), Stop> {
                Ok(())
            }
        }
    )*};
}

like_seq!(
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl ser::SerializeMap for Walk<'_> {
    type Ok = ();
    type Error = Stop;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, _k: &T) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), Stop> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<(), Stop> {
        Ok(())
    }
}

impl ser::SerializeStructVariant for Walk<'_> {
    type Ok = ();
    type Error = Stop;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        _k: &'static str,
        v: &T,
    ) -> Result<(), Stop> {
        ser::SerializeSeq::serialize_element(self, v)
    }
    fn end(self) -> Result<(), Stop> {
        Ok(())
    }
}

impl<'a> ser::Serializer for Walk<'a> {
    type Ok = ();
    type Error = Stop;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = StructWalk<'a>;
    type SerializeStructVariant = Self;

    fn serialize_str(self, v: &str) -> Result<(), Stop> {
        if self.role == Role::Strings {
            self.scratch.strings.push(v.to_owned());
        }
        Ok(())
    }
    fn serialize_bool(self, _: bool) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), Stop> {
        self.int(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), Stop> {
        self.int(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), Stop> {
        self.int(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<(), Stop> {
        self.int(v)
    }
    fn serialize_u8(self, v: u8) -> Result<(), Stop> {
        self.int(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), Stop> {
        self.int(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), Stop> {
        self.int(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), Stop> {
        // No enum of the tree comes near; out of range is not an enum value.
        self.int(i64::try_from(v).unwrap_or(-1))
    }
    fn serialize_f32(self, _: f32) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_f64(self, _: f64) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_char(self, _: char) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_none(self) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, v: &T) -> Result<(), Stop> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), Stop> {
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        v: &T,
    ) -> Result<(), Stop> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        v: &T,
    ) -> Result<(), Stop> {
        v.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self, Stop> {
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, Stop> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Stop> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Stop> {
        Ok(self)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self, Stop> {
        Ok(self)
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<StructWalk<'a>, Stop> {
        Ok(StructWalk {
            walk: self,
            shape: Shape::of(name),
            parts: [None, None, None],
            funcname: None,
            funcformat: None,
        })
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Stop> {
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(sql: &str) -> PgNames {
        let parsed = pg_query::parse(sql).expect("PostgreSQL parses it");
        let stmt = parsed.protobuf.stmts[0].stmt.as_ref().expect("a statement");
        PgNames::of(stmt).expect("walks")
    }

    fn v(names: &[&str]) -> Vec<Vec<String>> {
        names
            .iter()
            .map(|n| n.split('.').map(str::to_owned).collect())
            .collect()
    }

    #[test]
    fn every_reference_wherever_the_tree_holds_it() {
        // RETURNING, VALUES and LIMIT are fields pg_query's own walk skips.
        let n = names(
            "WITH c AS (SELECT 1) INSERT INTO s.\"Orders\" AS o \
             VALUES ((SELECT max(id) FROM ids), now()) \
             RETURNING (SELECT secret FROM vault LIMIT (SELECT count(*) FROM lim))",
        );
        assert_eq!(n.write_targets, v(&["s.Orders"]));
        let mut rel = n.relations.clone();
        rel.sort();
        assert_eq!(rel, v(&["ids", "lim", "s.Orders", "vault"]));
        assert_eq!(n.ctes, ["c"]);
        let mut calls = n.calls.clone();
        calls.sort();
        assert_eq!(calls, v(&["count", "max", "now"]));
    }

    #[test]
    fn writes_at_any_depth_and_truncate_lists() {
        let n = names("WITH d AS (DELETE FROM a RETURNING *) UPDATE b SET x = 1 FROM d, c");
        let mut w = n.write_targets.clone();
        w.sort();
        assert_eq!(w, v(&["a", "b"]));
        assert_eq!(names("TRUNCATE x, y.z").write_targets, v(&["x", "y.z"]));
        assert_eq!(
            names("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE").write_targets,
            v(&["t"])
        );
    }

    #[test]
    fn syntax_calls_and_locking_clauses_are_not_references() {
        let n = names(
            "SELECT EXTRACT(year FROM d), TRIM(x), pg_catalog.pg_read_file('f'), \
             d AT TIME ZONE 'UTC' FROM t AS a FOR UPDATE OF a",
        );
        assert_eq!(n.calls, v(&["pg_catalog.pg_read_file"]));
        assert_eq!(n.relations, v(&["t"]));
        // A composite type's name is a type's, not a table's.
        assert_eq!(
            names("CREATE TYPE pair AS (a int, b text)").relations,
            v(&[])
        );
    }

    #[test]
    fn ddl_references() {
        let n = names(
            "CREATE TABLE s.x (a int REFERENCES r1, FOREIGN KEY (a) REFERENCES r2) INHERITS (p)",
        );
        assert_eq!(n.relations, v(&["s.x", "r1", "r2", "p"]));
        assert_eq!(
            names("CREATE TRIGGER t AFTER INSERT ON o FOR EACH ROW EXECUTE FUNCTION f()").relations,
            v(&["o"])
        );
    }
}
