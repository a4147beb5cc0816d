//! Redirect: loads the kernel programs, fills their maps, attaches them to the
//! cgroup root and hands the daemon what it needs to serve redirected connections.
//!
//! # Where redirected connections land
//!
//! A pod has its own network namespace, so `127.0.0.1` inside it is the pod's own
//! loopback. The connect hooks therefore rewrite the destination to a **node-side
//! address** of the daemon (the node IP, or the host end of the pods' veths), and
//! the daemon runs in the host network namespace. This was chosen over per-pod
//! listeners opened inside each pod's namespace (ztunnel's way) because:
//! * one listener serves every pod, so a pod that appears is covered at its first
//!   connection, without the daemon racing to enter its namespace first;
//! * attribution does not depend on which listener accepted the connection: the
//!   kernel records the connecting task's cgroup, pid and uid at `connect()` time;
//! * the daemon needs no CAP_SYS_ADMIN to `setns` into every pod.
//!
//! The cost is that the pod must be able to route to the node address, which is
//! true on every CNI (the node IP is how pods reach host-network services).
//!
//! # Attaching
//!
//! Programs are attached through `bpf_link`s, which always coexist with other
//! programs on the same cgroup (other agents, CNI programs) and can never be
//! displaced by them. aya's `CgroupAttachMode::AllowMultiple` is a flag of the
//! legacy `BPF_PROG_ATTACH` path and is rejected (EINVAL) by `BPF_LINK_CREATE`,
//! so links are created in `Single` mode, which for links still means "alongside
//! the others".
//!
//! With `fail_mode: closed` the links are pinned under `pin_dir`: if the daemon
//! dies, the programs stay attached and keep sending selected connections to the
//! (now closed) listener, so they are refused instead of bypassing the daemon. A
//! clean shutdown (SIGTERM/SIGINT) or `interceptor detach` removes the pins. With
//! `fail_mode: open` nothing is pinned and the kernel detaches the programs when
//! the daemon's process ends.

pub mod preflight;

use std::{
    fs::File,
    io,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::{
        CgroupAttachMode, CgroupSockAddr, SockOps,
        links::{FdLink, LinkError, PinnedLink},
    },
};
use interceptor_common::{
    ConnKey, DEST_PORT_BITS, DestKey, DestValue, OrigDst, RedirectConfig as KernelConfig,
    config_flags, maps, programs, stat, v4_mapped,
};
use ipnet::IpNet;
use tracing::{info, warn};

use crate::config::{Config, FailMode};

/// The eBPF object, built from `interceptor-ebpf` by the build script.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/interceptor-ebpf"));

