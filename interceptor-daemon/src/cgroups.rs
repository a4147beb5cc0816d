//! Which cgroups are intercepted, and the cgroup id ↔ path index.
//!
//! In cgroup v2 a cgroup's id is the inode number of its directory, and the kernel
//! records that id for every redirected connection. The index walks the parts of
//! the tree the selection globs can match, classifies every cgroup it finds and
//! mirrors the classification into the kernel's `CGROUPS` map:
//!
//! * a cgroup a glob matches is `SELECTED` (its subtree inherits it in the kernel);
//! * the fixed directory above a glob (`kubepods.slice` for
//!   `kubepods.slice/*/pod*.slice`, or its deepest existing ancestor while it does
//!   not exist yet; likewise for a literal path not created yet) is `PENDING`: a
//!   cgroup created below it after the last scan is intercepted at its very first
//!   connection, and the daemon classifies it then;
//! * other cgroups below such a directory are `EXCLUDED`, so they reach their
//!   destinations directly.
//!
//! cgroup ids are never reused, so an id removed from the tree cannot come back
//! as another cgroup.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Mutex, RwLock},
    time::{Duration, Instant},
};

use interceptor_common::{MAX_CGROUP_DEPTH, cgroup_class};

use crate::config::CgroupGlob;

/// A cgroup found in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupInfo {
    /// Path relative to the cgroup root, without leading `/` (`""` is the root).
    pub path: String,
    /// One of [`cgroup_class`], or 0 when the cgroup inherits from its ancestors.
    pub class: u32,
    /// Whether connections from this cgroup are intercepted.
    pub selected: bool,
}

/// Where classifications are written (the kernel map, or a test double).
pub trait ClassSink: Send {
    fn set(&mut self, id: u64, class: u32);
    fn remove(&mut self, id: u64);
}

impl ClassSink for crate::redirect::CgroupMap {
    fn set(&mut self, id: u64, class: u32) {
        if let Err(e) = crate::redirect::CgroupMap::set(self, id, class) {
            tracing::warn!(cgroup_id = id, error = %e, "cannot write cgroup classification");
        }
    }
    fn remove(&mut self, id: u64) {
        crate::redirect::CgroupMap::remove(self, id)
    }
}

/// cgroup id of a cgroup directory.
pub fn cgroup_id(path: &Path) -> std::io::Result<u64> {
    Ok(std::fs::metadata(path)?.ino())
}

/// Walks the directories below `root/start`, up to the kernel's walk depth.
/// Directories that vanish mid-walk are skipped (pods come and go).
fn walk(root: &Path, start: &str, out: &mut Vec<(u64, String)>) {
    let mut stack = vec![(start.to_string(), 0i32)];
    while let Some((rel, depth)) = stack.pop() {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        out.push((meta.ino(), rel.clone()));
        if depth >= MAX_CGROUP_DEPTH {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                let name = e.file_name().to_string_lossy().into_owned();
                let child = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                stack.push((child, depth + 1));
            }
        }
    }
}

/// Where each glob's future matches can appear: the deepest existing directory
/// on the glob's fixed prefix. It is PENDING (its unclassified descendants are
/// intercepted) unless the glob is a literal path that already exists.
fn anchors(root: &Path, globs: &[CgroupGlob]) -> Vec<(String, bool)> {
    globs
        .iter()
        .map(|g| {
            let mut anchor = String::new();
            for comp in g.fixed_prefix.split('/').filter(|c| !c.is_empty()) {
                let next = if anchor.is_empty() {
                    comp.to_string()
                } else {
                    format!("{anchor}/{comp}")
                };
                if !root.join(&next).is_dir() {
                    break;
                }
                anchor = next;
            }
            let pending = !(g.is_literal() && anchor == g.pattern);
            (anchor, pending)
        })
        .collect()
}

