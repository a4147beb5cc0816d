//! Views and stored functions over masked columns in MySQL/MariaDB sessions.
//!
//! A view's column definitions on the wire name the view, not the base
//! column behind it (`org_table` = the view, `org_name` = the view's own
//! column name), and a TEMPTABLE view over another view names a base table
//! with the view's column name (`customers.contact`): column globs cannot see
//! through either, nor into a stored function that returns a masked value.
//! So, as a PostgreSQL session reads the catalog, a MySQL session with column
//! mask rules reads `information_schema.VIEWS` and `.ROUTINES` once, ahead
//! of the client's first command ([`QUERY`]), and judges each definition:
//! * a view (stored fully qualified, `*` expanded, so it is parsed) is masked
//!   whole (every column, strongest column strategy) when its definition
//!   mentions a masked column of a relation it reads, any column of a masked
//!   view, or calls a function below;
//! * a function *reads masked data* when its body (scanned for words, not
//!   parsed: [`source_words`]) names a masked relation and one of its masked
//!   columns, a masked view, or such a function; a statement calling it is
//!   tainted (its expression outputs are masked);
//!
//! to a fixed point (views of views, functions calling functions). A
//! definition that cannot be judged counts as masked (fail closed): empty or
//! NULL (the session's user lacks SHOW VIEW / SHOW CREATE ROUTINE),
//! unparsable, or past the size budget.
//!
//! Objects created after the session's first command are not known to it;
//! they are judged by the globs and by name, and detectors remain.

use std::collections::HashSet;

use super::super::{
    MaskPlan,
    lineage::{Facts, Sensitivity, source_reads_masked, source_words},
};
use super::Globs;
use crate::protocol::mysql::{COM_QUERY, MAX_PAYLOAD, is_eof, lenenc, lenenc_str};

/// The session's query (system schemas hold no user data). Every text is
/// converted to one character set, so the two branches never mix collations
/// (MySQL 8's information_schema columns differ in theirs).
pub const QUERY: &str = "SELECT 'v', CONVERT(TABLE_SCHEMA USING utf8mb4), CONVERT(TABLE_NAME USING utf8mb4), \
CONVERT(VIEW_DEFINITION USING utf8mb4) FROM information_schema.VIEWS \
WHERE TABLE_SCHEMA NOT IN ('mysql', 'sys', 'information_schema', 'performance_schema') \
UNION ALL SELECT 'f', CONVERT(ROUTINE_SCHEMA USING utf8mb4), CONVERT(ROUTINE_NAME USING utf8mb4), \
CONVERT(ROUTINE_DEFINITION USING utf8mb4) FROM information_schema.ROUTINES \
WHERE ROUTINE_TYPE = 'FUNCTION' AND ROUTINE_SCHEMA NOT IN ('mysql', 'sys', 'information_schema', 'performance_schema')";

/// Definition bytes kept per session; objects past it count as masked unread.
const BUDGET: usize = 16 << 20;

/// What a row of [`QUERY`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    View,
    Function,
}

/// One row of [`QUERY`]: `definition` is `None` when it could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    pub object: Object,
    pub schema: String,
    pub name: String,
    pub definition: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Count,
    Columns {
        left: u64,
    },
    ColumnsEof,
    Rows,
    /// Continuation packets of a row longer than one packet.
    Continued,
    Done,
}

/// Reads the server's answer to [`QUERY`], packet by packet.
#[derive(Debug)]
pub struct Reader {
    deprecate_eof: bool,
    state: State,
    defs: Vec<Definition>,
    bytes: usize,
    error: Option<String>,
}

impl Reader {
    pub fn new(deprecate_eof: bool) -> Reader {
        Reader {
            deprecate_eof,
            state: State::Count,
            defs: Vec::new(),
            bytes: 0,
            error: None,
        }
    }

    /// The query as a command payload (`COM_QUERY`).
    pub fn command() -> Vec<u8> {
        let mut p = Vec::with_capacity(1 + QUERY.len());
        p.push(COM_QUERY);
        p.extend_from_slice(QUERY.as_bytes());
        p
    }

    fn fail(&mut self, why: impl Into<String>) {
        self.error.get_or_insert_with(|| why.into());
    }

