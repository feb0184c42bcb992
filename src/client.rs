//! The host side of go-plugin: start a plugin (or attach to a running
//! one), connect to it over gRPC, and stop it. go-plugin's `Client`,
//! `ClientConfig`, `ReattachConfig` and `SecureConfig`, blocking, on grpcio.
//!
//! [`Client::builder`] takes the same [`HandshakeConfig`] the plugin
//! serves; [`ClientBuilder::start`] launches the command, reads the
//! handshake line, connects, checks health `"plugin"`, opens the broker and
//! stdio streams, and hands over a [`grpcio::Channel`] for the negotiated
//! version's services. [`Client::kill`] (and dropping the `Client`) calls
//! `plugin.GRPCController/Shutdown`, waits up to 2 s for the plugin to exit,
//! then kills it.

mod log_entry;
mod output;
mod runner;
mod secure;
mod start;
mod stdio_sync;

pub use secure::SecureConfig;

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use grpcio::{CallOption, EnvBuilder, Environment};

use crate::address::Reach;
use crate::broker::Broker;
use crate::env::{
    PLUGIN_CLIENT_CERT, PLUGIN_MAX_PORT, PLUGIN_MIN_PORT, PLUGIN_PROTOCOL_VERSIONS,
    PLUGIN_UNIX_SOCKET_DIR, PLUGIN_UNIX_SOCKET_GROUP, PluginEnv,
};
use crate::error::{Error, Result, Step};
use crate::handshake::{HandshakeConfig, HandshakeLine};
use crate::health;
use crate::listener::Addr;
use crate::locks::lock;
use crate::proto::grpc_health::HealthClient;
use crate::proto::plugin::{Empty, GrpcControllerClient};
use crate::reattach::ReattachConfig;
use crate::sys;
use crate::tls::{AutoMtls, HostCertificate};
use crate::transport::Transport;

use output::{Event, Output, Sink, read_stderr, read_stdout};
use runner::Process;
use secure::resolve_program;
use start::{Connected, Dial, Starting};
use stdio_sync::StdioSubscription;

/// go-plugin's default `StartTimeout`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`Client::kill`] gives the plugin to exit after `Shutdown`.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long a plugin that failed to start has between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_millis(200);
/// go-plugin's default `PLUGIN_MIN_PORT`/`PLUGIN_MAX_PORT`.
const DEFAULT_PORTS: (u16, u16) = (10_000, 25_000);

/// How to start (or find) a plugin: go-plugin's `ClientConfig`. Get one
/// from [`Client::builder`].
pub struct ClientBuilder {
    handshake: HandshakeConfig<String>,
    versions: Vec<u32>,
    command: Option<Command>,
    reattach: Option<ReattachConfig>,
    secure: Option<SecureConfig>,
    auto_mtls: bool,
    tls: Option<AutoMtls>,
    start_timeout: Duration,
    ports: (u16, u16),
    unix_socket_dir: Option<PathBuf>,
    unix_socket_group: Option<String>,
    skip_host_env: bool,
    sync_stdout: Option<Sink>,
    sync_stderr: Option<Sink>,
    stderr: Option<Sink>,
    name: Option<String>,
    grpc_env: Option<Arc<Environment>>,
    allow_remote: bool,
    max_message_size: usize,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("handshake", &self.handshake)
            .field("versions", &self.versions)
            .field("command", &self.command)
            .field("reattach", &self.reattach)
            .field("auto_mtls", &self.auto_mtls)
            .field("start_timeout", &self.start_timeout)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// The plugin to start: a command run directly (no shell), with the
    /// host's environment plus go-plugin's variables, stdin from
    /// `/dev/null`, stdout and stderr read by the host. What you set on
    /// the command (arguments, working directory, variables) is kept.
    pub fn command(mut self, command: Command) -> ClientBuilder {
        self.command = Some(command);
        self
    }

