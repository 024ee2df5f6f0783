//! Loom model of the hosted CPU slots (`kmm::cpu::HostCpus`): whatever the
//! interleaving, racing first claims hand each owned CPU to one thread
//! only, threads beyond the owned CPUs take turns on the overflow CPU (one
//! holder at a time, nested pins included), and a thread keeps its CPU in
//! two machines at once.
//!
//! `RUSTFLAGS="--cfg loom" cargo test -p kmm --features std --test loom --release`
#![cfg(loom)]

use kmm::cpu::HostCpus;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;

/// Every thread pins a CPU (thread 0 nests a second pin), checks it is the
/// only holder, and releases it; then the CPUs they got are checked.
fn contend(nr_owned: usize, threads: usize) {
    // Three threads spinning on the overflow holder: bound preemptions so
    // the model stays exhaustive for every schedule with up to three.
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(3);
    model.check(move || {
        let cpus = Arc::new(HostCpus::new(nr_owned));
        let holders: Arc<Vec<AtomicUsize>> =
            Arc::new((0..cpus.nr_cpus()).map(|_| AtomicUsize::new(0)).collect());
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (cpus, holders) = (cpus.clone(), holders.clone());
                loom::thread::spawn(move || {
                    let cpu = cpus.get_cpu();
                    assert!(cpu < cpus.nr_cpus());
                    assert_eq!(
                        holders[cpu].fetch_add(1, Ordering::Relaxed),
                        0,
                        "cpu {cpu} shared"
                    );
                    if t == 0 {
                        assert_eq!(cpus.get_cpu(), cpu, "a nested pin keeps the CPU");
                        cpus.put_cpu(cpu);
                    }
                    holders[cpu].fetch_sub(1, Ordering::Relaxed);
                    cpus.put_cpu(cpu);
                    cpu
                })
            })
            .collect();
        let mut got: Vec<usize> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        got.sort_unstable();
        let owned: Vec<usize> = got.iter().copied().filter(|&c| c < nr_owned).collect();
        let mut distinct = owned.clone();
        distinct.dedup();
        assert_eq!(owned, distinct, "an owned CPU went to two threads");
        assert_eq!(owned.len(), threads.min(nr_owned), "owned CPUs go first");
    });
}

#[test]
fn racing_first_claims_own_distinct_cpus() {
    contend(2, 2);
}

#[test]
fn threads_beyond_the_owned_cpus_take_turns_on_the_overflow_cpu() {
    contend(1, 3);
}

#[test]
fn a_thread_keeps_its_own_cpu_in_two_machines() {
    loom::model(|| {
        let (a, b) = (Arc::new(HostCpus::new(1)), Arc::new(HostCpus::new(1)));
        let (a2, b2) = (a.clone(), b.clone());
        let other = loom::thread::spawn(move || {
            let got = (a2.get_cpu(), b2.get_cpu());
            b2.put_cpu(got.1);
            a2.put_cpu(got.0);
            got
        });
        let mine = (a.get_cpu(), b.get_cpu());
        b.put_cpu(mine.1);
        a.put_cpu(mine.0);
        let theirs = other.join().unwrap();
        assert_ne!(mine.0, theirs.0);
        assert_ne!(mine.1, theirs.1);
        assert_eq!(a.get_cpu(), mine.0, "still this thread's CPU");
        a.put_cpu(mine.0);
    });
}
