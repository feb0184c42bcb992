//! The host side in Rust (`goplugin::Client`, `kv-host`, `counter-host`):
//! go-plugin's own Go example plugins, the Python reference and this
//! crate's plugins, with and without AutoMTLS; plugins that misbehave at
//! start, mid-call and at shutdown; a host killed mid-call; reattach; and
//! the plugin's log lines re-levelled. No test leaves a process or a
//! socket file behind: plugins run in a directory and with a `TMPDIR` of
//! the test's, both checked at the end.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use counter_plugin::proto::counter::{PutRequest as CounterPut, SumRequest};
use counter_plugin::proto::counter_grpc::{AddHelperClient, CounterClient};
use counter_plugin::proto::lender_grpc::HelperLenderClient;
use goplugin::grpcio::RpcStatusCode;
use goplugin::{Client, ClientBuilder, Error, ReattachConfig, SecureConfig};
use kv_plugin::HANDSHAKE;
use kv_plugin::proto::kv::{GetRequest, PutRequest};
use kv_plugin::proto::kv_grpc::KvClient;

use crate::support::{
    Captured, Plugin, alive, assert_nothing_left, cargo_example, example_bin, go_binary,
    gone_within, processes_in, run, tempdir,
};

/// A plugin's working directory and `TMPDIR` (its sockets), both the
/// test's.
struct Place {
    dir: tempfile::TempDir,
    tmp: tempfile::TempDir,
}

impl Place {
    fn new() -> Place {
        Place {
            dir: tempdir(),
            tmp: tempdir(),
        }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `program args…` to run in this place.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .current_dir(self.dir())
            .env("TMPDIR", self.tmp.path())
            .env_remove("PLUGIN_CLIENT_CERT")
            .env_remove("PLUGIN_MULTIPLEX_GRPC");
        command
    }

    /// A shell script as the plugin.
    fn script(&self, script: &str) -> Command {
        let mut command = self.command("/bin/sh");
        command.arg("-c").arg(script);
        command
    }

    /// No process runs in the directory within a second, then no socket
    /// (or any file) is in `TMPDIR`.
    #[track_caller]
    fn assert_nothing_left(&self) {
        assert_nothing_left(self.dir(), self.tmp.path());
    }
}

/// go-plugin's own example plugins (v1.8.0, unmodified).
fn go_example(name: &str) -> PathBuf {
    go_binary(&format!("examples/{name}/plugin-go-grpc"))
}

/// The KV plugins `kv-host` drives: the command line, the trailer each
/// appends to a value, and whether it speaks AutoMTLS.
fn kv_plugins() -> Vec<(&'static str, String, &'static [u8], bool)> {
    vec![
        (
            "rust",
            example_bin("kv-plugin").display().to_string(),
            Plugin::Rust.trailer(),
            true,
        ),
        (
            "go example",
            go_example("grpc").display().to_string(),
            Plugin::Go.trailer(),
            true,
        ),
        ("go 1.0.1", Plugin::Go.command(), Plugin::Go.trailer(), true),
        (
            "python",
            Plugin::Python.command(),
            Plugin::Python.trailer(),
            false,
        ),
    ]
}

#[test]
fn kv_host_drives_every_kv_plugin_with_and_without_automtls() {
    for (name, plugin, trailer, mtls) in kv_plugins() {
        for automtls in [false, true] {
            if automtls && !mtls {
                continue;
            }
            let place = Place::new();
            let host = |args: &[&str]| {
                let mut command = place.command(example_bin("kv-host"));
                command
                    .env("KV_PLUGIN", &plugin)
                    .env("KV_PROTO", "grpc")
                    .env("KV_HOST_AUTOMTLS", if automtls { "1" } else { "0" })
                    .args(args);
                run(command)
            };
            let case = format!("{name}, AutoMTLS {automtls}");
            host(&["put", "hello", "world"]).assert_success();
            let got = host(&["get", "hello"]);
            got.assert_success();
            let mut want = b"world".to_vec();
            want.extend_from_slice(trailer);
            want.push(b'\n');
            assert_eq!(got.stdout, want, "{case}");
            let missing = host(&["get", "missing"]);
            missing.assert_failure();
            assert!(
                missing.stdout_str().starts_with("error: RpcFailure: "),
                "{case}: {}",
                missing.stdout_str()
            );
            place.assert_nothing_left();
        }
    }
}

