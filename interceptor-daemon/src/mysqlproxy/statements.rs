//! Prepared statements of one MySQL session (binary protocol): each
//! `COM_STMT_EXECUTE` is one audited decision, like a PostgreSQL Execute.
//!
//! The client executes by a statement id that only the server's answer to
//! `COM_STMT_PREPARE` tells, so both halves share this registry: the client
//! half queues what each forwarded command expects and the text of each
//! forwarded prepare; the server half follows the answers
//! ([`AnswerTracker`]) and files each prepared text under its id. An execute
//! reuses the prepare-time decision while the policy is the one it was made
//! under, and is decided again from the text after a reload or a rule's time
//! window boundary; an id the registry does not know is refused (fail
//! closed), as is everything after the tracker lost its place.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use crate::{
    policy::Decision,
    protocol::mysql::{Answer, AnswerTracker, PrepareOutcome},
};

/// Statement id MariaDB reads as "the statement prepared last".
pub(super) const LAST_PREPARED: u32 = u32::MAX;

/// More open statements than this in one session: further prepares are
/// refused (the server's own `max_prepared_stmt_count` is global).
pub(super) const MAX_STATEMENTS: usize = 16_384;

/// A statement allowed at prepare time.
#[derive(Debug, Clone)]
pub(super) struct Statement {
    pub(super) sql: Arc<str>,
    pub(super) decision: Decision,
    /// Kinds, tables and literal-free text (`read on [customers]: SELECT * FROM customers WHERE id = ?`).
    pub(super) description: Arc<str>,
    /// Policy version and window boundary the decision was made under.
    pub(super) version: u64,
    pub(super) stale_at: Option<SystemTime>,
    /// A one-time approval obtained at prepare (the allow it came to and
    /// the request id): it covers the first execute.
    pub(super) approval: Option<(Decision, String)>,
}

impl Statement {
    pub(super) fn current(&self, version: u64, now: SystemTime) -> bool {
        self.version == version && self.stale_at.is_none_or(|t| now < t)
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// What each forwarded command's answer will be, oldest first.
    asked: VecDeque<Answer>,
    /// Forwarded prepares whose answer has not come yet, oldest first.
    preparing: VecDeque<Statement>,
    by_id: HashMap<u32, Statement>,
    /// The id of the statement prepared last (MariaDB's id -1).
    last: Option<u32>,
}

/// The registry both halves of a session share.
#[derive(Debug, Clone, Default)]
pub(super) struct Statements(Arc<Mutex<Inner>>);

impl Statements {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A command was forwarded; `prepared`: the statement, if it is a prepare.
    pub(super) fn forwarded(&self, cmd: u8, payload: &[u8], prepared: Option<Statement>) {
        let Some(answer) = Answer::to(cmd, payload) else {
            return;
        };
        let mut g = self.lock();
        g.asked.push_back(answer);
        if let Some(s) = prepared {
            g.preparing.push_back(s);
        }
    }

    /// Open statements (filed or awaiting their id).
    pub(super) fn open(&self) -> usize {
        let g = self.lock();
        g.by_id.len() + g.preparing.len()
    }

    /// The statement `id` executes, if this session prepared it.
    pub(super) fn get(&self, id: u32) -> Option<Statement> {
        let g = self.lock();
        if id == LAST_PREPARED {
            // Executed right after its prepare, before the id came back.
            if let Some(s) = g.preparing.back() {
                return Some(s.clone());
            }
            return g.last.and_then(|id| g.by_id.get(&id)).cloned();
        }
        g.by_id.get(&id).cloned()
    }

    /// The statement `id` was decided again (after a policy change).
    pub(super) fn update(&self, id: u32, s: Statement) {
        let mut g = self.lock();
        let id = if id == LAST_PREPARED {
            match g.last {
                Some(id) => id,
                None => return,
            }
        } else {
            id
        };
        if let Some(slot) = g.by_id.get_mut(&id) {
            *slot = s;
        }
    }

