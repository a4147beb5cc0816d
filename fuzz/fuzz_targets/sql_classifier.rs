//! Classifies arbitrary text as PostgreSQL and MySQL SQL, and checks that a
//! twin sharing its decision-cache fingerprint classifies alike; see
//! `interceptor_daemon::sql::fuzz`.
//!
//! Run: `cd fuzz && cargo +nightly fuzz run sql_classifier`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    interceptor_daemon::sql::fuzz::classify_all(data);
});
