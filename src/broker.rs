//! `plugin.GRPCBroker`: extra gRPC connections between plugin and host, by id.
//!
//! go-plugin's bidirectional plugins pass a *service id* inside an
//! application message; the side that serves something under that id
//! announces its address on the broker stream (`ConnInfo{service_id,
//! network, address}`), and the other side dials it. This is the
//! non-multiplexed broker that go-plugin 1.0.1 and the current release both
//! speak. Mirrors go-plugin's `grpc_broker.go`:
//! - ids come from a counter starting at 1 ([`Broker::next_id`]);
//! - [`Broker::accept_and_serve`] opens a listener exactly like the main one
//!   (unix socket or TCP, the same TLS), serves the given services there and
//!   announces it;
//! - [`Broker::dial`] waits up to 5 s for the host to announce an id, then
//!   connects with the same TLS (the plugin's certificate as client
//!   certificate, the host's certificate trusted);
//! - announcements nobody claims are dropped after 5 s; the other side
//!   may have at most 1024 of them waiting, with fields of at most 4 KiB, or
//!   its broker stream is ended (logged as an error).
//!
//! Brokered servers stop, and their socket files go, when the plugin stops.
//!
//! When the host multiplexes (`PLUGIN_MULTIPLEX_GRPC=true`, see
//! [`mux`](crate::mux)), nothing new is dialled or announced: both
//! directions run over yamux streams of the host's one connection, and
//! go-plugin's *knock* picks the stream's server. To dial id N the plugin
//! sends `ConnInfo{service_id: N, knock: {knock: true}}`, waits up to 5 s for
//! the host's `{knock, ack}` and then opens a stream; a knock from the host
//! is acknowledged (with an error when nothing is served on that id) and the
//! host's next stream goes to id N's server.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use grpcio::{DuplexSink, RequestStream, RpcContext, WriteFlags};

use crate::address::{self, Reach};
use crate::error::{Error, Result};
use crate::listener::{Addr, SocketFile};
use crate::locks::{lock, wait_for};
use crate::proto::plugin::conn_info::Knock;
use crate::proto::plugin::{ConnInfo, GrpcBroker, GrpcBrokerClient, create_grpc_broker};
use crate::transport::{self, BROKER_TIMEOUT as TIMEOUT, Rendezvous, Transport};

