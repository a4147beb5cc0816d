//! Masking on the MySQL/MariaDB wire: result rows of the text protocol
//! (`COM_QUERY`) and of the binary protocol (`COM_STMT_EXECUTE`,
//! `COM_STMT_FETCH`), rewritten as the server sends them.
//!
//! Which columns (see the [module docs](super) for PostgreSQL's rules, of
//! which these are the MySQL form):
//! * a column definition carries `schema`, `org_table` and `org_name`, the
//!   base table column an output column is, through aliases and merged
//!   derived tables; such a column is masked iff a column glob selects
//!   `org_table.org_name` / `schema.org_table.org_name`;
//! * a column without them (an expression: `UPPER(email)`, `CONCAT(...)`) or
//!   whose `org_table` is none of the relations the statement names (a
//!   materialised derived table) is masked with the strongest column strategy
//!   when the statement is tainted ([`Facts`], MySQL dialect): it reads a
//!   table the globs select and mentions a masked column, or it cannot be
//!   read; per select item for a plain top-level SELECT;
//! * value detectors scan every text value when the session has them.
//!
//! MySQL has no catalog of OIDs to consult, so the globs are matched by
//! name. Views and stored functions are read once per session
//! ([`objects`]): every column of a view over a masked column (or over such
//! a view or function) is masked with the strongest column strategy, and a
//! statement reading such a view or calling such a function is tainted.
//!
//! Values keep a form the client decodes: string types get the masked text,
//! any other type (numbers, dates) becomes NULL. A row longer than one packet
//! (16 MiB) in a result with masked columns or detectors cannot be rewritten
//! in place: [`MaskError::Oversized`] ends the session (fail closed).
//! Nothing here logs a value.

pub mod objects;

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use super::{
    MaskKey, MaskPlan, Strategy, Treatment, detect,
    lineage::{Facts, Sensitivity},
};
use crate::protocol::mysql::{
    MAX_PAYLOAD, PrepareOk, SERVER_MORE_RESULTS_EXISTS, SERVER_STATUS_CURSOR_EXISTS, eof_status,
    is_eof, lenenc, lenenc_str, put_lenenc,
};

/// What the client asked, in order; the server answers each in turn.
#[derive(Debug, Clone)]
pub enum Expect {
    /// A text-protocol query (result sets with text rows).
    Query(Arc<Facts>),
    /// A prepare: the answer names the statement id.
    Prepare(Arc<Facts>),
    /// An execute of statement `id` (binary rows).
    Execute(u32),
    /// A fetch from statement `id`'s cursor (binary rows, no definitions).
    Fetch(u32),
    /// COM_FIELD_LIST: definitions until EOF.
    FieldList,
    /// Anything else answered by one packet (OK, ERR, a string).
    Single,
}

/// The queue both halves of a session share.
pub type Pending = Arc<Mutex<VecDeque<Expect>>>;

#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    #[error("a row larger than 16 MiB in a masked result cannot be rewritten")]
    Oversized,
    #[error("malformed {0} from the server")]
    Malformed(&'static str),
}

/// How one output column is treated.
#[derive(Debug, Clone, Copy)]
struct Col {
    ty: u8,
    mask: Option<Treatment>,
    detect: bool,
}

impl Col {
    fn touched(&self) -> bool {
        self.mask.is_some() || self.detect
    }
}

#[derive(Debug)]
enum State {
    /// Waiting for the first packet of an answer.
    Idle,
    /// The first packet of the next result set of the same answer.
    Next,
    /// `left` column definitions to come.
    Columns {
        left: u64,
    },
    /// The EOF after the definitions (without CLIENT_DEPRECATE_EOF).
    ColumnsEof,
    Rows,
    /// COM_FIELD_LIST, LOCAL INFILE, prepare details: packets up to an end.
    Skip {
        left: u64,
    },
    /// After LOCAL INFILE data: the server's OK or ERR.
    InfileResult,
    /// Definitions until EOF/ERR (COM_FIELD_LIST).
    UntilEof,
}

