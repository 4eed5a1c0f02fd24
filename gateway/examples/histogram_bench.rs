//! Measures what recording one latency costs in the experiment's histogram, against
//! `hdrhistogram` (the kept crate it could be replaced by), from 1 and 2 threads at once, as
//! requests record from several executor threads. `hdrhistogram` is not `Sync`: it needs a
//! lock, so it is measured behind a `Mutex`, which is how the request path would hold it.
//!
//! cargo run --release --example histogram_bench

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_gateway::routing::LatencyHistogram;

const RECORDS: u64 = 4_000_000;

fn per_record(threads: u64, record: impl Fn(u64) + Send + Sync + 'static) -> f64 {
    let record = Arc::new(record);
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let record = record.clone();
            std::thread::spawn(move || {
                for i in 0..RECORDS / threads {
                    record(50 + ((i * 7919 + t) % 20_000));
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
    started.elapsed().as_nanos() as f64 / RECORDS as f64
}

fn main() {
    println!("recorder,threads,ns_per_record");
    for threads in [1, 2] {
        let ours = Arc::new(LatencyHistogram::new());
        let held = ours.clone();
        let ns = per_record(threads, move |micros| {
            held.record(Duration::from_micros(micros))
        });
        println!("switchyard atomic buckets,{threads},{ns:.1}");
        let p99 = ours.quantile_ms(0.99).unwrap_or_default();

        let hdr = Arc::new(Mutex::new(
            hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 2).unwrap(),
        ));
        let held = hdr.clone();
        let ns = per_record(threads, move |micros| {
            if let Ok(mut histogram) = held.lock() {
                let _ = histogram.record(micros);
            }
        });
        println!("hdrhistogram behind a mutex,{threads},{ns:.1}");
        let hdr_p99 = hdr
            .lock()
            .map(|h| h.value_at_quantile(0.99) as f64 / 1000.0)
            .unwrap_or_default();
        eprintln!("p99: switchyard {p99:.2} ms, hdrhistogram {hdr_p99:.2} ms");
    }
}
