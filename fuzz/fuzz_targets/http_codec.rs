//! Parses arbitrary bytes as HTTP/1.1 request and response heads and chunked
//! bodies; see `interceptor_daemon::protocol::http::fuzz`.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run http_codec`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    interceptor_daemon::protocol::http::fuzz::parse_all(data);
});
