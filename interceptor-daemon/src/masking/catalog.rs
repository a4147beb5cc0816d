//! The session's view of the database catalog: which (table OID, attribute
//! number) pairs are masked, and which relations and names carry masked data.
//!
//! Read once per session with [`QUERY`], sent by the proxy ahead of the
//! client's first statement under the client's own role (`pg_attribute`,
//! `pg_class`, `pg_namespace`, `pg_depend` and `pg_rewrite` are readable by
//! every role). Views are followed through `pg_depend`: a view (or a view of
//! a view...) whose rewrite rule reads a masked column gets *all* its columns
//! masked, because the dependency does not say which view column carries it.
//!
//! Routines (`pg_proc`, the user's schemas, languages with a source: SQL,
//! PL/pgSQL...) are judged too: one whose source names a masked relation and
//! one of its masked columns, or calls such a routine, or whose SQL-standard
//! body (`BEGIN ATOMIC`, tracked in `pg_depend`) reads a masked column,
//! *reads masked data*, and a statement calling it is tainted
//! ([`super::lineage`]): its expression outputs are masked. Sources are
//! scanned for words, not parsed ([`source_words`]), which errs toward masking.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::{
    MaskPlan, Treatment,
    lineage::{Sensitivity, source_reads_masked, source_words},
};

/// One statement, four row shapes told apart by the first column:
/// `c`: oid, attnum, schema, relation, column (user relations only);
/// `d`: view oid, referenced relation oid, referenced attnum;
/// `f`: routine oid, '', schema, name, source (user schemas, not C or internal);
/// `p`: routine oid, referenced relation oid, referenced attnum.
pub const QUERY: &str = "SELECT 'c', c.oid::int8::text, a.attnum::text, n.nspname::text, c.relname::text, a.attname::text \
FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r','p','v','m','f') \
AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' \
UNION ALL SELECT DISTINCT 'd', r.ev_class::int8::text, d.refobjid::int8::text, d.refobjsubid::text, '', '' \
FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_rewrite r ON d.objid = r.oid \
WHERE d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass \
AND d.refobjsubid > 0 AND r.ev_class <> d.refobjid \
UNION ALL SELECT 'f', p.oid::int8::text, '', n.nspname::text, p.proname::text, p.prosrc::text \
FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND p.prolang NOT IN (12, 13) \
UNION ALL SELECT DISTINCT 'p', d.objid::int8::text, d.refobjid::int8::text, d.refobjsubid::text, '', '' \
FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_proc'::regclass \
AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjsubid > 0";

#[derive(Debug, Default)]
struct Rel {
    schema: String,
    name: String,
    columns: Vec<(i16, String)>,
}

/// Builds a [`Catalog`] from the rows of [`QUERY`].
#[derive(Debug, Default)]
pub struct CatalogBuilder {
    rels: HashMap<u32, Rel>,
    /// (view, referenced relation, referenced attnum)
    deps: Vec<(u32, u32, i16)>,
    /// Routines: oid → (schema, name, source).
    routines: HashMap<u32, (String, String, String)>,
    /// (routine, referenced relation, referenced attnum)
    routine_deps: Vec<(u32, u32, i16)>,
    failed: bool,
}

