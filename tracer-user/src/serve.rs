//! `upstrace serve`: the always-on service. No terminal: it waits for the gateways named in its
//! settings, follows their restarts, logs one line per notable thing on stderr, serves
//! metrics, records rotating traces to a directory, and stops cleanly on SIGTERM/SIGINT. Its
//! settings come from flags and a TOML file (flags win); it reloads nothing by itself.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use crate::{
    clock,
    output::{log::Log, metrics, record::Recorder},
    pipeline::Pipeline,
    source::live::{self, Options},
};

pub use crate::cli::{ListenAddr, ServeArgs};

/// A listen address in the config file, read as the flag reads it.
fn listen_addr<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<ListenAddr>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    text.map(|t| t.parse().map_err(serde::de::Error::custom)).transpose()
}

/// Read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG: &str = "/etc/upstrace/upstrace.toml";
const DEFAULT_STATS_INTERVAL_S: f64 = 60.0;
const DEFAULT_RECORD_MAX_MB: u64 = 100;

/// The config file: the same settings as the flags, by the flags' names with `_`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Gateway process names to trace (default: nginx, haproxy, envoy, caddy, traefik).
    #[serde(default, alias = "comms")]
    pub comm: Vec<String>,
    /// Gateway names whose answers are inferred from upstream failures instead of read.
    #[serde(default)]
    pub infer: Vec<String>,
    #[serde(default, deserialize_with = "listen_addr")]
    pub metrics_addr: Option<ListenAddr>,
    pub record_dir: Option<PathBuf>,
    pub record_max_mb: Option<u64>,
    pub stats_interval: Option<f64>,
    pub bpf_stats: Option<bool>,
    /// See OTLP: where verdicts are exported (an OTLP/HTTP endpoint).
    pub otlp_endpoint: Option<String>,
}

impl Config {
    /// Parse a config file's text; errors are one line naming the file and the line.
    pub fn parse(text: &str, name: &Path) -> Result<Config> {
        toml::from_str(text).map_err(|e| {
            let line = e.span().map(|span| text.as_bytes()[..span.start.min(text.len())].iter().filter(|&&c| c == b'\n').count() + 1);
            let at = line.map(|l| format!(", line {l}")).unwrap_or_default();
            anyhow::anyhow!("config file {}{at}: {}", name.display(), e.message().trim().replace('\n', " "))
        })
    }

    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text, path)
    }
}

/// What the service runs with: flags over the config file over defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The config file read, if any.
    pub config: Option<PathBuf>,
    pub comms: Vec<String>,
    pub infer: Vec<String>,
    pub metrics_addr: Option<SocketAddr>,
    pub record_dir: Option<PathBuf>,
    pub record_max_bytes: u64,
    pub stats_interval: Duration,
    pub bpf_stats: bool,
    pub otlp_endpoint: Option<String>,
    pub duration: Option<Duration>,
}

fn seconds(name: &str, v: f64) -> Result<Duration> {
    match Duration::try_from_secs_f64(v) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => bail!("{name} must be a positive number of seconds, not {v}"),
    }
}

impl ServeArgs {
    pub fn settings(&self) -> Result<Settings> {
        self.settings_with_default(Path::new(DEFAULT_CONFIG))
    }

