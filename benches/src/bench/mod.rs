//! `ringbench`, the load harness: what a run sends ([`workload`]), drawn with the harness's own
//! generator ([`rng`]) and an exact zipfian sampler ([`zipf`]). These modules are pure: no I/O,
//! no clock.

pub mod rng;
pub mod workload;
pub mod zipf;
