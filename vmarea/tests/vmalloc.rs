//! vmalloc, vmap and ioremap over the area allocator, on test doubles: a
//! frame allocator that keeps owner words and can run out, a page table
//! with a modelled TLB that can refuse maps, and host memory for the
//! range. Each Linux rule has a test; every refusal leaves frames, page
//! table and areas as they were.

use kmm_api::{
    FrameAllocator, Order, OwnerTag, OwnerWord, PageOwner, PageProt, Pfn, PhysAddr, VirtAddr,
    GFP_KERNEL, PAGE_SIZE,
};
use kmm_vmarea::testing::{BufferSource, TestFrames, TestMemory, TestTable};
use kmm_vmarea::{VmFlags, Vmalloc, VmapAreas, VmareaError, NUMA_NO_NODE};

const START: usize = 0xf880_0000;
const RANGE: usize = 4 << 20;

type TestVmalloc<'a> = Vmalloc<&'a TestFrames, &'a TestTable, BufferSource, &'a TestMemory>;

struct Machine {
    frames: TestFrames,
    table: TestTable,
    memory: TestMemory,
}

impl Machine {
    fn new(frames: usize) -> Self {
        Machine {
            frames: TestFrames::new(frames),
            table: TestTable::default(),
            memory: TestMemory::new(VirtAddr::new(START), RANGE),
        }
    }

    fn vmalloc(&self) -> TestVmalloc<'_> {
        let (start, end) = (VirtAddr::new(START), VirtAddr::new(START + RANGE));
        let areas = VmapAreas::new(BufferSource::pages(64), start, end, 2).unwrap();
        // SAFETY: the table maps this range only for this vmalloc, the
        // frames are the table's to map, and the memory stands for the range.
        unsafe { Vmalloc::new(areas, &self.frames, &self.table, &self.memory) }
    }
}

fn page(addr: VirtAddr, i: usize) -> VirtAddr {
    VirtAddr::new(addr.as_usize() + i * PAGE_SIZE)
}

#[test]
fn vmalloc_maps_one_claimed_frame_per_page_and_leaves_the_guard_unmapped() {
    let m = Machine::new(64);
    let v = m.vmalloc();
    let addr = v.vmalloc(3 * PAGE_SIZE - 100).unwrap();
    assert_eq!(addr, VirtAddr::new(START));
    let frames: Vec<Pfn> = (0..3)
        .map(|i| v.vmalloc_to_page(page(addr, i)).unwrap())
        .collect();
    assert_eq!(m.frames.in_use(), 3);
    for pfn in &frames {
        assert_eq!(
            m.frames.owner(*pfn).and_then(OwnerWord::tag),
            Some(OwnerTag::Vmalloc),
            "the page allocator would refuse any other free"
        );
    }
    assert_eq!(v.vmalloc_to_page(page(addr, 3)), None, "the guard page");
    assert!(
        m.frames.last_gfp().contains(kmm_api::GfpFlags::HIGHMEM),
        "highmem first"
    );
    assert_eq!(
        v.vmalloc_to_pfn(VirtAddr::new(addr.as_usize() + 0x1234)),
        Some(frames[1])
    );
    assert!(v.is_vmalloc_addr(addr) && !v.is_vmalloc_addr(VirtAddr::new(START - 1)));
    assert_eq!(v.stats().vmalloc_pages, 3);
    assert_eq!(
        v.find_vm_area(addr).unwrap().size(),
        4 * PAGE_SIZE,
        "guard included"
    );

    // SAFETY: we give the area up.
    unsafe { v.vfree(addr) }.unwrap();
    assert_eq!((m.frames.in_use(), m.table.mapped()), (0, 0));
    assert_eq!(m.table.stale(), 3, "flushed lazily, not at once");
    assert_eq!(v.stats().vmalloc_pages, 0);
    v.areas().check().unwrap();
}

