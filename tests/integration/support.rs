//! Shared test support: where the hosts and plugins are, and running them
//! with a watchdog.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use goplugin::grpcio::{CallOption, ChannelBuilder, EnvBuilder};
use goplugin::proto::plugin::{Empty, GrpcControllerClient};

/// How long any host or plugin process may run before the test kills it.
pub const WATCHDOG: Duration = Duration::from_secs(60);

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A binary of the workspace's example crates (`kv-plugin`,
/// `counter-plugin`), next to this test binary's `deps/` directory. Cargo
/// builds another package's binaries for a test only when asked:
/// `cargo build --release --workspace --bins` (`make test` does).
pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary is in <target>/<profile>/deps")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: build the example plugins with \
         `cargo build --release --workspace --bins` (or run `make test`)",
        path.display()
    );
    path
}

/// A cargo example of this crate (`examples/NAME.rs`), built by `cargo
/// build --examples` (`make test` does; `cargo test` builds examples only
/// as test harnesses, without the binary).
pub fn cargo_example(name: &str) -> PathBuf {
    let path = example_bin("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: build the examples first (`cargo build --release --examples`, as \
         `make test` does)",
        path.display()
    );
    path
}

/// A go-plugin host fixture (tests/fixtures/go-host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    /// The current go-plugin release, as pinned in go.mod.
    Current,
    /// Debian's go-plugin 1.0.1.
    V101,
}

impl Host {
    /// The KV host (tests/fixtures/go-host).
    pub fn path(self) -> PathBuf {
        go_binary(match self {
            Host::Current => "kv-host-current",
            Host::V101 => "kv-host-101",
        })
    }

    /// The bidirectional example's host (tests/fixtures/go-counter-host):
    /// its protos and the KV example's share package `proto`, which one Go
    /// binary cannot register twice.
    pub fn counter_path(self) -> PathBuf {
        go_binary(match self {
            Host::Current => "counter-host-current",
            Host::V101 => "counter-host-101",
        })
    }
}

/// A Go binary `make hosts` builds into .build/go-hosts.
pub fn go_binary(name: &str) -> PathBuf {
    let path = repo().join(".build/go-hosts").join(name);
    assert!(
        path.exists(),
        "{} is missing: build the go-plugin test hosts with `make hosts` (or run `make test`)",
        path.display()
    );
    path
}

/// A KV plugin under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plugin {
    /// This crate's `kv-plugin`.
    Rust,
    /// The Python reference (tests/fixtures/python-kv).
    Python,
    /// A Go KV plugin on go-plugin 1.0.1 (tests/fixtures/go-kv-plugin).
    Go,
}

impl Plugin {
    /// The command line a host runs (as `sh -c "exec $KV_PLUGIN"`).
    pub fn command(self) -> String {
        match self {
            Plugin::Rust => example_bin("kv-plugin").display().to_string(),
            Plugin::Python => {
                let python = repo().join(".build/venv/bin/python");
                assert!(
                    python.exists(),
                    "{} is missing: set up the Python reference with `make python-ref` (or run `make test`)",
                    python.display()
                );
                format!(
                    "{} {}",
                    python.display(),
                    repo().join("tests/fixtures/python-kv/plugin.py").display()
                )
            }
            Plugin::Go => {
                let path = repo().join(".build/go-hosts/kv-plugin-go");
                assert!(
                    path.exists(),
                    "{} is missing: build it with `make hosts` (or run `make test`)",
                    path.display()
                );
                path.display().to_string()
            }
        }
    }

    /// The trailer the plugin appends to every value.
    pub fn trailer(self) -> &'static [u8] {
        match self {
            Plugin::Rust => b"\n\nWritten from plugin-rust",
            Plugin::Python => b"\n\nWritten from plugin-python",
            Plugin::Go => b"\n\nWritten from plugin-go-grpc",
        }
    }
}

/// How the plugin and host connect in a matrix cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// The plugin's own choice (Rust and Go: a unix socket; Python: TCP).
    Default,
    /// The Rust plugin told to use TCP (`KV_PLUGIN_NETWORK=tcp`).
    Tcp,
    /// The host runs AutoMTLS.
    Mtls,
    /// The host multiplexes (current release only): every connection a
    /// yamux stream over one unix socket connection.
    Mux,
    /// Multiplexed over one TCP connection.
    MuxTcp,
    /// Multiplexed, with AutoMTLS inside each stream.
    MuxMtls,
}

