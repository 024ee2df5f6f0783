//! kmm-buddy: one binary-buddy page-frame allocator (Linux `free_area[]`)
//! over the frames `[base, base + nr_frames)`.
//!
//! # What it owns
//!
//! The free lists, one per order `0..=max_order` (at most
//! [`kmm_api::Order::LIMIT`]; Linux uses 10), their counters, and the
//! buddy's view of every frame: a one-byte [`FrameTag`] and, for free block
//! heads, two `u32` list [`Links`]. That metadata is stored by the caller
//! through [`FrameMeta`], so kmm-zones keeps it in its page descriptors and
//! a kernel using the buddy alone takes [`BuddyFrame`] (12 bytes per frame).
//!
//! # Invariants
//!
//! - Every frame is `Reserved`, the head of a `Free(o)` or `Allocated(o)`
//!   block, or a `Tail` of exactly one block; the blocks tile the released
//!   frames without overlap.
//! - A block of order `o` starts at an absolute pfn that is a multiple of
//!   `2^o` and lies wholly inside the range; a range whose base is not
//!   aligned just has smaller blocks at its edges.
//! - A block is on `free_area[o]` iff its head is tagged `Free(o)`.
//! - No two free buddies (`pfn ^ 2^o`) of the same order `o < max_order`
//!   are left unmerged; a buddy outside the range is never merged.
//! - `free_pages` is the sum of the lists, `managed_pages` the pages ever
//!   released; nothing ever returns to `Reserved`.
//!
//! [`Buddy::check`] verifies all of these and names the first broken one.
//!
//! # Cost
//!
//! `alloc` and `free` are O(max_order): the smallest non-empty order is one
//! bit scan, then at most `max_order` splits or merges; an order-0 request
//! with order-0 blocks free is a list pop. `allocated_order` is O(1),
//! `is_free` O(max_order), `split` O(2^order), the range operations
//! O(blocks × max_order) and `release_range` O(frames). `new` and `check`
//! are O(nr_frames).
//!
//! # What it must never do
//!
//! Read or write the contents of a frame (highmem frames are not even
//! mapped), panic or change anything on a bad request (every refusal is an
//! [`kmm_api::Error`] with the state untouched), or know about GFP flags,
//! zones or watermarks: that policy is kmm-zones'. It takes no lock; the
//! owner serialises access (`&mut self`).
//!
//! # Example
//!
//! ```
//! use kmm_api::{Order, Pfn, MAX_PAGE_ORDER};
//! use kmm_buddy::{Buddy, BuddyFrame};
//!
//! let mut frames = vec![BuddyFrame::EMPTY; 4096];
//! let mut buddy = Buddy::new(frames.as_mut_slice(), Pfn::new(0x1000), 4096, MAX_PAGE_ORDER)?;
//! assert_eq!(buddy.release_range(Pfn::new(0x1000), Pfn::new(0x2000))?, 4096);
//! let block = buddy.alloc(Order::new(2)?)?;
//! assert_eq!(buddy.allocated_order(block), Some(Order::new(2)?));
//! buddy.free(block, Order::new(2)?)?;
//! assert_eq!(buddy.nr_free(MAX_PAGE_ORDER), 4); // all merged back
//! buddy.check().expect("invariants hold");
//! # Ok::<(), kmm_api::Error>(())
//! ```

#![no_std]
#![forbid(unsafe_code)]

mod buddy;
mod check;
mod frame;
mod free_area;
mod range;

pub use buddy::Buddy;
pub use check::Invariant;
pub use frame::{BuddyFrame, FrameMeta, FrameTag, Links};
