//! Typed views of frontend (client → server) messages, including the untagged
//! startup packets. Parsing is as strict as the server's (trailing bytes are an
//! error, as in PostgreSQL's `pq_getmsgend`): anything the server would read
//! differently from us must be refused, not guessed at.

use super::{
    CANCEL_REQUEST_CODE, Direction, GSSENC_REQUEST_CODE, MAX_CANCEL_KEY_LEN, ProtocolError,
    SSL_REQUEST_CODE, Tag,
    framer::Frame,
    reader::{Reader, be16, be32},
};

/// Major.minor protocol version from a StartupMessage (3.0 or 3.2 today).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion {
    pub major: u16,
    pub minor: u16,
}

impl ProtocolVersion {
    pub const V3_0: Self = Self { major: 3, minor: 0 };
    pub const V3_2: Self = Self { major: 3, minor: 2 };

    pub fn code(self) -> u32 {
        (u32::from(self.major) << 16) | u32::from(self.minor)
    }
}

/// An untagged startup-phase packet from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartupPacket<'a> {
    Startup {
        version: ProtocolVersion,
        params: StartupParams<'a>,
    },
    SslRequest,
    GssEncRequest,
    /// `key` is 4 bytes in protocol 3.0 and up to 256 bytes in 3.2.
    CancelRequest {
        pid: i32,
        key: &'a [u8],
    },
}

impl<'a> StartupPacket<'a> {
    /// Parses a packet given its code word and the bytes after it.
    pub fn parse(code: u32, body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let packet = match code {
            SSL_REQUEST_CODE => Self::SslRequest,
            GSSENC_REQUEST_CODE => Self::GssEncRequest,
            CANCEL_REQUEST_CODE => {
                let pid = r.i32("cancel pid")?;
                let key = r.rest();
                if key.len() < 4 || key.len() > MAX_CANCEL_KEY_LEN {
                    return Err(ProtocolError::InvalidValue {
                        field: "cancel key length",
                        value: key.len() as i64,
                    });
                }
                Self::CancelRequest { pid, key }
            }
            _ => {
                let version = ProtocolVersion {
                    major: (code >> 16) as u16,
                    minor: code as u16,
                };
                if version.major == 1234 {
                    return Err(ProtocolError::UnknownStartupCode(code));
                }
                if version.major != 3 {
                    return Err(ProtocolError::UnsupportedProtocol {
                        major: version.major,
                        minor: version.minor,
                    });
                }
                Self::Startup {
                    version,
                    params: StartupParams::read(&mut r)?,
                }
            }
        };
        r.finish(0)?;
        Ok(packet)
    }
}

/// The `name=value` pairs of a StartupMessage (`user`, `database`, `options`,
/// GUCs, `_pq_.*` protocol extensions), validated, in wire order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartupParams<'a> {
    buf: &'a [u8],
}

impl<'a> StartupParams<'a> {
    fn read(r: &mut Reader<'a>) -> Result<Self, ProtocolError> {
        let start = *r;
        loop {
            let name = r.cstr("startup parameter name")?;
            if name.is_empty() {
                break;
            }
            r.cstr("startup parameter value")?;
        }
        Ok(Self {
            buf: r.since(&start),
        })
    }

    /// The value of the first parameter called `name`.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + use<'a> {
        let mut r = Reader::new(self.buf);
        std::iter::from_fn(move || {
            let name = r.cstr("").ok().filter(|n| !n.is_empty())?;
            let value = r.cstr("").ok()?;
            Some((name, value))
        })
    }
}

/// Which kind of object Describe and Close refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Statement,
    Portal,
}

impl Target {
    fn read(r: &mut Reader<'_>) -> Result<Self, ProtocolError> {
        match r.u8("describe/close target")? {
            b'S' => Ok(Self::Statement),
            b'P' => Ok(Self::Portal),
            b => Err(ProtocolError::InvalidValue {
                field: "describe/close target",
                value: b.into(),
            }),
        }
    }

    pub fn byte(self) -> u8 {
        match self {
            Self::Statement => b'S',
            Self::Portal => b'P',
        }
    }
}

