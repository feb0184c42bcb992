//! `streaming-host`: calls `streaming-plugin` (or any plugin serving
//! `streaming.Numbers`) through goplugin's [`Client`],
//! one kind of gRPC call per command, in blocking code.
//!
//! ```text
//! STREAMING_PLUGIN=./streaming-plugin streaming-host square 7       # unary: 49
//! STREAMING_PLUGIN=./streaming-plugin streaming-host count 1 3      # server streaming: 1 2 3
//! STREAMING_PLUGIN=./streaming-plugin streaming-host sum 1 2 3      # client streaming: 6
//! STREAMING_PLUGIN=./streaming-plugin streaming-host totals 1 2 3   # bidirectional: 1 3 6
//! STREAMING_PLUGIN=./streaming-plugin streaming-host hold 100       # 100 streams open at once: the plugin's memory
//! ```
//!
//! - `STREAMING_PLUGIN`: the plugin's path, run directly (no shell).
//! - `STREAMING_HOST_AUTOMTLS=1`: go-plugin's AutoMTLS.
//! - `STREAMING_HOST_TIMEOUT`: the deadline of each call in seconds
//!   (default 30), so a plugin that never answers cannot hang the host.
//!
//! Each number is printed on a line of its own; an error prints `error:
//! …` on stdout and exits 1, as go-plugin's example hosts do.

use std::process::{Command, ExitCode};
use std::time::Duration;

use goplugin::grpcio::CallOption;
use goplugin::{Client, Replies, RequestSender, Upload};
use streaming_plugin::HANDSHAKE;
use streaming_plugin::proto::streaming::{Number, Range};
use streaming_plugin::proto::streaming_grpc::NumbersClient;

fn main() -> ExitCode {
    let _ = goplugin::logging::init(goplugin::log::LevelFilter::Warn);
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            println!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn number(value: i64) -> Number {
    Number {
        value,
        ..Default::default()
    }
}

fn numbers(args: &[String]) -> Result<Vec<i64>, String> {
    args.iter()
        .map(|arg| {
            arg.parse()
                .map_err(|_| format!("{arg:?} is not a whole number"))
        })
        .collect()
}

fn run(args: Vec<String>) -> Result<(), String> {
    let usage =
        "usage: streaming-host square N | count FROM TO | sum N... | totals N... | hold STREAMS";
    let (command, args) = args.split_first().ok_or(usage)?;
    let plugin = std::env::var("STREAMING_PLUGIN")
        .map_err(|_| "set STREAMING_PLUGIN to the plugin's path".to_string())?;
    let timeout = match std::env::var("STREAMING_HOST_TIMEOUT") {
        Ok(secs) => secs
            .parse::<f64>()
            .ok()
            .filter(|s| *s > 0.0 && s.is_finite())
            .map(Duration::from_secs_f64)
            .ok_or(format!(
                "STREAMING_HOST_TIMEOUT={secs:?}: give seconds, e.g. 30"
            ))?,
        Err(_) => Duration::from_secs(30),
    };
    let client = Client::builder(HANDSHAKE)
        .command(Command::new(plugin))
        .auto_mtls(std::env::var("STREAMING_HOST_AUTOMTLS").as_deref() == Ok("1"))
        .start()
        .map_err(|e| e.to_string())?;
    let numbers_client = NumbersClient::new(client.channel());
    let call = || CallOption::default().timeout(timeout);
    let error = |e: goplugin::grpcio::Error| e.to_string();
    match (command.as_str(), numbers(args)?.as_slice()) {
        ("square", [n]) => {
            println!(
                "{}",
                numbers_client
                    .square_opt(&number(*n), call())
                    .map_err(error)?
                    .value
            );
        }
        ("count", [from, to]) => {
            let range = Range {
                from: *from,
                to: *to,
                ..Default::default()
            };
            for n in Replies::new(numbers_client.count_opt(&range, call()).map_err(error)?) {
                println!("{}", n.map_err(error)?.value);
            }
        }
        ("sum", values) => {
            let (sender, receiver) = numbers_client.sum_opt(call()).map_err(error)?;
            let mut upload = Upload::new(sender, receiver);
            for n in values {
                if upload.send(number(*n)).is_err() {
                    break; // the call is over: finish says why
                }
            }
            println!("{}", upload.finish().map_err(error)?.value);
        }
        ("totals", values) => {
            let (sender, receiver) = numbers_client.totals_opt(call()).map_err(error)?;
            let mut sender = RequestSender::new(sender);
            let mut totals = Replies::new(receiver);
            // One number, then its total: a conversation.
            for n in values {
                sender.send(number(*n)).map_err(error)?;
                let total = totals.next().ok_or("the plugin ended the call early")?;
                println!("{}", total.map_err(error)?.value);
            }
            sender.finish().map_err(error)?;
            if let Some(extra) = totals.next() {
                extra.map_err(error)?;
                return Err("the plugin sent more totals than numbers".into());
            }
        }
        ("hold", [streams]) => hold(&client, &numbers_client, *streams, timeout)?,
        _ => return Err(usage.into()),
    }
    client.kill();
    Ok(())
}

/// Opens `streams` bidirectional calls at once, each with one number
/// answered, and prints the plugin's resident memory before and while they
/// are open: what a long-lived stream costs the plugin.
fn hold(
    client: &Client,
    numbers: &NumbersClient,
    streams: i64,
    timeout: Duration,
) -> Result<(), String> {
    let pid = client.pid().ok_or("the plugin's pid is unknown")?;
    let before = rss_kib(pid)?;
    let mut open = Vec::new();
    for i in 0..streams {
        let (sender, receiver) = numbers
            .totals_opt(CallOption::default().timeout(timeout))
            .map_err(|e| e.to_string())?;
        let mut sender = RequestSender::new(sender);
        let mut totals = Replies::new(receiver);
        sender.send(number(i)).map_err(|e| e.to_string())?;
        match totals.next() {
            Some(Ok(total)) if total.value == i => {}
            other => return Err(format!("stream {i}: {other:?}")),
        }
        open.push((sender, totals));
    }
    let during = rss_kib(pid)?;
    for (sender, mut totals) in open {
        sender.finish().map_err(|e| e.to_string())?;
        if let Some(extra) = totals.next() {
            extra.map_err(|e| e.to_string())?;
        }
    }
    let per_stream = (during.saturating_sub(before)) as f64 / streams.max(1) as f64;
    println!(
        "plugin RSS {before} KiB before, {during} KiB with {streams} streams open: {per_stream:.1} KiB per stream"
    );
    Ok(())
}

/// The resident memory of process `pid`, from `/proc`.
fn rss_kib(pid: u32) -> Result<u64, String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS in /proc/PID/status".to_string())
}
