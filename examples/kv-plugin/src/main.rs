//! `kv-plugin`: go-plugin's KV example plugin, in Rust.
//!
//! A drop-in for the Go and Python KV plugins of go-plugin's `examples/grpc`:
//! same handshake (app protocol 1, `BASIC_PLUGIN=hello`), same service
//! (`/proto.KV/Get`, `/proto.KV/Put`), same files (`kv_<key>` in the working
//! directory, holding the value and a trailer naming the plugin).
//! Deliberately better: writes are atomic and durable, keys that are not a
//! plain file name are refused, and every error has an exact status code
//! (see `kv_plugin::store` and the README).
//!
//! Settings (environment variables; the host passes its own environment on):
//!
//! | variable | values | default |
//! |---|---|---|
//! | `KV_PLUGIN_DURABILITY` | `durable` (fsync file and directory before answering a Put) or `relaxed` | `durable` |
//! | `KV_PLUGIN_MAX_VALUE_BYTES` | largest value a Put accepts, in bytes | 4194304 (4 MiB) |
//! | `KV_PLUGIN_NETWORK` | `unix` (a unix socket, TCP where that cannot work) or `tcp` | `unix` |

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use goplugin::grpcio::{RpcContext, UnarySink};
use goplugin::{BlockingPool, PluginEnv, PluginServer};
use kv_plugin::HANDSHAKE;
use kv_plugin::proto::kv::{Empty, GetRequest, GetResponse, PutRequest};
use kv_plugin::proto::kv_grpc::{Kv, create_kv};
use kv_plugin::store::{self, Durability, Store};

/// Concurrent file operations; more callers queue.
const WORKERS: usize = 16;

/// Default for `KV_PLUGIN_MAX_VALUE_BYTES`: gRPC's usual message limit.
const DEFAULT_MAX_VALUE: usize = 4 * 1024 * 1024;

/// Room for the key and the message framing around a value.
const MESSAGE_OVERHEAD: usize = 64 * 1024;

#[derive(Clone)]
struct KvService {
    store: Arc<Store>,
    pool: BlockingPool,
}

impl Kv for KvService {
    /// A value the kernel has cached is read on gRPC's completion-queue
    /// thread: microseconds, less than handing the call to a pool thread
    /// and back (measured: half the plugin CPU per Get, and more Gets per
    /// second at 16 callers). One that needs the disk is read on the pool,
    /// so that it never holds up the host's other calls.
    fn get(&mut self, ctx: RpcContext<'_>, req: GetRequest, sink: UnarySink<GetResponse>) {
        let response = |value| GetResponse {
            value,
            ..GetResponse::default()
        };
        match self.store.get_cached(&req.key) {
            Ok(Some(value)) => goplugin::answer(&ctx, sink, Ok(response(value))),
            Err(status) => goplugin::answer(&ctx, sink, Err(status)),
            Ok(None) => {
                let store = Arc::clone(&self.store);
                self.pool
                    .unary(sink, move || store.get(&req.key).map(response));
            }
        }
    }

    /// Writes wait for the disk (fsync): they go to the pool, so that they
    /// never hold up other calls of the host's single connection.
    fn put(&mut self, _ctx: RpcContext<'_>, mut req: PutRequest, sink: UnarySink<Empty>) {
        let store = Arc::clone(&self.store);
        self.pool.unary(sink, move || {
            trim_freed_memory();
            let value = std::mem::take(&mut req.value);
            store.put(&req.key, value)?;
            Ok(Empty::default())
        });
    }
}

/// The plugin's settings, from its environment.
struct Settings {
    durability: Durability,
    max_value: usize,
    tcp: bool,
}