    /// Attach to a plugin that is already running instead of starting one
    /// (go-plugin's `Reattach`; Terraform's debug mode).
    pub fn reattach(mut self, config: ReattachConfig) -> ClientBuilder {
        self.reattach = Some(config);
        self
    }

    /// The app protocol versions the host speaks, sent in
    /// `PLUGIN_PROTOCOL_VERSIONS` (go-plugin's `VersionedPlugins` keys).
    /// Default: the handshake's `protocol_version` alone. Pick the
    /// services for [`Client::negotiated_version`].
    pub fn versions(mut self, versions: impl IntoIterator<Item = u32>) -> ClientBuilder {
        self.versions = versions.into_iter().collect();
        self.versions.sort_unstable();
        self.versions.dedup();
        self
    }

    /// Refuse to start a binary whose SHA-256 differs.
    pub fn secure(mut self, config: SecureConfig) -> ClientBuilder {
        self.secure = Some(config);
        self
    }

    /// go-plugin's AutoMTLS: a fresh certificate for this launch goes to
    /// the plugin in `PLUGIN_CLIENT_CERT`, and only the certificate the
    /// plugin answers with (handshake field 6) is trusted. Off by default,
    /// as in go-plugin.
    pub fn auto_mtls(mut self, on: bool) -> ClientBuilder {
        self.auto_mtls = on;
        self
    }

    /// TLS with certificates you manage (go-plugin's `TLSConfig`, for a
    /// plugin that serves its own TLS): `cert_pem` and `key_pem` are
    /// presented; `trusted_pem` verifies the plugin (and plugins dialing
    /// brokered servers of the host), unless the plugin sends its
    /// certificate in its handshake line: then that one is trusted, as
    /// go-plugin's host does. Ignored under AutoMTLS.
    pub fn tls(mut self, trusted_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> ClientBuilder {
        self.tls = Some(AutoMtls::explicit(
            trusted_pem.to_vec(),
            cert_pem.to_vec(),
            key_pem.to_vec(),
        ));
        self
    }

    /// How long the plugin has to print its handshake line and be
    /// reachable. Default 1 minute (go-plugin's).
    pub fn start_timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.start_timeout = timeout;
        self
    }

    /// `PLUGIN_MIN_PORT`/`PLUGIN_MAX_PORT` for a plugin that listens on
    /// TCP. Default 10000–25000 (go-plugin's).
    pub fn port_range(mut self, min: u16, max: u16) -> ClientBuilder {
        self.ports = (min, max);
        self
    }

    /// `PLUGIN_UNIX_SOCKET_DIR`: where the plugin, and the host's brokered
    /// servers, put their unix sockets.
    pub fn unix_socket_dir(mut self, dir: impl Into<PathBuf>) -> ClientBuilder {
        self.unix_socket_dir = Some(dir.into());
        self
    }

    /// `PLUGIN_UNIX_SOCKET_GROUP`: the group (name or gid) the plugin gives
    /// its sockets to, mode 0660.
    pub fn unix_socket_group(mut self, group: impl Into<String>) -> ClientBuilder {
        self.unix_socket_group = Some(group.into());
        self
    }

    /// go-plugin's `SkipHostEnv`: the plugin gets only the variables set on
    /// the command and go-plugin's own, not the host's environment.
    pub fn skip_host_env(mut self, skip: bool) -> ClientBuilder {
        self.skip_host_env = skip;
        self
    }

    /// go-plugin's `SyncStdout`: where what the plugin writes on its stdout
    /// after the handshake goes, through `plugin.GRPCStdio`. Default:
    /// discarded.
    pub fn sync_stdout(mut self, sink: impl Write + Send + 'static) -> ClientBuilder {
        self.sync_stdout = Some(Box::new(sink));
        self
    }

    /// go-plugin's `SyncStderr`: the same for its stderr.
    pub fn sync_stderr(mut self, sink: impl Write + Send + 'static) -> ClientBuilder {
        self.sync_stderr = Some(Box::new(sink));
        self
    }

