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
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Waker};
use std::thread;

use grpcio::{RpcContext, RpcStatus, RpcStatusCode, UnarySink};

use crate::locks::{lock, wait};

/// Queued work: what to run, and what to do instead when no thread can
/// ever run it.
struct Job {
    run: Box<dyn FnOnce() + Send + 'static>,
    refuse: Box<dyn FnOnce(&str) + Send + 'static>,
}

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
/// goplugin::include_proto!("kv"); // go-plugin's KV example
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
/// # fn main() { let _ = Store { pool: BlockingPool::new(4) }; }
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
    /// Tests: behave as if the OS refused every new thread.
    #[cfg(test)]
    refuse_threads: std::sync::atomic::AtomicBool,
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
                let _ = catch_unwind(AssertUnwindSafe(job.run));
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
                #[cfg(test)]
                refuse_threads: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Runs `job` on a pool thread.
    ///
    /// Never on the caller's thread, which may be gRPC's: when the OS
    /// refuses a new thread and the pool has none running, the job is
    /// dropped with an error in the log (and [`unary`](Self::unary) answers
    /// `UNAVAILABLE`); the next job tries to start a thread again.
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) {
        self.queue(Job {
            run: Box::new(job),
            refuse: Box::new(|why| log::error!("a blocking-pool job was dropped: {why}")),
        });
    }

    fn queue(&self, job: Job) {
        let shared = &self.inner.shared;
        let mut state = lock(&shared.state);
        state.jobs.push_back(job);
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
        #[cfg(test)]
        if self
            .inner
            .refuse_threads
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return self.thread_refused(&std::io::Error::from_raw_os_error(libc::EAGAIN));
        }
        let spawned = thread::Builder::new()
            .name("goplugin-blocking".to_string())
            .spawn(move || shared.work());
        if let Err(err) = spawned {
            self.thread_refused(&err);
        }
    }

    /// The OS refused a worker thread. With other workers running, they
    /// get to the queue. With none, nobody ever would: the queued jobs are
    /// refused rather than run here, on what may be gRPC's thread, where a
    /// job that waits for gRPC (an answer, a call) would wait forever.
    fn thread_refused(&self, err: &std::io::Error) {
        let mut state = lock(&self.inner.shared.state);
        state.threads -= 1;
        state.idle -= 1;
        if state.threads > 0 {
            return;
        }
        let jobs = std::mem::take(&mut state.jobs);
        drop(state);
        let why = format!(
            "the plugin cannot start a thread ({err}): the OS limits its threads \
             (ulimit -u, cgroup pids.max)"
        );
        log::warn!("{why}; {} queued call(s) refused", jobs.len());
        for job in jobs {
            (job.refuse)(&why);
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
        self.run_or_refuse(
            sink,
            move |sink| {
                let result =
                    catch_unwind(AssertUnwindSafe(handler)).unwrap_or_else(|_| Err(panicked()));
                futures::executor::block_on(send(sink, result));
            },
            |sink, why| send_without_waiting(send(sink, Err(unavailable(why)))),
        );
    }

    /// Runs `run(state)` on a pool thread, or, when no thread can ever run
    /// it, `refuse(state, why)` (on the caller's thread, which may be
    /// gRPC's: `refuse` must not wait).
    pub(crate) fn run_or_refuse<S: Send + 'static>(
        &self,
        state: S,
        run: impl FnOnce(S) + Send + 'static,
        refuse: impl FnOnce(S, &str) + Send + 'static,
    ) {
        // Whichever of running and refusing happens takes the state.
        let state = Arc::new(Mutex::new(Some(state)));
        let refused = Arc::clone(&state);
        self.queue(Job {
            run: Box::new(move || {
                let taken = lock(&state).take();
                if let Some(state) = taken {
                    run(state);
                }
            }),
            refuse: Box::new(move |why| {
                let taken = lock(&refused).take();
                if let Some(state) = taken {
                    refuse(state, why);
                }
            }),
        });
    }
}

#[cfg(test)]
impl BlockingPool {
    /// Tests: from now on, behave as if the OS refused every new thread.
    pub(crate) fn refuse_threads(&self) {
        self.inner
            .refuse_threads
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Tests: a health service served on a unix socket, and its client.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::PathBuf;
    use std::sync::Arc;

    use crate::proto::grpc_health::{Health, HealthClient, create_health};

    /// A running server; the socket file goes when it is dropped.
    pub(crate) struct Served {
        pub(crate) client: HealthClient,
        _server: grpcio::Server,
        socket: PathBuf,
    }

    impl Drop for Served {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.socket);
        }
    }

    /// Serves `service` as `grpc.health.v1.Health` on a fresh unix socket.
    pub(crate) fn serve_health(service: impl Health + Send + Clone + 'static) -> Served {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let socket = std::env::temp_dir().join(format!("goplugin-pool-{}-{n}", std::process::id()));
        let env = Arc::new(grpcio::EnvBuilder::new().cq_count(1).build());
        let mut server = grpcio::ServerBuilder::new(Arc::clone(&env))
            .register_service(create_health(service))
            .build()
            .expect("server");
        let target = format!("unix:{}", socket.display());
        server
            .add_listening_port(&target, grpcio::ServerCredentials::insecure())
            .expect("listen");
        server.start();
        Served {
            client: HealthClient::new(grpcio::ChannelBuilder::new(env).connect(&target)),
            _server: server,
            socket,
        }
    }
}

