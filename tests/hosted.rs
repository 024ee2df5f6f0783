//! The hosted 64-bit preset: boot, zones DMA and DMA32, and real bytes
//! through the direct map. Small enough for miri.

use kmm::MemoryManager;
use kmm_api::{DirectMap, Order, Platform, __GFP_ZERO, GFP_DMA, GFP_KERNEL, PAGE_SIZE};
use kmm_zones::ZoneType;

fn ram_bytes() -> usize {
    if cfg!(miri) {
        20 << 20
    } else {
        64 << 20
    }
}

#[test]
fn hosted_machine_has_dma_and_dma32_and_no_highmem() {
    let mm = MemoryManager::hosted(ram_bytes(), 2).unwrap();
    let populated = mm.zones().populated_zones();
    assert!(populated[ZoneType::Dma.index()]);
    assert!(populated[ZoneType::Dma32.index()]);
    assert!(!populated[ZoneType::HighMem.index()]);
    assert_eq!(mm.layout().highmem_bytes(), 0);
    let page = mm.zones().alloc_pages(GFP_DMA, Order::ZERO).unwrap();
    assert_eq!(mm.zones().page_zone(page.pfn()), Some(ZoneType::Dma));
    mm.zones().__free_pages(page).unwrap();
}

#[test]
fn hosted_pages_are_host_memory_and_zeroed_on_request() {
    let mm = MemoryManager::hosted(ram_bytes(), 1).unwrap();
    let zones = mm.zones();
    let page = zones.alloc_pages(GFP_KERNEL, Order::ZERO).unwrap();
    let ptr = zones.direct_map().pfn_to_ptr(page.pfn()).unwrap().as_ptr();
    // SAFETY: the frame was just allocated by this test, which holds it
    // (`page`) until the free below.
    unsafe { ptr.write_bytes(0xaa, PAGE_SIZE) };
    zones.__free_pages(page).unwrap();
    let again = zones
        .alloc_pages(GFP_KERNEL | __GFP_ZERO, Order::ZERO)
        .unwrap();
    let ptr = zones.direct_map().pfn_to_ptr(again.pfn()).unwrap().as_ptr();
    // SAFETY: the frame was just allocated by this test, which holds it
    // (`again`) while `bytes` is used.
    let bytes = unsafe { core::slice::from_raw_parts(ptr, PAGE_SIZE) };
    assert!(bytes.iter().all(|&b| b == 0));
    zones.__free_pages(again).unwrap();
    zones.check().unwrap();
}

#[test]
fn boot_refuses_ram_beyond_the_layout_and_a_map_without_room_for_metadata() {
    use kmm::hosted::Hosted;
    use kmm::Layout;
    use kmm_api::{Error, MemoryRegion, RegionKind};
    let host = Hosted::new(ram_bytes(), 1).unwrap();
    let half = Layout::x86_64_at(ram_bytes() as u64 / 2, host.layout().page_offset()).unwrap();
    // SAFETY: the buffer is used by nothing else, and the handles passed
    // keep it alive for as long as a manager could.
    let beyond =
        unsafe { MemoryManager::boot(&host.memory_map(), half, host.clone(), host.clone()) };
    assert!(matches!(beyond.err(), Some(Error::BadPhysAddr { .. })));
    let all_kernel = [
        MemoryRegion::new(0, 2 * PAGE_SIZE as u64, RegionKind::Usable),
        MemoryRegion::new(0, 2 * PAGE_SIZE as u64, RegionKind::KernelImage),
    ];
    // SAFETY: as above.
    let full = unsafe { MemoryManager::boot(&all_kernel, *host.layout(), host.clone(), host) };
    assert!(full.is_err(), "no free RAM for mem_map");
}

#[test]
fn boot_metadata_lies_in_reserved_ram_and_the_rest_is_managed() {
    let mm = MemoryManager::hosted(ram_bytes(), 2).unwrap();
    let meta = mm.boot_metadata();
    assert!(meta.base.as_u64() + meta.bytes as u64 <= ram_bytes() as u64);
    let managed = mm.zones().managed_pages();
    assert_eq!(managed, mm.memory_pages() - mm.reserved_pages());
    assert_eq!(mm.reserved_pages(), meta.bytes.div_ceil(PAGE_SIZE));
}

