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
        Self::start_binary(port, std::path::Path::new("caddy"))
    }

    fn start_binary(port: u16, binary: &std::path::Path) -> Self {
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
        let child = Command::new(binary)
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
    // The probe sits past the entry, on an instruction the kernel emulates (not single-stepped).
    let view = "caddy: client view go-tls (/usr/bin/caddy at crypto/tls.(*Conn).Write+0x";
    assert!(tracer.stderr().contains(view), "{}", tracer.stderr());
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

/// A scratch directory removed at the end of a test.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("upstrace-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Rename a section of a 64-bit ELF file in its section-name table, leaving its bytes (and so
/// the program, which finds its tables through its own data, not through section headers).
fn rename_elf_section(elf: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap()) as usize;
    let (shoff, entsize, names) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3e));
    let names_header = shoff + names * entsize;
    let (start, size) = (u64_at(names_header + 0x18), u64_at(names_header + 0x20));
    let table = &mut elf[start..start + size];
    let mut wanted = from.to_vec();
    wanted.push(0);
    let at = table.windows(wanted.len()).position(|w| w == wanted.as_slice()).expect("section name present");
    table[at..at + to.len()].copy_from_slice(to);
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs")]
fn a_go_gateway_whose_function_table_cannot_be_read_is_inferred() {
    require_root();
    // Caddy with its `.gopclntab` section renamed: it runs as before, but upstrace cannot find
    // `crypto/tls.(*Conn).Write` in it.
    let scratch = Scratch::new("caddy-no-table");
    let binary = scratch.0.join("caddy");
    let mut elf = std::fs::read("/usr/bin/caddy").expect("caddy installed by cargo xtask setup");
    rename_elf_section(&mut elf, b".gopclntab", b".xopclntab");
    std::fs::write(&binary, elf).unwrap();
    std::fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let caddy = Caddy::start_binary(28445, &binary);
    let tracer = Tracer::start(&["--no-events", "--pid", &caddy.child.id().to_string()]).unwrap();
    assert!(tracer.stderr().contains("caddy: client view inferred only"), "{}", tracer.stderr());
    assert_eq!(caddy.request("--http1.1"), 502, "Caddy answers 502 for a refused upstream");
    let verdicts = verdicts_after(tracer, 1);
    assert_eq!(verdicts.len(), 1, "{verdicts:#?}");
    assert_eq!((verdicts[0]["delivered"].as_str(), verdicts[0]["cause"].as_str()), (Some("inferred"), Some("refused")), "{}", verdicts[0]);
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs")]
fn a_libssl_without_ssl_write_is_said_and_tracing_goes_on() {
    require_root();
    // A shared library named libssl.so.3 that has no SSL_write (zlib under another name),
    // preloaded into a process upstrace is told to trace.
    let scratch = Scratch::new("fake-libssl");
    let fake = scratch.0.join("libssl.so.3");
    std::fs::copy("/lib/x86_64-linux-gnu/libz.so.1", &fake).unwrap();
    let mut gateway = Command::new("sleep").arg("30").env("LD_PRELOAD", &fake).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let tracer = Tracer::start(&["--no-events", "--pid", &gateway.id().to_string()]).unwrap();
    let stderr = tracer.stderr();
    let said = stderr.lines().find(|l| l.contains("TLS plaintext not readable")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(said.contains("libssl.so.3") && said.contains("SSL_write"), "names the file and the symbol: {said}");
    assert!(stderr.contains("sleep: client view plaintext"), "{stderr}");
    let (code, _) = tracer.stop().unwrap();
    assert_eq!(code, 0, "tracing went on and stopped cleanly");
    let _ = gateway.kill();
    let _ = gateway.wait();
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs")]
fn gateways_that_exit_while_they_are_attached_to_break_nothing() {
    require_root();
    // Short-lived processes under a gateway's name, each mapping the real libssl: some exit
    // between being found and their maps being read or their libssl attached.
    let scratch = Scratch::new("flicker");
    let name = "upsflicker";
    let binary = scratch.0.join(name);
    std::fs::copy("/usr/bin/sleep", &binary).unwrap();
    let libssl = "/lib/x86_64-linux-gnu/libssl.so.3";
    let tracer = Tracer::start(&["--no-events", "--wait", "--comm", name]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut children = Vec::new();
    for i in 0..40u64 {
        let life = format!("0.{:03}", 20 + (i * 37) % 900);
        children.push(Command::new(&binary).arg(life).env("LD_PRELOAD", libssl).spawn().unwrap());
        std::thread::sleep(Duration::from_millis(60));
        assert!(Instant::now() < deadline);
    }
    for mut c in children {
        let _ = c.wait();
    }
    let stderr = tracer.stderr();
    let (code, _) = tracer.stop().unwrap();
    assert_eq!(code, 0, "upstrace stopped cleanly: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains(&format!("{name}: client view openssl")), "at least one was read before it went: {stderr}");
}
