//! Userspace cost per kernel event in a refused-connection storm: builds the raw records the
//! kernel sends for each refused attempt (connect start, RST, ECONNREFUSED, CLOSE, the 502
//! status line), then decodes them and runs them through the pipeline (JSON verdicts into a
//! discarded writer), as the live loop does. Prints ns per event and the RSS reached.
//! `cargo run --release --example storm_cpu -- [attempts] [attempts per second] [% statuses lost] [json|none] [tcp|unix|marked]`
//! (the third mimics a ring buffer that overflowed: attempts whose status never arrives; the
//! last says whether verdicts are written as JSON lines or only counted, as the metrics and the
//! dashboard do; `unix` makes the upstream a killed PHP-FPM behind its unix socket, `marked` a gateway
//! answering without trying once its servers are marked failed).
use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use tracer_common::{AF_INET, Event, EventKind};
use upstrace::{
    engine::decode::Decoder,
    output::sink::{Format, Sink},
    pipeline::Pipeline,
};

// The harness's RSS reader (upstrace-tests), shared by path: one copy.
#[path = "../../tests/src/rss.rs"]
mod rss;

/// Counts heap allocations (the engine's main cost besides formatting).
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn record(kind: EventKind, ts_ns: u64, sock: u64, fill: impl FnOnce(&mut Event)) -> Vec<u8> {
    let mut e = Event::zeroed();
    e.kind = kind as u8;
    e.ts_ns = ts_ns;
    e.sock = sock;
    e.pid = 4242;
    e.tid = 4242;
    e.comm[..5].copy_from_slice(b"nginx");
    e.family = AF_INET;
    e.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
    e.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
    e.dport = 8081;
    fill(&mut e);
    // SAFETY: Event is plain old data.
    unsafe { std::slice::from_raw_parts((&e as *const Event).cast::<u8>(), size_of::<Event>()) }.to_vec()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let attempts: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let rate: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let lost_pct: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
    let written = args.next().is_none_or(|a| a != "none");
    // `unix`: PHP-FPM behind a unix socket, killed (connect(2) refused: one event per attempt).
    // `marked`: after a first few refusals, the gateway answers without trying (nginx's "no
    // live upstreams" once its servers are marked failed): statuses alone.
    let shape = args.next().unwrap_or_default();
    let unix = shape == "unix";
    let marked = shape == "marked";
    let gap = 1_000_000_000 / rate.max(1);
    let mut stream = Vec::with_capacity(attempts as usize * 5);
    for i in 0..attempts {
        let t = 1_000_000_000 + i * gap;
        let sock = 0xffff_8880_0000_0000 + (i % 50_000) * 0x800;
        let port = (i % 28_000) as u16 + 32_768;
        if marked && i >= 16 {
            // No attempt: the status alone.
        } else if unix {
            stream.push(record(EventKind::ConnectSyscall, t, sock, |e| {
                e.family = tracer_common::AF_UNIX;
                e.value = -111;
                e.data[..23].copy_from_slice(b"/run/php/php-fpm.sock\0\0");
            }));
        } else {
            stream.push(record(EventKind::ConnectStart, t, sock, |e| {
                e.sport = port;
                e.old_state = 7;
                e.new_state = 2;
            }));
            stream.push(record(EventKind::ResetReceived, t + 40_000, sock, |e| {
                e.sport = port;
                e.new_state = 2;
            }));
            stream.push(record(EventKind::StateChange, t + 41_000, sock, |e| {
                e.sport = port;
                e.old_state = 2;
                e.new_state = 7;
            }));
            stream.push(record(EventKind::SockError, t + 42_000, sock, |e| {
                e.value = 111;
                e.new_state = 7;
            }));
        }
        if i * 7919 % 100 < lost_pct {
            continue;
        }
        stream.push(record(EventKind::HttpStatus, t + 60_000, 0xffff_8881_0000_0000 + i * 0x800, |e| {
            e.value = 502;
            e.daddr[..4].copy_from_slice(&[10, 0, 1, 2]);
            e.dport = 40_000;
            e.data[..32].copy_from_slice(b"HTTP/1.1 502 Bad Gateway\r\nServer");
        }));
    }
    let decoder = Decoder::default();
    let mut pipeline = Pipeline::new();
    if std::env::var_os("STORM_DEBUG").is_some() {
        pipeline = pipeline.collecting();
    }
    if written {
        pipeline = pipeline.with(Sink::new(std::io::sink(), Format::Json, false, 0));
    }
    let allocations_before = ALLOCATIONS.load(Ordering::Relaxed);
    let started = Instant::now();
    for bytes in &stream {
        let ev = decoder.decode(bytes).expect("valid record");
        pipeline.event(&ev).expect("pipeline");
    }
    if std::env::var_os("STORM_DEBUG").is_some() {
        let lens: Vec<usize> = pipeline.engine.tracker.by_tid.values().map(|q| q.len()).collect();
        eprintln!("queues {lens:?}, attempts {}", pipeline.engine.tracker.attempts.len());
    }
    pipeline.finish().expect("finish");
    let elapsed = started.elapsed();
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations_before;
    if let Some(v) = pipeline.collected.as_ref().and_then(|c| c.get(c.len() / 2)) {
        eprintln!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    }
    let rss_kib = rss::rss_kib(std::process::id());
    println!(
        "{{\"attempts\":{attempts},\"events\":{},\"verdicts\":{},\"ns_per_event\":{:.0},\"allocations_per_attempt\":{:.1},\"rss_kib\":{rss_kib}}}",
        stream.len(),
        pipeline.verdicts,
        elapsed.as_nanos() as f64 / stream.len() as f64,
        allocations as f64 / attempts.max(1) as f64
    );
}
