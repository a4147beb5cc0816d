//! Rollout or uninstall: what a SIGTERM means for the attached programs.
//!
//! Kubernetes sends the same SIGTERM for a rolling update, a liveness restart
//! and `helm uninstall`. Detaching on every one (the default) lets a node's
//! selected connections go straight to their destination, unchecked, from the
//! old daemon's exit until the new one is ready. With `redirect.handover` the
//! daemon asks the API server about its own DaemonSet first: if it still
//! exists and is not being deleted, another daemon follows, so the pinned
//! programs stay attached and selected connections are refused in between (the
//! fail-closed promise); the next daemon takes them over. Anything else (the
//! DaemonSet gone or being deleted, the API server unreachable, slow, or
//! refusing: an uninstall also deletes the RBAC) detaches, so that no node is
//! ever left refusing connections with nobody coming to serve them.
//!
//! API permission used: `daemonsets` `get` (`apps`), for this one name.

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;

use crate::{config::HandoverConfig, identity::kubernetes::KubernetesConfig};

/// What to do with the programs at a SIGTERM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnStop {
    /// Keep the pinned programs attached for the next daemon.
    Handover,
    /// Detach and unpin, for this reason.
    Detach(String),
}

/// Asks the API server whether this daemon's DaemonSet will start another.
/// `k`: the client settings of `identity.kubernetes`; without them, the
/// in-cluster service account.
pub async fn on_stop(h: &HandoverConfig, k: Option<&KubernetesConfig>) -> OnStop {
    let lookup = async {
        let kc = match k {
            Some(k) => crate::identity::kubernetes::client_config(k)
                .await
                .map_err(|e| e.to_string())?,
            None => kube::Config::infer().await.map_err(|e| e.to_string())?,
        };
        let client = kube::Client::try_from(kc).map_err(|e| e.to_string())?;
        let api: kube::Api<DaemonSet> = kube::Api::namespaced(client, &h.namespace);
        api.get_opt(&h.daemonset).await.map_err(|e| e.to_string())
    };
    let name = format!("DaemonSet {}/{}", h.namespace, h.daemonset);
    match tokio::time::timeout(Duration::from_millis(h.timeout_ms), lookup).await {
        Err(_) => OnStop::Detach(format!(
            "the API server did not say within {} ms whether {name} still exists",
            h.timeout_ms
        )),
        Ok(Err(e)) => OnStop::Detach(format!("{name} could not be looked up: {e}")),
        Ok(Ok(None)) => OnStop::Detach(format!("{name} is gone (uninstalled)")),
        Ok(Ok(Some(ds))) if ds.metadata.deletion_timestamp.is_some() => {
            OnStop::Detach(format!("{name} is being deleted (uninstalled)"))
        }
        Ok(Ok(Some(_))) => OnStop::Handover,
    }
}
