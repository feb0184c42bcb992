//! The plugin's gRPC server: build, print the handshake, serve until the
//! host says stop. Mirrors go-plugin's `server.go` (`Serve`) and
//! `grpc_server.go`.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use crate::broker::{self, Broker};
use crate::env::PluginEnv;
use crate::error::{Error, Result};
use crate::handshake::{HandshakeConfig, HandshakeLine, negotiate_version};
use crate::listener::{Addr, Prefer};
use crate::ready::ReadyHandle;
use crate::reattach::ReattachConfig;
use crate::shutdown::{ShutdownHandle, Stop};
use crate::transport::{self, Transport};
use crate::{controller, health, signals, stdio, watchdog};

/// Serves `service` as a go-plugin plugin and blocks until the host shuts
/// it down: the one call a plugin's `main` needs.
///
/// Shorthand for
/// `PluginServer::builder(handshake).service(service).build()?.serve()`;
/// see [`PluginServerBuilder`] for everything it does.
///
/// ```no_run
/// use goplugin::HandshakeConfig;
/// # fn create_my_service() -> goplugin::grpcio::Service { unimplemented!() }
///
/// const HANDSHAKE: HandshakeConfig = HandshakeConfig {
///     protocol_version: 1,
///     magic_cookie_key: "BASIC_PLUGIN",
///     magic_cookie_value: "hello",
/// };
///
/// fn main() -> Result<(), goplugin::Error> {
///     goplugin::serve(HANDSHAKE, create_my_service())
/// }
/// ```
pub fn serve<S: AsRef<str>>(handshake: HandshakeConfig<S>, service: grpcio::Service) -> Result<()> {
    PluginServer::builder(handshake)
        .service(service)
        .build()?
        .serve()
}

/// The whole `main` of a plugin binary, as go-plugin's Go plugins behave:
///
/// 1. without `handshake`'s magic cookie, go-plugin's "This binary is a
///    plugin…" message goes to stderr, in plain text, and the exit code is
///    1 — nothing else happens, nothing is written on stdout;
/// 2. logging starts ([`logging::init`](crate::logging::init) at `Trace`:
///    hclog JSON on stderr; as with go-plugin's Go plugins, the plugin logs
///    everything and the host filters: go-plugin re-levels each line and
///    drops those below its own logger's level, e.g. Terraform shows debug
///    and trace lines only under `TF_LOG=trace`). To log less, install a
///    logger before calling `plugin_main`, e.g.
///    `goplugin::logging::init(log::LevelFilter::Info)`: the first logger
///    installed is the one used;
/// 3. `run` gets the environment; an error it returns is logged as
///    `"<name> cannot serve: <error>"` and the exit code is 1.
///
/// ```no_run
/// use goplugin::{HandshakeConfig, PluginServer};
/// use std::process::ExitCode;
/// # fn create_my_service() -> goplugin::grpcio::Service { unimplemented!() }
///
/// const HANDSHAKE: HandshakeConfig = HandshakeConfig {
///     protocol_version: 1,
///     magic_cookie_key: "BASIC_PLUGIN",
///     magic_cookie_value: "hello",
/// };
///
/// fn main() -> ExitCode {
///     goplugin::plugin_main(HANDSHAKE, "my-plugin", |env| {
///         PluginServer::builder(HANDSHAKE)
///             .env(env)
///             .service(create_my_service())
///             .build()?
///             .serve()
///     })
/// }
/// ```
pub fn plugin_main<S: AsRef<str>, E: fmt::Display>(
    handshake: HandshakeConfig<S>,
    name: &str,
    run: impl FnOnce(PluginEnv) -> std::result::Result<(), E>,
) -> std::process::ExitCode {
    let env = PluginEnv::from_process();
    if let Err(err @ Error::NotLaunchedByHost { .. }) = env.verify_cookie(&handshake) {
        let _ = writeln!(io::stderr(), "{err}");
        return std::process::ExitCode::FAILURE;
    }
    // Fails only when the binary set up another logger first: then that
    // one is used, at its level.
    let _ = crate::logging::init(log::LevelFilter::Trace);
    let code = match run(env) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            log::error!("{name} cannot serve: {err}");
            std::process::ExitCode::FAILURE
        }
    };
    // Lines still queued for stderr are written before the process ends.
    log::logger().flush();
    code
}

