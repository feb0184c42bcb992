//! Streaming RPCs written as blocking code.
//!
//! grpcio hands a streaming handler its requests as a `futures::Stream`
//! and its responses as a `futures::Sink`, on gRPC's completion-queue
//! thread, which must never block. [`BlockingPool::server_streaming`],
//! [`BlockingPool::client_streaming`] and [`BlockingPool::duplex`] run the
//! handler on a pool thread instead, where it reads requests from an
//! [`Incoming`] iterator and sends responses with [`Outgoing::send`], each
//! of which blocks that pool thread only. On the host's side, [`Replies`]
//! iterates a server's stream, [`RequestSender`] sends a stream of
//! requests, and [`Upload`] is a client-streaming call from first request
//! to response.
//!
//! Backpressure is gRPC's flow control: `send` returns once gRPC has taken
//! the message, so a producer faster than its reader waits in `send`
//! instead of filling memory.
//!
//! A call that ends with an error status: a Go client reads every response
//! sent before it, then the status; grpcio's client (and so [`Replies`])
//! reports the status as soon as it has it, and may skip responses sent
//! just ahead of it. A handler whose last responses matter ends with `Ok`.
//!
//! # What a stream costs
//!
//! A stream served this way holds one pool thread from its first request to
//! its end, so a pool of `n` threads serves `n` streams (and unary calls) at
//! once; the next waits for a thread. Measured on Linux x86_64
//! (`streaming-host hold 48`, one small message each way per stream): 38
//! KiB of the plugin's resident memory per open stream (the thread's stack
//! as touched, plus gRPC's call state), and no CPU while it waits. A plugin that keeps thousands of streams open should use
//! grpcio's async style instead (the handler's `futures` sink and stream,
//! [`crate::futures`], futures spawned with `RpcContext::spawn`), which
//! holds no thread per stream.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use futures::executor::{BlockingStream, block_on, block_on_stream};
use futures::{SinkExt, Stream};
use grpcio::{
    ClientCStreamReceiver, ClientCStreamSender, ClientStreamingSink, DuplexSink, RequestStream,
    RpcStatus, RpcStatusCode, ServerStreamingSink, WriteFlags,
};

use crate::blocking::{BlockingPool, panicked, send_without_waiting, unavailable};

impl BlockingPool {
    /// Serves a server-streaming call: `handler` runs on a pool thread and
    /// sends the responses with [`Outgoing::send`]; `Ok` ends the call with
    /// status OK, `Err` with that status, and a panic with `INTERNAL`.
    ///
    /// ```no_run
    /// # mod streams { goplugin::include_proto!("kv"); pub use kv::*; }
    /// use goplugin::BlockingPool;
    /// use goplugin::grpcio::{RpcContext, ServerStreamingSink};
    /// # use streams::{GetRequest as CountRequest, GetResponse as Number};
    ///
    /// fn count(pool: &BlockingPool, _ctx: RpcContext, req: CountRequest, sink: ServerStreamingSink<Number>) {
    ///     pool.server_streaming(sink, move |out| {
    ///         for i in 0..req.key.len() {
    ///             out.send(Number { value: vec![i as u8], ..Default::default() })?;
    ///         }
    ///         Ok(())
    ///     });
    /// }
    /// ```
    pub fn server_streaming<T, F>(&self, sink: ServerStreamingSink<T>, handler: F)
    where
        T: Send + 'static,
        F: FnOnce(&mut Outgoing<T>) -> Result<(), RpcStatus> + Send + 'static,
    {
        self.run_or_refuse(
            sink,
            move |sink| {
                let mut out = Outgoing {
                    sink: ResponseSink::Server(sink),
                };
                let result = catch_unwind(AssertUnwindSafe(|| handler(&mut out)))
                    .unwrap_or_else(|_| Err(panicked()));
                out.sink.finish(result);
            },
            |sink, why| send_without_waiting(ResponseSink::Server(sink).fail(unavailable(why))),
        );
    }

