//! `cargo xtask fuzz`: cargo-fuzz (libFuzzer) on every parser that takes bytes from the
//! kernel or a file. Installs cargo-fuzz when missing. The corpus seeds live in fuzz/corpus.
use std::process::Command;

use anyhow::{Result, bail};

use crate::status;

pub const TARGETS: &[&str] = &["trace_reader", "btf", "tracefs_format", "event_decode", "response_head", "client_status"];

fn ensure_cargo_fuzz() -> Result<()> {
    let have = Command::new("cargo").args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success());
    if !have {
        eprintln!("xtask fuzz: installing cargo-fuzz");
        status(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

/// Run each target (or one) for `seconds`; fails on the first crash.
pub fn run(seconds: u64, only: Option<&str>) -> Result<()> {
    ensure_cargo_fuzz()?;
    let root = crate::workspace_root();
    let targets: Vec<&str> = TARGETS.iter().copied().filter(|t| only.is_none_or(|o| o == *t)).collect();
    if targets.is_empty() {
        bail!("no fuzz target named {only:?}; targets: {}", TARGETS.join(", "));
    }
    status(Command::new("cargo").current_dir(&root).args(["+nightly", "fuzz", "build", "-O"]))?;
    for t in targets {
        eprintln!("xtask fuzz: {t} for {seconds} s");
        // libFuzzer wants the corpus directory to exist; git keeps only its seeds.
        std::fs::create_dir_all(root.join("fuzz/corpus").join(t))?;
        status(
            Command::new("cargo")
                .current_dir(&root)
                .args(["+nightly", "fuzz", "run", "-O", t, &format!("fuzz/corpus/{t}"), "--"])
                .arg(format!("-max_total_time={seconds}"))
                .args(["-max_len=65536", "-rss_limit_mb=2048", "-print_final_stats=1"]),
        )?;
    }
    Ok(())
}