/// Configures a [`PluginServer`]. Made by [`PluginServer::builder`].
///
/// [`build`](Self::build) does every step that can fail, in go-plugin's
/// order, and prints nothing:
/// 1. checks the magic cookie (the binary was started by its host);
/// 2. picks the app protocol version from `PLUGIN_PROTOCOL_VERSIONS`;
/// 3. binds a listener: a unix socket (in `PLUGIN_UNIX_SOCKET_DIR`, else
///    `TMPDIR`, else `/tmp`) or, with [`force_tcp`](Self::force_tcp) or when
///    a unix socket cannot work, TCP on 127.0.0.1 within
///    `PLUGIN_MIN_PORT..=PLUGIN_MAX_PORT`;
/// 4. registers the negotiated version's services next to the protocol's
///    own: health (`"plugin"` SERVING) and `plugin.GRPCController`.
pub struct PluginServerBuilder {
    handshake: HandshakeConfig<String>,
    services: BTreeMap<u32, Vec<grpcio::Service>>,
    env: Option<PluginEnv>,
    threads: usize,
    max_message_size: Option<usize>,
    memory_quota: Option<usize>,
    prefer: Prefer,
    output: Option<Box<dyn Write + Send>>,
    ignore_sigint: bool,
    stop_on_signals: bool,
    forward_stdio: bool,
    watch_host: bool,
    shutdown_grace: Duration,
    broker: Broker,
    debug: bool,
    provider: Option<String>,
}

impl fmt::Debug for PluginServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginServerBuilder")
            .field("handshake", &self.handshake)
            .field("versions", &self.services.keys().collect::<Vec<_>>())
            .field("env", &self.env)
            .field("threads", &self.threads)
            .field("max_message_size", &self.max_message_size)
            .field("memory_quota", &self.memory_quota)
            .field("prefer", &self.prefer)
            .field("ignore_sigint", &self.ignore_sigint)
            .field("stop_on_signals", &self.stop_on_signals)
            .field("forward_stdio", &self.forward_stdio)
            .field("watch_host", &self.watch_host)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("debug", &self.debug)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

/// What a host sets that a plugin in debug mode ignores: nobody started it.
const HOST_ONLY_VARS: [&str; 3] = [
    crate::env::PLUGIN_PROTOCOL_VERSIONS,
    crate::env::PLUGIN_CLIENT_CERT,
    crate::env::PLUGIN_MULTIPLEX_GRPC,
];

impl PluginServerBuilder {
    /// Adds a service for the handshake's `protocol_version`. Repeatable.
    pub fn service(self, service: grpcio::Service) -> Self {
        let version = self.handshake.protocol_version;
        self.versioned_service(version, service)
    }

    /// The plugin's [`Broker`], for services that open extra connections to
    /// or from the host (go-plugin's bidirectional plugins). Take it before
    /// building those services; it works once the server is built.
    pub fn broker(&self) -> Broker {
        self.broker.clone()
    }

    /// Adds a service for app protocol `version`, like go-plugin's
    /// `VersionedPlugins`. The plugin supports every version that has a
    /// service; only the negotiated version's services are served.
    pub fn versioned_service(mut self, version: u32, service: grpcio::Service) -> Self {
        self.services.entry(version).or_default().push(service);
        self
    }

    /// The environment to read instead of the process's (for tests and
    /// embedding). Default: [`PluginEnv::from_process`].
    pub fn env(mut self, env: PluginEnv) -> Self {
        self.env = Some(env);
        self
    }

