//! Data masking of query results: what to hide (columns, detected values),
//! how (strategies), and where a result column's data comes from. Pure: no
//! sockets, no storage. `pgproxy` feeds it frames and forwards what it returns.
//!
//! # Configuration
//!
//! Policy rules with `action: mask` carry a [`MaskSpec`]: column globs
//! (`table.column`, `schema.table.column`), value detectors applied to every
//! text value, custom regexes, one [`Strategy`] and `keep_last` for `partial`.
//! They never allow or deny; [`MaskPlan`] collects those applying to a
//! session's identity and target. When several rules (or detectors) apply to
//! one value, the strongest strategy wins: `null` > `redact` > `hash` >
//! `partial` (and the smallest `keep_last`).
//!
//! # Which result columns are masked (provenance)
//!
//! PostgreSQL's RowDescription names, for each output column that is a plain
//! table column, the table OID and attribute number — even through aliases,
//! subqueries and CTEs (`SELECT email AS e`, `WITH x AS (SELECT email ...)
//! SELECT * FROM x`), because the server resolves it. For a view column it
//! names the view. Expressions (`upper(email)`, `email::bytea`,
//! `row_to_json(c)`, scalar subqueries, aggregates, set operations) carry 0.
//!
//! So the session learns the catalog once ([`catalog`]): before the client's
//! first statement the proxy sends one query of its own reading
//! `pg_attribute`/`pg_class` (which every role may read) and `pg_depend` for
//! views, and swallows its answer. From it: the (OID, attnum) pairs that the
//! column globs select; and every view (transitively) that reads one of them,
//! whose columns are *all* masked, since we cannot see which view column
//! carries it.
//!
//! Per output column, then ([`wire`]):
//! * a plain column of a known relation is masked iff it is a masked column
//!   (aliases cannot hide it: the decision is on the OID, not the name);
//! * a plain column of a relation the catalog does not know (created later, a
//!   system catalog) is masked if its name matches a column glob, or as an
//!   expression below;
//! * an expression column is masked, with the strongest column strategy, when
//!   the statement that produced it is *tainted* ([`lineage`]): it reads a
//!   masked relation and mentions a masked column of a relation it reads, a
//!   masked relation's name or alias (whole-row references: `row_to_json(c)`,
//!   `c::text`, `to_jsonb(c.*)`), a wildcard outside the top-level select
//!   list, or a column alias list (`AS x(a, b)`, which renames what we match
//!   on); and any statement the analysis cannot read or whose rows come from
//!   elsewhere (FETCH, EXECUTE, CALL). For a plain top-level `SELECT` over
//!   base tables only, taint is judged per select item, so
//!   `SELECT id, upper(name) FROM customers WHERE email = $1` keeps
//!   `upper(name)`; otherwise per statement (conservative).
//!
//! The extended protocol is followed statement by statement: the
//! RowDescription answering a Describe is remembered for the prepared
//! statement, so a later Bind/Execute without Describe is masked with it
//! (and the Bind's result formats).
//!
//! Errors and notices answering a statement that reads a masked relation
//! lose their detail, context and internal query fields, and quoted text in
//! their message is redacted (`invalid input syntax for type integer:
//! "[redacted]"`). Likewise a notification payload (`pg_notify('c', email)`)
//! is redacted whole; detectors scan every payload and message.
//!
//! Routines are judged from the same catalog query: one whose source names
//! a masked relation and one of its masked columns (or calls such a
//! routine), or whose SQL-standard body depends on a masked column, reads
//! masked data, and a statement calling it anywhere (`SELECT email_of(id)`,
//! `FROM contacts()`) is tainted. Sources are scanned for words, not parsed
//! ([`lineage::source_words`]): a mention counts, which errs toward masking.
//! Not seen through: routines in C or internal languages, and objects
//! created after the session's first statement (those are judged by the
//! globs and by name). Value detectors remain the last line of defence
//! there: every text value of every row is scanned when the session has
//! detector rules. The catalog
//! query runs under the client's session settings; if it fails or is
//! subverted, decisions fall back to the globs and names (more masking, not
//! less, for the names the globs select).
//!
//! Values keep a form the client can decode: text-like types (`text`,
//! `varchar`, `bpchar`, `name`, `json`, `jsonb`, `xml`, `bytea`) are
//! re-encoded in the column's format; any other type is sent as NULL.
//! Rows whose layout is unknown (an Execute whose RowDescription the proxy did
//! not see) are nulled in full when the statement reads a masked relation.
//! `COPY ... TO STDOUT` of a statement reading a masked relation sends every
//! field as `\N` (text) or nothing (binary). Nothing here logs a value.