/// One cell of the scenario matrix.
#[derive(Clone, Copy, Debug)]
pub struct Cell {
    pub host: Host,
    pub plugin: Plugin,
    pub transport: Transport,
}

impl Cell {
    /// A host run in `dir` with this cell's plugin and transport.
    pub fn host_run(self, dir: &Path) -> HostRun {
        let run = HostRun::new(self.host, self.plugin, dir);
        match self.transport {
            Transport::Default => run,
            Transport::Tcp => run.env("KV_PLUGIN_NETWORK", "tcp"),
            Transport::Mtls => run.env("KV_HOST_AUTOMTLS", "1"),
            Transport::Mux => run.env("KV_HOST_MUX", "1"),
            Transport::MuxTcp => run.env("KV_HOST_MUX", "1").env("KV_PLUGIN_NETWORK", "tcp"),
            Transport::MuxMtls => run.env("KV_HOST_MUX", "1").env("KV_HOST_AUTOMTLS", "1"),
        }
    }

    /// The network the plugin listens on in this cell.
    pub fn network(self) -> &'static str {
        match (self.plugin, self.transport) {
            (Plugin::Python, _) | (Plugin::Rust, Transport::Tcp | Transport::MuxTcp) => "tcp",
            _ => "unix",
        }
    }
}

/// What a finished process left behind.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Output {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "expected success, got {}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.status,
            self.stdout_str(),
            self.stderr
        );
        self
    }

    #[track_caller]
    pub fn assert_failure(&self) -> &Self {
        assert!(
            !self.status.success(),
            "expected failure, got success\n--- stdout:\n{}\n--- stderr:\n{}",
            self.stdout_str(),
            self.stderr
        );
        self
    }
}

/// One host invocation: `kv-host ARGS` in `dir` with `plugin`.
pub struct HostRun {
    command: Command,
}

impl HostRun {
    pub fn new(host: Host, plugin: Plugin, dir: &Path) -> HostRun {
        HostRun::of(host.path(), plugin.command(), dir)
    }

    /// A run of the bidirectional example's host with `counter-plugin`.
    pub fn counter(host: Host, dir: &Path) -> HostRun {
        let plugin = example_bin("counter-plugin").display().to_string();
        HostRun::of(host.counter_path(), plugin, dir)
    }

    fn of(host: PathBuf, plugin: String, dir: &Path) -> HostRun {
        let mut command = Command::new(host);
        command
            .current_dir(dir)
            .env("KV_PLUGIN", plugin)
            // A host sets these itself; none may leak in from the test's environment.
            .env_remove("COUNTER_PLUGIN")
            .env_remove("BASIC_PLUGIN")
            .env_remove("PLUGIN_CLIENT_CERT")
            .env_remove("PLUGIN_MULTIPLEX_GRPC");
        HostRun { command }
    }

    pub fn env(mut self, key: &str, value: &str) -> HostRun {
        self.command.env(key, value);
        self
    }

    pub fn run<S: AsRef<std::ffi::OsStr>>(mut self, args: &[S]) -> Output {
        self.command.args(args);
        run(self.command)
    }
}

/// Runs `command` to completion with the watchdog, capturing both pipes.
pub fn run(mut command: Command) -> Output {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    wait_with_watchdog(child)
}

fn wait_with_watchdog(mut child: Child) -> Output {
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let out = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    });
    let deadline = Instant::now() + WATCHDOG;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "process {} ran longer than {WATCHDOG:?}; killed",
                child.id()
            );
        }
        thread::sleep(Duration::from_millis(2));
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// Whether a process with this pid still exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Waits up to `limit` for `pid` to be gone.
pub fn gone_within(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        thread::sleep(Duration::from_millis(5));
    }
    !alive(pid)
}

/// Live processes whose working directory is `dir`.
pub fn processes_in(dir: &Path) -> Vec<u32> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir))
        .filter(|pid| alive(*pid))
        .collect()
}

/// Within a second no process runs in `dir` any more (plugins started
/// there have exited with their host), and then `tmp`, their `TMPDIR`,
/// holds no file: no socket was left behind.
#[track_caller]
pub fn assert_nothing_left(dir: &Path, tmp: &Path) {
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut running = processes_in(dir);
    while !running.is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
        running = processes_in(dir);
    }
    assert!(
        running.is_empty(),
        "processes still run in {} a second later: {running:?}",
        dir.display()
    );
    let left: Vec<_> = std::fs::read_dir(tmp)
        .expect("TMPDIR")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}

