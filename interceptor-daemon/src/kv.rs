//! Opening the sled stores (policy versions, approvals, the audit index).
//!
//! sled holds an exclusive lock on its directory until its background flusher
//! thread has let go of the database, a moment after the last handle is
//! dropped. A store reopened right away (a daemon restarted in place, a
//! component restarted within the process) would fail on a lock nobody keeps,
//! so opening waits a little for it.

use std::time::{Duration, Instant};

/// How long a lock held by a closing database is waited for.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Opens `config`, waiting up to `LOCK_WAIT` while its lock is still held.
pub fn open(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(e)) if is_lock_held(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn is_lock_held(e: &std::io::Error) -> bool {
    // sled reports the failed flock as a custom error wrapping EWOULDBLOCK.
    e.raw_os_error() == Some(libc::EWOULDBLOCK) || e.to_string().contains("could not acquire lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopens_a_store_right_after_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = sled::Config::new().path(dir.path().join("db"));
        for i in 0u8..20 {
            let db = open(&cfg).unwrap();
            db.insert([i], &[i]).unwrap();
            drop(db);
        }
        let db = open(&cfg).unwrap();
        assert_eq!(db.len(), 20);
    }

    #[test]
    fn a_lock_held_by_a_live_database_is_still_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = sled::Config::new().path(dir.path().join("db"));
        let _held = open(&cfg).unwrap();
        let started = Instant::now();
        assert!(open(&cfg).is_err());
        assert!(started.elapsed() >= LOCK_WAIT);
    }
}
