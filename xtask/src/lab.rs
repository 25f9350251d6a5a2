//! `cargo xtask lab`: run the fault matrix and print scenario x gateway -> gateway status,
//! expected verdict, upstrace's verdict, pass/fail.
use anyhow::Result;
use upstrace_lab::{
    lab::GatewayKind,
    matrix::{self, SCENARIOS},
};

pub fn run(gateway: Option<String>, scenario: Option<String>, save_traces: Option<std::path::PathBuf>, keepalive: bool) -> Result<()> {
    upstrace_lab::ensure_root("the lab")?;
    crate::use_release_build();
    if let Some(dir) = &save_traces {
        std::fs::create_dir_all(dir)?;
    }
    let gateways: Vec<GatewayKind> =
        GatewayKind::ALL.iter().copied().filter(|g| gateway.as_deref().is_none_or(|want| want == g.name())).collect();
    println!("{}", matrix::table_header());
    let (mut passed, mut total) = (0, 0);
    for s in SCENARIOS.iter().filter(|s| scenario.as_deref().is_none_or(|want| want.split(',').any(|w| w == s.name))) {
        for &gw in gateways.iter().filter(|&&gw| s.runs_on(gw)) {
            total += 1;
            let trace = save_traces.as_ref().map(|d| d.join(format!("{}-{}.jsonl", s.name, gw.name())));
            match matrix::run_with(s, gw, trace.as_deref(), keepalive) {
                Ok(row) => {
                    if row.pass {
                        passed += 1;
                    }
                    println!("{}", matrix::table_line(&row));
                    if std::env::var_os("UPSTRACE_LAB_SHOW_LOG").is_some() {
                        println!("--- gateway log:\n{}", row.gateway_log);
                        for v in &row.verdicts {
                            println!("--- verdict: {v}");
                        }
                    }
                }
                Err(e) => println!("{:<30} {:<8} ERROR {e:#}", s.name, gw.name()),
            }
        }
    }
    println!("\nlab: {passed} of {total} rows as expected");
    if passed < total {
        anyhow::bail!("the lab: {} of {total} rows not as expected", total - passed);
    }
    Ok(())
}
