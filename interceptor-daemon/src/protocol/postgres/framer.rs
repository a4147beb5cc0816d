//! Message framing: splitting a byte stream into whole messages without copying.
//!
//! The length word is checked against [`Limits`] as soon as the header is
//! buffered, and unknown tags are refused from their first byte, so the caller
//! never waits for (or buffers) a message it would refuse anyway.

use super::{
    ProtocolError, Tag,
    frontend::StartupPacket,
    reader::{Reader, be32},
};

/// Who sent the bytes: the frontend (client → server) or the backend (server →
/// client). Some tags mean different things per direction (`'D'` is Describe
/// from a client and DataRow from a server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Frontend,
    Backend,
}

/// Maximum values of the length word (which counts itself but not the tag),
/// per class of message. The defaults follow PostgreSQL's own server limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Startup-phase packets (PostgreSQL: `MAX_STARTUP_PACKET_LENGTH`, 10000).
    pub startup: u32,
    /// Messages that are tiny by construction (Sync, Execute, ReadyForQuery...;
    /// PostgreSQL: `PQ_SMALL_MESSAGE_LIMIT`).
    pub small: u32,
    /// Authentication responses from the client (`PG_MAX_AUTH_TOKEN_LENGTH`).
    pub auth: u32,
    /// Everything else: Query, Bind, DataRow, CopyData... (`PQ_LARGE_MESSAGE_LIMIT`).
    pub large: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            startup: 10_000,
            small: 10_000,
            auth: 65_535,
            large: 1 << 30,
        }
    }
}

impl Limits {
    /// The limit for `tag` in `direction`, or `None` if the tag does not exist
    /// in that direction.
    pub fn for_tag(&self, direction: Direction, tag: u8) -> Option<u32> {
        match (direction, tag) {
            (Direction::Frontend, b'Q' | b'P' | b'B' | b'F' | b'd' | b'f') => Some(self.large),
            (Direction::Frontend, b'p') => Some(self.auth),
            (Direction::Frontend, b'D' | b'E' | b'C' | b'S' | b'H' | b'X' | b'c') => {
                Some(self.small)
            }
            (
                Direction::Backend,
                b'R' | b'S' | b'T' | b'D' | b'C' | b'E' | b'N' | b't' | b'G' | b'H' | b'W' | b'd'
                | b'A' | b'v' | b'V',
            ) => Some(self.large),
            (Direction::Backend, b'K' | b'1' | b'2' | b'3' | b'n' | b's' | b'I' | b'c' | b'Z') => {
                Some(self.small)
            }
            _ => None,
        }
    }
}

/// Result of a framing attempt that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress<T> {
    /// A whole message; it occupies the first `len()` bytes of the buffer.
    Complete(T),
    /// The buffer ends mid-message. `Some(n)`: exactly `n` more bytes complete
    /// it; `None`: the header itself is incomplete.
    NeedMore(Option<usize>),
}

/// One tagged message borrowed from the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub direction: Direction,
    pub tag: u8,
    /// The payload after the tag and length word.
    pub body: &'a [u8],
    /// The whole message as it came off the wire (tag, length, body): what a
    /// proxy forwards unchanged.
    pub raw: &'a [u8],
}

impl Frame<'_> {
    /// Total bytes of the message in the buffer.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Always false: a frame holds at least its tag and length word.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
}

/// One untagged startup-phase packet borrowed from the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartupFrame<'a> {
    /// The request code or protocol version (first Int32 after the length).
    pub code: u32,
    /// Everything after the code.
    pub body: &'a [u8],
    pub raw: &'a [u8],
}

impl<'a> StartupFrame<'a> {
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Typed view of the packet.
    pub fn parse(&self) -> Result<StartupPacket<'a>, ProtocolError> {
        StartupPacket::parse(self.code, self.body)
    }
}

/// Splits buffers into messages for one direction under given limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framer {
    pub direction: Direction,
    pub limits: Limits,
}

impl Framer {
    pub fn new(direction: Direction) -> Self {
        Self {
            direction,
            limits: Limits::default(),
        }
    }

    pub fn with_limits(direction: Direction, limits: Limits) -> Self {
        Self { direction, limits }
    }

    /// The next regular-phase (tagged) message at the start of `buf`.
    pub fn next<'a>(&self, buf: &'a [u8]) -> Result<Progress<Frame<'a>>, ProtocolError> {
        let Some(&tag) = buf.first() else {
            return Ok(Progress::NeedMore(None));
        };
        let Some(max) = self.limits.for_tag(self.direction, tag) else {
            return Err(ProtocolError::UnknownTag {
                tag: Tag(tag),
                direction: self.direction,
            });
        };
        let Some(len_word) = buf.get(1..5) else {
            return Ok(Progress::NeedMore(None));
        };
        let len = be32(len_word);
        if len < 4 {
            return Err(ProtocolError::BadLength {
                len: len.into(),
                min: 4,
            });
        }
        // len >= 4 here, so the conversions below cannot fail.
        let len_u = len.unsigned_abs();
        if len_u > max {
            return Err(ProtocolError::Oversized {
                tag: Tag(tag),
                len: len_u.into(),
                max,
            });
        }
        let total = 1 + len_u as usize;
        match (buf.get(..total), buf.get(5..total)) {
            (Some(raw), Some(body)) => Ok(Progress::Complete(Frame {
                direction: self.direction,
                tag,
                body,
                raw,
            })),
            _ => Ok(Progress::NeedMore(Some(total.saturating_sub(buf.len())))),
        }
    }

    /// The next startup-phase (untagged) packet at the start of `buf`: what a
    /// client sends first (StartupMessage, SSLRequest, GSSENCRequest or
    /// CancelRequest). Only meaningful for [`Direction::Frontend`].
    pub fn next_startup<'a>(
        &self,
        buf: &'a [u8],
    ) -> Result<Progress<StartupFrame<'a>>, ProtocolError> {
        let Some(len_word) = buf.get(0..4) else {
            return Ok(Progress::NeedMore(None));
        };
        let len = be32(len_word);
        if len < 8 {
            return Err(ProtocolError::BadLength {
                len: len.into(),
                min: 8,
            });
        }
        let len_u = len.unsigned_abs();
        if len_u > self.limits.startup {
            return Err(ProtocolError::Oversized {
                tag: Tag(0),
                len: len_u.into(),
                max: self.limits.startup,
            });
        }
        let total = len_u as usize;
        let Some(raw) = buf.get(..total) else {
            return Ok(Progress::NeedMore(Some(total.saturating_sub(buf.len()))));
        };
        let mut r = Reader::new(raw);
        r.bytes(4, "length")?;
        let code = r.u32("request code")?;
        Ok(Progress::Complete(StartupFrame {
            code,
            body: r.rest(),
            raw,
        }))
    }
}