    /// Number of gRPC completion-queue threads. Default: 1.
    ///
    /// A go-plugin host uses one connection, and grpcio runs all handlers of
    /// a connection on one completion-queue thread, so more threads help
    /// only with several connections. Run blocking handler code on a
    /// [`BlockingPool`](crate::BlockingPool) instead.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// The largest message, in bytes, the plugin accepts or sends. Larger
    /// requests fail with `RESOURCE_EXHAUSTED` before a handler sees them.
    /// Default: gRPC's 4 MiB for requests, no limit for responses.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = Some(bytes);
        self
    }

    /// How much memory each of the plugin's gRPC servers (the main one, and
    /// each brokered one) may hold at once, in bytes: messages being
    /// received, buffers of every connection. Over
    /// it, gRPC resets the streams that hold the most with
    /// `RESOURCE_EXHAUSTED` (a client may retry). Without it gRPC's core
    /// would hold a whole oversized message before refusing it (it opens
    /// the flow-control window to the length a message declares): a 600 MB
    /// message left a plugin at 605 MB of RSS, where with the default it
    /// stays near 20 MB. Default: eight messages of the
    /// [`max_message_size`](Self::max_message_size) (gRPC's 4 MiB when
    /// unset), at least 32 MiB.
    pub fn memory_quota(mut self, bytes: usize) -> Self {
        self.memory_quota = Some(bytes);
        self
    }

    /// Listen on TCP (127.0.0.1, within `PLUGIN_MIN_PORT..=PLUGIN_MAX_PORT`)
    /// instead of a unix socket. Default: false, a unix socket as go-plugin's
    /// own plugins use on Linux, with TCP only as a fallback.
    pub fn force_tcp(mut self, tcp: bool) -> Self {
        self.prefer = if tcp { Prefer::Tcp } else { Prefer::Unix };
        self
    }

    /// Where [`PluginServer::serve`] writes the handshake line. Default:
    /// stdout, which is what a host reads.
    ///
    /// [`std::io::stdout()`] given here is the default: the real stdout,
    /// past the capture of [`forward_stdio`](Self::forward_stdio) (which
    /// makes fd 1 a pipe to the host's stdio stream before the line is
    /// written). Any other writer gets the line as is, for tests or a host
    /// that reads it from somewhere else.
    pub fn handshake_output<W: Write + Send + 'static>(mut self, output: W) -> Self {
        let stdout = (&output as &dyn Any).is::<io::Stdout>();
        self.output = if stdout { None } else { Some(Box::new(output)) };
        self
    }

    /// Whether [`PluginServer::serve`] ignores SIGINT, as go-plugin's `Serve`
    /// does: Ctrl-C reaches the whole process group, and the host decides
    /// when its plugins stop. Default: true.
    ///
    /// The signal is caught by a handler that does nothing, so child
    /// processes the plugin starts get the default disposition back; when
    /// `serve` returns (and no other server of the process serves), SIGINT
    /// does again what it did before.
    pub fn ignore_sigint(mut self, ignore: bool) -> Self {
        self.ignore_sigint = ignore;
        self
    }

    /// Whether SIGTERM and SIGHUP stop [`PluginServer::serve`] the way the
    /// host's `Kill()` does (calls in progress cancelled, the socket file
    /// removed, `serve` returns `Ok`), instead of killing the process and
    /// leaving its socket file behind, as they do to a Go plugin.
    /// Default: true. The handlers are installed while `serve` runs (reset
    /// in child processes at `exec`); when it returns, and no other server
    /// of the process serves, the signals do again what they did before.
    pub fn stop_on_signals(mut self, stop: bool) -> Self {
        self.stop_on_signals = stop;
        self
    }

    /// Whether [`PluginServer::serve`] forwards what the process writes to
    /// fds 1 and 2 once it serves (its own prints and its children's) to
    /// the host through `plugin.GRPCStdio`, as go-plugin's `Serve` does.
    /// Output from before the host subscribes is held for it up to 500 ms
    /// after the handshake; without a subscribed host, stdout is dropped
    /// and stderr passes through. Default: true. With false, fds 1 and 2
    /// are left alone (and anything printed to stdout reaches the host's
    /// stdout reader, which discards it).
    pub fn forward_stdio(mut self, forward: bool) -> Self {
        self.forward_stdio = forward;
        self
    }

    /// Whether [`PluginServer::serve`] stops by itself when the host is gone:
    /// its parent process exited, or nobody reads the plugin's stdout or
    /// stderr any more (the host died, even when it ran the plugin through
    /// `sh -c`). Noticed within about 100 ms. Default: true.
    pub fn watch_host(mut self, watch: bool) -> Self {
        self.watch_host = watch;
        self
    }

    /// How long a shutdown asked for with a [`ShutdownHandle`] waits for
    /// calls in progress before cancelling them. Default: 500 ms, well
    /// inside the 2 s a go-plugin host waits for the process to exit before
    /// it kills it. The host's own `Shutdown` (its `Kill()`) and a host
    /// that is gone cancel at once: nobody is left to read those answers.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Debug mode, go-plugin's `ServeConfig.Test` (terraform-plugin-go's
    /// `-debug`): the plugin is started by hand, say under a debugger, and
    /// a host attaches to it with the [`ReattachConfig`](crate::ReattachConfig)
    /// that [`PluginServer::reattach_config`] gives, instead of starting
    /// it. Then `build` skips the magic cookie, serves the plugin's highest
    /// app protocol version, without AutoMTLS or multiplexing (the host's
    /// variables, if any, are ignored), and [`serve`](PluginServer::serve)
    /// prints no handshake line, leaves stdout and stderr alone, does not
    /// watch for a host, and stops on Ctrl-C (SIGINT), SIGTERM, SIGHUP or
    /// a host's `Shutdown`. Print the reattach configuration before
    /// `serve`. Default: false.
    pub fn debug(mut self, debug: bool) -> Self {
        self.debug = debug;
        self
    }

    /// Debug mode for a Terraform or OpenTofu provider at `address`
    /// (terraform-plugin-go's `-debug`): [`debug`](Self::debug) mode, and
    /// [`serve`](PluginServer::serve) prints on stdout, once it accepts
    /// calls, the `TF_REATTACH_PROVIDERS='…'` line to set in the tool's
    /// environment. A short address, `namespace/type` as a
    /// configuration's `source` says it (`goplugin/kv`), is keyed under
    /// both tools' registries, so one line serves Terraform and OpenTofu
    /// alike; a full one, `hostname/namespace/type`, under its host only
    /// (see [`ReattachConfig::for_provider`]).
    ///
    /// `build` fails with [`Error::InvalidProviderAddress`] for an address
    /// the tools would refuse.
    pub fn debug_provider(mut self, address: impl Into<String>) -> Self {
        self.debug = true;
        self.provider = Some(address.into());
        self
    }

    /// Checks the environment, binds the listener and registers the
    /// services. Prints nothing.
    ///
    /// # Errors
    /// - [`Error::InvalidHandshakeConfig`]: the cookie key or value is empty;
    /// - [`Error::NotLaunchedByHost`]: the magic cookie is missing or wrong;
    /// - [`Error::InvalidEnv`]: `PLUGIN_MIN_PORT`/`PLUGIN_MAX_PORT` unusable;
    /// - [`Error::NoPortAvailable`]: every port of the range is taken;
    /// - [`Error::InvalidEnv`] for `PLUGIN_CLIENT_CERT`: not a PEM certificate;
    /// - [`Error::Bind`]: the unix socket cannot be created;
    /// - [`Error::Grpc`]: gRPC could not build the server;
    /// - [`Error::InvalidProviderAddress`]: see [`debug_provider`](Self::debug_provider).
    pub fn build(mut self) -> Result<PluginServer> {
        let mut env = self.env.take().unwrap_or_else(PluginEnv::from_process);
        if self.debug {
            env = env.without(&HOST_ONLY_VARS);
        } else {
            env.verify_cookie(&self.handshake)?;
        }
        // Before gRPC, which aborts the process when it runs out of them.
        check_descriptors()?;
        let version = self.negotiate(&env);
        let multiplex = env.multiplex_grpc().map(|_| true);
        // Before gRPC starts: what it logs from then on goes through `log`.
        crate::logging::redirect_grpc_log();
        let quota = self
            .memory_quota
            .unwrap_or_else(|| transport::default_memory_quota(self.max_message_size));
        let mut transport =
            Transport::new(env, self.prefer, self.threads, self.max_message_size, quota)?;
        let shutdown = ShutdownHandle::new();
        let stdio = Arc::new(stdio::Shared::default());
        let (health_service, health) = health::service();
        let mut services = vec![
            health_service,
            controller::service(shutdown.clone(), Arc::clone(&stdio)),
            stdio::service(Arc::clone(&stdio)),
            broker::service(self.broker.clone()),
        ];
        services.extend(self.services.remove(&version).unwrap_or_default());
        let mut server = transport.server(services)?;
        let listener = transport.bind_main(&mut server)?;
        let line = HandshakeLine {
            app_protocol_version: version,
            network: listener.network.clone(),
            address: listener.address.clone(),
            server_cert: transport.tls().map(|tls| tls.handshake_field().to_string()),
            multiplex,
        };
        let transport = Arc::new(transport);
        self.broker.attach(Arc::clone(&transport));
        let mut server = PluginServer {
            server,
            transport,
            health,
            listener,
            line,
            shutdown,
            output: self.output.take(),
            ignore_sigint: self.ignore_sigint,
            stop_on_signals: self.stop_on_signals,
            forward_stdio: self.forward_stdio,
            watch_host: self.watch_host,
            stdio,
            broker: self.broker.clone(),
            shutdown_grace: self.shutdown_grace,
            stopped: false,
            debug: self.debug,
            provider: None,
            ready: ReadyHandle::new(),
        };
        if let Some(address) = self.provider.take() {
            let providers = server.reattach_config().for_provider(&address)?;
            server.provider = Some(ReattachConfig::map_to_json(&providers));
        }
        Ok(server)
    }

    fn negotiate(&self, env: &PluginEnv) -> u32 {
        let supported: BTreeSet<u32> = if self.services.is_empty() {
            BTreeSet::from([self.handshake.protocol_version])
        } else {
            self.services.keys().copied().collect()
        };
        if self.debug {
            // No host offers versions: the newest the plugin serves.
            return supported
                .last()
                .copied()
                .unwrap_or(self.handshake.protocol_version);
        }
        let offered = env.protocol_versions();
        for entry in &offered.invalid {
            log::warn!(
                "server sent invalid plugin version {entry:?} in PLUGIN_PROTOCOL_VERSIONS; skipped"
            );
        }
        let version = negotiate_version(&supported, &offered.versions)
            .unwrap_or(self.handshake.protocol_version);
        if offered.versions.is_empty() {
            log::warn!(
                "PLUGIN_PROTOCOL_VERSIONS names no version; advertising app protocol {version}"
            );
        } else if !offered.versions.contains(&version) {
            log::warn!(
                "no common app protocol version: host offers {:?}, plugin supports {:?}; \
                 advertising {version} so the host reports the mismatch",
                offered.versions,
                supported
            );
        }
        version
    }
}

