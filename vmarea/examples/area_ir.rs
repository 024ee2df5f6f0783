//! A callgrind driver for the alloc+free loops of the area bench on
//! `VmapAreas` alone: populate `live` 1-page areas as a `live_*` workload
//! does, then run `iters` alloc+free of `pages` pages at `align` bytes
//! (default 1 page at page alignment; `packed 0 N 5 32768` is
//! `fix_align`, `fit_holes 1000 N` is `full_fit`, `packed 0 N` is
//! `fix_size`) inside `measured`, so that callgrind
//! can count that function only (instructions per op = its inclusive Ir /
//! `iters`):
//!
//! ```sh
//! cargo build --release -p kmm-vmarea --example area_ir
//! valgrind --tool=callgrind --toggle-collect='*measured*' \
//!     target/release/examples/area_ir fit_holes 100000 50000 [PAGES [ALIGN]]
//! callgrind_annotate --inclusive=yes callgrind.out.<pid>
//! ```
//!
//! Layouts: `packed`, `small_holes`, `fit_holes` (the bench's `Layout`).
//!
//! The range is x86-64's vmalloc range, so the driver exists on 64-bit
//! hosts only.

// The bench helpers are shared whole; this driver uses only some of them.
#[cfg(target_pointer_width = "64")]
#[allow(dead_code)]
#[path = "../benches/common/mod.rs"]
mod common;

#[cfg(target_pointer_width = "64")]
#[allow(dead_code)]
#[path = "../benches/common/kmm_areas.rs"]
mod kmm_areas;

#[cfg(target_pointer_width = "64")]
use common::{populate, Areas, Layout, PAGE};
#[cfg(target_pointer_width = "64")]
use kmm_areas::Kmm;
#[cfg(target_pointer_width = "64")]
use std::hint::black_box;

#[cfg(target_pointer_width = "64")]
const USAGE: &str = "usage: area_ir packed|small_holes|fit_holes LIVE ITERS [PAGES [ALIGN]]";

/// The counted loop.
#[cfg(target_pointer_width = "64")]
#[inline(never)]
fn measured(areas: &mut Kmm, iters: usize, size: usize, align: usize) {
    for _ in 0..iters {
        let addr = areas.alloc(black_box(size), align);
        areas.free(addr);
    }
}

#[cfg(target_pointer_width = "64")]
fn main() {
    let mut args = std::env::args().skip(1);
    let layout = match args.next().as_deref() {
        Some("packed") => Layout::Packed,
        Some("small_holes") => Layout::SmallHoles,
        Some("fit_holes") => Layout::FitHoles,
        _ => panic!("{USAGE}"),
    };
    let mut number = |default: Option<usize>| -> usize {
        match args.next() {
            Some(arg) => arg.parse().expect(USAGE),
            None => default.expect(USAGE),
        }
    };
    let (live, iters) = (number(None), number(None));
    let (pages, align) = (number(Some(1)), number(Some(PAGE)));
    let mut areas = Kmm::new();
    populate(&mut areas, live, layout);
    measured(&mut areas, iters, pages * PAGE, align);
}

#[cfg(not(target_pointer_width = "64"))]
fn main() {
    eprintln!("area_ir models x86-64's vmalloc range: run it on a 64-bit host");
}