const ALL_PROGRAMS: [&str; 5] = [
    programs::CONNECT4,
    programs::CONNECT6,
    programs::GETPEERNAME4,
    programs::GETPEERNAME6,
    programs::SOCKOPS,
];

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error(transparent)]
    Preflight(#[from] preflight::PreflightError),
    #[error(
        "loading the eBPF object failed: {0} (the kernel needs BPF, BTF and cgroup socket hooks: Linux 5.10 or newer)"
    )]
    Load(#[source] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF program {name}: link: {source}")]
    Link {
        name: &'static str,
        #[source]
        source: LinkError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("pinning under {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("opening cgroup root {path}: {source}")]
    CgroupRoot {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("another interceptor already uses pin directory {0} (lock held)")]
    Locked(PathBuf),
}

fn pin_err(path: &Path) -> impl FnOnce(aya::pin::PinError) -> RedirectError + '_ {
    move |e| RedirectError::Pin {
        path: path.into(),
        source: io::Error::other(e.to_string()),
    }
}

enum AttachedLink {
    Pinned(PinnedLink),
    Owned(#[allow(dead_code)] FdLink),
}

/// Attached programs. Dropping this without [`Redirector::detach`] leaves pinned
/// links in place (what a crash does, on purpose).
pub struct Redirector {
    pin_dir: PathBuf,
    links: Vec<AttachedLink>,
    _ebpf: Ebpf,
    _lock: File,
    _logger_task: Option<tokio::task::JoinHandle<()>>,
}

/// Read access to the connection table (shared by all connection tasks).
pub struct ConnTable {
    map: HashMap<MapData, ConnKey, OrigDst>,
}

/// Write access to the cgroup classification map.
pub struct CgroupMap {
    map: HashMap<MapData, u64, u32>,
}

/// Kernel-side counters.
pub struct KernelStats {
    map: PerCpuArray<MapData, u64>,
}

/// What [`Loaded::attach`] hands to the rest of the daemon.
pub struct Handles {
    pub conns: ConnTable,
    pub cgroups: CgroupMap,
    pub stats: KernelStats,
}

/// The 16-byte form used in every map key.
pub fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The [`ConnKey`] of an accepted socket: its peer is the client, its local
/// address the listener the client was redirected to.
pub fn conn_key(peer: SocketAddr, local: SocketAddr) -> ConnKey {
    ConnKey {
        src_addr: addr16(peer.ip().to_canonical()),
        dst_addr: addr16(local.ip().to_canonical()),
        src_port: peer.port(),
        dst_port: local.port(),
        _pad: 0,
    }
}

impl ConnTable {
    /// The record of a redirected connection, by the 4-tuple of the accepted socket.
    pub fn lookup(&self, peer: SocketAddr, local: SocketAddr) -> Option<OrigDst> {
        self.map.get(&conn_key(peer, local), 0).ok()
    }

    /// Number of live entries (walks the map; for metrics and tests).
    pub fn len(&self) -> usize {
        self.map.keys().filter(|k| k.is_ok()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl CgroupMap {
    pub fn set(&mut self, id: u64, class: u32) -> Result<(), aya::maps::MapError> {
        self.map.insert(id, class, 0)
    }
    pub fn remove(&mut self, id: u64) {
        let _ = self.map.remove(&id);
    }
}

impl KernelStats {
    /// Sum over CPUs of one counter from [`interceptor_common::stat`].
    pub fn get(&self, index: u32) -> u64 {
        self.map.get(&index, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }
}

/// Programs loaded and maps filled, not attached yet: the daemon writes the
/// cgroup classification through [`Handles`] before anything is intercepted.
pub struct Loaded {
    ebpf: Ebpf,
    lock: File,
    stale: Vec<PinnedLink>,
    logger_task: Option<tokio::task::JoinHandle<()>>,
    cgroup_root: PathBuf,
    pin_dir: PathBuf,
    fail_mode: FailMode,
}

impl Redirector {
    /// Checks the host, loads the programs and fills the configuration and
    /// destination maps. The returned [`Handles`] give access to the maps.
    pub fn load(cfg: &Config) -> Result<(Loaded, Handles), RedirectError> {
        let rc = &cfg.redirect;
        preflight::check(&rc.cgroup_root, &rc.pin_dir)?;
        raise_memlock();
        let lock = lock_pin_dir(&rc.pin_dir)?;

        // Links left by a daemon that died: keep them until ours are attached,
        // so selected connections are never let through in between.
        let stale = stale_links(&rc.pin_dir);
        if !stale.is_empty() {
            info!(count = stale.len(), pin_dir = %rc.pin_dir.display(), "taking over programs left attached by a previous daemon");
        }

        let mut ebpf = EbpfLoader::new()
            .load(EBPF_OBJECT)
            .map_err(RedirectError::Load)?;
        let logger_task = start_logger(&mut ebpf);
        write_kernel_config(&mut ebpf, cfg)?;
        write_destinations(&mut ebpf, cfg)?;

        let maps_dir = rc.pin_dir.join("maps");
        std::fs::create_dir_all(&maps_dir).map_err(|source| RedirectError::Pin {
            path: maps_dir.clone(),
            source,
        })?;
        let mut take = |name: &'static str| -> Result<aya::maps::Map, RedirectError> {
            let m = ebpf.take_map(name).ok_or(RedirectError::Missing(name))?;
            // Old map pins belong to the old programs; ours replace them.
            let path = maps_dir.join(name);
            let _ = std::fs::remove_file(&path);
            m.pin(&path).map_err(pin_err(&path))?;
            Ok(m)
        };
        let conns = HashMap::try_from(take(maps::CONNS)?).map_err(|source| RedirectError::Map {
            name: maps::CONNS,
            source,
        })?;
        let cgroups =
            HashMap::try_from(take(maps::CGROUPS)?).map_err(|source| RedirectError::Map {
                name: maps::CGROUPS,
                source,
            })?;
        let stats =
            PerCpuArray::try_from(take(maps::STATS)?).map_err(|source| RedirectError::Map {
                name: maps::STATS,
                source,
            })?;
        Ok((
            Loaded {
                ebpf,
                lock,
                stale,
                logger_task,
                cgroup_root: rc.cgroup_root.clone(),
                pin_dir: rc.pin_dir.clone(),
                fail_mode: rc.fail_mode,
            },
            Handles {
                conns: ConnTable { map: conns },
                cgroups: CgroupMap { map: cgroups },
                stats: KernelStats { map: stats },
            },
        ))
    }
}

impl Loaded {
    /// Attaches every program to the cgroup root (pinning the links in
    /// fail-closed mode), then lets go of a previous daemon's links.
    pub fn attach(self) -> Result<Redirector, RedirectError> {
        let Loaded {
            mut ebpf,
            lock,
            stale,
            logger_task,
            cgroup_root,
            pin_dir,
            fail_mode,
        } = self;
        let cgroup_dir = File::open(&cgroup_root).map_err(|source| RedirectError::CgroupRoot {
            path: cgroup_root.clone(),
            source,
        })?;
        let links_dir = pin_dir.join("links");
        std::fs::create_dir_all(&links_dir).map_err(|source| RedirectError::Pin {
            path: links_dir.clone(),
            source,
        })?;
        let mut links = Vec::new();
        for name in ALL_PROGRAMS {
            let link = attach_program(&mut ebpf, name, &cgroup_dir)?;
            match fail_mode {
                FailMode::Closed => {
                    let path = links_dir.join(name);
                    // A stale pin here is the previous daemon's: its fd is held
                    // in `stale` until ours are all attached.
                    let _ = std::fs::remove_file(&path);
                    links.push(AttachedLink::Pinned(
                        link.pin(&path).map_err(pin_err(&path))?,
                    ));
                }
                FailMode::Open => links.push(AttachedLink::Owned(link)),
            }
        }
        if fail_mode == FailMode::Open {
            // Nothing of ours is pinned; a fail-closed predecessor's pins must go.
            for name in ALL_PROGRAMS {
                let _ = std::fs::remove_file(links_dir.join(name));
            }
        }
        // Ours are attached: closing the old links (their pins are gone) detaches them.
        drop(stale);
        info!(
            cgroup_root = %cgroup_root.display(),
            pin_dir = %pin_dir.display(),
            fail_mode = ?fail_mode,
            "eBPF programs attached"
        );
        Ok(Redirector {
            pin_dir,
            links,
            _ebpf: ebpf,
            _lock: lock,
            _logger_task: logger_task,
        })
    }
}

impl Redirector {
    /// Lets go of the links but leaves them pinned: the programs stay attached
    /// (selected connections are refused) until the next daemon takes them
    /// over or `interceptor detach` removes them.
    pub fn release(self) {
        info!(
            pin_dir = %self.pin_dir.display(),
            "eBPF programs left attached for the next daemon"
        );
    }

    /// Detaches every program and removes every pin (clean shutdown).
    pub fn detach(self) {
        let ids = pinned_link_ids(&self.pin_dir);
        for l in self.links {
            if let AttachedLink::Pinned(p) = l
                && let Err(e) = p.unpin()
            {
                warn!(error = %e, "unpinning a link failed");
            }
        }
        remove_pins(&self.pin_dir);
        if wait_links_released(&ids, std::time::Duration::from_secs(5)) {
            info!("eBPF programs detached");
        } else {
            warn!("eBPF links unpinned but still held after 5 s; they detach when released");
        }
    }
}

/// Removes links and maps pinned under `pin_dir` (which detaches the programs
/// once no process holds them). Returns how many pins were removed.
pub fn remove_pins(pin_dir: &Path) -> usize {
    let mut removed = 0;
    for sub in ["links", "maps"] {
        let dir = pin_dir.join(sub);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if std::fs::remove_file(e.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        let _ = std::fs::remove_dir(&dir);
    }
    let _ = std::fs::remove_dir(pin_dir);
    removed
}

fn stale_links(pin_dir: &Path) -> Vec<PinnedLink> {
    ALL_PROGRAMS
        .iter()
        .filter_map(|name| PinnedLink::from_pin(pin_dir.join("links").join(name)).ok())
        .collect()
}

fn attach_program(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &File,
) -> Result<FdLink, RedirectError> {
    let perr = |source| RedirectError::Program { name, source };
    let prog = ebpf.program_mut(name).ok_or(RedirectError::Missing(name))?;
    let link: FdLink = if name == programs::SOCKOPS {
        let p: &mut SockOps = prog.try_into().map_err(perr)?;
        p.load().map_err(perr)?;
        let id = p.attach(cgroup, CgroupAttachMode::Single).map_err(perr)?;
        p.take_link(id)
            .map_err(perr)?
            .try_into()
            .map_err(|source: LinkError| RedirectError::Link { name, source })?
    } else {
        let p: &mut CgroupSockAddr = prog.try_into().map_err(perr)?;
        p.load().map_err(perr)?;
        let id = p.attach(cgroup, CgroupAttachMode::Single).map_err(perr)?;
        p.take_link(id)
            .map_err(perr)?
            .try_into()
            .map_err(|source: LinkError| RedirectError::Link { name, source })?
    };
    Ok(link)
}

fn write_kernel_config(ebpf: &mut Ebpf, cfg: &Config) -> Result<(), RedirectError> {
    let rc = &cfg.redirect;
    let mut flags = config_flags::ENABLED;
    if rc.fail_mode == FailMode::Open {
        flags |= config_flags::FAIL_OPEN;
    }
    if rc.skip_uid.is_some() {
        flags |= config_flags::SKIP_UID;
    }
    let (listen_v6, port_v6) = match cfg.listener.address_v6 {
        Some(a) => {
            flags |= config_flags::HAS_V6;
            (a.ip().octets(), a.port())
        }
        None => ([0; 16], 0),
    };
    let kc = KernelConfig {
        flags,
        skip_mark: rc.socket_mark,
        skip_uid: rc.skip_uid.unwrap_or(0),
        listen_v4: cfg.listen_v4_ip().octets(),
        listen_v6,
        listen_port_v4: cfg.listener.address.port(),
        listen_port_v6: port_v6,
        _pad: 0,
    };
    let map = ebpf
        .map_mut(maps::CONFIG)
        .ok_or(RedirectError::Missing(maps::CONFIG))?;
    let mut arr: Array<_, KernelConfig> =
        Array::try_from(map).map_err(|source| RedirectError::Map {
            name: maps::CONFIG,
            source,
        })?;
    arr.set(0, kc, 0).map_err(|source| RedirectError::Map {
        name: maps::CONFIG,
        source,
    })
}

/// LPM key for a destination. IPv4 ranges live in the IPv4-mapped part of the
/// 128-bit space, so one trie serves both families.
pub fn dest_key(net: IpNet, port: Option<u16>) -> Key<DestKey> {
    let (addr, bits) = match net {
        IpNet::V4(n) => (
            v4_mapped(n.network().octets()),
            96 + u32::from(n.prefix_len()),
        ),
        IpNet::V6(n) => (n.network().octets(), u32::from(n.prefix_len())),
    };
    let port = port.unwrap_or(0).to_be_bytes();
    Key::new(
        DEST_PORT_BITS + bits,
        DestKey {
            port,
            addr,
            _pad: [0; 2],
        },
    )
}

fn write_destinations(ebpf: &mut Ebpf, cfg: &Config) -> Result<(), RedirectError> {
    let map = ebpf
        .map_mut(maps::DESTS)
        .ok_or(RedirectError::Missing(maps::DESTS))?;
    let mut trie: LpmTrie<_, DestKey, DestValue> =
        LpmTrie::try_from(map).map_err(|source| RedirectError::Map {
            name: maps::DESTS,
            source,
        })?;
    for (target_id, t) in cfg.targets.iter().enumerate() {
        for d in &t.destinations {
            let v = DestValue {
                target_id: target_id as u32,
                _pad: 0,
            };
            trie.insert(&dest_key(d.net, d.port), v, 0)
                .map_err(|source| RedirectError::Map {
                    name: maps::DESTS,
                    source,
                })?;
        }
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        warn!("could not raise RLIMIT_MEMLOCK; loading may fail on kernels before 5.11");
    }
}

/// One daemon per pin directory: a second one would steal the first's programs.
fn lock_pin_dir(pin_dir: &Path) -> Result<File, RedirectError> {
    use std::os::fd::AsRawFd;
    let dir = Path::new("/run/interceptor");
    std::fs::create_dir_all(dir).map_err(|source| RedirectError::Pin {
        path: dir.into(),
        source,
    })?;
    let name: String = pin_dir
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let path = dir.join(format!("{name}.lock"));
    let f = File::create(&path).map_err(|source| RedirectError::Pin {
        path: path.clone(),
        source,
    })?;
    // SAFETY: valid fd owned by `f`.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(RedirectError::Locked(pin_dir.into()));
    }
    Ok(f)
}

/// Forwards aya-log records from the programs to `log`, which tracing receives.
fn start_logger(ebpf: &mut Ebpf) -> Option<tokio::task::JoinHandle<()>> {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "eBPF log forwarding unavailable");
            return None;
        }
    };
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return None;
    };
    // SAFETY: the logger owns its ring buffer fd, which stays open and the same
    // for as long as the AsyncFd owns the logger.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e, "eBPF log forwarding unavailable");
            return None;
        }
    };
    Some(handle.spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                break;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}

