//! The proof: each layer of kmm exercised on the real MMU, one module per
//! layer, each check printed as `[ok]` or `[FAIL]` with the figures it
//! compared; then the `/proc` reports. [`run`] says whether every check
//! passed.

mod highmem;
mod slab;
mod vmalloc;
mod zones;

use crate::{println, Mm};
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

static PASSED: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicUsize = AtomicUsize::new(0);

/// Records one check: `ok` and what was checked.
pub fn check(ok: bool, what: core::fmt::Arguments<'_>) -> bool {
    if ok {
        PASSED.fetch_add(1, Relaxed);
        println!("  [ok]   {what}");
    } else {
        FAILED.fetch_add(1, Relaxed);
        println!("  [FAIL] {what}");
    }
    ok
}

/// `check!(condition, "format", args...)`.
#[macro_export]
macro_rules! check {
    ($ok:expr, $($arg:tt)*) => {
        $crate::checks::check($ok, format_args!($($arg)*))
    };
}

/// Records a step that returned an error as a failed check.
pub fn step<T, E: core::fmt::Display>(what: &str, r: Result<T, E>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            check(false, format_args!("{what}: {e}"));
            None
        }
    }
}

/// kmm's table maps the kernel where it runs and nothing of the boot
/// directory's identity map survives: physical 1 MiB (the kernel image)
/// reads at `PAGE_OFFSET + 1 MiB`, and its identity address faults,
/// classified as a user address.
fn paging(mm: &Mm) {
    use crate::traps::{probe_read, GUARD_FAULTS, OTHER_FAULTS};
    let image = 0x0010_0000;
    let direct = mm.layout().page_offset().as_usize() + image;
    let (guards, others) = (GUARD_FAULTS.load(Relaxed), OTHER_FAULTS.load(Relaxed));
    let through_direct_map = probe_read(direct);
    let through_identity = probe_read(image);
    check!(
        through_direct_map.is_some()
            && through_identity.is_none()
            && GUARD_FAULTS.load(Relaxed) == guards
            && OTHER_FAULTS.load(Relaxed) == others + 1,
        "the kernel image reads at {direct:#010x} (kmm's direct map); its boot identity address {image:#010x} faults: the boot directory is gone"
    );
}

/// Runs every layer's checks and prints the reports; whether all passed.
pub fn run(mm: &Mm) -> bool {
    zones::print_zones(mm);
    println!("/proc/meminfo\n{}", mm.meminfo());
    println!("/proc/buddyinfo\n{}", mm.zones().zone_report().buddyinfo());
    println!(
        "/proc/zoneinfo (watermarks)\n{}",
        mm.zones().zone_report().zoneinfo()
    );
    println!("Paging: kmm's table alone in CR3");
    paging(mm);
    println!("\nZones and the GFP fallback");
    zones::run(mm);
    println!("\nThe slab layer: kmalloc, a kmem_cache, kmalloc as #[global_allocator]");
    slab::run(mm);
    println!("\nvmalloc, the guard page on a real #PF, ioremap of devices");
    vmalloc::run(mm);
    println!("\nkmap and kmap_local");
    highmem::run(mm);
    println!("\n/proc/meminfo (after the checks)\n{}", mm.meminfo());
    println!("/proc/buddyinfo\n{}", mm.zones().zone_report().buddyinfo());
    println!("/proc/slabinfo\n{}", mm.slabinfo());
    println!(
        "/proc/vmallocinfo (every area freed and purged)\n{}",
        mm.vmallocinfo()
    );
    println!(
        "TLB flushes by the MMU hook: {}",
        crate::platform::TLB_FLUSHES.load(Relaxed)
    );
    let (passed, failed) = (PASSED.load(Relaxed), FAILED.load(Relaxed));
    println!("Checks: {passed} passed, {failed} failed");
    failed == 0 && passed > 0
}
