//! `kv-plugin` (and `counter-plugin`) run directly, the way a host would,
//! without a host in the way: the environment rules, the stdout discipline,
//! signals and shutdown.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;
use std::thread;
use std::time::Duration;

use goplugin::grpcio::RpcStatusCode;
use goplugin::proto::grpc_health::health_check_response::ServingStatus;
use goplugin::proto::grpc_health::{HealthCheckRequest, HealthClient};
use kv_plugin::proto::kv::{GetRequest, PutRequest};
use kv_plugin::proto::kv_grpc::KvClient;

use crate::support::{
    COOKIE, Output, Plugin, Running, example_bin, gone_within, plugin_command, run, tempdir,
};

/// Environment variables as `(name, value)` pairs.
type Vars = &'static [(&'static str, &'static str)];

const NOT_A_PLUGIN: &str = "This binary is a plugin. These are not meant to be executed directly.\n\
                            Please execute the program that consumes these plugins, which will\n\
                            load any plugins automatically\n";

/// Stops the plugin with the host's `Shutdown`: it must exit 0 having
/// written nothing on stdout after the handshake line. `case` names the
/// case in a failure.
fn stop_cleanly(running: Running, case: &str) {
    let Output {
        status,
        stdout: rest,
        ..
    } = running.shutdown();
    assert!(status.success(), "{case}: {status}");
    assert!(
        rest.is_empty(),
        "{case}: stdout after the handshake: {rest:?}"
    );
}

/// Runs the plugin to completion (for the cases where it must refuse to start).
fn run_plugin(plugin: Plugin, env: &[(&str, &str)]) -> Output {
    let dir = tempdir();
    run(plugin_command(plugin, env, dir.path()))
}

#[test]
fn without_the_cookie_it_exits_1_with_go_plugins_message_and_prints_nothing() {
    for env in [
        &[][..],
        &[("BASIC_PLUGIN", "goodbye")][..],
        &[("BASIC_PLUGIN", "")][..],
    ] {
        let out = run_plugin(Plugin::Rust, env);
        assert_eq!(out.status.code(), Some(1), "{env:?}: {}", out.stderr);
        assert_eq!(out.stdout_str(), "", "{env:?}: stdout must stay empty");
        assert_eq!(out.stderr, NOT_A_PLUGIN, "{env:?}");
    }
}

#[test]
fn the_python_reference_ignores_the_cookie() {
    // Deliberate difference: go-plugin's Python example starts anyway.
    let running = Running::start(Plugin::Python, &[]);
    assert!(
        running.line.starts_with("1|1|tcp|127.0.0.1:"),
        "{:?}",
        running.line
    );
    let Output { status, .. } = running.shutdown();
    assert!(status.success());
}

#[test]
fn unusable_port_variables_are_named_in_the_error() {
    let cases: &[(Vars, &[&str])] = &[
        (
            &[("PLUGIN_MIN_PORT", "abc"), ("PLUGIN_MAX_PORT", "25000")],
            &["PLUGIN_MIN_PORT=", "abc", "not a TCP port"],
        ),
        (
            &[("PLUGIN_MIN_PORT", "10000"), ("PLUGIN_MAX_PORT", "99999")],
            &["PLUGIN_MAX_PORT=", "99999"],
        ),
        (
            &[("PLUGIN_MIN_PORT", "30000"), ("PLUGIN_MAX_PORT", "20000")],
            &[
                "PLUGIN_MIN_PORT=",
                "30000",
                "greater than PLUGIN_MAX_PORT (20000)",
            ],
        ),
    ];
    for (vars, wants) in cases {
        let env: Vec<(&str, &str)> = [COOKIE, ("KV_PLUGIN_NETWORK", "tcp")]
            .iter()
            .chain(vars.iter())
            .copied()
            .collect();
        let out = run_plugin(Plugin::Rust, &env);
        assert_eq!(out.status.code(), Some(1), "{vars:?}: {}", out.stderr);
        assert_eq!(out.stdout_str(), "", "{vars:?}");
        assert!(
            out.stderr.contains("\"@level\":\"error\""),
            "{vars:?}: {}",
            out.stderr
        );
        for want in *wants {
            assert!(
                out.stderr.contains(want),
                "{vars:?}: {want:?} not in {}",
                out.stderr
            );
        }
    }
}