/// Counters exposed for logs and metrics.
pub fn stat_names() -> [(u32, &'static str); 8] {
    [
        (stat::REDIRECTED, "redirected"),
        (stat::SKIPPED_MARK, "skipped_mark"),
        (stat::SKIPPED_UID, "skipped_uid"),
        (stat::STORAGE_FAILED, "storage_failed"),
        (stat::CONN_INSERT_FAILED, "conn_insert_failed"),
        (stat::REJECTED, "rejected"),
        (stat::ESTABLISHED, "established"),
        (stat::CLOSED, "closed"),
    ]
}

/// Reads the pinned maps of a running (or crashed, fail-closed) daemon: what
/// `interceptor status` shows.
pub struct PinnedView {
    pub conns: ConnTable,
    pub stats: KernelStats,
    pub cgroups: usize,
}

impl PinnedView {
    pub fn open(pin_dir: &Path) -> Result<Self, RedirectError> {
        let open = |name: &'static str| -> Result<aya::maps::Map, RedirectError> {
            let data = MapData::from_pin(pin_dir.join("maps").join(name))
                .map_err(|source| RedirectError::Map { name, source })?;
            aya::maps::Map::from_map_data(data)
                .map_err(|source| RedirectError::Map { name, source })
        };
        let conns = HashMap::try_from(open(maps::CONNS)?).map_err(|source| RedirectError::Map {
            name: maps::CONNS,
            source,
        })?;
        let stats =
            PerCpuArray::try_from(open(maps::STATS)?).map_err(|source| RedirectError::Map {
                name: maps::STATS,
                source,
            })?;
        let cg: HashMap<MapData, u64, u32> =
            HashMap::try_from(open(maps::CGROUPS)?).map_err(|source| RedirectError::Map {
                name: maps::CGROUPS,
                source,
            })?;
        let cgroups = cg.keys().filter(|k| k.is_ok()).count();
        Ok(Self {
            conns: ConnTable { map: conns },
            stats: KernelStats { map: stats },
            cgroups,
        })
    }

    /// Whether links are pinned (programs attached in fail-closed mode).
    pub fn pinned_links(pin_dir: &Path) -> Vec<String> {
        ALL_PROGRAMS
            .iter()
            .filter(|n| pin_dir.join("links").join(n).exists())
            .map(|n| n.to_string())
            .collect()
    }
}

