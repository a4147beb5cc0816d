//! Policy versions: every policy the daemon enforces is numbered and recorded
//! (version, SHA-256 digest, actor, time, source, full text) in a sled
//! database (`admin.policy_versions`, default `<audit.dir>/policy-versions`),
//! and installed with one atomic swap of the [`PolicyHandle`].
//!
//! Two writers feed it, serialised by one lock so version numbers never
//! collide:
//!
//! * `interceptor policy apply FILE` / `policy rollback N` over the admin
//!   socket: the daemon parses and validates the text (an error names the
//!   file, line and column; the old policy keeps enforcing), records the
//!   version with the caller (`root (uid 0)`) as actor and source `apply` (or
//!   `rollback:N`), then swaps it in.
//! * the policy file watcher (`policy_file:`, a ConfigMap): a *change of the
//!   file's content* becomes a new version with actor `file:<path>`.
//!
//! Last writer wins. An applied policy stays in force until the file's
//! content changes (or another apply); the watcher compares the file with the
//! file as last seen, not with the policy in force, so an apply is not undone
//! by the next poll. At startup the latest version is restored only if it was
//! applied and the file (or the inline `policy:` section) still has the
//! digest it had when that apply happened; otherwise the file wins and is
//! recorded as a new version (unless it is already the latest version).
//!
//! Without a version store (no `audit.dir`, no `admin.policy_versions`) the
//! history lives in memory for this run only and `apply` is refused, since an
//! applied policy would silently vanish at the next restart.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use super::{
    Action, Policy,
    store::{self, PolicyFileError, PolicyHandle, Reload, Versioned},
};

/// One recorded policy version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionRecord {
    pub version: u64,
    /// Nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// `root (uid 0)`, `file:<path>` or `config`.
    pub actor: String,
    /// `apply`, `rollback:<version>`, the policy file's path, or `config`.
    pub source: String,
    /// SHA-256 of `text`, hex.
    pub digest: String,
    /// Installed through the admin socket (apply or rollback).
    pub applied: bool,
    /// Digest of the policy file (or inline policy) as last seen when this
    /// version was installed: an applied version is restored at startup only
    /// while the file still has it.
    pub base_digest: String,
    /// The full policy text.
    pub text: String,
}

