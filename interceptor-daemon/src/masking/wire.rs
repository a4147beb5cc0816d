//! Masking on the PostgreSQL wire: the two halves a proxy session drives.
//!
//! * [`Feed`] watches the client's messages: it sends the catalog query ahead
//!   of the first statement, and collects the provenance [`Facts`] of each
//!   statement into *batches* — one per server ReadyForQuery, closed by the
//!   proxy exactly where it queues its own per-ReadyForQuery entries.
//! * [`ResultMasker`] watches the server's messages: it swallows the catalog
//!   answer, derives a per-column plan from every RowDescription (with the
//!   facts of the batch being answered), and rewrites DataRows (and COPY
//!   data) accordingly. Untouched messages are not copied or even parsed
//!   beyond their header: the caller forwards the frame as it is.

use std::{
    borrow::Cow,
    collections::{HashMap, VecDeque},
    sync::{Arc, LazyLock, Mutex},
};

use regex::Regex;

use tracing::warn;

use super::{
    MaskKey, MaskPlan, Strategy, Treatment,
    catalog::{self, Catalog, CatalogBuilder, Sens},
    detect,
    lineage::Facts,
    strategy::REDACTED,
};
use crate::protocol::postgres::{
    BackendMessage, FieldDescription, Frame, FrontendMessage, ProtocolError, Target, build,
};

/// A double-quoted part of a server message.
static QUOTED: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#""[^"]*""#).unwrap_or_else(|e| panic!("constant regex: {e}")));

/// Facts remembered per session for distinct statement texts.
const FACTS_CACHE: usize = 1024;

enum Batch {
    /// The proxy's own catalog query: its whole answer is swallowed.
    Catalog,
    /// Client statements answered before the next ReadyForQuery.
    Statements(Stmts),
}

/// A prepared statement as the feed saw it parsed: its name and facts (a
/// re-Parse under the same name with other text gets other facts, so a
/// layout remembered for the old text is never used for the new one).
#[derive(Debug, Clone)]
struct Prepared {
    name: String,
    facts: Arc<Facts>,
}

impl Prepared {
    fn key(&self) -> (String, usize) {
        (self.name.clone(), Arc::as_ptr(&self.facts) as usize)
    }
}

/// An Execute: which statement runs, and the result formats its Bind asked for.
#[derive(Debug, Clone)]
struct Exec {
    statement: Prepared,
    formats: Vec<i16>,
}

#[derive(Debug, Default)]
struct Stmts {
    facts: Vec<Arc<Facts>>,
    /// The statement behind each Describe, in order (answered by
    /// RowDescription or NoData).
    describes: VecDeque<Prepared>,
    /// Each Execute, in order (ended by CommandComplete, PortalSuspended,
    /// EmptyQueryResponse or an error).
    executes: VecDeque<Exec>,
}

type Batches = Arc<Mutex<VecDeque<Batch>>>;

fn lock(b: &Batches) -> std::sync::MutexGuard<'_, VecDeque<Batch>> {
    b.lock().unwrap_or_else(|e| e.into_inner())
}

/// The two halves for one session, or `None` when no mask rule applies.
pub fn session(plan: MaskPlan, key: MaskKey) -> Option<(Feed, ResultMasker)> {
    if plan.is_empty() {
        return None;
    }
    let plan = Arc::new(plan);
    let batches: Batches = Arc::default();
    let columns = plan.has_columns();
    Some((
        Feed {
            batches: batches.clone(),
            columns,
            needs_catalog: columns,
            current: Stmts::default(),
            cache: HashMap::new(),
            statements: HashMap::new(),
            portals: HashMap::new(),
        },
        ResultMasker {
            plan,
            key,
            batches,
            building: CatalogBuilder::default(),
            catalog: Catalog::default(),
            layout: None,
            layouts: HashMap::new(),
            copy: None,
            warned_unknown_layout: false,
            catalog_seen: !columns,
        },
    ))
}

