use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use upstrace::{
    clock,
    live::{self, Options},
    pipeline::Pipeline,
    record::Recorder,
    replay::{self, Pace},
    sink::{Format, Sink},
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
    /// Print JSON Lines on stdout (verdicts, events, stats).
    #[arg(long)]
    json: bool,
    /// Leave raw kernel events out of the output (verdicts and stats only).
    #[arg(long)]
    no_events: bool,
    /// Record every event and verdict to this trace file (JSON Lines) for postmortems.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Stop after this many seconds (output is flushed). SIGINT/SIGTERM also stop cleanly.
    #[arg(long = "for", value_name = "SECONDS")]
    duration: Option<f64>,
    /// Wait for a gateway to start instead of failing when none is running.
    #[arg(long)]
    wait: bool,
    /// Seconds between stats lines (events handled, events lost).
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    stats_interval: f64,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Re-run a recorded trace through the pipeline (verdicts are re-derived). No root needed.
    Replay {
        file: PathBuf,
        /// Replay at N times the recorded pace.
        #[arg(long, value_name = "N", conflicts_with = "fast")]
        speed: Option<f64>,
        /// Replay as fast as possible (the default).
        #[arg(long)]
        fast: bool,
        /// Print JSON Lines.
        #[arg(long)]
        json: bool,
        /// Print the raw events too.
        #[arg(long)]
        events: bool,
    },
}

fn seconds(name: &str, v: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v).map_err(|_| anyhow::anyhow!("--{name} must be a positive number of seconds"))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::Replay { file, speed, fast: _, json, events }) = cli.command {
        let pace = match speed {
            Some(s) if s.is_finite() && s > 0.0 => Pace::Speed(s),
            Some(_) => anyhow::bail!("--speed must be a positive number"),
            None => Pace::Fast,
        };
        let format = if json { Format::Json } else { Format::Text };
        // Wall-clock stamps come from the trace's header when it has one.
        let info = replay::read_events(&file, |_| Ok(())).map(|i| i.boot_offset_ns).unwrap_or(None);
        let sink = Sink::new(std::io::stdout(), format, events, info.unwrap_or(0));
        let mut pipeline = Pipeline::new(sink);
        let info = replay::run(&file, pace, &mut pipeline).await?;
        eprintln!("upstrace: replayed {} events, {} verdicts", info.events, pipeline.verdicts);
        return Ok(());
    }
    let opts = Options {
        pids: cli.pids,
        comms: cli.comms,
        wait: cli.wait,
        duration: cli.duration.map(|d| seconds("for", d)).transpose()?,
        stats_interval: seconds("stats-interval", cli.stats_interval.max(0.1))?,
    };
    let format = if cli.json { Format::Json } else { Format::Text };
    let boot = clock::boot_offset_ns();
    let sink = Sink::new(std::io::stdout(), format, !cli.no_events, boot);
    let mut pipeline = Pipeline::new(sink);
    if let Some(path) = &cli.record {
        pipeline.recorder = Some(Recorder::create(path, boot)?);
    }
    live::run(opts, &mut pipeline).await?;
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
