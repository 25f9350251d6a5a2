use std::{process::ExitCode, time::Duration};

use clap::Parser;
use upstrace::{
    clock,
    live::{self, Options},
    pipeline::Pipeline,
    sink::{Format, Sink},
};

/// Why is my gateway returning 502? Traces the connections between gateway processes
/// (nginx, HAProxy, Envoy, Caddy, Traefik) and their upstreams at kernel level.
#[derive(Parser, Debug)]
#[command(name = "upstrace", version)]
struct Cli {
    /// Trace these gateway pids (repeatable). Children they fork are followed.
    #[arg(long = "pid", value_name = "PID")]
    pids: Vec<u32>,
    /// Trace processes with this name (repeatable; default: nginx, haproxy, envoy, caddy, traefik).
    #[arg(long = "comm", value_name = "NAME")]
    comms: Vec<String>,
    /// Print JSON Lines on stdout (events, verdicts, stats).
    #[arg(long)]
    json: bool,
    /// Leave raw kernel events out of the output.
    #[arg(long)]
    no_events: bool,
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

fn seconds(name: &str, v: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v).map_err(|_| anyhow::anyhow!("--{name} must be a positive number of seconds"))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let opts = Options {
        pids: cli.pids,
        comms: cli.comms,
        wait: cli.wait,
        duration: cli.duration.map(|d| seconds("for", d)).transpose()?,
        stats_interval: seconds("stats-interval", cli.stats_interval.max(0.1))?,
    };
    let format = if cli.json { Format::Json } else { Format::Text };
    let sink = Sink::new(std::io::stdout(), format, !cli.no_events, clock::boot_offset_ns());
    let mut pipeline = Pipeline::new(sink);
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
