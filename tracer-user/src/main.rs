use std::{
    io::{IsTerminal, Write},
    process::ExitCode,
    time::Duration,
};

use clap::Parser as _;
use upstrace::{
    cli::{Cli, Command},
    clock,
    output::record::Recorder,
    output::sink::{Format, Sink},
    output::tui::Dashboard,
    pipeline::Pipeline,
    source::live::{self, Options},
    source::replay::{self, Pace},
};

/// Where output goes: JSON or text lines on stdout, or the dashboard.
fn output(json: bool, events: bool, boot: i128, dashboard: Option<&str>) -> anyhow::Result<Pipeline> {
    let pipeline = Pipeline::new();
    Ok(match dashboard {
        Some(source) => pipeline.with(Dashboard::start(source, boot)?),
        None => {
            let format = if json { Format::Json } else { Format::Text };
            pipeline.with(Sink::new(std::io::stdout(), format, events, boot))
        }
    })
}

fn seconds(name: &str, v: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v).map_err(|_| anyhow::anyhow!("--{name} must be a positive number of seconds"))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::Report { file, html }) = &cli.command {
        let report = upstrace::output::report::Report::from_trace(file)?;
        if let Some(out) = html {
            std::fs::write(out, report.html()).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
        }
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(report.markdown().as_bytes())?;
        stdout.flush()?;
        return Ok(());
    }
    if let Some(Command::Serve(args)) = &cli.command {
        return upstrace::serve::run(args.settings()?).await;
    }
    if let Some(Command::Floor { seconds: secs, hooks: set, stats }) = &cli.command {
        let (hooks, runs, ns) = upstrace::source::probes::Probes::measure_floor(*set, seconds("seconds", *secs)?, *stats)?;
        let avg = if runs > 0 { ns as f64 / runs as f64 } else { 0.0 };
        println!("{}", serde_json::json!({"type": "floor", "hooks": hooks, "runs": runs, "avg_ns": avg}));
        return Ok(());
    }
    if let Some(Command::Replay { file, speed, fast: _, json, text, events, otlp_endpoint }) = cli.command {
        let pace = match speed {
            Some(s) if s.is_finite() && s > 0.0 => Pace::Speed(s),
            Some(_) => anyhow::bail!("--speed must be a positive number"),
            None => Pace::Fast,
        };
        // Wall-clock stamps come from the trace's header (or its first event).
        let boot = replay::read_events(&file, |_| Ok(())).map(|i| i.boot_offset_ns)?.unwrap_or(0);
        let dashboard = !json && !text && std::io::stdout().is_terminal();
        let title = format!("replay {}", file.display());
        let exporter = otlp_endpoint.as_deref().map(|url| upstrace::output::otlp_exporter(url, boot)).transpose()?;
        let mut pipeline = output(json, events, boot, dashboard.then_some(title.as_str()))?;
        pipeline.outputs.extend(exporter);
        let result = replay::run(&file, pace, &mut pipeline).await;
        // The dashboard gives the terminal back before anything is printed.
        pipeline.outputs.clear();
        let info = result?;
        eprintln!("upstrace: replayed {} events, {} verdicts", info.events, pipeline.verdicts);
        return Ok(());
    }
    let opts = Options {
        bpf_stats: cli.bpf_stats,
        pids: cli.pids,
        comms: cli.comms,
        wait: cli.wait,
        duration: cli.duration.map(|d| seconds("for", d)).transpose()?,
        stats_interval: seconds("stats-interval", cli.stats_interval.max(0.1))?,
        infer: cli.infer,
        announce: false,
    };
    let boot = clock::boot_offset_ns();
    let dashboard = !cli.json && !cli.text && std::io::stdout().is_terminal();
    let recorder = match &cli.record {
        Some(path) => {
            let mut recorder = Recorder::create(path, boot)?;
            recorder.max_bytes = cli.record_max_mb.map(|mb| mb.max(1) * 1024 * 1024);
            Some(recorder)
        }
        None => None,
    };
    // Bad input stops here; an unreachable collector is one line on stderr and tracing goes on.
    let exporter = cli.otlp_endpoint.as_deref().map(|url| upstrace::output::otlp_exporter(url, boot)).transpose()?;
    if dashboard {
        // Checks that print one clear line must run before the terminal switches screens.
        live::preflight(&opts)?;
        upstrace::source::probes::QUIET_STDERR.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    // Before the dashboard takes the terminal: a port in use is said in one line.
    let metrics = cli.metrics_addr.map(|a| upstrace::output::metrics::start(a.0));
    let mut pipeline = output(cli.json, !cli.no_events, boot, dashboard.then_some("live"))?;
    if let Some(metrics) = metrics {
        pipeline = pipeline.with(metrics);
    }
    if let Some(recorder) = recorder {
        pipeline = pipeline.with(recorder);
    }
    pipeline.outputs.extend(exporter);
    let result = live::run(opts, &mut pipeline).await;
    // The dashboard gives the terminal back before an error is printed.
    pipeline.outputs.clear();
    result?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("upstrace: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}");
            // A closed stdout (upstrace | head) is a normal way to stop.
            if msg.contains("Broken pipe") {
                return ExitCode::SUCCESS;
            }
            eprintln!("upstrace: error: {msg}");
            ExitCode::FAILURE
        }
    }
}
