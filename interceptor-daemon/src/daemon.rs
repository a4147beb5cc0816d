//! `interceptor run`: wires redirect → listener → handlers, and shuts down cleanly.
//!
//! Start-up order matters for "never a silent bypass": the listener is bound
//! first, then the programs are loaded, then the cgroup classification is
//! written, and only then are the programs attached.

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::{
    admin::{self, AdminState, Readiness},
    cgroups::CgroupIndex,
    config::Config,
    identity::Resolver,
    listener::{self, Shared},
    metrics::Metrics,
    policy::control::{Baseline, PolicyControl},
    redirect::{self, Redirector},
};

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    raise_nofile();
    let listeners = listener::bind(&cfg)
        .await
        .context("starting the listener")?;
    let admin_listener = match cfg.admin.as_ref().and_then(|a| a.address) {
        Some(address) => Some(admin::bind(address).await?),
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    let audit = match &cfg.audit {
        Some(a) => Some({
            let mut ac = crate::audit::AuditConfig::new(a.dir.clone(), cfg.node_name());
            ac.checkpoint_every_records = a.checkpoint_every.max(1);
            ac.segment_max_bytes = a.segment_bytes.max(4096);
            ac.linger = Duration::from_millis(a.linger_ms);
            ac.observer = Some(crate::session::observer(metrics.clone()));
            if let Some(r) = &a.retention {
                ac.retention_max_bytes = r.max_bytes;
                ac.retention_max_age = r.max_age;
            }
            let (log, report) = crate::audit::AuditLog::open(ac)
                .await
                .context("opening the audit log")?;
            if let Some(r) = &report.recovered {
                warn!(recovery = ?r, "audit log: a torn tail was cut and recorded");
            }
            log
        }),
        None => None,
    };
    let mask_key = match cfg.masking.as_ref().and_then(|m| m.key_file.as_deref()) {
        Some(path) => load_or_create_mask_key(path)
            .with_context(|| format!("masking key {}", path.display()))?,
        None => crate::masking::MaskKey::random()
            .map_err(|e| anyhow::anyhow!("masking key: no randomness: {e}"))?,
    };
    // Before anything is attached: a daemon that cannot start must not leave
    // pinned programs behind it.
    // Config::load already read and validated the policy file; the version
    // store decides whether an applied policy enforces instead.
    let control = {
        let m = metrics.clone();
        PolicyControl::start(
            Baseline {
                policy: cfg.policy.clone(),
                text: cfg.policy_text.clone(),
                file: cfg.policy_file.clone(),
                approvals: cfg.approvals.is_some(),
            },
            cfg.policy_versions_dir().as_deref(),
            Box::new(move |v| {
                m.policy_version.set(v as i64);
            }),
        )
        .context("opening the policy version store")?
    };
    let policy = control.handle().clone();
    let live = Arc::new(crate::live::Registry::default());
    let identities = Resolver::start(cfg.identity.clone(), &cfg.node_name(), metrics.clone())
        .await
        .context("starting the Kubernetes identity source")?;
    let (loaded, handles) = Redirector::load(&cfg)?;
    let index = Arc::new(CgroupIndex::new(
        cfg.redirect.cgroup_root.clone(),
        cfg.redirect.select_cgroups.clone(),
        Box::new(handles.cgroups),
    ));
    let (known, classified) = index.refresh();
    info!(cgroups_seen = known, classified, "cgroup tree scanned");
    let redirector = loaded.attach()?;
    let ready = Arc::new(Readiness::new(cfg.redirect.cgroup_root.clone()));
    ready.set_attached(true);

    let approvals = match &cfg.approvals {
        Some(a) => Some(
            crate::approvals::Approvals::open(a, metrics.clone(), audit.as_ref())
                .await
                .context("opening the approvals store")?,
        ),
        None => None,
    };
    let conns = Arc::new(handles.conns);
    let shared = Arc::new(Shared {
        node: cfg.node_name(),
        cfg: cfg.clone(),
        conns: conns.clone(),
        cgroups: index.clone(),
        metrics: metrics.clone(),
        identities,
        policy: policy.clone(),
        mask_key,
        audit: audit.clone(),
        approvals: approvals.clone(),
        classifier: Arc::new(
            crate::sql::Classifier::new(crate::sql::DangerousFunctions::builtin())
                .with_cross_check(cfg.sql.cross_check),
        ),
        next_id: AtomicU64::new(1),
        live: live.clone(),
    });
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let stats = Arc::new(handles.stats);
    if let Some(path) = cfg.admin_socket() {
        let l = crate::admin_socket::bind(&path)?;
        info!(path = %path.display(), "admin socket (approvals, policy, status, audit key; root only)");
        let state = Arc::new(crate::admin_socket::AdminSocket {
            approvals: approvals.clone(),
            allowed_uids: cfg
                .admin
                .as_ref()
                .map(|a| a.allowed_uids.clone())
                .unwrap_or_default(),
            policy: Some(control.clone()),
            live: Some(live.clone()),
            audit: audit.clone(),
        });
        tokio::spawn(crate::admin_socket::serve(
            l,
            path,
            state,
            stop.child_token(),
        ));
    }
    if let Some(l) = admin_listener {
        info!(address = %l.local_addr()?, "admin endpoint: /metrics /healthz /readyz");
        let state = Arc::new(AdminState {
            metrics: metrics.clone(),
            stats: stats.clone(),
            conns,
            cgroups: index.clone(),
            ready: ready.clone(),
        });
        tokio::spawn(admin::serve(l, state, stop.child_token()));
    }

    // Rescan the tree so new pods become SELECTED/EXCLUDED without waiting for
    // their first connection, and removed ones leave the kernel map.
    let rescan = {
        let index = index.clone();
        let stop = stop.clone();
        let every = cfg.redirect.rescan_interval();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {
                        let index = index.clone();
                        let _ = tokio::task::spawn_blocking(move || index.refresh()).await;
                    }
                }
            }
        })
    };

    let policy_watch = cfg.policy_file.clone().map(|path| {
        let m = metrics.clone();
        tokio::spawn(crate::policy::store::watch(
            control.clone(),
            path,
            Duration::from_secs(2),
            stop.clone(),
            move |outcome, version| {
                m.policy_reloads
                    .get_or_create(&crate::metrics::ReloadLabels {
                        result: outcome.as_str(),
                    })
                    .inc();
                m.policy_version.set(version as i64);
            },
        ))
    });

    let mut accept_tasks = Vec::new();
    for l in listeners {
        info!(address = %l.local_addr()?, "listening");
        accept_tasks.push(tokio::spawn(listener::serve(
            l,
            shared.clone(),
            stop.clone(),
            tasks.clone(),
        )));
    }
    info!(
        node = %shared.node,
        targets = cfg.targets.len(),
        threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "interceptor ready"
    );

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!(signal = which, "shutting down: draining connections");
    stop.cancel();
    for t in accept_tasks {
        let _ = t.await;
    }
    let _ = rescan.await;
    if let Some(w) = policy_watch {
        let _ = w.await;
    }
    // Detach before draining: from here on new connections are not intercepted,
    // which is the operator's explicit choice when stopping the daemon. Unless
    // another daemon follows (a rollout): then they are refused until it runs.
    ready.set_attached(false);
    let on_stop = match &cfg.redirect.handover {
        Some(h) if which == "SIGTERM" => {
            crate::handover::on_stop(h, cfg.identity.kubernetes.as_ref()).await
        }
        Some(_) => crate::handover::OnStop::Detach(format!("{which} is not a rollout")),
        None => crate::handover::OnStop::Detach("no redirect.handover".into()),
    };
    match on_stop {
        crate::handover::OnStop::Handover => {
            info!(
                "handing over: the DaemonSet still exists, so a new daemon follows; selected connections are refused until it runs"
            );
            redirector.release();
        }
        crate::handover::OnStop::Detach(why) => {
            if cfg.redirect.handover.is_some() {
                info!(reason = %why, "detaching: no daemon follows");
            }
            redirector.detach();
        }
    }
    log_kernel_stats(&stats);
    tasks.close();
    let grace = Duration::from_millis(cfg.proxy.shutdown_grace_ms) + Duration::from_millis(500);
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        warn!("connections still open after the grace period; exiting");
    }
    if let Some(a) = &audit {
        // Signs what the session wrote, so it verifies without an unsigned tail.
        if let Err(e) = a.close().await {
            warn!(error = %e, "closing the audit log");
        }
    }
    info!("stopped");
    Ok(())
}

