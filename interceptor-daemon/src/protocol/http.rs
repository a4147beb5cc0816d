//! HTTP/1.1 framing for a proxy that decides each request: request and
//! response heads (parsed by `httparse`, borrowed from the buffer), message
//! body framing (RFC 9112 §6) with an incremental scanner so bodies stream
//! through without being buffered, the normalised view of a request the
//! policy matches on, header redaction for logs, and the responses the proxy
//! itself sends.
//!
//! Request framing is strict where a lenient reading would let the proxy and
//! the server disagree about where a request ends (request smuggling):
//! `Transfer-Encoding` together with `Content-Length`, differing
//! `Content-Length` values, a transfer coding other than a final `chunked`,
//! more than one `Host`, or chunk lines without CRLF are all refused.

use std::fmt::Write as _;

/// Largest request or response head (request line/status line and headers).
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in one head.
pub const MAX_HEADERS: usize = 128;
/// Longest chunk-size line or trailer line.
const MAX_CHUNK_LINE: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("malformed head: {0}")]
    Head(httparse::Error),
    #[error("head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("invalid Content-Length")]
    BadContentLength,
    #[error("both Transfer-Encoding and Content-Length")]
    ConflictingFraming,
    #[error("unsupported Transfer-Encoding (the last coding of a request must be chunked)")]
    UnsupportedTransferEncoding,
    #[error("more than one Host header")]
    MultipleHosts,
    #[error("malformed chunked body: {0}")]
    BadChunk(&'static str),
}

/// How a message body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the server closes (responses only).
    UntilClose,
    /// The connection becomes an opaque tunnel (101, CONNECT 2xx).
    Tunnel,
}

/// A parsed request head borrowing from the buffer.
#[derive(Debug, Clone)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// The request target as sent (origin, absolute, authority or `*` form).
    pub target: &'a str,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: Vec<httparse::Header<'a>>,
    /// Bytes of the head, including the final empty line.
    pub len: usize,
    pub framing: Framing,
}

/// A parsed response head borrowing from the buffer.
#[derive(Debug, Clone)]
pub struct ResponseHead<'a> {
    pub status: u16,
    pub version: u8,
    pub headers: Vec<httparse::Header<'a>>,
    pub len: usize,
}

