//! The library used in-process, as an embedding application would: versioned
//! services, the shutdown handle, and blocking handlers on one connection.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use goplugin::grpcio::{
    ChannelBuilder, EnvBuilder, RpcContext, RpcStatus, RpcStatusCode, UnarySink,
};
use goplugin::proto::kv::{Empty, GetRequest, GetResponse, Kv, KvClient, PutRequest, create_kv};
use goplugin::{BlockingPool, Error, HandshakeConfig, PluginEnv, PluginServer};

const HANDSHAKE: HandshakeConfig = HandshakeConfig {
    protocol_version: 1,
    magic_cookie_key: "TEST_COOKIE",
    magic_cookie_value: "yes",
};

/// A `Write` that tests can read back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Answers Get with a fixed value; `put` is left unimplemented.
#[derive(Clone)]
struct Fixed(&'static [u8]);

impl Kv for Fixed {
    fn get(&mut self, ctx: RpcContext<'_>, _: GetRequest, sink: UnarySink<GetResponse>) {
        let mut resp = GetResponse::new();
        resp.set_value(self.0.to_vec());
        ctx.spawn(async move {
            let _ = sink.success(resp).await;
        });
    }
}

fn env(versions: &str) -> PluginEnv {
    PluginEnv::from_vars([
        ("TEST_COOKIE", "yes"),
        ("PLUGIN_PROTOCOL_VERSIONS", versions),
    ])
}

fn client(address: &str) -> KvClient {
    let env = Arc::new(EnvBuilder::new().cq_count(1).build());
    KvClient::new(ChannelBuilder::new(env).connect(address))
}

fn get(kv: &KvClient, key: &str) -> Result<Vec<u8>, goplugin::grpcio::Error> {
    let mut req = GetRequest::new();
    req.set_key(key.into());
    kv.get(&req).map(|mut r| r.take_value())
}

/// A builder for an in-process server: no fd capture and no host watchdog,
/// which would act on the whole test process.
fn builder() -> goplugin::PluginServerBuilder {
    PluginServer::builder(HANDSHAKE)
        .forward_stdio(false)
        .watch_host(false)
}

/// Serves `server` on a thread; returns the printed line and a join handle.
fn serve(
    server: PluginServer,
    out: &Captured,
) -> (String, thread::JoinHandle<goplugin::Result<()>>) {
    let handle = thread::spawn(move || server.serve());
    for _ in 0..2000 {
        let text = out.text();
        if text.ends_with('\n') {
            return (text, handle);
        }
        thread::sleep(Duration::from_millis(1));
    }
    panic!("no handshake line printed");
}

#[test]
fn the_highest_common_version_selects_its_services() {
    let cases: &[(&str, u32, Option<&[u8]>)] = &[
        ("1,2,3", 3, Some(b"v3")),
        ("2,1", 2, Some(b"v2")),
        ("1", 1, None),
        ("7", 1, None),
    ];
    for (offered, version, answer) in cases {
        let out = Captured::default();
        let server = builder()
            .versioned_service(1, goplugin::grpcio::ServiceBuilder::new().build())
            .versioned_service(2, create_kv(Fixed(b"v2")))
            .versioned_service(3, create_kv(Fixed(b"v3")))
            .env(env(offered))
            .handshake_output(out.clone())
            .build()
            .expect("build");
        assert_eq!(
            server.handshake_line().app_protocol_version,
            *version,
            "{offered}"
        );
        let stop = server.shutdown_handle();
        let address = server.listener().dial_target();
        let server_listener = server.listener().clone();
        let (line, handle) = serve(server, &out);
        let listener = server_listener.clone();
        assert_eq!(
            line,
            format!("1|{version}|unix|{}|grpc\n", listener.address)
        );
        let kv = client(&address);
        match (answer, get(&kv, "k")) {
            (Some(want), Ok(got)) => assert_eq!(&got, want, "{offered}"),
            (None, Err(goplugin::grpcio::Error::RpcFailure(s))) => {
                assert_eq!(s.code(), RpcStatusCode::UNIMPLEMENTED, "{offered}")
            }
            (want, got) => panic!("{offered}: want {want:?}, got {got:?}"),
        }
        stop.shutdown();
        handle
            .join()
            .unwrap()
            .expect("serve returns Ok after shutdown");
    }
}

#[test]
fn build_refuses_a_missing_cookie_and_an_empty_config() {
    let err = builder()
        .env(PluginEnv::from_vars([("TEST_COOKIE", "no")]))
        .build();
    assert!(
        matches!(err, Err(Error::NotLaunchedByHost { ref cookie_key }) if cookie_key == "TEST_COOKIE")
    );
    let empty = HandshakeConfig {
        magic_cookie_value: "",
        ..HANDSHAKE
    };
    let err = PluginServer::builder(empty)
        .env(env("1"))
        .build()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("no magic cookie key or value was set"),
        "{err}"
    );
}

