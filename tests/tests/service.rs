//! The service files: the systemd unit passes `systemd-analyze verify`, and the capabilities
//! it grants are enough and each one is needed. upstrace runs as `nobody` with exactly the
//! unit's capability set (ambient, inheritable and bounding, no new privileges) against a lab
//! fault and must explain the 502; with the TLS drop-in's capabilities added, also when the
//! client speaks HTTPS (uprobes on the gateway's libssl).
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use upstrace_lab::{
    lab::{ClientMode, GatewayKind, Lab},
    require_root,
    tracer::Tracer,
    upstrace_binary,
};

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging")
}

/// The unit's `KEY=` value split on whitespace (the last assignment of that key).
fn unit_list(key: &str) -> Vec<String> {
    file_list("upstrace.service", key)
}

fn file_list(file: &str, key: &str) -> Vec<String> {
    let unit = std::fs::read_to_string(packaging().join(file)).unwrap();
    let line = unit.lines().rev().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap_or_else(|| panic!("no {key}= in the unit"));
    line.split_whitespace().map(str::to_owned).collect()
}

fn unit_caps() -> Vec<String> {
    let ambient = unit_list("AmbientCapabilities");
    assert_eq!(ambient, unit_list("CapabilityBoundingSet"), "ambient and bounding sets differ");
    ambient
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    // `verify` checks the ExecStart binary exists: point it at a copy of the unit whose binary
    // is the built one (the installed unit is checked by the package test).
    let dir = std::env::temp_dir().join(format!("upstrace-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = upstrace_binary().expect("upstrace built");
    let unit = std::fs::read_to_string(packaging().join("upstrace.service")).unwrap();
    assert!(unit.contains("\nExecStart=/usr/bin/upstrace serve\n"));
    let copy = dir.join("upstrace.service");
    std::fs::write(&copy, unit.replace("ExecStart=/usr/bin/upstrace", &format!("ExecStart={}", bin.display()))).unwrap();
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&copy).output().expect("systemd-analyze (systemd)");
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    // Only warnings about the machine itself (no systemd as PID 1 in a container) may remain.
    let problems: Vec<&str> = err.lines().filter(|l| l.contains("upstrace.service")).collect();
    assert!(out.status.success() && problems.is_empty(), "systemd-analyze verify: {err}");
    for key in ["NoNewPrivileges=yes", "ProtectSystem=strict", "DynamicUser=yes", "StateDirectoryMode=0700", "UMask=0077"] {
        assert!(unit.lines().any(|l| l == key), "the unit lacks {key}");
    }
    assert!(!unit.lines().any(|l| l.starts_with("User=root")), "the unit must not run as root");
    // systemd's own exposure score (0 = locked down, 10 = root with everything): "OK" is below 5.
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(packaging().join("upstrace.service"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for upstrace.service: "))
        .and_then(|(_, v)| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level: {text}"));
    assert!(score < 5.0, "exposure {score}: {text}");
}

/// `setpriv` arguments for `nobody` with exactly `caps` (CAP_X names), then the binary.
fn as_nobody(caps: &[String], bin: &Path) -> Vec<String> {
    let list: Vec<String> = caps.iter().map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase())).collect();
    let set = if list.is_empty() { "-all".to_owned() } else { format!("-all,{}", list.join(",")) };
    vec![
        "setpriv".into(),
        "--reuid=65534".into(),
        "--regid=65534".into(),
        "--clear-groups".into(),
        format!("--inh-caps={set}"),
        format!("--ambient-caps={set}"),
        format!("--bounding-set={set}"),
        "--no-new-privs".into(),
        "--".into(),
        bin.display().to_string(),
    ]
}

/// A directory removed on drop, also when the test fails.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A copy of the binary that `nobody` may run (the build tree may be private).
fn public_binary() -> (TempDir, PathBuf) {
    let dir = std::env::temp_dir().join(format!("upstrace-caps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("upstrace");
    std::fs::copy(upstrace_binary().expect("upstrace built"), &bin).unwrap();
    Command::new("chmod").args(["755"]).arg(&dir).arg(&bin).status().unwrap();
    (TempDir(dir), bin)
}

/// Run upstrace as nobody with `caps` on an HTTPS lab fault: the verdict, or why there is none.
fn verdict_as_nobody(caps: &[String], bin: &Path, client: ClientMode) -> Result<serde_json::Value, String> {
    let mut lab = Lab::new().map_err(|e| e.to_string())?;
    lab.client = client;
    let pid = lab.start_gateway(GatewayKind::Nginx).map_err(|e| e.to_string())?.to_string();
    let cmd = as_nobody(caps, bin);
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let tracer = Tracer::start_via(&cmd, &["--pid", &pid, "--no-events"], |_| true).map_err(|e| format!("{e:#}"))?;
    // It runs as nobody with exactly these capabilities.
    let status = std::fs::read_to_string(format!("/proc/{}/status", tracer.pid())).unwrap_or_default();
    let uid =
        status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or_default().split_whitespace().next().unwrap_or_default().to_owned();
    if uid != "65534" {
        return Err(format!("upstrace runs as uid {uid}"));
    }
    let (code, _) = lab.request("/").map_err(|e| e.to_string())?;
    if code != 502 {
        return Err(format!("the gateway answered {code}"));
    }
    let verdict = tracer.wait_for(Duration::from_secs(5), |l| l["type"] == "verdict");
    let stderr = tracer.stderr();
    let _ = tracer.stop();
    verdict.ok_or_else(|| format!("no verdict; stderr: {stderr}"))
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: runs upstrace under setpriv against a network-namespace lab")]
fn the_units_capabilities_are_enough_as_an_unprivileged_user() {
    require_root();
    let (_dir, bin) = public_binary();
    let caps = unit_caps();
    // Without any capability it must refuse in one clear line (the control).
    let none = verdict_as_nobody(&[], &bin, ClientMode::Plain).unwrap_err();
    assert!(none.contains("CAP_BPF and CAP_PERFMON"), "{none}");
    let v = verdict_as_nobody(&caps, &bin, ClientMode::Plain).unwrap_or_else(|e| panic!("with {caps:?}: {e}"));
    assert_eq!((v["cause"].as_str(), v["status"].as_u64(), v["tls"].as_bool()), (Some("refused"), Some(502), Some(false)), "{v}");
    // Each one is needed: without it, no verdict.
    for drop in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != drop).cloned().collect();
        if let Ok(v) = verdict_as_nobody(&fewer, &bin, ClientMode::Plain) {
            panic!("{drop} is not needed: a verdict came without it: {v}");
        }
    }
    // The TLS drop-in's extra capabilities let it read the answer over HTTPS too.
    let tls_caps = file_list("tls-views.conf", "AmbientCapabilities");
    assert_eq!(tls_caps, file_list("tls-views.conf", "CapabilityBoundingSet"));
    let all: Vec<String> = caps.iter().chain(&tls_caps).cloned().collect();
    let v = verdict_as_nobody(&all, &bin, ClientMode::TlsH1).unwrap_or_else(|e| panic!("with {all:?}: {e}"));
    assert_eq!((v["cause"].as_str(), v["status"].as_u64(), v["tls"].as_bool()), (Some("refused"), Some(502), Some(true)), "{v}");
}

fn dpkg(args: &[&str]) -> (bool, String) {
    let out = Command::new("dpkg").args(args).output().expect("dpkg");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The newest `target/debian/upstrace_*.deb` (`cargo xtask package` makes it; so does `cargo xtask test`).
fn built_deb() -> PathBuf {
    let dir = upstrace_lab::target_dir().join("debian");
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "deb") && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("upstrace_"))
        })
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| panic!("no upstrace .deb in {}: run `cargo xtask package` first", dir.display()))
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: installs and removes the package with dpkg")]
fn the_package_installs_and_removes_cleanly() {
    require_root();
    let deb = built_deb();
    if dpkg(&["-s", "upstrace"]).0 {
        eprintln!("removing the upstrace package left by an earlier run");
        assert!(dpkg(&["-P", "upstrace"]).0);
    }
    assert!(!Path::new("/usr/bin/upstrace").exists(), "/usr/bin/upstrace exists and no package owns it: not overwriting it");
    let (ok, out) = dpkg(&["-i", deb.to_str().unwrap()]);
    assert!(ok, "dpkg -i: {out}");
    let files = [
        "/usr/bin/upstrace",
        "/lib/systemd/system/upstrace.service",
        "/etc/upstrace/upstrace.toml",
        "/usr/share/man/man8/upstrace.8.gz",
        "/usr/share/bash-completion/completions/upstrace",
        "/usr/share/zsh/vendor-completions/_upstrace",
        "/usr/share/fish/vendor_completions.d/upstrace.fish",
        "/usr/share/doc/upstrace/examples/tls-views.conf",
        "/usr/share/doc/upstrace/copyright",
    ];
    let check = || -> Result<(), String> {
        for f in files {
            if !Path::new(f).is_file() {
                return Err(format!("{f} not installed"));
            }
        }
        let version = Command::new("/usr/bin/upstrace").arg("--version").output().map_err(|e| e.to_string())?;
        let version = String::from_utf8_lossy(&version.stdout).into_owned();
        if version.trim() != format!("upstrace {}", env!("CARGO_PKG_VERSION")) {
            return Err(format!("upstrace --version: {version}"));
        }
        let man = Command::new("gzip").args(["-dc", "/usr/share/man/man8/upstrace.8.gz"]).output().map_err(|e| e.to_string())?;
        let man = String::from_utf8_lossy(&man.stdout).into_owned();
        if !man.contains(".TH upstrace 8") || !man.contains("otlp\\-endpoint") {
            return Err("the man page is not upstrace(8) with --otlp-endpoint".into());
        }
        let unit = std::fs::read_to_string("/lib/systemd/system/upstrace.service").unwrap();
        if unit != std::fs::read_to_string(packaging().join("upstrace.service")).unwrap() {
            return Err("the installed unit differs from packaging/upstrace.service".into());
        }
        // Installed, not enabled.
        if Path::new("/etc/systemd/system/multi-user.target.wants/upstrace.service").exists() {
            return Err("the unit was enabled by the install".into());
        }
        let conf = std::fs::read_to_string("/etc/upstrace/upstrace.toml").unwrap();
        for key in ["comms", "infer", "metrics_addr", "otlp_endpoint", "record_dir", "record_max_mb", "stats_interval"] {
            if !conf.lines().any(|l| l.starts_with(&format!("# {key} = "))) {
                return Err(format!("the config lacks a commented {key}"));
            }
        }
        // The installed unit, with its real ExecStart, passes verify.
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no", "/lib/systemd/system/upstrace.service"])
            .output()
            .map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || err.lines().any(|l| l.contains("upstrace.service")) {
            return Err(format!("systemd-analyze verify: {err}"));
        }
        Ok(())
    };
    let installed = check();
    // Remove before judging, so a failure leaves nothing behind.
    let (ok, out) = dpkg(&["-r", "upstrace"]);
    assert!(ok, "dpkg -r: {out}");
    let left: Vec<&str> = files.iter().copied().filter(|f| Path::new(f).exists() && *f != "/etc/upstrace/upstrace.toml").collect();
    // The config is a conffile: kept by remove, deleted by purge.
    let conf_kept = Path::new("/etc/upstrace/upstrace.toml").exists();
    let (ok, out) = dpkg(&["-P", "upstrace"]);
    assert!(ok, "dpkg -P: {out}");
    installed.unwrap();
    assert!(left.is_empty(), "dpkg -r left {left:?}");
    assert!(conf_kept, "dpkg -r must keep the edited config");
    assert!(!Path::new("/etc/upstrace").exists(), "dpkg -P left /etc/upstrace");
    assert!(!dpkg(&["-s", "upstrace"]).0, "still known to dpkg after purge");
}