    /// As `settings`, with the file read when `--config` is absent (tests use their own).
    pub fn settings_with_default(&self, default: &Path) -> Result<Settings> {
        let (config, file) = match &self.config {
            Some(path) => (Some(path.clone()), Config::load(path)?),
            None if default.exists() => (Some(default.to_owned()), Config::load(default)?),
            None => (None, Config::default()),
        };
        let pick = |flag: &Vec<String>, key: Vec<String>| if flag.is_empty() { key } else { flag.clone() };
        let stats_interval = self.stats_interval.or(file.stats_interval).unwrap_or(DEFAULT_STATS_INTERVAL_S);
        let record_max_mb = self.record_max_mb.or(file.record_max_mb).unwrap_or(DEFAULT_RECORD_MAX_MB);
        if record_max_mb == 0 {
            bail!("record_max_mb must be at least 1");
        }
        Ok(Settings {
            config,
            comms: pick(&self.comms, file.comm),
            infer: pick(&self.infer, file.infer),
            metrics_addr: self.metrics_addr.or(file.metrics_addr).map(|a| a.0),
            record_dir: self.record_dir.clone().or(file.record_dir),
            record_max_bytes: record_max_mb.saturating_mul(1024 * 1024),
            stats_interval: seconds("stats_interval", stats_interval)?,
            bpf_stats: self.bpf_stats || file.bpf_stats.unwrap_or(false),
            otlp_endpoint: self.otlp_endpoint.clone().or(file.otlp_endpoint),
            duration: self.duration.map(|d| seconds("--for", d)).transpose()?,
        })
    }
}

