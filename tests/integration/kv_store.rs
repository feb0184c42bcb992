//! The KV plugin loses nothing: atomic replace under a same-key race,
//! complete values after SIGKILL at random moments, hostile keys refused,
//! exact status codes. Through the real hosts where a host can see it.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kv_plugin::proto::{kv::PutRequest, kv_grpc::KvClient};

use crate::support::{
    COOKIE, Host, HostRun, Output, Plugin, Running, field, plugin_command, run, tempdir,
};

const HOSTS: [Host; 2] = [Host::Current, Host::V101];

/// Writers and readers on one key over the host's single connection: every
/// read of the Rust plugin is a whole value. The references write in place,
/// so their readers see truncated and half-written values: the expected
/// difference.
#[test]
fn same_key_race_has_no_torn_reads() {
    for host in HOSTS {
        for plugin in [Plugin::Rust, Plugin::Python, Plugin::Go] {
            let dir = tempdir();
            let out = HostRun::new(host, plugin, dir.path())
                .run(&["race", "k", "4", "4", "100", "65536"]);
            out.assert_success();
            let line = out.stdout_str();
            let count = |name: &str| -> u32 {
                field(&line, name).and_then(|v| v.parse().ok()).expect(name)
            };
            eprintln!("{host:?}/{plugin:?}: {}", line.trim());
            assert_eq!(count("reads") + count("missing"), 400, "{line}");
            match plugin {
                Plugin::Rust => {
                    assert_eq!(count("torn"), 0, "{host:?}: {line}");
                    assert!(count("reads") > 0, "{line}");
                }
                // Expected difference: in-place writes tear under a race.
                Plugin::Python | Plugin::Go => {
                    assert!(count("torn") > 0, "{host:?}/{plugin:?}: {line}")
                }
            }
            let names: Vec<String> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(
                names,
                ["kv_k"],
                "{host:?}/{plugin:?}: only the key's file remains"
            );
        }
    }
}

/// A key as the host's `hput`/`hget` take it: hex, so that NUL travels too.
fn hex(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Keys that cannot be one file name: refused with INVALID_ARGUMENT and a
/// message stating the rule; nothing is created inside or outside the
/// directory. Keys go through the host hex-encoded, so NUL travels too.
#[test]
fn hostile_keys_are_refused_and_write_nothing() {
    let long_unicode = "ключ".repeat(64);
    let too_long = "k".repeat(300);
    let keys: &[&str] = &[
        "../x",
        "a/b",
        "/etc/passwd",
        "a\0b",
        "",
        ".",
        "..",
        &too_long,
        &long_unicode,
    ];
    for host in HOSTS {
        let outer = tempdir();
        let dir = outer.path().join("store");
        fs::create_dir(&dir).unwrap();
        for key in keys {
            let hex = hex(key);
            for args in [vec!["hput", &hex, "v"], vec!["hget", &hex]] {
                let out = HostRun::new(host, Plugin::Rust, &dir).run(&args);
                out.assert_failure();
                let stdout = out.stdout_str();
                assert!(
                    stdout
                        .starts_with("error: rpc error: code = InvalidArgument desc = invalid key")
                        && stdout.contains("must not contain '/' or NUL"),
                    "{host:?} {key:?}: {stdout}"
                );
            }
        }
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            0,
            "{host:?}: nothing inside"
        );
        assert_eq!(
            fs::read_dir(outer.path()).unwrap().count(),
            1,
            "{host:?}: nothing outside"
        );
    }
}

/// The Python reference pastes keys into paths: "" , "." and ".." become
/// files `kv_`, `kv_.` and `kv_..`, and errors are UNKNOWN.
#[test]
fn the_python_reference_takes_hostile_keys_as_paths() {
    let dir = tempdir();
    for key in ["", ".", ".."] {
        let hex = hex(key);
        HostRun::new(Host::Current, Plugin::Python, dir.path())
            .run(&["hput", &hex, "v"])
            .assert_success();
        assert!(dir.path().join(format!("kv_{key}")).exists(), "{key:?}");
    }
    let out = HostRun::new(Host::Current, Plugin::Python, dir.path()).run(&["put", "a/b", "v"]);
    out.assert_failure();
    assert!(
        out.stdout_str().contains("code = Unknown"),
        "{}",
        out.stdout_str()
    );
}