/// Server side of a session with mask rules.
pub struct Masker {
    plan: Arc<MaskPlan>,
    key: MaskKey,
    pending: Pending,
    deprecate_eof: bool,
    state: State,
    current: Option<Expect>,
    facts: Arc<Facts>,
    layout: Vec<Col>,
    binary: bool,
    /// Column count of the result being defined.
    columns: u64,
    defs: Vec<ColumnDef>,
    prepared: HashMap<u32, Arc<Facts>>,
    /// Layouts of executed statements, for COM_STMT_FETCH.
    layouts: HashMap<u32, Vec<Col>>,
    /// Views and functions over masked columns ([`objects`]), once read.
    derived: objects::Derived,
}

/// Bounds the per-session maps (statement ids are reused by servers).
const MAX_STATEMENTS: usize = 4096;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ColumnDef {
    schema: String,
    table: String,
    org_table: String,
    name: String,
    org_name: String,
    ty: u8,
}

impl ColumnDef {
    /// Protocol 4.1 column definition. The fixed fields are the last 12
    /// bytes, whatever MariaDB's extended metadata put before them.
    fn parse(p: &[u8]) -> Option<ColumnDef> {
        let mut at = 0;
        let mut s = || lenenc_str(p, &mut at).map(|v| String::from_utf8_lossy(v).into_owned());
        let _catalog = s()?;
        let (schema, table, org_table, name, org_name) = (s()?, s()?, s()?, s()?, s()?);
        let fixed = p.len().checked_sub(12)?;
        if fixed < at || p.get(fixed - 1) != Some(&0x0c) {
            return None;
        }
        Some(ColumnDef {
            schema,
            table,
            org_table,
            name,
            org_name,
            ty: p[fixed + 6],
        })
    }
}

/// MySQL column types whose values are strings on the wire (text and binary
/// protocol alike): they can carry masked text.
fn is_string(ty: u8) -> bool {
    matches!(ty, 15 | 245 | 247..=254)
}

/// The globs, by name (MySQL has no catalog of OIDs), and the session's
/// masked views (every column of which is masked) and functions.
struct Globs<'a> {
    plan: &'a MaskPlan,
    derived: &'a objects::Derived,
}

impl Sensitivity for Globs<'_> {
    fn relation(&self, names: &[String]) -> bool {
        self.plan.is_masked_table_name(names)
            || names.first().is_some_and(|n| self.derived.contains(n))
    }
    fn column(&self, name: &str, relations: &[[String; 2]]) -> bool {
        // MySQL column names are case-insensitive; quoted ones keep their case here.
        let lower = name.to_lowercase();
        relations.iter().any(|r| {
            self.derived.contains(&r[0])
                || self.plan.is_masked_column_in(r, name)
                || self.plan.is_masked_column_in(r, &lower)
        })
    }
    /// By the globs; a masked view's columns (any name) are found through
    /// the view's name instead.
    fn column_name(&self, name: &str) -> bool {
        self.plan.column_by_name(name).is_some()
            || self.plan.column_by_name(&name.to_lowercase()).is_some()
    }
    fn function(&self, names: &[String; 2]) -> bool {
        names.iter().any(|n| self.derived.reads_masked_function(n))
    }
}

/// The replacement of one value: `None` = NULL.
fn masked(v: &[u8], col: &Col, plan: &MaskPlan, key: &MaskKey) -> Option<Option<Vec<u8>>> {
    if let Some(t) = col.mask {
        if t.strategy == Strategy::Null || !is_string(col.ty) {
            return Some(None);
        }
        return Some(
            t.render(&String::from_utf8_lossy(v), key)
                .map(String::into_bytes),
        );
    }
    if col.detect && is_string(col.ty) {
        let text = std::str::from_utf8(v).ok()?;
        return match detect::scrub(plan, text, key) {
            detect::Scrubbed::Unchanged => None,
            detect::Scrubbed::Null => Some(None),
            detect::Scrubbed::Changed(s) => Some(Some(s.into_bytes())),
        };
    }
    None
}

/// Byte length of a non-NULL binary-protocol value of type `ty` at `b`.
fn binary_len(ty: u8, b: &[u8]) -> Option<usize> {
    Some(match ty {
        1 => 1,
        2 | 13 => 2,
        3 | 4 | 9 => 4,
        5 | 8 => 8,
        6 => 0,
        7 | 10 | 11 | 12 => 1 + usize::from(*b.first()?),
        _ => {
            let (n, used) = lenenc(b)?;
            used.checked_add(usize::try_from(n).ok()?)?
        }
    })
}

