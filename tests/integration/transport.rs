//! Transport rules checked on the plugin directly: unix socket placement,
//! permissions, group, removal and the TCP fallback; AutoMTLS that lets only
//! the host's certificate in. (The matrix runs the same transports through
//! the real hosts.)

use std::ffi::CStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use goplugin::grpcio::{ChannelBuilder, ChannelCredentialsBuilder, EnvBuilder};
use kv_plugin::proto::{kv::PutRequest, kv_grpc::KvClient};

use crate::support::{COOKIE, Output, Plugin, Running, plugin_command, run, tempdir};

fn socket_path(running: &Running) -> String {
    let fields: Vec<&str> = running.line.trim_end().split('|').collect();
    assert_eq!(fields[2], "unix", "{:?}", running.line);
    fields[3].to_string()
}

#[test]
fn the_socket_lives_in_plugin_unix_socket_dir_owner_only_and_goes_away() {
    let dir = tempdir();
    let running = Running::start(
        Plugin::Rust,
        &[
            COOKIE,
            ("PLUGIN_UNIX_SOCKET_DIR", dir.path().to_str().unwrap()),
        ],
    );
    let path = socket_path(&running);
    assert_eq!(Path::new(&path).parent(), Some(dir.path()), "{path}");
    let name = Path::new(&path).file_name().unwrap().to_str().unwrap();
    assert!(
        name.strip_prefix("plugin")
            .is_some_and(|n| n.parse::<u32>().is_ok()),
        "{name}"
    );
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "owner only");
    let Output { status, .. } = running.shutdown();
    assert!(status.success());
    assert!(
        !Path::new(&path).exists(),
        "the socket file is removed on exit"
    );
}

#[test]
fn tmpdir_is_used_without_plugin_unix_socket_dir() {
    let dir = tempdir();
    let running = Running::start(
        Plugin::Rust,
        &[COOKIE, ("TMPDIR", dir.path().to_str().unwrap())],
    );
    assert_eq!(Path::new(&socket_path(&running)).parent(), Some(dir.path()));
}

/// The name of the group with `gid`, from the system's group database.
fn group_name(gid: u32) -> String {
    // SAFETY: getgrgid returns a pointer to static storage, read at once.
    unsafe {
        let entry = libc::getgrgid(gid);
        assert!(!entry.is_null(), "gid {gid} has no name");
        CStr::from_ptr((*entry).gr_name)
            .to_string_lossy()
            .into_owned()
    }
}

#[test]
fn plugin_unix_socket_group_by_name_or_number_gives_mode_0660() {
    // SAFETY: getgid cannot fail.
    let gid = unsafe { libc::getgid() };
    for group in [gid.to_string(), group_name(gid)] {
        let dir = tempdir();
        let running = Running::start(
            Plugin::Rust,
            &[
                COOKIE,
                ("PLUGIN_UNIX_SOCKET_DIR", dir.path().to_str().unwrap()),
                ("PLUGIN_UNIX_SOCKET_GROUP", &group),
            ],
        );
        let meta = fs::metadata(socket_path(&running)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o660, "group {group}");
        assert_eq!(meta.gid(), gid, "group {group}");
    }
}

#[test]
fn an_unknown_group_is_an_error_naming_the_variable() {
    let dir = tempdir();
    let out = run(plugin_command(
        Plugin::Rust,
        &[
            COOKIE,
            ("PLUGIN_UNIX_SOCKET_DIR", dir.path().to_str().unwrap()),
            ("PLUGIN_UNIX_SOCKET_GROUP", "no-such-group-here"),
        ],
        dir.path(),
    ));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(out.stdout_str(), "");
    assert!(
        out.stderr
            .contains("PLUGIN_UNIX_SOCKET_GROUP=\\\"no-such-group-here\\\": no such group"),
        "{}",
        out.stderr
    );
    let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "no socket file is left behind: {left:?}");
}

#[test]
fn a_socket_path_over_the_limit_falls_back_to_tcp_with_a_warning() {
    let dir = tempdir();
    let long = dir.path().join("d".repeat(60)).join("e".repeat(60));
    fs::create_dir_all(&long).unwrap();
    let dir_str = long.to_str().unwrap();
    let running = Running::start(Plugin::Rust, &[COOKIE, ("PLUGIN_UNIX_SOCKET_DIR", dir_str)]);
    assert!(
        running.line.starts_with("1|1|tcp|127.0.0.1:"),
        "{:?}",
        running.line
    );
    let kv = KvClient::new(running.channel());
    let put = PutRequest {
        key: "k".into(),
        ..Default::default()
    };
    kv.put(&put).expect("the TCP fallback serves");
    let Output { status, .. } = running.shutdown();
    assert!(status.success());
}