    /// go-plugin's `Stderr`: a raw copy of every line the plugin writes on
    /// its real stderr (its logs), besides their re-emission through the
    /// `log` crate. Default: none.
    pub fn stderr(mut self, sink: impl Write + Send + 'static) -> ClientBuilder {
        self.stderr = Some(Box::new(sink));
        self
    }

    /// The plugin's name in errors and the `log` target of its lines
    /// (`plugin.NAME`). Default: the command's file name, as go-plugin.
    pub fn name(mut self, name: impl Into<String>) -> ClientBuilder {
        self.name = Some(name.into());
        self
    }

    /// Whether the plugin may be at a TCP address off this machine (not
    /// loopback): for reattaching to a plugin that runs elsewhere. Default:
    /// false, and a plugin that advertises such an address is refused at
    /// the handshake. Whatever this says, an address is `IP:PORT` or an
    /// absolute unix path, never a host name or a gRPC target.
    pub fn allow_remote(mut self, allow: bool) -> ClientBuilder {
        self.allow_remote = allow;
        self
    }

    /// The largest message the host sends or accepts on the plugin's
    /// connections: the plugin's replies, its stdio stream and its broker
    /// stream. Default: 4 MiB, gRPC's own limit and goplugin's plugins'.
    /// go-plugin's host accepts up to 2 GiB; a bounded host raises this
    /// for protocols that need it (Terraform's own host takes 64 MiB from
    /// a provider), not further. The memory gRPC may hold for what it
    /// receives is bounded with it (8 times this, at least 32 MiB), before
    /// a message is buffered: a plugin that sends more than that has its
    /// call reset, not the host's memory grown.
    pub fn max_message_size(mut self, bytes: usize) -> ClientBuilder {
        self.max_message_size = bytes;
        self
    }

    /// The gRPC environment (completion-queue threads) the connection uses.
    /// Default: one shared by every `Client` of the process, with one
    /// thread, made at the first start (a second thread made each call
    /// cost half as much CPU again: the threads take turns at the
    /// connection's socket).
    pub fn grpc_environment(mut self, env: Arc<Environment>) -> ClientBuilder {
        self.grpc_env = Some(env);
        self
    }

    /// Starts the plugin (or attaches to it) and connects. On any failure
    /// the plugin is stopped (SIGTERM to its process group, SIGKILL 200 ms
    /// later) and the error says at which step, and what it printed. A
    /// plugin that exits, prints a bad line or an address nobody listens
    /// on fails at once, not at the time-out.
    pub fn start(self) -> Result<Client> {
        match (self.command.is_some(), self.reattach.is_some()) {
            (true, false) => self.launch(),
            (false, true) if self.secure.is_some() => Err(self.error(
                Step::Reattach,
                "only one of Reattach or SecureConfig can be set".into(),
            )),
            (false, true) => self.attach(),
            (true, true) => Err(self.error(
                Step::Start,
                "set either a command or a reattach configuration, not both".into(),
            )),
            (false, false) => Err(self.error(
                Step::Start,
                "no plugin to start: set a command (or a reattach configuration)".into(),
            )),
        }
    }

