//! The allocation-heavy program of `examples/program/` on kmm: the hosted
//! manager is the process's `#[global_allocator]` (kmalloc for small
//! objects, whole pages above `KMALLOC_MAX_CACHE_SIZE`). Until the
//! manager is booted, and for anything it refuses, the host allocator
//! serves (see [`HostedGlobal`]).
//!
//! `cargo run --release --features std --example program_kmm`
//!
//! `KMM_RAM_MIB=64` gives the manager 64 MiB instead, so that it runs
//! near exhaustion and the host allocator serves what it refuses.

#[path = "program/workload.rs"]
mod workload;

use kmm::global::HostedGlobal;
use kmm::{HostedMemoryManager, MemoryManager};
use std::sync::OnceLock;

/// RAM the manager manages unless `KMM_RAM_MIB` says otherwise: the
/// program's peak live heap is about 200 MiB, so this leaves room without
/// near-exhaustion reclaim.
const RAM: usize = 1 << 30;

static MM: OnceLock<HostedMemoryManager> = OnceLock::new();

#[global_allocator]
// SAFETY: `MM` is a `OnceLock`: once it holds a manager it always does.
static GLOBAL: HostedGlobal = unsafe { HostedGlobal::new(|| MM.get().map(MemoryManager::kmem)) };

fn main() {
    let ram = std::env::var("KMM_RAM_MIB").ok().map_or(RAM, |mib| {
        mib.parse::<usize>().expect("KMM_RAM_MIB: a count") << 20
    });
    MM.get_or_init(|| MemoryManager::hosted(ram, 2).expect("boot the hosted manager"));
    workload::main("kmm");
}