/// Classifies a set of (id, path) pairs against the selection globs, given the
/// PENDING directories.
pub fn classify(
    globs: &[CgroupGlob],
    pending: &[String],
    found: &[(u64, String)],
) -> HashMap<u64, CgroupInfo> {
    let selected_paths: Vec<&str> = found
        .iter()
        .filter(|(_, p)| globs.iter().any(|g| g.matcher.is_match(p)))
        .map(|(_, p)| p.as_str())
        .collect();
    let pending: Vec<&str> = pending.iter().map(String::as_str).collect();
    let under =
        |p: &str, dir: &str| dir.is_empty() || p == dir || p.starts_with(&format!("{dir}/"));
    found
        .iter()
        .map(|(id, p)| {
            let inherited = selected_paths.iter().any(|s| under(p, s));
            let class = if selected_paths.contains(&p.as_str()) {
                cgroup_class::SELECTED
            } else if inherited {
                0
            } else if pending.contains(&p.as_str()) {
                cgroup_class::PENDING
            } else if pending.iter().any(|d| under(p, d)) {
                cgroup_class::EXCLUDED
            } else {
                0
            };
            (
                *id,
                CgroupInfo {
                    path: p.clone(),
                    class,
                    selected: inherited,
                },
            )
        })
        .collect()
}

/// The live index, shared by the rescan task and the connection tasks.
pub struct CgroupIndex {
    root: PathBuf,
    globs: Vec<CgroupGlob>,
    known: RwLock<HashMap<u64, CgroupInfo>>,
    sink: Mutex<(Box<dyn ClassSink>, Instant)>,
}

/// Minimum time between two rescans caused by unknown ids.
const RESCAN_ON_MISS_MIN: Duration = Duration::from_millis(20);

impl CgroupIndex {
    pub fn new(root: PathBuf, globs: Vec<CgroupGlob>, sink: Box<dyn ClassSink>) -> Self {
        let past = Instant::now()
            .checked_sub(RESCAN_ON_MISS_MIN)
            .unwrap_or_else(Instant::now);
        Self {
            root,
            globs,
            known: RwLock::new(HashMap::new()),
            sink: Mutex::new((sink, past)),
        }
    }

    /// Rescans the tree and brings the kernel map in line. Returns
    /// (cgroups known, classifications changed).
    pub fn refresh(&self) -> (usize, usize) {
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        let mut found = Vec::new();
        let anchors = anchors(&self.root, &self.globs);
        let pending: Vec<String> = anchors
            .iter()
            .filter(|(_, p)| *p)
            .map(|(a, _)| a.clone())
            .collect();
        let mut starts: Vec<&str> = anchors.iter().map(|(a, _)| a.as_str()).collect();
        starts.sort();
        starts.dedup();
        // A directory inside another start would be walked twice.
        let starts: Vec<&str> = starts
            .iter()
            .copied()
            .filter(|s| {
                !starts
                    .iter()
                    .any(|o| o != s && (o.is_empty() || s.starts_with(&format!("{o}/"))))
            })
            .collect();
        for s in starts {
            walk(&self.root, s, &mut found);
        }
        let next = classify(&self.globs, &pending, &found);
        let mut changed = 0;
        {
            let known = self.known.read().unwrap_or_else(|p| p.into_inner());
            for (id, info) in &next {
                let before = known.get(id).map(|i| i.class).unwrap_or(0);
                if before != info.class {
                    changed += 1;
                    if info.class == 0 {
                        sink.0.remove(*id);
                    } else {
                        sink.0.set(*id, info.class);
                    }
                }
            }
            for (id, info) in known.iter() {
                if !next.contains_key(id) && info.class != 0 {
                    changed += 1;
                    sink.0.remove(*id);
                }
            }
        }
        let n = next.len();
        *self.known.write().unwrap_or_else(|p| p.into_inner()) = next;
        sink.1 = Instant::now();
        (n, changed)
    }

