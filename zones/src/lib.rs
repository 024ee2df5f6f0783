//! kmm-zones (being built): zone policy over kmm-buddy.
#![no_std]

pub mod boot;
pub mod memblock;
pub mod report;
pub mod watermark;
mod zone_type;

pub use zone_type::{ZoneType, MAX_NR_ZONES};
