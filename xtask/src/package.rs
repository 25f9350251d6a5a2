//! `cargo xtask package`: a Debian package of the release build, made with `dpkg-deb` (always
//! on Debian; cargo-deb would be a 4-minute install on this machine for the same result):
//! the binary, the systemd unit (installed, not enabled), the default config (a conffile), the
//! man page (clap_mangen) and bash/zsh/fish completions (clap_complete), both generated here
//! from the CLI definition, `tracer-user/src/cli.rs`, compiled into xtask as it is.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::CommandFactory as _;

use crate::{status, workspace_root};

#[allow(dead_code)] // xtask only reads the definition, never the parsed fields
#[path = "../../tracer-user/src/cli.rs"]
mod cli;

const NAME: &str = "upstrace";
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where packages are written: `target/debian/upstrace_<version>_<arch>.deb`.
pub fn out_dir() -> PathBuf {
    let target = upstrace_lab::target_dir();
    target.canonicalize().unwrap_or(target).join("debian")
}

fn arch() -> Result<String> {
    let out = Command::new("dpkg").arg("--print-architecture").output().context("dpkg --print-architecture")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn put(root: &Path, rel: &str, data: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap())?;
    fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The man page, section 8 (a system administration command), roff.
pub fn man_page() -> Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cli::Cli::command()).section("8").render(&mut out)?;
    Ok(out)
}

/// (path in the package, completion script) for bash, zsh and fish.
pub fn completions() -> Vec<(&'static str, Vec<u8>)> {
    use clap_complete::Shell;
    [
        (Shell::Bash, "usr/share/bash-completion/completions/upstrace"),
        (Shell::Zsh, "usr/share/zsh/vendor-completions/_upstrace"),
        (Shell::Fish, "usr/share/fish/vendor_completions.d/upstrace.fish"),
    ]
    .into_iter()
    .map(|(shell, path)| {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cli::Cli::command(), NAME, &mut out);
        (path, out)
    })
    .collect()
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write as _;
    // -n: no name or time stamp, so the same input gives the same bytes.
    let mut child = Command::new("gzip").args(["-9n"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn()?;
    child.stdin.take().unwrap().write_all(data)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("gzip failed");
    }
    Ok(out.stdout)
}

const POSTINST: &str = "#!/bin/sh
set -e
# Installed, not enabled: `systemctl enable --now upstrace` starts it.
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
";

const PRERM: &str = "#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ \"$1\" = remove ]; then systemctl stop upstrace.service || true; fi
";

const POSTRM: &str = "#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
if [ \"$1\" = purge ]; then rm -rf /var/lib/upstrace /var/lib/private/upstrace; fi
";

/// Build the .deb from the release binary that `cargo xtask build` made; returns its path.
pub fn build_deb() -> Result<PathBuf> {
    let root = workspace_root();
    let bin = upstrace_lab::target_dir().join("release").join(NAME);
    if !bin.exists() {
        bail!("{} is not built: run `cargo xtask build` first", bin.display());
    }
    let arch = arch()?;
    let stage = out_dir().join(format!("{NAME}_{VERSION}_{arch}"));
    let _ = fs::remove_dir_all(&stage);
    put(&stage, "usr/bin/upstrace", &fs::read(&bin)?, 0o755)?;
    put(&stage, "lib/systemd/system/upstrace.service", &fs::read(root.join("packaging/upstrace.service"))?, 0o644)?;
    put(&stage, "etc/upstrace/upstrace.toml", &fs::read(root.join("packaging/upstrace.toml"))?, 0o644)?;
    put(&stage, "usr/share/doc/upstrace/examples/tls-views.conf", &fs::read(root.join("packaging/tls-views.conf"))?, 0o644)?;
    put(&stage, "usr/share/man/man8/upstrace.8.gz", &gzip(&man_page()?)?, 0o644)?;
    for (path, script) in completions() {
        put(&stage, path, &script, 0o644)?;
    }
    let copyright = format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: upstrace\n\nFiles: *\nLicense: {}\n",
        env!("CARGO_PKG_LICENSE")
    );
    put(&stage, "usr/share/doc/upstrace/copyright", copyright.as_bytes(), 0o644)?;
    let installed_kib = dir_size(&stage)?.div_ceil(1024);
    let control = format!(
        "Package: {NAME}\nVersion: {VERSION}\nArchitecture: {arch}\nMaintainer: upstrace developers <upstrace@localhost>\n\
         Section: net\nPriority: optional\nDepends: libc6 (>= 2.34), libgcc-s1\nInstalled-Size: {installed_kib}\n\
         Description: explains why a reverse proxy answers 502/503/504\n \
         upstrace traces the connections between gateway processes (nginx, HAProxy, Envoy,\n \
         Caddy, Traefik) and their upstreams with eBPF, and explains every 5xx they answer\n \
         with its cause and the kernel evidence. Includes a systemd unit (not enabled).\n"
    );
    put(&stage, "DEBIAN/control", control.as_bytes(), 0o644)?;
    put(&stage, "DEBIAN/conffiles", b"/etc/upstrace/upstrace.toml\n", 0o644)?;
    put(&stage, "DEBIAN/postinst", POSTINST.as_bytes(), 0o755)?;
    put(&stage, "DEBIAN/prerm", PRERM.as_bytes(), 0o755)?;
    put(&stage, "DEBIAN/postrm", POSTRM.as_bytes(), 0o755)?;
    let deb = out_dir().join(format!("{NAME}_{VERSION}_{arch}.deb"));
    status(Command::new("dpkg-deb").args(["--root-owner-group", "-Zxz", "--build"]).arg(&stage).arg(&deb))?;
    fs::remove_dir_all(&stage)?;
    eprintln!("xtask package: {}", deb.display());
    Ok(deb)
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() { dir_size(&entry.path())? } else { meta.len() };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_page_and_completions_come_from_the_cli() {
        let man = String::from_utf8(man_page().unwrap()).unwrap();
        assert!(man.contains(".TH upstrace 8"), "{}", &man[..200.min(man.len())]);
        for flag in ["otlp\\-endpoint", "record", "comm"] {
            assert!(man.contains(flag), "man page lacks {flag}");
        }
        for (path, script) in completions() {
            let text = String::from_utf8(script).unwrap();
            assert!(text.contains("otlp-endpoint") && text.contains("replay"), "{path}");
        }
    }
}