#[test]
fn a_shutdown_handle_stops_serve_promptly() {
    let out = Captured::default();
    let server = builder()
        .env(env("1"))
        .handshake_output(out.clone())
        .build()
        .unwrap();
    let stop = server.shutdown_handle();
    assert!(!stop.is_shutdown());
    let (_, handle) = serve(server, &out);
    stop.shutdown();
    stop.shutdown();
    handle.join().unwrap().expect("serve returns Ok");
    assert!(stop.is_shutdown());
}

/// Each Get blocks until `parties` Gets are running at once: the calls can
/// only complete if the plugin runs them concurrently, although they share
/// the host's single connection (and so one completion-queue thread).
#[derive(Clone)]
struct Rendezvous {
    pool: BlockingPool,
    arrived: Arc<(Mutex<usize>, Condvar)>,
    parties: usize,
}

impl Kv for Rendezvous {
    fn get(&mut self, _: RpcContext<'_>, _: GetRequest, sink: UnarySink<GetResponse>) {
        let arrived = Arc::clone(&self.arrived);
        let parties = self.parties;
        self.pool.unary(sink, move || {
            let (count, all_here) = &*arrived;
            let mut count = count.lock().unwrap();
            *count += 1;
            all_here.notify_all();
            let (count, timeout) = all_here
                .wait_timeout_while(count, Duration::from_secs(10), |n| *n < parties)
                .unwrap();
            if timeout.timed_out() {
                return Err(RpcStatus::with_message(
                    RpcStatusCode::DEADLINE_EXCEEDED,
                    format!("only {} of {parties} calls ran at once", *count),
                ));
            }
            Ok(GetResponse::new())
        });
    }

    fn put(&mut self, _: RpcContext<'_>, _: PutRequest, sink: UnarySink<Empty>) {
        self.pool.unary(sink, || panic!("a handler bug"));
    }
}

#[test]
fn blocking_handlers_run_concurrently_on_one_connection() {
    let parties = 8;
    let out = Captured::default();
    let service = Rendezvous {
        pool: BlockingPool::new(parties),
        arrived: Arc::new((Mutex::new(0), Condvar::new())),
        parties,
    };
    let server = builder()
        .service(create_kv(service))
        .env(env("1"))
        .handshake_output(out.clone())
        .build()
        .unwrap();
    let stop = server.shutdown_handle();
    let address = server.listener().dial_target();
    let (_, handle) = serve(server, &out);
    let kv = client(&address); // one channel: one connection
    let calls: Vec<_> = (0..parties)
        .map(|_| {
            let kv = kv.clone();
            thread::spawn(move || get(&kv, "k"))
        })
        .collect();
    for call in calls {
        call.join().unwrap().expect("every call completes");
    }

    // A panicking handler answers INTERNAL instead of hanging the caller.
    match kv.put(&PutRequest::new()) {
        Err(goplugin::grpcio::Error::RpcFailure(s)) => {
            assert_eq!(s.code(), RpcStatusCode::INTERNAL)
        }
        other => panic!("want INTERNAL, got {other:?}"),
    }
    stop.shutdown();
    handle.join().unwrap().unwrap();
}
