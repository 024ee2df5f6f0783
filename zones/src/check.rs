//! What the invariant checker ([`crate::Zones::check`]) reports: the first
//! broken invariant, as a value with a sentence.
//!
//! This module owns only the report type; the walks live beside the
//! structures they walk (`zone.rs`, `pcp.rs`).

use crate::ZoneType;
use core::fmt;
use kmm_api::Pfn;

/// The first broken invariant the checker found.
#[non_exhaustive]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Invariant {
    /// The zone's buddy failed its own check.
    Buddy {
        /// The zone.
        zone: ZoneType,
        /// What the buddy found.
        broken: kmm_buddy::Invariant,
    },
    /// The lock-free free-page counter disagrees with the buddy.
    FreeCounter {
        /// The zone.
        zone: ZoneType,
        /// The counter.
        recorded: usize,
        /// The buddy's free pages.
        counted: usize,
    },
    /// A per-CPU list is malformed.
    PcpList {
        /// The zone.
        zone: ZoneType,
        /// The CPU.
        cpu: usize,
        /// The list's order.
        order: usize,
        /// The entry at fault, when one is to blame.
        pfn: Option<Pfn>,
        /// What is wrong.
        problem: &'static str,
    },
    /// A per-CPU page count disagrees with its lists.
    PcpCount {
        /// The zone.
        zone: ZoneType,
        /// The CPU.
        cpu: usize,
        /// The count.
        recorded: usize,
        /// Pages on the lists.
        counted: usize,
    },
    /// A descriptor contradicts itself or its zone.
    Descriptor {
        /// The frame.
        pfn: Pfn,
        /// What is wrong.
        problem: &'static str,
    },
    /// Free, per-CPU and held pages do not add up to the managed pages.
    Accounting {
        /// The zone.
        zone: ZoneType,
        /// Pages on the buddy's free lists.
        free: usize,
        /// Pages on per-CPU lists.
        pcp: usize,
        /// Pages held by callers.
        held: usize,
        /// Managed pages.
        managed: usize,
    },
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Invariant::Buddy { zone, broken } => write!(f, "zone {zone}: buddy: {broken}"),
            Invariant::FreeCounter {
                zone,
                recorded,
                counted,
            } => write!(
                f,
                "zone {zone}: free counter says {recorded} pages, the buddy holds {counted}"
            ),
            Invariant::PcpList {
                zone,
                cpu,
                order,
                pfn: Some(pfn),
                problem,
            } => write!(f, "zone {zone} cpu {cpu} order {order}: {pfn}: {problem}"),
            Invariant::PcpList {
                zone,
                cpu,
                order,
                pfn: None,
                problem,
            } => write!(f, "zone {zone} cpu {cpu} order {order}: {problem}"),
            Invariant::PcpCount {
                zone,
                cpu,
                recorded,
                counted,
            } => write!(
                f,
                "zone {zone} cpu {cpu}: count says {recorded} pages, the lists hold {counted}"
            ),
            Invariant::Descriptor { pfn, problem } => write!(f, "{pfn}: {problem}"),
            Invariant::Accounting {
                zone,
                free,
                pcp,
                held,
                managed,
            } => write!(
                f,
                "zone {zone}: free {free} + per-cpu {pcp} + held {held} != managed {managed}"
            ),
        }
    }
}
