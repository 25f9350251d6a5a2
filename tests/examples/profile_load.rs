//! Helper for profiling: a lab with a gateway (nginx unless named) in front of a healthy or
//! broken upstream, kept up for N seconds while the caller attaches tools.
//! `profile_load MODE SECONDS [nginx|haproxy|caddy]` prints the gateway pid and the client
//! namespace, then waits.
use upstrace_lab::lab::{GatewayKind, Lab};

fn main() -> anyhow::Result<()> {
    upstrace_lab::ensure_root("profile_load")?;
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("ok");
    let secs: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(30);
    let gateway = match args.get(3).map(String::as_str) {
        None | Some("nginx") => GatewayKind::Nginx,
        Some("haproxy") => GatewayKind::Haproxy,
        Some("caddy") => GatewayKind::Caddy,
        Some(other) => anyhow::bail!("unknown gateway {other}: nginx, haproxy or caddy"),
    };
    let mut lab = Lab::new()?;
    lab.nginx_workers = 2;
    if mode != "refused" {
        lab.start_upstream(mode)?;
    }
    let pid = lab.start_gateway(gateway)?;
    println!("{pid} {}", lab.gw_ns);
    std::thread::sleep(std::time::Duration::from_secs(secs.min(600)));
    Ok(())
}
