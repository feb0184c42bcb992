//! A KV host on goplugin's [`Client`] for measurements and tests: the
//! counterpart of the Go test host's `bench` and `serve-for`
//! (tests/fixtures/go-host), so that the benchmark drives one plugin from a
//! Go host and from this one the same way.
//!
//! ```text
//! KV_PLUGIN="target/release/kv-plugin" host_bench bench 5000
//! KV_PLUGIN="target/release/kv-plugin" host_bench serve-for 3000
//! ```
//!
//! - `KV_PLUGIN`: the plugin's command line, split on white space and run
//!   directly (no shell), as the Go host's `KV_HOST_DIRECT=1` and real
//!   hosts do.
//! - `KV_HOST_SHELL=1`: run `KV_PLUGIN` with `sh -c` instead, as
//!   go-plugin's example hosts do.
//! - `KV_HOST_AUTOMTLS=1`: AutoMTLS.
//!
//! `bench CALLS` prints one JSON object with the Go host's keys: `start_ms`
//! (launch until connected and healthy: `start()` does both) and
//! `ready_ms` (launch until the first successful `ping`), medians of 5
//! launches; `tls_ready_ms` the same with AutoMTLS (5 more launches, last;
//! none with `KV_BENCH_TLS=0`);
//! `put_*`/`get_*` sequential latencies; `conc` at 1, 4 and 16
//! callers; `cpu_us_per_call` of the plugin and `host_cpu_us_per_call` of
//! this process over the concurrent phases; `rss_kb`, `peak_rss_kb` of the
//! plugin and `host_rss_kb` of this process; `kill_ms`.
//!
//! `serve-for MS` starts the plugin, prints `pid=<pid>`, and makes Gets
//! from 4 threads for MS milliseconds before `kill()`: a test SIGKILLs this
//! host meanwhile, mid-call. Then it prints `gets_ok=N gets_failed=N
//! host_peak_kb=N` (this process's peak resident memory): a test of a
//! hostile plugin reads what it cost the host.

use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use goplugin::Client;
use kv_plugin::HANDSHAKE;
use kv_plugin::proto::kv::{GetRequest, PutRequest};
use kv_plugin::proto::kv_grpc::KvClient;