/// The status of a call whose handler panicked.
pub(crate) fn panicked() -> RpcStatus {
    RpcStatus::with_message(
        RpcStatusCode::INTERNAL,
        "the plugin's handler panicked; see the plugin's log".to_string(),
    )
}

/// The status of a call no pool thread could take.
pub(crate) fn unavailable(why: &str) -> RpcStatus {
    RpcStatus::with_message(RpcStatusCode::UNAVAILABLE, why.to_string())
}

/// Answers a unary call from the handler itself, on gRPC's thread: `Ok` as
/// the response, `Err` as the call's status. For handlers that do not
/// block; blocking ones use [`BlockingPool::unary`].
///
/// ```no_run
/// goplugin::include_proto!("kv"); // go-plugin's KV example
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
/// # fn main() {}
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

/// Answers that could not be sent from a thread of their own. gRPC cancels
/// a call whose sink future is dropped before delivery completes, so each
/// future is kept until gRPC has completed it; none is waited for.
static UNSENT: Mutex<Vec<Pin<Box<dyn Future<Output = ()> + Send>>>> = Mutex::new(Vec::new());

/// Starts sending an answer on the caller's thread, which may be gRPC's,
/// without waiting for it: the future is polled once, and kept (in
/// [`UNSENT`], polled again at the next such answer) while pending.
pub(crate) fn send_without_waiting(answer: impl Future<Output = ()> + Send + 'static) {
    let mut unsent = lock(&UNSENT);
    let mut context = Context::from_waker(Waker::noop());
    unsent.retain_mut(|pending| pending.as_mut().poll(&mut context).is_pending());
    let mut answer: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(answer);
    if answer.as_mut().poll(&mut context).is_pending() {
        unsent.push(answer);
    }
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

    /// With no thread to be had and none running, a job is refused, not run
    /// on the caller's thread (gRPC's, in a handler); once threads can be
    /// started again, the pool works again.
    #[test]
    fn without_threads_jobs_are_refused_not_run_inline() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let pool = BlockingPool::new(2);
        pool.refuse_threads();
        let ran = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ran);
        pool.spawn(move || flag.store(true, Ordering::Relaxed));
        assert!(!ran.load(Ordering::Relaxed), "a refused job never runs");
        {
            let state = lock(&pool.inner.shared.state);
            assert_eq!((state.threads, state.idle, state.jobs.len()), (0, 0, 0));
        }
        pool.inner.refuse_threads.store(false, Ordering::Relaxed);
        let (done, wait) = channel();
        pool.spawn(move || done.send(thread::current().id()).unwrap());
        let worker = wait
            .recv_timeout(Duration::from_secs(5))
            .expect("runs again");
        assert_ne!(worker, thread::current().id());
    }

    /// A refused `unary` answers UNAVAILABLE, from the handler's own
    /// thread (gRPC's here) without waiting there.
    #[test]
    fn a_refused_unary_call_is_unavailable() {
        use crate::proto::grpc_health::{Health, HealthCheckRequest, HealthCheckResponse};

        #[derive(Clone)]
        struct Refusing(BlockingPool);
        impl Health for Refusing {
            fn check(
                &mut self,
                _: RpcContext<'_>,
                _: HealthCheckRequest,
                sink: UnarySink<HealthCheckResponse>,
            ) {
                self.0.unary(sink, || Ok(HealthCheckResponse::default()));
            }
        }

        let pool = BlockingPool::new(1);
        pool.refuse_threads();
        let served = testing::serve_health(Refusing(pool));
        let options = grpcio::CallOption::default().timeout(Duration::from_secs(5));
        match served
            .client
            .check_opt(&HealthCheckRequest::default(), options)
        {
            Err(grpcio::Error::RpcFailure(status)) => {
                assert_eq!(status.code(), RpcStatusCode::UNAVAILABLE, "{status:?}");
                assert!(
                    status.message().contains("cannot start a thread"),
                    "{status:?}"
                );
            }
            other => panic!("want UNAVAILABLE, got {other:?}"),
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
