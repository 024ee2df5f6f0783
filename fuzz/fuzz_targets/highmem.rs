//! Arbitrary sequences of kmap / kunmap / kmap_local / kunmap_local (raw
//! and through guards), page_address, flushes and the byte helpers with
//! any offset and length, on a pool of a few slots: out-of-order and
//! double unmaps, kunmaps of pages never mapped, unmaps of arbitrary
//! addresses included. Every call returns a value (an error for bad
//! input), never panics; after every step the highmem checker is clean,
//! and bytes written through one mapping are read back through another.
//!
//! One machine and its `Highmem` are made once per thread (libFuzzer runs
//! every input on one thread) and reused: each input undoes its own raw
//! kmaps and kmap_locals at the end, so the next finds a pool with only
//! unused (count 0 or 1) slots, and the page bytes' shadow carries over.
//!
//! The raw calls are `unsafe fn`s: the target holds every highmem frame
//! of the machine, undoes only kmaps it made (the `users` count) or calls
//! that must be refused (no user left, not the top of the stack), and
//! reaches no address it unmapped.

#![no_main]

use arbitrary::Arbitrary;
use kmm_api::{DirectMap, Pages, VirtAddr, PAGE_SIZE};
use kmm_highmem::testing::{TestHighmem, TestMachine, WaitMode};
use kmm_highmem::{HighmemError, KM_MAX_IDX};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;

/// Highmem frames the target maps.
const PAGES: usize = 24;
/// Pool slots: small, so wraps, flushes and a full pool are common.
const SLOTS: usize = 6;

#[derive(Arbitrary, Debug)]
enum Op {
    /// Raw `kmap_try_pfn` (a full pool is an error, not a wait).
    Kmap(u8),
    /// Raw `kunmap_pfn`, also of pages without a user.
    Kunmap(u8),
    /// Raw `kmap_local_pfn`.
    KmapLocal(u8),
    /// Raw `kunmap_local_addr` of entry `n` of the stack (any order).
    KunmapLocal(u8),
    /// Raw `kunmap_local_addr` of any address.
    KunmapLocalAt(u32),
    /// Writes `val` at `off` through a pkmap guard, reads it back through
    /// a kmap_local of the same page (kmap_try: may find the pool full).
    WriteKmap {
        page: u8,
        off: u16,
        val: u8,
    },
    /// Writes through a kmap_local guard nested in another page's.
    WriteLocalNested {
        page: u8,
        other: u8,
        off: u16,
        val: u8,
    },
    /// `memset_page` / `memcpy_from_page` with any range.
    Memset {
        page: u8,
        off: u16,
        len: u16,
        val: u8,
    },
    /// `memcpy_page` between two pages with any ranges.
    Memcpy {
        dst: u8,
        src: u8,
        dst_off: u16,
        src_off: u16,
        len: u16,
    },
    /// A guard dropped out of order inside a nest of three.
    DropOutOfOrder(u8, u8, u8),
    PageAddress(u8),
    FlushUnused,
}

struct State {
    m: &'static TestMachine,
    hm: TestHighmem<'static>,
    pages: Vec<Pages>,
    /// Every byte the target wrote, per page (the machine's RAM starts
    /// zeroed and only this target writes it).
    shadow: Vec<Vec<u8>>,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

fn state() -> State {
    let m: &'static TestMachine = Box::leak(Box::new(TestMachine::with_pool(
        1,
        2,
        PAGES,
        SLOTS,
        WaitMode::Futex,
    )));
    State {
        m,
        hm: m.highmem(),
        pages: m.alloc_highmem_n(PAGES),
        shadow: vec![vec![0; PAGE_SIZE]; PAGES],
    }
}

fn idx(b: u8) -> usize {
    usize::from(b) % PAGES
}

fn off(o: u16) -> usize {
    usize::from(o) % (PAGE_SIZE + 8)
}

