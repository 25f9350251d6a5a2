//! Sets `not_root` when the tests are built by a user other than root: the root integration
//! tests (they load eBPF programs and create network namespaces) are then reported as ignored,
//! with the reason, instead of failing or passing without running:
//! `#[cfg_attr(not_root, ignore = "needs root: ...")]`. In CI (CI set) it is never set, so
//! there a build that is not root runs the root tests, and they fail (`require_root`).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(not_root)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CI");
    // Who builds is not an input cargo tracks; su, runuser and sudo set USER, so a build by
    // another user in the same target directory runs this again.
    println!("cargo::rerun-if-env-changed=USER");
    let root = unsafe { libc::geteuid() } == 0;
    if !root && std::env::var_os("CI").is_none() {
        println!("cargo::rustc-cfg=not_root");
    }
}
