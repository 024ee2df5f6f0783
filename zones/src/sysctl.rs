//! The `/proc/sys/vm` tunables of the page allocator on booted zones:
//! `min_free_kbytes`, `watermark_scale_factor` and `lowmem_reserve_ratio`,
//! read and written through `&self` as Linux's sysctl handlers do.
//!
//! A write validates the value (an invalid one is an error and changes
//! nothing), stores it and recomputes what depends on it with the very
//! functions boot uses ([`crate::watermark`]): `min_free_kbytes` and
//! `watermark_scale_factor` rerun `setup_per_zone_wmarks` (every zone's
//! marks, then each zone's per-CPU `high`, which follows the low mark);
//! `lowmem_reserve_ratio` reruns `setup_per_zone_lowmem_reserve`.
//! `totalreserve_pages` is derived from the marks and reserves when read,
//! so it follows both without a recompute of its own.
//!
//! Writing `min_free_kbytes` also records it as the user's choice (Linux's
//! `user_min_free_kbytes`): a later recompute from the memory size
//! ([`Zones::init_per_zone_wmark_min`], boot's own call, which Linux reruns
//! on memory hotplug) only replaces it with a larger figure.
//!
//! # Locks
//!
//! The tuning lock (a spin lock in [`Zones`]) serialises writers and is
//! held for a whole recompute; inside it each zone's new values are stored
//! under that zone's lock (interrupts saved). It is never taken by an
//! allocation or a free, nor while a zone lock is held or a CPU pinned.
//! Readers of the marks take no lock (what a racing reader may see is in
//! `zone.rs`).
//!
//! Cost: a write is O(`MAX_NR_ZONES`^2) plus one zone-lock hold per zone.

use crate::watermark::{
    min_free_kbytes_unclamped, setup_per_zone_lowmem_reserve_with, setup_per_zone_wmarks_with,
    WatermarkLevel, LOWMEM_RESERVE_RATIO, MIN_FREE_KBYTES_RANGE, WATERMARK_SCALE_FACTOR,
};
use crate::{Zones, MAX_NR_ZONES};
use core::fmt;
use kmm_api::sync::SpinLockGuard;
use kmm_api::{DirectMap, PreemptControl};

/// The values Linux's handlers accept: its sysctls are C `int`s.
const INT_MAX: usize = i32::MAX as usize;

/// `watermark_scale_factor` bounds (Linux's sysctl table: 1 to 3000, i.e.
/// 0.01 % to 30 % of a zone between two marks).
pub const WATERMARK_SCALE_FACTOR_RANGE: (usize, usize) = (1, 3000);

/// A tunable written with a value Linux's handler refuses (`-EINVAL`).
#[non_exhaustive]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SysctlError {
    /// `value` is outside `min..=max` for the tunable `name`.
    OutOfRange {
        /// The `/proc/sys/vm` name of the tunable.
        name: &'static str,
        /// The value refused.
        value: usize,
        /// The smallest value accepted.
        min: usize,
        /// The largest value accepted.
        max: usize,
    },
}

impl fmt::Display for SysctlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SysctlError::OutOfRange {
                name,
                value,
                min,
                max,
            } => write!(
                f,
                "vm.{name} = {value} refused: outside {min}..={max} (EINVAL), nothing changed"
            ),
        }
    }
}

impl core::error::Error for SysctlError {}

/// The tunables' current values.
pub(crate) struct Tunables {
    min_free_kbytes: usize,
    /// The last value written by the user, if any (Linux's
    /// `user_min_free_kbytes`, -1 when never written).
    user_min_free_kbytes: Option<usize>,
    watermark_scale_factor: usize,
    lowmem_reserve_ratio: [usize; MAX_NR_ZONES],
}

impl Tunables {
    /// Before boot's first recompute: Linux's defaults, with
    /// `min_free_kbytes` still to be computed from the memory size.
    pub(crate) const BOOT: Tunables = Tunables {
        min_free_kbytes: 0,
        user_min_free_kbytes: None,
        watermark_scale_factor: WATERMARK_SCALE_FACTOR,
        lowmem_reserve_ratio: LOWMEM_RESERVE_RATIO,
    };
}

fn check(name: &'static str, value: usize, min: usize, max: usize) -> Result<(), SysctlError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(SysctlError::OutOfRange {
            name,
            value,
            min,
            max,
        })
    }
}