#[test]
fn a_bad_vfree_is_an_error_and_changes_nothing() {
    let m = Machine::new(64);
    let v = m.vmalloc();
    let addr = v.vmalloc(2 * PAGE_SIZE).unwrap();
    let snapshot = |v: &TestVmalloc<'_>| (m.frames.in_use(), m.table.mapped(), v.stats());
    let before = snapshot(&v);
    // SAFETY: each refused free changes nothing; none names a live area
    // we give up except the last.
    unsafe {
        assert_eq!(v.vfree(VirtAddr::new(0)), Ok(()), "null is a no-op");
        assert!(matches!(
            v.vfree(page(addr, 1)),
            Err(VmareaError::Interior { .. })
        ));
        assert!(matches!(
            v.vfree(VirtAddr::new(addr.as_usize() + 8)),
            Err(VmareaError::Misaligned { .. })
        ));
        assert!(matches!(
            v.vfree(VirtAddr::new(START + RANGE)),
            Err(VmareaError::OutOfRange { .. })
        ));
        assert!(matches!(
            v.vfree(page(addr, 8)),
            Err(VmareaError::NotAllocated { .. })
        ));
        assert!(matches!(
            v.iounmap(addr),
            Err(VmareaError::WrongKind { .. })
        ));
        assert_eq!(snapshot(&v), before);
        v.vfree(addr).unwrap();
        assert!(matches!(
            v.vfree(addr),
            Err(VmareaError::AlreadyFreed { .. })
        ));
    }
    v.areas().check().unwrap();
}

#[test]
fn a_vmalloc_that_runs_out_midway_gives_back_everything_it_took() {
    for fail_in in ["frames", "page table"] {
        let m = Machine::new(64);
        let v = m.vmalloc();
        match fail_in {
            "frames" => m.frames.fail_after(Some(3)),
            _ => m.table.fail_after(Some(3)),
        }
        let err = v.vmalloc(5 * PAGE_SIZE).unwrap_err();
        assert!(
            matches!(err, VmareaError::Page { .. }),
            "{fail_in}: {err:?}"
        );
        assert_eq!((m.frames.in_use(), m.table.mapped()), (0, 0), "{fail_in}");
        assert_eq!(v.stats().vmalloc_pages, 0);
        assert_eq!(v.areas().stats().nr_areas, 0, "{fail_in}");
        v.areas().check().unwrap();
        // The range comes back after the purge that flushes its stale
        // pages: pooled, to the next vmalloc of its size.
        m.frames.fail_after(None);
        m.table.fail_after(None);
        assert!(v.purge());
        assert_eq!(m.table.stale(), 0);
        assert_eq!(v.areas().stats().pooled_pages, 6, "{fail_in}");
        assert_eq!(
            v.vmalloc(5 * PAGE_SIZE).unwrap(),
            VirtAddr::new(START),
            "{fail_in}"
        );
    }
}

#[test]
fn variants_zero_mark_and_pick_their_zones() {
    let m = Machine::new(64);
    let v = m.vmalloc();
    let user = v.vmalloc_user(PAGE_SIZE).unwrap();
    assert!(m.frames.last_gfp().contains(kmm_api::GfpFlags::ZERO));
    assert!(v
        .find_vm_area(user)
        .unwrap()
        .flags()
        .contains(VmFlags::USERMAP));
    v.vzalloc(PAGE_SIZE).unwrap();
    assert!(m.frames.last_gfp().contains(kmm_api::GfpFlags::ZERO));
    v.vmalloc_32(PAGE_SIZE).unwrap();
    assert!(
        !m.frames.last_gfp().contains(kmm_api::GfpFlags::HIGHMEM),
        "vmalloc_32: lowmem only"
    );
    v.__vmalloc(PAGE_SIZE, GFP_KERNEL | kmm_api::GfpFlags::DMA)
        .unwrap();
    assert!(
        !m.frames.last_gfp().contains(kmm_api::GfpFlags::DMA),
        "zone modifiers are vmalloc's"
    );
    assert!(v.vmalloc_node(PAGE_SIZE, GFP_KERNEL, 0).is_ok());
    assert!(v.vmalloc_node(PAGE_SIZE, GFP_KERNEL, NUMA_NO_NODE).is_ok());
    assert_eq!(
        v.vmalloc_node(PAGE_SIZE, GFP_KERNEL, 1),
        Err(VmareaError::BadNode { node: 1 })
    );
    assert_eq!(v.vmalloc(0), Err(VmareaError::ZeroSize));
    assert!(matches!(
        v.vmalloc(usize::MAX),
        Err(VmareaError::SizeTooLarge { .. })
    ));
}

