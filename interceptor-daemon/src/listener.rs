//! Listener: accepts redirected connections, recovers what the kernel recorded
//! about each (original destination, cgroup, pid, uid), attributes it to its
//! cgroup and hands it to the protocol handler (TCP pass-through for now).
//!
//! A connection without a kernel record was not redirected by our programs (a
//! direct connection to the listener, or a record already gone): it is refused,
//! never forwarded somewhere guessed.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use interceptor_common::OrigDst;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{
    audit::{self, AccessRecord, AuditLog},
    cgroups::CgroupIndex,
    config::{Config, Protocol},
    forward, httpproxy,
    identity::{Identity, Resolver},
    metrics::{BytesLabels, ConnLabels, Direction, Failure, FailureLabels, Metrics, TargetLabels},
    mysqlproxy, pgproxy,
    policy::store::PolicyHandle,
    redirect::ConnTable,
    redisproxy,
    sql::Classifier,
};

/// Everything a connection needs from the daemon; shared by all tasks.
pub struct Shared {
    pub cfg: Config,
    pub node: String,
    pub conns: Arc<ConnTable>,
    pub cgroups: Arc<CgroupIndex>,
    pub metrics: Arc<Metrics>,
    pub identities: Resolver,
    pub policy: PolicyHandle,
    pub classifier: Arc<Classifier>,
    pub mask_key: crate::masking::MaskKey,
    pub audit: Option<AuditLog>,
    pub approvals: Option<Arc<crate::approvals::Approvals>>,
    pub next_id: AtomicU64,
    /// Open connections, for `interceptor status`.
    pub live: Arc<crate::live::Registry>,
}

impl ConnMeta {
    /// The audit record every entry about this connection starts from.
    pub fn audit_base(&self, node: &str) -> AccessRecord {
        let id = self.identity.as_ref();
        AccessRecord {
            time_ns: 0,
            node: node.into(),
            identity: audit::Identity {
                namespace: id.map(|i| i.namespace.clone()).unwrap_or_default(),
                service_account: id.map(|i| i.service_account.clone()).unwrap_or_default(),
                pod: id
                    .and_then(|i| i.pod_uid.clone())
                    .or_else(|| self.cgroup.clone())
                    .unwrap_or_default(),
                verification: match id {
                    Some(i) => audit::Verification::Other(i.method.as_str().into()),
                    None => audit::Verification::Cgroup,
                },
                claims: id.map(|i| i.claims.clone()).unwrap_or_default(),
            },
            target: self.target.clone(),
            protocol: match self.protocol {
                Protocol::Tcp => audit::Protocol::Tcp,
                Protocol::Postgres => audit::Protocol::Postgres,
                Protocol::Redis => audit::Protocol::Redis,
                Protocol::Http => audit::Protocol::Http,
                Protocol::Mysql => audit::Protocol::Mysql,
                // Resolved before a session starts; unresolved = pass-through.
                Protocol::Auto => audit::Protocol::Tcp,
            },
            operation: String::new(),
            decision: audit::Decision::Allow,
            rule_id: None,
            approval_ref: None,
            outcome: None,
            duration_ns: 0,
            session_id: self.session_id(node),
            connection_id: self.id,
        }
    }

    /// The session id every record of this connection carries.
    pub fn session_id(&self, node: &str) -> String {
        format!("{node}-{}", self.id)
    }
}

/// What is known about one redirected connection.
#[derive(Debug, Clone)]
pub struct ConnMeta {
    pub id: u64,
    pub client: SocketAddr,
    pub orig_dst: SocketAddr,
    pub target: String,
    pub cgroup_id: u64,
    /// cgroup path relative to the cgroup root (`None` if it vanished already).
    pub cgroup: Option<String>,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// False when the cgroup turned out not to be selected (it was intercepted
    /// only because it was too new to be classified): the connection is passed
    /// through untouched.
    pub selected: bool,
    /// Who is behind the connection (None: passed through unselected, or an
    /// unknown identity let through by `identity.unknown: allow`).
    pub identity: Option<Identity>,
    /// The handler: the target's protocol for selected connections, plain TCP
    /// for pass-through ones.
    pub protocol: Protocol,
}

fn ip_from16(a: [u8; 16]) -> IpAddr {
    Ipv6Addr::from(a).to_canonical()
}

/// Binds every configured listener address.
pub async fn bind(cfg: &Config) -> std::io::Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    for addr in cfg.listen_addrs() {
        let sock = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        sock.set_reuseaddr(true)?;
        if addr.is_ipv6() {
            socket2::SockRef::from(&sock).set_only_v6(true)?;
        }
        sock.bind(addr)
            .map_err(|e| std::io::Error::new(e.kind(), format!("binding listener {addr}: {e}")))?;
        out.push(sock.listen(4096)?);
    }
    Ok(out)
}

/// Accepts until `stop` is cancelled; connection tasks are tracked in `tasks`.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                let stop = stop.clone();
                tasks.spawn(async move { handle(stream, peer, shared, stop).await });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn lookup_record(shared: &Shared, peer: SocketAddr, local: SocketAddr) -> Option<OrigDst> {
    // The client's sockops program writes the record before it sends the final
    // handshake ACK, so it is normally there; a short retry covers scheduling.
    for attempt in 0..3 {
        if let Some(o) = shared.conns.lookup(peer, local) {
            return Some(o);
        }
        tokio::time::sleep(Duration::from_millis(1 << attempt)).await;
    }
    None
}

