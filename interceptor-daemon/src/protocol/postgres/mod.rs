//! PostgreSQL frontend/backend protocol (v3.0 and v3.2): pure, zero-copy codec.
//!
//! The interceptor sits between a workload and its database and must see every
//! statement before the server does, so this module is deliberately free of I/O:
//! the connection handler owns the sockets and buffers, and calls in here to
//!
//! * **frame** ([`Framer`]): find the next complete message in a byte buffer and
//!   return a borrowed view of it, or say how many more bytes are needed. There
//!   are two phases: the untagged *startup* phase (StartupMessage, SSLRequest,
//!   GSSENCRequest, CancelRequest; plus the one-byte answer to an encryption
//!   request from the server) and the tagged *regular* phase, in both directions.
//!   Oversized lengths are rejected as soon as the header is seen, so a hostile
//!   peer cannot make the proxy buffer a gigabyte before being refused;
//! * **parse** ([`FrontendMessage`], [`BackendMessage`], [`StartupPacket`]): typed
//!   views that borrow from the frame. Repeated fields (Bind parameters, DataRow
//!   columns, RowDescription fields, error fields...) are validated once when the
//!   message is parsed and then exposed as non-allocating iterators;
//! * **build** ([`build`]): the messages the proxy itself emits (a
//!   protocol-native `ErrorResponse` with SQLSTATE 42501 for a denied statement,
//!   `ReadyForQuery`, a `DataRow` with masked values, ...).
//!
//! Every function is total: malformed input of any kind yields a typed
//! [`ProtocolError`], never a panic (see the `fuzz` module and `fuzz/`).
//!
//! Text fields (SQL, identifiers, error fields) are exposed as `&str`: a field
//! that is not valid UTF-8 is an [`ProtocolError::InvalidUtf8`]. The policy layer
//! cannot classify what it cannot read, so it fails closed; the integrator can
//! still forward a frame whose typed parse failed when it has no need to inspect
//! it.

pub mod auth;
mod backend;
pub mod build;
mod framer;
mod frontend;
#[doc(hidden)]
pub mod fuzz;
mod reader;

pub use backend::{
    Authentication, BackendMessage, CopyResponse, ErrorFields, FieldDescription, Fields,
    FieldsIter, NegotiateProtocolVersion, NotificationResponse, SaslMechanisms, StrList,
    TransactionStatus,
};
pub use framer::{
    Direction, Frame, Framer, Limits, Progress, StartupFrame, encryption_response,
    looks_like_tls_client_hello,
};
pub use frontend::{
    Bind, Close, Describe, Execute, FormatCodes, FrontendMessage, FunctionCall, Oids, Parse,
    ProtocolVersion, SaslInitialResponse, StartupPacket, StartupParams, Target, Values, ValuesIter,
    parse_password,
};

/// Code of an SSLRequest in the startup phase (`1234 << 16 | 5679`).
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// Code of a GSSENCRequest (`1234 << 16 | 5680`).
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// Code of a CancelRequest (`1234 << 16 | 5678`).
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// Longest cancel key protocol 3.2 allows (BackendKeyData / CancelRequest).
pub const MAX_CANCEL_KEY_LEN: usize = 256;

/// Everything that can be wrong with bytes on the wire (or with a message the
/// proxy is asked to build). Field names are static strings naming the protocol
/// field, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("message length {len} is invalid (must be at least {min})")]
    BadLength { len: i64, min: u32 },
    #[error("message {tag:?} of {len} bytes exceeds the {max}-byte limit")]
    Oversized { tag: Tag, len: u64, max: u32 },
    #[error("unknown {direction:?} message tag {tag:?}")]
    UnknownTag { tag: Tag, direction: Direction },
    #[error("unknown startup request code {0:#010x}")]
    UnknownStartupCode(u32),
    #[error("unsupported protocol version {major}.{minor}")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("message truncated while reading {field}")]
    Truncated { field: &'static str },
    #[error("string field {field} has no NUL terminator")]
    MissingNul { field: &'static str },
    #[error("field {field} is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    #[error("field {field} has invalid value {value}")]
    InvalidValue { field: &'static str, value: i64 },
    #[error("{extra} unexpected trailing bytes after message {tag:?}")]
    TrailingBytes { tag: Tag, extra: usize },
    #[error("string for {field} contains a NUL byte")]
    InteriorNul { field: &'static str },
    #[error("message to build is longer than the protocol allows")]
    TooLong,
}

/// A message tag, printed as a character in errors and logs (`'Q'`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tag(pub u8);

impl std::fmt::Debug for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}'", self.0 as char)
        } else {
            write!(f, "{:#04x}", self.0)
        }
    }
}
