//! What a real host sees of the plugin's life: forwarded stdio, re-levelled
//! hclog lines, the unix socket options of the current release, and no
//! plugin left behind when the host dies.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{Host, Plugin, Running, field, gone_within, tempdir};

const HOSTS: [Host; 2] = [Host::Current, Host::V101];

/// `examples/echo.rs`.
fn echo_plugin() -> PathBuf {
    crate::support::cargo_example("echo")
}

fn echo_host(host: Host, dir: &Path) -> Command {
    let mut command = Command::new(host.path());
    command
        .current_dir(dir)
        .env("KV_PLUGIN", echo_plugin())
        .env_remove("BASIC_PLUGIN")
        .env_remove("PLUGIN_CLIENT_CERT");
    command
}

/// `kv put k VALUE` through the current host with the echo plugin: the
/// host's own output, and what reached its SyncStdout and SyncStderr.
fn put_through_stdio_sync(value: &str) -> (crate::support::Output, String, String) {
    let dir = tempdir();
    let (out, err) = (dir.path().join("sync.out"), dir.path().join("sync.err"));
    let mut command = echo_host(Host::Current, dir.path());
    command
        .env("KV_HOST_SYNC_STDOUT", &out)
        .env("KV_HOST_SYNC_STDERR", &err)
        .args(["put", "k", value]);
    let run = crate::support::run(command);
    run.assert_success();
    let out = fs::read_to_string(out).unwrap();
    let err = fs::read_to_string(err).unwrap();
    (run, out, err)
}

#[test]
fn the_current_host_receives_prints_on_the_right_channel() {
    let (run, out, err) = put_through_stdio_sync("hello");
    assert_eq!(
        run.stdout_str(),
        "",
        "the host's stdout carries nothing of the plugin's"
    );
    assert!(out.contains("stdout says hello\n"), "SyncStdout: {out:?}");
    assert!(
        out.contains("child says hello\n"),
        "a child process's stdout: {out:?}"
    );
    assert!(!out.contains("stderr says"), "SyncStdout: {out:?}");
    assert_eq!(err, "stderr says hello\n", "SyncStderr");
    assert!(
        !run.stderr.contains("line for hello\"}"),
        "log lines are not stdio data"
    );
}

/// What the plugin prints right before the host's `Kill()` (here: 120 KB
/// during the last Put) is written to the stdio stream before the plugin
/// answers `Shutdown`, so none of it is cut off by the stop.
#[test]
fn output_printed_just_before_kill_reaches_the_host() {
    let value = "x".repeat(60_000);
    for round in 0..3 {
        let (_, out, err) = put_through_stdio_sync(&value);
        assert_eq!(
            (out.len(), err.len()),
            (2 * value.len() + 25, value.len() + 13),
            "round {round}: bytes of stdout, stderr"
        );
        assert_eq!(out, format!("stdout says {value}\nchild says {value}\n"));
        assert_eq!(err, format!("stderr says {value}\n"));
    }
}

#[test]
fn go_plugin_1_0_1_never_subscribes_and_nothing_blocks() {
    let dir = tempdir();
    let mut command = echo_host(Host::V101, dir.path());
    command.args(["put", "k", "hello"]);
    let run = crate::support::run(command);
    run.assert_success();
    // stderr passes through to the host's log; stdout is dropped.
    assert!(
        run.stderr.contains("[DEBUG] plugin.sh: stderr says hello"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("stdout says") && !run.stderr.contains("child says"),
        "{}",
        run.stderr
    );
}

#[test]
fn hclog_lines_are_relevelled_by_both_hosts() {
    for host in HOSTS {
        let dir = tempdir();
        let mut command = echo_host(host, dir.path());
        command.args(["put", "k", "hello"]);
        let run = crate::support::run(command);
        run.assert_success();
        for (want, fields) in [
            (
                "[ERROR] plugin.sh: error line for hello:",
                &["@module=echo"][..],
            ),
            (
                "[WARN]  plugin.sh: warn line for hello:",
                &["@module=echo"][..],
            ),
            (
                "[INFO]  plugin.sh: info line for hello:",
                &["@module=echo", "key=k"][..],
            ),
            (
                "[DEBUG] plugin.sh: debug line for hello:",
                &["@module=echo"][..],
            ),
        ] {
            let line = run
                .stderr
                .lines()
                .find(|l| l.contains(want))
                .unwrap_or_else(|| panic!("{host:?}: {want:?} not in\n{}", run.stderr));
            for field in fields.iter().chain(&["timestamp="]) {
                assert!(line.contains(field), "{host:?}: {field:?} not in {line:?}");
            }
        }
    }
}

/// A host running `serve-for`, and what it printed about its plugin.
struct Serving {
    host: std::process::Child,
    /// The process the host started: the plugin, or the `sh` around it.
    pid: u32,
    addr: String,
}

fn serve(host: Host, dir: &Path, env: &[(&str, &str)]) -> Serving {
    let mut command = Command::new(host.path());
    command
        .current_dir(dir)
        .env("KV_PLUGIN", Plugin::Rust.command())
        .env_remove("BASIC_PLUGIN")
        .args(["serve-for", "60000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("start host");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pid = field(&line, "pid")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{line:?}"));
    let addr = field(&line, "addr").expect("addr").to_string();
    Serving {
        host: child,
        pid,
        addr,
    }
}

/// Direct children of `pid`, from /proc.
fn children(pid: u32) -> Vec<u32> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    stat.rsplit(')')
                        .next()?
                        .split_whitespace()
                        .nth(1)?
                        .parse::<u32>()
                        .ok()
                })
                == Some(pid)
        })
        .collect()
}

