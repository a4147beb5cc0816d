//! Kernel programs of the interceptor.
//!
//! * `cgroup/connect4`, `cgroup/connect6`: a TCP `connect()` from a selected cgroup
//!   (the socket's cgroup or any ancestor is selected) to a selected destination
//!   (`DESTS` LPM trie) is rewritten to the daemon's listener on the node. The
//!   original destination, cgroup id, pid, uid and gid are saved in the socket's
//!   local storage (`SOCK_ORIG`), which the kernel frees with the socket.
//! * `sockops`: when such a socket is established its source port exists, so the
//!   record is copied into `CONNS` keyed by the 4-tuple the daemon sees on the
//!   accepted socket (peer = client, local = listener). The daemon cannot read the
//!   client socket's storage (it only holds the accepted socket), hence the copy.
//!   The entry is deleted when the client socket reaches TCP_CLOSE, so the table
//!   holds live connections only; it is an LRU map only as a last resort.
//! * `cgroup/getpeername4/6`: the application sees the original peer, not the daemon.
//!
//! Loop guard: the daemon's own upstream sockets carry `skip_mark` (SO_MARK) and,
//! optionally, run as `skip_uid`; either skips the redirect, in addition to the
//! daemon's cgroup not being selected.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_TCP_CLOSE, bpf_sock, bpf_sock_addr, bpf_sock_ops,
    },
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, SkStorage, lpm_trie::Key},
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, generated::bpf_sk_storage_get,
    },
    macros::{btf_map, cgroup_sock_addr, sock_ops},
    programs::{SockAddrContext, SockOpsContext},
};
use aya_log_ebpf::warn;
use interceptor_common::{
    ConnKey, DEST_PORT_BITS, DestKey, DestValue, MAX_CGROUP_DEPTH, MAX_CGROUPS, MAX_CONNS,
    MAX_DESTS, OrigDst, RedirectConfig, cgroup_class, config_flags, stat, v4_mapped,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;
/// Return values of cgroup sock_addr programs.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;

#[btf_map]
static CONFIG: Array<RedirectConfig, 1> = Array::new();
#[btf_map]
static CGROUPS: HashMap<u64, u32, { MAX_CGROUPS as usize }> = HashMap::new();
#[btf_map]
static DESTS: LpmTrie<DestKey, DestValue, { MAX_DESTS as usize }> = LpmTrie::new();
#[btf_map]
static SOCK_ORIG: SkStorage<OrigDst> = SkStorage::new();
#[btf_map]
static CONNS: LruHashMap<ConnKey, OrigDst, { MAX_CONNS as usize }> = LruHashMap::new();
#[btf_map]
static STATS: PerCpuArray<u64, { stat::COUNT as usize }> = PerCpuArray::new();

#[inline(always)]
fn count(index: u32) {
    if let Some(p) = STATS.get_ptr_mut(index) {
        // Per-CPU slot: no other writer while this program runs on this CPU.
        unsafe { *p += 1 };
    }
}

/// Deepest classification among the current task's cgroup and its ancestors.
#[inline(always)]
fn cgroup_selected() -> bool {
    let mut class = 0u32;
    let mut level = 0;
    while level < MAX_CGROUP_DEPTH {
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            break;
        }
        if let Some(c) = unsafe { CGROUPS.get(&id) } {
            class = *c;
        }
        level += 1;
    }
    class == cgroup_class::SELECTED || class == cgroup_class::PENDING
}

/// Target of a destination: exact port first, then the any-port entries.
#[inline(always)]
fn match_dest(addr: [u8; 16], port_be: [u8; 2]) -> Option<DestValue> {
    let key = Key::new(
        DEST_PORT_BITS + 128,
        DestKey {
            port: port_be,
            addr,
            _pad: [0; 2],
        },
    );
    if let Some(v) = DESTS.get(&key) {
        return Some(*v);
    }
    let key = Key::new(
        DEST_PORT_BITS + 128,
        DestKey {
            port: [0, 0],
            addr,
            _pad: [0; 2],
        },
    );
    DESTS.get(&key).copied()
}

/// True when this socket belongs to the daemon itself (second loop guard).
#[inline(always)]
fn is_daemon_socket(sa: *const bpf_sock_addr, cfg: &RedirectConfig) -> bool {
    let sk: *const bpf_sock = unsafe { (*sa).__bindgen_anon_1.sk };
    if !sk.is_null() && cfg.skip_mark != 0 && unsafe { (*sk).mark } == cfg.skip_mark {
        count(stat::SKIPPED_MARK);
        return true;
    }
    if cfg.flags & config_flags::SKIP_UID != 0
        && (bpf_get_current_uid_gid() & 0xffff_ffff) as u32 == cfg.skip_uid
    {
        count(stat::SKIPPED_UID);
        return true;
    }
    false
}

