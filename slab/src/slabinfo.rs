//! `/proc/slabinfo` (version 2.1) as a `Display` type, so the kernel's
//! tour, tests and users share one renderer. Reads counters under each
//! cache's node lock in turn; never changes anything.

use crate::kmem::{Kmem, SlabBackend};
use core::fmt;

/// The `/proc/slabinfo` report of an allocator.
pub struct SlabInfo<'a, B>(pub &'a Kmem<B>);

impl<B: SlabBackend> fmt::Display for SlabInfo<'_, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "slabinfo - version: 2.1")?;
        writeln!(
            f,
            "# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> \
             : tunables <limit> <batchcount> <sharedfactor> \
             : slabdata <active_slabs> <num_slabs> <sharedavail>"
        )?;
        let table = self.0.lock_table();
        for c in self.0.caches(&table) {
            let s = self.0.stats_of(c);
            writeln!(
                f,
                "{:<17} {:>6} {:>6} {:>6} {:>4} {:>4} : tunables {:>4} {:>4} {:>4} : slabdata {:>6} {:>6} {:>6}",
                c.name,
                s.active_objs,
                s.num_objs,
                c.geo.stride,
                c.geo.objects,
                c.geo.pages(),
                c.limit,
                c.batch,
                0,
                s.active_slabs,
                s.num_slabs,
                0
            )?;
        }
        Ok(())
    }
}
