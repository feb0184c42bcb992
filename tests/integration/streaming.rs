//! The four kinds of gRPC call (examples/streaming-plugin) driven by the
//! Rust host (`streaming-host`) and by a Go host on go-plugin
//! (tests/fixtures/go-streaming-host); what a stream holds, and what
//! happens when a host cancels one or reads slowly.

use std::process::Command;
use std::time::Duration;

use goplugin::grpcio::{CallOption, RpcStatusCode};
use goplugin::{Client, Replies, RequestSender, Upload};
use streaming_plugin::HANDSHAKE;
use streaming_plugin::proto::streaming::{Number, Range};
use streaming_plugin::proto::streaming_grpc::NumbersClient;

use crate::support::{example_bin, go_binary, rss_kb, run, tempdir};

fn number(value: i64) -> Number {
    Number {
        value,
        ..Default::default()
    }
}

/// `host` run with `args` against streaming-plugin: its stdout, and
/// whether it succeeded.
fn host(host: &std::path::Path, automtls: bool, args: &[&str]) -> (bool, String) {
    let dir = tempdir();
    let mut command = Command::new(host);
    command
        .args(args)
        .current_dir(dir.path())
        .env("TMPDIR", dir.path())
        .env("STREAMING_PLUGIN", example_bin("streaming-plugin"));
    if automtls {
        command.env("STREAMING_HOST_AUTOMTLS", "1");
    }
    let out = run(command);
    (out.status.success(), out.stdout_str())
}

fn hosts() -> [(&'static str, std::path::PathBuf); 2] {
    [
        ("rust", example_bin("streaming-host")),
        ("go-plugin v1.8.0", go_binary("streaming-host-current")),
    ]
}

#[test]
fn both_hosts_make_all_four_kinds_of_call() {
    for (name, path) in hosts() {
        for automtls in [false, true] {
            let case = format!("{name} host, AutoMTLS {automtls}");
            assert_eq!(
                host(&path, automtls, &["square", "7"]),
                (true, "49\n".into()),
                "{case}"
            );
            assert_eq!(
                host(&path, automtls, &["count", "1", "5"]),
                (true, "1\n2\n3\n4\n5\n".into()),
                "{case}"
            );
            assert_eq!(
                host(&path, automtls, &["count", "3", "1"]),
                (true, String::new()),
                "{case}"
            );
            assert_eq!(
                host(&path, automtls, &["sum", "1", "2", "3"]),
                (true, "6\n".into()),
                "{case}"
            );
            assert_eq!(
                host(&path, automtls, &["sum"]),
                (true, "0\n".into()),
                "{case}"
            );
            assert_eq!(
                host(&path, automtls, &["totals", "1", "2", "3"]),
                (true, "1\n3\n6\n".into()),
                "{case}"
            );
        }
    }
}

#[test]
fn a_handlers_error_is_the_calls_status_in_both_hosts() {
    for (name, path) in hosts() {
        let (ok, out) = host(&path, false, &["sum", "9223372036854775807", "1"]);
        assert!(!ok, "{name}: {out}");
        assert!(out.contains("the total overflows int64"), "{name}: {out}");
        let (ok, out) = host(&path, false, &["count", "0", "99999999"]);
        assert!(!ok, "{name}: {out}");
        assert!(
            out.contains("a range of at most 10000000 numbers"),
            "{name}: {out}"
        );
        let (ok, out) = host(&path, false, &["totals", "9223372036854775807", "1"]);
        assert!(!ok, "{name}: {out}");
        assert!(out.contains("the total overflows int64"), "{name}: {out}");
    }
}

/// A plugin with `threads` pool threads, under the Rust host.
fn start(threads: usize) -> (Client, NumbersClient, tempfile::TempDir) {
    let dir = tempdir();
    let mut command = Command::new(example_bin("streaming-plugin"));
    command
        .current_dir(dir.path())
        .env("TMPDIR", dir.path())
        .env("STREAMING_PLUGIN_THREADS", threads.to_string());
    let client = Client::builder(HANDSHAKE)
        .command(command)
        .start()
        .expect("the plugin starts");
    let numbers = NumbersClient::new(client.channel());
    (client, numbers, dir)
}

fn deadline(secs: u64) -> CallOption {
    CallOption::default().timeout(Duration::from_secs(secs))
}

/// An open stream holds a pool thread, never gRPC's: unary calls go on;
/// with one pool thread, a second stream waits for it; a stream the host
/// cancels gives its thread back.
#[test]
fn a_stream_holds_a_pool_thread_and_a_cancelled_one_gives_it_back() {
    let (client, numbers, _dir) = start(1);
    let (sender, receiver) = numbers.totals_opt(deadline(30)).expect("totals");
    let mut first = RequestSender::new(sender);
    let mut first_totals = Replies::new(receiver);
    first.send(number(5)).expect("send");
    assert_eq!(first_totals.next().expect("a total").expect("ok").value, 5);
    // gRPC's thread is free while the stream waits for its next number.
    assert_eq!(
        numbers
            .square_opt(&number(3), deadline(5))
            .expect("square")
            .value,
        9
    );

    // The only pool thread is taken: a second stream is not served.
    let (sender, receiver) = numbers.totals_opt(deadline(1)).expect("totals");
    let mut second = RequestSender::new(sender);
    let mut second_totals = Replies::new(receiver);
    let _ = second.send(number(1));
    match second_totals.next() {
        Some(Err(goplugin::grpcio::Error::RpcFailure(status))) => {
            assert_eq!(
                status.code(),
                RpcStatusCode::DEADLINE_EXCEEDED,
                "{status:?}"
            )
        }
        other => panic!("the second stream was served with the pool full: {other:?}"),
    }

    // Cancelled by the host (dropped): the plugin's handler sees the end
    // of its requests or a failed send, and its thread serves the next.
    drop(first);
    drop(first_totals);
    let (sender, receiver) = numbers.sum_opt(deadline(10)).expect("sum");
    let mut upload = Upload::new(sender, receiver);
    for n in [1, 2, 3] {
        upload.send(number(n)).expect("send");
    }
    assert_eq!(upload.finish().expect("the thread came back").value, 6);
    client.kill();
}

/// A host that stops reading a long server stream: the plugin's sends
/// wait (gRPC's flow control), and its memory stays put.
#[test]
fn a_slow_reader_holds_back_the_sender() {
    let (client, numbers, _dir) = start(4);
    let pid = client.pid().expect("pid");
    let range = Range {
        from: 1,
        to: 9_999_999,
        ..Default::default()
    };
    let mut replies = Replies::new(numbers.count_opt(&range, deadline(30)).expect("count"));
    for expected in 1..=10 {
        assert_eq!(
            replies.next().expect("a number").expect("ok").value,
            expected
        );
    }
    // Ten million numbers queued would be hundreds of MB.
    std::thread::sleep(Duration::from_millis(500));
    let rss = rss_kb(pid);
    assert!(
        rss < 64 * 1024,
        "the plugin holds {rss} KiB while the host does not read"
    );
    drop(replies);
    // The cancelled stream's thread is free again.
    assert_eq!(
        numbers
            .square_opt(&number(4), deadline(5))
            .expect("square")
            .value,
        16
    );
    client.kill();
}

/// `streaming-host hold N` opens N streams at once and prints what they
/// cost the plugin (the README's figure).
#[test]
fn many_streams_at_once_up_to_the_pool() {
    let (ok, out) = host(&example_bin("streaming-host"), false, &["hold", "48"]);
    assert!(ok, "{out}");
    assert!(out.contains("with 48 streams open"), "{out}");
    eprintln!("{out}");
}
