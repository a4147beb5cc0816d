//! MySQL/MariaDB client/server protocol, the parts a statement-deciding proxy
//! needs: packet framing (zero-copy), the capability flags of the initial
//! handshake and of the client's response (rewritten in place), command
//! bytes, and the ERR packet the proxy sends for a denied statement.

/// MARIADB_CLIENT_CACHE_METADATA (bit 36), in the first byte of MariaDB's
/// extended capabilities.
const MARIADB_CACHE_METADATA: u8 = 1 << 4;

/// A payload of exactly this length is continued in the next packet.
pub const MAX_PAYLOAD: usize = 0xFF_FFFF;

pub const CLIENT_COMPRESS: u32 = 1 << 5;
pub const CLIENT_PROTOCOL_41: u32 = 1 << 9;
pub const CLIENT_SSL: u32 = 1 << 11;
pub const CLIENT_MULTI_STATEMENTS: u32 = 1 << 16;
pub const CLIENT_OPTIONAL_RESULTSET_METADATA: u32 = 1 << 25;
pub const CLIENT_DEPRECATE_EOF: u32 = 1 << 24;
pub const CLIENT_QUERY_ATTRIBUTES: u32 = 1 << 27;

/// Capabilities the proxy never lets a session use: TLS (the pod-to-node hop
/// stays on the node), multi-statements (one statement per query is what the
/// classifier can vouch for), query attributes (they change the COM_QUERY
/// layout), compression (packets the proxy could not read) and optional
/// result-set metadata (rows without the column definitions masking needs).
pub const STRIPPED: u32 = CLIENT_SSL
    | CLIENT_MULTI_STATEMENTS
    | CLIENT_QUERY_ATTRIBUTES
    | CLIENT_COMPRESS
    | CLIENT_OPTIONAL_RESULTSET_METADATA;

pub const COM_QUIT: u8 = 0x01;
pub const COM_INIT_DB: u8 = 0x02;
pub const COM_QUERY: u8 = 0x03;
pub const COM_FIELD_LIST: u8 = 0x04;
pub const COM_STATISTICS: u8 = 0x09;
pub const COM_PING: u8 = 0x0e;
pub const COM_CHANGE_USER: u8 = 0x11;
pub const COM_STMT_PREPARE: u8 = 0x16;
pub const COM_STMT_EXECUTE: u8 = 0x17;
pub const COM_STMT_SEND_LONG_DATA: u8 = 0x18;
pub const COM_STMT_CLOSE: u8 = 0x19;
pub const COM_STMT_RESET: u8 = 0x1a;
pub const COM_SET_OPTION: u8 = 0x1b;
pub const COM_STMT_FETCH: u8 = 0x1c;
pub const COM_RESET_CONNECTION: u8 = 0x1f;

/// `ER_TABLEACCESS_DENIED_ERROR`, what the server itself says when a grant is
/// missing.
pub const ER_TABLEACCESS_DENIED: u16 = 1142;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MysqlError {
    #[error("handshake packet truncated")]
    Truncated,
    #[error("unsupported handshake protocol version {0}")]
    ProtocolVersion(u8),
    #[error("client does not speak protocol 4.1")]
    Old,
}

/// One packet: `len` (3 bytes LE) `seq` (1 byte) payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    pub seq: u8,
    pub payload: &'a [u8],
}

impl Packet<'_> {
    /// Bytes the whole packet occupies.
    pub fn wire_len(&self) -> usize {
        4 + self.payload.len()
    }

    /// Another packet continues this payload.
    pub fn continued(&self) -> bool {
        self.payload.len() == MAX_PAYLOAD
    }
}

/// The answer a command forwarded to the server gets: what the response
/// parsers (masking, recording) must expect next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Result set(s), OK or ERR.
    Query,
    /// Statement OK with parameter and column definitions, or ERR.
    Prepare,
    /// Binary result set(s) of the statement with this id, OK or ERR.
    Execute(u32),
    /// More rows of this statement's cursor.
    Fetch(u32),
    /// Column definitions until EOF (COM_FIELD_LIST).
    FieldList,
    /// One packet (OK, ERR, a string).
    Single,
}

