//! The service files: the systemd unit passes `systemd-analyze verify`, and the capabilities
//! it grants are enough. upstrace runs as `nobody` with exactly the unit's capability set
//! (ambient, inheritable and bounding, no new privileges) against a lab fault behind HTTPS (so
//! the TLS uprobes on the gateway's libssl are placed too) and must explain the 502.
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
    let unit = std::fs::read_to_string(packaging().join("upstrace.service")).unwrap();
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

/// A copy of the binary that `nobody` may run (the build tree may be private).
fn public_binary() -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("upstrace-caps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("upstrace");
    std::fs::copy(upstrace_binary().expect("upstrace built"), &bin).unwrap();
    Command::new("chmod").args(["755"]).arg(&dir).arg(&bin).status().unwrap();
    (dir, bin)
}

/// Run upstrace as nobody with `caps` on an HTTPS lab fault: the verdict, or why there is none.
fn verdict_as_nobody(caps: &[String], bin: &Path) -> Result<serde_json::Value, String> {
    let mut lab = Lab::new().map_err(|e| e.to_string())?;
    lab.client = ClientMode::TlsH1;
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
    let (dir, bin) = public_binary();
    let caps = unit_caps();
    // Without any capability it must refuse in one clear line (the control).
    let none = verdict_as_nobody(&[], &bin).unwrap_err();
    assert!(none.contains("CAP_BPF and CAP_PERFMON"), "{none}");
    let v = verdict_as_nobody(&caps, &bin).unwrap_or_else(|e| panic!("with {caps:?}: {e}"));
    assert_eq!(v["cause"], "refused", "{v}");
    // The status was read from the TLS library: the uprobes were placed as nobody too.
    assert_eq!((v["status"].as_u64(), v["tls"].as_bool()), (Some(502), Some(true)), "{v}");
    // UPSTRACE_CAPS_EXPLORE=1: also run without each capability in turn and print what breaks.
    if std::env::var_os("UPSTRACE_CAPS_EXPLORE").is_some() {
        for drop in &caps {
            let fewer: Vec<String> = caps.iter().filter(|c| *c != drop).cloned().collect();
            match verdict_as_nobody(&fewer, &bin) {
                Ok(v) => eprintln!("without {drop}: verdict {} tls={}", v["cause"], v["tls"]),
                Err(e) => eprintln!("without {drop}: {}", e.lines().take(3).collect::<Vec<_>>().join(" | ")),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