#[test]
fn vmap_maps_held_frames_and_vunmap_leaves_them_to_their_holder() {
    let m = Machine::new(64);
    let v = m.vmalloc();
    let pages: Vec<_> = (0..3)
        .map(|_| m.frames.alloc_frames(GFP_KERNEL, Order::ZERO).unwrap())
        .collect();
    let addr = v.vmap(&pages, VmFlags::empty(), PageProt::KERNEL).unwrap();
    for (i, p) in pages.iter().enumerate() {
        assert_eq!(v.vmalloc_to_page(page(addr, i)), Some(p.pfn()));
    }
    // SAFETY: a refused vfree changes nothing.
    let refused = unsafe { v.vfree(addr) };
    assert!(matches!(refused, Err(VmareaError::WrongKind { .. })));
    // SAFETY: we made the mapping and nothing uses it.
    unsafe { v.vunmap(addr) }.unwrap();
    assert_eq!(
        (m.table.mapped(), m.frames.in_use()),
        (0, 3),
        "the frames stay"
    );
    for p in pages {
        m.frames.free_frames(p).unwrap();
    }
}

#[test]
fn ioremap_keeps_the_offset_and_iounmap_takes_the_address_it_returned() {
    let m = Machine::new(64);
    let v = m.vmalloc();
    // SAFETY: the test's "device memory" is a frame number nobody holds.
    let addr = unsafe { v.ioremap_prot(PhysAddr::new(0xfebc_0123), 16, PageProt::KERNEL_NOCACHE) }
        .unwrap();
    assert_eq!(addr.as_usize() & 0xfff, 0x123);
    let (pfn, prot) = kmm_api::KernelPageTable::translate(&m.table, addr).unwrap();
    assert_eq!((pfn, prot), (Pfn::new(0xfebc0), PageProt::KERNEL_NOCACHE));
    // Crossing a page boundary maps two pages.
    // SAFETY: as above.
    let two = unsafe { v.ioremap_prot(PhysAddr::new(0xfebc_0ff0), 32, PageProt::KERNEL_NOCACHE) }
        .unwrap();
    assert_eq!(
        v.find_vm_area(two.align_down(PAGE_SIZE))
            .unwrap()
            .usable_size(),
        2 * PAGE_SIZE
    );
    // SAFETY: refused before anything is touched.
    assert!(unsafe { v.ioremap_prot(PhysAddr::new(0x1000), 0, PageProt::KERNEL) }.is_err());
    // SAFETY: we made these mappings and nothing uses them.
    unsafe {
        v.iounmap(addr).unwrap();
        v.iounmap(two).unwrap();
    }
    assert_eq!(m.table.mapped(), 0);
}

#[test]
fn vfree_atomic_defers_the_free_to_the_next_call_that_may_sleep() {
    let m = Machine::new(64);
    let v = m.vmalloc();
    let a = v.vmalloc(PAGE_SIZE).unwrap();
    let b = v.vmalloc(2 * PAGE_SIZE).unwrap();
    // SAFETY: we give both areas up; they are live vmalloc areas.
    unsafe {
        v.vfree_atomic(a);
        v.vfree_atomic(b);
        v.vfree_atomic(VirtAddr::new(0));
    }
    assert_eq!(m.frames.in_use(), 3, "nothing freed in atomic context");
    assert_eq!(v.drain_deferred(), 2);
    assert_eq!(m.frames.in_use(), 0);
    // SAFETY: as above.
    unsafe { v.vfree_atomic(v.vmalloc(PAGE_SIZE).unwrap()) };
    let c = v.vmalloc(PAGE_SIZE).unwrap();
    assert_eq!(m.frames.in_use(), 1, "the next vmalloc drained the queue");
    // SAFETY: ours.
    unsafe { v.vfree(c) }.unwrap();
    v.areas().check().unwrap();
}

