//! The connections open right now, for `interceptor status` (served over the
//! admin socket). The listener registers a connection once its identity,
//! target and protocol are known and the returned guard removes it however
//! the connection task ends (including being dropped at shutdown).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

/// One open connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LiveConn {
    pub id: u64,
    /// `namespace/service-account`; empty when unidentified (passed through
    /// unselected, or let through by `identity.unknown: allow`).
    pub identity: String,
    pub target: String,
    pub protocol: String,
    pub client: String,
    pub orig_dst: String,
    pub pid: u32,
    /// RFC 3339, UTC.
    pub since: String,
}

/// Open connections by id.
#[derive(Debug, Default)]
pub struct Registry {
    conns: Mutex<HashMap<u64, LiveConn>>,
}

/// Removes its connection from the registry when dropped.
pub struct Registered {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, LiveConn>> {
        // Every write is one insert or remove: a poisoned map is consistent.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a connection until the guard is dropped.
    pub fn register(self: &Arc<Self>, mut conn: LiveConn) -> Registered {
        if conn.since.is_empty() {
            conn.since = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        }
        let id = conn.id;
        self.lock().insert(id, conn);
        Registered {
            registry: self.clone(),
            id,
        }
    }

    /// The open connections, oldest first.
    pub fn snapshot(&self) -> Vec<LiveConn> {
        let mut v: Vec<LiveConn> = self.lock().values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }
}

/// Open connections counted per identity, target and protocol.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Group {
    pub identity: String,
    pub target: String,
    pub protocol: String,
    pub connections: usize,
}

pub fn group(conns: &[LiveConn]) -> Vec<Group> {
    let mut counts: std::collections::BTreeMap<(&str, &str, &str), usize> = Default::default();
    for c in conns {
        *counts
            .entry((&c.identity, &c.target, &c.protocol))
            .or_default() += 1;
    }
    counts
        .into_iter()
        .map(|((i, t, p), n)| Group {
            identity: i.into(),
            target: t.into(),
            protocol: p.into(),
            connections: n,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: u64, identity: &str) -> LiveConn {
        LiveConn {
            id,
            identity: identity.into(),
            target: "db".into(),
            protocol: "postgres".into(),
            client: "10.0.0.1:1".into(),
            orig_dst: "10.0.0.2:5432".into(),
            pid: 1,
            since: String::new(),
        }
    }

    #[test]
    fn guards_deregister_and_groups_count() {
        let r = Arc::new(Registry::default());
        let a = r.register(conn(1, "shop/api"));
        let b = r.register(conn(2, "shop/api"));
        let c = r.register(conn(3, "shop/batch"));
        let g = group(&r.snapshot());
        assert_eq!(
            g.iter()
                .map(|g| (g.identity.as_str(), g.connections))
                .collect::<Vec<_>>(),
            vec![("shop/api", 2), ("shop/batch", 1)]
        );
        drop(b);
        drop(c);
        assert_eq!(r.snapshot().len(), 1);
        assert!(!r.snapshot()[0].since.is_empty());
        drop(a);
        assert!(r.snapshot().is_empty());
    }
}