#[test]
fn counter_host_serves_the_plugins_callback_through_the_broker() {
    let plugins = [
        ("rust", example_bin("counter-plugin")),
        ("go example", go_example("bidirectional")),
    ];
    for (name, plugin) in plugins {
        for automtls in ["0", "1"] {
            let place = Place::new();
            let host = |args: &[&str]| {
                let mut command = place.command(example_bin("counter-host"));
                command
                    .env("COUNTER_PLUGIN", &plugin)
                    .env("COUNTER_HOST_AUTOMTLS", automtls)
                    .args(args);
                run(command)
            };
            host(&["put", "hits", "5"]).assert_success();
            host(&["put", "hits", "7"]).assert_success();
            let got = host(&["get", "hits"]);
            got.assert_success();
            assert_eq!(got.stdout_str(), "12\n", "{name}, AutoMTLS {automtls}");
            place.assert_nothing_left();
        }
    }
}

#[test]
fn the_host_dials_what_the_plugin_serves_through_the_broker() {
    for automtls in [false, true] {
        let place = Place::new();
        let client = Client::builder(HANDSHAKE)
            .command(place.command(example_bin("counter-plugin")))
            .auto_mtls(automtls)
            .start()
            .expect("counter-plugin starts");
        let lent = HelperLenderClient::new(client.channel())
            .lend(&goplugin::protobuf::well_known_types::empty::Empty::new())
            .expect("Lend");
        let channel = client
            .broker()
            .dial(lent.helper_id)
            .expect("dial the lent id");
        let sum = SumRequest {
            a: 40,
            b: 2,
            ..SumRequest::default()
        };
        let reply = AddHelperClient::new(channel)
            .sum(&sum)
            .expect("the plugin's AddHelper");
        assert_eq!(reply.r, 42, "AutoMTLS {automtls}");
        client.kill();
        place.assert_nothing_left();
    }
}

/// Starts `script` as the plugin and expects a start error saying `says`,
/// within a second, with the plugin (whose pid the script writes to
/// `pid`) gone.
#[track_caller]
fn refused_at_once(script: &str, automtls: bool, says: &[&str]) {
    let place = Place::new();
    let script = format!("echo $$ > pid; {script}");
    let began = Instant::now();
    let err = Client::builder(HANDSHAKE)
        .command(place.script(&script))
        .auto_mtls(automtls)
        .start()
        .expect_err(&script)
        .to_string();
    let took = began.elapsed();
    for part in says {
        assert!(err.contains(part), "{script}: {part:?} not in: {err}");
    }
    assert!(err.starts_with("plugin sh: "), "names the plugin: {err}");
    assert!(took < Duration::from_secs(1), "{script}: took {took:?}");
    let pid: u32 = fs::read_to_string(place.dir().join("pid"))
        .expect("the script ran")
        .trim()
        .parse()
        .expect("a pid");
    assert!(
        gone_within(pid, Duration::from_secs(1)),
        "{script}: still running"
    );
    place.assert_nothing_left();
}

#[test]
fn a_plugin_that_prints_a_bad_line_is_refused_and_killed_at_once() {
    refused_at_once(
        "echo 'listening on :1234'; exec sleep 30",
        false,
        &["handshake: Unrecognized remote plugin message: listening on :1234"],
    );
    refused_at_once(
        "echo '2|1|unix|/nowhere|grpc'; exec sleep 30",
        false,
        &["incompatible core API version with plugin. Plugin version: 2"],
    );
    refused_at_once(
        "echo '1|1|unix|/nowhere|netrpc'; exec sleep 30",
        false,
        &["unsupported plugin protocol \"netrpc\"", "gRPC only"],
    );
}

