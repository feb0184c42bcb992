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
//! - announcements nobody claims are dropped after 5 s.
//!
//! Brokered servers stop, and their socket files go, when the plugin stops.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt, TryStreamExt};
use grpcio::{ChannelBuilder, DuplexSink, Environment, RequestStream, RpcContext, WriteFlags};

use crate::env::PluginEnv;
use crate::error::{Error, Result};
use crate::listener::{self, Listener, SocketFile, Transport};
use crate::proto::plugin::{ConnInfo, GrpcBroker, create_grpc_broker};
use crate::tls::{self, AutoMtls};

/// How long a dial waits for an id, and how long an unclaimed announcement
/// is kept: go-plugin's 5 s.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A handle on the plugin's broker. Cheap to clone; get it from
/// [`PluginServerBuilder::broker`](crate::PluginServerBuilder::broker)
/// before building the services that use it.
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
    config: OnceLock<Config>,
    servers: Mutex<Vec<(grpcio::Server, Option<SocketFile>)>>,
}

#[derive(Default)]
struct Outgoing {
    stream: Option<mpsc::UnboundedSender<ConnInfo>>,
    queued: Vec<ConnInfo>,
    closed: bool,
}

/// What brokered connections need from the main server's set-up.
pub(crate) struct Config {
    pub(crate) env: PluginEnv,
    pub(crate) transport: Transport,
    pub(crate) tls: Option<Arc<AutoMtls>>,
    pub(crate) grpc_env: Arc<Environment>,
}

impl Broker {
    /// A fresh service id for [`accept_and_serve`](Self::accept_and_serve),
    /// to pass to the host inside an application message.
    pub fn next_id(&self) -> u32 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn config(&self) -> Result<&Config> {
        self.inner.config.get().ok_or_else(|| Error::Broker {
            reason: "the plugin server is not built yet; use the broker from service handlers"
                .into(),
        })
    }

    /// Serves `services` on a new listener, like the main one, and
    /// announces it to the host under `id`. Returns where it listens.
    pub fn accept_and_serve(&self, id: u32, services: Vec<grpcio::Service>) -> Result<Listener> {
        let config = self.config()?;
        let mut builder = grpcio::ServerBuilder::new(Arc::clone(&config.grpc_env)).channel_args(
            ChannelBuilder::new(Arc::clone(&config.grpc_env))
                .reuse_port(false)
                .build_args(),
        );
        for service in services {
            builder = builder.register_service(service);
        }
        let mut server = builder.build()?;
        let credentials = || tls::listener_credentials(config.tls.as_deref());
        let (listener, socket) =
            listener::bind(&mut server, config.transport, &config.env, &credentials)?;
        server.start();
        let mut info = ConnInfo::new();
        info.set_service_id(id);
        info.set_network(listener.network.as_str().to_string());
        info.set_address(listener.address.clone());
        self.inner
            .servers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((server, socket));
        self.announce(info)?;
        Ok(listener)
    }

    fn announce(&self, info: ConnInfo) -> Result<()> {
        let mut outgoing = self
            .inner
            .outgoing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if outgoing.closed {
            return Err(Error::Broker {
                reason: "the plugin is shutting down".into(),
            });
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
    pub fn dial(&self, id: u32) -> Result<grpcio::Channel> {
        let config = self.config()?;
        let deadline = Instant::now() + TIMEOUT;
        let mut received = self
            .inner
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let info = loop {
            received.retain(|_, (_, at)| at.elapsed() < TIMEOUT);
            if let Some((info, _)) = received.remove(&id) {
                break info;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Broker {
                    reason: format!(
                        "the host announced no connection for service id {id} within {} s",
                        TIMEOUT.as_secs()
                    ),
                });
            }
            received = self
                .inner
                .arrived
                .wait_timeout(received, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        };
        drop(received);
        let target = match info.get_network() {
            "unix" => format!("unix:{}", info.get_address()),
            "tcp" => info.get_address().to_string(),
            other => {
                return Err(Error::Broker {
                    reason: format!("service id {id}: unknown network {other:?} from the host"),
                });
            }
        };
        let builder = ChannelBuilder::new(Arc::clone(&config.grpc_env));
        Ok(match &config.tls {
            Some(tls) => builder
                .override_ssl_target("localhost")
                .set_credentials(tls.channel_credentials())
                .connect(&target),
            None => builder.connect(&target),
        })
    }

    /// Wires the broker to the built server.
    pub(crate) fn configure(&self, config: Config) {
        let _ = self.inner.config.set(config);
    }

    /// Ends the broker stream and stops every brokered server.
    pub(crate) fn shutdown(&self) {
        {
            let mut outgoing = self
                .inner
                .outgoing
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            outgoing.closed = true;
            outgoing.stream = None;
        }
        let servers = std::mem::take(
            &mut *self
                .inner
                .servers
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for (mut server, socket) in servers {
            let stopped = server.shutdown();
            server.cancel_all_calls();
            let _ = futures::executor::block_on(stopped);
            drop(socket);
        }
    }

    fn receive(&self, info: ConnInfo) {
        let mut received = self
            .inner
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        received.insert(info.get_service_id(), (info, Instant::now()));
        self.inner.arrived.notify_all();
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
        mut sink: DuplexSink<ConnInfo>,
    ) {
        let (sender, receiver) = mpsc::unbounded();
        {
            let mut outgoing = self
                .broker
                .inner
                .outgoing
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if outgoing.closed {
                return;
            }
            for info in outgoing.queued.drain(..) {
                let _ = sender.unbounded_send(info);
            }
            outgoing.stream = Some(sender);
        }
        let broker = self.broker.clone();
        ctx.spawn(async move {
            let _ = stream
                .try_for_each(|info| {
                    broker.receive(info);
                    futures::future::ok(())
                })
                .await;
        });
        ctx.spawn(async move {
            let mut announcements = receiver.map(|info| Ok((info, WriteFlags::default())));
            if sink.send_all(&mut announcements).await.is_ok() {
                let _ = sink.close().await;
            }
        });
    }
}

/// The `plugin.GRPCBroker` service for `broker`.
pub(crate) fn service(broker: Broker) -> grpcio::Service {
    create_grpc_broker(BrokerService { broker })
}