/// Kernel attach types of our programs (enum bpf_attach_type), for queries.
const ATTACH_TYPES: [(&str, u32); 5] = [
    ("connect4", 10),
    ("connect6", 11),
    ("getpeername4", 29),
    ("getpeername6", 30),
    ("sock_ops", 3),
];

/// How many programs of each of our attach types are attached directly to a
/// cgroup (any owner). Used by readiness checks and by tests that verify a
/// clean exit leaves nothing behind.
pub fn attached_programs(cgroup: &Path) -> io::Result<Vec<(&'static str, u32)>> {
    use std::os::fd::AsRawFd;
    #[repr(C, align(8))]
    #[derive(Default)]
    struct QueryAttr {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: u32,
        prog_attach_flags: u64,
        link_ids: u64,
        link_attach_flags: u64,
        revision: u64,
    }
    const BPF_PROG_QUERY: libc::c_long = 16;
    let dir = File::open(cgroup)?;
    let mut out = Vec::new();
    for (name, attach_type) in ATTACH_TYPES {
        let mut attr = QueryAttr {
            target_fd: dir.as_raw_fd() as u32,
            attach_type,
            ..Default::default()
        };
        // SAFETY: `attr` is a valid, zero-initialised bpf_attr prefix of the size
        // passed; with prog_ids == 0 the kernel only writes prog_cnt.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_QUERY,
                &mut attr as *mut QueryAttr,
                std::mem::size_of::<QueryAttr>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        out.push((name, attr.prog_cnt));
    }
    Ok(out)
}