    /// What is known of a cgroup id; an unknown id triggers a (rate-limited)
    /// rescan, because it is usually a cgroup created since the last one.
    pub fn lookup(&self, id: u64) -> Option<CgroupInfo> {
        if let Some(i) = self
            .known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return Some(i.clone());
        }
        let due = {
            let sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
            sink.1.elapsed() >= RESCAN_ON_MISS_MIN
        };
        if due {
            self.refresh();
        }
        self.known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Number of cgroups in the index.
    pub fn known_len(&self) -> usize {
        self.known.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn globs(g: &[&str]) -> Vec<CgroupGlob> {
        g.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn classification_table() {
        let g = globs(&["kubepods.slice/*/kubepods-*-pod*.slice", "demo/pod-a"]);
        let found: Vec<(u64, String)> = [
            (1, "kubepods.slice"),
            (2, "kubepods.slice/kubepods-burstable.slice"),
            (3, "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b.slice"),
            (4, "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b.slice/cri-containerd-abc.scope"),
            (5, "demo"),
            (6, "demo/pod-a"),
            (7, "demo/pod-b"),
            (8, "system.slice"),
        ]
        .iter()
        .map(|(i, p)| (*i, p.to_string()))
        .collect();
        let c = classify(&g, &["kubepods.slice".to_string()], &found);
        let class = |id: u64| (c[&id].class, c[&id].selected);
        assert_eq!(class(1), (cgroup_class::PENDING, false));
        assert_eq!(class(2), (cgroup_class::EXCLUDED, false));
        assert_eq!(class(3), (cgroup_class::SELECTED, true));
        assert_eq!(
            class(4),
            (0, true),
            "containers inherit their pod's selection"
        );
        assert_eq!(
            class(5),
            (0, false),
            "an existing literal path adds no pending prefix"
        );
        assert_eq!(class(6), (cgroup_class::SELECTED, true));
        assert_eq!(class(7), (0, false));
        assert_eq!(class(8), (0, false));
    }

    struct Recorder(std::sync::Arc<Mutex<HashMap<u64, u32>>>);
    impl ClassSink for Recorder {
        fn set(&mut self, id: u64, class: u32) {
            self.0.lock().unwrap().insert(id, class);
        }
        fn remove(&mut self, id: u64) {
            self.0.lock().unwrap().remove(&id);
        }
    }

    #[test]
    fn index_follows_the_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("pods/a/c1")).unwrap();
        std::fs::create_dir_all(root.join("other")).unwrap();
        let sink = std::sync::Arc::new(Mutex::new(HashMap::new()));
        let idx = CgroupIndex::new(
            root.into(),
            globs(&["pods/*"]),
            Box::new(Recorder(sink.clone())),
        );
        idx.refresh();
        let a = cgroup_id(&root.join("pods/a")).unwrap();
        let pods = cgroup_id(&root.join("pods")).unwrap();
        assert_eq!(sink.lock().unwrap().get(&a), Some(&cgroup_class::SELECTED));
        assert_eq!(
            sink.lock().unwrap().get(&pods),
            Some(&cgroup_class::PENDING)
        );
        // A pod created after the scan is found on lookup.
        std::fs::create_dir_all(root.join("pods/b")).unwrap();
        let b = cgroup_id(&root.join("pods/b")).unwrap();
        std::thread::sleep(RESCAN_ON_MISS_MIN);
        let info = idx.lookup(b).expect("new cgroup found by lookup");
        assert!(info.selected);
        assert_eq!(info.path, "pods/b");
        // A removed one is dropped from the kernel map.
        std::fs::remove_dir(root.join("pods/b")).unwrap();
        idx.refresh();
        assert_eq!(sink.lock().unwrap().get(&b), None);
        let other = cgroup_id(&root.join("other")).unwrap();
        assert_eq!(idx.lookup(other), None, "outside every prefix: not indexed");
    }

    #[test]
    fn missing_prefix_is_pending_at_its_nearest_ancestor() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("kubepods")).unwrap();
        let a = anchors(
            root,
            &globs(&["kubepods/burstable/pod*", "kubepods", "later/pod-x"]),
        );
        assert_eq!(
            a,
            vec![
                ("kubepods".into(), true),
                ("kubepods".into(), false),
                ("".into(), true)
            ]
        );
    }
}
