//! `kv-host`: go-plugin's KV example host (`examples/grpc`), in Rust, on
//! goplugin's [`Client`]: any plugin written for go-plugin's host runs
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
//! - `KV_HOST_LOG`: the level of this host's log on stderr (hclog JSON,
//!   the plugin's lines re-emitted at theirs): `off`, `error`, `warn`
//!   (default), `info`, `debug`, `trace`.
//!
//! `get` prints the value and a newline; errors print `error: …` on stdout
//! (for a call, `RpcFailure:`, its gRPC code and message) and exit 1, as
//! go-plugin's host does.

use std::io::Write;
use std::process::{Command, ExitCode};

use goplugin::Client;
use goplugin::log::LevelFilter;
use kv_plugin::HANDSHAKE;
use kv_plugin::proto::kv::{GetRequest, PutRequest};
use kv_plugin::proto::kv_grpc::KvClient;

fn main() -> ExitCode {
    let level = std::env::var("KV_HOST_LOG")
        .ok()
        .and_then(|level| level.parse().ok())
        .unwrap_or(LevelFilter::Warn);
    let _ = goplugin::logging::init(level);
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            println!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<(), String> {
    let command = std::env::var("KV_PLUGIN")
        .map_err(|_| "set KV_PLUGIN to the plugin's command line".to_string())?;
    let mut shell = Command::new("sh");
    shell.arg("-c").arg(command);
    let client = Client::builder(HANDSHAKE)
        .command(shell)
        .auto_mtls(std::env::var("KV_HOST_AUTOMTLS").as_deref() == Ok("1"))
        .start()
        .map_err(|err| err.to_string())?;
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
            let reply = kv.get(&request).map_err(|err| err.to_string())?;
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
            kv.put(&request).map(drop).map_err(|err| err.to_string())
        }
        [command, ..] => Err(format!(
            "please only use 'get' or 'put', given: {command:?}"
        )),
        [] => Err("usage: kv-host get KEY | kv-host put KEY VALUE".into()),
    }
}