    /// `COM_STMT_CLOSE`: the server forgets the statement without answering.
    pub(super) fn close(&self, id: u32) {
        let mut g = self.lock();
        g.by_id.remove(&id);
        if g.last == Some(id) {
            g.last = None;
        }
    }

    /// `COM_RESET_CONNECTION`: the server drops every prepared statement.
    /// Prepares still in flight keep their place in the queue.
    pub(super) fn reset(&self) {
        let mut g = self.lock();
        g.by_id.clear();
        g.last = None;
    }

    /// Follows one server packet (command phase) with `t`, filing a
    /// prepared statement under the id its answer gives.
    pub(super) fn on_server_packet(&self, t: &mut AnswerTracker, p: &[u8]) {
        let outcome = if t.idle() {
            let mut g = self.lock();
            t.on_packet(p, || g.asked.pop_front())
        } else {
            t.on_packet(p, || None)
        };
        let Some(outcome) = outcome else {
            return;
        };
        let mut g = self.lock();
        let stmt = g.preparing.pop_front();
        match (outcome, stmt) {
            (PrepareOutcome::Prepared(id), Some(s)) => {
                g.by_id.insert(id, s);
                g.last = Some(id);
            }
            // A failed prepare leaves no statement; "the last one" is no
            // longer one this registry can vouch for.
            _ => g.last = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        policy::Action,
        protocol::mysql::{COM_PING, COM_QUERY, COM_STMT_EXECUTE, COM_STMT_PREPARE},
    };

    fn stmt(sql: &str) -> Statement {
        Statement {
            sql: sql.into(),
            decision: Decision {
                action: Action::Allow,
                rule: "r".into(),
                reason: String::new(),
            },
            description: "read on [t]".into(),
            version: 1,
            stale_at: None,
            approval: None,
        }
    }

    fn prepare_ok(id: u32) -> Vec<u8> {
        let mut p = vec![0x00];
        p.extend_from_slice(&id.to_le_bytes());
        p.extend_from_slice(&[0; 7]);
        p
    }

    #[test]
    fn prepared_texts_are_filed_under_the_ids_the_server_gives() {
        let r = Statements::default();
        let mut t = AnswerTracker::new(true);
        r.forwarded(COM_QUERY, b"\x03INSERT", None);
        r.forwarded(COM_STMT_PREPARE, b"\x16SELECT a", Some(stmt("SELECT a")));
        r.forwarded(COM_STMT_PREPARE, b"\x16SELECT b", Some(stmt("SELECT b")));
        assert_eq!(r.open(), 2);
        // Pipelined: the last prepare, before its id came back.
        assert_eq!(&*r.get(LAST_PREPARED).unwrap().sql, "SELECT b");
        // The INSERT's OK is 12 bytes with a 0 header, like a prepare's OK.
        r.on_server_packet(&mut t, b"\x00\x01\x00\x02\x00\x00\x00ABCDE");
        assert!(r.get(1).is_none());
        r.on_server_packet(&mut t, &prepare_ok(5));
        r.on_server_packet(&mut t, b"\xff\x28\x04#42000no such table");
        assert_eq!(&*r.get(5).unwrap().sql, "SELECT a");
        // After a failed prepare, "the last one" is refused.
        assert!(r.get(LAST_PREPARED).is_none());
        r.forwarded(COM_STMT_EXECUTE, b"\x17\x05\x00\x00\x00", None);
        r.forwarded(COM_PING, b"\x0e", None);
        r.forwarded(COM_STMT_PREPARE, b"\x16SELECT c", Some(stmt("SELECT c")));
        r.on_server_packet(&mut t, b"\x00\x00\x00\x02\x00\x00\x00");
        r.on_server_packet(&mut t, b"\x00\x00\x00\x02\x00\x00\x00");
        r.on_server_packet(&mut t, &prepare_ok(6));
        assert_eq!(&*r.get(LAST_PREPARED).unwrap().sql, "SELECT c");
        r.close(6);
        assert!(r.get(6).is_none() && r.get(LAST_PREPARED).is_none());
        r.reset();
        assert!(r.get(5).is_none());
        assert_eq!(r.open(), 0);
    }
}