fn run(s: &mut State, ops: &[Op]) {
    let State {
        m,
        hm,
        pages,
        shadow,
    } = s;
    let pfn = |i: usize| m.first_highmem().add(i);
    // Raw kmaps this input holds, per page; raw kmap_local addresses.
    let mut users = [0usize; PAGES];
    let mut local: Vec<VirtAddr> = Vec::new();
    for op in ops {
        match *op {
            Op::Kmap(p) => {
                let i = idx(p);
                // SAFETY: the target holds the frame; counted in `users`.
                match unsafe { hm.kmap_try_pfn(pfn(i)) } {
                    Ok(_) => users[i] += 1,
                    Err(HighmemError::PoolFull { .. }) => {}
                    Err(e) => panic!("kmap_try: {e}"),
                }
            }
            Op::Kunmap(p) => {
                let i = idx(p);
                // SAFETY: undoes one of our kmaps, or must be refused.
                let r = unsafe { hm.kunmap_pfn(pfn(i)) };
                if users[i] > 0 {
                    r.unwrap();
                    users[i] -= 1;
                } else {
                    assert_eq!(r, Err(HighmemError::NotMapped { pfn: pfn(i) }));
                }
            }
            Op::KmapLocal(p) => {
                // SAFETY: the target holds the frame; unmapped in order.
                match unsafe { hm.kmap_local_pfn(pfn(idx(p))) } {
                    Ok(a) => local.push(a),
                    Err(HighmemError::LocalStackFull { .. }) => {
                        assert_eq!(local.len(), KM_MAX_IDX)
                    }
                    Err(e) => panic!("kmap_local: {e}"),
                }
            }
            Op::KunmapLocal(n) => {
                let addr = hm
                    .kmap_local_addr(0, usize::from(n) % (KM_MAX_IDX + 1))
                    .unwrap_or(VirtAddr::new(0));
                // SAFETY: our own top mapping, or refused.
                let r = unsafe { hm.kunmap_local_addr(addr) };
                if local.last() == Some(&addr) {
                    r.unwrap();
                    local.pop();
                } else {
                    assert!(matches!(r, Err(HighmemError::NotTopOfStack { .. })));
                }
            }
            Op::KunmapLocalAt(a) => {
                let addr = VirtAddr::new(a as usize);
                let top = local.last().copied();
                // SAFETY: our own top mapping, a direct-map address
                // (ignored) or any other address (refused).
                let r = unsafe { hm.kunmap_local_addr(addr) };
                if top == Some(addr) {
                    r.unwrap();
                    local.pop();
                } else if hm.direct_map().virt_to_pfn(addr).is_some() {
                    assert_eq!(r, Ok(()));
                } else {
                    assert_eq!(r, Err(HighmemError::NotTopOfStack { addr, top }));
                }
            }
            Op::WriteKmap { page, off: o, val } => {
                let (i, o) = (idx(page), off(o) % PAGE_SIZE);
                match hm.kmap_try(&mut pages[i], 0) {
                    Ok(mut k) => {
                        k[o] = val;
                        shadow[i][o] = val;
                    }
                    Err(HighmemError::PoolFull { .. }) => {}
                    Err(e) => panic!("kmap_try guard: {e}"),
                }
                if local.len() < KM_MAX_IDX {
                    let got = hm.with_kmap_local_ref(&pages[i], |b| b[o]).unwrap();
                    assert_eq!(got, shadow[i][o]);
                }
            }
            Op::WriteLocalNested {
                page,
                other,
                off: o,
                val,
            } => {
                let (i, j, o) = (idx(page), idx(other), off(o) % PAGE_SIZE);
                if i == j || local.len() + 2 > KM_MAX_IDX {
                    continue;
                }
                let (a, b) = if i < j {
                    let (l, r) = pages.split_at_mut(j);
                    (&mut l[i], &mut r[0])
                } else {
                    let (l, r) = pages.split_at_mut(i);
                    (&mut r[0], &mut l[j])
                };
                let read = hm
                    .with_kmap_local(b, |y| {
                        hm.with_kmap_local(a, |x| {
                            x[o] = val;
                            y[o]
                        })
                    })
                    .unwrap()
                    .unwrap();
                shadow[i][o] = val;
                assert_eq!(read, shadow[j][o]);
            }
            Op::Memset {
                page,
                off: o,
                len,
                val,
            } => {
                let (i, o, len) = (idx(page), off(o), usize::from(len) % (PAGE_SIZE + 8));
                if local.len() == KM_MAX_IDX {
                    continue;
                }
                let r = hm.memset_page(&mut pages[i], o, val, len);
                if o + len > PAGE_SIZE {
                    assert_eq!(r, Err(HighmemError::OutOfRange { offset: o, len }));
                } else {
                    r.unwrap();
                    shadow[i][o..o + len].fill(val);
                }
                let mut buf = vec![0u8; len.min(64)];
                let r = hm.memcpy_from_page(&mut buf, &pages[i], o);
                if o + buf.len() <= PAGE_SIZE {
                    r.unwrap();
                    assert_eq!(buf[..], shadow[i][o..o + buf.len()]);
                } else {
                    assert!(r.is_err());
                }
            }
            Op::Memcpy {
                dst,
                src,
                dst_off,
                src_off,
                len,
            } => {
                let (d, sidx) = (idx(dst), idx(src));
                let (doff, soff) = (off(dst_off), off(src_off));
                let len = usize::from(len) % (PAGE_SIZE + 8);
                if d == sidx || local.len() + 2 > KM_MAX_IDX {
                    continue;
                }
                let (dp, sp) = if d < sidx {
                    let (l, r) = pages.split_at_mut(sidx);
                    (&mut l[d], &r[0])
                } else {
                    let (l, r) = pages.split_at_mut(d);
                    (&mut r[0], &l[sidx])
                };
                let r = hm.memcpy_page(dp, doff, sp, soff, len);
                if doff + len > PAGE_SIZE || soff + len > PAGE_SIZE {
                    assert!(matches!(r, Err(HighmemError::OutOfRange { .. })));
                } else {
                    r.unwrap();
                    let bytes = shadow[sidx][soff..soff + len].to_vec();
                    shadow[d][doff..doff + len].copy_from_slice(&bytes);
                }
            }
            Op::DropOutOfOrder(a, b, c) => {
                let (a, b, c) = (idx(a), idx(b), idx(c));
                if a == b || b == c || a == c || local.len() + 3 > KM_MAX_IDX {
                    continue;
                }
                let depth = hm.local_depth(0).unwrap();
                let mut it = pages.iter_mut().enumerate();
                let mut pick = |want: usize| it.find(|(k, _)| *k == want).map(|(_, p)| p);
                let (lo, mid, hi) = {
                    let mut v = [a, b, c];
                    v.sort();
                    (v[0], v[1], v[2])
                };
                let (pl, pm, ph) = (pick(lo).unwrap(), pick(mid).unwrap(), pick(hi).unwrap());
                let gl = hm.kmap_local_page(pl, 0).unwrap();
                let gm = hm.kmap_local_page(pm, 0).unwrap();
                let gh = hm.kmap_local_page(ph, 0).unwrap();
                assert_eq!(gl[0], shadow[lo][0]);
                drop(gl);
                assert_eq!(hm.local_depth(0), Some(depth + 3));
                drop(gh);
                // The released lowest entry waits under the middle one.
                assert_eq!(hm.local_depth(0), Some(depth + 2));
                drop(gm);
                assert_eq!(hm.local_depth(0), Some(depth));
            }
            Op::PageAddress(p) => {
                let i = idx(p);
                if users[i] > 0 {
                    assert!(hm.page_address(&pages[i]).is_some());
                }
            }
            Op::FlushUnused => hm.kmap_flush_unused(),
        }
        hm.check().unwrap();
    }
    // Give back what this input took.
    while let Some(addr) = local.pop() {
        // SAFETY: our own mappings, top first.
        unsafe { hm.kunmap_local_addr(addr) }.unwrap();
    }
    for (i, n) in users.iter().enumerate() {
        for _ in 0..*n {
            // SAFETY: undoes our own kmaps.
            unsafe { hm.kunmap_pfn(pfn(i)) }.unwrap();
        }
    }
    hm.check().unwrap();
    assert_eq!(hm.local_depth(0), Some(0));
}

fuzz_target!(|ops: Vec<Op>| {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let st = s.get_or_insert_with(state);
        run(st, &ops);
    });
});