/// Field 4 is parsed, never given to gRPC's target parser: no other
/// socket, no abstract socket, no address list, no name resolved through a
/// DNS server the plugin names (none is asked), nothing off this machine.
#[test]
fn an_address_other_than_ip_port_or_an_absolute_path_is_refused_without_dialling() {
    let dns = std::net::UdpSocket::bind("127.0.0.1:0").expect("a DNS server's socket");
    dns.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let dns_port = dns.local_addr().expect("address").port();
    for (line, says) in [
        (
            "1|1|tcp|unix:/some/other.sock|grpc|",
            "a tcp address is IP:PORT",
        ),
        ("1|1|tcp|unix-abstract:x|grpc|", "a tcp address is IP:PORT"),
        (
            "1|1|tcp|ipv4:127.0.0.1:1,127.0.0.1:2|grpc|",
            "a tcp address is IP:PORT",
        ),
        (
            &format!("1|1|tcp|dns://127.0.0.1:{dns_port}/attacker-chosen.test:1234|grpc|"),
            "a tcp address is IP:PORT",
        ),
        ("1|1|tcp|localhost:1234|grpc|", "a tcp address is IP:PORT"),
        (
            "1|1|unix|unix:/some/other.sock|grpc|",
            "a unix address is an absolute path",
        ),
        ("1|1|tcp|192.0.2.1:1234|grpc|", "not on this machine"),
    ] {
        refused_at_once(
            &format!("echo '{line}'; exec sleep 30"),
            false,
            &["handshake: address ", says],
        );
    }
    let mut query = [0u8; 512];
    assert!(
        dns.recv_from(&mut query).is_err(),
        "the host sent a DNS query to the plugin's server"
    );
}

/// A certificate (field 6) that is base64 but no X.509 certificate: the
/// error names the plugin and the step, and carries its stderr, as every
/// start error does; what the plugin printed is shown without its control
/// characters.
#[test]
fn a_bad_certificate_is_a_start_error_like_the_others() {
    let cert = "QUJD".repeat(20);
    refused_at_once(
        &format!(
            "printf 'about to lie \\033[31m\\n' >&2; echo '1|1|unix|/nowhere|grpc|{cert}'; exec sleep 30"
        ),
        true,
        &["handshake: ", "about to lie \\u{1b}[31m"],
    );
}

#[test]
fn a_plugin_of_another_version_is_refused_with_both_versions() {
    refused_at_once(
        "echo '1|2|unix|/nowhere|grpc|'; exec sleep 30",
        false,
        &["incompatible API version with plugin. Plugin version: 2, Client versions: [1]"],
    );
}

#[test]
fn a_plugin_whose_address_nobody_listens_on_is_refused_at_once() {
    refused_at_once(
        "echo \"1|1|unix|$PWD/nobody|grpc|\"; exec sleep 30",
        false,
        &["connect: cannot connect to unix ", "nobody"],
    );
    refused_at_once(
        "echo '1|1|tcp|127.0.0.1:1|grpc|'; exec sleep 30",
        false,
        &["connect: cannot connect to tcp 127.0.0.1:1"],
    );
}

#[test]
fn a_plugin_that_exits_early_is_refused_with_what_it_printed() {
    refused_at_once(
        "echo 'cannot open the database' >&2; exit 3",
        false,
        &[
            "start: plugin exited before we could connect (exit status: 3)",
            "cannot open the database",
        ],
    );
}

#[test]
fn a_plugin_without_automtls_is_refused_by_an_automtls_host() {
    refused_at_once(
        "echo '1|1|unix|/nowhere|grpc|'; exec sleep 30",
        true,
        &["sent no certificate", "AutoMTLS"],
    );
}

#[test]
fn a_plugin_that_prints_nothing_fails_at_the_start_timeout() {
    let place = Place::new();
    let began = Instant::now();
    let err = Client::builder(HANDSHAKE)
        .command(place.script("echo $$ > pid; exec sleep 30"))
        .start_timeout(Duration::from_millis(400))
        .start()
        .expect_err("no handshake")
        .to_string();
    let took = began.elapsed();
    assert!(
        err.contains("timeout while waiting for plugin to start"),
        "{err}"
    );
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1400),
        "took {took:?}"
    );
    place.assert_nothing_left();
}

/// `sha256sum FILE`'s checksum.
fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a checksum")
        .to_string()
}