/// Launches for `start_ms` and `ready_ms`, as the Go host makes.
const START_LAUNCHES: usize = 5;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["bench", calls] => calls
            .parse()
            .map_err(|e| format!("CALLS: {e}"))
            .and_then(bench),
        ["serve-for", ms] => ms
            .parse()
            .map_err(|e| format!("MS: {e}"))
            .and_then(serve_for),
        _ => Err("usage: host_bench bench CALLS | host_bench serve-for MS".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            println!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn launch() -> Result<Client, String> {
    launch_with(std::env::var("KV_HOST_AUTOMTLS").as_deref() == Ok("1"))
}

/// Launches the plugin, with AutoMTLS or without.
fn launch_with(auto_mtls: bool) -> Result<Client, String> {
    let line = std::env::var("KV_PLUGIN").map_err(|_| "set KV_PLUGIN".to_string())?;
    let command = if std::env::var("KV_HOST_SHELL").as_deref() == Ok("1") {
        let mut shell = Command::new("sh");
        shell.arg("-c").arg(line);
        shell
    } else {
        let mut words = line.split_whitespace();
        let program = words.next().ok_or("KV_PLUGIN is empty")?;
        let mut command = Command::new(program);
        command.args(words);
        command
    };
    Client::builder(HANDSHAKE)
        .command(command)
        .auto_mtls(auto_mtls)
        .start()
        .map_err(|e| e.to_string())
}

fn get(key: &str) -> GetRequest {
    GetRequest {
        key: key.into(),
        ..GetRequest::default()
    }
}

fn serve_for(ms: u64) -> Result<(), String> {
    let client = launch()?;
    let kv = KvClient::new(client.channel());
    let put = PutRequest {
        key: "soak".into(),
        value: b"v".to_vec(),
        ..PutRequest::default()
    };
    kv.put(&put).map_err(|e| e.to_string())?;
    println!("pid={}", client.pid().unwrap_or(0));
    let until = Instant::now() + Duration::from_millis(ms);
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let kv = kv.clone();
            thread::spawn(move || {
                let (mut ok, mut failed) = (0, 0);
                while Instant::now() < until {
                    match kv.get(&get("soak")) {
                        Ok(_) => ok += 1,
                        Err(_) => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for caller in callers {
        let (o, f) = caller.join().unwrap_or((0, 0));
        ok += o;
        failed += f;
    }
    client.kill();
    let peak = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    println!("gets_ok={ok} gets_failed={failed} host_peak_kb={peak}");
    Ok(())
}

fn bench(calls: usize) -> Result<(), String> {
    if calls == 0 {
        return Err("bench needs CALLS >= 1".into());
    }
    let mut starts = Vec::new();
    let mut readies = Vec::new();
    let mut client = None;
    for _ in 0..START_LAUNCHES {
        drop(client.take());
        let began = Instant::now();
        let launched = launch()?;
        starts.push(ms(began.elapsed()));
        launched.ping().map_err(|e| e.to_string())?;
        readies.push(ms(began.elapsed()));
        client = Some(launched);
    }
    let client = client.ok_or("no launch")?;
    let pid = client.pid().ok_or("no pid")?;
    let kv = KvClient::new(client.channel());
    let put = PutRequest {
        key: "bench".into(),
        value: vec![b'v'; 100],
        ..PutRequest::default()
    };
    let puts = timed(calls, || kv.put(&put).map(drop))?;
    let gets = timed(calls, || kv.get(&get("bench")).map(drop))?;

    let plugin_before = cpu_ticks(pid)?;
    let host_before = self_cpu_us();
    let mut conc = serde_json::Map::new();
    for callers in [1usize, 4, 16] {
        let (wall, lat) = concurrent_gets(&kv, callers, calls)?;
        conc.insert(
            callers.to_string(),
            serde_json::json!({
                "calls_s": calls as f64 / wall.as_secs_f64(),
                "p50_us": us(lat[lat.len() / 2]),
                "p99_us": us(lat[lat.len() * 99 / 100]),
            }),
        );
    }
    let total = (3 * calls) as f64;
    let host_cpu = (self_cpu_us() - host_before) as f64 / total;
    // Clock ticks are 10 ms (USER_HZ 100).
    let plugin_cpu = (cpu_ticks(pid)? - plugin_before) as f64 * 10_000.0 / total;
    let (rss, peak) = memory(pid)?;
    let (host_rss, _) = memory(std::process::id())?;
    let began = Instant::now();
    client.kill();
    let kill_ms = ms(began.elapsed());
    // AutoMTLS launches last (what they leave in this process's memory is
    // not its RSS above), each killed at once: the host's certificate and
    // the TLS handshake's share of a start.
    let mut tls_readies = Vec::new();
    let tls_launches = if std::env::var("KV_BENCH_TLS").as_deref() == Ok("0") {
        0
    } else {
        START_LAUNCHES
    };
    for _ in 0..tls_launches {
        let began = Instant::now();
        let launched = launch_with(true)?;
        launched.ping().map_err(|e| e.to_string())?;
        tls_readies.push(ms(began.elapsed()));
        launched.kill();
    }
    let tls_ready_ms = if tls_readies.is_empty() {
        0.0
    } else {
        median(&tls_readies)
    };
    let result = serde_json::json!({
        "start_ms": median(&starts), "ready_ms": median(&readies),
        "tls_ready_ms": tls_ready_ms,
        "put_p50_us": us(puts[puts.len() / 2]), "put_p99_us": us(puts[puts.len() * 99 / 100]),
        "get_p50_us": us(gets[gets.len() / 2]), "get_p99_us": us(gets[gets.len() * 99 / 100]),
        "conc": conc,
        "cpu_us_per_call": plugin_cpu,
        "host_cpu_us_per_call": host_cpu,
        "rss_kb": rss, "peak_rss_kb": peak, "host_rss_kb": host_rss,
        "kill_ms": kill_ms,
        "pid": pid,
    });
    println!("{result}");
    Ok(())
}

fn timed<E: std::fmt::Display>(
    calls: usize,
    mut call: impl FnMut() -> Result<(), E>,
) -> Result<Vec<Duration>, String> {
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let began = Instant::now();
        call().map_err(|e| e.to_string())?;
        times.push(began.elapsed());
    }
    times.sort();
    Ok(times)
}

/// `calls` Gets from `callers` threads on the one connection: the wall
/// time and each call's latency, sorted.
fn concurrent_gets(
    kv: &KvClient,
    callers: usize,
    calls: usize,
) -> Result<(Duration, Vec<Duration>), String> {
    let kv = Arc::new(kv.clone());
    let began = Instant::now();
    let workers: Vec<_> = (0..callers)
        .map(|c| {
            let share = calls / callers + usize::from(c < calls % callers);
            let kv = Arc::clone(&kv);
            thread::spawn(move || timed(share, || kv.get(&get("bench")).map(drop)))
        })
        .collect();
    let mut all = Vec::with_capacity(calls);
    for worker in workers {
        all.extend(worker.join().map_err(|_| "a caller panicked")??);
    }
    let wall = began.elapsed();
    all.sort();
    Ok((wall, all))
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000_000.0
}

/// utime + stime of every thread of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let after = stat.rsplit_once(')').ok_or("bad stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Ok(field(11).ok_or("bad utime")? + field(12).ok_or("bad stime")?)
}

/// This process's user + system CPU, in microseconds (`getrusage`, as the
/// Go host measures its own; `/proc/self/stat` counts 10 ms ticks).
fn self_cpu_us() -> u64 {
    // SAFETY: getrusage writes one `rusage` into the zeroed value it is
    // given, and nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0;
        }
        usage
    };
    let us = |t: libc::timeval| {
        u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(t.tv_usec).unwrap_or(0)
    };
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// VmRSS and VmHWM of `pid`, in kB.
fn memory(pid: u32) -> Result<(u64, u64), String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    let value = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    Ok((value("VmRSS:"), value("VmHWM:")))
}
