//! Pod UID and container ID from a cgroup path, as the kubelet lays them out.
//!
//! Shapes handled (QoS `guaranteed` pods have no QoS level):
//! * systemd driver: `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_with_underscores>.slice/<runtime>-<id>.scope`
//!   with runtime `cri-containerd`, `crio` or `docker`; guaranteed:
//!   `kubepods.slice/kubepods-pod<uid>.slice/...`
//! * cgroupfs driver: `kubepods/<qos>/pod<uid>/<id>`; guaranteed: `kubepods/pod<uid>/<id>`
//! * containerd without systemd scopes:
//!   `system.slice/containerd.service/kubepods-<qos>-pod<uid>.slice:cri-containerd:<id>`
//!
//! Any prefix before `kubepods` (a node-level cgroup namespace, `/sys/fs/cgroup`)
//! is ignored; paths are matched on their components, never by substring, so a
//! container named `kubepods` elsewhere is not mistaken for a pod.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl fmt::Display for Qos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Qos::Guaranteed => "guaranteed",
            Qos::Burstable => "burstable",
            Qos::BestEffort => "besteffort",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

/// What a cgroup path says about the pod and container it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    /// Pod UID in its canonical form (dashes, lower case).
    pub pod_uid: String,
    pub qos: Qos,
    pub driver: Driver,
    /// Container ID, when the path goes down to a container.
    pub container_id: Option<String>,
    /// `containerd`, `cri-o` or `docker`, when the scope name says so.
    pub runtime: Option<&'static str>,
}

fn qos_of(s: &str) -> Option<Qos> {
    match s {
        "burstable" => Some(Qos::Burstable),
        "besteffort" => Some(Qos::BestEffort),
        _ => None,
    }
}

/// A Kubernetes UID: 32 hex digits in 8-4-4-4-12 groups (the systemd driver
/// writes `_` for `-`). Returned canonical.
fn canonical_uid(s: &str) -> Option<String> {
    let u = s.replace('_', "-").to_ascii_lowercase();
    let groups: Vec<&str> = u.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    (groups.len() == 5
        && groups
            .iter()
            .zip(lens)
            .all(|(g, l)| g.len() == l && g.bytes().all(|b| b.is_ascii_hexdigit())))
    .then_some(u)
}

/// A container ID (64 hex digits for containerd, CRI-O and Docker).
fn container_id(s: &str) -> Option<String> {
    (s.len() >= 12 && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| s.to_ascii_lowercase())
}

