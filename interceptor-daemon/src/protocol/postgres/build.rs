//! Builders for the messages the interceptor itself emits: a protocol-native
//! refusal (`ErrorResponse` + `ReadyForQuery`), rewritten rows for masking, and
//! the client side of a connection it opens on its own behalf.
//!
//! Each builder appends one complete message to a caller-provided `Vec<u8>`
//! (so a whole reply can be assembled in one buffer and written at once). On
//! error nothing is appended.

use super::{
    ProtocolError, SSL_REQUEST_CODE,
    backend::{FieldDescription, TransactionStatus},
    frontend::ProtocolVersion,
};

/// SQLSTATE `insufficient_privilege`: what a denied statement reports.
pub const SQLSTATE_INSUFFICIENT_PRIVILEGE: &str = "42501";

/// Content of an ErrorResponse / NoticeResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorSpec<'s> {
    /// `ERROR`, `FATAL`, `PANIC` (errors) or `WARNING`, `NOTICE`, ... (notices).
    pub severity: &'s str,
    /// Five-character SQLSTATE.
    pub code: &'s str,
    pub message: &'s str,
    pub detail: Option<&'s str>,
    pub hint: Option<&'s str>,
}

impl<'s> ErrorSpec<'s> {
    /// An `ERROR` with the given SQLSTATE and message.
    pub fn error(code: &'s str, message: &'s str) -> Self {
        Self {
            severity: "ERROR",
            code,
            message,
            detail: None,
            hint: None,
        }
    }

    pub fn detail(self, detail: &'s str) -> Self {
        Self {
            detail: Some(detail),
            ..self
        }
    }

    pub fn hint(self, hint: &'s str) -> Self {
        Self {
            hint: Some(hint),
            ..self
        }
    }
}

/// Appends a tagged message whose body `body` writes, patching the length word;
/// restores `out` if `body` fails or the message is too long.
fn tagged(
    out: &mut Vec<u8>,
    tag: u8,
    body: impl FnOnce(&mut Vec<u8>) -> Result<(), ProtocolError>,
) -> Result<(), ProtocolError> {
    let start = out.len();
    out.push(tag);
    out.extend_from_slice(&[0; 4]);
    let res = body(out).and_then(|()| patch_len(out, start + 1));
    if res.is_err() {
        out.truncate(start);
    }
    res
}

/// Writes the length of `out[at..]` as the Int32 at `at`.
fn patch_len(out: &mut [u8], at: usize) -> Result<(), ProtocolError> {
    let len = out.len().checked_sub(at).ok_or(ProtocolError::TooLong)?;
    let len = i32::try_from(len).map_err(|_| ProtocolError::TooLong)?;
    let slot = out.get_mut(at..at + 4).ok_or(ProtocolError::TooLong)?;
    slot.copy_from_slice(&len.to_be_bytes());
    Ok(())
}

fn cstr(out: &mut Vec<u8>, s: &str, field: &'static str) -> Result<(), ProtocolError> {
    if s.as_bytes().contains(&0) {
        return Err(ProtocolError::InteriorNul { field });
    }
    out.extend_from_slice(s.as_bytes());
    out.push(0);
    Ok(())
}

fn count16(n: usize) -> Result<[u8; 2], ProtocolError> {
    i16::try_from(n)
        .map(i16::to_be_bytes)
        .map_err(|_| ProtocolError::TooLong)
}

fn error_fields(out: &mut Vec<u8>, e: &ErrorSpec<'_>) -> Result<(), ProtocolError> {
    if e.code.len() != 5
        || !e
            .code
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
    {
        return Err(ProtocolError::InvalidValue {
            field: "sqlstate",
            value: e.code.len() as i64,
        });
    }
    for (code, value, field) in [
        (b'S', Some(e.severity), "severity"),
        // Non-localised severity: what clients match on.
        (b'V', Some(e.severity), "severity"),
        (b'C', Some(e.code), "sqlstate"),
        (b'M', Some(e.message), "message"),
        (b'D', e.detail, "detail"),
        (b'H', e.hint, "hint"),
    ] {
        if let Some(v) = value {
            out.push(code);
            cstr(out, v, field)?;
        }
    }
    out.push(0);
    Ok(())
}

