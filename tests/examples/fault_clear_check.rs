//! Checks that every lab fault can be injected and that `clear_faults` undoes it: per gateway
//! (nginx, HAProxy) one lab in front of an "ok" upstream; per fault: inject, one request,
//! clear, one request (must be 200 again). Runs as root, after a build:
//!
//!     cargo run --release -p upstrace-tests --example fault_clear_check
use anyhow::{Result, bail};
use upstrace_lab::lab::{Fault, GatewayKind, Lab};

fn main() -> Result<()> {
    upstrace_lab::ensure_root("fault_clear_check")?;
    let mut failed = 0;
    for kind in GatewayKind::ALL.iter().copied() {
        let mut lab = Lab::with_gateway(kind, Some("ok"))?;
        for &fault in Fault::ALL {
            lab.inject(fault)?;
            let during = lab.request("/")?;
            lab.clear_faults();
            let after = lab.request("/")?;
            let ok = after.0 == 200;
            failed += usize::from(!ok);
            println!(
                "{:<8} {:<24} during {:?} after clear {:?} {}",
                kind.name(),
                fault.name(),
                during,
                after,
                if ok { "ok" } else { "NOT RESTORED" }
            );
        }
    }
    if failed > 0 {
        bail!("{failed} faults were not undone by clear_faults");
    }
    Ok(())
}
