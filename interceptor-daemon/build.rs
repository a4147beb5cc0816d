//! Builds the eBPF programs (`interceptor-ebpf`) for the bpfel target with the
//! nightly toolchain, `-Z build-std=core` and bpf-linker (BTF kept), and leaves
//! the object in OUT_DIR, from where `redirect` embeds it in the binary.
use std::path::PathBuf;

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../interceptor-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    println!("cargo:rerun-if-changed=../interceptor-common/src");
    if which_bpf_linker().is_none() {
        anyhow::bail!(
            "bpf-linker not found on PATH: install it with `cargo install bpf-linker` (see README, or run `bash .ci/run`)"
        );
    }
    aya_build::build_ebpf(
        [Package {
            name: "interceptor-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
}

fn which_bpf_linker() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("bpf-linker"))
            .find(|p| p.is_file())
    })
}
