//! How the plugin's gRPC servers are reached and how it dials the host,
//! decided once from the environment: the gRPC environment, the channel
//! arguments, the TLS credentials (AutoMTLS), where listeners bind, and
//! whether every connection is a yamux stream of the host's one connection
//! (go-plugin's `PLUGIN_MULTIPLEX_GRPC`). The server and the broker serve,
//! dial and stop through a [`Transport`] and never ask which it is, as
//! go-plugin's server code stays behind its `GRPCMuxer` interface.
//!
//! - **Direct** (every host before go-plugin 1.6, and later ones unless
//!   they multiplex): each server listens where the host dials it (a unix
//!   socket, or TCP on 127.0.0.1); a brokered server is announced on the
//!   broker stream, and a brokered dial connects to what the host announced.
//! - **Multiplexed**: the host dials one public socket once; each stream it
//!   opens is bridged to the local socket of the server it is meant for
//!   (the main one, or a brokered one after the host's knock), and a
//!   brokered dial connects to a local listener whose connections become
//!   streams to the host after the plugin's own knock ([`mux`](crate::mux)).

use std::collections::HashMap;
use std::fmt;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use grpcio::{ChannelBuilder, EnvBuilder, Environment, ServerBuilder};

use crate::env::PluginEnv;
use crate::error::{Error, Result};
use crate::listener::{self, Addr, GrpcBind, Prefer, RawBind, RawListener, SocketFile};
use crate::locks::{block_on_until, lock};
use crate::mux::Muxer;
use crate::sys;
use crate::tls::AutoMtls;

/// How long a brokered dial waits for the host (its announcement, or the
/// acknowledgement of a knock): go-plugin's 5 s.
pub(crate) const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

/// A multiplexed dial's local listener closes after this long without a
/// connection (its channel was dropped, or never used).
const BRIDGE_IDLE: Duration = Duration::from_secs(10);

/// gRPC's own limit on a received message, when the plugin sets none.
pub(crate) const GRPC_DEFAULT_RECEIVE_LIMIT: usize = 4 * 1024 * 1024;

/// What each of a plugin's gRPC servers may hold in memory, by default:
/// eight messages at the receive limit, and at least 32 MiB.
pub(crate) fn default_memory_quota(max_message_size: Option<usize>) -> usize {
    max_message_size
        .unwrap_or(GRPC_DEFAULT_RECEIVE_LIMIT)
        .saturating_mul(8)
        .max(32 * 1024 * 1024)
}

/// Calls a gRPC server has asked for ahead of their arrival. grpcio asks
/// for 1024 by default, which costs a millisecond before the handshake and
/// another when they are cancelled at shutdown; a go-plugin host has a few
/// calls in flight at once, and a call beyond the slots waits in gRPC's
/// queue for the next one, it is not refused.
const REQUEST_SLOTS: usize = 64;

/// Calls (streams) one connection may have open at once on a plugin's
/// servers, announced in HTTP/2's SETTINGS: a host's client waits for a
/// free one rather than failing. gRPC's default is no limit; a go-plugin
/// host has a few calls in flight (Terraform 10), and a peer that opens
/// thousands is held to this many, which the memory quota then bounds.
const MAX_CONCURRENT_STREAMS: i32 = 1024;

/// What the broker stream offers the transport: go-plugin's rendezvous
/// between the plugin and the host for brokered connections.
pub(crate) trait Rendezvous: Send + Sync + 'static {
    /// Tells the host that service `id` listens at `listener`.
    fn announce(&self, id: u32, listener: &Addr) -> Result<()>;
    /// Where the host serves `id`, once it says so (up to
    /// [`BROKER_TIMEOUT`]): a grpcio dial target.
    fn announced(&self, id: u32) -> Result<String>;
    /// go-plugin's knock: has the host give the plugin's next stream to
    /// its service `id`, and waits for its go-ahead. The guard is held
    /// until that stream is open: one knock at a time.
    fn knock(&self, id: u32) -> std::result::Result<MutexGuard<'_, ()>, String>;
}

/// The plugin's connections, main and brokered. Built once by
/// [`PluginServerBuilder::build`](crate::PluginServerBuilder::build).
pub(crate) struct Transport {
    env: PluginEnv,
    prefer: Prefer,
    tls: Option<Arc<AutoMtls>>,
    grpc_env: Arc<Environment>,
    max_message_size: Option<usize>,
    /// Bytes each of the plugin's gRPC servers may hold: see
    /// `PluginServerBuilder::memory_quota`.
    memory_quota: usize,
    link: Link,
    /// Set by [`stop_bridges`](Transport::stop_bridges): brokered dials'
    /// bridges end.
    bridges_closed: Arc<AtomicBool>,
    /// Socket files of the main server (its public one, and its local one
    /// when multiplexed), removed at [`close`](Transport::close).
    sockets: Mutex<Vec<SocketFile>>,
}

