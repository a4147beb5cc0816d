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
    redirect::{self, Redirector},
};

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let listeners = listener::bind(&cfg)
        .await
        .context("starting the listener")?;
    let admin_listener = match &cfg.admin {
        Some(a) => Some(admin::bind(a.address).await?),
        None => None,
    };
    let audit = match &cfg.audit {
        Some(a) => Some({
            let mut ac = crate::audit::AuditConfig::new(a.dir.clone(), cfg.node_name());
            ac.checkpoint_every_records = a.checkpoint_every.max(1);
            ac.segment_max_bytes = a.segment_bytes.max(4096);
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
    // Before anything is attached: a daemon that cannot start must not leave
    // pinned programs behind it.
    let metrics = Arc::new(Metrics::new());
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

    let conns = Arc::new(handles.conns);
    let shared = Arc::new(Shared {
        node: cfg.node_name(),
        cfg: cfg.clone(),
        conns: conns.clone(),
        cgroups: index.clone(),
        metrics: metrics.clone(),
        identities,
        policy: Arc::new(cfg.policy.clone()),
        audit: audit.clone(),
        classifier: Arc::new(crate::sql::Classifier::new(
            crate::sql::DangerousFunctions::builtin(),
        )),
        next_id: AtomicU64::new(1),
    });
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let stats = Arc::new(handles.stats);
    if let Some(l) = admin_listener {
        info!(address = %l.local_addr()?, "admin endpoint: /metrics /healthz /readyz");
        let state = Arc::new(AdminState {
            metrics,
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
    info!(node = %shared.node, targets = cfg.targets.len(), "interceptor ready");

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!(
        signal = which,
        "shutting down: detaching programs, draining connections"
    );
    stop.cancel();
    for t in accept_tasks {
        let _ = t.await;
    }
    let _ = rescan.await;
    // Detach before draining: from here on new connections are not intercepted,
    // which is the operator's explicit choice when stopping the daemon.
    ready.set_attached(false);
    redirector.detach();
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
