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

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use futures::StreamExt;
use grpcio::{CallOption, EnvBuilder, Environment, RpcStatusCode};

use crate::broker::Broker;
use crate::env::{
    PLUGIN_CLIENT_CERT, PLUGIN_MAX_PORT, PLUGIN_MIN_PORT, PLUGIN_PROTOCOL_VERSIONS,
    PLUGIN_UNIX_SOCKET_DIR, PLUGIN_UNIX_SOCKET_GROUP, PluginEnv,
};
use crate::error::{Error, Result};
use crate::handshake::{HandshakeConfig, HandshakeLine, Network};
use crate::health::HEALTH_SERVICE_NAME;
use crate::listener::Listener;
use crate::locks::{lock, wait_for};
use crate::log_entry::StderrLog;
use crate::proto::grpc_health::{HealthCheckRequest, HealthClient};
use crate::proto::plugin::stdio_data::Channel as StdioChannel;
use crate::proto::plugin::{Empty, GrpcBrokerClient, GrpcControllerClient, GrpcStdioClient};
use crate::runner::{self, Process};
use crate::sys;
use crate::tls::{AutoMtls, HostCertificate};
use crate::transport::Transport;

/// go-plugin's default `StartTimeout`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`Client::kill`] gives the plugin to exit after `Shutdown`.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// go-plugin's default `PLUGIN_MIN_PORT`/`PLUGIN_MAX_PORT`.
const DEFAULT_PORTS: (u16, u16) = (10_000, 25_000);
/// A stderr or stdout line longer than this is cut (go-plugin's
/// `PluginLogBufferSize`).
const MAX_LINE: usize = 64 * 1024;
/// Lines of the plugin's stderr kept for error messages.
const TAIL_LINES: usize = 20;

/// A sink for the plugin's output.
type Sink = Box<dyn Write + Send>;

/// Where to find a plugin that is already running (go-plugin's
/// `ReattachConfig`; Terraform's `TF_REATTACH_PROVIDERS` holds these as
/// JSON, see [`to_json`](Self::to_json)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReattachConfig {
    /// The plugin protocol: `grpc` (the only one goplugin speaks).
    pub protocol: String,
    /// The app protocol version the plugin serves.
    pub protocol_version: u32,
    /// Where it listens.
    pub addr: Listener,
    /// Its process id (0 when unknown).
    pub pid: u32,
    /// Test (debug) mode: the host that attaches never stops the plugin.
    pub test: bool,
}

impl ReattachConfig {
    /// go-plugin's JSON form: `{"Protocol":"grpc","ProtocolVersion":6,
    /// "Addr":{"Network":"unix","String":"/tmp/plugin123"},"Pid":42,
    /// "Test":true}`.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "Protocol": self.protocol,
            "ProtocolVersion": self.protocol_version,
            "Addr": {"Network": self.addr.network.as_str(), "String": self.addr.address},
            "Pid": self.pid,
            "Test": self.test,
        })
        .to_string()
    }

    /// Reads go-plugin's JSON form (see [`to_json`](Self::to_json)).
    ///
    /// ```
    /// let config = goplugin::ReattachConfig::from_json(
    ///     r#"{"Protocol":"grpc","ProtocolVersion":1,"Addr":{"Network":"tcp","String":"127.0.0.1:1234"},"Pid":42,"Test":true}"#,
    /// )?;
    /// assert_eq!(config.addr.address, "127.0.0.1:1234");
    /// assert_eq!(goplugin::ReattachConfig::from_json(&config.to_json())?, config);
    /// # Ok::<(), goplugin::Error>(())
    /// ```
    pub fn from_json(json: &str) -> Result<ReattachConfig> {
        let invalid = |reason: String| Error::Client {
            plugin: "reattach".into(),
            step: "read the reattach configuration",
            reason,
            printed: String::new(),
        };
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let text = |value: &serde_json::Value, key: &str| {
            value
                .get(key)
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| invalid(format!("{key} is missing or not a string")))
        };
        let number = |key: &str| {
            value
                .get(key)
                .and_then(serde_json::Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
        };
        let addr = value
            .get("Addr")
            .ok_or_else(|| invalid("Addr is missing".into()))?;
        let network = match text(addr, "Network")?.as_str() {
            "unix" => Network::Unix,
            "tcp" => Network::Tcp,
            other => {
                return Err(invalid(format!(
                    "Addr.Network {other:?} is not unix or tcp"
                )));
            }
        };
        Ok(ReattachConfig {
            protocol: text(&value, "Protocol").unwrap_or_else(|_| "grpc".into()),
            protocol_version: number("ProtocolVersion")
                .ok_or_else(|| invalid("ProtocolVersion is missing".into()))?,
            addr: Listener {
                network,
                address: text(addr, "String")?,
            },
            pid: number("Pid").unwrap_or(0),
            test: value
                .get("Test")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
        })
    }
}

