//! The policy in force, swapped atomically on reload.
//!
//! Sessions read the current policy on every decision through a
//! [`PolicyHandle`], so a reload applies to connections already open without
//! dropping them, and no decision ever sees half of a policy: a new one is
//! parsed and validated completely before the single pointer swap. An invalid
//! file is rejected with its path, line and column, and the old policy keeps
//! enforcing.
//!
//! A policy kept in its own file (`policy_file:` in the configuration) is
//! reloaded on SIGHUP and when its content changes (polled: inotify is not
//! reliable for ConfigMap-mounted files, which are swapped by symlink).
//! In the daemon every installed policy is a recorded version and `policy
//! apply` over the admin socket is a second writer: [`super::control`] numbers
//! and records the versions and decides between an applied policy and the
//! file (last writer wins; a file change, not a poll, is a write).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::Policy;

/// A loaded policy with where and when it came from.
#[derive(Debug)]
pub struct Versioned {
    /// Increases by one with every accepted reload; starts at 1.
    pub version: u64,
    /// SHA-256 of the policy text (hex), to tell which file is enforcing.
    pub digest: String,
    pub loaded_at: SystemTime,
    /// `config`, the policy file's path, `apply` or `rollback:<version>`.
    pub source: String,
    /// Who installed it: `file:<path>`, `config`, or the admin socket caller.
    pub actor: String,
    pub policy: Policy,
}

/// Shared handle to the policy in force.
#[derive(Clone, Debug)]
pub struct PolicyHandle(Arc<ArcSwap<Versioned>>);

impl PolicyHandle {
    pub fn new(policy: Policy, source: impl Into<String>, digest: String) -> Self {
        let source = source.into();
        PolicyHandle(Arc::new(ArcSwap::from_pointee(Versioned {
            version: 1,
            digest,
            loaded_at: SystemTime::now(),
            actor: source.clone(),
            source,
            policy,
        })))
    }

    /// A handle starting at a version recorded elsewhere (the version history).
    pub fn from_versioned(v: Versioned) -> Self {
        PolicyHandle(Arc::new(ArcSwap::from_pointee(v)))
    }

    /// Installs a complete versioned policy; the caller numbers versions
    /// (see [`super::control`], which serialises writers).
    pub(crate) fn store(&self, v: Versioned) {
        self.0.store(Arc::new(v));
    }

    /// A fixed policy (tests, tools): version 1, digest of nothing.
    pub fn fixed(policy: Policy) -> Self {
        Self::new(policy, "fixed", String::new())
    }

    /// The policy in force now; cheap (one atomic load).
    pub fn current(&self) -> Arc<Versioned> {
        self.0.load_full()
    }

    /// The version in force, without taking a reference to the policy.
    pub fn version(&self) -> u64 {
        self.0.load().version
    }

    /// Installs a validated policy; returns its version.
    pub fn replace(&self, policy: Policy, source: impl Into<String>, digest: String) -> u64 {
        let version = self.0.load().version + 1;
        let source = source.into();
        self.0.store(Arc::new(Versioned {
            version,
            digest,
            loaded_at: SystemTime::now(),
            actor: source.clone(),
            source,
            policy,
        }));
        version
    }
}

/// Why a policy file was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum PolicyFileError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The message names line and column where the parser knows them.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// SHA-256 of a policy text, hex.
pub fn digest(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn read(path: &Path) -> Result<String, PolicyFileError> {
    std::fs::read_to_string(path).map_err(|source| PolicyFileError::Read {
        path: path.into(),
        source,
    })
}

/// Reads and validates a policy file: the document is the policy itself
/// (`default:` and `rules:` at the top level).
pub fn load_file(path: &Path) -> Result<(Policy, String), PolicyFileError> {
    let text = read(path)?;
    parse_text(path, &text)
}

/// Reads and validates a policy file; the policy, its digest and its text.
pub fn load_file_text(path: &Path) -> Result<(Policy, String, String), PolicyFileError> {
    let text = read(path)?;
    let (policy, digest) = parse_text(path, &text)?;
    Ok((policy, digest, text))
}

/// The inline `policy:` section of a configuration text, re-serialised as a
/// policy document (empty when there is none): what the version history
/// records for a policy that has no file of its own.
pub fn inline_text(config_text: &str) -> String {
    serde_yaml::from_str::<serde_yaml::Value>(config_text)
        .ok()
        .and_then(|v| v.get("policy").cloned())
        .and_then(|p| serde_yaml::to_string(&p).ok())
        .unwrap_or_default()
}

/// Parses the text of the policy file at `path`; the policy and its digest.
pub fn parse_text(path: &Path, text: &str) -> Result<(Policy, String), PolicyFileError> {
    let policy = Policy::parse(text).map_err(|message| PolicyFileError::Invalid {
        path: path.into(),
        message,
    })?;
    Ok((policy, digest(text)))
}

/// Outcome of one reload attempt, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    Applied,
    Unchanged,
    Rejected,
}