    /// Serves a client-streaming call: `handler` runs on a pool thread,
    /// reads the requests from [`Incoming`] (all of them, or as many as it
    /// needs), and returns the response (or the call's status); a panic
    /// answers `INTERNAL`.
    ///
    /// ```no_run
    /// # mod streams { goplugin::include_proto!("kv"); pub use kv::*; }
    /// use goplugin::BlockingPool;
    /// use goplugin::grpcio::{ClientStreamingSink, RequestStream, RpcContext};
    /// # use streams::{GetResponse as Number};
    ///
    /// fn count(pool: &BlockingPool, _ctx: RpcContext, numbers: RequestStream<Number>, sink: ClientStreamingSink<Number>) {
    ///     pool.client_streaming(numbers, sink, |numbers| {
    ///         let mut seen = 0;
    ///         for number in numbers {
    ///             let _number = number?;
    ///             seen += 1;
    ///         }
    ///         Ok(Number { value: vec![seen], ..Default::default() })
    ///     });
    /// }
    /// ```
    pub fn client_streaming<Req, Resp, F>(
        &self,
        requests: RequestStream<Req>,
        sink: ClientStreamingSink<Resp>,
        handler: F,
    ) where
        Req: Send + 'static,
        Resp: Send + 'static,
        F: FnOnce(&mut Incoming<Req>) -> Result<Resp, RpcStatus> + Send + 'static,
    {
        self.run_or_refuse(
            (requests, sink),
            move |(requests, sink)| {
                let mut incoming = Incoming::new(requests);
                let result = catch_unwind(AssertUnwindSafe(|| handler(&mut incoming)))
                    .unwrap_or_else(|_| Err(panicked()));
                let _ = block_on(async move {
                    match result {
                        Ok(response) => sink.success(response).await,
                        Err(status) => sink.fail(status).await,
                    }
                });
                // Only now: requests dropped unread cancel the call, which
                // would turn the handler's status into CANCELLED.
                drop(incoming);
            },
            |(_, sink), why| {
                let failure = sink.fail(unavailable(why));
                send_without_waiting(async move {
                    let _ = failure.await;
                })
            },
        );
    }

    /// Serves a bidirectional call: `handler` runs on a pool thread, reads
    /// requests from [`Incoming`] and sends responses with
    /// [`Outgoing::send`], in any order; `Ok` ends the call with status OK,
    /// `Err` with that status, and a panic with `INTERNAL`.
    pub fn duplex<Req, Resp, F>(
        &self,
        requests: RequestStream<Req>,
        sink: DuplexSink<Resp>,
        handler: F,
    ) where
        Req: Send + 'static,
        Resp: Send + 'static,
        F: FnOnce(&mut Incoming<Req>, &mut Outgoing<Resp>) -> Result<(), RpcStatus>
            + Send
            + 'static,
    {
        self.run_or_refuse(
            (requests, sink),
            move |(requests, sink)| {
                let mut incoming = Incoming::new(requests);
                let mut out = Outgoing {
                    sink: ResponseSink::Duplex(sink),
                };
                let result = catch_unwind(AssertUnwindSafe(|| handler(&mut incoming, &mut out)))
                    .unwrap_or_else(|_| Err(panicked()));
                out.sink.finish(result);
                // Requests dropped unread cancel the call: after the status.
                drop(incoming);
            },
            |(_, sink), why| {
                send_without_waiting(ResponseSink::Duplex(sink).fail(unavailable(why)))
            },
        );
    }
}

/// The requests of a client-streaming or bidirectional call, one at a
/// time: `next` blocks until the next one comes, and ends when the host
/// has sent its last. An item is `Err` when the call broke (cancelled by
/// the host, or a request that does not decode); `?` passes it on as the
/// call's status.
pub struct Incoming<T> {
    requests: BlockingStream<RequestStream<T>>,
}

impl<T> Incoming<T> {
    fn new(requests: RequestStream<T>) -> Incoming<T> {
        Incoming {
            requests: block_on_stream(requests),
        }
    }
}

impl<T> Iterator for Incoming<T> {
    type Item = Result<T, RpcStatus>;

    fn next(&mut self) -> Option<Self::Item> {
        self.requests.next().map(|item| item.map_err(status_of))
    }
}

impl<T> fmt::Debug for Incoming<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming").finish_non_exhaustive()
    }
}

/// The responses of a server-streaming or bidirectional call.
pub struct Outgoing<T> {
    sink: ResponseSink<T>,
}

impl<T> Outgoing<T> {
    /// Sends one response, blocking until gRPC has taken it (flow control:
    /// a host that reads slowly slows the sender). `Err` when the call is
    /// over (the host cancelled it or went away): return it, and the
    /// handler ends.
    pub fn send(&mut self, response: T) -> Result<(), RpcStatus> {
        let sent = match &mut self.sink {
            ResponseSink::Server(sink) => block_on(sink.send((response, WriteFlags::default()))),
            ResponseSink::Duplex(sink) => block_on(sink.send((response, WriteFlags::default()))),
        };
        sent.map_err(status_of)
    }
}

impl<T> fmt::Debug for Outgoing<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outgoing").finish_non_exhaustive()
    }
}

/// The two sinks grpcio gives a handler that streams responses.
enum ResponseSink<T> {
    Server(ServerStreamingSink<T>),
    Duplex(DuplexSink<T>),
}