impl Masker {
    pub fn new(plan: MaskPlan, key: MaskKey, pending: Pending, deprecate_eof: bool) -> Masker {
        Masker {
            plan: Arc::new(plan),
            key,
            pending,
            deprecate_eof,
            state: State::Idle,
            current: None,
            facts: Arc::new(Facts::default()),
            layout: Vec::new(),
            binary: false,
            columns: 0,
            defs: Vec::new(),
            prepared: HashMap::new(),
            layouts: HashMap::new(),
            derived: objects::Derived::default(),
        }
    }

    /// The reader of the session's objects query, if the session needs it
    /// (column rules); the proxy sends [`objects::Reader::command`] ahead of
    /// the client's first command and feeds the answer to the reader.
    pub fn objects_reader(&self) -> Option<objects::Reader> {
        self.plan
            .has_columns()
            .then(|| objects::Reader::new(self.deprecate_eof))
    }

    /// Takes the objects the reader read; on an unreadable answer none is
    /// known (masking by the globs and names alone) and the reason is returned.
    pub fn learn_objects(&mut self, r: objects::Reader) -> Result<&objects::Derived, String> {
        let defs = r.finish()?;
        self.derived = objects::Derived::judge(&self.plan, &defs);
        Ok(&self.derived)
    }

    /// Output column `d` comes out of a masked view: it is the view's
    /// (`org_table`), or the relation it is read from (`table`, itself or
    /// through an alias) is one.
    fn comes_from_masked_view(&self, d: &ColumnDef) -> bool {
        if self.derived.is_empty() {
            return false;
        }
        self.derived.contains(&d.org_table)
            || self.derived.contains(&d.table)
            || self.facts.aliases.iter().any(|(rel, alias)| {
                alias.eq_ignore_ascii_case(&d.table) && self.derived.contains(&rel[0])
            })
    }

    /// The facts a statement's text gives (for the client half).
    pub fn facts(sql: &str) -> Arc<Facts> {
        Arc::new(Facts::of_mysql(sql))
    }

