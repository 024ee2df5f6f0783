//! kmm-zones: Linux's zoned page allocator over [`kmm_buddy`].
//!
//! # What it owns
//!
//! `mem_map` (one 16-byte [`Page`] descriptor per frame), the zones DMA,
//! DMA32 (64-bit layouts), NORMAL and HIGHMEM (each a buddy plus policy),
//! and the policy itself: `gfp_zone()` and the zonelist, watermarks and
//! lowmem reserves, per-CPU page lists, direct reclaim and retry, and the
//! Linux API on top (`alloc_pages`, `__free_pages`, `__get_free_pages`,
//! `alloc_pages_exact`, `split_page`, `page_address`, ...). Early boot
//! (`memblock`, [`boot::BootMem`]) and the `/proc` reports live here too,
//! with the `/proc/sys/vm` tunables on booted zones ([`sysctl`]) and the
//! per-CPU `/proc/vmstat` counters ([`vmstat`]).
//!
//! # Invariants
//!
//! - Every frame of a zone is free in its buddy, on exactly one per-CPU
//!   list, held by a caller, or reserved; free + per-CPU + held == managed
//!   for each zone. [`Zones::check`] verifies this and everything below.
//! - Only frames of held blocks carry `PG_owned` (a layer's claim).
//! - An allocation comes from the zone `gfp_zone()` names or one below it,
//!   never above; `GFP_DMA` only from ZONE_DMA.
//! - A zone gives a block only while its free pages stay above the mark the
//!   request is checked against plus its `lowmem_reserve` for the request's
//!   highest zone.
//! - A per-CPU list holds only blocks of its zone and order, with `PG_pcp`
//!   set and refcount 0; it holds fewer than `high` pages after any free.
//!
//! # Cost
//!
//! - `alloc_pages` / `__free_pages` of orders 0..=3: O(1) in the common case
//!   (the CPU pinned, a pop or push with plain loads and stores, and for a
//!   free one compare-and-swap); a refill or drain moves `batch` pages
//!   under one zone lock hold. Higher orders: O(max_order) under the zone lock.
//! - The slow path adds reclaim rounds (bounded except for `__GFP_NOFAIL`).
//! - Reports and [`Zones::check`]: O(frames).
//!
//! # Locks
//!
//! Per zone: the zone lock around the buddy, taken with interrupts saved
//! ([`kmm_api::IrqGuard`]). A CPU's per-CPU lists have no lock: they are
//! reached with that CPU pinned ([`kmm_api::PreemptControl`]), and from
//! elsewhere only through `on_cpu`. Order: **pin, then zone lock**. The shrinker table's lock is
//! never held across a call. No lock is held across a platform hook.
//!
//! # Ownership
//!
//! A block is handed out as a [`kmm_api::Pages`] handle carrying this
//! allocator's identity; the safe frees and `split_page` consume it, so
//! safe code cannot free a block twice, free another's, or free into the
//! wrong machine. Frees by address or raw frame (`free_pages`,
//! `free_pages_exact`, a handle rebuilt with `Pages::from_raw`) are the
//! `unsafe` forms: their caller promises it holds the block. Every free
//! refuses a block a layer claims through its owner word (`PG_owned`), so
//! a slab page or a page-table page goes back only through its layer.
//!
//! # What it must never do
//!
//! Read or write a frame's contents (except zeroing a frame it hands out
//! for `__GFP_ZERO`, through the direct map or the platform), sleep or call
//! a hook for a request that cannot block, hand a block out twice, or
//! change anything when it refuses a request: every invalid free is an
//! [`kmm_api::Error`] and leaves every structure as it was.
//!
//! # Example
//!
//! ```
//! use kmm_api::{Order, GFP_KERNEL, GFP_HIGHUSER};
//! use kmm_zones::testing::TestMachine;
//! use kmm_zones::ZoneType;
//!
//! let mut machine = TestMachine::i386_scaled(4096);
//! let zones = machine.boot()?;
//! let page = zones.alloc_pages(GFP_KERNEL, Order::ZERO)?;
//! assert_eq!(zones.page_zone(page.pfn()), Some(ZoneType::Normal));
//! let high = zones.alloc_pages(GFP_HIGHUSER, Order::new(2)?)?;
//! assert_eq!(zones.page_address(high.pfn()), None); // highmem has no address
//! let addr = zones.page_address(page.pfn()).unwrap();
//! zones.__free_pages(page)?; // the handle is consumed: no second free
//! zones.__free_pages(high)?;
//! // The raw form is unsafe; its checks still refuse a double free.
//! // SAFETY: nobody holds the page any more, so no holder can be hurt.
//! assert!(unsafe { zones.free_pages(addr, Order::ZERO) }.is_err());
//! zones.check().expect("invariants hold");
//! # Ok::<(), kmm_api::Error>(())
//! ```

#![no_std]
#![deny(unsafe_code)]

#[cfg(any(test, feature = "testing"))]
extern crate std;

mod address;
pub mod boot;
mod check;
pub mod memblock;
mod mm_init;
mod page;
mod page_alloc;
mod pcp;
pub mod report;
mod shrinker;
mod stats;
pub use stats::ZoneReport;
pub mod sysctl;
pub use sysctl::SysctlError;
pub mod vmstat;
pub use vmstat::VmStat;
pub mod watermark;
mod zone;
mod zone_type;
mod zonelist;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use address::SplitPages;
pub use check::Invariant;
pub use mm_init::{ZoneConfig, MAX_DMA32_PFN, MAX_DMA_PFN};
pub use page::Page;
pub use page_alloc::{Zones, MAX_RECLAIM_RETRIES};
pub use pcp::{PcpSizing, PerCpuPages, NR_PCP_ORDERS};
pub use shrinker::MAX_SHRINKERS;
pub use zone_type::{ZoneType, MAX_NR_ZONES};
pub use zonelist::{gfp_zone, zonelist};
