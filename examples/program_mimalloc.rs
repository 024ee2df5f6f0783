//! The allocation-heavy program of `examples/program/` on mimalloc.
//!
//! `cargo run --release --features std --example program_mimalloc`

#[path = "program/workload.rs"]
mod workload;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    workload::main("mimalloc");
}
