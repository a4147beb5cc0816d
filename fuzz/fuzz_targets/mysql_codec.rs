//! Frames arbitrary bytes as MySQL packets and reads each as a server
//! handshake and a client response; see
//! `interceptor_daemon::protocol::mysql::fuzz`.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run mysql_codec`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    interceptor_daemon::protocol::mysql::fuzz::parse_all(data);
});