enum Link {
    Direct,
    Multiplexed(Multiplexed),
}

struct Multiplexed {
    muxer: Arc<Muxer>,
    /// The socket the host dials, until it does.
    public: Mutex<Option<RawListener>>,
    /// Socket files of brokered dials' local listeners, by bridge: a
    /// bridge removes its own when it ends, `close` whatever is left.
    bridge_sockets: Arc<Mutex<HashMap<u64, SocketFile>>>,
    next_bridge: AtomicU64,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("prefer", &self.prefer)
            .field("tls", &self.tls.is_some())
            .field("multiplexed", &matches!(self.link, Link::Multiplexed(_)))
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Reads AutoMTLS and multiplexing from `env`; `threads` gRPC
    /// completion queues; `prefer` for what the host dials.
    ///
    /// # Errors
    /// [`Error::InvalidEnv`] for a malformed `PLUGIN_CLIENT_CERT`.
    pub(crate) fn new(
        env: PluginEnv,
        prefer: Prefer,
        threads: usize,
        max_message_size: Option<usize>,
        memory_quota: usize,
    ) -> Result<Transport> {
        // AutoMTLS only when the host asks: a host that did not ask for TLS
        // panics on a certificate in the handshake line.
        let tls = env
            .client_cert()
            .map(AutoMtls::new)
            .transpose()?
            .map(Arc::new);
        // grpcio unwraps the spawning of its completion-queue threads: out
        // of threads, that is a panic, caught here and said as what it is
        // (the default panic hook has printed it; with panic = "abort" the
        // process ends there).
        let grpc_env = std::panic::catch_unwind(|| {
            EnvBuilder::new()
                .cq_count(threads)
                .name_prefix("goplugin-grpc")
                .build()
        })
        .map(Arc::new)
        .map_err(|_| Error::OutOfResources {
            what: "threads",
            reason: format!(
                "gRPC could not start its {threads} completion-queue thread(s): the OS \
                 limits the plugin's threads (ulimit -u, cgroup pids.max)"
            ),
        })?;
        Ok(Transport::with(
            env,
            prefer,
            tls,
            grpc_env,
            max_message_size,
            memory_quota,
        ))
    }

    /// A host's transport, for the servers it serves to a plugin through
    /// the broker and its dials of the plugin's: `env` holds where its
    /// unix sockets go (`PLUGIN_UNIX_SOCKET_DIR`/`_GROUP`, `TMPDIR`), `tls`
    /// the AutoMTLS pair (the host's certificate, the plugin's trusted).
    /// Never multiplexed.
    pub(crate) fn for_host(
        env: PluginEnv,
        tls: Option<Arc<AutoMtls>>,
        grpc_env: Arc<Environment>,
        max_message_size: usize,
    ) -> Transport {
        Transport::with(
            env,
            Prefer::Unix,
            tls,
            grpc_env,
            Some(max_message_size),
            default_memory_quota(Some(max_message_size)),
        )
    }

    fn with(
        env: PluginEnv,
        prefer: Prefer,
        tls: Option<Arc<AutoMtls>>,
        grpc_env: Arc<Environment>,
        max_message_size: Option<usize>,
        memory_quota: usize,
    ) -> Transport {
        Transport {
            env,
            prefer,
            tls,
            grpc_env,
            max_message_size,
            memory_quota,
            link: Link::Direct,
            bridges_closed: Arc::new(AtomicBool::new(false)),
            sockets: Mutex::new(Vec::new()),
        }
    }

    /// The plugin's certificate, when the host runs AutoMTLS.
    pub(crate) fn tls(&self) -> Option<&AutoMtls> {
        self.tls.as_deref()
    }

    /// Channel arguments with this side's message limit and a memory
    /// quota named `quota`: what its servers and its channels share.
    fn limited(&self, quota: &str) -> ChannelBuilder {
        let quota = grpcio::ResourceQuota::new(Some(quota)).resize_memory(self.memory_quota);
        let builder = ChannelBuilder::new(Arc::clone(&self.grpc_env)).set_resource_quota(quota);
        match self.max_message_size {
            Some(bytes) => {
                let bytes = i32::try_from(bytes).unwrap_or(i32::MAX);
                builder
                    .max_receive_message_len(bytes)
                    .max_send_message_len(bytes)
            }
            None => builder,
        }
    }

