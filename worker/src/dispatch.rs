//! How batches and per-lease requests reach the device executors: one shared queue, or one queue per
//! executor with batches dealt round-robin and per-lease reductions broadcast to all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use tresnet_common::job::JobSpec;
use tresnet_common::protocol::pb::{self, SampleResult};

use crate::executor::{Batch, ExecutorError, Work, WorkSender};

/// Batches queued for the executors beyond the ones running: bounded so memory stays bounded.
const QUEUED_BATCHES_PER_DEVICE: usize = 2;

/// Why work did not reach the executors or no answer came back.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The executors' queues are closed: the executors exited.
    #[error("executors stopped")]
    Stopped,
    /// The blocking task that waits on a full queue failed.
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
    /// The executor that took a batch dropped its reply without answering.
    #[error("executor dropped the batch")]
    BatchDropped,
    /// An executor dropped its reply to a broadcast request.
    #[error("an executor dropped the {what}")]
    Dropped { what: &'static str },
    /// Every executor answered a broadcast request, none with the value.
    #[error("no executor returned the {what}")]
    NoAnswer { what: &'static str },
    #[error(transparent)]
    Executor(#[from] ExecutorError),
}

/// How work reaches the executors: one shared queue (normal jobs), or one queue per executor with
/// batches dealt round-robin and per-lease reductions broadcast to all (counts-only jobs).
pub(crate) struct Dispatch {
    queues: Vec<WorkSender>,
    next: AtomicU64,
    /// Serializes broadcasts, so every executor sees every lease's reduction in the same order.
    broadcast: Arc<std::sync::Mutex<()>>,
}

impl Dispatch {
    /// The senders and, one per device, the receivers for [`crate::executor::start`]: one shared
    /// queue, or one each for counts-only jobs.
    pub(crate) fn new(
        devices: usize,
        counts_only: bool,
    ) -> (Self, Vec<Arc<Mutex<Receiver<Work>>>>) {
        let (queues, receivers) = if counts_only {
            (0..devices)
                .map(|_| {
                    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUED_BATCHES_PER_DEVICE);
                    (tx, Arc::new(Mutex::new(rx)))
                })
                .unzip()
        } else {
            let (tx, rx) = std::sync::mpsc::sync_channel(QUEUED_BATCHES_PER_DEVICE * devices);
            // Every executor pulls from the same receiver: one Arc, cloned per device.
            let shared = Arc::new(Mutex::new(rx));
            (vec![tx], (0..devices).map(|_| shared.clone()).collect())
        };
        let dispatch = Dispatch {
            queues,
            next: AtomicU64::new(0),
            broadcast: Arc::new(std::sync::Mutex::new(())),
        };
        (dispatch, receivers)
    }

    /// Queues `batch` for an executor; its results come back through the batch's reply.
    pub(crate) async fn send_batch(&self, batch: Batch) -> Result<(), DispatchError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize % self.queues.len();
        let sender = self.queues[i].clone();
        // The queue is bounded: waiting here is the backpressure that keeps host memory bounded.
        tokio::task::spawn_blocking(move || sender.send(Work::Batch(batch)))
            .await?
            .map_err(|_| DispatchError::Stopped)
    }

    /// Sends one message made by `make` to every executor, all under one lock.
    pub(crate) async fn broadcast(
        &self,
        make: impl Fn() -> Work + Send + 'static,
    ) -> Result<(), DispatchError> {
        let queues = self.queues.clone();
        let lock = self.broadcast.clone();
        tokio::task::spawn_blocking(move || {
            let _order = lock.lock().unwrap_or_else(|p| p.into_inner());
            queues
                .iter()
                .try_for_each(|q| q.send(make()).map_err(|_| DispatchError::Stopped))
        })
        .await?
    }

    /// Sends every executor the message `make` builds around its own reply slot, and returns the one
    /// answer that carries a value (rank 0's; the others answer `None`).
    async fn collect<T: Send + 'static>(
        &self,
        what: &'static str,
        make: impl Fn(tokio::sync::oneshot::Sender<Result<Option<T>, ExecutorError>>) -> Work
        + Send
        + 'static,
    ) -> Result<T, DispatchError> {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..self.queues.len())
            .map(|_| tokio::sync::oneshot::channel())
            .unzip();
        let txs = std::sync::Mutex::new(txs);
        self.broadcast(move || make(txs.lock().unwrap_or_else(|p| p.into_inner()).remove(0)))
            .await?;
        let mut answer = None;
        for rx in rxs {
            if let Some(v) = rx.await.map_err(|_| DispatchError::Dropped { what })?? {
                answer = Some(v);
            }
        }
        answer.ok_or(DispatchError::NoAnswer { what })
    }

    /// The lease's per-sample results, scored by the first executor from every executor's logits
    /// gathered to its device.
    pub(crate) async fn gather(
        &self,
        job: &Arc<JobSpec>,
        lease: u64,
    ) -> Result<Vec<SampleResult>, DispatchError> {
        let job = job.clone();
        self.collect("gathered results", move |reply| Work::Gather {
            job: job.clone(),
            lease,
            reply,
        })
        .await
    }

    /// The lease's counts, all-reduced across the executors (each of which has answered every batch
    /// of it already).
    pub(crate) async fn reduce(
        &self,
        job: &str,
        lease: u64,
        classes: i64,
    ) -> Result<pb::ShardCounts, DispatchError> {
        let job = job.to_string();
        self.collect("reduced counts", move |reply| Work::Reduce {
            job: job.clone(),
            lease,
            classes,
            reply,
        })
        .await
    }
}
