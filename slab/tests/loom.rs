//! loom models of the per-CPU arrays: alloc and free on two CPUs with
//! remote frees, a flush racing a refill on the node lock, and a thread
//! migrating between CPUs between operations. loom checks that no two
//! contexts ever touch one CPU's array at once and that every interleaving
//! leaves the cache consistent.
//!
//! `RUSTFLAGS="--cfg loom" cargo test -p kmm-slab --test loom --release`
#![cfg(loom)]

use kmm_api::{
    sync::{AtomicBool, Ordering},
    DirectMap, Error, FrameAllocator, GfpFlags, Order, PageOwner, Pfn, Platform, PreemptControl,
    VirtAddr, GFP_KERNEL,
};
use kmm_slab::{testing::HostMachine, Kmem, KmemConfig, SlabFlags};
use loom::{cell::Cell, sync::Arc, thread};

loom::thread_local!(static CPU: Cell<usize> = Cell::new(0));

/// The host machine with loom-visible CPU pinning: each loom thread names
/// its CPU (and may migrate between sections); the id is held exclusively
/// through a loom atomic, as the `PreemptControl` contract demands.
struct LoomMachine {
    host: HostMachine,
    pinned: [AtomicBool; 2],
}

fn on_cpu(cpu: usize) {
    CPU.with(|c| c.set(cpu));
}

impl FrameAllocator for LoomMachine {
    fn alloc_frames(&self, gfp: GfpFlags, order: Order) -> Result<Pfn, Error> {
        self.host.alloc_frames(gfp, order)
    }
    fn free_frames(&self, pfn: Pfn, order: Order) -> Result<(), Error> {
        self.host.free_frames(pfn, order)
    }
}

// SAFETY: forwards to the host machine, which upholds the contract.
unsafe impl DirectMap for LoomMachine {
    fn pfn_to_virt(&self, pfn: Pfn) -> Option<VirtAddr> {
        self.host.pfn_to_virt(pfn)
    }
    fn virt_to_pfn(&self, addr: VirtAddr) -> Option<Pfn> {
        self.host.virt_to_pfn(addr)
    }
}

impl PageOwner for LoomMachine {
    fn owner(&self, pfn: Pfn) -> Option<usize> {
        self.host.owner(pfn)
    }
    fn set_owner(&self, pfn: Pfn, word: usize) -> Result<(), Error> {
        self.host.set_owner(pfn, word)
    }
}

impl Platform for LoomMachine {
    fn nr_cpus(&self) -> usize {
        2
    }
    fn cpu_id(&self) -> usize {
        CPU.with(Cell::get)
    }
}

// SAFETY: an id is handed out only while its flag is held, released by
// `put_cpu`.
unsafe impl PreemptControl for LoomMachine {
    fn get_cpu(&self) -> usize {
        let cpu = self.cpu_id();
        while self.pinned[cpu]
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            thread::yield_now();
        }
        cpu
    }
    fn put_cpu(&self, cpu: usize) {
        self.pinned[cpu].store(false, Ordering::Release);
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

fn build() -> Arc<Kmem<LoomMachine>> {
    let machine = LoomMachine {
        host: HostMachine::new(160, 2),
        pinned: [AtomicBool::new(false), AtomicBool::new(false)],
    };
    Arc::new(Kmem::new(machine, KmemConfig::default()).unwrap())
}

#[test]
fn alloc_and_free_on_two_cpus_with_remote_frees() {
    model(|| {
        let k = build();
        on_cpu(0);
        let p = k.kmalloc(64, GFP_KERNEL).unwrap().as_ptr() as usize;
        let k2 = k.clone();
        let t = thread::spawn(move || {
            on_cpu(1);
            // A remote free: allocated on CPU 0, freed on CPU 1.
            k2.kfree(p as *const u8).unwrap();
            let q = k2.kmalloc(64, GFP_KERNEL).unwrap();
            k2.kfree(q.as_ptr()).unwrap();
        });
        let r = k.kmalloc(64, GFP_KERNEL).unwrap();
        assert_ne!(r.as_ptr() as usize, p);
        k.kfree(r.as_ptr()).unwrap();
        t.join().unwrap();
        k.check_invariants().unwrap();
    });
}

#[test]
fn a_flush_races_a_refill_on_the_node_lock() {
    model(|| {
        let k = build();
        on_cpu(0);
        // 5000-byte objects: per-CPU limit 8, batch 4.
        let id = k
            .kmem_cache_create("big", 5000, 8, SlabFlags::empty(), None)
            .unwrap();
        let objs: Vec<usize> = (0..9)
            .map(|_| k.kmem_cache_alloc(id, GFP_KERNEL).unwrap().as_ptr() as usize)
            .collect();
        let k2 = k.clone();
        let t = thread::spawn(move || {
            on_cpu(1);
            // The ninth free overflows CPU 1's array: a flush.
            for &p in &objs {
                k2.kmem_cache_free(id, p as *const u8).unwrap();
            }
        });
        // CPU 0's array is empty: a refill from the node.
        let q = k.kmem_cache_alloc(id, GFP_KERNEL).unwrap();
        t.join().unwrap();
        k.kmem_cache_free(id, q.as_ptr()).unwrap();
        k.check_invariants().unwrap();
    });
}

#[test]
fn a_thread_migrating_between_sections_never_shares_a_cpu_array() {
    model(|| {
        let k = build();
        let k2 = k.clone();
        let t = thread::spawn(move || {
            on_cpu(0);
            let p = k2.kmalloc(32, GFP_KERNEL).unwrap();
            // Migrated after reading the CPU id and using CPU 0's array.
            on_cpu(1);
            k2.kfree(p.as_ptr()).unwrap();
        });
        on_cpu(0);
        let q = k.kmalloc(32, GFP_KERNEL).unwrap();
        k.kfree(q.as_ptr()).unwrap();
        t.join().unwrap();
        k.check_invariants().unwrap();
    });
}
