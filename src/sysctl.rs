//! The `/proc/sys/vm` tunables on the [`MemoryManager`]: `min_free_kbytes`,
//! `watermark_scale_factor` and `lowmem_reserve_ratio`, read and written on
//! a booted machine. Each write recomputes the zones' watermarks or lowmem
//! reserves with the formulas boot uses (see `kmm-zones`' `sysctl`).
//!
//! Owns no state; a refused value is an error and changes nothing.

use crate::x86::Mmu;
use crate::{Error, MemoryManager};
use kmm_api::{DirectMap, PreemptControl};
use kmm_zones::MAX_NR_ZONES;

/// The tunables by their `/proc/sys/vm` names.
///
/// ```
/// # #[cfg(all(feature = "std", target_pointer_width = "64"))] {
/// # let mm = kmm::MemoryManager::hosted(64 << 20, 1)?;
/// let low_before: usize = mm.zones().zone_report().zones().iter().map(|z| z.watermarks.low).sum();
/// mm.set_min_free_kbytes(4 * mm.min_free_kbytes())?;
/// let low_after: usize = mm.zones().zone_report().zones().iter().map(|z| z.watermarks.low).sum();
/// assert!(low_after > low_before, "higher marks");
/// assert!(mm.set_watermark_scale_factor(0).is_err(), "Linux takes 1..=3000");
/// # }
/// # Ok::<(), kmm::Error>(())
/// ```
impl<P: PreemptControl + 'static, D: DirectMap + 'static, M: Mmu + 'static> MemoryManager<P, D, M> {
    /// `vm.min_free_kbytes`: the reserve the `min` watermarks add up to.
    pub fn min_free_kbytes(&self) -> usize {
        self.zones().min_free_kbytes()
    }

    /// Writes `vm.min_free_kbytes` and recomputes every zone's watermarks
    /// (and per-CPU `high`); remembered as the user's choice, which a later
    /// recompute from the memory size only raises.
    pub fn set_min_free_kbytes(&self, kbytes: usize) -> Result<(), Error> {
        Ok(self.zones().set_min_free_kbytes(kbytes)?)
    }

    /// `vm.watermark_scale_factor`: the distance between the marks, in
    /// ten-thousandths of a zone.
    pub fn watermark_scale_factor(&self) -> usize {
        self.zones().watermark_scale_factor()
    }

    /// Writes `vm.watermark_scale_factor` (1 to 3000) and recomputes the
    /// low and high marks.
    pub fn set_watermark_scale_factor(&self, factor: usize) -> Result<(), Error> {
        Ok(self.zones().set_watermark_scale_factor(factor)?)
    }

    /// `vm.lowmem_reserve_ratio`, by zone index.
    pub fn lowmem_reserve_ratio(&self) -> [usize; MAX_NR_ZONES] {
        self.zones().lowmem_reserve_ratio()
    }

    /// Writes `vm.lowmem_reserve_ratio` and recomputes every zone's lowmem
    /// reserves (0 in a slot: no reserve against that zone).
    pub fn set_lowmem_reserve_ratio(&self, ratio: &[usize; MAX_NR_ZONES]) -> Result<(), Error> {
        Ok(self.zones().set_lowmem_reserve_ratio(ratio)?)
    }
}