async fn handle(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, stop: CancellationToken) {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let local = match stream.local_addr() {
        Ok(l) => l,
        Err(_) => return,
    };
    let Some(orig) = lookup_record(&shared, peer, local).await else {
        warn!(conn_id = id, client = %peer, "refusing a connection that has no redirect record");
        shared
            .metrics
            .failures
            .get_or_create(&FailureLabels {
                target: "unknown".into(),
                reason: Failure::NoRedirectRecord,
            })
            .inc();
        forward::reset(stream);
        return;
    };
    let orig_dst = SocketAddr::new(ip_from16(orig.addr), orig.port);
    let target_cfg = shared.cfg.targets.get(orig.target_id as usize);
    let target = target_cfg
        .map(|t| t.name.clone())
        .unwrap_or_else(|| format!("#{}", orig.target_id));
    let index = shared.cgroups.clone();
    let cg = tokio::task::spawn_blocking(move || index.lookup(orig.cgroup_id))
        .await
        .ok()
        .flatten();
    // A cgroup unknown even after a rescan is gone already; the kernel only
    // redirects from selected or not yet classified cgroups: treat as selected.
    let selected = cg.as_ref().is_none_or(|c| c.selected);
    let cgroup = cg.map(|c| c.path);
    let identity = if selected {
        match shared.identities.resolve(cgroup.as_deref()).await {
            Ok(i) => Some(i),
            Err(why) if shared.identities.refuses(&why) => {
                warn!(
                    conn_id = id,
                    client = %peer,
                    target_name = %target,
                    orig_dst = %orig_dst,
                    cgroup_id = orig.cgroup_id,
                    pid = orig.pid,
                    reason = %why,
                    "refusing a connection from an unknown identity (identity.unknown: deny)"
                );
                shared
                    .metrics
                    .failures
                    .get_or_create(&FailureLabels {
                        target: target.clone(),
                        reason: Failure::UnknownIdentity,
                    })
                    .inc();
                forward::reset(stream);
                return;
            }
            Err(_) => None,
        }
    } else {
        None
    };
    let meta = ConnMeta {
        id,
        client: peer,
        orig_dst,
        target,
        cgroup_id: orig.cgroup_id,
        selected,
        cgroup,
        pid: orig.pid,
        uid: orig.uid,
        gid: orig.gid,
        identity,
        protocol: match target_cfg {
            Some(t) if selected => t.protocol,
            _ => Protocol::Tcp,
        },
    };
    let span = info_span!(
        "conn",
        conn_id = meta.id,
        target_name = %meta.target,
        orig_dst = %meta.orig_dst,
        cgroup_id = meta.cgroup_id,
    );
    async move {
        tokio::select! {
            _ = passthrough(stream, &meta, &shared) => {}
            _ = wait_for_shutdown(&stop, &shared) => {
                info!("closing connection: daemon shutting down");
            }
        }
    }
    .instrument(span)
    .await
}

async fn wait_for_shutdown(stop: &CancellationToken, shared: &Shared) {
    stop.cancelled().await;
    tokio::time::sleep(Duration::from_millis(shared.cfg.proxy.shutdown_grace_ms)).await;
}

/// Keeps `connections_active` right however the connection task ends
/// (including being dropped at shutdown).
struct ActiveGuard<'a> {
    metrics: &'a Metrics,
    labels: TargetLabels,
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.metrics.active.get_or_create(&self.labels).dec();
    }
}