fn log_kernel_stats(stats: &redirect::KernelStats) {
    let fields: Vec<String> = redirect::stat_names()
        .iter()
        .map(|(i, n)| format!("{n}={}", stats.get(*i)))
        .collect();
    info!(counters = %fields.join(" "), "kernel counters");
}

/// The masking pseudonym key: 32 bytes, owner-only; created on first start.
fn load_or_create_mask_key(path: &std::path::Path) -> anyhow::Result<crate::masking::MaskKey> {
    use std::{
        io::Write as _,
        os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    };
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            anyhow::ensure!(
                mode & 0o077 == 0,
                "mode {mode:o}: it must be readable by its owner only (0600)"
            );
            let bytes = std::fs::read(path)?;
            let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                anyhow::anyhow!("not a key file ({} bytes, expected 32)", bytes.len())
            })?;
            Ok(crate::masking::MaskKey::from_bytes(key))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            getrandom::getrandom(&mut key).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            f.write_all(&key)?;
            f.sync_all()?;
            info!(path = %path.display(), "masking key created");
            Ok(crate::masking::MaskKey::from_bytes(key))
        }
        Err(e) => Err(e.into()),
    }
}

/// Every proxied connection holds two descriptors, and the usual soft limit
/// (1024) would cap a node at ~500 connections: raise it to the hard limit, as
/// proxies do. The Helm chart / systemd unit set the hard limit.
fn raise_nofile() {
    let mut rlim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with a valid pointer to a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlim) != 0 {
            return;
        }
        let soft = rlim.rlim_cur;
        rlim.rlim_cur = rlim.rlim_max;
        if soft != rlim.rlim_max && libc::setrlimit(libc::RLIMIT_NOFILE, &rlim) != 0 {
            warn!(
                soft,
                hard = rlim.rlim_max,
                "could not raise RLIMIT_NOFILE to its hard limit"
            );
            return;
        }
    }
    info!(open_files = rlim.rlim_cur, "descriptor limit");
}
