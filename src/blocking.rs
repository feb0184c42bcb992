//! Running blocking handler code off gRPC's completion-queue threads.
//!
//! grpcio calls a service's handlers on the completion-queue thread that owns
//! the connection, and a go-plugin host talks to its plugin over a single
//! connection. A handler that blocks (file or network I/O, a lock, a long
//! computation) therefore stalls every other call of the host. A
//! [`BlockingPool`] runs that work on its own threads and answers the call
//! from there.

use std::collections::VecDeque;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use grpcio::{RpcContext, RpcStatus, RpcStatusCode, UnarySink};

use crate::locks::{lock, wait};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A pool of threads for blocking handler code.
///
/// Threads are started on demand, up to the size given to
/// [`BlockingPool::new`], so a plugin that is never called starts none.
/// Below that size a job never waits for another one to finish: it gets an
/// idle thread or a new one. The pool is cheap to clone (clones share the
/// threads) and its threads end once every clone is dropped and the queued
/// work is done.
///
/// ```no_run
/// # mod kv { pub use kv_plugin::proto::kv::*; }
/// # mod kv_grpc { pub use kv_plugin::proto::kv_grpc::*; }
/// // goplugin::include_proto!("kv"): go-plugin's KV example
/// use goplugin::BlockingPool;
/// use goplugin::grpcio::{RpcContext, RpcStatus, RpcStatusCode, UnarySink};
/// use kv::{GetRequest, GetResponse};
/// use kv_grpc::Kv;
///
/// #[derive(Clone)]
/// struct Store {
///     pool: BlockingPool,
/// }
///
/// impl Kv for Store {
///     fn get(&mut self, _ctx: RpcContext, req: GetRequest, sink: UnarySink<GetResponse>) {
///         self.pool.unary(sink, move || {
///             let value = std::fs::read(format!("kv_{}", req.key))
///                 .map_err(|e| RpcStatus::with_message(RpcStatusCode::NOT_FOUND, e.to_string()))?;
///             Ok(GetResponse { value, ..Default::default() })
///         });
///     }
/// }
/// # let _ = Store { pool: BlockingPool::new(4) };
/// ```
#[derive(Clone)]
pub struct BlockingPool {
    inner: Arc<Inner>,
}

impl fmt::Debug for BlockingPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingPool")
            .field("max_threads", &self.inner.max_threads)
            .finish_non_exhaustive()
    }
}

/// What the clones of one pool share; dropping it lets the workers end.
struct Inner {
    shared: Arc<Shared>,
    max_threads: usize,
}

/// What the workers share with the pool.
struct Shared {
    state: Mutex<State>,
    /// Signalled when a job is queued or the pool is closed.
    work: Condvar,
}

struct State {
    jobs: VecDeque<Job>,
    /// Worker threads started and not ended.
    threads: usize,
    /// Workers that will take a queued job without being asked: waiting,
    /// about to wait, or starting.
    idle: usize,
    /// Every clone of the pool is gone: workers end once `jobs` is empty.
    closed: bool,
}

impl Shared {
    /// A worker's life: take jobs until the pool is closed and drained.
    fn work(&self) {
        // The lock is never held while a job runs, so a panicking job cannot
        // poison it; if it is poisoned anyway, the counts are still whole.
        let mut state = lock(&self.state);
        loop {
            if let Some(job) = state.jobs.pop_front() {
                state.idle -= 1;
                drop(state);
                // A panicking job must not take the worker with it.
                let _ = catch_unwind(AssertUnwindSafe(job));
                state = lock(&self.state);
                state.idle += 1;
            } else if state.closed {
                state.idle -= 1;
                state.threads -= 1;
                return;
            } else {
                state = wait(&self.work, state);
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        lock(&self.shared.state).closed = true;
        self.shared.work.notify_all();
    }
}

impl BlockingPool {
    /// A pool that runs at most `max_threads` jobs at once (at least one).
    pub fn new(max_threads: usize) -> BlockingPool {
        BlockingPool {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared {
                    state: Mutex::new(State {
                        jobs: VecDeque::new(),
                        threads: 0,
                        idle: 0,
                        closed: false,
                    }),
                    work: Condvar::new(),
                }),
                max_threads: max_threads.max(1),
            }),
        }
    }

    /// Runs `job` on a pool thread.
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        let shared = &self.inner.shared;
        let mut state = lock(&shared.state);
        state.jobs.push_back(Box::new(job));
        let waiting = state.idle;
        // Each idle worker takes one queued job; a job beyond them gets a
        // new thread, so it never waits behind a busy one below the limit.
        let start = state.jobs.len() > waiting && state.threads < self.inner.max_threads;
        if start {
            state.threads += 1;
            state.idle += 1;
        }
        drop(state);
        if waiting > 0 {
            shared.work.notify_one();
        }
        if start {
            self.start_thread();
        }
    }

    /// Starts a worker already counted in `threads` and `idle`.
    fn start_thread(&self) {
        let shared = Arc::clone(&self.inner.shared);
        let spawned = thread::Builder::new()
            .name("goplugin-blocking".to_string())
            .spawn(move || shared.work());
        if let Err(err) = spawned {
            let mut state = lock(&self.inner.shared.state);
            state.threads -= 1;
            state.idle -= 1;
            if state.threads > 0 {
                // The running workers will get to the queued work.
                return;
            }
            // No worker at all: nobody would ever run the queue, so it runs
            // here, on the caller's thread, rather than never.
            log::warn!("cannot start a blocking-pool thread ({err}); running its work inline");
            let jobs = std::mem::take(&mut state.jobs);
            drop(state);
            for job in jobs {
                let _ = catch_unwind(AssertUnwindSafe(job));
            }
        }
    }

    /// Answers a unary call with the result of `handler`, run on a pool
    /// thread.
    ///
    /// `Ok` is sent as the response and `Err` as the call's status. A
    /// handler that panics answers `INTERNAL` instead of leaving the caller
    /// waiting.
    pub fn unary<T, F>(&self, sink: UnarySink<T>, handler: F)
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, RpcStatus> + Send + 'static,
    {
        self.spawn(move || {
            let result = catch_unwind(AssertUnwindSafe(handler)).unwrap_or_else(|_| {
                Err(RpcStatus::with_message(
                    RpcStatusCode::INTERNAL,
                    "the plugin's handler panicked; see the plugin's log".to_string(),
                ))
            });
            futures::executor::block_on(send(sink, result));
        });
    }
}