/// Client side: catalog query injection and statement facts.
pub struct Feed {
    batches: Batches,
    /// Column rules exist (facts and the catalog are needed).
    columns: bool,
    needs_catalog: bool,
    current: Stmts,
    cache: HashMap<String, Arc<Facts>>,
    statements: HashMap<String, Prepared>,
    portals: HashMap<String, Exec>,
}

impl Feed {
    fn facts(&mut self, sql: &str) -> Arc<Facts> {
        if let Some(f) = self.cache.get(sql) {
            return f.clone();
        }
        let f = Arc::new(Facts::of(sql));
        if self.cache.len() >= FACTS_CACHE {
            self.cache.clear();
        }
        self.cache.insert(sql.to_string(), f.clone());
        f
    }

    /// Unknown statement or portal (never seen, or forgotten): assume the worst.
    fn unknown() -> Arc<Facts> {
        Arc::new(Facts {
            unparsable: true,
            ..Facts::default()
        })
    }

    fn statement(&self, name: &str) -> Prepared {
        self.statements
            .get(name)
            .cloned()
            .unwrap_or_else(|| Prepared {
                name: name.to_string(),
                facts: Self::unknown(),
            })
    }

    fn portal(&self, name: &str) -> Exec {
        self.portals.get(name).cloned().unwrap_or_else(|| Exec {
            statement: Prepared {
                name: String::new(),
                facts: Self::unknown(),
            },
            formats: Vec::new(),
        })
    }

    /// Sees one client message after the startup phase, before the proxy
    /// handles it. May append the catalog query to `out` (ahead of the
    /// message, which the caller appends after).
    pub fn on_frontend(&mut self, frame: &Frame<'_>, out: &mut Vec<u8>) {
        if !self.columns {
            return;
        }
        if self.needs_catalog
            && matches!(
                frame.tag,
                b'Q' | b'P' | b'B' | b'D' | b'E' | b'S' | b'F' | b'C' | b'H'
            )
        {
            self.needs_catalog = false;
            if build::query(out, catalog::QUERY).is_ok() {
                lock(&self.batches).push_back(Batch::Catalog);
            }
        }
        let Ok(msg) = FrontendMessage::parse(frame) else {
            return;
        };
        match msg {
            FrontendMessage::Query { sql } => {
                let f = self.facts(sql);
                self.current.facts.push(f);
            }
            FrontendMessage::Parse(p) => {
                let facts = self.facts(p.query);
                self.current.facts.push(facts.clone());
                let prepared = Prepared {
                    name: p.name.to_string(),
                    facts,
                };
                self.statements.insert(p.name.to_string(), prepared);
            }
            FrontendMessage::Bind(b) => {
                let statement = self.statement(b.statement);
                self.current.facts.push(statement.facts.clone());
                let exec = Exec {
                    statement,
                    formats: b.result_formats.iter().collect(),
                };
                self.portals.insert(b.portal.to_string(), exec);
            }
            FrontendMessage::Describe(d) => {
                let statement = match d.target {
                    Target::Statement => self.statement(d.name),
                    Target::Portal => self.portal(d.name).statement,
                };
                self.current.facts.push(statement.facts.clone());
                self.current.describes.push_back(statement);
            }
            FrontendMessage::Execute(e) => {
                let exec = self.portal(e.portal);
                self.current.facts.push(exec.statement.facts.clone());
                self.current.executes.push_back(exec);
            }
            _ => {}
        }
    }

    /// Closes the batch answered by the next ReadyForQuery. Call exactly where
    /// the proxy expects one (forwarded Query, Sync, FunctionCall).
    pub fn end_batch(&mut self) {
        if !self.columns {
            return;
        }
        let stmts = std::mem::take(&mut self.current);
        lock(&self.batches).push_back(Batch::Statements(stmts));
    }
}

/// What the caller does with a server message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward the frame unchanged (and apply its own handling).
    Forward,
    /// Done: the masker swallowed it or wrote its replacement to `out`.
    Consumed,
}

/// One RowDescription field, owned (remembered across batches).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldInfo {
    name: String,
    table_oid: u32,
    column: i16,
    type_oid: u32,
    format: i16,
}