/// The statement id of a `COM_STMT_EXECUTE`, `FETCH`, `CLOSE`, `RESET` or
/// `SEND_LONG_DATA` payload (`u32::MAX`, never a server's id, when cut short).
pub fn statement_id(payload: &[u8]) -> u32 {
    payload
        .get(1..5)
        .map_or(u32::MAX, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// A `COM_STMT_PREPARE`'s OK: id (4), columns (2), parameters (2), filler,
/// warnings (2) after the 0x00 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrepareOk {
    pub id: u32,
    pub columns: u16,
    pub params: u16,
}

impl PrepareOk {
    pub fn parse(p: &[u8]) -> Option<PrepareOk> {
        let u16_at = |i: usize| p.get(i..i + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let id = p.get(1..5)?;
        Some(PrepareOk {
            id: u32::from_le_bytes([id[0], id[1], id[2], id[3]]),
            columns: u16_at(5)?,
            params: u16_at(7)?,
        })
    }

    /// Packets that follow it: the parameter then column definitions, each
    /// group ended by an EOF unless CLIENT_DEPRECATE_EOF.
    pub fn definitions(&self, deprecate_eof: bool) -> u64 {
        let group = |n: u16| match n {
            0 => 0,
            n => u64::from(n) + u64::from(!deprecate_eof),
        };
        group(self.columns) + group(self.params)
    }
}

impl Answer {
    /// The answer to `cmd` (with its whole `payload`); `None` when the
    /// server does not answer it.
    pub fn to(cmd: u8, payload: &[u8]) -> Option<Answer> {
        let id = || statement_id(payload);
        Some(match cmd {
            COM_QUIT | COM_STMT_CLOSE | COM_STMT_SEND_LONG_DATA => return None,
            COM_QUERY => Answer::Query,
            COM_STMT_PREPARE => Answer::Prepare,
            COM_STMT_EXECUTE => Answer::Execute(id()),
            COM_STMT_FETCH => Answer::Fetch(id()),
            COM_FIELD_LIST => Answer::FieldList,
            _ => Answer::Single,
        })
    }
}

/// A length-encoded integer at the start of `b`: (value, bytes used).
pub fn lenenc(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let n = match first {
        0..=0xfa => return Some((u64::from(first), 1)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None,
    };
    let bytes = b.get(1..1 + n)?;
    let mut v = 0u64;
    for (i, x) in bytes.iter().enumerate() {
        v |= u64::from(*x) << (8 * i);
    }
    Some((v, 1 + n))
}

pub fn put_lenenc(out: &mut Vec<u8>, v: usize) {
    let v = v as u64;
    if v < 0xfb {
        out.push(v as u8);
    } else if v < 1 << 16 {
        out.push(0xfc);
        out.extend_from_slice(&v.to_le_bytes()[..2]);
    } else if v < 1 << 24 {
        out.push(0xfd);
        out.extend_from_slice(&v.to_le_bytes()[..3]);
    } else {
        out.push(0xfe);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// A length-encoded string at `*at`, advancing it.
pub fn lenenc_str<'a>(b: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let (n, used) = lenenc(b.get(*at..)?)?;
    let start = *at + used;
    let end = start.checked_add(usize::try_from(n).ok()?)?;
    let s = b.get(start..end)?;
    *at = end;
    Some(s)
}

/// The packet at the start of `buf`, or `None` while it is incomplete.
pub fn frame(buf: &[u8]) -> Option<Packet<'_>> {
    let h = buf.get(..4)?;
    let len = usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16;
    let payload = buf.get(4..4 + len)?;
    Some(Packet { seq: h[3], payload })
}

/// Clears `strip` in the server's initial handshake (protocol 10) payload;
/// returns the capabilities it announced.
pub fn rewrite_server_handshake(payload: &mut [u8], strip: u32) -> Result<u32, MysqlError> {
    let version = *payload.first().ok_or(MysqlError::Truncated)?;
    if version != 10 {
        return Err(MysqlError::ProtocolVersion(version));
    }
    // server version (NUL-terminated), connection id (4), scramble (8), filler (1)
    let nul = payload[1..]
        .iter()
        .position(|&b| b == 0)
        .ok_or(MysqlError::Truncated)?;
    let low = 1 + nul + 1 + 4 + 8 + 1;
    if payload.len() < low + 2 {
        return Err(MysqlError::Truncated);
    }
    let mut caps = u32::from(u16::from_le_bytes([payload[low], payload[low + 1]]));
    payload[low..low + 2].copy_from_slice(&((caps & !strip) as u16).to_le_bytes());
    // charset (1), status (2), then the upper capability bytes, if present.
    let high = low + 2 + 3;
    if payload.len() >= high + 2 {
        let upper = u16::from_le_bytes([payload[high], payload[high + 1]]);
        caps |= u32::from(upper) << 16;
        payload[high..high + 2].copy_from_slice(&(((caps & !strip) >> 16) as u16).to_le_bytes());
    }
    // MariaDB's extended capabilities (the last 4 of the 10 reserved bytes;
    // zero from MySQL): cached metadata would leave binary results without
    // the column definitions masking reads.
    let ext = high + 2 + 1 + 6;
    if let Some(b) = payload.get_mut(ext) {
        *b &= !MARIADB_CACHE_METADATA;
    }
    Ok(caps)
}

/// The client's first packet after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientHello {
    /// SSLRequest: capabilities with CLIENT_SSL and nothing else of note.
    SslRequest,
    /// HandshakeResponse41, capabilities rewritten.
    Response { caps: u32 },
}

/// Reads (and rewrites, clearing `strip`) the client's handshake response.
pub fn rewrite_client_response(payload: &mut [u8], strip: u32) -> Result<ClientHello, MysqlError> {
    let c = payload.get(..4).ok_or(MysqlError::Truncated)?;
    let caps = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    if caps & CLIENT_PROTOCOL_41 == 0 {
        return Err(MysqlError::Old);
    }
    // An SSLRequest is the 32-byte prefix of a response, sent alone.
    if caps & CLIENT_SSL != 0 && payload.len() == 32 {
        return Ok(ClientHello::SslRequest);
    }
    payload[..4].copy_from_slice(&(caps & !strip).to_le_bytes());
    Ok(ClientHello::Response { caps })
}

/// An ERR packet (protocol 4.1) with sequence id `seq`.
pub fn err_packet(seq: u8, code: u16, sqlstate: &str, message: &str) -> Vec<u8> {
    let mut payload = vec![0xff];
    payload.extend_from_slice(&code.to_le_bytes());
    payload.push(b'#');
    let mut state = sqlstate.as_bytes().to_vec();
    state.resize(5, b'0');
    payload.extend_from_slice(&state);
    payload.extend_from_slice(message.as_bytes());
    payload.truncate(MAX_PAYLOAD - 1);
    let len = payload.len();
    let mut out = vec![len as u8, (len >> 8) as u8, (len >> 16) as u8, seq];
    out.extend_from_slice(&payload);
    out
}

/// Status flag: another result set of the same answer follows.
pub const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
/// Status flag: an execute opened a cursor; its rows come with COM_STMT_FETCH.
pub const SERVER_STATUS_CURSOR_EXISTS: u16 = 0x0040;

/// An EOF packet (or, with CLIENT_DEPRECATE_EOF, the OK that replaces it): a
/// 0xFE header on a packet too short to be a row's first of many.
pub fn is_eof(p: &[u8]) -> bool {
    p.first() == Some(&0xfe) && p.len() < MAX_PAYLOAD
}

/// Status flags of an OK packet (header 0x00, or 0xFE in place of an EOF
/// with CLIENT_DEPRECATE_EOF): after affected rows and last insert id.
pub fn ok_status(p: &[u8]) -> u16 {
    let mut at = 1;
    for _ in 0..2 {
        match p.get(at..).and_then(lenenc) {
            Some((_, used)) => at += used,
            None => return 0,
        }
    }
    p.get(at..at + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

/// Status flags of an end-of-rows packet: an EOF (warnings, then status), or
/// the OK that replaces it with CLIENT_DEPRECATE_EOF.
pub fn eof_status(p: &[u8], deprecate_eof: bool) -> u16 {
    if p.first() == Some(&0xfe) && !deprecate_eof {
        return p.get(3..5).map_or(0, |s| u16::from_le_bytes([s[0], s[1]]));
    }
    ok_status(p)
}

/// How the server answered a `COM_STMT_PREPARE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrepareOutcome {
    /// Prepared under this statement id.
    Prepared(u32),
    /// Refused (ERR), or an answer that is not a prepare's OK.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Track {
    /// Between answers: the next packet starts the next one.
    Idle,
    /// The first packet of an answer or of its next result set.
    Next,
    Columns(u64),
    /// The EOF after column definitions (without CLIENT_DEPRECATE_EOF).
    ColumnsEof,
    Rows,
    /// A prepare's parameter and column definitions.
    Skip(u64),
    /// Definitions until EOF or ERR (COM_FIELD_LIST).
    UntilEof,
}

/// Follows the server's side of the command phase packet by packet, so that
/// each answer is matched with the command it answers: the classic protocol
/// does not say (a prepare's OK looks like any OK). Per packet it looks at
/// the header byte and length only; what it reports is the outcome of each
/// `COM_STMT_PREPARE`, whose statement id the client then executes by.
#[derive(Debug, Clone)]
pub struct AnswerTracker {
    deprecate_eof: bool,
    state: Track,
    ask: Answer,
    /// Inside a payload longer than one packet.
    continuing: bool,
}

impl AnswerTracker {
    pub fn new(deprecate_eof: bool) -> AnswerTracker {
        AnswerTracker {
            deprecate_eof,
            state: Track::Idle,
            ask: Answer::Single,
            continuing: false,
        }
    }

    /// Between answers: no packet of one is outstanding.
    pub fn idle(&self) -> bool {
        self.state == Track::Idle && !self.continuing
    }

    /// Follows one server packet (payload); `next` gives what the next
    /// forwarded command expects when this packet starts a new answer.
    /// Returns a prepare's outcome on the packet that tells it.
    pub fn on_packet(
        &mut self,
        p: &[u8],
        next: impl FnOnce() -> Option<Answer>,
    ) -> Option<PrepareOutcome> {
        if self.continuing {
            self.continuing = p.len() >= MAX_PAYLOAD;
            return None;
        }
        if self.state == Track::Idle {
            // An answer nobody asked for cannot come from a well-behaved
            // server; read as a query's, it keeps the tracker in step with most.
            self.ask = next().unwrap_or(Answer::Query);
            self.state = match self.ask {
                Answer::Fetch(_) => Track::Rows,
                _ => Track::Next,
            };
        }
        match self.state {
            Track::Idle => {}
            Track::Next => return self.first(p),
            Track::Columns(left) => {
                self.state = match left {
                    2.. => Track::Columns(left - 1),
                    _ if self.deprecate_eof => Track::Rows,
                    _ => Track::ColumnsEof,
                };
            }
            Track::ColumnsEof => {
                let cursor = matches!(self.ask, Answer::Execute(_))
                    && eof_status(p, self.deprecate_eof) & SERVER_STATUS_CURSOR_EXISTS != 0;
                self.state = if cursor { Track::Idle } else { Track::Rows };
            }
            Track::Rows => {
                if p.first() == Some(&0xff) {
                    self.state = Track::Idle;
                } else if is_eof(p) {
                    self.after(eof_status(p, self.deprecate_eof));
                } else {
                    self.continuing = p.len() >= MAX_PAYLOAD;
                }
            }
            Track::Skip(left) => {
                self.state = if left > 1 {
                    Track::Skip(left - 1)
                } else {
                    Track::Idle
                };
            }
            Track::UntilEof => {
                if p.first() == Some(&0xff) || is_eof(p) {
                    self.state = Track::Idle;
                }
            }
        }
        None
    }

    fn first(&mut self, p: &[u8]) -> Option<PrepareOutcome> {
        self.state = Track::Idle;
        match (self.ask, p.first()) {
            (Answer::Single, _) => {}
            (Answer::FieldList, _) => {
                if p.first() != Some(&0xff) && !is_eof(p) {
                    self.state = Track::UntilEof;
                }
            }
            (Answer::Prepare, Some(0x00)) => {
                let Some(ok) = PrepareOk::parse(p) else {
                    return Some(PrepareOutcome::Failed);
                };
                let left = ok.definitions(self.deprecate_eof);
                if left > 0 {
                    self.state = Track::Skip(left);
                }
                return Some(PrepareOutcome::Prepared(ok.id));
            }
            (Answer::Prepare, _) => return Some(PrepareOutcome::Failed),
            (_, Some(0xff)) => {}
            (_, Some(0x00)) => self.after(ok_status(p)),
            // LOCAL INFILE: the client sends the file, then the server's OK
            // or ERR is this answer's end.
            (_, Some(0xfb)) => self.state = Track::Next,
            _ => {
                if let Some((n @ 1.., _)) = lenenc(p) {
                    self.state = Track::Columns(n);
                }
            }
        }
        None
    }

    /// A result set or OK ended with these status flags.
    fn after(&mut self, status: u16) {
        self.state = if status & SERVER_MORE_RESULTS_EXISTS != 0 {
            Track::Next
        } else {
            Track::Idle
        };
    }
}

#[doc(hidden)]
pub mod fuzz {
    //! Fuzzing entry point shared by the cargo-fuzz target (`fuzz/`, target
    //! `mysql_codec`) and the in-tree randomized test.
    use super::*;

    /// Must never panic, whatever `data` is. Every packet is also read as a
    /// server answer (the tracker follows them, asked by a rotating set of
    /// commands) and walked as length-encoded strings.
    pub fn parse_all(data: &[u8]) {
        const ASKS: [u8; 6] = [
            COM_QUERY,
            COM_STMT_PREPARE,
            COM_STMT_EXECUTE,
            COM_STMT_FETCH,
            COM_FIELD_LIST,
            COM_PING,
        ];
        let deprecate_eof = data.first().is_some_and(|b| b & 1 == 1);
        let mut tracker = AnswerTracker::new(deprecate_eof);
        let mut asked = 0usize;
        let mut rest = data;
        while let Some(p) = frame(rest) {
            assert!(p.wire_len() > 0 && p.wire_len() <= rest.len());
            let mut copy = p.payload.to_vec();
            let _ = rewrite_server_handshake(&mut copy, STRIPPED);
            let mut copy = p.payload.to_vec();
            let _ = rewrite_client_response(&mut copy, STRIPPED);
            if let Some(ok) = PrepareOk::parse(p.payload) {
                let _ = ok.definitions(deprecate_eof);
            }
            let _ = (
                statement_id(p.payload),
                ok_status(p.payload),
                eof_status(p.payload, deprecate_eof),
                is_eof(p.payload),
            );
            let mut at = 0;
            while lenenc_str(p.payload, &mut at).is_some() {}
            assert!(at <= p.payload.len());
            let _ = tracker.on_packet(p.payload, || {
                asked += 1;
                Answer::to(ASKS[asked % ASKS.len()], p.payload)
            });
            rest = &rest[p.wire_len()..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A MariaDB-like initial handshake with SSL and multi-statements on.
    fn greeting() -> Vec<u8> {
        let mut p = vec![10];
        p.extend_from_slice(b"10.11.6-MariaDB\0");
        p.extend_from_slice(&[1, 0, 0, 0]);
        p.extend_from_slice(b"abcdefgh");
        p.push(0);
        let caps: u32 = CLIENT_PROTOCOL_41 | CLIENT_SSL | CLIENT_MULTI_STATEMENTS | 1;
        p.extend_from_slice(&(caps as u16).to_le_bytes());
        p.push(8);
        p.extend_from_slice(&[2, 0]);
        p.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
        p.push(21);
        p.extend_from_slice(&[0; 10]);
        p.extend_from_slice(b"ijklmnopqrst\0mysql_native_password\0");
        p
    }

    fn ok(status: u16) -> Vec<u8> {
        let mut p = vec![0x00, 0, 0];
        p.extend_from_slice(&status.to_le_bytes());
        p.extend_from_slice(&[0, 0]);
        p
    }

    fn eof(status: u16) -> Vec<u8> {
        let mut p = vec![0xfe, 0, 0];
        p.extend_from_slice(&status.to_le_bytes());
        p
    }

    fn prepare_ok(id: u32, cols: u16, params: u16) -> Vec<u8> {
        let mut p = vec![0x00];
        p.extend_from_slice(&id.to_le_bytes());
        p.extend_from_slice(&cols.to_le_bytes());
        p.extend_from_slice(&params.to_le_bytes());
        p.extend_from_slice(&[0, 0, 0]);
        p
    }

    /// Feeds `answers` (each: what was asked, its packets) and returns the
    /// prepare outcomes reported, checking the tracker is idle after each.
    fn follow(deprecate_eof: bool, answers: &[(Answer, Vec<Vec<u8>>)]) -> Vec<PrepareOutcome> {
        let mut t = AnswerTracker::new(deprecate_eof);
        let mut asked: std::collections::VecDeque<Answer> =
            answers.iter().map(|(a, _)| *a).collect();
        let mut seen = Vec::new();
        for (i, (a, packets)) in answers.iter().enumerate() {
            for p in packets {
                assert!(
                    !t.idle() || std::ptr::eq(p, &packets[0]),
                    "answer {i} ({a:?}) ended early"
                );
                seen.extend(t.on_packet(p, || asked.pop_front()));
            }
            assert!(t.idle(), "answer {i} ({a:?}) did not end");
        }
        seen
    }

    #[test]
    fn answers_are_matched_with_their_commands() {
        let col = b"\x03def\x04shop\x01t\x01t\x01a\x01a\x0c\x21\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00\x00".to_vec();
        let answers = vec![
            // A result set of 2 columns and 2 rows.
            (
                Answer::Query,
                vec![
                    vec![2],
                    col.clone(),
                    col.clone(),
                    eof(0),
                    b"\x011\x012".to_vec(),
                    b"\x013\xfb".to_vec(),
                    eof(0),
                ],
            ),
            // An OK that looks like a prepare's (12 bytes, header 0).
            (
                Answer::Query,
                vec![b"\x00\x01\x00\x02\x00\x00\x00\x41\x42\x43\x44\x45".to_vec()],
            ),
            // Two results: an OK with "more results", then a result set.
            (
                Answer::Query,
                vec![
                    ok(SERVER_MORE_RESULTS_EXISTS),
                    vec![1],
                    col.clone(),
                    eof(0),
                    b"\x01x".to_vec(),
                    eof(0),
                ],
            ),
            (
                Answer::Prepare,
                vec![
                    prepare_ok(7, 2, 1),
                    col.clone(),
                    eof(0),
                    col.clone(),
                    col.clone(),
                    eof(0),
                ],
            ),
            (Answer::Prepare, vec![prepare_ok(8, 0, 0)]),
            (Answer::Prepare, vec![b"\xff\x28\x04#42000nope".to_vec()]),
            // A binary result set, then an execute that opens a cursor.
            (
                Answer::Execute(7),
                vec![
                    vec![1],
                    col.clone(),
                    eof(0),
                    b"\x00\x00\x01\x02".to_vec(),
                    eof(0),
                ],
            ),
            (
                Answer::Execute(7),
                vec![vec![1], col.clone(), eof(SERVER_STATUS_CURSOR_EXISTS)],
            ),
            (Answer::Fetch(7), vec![b"\x00\x00\x01\x02".to_vec(), eof(0)]),
            (Answer::FieldList, vec![col.clone(), col.clone(), eof(0)]),
            (Answer::Single, vec![b"Uptime: 5  Threads: 1".to_vec()]),
            // LOCAL INFILE: the request, then (after the client's file) the OK.
            (Answer::Query, vec![b"\xfb/tmp/x".to_vec(), ok(0)]),
            (
                Answer::Prepare,
                vec![prepare_ok(9, 1, 0), col.clone(), eof(0)],
            ),
        ];
        assert_eq!(
            follow(false, &answers),
            [
                PrepareOutcome::Prepared(7),
                PrepareOutcome::Prepared(8),
                PrepareOutcome::Failed,
                PrepareOutcome::Prepared(9)
            ]
        );
        // With CLIENT_DEPRECATE_EOF: no EOF after definitions, an OK (0xFE)
        // ends the rows.
        let end = b"\xfe\x00\x00\x02\x00\x00\x00".to_vec();
        let answers = vec![
            (
                Answer::Query,
                vec![vec![1], col.clone(), b"\x011".to_vec(), end.clone()],
            ),
            (
                Answer::Prepare,
                vec![prepare_ok(3, 1, 2), col.clone(), col.clone(), col.clone()],
            ),
            (
                Answer::Execute(3),
                vec![vec![1], col.clone(), b"\x00\x00\x05".to_vec(), end],
            ),
        ];
        assert_eq!(follow(true, &answers), [PrepareOutcome::Prepared(3)]);
    }

    #[test]
    fn a_row_longer_than_a_packet_is_one_row() {
        let mut t = AnswerTracker::new(false);
        let mut asked = std::collections::VecDeque::from([Answer::Query, Answer::Prepare]);
        let big = vec![0xfe; MAX_PAYLOAD];
        for p in [vec![1], vec![0x0c; 20], eof(0), big.clone(), eof(0)] {
            assert_eq!(t.on_packet(&p, || asked.pop_front()), None);
        }
        // The short packet after the long one continues the row.
        assert!(!t.idle());
        assert_eq!(t.on_packet(&eof(0), || asked.pop_front()), None);
        assert!(t.idle());
        assert_eq!(
            t.on_packet(&prepare_ok(4, 0, 0), || asked.pop_front()),
            Some(PrepareOutcome::Prepared(4))
        );
    }

    #[test]
    fn handshake_capabilities_are_stripped() {
        let mut g = greeting();
        let caps = rewrite_server_handshake(&mut g, STRIPPED).unwrap();
        assert_ne!(caps & CLIENT_SSL, 0);
        let again = rewrite_server_handshake(&mut g.clone(), 0).unwrap();
        assert_eq!(again & STRIPPED, 0);
        assert_eq!(again & CLIENT_PROTOCOL_41, CLIENT_PROTOCOL_41);
        for cut in 0..20 {
            assert!(rewrite_server_handshake(&mut greeting()[..cut].to_vec(), STRIPPED).is_err());
        }
        assert_eq!(
            rewrite_server_handshake(&mut [9, 0], STRIPPED),
            Err(MysqlError::ProtocolVersion(9))
        );
    }

    #[test]
    fn client_responses() {
        let caps = CLIENT_PROTOCOL_41 | CLIENT_SSL | CLIENT_MULTI_STATEMENTS;
        let mut ssl = caps.to_le_bytes().to_vec();
        ssl.resize(32, 0);
        assert_eq!(
            rewrite_client_response(&mut ssl, STRIPPED),
            Ok(ClientHello::SslRequest)
        );
        let mut resp = (CLIENT_PROTOCOL_41 | CLIENT_MULTI_STATEMENTS)
            .to_le_bytes()
            .to_vec();
        resp.resize(40, 0);
        assert_eq!(
            rewrite_client_response(&mut resp, STRIPPED),
            Ok(ClientHello::Response {
                caps: CLIENT_PROTOCOL_41 | CLIENT_MULTI_STATEMENTS
            })
        );
        assert_eq!(
            u32::from_le_bytes(resp[..4].try_into().unwrap()),
            CLIENT_PROTOCOL_41
        );
        assert_eq!(
            rewrite_client_response(&mut [0; 40], STRIPPED),
            Err(MysqlError::Old)
        );
    }

    #[test]
    fn packets_and_errors() {
        let e = err_packet(1, ER_TABLEACCESS_DENIED, "42000", "no");
        assert_eq!(e, b"\x0b\0\0\x01\xff\x76\x04#42000no");
        let p = frame(&e).unwrap();
        assert_eq!((p.seq, p.wire_len()), (1, e.len()));
        for cut in 0..e.len() {
            assert!(frame(&e[..cut]).is_none());
        }
    }

    #[test]
    fn random_and_mutated_inputs_never_panic() {
        let g = greeting();
        let mut packet = vec![g.len() as u8, 0, 0, 0];
        packet.extend_from_slice(&g);
        let corpus: &[&[u8]] = &[&packet, b"\x05\0\0\0\x03SEL", b"\x01\0\0\0\x01"];
        crate::protocol::mutate::run(corpus, 3000, b"\0\xff\x0a", fuzz::parse_all);
    }
}
