//! Root tests for the client-side views: a gateway with TLS built in (Caddy, Go crypto/tls)
//! cannot be read, so its failed upstream attempts get `inferred` verdicts, and upstrace says
//! at start which view it has. Loopback only: Caddy on 127.0.0.1, its upstream a closed port.
use std::{
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use upstrace_lab::{require_root, tracer::Tracer};

const CADDY_PORT: u16 = 28443;

struct Caddy {
    child: Child,
    dir: std::path::PathBuf,
}

impl Caddy {
    /// HTTPS (Caddy's internal CA) in front of 127.0.0.1:1, where nothing listens.
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("upstrace-caddy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("Caddyfile");
        std::fs::write(
            &conf,
            format!(
                "{{\n admin off\n auto_https disable_redirects\n skip_install_trust\n storage file_system {}\n}}\n\
                 https://localhost:{CADDY_PORT} {{\n tls internal\n reverse_proxy 127.0.0.1:1\n}}\n",
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
        while TcpStream::connect(("127.0.0.1", CADDY_PORT)).is_err() {
            assert!(Instant::now() < deadline, "caddy did not listen on {CADDY_PORT}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Caddy { child, dir }
    }

    fn request(&self, http: &str) -> u16 {
        let out = Command::new("curl")
            .args(["-sk", http, "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", "--resolve"])
            .arg(format!("localhost:{CADDY_PORT}:127.0.0.1"))
            .arg(format!("https://localhost:{CADDY_PORT}/"))
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

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs")]
fn a_gateway_with_built_in_tls_gets_inferred_verdicts() {
    require_root();
    let caddy = Caddy::start();
    let tracer = Tracer::start(&["--no-events", "--pid", &caddy.child.id().to_string()]).unwrap();
    assert!(tracer.stderr().contains("caddy: client view inferred only"), "{}", tracer.stderr());
    let statuses = [caddy.request("--http1.1"), caddy.request("--http2")];
    assert_eq!(statuses, [502, 502], "Caddy answers 502 for a refused upstream");
    let two = |lines: &[serde_json::Value]| lines.iter().filter(|l| l["type"] == "verdict").count() >= 2;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !two(&tracer.lines()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, lines) = tracer.stop().unwrap();
    let verdicts: Vec<_> = lines.iter().filter(|l| l["type"] == "verdict").collect();
    assert_eq!(verdicts.len(), 2, "one verdict per failed request: {verdicts:#?}");
    for v in verdicts {
        assert_eq!(v["delivered"], "inferred", "{v}");
        assert!(v["status"].is_null(), "{v}");
        assert_eq!((v["class"].as_str(), v["cause"].as_str()), (Some("upstream"), Some("refused")), "{v}");
        assert_eq!(v["upstream"], "127.0.0.1:1");
        assert_eq!(v["gateway"]["comm"], "caddy");
    }
}