/// A plugin server that is bound and ready to announce itself.
///
/// Inspect it ([`handshake_line`](Self::handshake_line),
/// [`addr`](Self::addr)), take a
/// [`shutdown_handle`](Self::shutdown_handle), then [`serve`](Self::serve).
///
/// ```no_run
/// use goplugin::{HandshakeConfig, PluginServer};
/// # fn create_my_service() -> goplugin::grpcio::Service { unimplemented!() }
///
/// const HANDSHAKE: HandshakeConfig = HandshakeConfig {
///     protocol_version: 1,
///     magic_cookie_key: "BASIC_PLUGIN",
///     magic_cookie_value: "hello",
/// };
///
/// let server = PluginServer::builder(HANDSHAKE)
///     .service(create_my_service())
///     .threads(2)
///     .build()?;
/// eprintln!("listening on {}", server.addr().address);
/// let stop = server.shutdown_handle();
/// std::thread::spawn(move || {
///     std::thread::sleep(std::time::Duration::from_secs(60));
///     stop.shutdown();
/// });
/// server.serve()?;
/// # Ok::<(), goplugin::Error>(())
/// ```
pub struct PluginServer {
    server: grpcio::Server,
    /// How the host reaches the servers; closed (and its socket files
    /// removed) when the server stops, or when it is dropped unserved
    /// (the broker, which users may keep, holds it too).
    transport: Arc<Transport>,
    health: health::Health,
    listener: Addr,
    line: HandshakeLine,
    shutdown: ShutdownHandle,
    /// Where the handshake line goes; `None`: the real stdout.
    output: Option<Box<dyn Write + Send>>,
    ignore_sigint: bool,
    stop_on_signals: bool,
    forward_stdio: bool,
    watch_host: bool,
    stdio: Arc<stdio::Shared>,
    broker: Broker,
    shutdown_grace: Duration,
    /// Set once [`stop`](Self::stop) ran.
    stopped: bool,
    /// See [`PluginServerBuilder::debug`].
    debug: bool,
    /// `TF_REATTACH_PROVIDERS`' value, printed in debug mode (see
    /// [`PluginServerBuilder::debug_provider`]).
    provider: Option<String>,
    ready: ReadyHandle,
}