/// Shared part of connect4/connect6: decide, record the original destination.
/// Returns the config on a redirect, or the verdict to return right away.
#[inline(always)]
fn decide(ctx: &SockAddrContext, addr: [u8; 16], port_be: [u8; 2]) -> Result<RedirectConfig, i32> {
    let sa = ctx.sock_addr;
    let (ty, proto, family) = unsafe { ((*sa).type_, (*sa).protocol, (*sa).family) };
    if ty != SOCK_STREAM || proto != IPPROTO_TCP {
        return Err(ALLOW);
    }
    let Some(cfg) = CONFIG.get(0) else {
        return Err(ALLOW);
    };
    let cfg = *cfg;
    if cfg.flags & config_flags::ENABLED == 0 || is_daemon_socket(sa, &cfg) {
        return Err(ALLOW);
    }
    let Some(dest) = match_dest(addr, port_be) else {
        return Err(ALLOW);
    };
    if !cgroup_selected() {
        return Err(ALLOW);
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let mut orig = OrigDst {
        addr,
        port: u16::from_be_bytes(port_be),
        family: family as u16,
        target_id: dest.target_id,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        pid: (pid_tgid >> 32) as u32,
        uid: (uid_gid & 0xffff_ffff) as u32,
        gid: (uid_gid >> 32) as u32,
        _pad: 0,
    };
    let slot = unsafe { SOCK_ORIG.get_or_insert_ptr_mut(ctx, Some(&mut orig)) };
    if slot.is_null() {
        count(stat::STORAGE_FAILED);
        warn!(
            ctx,
            "interceptor: cannot record the original destination of a connection"
        );
        // Without the record the daemon could not serve this connection.
        return Err(if cfg.flags & config_flags::FAIL_OPEN != 0 {
            ALLOW
        } else {
            REJECT
        });
    }
    // A socket that connects again (after a failed attempt) gets the new record.
    unsafe { *slot = orig };
    count(stat::REDIRECTED);
    Ok(cfg)
}

#[cgroup_sock_addr(connect4)]
pub fn icpt_connect4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let ip = unsafe { (*sa).user_ip4 }.to_ne_bytes();
    let port_be = (unsafe { (*sa).user_port } as u16).to_ne_bytes();
    match decide(&ctx, v4_mapped(ip), port_be) {
        Ok(cfg) => {
            unsafe {
                (*sa).user_ip4 = u32::from_ne_bytes(cfg.listen_v4);
                (*sa).user_port = u32::from(cfg.listen_port_v4.to_be());
            }
            ALLOW
        }
        Err(verdict) => verdict,
    }
}

#[inline(always)]
fn read_ip6(sa: *mut bpf_sock_addr) -> [u8; 16] {
    // Element by element: the verifier rejects wider loads of user_ip6.
    let w0 = unsafe { (*sa).user_ip6[0] }.to_ne_bytes();
    let w1 = unsafe { (*sa).user_ip6[1] }.to_ne_bytes();
    let w2 = unsafe { (*sa).user_ip6[2] }.to_ne_bytes();
    let w3 = unsafe { (*sa).user_ip6[3] }.to_ne_bytes();
    [
        w0[0], w0[1], w0[2], w0[3], w1[0], w1[1], w1[2], w1[3], w2[0], w2[1], w2[2], w2[3], w3[0],
        w3[1], w3[2], w3[3],
    ]
}

#[inline(always)]
fn write_ip6(sa: *mut bpf_sock_addr, a: &[u8; 16]) {
    unsafe {
        (*sa).user_ip6[0] = u32::from_ne_bytes([a[0], a[1], a[2], a[3]]);
        (*sa).user_ip6[1] = u32::from_ne_bytes([a[4], a[5], a[6], a[7]]);
        (*sa).user_ip6[2] = u32::from_ne_bytes([a[8], a[9], a[10], a[11]]);
        (*sa).user_ip6[3] = u32::from_ne_bytes([a[12], a[13], a[14], a[15]]);
    }
}

#[inline(always)]
fn is_mapped(a: &[u8; 16]) -> bool {
    a[0] == 0
        && a[1] == 0
        && a[2] == 0
        && a[3] == 0
        && a[4] == 0
        && a[5] == 0
        && a[6] == 0
        && a[7] == 0
        && a[8] == 0
        && a[9] == 0
        && a[10] == 0xff
        && a[11] == 0xff
}

#[cgroup_sock_addr(connect6)]
pub fn icpt_connect6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let addr = read_ip6(sa);
    let port_be = (unsafe { (*sa).user_port } as u16).to_ne_bytes();
    match decide(&ctx, addr, port_be) {
        Ok(cfg) => {
            if is_mapped(&addr) {
                // A dual-stack socket reaching IPv4: stay IPv4, mapped.
                write_ip6(sa, &v4_mapped(cfg.listen_v4));
                unsafe { (*sa).user_port = u32::from(cfg.listen_port_v4.to_be()) };
            } else if cfg.flags & config_flags::HAS_V6 != 0 {
                write_ip6(sa, &cfg.listen_v6);
                unsafe { (*sa).user_port = u32::from(cfg.listen_port_v6.to_be()) };
            } else if cfg.flags & config_flags::FAIL_OPEN == 0 {
                // Selected, but there is no IPv6 listener to send it to.
                count(stat::REJECTED);
                return REJECT;
            }
            ALLOW
        }
        Err(verdict) => verdict,
    }
}