/// Kernel ids of the links pinned under `pin_dir`, read before they are
/// unpinned so that [`wait_links_released`] can tell when they are gone.
pub fn pinned_link_ids(pin_dir: &Path) -> Vec<u32> {
    use std::os::unix::ffi::OsStrExt;
    #[repr(C, align(8))]
    #[derive(Default)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    #[repr(C, align(8))]
    #[derive(Default)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    /// The head of `struct bpf_link_info`; the kernel fills `info_len` bytes.
    #[repr(C, align(8))]
    #[derive(Default)]
    struct LinkInfo {
        link_type: u32,
        id: u32,
        prog_id: u32,
        _rest: [u32; 13],
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let Ok(entries) = std::fs::read_dir(pin_dir.join("links")) else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    for e in entries.flatten() {
        let Ok(path) = std::ffi::CString::new(e.path().as_os_str().as_bytes()) else {
            continue;
        };
        let mut get = ObjGetAttr {
            pathname: path.as_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: a bpf_attr prefix for BPF_OBJ_GET with a valid C string.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_OBJ_GET,
                &mut get as *mut ObjGetAttr,
                std::mem::size_of::<ObjGetAttr>() as u32,
            )
        };
        if fd < 0 {
            continue;
        }
        let mut info = LinkInfo::default();
        let mut attr = InfoAttr {
            bpf_fd: fd as u32,
            info_len: std::mem::size_of::<LinkInfo>() as u32,
            info: &mut info as *mut LinkInfo as u64,
        };
        // SAFETY: `info` outlives the call and is `info_len` bytes long.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_OBJ_GET_INFO_BY_FD,
                &mut attr as *mut InfoAttr,
                std::mem::size_of::<InfoAttr>() as u32,
            )
        };
        // SAFETY: we own this descriptor.
        unsafe { libc::close(fd as i32) };
        if rc == 0 && info.id != 0 {
            ids.push(info.id);
        }
    }
    ids
}