impl fmt::Debug for PluginServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginServer")
            .field("listener", &self.listener)
            .field("line", &self.line)
            .finish_non_exhaustive()
    }
}

impl PluginServer {
    /// Starts configuring a plugin server for `handshake`.
    pub fn builder<S: AsRef<str>>(handshake: HandshakeConfig<S>) -> PluginServerBuilder {
        PluginServerBuilder {
            handshake: handshake.owned(),
            services: BTreeMap::new(),
            env: None,
            threads: 1,
            max_message_size: None,
            memory_quota: None,
            prefer: Prefer::Unix,
            output: None,
            ignore_sigint: true,
            stop_on_signals: true,
            forward_stdio: true,
            watch_host: true,
            shutdown_grace: Duration::from_millis(500),
            broker: Broker::default(),
            debug: false,
            provider: None,
        }
    }

    /// The line [`serve`](Self::serve) prints.
    pub fn handshake_line(&self) -> &HandshakeLine {
        &self.line
    }

    /// Where the server listens.
    pub fn addr(&self) -> &Addr {
        &self.listener
    }

    /// Where a host finds this plugin: go-plugin's `ReattachConfig`, with
    /// `test` set in [debug mode](PluginServerBuilder::debug) (a host that
    /// attaches then never stops it). Its [`to_json`](crate::ReattachConfig::to_json)
    /// is what Terraform's `TF_REATTACH_PROVIDERS` holds for a provider.
    pub fn reattach_config(&self) -> ReattachConfig {
        ReattachConfig {
            protocol: "grpc".into(),
            protocol_version: self.line.app_protocol_version,
            addr: self.listener.clone(),
            pid: std::process::id(),
            test: self.debug,
        }
    }

