//! MySQL/MariaDB responses: one record per answered statement (`COM_QUERY`,
//! `COM_STMT_PREPARE`, `COM_STMT_EXECUTE`, `COM_STMT_FETCH`) with each result
//! set's column names, first rows and row count, or the OK (affected rows) or
//! ERR (error number and SQLSTATE), taken from the packets sent to the client,
//! i.e. after masking. A statement the proxy refused is recorded with the ERR
//! the client got ([`MysqlRecorder::on_injected`]).
//!
//! The classic protocol does not say what an answer is without the command it
//! answers (a prepare's OK looks like any OK; rows are text or binary), so the
//! client half queues what each forwarded command expects ([`Asked`]), as the
//! masker's does. Answers to other commands (ping, `USE`, statistics, field
//! lists) are followed only to stay in step, not recorded.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Instant,
};

use super::{MAX_COLUMNS, MAX_RESPONSE_BYTES, MAX_RESULTS, MAX_VALUE_CHARS, Recorder, clip};
use crate::{
    audit::record::{ResponseSummary, SqlError, SqlResult},
    protocol::mysql::{
        Answer as Ask, CLIENT_DEPRECATE_EOF, MAX_PAYLOAD, PrepareOk, SERVER_MORE_RESULTS_EXISTS,
        SERVER_STATUS_CURSOR_EXISTS, eof_status, is_eof, lenenc, lenenc_str,
    },
};

/// Column flag: an unsigned number.
const UNSIGNED_FLAG: u16 = 0x0020;

/// The queue both halves of a session share: the client half pushes what
/// each forwarded command expects, the recorder pops one per answer.
#[derive(Debug, Clone, Default)]
pub struct Asked(Arc<Mutex<VecDeque<Ask>>>);

impl Asked {
    /// A command was forwarded to the server.
    pub fn forwarded(&self, cmd: u8, payload: &[u8]) {
        if let Some(a) = Ask::to(cmd, payload) {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(a);
        }
    }

    fn next(&self) -> Option<Ask> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
    }
}

