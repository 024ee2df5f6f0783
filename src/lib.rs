//! placeholder until the composition crate lands
#![no_std]