/// Run the service until SIGTERM/SIGINT (or `--for`).
pub async fn run(s: Settings) -> Result<()> {
    let boot = clock::boot_offset_ns();
    let mut pipeline = Pipeline::new().with(Log::new(std::io::stderr()));
    if let Some(dir) = &s.record_dir {
        pipeline = pipeline.with(Recorder::create_in_dir(dir, boot, s.record_max_bytes)?);
    }
    if let Some(addr) = s.metrics_addr {
        pipeline = pipeline.with(metrics::start(addr));
    }
    if let Some(endpoint) = &s.otlp_endpoint {
        pipeline.outputs.push(crate::output::otlp_exporter(endpoint, boot)?);
    }
    if let Some(path) = &s.config {
        eprintln!("upstrace: settings from {} (flags win)", path.display());
    }
    let opts = Options {
        bpf_stats: s.bpf_stats,
        pids: Vec::new(),
        comms: s.comms,
        // A service starts before or after its gateways, and outlives their restarts.
        wait: true,
        duration: s.duration,
        stats_interval: s.stats_interval,
        infer: s.infer,
        announce: true,
    };
    live::run(opts, &mut pipeline).await?;
    eprintln!("upstrace: stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn args(list: &[&str]) -> ServeArgs {
        Cli::try_parse_from(std::iter::once("serve").chain(list.iter().copied())).unwrap().serve
    }

    fn file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("upstrace-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    const NONE: &str = "/nonexistent/upstrace.toml";

    #[test]
    fn every_key_is_read_and_flags_win() {
        let path = file(
            "full.toml",
            "comm = [\"nginx\", \"haproxy\"]\ninfer = [\"envoy\"]\nmetrics_addr = \"9464\"\nrecord_dir = \"/var/lib/upstrace\"\n\
             record_max_mb = 50\nstats_interval = 30.0\nbpf_stats = true\notlp_endpoint = \"http://127.0.0.1:4318\"\n",
        );
        let conf = path.to_str().unwrap();
        let from_file = args(&["--config", conf]).settings_with_default(Path::new(NONE)).unwrap();
        assert_eq!(
            from_file,
            Settings {
                config: Some(path.clone()),
                comms: vec!["nginx".into(), "haproxy".into()],
                infer: vec!["envoy".into()],
                metrics_addr: Some("127.0.0.1:9464".parse().unwrap()),
                record_dir: Some("/var/lib/upstrace".into()),
                record_max_bytes: 50 << 20,
                stats_interval: Duration::from_secs(30),
                bpf_stats: true,
                otlp_endpoint: Some("http://127.0.0.1:4318".into()),
                duration: None,
            }
        );
        let flags = args(&[
            "--config",
            conf,
            "--comm",
            "caddy",
            "--metrics-addr",
            "0.0.0.0:9100",
            "--record-dir",
            "/tmp/x",
            "--stats-interval",
            "5",
            "--otlp-endpoint",
            "http://collector:4318",
        ]);
        let s = flags.settings_with_default(Path::new(NONE)).unwrap();
        assert_eq!(s.comms, ["caddy"]);
        assert_eq!(s.infer, ["envoy"], "what no flag says comes from the file");
        assert_eq!(s.metrics_addr, Some("0.0.0.0:9100".parse().unwrap()), "an explicit address is taken as given");
        assert_eq!(s.record_dir, Some("/tmp/x".into()));
        assert_eq!(s.stats_interval, Duration::from_secs(5));
        assert_eq!(s.otlp_endpoint.as_deref(), Some("http://collector:4318"));
        let plural = file("plural.toml", "comms = [\"envoy\"]\n");
        assert_eq!(args(&["--config", plural.to_str().unwrap()]).settings_with_default(Path::new(NONE)).unwrap().comms, ["envoy"]);
        // The default file is read only when it exists, and --config replaces it.
        assert_eq!(args(&[]).settings_with_default(&path).unwrap().comms, ["nginx", "haproxy"]);
        let defaults = args(&[]).settings_with_default(Path::new(NONE)).unwrap();
        assert_eq!((defaults.config, defaults.metrics_addr, defaults.record_dir), (None, None, None));
        assert_eq!(defaults.stats_interval, Duration::from_secs(60));
    }

    fn error(text: &str) -> String {
        let path = file("bad.toml", text);
        format!("{:#}", args(&["--config", path.to_str().unwrap()]).settings_with_default(Path::new(NONE)).unwrap_err())
    }

    #[test]
    fn the_packaged_config_reads_with_every_key_uncommented() {
        let packaged = include_str!("../../packaging/upstrace.toml");
        let uncommented: String =
            packaged.lines().map(|l| l.strip_prefix("# ").filter(|k| k.contains(" = ")).unwrap_or(l)).collect::<Vec<_>>().join("\n");
        assert!(uncommented.contains("\nmetrics_addr = "), "{uncommented}");
        let config: Config = toml::from_str(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        assert_eq!(config.comm, ["nginx", "haproxy"]);
    }

    #[test]
    fn a_bad_file_is_one_clear_line() {
        let e = error("comm = [\"nginx\"]\nmetrics_port = 9464\n");
        assert!(e.contains("bad.toml, line 2: unknown field `metrics_port`, expected one of"), "{e}");
        let e = error("comm = [\"a\"]\ncomms = [\"b\"]\n");
        assert!(e.contains("duplicate field `comm`"), "one key, two spellings: {e}");
        let e = error("comm = \"nginx\"\n");
        assert!(e.contains("line 1") && e.contains("invalid type"), "{e}");
        let e = error("metrics_addr = \"localhost:x\"\n");
        assert!(e.contains("invalid listen address \"localhost:x\""), "{e}");
        let e = error("this is not toml\n");
        assert!(e.contains("bad.toml, line 1:"), "{e}");
        let e = error("stats_interval = -1.0\n");
        assert!(e.contains("stats_interval must be a positive number"), "{e}");
        for e in [error("[x]\ny = 1\n"), error("comm = [1,\n2]\n")] {
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        let missing = args(&["--config", "/nonexistent/u.toml"]).settings_with_default(Path::new(NONE)).unwrap_err();
        assert!(format!("{missing:#}").starts_with("cannot read config file /nonexistent/u.toml: "), "{missing:#}");
    }

    #[test]
    fn listen_addresses_default_to_loopback() {
        assert_eq!("9464".parse::<ListenAddr>().unwrap().0, "127.0.0.1:9464".parse().unwrap());
        assert_eq!("[::1]:9464".parse::<ListenAddr>().unwrap().0, "[::1]:9464".parse().unwrap());
        assert_eq!("0.0.0.0:9464".parse::<ListenAddr>().unwrap().0, "0.0.0.0:9464".parse().unwrap());
        assert!(":9464".parse::<ListenAddr>().is_err(), "no implicit every-interface");
        assert!("99999".parse::<ListenAddr>().is_err());
    }
}
