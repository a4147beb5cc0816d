//! Views over masked columns in MySQL/MariaDB sessions.
//!
//! A view's column definitions on the wire name the view, not the base
//! column behind it (`org_table` = the view, `org_name` = the view's own
//! column name), and a TEMPTABLE view over another view names a base table
//! with the view's column name (`customers.contact`): column globs cannot see
//! through either. So, as a PostgreSQL session reads the catalog, a MySQL
//! session with column mask rules reads `information_schema.VIEWS` once,
//! ahead of the client's first command ([`QUERY`]), and judges each view's
//! definition, which the server stores fully qualified with `*` expanded:
//! a view is masked whole (every column, strongest column strategy) when its
//! definition mentions a masked column of a relation it reads, or any column
//! of a masked view (views of views, to a fixed point). A definition that
//! cannot be judged is masked whole too (fail closed): empty (the session's
//! user lacks SHOW VIEW), unparsable, or past the size budget.
//!
//! Views created after the session's first command are not known to it;
//! they are judged by the globs and by name, and detectors remain.

use std::collections::HashSet;

use super::super::{
    MaskPlan,
    lineage::{Facts, Sensitivity},
};
use super::Globs;
use crate::protocol::mysql::{COM_QUERY, MAX_PAYLOAD, is_eof, lenenc, lenenc_str};

/// The session's query (system schemas hold no user data).
pub const QUERY: &str = "SELECT TABLE_SCHEMA, TABLE_NAME, VIEW_DEFINITION FROM information_schema.VIEWS \
WHERE TABLE_SCHEMA NOT IN ('mysql', 'sys', 'information_schema', 'performance_schema')";

/// Definition bytes kept per session; views past it are masked unread.
const BUDGET: usize = 16 << 20;

/// One row of [`QUERY`]: `definition` is `None` when it could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewDef {
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
    views: Vec<ViewDef>,
    bytes: usize,
    error: Option<String>,
}

impl Reader {
    pub fn new(deprecate_eof: bool) -> Reader {
        Reader {
            deprecate_eof,
            state: State::Count,
            views: Vec::new(),
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
                self.fail("a view definition longer than one packet");
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
        self.views.push(ViewDef {
            schema: String::from_utf8_lossy(schema).into_owned(),
            name: String::from_utf8_lossy(name).into_owned(),
            definition,
        });
    }

    /// The views read, or why the answer could not be read (then no view
    /// is known: the session masks by the globs and names alone).
    pub fn finish(self) -> Result<Vec<ViewDef>, String> {
        match self.error {
            Some(e) => Err(e),
            None if self.state != State::Done => Err("the answer ended early".into()),
            None => Ok(self.views),
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

/// The views of a session that carry masked data, by name (lowercase, any
/// schema: column definitions do not always say the view's schema).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaskedViews {
    names: HashSet<String>,
    /// Views masked because their definition could not be judged.
    pub unread: usize,
}

impl MaskedViews {
    /// Judges every view of `views` under `plan`.
    pub fn judge(plan: &MaskPlan, views: &[ViewDef]) -> MaskedViews {
        let facts: Vec<Option<Facts>> = views
            .iter()
            .map(|v| v.definition.as_deref().map(Facts::of_mysql))
            .collect();
        let mut out = MaskedViews::default();
        let mut masked = vec![false; views.len()];
        // A view over a masked view is masked: repeat until nothing changes.
        loop {
            let mut changed = false;
            for (i, v) in views.iter().enumerate() {
                if masked[i] {
                    continue;
                }
                let hit = match &facts[i] {
                    None => true,
                    Some(f) => {
                        let s = Globs { plan, views: &out };
                        f.unparsable
                            || (f.inner_wildcard && f.reads_masked(&s))
                            || f.idents.iter().any(|id| s.column(id, &f.relations))
                    }
                };
                if hit {
                    masked[i] = true;
                    changed = true;
                    if facts[i].is_none() {
                        out.unread += 1;
                    }
                    out.names.insert(v.name.to_lowercase());
                }
            }
            if !changed {
                return out;
            }
        }
    }

    /// `name` (unqualified) is a masked view.
    pub fn contains(&self, name: &str) -> bool {
        !self.names.is_empty()
            && (self.names.contains(name) || self.names.contains(&name.to_lowercase()))
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masking::MaskSpec;

    fn plan(yaml: &str) -> MaskPlan {
        let spec: MaskSpec = serde_yaml::from_str(yaml).unwrap();
        MaskPlan {
            specs: vec![spec.compiled().unwrap()],
        }
    }

    fn view(name: &str, def: Option<&str>) -> ViewDef {
        ViewDef {
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
        let m = MaskedViews::judge(&p, &views);
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
        let m = MaskedViews::judge(&detectors_only, &views);
        assert_eq!(m.len(), 2, "{m:?}");
    }

    /// Packets of a text result set, as the server sends them.
    fn answer(rows: &[[Option<&str>; 3]], deprecate_eof: bool) -> Vec<Vec<u8>> {
        let mut packets = vec![vec![3u8]];
        packets.extend((0..3).map(|i| format!("column definition {i}").into_bytes()));
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
                    [Some("shop"), Some("v1"), Some("select 1 AS `a`")],
                    [Some("shop"), Some("v2"), None],
                    [Some("shop"), Some("v3"), Some("")],
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
                    ViewDef {
                        schema: "shop".into(),
                        name: "v1".into(),
                        definition: Some("select 1 AS `a`".into())
                    },
                    view("v2", None),
                    view("v3", None),
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
        let mut packets = answer(&[[Some("shop"), Some("v"), Some("x")]], false);
        packets[5] = vec![4, b's', b'h'];
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
