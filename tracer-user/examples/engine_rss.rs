//! Memory of the tracking/attribution state with many live connections: feeds N open
//! upstream connections (connect, established, request sent) into the engine and prints the
//! process's resident set size. Used by `cargo xtask bench`.
use std::net::SocketAddr;

use upstrace::{
    engine::attribute::Engine,
    engine::decode::{KernelEvent, Kind, TcpState},
};

// The harness's RSS reader (upstrace-tests), shared by path: one copy.
#[path = "../../tests/src/rss.rs"]
mod rss;

fn rss_kib() -> u64 {
    rss::rss_kib(std::process::id())
}

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let before = rss_kib();
    let mut engine = Engine::new();
    let dst: SocketAddr = "10.0.0.2:8081".parse().unwrap();
    for i in 0..n {
        let mut ev = KernelEvent::listen_snapshot(1_000_000 + i * 1000, 100 + (i % 8) as u32, "nginx", dst);
        ev.kind = Kind::ConnectStart;
        ev.sock = 0xffff_8880_0000_0000 + i * 0x800;
        ev.dst = Some(dst);
        ev.src = Some(SocketAddr::new("10.0.0.1".parse().unwrap(), (i % 60000) as u16 + 1024));
        ev.tid = ev.pid;
        engine.handle(&ev);
        ev.kind = Kind::StateChange;
        ev.old_state = Some(TcpState::SynSent);
        ev.new_state = Some(TcpState::Established);
        engine.handle(&ev);
        ev.kind = Kind::RequestSent;
        ev.bytes_sent = 80;
        engine.handle(&ev);
    }
    let after = rss_kib();
    println!(
        "{{\"connections\":{n},\"rss_kib_before\":{before},\"rss_kib_after\":{after},\"attempts_tracked\":{}}}",
        engine.tracker.attempts.len()
    );
}
