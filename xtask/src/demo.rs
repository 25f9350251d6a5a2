//! `cargo xtask demo`: the built-in fault lab with upstrace watching it. A newcomer sees each
//! fault injected, the status the client got, and what upstrace reports about it.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use upstrace_lab::lab::{GatewayKind, Lab};

/// (upstream mode or "refused", what a person should take from it)
const FAULTS: &[(&str, &str)] = &[
    ("ok", "healthy upstream: 200, nothing to explain"),
    ("refused", "nothing listens on the upstream port: nginx answers 502"),
    ("reset-before-headers", "upstream resets the connection before answering: 502"),
    ("close-before-headers", "upstream closes before answering: 502"),
    ("crash-before-headers", "upstream process is SIGKILLed mid-request: 502"),
    ("stall", "upstream never answers: 504 after nginx's 2 s read timeout"),
];

pub fn run(duration: Option<u64>) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates network namespaces and loads eBPF programs: run it as root (sudo -E cargo xtask demo)");
    }
    let root = crate::workspace_root();
    let upstrace = root.join("target/release/upstrace");
    // SAFETY: single-threaded at this point.
    unsafe { std::env::set_var("UPSTRACE_LAB_UPSTREAM", root.join("target/release/upstrace-lab-upstream")) };
    let deadline = duration.map(|s| Instant::now() + Duration::from_secs(s));

    let mut lab = Lab::new().context("creating the lab")?;
    lab.start_upstream("ok")?;
    let gateway = lab.start_gateway(GatewayKind::Nginx)?;
    eprintln!("demo: nginx (pid {gateway}) in netns {} proxies to {} in netns {}", lab.gw_ns, lab.upstream_addr(), lab.up_ns);
    let mut tracer = Command::new(&upstrace)
        .args(["--pid", &gateway.to_string(), "--stats-interval", "30"])
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", upstrace.display()))?;
    std::thread::sleep(Duration::from_secs(2));

    for (mode, what) in FAULTS {
        if deadline.is_some_and(|d| Instant::now() > d) {
            break;
        }
        eprintln!("\n=== demo fault: {mode} -- {what}");
        if *mode == "refused" {
            lab.stop_upstream();
        } else {
            lab.start_upstream(mode)?;
        }
        for _ in 0..2 {
            let (status, _) = lab.request("/")?;
            eprintln!("=== client got HTTP {status}");
            std::thread::sleep(Duration::from_millis(300));
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
    let _ = tracer.wait();
    eprintln!("\ndemo: done; the lab is torn down");
    Ok(())
}