#[test]
fn a_malformed_client_cert_stops_the_plugin_at_start() {
    let cases = [
        (
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
            "not valid base64",
        ),
        // DER-shaped (a SEQUENCE holding an INTEGER) but no certificate:
        // refused at start, not later as a failure to listen.
        (
            "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n",
            "not an X.509 certificate",
        ),
    ];
    for (pem, want) in cases {
        let out = run_plugin(Plugin::Rust, &[COOKIE, ("PLUGIN_CLIENT_CERT", pem)]);
        assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
        assert_eq!(out.stdout_str(), "");
        assert!(
            out.stderr.contains("PLUGIN_CLIENT_CERT=") && out.stderr.contains(want),
            "{}",
            out.stderr
        );
        assert!(!out.stderr.contains("cannot listen"), "{}", out.stderr);
    }
}

#[test]
fn handshake_lines_follow_the_environment() {
    const TCP: (&str, &str) = ("KV_PLUGIN_NETWORK", "tcp");
    let cases: &[(Vars, &str, &str)] = &[
        (
            &[COOKIE, ("PLUGIN_PROTOCOL_VERSIONS", "1")],
            "1|1|unix|/",
            "|grpc\n",
        ),
        (
            &[COOKIE, ("PLUGIN_PROTOCOL_VERSIONS", "1"), TCP],
            "1|1|tcp|127.0.0.1:",
            "|grpc\n",
        ),
        // Bad entries are skipped; no common version advertises the lowest.
        (
            &[COOKIE, ("PLUGIN_PROTOCOL_VERSIONS", "x,1,")],
            "1|1|unix|/",
            "|grpc\n",
        ),
        (
            &[COOKIE, ("PLUGIN_PROTOCOL_VERSIONS", "5")],
            "1|1|unix|/",
            "|grpc\n",
        ),
        (&[COOKIE, TCP], "1|1|tcp|127.0.0.1:", "|grpc\n"),
        // A host that sets PLUGIN_MULTIPLEX_GRPC learns that the plugin
        // supports multiplexing (an empty field 6 without AutoMTLS). "true"
        // turns it on: this test's plain gRPC client then breaks the yamux
        // session, which ends the plugin (the shutdown below still sees it
        // exit cleanly). Any other value leaves it off, as in Go.
        (
            &[COOKIE, ("PLUGIN_MULTIPLEX_GRPC", "true")],
            "1|1|unix|/",
            "|grpc||true\n",
        ),
        (
            &[COOKIE, ("PLUGIN_MULTIPLEX_GRPC", "false")],
            "1|1|unix|/",
            "|grpc||true\n",
        ),
    ];
    for (env, prefix, suffix) in cases {
        let running = Running::start(Plugin::Rust, env);
        let line = running.line.clone();
        assert!(line.starts_with(prefix), "{env:?}: {line:?}");
        assert!(line.ends_with(suffix), "{env:?}: {line:?}");
        assert_eq!(line.matches('\n').count(), 1, "{env:?}: one line");
        stop_cleanly(running, &format!("{env:?}"));
    }
}

#[test]
fn invalid_version_entries_are_logged_as_warnings() {
    let dir = tempdir();
    let command = plugin_command(
        Plugin::Rust,
        &[COOKIE, ("PLUGIN_PROTOCOL_VERSIONS", "x,1")],
        dir.path(),
    );
    let out = Running::spawn(command, true).shutdown();
    assert!(out.status.success());
    assert!(
        out.stderr.contains("\"@level\":\"warn\"")
            && out.stderr.contains("invalid plugin version \\\"x\\\""),
        "{}",
        out.stderr
    );
}

#[test]
fn serves_kv_health_and_stops_on_shutdown_with_nothing_more_on_stdout() {
    let running = Running::start(Plugin::Rust, &[COOKIE, ("PLUGIN_PROTOCOL_VERSIONS", "1")]);
    let channel = running.channel();
    let health = HealthClient::new(channel.clone());
    let check = HealthCheckRequest {
        service: "plugin".into(),
        ..Default::default()
    };
    let status = health.check(&check).expect("health check of \"plugin\"");
    assert_eq!(status.status.enum_value(), Ok(ServingStatus::SERVING));

    let kv = KvClient::new(channel);
    let put = PutRequest {
        key: "k".into(),
        value: b"v".to_vec(),
        ..Default::default()
    };
    kv.put(&put).expect("put");
    let mut get = GetRequest {
        key: "k".into(),
        ..Default::default()
    };
    assert_eq!(
        kv.get(&get).expect("get").value,
        b"v\n\nWritten from plugin-rust"
    );
    get.key = "../escape".into();
    match kv.get(&get) {
        Err(goplugin::grpcio::Error::RpcFailure(s)) => {
            assert_eq!(s.code(), RpcStatusCode::INVALID_ARGUMENT)
        }
        other => panic!("a key with '/' must be INVALID_ARGUMENT, got {other:?}"),
    }

    stop_cleanly(running, "");
}