impl CatalogBuilder {
    /// One DataRow of the catalog query (text format values).
    pub fn row(&mut self, values: &[Option<&[u8]>]) {
        let s = |i: usize| {
            values
                .get(i)
                .copied()
                .flatten()
                .and_then(|v| std::str::from_utf8(v).ok())
        };
        let (Some(kind), Some(a), Some(b)) = (s(0), s(1), s(2)) else {
            self.failed = true;
            return;
        };
        match kind {
            "c" => {
                let (Ok(oid), Ok(att), Some(schema), Some(rel), Some(col)) =
                    (a.parse::<u32>(), b.parse::<i16>(), s(3), s(4), s(5))
                else {
                    self.failed = true;
                    return;
                };
                let r = self.rels.entry(oid).or_default();
                r.schema = schema.to_string();
                r.name = rel.to_string();
                r.columns.push((att, col.to_string()));
            }
            "d" | "p" => match (
                a.parse::<u32>(),
                b.parse::<u32>(),
                s(3).map(str::parse::<i16>),
            ) {
                (Ok(view), Ok(rel), Some(Ok(att))) if kind == "d" => {
                    self.deps.push((view, rel, att))
                }
                (Ok(routine), Ok(rel), Some(Ok(att))) => {
                    self.routine_deps.push((routine, rel, att))
                }
                _ => self.failed = true,
            },
            // A source in another encoding is still scanned (lossily).
            "f" => match (
                a.parse::<u32>(),
                s(3),
                s(4),
                values.get(5).copied().flatten(),
            ) {
                (Ok(oid), Some(schema), Some(name), Some(src)) => {
                    let src = String::from_utf8_lossy(src).into_owned();
                    self.routines
                        .insert(oid, (schema.to_string(), name.to_string(), src));
                }
                _ => self.failed = true,
            },
            _ => self.failed = true,
        }
    }

    /// The query failed (permissions, an old server...): the session falls
    /// back to name-based decisions.
    pub fn fail(&mut self) {
        self.failed = true;
    }

    pub fn finish(self, plan: &MaskPlan) -> Catalog {
        if self.failed {
            return Catalog::default();
        }
        let mut masked: HashMap<(u32, i16), Treatment> = HashMap::new();
        for (oid, r) in &self.rels {
            for (att, col) in &r.columns {
                if let Some(t) = plan.column(&r.schema, &r.name, col) {
                    masked.insert((*oid, *att), t);
                }
            }
        }
        // Views over masked columns, to a fixpoint (views of views).
        let strongest = plan.strongest_column();
        let mut tainted_views: HashSet<u32> = HashSet::new();
        loop {
            let mut grew = false;
            for (view, rel, att) in &self.deps {
                if tainted_views.contains(view) {
                    continue;
                }
                if masked.contains_key(&(*rel, *att)) {
                    tainted_views.insert(*view);
                    grew = true;
                    if let (Some(v), Some(t)) = (self.rels.get(view), strongest) {
                        for (a, _) in &v.columns {
                            masked.insert((*view, *a), t);
                        }
                    }
                }
            }
            if !grew {
                break;
            }
        }
        let mut relation_names = HashSet::new();
        let mut columns: HashMap<String, HashSet<String>> = HashMap::new();
        for (oid, att) in masked.keys() {
            if let Some(r) = self.rels.get(oid) {
                let qualified = format!("{}.{}", r.schema, r.name);
                relation_names.insert(r.name.clone());
                relation_names.insert(qualified.clone());
                if let Some((_, c)) = r.columns.iter().find(|(a, _)| a == att) {
                    for n in [r.name.clone(), qualified] {
                        columns.entry(n).or_default().insert(c.clone());
                    }
                }
            }
        }
        let names = self
            .rels
            .values()
            .flat_map(|r| [r.name.clone(), format!("{}.{}", r.schema, r.name)])
            .collect();
        let mut catalog = Catalog {
            loaded: true,
            known: self.rels.keys().copied().collect(),
            names,
            masked,
            relation_names,
            columns,
            routines: HashSet::new(),
        };
        catalog.routines = self.routines_reading_masked(&catalog, plan);
        catalog
    }

