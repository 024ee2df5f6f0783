//! placeholder until the slab layer lands
#![no_std]
