//! Bad input gets one clear line and a non-zero exit, never a panic or a hang.
use std::process::Command;

use upstrace_lab::{require_root, upstrace_binary};

fn upstrace(args: &[&str]) -> (i32, String) {
    let bin = upstrace_binary().expect("upstrace built");
    let out = Command::new(bin).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn one_line_error(stderr: &str, needle: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line: {stderr:?}");
    assert!(lines[0].starts_with("upstrace: error: "), "{stderr:?}");
    assert!(lines[0].contains(needle), "{needle:?} not in {stderr:?}");
    assert!(!stderr.contains("panicked"));
}

#[test]
fn unknown_pid_is_refused() {
    let (code, err) = upstrace(&["--pid", "999999999", "--for", "1"]);
    assert_ne!(code, 0);
    one_line_error(&err, "no such process: 999999999");
}

#[test]
fn no_gateway_running_is_refused_unless_waiting() {
    let (code, err) = upstrace(&["--comm", "no-such-gateway-x", "--for", "1"]);
    assert_ne!(code, 0);
    one_line_error(&err, "no gateway process found");
}

#[test]
fn bad_duration_is_refused() {
    let (code, err) = upstrace(&["--comm", "x", "--for=-3"]);
    assert_ne!(code, 0);
    assert!(err.contains("--for"), "{err}");
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: runs upstrace as root, or with root's privileges dropped")]
fn not_root_is_refused() {
    require_root();
    let bin = upstrace_binary().unwrap();
    // Drop to nobody with no capabilities; init (pid 1) always exists.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(&bin)
        .args(["--pid", "1", "--for", "1"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    one_line_error(&String::from_utf8_lossy(&out.stderr), "needs root");
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: runs upstrace as root, or with root's privileges dropped")]
fn missing_btf_is_refused() {
    require_root();
    let bin = upstrace_binary().unwrap();
    let out = Command::new(&bin).env("UPSTRACE_BTF", "/nonexistent/vmlinux").args(["--pid", "1", "--for", "1"]).output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    one_line_error(&String::from_utf8_lossy(&out.stderr), "no kernel BTF");
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: runs upstrace as root, or with root's privileges dropped")]
fn bpf_not_permitted_is_refused() {
    require_root();
    let bin = upstrace_binary().unwrap();
    // Still uid 0, but without the capabilities BPF needs (as in a locked-down container).
    let out = Command::new("setpriv")
        .args(["--bounding-set=-bpf,-sys_admin,-perfmon", "--inh-caps=-bpf,-sys_admin,-perfmon"])
        .arg(&bin)
        .args(["--pid", "1", "--for", "1", "--json"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("upstrace: error: ") && (last.contains("EPERM") || last.contains("needs root")), "{err}");
    assert!(!err.contains("panicked"));
}
