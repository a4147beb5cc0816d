//! The root-only admin API of a running daemon, on a unix socket
//! (`admin.socket`, default [`DEFAULT_PATH`]).
//!
//! Protocol: newline-delimited JSON. The client writes one [`AdminRequest`]
//! line, the daemon answers one [`AdminResponse`] line and closes. Examples:
//!
//! ```text
//! {"op":"list","all":false}
//! {"op":"approve","id":"k3m9qzab","for_secs":3600,"scope":"statement","as_name":"alice"}
//! {"op":"deny","id":"k3m9qzab","reason":"not during the freeze","as_name":null}
//! {"op":"policy_apply","text":"default: deny\n...","path":"policy.yaml","as_name":null}
//! {"op":"policy_rollback","version":3}
//! {"op":"policy_show"} {"op":"policy_history"} {"op":"status"}
//! {"op":"audit_rotate_key","as_name":"alice"}
//! → {"ok":true,"requests":[...]} | {"ok":true,"request":{...}} | {"ok":false,"error":"..."}
//!   | {"ok":true,"policy":{version,time,actor,source,digest,text}} | {"ok":true,"versions":[...]}
//!   | {"ok":true,"connections":[...]} | {"ok":false,"invalid":true,"error":"policy.yaml: line 3, column 13: ..."}
//!   | {"ok":true,"public_key":"ed25519:<hex>"}
//! ```
//!
//! Access: the socket is created mode 0600 (root's, as the daemon runs as
//! root), and every connection's peer credentials (SO_PEERCRED) are checked
//! too, so a socket whose mode was loosened still refuses non-root callers
//! (unless their uid is in `admin.allowed_uids`). The caller's uid and user
//! name are the actor recorded with a decision; `as_name` (the CLI's `--as`)
//! adds a human name: `alice (uid 0 root)`.

use std::{
    ffi::CStr,
    io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    approvals::{Approvals, Request, Scope, Verdict},
    live::{LiveConn, Registry},
    policy::control::{Applied, ControlError, PolicyControl, VersionInfo},
};

pub const DEFAULT_PATH: &str = "/run/interceptor/admin.sock";

/// Longest request line accepted (a `policy_apply` carries a whole policy).
const MAX_REQUEST: u64 = 4 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminRequest {
    List {
        #[serde(default)]
        all: bool,
    },
    Approve {
        id: String,
        /// Also allow matching operations for this long (a grant).
        #[serde(default)]
        for_secs: Option<u64>,
        /// What the grant covers (default `statement`).
        #[serde(default)]
        scope: Option<Scope>,
        #[serde(default)]
        as_name: Option<String>,
    },
    Deny {
        id: String,
        reason: String,
        #[serde(default)]
        as_name: Option<String>,
    },
    /// Validate and install a policy text as a new version.
    PolicyApply {
        text: String,
        /// Names the text in error messages (the CLI's file path).
        #[serde(default)]
        path: Option<String>,
        #[serde(default)]
        as_name: Option<String>,
    },
    /// Apply an earlier version's text again, as a new version.
    PolicyRollback {
        version: u64,
        #[serde(default)]
        as_name: Option<String>,
    },
    /// The version in force, with its text.
    PolicyShow,
    /// Every recorded version (without texts).
    PolicyHistory,
    /// The open connections.
    Status,
    /// Replace the audit log's node key (a key rotation record signed by the
    /// old key); answers the new public key.
    AuditRotateKey {
        #[serde(default)]
        as_name: Option<String>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct AdminResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<Vec<Request>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Request>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<VersionInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<Vec<VersionInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<Vec<LiveConn>>,
    /// `audit_rotate_key`: the new public key, `ed25519:<hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Refused because the policy text does not parse or validate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invalid: bool,
    /// `policy_apply`: that text is already in force; no new version.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unchanged: bool,
}

impl AdminResponse {
    fn error(e: impl ToString) -> Self {
        AdminResponse {
            error: Some(e.to_string()),
            ..Default::default()
        }
    }
}

/// The message a refused caller gets (the CLI prints the same one when the
/// socket's mode already stops it).
pub fn needs_root(uid: u32) -> String {
    format!("permission denied: the admin socket needs root (uid 0); you are uid {uid}")
}

/// Whether `uid` may use the admin socket.
pub fn authorize(uid: u32, allowed_uids: &[u32]) -> Result<(), String> {
    if uid == 0 || allowed_uids.contains(&uid) {
        Ok(())
    } else {
        Err(needs_root(uid))
    }
}

/// The login name of `uid`, from the passwd database.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: an all-zero passwd is a valid out-parameter.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: buffers are owned and sized; getpwuid_r only writes into them.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so pw_name points into `buf`, NUL-terminated.
    let name = unsafe { CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// How a decision's author is recorded.
pub fn actor(uid: u32, as_name: Option<&str>) -> String {
    let user = user_name(uid).unwrap_or_else(|| "?".into());
    match as_name.map(str::trim).filter(|n| !n.is_empty()) {
        Some(name) => format!("{name} (uid {uid} {user})"),
        None => format!("{user} (uid {uid})"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another daemon is already serving the admin socket {0}")]
    InUse(PathBuf),
    #[error("admin socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Creates the socket (mode 0600), replacing a stale one left by a crash.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let io_err = |source| BindError::Io {
        path: path.into(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BindError::InUse(path.into()));
        }
        std::fs::remove_file(path).map_err(io_err)?;
    }
    let listener = UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    Ok(listener)
}

pub struct AdminSocket {
    pub approvals: Option<Arc<Approvals>>,
    pub allowed_uids: Vec<u32>,
    pub policy: Option<Arc<PolicyControl>>,
    pub live: Option<Arc<Registry>>,
    pub audit: Option<crate::audit::AuditLog>,
}

/// Serves until `stop`, then removes the socket.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    state: Arc<AdminSocket>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, &state).await {
                warn!(error = %e, "admin socket connection");
            }
        });
    }
    let _ = std::fs::remove_file(&path);
}

