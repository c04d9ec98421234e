//! `ringbench`: the load harness. See `benches/README.md`, or `ringbench --help`.

fn main() {
    std::process::exit(ringcache_bench::bench::cli::main(std::env::args_os()));
}
