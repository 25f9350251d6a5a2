//! Project tasks: `cargo xtask setup | build | lint | test | package | demo | lab | bench | fuzz | soak`.
mod bench;
mod bench_https;
mod demo;
mod fuzz;
mod lab;
mod measure;
mod package;
mod setup;
mod soak;

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "upstrace project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks (apt packages, rust-src, bpf-linker, tracefs). Idempotent.
    Setup,
    /// Setup, then build everything in release mode.
    Build,
    /// Setup, then the lint gate: rustfmt and clippy (warnings are errors).
    Lint,
    /// Setup, lint, build, package, and run every test (root integration tests included).
    Test,
    /// Setup, build, and make the Debian package (binary, systemd unit, config, man page,
    /// completions): target/debian/upstrace_<version>_<arch>.deb.
    Package,
    /// Setup, build, and run the fault matrix: every scenario on nginx and HAProxy.
    Lab {
        /// Only this gateway (nginx, haproxy or caddy; Caddy runs the HTTPS rows).
        #[arg(long)]
        gateway: Option<String>,
        /// Only these scenarios (comma-separated names).
        #[arg(long)]
        scenario: Option<String>,
        /// Keep each row's trace in this directory.
        #[arg(long)]
        save_traces: Option<std::path::PathBuf>,
        /// nginx with its default upstream configuration: a new upstream connection per
        /// request (the lab's nginx keeps a keep-alive pool otherwise).
        #[arg(long)]
        connection_per_request: bool,
    },
    /// Setup, build, and measure: gateway overhead (A/B), BPF cost per run, failure storms,
    /// userspace CPU and memory. Writes bench/RESULTS.md and bench/results.json.
    Bench {
        /// A/B pairs for the overhead figure (this VM's throughput varies by ~10% run to run).
        #[arg(long, default_value_t = 5)]
        pairs: usize,
        /// Seconds per load run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Only rewrite bench/RESULTS.md from bench/results.json (no measuring).
        #[arg(long)]
        render_only: bool,
        /// Only the HTTPS rows (HTTP/1.1 and HTTP/2 over TLS), merged into the last results.
        #[arg(long)]
        https: bool,
        /// Only the healthy rows, for each upstream configuration (keep-alive pool, a
        /// connection per request): ratios, events and program runs per request.
        #[arg(long)]
        healthy: bool,
        /// Only the failure storms and the failures mixed into a healthy load
        #[arg(long)]
        storms: bool,
        /// With --storms: only the storms whose name contains this text, printed and not
        /// merged into the results (for profiling one storm).
        #[arg(long, requires = "storms")]
        only: Option<String>,
        /// Only the smoke run that `cargo xtask test` makes: two short storms (HAProxy, Caddy
        /// over HTTPS) that must give verdicts and lose nothing; nothing is written.
        #[arg(long)]
        smoke: bool,
    },
    /// Fuzz the parsers (trace reader, BTF, tracefs formats, kernel records, response heads).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
    },
    /// Steady load with rolling faults: every 5xx gets exactly one verdict, nothing is lost,
    /// memory stays flat.
    Soak {
        #[arg(long, default_value_t = 2)]
        minutes: u64,
        /// nginx's default upstream configuration: a new upstream connection per request
        /// (the lab's gateway keeps a keep-alive pool otherwise).
        #[arg(long)]
        connection_per_request: bool,
    },
    /// Setup, build, start the built-in fault lab, and show upstrace explaining its faults.
    Demo {
        /// Seconds to run (default: until Ctrl-C or all faults shown).
        #[arg(long = "for")]
        duration: Option<u64>,
    },
}

pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

pub fn status(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed with {st}");
    }
    Ok(())
}

/// Point the lab harness at this workspace's release build (`build` makes it).
pub fn use_release_build() {
    let release = upstrace_lab::target_dir().join("release");
    // SAFETY: called before the task starts any thread.
    unsafe {
        std::env::set_var("UPSTRACE_BIN", release.join("upstrace"));
        std::env::set_var("UPSTRACE_LAB_UPSTREAM", release.join("upstrace-lab-upstream"));
    }
}

fn build() -> Result<()> {
    status(cargo().args(["build", "--release"]))
}

/// The lint gate: formatting and clippy on the host crates (tracer-ebpf builds only for the
/// BPF target, so it is left out here), then the eBPF crate's own lint.
fn lint() -> Result<()> {
    status(cargo().args(["fmt", "--all", "--check"]))?;
    status(cargo().args(["clippy", "--workspace", "--exclude", "tracer-ebpf", "--all-targets", "--", "-D", "warnings"]))?;
    lint_ebpf()
}

/// Clippy for tracer-ebpf on its own target (nightly, build-std): never built for the host.
fn lint_ebpf() -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root().join("tracer-ebpf"))
        .args(["+nightly", "clippy", "--release", "--target", "bpfel-unknown-none", "-Z", "build-std=core", "--", "-D", "warnings"])
        // The host's cargo sets these for xtask; the nightly cargo must pick its own.
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN");
    status(&mut cmd)
}

fn test() -> Result<()> {
    // Unit tests and root integration tests; one test at a time, since each loads the eBPF
    // programs and they share the machine's 2 cores.
    status(cargo().args(["test", "--release", "--", "--test-threads=1"]))
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build => {
            setup::run()?;
            build()
        }
        Task::Lint => {
            setup::run()?;
            lint()
        }
        Task::Test => {
            setup::run()?;
            lint()?;
            build()?;
            // The package test installs and removes this .deb.
            package::build_deb()?;
            test()?;
            // Smoke runs: every fuzz target briefly (the long runs are `cargo xtask fuzz`), a
            // short soak (steady load with rolling faults) and two short storms of the bench.
            fuzz::run(10, None)?;
            if upstrace_lab::is_root() {
                soak::run(2, true)?;
                bench::smoke()?;
            } else {
                eprintln!("xtask test: soak and bench smoke skipped: need root");
            }
            Ok(())
        }
        Task::Package => {
            setup::run()?;
            build()?;
            package::build_deb().map(drop)
        }
        Task::Lab { gateway, scenario, save_traces, connection_per_request } => {
            setup::run()?;
            build()?;
            lab::run(gateway, scenario, save_traces, !connection_per_request)
        }
        Task::Bench { render_only: true, .. } => bench::render(),
        Task::Bench { smoke: true, .. } => {
            setup::run()?;
            build()?;
            bench::smoke()
        }
        Task::Bench { pairs, seconds, healthy: true, .. } => {
            setup::run()?;
            build()?;
            bench::run_healthy(pairs.max(1), seconds.clamp(1, 60))
        }
        Task::Bench { seconds, storms: true, only, .. } => {
            setup::run()?;
            build()?;
            bench::run_storms(seconds.clamp(1, 60), only.as_deref())
        }
        Task::Bench { pairs, seconds, https: true, .. } => {
            setup::run()?;
            build()?;
            bench::run_https(pairs.clamp(1, 3), seconds.clamp(1, 60))
        }
        Task::Bench { pairs, seconds, .. } => {
            setup::run()?;
            build()?;
            status(cargo().args(["build", "--release", "-p", "tracer-user", "--example", "engine_rss"]))?;
            bench::run(pairs.max(1), seconds.clamp(1, 60))
        }
        Task::Fuzz { seconds, target } => {
            setup::run()?;
            fuzz::run(seconds, target.as_deref())
        }
        Task::Soak { minutes, connection_per_request } => {
            setup::run()?;
            build()?;
            soak::run(minutes, !connection_per_request)
        }
        Task::Demo { duration } => {
            setup::run()?;
            build()?;
            demo::run(duration)
        }
    }
}