    /// One packet of the answer; true once the answer is complete (the
    /// packets after it belong to the client's commands).
    pub fn on_packet(&mut self, p: &[u8]) -> bool {
        match self.state {
            State::Count => match p.first() {
                Some(0xff) => {
                    self.fail(err_text(p));
                    self.state = State::Done;
                }
                Some(0x00) | None => {
                    self.fail("the server answered without a result set");
                    self.state = State::Done;
                }
                _ => match lenenc(p) {
                    Some((n, _)) if n > 0 => self.state = State::Columns { left: n },
                    _ => {
                        self.fail("malformed column count");
                        self.state = State::Done;
                    }
                },
            },
            State::Columns { left } => {
                self.state = match left {
                    0 | 1 if self.deprecate_eof => State::Rows,
                    0 | 1 => State::ColumnsEof,
                    n => State::Columns { left: n - 1 },
                }
            }
            State::ColumnsEof => self.state = State::Rows,
            State::Rows if p.first() == Some(&0xff) => {
                self.fail(err_text(p));
                self.state = State::Done;
            }
            State::Rows if is_eof(p) => self.state = State::Done,
            State::Rows if p.len() >= MAX_PAYLOAD => {
                // A definition of 16 MiB or more: past the budget anyway.
                self.fail("a definition longer than one packet");
                self.state = State::Continued;
            }
            State::Rows => self.row(p),
            State::Continued => {
                if p.len() < MAX_PAYLOAD {
                    self.state = State::Rows;
                }
            }
            State::Done => {}
        }
        self.state == State::Done
    }

    fn row(&mut self, p: &[u8]) {
        let mut at = 0;
        let value = |at: &mut usize| -> Option<Option<&[u8]>> {
            if p.get(*at) == Some(&0xfb) {
                *at += 1;
                return Some(None);
            }
            lenenc_str(p, at).map(Some)
        };
        let object = match value(&mut at) {
            Some(Some(b"v")) => Object::View,
            Some(Some(b"f")) => Object::Function,
            _ => {
                self.fail("malformed row");
                return;
            }
        };
        let (Some(Some(schema)), Some(Some(name)), Some(def)) =
            (value(&mut at), value(&mut at), value(&mut at))
        else {
            self.fail("malformed row");
            return;
        };
        let definition = def.filter(|d| !d.is_empty()).and_then(|d| {
            self.bytes = self.bytes.saturating_add(d.len());
            (self.bytes <= BUDGET).then(|| String::from_utf8_lossy(d).into_owned())
        });
        self.defs.push(Definition {
            object,
            schema: String::from_utf8_lossy(schema).into_owned(),
            name: String::from_utf8_lossy(name).into_owned(),
            definition,
        });
    }

    /// The definitions read, or why the answer could not be read (then no
    /// view or function is known: the session masks by the globs and names
    /// alone).
    pub fn finish(self) -> Result<Vec<Definition>, String> {
        match self.error {
            Some(e) => Err(e),
            None if self.state != State::Done => Err("the answer ended early".into()),
            None => Ok(self.defs),
        }
    }
}

/// An ERR packet's code and message.
fn err_text(p: &[u8]) -> String {
    let code = p.get(1..3).map_or(0, |c| u16::from_le_bytes([c[0], c[1]]));
    // `#` and the SQLSTATE precede the message.
    let msg = p.get(3..).unwrap_or_default();
    let msg = msg
        .strip_prefix(b"#")
        .map_or(msg, |m| m.get(5..).unwrap_or_default());
    format!("error {code}: {}", String::from_utf8_lossy(msg))
}

/// The views and functions of a session that carry masked data, by name
/// (lowercase, any schema: column definitions do not always say the view's
/// schema; functions are also kept as `schema.name`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Derived {
    views: HashSet<String>,
    functions: HashSet<String>,
    /// Views and functions found masked.
    masked: usize,
    /// Of those, the ones counted as masked because their definition could
    /// not be read.
    pub unread: usize,
}

impl Derived {
    /// Judges every definition of `defs` under `plan`.
    pub fn judge(plan: &MaskPlan, defs: &[Definition]) -> Derived {
        enum Read {
            View(Facts),
            Function(std::collections::BTreeSet<String>),
            Unread,
        }
        let read: Vec<Read> = defs
            .iter()
            .map(|d| match (&d.definition, d.object) {
                (None, _) => Read::Unread,
                (Some(text), Object::View) => Read::View(Facts::of_mysql(text)),
                (Some(text), Object::Function) => Read::Function(source_words(text)),
            })
            .collect();
        let mut out = Derived::default();
        let mut masked = vec![false; defs.len()];
        // Views of views, functions calling functions: repeat until nothing changes.
        loop {
            let mut changed = false;
            for (i, d) in defs.iter().enumerate() {
                if masked[i] {
                    continue;
                }
                let s = Globs {
                    plan,
                    derived: &out,
                };
                let hit = match &read[i] {
                    Read::Unread => true,
                    Read::View(f) => {
                        f.unparsable
                            || (f.inner_wildcard && f.reads_masked(&s))
                            || f.functions.iter().any(|n| s.function(n))
                            || f.idents.iter().any(|id| s.column(id, &f.relations))
                    }
                    // Naming a masked view: all its columns are masked.
                    Read::Function(words) => {
                        words.iter().any(|w| out.contains(w))
                            || source_reads_masked(words, &s, &|w| out.functions.contains(w))
                    }
                };
                if !hit {
                    continue;
                }
                masked[i] = true;
                changed = true;
                out.masked += 1;
                if matches!(read[i], Read::Unread) {
                    out.unread += 1;
                }
                let name = d.name.to_lowercase();
                match d.object {
                    Object::View => {
                        out.views.insert(name);
                    }
                    Object::Function => {
                        out.functions
                            .insert(format!("{}.{name}", d.schema.to_lowercase()));
                        out.functions.insert(name);
                    }
                }
            }
            if !changed {
                return out;
            }
        }
    }

