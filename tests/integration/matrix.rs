//! One scenario matrix through real go-plugin hosts: every scenario runs for
//! {current go-plugin release, Debian's 1.0.1} × {Rust kv-plugin, Python
//! reference, Go reference}. Where the Rust plugin deliberately differs from
//! a reference, the scenario states the expected difference.

use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::thread;
use std::time::Duration;

use crate::support::{Cell, Plugin, field, gone_within, tempdir};

macro_rules! cells {
    ($scenario:ident: $($name:ident = $host:ident $plugin:ident $transport:ident),* $(,)?) => {
        mod $scenario {
            use crate::support::{Cell, Host, Plugin, Transport};
            $(
                #[test]
                fn $name() {
                    super::$scenario(Cell {
                        host: Host::$host,
                        plugin: Plugin::$plugin,
                        transport: Transport::$transport,
                    })
                }
            )*
        }
    };
}

/// Every scenario runs in every cell: both hosts × the three plugins on
/// their default transport (Rust and Go: a unix socket; Python: TCP), plus
/// the Rust plugin forced to TCP, AutoMTLS for the plugins that support it
/// (the Python reference does not: it serves without TLS), and the current
/// host multiplexing (go-plugin 1.6+; only the Rust plugin of the three
/// supports it, see `transport.rs` for the references' refusal).
macro_rules! matrix {
    ($($scenario:ident),* $(,)?) => {$(
        cells!($scenario:
            current_rust = Current Rust Default,
            current_python = Current Python Default,
            current_go = Current Go Default,
            v101_rust = V101 Rust Default,
            v101_python = V101 Python Default,
            v101_go = V101 Go Default,
            current_rust_tcp = Current Rust Tcp,
            v101_rust_tcp = V101 Rust Tcp,
            current_rust_mtls = Current Rust Mtls,
            v101_rust_mtls = V101 Rust Mtls,
            current_go_mtls = Current Go Mtls,
            v101_go_mtls = V101 Go Mtls,
            current_rust_mux = Current Rust Mux,
            current_rust_mux_tcp = Current Rust MuxTcp,
            current_rust_mux_mtls = Current Rust MuxMtls,
        );
    )*};
}

matrix!(
    roundtrip,
    binary_values,
    large_value,
    empty_value,
    overwrite,
    unicode_key,
    missing_key,
    ping,
    concurrent_hosts,
    concurrent_calls,
    kill,
    wrong_cookie,
    version_negotiation,
    port_range,
);

fn with_trailer(plugin: Plugin, value: &[u8]) -> Vec<u8> {
    [value, plugin.trailer()].concat()
}

/// Put `value` under `key` through the host, read it back through the host
/// (files, so any byte survives), and check the file the plugin wrote.
fn put_get_bytes(c: Cell, key: &str, value: &[u8]) {
    let plugin = c.plugin;
    let dir = tempdir();
    let input = dir.path().join("value.in");
    let output = dir.path().join("value.out");
    fs::write(&input, value).unwrap();
    c.host_run(dir.path())
        .run(&["put-file", key, input.to_str().unwrap()])
        .assert_success();
    c.host_run(dir.path())
        .run(&["get-file", key, output.to_str().unwrap()])
        .assert_success();
    let want = with_trailer(plugin, value);
    let got = fs::read(&output).unwrap();
    assert!(
        got == want,
        "value of {} bytes came back as {} bytes",
        want.len(),
        got.len()
    );
    assert!(
        fs::read(dir.path().join(format!("kv_{key}"))).unwrap() == want,
        "file content"
    );
}

fn roundtrip(c: Cell) {
    let plugin = c.plugin;
    let dir = tempdir();
    let put = c.host_run(dir.path()).run(&["put", "hello", "world"]);
    put.assert_success();
    assert_eq!(put.stdout_str(), "", "put prints nothing");
    let get = c.host_run(dir.path()).run(&["get", "hello"]);
    get.assert_success();
    assert_eq!(
        get.stdout,
        [with_trailer(plugin, b"world"), b"\n".to_vec()].concat()
    );
    assert_eq!(
        fs::read(dir.path().join("kv_hello")).unwrap(),
        with_trailer(plugin, b"world")
    );
}

fn binary_values(c: Cell) {
    let value: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    put_get_bytes(c, "binary", &value);
}

fn large_value(c: Cell) {
    // 1 MiB of varied bytes: well inside gRPC's default 4 MiB message limit.
    let value: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    put_get_bytes(c, "large", &value);
}