pub mod catalog;
pub mod detect;
pub mod lineage;
pub mod mysql;
pub mod strategy;
pub mod wire;

use std::sync::{Arc, OnceLock};

use globset::{Glob, GlobMatcher};
use regex::Regex;
use serde::Deserialize;

pub use detect::Detector;
pub use strategy::{MaskKey, Strategy, Treatment};

/// The `mask:` field of a policy rule.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MaskSpec {
    /// `table.column` or `schema.table.column` globs; a glob without a dot is
    /// a column name in any table.
    #[serde(default)]
    pub columns: Vec<String>,
    /// Built-in value detectors applied to every text value.
    #[serde(default)]
    pub detectors: Vec<Detector>,
    /// Custom value detectors (Rust `regex` syntax).
    #[serde(default)]
    pub regex: Vec<String>,
    #[serde(default = "default_strategy")]
    pub strategy: Strategy,
    /// For `partial`: how many trailing characters stay visible.
    #[serde(default = "default_keep_last")]
    pub keep_last: usize,
    #[serde(skip)]
    #[schemars(skip)]
    compiled: OnceLock<Arc<CompiledSpec>>,
}

fn default_strategy() -> Strategy {
    Strategy::Redact
}
fn default_keep_last() -> usize {
    4
}

/// One column glob, split into its table and column parts.
#[derive(Debug, Clone)]
pub struct ColumnGlob {
    /// Matches `table.column` and `schema.table.column`.
    pub full: GlobMatcher,
    /// Matches the relation (`table` or `schema.table`); `None` = any.
    pub table: Option<GlobMatcher>,
    /// Matches the column name alone.
    pub column: GlobMatcher,
}

/// A [`MaskSpec`] with its globs and regexes compiled.
#[derive(Debug)]
pub struct CompiledSpec {
    pub columns: Vec<ColumnGlob>,
    pub detectors: Vec<Detector>,
    pub regex: Vec<Regex>,
    pub treatment: Treatment,
}

fn glob(p: &str) -> Result<GlobMatcher, String> {
    Glob::new(p)
        .map(|g| g.compile_matcher())
        .map_err(|e| format!("`{p}`: not a valid glob: {e}"))
}

