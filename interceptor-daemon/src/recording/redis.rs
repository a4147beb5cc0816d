//! Redis replies: the RESP type of each reply the client receives and its size
//! or element count. Redis has no masking, and the audit log never holds Redis
//! values (only commands and keys), so string payloads are described by their
//! length only; status, error, integer and boolean replies (`+OK`, `-ERR ...`,
//! `:1`), which say what happened, are recorded as sent.

use std::time::Instant;

use super::{Recorder, clip};
use crate::audit::record::{RedisReply, ResponseSummary};

/// Bytes of a reply kept to describe it.
const PREFIX: usize = 320;

/// Watches the replies of one session as they are written to the client.
pub struct RedisRecorder {
    rec: Recorder,
    started: Option<Instant>,
    prefix: Vec<u8>,
    len: u64,
}

impl RedisRecorder {
    pub fn new(rec: Recorder) -> RedisRecorder {
        RedisRecorder {
            rec,
            started: None,
            prefix: Vec::with_capacity(PREFIX),
            len: 0,
        }
    }

    /// Bytes of the reply in progress, as forwarded to the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.started.get_or_insert_with(Instant::now);
        let room = PREFIX.saturating_sub(self.prefix.len());
        self.prefix
            .extend_from_slice(&bytes[..room.min(bytes.len())]);
        self.len += bytes.len() as u64;
    }

    /// The reply ended: record it (pushes, which answer no command, are not).
    pub fn end(&mut self, marker: u8) {
        let started = self.started.take().unwrap_or_else(Instant::now);
        let prefix = std::mem::take(&mut self.prefix);
        let len = std::mem::take(&mut self.len);
        if marker == b'>' || prefix.is_empty() {
            self.prefix = prefix;
            self.prefix.clear();
            return;
        }
        let reply = summarize(&prefix, len);
        self.prefix = prefix;
        self.prefix.clear();
        self.rec.emit(started, ResponseSummary::Redis(reply));
    }
}

/// Describe a reply from its first bytes and total length.
pub fn summarize(prefix: &[u8], len: u64) -> RedisReply {
    let line_end = prefix
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(prefix.len());
    let head = String::from_utf8_lossy(prefix.get(1..line_end).unwrap_or(b""));
    let kind = match prefix.first() {
        Some(b'+') => "simple",
        Some(b'-') => "error",
        Some(b':') => "integer",
        Some(b'$') => "bulk",
        Some(b'*') => "array",
        Some(b'%') => "map",
        Some(b'~') => "set",
        Some(b'_') => "null",
        Some(b',') => "double",
        Some(b'#') => "boolean",
        Some(b'!') => "bulk error",
        Some(b'=') => "verbatim",
        Some(b'(') => "big number",
        Some(b'|') => "attribute",
        _ => "unknown",
    };
    let mut reply = RedisReply {
        kind: kind.to_string(),
        value: None,
        elements: None,
        truncated: false,
    };
    match kind {
        // Statuses and errors say what happened; they are recorded as sent.
        "simple" | "error" | "integer" | "double" | "boolean" | "big number" => {
            let (v, cut) = clip(&head, super::MAX_VALUE_CHARS);
            reply.value = Some(v);
            reply.truncated = cut || line_end == prefix.len() && len > prefix.len() as u64;
        }
        "bulk" | "bulk error" | "verbatim" => {
            let n: i64 = head.trim().parse().unwrap_or(-1);
            if n < 0 {
                reply.kind = "null".into();
            } else {
                let start = line_end + 2;
                let body = prefix.get(start..).unwrap_or(b"");
                let body = &body[..body.len().min(n as usize)];
                if kind == "bulk error" {
                    let (v, cut) = super::render_value(body);
                    reply.truncated = cut || (body.len() as i64) < n;
                    reply.value = Some(v);
                } else {
                    reply.value = Some(format!("({n} bytes)"));
                }
            }
        }
        "array" | "map" | "set" | "attribute" => {
            let n: i64 = head.trim().parse().unwrap_or(-1);
            if n < 0 {
                reply.kind = "null".into();
            } else {
                reply.elements = Some(n as u64);
                reply.value = Some(format!("({len} bytes)"));
            }
        }
        _ => {}
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_described_without_values_unless_asked() {
        let r = summarize(b"+OK\r\n", 5);
        assert_eq!(
            (r.kind.as_str(), r.value.as_deref()),
            ("simple", Some("OK"))
        );
        let r = summarize(b"$6\r\nsecret\r\n", 12);
        assert_eq!(
            (r.kind.as_str(), r.value.as_deref()),
            ("bulk", Some("(6 bytes)"))
        );
        let r = summarize(b"$-1\r\n", 5);
        assert_eq!(r.kind, "null");
        let r = summarize(b"*2\r\n$1\r\na\r\n$1\r\nb\r\n", 18);
        assert_eq!((r.kind.as_str(), r.elements), ("array", Some(2)));
        let r = summarize(b":42\r\n", 5);
        assert_eq!(
            (r.kind.as_str(), r.value.as_deref()),
            ("integer", Some("42"))
        );
        let r = summarize(b"-ERR interceptor: command denied\r\n", 34);
        assert_eq!(r.value.as_deref(), Some("ERR interceptor: command denied"));
        // A long status line is cut at the prefix and marked.
        let mut long = b"+".to_vec();
        long.extend(std::iter::repeat_n(b'x', PREFIX));
        let r = summarize(&long[..PREFIX], 1007);
        assert!(
            r.truncated
                && r.value
                    .is_some_and(|v| v.len() == super::super::MAX_VALUE_CHARS)
        );
    }
}