fn empty_value(c: Cell) {
    put_get_bytes(c, "empty", b"");
}

fn overwrite(c: Cell) {
    let plugin = c.plugin;
    let dir = tempdir();
    c.host_run(dir.path())
        .run(&["put", "k", "a much longer first value"])
        .assert_success();
    c.host_run(dir.path())
        .run(&["put", "k", "short"])
        .assert_success();
    let get = c.host_run(dir.path()).run(&["get", "k"]);
    get.assert_success();
    assert_eq!(
        get.stdout,
        [with_trailer(plugin, b"short"), b"\n".to_vec()].concat()
    );
}

fn unicode_key(c: Cell) {
    let plugin = c.plugin;
    let dir = tempdir();
    let key = "ключ-🔑-キー";
    c.host_run(dir.path())
        .run(&["put", key, "значение ✓"])
        .assert_success();
    let get = c.host_run(dir.path()).run(&["get", key]);
    get.assert_success();
    assert_eq!(
        get.stdout,
        [
            with_trailer(plugin, "значение ✓".as_bytes()),
            b"\n".to_vec()
        ]
        .concat()
    );
    assert!(
        dir.path().join(format!("kv_{key}")).exists(),
        "file kv_<key> with the unicode name"
    );
}

fn missing_key(c: Cell) {
    let plugin = c.plugin;
    let dir = tempdir();
    let get = c.host_run(dir.path()).run(&["get", "nope"]);
    get.assert_failure();
    let stdout = get.stdout_str();
    match plugin {
        // Deliberate difference: NOT_FOUND, naming the key.
        Plugin::Rust => assert!(
            stdout
                .starts_with("error: rpc error: code = NotFound desc = no value for key \"nope\""),
            "{stdout}"
        ),
        // The references return the OS error as UNKNOWN.
        Plugin::Python => assert!(
            stdout.starts_with("error: rpc error: code = Unknown desc = ")
                && stdout.contains("No such file or directory: 'kv_nope'"),
            "{stdout}"
        ),
        Plugin::Go => assert_eq!(
            stdout,
            "error: rpc error: code = Unknown desc = open kv_nope: no such file or directory\n"
        ),
    }
}

fn ping(c: Cell) {
    let dir = tempdir();
    let out = c.host_run(dir.path()).run(&["ping"]);
    out.assert_success();
    assert_eq!(out.stdout_str(), "ok\n");
}

