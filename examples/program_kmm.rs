//! The allocation-heavy program of `examples/program/` on kmm: the hosted
//! manager is the process's `#[global_allocator]` (kmalloc for small
//! objects, whole pages above `KMALLOC_MAX_CACHE_SIZE`). Until the
//! manager is booted, and for anything it refuses, the host allocator
//! serves (see [`HostedGlobal`]).
//!
//! `cargo run --release --features std --example program_kmm`

#[path = "program/workload.rs"]
mod workload;

use kmm::global::HostedGlobal;
use kmm::{HostedMemoryManager, MemoryManager};
use std::sync::OnceLock;

/// RAM the manager manages: the program's peak live heap is about
/// 200 MiB, so this leaves room without near-exhaustion reclaim.
const RAM: usize = 1 << 30;

static MM: OnceLock<HostedMemoryManager> = OnceLock::new();

#[global_allocator]
static GLOBAL: HostedGlobal = HostedGlobal::new(|| MM.get().map(MemoryManager::kmem));

fn main() {
    MM.get_or_init(|| MemoryManager::hosted(RAM, 2).expect("boot the hosted manager"));
    workload::main("kmm");
}
