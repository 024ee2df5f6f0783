//! The shrinker registry (Linux `register_shrinker`, `shrink_slab`): caches
//! that can give pages back when a blocking allocation runs short.
//!
//! A fixed table of [`MAX_SHRINKERS`] slots, so no allocation is needed to
//! register. The table lock is held only to copy the table out: shrinkers
//! are called with no lock held, since they free pages (taking pcp and zone
//! locks) and may sleep. Only the slow path of a request that may block
//! calls them; it must never call one for a request that cannot block, nor
//! with any allocator lock held.

use kmm_api::sync::SpinLock;
use kmm_api::{Error, GfpFlags, Order, Shrinker};

/// Shrinkers one allocator can register.
pub const MAX_SHRINKERS: usize = 16;

/// Objects asked of a shrinker per call at least (Linux `SHRINK_BATCH`).
const SHRINK_BATCH: usize = 128;

type Slots<'a> = [Option<&'a dyn Shrinker>; MAX_SHRINKERS];

pub(crate) struct ShrinkerRegistry<'a> {
    slots: SpinLock<Slots<'a>>,
}

impl<'a> ShrinkerRegistry<'a> {
    pub(crate) fn new() -> Self {
        Self {
            slots: SpinLock::new([None; MAX_SHRINKERS]),
        }
    }

    /// Adds `shrinker`; [`Error::TooManyRegions`] when every slot is taken.
    pub(crate) fn register(&self, shrinker: &'a dyn Shrinker) -> Result<(), Error> {
        let mut slots = self.slots.lock();
        let free = slots.iter_mut().find(|slot| slot.is_none());
        let slot = free.ok_or(Error::TooManyRegions {
            capacity: MAX_SHRINKERS,
        })?;
        *slot = Some(shrinker);
        Ok(())
    }

    /// Removes `shrinker`; `false` if it was not registered.
    pub(crate) fn unregister(&self, shrinker: &'a dyn Shrinker) -> bool {
        let mut slots = self.slots.lock();
        let found = slots
            .iter_mut()
            .find(|slot| slot.is_some_and(|s| core::ptr::addr_eq(s, shrinker)));
        found.map(|slot| *slot = None).is_some()
    }

    /// Asks every shrinker to free what it can towards a block of `order`;
    /// returns the pages they report freed.
    pub(crate) fn shrink_slab(&self, gfp: GfpFlags, order: Order) -> usize {
        let slots: Slots<'a> = *self.slots.lock();
        let wanted = order.pages().max(SHRINK_BATCH);
        slots
            .iter()
            .flatten()
            .map(|shrinker| match shrinker.count_objects() {
                0 => 0,
                count => shrinker.scan_objects(gfp, count.min(wanted)),
            })
            .sum()
    }
}