/// A version as the admin socket and the CLI show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionInfo {
    pub version: u64,
    /// RFC 3339, UTC.
    pub time: String,
    pub actor: String,
    pub source: String,
    pub digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl VersionRecord {
    pub fn info(&self, with_text: bool) -> VersionInfo {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(self.time_ns);
        VersionInfo {
            version: self.version,
            time: humantime::format_rfc3339_seconds(t).to_string(),
            actor: self.actor.clone(),
            source: self.source.clone(),
            digest: self.digest.clone(),
            text: with_text.then(|| self.text.clone()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The policy text does not parse or validate (the message names the
    /// file, line and column).
    #[error("{0}")]
    Invalid(String),
    #[error(
        "`policy apply` needs a durable version store: configure `audit.dir` or `admin.policy_versions`"
    )]
    NoStore,
    #[error("no policy version {0}")]
    NoVersion(u64),
    #[error("policy version store: {0}")]
    Store(#[from] sled::Error),
    #[error("policy version record: {0}")]
    Record(#[from] serde_json::Error),
}

/// The policy the configuration names: its file (or inline section) text.
pub struct Baseline {
    pub policy: Policy,
    pub text: String,
    /// The policy file; `None` for an inline policy.
    pub file: Option<PathBuf>,
    /// Whether `approvals:` is configured (`require_approval` rules need it).
    pub approvals: bool,
}

/// What an apply did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A new version is in force.
    New(VersionRecord),
    /// The text is the policy already in force; no new version.
    Unchanged(u64),
}

struct State {
    /// Digest of the policy file (inline policy) as last accepted.
    file_digest: String,
    /// Text of the version in force.
    text: String,
    /// The history when there is no store.
    memory: Vec<VersionRecord>,
}

/// The policy in force and its recorded versions.
pub struct PolicyControl {
    handle: PolicyHandle,
    db: Option<sled::Db>,
    approvals: bool,
    state: Mutex<State>,
    on_change: Box<dyn Fn(u64) + Send + Sync>,
}

fn key(version: u64) -> [u8; 8] {
    version.to_be_bytes()
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Parses and checks a policy text the way the configuration would.
fn check(text: &str, label: &str, approvals: bool) -> Result<Policy, String> {
    let policy = Policy::parse(text).map_err(|e| format!("{label}: {e}"))?;
    if !approvals
        && let Some(r) = policy
            .rules
            .iter()
            .find(|r| r.action == Action::RequireApproval)
    {
        return Err(format!(
            "{label}: rule `{}` requires approval, but the daemon has no `approvals:` section",
            r.id
        ));
    }
    Ok(policy)
}

impl PolicyControl {
    /// Opens the version store (if any) and decides which policy enforces at
    /// startup (see the module docs); `on_change` sees every new version.
    pub fn start(
        base: Baseline,
        store_dir: Option<&Path>,
        on_change: Box<dyn Fn(u64) + Send + Sync>,
    ) -> Result<Arc<Self>, ControlError> {
        let db = match store_dir {
            Some(d) => Some(crate::kv::open(&sled::Config::new().path(d))?),
            None => None,
        };
        let base_digest = store::digest(&base.text);
        let (source, actor) = match &base.file {
            Some(p) => (p.display().to_string(), format!("file:{}", p.display())),
            None => ("config".to_string(), "config".to_string()),
        };
        let latest: Option<VersionRecord> = match &db {
            Some(db) => match db.last()? {
                Some((_, v)) => Some(serde_json::from_slice(&v)?),
                None => None,
            },
            None => None,
        };
        let versioned = |r: &VersionRecord, policy: Policy| Versioned {
            version: r.version,
            digest: r.digest.clone(),
            loaded_at: SystemTime::now(),
            source: r.source.clone(),
            actor: r.actor.clone(),
            policy,
        };
        let restored = match &latest {
            Some(l) if l.applied && l.base_digest == base_digest => {
                match check(
                    &l.text,
                    &format!("policy version {}", l.version),
                    base.approvals,
                ) {
                    Ok(p) => {
                        info!(
                            version = l.version,
                            actor = %l.actor,
                            digest = &l.digest[..l.digest.len().min(12)],
                            "restored the applied policy (the policy file is unchanged since)"
                        );
                        Some((versioned(l, p), l.text.clone(), None))
                    }
                    Err(e) => {
                        warn!(error = %e, "the applied policy no longer loads; the configured policy enforces");
                        None
                    }
                }
            }
            Some(l) if !l.applied && l.digest == base_digest && l.source == source => {
                Some((versioned(l, base.policy.clone()), base.text.clone(), None))
            }
            _ => None,
        };
        let (current, text, record) = match restored {
            Some(r) => r,
            None => {
                let record = VersionRecord {
                    version: latest.as_ref().map_or(1, |l| l.version + 1),
                    time_ns: now_ns(),
                    actor,
                    source,
                    digest: base_digest.clone(),
                    applied: false,
                    base_digest: base_digest.clone(),
                    text: base.text.clone(),
                };
                if latest.as_ref().is_some_and(|l| l.applied) {
                    info!(
                        version = record.version,
                        "the policy file changed since the last apply: the file enforces"
                    );
                }
                let v = versioned(&record, base.policy);
                (v, base.text, Some(record))
            }
        };
        let version = current.version;
        let control = PolicyControl {
            handle: PolicyHandle::from_versioned(current),
            db,
            approvals: base.approvals,
            state: Mutex::new(State {
                file_digest: base_digest,
                text,
                memory: Vec::new(),
            }),
            on_change,
        };
        if let Some(r) = record {
            let mut st = control.lock();
            control.record(&mut st, &r)?;
        }
        (control.on_change)(version);
        Ok(Arc::new(control))
    }

    /// The handle sessions decide with.
    pub fn handle(&self) -> &PolicyHandle {
        &self.handle
    }

    /// Digest of the policy file as last accepted.
    pub fn file_digest(&self) -> String {
        self.lock().file_digest.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every write
        // is one assignment): keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, st: &mut State, r: &VersionRecord) -> Result<(), ControlError> {
        match &self.db {
            Some(db) => {
                db.insert(key(r.version), serde_json::to_vec(r)?)?;
                db.flush()?;
            }
            None => st.memory.push(r.clone()),
        }
        Ok(())
    }

    /// Records and installs a new version (the state lock held).
    fn install(
        &self,
        st: &mut State,
        policy: Policy,
        mut record: VersionRecord,
    ) -> Result<VersionRecord, ControlError> {
        record.version = self.handle.version() + 1;
        self.record(st, &record)?;
        self.handle.store(Versioned {
            version: record.version,
            digest: record.digest.clone(),
            loaded_at: SystemTime::now(),
            source: record.source.clone(),
            actor: record.actor.clone(),
            policy,
        });
        st.text = record.text.clone();
        info!(
            version = record.version,
            actor = %record.actor,
            source = %record.source,
            digest = &record.digest[..12],
            "policy version installed"
        );
        (self.on_change)(record.version);
        Ok(record)
    }

    /// `policy apply`: `label` names the text in error messages (the CLI's
    /// file path); `source` is `apply` or `rollback:<n>`.
    pub fn apply(
        &self,
        text: &str,
        label: &str,
        actor: &str,
        source: &str,
    ) -> Result<Applied, ControlError> {
        if self.db.is_none() {
            return Err(ControlError::NoStore);
        }
        let policy = check(text, label, self.approvals).map_err(ControlError::Invalid)?;
        let digest = store::digest(text);
        let mut st = self.lock();
        let current = self.handle.current();
        if current.digest == digest {
            return Ok(Applied::Unchanged(current.version));
        }
        let record = VersionRecord {
            version: 0,
            time_ns: now_ns(),
            actor: actor.into(),
            source: source.into(),
            digest,
            applied: true,
            base_digest: st.file_digest.clone(),
            text: text.into(),
        };
        self.install(&mut st, policy, record).map(Applied::New)
    }

    /// `policy rollback N`: version N's text applied again as a new version.
    pub fn rollback(&self, version: u64, actor: &str) -> Result<Applied, ControlError> {
        let old = self
            .history()?
            .into_iter()
            .find(|r| r.version == version)
            .ok_or(ControlError::NoVersion(version))?;
        self.apply(
            &old.text,
            &format!("policy version {version}"),
            actor,
            &format!("rollback:{version}"),
        )
    }

    /// The policy file's new content (from the watcher): a new version when
    /// it parses and differs from the policy in force.
    pub fn file_changed(&self, path: &Path, text: Result<String, PolicyFileError>) -> Reload {
        let parsed = text.and_then(|t| {
            let (p, d) = store::parse_text(path, &t)?;
            Ok((p, d, t))
        });
        let (policy, digest, text) = match parsed {
            Ok(x) => x,
            Err(e) => {
                error!(error = %e, enforcing = self.handle.version(), "policy rejected; the previous policy stays in force");
                return Reload::Rejected;
            }
        };
        if let Err(e) = check(&text, &path.display().to_string(), self.approvals) {
            error!(error = %e, enforcing = self.handle.version(), "policy rejected; the previous policy stays in force");
            return Reload::Rejected;
        }
        let mut st = self.lock();
        // Only a change of the file's content is a write (SIGHUP on an
        // unchanged file leaves an applied policy in force).
        if st.file_digest == digest {
            return Reload::Unchanged;
        }
        st.file_digest = digest.clone();
        if self.handle.current().digest == digest {
            return Reload::Unchanged;
        }
        let record = VersionRecord {
            version: 0,
            time_ns: now_ns(),
            actor: format!("file:{}", path.display()),
            source: path.display().to_string(),
            digest: digest.clone(),
            applied: false,
            base_digest: digest,
            text,
        };
        match self.install(&mut st, policy.clone(), record.clone()) {
            Ok(_) => Reload::Applied,
            Err(e) => {
                // The file is the configured truth: it enforces even when its
                // version cannot be recorded.
                error!(error = %e, "recording the policy file's version failed; it enforces unrecorded");
                let version = self.handle.version() + 1;
                self.handle.store(Versioned {
                    version,
                    digest: record.digest,
                    loaded_at: SystemTime::now(),
                    source: record.source,
                    actor: record.actor,
                    policy,
                });
                st.text = record.text;
                (self.on_change)(version);
                Reload::Applied
            }
        }
    }

    /// Every recorded version, oldest first.
    pub fn history(&self) -> Result<Vec<VersionRecord>, ControlError> {
        match &self.db {
            Some(db) => db
                .iter()
                .values()
                .map(|v| Ok(serde_json::from_slice(&v?)?))
                .collect(),
            None => Ok(self.lock().memory.clone()),
        }
    }

    /// The version in force, with its text.
    pub fn current(&self) -> VersionInfo {
        let st = self.lock();
        let v = self.handle.current();
        VersionInfo {
            version: v.version,
            time: humantime::format_rfc3339_seconds(v.loaded_at).to_string(),
            actor: v.actor.clone(),
            source: v.source.clone(),
            digest: v.digest.clone(),
            text: Some(st.text.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "rules:\n  - {id: a, action: allow}\n";
    const B: &str = "rules:\n  - {id: b, action: deny}\n";
    const C: &str = "rules:\n  - {id: c, action: allow}\n";

    fn base(text: &str, file: &Path) -> Baseline {
        Baseline {
            policy: Policy::parse(text).unwrap(),
            text: text.into(),
            file: Some(file.into()),
            approvals: false,
        }
    }

    fn start(text: &str, file: &Path, store: &Path) -> Arc<PolicyControl> {
        PolicyControl::start(base(text, file), Some(store), Box::new(|_| {})).unwrap()
    }

    fn rule(c: &PolicyControl) -> String {
        c.handle().current().policy.rules[0].id.clone()
    }

    #[test]
    fn applied_versions_survive_restarts_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (file, store) = (dir.path().join("p.yaml"), dir.path().join("versions"));
        let c = start(A, &file, &store);
        assert_eq!((c.handle().version(), rule(&c)), (1, "a".into()));
        let applied = c.apply(B, "new.yaml", "root (uid 0)", "apply").unwrap();
        assert!(matches!(&applied, Applied::New(r) if r.version == 2 && r.actor == "root (uid 0)"));
        assert_eq!(
            c.apply(B, "new.yaml", "root (uid 0)", "apply").unwrap(),
            Applied::Unchanged(2)
        );
        // Invalid: position named, nothing changes.
        let e = c
            .apply(
                "rules:\n  - id: x\n    action: permit\n",
                "bad.yaml",
                "r",
                "apply",
            )
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("bad.yaml: line 3, column"), "{e}");
        assert_eq!(c.handle().version(), 2);
        drop(c);

        // Restart, file unchanged: the applied version is restored.
        let c = start(A, &file, &store);
        assert_eq!((c.handle().version(), rule(&c)), (2, "b".into()));
        // A poll of the unchanged file does not undo the apply.
        assert_eq!(c.file_changed(&file, Ok(A.into())), Reload::Unchanged);
        assert_eq!(rule(&c), "b");
        // The file changes: last writer wins.
        assert_eq!(c.file_changed(&file, Ok(C.into())), Reload::Applied);
        assert_eq!((c.handle().version(), rule(&c)), (3, "c".into()));
        drop(c);

        // Restart with the file as last seen: the file's version, no new record.
        let c = start(C, &file, &store);
        assert_eq!((c.handle().version(), rule(&c)), (3, "c".into()));
        c.apply(B, "new.yaml", "root (uid 0)", "apply").unwrap();
        drop(c);
        // Restart after the file changed while the daemon was down: the file wins.
        let c = start(A, &file, &store);
        assert_eq!((c.handle().version(), rule(&c)), (5, "a".into()));
        let h = c.history().unwrap();
        let summary: Vec<(u64, &str, &str)> = h
            .iter()
            .map(|r| (r.version, r.actor.as_str(), r.source.as_str()))
            .collect();
        let f = format!("file:{}", file.display());
        let p = file.display().to_string();
        assert_eq!(
            summary,
            vec![
                (1, f.as_str(), p.as_str()),
                (2, "root (uid 0)", "apply"),
                (3, f.as_str(), p.as_str()),
                (4, "root (uid 0)", "apply"),
                (5, f.as_str(), p.as_str()),
            ]
        );
        // Rollback re-applies version 2's text as version 6.
        assert!(
            matches!(c.rollback(2, "root (uid 0)").unwrap(), Applied::New(r) if r.version == 6 && r.source == "rollback:2")
        );
        assert_eq!(rule(&c), "b");
        assert!(matches!(
            c.rollback(42, "r"),
            Err(ControlError::NoVersion(42))
        ));
    }

    #[test]
    fn apply_needs_a_store_and_approvals_for_approval_rules() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        let c = PolicyControl::start(base(A, &file), None, Box::new(|_| {})).unwrap();
        assert!(matches!(
            c.apply(B, "b.yaml", "r", "apply"),
            Err(ControlError::NoStore)
        ));
        assert_eq!(c.history().unwrap().len(), 1);
        let c = start(A, &file, &dir.path().join("v"));
        let e = c
            .apply(
                "rules:\n  - {id: hold, action: require_approval}\n",
                "h.yaml",
                "r",
                "apply",
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("rule `hold` requires approval"), "{e}");
    }
}