impl Reload {
    pub fn as_str(self) -> &'static str {
        match self {
            Reload::Applied => "applied",
            Reload::Unchanged => "unchanged",
            Reload::Rejected => "rejected",
        }
    }
}

/// Re-reads `path`; installs it when it parses, validates and differs.
pub fn reload(handle: &PolicyHandle, path: &Path) -> Reload {
    let text = read(path);
    install(handle, path, text)
}

/// Installs the text read from `path` when it parses, validates and differs.
fn install(handle: &PolicyHandle, path: &Path, text: Result<String, PolicyFileError>) -> Reload {
    match text.and_then(|text| parse_text(path, &text)) {
        Ok((policy, digest)) => {
            let current = handle.current();
            if current.digest == digest {
                return Reload::Unchanged;
            }
            let rules = policy.rules.len();
            let version = handle.replace(policy, path.display().to_string(), digest.clone());
            info!(
                path = %path.display(),
                version,
                rules,
                digest = &digest[..12],
                "policy reloaded"
            );
            Reload::Applied
        }
        Err(e) => {
            error!(error = %e, enforcing = handle.current().version, "policy rejected; the previous policy stays in force");
            Reload::Rejected
        }
    }
}

/// Reloads the policy file on SIGHUP and when its content changes, until
/// `stop`. `on_reload` sees every attempt that was not a no-op. Content is
/// compared with the file as last seen, not with the policy in force: after a
/// `policy apply` the file is only taken again once it changes (last writer
/// wins, see [`super::control`]).
pub async fn watch(
    control: Arc<super::control::PolicyControl>,
    path: PathBuf,
    every: Duration,
    stop: CancellationToken,
    on_reload: impl Fn(Reload, u64) + Send + 'static,
) {
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            error!(error = %e, "no SIGHUP handler; policy reloads by polling only");
            None
        }
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The last rejected digest: a broken file is reported once, not every tick.
    let mut rejected: Option<String> = None;
    loop {
        let by_signal = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        // Cheap change check first: only new content is parsed, from this read.
        let text = read(&path);
        let d = text.as_deref().ok().map(digest);
        if !by_signal && (d.as_deref() == Some(control.file_digest().as_str()) || d == rejected) {
            continue;
        }
        let p = path.clone();
        let c = control.clone();
        let outcome = tokio::task::spawn_blocking(move || c.file_changed(&p, text))
            .await
            .unwrap_or(Reload::Rejected);
        rejected = (outcome == Reload::Rejected).then_some(d).flatten();
        if outcome != Reload::Unchanged || by_signal {
            on_reload(outcome, control.handle().version());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_file_keeps_the_old_policy_and_names_the_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, "rules:\n  - {id: a, action: allow}\n").unwrap();
        let (p, d) = load_file(&path).unwrap();
        let h = PolicyHandle::new(p, "test", d);
        assert_eq!(reload(&h, &path), Reload::Unchanged);

        std::fs::write(&path, "rules:\n  - id: a\n    action: permit\n").unwrap();
        assert_eq!(reload(&h, &path), Reload::Rejected);
        let cur = h.current();
        assert_eq!(
            (cur.version, cur.policy.rules[0].action),
            (1, super::super::Action::Allow)
        );
        let e = load_file(&path).unwrap_err().to_string();
        assert!(
            e.contains("policy.yaml: line 3, column") && e.contains("permit"),
            "{e}"
        );

        std::fs::write(&path, "rules:\n  - {id: b, action: deny}\n").unwrap();
        assert_eq!(reload(&h, &path), Reload::Applied);
        let cur = h.current();
        assert_eq!((cur.version, cur.policy.rules[0].id.as_str()), (2, "b"));
    }
}
