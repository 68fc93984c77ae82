//! Group commit: writes queued by many executions at once share one transaction, so they share
//! one WAL sync. With `synchronous=FULL` a sync costs far more than the rows it makes durable,
//! so the engine's throughput with many executions in flight is bounded by CPU, not by the
//! one-commit-per-transition limit of the disk.
//!
//! Each writer queues its write and waits for its own answer. Whoever finds no commit under way
//! starts the committer, which takes everything queued (up to [`MAX_BATCH_WRITES`]), writes it
//! in one transaction and answers each writer, and goes on until the queue is empty. Nobody is
//! answered before the transaction holding their write has committed, so an answer still means
//! "durable", as with a commit of one's own.
//!
//! Where the committer runs is the store's choice ([`Committer`]). In production it is a task
//! that first lets every other ready task queue its write, then writes in `block_in_place`: the
//! sync holds its own thread, while the worker's other tasks move to another (measured on two
//! cores, this beat handing each batch to the blocking pool, whose thread hand-offs sit on
//! every commit's path). While the engine is quiet (at most one write queued, and the last
//! batch one write) the committer writes on the worker's thread as it is: there is no other
//! writer to hold up, and handing the thread off costs more than the sync. The simulator runs
//! the same task without `block_in_place` (one thread, so the same seed makes the same
//! batches). Outside any runtime the caller writes itself.
//!
//! The queue needs no bound of its own: each writer waits for its answer before it can queue
//! another write, so it holds at most one write per execution task and caller.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::Error;

/// Writes per transaction, at most: bounds a transaction's size and the time its writers wait.
pub const MAX_BATCH_WRITES: usize = 256;

/// Writes a batch in one transaction: one result per write, in order.
pub(super) type BatchWriter<W> = dyn Fn(&[W]) -> Vec<Result<(), Error>> + Send + Sync;

/// Where the committer runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Committer {
    /// On tokio's blocking pool.
    BlockingPool,
    /// As a task on the caller's runtime, after one yield.
    Task,
    /// As a task, whose worker thread hands its other tasks to another thread while it writes
    /// (`block_in_place`), except while the engine is quiet (at most one write queued, and the
    /// last batch one write); a plain [`Committer::Task`] on a current-thread runtime.
    Worker,
}

pub(super) struct Group<W> {
    queue: Mutex<Queue<W>>,
    write_batch: Box<BatchWriter<W>>,
    committer: Committer,
    stats: Counters,
}

#[derive(Default)]
struct Counters {
    writes: AtomicU64,
    transactions: AtomicU64,
}

/// How many writes the group has written, in how many transactions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    pub writes: u64,
    pub transactions: u64,
}

struct Queue<W> {
    pending: VecDeque<(W, oneshot::Sender<Result<(), Error>>)>,
    /// A committer is running (or about to): writers queue and wait.
    committing: bool,
    /// Writes in the last batch written.
    last_batch_writes: usize,
}

impl<W: Send + 'static> Group<W> {
    pub(super) fn new(committer: Committer, write_batch: Box<BatchWriter<W>>) -> Arc<Group<W>> {
        Arc::new(Group {
            queue: Mutex::new(Queue {
                pending: VecDeque::new(),
                committing: false,
                last_batch_writes: 0,
            }),
            write_batch,
            committer,
            stats: Counters::default(),
        })
    }

    pub(super) fn stats(&self) -> CommitStats {
        CommitStats {
            writes: self.stats.writes.load(Ordering::Relaxed),
            transactions: self.stats.transactions.load(Ordering::Relaxed),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue<W>> {
        // The queue is changed only by pushes and pops that cannot panic halfway.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `write` and returns once the transaction holding it has committed (or failed).
    pub(super) async fn write(self: &Arc<Self>, write: W) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut queue = self.queue();
            queue.pending.push_back((write, reply));
            !std::mem::replace(&mut queue.committing, true)
        };
        if start {
            self.start_committer();
        }
        answer.await.unwrap_or_else(|_| {
            Err(Error::Backend(
                "the committer stopped before answering; the write may or may not have landed"
                    .into(),
            ))
        })
    }

    fn start_committer(self: &Arc<Self>) {
        let group = Armed {
            group: self.clone(),
            drained: false,
        };
        match (self.committer, tokio::runtime::Handle::try_current()) {
            (_, Err(_)) => group.drain(),
            (Committer::BlockingPool, Ok(runtime)) => {
                runtime.spawn_blocking(move || group.drain());
            }
            (task @ (Committer::Task | Committer::Worker), Ok(runtime)) => {
                let in_place = task == Committer::Worker
                    && runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread;
                runtime.spawn(async move {
                    // Writers that are ready to run get to queue theirs first.
                    tokio::task::yield_now().await;
                    let mut group = group;
                    if !in_place {
                        group.drain();
                        return;
                    }
                    // Lone writes after lone writes (one execution at a time, a quiet
                    // engine) are committed on this thread: no other writer is about whose
                    // work the sync could hold up, and handing the worker's tasks to another
                    // thread costs more than the sync (measured on two cores). Once writes
                    // come in together, the rest is drained with the thread handed off.
                    while group.quiet() {
                        if !group.commit_next() {
                            return;
                        }
                        // The writer just answered waits in this worker's own slot, which no
                        // other worker takes from: it runs before the next sync holds the
                        // thread (two executions taking turns would otherwise each wait
                        // through the other's commit).
                        tokio::task::yield_now().await;
                    }
                    tokio::task::block_in_place(|| group.drain());
                });
            }
        }
    }
}