/// The recording halves of a session, if its responses are recorded; `caps`
/// are the capabilities both sides agreed on.
pub fn for_session(rec: Option<Recorder>, caps: u32) -> (Option<Asked>, Option<MysqlRecorder>) {
    match rec {
        None => (None, None),
        Some(rec) => {
            let asked = Asked::default();
            let r = MysqlRecorder::new(rec, asked.clone(), caps & CLIENT_DEPRECATE_EOF != 0);
            (Some(asked), Some(r))
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Waiting for the first packet of an answer.
    Idle,
    /// The first packet of the next result set of the same answer.
    Next,
    Columns {
        left: u64,
    },
    /// The EOF after the definitions (without CLIENT_DEPRECATE_EOF).
    ColumnsEof,
    Rows,
    /// Packets to pass over (a prepare's definitions).
    Skip {
        left: u64,
    },
    /// Definitions until EOF/ERR (COM_FIELD_LIST).
    UntilEof,
}

/// A column as needed to read binary rows.
#[derive(Debug, Clone, Copy)]
struct Col {
    ty: u8,
    flags: u16,
}

/// Watches the server-to-client packets of one session (command phase).
pub struct MysqlRecorder {
    rec: Recorder,
    asked: Asked,
    deprecate_eof: bool,
    state: State,
    ask: Ask,
    started: Option<Instant>,
    results: Vec<SqlResult>,
    current: SqlResult,
    cols: Vec<Col>,
    /// Names and layouts of executed statements, for COM_STMT_FETCH.
    layouts: HashMap<u32, (Vec<String>, Vec<Col>)>,
    /// Bytes of names and values recorded in this answer.
    bytes: usize,
    /// Results left out of this answer (beyond [`MAX_RESULTS`]).
    dropped: bool,
    /// Inside a payload longer than one packet (a row over 16 MiB).
    continuing: bool,
}

/// Bounds the per-session map (statement ids are reused by servers).
const MAX_STATEMENTS: usize = 4096;

impl MysqlRecorder {
    pub fn new(rec: Recorder, asked: Asked, deprecate_eof: bool) -> MysqlRecorder {
        MysqlRecorder {
            rec,
            asked,
            deprecate_eof,
            state: State::Idle,
            ask: Ask::Single,
            started: None,
            results: Vec::new(),
            current: SqlResult::default(),
            cols: Vec::new(),
            layouts: HashMap::new(),
            bytes: 0,
            dropped: false,
            continuing: false,
        }
    }

    /// An ERR packet (payload) the proxy wrote in place of a refused command:
    /// recorded at once, apart from the answers of the server.
    pub fn on_injected(&self, payload: &[u8]) {
        let r = SqlResult {
            error: Some(err(payload)),
            ..SqlResult::default()
        };
        self.rec.emit(Instant::now(), ResponseSummary::Sql(vec![r]));
    }

    /// Sees one packet's payload as it is written to the client (command
    /// phase). Anything it cannot read ends the answer's observation, never
    /// the session.
    pub fn on_packet(&mut self, p: &[u8]) {
        if self.continuing {
            self.continuing = p.len() >= MAX_PAYLOAD;
            return;
        }
        if matches!(self.state, State::Idle) {
            self.begin();
        }
        match self.state {
            State::Idle => {}
            State::Next => self.first(p),
            State::Columns { left } => {
                let Some((name, col)) = column(p) else {
                    return self.abandon();
                };
                if self.current.columns.len() < MAX_COLUMNS {
                    let (name, cut) = clip(&name, MAX_VALUE_CHARS);
                    self.bytes += name.len();
                    self.current.truncated |= cut;
                    self.current.columns.push(name);
                } else {
                    self.current.truncated = true;
                }
                self.cols.push(col);
                if left > 1 {
                    self.state = State::Columns { left: left - 1 };
                    return;
                }
                if let Ask::Execute(id) = self.ask {
                    if self.layouts.len() >= MAX_STATEMENTS {
                        self.layouts.clear();
                    }
                    self.layouts
                        .insert(id, (self.current.columns.clone(), self.cols.clone()));
                }
                self.state = if self.deprecate_eof {
                    State::Rows
                } else {
                    State::ColumnsEof
                };
            }
            State::ColumnsEof => {
                if matches!(self.ask, Ask::Execute(_))
                    && self.status(p) & SERVER_STATUS_CURSOR_EXISTS != 0
                {
                    self.current.tag = Some("cursor opened".into());
                    self.push();
                    self.finish();
                } else {
                    self.state = State::Rows;
                }
            }
            State::Rows => self.row(p),
            State::Skip { left } => {
                if left <= 1 {
                    self.finish();
                } else {
                    self.state = State::Skip { left: left - 1 };
                }
            }
            State::UntilEof => {
                if p.first() == Some(&0xff) || is_eof(p) {
                    self.finish();
                }
            }
        }
    }

    fn begin(&mut self) {
        // An answer nobody asked for cannot come from a well-behaved server;
        // read as a query's, it keeps the recorder in step with most.
        self.ask = self.asked.next().unwrap_or(Ask::Query);
        self.started = Some(Instant::now());
        self.current = SqlResult::default();
        self.cols.clear();
        self.state = State::Next;
        if let Ask::Fetch(id) = self.ask {
            if let Some((names, cols)) = self.layouts.get(&id) {
                self.current.columns = names.clone();
                self.cols = cols.clone();
            }
            self.state = State::Rows;
        }
    }

    /// The first packet of an answer or of its next result set.
    fn first(&mut self, p: &[u8]) {
        match (self.ask, p.first()) {
            (Ask::Single, _) => self.abandon(),
            (Ask::FieldList, first) => {
                self.state = State::UntilEof;
                if first == Some(&0xff) || is_eof(p) {
                    self.abandon();
                }
            }
            (_, Some(0xff)) => {
                self.current.error = Some(err(p));
                self.push();
                self.finish();
            }
            (Ask::Prepare, Some(0x00)) => {
                let Some(ok) = PrepareOk::parse(p) else {
                    return self.abandon();
                };
                self.current.tag = Some(format!(
                    "prepared statement {}: {} columns, {} parameters",
                    ok.id, ok.columns, ok.params
                ));
                self.push();
                let left = ok.definitions(self.deprecate_eof);
                if left == 0 {
                    self.finish();
                } else {
                    self.state = State::Skip { left };
                }
            }
            (_, Some(0x00)) => {
                let (tag, status) = ok(p);
                self.current.tag = Some(tag);
                self.push();
                self.next_or_finish(status);
            }
            // LOCAL INFILE: the client sends the file, then the server's OK or
            // ERR is this answer's end.
            (_, Some(0xfb)) => {}
            _ => match lenenc(p) {
                Some((n, _)) if n > 0 => {
                    self.current = SqlResult::default();
                    self.cols.clear();
                    self.state = State::Columns { left: n };
                }
                _ => self.abandon(),
            },
        }
    }

    fn row(&mut self, p: &[u8]) {
        if p.first() == Some(&0xff) {
            self.current.error = Some(err(p));
            self.push();
            return self.finish();
        }
        if is_eof(p) {
            let status = self.status(p);
            let n = self.current.row_count;
            self.current.tag = Some(format!("{n} rows in set"));
            self.push();
            return self.next_or_finish(status);
        }
        let r = &mut self.current;
        r.row_count += 1;
        if p.len() >= MAX_PAYLOAD {
            // Its value runs on in the next packets: counted, not recorded.
            self.continuing = true;
            r.truncated = true;
            return;
        }
        if r.rows.len() >= self.rec.rows || self.bytes >= MAX_RESPONSE_BYTES {
            // Counted only: no allocation for rows that are not recorded.
            r.truncated |= self.rec.rows > 0;
            return;
        }
        let binary = matches!(self.ask, Ask::Execute(_) | Ask::Fetch(_));
        let values = if binary {
            binary_row(p, &self.cols)
        } else {
            text_row(p, self.cols.len())
        };
        let Some(values) = values else {
            r.truncated = true;
            return;
        };
        let mut row = Vec::with_capacity(values.len().min(MAX_COLUMNS));
        for v in values.into_iter().take(MAX_COLUMNS) {
            row.push(v.map(|(s, cut)| {
                r.truncated |= cut;
                self.bytes += s.len();
                s
            }));
        }
        r.truncated |= self.cols.len() > MAX_COLUMNS;
        r.rows.push(row);
    }

    /// Status flags of an OK (0x00, or 0xFE with CLIENT_DEPRECATE_EOF) or EOF packet.
    fn status(&self, p: &[u8]) -> u16 {
        eof_status(p, self.deprecate_eof)
    }

    fn next_or_finish(&mut self, status: u16) {
        if status & SERVER_MORE_RESULTS_EXISTS != 0 {
            self.current = SqlResult::default();
            self.cols.clear();
            self.state = State::Next;
        } else {
            self.finish();
        }
    }

    fn push(&mut self) {
        let r = std::mem::take(&mut self.current);
        if self.results.len() < MAX_RESULTS {
            self.results.push(r);
        } else {
            self.dropped = true;
        }
    }

    /// The answer is complete: one record of its results, if any.
    fn finish(&mut self) {
        let started = self.started.take().unwrap_or_else(Instant::now);
        let mut results = std::mem::take(&mut self.results);
        if !results.is_empty() {
            if self.dropped
                && let Some(last) = results.last_mut()
            {
                last.truncated = true;
            }
            self.rec.emit(started, ResponseSummary::Sql(results));
        }
        self.current = SqlResult::default();
        self.bytes = 0;
        self.dropped = false;
        self.state = State::Idle;
    }

    /// An answer that is not recorded, or cannot be read: what was gathered
    /// goes, and the next packet starts the next answer.
    fn abandon(&mut self) {
        if !self.current.columns.is_empty() {
            self.current.truncated = true;
            self.push();
        }
        self.finish();
    }
}

/// An ERR packet's `errno/SQLSTATE` and message.
fn err(p: &[u8]) -> SqlError {
    let code = p.get(1..3).map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
    let (state, msg) = match p.get(3) {
        Some(b'#') => (
            String::from_utf8_lossy(p.get(4..9).unwrap_or_default()).into_owned(),
            p.get(9..).unwrap_or_default(),
        ),
        _ => ("HY000".to_string(), p.get(3..).unwrap_or_default()),
    };
    SqlError {
        code: format!("{code}/{state}"),
        message: clip(&String::from_utf8_lossy(msg), MAX_VALUE_CHARS).0,
    }
}

/// An OK packet's summary and status flags.
fn ok(p: &[u8]) -> (String, u16) {
    let mut at = 1;
    let mut ints = [0u64; 2];
    for v in &mut ints {
        match p.get(at..).and_then(lenenc) {
            Some((n, used)) => {
                *v = n;
                at += used;
            }
            None => return ("OK".into(), 0),
        }
    }
    let u16_at = |i: usize| {
        p.get(i..i + 2)
            .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]))
    };
    let (status, warnings) = (u16_at(at), u16_at(at + 2));
    let mut s = format!("OK, {} rows affected", ints[0]);
    if ints[1] != 0 {
        s.push_str(&format!(", last insert id {}", ints[1]));
    }
    if warnings != 0 {
        s.push_str(&format!(", {warnings} warnings"));
    }
    (s, status)
}