    fn plan_columns(&self) -> Vec<Col> {
        let sens = Globs {
            plan: &self.plan,
            derived: &self.derived,
        };
        let n = self.defs.len();
        let detect = self.plan.has_detectors();
        self.defs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let named = self
                    .facts
                    .relations
                    .iter()
                    .any(|r| r[0].eq_ignore_ascii_case(&d.org_table));
                let mask = if !d.org_table.is_empty() && !d.org_name.is_empty() && named {
                    let by = |t: &str, c: &str| self.plan.column(&d.schema, t, c);
                    Treatment::stronger_of(
                        by(&d.org_table, &d.org_name),
                        by(
                            &d.org_table.to_ascii_lowercase(),
                            &d.org_name.to_ascii_lowercase(),
                        ),
                    )
                } else if !d.org_table.is_empty() && !d.org_name.is_empty() && !named {
                    // A column of a relation the text does not name (a
                    // materialised derived table, a view's own column
                    // list): by its name, or as an expression.
                    let by_name = self.plan.column(&d.schema, &d.org_table, &d.org_name);
                    let tainted = self.facts.column_tainted(i, n, &sens);
                    by_name.or(tainted.then(|| self.plan.strongest_column()).flatten())
                } else if self.facts.column_tainted(i, n, &sens) {
                    self.plan.strongest_column()
                } else {
                    None
                };
                let mask = if self.comes_from_masked_view(d) {
                    Treatment::stronger_of(mask, self.plan.strongest_column())
                } else {
                    mask
                };
                let _ = &d.name;
                Col {
                    ty: d.ty,
                    mask,
                    detect,
                }
            })
            .collect()
    }

    fn begin(&mut self) {
        let next = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
        // An answer nobody asked for (cannot happen with a well-behaved
        // server): treated as a query nobody can vouch for.
        let next = next.unwrap_or(Expect::Query(Arc::new(Facts {
            unparsable: true,
            ..Facts::default()
        })));
        self.facts = match &next {
            Expect::Query(f) | Expect::Prepare(f) => f.clone(),
            Expect::Execute(id) | Expect::Fetch(id) => {
                self.prepared.get(id).cloned().unwrap_or_else(|| {
                    Arc::new(Facts {
                        unparsable: true,
                        ..Facts::default()
                    })
                })
            }
            _ => Arc::new(Facts::default()),
        };
        self.binary = matches!(next, Expect::Execute(_) | Expect::Fetch(_));
        self.current = Some(next);
    }

    fn end(&mut self) {
        self.state = State::Idle;
        self.current = None;
    }

    /// Status flags of an OK (0x00 / 0xFE with CLIENT_DEPRECATE_EOF) or EOF packet.
    fn status(&self, p: &[u8]) -> u16 {
        eof_status(p, self.deprecate_eof)
    }

    /// The end of a result set or of an answer (OK / ERR / EOF).
    fn finish(&mut self, p: &[u8]) {
        if p.first() != Some(&0xff) && self.status(p) & SERVER_MORE_RESULTS_EXISTS != 0 {
            self.state = State::Next;
        } else {
            self.end();
        }
    }

    /// Sees one server packet of the command phase. Returns the replacement
    /// payload, or `None` to forward the packet as it is.
    pub fn on_packet(&mut self, p: &[u8]) -> Result<Option<Vec<u8>>, MaskError> {
        if matches!(self.state, State::Idle) {
            self.begin();
            self.state = State::Next;
            if let Some(Expect::Fetch(id)) = &self.current {
                self.layout = self.layouts.get(id).cloned().unwrap_or_default();
                self.columns = self.layout.len() as u64;
                self.state = State::Rows;
            }
        }
        match self.state {
            State::Idle => Ok(None),
            State::Next => {
                match (&self.current, p.first()) {
                    (_, Some(0xff)) => self.end(),
                    (Some(Expect::Single), _) => self.end(),
                    (Some(Expect::FieldList), _) => {
                        self.state = State::UntilEof;
                        return self.on_packet(p);
                    }
                    (Some(Expect::Prepare(f)), Some(0x00)) => {
                        let ok =
                            PrepareOk::parse(p).ok_or(MaskError::Malformed("prepare answer"))?;
                        if self.prepared.len() >= MAX_STATEMENTS {
                            self.prepared.clear();
                            self.layouts.clear();
                        }
                        self.prepared.insert(ok.id, f.clone());
                        self.layouts.remove(&ok.id);
                        let left = ok.definitions(self.deprecate_eof);
                        if left == 0 {
                            self.end();
                        } else {
                            self.state = State::Skip { left };
                        }
                    }
                    (_, Some(0x00)) => self.finish(p),
                    (_, Some(0xfb)) => self.state = State::InfileResult,
                    _ => {
                        let (n, used) = lenenc(p).ok_or(MaskError::Malformed("column count"))?;
                        // MariaDB's metadata cache is never negotiated, so
                        // nothing follows the count.
                        let _ = used;
                        self.columns = n;
                        self.defs.clear();
                        self.state = State::Columns { left: n };
                        if n == 0 {
                            return Err(MaskError::Malformed("column count"));
                        }
                    }
                }
                Ok(None)
            }
            State::Columns { left } => {
                let def = ColumnDef::parse(p).ok_or(MaskError::Malformed("column definition"))?;
                self.defs.push(def);
                if left <= 1 {
                    self.layout = self.plan_columns();
                    if let Some(Expect::Execute(id)) = &self.current {
                        if self.layouts.len() >= MAX_STATEMENTS {
                            self.layouts.clear();
                        }
                        self.layouts.insert(*id, self.layout.clone());
                    }
                    self.state = if self.deprecate_eof {
                        State::Rows
                    } else {
                        State::ColumnsEof
                    };
                } else {
                    self.state = State::Columns { left: left - 1 };
                }
                Ok(None)
            }
            State::ColumnsEof => {
                // A cursor was opened: rows come with COM_STMT_FETCH.
                if self.binary && self.status(p) & SERVER_STATUS_CURSOR_EXISTS != 0 {
                    self.end();
                } else {
                    self.state = State::Rows;
                }
                Ok(None)
            }
            State::Rows => {
                if p.first() == Some(&0xff) {
                    self.end();
                    return Ok(None);
                }
                if is_eof(p) {
                    self.finish(p);
                    return Ok(None);
                }
                if !self.layout.iter().any(Col::touched) {
                    if p.len() >= MAX_PAYLOAD {
                        // A continued row: its continuation packets are
                        // forwarded as they are (nothing to mask).
                        self.state = State::Skip { left: 0 };
                    }
                    return Ok(None);
                }
                if p.len() >= MAX_PAYLOAD {
                    return Err(MaskError::Oversized);
                }
                if self.binary {
                    self.binary_row(p)
                } else {
                    self.text_row(p)
                }
            }
            State::Skip { left } => {
                if left == 0 {
                    // Continuation of an untouched oversized row.
                    if p.len() < MAX_PAYLOAD {
                        self.state = State::Rows;
                    }
                } else if left == 1 {
                    self.end();
                } else {
                    self.state = State::Skip { left: left - 1 };
                }
                Ok(None)
            }
            State::InfileResult => {
                self.finish(p);
                Ok(None)
            }
            State::UntilEof => {
                if p.first() == Some(&0xff) || is_eof(p) {
                    self.end();
                }
                Ok(None)
            }
        }
    }

    fn text_row(&self, p: &[u8]) -> Result<Option<Vec<u8>>, MaskError> {
        let mut out = Vec::with_capacity(p.len());
        let mut at = 0;
        let mut changed = false;
        for col in &self.layout {
            if p.get(at) == Some(&0xfb) {
                out.push(0xfb);
                at += 1;
                continue;
            }
            let start = at;
            let v = lenenc_str(p, &mut at).ok_or(MaskError::Malformed("text row"))?;
            match masked(v, col, &self.plan, &self.key) {
                None => out.extend_from_slice(&p[start..at]),
                Some(None) => {
                    changed = true;
                    out.push(0xfb);
                }
                Some(Some(new)) => {
                    changed = true;
                    put_lenenc(&mut out, new.len());
                    out.extend_from_slice(&new);
                }
            }
        }
        if at != p.len() {
            return Err(MaskError::Malformed("text row"));
        }
        Ok(changed.then_some(out))
    }

    fn binary_row(&self, p: &[u8]) -> Result<Option<Vec<u8>>, MaskError> {
        let n = self.layout.len();
        let bitmap_len = (n + 7 + 2) / 8;
        let bad = || MaskError::Malformed("binary row");
        if p.first() != Some(&0x00) {
            return Err(bad());
        }
        let mut bitmap = p.get(1..1 + bitmap_len).ok_or_else(bad)?.to_vec();
        let mut body = Vec::with_capacity(p.len());
        let mut at = 1 + bitmap_len;
        let mut changed = false;
        for (i, col) in self.layout.iter().enumerate() {
            let (byte, bit) = ((i + 2) / 8, (i + 2) % 8);
            if bitmap[byte] & (1 << bit) != 0 {
                continue;
            }
            let len = binary_len(col.ty, p.get(at..).ok_or_else(bad)?).ok_or_else(bad)?;
            let raw = p.get(at..at + len).ok_or_else(bad)?;
            at += len;
            let value = if is_string(col.ty) {
                let mut i = 0;
                lenenc_str(raw, &mut i).ok_or_else(bad)?
            } else {
                raw
            };
            match masked(value, col, &self.plan, &self.key) {
                None => body.extend_from_slice(raw),
                Some(None) => {
                    changed = true;
                    bitmap[byte] |= 1 << bit;
                }
                Some(Some(new)) => {
                    changed = true;
                    put_lenenc(&mut body, new.len());
                    body.extend_from_slice(&new);
                }
            }
        }
        if at != p.len() {
            return Err(bad());
        }
        if !changed {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(1 + bitmap_len + body.len());
        out.push(0x00);
        out.extend_from_slice(&bitmap);
        out.extend_from_slice(&body);
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(yaml: &str) -> MaskPlan {
        MaskPlan::of_yaml(&[yaml])
    }

    fn def(schema: &str, org_table: &str, name: &str, org_name: &str, ty: u8) -> Vec<u8> {
        def_in(schema, org_table, org_table, name, org_name, ty)
    }

    /// A definition whose relation as the statement names it (`table`: an
    /// alias, a view) is not its `org_table`.
    fn def_in(
        schema: &str,
        table: &str,
        org_table: &str,
        name: &str,
        org_name: &str,
        ty: u8,
    ) -> Vec<u8> {
        let mut p = Vec::new();
        for s in ["def", schema, table, org_table, name, org_name] {
            put_lenenc(&mut p, s.len());
            p.extend_from_slice(s.as_bytes());
        }
        p.push(0x0c);
        p.extend_from_slice(&[33, 0, 100, 0, 0, 0, ty, 0, 0, 0, 0, 0]);
        p
    }

    fn text_row(values: &[Option<&str>]) -> Vec<u8> {
        let mut p = Vec::new();
        for v in values {
            match v {
                None => p.push(0xfb),
                Some(s) => {
                    put_lenenc(&mut p, s.len());
                    p.extend_from_slice(s.as_bytes());
                }
            }
        }
        p
    }

    fn masker(yaml: &str, expect: Vec<Expect>) -> Masker {
        let pending: Pending = Arc::new(Mutex::new(expect.into()));
        Masker::new(plan(yaml), MaskKey::from_bytes([1; 32]), pending, false)
    }

    const EOF: &[u8] = &[0xfe, 0, 0, 2, 0];

    #[test]
    fn text_rows_mask_columns_by_origin_and_expressions_by_taint() {
        let sql = "SELECT id, email AS e, UPPER(email), name FROM customers";
        let mut m = masker(
            "{columns: [customers.email], strategy: partial, keep_last: 4}",
            vec![Expect::Query(Masker::facts(sql)), Expect::Single],
        );
        assert_eq!(m.on_packet(&[4]).unwrap(), None);
        for d in [
            def("shop", "customers", "id", "id", 3),
            def("shop", "customers", "e", "email", 253),
            def("", "", "UPPER(email)", "", 253),
            def("shop", "customers", "name", "name", 252),
        ] {
            assert_eq!(m.on_packet(&d).unwrap(), None);
        }
        assert_eq!(m.on_packet(EOF).unwrap(), None);
        let row = text_row(&[
            Some("1"),
            Some("ada@example.com"),
            Some("ADA@EXAMPLE.COM"),
            None,
        ]);
        let got = m.on_packet(&row).unwrap().expect("rewritten");
        assert_eq!(
            got,
            text_row(&[Some("1"), Some("****.com"), Some("****.COM"), None])
        );
        // Rows without the masked value are untouched by value, not by column.
        assert_eq!(m.on_packet(EOF).unwrap(), None);
        // The next answer is the next command's.
        assert_eq!(m.on_packet(&[0, 0, 0, 2, 0, 0, 0]).unwrap(), None);
        assert!(matches!(m.state, State::Idle));
    }

    /// Views as MariaDB reports their columns: a MERGE view's name their
    /// `org_table`; a TEMPTABLE view over a view gives the base table with
    /// the view's column name (`customers.contact`), under the alias.
    #[test]
    fn columns_of_views_over_masked_columns_are_masked() {
        let statements = [
            "SELECT * FROM v_contacts",
            "SELECT UPPER(contact) FROM v_contacts v",
            "SELECT * FROM v_t x",
            "SELECT n FROM v_names",
        ];
        let mut m = masker(
            "{columns: [customers.email], strategy: redact}",
            statements
                .iter()
                .map(|s| Expect::Query(Masker::facts(s)))
                .collect(),
        );
        let defs = [
            ("v_contacts", "select `shop`.`customers`.`id` AS `id`,`shop`.`customers`.`email` AS `contact` from `shop`.`customers`"),
            ("v_t", "select `v_contacts`.`id` AS `id`,`v_contacts`.`contact` AS `contact` from `shop`.`v_contacts`"),
            ("v_names", "select ucase(`shop`.`customers`.`name`) AS `n` from `shop`.`customers`"),
        ]
        .map(|(name, d)| objects::Definition {
            object: objects::Object::View,
            schema: "shop".into(),
            name: name.into(),
            definition: Some(d.into()),
        });
        m.derived = objects::Derived::judge(&m.plan, &defs);
        let mut answer = |defs: &[Vec<u8>], row: &[Option<&str>]| {
            m.on_packet(&[defs.len() as u8]).unwrap();
            for d in defs {
                m.on_packet(d).unwrap();
            }
            m.on_packet(EOF).unwrap();
            let got = m.on_packet(&text_row(row)).unwrap();
            m.on_packet(EOF).unwrap();
            got
        };
        let contact = Some("ada@example.com");
        let redacted = Some("[redacted]");
        // Masked whole: the id (not a string) too.
        let whole = answer(
            &[
                def("shop", "v_contacts", "id", "id", 3),
                def("shop", "v_contacts", "contact", "contact", 253),
            ],
            &[Some("1"), contact],
        );
        assert_eq!(whole, Some(text_row(&[None, redacted])));
        let upper = answer(
            &[def("", "", "UPPER(contact)", "", 253)],
            &[Some("ADA@EXAMPLE.COM")],
        );
        assert_eq!(upper, Some(text_row(&[redacted])));
        let temptable = answer(
            &[def_in("", "x", "customers", "contact", "contact", 253)],
            &[contact],
        );
        assert_eq!(temptable, Some(text_row(&[redacted])));
        let clean = answer(&[def("shop", "v_names", "n", "n", 253)], &[Some("ADA")]);
        assert_eq!(clean, None, "a view without masked columns passes");
    }

    #[test]
    fn non_string_columns_become_null_and_unrelated_queries_pass() {
        let mut m = masker(
            "{columns: ['*.salary'], strategy: hash}",
            vec![
                Expect::Query(Masker::facts("SELECT salary FROM staff")),
                Expect::Query(Masker::facts("SELECT 40 + 2")),
            ],
        );
        m.on_packet(&[1]).unwrap();
        m.on_packet(&def("hr", "staff", "salary", "salary", 246))
            .unwrap();
        m.on_packet(EOF).unwrap();
        assert_eq!(
            m.on_packet(&text_row(&[Some("1000.00")])).unwrap(),
            Some(vec![0xfb])
        );
        m.on_packet(EOF).unwrap();
        m.on_packet(&[1]).unwrap();
        m.on_packet(&def("", "", "40 + 2", "", 8)).unwrap();
        m.on_packet(EOF).unwrap();
        assert_eq!(m.on_packet(&text_row(&[Some("42")])).unwrap(), None);
    }

    #[test]
    fn binary_rows_of_prepared_statements_are_masked() {
        let mut m = masker(
            "{columns: [customers.email], strategy: redact}",
            vec![
                Expect::Prepare(Masker::facts(
                    "SELECT id, email FROM customers WHERE id = ?",
                )),
                Expect::Execute(7),
            ],
        );
        // Prepare OK: id 7, 2 columns, 1 param; then 1 param def + EOF, 2 column defs + EOF.
        m.on_packet(&[0, 7, 0, 0, 0, 2, 0, 1, 0, 0, 0, 0]).unwrap();
        for _ in 0..5 {
            m.on_packet(&[0xfe, 0, 0, 2, 0]).unwrap();
        }
        assert!(matches!(m.state, State::Idle));
        m.on_packet(&[2]).unwrap();
        m.on_packet(&def("shop", "customers", "id", "id", 3))
            .unwrap();
        m.on_packet(&def("shop", "customers", "email", "email", 253))
            .unwrap();
        m.on_packet(EOF).unwrap();
        let mut row = vec![0x00, 0x00];
        row.extend_from_slice(&5u32.to_le_bytes());
        row.push(15);
        row.extend_from_slice(b"ada@example.com");
        let mut want = vec![0x00, 0x00];
        want.extend_from_slice(&5u32.to_le_bytes());
        want.push(10);
        want.extend_from_slice(b"[redacted]");
        assert_eq!(m.on_packet(&row).unwrap(), Some(want));
        // A NULL email stays NULL (bit 3 of the bitmap: column 1 + 2).
        let mut null_row = vec![0x00, 0b1000];
        null_row.extend_from_slice(&5u32.to_le_bytes());
        assert_eq!(m.on_packet(&null_row).unwrap(), None);
    }

    #[test]
    fn detectors_scan_every_text_value() {
        let mut m = masker(
            "{detectors: [email], strategy: redact}",
            vec![Expect::Query(Masker::facts("SELECT note FROM tickets"))],
        );
        m.on_packet(&[1]).unwrap();
        m.on_packet(&def("s", "tickets", "note", "note", 252))
            .unwrap();
        m.on_packet(EOF).unwrap();
        assert_eq!(
            m.on_packet(&text_row(&[Some("mail ada@example.com now")]))
                .unwrap(),
            Some(text_row(&[Some("mail [redacted] now")]))
        );
    }
}