/// The server's one-byte answer to an SSLRequest (`'S'` / `'N'`) or a
/// GSSENCRequest (`'G'` / `'N'`), which is neither tagged nor length-prefixed.
pub fn encryption_response(buf: &[u8]) -> Result<Progress<u8>, ProtocolError> {
    match buf.first() {
        None => Ok(Progress::NeedMore(Some(1))),
        Some(&b @ (b'S' | b'N' | b'G')) => Ok(Progress::Complete(b)),
        Some(&b) => Err(ProtocolError::InvalidValue {
            field: "encryption response",
            value: b.into(),
        }),
    }
}

/// True when `buf` starts like a TLS handshake record: a client using
/// PostgreSQL 17's direct SSL negotiation (`sslnegotiation=direct`) sends a
/// ClientHello instead of an SSLRequest. Framing it as a startup packet fails
/// with [`ProtocolError::Oversized`]; this lets the caller tell the two apart.
pub fn looks_like_tls_client_hello(buf: &[u8]) -> bool {
    matches!(buf, [0x16, 0x03, ..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn frames_complete_and_partial_messages() {
        let f = Framer::new(Direction::Frontend);
        let mut buf = msg(b'Q', b"select 1\0");
        buf.extend_from_slice(&msg(b'S', b""));
        let Progress::Complete(m) = f.next(&buf).unwrap() else {
            panic!()
        };
        assert_eq!((m.tag, m.body, m.len()), (b'Q', &b"select 1\0"[..], 14));
        let Progress::Complete(s) = f.next(&buf[m.len()..]).unwrap() else {
            panic!()
        };
        assert_eq!((s.tag, s.body.len(), s.len()), (b'S', 0, 5));
        for cut in 0..14 {
            let p = f.next(&buf[..cut]).unwrap();
            let want = if cut < 5 { None } else { Some(14 - cut) };
            assert_eq!(p, Progress::NeedMore(want), "cut {cut}");
        }
    }

    #[test]
    fn rejects_bad_lengths_unknown_tags_and_oversize_early() {
        let f = Framer::new(Direction::Frontend);
        assert_eq!(
            f.next(&[b'Q', 0, 0, 0, 3]),
            Err(ProtocolError::BadLength { len: 3, min: 4 })
        );
        assert_eq!(
            f.next(&[b'Q', 0xff, 0xff, 0xff, 0xff]),
            Err(ProtocolError::BadLength { len: -1, min: 4 })
        );
        // 'T' is RowDescription: backend only.
        assert!(matches!(
            f.next(b"T"),
            Err(ProtocolError::UnknownTag { .. })
        ));
        assert!(
            Framer::new(Direction::Backend)
                .next(&msg(b'T', &[0, 0]))
                .is_ok()
        );
        // Sync claiming 1 MB is refused from the header alone.
        assert!(matches!(
            f.next(&[b'S', 0, 0x10, 0, 0]),
            Err(ProtocolError::Oversized { .. })
        ));
        let big = Framer::with_limits(
            Direction::Frontend,
            Limits {
                large: 100,
                ..Limits::default()
            },
        );
        assert!(matches!(
            big.next(&[b'Q', 0, 0, 0, 101]),
            Err(ProtocolError::Oversized { .. })
        ));
        assert_eq!(
            big.next(&[b'Q', 0, 0, 0, 100]),
            Ok(Progress::NeedMore(Some(96)))
        );
    }

    #[test]
    fn startup_framing() {
        let f = Framer::new(Direction::Frontend);
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        let Progress::Complete(p) = f.next_startup(&ssl).unwrap() else {
            panic!()
        };
        assert_eq!(
            (p.code, p.len()),
            (crate::protocol::postgres::SSL_REQUEST_CODE, 8)
        );
        assert_eq!(f.next_startup(&ssl[..3]), Ok(Progress::NeedMore(None)));
        assert_eq!(f.next_startup(&ssl[..5]), Ok(Progress::NeedMore(Some(3))));
        assert!(matches!(
            f.next_startup(&[0, 0, 0, 7]),
            Err(ProtocolError::BadLength { .. })
        ));
        assert!(matches!(
            f.next_startup(&[0, 0, 0x27, 0x11]),
            Err(ProtocolError::Oversized { .. })
        ));
        let hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01];
        assert!(looks_like_tls_client_hello(&hello));
        assert!(f.next_startup(&hello).is_err());
    }

    #[test]
    fn encryption_answers() {
        assert_eq!(encryption_response(b""), Ok(Progress::NeedMore(Some(1))));
        assert_eq!(encryption_response(b"Nrest"), Ok(Progress::Complete(b'N')));
        assert!(encryption_response(b"E").is_err());
    }
}