    /// A gRPC server with `services`, configured as all of the plugin's
    /// are: no `SO_REUSEPORT`, the message limit, the request slots.
    pub(crate) fn server(&self, services: Vec<grpcio::Service>) -> Result<grpcio::Server> {
        // gRPC's core opens a stream's flow-control window to the length a
        // message declares, and checks the receive limit only once it has
        // it all: a local client could make the plugin hold hundreds of MB.
        // Over the quota, gRPC resets the streams that hold the most.
        let args = self
            .limited("goplugin")
            // gRPC sets SO_REUSEPORT by default: then a "successful" bind
            // could share a port with another process.
            .reuse_port(false)
            .max_concurrent_stream(MAX_CONCURRENT_STREAMS);
        let mut builder = ServerBuilder::new(Arc::clone(&self.grpc_env))
            .channel_args(args.build_args())
            .requests_slot_per_cq(REQUEST_SLOTS);
        for service in services {
            builder = builder.register_service(service);
        }
        Ok(builder.build()?)
    }

    /// Binds the main `server`: where the host dials it, or, multiplexed,
    /// locally behind the public socket the host dials. Returns the
    /// address for the handshake line. Called once, before
    /// [`start`](Self::start).
    pub(crate) fn bind_main(&mut self, server: &mut grpcio::Server) -> Result<Addr> {
        let mut binder = GrpcBind {
            server,
            tls: self.tls.as_deref(),
        };
        if self.env.multiplex_grpc() != Some(true) {
            let (listener, socket) = listener::bind(&mut binder, self.prefer, &self.env)?;
            lock(&self.sockets).extend(socket);
            return Ok(listener);
        }
        let (local, local_socket) = listener::bind_local(&mut binder, &self.env)?;
        let mut raw = RawBind::default();
        let (public, public_socket) = listener::bind(&mut raw, self.prefer, &self.env)?;
        lock(&self.sockets).extend(local_socket.into_iter().chain(public_socket));
        self.link = Link::Multiplexed(Multiplexed {
            muxer: Muxer::new(local),
            public: Mutex::new(raw.0),
            bridge_sockets: Arc::default(),
            next_bridge: AtomicU64::new(0),
        });
        Ok(public)
    }

    /// Once the main server runs: multiplexed, waits on a thread for the
    /// host's connection; `on_host_gone` runs when it ends.
    pub(crate) fn start(&self, on_host_gone: Box<dyn FnOnce() + Send>) -> Result<()> {
        let Link::Multiplexed(mux) = &self.link else {
            return Ok(());
        };
        match lock(&mux.public).take() {
            Some(public) => mux
                .muxer
                .start(public, on_host_gone)
                .map_err(|err| Error::Broker {
                    reason: format!("cannot wait for the multiplexed connection: {err}"),
                }),
            None => Ok(()),
        }
    }

    /// Binds and starts a brokered `server`. Returns where it listens;
    /// [`publish`](Self::publish) then lets the host know.
    pub(crate) fn serve_brokered(
        &self,
        server: &mut grpcio::Server,
    ) -> Result<(Addr, Option<SocketFile>)> {
        let mut binder = GrpcBind {
            server,
            tls: self.tls.as_deref(),
        };
        let (listener, socket) = match &self.link {
            Link::Direct => listener::bind(&mut binder, self.prefer, &self.env)?,
            Link::Multiplexed(_) => listener::bind_local(&mut binder, &self.env)?,
        };
        server.start();
        Ok((listener, socket))
    }

    /// Lets the host reach the brokered server at `listener` as service
    /// `id`: announced on the broker stream, or, multiplexed, the target of
    /// the host's knocks for `id`.
    pub(crate) fn publish(
        &self,
        id: u32,
        listener: &Addr,
        rendezvous: &dyn Rendezvous,
    ) -> Result<()> {
        match &self.link {
            Link::Direct => rendezvous.announce(id, listener),
            Link::Multiplexed(mux) => {
                mux.muxer.register(id, listener.clone());
                Ok(())
            }
        }
    }

