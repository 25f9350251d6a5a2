//! The command line, as clap reads it. Self-contained (clap and std only): `cargo xtask
//! package` compiles this file on its own to write the man page and the shell completions, so
//! nothing here may name the rest of the crate.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    str::FromStr,
};

use clap::{Parser, Subcommand};

/// Why is my gateway returning 502? Traces the connections between gateway processes
/// (nginx, HAProxy, Envoy, Caddy, Traefik) and their upstreams at kernel level, and explains
/// every 5xx they answer with its cause and the kernel evidence.
#[derive(Parser, Debug)]
#[command(name = "upstrace", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Trace these gateway pids (repeatable). Their workers and later children are followed.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Trace processes with this name (repeatable; default: nginx, haproxy, envoy, caddy, traefik).
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,
    /// Print JSON Lines on stdout (verdicts, events, stats) instead of the dashboard.
    #[arg(long, conflicts_with = "text")]
    pub json: bool,
    /// Print plain text lines instead of the dashboard (the default when stdout is not a terminal).
    #[arg(long)]
    pub text: bool,
    /// Leave raw kernel events out of the output (verdicts and stats only).
    #[arg(long)]
    pub no_events: bool,
    /// Record every event and verdict to this trace file (JSON Lines) for postmortems.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// With --record: rotate the trace when it passes this size (FILE -> FILE.1).
    #[arg(long, value_name = "MB", requires = "record")]
    pub record_max_mb: Option<u64>,
    /// Stop after this many seconds (output is flushed). SIGINT/SIGTERM also stop cleanly.
    #[arg(long = "for", value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Do not read this gateway's answers (repeatable, by process name): infer a verdict from
    /// each failed upstream attempt no retry followed (`"status": null`). For clients on
    /// HTTP/3 (QUIC), or a TLS library upstrace does not read.
    #[arg(long = "infer", value_name = "NAME")]
    pub infer: Vec<String>,
    /// Wait for a gateway to start instead of failing when none is running.
    #[arg(long)]
    pub wait: bool,
    /// Report each BPF program's run count and average run time in the stats lines.
    #[arg(long)]
    pub bpf_stats: bool,
    /// Send every verdict to this OpenTelemetry collector as a log record (OTLP/HTTP protobuf,
    /// POST to URL/v1/logs), e.g. http://127.0.0.1:4318. A collector that is down or slow never
    /// blocks tracing: what cannot be sent is dropped and counted in the stats.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Seconds between stats lines (events handled, events lost).
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub stats_interval: f64,
    /// Serve Prometheus metrics at http://ADDR/metrics. A bare PORT binds 127.0.0.1.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<ListenAddr>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run as a service: no terminal, wait for the gateways and follow their restarts, log one
    /// line per notable thing on stderr, serve metrics, record rotating traces. Stops on SIGTERM.
    Serve(ServeArgs),
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
        /// Also send the re-derived verdicts to this OpenTelemetry collector (as the main
        /// command's --otlp-endpoint; the resource is the replaying host).
        #[arg(long, value_name = "URL")]
        otlp_endpoint: Option<String>,
    },
    /// For `cargo xtask bench`: attach an empty program to the same hooks for N seconds and
    /// print its cost per run (the floor under upstrace's overhead) as one JSON line.
    #[command(hide = true)]
    Floor {
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, value_enum, default_value = "all")]
        hooks: FloorSet,
        /// Count runs and run time (the counting itself costs two clock reads per run).
        #[arg(long)]
        stats: bool,
    },
}

/// Which hooks `measure_floor` covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FloorSet {
    /// Every tracepoint upstrace uses, as classic tracepoints.
    All,
    /// The socket and packet hooks only, as classic tracepoints.
    SocketClassic,
    /// The same socket and packet hooks, as tp_btf (raw, BTF-typed tracepoints).
    SocketBtf,
}

/// Where a listener binds: `IP:PORT` as given, or a bare `PORT` on loopback (the safe default:
/// exposing metrics beyond the host is a choice to write out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub SocketAddr);

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(port) = s.parse::<u16>() {
            return Ok(ListenAddr(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)));
        }
        s.parse().map(ListenAddr).map_err(|_| format!("invalid listen address {s:?}: expected PORT (on 127.0.0.1) or IP:PORT"))
    }
}

/// `upstrace serve`'s flags. Each one wins over the config file's key of the same name.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// Config file (TOML, keys named as these flags with `_`). Default: /etc/upstrace/upstrace.toml if it exists.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Trace processes with this name (repeatable; default: nginx, haproxy, envoy, caddy, traefik).
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,
    /// Infer this gateway's answers from its failed upstream attempts instead of reading them (repeatable).
    #[arg(long = "infer", value_name = "NAME")]
    pub infer: Vec<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics. A bare PORT binds 127.0.0.1.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<ListenAddr>,
    /// Record rotating traces in this directory (made 0700; upstrace.jsonl, then .1).
    #[arg(long, value_name = "DIR")]
    pub record_dir: Option<PathBuf>,
    /// With a record directory: rotate past this size (default 100).
    #[arg(long, value_name = "MB")]
    pub record_max_mb: Option<u64>,
    /// Seconds between stats lines in the log (default 60).
    #[arg(long, value_name = "SECONDS")]
    pub stats_interval: Option<f64>,
    /// Report each BPF program's run count and average run time in the stats.
    #[arg(long)]
    pub bpf_stats: bool,
    /// Export verdicts to this OTLP/HTTP endpoint (see OTLP).
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Stop after this many seconds (SIGTERM and SIGINT stop cleanly at any time).
    #[arg(long = "for", value_name = "SECONDS")]
    pub duration: Option<f64>,
}
