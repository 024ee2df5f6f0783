//! Loom model of the hosted CPU slots (`kmm::cpu::HostCpus`): `get_cpu`
//! must hand each CPU id to one caller at a time, whatever the
//! interleaving, and a released CPU must be taken again.
//!
//! `RUSTFLAGS="--cfg loom" cargo test -p kmm --features std --test loom --release`
#![cfg(loom)]

use kmm::cpu::HostCpus;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;

/// Each thread pins a CPU, checks it is the only holder, and releases it.
fn contend(nr_cpus: usize, threads: usize) {
    loom::model(move || {
        let cpus = Arc::new(HostCpus::new(nr_cpus));
        let holders: Arc<Vec<AtomicUsize>> =
            Arc::new((0..nr_cpus).map(|_| AtomicUsize::new(0)).collect());
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (cpus, holders) = (cpus.clone(), holders.clone());
                loom::thread::spawn(move || {
                    let cpu = cpus.get_cpu();
                    assert!(cpu < nr_cpus);
                    assert_eq!(
                        holders[cpu].fetch_add(1, Ordering::Relaxed),
                        0,
                        "cpu {cpu} shared"
                    );
                    holders[cpu].fetch_sub(1, Ordering::Relaxed);
                    cpus.put_cpu(cpu);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
}

#[test]
fn one_cpu_is_never_held_by_two_threads() {
    contend(1, 2);
}

#[test]
fn two_threads_on_two_cpus_each_hold_a_distinct_cpu() {
    contend(2, 2);
}
