//! The cost of the gateway's account of a 5xx: one look at its log (read the new tail, parse,
//! match) when a verdict is made, by how many lines were written since the last look.
//! `cargo run --release -p tracer-user --example gateway_log_cost`
use std::{io::Write, time::Instant};

use upstrace::gateway_log::{Dialect, Pending, Query, about_a_failure, follow::Follower};

fn main() {
    let dir = std::env::temp_dir().join(format!("upstrace-log-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("error.log");
    std::fs::File::create(&path).unwrap();
    let mut follower = Follower::at_end(path.clone(), std::fs::File::open(&path).unwrap()).unwrap();
    let mut pending = Pending::default();
    let line = |i: u32| {
        format!(
            "2026/11/28 16:50:08 [error] 1234#1234: *{i} connect() failed (111: Connection refused) while connecting to upstream, client: 10.0.{}.{}, server: _, request: \"GET / HTTP/1.1\", upstream: \"http://10.1.0.2:8080/\", host: \"x\"\n",
            i / 250 % 250,
            i % 250
        )
    };
    let start_ms = 1_795_884_608_000i64;
    for lines_between in [1u32, 10, 100, 1000, 10_000] {
        let looks = 200u32.min(100_000 / lines_between).max(5);
        let mut spent = std::time::Duration::ZERO;
        for l in 0..looks {
            let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
            let text: String = (0..lines_between).map(|i| line(l * lines_between + i)).collect();
            f.write_all(text.as_bytes()).unwrap();
            let last = l * lines_between + lines_between - 1;
            let q = Query {
                unix_ms: start_ms,
                pid: 1234,
                client: Some(format!("10.0.{}.{}:5000", last / 250 % 250, last % 250).parse().unwrap()),
                status: 502,
                upstreams: vec!["10.1.0.2:8080".into()],
            };
            let t = Instant::now();
            for text in follower.new_lines() {
                if let Some(parsed) = Dialect::NginxError.parse(&text, 0).filter(about_a_failure) {
                    pending.push(parsed);
                }
            }
            pending.age(start_ms);
            let found = pending.take_match(&q, Dialect::NginxError).is_some();
            spent += t.elapsed();
            assert!(found || lines_between > 1, "the line is found");
        }
        println!(
            "{lines_between:>6} new lines per look: {:>8.1} us per look ({:.2} us per line)",
            spent.as_secs_f64() * 1e6 / looks as f64,
            spent.as_secs_f64() * 1e6 / (looks * lines_between) as f64
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