#[cgroup_sock_addr(getpeername4)]
pub fn icpt_getpeername4(ctx: SockAddrContext) -> i32 {
    let orig = unsafe { SOCK_ORIG.get_ptr_mut(&ctx) };
    if !orig.is_null() {
        let (addr, port) = unsafe { ((*orig).addr, (*orig).port) };
        let sa = ctx.sock_addr;
        unsafe {
            (*sa).user_ip4 = u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]);
            (*sa).user_port = u32::from(port.to_be());
        }
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn icpt_getpeername6(ctx: SockAddrContext) -> i32 {
    let orig = unsafe { SOCK_ORIG.get_ptr_mut(&ctx) };
    if !orig.is_null() {
        let (addr, port) = unsafe { ((*orig).addr, (*orig).port) };
        let sa = ctx.sock_addr;
        write_ip6(sa, &addr);
        unsafe { (*sa).user_port = u32::from(port.to_be()) };
    }
    ALLOW
}

/// Reads a sockops context field. Volatile, so that every access stays a
/// single load at a constant offset from the context pointer: the verifier
/// rejects loads through a context pointer the compiler has moved.
macro_rules! ops_field {
    ($ops:expr, $($field:tt)+) => {
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*$ops).$($field)+)) }
    };
}

/// The 4-tuple of a sockops socket, as the daemon sees it from the other end.
/// Every context field is read exactly once, up front and unconditionally: if
/// the same field is read in two branches, the compiler materialises its
/// address in a register, and the verifier rejects loads through a moved
/// context pointer.
#[inline(always)]
fn conn_key(ops: *mut bpf_sock_ops, family: u32) -> ConnKey {
    let l4 = ops_field!(ops, local_ip4);
    let r4 = ops_field!(ops, remote_ip4);
    let l6 = [
        ops_field!(ops, local_ip6[0]),
        ops_field!(ops, local_ip6[1]),
        ops_field!(ops, local_ip6[2]),
        ops_field!(ops, local_ip6[3]),
    ];
    let r6 = [
        ops_field!(ops, remote_ip6[0]),
        ops_field!(ops, remote_ip6[1]),
        ops_field!(ops, remote_ip6[2]),
        ops_field!(ops, remote_ip6[3]),
    ];
    let lport = ops_field!(ops, local_port);
    let rport = ops_field!(ops, remote_port);
    let (src_addr, dst_addr) = if family == AF_INET {
        (v4_mapped(l4.to_ne_bytes()), v4_mapped(r4.to_ne_bytes()))
    } else {
        (words_to_bytes(l6), words_to_bytes(r6))
    };
    ConnKey {
        src_addr,
        dst_addr,
        // local_port is host order; remote_port is network order in a u32.
        src_port: lport as u16,
        dst_port: u32::from_be(rport) as u16,
        _pad: 0,
    }
}

#[inline(always)]
fn words_to_bytes(w: [u32; 4]) -> [u8; 16] {
    let (a, b, c, d) = (
        w[0].to_ne_bytes(),
        w[1].to_ne_bytes(),
        w[2].to_ne_bytes(),
        w[3].to_ne_bytes(),
    );
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

#[sock_ops]
pub fn icpt_sockops(ctx: SockOpsContext) -> u32 {
    let ops = ctx.ops;
    let family = ops_field!(ops, family);
    if family != AF_INET && family != AF_INET6 {
        return 1;
    }
    let op = ops_field!(ops, op);
    if op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_STATE_CB {
        return 1;
    }
    let key = conn_key(ops, family);
    let new_state = ops_field!(ops, __bindgen_anon_1.args[1]);
    let cb_flags = ops_field!(ops, bpf_sock_ops_cb_flags);
    let sk = ops_field!(ops, __bindgen_anon_2.sk);
    match op {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            if sk.is_null() {
                return 1;
            }
            let map = core::ptr::from_ref(&SOCK_ORIG).cast_mut().cast();
            let orig = unsafe { bpf_sk_storage_get(map, sk.cast(), core::ptr::null_mut(), 0) }
                .cast::<OrigDst>();
            if orig.is_null() {
                return 1; // not a redirected socket
            }
            if CONNS.insert(key, unsafe { *orig }, 0).is_err() {
                count(stat::CONN_INSERT_FAILED);
                return 1;
            }
            count(stat::ESTABLISHED);
            // Ask for state callbacks so the entry goes when the socket closes.
            let _ = ctx.set_cb_flags((cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
        }
        BPF_SOCK_OPS_STATE_CB => {
            if new_state == BPF_TCP_CLOSE && CONNS.remove(key).is_ok() {
                count(stat::CLOSED);
            }
        }
        _ => {}
    }
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
