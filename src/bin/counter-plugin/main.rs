//! `counter-plugin`: go-plugin's bidirectional example plugin, in Rust.
//!
//! The host serves an `AddHelper` on a brokered id and calls
//! `Counter.Put{add_server: id, key, value}`; the plugin dials that id
//! through the broker, asks the host for `Sum(stored, value)` and stores the
//! result, as decimal text in `kv_<key>` like go-plugin's Go example. The
//! other direction is here too: `HelperLender.Lend` serves an `AddHelper` of
//! the plugin's own on a fresh brokered id, which the host dials.
//!
//! Deliberate differences from the Go example: a `Put` holds the key's lock
//! across its read, the host's `Sum` and its write, so concurrent `Put`s to
//! one key all count (the Go example loses updates); writes are atomic and
//! durable; a missing key is `NOT_FOUND`; a broker id the host never
//! announces fails the `Put` with `UNAVAILABLE` after go-plugin's 5 s.
//!
//! Settings: `COUNTER_PLUGIN_NETWORK` = `unix` (default) or `tcp`, the
//! transport of the main and the brokered listeners.

// kv-plugin's store; this plugin uses less of it (no trailer, always durable).
#[allow(dead_code)]
#[path = "../kv-plugin/store.rs"]
mod store;

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use goplugin::grpcio::{CallOption, RpcContext, RpcStatus, RpcStatusCode, UnarySink};
use goplugin::proto::counter::{
    AddHelper, AddHelperClient, Counter, Empty, GetRequest, GetResponse, HelperLender,
    LendResponse, PutRequest, SumRequest, SumResponse, create_add_helper, create_counter,
    create_helper_lender,
};
use goplugin::{BlockingPool, Broker, HandshakeConfig, PluginEnv, PluginServer};

use store::{Durability, Store};

/// go-plugin's bidirectional example handshake (the same as the KV example's).
const HANDSHAKE: HandshakeConfig = HandshakeConfig {
    protocol_version: 1,
    magic_cookie_key: "BASIC_PLUGIN",
    magic_cookie_value: "hello",
};

/// Concurrent `Put`s and `Lend`s; more callers queue.
const WORKERS: usize = 16;

/// A counter is a decimal `i64`; anything longer is not one.
const MAX_VALUE: usize = 64;

/// How long the host's `Sum` may take.
const SUM_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct CounterService {
    store: Arc<Store>,
    locks: Arc<KeyLocks>,
    broker: Broker,
    pool: BlockingPool,
}

impl CounterService {
    /// The counter under `key`; `None` when there is none yet.
    fn read(&self, key: &str) -> Result<Option<i64>, RpcStatus> {
        let bytes = match self.store.get(key) {
            Ok(bytes) => bytes,
            Err(status) if status.code() == RpcStatusCode::NOT_FOUND => return Ok(None),
            Err(status) => return Err(status),
        };
        let text = String::from_utf8_lossy(&bytes);
        text.trim().parse().map(Some).map_err(|_| {
            RpcStatus::with_message(
                RpcStatusCode::FAILED_PRECONDITION,
                format!("key {key:?} holds {text:?}, which is not a counter (a decimal i64)"),
            )
        })
    }

    /// `Put`: stored + value, added by the host's `AddHelper` on broker id
    /// `add_server`.
    fn add(&self, req: &PutRequest) -> Result<Empty, RpcStatus> {
        self.locks.with(req.get_key(), || self.add_locked(req))
    }

    fn add_locked(&self, req: &PutRequest) -> Result<Empty, RpcStatus> {
        let key = req.get_key();
        let stored = self.read(key)?.unwrap_or(0);
        let id = req.get_add_server();
        let channel = self
            .broker
            .dial(id)
            .map_err(|err| RpcStatus::with_message(RpcStatusCode::UNAVAILABLE, err.to_string()))?;
        let mut sum = SumRequest::new();
        sum.set_a(stored);
        sum.set_b(req.get_value());
        let reply = AddHelperClient::new(channel)
            .sum_opt(&sum, CallOption::default().timeout(SUM_TIMEOUT))
            .map_err(|err| host_failure(id, err))?;
        self.store
            .put(key, reply.get_r().to_string().into_bytes())?;
        Ok(Empty::new())
    }
}

/// The status for a failed call to the host's `AddHelper`: the host's own
/// status code when it answered, `UNAVAILABLE` when it could not be reached.
fn host_failure(id: u32, err: goplugin::grpcio::Error) -> RpcStatus {
    let code = match &err {
        goplugin::grpcio::Error::RpcFailure(status) => status.code(),
        _ => RpcStatusCode::UNAVAILABLE,
    };
    RpcStatus::with_message(
        code,
        format!("the host's AddHelper.Sum on broker id {id} failed: {err}"),
    )
}