impl Settings {
    fn from_env(env: &PluginEnv) -> Result<Settings, String> {
        let durability = match env.get("KV_PLUGIN_DURABILITY").unwrap_or("") {
            "" | "durable" => Durability::Durable,
            "relaxed" => Durability::Relaxed,
            other => {
                return Err(format!(
                    "KV_PLUGIN_DURABILITY={other:?}: must be \"durable\" or \"relaxed\""
                ));
            }
        };
        let max_value = match env.get("KV_PLUGIN_MAX_VALUE_BYTES").unwrap_or("") {
            "" => DEFAULT_MAX_VALUE,
            text => text
                .parse::<usize>()
                .ok()
                .filter(|&n| n <= i32::MAX as usize - MESSAGE_OVERHEAD)
                .ok_or_else(|| {
                    format!(
                        "KV_PLUGIN_MAX_VALUE_BYTES={text:?}: must be a number of bytes up to {}",
                        i32::MAX as usize - MESSAGE_OVERHEAD
                    )
                })?,
        };
        let tcp = match env.get("KV_PLUGIN_NETWORK").unwrap_or("") {
            "" | "unix" => false,
            "tcp" => true,
            other => {
                return Err(format!(
                    "KV_PLUGIN_NETWORK={other:?}: must be \"unix\" or \"tcp\""
                ));
            }
        };
        Ok(Settings {
            durability,
            max_value,
            tcp,
        })
    }
}

fn run(env: PluginEnv) -> Result<(), String> {
    let settings = Settings::from_env(&env)?;
    let store = Store::open(
        Path::new("."),
        settings.durability,
        settings.max_value,
        store::TRAILER,
    )
    .map_err(|err| format!("cannot open the KV store in the working directory: {err}"))?;
    let service = KvService {
        store: Arc::new(store),
        pool: BlockingPool::new(WORKERS),
    };
    PluginServer::builder(HANDSHAKE)
        .env(env)
        .service(create_kv(service))
        .max_message_size(settings.max_value + MESSAGE_OVERHEAD)
        .force_tcp(settings.tcp)
        .build()
        .and_then(PluginServer::serve)
        .map_err(|err| err.to_string())
}

/// Memory freed in blocks of this size or more goes back to the OS.
const RETURN_FREED_BYTES: libc::c_int = 128 * 1024;

/// Has glibc give freed memory back to the OS instead of keeping it: by
/// default it raises its mmap threshold after each large free (up to
/// 32 MiB), and what a refused oversized message left behind stayed in the
/// heap, 5 to 28 MB of it (measured). A binary's choice, not the
/// library's: it changes the allocator of the whole process.
fn return_freed_memory() {
    // SAFETY: mallopt takes two integers and changes only the allocator's
    // tuning; it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, RETURN_FREED_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, RETURN_FREED_BYTES);
    }
}

/// Free memory glibc holds in its arenas over which it is given back.
const TRIM_OVER_BYTES: usize = 4 * 1024 * 1024;

/// Starts, at the first `Put` (when the plugin's own threads all run, so
/// that it never takes one of theirs under a thread limit), a thread that
/// once a second gives the OS back what glibc holds free, when that is over
/// [`TRIM_OVER_BYTES`] and it or the plugin's resident memory grew since the
/// last time. After gRPC refuses an oversized message, the many small buffers it
/// freed can leave the arenas fragmented, which `M_TRIM_THRESHOLD` alone
/// does not undo (8 to 26 MB in 1 run of 6, measured); `malloc_trim`
/// releases the free pages wherever they are. A plugin that cannot start
/// the thread (a thread limit) only keeps more memory.
fn trim_freed_memory() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let _ = std::thread::Builder::new()
            .name("kv-plugin-trim".into())
            .spawn(|| {
                // After the last trim: resident pages, free bytes.
                let mut last = (0, 0);
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    // SAFETY: mallinfo2 and malloc_trim only read and tune
                    // the allocator's own state, under its locks.
                    let free = unsafe { libc::mallinfo2() }.fordblks;
                    let resident = resident_pages();
                    // Something to give back, and more than last time
                    // (256 pages: a MiB of 4 KiB pages).
                    if free > TRIM_OVER_BYTES
                        && (resident > last.0 + 256 || free > last.1 + (1 << 20))
                    {
                        // SAFETY: as above.
                        unsafe { libc::malloc_trim(0) };
                        last = (resident_pages(), free);
                    }
                }
            });
    });
}

/// The plugin's resident pages (`/proc/self/statm`), 0 when unreadable.
fn resident_pages() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn main() -> ExitCode {
    return_freed_memory();
    // A person who runs the binary by hand gets go-plugin's message, in
    // plain text, and nothing else happens; logs are hclog JSON on stderr.
    goplugin::plugin_main(HANDSHAKE, "kv-plugin", run)
}
