//! HTTP responses: status, content type and body length of each final
//! response the client receives (interim 1xx responses are not recorded).

use std::time::Instant;

use super::{Recorder, clip};
use crate::audit::record::{HttpResponse, ResponseSummary};

/// Watches the responses of one session as they are written to the client.
pub struct HttpRecorder {
    rec: Recorder,
    pending: Option<(Instant, HttpResponse)>,
    /// The body length is counted (none was declared).
    counting: bool,
}

impl HttpRecorder {
    pub fn new(rec: Recorder) -> HttpRecorder {
        HttpRecorder {
            rec,
            pending: None,
            counting: false,
        }
    }

    /// A final response head went to the client; `length` is its declared body
    /// length, if any. Recorded when its body ends ([`Self::body_done`]).
    pub fn head(&mut self, status: u16, headers: &[httparse::Header<'_>], length: Option<u64>) {
        self.flush();
        let content_type = headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-type"))
            .map(|h| clip(&String::from_utf8_lossy(h.value), 128).0);
        self.counting = length.is_none();
        self.pending = Some((
            Instant::now(),
            HttpResponse {
                status,
                content_type,
                length,
            },
        ));
    }

    /// Body bytes forwarded (counted when no length was declared).
    pub fn body(&mut self, n: usize) {
        // Chunked or until-close bodies: the bytes on the wire, framing included.
        if let Some((_, r)) = &mut self.pending
            && self.counting
        {
            *r.length.get_or_insert(0) += n as u64;
        }
    }

    /// The body ended (or there was none): record the response.
    pub fn body_done(&mut self) {
        self.flush();
    }

    fn flush(&mut self) {
        if let Some((started, r)) = self.pending.take() {
            self.rec.emit(started, ResponseSummary::Http(r));
        }
    }
}

impl Drop for HttpRecorder {
    fn drop(&mut self) {
        // A tunnel or an until-close body ends with the connection.
        self.flush();
    }
}
