use std::{
    io::{IsTerminal, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use clap::{Parser, Subcommand};
use upstrace::{
    clock,
    output::record::Recorder,
    output::sink::{Format, Sink},
    output::tui::Dashboard,
    pipeline::Pipeline,
    source::live::{self, Options},
    source::replay::{self, Pace},
};

/// Why is my gateway returning 502? Traces the connections between gateway processes
/// (nginx, HAProxy, Envoy, Caddy, Traefik) and their upstreams at kernel level, and explains
/// every 5xx they answer with its cause and the kernel evidence.
#[derive(Parser, Debug)]
#[command(name = "upstrace", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Trace these gateway pids (repeatable). Their workers and later children are followed.
    #[arg(long = "pid", value_name = "PID")]
    pids: Vec<u32>,
    /// Trace processes with this name (repeatable; default: nginx, haproxy, envoy, caddy, traefik).
    #[arg(long = "comm", value_name = "NAME")]
    comms: Vec<String>,
    /// Print JSON Lines on stdout (verdicts, events, stats) instead of the dashboard.
    #[arg(long, conflicts_with = "text")]
    json: bool,
    /// Print plain text lines instead of the dashboard (the default when stdout is not a terminal).
    #[arg(long)]
    text: bool,
    /// Leave raw kernel events out of the output (verdicts and stats only).
    #[arg(long)]
    no_events: bool,
    /// Record every event and verdict to this trace file (JSON Lines) for postmortems.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// With --record: rotate the trace when it passes this size (FILE -> FILE.1).
    #[arg(long, value_name = "MB", requires = "record")]
    record_max_mb: Option<u64>,
    /// Stop after this many seconds (output is flushed). SIGINT/SIGTERM also stop cleanly.
    #[arg(long = "for", value_name = "SECONDS")]
    duration: Option<f64>,
    /// Do not read this gateway's answers (repeatable, by process name): infer a verdict from
    /// each failed upstream attempt no retry followed (`"status": null`). For clients on
    /// HTTP/3 (QUIC), or a TLS library upstrace does not read.
    #[arg(long = "infer", value_name = "NAME")]
    infer: Vec<String>,
    /// Wait for a gateway to start instead of failing when none is running.
    #[arg(long)]
    wait: bool,
    /// Report each BPF program's run count and average run time in the stats lines.
    #[arg(long)]
    bpf_stats: bool,
    /// Seconds between stats lines (events handled, events lost).
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    stats_interval: f64,
    /// Serve Prometheus metrics at http://ADDR/metrics. A bare PORT binds 127.0.0.1.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<upstrace::serve::ListenAddr>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run as a service: no terminal, wait for the gateways and follow their restarts, log one
    /// line per notable thing on stderr, serve metrics, record rotating traces. Stops on SIGTERM.
    Serve(upstrace::serve::ServeArgs),
    /// Postmortem of a trace: Markdown on stdout, and optionally a self-contained HTML page.
    Report {
        file: PathBuf,
        /// Also write an HTML page (inline SVG timeline, every verdict) to this file.
        #[arg(long, value_name = "OUT.html")]
        html: Option<PathBuf>,
    },
    /// Re-run a recorded trace through the pipeline (verdicts are re-derived). No root needed.
    Replay {
        file: PathBuf,
        /// Replay at N times the recorded pace.
        #[arg(long, value_name = "N", conflicts_with = "fast")]
        speed: Option<f64>,
        /// Replay as fast as possible (the default).
        #[arg(long)]
        fast: bool,
        /// Print JSON Lines instead of the dashboard.
        #[arg(long, conflicts_with = "text")]
        json: bool,
        /// Print plain text lines instead of the dashboard.
        #[arg(long)]
        text: bool,
        /// Print the raw events too.
        #[arg(long)]
        events: bool,
    },
    /// For `cargo xtask bench`: attach an empty program to the same hooks for N seconds and
    /// print its cost per run (the floor under upstrace's overhead) as one JSON line.
    #[command(hide = true)]
    Floor {
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, value_enum, default_value = "all")]
        hooks: upstrace::source::probes::FloorSet,
        /// Count runs and run time (the counting itself costs two clock reads per run).
        #[arg(long)]
        stats: bool,
    },
}

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
    if let Some(Command::Replay { file, speed, fast: _, json, text, events }) = cli.command {
        let pace = match speed {
            Some(s) if s.is_finite() && s > 0.0 => Pace::Speed(s),
            Some(_) => anyhow::bail!("--speed must be a positive number"),
            None => Pace::Fast,
        };
        // Wall-clock stamps come from the trace's header (or its first event).
        let boot = replay::read_events(&file, |_| Ok(())).map(|i| i.boot_offset_ns)?.unwrap_or(0);
        let dashboard = !json && !text && std::io::stdout().is_terminal();
        let title = format!("replay {}", file.display());
        let mut pipeline = output(json, events, boot, dashboard.then_some(title.as_str()))?;
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