/// A `Write` that tests read back (a handshake output, a host's sinks).
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// What was written, as UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Parses `k=v k=v` words into a lookup.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("goplugin-test")
        .tempdir()
        .expect("temp dir")
}

/// The magic cookie of the KV example.
pub const COOKIE: (&str, &str) = ("BASIC_PLUGIN", "hello");

pub fn plugin_command(plugin: Plugin, env: &[(&str, &str)], dir: &std::path::Path) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("exec {}", plugin.command()))
        .current_dir(dir)
        .env_clear();
    command.env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        command.env(k, v);
    }
    command
}

/// A plugin that started and printed its handshake line.
pub struct Running {
    child: Option<Child>,
    pub line: String,
    rest: mpsc::Receiver<Vec<u8>>,
    stderr: Option<mpsc::Receiver<String>>,
    _dir: Option<tempfile::TempDir>,
}

impl Running {
    /// Starts `plugin` in a fresh temporary directory.
    pub fn start(plugin: Plugin, env: &[(&str, &str)]) -> Running {
        let dir = tempdir();
        let mut running = Running::start_in(plugin, env, dir.path());
        running._dir = Some(dir);
        running
    }

    /// Starts `plugin` with `dir` as its working directory.
    pub fn start_in(plugin: Plugin, env: &[(&str, &str)], dir: &Path) -> Running {
        Running::spawn(plugin_command(plugin, env, dir), false)
    }

