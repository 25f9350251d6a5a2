//! The fault lab and the harness around it: network namespaces joined by veth, a misbehaving
//! upstream, real gateways (nginx, HAProxy) started with their own config files, faults
//! injected with the real tools (nft, ip route, ip link), and the real `upstrace` binary run on
//! them. Shared by the integration tests and by `cargo xtask` (lab, demo, soak, bench). All
//! traffic stays inside namespaces the lab creates itself.
pub mod lab;
pub mod matrix;
pub mod rss;
pub mod tracer;

use std::path::PathBuf;

pub use rss::rss_kib;

/// True when running as root (effective uid 0).
pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// For programs (xtask, examples): an error when not root. `what` names the program.
pub fn ensure_root(what: &str) -> anyhow::Result<()> {
    if !is_root() {
        anyhow::bail!("{what} needs root (network namespaces, eBPF programs): run it as root (sudo -E)");
    }
    Ok(())
}

/// First line of every root test. A build that is not root marks those tests ignored (see
/// build.rs), so this fails only where a root test runs without root anyway: in CI, which
/// must run them as root, or when asked to (`--include-ignored`, a build made by root).
pub fn require_root() {
    if is_root() {
        return;
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI must run the root integration tests as root");
    }
    panic!("this test needs root: run it as root (sudo -E cargo xtask test)");
}

/// The workspace's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(Into::into)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Find a built binary: an explicit env override, else the newest of release/debug builds.
pub fn find_binary(name: &str, env_override: &str) -> anyhow::Result<PathBuf> {
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

/// The `upstrace` binary (UPSTRACE_BIN, else the newest build).
pub fn upstrace_binary() -> anyhow::Result<PathBuf> {
    find_binary("upstrace", "UPSTRACE_BIN")
}
