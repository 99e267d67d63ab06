//! Allocations written in batches: what a node agent does with the ADDs that arrive while a
//! write is in flight, so that allocators on other nodes meet a conflict once per batch rather
//! than once per pod.

use spiderpool_core::Request;
use tokio::sync::{mpsc, oneshot};

use crate::cluster::{Allocation, ClusterError, ClusterStore};

/// The most ADDs written as one batch.
pub const MAX_BATCH: usize = 512;

/// One ADD waiting for the next batch.
struct Job {
    request: Request,
    reply: oneshot::Sender<Result<Allocation, ClusterError>>,
}

/// A handle to a batching allocator; clones share the batches.
#[derive(Clone)]
pub struct Batcher {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Batcher {
    /// Starts the batching task on the current Tokio runtime.
    pub fn spawn(store: ClusterStore) -> Batcher {
        let (jobs, queue) = mpsc::unbounded_channel();
        tokio::spawn(write_batches(store, queue));
        Batcher { jobs }
    }

    /// Allocates for `request` in the next batch.
    pub async fn allocate(&self, request: Request) -> Result<Allocation, ClusterError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { request, reply })
            .map_err(|_| ClusterError::Stopped)?;
        answer.await.map_err(|_| ClusterError::Stopped)?
    }
}

/// Takes every ADD queued, writes them as one batch, and answers each.
async fn write_batches(store: ClusterStore, mut queue: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (requests, replies): (Vec<Request>, Vec<_>) =
            batch.into_iter().map(|job| (job.request, job.reply)).unzip();
        let results = store.allocate_many(requests).await;
        for (reply, result) in replies.into_iter().zip(results) {
            // The caller may have gone (the runtime timed out); the allocation stays committed,
            // and the retried ADD finds it.
            let _ = reply.send(result);
        }
    }
}