/// A client message in the regular phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontendMessage<'a> {
    Query {
        sql: &'a str,
    },
    Parse(Parse<'a>),
    Bind(Bind<'a>),
    Describe(Describe<'a>),
    Execute(Execute<'a>),
    Close(Close<'a>),
    Sync,
    Flush,
    Terminate,
    CopyData(&'a [u8]),
    CopyDone,
    CopyFail {
        message: &'a str,
    },
    /// `'p'`: PasswordMessage, SASLInitialResponse, SASLResponse or GSSResponse.
    /// Which one depends on the authentication request the server sent last;
    /// decode with [`parse_password`] or [`SaslInitialResponse::parse`] (a
    /// SASLResponse or GSSResponse is the opaque body itself).
    AuthResponse(&'a [u8]),
    FunctionCall(FunctionCall<'a>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parse<'a> {
    /// Prepared statement name; empty = the unnamed statement.
    pub name: &'a str,
    pub query: &'a str,
    pub param_types: Oids<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a str,
    pub statement: &'a str,
    pub param_formats: FormatCodes<'a>,
    pub params: Values<'a>,
    pub result_formats: FormatCodes<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Describe<'a> {
    pub target: Target,
    pub name: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Execute<'a> {
    pub portal: &'a str,
    /// 0 = no limit.
    pub max_rows: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close<'a> {
    pub target: Target,
    pub name: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FunctionCall<'a> {
    pub function_oid: u32,
    pub arg_formats: FormatCodes<'a>,
    pub args: Values<'a>,
    pub result_format: i16,
}

/// SASLInitialResponse: the chosen mechanism and the optional initial data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaslInitialResponse<'a> {
    pub mechanism: &'a str,
    pub data: Option<&'a [u8]>,
}

impl<'a> SaslInitialResponse<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let mechanism = r.cstr("SASL mechanism")?;
        let data = r.nullable_bytes("SASL initial data")?;
        r.finish(b'p')?;
        Ok(Self { mechanism, data })
    }
}

/// Decodes a PasswordMessage body (cleartext or `md5...` hash).
pub fn parse_password(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut r = Reader::new(body);
    let pw = r.cstr("password")?;
    r.finish(b'p')?;
    Ok(pw)
}

impl<'a> FrontendMessage<'a> {
    pub fn parse(frame: &Frame<'a>) -> Result<Self, ProtocolError> {
        if frame.direction != Direction::Frontend {
            return Err(ProtocolError::UnknownTag {
                tag: Tag(frame.tag),
                direction: frame.direction,
            });
        }
        let mut r = Reader::new(frame.body);
        let msg = match frame.tag {
            b'Q' => Self::Query {
                sql: r.cstr("query")?,
            },
            b'P' => Self::Parse(Parse {
                name: r.cstr("statement name")?,
                query: r.cstr("query")?,
                param_types: Oids::read(&mut r, "parameter types")?,
            }),
            b'B' => Self::Bind(Bind {
                portal: r.cstr("portal name")?,
                statement: r.cstr("statement name")?,
                param_formats: FormatCodes::read(&mut r, "parameter formats")?,
                params: Values::read16(&mut r, "parameter")?,
                result_formats: FormatCodes::read(&mut r, "result formats")?,
            }),
            b'D' => Self::Describe(Describe {
                target: Target::read(&mut r)?,
                name: r.cstr("name")?,
            }),
            b'E' => Self::Execute(Execute {
                portal: r.cstr("portal name")?,
                max_rows: r.i32("max rows")?,
            }),
            b'C' => Self::Close(Close {
                target: Target::read(&mut r)?,
                name: r.cstr("name")?,
            }),
            b'S' => Self::Sync,
            b'H' => Self::Flush,
            b'X' => Self::Terminate,
            b'd' => Self::CopyData(r.rest()),
            b'c' => Self::CopyDone,
            b'f' => Self::CopyFail {
                message: r.cstr("copy failure message")?,
            },
            b'p' => Self::AuthResponse(r.rest()),
            b'F' => Self::FunctionCall(FunctionCall {
                function_oid: r.u32("function oid")?,
                arg_formats: FormatCodes::read(&mut r, "argument formats")?,
                args: Values::read16(&mut r, "argument")?,
                result_format: format_code(r.i16("result format")?, "result format")?,
            }),
            tag => {
                return Err(ProtocolError::UnknownTag {
                    tag: Tag(tag),
                    direction: Direction::Frontend,
                });
            }
        };
        r.finish(frame.tag)?;
        Ok(msg)
    }
}

pub(crate) fn format_code(code: i16, field: &'static str) -> Result<i16, ProtocolError> {
    match code {
        0 | 1 => Ok(code),
        _ => Err(ProtocolError::InvalidValue {
            field,
            value: code.into(),
        }),
    }
}

/// Int16-counted list of format codes (0 = text, 1 = binary), validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatCodes<'a> {
    buf: &'a [u8],
}

impl<'a> FormatCodes<'a> {
    pub(crate) fn read(r: &mut Reader<'a>, field: &'static str) -> Result<Self, ProtocolError> {
        let n = r.count16(field)?;
        let buf = r.bytes(n * 2, field)?;
        let codes = Self { buf };
        for c in codes.iter() {
            format_code(c, field)?;
        }
        Ok(codes)
    }

    pub fn len(&self) -> usize {
        self.buf.len() / 2
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = i16> + use<'a> {
        self.buf.chunks_exact(2).map(be16)
    }

    /// The format of value `index` under the protocol's rule: no codes means
    /// all text, one code applies to every value, otherwise one code per value.
    pub fn format_of(&self, index: usize) -> i16 {
        match self.len() {
            0 => 0,
            1 => self.iter().next().unwrap_or(0),
            _ => self.iter().nth(index).unwrap_or(0),
        }
    }
}

/// Int16-counted list of type OIDs (Parse, ParameterDescription).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oids<'a> {
    buf: &'a [u8],
}

impl<'a> Oids<'a> {
    pub(crate) fn read(r: &mut Reader<'a>, field: &'static str) -> Result<Self, ProtocolError> {
        let n = r.count16(field)?;
        Ok(Self {
            buf: r.bytes(n * 4, field)?,
        })
    }

    pub fn len(&self) -> usize {
        self.buf.len() / 4
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = u32> + use<'a> {
        self.buf.chunks_exact(4).map(|c| be32(c) as u32)
    }
}

/// A counted sequence of length-prefixed values, each `None` for SQL NULL
/// (length -1): Bind parameters, FunctionCall arguments, DataRow columns.
/// Validated when read, so iteration cannot fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Values<'a> {
    buf: &'a [u8],
    count: usize,
}

impl<'a> Values<'a> {
    pub(crate) fn read16(r: &mut Reader<'a>, field: &'static str) -> Result<Self, ProtocolError> {
        let count = r.count16(field)?;
        let start = *r;
        for _ in 0..count {
            r.nullable_bytes(field)?;
        }
        Ok(Self {
            buf: r.since(&start),
            count,
        })
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn iter(&self) -> ValuesIter<'a> {
        ValuesIter {
            r: Reader::new(self.buf),
            left: self.count,
        }
    }

    /// The encoded bytes of all values (without the count), for re-emitting.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }
}

impl<'a> IntoIterator for Values<'a> {
    type Item = Option<&'a [u8]>;
    type IntoIter = ValuesIter<'a>;
    fn into_iter(self) -> ValuesIter<'a> {
        self.iter()
    }
}

pub struct ValuesIter<'a> {
    r: Reader<'a>,
    left: usize,
}