#[test]
fn a_value_over_the_limit_is_resource_exhausted_with_the_limit() {
    for host in HOSTS {
        let dir = tempdir();
        let input = dir.path().join("value.in");
        fs::write(&input, vec![b'x'; 1001]).unwrap();
        let out = HostRun::new(host, Plugin::Rust, dir.path())
            .env("KV_PLUGIN_MAX_VALUE_BYTES", "1000")
            .run(&["put-file", "big", input.to_str().unwrap()]);
        out.assert_failure();
        let stdout = out.stdout_str();
        assert!(
            stdout.starts_with(
                "error: rpc error: code = ResourceExhausted desc = value of 1001 bytes"
            ) && stdout.contains("limit of 1000 bytes")
                && stdout.contains("KV_PLUGIN_MAX_VALUE_BYTES"),
            "{host:?}: {stdout}"
        );
        assert!(!dir.path().join("kv_big").exists());

        // Far past the limit gRPC itself refuses the message before the
        // plugin sees it (default limit 4 MiB + 64 KiB of framing), also
        // with RESOURCE_EXHAUSTED and the sizes.
        fs::write(&input, vec![b'x'; 5 * 1024 * 1024]).unwrap();
        let out = HostRun::new(host, Plugin::Rust, dir.path()).run(&[
            "put-file",
            "big",
            input.to_str().unwrap(),
        ]);
        out.assert_failure();
        let stdout = out.stdout_str();
        assert!(
            stdout.contains("code = ResourceExhausted") && stdout.contains("larger than max"),
            "{host:?}: {stdout}"
        );
    }
}

#[test]
fn relaxed_mode_round_trips_and_bad_settings_are_refused() {
    let dir = tempdir();
    let put = HostRun::new(Host::Current, Plugin::Rust, dir.path())
        .env("KV_PLUGIN_DURABILITY", "relaxed");
    put.run(&["put", "k", "v"]).assert_success();
    assert_eq!(
        fs::read(dir.path().join("kv_k")).unwrap(),
        [&b"v"[..], Plugin::Rust.trailer()].concat()
    );

    for (var, value) in [
        ("KV_PLUGIN_DURABILITY", "sometimes"),
        ("KV_PLUGIN_MAX_VALUE_BYTES", "lots"),
    ] {
        let out = run(plugin_command(
            Plugin::Rust,
            &[COOKIE, (var, value)],
            dir.path(),
        ));
        assert_eq!(out.status.code(), Some(1), "{var}");
        assert_eq!(out.stdout_str(), "", "{var}: nothing on stdout");
        assert!(
            out.stderr.contains(&format!("{var}=\\\"{value}\\\"")),
            "{var}: {}",
            out.stderr
        );
    }
}

/// A tiny xorshift generator: enough randomness for kill timing, with the
/// seed printed so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

const CRASH_VALUE: usize = 128 * 1024;

fn crash_value(letter: u8) -> Vec<u8> {
    vec![letter; CRASH_VALUE]
}

/// SIGKILL the plugin at random moments while it is writing, 60 times. After
/// every kill each key holds a whole value: the last one acknowledged or the
/// one in flight, never a mix; no temporary file is visible as a key; and
/// the next start removes the dead processes' temporary files.
#[test]
fn sigkill_during_puts_never_leaves_a_torn_or_lost_value() {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash loop seed {seed}");
    let mut rng = Rng(seed);
    let dir = tempdir();
    // A killed plugin cannot remove its socket file: keep them out of /tmp.
    let sockets = tempdir();
    let tmpdir = sockets.path().to_str().expect("a UTF-8 temporary path");
    let keys = ["k0", "k1", "k2"];
    // Per key: the letter of the whole value on disk after the last round
    // (None: no file yet). A Put that completed on disk but was killed
    // before its answer legitimately becomes the new state.
    let mut state: HashMap<&str, Option<u8>> = keys.iter().map(|k| (*k, None)).collect();
    for round in 0..60u32 {
        let running = Running::start_in(Plugin::Rust, &[COOKIE, ("TMPDIR", tmpdir)], dir.path());
        let kv = KvClient::new(running.channel());
        // (key index, letter) of the Put in flight, and the acknowledged ones.
        let in_flight: Arc<Mutex<Option<(usize, u8)>>> = Arc::default();
        let done: Arc<Mutex<Vec<(usize, u8)>>> = Arc::default();
        let writer = {
            let (in_flight, done) = (Arc::clone(&in_flight), Arc::clone(&done));
            thread::spawn(move || {
                for i in 0usize.. {
                    let key = i % 3;
                    let letter = b'a' + ((round as usize * 7 + i) % 26) as u8;
                    *in_flight.lock().unwrap() = Some((key, letter));
                    let req = PutRequest {
                        key: format!("k{key}"),
                        value: crash_value(letter),
                        ..Default::default()
                    };
                    if kv.put(&req).is_err() {
                        return;
                    }
                    done.lock().unwrap().push((key, letter));
                }
            })
        };
        thread::sleep(Duration::from_millis(1 + rng.next(40)));
        let pid = running.pid();
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
        drop(running); // reaps the process
        writer.join().unwrap();

        let in_flight = *in_flight.lock().unwrap();
        let done = done.lock().unwrap();
        for (index, key) in keys.iter().enumerate() {
            // The last acknowledged value, or what was there before.
            let mut allowed = vec![
                done.iter()
                    .rev()
                    .find(|(k, _)| *k == index)
                    .map(|(_, letter)| Some(*letter))
                    .unwrap_or(state[key]),
            ];
            if let Some((k, letter)) = in_flight
                && k == index
            {
                allowed.push(Some(letter));
            }
            let content = fs::read(dir.path().join(format!("kv_{key}"))).ok();
            let observed = content.as_deref().map(|c| whole_letter(c).unwrap_or(b'?'));
            assert!(
                allowed.contains(&observed),
                "seed {seed} round {round}: {key} holds {} bytes ({:?}); allowed: {allowed:?}",
                content.as_ref().map_or(0, Vec::len),
                observed.map(char::from),
            );
            state.insert(key, observed);
        }
        assert_only_keys_and_temp_files(dir.path(), &keys);
    }
    // A clean start removes what the killed processes left.
    let running = Running::start_in(Plugin::Rust, &[COOKIE], dir.path());
    let Output { status, .. } = running.shutdown();
    assert!(status.success());
    let left: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("kv_"))
        .collect();
    assert!(
        left.is_empty(),
        "temporary files left after a clean start: {left:?}"
    );
}