fn self_signed() -> (String, String) {
    crate::support::self_signed_localhost()
}

/// Successful Puts out of three through a channel with `creds`.
fn successful_puts(target: &str, creds: Option<goplugin::grpcio::ChannelCredentials>) -> usize {
    let env = Arc::new(EnvBuilder::new().cq_count(1).build());
    let builder = ChannelBuilder::new(env).override_ssl_target("localhost");
    let channel = match creds {
        Some(creds) => builder.set_credentials(creds).connect(target),
        None => builder.connect(target),
    };
    let kv = KvClient::new(channel);
    (0..3)
        .filter(|i| {
            let put = PutRequest {
                key: format!("k{i}"),
                ..Default::default()
            };
            kv.put(&put).is_ok()
        })
        .count()
}

#[test]
fn automtls_lets_only_the_hosts_certificate_in() {
    let (host_cert, host_key) = self_signed();
    let (other_cert, other_key) = self_signed();
    for network in ["unix", "tcp"] {
        let running = Running::start(
            Plugin::Rust,
            &[
                COOKIE,
                ("PLUGIN_CLIENT_CERT", &host_cert),
                ("KV_PLUGIN_NETWORK", network),
            ],
        );
        let fields: Vec<&str> = running.line.trim_end().split('|').collect();
        assert_eq!(fields.len(), 6, "{:?}", running.line);
        let der = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(fields[5])
            .expect("field 6 is unpadded standard base64");
        let plugin_pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        let target = running.target();
        let trusting =
            || ChannelCredentialsBuilder::new().root_cert(plugin_pem.clone().into_bytes());

        assert_eq!(
            successful_puts(&target, None),
            0,
            "{network}: plaintext client"
        );
        assert_eq!(
            successful_puts(&target, Some(trusting().build())),
            0,
            "{network}: no client cert"
        );
        let other = trusting().cert(
            other_cert.clone().into_bytes(),
            other_key.clone().into_bytes(),
        );
        assert_eq!(
            successful_puts(&target, Some(other.build())),
            0,
            "{network}: another cert"
        );
        let host = trusting().cert(
            host_cert.clone().into_bytes(),
            host_key.clone().into_bytes(),
        );
        assert_eq!(
            successful_puts(&target, Some(host.build())),
            3,
            "{network}: the host's cert"
        );
        let Output { status, .. } =
            running.shutdown_with(Some(host_cert_creds(&plugin_pem, &host_cert, &host_key)));
        assert!(status.success());
    }
}

fn host_cert_creds(
    plugin_pem: &str,
    cert: &str,
    key: &str,
) -> goplugin::grpcio::ChannelCredentials {
    ChannelCredentialsBuilder::new()
        .root_cert(plugin_pem.as_bytes().to_vec())
        .cert(cert.as_bytes().to_vec(), key.as_bytes().to_vec())
        .build()
}

/// A shared library that makes `socket(AF_UNIX, ...)` fail with
/// EAFNOSUPPORT, as in sandboxes without unix sockets
/// (grafana/github-datasource#336). Built with the system C compiler.
fn no_unix_sockets_shim(dir: &Path) -> std::path::PathBuf {
    let source = dir.join("no_unix.c");
    fs::write(
        &source,
        r#"#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/socket.h>
int socket(int domain, int type, int protocol) {
    static int (*real)(int, int, int);
    if (domain == AF_UNIX) { errno = EAFNOSUPPORT; return -1; }
    if (!real) real = (int (*)(int, int, int))dlsym(RTLD_NEXT, "socket");
    return real(domain, type, protocol);
}
"#,
    )
    .unwrap();
    let library = dir.join("no_unix.so");
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .arg("-ldl")
        .status()
        .expect("cc (installed by .ci/install-deps as g++'s dependency)");
    assert!(status.success(), "cannot build the LD_PRELOAD shim");
    library
}

#[test]
fn without_unix_sockets_the_plugin_falls_back_to_tcp() {
    let dir = tempdir();
    let shim = no_unix_sockets_shim(dir.path());
    let mut command = plugin_command(Plugin::Rust, &[COOKIE], dir.path());
    command.env("LD_PRELOAD", &shim);
    let running = Running::spawn(command, true);
    assert!(
        running.line.starts_with("1|1|tcp|127.0.0.1:"),
        "{:?}",
        running.line
    );
    assert_eq!(
        successful_puts(&running.target(), None),
        3,
        "the TCP fallback serves"
    );
    let out = running.shutdown();
    assert!(out.status.success());
    assert!(
        out.stderr.contains(
            "this system does not support unix sockets; listening on TCP 127.0.0.1 instead"
        ),
        "{}",
        out.stderr
    );
}