impl<'a> Iterator for ValuesIter<'a> {
    type Item = Option<&'a [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        match self.r.nullable_bytes("value") {
            Ok(v) => Some(v),
            // Unreachable for validated input; end rather than panic.
            Err(_) => {
                self.left = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for ValuesIter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::postgres::{Framer, Progress};

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn parse(buf: &[u8]) -> Result<FrontendMessage<'_>, ProtocolError> {
        match Framer::new(Direction::Frontend).next(buf)? {
            Progress::Complete(f) => FrontendMessage::parse(&f),
            Progress::NeedMore(_) => panic!("incomplete"),
        }
    }

    #[test]
    fn query_and_trailing_bytes() {
        let m = frame(b'Q', b"select 1\0");
        assert_eq!(
            parse(&m).unwrap(),
            FrontendMessage::Query { sql: "select 1" }
        );
        // A second string hidden after the terminator is refused, not ignored.
        let m = frame(b'Q', b"select 1\0drop table t\0");
        assert!(matches!(
            parse(&m),
            Err(ProtocolError::TrailingBytes { .. })
        ));
        let m = frame(b'Q', b"select 1");
        assert!(matches!(parse(&m), Err(ProtocolError::MissingNul { .. })));
        let m = frame(b'Q', b"\xff\0");
        assert!(matches!(parse(&m), Err(ProtocolError::InvalidUtf8 { .. })));
    }