    /// A channel to the host's service `id`. Blocks up to
    /// [`BROKER_TIMEOUT`] (and a second more to connect, multiplexed).
    pub(crate) fn dial_brokered(
        &self,
        id: u32,
        rendezvous: Arc<dyn Rendezvous>,
    ) -> Result<grpcio::Channel> {
        let mux = match &self.link {
            Link::Direct => return Ok(self.channel(&rendezvous.announced(id)?)),
            Link::Multiplexed(mux) => mux,
        };
        let failure = Arc::new(Mutex::new(None));
        let listener = self.bridge(mux, id, rendezvous, Arc::clone(&failure))?;
        let channel = self.channel(&listener.dial_target());
        // Connect now, so that an id the host does not serve fails here, as
        // it does without multiplexing, rather than at the first call.
        let deadline = Instant::now() + BROKER_TIMEOUT + Duration::from_secs(1);
        while Instant::now() < deadline {
            let step = channel.wait_for_connected(Duration::from_millis(100));
            if futures::executor::block_on(step) {
                return Ok(channel);
            }
            if let Some(why) = lock(&failure).take() {
                return Err(Error::Broker {
                    reason: format!("cannot dial service id {id}: {why}"),
                });
            }
        }
        Err(Error::Broker {
            reason: format!(
                "cannot dial service id {id}: the connection through the multiplexed \
                 stream did not come up"
            ),
        })
    }

    /// The host knocked for its next stream to go to service `id`:
    /// `reply` gets the acknowledgement's error ("" for none), at once, or
    /// from a thread once `id` is served (hosts send an id while they start
    /// serving it), within [`BROKER_TIMEOUT`].
    pub(crate) fn answer_knock(&self, id: u32, reply: impl FnOnce(String) + Send + 'static) {
        let Link::Multiplexed(mux) = &self.link else {
            return reply("the plugin does not multiplex".to_string());
        };
        if mux.muxer.accept_knock(id, Duration::ZERO).is_ok() {
            return reply(String::new());
        }
        let muxer = Arc::clone(&mux.muxer);
        // Shared with the thread, so that it is still ours to call if the
        // thread cannot start.
        let reply = Arc::new(Mutex::new(Some(reply)));
        let replied = Arc::clone(&reply);
        let waiting = thread::Builder::new()
            .name("goplugin-broker-knock".into())
            .spawn(move || {
                let error = muxer.accept_knock(id, BROKER_TIMEOUT).err();
                if let Some(reply) = lock(&replied).take() {
                    reply(error.unwrap_or_default());
                }
            });
        // Taken only when the thread never ran: otherwise it is the thread's.
        if let Err(err) = waiting
            && let Some(reply) = lock(&reply).take()
        {
            reply(format!("cannot wait for broker id {id}: {err}"));
        }
    }

    /// A channel to `target` with this side's TLS, message limit and
    /// memory quota: gRPC's core checks the receive limit only once a
    /// message is whole, and the quota is what keeps a peer that announces
    /// a huge message from making this side buffer it (over the quota, the
    /// call is reset).
    pub(crate) fn channel(&self, target: &str) -> grpcio::Channel {
        let builder = self.limited("goplugin-channel");
        match &self.tls {
            Some(tls) => builder
                .override_ssl_target("localhost")
                .set_credentials(tls.channel_credentials())
                .connect(target),
            None => builder.connect(target),
        }
    }

    /// [`channel`](Self::channel) to a plugin that has printed its
    /// handshake line, so listens already. Without TLS, its unix socket is
    /// connected here when it accepts at once, and the socket handed to
    /// gRPC: gRPC's resolver and connection machinery cost the first call
    /// about 0.4 ms (measured: a start's health check 1.12 → 0.74 ms).
    /// Such a channel never reconnects, which a plugin's listener never
    /// needs (its end is the plugin's); brokered dials, whose listener may
    /// come up after the id is announced, keep gRPC's connect. gRPC takes
    /// over a connected socket only without TLS.
    pub(crate) fn channel_to_plugin(&self, target: &str) -> grpcio::Channel {
        let socket = match (&self.tls, &self.link) {
            (None, Link::Direct) => target.strip_prefix("unix:").and_then(sys::connect_unix_now),
            _ => None,
        };
        match socket {
            Some(socket) => sys::channel_over(self.limited("goplugin-channel"), target, socket),
            None => self.channel(target),
        }
    }

