//! One test per rule of the buddy, named after the rule.

mod support;

use kmm_api::{Error, Pfn};
use kmm_buddy::{Buddy, BuddyFrame, FrameMeta, FrameTag, Invariant};
use support::{buddy, free_counts, order, snapshot, Frames};

fn pfn(n: usize) -> Pfn {
    Pfn::new(n)
}

/// A buddy over `[0, nr)` with everything released.
fn released(nr: usize, max_order: u32) -> Buddy<Frames> {
    let mut b = buddy(0, nr, max_order);
    assert_eq!(b.release_range(pfn(0), pfn(nr)), Ok(nr));
    b
}

fn free_heads(b: &Buddy<Frames>) -> Vec<(usize, u32)> {
    let base = b.base().as_usize();
    (0..b.end().as_usize() - base)
        .filter_map(|idx| match b.meta().tag(idx) {
            FrameTag::Free(o) => Some((base + idx, o.as_u32())),
            _ => None,
        })
        .collect()
}

#[test]
fn split_puts_upper_halves_on_lower_lists() {
    let mut b = released(16, 4);
    assert_eq!(b.alloc(order(0)), Ok(pfn(0)));
    assert_eq!(free_counts(&b, 4), [1, 1, 1, 1, 0]);
    assert_eq!(free_heads(&b), [(1, 0), (2, 1), (4, 2), (8, 3)]);
    b.check().unwrap();
}

#[test]
fn alloc_takes_the_smallest_fitting_block_first() {
    let mut b = released(16, 4);
    assert_eq!(b.alloc(order(0)), Ok(pfn(0)));
    // Order 1 is served from the order-1 list, not by splitting order 2 or 3.
    assert_eq!(b.alloc(order(1)), Ok(pfn(2)));
    assert_eq!(free_counts(&b, 4), [1, 0, 1, 1, 0]);
}

#[test]
fn free_merges_with_its_buddy_up_the_orders() {
    let mut b = released(16, 4);
    let first = b.alloc(order(0)).unwrap();
    let second = b.alloc(order(0)).unwrap();
    b.free(first, order(0)).unwrap();
    assert_eq!(free_counts(&b, 4), [1, 1, 1, 1, 0]);
    b.free(second, order(0)).unwrap();
    assert_eq!(free_counts(&b, 4), [0, 0, 0, 0, 1]);
    b.check().unwrap();
}

#[test]
fn no_merge_across_the_range_edge() {
    // [2, 8): the order-1 block at 2 has its buddy 0 outside the range.
    let mut b = buddy(2, 6, 3);
    assert_eq!(b.release_range(pfn(2), pfn(8)), Ok(6));
    assert_eq!(free_heads(&b), [(2, 1), (4, 2)]);
    let low = b.alloc(order(1)).unwrap();
    b.free(low, order(1)).unwrap();
    assert_eq!(free_heads(&b), [(2, 1), (4, 2)]);
    b.check().unwrap();
}

#[test]
fn no_merge_with_a_buddy_of_another_order() {
    let mut b = released(8, 3);
    let (p0, p1, p2) = (
        b.alloc(order(0)).unwrap(),
        b.alloc(order(0)).unwrap(),
        b.alloc(order(1)).unwrap(),
    );
    assert_eq!((p0, p1, p2), (pfn(0), pfn(1), pfn(2)));
    b.free(p0, order(0)).unwrap();
    // The order-1 buddy of 2 is 0, whose frame 0 is a free order-0 block.
    b.free(p2, order(1)).unwrap();
    assert_eq!(free_heads(&b), [(0, 0), (2, 1), (4, 2)]);
    b.check().unwrap();
}

#[test]
fn no_merge_with_an_allocated_buddy() {
    let mut b = released(4, 2);
    let p0 = b.alloc(order(0)).unwrap();
    let _p1 = b.alloc(order(0)).unwrap();
    b.free(p0, order(0)).unwrap();
    assert_eq!(free_heads(&b), [(0, 0), (2, 1)]);
}

#[test]
fn merging_stops_at_the_maximum_order() {
    let b = released(16, 2);
    assert_eq!(free_counts(&b, 2), [0, 0, 4]);
}

#[test]
fn every_refused_free_leaves_the_buddy_unchanged() {
    let mut b = buddy(0, 32, 3);
    b.release_range(pfn(0), pfn(8)).unwrap();
    let block = b.alloc(order(2)).unwrap(); // [0, 4)
    let free_block = b.alloc(order(1)).unwrap(); // [4, 6)
    b.free(free_block, order(1)).unwrap();
    let cases = [
        (pfn(32), order(0), Error::PfnOutOfRange { pfn: pfn(32) }),
        (block, order(4), Error::OrderTooLarge { order: 4, max: 3 }),
        (
            pfn(2),
            order(2),
            Error::Misaligned {
                pfn: pfn(2),
                order: order(2),
            },
        ),
        (
            block,
            order(1),
            Error::WrongOrder {
                pfn: block,
                allocated: order(2),
                freed: order(1),
            },
        ),
        (free_block, order(1), Error::DoubleFree { pfn: free_block }),
        (pfn(5), order(0), Error::DoubleFree { pfn: pfn(5) }),
        (pfn(1), order(0), Error::NotAllocated { pfn: pfn(1) }),
        (pfn(20), order(0), Error::NotAllocated { pfn: pfn(20) }),
    ];
    for (at, o, expected) in cases {
        let before = snapshot(&b);
        assert_eq!(b.free(at, o), Err(expected));
        assert_eq!(b.split(at, o), Err(expected));
        assert_eq!(snapshot(&b), before, "free({at}, {o}) changed the buddy");
        b.check().unwrap();
    }
}

