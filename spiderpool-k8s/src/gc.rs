//! The garbage collector: every sweep is a round of the core ([`Call::Sweep`]) over every
//! pool, pod, node, endpoint and StatefulSet; the core's [`spiderpool_core::gc::sweep`]
//! decides which addresses no live pod needs, and the store writes the releases with
//! compare-and-swap and deletes the endpoints of pods that are gone.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spiderpool_core::gc::{Collected, GcPolicy, Seconds};
use spiderpool_core::round::{Call, Outcome};
use spiderpool_core::{Change, PodRef};

use crate::cluster::{ClusterError, ClusterStore};

/// What one sweep did.
#[derive(Debug, Clone, Default)]
pub struct SweepReport {
    /// The addresses released, with why.
    pub released: Vec<Collected>,
    /// The endpoints deleted.
    pub endpoints_deleted: Vec<PodRef>,
    /// The blocks given back.
    pub blocks_given_back: Vec<String>,
    /// Addresses seen uncommitted, waiting for the grace period.
    pub suspects: usize,
    /// Conflicts met writing.
    pub conflicts: u32,
}

/// The collector, with what it remembers between sweeps: when it first saw each
/// uncommitted address.
pub struct Collector {
    store: ClusterStore,
    policy: GcPolicy,
    suspects: BTreeMap<(String, IpAddr), Seconds>,
    empty_blocks: BTreeMap<String, Seconds>,
}

impl Collector {
    /// A collector writing through `store`.
    pub fn new(store: ClusterStore, policy: GcPolicy) -> Collector {
        Collector {
            store,
            policy,
            suspects: BTreeMap::new(),
            empty_blocks: BTreeMap::new(),
        }
    }

    /// One sweep at time `now` (seconds since the epoch).
    pub async fn sweep_once(&mut self, now: Seconds) -> Result<SweepReport, ClusterError> {
        let call = Call::Sweep {
            now,
            policy: self.policy,
            suspects: self.suspects.clone(),
            empty_blocks: self.empty_blocks.clone(),
        };
        let mut answered = None;
        let cost = self
            .store
            .serve(vec![call], |_, result| answered = Some(result))
            .await;
        let Outcome::Swept(sweep) = answered.expect("a batch answers every call")? else {
            unreachable!("a sweep is answered with a sweep")
        };
        self.suspects = sweep.suspects;
        self.empty_blocks = sweep.empty_blocks;
        Ok(SweepReport {
            released: sweep.collected,
            blocks_given_back: sweep.released_blocks,
            endpoints_deleted: sweep.orphaned_endpoints,
            suspects: self.suspects.len(),
            conflicts: cost.conflicts,
        })
    }
}

/// Sweeps every `interval` until the process ends; a failed sweep is reported and retried at
/// the next interval.
pub async fn run_collector(store: ClusterStore, policy: GcPolicy, interval: Duration) {
    let mut collector = Collector::new(store, policy);
    loop {
        match collector.sweep_once(unix_now()).await {
            Ok(report) => {
                for collected in &report.released {
                    if let Change::Release {
                        pool,
                        address,
                        holder,
                    } = &collected.change
                    {
                        eprintln!(
                            "gc: released {address} of {holder} in {pool}: {}",
                            collected.reason
                        );
                    }
                }
                for pod in &report.endpoints_deleted {
                    eprintln!("gc: deleted the SpiderEndpoint of {pod}: the pod is gone");
                }
                for block in &report.blocks_given_back {
                    eprintln!(
                        "gc: gave back block {block}: it held nothing for its grace period, or its node or pool is gone"
                    );
                }
            }
            Err(error) => eprintln!("gc: sweep failed, retrying in {interval:?}: {error}"),
        }
        tokio::time::sleep(interval).await;
    }
}

/// The controller's clock.
pub fn unix_now() -> Seconds {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as Seconds)
}

/// Keeps the pools' `allocatedIPCount` what their blocks hold, every `interval` (a second in
/// the controller), until the process ends: one writer per pool, at most one write per
/// interval, instead of every allocation writing its pool.
pub async fn run_counter(store: ClusterStore, interval: Duration) {
    loop {
        if let Err(error) = store.write_counts().await {
            eprintln!(
                "counts: writing the pools' allocatedIPCount failed, retrying in {interval:?}: {error}"
            );
        }
        tokio::time::sleep(interval).await;
    }
}
