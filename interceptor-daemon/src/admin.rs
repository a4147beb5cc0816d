//! The per-node HTTP endpoint for SREs: `/metrics` (OpenMetrics), `/healthz`
//! (the process serves) and `/readyz` (the programs are attached: connections
//! of selected pods are being intercepted).

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    cgroups::CgroupIndex,
    metrics::Metrics,
    redirect::{self, ConnTable, KernelStats},
};

/// Whether the daemon is intercepting.
pub struct Readiness {
    attached: AtomicBool,
    cgroup_root: PathBuf,
}

impl Readiness {
    pub fn new(cgroup_root: PathBuf) -> Self {
        Self {
            attached: AtomicBool::new(false),
            cgroup_root,
        }
    }

    pub fn set_attached(&self, v: bool) {
        self.attached.store(v, Ordering::SeqCst);
    }

    /// Ready when the daemon attached its programs and the kernel confirms that
    /// every hook has a program on the cgroup root.
    pub fn check(&self) -> Result<(), String> {
        if !self.attached.load(Ordering::SeqCst) {
            return Err("eBPF programs are not attached".into());
        }
        let attached = redirect::attached_programs(&self.cgroup_root).map_err(|e| {
            format!(
                "cannot query programs on {}: {e}",
                self.cgroup_root.display()
            )
        })?;
        let missing: Vec<&str> = attached
            .iter()
            .filter(|(_, n)| *n == 0)
            .map(|(name, _)| *name)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("no program attached for: {}", missing.join(", ")))
        }
    }
}

/// What the endpoint reads.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub stats: Arc<KernelStats>,
    pub conns: Arc<ConnTable>,
    pub cgroups: Arc<CgroupIndex>,
    pub ready: Arc<Readiness>,
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn route(
    req: Request<hyper::body::Incoming>,
    state: Arc<AdminState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ));
    }
    Ok(match req.uri().path() {
        "/metrics" => {
            let st = state.clone();
            // Walking the BPF maps is a few syscalls per entry: off the reactor.
            let body = tokio::task::spawn_blocking(move || {
                let events: Vec<(&'static str, u64)> = redirect::stat_names()
                    .iter()
                    .map(|(i, n)| (*n, st.stats.get(*i)))
                    .collect();
                st.metrics
                    .set_kernel(&events, st.conns.len(), st.cgroups.known_len());
                st.metrics.encode()
            })
            .await
            .unwrap_or_default();
            text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body,
            )
        }
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => match state.ready.check() {
            Ok(()) => text(StatusCode::OK, "text/plain", "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics, /healthz or /readyz\n".into(),
        ),
    })
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("binding the admin endpoint {addr}: {e}"))
    })
}

/// Serves until `stop` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| route(req, state.clone()));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_until_attached() {
        let r = Readiness::new(std::env::temp_dir());
        assert_eq!(r.check(), Err("eBPF programs are not attached".into()));
        r.set_attached(true);
        // A directory that is not a cgroup holds no programs: still not ready.
        assert!(r.check().is_err());
    }
}
