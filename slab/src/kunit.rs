//! The cases of Linux's `lib/slub_kunit.c`, with its expected error
//! counts: each detection counts a report and a repair. Single-threaded:
//! the pointer calls go through [`SoleUser`], whose contract they meet
//! (each frees what it holds, or asks about what it holds).

use crate::{testing::HostMachine, tests::SoleUser, *};
use kmm_api::GFP_KERNEL;

fn setup(flags: SlabFlags) -> (HostMachine, KmemConfig) {
    let _ = flags;
    (
        HostMachine::new(if cfg!(miri) { 160 } else { 1024 }, 1),
        KmemConfig::default(),
    )
}

#[test]
fn test_clobber_zone_red_zone_write_past_a_64_byte_object_counts_2() {
    let (m, cfg) = setup(SLAB_RED_ZONE);
    let k = SoleUser::new(&m, cfg);
    let s = k
        .kmem_cache_create("TestSlub_RZ_alloc", 64, 0, SLAB_RED_ZONE, None)
        .unwrap();
    let p = k.kmem_cache_alloc(s, GFP_KERNEL).unwrap();
    // SAFETY: byte 64 is the red zone, inside the object's slot.
    unsafe { p.as_ptr().add(64).write(0x12) };
    assert_eq!(k.kmem_cache_validate(s).unwrap(), 2);
    let report = k.kmem_cache_last_report(s).unwrap().unwrap();
    assert_eq!(
        (report.kind, report.offset, report.found),
        (CorruptionKind::RightRedzone, 64, 0x12)
    );
    k.kmem_cache_free(s, p.as_ptr()).unwrap();
    k.kmem_cache_destroy(s).unwrap();
}

#[test]
fn test_next_pointer_corrupted_free_pointer_is_caught_and_not_followed() {
    let (m, cfg) = setup(SLAB_POISON);
    let k = SoleUser::new(&m, cfg);
    let s = k
        .kmem_cache_create("TestSlub_next_ptr_free", 64, 0, SLAB_POISON, None)
        .unwrap();
    let off = k.kmem_cache_info(s).unwrap().free_pointer_offset;
    let p = k.kmem_cache_alloc(s, GFP_KERNEL).unwrap();
    k.kmem_cache_free(s, p.as_ptr()).unwrap();
    // SAFETY: the free pointer word lies in p's slot.
    unsafe { p.as_ptr().add(off).cast::<usize>().write(0x1234_5678) };
    assert_eq!(k.kmem_cache_validate(s).unwrap(), 2);
    assert_eq!(
        k.kmem_cache_last_report(s).unwrap().unwrap().kind,
        CorruptionKind::FreePointer
    );
    // The corrupted object is quarantined; allocation goes on safely.
    let q = k.kmem_cache_alloc(s, GFP_KERNEL).unwrap();
    assert_ne!(q, p);
    assert_eq!(k.kmem_cache_stats(s).unwrap().quarantined, 1);
    k.check_invariants().unwrap();
    k.kmem_cache_free(s, q.as_ptr()).unwrap();
}

#[test]
fn test_first_word_write_after_free_under_poison_counts_2() {
    let (m, cfg) = setup(SLAB_POISON);
    let k = SoleUser::new(&m, cfg);
    let s = k
        .kmem_cache_create("TestSlub_1th_word_free", 64, 0, SLAB_POISON, None)
        .unwrap();
    let p = k.kmem_cache_alloc(s, GFP_KERNEL).unwrap();
    k.kmem_cache_free(s, p.as_ptr()).unwrap();
    // SAFETY: the freed object's memory is still slab memory.
    unsafe { p.as_ptr().write(0x78) };
    assert_eq!(k.kmem_cache_validate(s).unwrap(), 2);
    let r = k.kmem_cache_last_report(s).unwrap().unwrap();
    assert_eq!(
        (r.kind, r.offset, r.found, r.expected),
        (CorruptionKind::Poison, 0, 0x78, POISON_FREE)
    );
}

#[test]
fn test_clobber_50th_byte_after_free_counts_2() {
    let (m, cfg) = setup(SLAB_POISON);
    let k = SoleUser::new(&m, cfg);
    let s = k
        .kmem_cache_create("TestSlub_50th_word_free", 64, 0, SLAB_POISON, None)
        .unwrap();
    let p = k.kmem_cache_alloc(s, GFP_KERNEL).unwrap();
    k.kmem_cache_free(s, p.as_ptr()).unwrap();
    // SAFETY: as above.
    unsafe { p.as_ptr().add(50).write(0x9a) };
    assert_eq!(k.kmem_cache_validate(s).unwrap(), 2);
}