    #[test]
    fn parse_bind_execute() {
        let m = frame(b'P', b"s1\0select $1, $2\0\0\x02\0\0\0\x17\0\0\0\x19");
        let FrontendMessage::Parse(p) = parse(&m).unwrap() else {
            panic!()
        };
        assert_eq!((p.name, p.query), ("s1", "select $1, $2"));
        assert_eq!(p.param_types.iter().collect::<Vec<_>>(), [23, 25]);

        let m = frame(
            b'B',
            b"p1\0s1\0\0\x01\0\x01\0\x02\0\0\0\x04\0\0\0\x2a\xff\xff\xff\xff\0\0",
        );
        let FrontendMessage::Bind(b) = parse(&m).unwrap() else {
            panic!()
        };
        assert_eq!((b.portal, b.statement), ("p1", "s1"));
        assert_eq!(b.param_formats.iter().collect::<Vec<_>>(), [1]);
        assert_eq!(b.param_formats.format_of(1), 1);
        assert_eq!(
            b.params.iter().collect::<Vec<_>>(),
            [Some(&[0, 0, 0, 42][..]), None]
        );
        assert!(b.result_formats.is_empty());

        // Parameter claiming more bytes than present; negative length; bad format.
        let m = frame(b'B', b"\0\0\0\0\0\x01\0\0\0\x09abc\0\0");
        assert!(matches!(parse(&m), Err(ProtocolError::Truncated { .. })));
        let m = frame(b'B', b"\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0");
        assert!(matches!(parse(&m), Err(ProtocolError::InvalidValue { .. })));
        let m = frame(b'B', b"\0\0\0\x01\0\x02\0\0\0\0");
        assert!(matches!(parse(&m), Err(ProtocolError::InvalidValue { .. })));
        let m = frame(b'B', b"\0\0\xff\xff\0\0\0\0");
        assert!(matches!(parse(&m), Err(ProtocolError::InvalidValue { .. })));

        let m = frame(b'E', b"p1\0\0\0\0\x0a");
        assert_eq!(
            parse(&m).unwrap(),
            FrontendMessage::Execute(Execute {
                portal: "p1",
                max_rows: 10
            })
        );
    }

    #[test]
    fn small_messages() {
        let d = frame(b'D', b"Sst\0");
        assert_eq!(
            parse(&d).unwrap(),
            FrontendMessage::Describe(Describe {
                target: Target::Statement,
                name: "st"
            })
        );
        let c = frame(b'C', b"P\0");
        assert_eq!(
            parse(&c).unwrap(),
            FrontendMessage::Close(Close {
                target: Target::Portal,
                name: ""
            })
        );
        assert!(parse(&frame(b'C', b"X\0")).is_err());
        assert_eq!(parse(&frame(b'S', b"")).unwrap(), FrontendMessage::Sync);
        assert!(matches!(
            parse(&frame(b'S', b"x")),
            Err(ProtocolError::TrailingBytes { .. })
        ));
        assert_eq!(parse(&frame(b'H', b"")).unwrap(), FrontendMessage::Flush);
        assert_eq!(
            parse(&frame(b'X', b"")).unwrap(),
            FrontendMessage::Terminate
        );
        assert_eq!(
            parse(&frame(b'd', b"a\tb\n")).unwrap(),
            FrontendMessage::CopyData(b"a\tb\n")
        );
        assert_eq!(parse(&frame(b'c', b"")).unwrap(), FrontendMessage::CopyDone);
        assert_eq!(
            parse(&frame(b'f', b"oops\0")).unwrap(),
            FrontendMessage::CopyFail { message: "oops" }
        );
    }

