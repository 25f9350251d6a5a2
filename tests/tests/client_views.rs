//! Root tests for the client-side views of a Go gateway (Caddy from Debian: stripped, TLS in Go's
//! crypto/tls): read at `crypto/tls.(*Conn).Write` over HTTP/1.1 and HTTP/2, or, when its
//! answers are not to be read (`--infer`), inferred from its failed upstream attempts. upstrace
//! says at start which view it has. Loopback only: Caddy on 127.0.0.1, its upstream a closed port.
use std::{
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use upstrace_lab::{require_root, tracer::Tracer};

struct Caddy {
    child: Child,
    dir: std::path::PathBuf,
    port: u16,
}

impl Caddy {
    /// HTTPS (Caddy's internal CA) in front of 127.0.0.1:1, where nothing listens.
    fn start(port: u16) -> Self {
        let dir = std::env::temp_dir().join(format!("upstrace-caddy-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("Caddyfile");
        std::fs::write(
            &conf,
            format!(
                "{{\n admin off\n auto_https disable_redirects\n skip_install_trust\n storage file_system {}\n}}\n\
                 https://localhost:{port} {{\n tls internal\n reverse_proxy 127.0.0.1:1\n}}\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&conf)
            .env("HOME", &dir)
            .env("XDG_DATA_HOME", dir.join("xdg"))
            .env("XDG_CONFIG_HOME", dir.join("xdg"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting caddy (installed by cargo xtask setup)");
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "caddy did not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Caddy { child, dir, port }
    }

    fn request(&self, http: &str) -> u16 {
        let out = Command::new("curl")
            .args(["-sk", http, "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", "--resolve"])
            .arg(format!("localhost:{}:127.0.0.1", self.port))
            .arg(format!("https://localhost:{}/", self.port))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn verdicts_after(tracer: Tracer, n: usize) -> Vec<serde_json::Value> {
    let enough = |lines: &[serde_json::Value]| lines.iter().filter(|l| l["type"] == "verdict").count() >= n;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !enough(&tracer.lines()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, lines) = tracer.stop().unwrap();
    lines.into_iter().filter(|l| l["type"] == "verdict").collect()
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs")]
fn a_go_gateway_is_read_at_crypto_tls_write_over_http1_and_http2() {
    require_root();
    let caddy = Caddy::start(28443);
    let tracer = Tracer::start(&["--no-events", "--pid", &caddy.child.id().to_string()]).unwrap();
    assert!(tracer.stderr().contains("caddy: client view go-tls (/usr/bin/caddy)"), "{}", tracer.stderr());
    let statuses = [caddy.request("--http1.1"), caddy.request("--http2")];
    assert_eq!(statuses, [502, 502], "Caddy answers 502 for a refused upstream");
    let verdicts = verdicts_after(tracer, 2);
    assert_eq!(verdicts.len(), 2, "one verdict per 5xx: {verdicts:#?}");
    for (v, protocol) in verdicts.iter().zip(["h1", "h2"]) {
        assert_eq!((v["status"].as_u64(), v["delivered"].as_str()), (Some(502), Some("status")), "{v}");
        assert_eq!((v["protocol"].as_str(), v["tls"].as_bool()), (Some(protocol), Some(true)), "{v}");
        assert_eq!((v["class"].as_str(), v["cause"].as_str()), (Some("upstream"), Some("refused")), "{v}");
    }
    assert!(verdicts[1]["stream"].as_u64().is_some_and(|s| s % 2 == 1), "an HTTP/2 client stream: {}", verdicts[1]);
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs")]
fn a_gateway_whose_answers_are_not_read_gets_inferred_verdicts() {
    require_root();
    let caddy = Caddy::start(28444);
    let tracer = Tracer::start(&["--no-events", "--infer", "caddy", "--pid", &caddy.child.id().to_string()]).unwrap();
    assert!(tracer.stderr().contains("caddy: client view inferred only"), "{}", tracer.stderr());
    let statuses = [caddy.request("--http1.1"), caddy.request("--http2")];
    assert_eq!(statuses, [502, 502], "Caddy answers 502 for a refused upstream");
    let verdicts = verdicts_after(tracer, 2);
    assert_eq!(verdicts.len(), 2, "one verdict per failed request: {verdicts:#?}");
    for v in verdicts {
        assert_eq!(v["delivered"], "inferred", "{v}");
        assert!(v["status"].is_null(), "{v}");
        assert_eq!((v["class"].as_str(), v["cause"].as_str()), (Some("upstream"), Some("refused")), "{v}");
        assert_eq!(v["upstream"], "127.0.0.1:1");
        assert_eq!(v["gateway"]["comm"], "caddy");
    }
}
