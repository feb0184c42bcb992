//! The host under hostile plugins (tests/fixtures/python-hostile, and
//! go-plugin's Go example plugin behind a shell): no process outlives a
//! SIGKILLed host, and what a plugin sends cannot grow the host's memory.
//! The host is `host_bench serve-for` (examples/host_bench.rs), a process
//! of its own: it reports its peak resident memory.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use crate::support::{
    assert_nothing_left, cargo_example, example_bin, go_binary, processes_in, repo, run, tempdir,
};

/// The hostile plugin's command line (a Python in the test venv).
fn hostile_plugin() -> String {
    format!(
        "{} {}",
        repo().join(".build/venv/bin/python").display(),
        repo()
            .join("tests/fixtures/python-hostile/plugin.py")
            .display()
    )
}

/// `host_bench serve-for MS` against the hostile plugin doing `hostile`:
/// its Gets that succeeded and failed, and its peak RSS in KiB.
fn host_under(hostile: &str, ms: u32) -> (u64, u64, u64) {
    let dir = tempdir();
    let mut host = Command::new(cargo_example("host_bench"));
    host.current_dir(dir.path())
        .env("TMPDIR", dir.path())
        .env("KV_PLUGIN", hostile_plugin())
        .env("HOSTILE", hostile)
        .args(["serve-for", &ms.to_string()]);
    let out = run(host);
    let stdout = out.stdout_str();
    assert!(out.status.success(), "{hostile}: {stdout}\n{}", out.stderr);
    let field = |name: &str| -> u64 {
        stdout
            .split_whitespace()
            .find_map(|word| word.strip_prefix(&format!("{name}=")))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("{hostile}: no {name} in {stdout}"))
    };
    (
        field("gets_ok"),
        field("gets_failed"),
        field("host_peak_kb"),
    )
}

/// A 512 MiB reply, a 512 MiB message on the stdio stream (which the host
/// opens itself) and 200,000 broker announcements nobody asked for: the
/// host stays under 150 MB, and the user's calls go on. (Over its memory
/// quota gRPC resets the calls that hold the most: the stdio stream, and
/// sometimes calls in flight on the same connection at that moment, a few
/// of the thousands made: printed, not asserted.)
#[test]
fn what_a_hostile_plugin_sends_leaves_the_host_bounded() {
    let (ok, failed, baseline) = host_under("", 2000);
    assert!(ok > 0 && failed == 0, "baseline: {ok} ok, {failed} failed");
    eprintln!("host peak RSS: {baseline} KiB with a well-behaved plugin");
    for hostile in ["big-reply", "big-stdio", "broker-flood"] {
        let (ok, failed, peak) = host_under(hostile, 4000);
        eprintln!(
            "host peak RSS: {peak} KiB under {hostile} ({ok} Gets answered, {failed} failed)"
        );
        assert!(
            peak < 150 * 1024,
            "{hostile}: the host peaked at {peak} KiB"
        );
        if hostile == "big-reply" {
            assert!(ok == 0 && failed > 0, "{hostile}: {ok} ok, {failed} failed");
        } else {
            assert!(
                ok > failed,
                "{hostile}: the user's calls stopped: {ok} ok, {failed} failed"
            );
        }
    }
}

/// A host SIGKILLed mid-call leaves no process of a plugin that runs
/// behind `sh -c` (the shell does not exec it) and ignores SIGTERM: the
/// Python plugin, and go-plugin's Go example plugin.
#[test]
fn a_sigkilled_host_leaves_no_process_of_a_plugin_behind_sh_c() {
    let go = go_binary("examples/grpc/plugin-go-grpc");
    let plugins = [
        (
            "python",
            format!("{}; true", hostile_plugin()),
            "ignore-term",
        ),
        ("go", format!("trap '' TERM; {}; true", go.display()), ""),
    ];
    for (name, plugin, hostile) in plugins {
        let dir = tempdir();
        let tmp = tempdir();
        let mut host = Command::new(cargo_example("host_bench"));
        host.current_dir(dir.path())
            .env("TMPDIR", tmp.path())
            .env("KV_PLUGIN", &plugin)
            .env("KV_HOST_SHELL", "1")
            .env("HOSTILE", hostile)
            .args(["serve-for", "20000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut host = host.spawn().expect("host_bench");
        let mut line = String::new();
        BufReader::new(host.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the host's first line");
        assert!(line.starts_with("pid="), "{name}: host said {line:?}");
        // The plugin runs as the shell's child: a grandchild of the host.
        let running = processes_in(dir.path());
        let parent = |pid: u32| -> Option<u32> {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            stat.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        };
        let host_pid = host.id();
        assert!(
            running.iter().any(|pid| {
                parent(*pid).is_some_and(|ppid| ppid != host_pid && parent(ppid) == Some(host_pid))
            }),
            "{name}: no grandchild of the host among {running:?}"
        );
        thread::sleep(Duration::from_millis(200));
        host.kill().expect("SIGKILL the host");
        host.wait().expect("reap the host");
        // SIGKILLed plugins leave their socket files, as Go's do.
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while !processes_in(dir.path()).is_empty() && std::time::Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        for entry in std::fs::read_dir(tmp.path()).expect("TMPDIR") {
            let _ = std::fs::remove_file(entry.expect("entry").path());
        }
        assert_nothing_left(dir.path(), tmp.path());
    }
}

/// A plugin that never answers: `kv-host` gives up at its deadline
/// (`KV_HOST_TIMEOUT`, 30 s by default), with the call's status.
#[test]
fn an_example_host_does_not_wait_for_ever() {
    let dir = tempdir();
    let mut host = Command::new(example_bin("kv-host"));
    host.current_dir(dir.path())
        .env("TMPDIR", dir.path())
        .env("KV_PLUGIN", format!("exec {}", hostile_plugin()))
        .env("HOSTILE", "hang")
        .env("KV_HOST_TIMEOUT", "1")
        .args(["get", "k"]);
    let out = run(host);
    assert!(!out.status.success());
    assert!(
        out.stdout_str().contains("DEADLINE_EXCEEDED"),
        "{}",
        out.stdout_str()
    );
    let mut host = Command::new(example_bin("kv-host"));
    host.env("KV_HOST_TIMEOUT", "soon").args(["get", "k"]);
    let out = run(host);
    assert!(
        out.stdout_str()
            .contains("KV_HOST_TIMEOUT=\"soon\": give seconds"),
        "{}",
        out.stdout_str()
    );
}
