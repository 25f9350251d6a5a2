//! Namespaces, veth, upstream, gateways, faults and the client. Everything is torn down on
//! drop, also when a test fails half-way.
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Port the upstream listens on, and the gateway's client-facing port (on its loopback).
pub const UPSTREAM_PORT: u16 = 8081;
pub const GATEWAY_PORT: u16 = 8080;

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

fn sh(args: &[&str]) -> Result<Output> {
    run(Command::new(args[0]).args(&args[1..]))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayKind {
    Nginx,
    Haproxy,
}

impl GatewayKind {
    pub fn name(self) -> &'static str {
        match self {
            GatewayKind::Nginx => "nginx",
            GatewayKind::Haproxy => "haproxy",
        }
    }
}

pub struct Gateway {
    pub kind: GatewayKind,
    /// The master process; workers are its children.
    pub pid: u32,
    child: Child,
    pub log_path: PathBuf,
}

impl Gateway {
    /// The gateway's own error log (nginx error_log / HAProxy log), for comparison.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Worker pids (children of the master).
    pub fn workers(&self) -> Vec<u32> {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.pid)) else {
            return vec![];
        };
        text.split_whitespace().filter_map(|p| p.parse().ok()).collect()
    }
}

pub struct Upstream {
    pub child: Child,
    pub mode: String,
}

impl Upstream {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

pub struct Lab {
    pub id: String,
    pub gw_ns: String,
    pub up_ns: String,
    pub gw_ip: String,
    pub up_ip: String,
    pub dir: PathBuf,
    pub upstream: Option<Upstream>,
    pub gateway: Option<Gateway>,
}

impl Lab {
    /// Two namespaces (gateway, upstream) joined by a veth pair on a /24 of their own.
    pub fn new() -> Result<Self> {
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let id = format!("ut{}x{n}", std::process::id() % 100_000);
        let subnet = 100 + (std::process::id() as u32 * 7 + n) % 150;
        let dir = std::env::temp_dir().join(format!("upstrace-lab-{id}"));
        std::fs::create_dir_all(&dir)?;
        // World-readable so nginx workers (user nobody) can use it.
        let _ = sh(&["chmod", "755", dir.to_str().unwrap()]);
        let lab = Lab {
            gw_ns: format!("{id}gw"),
            up_ns: format!("{id}up"),
            gw_ip: format!("10.{subnet}.0.1"),
            up_ip: format!("10.{subnet}.0.2"),
            id,
            dir,
            upstream: None,
            gateway: None,
        };
        lab.setup_network()?;
        Ok(lab)
    }

