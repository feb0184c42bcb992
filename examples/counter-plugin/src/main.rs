//! `counter-plugin`: go-plugin's bidirectional example plugin, in Rust.
//!
//! The host serves an `AddHelper` on a brokered id and calls
//! `Counter.Put{add_server: id, key, value}`; the plugin dials that id
//! through the broker, asks the host for `Sum(stored, value)` and stores the
//! result in `kv_<key>` as go-plugin's Go example does (`{"Value":12}`), so
//! either plugin reads what the other wrote. The other direction is here
//! too: `HelperLender.Lend` serves an `AddHelper` of the plugin's own on a
//! fresh brokered id, which the host dials.
//!
//! The services are go-plugin's (`proto.Counter`, `proto.AddHelper`, from
//! `proto/counter.proto`), so go-plugin's own `examples/bidirectional` host
//! drives this plugin unchanged; `lender.HelperLender` lives in a package of
//! its own (`proto/lender.proto`).
//!
//! Deliberate differences from the Go example: a `Put` holds the key's lock
//! across its read, the host's `Sum` and its write, so concurrent `Put`s to
//! one key all count (the Go example loses updates); writes are atomic and
//! durable; a missing key is `NOT_FOUND`; a broker id the host never
//! announces fails the `Put` with `UNAVAILABLE` after go-plugin's 5 s.
//!
//! Settings: `COUNTER_PLUGIN_NETWORK` = `unix` (default) or `tcp`, the
//! transport of the main and the brokered listeners.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use counter_plugin::HANDSHAKE;
use counter_plugin::proto::counter::{
    Empty, GetRequest, GetResponse, PutRequest, SumRequest, SumResponse,
};
use counter_plugin::proto::counter_grpc::{
    AddHelper, AddHelperClient, Counter, create_add_helper, create_counter,
};
use counter_plugin::proto::lender::LendResponse;
use counter_plugin::proto::lender_grpc::{HelperLender, create_helper_lender};
use goplugin::grpcio::{CallOption, RpcContext, RpcStatus, RpcStatusCode, UnarySink};
use goplugin::protobuf::well_known_types::empty::Empty as WellKnownEmpty;
use goplugin::{BlockingPool, Broker, PluginEnv, PluginServer};
use kv_plugin::store::{Durability, Store};

/// Concurrent `Put`s and `Lend`s; more callers queue.
const WORKERS: usize = 16;

/// A counter file is `{"Value":N}` with N an `i64`; anything longer is not
/// one.
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
        parse_counter(&text).map(Some).ok_or_else(|| {
            RpcStatus::with_message(
                RpcStatusCode::FAILED_PRECONDITION,
                format!(
                    "key {key:?} holds {text:?}, which is not a counter \
                     ({{\"Value\":N}} with N an i64, as go-plugin's example writes)"
                ),
            )
        })
    }

    /// `Put`: stored + value, added by the host's `AddHelper` on broker id
    /// `add_server`.
    fn add(&self, req: &PutRequest) -> Result<Empty, RpcStatus> {
        self.locks.with(&req.key, || self.add_locked(req))
    }

    fn add_locked(&self, req: &PutRequest) -> Result<Empty, RpcStatus> {
        let key = &req.key;
        let stored = self.read(key)?.unwrap_or(0);
        let id = req.add_server;
        let channel = self
            .broker
            .dial(id)
            .map_err(|err| RpcStatus::with_message(RpcStatusCode::UNAVAILABLE, err.to_string()))?;
        let sum = SumRequest {
            a: stored,
            b: req.value,
            ..SumRequest::default()
        };
        let reply = AddHelperClient::new(channel)
            .sum_opt(&sum, CallOption::default().timeout(SUM_TIMEOUT))
            .map_err(|err| host_failure(id, err))?;
        self.store.put(key, format_counter(reply.r).into_bytes())?;
        Ok(Empty::default())
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
        let answer = match self.read(&req.key) {
            Ok(Some(value)) => Ok(GetResponse {
                value,
                ..GetResponse::default()
            }),
            Ok(None) => Err(RpcStatus::with_message(
                RpcStatusCode::NOT_FOUND,
                format!("no counter under key {:?}", req.key),
            )),
            Err(status) => Err(status),
        };
        goplugin::answer(&ctx, sink, answer);
    }
}

impl HelperLender for CounterService {
    /// Serves a [`PluginAdder`] on a new brokered id and returns the id.
    fn lend(&mut self, _ctx: RpcContext<'_>, _req: WellKnownEmpty, sink: UnarySink<LendResponse>) {
        let broker = self.broker.clone();
        self.pool.unary(sink, move || {
            let id = broker.next_id();
            broker
                .accept_and_serve(id, vec![create_add_helper(PluginAdder)])
                .map_err(|err| {
                    RpcStatus::with_message(RpcStatusCode::UNAVAILABLE, err.to_string())
                })?;
            Ok(LendResponse {
                helper_id: id,
                ..LendResponse::default()
            })
        });
    }
}

/// The plugin's own `AddHelper`, lent to the host by `HelperLender.Lend`.
#[derive(Clone)]
struct PluginAdder;

impl AddHelper for PluginAdder {
    fn sum(&mut self, ctx: RpcContext<'_>, req: SumRequest, sink: UnarySink<SumResponse>) {
        let answer = match req.a.checked_add(req.b) {
            Some(r) => Ok(SumResponse {
                r,
                ..SumResponse::default()
            }),
            None => Err(RpcStatus::with_message(
                RpcStatusCode::OUT_OF_RANGE,
                format!("{} + {} overflows an i64", req.a, req.b),
            )),
        };
        goplugin::answer(&ctx, sink, answer);
    }
}

/// A counter as go-plugin's Go example stores it: `json.Marshal` of
/// `struct{ Value int64 }`.
fn format_counter(value: i64) -> String {
    format!("{{\"Value\":{value}}}")
}

/// The counter in a file written by [`format_counter`] or by the Go example
/// (any JSON white space around the tokens).
fn parse_counter(text: &str) -> Option<i64> {
    let inner = text.trim().strip_prefix('{')?.strip_suffix('}')?;
    let (name, value) = inner.split_once(':')?;
    (name.trim() == "\"Value\"")
        .then(|| value.trim().parse().ok())
        .flatten()
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

#[cfg(test)]
mod tests {
    use super::{format_counter, parse_counter};

    #[test]
    fn counters_are_stored_as_the_go_example_stores_them() {
        assert_eq!(format_counter(12), r#"{"Value":12}"#);
        assert_eq!(
            format_counter(i64::MIN),
            r#"{"Value":-9223372036854775808}"#
        );
        for value in [0, -1, 12, i64::MAX, i64::MIN] {
            assert_eq!(parse_counter(&format_counter(value)), Some(value));
        }
        assert_eq!(parse_counter(" { \"Value\" : 7 }\n"), Some(7));
        for bad in [
            "12",
            "{}",
            r#"{"value":1}"#,
            r#"{"Value":"1"}"#,
            r#"{"Value":1"#,
            "",
        ] {
            assert_eq!(parse_counter(bad), None, "{bad:?}");
        }
    }
}