    fn plugin_name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        if let Some(command) = &self.command {
            return Path::new(command.get_program())
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_else(|| "plugin".into());
        }
        match &self.reattach {
            Some(config) => config.addr.address.clone(),
            None => "plugin".into(),
        }
    }

    fn error(&self, step: Step, reason: String) -> Error {
        Error::client(self.plugin_name(), step, reason)
    }

    fn grpc_env(&self) -> Result<Arc<Environment>> {
        if let Some(env) = &self.grpc_env {
            return Ok(Arc::clone(env));
        }
        static SHARED: OnceLock<Arc<Environment>> = OnceLock::new();
        if let Some(env) = SHARED.get() {
            return Ok(Arc::clone(env));
        }
        // grpcio unwraps the spawning of its threads: out of threads, that
        // is a panic, said here as what it is.
        let env = std::panic::catch_unwind(|| {
            Arc::new(
                EnvBuilder::new()
                    .cq_count(1)
                    .name_prefix("goplugin-host")
                    .build(),
            )
        })
        .map_err(|_| Error::OutOfResources {
            what: "threads",
            reason: "gRPC could not start its completion-queue threads: the OS limits the \
                     host's threads (ulimit -u, cgroup pids.max)"
                .into(),
        })?;
        Ok(Arc::clone(SHARED.get_or_init(|| env)))
    }

    /// The environment of the host's own brokered servers.
    fn host_env(&self) -> PluginEnv {
        let mut vars = Vec::new();
        if let Some(dir) = &self.unix_socket_dir {
            vars.push((
                PLUGIN_UNIX_SOCKET_DIR.to_string(),
                dir.display().to_string(),
            ));
        }
        if let Some(group) = &self.unix_socket_group {
            vars.push((PLUGIN_UNIX_SOCKET_GROUP.to_string(), group.clone()));
        }
        if let Some(tmp) = std::env::var_os("TMPDIR") {
            vars.push(("TMPDIR".to_string(), tmp.to_string_lossy().into_owned()));
        }
        PluginEnv::from_vars(vars)
    }

    fn launch(mut self) -> Result<Client> {
        let name = self.plugin_name();
        let Some(mut command) = self.command.take() else {
            return Err(self.error(Step::Start, "no command".into()));
        };
        // The command is taken: errors name the plugin as computed above,
        // and the program as given.
        let given = command.get_program().to_string_lossy().into_owned();
        if let Some(secure) = &self.secure {
            let program = resolve_program(command.get_program(), command.get_current_dir());
            secure.check(&program).map_err(|reason| {
                Error::client(&*name, Step::SecureConfig, format!("{given:?}: {reason}"))
            })?;
        }
        let host_cert = if self.auto_mtls {
            Some(HostCertificate::generate()?)
        } else {
            None
        };
        self.prepare(&mut command, host_cert.as_ref());
        let grpc_env = self.grpc_env()?;

        let output = Arc::new(Output::default());
        let (events, event) = mpsc::channel();
        let exited = events.clone();
        let started = runner::start(command, move |status| {
            let _ = exited.send(Event::Exited(status));
        })
        .map_err(|err| {
            let reason = match err.kind() {
                io::ErrorKind::NotFound => format!(
                    "cannot run the plugin's command {given:?}: {err}; check the path (no \
                     shell is involved unless the command is one)"
                ),
                _ => format!("cannot run the plugin's command {given:?}: {err}"),
            };
            Error::client(&*name, Step::Start, reason)
        })?;
        let process = started.process;
        let target = format!("plugin.{name}");
        let stdout_done = read_stdout(started.stdout, events, target.clone(), Arc::clone(&output));
        let stderr_done = read_stderr(
            started.stderr,
            self.stderr.take(),
            target,
            Arc::clone(&output),
        );
        if stdout_done.is_err() || stderr_done.is_err() {
            process.kill();
            return Err(Error::OutOfResources {
                what: "threads",
                reason: "cannot start the threads that read the plugin's output".into(),
            });
        }
        let mut starting = Starting {
            name,
            process: Some(process.clone()),
            output,
            timeout: self.start_timeout,
            deadline: Instant::now() + self.start_timeout,
        };
        let line = starting.handshake_line(&event)?;
        let dial = self.dial(host_cert, grpc_env);
        match starting.connect(&line, dial, Some(&event)) {
            Ok(connected) => Ok(Client::new(starting, connected, None)),
            Err(err) => {
                process.terminate(STOP_GRACE);
                Err(starting.with_output(err))
            }
        }
    }

    fn attach(mut self) -> Result<Client> {
        let Some(config) = self.reattach.clone() else {
            return Err(self.error(Step::Reattach, "no reattach configuration".into()));
        };
        if config.protocol != "grpc" {
            return Err(self.error(
                Step::Reattach,
                format!(
                    "unsupported plugin protocol {:?}: goplugin's host speaks gRPC only",
                    config.protocol
                ),
            ));
        }
        if config.pid != 0 && sys::process_gone(config.pid) {
            return Err(self.error(
                Step::Reattach,
                format!("Reattachment process not found: no process {}", config.pid),
            ));
        }
        let grpc_env = self.grpc_env()?;
        let mut starting = Starting {
            name: self.plugin_name(),
            process: None,
            output: Arc::new(Output::default()),
            timeout: self.start_timeout,
            deadline: Instant::now() + self.start_timeout,
        };
        let line = HandshakeLine {
            app_protocol_version: config.protocol_version,
            network: config.addr.network.clone(),
            address: config.addr.address.clone(),
            server_cert: None,
            multiplex: None,
        };
        let dial = self.dial(None, grpc_env);
        let connected = starting.connect(&line.to_string(), dial, None)?;
        Ok(Client::new(starting, connected, Some(config)))
    }

    /// What connecting takes from this configuration; the sinks move.
    fn dial(&mut self, host_cert: Option<HostCertificate>, grpc_env: Arc<Environment>) -> Dial<'_> {
        Dial {
            host_env: self.host_env(),
            sinks: (self.sync_stdout.take(), self.sync_stderr.take()),
            versions: &self.versions,
            tls: self.tls.as_ref(),
            host_cert,
            grpc_env,
            reach: if self.allow_remote {
                Reach::Anywhere
            } else {
                Reach::Local
            },
            max_message_size: self.max_message_size,
        }
    }

    /// go-plugin's environment for the plugin, on `command`.
    fn prepare(&self, command: &mut Command, host_cert: Option<&HostCertificate>) {
        if self.skip_host_env {
            let own: Vec<_> = command
                .get_envs()
                .filter_map(|(k, v)| Some((k.to_os_string(), v?.to_os_string())))
                .collect();
            command.env_clear().envs(own);
        }
        let versions = self
            .versions
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        command
            .env(
                &self.handshake.magic_cookie_key,
                &self.handshake.magic_cookie_value,
            )
            .env(PLUGIN_MIN_PORT, self.ports.0.to_string())
            .env(PLUGIN_MAX_PORT, self.ports.1.to_string())
            .env(PLUGIN_PROTOCOL_VERSIONS, versions)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // What this host did not ask for must not come from its own
        // environment (a host that is itself a plugin has them), unless
        // set on the command on purpose.
        for var in [PLUGIN_CLIENT_CERT, crate::env::PLUGIN_MULTIPLEX_GRPC] {
            if !command.get_envs().any(|(name, _)| name == var) {
                command.env_remove(var);
            }
        }
        if let Some(cert) = host_cert {
            command.env(PLUGIN_CLIENT_CERT, cert.pem());
        }
        if let Some(dir) = &self.unix_socket_dir {
            command.env(PLUGIN_UNIX_SOCKET_DIR, dir);
        }
        if let Some(group) = &self.unix_socket_group {
            command.env(PLUGIN_UNIX_SOCKET_GROUP, group);
        }
    }
}

