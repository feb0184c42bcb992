//! `counter-host`: go-plugin's bidirectional example host
//! (`examples/bidirectional`), in Rust, on goplugin's [`Client`](goplugin::Client): for a
//! `put`, the host serves `AddHelper` through the broker under a fresh id,
//! and the plugin calls it back to add.
//!
//! ```text
//! COUNTER_PLUGIN=./counter-plugin counter-host put hits 5
//! COUNTER_PLUGIN=./counter-plugin counter-host get hits
//! ```
//!
//! - `COUNTER_PLUGIN`: the plugin's command line, run with `sh -c` as
//!   go-plugin's host does.
//! - `COUNTER_HOST_AUTOMTLS=1`: go-plugin's AutoMTLS (brokered connections
//!   both ways use it too).
//! - `COUNTER_HOST_LOG`: the level of this host's log on stderr (default
//!   `warn`).
//! - `COUNTER_HOST_TIMEOUT`: the deadline of each call in seconds (default
//!   30; `0`: none), so that a plugin that never answers cannot hang the
//!   host.
//!
//! `get` prints the count; errors print `Error: …` on stdout and exit 1, as
//! go-plugin's host does.

use std::process::ExitCode;

use counter_plugin::proto::counter::{GetRequest, PutRequest, SumRequest, SumResponse};
use counter_plugin::proto::counter_grpc::{AddHelper, CounterClient, create_add_helper};
use goplugin::grpcio::{RpcContext, UnarySink};
use kv_plugin::host;

/// The host's `AddHelper`: what the plugin calls back.
#[derive(Clone)]
struct Adder;

impl AddHelper for Adder {
    fn sum(&mut self, ctx: RpcContext<'_>, req: SumRequest, sink: UnarySink<SumResponse>) {
        // Go's int64 addition wraps.
        let reply = SumResponse {
            r: req.a.wrapping_add(req.b),
            ..SumResponse::default()
        };
        goplugin::answer(&ctx, sink, Ok(reply));
    }
}

fn main() -> ExitCode {
    host::main("COUNTER_HOST_LOG", "Error:", run)
}

fn run(args: Vec<String>) -> Result<(), String> {
    let options = host::call_options("COUNTER_HOST_TIMEOUT")?;
    let client = host::start("COUNTER_PLUGIN", "COUNTER_HOST_AUTOMTLS")?;
    let counter = CounterClient::new(client.channel());
    match args.as_slice() {
        [command, key, ..] if command == "get" => {
            let request = GetRequest {
                key: key.clone(),
                ..GetRequest::default()
            };
            let reply = counter
                .get_opt(&request, options)
                .map_err(|err| err.to_string())?;
            println!("{}", reply.value);
            Ok(())
        }
        [command, key, value, ..] if command == "put" => {
            let value: i64 = value
                .parse()
                .map_err(|err| format!("strconv.Atoi: parsing {value:?}: {err}"))?;
            let broker = client.broker();
            let id = broker.next_id();
            broker
                .accept_and_serve(id, vec![create_add_helper(Adder)])
                .map_err(|err| err.to_string())?;
            let request = PutRequest {
                add_server: id,
                key: key.clone(),
                value,
                ..PutRequest::default()
            };
            counter
                .put_opt(&request, options)
                .map(drop)
                .map_err(|err| err.to_string())
        }
        _ => Err("Please only use 'get' or 'put'".into()),
    }
}