impl From<FieldDescription<'_>> for FieldInfo {
    fn from(f: FieldDescription<'_>) -> Self {
        Self {
            name: f.name.to_string(),
            table_oid: f.table_oid,
            column: f.column,
            type_oid: f.type_oid,
            format: f.format,
        }
    }
}

/// How one output column is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Col {
    type_oid: u32,
    binary: bool,
    mask: Option<Treatment>,
    detect: bool,
}

struct CopyState {
    /// The statement reads a masked relation: no row is delivered.
    masked: bool,
    binary: bool,
}

/// Server side: catalog intake and result rewriting.
pub struct ResultMasker {
    plan: Arc<MaskPlan>,
    key: MaskKey,
    batches: Batches,
    building: CatalogBuilder,
    catalog: Catalog,
    layout: Option<Vec<Col>>,
    /// RowDescriptions of prepared statements, for Executes without a Describe.
    layouts: HashMap<(String, usize), Vec<FieldInfo>>,
    copy: Option<CopyState>,
    warned_unknown_layout: bool,
    /// The catalog answer is behind us (or none was asked for).
    catalog_seen: bool,
}

/// How a type's values can be rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Text in both formats (text, varchar, bpchar, name, unknown, xml).
    Text,
    Json,
    Jsonb,
    Bytea,
    /// Anything else: only NULL is a safe replacement.
    Other,
}

fn kind(type_oid: u32) -> Kind {
    match type_oid {
        25 | 1043 | 1042 | 19 | 705 | 142 => Kind::Text,
        114 => Kind::Json,
        3802 => Kind::Jsonb,
        17 => Kind::Bytea,
        _ => Kind::Other,
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("\\x");
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{REDACTED}\""))
}

/// A whole value masked with `t`, in a form the client decodes for the
/// column's type and format; `None` = NULL.
fn mask_value(v: &[u8], col: &Col, t: Treatment, key: &MaskKey) -> Option<Vec<u8>> {
    let k = kind(col.type_oid);
    if t.strategy == Strategy::Null || k == Kind::Other {
        return None;
    }
    let body = if k == Kind::Jsonb && col.binary {
        v.get(1..).unwrap_or_default()
    } else {
        v
    };
    let rendered = t.render(&String::from_utf8_lossy(body), key)?;
    Some(match (k, col.binary) {
        (Kind::Json, _) | (Kind::Jsonb, false) => json_string(&rendered).into_bytes(),
        (Kind::Jsonb, true) => [&[1u8][..], json_string(&rendered).as_bytes()].concat(),
        (Kind::Bytea, false) => hex(rendered.as_bytes()).into_bytes(),
        _ => rendered.into_bytes(),
    })
}

/// Detector findings replaced inside a text-like value (`Changed` holds the
/// new encoded value).
enum ScrubbedValue {
    Unchanged,
    Changed(Vec<u8>),
    Null,
}

fn scrub_value(v: &[u8], col: &Col, plan: &MaskPlan, key: &MaskKey) -> ScrubbedValue {
    let k = kind(col.type_oid);
    let (prefix, body) = if k == Kind::Jsonb && col.binary {
        v.split_at_checked(1).unwrap_or((v, &[]))
    } else {
        (&[][..], v)
    };
    let Ok(text) = std::str::from_utf8(body) else {
        return ScrubbedValue::Unchanged;
    };
    let new = match detect::scrub(plan, text, key) {
        detect::Scrubbed::Unchanged => return ScrubbedValue::Unchanged,
        detect::Scrubbed::Null => return ScrubbedValue::Null,
        detect::Scrubbed::Changed(new) => new,
    };
    let new = if matches!(k, Kind::Json | Kind::Jsonb)
        && serde_json::from_str::<serde::de::IgnoredAny>(&new).is_err()
    {
        // A finding spanning JSON syntax: the value is replaced whole.
        json_string(REDACTED)
    } else {
        new
    };
    ScrubbedValue::Changed([prefix, new.as_bytes()].concat())
}