/// Rule: memory comes back. After threads allocate and cross-free through
/// kmalloc on the hosted manager, `flush_all` + `shrink_all` +
/// `drain_all_pages` from one thread return the free page count exactly
/// to its start.
#[test]
fn memory_comes_back_after_threads_cross_free_through_kmalloc() {
    use std::sync::Mutex;

    const SIZES: [usize; 7] = [8, 64, 100, 600, 1024, 3000, 9000];
    const THREADS: usize = 4;
    let rounds = if cfg!(miri) { 2 } else { 200 };

    // Two owned CPUs plus the overflow CPU: four threads, so some share it.
    let mm = MemoryManager::hosted(ram_bytes(), 2).unwrap();
    mm.kmem().shrink_all();
    mm.zones().drain_all_pages();
    let start = mm.zones().nr_free_pages();

    // One mailbox per thread: thread `t` posts what it allocates to thread
    // `t + 1`'s and frees what thread `t - 1` posted to its own, so every
    // free in the threads is of another thread's object. Addresses, as a
    // raw pointer is not `Send`.
    let mailboxes: [Mutex<Vec<usize>>; THREADS] = Default::default();
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (mm, mailboxes) = (&mm, &mailboxes);
                s.spawn(move || {
                    for i in 0..rounds {
                        let size = SIZES[(i + t) % SIZES.len()];
                        let p = mm.kmalloc(size, GFP_KERNEL).unwrap();
                        // SAFETY: `p` is a fresh allocation of `size` bytes,
                        // held by this thread until it is posted below.
                        unsafe { p.as_ptr().write_bytes(t as u8, size) };
                        mailboxes[(t + 1) % THREADS]
                            .lock()
                            .unwrap()
                            .push(p.as_ptr() as usize);
                        let theirs = std::mem::take(&mut *mailboxes[t].lock().unwrap());
                        for q in theirs {
                            // SAFETY: `q` was taken out of this thread's
                            // mailbox, where its allocator posted it once and
                            // gave it up, so this thread alone holds it, and
                            // gives it up here.
                            unsafe { mm.kfree(q as *const u8) }.unwrap();
                        }
                    }
                })
            })
            .collect();
        // Joined one by one, not by the end of the scope: a scope returns
        // once each thread's closure has returned, but a thread frees its
        // owned CPU id in a thread-local destructor, which only a join
        // (`pthread_join`) waits for.
        for thread in threads {
            thread.join().unwrap();
        }
    });
    for mailbox in mailboxes {
        for q in mailbox.into_inner().unwrap() {
            // SAFETY: every thread has exited; each address left in a
            // mailbox is an allocation nobody else holds, freed once here.
            unsafe { mm.kfree(q as *const u8) }.unwrap();
        }
    }

    // Every thread has exited, so every CPU is reachable.
    assert_eq!(mm.kmem().flush_all(), 0);
    mm.kmem().shrink_all();
    mm.zones().drain_all_pages();
    assert_eq!(mm.zones().nr_free_pages(), start);
    assert_eq!(mm.kmem().internal_errors(), 0);
    assert!(mm.kmem().check_invariants().is_ok());
    assert!(mm.zones().check().is_ok());
}

/// The booting thread leaves its CPU to the threads that use the manager:
/// with two CPUs, two workers alive together each own one, and neither
/// shares the overflow CPU.
#[test]
fn after_boot_as_many_workers_as_cpus_each_own_one() {
    let mm = MemoryManager::hosted(ram_bytes(), 2).unwrap();
    let all_claimed = std::sync::Barrier::new(2);
    let mut cpus: Vec<usize> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let p = mm.kmalloc(64, GFP_KERNEL).unwrap();
                    let cpu = mm.zones().platform().cpu_id();
                    all_claimed.wait();
                    // SAFETY: `p` came from kmalloc above, freed once.
                    unsafe { mm.kfree(p.as_ptr()) }.unwrap();
                    cpu
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    cpus.sort_unstable();
    assert_eq!(cpus, [0, 1]);
}

/// Rule: a CPU's page lists are reached only as that CPU. While a live
/// thread owns a CPU, `drain_all_pages` from another thread cannot run as
/// it, so the pages it listed stay listed (and the checker counts them from
/// their descriptors); once the thread exits, its CPU is free and the
/// drain returns them.
#[test]
fn a_live_threads_page_lists_are_drained_once_it_exits() {
    use std::sync::mpsc;

    let mm = MemoryManager::hosted(ram_bytes(), 2).unwrap();
    mm.zones().drain_all_pages();
    let start = mm.zones().nr_free_pages();
    let (listed_tx, listed_rx) = mpsc::channel();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let mm = &mm;
        let worker = s.spawn(move || {
            // A refill lists a batch on this thread's CPU; the free lists
            // the page too.
            let page = mm.zones().alloc_pages(GFP_KERNEL, Order::ZERO).unwrap();
            mm.zones().__free_pages(page).unwrap();
            listed_tx.send(()).unwrap();
            exit_rx.recv().unwrap();
        });
        listed_rx.recv().unwrap();
        mm.zones().drain_all_pages();
        assert!(
            mm.zones().nr_free_pages() < start,
            "the live worker's CPU keeps its lists"
        );
        assert!(mm.zones().check().is_ok(), "{:?}", mm.zones().check());
        exit_tx.send(()).unwrap();
        worker.join().unwrap();
    });
    mm.zones().drain_all_pages();
    assert_eq!(mm.zones().nr_free_pages(), start);
    assert!(mm.zones().check().is_ok());
}