/// A running plugin, or one the host attached to: go-plugin's `Client`
/// and its `ClientProtocol` in one. The README's KV host, in full:
///
/// ```no_run
/// use std::process::Command;
/// use goplugin::{Client, HandshakeConfig};
///
/// goplugin::include_proto!("kv"); // go-plugin's KV example: kv::GetRequest, kv_grpc::KvClient
/// use kv::GetRequest;
/// use kv_grpc::KvClient;
///
/// const HANDSHAKE: HandshakeConfig = HandshakeConfig {
///     protocol_version: 1,
///     magic_cookie_key: "BASIC_PLUGIN",
///     magic_cookie_value: "hello",
/// };
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let client = Client::builder(HANDSHAKE)
///         .command(Command::new("./plugin-go-grpc")) // run directly, no shell
///         .auto_mtls(true)
///         .start()?; // handshake, TLS, health "plugin", broker and stdio streams
///     let kv = KvClient::new(client.channel());
///     let request = GetRequest { key: "hello".into(), ..Default::default() };
///     let value = kv.get(&request)?.value;
///     println!("{}", String::from_utf8_lossy(&value));
///     Ok(()) // dropping `client` calls the plugin's Shutdown, then kills it after 2 s
/// }
/// ```
///
/// # Seeing the plugin's logs
///
/// Every line the plugin writes on stderr is re-emitted through the `log`
/// crate under the target `plugin.NAME`, at its hclog level with its
/// fields, as go-plugin's host does: any `log` backend shows them, and
/// without one they go nowhere. goplugin's own backend writes them, with
/// the host's lines, as hclog JSON on stderr; install it before `start`:
///
/// ```no_run
/// goplugin::logging::init(goplugin::log::LevelFilter::Info)?;
/// // Client::builder(..)…start()?: the plugin's info, warn and error lines
/// // now reach stderr, its debug and trace lines are left out.
/// # Ok::<(), goplugin::Error>(())
/// ```
pub struct Client {
    name: String,
    process: Option<Process>,
    reattached: Option<ReattachConfig>,
    channel: grpcio::Channel,
    version: u32,
    listener: Addr,
    broker: Broker,
    transport: Arc<Transport>,
    output: Arc<Output>,
    killed: Mutex<bool>,
    stdio: Mutex<Option<StdioSubscription>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .field("pid", &self.pid())
            .field("version", &self.version)
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl Client {
    fn new(starting: Starting, connected: Connected, reattached: Option<ReattachConfig>) -> Client {
        Client {
            name: starting.name,
            process: starting.process,
            reattached,
            channel: connected.channel,
            version: connected.version,
            listener: connected.listener,
            broker: connected.broker,
            transport: connected.transport,
            output: starting.output,
            killed: Mutex::new(false),
            stdio: Mutex::new(connected.stdio),
        }
    }

    /// How to start a plugin that serves `handshake` (the same constant
    /// the plugin uses).
    pub fn builder<S: AsRef<str>>(handshake: HandshakeConfig<S>) -> ClientBuilder {
        ClientBuilder {
            versions: vec![handshake.protocol_version],
            handshake: handshake.owned(),
            command: None,
            reattach: None,
            secure: None,
            auto_mtls: false,
            tls: None,
            start_timeout: START_TIMEOUT,
            ports: DEFAULT_PORTS,
            unix_socket_dir: None,
            unix_socket_group: None,
            skip_host_env: false,
            sync_stdout: None,
            sync_stderr: None,
            stderr: None,
            name: None,
            grpc_env: None,
            allow_remote: false,
            max_message_size: crate::transport::GRPC_DEFAULT_RECEIVE_LIMIT,
        }
    }

    /// The connection to the plugin, for the negotiated version's
    /// services (`KvClient::new(client.channel())`).
    pub fn channel(&self) -> grpcio::Channel {
        self.channel.clone()
    }

    /// The app protocol version the plugin serves (go-plugin's
    /// `NegotiatedVersion`).
    pub fn negotiated_version(&self) -> u32 {
        self.version
    }

    /// Where the plugin listens.
    pub fn addr(&self) -> &Addr {
        &self.listener
    }

    /// The plugin's process id: the process the host started, or the
    /// reattach configuration's.
    pub fn pid(&self) -> Option<u32> {
        match (&self.process, &self.reattached) {
            (Some(process), _) => Some(process.pid()),
            (None, Some(config)) if config.pid != 0 => Some(config.pid),
            _ => None,
        }
    }

    /// Whether the plugin's process has exited (go-plugin's `Exited`).
    /// Always `false` for a reattached plugin whose pid is unknown.
    pub fn exited(&self) -> bool {
        match (&self.process, &self.reattached) {
            (Some(process), _) => process.status().is_some(),
            (None, Some(config)) if config.pid != 0 => sys::process_gone(config.pid),
            _ => false,
        }
    }

    /// How the plugin's process exited, once it has (a started plugin).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.process.as_ref().and_then(Process::status)
    }

