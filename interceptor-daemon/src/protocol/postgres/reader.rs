//! Bounds-checked cursor over a message body: every read either succeeds or
//! returns a typed error naming the field, so the parsers never index directly.

use super::{ProtocolError, Tag};

#[derive(Clone, Copy)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn bytes(
        &mut self,
        n: usize,
        field: &'static str,
    ) -> Result<&'a [u8], ProtocolError> {
        if n > self.buf.len() {
            return Err(ProtocolError::Truncated { field });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], ProtocolError> {
        let b = self.bytes(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn i16(&mut self, field: &'static str) -> Result<i16, ProtocolError> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn i32(&mut self, field: &'static str) -> Result<i32, ProtocolError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, ProtocolError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// A NUL-terminated byte string (terminator consumed, not returned).
    pub(crate) fn cstr_bytes(&mut self, field: &'static str) -> Result<&'a [u8], ProtocolError> {
        let Some(nul) = self.buf.iter().position(|&b| b == 0) else {
            return Err(ProtocolError::MissingNul { field });
        };
        let s = self.bytes(nul, field)?;
        self.bytes(1, field)?;
        Ok(s)
    }

    /// A NUL-terminated UTF-8 string.
    pub(crate) fn cstr(&mut self, field: &'static str) -> Result<&'a str, ProtocolError> {
        let b = self.cstr_bytes(field)?;
        std::str::from_utf8(b).map_err(|_| ProtocolError::InvalidUtf8 { field })
    }

    /// An Int16 element count that must not be negative.
    pub(crate) fn count16(&mut self, field: &'static str) -> Result<usize, ProtocolError> {
        let n = self.i16(field)?;
        usize::try_from(n).map_err(|_| ProtocolError::InvalidValue {
            field,
            value: n.into(),
        })
    }

    /// An Int32 length prefix followed by that many bytes; -1 is NULL.
    pub(crate) fn nullable_bytes(
        &mut self,
        field: &'static str,
    ) -> Result<Option<&'a [u8]>, ProtocolError> {
        let n = self.i32(field)?;
        if n == -1 {
            return Ok(None);
        }
        let len = usize::try_from(n).map_err(|_| ProtocolError::InvalidValue {
            field,
            value: n.into(),
        })?;
        self.bytes(len, field).map(Some)
    }

    /// The bytes consumed since `start` (an earlier copy of this reader).
    pub(crate) fn since(&self, start: &Reader<'a>) -> &'a [u8] {
        let used = start.buf.len().saturating_sub(self.buf.len());
        start.buf.get(..used).unwrap_or_default()
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Asserts the whole body was consumed.
    pub(crate) fn finish(&self, tag: u8) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::TrailingBytes {
                tag: Tag(tag),
                extra: self.buf.len(),
            })
        }
    }
}

/// Decodes a big-endian Int16 from a slice already known to hold two bytes;
/// used by the infallible iterators over pre-validated bodies.
pub(crate) fn be16(b: &[u8]) -> i16 {
    match b {
        [x, y, ..] => i16::from_be_bytes([*x, *y]),
        _ => 0,
    }
}

/// Big-endian Int32 counterpart of [`be16`].
pub(crate) fn be32(b: &[u8]) -> i32 {
    match b {
        [a, b, c, d, ..] => i32::from_be_bytes([*a, *b, *c, *d]),
        _ => 0,
    }
}