/// Waits until none of the links `ids` exists any more: the kernel releases an
/// unpinned link (and detaches its program) asynchronously, so "detached"
/// means this returned true, not that the pins are gone. False on timeout,
/// e.g. while some process still holds a link open.
pub fn wait_links_released(ids: &[u32], timeout: std::time::Duration) -> bool {
    #[repr(C, align(8))]
    #[derive(Default)]
    struct ByIdAttr {
        link_id: u32,
        next_id: u32,
        open_flags: u32,
        token_fd: u32,
    }
    const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
    let exists = |id: u32| {
        let mut attr = ByIdAttr {
            link_id: id,
            ..Default::default()
        };
        // SAFETY: a bpf_attr prefix for BPF_LINK_GET_FD_BY_ID.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_LINK_GET_FD_BY_ID,
                &mut attr as *mut ByIdAttr,
                std::mem::size_of::<ByIdAttr>() as u32,
            )
        };
        if fd >= 0 {
            // SAFETY: we own this descriptor.
            unsafe { libc::close(fd as i32) };
            return true;
        }
        io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT)
    };
    let start = std::time::Instant::now();
    loop {
        if !ids.iter().any(|&id| exists(id)) {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dest_keys() {
        let k = dest_key("10.77.0.0/24".parse().unwrap(), Some(5432));
        assert_eq!(k.prefix_len(), 16 + 96 + 24);
        assert_eq!(k.data().port, [0x15, 0x38]);
        assert_eq!(k.data().addr[10..13], [0xff, 0xff, 10]);
        let k = dest_key("fd77::/16".parse().unwrap(), None);
        assert_eq!((k.prefix_len(), k.data().port), (32, [0, 0]));
    }

    #[test]
    fn conn_key_canonicalises_mapped_peers() {
        let a = conn_key(
            "[::ffff:10.77.0.18]:40000".parse().unwrap(),
            "10.77.0.1:15001".parse().unwrap(),
        );
        let b = conn_key(
            "10.77.0.18:40000".parse().unwrap(),
            "[::ffff:10.77.0.1]:15001".parse().unwrap(),
        );
        assert_eq!(a, b);
    }
}
