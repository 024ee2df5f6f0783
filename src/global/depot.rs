//! The magazine depot of [`super::HostedGlobal`] (Bonwick's depot layer):
//! for each magazine class, a process-wide, bounded stack of full batches
//! that the threads' magazines trade. A magazine that fills gives its
//! oldest batch to the depot, and one that empties takes a batch back, so
//! objects freed on one thread serve another thread's allocations without
//! passing through kmalloc: no owner look-up, no state byte and no slab
//! list per object, one short lock hold per batch.
//!
//! Process-wide like the magazines themselves (a thread has one set
//! whichever `HostedGlobal` fills it), and kept out of `HostedGlobal` so
//! that the allocator's static holds no interior mutability: the compiler
//! then resolves its manager function at build time instead of calling it
//! through a pointer on every request.
//!
//! Owns the batches it holds and their share of the process totals. Must
//! never hand one batch out twice, never hold more than [`DEPOT_BATCHES`]
//! batches of a class, and never mix managers: a class's batches all
//! belong to the manager whose batch entered it first, until it empties.
//! Never calls kmalloc or the global allocator while it holds a lock.

use super::hosted_global::HostedKmem;
use super::thread_cache::{publish_held, BATCH, CLASS_SIZE};
use core::ptr;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Full batches the depot keeps per class: enough to stream a producer's
/// and a consumer's magazines past each other; at most 128 objects of
/// each class, 723 KiB in all.
pub(super) const DEPOT_BATCHES: usize = 8;

/// One class's stack of full batches.
struct ClassDepot {
    /// The manager the batches belong to: null while empty.
    owner: *const HostedKmem,
    /// Batches held, `batches[..full]`.
    full: usize,
    batches: [[*mut u8; BATCH]; DEPOT_BATCHES],
}

// SAFETY: the pointers are blocks of `owner` that no thread holds (each
// left a magazine, whose objects nobody else holds), and `owner` is only
// compared, never followed; the mutex hands them to one thread at a time.
unsafe impl Send for ClassDepot {}

/// The process's depot.
pub(super) static DEPOT: Depot = Depot::new();

/// A depot: one stack of full batches per magazine class.
pub(super) struct Depot {
    classes: [Mutex<ClassDepot>; CLASS_SIZE.len()],
}

impl Depot {
    /// An empty depot.
    pub(super) const fn new() -> Self {
        Depot {
            classes: [const {
                Mutex::new(ClassDepot {
                    owner: ptr::null(),
                    full: 0,
                    batches: [[ptr::null_mut(); BATCH]; DEPOT_BATCHES],
                })
            }; CLASS_SIZE.len()],
        }
    }

    /// The stack of `class`. A poisoned lock is taken anyway: no code that
    /// can panic runs while it is held, and its state is consistent
    /// between statements.
    fn class(&self, class: usize) -> MutexGuard<'_, ClassDepot> {
        self.classes[class]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `batch`, blocks of `kmem` of `class` that the caller holds
    /// and gives up, if the depot has room for it and holds no other
    /// manager's batches of the class; whether it did.
    pub(super) fn put(&self, kmem: &HostedKmem, class: usize, batch: &[*mut u8; BATCH]) -> bool {
        {
            let mut depot = self.class(class);
            let mine = ptr::eq(depot.owner, kmem) || depot.owner.is_null();
            if !mine || depot.full == DEPOT_BATCHES {
                return false;
            }
            depot.owner = kmem;
            let at = depot.full;
            depot.batches[at] = *batch;
            depot.full += 1;
        }
        publish_held(BATCH as isize, class);
        true
    }

    /// A full batch of `kmem`'s blocks of `class` for the caller to hold,
    /// if the depot has one.
    pub(super) fn take(&self, kmem: &HostedKmem, class: usize) -> Option<[*mut u8; BATCH]> {
        let batch = {
            let mut depot = self.class(class);
            if depot.full == 0 || !ptr::eq(depot.owner, kmem) {
                return None;
            }
            depot.full -= 1;
            let batch = depot.batches[depot.full];
            if depot.full == 0 {
                depot.owner = ptr::null();
            }
            batch
        };
        publish_held(-(BATCH as isize), class);
        Some(batch)
    }

    /// Hands every batch of `kmem` to `give_back`, with no lock held while
    /// it runs; the number of objects handed.
    pub(super) fn drain(&self, kmem: &HostedKmem, mut give_back: impl FnMut(&[*mut u8])) -> usize {
        let mut drained = 0;
        for class in 0..CLASS_SIZE.len() {
            while let Some(batch) = self.take(kmem, class) {
                give_back(&batch);
                drained += BATCH;
            }
        }
        drained
    }
}