fn header<'h, 'a>(
    headers: &'h [httparse::Header<'a>],
    name: &'h str,
) -> impl Iterator<Item = &'a [u8]> + 'h {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// Comma-separated tokens of every `name` header, trimmed and lower-cased.
fn tokens(headers: &[httparse::Header<'_>], name: &str) -> Vec<String> {
    header(headers, name)
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|t| String::from_utf8_lossy(t).trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<u64>, HttpError> {
    let mut found: Option<u64> = None;
    for v in header(headers, "content-length") {
        // A list of identical values is tolerated (RFC 9112 §6.3), nothing else.
        for part in v.split(|&b| b == b',') {
            let s = std::str::from_utf8(part)
                .map_err(|_| HttpError::BadContentLength)?
                .trim();
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 18 {
                return Err(HttpError::BadContentLength);
            }
            let n: u64 = s.parse().map_err(|_| HttpError::BadContentLength)?;
            if found.is_some_and(|f| f != n) {
                return Err(HttpError::BadContentLength);
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// Parses the request head at the start of `buf`; `Ok(None)` while incomplete.
pub fn parse_request(buf: &[u8]) -> Result<Option<RequestHead<'_>>, HttpError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut storage);
    let len = match req.parse(buf).map_err(HttpError::Head)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial if buf.len() > MAX_HEAD => return Err(HttpError::HeadTooLarge),
        httparse::Status::Partial => return Ok(None),
    };
    if len > MAX_HEAD {
        return Err(HttpError::HeadTooLarge);
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HttpError::Head(httparse::Error::Token));
    };
    let headers = req.headers.to_vec();
    if header(&headers, "host").count() > 1 {
        return Err(HttpError::MultipleHosts);
    }
    let te = tokens(&headers, "transfer-encoding");
    let cl = content_length(&headers)?;
    let framing = if !te.is_empty() {
        if cl.is_some() {
            return Err(HttpError::ConflictingFraming);
        }
        if version == 0 || te.last().map(String::as_str) != Some("chunked") {
            return Err(HttpError::UnsupportedTransferEncoding);
        }
        Framing::Chunked
    } else {
        match cl {
            Some(0) | None => Framing::None,
            Some(n) => Framing::Length(n),
        }
    };
    Ok(Some(RequestHead {
        method,
        target,
        version,
        headers,
        len,
        framing,
    }))
}

impl RequestHead<'_> {
    /// `Expect: 100-continue`: the client waits before sending the body.
    pub fn expects_continue(&self) -> bool {
        tokens(&self.headers, "expect")
            .iter()
            .any(|t| t == "100-continue")
    }

    /// Whether the client keeps the connection open after this exchange.
    pub fn keep_alive(&self) -> bool {
        let conn = tokens(&self.headers, "connection");
        if self.version == 0 {
            conn.iter().any(|t| t == "keep-alive")
        } else {
            !conn.iter().any(|t| t == "close")
        }
    }

    /// The request may turn the connection into something else (WebSocket,
    /// CONNECT tunnel): what follows its response is not HTTP/1.1 any more.
    pub fn may_switch_protocols(&self) -> bool {
        self.method.eq_ignore_ascii_case("CONNECT")
            || header(&self.headers, "upgrade").next().is_some()
    }

    /// Host (without port, lower-case) and normalised path (without query)
    /// that the policy matches on.
    pub fn host_and_path(&self) -> (String, String) {
        let host_header = header(&self.headers, "host")
            .next()
            .map(|v| String::from_utf8_lossy(v).into_owned());
        let t = self.target;
        if self.method.eq_ignore_ascii_case("CONNECT") {
            return (strip_port(t), String::new());
        }
        if t == "*" {
            return (strip_port(host_header.as_deref().unwrap_or("")), "*".into());
        }
        // absolute-form: scheme://authority/path; its authority wins over Host.
        if let Some(rest) = t
            .split_once("://")
            .map(|(_, r)| r)
            .filter(|_| !t.starts_with('/'))
        {
            let (authority, path) = match rest.find(['/', '?', '#']) {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            let authority = authority.rsplit('@').next().unwrap_or(authority);
            return (strip_port(authority), normalize_path(path));
        }
        (
            strip_port(host_header.as_deref().unwrap_or("")),
            normalize_path(t),
        )
    }
}

fn strip_port(authority: &str) -> String {
    let a = authority.trim();
    let host = if a.starts_with('[') {
        a.split_inclusive(']').next().unwrap_or(a)
    } else {
        a.rsplit_once(':').map_or(a, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                a
            }
        })
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The path the server will act on: query and fragment dropped,
/// percent-encoding decoded (except `%2F`, which is not a separator to most
/// servers), dot segments resolved, so `/v1/%6Frders/../orders` is
/// `/v1/orders`.
pub fn normalize_path(target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|&b| (b as char).to_digit(16)),
                bytes.get(i + 2).and_then(|&b| (b as char).to_digit(16)),
            )
        {
            let b = (h * 16 + l) as u8;
            if b == b'/' {
                decoded.extend_from_slice(b"%2F");
            } else {
                decoded.push(b);
            }
            i += 3;
            continue;
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    let decoded = String::from_utf8_lossy(&decoded);
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (n, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if n == last {
                    out.push("");
                }
            }
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
                if n == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let joined = out.join("/");
    if joined.starts_with('/') {
        joined
    } else {
        format!("/{joined}")
    }
}

/// Parses the response head at the start of `buf`; `Ok(None)` while incomplete.
pub fn parse_response(buf: &[u8]) -> Result<Option<ResponseHead<'_>>, HttpError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut storage);
    let len = match resp.parse(buf).map_err(HttpError::Head)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial if buf.len() > MAX_HEAD => return Err(HttpError::HeadTooLarge),
        httparse::Status::Partial => return Ok(None),
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Err(HttpError::Head(httparse::Error::Status));
    };
    Ok(Some(ResponseHead {
        status,
        version,
        headers: resp.headers.to_vec(),
        len,
    }))
}

impl ResponseHead<'_> {
    /// How this response's body ends, given the request it answers.
    pub fn framing(&self, request_method: &str) -> Result<Framing, HttpError> {
        let connect = request_method.eq_ignore_ascii_case("CONNECT");
        if self.status == 101 || (connect && (200..300).contains(&self.status)) {
            return Ok(Framing::Tunnel);
        }
        if (100..200).contains(&self.status)
            || self.status == 204
            || self.status == 304
            || request_method.eq_ignore_ascii_case("HEAD")
        {
            return Ok(Framing::None);
        }
        let te = tokens(&self.headers, "transfer-encoding");
        if !te.is_empty() {
            return Ok(if te.last().map(String::as_str) == Some("chunked") {
                Framing::Chunked
            } else {
                Framing::UntilClose
            });
        }
        Ok(match content_length(&self.headers)? {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        })
    }

    /// An interim (1xx other than 101) response: the final one follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// Finds the end of a message body in a byte stream, keeping its place across
/// calls; bodies pass through as they arrive.
#[derive(Debug, Clone)]
pub struct BodyScanner {
    state: BodyState,
}

#[derive(Debug, Clone)]
enum BodyState {
    Length(u64),
    Chunked(Chunk),
    Forever,
    Done,
}

impl BodyScanner {
    pub fn new(f: Framing) -> BodyScanner {
        BodyScanner {
            state: match f {
                Framing::None => BodyState::Done,
                Framing::Length(n) => BodyState::Length(n),
                Framing::Chunked => BodyState::Chunked(Chunk::Size),
                Framing::UntilClose | Framing::Tunnel => BodyState::Forever,
            },
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    /// Scans `buf` (which starts after the bytes reported so far): returns how
    /// many bytes belong to the body; [`Self::is_done`] says whether it ended.
    pub fn scan(&mut self, buf: &[u8]) -> Result<usize, HttpError> {
        let mut pos = 0usize;
        loop {
            let rest = &buf[pos..];
            match &mut self.state {
                BodyState::Done => return Ok(pos),
                BodyState::Forever => return Ok(buf.len()),
                BodyState::Length(n) => {
                    let take = (*n).min(rest.len() as u64);
                    *n -= take;
                    pos += take as usize;
                    if *n == 0 {
                        self.state = BodyState::Done;
                    }
                    return Ok(pos);
                }
                BodyState::Chunked(Chunk::Data(n)) => {
                    let take = (*n).min(rest.len() as u64);
                    *n -= take;
                    pos += take as usize;
                    if *n > 0 {
                        return Ok(pos);
                    }
                    self.state = BodyState::Chunked(Chunk::DataEnd);
                }
                BodyState::Chunked(Chunk::DataEnd) => {
                    if rest.len() < 2 {
                        return Ok(pos);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(HttpError::BadChunk("chunk data not followed by CRLF"));
                    }
                    pos += 2;
                    self.state = BodyState::Chunked(Chunk::Size);
                }
                BodyState::Chunked(c @ (Chunk::Size | Chunk::Trailers)) => {
                    let window = &rest[..rest.len().min(MAX_CHUNK_LINE)];
                    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
                        if rest.len() >= MAX_CHUNK_LINE {
                            return Err(HttpError::BadChunk("line too long"));
                        }
                        return Ok(pos);
                    };
                    let line = &rest[..end];
                    if line.contains(&b'\n') || line.contains(&b'\r') {
                        return Err(HttpError::BadChunk("bare CR or LF"));
                    }
                    pos += end + 2;
                    if *c == Chunk::Trailers {
                        if line.is_empty() {
                            self.state = BodyState::Done;
                        }
                        continue;
                    }
                    let size = chunk_size(line)?;
                    self.state = BodyState::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                }
            }
        }
    }
}

fn chunk_size(line: &[u8]) -> Result<u64, HttpError> {
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, ext) = line.split_at(digits_end);
    if digits.is_empty() || digits.len() > 15 {
        return Err(HttpError::BadChunk("invalid chunk size"));
    }
    let ext = ext.trim_ascii_start();
    if !ext.is_empty() && ext[0] != b';' {
        return Err(HttpError::BadChunk("invalid chunk size"));
    }
    let s = std::str::from_utf8(digits).map_err(|_| HttpError::BadChunk("invalid chunk size"))?;
    u64::from_str_radix(s, 16).map_err(|_| HttpError::BadChunk("invalid chunk size"))
}

/// Headers whose values never reach a log.
pub const ALWAYS_REDACTED: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// `name: value; ...` with sensitive values replaced by `[redacted]`
/// (`extra`: more header names, lower-case).
pub fn redacted_headers(headers: &[httparse::Header<'_>], extra: &[String]) -> String {
    let mut s = String::new();
    for h in headers {
        let name = h.name.to_ascii_lowercase();
        if !s.is_empty() {
            s.push_str("; ");
        }
        if ALWAYS_REDACTED.contains(&name.as_str()) || extra.contains(&name) {
            let _ = write!(s, "{}: [redacted]", h.name);
        } else {
            let _ = write!(s, "{}: {}", h.name, String::from_utf8_lossy(h.value));
        }
    }
    s
}

/// The proxy's own answer: `status` with a JSON body; `close` adds
/// `Connection: close`.
pub fn json_response(status: u16, reason: &str, body: &serde_json::Value, close: bool) -> Vec<u8> {
    let body = body.to_string();
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
        body.len()
    );
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

#[doc(hidden)]
pub mod fuzz {
    //! Fuzzing entry point shared by the cargo-fuzz target (`fuzz/`, target
    //! `http_codec`) and the in-tree randomized test.
    use super::*;

    /// Must never panic, whatever `data` is.
    pub fn parse_all(data: &[u8]) {
        if let Ok(Some(h)) = parse_request(data) {
            assert!(h.len <= data.len());
            let _ = (h.host_and_path(), h.keep_alive(), h.expects_continue());
            let _ = redacted_headers(&h.headers, &[]);
            let mut b = BodyScanner::new(h.framing);
            let _ = b.scan(&data[h.len..]);
        }
        if let Ok(Some(h)) = parse_response(data) {
            let _ = h.framing("GET");
        }
        let mut b = BodyScanner::new(Framing::Chunked);
        if let Ok(n) = b.scan(data) {
            assert!(n <= data.len());
        }
        let _ = normalize_path(&String::from_utf8_lossy(data));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> RequestHead<'_> {
        parse_request(s.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn request_heads_and_framing() {
        let h = req(
            "POST /v1/orders?id=7 HTTP/1.1\r\nHost: API.shop:8080\r\nContent-Length: 5\r\n\r\nhello",
        );
        assert_eq!(h.method, "POST");
        assert_eq!(h.framing, Framing::Length(5));
        assert_eq!(h.len, 73);
        assert_eq!(h.host_and_path(), ("api.shop".into(), "/v1/orders".into()));
        assert!(h.keep_alive() && !h.expects_continue());
        let h = req(
            "PUT /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\nExpect: 100-continue\r\n\r\n",
        );
        assert_eq!(h.framing, Framing::Chunked);
        assert!(h.expects_continue());
        let h = req("GET http://Example.com:80/a/../b?q HTTP/1.0\r\nHost: ignored\r\n\r\n");
        assert_eq!(h.host_and_path(), ("example.com".into(), "/b".into()));
        assert!(!h.keep_alive());
        assert!(!req("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive());
        let h = req("CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n");
        assert!(h.may_switch_protocols());
        assert_eq!(h.host_and_path().0, "db");
        assert_eq!(
            req("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n")
                .host_and_path()
                .0,
            "[::1]"
        );
        // Incomplete at every byte.
        let whole = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in 0..whole.len() {
            assert!(
                parse_request(&whole.as_bytes()[..cut]).unwrap().is_none(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        for (bad, want) in [
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                HttpError::ConflictingFraming,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                HttpError::BadContentLength,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n",
                HttpError::BadContentLength,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                HttpError::UnsupportedTransferEncoding,
            ),
            (
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                HttpError::UnsupportedTransferEncoding,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                HttpError::MultipleHosts,
            ),
        ] {
            assert_eq!(parse_request(bad.as_bytes()).unwrap_err(), want, "{bad}");
        }
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n"),
            Err(HttpError::Head(_))
        ));
        assert!(matches!(
            parse_request(b"G\0T / HTTP/1.1\r\n\r\n"),
            Err(HttpError::Head(_))
        ));
        let big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(
            parse_request(big.as_bytes()).unwrap_err(),
            HttpError::HeadTooLarge
        );
        // Identical repeated lengths are fine.
        let h = req("POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(3));
    }

    #[test]
    fn paths_are_normalised() {
        for (raw, want) in [
            ("/v1/orders/7?x=1", "/v1/orders/7"),
            ("/v1/./orders/../orders/7", "/v1/orders/7"),
            ("/v1/%6Frders/7", "/v1/orders/7"),
            ("/v1/orders%2F..%2Fadmin", "/v1/orders%2F..%2Fadmin"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a/b/..", "/a/"),
            ("/a//b", "/a//b"),
            ("", "/"),
            ("/%zz", "/%zz"),
        ] {
            assert_eq!(normalize_path(raw), want, "{raw}");
        }
    }

    const CHUNKED: &[u8] = b"5;ext=1\r\nhello\r\n0A\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\nNEXT";

    #[test]
    fn chunked_bodies_at_every_split() {
        let end = CHUNKED.len() - 4;
        for cut in 0..=CHUNKED.len() {
            let mut s = BodyScanner::new(Framing::Chunked);
            let mut pos = s.scan(&CHUNKED[..cut]).unwrap();
            assert!(pos <= cut);
            if !s.is_done() {
                pos += s.scan(&CHUNKED[pos..]).unwrap();
            }
            assert!(s.is_done(), "cut {cut}");
            assert_eq!(pos, end, "cut {cut}");
        }
        // Byte by byte.
        let mut s = BodyScanner::new(Framing::Chunked);
        let mut pos = 0;
        let mut avail = 0;
        while !s.is_done() {
            avail += 1;
            pos += s.scan(&CHUNKED[pos..avail]).unwrap();
        }
        assert_eq!(pos, end);
    }

    #[test]
    fn malformed_chunks() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"5\nhello\r\n",
            b"10000000000000000\r\n",
            b"5 x\r\n",
        ] {
            let mut s = BodyScanner::new(Framing::Chunked);
            assert!(s.scan(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut s = BodyScanner::new(Framing::Length(3));
        assert_eq!(s.scan(b"ab").unwrap(), 2);
        assert_eq!(s.scan(b"cd").unwrap(), 1);
        assert!(s.is_done());
    }

    #[test]
    fn response_framing() {
        let r = |s: &'static str, m| {
            parse_response(s.as_bytes())
                .unwrap()
                .unwrap()
                .framing(m)
                .unwrap()
        };
        assert_eq!(
            r("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", "GET"),
            Framing::Length(3)
        );
        assert_eq!(
            r("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", "HEAD"),
            Framing::None
        );
        assert_eq!(
            r(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                "GET"
            ),
            Framing::Chunked
        );
        assert_eq!(r("HTTP/1.1 200 OK\r\n\r\n", "GET"), Framing::UntilClose);
        assert_eq!(r("HTTP/1.1 204 No Content\r\n\r\n", "GET"), Framing::None);
        assert_eq!(
            r("HTTP/1.1 101 Switching Protocols\r\n\r\n", "GET"),
            Framing::Tunnel
        );
        assert_eq!(r("HTTP/1.1 200 OK\r\n\r\n", "CONNECT"), Framing::Tunnel);
        let h = parse_response(b"HTTP/1.1 100 Continue\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.is_interim());
    }

    #[test]
    fn random_and_mutated_inputs_never_panic() {
        let corpus: &[&[u8]] = &[
            b"POST /v1/a?x=1 HTTP/1.1\r\nHost: a:1\r\nTransfer-Encoding: chunked\r\n\r\n",
            CHUNKED,
            b"GET http://h/%2e%2e/x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
            b"CONNECT [::1]:5 HTTP/1.1\r\n\r\n",
        ];
        crate::protocol::mutate::run(corpus, 4000, b"\r\n:;%/.? 0aF", fuzz::parse_all);
    }

    #[test]
    fn redaction() {
        let h = req(
            "GET / HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nCookie: sid=abc\r\nX-Api-Key: k3y\r\nAccept: */*\r\n\r\n",
        );
        let s = redacted_headers(&h.headers, &["x-api-key".into()]);
        assert_eq!(
            s,
            "Authorization: [redacted]; Cookie: [redacted]; X-Api-Key: [redacted]; Accept: */*"
        );
    }
}
