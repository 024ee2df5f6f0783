//! The loom build's stand-in for the first word of an area queued by
//! `vfree_atomic`: one loom cell per address, in a table that lives for
//! one model execution, so loom sees every write and read of a link and
//! reports one that no Release/Acquire pair orders. The table's own lock
//! is a std lock, invisible to loom: it adds no ordering that could hide a
//! missing one.

extern crate std;

use loom::cell::UnsafeCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

struct Link(UnsafeCell<usize>);

// SAFETY: the cell is only reached through `with`/`with_mut`, which loom
// checks for racing accesses; that is the point of the table.
unsafe impl Send for Link {}
// SAFETY: as above.
unsafe impl Sync for Link {}

#[derive(Default)]
struct Links(Mutex<HashMap<usize, Arc<Link>>>);

loom::lazy_static! {
    static ref LINKS: Links = Links::default();
}

fn cell(addr: usize) -> Arc<Link> {
    let mut links = LINKS.0.lock().unwrap_or_else(|p| p.into_inner());
    links
        .entry(addr)
        .or_insert_with(|| Arc::new(Link(UnsafeCell::new(0))))
        .clone()
}

/// Writes the link word of the area at `addr`.
pub(crate) fn write(addr: usize, next: usize) {
    // SAFETY: loom checks that no other access races this one.
    cell(addr).0.with_mut(|p| unsafe { *p = next });
}

/// Reads the link word of the area at `addr`.
pub(crate) fn read(addr: usize) -> usize {
    // SAFETY: loom checks that no write races this read.
    cell(addr).0.with(|p| unsafe { *p })
}