    /// A handle that says when [`serve`](Self::serve) has written the
    /// handshake line: an application that embeds the plugin and prints on
    /// stdout waits for it first (see [`ReadyHandle`]).
    pub fn ready_handle(&self) -> ReadyHandle {
        self.ready.clone()
    }

    /// A handle that stops [`serve`](Self::serve) from any thread, as the
    /// host's `Shutdown` call does.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Starts serving, prints the handshake line (then flushes it: the
    /// [`ReadyHandle`] says so), and blocks until the host calls
    /// `GRPCController/Shutdown` or a [`ShutdownHandle`] is used. Returns
    /// once the server has stopped.
    ///
    /// # Errors
    /// [`Error::Handshake`] when the line cannot be written, for example
    /// because stdout is closed; [`Error::OutOfResources`] when the thread
    /// that watches for the host's death cannot start. The server is
    /// stopped again.
    pub fn serve(mut self) -> Result<()> {
        if self.debug {
            return self.serve_debug();
        }
        // Ignored while serving; given back as it was when `serve`
        // returns (an application that embeds the plugin keeps its Ctrl-C).
        let _sigint = if self.ignore_sigint {
            signals::ignore_sigint()
                .map_err(|reason| log::warn!("SIGINT is not ignored: {reason}"))
                .ok()
        } else {
            None
        };
        // Unregistered, and the signals given back, when `serve` returns.
        let _signals = match self
            .stop_on_signals
            .then(|| signals::stop_on_signals(self.shutdown.clone()))
            .transpose()
        {
            Ok(registered) => registered,
            Err(reason) => {
                let what = "threads";
                return self.fail(None, Error::OutOfResources { what, reason });
            }
        };
        self.server.start();
        let stop = self.shutdown.clone();
        if let Err(err) = self.transport.start(Box::new(move || stop.shutdown_now())) {
            return self.fail(None, err);
        }
        // Captured before the handshake: the host may call at once, and
        // whatever a call prints must not reach the real stdout, which the
        // host reads for the handshake only. The line goes past the capture.
        let mut capture = if self.forward_stdio {
            stdio::Capture::redirect(Arc::clone(&self.stdio))
                .map_err(|err| log::warn!("cannot forward stdout/stderr to the host: {err}"))
                .ok()
        } else {
            None
        };
        let line = format!("{}\n", self.line);
        let written = match (self.output.as_mut(), capture.as_ref()) {
            (Some(output), _) => output
                .write_all(line.as_bytes())
                .and_then(|()| output.flush()),
            (None, Some(capture)) => capture.write_real_stdout(line.as_bytes()),
            (None, None) => {
                let mut stdout = io::stdout().lock();
                stdout
                    .write_all(line.as_bytes())
                    .and_then(|()| stdout.flush())
            }
        };
        if let Err(err) = written {
            return self.fail(capture, Error::Handshake(err));
        }
        // Threads only once the handshake is out.
        if let Some(Err(err)) = capture.as_mut().map(stdio::Capture::start_readers) {
            let err = out_of_threads("read the plugin's stdout and stderr", &err);
            return self.fail(capture, err);
        }
        if self.watch_host {
            let fds = capture.as_ref().map_or([1, 2], stdio::Capture::real_fds);
            if let Err(err) = watchdog::watch(fds, self.shutdown.clone()) {
                // A plugin that cannot notice its host's death must not run.
                let err = out_of_threads("watch for the host's death", &err);
                return self.fail(capture, err);
            }
        }
        #[cfg(feature = "abseil-cpufreq")]
        measure_cpu_frequency();
        self.ready.ready();
        let how = self.shutdown.wait();
        if let Some(capture) = capture {
            capture.finish();
        }
        self.stop(how);
        Ok(())
    }

