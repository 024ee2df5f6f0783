//! Declares the measurement-only `kmm_no_free_checks` cfg (see `cache.rs`).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(kmm_no_free_checks)");
}