/// The committer's hold on the group. Dropped without draining (its task was dropped with its
/// runtime), it ends the commit so that a later writer starts a new one; the writers still
/// queued are answered with an error (their senders are dropped).
struct Armed<W: Send + 'static> {
    group: Arc<Group<W>>,
    drained: bool,
}

impl<W: Send + 'static> Armed<W> {
    /// Writes batch after batch until the queue is empty; every write is answered.
    fn drain(mut self) {
        while self.commit_next() {}
    }

    /// At most one write is queued, and the last batch was one write too.
    fn quiet(&self) -> bool {
        let queue = self.group.queue();
        queue.pending.len() <= 1 && queue.last_batch_writes <= 1
    }

    /// Writes the next batch and answers its writers. Returns false, having stood the
    /// committer down, once the queue was empty.
    fn commit_next(&mut self) -> bool {
        assert!(!self.drained, "a committer that stood down commits nothing");
        let batch: Vec<_> = {
            let mut queue = self.group.queue();
            if queue.pending.is_empty() {
                queue.committing = false;
                self.drained = true;
                return false;
            }
            let n = queue.pending.len().min(MAX_BATCH_WRITES);
            queue.last_batch_writes = n;
            queue.pending.drain(..n).collect()
        };
        let (writes, replies): (Vec<W>, Vec<_>) = batch.into_iter().unzip();
        let results = (self.group.write_batch)(&writes);
        let stats = &self.group.stats;
        stats.transactions.fetch_add(1, Ordering::Relaxed);
        stats
            .writes
            .fetch_add(writes.len() as u64, Ordering::Relaxed);
        assert_eq!(results.len(), replies.len(), "one result per write");
        for (reply, result) in replies.into_iter().zip(results) {
            // A writer that stopped waiting does not want its answer.
            let _ = reply.send(result);
        }
        true
    }
}

