//! Loom model of the hosted CPU slots (`kmm::cpu::HostCpus`): whatever the
//! interleaving, a CPU is never pinned by two contexts at once — racing
//! first claims hand each owned CPU to one live thread, threads beyond the
//! owned CPUs take turns on the overflow CPU (nested pins included), work
//! run through `on_cpu` never overlaps a section pinned to the same CPU,
//! a thread's exit frees its CPU for `on_cpu` and later claims, so does a
//! live thread's release (a racing claim gets the CPU only once it is
//! released, and the releaser claims afresh), and a thread keeps its CPU in
//! two machines at once. Also the hosted wait queues
//! (`kmm::park::WaitQueues`): a waiter that read the word before a waker
//! changed it and woke is never left asleep (loom reports a thread asleep
//! forever as a deadlock).
//!
//! Every holder check goes through a loom atomic, and each model asserts a
//! floor on the interleavings it explored.
//!
//! `RUSTFLAGS="--cfg loom" cargo test -p kmm --features std --test loom --release`
#![cfg(loom)]

use kmm::cpu::HostCpus;
use kmm::park::WaitQueues;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;

/// Runs `f` under loom with at most `preemptions` preemptions and asserts
/// it explored at least `floor` interleavings (loom's search is
/// deterministic: each floor sits a little under today's count).
fn explore(preemptions: usize, floor: usize, f: impl Fn() + Sync + Send + 'static) {
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = runs.clone();
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(preemptions);
    model.check(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f();
    });
    let explored = runs.load(std::sync::atomic::Ordering::Relaxed);
    println!("loom explored {explored} interleavings");
    assert!(
        explored >= floor,
        "only {explored} interleavings (floor {floor})"
    );
}

/// Runs work as `cpu` once the platform can reach it: a joined thread's
/// storage (which frees its CPU) is torn down a moment after `join`
/// returns in loom, so the caller yields until then.
fn on_cpu_eventually(cpus: &HostCpus, cpu: usize, work: &mut dyn FnMut()) {
    while !cpus.on_cpu(cpu, work) {
        loom::thread::yield_now();
    }
}

/// One counter per CPU id: how many contexts hold it right now.
fn holders(cpus: &HostCpus) -> Arc<Vec<AtomicUsize>> {
    Arc::new((0..cpus.nr_cpus()).map(|_| AtomicUsize::new(0)).collect())
}

/// Marks `cpu` held for the duration of `f`, asserting nobody else holds it.
fn hold(holders: &[AtomicUsize], cpu: usize, f: impl FnOnce()) {
    let before = holders[cpu].fetch_add(1, Ordering::Relaxed);
    assert_eq!(before, 0, "cpu {cpu} held by two contexts at once");
    f();
    holders[cpu].fetch_sub(1, Ordering::Relaxed);
}

/// Every thread pins a CPU (thread 0 nests a second pin) and checks it is
/// the only holder; the main thread meanwhile runs work as every CPU.
fn contend(nr_owned: usize, threads: usize, floor: usize) {
    explore(3, floor, move || {
        let cpus = Arc::new(HostCpus::new(nr_owned));
        let held = holders(&cpus);
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (cpus, held) = (cpus.clone(), held.clone());
                loom::thread::spawn(move || {
                    let cpu = cpus.get_cpu();
                    assert!(cpu < cpus.nr_cpus());
                    hold(&held, cpu, || {
                        if t == 0 {
                            assert_eq!(cpus.get_cpu(), cpu, "a nested pin keeps the CPU");
                            cpus.put_cpu(cpu);
                        }
                    });
                    cpus.put_cpu(cpu);
                    cpu
                })
            })
            .collect();
        for t in handles {
            t.join().unwrap();
        }
        // Every thread has exited: every CPU is free again, and work run
        // as each of them holds it alone.
        for cpu in 0..cpus.nr_cpus() {
            on_cpu_eventually(&cpus, cpu, &mut || hold(&held, cpu, || {}));
        }
    });
}

#[test]
fn racing_first_claims_never_share_a_cpu() {
    contend(2, 2, 200);
}

