//! Frames arbitrary bytes as PostgreSQL traffic (both directions, startup and
//! regular phase) and parses every message; see
//! `interceptor_daemon::protocol::postgres::fuzz`.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run pg_framer`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    interceptor_daemon::protocol::postgres::fuzz::frame_and_parse_all(data);
});