    /// Starts `command` and waits for its handshake line; with
    /// `capture_stderr`, [`shutdown`](Self::shutdown) returns its stderr,
    /// otherwise it goes to the test's stderr.
    pub fn spawn(mut command: Command, capture_stderr: bool) -> Running {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if capture_stderr {
                Stdio::piped()
            } else {
                Stdio::inherit()
            });
        let mut child = command.spawn().expect("start plugin");
        let stderr = child.stderr.take().map(|mut pipe| {
            let (tx, rx) = mpsc::channel();
            thread::spawn(move || {
                let mut text = Vec::new();
                let _ = pipe.read_to_end(&mut text);
                let _ = tx.send(String::from_utf8_lossy(&text).into_owned());
            });
            rx
        });
        let stdout = child.stdout.take().expect("piped");
        let (line_tx, line_rx) = mpsc::channel();
        let (rest_tx, rest) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = line_tx.send(line);
            let mut tail = Vec::new();
            let _ = reader.read_to_end(&mut tail);
            let _ = rest_tx.send(tail);
        });
        let line = match line_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no handshake line within 20 s");
            }
        };
        Running {
            child: Some(child),
            line,
            rest,
            stderr,
            _dir: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// What a grpcio client dials for the handshake line's address.
    pub fn target(&self) -> String {
        let fields: Vec<&str> = self.line.trim_end().split('|').collect();
        assert!(fields.len() >= 5, "handshake line {:?}", self.line);
        match fields[2] {
            "tcp" => fields[3].to_string(),
            "unix" => format!("unix:{}", fields[3]),
            other => panic!("network {other:?} in {:?}", self.line),
        }
    }

    pub fn channel(&self) -> goplugin::grpcio::Channel {
        let env = Arc::new(EnvBuilder::new().cq_count(1).build());
        ChannelBuilder::new(env).connect(&self.target())
    }

    /// Calls GRPCController/Shutdown and waits for the process to end.
    /// Returns the exit status, what stdout carried after the handshake
    /// line, and stderr if it was captured.
    pub fn shutdown(self) -> Output {
        self.shutdown_with(None)
    }

    /// [`shutdown`](Self::shutdown) over a channel with `creds` (AutoMTLS).
    pub fn shutdown_with(mut self, creds: Option<goplugin::grpcio::ChannelCredentials>) -> Output {
        let channel = match creds {
            Some(creds) => {
                let env = Arc::new(EnvBuilder::new().cq_count(1).build());
                ChannelBuilder::new(env)
                    .override_ssl_target("localhost")
                    .set_credentials(creds)
                    .connect(&self.target())
            }
            None => self.channel(),
        };
        let controller = GrpcControllerClient::new(channel);
        // The plugin may close the connection before the answer arrives,
        // as Go plugins do; the host ignores the result too.
        let _ = controller.shutdown_opt(
            &Empty::new(),
            CallOption::default().timeout(Duration::from_secs(5)),
        );
        let (tx, rx) = mpsc::channel();
        let pid = self.pid();
        let mut child = self.child.take().expect("running");
        thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = rx
            .recv_timeout(Duration::from_secs(2))
            .unwrap_or_else(|_| panic!("plugin {pid} did not exit within 2 s of Shutdown"))
            .expect("wait");
        let stdout = self
            .rest
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default();
        let stderr = self
            .stderr
            .as_ref()
            .and_then(|rx| rx.recv_timeout(Duration::from_secs(5)).ok())
            .unwrap_or_default();
        Output {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A failed test must not leave its plugin running.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Builds `package`, a user crate of the workspace, as its user would:
/// alone (`-p`: cargo resolves features for this crate only, as for a
/// crate outside this workspace). It gets goplugin's one grpcio feature
/// set: gRPC's C++ core, built once for this target dir, is not built
/// again (asserted). Returns the binary named as the package.
pub fn build_user_crate(package: &str) -> PathBuf {
    let mut command = user_cargo();
    command.current_dir(repo()).args([
        "build",
        "--release",
        "--locked",
        "--package",
        package,
        "--message-format=json",
    ]);
    built(command, package)
}

/// `package`, the crate at `dir` (a project of its own), built with
/// `config` (cargo's `--config`) into `target`: its binary, once checked
/// that gRPC's core was not compiled again.
pub fn build_crate_at(dir: &Path, package: &str, target: &Path, config: &[String]) -> PathBuf {
    let mut command = user_cargo();
    command
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .args(["build", "--release", "--message-format=json"]);
    for value in config {
        command.arg("--config").arg(value);
    }
    built(command, package)
}

/// cargo, without what cargo set for this test binary.
fn user_cargo() -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = Command::new(cargo);
    // What cargo set for this test binary (CARGO_MANIFEST_DIR, OUT_DIR, …)
    // is not the user's environment, and build scripts that watch such a
    // variable (ring's) would run again.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let ours = ["CARGO_HOME", "CARGO_TARGET_DIR"].contains(&name.as_ref())
            || [
                "CARGO_BUILD_",
                "CARGO_NET_",
                "CARGO_REGISTR",
                "CARGO_HTTP_",
                "CARGO_TERM_",
            ]
            .iter()
            .any(|prefix| name.starts_with(prefix));
        if (name.starts_with("CARGO_") && !ours) || name == "OUT_DIR" {
            command.env_remove(name.as_ref());
        }
    }
    command
}

/// Runs a `cargo build --message-format=json` of `package`: its binary.
fn built(mut command: Command, package: &str) -> PathBuf {
    // No watchdog: compiling goplugin and the crate takes a while on a
    // busy machine, and cargo ends by itself.
    let out = command.output().expect("cargo runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "cargo build -p {package} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Its build script (which runs cmake) and its library.
    let grpcio_sys: Vec<&str> = stdout
        .lines()
        .filter(|line| line.contains(r#""reason":"compiler-artifact""#))
        .filter(|line| line.contains("#grpcio-sys@"))
        .collect();
    assert_eq!(grpcio_sys.len(), 2, "{grpcio_sys:#?}");
    for artifact in grpcio_sys {
        assert!(
            artifact.contains(r#""fresh":true"#),
            "grpcio-sys was compiled again:\n{artifact}"
        );
    }
    let executable = stdout
        .lines()
        .filter(|line| line.contains(&format!(r#""name":"{package}""#)))
        .find_map(|line| line.split(r#""executable":""#).nth(1)?.split('"').next())
        .unwrap_or_else(|| panic!("cargo names no {package} executable"));
    PathBuf::from(executable)
}

/// The resident memory of process `pid`, in KiB (`VmRSS`).
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"))
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// A self-signed certificate for `localhost` and its key, PEM (PKCS#8).
pub fn self_signed_localhost() -> (String, String) {
    use openssl::asn1::Asn1Time;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::{X509, X509NameBuilder};

    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, "localhost")
        .unwrap();
    let name = name.build();
    let mut cert = X509::builder().unwrap();
    cert.set_version(2).unwrap();
    cert.set_subject_name(&name).unwrap();
    cert.set_issuer_name(&name).unwrap();
    cert.set_pubkey(&key).unwrap();
    cert.set_not_before(Asn1Time::days_from_now(0).unwrap().as_ref())
        .unwrap();
    cert.set_not_after(Asn1Time::days_from_now(1).unwrap().as_ref())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .dns("localhost")
        .build(&cert.x509v3_context(None, None))
        .unwrap();
    cert.append_extension(san).unwrap();
    cert.sign(&key, MessageDigest::sha256()).unwrap();
    let cert = cert.build();
    (
        String::from_utf8(cert.to_pem().unwrap()).unwrap(),
        String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap(),
    )
}