#[test]
fn order_above_the_maximum_is_an_error() {
    let mut b = released(64, 3);
    let before = snapshot(&b);
    assert_eq!(
        b.alloc(order(4)),
        Err(Error::OrderTooLarge { order: 4, max: 3 })
    );
    assert_eq!(snapshot(&b), before);
    assert_eq!(b.nr_free(order(4)), 0);
}

#[test]
fn exhausted_buddy_reports_no_memory() {
    let mut b = released(4, 2);
    assert_eq!(b.alloc(order(2)), Ok(pfn(0)));
    assert_eq!(b.alloc(order(0)), Err(Error::NoMemory { order: order(0) }));
    assert_eq!(b.free_pages(), 0);
    assert_eq!(b.managed_pages(), 4);
}

#[test]
fn alloc_range_then_free_range_round_trips() {
    let mut b = released(64, 4);
    let maximal = free_heads(&b);
    b.alloc_range(pfn(3), pfn(29)).unwrap();
    b.check().unwrap();
    // Canonical blocks: 3/0, 4/2, 8/3, 16/3, 24/2, 28/0.
    let heads: Vec<_> = (0..64)
        .filter_map(|n| b.allocated_order(pfn(n)).map(|o| (n, o.as_u32())))
        .collect();
    assert_eq!(heads, [(3, 0), (4, 2), (8, 3), (16, 3), (24, 2), (28, 0)]);
    assert_eq!(b.free_pages(), 64 - 26);
    assert!(!b.is_free(pfn(3)) && b.is_free(pfn(2)) && b.is_free(pfn(29)));
    b.free_range(pfn(3), pfn(29)).unwrap();
    assert_eq!(free_heads(&b), maximal);
    b.check().unwrap();
}

#[test]
fn alloc_range_over_a_busy_frame_is_refused_unchanged() {
    let mut b = released(32, 4);
    let taken = b.alloc(order(0)).unwrap();
    let start = pfn(taken.as_usize() & !7);
    let before = snapshot(&b);
    assert_eq!(
        b.alloc_range(start, start.add(8)),
        Err(Error::Busy { pfn: taken })
    );
    assert_eq!(
        b.alloc_range(pfn(8), pfn(40)),
        Err(Error::PfnOutOfRange { pfn: pfn(40) })
    );
    assert_eq!(
        b.alloc_range(pfn(9), pfn(8)),
        Err(Error::PfnOutOfRange { pfn: pfn(8) })
    );
    assert_eq!(snapshot(&b), before);
}

#[test]
fn free_range_validates_everything_before_freeing_anything() {
    let mut b = released(32, 4);
    b.alloc_range(pfn(0), pfn(8)).unwrap();
    let before = snapshot(&b);
    // [0, 8) is allocated, [8, 12) free: refused at 8, and 0..8 still held.
    assert_eq!(
        b.free_range(pfn(0), pfn(12)),
        Err(Error::DoubleFree { pfn: pfn(8) })
    );
    // A range cutting the order-3 block at 0 short.
    assert_eq!(
        b.free_range(pfn(0), pfn(4)),
        Err(Error::WrongOrder {
            pfn: pfn(0),
            allocated: order(3),
            freed: order(2)
        })
    );
    assert_eq!(
        b.free_range(pfn(2), pfn(4)),
        Err(Error::NotAllocated { pfn: pfn(2) })
    );
    assert_eq!(snapshot(&b), before);
}

#[test]
fn split_then_freeing_each_page_merges_back() {
    let mut b = released(16, 4);
    let block = b.alloc(order(3)).unwrap();
    b.split(block, order(3)).unwrap();
    assert_eq!(b.allocated_order(block.add(5)), Some(order(0)));
    assert_eq!(
        b.free(block, order(3)),
        Err(Error::WrongOrder {
            pfn: block,
            allocated: order(0),
            freed: order(3)
        })
    );
    for page in (0..8).rev() {
        b.free(block.add(page), order(0)).unwrap();
        b.check().unwrap();
    }
    assert_eq!(free_counts(&b, 4), [0, 0, 0, 0, 1]);
}

