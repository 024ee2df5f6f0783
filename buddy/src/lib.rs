//! placeholder until the buddy lands
#![no_std]