    /// [`serve`](Self::serve) in debug mode: no handshake line, no stdio
    /// capture, no watchdog; Ctrl-C stops it.
    fn serve_debug(mut self) -> Result<()> {
        let _signals = match signals::stop_on_signals_and_sigint(self.shutdown.clone()) {
            Ok(registered) => registered,
            Err(reason) => {
                let what = "threads";
                return self.fail(None, Error::OutOfResources { what, reason });
            }
        };
        self.server.start();
        log::info!(
            "serving in debug mode at {} {}; Ctrl-C stops it",
            self.listener.network.as_str(),
            self.listener.address
        );
        if let Some(providers) = &self.provider {
            let message = format!(
                "Provider started. To attach Terraform or OpenTofu, set in its environment:\n\n\
                 \tTF_REATTACH_PROVIDERS='{providers}'\n\n\
                 Ctrl-C stops the provider.\n"
            );
            let mut stdout = io::stdout().lock();
            let written = stdout
                .write_all(message.as_bytes())
                .and_then(|()| stdout.flush());
            drop(stdout);
            if let Err(err) = written {
                return self.fail(None, Error::Handshake(err));
            }
        }
        self.ready.ready();
        let how = self.shutdown.wait();
        self.stop(how);
        Ok(())
    }

    /// Gives fds 1 and 2 back (when captured), stops the server at once
    /// and returns `err`: `serve` could not go on.
    fn fail(&mut self, capture: Option<stdio::Capture>, err: Error) -> Result<()> {
        if let Some(capture) = capture {
            capture.finish();
        }
        self.stop(Stop::Now);
        Err(err)
    }

