//! The load test's own logic (argument limits, percentiles, the latency reservoir, the report),
//! tested here: it lives in a `harness = false` bench (engine/benches/load.rs), which runs no
//! tests itself. Its `main` is not called here.

#[allow(dead_code)]
#[path = "../benches/load.rs"]
mod load;
