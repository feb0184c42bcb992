//! Running blocking handler code off gRPC's completion-queue threads.
//!
//! grpcio calls a service's handlers on the completion-queue thread that owns
//! the connection, and a go-plugin host talks to its plugin over a single
//! connection. A handler that blocks (file or network I/O, a lock, a long
//! computation) therefore stalls every other call of the host. A
//! [`BlockingPool`] runs that work on its own threads and answers the call
//! from there.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;

use grpcio::{RpcContext, RpcStatus, RpcStatusCode, UnarySink};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A pool of threads for blocking handler code.
///
/// Threads are started on demand, up to the size given to
/// [`BlockingPool::new`], so a plugin that is never called starts none. The
/// pool is cheap to clone (clones share the threads) and its threads end
/// once every clone is dropped and the queued work is done.
///
/// ```no_run
/// use goplugin::BlockingPool;
/// use goplugin::grpcio::{RpcContext, RpcStatus, RpcStatusCode, UnarySink};
/// use goplugin::proto::kv::{GetRequest, GetResponse, Kv};
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
///             let mut resp = GetResponse::new();
///             resp.set_value(value);
///             Ok(resp)
///         });
///     }
/// }
/// # let _ = Store { pool: BlockingPool::new(4) };
/// ```
#[derive(Clone, Debug)]
pub struct BlockingPool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    jobs: Sender<Job>,
    queue: Arc<Mutex<Receiver<Job>>>,
    max_threads: usize,
    threads: AtomicUsize,
    idle: Arc<AtomicUsize>,
}

impl BlockingPool {
    /// A pool that runs at most `max_threads` jobs at once (at least one).
    pub fn new(max_threads: usize) -> BlockingPool {
        let (jobs, queue) = mpsc::channel();
        BlockingPool {
            inner: Arc::new(Inner {
                jobs,
                queue: Arc::new(Mutex::new(queue)),
                max_threads: max_threads.max(1),
                threads: AtomicUsize::new(0),
                idle: Arc::new(AtomicUsize::new(0)),
            }),
        }
    }

    /// Runs `job` on a pool thread.
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        let inner = &self.inner;
        // The receiving half lives as long as any worker or this pool, so
        // sending cannot fail while `self` exists.
        let _ = inner.jobs.send(Box::new(job));
        if inner.idle.load(Ordering::Acquire) == 0 {
            self.start_thread();
        }
    }

    fn start_thread(&self) {
        let inner = &self.inner;
        let started = inner
            .threads
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < inner.max_threads).then_some(n + 1)
            });
        let Ok(index) = started else {
            return;
        };
        let queue = Arc::clone(&inner.queue);
        let idle = Arc::clone(&inner.idle);
        let spawned = thread::Builder::new()
            .name(format!("goplugin-blocking-{index}"))
            .spawn(move || {
                loop {
                    idle.fetch_add(1, Ordering::AcqRel);
                    let job = match queue.lock() {
                        Ok(queue) => queue.recv(),
                        Err(poisoned) => poisoned.into_inner().recv(),
                    };
                    idle.fetch_sub(1, Ordering::AcqRel);
                    match job {
                        // A panicking job must not take the worker with it.
                        Ok(job) => {
                            let _ = catch_unwind(AssertUnwindSafe(job));
                        }
                        Err(_) => return,
                    }
                }
            });
        if spawned.is_err() {
            // Out of threads: the work stays queued for the running workers.
            inner.threads.fetch_sub(1, Ordering::AcqRel);
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
/// use goplugin::grpcio::{RpcContext, UnarySink};
/// use goplugin::proto::kv::{GetRequest, GetResponse, Kv};
///
/// #[derive(Clone)]
/// struct Fixed;
///
/// impl Kv for Fixed {
///     fn get(&mut self, ctx: RpcContext, _req: GetRequest, sink: UnarySink<GetResponse>) {
///         let mut resp = GetResponse::new();
///         resp.set_value(b"always this".to_vec());
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
        assert!(pool.inner.threads.load(Ordering::Acquire) <= 4);
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
