//! placeholder until the zones land
#![no_std]
