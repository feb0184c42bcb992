//! `kv-host`: go-plugin's KV example host (`examples/grpc`), in Rust, on
//! goplugin's [`Client`](goplugin::Client): any plugin written for go-plugin's host runs
//! under this one, and the other way round.
//!
//! ```text
//! KV_PLUGIN=./kv-plugin kv-host put hello world
//! KV_PLUGIN=./kv-plugin kv-host get hello
//! ```
//!
//! - `KV_PLUGIN`: the plugin's command line, run with `sh -c` as go-plugin's
//!   host does (Debian's dash then stays between host and plugin; `exec
//!   ./plugin` avoids that).
//! - `KV_PROTO`: `grpc`, or unset; `netrpc` is refused (this host speaks
//!   gRPC only), anything else is go-plugin's "must set KV_PROTO" error.
//! - `KV_HOST_AUTOMTLS=1`: go-plugin's AutoMTLS.
//! - `KV_HOST_TIMEOUT`: the deadline of each call in seconds (default 30;
//!   `0`: none), so that a plugin that never answers cannot hang the host.
//! - `KV_HOST_LOG`: the level of this host's log on stderr (hclog JSON,
//!   the plugin's lines re-emitted at theirs): `off`, `error`, `warn`
//!   (default), `info`, `debug`, `trace`.
//!
//! `get` prints the value and a newline; errors print `error: …` on stdout
//! (for a call, `RpcFailure:`, its gRPC code and message) and exit 1, as
//! go-plugin's host does.

use std::io::Write;
use std::process::ExitCode;

use kv_plugin::host;
use kv_plugin::proto::kv::{GetRequest, PutRequest};
use kv_plugin::proto::kv_grpc::KvClient;

fn main() -> ExitCode {
    host::main("KV_HOST_LOG", "error:", run)
}

fn run(args: Vec<String>) -> Result<(), String> {
    let options = host::call_options("KV_HOST_TIMEOUT")?;
    let client = host::start("KV_PLUGIN", "KV_HOST_AUTOMTLS")?;
    match std::env::var("KV_PROTO").as_deref() {
        Ok("grpc") | Err(_) => {}
        Ok("netrpc") => {
            return Err("KV_PROTO=netrpc: this host speaks gRPC only; set KV_PROTO=grpc".into());
        }
        Ok(_) => {
            println!("must set KV_PROTO to netrpc or grpc");
            return Err("KV_PROTO".into());
        }
    }
    let kv = KvClient::new(client.channel());
    match args.as_slice() {
        [command, key, ..] if command == "get" => {
            let request = GetRequest {
                key: key.clone(),
                ..GetRequest::default()
            };
            let reply = kv
                .get_opt(&request, options)
                .map_err(|err| err.to_string())?;
            let mut out = std::io::stdout().lock();
            // A closed stdout is the reader's business, not an error here.
            let _ = out
                .write_all(&reply.value)
                .and_then(|()| out.write_all(b"\n"));
            Ok(())
        }
        [command, key, value, ..] if command == "put" => {
            let request = PutRequest {
                key: key.clone(),
                value: value.clone().into_bytes(),
                ..PutRequest::default()
            };
            kv.put_opt(&request, options)
                .map(drop)
                .map_err(|err| err.to_string())
        }
        [command, ..] => Err(format!(
            "please only use 'get' or 'put', given: {command:?}"
        )),
        [] => Err("usage: kv-host get KEY | kv-host put KEY VALUE".into()),
    }
}
