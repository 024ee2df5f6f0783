//! loom models (see below).
#![cfg(loom)]
