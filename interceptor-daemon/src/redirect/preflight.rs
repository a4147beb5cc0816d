//! Checks that the kernel features and privileges the redirect needs are there,
//! so a missing one is named (with the fix) instead of surfacing as a bare EPERM
//! or EINVAL from the BPF syscall.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "missing privilege: {missing}. The daemon loads and attaches BPF programs: run it as root, or grant the capabilities (Kubernetes: securityContext.capabilities.add: [BPF, PERFMON, NET_ADMIN], and SYS_RESOURCE on kernels before 5.11)"
    )]
    Capabilities { missing: String },
    #[error(
        "kernel BTF is missing ({path} not found): the kernel must be built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf { path: PathBuf },
    #[error(
        "{path} is not a cgroup v2 mount (filesystem magic {found:#x}): set redirect.cgroup_root to the cgroup2 mount (`findmnt -t cgroup2`), e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified; a cgroup v1-only host cannot be used"
    )]
    NotCgroup2 { path: PathBuf, found: i64 },
    #[error("cgroup root {path} does not exist or is not a directory")]
    NoCgroupRoot { path: PathBuf },
    #[error(
        "{path} is not on a BPF filesystem (filesystem magic {found:#x}): mount one with `mount -t bpf bpf /sys/fs/bpf` (Kubernetes: a hostPath volume for /sys/fs/bpf) or point redirect.pin_dir at one"
    )]
    NoBpffs { path: PathBuf, found: i64 },
}

/// Runs every check; the first failure is returned.
pub fn check(cgroup_root: &Path, pin_dir: &Path) -> Result<(), PreflightError> {
    check_capabilities()?;
    check_btf(Path::new("/sys/kernel/btf/vmlinux"))?;
    check_cgroup2(cgroup_root)?;
    check_bpffs(pin_dir)?;
    Ok(())
}

/// Effective capability set of this process.
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

pub fn check_capabilities() -> Result<(), PreflightError> {
    let caps = effective_caps();
    let has = |c: u32| caps & (1u64 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF (or CAP_SYS_ADMIN)");
    }
    // Without it the verifier applies its Spectre v1 restrictions to the
    // loader and rejects the programs ("pointer arithmetic ... prohibited for
    // !root", seen running with only CAP_BPF and CAP_NET_ADMIN on 6.18).
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON (or CAP_SYS_ADMIN)");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::Capabilities {
            missing: missing.join(" and "),
        })
    }
}

pub fn check_btf(vmlinux: &Path) -> Result<(), PreflightError> {
    if vmlinux.exists() {
        Ok(())
    } else {
        Err(PreflightError::NoBtf {
            path: vmlinux.into(),
        })
    }
}

fn fs_magic(path: &Path) -> Option<i64> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statfs.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    (rc == 0).then_some(st.f_type as i64)
}

pub fn check_cgroup2(root: &Path) -> Result<(), PreflightError> {
    if !root.is_dir() {
        return Err(PreflightError::NoCgroupRoot { path: root.into() });
    }
    match fs_magic(root) {
        Some(CGROUP2_SUPER_MAGIC) => Ok(()),
        found => Err(PreflightError::NotCgroup2 {
            path: root.into(),
            found: found.unwrap_or(0),
        }),
    }
}

/// The pin directory may not exist yet: its nearest existing ancestor must be on bpffs.
pub fn check_bpffs(pin_dir: &Path) -> Result<(), PreflightError> {
    let mut p = pin_dir;
    while !p.exists() {
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    match fs_magic(p) {
        Some(BPF_FS_MAGIC) => Ok(()),
        found => Err(PreflightError::NoBpffs {
            path: pin_dir.into(),
            found: found.unwrap_or(0),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_filesystems_are_named() {
        let tmp = std::env::temp_dir();
        let e = check_cgroup2(&tmp).unwrap_err().to_string();
        assert!(
            e.contains("is not a cgroup v2 mount") && e.contains("cgroup_root"),
            "{e}"
        );
        let e = check_bpffs(&tmp.join("interceptor-pins"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("mount -t bpf bpf /sys/fs/bpf"), "{e}");
        let e = check_cgroup2(Path::new("/nonexistent/cgroup"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        let e = check_btf(Path::new("/nonexistent/vmlinux"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("CONFIG_DEBUG_INFO_BTF"), "{e}");
    }
}