/// Multiplexed, the plugin listens twice in the socket directory: the
/// public socket of the handshake line (owner only, where the host's one
/// connection arrives) and the main gRPC server's own socket behind it.
/// Both go when the plugin exits — here because the first connection does
/// not speak yamux, which ends the session and with it the plugin.
#[test]
fn multiplexed_sockets_are_owner_only_and_all_go_away() {
    use std::io::Write as _;
    let dir = tempdir();
    let running = Running::start(
        Plugin::Rust,
        &[
            COOKIE,
            ("PLUGIN_MULTIPLEX_GRPC", "true"),
            ("PLUGIN_UNIX_SOCKET_DIR", dir.path().to_str().unwrap()),
        ],
    );
    assert!(
        running.line.ends_with("|grpc||true\n"),
        "{:?}",
        running.line
    );
    let public = socket_path(&running);
    let sockets: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(sockets.len(), 2, "{sockets:?}");
    assert!(sockets.iter().any(|s| s.to_str() == Some(public.as_str())));
    for socket in &sockets {
        let mode = fs::metadata(socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", socket.display());
    }
    let mut conn = std::os::unix::net::UnixStream::connect(&public).unwrap();
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    let pid = running.pid();
    assert!(
        crate::support::gone_within(pid, std::time::Duration::from_secs(2)),
        "the plugin ends with its session"
    );
    drop(running);
    let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The references cannot multiplex: go-plugin 1.0.1's Go plugin and the
/// Python plugin send no 7th field, and a host that asks refuses them with
/// go-plugin's own error. (The Rust plugin's multiplexed cells are in the
/// matrix.)
#[test]
fn a_multiplexing_host_refuses_the_reference_plugins() {
    for plugin in [Plugin::Python, Plugin::Go] {
        let dir = tempdir();
        // The host kills the refused plugin, which cannot remove its socket
        // file then: keep it out of /tmp.
        let out = crate::support::HostRun::new(crate::support::Host::Current, plugin, dir.path())
            .env("KV_HOST_MUX", "1")
            .env("TMPDIR", dir.path().to_str().unwrap())
            .run(&["put", "a", "b"]);
        out.assert_failure();
        assert!(
            out.stdout_str()
                .contains("plugin does not support the feature"),
            "{plugin:?}: {}",
            out.stdout_str()
        );
    }
}

/// Starts the Rust plugin multiplexed and connects as the host would,
/// speaking raw yamux.
fn raw_mux_session() -> (Running, std::os::unix::net::UnixStream) {
    let running = Running::start(Plugin::Rust, &[COOKIE, ("PLUGIN_MULTIPLEX_GRPC", "true")]);
    let conn = std::os::unix::net::UnixStream::connect(socket_path(&running)).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    (running, conn)
}

fn yamux_header(kind: u8, flags: u16, stream: u32, length: u32) -> Vec<u8> {
    let mut h = vec![0, kind];
    h.extend_from_slice(&flags.to_be_bytes());
    h.extend_from_slice(&stream.to_be_bytes());
    h.extend_from_slice(&length.to_be_bytes());
    h
}

fn read_yamux_header(conn: &mut std::os::unix::net::UnixStream) -> (u8, u16, u32, u32) {
    use std::io::Read as _;
    let mut h = [0u8; 12];
    conn.read_exact(&mut h).expect("a yamux frame header");
    assert_eq!(h[0], 0, "yamux version");
    (
        h[1],
        u16::from_be_bytes([h[2], h[3]]),
        u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
    )
}

/// The next frame header that is not a data frame; the payload of data
/// frames before it is read and dropped.
fn read_yamux_header_after_data(conn: &mut std::os::unix::net::UnixStream) -> (u8, u16, u32, u32) {
    use std::io::Read as _;
    loop {
        let header = read_yamux_header(conn);
        if header.0 != 0 {
            return header;
        }
        let mut payload = vec![0u8; header.3 as usize];
        conn.read_exact(&mut payload)
            .expect("a data frame's payload");
    }
}

/// The host's yamux keepalive (a ping every 30 s) is answered with the same
/// opaque value, and a stream the host opens is acknowledged.
#[test]
fn multiplexed_pings_are_answered_and_streams_acknowledged() {
    use std::io::Write as _;
    let (running, mut conn) = raw_mux_session();
    conn.write_all(&yamux_header(2, 1, 0, 0xdead_beef)).unwrap();
    assert_eq!(read_yamux_header(&mut conn), (2, 2, 0, 0xdead_beef));
    conn.write_all(&yamux_header(1, 1, 1, 0)).unwrap();
    assert_eq!(
        read_yamux_header(&mut conn),
        (1, 2, 1, 0),
        "ACK of stream 1"
    );
    drop(conn);
    let pid = running.pid();
    assert!(
        crate::support::gone_within(pid, std::time::Duration::from_secs(2)),
        "the plugin ends with the host's connection"
    );
}

/// A data frame claiming more than the stream's 256 KiB window is a
/// protocol error (go-away code 1), checked before anything is read or
/// allocated: the plugin stops cleanly instead of buffering 4 GiB.
#[test]
fn a_frame_over_the_window_is_a_protocol_error_not_an_allocation() {
    use std::io::Write as _;
    let (running, mut conn) = raw_mux_session();
    conn.write_all(&yamux_header(0, 1, 1, u32::MAX)).unwrap();
    assert_eq!(
        read_yamux_header(&mut conn),
        (1, 2, 1, 0),
        "ACK of stream 1"
    );
    // The stream's bridge to gRPC may forward the server's first bytes
    // before the frame is checked: data frames are skipped.
    assert_eq!(
        read_yamux_header_after_data(&mut conn),
        (3, 0, 0, 1),
        "go-away, protocol error"
    );
    let pid = running.pid();
    assert!(crate::support::gone_within(
        pid,
        std::time::Duration::from_secs(2)
    ));
}

/// A host that stopped reading the plugin's stderr while garbage
/// connections pour in (each failed TLS handshake makes gRPC's core log a
/// line): the host's own calls still go through, because no log line ever
/// waits on gRPC's threads.
#[test]
fn a_stalled_stderr_and_garbage_connections_hold_up_no_call() {
    use goplugin::grpcio::CallOption;
    use goplugin::proto::plugin::{Empty, GrpcControllerClient};
    use std::io::{BufRead, BufReader, Write};
    use std::time::{Duration, Instant};

    let (host_cert, host_key) = self_signed();
    let dir = tempdir();
    let mut child = plugin_command(
        Plugin::Rust,
        &[
            COOKIE,
            ("PLUGIN_CLIENT_CERT", &host_cert),
            ("KV_PLUGIN_NETWORK", "tcp"),
        ],
        dir.path(),
    )
    .stdout(std::process::Stdio::piped())
    // Never read: a 64 KiB pipe buffer, then every write to it would wait.
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let _stalled = child.stderr.take();
    let mut line = String::new();
    // Kept open: a closed stdout tells the plugin its host is gone.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    let fields: Vec<&str> = line.trim_end().split('|').collect();
    let address = fields[3].to_string();
    let der = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(fields[5])
        .unwrap();
    let plugin_pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64::engine::general_purpose::STANDARD.encode(&der)
    );

    // 800 connections that send garbage instead of a TLS hello, from four
    // threads, while the host works.
    let garbage: Vec<_> = (0..4)
        .map(|_| {
            let address = address.clone();
            std::thread::spawn(move || {
                for _ in 0..200 {
                    if let Ok(mut conn) = std::net::TcpStream::connect(&address) {
                        let _ = conn.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0x00, 0x42]);
                        let _ = conn.write_all(&[b'x'; 512]);
                    }
                }
            })
        })
        .collect();
    let env = Arc::new(EnvBuilder::new().cq_count(1).build());
    let channel = ChannelBuilder::new(env)
        .override_ssl_target("localhost")
        .set_credentials(host_cert_creds(&plugin_pem, &host_cert, &host_key))
        .connect(&address);
    let kv = KvClient::new(channel.clone());
    let started = Instant::now();
    for i in 0..20 {
        let put = PutRequest {
            key: format!("k{i}"),
            value: b"v".to_vec(),
            ..Default::default()
        };
        kv.put_opt(&put, CallOption::default().timeout(Duration::from_secs(10)))
            .unwrap_or_else(|err| panic!("put {i} after {:?}: {err}", started.elapsed()));
    }
    eprintln!(
        "20 Puts beside 800 garbage connections and a stalled stderr: {:?}",
        started.elapsed()
    );
    for thread in garbage {
        thread.join().unwrap();
    }
    GrpcControllerClient::new(channel)
        .shutdown_opt(
            &Empty::new(),
            CallOption::default().timeout(Duration::from_secs(10)),
        )
        .expect("Shutdown");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}