#[test]
fn release_of_an_unaligned_range_makes_smaller_blocks_at_its_edges() {
    let mut b = buddy(0, 64, 4);
    assert_eq!(b.release_range(pfn(5), pfn(37)), Ok(32));
    assert_eq!(
        free_heads(&b),
        [(5, 0), (6, 1), (8, 3), (16, 4), (32, 2), (36, 0)]
    );
    assert_eq!(b.managed_pages(), 32);
    b.check().unwrap();
}

#[test]
fn release_merges_with_blocks_released_before() {
    let mut b = buddy(0, 16, 4);
    b.release_range(pfn(8), pfn(16)).unwrap();
    b.release_range(pfn(0), pfn(8)).unwrap();
    assert_eq!(free_heads(&b), [(0, 4)]);
}

#[test]
fn releasing_a_frame_twice_is_refused_unchanged() {
    let mut b = buddy(0, 16, 4);
    b.release_range(pfn(4), pfn(8)).unwrap();
    let before = snapshot(&b);
    assert_eq!(
        b.release_range(pfn(0), pfn(6)),
        Err(Error::DoubleFree { pfn: pfn(4) })
    );
    assert_eq!(
        b.release_range(pfn(0), pfn(17)),
        Err(Error::PfnOutOfRange { pfn: pfn(17) })
    );
    assert_eq!(snapshot(&b), before);
}

#[test]
fn after_freeing_everything_the_lists_hold_the_maximal_blocks_again() {
    let mut b = buddy(3, 100, 5);
    b.release_range(pfn(3), pfn(103)).unwrap();
    let maximal = free_heads(&b);
    let mut live = Vec::new();
    for o in [0, 3, 1, 0, 2, 5, 0, 1, 4] {
        if let Ok(p) = b.alloc(order(o)) {
            live.push((p, o));
        }
    }
    for (p, o) in live.into_iter().rev() {
        b.free(p, order(o)).unwrap();
    }
    assert_eq!(free_heads(&b), maximal);
    assert_eq!(
        maximal,
        [
            (3, 0),
            (4, 2),
            (8, 3),
            (16, 4),
            (32, 5),
            (64, 5),
            (96, 2),
            (100, 1),
            (102, 0)
        ]
    );
}

#[test]
fn is_free_sees_frames_inside_free_blocks() {
    let mut b = buddy(0, 16, 4);
    b.release_range(pfn(0), pfn(8)).unwrap();
    assert!(b.is_free(pfn(7)));
    assert!(!b.is_free(pfn(8)), "reserved");
    assert!(!b.is_free(pfn(99)), "outside");
    let block = b.alloc(order(2)).unwrap();
    assert!(!b.is_free(block.add(3)));
    assert_eq!(b.allocated_order(block.add(1)), None);
}

#[test]
fn new_refuses_empty_or_undescribable_ranges() {
    let mut small = [BuddyFrame::EMPTY; 8];
    assert!(Buddy::new(&mut small, pfn(16), 0, order(3)).is_err());
    assert_eq!(
        Buddy::new(&mut small, pfn(16), 9, order(3)).err(),
        Some(Error::PfnOutOfRange { pfn: pfn(24) })
    );
    assert!(Buddy::new(&mut small, pfn(usize::MAX - 4), 8, order(3)).is_err());
    assert!(Buddy::new(&mut small, pfn(16), 8, order(3)).is_ok());
}

#[test]
fn new_resets_every_frame_to_reserved() {
    let mut frames = [BuddyFrame::EMPTY; 4];
    frames.set_tag(2, FrameTag::Tail);
    let b = Buddy::new(&mut frames, pfn(0), 4, order(2)).unwrap();
    assert_eq!(b.meta().tag(2), FrameTag::Reserved);
    b.check().unwrap();
}

#[test]
fn check_names_a_corrupted_tag() {
    let mut b = released(16, 4);
    let block = b.alloc(order(2)).unwrap();
    b.meta_mut()
        .set_tag(block.as_usize() + 1, FrameTag::Reserved);
    assert!(matches!(b.check(), Err(Invariant::BadTail { pfn, .. }) if pfn == block.add(1)));
}

#[test]
fn check_names_an_unmerged_buddy_pair() {
    let mut b = released(4, 2);
    let (p0, p1) = (b.alloc(order(1)).unwrap(), b.alloc(order(1)).unwrap());
    b.free(p0, order(1)).unwrap();
    // Mark the other half free behind the lists' back: tag and counts disagree.
    b.meta_mut()
        .set_tag(p1.as_usize(), FrameTag::Free(order(1)));
    let broken = b.check().unwrap_err();
    assert!(matches!(
        broken,
        Invariant::Unmerged { .. } | Invariant::CountMismatch { .. }
    ));
    assert!(!broken.to_string().is_empty());
}

#[test]
fn debug_shows_the_range_and_per_order_counts() {
    let b = released(16, 2);
    let shown = format!("{b:?}");
    assert!(shown.contains("nr_free: [0, 0, 4]"), "{shown}");
    assert!(shown.contains("free_pages: 16"), "{shown}");
}