/// A handle on the plugin's broker. Cheap to clone; get it from
/// [`PluginServerBuilder::broker`](crate::PluginServerBuilder::broker)
/// before building the services that use it.
///
/// go-plugin's bidirectional example, plugin side (`counter-plugin` is the
/// whole of it): the host serves an `AddHelper` under the id it sends in
/// `PutRequest.add_server`, and the plugin calls it back.
///
/// ```no_run
/// goplugin::include_proto!("counter"); // go-plugin's bidirectional example
/// use goplugin::grpcio::{RpcContext, RpcStatus, RpcStatusCode, UnarySink};
/// use counter::{Empty, PutRequest, SumRequest};
/// use counter_grpc::{AddHelperClient, Counter, create_counter};
/// use goplugin::{BlockingPool, Broker, HandshakeConfig, PluginServer};
///
/// #[derive(Clone)]
/// struct CallsBack {
///     broker: Broker,
///     pool: BlockingPool,
/// }
///
/// impl Counter for CallsBack {
///     fn put(&mut self, _: RpcContext, req: PutRequest, sink: UnarySink<Empty>) {
///         let broker = self.broker.clone();
///         // `dial` waits for the host: never on a gRPC thread.
///         self.pool.unary(sink, move || {
///             let unavailable =
///                 |e: String| RpcStatus::with_message(RpcStatusCode::UNAVAILABLE, e);
///             let channel = broker
///                 .dial(req.add_server)
///                 .map_err(|e| unavailable(e.to_string()))?;
///             let sum = SumRequest { a: 40, b: req.value, ..Default::default() };
///             let reply = AddHelperClient::new(channel)
///                 .sum(&sum)
///                 .map_err(|e| unavailable(e.to_string()))?;
///             eprintln!("the host computed {}", reply.r);
///             Ok(Empty::default())
///         });
///     }
/// }
///
/// const HANDSHAKE: HandshakeConfig = HandshakeConfig {
///     protocol_version: 1,
///     magic_cookie_key: "BASIC_PLUGIN",
///     magic_cookie_value: "hello",
/// };
///
/// fn main() -> Result<(), goplugin::Error> {
///     let builder = PluginServer::builder(HANDSHAKE);
///     let service = CallsBack {
///         broker: builder.broker(),
///         pool: BlockingPool::new(4),
///     };
///     builder.service(create_counter(service)).build()?.serve()
/// }
/// ```
///
/// Both directions in short, as the README shows them:
///
/// ```no_run
/// # goplugin::include_proto!("counter");
/// # use counter::SumRequest;
/// # use counter_grpc::{AddHelper, AddHelperClient, create_add_helper};
/// # use goplugin::{Broker, HandshakeConfig, PluginServer};
/// # #[derive(Clone)]
/// # struct MyHelper;
/// # impl AddHelper for MyHelper {}
/// # const HANDSHAKE: HandshakeConfig = HandshakeConfig {
/// #     protocol_version: 1, magic_cookie_key: "BASIC_PLUGIN", magic_cookie_value: "hello" };
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (id, request) = (1, SumRequest::default());
/// let builder = PluginServer::builder(HANDSHAKE);
/// let broker: Broker = builder.broker();   // clone it into your services
/// // In a handler, with `id` from the host's request:
/// let channel = broker.dial(id)?;          // waits up to 5 s for the host
/// let reply = AddHelperClient::new(channel).sum(&request)?;
/// // The other way: serve something for the host under a fresh id,
/// // then send `id` to the host in a response.
/// let id = broker.next_id();
/// broker.accept_and_serve(id, vec![create_add_helper(MyHelper)])?;
/// # let _ = reply;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("next_id", &self.inner.next_id)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    next_id: AtomicU32,
    /// Announcements from the host, with when they arrived.
    received: Mutex<HashMap<u32, (ConnInfo, Instant)>>,
    arrived: Condvar,
    /// Our announcements: the open stream's sender, or a queue until the
    /// host opens the stream.
    outgoing: Mutex<Outgoing>,
    transport: OnceLock<Arc<Transport>>,
    servers: Mutex<Vec<(grpcio::Server, Option<SocketFile>)>>,
    /// Multiplexed dials: the host's knock acknowledgements by id (the
    /// error it sent, empty for none, and when it came), one knock at a
    /// time as in Go.
    acks: Mutex<HashMap<u32, (String, Instant)>>,
    acked: Condvar,
    knocking: Mutex<()>,
    closed: AtomicBool,
}

#[derive(Default)]
struct Outgoing {
    stream: Option<mpsc::UnboundedSender<ConnInfo>>,
    queued: Vec<ConnInfo>,
    closed: bool,
}

impl Broker {
    /// A fresh service id for [`accept_and_serve`](Self::accept_and_serve),
    /// to pass to the host inside an application message.
    pub fn next_id(&self) -> u32 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn transport(&self) -> Result<&Arc<Transport>> {
        self.inner.transport.get().ok_or_else(|| Error::Broker {
            reason: "the plugin server is not built yet; use the broker from service handlers"
                .into(),
        })
    }

    /// Serves `services` on a new listener, like the main one, and
    /// announces it to the host under `id`. Returns where it listens.
    ///
    /// When the host multiplexes, the listener is local to the plugin and
    /// nothing is announced: the host knocks for `id` and its next stream
    /// is bridged to it.
    pub fn accept_and_serve(&self, id: u32, services: Vec<grpcio::Service>) -> Result<Addr> {
        let transport = self.transport()?;
        let mut server = transport.server(services)?;
        let (listener, socket) = transport.serve_brokered(&mut server)?;
        {
            // Checked under the lock `shutdown` takes the servers with: a
            // server added after that would never be stopped.
            let mut servers = lock(&self.inner.servers);
            if self.inner.closed.load(Ordering::Relaxed) {
                drop(servers);
                transport::stop_server(&mut server, Duration::ZERO);
                return Err(shutting_down());
            }
            servers.push((server, socket));
        }
        transport.publish(id, &listener, self)?;
        Ok(listener)
    }