    /// The names (`name`, `schema.name`, lowercase) of the routines that
    /// read masked data, to a fixpoint (routines calling such routines).
    fn routines_reading_masked(&self, catalog: &Catalog, plan: &MaskPlan) -> HashSet<String> {
        let sens = Sens { plan, catalog };
        let mut found: HashSet<String> = HashSet::new();
        let mut pending: Vec<(u32, BTreeSet<String>)> = self
            .routines
            .iter()
            .map(|(oid, (_, _, src))| (*oid, source_words(src)))
            .collect();
        let by_deps: HashSet<u32> = self
            .routine_deps
            .iter()
            .filter(|(_, rel, att)| catalog.masked.contains_key(&(*rel, *att)))
            .map(|(routine, _, _)| *routine)
            .collect();
        loop {
            let before = found.len();
            pending.retain(|(oid, words)| {
                let hit = by_deps.contains(oid)
                    || source_reads_masked(words, &sens, &|w| found.contains(w));
                if hit && let Some((schema, name, _)) = self.routines.get(oid) {
                    found.insert(name.to_lowercase());
                    found.insert(format!("{schema}.{name}").to_lowercase());
                }
                !hit
            });
            if found.len() == before {
                return found;
            }
        }
    }
}

/// The catalog decides for the relations it knows; the globs for the others
/// (created since, or the catalog could not be read).
pub struct Sens<'a> {
    pub plan: &'a MaskPlan,
    pub catalog: &'a Catalog,
}

impl Sensitivity for Sens<'_> {
    fn relation(&self, names: &[String]) -> bool {
        names.iter().any(|n| self.catalog.is_masked_relation(n))
            || (!names.iter().any(|n| self.catalog.knows_name(n))
                && self.plan.is_masked_table_name(names))
    }
    /// Likewise per relation: the catalog's masked columns, or the globs.
    fn column(&self, name: &str, relations: &[[String; 2]]) -> bool {
        relations.iter().any(|r| {
            if r.iter().any(|n| self.catalog.knows_name(n)) {
                r.iter().any(|n| self.catalog.is_masked_column(n, name))
            } else {
                self.plan.is_masked_column_in(r, name)
            }
        })
    }
    fn column_name(&self, name: &str) -> bool {
        self.catalog.has_masked_column_named(name) || self.plan.column_by_name(name).is_some()
    }
    fn function(&self, names: &[String; 2]) -> bool {
        names.iter().any(|n| self.catalog.reads_masked_routine(n))
    }
}

/// What the session knows of the catalog (empty if the query failed).
#[derive(Debug, Default)]
pub struct Catalog {
    pub loaded: bool,
    known: HashSet<u32>,
    /// Every relation's `name` and `schema.name`.
    names: HashSet<String>,
    masked: HashMap<(u32, i16), Treatment>,
    relation_names: HashSet<String>,
    /// Masked column names per relation (`name` and `schema.name`).
    columns: HashMap<String, HashSet<String>>,
    /// Routines reading masked data (`name` and `schema.name`, lowercase).
    routines: HashSet<String>,
}

impl Catalog {
    /// The relation was in the catalog snapshot.
    pub fn knows(&self, oid: u32) -> bool {
        self.known.contains(&oid)
    }