#[test]
fn threads_beyond_the_owned_cpus_take_turns_on_the_overflow_cpu() {
    contend(1, 3, 13_000);
}

/// Two preemptions: the main thread waits on a state word another thread
/// releases, and loom lets each failed compare-and-swap read a stale
/// value, so beyond two preemptions the search never ends.
#[test]
fn work_on_a_cpu_never_overlaps_a_section_pinned_to_it() {
    explore(2, 400, || {
        let cpus = Arc::new(HostCpus::new(1));
        let held = holders(&cpus);
        // The owner of CPU 0 pins it twice and exits; another thread pins
        // the overflow CPU; the main thread runs work as both.
        let spawn = |cpus: Arc<HostCpus>, held: Arc<Vec<AtomicUsize>>| {
            loom::thread::spawn(move || {
                for _ in 0..2 {
                    let cpu = cpus.get_cpu();
                    hold(&held, cpu, || {});
                    cpus.put_cpu(cpu);
                }
                cpus.cpu_id()
            })
        };
        let first = spawn(cpus.clone(), held.clone());
        let second = spawn(cpus.clone(), held.clone());
        let overflow = cpus.overflow_cpu();
        let mut ran = [false; 2];
        for (cpu, ran) in [0, overflow].into_iter().zip(&mut ran) {
            // `false` only for a CPU a live thread owns.
            *ran = cpus.on_cpu(cpu, &mut || hold(&held, cpu, || {}));
        }
        let got = [first.join().unwrap(), second.join().unwrap()];
        assert!(ran[1], "the overflow CPU is always reachable");
        if !ran[0] {
            assert!(got.contains(&0), "refused only while an owner lived");
        }
    });
}

#[test]
fn a_thread_keeps_its_own_cpu_in_two_machines() {
    explore(3, 12, || {
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
        assert_eq!(a.get_cpu(), mine.0, "still this thread's CPU");
        a.put_cpu(mine.0);
        let theirs = other.join().unwrap();
        assert!(theirs.0 < a.nr_cpus() && theirs.1 < b.nr_cpus());
    });
}

#[test]
fn a_wake_after_the_waiter_read_the_word_is_never_lost() {
    explore(3, 18, || {
        let queues = Arc::new(WaitQueues::new());
        let word = Arc::new(kmm::api::sync::AtomicU32::new(0));
        // The waiter read 0 (under the lock of its condition, in kmap);
        // the waker may change the word and wake at any point from here.
        let seen = word.load(Ordering::SeqCst);
        let (q, w) = (queues.clone(), word.clone());
        let waker = loom::thread::spawn(move || {
            w.store(1, Ordering::SeqCst);
            q.wake_on(&w);
        });
        queues.wait_on(&word, seen);
        assert_eq!(
            word.load(Ordering::SeqCst),
            1,
            "returned with the word unchanged"
        );
        waker.join().unwrap();
    });
}

/// The hosted preset's booting thread pins its CPU, then releases it,
/// while a worker makes its first claim: whichever way they interleave,
/// each CPU has one holder at a time (the worker gets the booting thread's
/// CPU only once it is released), and the booting thread's next request
/// claims a CPU afresh.
#[test]
fn a_released_cpu_is_never_held_by_two_threads() {
    explore(3, 15, || {
        let cpus = Arc::new(HostCpus::new(1));
        let held = holders(&cpus);
        let pin = |cpus: &HostCpus, held: &[AtomicUsize]| {
            let cpu = cpus.get_cpu();
            hold(held, cpu, || {});
            cpus.put_cpu(cpu);
            cpu
        };
        let worker = {
            let (cpus, held) = (cpus.clone(), held.clone());
            loom::thread::spawn(move || pin(&cpus, &held))
        };
        let booted = pin(&cpus, &held);
        // SAFETY: nothing is pinned on this thread.
        unsafe { cpus.release() };
        let again = pin(&cpus, &held);
        let theirs = worker.join().unwrap();
        assert!([booted, again, theirs]
            .iter()
            .all(|&cpu| cpu < cpus.nr_cpus()));
    });
}