impl<T> ResponseSink<T> {
    /// Ends the call with the handler's result, waiting for gRPC to send
    /// the status. The call may be gone already; nobody is left to tell.
    fn finish(self, result: Result<(), RpcStatus>) {
        match result {
            Ok(()) => {
                let _ = match self {
                    ResponseSink::Server(mut sink) => block_on(sink.close()),
                    ResponseSink::Duplex(mut sink) => block_on(sink.close()),
                };
            }
            Err(status) => block_on(self.fail(status)),
        }
    }

    /// Ends the call with `status`.
    fn fail(self, status: RpcStatus) -> impl Future<Output = ()> + Send + 'static {
        let failure: futures::future::BoxFuture<'static, grpcio::Result<()>> = match self {
            ResponseSink::Server(sink) => Box::pin(sink.fail(status)),
            ResponseSink::Duplex(sink) => Box::pin(sink.fail(status)),
        };
        async move {
            let _ = failure.await;
        }
    }
}

/// The status a handler passes on for a broken call.
fn status_of(error: grpcio::Error) -> RpcStatus {
    match error {
        grpcio::Error::RpcFailure(status) => status,
        grpcio::Error::RemoteStopped | grpcio::Error::RpcFinished(_) => RpcStatus::with_message(
            RpcStatusCode::CANCELLED,
            "the call is over: the other side cancelled it or went away".to_string(),
        ),
        other => RpcStatus::with_message(RpcStatusCode::INTERNAL, other.to_string()),
    }
}

/// The responses of a server-streaming or bidirectional call, on the
/// calling side, one at a time: `next` blocks until the next one comes, and
/// ends after the last; an `Err` item is the call's failure (its status).
/// Dropping it before the end cancels the call.
///
/// ```no_run
/// # fn demo(receiver: goplugin::grpcio::ClientSStreamReceiver<String>) -> goplugin::grpcio::Result<()> {
/// // let receiver = client.count(&request)?;   // a server-streaming RPC
/// for number in goplugin::Replies::new(receiver) {
///     println!("{}", number?);
/// }
/// # Ok(())
/// # }
/// ```
pub struct Replies<T> {
    stream: BlockingStream<Box<dyn Stream<Item = grpcio::Result<T>> + Send + Unpin>>,
}

impl<T> Replies<T> {
    /// Blocking iteration over `receiver`: what a generated client's
    /// server-streaming method (`ClientSStreamReceiver`) or bidirectional
    /// method (`ClientDuplexReceiver`) returns.
    pub fn new(
        receiver: impl Stream<Item = grpcio::Result<T>> + Send + Unpin + 'static,
    ) -> Replies<T> {
        let stream: Box<dyn Stream<Item = grpcio::Result<T>> + Send + Unpin> = Box::new(receiver);
        Replies {
            stream: block_on_stream(stream),
        }
    }
}

impl<T> Iterator for Replies<T> {
    type Item = grpcio::Result<T>;

    fn next(&mut self) -> Option<Self::Item> {
        self.stream.next()
    }
}

impl<T> fmt::Debug for Replies<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replies").finish_non_exhaustive()
    }
}

/// The requests of a client-streaming or bidirectional call, on the
/// calling side: `send` blocks until gRPC has taken the request, `finish`
/// tells the other side that the last was sent. Dropping it without
/// `finish` cancels the call.
pub struct RequestSender<T> {
    sink: ClientCStreamSender<T>,
}

impl<T> RequestSender<T> {
    /// Blocking sends on `sender`: what a generated client's bidirectional
    /// (`ClientDuplexSender`) or client-streaming (`ClientCStreamSender`)
    /// method returns.
    pub fn new(sender: ClientCStreamSender<T>) -> RequestSender<T> {
        RequestSender { sink: sender }
    }

    /// Sends one request. `Err` when the call is over: the other side's
    /// status is then what the receiving half reports.
    pub fn send(&mut self, request: T) -> grpcio::Result<()> {
        block_on(self.sink.send((request, WriteFlags::default())))
    }

    /// Says that the last request was sent (a half-close); the responses
    /// go on.
    pub fn finish(mut self) -> grpcio::Result<()> {
        match block_on(self.sink.close()) {
            // grpcio says "finished" when the call ended with OK while the
            // close was on its way: the close did its work.
            Err(grpcio::Error::RpcFinished(None)) => Ok(()),
            Err(grpcio::Error::RpcFinished(Some(status))) if status.code() == RpcStatusCode::OK => {
                Ok(())
            }
            Err(grpcio::Error::RpcFinished(Some(status))) => Err(grpcio::Error::RpcFailure(status)),
            other => other,
        }
    }
}

impl<T> fmt::Debug for RequestSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestSender").finish_non_exhaustive()
    }
}