    /// The broker for bidirectional plugins: [`Broker::accept_and_serve`]
    /// serves the host's services to the plugin under an id,
    /// [`Broker::dial`] connects to one the plugin serves.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// What to give another host so it can attach to this plugin.
    pub fn reattach_config(&self) -> ReattachConfig {
        self.reattached.clone().unwrap_or_else(|| ReattachConfig {
            protocol: "grpc".into(),
            protocol_version: self.version,
            addr: self.listener.clone(),
            pid: self.pid().unwrap_or(0),
            test: false,
        })
    }

    /// go-plugin's `Ping`: the health check of service `"plugin"`.
    pub fn ping(&self) -> Result<()> {
        let request = health::plugin_check();
        HealthClient::new(self.channel.clone())
            .check_opt(
                &request,
                CallOption::default().timeout(Duration::from_secs(10)),
            )
            .map(drop)
            .map_err(|err| Error::client(&*self.name, Step::Ping, err.to_string()))
    }

    /// Stops the plugin as go-plugin's `Kill` does: ends the broker, calls
    /// `plugin.GRPCController/Shutdown`, gives the plugin 2 s to exit, then
    /// kills its process group and reaps it. Returns once it is gone and
    /// its output has been read. Idempotent; `Drop` calls it.
    ///
    /// A reattached plugin is stopped the same way through its pid, unless
    /// its configuration says `test` (debug mode): then only the
    /// connection is closed.
    pub fn kill(&self) {
        let mut killed = lock(&self.killed);
        if *killed {
            return;
        }
        *killed = true;
        let deadline = Instant::now() + KILL_GRACE;
        self.broker.shutdown();
        let test = self.reattached.as_ref().is_some_and(|c| c.test);
        if !test && !self.exited() {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = GrpcControllerClient::new(self.channel.clone())
                .shutdown_opt(&Empty::default(), CallOption::default().timeout(left));
        }
        match (&self.process, &self.reattached) {
            (Some(process), _) => {
                if process.wait_until(deadline).is_none() {
                    log::warn!("plugin {}: plugin failed to exit gracefully", self.name);
                    process.kill();
                    let _ = process.wait_until(Instant::now() + Duration::from_secs(5));
                }
                self.output
                    .wait_closed(Instant::now() + Duration::from_secs(1));
                match process.status() {
                    Some(status) if status.success() => {
                        log::debug!("plugin {}: plugin process exited ({status})", self.name);
                    }
                    Some(status) => {
                        log::info!("plugin {}: plugin process exited ({status})", self.name);
                    }
                    None => log::warn!("plugin {}: still not reaped after SIGKILL", self.name),
                }
            }
            (None, Some(config)) if !test && config.pid != 0 => {
                while !sys::process_gone(config.pid) && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(10));
                }
                if !sys::process_gone(config.pid) {
                    log::warn!("plugin {}: plugin failed to exit gracefully", self.name);
                    let _ = sys::signal_process(config.pid, libc::SIGKILL);
                }
            }
            _ => {}
        }
        if let Some(stdio) = lock(&self.stdio).take() {
            // What the plugin wrote before it exited reaches the sinks
            // first; a plugin left running (test mode) is unsubscribed.
            if self.process.is_some() {
                let _ = stdio.done.recv_timeout(Duration::from_secs(1));
            }
            drop(stdio.cancel);
            let _ = stdio.done.recv_timeout(Duration::from_secs(1));
        }
        self.transport.close();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Client>();
        shared::<ReattachConfig>();
        fn sent<T: Send>() {}
        sent::<ClientBuilder>();
    }
}