/// ErrorResponse (`'E'`).
pub fn error_response(out: &mut Vec<u8>, e: &ErrorSpec<'_>) -> Result<(), ProtocolError> {
    tagged(out, b'E', |out| error_fields(out, e))
}

/// NoticeResponse (`'N'`), e.g. a `WARNING` that a statement was audited.
pub fn notice_response(out: &mut Vec<u8>, e: &ErrorSpec<'_>) -> Result<(), ProtocolError> {
    tagged(out, b'N', |out| error_fields(out, e))
}

/// ErrorResponse (`'E'`) or NoticeResponse (`'N'`) from raw `(code, value)`
/// fields, e.g. a server message re-emitted with some fields rewritten.
pub fn fields_message<'f>(
    out: &mut Vec<u8>,
    tag: u8,
    fields: impl IntoIterator<Item = (u8, &'f str)>,
) -> Result<(), ProtocolError> {
    if !matches!(tag, b'E' | b'N') {
        return Err(ProtocolError::InvalidValue {
            field: "message tag",
            value: tag.into(),
        });
    }
    tagged(out, tag, |out| {
        for (code, value) in fields {
            if code == 0 {
                return Err(ProtocolError::InvalidValue {
                    field: "field code",
                    value: 0,
                });
            }
            out.push(code);
            cstr(out, value, "field value")?;
        }
        out.push(0);
        Ok(())
    })
}

/// ReadyForQuery (`'Z'`).
pub fn ready_for_query(out: &mut Vec<u8>, status: TransactionStatus) {
    out.extend_from_slice(&[b'Z', 0, 0, 0, 5, status.byte()]);
}

/// CommandComplete (`'C'`) with a command tag such as `SELECT 3`.
pub fn command_complete(out: &mut Vec<u8>, tag: &str) -> Result<(), ProtocolError> {
    tagged(out, b'C', |out| cstr(out, tag, "command tag"))
}

/// DataRow (`'D'`) from column values (`None` = NULL); lengths are computed
/// from the values, so masked replacements may differ in size from originals.
pub fn data_row<'v>(
    out: &mut Vec<u8>,
    values: impl IntoIterator<Item = Option<&'v [u8]>>,
) -> Result<(), ProtocolError> {
    tagged(out, b'D', |out| {
        let count_at = out.len();
        out.extend_from_slice(&[0; 2]);
        let mut n = 0usize;
        for v in values {
            n += 1;
            match v {
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    let len = i32::try_from(v.len()).map_err(|_| ProtocolError::TooLong)?;
                    out.extend_from_slice(&len.to_be_bytes());
                    out.extend_from_slice(v);
                }
            }
        }
        let count = count16(n)?;
        if let Some(slot) = out.get_mut(count_at..count_at + 2) {
            slot.copy_from_slice(&count);
        }
        Ok(())
    })
}

/// CopyData (`'d'`), either direction.
pub fn copy_data(out: &mut Vec<u8>, data: &[u8]) -> Result<(), ProtocolError> {
    tagged(out, b'd', |out| {
        out.extend_from_slice(data);
        Ok(())
    })
}

/// NotificationResponse (`'A'`).
pub fn notification_response(
    out: &mut Vec<u8>,
    pid: i32,
    channel: &str,
    payload: &str,
) -> Result<(), ProtocolError> {
    tagged(out, b'A', |out| {
        out.extend_from_slice(&pid.to_be_bytes());
        cstr(out, channel, "channel")?;
        cstr(out, payload, "payload")
    })
}