/// A column definition's name and type (protocol 4.1; the fixed fields are
/// the last 12 bytes, whatever MariaDB's extended metadata put before them).
fn column(p: &[u8]) -> Option<(String, Col)> {
    let mut at = 0;
    for _ in 0..4 {
        lenenc_str(p, &mut at)?;
    }
    let name = String::from_utf8_lossy(lenenc_str(p, &mut at)?).into_owned();
    let fixed = p.len().checked_sub(12)?;
    if fixed < at || p.get(fixed - 1) != Some(&0x0c) {
        return None;
    }
    Some((
        name,
        Col {
            ty: p[fixed + 6],
            flags: u16::from_le_bytes([p[fixed + 7], p[fixed + 8]]),
        },
    ))
}

type Values = Vec<Option<(String, bool)>>;

/// A text-protocol row: every value a length-encoded string or NULL (0xFB).
fn text_row(p: &[u8], n: usize) -> Option<Values> {
    let mut out = Vec::with_capacity(n);
    let mut at = 0;
    while at < p.len() {
        if p[at] == 0xfb {
            out.push(None);
            at += 1;
        } else {
            out.push(Some(super::render_value(lenenc_str(p, &mut at)?)));
        }
    }
    (out.len() == n).then_some(out)
}

/// A binary-protocol row (COM_STMT_EXECUTE / FETCH), values rendered as the
/// text protocol would show them.
fn binary_row(p: &[u8], cols: &[Col]) -> Option<Values> {
    let bitmap_len = (cols.len() + 7 + 2) / 8;
    if p.first() != Some(&0x00) {
        return None;
    }
    let bitmap = p.get(1..1 + bitmap_len)?;
    let mut at = 1 + bitmap_len;
    let mut out = Vec::with_capacity(cols.len());
    for (i, col) in cols.iter().enumerate() {
        if bitmap[(i + 2) / 8] & (1 << ((i + 2) % 8)) != 0 {
            out.push(None);
            continue;
        }
        let b = p.get(at..)?;
        let unsigned = col.flags & UNSIGNED_FLAG != 0;
        let fixed = |n: usize| -> Option<[u8; 8]> {
            let mut v = [0u8; 8];
            v[..n].copy_from_slice(b.get(..n)?);
            Some(v)
        };
        let (text, used) = match col.ty {
            1 => {
                let v = fixed(1)?;
                (int(v, 1, unsigned), 1)
            }
            2 | 13 => (int(fixed(2)?, 2, unsigned), 2),
            3 | 9 => (int(fixed(4)?, 4, unsigned), 4),
            8 => (int(fixed(8)?, 8, unsigned), 8),
            4 => {
                let v = fixed(4)?;
                (f32::from_le_bytes([v[0], v[1], v[2], v[3]]).to_string(), 4)
            }
            5 => (f64::from_le_bytes(fixed(8)?).to_string(), 8),
            6 => (String::new(), 0),
            7 | 10 | 12 => {
                let n = usize::from(*b.first()?);
                (datetime(b.get(1..1 + n)?, col.ty == 10), 1 + n)
            }
            11 => {
                let n = usize::from(*b.first()?);
                (time(b.get(1..1 + n)?), 1 + n)
            }
            _ => {
                let mut j = 0;
                let v = lenenc_str(b, &mut j)?;
                out.push(Some(super::render_value(v)));
                at += j;
                continue;
            }
        };
        at += used;
        out.push(Some((text, false)));
    }
    (at == p.len()).then_some(out)
}

