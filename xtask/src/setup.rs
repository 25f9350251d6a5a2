//! Install the eBPF build chain and the lab's tools on a fresh Debian 12 machine. Idempotent:
//! each step checks first and does nothing when it is already in place.
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::status;

/// Debian packages: the LLVM 22 libraries bpf-linker links against, bpftool, the gateways
/// (nginx, HAProxy, Caddy), rsyslog (HAProxy's log through syslog, as Debian sends it) and tools the fault lab drives (openssl makes its certificates, h2load loads HTTP/2),
/// tmux for terminal tests, systemd for `systemd-analyze verify` of the packaged unit, and a
/// Prometheus server that scrapes upstrace's metrics in a test.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "clang-22",
    "bpftool",
    "nginx",
    "haproxy",
    "rsyslog",
    "caddy",
    "php8.2-fpm",
    "openssl",
    "nftables",
    "iproute2",
    "iptables",
    "curl",
    "wrk",
    "nghttp2-client",
    "tmux",
    "util-linux",
    "procps",
    "ethtool",
    "systemd",
    "prometheus",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_MAJOR: u32 = 22;

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn apt_missing() -> Vec<&'static str> {
    APT_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            let st = output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]));
            !st.is_some_and(|s| s.contains("install ok installed"))
        })
        .collect()
}

fn ensure_apt() -> Result<()> {
    let missing = apt_missing();
    if missing.is_empty() {
        return Ok(());
    }
    if !upstrace_lab::is_root() {
        bail!("missing packages {missing:?}: run `sudo cargo xtask setup` (or install them with apt-get)");
    }
    eprintln!("xtask setup: installing {}", missing.join(" "));
    status(Command::new("apt-get").args(["update", "-qq"]))?;
    status(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )
}

fn ensure_rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
        .context("rustup with a nightly toolchain is required (`rustup toolchain install nightly`)")?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask setup: adding rust-src to nightly");
        status(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    Ok(())
}

fn nightly_llvm_major() -> Result<u32> {
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"])).context("rustc +nightly -vV failed")?;
    vv.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next()?.parse().ok())
        .context("no LLVM version in `rustc +nightly -vV`")
}

fn bpf_linker_path() -> Option<std::path::PathBuf> {
    let out = output(Command::new("sh").args(["-c", "command -v bpf-linker"]))?;
    Some(out.trim().into()).filter(|p: &std::path::PathBuf| !p.as_os_str().is_empty())
}

fn bpf_linker_llvm_major(path: &std::path::Path) -> Option<u32> {
    let ldd = output(Command::new("ldd").arg(path))?;
    let at = ldd.find("libLLVM.so.")? + "libLLVM.so.".len();
    ldd[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn ensure_bpf_linker() -> Result<()> {
    let current = bpf_linker_path().and_then(|p| {
        let v = output(Command::new(&p).arg("--version"))?;
        Some((p, v))
    });
    let ok = current.as_ref().is_some_and(|(p, v)| v.contains(BPF_LINKER_VERSION) && bpf_linker_llvm_major(p) == Some(LLVM_MAJOR));
    if !ok {
        eprintln!("xtask setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} (about a minute)");
        let llvm = format!("/usr/lib/llvm-{LLVM_MAJOR}");
        let path = format!("{llvm}/bin:{}", std::env::var("PATH").unwrap_or_default());
        status(
            Command::new("cargo")
                .env("LLVM_PREFIX", &llvm)
                .env("PATH", path)
                .args(["install", "--locked", "bpf-linker", "--version", BPF_LINKER_VERSION, "--force"])
                .args(["--no-default-features", "--features", &format!("llvm-{LLVM_MAJOR}")]),
        )?;
    }
    let linker = bpf_linker_path().context("bpf-linker not on PATH after install (is ~/.cargo/bin on PATH?)")?;
    let linker_llvm = bpf_linker_llvm_major(&linker);
    let rustc_llvm = nightly_llvm_major()?;
    if linker_llvm != Some(rustc_llvm) {
        bail!(
            "the nightly rustc uses LLVM {rustc_llvm} but bpf-linker uses LLVM {linker_llvm:?}: they must match \
             (a mismatch fails at link time with `Invalid record`). Use a nightly built on LLVM {LLVM_MAJOR} \
             (`rustc +nightly -vV`), and do not `rustup update` it."
        );
    }
    Ok(())
}

fn ensure_tracefs() -> Result<()> {
    if std::path::Path::new("/sys/kernel/tracing/events").is_dir() {
        return Ok(());
    }
    if !upstrace_lab::is_root() {
        eprintln!("xtask setup: tracefs is not mounted; upstrace mounts it itself when run as root");
        return Ok(());
    }
    status(Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]))
}

pub fn run() -> Result<()> {
    ensure_apt()?;
    ensure_rust_src()?;
    ensure_bpf_linker()?;
    ensure_tracefs()?;
    eprintln!("xtask setup: build chain ready (nightly + rust-src, bpf-linker {BPF_LINKER_VERSION} on LLVM {LLVM_MAJOR})");
    Ok(())
}
