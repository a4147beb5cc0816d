//! The pods of this node, by UID, from a Pod watch.
//!
//! `kube::runtime::watcher` lists (`fieldSelector=spec.nodeName=<node>`), then
//! watches from the list's resourceVersion with bookmarks, resumes from the last
//! version seen after a dropped watch, and relists when the version is too old
//! (410 Gone). A relist is collected aside and swapped in whole when complete,
//! so a pod deleted while the watch was down disappears then.
//!
//! A deleted pod's UID is remembered for a while (a tombstone), so a connection
//! from its lingering cgroup is refused at once instead of waiting for the pod
//! to appear.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// What the index knows of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
}

impl PodInfo {
    /// `None` for a pod object without the fields every stored pod has.
    pub fn from_pod(p: &Pod) -> Option<Self> {
        let m = &p.metadata;
        Some(Self {
            uid: m.uid.clone()?,
            namespace: m.namespace.clone()?,
            name: m.name.clone()?,
            // The API server defaults it; an object without it uses `default`.
            service_account: p
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into()),
            labels: m.labels.clone().unwrap_or_default(),
        })
    }
}

/// Result of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(Arc<PodInfo>),
    /// The pod was on this node and has been deleted.
    Deleted,
    /// Not (yet) known.
    Unknown,
}

/// How long a deleted pod's UID is remembered.
const TOMBSTONE_TTL: Duration = Duration::from_secs(600);

#[derive(Default)]
struct State {
    pods: HashMap<String, Arc<PodInfo>>,
    deleted: HashMap<String, Instant>,
    /// A relist being collected.
    relist: Option<HashMap<String, Arc<PodInfo>>>,
    synced: bool,
}

impl State {
    fn tombstone(&mut self, uid: String) {
        let now = Instant::now();
        self.deleted
            .retain(|_, at| now.duration_since(*at) < TOMBSTONE_TTL);
        self.deleted.insert(uid, now);
    }
}

/// This node's pods by UID.
pub struct PodIndex {
    state: RwLock<State>,
    /// Bumped on every change, so waiters wake up.
    changed: watch::Sender<u64>,
    metrics: Arc<Metrics>,
}

impl PodIndex {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            state: RwLock::default(),
            changed: watch::Sender::new(0),
            metrics,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn lookup(&self, uid: &str) -> Lookup {
        let s = self.read();
        if let Some(p) = s.pods.get(uid) {
            Lookup::Found(p.clone())
        } else if s.deleted.contains_key(uid) {
            Lookup::Deleted
        } else {
            Lookup::Unknown
        }
    }

    /// Whether the first complete list has arrived.
    pub fn synced(&self) -> bool {
        self.read().synced
    }

    pub fn len(&self) -> usize {
        self.read().pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Like [`PodIndex::lookup`], but waits up to `wait` for an unknown pod to
    /// arrive (a pod started a moment ago, or the first list still loading).
    pub async fn wait_for(&self, uid: &str, wait: Duration) -> Lookup {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let l = self.lookup(uid);
            if l != Lookup::Unknown {
                return l;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return self.lookup(uid),
            }
        }
    }

    /// Applies one watcher event.
    pub fn apply(&self, ev: watcher::Event<Pod>) {
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        match ev {
            watcher::Event::Init => s.relist = Some(HashMap::new()),
            watcher::Event::InitApply(p) => {
                if let Some(info) = PodInfo::from_pod(&p) {
                    s.relist
                        .get_or_insert_default()
                        .insert(info.uid.clone(), Arc::new(info));
                }
            }
            watcher::Event::InitDone => {
                let fresh = s.relist.take().unwrap_or_default();
                let gone: Vec<String> = s
                    .pods
                    .keys()
                    .filter(|u| !fresh.contains_key(*u))
                    .cloned()
                    .collect();
                for uid in gone {
                    s.tombstone(uid);
                }
                for uid in fresh.keys() {
                    s.deleted.remove(uid);
                }
                s.pods = fresh;
                if !s.synced {
                    info!(pods = s.pods.len(), "kubernetes pod index synced");
                }
                s.synced = true;
            }
            watcher::Event::Apply(p) => {
                if let Some(info) = PodInfo::from_pod(&p) {
                    s.deleted.remove(&info.uid);
                    s.pods.insert(info.uid.clone(), Arc::new(info));
                }
            }
            watcher::Event::Delete(p) => {
                if let Some(uid) = p.metadata.uid {
                    s.pods.remove(&uid);
                    s.tombstone(uid);
                }
            }
        }
        self.metrics.pods_known.set(s.pods.len() as i64);
        drop(s);
        self.changed.send_modify(|g| *g += 1);
    }

    /// Watches this node's pods until the task is aborted. Errors are logged
    /// and retried with backoff; the index keeps its content meanwhile.
    pub async fn run(self: Arc<Self>, client: kube::Client, node: String) {
        let api: Api<Pod> = Api::all(client);
        let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let mut events = watcher(api, cfg).default_backoff().boxed();
        info!(node = %node, "watching this node's pods");
        while let Some(ev) = events.next().await {
            match ev {
                Ok(ev) => self.apply(ev),
                Err(e) => warn!(error = %e, "pod watch failed; retrying"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::{api::core::v1::PodSpec, apimachinery::pkg::apis::meta::v1::ObjectMeta};

    fn pod(uid: &str, ns: &str, name: &str, sa: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                uid: Some(uid.into()),
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                service_account_name: sa.map(Into::into),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn events_relists_and_tombstones() {
        let ix = PodIndex::new(Arc::new(Metrics::new()));
        assert!(!ix.synced());
        ix.apply(watcher::Event::Init);
        ix.apply(watcher::Event::InitApply(pod(
            "u1",
            "shop",
            "a",
            Some("orders"),
        )));
        ix.apply(watcher::Event::InitApply(pod("u2", "shop", "b", None)));
        // Not visible before the list completes.
        assert_eq!(ix.lookup("u1"), Lookup::Unknown);
        ix.apply(watcher::Event::InitDone);
        assert!(ix.synced());
        match ix.lookup("u1") {
            Lookup::Found(p) => assert_eq!(
                (p.namespace.as_str(), p.service_account.as_str()),
                ("shop", "orders")
            ),
            l => panic!("{l:?}"),
        }
        match ix.lookup("u2") {
            Lookup::Found(p) => assert_eq!(p.service_account, "default"),
            l => panic!("{l:?}"),
        }
        ix.apply(watcher::Event::Delete(pod("u1", "shop", "a", None)));
        assert_eq!(ix.lookup("u1"), Lookup::Deleted);
        // A relist without u2 (its delete event was missed) removes it.
        ix.apply(watcher::Event::Init);
        ix.apply(watcher::Event::InitApply(pod("u3", "shop", "c", None)));
        ix.apply(watcher::Event::InitDone);
        assert_eq!(ix.lookup("u2"), Lookup::Deleted);
        assert!(matches!(ix.lookup("u3"), Lookup::Found(_)));
        assert_eq!(ix.len(), 1);
        // A waiter sees a pod that arrives while it waits.
        let ix = Arc::new(ix);
        let w = {
            let ix = ix.clone();
            tokio::spawn(async move { ix.wait_for("u4", Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        ix.apply(watcher::Event::Apply(pod("u4", "shop", "d", None)));
        assert!(matches!(w.await.unwrap(), Lookup::Found(_)));
        let t = Instant::now();
        assert_eq!(
            ix.wait_for("nope", Duration::from_millis(50)).await,
            Lookup::Unknown
        );
        assert!(t.elapsed() >= Duration::from_millis(50));
    }
}