    /// Stops the server: no new calls; calls in progress get the grace
    /// period when `how` allows it, then whatever is left (streams
    /// included) is cancelled.
    fn stop(&mut self, how: Stop) {
        self.stopped = true;
        self.broker.shutdown();
        self.stdio.end_streams();
        self.health.shutdown();
        let grace = match how {
            Stop::Graceful => self.shutdown_grace,
            Stop::Now => Duration::ZERO,
        };
        transport::stop_server(&mut self.server, grace);
        // Last: a multiplexed connection carries the controller's answer,
        // and nothing listens on the socket files any more.
        self.transport.close();
    }
}

/// The error for a thread the plugin needs to `what` that the OS refused.
fn out_of_threads(what: &str, err: &io::Error) -> Error {
    Error::OutOfResources {
        what: "threads",
        reason: format!(
            "cannot start the thread to {what} ({err}): the OS limits the plugin's threads \
             (ulimit -u, RLIMIT_NPROC, cgroup pids.max)"
        ),
    }
}

/// File descriptors the plugin needs free at start: gRPC's pollers and
/// wake-up descriptors, the listener, the stdio pipes and duplicates, and
/// the host's first connection (measured: with fewer than 16 it cannot
/// capture stdio, with fewer than 8 gRPC's core aborts the process).
const START_DESCRIPTORS: usize = 16;

/// Fails with [`Error::OutOfResources`] when [`START_DESCRIPTORS`] are not
/// free: duplicates of stderr are taken and given back.
fn check_descriptors() -> Result<()> {
    use std::os::fd::AsFd;
    let mut held = Vec::with_capacity(START_DESCRIPTORS);
    for _ in 0..START_DESCRIPTORS {
        match io::stderr().as_fd().try_clone_to_owned() {
            Ok(fd) => held.push(fd),
            Err(err) if matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                let whose = if err.raw_os_error() == Some(libc::EMFILE) {
                    "the plugin's limit (ulimit -n, RLIMIT_NOFILE) leaves"
                } else {
                    "the system's table (fs.file-max) has"
                };
                return Err(Error::OutOfResources {
                    what: "file descriptors",
                    reason: format!(
                        "{whose} only {} free, the plugin needs {START_DESCRIPTORS}: \
                         raise the limit, or close descriptors the plugin inherits",
                        held.len()
                    ),
                });
            }
            // No stderr to copy: nothing to measure with; gRPC will tell.
            Err(_) => break,
        }
    }
    Ok(())
}

impl Drop for PluginServer {
    /// A server built and never served: nothing listens any more, so its
    /// socket files go now, not when the last `Broker` clone does.
    fn drop(&mut self) {
        self.ready.ended();
        if !self.stopped {
            self.broker.shutdown();
            self.transport.close();
        }
    }
}

/// With the `abseil-cpufreq` feature: abseil's CPU-frequency measurement
/// now, on a thread of its own, once per process, instead of in the first
/// call that meets a contended abseil mutex (csrc/absl_cpufreq.c).
#[cfg(feature = "abseil-cpufreq")]
fn measure_cpu_frequency() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = std::thread::Builder::new()
            .name("goplugin-cpufreq".into())
            .spawn(crate::sys::measure_cpu_frequency);
    });
}