/// A cookie read at run time: the handshake with owned strings, no
/// `Box::leak`.
#[test]
fn a_handshake_with_owned_strings_starts_a_plugin() {
    let place = Place::new();
    let handshake = goplugin::HandshakeConfig {
        protocol_version: HANDSHAKE.protocol_version,
        magic_cookie_key: HANDSHAKE.magic_cookie_key.to_string(),
        magic_cookie_value: String::from_utf8(HANDSHAKE.magic_cookie_value.as_bytes().to_vec())
            .expect("UTF-8"),
    };
    let client = Client::builder(handshake)
        .command(place.command(example_bin("kv-plugin")))
        .start()
        .expect("kv-plugin starts");
    client.ping().expect("ping");
    drop(client);
    place.assert_nothing_left();
}

/// A missing program: the error names the plugin and the program as
/// given, not a placeholder.
#[test]
fn a_missing_program_is_named() {
    let err = Client::builder(HANDSHAKE)
        .command(Command::new("./no-such-plugin"))
        .start()
        .expect_err("no such program")
        .to_string();
    assert!(
        err.starts_with(
            "plugin no-such-plugin: start: cannot run the plugin's command \"./no-such-plugin\""
        ),
        "{err}"
    );
}

#[test]
fn secure_config_refuses_a_binary_with_another_checksum() {
    let place = Place::new();
    let plugin = example_bin("kv-plugin");
    // The checksum of another binary: the plugin must not even start.
    let wrong = SecureConfig::sha256_hex(&sha256(&example_bin("counter-plugin"))).unwrap();
    let err = Client::builder(HANDSHAKE)
        .command(place.command(&plugin))
        .secure(wrong)
        .start()
        .expect_err("wrong checksum")
        .to_string();
    assert!(
        err.starts_with("plugin kv-plugin: secure config: "),
        "names the plugin: {err}"
    );
    assert!(
        err.contains(&format!("{:?}", plugin.display().to_string())),
        "names the program: {err}"
    );
    assert!(err.contains("checksums did not match"), "{err}");
    assert!(
        err.contains(&sha256(&plugin)),
        "names the checksum found: {err}"
    );
    assert!(processes_in(place.dir()).is_empty());

    let right = SecureConfig::sha256_hex(&sha256(&plugin)).unwrap();
    let client = Client::builder(HANDSHAKE)
        .command(place.command(&plugin))
        .secure(right)
        .start()
        .expect("the right checksum starts");
    client.ping().expect("ping");
    drop(client);
    place.assert_nothing_left();
    assert!(SecureConfig::sha256_hex("abc").is_err());
}

#[test]
fn a_plugin_that_dies_mid_call_fails_the_call_and_reports_its_exit() {
    let place = Place::new();
    let client = Client::builder(HANDSHAKE)
        .command(place.command(example_bin("counter-plugin")))
        .start()
        .expect("counter-plugin starts");
    let pid = client.pid().expect("a pid");
    // A Put whose broker id the host never serves: the plugin waits for
    // it (5 s), mid-call, when it is killed.
    let counter = CounterClient::new(client.channel());
    let call = thread::spawn(move || {
        let request = CounterPut {
            add_server: 999,
            key: "k".into(),
            value: 1,
            ..CounterPut::default()
        };
        let began = Instant::now();
        (counter.put(&request), began)
    });
    thread::sleep(Duration::from_millis(300));
    assert!(!client.exited());
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    let (result, began) = call.join().unwrap();
    let took = began.elapsed();
    match result {
        Err(goplugin::grpcio::Error::RpcFailure(status)) => {
            assert_eq!(status.code(), RpcStatusCode::UNAVAILABLE, "{status:?}");
        }
        other => panic!("the call should fail: {other:?}"),
    }
    assert!(
        took < Duration::from_secs(2),
        "the call ended after {took:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(1);
    while !client.exited() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    assert!(client.exited(), "exited() after the crash");
    assert!(!client.exit_status().unwrap().success());
    let began = Instant::now();
    client.kill();
    assert!(began.elapsed() < Duration::from_millis(500));
    drop(client);
    // SIGKILL left the plugin no chance to remove its socket.
    for entry in fs::read_dir(place.tmp.path()).unwrap() {
        fs::remove_file(entry.unwrap().path()).unwrap();
    }
    place.assert_nothing_left();
}

#[test]
fn a_plugin_that_ignores_shutdown_is_killed_after_two_seconds() {
    let place = Place::new();
    let mut command = place.script(&format!("exec {}", Plugin::Python.command()));
    command.env("PYTHON_KV_IGNORE_SHUTDOWN", "1");
    let client = Client::builder(HANDSHAKE)
        .command(command)
        .start()
        .expect("python plugin starts");
    let pid = client.pid().unwrap();
    let began = Instant::now();
    client.kill();
    let took = began.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_millis(3500),
        "kill took {took:?}"
    );
    assert!(!alive(pid));
    assert!(!client.exit_status().unwrap().success(), "SIGKILLed");
    drop(client);
    place.assert_nothing_left();
}