impl ResultMasker {
    fn front_is_catalog(&self) -> bool {
        // Only the session's first batch can be the catalog's.
        !self.catalog_seen && matches!(lock(&self.batches).front(), Some(Batch::Catalog))
    }

    /// The facts of the batch being answered (unknown = the worst case).
    fn batch_facts(&self) -> Vec<Arc<Facts>> {
        match lock(&self.batches).front() {
            Some(Batch::Statements(s)) => s.facts.clone(),
            _ => vec![Feed::unknown()],
        }
    }

    fn batch_reads_masked(&self) -> bool {
        let sens = Sens {
            plan: &self.plan,
            catalog: &self.catalog,
        };
        self.plan.has_columns() && self.batch_facts().iter().any(|f| f.reads_masked(&sens))
    }

    /// Sees one server message after authentication (after the first
    /// ReadyForQuery). Writes replacements to `out`.
    pub fn on_backend(
        &mut self,
        frame: &Frame<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Verdict, ProtocolError> {
        if self.front_is_catalog() {
            return Ok(self.catalog_message(frame));
        }
        match frame.tag {
            b'T' => {
                if let BackendMessage::RowDescription(fields) = BackendMessage::parse(frame)? {
                    let info: Vec<FieldInfo> = fields.iter().map(FieldInfo::from).collect();
                    if let Some(p) = self.with_stmts(|s| s.describes.pop_front()).flatten() {
                        if self.layouts.len() >= FACTS_CACHE {
                            self.layouts.clear();
                        }
                        self.layouts.insert(p.key(), info.clone());
                    }
                    self.layout = Some(self.plan_columns(&info));
                }
                Ok(Verdict::Forward)
            }
            b'n' => {
                self.with_stmts(|s| s.describes.pop_front());
                Ok(Verdict::Forward)
            }
            b'D' => {
                if self.layout.is_none() {
                    self.layout = self.layout_of_execute();
                }
                self.data_row(frame, out)
            }
            b'C' | b's' | b'I' => {
                // One Execute (or one statement of a simple Query) is done.
                self.with_stmts(|s| s.executes.pop_front());
                self.layout = None;
                Ok(Verdict::Forward)
            }
            b'H' => {
                if let BackendMessage::CopyOutResponse(c) = BackendMessage::parse(frame)? {
                    self.copy = Some(CopyState {
                        masked: self.batch_reads_masked(),
                        binary: c.format == 1,
                    });
                }
                Ok(Verdict::Forward)
            }
            b'd' => self.copy_data(frame, out),
            b'E' => {
                // The server skips the rest of the batch up to Sync.
                self.with_stmts(|s| {
                    s.describes.clear();
                    s.executes.clear();
                });
                self.layout = None;
                self.server_message(frame, out)
            }
            b'N' => self.server_message(frame, out),
            b'A' => self.notification(frame, out),
            b'c' => {
                self.copy = None;
                Ok(Verdict::Forward)
            }
            b'Z' => {
                lock(&self.batches).pop_front();
                self.layout = None;
                self.copy = None;
                Ok(Verdict::Forward)
            }
            _ => Ok(Verdict::Forward),
        }
    }

    fn catalog_message(&mut self, frame: &Frame<'_>) -> Verdict {
        match frame.tag {
            b'D' => {
                if let Ok(BackendMessage::DataRow(v)) = BackendMessage::parse(frame) {
                    let vals: Vec<Option<&[u8]>> = v.iter().collect();
                    self.building.row(&vals);
                } else {
                    self.building.fail();
                }
            }
            b'E' => self.building.fail(),
            b'Z' => {
                let b = std::mem::take(&mut self.building);
                self.catalog = b.finish(&self.plan);
                if !self.catalog.loaded {
                    warn!("masking: the catalog could not be read; masking by column names");
                }
                lock(&self.batches).pop_front();
                self.catalog_seen = true;
            }
            b'T' | b'C' | b'N' | b'I' => {}
            // Asynchronous messages (ParameterStatus, NotificationResponse) are the client's.
            _ => return Verdict::Forward,
        }
        Verdict::Consumed
    }

    fn with_stmts<R>(&self, f: impl FnOnce(&mut Stmts) -> R) -> Option<R> {
        match lock(&self.batches).front_mut() {
            Some(Batch::Statements(s)) => Some(f(s)),
            _ => None,
        }
    }

    /// The layout for rows of an Execute without a Describe in its batch:
    /// the statement's remembered RowDescription with the Bind's formats.
    fn layout_of_execute(&self) -> Option<Vec<Col>> {
        let exec = self.with_stmts(|s| s.executes.front().cloned())??;
        let mut info = self.layouts.get(&exec.statement.key())?.clone();
        match exec.formats.as_slice() {
            [] => info.iter_mut().for_each(|f| f.format = 0),
            [one] => info.iter_mut().for_each(|f| f.format = *one),
            many if many.len() == info.len() => {
                info.iter_mut().zip(many).for_each(|(f, m)| f.format = *m)
            }
            _ => return None,
        }
        Some(self.plan_columns(&info))
    }

    fn plan_columns(&self, fields: &[FieldInfo]) -> Vec<Col> {
        let n = fields.len();
        let facts = if self.plan.has_columns() {
            self.batch_facts()
        } else {
            Vec::new()
        };
        let sens = Sens {
            plan: &self.plan,
            catalog: &self.catalog,
        };
        let strongest = self.plan.strongest_column();
        let detectors = self.plan.has_detectors();
        fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let plain = f.table_oid != 0 && f.column > 0;
                let mask = if strongest.is_none() {
                    None
                } else if plain && self.catalog.knows(f.table_oid) {
                    self.catalog.masked(f.table_oid, f.column)
                } else {
                    let by_name = plain.then(|| self.plan.column_by_name(&f.name)).flatten();
                    let tainted = facts.iter().any(|x| x.column_tainted(i, n, &sens));
                    Treatment::stronger_of(by_name, tainted.then_some(strongest).flatten())
                };
                Col {
                    type_oid: f.type_oid,
                    binary: f.format == 1,
                    mask,
                    detect: detectors
                        && matches!(kind(f.type_oid), Kind::Text | Kind::Json | Kind::Jsonb),
                }
            })
            .collect()
    }

    fn data_row(&mut self, frame: &Frame<'_>, out: &mut Vec<u8>) -> Result<Verdict, ProtocolError> {
        if let Some(layout) = &self.layout
            && !layout.iter().any(|c| c.mask.is_some() || c.detect)
        {
            return Ok(Verdict::Forward);
        }
        let BackendMessage::DataRow(values) = BackendMessage::parse(frame)? else {
            return Ok(Verdict::Forward);
        };
        let mut changed = false;
        let mut new: Vec<Option<Cow<'_, [u8]>>> = Vec::with_capacity(values.len());
        match &self.layout {
            Some(layout) if layout.len() == values.len() => {
                for (v, col) in values.iter().zip(layout) {
                    let nv = match (v, col.mask) {
                        (None, _) => None,
                        (Some(b), Some(t)) => {
                            changed = true;
                            mask_value(b, col, t, &self.key).map(Cow::Owned)
                        }
                        (Some(b), None) if col.detect => {
                            match scrub_value(b, col, &self.plan, &self.key) {
                                ScrubbedValue::Unchanged => Some(Cow::Borrowed(b)),
                                ScrubbedValue::Changed(x) => {
                                    changed = true;
                                    Some(Cow::Owned(x))
                                }
                                ScrubbedValue::Null => {
                                    changed = true;
                                    None
                                }
                            }
                        }
                        (Some(b), None) => Some(Cow::Borrowed(b)),
                    };
                    new.push(nv);
                }
            }
            _ => {
                // No usable RowDescription: formats and types are unknown, so
                // the only safe replacement is NULL.
                let all = self.batch_reads_masked();
                if all && !self.warned_unknown_layout {
                    self.warned_unknown_layout = true;
                    warn!("masking: rows without a known layout from a masked relation are nulled");
                }
                for v in values.iter() {
                    let hit = v.is_some()
                        && (all
                            || v.and_then(|b| std::str::from_utf8(b).ok())
                                .is_some_and(|t| !detect::findings(&self.plan, t).is_empty()));
                    changed |= hit;
                    new.push(if hit { None } else { v.map(Cow::Borrowed) });
                }
            }
        }
        if !changed {
            return Ok(Verdict::Forward);
        }
        build::data_row(out, new.iter().map(|v| v.as_deref()))?;
        Ok(Verdict::Consumed)
    }

    fn copy_data(
        &mut self,
        frame: &Frame<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Verdict, ProtocolError> {
        let Some(copy) = &self.copy else {
            return Ok(Verdict::Forward);
        };
        if copy.masked {
            return Ok(Verdict::Consumed);
        }
        if copy.binary || !self.plan.has_detectors() {
            return Ok(Verdict::Forward);
        }
        let Ok(text) = std::str::from_utf8(frame.body) else {
            return Ok(Verdict::Forward);
        };
        let Some(s) = detect::scrub_inline(&self.plan, text, &self.key) else {
            return Ok(Verdict::Forward);
        };
        build::copy_data(out, s.as_bytes())?;
        Ok(Verdict::Consumed)
    }

    /// `SELECT pg_notify('c', email) FROM customers` delivers the data to a
    /// session listening on `c`: after a statement reading a masked relation
    /// a payload is redacted whole; detectors scan every payload.
    fn notification(
        &mut self,
        frame: &Frame<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Verdict, ProtocolError> {
        let masked = self.batch_reads_masked();
        if !masked && !self.plan.has_detectors() {
            return Ok(Verdict::Forward);
        }
        let BackendMessage::NotificationResponse(n) = BackendMessage::parse(frame)? else {
            return Ok(Verdict::Forward);
        };
        let payload = if masked && !n.payload.is_empty() {
            REDACTED.to_string()
        } else {
            match detect::scrub_inline(&self.plan, n.payload, &self.key) {
                Some(p) => p,
                None => return Ok(Verdict::Forward),
            }
        };
        build::notification_response(out, n.pid, n.channel, &payload)?;
        Ok(Verdict::Consumed)
    }

    /// Errors and notices quote data (`invalid input syntax for type
    /// integer: "ada@example.com"`, `Key (email)=(...) already exists`).
    /// After a statement reading a masked relation, quoted text in the
    /// message is redacted and the detail, context and internal query are
    /// dropped; detectors scan what remains.
    fn server_message(
        &mut self,
        frame: &Frame<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Verdict, ProtocolError> {
        let masked = self.batch_reads_masked();
        let detectors = self.plan.has_detectors();
        if !masked && !detectors {
            return Ok(Verdict::Forward);
        }
        let (BackendMessage::ErrorResponse(f) | BackendMessage::NoticeResponse(f)) =
            BackendMessage::parse(frame)?
        else {
            return Ok(Verdict::Forward);
        };
        let mut changed = false;
        let mut fields: Vec<(u8, Cow<'_, str>)> = Vec::new();
        for (code, v) in f.iter() {
            if masked && matches!(code, b'D' | b'W' | b'q') {
                changed = true;
                continue;
            }
            let mut val = Cow::Borrowed(v);
            if masked && code == b'M' {
                let r = QUOTED.replace_all(v, "\"[redacted]\"");
                if r != v {
                    val = Cow::Owned(r.into_owned());
                    changed = true;
                }
            }
            if detectors
                && matches!(code, b'M' | b'D' | b'H' | b'W' | b'q')
                && let Some(x) = detect::scrub_inline(&self.plan, &val, &self.key)
            {
                val = Cow::Owned(x);
                changed = true;
            }
            fields.push((code, val));
        }
        if !changed {
            return Ok(Verdict::Forward);
        }
        build::fields_message(out, frame.tag, fields.iter().map(|(c, v)| (*c, v.as_ref())))?;
        Ok(Verdict::Consumed)
    }
}

#[cfg(test)]
mod tests;