    fn announce(&self, info: ConnInfo) -> Result<()> {
        let mut outgoing = lock(&self.inner.outgoing);
        if outgoing.closed {
            return Err(shutting_down());
        }
        match &outgoing.stream {
            Some(stream) if stream.unbounded_send(info.clone()).is_ok() => {}
            _ => outgoing.queued.push(info),
        }
        Ok(())
    }

    /// Connects to the service the host announced under `id`, waiting up to
    /// 5 s for the announcement. Blocks: call it from a
    /// [`BlockingPool`](crate::BlockingPool) job, not on a gRPC thread.
    ///
    /// When the host multiplexes, the channel connects to a local listener
    /// of the plugin's, and each connection it makes knocks for `id` and
    /// becomes a yamux stream to the host. That listener closes 10 s after
    /// its last connection ended: dial again for a new channel rather than
    /// keeping an idle one for later.
    pub fn dial(&self, id: u32) -> Result<grpcio::Channel> {
        self.transport()?.dial_brokered(id, Arc::new(self.clone()))
    }

    /// Wires the broker to the built server's transport.
    pub(crate) fn attach(&self, transport: Arc<Transport>) {
        let _ = self.inner.transport.set(transport);
    }

    /// Ends the broker stream and stops every brokered server.
    pub(crate) fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        {
            let mut outgoing = lock(&self.inner.outgoing);
            outgoing.closed = true;
            outgoing.stream = None;
        }
        let servers = std::mem::take(&mut *lock(&self.inner.servers));
        for (mut server, socket) in servers {
            transport::stop_server(&mut server, Duration::ZERO);
            drop(socket);
        }
        if let Some(transport) = self.inner.transport.get() {
            transport.stop_bridges();
        }
    }

    /// Takes in one message of the other side's broker stream. Entries
    /// nobody claimed within 5 s are dropped as others arrive; `Err` (the
    /// stream is then ended) when the other side sends more than
    /// [`MAX_PENDING`] unclaimed entries or fields over [`MAX_FIELD`]
    /// bytes: what it sends cannot grow this side without bound.
    fn receive(&self, mut info: ConnInfo) -> std::result::Result<(), String> {
        let longest = [info.network.len(), info.address.len()]
            .into_iter()
            .chain(info.knock.as_ref().map(|k| k.error.len()))
            .max()
            .unwrap_or(0);
        if longest > MAX_FIELD {
            return Err(format!(
                "the other side sent a broker entry for service id {} with a field of {longest} \
                 bytes (at most {MAX_FIELD})",
                info.service_id
            ));
        }
        if let Some(knock) = info.knock.take() {
            let id = info.service_id;
            if knock.ack {
                let mut acks = lock(&self.inner.acks);
                acks.retain(|_, (_, at)| at.elapsed() < TIMEOUT);
                if acks.len() >= MAX_PENDING && !acks.contains_key(&id) {
                    return Err(too_many("knock acknowledgements"));
                }
                acks.insert(id, (knock.error, Instant::now()));
                self.inner.acked.notify_all();
            } else if knock.knock {
                self.answer_knock(id);
            }
            return Ok(());
        }
        let mut received = lock(&self.inner.received);
        received.retain(|_, (_, at)| at.elapsed() < TIMEOUT);
        if received.len() >= MAX_PENDING && !received.contains_key(&info.service_id) {
            return Err(too_many("announcements"));
        }
        received.insert(info.service_id, (info, Instant::now()));
        self.inner.arrived.notify_all();
        Ok(())
    }
}

impl Broker {
    /// The host knocked for `id`: route its next stream, and say so (the
    /// transport answers at once, or from a thread: this runs on the broker
    /// stream's thread).
    fn answer_knock(&self, id: u32) {
        let broker = self.clone();
        let reply = move |error| broker.acknowledge(id, error);
        match self.transport() {
            Ok(transport) => transport.answer_knock(id, reply),
            Err(err) => reply(err.to_string()),
        }
    }

