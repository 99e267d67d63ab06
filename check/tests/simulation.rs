//! The cluster protocol against a simulated API server: seeded schedules interleave node
//! agents, kubelets and the garbage collector, with injected conflicts, failures and crashes
//! (`spiderpool_check::sim`). `SPIDERPOOL_SIM_SCHEDULES` sets how many schedules run (10,000
//! by default); `SPIDERPOOL_SIM_SEED` replays one.

use spiderpool_check::sim::{Tally, run};

#[test]
fn simulation_of_agents_and_a_collector_keeps_every_invariant() {
    if let Some(seed) = std::env::var("SPIDERPOOL_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        if let Err(violation) = run(seed) {
            panic!("{violation}");
        }
        return;
    }
    let schedules: u64 = std::env::var("SPIDERPOOL_SIM_SCHEDULES")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(10_000);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    // The first violation stops every worker.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let tallies = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|worker| {
                let stop = &stop;
                scope.spawn(move || {
                    let mut tally = Tally::default();
                    for seed in (worker..schedules).step_by(threads as usize) {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        match run(seed) {
                            Ok(one) => tally += one,
                            Err(violation) => {
                                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                                return Err(violation);
                            }
                        }
                    }
                    Ok(tally)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("a worker does not panic"))
            .collect::<Vec<_>>()
    });
    let mut total = Tally::default();
    for tally in tallies {
        match tally {
            Ok(tally) => total += tally,
            Err(violation) => panic!("{violation}"),
        }
    }
    eprintln!("{schedules} schedules: {total:?}");
    // The schedules must exercise what they check.
    assert!(
        total.added > 0 && total.failed > 0 && total.deleted > 0,
        "{total:?}"
    );
    if schedules >= 1_000 {
        assert!(
            total.crashes > 0 && total.kept > 0 && total.collected > 0 && total.conflicts > 0,
            "{total:?}"
        );
    }
}