    /// A local listener whose connections are knocked through to the
    /// host's `id` as streams of the multiplexed connection.
    fn bridge(
        &self,
        mux: &Multiplexed,
        id: u32,
        rendezvous: Arc<dyn Rendezvous>,
        failure: Arc<Mutex<Option<String>>>,
    ) -> Result<Addr> {
        let mut binder = RawBind::default();
        let (listener, socket) = listener::bind_local(&mut binder, &self.env)?;
        let Some(raw) = binder.0 else {
            return Err(Error::Broker {
                reason: "no local listener for a multiplexed dial".into(),
            });
        };
        let bridge = mux.next_bridge.fetch_add(1, Ordering::Relaxed);
        if let Some(socket) = socket {
            lock(&mux.bridge_sockets).insert(bridge, socket);
        }
        let muxer = Arc::clone(&mux.muxer);
        let closed = Arc::clone(&self.bridges_closed);
        let sockets = Arc::clone(&mux.bridge_sockets);
        thread::Builder::new()
            .name("goplugin-broker-dial".into())
            .spawn(move || {
                run_bridge(id, &raw, &muxer, &*rendezvous, &failure, &closed);
                lock(&sockets).remove(&bridge);
            })
            .map_err(|err| Error::Broker {
                reason: format!("cannot start a thread for a multiplexed dial: {err}"),
            })?;
        Ok(listener)
    }

    /// Stops whatever the transport runs: brokered dials' bridges, the wait
    /// for the host's multiplexed connection and the session on it, and
    /// removes the socket files. Last in a stop: the answer to the host's
    /// `Shutdown` travels on the multiplexed connection.
    pub(crate) fn close(&self) {
        self.stop_bridges();
        if let Link::Multiplexed(mux) = &self.link {
            mux.muxer.close();
        }
        lock(&self.sockets).clear();
    }

    /// Ends brokered dials' bridges (their threads notice within 200 ms)
    /// and removes their socket files: the first step of a stop, with the
    /// broker's.
    pub(crate) fn stop_bridges(&self) {
        self.bridges_closed.store(true, Ordering::Relaxed);
        if let Link::Multiplexed(mux) = &self.link {
            lock(&mux.bridge_sockets).clear();
        }
    }
}

/// Takes a brokered dial's local connections, knocks for `id` and opens a
/// stream to the host for each, until the transport closes or the listener
/// has been idle for [`BRIDGE_IDLE`]. What fails goes to `failure` for the
/// dial that waits.
fn run_bridge(
    id: u32,
    raw: &RawListener,
    muxer: &Muxer,
    rendezvous: &dyn Rendezvous,
    failure: &Mutex<Option<String>>,
    closed: &AtomicBool,
) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut idle_since = Instant::now();
    while !closed.load(Ordering::Relaxed) {
        if active.load(Ordering::Relaxed) > 0 {
            idle_since = Instant::now();
        } else if idle_since.elapsed() >= BRIDGE_IDLE {
            break;
        }
        let mut poll = [libc::pollfd {
            fd: raw.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if !matches!(sys::poll(&mut poll, 200), Ok(1..)) {
            continue;
        }
        let Ok(local) = raw.accept() else { continue };
        let Some(session) = muxer.session().cloned() else {
            *lock(failure) = Some("the host has not connected".to_string());
            continue;
        };
        let knocked = match rendezvous.knock(id) {
            Ok(knocked) => knocked,
            Err(err) => {
                log::warn!("broker: {err}");
                *lock(failure) = Some(err);
                continue;
            }
        };
        active.fetch_add(1, Ordering::Relaxed);
        let ended = Arc::clone(&active);
        let on_end = Box::new(move || {
            ended.fetch_sub(1, Ordering::Relaxed);
        });
        // After an acknowledged knock a stream must follow: the host has
        // unblocked its listener for it.
        let opened = session.open(local, on_end);
        drop(knocked);
        if let Err(err) = opened {
            active.fetch_sub(1, Ordering::Relaxed);
            log::warn!("broker: cannot open a multiplexed stream for id {id}: {err}");
            *lock(failure) = Some(err.to_string());
        }
    }
}

/// Stops a gRPC server of the plugin, main or brokered: no new calls,
/// calls in progress get up to `grace`, then the rest (streams included)
/// are cancelled.
pub(crate) fn stop_server(server: &mut grpcio::Server, grace: Duration) {
    let mut shutdown = server.shutdown();
    let finished =
        !grace.is_zero() && block_on_until(&mut shutdown, Instant::now() + grace).is_some();
    if !finished {
        server.cancel_all_calls();
        // Once cancelled, gRPC completes the shutdown within about a
        // millisecond.
        let _ = block_on_until(shutdown, Instant::now() + Duration::from_secs(1));
    }
}