    fn acknowledge(&self, id: u32, error: String) {
        let knock = Knock {
            knock: true,
            ack: true,
            error,
            ..Knock::default()
        };
        let _ = self.announce(ConnInfo {
            service_id: id,
            knock: Some(knock).into(),
            ..ConnInfo::default()
        });
    }
}

impl Rendezvous for Broker {
    fn announce(&self, id: u32, listener: &Addr) -> Result<()> {
        Broker::announce(
            self,
            ConnInfo {
                service_id: id,
                network: listener.network.as_str().to_string(),
                address: listener.address.clone(),
                ..ConnInfo::default()
            },
        )
    }

    fn announced(&self, id: u32) -> Result<String> {
        let deadline = Instant::now() + TIMEOUT;
        let info = wait_for(
            &self.inner.received,
            &self.inner.arrived,
            deadline,
            |received| {
                received.retain(|_, (_, at)| at.elapsed() < TIMEOUT);
                received.remove(&id).map(|(info, _)| info)
            },
        )
        .ok_or_else(|| Error::Broker {
            reason: format!(
                "the host announced no connection for service id {id} within {} s",
                TIMEOUT.as_secs()
            ),
        })?;
        // Parsed here, never handed to gRPC's target parser as it is; the
        // other side's brokered servers listen on this machine.
        address::dial_target(&info.network, &info.address, Reach::Local).map_err(|reason| {
            Error::Broker {
                reason: format!("service id {id}: the other side announced {reason}"),
            }
        })
    }

