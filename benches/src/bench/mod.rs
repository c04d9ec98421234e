//! `ringbench`, the load harness: workloads ([`workload`], [`zipf`], [`rng`]), targets
//! ([`target`]), the driver ([`runner`]) and its latency maths ([`histo`]), results and
//! comparisons ([`report`], [`plot`]), server CPU time from `/proc` ([`cpu`]), the ringcache-vs-Redis suite with the server processes it
//! manages ([`suite`]), and the command line ([`cli`]).
//!
//! Everything but `runner`, `target`, `suite` and `cli` is pure: no I/O, no clock.

pub mod cli;
pub mod cpu;
pub mod histo;
pub mod plot;
pub mod report;
pub mod rng;
pub mod runner;
pub mod suite;
pub mod target;
pub mod workload;
/// Zipfian ranks, from `ringcache-test-support` (one sampler for the benchmarks and the tests).
pub use ringcache_test_support::zipf;