async fn connection(mut stream: UnixStream, state: &AdminSocket) -> io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let response = match authorize(uid, &state.allowed_uids) {
        Err(msg) => {
            warn!(uid, "admin socket: refused a caller that is not root");
            AdminResponse::error(msg)
        }
        Ok(()) => {
            let mut line = String::new();
            let (r, _) = stream.split();
            let mut reader = BufReader::new(r.take(MAX_REQUEST));
            let read = reader.read_line(&mut line);
            match tokio::time::timeout(Duration::from_secs(10), read).await {
                Err(_) => AdminResponse::error("no request within 10s"),
                Ok(Err(e)) => AdminResponse::error(format!("reading the request: {e}")),
                Ok(Ok(_)) => match serde_json::from_str::<AdminRequest>(&line) {
                    Err(e) => AdminResponse::error(format!("malformed request: {e}")),
                    Ok(req) => handle(req, uid, state).await,
                },
            }
        }
    };
    let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
    out.push(b'\n');
    stream.write_all(&out).await?;
    stream.shutdown().await
}

async fn handle(req: AdminRequest, uid: u32, state: &AdminSocket) -> AdminResponse {
    let req = match req {
        AdminRequest::Status => {
            return AdminResponse {
                ok: true,
                connections: Some(
                    state
                        .live
                        .as_ref()
                        .map(|l| l.snapshot())
                        .unwrap_or_default(),
                ),
                ..Default::default()
            };
        }
        AdminRequest::AuditRotateKey { as_name } => {
            return rotate_audit_key(state.audit.as_ref(), &actor(uid, as_name.as_deref())).await;
        }
        AdminRequest::PolicyApply { .. }
        | AdminRequest::PolicyRollback { .. }
        | AdminRequest::PolicyShow
        | AdminRequest::PolicyHistory => {
            let Some(control) = state.policy.clone() else {
                return AdminResponse::error("this daemon serves no policy control");
            };
            return tokio::task::spawn_blocking(move || policy_op(req, &control, uid))
                .await
                .unwrap_or_else(|e| AdminResponse::error(format!("policy operation failed: {e}")));
        }
        other => other,
    };
    let Some(approvals) = &state.approvals else {
        return AdminResponse::error("approvals are not configured on this daemon");
    };
    match req {
        AdminRequest::List { all } => match approvals.list(all).await {
            Ok(r) => AdminResponse {
                ok: true,
                requests: Some(r),
                ..Default::default()
            },
            Err(e) => AdminResponse::error(e),
        },
        AdminRequest::Approve {
            id,
            for_secs,
            scope,
            as_name,
        } => {
            let grant = match (for_secs, scope) {
                (None, Some(_)) => {
                    return AdminResponse::error("a grant scope needs a duration (--for)");
                }
                (Some(0), _) => return AdminResponse::error("a grant needs a positive duration"),
                (Some(s), scope) => {
                    Some((Duration::from_secs(s), scope.unwrap_or(Scope::Statement)))
                }
                (None, None) => None,
            };
            decided(
                approvals,
                &id,
                Verdict::Approve { grant },
                actor(uid, as_name.as_deref()),
            )
            .await
        }
        AdminRequest::Deny {
            id,
            reason,
            as_name,
        } => {
            let reason = reason.trim().to_string();
            if reason.is_empty() {
                return AdminResponse::error("a denial needs a reason");
            }
            decided(
                approvals,
                &id,
                Verdict::Deny { reason },
                actor(uid, as_name.as_deref()),
            )
            .await
        }
        // Answered above, before approvals are needed.
        AdminRequest::PolicyApply { .. }
        | AdminRequest::PolicyRollback { .. }
        | AdminRequest::PolicyShow
        | AdminRequest::PolicyHistory
        | AdminRequest::Status
        | AdminRequest::AuditRotateKey { .. } => AdminResponse::error("not an approvals request"),
    }
}

