use which::which;

/// Rebuild the eBPF object when bpf-linker changes (a new linker may emit different code).
fn main() {
    let bpf_linker =
        which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup` (it installs bpf-linker 0.13.0 for LLVM 22)");
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap());
}