    /// `name` (unqualified) is a masked view.
    pub fn contains(&self, name: &str) -> bool {
        !self.views.is_empty()
            && (self.views.contains(name) || self.views.contains(&name.to_lowercase()))
    }

    /// `name` (`f` or `schema.f`) is a function that reads masked data.
    pub fn reads_masked_function(&self, name: &str) -> bool {
        !self.functions.is_empty()
            && (self.functions.contains(name) || self.functions.contains(&name.to_lowercase()))
    }

    /// Masked views and functions.
    pub fn len(&self) -> usize {
        self.masked
    }

    pub fn is_empty(&self) -> bool {
        self.masked == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(yaml: &str) -> MaskPlan {
        MaskPlan::of_yaml(&[yaml])
    }

    fn view(name: &str, def: Option<&str>) -> Definition {
        Definition {
            object: Object::View,
            schema: "shop".into(),
            name: name.into(),
            definition: def.map(str::to_string),
        }
    }

    /// Definitions as MariaDB 10.11 stores them (read off a real server).
    #[test]
    fn views_over_masked_columns_are_masked_whole() {
        let p = plan("{columns: [customers.email], strategy: redact}");
        let views = [
            // Listed before the view it reads: the fixed point finds it.
            view(
                "v_t",
                Some(
                    "select `v_contacts`.`id` AS `id`,`v_contacts`.`contact` AS `contact` from `shop`.`v_contacts`",
                ),
            ),
            view(
                "v_contacts",
                Some(
                    "select `shop`.`customers`.`id` AS `id`,`shop`.`customers`.`email` AS `contact` from `shop`.`customers`",
                ),
            ),
            view(
                "v_names",
                Some(
                    "select `c`.`id` AS `id`,ucase(`c`.`name`) AS `n` from `shop`.`customers` `c`",
                ),
            ),
            view(
                "v_domains",
                Some(
                    "select substring_index(`c`.`email`,'@',-1) AS `d` from `shop`.`customers` `c`",
                ),
            ),
            view(
                "v_count",
                Some("select count(0) AS `n` from `shop`.`v_contacts`"),
            ),
            view(
                "V_Orders",
                Some("select `shop`.`orders`.`email` AS `email` from `shop`.`orders`"),
            ),
            view("v_hidden", None),
            view("v_odd", Some("select `a` AS `a` from (")),
        ];
        let m = Derived::judge(&p, &views);
        assert!(!m.reads_masked_function("v_contacts"));
        for (name, want) in [
            ("v_contacts", true),
            ("v_t", true),
            ("V_T", true),
            ("v_domains", true),
            ("v_names", false),
            ("v_count", false),
            ("v_orders", false),
            ("v_hidden", true),
            ("v_odd", true),
            ("customers", false),
        ] {
            assert_eq!(m.contains(name), want, "{name}");
        }
        assert_eq!(m.unread, 1);
        // Without column rules nothing is masked but what cannot be read.
        let detectors_only = plan("{detectors: [email]}");
        let m = Derived::judge(&detectors_only, &views);
        assert_eq!(m.len(), 2, "{m:?}");
    }

    /// Stored functions (bodies as MariaDB returns them in ROUTINE_DEFINITION)
    /// and the views calling them.
    #[test]
    fn functions_reading_masked_columns_are_found() {
        let p = plan("{columns: [customers.email], strategy: redact}");
        let function = |name: &str, body: Option<&str>| Definition {
            object: Object::Function,
            ..view(name, body)
        };
        let defs = [
            view(
                "v_contacts",
                Some("select `shop`.`customers`.`email` AS `contact` from `shop`.`customers`"),
            ),
            // Calls one found later: the fixed point finds both.
            function("contact_of", Some("RETURN CONCAT('<', email_of(id), '>')")),
            function(
                "email_of",
                Some(
                    "BEGIN DECLARE e TEXT; SELECT `Email` INTO e FROM shop.customers WHERE id = i; RETURN e; END",
                ),
            ),
            function(
                "name_of",
                Some("RETURN (SELECT name FROM customers WHERE id = i)"),
            ),
            // Dynamic SQL is scanned too: the words are there.
            function(
                "mail_dynamic",
                Some("BEGIN SET @q = 'SELECT email FROM customers'; RETURN 1; END"),
            ),
            // Mentions e-mail, but of another table.
            function(
                "order_mail",
                Some("RETURN (SELECT email FROM orders LIMIT 1)"),
            ),
            // Through a masked view (any of its columns).
            function(
                "via_view",
                Some("RETURN (SELECT contact FROM shop.v_contacts LIMIT 1)"),
            ),
            function("hidden", None),
            view(
                "v_calls",
                Some("select `shop`.`contact_of`(`o`.`id`) AS `c` from `shop`.`orders` `o`"),
            ),
            view(
                "v_plain",
                Some("select `shop`.`name_of`(`o`.`id`) AS `n` from `shop`.`orders` `o`"),
            ),
        ];
        let m = Derived::judge(&p, &defs);
        for (name, want) in [
            ("contact_of", true),
            ("shop.contact_of", true),
            ("EMAIL_OF", true),
            ("mail_dynamic", true),
            ("hidden", true),
            ("name_of", false),
            ("order_mail", false),
            ("via_view", true),
        ] {
            assert_eq!(m.reads_masked_function(name), want, "{name}");
        }
        assert!(m.contains("v_calls") && !m.contains("v_plain"));
        assert!(!m.contains("email_of"), "a function is not a view");
        assert_eq!((m.len(), m.unread), (7, 1));
    }

    /// Packets of a text result set, as the server sends them.
    fn answer(rows: &[[Option<&str>; 4]], deprecate_eof: bool) -> Vec<Vec<u8>> {
        let mut packets = vec![vec![4u8]];
        packets.extend((0..4).map(|i| format!("column definition {i}").into_bytes()));
        let eof = vec![0xfe, 0, 0, 0x02, 0];
        if !deprecate_eof {
            packets.push(eof.clone());
        }
        for r in rows {
            let mut p = Vec::new();
            for v in r {
                match v {
                    None => p.push(0xfb),
                    Some(s) => {
                        crate::protocol::mysql::put_lenenc(&mut p, s.len());
                        p.extend_from_slice(s.as_bytes());
                    }
                }
            }
            packets.push(p);
        }
        packets.push(if deprecate_eof {
            vec![0xfe, 0, 0, 0x02, 0, 0, 0]
        } else {
            eof
        });
        packets
    }

    #[test]
    fn the_answer_is_read_to_its_end() {
        for deprecate_eof in [false, true] {
            let packets = answer(
                &[
                    [Some("v"), Some("shop"), Some("v1"), Some("select 1 AS `a`")],
                    [Some("v"), Some("shop"), Some("v2"), None],
                    [Some("f"), Some("shop"), Some("v3"), Some("")],
                ],
                deprecate_eof,
            );
            let mut r = Reader::new(deprecate_eof);
            let (last, rest) = packets.split_last().unwrap();
            for p in rest {
                assert!(!r.on_packet(p), "ended early ({deprecate_eof})");
            }
            assert!(r.on_packet(last));
            let views = r.finish().unwrap();
            assert_eq!(
                views,
                [
                    Definition {
                        object: Object::View,
                        schema: "shop".into(),
                        name: "v1".into(),
                        definition: Some("select 1 AS `a`".into())
                    },
                    view("v2", None),
                    Definition {
                        object: Object::Function,
                        ..view("v3", None)
                    },
                ]
            );
        }
    }

    #[test]
    fn a_refused_or_malformed_answer_is_an_error() {
        let mut r = Reader::new(false);
        let mut err = vec![0xff, 0x7a, 0x04, b'#'];
        err.extend_from_slice(b"42000SELECT command denied");
        assert!(r.on_packet(&err));
        assert_eq!(r.finish().unwrap_err(), "error 1146: SELECT command denied");
        let mut r = Reader::new(false);
        assert!(r.on_packet(&[0x00, 0, 0, 2, 0, 0, 0]));
        assert!(r.finish().is_err());
        // A row with a missing value, then the end: the answer is consumed
        // to its end but not trusted.
        let mut packets = answer(&[[Some("v"), Some("shop"), Some("v"), Some("x")]], false);
        packets[6] = vec![4, b's', b'h'];
        let mut r = Reader::new(false);
        let done: Vec<bool> = packets.iter().map(|p| r.on_packet(p)).collect();
        assert_eq!(done.iter().filter(|d| **d).count(), 1);
        assert!(done.last().copied().unwrap());
        assert!(r.finish().is_err());
        // Cut short.
        let mut r = Reader::new(false);
        r.on_packet(&[3]);
        assert!(r.finish().is_err());
    }
}
