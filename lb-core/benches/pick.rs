//! The cost of one pick, per policy, at 3, 100 and 1,000 endpoints; single-threaded,
//! and with 2 threads picking from the same picker at once.
//!
//! Run: `cargo bench -p lb-core --bench pick` (results in docs/BENCHMARKS.md).

use std::{
    hint::black_box,
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use lb_core::{BuildPicker, Connectivity, Endpoint, EndpointState, PickContext, Picker, Policy};
use rand::{SeedableRng, rngs::SmallRng};

const SIZES: [usize; 3] = [3, 100, 1_000];

fn endpoints(n: usize) -> Vec<EndpointState> {
    (0..n)
        .map(|i| {
            let endpoint: Endpoint =
                format!("10.{}.{}.{}:80", i / 65_536, (i / 256) % 256, i % 256)
                    .parse()
                    .expect("valid address");
            let state = EndpointState::new(endpoint);
            state.set_connectivity(Connectivity::Ready);
            state
        })
        .collect()
}

/// Keyed headers, so the hashing policies hash instead of falling back to random.
fn headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert("x-lb-key", "user-12345".parse().expect("ascii"));
    headers
}

/// The time the picks are made at: read once (the endpoints' state does not change
/// during a benchmark).
fn now() -> u64 {
    static AT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *AT.get_or_init(lb_core::clock::now_nanos)
}

fn pick(
    picker: &dyn Picker,
    endpoints: &[EndpointState],
    rng: &mut SmallRng,
    headers: &http::HeaderMap,
) {
    // The balancer hands every pick its time (read once per call for the call's start
    // anyway): so does this.
    let mut ctx = PickContext::new(rng).with_headers(headers).at(now());
    let _ = black_box(picker.pick(black_box(endpoints), &mut ctx));
}

fn single_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    let headers = headers();
    for policy in Policy::all() {
        for n in SIZES {
            let endpoints = endpoints(n);
            let mut rng = SmallRng::seed_from_u64(1);
            let picker = policy.build(&endpoints, &mut rng);
            group.bench_with_input(BenchmarkId::new(policy.name(), n), &n, |b, _| {
                b.iter(|| pick(picker.as_ref(), &endpoints, &mut rng, &headers));
            });
        }
    }
    group.finish();
}

/// Two threads pick from one picker at once; the time is per pick, per thread.
fn two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick_2_threads");
    for policy in Policy::all() {
        for n in SIZES {
            let endpoints = Arc::new(endpoints(n));
            let picker = policy.build(&endpoints, &mut SmallRng::seed_from_u64(1));
            group.bench_with_input(BenchmarkId::new(policy.name(), n), &n, |b, _| {
                b.iter_custom(|iters| {
                    let start = Arc::new(Barrier::new(2));
                    let workers: Vec<_> = (0..2u64)
                        .map(|t| {
                            let (picker, endpoints, start) =
                                (picker.clone(), endpoints.clone(), start.clone());
                            thread::spawn(move || {
                                let headers = headers();
                                let mut rng = SmallRng::seed_from_u64(t);
                                start.wait();
                                let began = Instant::now();
                                for _ in 0..iters {
                                    pick(picker.as_ref(), &endpoints, &mut rng, &headers);
                                }
                                began.elapsed()
                            })
                        })
                        .collect();
                    workers
                        .into_iter()
                        .map(|w| w.join().expect("no panic"))
                        .max()
                        .unwrap_or_default()
                });
            });
        }
    }
    group.finish();
}

fn config() -> Criterion {
    // Short runs: 60 benchmarks must finish in a couple of minutes on 2 cores.
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = single_thread, two_threads
}
criterion_main!(benches);