/// Several host processes, each with its own plugin, writing at once.
fn concurrent_hosts(c: Cell) {
    let plugin = c.plugin;
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    let writers: Vec<_> = (0..6)
        .map(|i| {
            let path = path.clone();
            thread::spawn(move || {
                c.host_run(&path)
                    .run(&["put", &format!("k{i}"), &format!("v{i}")])
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap().assert_success();
    }
    for i in 0..6 {
        let get = c.host_run(dir.path()).run(&["get", &format!("k{i}")]);
        get.assert_success();
        assert_eq!(
            get.stdout,
            [
                with_trailer(plugin, format!("v{i}").as_bytes()),
                b"\n".to_vec()
            ]
            .concat()
        );
    }
}

/// 16 goroutines of one host share its single connection to the plugin.
fn concurrent_calls(c: Cell) {
    let dir = tempdir();
    let out = c.host_run(dir.path()).run(&["concurrent", "16", "10"]);
    out.assert_success();
    assert_eq!(out.stdout_str(), "ok=320 failed=0\n");
}

/// `Kill()` calls GRPCController/Shutdown; the plugin must exit by itself
/// before the host's 2 s deadline, so the host never has to SIGKILL it.
fn kill(c: Cell) {
    let dir = tempdir();
    c.host_run(dir.path())
        .run(&["put", "hello", "world"])
        .assert_success();
    let out = c.host_run(dir.path()).run(&["kill", "hello"]);
    out.assert_success();
    let line = out.stdout_str();
    let kill_ms: f64 = field(&line, "kill_ms")
        .and_then(|v| v.parse().ok())
        .expect("kill_ms");
    let pid: u32 = field(&line, "pid")
        .and_then(|v| v.parse().ok())
        .expect("pid");
    eprintln!("{c:?}: Kill() took {kill_ms} ms");
    assert!(
        !out.stderr.contains("plugin failed to exit gracefully"),
        "the host had to SIGKILL the plugin:\n{}",
        out.stderr
    );
    assert!(
        gone_within(pid, Duration::from_secs(1)),
        "plugin process {pid} is still running"
    );
}

fn wrong_cookie(c: Cell) {
    let plugin = c.plugin;
    let dir = tempdir();
    let out = c
        .host_run(dir.path())
        .env("KV_HOST_COOKIE", "goodbye")
        .run(&["put", "a", "b"]);
    match plugin {
        // Go's plugin.Serve checks the cookie too.
        Plugin::Rust | Plugin::Go => {
            out.assert_failure();
            assert!(
                out.stdout_str().starts_with("error: "),
                "{}",
                out.stdout_str()
            );
            assert!(
                out.stderr.contains("This binary is a plugin."),
                "{}",
                out.stderr
            );
            assert!(!dir.path().join("kv_a").exists());
        }
        // Deliberate difference: the Python reference never checks the cookie.
        Plugin::Python => {
            out.assert_success();
        }
    }
}

fn version_negotiation(c: Cell) {
    let dir = tempdir();
    // The host offers 1 and 2 (in random order, as go-plugin's map does):
    // the plugin speaks only 1.
    let out = c
        .host_run(dir.path())
        .env("KV_HOST_VERSIONS", "2,1")
        .run(&["info"]);
    out.assert_success();
    assert_eq!(
        field(&out.stdout_str(), "version"),
        Some("1"),
        "{}",
        out.stdout_str()
    );

    // No common version: the plugin advertises its lowest and the host says
    // so. The host then kills the plugin, which cannot remove its socket
    // file: keep it out of /tmp.
    let out = c
        .host_run(dir.path())
        .env("KV_HOST_VERSIONS", "2,3")
        .env("TMPDIR", dir.path().to_str().unwrap())
        .run(&["info"]);
    out.assert_failure();
    let stdout = out.stdout_str().to_lowercase();
    assert!(
        stdout.contains("incompatible api version with plugin. plugin version: 1"),
        "{stdout}"
    );
}

/// Three consecutive ports on 127.0.0.1: the first two held by listeners
/// of the test (busy for the plugin), the third free. Tests run in parallel
/// in one process, so each call starts its search somewhere else, and the
/// busy ports are held from the moment they are found. The ports lie
/// between the hosts' default range start (10000, where TCP plugins of other
/// tests bind) and Linux's ephemeral ports (32768 and up, where OS-assigned
/// ports come from), so no other test takes the free one meanwhile.
fn busy_busy_free() -> (u16, Vec<TcpListener>) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    for _ in 0..400 {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = 20_000
            + ((std::process::id().wrapping_mul(7919) ^ n.wrapping_mul(104_729)) % 12_000) as u16;
        let busy: Vec<TcpListener> = (0..2)
            .map_while(|i| TcpListener::bind((Ipv4Addr::LOCALHOST, base + i)).ok())
            .collect();
        if busy.len() == 2 && TcpListener::bind((Ipv4Addr::LOCALHOST, base + 2)).is_ok() {
            return (base, busy);
        }
    }
    panic!("no run of 3 free ports on 127.0.0.1");
}

fn port_range(c: Cell) {
    let plugin = c.plugin;
    let dir = tempdir();
    // The first two ports of the range are taken by another listener.
    let (base, _busy) = busy_busy_free();
    let range = |max: u16| {
        c.host_run(dir.path())
            .env("KV_HOST_MIN_PORT", &base.to_string())
            .env("KV_HOST_MAX_PORT", &max.to_string())
    };

    let out = range(base + 2).run(&["info"]);
    out.assert_success();
    let stdout = out.stdout_str();
    let addr = field(&stdout, "addr").expect("addr");
    assert_eq!(field(&stdout, "network"), Some(c.network()), "{stdout}");
    if c.network() == "tcp" {
        let port: u16 = addr
            .strip_prefix("127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .expect(addr);
        match plugin {
            Plugin::Rust => assert_eq!(port, base + 2, "first free port of the range"),
            // Deliberate difference: the reference ignores PLUGIN_MIN/MAX_PORT.
            _ => assert!(!(base..=base + 2).contains(&port), "{addr}"),
        }
    }

    // Every port of the range taken: only a plugin that uses the range on
    // TCP notices (Go and Rust plugins on unix sockets never need a port).
    let out = range(base + 1).run(&["info"]);
    if plugin == Plugin::Rust && c.network() == "tcp" {
        out.assert_failure();
        assert!(
            out.stderr.contains("couldn't bind plugin TCP listener"),
            "{}",
            out.stderr
        );
    } else {
        out.assert_success();
    }
}
