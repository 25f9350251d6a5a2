use anyhow::Context as _;

/// Build the eBPF object with the nightly toolchain and bpf-linker (see `cargo xtask setup`).
fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir).join("../tracer-ebpf");
    let ebpf_dir = ebpf_dir.canonicalize().context("tracer-ebpf directory")?;
    let root_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    let package = aya_build::Package { name: "tracer-ebpf", root_dir, ..Default::default() };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