#[test]
fn kill_stops_a_plugin_at_once_and_is_idempotent_and_drop_kills_too() {
    let place = Place::new();
    let client = Client::builder(HANDSHAKE)
        .command(place.command(example_bin("kv-plugin")))
        .auto_mtls(true)
        .start()
        .expect("kv-plugin starts");
    assert_eq!(client.negotiated_version(), 1);
    assert_eq!(client.addr().network, goplugin::Network::Unix);
    client.ping().expect("ping");
    let began = Instant::now();
    client.kill();
    assert!(
        began.elapsed() < Duration::from_millis(500),
        "{:?}",
        began.elapsed()
    );
    assert!(
        client.exit_status().unwrap().success(),
        "exited on Shutdown"
    );
    client.kill();
    assert!(client.ping().is_err());
    place.assert_nothing_left();

    let client = Client::builder(HANDSHAKE)
        .command(place.command(example_bin("kv-plugin")))
        .start()
        .expect("kv-plugin starts");
    let pid = client.pid().unwrap();
    drop(client);
    assert!(!alive(pid));
    place.assert_nothing_left();
}

#[test]
fn a_host_killed_mid_call_takes_go_and_rust_plugins_along() {
    let plugins = [
        ("rust", example_bin("kv-plugin")),
        ("go example", go_example("grpc")),
    ];
    for (name, plugin) in plugins {
        let place = Place::new();
        let mut host = place.command(cargo_example("host_bench"));
        host.env("KV_PLUGIN", &plugin)
            .args(["serve-for", "20000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut host = host.spawn().expect("host_bench");
        let mut line = String::new();
        BufReader::new(host.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let pid: u32 = line
            .trim()
            .strip_prefix("pid=")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{name}: host said {line:?}"));
        // Four threads make calls all the while.
        thread::sleep(Duration::from_millis(200));
        host.kill().unwrap();
        host.wait().unwrap();
        assert!(
            gone_within(pid, Duration::from_secs(1)),
            "{name}: the plugin outlived its host"
        );
        // The plugin died of SIGKILL, like its host: its socket file stays.
        for entry in fs::read_dir(place.tmp.path()).unwrap() {
            fs::remove_file(entry.unwrap().path()).unwrap();
        }
        place.assert_nothing_left();
    }
}

fn put_get(client: &Client, key: &str, value: &[u8]) -> Vec<u8> {
    let kv = KvClient::new(client.channel());
    let put = PutRequest {
        key: key.into(),
        value: value.to_vec(),
        ..PutRequest::default()
    };
    kv.put(&put).expect("Put");
    let get = GetRequest {
        key: key.into(),
        ..GetRequest::default()
    };
    kv.get(&get).expect("Get").value
}

#[test]
fn reattach_drives_a_running_plugin_and_stops_it_unless_in_test_mode() {
    for test in [false, true] {
        let place = Place::new();
        let owner = Client::builder(HANDSHAKE)
            .command(place.command(example_bin("kv-plugin")))
            .start()
            .expect("kv-plugin starts");
        let mut config = owner.reattach_config();
        config.test = test;
        let config = ReattachConfig::from_json(&config.to_json()).expect("JSON round trip");
        let attached = Client::builder(HANDSHAKE)
            .reattach(config)
            .start()
            .expect("reattach");
        assert_eq!(attached.pid(), owner.pid());
        assert!(put_get(&attached, "k", b"v").starts_with(b"v"));
        drop(attached);
        if test {
            thread::sleep(Duration::from_millis(300));
            assert!(!owner.exited(), "test mode leaves the plugin running");
            owner.ping().expect("still serving");
        } else {
            let deadline = Instant::now() + Duration::from_secs(2);
            while !owner.exited() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            assert!(owner.exited(), "a reattached host stops the plugin");
        }
        drop(owner);
        place.assert_nothing_left();
    }
    let err = Client::builder(HANDSHAKE)
        .reattach(ReattachConfig {
            protocol: "grpc".into(),
            protocol_version: 1,
            addr: goplugin::Addr {
                network: goplugin::Network::Unix,
                address: "/nonexistent/plugin".into(),
            },
            pid: 0,
            test: true,
        })
        .start()
        .expect_err("nothing there");
    assert!(
        matches!(
            err,
            Error::Client {
                step: goplugin::Step::Connect,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn skip_host_env_passes_only_the_commands_variables() {
    let place = Place::new();
    let mut command = place.script(&format!(
        "env > seen; exec {}",
        example_bin("kv-plugin").display()
    ));
    command.env("MINE", "1");
    let client = Client::builder(HANDSHAKE)
        .command(command)
        .skip_host_env(true)
        .port_range(20_000, 20_100)
        .start()
        .expect("kv-plugin starts");
    drop(client);
    let seen = fs::read_to_string(place.dir().join("seen")).unwrap();
    for want in [
        "MINE=1",
        "BASIC_PLUGIN=hello",
        "PLUGIN_PROTOCOL_VERSIONS=1",
        "PLUGIN_MIN_PORT=20000",
        "PLUGIN_MAX_PORT=20100",
    ] {
        assert!(seen.lines().any(|l| l == want), "{want} in:\n{seen}");
    }
    assert!(!seen.contains("HOME="), "the host's environment: {seen}");
    assert!(!seen.contains("PLUGIN_CLIENT_CERT"), "{seen}");
    place.assert_nothing_left();
}

/// The log records of targets starting with `plugin.`, for this test
/// binary (a `log` logger is installed once per process).
#[derive(Default)]
struct Records(Mutex<Vec<LogRecord>>);

/// A record's level, target, message and key-value pairs.
type LogRecord = (log::Level, String, String, Vec<(String, String)>);

impl log::Log for Records {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.target().starts_with("plugin.")
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        struct Collect(Vec<(String, String)>);
        impl<'kvs> log::kv::VisitSource<'kvs> for Collect {
            fn visit_pair(
                &mut self,
                key: log::kv::Key<'kvs>,
                value: log::kv::Value<'kvs>,
            ) -> Result<(), log::kv::Error> {
                self.0.push((key.to_string(), value.to_string()));
                Ok(())
            }
        }
        let mut fields = Collect(Vec::new());
        let _ = record.key_values().visit(&mut fields);
        self.0.lock().unwrap().push((
            record.level(),
            record.target().to_string(),
            record.args().to_string(),
            fields.0,
        ));
    }

    fn flush(&self) {}
}

fn records() -> &'static Records {
    static RECORDS: OnceLock<&'static Records> = OnceLock::new();
    RECORDS.get_or_init(|| {
        let records: &'static Records = Box::leak(Box::default());
        log::set_logger(records).expect("no other logger in the test binary");
        log::set_max_level(log::LevelFilter::Trace);
        records
    })
}

fn echo_client(place: &Place, builder: impl FnOnce(ClientBuilder) -> ClientBuilder) -> Client {
    builder(Client::builder(HANDSHAKE))
        .command(place.command(cargo_example("echo")))
        .start()
        .expect("echo plugin starts")
}

#[test]
fn the_plugins_log_lines_arrive_as_log_records_at_their_level_with_their_fields() {
    let records = records();
    let place = Place::new();
    let raw = Captured::default();
    let client = echo_client(&place, |b| b.name("echo-relevel").stderr(raw.clone()));
    put_get(&client, "k", b"hello");
    client.kill();
    let mine: Vec<_> = records
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.1 == "plugin.echo-relevel")
        .cloned()
        .collect();
    let find = |message: &str| {
        mine.iter()
            .find(|r| r.2 == message)
            .unwrap_or_else(|| panic!("no record {message:?} in {mine:#?}"))
            .clone()
    };
    let warn = find("warn line for hello");
    assert_eq!(warn.0, log::Level::Warn);
    assert!(warn.3.iter().any(|(k, _)| k == "timestamp"), "{warn:?}");
    assert_eq!(find("error line for hello").0, log::Level::Error);
    let info = find("info line for hello");
    assert_eq!(info.0, log::Level::Info);
    assert!(
        info.3.contains(&("key".to_string(), "k".to_string())),
        "the plugin's own field: {info:?}"
    );
    assert_eq!(find("debug line for hello").0, log::Level::Debug);
    assert!(
        raw.text().contains("\"@message\":\"warn line for hello\""),
        "the raw copy: {}",
        raw.text()
    );
    place.assert_nothing_left();
}

#[test]
fn the_plugins_stdout_and_stderr_reach_the_sync_sinks() {
    let place = Place::new();
    let (out, err) = (Captured::default(), Captured::default());
    let client = echo_client(&place, |b| {
        b.sync_stdout(out.clone()).sync_stderr(err.clone())
    });
    put_get(&client, "k", b"hello");
    client.kill();
    assert!(out.text().contains("stdout says hello\n"), "{}", out.text());
    assert!(out.text().contains("child says hello\n"), "{}", out.text());
    assert_eq!(err.text(), "stderr says hello\n");
    place.assert_nothing_left();
}

/// The README's host example is the `Client` docs' example, which rustdoc
/// compiles.
#[test]
fn the_readme_shows_the_compiled_host_example() {
    let readme = fs::read_to_string(crate::support::repo().join("README.md")).expect("README");
    let source = fs::read_to_string(crate::support::repo().join("src/client.rs")).expect("source");
    let docs = source
        .split("/// and its `ClientProtocol` in one.")
        .nth(1)
        .and_then(|rest| rest.split("/// ```no_run\n").nth(1))
        .and_then(|rest| rest.split("/// ```\n").next())
        .expect("the Client docs' example");
    let code: String = docs
        .lines()
        .map(|line| {
            let line = line.strip_prefix("///").unwrap_or(line);
            format!("{}\n", line.strip_prefix(' ').unwrap_or(line))
        })
        .collect();
    assert!(
        readme.contains(&code),
        "README.md's \"Hosting plugins from Rust\" does not show the Client example as it is:\n{code}"
    );
}

/// A certificate and its key, PEM.
fn certificate() -> (String, String) {
    crate::support::self_signed_localhost()
}

#[test]
fn explicit_tls_presents_the_hosts_certificate_and_trusts_the_plugins() {
    let place = Place::new();
    let (cert, key) = certificate();
    // The plugin requires this certificate of its host, as under
    // AutoMTLS, and sends its own in its handshake line.
    let plugin = || {
        let mut command = place.command(example_bin("kv-plugin"));
        command.env("PLUGIN_CLIENT_CERT", &cert);
        command
    };
    let client = Client::builder(HANDSHAKE)
        .command(plugin())
        .tls(cert.as_bytes(), cert.as_bytes(), key.as_bytes())
        .start()
        .expect("TLS with the host's own certificate");
    assert!(put_get(&client, "k", b"v").starts_with(b"v"));
    drop(client);
    place.assert_nothing_left();

    // Another certificate than the one the plugin requires: refused.
    let (other, other_key) = certificate();
    let err = Client::builder(HANDSHAKE)
        .command(plugin())
        .tls(other.as_bytes(), other.as_bytes(), other_key.as_bytes())
        .start_timeout(Duration::from_secs(5))
        .start()
        .expect_err("the plugin refuses a stranger's certificate")
        .to_string();
    assert!(err.contains("connect"), "{err}");
    place.assert_nothing_left();
}