impl<W: Send + 'static> Drop for Armed<W> {
    fn drop(&mut self) {
        if !self.drained {
            let mut queue = self.group.queue();
            queue.committing = false;
            queue.pending.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every batch a test group's "transaction" was given.
    type Batches = Arc<Mutex<Vec<Vec<u32>>>>;

    /// A group whose "transaction" records its batches and refuses writes ending in 7.
    fn recording(committer: Committer) -> (Arc<Group<u32>>, Batches) {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let seen = batches.clone();
        let group = Group::new(
            committer,
            Box::new(move |writes: &[u32]| {
                seen.lock().unwrap().push(writes.to_vec());
                writes
                    .iter()
                    .map(|w| {
                        if w % 10 == 7 {
                            Err(Error::Duplicate(w.to_string()))
                        } else {
                            Ok(())
                        }
                    })
                    .collect()
            }),
        );
        (group, batches)
    }

    #[tokio::test]
    async fn writers_queued_together_share_a_batch_and_get_their_own_results() {
        let (group, batches) = recording(Committer::Task);
        let writers: Vec<_> = (0..20u32)
            .map(|w| {
                let group = group.clone();
                tokio::spawn(async move { (w, group.write(w).await) })
            })
            .collect();
        for writer in writers {
            let (w, result) = writer.await.unwrap();
            match result {
                Err(Error::Duplicate(id)) => assert_eq!((w % 10, id), (7, w.to_string())),
                Ok(()) => assert_ne!(w % 10, 7),
                other => panic!("unexpected {other:?}"),
            }
        }
        let batches = batches.lock().unwrap();
        let written: usize = batches.iter().map(Vec::len).sum();
        assert_eq!(written, 20, "every write is written once");
        assert!(
            batches.len() < 20,
            "writers that queue while a commit is pending share it: {batches:?}"
        );
    }

    /// Writes `writes` from as many tasks at once; checks each was written once, in batches
    /// no larger than the bound, and answered (those ending in 7 refused).
    async fn burst(group: &Arc<Group<u32>>, batches: &Batches, writes: std::ops::Range<u32>) {
        let writers: Vec<_> = writes
            .clone()
            .map(|w| {
                let group = group.clone();
                tokio::spawn(async move { (w, group.write(w).await.is_ok()) })
            })
            .collect();
        for writer in writers {
            let (w, ok) = writer.await.unwrap();
            assert_eq!(ok, w % 10 != 7, "write {w}");
        }
        let batches = batches.lock().unwrap();
        assert!(batches.iter().all(|b| b.len() <= MAX_BATCH_WRITES));
        let mut written: Vec<u32> = batches.iter().flatten().copied().collect();
        written.sort();
        written.retain(|w| writes.contains(w));
        assert_eq!(written, writes.collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_blocking_pool_committer_answers_every_writer() {
        let (group, batches) = recording(Committer::BlockingPool);
        burst(&group, &batches, 0..500).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_worker_committer_answers_lone_writes_and_bursts_alike() {
        // A lone write is committed on the writer's worker thread, a burst with the thread
        // handed off: both answer every writer with its own result.
        let (group, batches) = recording(Committer::Worker);
        for w in 0..5u32 {
            group.write(w).await.unwrap();
        }
        let lone: Vec<Vec<u32>> = (0..5).map(|w| vec![w]).collect();
        assert_eq!(
            *batches.lock().unwrap(),
            lone,
            "one write at a time: a batch each"
        );
        burst(&group, &batches, 10..510).await;
        assert!(
            batches.lock().unwrap().len() < 5 + 500,
            "writers that queue while a commit is pending share it"
        );
        for w in [510, 517] {
            assert_eq!(group.write(w).await.is_ok(), w != 517);
        }
    }

    #[tokio::test]
    async fn a_drained_committer_lets_go_of_the_group() {
        let (group, _) = recording(Committer::Task);
        group.write(1).await.unwrap();
        tokio::task::yield_now().await;
        assert_eq!(Arc::strong_count(&group), 1, "nothing else holds the group");
    }

    #[test]
    fn outside_a_runtime_the_caller_writes_at_once() {
        use std::future::Future;
        let (group, batches) = recording(Committer::Task);
        let write = std::pin::pin!(group.write(1));
        let ready = write.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
        assert!(matches!(ready, std::task::Poll::Ready(Ok(()))));
        assert_eq!(*batches.lock().unwrap(), vec![vec![1]]);
    }

    #[test]
    fn a_committer_dropped_before_it_drains_lets_the_next_writer_commit() {
        use std::future::Future;
        let (group, batches) = recording(Committer::Task);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut stranded = Box::pin(group.write(3));
        {
            // The committer task is spawned but never run: the runtime goes first.
            let _entered = runtime.enter();
            assert!(stranded.as_mut().poll(&mut cx).is_pending());
        }
        drop(runtime);
        let answer = stranded.as_mut().poll(&mut cx);
        assert!(matches!(
            answer,
            std::task::Poll::Ready(Err(Error::Backend(_)))
        ));
        // Outside any runtime now: the next writer commits by itself.
        let next = std::pin::pin!(group.write(4));
        assert!(matches!(next.poll(&mut cx), std::task::Poll::Ready(Ok(()))));
        assert_eq!(*batches.lock().unwrap(), vec![vec![4]]);
    }
}