/// A little-endian integer of `n` bytes as decimal.
fn int(v: [u8; 8], n: usize, unsigned: bool) -> String {
    let u = u64::from_le_bytes(v);
    if unsigned {
        return u.to_string();
    }
    let shift = 64 - 8 * n as u32;
    (((u << shift) as i64) >> shift).to_string()
}

/// DATE / DATETIME / TIMESTAMP of the binary protocol (0, 4, 7 or 11 bytes).
fn datetime(b: &[u8], date_only: bool) -> String {
    let g = |i: usize| b.get(i).copied().unwrap_or(0);
    let year = u16::from_le_bytes([g(0), g(1)]);
    let mut s = format!("{year:04}-{:02}-{:02}", g(2), g(3));
    if !date_only {
        s.push_str(&format!(" {:02}:{:02}:{:02}", g(4), g(5), g(6)));
        if b.len() >= 11 {
            let micros = u32::from_le_bytes([g(7), g(8), g(9), g(10)]);
            s.push_str(&format!(".{micros:06}"));
        }
    }
    s
}

/// TIME of the binary protocol (0, 8 or 12 bytes).
fn time(b: &[u8]) -> String {
    let g = |i: usize| b.get(i).copied().unwrap_or(0);
    let days = u32::from_le_bytes([g(1), g(2), g(3), g(4)]);
    let hours = u64::from(days) * 24 + u64::from(g(5));
    let mut s = format!(
        "{}{hours:02}:{:02}:{:02}",
        if g(0) == 1 { "-" } else { "" },
        g(6),
        g(7)
    );
    if b.len() >= 12 {
        let micros = u32::from_le_bytes([g(8), g(9), g(10), g(11)]);
        s.push_str(&format!(".{micros:06}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::{super::testing, *};
    use crate::protocol::mysql::{
        COM_QUERY, COM_STMT_CLOSE, COM_STMT_EXECUTE, COM_STMT_PREPARE, put_lenenc,
    };

    fn def(name: &str, ty: u8, flags: u16) -> Vec<u8> {
        let mut p = Vec::new();
        for s in ["def", "shop", "customers", "customers", name, name] {
            put_lenenc(&mut p, s.len());
            p.extend_from_slice(s.as_bytes());
        }
        p.push(0x0c);
        p.extend_from_slice(&[33, 0, 100, 0, 0, 0, ty]);
        p.extend_from_slice(&flags.to_le_bytes());
        p.extend_from_slice(&[0, 0, 0]);
        p
    }

    fn text(values: &[Option<&str>]) -> Vec<u8> {
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

    const EOF: &[u8] = &[0xfe, 0, 0, 2, 0];

    async fn recorded(f: impl FnOnce(&mut MysqlRecorder, &Asked)) -> Vec<Vec<SqlResult>> {
        recorded_with(0, f).await
    }

    async fn recorded_with(
        caps: u32,
        f: impl FnOnce(&mut MysqlRecorder, &Asked),
    ) -> Vec<Vec<SqlResult>> {
        let (_dir, responses) = testing::record(3, 2, |rec| {
            let (asked, r) = for_session(Some(rec), caps);
            let (asked, mut r) = (asked.unwrap(), r.unwrap());
            f(&mut r, &asked);
        })
        .await;
        testing::sql(responses)
    }

    #[tokio::test]
    async fn text_results_oks_errors_and_denials_one_record_per_statement() {
        let got = recorded(|r, asked| {
            // SELECT id, email: 3 rows, 2 recorded (as sent: masked).
            asked.forwarded(COM_QUERY, b"\x03SELECT id, email FROM customers");
            r.on_packet(&[2]);
            r.on_packet(&def("id", 3, 0));
            r.on_packet(&def("email", 253, 0));
            r.on_packet(EOF);
            r.on_packet(&text(&[Some("1"), Some("[redacted]")]));
            r.on_packet(&text(&[Some("2"), None]));
            r.on_packet(&text(&[Some("3"), Some("[redacted]")]));
            r.on_packet(EOF);
            // A ping's OK is followed, not recorded.
            asked.forwarded(0x0e, b"\x0e");
            r.on_packet(&[0, 0, 0, 2, 0, 0, 0]);
            // UPDATE: OK with 2 affected rows and a warning.
            asked.forwarded(COM_QUERY, b"\x03UPDATE customers SET name = 'x'");
            r.on_packet(&[0, 2, 0, 2, 0, 1, 0]);
            // A refused statement: the proxy's own ERR.
            let mut e = vec![0xff, 0x76, 0x04, b'#'];
            e.extend_from_slice(b"42000interceptor: statement denied");
            r.on_injected(&e);
            // A server error.
            asked.forwarded(COM_QUERY, b"\x03SELECT * FROM nope");
            let mut e = vec![0xff, 0x7a, 0x04, b'#'];
            e.extend_from_slice(b"42S02Table 'shop.nope' doesn't exist");
            r.on_packet(&e);
        })
        .await;
        assert_eq!(got.len(), 4, "{got:?}");
        let select = &got[0][0];
        assert_eq!(select.columns, ["id", "email"]);
        assert_eq!(select.row_count, 3);
        assert_eq!(
            select.rows,
            [
                vec![Some("1".to_string()), Some("[redacted]".to_string())],
                vec![Some("2".to_string()), None]
            ]
        );
        assert!(select.truncated);
        assert_eq!(select.tag.as_deref(), Some("3 rows in set"));
        assert_eq!(
            got[1][0].tag.as_deref(),
            Some("OK, 2 rows affected, 1 warnings")
        );
        let denied = got[2][0].error.as_ref().unwrap();
        assert_eq!(
            (denied.code.as_str(), denied.message.as_str()),
            ("1142/42000", "interceptor: statement denied")
        );
        let e = got[3][0].error.as_ref().unwrap();
        assert_eq!(e.code, "1146/42S02");
        assert_eq!(e.message, "Table 'shop.nope' doesn't exist");
    }

    #[tokio::test]
    async fn prepared_statements_record_the_prepare_and_binary_rows() {
        let got = recorded(|r, asked| {
            asked.forwarded(
                COM_STMT_PREPARE,
                b"\x16SELECT id, total, at FROM o WHERE id > ?",
            );
            // id 7, 3 columns, 1 parameter; then 1 param def + EOF, 3 defs + EOF.
            r.on_packet(&[0, 7, 0, 0, 0, 3, 0, 1, 0, 0, 0, 0]);
            for _ in 0..6 {
                r.on_packet(EOF);
            }
            asked.forwarded(
                COM_STMT_EXECUTE,
                &[COM_STMT_EXECUTE, 7, 0, 0, 0, 0, 1, 0, 0, 0],
            );
            r.on_packet(&[3]);
            r.on_packet(&def("id", 8, UNSIGNED_FLAG));
            r.on_packet(&def("total", 3, 0));
            r.on_packet(&def("at", 12, 0));
            r.on_packet(EOF);
            let mut row = vec![0x00, 0x00];
            row.extend_from_slice(&42u64.to_le_bytes());
            row.extend_from_slice(&(-5i32).to_le_bytes());
            row.extend_from_slice(&[7, 0xe9, 0x07, 6, 1, 12, 30, 5]);
            r.on_packet(&row);
            // `total` NULL (bit 1 + 2), `at` a bare date.
            let mut row = vec![0x00, 0b0000_1000];
            row.extend_from_slice(&1u64.to_le_bytes());
            row.extend_from_slice(&[4, 0xe9, 0x07, 6, 2]);
            r.on_packet(&row);
            r.on_packet(EOF);
            asked.forwarded(COM_STMT_CLOSE, &[COM_STMT_CLOSE, 7, 0, 0, 0]);
        })
        .await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            got[0][0].tag.as_deref(),
            Some("prepared statement 7: 3 columns, 1 parameters")
        );
        let x = &got[1][0];
        assert_eq!(x.columns, ["id", "total", "at"]);
        assert_eq!(
            x.rows,
            [
                vec![
                    Some("42".to_string()),
                    Some("-5".to_string()),
                    Some("2025-06-01 12:30:05".to_string())
                ],
                vec![
                    Some("1".to_string()),
                    None,
                    Some("2025-06-02 00:00:00".to_string())
                ]
            ]
        );
        assert_eq!(x.tag.as_deref(), Some("2 rows in set"));
    }

    /// With CLIENT_DEPRECATE_EOF no EOF follows the definitions and an OK
    /// (0xFE) ends the rows; a CALL's result sets and final OK are one answer.
    #[tokio::test]
    async fn deprecate_eof_and_several_result_sets_make_one_record() {
        let got = recorded_with(CLIENT_DEPRECATE_EOF, |r, asked| {
            asked.forwarded(COM_QUERY, b"\x03CALL report()");
            r.on_packet(&[1]);
            r.on_packet(&def("n", 8, 0));
            r.on_packet(&text(&[Some("7")]));
            // OK-as-EOF: 0 affected, 0 id, status MORE_RESULTS, 0 warnings.
            r.on_packet(&[0xfe, 0, 0, 0x08, 0, 0, 0]);
            r.on_packet(&[1]);
            r.on_packet(&def("name", 253, 0));
            r.on_packet(&text(&[Some("[redacted]")]));
            r.on_packet(&text(&[None]));
            r.on_packet(&[0xfe, 0, 0, 0x08, 0, 0, 0]);
            r.on_packet(&[0, 0, 0, 2, 0, 0, 0]);
            // The next statement starts a new record.
            asked.forwarded(COM_QUERY, b"\x03SELECT 1");
            r.on_packet(&[1]);
            r.on_packet(&def("1", 8, 0));
            r.on_packet(&text(&[Some("1")]));
            r.on_packet(&[0xfe, 0, 0, 2, 0, 0, 0]);
        })
        .await;
        assert_eq!(got.len(), 2, "{got:?}");
        let call = &got[0];
        assert_eq!(call.len(), 3, "{call:?}");
        assert_eq!(
            (call[0].columns.as_slice(), call[0].row_count),
            (&["n".to_string()][..], 1)
        );
        assert_eq!(
            call[1].rows,
            [vec![Some("[redacted]".to_string())], vec![None]]
        );
        assert_eq!(call[1].tag.as_deref(), Some("2 rows in set"));
        assert_eq!(call[2].tag.as_deref(), Some("OK, 0 rows affected"));
        assert_eq!(got[1][0].rows, [vec![Some("1".to_string())]]);
    }
}