impl<P: PreemptControl, D: DirectMap> Zones<'_, P, D> {
    /// `vm.min_free_kbytes`: the KiB the lowmem zones share as their `min`
    /// marks.
    pub fn min_free_kbytes(&self) -> usize {
        self.tuning.lock().min_free_kbytes
    }

    /// The last `vm.min_free_kbytes` written, if any (Linux's
    /// `user_min_free_kbytes`).
    pub fn user_min_free_kbytes(&self) -> Option<usize> {
        self.tuning.lock().user_min_free_kbytes
    }

    /// Writes `vm.min_free_kbytes` (Linux accepts `0..=INT_MAX`) and
    /// recomputes every zone's watermarks; remembered as the user's value.
    ///
    /// ```
    /// use kmm_zones::testing::TestMachine;
    /// use kmm_zones::watermark::setup_per_zone_wmarks_with;
    /// use kmm_zones::ZoneType;
    ///
    /// let mut machine = TestMachine::i386_scaled(4096);
    /// let zones = machine.boot()?;
    /// zones.set_min_free_kbytes(1024).unwrap();
    /// let managed = zones.zone_stats().map(|s| s.map_or(0, |s| s.managed));
    /// let want = setup_per_zone_wmarks_with(&managed, 1024, zones.watermark_scale_factor());
    /// let normal = zones.zone_stats()[ZoneType::Normal.index()].unwrap();
    /// assert_eq!(normal.watermarks, want[ZoneType::Normal.index()]);
    /// assert!(zones.set_min_free_kbytes(usize::MAX).is_err());
    /// assert_eq!(zones.min_free_kbytes(), 1024);
    /// # Ok::<(), kmm_api::Error>(())
    /// ```
    pub fn set_min_free_kbytes(&self, kbytes: usize) -> Result<(), SysctlError> {
        check("min_free_kbytes", kbytes, 0, INT_MAX)?;
        let mut tuning = self.tuning.lock();
        tuning.min_free_kbytes = kbytes;
        tuning.user_min_free_kbytes = Some(kbytes);
        self.setup_per_zone_wmarks(&tuning);
        Ok(())
    }

    /// `vm.watermark_scale_factor`: the gap between two marks, in
    /// ten-thousandths of a zone's managed pages.
    pub fn watermark_scale_factor(&self) -> usize {
        self.tuning.lock().watermark_scale_factor
    }

    /// Writes `vm.watermark_scale_factor` (within
    /// [`WATERMARK_SCALE_FACTOR_RANGE`]) and recomputes every zone's
    /// watermarks.
    ///
    /// ```
    /// use kmm_zones::testing::TestMachine;
    /// use kmm_zones::ZoneType;
    ///
    /// let mut machine = TestMachine::i386_scaled(4096);
    /// let zones = machine.boot()?;
    /// let gap = |z: &kmm_zones::testing::TestZones<'_>| {
    ///     let w = z.zone_stats()[ZoneType::Normal.index()].unwrap().watermarks;
    ///     w.high - w.low
    /// };
    /// let before = gap(&zones);
    /// zones.set_watermark_scale_factor(1000).unwrap(); // 10 %
    /// assert!(gap(&zones) > before);
    /// assert!(zones.set_watermark_scale_factor(0).is_err());
    /// assert!(zones.set_watermark_scale_factor(3001).is_err());
    /// # Ok::<(), kmm_api::Error>(())
    /// ```
    pub fn set_watermark_scale_factor(&self, factor: usize) -> Result<(), SysctlError> {
        let (min, max) = WATERMARK_SCALE_FACTOR_RANGE;
        check("watermark_scale_factor", factor, min, max)?;
        let mut tuning = self.tuning.lock();
        tuning.watermark_scale_factor = factor;
        self.setup_per_zone_wmarks(&tuning);
        Ok(())
    }

    /// `vm.lowmem_reserve_ratio`, by zone index (0: no reserve).
    pub fn lowmem_reserve_ratio(&self) -> [usize; MAX_NR_ZONES] {
        self.tuning.lock().lowmem_reserve_ratio
    }

    /// Writes `vm.lowmem_reserve_ratio` (each entry `0..=INT_MAX`; 0 turns
    /// a zone's reserve off, as Linux's handler turns every value below 1
    /// into 0) and recomputes every zone's lowmem reserves. An invalid
    /// entry refuses the whole write.
    ///
    /// ```
    /// use kmm_zones::testing::TestMachine;
    /// use kmm_zones::ZoneType;
    ///
    /// let mut machine = TestMachine::i386_scaled(4096);
    /// let zones = machine.boot()?;
    /// let (dma, high) = (ZoneType::Dma.index(), ZoneType::HighMem.index());
    /// let reserve = |z: &kmm_zones::testing::TestZones<'_>| {
    ///     z.zone_stats()[dma].unwrap().lowmem_reserve[high]
    /// };
    /// assert!(reserve(&zones) > 0);
    /// zones.set_lowmem_reserve_ratio(&[0, 256, 32, 0]).unwrap();
    /// assert_eq!(reserve(&zones), 0);
    /// # Ok::<(), kmm_api::Error>(())
    /// ```
    pub fn set_lowmem_reserve_ratio(
        &self,
        ratio: &[usize; MAX_NR_ZONES],
    ) -> Result<(), SysctlError> {
        for &value in ratio {
            check("lowmem_reserve_ratio", value, 0, INT_MAX)?;
        }
        let mut tuning = self.tuning.lock();
        tuning.lowmem_reserve_ratio = *ratio;
        self.setup_per_zone_lowmem_reserve(&tuning);
        Ok(())
    }

    /// Linux `init_per_zone_wmark_min`: recomputes `min_free_kbytes` from
    /// the memory size and then every mark and reserve. Boot runs it once;
    /// a kernel would rerun it when memory is added or removed.
    ///
    /// The size is Linux's `nr_free_buffer_pages()`: the managed pages of
    /// the lowmem zones above their high marks. At boot the marks are still
    /// zero, so it is all managed lowmem; rerun later, it is a little less,
    /// and the figure a little smaller, exactly as in Linux. A value the
    /// user wrote is kept unless the new figure is larger.
    pub fn init_per_zone_wmark_min(&self) {
        let mut tuning = self.tuning.lock();
        let lowmem = self
            .zones
            .iter()
            .flatten()
            .filter(|zone| !zone.zone_type.is_highmem())
            .map(|zone| {
                let high = zone.marks.get(WatermarkLevel::High);
                zone.managed.saturating_sub(high)
            })
            .fold(0usize, usize::saturating_add);
        let computed = min_free_kbytes_unclamped(lowmem);
        // Linux compares before clamping; a user's value never lost to a
        // smaller figure.
        if !matches!(tuning.user_min_free_kbytes, Some(user) if computed <= user) {
            let (lo, hi) = MIN_FREE_KBYTES_RANGE;
            tuning.min_free_kbytes = computed.clamp(lo, hi);
        }
        self.setup_per_zone_wmarks(&tuning);
        self.setup_per_zone_lowmem_reserve(&tuning);
    }

    /// Linux `totalreserve_pages`: pages the allocator keeps from ordinary
    /// use, over all zones: each zone's largest lowmem reserve plus its
    /// high mark, at most its managed pages. Derived on each call from the
    /// current marks, so it always follows the tunables. O(zones).
    pub fn totalreserve_pages(&self) -> usize {
        self.zones
            .iter()
            .flatten()
            .map(|zone| {
                let reserve = zone.marks.lowmem_reserves().into_iter().max().unwrap_or(0);
                let high = zone.marks.get(WatermarkLevel::High);
                reserve.saturating_add(high).min(zone.managed)
            })
            .fold(0, usize::saturating_add)
    }

    /// Managed pages of every zone, by zone index.
    fn managed_by_zone(&self) -> [usize; MAX_NR_ZONES] {
        core::array::from_fn(|z| self.zones[z].as_ref().map_or(0, |zone| zone.managed))
    }

    /// Linux `setup_per_zone_wmarks` with the tuning lock held: every
    /// zone's marks from the current tunables, and its per-CPU `high`.
    fn setup_per_zone_wmarks(&self, tuning: &SpinLockGuard<'_, Tunables>) {
        let marks = setup_per_zone_wmarks_with(
            &self.managed_by_zone(),
            tuning.min_free_kbytes,
            tuning.watermark_scale_factor,
        );
        for (zone, &marks) in self.zones.iter().zip(&marks) {
            if let Some(zone) = zone {
                zone.set_watermarks(marks, &self.platform);
            }
        }
    }

    /// Linux `setup_per_zone_lowmem_reserve` with the tuning lock held.
    fn setup_per_zone_lowmem_reserve(&self, tuning: &SpinLockGuard<'_, Tunables>) {
        let reserve = setup_per_zone_lowmem_reserve_with(
            &self.managed_by_zone(),
            &tuning.lowmem_reserve_ratio,
        );
        for (zone, reserve) in self.zones.iter().zip(&reserve) {
            if let Some(zone) = zone {
                zone.set_lowmem_reserve(reserve, &self.platform);
            }
        }
    }
}
