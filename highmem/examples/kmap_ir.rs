//! The loops behind the instruction counts in BENCHMARKS.md's kmap
//! section: `n` rounds of one operation of `benches/kmap.rs` on the same
//! uniprocessor test machine, for `valgrind --tool=callgrind` (kmap_local
//! unmapped by an explicit `kunmap_local`, as the bench does). Running
//! it at two `n` and dividing the difference in instructions by the
//! difference in `n` cancels the setup.
//!
//! `cargo run --release -p kmm-highmem --example kmap_ir -- hit|miss|local N`

use kmm_api::Pfn;
use kmm_highmem::testing::TestMachine;
use std::hint::black_box;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (op, n) = match &args[1..] {
        [op, n] => (op.as_str(), n.parse::<usize>().expect("N: a count")),
        _ => panic!("usage: kmap_ir hit|miss|local N"),
    };
    let m = TestMachine::uniprocessor(4, 8);
    let hm = m.highmem();
    let mut page = m.alloc_highmem();
    drop(hm.kmap(&mut page, 0).unwrap());
    let base = m.first_highmem().as_usize() + 1_000_000;
    match op {
        "hit" => (0..n).for_each(|_| {
            black_box(hm.kmap(black_box(&mut page), 0).unwrap().addr());
        }),
        "miss" => (0..n).for_each(|i| {
            let pfn = Pfn::new(base + i % 100_000);
            // SAFETY: the test page table only records these frames;
            // nothing reaches their bytes. One kmap, one kunmap.
            unsafe {
                black_box(hm.kmap_pfn(pfn).unwrap());
                hm.kunmap_pfn(pfn).unwrap();
            }
        }),
        "local" => (0..n).for_each(|_| {
            let l = hm.kmap_local_page(black_box(&mut page), 0).unwrap();
            black_box(l.addr());
            assert!(hm.kunmap_local(l).is_ok());
        }),
        _ => panic!("unknown operation {op}"),
    }
    hm.check().unwrap();
}