/// RowDescription (`'T'`).
pub fn row_description<'f>(
    out: &mut Vec<u8>,
    fields: impl IntoIterator<Item = FieldDescription<'f>>,
) -> Result<(), ProtocolError> {
    tagged(out, b'T', |out| {
        let count_at = out.len();
        out.extend_from_slice(&[0; 2]);
        let mut n = 0usize;
        for f in fields {
            n += 1;
            cstr(out, f.name, "field name")?;
            out.extend_from_slice(&f.table_oid.to_be_bytes());
            out.extend_from_slice(&f.column.to_be_bytes());
            out.extend_from_slice(&f.type_oid.to_be_bytes());
            out.extend_from_slice(&f.type_size.to_be_bytes());
            out.extend_from_slice(&f.type_modifier.to_be_bytes());
            out.extend_from_slice(&f.format.to_be_bytes());
        }
        let count = count16(n)?;
        if let Some(slot) = out.get_mut(count_at..count_at + 2) {
            slot.copy_from_slice(&count);
        }
        Ok(())
    })
}

/// StartupMessage (untagged) with `name=value` parameters (`user` is required
/// by servers; `database`, `application_name`, GUCs are optional).
pub fn startup_message<'p>(
    out: &mut Vec<u8>,
    version: ProtocolVersion,
    params: impl IntoIterator<Item = (&'p str, &'p str)>,
) -> Result<(), ProtocolError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&version.code().to_be_bytes());
    let res = params
        .into_iter()
        .try_for_each(|(name, value)| {
            if name.is_empty() {
                return Err(ProtocolError::InvalidValue {
                    field: "startup parameter name",
                    value: 0,
                });
            }
            cstr(out, name, "startup parameter name")?;
            cstr(out, value, "startup parameter value")
        })
        .and_then(|()| {
            out.push(0);
            patch_len(out, start)
        });
    if res.is_err() {
        out.truncate(start);
    }
    res
}

/// SSLRequest (untagged).
pub fn ssl_request(out: &mut Vec<u8>) {
    out.extend_from_slice(&8i32.to_be_bytes());
    out.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
}

/// The server's "no encryption" answer to SSLRequest / GSSENCRequest: a bare `'N'`.
pub fn encryption_refused(out: &mut Vec<u8>) {
    out.push(b'N');
}

/// Query (`'Q'`).
pub fn query(out: &mut Vec<u8>, sql: &str) -> Result<(), ProtocolError> {
    tagged(out, b'Q', |out| cstr(out, sql, "query"))
}

/// Terminate (`'X'`).
pub fn terminate(out: &mut Vec<u8>) {
    out.extend_from_slice(&[b'X', 0, 0, 0, 4]);
}

