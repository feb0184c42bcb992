//! A KV plugin that talks: every `Put` prints the value on stdout and on
//! stderr, runs a child process that prints it too, and logs a line at each
//! level. It shows what reaches a go-plugin host:
//!
//! - with a host that sets `SyncStdout`/`SyncStderr` (go-plugin ≥ 1.1), the
//!   prints arrive there, on the right channel, through `plugin.GRPCStdio`;
//! - with go-plugin 1.0.1, stderr prints show up in the host's log (at
//!   DEBUG) and stdout prints are dropped;
//! - log lines are hclog JSON, which every host re-levels
//!   (`[WARN]  plugin...: ...`), key/value fields included.
//!
//! `Get` answers with the last value put. Run it under a host, for example
//! the test host: `KV_PLUGIN=target/release/examples/echo kv-host put k hello`.

use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex, PoisonError};

use goplugin::grpcio::{RpcContext, UnarySink};
use goplugin::{BlockingPool, HandshakeConfig};
use kv_plugin::proto::kv::{Empty, GetRequest, GetResponse, PutRequest};
use kv_plugin::proto::kv_grpc::{Kv, create_kv};

const HANDSHAKE: HandshakeConfig = HandshakeConfig {
    protocol_version: 1,
    magic_cookie_key: "BASIC_PLUGIN",
    magic_cookie_value: "hello",
};

#[derive(Clone)]
struct Echo {
    last: Arc<Mutex<Vec<u8>>>,
    pool: BlockingPool,
}

impl Kv for Echo {
    fn get(&mut self, _: RpcContext<'_>, _: GetRequest, sink: UnarySink<GetResponse>) {
        let last = Arc::clone(&self.last);
        self.pool.unary(sink, move || {
            Ok(GetResponse {
                value: last.lock().unwrap_or_else(PoisonError::into_inner).clone(),
                ..GetResponse::default()
            })
        });
    }

    fn put(&mut self, _: RpcContext<'_>, req: PutRequest, sink: UnarySink<Empty>) {
        let last = Arc::clone(&self.last);
        self.pool.unary(sink, move || {
            let value = String::from_utf8_lossy(&req.value).into_owned();
            // Plain prints: after the handshake they go to the host, never to
            // the real stdout.
            println!("stdout says {value}");
            eprintln!("stderr says {value}");
            let _ = Command::new("sh")
                .arg("-c")
                .arg("echo child says \"$0\"")
                .arg(&value)
                .status();
            log::error!("error line for {value}");
            log::warn!("warn line for {value}");
            log::info!(key = req.key.as_str(); "info line for {value}");
            log::debug!("debug line for {value}");
            *last.lock().unwrap_or_else(PoisonError::into_inner) = req.value;
            Ok(Empty::default())
        });
    }
}

fn main() -> ExitCode {
    let _ = goplugin::logging::init(log::LevelFilter::Debug);
    let echo = Echo {
        last: Arc::default(),
        pool: BlockingPool::new(2),
    };
    match goplugin::serve(HANDSHAKE, create_kv(echo)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log::error!("{err}");
            ExitCode::FAILURE
        }
    }
}