async fn passthrough(mut client: TcpStream, meta: &ConnMeta, shared: &Shared) {
    let started = Instant::now();
    let _ = client.set_nodelay(true);
    let m = &shared.metrics;
    let labels = TargetLabels {
        target: meta.target.clone(),
        protocol: meta.protocol.as_str(),
    };
    m.connections
        .get_or_create(&ConnLabels {
            identity: meta
                .identity
                .as_ref()
                .map(Identity::name)
                .unwrap_or_default(),
            target: meta.target.clone(),
            protocol: meta.protocol.as_str(),
            intercepted: meta.selected,
        })
        .inc();
    m.active.get_or_create(&labels).inc();
    let _active = ActiveGuard {
        metrics: m,
        labels: labels.clone(),
    };
    let fail = |reason| {
        m.failures
            .get_or_create(&FailureLabels {
                target: meta.target.clone(),
                reason,
            })
            .inc()
    };
    debug!(client = %meta.client, pid = meta.pid, "accepted");
    let mut upstream = match forward::connect_upstream(
        meta.orig_dst,
        shared.cfg.redirect.socket_mark,
        Duration::from_millis(shared.cfg.proxy.connect_timeout_ms),
    )
    .await
    {
        Ok(u) => {
            m.upstream_connect
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            u
        }
        Err(e) => {
            fail(Failure::UpstreamConnect);
            warn!(
                client = %meta.client,
                cgroup = meta.cgroup.as_deref().unwrap_or("?"),
                pid = meta.pid,
                error = %e,
                "upstream connect failed; resetting the client"
            );
            forward::reset(client);
            return;
        }
    };
    let resolved;
    let meta = match meta.protocol {
        Protocol::Auto => {
            resolved = ConnMeta {
                protocol: crate::session::resolve_auto(&client, &upstream).await,
                ..meta.clone()
            };
            &resolved
        }
        _ => meta,
    };
    let _live = shared.live.register(crate::live::LiveConn {
        id: meta.id,
        identity: meta
            .identity
            .as_ref()
            .map(Identity::name)
            .unwrap_or_default(),
        target: meta.target.clone(),
        protocol: meta.protocol.as_str().into(),
        client: meta.client.to_string(),
        orig_dst: meta.orig_dst.to_string(),
        pid: meta.pid,
        since: String::new(),
    });
    let result = match meta.protocol {
        Protocol::Tcp | Protocol::Auto => {
            Box::pin(forward::pump(
                &mut client,
                &mut upstream,
                shared.cfg.proxy.buffer_bytes,
            ))
            .await
        }
        Protocol::Postgres => {
            let inject =
                crate::pgauth::Injection::for_target(&shared.cfg, &meta.target, meta.orig_dst).map(
                    |i| {
                        i.with_token_auth(
                            shared.identities.token_verifier(),
                            meta.identity.clone(),
                            shared
                                .audit
                                .clone()
                                .map(|log| (log, meta.audit_base(&shared.node))),
                            shared.metrics.clone(),
                        )
                    },
                );
            // Boxed, as every handler: the connection's future would otherwise
            // be as large as the largest protocol's state, idle or not.
            Box::pin(pgproxy::run(
                client,
                upstream,
                crate::session::SessionCtx::holding(shared, meta),
                inject,
                shared.mask_key.clone(),
            ))
            .await
            .map_err(|e| match e {
                pgproxy::SessionError::Io(e) => e,
                other => std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string()),
            })
        }
        Protocol::Redis => Box::pin(redisproxy::run(
            client,
            upstream,
            crate::session::SessionCtx::new(shared, meta),
        ))
        .await
        .map_err(|e| match e {
            redisproxy::SessionError::Io(e) => e,
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string()),
        }),
        Protocol::Mysql => Box::pin(mysqlproxy::run(
            client,
            upstream,
            crate::session::SessionCtx::holding(shared, meta),
            crate::mysqlauth::Injection::for_target(&shared.cfg, &meta.target, meta.orig_dst),
            shared.mask_key.clone(),
        ))
        .await
        .map_err(|e| match e {
            mysqlproxy::SessionError::Io(e) => e,
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string()),
        }),
        Protocol::Http => Box::pin(httpproxy::run(
            client,
            upstream,
            crate::session::SessionCtx::new(shared, meta),
        ))
        .await
        .map_err(|e| match e {
            httpproxy::SessionError::Io(e) => e,
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other.to_string()),
        }),
    };
    let (bytes_up, bytes_down, error) = match &result {
        Ok(t) => (t.up, t.down, None),
        Err(e) => {
            fail(Failure::Transfer);
            (0, 0, Some(e.to_string()))
        }
    };
    let bytes = |direction| {
        m.bytes.get_or_create(&BytesLabels {
            target: meta.target.clone(),
            direction,
        })
    };
    bytes(Direction::Up).inc_by(bytes_up);
    bytes(Direction::Down).inc_by(bytes_down);
    m.duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    info!(
        conn_id = meta.id,
        target_name = %meta.target,
        orig_dst = %meta.orig_dst,
        cgroup_id = meta.cgroup_id,
        node = %shared.node,
        identity = %meta.identity.as_ref().map(Identity::name).unwrap_or_default(),
        identity_method = meta.identity.as_ref().map(|i| i.method.as_str()).unwrap_or(""),
        pod_uid = meta.identity.as_ref().and_then(|i| i.pod_uid.as_deref()).unwrap_or(""),
        container_id = meta.identity.as_ref().and_then(|i| i.container_id.as_deref()).unwrap_or(""),
        client = %meta.client,
        cgroup = meta.cgroup.as_deref().unwrap_or("?"),
        selected = meta.selected,
        pid = meta.pid,
        uid = meta.uid,
        gid = meta.gid,
        protocol = meta.protocol.as_str(),
        bytes_up,
        bytes_down,
        duration_ms = started.elapsed().as_millis() as u64,
        error = error.as_deref().unwrap_or(""),
        "connection closed"
    );
    if let Some(log) = &shared.audit {
        let rec = AccessRecord {
            time_ns: audit::record::now_ns(),
            operation: format!(
                "connection to {} from pid {} uid {}",
                meta.orig_dst, meta.pid, meta.uid
            ),
            outcome: error.as_ref().map(|e| audit::Outcome::Error(e.clone())),
            duration_ns: started.elapsed().as_nanos() as u64,
            ..meta.audit_base(&shared.node)
        };
        // Nobody waits on a closed connection's record.
        crate::session::submit(&shared.metrics, log, rec).await;
    }
}
