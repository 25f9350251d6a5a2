//! `cargo xtask demo`: the fault lab the attribution tests use, cycling through faults, with
//! upstrace's dashboard on it. Verdicts of each class arrive within a minute; quitting the
//! dashboard tears the lab down.
use std::{
    io::IsTerminal,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use upstrace_lab::lab::{Fault, GatewayKind, Lab, Step};

const CYCLE: &[Step] = &[
    Step::Healthy,
    Step::NoUpstream,
    Step::Fault(Fault::FwDropSyn),
    Step::Mode("reset-before-headers"),
    Step::Fault(Fault::RouteBlackhole),
    Step::Mode("crash-before-headers"),
    Step::Fault(Fault::FwRejectAdminProhibited),
    Step::Mode("close-before-headers"),
    Step::Fault(Fault::LossStall),
    Step::Mode("stall"),
    Step::Mode("truncated-body"),
    Step::Mode("garbage"),
];

/// Drive the lab until told to stop (bounded: at most 20 cycles, each request bounded by
/// curl's own time limit). Traffic stays inside the lab's namespaces.
fn cycle(lab: &mut Lab, stop: &AtomicBool) -> Result<()> {
    for _ in 0..20 {
        for step in CYCLE {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            lab.apply(*step)?;
            for _ in 0..3 {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let _ = lab.request("/")?;
                std::thread::sleep(Duration::from_millis(400));
            }
        }
    }
    Ok(())
}

pub fn run(duration: Option<u64>) -> Result<()> {
    upstrace_lab::ensure_root("the demo")?;
    crate::use_release_build();
    let upstrace = upstrace_lab::upstrace_binary()?;

    let mut lab = Lab::new().context("creating the lab")?;
    lab.start_upstream("ok")?;
    let gateway = lab.start_gateway(GatewayKind::Nginx)?;
    eprintln!("demo: nginx (pid {gateway}) in netns {} proxies to {} in netns {}", lab.gw_ns, lab.upstream_addr(), lab.up_ns);

    let stop = Arc::new(AtomicBool::new(false));
    let driver = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            let result = cycle(&mut lab, &stop);
            (lab, result)
        })
    };

    // Not `tracer::Tracer`: the dashboard needs the terminal, and it does not announce on
    // stderr when it starts tracing; the driver's first second covers the start.
    let mut cmd = Command::new(&upstrace);
    cmd.args(["--pid", &gateway.to_string()]);
    let dashboard = std::io::stdout().is_terminal();
    if !dashboard {
        // No terminal (CI, a pipe): text lines, and stop by itself.
        cmd.arg("--text");
    }
    let limit = duration.or(if dashboard { None } else { Some(60) });
    if let Some(secs) = limit {
        cmd.args(["--for", &secs.to_string()]);
    }
    let status = cmd.stdin(Stdio::inherit()).status().with_context(|| format!("starting {}", upstrace.display()))?;

    stop.store(true, Ordering::Relaxed);
    let (lab, result) = driver.join().map_err(|_| anyhow::anyhow!("the fault driver panicked"))?;
    drop(lab);
    eprintln!("demo: done; the lab is torn down");
    result?;
    if !status.success() {
        bail!("upstrace exited with {status}");
    }
    Ok(())
}