/// Policy operations (blocking: the version store syncs to disk).
fn policy_op(req: AdminRequest, control: &PolicyControl, uid: u32) -> AdminResponse {
    let applied = |r: Result<Applied, ControlError>, what: &str| match r {
        Ok(Applied::New(v)) => {
            info!(version = v.version, actor = %v.actor, source = %v.source, "admin socket: {what}");
            AdminResponse {
                ok: true,
                policy: Some(v.info(false)),
                ..Default::default()
            }
        }
        Ok(Applied::Unchanged(_)) => AdminResponse {
            ok: true,
            unchanged: true,
            policy: Some(VersionInfo {
                text: None,
                ..control.current()
            }),
            ..Default::default()
        },
        Err(e @ ControlError::Invalid(_)) => AdminResponse {
            invalid: true,
            ..AdminResponse::error(e)
        },
        Err(e) => AdminResponse::error(e),
    };
    match req {
        AdminRequest::PolicyApply {
            text,
            path,
            as_name,
        } => {
            let label = path.unwrap_or_else(|| "policy".into());
            let who = actor(uid, as_name.as_deref());
            applied(
                control.apply(&text, &label, &who, "apply"),
                "policy applied",
            )
        }
        AdminRequest::PolicyRollback { version, as_name } => {
            let who = actor(uid, as_name.as_deref());
            applied(control.rollback(version, &who), "policy rolled back")
        }
        AdminRequest::PolicyShow => AdminResponse {
            ok: true,
            policy: Some(control.current()),
            ..Default::default()
        },
        AdminRequest::PolicyHistory => match control.history() {
            Ok(h) => AdminResponse {
                ok: true,
                versions: Some(h.iter().map(|r| r.info(false)).collect()),
                ..Default::default()
            },
            Err(e) => AdminResponse::error(e),
        },
        _ => AdminResponse::error("not a policy operation"),
    }
}

/// The key rotation record has no field for who asked (its format is fixed
/// by the segment version), so the actor goes to the daemon's log with the
/// new key.
async fn rotate_audit_key(log: Option<&crate::audit::AuditLog>, actor: &str) -> AdminResponse {
    let Some(log) = log else {
        return AdminResponse::error("this daemon writes no audit log (no `audit` section)");
    };
    match log.rotate_key().await {
        Ok(k) => {
            let key = crate::audit::keys::public_text(&k);
            info!(actor, public_key = %key, "admin socket: audit key rotated");
            AdminResponse {
                ok: true,
                public_key: Some(key),
                ..Default::default()
            }
        }
        Err(e) => {
            warn!(actor, error = %e, "admin socket: audit key rotation failed");
            AdminResponse::error(format!("audit key rotation failed: {e}"))
        }
    }
}