    /// go-plugin's knock: tells the host that the next stream the plugin
    /// opens is for `id`, and waits (5 s) for its go-ahead. A host that is
    /// not listening on `id` yet says so in its acknowledgement; that is
    /// retried within the 5 s, since hosts start serving and send the id
    /// concurrently.
    fn knock(&self, id: u32) -> std::result::Result<MutexGuard<'_, ()>, String> {
        // Held by the caller until its stream is open: the host gives the
        // next stream it accepts to the id it acknowledged last.
        let one_at_a_time = lock(&self.inner.knocking);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            lock(&self.inner.acks).remove(&id);
            let info = ConnInfo {
                service_id: id,
                knock: Some(Knock {
                    knock: true,
                    ..Knock::default()
                })
                .into(),
                ..ConnInfo::default()
            };
            self.announce(info).map_err(|err| err.to_string())?;
            let error = wait_for(&self.inner.acks, &self.inner.acked, deadline, |acks| {
                acks.remove(&id).map(|(error, _)| error)
            })
            .ok_or_else(|| {
                format!(
                    "the host did not answer the knock for service id {id} within {} s",
                    TIMEOUT.as_secs()
                )
            })?;
            if error.is_empty() {
                return Ok(one_at_a_time);
            }
            if Instant::now() + Duration::from_millis(50) >= deadline {
                return Err(format!(
                    "the host refused the knock for service id {id}: {error}"
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The most broker entries (announcements, or knock acknowledgements) the
/// other side may have waiting unclaimed: a plugin announces one per
/// brokered service it serves, and each is claimed or dropped within 5 s.
const MAX_PENDING: usize = 1024;

/// The longest network, address or knock error in a broker entry: a unix
/// socket path is at most 108 bytes.
const MAX_FIELD: usize = 4096;

fn too_many(what: &str) -> String {
    format!(
        "the other side has sent more than {MAX_PENDING} broker {what} that nobody claimed \
         within {} s",
        TIMEOUT.as_secs()
    )
}

fn shutting_down() -> Error {
    Error::Broker {
        reason: "the plugin is shutting down".into(),
    }
}

#[derive(Clone)]
struct BrokerService {
    broker: Broker,
}

impl GrpcBroker for BrokerService {
    fn start_stream(
        &mut self,
        ctx: RpcContext<'_>,
        stream: RequestStream<ConnInfo>,
        sink: DuplexSink<ConnInfo>,
    ) {
        let Some(receiver) = self.broker.open_stream() else {
            return;
        };
        ctx.spawn(self.broker.clone().receive_all(stream));
        ctx.spawn(send_all(receiver, sink));
    }
}

impl Broker {
    /// The other side opened the broker stream: our announcements go there
    /// from now on (queued ones first). `None` once shut down.
    fn open_stream(&self) -> Option<mpsc::UnboundedReceiver<ConnInfo>> {
        let (sender, receiver) = mpsc::unbounded();
        let mut outgoing = lock(&self.inner.outgoing);
        if outgoing.closed {
            return None;
        }
        for info in outgoing.queued.drain(..) {
            let _ = sender.unbounded_send(info);
        }
        outgoing.stream = Some(sender);
        Some(receiver)
    }

    /// Takes in what the other side announces until its stream ends.
    async fn receive_all<S>(self, stream: S)
    where
        S: futures::Stream<Item = grpcio::Result<ConnInfo>>,
    {
        let mut stream = std::pin::pin!(stream);
        while let Some(Ok(info)) = stream.next().await {
            if let Err(reason) = self.receive(info) {
                // Dropping the stream ends the call.
                log::error!("{reason}: the broker stream is closed");
                return;
            }
        }
    }

    /// The host's side: opens the broker stream to the plugin (go-plugin's
    /// host does so right after connecting), on `client`'s gRPC threads. A
    /// plugin without a broker service ends it at once; then brokered
    /// dials time out, as in go-plugin.
    pub(crate) fn open_to_plugin(&self, client: &GrpcBrokerClient) -> Result<()> {
        let (sink, stream) = client.start_stream()?;
        let Some(receiver) = self.open_stream() else {
            return Err(shutting_down());
        };
        client.spawn(self.clone().receive_all(stream));
        client.spawn(send_all(receiver, sink));
        Ok(())
    }
}

/// Sends our announcements on the broker stream until the broker shuts
/// down, then closes our half.
async fn send_all<S>(receiver: mpsc::UnboundedReceiver<ConnInfo>, mut sink: S)
where
    S: futures::Sink<(ConnInfo, WriteFlags), Error = grpcio::Error> + Unpin,
{
    let mut announcements = receiver.map(|info| Ok((info, WriteFlags::default())));
    if sink.send_all(&mut announcements).await.is_ok() {
        let _ = sink.close().await;
    }
}

/// The `plugin.GRPCBroker` service for `broker`.
pub(crate) fn service(broker: Broker) -> grpcio::Service {
    create_grpc_broker(BrokerService { broker })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announcement(id: u32, address: &str) -> ConnInfo {
        ConnInfo {
            service_id: id,
            network: "unix".into(),
            address: address.into(),
            ..ConnInfo::default()
        }
    }

    #[test]
    fn unclaimed_announcements_are_capped_and_expire() {
        let broker = Broker::default();
        for id in 0..MAX_PENDING as u32 {
            broker
                .receive(announcement(id, "/tmp/x"))
                .expect("within the cap");
        }
        // The same id again replaces its entry.
        broker
            .receive(announcement(0, "/tmp/y"))
            .expect("a replacement");
        let over = broker.receive(announcement(MAX_PENDING as u32, "/tmp/x"));
        assert!(over.expect_err("over the cap").contains("more than 1024"));
        // Entries older than 5 s go as the next one arrives.
        for (_, at) in lock(&broker.inner.received).values_mut() {
            *at -= TIMEOUT;
        }
        broker
            .receive(announcement(5000, "/tmp/x"))
            .expect("the expired ones are gone");
        assert_eq!(lock(&broker.inner.received).len(), 1);
    }

    #[test]
    fn oversized_fields_are_refused() {
        let broker = Broker::default();
        let long = "/".repeat(MAX_FIELD + 1);
        let refused = broker
            .receive(announcement(1, &long))
            .expect_err("too long");
        assert!(refused.contains("4097 bytes"), "{refused}");
        let knock = ConnInfo {
            service_id: 2,
            knock: Some(Knock {
                knock: true,
                ack: true,
                error: "e".repeat(MAX_FIELD + 1),
                ..Knock::default()
            })
            .into(),
            ..ConnInfo::default()
        };
        assert!(broker.receive(knock).is_err());
        assert!(lock(&broker.inner.received).is_empty());
        assert!(lock(&broker.inner.acks).is_empty());
    }
}