#[test]
fn remove_vm_area_unmaps_without_freeing_and_get_vm_area_reserves_only() {
    let m = Machine::new(64);
    let v = m.vmalloc();
    let reserved = v.get_vm_area(3 * PAGE_SIZE, VmFlags::MAP).unwrap();
    assert_eq!(
        (reserved.usable_size(), m.table.mapped()),
        (3 * PAGE_SIZE, 0)
    );
    // SAFETY: nothing is mapped in it.
    unsafe { v.free_vm_area(reserved) }.unwrap();
    // SAFETY: a second free is refused.
    assert!(unsafe { v.free_vm_area(reserved) }.is_err());

    let addr = v.vmalloc(2 * PAGE_SIZE).unwrap();
    let frames: Vec<Pfn> = (0..2)
        .map(|i| v.vmalloc_to_page(page(addr, i)).unwrap())
        .collect();
    // SAFETY: we give the area up and free its frames below.
    let area = unsafe { v.remove_vm_area(addr) }.unwrap();
    assert_eq!(
        (area.start(), m.table.mapped(), m.frames.in_use()),
        (addr, 0, 2)
    );
    for pfn in frames {
        // SAFETY: these frames were the area's; we free each once.
        unsafe {
            m.frames
                .replace_owner(
                    pfn,
                    OwnerWord::new(OwnerTag::Vmalloc, 0).unwrap(),
                    OwnerWord::NONE,
                )
                .unwrap();
            m.frames
                .free_frames(kmm_api::Pages::from_raw(
                    pfn,
                    Order::ZERO,
                    m.frames.allocator_id(),
                ))
                .unwrap();
        }
    }
    assert_eq!(m.frames.in_use(), 0);
}

#[test]
fn the_lazy_purge_flushes_once_per_batch_not_once_per_vfree() {
    let m = Machine::new(600);
    let v = m.vmalloc();
    let rounds = 200;
    for _ in 0..rounds {
        let addr = v.vmalloc(PAGE_SIZE).unwrap();
        // SAFETY: ours.
        unsafe { v.vfree(addr) }.unwrap();
    }
    let stats = v.stats();
    assert_eq!(stats.vfrees, rounds);
    assert_eq!(m.table.flushes() as u64, stats.areas.flush_tokens);
    assert!(
        m.table.flushes() * 10 < rounds,
        "{} flushes for {rounds} vfrees",
        m.table.flushes()
    );
    assert_eq!(m.frames.in_use(), 0);
}

#[test]
fn vfree_frees_only_frames_that_carry_the_vmalloc_word() {
    let m = Machine::new(64);
    let v = m.vmalloc();
    let area = v.get_vm_area(PAGE_SIZE, VmFlags::ALLOC).unwrap();
    let mine = m.frames.alloc_frames(GFP_KERNEL, Order::ZERO).unwrap();
    // SAFETY: we hold the frame and reserved the page.
    unsafe { kmm_api::KernelPageTable::map(&m.table, area.start(), mine.pfn(), PageProt::KERNEL) }
        .unwrap();
    // SAFETY: we give the area up (its mapping, not our frame).
    unsafe { v.vfree(area.start()) }.unwrap();
    assert_eq!(
        m.frames.in_use(),
        1,
        "a frame that is not vmalloc's stays held"
    );
    m.frames.free_frames(mine).unwrap();
}

#[test]
fn vmallocinfo_lists_each_area_with_its_caller_pages_and_kind() {
    let m = Machine::new(64);
    let v = m.vmalloc();
    let line = line!() + 1;
    let a = v.vmalloc(3 * PAGE_SIZE).unwrap();
    // SAFETY: the test's "device memory" is a frame number nobody holds.
    let io = unsafe { v.ioremap_prot(PhysAddr::new(0xfebc_0123), 16, PageProt::KERNEL_NOCACHE) }
        .unwrap();
    let user = v.vmalloc_user(PAGE_SIZE).unwrap();
    // SAFETY: ours.
    unsafe { v.vfree(user) }.unwrap();
    let text = kmm_vmarea::VmallocInfo(&v).to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(
        lines[0],
        format!(
            "0x{:08x}-0x{:08x}   16384 {}:{line}:15 pages=3 vmalloc",
            a.as_usize(),
            a.as_usize() + 4 * PAGE_SIZE,
            file!()
        )
    );
    assert!(lines[1].starts_with(&format!("0x{:08x}-", io.as_usize() & !0xfff)));
    assert!(
        lines[1].ends_with(" phys=0xfebc0000 ioremap"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].ends_with("    8192 unpurged vm_area"),
        "{}",
        lines[2]
    );
}