#[test]
fn sigint_is_ignored_while_serving() {
    let running = Running::start(Plugin::Rust, &[COOKIE]);
    // SAFETY: kill(2) on our own child's pid.
    let sent = unsafe { libc::kill(running.pid() as libc::pid_t, libc::SIGINT) };
    assert_eq!(sent, 0);
    thread::sleep(Duration::from_millis(200));
    let health = HealthClient::new(running.channel());
    let check = HealthCheckRequest {
        service: "plugin".into(),
        ..Default::default()
    };
    health.check(&check).expect("still serving after SIGINT");
    let Output { status, .. } = running.shutdown();
    assert!(status.success(), "{status}");
}

#[test]
fn a_closed_stdout_is_an_error_not_a_panic() {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills two fresh descriptors that we then own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read_end);
    let dir = tempdir();
    let mut command = plugin_command(Plugin::Rust, &[COOKIE], dir.path());
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped());
    let child = command.spawn().unwrap();
    let mut stderr = String::new();
    let mut child = child;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot write the handshake line"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `counter-plugin` keeps the same stdout discipline: go-plugin's message
/// and exit 1 without the cookie, nothing on stdout; with it, the
/// handshake line and nothing after it.
#[test]
fn counter_plugin_prints_only_the_handshake_line() {
    let dir = tempdir();
    let counter = |env: &[(&str, &str)]| {
        let mut command = std::process::Command::new(example_bin("counter-plugin"));
        command
            .current_dir(dir.path())
            .env_clear()
            .envs(env.iter().copied());
        command
    };
    let out = run(counter(&[]));
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert_eq!(out.stdout_str(), "", "stdout must stay empty");
    assert_eq!(out.stderr, NOT_A_PLUGIN);

    let running = Running::spawn(counter(&[COOKIE, ("PLUGIN_PROTOCOL_VERSIONS", "1")]), false);
    let line = running.line.clone();
    assert!(
        line.starts_with("1|1|unix|/") && line.ends_with("|grpc\n"),
        "{line:?}"
    );
    stop_cleanly(running, "");
}

/// The `static-libs` feature (build.rs): OpenSSL and libstdc++ are linked in
/// and the binaries are not position-independent, so a plugin starts
/// without resolving thousands of symbols or relocating itself.
#[test]
fn the_plugins_link_openssl_and_libstdcxx_statically_and_are_not_pie() {
    for name in ["kv-plugin", "counter-plugin"] {
        let path = example_bin(name);
        let binary = path.display();
        let header = std::fs::read(&path).unwrap();
        // ELF e_type, little endian: 2 = ET_EXEC, 3 = ET_DYN (PIE).
        assert_eq!(
            u16::from_le_bytes([header[16], header[17]]),
            2,
            "{binary} is ET_EXEC"
        );
        let out = std::process::Command::new("ldd")
            .arg(&path)
            .output()
            .unwrap();
        let needed = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "ldd {binary}: {needed}");
        for library in ["libssl", "libcrypto", "libstdc++"] {
            assert!(
                !needed.contains(library),
                "{binary} needs {library}:\n{needed}"
            );
        }
        assert!(needed.contains("libc.so"), "{needed}");
    }
}

/// SIGTERM and SIGHUP stop the plugin as the host's Kill() does: exit 0,
/// its socket file removed (a Go plugin dies and leaves it behind).
#[test]
fn sigterm_and_sighup_stop_the_plugin_cleanly() {
    use std::io::{BufRead, BufReader};
    for signal in [libc::SIGTERM, libc::SIGHUP] {
        let sockets = tempdir();
        let dir = tempdir();
        let mut child = plugin_command(
            Plugin::Rust,
            &[
                COOKIE,
                ("PLUGIN_UNIX_SOCKET_DIR", sockets.path().to_str().unwrap()),
            ],
            dir.path(),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
        let mut line = String::new();
        // Kept open: a closed stdout is the host gone, and the plugin would
        // stop (removing its socket) before the signal.
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        let socket = line.split('|').nth(3).unwrap().to_string();
        assert!(std::path::Path::new(&socket).exists(), "{line}");
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
        assert!(
            gone_within(child.id(), Duration::from_secs(2)),
            "signal {signal}: still running"
        );
        let status = child.wait().unwrap();
        assert!(status.success(), "signal {signal}: {status}");
        assert!(
            !std::path::Path::new(&socket).exists(),
            "signal {signal}: {socket} left behind"
        );
    }
}

/// A descriptor limit too low to start is said as such, before gRPC's core
/// (which aborts the process when it runs out) is started.
#[test]
fn a_descriptor_limit_is_reported_as_what_it_is() {
    for limit in [6, 10] {
        let dir = tempdir();
        let mut command = std::process::Command::new("sh");
        command
            .arg("-c")
            .arg(format!(
                "ulimit -n {limit} && exec {}",
                Plugin::Rust.command()
            ))
            .current_dir(dir.path())
            .env_clear()
            .envs([COOKIE]);
        let out = run(command);
        assert_eq!(out.status.code(), Some(1), "limit {limit}: {}", out.stderr);
        assert_eq!(out.stdout_str(), "", "limit {limit}");
        assert!(
            out.stderr.contains("not enough file descriptors to start")
                && out.stderr.contains("ulimit -n"),
            "limit {limit}: {}",
            out.stderr
        );
    }
}

/// Threads of the plugin's user now (RLIMIT_NPROC counts them all).
fn threads_of_uid(uid: u32) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
        };
        if field("Uid:") == Some(u64::from(uid)) {
            total += field("Threads:").unwrap_or(0);
        }
    }
    total
}

