//! Parses arbitrary bytes as Redis commands and scans them as replies (whole
//! and split); see `interceptor_daemon::protocol::redis::fuzz`.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run redis_codec`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    interceptor_daemon::protocol::redis::fuzz::parse_all(data);
});