    /// A relation of that name (`name` or `schema.name`) was in the snapshot.
    pub fn knows_name(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    pub fn masked(&self, oid: u32, attnum: i16) -> Option<Treatment> {
        self.masked.get(&(oid, attnum)).copied()
    }

    /// A relation (by `name` or `schema.name`) has masked columns.
    pub fn is_masked_relation(&self, name: &str) -> bool {
        self.relation_names.contains(name)
    }

    /// Some relation (a masked view's too) has a masked column `name`.
    pub fn has_masked_column_named(&self, name: &str) -> bool {
        self.columns.values().any(|c| c.contains(name))
    }

    /// A routine of that name (`name` or `schema.name`) reads masked data.
    pub fn reads_masked_routine(&self, name: &str) -> bool {
        !self.routines.is_empty()
            && (self.routines.contains(name) || self.routines.contains(&name.to_lowercase()))
    }

    /// `relation` (`name` or `schema.name`) has a masked column `column`.
    pub fn is_masked_column(&self, relation: &str, column: &str) -> bool {
        self.columns
            .get(relation)
            .is_some_and(|c| c.contains(column))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masking::Strategy;

    #[test]
    fn views_over_masked_columns_are_masked_whole() {
        let plan = MaskPlan::of_yaml(&["{columns: [customers.email], strategy: hash}"]);
        let mut b = CatalogBuilder::default();
        let row = |b: &mut CatalogBuilder, v: &[&str]| {
            let vals: Vec<Option<&[u8]>> = v.iter().map(|s| Some(s.as_bytes())).collect();
            b.row(&vals);
        };
        for (oid, att, rel, col) in [
            ("100", "1", "customers", "id"),
            ("100", "2", "email", "email"),
            ("200", "1", "v_contacts", "contact"),
            ("300", "1", "v_ids", "id"),
            ("400", "1", "v_v", "x"),
        ] {
            let rel = if col == "email" { "customers" } else { rel };
            row(&mut b, &["c", oid, att, "public", rel, col]);
        }
        row(&mut b, &["d", "200", "100", "2"]); // v_contacts reads customers.email
        row(&mut b, &["d", "300", "100", "1"]); // v_ids reads customers.id only
        row(&mut b, &["d", "400", "200", "1"]); // v_v reads v_contacts
        let c = b.finish(&plan);
        let h = Some(Treatment::new(Strategy::Hash, 4));
        assert_eq!(c.masked(100, 2), h);
        assert_eq!(c.masked(100, 1), None);
        assert_eq!(c.masked(200, 1), h);
        assert_eq!(c.masked(300, 1), None);
        assert_eq!(c.masked(400, 1), h, "views of views");
        assert!(c.knows(300) && !c.knows(999));
        assert!(c.is_masked_relation("customers") && c.is_masked_relation("public.v_contacts"));
        assert!(!c.is_masked_relation("v_ids"));
        assert!(c.knows_name("v_ids") && c.knows_name("public.v_ids") && !c.knows_name("nope"));
        assert!(c.is_masked_column("v_contacts", "contact"));
        assert!(c.is_masked_column("public.customers", "email"));
        assert!(!c.is_masked_column("customers", "id"));
        assert!(!c.is_masked_column("v_ids", "id"));
        // Routines: by source (PL/pgSQL, dynamic SQL, calls), or by the
        // dependencies of a SQL-standard body; (oid, name, source).
        let mut b = CatalogBuilder::default();
        for (oid, att, rel, col) in [
            ("100", "1", "customers", "id"),
            ("100", "2", "customers", "email"),
        ] {
            row(&mut b, &["c", oid, att, "public", rel, col]);
        }
        for (oid, name, src) in [
            (
                "1",
                "email_of",
                "BEGIN RETURN (SELECT c.email FROM customers c WHERE c.id = $1); END",
            ),
            ("2", "wrapped", "SELECT upper(public.email_of($1))"),
            (
                "3",
                "dynamic",
                "BEGIN RETURN QUERY EXECUTE 'SELECT email FROM public.customers'; END",
            ),
            ("4", "ids", "SELECT id FROM customers"),
            ("5", "atomic", ""),
            ("6", "other_email", "SELECT email FROM orders"),
        ] {
            row(&mut b, &["f", oid, "", "public", name, src]);
        }
        row(&mut b, &["p", "5", "100", "2"]); // atomic's body reads customers.email
        row(&mut b, &["p", "4", "100", "1"]);
        let c = b.finish(&plan);
        for (name, want) in [
            ("email_of", true),
            ("public.email_of", true),
            ("WRAPPED", true),
            ("dynamic", true),
            ("atomic", true),
            ("ids", false),
            ("other_email", false),
            ("customers", false),
        ] {
            assert_eq!(c.reads_masked_routine(name), want, "{name}");
        }
        // A bad row: the whole catalog is distrusted.
        let mut b = CatalogBuilder::default();
        row(&mut b, &["c", "x", "1", "public", "t", "c"]);
        assert!(!b.finish(&plan).loaded);
    }
}