/// The letter of a whole crash-loop value (`CRASH_VALUE` times one letter,
/// then the trailer), or None for anything else.
fn whole_letter(content: &[u8]) -> Option<u8> {
    let (value, trailer) = content.split_at_checked(CRASH_VALUE)?;
    let letter = *value.first()?;
    (trailer == Plugin::Rust.trailer() && value.iter().all(|&b| b == letter)).then_some(letter)
}

fn assert_only_keys_and_temp_files(dir: &Path, keys: &[&str]) {
    for entry in fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(key) = name.strip_prefix("kv_") {
            assert!(keys.contains(&key), "unexpected key file {name}");
        } else {
            assert!(name.starts_with(".kvtmp-"), "unexpected file {name}");
        }
    }
}

/// A FIFO planted as `kv_f` would hang a Get that opened it, on the
/// completion-queue thread, and with it every call of the host's one
/// connection: it is refused at once, naming the file, and the plugin
/// keeps answering.
#[test]
fn a_planted_fifo_is_refused_and_holds_up_nothing() {
    use goplugin::grpcio::{CallOption, RpcStatusCode};
    use kv_plugin::proto::kv::GetRequest;

    let dir = tempdir();
    let made = std::process::Command::new("mkfifo")
        .arg(dir.path().join("kv_f"))
        .status()
        .unwrap();
    assert!(made.success());
    fs::write(dir.path().join("kv_ok"), b"fine").unwrap();
    let running = Running::start_in(Plugin::Rust, &[COOKIE], dir.path());
    let kv = KvClient::new(running.channel());
    let get = |key: &str| {
        let req = GetRequest {
            key: key.into(),
            ..Default::default()
        };
        kv.get_opt(&req, CallOption::default().timeout(Duration::from_secs(5)))
    };
    match get("f") {
        Err(goplugin::grpcio::Error::RpcFailure(status)) => {
            assert_eq!(status.code(), RpcStatusCode::FAILED_PRECONDITION);
            assert!(status.message().contains("kv_f is a FIFO"), "{status:?}");
        }
        other => panic!("a FIFO must be FAILED_PRECONDITION, got {other:?}"),
    }
    assert_eq!(get("ok").expect("the plugin still answers").value, b"fine");
    let Output { status, .. } = running.shutdown();
    assert!(status.success());
}

/// Values are written 0644 whatever the umask: never writable by others
/// (under umask 000 they were 0666), and as go-plugin's Go example writes
/// them under the usual umask.
#[test]
fn values_are_0644_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    for umask in ["000", "077", "022"] {
        let dir = tempdir();
        let mut command = std::process::Command::new("sh");
        command
            .arg("-c")
            .arg(format!("umask {umask} && exec {}", Plugin::Rust.command()))
            .current_dir(dir.path())
            .env_clear()
            .envs([COOKIE]);
        let running = Running::spawn(command, false);
        let put = PutRequest {
            key: "k".into(),
            value: b"v".to_vec(),
            ..Default::default()
        };
        KvClient::new(running.channel()).put(&put).expect("put");
        let mode = fs::metadata(dir.path().join("kv_k"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644, "umask {umask}: {mode:o}");
        let Output { status, .. } = running.shutdown();
        assert!(status.success());
    }
}