impl MaskSpec {
    /// Compiles (once) and returns the globs and regexes; errors name the bad one.
    pub fn compiled(&self) -> Result<Arc<CompiledSpec>, String> {
        if let Some(c) = self.compiled.get() {
            return Ok(c.clone());
        }
        let mut columns = Vec::with_capacity(self.columns.len());
        for c in &self.columns {
            let (table, column) = match c.rsplit_once('.') {
                Some((t, col)) => (Some(glob(t)?), col),
                None => (None, c.as_str()),
            };
            let full = if table.is_some() {
                glob(c)?
            } else {
                glob(&format!("*.{c}"))?
            };
            columns.push(ColumnGlob {
                full,
                table,
                column: glob(column)?,
            });
        }
        let regex = self
            .regex
            .iter()
            .map(|r| Regex::new(r).map_err(|e| format!("`{r}`: not a valid regex: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if self.columns.is_empty() && self.detectors.is_empty() && self.regex.is_empty() {
            return Err("mask names no columns, detectors or regex".into());
        }
        let c = Arc::new(CompiledSpec {
            columns,
            detectors: self.detectors.clone(),
            regex,
            treatment: Treatment::new(self.strategy, self.keep_last),
        });
        let _ = self.compiled.set(c.clone());
        Ok(c)
    }
}

/// Every mask rule that applies to one session (identity + target).
#[derive(Debug, Clone, Default)]
pub struct MaskPlan {
    pub specs: Vec<Arc<CompiledSpec>>,
}

impl MaskPlan {
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// The plan of these rule specs (YAML), each valid.
    #[cfg(test)]
    pub(crate) fn of_yaml(specs: &[&str]) -> MaskPlan {
        let compiled = |y: &&str| {
            let spec: MaskSpec = serde_yaml::from_str(y).expect("a mask spec");
            spec.compiled().expect("a valid mask spec")
        };
        MaskPlan {
            specs: specs.iter().map(compiled).collect(),
        }
    }

    /// True if any rule masks columns (the session then needs the catalog).
    pub fn has_columns(&self) -> bool {
        self.specs.iter().any(|s| !s.columns.is_empty())
    }

    /// True if any rule scans values.
    pub fn has_detectors(&self) -> bool {
        self.specs
            .iter()
            .any(|s| !s.detectors.is_empty() || !s.regex.is_empty())
    }

    /// The strongest treatment among column rules (for expressions built on
    /// masked data), or `None` without column rules.
    pub fn strongest_column(&self) -> Option<Treatment> {
        self.specs
            .iter()
            .filter(|s| !s.columns.is_empty())
            .map(|s| s.treatment)
            .reduce(Treatment::stronger)
    }

    /// The treatment for a column named `table.column` / `schema.table.column`.
    pub fn column(&self, schema: &str, table: &str, column: &str) -> Option<Treatment> {
        let short = format!("{table}.{column}");
        let long = format!("{schema}.{table}.{column}");
        self.specs
            .iter()
            .filter(|s| {
                s.columns
                    .iter()
                    .any(|g| g.full.is_match(&short) || g.full.is_match(&long))
            })
            .map(|s| s.treatment)
            .reduce(Treatment::stronger)
    }

    /// The treatment for a column known only by its name.
    pub fn column_by_name(&self, column: &str) -> Option<Treatment> {
        self.specs
            .iter()
            .filter(|s| s.columns.iter().any(|g| g.column.is_match(column)))
            .map(|s| s.treatment)
            .reduce(Treatment::stronger)
    }

    /// True if a column glob selects column `column` of a relation named
    /// `names` (`t`, `schema.t`).
    pub fn is_masked_column_in(&self, names: &[String], column: &str) -> bool {
        self.specs.iter().any(|s| {
            s.columns.iter().any(|g| {
                g.column.is_match(column)
                    && g.table
                        .as_ref()
                        .is_none_or(|t| names.iter().any(|n| t.is_match(n)))
            })
        })
    }

    /// True if a relation named `names` (`t`, `schema.t`) may hold a masked
    /// column by the globs alone.
    pub fn is_masked_table_name(&self, names: &[String]) -> bool {
        self.specs.iter().any(|s| {
            s.columns.iter().any(|g| {
                g.table
                    .as_ref()
                    .is_none_or(|t| names.iter().any(|n| t.is_match(n)))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> MaskSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn column_globs_match_short_and_qualified_names() {
        let a = spec("{columns: [customers.email, '*.ssn', phone], strategy: hash}");
        let b = spec("{columns: [public.customers.email], strategy: partial, keep_last: 2}");
        let plan = MaskPlan {
            specs: vec![a.compiled().unwrap(), b.compiled().unwrap()],
        };
        let hash = Some(Treatment::new(Strategy::Hash, 4));
        assert_eq!(plan.column("public", "customers", "email"), hash);
        assert_eq!(plan.column("other", "customers", "email"), hash);
        assert_eq!(plan.column("public", "people", "ssn"), hash);
        assert_eq!(plan.column("public", "people", "phone"), hash);
        assert_eq!(plan.column("public", "people", "email"), None);
        assert_eq!(plan.column("public", "customers", "name"), None);
        let customers = ["customers".to_string(), "public.customers".to_string()];
        assert!(plan.is_masked_column_in(&customers, "email"));
        assert!(plan.is_masked_column_in(&["orders".into()], "ssn"));
        assert!(!plan.is_masked_column_in(&["orders".into()], "email"));
        assert!(!plan.is_masked_column_in(&customers, "id"));
        // `*.ssn` could be in any table.
        assert!(plan.is_masked_table_name(&["orders".into()]));
        let b_only = MaskPlan {
            specs: vec![b.compiled().unwrap()],
        };
        assert!(b_only.is_masked_table_name(&["x".into(), "public.customers".into()]));
        assert!(!b_only.is_masked_table_name(&["customers".into()]));
        assert!(!b_only.is_masked_table_name(&["orders".into()]));
        // The strongest column strategy: hash beats partial.
        assert_eq!(plan.strongest_column(), hash);
    }

    #[test]
    fn invalid_specs_are_refused() {
        let e = spec("{regex: ['(unclosed']}").compiled().unwrap_err();
        assert!(e.contains("(unclosed") && e.contains("regex"), "{e}");
        let e = spec("{columns: ['a.[b']}").compiled().unwrap_err();
        assert!(e.contains("glob"), "{e}");
        assert!(spec("{strategy: null}").compiled().is_err());
        assert!(serde_yaml::from_str::<MaskSpec>("{strategy: scramble}").is_err());
        assert!(serde_yaml::from_str::<MaskSpec>("{detectors: [ssn]}").is_err());
    }
}