/// Under every thread limit from 2 to 15 threads over what the user runs,
/// the plugin either serves with all its threads (and stops cleanly on
/// SIGTERM) or exits 1 naming the limit: where grpcio cannot start its
/// completion-queue thread (it unwraps the spawn: a panic, caught), where
/// ours cannot start (the SIGTERM thread before the handshake, the stdio
/// readers or the watchdog after it). Never a panic's exit code, never a
/// plugin serving without them. The one exception, not ours to fix: a limit
/// that leaves gRPC's core short of its own threads, where it waits forever
/// before the handshake (counted, and killed). Run as `nobody` when root
/// (RLIMIT_NPROC does not bind root), else as the user.
#[test]
fn thread_limits_stop_the_plugin_with_a_message() {
    use std::io::Read as _;
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    // A copy `nobody` can run, wherever the checkout is.
    let bin = tempdir();
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let plugin = bin.path().join("kv-plugin");
    std::fs::copy(example_bin("kv-plugin"), &plugin).unwrap();
    let mut seen: Vec<String> = Vec::new();
    for extra in 2..=15 {
        let dir = tempdir();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut command = std::process::Command::new(if root { "setpriv" } else { "prlimit" });
        if root {
            command.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "prlimit",
            ]);
        }
        // SAFETY: getuid cannot fail.
        let uid = if root {
            65534
        } else {
            unsafe { libc::getuid() }
        };
        let limit = threads_of_uid(uid) + extra;
        command
            .arg(format!("--nproc={limit}:{limit}"))
            .arg(&plugin)
            .current_dir(dir.path())
            .env_clear()
            .envs([COOKIE, ("TMPDIR", dir.path().to_str().unwrap())])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let err_reader = thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        // The handshake line as soon as it comes, then whatever follows.
        let (line_tx, line_rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            use std::io::BufRead;
            let mut reader = std::io::BufReader::new(&mut stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = line_tx.send(line);
            let mut rest = String::new();
            let _ = reader.read_to_string(&mut rest);
            let _ = line_tx.send(rest);
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let mut status = None;
        while std::time::Instant::now() < deadline {
            if let Some(done) = child.try_wait().unwrap() {
                status = Some(done);
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let socket_written = || std::fs::read_dir(dir.path()).unwrap().count() > 0;
        let handshake = line_rx
            .recv_timeout(Duration::from_millis(100))
            .unwrap_or_default();
        let outcome = match status {
            Some(status) => {
                let stderr = err_reader.join().unwrap();
                assert_eq!(
                    status.code(),
                    Some(1),
                    "{extra} threads: {status}: {stderr}"
                );
                let rest = line_rx.recv().unwrap_or_default();
                assert!(
                    rest.is_empty() && (handshake.is_empty() || handshake.starts_with("1|1|")),
                    "{extra} threads: {handshake:?} {rest:?}"
                );
                let reason = stderr
                    .split("not enough threads to start: ")
                    .nth(1)
                    .unwrap_or_else(|| panic!("{extra} threads: no reason in {stderr}"));
                reason
                    .split(['(', ':'])
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string()
            }
            None if handshake.starts_with("1|1|unix|") => {
                // Serving with all its threads: SIGTERM stops it cleanly.
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                let status = child.wait().unwrap();
                assert!(status.success(), "{extra} threads: serving, then {status}");
                assert!(!socket_written(), "{extra} threads: socket left");
                "serves".to_string()
            }
            None => {
                let _ = child.kill();
                let _ = child.wait();
                "gRPC's core waits forever".to_string()
            }
        };
        eprintln!("{extra} threads: {outcome}");
        seen.push(outcome);
    }
    let saw = |what: &str| seen.iter().any(|outcome| outcome.contains(what));
    assert!(saw("gRPC could not start"), "{seen:?}");
    assert!(saw("cannot start the"), "{seen:?}");
    assert!(saw("serves"), "{seen:?}");
}
