//! Typed views of backend (server → client) messages. RowDescription and
//! DataRow matter most: masking pairs each DataRow column with its field's
//! table OID and column number to decide what to rewrite.

use super::{
    Direction, MAX_CANCEL_KEY_LEN, ProtocolError, Tag,
    framer::Frame,
    frontend::{FormatCodes, Oids, Values, format_code},
    reader::Reader,
};

/// Transaction status reported by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionStatus {
    /// `'I'`: not in a transaction block.
    Idle,
    /// `'T'`: in a transaction block.
    InTransaction,
    /// `'E'`: in a failed transaction block (statements rejected until rollback).
    Failed,
}

impl TransactionStatus {
    pub fn byte(self) -> u8 {
        match self {
            Self::Idle => b'I',
            Self::InTransaction => b'T',
            Self::Failed => b'E',
        }
    }

    pub fn from_byte(b: u8) -> Result<Self, ProtocolError> {
        match b {
            b'I' => Ok(Self::Idle),
            b'T' => Ok(Self::InTransaction),
            b'E' => Ok(Self::Failed),
            _ => Err(ProtocolError::InvalidValue {
                field: "transaction status",
                value: b.into(),
            }),
        }
    }
}

/// The family of Authentication (`'R'`) requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authentication<'a> {
    Ok,
    KerberosV5,
    CleartextPassword,
    Md5Password { salt: [u8; 4] },
    Gss,
    GssContinue(&'a [u8]),
    Sspi,
    Sasl(SaslMechanisms<'a>),
    SaslContinue(&'a [u8]),
    SaslFinal(&'a [u8]),
}

/// A server message in the regular phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendMessage<'a> {
    Authentication(Authentication<'a>),
    ParameterStatus {
        name: &'a str,
        value: &'a str,
    },
    /// `key` is 4 bytes in protocol 3.0 and up to 256 bytes in 3.2.
    BackendKeyData {
        pid: i32,
        key: &'a [u8],
    },
    ReadyForQuery(TransactionStatus),
    RowDescription(Fields<'a>),
    DataRow(Values<'a>),
    CommandComplete {
        tag: &'a str,
    },
    ErrorResponse(ErrorFields<'a>),
    NoticeResponse(ErrorFields<'a>),
    ParseComplete,
    BindComplete,
    CloseComplete,
    NoData,
    PortalSuspended,
    EmptyQueryResponse,
    ParameterDescription(Oids<'a>),
    CopyInResponse(CopyResponse<'a>),
    CopyOutResponse(CopyResponse<'a>),
    CopyBothResponse(CopyResponse<'a>),
    CopyData(&'a [u8]),
    CopyDone,
    NotificationResponse(NotificationResponse<'a>),
    NegotiateProtocolVersion(NegotiateProtocolVersion<'a>),
    FunctionCallResponse(Option<&'a [u8]>),
}

impl<'a> BackendMessage<'a> {
    pub fn parse(frame: &Frame<'a>) -> Result<Self, ProtocolError> {
        if frame.direction != Direction::Backend {
            return Err(ProtocolError::UnknownTag {
                tag: Tag(frame.tag),
                direction: frame.direction,
            });
        }
        let mut r = Reader::new(frame.body);
        let msg = match frame.tag {
            b'R' => Self::Authentication(parse_auth(&mut r)?),
            b'S' => Self::ParameterStatus {
                name: r.cstr("parameter name")?,
                value: r.cstr("parameter value")?,
            },
            b'K' => {
                let pid = r.i32("backend pid")?;
                let key = r.rest();
                if key.len() < 4 || key.len() > MAX_CANCEL_KEY_LEN {
                    return Err(ProtocolError::InvalidValue {
                        field: "cancel key length",
                        value: key.len() as i64,
                    });
                }
                Self::BackendKeyData { pid, key }
            }
            b'Z' => Self::ReadyForQuery(TransactionStatus::from_byte(r.u8("transaction status")?)?),
            b'T' => Self::RowDescription(Fields::read(&mut r)?),
            b'D' => Self::DataRow(Values::read16(&mut r, "column value")?),
            b'C' => Self::CommandComplete {
                tag: r.cstr("command tag")?,
            },
            b'E' => Self::ErrorResponse(ErrorFields::read(&mut r)?),
            b'N' => Self::NoticeResponse(ErrorFields::read(&mut r)?),
            b'1' => Self::ParseComplete,
            b'2' => Self::BindComplete,
            b'3' => Self::CloseComplete,
            b'n' => Self::NoData,
            b's' => Self::PortalSuspended,
            b'I' => Self::EmptyQueryResponse,
            b't' => Self::ParameterDescription(Oids::read(&mut r, "parameter types")?),
            b'G' => Self::CopyInResponse(CopyResponse::read(&mut r)?),
            b'H' => Self::CopyOutResponse(CopyResponse::read(&mut r)?),
            b'W' => Self::CopyBothResponse(CopyResponse::read(&mut r)?),
            b'd' => Self::CopyData(r.rest()),
            b'c' => Self::CopyDone,
            b'A' => Self::NotificationResponse(NotificationResponse {
                pid: r.i32("notifying pid")?,
                channel: r.cstr("channel")?,
                payload: r.cstr("payload")?,
            }),
            b'v' => Self::NegotiateProtocolVersion(NegotiateProtocolVersion {
                newest_minor: r.i32("newest minor version")?,
                unrecognized_options: StrList::read(&mut r)?,
            }),
            b'V' => Self::FunctionCallResponse(r.nullable_bytes("function result")?),
            tag => {
                return Err(ProtocolError::UnknownTag {
                    tag: Tag(tag),
                    direction: Direction::Backend,
                });
            }
        };
        r.finish(frame.tag)?;
        Ok(msg)
    }
}

fn parse_auth<'a>(r: &mut Reader<'a>) -> Result<Authentication<'a>, ProtocolError> {
    let code = r.i32("authentication code")?;
    Ok(match code {
        0 => Authentication::Ok,
        2 => Authentication::KerberosV5,
        3 => Authentication::CleartextPassword,
        5 => Authentication::Md5Password {
            salt: r.array("md5 salt")?,
        },
        7 => Authentication::Gss,
        8 => Authentication::GssContinue(r.rest()),
        9 => Authentication::Sspi,
        10 => Authentication::Sasl(SaslMechanisms::read(r)?),
        11 => Authentication::SaslContinue(r.rest()),
        12 => Authentication::SaslFinal(r.rest()),
        _ => {
            return Err(ProtocolError::InvalidValue {
                field: "authentication code",
                value: code.into(),
            });
        }
    })
}

/// SASL mechanism names offered by AuthenticationSASL (e.g. `SCRAM-SHA-256`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaslMechanisms<'a> {
    buf: &'a [u8],
}

impl<'a> SaslMechanisms<'a> {
    fn read(r: &mut Reader<'a>) -> Result<Self, ProtocolError> {
        let start = *r;
        while !r.cstr("SASL mechanism")?.is_empty() {}
        Ok(Self {
            buf: r.since(&start),
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        let mut r = Reader::new(self.buf);
        std::iter::from_fn(move || r.cstr("").ok().filter(|m| !m.is_empty()))
    }
}

/// One column of a RowDescription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FieldDescription<'a> {
    pub name: &'a str,
    /// OID of the source table, or 0 if the column is not a plain table column.
    pub table_oid: u32,
    /// Attribute number within that table, or 0.
    pub column: i16,
    pub type_oid: u32,
    /// `pg_type.typlen` (negative for variable-length types).
    pub type_size: i16,
    /// `pg_attribute.atttypmod` (type-specific, -1 if none).
    pub type_modifier: i32,
    /// 0 = text, 1 = binary.
    pub format: i16,
}

impl<'a> FieldDescription<'a> {
    fn read(r: &mut Reader<'a>) -> Result<Self, ProtocolError> {
        Ok(Self {
            name: r.cstr("field name")?,
            table_oid: r.u32("table oid")?,
            column: r.i16("column number")?,
            type_oid: r.u32("type oid")?,
            type_size: r.i16("type size")?,
            type_modifier: r.i32("type modifier")?,
            format: format_code(r.i16("format")?, "field format")?,
        })
    }
}

/// The fields of a RowDescription, validated, in column order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields<'a> {
    buf: &'a [u8],
    count: usize,
}

impl<'a> Fields<'a> {
    fn read(r: &mut Reader<'a>) -> Result<Self, ProtocolError> {
        let count = r.count16("field count")?;
        let start = *r;
        for _ in 0..count {
            FieldDescription::read(r)?;
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

    pub fn iter(&self) -> FieldsIter<'a> {
        FieldsIter {
            r: Reader::new(self.buf),
            left: self.count,
        }
    }
}

impl<'a> IntoIterator for Fields<'a> {
    type Item = FieldDescription<'a>;
    type IntoIter = FieldsIter<'a>;
    fn into_iter(self) -> FieldsIter<'a> {
        self.iter()
    }
}

pub struct FieldsIter<'a> {
    r: Reader<'a>,
    left: usize,
}

impl<'a> Iterator for FieldsIter<'a> {
    type Item = FieldDescription<'a>;

    fn next(&mut self) -> Option<FieldDescription<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Validated in `Fields::read`; an error is unreachable, end rather than panic.
        let f = FieldDescription::read(&mut self.r).ok();
        if f.is_none() {
            self.left = 0;
        }
        f
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for FieldsIter<'_> {}

/// Fields of an ErrorResponse or NoticeResponse, keyed by one-byte codes
/// (`S`everity, `V` non-localised severity, `C` SQLSTATE, `M`essage, `D`etail,
/// `H`int, ...; see "Error and Notice Message Fields").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    buf: &'a [u8],
}

impl<'a> ErrorFields<'a> {
    fn read(r: &mut Reader<'a>) -> Result<Self, ProtocolError> {
        let start = *r;
        while r.u8("error field code")? != 0 {
            r.cstr("error field value")?;
        }
        Ok(Self {
            buf: r.since(&start),
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = (u8, &'a str)> + use<'a> {
        let mut r = Reader::new(self.buf);
        std::iter::from_fn(move || {
            let code = r.u8("").ok().filter(|&c| c != 0)?;
            Some((code, r.cstr("").ok()?))
        })
    }

    /// The first field with `code`.
    pub fn get(&self, code: u8) -> Option<&'a str> {
        self.iter().find(|(c, _)| *c == code).map(|(_, v)| v)
    }

    /// Non-localised severity if present (`V`, since 9.6), else `S`.
    pub fn severity(&self) -> Option<&'a str> {
        self.get(b'V').or_else(|| self.get(b'S'))
    }

    /// The SQLSTATE (`C`).
    pub fn code(&self) -> Option<&'a str> {
        self.get(b'C')
    }

    pub fn message(&self) -> Option<&'a str> {
        self.get(b'M')
    }
}

/// CopyIn/CopyOut/CopyBothResponse: overall format and per-column formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyResponse<'a> {
    /// 0 = textual, 1 = binary.
    pub format: i8,
    pub column_formats: FormatCodes<'a>,
}

impl<'a> CopyResponse<'a> {
    fn read(r: &mut Reader<'a>) -> Result<Self, ProtocolError> {
        let format = r.u8("copy format")?;
        let format = format_code(format.into(), "copy format")? as i8;
        Ok(Self {
            format,
            column_formats: FormatCodes::read(r, "copy column formats")?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotificationResponse<'a> {
    pub pid: i32,
    pub channel: &'a str,
    pub payload: &'a str,
}

/// The server's counter-offer when the client asked for a newer minor version
/// or unknown `_pq_.` options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NegotiateProtocolVersion<'a> {
    pub newest_minor: i32,
    pub unrecognized_options: StrList<'a>,
}

/// An Int32-counted list of strings, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrList<'a> {
    buf: &'a [u8],
    count: usize,
}

impl<'a> StrList<'a> {
    fn read(r: &mut Reader<'a>) -> Result<Self, ProtocolError> {
        let n = r.i32("option count")?;
        let count = usize::try_from(n).map_err(|_| ProtocolError::InvalidValue {
            field: "option count",
            value: n.into(),
        })?;
        let start = *r;
        for _ in 0..count {
            r.cstr("option name")?;
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

    pub fn iter(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        let mut r = Reader::new(self.buf);
        std::iter::from_fn(move || r.cstr("").ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::postgres::{Framer, Progress};

    /// Leaked so parsed views can outlive the statement that framed them.
    fn frame(tag: u8, body: &[u8]) -> &'static [u8] {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        Vec::leak(v)
    }

    fn parse(buf: &[u8]) -> Result<BackendMessage<'_>, ProtocolError> {
        match Framer::new(Direction::Backend).next(buf)? {
            Progress::Complete(f) => BackendMessage::parse(&f),
            Progress::NeedMore(_) => panic!("incomplete"),
        }
    }

    #[test]
    fn authentication() {
        let ok = parse(frame(b'R', &[0, 0, 0, 0])).unwrap();
        assert_eq!(ok, BackendMessage::Authentication(Authentication::Ok));
        let md5 = parse(frame(b'R', &[0, 0, 0, 5, 1, 2, 3, 4])).unwrap();
        assert_eq!(
            md5,
            BackendMessage::Authentication(Authentication::Md5Password { salt: [1, 2, 3, 4] })
        );
        assert!(parse(frame(b'R', &[0, 0, 0, 5, 1, 2, 3])).is_err());
        assert!(parse(frame(b'R', &[0, 0, 0, 0, 1])).is_err());
        assert!(parse(frame(b'R', &[0, 0, 0, 99])).is_err());
        let sasl = frame(b'R', b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        let BackendMessage::Authentication(Authentication::Sasl(m)) = parse(sasl).unwrap() else {
            panic!()
        };
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
        );
        let cont = parse(frame(b'R', b"\0\0\0\x0br=abc")).unwrap();
        assert_eq!(
            cont,
            BackendMessage::Authentication(Authentication::SaslContinue(b"r=abc"))
        );
        let fin = parse(frame(b'R', b"\0\0\0\x0cv=xyz")).unwrap();
        assert_eq!(
            fin,
            BackendMessage::Authentication(Authentication::SaslFinal(b"v=xyz"))
        );
        let clear = parse(frame(b'R', &[0, 0, 0, 3])).unwrap();
        assert_eq!(
            clear,
            BackendMessage::Authentication(Authentication::CleartextPassword)
        );
    }

    #[test]
    fn session_messages() {
        assert_eq!(
            parse(frame(b'S', b"server_version\x0017.2\0")).unwrap(),
            BackendMessage::ParameterStatus {
                name: "server_version",
                value: "17.2"
            }
        );
        assert_eq!(
            parse(frame(b'K', &[0, 0, 1, 0, 9, 9, 9, 9])).unwrap(),
            BackendMessage::BackendKeyData {
                pid: 256,
                key: &[9, 9, 9, 9]
            }
        );
        let mut k32 = vec![0, 0, 1, 0];
        k32.extend([7u8; 32]);
        assert!(matches!(
            parse(frame(b'K', &k32)).unwrap(),
            BackendMessage::BackendKeyData { .. }
        ));
        for (b, s) in [
            (b'I', TransactionStatus::Idle),
            (b'T', TransactionStatus::InTransaction),
            (b'E', TransactionStatus::Failed),
        ] {
            assert_eq!(
                parse(frame(b'Z', &[b])).unwrap(),
                BackendMessage::ReadyForQuery(s)
            );
        }
        assert!(parse(frame(b'Z', b"X")).is_err());
        assert!(parse(frame(b'Z', b"II")).is_err());
        assert_eq!(
            parse(frame(b'C', b"UPDATE 3\0")).unwrap(),
            BackendMessage::CommandComplete { tag: "UPDATE 3" }
        );
        for (t, m) in [
            (b'1', BackendMessage::ParseComplete),
            (b'2', BackendMessage::BindComplete),
            (b'3', BackendMessage::CloseComplete),
            (b'n', BackendMessage::NoData),
            (b's', BackendMessage::PortalSuspended),
            (b'I', BackendMessage::EmptyQueryResponse),
            (b'c', BackendMessage::CopyDone),
        ] {
            assert_eq!(parse(frame(t, b"")).unwrap(), m);
            assert!(parse(frame(t, b"x")).is_err());
        }
        let n = parse(frame(b'A', b"\0\0\0\x05chan\0hello\0")).unwrap();
        assert_eq!(
            n,
            BackendMessage::NotificationResponse(NotificationResponse {
                pid: 5,
                channel: "chan",
                payload: "hello"
            })
        );
        let v = parse(frame(b'v', b"\0\0\0\0\0\0\0\x01_pq_.x\0")).unwrap();
        let BackendMessage::NegotiateProtocolVersion(v) = v else {
            panic!()
        };
        assert_eq!(
            (
                v.newest_minor,
                v.unrecognized_options.iter().collect::<Vec<_>>()
            ),
            (0, vec!["_pq_.x"])
        );
        assert!(parse(frame(b'v', b"\0\0\0\0\xff\xff\xff\xff")).is_err());
        assert_eq!(
            parse(frame(b'V', b"\xff\xff\xff\xff")).unwrap(),
            BackendMessage::FunctionCallResponse(None)
        );
    }

    #[test]
    fn row_description_and_data_row() {
        let mut body = vec![0, 2];
        for (name, attnum) in [(&b"id"[..], 1i16), (b"email", 2)] {
            body.extend_from_slice(name);
            body.push(0);
            body.extend_from_slice(&16384u32.to_be_bytes());
            body.extend_from_slice(&attnum.to_be_bytes());
            body.extend_from_slice(&25u32.to_be_bytes());
            body.extend_from_slice(&(-1i16).to_be_bytes());
            body.extend_from_slice(&(-1i32).to_be_bytes());
            body.extend_from_slice(&0i16.to_be_bytes());
        }
        let BackendMessage::RowDescription(f) = parse(frame(b'T', &body)).unwrap() else {
            panic!()
        };
        assert_eq!(f.len(), 2);
        let fields: Vec<_> = f.iter().collect();
        assert_eq!(fields[1].name, "email");
        assert_eq!(
            (fields[1].table_oid, fields[1].column, fields[1].type_oid),
            (16384, 2, 25)
        );
        assert_eq!(f.iter().len(), 2);
        // Truncated last field; count larger than the fields present.
        assert!(parse(frame(b'T', &body[..body.len() - 1])).is_err());
        let mut more = body.clone();
        more[1] = 3;
        assert!(parse(frame(b'T', &more)).is_err());

        let row = frame(b'D', b"\0\x03\0\0\0\x01a\xff\xff\xff\xff\0\0\0\0");
        let BackendMessage::DataRow(v) = parse(row).unwrap() else {
            panic!()
        };
        assert_eq!(
            v.iter().collect::<Vec<_>>(),
            [Some(&b"a"[..]), None, Some(&b""[..])]
        );
        assert!(parse(frame(b'D', b"\0\x01\0\0\0\x05ab")).is_err());
    }

    #[test]
    fn errors_notices_and_copy() {
        let e = parse(frame(
            b'E',
            b"SERROR\0VERROR\0C42501\0Mpermission denied\0\0",
        ))
        .unwrap();
        let BackendMessage::ErrorResponse(e) = e else {
            panic!()
        };
        assert_eq!(
            (e.severity(), e.code(), e.message()),
            (Some("ERROR"), Some("42501"), Some("permission denied"))
        );
        assert_eq!(e.get(b'H'), None);
        assert!(parse(frame(b'E', b"SERROR\0")).is_err());
        assert!(parse(frame(b'N', b"SNOTICE")).is_err());
        let c = parse(frame(b'H', b"\0\0\x02\0\0\0\0")).unwrap();
        let BackendMessage::CopyOutResponse(c) = c else {
            panic!()
        };
        assert_eq!((c.format, c.column_formats.len()), (0, 2));
        assert!(parse(frame(b'G', b"\x02\0\0")).is_err());
        let t = parse(frame(b't', b"\0\x01\0\0\0\x17")).unwrap();
        let BackendMessage::ParameterDescription(o) = t else {
            panic!()
        };
        assert_eq!(o.iter().collect::<Vec<_>>(), [23]);
    }
}
