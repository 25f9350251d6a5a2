//! The fault lab: network namespaces joined by veth, a misbehaving upstream, real gateways
//! (nginx, HAProxy) started with their own config files, and faults injected with the real
//! tools (nft, ip route, ip link). Shared by the integration tests, `cargo xtask demo` and the
//! benchmarks. All traffic stays inside namespaces the lab creates itself.
pub mod lab;
pub mod matrix;
pub mod tracer;

/// True when running as root; otherwise prints why a root test is skipped. In CI (CI set),
/// a root test must never be skipped, so not being root there is a failure.
pub fn require_root(test: &str) -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: CI must run the root integration tests as root");
    }
    eprintln!("skipped {test}: needs root (loads eBPF programs and creates network namespaces)");
    false
}

/// The workspace's target directory.
pub fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(Into::into)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Find a built binary: an explicit env override, else the newest of release/debug builds.
pub fn find_binary(name: &str, env_override: &str) -> anyhow::Result<std::path::PathBuf> {
    if let Some(p) = std::env::var_os(env_override) {
        return Ok(p.into());
    }
    let candidates = ["release", "debug"].map(|profile| target_dir().join(profile).join(name));
    candidates
        .iter()
        .filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p.clone())))
        .max()
        .map(|(_, p)| p)
        .ok_or_else(|| anyhow::anyhow!("{name} is not built (run `cargo build --release`), or set {env_override}"))
}