    #[test]
    fn auth_and_function_call() {
        let pw = frame(b'p', b"secret\0");
        let FrontendMessage::AuthResponse(b) = parse(&pw).unwrap() else {
            panic!()
        };
        assert_eq!(parse_password(b).unwrap(), "secret");
        let body = b"SCRAM-SHA-256\0\0\0\0\x03n,,";
        let s = SaslInitialResponse::parse(body).unwrap();
        assert_eq!((s.mechanism, s.data), ("SCRAM-SHA-256", Some(&b"n,,"[..])));
        let s = SaslInitialResponse::parse(b"X\0\xff\xff\xff\xff").unwrap();
        assert_eq!(s.data, None);

        let m = frame(b'F', b"\0\0\x04\x01\0\0\0\x01\0\0\0\x01x\0\x01");
        let FrontendMessage::FunctionCall(f) = parse(&m).unwrap() else {
            panic!()
        };
        assert_eq!((f.function_oid, f.result_format), (1025, 1));
        assert_eq!(f.args.iter().collect::<Vec<_>>(), [Some(&b"x"[..])]);
    }

    #[test]
    fn startup_packets() {
        let body = b"user\0app\0database\0db\0\0";
        let p = StartupPacket::parse(ProtocolVersion::V3_0.code(), body).unwrap();
        let StartupPacket::Startup { version, params } = p else {
            panic!()
        };
        assert_eq!(version, ProtocolVersion::V3_0);
        assert_eq!(params.get("user"), Some("app"));
        assert_eq!(params.iter().count(), 2);
        let p = StartupPacket::parse(ProtocolVersion::V3_2.code(), b"user\0u\0\0").unwrap();
        assert!(matches!(
            p,
            StartupPacket::Startup {
                version: ProtocolVersion::V3_2,
                ..
            }
        ));
        // Missing final terminator; bytes after it; old protocol; unknown 1234.x code.
        assert!(StartupPacket::parse(196608, b"user\0app\0").is_err());
        assert!(StartupPacket::parse(196608, b"user\0app\0\0x").is_err());
        assert!(matches!(
            StartupPacket::parse(2 << 16, b"\0"),
            Err(ProtocolError::UnsupportedProtocol { major: 2, minor: 0 })
        ));
        assert!(matches!(
            StartupPacket::parse(1234 << 16 | 1, b""),
            Err(ProtocolError::UnknownStartupCode(_))
        ));
        assert_eq!(
            StartupPacket::parse(SSL_REQUEST_CODE, b"").unwrap(),
            StartupPacket::SslRequest
        );
        assert!(StartupPacket::parse(SSL_REQUEST_CODE, b"x").is_err());
        assert_eq!(
            StartupPacket::parse(GSSENC_REQUEST_CODE, b"").unwrap(),
            StartupPacket::GssEncRequest
        );
        // Cancel keys: 4 bytes (3.0), 32 bytes (3.2), 256 max.
        let p = StartupPacket::parse(CANCEL_REQUEST_CODE, &[0, 0, 0, 7, 1, 2, 3, 4]).unwrap();
        assert_eq!(
            p,
            StartupPacket::CancelRequest {
                pid: 7,
                key: &[1, 2, 3, 4]
            }
        );
        let mut long = vec![0, 0, 0, 7];
        long.extend([9u8; 256]);
        assert!(StartupPacket::parse(CANCEL_REQUEST_CODE, &long).is_ok());
        long.push(9);
        assert!(StartupPacket::parse(CANCEL_REQUEST_CODE, &long).is_err());
        assert!(StartupPacket::parse(CANCEL_REQUEST_CODE, &[0, 0, 0, 7, 1]).is_err());
    }
}