impl Counter for CounterService {
    /// Dialling the broker waits (up to 5 s) and `Sum` is a call to the
    /// host: both run on the pool, never on a gRPC thread.
    fn put(&mut self, _ctx: RpcContext<'_>, req: PutRequest, sink: UnarySink<Empty>) {
        let service = self.clone();
        self.pool.unary(sink, move || service.add(&req));
    }

    fn get(&mut self, ctx: RpcContext<'_>, req: GetRequest, sink: UnarySink<GetResponse>) {
        let answer = match self.read(req.get_key()) {
            Ok(Some(value)) => {
                let mut resp = GetResponse::new();
                resp.set_value(value);
                Ok(resp)
            }
            Ok(None) => Err(RpcStatus::with_message(
                RpcStatusCode::NOT_FOUND,
                format!("no counter under key {:?}", req.get_key()),
            )),
            Err(status) => Err(status),
        };
        goplugin::answer(&ctx, sink, answer);
    }
}

impl HelperLender for CounterService {
    /// Serves a [`PluginAdder`] on a new brokered id and returns the id.
    fn lend(&mut self, _ctx: RpcContext<'_>, _req: Empty, sink: UnarySink<LendResponse>) {
        let broker = self.broker.clone();
        self.pool.unary(sink, move || {
            let id = broker.next_id();
            broker
                .accept_and_serve(id, vec![create_add_helper(PluginAdder)])
                .map_err(|err| {
                    RpcStatus::with_message(RpcStatusCode::UNAVAILABLE, err.to_string())
                })?;
            let mut resp = LendResponse::new();
            resp.set_helper_id(id);
            Ok(resp)
        });
    }
}

/// The plugin's own `AddHelper`, lent to the host by `HelperLender.Lend`.
#[derive(Clone)]
struct PluginAdder;

impl AddHelper for PluginAdder {
    fn sum(&mut self, ctx: RpcContext<'_>, req: SumRequest, sink: UnarySink<SumResponse>) {
        let answer = match req.get_a().checked_add(req.get_b()) {
            Some(r) => {
                let mut resp = SumResponse::new();
                resp.set_r(r);
                Ok(resp)
            }
            None => Err(RpcStatus::with_message(
                RpcStatusCode::OUT_OF_RANGE,
                format!("{} + {} overflows an i64", req.get_a(), req.get_b()),
            )),
        };
        goplugin::answer(&ctx, sink, answer);
    }
}

/// One lock per key, held from a `Put`'s read to its write. A key's entry
/// goes when nobody holds or waits for it.
#[derive(Default)]
struct KeyLocks {
    keys: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl KeyLocks {
    /// Runs `f` holding `key`'s lock.
    fn with<T>(&self, key: &str, f: impl FnOnce() -> T) -> T {
        let lock = Arc::clone(
            self.keys
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(key.to_string())
                .or_default(),
        );
        let result = {
            let _held = lock.lock().unwrap_or_else(PoisonError::into_inner);
            f()
        };
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        // Clones are made under the map's lock: two means ours and the map's.
        if Arc::strong_count(&lock) == 2 {
            keys.remove(key);
        }
        result
    }
}

fn run(env: PluginEnv) -> Result<(), String> {
    let tcp = match env.get("COUNTER_PLUGIN_NETWORK").unwrap_or("") {
        "" | "unix" => false,
        "tcp" => true,
        other => {
            return Err(format!(
                "COUNTER_PLUGIN_NETWORK={other:?}: must be \"unix\" or \"tcp\""
            ));
        }
    };
    let store = Store::open(Path::new("."), Durability::Durable, MAX_VALUE, b"")
        .map_err(|err| format!("cannot open the counter store in the working directory: {err}"))?;
    let builder = PluginServer::builder(HANDSHAKE).env(env).force_tcp(tcp);
    let service = CounterService {
        store: Arc::new(store),
        locks: Arc::default(),
        broker: builder.broker(),
        pool: BlockingPool::new(WORKERS),
    };
    builder
        .service(create_counter(service.clone()))
        .service(create_helper_lender(service))
        .build()
        .and_then(PluginServer::serve)
        .map_err(|err| err.to_string())
}

fn main() -> ExitCode {
    // A person who runs the binary by hand gets go-plugin's message, in
    // plain text, and nothing else happens; logs are hclog JSON on stderr.
    goplugin::plugin_main(HANDSHAKE, "counter-plugin", run)
}