/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`.
fn systemd_scope(s: &str) -> Option<(&'static str, String)> {
    let stem = s.strip_suffix(".scope")?;
    for (prefix, runtime) in [
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("docker-", "docker"),
    ] {
        if let Some(id) = stem.strip_prefix(prefix) {
            return container_id(id).map(|id| (runtime, id));
        }
    }
    None
}

/// `kubepods-<qos>-pod<uid>.slice` or `kubepods-pod<uid>.slice`.
fn systemd_pod_slice(s: &str) -> Option<(Qos, String)> {
    let stem = s.strip_prefix("kubepods-")?.strip_suffix(".slice")?;
    let (qos, rest) = match stem.split_once("-pod") {
        Some((q, rest)) if !q.starts_with("pod") => (qos_of(q)?, rest),
        _ => (Qos::Guaranteed, stem.strip_prefix("pod")?),
    };
    Some((qos, canonical_uid(rest)?))
}

/// Parses a cgroup path (absolute or relative, any prefix before `kubepods`).
pub fn parse(path: &str) -> Option<PodCgroup> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();

    // containerd variant: ".../kubepods-<qos>-pod<uid>.slice:cri-containerd:<id>"
    if let Some(last) = comps.last() {
        let mut parts = last.splitn(3, ':');
        if let (Some(slice), Some(rt), Some(id)) = (parts.next(), parts.next(), parts.next())
            && let Some((qos, pod_uid)) = systemd_pod_slice(slice)
        {
            let runtime = match rt {
                "cri-containerd" => Some("containerd"),
                "crio" => Some("cri-o"),
                "docker" => Some("docker"),
                _ => None,
            };
            return Some(PodCgroup {
                pod_uid,
                qos,
                driver: Driver::Systemd,
                container_id: container_id(id),
                runtime,
            });
        }
    }

    // systemd driver
    if let Some(i) = comps.iter().position(|c| *c == "kubepods.slice") {
        let rest = &comps[i + 1..];
        let (pod_slice, after) = match rest {
            [q, p, after @ ..] if q.starts_with("kubepods-") && systemd_pod_slice(q).is_none() => {
                (*p, after)
            }
            [p, after @ ..] => (*p, after),
            [] => return None,
        };
        let (qos, pod_uid) = systemd_pod_slice(pod_slice)?;
        let scope = after.first().and_then(|s| systemd_scope(s));
        return Some(PodCgroup {
            pod_uid,
            qos,
            driver: Driver::Systemd,
            runtime: scope.as_ref().map(|(r, _)| *r),
            container_id: scope.map(|(_, id)| id),
        });
    }

    // cgroupfs driver
    if let Some(i) = comps.iter().position(|c| *c == "kubepods") {
        let rest = &comps[i + 1..];
        let (qos, pod, after) = match rest {
            [q, p, after @ ..] if qos_of(q).is_some() => (qos_of(q)?, *p, after),
            [p, after @ ..] => (Qos::Guaranteed, *p, after),
            [] => return None,
        };
        let pod_uid = canonical_uid(pod.strip_prefix("pod")?)?;
        return Some(PodCgroup {
            pod_uid,
            qos,
            driver: Driver::Cgroupfs,
            container_id: after.first().and_then(|c| container_id(c)),
            runtime: None,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "5f0c8a4e-1b2d-4c3e-9f8a-0123456789ab";
    const UID_: &str = "5f0c8a4e_1b2d_4c3e_9f8a_0123456789ab";
    const CID: &str = "3b1f9a2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";

    #[test]
    fn kubelet_path_shapes() {
        use Driver::*;
        use Qos::*;
        // path -> (qos, driver, runtime, has container id), or not a pod
        type Want = Option<(Qos, Driver, Option<&'static str>, bool)>;
        let table: Vec<(String, Want)> = vec![
            // systemd driver, every QoS, every runtime
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope"
                ),
                Some((Burstable, Systemd, Some("containerd"), true)),
            ),
            (
                format!(
                    "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{CID}.scope"
                ),
                Some((BestEffort, Systemd, Some("cri-o"), true)),
            ),
            (
                format!("kubepods.slice/kubepods-pod{UID_}.slice/docker-{CID}.scope"),
                Some((Guaranteed, Systemd, Some("docker"), true)),
            ),
            // the pod's own slice (no container)
            (
                format!(
                    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
                ),
                Some((Burstable, Systemd, None, false)),
            ),
            // cgroupfs driver
            (
                format!("/kubepods/burstable/pod{UID}/{CID}"),
                Some((Burstable, Cgroupfs, None, true)),
            ),
            (
                format!("/kubepods/besteffort/pod{UID}/{CID}"),
                Some((BestEffort, Cgroupfs, None, true)),
            ),
            (
                format!("/kubepods/pod{UID}/{CID}"),
                Some((Guaranteed, Cgroupfs, None, true)),
            ),
            (
                format!("/kubepods/pod{UID}"),
                Some((Guaranteed, Cgroupfs, None, false)),
            ),
            // containerd variant
            (
                format!(
                    "system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{CID}"
                ),
                Some((Burstable, Systemd, Some("containerd"), true)),
            ),
            (
                format!(
                    "system.slice/containerd.service/kubepods-pod{UID_}.slice:cri-containerd:{CID}"
                ),
                Some((Guaranteed, Systemd, Some("containerd"), true)),
            ),
            // a prefix before kubepods (nested hierarchy) is fine
            (
                format!("/sys/fs/cgroup/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope"),
                Some((Guaranteed, Systemd, Some("cri-o"), true)),
            ),
            // not pods
            ("/system.slice/sshd.service".into(), None),
            ("/kubepods.slice/kubepods-burstable.slice".into(), None),
            ("/kubepods/burstable/podnot-a-uid/abc".into(), None),
            ("/user.slice/kubepods-ish/pod123".into(), None),
            (
                format!("/kubepods.slice/kubepods-weird-pod{UID_}.slice"),
                None,
            ),
        ];
        for (path, want) in table {
            let got = parse(&path);
            match (got, want) {
                (None, None) => {}
                (Some(g), Some((qos, driver, runtime, has_cid))) => {
                    assert_eq!(g.pod_uid, UID, "{path}");
                    assert_eq!(
                        (g.qos, g.driver, g.runtime),
                        (qos, driver, runtime),
                        "{path}"
                    );
                    assert_eq!(g.container_id.as_deref(), has_cid.then_some(CID), "{path}");
                }
                (g, w) => panic!("{path}: got {g:?}, want {w:?}"),
            }
        }
    }
}