/// PasswordMessage (`'p'`) carrying a cleartext password or an md5 hash.
pub fn password_message(out: &mut Vec<u8>, password: &str) -> Result<(), ProtocolError> {
    tagged(out, b'p', |out| cstr(out, password, "password"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::postgres::{
        BackendMessage, Direction, Framer, FrontendMessage, Progress, StartupPacket,
    };

    fn backend(buf: &[u8]) -> BackendMessage<'_> {
        let Progress::Complete(f) = Framer::new(Direction::Backend).next(buf).unwrap() else {
            panic!("incomplete")
        };
        assert_eq!(f.len(), buf.len(), "one message, exactly");
        BackendMessage::parse(&f).unwrap()
    }

    fn frontend(buf: &[u8]) -> FrontendMessage<'_> {
        let Progress::Complete(f) = Framer::new(Direction::Frontend).next(buf).unwrap() else {
            panic!("incomplete")
        };
        assert_eq!(f.len(), buf.len(), "one message, exactly");
        FrontendMessage::parse(&f).unwrap()
    }

    #[test]
    fn error_response_round_trips() {
        let mut out = Vec::new();
        let spec = ErrorSpec::error(SQLSTATE_INSUFFICIENT_PRIVILEGE, "denied by policy")
            .detail("identity ns/sa may not DROP")
            .hint("ask for approval");
        error_response(&mut out, &spec).unwrap();
        let BackendMessage::ErrorResponse(e) = backend(&out) else {
            panic!()
        };
        assert_eq!(e.severity(), Some("ERROR"));
        assert_eq!(e.get(b'S'), Some("ERROR"));
        assert_eq!(e.code(), Some("42501"));
        assert_eq!(e.message(), Some("denied by policy"));
        assert_eq!(e.get(b'D'), Some("identity ns/sa may not DROP"));
        assert_eq!(e.get(b'H'), Some("ask for approval"));

        let mut out = vec![1, 2];
        assert!(error_response(&mut out, &ErrorSpec::error("4250", "x")).is_err());
        assert!(error_response(&mut out, &ErrorSpec::error("42501", "a\0b")).is_err());
        assert_eq!(out, [1, 2], "nothing appended on error");
        notice_response(
            &mut out,
            &ErrorSpec {
                severity: "WARNING",
                ..ErrorSpec::error("01000", "w")
            },
        )
        .unwrap();
        assert!(matches!(
            backend(&out[2..]),
            BackendMessage::NoticeResponse(_)
        ));
    }

    #[test]
    fn small_builders_round_trip() {
        let mut out = Vec::new();
        ready_for_query(&mut out, TransactionStatus::Failed);
        assert_eq!(
            backend(&out),
            BackendMessage::ReadyForQuery(TransactionStatus::Failed)
        );
        out.clear();
        command_complete(&mut out, "SELECT 0").unwrap();
        assert_eq!(
            backend(&out),
            BackendMessage::CommandComplete { tag: "SELECT 0" }
        );
        out.clear();
        query(&mut out, "select 1").unwrap();
        assert_eq!(frontend(&out), FrontendMessage::Query { sql: "select 1" });
        out.clear();
        terminate(&mut out);
        assert_eq!(frontend(&out), FrontendMessage::Terminate);
        out.clear();
        password_message(&mut out, "pw").unwrap();
        let FrontendMessage::AuthResponse(b) = frontend(&out) else {
            panic!()
        };
        assert_eq!(crate::protocol::postgres::parse_password(b).unwrap(), "pw");
        out.clear();
        encryption_refused(&mut out);
        assert_eq!(out, b"N");
    }

    #[test]
    fn data_row_and_row_description_round_trip() {
        let mut out = Vec::new();
        let masked: &[u8] = b"****";
        data_row(
            &mut out,
            [Some(&b"1"[..]), None, Some(masked), Some(&b""[..])],
        )
        .unwrap();
        let BackendMessage::DataRow(v) = backend(&out) else {
            panic!()
        };
        assert_eq!(
            v.iter().collect::<Vec<_>>(),
            [Some(&b"1"[..]), None, Some(masked), Some(&b""[..])]
        );

        let f = FieldDescription {
            name: "email",
            table_oid: 16384,
            column: 2,
            type_oid: 25,
            type_size: -1,
            type_modifier: -1,
            format: 0,
        };
        let mut out = Vec::new();
        row_description(
            &mut out,
            [
                f,
                FieldDescription {
                    name: "n",
                    column: 3,
                    ..f
                },
            ],
        )
        .unwrap();
        let BackendMessage::RowDescription(fields) = backend(&out) else {
            panic!()
        };
        let got: Vec<_> = fields.iter().collect();
        assert_eq!(
            got,
            [
                f,
                FieldDescription {
                    name: "n",
                    column: 3,
                    ..f
                }
            ]
        );
    }

    #[test]
    fn startup_round_trips() {
        let mut out = Vec::new();
        startup_message(
            &mut out,
            ProtocolVersion::V3_2,
            [("user", "app"), ("database", "db")],
        )
        .unwrap();
        let Progress::Complete(p) = Framer::new(Direction::Frontend).next_startup(&out).unwrap()
        else {
            panic!()
        };
        assert_eq!(p.len(), out.len());
        let StartupPacket::Startup { version, params } = p.parse().unwrap() else {
            panic!()
        };
        assert_eq!(version, ProtocolVersion::V3_2);
        assert_eq!(
            params.iter().collect::<Vec<_>>(),
            [("user", "app"), ("database", "db")]
        );
        let len = p.len();
        assert!(startup_message(&mut out, ProtocolVersion::V3_0, [("", "x")]).is_err());
        assert_eq!(out.len(), len);

        let mut ssl = Vec::new();
        ssl_request(&mut ssl);
        let Progress::Complete(p) = Framer::new(Direction::Frontend).next_startup(&ssl).unwrap()
        else {
            panic!()
        };
        assert_eq!(p.parse().unwrap(), StartupPacket::SslRequest);
    }
}