#[test]
fn a_sigkilled_host_leaves_no_plugin_behind() {
    for host in HOSTS {
        for through_shell in [false, true] {
            let dir = tempdir();
            let env: &[(&str, &str)] = if through_shell {
                &[("KV_HOST_NO_EXEC", "1")]
            } else {
                &[]
            };
            let mut serving = serve(host, dir.path(), env);
            let plugin = if through_shell {
                // `sh -c` without exec: the plugin is the shell's child.
                let kids = children(serving.pid);
                assert_eq!(
                    kids.len(),
                    1,
                    "{host:?}: children of sh {}: {kids:?}",
                    serving.pid
                );
                kids[0]
            } else {
                serving.pid
            };
            assert!(
                Path::new(&serving.addr).exists(),
                "{host:?}: socket {}",
                serving.addr
            );
            serving.host.kill().unwrap();
            serving.host.wait().unwrap();
            assert!(
                gone_within(plugin, Duration::from_secs(3)),
                "{host:?} (through sh: {through_shell}): plugin {plugin} still runs 3 s after the host died"
            );
            assert!(
                !Path::new(&serving.addr).exists(),
                "{host:?}: socket file left behind"
            );
            if through_shell {
                assert!(
                    gone_within(serving.pid, Duration::from_secs(3)),
                    "the shell ends with the plugin"
                );
            }
        }
    }
}

#[test]
fn the_current_hosts_socket_group_option_reaches_the_plugin() {
    // SAFETY: getgid cannot fail.
    let gid = unsafe { libc::getgid() };
    let dir = tempdir();
    let mut serving = serve(
        Host::Current,
        dir.path(),
        &[("KV_HOST_SOCKET_GROUP", &gid.to_string())],
    );
    let meta = fs::metadata(&serving.addr).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), gid);
    serving.host.kill().unwrap();
    serving.host.wait().unwrap();
    assert!(gone_within(serving.pid, Duration::from_secs(3)));
    assert!(!Path::new(&serving.addr).exists(), "socket file removed");
}

/// The echo example started directly, with this test as its host; its
/// stderr is captured.
fn echo_without_host(dir: &Path) -> Running {
    let mut command = Command::new(echo_plugin());
    command
        .current_dir(dir)
        .env_clear()
        .env("BASIC_PLUGIN", "hello")
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    Running::spawn(command, true)
}

/// A Put of `value` to the echo example, which prints it.
fn echo_put(channel: goplugin::grpcio::Channel, value: &str) {
    use kv_plugin::proto::{kv::PutRequest, kv_grpc::KvClient};
    let put = PutRequest {
        key: "k".into(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    };
    KvClient::new(channel).put(&put).expect("put");
}

/// Run directly, without a subscriber: after the handshake line nothing
/// reaches the real stdout, not even a child process's output, and stderr
/// prints pass through next to the log lines.
#[test]
fn nothing_but_the_handshake_reaches_the_real_stdout() {
    let dir = tempdir();
    let running = echo_without_host(dir.path());
    assert!(running.line.starts_with("1|1|unix|"), "{:?}", running.line);
    echo_put(running.channel(), "hello");
    let out = running.shutdown();
    assert!(out.status.success());
    assert_eq!(out.stdout_str(), "", "stdout after the handshake line");
    assert!(out.stderr.contains("stderr says hello\n"), "{}", out.stderr);
    assert!(
        out.stderr.contains("\"@message\":\"info line for hello\""),
        "{}",
        out.stderr
    );
}

/// A host that subscribes to stdio only after its first call (go-plugin
/// asks first, but the plugin may run the call before it sees the
/// subscription): what the call printed is held and then delivered, on the
/// right channels, instead of dropped or passed to the real stderr.
#[test]
fn output_from_before_the_subscription_reaches_the_subscriber() {
    use futures::StreamExt;
    use goplugin::proto::plugin::{GrpcStdioClient, stdio_data::Channel};

    let dir = tempdir();
    let running = echo_without_host(dir.path());
    let channel = running.channel();
    echo_put(channel.clone(), "early");
    std::thread::sleep(Duration::from_millis(50));

    let stdio = GrpcStdioClient::new(channel);
    let mut stream = stdio
        .stream_stdio(&goplugin::protobuf::well_known_types::empty::Empty::new())
        .expect("subscribe");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut out, mut err) = (String::new(), String::new());
        while !(out.contains("child says early\n") && err.contains("stderr says early\n")) {
            let Some(Ok(chunk)) = futures::executor::block_on(stream.next()) else {
                break;
            };
            let text = String::from_utf8_lossy(&chunk.data);
            match chunk.channel.enum_value() {
                Ok(Channel::STDOUT) => out.push_str(&text),
                Ok(Channel::STDERR) => err.push_str(&text),
                _ => {}
            }
        }
        let _ = tx.send((out, err, stdio));
    });
    let (out, err, _stdio) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the held output arrives");
    assert_eq!(out, "stdout says early\nchild says early\n");
    assert_eq!(err, "stderr says early\n");
    let out = running.shutdown();
    assert!(out.status.success());
    assert!(
        !out.stderr.contains("stderr says early"),
        "held stderr went to the subscriber only: {}",
        out.stderr
    );
}