async fn decided(a: &Approvals, id: &str, v: Verdict, actor: String) -> AdminResponse {
    match a.decide(id, v, &actor).await {
        Ok(r) => {
            info!(
                id,
                actor,
                state = r.state.as_str(),
                "admin socket: decision"
            );
            AdminResponse {
                ok: true,
                request: Some(r),
                ..Default::default()
            }
        }
        Err(e) => AdminResponse::error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_and_allowed_uids() {
        assert!(authorize(0, &[]).is_ok());
        assert_eq!(
            authorize(65534, &[]).unwrap_err(),
            "permission denied: the admin socket needs root (uid 0); you are uid 65534"
        );
        assert!(authorize(1000, &[1000]).is_ok());
        assert!(authorize(1001, &[1000]).is_err());
    }

    #[test]
    fn actors_name_uid_and_user() {
        assert_eq!(actor(0, None), "root (uid 0)");
        assert_eq!(actor(0, Some("alice")), "alice (uid 0 root)");
        assert_eq!(actor(0, Some("  ")), "root (uid 0)");
    }

    #[test]
    fn request_lines_parse() {
        let r: AdminRequest =
            serde_json::from_str(r#"{"op":"approve","id":"ab","for_secs":60,"scope":"target"}"#)
                .unwrap();
        assert_eq!(
            r,
            AdminRequest::Approve {
                id: "ab".into(),
                for_secs: Some(60),
                scope: Some(Scope::Target),
                as_name: None
            }
        );
        assert!(serde_json::from_str::<AdminRequest>(r#"{"op":"drop"}"#).is_err());
    }

    async fn ask(path: &Path, line: &str) -> AdminResponse {
        let mut s = UnixStream::connect(path).await.unwrap();
        s.write_all(line.as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        serde_json::from_str(&answer).unwrap()
    }

    #[tokio::test]
    async fn rotates_the_audit_key_of_the_log_it_serves() {
        // This test's user is allowed whoever runs it.
        let me = unsafe { libc::geteuid() };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let log_dir = dir.path().join("audit");
        let (log, opened) =
            crate::audit::AuditLog::open(crate::audit::AuditConfig::new(&log_dir, "n"))
                .await
                .unwrap();
        let start = |audit| {
            let stop = CancellationToken::new();
            let state = Arc::new(AdminSocket {
                approvals: None,
                allowed_uids: vec![me],
                policy: None,
                live: None,
                audit,
            });
            let task = tokio::spawn(serve(
                bind(&path).unwrap(),
                path.clone(),
                state,
                stop.clone(),
            ));
            (stop, task)
        };
        let (stop, task) = start(None);
        let r = ask(&path, "{\"op\":\"audit_rotate_key\"}\n").await;
        assert_eq!(
            r.error.as_deref(),
            Some("this daemon writes no audit log (no `audit` section)")
        );
        stop.cancel();
        task.await.unwrap();

        let (stop, task) = start(Some(log.clone()));
        let r = ask(
            &path,
            "{\"op\":\"audit_rotate_key\",\"as_name\":\"alice\"}\n",
        )
        .await;
        assert!(r.ok, "{r:?}");
        let key = r.public_key.unwrap();
        let on_disk = crate::audit::keys::load(&log_dir.join("node.key")).unwrap();
        assert_eq!(
            key,
            crate::audit::keys::public_text(&on_disk.verifying_key())
        );
        assert_ne!(key, crate::audit::keys::public_text(&opened.public_key));
        stop.cancel();
        task.await.unwrap();
        log.close().await.unwrap();
        let report = crate::audit::verify_dir(&log_dir, Some(&opened.public_key)).unwrap();
        assert_eq!(report.key_rotations, 1);
    }

    #[tokio::test]
    async fn serves_over_the_socket_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/admin.sock");
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A second daemon must not steal a live socket.
        assert!(matches!(bind(&path), Err(BindError::InUse(_))));
        let stop = CancellationToken::new();
        let state = Arc::new(AdminSocket {
            approvals: None,
            allowed_uids: vec![],
            policy: None,
            live: None,
            audit: None,
        });
        let task = tokio::spawn(serve(listener, path.clone(), state, stop.clone()));
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(b"{\"op\":\"list\"}\n").await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        let resp: AdminResponse = serde_json::from_str(&answer).unwrap();
        // Tests run as root (uid 0) or not: either way the answer is a clear error.
        let uid = unsafe { libc::geteuid() };
        let expected = if uid == 0 {
            "approvals are not configured on this daemon".to_string()
        } else {
            needs_root(uid)
        };
        assert_eq!((resp.ok, resp.error), (false, Some(expected)));
        stop.cancel();
        task.await.unwrap();
        assert!(!path.exists(), "the socket is removed at shutdown");
    }
}
