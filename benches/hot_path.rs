//! Micro-benchmark of the per-call hot path, without any Go toolchain:
//! the KV store's file I/O (durable and relaxed Put, Get) and one gRPC Get
//! round trip through `PluginServer` on a unix socket. Prints µs per
//! operation; asserts nothing about time.
//!
//! `cargo bench --bench hot_path` runs it fully; any other invocation (for
//! example `cargo test --all-targets`) runs a few iterations only.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use goplugin::grpcio::{ChannelBuilder, EnvBuilder, RpcContext, UnarySink};
use goplugin::{HandshakeConfig, PluginEnv, PluginServer};
use kv_plugin::proto::kv::{GetRequest, GetResponse};
use kv_plugin::proto::kv_grpc::{Kv, KvClient, create_kv};
use kv_plugin::store::{self, Durability, Store};

fn time(label: &str, iterations: u32, mut op: impl FnMut(u32)) {
    op(0); // warm up
    let start = Instant::now();
    for i in 0..iterations {
        op(i);
    }
    let per_op = start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations);
    println!("{label:40} {per_op:9.2} µs/op ({iterations} ops)");
}

#[derive(Clone)]
struct Fixed;

impl Kv for Fixed {
    fn get(&mut self, ctx: RpcContext<'_>, _: GetRequest, sink: UnarySink<GetResponse>) {
        let resp = GetResponse {
            value: vec![b'v'; 100],
            ..GetResponse::default()
        };
        ctx.spawn(async move {
            let _ = sink.success(resp).await;
        });
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 2000 } else { 20 };
    let dir = tempfile::tempdir().expect("temp dir");
    let value = vec![b'x'; 100];

    for (label, durability) in [
        ("store put (durable, fsync)", Durability::Durable),
        ("store put (relaxed)", Durability::Relaxed),
    ] {
        let store = Store::open(dir.path(), durability, 1 << 20, store::TRAILER).expect("store");
        time(label, n, |i| {
            store
                .put(&format!("k{}", i % 16), value.clone())
                .expect("put")
        });
    }
    let store =
        Store::open(dir.path(), Durability::Relaxed, 1 << 20, store::TRAILER).expect("store");
    time("store get", n * 10, |i| {
        black_box(store.get(&format!("k{}", i % 16)).expect("get"));
    });

    let server = PluginServer::builder(HandshakeConfig {
        protocol_version: 1,
        magic_cookie_key: "BENCH",
        magic_cookie_value: "1",
    })
    .service(create_kv(Fixed))
    .env(PluginEnv::from_vars([
        ("BENCH", "1"),
        ("TMPDIR", dir.path().to_str().expect("utf-8")),
    ]))
    .handshake_output(std::io::sink())
    .forward_stdio(false)
    .watch_host(false)
    .build()
    .expect("server");
    let target = server.addr().dial_target();
    let stop = server.shutdown_handle();
    let serving = std::thread::spawn(move || server.serve());
    let env = Arc::new(EnvBuilder::new().cq_count(1).build());
    let kv = KvClient::new(ChannelBuilder::new(env).connect(&target));
    let req = GetRequest::new();
    time("grpc Get round trip (unix socket)", n * 5, |_| {
        black_box(kv.get(&req).expect("get"));
    });
    stop.shutdown();
    serving.join().expect("serve thread").expect("serve");
}
