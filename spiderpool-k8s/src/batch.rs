//! Calls served in batches: what a node agent does with the ADDs and DELs that arrive while a
//! batch is being written, so that allocators on other nodes meet a conflict once per batch
//! rather than once per pod, and the calls of one pod are served one batch after another.

use spiderpool_core::round::{Call, Outcome, RoundError};
use tokio::sync::{mpsc, oneshot};

use crate::cluster::{ApiFailure, ClusterError, ClusterStore};

/// The most calls served as one batch.
pub const MAX_BATCH: usize = 512;

/// One call waiting for the next batch.
struct Job {
    call: Call,
    reply: oneshot::Sender<Result<Outcome, ClusterError>>,
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
        tokio::spawn(serve_batches(store, queue));
        Batcher { jobs }
    }

    /// Serves `call` in the next batch.
    pub async fn serve(&self, call: Call) -> Result<Outcome, ClusterError> {
        let stopped = || RoundError::Api(ApiFailure::Stopped);
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job { call, reply }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Takes every call queued, serves them as one batch, and answers each as soon as it stands.
async fn serve_batches(store: ClusterStore, mut queue: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (calls, replies): (Vec<Call>, Vec<_>) =
            batch.into_iter().map(|job| (job.call, job.reply)).unzip();
        let mut replies: Vec<_> = replies.into_iter().map(Some).collect();
        store
            .serve(calls, |index, result| {
                // The caller may have gone (the runtime timed out); what was committed stays,
                // and the retried call finds it.
                if let Some(reply) = replies[index].take() {
                    let _ = reply.send(result);
                }
            })
            .await;
    }
}
