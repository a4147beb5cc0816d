//! Types shared by the kernel programs (`interceptor-ebpf`) and the daemon.
//!
//! Every type here is `#[repr(C)]`, has no implicit padding (padding is spelled out
//! as zeroed fields) and is `Copy`, because it is the exact byte layout of a BPF map
//! key or value: the kernel compares keys byte for byte, so stray padding bytes
//! would make equal keys differ.
//!
//! Addresses are always 16 bytes: IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`) so
//! IPv4, IPv6 and dual-stack sockets share one key space. Ports are host byte order
//! unless a field says otherwise.
#![no_std]

/// Map names, as the daemon finds them in the loaded object.
pub mod maps {
    pub const CONFIG: &str = "CONFIG";
    pub const CGROUPS: &str = "CGROUPS";
    pub const DESTS: &str = "DESTS";
    pub const CONNS: &str = "CONNS";
    pub const STATS: &str = "STATS";
}

/// Program names (the Rust function names in `interceptor-ebpf`).
pub mod programs {
    pub const CONNECT4: &str = "icpt_connect4";
    pub const CONNECT6: &str = "icpt_connect6";
    pub const GETPEERNAME4: &str = "icpt_getpeername4";
    pub const GETPEERNAME6: &str = "icpt_getpeername6";
    pub const SOCKOPS: &str = "icpt_sockops";
}

/// Capacity of the selected-cgroup table.
pub const MAX_CGROUPS: u32 = 16384;
/// Capacity of the destination LPM trie.
pub const MAX_DESTS: u32 = 4096;
/// Capacity of the established-connection table (LRU as a last resort only:
/// entries are deleted when the client socket closes).
pub const MAX_CONNS: u32 = 65536;
/// Deepest cgroup level the selection walk looks at.
pub const MAX_CGROUP_DEPTH: i32 = 32;

/// Classification of a cgroup in the `CGROUPS` map. The deepest classified
/// ancestor of a socket's cgroup (the cgroup itself included) decides.
pub mod cgroup_class {
    /// This cgroup and its whole subtree are intercepted.
    pub const SELECTED: u32 = 1;
    /// Explicitly not intercepted (overrides a `PENDING` ancestor).
    pub const EXCLUDED: u32 = 2;
    /// Fixed prefix of a selection glob: descendants the daemon has not yet
    /// classified are intercepted, so a pod created a moment ago is never let
    /// through unseen (the daemon then classifies it).
    pub const PENDING: u32 = 3;
}

/// Indices of the per-CPU counters in the `STATS` map.
pub mod stat {
    pub const REDIRECTED: u32 = 0;
    pub const SKIPPED_MARK: u32 = 1;
    pub const SKIPPED_UID: u32 = 2;
    pub const STORAGE_FAILED: u32 = 3;
    pub const CONN_INSERT_FAILED: u32 = 4;
    pub const REJECTED: u32 = 5;
    pub const ESTABLISHED: u32 = 6;
    pub const CLOSED: u32 = 7;
    pub const COUNT: u32 = 8;
}

/// Flags in [`RedirectConfig::flags`].
pub mod config_flags {
    /// Intercept at all (cleared while the daemon reconfigures).
    pub const ENABLED: u32 = 1 << 0;
    /// When the original destination cannot be recorded, let the connection
    /// through unredirected instead of refusing it.
    pub const FAIL_OPEN: u32 = 1 << 1;
    /// Skip sockets created by `skip_uid` (second loop guard).
    pub const SKIP_UID: u32 = 1 << 2;
    /// An IPv6 listener exists (`listen_v6` is valid).
    pub const HAS_V6: u32 = 1 << 3;
}

/// The daemon's redirect settings: the single entry of the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedirectConfig {
    pub flags: u32,
    /// Sockets carrying this SO_MARK are the daemon's own: never redirected.
    pub skip_mark: u32,
    pub skip_uid: u32,
    /// Listener IPv4 address, octets in network order.
    pub listen_v4: [u8; 4],
    /// Listener IPv6 address.
    pub listen_v6: [u8; 16],
    /// Listener port for IPv4 connections (host order).
    pub listen_port_v4: u16,
    /// Listener port for IPv6 connections (host order).
    pub listen_port_v6: u16,
    pub _pad: u32,
}

/// Data part of an LPM-trie key in `DESTS`: the port comes first so a prefix
/// can fix the port and leave the address range open (`10.0.0.0/8:5432`). Port
/// 0 stands for "any port"; the programs look up the real port first, then 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DestKey {
    /// Port, network byte order.
    pub port: [u8; 2],
    pub addr: [u8; 16],
    /// Never part of a prefix; keeps the trie's values 4-byte aligned.
    pub _pad: [u8; 2],
}

/// Bits in a `DestKey` before the address starts.
pub const DEST_PORT_BITS: u32 = 16;

/// Value of a `DESTS` entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DestValue {
    /// Index of the target in the daemon's configuration.
    pub target_id: u32,
    pub _pad: u32,
}

/// What was recorded about a redirected connection at `connect()` time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// Original destination address (IPv4-mapped for IPv4).
    pub addr: [u8; 16],
    /// Original destination port (host order).
    pub port: u16,
    /// Address family of the client's socket (AF_INET or AF_INET6).
    pub family: u16,
    pub target_id: u32,
    /// cgroup v2 id (inode number of the cgroup directory) of the connecting task.
    pub cgroup_id: u64,
    /// Process (thread-group) id of the connecting task.
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad: u32,
}

/// Key of the `CONNS` map: the client socket's 4-tuple, as the daemon sees it
/// on the accepted socket (peer = `src`, local = `dst`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub _pad: u32,
}

/// `::ffff:a.b.c.d` from IPv4 octets.
#[inline(always)]
pub const fn v4_mapped(o: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, o[0], o[1], o[2], o[3],
    ]
}

/// The IPv4 octets if `a` is IPv4-mapped.
#[inline(always)]
pub fn as_v4(a: &[u8; 16]) -> Option<[u8; 4]> {
    if a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff {
        Some([a[12], a[13], a[14], a[15]])
    } else {
        None
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, contain only integers and byte
    // arrays, and have no implicit padding.
    unsafe impl aya::Pod for RedirectConfig {}
    unsafe impl aya::Pod for DestKey {}
    unsafe impl aya::Pod for DestValue {}
    unsafe impl aya::Pod for OrigDst {}
    unsafe impl aya::Pod for ConnKey {}
}

// Layout checks: a change here must be made on both sides of the map.
const _: () = {
    assert!(core::mem::size_of::<RedirectConfig>() == 40);
    assert!(core::mem::size_of::<DestKey>() == 20);
    assert!(core::mem::size_of::<DestValue>() == 8);
    assert!(core::mem::size_of::<OrigDst>() == 48);
    assert!(core::mem::size_of::<ConnKey>() == 40);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_round_trip() {
        let m = v4_mapped([10, 77, 0, 2]);
        assert_eq!(as_v4(&m), Some([10, 77, 0, 2]));
        let mut v6 = [0u8; 16];
        v6[0] = 0xfd;
        assert_eq!(as_v4(&v6), None);
    }
}