/// go-plugin's `SecureConfig`: the plugin binary must have this SHA-256,
/// or it is not started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecureConfig {
    sha256: [u8; 32],
}

impl SecureConfig {
    /// The SHA-256 the binary must have, as 64 hex digits (`sha256sum`).
    pub fn sha256_hex(hex: &str) -> Result<SecureConfig> {
        let hex = hex.trim();
        let mut sha256 = [0u8; 32];
        let valid = hex.len() == 64
            && hex.is_ascii()
            && sha256.iter_mut().enumerate().all(|(i, byte)| {
                u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                    .map(|b| *byte = b)
                    .is_ok()
            });
        if valid {
            Ok(SecureConfig { sha256 })
        } else {
            Err(Error::Client {
                plugin: String::new(),
                step: "secure config",
                reason: format!("{hex:?} is not a SHA-256 checksum (64 hex digits)"),
                printed: String::new(),
            })
        }
    }

    /// The SHA-256 the binary must have.
    pub fn sha256(sha256: [u8; 32]) -> SecureConfig {
        SecureConfig { sha256 }
    }

    /// Checks the file at `path`: `Ok(())`, or the checksum it has.
    fn check(&self, path: &Path) -> std::result::Result<(), String> {
        let mut file = std::fs::File::open(path)
            .map_err(|e| format!("cannot read {} to check it: {e}", path.display()))?;
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => context.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            }
        }
        let found = context.finish();
        if found.as_ref() == self.sha256 {
            Ok(())
        } else {
            Err(format!(
                "checksums did not match: {} has SHA-256 {}, the host expects {}",
                path.display(),
                hex(found.as_ref()),
                hex(&self.sha256)
            ))
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How to start (or find) a plugin: go-plugin's `ClientConfig`. Get one
/// from [`Client::builder`].
pub struct ClientBuilder {
    handshake: HandshakeConfig,
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
    /// plugin that serves its own TLS): `trusted_pem` verifies the plugin
    /// (and plugins dialing brokered servers of the host), `cert_pem` and
    /// `key_pem` are presented. Ignored under AutoMTLS.
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
    /// the plugin is killed and the error says at which step, and what it
    /// printed. A plugin that exits, prints a bad line or an address
    /// nobody listens on fails at once, not at the time-out.
    pub fn start(self) -> Result<Client> {
        match (self.command.is_some(), self.reattach.is_some()) {
            (true, false) => self.launch(),
            (false, true) if self.secure.is_some() => Err(self.error(
                "reattach",
                "only one of Reattach or SecureConfig can be set".into(),
            )),
            (false, true) => self.attach(),
            (true, true) => Err(self.error(
                "start",
                "set either a command or a reattach configuration, not both".into(),
            )),
            (false, false) => Err(self.error(
                "start",
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

    fn error(&self, step: &'static str, reason: String) -> Error {
        Error::Client {
            plugin: self.plugin_name(),
            step,
            reason,
            printed: String::new(),
        }
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
            return Err(self.error("start", "no command".into()));
        };
        if let Some(secure) = &self.secure {
            let program = resolve_program(command.get_program());
            secure
                .check(&program)
                .map_err(|reason| self.error("secure config", reason))?;
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
                    "cannot run the plugin's command: {err}; check the path (no shell is \
                     involved unless the command is one)"
                ),
                _ => format!("cannot run the plugin's command: {err}"),
            };
            self.error("start", reason)
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
        let sinks = (self.sync_stdout.take(), self.sync_stderr.take());
        let connected = starting.connect(&self, line, host_cert, grpc_env, Some(&event), sinks);
        match connected {
            Ok(client) => Ok(client),
            Err(err) => {
                process.kill();
                Err(starting.with_output(err))
            }
        }
    }

    fn attach(mut self) -> Result<Client> {
        let Some(config) = self.reattach.clone() else {
            return Err(self.error("reattach", "no reattach configuration".into()));
        };
        if config.protocol != "grpc" {
            return Err(self.error(
                "reattach",
                format!(
                    "unsupported plugin protocol {:?}: goplugin's host speaks gRPC only",
                    config.protocol
                ),
            ));
        }
        if config.pid != 0
            && sys::signal_process(config.pid, 0)
                .is_err_and(|e| e.raw_os_error() == Some(libc::ESRCH))
        {
            return Err(self.error(
                "reattach",
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
        let sinks = (self.sync_stdout.take(), self.sync_stderr.take());
        let mut client = starting.connect(&self, line.to_string(), None, grpc_env, None, sinks)?;
        client.reattached = Some(config);
        Ok(client)
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
                self.handshake.magic_cookie_key,
                self.handshake.magic_cookie_value,
            )
            .env(PLUGIN_MIN_PORT, self.ports.0.to_string())
            .env(PLUGIN_MAX_PORT, self.ports.1.to_string())
            .env(PLUGIN_PROTOCOL_VERSIONS, versions)
            .env_remove(PLUGIN_CLIENT_CERT)
            .env_remove(crate::env::PLUGIN_MULTIPLEX_GRPC)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
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

/// What the plugin's output and process tell the starting host.
enum Event {
    Line(String),
    StdoutClosed,
    Exited(ExitStatus),
}

/// What the readers of the plugin's output share with the client.
#[derive(Default)]
struct Output {
    /// The last lines of stderr.
    tail: Mutex<VecDeque<String>>,
    /// How many of stdout and stderr reached their end.
    closed: Mutex<u8>,
    changed: Condvar,
}

impl Output {
    fn tail(&self) -> String {
        lock(&self.tail).iter().map(|l| format!("{l}\n")).collect()
    }

    fn close_one(&self) {
        *lock(&self.closed) += 1;
        self.changed.notify_all();
    }

    /// Waits until both pipes are at their end, or `deadline`.
    fn wait_closed(&self, deadline: Instant) -> bool {
        wait_for(&self.closed, &self.changed, deadline, |closed| {
            (*closed >= 2).then_some(())
        })
        .is_some()
    }
}

/// Reads up to a newline, keeping at most [`MAX_LINE`] bytes of it (the
/// rest is read and dropped). `None` at the end.
fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> Option<()> {
    line.clear();
    loop {
        let buf = match reader.fill_buf() {
            Ok([]) if line.is_empty() => return None,
            Ok([]) => return Some(()),
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return if line.is_empty() { None } else { Some(()) },
        };
        let (chunk, found) = match buf.iter().position(|b| *b == b'\n') {
            Some(at) => (&buf[..at], Some(at + 1)),
            None => (buf, None),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = found.unwrap_or(buf.len());
        reader.consume(used);
        if found.is_some() {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Some(());
        }
    }
}

/// The stdout reader: the first line is the handshake, later ones go to
/// the log at debug (go-plugin drops them).
fn read_stdout(
    stdout: impl Read + Send + 'static,
    events: mpsc::Sender<Event>,
    target: String,
    output: Arc<Output>,
) -> io::Result<()> {
    thread::Builder::new()
        .name("goplugin-stdout".into())
        .spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            let mut first = true;
            while read_line(&mut reader, &mut line).is_some() {
                let text = String::from_utf8_lossy(&line).into_owned();
                if first {
                    first = false;
                    let _ = events.send(Event::Line(text));
                } else {
                    log::debug!(target: &target, "stdout: {text}");
                }
            }
            let _ = events.send(Event::StdoutClosed);
            output.close_one();
        })
        .map(drop)
}

/// The stderr reader: a raw copy to `sink`, each line re-emitted through
/// `log` at its level, the last lines kept for errors.
fn read_stderr(
    stderr: impl Read + Send + 'static,
    mut sink: Option<Sink>,
    target: String,
    output: Arc<Output>,
) -> io::Result<()> {
    thread::Builder::new()
        .name("goplugin-stderr".into())
        .spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut log = StderrLog::new(target);
            let mut line = Vec::new();
            while read_line(&mut reader, &mut line).is_some() {
                if let Some(out) = &mut sink {
                    line.push(b'\n');
                    if out.write_all(&line).is_err() {
                        sink = None;
                    }
                    line.pop();
                }
                let text = String::from_utf8_lossy(&line);
                log.line(&text);
                let mut tail = lock(&output.tail);
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(text.chars().take(512).collect());
            }
            if let Some(out) = &mut sink {
                let _ = out.flush();
            }
            output.close_one();
        })
        .map(drop)
}

/// A start in progress.
struct Starting {
    name: String,
    timeout: Duration,
    process: Option<Process>,
    output: Arc<Output>,
    deadline: Instant,
}

impl Starting {
    fn fail(&self, step: &'static str, reason: String) -> Error {
        Error::Client {
            plugin: self.name.clone(),
            step,
            reason,
            printed: String::new(),
        }
    }

    /// Adds what the plugin printed to a start error, once its output
    /// ended (it has been killed) or shortly after.
    fn with_output(&self, err: Error) -> Error {
        let Error::Client {
            plugin,
            step,
            reason,
            printed,
        } = err
        else {
            return err;
        };
        if self.process.is_some() {
            self.output
                .wait_closed(Instant::now() + Duration::from_millis(500));
        }
        Error::Client {
            plugin,
            step,
            reason,
            printed: if printed.is_empty() {
                self.output.tail()
            } else {
                printed
            },
        }
    }

    /// Waits for the first stdout line; kills the plugin on failure.
    fn handshake_line(&mut self, event: &mpsc::Receiver<Event>) -> Result<String> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let failure = match event.recv_timeout(left) {
            Ok(Event::Line(line)) => return Ok(line),
            Ok(Event::StdoutClosed | Event::Exited(_)) => {
                let status = self
                    .process
                    .as_ref()
                    .and_then(|p| p.wait_until(Instant::now() + Duration::from_millis(200)));
                let how = match status {
                    Some(status) => format!(" ({status})"),
                    None => " (it closed its stdout)".into(),
                };
                self.fail(
                    "start",
                    format!(
                        "plugin exited before we could connect{how}: it printed no handshake \
                         line on stdout"
                    ),
                )
            }
            Err(_) => self.fail(
                "start",
                format!(
                    "timeout while waiting for plugin to start: no handshake line within {:?}",
                    self.timeout
                ),
            ),
        };
        if let Some(process) = &self.process {
            process.kill();
        }
        Err(self.with_output(failure))
    }

    fn exited(&self, events: Option<&mpsc::Receiver<Event>>) -> Option<String> {
        if let Some(events) = events {
            while let Ok(event) = events.try_recv() {
                if let Event::Exited(status) = event {
                    return Some(format!("the plugin exited ({status})"));
                }
            }
        }
        None
    }

    /// From a handshake line to a connected client.
    fn connect(
        &mut self,
        config: &ClientBuilder,
        line: String,
        host_cert: Option<HostCertificate>,
        grpc_env: Arc<Environment>,
        events: Option<&mpsc::Receiver<Event>>,
        sinks: (Option<Sink>, Option<Sink>),
    ) -> Result<Client> {
        let parsed = if events.is_some() {
            HandshakeLine::parse(&line).map_err(|e| self.fail("handshake", e.to_string()))?
        } else {
            HandshakeLine::parse(&line).map_err(|e| self.fail("reattach", e.to_string()))?
        };
        let version = parsed.app_protocol_version;
        if !config.versions.contains(&version) {
            return Err(self.fail(
                "handshake",
                format!(
                    "incompatible API version with plugin. Plugin version: {version}, Client \
                     versions: {:?}",
                    config.versions
                ),
            ));
        }
        let tls = match (host_cert, &parsed.server_cert, &config.tls) {
            (Some(host), Some(cert), _) => Some(Arc::new(host.trust(cert)?)),
            (Some(_), None, _) => {
                return Err(self.fail(
                    "handshake",
                    "the host runs AutoMTLS, and the plugin sent no certificate (handshake \
                     field 6): it does not support AutoMTLS; turn AutoMTLS off for it"
                        .into(),
                ));
            }
            (None, _, Some(tls)) => Some(Arc::new(tls.clone())),
            (None, Some(_), None) => {
                return Err(self.fail(
                    "handshake",
                    "the plugin sent a certificate (handshake field 6) but the host did not \
                     ask for TLS: turn AutoMTLS on, or configure TLS"
                        .into(),
                ));
            }
            (None, None, None) => None,
        };
        let listener = Listener {
            network: parsed.network.clone(),
            address: parsed.address.clone(),
        };
        let transport = Arc::new(Transport::for_host(config.host_env(), tls, grpc_env));
        let channel = transport.channel(&listener.dial_target());
        self.check_health(&channel, &listener, events)?;

        let broker = Broker::default();
        broker.attach(Arc::clone(&transport));
        if let Err(err) = broker.open_to_plugin(&GrpcBrokerClient::new(channel.clone())) {
            log::debug!("plugin {}: no broker stream: {err}", self.name);
        }
        let stdio = subscribe_stdio(&channel, sinks.0, sinks.1, self.name.clone());
        Ok(Client {
            name: self.name.clone(),
            process: self.process.take(),
            reattached: None,
            channel,
            version,
            listener,
            broker,
            transport,
            output: Arc::clone(&self.output),
            killed: Mutex::new(false),
            stdio: Mutex::new(stdio),
        })
    }

    /// Connects and checks health `"plugin"`. The call fails at once when
    /// the connection cannot come up (nobody listens, TLS refused), and
    /// waits for it otherwise, up to the start deadline; a plugin without a
    /// health service only gets a warning, as go-plugin checks health only
    /// in `Ping`.
    fn check_health(
        &self,
        channel: &grpcio::Channel,
        listener: &Listener,
        events: Option<&mpsc::Receiver<Event>>,
    ) -> Result<()> {
        let request = HealthCheckRequest {
            service: HEALTH_SERVICE_NAME.into(),
            ..HealthCheckRequest::default()
        };
        let left = self.deadline.saturating_duration_since(Instant::now());
        let call = CallOption::default().timeout(left.max(Duration::from_millis(100)));
        let status = match HealthClient::new(channel.clone()).check_opt(&request, call) {
            Ok(_) => return Ok(()),
            Err(grpcio::Error::RpcFailure(status)) => status,
            Err(err) => return Err(self.fail("health check", err.to_string())),
        };
        let at = format!("{} {}", listener.network.as_str(), listener.address);
        match status.code() {
            RpcStatusCode::UNIMPLEMENTED | RpcStatusCode::NOT_FOUND => {
                log::warn!(
                    "plugin {}: no health service for \"plugin\" ({}): Client::ping will fail",
                    self.name,
                    status.message()
                );
                Ok(())
            }
            RpcStatusCode::UNAVAILABLE => {
                let why = self.exited(events).unwrap_or_else(|| {
                    "nothing accepts connections there, or the TLS handshake failed".into()
                });
                Err(self.fail(
                    "connect",
                    format!("cannot connect to {at}: {why} ({})", status.message()),
                ))
            }
            RpcStatusCode::DEADLINE_EXCEEDED => Err(self.fail(
                "connect",
                format!(
                    "timeout while waiting for plugin to start: {at} did not answer within {:?}",
                    self.timeout
                ),
            )),
            _ => Err(self.fail(
                "health check",
                format!(
                    "the plugin at {at} answered {}: {}",
                    status.code(),
                    status.message()
                ),
            )),
        }
    }
}

/// The host's subscription to `plugin.GRPCStdio`, on a thread of its own.
struct StdioSubscription {
    /// Dropped to end the subscription.
    cancel: futures::channel::oneshot::Sender<()>,
    /// Disconnected when the thread has ended.
    done: mpsc::Receiver<()>,
}

/// Subscribes to `plugin.GRPCStdio`, as go-plugin's host does in every
/// `Client()`, writing what arrives to the sinks, on a thread of its own
/// (a sink may block); with no sink, what arrives is dropped on gRPC's
/// thread. A plugin without the service (go-plugin before 1.1, Python's
/// example) is logged at debug.
fn subscribe_stdio(
    channel: &grpcio::Channel,
    mut stdout: Option<Sink>,
    mut stderr: Option<Sink>,
    name: String,
) -> Option<StdioSubscription> {
    let client = GrpcStdioClient::new(channel.clone());
    let mut stream = match client.stream_stdio(&protobuf::well_known_types::empty::Empty::new()) {
        Ok(stream) => stream,
        Err(err) => {
            log::warn!(
                "plugin {name}: stdio service not available, stdout/stderr syncing unavailable: {err}"
            );
            return None;
        }
    };
    let (cancel, cancelled) = futures::channel::oneshot::channel::<()>();
    let (finished, done) = mpsc::channel::<()>();
    let no_sink = stdout.is_none() && stderr.is_none();
    let receive = async move {
        let _finished = finished;
        let mut cancelled = cancelled;
        loop {
            let item = match futures::future::select(stream.next(), &mut cancelled).await {
                futures::future::Either::Left((item, _)) => item,
                futures::future::Either::Right(_) => break,
            };
            let data = match item {
                Some(Ok(data)) => data,
                Some(Err(grpcio::Error::RpcFailure(status)))
                    if status.code() == RpcStatusCode::UNIMPLEMENTED =>
                {
                    log::debug!(
                        "plugin {name}: no plugin.GRPCStdio service, stdout/stderr syncing \
                         unavailable"
                    );
                    break;
                }
                Some(Err(err)) => {
                    log::debug!("plugin {name}: stdio stream ended: {err}");
                    break;
                }
                None => break,
            };
            let sink = match data.channel.enum_value() {
                Ok(StdioChannel::STDOUT) => &mut stdout,
                Ok(StdioChannel::STDERR) => &mut stderr,
                _ => {
                    log::warn!("plugin {name}: unknown stdio channel {:?}", data.channel);
                    continue;
                }
            };
            if let Some(out) = sink
                && out
                    .write_all(&data.data)
                    .and_then(|()| out.flush())
                    .is_err()
            {
                *sink = None;
            }
        }
    };
    if no_sink {
        client.spawn(receive);
        return Some(StdioSubscription { cancel, done });
    }
    let started = thread::Builder::new()
        .name("goplugin-stdio".into())
        .spawn(move || futures::executor::block_on(receive));
    match started {
        Ok(_) => Some(StdioSubscription { cancel, done }),
        Err(err) => {
            log::warn!("plugin: cannot start the stdio thread: {err}");
            None
        }
    }
}

/// A running plugin, or one the host attached to: go-plugin's `Client`
/// and its `ClientProtocol` in one. The README's KV host, in full:
///
/// ```no_run
/// use std::process::Command;
/// use goplugin::Client;
/// use kv_plugin::HANDSHAKE; // the plugin's HandshakeConfig: BASIC_PLUGIN=hello, version 1
/// use kv_plugin::proto::kv::GetRequest;
/// use kv_plugin::proto::kv_grpc::KvClient;
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
pub struct Client {
    name: String,
    process: Option<Process>,
    reattached: Option<ReattachConfig>,
    channel: grpcio::Channel,
    version: u32,
    listener: Listener,
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
    /// How to start a plugin that serves `handshake` (the same constant
    /// the plugin uses).
    pub fn builder(handshake: HandshakeConfig) -> ClientBuilder {
        ClientBuilder {
            handshake,
            versions: vec![handshake.protocol_version],
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
    pub fn listener(&self) -> &Listener {
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
            (None, Some(config)) if config.pid != 0 => sys::signal_process(config.pid, 0)
                .is_err_and(|e| e.raw_os_error() == Some(libc::ESRCH)),
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
        let request = HealthCheckRequest {
            service: HEALTH_SERVICE_NAME.into(),
            ..HealthCheckRequest::default()
        };
        HealthClient::new(self.channel.clone())
            .check_opt(
                &request,
                CallOption::default().timeout(Duration::from_secs(10)),
            )
            .map(drop)
            .map_err(|err| Error::Client {
                plugin: self.name.clone(),
                step: "ping",
                reason: err.to_string(),
                printed: String::new(),
            })
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
                let gone = || {
                    sys::signal_process(config.pid, 0)
                        .is_err_and(|e| e.raw_os_error() == Some(libc::ESRCH))
                };
                while !gone() && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(10));
                }
                if !gone() {
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

/// `command`'s program as a path: as given when it has a slash, else the
/// first match in `PATH` (what `Command` runs).
fn resolve_program(program: &std::ffi::OsStr) -> PathBuf {
    let path = Path::new(program);
    if path.components().count() > 1 {
        return path.to_path_buf();
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| path.to_path_buf())
}
