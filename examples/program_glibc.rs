//! The allocation-heavy program of `examples/program/` on the host C
//! library's allocator (glibc on Linux): the baseline.
//!
//! `cargo run --release --features std --example program_glibc`

#[path = "program/workload.rs"]
mod workload;

fn main() {
    workload::main("glibc");
}