    fn setup_network(&self) -> Result<()> {
        let (gw, up) = (&self.gw_ns, &self.up_ns);
        let (veth_gw, veth_up) = (format!("{}g", self.id), format!("{}u", self.id));
        sh(&["ip", "netns", "add", gw])?;
        sh(&["ip", "netns", "add", up])?;
        sh(&["ip", "link", "add", &veth_gw, "netns", gw, "type", "veth", "peer", "name", &veth_up, "netns", up])?;
        for (ns, dev, ip) in [(gw, &veth_gw, &self.gw_ip), (up, &veth_up, &self.up_ip)] {
            sh(&["ip", "-n", ns, "addr", "add", &format!("{ip}/24"), "dev", dev])?;
            sh(&["ip", "-n", ns, "link", "set", dev, "up"])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    pub fn veth_gw(&self) -> String {
        format!("{}g", self.id)
    }

    pub fn veth_up(&self) -> String {
        format!("{}u", self.id)
    }

    pub fn upstream_addr(&self) -> String {
        format!("{}:{UPSTREAM_PORT}", self.up_ip)
    }

    /// Run a command inside a namespace of this lab and wait for it.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<Output> {
        run(Command::new("ip").args(["netns", "exec", ns]).args(args))
    }

    /// Start the misbehaving upstream in the upstream namespace and wait until it listens.
    pub fn start_upstream(&mut self, mode: &str) -> Result<u32> {
        self.stop_upstream();
        let bin = crate::find_binary("upstrace-lab-upstream", "UPSTRACE_LAB_UPSTREAM")?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.up_ns])
            .arg(&bin)
            .args(["--listen", &self.upstream_addr(), "--mode", mode, "--backlog", if mode == "no-accept" { "1" } else { "128" }])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = child.kill();
            bail!("lab upstream did not start (mode {mode})");
        }
        let pid = child.id();
        self.upstream = Some(Upstream { child, mode: mode.into() });
        Ok(pid)
    }

    pub fn stop_upstream(&mut self) {
        if let Some(mut up) = self.upstream.take() {
            let _ = up.child.kill();
            let _ = up.child.wait();
        }
    }

    /// Start a gateway in the gateway namespace, proxying to the lab upstream, with short
    /// timeouts (connect 2 s, read 2 s) and no retries to other servers.
    pub fn start_gateway(&mut self, kind: GatewayKind) -> Result<u32> {
        let (conf, log_path) = match kind {
            GatewayKind::Nginx => self.nginx_conf()?,
            GatewayKind::Haproxy => self.haproxy_conf()?,
        };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.gw_ns]);
        match kind {
            GatewayKind::Nginx => cmd.args(["nginx", "-c", conf.to_str().unwrap(), "-p", self.dir.to_str().unwrap()]),
            GatewayKind::Haproxy => cmd.args(["haproxy", "-db", "-f", conf.to_str().unwrap()]),
        };
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()
            .with_context(|| format!("starting {}", kind.name()))?;
        let pid = child.id();
        self.gateway = Some(Gateway { kind, pid, child, log_path });
        // Ready when its port accepts connections (checked from inside its namespace).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let probe = Command::new("ip")
                .args(["netns", "exec", &self.gw_ns, "bash", "-c"])
                .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{GATEWAY_PORT}"))
                .stderr(Stdio::null())
                .status()?;
            let workers = self.gateway.as_ref().map(|g| g.workers().len()).unwrap_or(0);
            if probe.success() && (kind == GatewayKind::Haproxy || workers > 0) {
                return Ok(pid);
            }
            if Instant::now() > deadline {
                bail!("{} did not start listening; log: {}", kind.name(), self.gateway.as_ref().unwrap().log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn nginx_conf(&self) -> Result<(PathBuf, PathBuf)> {
        let d = self.dir.display();
        let log = self.dir.join("error.log");
        let conf = format!(
            r#"daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log error;
events {{ worker_connections 1024; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream backend {{
        server {up};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 2s;
            proxy_read_timeout 2s;
            proxy_send_timeout 2s;
        }}
    }}
}}
"#,
            up = self.upstream_addr(),
            port = GATEWAY_PORT,
        );
        let path = self.dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        Ok((path, log))
    }

    fn haproxy_conf(&self) -> Result<(PathBuf, PathBuf)> {
        let log = self.dir.join("haproxy.log");
        let conf = format!(
            r#"global
    maxconn 1024
defaults
    mode http
    timeout connect 2s
    timeout client 5s
    timeout server 2s
    retries 0
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    http-reuse safe
    server up1 {up}
"#,
            up = self.upstream_addr(),
            port = GATEWAY_PORT,
        );
        let path = self.dir.join("haproxy.cfg");
        std::fs::write(&path, conf)?;
        Ok((path, log))
    }

    pub fn stop_gateway(&mut self) {
        if let Some(mut gw) = self.gateway.take() {
            unsafe { libc::kill(gw.pid as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = gw.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = gw.child.kill();
            let _ = gw.child.wait();
        }
    }

    /// One HTTP request from a client inside the gateway namespace. Returns the status
    /// (0 when no valid status line came back) and curl's exit code.
    pub fn request(&self, path: &str) -> Result<(u16, i32)> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.gw_ns, "curl", "-s", "-o", "/dev/null", "--max-time", "10", "-w", "%{http_code}"])
            .arg(format!("http://127.0.0.1:{GATEWAY_PORT}{path}"))
            .output()
            .context("running curl")?;
        let status = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
        Ok((status, out.status.code().unwrap_or(-1)))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_gateway();
        self.stop_upstream();
        let _ = sh(&["ip", "netns", "del", &self.gw_ns]);
        let _ = sh(&["ip", "netns", "del", &self.up_ns]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