#[test]
fn write_after_free_found_at_allocation_quarantines_the_object() {
    let (m, cfg) = setup(SLAB_POISON);
    let k = SoleUser::new(&m, cfg);
    let s = k
        .kmem_cache_create("TestSlub_uaf_alloc", 64, 0, SLAB_POISON, None)
        .unwrap();
    let p = k.kmem_cache_alloc(s, GFP_KERNEL).unwrap();
    k.kmem_cache_free(s, p.as_ptr()).unwrap();
    // SAFETY: as above.
    unsafe { p.as_ptr().add(10).write(0) };
    let q = k.kmem_cache_alloc(s, GFP_KERNEL).unwrap();
    assert_ne!(q, p, "the corrupted object is not reused");
    let stats = k.kmem_cache_stats(s).unwrap();
    assert_eq!((stats.errors, stats.quarantined), (2, 1));
}

#[test]
fn test_clobber_redzone_free_is_refused_and_counts_2() {
    let (m, cfg) = setup(SLAB_RED_ZONE);
    let k = SoleUser::new(&m, cfg);
    let s = k
        .kmem_cache_create("TestSlub_RZ_free", 64, 0, SLAB_RED_ZONE, None)
        .unwrap();
    let p = k.kmem_cache_alloc(s, GFP_KERNEL).unwrap();
    // SAFETY: byte 64 is the red zone.
    unsafe { p.as_ptr().add(64).write(0xab) };
    let err = k.kmem_cache_free(s, p.as_ptr()).unwrap_err();
    assert!(matches!(
        err,
        SlabError::Corrupted(Corruption {
            kind: CorruptionKind::RightRedzone,
            offset: 64,
            ..
        })
    ));
    assert_eq!(k.kmem_cache_validate(s).unwrap(), 0);
    assert_eq!(k.kmem_cache_stats(s).unwrap().errors, 2);
}

#[test]
fn test_kmalloc_redzone_access_kmalloc_18_written_at_bytes_18_and_19_counts_2() {
    let m = HostMachine::new(if cfg!(miri) { 160 } else { 1024 }, 1);
    let cfg = KmemConfig {
        slub_debug: SLAB_RED_ZONE,
        seed: 7,
        fine_classes: false,
    };
    let k = SoleUser::new(&m, cfg);
    let p = k.kmalloc(18, GFP_KERNEL).unwrap();
    let s = k.kmalloc_slab(18, GFP_KERNEL).unwrap();
    assert_eq!(k.kmem_cache_info(s).unwrap().name, "kmalloc-32");
    // SAFETY: bytes 18 and 19 lie inside the 32-byte object.
    unsafe {
        p.as_ptr().add(18).write(0xab);
        p.as_ptr().add(19).write(0xab);
    }
    assert_eq!(k.kmem_cache_validate(s).unwrap(), 2);
    let r = k.kmem_cache_last_report(s).unwrap().unwrap();
    assert_eq!((r.kind, r.offset), (CorruptionKind::KmallocRedzone, 18));
    k.kfree(p.as_ptr()).unwrap();
}

#[test]
fn store_user_records_the_allocating_and_freeing_call_sites() {
    let (m, cfg) = setup(SLAB_STORE_USER);
    let k = SoleUser::new(&m, cfg);
    let s = k
        .kmem_cache_create("TestSlub_track", 64, 0, SLAB_STORE_USER, None)
        .unwrap();
    let p = k.kmem_cache_alloc(s, GFP_KERNEL).unwrap();
    let line = line!() - 1;
    let t = k.kmem_obj_track(p.as_ptr()).unwrap().unwrap();
    assert_eq!(t.alloc.unwrap().line(), line);
    assert!(t.alloc.unwrap().file().ends_with("kunit.rs"));
    assert!(t.free.is_none());
    k.kmem_cache_free(s, p.as_ptr()).unwrap();
    let t = k.kmem_obj_track(p.as_ptr()).unwrap().unwrap();
    assert_eq!(t.free.unwrap().line(), line!() - 2);
}
