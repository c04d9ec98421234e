//! `ringbench`, the load harness: workloads ([`workload`], [`zipf`], [`rng`]), targets
//! ([`target`]), the driver ([`runner`]) and its latency maths ([`histo`]), results and
//! comparisons ([`report`], [`plot`]).
//!
//! Everything but `runner` and `target` is pure: no I/O, no clock.

pub mod histo;
pub mod plot;
pub mod report;
pub mod rng;
pub mod runner;
pub mod target;
pub mod workload;
pub mod zipf;
