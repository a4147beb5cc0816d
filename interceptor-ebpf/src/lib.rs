#![no_std]
// This library target only exists so the daemon can build-depend on this crate,
// which makes cargo rebuild the daemon when the programs change. The programs
// themselves are the binary target (src/main.rs), built for bpfel by aya-build.