/// A client-streaming call on the calling side: send the requests, then
/// `finish` for the response.
///
/// ```no_run
/// # fn demo(sender: goplugin::grpcio::ClientCStreamSender<String>, receiver: goplugin::grpcio::ClientCStreamReceiver<u64>) -> goplugin::grpcio::Result<()> {
/// // let (sender, receiver) = client.sum()?;   // a client-streaming RPC
/// let mut upload = goplugin::Upload::new(sender, receiver);
/// for word in ["a", "b"] {
///     upload.send(word.to_string())?;
/// }
/// let total = upload.finish()?;
/// # Ok(())
/// # }
/// ```
pub struct Upload<Req, Resp> {
    requests: RequestSender<Req>,
    response: ClientCStreamReceiver<Resp>,
}

impl<Req, Resp: Unpin> Upload<Req, Resp> {
    /// The call whose two halves a generated client's client-streaming
    /// method returns.
    pub fn new(sender: ClientCStreamSender<Req>, receiver: ClientCStreamReceiver<Resp>) -> Self {
        Upload {
            requests: RequestSender::new(sender),
            response: receiver,
        }
    }

    /// Sends one request, blocking until gRPC has taken it. `Err` when the
    /// call is over: [`finish`](Self::finish) then gives its status.
    pub fn send(&mut self, request: Req) -> grpcio::Result<()> {
        self.requests.send(request)
    }

    /// Says that the last request was sent and waits for the response (or
    /// the call's status).
    pub fn finish(self) -> grpcio::Result<Resp> {
        let Upload { requests, response } = self;
        // A call the server already ended refuses the close; its status
        // is the response's.
        let _ = requests.finish();
        block_on(response)
    }
}

impl<Req, Resp> fmt::Debug for Upload<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upload").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use grpcio::{RpcContext, ServerStreamingSink};

    use super::*;
    use crate::blocking::testing::serve_health;
    use crate::proto::grpc_health::{Health, HealthCheckRequest, HealthCheckResponse};

    /// Health's Watch (a server stream) sends two statuses from the pool,
    /// then does what its `service` names: ends, fails, or panics.
    #[derive(Clone)]
    struct Watcher(BlockingPool);

    impl Health for Watcher {
        fn watch(
            &mut self,
            _: RpcContext<'_>,
            req: HealthCheckRequest,
            sink: ServerStreamingSink<HealthCheckResponse>,
        ) {
            self.0.server_streaming(sink, move |out| {
                for _ in 0..2 {
                    out.send(HealthCheckResponse::default())?;
                }
                match req.service.as_str() {
                    "fail" => Err(RpcStatus::with_message(
                        RpcStatusCode::FAILED_PRECONDITION,
                        "as asked".into(),
                    )),
                    "panic" => panic!("as asked"),
                    _ => Ok(()),
                }
            });
        }
    }

    /// The statuses a watch of `service` got, and how it ended.
    fn watch(pool: BlockingPool, service: &str) -> (usize, Option<RpcStatusCode>) {
        let served = serve_health(Watcher(pool));
        let request = HealthCheckRequest {
            service: service.to_string(),
            ..Default::default()
        };
        let options = grpcio::CallOption::default().timeout(Duration::from_secs(5));
        let receiver = served.client.watch_opt(&request, options).expect("watch");
        let mut items = 0;
        for item in Replies::new(receiver) {
            match item {
                Ok(_) => items += 1,
                Err(grpcio::Error::RpcFailure(status)) => return (items, Some(status.code())),
                Err(other) => panic!("{other:?}"),
            }
        }
        (items, None)
    }

    /// (grpcio's client reports a failed call's status as soon as it has
    /// it, sometimes before the responses sent just ahead of it: after a
    /// failure, at most the two are seen.)
    #[test]
    fn a_stream_ends_as_its_handler_returns() {
        assert_eq!(watch(BlockingPool::new(2), "ok"), (2, None));
        let (items, status) = watch(BlockingPool::new(2), "fail");
        assert!(items <= 2);
        assert_eq!(status, Some(RpcStatusCode::FAILED_PRECONDITION));
    }

    /// A handler that panics mid-stream ends the call INTERNAL, after what
    /// it sent, and the pool lives on.
    #[test]
    fn a_panicking_stream_handler_ends_the_call_internal() {
        let pool = BlockingPool::new(1);
        let (items, status) = watch(pool.clone(), "panic");
        assert!(items <= 2);
        assert_eq!(status, Some(RpcStatusCode::INTERNAL));
        assert_eq!(watch(pool, "ok"), (2, None));
    }

    /// With no thread to be had, a stream is refused UNAVAILABLE from
    /// gRPC's thread, never run there.
    #[test]
    fn a_refused_stream_is_unavailable() {
        let pool = BlockingPool::new(1);
        pool.refuse_threads();
        assert_eq!(watch(pool, "ok"), (0, Some(RpcStatusCode::UNAVAILABLE)));
    }
}