/// Answers a unary call from the handler itself, on gRPC's thread: `Ok` as
/// the response, `Err` as the call's status. For handlers that do not
/// block; blocking ones use [`BlockingPool::unary`].
///
/// ```no_run
/// # mod kv { pub use kv_plugin::proto::kv::*; }
/// # mod kv_grpc { pub use kv_plugin::proto::kv_grpc::*; }
/// // goplugin::include_proto!("kv"): go-plugin's KV example
/// use goplugin::grpcio::{RpcContext, UnarySink};
/// use kv::{GetRequest, GetResponse};
/// use kv_grpc::Kv;
///
/// #[derive(Clone)]
/// struct Fixed;
///
/// impl Kv for Fixed {
///     fn get(&mut self, ctx: RpcContext, _req: GetRequest, sink: UnarySink<GetResponse>) {
///         let resp = GetResponse { value: b"always this".to_vec(), ..Default::default() };
///         goplugin::answer(&ctx, sink, Ok(resp));
///     }
/// }
/// ```
pub fn answer<T: Send + 'static>(
    ctx: &RpcContext<'_>,
    sink: UnarySink<T>,
    result: Result<T, RpcStatus>,
) {
    // gRPC cancels a call whose sink future is dropped before delivery
    // completes, so the future is spawned, not dropped.
    ctx.spawn(send(sink, result));
}

/// Sends `result` on `sink`. The call may already be gone (cancelled by the
/// host or by shutdown); there is nobody left to tell.
async fn send<T>(sink: UnarySink<T>, result: Result<T, RpcStatus>) {
    let _ = match result {
        Ok(resp) => sink.success(resp).await,
        Err(status) => sink.fail(status).await,
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::time::Duration;

    #[test]
    fn runs_jobs_in_parallel_up_to_the_limit() {
        let pool = BlockingPool::new(4);
        let (started, wait) = channel();
        let release = Arc::new(Mutex::new(()));
        let guard = release.lock().unwrap();
        for _ in 0..4 {
            let started = started.clone();
            let release = Arc::clone(&release);
            pool.spawn(move || {
                started.send(()).unwrap();
                drop(release.lock());
            });
        }
        for _ in 0..4 {
            wait.recv_timeout(Duration::from_secs(5))
                .expect("four jobs run at once");
        }
        drop(guard);
        assert!(lock(&pool.inner.shared.state).threads <= 4);
    }

    /// Jobs queued while a worker sits idle each get a worker of their own
    /// (up to the limit): two jobs that can only finish together, sent back
    /// to back while one worker is idle, both run.
    #[test]
    fn jobs_sent_to_one_idle_worker_do_not_wait_for_each_other() {
        for round in 0..20 {
            let pool = BlockingPool::new(2);
            let (done, wait) = channel();
            pool.spawn(move || done.send(()).unwrap());
            wait.recv_timeout(Duration::from_secs(5)).unwrap();
            // Until the worker waits for work again.
            while lock(&pool.inner.shared.state).idle == 0 {
                thread::yield_now();
            }

            let barrier = Arc::new(std::sync::Barrier::new(3));
            for _ in 0..2 {
                let barrier = Arc::clone(&barrier);
                pool.spawn(move || {
                    barrier.wait();
                });
            }
            let (met, meeting) = channel();
            let waiter = Arc::clone(&barrier);
            thread::spawn(move || {
                waiter.wait();
                let _ = met.send(());
            });
            meeting
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_else(|_| panic!("round {round}: the second job never ran"));
        }
    }

    #[test]
    fn threads_end_after_the_last_clone_is_dropped_and_the_work_is_done() {
        let pool = BlockingPool::new(3);
        let shared = Arc::clone(&pool.inner.shared);
        let (done, wait) = channel();
        for _ in 0..3 {
            let done = done.clone();
            pool.clone().spawn(move || {
                thread::sleep(Duration::from_millis(20));
                done.send(()).unwrap();
            });
        }
        drop(pool);
        for _ in 0..3 {
            wait.recv_timeout(Duration::from_secs(5))
                .expect("queued work runs after the pool is dropped");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while lock(&shared.state).threads > 0 {
            assert!(std::time::Instant::now() < deadline, "workers never ended");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn survives_a_panicking_job() {
        let pool = BlockingPool::new(1);
        pool.spawn(|| panic!("boom"));
        let (done, wait) = channel();
        pool.spawn(move || done.send(()).unwrap());
        wait.recv_timeout(Duration::from_secs(5))
            .expect("the worker lives on");
    }
}
