//! Shared test support: where the hosts and plugins are, and running them
//! with a watchdog.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long any host or plugin process may run before the test kills it.
pub const WATCHDOG: Duration = Duration::from_secs(60);

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
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
    pub fn path(self) -> PathBuf {
        let name = match self {
            Host::Current => "kv-host-current",
            Host::V101 => "kv-host-101",
        };
        let path = repo().join(".build/go-hosts").join(name);
        assert!(
            path.exists(),
            "{} is missing: build the go-plugin test hosts with `make hosts` (or run `make test`)",
            path.display()
        );
        path
    }
}

/// A KV plugin under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plugin {
    /// This crate's `kv-plugin`.
    Rust,
    /// The Python reference (tests/fixtures/python-kv).
    Python,
}

impl Plugin {
    /// The command line a host runs (as `sh -c "exec $KV_PLUGIN"`).
    pub fn command(self) -> String {
        match self {
            Plugin::Rust => env!("CARGO_BIN_EXE_kv-plugin").to_string(),
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
        }
    }

    /// The trailer the plugin appends to every value.
    pub fn trailer(self) -> &'static [u8] {
        match self {
            Plugin::Rust => b"\n\nWritten from plugin-rust",
            Plugin::Python => b"\n\nWritten from plugin-python",
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
        let mut command = Command::new(host.path());
        command
            .current_dir(dir)
            .env("KV_PLUGIN", plugin.command())
            // A host sets these itself; none may leak in from the test's environment.
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

pub fn wait_with_watchdog(mut child: Child) -> Output {
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
